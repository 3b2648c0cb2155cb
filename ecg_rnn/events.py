"""Events stage: Holter events from per-beat classes and rhythm/noise episodes, a summary and an hourly table.

The input is a `BeatTrack`: beat times in seconds (sorted), one AAMI class per beat (N, S, V, F, Q: the
reviewer's decision where a person reviewed the beat, else the suggested class), whether each beat was
reviewed, which beats are noisy, the AF and noise episodes found by the rhythm and quality stages, and
the recording's duration. Beats inside a noise episode count as noisy.

`detect_events` returns one row per event with the columns kind, start_s, end_s (times of the first and
last beat of the event, or the episode's bounds), beats (how many beats it spans), rate_bpm, reviewed
(every beat of the event was reviewed by a person) and detail (one line of text). The kinds:

- `V_isolated`: one V beat between non-V beats; rate_bpm is 60 / its coupling interval (the RR before it).
- `V_couplet`: exactly two consecutive V beats; rate_bpm is 60 / the RR between them.
- `V_run`: three or more consecutive V beats at a rate below 100 bpm (e.g. idioventricular rhythm);
  rate_bpm is 60 / the mean RR inside the run.
- `VT`: three or more consecutive V beats at 100 bpm or faster (ventricular tachycardia).
- `S_isolated`, `S_couplet`, `S_run`, `SVT`: the same for S (supraventricular ectopic) beats.
- `V_bigeminy`: an episode of three or more bigeminal cycles: isolated V beats in a row, each separated
  from the next by exactly one N beat (V-N-V-N-V...). beats counts every beat from the first to the last V.
- `V_trigeminy`: the same with exactly two N beats between consecutive isolated V beats (V-N-N-V-N-N-V...).
- `pause`: an RR interval longer than 2.0 s whose two beats are clean and that no noise episode overlaps.
- `AF`, `noise`: the episodes passed in, with the number of beats inside and their mean heart rate.
- `HR_min`, `HR_max`: the lowest and highest heart rate averaged over 8 consecutive RR intervals of clean
  beats (60 * 8 / their span), placed at that window.

"Consecutive" means adjacent in the beat sequence with no RR longer than the pause threshold in between,
so a gap in the detections never joins two distant V beats into a couplet. Isolated beats inside a
bigeminy or trigeminy episode are also listed as `V_isolated`. All thresholds live in `EventConfig`.

`summary` condenses a recording into counts (beats, heart rate, V and S counts, couplets, runs, bigeminy,
pauses, AF burden, noise share) and says for each class-based count whether the beats behind it were
reviewed (all / part / none); `hourly` gives heart rate and ectopic counts per clock hour of recording.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from ecg_rnn.beats import AAMI_CLASSES
from ecg_rnn.errors import RecordError

EVENT_COLUMNS = ("kind", "start_s", "end_s", "beats", "rate_bpm", "reviewed", "detail")
EPISODE_COLUMNS = ("kind", "start_s", "end_s")
EPISODE_KINDS = ("AF", "noise")
ECTOPIC_KINDS = {  # class -> (isolated, couplet, slow run, fast run)
    "V": ("V_isolated", "V_couplet", "V_run", "VT"),
    "S": ("S_isolated", "S_couplet", "S_run", "SVT"),
}
PATTERN_KINDS = {2: "V_bigeminy", 3: "V_trigeminy"}  # beat spacing between isolated V beats -> kind
EVENT_KINDS = (*ECTOPIC_KINDS["V"], *PATTERN_KINDS.values(), *ECTOPIC_KINDS["S"], "pause", *EPISODE_KINDS,
               "HR_min", "HR_max")
BEAT_FRAME_COLUMNS = ("time_s", "class")  # required by BeatTrack.from_frame; `reviewed`, `noisy` optional
SECONDS_PER_HOUR = 3600.0


@dataclass(frozen=True)
class EventConfig:
    """Thresholds of the Holter events."""

    pause_s: float = 2.0  # an RR interval longer than this is a pause
    tachycardia_bpm: float = 100.0  # a run at this rate or faster is VT / SVT
    run_beats: int = 3  # this many consecutive ectopic beats make a run
    pattern_cycles: int = 3  # this many isolated V beats in bigeminal / trigeminal rhythm make an episode
    hr_average_intervals: int = 8  # heart rate extremes average over this many RR intervals

    def __post_init__(self):
        if self.pause_s <= 0 or self.tachycardia_bpm <= 0:
            raise ValueError("pause_s and tachycardia_bpm must be positive")
        if self.run_beats < 3 or self.pattern_cycles < 2 or self.hr_average_intervals < 1:
            raise ValueError("run_beats must be >= 3, pattern_cycles >= 2 and hr_average_intervals >= 1")


@dataclass(frozen=True)
class BeatTrack:
    """What events are computed from: one entry per beat, sorted by time, plus the episodes."""

    time_s: np.ndarray  # float64
    classes: np.ndarray  # str, one of AAMI_CLASSES
    duration_s: float
    reviewed: np.ndarray  # bool
    noisy: np.ndarray  # bool: flagged noisy by the quality stage or inside a noise episode
    episodes: pd.DataFrame  # EPISODE_COLUMNS

    @classmethod
    def build(cls, time_s, classes, *, duration_s: float, reviewed=None, noisy=None,
              episodes=None) -> "BeatTrack":
        """Check and normalise the inputs; `episodes` is a DataFrame or (kind, start_s, end_s) tuples."""
        time_s = np.asarray(time_s, dtype=np.float64)
        classes = np.asarray(classes, dtype=str)
        n = len(time_s)
        reviewed = np.zeros(n, bool) if reviewed is None else np.asarray(reviewed, dtype=bool)
        noisy = np.zeros(n, bool) if noisy is None else np.asarray(noisy, dtype=bool)
        if not (len(classes) == len(reviewed) == len(noisy) == n):
            raise RecordError(f"beat arrays differ in length ({n} times, {len(classes)} classes, "
                              f"{len(reviewed)} reviewed, {len(noisy)} noisy); pass one entry per beat")
        if n and (not np.all(np.isfinite(time_s)) or np.any(np.diff(time_s) < 0)):
            raise RecordError("beat times must be finite and sorted; sort the beats by time_s")
        unknown = sorted(set(classes.tolist()) - set(AAMI_CLASSES))
        if unknown:
            raise RecordError(f"unknown beat classes {unknown[:5]}; use one of {', '.join(AAMI_CLASSES)}")
        if not np.isfinite(duration_s) or duration_s <= 0 or (n and time_s[-1] > duration_s):
            raise RecordError(f"duration {duration_s!r} s must be positive and cover the last beat")
        episodes = _episode_frame(episodes, duration_s)
        noise = episodes[episodes.kind == "noise"]
        noisy = noisy | _inside(time_s, noise.start_s.to_numpy(), noise.end_s.to_numpy())
        return cls(time_s=time_s, classes=classes, duration_s=float(duration_s), reviewed=reviewed,
                   noisy=noisy, episodes=episodes)

    @classmethod
    def from_frame(cls, beats: pd.DataFrame, *, duration_s: float, episodes=None) -> "BeatTrack":
        """A track from a table with `time_s` and `class`, and optionally `reviewed` and `noisy` (bool)."""
        missing = [c for c in BEAT_FRAME_COLUMNS if c not in beats.columns]
        if missing:
            raise RecordError(f"beat table lacks column(s) {missing}; it needs {list(BEAT_FRAME_COLUMNS)}")
        optional = {c: beats[c].to_numpy() for c in ("reviewed", "noisy") if c in beats.columns}
        return cls.build(beats["time_s"].to_numpy(), beats["class"].to_numpy(), duration_s=duration_s,
                         episodes=episodes, **optional)

    def __len__(self) -> int:
        return len(self.time_s)

    def episode_bounds(self, kind: str) -> tuple[np.ndarray, np.ndarray]:
        chosen = self.episodes[self.episodes.kind == kind]
        return chosen.start_s.to_numpy(), chosen.end_s.to_numpy()

    def clean_intervals(self) -> np.ndarray:
        """Per RR interval (beat i to i+1): both beats clean and no noise episode overlaps it."""
        starts, ends = self.episode_bounds("noise")
        clean_beats = ~self.noisy
        return (clean_beats[:-1] & clean_beats[1:]
                & ~_overlaps(self.time_s[:-1], self.time_s[1:], starts, ends))


def episodes_from_beats(time_s, mask, kind: str, duration_s: float) -> pd.DataFrame:
    """Episodes of `kind` from a per-beat flag (e.g. rhythm == AF): each stretch of flagged beats runs from
    its first beat to the next unflagged beat (or the end of the recording)."""
    time_s = np.asarray(time_s, dtype=np.float64)
    mask = np.asarray(mask, dtype=bool)
    edges = np.diff(np.concatenate([[False], mask, [False]]).astype(np.int8))
    first, after = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
    ends = np.append(time_s, duration_s)[after]
    return pd.DataFrame({"kind": kind, "start_s": time_s[first], "end_s": ends}, columns=list(EPISODE_COLUMNS))


def heart_rate(track: BeatTrack, config: EventConfig = EventConfig()) -> pd.DataFrame:
    """Heart rate averaged over `hr_average_intervals` consecutive clean RR intervals, one row per window:
    first, last (beat indices), start_s, end_s, time_s (window centre), hr_bpm."""
    w = config.hr_average_intervals
    columns = ["first", "last", "start_s", "end_s", "time_s", "hr_bpm"]
    if len(track) <= w:
        return pd.DataFrame(columns=columns)
    dirty_so_far = np.concatenate([[0], np.cumsum(~track.clean_intervals())])
    first = np.flatnonzero(dirty_so_far[w:] - dirty_so_far[:-w] == 0)
    start, end = track.time_s[first], track.time_s[first + w]
    span = end - start
    keep = span > 0  # coincident beats (a damaged table) carry no rate
    first, start, end = first[keep], start[keep], end[keep]
    return pd.DataFrame({"first": first, "last": first + w, "start_s": start, "end_s": end,
                         "time_s": (start + end) / 2, "hr_bpm": 60.0 * w / (end - start)}, columns=columns)


def detect_events(track: BeatTrack, config: EventConfig = EventConfig()) -> pd.DataFrame:
    """Every event of the recording (see the module docstring for the kinds), sorted by start time."""
    rows = []
    for cls in ECTOPIC_KINDS:
        rows += _ectopic_events(track, cls, config)
    rows += _pattern_events(track, config)
    rows += _pause_events(track, config)
    rows += _episode_events(track)
    rows += _heart_rate_extremes(track, config)
    events = pd.DataFrame(rows, columns=list(EVENT_COLUMNS))
    events = events.astype({"start_s": float, "end_s": float, "beats": int, "rate_bpm": float, "reviewed": bool})
    order = events.kind.map({k: i for i, k in enumerate(EVENT_KINDS)})
    return events.assign(_order=order).sort_values(["start_s", "_order"], kind="stable") \
        .drop(columns="_order").reset_index(drop=True)


def summary(track: BeatTrack, events: pd.DataFrame | None = None, config: EventConfig = EventConfig()) -> dict:
    """The recording condensed into counts.

    Keys: duration_s, beats, hr_mean_bpm (over clean RR intervals), hr_min_bpm / hr_max_bpm and their
    hr_min_time_s / hr_max_time_s; for C in V and S: C_beats, C_per_hour, C_couplets, C_runs (every run,
    tachycardia included), VT_runs / SVT_runs, C_longest_run_beats, C_longest_run_bpm; V_bigeminy_episodes,
    V_trigeminy_episodes, pauses, longest_pause_s, longest_pause_time_s; af_burden and noise_share (shares
    of the duration). `reviewed` maps every class-based count to all / part / none: whether the beats
    behind it were reviewed (for a zero count: all beats of the recording)."""
    events = detect_events(track, config) if events is None else events
    hours = track.duration_s / SECONDS_PER_HOUR
    out = {"duration_s": track.duration_s, "beats": len(track), **_heart_rate_summary(track, events)}
    reviewed = {}
    for cls, (isolated, couplet, slow, fast) in ECTOPIC_KINDS.items():
        is_cls = track.classes == cls
        runs = events[events.kind.isin([slow, fast])]
        longest = runs.loc[runs.beats.idxmax()] if len(runs) else None
        counts = {
            f"{cls}_beats": (int(is_cls.sum()), track.reviewed[is_cls]),
            f"{cls}_couplets": _event_count(events, [couplet]),
            f"{cls}_runs": _event_count(events, [slow, fast]),
            f"{fast}_runs": _event_count(events, [fast]),
        }
        out.update({name: count for name, (count, _) in counts.items()})
        out[f"{cls}_per_hour"] = out[f"{cls}_beats"] / hours
        out[f"{cls}_longest_run_beats"] = int(longest.beats) if longest is not None else 0
        out[f"{cls}_longest_run_bpm"] = float(longest.rate_bpm) if longest is not None else float("nan")
        reviewed.update({name: _review_status(flags, track.reviewed) for name, (_, flags) in counts.items()})
        reviewed[f"{cls}_per_hour"] = reviewed[f"{cls}_beats"]
        reviewed[f"{cls}_longest_run_beats"] = reviewed[f"{cls}_runs"]
    for kind in PATTERN_KINDS.values():
        name = f"{kind}_episodes"
        out[name], flags = _event_count(events, [kind])
        reviewed[name] = _review_status(flags, track.reviewed)
    pauses = events[events.kind == "pause"]
    out["pauses"] = len(pauses)
    out["longest_pause_s"] = float((pauses.end_s - pauses.start_s).max()) if len(pauses) else 0.0
    out["longest_pause_time_s"] = float(pauses.loc[(pauses.end_s - pauses.start_s).idxmax(), "start_s"]) \
        if len(pauses) else float("nan")
    out["af_burden"] = _covered_s(*track.episode_bounds("AF"), track.duration_s) / track.duration_s
    out["noise_share"] = _covered_s(*track.episode_bounds("noise"), track.duration_s) / track.duration_s
    out["reviewed"] = reviewed
    return out


def hourly(track: BeatTrack, config: EventConfig = EventConfig()) -> pd.DataFrame:
    """Per clock hour of recording: beats, mean/min/max heart rate, V and S beats and ectopics per hour
    (V + S, scaled to a full hour where the recording covers only part of it)."""
    n_hours = max(int(np.ceil(track.duration_s / SECONDS_PER_HOUR)), 1)
    hour_of_beat = np.minimum((track.time_s // SECONDS_PER_HOUR).astype(int), n_hours - 1)
    rates = heart_rate(track, config)
    hour_of_window = np.minimum((rates.end_s.to_numpy(float) // SECONDS_PER_HOUR).astype(int), n_hours - 1)
    rr = np.diff(track.time_s)
    clean = track.clean_intervals()
    hour_of_interval = hour_of_beat[1:]
    rows = []
    for hour in range(n_hours):
        start = hour * SECONDS_PER_HOUR
        end = min(start + SECONDS_PER_HOUR, track.duration_s)
        in_hour = hour_of_beat == hour
        window_hr = rates.hr_bpm.to_numpy(float)[hour_of_window == hour]
        hour_rr = rr[clean & (hour_of_interval == hour)]
        ectopic = int(np.isin(track.classes[in_hour], list(ECTOPIC_KINDS)).sum())
        rows.append({
            "hour": hour, "start_s": start, "end_s": end, "beats": int(in_hour.sum()),
            "hr_mean_bpm": 60.0 / hour_rr.mean() if len(hour_rr) and hour_rr.mean() > 0 else np.nan,
            "hr_min_bpm": window_hr.min() if len(window_hr) else np.nan,
            "hr_max_bpm": window_hr.max() if len(window_hr) else np.nan,
            "V": int((track.classes[in_hour] == "V").sum()), "S": int((track.classes[in_hour] == "S").sum()),
            "ectopics_per_hour": ectopic * SECONDS_PER_HOUR / (end - start) if end > start else np.nan,
        })
    return pd.DataFrame(rows)


# ---------------------------------------------------------------------------------------------
# Event finders


def _event_row(track: BeatTrack, kind: str, first: int, last: int, rate_bpm: float, detail: str) -> dict:
    return {"kind": kind, "start_s": track.time_s[first], "end_s": track.time_s[last], "beats": last - first + 1,
            "rate_bpm": rate_bpm, "reviewed": bool(track.reviewed[first:last + 1].all()), "detail": detail}


def _mean_rate_bpm(track: BeatTrack, first: int, last: int) -> float:
    span = track.time_s[last] - track.time_s[first]
    return 60.0 * (last - first) / span if last > first and span > 0 else float("nan")


def _joined(track: BeatTrack, config: EventConfig) -> np.ndarray:
    """Per beat: it follows the previous beat closely enough to be consecutive with it."""
    return np.concatenate([[False], np.diff(track.time_s) <= config.pause_s])


def _class_runs(track: BeatTrack, cls: str, config: EventConfig) -> tuple[np.ndarray, np.ndarray]:
    """First and last beat index of every maximal stretch of consecutive beats of class `cls`."""
    is_cls = track.classes == cls
    continues = is_cls & np.concatenate([[False], is_cls[:-1]]) & _joined(track, config)
    starts = np.flatnonzero(is_cls & ~continues)
    ends = np.flatnonzero(is_cls & ~np.concatenate([continues[1:], [False]]))
    return starts, ends


def _ectopic_events(track: BeatTrack, cls: str, config: EventConfig) -> list[dict]:
    isolated, couplet, slow, fast = ECTOPIC_KINDS[cls]
    rows = []
    for first, last in zip(*_class_runs(track, cls, config)):
        length = last - first + 1
        if length == 1:
            coupling = track.time_s[first] - track.time_s[first - 1] if first > 0 else float("nan")
            rate = 60.0 / coupling if coupling > 0 else float("nan")
            rows.append(_event_row(track, isolated, first, last, rate, f"coupling interval {coupling:.2f} s"))
            continue
        rate = _mean_rate_bpm(track, first, last)
        if length < config.run_beats:
            rows.append(_event_row(track, couplet, first, last, rate, f"{cls}{cls} at {rate:.0f} bpm"))
        else:
            kind = fast if rate >= config.tachycardia_bpm else slow
            rows.append(_event_row(track, kind, first, last, rate, f"{length} {cls} beats at {rate:.0f} bpm"))
    return rows


def _pattern_events(track: BeatTrack, config: EventConfig) -> list[dict]:
    """Bigeminy / trigeminy: chains of isolated V beats, consecutive ones `spacing` beats apart with only
    N beats, all consecutive, in between."""
    starts, ends = _class_runs(track, "V", config)
    single = starts[starts == ends]
    # prefix sums make "every beat between a and b is N and joined" a constant-time check
    n_before = np.concatenate([[0], np.cumsum(track.classes == "N")])
    gaps_before = np.concatenate([[0], np.cumsum(~_joined(track, config))])
    rows = []
    for spacing, kind in PATTERN_KINDS.items():
        a, b = single[:-1], single[1:]
        linked = ((b - a == spacing) & (n_before[b] - n_before[a + 1] == spacing - 1)
                  & (gaps_before[b + 1] - gaps_before[a + 1] == 0))
        for first_link, last_link in _true_stretches(linked):
            cycles = last_link - first_link + 2  # V beats in the chain
            if cycles >= config.pattern_cycles:
                first, last = single[first_link], single[last_link + 1]
                rate = _mean_rate_bpm(track, first, last)
                rows.append(_event_row(track, kind, first, last, rate, f"{cycles} cycles at {rate:.0f} bpm"))
    return rows


def _true_stretches(flags: np.ndarray) -> list[tuple[int, int]]:
    edges = np.diff(np.concatenate([[False], flags, [False]]).astype(np.int8))
    return list(zip(np.flatnonzero(edges == 1), np.flatnonzero(edges == -1) - 1))


def _pause_events(track: BeatTrack, config: EventConfig) -> list[dict]:
    if len(track) < 2:
        return []
    rr = np.diff(track.time_s)
    return [_event_row(track, "pause", i, i + 1, 60.0 / rr[i], f"RR {rr[i]:.2f} s")
            for i in np.flatnonzero((rr > config.pause_s) & track.clean_intervals())]


def _episode_events(track: BeatTrack) -> list[dict]:
    rows = []
    for episode in track.episodes.itertuples(index=False):
        inside = np.flatnonzero((track.time_s >= episode.start_s) & (track.time_s < episode.end_s))
        rate = _mean_rate_bpm(track, inside[0], inside[-1]) if len(inside) else float("nan")
        seconds = episode.end_s - episode.start_s
        rows.append({"kind": episode.kind, "start_s": episode.start_s, "end_s": episode.end_s,
                     "beats": len(inside), "rate_bpm": rate,
                     "reviewed": bool(len(inside)) and bool(track.reviewed[inside].all()),
                     "detail": f"{seconds:.0f} s" + (f", {rate:.0f} bpm" if np.isfinite(rate) else "")})
    return rows


def _heart_rate_extremes(track: BeatTrack, config: EventConfig) -> list[dict]:
    rates = heart_rate(track, config)
    if rates.empty:
        return []
    w = config.hr_average_intervals
    rows = []
    for kind, position in (("HR_min", rates.hr_bpm.idxmin()), ("HR_max", rates.hr_bpm.idxmax())):
        window = rates.loc[position]
        rows.append(_event_row(track, kind, int(window["first"]), int(window["last"]), float(window.hr_bpm),
                               f"{window.hr_bpm:.0f} bpm averaged over {w} RR intervals"))
    return rows


# ---------------------------------------------------------------------------------------------
# Summary helpers


def _heart_rate_summary(track: BeatTrack, events: pd.DataFrame) -> dict:
    rr = np.diff(track.time_s)[track.clean_intervals()] if len(track) > 1 else np.array([])
    out = {"hr_mean_bpm": 60.0 / rr.mean() if len(rr) and rr.mean() > 0 else float("nan")}
    for kind, key in (("HR_min", "hr_min"), ("HR_max", "hr_max")):
        found = events[events.kind == kind]
        out[f"{key}_bpm"] = float(found.rate_bpm.iloc[0]) if len(found) else float("nan")
        out[f"{key}_time_s"] = float((found.start_s.iloc[0] + found.end_s.iloc[0]) / 2) if len(found) else float("nan")
    return out


def _event_count(events: pd.DataFrame, kinds: list[str]) -> tuple[int, np.ndarray]:
    chosen = events[events.kind.isin(kinds)]
    return len(chosen), chosen.reviewed.to_numpy(bool)


def _review_status(flags: np.ndarray, all_beats_reviewed: np.ndarray) -> str:
    """all / part / none of `flags` reviewed; a zero count rests on every beat of the recording."""
    flags = flags if len(flags) else all_beats_reviewed
    if len(flags) and flags.all():
        return "all"
    return "part" if flags.any() else "none"


# ---------------------------------------------------------------------------------------------
# Intervals


def _episode_frame(episodes, duration_s: float) -> pd.DataFrame:
    if episodes is None:
        return pd.DataFrame(columns=list(EPISODE_COLUMNS)).astype({"start_s": float, "end_s": float})
    frame = episodes if isinstance(episodes, pd.DataFrame) else pd.DataFrame(list(episodes),
                                                                               columns=list(EPISODE_COLUMNS))
    missing = [c for c in EPISODE_COLUMNS if c not in frame.columns]
    if missing:
        raise RecordError(f"episodes lack column(s) {missing}; give kind, start_s and end_s")
    frame = frame[list(EPISODE_COLUMNS)].astype({"kind": str, "start_s": float, "end_s": float})
    unknown = sorted(set(frame.kind) - set(EPISODE_KINDS))
    if unknown:
        raise RecordError(f"unknown episode kind(s) {unknown}; use {' or '.join(EPISODE_KINDS)}")
    bad = ~((frame.start_s >= 0) & (frame.start_s <= frame.end_s) & (frame.end_s <= duration_s))
    if bad.any():
        row = frame[bad].iloc[0]
        raise RecordError(f"episode {row.kind} {row.start_s:g}-{row.end_s:g} s is outside 0-{duration_s:g} s "
                          "or ends before it starts")
    return frame.sort_values("start_s", kind="stable").reset_index(drop=True)


def _merged(starts: np.ndarray, ends: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Union of intervals as sorted, disjoint intervals."""
    if len(starts) == 0:
        return starts, ends
    order = np.argsort(starts, kind="stable")
    starts, ends = starts[order], np.maximum.accumulate(ends[order])
    new = np.concatenate([[True], starts[1:] > ends[:-1]])
    last_of_group = np.concatenate([np.flatnonzero(new)[1:] - 1, [len(starts) - 1]])
    return starts[new], ends[last_of_group]


def _inside(times: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """Per time t: start <= t < end for some interval."""
    starts, ends, k, found = _first_ending_after(times, starts, ends)
    return found & (starts[k] <= times)


def _overlaps(a: np.ndarray, b: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """Per span (a, b): it shares time with some interval."""
    starts, ends, k, found = _first_ending_after(a, starts, ends)
    return found & (starts[k] < b)


def _first_ending_after(times: np.ndarray, starts: np.ndarray, ends: np.ndarray):
    """Merge the intervals; per time, the first merged interval ending after it (the only one that can
    contain it or a span starting at it) and whether there is one."""
    starts, ends = _merged(starts, ends)
    if len(starts) == 0:
        return np.zeros(1), np.zeros(1), np.zeros(len(times), dtype=int), np.zeros(len(times), dtype=bool)
    k = np.searchsorted(ends, times, side="right")
    return starts, ends, np.minimum(k, len(starts) - 1), k < len(starts)


def _covered_s(starts: np.ndarray, ends: np.ndarray, duration_s: float) -> float:
    starts, ends = _merged(starts, ends)
    return float(np.clip(ends - starts, 0, duration_s).sum())
