"""Noise stress test protocol (`ecg-rnn evaluate --protocol noise`): MIT-BIH records made noisy the way
the MIT-BIH Noise Stress Test Database was (ecg_rnn.stress), scored unannotated through the same path as
`ecg-rnn score`, and compared with their reference beats.

Per noise kind and SNR, over the noisy stretches (from minute 5 on, 2 minutes noisy, 2 clean, ...):
- R-peak sensitivity (reference beats with a detection within 150 ms) and positive predictivity of
  the detections not marked `noise`;
- coverage: reference beats found by a detection not marked `noise`;
- ROC-AUC and AP (abnormal = S, V, F, Q) and the share of normal beats flagged, over those beats.
The same figures over the clean stretches show what the noise costs. Selection (the quality stage's
thresholds, and the detector's noisy-stratum probability and spread by `select_noise_stratum`) is done on DS1
records only; the report runs on DS2 records.
"""

from __future__ import annotations

import copy
import sys
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
from sklearn.metrics import average_precision_score, roc_auc_score
from tqdm.auto import tqdm

from ecg_rnn.beats import ABNORMAL_CLASSES, MATCH_TOLERANCE_S, CutBeats, aami_class, cut_source, reference_beats_of
from ecg_rnn.protocols import DS1, DS2, locate_mitdb
from ecg_rnn.records import open_record, source_from_arrays
from ecg_rnn.scoring import SECOND_LEAD_MARGIN, score_beats
from ecg_rnn.signal import resample
from ecg_rnn.stress import CLEAN_START_S, NOISE_KINDS, NSTDB_SNR_DB, add_noise, make_noise, noisy_mask

CLEAN = float("inf")  # the "SNR" of the unchanged record, scored as a reference row
NOISE_SEED = 1984
# the detector's noise_stratum_probability and noise_stratum_spread_s: the selection's grid (probability 1:
# no noisy stratum, whatever the spread)...
NOISE_STRATA = (1.0, 0.5, 0.3, 0.2, 0.1)
NOISE_SPREADS_S = (0.0, 5.0, 10.0, 20.0, 40.0)
SETTINGS = ("noise_stratum_probability", "noise_stratum_spread_s")  # the detector settings selected here
SELECTION_SNRS_DB = (12.0, 6.0)  # ...judged at these SNRs (the targets'), both stretches
# ROC-AUC and AP of a cell need this many covered beats of each kind (abnormal, normal): the stress test's
# records hold few abnormal beats, and at -6 dB em noise leaves one or two of them, whose ranking says nothing
MIN_RANKED_BEATS = 5


@dataclass
class Counts:
    """Matched beats of one (kind, SNR, stretch) cell, pooled over records."""

    reference: int = 0
    found: int = 0  # reference beats with any detection within the tolerance
    covered: int = 0  # ...with a detection not marked noise
    detections_ok: int = 0  # detections not marked noise
    true_ok: int = 0  # ...that match a reference beat
    labels: list = field(default_factory=list)  # reference AAMI class of each covered beat
    scores: list = field(default_factory=list)
    flags: list = field(default_factory=list)


def _nearest_within(a: np.ndarray, b: np.ndarray, tolerance: int) -> np.ndarray:
    """For each sample in a, the index of the nearest sample in sorted b within tolerance, else -1."""
    if len(b) == 0:
        return np.full(len(a), -1)
    right = np.clip(np.searchsorted(b, a), 0, len(b) - 1)
    left = np.maximum(right - 1, 0)
    nearest = np.where(np.abs(b[left] - a) <= np.abs(b[right] - a), left, right)
    return np.where(np.abs(b[nearest] - a) <= tolerance, nearest, -1)


def _accumulate(cell: Counts, ref_sample, ref_aami, det_sample, det_ok, det_score, det_flag, keep_ref, keep_det,
                tolerance: int) -> None:
    ref_sample, ref_aami = ref_sample[keep_ref], ref_aami[keep_ref]
    to_det = _nearest_within(ref_sample, det_sample, tolerance)
    ok_sample = det_sample[det_ok]
    to_ok = _nearest_within(ref_sample, ok_sample, tolerance)
    cell.reference += len(ref_sample)
    cell.found += int((to_det >= 0).sum())
    cell.covered += int((to_ok >= 0).sum())
    kept_ok = det_ok & keep_det
    cell.detections_ok += int(kept_ok.sum())
    cell.true_ok += int((_nearest_within(det_sample[kept_ok], ref_sample, tolerance) >= 0).sum())
    hit = to_ok >= 0
    ok_index = np.flatnonzero(det_ok)[to_ok[hit]]
    labelled = np.isin(ref_aami[hit], ("N", *ABNORMAL_CLASSES))
    cell.labels.append(ref_aami[hit][labelled])
    cell.scores.append(det_score[ok_index][labelled])
    cell.flags.append(det_flag[ok_index][labelled])


def _metrics(cell: Counts) -> dict:
    aami = np.concatenate(cell.labels) if cell.labels else np.array([], dtype=str)
    scores = np.concatenate(cell.scores) if cell.scores else np.array([])
    flags = np.concatenate(cell.flags) if cell.flags else np.array([], dtype=bool)
    y = np.isin(aami, ABNORMAL_CLASSES)
    normal = aami == "N"
    both = min(y.sum(), (~y).sum()) >= MIN_RANKED_BEATS
    return {"reference_beats": cell.reference,
            "sensitivity": cell.found / max(cell.reference, 1),
            "ppv": cell.true_ok / max(cell.detections_ok, 1),
            "coverage": cell.covered / max(cell.reference, 1),
            "abnormal_beats": int(y.sum()),  # covered abnormal beats: what ROC-AUC, AP and the recall rest on
            "roc_auc": float(roc_auc_score(y, scores)) if both else float("nan"),
            "ap": float(average_precision_score(y, scores)) if both else float("nan"),
            "normal_flagged": float(flags[normal].mean()) if normal.any() else float("nan"),
            "abnormal_recall": float(flags[y].mean()) if y.any() else float("nan")}


NOISY_LEADS = ("all", "chosen")  # the NSTDB recipe puts noise on every lead; "chosen": on the chosen lead alone


def _stressed(leads: np.ndarray, fs: float, kind: str, snr_db: float, normal_peaks: np.ndarray,
              rng_seed: int, noisy_leads: str = "all") -> np.ndarray:
    if snr_db == CLEAN:
        return leads
    rng = np.random.default_rng(rng_seed)
    noise = np.stack([make_noise(kind, len(leads), fs, rng) for _ in range(leads.shape[1])], axis=1)
    stressed = add_noise(leads, noise, fs, snr_db, normal_peaks)
    if noisy_leads == "chosen":  # the same noise on lead 0, the other leads left as recorded
        stressed[:, 1:] = leads[:, 1:]
    return stressed


def noise_seed(record: str, kind: str) -> int:
    """The noise generator's seed for a record and noise kind: the same in every process (Python's own
    hash of a string changes from process to process, which made the figures unrepeatable)."""
    return NOISE_SEED + zlib.crc32(f"{record}:{kind}".encode()) % 10_000


@dataclass
class StressedScore:
    """One record at one (noise kind, SNR), scored unannotated, with its reference beats."""

    kind: str
    snr_db: float
    ref_sample: np.ndarray
    ref_aami: np.ndarray
    sample: np.ndarray  # detected beats
    ok: np.ndarray  # bool: not marked noise
    score: np.ndarray
    flagged: np.ndarray
    noise_probability: np.ndarray
    noisy: np.ndarray  # bool per sample of the signal: inside a noisy stretch
    after_learning: np.ndarray  # bool per sample: after the noise-free first minutes
    fs: float

    def add_to(self, cells: dict, key: tuple, score: np.ndarray, flagged: np.ndarray) -> None:
        """Pool these beats (with these scores and flags) into the cells of `key`, one per stretch."""
        tolerance = int(round(MATCH_TOLERANCE_S * self.fs))
        for stretch, where in (("noisy", self.noisy), ("clean", ~self.noisy & self.after_learning)):
            cell = cells.setdefault((*key, stretch), Counts())
            _accumulate(cell, self.ref_sample, self.ref_aami, self.sample, self.ok, score, flagged,
                        where[self.ref_sample], where[np.clip(self.sample, 0, len(where) - 1)], tolerance)


@dataclass
class StressedCut:
    """One record at one (noise kind, SNR), cut as `ecg-rnn score` cuts it, with its reference beats."""

    kind: str
    snr_db: float
    cut: CutBeats
    ref_sample: np.ndarray
    ref_aami: np.ndarray
    n_samples: int
    fs: float

    def scored(self, detector, second_lead_margin: float = SECOND_LEAD_MARGIN) -> StressedScore:
        """Scored by `detector` as `ecg-rnn score` scores it (second_lead_margin: see score_beats)."""
        scored = score_beats(detector, self.cut, False, second_lead_margin=second_lead_margin)
        quality = scored.quality if scored.quality is not None else np.full(len(self.cut.beats), "ok")
        return StressedScore(self.kind, self.snr_db, self.ref_sample, self.ref_aami, scored.beats.sample,
                             quality == "ok", scored.score, scored.flagged, self.cut.noise_probability,
                             noisy_mask(self.n_samples, self.fs),
                             np.arange(self.n_samples) / self.fs >= CLEAN_START_S, self.fs)


def stressed_scores(detector, records: tuple[str, ...], kinds: tuple[str, ...], snrs: tuple[float, ...],
                    progress: bool = True, recorder_fs: float | None = None,
                    noisy_leads: str = "all") -> Iterator[StressedScore]:
    """Every record at every (kind, SNR) scored as `ecg-rnn score` scores it (CLEAN among snrs: unchanged)."""
    for job in stressed_cuts(detector, records, kinds, snrs, progress, recorder_fs, noisy_leads):
        yield job.scored(detector)


def as_recorded(leads: np.ndarray, fs: float, ref_sample: np.ndarray,
                recorder_fs: float | None) -> tuple[np.ndarray, float, np.ndarray]:
    """The noisy leads as a recorder sampling at recorder_fs gives them (polyphase resampling, its
    anti-alias filter included), with the reference R-peaks moved to that rate; unchanged when None.
    The noise is added at MIT-BIH's rate first: it is part of the signal the recorder samples."""
    if recorder_fs is None or recorder_fs == fs:
        return leads, fs, ref_sample
    resampled = resample(leads, fs, recorder_fs)
    moved = np.minimum(np.round(ref_sample * (recorder_fs / fs)).astype(np.int64), len(resampled) - 1)
    return resampled, float(recorder_fs), moved


def stressed_cuts(detector, records: tuple[str, ...], kinds: tuple[str, ...], snrs: tuple[float, ...],
                  progress: bool = True, recorder_fs: float | None = None,
                  noisy_leads: str = "all") -> Iterator[StressedCut]:
    """Every record at every (kind, SNR) cut with the detector's configs (CLEAN among snrs: unchanged),
    resampled to recorder_fs first when given (as_recorded); noisy_leads: NOISY_LEADS."""
    if noisy_leads not in NOISY_LEADS:
        raise ValueError(f"noisy_leads must be one of {NOISY_LEADS}, not {noisy_leads!r}")
    folder = locate_mitdb(quiet=not progress)
    jobs = [(r, k, s) for r in records for k in kinds for s in snrs]
    bar = tqdm(jobs, desc="noise stress test", unit="record", disable=not progress, file=sys.stderr)
    loaded: dict[str, tuple] = {}
    for name, kind, snr in bar:
        if name not in loaded:
            source = open_record(folder / name)
            ref_sample, ref_symbol = reference_beats_of(source.annotations)
            loaded = {name: (source, source.read_leads(), ref_sample, aami_class(ref_symbol))}
        source, leads, ref_sample, ref_aami = loaded[name]
        noisy = _stressed(leads, source.fs, kind, snr, ref_sample[ref_aami == "N"], noise_seed(name, kind),
                          noisy_leads)
        noisy, fs, ref_at_fs = as_recorded(noisy, source.fs, ref_sample, recorder_fs)
        stressed = source_from_arrays(name, noisy, fs, tuple(source.sig_name[c] for c in source.ecg_channels), 0,
                                      origin=f"{name} + {kind} at {snr:g} dB")
        cut = cut_source(stressed, detector.signal, detector.beats, peaks="detect")
        yield StressedCut(kind, snr, cut, ref_at_fs, ref_aami, len(noisy), fs)


def evaluate_noise(detector, records: tuple[str, ...] = DS2, kinds: tuple[str, ...] = NOISE_KINDS,
                   snrs: tuple[float, ...] = NSTDB_SNR_DB, progress: bool = True,
                   recorder_fs: float | None = None, noisy_leads: str = "all") -> dict:
    """Score every record at every (kind, SNR) and report the pooled figures per cell; recorder_fs:
    every stressed recording resampled to that rate first (as_recorded), as another recorder gives it;
    noisy_leads: "chosen" puts the noise on the chosen lead alone."""
    cells: dict[tuple, Counts] = {}
    for job in stressed_scores(detector, records, kinds, (CLEAN, *snrs), progress, recorder_fs, noisy_leads):
        job.add_to(cells, (job.kind, job.snr_db), job.score, job.flagged)
    rows = [{"kind": kind, "snr_db": "clean" if snr == CLEAN else snr, "stretch": stretch, **_metrics(cell)}
            for (kind, snr, stretch), cell in cells.items()]
    return {"protocol": "noise", "dataset": "MIT-BIH Arrhythmia + synthetic NSTDB-style noise",
            "records": list(records), "kinds": list(kinds), "snrs_db": list(snrs),
            "recorder_fs": recorder_fs, "noisy_leads": noisy_leads, "rows": rows}


def _pooled_roc_auc(cells: list[Counts]) -> float:
    pooled = Counts()
    for cell in cells:
        for part in ("labels", "scores", "flags"):
            getattr(pooled, part).extend(getattr(cell, part))
    return _metrics(pooled)["roc_auc"]


def stratum_candidates(strata: tuple[float, ...], spreads_s: tuple[float, ...]) -> list[dict[str, float]]:
    """Every (noise_stratum_probability, noise_stratum_spread_s) pair; without a stratum (probability >= 1)
    the spread changes nothing, so it is tried once."""
    return [dict(zip(SETTINGS, (p, w))) for p in strata for w in (spreads_s[:1] if p >= 1 else spreads_s)]


def select_noise_stratum(detector, records: tuple[str, ...], clean_records: tuple[str, ...],
                         strata: tuple[float, ...] = NOISE_STRATA, spreads_s: tuple[float, ...] = NOISE_SPREADS_S,
                         kinds: tuple[str, ...] = NOISE_KINDS, snrs: tuple[float, ...] = SELECTION_SNRS_DB,
                         progress: bool = True) -> dict:
    """The detector's noise_stratum_probability and noise_stratum_spread_s, chosen on DS1: the pair with the
    best mean of two pooled ROC-AUCs over the beats not marked noise, one of `clean_records` as they are
    (recordings are mostly clean, and V beats raise a window's noise probability too), one of `records`
    (those the model never trained on) made noisy at `snrs`, every kind, noisy and clean stretches
    together. Every pair scores the same cut copies."""
    cuts = [*stressed_cuts(detector, clean_records, kinds[:1], (CLEAN,), progress),
            *stressed_cuts(detector, records, kinds, snrs, progress)]
    rows = []
    candidates = stratum_candidates(strata, spreads_s)
    for setting in tqdm(candidates, desc="noisy stratum settings", disable=not progress, file=sys.stderr):
        cells: dict[tuple, Counts] = {}
        candidate = copy.copy(detector).set_params(**setting)
        for job in (cut.scored(candidate) for cut in cuts):
            job.add_to(cells, ("unchanged", "clean") if job.snr_db == CLEAN else (job.kind, job.snr_db),
                       job.score, job.flagged)
        clean = _pooled_roc_auc([c for k, c in cells.items() if k[0] == "unchanged"])
        noisy = _pooled_roc_auc([c for k, c in cells.items() if k[0] != "unchanged"])
        row = {**setting, "criterion": (clean + noisy) / 2, "clean_roc_auc": clean, "noisy_roc_auc": noisy}
        for (kind, snr, stretch), cell in sorted(cells.items(), key=lambda kv: str(kv[0])):
            m = _metrics(cell)
            name = f"unchanged records, {stretch} stretches" if kind == "unchanged" else f"{kind} {snr:g} dB {stretch}"
            row[name] = {k: m[k] for k in ("roc_auc", "normal_flagged", "abnormal_recall")}
        rows.append(row)
    best = max(rows, key=lambda r: r["criterion"])
    return {"records": list(records), "clean_records": list(clean_records), "kinds": list(kinds),
            "snrs_db": list(snrs), "strata": list(strata), "spreads_s": list(spreads_s),
            "criterion": "mean of two pooled ROC-AUCs of the beats not marked noise: the unchanged records, and "
                         f"the noisy copies (every kind, SNR {', '.join(f'{x:g}' for x in snrs)} dB, noisy and "
                         "clean stretches)",
            "selected": {k: best[k] for k in SETTINGS}, "rows": rows}


def selection_markdown(report: dict) -> str:
    """The selection table: per noisy-stratum setting, the criterion and each cell's ROC-AUC, share of
    normal beats flagged and abnormal recall."""
    summary = ("criterion", "clean_roc_auc", "noisy_roc_auc")
    cells = [k for k in report["rows"][0] if k not in (*SETTINGS, *summary)]
    lines = ["| noisy stratum above | spread (s) | criterion | ROC-AUC unchanged | ROC-AUC noisy | "
             + " | ".join(cells) + " |", "|---" * (len(cells) + 5) + "|"]
    for row in report["rows"]:
        chosen = all(row[k] == report["selected"][k] for k in SETTINGS)
        values = [" / ".join("–" if not np.isfinite(row[c][k]) else f"{row[c][k]:.3f}"
                             for k in ("roc_auc", "normal_flagged", "abnormal_recall")) for c in cells]
        probability, spread = (row[k] for k in SETTINGS)
        label = "none" if probability >= 1 else f"{probability:g}"
        lines.append(f"| {label}{' (selected)' if chosen else ''} | {'–' if probability >= 1 else f'{spread:g}'} | "
                     + " | ".join(f"{row[k]:.4f}" for k in summary) + " | " + " | ".join(values) + " |")
    return "\n".join(lines)


TARGETS = {12.0: {"ppv": 0.995, "coverage": 0.95, "roc_auc": 0.92, "normal_flagged": 0.05},
           6.0: {"ppv": 0.99, "coverage": 0.85, "roc_auc": 0.88, "normal_flagged": 0.05},
           0.0: {"ppv": 0.97, "coverage": 0.50}}


def markdown_table(report: dict, stretch: str = "noisy") -> str:
    head = ("| noise | SNR (dB) | ref. beats | Se | +P (not noise) | coverage | abnormal beats covered | ROC-AUC | AP "
            "| normal flagged | abnormal recall |")
    lines = [head, "|" + "---|" * 11]
    for row in report["rows"]:
        if row["stretch"] != stretch:
            continue
        cells = [row["kind"], str(row["snr_db"]), str(row["reference_beats"])] + [
            f"{row[k]:.3f}" if np.isfinite(row[k]) else "–" for k in ("sensitivity", "ppv", "coverage")] + [
            str(row["abnormal_beats"])] + [
            f"{row[k]:.3f}" if np.isfinite(row[k]) else "–"
            for k in ("roc_auc", "ap", "normal_flagged", "abnormal_recall")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """python -m ecg_rnn.noise_protocol [--model M] [--out DIR]: select the detector's noisy-stratum
    probability and spread on the DS1 records the model was calibrated on but never trained on (its held-out
    records)."""
    import argparse
    import json
    import time
    from pathlib import Path

    from ecg_rnn import paths
    from ecg_rnn.detector import RecurrentAEDetector

    parser = argparse.ArgumentParser(description=main.__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=Path("docs/evaluation/noise"))
    args = parser.parse_args(argv)
    model = args.model or paths.default_model_path()
    detector = RecurrentAEDetector.load(model)
    records = tuple(detector.training_data_["heldout_records"])
    t0 = time.monotonic()
    report = select_noise_stratum(detector, records, DS1)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "selection.json").write_text(json.dumps(report, indent=2, default=float))
    chosen = report["selected"]
    chosen_text = (f"probability above {chosen['noise_stratum_probability']:g}, spread "
                   f"{chosen['noise_stratum_spread_s']:g} s")
    (args.out / "selection.md").write_text(
        "# The detector's noisy stratum, selected on DS1\n\n"
        f"Command: `python -m ecg_rnn.noise_protocol --out {args.out}` ({time.monotonic() - t0:.0f} s); model: "
        f"`{Path(model).name}`. Unchanged: all 22 DS1 records, unannotated copies through the scoring path (the "
        f"model trained on the normal beats of 15 of them). Made noisy: {', '.join(records)}, the DS1 records "
        "this model holds out (its calibration and threshold come from their normal beats; it never trained on "
        "them), as the stress test makes DS2's (ecg_rnn.stress). A beat whose window's noise "
        "probability (the quality stage's, in the lead the beat comes from), or that of any beat within the "
        "spread of it, is above the value is calibrated against the record's other such beats "
        "(`noise_stratum_probability`, `noise_stratum_spread_s`; none: every beat against the whole record). "
        "Criterion: " + report["criterion"] + f". Selected: **{chosen_text}**. Each cell: ROC-AUC / share of "
        "normal beats flagged / abnormal recall.\n\n" + selection_markdown(report) + "\n")
    print(f"selected noisy stratum: {chosen_text} -> {args.out / 'selection.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
