"""Suggest stage: a suggested AAMI class (N, S, V, F, Q) for every beat, for a reviewer to confirm.

No classifier is trained on S, V or F labels. The suggestion comes from rules over evidence the pipeline
already has, plus unsupervised structure found in each recording on its own:

1. Morphology families. The beats of a record are clustered by the shape of their QRS complex
   (scikit-learn's Birch: tight clusters, one pass, scales to 24-hour recordings). A cluster is a
   *normal family* when it is the largest, or when it is large enough, on time (its beats are not
   premature, not followed by a pause) and its QRS is not wider than the largest one's. A patient may have
   several normal families (axis shifts, intermittent aberration, a lead whose QRS changes with breathing);
   each beat is compared with the nearest one, not with one median beat.
2. Per beat: the QRS deviation from that family (sum of absolute differences over the QRS window,
   relative to the family's own QRS area; 0 = the same shape, about 1 = as different as the QRS is large),
   the widening of the QRS (energy span of the slope), the QRS amplitude against the record's typical
   one, and the timing of the beat's own cluster (median RR ratios of its members).
3. Prematurity is measured against the local normal-to-normal cycle: a percentile of the RR intervals
   between consecutive non-ventricular beats over a few minutes (so the pause after a V beat does not make
   the next normal cycle look short), against the local median (`rr_prev_ratio`), and against RR90 (the
   record's 90th-percentile RR, robust to very frequent ectopy).

Rules, in order (see SuggestConfig for every threshold):

- Q: the QRS is flat or huge against the record's typical beat (lead off, saturation): unreadable.
- V: abnormal shape (deviation >= abnormal_area) and at least one of: ectopic timing (premature against
  the local median, or followed by a compensatory pause), a widened QRS, a very abnormal shape
  (>= v_certain_area); or a moderately abnormal shape in a cluster whose members are typically premature
  and followed by a pause.
- F: abnormal shape on time, with a QRS of normal width: between the normal and the ventricular beat.
- S: any other readable beat (a supraventricular shape) that is premature, outside atrial fibrillation or
  flutter (there the RR is irregular by nature and a short RR is no evidence of an ectopic atrial focus).
- N: everything else.

Inputs are what a recording without annotations provides at scoring time: the beats of whole records (their
waveforms, already resampled to the pipeline's rate, and their RR context) and, optionally, the rhythm
stage's AF mask. The detector's reconstruction z-score was tried on DS1 as a veto and as an extra route to
V and gained nothing there, so the suggestion does not depend on the model or its calibration. Amplitudes
are rescaled per record here, so any gain works; RR intervals are in seconds and the waveforms at the
pipeline's rate, so any original sampling rate works.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from sklearn.cluster import Birch
from threadpoolctl import threadpool_limits

from ecg_rnn.beats import AAMI_CLASSES, BeatConfig, Beats
from ecg_rnn.errors import SignalError
from ecg_rnn.features import RR_REFERENCE_PERCENTILE
from ecg_rnn.signal import SignalConfig

QRS_WINDOW_S = (-0.10, 0.15)  # around the R-peak: the whole QRS of a normal or a wide beat
SLOPE_WINDOW_S = (-0.15, 0.20)  # where the QRS width is measured (covers a 200 ms ventricular QRS)
ENERGY_SPAN = (0.1, 0.9)  # QRS width = time between 10 % and 90 % of the slope energy in that window
DIVISOR_FLOOR = 1e-6  # floor of an amplitude, area or interval before dividing by it
MIN_REFERENCE_BEATS = 10  # fewer normal-to-normal intervals than this: take every interval instead
NEAREST_BLOCK = 512  # beats compared with every cluster centre at once (bounded memory, cache-sized blocks)


@dataclass(frozen=True)
class SuggestConfig:
    """Thresholds of the suggestion rules. The four marked "CV" were selected on a grid over the MIT-BIH
    DS1 records, with leave-one-record-out cross-validation for their held-out figures (benchmarks/suggest.py,
    docs/evaluation/suggest.md); the others are design constants set while developing on DS1. DS2 was
    never used to choose anything."""

    # morphology families (record-normalised amplitude; QRS window at the pipeline rate)
    cluster_radius: float = 0.3  # Birch subcluster radius: tight, so a cluster holds one shape
    family_min_share: float = 0.01  # a normal family holds at least this share of the record's beats...
    family_min_beats: int = 5  # ...and at least this many
    family_on_time_ratio: float = 0.95  # its members' median rr_prev_ratio is at least this
    family_max_next_ratio: float = 1.10  # and their median rr_next_ratio at most this (no pause after)
    family_max_widening_s: float = 0.02  # and its QRS is at most this much wider than the largest family's
    # ventricular and fusion beats
    abnormal_area: float = 1.2  # CV: deviation from the nearest family from which a shape is abnormal
    v_certain_area: float = 2.5  # CV: deviation from which the shape alone says V
    wide_qrs_s: float = 0.03  # QRS widened by this much (30 ms) is ventricular conduction
    v_premature_ratio: float = 0.90  # rr_prev_ratio below this: early
    v_pause_ratio: float = 1.15  # rr_next_ratio above this: followed by a (compensatory) pause
    ectopic_cluster_area: float = 0.5  # deviation enough for V when the beat's cluster is ectopic...
    ectopic_cluster_min_beats: int = 3  # ...a cluster of at least this many beats, typically early and paused
    # supraventricular beats
    s_nn_ratio: float = 0.7  # CV: rr_prev / local normal-to-normal reference below this is premature
    s_local_ratio: float = 0.85  # rr_prev_ratio (against the local median) below this is premature
    s_rr90_ratio: float = 0.5  # CV: rr_prev / RR90 below this is premature (0: not used)
    nn_percentile: float = 75.0  # the local normal-to-normal reference is this percentile of NN intervals
    nn_window_beats: int = 401  # over this many NN intervals (about 5 minutes), centred
    # unreadable beats
    q_min_amplitude: float = 0.15  # QRS peak-to-peak below this share of the record's typical: flat
    q_max_amplitude: float = 6.0  # above this many times the typical: saturation or artefact

    def __post_init__(self):
        if not 0 < self.nn_percentile <= 100:
            raise ValueError(f"nn_percentile must be in (0, 100], not {self.nn_percentile}")
        if self.cluster_radius <= 0:
            raise ValueError(f"cluster_radius must be positive, not {self.cluster_radius}")


@dataclass(frozen=True)
class BeatLayout:
    """Where the R-peak and the windows lie in a beat's samples."""

    fs: float
    r_index: int

    @staticmethod
    def of(signal_config: SignalConfig, beat_config: BeatConfig) -> "BeatLayout":
        return BeatLayout(fs=signal_config.fs, r_index=beat_config.window_samples(signal_config.fs)[0])

    def window(self, span_s: tuple[float, float]) -> slice:
        return slice(self.r_index + int(round(span_s[0] * self.fs)), self.r_index + int(round(span_s[1] * self.fs)))


@dataclass
class MorphologyEvidence:
    """Per-beat evidence that does not depend on the rule thresholds (computed once per record)."""

    deviation: np.ndarray  # QRS deviation from the nearest normal family (0 = same shape)
    widening_s: np.ndarray  # QRS width minus the nearest family's, in seconds
    amplitude: np.ndarray  # QRS peak-to-peak / the record's median QRS peak-to-peak
    in_family: np.ndarray  # bool: the beat's own cluster is a normal family
    cluster_size: np.ndarray  # beats in the beat's cluster
    cluster_prev_ratio: np.ndarray  # median rr_prev_ratio of the beat's cluster
    cluster_next_ratio: np.ndarray  # median rr_next_ratio of the beat's cluster


def suggest_classes(beats: Beats, in_af: np.ndarray | None = None, config: SuggestConfig = SuggestConfig(), *,
                    signal_config: SignalConfig = SignalConfig(),
                    beat_config: BeatConfig = BeatConfig()) -> np.ndarray:
    """A suggested AAMI class ("N", "S", "V", "F" or "Q") for every beat.

    beats: every beat of one or more whole records, in time order within each record (the families and
    the rhythm references are per record, from the beats passed in).
    in_af: bool per beat, True inside atrial fibrillation or flutter (the rhythm stage); None: no AF known.
    signal_config, beat_config: how the beats were cut (the detector's own configs).
    """
    layout = _checked_layout(beats, signal_config, beat_config)
    evidence = morphology_evidence(beats, config, layout)
    af = np.zeros(len(beats), dtype=bool) if in_af is None else _checked_mask(in_af, beats)
    return classify(evidence, beats.rr, beats.record, af, config)


def _checked_layout(beats: Beats, signal_config: SignalConfig, beat_config: BeatConfig) -> BeatLayout:
    pre, post = beat_config.window_samples(signal_config.fs)
    if beats.waves.ndim != 2 or beats.waves.shape[1] != pre + post:
        raise SignalError(f"beats have windows of {beats.waves.shape[-1]} samples; the suggestion expects "
                          f"{pre + post} ({beat_config.pre_s + beat_config.post_s:g} s at {signal_config.fs:g} Hz): "
                          "pass the configs the beats were cut with")
    if beat_config.pre_s < -SLOPE_WINDOW_S[0] or beat_config.post_s < SLOPE_WINDOW_S[1]:
        raise SignalError(f"beat windows of {beat_config.pre_s:g} s before and {beat_config.post_s:g} s after the "
                          f"R-peak are too short; the suggestion needs at least {-SLOPE_WINDOW_S[0]:g} s and "
                          f"{SLOPE_WINDOW_S[1]:g} s")
    return BeatLayout.of(signal_config, beat_config)


def _checked_mask(in_af, beats: Beats) -> np.ndarray:
    in_af = np.asarray(in_af)
    if in_af.shape != (len(beats),):
        raise SignalError(f"the AF mask has shape {in_af.shape}; expected one value per beat ({len(beats)})")
    return in_af.astype(bool)


# ---------------------------------------------------------------------------------------------
# evidence


def morphology_evidence(beats: Beats, config: SuggestConfig = SuggestConfig(),
                        layout: BeatLayout = BeatLayout.of(SignalConfig(), BeatConfig())) -> MorphologyEvidence:
    """Families, deviations and cluster timing of every record in `beats`."""
    n = len(beats)
    out = MorphologyEvidence(deviation=np.zeros(n), widening_s=np.zeros(n), amplitude=np.ones(n),
                             in_family=np.zeros(n, dtype=bool), cluster_size=np.zeros(n, dtype=np.int64),
                             cluster_prev_ratio=np.ones(n), cluster_next_ratio=np.ones(n))
    for name in np.unique(beats.record):
        rows = np.flatnonzero(beats.record == name)
        for field, values in _record_evidence(beats.waves[rows], beats.rr[rows], config, layout).items():
            getattr(out, field)[rows] = values
    return out


def _record_evidence(waves: np.ndarray, rr: np.ndarray, config: SuggestConfig, layout: BeatLayout) -> dict:
    waves = _rescaled(waves)
    qrs = np.ascontiguousarray(waves[:, layout.window(QRS_WINDOW_S)])
    labels = _subcluster_labels(qrs, config.cluster_radius)
    _, cluster, size = np.unique(labels, return_inverse=True, return_counts=True)
    index = np.arange(len(size))
    centroids = _cluster_means(waves, cluster, len(size))
    prev_ratio = np.asarray(ndimage.median(rr[:, 3], cluster, index))
    next_ratio = np.asarray(ndimage.median(rr[:, 4], cluster, index))
    width = qrs_width(centroids, layout)
    largest = int(np.argmax(size))
    family = ((size >= max(config.family_min_beats, config.family_min_share * len(waves)))
              & (prev_ratio >= config.family_on_time_ratio) & (next_ratio <= config.family_max_next_ratio)
              & (width - width[largest] <= config.family_max_widening_s))
    family[largest] = True
    family_qrs = centroids[family][:, layout.window(QRS_WINDOW_S)]
    nearest = _nearest(qrs, family_qrs)
    amplitude = np.ptp(qrs, axis=1)
    return {
        "deviation": np.abs(qrs - family_qrs[nearest]).sum(axis=1)
                     / np.maximum(np.abs(family_qrs[nearest]).sum(axis=1), DIVISOR_FLOOR),
        "widening_s": qrs_width(waves, layout) - width[family][nearest],
        "amplitude": amplitude / max(float(np.median(amplitude)), DIVISOR_FLOOR),
        "in_family": family[cluster], "cluster_size": size[cluster],
        "cluster_prev_ratio": prev_ratio[cluster], "cluster_next_ratio": next_ratio[cluster],
    }


def _rescaled(waves: np.ndarray) -> np.ndarray:
    """Offset removed and scaled by the record's median beat, whatever normalisation the beats had, so the
    clustering radius and the deviations mean the same at any gain."""
    centred = waves.astype(np.float64)  # one float64 copy, worked on in place: bounded memory on long recordings
    centred -= np.median(centred, axis=1, keepdims=True)
    centred /= max(float(np.ptp(np.median(centred, axis=0))), DIVISOR_FLOOR)
    return centred


def _cluster_means(waves: np.ndarray, cluster: np.ndarray, k: int) -> np.ndarray:
    sums = np.zeros((k, waves.shape[1]))
    np.add.at(sums, cluster, waves)
    return sums / np.bincount(cluster, minlength=k)[:, None]


def _subcluster_labels(qrs: np.ndarray, radius: float) -> np.ndarray:
    """Birch's labels (the nearest subcluster centre of every beat), found by _nearest: Birch's own
    prediction holds blocks of scikit-learn's working memory (1 GiB on the thousands of subclusters of a
    24-hour recording) and is slower."""
    birch = Birch(threshold=radius, n_clusters=None, compute_labels=False).fit(qrs)
    return _nearest(qrs, birch.subcluster_centers_)


def _nearest(x: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """Index of the nearest centre (Euclidean) of every row: the argmin over centres of |c|^2 - 2 x.c
    (|x|^2 is the same for every centre), one matrix product of [x, 1] with [-2c, |c|^2] per
    NEAREST_BLOCK rows, on one BLAS thread: this thin product gains nothing from more, and threads that
    spin while another process holds a core slow it several-fold."""
    weights = np.vstack([-2.0 * centres.T, (centres ** 2).sum(axis=1)[None, :]])
    nearest = np.empty(len(x), dtype=np.int64)
    with threadpool_limits(1, user_api="blas"):
        for start in range(0, len(x), NEAREST_BLOCK):
            block = x[start:start + NEAREST_BLOCK]
            with_ones = np.hstack([block, np.ones((len(block), 1))])
            nearest[start:start + NEAREST_BLOCK] = np.argmin(with_ones @ weights, axis=1)
    return nearest


def qrs_width(waves: np.ndarray, layout: BeatLayout) -> np.ndarray:
    """Seconds between 10 % and 90 % of the cumulative squared slope around the R-peak, with linear
    interpolation between samples (at 128 Hz a sample is 7.8 ms, as much as a QRS widens)."""
    energy = np.cumsum(np.diff(waves[:, layout.window(SLOPE_WINDOW_S)], axis=1) ** 2, axis=1)
    energy /= np.maximum(energy[:, -1:], DIVISOR_FLOOR)

    def crossing(level: float) -> np.ndarray:
        after = np.clip((energy < level).sum(axis=1), 1, energy.shape[1] - 1)[:, None]
        lo = np.take_along_axis(energy, after - 1, axis=1)[:, 0]
        hi = np.take_along_axis(energy, after, axis=1)[:, 0]
        return after[:, 0] - 1 + (level - lo) / np.maximum(hi - lo, DIVISOR_FLOOR)

    return (crossing(ENERGY_SPAN[1]) - crossing(ENERGY_SPAN[0])) / layout.fs


# ---------------------------------------------------------------------------------------------
# rules


def classify(evidence: MorphologyEvidence, rr: np.ndarray, record: np.ndarray, in_af: np.ndarray,
             config: SuggestConfig) -> np.ndarray:
    """The rules of the module docstring over precomputed evidence (cheap: threshold selection reruns it)."""
    rr = np.asarray(rr, dtype=np.float64)
    unreadable = (evidence.amplitude < config.q_min_amplitude) | (evidence.amplitude > config.q_max_amplitude)
    ventricular, fusion = _ventricular_and_fusion(evidence, rr, config)
    ventricular &= ~unreadable
    fusion &= ~unreadable
    supraventricular_shape = ~(ventricular | fusion | unreadable)
    supra = supraventricular_shape & ~in_af & _premature(rr, record, supraventricular_shape, config)
    out = np.full(len(rr), AAMI_CLASSES[0], dtype="<U1")
    for cls, mask in (("S", supra), ("F", fusion), ("V", ventricular), ("Q", unreadable)):
        out[mask] = cls
    return out


def _ventricular_and_fusion(evidence: MorphologyEvidence, rr: np.ndarray,
                            config: SuggestConfig) -> tuple[np.ndarray, np.ndarray]:
    deviation = evidence.deviation
    abnormal = deviation >= config.abnormal_area
    ectopic_timing = (rr[:, 3] < config.v_premature_ratio) | (rr[:, 4] > config.v_pause_ratio)
    wide = evidence.widening_s >= config.wide_qrs_s
    ectopic_cluster = (~evidence.in_family & (evidence.cluster_size >= config.ectopic_cluster_min_beats)
                       & (evidence.cluster_prev_ratio < config.family_on_time_ratio)
                       & (evidence.cluster_next_ratio > config.v_pause_ratio))
    ventricular = abnormal & (ectopic_timing | wide | (deviation >= config.v_certain_area))
    ventricular |= ectopic_cluster & (deviation >= config.ectopic_cluster_area)
    return ventricular, abnormal & ~ventricular


def _premature(rr: np.ndarray, record: np.ndarray, supraventricular_shape: np.ndarray,
               config: SuggestConfig) -> np.ndarray:
    """Early against the local normal-to-normal cycle, the local median, or RR90."""
    ratio_nn = np.ones(len(rr))
    ratio_rr90 = np.ones(len(rr))
    for name in np.unique(record):
        rows = np.flatnonzero(record == name)
        prev = rr[rows, 0]
        ratio_nn[rows] = prev / normal_cycle_reference(prev, supraventricular_shape[rows], config)
        ratio_rr90[rows] = prev / max(float(np.percentile(prev, RR_REFERENCE_PERCENTILE)), DIVISOR_FLOOR)
    return ((ratio_nn < config.s_nn_ratio) | (rr[:, 3] < config.s_local_ratio)
            | (ratio_rr90 < config.s_rr90_ratio))


def normal_cycle_reference(rr_prev: np.ndarray, supraventricular_shape: np.ndarray,
                           config: SuggestConfig) -> np.ndarray:
    """Per beat, the `nn_percentile`-th percentile of the surrounding normal-to-normal intervals (between
    two beats of supraventricular shape; the coupling interval and pause of a V beat are left out)."""
    nn = supraventricular_shape.copy()
    nn[1:] &= supraventricular_shape[:-1]
    if nn.sum() < MIN_REFERENCE_BEATS:
        nn[:] = True
    intervals = rr_prev[nn]
    size = min(config.nn_window_beats, len(intervals))
    reference = ndimage.percentile_filter(intervals, config.nn_percentile, size=size | 1, mode="nearest")
    return np.maximum(np.interp(np.arange(len(rr_prev)), np.flatnonzero(nn), reference), DIVISOR_FLOOR)
