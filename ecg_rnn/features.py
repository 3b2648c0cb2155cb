"""Features stage: what the model and the score see of a beat besides its waveform.

Per record: the template (median) beat and RR90 (the 90th percentile of its RR intervals). Per beat:
log RR ratios for the model, and the two rhythm terms of the anomaly score (prematurity against RR90,
compensatory pause). Also the robust z-score every score term is calibrated with. No learning here:
the no-learning baselines and the detector share these functions, so they see the same evidence.
"""

from __future__ import annotations

import numpy as np

from ecg_rnn.beats import Beats

REFERENCE_RR_S = 0.8  # the local RR enters the model as log(RR / 0.8 s): 75 bpm maps to 0
RR_EPS_S = 1e-3  # floor of an RR interval or ratio before taking its log
LOG_CLIP = 3.0  # log-ratio features and rhythm terms are clipped to +-3 (e^3 = 20-fold)
MSE_EPS = 1e-4  # floor of a squared error before its log (about the float noise of a perfect fit)
MAD_TO_SIGMA = 1.4826  # median absolute deviation -> standard deviation of a normal distribution
MIN_SCALE = 1e-6  # floor of a robust scale or a beat's standard deviation
RR_REFERENCE_PERCENTILE = 90.0


def record_templates(beats: Beats) -> dict[str, np.ndarray]:
    """The median beat of each record: robust to the abnormal minority."""
    return {str(name): np.median(beats.waves[beats.record == name], axis=0).astype(np.float32)
            for name in np.unique(beats.record)}


def record_rr_reference(beats: Beats) -> dict[str, float]:
    """RR90 of each record: the 90th percentile of its previous-RR intervals, in seconds."""
    return {str(name): float(np.percentile(beats.rr[beats.record == name, 0], RR_REFERENCE_PERCENTILE))
            for name in np.unique(beats.record)}


def _log_clipped(x: np.ndarray) -> np.ndarray:
    return np.clip(np.log(np.maximum(x, RR_EPS_S)), -LOG_CLIP, LOG_CLIP)


def rr_inputs(rr: np.ndarray) -> np.ndarray:
    """log prev ratio, log next ratio, log local RR relative to REFERENCE_RR_S; clipped."""
    rr = np.asarray(rr, dtype=np.float64)
    return np.stack([_log_clipped(rr[:, 3]), _log_clipped(rr[:, 4]),
                     _log_clipped(rr[:, 2] / REFERENCE_RR_S)], axis=1).astype(np.float32)


def rhythm_terms(rr: np.ndarray, rr_ref: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """prematurity -log(rr_prev / RR90) and pause log(rr_next_ratio), clipped."""
    rr = np.asarray(rr, dtype=np.float64)
    premature = -_log_clipped(rr[:, 0] / np.maximum(rr_ref, RR_EPS_S))
    return premature, _log_clipped(rr[:, 4])


def beat_zscore(waves: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each beat z-scored on its own; also its mean and standard deviation, to undo it."""
    mean = waves.mean(axis=1, keepdims=True)
    std = np.maximum(waves.std(axis=1, keepdims=True), MIN_SCALE)
    return ((waves - mean) / std).astype(np.float32), mean, std


def log_squared_error(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """log of the per-beat mean squared difference."""
    return np.log(((a - b) ** 2).mean(axis=1) + MSE_EPS)


def robust_location_scale(x: np.ndarray) -> tuple[float, float]:
    """Median and MAD-based standard deviation: the calibration of a z-scored score term."""
    med = float(np.median(x))
    return med, max(float(np.median(np.abs(x - med))) * MAD_TO_SIGMA, MIN_SCALE)


def _with_missing_records(beats: Beats, context: Beats | None) -> Beats:
    """The beats that templates and RR90 come from: `context`, plus records it lacks from `beats`."""
    source = context if context is not None else beats
    missing = set(map(str, np.unique(beats.record))) - set(map(str, np.unique(source.record)))
    if missing:
        source = Beats.concat([source, beats.subset(np.isin(beats.record, list(missing)))])
    return source


def model_inputs(beats: Beats, window: int, per_beat_norm: bool = False, with_template: bool = True,
                 context: Beats | None = None) -> dict[str, np.ndarray]:
    """Arrays the autoencoder reads: wave, template (zeros without context), RR inputs, and RR90.

    context: all beats of the same records (templates and RR90 come from it) when `beats` is only part
    of its records.
    """
    waves = np.asarray(beats.waves, dtype=np.float32)
    if waves.ndim != 2 or waves.shape[1] != window:
        raise ValueError(f"beats have windows of {waves.shape[-1]} samples; the model expects {window}")
    if per_beat_norm:
        waves = beat_zscore(waves)[0]
    template = np.zeros_like(waves)
    rr_ref = np.zeros(len(beats))
    source = _with_missing_records(beats, context)
    if with_template:
        for name, t in record_templates(source).items():
            template[beats.record == name] = t
    for name, ref in record_rr_reference(source).items():
        rr_ref[beats.record == name] = ref
    return {"wave": waves, "template": template, "rr": rr_inputs(beats.rr), "rr_ref": rr_ref}
