"""Rhythm stage: atrial fibrillation (and flutter with variable block) episodes from beat times and,
when given, the atrial activity before each QRS.

In atrial fibrillation the ventricles are driven by a chaotic atrial activity: the RR intervals
are irregular *and* never repeat a pattern. Ectopic beats make sinus rhythm just as irregular, but
in patterns that recur (a premature beat with its fixed coupling interval and compensatory pause,
bigeminy, trigeminy), so irregularity alone calls ectopy AF. This stage therefore measures how far
each short RR pattern is from the closest other pattern of the same window, the idea behind
sample entropy (Richman & Moorman 2000) and its AF detector, the coefficient of sample entropy
(Lake & Moorman 2011), and behind Lorenz-plot dispersion detectors (Sarkar, Ritscher & Mehra 2008):

1. the beat series is split where a noise segment or a gap longer than max_rr_s interrupts it;
2. windows of window_beats RR intervals (every step_beats intervals) are embedded as points of
   `embedding` consecutive intervals; each point's Chebyshev distance to its nearest neighbour in the
   window is taken, and the window's *dispersion* is the median of those distances over the median
   RR (dimensionless, so any heart rate and sampling rate work). Recurring patterns, however
   irregular, have close neighbours (dispersion of a few %); AF's random intervals do not;
3. a second, classic sign of ectopy gates it: a premature beat's short interval followed by its
   compensatory pause makes successive RR intervals anti-correlated, while in AF they are nearly
   independent, so windows whose lag-1 RR autocorrelation is below min_serial_correlation are not AF;
4. each RR interval takes the measures of the window centred nearest to it; with hysteresis, AF
   starts where the dispersion reaches enter_dispersion and lasts while it stays above
   hold_dispersion; episodes closer than merge_gap_s are merged and those shorter than min_episode_s
   (30 s, the clinical definition of an AF episode) dropped.

Atrial activity (optional): in AF there are no P waves, only fibrillatory waves, so the stretch of
signal before each QRS (PRE_QRS_S: 0.25 to 0.08 s before the R-peak) changes shape from beat to
beat; sinus rhythm keeps a repeatable P wave however ectopic its RR intervals (trigeminy, blocked
atrial premature beats). When af_episodes is given these pre-QRS segments, each window's *atrial
similarity* is the median correlation of its beats' segments with their median segment, windows at
or above max_atrial_similarity are not AF, and, with that evidence guarding against ectopy, the
dispersion levels atrial_enter_dispersion / atrial_hold_dispersion (lower than the RR-only ones)
apply. Without segments the stage works on RR intervals alone, exactly as described above, and so it
does in windows whose segments are flat or rough (a lead off or covered in noise correlates with
nothing, as fibrillatory waves do, so there the segments say nothing about the atria: _readable).

Parameters were selected by leave-one-record-out over all 48 MIT-BIH records, separately with and
without the atrial evidence; a DS1-only selection (two AF records) did not carry over to DS2
(docs/evaluation/rhythm.md has the out-of-fold figures of each).
Imports only numpy and ecg_rnn.errors.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ecg_rnn.errors import SignalError

AF = "AF"
PRE_QRS_S = (0.25, 0.08)  # the atrial segment: from this long before the R-peak to this long before it
# a window's pre-QRS segments are read as atrial activity only when they are not mostly flat and their
# typical sample-to-sample difference power stays under this share of their power (MIT-BIH's lead-0
# segments: median 0.1-0.5 per record; band-passed white noise at 0 dB: about 1.0). Of the 48 records'
# AF, only 17 s of 210's read as unreadable at this level
MAX_ATRIAL_ROUGHNESS = 0.8
FLAT_POWER_SHARE = 1e-6  # a segment with less power than this share of its window's median is flat
_WINDOW_BLOCK = 2048  # windows compared at once (bounds memory on 24-hour recordings)


@dataclass(frozen=True)
class RhythmConfig:
    """AF detection settings (selected by leave-one-record-out over the 48 MIT-BIH records, see
    docs/evaluation/rhythm.md for the out-of-fold figures and the DS1-only selection)."""

    window_beats: int = 32  # RR intervals per analysis window
    step_beats: int = 4  # a window starts every this many intervals
    embedding: int = 3  # consecutive RR intervals per pattern
    min_serial_correlation: float = -0.4  # windows whose RR lag-1 autocorrelation is below this are not AF
    enter_dispersion: float = 0.08  # AF starts where the window dispersion reaches this...
    hold_dispersion: float = 0.068  # ...and goes on while it stays at or above this
    merge_gap_s: float = 10.0  # episodes closer than this are one episode
    min_episode_s: float = 30.0  # shorter episodes are dropped
    max_rr_s: float = 3.0  # a longer gap between beats (asystole, lost signal) interrupts the analysis
    # used only when pre-QRS segments are given: windows whose beats repeat their P wave this well
    # (median correlation with the window's median segment) are not AF, and the levels below apply
    max_atrial_similarity: float = 0.6
    atrial_enter_dispersion: float = 0.05
    atrial_hold_dispersion: float = 0.045

    def __post_init__(self):
        if not 2 <= self.embedding < self.window_beats // 2:
            raise ValueError(f"embedding must be at least 2 and under half of window_beats ({self.window_beats})")
        if self.step_beats < 1:
            raise ValueError("step_beats must be at least 1")
        if self.hold_dispersion > self.enter_dispersion:
            raise ValueError("hold_dispersion must not exceed enter_dispersion")
        if self.atrial_hold_dispersion > self.atrial_enter_dispersion:
            raise ValueError("atrial_hold_dispersion must not exceed atrial_enter_dispersion")


@dataclass(frozen=True)
class Episode:
    """One rhythm episode, in seconds from the recording's start."""

    kind: str
    start_s: float
    end_s: float

    @property
    def duration_s(self) -> float:
        return self.end_s - self.start_s


def af_episodes(beat_times_s: np.ndarray, config: RhythmConfig = RhythmConfig(),
                noise_segments: Sequence[tuple[float, float]] = (),
                pre_qrs: np.ndarray | None = None) -> list[Episode]:
    """AF episodes (kind "AF") from R-peak times in seconds; beats inside noise_segments (start_s,
    end_s) are ignored and the analysis does not run across them. pre_qrs, when given, holds one row
    per beat time: the filtered signal over PRE_QRS_S before that R-peak (pre_qrs_segments, or the
    pre_qrs_columns of cut beat windows), adding the atrial evidence (module doc)."""
    t, order, beats = _checked_times(beat_times_s)
    segments = None if pre_qrs is None else _checked_segments(pre_qrs, beats)[order]
    spans: list[list[float]] = []
    for run in _clean_runs(t, noise_segments, config.max_rr_s):
        spans += _af_spans(t[run], config, None if segments is None else segments[run])
    return [Episode(AF, start, end) for start, end in _merged(spans, config.merge_gap_s)
            if end - start >= config.min_episode_s]


def in_episodes(times_s: np.ndarray, episodes: Sequence[Episode]) -> np.ndarray:
    """True for each time that falls inside one of the episodes (start inclusive, end exclusive)."""
    times = np.asarray(times_s, dtype=np.float64)
    if not episodes:
        return np.zeros(times.shape, bool)
    ordered = sorted(episodes, key=lambda e: e.start_s)
    starts = np.array([e.start_s for e in ordered])
    ends = np.maximum.accumulate(np.array([e.end_s for e in ordered]))  # overlapping episodes nest
    k = np.searchsorted(starts, times, side="right") - 1
    return (k >= 0) & (times < ends[np.maximum(k, 0)])


def _pre_qrs_samples(fs: float) -> tuple[int, int] | None:
    """PRE_QRS_S in samples before the R-peak at fs Hz; None when fs leaves fewer than 3 samples."""
    start, stop = (int(round(s * fs)) for s in PRE_QRS_S)
    return (start, stop) if start - stop >= 3 else None


def pre_qrs_segments(x: np.ndarray, fs: float, r_samples: np.ndarray) -> np.ndarray:
    """The segments of x over PRE_QRS_S before each R-peak sample (beats too near the start repeat
    the first sample), one row per beat: the pre_qrs input of af_episodes."""
    span = _pre_qrs_samples(fs)
    if span is None:
        raise SignalError(f"{fs:g} Hz leaves fewer than 3 samples before the QRS for the atrial evidence")
    start, stop = span
    index = np.asarray(r_samples, dtype=np.int64)[:, None] + np.arange(-start, -stop)
    return np.asarray(x, dtype=np.float32)[np.clip(index, 0, len(x) - 1)]


def pre_qrs_columns(window_pre_s: float, fs: float) -> slice | None:
    """The columns holding the PRE_QRS_S segment in beat windows cut from window_pre_s before the
    R-peak at fs Hz (rounded as beat windows are); None when the windows start too late to hold it
    or fs leaves fewer than 3 samples (the stage then works on RR intervals alone)."""
    pre, span = int(round(window_pre_s * fs)), _pre_qrs_samples(fs)
    return slice(pre - span[0], pre - span[1]) if span is not None and span[0] <= pre else None


def rr_dispersion(rr_s: np.ndarray, config: RhythmConfig = RhythmConfig()) -> np.ndarray:
    """Per RR interval: the dispersion of the window centred nearest to it (see the module doc).
    Needs at least window_beats intervals."""
    return _window_measures(np.asarray(rr_s, dtype=np.float64), config)[0]


def rr_serial_correlation(rr_s: np.ndarray, config: RhythmConfig = RhythmConfig()) -> np.ndarray:
    """Per RR interval: the lag-1 autocorrelation of the RR intervals of the window centred nearest
    to it; strongly negative where premature beats and their compensatory pauses alternate."""
    return _window_measures(np.asarray(rr_s, dtype=np.float64), config)[1]


def atrial_similarity(pre_qrs: np.ndarray, config: RhythmConfig = RhythmConfig()) -> np.ndarray:
    """Per RR interval (one fewer than the beats whose pre-QRS segments are the rows): the atrial
    similarity of the window centred nearest to it; high where a repeatable P wave precedes the QRS,
    low in AF; NaN where the segments are flat or noise (unreadable). Needs at least window_beats intervals."""
    segments = _checked_segments(pre_qrs, len(pre_qrs))
    return _atrial_similarity(segments, config)


def _window_starts(n: int, config: RhythmConfig) -> tuple[np.ndarray, np.ndarray]:
    """(first interval of each window, the window nearest to each of the n intervals)."""
    w = config.window_beats
    if n < w:
        raise SignalError(f"{n} RR intervals are too few for a {w}-interval window")
    starts = np.arange(0, n - w + 1, config.step_beats)
    if starts[-1] != n - w:
        starts = np.r_[starts, n - w]
    centres = starts + w / 2.0
    return starts, np.searchsorted((centres[1:] + centres[:-1]) / 2.0, np.arange(n) + 0.5)


def _blocks(starts: np.ndarray) -> list[np.ndarray]:
    return np.array_split(starts, -(-len(starts) // _WINDOW_BLOCK))


def _window_measures(rr: np.ndarray, config: RhythmConfig) -> tuple[np.ndarray, np.ndarray]:
    """(dispersion, lag-1 autocorrelation) of the windows, each interval taking its nearest window's."""
    starts, nearest = _window_starts(len(rr), config)
    measures = [_window_dispersion_and_correlation(rr[block[:, None] + np.arange(config.window_beats)],
                                                   config.embedding) for block in _blocks(starts)]
    return (np.concatenate([d for d, _ in measures])[nearest],
            np.concatenate([c for _, c in measures])[nearest])


def _atrial_similarity(segments: np.ndarray, config: RhythmConfig) -> np.ndarray:
    """Per RR interval, its nearest window's median correlation between the pre-QRS segments of the
    beats closing the window's intervals and their median segment; NaN where the window's segments
    cannot be read as atrial activity (see _readable)."""
    w = config.window_beats
    starts, nearest = _window_starts(len(segments) - 1, config)
    similarity = []
    for block in _blocks(starts):
        windows = segments[block[:, None] + 1 + np.arange(w)]  # (windows, beats, samples)
        windows = windows - windows.mean(axis=2, keepdims=True)
        template = np.median(windows, axis=1, keepdims=True)
        template -= template.mean(axis=2, keepdims=True)
        norms = np.sqrt((windows ** 2).sum(axis=2) * (template ** 2).sum(axis=2))
        correlation = (windows * template).sum(axis=2) / np.maximum(norms, np.finfo(np.float32).tiny)
        similarity.append(np.where(_readable(windows), np.median(correlation, axis=1), np.nan))
    return np.concatenate(similarity)[nearest]


def _readable(windows: np.ndarray) -> np.ndarray:
    """Per window (beats x samples, each segment centred): whether its pre-QRS segments can be read as
    atrial activity. A flat lead (electrode off, zeros) or broadband noise correlates with nothing,
    exactly as fibrillatory waves do, so it would pass for AF: P and f waves are slow (under ~10 Hz),
    noise is not, so a window whose typical segment has more than MAX_ATRIAL_ROUGHNESS of its power in
    sample-to-sample differences, or whose typical segment is flat, says nothing about the atria."""
    power = (windows ** 2).mean(axis=2)
    roughness = (np.diff(windows, axis=2) ** 2).mean(axis=2) / np.maximum(power, np.finfo(np.float32).tiny)
    flat = power <= FLAT_POWER_SHARE * np.median(power, axis=1, keepdims=True) + np.finfo(np.float32).tiny
    return (np.median(roughness, axis=1) <= MAX_ATRIAL_ROUGHNESS) & (np.mean(flat, axis=1) < 0.5)


def _checked_times(beat_times_s: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """(the distinct times, sorted; the index of each in the input; the input's length)."""
    try:
        t = np.asarray(beat_times_s, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError):
        raise SignalError("beat times must be numbers (seconds)") from None
    if not np.isfinite(t).all():
        raise SignalError("beat times hold NaN or infinite values; pass finite R-peak times in seconds")
    distinct, order = np.unique(t, return_index=True)
    return distinct, order, len(t)


def _checked_segments(pre_qrs: np.ndarray, beats: int) -> np.ndarray:
    segments = np.asarray(pre_qrs, dtype=np.float32)
    if segments.ndim != 2 or len(segments) != beats or segments.shape[1] < 3:
        raise SignalError(f"pre_qrs must hold one row of at least 3 samples per beat ({beats}), "
                          f"not shape {segments.shape}")
    if not np.isfinite(segments).all():
        raise SignalError("pre_qrs holds NaN or infinite values")
    return segments


def _clean_runs(t: np.ndarray, noise_segments: Sequence[tuple[float, float]], max_rr_s: float) -> list[np.ndarray]:
    """Indices into the beat times, split into runs: no beat inside a noise segment, no noise
    segment and no gap longer than max_rr_s between two beats of a run."""
    segments = sorted((float(a), float(b)) for a, b in noise_segments if b > a)
    kept = np.arange(len(t))
    breaks = np.diff(t) > max_rr_s
    if segments:
        starts, ends = np.array(segments).T
        ends = np.maximum.accumulate(ends)
        k = np.searchsorted(ends, t, side="right")  # first segment ending after each beat
        inside = (k < len(starts)) & (starts[np.minimum(k, len(starts) - 1)] <= t)
        kept, t = kept[~inside], t[~inside]
        k = np.searchsorted(ends, t[:-1], side="right")
        breaks = (np.diff(t) > max_rr_s) | ((k < len(starts)) & (starts[np.minimum(k, len(starts) - 1)] < t[1:]))
    return np.split(kept, np.flatnonzero(breaks) + 1)


def _af_spans(t: np.ndarray, config: RhythmConfig, segments: np.ndarray | None) -> list[list[float]]:
    """[start_s, end_s] of the AF stretches of one uninterrupted run of beats (segments: their
    pre-QRS segments, or None for RR intervals alone)."""
    rr = np.diff(t)
    if len(rr) < config.window_beats:
        return []
    dispersion, correlation = _window_measures(rr, config)
    possible = correlation >= config.min_serial_correlation
    enter, hold = config.enter_dispersion, config.hold_dispersion
    if segments is not None:  # where the segments are unreadable, RR intervals alone decide
        similarity = _atrial_similarity(segments, config)
        readable = np.isfinite(similarity)
        possible &= ~readable | (similarity < config.max_atrial_similarity)
        enter = np.where(readable, config.atrial_enter_dispersion, enter)
        hold = np.where(readable, config.atrial_hold_dispersion, hold)
    held = np.r_[False, (dispersion >= hold) & possible, False]
    edges = np.flatnonzero(np.diff(held.astype(np.int8)))
    entered = np.r_[0, np.cumsum((dispersion >= enter) & possible)]
    return [[t[a], t[b]] for a, b in zip(edges[::2], edges[1::2]) if entered[b] > entered[a]]


def _window_dispersion_and_correlation(windows: np.ndarray, embedding: int) -> tuple[np.ndarray, np.ndarray]:
    """Per window (row): the median nearest-neighbour Chebyshev distance between its embedded RR
    patterns over its median RR, and the lag-1 autocorrelation of its RR intervals (float32: ample
    for seconds, and twice as fast)."""
    windows = windows.astype(np.float32)
    points = windows.shape[1] - embedding + 1
    distance = None
    for lag in range(embedding):
        coordinate = windows[:, lag:lag + points]
        gap = np.abs(coordinate[:, :, None] - coordinate[:, None, :])
        distance = gap if distance is None else np.maximum(distance, gap, out=distance)
    distance[:, np.arange(points), np.arange(points)] = np.inf
    dispersion = np.median(distance.min(axis=2), axis=1) / np.median(windows, axis=1)
    centred = windows - windows.mean(axis=1, keepdims=True)
    correlation = ((centred[:, 1:] * centred[:, :-1]).sum(axis=1)
                   / np.maximum((centred ** 2).sum(axis=1), np.finfo(np.float32).tiny))
    return dispersion, correlation


def _merged(spans: list[list[float]], gap_s: float) -> list[tuple[float, float]]:
    """Spans (sorted) merged where they are at most gap_s apart."""
    merged: list[list[float]] = []
    for start, end in sorted(spans):
        if merged and start - merged[-1][1] <= gap_s:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    return [(a, b) for a, b in merged]
