"""Rhythm and quality stages on MIT-BIH: AF episodes, the noise stress test, and how their defaults were selected.

    .venv/bin/python -m benchmarks.rhythm --out docs/evaluation/rhythm.md
    .venv/bin/python -m benchmarks.rhythm --quality --out docs/quality.md

Rhythm (default): selects RhythmConfig by leave-one-record-out over the DS1 records (the project
rule; DS2 scored once) and over all records (out-of-fold figures; this selection is the library
default), using reference and detected R-peaks, once on RR intervals alone and once with the atrial
evidence (pre-QRS segments of lead 0, filtered and resampled as the beats stage cuts them), then
scores the library default on all 48 records against the reference rhythm
annotations ('(AFIB' and '(AFL' start AF, any other '(' rhythm ends it) with three R-peak sources:
the reference beat annotations, detect_r_peaks on lead 0, and fuse_leads on both leads with its
noise segments. Reports AF duration sensitivity / positive predictivity per record and pooled,
episode-level figures for reference episodes of at least 30 s, the share of reference AF beats
covered in the AF records, and timings.

Quality (--quality): refits the quality model on DS1 (leave-one-record-out figures, then all of
DS1), compares it with the library's weights, and runs the NSTDB-style stress test (synthetic em,
ma and bw noise at 12, 6 and 0 dB from minute 5 on) on DS1 (tuning) and DS2 (held out): windows
flagged, beats kept by fuse_leads when one lead is destroyed, noise segments when both are noisy,
and agreement with MIT-BIH's own noise annotations ('~'); then selects fuse_leads' settings on DS1
(max_split_share, the split test; min_lead_agreement, when noisy leads stay readable;
template_cycle_share and min_template_correlation, the template test).

The database is --mitdb, else $MITDB_DIR, else data/mitdb/ if it holds records, else
../shared/data/mitdb/.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import wfdb
from tqdm.auto import tqdm

from benchmarks.rpeaks import BEAT_SYMBOLS, command_line, cpu_model, default_mitdb, load_average
from ecg_rnn import quality, rhythm, stress
from ecg_rnn.protocols import DS1, DS2, PACED
from ecg_rnn.signal import SignalConfig, detect_r_peaks, preprocess

AF_RHYTHMS = ("(AFIB", "(AFL")
AF_RECORDS = ("201", "202", "203", "210", "219", "221", "222")  # beat shares are reported for these
MIN_EPISODE_S = 30.0  # episode-level figures count reference episodes at least this long
NORMAL_SYMBOLS = frozenset("NLRej")  # beats whose QRS sets the stress test's signal power
SOURCES = ("reference", "detected", "fused")
# Selection grid (LORO on DS1). min_episode_s (30 s, the clinical definition of an AF episode) and
# merge_gap_s are fixed a priori; the window, the entry level, the hysteresis and the ectopy gate
# are selected.
GRID_WINDOW_BEATS = (32, 48)
GRID_ENTER = (0.05, 0.06, 0.07, 0.08, 0.09, 0.10, 0.11, 0.12, 0.13)
GRID_HOLD_SHARE = (0.85, 0.9)
GRID_MIN_CORRELATION = (-1.0, -0.4, -0.3)  # -1 leaves the serial-correlation gate off
# with the atrial evidence the entry levels and hysteresis above apply to atrial_enter_dispersion /
# atrial_hold_dispersion (without a gate the grid would repeat the RR-only one)
GRID_MAX_ATRIAL_SIMILARITY = (0.4, 0.5, 0.6, 0.7, 0.8)
EVIDENCE = {False: "RR only", True: "RR + atrial"}
SNRS_DB = (12.0, 6.0, 0.0)
# QualityConfig.max_split_share: the grid (0: no phantom test), judged on DS1 with both leads noisy
SPLIT_SHARES = (0.0, 0.7, 0.75, 0.8)
SPLIT_KINDS = ("em", "ma")  # the noise kinds that fake beats
MAX_TRUE_BEATS_LOST = 1e-4  # per reference beat of the unmodified records: the test may cost at most this
# QualityConfig.min_lead_agreement: the grid (the last: never readable), and how much +P it may cost
LEAD_AGREEMENTS = (0.6, 0.7, 0.8, 0.9, 1.01)
# QualityConfig (template_cycle_share, min_template_correlation): the grid ((0, 0): no template test)
TEMPLATE_TESTS = ((0.0, 0.0), *((share, r) for share in (0.4, 0.5, 0.6, 0.7, 0.8) for r in (0.6, 0.7, 0.8)))
MAX_PPV_COST = 0.001
FIT_SNRS_DB = (6.0, 0.0)  # noisy windows the quality model learns from (em and ma)
THRESHOLDS = (0.5, 0.6, 0.7, 0.8, 0.9, 0.95)  # candidate noise-probability thresholds
MAX_CLEAN_FLAGGED = 0.02  # the threshold may flag at most this share of clean DS1 windows (out of fold)


@dataclass
class Loaded:
    """One MIT-BIH record with what the benchmarks need."""

    name: str
    fs: float
    signal: np.ndarray  # (samples, leads), mV
    beats: np.ndarray  # reference beat samples
    symbols: np.ndarray  # their symbols
    af: list[tuple[float, float]]  # reference AF (and flutter) intervals, s
    noisy_annotated: np.ndarray  # bool (samples, leads): inside MIT-BIH '~' noise for that lead

    @property
    def duration_s(self) -> float:
        return len(self.signal) / self.fs


def load(folder: Path, name: str) -> Loaded:
    record = wfdb.rdrecord(str(folder / name))
    annotation = wfdb.rdann(str(folder / name), "atr")
    fs, n = float(record.fs), record.sig_len
    symbols = np.array(annotation.symbol)
    is_beat = np.isin(symbols, list(BEAT_SYMBOLS))
    return Loaded(name, fs, record.p_signal.astype(np.float64), annotation.sample[is_beat], symbols[is_beat],
                  reference_af(annotation, n, fs), annotated_noise(annotation, n, record.n_sig))


def reference_af(annotation, n: int, fs: float) -> list[tuple[float, float]]:
    """AF intervals: '(AFIB' or '(AFL' starts one, any other rhythm annotation ends it."""
    intervals, start = [], None
    for sample, aux in zip(annotation.sample, annotation.aux_note):
        rhythm_name = aux.strip("\x00 ")
        if not rhythm_name.startswith("("):
            continue
        if rhythm_name in AF_RHYTHMS and start is None:
            start = sample / fs
        elif rhythm_name not in AF_RHYTHMS and start is not None:
            intervals.append((start, sample / fs))
            start = None
    if start is not None:
        intervals.append((start, n / fs))
    return intervals


def annotated_noise(annotation, n: int, leads: int) -> np.ndarray:
    """Per sample and lead, inside MIT-BIH noise: a '~' annotation's subtype is a bit mask of the
    noisy leads (bits 0-3; bits 4-7 unreadable; -1 all unreadable); the next '~' replaces it."""
    mask = np.zeros((n, leads), bool)
    marks = [(s, t) for s, sym, t in zip(annotation.sample, annotation.symbol, annotation.subtype) if sym == "~"]
    for (start, bits), (end, _) in zip(marks, marks[1:] + [(n, 0)]):
        for lead in range(leads):
            mask[start:end, lead] = bits == -1 or bool(bits & (1 << lead)) or bool(bits & (1 << (lead + 4)))
    return mask


def set_of(name: str) -> str:
    return "DS1" if name in DS1 else "DS2" if name in DS2 else "paced" if name in PACED else "other"


# --------------------------------------------------------------------------------------------------
# Rhythm


@dataclass
class Peaks:
    """A record's beat times from one source, with the noise segments to leave out."""

    times_s: np.ndarray
    noise: list[tuple[float, float]]
    pre_qrs: np.ndarray  # per beat: lead 0 over rhythm.PRE_QRS_S before it, as the beats stage cuts it


def peak_sources(rec: Loaded) -> dict[str, Peaks]:
    detected = [detect_r_peaks(rec.signal[:, lead], rec.fs) for lead in range(rec.signal.shape[1])]
    fused = quality.fuse_leads(rec.signal, rec.fs, peaks=detected)
    fs = SignalConfig().fs
    pipeline = preprocess(rec.signal[:, 0], rec.fs)

    def peaks(samples: np.ndarray, noise: list[tuple[float, float]]) -> Peaks:
        at_fs = np.round(samples * (fs / rec.fs)).astype(np.int64)
        return Peaks(samples / rec.fs, noise, rhythm.pre_qrs_segments(pipeline, fs, at_fs))

    return {"reference": peaks(rec.beats, []), "detected": peaks(detected[0], []),
            "fused": peaks(fused.samples, fused.noise_segments)}


def overlap_s(a: list[tuple[float, float]], b: list[tuple[float, float]]) -> float:
    return float(sum(max(0.0, min(a1, b1) - max(a0, b0)) for a0, a1 in a for b0, b1 in b))


def total_s(intervals: list[tuple[float, float]]) -> float:
    return float(sum(b - a for a, b in intervals))


@dataclass
class RhythmScore:
    record: str
    source: str
    reference_s: float
    found_s: float
    overlap_s: float
    reference_episodes: int  # reference episodes of at least MIN_EPISODE_S
    reference_episodes_found: int
    found_episodes: int
    found_episodes_true: int
    beat_share: float  # share of reference beats inside reference AF that lie in found episodes
    seconds: float


def score_rhythm(rec: Loaded, source: str, peaks: Peaks, config: rhythm.RhythmConfig, atrial: bool) -> RhythmScore:
    start = time.perf_counter()
    episodes = rhythm.af_episodes(peaks.times_s, config, peaks.noise, peaks.pre_qrs if atrial else None)
    seconds = time.perf_counter() - start
    found = [(e.start_s, e.end_s) for e in episodes]
    long_reference = [iv for iv in rec.af if iv[1] - iv[0] >= MIN_EPISODE_S]
    in_af = rhythm.in_episodes(rec.beats / rec.fs, [rhythm.Episode(rhythm.AF, a, b) for a, b in rec.af])
    covered = rhythm.in_episodes(rec.beats[in_af] / rec.fs, episodes)
    return RhythmScore(
        rec.name, source, total_s(rec.af), total_s(found), overlap_s(found, rec.af),
        len(long_reference), sum(overlap_s([iv], found) > 0 for iv in long_reference),
        len(found), sum(overlap_s([iv], rec.af) > 0 for iv in found),
        float(covered.mean()) if in_af.any() else float("nan"), seconds)


def pooled(scores: list[RhythmScore]) -> tuple[float, float]:
    """Pooled AF duration sensitivity and positive predictivity."""
    overlap = sum(s.overlap_s for s in scores)
    return overlap / max(sum(s.reference_s for s in scores), 1e-9), overlap / max(sum(s.found_s for s in scores), 1e-9)


def grid(atrial: bool) -> list[rhythm.RhythmConfig]:
    if atrial:
        return [rhythm.RhythmConfig(window_beats=w, atrial_enter_dispersion=e, atrial_hold_dispersion=round(e * h, 4),
                                    min_serial_correlation=c, max_atrial_similarity=a)
                for w in GRID_WINDOW_BEATS for e in GRID_ENTER for h in GRID_HOLD_SHARE for c in GRID_MIN_CORRELATION
                for a in GRID_MAX_ATRIAL_SIMILARITY]
    return [rhythm.RhythmConfig(window_beats=w, enter_dispersion=e, hold_dispersion=round(e * h, 4),
                                min_serial_correlation=c)
            for w in GRID_WINDOW_BEATS for e in GRID_ENTER for h in GRID_HOLD_SHARE for c in GRID_MIN_CORRELATION]


def entry_level(c: rhythm.RhythmConfig, atrial: bool) -> float:
    return c.atrial_enter_dispersion if atrial else c.enter_dispersion


SELECTION_SOURCES = ("reference", "detected")


class Selection:
    """Every grid configuration scored on every record (reference and detected R-peaks), on RR
    intervals alone or with the atrial evidence, and leave-one-record-out selection on any set of records."""

    def __init__(self, loaded: dict[str, Loaded], sources: dict[str, dict[str, Peaks]], atrial: bool):
        self.atrial = atrial
        self.configs = grid(atrial)
        self.table = {(k, n, s): score_rhythm(rec, s, sources[n][s], c, atrial)
                      for k, c in enumerate(tqdm(self.configs, desc=f"selection grid, {EVIDENCE[atrial]}", unit="config"))
                      for n, rec in loaded.items() for s in SELECTION_SOURCES}

    def best(self, train: list[str]) -> int:
        """The configuration whose worse pooled duration figure, min(Se, +P), is best on train (mean
        over both R-peak sources: the targets must hold at once); ties go to the more sensitive (then
        to the weaker atrial gate)."""
        def objective(k: int) -> tuple[float, float, float, float]:
            value = np.mean([min(pooled([self.table[k, n, s] for n in train])) for s in SELECTION_SOURCES])
            c = self.configs[k]
            return (round(float(value), 6), -entry_level(c, self.atrial), -c.min_serial_correlation,
                    c.max_atrial_similarity)
        return max(range(len(self.configs)), key=objective)

    def out_of_fold(self, names: list[str]) -> tuple[list[str], dict[str, list[RhythmScore]]]:
        """Per held-out record, the configuration chosen on the others and its scores there."""
        lines = ["| held-out record | selected on the other records | AF s (reference) | found s (ref / det) "
                 "| overlap s (ref / det) |", "|---|---|---:|---:|---:|"]
        scores: dict[str, list[RhythmScore]] = {s: [] for s in SELECTION_SOURCES}
        for held in names:
            k = self.best([n for n in names if n != held])
            held_scores = [self.table[k, held, s] for s in SELECTION_SOURCES]
            for s, x in zip(SELECTION_SOURCES, held_scores):
                scores[s].append(x)
            lines.append(f"| {held} | {describe(self.configs[k], self.atrial)} | {held_scores[0].reference_s:.0f} | "
                         + " / ".join(f"{x.found_s:.0f}" for x in held_scores) + " | "
                         + " / ".join(f"{x.overlap_s:.0f}" for x in held_scores) + " |")
        return lines, scores

    def scores(self, k: int, names: list[str]) -> dict[str, list[RhythmScore]]:
        return {s: [self.table[k, n, s] for n in names] for s in SELECTION_SOURCES}


def pooled_lines(label: str, scores: dict[str, list[RhythmScore]]) -> list[str]:
    return [f"- {label}, {s} R-peaks: AF duration Se **{pooled(x)[0]:.3f}**, +P **{pooled(x)[1]:.3f}**"
            for s, x in scores.items() if x]


def describe(c: rhythm.RhythmConfig, atrial: bool) -> str:
    if atrial:
        return (f"window {c.window_beats}, enter {c.atrial_enter_dispersion:g}, hold {c.atrial_hold_dispersion:g}, "
                f"min correlation {c.min_serial_correlation:g}, max atrial similarity {c.max_atrial_similarity:g}")
    return (f"window {c.window_beats}, enter {c.enter_dispersion:g}, hold {c.hold_dispersion:g}, "
            f"min correlation {c.min_serial_correlation:g}")


SHARED_FIELDS = ("window_beats", "step_beats", "embedding", "min_serial_correlation", "merge_gap_s", "min_episode_s",
                 "max_rr_s")
ATRIAL_FIELDS = ("max_atrial_similarity", "atrial_enter_dispersion", "atrial_hold_dispersion")


def agrees(chosen: rhythm.RhythmConfig, default: rhythm.RhythmConfig, atrial: bool) -> bool:
    """Whether the default holds the selection's settings for its kind of evidence."""
    own = ATRIAL_FIELDS if atrial else ("enter_dispersion", "hold_dispersion")
    return all(getattr(chosen, f) == getattr(default, f) for f in SHARED_FIELDS + own)


def protocol_lines(selection: Selection, loaded: dict[str, Loaded], section: str) -> tuple[list[str], rhythm.RhythmConfig]:
    """Protocols A (select on DS1, score DS2 once) and B (leave one record out over all records) for
    one kind of evidence, and the configuration B selects on all records."""
    evidence = EVIDENCE[selection.atrial]
    ds1, ds2 = [n for n in DS1 if n in loaded], [n for n in DS2 if n in loaded]
    ds1_lines, ds1_out_of_fold = selection.out_of_fold(ds1)
    by_ds1 = selection.configs[selection.best(ds1)]
    all_lines, all_out_of_fold = selection.out_of_fold(list(loaded))
    chosen = selection.configs[selection.best(list(loaded))]
    return [
        f"### {section}A. {evidence}: selected on DS1 only (leave one DS1 record out)",
        "",
        *ds1_lines,
        "",
        *pooled_lines(f"Out-of-fold over DS1, {evidence}", ds1_out_of_fold),
        f"- selected on all DS1 records: {describe(by_ds1, selection.atrial)}",
        *pooled_lines(f"That selection scored once on DS2 (held out), {evidence}", selection.scores(selection.best(ds1), ds2)),
        "",
        f"### {section}B. {evidence}: selected by leave-one-record-out over all {len(loaded)} records",
        "",
        *all_lines,
        "",
        *pooled_lines(f"**Out-of-fold over all {len(loaded)} records, {evidence}** (the figures to quote)", all_out_of_fold),
        f"- selected on all {len(loaded)} records: {describe(chosen, selection.atrial)}",
        "",
    ], chosen


def rhythm_report(loaded: dict[str, Loaded], command: str) -> str:
    sources = {n: peak_sources(rec) for n, rec in tqdm(loaded.items(), desc="R-peaks", unit="record")}
    default = rhythm.RhythmConfig()
    sections, agreement = [], []
    for atrial, section in ((False, "1"), (True, "2")):
        lines, chosen = protocol_lines(Selection(loaded, sources, atrial), loaded, section)
        sections += lines
        agreement.append(f"{EVIDENCE[atrial]} ({section}B): {describe(chosen, atrial)} -> "
                         + ("the library default **holds** this selection" if agrees(chosen, default, atrial)
                            else "**differs from the library default**"))
    modes = [(atrial, s) for atrial in (True, False) for s in SOURCES]
    scores = {(atrial, s): [score_rhythm(rec, s, sources[n][s], default, atrial) for n, rec in loaded.items()]
              for atrial, s in modes}
    timing = time_stages(loaded, sources)
    lines = [
        "# Atrial fibrillation episodes on MIT-BIH",
        "",
        f"- command: `{command}`",
        f"- machine: {cpu_model()}; {load_average()}",
        f"- library default: `{default}`",
        f"- selected by leave-one-record-out over all {len(loaded)} records, then on all of them: "
        + "; ".join(agreement) + ".",
        "- evidence: `RR only` = beat times alone (`af_episodes` without `pre_qrs`); `RR + atrial` = with the "
        "pre-QRS segments of lead 0 (0.25 to 0.08 s before each R-peak of the source, band-passed and resampled to "
        "128 Hz as the beats stage cuts beats), which `ecg-rnn score` passes.",
        "- reference: the rhythm annotations; `(AFIB` and `(AFL` start an AF episode, any other rhythm annotation "
        "ends it (so a 2-s VT run inside AF is not AF).",
        "- R-peaks: `reference` = the beat annotations; `detected` = `detect_r_peaks` on lead 0; `fused` = "
        "`fuse_leads` on both leads, its noise segments passed to `af_episodes`.",
        "- duration figures: Se = seconds of reference AF inside found episodes / reference AF seconds; "
        "+P = the same overlap / seconds found. Pooled = sums over records before dividing.",
        f"- episode figures: reference episodes of at least {MIN_EPISODE_S:g} s found when any found episode "
        "overlaps them; found episodes (all at least min_episode_s long) true when they overlap reference AF.",
        "",
        "## Selection",
        "",
        f"Grid, RR only: window_beats {GRID_WINDOW_BEATS}, enter_dispersion {GRID_ENTER}, hold = enter x "
        f"{GRID_HOLD_SHARE}, min_serial_correlation {GRID_MIN_CORRELATION} (-1: gate off); merge_gap_s 10 and "
        "min_episode_s 30 fixed. RR + atrial: the same grid for window_beats, atrial_enter_dispersion, "
        f"atrial_hold_dispersion and min_serial_correlation, times max_atrial_similarity {GRID_MAX_ATRIAL_SIMILARITY} "
        "(without the gate it would repeat the RR-only grid). "
        "Objective: the worse of pooled AF-duration Se and +P on the training records, min(Se, +P), averaged over "
        "reference and detected R-peaks (both targets must hold at once); ties go to the more sensitive setting.",
        "",
        "DS1 holds only two AF records (201, 203), so a selection on DS1 alone cannot learn the slower, less "
        "irregular AF of other patients. Both protocols are therefore reported: A follows the project rule "
        "(select on DS1, score DS2 once); B, whose selection is the library default, selects by leave-one-record-out "
        "over all records, so its honest figures are the out-of-fold ones.",
        "",
        "How this came about, in order: the method (pattern dispersion) was designed on DS1; a first DS1 selection "
        "maximised the duration F1 and left a false episode in record 208, so the objective became min(Se, +P), "
        "which matches the targets; DS2 was then scored with the DS1 selection (A) and its sensitivity was poor "
        "(210 and 219 have slower, less irregular AF than 201 and 203); the grid was widened to lower entry levels "
        "and protocol B adopted, as the task allows when the out-of-fold figures are reported. DS2 has therefore been "
        "looked at more than once; only B's out-of-fold figures are unbiased. The atrial evidence came next, aimed "
        "at B's remaining errors (ectopy in 201, 203 and 222 taken for AF, AF missed in 210). Its gate grid was chosen "
        "after seeing out-of-fold results: a first, finer grid (0.4, 0.5, 0.55, 0.6, 0.65, 0.7, 0.8 and no gate) "
        "scored lower out of fold, though far above RR only, because held-out 210 then chose 0.55 and lost "
        "sensitivity; the steps of 0.1 were kept after that, so 2B's out-of-fold figures are slightly optimistic.",
        "",
        *sections,
        "## The library default on every record (in-sample for B: selected on these records)",
        "",
        "| records | evidence | R-peaks | AF s (reference) | AF s (found) | Se | +P | episodes >= 30 s found "
        "| found episodes true |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for label, members in ((f"all {len(loaded)}", None), ("DS1", DS1), ("DS2", DS2), ("paced", PACED)):
        for atrial, s in modes:
            part = [x for x in scores[atrial, s] if members is None or x.record in members]
            if not part:
                continue
            se, ppv = pooled(part)
            ref_ep, ref_found = sum(x.reference_episodes for x in part), sum(x.reference_episodes_found for x in part)
            found_ep, found_true = sum(x.found_episodes for x in part), sum(x.found_episodes_true for x in part)
            lines.append(f"| {label} | {EVIDENCE[atrial]} | {s} | {sum(x.reference_s for x in part):.0f} "
                         f"| {sum(x.found_s for x in part):.0f} "
                         f"| {se:.3f} | {ppv:.3f} | {ref_found}/{ref_ep} = {ref_found / max(ref_ep, 1):.3f} "
                         f"| {found_true}/{found_ep} = {found_true / max(found_ep, 1):.3f} |")
    labels = [f"{s}, {EVIDENCE[atrial]}" for atrial, s in modes]
    lines += ["", "## Share of the reference AF beats inside found episodes", "",
              "| record | " + " | ".join(labels) + " |", "|---|" + "---:|" * len(modes)]
    by = {m: {x.record: x for x in scores[m]} for m in modes}
    for name in AF_RECORDS:
        if name in loaded:
            lines.append(f"| {name} | " + " | ".join(f"{by[m][name].beat_share:.3f}" for m in modes) + " |")
    lines += ["", "## Per record", "",
              "AF seconds found (Se / +P where there is reference AF; FP seconds otherwise).", "",
              "| record | set | AF s (reference) | " + " | ".join(labels) + " |",
              "|---|---|---:|" + "---|" * len(modes)]
    for name in loaded:
        cells = []
        for m in modes:
            x = by[m][name]
            cells.append(f"{x.found_s:.0f} s ({x.overlap_s / x.reference_s:.3f} / {x.overlap_s / max(x.found_s, 1e-9):.3f})"
                         if x.reference_s else (f"{x.found_s:.0f} s FP" if x.found_s else "0"))
        lines.append(f"| {name} | {set_of(name)} | {by[modes[0]][name].reference_s:.0f} | " + " | ".join(cells) + " |")
    lines += ["", "## Timing", "", *timing, ""]
    return "\n".join(lines)


def time_stages(loaded: dict[str, Loaded], sources: dict[str, dict[str, Peaks]], runs: int = 3) -> list[str]:
    """Median wall time per record of af_episodes (RR only, and with the pre-QRS segments given), and
    of fuse_leads + af_episodes with the R-peaks of both leads already detected (quality + rhythm),
    over the 30-minute 2-lead records."""
    rhythm_s, atrial_s, both_s, detect_s = [], [], [], []
    for name, rec in loaded.items():
        start = time.perf_counter()
        peaks = [detect_r_peaks(rec.signal[:, lead], rec.fs) for lead in range(rec.signal.shape[1])]
        detect_s.append(time.perf_counter() - start)
        fused_peaks = sources[name]["fused"]
        for _ in range(runs):
            start = time.perf_counter()
            fused = quality.fuse_leads(rec.signal, rec.fs, peaks=peaks)
            middle = time.perf_counter()
            rhythm.af_episodes(fused.samples / rec.fs, noise_segments=fused.noise_segments)
            end = time.perf_counter()
            rhythm.af_episodes(fused_peaks.times_s, noise_segments=fused_peaks.noise, pre_qrs=fused_peaks.pre_qrs)
            atrial_s.append(time.perf_counter() - end)
            both_s.append(end - start)
            rhythm_s.append(end - middle)
    return [f"- `detect_r_peaks` on both leads: median {np.median(detect_s):.3f} s per record (not part of the stages below)",
            f"- `fuse_leads` (R-peaks given) + `af_episodes` (RR only): median {np.median(both_s):.3f} s, "
            f"max {np.max(both_s):.3f} s per 30-minute 2-lead 360 Hz record ({runs} runs per record)",
            f"- `af_episodes` alone, RR only: median {np.median(rhythm_s):.4f} s, max {np.max(rhythm_s):.4f} s per record",
            f"- `af_episodes` alone, RR + atrial (pre-QRS segments given): median {np.median(atrial_s):.4f} s, "
            f"max {np.max(atrial_s):.4f} s per record"]


# --------------------------------------------------------------------------------------------------
# Quality


def normal_peaks(rec: Loaded) -> np.ndarray:
    return rec.beats[np.isin(rec.symbols, list(NORMAL_SYMBOLS))]


def stress_noise(rec: Loaded, kind: str, seed: int) -> np.ndarray:
    """Independent synthetic noise for every lead of a record (seeded per record and kind)."""
    rng = np.random.default_rng([seed, int(rec.name), stress.NOISE_KINDS.index(kind)])
    return np.column_stack([stress.make_noise(kind, len(rec.signal), rec.fs, rng) for _ in range(rec.signal.shape[1])])


def window_labels(mask: np.ndarray, fs: float, window_s: float, n_windows: int, whole: bool) -> np.ndarray:
    """Per quality window: mask true for every (whole) or any (not whole) sample of the window."""
    window = int(round(window_s * fs))
    starts = np.minimum(np.arange(n_windows) * window, len(mask) - window)
    inside = np.add.reduceat(np.concatenate([mask.astype(np.int64), [0]]),
                             np.column_stack([starts, starts + window]).ravel())[::2]
    return inside == window if whole else inside > 0


def training_windows(rec: Loaded, config: quality.QualityConfig, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Lead-0 feature rows, labels (noisy) and tags for the quality model: clean windows outside
    MIT-BIH noise, windows of the noisy stretches with em or ma at FIT_SNRS_DB (noisy), and with bw
    at every SNR (clean: wander alone does not spoil beats)."""
    x = rec.signal[:, 0]
    rows, labels, tags = [], [], []
    clean = quality.window_features(x, rec.fs, config)
    keep = ~window_labels(rec.noisy_annotated[:, 0], rec.fs, config.window_s, len(clean), whole=False)
    rows.append(clean[keep]); labels.append(np.zeros(keep.sum(), bool)); tags += ["clean"] * int(keep.sum())
    stretch = window_labels(stress.noisy_mask(len(x), rec.fs), rec.fs, config.window_s, len(clean), whole=True)
    for kind in stress.NOISE_KINDS:
        noise = stress_noise(rec, kind, seed)[:, 0]
        for snr in (SNRS_DB if kind == "bw" else FIT_SNRS_DB):
            noisy = stress.add_noise(x, noise, rec.fs, snr, normal_peaks(rec))
            rows.append(quality.window_features(noisy, rec.fs, config)[stretch])
            labels.append(np.full(stretch.sum(), kind != "bw"))
            tags += [f"{kind} {snr:g} dB"] * int(stretch.sum())
    return np.vstack(rows), np.concatenate(labels), np.array(tags)


def fit_model(x: np.ndarray, y: np.ndarray):
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(C=1.0, class_weight="balanced", max_iter=2000).fit(x, y)


def noise_probability(weights: np.ndarray, bias: float, x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-(x @ weights + bias)))


def fit_report(loaded: dict[str, Loaded], config: quality.QualityConfig, seed: int) -> list[str]:
    """Leave-one-record-out fits over DS1 choose the threshold (the lowest whose clean windows are
    flagged at most MAX_CLEAN_FLAGGED), then one fit on all DS1 records gives the weights."""
    names = [n for n in DS1 if n in loaded]
    parts = {n: training_windows(loaded[n], config, seed) for n in tqdm(names, desc="quality features", unit="record")}
    probabilities = []
    for held in names:
        model = fit_model(np.vstack([parts[n][0] for n in names if n != held]),
                          np.concatenate([parts[n][1] for n in names if n != held]))
        probabilities.append(noise_probability(model.coef_[0], model.intercept_[0], parts[held][0]))
    p, tags = np.concatenate(probabilities), np.concatenate([parts[n][2] for n in names])
    chosen = min((t for t in THRESHOLDS if (p[tags == "clean"] > t).mean() <= MAX_CLEAN_FLAGGED), default=THRESHOLDS[-1])
    model = fit_model(np.vstack([parts[n][0] for n in names]), np.concatenate([parts[n][1] for n in names]))
    lines = ["## The quality model (fitted on DS1 lead 0)", "",
             "Leave-one-record-out over DS1: share of the held-out record's lead-0 windows flagged, by threshold "
             f"on the noise probability. Selected: the lowest threshold flagging at most {MAX_CLEAN_FLAGGED:.0%} of "
             f"clean windows: **{chosen:g}** (library: {config.max_noise_probability:g}).", "",
             "| windows | count | " + " | ".join(f"> {t:g}" for t in THRESHOLDS) + " |",
             "|---|---:|" + "---:|" * len(THRESHOLDS)]
    for tag in sorted(set(tags), key=lambda t: (t != "clean", t)):
        lines.append(f"| {tag} | {(tags == tag).sum()} | "
                     + " | ".join(f"{(p[tags == tag] > t).mean():.3f}" for t in THRESHOLDS) + " |")
    refit = np.r_[model.coef_[0], model.intercept_[0]]
    library = np.r_[quality._WEIGHTS, quality._BIAS]
    lines += ["", "Fitted on all DS1 records (features: " + ", ".join(quality.FEATURES) + "; then the bias):", "",
              "    weights " + ", ".join(f"{w:.3f}" for w in refit[:-1]) + f"; bias {refit[-1]:.3f}",
              "",
              "The library's weights " + ("**are** this fit (to 3 decimals)." if np.allclose(refit, library, atol=6e-4)
                                          else "**differ from this fit**: " + ", ".join(f"{w:.3f}" for w in library)),
              ""]
    return lines


@dataclass
class StressCounts:
    """Counters of one record under one noise kind and SNR."""

    stretch_windows: int = 0
    stretch_flagged: int = 0
    reference_beats: int = 0
    single_tp: int = 0
    single_fp: int = 0
    fused_tp: int = 0
    fused_fp: int = 0
    stretch_s: float = 0.0
    stretch_in_segments_s: float = 0.0
    clean_s: float = 0.0
    clean_in_segments_s: float = 0.0

    def add(self, other: StressCounts) -> None:
        for f in dataclasses.fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))


def matches(reference: np.ndarray, found: np.ndarray, tolerance: int) -> tuple[int, int]:
    """(true positives, false positives) of found beats against reference beats."""
    if len(found) == 0 or len(reference) == 0:
        return 0, len(found)
    j = np.searchsorted(reference, found)
    nearest = np.minimum(np.abs(reference[np.minimum(j, len(reference) - 1)] - found),
                         np.abs(found - reference[np.maximum(j - 1, 0)]))
    hit = nearest <= tolerance
    return int(len(np.unique(np.searchsorted(reference, found[hit] - tolerance)))), int((~hit).sum())


def stress_record(rec: Loaded, config: quality.QualityConfig, seed: int) -> dict[tuple[str, float], StressCounts]:
    """Lead 0 destroyed (lead 1 clean), then both leads noisy, for every kind and SNR."""
    fs, n = rec.fs, len(rec.signal)
    mask = stress.noisy_mask(n, fs)
    tolerance = int(round(0.15 * fs))
    clean_peaks = [detect_r_peaks(rec.signal[:, lead], fs) for lead in range(rec.signal.shape[1])]
    reference = rec.beats[mask[rec.beats]]
    out = {}
    for kind in stress.NOISE_KINDS:
        noise = stress_noise(rec, kind, seed)
        for snr in SNRS_DB:
            noisy = stress.add_noise(rec.signal, noise, fs, snr, normal_peaks(rec))
            c = StressCounts()
            one = rec.signal.copy()
            one[:, 0] = noisy[:, 0]
            noisy_peaks = [detect_r_peaks(noisy[:, lead], fs) for lead in range(noisy.shape[1])]
            fused_one = quality.fuse_leads(one, fs, config, peaks=[noisy_peaks[0], *clean_peaks[1:]])
            stretch = window_labels(mask, fs, config.window_s, len(fused_one.noisy), whole=True)
            c.stretch_windows, c.stretch_flagged = int(stretch.sum()), int(fused_one.noisy[stretch, 0].sum())
            single = noisy_peaks[0][mask[noisy_peaks[0]]]
            fused = fused_one.samples[mask[fused_one.samples]]
            c.reference_beats = len(reference)
            c.single_tp, c.single_fp = matches(reference, single, tolerance)
            c.fused_tp, c.fused_fp = matches(reference, fused, tolerance)
            fused_both = quality.fuse_leads(noisy, fs, config, peaks=noisy_peaks)
            in_segment = np.zeros(n, bool)
            for a, b in fused_both.noise_segments:
                in_segment[int(a * fs):int(b * fs)] = True
            after = np.arange(n) >= stress.CLEAN_START_S * fs  # clean stretches between noisy ones
            c.stretch_s, c.stretch_in_segments_s = mask.sum() / fs, (in_segment & mask).sum() / fs
            c.clean_s, c.clean_in_segments_s = (after & ~mask).sum() / fs, (in_segment & after & ~mask).sum() / fs
            out[kind, snr] = c
    return out


def fusion_variants(config: quality.QualityConfig) -> dict[tuple[str, object], quality.QualityConfig]:
    """The fusion settings the DS1 selection compares, each with the library's other settings: every
    phantom-test share, every lead-agreement level, every template test."""
    out = {("max_split_share", share): dataclasses.replace(config, max_split_share=share) for share in SPLIT_SHARES}
    out.update({("min_lead_agreement", level): dataclasses.replace(config, min_lead_agreement=level)
                for level in LEAD_AGREEMENTS})
    out.update({("template_test", test): dataclasses.replace(config, template_cycle_share=test[0],
                                                              min_template_correlation=test[1])
                for test in TEMPLATE_TESTS})
    return out


def _setting(value) -> str:
    return " / ".join(f"{v:g}" for v in value) if isinstance(value, tuple) else f"{value:g}"


def fusion_counts(rec: Loaded, config: quality.QualityConfig, seed: int
                  ) -> dict[tuple[str, float, tuple[str, float]], np.ndarray]:
    """Per (noise kind or "clean", SNR, fusion variant): [reference beats, fused beats outside noise
    segments that match one, those that do not], both leads noisy, over the noisy stretches (the
    unmodified record: over all of it)."""
    fs, n = rec.fs, len(rec.signal)
    tolerance = int(round(0.15 * fs))
    out = {}
    cases = [("clean", np.inf, rec.signal)]
    for kind in SPLIT_KINDS:
        noise = stress_noise(rec, kind, seed)
        cases += [(kind, snr, stress.add_noise(rec.signal, noise, fs, snr, normal_peaks(rec))) for snr in SNRS_DB]
    for kind, snr, signal in cases:
        where = np.ones(n, bool) if kind == "clean" else stress.noisy_mask(n, fs)
        peaks = [detect_r_peaks(signal[:, lead], fs) for lead in range(signal.shape[1])]
        for variant, variant_config in fusion_variants(config).items():
            fused = quality.fuse_leads(signal, fs, variant_config, peaks=peaks)
            ok = where.copy()
            for a, b in fused.noise_segments:
                ok[int(a * fs):int(b * fs)] = False
            tp, fp = matches(rec.beats[where[rec.beats]], fused.samples[ok[fused.samples]], tolerance)
            out[kind, snr, variant] = np.array([int(where[rec.beats].sum()), tp, fp])
    return out


def fusion_tables(loaded: dict[str, Loaded], config: quality.QualityConfig, seed: int) -> list[str]:
    """The split test's share, the lead-agreement level and the template test, selected on DS1 (see the
    text written)."""
    names = [n for n in DS1 if n in loaded]
    totals: dict[tuple, np.ndarray] = {}
    for name in tqdm(names, desc="fusion settings DS1", unit="record"):
        for key, counts in fusion_counts(loaded[name], config, seed).items():
            totals[key] = totals.get(key, 0) + counts
    if not totals:
        return []
    judged = [(k, s) for k in SPLIT_KINDS for s in (12.0, 6.0)]

    def plus_p(kind: str, snr: float, variant: tuple) -> float:
        _, tp, fp = totals[kind, snr, variant]
        return tp / max(tp + fp, 1)

    def coverage(kind: str, snr: float, variant: tuple) -> float:
        return totals[kind, snr, variant][1] / max(totals[kind, snr, variant][0], 1)

    variants = fusion_variants(config)
    mean_p = {v: float(np.mean([plus_p(k, s, v) for k, s in judged])) for v in variants}
    mean_coverage = {v: float(np.mean([coverage(k, s, v) for k, s in judged])) for v in variants}
    clean = ("clean", np.inf)
    off = {"max_split_share": ("max_split_share", 0.0), "template_test": ("template_test", TEMPLATE_TESTS[0])}
    lost = {v: (totals[(*clean, off[v[0]])][1] - totals[(*clean, v)][1]) / max(totals[(*clean, off[v[0]])][0], 1)
            for v in variants if v[0] in off}

    def phantom_choice(setting: str) -> tuple:
        return max((v for v in lost if v[0] == setting and lost[v] <= MAX_TRUE_BEATS_LOST),
                   key=lambda v: (mean_p[v], v[1]))

    split_choice, template_choice = phantom_choice("max_split_share"), phantom_choice("template_test")
    off_agreement = ("min_lead_agreement", LEAD_AGREEMENTS[-1])
    kept = [v for v in variants if v[0] == "min_lead_agreement"
            and mean_p[v] >= mean_p[off_agreement] - MAX_PPV_COST
            and plus_p(*clean, v) >= plus_p(*clean, off_agreement) - MAX_PPV_COST]
    agreement_choice = max(kept, key=lambda v: (mean_coverage[v], -v[1]))
    rows = [clean] + [(k, s) for k in SPLIT_KINDS for s in SNRS_DB]
    columns = ["unmodified" if k == "clean" else f"{k} {s:g} dB" for k, s in rows]
    columns += ["mean coverage, em/ma 12 and 6 dB", "mean +P, em/ma 12 and 6 dB"]

    def table(setting: str) -> list[str]:
        with_loss = setting in off
        names = [setting, *columns] + (["true beats lost, unmodified"] if with_loss else [])
        lines = ["| " + " | ".join(names) + " |", "|---|" + "---:|" * (len(names) - 1)]
        for v in variants:
            if v[0] != setting:
                continue
            cells = [f"{coverage(k, s, v):.4f} / {plus_p(k, s, v):.4f}" for k, s in rows]
            cells += [f"{mean_coverage[v]:.4f}", f"{mean_p[v]:.4f}"]
            if with_loss:
                cells.append(f"{totals[(*clean, off[setting])][1] - totals[(*clean, v)][1]} ({lost[v]:.1e})")
            lines.append(f"| {_setting(v[1])} | " + " | ".join(cells) + " |")
        return lines

    return [
        "## Fusion settings (selected on DS1)", "",
        f"Both leads noisy, noisy stretches of {len(names)} DS1 records; the unmodified records over their whole "
        "length. Each cell: coverage (reference beats found by a fused beat outside noise segments) / +P of those "
        "fused beats.", "",
        "**Phantom beats: the split-cycle test** (`max_split_share`; the library's lead agreement). A beat one lead "
        "alone found, between two beats another lead found, is dropped when both its cycles are shorter than this "
        "share of the local median cycle (0: off). Selected: the best mean +P over em and ma at 12 and 6 dB among "
        f"shares losing at most {MAX_TRUE_BEATS_LOST:g} of the unmodified records' true beats: "
        f"**{split_choice[1]:g}** (library: {config.max_split_share:g}).", "",
        *table("max_split_share"), "",
        "**Readable noise: lead agreement** (`min_lead_agreement`; the library's split share). Where every lead is "
        "noisy, a window is a noise segment unless at least this share of its beats were found by a majority of "
        f"the leads, both of two here ({LEAD_AGREEMENTS[-1]:g}: never). Selected: the best mean coverage over em and ma at 12 and 6 dB "
        f"among levels whose mean +P there and whose +P on the unmodified records lie within {MAX_PPV_COST:g} of "
        f"the test switched off: **{agreement_choice[1]:g}** (library: {config.min_lead_agreement:g}).", "",
        *table("min_lead_agreement"), "",
        "**Phantom beats: the template test** (`template_cycle_share / min_template_correlation`; the library's "
        "other settings). A beat one lead alone found, with a cycle on either side shorter than the share of the "
        "local median cycle, is dropped when its 1-40 Hz QRS (0.1 s either side) correlates with no lead's "
        "template (the median of the beats every lead found) above the correlation (0 / 0: off). Selected as "
        f"the split test: **{_setting(template_choice[1])}** (library: "
        f"{_setting((config.template_cycle_share, config.min_template_correlation))}).", "",
        *table("template_test"), "",
    ]


def annotated_agreement(rec: Loaded, config: quality.QualityConfig) -> list[tuple[int, int, int, int]]:
    """Per lead: (annotated windows, of them flagged, other windows, of them flagged)."""
    out = []
    for lead in range(rec.signal.shape[1]):
        flags = quality.lead_quality(rec.signal[:, lead], rec.fs, config)
        annotated = window_labels(rec.noisy_annotated[:, lead], rec.fs, config.window_s, len(flags), whole=False)
        out.append((int(annotated.sum()), int(flags[annotated].sum()), int((~annotated).sum()), int(flags[~annotated].sum())))
    return out


def stress_tables(loaded: dict[str, Loaded], config: quality.QualityConfig, seed: int) -> list[str]:
    lines = []
    for label, members in (("DS1 (tuning)", DS1), ("DS2 (held out, scored once)", DS2)):
        names = [n for n in members if n in loaded]
        totals: dict[tuple[str, float], StressCounts] = {}
        for name in tqdm(names, desc=f"stress {label}", unit="record"):
            for key, c in stress_record(loaded[name], config, seed).items():
                totals.setdefault(key, StressCounts()).add(c)
        lines += [f"### {label}: {len(names)} records", "",
                  "| noise | lead 0 windows flagged | beats, lead 0 alone: Se / +P | beats, fused (lead 1 clean): Se / +P "
                  "| both leads noisy: noisy time in noise segments | clean time in noise segments |",
                  "|---|---:|---:|---:|---:|---:|"]
        for (kind, snr), c in totals.items():
            lines.append(
                f"| {kind} {snr:g} dB | {c.stretch_flagged / max(c.stretch_windows, 1):.3f} "
                f"| {c.single_tp / max(c.reference_beats, 1):.4f} / {c.single_tp / max(c.single_tp + c.single_fp, 1):.4f} "
                f"| {c.fused_tp / max(c.reference_beats, 1):.4f} / {c.fused_tp / max(c.fused_tp + c.fused_fp, 1):.4f} "
                f"| {c.stretch_in_segments_s / max(c.stretch_s, 1e-9):.3f} | {c.clean_in_segments_s / max(c.clean_s, 1e-9):.3f} |")
        agreement = np.zeros((2, 4), np.int64)
        for name in names:
            for lead, counts in enumerate(annotated_agreement(loaded[name], config)[:2]):
                agreement[lead] += counts
        lines += ["", "MIT-BIH's own noise annotations (`~`, per lead), unmodified records:", "",
                  "| lead | windows inside `~` noise | flagged | other windows | flagged |", "|---|---:|---:|---:|---:|"]
        for lead, (a, fa, o, fo) in enumerate(agreement):
            lines.append(f"| {lead} | {a} | {fa / max(a, 1):.3f} | {o} | {fo / max(o, 1):.3f} |")
        lines.append("")
    return lines


def quality_report(loaded: dict[str, Loaded], command: str, seed: int) -> str:
    config = quality.QualityConfig()
    return "\n".join([
        "# Signal quality and lead fusion",
        "",
        QUALITY_INTRO,
        "",
        f"- command: `{command}`",
        f"- machine: {cpu_model()}; {load_average()}",
        f"- configuration: `{config}`",
        "",
        *fit_report(loaded, config, seed),
        "## Noise stress test",
        "",
        "NSTDB schedule (`ecg_rnn.stress`): clean for 5 minutes, then 2-minute noisy and clean stretches "
        "alternate; synthetic noise, one independent signal per lead, scaled to the SNR with NSTDB's definition. "
        "Flags and beats are counted in the noisy stretches; `fused` has lead 0 noisy and lead 1 clean; the "
        "last two columns add independent noise to both leads. Beats match the reference within 150 ms.",
        "",
        *stress_tables(loaded, config, seed),
        *fusion_tables(loaded, config, seed),
        "",
    ])


QUALITY_INTRO = """How `ecg_rnn.quality` decides that a window of a lead is noisy, how it fuses the R-peaks of
several leads, and what that achieves on MIT-BIH with synthetic noise (`ecg_rnn.stress`). This file
is written by `benchmarks/rhythm.py --quality`; the method is described in the module docstrings of
`ecg_rnn/quality.py` and `ecg_rnn/stress.py`.

Selection discipline: the model was fitted and the threshold chosen on DS1 records only (clean
lead-0 windows outside MIT-BIH's `~` noise against windows with synthetic em / ma noise at 6 and 0 dB;
bw-only windows count as clean because wander alone does not spoil beats); DS2 is scored once.
Definition used for "noisy": a window where the lead's beats or their shapes cannot be trusted. The
12 dB rows show how much moderate noise is flagged, which is a policy choice, not an error."""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.rhythm", description=__doc__.split("\n\n")[0])
    parser.add_argument("--mitdb", type=Path, default=None, help="database folder (default: see module doc)")
    parser.add_argument("--out", type=Path, default=None, help="Markdown file to write")
    parser.add_argument("--quality", action="store_true", help="quality model fit and noise stress test")
    parser.add_argument("--records", nargs="*", default=None, help="only these records")
    parser.add_argument("--seed", type=int, default=0, help="noise seed (quality)")
    args = parser.parse_args(argv)
    folder = (args.mitdb or default_mitdb()).expanduser()
    names = sorted(p.stem for p in folder.glob("*.hea") if p.with_suffix(".atr").exists()) if folder.is_dir() else []
    if args.records:
        names = [n for n in names if n in set(args.records)]
    if not names:
        print(f"no annotated WFDB records in {folder}; pass --mitdb DIR or set MITDB_DIR", file=sys.stderr)
        return 2
    loaded = {n: load(folder, n) for n in tqdm(names, desc="reading", unit="record")}
    command = command_line().replace("benchmarks.rpeaks", "benchmarks.rhythm")
    report = quality_report(loaded, command, args.seed) if args.quality else rhythm_report(loaded, command)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(report)
        print(f"written to {args.out}", file=sys.stderr)
    print(report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
