"""The anomaly detector: a recurrent autoencoder that sees the patient's own context, plus rhythm.

Score of a beat (higher = more abnormal), every term a robust z-score, z(x) = (x - location) / scale
(median and a MAD-based scale; see Calibration below):

    score = z(log reconstruction MSE) + distance_weight * z(log template distance)
            + rhythm_weight * max(0, z(prematurity)) + pause_weight * max(0, z(pause))

- reconstruction MSE: the recurrent autoencoder's error on the beat, given the record's template
  (median) beat and the beat's RR context (see ecg_rnn.model). With `adaptation` (ecg_rnn.adapt) the
  autoencoder is first fine-tuned on the recording's own typical beats, without labels;
- template distance: the beat's mean squared difference from the record's template beat;
- prematurity = -log(rr_prev / reference), reference = RR90^(1 - s) * RR_before^s with s =
  `rr_previous_share` in a steady slow stretch of sinus rhythm (the beat's cycle at least `rr_lean_min_s`
  long and within 15 % of the cycle before, its P wave correlating at least `rr_lean_min_p_similarity`
  with that of the record's slowest cycles; 0 and -1: every beat), else 0. RR90 = the 90th percentile
  of the RR intervals of the `rr_reference_beats` beats of the record around the beat (its slow,
  undisturbed cycles of the last few minutes: robust to frequent ectopy, where a local median is not,
  and following heart-rate changes, which one RR90 for the whole record does not), only those between
  two beats of the record's usual shape (within `rr_typical_mads` robust SDs of its median template
  distance: frequent ventricular beats' compensatory pauses would otherwise set RR90 and make every
  sinus cycle look premature); RR_before = the cycle just before the beat's own (an ectopic beat is
  early against it too; after a sudden rate change, a run of 1:1 conduction after block, or in
  respiratory sinus arrhythmia, the beats are not). Nothing leans by default (s = 0): leaning, even
  gated, also spared slow runs of atrial ectopy on DS2 (docs/evaluation/README.md);
- pause = log(rr_next_ratio): compensatory pause after the beat.
Rhythm terms only add evidence (clipped at 0): a late beat does not make a deformed beat normal; inside
atrial fibrillation (`in_af`) they add nothing, since a short RR there is the rhythm, not ectopy.
Where the signal was judged (`ecg-rnn score`), noise splits the per-record calibration: beats whose
window the quality stage finds likely noisy (p_noise > `noise_stratum_probability`, in the lead the beat
comes from, or in any window within `noise_stratum_spread_s` of the beat: noise comes in bursts, and the
windows between a burst's noisiest ones deform their beats as much while the quality model still calls
them clean) are z-scored against the record's other such beats, the rest against the rest. Noise that
does not make a whole window unreadable still deforms its beats; against the clean beats' spread every
one of them would look abnormal, against each other only the abnormal ones do. Beats cut at annotated
R-peaks have no p_noise (0).

Calibration: with `calibrate_per_record` (the default) the morphology terms are z-scored against the
recording's own beats (their median; `record_scale` "lower_half": the spread of the half of its beats
below the median, which abnormal beats, on the high side, do not widen), so a lead, recorder or patient
whose beats all reconstruct worse than MIT-BIH's is not flagged wholesale; the rhythm terms against
normal training beats. Threshold rule: `threshold_` is the `threshold_percentile`-th percentile
of the scores of held-out normal beats (records the autoencoder never trained on, scored exactly as a
new recording is), so about (100 - threshold_percentile) % of normal beats of unseen patients are
flagged. `percentile(scores)` is each score's rank among those held-out normal scores (0..100).

Every per-record quantity (template, local RR90, record calibration, adaptation) comes from all beats of the
record: the beats passed in, or `context=` beats (all beats of the same records) when the scored beats
are only part of their records.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import torch

from ecg_rnn import __version__
from ecg_rnn.adapt import AdaptConfig, adapt
from ecg_rnn.beats import BeatConfig, Beats
from ecg_rnn.errors import CheckpointError
from ecg_rnn.features import (DEFAULT_RECORD_SCALE, DEFAULT_RR_LEAN_MIN_P_SIMILARITY, DEFAULT_RR_LEAN_MIN_S,
                              DEFAULT_RR_PREVIOUS_SHARE, DEFAULT_RR_REFERENCE_BEATS, DEFAULT_RR_TYPICAL_MADS,
                              MORPHOLOGY_TERMS, MSE_EPS, NO_P_GATE, RHYTHM_TERMS, TERMS, ScoreWeights, beat_zscore, calibrate, check_record_scale, combine,
                              model_inputs, nearby_maximum, record_population, rhythm_terms, rr_reference,
                              template_distances, zscores)
from ecg_rnn.model import ModelConfig, RecurrentAutoencoder
from ecg_rnn.protocols import heldout_mask
from ecg_rnn.rhythm import pre_qrs_columns
from ecg_rnn.signal import SignalConfig
from ecg_rnn.train import (INFERENCE_BATCH, TrainConfig, fit_autoencoder, private_torch_state,
                           resolve_device)

FORMAT = "ecg-rnn-detector"
FORMAT_VERSION = 2  # 2: template-distance term, per-record calibration, patient adaptation
MAX_CHECKPOINT_BYTES = 64 << 20
COMPONENTS = TERMS
# The defaults were selected by 5-fold cross-validation by record inside MIT-BIH DS1 (ecg_rnn.selection;
# docs/evaluation/selection.md, whose selection.json a test keeps equal to these).
DEFAULT_MODEL_CONFIG = ModelConfig(hidden_size=32, latent_size=16, step_samples=6)
DEFAULT_TRAIN_CONFIG = TrainConfig()
DEFAULT_ADAPTATION = AdaptConfig(steps=10, lr=3e-3)
DEFAULT_THRESHOLD_PERCENTILE = 95.0
DEFAULT_RHYTHM_WEIGHT = 1.5
DEFAULT_PAUSE_WEIGHT = 0.3
DEFAULT_DISTANCE_WEIGHT = 2.0
DEFAULT_CALIBRATE_PER_RECORD = True
MIN_FIT_BEATS = 10
# selected on DS1 records with synthetic noise (docs/evaluation/noise/selection.md); 1: no noisy stratum
DEFAULT_NOISE_STRATUM_PROBABILITY = 0.3
DEFAULT_NOISE_STRATUM_SPREAD_S = 10.0
NOISY_STRATUM_SUFFIX = "~noisy"  # the calibration's name for a record's noisy beats

# An AF mask for the beats of whole records (True inside atrial fibrillation / flutter), as the rhythm
# stage gives it; fit() uses it to score held-out normal beats exactly as scoring will.
AfMask = Callable[[Beats], np.ndarray]


# ---------------------------------------------------------------------------------------------
# the detector


PARAMS = ("model", "training", "signal", "beats", "threshold_percentile", "rhythm_weight", "pause_weight",
          "distance_weight", "calibrate_per_record", "record_scale", "adaptation", "rr_reference_beats",
          "rr_previous_share", "rr_lean_min_s", "rr_lean_min_p_similarity", "rr_typical_mads",
          "noise_stratum_probability", "noise_stratum_spread_s")


@dataclass
class Analysis:
    """What one forward pass tells about each beat (one row per beat)."""

    score: np.ndarray  # anomaly score, higher = more abnormal
    components: dict[str, np.ndarray]  # calibrated z-score of each term (recon, distance, premature, pause)
    reconstruction: np.ndarray  # (n, window), in the units of beats.waves
    latent: np.ndarray  # (n, latent_size)


class RecurrentAEDetector:
    """scikit-learn / PyOD-style detector; see the module docstring for the score and threshold."""

    threshold_rule = ("threshold = the threshold_percentile-th percentile of the anomaly scores of held-out "
                      "normal beats (records not used to train the autoencoder, scored as a new recording is)")

    def __init__(self, model: ModelConfig = DEFAULT_MODEL_CONFIG, training: TrainConfig = DEFAULT_TRAIN_CONFIG,
                 signal: SignalConfig = SignalConfig(), beats: BeatConfig = BeatConfig(),
                 threshold_percentile: float = DEFAULT_THRESHOLD_PERCENTILE,
                 rhythm_weight: float = DEFAULT_RHYTHM_WEIGHT, pause_weight: float = DEFAULT_PAUSE_WEIGHT,
                 distance_weight: float = DEFAULT_DISTANCE_WEIGHT,
                 calibrate_per_record: bool = DEFAULT_CALIBRATE_PER_RECORD,
                 record_scale: str = DEFAULT_RECORD_SCALE,
                 adaptation: AdaptConfig = DEFAULT_ADAPTATION,
                 rr_reference_beats: int = DEFAULT_RR_REFERENCE_BEATS,
                 rr_previous_share: float = DEFAULT_RR_PREVIOUS_SHARE,
                 rr_lean_min_s: float = DEFAULT_RR_LEAN_MIN_S,
                 rr_lean_min_p_similarity: float = DEFAULT_RR_LEAN_MIN_P_SIMILARITY,
                 rr_typical_mads: float = DEFAULT_RR_TYPICAL_MADS,
                 noise_stratum_probability: float = DEFAULT_NOISE_STRATUM_PROBABILITY,
                 noise_stratum_spread_s: float = DEFAULT_NOISE_STRATUM_SPREAD_S):
        # stored as given (scikit-learn convention: get_params / clone); checked in fit and load
        self.model = model
        self.training = training
        self.signal = signal
        self.beats = beats
        self.threshold_percentile = threshold_percentile
        self.rhythm_weight = rhythm_weight
        self.pause_weight = pause_weight
        self.distance_weight = distance_weight
        self.calibrate_per_record = calibrate_per_record
        self.record_scale = record_scale
        self.adaptation = adaptation
        self.rr_reference_beats = rr_reference_beats
        self.rr_previous_share = rr_previous_share
        self.rr_lean_min_s = rr_lean_min_s
        self.rr_lean_min_p_similarity = rr_lean_min_p_similarity
        self.rr_typical_mads = rr_typical_mads
        self.noise_stratum_probability = noise_stratum_probability
        self.noise_stratum_spread_s = noise_stratum_spread_s

    def get_params(self, deep: bool = False) -> dict:
        return {name: getattr(self, name) for name in PARAMS}

    def set_params(self, **params) -> "RecurrentAEDetector":
        unknown = set(params) - set(PARAMS)
        if unknown:
            raise ValueError(f"unknown parameter(s) {', '.join(sorted(unknown))}; valid: {', '.join(PARAMS)}")
        for name, value in params.items():
            setattr(self, name, value)
        return self

    def _check_settings(self) -> None:
        """What fit and load refuse before any work: a beat window unlike the model's, an unknown scale, a
        negative RR90 window or typical-shape bound, a previous-cycle share or a noise probability outside 0..1."""
        pre, post = self.beats.window_samples(self.signal.fs)
        if pre + post != self.model.window:
            raise ValueError(f"the beat window is {pre + post} samples at {self.signal.fs:g} Hz but the model "
                             f"expects {self.model.window}")
        check_record_scale(self.record_scale)
        if int(self.rr_reference_beats) != self.rr_reference_beats or self.rr_reference_beats < 0:
            raise ValueError(f"rr_reference_beats must be a whole number of beats >= 0 (0: the whole record), "
                             f"not {self.rr_reference_beats!r}")
        if not self.rr_typical_mads >= 0.0:
            raise ValueError(f"rr_typical_mads must be >= 0 (0: RR90 over every interval), not {self.rr_typical_mads!r}")
        if not 0.0 <= self.rr_previous_share <= 1.0:
            raise ValueError(f"rr_previous_share must be within 0..1 (0: RR90 alone), not {self.rr_previous_share!r}")
        if not self.rr_lean_min_s >= 0.0:
            raise ValueError(f"rr_lean_min_s must be >= 0 seconds (0: every beat leans), not {self.rr_lean_min_s!r}")
        if not NO_P_GATE <= self.rr_lean_min_p_similarity <= 1.0:
            raise ValueError(f"rr_lean_min_p_similarity must be a correlation within -1..1 (-1: no P-wave gate), "
                             f"not {self.rr_lean_min_p_similarity!r}")
        if not 0.0 <= self.noise_stratum_probability <= 1.0:
            raise ValueError(f"noise_stratum_probability must be within 0..1 (1: no noisy stratum), "
                             f"not {self.noise_stratum_probability!r}")
        if not self.noise_stratum_spread_s >= 0.0:
            raise ValueError(f"noise_stratum_spread_s must be >= 0 seconds (0: the beat's own window), "
                             f"not {self.noise_stratum_spread_s!r}")

    def _inputs(self, beats: Beats, context: Beats | None) -> dict[str, np.ndarray]:
        return model_inputs(beats, self.model.window, per_beat_norm=self.model.input_norm == "beat",
                            with_template=self.model.context, context=context)

    def _rr_reference(self, beats: Beats, context: Beats | None = None,
                      distance: np.ndarray | None = None) -> np.ndarray:
        return rr_reference(beats, context, self.rr_reference_beats, self.rr_previous_share, self.rr_typical_mads,
                            distance, self.rr_lean_min_s, self.rr_lean_min_p_similarity,
                            pre_qrs_columns(self.beats.pre_s, self.signal.fs))

    @property
    def weights(self) -> ScoreWeights:
        return ScoreWeights(recon=1.0, distance=self.distance_weight, premature=self.rhythm_weight,
                            pause=self.pause_weight)

    # -- fitting --------------------------------------------------------------------------------

    def _split_validation(self, train: Beats) -> tuple[Beats, Beats]:
        is_val = heldout_mask(train, self.training.val_fraction, self.training.seed)
        return train.subset(~is_val), train.subset(is_val)

    def fit(self, train: Beats, validation: Beats | None = None, *, context: Beats | None = None,
            af_mask: AfMask | None = None, run_dir=None, resume: bool = False, progress: bool = False,
            description: str = "", log=None) -> "RecurrentAEDetector":
        """Train on the (normal) training beats; calibrate on held-out normal beats.

        validation: held-out normal beats; by default `val_fraction` of the training records are held out.
        context: all beats (any class, labels unused) of the training records, so that templates, RR90 and
        the per-record calibration are computed exactly as at scoring time; by default the training beats.
        af_mask: the AF mask scoring will use (a function of whole records' beats), so that the held-out
        normal scores, and so the threshold, are those scoring gives.
        """
        if len(train) < MIN_FIT_BEATS:
            raise ValueError(f"need at least {MIN_FIT_BEATS} training beats, got {len(train)}")
        train = _normal_beats(train)
        fit_part, held_out = (train, validation) if validation is not None else self._split_validation(train)
        held_out = _normal_beats(held_out)
        if len(held_out) < MIN_FIT_BEATS:
            raise ValueError(f"need at least {MIN_FIT_BEATS} held-out normal beats, got {len(held_out)}")
        self._check_settings()
        with private_torch_state(self.training.seed, self.training.threads):  # the initial weights
            self.model_ = RecurrentAutoencoder(self.model)
        self.history_ = fit_autoencoder(self.model_, self._inputs(fit_part, context), self._inputs(held_out, context),
                                        self.training, run_dir=run_dir, resume=resume, progress=progress, log=log)
        self.recalibrate(fit_part, held_out, context, af_mask)
        self.training_data_ = {
            "description": description or "normal beats",
            "n_train_beats": int(len(fit_part)), "n_heldout_beats": int(len(held_out)),
            "train_records": sorted(map(str, np.unique(fit_part.record))),
            "heldout_records": sorted(map(str, np.unique(held_out.record))),
        }
        return self

    def recalibrate(self, fit_part: Beats, held_out: Beats, context: Beats | None = None,
                    af_mask: AfMask | None = None) -> "RecurrentAEDetector":
        """Calibration and threshold for the current score settings (fit does this; an ablation that
        changes a setting of a trained detector calls it again): morphology terms on the held-out normals
        (the autoencoder has seen the others), rhythm terms on every normal beat (no learning involved:
        more patients); then the held-out normals' scores and the threshold."""
        population, rows = record_population(held_out, context)
        raw = self.raw_terms(population)[0]
        normals = Beats.concat([fit_part, held_out])
        premature, pause = rhythm_terms(normals.rr, self._rr_reference(normals, context))
        self.calibration_ = {**calibrate({k: raw[k][rows] for k in MORPHOLOGY_TERMS}, MORPHOLOGY_TERMS),
                             **calibrate({"premature": premature, "pause": pause}, RHYTHM_TERMS)}
        in_af = af_mask(population)[rows] if af_mask is not None else None
        scores = self._score(raw, population.record, rows, in_af)[0]
        self.normal_scores_ = np.sort(scores)
        self.threshold_ = float(np.percentile(scores, self.threshold_percentile))
        return self

    # -- scoring --------------------------------------------------------------------------------

    def _placed_model(self) -> RecurrentAutoencoder:
        """The autoencoder on the configured device (`training.device`: auto = CUDA when available). Moved
        only when it is elsewhere: moving re-initialises a recurrent layer's flat weights, which other
        threads scoring with the same detector may be reading."""
        target, current = resolve_device(self.training.device), next(self.model_.parameters()).device
        if current.type != target.type or (target.index is not None and current.index != target.index):
            self.model_.to(target)
        return self.model_

    def _check_fitted(self):
        if getattr(self, "model_", None) is None or not getattr(self, "calibration_", None):
            raise RuntimeError("this detector is not fitted; call fit() or load()")

    @torch.no_grad()
    def _forward(self, model: RecurrentAutoencoder, inputs: dict[str, np.ndarray],
                 out: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """One pass of the autoencoder over every beat: (squared error per beat, reconstruction, latent code),
        written into `out` when given (float32 arrays of those shapes), else into new arrays.

        It runs on the detector's configured torch threads (`training.threads`, 1 by default): a small
        recurrent net gains nothing from more, OpenMP threads that spin while another process holds a core
        make the pass several times slower, and one thread gives the same scores in every process."""
        model.eval()
        device = next(model.parameters()).device
        wave, template, rr = (torch.as_tensor(inputs[k], dtype=torch.float32, device=device)
                              for k in ("wave", "template", "rr"))
        n = len(wave)
        mse, recon, codes = out if out is not None else (
            np.empty(n, np.float32), np.empty((n, self.model.window), np.float32),
            np.empty((n, self.model.latent_size), np.float32))
        with private_torch_state(self.training.seed, self.training.threads):
            for i in range(0, n, INFERENCE_BATCH):
                part = slice(i, i + INFERENCE_BATCH)
                r, z = model(wave[part], template[part], rr[part])
                mse[part] = ((r - wave[part]) ** 2).mean(dim=1).cpu().numpy()
                recon[part] = r.cpu().numpy()
                codes[part] = z.cpu().numpy()
        return mse, recon, codes

    def raw_terms(self, population: Beats) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
        """Every term (TERMS) of every beat of whole records, before calibration; and the reconstructions
        and latent codes. With adaptation, each record is scored by its own fine-tuned copy of the model."""
        inputs = self._inputs(population, population)
        distance = template_distances(population)
        model = self._placed_model()
        if self.adaptation.steps == 0:
            mse, recon, codes = self._forward(model, inputs)
        else:
            mse = np.zeros(len(population), np.float32)
            recon = np.zeros((len(population), self.model.window), np.float32)
            codes = np.zeros((len(population), self.model.latent_size), np.float32)
            for rows in _record_rows(population.record):
                part = {k: v[rows] for k, v in inputs.items()}
                tuned = adapt(model, part, distance[rows], self.adaptation)
                if isinstance(rows, slice):  # views: the pass writes into the arrays themselves
                    self._forward(tuned, part, out=(mse[rows], recon[rows], codes[rows]))
                else:
                    mse[rows], recon[rows], codes[rows] = self._forward(tuned, part)
        premature, pause = rhythm_terms(population.rr, self._rr_reference(population, distance=distance))
        raw = {"recon": np.log(mse.astype(np.float64) + MSE_EPS), "distance": distance,
               "premature": premature, "pause": pause}
        return raw, recon, codes

    def _score(self, raw: dict[str, np.ndarray], record: np.ndarray, rows: np.ndarray,
               in_af: np.ndarray | None) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        z = zscores(raw, record, self.calibration_, self.calibrate_per_record, self.record_scale)
        z = {k: v[rows] for k, v in z.items()}
        return combine(z, self.weights, in_af), z

    def _calibration_groups(self, population: Beats, rows: np.ndarray,
                            noise_probability: np.ndarray | None) -> np.ndarray:
        """The group each beat's morphology terms are calibrated in: its record, or its record's noisy
        stratum (NOISY_STRATUM_SUFFIX) where the noise probability of its window, or of any beat within
        noise_stratum_spread_s of it, is high."""
        record = population.record.astype(str)
        if noise_probability is None:
            return record
        probability = np.zeros(len(population))
        probability[rows] = noise_probability
        probability = nearby_maximum(probability, population.time_s, population.record, self.noise_stratum_spread_s)
        return np.where(probability > self.noise_stratum_probability, np.char.add(record, NOISY_STRATUM_SUFFIX),
                        record)

    def analyse(self, beats: Beats, context: Beats | None = None, in_af: np.ndarray | None = None,
                noise_probability: np.ndarray | None = None) -> "Analysis":
        """Everything the model says about each beat, from one forward pass over the beats' records:
        anomaly score, the calibrated z-score of every term, the reconstruction (in the units of
        beats.waves) and the latent code. context: all beats of the same records when `beats` is only
        part of its records. in_af: True for beats inside atrial fibrillation / flutter (the rhythm
        stage's mask, one per beat): their rhythm terms add nothing, their shape decides.
        noise_probability: the quality stage's probability of noise around each beat, which splits the
        per-record calibration (see the module docstring); None: the signal was not judged."""
        self._check_fitted()
        for name, given in (("in_af", in_af), ("noise_probability", noise_probability)):
            if given is not None and np.shape(given) != (len(beats),):
                raise ValueError(f"{name} has shape {np.shape(given)}; it needs one value per beat ({len(beats)})")
        population, rows = record_population(beats, context)
        raw, recon, codes = self.raw_terms(population)
        score, z = self._score(raw, self._calibration_groups(population, rows, noise_probability), rows, in_af)
        recon = recon[rows]
        if self.model.input_norm == "beat":
            _, mean, std = beat_zscore(np.asarray(beats.waves, dtype=np.float32))
            recon = recon * std + mean
        return Analysis(score=score, components=z, reconstruction=recon.astype(np.float32, copy=False),
                        latent=codes[rows].astype(np.float32, copy=False))

    def score_components(self, beats: Beats, context: Beats | None = None,
                         in_af: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """The calibrated z-score of every term (recon, distance, premature, pause) for each beat."""
        return self.analyse(beats, context, in_af).components

    def score_samples(self, beats: Beats, context: Beats | None = None, in_af: np.ndarray | None = None) -> np.ndarray:
        """Anomaly score per beat, higher = more abnormal."""
        return self.analyse(beats, context, in_af).score

    decision_function = score_samples

    def percentile(self, scores: np.ndarray) -> np.ndarray:
        """Rank of each score among the held-out normal scores, 0..100."""
        ref = self.normal_scores_
        return 100.0 * np.searchsorted(ref, np.asarray(scores, dtype=np.float64), side="right") / max(len(ref), 1)

    def predict(self, beats: Beats, context: Beats | None = None, in_af: np.ndarray | None = None) -> np.ndarray:
        return (self.score_samples(beats, context, in_af) > self.threshold_).astype(int)

    def reconstruct(self, beats: Beats, context: Beats | None = None) -> np.ndarray:
        """The autoencoder's reconstruction of each beat, in the units of beats.waves."""
        return self.analyse(beats, context).reconstruction

    def embed(self, beats: Beats, context: Beats | None = None) -> np.ndarray:
        return self.analyse(beats, context).latent

    # -- persistence ----------------------------------------------------------------------------

    def _metadata(self) -> dict[str, str]:
        return {
            "format": FORMAT, "format_version": str(FORMAT_VERSION), "package_version": __version__,
            "model_config": json.dumps(self.model.to_dict(), sort_keys=True),
            "train_config": json.dumps(self.training.to_dict(), sort_keys=True),
            "signal_config": json.dumps(_asdict(self.signal), sort_keys=True),
            "beat_config": json.dumps(_asdict(self.beats), sort_keys=True),
            "detector": json.dumps({"threshold": self.threshold_, "threshold_percentile": self.threshold_percentile,
                                    "threshold_rule": self.threshold_rule, "rhythm_weight": self.rhythm_weight,
                                    "pause_weight": self.pause_weight, "distance_weight": self.distance_weight,
                                    "calibrate_per_record": self.calibrate_per_record,
                                    "record_scale": self.record_scale,
                                    "rr_reference_beats": self.rr_reference_beats,
                                    "rr_previous_share": self.rr_previous_share,
                                    "rr_lean_min_s": self.rr_lean_min_s,
                                    "rr_lean_min_p_similarity": self.rr_lean_min_p_similarity,
                                    "rr_typical_mads": self.rr_typical_mads,
                                    "noise_stratum_probability": self.noise_stratum_probability,
                                    "noise_stratum_spread_s": self.noise_stratum_spread_s,
                                    "adaptation": self.adaptation.to_dict(),
                                    "calibration": self.calibration_, "components": list(COMPONENTS)},
                                   sort_keys=True),
            "training_data": json.dumps(self.training_data_, sort_keys=True),
            "history": json.dumps(self.history_),
        }

    def save(self, path) -> None:
        from safetensors.torch import save_file

        self._check_fitted()
        tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in self.model_.state_dict().items()}
        tensors["normal_scores"] = torch.as_tensor(self.normal_scores_, dtype=torch.float64)
        meta = self._metadata()
        meta["digest"] = _digest(meta, tensors)
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        save_file(tensors, str(tmp), metadata=meta)
        tmp.chmod(0o644)
        tmp.replace(path)

    @classmethod
    def load(cls, path) -> "RecurrentAEDetector":
        path = Path(path)
        where = path.name
        if not path.is_file():
            raise CheckpointError(f"{where}: model file not found")
        size = path.stat().st_size
        if size > MAX_CHECKPOINT_BYTES:
            raise CheckpointError(f"{where}: {size >> 20} MiB is too large for an ecg-rnn model")
        data = path.read_bytes()
        meta, tensors = _parse_safetensors(data, where)
        if meta.get("format") != FORMAT:
            raise CheckpointError(f"{where}: a safetensors file but not an ecg-rnn detector "
                                  f"(format {meta.get('format')!r})")
        if meta.get("format_version") != str(FORMAT_VERSION):
            raise CheckpointError(f"{where}: detector format version {meta.get('format_version')!r}; this "
                                  f"ecg-rnn reads version {FORMAT_VERSION}; retrain or upgrade")
        if meta.get("digest") != _digest({k: v for k, v in meta.items() if k != "digest"}, tensors):
            raise CheckpointError(f"{where}: content does not match its digest; the file was modified "
                                  "or corrupted")
        try:
            det_meta = json.loads(meta["detector"])
            det = cls(model=ModelConfig(**json.loads(meta["model_config"])),
                      training=TrainConfig(**json.loads(meta["train_config"])),
                      signal=SignalConfig(**json.loads(meta["signal_config"])),
                      beats=BeatConfig(**json.loads(meta["beat_config"])),
                      threshold_percentile=float(det_meta["threshold_percentile"]),
                      rhythm_weight=float(det_meta["rhythm_weight"]),
                      pause_weight=float(det_meta["pause_weight"]),
                      distance_weight=float(det_meta["distance_weight"]),
                      calibrate_per_record=bool(det_meta["calibrate_per_record"]),
                      adaptation=AdaptConfig(**det_meta["adaptation"]),
                      # detectors saved before these choices existed took the scale from all beats,
                      # RR90 from the whole record, and no noisy stratum (then one without spread)
                      record_scale=str(det_meta.get("record_scale", "all_beats")),
                      rr_reference_beats=int(det_meta.get("rr_reference_beats", 0)),
                      rr_previous_share=float(det_meta.get("rr_previous_share", 0.0)),
                      rr_lean_min_s=float(det_meta.get("rr_lean_min_s", 0.0)),
                      rr_lean_min_p_similarity=float(det_meta.get("rr_lean_min_p_similarity", NO_P_GATE)),
                      rr_typical_mads=float(det_meta.get("rr_typical_mads", 0.0)),
                      noise_stratum_probability=float(det_meta.get("noise_stratum_probability", 1.0)),
                      noise_stratum_spread_s=float(det_meta.get("noise_stratum_spread_s", 0.0)))
            det._check_settings()
            model = RecurrentAutoencoder(det.model)
            state = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
            model.load_state_dict(state, strict=True)
            det.calibration_ = {k: [float(a), float(b)] for k, (a, b) in det_meta["calibration"].items()}
            if set(det.calibration_) != set(COMPONENTS):
                raise ValueError("calibration terms differ from this version's")
            det.threshold_ = float(det_meta["threshold"])
            det.normal_scores_ = tensors["normal_scores"].numpy().astype(np.float64)
            det.training_data_ = json.loads(meta.get("training_data", "{}"))
            det.history_ = json.loads(meta.get("history", "[]"))
        except CheckpointError:
            raise
        except Exception as exc:
            msg = str(exc).splitlines()[0][:160] if str(exc) else ""
            raise CheckpointError(f"{where}: incompatible ecg-rnn detector ({type(exc).__name__}: {msg})") from None
        model.eval()
        det.model_ = model
        det.package_version_ = meta.get("package_version", "")
        return det

    def describe(self) -> dict:
        """Everything the checkpoint says about itself (for sidecars and the dashboard)."""
        meta = self._metadata()
        return {k: (json.loads(v) if k not in ("format", "format_version", "package_version") else v)
                for k, v in meta.items() if k != "history"}


def _record_rows(record: np.ndarray) -> Iterator[slice | np.ndarray]:
    """The rows of each record: a slice where they are contiguous (the usual case: then the model
    inputs of a long recording are views, not copies), else their indices."""
    for name in np.unique(record):
        rows = np.flatnonzero(record == name)
        contiguous = rows[-1] - rows[0] + 1 == len(rows)
        yield slice(int(rows[0]), int(rows[-1]) + 1) if contiguous else rows


def _normal_beats(beats: Beats) -> Beats:
    """The normal (or unlabelled) beats: training and calibration never see a labelled abnormal beat."""
    if not beats.labelled.any():
        return beats
    return beats.subset((beats.aami == "N") | (beats.aami == ""))


def _asdict(obj) -> dict:
    return {f.name: getattr(obj, f.name) for f in fields(obj)}


def _digest(meta: dict[str, str], tensors: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256(json.dumps(meta, sort_keys=True).encode())
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}".encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()


def _parse_safetensors(data: bytes, where: str) -> tuple[dict[str, str], dict[str, torch.Tensor]]:
    """Metadata and tensors of a safetensors file; anything else is refused without being executed."""
    from safetensors.torch import load as load_bytes

    if len(data) < 8:
        raise CheckpointError(f"{where}: too short to be an ecg-rnn model (a .safetensors file)")
    n = int.from_bytes(data[:8], "little")
    if n <= 1 or 8 + n > len(data) or data[8:9] != b"{":
        raise CheckpointError(f"{where}: not a safetensors file (ecg-rnn models are .safetensors; pickle "
                              "and other formats are never loaded)")
    try:
        header = json.loads(data[8:8 + n].decode("utf-8"))
        meta = header.get("__metadata__") or {}
        if not isinstance(meta, dict):
            raise ValueError("bad metadata")
        tensors = load_bytes(data)
    except Exception as exc:
        raise CheckpointError(f"{where}: corrupt safetensors file ({type(exc).__name__})") from None
    return {str(k): str(v) for k, v in meta.items()}, tensors
