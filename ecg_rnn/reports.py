"""Reports of an evaluation: plots, Markdown / JSON tables, and model cards (sidecars of a checkpoint)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score, roc_curve

from ecg_rnn.beats import ABNORMAL_CLASSES, Beats
from ecg_rnn.features import NO_P_GATE, lean_gates_label
from ecg_rnn.metrics import METRIC_KEYS

PLOT_DPI = 110


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
        fig.savefig(run_dir / "loss.png", dpi=PLOT_DPI)
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
    fig.savefig(run_dir / "roc_pr.png", dpi=PLOT_DPI)
    plt.close(fig)
    written.append(run_dir / "roc_pr.png")
    name, (beats, s) = next(iter(scored.items()))
    fig, ax = plt.subplots(figsize=(7, 4.5))
    lo, hi = np.percentile(s, [0.5, 99.5])
    bins = np.linspace(lo, hi, 80)
    for c in ("N",) + ABNORMAL_CLASSES:
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
    fig.savefig(run_dir / "histograms.png", dpi=PLOT_DPI)
    plt.close(fig)
    written.append(run_dir / "histograms.png")
    return written


def _prematurity_reference(d: dict) -> str:
    window, share, typical = d.get("rr_reference_beats", 0), d.get("rr_previous_share", 0.0), d.get("rr_typical_mads", 0.0)
    lean_min, p_gate = d.get("rr_lean_min_s", 0.0), d.get("rr_lean_min_p_similarity", NO_P_GATE)
    rr90 = f"RR90 of the {window} beats around the beat" if window else "RR90 of the whole record"
    if typical:
        rr90 += f", over intervals between beats of the record's usual shape (within {typical:g} MADs)"
    if not share:
        return rr90
    where = lean_gates_label(lean_min, p_gate)
    return f"{rr90}, leaning {share:g} (geometrically) to the cycle before the beat's{where}"


def _calibration_text(d: dict) -> str:
    if not d.get("calibrate_per_record", False):
        return "every term against normal training beats"
    scale = "the lower half of its beats" if d.get("record_scale") == "lower_half" else "all its beats"
    noisy = d.get("noise_stratum_probability", 1.0)
    split = (f"; beats whose window the quality stage finds noisy (probability > {noisy:g}) against the "
             "record's other such beats" if noisy < 1.0 else "")
    return (f"morphology terms against the recording's own beats (scale from {scale}){split}; rhythm terms "
            "against normal training beats")


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
             f"Score: z(log recon MSE) + {d.get('distance_weight', 0.0)} * z(log template distance) + "
             f"{d['rhythm_weight']} * max(0, z(prematurity vs {_prematurity_reference(d)}))"
             f" + {d['pause_weight']} * max(0, z(pause)); threshold {d['threshold']:.3f} "
             f"(the {d['threshold_percentile']:g}th percentile of held-out normal scores).", "",
             f"Calibration: {_calibration_text(d)}.", "",
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
    head = ["method", "ROC-AUC", "AP", "F1", "sens.", "spec."] + [f"AUC {c}" for c in ABNORMAL_CLASSES] + \
           [f"recall {c}" for c in ABNORMAL_CLASSES]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in report["rows"]:
        cells = [row["name"]] + [_cell(row, k) for k in METRIC_KEYS] + [_cell(row, "auc", c) for c in ABNORMAL_CLASSES] + \
                [_cell(row, "recall", c) for c in ABNORMAL_CLASSES]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_report(report: dict, out_dir: Path,
                 scored: dict[str, tuple[Beats, np.ndarray]] | None = None) -> list[Path]:
    """<stem>.json and <stem>.md of an evaluation report; with `scored` (method -> (beats, scores) of
    one split) also the ROC / PR and histogram plots."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = "ecg5000" if report.get("dataset", "").startswith("ECG5000") else report["protocol"]
    jpath, mpath = out_dir / f"{stem}.json", out_dir / f"{stem}.md"
    jpath.write_text(json.dumps(report, indent=2, default=float))
    title = f"# {report.get('dataset')}" + (f" — {report['protocol']}" if report.get("protocol") else "") + "\n\n"
    notes = ""
    if report.get("n_splits", 1) > 1:
        notes = f"\nMean ± standard deviation over {report['n_splits']} folds.\n"
    notes += (f"\nThresholds: the {report.get('threshold_percentile', 95):g}th percentile of each method's "
              "scores on held-out normal beats (records "
              "not used for fitting; the no-learning baseline uses all training normals); per-class AUC is "
              "class vs N.\n") if "protocol" in report else ""
    mpath.write_text(title + markdown_table(report) + "\n" + notes)
    paths = [jpath, mpath]
    if scored:
        paths += write_plots(out_dir, None, scored, None)
    return paths
