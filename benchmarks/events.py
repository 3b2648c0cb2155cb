"""Holter events from MIT-BIH reference annotations, checked against MIT-BIH's own rhythm annotations.

    python -m benchmarks.events --out docs/evaluation/events.md [--source DIR] [--records 100 208 ...]
                                [--scored DIR]

For every record, events (ecg_rnn.events) are computed from the cardiologists' beat labels (AAMI classes),
with AF episodes from the reference rhythm annotations `(AFIB` / `(AFL` and noise episodes from the `~`
annotations that mark the analysed lead (MLII, else the first) noisy or unreadable. MIT-BIH annotates
ventricular bigeminy `(B`, trigeminy `(T`, ventricular tachycardia `(VT`, idioventricular rhythm `(IVR`
and supraventricular tachyarrhythmia `(SVTA` as rhythm episodes of their own; the report counts how many
of those episodes the events found and how many events fall inside one.

With `--scored DIR` (the output folder of `ecg-rnn score`), each record's `DIR/<record>.csv` (columns
time_s, suggested_class, rhythm, quality) and `DIR/<record>.events.csv` (the pipeline's events; computed
from the per-beat columns where absent) put the pipeline's counts next to the reference counts.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import wfdb

from ecg_rnn.beats import AAMI_OF_SYMBOL, aami_class
from ecg_rnn.events import BeatTrack, EventConfig, detect_events, episodes_from_beats, summary
from ecg_rnn.protocols import ALL_RECORDS, locate_mitdb

AF_RHYTHMS = ("(AFIB", "(AFL")
ANALYSED_LEAD = "MLII"
UNREADABLE = -1  # `~` subtype: every signal unreadable; otherwise bit i (noisy) or bit 4+i (unreadable)
# MIT-BIH rhythm annotation -> the event kinds that should find it
RHYTHM_EVENTS = {
    "(B": ("V_bigeminy",),
    "(T": ("V_trigeminy",),
    "(VT": ("VT",),
    "(IVR": ("V_run",),
    "(SVTA": ("SVT",),
}
# The per-beat CSV's labels (the rhythm and quality stages' contract)
AF_LABELS = ("AF", "AFIB", "AFL")
NOISY_QUALITY = ("noise", "noisy", "unreadable")
COUNTS = ("V_beats", "S_beats", "V_couplets", "V_runs", "VT_runs", "V_bigeminy_episodes",
          "V_trigeminy_episodes", "S_couplets", "S_runs", "SVT_runs", "pauses")


@dataclass(frozen=True)
class ReferenceRecord:
    """A record's reference annotations, with the facts the events need."""

    name: str
    fs: float
    duration_s: float
    time_s: np.ndarray  # every annotation
    symbol: np.ndarray
    subtype: np.ndarray
    aux: np.ndarray
    lead_index: int


def read_reference(path: Path) -> ReferenceRecord:
    header = wfdb.rdheader(str(path))
    ann = wfdb.rdann(str(path), "atr")
    names = list(header.sig_name or [])
    return ReferenceRecord(
        name=path.name, fs=float(header.fs), duration_s=header.sig_len / float(header.fs),
        time_s=np.asarray(ann.sample, dtype=np.float64) / float(header.fs),
        symbol=np.asarray(ann.symbol, dtype=str), subtype=np.asarray(ann.subtype, dtype=int),
        aux=np.array([a.rstrip("\x00").strip() for a in ann.aux_note], dtype=str),
        lead_index=names.index(ANALYSED_LEAD) if ANALYSED_LEAD in names else 0)


def rhythm_episodes(ref: ReferenceRecord) -> pd.DataFrame:
    """Every rhythm annotation as an episode (label, start_s, end_s) lasting until the next one."""
    is_rhythm = (ref.symbol == "+") & (np.char.str_len(ref.aux) > 0)
    starts, labels = ref.time_s[is_rhythm], ref.aux[is_rhythm]
    ends = np.append(starts[1:], ref.duration_s)
    return pd.DataFrame({"label": labels, "start_s": starts, "end_s": ends})


def noise_episodes(ref: ReferenceRecord) -> pd.DataFrame:
    """Spans where the `~` annotations mark the analysed lead noisy or unreadable."""
    is_noise = ref.symbol == "~"
    lead_bits = (1 << ref.lead_index) | (1 << (ref.lead_index + 4))
    subtype = ref.subtype[is_noise]
    noisy = (subtype == UNREADABLE) | ((subtype & lead_bits) != 0)
    starts = ref.time_s[is_noise]
    ends = np.append(starts[1:], ref.duration_s)
    return pd.DataFrame({"kind": "noise", "start_s": starts[noisy], "end_s": ends[noisy]})


def reference_track(ref: ReferenceRecord) -> BeatTrack:
    """The cardiologists' beats (all reviewed) with the reference AF and noise episodes."""
    is_beat = np.isin(ref.symbol, list(AAMI_OF_SYMBOL))
    rhythms = rhythm_episodes(ref)
    af = rhythms[rhythms.label.isin(AF_RHYTHMS)].assign(kind="AF").drop(columns="label")
    return BeatTrack.build(ref.time_s[is_beat], aami_class(ref.symbol[is_beat]), duration_s=ref.duration_s,
                           reviewed=np.ones(int(is_beat.sum()), bool),
                           episodes=pd.concat([af, noise_episodes(ref)], ignore_index=True))


def scored_track(beats: pd.DataFrame, duration_s: float) -> BeatTrack:
    """The pipeline's suggested classes (none reviewed) with AF and noise episodes from its per-beat labels."""
    rhythm = beats["rhythm"].astype(str).str.strip().str.lstrip("(").str.upper()
    noisy = beats["quality"].astype(str).str.strip().str.lower().isin(NOISY_QUALITY)
    episodes = pd.concat([episodes_from_beats(beats.time_s, rhythm.isin(AF_LABELS), "AF", duration_s),
                          episodes_from_beats(beats.time_s, noisy, "noise", duration_s)], ignore_index=True)
    return BeatTrack.build(beats.time_s, beats.suggested_class, duration_s=duration_s, noisy=noisy,
                           episodes=episodes)


def episode_agreement(rhythms: pd.DataFrame, events: pd.DataFrame, label: str) -> dict:
    """Reference episodes of `label` that some matching event overlaps, and matching events that lie
    (at least partly) inside such an episode."""
    episodes = rhythms[rhythms.label == label]
    found = events[events.kind.isin(RHYTHM_EVENTS[label])]
    touching = ((found.start_s.to_numpy()[:, None] < episodes.end_s.to_numpy()[None, :])
                & (found.end_s.to_numpy()[:, None] >= episodes.start_s.to_numpy()[None, :]))
    return {"episodes": len(episodes), "episodes_found": int(touching.any(axis=0).sum()),
            "events": len(found), "events_inside": int(touching.any(axis=1).sum())}


def record_row(ref: ReferenceRecord, config: EventConfig) -> tuple[dict, dict]:
    """The record's summary counts and its agreement with each MIT-BIH rhythm label."""
    track = reference_track(ref)
    events = detect_events(track, config)
    rhythms = rhythm_episodes(ref)
    return summary(track, events, config), {label: episode_agreement(rhythms, events, label)
                                            for label in RHYTHM_EVENTS}


def pipeline_counts(scored_dir: Path, ref: ReferenceRecord, config: EventConfig) -> dict | None:
    """The pipeline's counts for one record, or None where the scored folder has no CSV for it."""
    beats_csv = scored_dir / f"{ref.name}.csv"
    if not beats_csv.is_file():
        return None
    track = scored_track(pd.read_csv(beats_csv, usecols=["time_s", "suggested_class", "rhythm", "quality"]),
                         ref.duration_s)
    events_csv = scored_dir / f"{ref.name}.events.csv"
    events = pd.read_csv(events_csv) if events_csv.is_file() else detect_events(track, config)
    return {**summary(track, events, config), "events_from": "events.csv" if events_csv.is_file() else "per-beat"}


# ---------------------------------------------------------------------------------------------
# Markdown


def _cell(value: float, digits: int = 0) -> str:
    return "–" if value is None or (isinstance(value, float) and not np.isfinite(value)) else f"{value:.{digits}f}"


def _with_reference(count: int, agreement: dict) -> str:
    return f"{count} ({agreement['episodes']})"


def reference_table(rows: dict[str, tuple[dict, dict]]) -> list[str]:
    lines = ["| record | beats | V | S | V couplets | V runs / VT | bigeminy (B) | trigeminy (T) | VT (VT) "
             "| SVT (SVTA) | S runs | pauses | longest pause s | AF % | noise % | HR min–max |",
             "|---|" + "---|" * 15]
    for name, (s, agree) in rows.items():
        lines.append(
            f"| {name} | {s['beats']} | {s['V_beats']} | {s['S_beats']} | {s['V_couplets']} "
            f"| {s['V_runs']} / {s['VT_runs']} "
            f"| {_with_reference(s['V_bigeminy_episodes'], agree['(B'])} "
            f"| {_with_reference(s['V_trigeminy_episodes'], agree['(T'])} "
            f"| {_with_reference(s['VT_runs'], agree['(VT'])} | {_with_reference(s['SVT_runs'], agree['(SVTA'])} "
            f"| {s['S_runs']} | {s['pauses']} | {_cell(s['longest_pause_s'], 1)} | {_cell(100 * s['af_burden'], 1)} "
            f"| {_cell(100 * s['noise_share'], 1)} | {_cell(s['hr_min_bpm'])}–{_cell(s['hr_max_bpm'])} |")
    return lines


def agreement_table(rows: dict[str, tuple[dict, dict]]) -> list[str]:
    lines = ["| MIT-BIH rhythm | matched by events | reference episodes | found by an event | events "
             "| events inside a reference episode | records with the rhythm | records with episodes not found |",
             "|---|---|---|---|---|---|---|---|"]
    for label, kinds in RHYTHM_EVENTS.items():
        parts = [agree[label] for _, agree in rows.values()]
        total = {key: sum(p[key] for p in parts) for key in parts[0]}
        records = sum(p["episodes"] > 0 for p in parts)
        missed = ", ".join(f"{name} ({agree[label]['episodes'] - agree[label]['episodes_found']})"
                           for name, (_, agree) in rows.items()
                           if agree[label]["episodes_found"] < agree[label]["episodes"]) or "–"
        lines.append(f"| `{label}` | {', '.join(kinds)} | {total['episodes']} "
                     f"| {total['episodes_found']} ({_percent(total['episodes_found'], total['episodes'])}) "
                     f"| {total['events']} "
                     f"| {total['events_inside']} ({_percent(total['events_inside'], total['events'])}) "
                     f"| {records} | {missed} |")
    return lines


def _percent(part: int, whole: int) -> str:
    return f"{100 * part / whole:.0f}%" if whole else "–"


def pipeline_table(rows: dict[str, tuple[dict, dict]], pipeline: dict[str, dict]) -> list[str]:
    keys = (*COUNTS, "af_burden", "noise_share")
    lines = ["Cells: reference / pipeline.", "",
             "| record | events from | " + " | ".join(keys) + " |", "|---|---|" + "---|" * len(keys)]
    for name, ours in pipeline.items():
        ref = rows[name][0]
        cells = [f"{ref[k]} / {ours[k]}" if k in COUNTS else f"{100 * ref[k]:.1f}% / {100 * ours[k]:.1f}%"
                 for k in keys]
        lines.append(f"| {name} | {ours['events_from']} | " + " | ".join(cells) + " |")
    return lines


def totals_line(rows: dict[str, tuple[dict, dict]]) -> str:
    total = {k: sum(s[k] for s, _ in rows.values()) for k in COUNTS}
    with_af = [s["af_burden"] for s, _ in rows.values() if s["af_burden"] > 0]
    return (f"Totals over {len(rows)} records: {total['V_beats']} V and {total['S_beats']} S beats, "
            f"{total['V_couplets']} V couplets, {total['V_runs']} V runs ({total['VT_runs']} VT), "
            f"{total['V_bigeminy_episodes']} bigeminy and {total['V_trigeminy_episodes']} trigeminy episodes, "
            f"{total['S_couplets']} S couplets, {total['S_runs']} S runs ({total['SVT_runs']} SVT), "
            f"{total['pauses']} pauses; {len(with_af)} records with AF "
            f"(burden {min(with_af, default=0):.0%}–{max(with_af, default=0):.0%}).")


READING_NOTES = (
    "Reading the table: events follow their definitions in `ecg_rnn.events`, MIT-BIH's rhythm labels follow "
    "the annotators' judgement, so the two differ by design where the definitions do. Bigeminy and trigeminy "
    "need N beats between the V beats: paced beats are AAMI class Q, so a paced-V bigeminy (record 217) is no "
    "N-V bigeminy, and fusion (F) beats in the alternation break it too. A `(VT` episode slower than the "
    "tachycardia rate is a `V_run`, and one holding only two V beats a `V_couplet`. Several events may "
    "fall inside one long MIT-BIH episode, and MIT-BIH marks an episode only where the annotators judged the "
    "rhythm sustained. Ventricular flutter (`(VFL`, record 207) is annotated with flutter waves, not beats, so "
    "it reads as a long pause and pulls the lowest heart rate down.",
)


def markdown(rows: dict[str, tuple[dict, dict]], pipeline: dict[str, dict], config: EventConfig,
             command: str) -> str:
    lines = ["# Holter events on MIT-BIH reference labels", "",
             f"Reproduce: `{command}`", "",
             "Events (`ecg_rnn.events`) computed from the cardiologists' beat labels (AAMI classes), AF "
             "episodes from the reference rhythm annotations `(AFIB`/`(AFL`, noise episodes from the `~` "
             "annotations of the analysed lead (MLII). Thresholds: " + ", ".join(
                 f"{k}={v}" for k, v in vars(config).items()) + ".", "",
             totals_line(rows), "",
             "## MIT-BIH rhythm annotations against the events", "",
             "MIT-BIH marks bigeminy, trigeminy, VT, IVR and SVTA as rhythm episodes. An episode counts as "
             "found when an event of a matching kind overlaps it; an event counts as inside when it overlaps "
             "such an episode.", "",
             *agreement_table(rows), "",
             *READING_NOTES, "",
             "## Per record", "",
             "Counts from the events; in brackets, the number of MIT-BIH rhythm episodes of that kind. "
             "V runs: all runs of >= 3 V beats, VT those at >= 100 bpm. HR: lowest and highest "
             f"{config.hr_average_intervals}-interval average over clean beats.", "",
             *reference_table(rows), ""]
    if pipeline:
        lines += ["## Pipeline against reference", "",
                  "The pipeline's counts come from `ecg-rnn score` run on the records with its defaults (R-peaks "
                  "detected, the shipped default model; the reference annotations are not used), e.g. "
                  "`ecg-rnn score ../shared/data/mitdb --out DIR`, then this command with `--scored DIR`.", "",
                  *pipeline_table(rows, pipeline), ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("docs/evaluation/events.md"))
    parser.add_argument("--source", type=Path, help="folder of MIT-BIH records (default: found as `make data`)")
    parser.add_argument("--records", nargs="+", help="record names (default: all 48)")
    parser.add_argument("--scored", type=Path, help="output folder of `ecg-rnn score` to compare with")
    args = parser.parse_args(argv)
    source = args.source or locate_mitdb(download=False)
    config = EventConfig()
    rows, pipeline = {}, {}
    for name in args.records or ALL_RECORDS:
        ref = read_reference(source / name)
        rows[name] = record_row(ref, config)
        if args.scored:
            counts = pipeline_counts(args.scored, ref, config)
            if counts is not None:
                pipeline[name] = counts
    command = " ".join(["python -m benchmarks.events", *(argv if argv is not None else sys.argv[1:])])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(markdown(rows, pipeline, config, command))
    print(f"wrote {args.out} ({len(rows)} records, {len(pipeline)} with pipeline counts)")


if __name__ == "__main__":
    main()
