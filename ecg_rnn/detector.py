"""The anomaly detector: a recurrent autoencoder that sees the patient's own context, plus rhythm.

Score of a beat (higher = more abnormal); every term is calibrated on *held-out* normal beats (records
the autoencoder never trained on) as a robust z-score, z(x) = (x - median) / (1.4826 * MAD):

    score = z(log reconstruction MSE)
            + rhythm_weight * max(0, z(prematurity)) + pause_weight * max(0, z(pause))

- reconstruction MSE: the recurrent autoencoder's error on the beat, given the record's template
  (median) beat and the beat's RR context (see ecg_rnn.model);
- prematurity = -log(rr_prev / RR90), RR90 = the 90th percentile of the record's RR intervals (its
  slow, undisturbed cycles; robust to frequent ectopy, where a local median is not);
- pause = log(rr_next_ratio): compensatory pause after the beat (weight 0 by default).
Rhythm terms only add evidence (clipped at 0): a late beat does not make a deformed beat normal.

Threshold rule: `threshold_` is the `threshold_percentile`-th percentile of the held-out normal scores,
so about (100 - threshold_percentile) % of normal beats of unseen patients are flagged.
`percentile(scores)` is each score's rank among those held-out normal scores (0..100).

Templates and RR90 are computed per record (`beats.record`) from the beats passed in, or from
`context=` beats (all beats of the same records) when the scored beats are only part of their records.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import fields
from pathlib import Path

import numpy as np
import torch

from ecg_rnn import __version__
from ecg_rnn.beats import BeatConfig, Beats
from ecg_rnn.errors import CheckpointError
from ecg_rnn.model import ModelConfig, RecurrentAutoencoder
from ecg_rnn.signal import SignalConfig
from ecg_rnn.train import TrainConfig, batch_errors, fit_autoencoder, resolve_device, seed_everything

REPO_ROOT = Path(__file__).resolve().parents[1]
MODELS_DIR = REPO_ROOT / "models"
FORMAT = "ecg-rnn-detector"
FORMAT_VERSION = 1
MAX_CHECKPOINT_BYTES = 64 << 20
COMPONENTS = ("recon", "premature", "pause")
DEFAULT_MODEL_CONFIG = ModelConfig()
DEFAULT_TRAIN_CONFIG = TrainConfig()
DEFAULT_THRESHOLD_PERCENTILE = 95.0
DEFAULT_RHYTHM_WEIGHT = 0.5
DEFAULT_PAUSE_WEIGHT = 0.1
RR_REFERENCE_PERCENTILE = 90.0


def default_model_path() -> Path:
    return MODELS_DIR / "default.safetensors"


def shipped_models() -> dict[str, Path]:
    names = ("default", "lstm", "gru", "bilstm")
    return {n: MODELS_DIR / f"{n}.safetensors" for n in names if (MODELS_DIR / f"{n}.safetensors").is_file()}


# ---------------------------------------------------------------------------------------------
# model inputs


def record_templates(beats: Beats) -> dict[str, np.ndarray]:
    """The median beat of each record: robust to the abnormal minority."""
    out = {}
    for name in np.unique(beats.record):
        out[str(name)] = np.median(beats.waves[beats.record == name], axis=0).astype(np.float32)
    return out


def rr_inputs(rr: np.ndarray) -> np.ndarray:
    """log prev ratio, log next ratio, log local RR relative to 0.8 s; clipped."""
    rr = np.asarray(rr, dtype=np.float64)
    x = np.stack([np.log(np.maximum(rr[:, 3], 1e-3)), np.log(np.maximum(rr[:, 4], 1e-3)),
                  np.log(np.maximum(rr[:, 2], 1e-3) / 0.8)], axis=1)
    return np.clip(x, -3, 3).astype(np.float32)


def record_rr_reference(beats: Beats) -> dict[str, float]:
    """RR90 of each record: the 90th percentile of its previous-RR intervals, in seconds."""
    return {str(name): float(np.percentile(beats.rr[beats.record == name, 0], RR_REFERENCE_PERCENTILE))
            for name in np.unique(beats.record)}


def rhythm_terms(rr: np.ndarray, rr_ref: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """prematurity -log(rr_prev / RR90) and pause log(rr_next_ratio)."""
    rr = np.asarray(rr, dtype=np.float64)
    premature = -np.log(np.maximum(rr[:, 0], 1e-3) / np.maximum(rr_ref, 1e-3))
    pause = np.log(np.maximum(rr[:, 4], 1e-3))
    return np.clip(premature, -3, 3), np.clip(pause, -3, 3)


def _beat_zscore(waves: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    mean = waves.mean(axis=1, keepdims=True)
    std = np.maximum(waves.std(axis=1, keepdims=True), 1e-6)
    return ((waves - mean) / std).astype(np.float32), mean, std


def model_inputs(beats: Beats, config: ModelConfig, context: Beats | None = None) -> dict[str, np.ndarray]:
    waves = np.asarray(beats.waves, dtype=np.float32)
    if waves.ndim != 2 or waves.shape[1] != config.window:
        raise ValueError(f"beats have windows of {waves.shape[-1]} samples; the model expects {config.window}")
    if config.input_norm == "beat":
        waves = _beat_zscore(waves)[0]
    template = np.zeros_like(waves)
    rr_ref = np.zeros(len(beats))
    source = context if context is not None else beats
    missing = set(map(str, np.unique(beats.record))) - set(map(str, np.unique(source.record)))
    if missing:
        source = Beats.concat([source, beats.subset(np.isin(beats.record, list(missing)))])
    if config.context:
        for name, t in record_templates(source).items():
            template[beats.record == name] = t
    for name, ref in record_rr_reference(source).items():
        rr_ref[beats.record == name] = ref
    return {"wave": waves, "template": template, "rr": rr_inputs(beats.rr), "rr_ref": rr_ref}


def _robust(x: np.ndarray) -> tuple[float, float]:
    med = float(np.median(x))
    mad = float(np.median(np.abs(x - med))) * 1.4826
    return med, max(mad, 1e-6)


# ---------------------------------------------------------------------------------------------
# the detector


class RecurrentAEDetector:
    """scikit-learn / PyOD-style detector; see the module docstring for the score and threshold."""

    threshold_rule = ("threshold = the threshold_percentile-th percentile of the anomaly scores of held-out "
                      "normal beats (records not used to train the autoencoder)")

    def __init__(self, model: ModelConfig = DEFAULT_MODEL_CONFIG, training: TrainConfig = DEFAULT_TRAIN_CONFIG,
                 signal: SignalConfig = SignalConfig(), beats: BeatConfig = BeatConfig(),
                 threshold_percentile: float = DEFAULT_THRESHOLD_PERCENTILE,
                 rhythm_weight: float = DEFAULT_RHYTHM_WEIGHT, pause_weight: float = DEFAULT_PAUSE_WEIGHT):
        self.model_config = model
        self.train_config = training
        self.signal_config = signal
        self.beat_config = beats
        self.threshold_percentile = float(threshold_percentile)
        self.rhythm_weight = float(rhythm_weight)
        self.pause_weight = float(pause_weight)
        pre, post = beats.window_samples(signal.fs)
        if pre + post != model.window:
            raise ValueError(f"the beat window is {pre + post} samples at {signal.fs:g} Hz but the model "
                             f"expects {model.window}")
        self.model_: RecurrentAutoencoder | None = None
        self.calibration_: dict[str, list[float]] = {}
        self.threshold_: float = math.nan
        self.normal_scores_: np.ndarray = np.zeros(0)
        self.labels_: np.ndarray = np.zeros(0, dtype=int)
        self.decision_scores_: np.ndarray = np.zeros(0)
        self.history_: list[dict] = []
        self.training_data_: dict = {}

    # -- fitting --------------------------------------------------------------------------------

    def _split_validation(self, train: Beats) -> tuple[Beats, Beats]:
        rng = np.random.default_rng(self.train_config.seed)
        records = np.unique(train.record)
        if len(records) >= 3:
            n_val = max(1, int(round(self.train_config.val_fraction * len(records))))
            val_records = rng.permutation(records)[:n_val]
            is_val = np.isin(train.record, val_records)
        else:  # too few patients: hold out beats instead
            is_val = rng.random(len(train)) < self.train_config.val_fraction
        return train.subset(~is_val), train.subset(is_val)

    def fit(self, train: Beats, validation: Beats | None = None, *, context: Beats | None = None,
            run_dir=None, resume: bool = False, progress: bool = False, description: str = "",
            log=None) -> "RecurrentAEDetector":
        """Train on the (normal) training beats; calibrate on held-out normal beats.

        validation: held-out normal beats; by default `val_fraction` of the training records are held out.
        context: all beats (any class, labels unused) of the training records, so that templates and RR90
        are computed exactly as at scoring time; by default the training beats themselves.
        """
        if len(train) < 10:
            raise ValueError(f"need at least 10 training beats, got {len(train)}")
        if train.labelled.any():
            normal = (train.aami == "N") | (train.aami == "")
            train = train.subset(normal)
        fit_part, held_out = (train, validation) if validation is not None else self._split_validation(train)
        if len(held_out) and held_out.labelled.any():
            held_out = held_out.subset((held_out.aami == "N") | (held_out.aami == ""))
        if len(held_out) < 10:
            raise ValueError(f"need at least 10 held-out normal beats, got {len(held_out)}")
        seed_everything(self.train_config.seed)
        self.model_ = RecurrentAutoencoder(self.model_config)
        train_in = model_inputs(fit_part, self.model_config, context)
        val_in = model_inputs(held_out, self.model_config, context)
        self.history_ = fit_autoencoder(self.model_, train_in, val_in, self.train_config, run_dir=run_dir,
                                        resume=resume, progress=progress, log=log)
        # calibrate every score term on the held-out normals
        comps = self._components(held_out, val_in)
        # the reconstruction term is calibrated on the held-out normals only (the autoencoder has seen the
        # others); the rhythm terms involve no learning, so all normal beats calibrate them (more patients)
        premature, pause = rhythm_terms(np.concatenate([fit_part.rr, held_out.rr]),
                                        np.concatenate([train_in["rr_ref"], val_in["rr_ref"]]))
        self.calibration_ = {"recon": list(_robust(comps["recon"])), "premature": list(_robust(premature)),
                             "pause": list(_robust(pause))}
        scores = self._combine(comps)
        self.normal_scores_ = np.sort(scores)
        self.threshold_ = float(np.percentile(scores, self.threshold_percentile))
        self.decision_scores_ = self.score_samples(fit_part, context)
        self.labels_ = (self.decision_scores_ > self.threshold_).astype(int)
        self.training_data_ = {
            "description": description or "normal beats",
            "n_train_beats": int(len(fit_part)), "n_heldout_beats": int(len(held_out)),
            "train_records": sorted(map(str, np.unique(fit_part.record))),
            "heldout_records": sorted(map(str, np.unique(held_out.record))),
        }
        return self

    # -- scoring --------------------------------------------------------------------------------

    def _placed_model(self) -> RecurrentAutoencoder:
        """The autoencoder on the GPU when CUDA is available (cuDNN RNNs), else on the CPU."""
        return self.model_.to(resolve_device("auto"))

    def _check_fitted(self):
        if self.model_ is None or not self.calibration_:
            raise RuntimeError("this detector is not fitted; call fit() or load()")

    def _components(self, beats: Beats, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        mse = batch_errors(self._placed_model(), inputs).astype(np.float64)
        premature, pause = rhythm_terms(beats.rr, inputs["rr_ref"])
        return {"recon": np.log(mse + 1e-4), "premature": premature, "pause": pause}

    def _combine(self, comps: dict[str, np.ndarray]) -> np.ndarray:
        z = {k: (comps[k] - self.calibration_[k][0]) / self.calibration_[k][1] for k in COMPONENTS}
        return (z["recon"] + self.rhythm_weight * np.maximum(z["premature"], 0.0)
                + self.pause_weight * np.maximum(z["pause"], 0.0))

    def score_components(self, beats: Beats, context: Beats | None = None) -> dict[str, np.ndarray]:
        """The calibrated z-score of every term (recon, premature, pause) for each beat."""
        self._check_fitted()
        comps = self._components(beats, model_inputs(beats, self.model_config, context))
        return {k: (comps[k] - self.calibration_[k][0]) / self.calibration_[k][1] for k in COMPONENTS}

    def score_samples(self, beats: Beats, context: Beats | None = None) -> np.ndarray:
        """Anomaly score per beat, higher = more abnormal. context: all beats of the same records
        (templates come from it) when `beats` is only part of its records."""
        self._check_fitted()
        if len(beats) == 0:
            return np.zeros(0)
        comps = self._components(beats, model_inputs(beats, self.model_config, context))
        return self._combine(comps)

    decision_function = score_samples

    def percentile(self, scores: np.ndarray) -> np.ndarray:
        """Rank of each score among the held-out normal scores, 0..100."""
        ref = self.normal_scores_
        return 100.0 * np.searchsorted(ref, np.asarray(scores, dtype=np.float64), side="right") / max(len(ref), 1)

    def predict(self, beats: Beats, context: Beats | None = None) -> np.ndarray:
        return (self.score_samples(beats, context) > self.threshold_).astype(int)

    @torch.no_grad()
    def _run(self, beats: Beats, context: Beats | None):
        self._check_fitted()
        inputs = model_inputs(beats, self.model_config, context)
        model = self._placed_model()
        device = next(model.parameters()).device
        t = [torch.as_tensor(inputs[k], device=device) for k in ("wave", "template", "rr")]
        model.eval()
        recon, z = [], []
        for i in range(0, len(beats), 2048):
            r, code = model(*(x[i:i + 2048] for x in t))
            recon.append(r.cpu().numpy())
            z.append(code.cpu().numpy())
        return np.concatenate(recon), np.concatenate(z)

    def reconstruct(self, beats: Beats, context: Beats | None = None) -> np.ndarray:
        """The autoencoder's reconstruction of each beat, in the units of beats.waves."""
        if len(beats) == 0:
            return np.zeros((0, self.model_config.window), dtype=np.float32)
        recon = self._run(beats, context)[0]
        if self.model_config.input_norm == "beat":
            _, mean, std = _beat_zscore(np.asarray(beats.waves, dtype=np.float32))
            recon = recon * std + mean
        return recon.astype(np.float32)

    def embed(self, beats: Beats, context: Beats | None = None) -> np.ndarray:
        if len(beats) == 0:
            return np.zeros((0, self.model_config.latent_size), dtype=np.float32)
        return self._run(beats, context)[1].astype(np.float32)

    # -- persistence ----------------------------------------------------------------------------

    def _metadata(self) -> dict[str, str]:
        return {
            "format": FORMAT, "format_version": str(FORMAT_VERSION), "package_version": __version__,
            "model_config": json.dumps(self.model_config.to_dict(), sort_keys=True),
            "train_config": json.dumps(self.train_config.to_dict(), sort_keys=True),
            "signal_config": json.dumps(_asdict(self.signal_config), sort_keys=True),
            "beat_config": json.dumps(_asdict(self.beat_config), sort_keys=True),
            "detector": json.dumps({"threshold": self.threshold_, "threshold_percentile": self.threshold_percentile,
                                    "threshold_rule": self.threshold_rule, "rhythm_weight": self.rhythm_weight,
                                    "pause_weight": self.pause_weight,
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
                      pause_weight=float(det_meta["pause_weight"]))
            model = RecurrentAutoencoder(det.model_config)
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
