"""Noise stress test protocol (`ecg-rnn evaluate --protocol noise`): MIT-BIH records made noisy the way
the MIT-BIH Noise Stress Test Database was (ecg_rnn.stress), scored unannotated through the same path as
`ecg-rnn score`, and compared with their reference beats.

Per noise kind and SNR, over the noisy stretches (from minute 5 on, 2 minutes noisy, 2 clean, ...):
- R-peak sensitivity (reference beats with a detection within 150 ms) and positive predictivity of
  the detections not marked `noise`;
- coverage: reference beats found by a detection not marked `noise`;
- ROC-AUC and AP (abnormal = S, V, F, Q) and the share of normal beats flagged, over those beats.
The same figures over the clean stretches show what the noise costs. Selection (the quality stage's
thresholds) is done on DS1 records only; the report runs on DS2 records.
"""

from __future__ import annotations

import sys
import zlib
from dataclasses import dataclass, field

import numpy as np
from sklearn.metrics import average_precision_score, roc_auc_score
from tqdm.auto import tqdm

from ecg_rnn.beats import ABNORMAL_CLASSES, MATCH_TOLERANCE_S, aami_class, reference_beats_of
from ecg_rnn.protocols import DS2, locate_mitdb
from ecg_rnn.records import open_record, source_from_arrays
from ecg_rnn.scoring import score_source
from ecg_rnn.stress import NOISE_KINDS, NSTDB_SNR_DB, add_noise, make_noise, noisy_mask

CLEAN = float("inf")  # the "SNR" of the unchanged record, scored as a reference row
NOISE_SEED = 1984


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
    both = 0 < y.sum() < len(y)
    return {"reference_beats": cell.reference,
            "sensitivity": cell.found / max(cell.reference, 1),
            "ppv": cell.true_ok / max(cell.detections_ok, 1),
            "coverage": cell.covered / max(cell.reference, 1),
            "roc_auc": float(roc_auc_score(y, scores)) if both else float("nan"),
            "ap": float(average_precision_score(y, scores)) if both else float("nan"),
            "normal_flagged": float(flags[normal].mean()) if normal.any() else float("nan"),
            "abnormal_recall": float(flags[y].mean()) if y.any() else float("nan")}


def _stressed(leads: np.ndarray, fs: float, kind: str, snr_db: float, normal_peaks: np.ndarray,
              rng_seed: int) -> np.ndarray:
    if snr_db == CLEAN:
        return leads
    rng = np.random.default_rng(rng_seed)
    noise = np.stack([make_noise(kind, len(leads), fs, rng) for _ in range(leads.shape[1])], axis=1)
    return add_noise(leads, noise, fs, snr_db, normal_peaks)


def noise_seed(record: str, kind: str) -> int:
    """The noise generator's seed for a record and noise kind: the same in every process (Python's own
    hash of a string changes from process to process, which made the figures unrepeatable)."""
    return NOISE_SEED + zlib.crc32(f"{record}:{kind}".encode()) % 10_000


def evaluate_noise(detector, records: tuple[str, ...] = DS2, kinds: tuple[str, ...] = NOISE_KINDS,
                   snrs: tuple[float, ...] = NSTDB_SNR_DB, progress: bool = True) -> dict:
    """Score every record at every (kind, SNR) and report the pooled figures per cell."""
    folder = locate_mitdb(quiet=not progress)
    cells: dict[tuple[str, float, str], Counts] = {}
    jobs = [(r, k, s) for r in records for k in kinds for s in (CLEAN, *snrs)]
    bar = tqdm(jobs, desc="noise stress test", unit="record", disable=not progress, file=sys.stderr)
    loaded: dict[str, tuple] = {}
    for name, kind, snr in bar:
        if name not in loaded:
            source = open_record(folder / name)
            ref_sample, ref_symbol = reference_beats_of(source.annotations)
            loaded = {name: (source, source.read_leads(), ref_sample, aami_class(ref_symbol))}
        source, leads, ref_sample, ref_aami = loaded[name]
        fs = source.fs
        noisy = _stressed(leads, fs, kind, snr, ref_sample[ref_aami == "N"], noise_seed(name, kind))
        copy = source_from_arrays(name, noisy, fs, tuple(source.sig_name[c] for c in source.ecg_channels), 0,
                                  origin=f"{name} + {kind} at {snr:g} dB")
        scored = score_source(detector, copy, peaks="detect")
        det = scored.beats.sample
        quality = scored.quality if scored.quality is not None else np.full(len(det), "ok")
        det_ok = quality == "ok"
        mask = noisy_mask(len(leads), fs)
        after_learning = np.arange(len(leads)) / fs >= 300.0
        tolerance = int(round(MATCH_TOLERANCE_S * fs))
        for stretch, where in (("noisy", mask), ("clean", ~mask & after_learning)):
            cell = cells.setdefault((kind, snr, stretch), Counts())
            _accumulate(cell, ref_sample, ref_aami, det, det_ok, scored.score, scored.flagged,
                        where[ref_sample], where[np.clip(det, 0, len(where) - 1)], tolerance)
    rows = [{"kind": kind, "snr_db": "clean" if snr == CLEAN else snr, "stretch": stretch, **_metrics(cell)}
            for (kind, snr, stretch), cell in cells.items()]
    return {"protocol": "noise", "dataset": "MIT-BIH Arrhythmia + synthetic NSTDB-style noise",
            "records": list(records), "kinds": list(kinds), "snrs_db": list(snrs), "rows": rows}


TARGETS = {12.0: {"ppv": 0.995, "coverage": 0.95, "roc_auc": 0.92, "normal_flagged": 0.05},
           6.0: {"ppv": 0.99, "coverage": 0.85, "roc_auc": 0.88, "normal_flagged": 0.05},
           0.0: {"ppv": 0.97, "coverage": 0.50}}


def markdown_table(report: dict, stretch: str = "noisy") -> str:
    head = "| noise | SNR (dB) | ref. beats | Se | +P (not noise) | coverage | ROC-AUC | AP | normal flagged | abnormal recall |"
    lines = [head, "|" + "---|" * 10]
    for row in report["rows"]:
        if row["stretch"] != stretch:
            continue
        cells = [row["kind"], str(row["snr_db"]), str(row["reference_beats"])] + [
            f"{row[k]:.3f}" if np.isfinite(row[k]) else "–"
            for k in ("sensitivity", "ppv", "coverage", "roc_auc", "ap", "normal_flagged", "abnormal_recall")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
