"""No-learning and classic baselines, scored on the same beats as the detector in every comparison.

Each follows the detector's contract (`fit(train) -> self`, `score_samples(beats, context)`,
`threshold_` = the 95th percentile of held-out normal scores).
"""

from __future__ import annotations

import numpy as np

from ecg_rnn.beats import Beats
from ecg_rnn.features import log_squared_error, model_inputs, rhythm_terms, robust_location_scale
from ecg_rnn.model import ModelConfig
from ecg_rnn.protocols import heldout_mask

BASELINE_THRESHOLD_PERCENTILE = 95.0  # the detector default: flag the top 5% of held-out normal scores
HELDOUT_FRACTION = 0.3  # of the training records, as the detector's default TrainConfig.val_fraction
PCA_COMPONENTS = 10
FOREST_TREES = 200
FOREST_MAX_BEATS = 20_000  # IsolationForest fits a random subset this large (it gains nothing from more)


class FeatureBaseline:
    """PCA reconstruction error or IsolationForest on the beat waves (as cut: record-normalised)."""

    def __init__(self, kind: str = "pca", seed: int = 0):
        self.kind = kind
        self.seed = seed

    def fit(self, train: Beats) -> "FeatureBaseline":
        held = heldout_mask(train, HELDOUT_FRACTION, self.seed)
        x = train.waves[~held]
        if self.kind == "pca":
            from sklearn.decomposition import PCA

            self.model_ = PCA(n_components=PCA_COMPONENTS, random_state=self.seed).fit(x)
        else:
            from sklearn.ensemble import IsolationForest

            sub = x[np.random.default_rng(self.seed).permutation(len(x))[:FOREST_MAX_BEATS]]
            self.model_ = IsolationForest(n_estimators=FOREST_TREES, random_state=self.seed, n_jobs=1).fit(sub)
        self.threshold_ = float(np.percentile(self.score_samples(train.subset(held)),
                                              BASELINE_THRESHOLD_PERCENTILE))
        return self

    def score_samples(self, beats: Beats, context: Beats | None = None) -> np.ndarray:
        if self.kind == "pca":
            recon = self.model_.inverse_transform(self.model_.transform(beats.waves))
            return ((recon - beats.waves) ** 2).mean(axis=1)
        return -self.model_.score_samples(beats.waves)


class TemplateRRBaseline:
    """No learning: distance to the record's median beat + the detector's RR90 prematurity term,
    calibrated like the detector (robust z on normal beats)."""

    def __init__(self, rhythm_weight: float = 0.5):
        self.rhythm_weight = rhythm_weight

    @staticmethod
    def _terms(beats: Beats, context: Beats | None):
        inp = model_inputs(beats, window=beats.waves.shape[1], context=context)
        return log_squared_error(inp["wave"], inp["template"]), rhythm_terms(beats.rr, inp["rr_ref"])[0]

    def fit(self, train: Beats, context: Beats | None = None) -> "TemplateRRBaseline":
        distance, premature = self._terms(train, context)  # no learning: every training normal calibrates
        self.calibration_ = (robust_location_scale(distance), robust_location_scale(premature))
        self.threshold_ = float(np.percentile(self._combine(distance, premature), BASELINE_THRESHOLD_PERCENTILE))
        return self

    def _combine(self, distance, premature):
        (md, sd), (mp, sp) = self.calibration_
        return (distance - md) / sd + self.rhythm_weight * np.maximum((premature - mp) / sp, 0)

    def score_samples(self, beats: Beats, context: Beats | None = None) -> np.ndarray:
        return self._combine(*self._terms(beats, context))


def plain_lstm_config() -> ModelConfig:
    """The classic plain baseline: LSTM hidden 64, latent 32, repeat-vector decoder, per-beat z-scored
    input, one sample per step, reconstruction error only."""
    return ModelConfig(cell="lstm", hidden_size=64, num_layers=1, latent_size=32, step_samples=1,
                       context=False, input_norm="beat")
