"""No-learning and classic baselines, scored on the same beats as the detector in every comparison.

Each follows the detector's contract (`fit(train) -> self`, `score_samples(beats, context, in_af)`,
`threshold_` = a percentile of normal scores). The no-learning template + RR score is the detector's own
score with the autoencoder's term replaced by the template distance: same calibration (per record),
same rhythm terms, same AF handling, its weights selected by the same cross-validation on DS1
(docs/evaluation/selection.md), so the comparison isolates what the autoencoder adds.
"""

from __future__ import annotations

import numpy as np

from ecg_rnn.beats import Beats
from ecg_rnn.features import (MORPHOLOGY_TERMS, NO_P_GATE, RHYTHM_TERMS, ScoreWeights, beat_zscore, calibrate,
                              combine, record_population, rhythm_terms, rr_reference, template_distances, zscores)
from ecg_rnn.model import ModelConfig
from ecg_rnn.protocols import heldout_mask

BASELINE_THRESHOLD_PERCENTILE = 95.0  # flag the top 5% of held-out normal scores
HELDOUT_FRACTION = 0.3  # of the training records, as the detector's default TrainConfig.val_fraction
PCA_COMPONENTS = 10
FOREST_TREES = 200
FOREST_MAX_BEATS = 20_000  # IsolationForest fits a random subset this large (it gains nothing from more)
FEATURE_KINDS = ("pca", "pca-z", "iforest")
# template + RR: selected on DS1 by cross-validation (docs/evaluation/selection.json, "no_learning")
TEMPLATE_RR_WEIGHTS = ScoreWeights(recon=0.0, distance=1.0, premature=0.5, pause=0.1)  # per-record calibration
TEMPLATE_RR_PERCENTILE = 95.0
TEMPLATE_RR_RECORD_SCALE = "lower_half"
TEMPLATE_RR_REFERENCE_BEATS = 128
TEMPLATE_RR_PREVIOUS_SHARE = 0.0
TEMPLATE_RR_LEAN_MIN_S = 0.0
TEMPLATE_RR_LEAN_MIN_P_SIMILARITY = NO_P_GATE
TEMPLATE_RR_TYPICAL_MADS = 3.0


class FeatureBaseline:
    """PCA reconstruction error (on the beats as cut: record-normalised, or z-scored per beat, as the
    tutorials do) or IsolationForest on the record-normalised beats."""

    def __init__(self, kind: str = "pca", seed: int = 0):
        self.kind = kind
        self.seed = seed

    def _x(self, beats: Beats) -> np.ndarray:
        return beat_zscore(beats.waves)[0] if self.kind == "pca-z" else beats.waves

    def fit(self, train: Beats) -> "FeatureBaseline":
        if self.kind not in FEATURE_KINDS:
            raise ValueError(f"kind must be one of {', '.join(FEATURE_KINDS)}, not {self.kind!r}")
        held = heldout_mask(train, HELDOUT_FRACTION, self.seed)
        x = self._x(train)[~held]
        if self.kind == "iforest":
            from sklearn.ensemble import IsolationForest

            sub = x[np.random.default_rng(self.seed).permutation(len(x))[:FOREST_MAX_BEATS]]
            self.model_ = IsolationForest(n_estimators=FOREST_TREES, random_state=self.seed, n_jobs=1).fit(sub)
        else:
            from sklearn.decomposition import PCA

            self.model_ = PCA(n_components=PCA_COMPONENTS, random_state=self.seed).fit(x)
        self.threshold_ = float(np.percentile(self.score_samples(train.subset(held)), BASELINE_THRESHOLD_PERCENTILE))
        return self

    def score_samples(self, beats: Beats, context: Beats | None = None, in_af: np.ndarray | None = None) -> np.ndarray:
        x = self._x(beats)
        if self.kind == "iforest":
            return -self.model_.score_samples(x)
        return ((self.model_.inverse_transform(self.model_.transform(x)) - x) ** 2).mean(axis=1)


class TemplateRRBaseline:
    """No learning: z(distance to the record's median beat) + the detector's rhythm terms, calibrated
    as the detector calibrates (morphology per record, rhythm on normal training beats)."""

    def __init__(self, weights: ScoreWeights = TEMPLATE_RR_WEIGHTS, calibrate_per_record: bool = True,
                 threshold_percentile: float = TEMPLATE_RR_PERCENTILE, record_scale: str = TEMPLATE_RR_RECORD_SCALE,
                 rr_reference_beats: int = TEMPLATE_RR_REFERENCE_BEATS,
                 rr_previous_share: float = TEMPLATE_RR_PREVIOUS_SHARE,
                 rr_lean_min_s: float = TEMPLATE_RR_LEAN_MIN_S,
                 rr_lean_min_p_similarity: float = TEMPLATE_RR_LEAN_MIN_P_SIMILARITY,
                 rr_typical_mads: float = TEMPLATE_RR_TYPICAL_MADS):
        self.weights = weights
        self.calibrate_per_record = calibrate_per_record
        self.record_scale = record_scale
        self.threshold_percentile = threshold_percentile
        self.rr_reference_beats = rr_reference_beats
        self.rr_previous_share = rr_previous_share
        self.rr_lean_min_s = rr_lean_min_s
        self.rr_lean_min_p_similarity = rr_lean_min_p_similarity
        self.rr_typical_mads = rr_typical_mads

    def _raw(self, population: Beats) -> dict[str, np.ndarray]:
        distance = template_distances(population)
        reference = rr_reference(population, window_beats=self.rr_reference_beats,
                                 previous_share=self.rr_previous_share, typical_mads=self.rr_typical_mads,
                                 distance=distance, lean_min_rr_s=self.rr_lean_min_s,
                                 lean_min_p_similarity=self.rr_lean_min_p_similarity)
        premature, pause = rhythm_terms(population.rr, reference)
        return {"recon": np.zeros(len(population)), "distance": distance, "premature": premature, "pause": pause}

    def fit(self, train: Beats, context: Beats | None = None, af_mask=None) -> "TemplateRRBaseline":
        """train: normal beats; context: all beats of their records. No learning: every training normal
        calibrates and sets the threshold. af_mask: as the detector's fit takes it."""
        population, rows = record_population(train, context)
        raw = self._raw(population)
        self.calibration_ = calibrate({k: v[rows] for k, v in raw.items()}, MORPHOLOGY_TERMS + RHYTHM_TERMS)
        in_af = af_mask(population)[rows] if af_mask is not None else None
        scores = self._score(raw, population.record, rows, in_af)
        self.threshold_ = float(np.percentile(scores, self.threshold_percentile))
        return self

    def _score(self, raw, record, rows, in_af) -> np.ndarray:
        z = zscores(raw, record, self.calibration_, self.calibrate_per_record, self.record_scale)
        return combine({k: v[rows] for k, v in z.items()}, self.weights, in_af)

    def score_samples(self, beats: Beats, context: Beats | None = None, in_af: np.ndarray | None = None) -> np.ndarray:
        population, rows = record_population(beats, context)
        return self._score(self._raw(population), population.record, rows, in_af)


def plain_lstm_config() -> ModelConfig:
    """The classic plain baseline: LSTM hidden 64, latent 32, repeat-vector decoder, per-beat z-scored
    input, one sample per step, reconstruction error only."""
    return ModelConfig(cell="lstm", hidden_size=64, num_layers=1, latent_size=32, step_samples=1,
                       context=False, input_norm="beat")
