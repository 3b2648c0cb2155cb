"""Features stage: what the model and the score see of a beat besides its waveform.

Per record: the template (median) beat. Per beat: log RR ratios for the model, the template distance,
the local RR90 (the 90th percentile of the RR intervals of the beats around it) and the two rhythm terms
of the anomaly score (prematurity against the local RR90, compensatory pause). Then how terms become a score: every term is a robust
z-score, the morphology terms (reconstruction error, template distance) against the recording's own
beats (per-record calibration: the threshold's promise then holds on leads, recorders and patients unlike
the training data), the rhythm terms against normal training beats; rhythm evidence only adds, and not
inside atrial fibrillation. No learning here: the no-learning baselines, the detector and the
selection by cross-validation share these functions, so they see the same evidence.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ecg_rnn.beats import BeatConfig, Beats
from ecg_rnn.rhythm import pre_qrs_columns
from ecg_rnn.signal import SignalConfig

REFERENCE_RR_S = 0.8  # the local RR enters the model as log(RR / 0.8 s): 75 bpm maps to 0
RR_EPS_S = 1e-3  # floor of an RR interval or ratio before taking its log
LOG_CLIP = 3.0  # log-ratio features and rhythm terms are clipped to +-3 (e^3 = 20-fold)
MSE_EPS = 1e-4  # floor of a squared error before its log (about the float noise of a perfect fit)
MAD_TO_SIGMA = 1.4826  # median absolute deviation -> standard deviation of a normal distribution
MIN_SCALE = 1e-6  # floor of a robust scale or a beat's standard deviation
RR_REFERENCE_PERCENTILE = 90.0
# RR90 is taken over this many beats centred on each beat (under two minutes at 75 bpm; 0: the whole
# record), so heart-rate changes (exercise, sleep, runs of block) do not make a faster stretch look
# premature; selected by cross-validation on DS1 (docs/evaluation/selection.md)
DEFAULT_RR_REFERENCE_BEATS = 128
# how far (geometrically) the prematurity reference leans from RR90 towards the cycle just before the
# beat's, and in which beats. Leaning spares a sudden rate change (a run of 1:1 conduction after block,
# respiratory sinus arrhythmia, AF the rhythm stage missed), whose cycles are short against RR90 but not
# against each other. Every beat leaning (lean_min_rr_s 0, no P-wave gate) spares runs of atrial ectopy
# the same way; leaning only in steady stretches slower than 1 / lean_min_rr_s (the cycle at least that
# long and within RR_LEAN_TOLERANCE of the one before) where the P wave looks like the record's sinus one
# (correlation with that of its slowest cycles at least lean_min_p_similarity) spares fewer. DS1 chose
# the latter; DS2 then lost S beats in slow runs of atrial ectopy (232) and ranked worse, so nothing
# leans (docs/evaluation/README.md)
DEFAULT_RR_PREVIOUS_SHARE = 0.0
DEFAULT_RR_LEAN_MIN_S = 0.0
NO_P_GATE = -1.0  # lean_min_p_similarity that every beat passes (a correlation is at least -1)
DEFAULT_RR_LEAN_MIN_P_SIMILARITY = NO_P_GATE
RR_LEAN_TOLERANCE = 0.15
# where the P wave lies in beats cut by the default configs (the pipeline's rate; callers with other
# configs pass their own)
DEFAULT_P_COLUMNS = pre_qrs_columns(BeatConfig().pre_s, SignalConfig().fs)
# RR90 is taken over normal-to-normal intervals (rr_reference's typical_mads): selected on DS1
DEFAULT_RR_TYPICAL_MADS = 3.0
MIN_NN_INTERVALS = 8  # a window with fewer normal-to-normal intervals takes its RR90 from all of them
PERCENTILE_BLOCK = 4096  # windows whose percentile is taken at once (bounded memory on 24-hour recordings)
# a record's own location and scale weigh n / (n + this) against the training calibration: a 10-beat strip
# leans on the training data, a half-hour record (2,000 beats) on itself
RECORD_PRIOR_BEATS = 50
MORPHOLOGY_TERMS = ("recon", "distance")  # how the beat's shape differs: calibrated per record
RHYTHM_TERMS = ("premature", "pause")  # when it comes: calibrated on normal training beats
TERMS = MORPHOLOGY_TERMS + RHYTHM_TERMS


@dataclass(frozen=True)
class ScoreWeights:
    """score = recon * z(recon) + distance * z(distance) + premature * max(0, z(premature))
    + pause * max(0, z(pause)); the rhythm part is 0 inside atrial fibrillation."""

    recon: float = 1.0
    distance: float = 0.0
    premature: float = 0.5
    pause: float = 0.1


def record_templates(beats: Beats) -> dict[str, np.ndarray]:
    """The median beat of each record: robust to the abnormal minority."""
    return {str(name): np.median(beats.waves[beats.record == name], axis=0).astype(np.float32)
            for name in np.unique(beats.record)}


def _percentile_of_valid(rows: np.ndarray) -> np.ndarray:
    """RR_REFERENCE_PERCENTILE of each row's non-NaN values (np.percentile's linear rule); NaN where a
    row has fewer than MIN_NN_INTERVALS. np.nanpercentile gives the same but was 40 times slower on a
    block of windows (0.52 s against 0.013 s for 4096 x 128), and a 24-hour recording has 27 blocks."""
    ordered = np.sort(rows, axis=1)  # NaN sort last
    count = (~np.isnan(rows)).sum(axis=1)
    position = RR_REFERENCE_PERCENTILE / 100.0 * np.maximum(count - 1, 0)
    low, high = np.floor(position).astype(np.int64), np.ceil(position).astype(np.int64)
    at = np.arange(len(rows))
    value = ordered[at, low] + (position - low) * (ordered[at, high] - ordered[at, low])
    return np.where(count >= MIN_NN_INTERVALS, value, np.nan)


def _windowed_percentile(x: np.ndarray, window: int, valid: np.ndarray | None = None) -> np.ndarray:
    """RR_REFERENCE_PERCENTILE of the `window` values centred on each value (shifted inward at the
    ends, so every value's window holds `window` values); of all values when there are not more.
    valid: only these values count, where a window holds at least MIN_NN_INTERVALS of them (else all)."""
    n = len(x)
    if n == 0:
        return np.zeros(0)
    kept = x if valid is None else np.where(valid, x, np.nan)
    if window <= 0 or n <= window:
        whole = _percentile_of_valid(kept[None, :])[0]
        return np.full(n, whole if np.isfinite(whole) else np.percentile(x, RR_REFERENCE_PERCENTILE))
    views, kept_views = (np.lib.stride_tricks.sliding_window_view(v, window) for v in (x, kept))
    per_start = np.concatenate([_percentile_of_valid(kept_views[i:i + PERCENTILE_BLOCK])
                                for i in range(0, len(views), PERCENTILE_BLOCK)])
    sparse = np.flatnonzero(np.isnan(per_start))  # windows with too few valid values: every value counts
    for i in range(0, len(sparse), PERCENTILE_BLOCK):
        part = sparse[i:i + PERCENTILE_BLOCK]
        per_start[part] = np.percentile(views[part], RR_REFERENCE_PERCENTILE, axis=1)
    starts = np.clip(np.arange(n) - window // 2, 0, n - window)
    return per_start[starts]


def normal_to_normal(distance: np.ndarray, typical_mads: float) -> np.ndarray:
    """Which RR intervals (each beat's previous one, in time order) join two beats of the record's usual
    shape: both beats' template distance at most typical_mads robust standard deviations above the
    record's median distance. The interval into and out of an ectopic beat (its coupling interval and
    compensatory pause) are left out."""
    median, scale = robust_location_scale(distance)
    typical = distance <= median + typical_mads * scale
    return typical & np.r_[True, typical[:-1]]


def steady_slow_cycles(rr_prev: np.ndarray, before: np.ndarray, lean_min_rr_s: float) -> np.ndarray:
    """Which cycles may lean to the one before: every cycle when lean_min_rr_s is 0, else those at least
    lean_min_rr_s long and within RR_LEAN_TOLERANCE of the cycle before."""
    if lean_min_rr_s <= 0:
        return np.ones(len(rr_prev), dtype=bool)
    change = np.abs(np.log(np.maximum(rr_prev, RR_EPS_S) / np.maximum(before, RR_EPS_S)))
    return (rr_prev >= lean_min_rr_s) & (change < np.log1p(RR_LEAN_TOLERANCE))


def lean_gates_label(lean_min_rr_s: float, lean_min_p_similarity: float) -> str:
    """Where a leaning reference leans, in words (empty when every beat does): the selection's row labels
    and the model card say it alike."""
    where = (f" in steady stretches under {60 / lean_min_rr_s:.0f} bpm (cycles >= {lean_min_rr_s:g} s within "
             f"{RR_LEAN_TOLERANCE:.0%} of the one before)" if lean_min_rr_s > 0 else "")
    if lean_min_p_similarity > NO_P_GATE:
        where += f" of a sinus P wave (correlation >= {lean_min_p_similarity:g})"
    return where


def p_wave_similarity(waves: np.ndarray, slow: np.ndarray, p_columns: slice) -> np.ndarray:
    """Correlation of each beat's pre-QRS segment (where its P wave lies; offset removed) with the median
    segment of the `slow` beats: the record's slowest cycles of its usual shape, its sinus rhythm even
    where atrial ectopic beats outnumber the sinus ones (all beats when fewer than MIN_NN_INTERVALS)."""
    segments = waves[:, p_columns].astype(np.float64)
    segments -= segments.mean(axis=1, keepdims=True)
    template = np.median(segments[slow] if slow.sum() >= MIN_NN_INTERVALS else segments, axis=0)
    norms = np.linalg.norm(segments, axis=1) * np.linalg.norm(template)
    return segments @ template / np.maximum(norms, MIN_SCALE)


def rr_reference(beats: Beats, context: Beats | None = None, window_beats: int = DEFAULT_RR_REFERENCE_BEATS,
                 previous_share: float = 0.0, typical_mads: float = 0.0,
                 distance: np.ndarray | None = None, lean_min_rr_s: float = 0.0,
                 lean_min_p_similarity: float = NO_P_GATE,
                 p_columns: slice | None = DEFAULT_P_COLUMNS) -> np.ndarray:
    """The prematurity reference of each beat, in seconds: RR90^(1 - share) * RR_before^share, share =
    previous_share where steady_slow_cycles(lean_min_rr_s) says the beat may lean and its P wave's
    similarity to the sinus one (p_wave_similarity; p_columns: where the P wave lies in the beat
    windows; None: windows too coarse to hold it, no gate) is at least lean_min_p_similarity, else 0.
    RR90: the 90th percentile of the previous-RR intervals of the `window_beats` beats of its record
    around it, in time order (0: of all the record's beats); with typical_mads > 0 only of the intervals
    between beats of the record's usual shape (normal_to_normal: frequent ventricular beats' compensatory
    pauses would make every sinus cycle look premature), all intervals where a window holds too few of
    those. RR_before: the cycle before the beat's own (the previous beat's previous RR; the record's first
    beat uses its own). context: all beats of the same records, when `beats` is only part of them.
    distance: template_distances(beats) when the caller has it already (whole records, no context)."""
    population, rows = record_population(beats, context)
    if distance is not None and (context is not None or len(distance) != len(beats)):
        raise ValueError("distance must hold template_distances(beats) of whole records (no context)")
    if typical_mads > 0 and distance is None:
        distance = template_distances(population)
    reference = np.zeros(len(population))
    for name in np.unique(population.record):
        idx = np.flatnonzero(population.record == name)
        idx = idx[np.argsort(population.time_s[idx], kind="stable")]
        rr_prev = population.rr[idx, 0].astype(np.float64)
        valid = normal_to_normal(distance[idx], typical_mads) if typical_mads > 0 else None
        rr90 = _windowed_percentile(rr_prev, int(window_beats), valid)
        before = np.r_[rr_prev[:1], rr_prev[:-1]]
        lean = steady_slow_cycles(rr_prev, before, lean_min_rr_s)
        if previous_share > 0 and lean_min_p_similarity > NO_P_GATE and p_columns is not None:
            slow = (rr_prev >= rr90) & (valid if valid is not None else True)
            lean &= p_wave_similarity(population.waves[idx], slow, p_columns) >= lean_min_p_similarity
        share = np.where(lean, previous_share, 0.0)
        reference[idx] = np.exp((1.0 - share) * np.log(np.maximum(rr90, RR_EPS_S))
                                + share * np.log(np.maximum(before, RR_EPS_S)))
    return reference[rows]


def _log_clipped(x: np.ndarray) -> np.ndarray:
    return np.clip(np.log(np.maximum(x, RR_EPS_S)), -LOG_CLIP, LOG_CLIP)


def rr_inputs(rr: np.ndarray) -> np.ndarray:
    """log prev ratio, log next ratio, log local RR relative to REFERENCE_RR_S; clipped."""
    rr = np.asarray(rr, dtype=np.float64)
    return np.stack([_log_clipped(rr[:, 3]), _log_clipped(rr[:, 4]),
                     _log_clipped(rr[:, 2] / REFERENCE_RR_S)], axis=1).astype(np.float32)


def rhythm_terms(rr: np.ndarray, rr_ref: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """prematurity -log(rr_prev / local RR90) and pause log(rr_next_ratio), clipped."""
    rr = np.asarray(rr, dtype=np.float64)
    premature = -_log_clipped(rr[:, 0] / np.maximum(rr_ref, RR_EPS_S))
    return premature, _log_clipped(rr[:, 4])


def template_distances(beats: Beats, context: Beats | None = None) -> np.ndarray:
    """log mean squared difference of each beat from its record's template (median) beat."""
    source = _with_missing_records(beats, context)
    distance = np.zeros(len(beats))
    for name, template in record_templates(source).items():
        rows = beats.record == name
        distance[rows] = log_squared_error(beats.waves[rows], template[None, :])
    return distance


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


def lower_half_location_scale(x: np.ndarray) -> tuple[float, float]:
    """Median, and the MAD-based standard deviation of the beats at or below it alone. Abnormal beats sit
    on the high side of a morphology term; in a record where they are many (a third of 208's beats are
    ventricular) they widen the full MAD and hide themselves; the lower half is the normal beats' own
    spread. For normally distributed values both scales agree."""
    med = float(np.median(x))
    return med, max(float(np.median(med - x[x <= med])) * MAD_TO_SIGMA, MIN_SCALE)


RECORD_SCALES = {"lower_half": lower_half_location_scale, "all_beats": robust_location_scale}
RECORD_SCALE_LABELS = {"lower_half": "scale from the lower half of its beats", "all_beats": "scale from all its beats"}
DEFAULT_RECORD_SCALE = "lower_half"  # selected by cross-validation inside DS1 (docs/evaluation/selection.md)


def nearby_maximum(values: np.ndarray, time_s: np.ndarray, record: np.ndarray, within_s: float) -> np.ndarray:
    """Per beat, the largest value among the beats of its record within `within_s` seconds of it (itself
    included); within_s = 0 returns the values."""
    values = np.asarray(values, dtype=np.float64)
    if within_s <= 0:
        return values.copy()
    time_s, record = np.asarray(time_s, dtype=np.float64), np.asarray(record)
    out = np.empty_like(values)
    for name in np.unique(record):
        rows = np.flatnonzero(record == name)
        rows = rows[np.argsort(time_s[rows], kind="stable")]
        t = time_s[rows]
        out[rows] = _range_maximum(values[rows], np.searchsorted(t, t - within_s, "left"),
                                   np.searchsorted(t, t + within_s, "right"))
    return out


def _range_maximum(v: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """max(v[lo[i]:hi[i]]) for every i (hi > lo) from a sparse table, level j holding the maxima of 2**j
    consecutive values: vectorised, O(n log n) however long the recording."""
    levels = [v]
    while 2 ** len(levels) <= len(v):
        half = 2 ** (len(levels) - 1)
        levels.append(np.maximum(levels[-1][:-half], levels[-1][half:]))
    level = np.floor(np.log2(hi - lo)).astype(np.int64)
    out = np.empty(len(v))
    for j in np.unique(level):
        at = level == j
        out[at] = np.maximum(levels[j][lo[at]], levels[j][hi[at] - 2 ** j])
    return out


def check_record_scale(record_scale: str) -> None:
    if record_scale not in RECORD_SCALES:
        raise ValueError(f"record_scale must be one of {', '.join(RECORD_SCALES)}, not {record_scale!r}")


def calibrate(raw: dict[str, np.ndarray], terms=TERMS) -> dict[str, list[float]]:
    """[median, robust scale] of each term over the given (normal) beats."""
    return {k: list(robust_location_scale(np.asarray(raw[k], dtype=np.float64))) for k in terms}


def _record_location_scale(x: np.ndarray, record: np.ndarray, prior: tuple[float, float], record_scale: str):
    """Per beat: its record's robust location and scale, shrunk towards `prior` for short records."""
    location_scale = RECORD_SCALES[record_scale]
    loc, scale = np.empty(len(x)), np.empty(len(x))
    for name in np.unique(record):
        rows = record == name
        med, mad = location_scale(x[rows])
        w = rows.sum() / (rows.sum() + RECORD_PRIOR_BEATS)
        loc[rows], scale[rows] = w * med + (1 - w) * prior[0], w * mad + (1 - w) * prior[1]
    return loc, scale


def zscores(raw: dict[str, np.ndarray], record: np.ndarray, calibration: dict[str, list[float]],
            per_record: bool = True, record_scale: str = DEFAULT_RECORD_SCALE) -> dict[str, np.ndarray]:
    """Robust z-score of every term. raw: the terms of *whole records* (with per_record, each record's
    beats are the reference of its morphology terms, their scale taken as record_scale says: one of
    RECORD_SCALES); calibration: [median, scale] of each term on normal training beats (the reference of
    the rhythm terms, and of short records' morphology)."""
    check_record_scale(record_scale)
    z = {}
    for k in TERMS:
        x = np.asarray(raw[k], dtype=np.float64)
        if k in MORPHOLOGY_TERMS and per_record:
            loc, scale = _record_location_scale(x, record, tuple(calibration[k]), record_scale)
        else:
            loc, scale = calibration[k]
        z[k] = (x - loc) / scale
    return z


def combine(z: dict[str, np.ndarray], weights: ScoreWeights, in_af: np.ndarray | None = None) -> np.ndarray:
    """The anomaly score (see ScoreWeights). A short RR inside atrial fibrillation is the rhythm, not
    ectopy: there a beat is judged by its shape alone."""
    rhythm = (weights.premature * np.maximum(z["premature"], 0.0) + weights.pause * np.maximum(z["pause"], 0.0))
    if in_af is not None:
        rhythm = np.where(np.asarray(in_af, dtype=bool), 0.0, rhythm)
    return weights.recon * z["recon"] + weights.distance * z["distance"] + rhythm


def _with_missing_records(beats: Beats, context: Beats | None) -> Beats:
    """The beats that templates come from: `context`, plus records it lacks from `beats`."""
    source = context if context is not None else beats
    missing = set(map(str, np.unique(beats.record))) - set(map(str, np.unique(source.record)))
    if missing:
        source = Beats.concat([source, beats.subset(np.isin(beats.record, list(missing)))])
    return source


def beat_keys(beats: Beats) -> np.ndarray:
    """"record#sample" of each beat: what identifies a beat across beat sets of the same records."""
    return np.char.add(np.char.add(beats.record.astype(str), "#"), beats.sample.astype(str))


def record_population(beats: Beats, context: Beats | None) -> tuple[Beats, np.ndarray]:
    """All beats of the records `beats` come from (context's beats of those records, plus any of
    `beats` that context lacks), and the row of each of `beats` in it. Every per-record quantity
    (template, local RR90, record calibration, patient adaptation) comes from this population, so a beat
    scores the same whether it is scored alone or with its whole record."""
    if context is None:
        return beats, np.arange(len(beats))
    names = np.unique(beats.record)
    population = context.subset(np.isin(context.record, names))
    keys, wanted = beat_keys(population), beat_keys(beats)
    order = np.argsort(keys, kind="stable")
    found = np.clip(np.searchsorted(keys[order], wanted), 0, max(len(keys) - 1, 0))
    rows = order[found] if len(keys) else np.zeros(len(beats), dtype=np.int64)
    missing = (keys[rows] != wanted) if len(keys) else np.ones(len(beats), dtype=bool)
    if missing.any():
        rows[missing] = len(population) + np.arange(missing.sum())
        population = Beats.concat([population, beats.subset(missing)])
    return population, rows


def model_inputs(beats: Beats, window: int, per_beat_norm: bool = False, with_template: bool = True,
                 context: Beats | None = None) -> dict[str, np.ndarray]:
    """Arrays the autoencoder reads: wave, template (zeros without context) and RR inputs.

    context: all beats of the same records (templates come from it) when `beats` is only part of its
    records.
    """
    waves = np.asarray(beats.waves, dtype=np.float32)
    if waves.ndim != 2 or waves.shape[1] != window:
        raise ValueError(f"beats have windows of {waves.shape[-1]} samples; the model expects {window}")
    if per_beat_norm:
        waves = beat_zscore(waves)[0]
    template = np.zeros_like(waves)
    source = _with_missing_records(beats, context)
    if with_template:
        for name, t in record_templates(source).items():
            template[beats.record == name] = t
    return {"wave": waves, "template": template, "rr": rr_inputs(beats.rr)}
