"""Metrics of a scored beat set: ROC-AUC, AP, and the operating point at a threshold (scikit-learn)."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import average_precision_score, roc_auc_score

from ecg_rnn.beats import ABNORMAL_CLASSES, Beats

METRIC_KEYS = ("roc_auc", "ap", "f1", "sensitivity", "specificity")


def auc_or_nan(y, s):
    return float(roc_auc_score(y, s)) if 0 < y.sum() < len(y) else float("nan")


def evaluate_detector(test: Beats, scores: np.ndarray, threshold: float) -> dict:
    """ROC-AUC, AP, F1, sensitivity, specificity at the threshold; per-class AUC (class vs N) and recall."""
    keep = test.labelled
    aami, s = test.aami[keep], np.asarray(scores, dtype=np.float64)[keep]
    y = np.isin(aami, ABNORMAL_CLASSES)
    pred = s > threshold
    tp, fp = int((pred & y).sum()), int((pred & ~y).sum())
    fn, tn = int((~pred & y).sum()), int((~pred & ~y).sum())
    sens = tp / max(tp + fn, 1)
    spec = tn / max(tn + fp, 1)
    prec = tp / max(tp + fp, 1)
    out = {"roc_auc": auc_or_nan(y, s), "ap": float(average_precision_score(y, s)) if y.any() else float("nan"),
           "f1": 2 * prec * sens / max(prec + sens, 1e-12), "sensitivity": sens, "specificity": spec,
           "precision": prec, "n_beats": int(len(y)), "n_abnormal": int(y.sum()), "per_class": {}}
    normal = aami == "N"
    for c in ABNORMAL_CLASSES:
        m = aami == c
        if not m.any():
            continue
        both = m | normal
        out["per_class"][c] = {"n": int(m.sum()), "auc": auc_or_nan(m[both], s[both]), "recall": float(pred[m].mean())}
    return out


def aggregate(folds: list[dict]) -> dict:
    """One split: its metrics; several folds: mean and standard deviation of each metric."""
    if len(folds) == 1:
        return {"metrics": folds[0]}
    mean, std = {}, {}
    for k in METRIC_KEYS:
        v = np.array([f[k] for f in folds], dtype=float)
        mean[k], std[k] = float(np.nanmean(v)), float(np.nanstd(v))
    for c in ABNORMAL_CLASSES:
        for k in ("auc", "recall"):
            v = np.array([f["per_class"].get(c, {}).get(k, np.nan) for f in folds], dtype=float)
            if np.isfinite(v).any():
                mean.setdefault("per_class", {}).setdefault(c, {})[k] = float(np.nanmean(v))
                std.setdefault("per_class", {}).setdefault(c, {})[k] = float(np.nanstd(v))
    return {"metrics": mean, "std": std, "folds": folds}
