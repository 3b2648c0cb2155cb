"""Experiments: the `ecg-rnn train` pipeline, the protocol comparisons and ECG5000.

Every comparison fits every method on the same training beats and scores it on the same test beats in
the same run (see docs/evaluation/). The training loop itself is ecg_rnn.train; the metrics
ecg_rnn.metrics; tables, plots and model cards ecg_rnn.reports.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from sklearn.decomposition import PCA
from sklearn.metrics import average_precision_score, roc_auc_score

from ecg_rnn import distributed, paths
from ecg_rnn.adapt import AdaptConfig
from ecg_rnn.baselines import PCA_COMPONENTS, FeatureBaseline, TemplateRRBaseline, plain_lstm_config
from ecg_rnn.beats import Beats, record_af_episodes, record_af_mask
from ecg_rnn.detector import DEFAULT_MODEL_CONFIG, DEFAULT_TRAIN_CONFIG, AfMask, RecurrentAEDetector
from ecg_rnn.errors import DataNotFoundError
from ecg_rnn.features import RECORD_SCALE_LABELS, record_population, robust_location_scale
from ecg_rnn.metrics import aggregate, evaluate_detector
from ecg_rnn.model import ModelConfig, RecurrentAutoencoder
from ecg_rnn.protocols import ALL_RECORDS, DS1, build_beat_set, inter_patient, locate_mitdb, protocol_splits
from ecg_rnn.reports import write_model_card, write_plots
from ecg_rnn.train import TrainConfig, batch_errors, fit_autoencoder, private_torch_state

AF_RHYTHMS = ("(AFIB", "(AFL")  # MIT-BIH rhythm annotations of atrial fibrillation and flutter
AF_MASKS = ("detected", "reference", "none")
TRAIN_TIME_BUDGET_S = 900.0  # `ecg-rnn train` stops after the epoch that passes this (make train < 15 min)
COVARIANCE_RIDGE = 1e-6  # keeps the latent codes' covariance invertible
LOG_EPS = 1e-6


def _say(msg: str, progress: bool = True) -> None:
    if progress:
        print(msg, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------
# atrial fibrillation masks: the detector judges beats inside AF by their shape alone


def detected_af_mask(beats: Beats) -> np.ndarray:
    """True inside the AF episodes the rhythm stage finds in each record (beats of whole records, cut
    with the default signal and beat configs, those of every shipped detector): what `ecg-rnn score`
    feeds such a detector."""
    return record_af_mask(beats, record_af_episodes(beats))


def reference_af_mask(beats: Beats, folder: Path) -> np.ndarray:
    """True inside the reference (AFIB / (AFL rhythm episodes of MIT-BIH's annotation files."""
    import wfdb

    mask = np.zeros(len(beats), dtype=bool)
    for name in np.unique(beats.record):
        rows = np.flatnonzero(beats.record == name)
        ann = wfdb.rdann(str(Path(folder) / str(name)), "atr")
        changes = [(s, aux.strip("\x00").strip()) for s, sym, aux in zip(ann.sample, ann.symbol, ann.aux_note)
                   if sym == "+" and aux]
        if changes:
            starts = np.array([s for s, _ in changes])
            rhythm = np.array([r for _, r in changes])
            current = np.searchsorted(starts, beats.sample[rows], side="right") - 1
            mask[rows] = (current >= 0) & np.isin(rhythm[np.maximum(current, 0)], AF_RHYTHMS)
    return mask


def af_mask_function(kind: str, folder: Path | None = None) -> AfMask | None:
    """The AF mask of whole records' beats: detected (the rhythm stage), reference (MIT-BIH's rhythm
    annotations, in `folder`) or none."""
    if kind not in AF_MASKS:
        raise ValueError(f"AF mask must be one of {', '.join(AF_MASKS)}, not {kind!r}")
    if kind == "detected":
        return detected_af_mask
    if kind == "reference":
        return lambda beats: reference_af_mask(beats, folder)
    return None


def scored_af(af_mask: AfMask | None, beats: Beats, context: Beats | None) -> np.ndarray | None:
    """The AF mask of `beats`, computed on the whole records they come from."""
    if af_mask is None:
        return None
    population, rows = record_population(beats, context)
    return af_mask(population)[rows]


@dataclass
class ProtocolResult:
    """A comparison's report (JSON-ready) and the scores of its first split (for the plots)."""

    report: dict
    scored: dict[str, tuple[Beats, np.ndarray]]


# Training budgets of the comparisons (the shipped detector trains with `ecg-rnn train` instead):
# (budget of the context models, changes for the plain AE). The plain AE of the tutorials learns slowly:
# it sits on the trivial solution (every beat reconstructed as its mean, MSE 1 on z-scored beats) for
# several epochs before its loss falls, and at the old lr 3e-3 with patience 3 it stopped there (the
# below-chance 0.485 of the old comparison): lr 1e-3 and patience 10 let it train to convergence.
PLAIN_TO_CONVERGENCE = dict(lr=1e-3, epochs=100, patience=10, max_train_beats=8000)
COMPARISON_BUDGETS = {
    "quick": (dict(epochs=3, max_train_beats=6000, patience=2), dict(max_train_beats=4000)),
    "inter-patient": (dict(), PLAIN_TO_CONVERGENCE),
    "intra-patient": (dict(epochs=10, max_train_beats=20000), PLAIN_TO_CONVERGENCE),
}
TRAINING_DESCRIPTION = {
    "inter-patient": "MIT-BIH DS1 (de Chazal 2004) normal beats, reference R-peaks (ecg-rnn evaluate --protocol "
                     "inter-patient); settings selected by cross-validation on DS1 (docs/evaluation/selection.md)",
    "intra-patient": "MIT-BIH normal beats of one intra-patient training fold (BeatGAN protocol)",
}
PLAIN_SCORE = dict(rhythm_weight=0.0, pause_weight=0.0, distance_weight=0.0, calibrate_per_record=False,
                   adaptation=AdaptConfig())  # the tutorials' score: reconstruction error alone


def _train_settings(protocol: str, quick: bool, seed: int, overrides: dict | None) -> tuple[TrainConfig, TrainConfig]:
    """(config of the context models, config of the plain AE); `overrides` (TrainConfig fields, as the
    CLI's --epochs, --lr, --batch-size, --patience, --device, --threads, --max-beats give them) apply to both."""
    budget, plain_changes = COMPARISON_BUDGETS["quick" if quick else protocol]
    tc = TrainConfig(seed=seed, **budget)
    plain = dataclasses.replace(tc, **plain_changes)
    if overrides:
        tc, plain = dataclasses.replace(tc, **overrides), dataclasses.replace(plain, **overrides)
    return tc, plain


def recalibrated(detector: RecurrentAEDetector, beats: Beats, af_mask: AfMask | None, **params) -> RecurrentAEDetector:
    """The same trained autoencoder with other score settings (params), calibrated again on the records
    it was calibrated on (training_data_): an ablation that needs no retraining."""
    train_records, heldout = detector.training_data_["train_records"], detector.training_data_["heldout_records"]
    context = beats.subset(np.isin(beats.record, train_records + heldout))
    normal = context.aami == "N"
    return copy.copy(detector).set_params(**params).recalibrate(
        context.subset(normal & np.isin(context.record, train_records)),
        context.subset(normal & np.isin(context.record, heldout)), context, af_mask)


def _methods(detector, protocol: str, beats: Beats, tc: TrainConfig, tc_plain: TrainConfig, compare: bool,
             seed: int, af_mask: AfMask | None, model_name: str) -> list:
    """(name, factory(split) -> fitted object with score_samples / threshold_) of every compared method."""
    mc = detector.model
    settings = {name: getattr(detector, name) for name in ("threshold_percentile", "rhythm_weight", "pause_weight",
                                                           "distance_weight", "calibrate_per_record", "record_scale",
                                                           "adaptation", "signal", "beats")}

    def learned(config, training=tc, **over):
        def make(split):
            det = RecurrentAEDetector(model=config, training=training, **{**settings, **over})
            return det.fit(split.train, context=beats, af_mask=af_mask, progress=False, log=lambda m: None,
                           description=TRAINING_DESCRIPTION[protocol])
        return make

    methods = []
    if protocol == "inter-patient":
        methods.append((f"ecg-rnn ({Path(model_name).name})", lambda split: detector))
        methods.append(("ecg-rnn without patient adaptation",
                        lambda split: recalibrated(detector, beats, af_mask, adaptation=AdaptConfig())))
        methods.append(("ecg-rnn, training-set calibration (not per record)",
                        lambda split: recalibrated(detector, beats, af_mask, calibrate_per_record=False)))
    else:
        methods.append(("ecg-rnn (this config, per fold)", learned(mc)))
    methods.append(("template + RR90 (no learning)",
                    lambda split: TemplateRRBaseline().fit(split.train, beats, af_mask)))
    methods.append(("template + RR90 (no learning), training-set calibration",
                    lambda split: TemplateRRBaseline(calibrate_per_record=False).fit(split.train, beats, af_mask)))
    methods.append(("PCA (10 comp., record-normalised beats)",
                    lambda split: FeatureBaseline("pca", seed).fit(split.train)))
    methods.append(("PCA (10 comp., z-scored beats)", lambda split: FeatureBaseline("pca-z", seed).fit(split.train)))
    methods.append(("IsolationForest", lambda split: FeatureBaseline("iforest", seed).fit(split.train)))
    if compare:
        methods.append(("plain LSTM AE (h64, z32, z-scored, early stopping)",
                        learned(plain_lstm_config(), tc_plain, **PLAIN_SCORE)))
        if protocol == "inter-patient":  # intra-patient: 5 folds x 3 more models would take too long here
            variants = {"lstm": dataclasses.replace(mc, cell="lstm", bidirectional=False),
                        "gru": dataclasses.replace(mc, cell="gru", bidirectional=False),
                        "bilstm": dataclasses.replace(mc, cell="lstm", bidirectional=True)}
            for vname, vcfg in variants.items():
                methods.append((f"variant {vname}", learned(vcfg)))
    return methods


def evaluate_protocol(detector, protocol: str = "inter-patient", quick: bool = False, compare: bool = True,
                      seed: int = 0, progress: bool = True, save_variants: Path | None = None,
                      model_name: str = "model", folds: int | None = None,
                      overrides: dict | None = None, af: str = "detected") -> ProtocolResult:
    """Score the protocol's test beats with the detector and every comparison method, on the same beats.

    inter-patient: the given detector as trained (DS1 normals), and its ablations (same weights, other
    score settings, recalibrated on its own held-out DS1 records); the variants and baselines are trained
    here on the same DS1 normal beats. intra-patient: every learned method (the given detector's config
    included) is retrained per fold. af: the AF mask every method gets (detected: the rhythm stage's, as
    `ecg-rnn score` uses it; reference: MIT-BIH's rhythm annotations; none).
    """
    folder = locate_mitdb(quiet=not progress)
    available = tuple(r for r in ALL_RECORDS if (folder / f"{r}.hea").is_file())  # a partial copy works too
    beats = build_beat_set(available, folder, signal_config=detector.signal,
                           beat_config=detector.beats, progress=progress)
    splits = protocol_splits(protocol, beats, seed=seed)
    if folds:
        splits = splits[:folds]
    tc, tc_plain = _train_settings(protocol, quick, seed, overrides)
    af_mask = af_mask_function(af, folder)
    methods = _methods(detector, protocol, beats, tc, tc_plain, compare, seed, af_mask, model_name)
    rows: dict[str, list[dict]] = {name: [] for name, _ in methods}
    timings: dict[str, float] = {name: 0.0 for name, _ in methods}
    histories: dict[str, list] = {}
    scored_first: dict[str, tuple[Beats, np.ndarray]] = {}
    for k, split in enumerate(splits):
        in_af = scored_af(af_mask, split.test, beats)
        for name, make in methods:
            t0 = time.monotonic()
            _say(f"[{split.name}] {name}: fitting on {len(split.train)} normal beats ...", progress)
            model = make(split)
            scores = model.score_samples(split.test, context=beats, in_af=in_af)
            m = evaluate_detector(split.test, scores, model.threshold_)
            timings[name] += time.monotonic() - t0
            rows[name].append(m)
            if name.startswith("plain"):
                histories.setdefault(name, []).append(model.history_)
            _say(f"[{split.name}] {name}: ROC-AUC {m['roc_auc']:.4f}  AP {m['ap']:.4f}  "
                 f"({time.monotonic() - t0:.0f} s)", progress)
            if k == 0:
                scored_first[name] = (split.test, scores)
            if save_variants and protocol == "inter-patient" and name.startswith("variant "):
                out = Path(save_variants) / f"{name.split()[-1]}.safetensors"
                model.save(out)
                write_model_card(out, model, {protocol: m})
                append_card_notes(out, model)
    report = {"protocol": protocol, "dataset": "MIT-BIH Arrhythmia (mitdb)", "model": model_name,
              "af_mask": af, "n_splits": len(splits), "training_config_for_comparisons": tc.to_dict(),
              "training_config_for_plain_ae": tc_plain.to_dict(),
              "n_test_beats": [int(s.test.labelled.sum()) for s in splits], "rows": []}
    for name, _ in methods:
        row = {"name": name, **aggregate(rows[name]), "seconds": round(timings[name], 1)}
        if name in histories:
            row["loss_history"] = histories[name]
        report["rows"].append(row)
    return ProtocolResult(report=report, scored=scored_first)


# ---------------------------------------------------------------------------------------------
# ECG5000


def locate_ecg5000() -> Path:
    for folder in (paths.data_dir() / "ecg5000", paths.shared_data_dir() / "ecg5000"):
        if (folder / "ecg5000_all_X.npy").is_file() and (folder / "ecg5000_all_is_anomaly.npy").is_file():
            return folder
    raise DataNotFoundError("ECG5000 not found in data/ecg5000 or ../shared/data/ecg5000 "
                            "(ecg5000_all_X.npy + ecg5000_all_is_anomaly.npy)")


def evaluate_ecg5000(seed: int = 0, progress: bool = True, overrides: dict | None = None) -> dict:
    """Train on normal series (class 1) only, test on held-out normals + every anomaly (classes 2-5).

    Split (seeded): normals 60% train / 10% early stopping / 30% test; all 2081 anomalies in the test set.
    """
    folder = locate_ecg5000()
    x = np.load(folder / "ecg5000_all_X.npy", allow_pickle=False).astype(np.float32)
    y = np.load(folder / "ecg5000_all_is_anomaly.npy", allow_pickle=False).astype(bool)
    rng = np.random.default_rng(seed)
    normal = rng.permutation(np.flatnonzero(~y))
    n_tr, n_va = int(0.6 * len(normal)), int(0.1 * len(normal))
    tr, va, te_n = normal[:n_tr], normal[n_tr:n_tr + n_va], normal[n_tr + n_va:]
    te = np.concatenate([te_n, np.flatnonzero(y)])

    def inputs(idx):
        return {"wave": x[idx], "template": np.zeros_like(x[idx]), "rr": np.zeros((len(idx), 3), np.float32)}

    tc = dataclasses.replace(TrainConfig(epochs=30, batch_size=64, lr=3e-3, patience=6, seed=seed),
                             **(overrides or {}))
    rows = []
    configs = {"LSTM AE (h64, z16, 2 samples/step)": ModelConfig(window=140, step_samples=2, latent_size=16,
                                                                  context=False),
               "GRU AE (h64, z16)": ModelConfig(cell="gru", window=140, step_samples=2, latent_size=16, context=False),
               "BiLSTM-encoder AE (h64, z16)": ModelConfig(window=140, step_samples=2, latent_size=16,
                                                           context=False, bidirectional=True)}
    for name, cfg in configs.items():
        t0 = time.monotonic()
        with private_torch_state(seed, tc.threads):  # the initial weights too
            model = RecurrentAutoencoder(cfg)
        fit_autoencoder(model, inputs(tr), inputs(va), tc, progress=progress, log=lambda m: None)
        s = batch_errors(model, inputs(te))
        rows.append({"name": name + ", recon. error", "metrics": {"roc_auc": float(roc_auc_score(y[te], s)),
                                                                  "ap": float(average_precision_score(y[te], s))},
                     "seconds": round(time.monotonic() - t0, 1)})
        # the same autoencoder, scored as the MIT-BIH detector combines terms: robust z of log recon error
        # + robust z of the latent code's Mahalanobis distance to the training codes (both on val normals)
        s2 = _recon_plus_latent(model, inputs(tr), inputs(va), inputs(te))
        rows.append({"name": name + ", recon. + latent distance",
                     "metrics": {"roc_auc": float(roc_auc_score(y[te], s2)),
                                 "ap": float(average_precision_score(y[te], s2))}})
        for row in rows[-2:]:
            _say(f"ECG5000 {row['name']}: ROC-AUC {row['metrics']['roc_auc']:.4f}  AP {row['metrics']['ap']:.4f}")
    pca = PCA(n_components=PCA_COMPONENTS, random_state=seed).fit(x[tr])
    s = ((pca.inverse_transform(pca.transform(x[te])) - x[te]) ** 2).mean(axis=1)
    rows.append({"name": "PCA (10 comp.)", "metrics": {"roc_auc": float(roc_auc_score(y[te], s)),
                                                       "ap": float(average_precision_score(y[te], s))}})
    return {"dataset": "ECG5000 (UCR; normal = class 1)", "split": "normals 60/10/30 train/early-stop/test "
            f"(seed {seed}); all anomalies in test", "n_train": int(len(tr)), "n_test": int(len(te)),
            "n_test_anomalies": int(y[te].sum()), "training": tc.to_dict(), "rows": rows}


def _recon_plus_latent(model, train: dict, val: dict, test: dict) -> np.ndarray:
    @torch.no_grad()
    def codes(inp):
        model.eval()
        return model.encode(*(torch.as_tensor(inp[k]) for k in ("wave", "template", "rr"))).numpy().astype(np.float64)

    z_tr = codes(train)
    mean = z_tr.mean(axis=0)
    prec = np.linalg.pinv(np.cov(z_tr, rowvar=False) + COVARIANCE_RIDGE * np.eye(z_tr.shape[1]))

    def terms(inp):
        d = codes(inp) - mean
        mahalanobis = np.einsum("ij,jk,ik->i", d, prec, d)
        return np.log(batch_errors(model, inp).astype(np.float64) + LOG_EPS), np.log(mahalanobis + LOG_EPS)

    (r_va, m_va), (r_te, m_te) = terms(val), terms(test)
    (a, b), (c, d) = robust_location_scale(r_va), robust_location_scale(m_va)
    return (r_te - a) / b + (m_te - c) / d


# ---------------------------------------------------------------------------------------------
# `ecg-rnn train`


def append_card_notes(path: Path, det: RecurrentAEDetector) -> None:
    """Add to a model card what its generic score line leaves out: the template-distance weight, the
    calibration, the patient adaptation and where these settings were chosen."""
    a = det.adaptation
    adaptation = ("none" if a.steps == 0 else f"{a.steps} Adam steps (lr {a.lr:g}, {a.batch_size} beats each) on "
                  f"the {100 * a.typical_share:g} % of the recording's beats nearest its template, before scoring it")
    notes = [f"Template-distance term: + {det.distance_weight:g} * z(log distance to the record's median beat).",
             "Calibration of the morphology terms: " + (
                 f"per record (the recording's own median, {RECORD_SCALE_LABELS[det.record_scale]})."
                 if det.calibrate_per_record else "on the training data."),
             f"Patient adaptation: {adaptation}.", "Rhythm terms add nothing inside atrial fibrillation (`in_af`).",
             "Every setting was selected by 5-fold cross-validation by record inside DS1 "
             "(docs/evaluation/selection.md); DS2 was scored after it (docs/evaluation/README.md says how often).", ""]
    card = path.with_suffix(".md")
    card.write_text(card.read_text() + "\n" + "\n".join(notes))


def run_training(name: str = "default", model_config=None, train_config: TrainConfig | None = None,
                 runs_dir: Path | None = None, resume: bool = False, progress: bool = True,
                 threshold_percentile: float | None = None, ship_to: Path | None = None) -> dict | None:
    """Train the detector on DS1 normal beats (threshold with the rhythm stage's AF mask, as scoring
    uses it), evaluate on DS2, write runs/<name>/. Under torchrun
    every rank trains its share of each batch; rank 0 alone evaluates, writes and returns the result."""
    run_dir = Path(runs_dir or paths.runs_dir()) / name
    run_dir.mkdir(parents=True, exist_ok=True)
    model_config = model_config or DEFAULT_MODEL_CONFIG
    train_config = train_config or dataclasses.replace(DEFAULT_TRAIN_CONFIG, time_budget_s=TRAIN_TIME_BUDGET_S)
    started = time.monotonic()
    beats = build_beat_set(progress=progress)
    split = inter_patient(beats)
    kwargs = {} if threshold_percentile is None else {"threshold_percentile": threshold_percentile}
    det = RecurrentAEDetector(model=model_config, training=train_config, **kwargs)
    context = beats.subset(np.isin(beats.record, DS1))  # templates / RR90 from all beats of each record
    det.fit(split.train, context=context, af_mask=detected_af_mask, run_dir=run_dir, resume=resume,
            progress=progress, description="MIT-BIH DS1 (de Chazal 2004) normal beats, reference R-peaks; settings "
                                           "selected by cross-validation on DS1 (docs/evaluation/selection.md)")
    if not distributed.is_main():  # the other torchrun ranks only helped to train
        distributed.teardown()
        return None
    train_s = time.monotonic() - started
    det.save(run_dir / "model.safetensors")
    scores = det.score_samples(split.test, context=beats, in_af=scored_af(detected_af_mask, split.test, beats))
    metrics = evaluate_detector(split.test, scores, det.threshold_)
    result = {"name": name, "protocol": "inter-patient (DS1 -> DS2)", "metrics": metrics,
              "model": model_config.to_dict(), "training": train_config.to_dict(),
              "threshold": det.threshold_, "threshold_rule": det.threshold_rule,
              "history": det.history_, "train_seconds": round(train_s, 1),
              "n_train_beats": int(len(split.train)), "n_test_beats": int(len(split.test))}
    write_plots(run_dir, det.history_, {name: (split.test, scores)}, det.threshold_)
    (run_dir / "metrics.json").write_text(json.dumps(result, indent=2))
    if ship_to is not None:
        ship_to = Path(ship_to)
        ship_to.parent.mkdir(parents=True, exist_ok=True)
        det.save(ship_to)
        write_model_card(ship_to, det, {"inter-patient (DS1 -> DS2)": metrics},
                         {"train_seconds": result["train_seconds"], "made_by": f"ecg-rnn train --name {name}"})
        append_card_notes(ship_to, det)
    distributed.teardown()
    return result
