"""Metrics, comparison tables and plots for the MIT-BIH protocols and ECG5000."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score, roc_curve

from ecg_rnn.beats import Beats

ABNORMAL = ("S", "V", "F", "Q")


def _auc(y, s):
    return float(roc_auc_score(y, s)) if 0 < y.sum() < len(y) else float("nan")


def evaluate_detector(test: Beats, scores: np.ndarray, threshold: float) -> dict:
    """ROC-AUC, AP, F1, sensitivity, specificity at the threshold; per-class AUC (class vs N) and recall."""
    keep = test.labelled
    aami, s = test.aami[keep], np.asarray(scores, dtype=np.float64)[keep]
    y = np.isin(aami, ABNORMAL)
    pred = s > threshold
    tp, fp = int((pred & y).sum()), int((pred & ~y).sum())
    fn, tn = int((~pred & y).sum()), int((~pred & ~y).sum())
    sens = tp / max(tp + fn, 1)
    spec = tn / max(tn + fp, 1)
    prec = tp / max(tp + fp, 1)
    out = {"roc_auc": _auc(y, s), "ap": float(average_precision_score(y, s)) if y.any() else float("nan"),
           "f1": 2 * prec * sens / max(prec + sens, 1e-12), "sensitivity": sens, "specificity": spec,
           "precision": prec, "n_beats": int(len(y)), "n_abnormal": int(y.sum()), "per_class": {}}
    normal = aami == "N"
    for c in ABNORMAL:
        m = aami == c
        if not m.any():
            continue
        both = m | normal
        out["per_class"][c] = {"n": int(m.sum()), "auc": _auc(m[both], s[both]), "recall": float(pred[m].mean())}
    return out


# ---------------------------------------------------------------------------------------------
# plots


def write_plots(run_dir: Path, history: list[dict] | None, scored: dict[str, tuple[Beats, np.ndarray]],
                threshold: float | None = None) -> list[Path]:
    """loss.png (train / held-out loss per epoch), roc_pr.png, histograms.png (scores by AAMI class)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    written = []
    if history:
        fig, ax = plt.subplots(figsize=(6, 4))
        ep = [h["epoch"] for h in history]
        ax.plot(ep, [h["train_loss"] for h in history], "o-", label="train")
        ax.plot(ep, [h["val_loss"] for h in history], "o-", label="held-out normal")
        ax.set_xlabel("epoch")
        ax.set_ylabel("reconstruction MSE")
        ax.set_yscale("log")
        ax.legend()
        ax.set_title("loss")
        fig.tight_layout()
        fig.savefig(run_dir / "loss.png", dpi=110)
        plt.close(fig)
        written.append(run_dir / "loss.png")
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4.5))
    for name, (beats, s) in scored.items():
        keep = beats.labelled
        y = beats.is_abnormal[keep]
        fpr, tpr, _ = roc_curve(y, s[keep])
        prec, rec, _ = precision_recall_curve(y, s[keep])
        a1.plot(fpr, tpr, label=f"{name} (AUC {roc_auc_score(y, s[keep]):.3f})")
        a2.plot(rec, prec, label=f"{name} (AP {average_precision_score(y, s[keep]):.3f})")
    a1.plot([0, 1], [0, 1], "k:", lw=0.8)
    a1.set_xlabel("false positive rate")
    a1.set_ylabel("true positive rate")
    a1.set_title("ROC")
    a2.set_xlabel("recall")
    a2.set_ylabel("precision")
    a2.set_title("precision-recall")
    for a in (a1, a2):
        a.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(run_dir / "roc_pr.png", dpi=110)
    plt.close(fig)
    written.append(run_dir / "roc_pr.png")
    name, (beats, s) = next(iter(scored.items()))
    fig, ax = plt.subplots(figsize=(7, 4.5))
    lo, hi = np.percentile(s, [0.5, 99.5])
    bins = np.linspace(lo, hi, 80)
    for c in ("N",) + ABNORMAL:
        m = beats.aami == c
        if m.sum() >= 5:
            ax.hist(np.clip(s[m], lo, hi), bins=bins, density=True, histtype="step", lw=1.4, label=f"{c} ({m.sum()})")
    if threshold is not None:
        ax.axvline(threshold, color="k", ls="--", lw=1, label="threshold")
    ax.set_xlabel("anomaly score")
    ax.set_ylabel("density")
    ax.set_title(f"score by AAMI class: {name}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(run_dir / "histograms.png", dpi=110)
    plt.close(fig)
    written.append(run_dir / "histograms.png")
    return written


# ---------------------------------------------------------------------------------------------
# protocol evaluation with baselines

REPO_ROOT = Path(__file__).resolve().parents[1]
BASELINE_THRESHOLD_PERCENTILE = 95.0  # the detector default: flag the top 5% of held-out normal scores
METRIC_KEYS = ("roc_auc", "ap", "f1", "sensitivity", "specificity")


def _say(msg: str, progress: bool = True) -> None:
    print(msg, file=sys.stderr, flush=True)


def _heldout_split(train: Beats, seed: int, frac: float = 0.3) -> tuple[np.ndarray, np.ndarray]:
    """The same record-level split the detector uses: (fit mask, held-out mask)."""
    rng = np.random.default_rng(seed)
    records = np.unique(train.record)
    if len(records) >= 3:
        n_val = max(1, int(round(frac * len(records))))
        held = np.isin(train.record, rng.permutation(records)[:n_val])
    else:  # too few patients: hold out beats instead
        held = rng.random(len(train)) < frac
    return ~held, held


class _FeatureBaseline:
    """PCA reconstruction error or IsolationForest on the beat waves (as cut: record-normalised)."""

    def __init__(self, kind: str, seed: int = 0):
        self.kind, self.seed = kind, seed

    def fit(self, train: Beats) -> "_FeatureBaseline":
        fit, held = _heldout_split(train, self.seed)
        x = train.waves[fit]
        if self.kind == "pca":
            from sklearn.decomposition import PCA

            self.model = PCA(n_components=10, random_state=self.seed).fit(x)
        else:
            from sklearn.ensemble import IsolationForest

            rng = np.random.default_rng(self.seed)
            sub = x[rng.permutation(len(x))[:20000]]
            self.model = IsolationForest(n_estimators=200, random_state=self.seed, n_jobs=1).fit(sub)
        self.threshold_ = float(np.percentile(self.score_samples(train.subset(held)), BASELINE_THRESHOLD_PERCENTILE))
        return self

    def score_samples(self, beats: Beats, context: Beats | None = None) -> np.ndarray:
        if self.kind == "pca":
            recon = self.model.inverse_transform(self.model.transform(beats.waves))
            return ((recon - beats.waves) ** 2).mean(axis=1)
        return -self.model.score_samples(beats.waves)


class _TemplateRRBaseline:
    """No learning: distance to the record's median beat + the detector's RR90 prematurity term,
    calibrated like the detector (robust z on held-out normals)."""

    def __init__(self, seed: int = 0, rhythm_weight: float = 0.5):
        self.seed, self.rhythm_weight = seed, rhythm_weight

    def _terms(self, beats: Beats, context: Beats | None):
        from ecg_rnn.detector import model_inputs, rhythm_terms
        from ecg_rnn.model import ModelConfig

        inp = model_inputs(beats, ModelConfig(window=beats.waves.shape[1], step_samples=1), context)
        dist = np.log(((inp["wave"] - inp["template"]) ** 2).mean(axis=1) + 1e-4)
        return dist, rhythm_terms(beats.rr, inp["rr_ref"])[0]

    def fit(self, train: Beats, context: Beats | None = None) -> "_TemplateRRBaseline":
        from ecg_rnn.detector import _robust

        d, p = self._terms(train, context)  # no learning: every training normal calibrates
        self.cal = (_robust(d), _robust(p))
        self.threshold_ = float(np.percentile(self._combine(d, p), BASELINE_THRESHOLD_PERCENTILE))
        return self

    def _combine(self, d, p):
        (md, sd), (mp, sp) = self.cal
        return (d - md) / sd + self.rhythm_weight * np.maximum((p - mp) / sp, 0)

    def score_samples(self, beats: Beats, context: Beats | None = None) -> np.ndarray:
        return self._combine(*self._terms(beats, context))


def plain_lstm_config():
    """The issue's plain baseline: LSTM hidden 64, latent 32, repeat-vector decoder, per-beat z-scored
    input, one sample per step, reconstruction error only."""
    from ecg_rnn.model import ModelConfig

    return ModelConfig(cell="lstm", hidden_size=64, num_layers=1, latent_size=32, step_samples=1,
                       context=False, input_norm="beat")


def _train_settings(protocol: str, quick: bool, epochs: int | None, seed: int, threads: int | None,
                    max_beats: int | None = None):
    """Small, fast training configs for the comparisons (inter: one split; intra: 5 folds):
    (config for the context models, config for the plain AE, which is ~3x slower per beat)."""
    import dataclasses

    from ecg_rnn.train import TrainConfig

    if quick:
        tc = TrainConfig(epochs=epochs or 3, max_train_beats=6000, patience=2, seed=seed)
        plain = dataclasses.replace(tc, max_train_beats=4000)
    elif protocol == "intra-patient":
        tc = TrainConfig(epochs=epochs or 6, max_train_beats=16000, patience=2, seed=seed)
        plain = dataclasses.replace(tc, epochs=epochs or 4, max_train_beats=8000)
    else:
        tc = TrainConfig(epochs=epochs or 10, max_train_beats=20000, patience=3, seed=seed)
        plain = dataclasses.replace(tc, epochs=epochs or 8, max_train_beats=16000)
    if threads:
        tc, plain = dataclasses.replace(tc, threads=threads), dataclasses.replace(plain, threads=threads)
    if max_beats:
        tc, plain = dataclasses.replace(tc, max_train_beats=max_beats), dataclasses.replace(plain, max_train_beats=max_beats)
    return tc, plain


def evaluate_protocol(detector, protocol: str = "inter-patient", epochs: int | None = None, quick: bool = False,
                      compare: bool = True, seed: int = 0, threads: int | None = None, progress: bool = True,
                      save_variants: Path | None = None, model_name: str = "model",
                      folds: int | None = None, max_beats: int | None = None) -> dict:
    """Score the protocol's test beats with the detector and every comparison method, on the same beats.

    inter-patient: the given detector as trained (DS1 normals); the variants and baselines are trained
    here on the same DS1 normal beats. intra-patient: every learned method (the given detector's config
    included) is retrained per fold with the small config, since the shipped model saw DS1 beats.
    """
    import dataclasses
    import time

    from ecg_rnn.detector import RecurrentAEDetector
    from ecg_rnn.protocols import ALL_RECORDS, build_beat_set, locate_mitdb, protocol_splits

    folder = locate_mitdb(quiet=not progress)
    available = tuple(r for r in ALL_RECORDS if (folder / f"{r}.hea").is_file())  # a partial copy works too
    beats = build_beat_set(available, folder, signal_config=detector.signal_config,
                           beat_config=detector.beat_config, progress=progress)
    splits = protocol_splits(protocol, beats, seed=seed)
    if folds:
        splits = splits[:folds]
    tc, tc_plain = _train_settings(protocol, quick, epochs, seed, threads, max_beats)
    mc = detector.model_config
    det_kwargs = {"threshold_percentile": detector.threshold_percentile, "rhythm_weight": detector.rhythm_weight,
                  "pause_weight": detector.pause_weight, "signal": detector.signal_config,
                  "beats": detector.beat_config}
    methods = []  # (name, factory(split) -> fitted object with score_samples/threshold_)

    def learned(config, training=tc, **over):
        def make(split):
            det = RecurrentAEDetector(model=config, training=training, **{**det_kwargs, **over})
            return det.fit(split.train, context=beats, progress=False, log=lambda m: None,
                           description=f"{protocol} training normals")
        return make

    if protocol == "inter-patient":
        methods.append((f"ecg-rnn ({Path(model_name).name})", lambda split: detector))
    else:
        methods.append(("ecg-rnn (this config, per fold)", learned(mc)))
    methods.append(("template + RR90 (no learning)", lambda split: _TemplateRRBaseline(seed).fit(split.train, beats)))
    methods.append(("PCA (10 comp.)", lambda split: _FeatureBaseline("pca", seed).fit(split.train)))
    methods.append(("IsolationForest", lambda split: _FeatureBaseline("iforest", seed).fit(split.train)))
    if compare:
        methods.append(("plain LSTM AE (h64, z32, z-scored)", learned(plain_lstm_config(), tc_plain,
                                                                       rhythm_weight=0.0, pause_weight=0.0)))
        if protocol == "inter-patient":  # intra-patient: 5 folds x 3 more models would take too long here
            variants = {"lstm": dataclasses.replace(mc, cell="lstm", bidirectional=False),
                        "gru": dataclasses.replace(mc, cell="gru", bidirectional=False),
                        "bilstm": dataclasses.replace(mc, cell="lstm", bidirectional=True)}
            for vname, vcfg in variants.items():
                methods.append((f"variant {vname}", learned(vcfg)))
    rows: dict[str, list[dict]] = {name: [] for name, _ in methods}
    timings: dict[str, float] = {name: 0.0 for name, _ in methods}
    scored_first: dict[str, tuple[Beats, np.ndarray]] = {}
    for k, split in enumerate(splits):
        for name, make in methods:
            t0 = time.monotonic()
            _say(f"[{split.name}] {name}: fitting on {len(split.train)} normal beats ...", progress)
            model = make(split)
            scores = model.score_samples(split.test, context=beats)
            m = evaluate_detector(split.test, scores, model.threshold_)
            timings[name] += time.monotonic() - t0
            rows[name].append(m)
            _say(f"[{split.name}] {name}: ROC-AUC {m['roc_auc']:.4f}  AP {m['ap']:.4f}  "
                 f"({time.monotonic() - t0:.0f} s)", progress)
            if k == 0:
                scored_first[name] = (split.test, scores)
            if save_variants and protocol == "inter-patient" and name.startswith("variant "):
                out = Path(save_variants) / f"{name.split()[-1]}.safetensors"
                model.save(out)
                _write_sidecar(out, model, m, protocol)
    report = {"protocol": protocol, "dataset": "MIT-BIH Arrhythmia (mitdb)", "model": model_name,
              "n_splits": len(splits), "training_config_for_comparisons": tc.to_dict(),
              "training_config_for_plain_ae": tc_plain.to_dict(),
              "n_test_beats": [int(s.test.labelled.sum()) for s in splits], "rows": []}
    for name, _ in methods:
        report["rows"].append({"name": name, **_aggregate(rows[name]), "seconds": round(timings[name], 1)})
    report["_scored_first_split"] = scored_first
    return report


def _write_sidecar(path: Path, det, metrics: dict, protocol: str, extra: dict | None = None) -> None:
    """<model>.json (everything the checkpoint says about itself + metrics) and <model>.md (a model card)."""
    write_model_card(path, det, {protocol: metrics}, extra)


def write_model_card(path: Path, det, metrics: dict[str, dict], extra: dict | None = None) -> list[Path]:
    path = Path(path)
    desc = det.describe()
    desc["file"] = path.name
    desc["metrics"] = metrics
    if extra:
        desc.update(extra)
    jpath, mpath = path.with_suffix(".json"), path.with_suffix(".md")
    jpath.write_text(json.dumps(desc, indent=2, default=float))
    mc, d = desc["model_config"], desc["detector"]
    lines = [f"# {path.name}", "",
             f"ecg-rnn {desc['package_version']} detector: {mc['cell'].upper()} autoencoder, hidden {mc['hidden_size']}, "
             f"{mc['num_layers']} layer(s), latent {mc['latent_size']}, dropout {mc['dropout']}, "
             f"{'bidirectional' if mc['bidirectional'] else 'unidirectional'} encoder, "
             f"{mc['step_samples']} samples/step, context (template + RR, residual decoder): {mc['context']}.", "",
             f"Score: z(log recon MSE) + {d['rhythm_weight']} * max(0, z(prematurity vs RR90))"
             f" + {d['pause_weight']} * max(0, z(pause)); threshold {d['threshold']:.3f} "
             f"(the {d['threshold_percentile']:g}th percentile of held-out normal scores).", "",
             f"Training data: {desc['training_data'].get('description', '')}; "
             f"{desc['training_data'].get('n_train_beats', '?')} training beats, "
             f"{desc['training_data'].get('n_heldout_beats', '?')} held-out normal beats "
             f"(records {', '.join(desc['training_data'].get('heldout_records', []))}).", ""]
    for protocol, m in metrics.items():
        lines.append(f"## {protocol}\n")
        lines.append(markdown_table({"rows": [{"name": path.stem, "metrics": m}]}))
        lines.append("")
    mpath.write_text("\n".join(lines))
    return [jpath, mpath]


def _aggregate(folds: list[dict]) -> dict:
    if len(folds) == 1:
        return {"metrics": folds[0]}
    mean, std = {}, {}
    for k in METRIC_KEYS:
        v = np.array([f[k] for f in folds], dtype=float)
        mean[k], std[k] = float(np.nanmean(v)), float(np.nanstd(v))
    for c in ABNORMAL:
        for k in ("auc", "recall"):
            v = np.array([f["per_class"].get(c, {}).get(k, np.nan) for f in folds], dtype=float)
            if np.isfinite(v).any():
                mean.setdefault("per_class", {}).setdefault(c, {})[k] = float(np.nanmean(v))
                std.setdefault("per_class", {}).setdefault(c, {})[k] = float(np.nanstd(v))
    return {"metrics": mean, "std": std, "folds": folds}


def _cell(row: dict, key: str, cls: str | None = None) -> str:
    m, s = row["metrics"], row.get("std")
    if cls:
        v = m.get("per_class", {}).get(cls, {}).get(key)
        sd = (s or {}).get("per_class", {}).get(cls, {}).get(key)
    else:
        v, sd = m.get(key), (s or {}).get(key)
    if v is None or not np.isfinite(v):
        return "–"
    return f"{v:.3f} ± {sd:.3f}" if sd is not None else f"{v:.3f}"


def markdown_table(report: dict) -> str:
    if report.get("dataset", "").startswith("ECG5000"):
        lines = ["| method | ROC-AUC | AP |", "|---|---|---|"]
        for row in report["rows"]:
            lines.append(f"| {row['name']} | {_cell(row, 'roc_auc')} | {_cell(row, 'ap')} |")
        return "\n".join(lines)
    head = ["method", "ROC-AUC", "AP", "F1", "sens.", "spec."] + [f"AUC {c}" for c in ABNORMAL] + \
           [f"recall {c}" for c in ABNORMAL]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in report["rows"]:
        cells = [row["name"]] + [_cell(row, k) for k in METRIC_KEYS] + [_cell(row, "auc", c) for c in ABNORMAL] + \
                [_cell(row, "recall", c) for c in ABNORMAL]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_report(report: dict, out_dir: Path) -> list[Path]:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    scored = report.pop("_scored_first_split", None)
    stem = "ecg5000" if report.get("dataset", "").startswith("ECG5000") else report["protocol"]
    jpath, mpath = out_dir / f"{stem}.json", out_dir / f"{stem}.md"
    jpath.write_text(json.dumps(report, indent=2, default=float))
    title = f"# {report.get('dataset')}" + (f" — {report['protocol']}" if report.get("protocol") else "") + "\n\n"
    notes = ""
    if report.get("n_splits", 1) > 1:
        notes = f"\nMean ± standard deviation over {report['n_splits']} folds.\n"
    notes += ("\nThresholds: the 95th percentile of each method's scores on held-out normal beats (records "
              "not used for fitting; the no-learning baseline uses all training normals); per-class AUC is "
              "class vs N.\n") if "protocol" in report else ""
    mpath.write_text(title + markdown_table(report) + "\n" + notes)
    paths = [jpath, mpath]
    if scored:
        try:
            paths += write_plots(out_dir, None, scored, None)
        except Exception as exc:  # plots are a convenience; the report stands without them
            _say(f"plots skipped: {type(exc).__name__}: {exc}")
    return paths


# ---------------------------------------------------------------------------------------------
# ECG5000


def locate_ecg5000() -> Path:
    from ecg_rnn.errors import DataNotFoundError

    for folder in (REPO_ROOT / "data" / "ecg5000", REPO_ROOT.parent / "shared" / "data" / "ecg5000"):
        if (folder / "ecg5000_all_X.npy").is_file() and (folder / "ecg5000_all_is_anomaly.npy").is_file():
            return folder
    raise DataNotFoundError("ECG5000 not found in data/ecg5000 or ../shared/data/ecg5000 "
                            "(ecg5000_all_X.npy + ecg5000_all_is_anomaly.npy)")


def evaluate_ecg5000(epochs: int | None = None, seed: int = 0, threads: int | None = None,
                     progress: bool = True) -> dict:
    """Train on normal series (class 1) only, test on held-out normals + every anomaly (classes 2-5).

    Split (seeded): normals 60% train / 10% early stopping / 30% test; all 2081 anomalies in the test set.
    """
    import dataclasses
    import time

    from ecg_rnn.model import ModelConfig, RecurrentAutoencoder
    from ecg_rnn.train import TrainConfig, batch_errors, fit_autoencoder, seed_everything

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

    tc = TrainConfig(epochs=epochs or 30, batch_size=64, lr=3e-3, patience=6, seed=seed, max_train_beats=None)
    if threads:
        tc = dataclasses.replace(tc, threads=threads)
    rows = []
    configs = {"LSTM AE (h64, z16, 2 samples/step)": ModelConfig(window=140, step_samples=2, latent_size=16,
                                                                  context=False),
               "GRU AE (h64, z16)": ModelConfig(cell="gru", window=140, step_samples=2, latent_size=16, context=False),
               "BiLSTM-encoder AE (h64, z16)": ModelConfig(window=140, step_samples=2, latent_size=16,
                                                           context=False, bidirectional=True)}
    for name, cfg in configs.items():
        t0 = time.monotonic()
        seed_everything(seed)  # the initial weights too
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
    from sklearn.decomposition import PCA

    pca = PCA(n_components=10, random_state=seed).fit(x[tr])
    s = ((pca.inverse_transform(pca.transform(x[te])) - x[te]) ** 2).mean(axis=1)
    rows.append({"name": "PCA (10 comp.)", "metrics": {"roc_auc": float(roc_auc_score(y[te], s)),
                                                       "ap": float(average_precision_score(y[te], s))}})
    return {"dataset": "ECG5000 (UCR; normal = class 1)", "split": "normals 60/10/30 train/early-stop/test "
            f"(seed {seed}); all anomalies in test", "n_train": int(len(tr)), "n_test": int(len(te)),
            "n_test_anomalies": int(y[te].sum()), "training": tc.to_dict(), "rows": rows}


def _recon_plus_latent(model, train: dict, val: dict, test: dict) -> np.ndarray:
    import torch

    from ecg_rnn.detector import _robust
    from ecg_rnn.train import batch_errors

    @torch.no_grad()
    def codes(inp):
        model.eval()
        return model.encode(*(torch.as_tensor(inp[k]) for k in ("wave", "template", "rr"))).numpy().astype(np.float64)

    z_tr = codes(train)
    mean = z_tr.mean(axis=0)
    prec = np.linalg.pinv(np.cov(z_tr, rowvar=False) + 1e-6 * np.eye(z_tr.shape[1]))

    def terms(inp):
        d = codes(inp) - mean
        return np.log(batch_errors(model, inp).astype(np.float64) + 1e-6), np.log(np.einsum("ij,jk,ik->i", d, prec, d) + 1e-6)

    (r_va, m_va), (r_te, m_te) = terms(val), terms(test)
    (a, b), (c, d) = _robust(r_va), _robust(m_va)
    return (r_te - a) / b + (m_te - c) / d
