"""Selection: every choice of the detector made by cross-validation by record inside MIT-BIH DS1.

DS1's 22 records are split into folds by record (seeded). For each fold a detector is trained on the
normal beats of the other folds (early stopping and calibration on records held out from those, as
`ecg-rnn train` does) and scores every beat of the fold's records as a new recording is scored: whole
records, per-record calibration and adaptation from the record's own beats, the rhythm stage's AF mask.
Choices that need no retraining (patient adaptation, score weights, calibration, the prematurity reference,
threshold percentile) are evaluated on the same fold models; each model candidate trains its own fold models. The test
records are also scored on their other lead (V1 mostly), as a check of how choices transfer.

The out-of-fold scores of all DS1 records are pooled. Among the score settings that keep the
threshold's promise on the other lead (a recording unlike the training data: at the 95th percentile,
3 % to 8 % of its normal beats flagged), the one with the best pooled average precision (default lead)
wins. Then, for that model, the window of the local RR90 (the prematurity term's reference), then
whether that RR90 is taken over normal-to-normal intervals only, with the weights and calibration
searched again for each (stored terms hold the whole-record RR90; the others are computed from the
beats, which needs no model); a reference leaning to the cycle before the beat's (in every beat, or only
in steady slow stretches of sinus rhythm) is measured beside it but not eligible; then the most
sensitive threshold percentile whose pooled specificity (each beat against its own fold's threshold) is
at least MIN_SPECIFICITY. The no-learning template + RR score gets the same search
over its own weights, so the comparison is fair. DS2 is never read here: it is scored once, by
`ecg-rnn evaluate`, with what this selected.

    python -m ecg_rnn.selection --out docs/evaluation            # everything, in one process
    python -m ecg_rnn.selection terms --candidate 0 --work DIR   # or: each model candidate's fold terms
    python -m ecg_rnn.selection report --work DIR --out docs/evaluation   # ...then the search and report
    python -m ecg_rnn.selection masks --work DIR     # stored terms' AF masks after a rhythm-stage change
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import itertools
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from sklearn.metrics import average_precision_score

from ecg_rnn import paths
from ecg_rnn.adapt import AdaptConfig
from ecg_rnn.baselines import plain_lstm_config
from ecg_rnn.beats import ABNORMAL_CLASSES, Beats
from ecg_rnn.detector import AfMask, RecurrentAEDetector
from ecg_rnn.experiments import AF_MASKS, detected_af_mask, reference_af_mask
from ecg_rnn.features import (DEFAULT_RECORD_SCALE, MORPHOLOGY_TERMS, RECORD_SCALE_LABELS, RECORD_SCALES,
                              RHYTHM_TERMS, ScoreWeights, beat_keys, calibrate, combine, record_population,
                              NO_P_GATE, lean_gates_label, rhythm_terms, rr_reference, zscores)
from ecg_rnn.metrics import evaluate_detector
from ecg_rnn.model import ModelConfig, RecurrentAutoencoder
from ecg_rnn.protocols import DS1, build_beat_set, heldout_mask, locate_mitdb
from ecg_rnn.train import TrainConfig
from ecg_rnn.variants import OTHER_LEAD, variant_beat_set

MIN_SPECIFICITY = 0.95  # the operating point keeps at least this share of normal beats unflagged
DEFAULT_PERCENTILE = 95.0  # the promise checked on the other lead: about 5 % of normal beats flagged
PROMISE_BAND = (0.6, 1.6)  # ...within 3 % and 8 % (the band for recordings unlike MIT-BIH)
NO_LEARNING = "template + RR90 (no learning)"
OTHER_SUFFIX = "~other"  # record names of other-lead beats in a training set (their own templates)
# how the morphology terms are calibrated: per record with one of features.RECORD_SCALES, or on the
# training data ("training": calibrate_per_record off)
TRAINING_CALIBRATION = "training"
CALIBRATIONS = (*RECORD_SCALES, TRAINING_CALIBRATION)
CALIBRATION_LABELS = {**{k: f"per record, {v}" for k, v in RECORD_SCALE_LABELS.items()},
                      TRAINING_CALIBRATION: "on the training data"}


def calibration_params(calibration: str) -> dict:
    """The detector's (and the no-learning score's) parameters for one calibration."""
    per_record = calibration != TRAINING_CALIBRATION
    return {"calibrate_per_record": per_record, "record_scale": calibration if per_record else DEFAULT_RECORD_SCALE}


@dataclass(frozen=True)
class Candidate:
    """A model choice: each trains its own fold models."""

    name: str
    model: ModelConfig
    other_lead_training: bool = False  # also train on the other lead's normal beats (lead augmentation)


@dataclass(frozen=True)
class SelectionConfig:
    folds: int = 5
    seed: int = 0
    training: TrainConfig = TrainConfig(threads=1)  # as `ecg-rnn train`: 20 epochs, early stopping
    candidates: tuple[Candidate, ...] = (
        Candidate("h32 z8 6/step", ModelConfig(hidden_size=32, latent_size=8, step_samples=6)),
        Candidate("h32 z4 6/step", ModelConfig(hidden_size=32, latent_size=4, step_samples=6)),
        Candidate("h32 z16 6/step", ModelConfig(hidden_size=32, latent_size=16, step_samples=6)),
        Candidate("h32 z8 6/step, both leads", ModelConfig(hidden_size=32, latent_size=8, step_samples=6), True),
        Candidate("h64 z12 3/step (previous default)", ModelConfig()),
    )
    adaptations: tuple[AdaptConfig, ...] = (AdaptConfig(), AdaptConfig(steps=10, lr=3e-3),
                                            AdaptConfig(steps=30, lr=3e-3), AdaptConfig(steps=30, lr=1e-3),
                                            AdaptConfig(steps=100, lr=1e-3))
    distance_weights: tuple[float, ...] = (0.0, 0.5, 1.0, 2.0)
    rhythm_weights: tuple[float, ...] = (0.5, 1.0, 1.5, 2.0, 3.0)
    pause_weights: tuple[float, ...] = (0.0, 0.1, 0.3, 0.6)
    percentiles: tuple[float, ...] = (90.0, 92.5, 95.0, 96.0, 97.0, 98.0, 99.0)
    rr_reference_windows: tuple[int, ...] = (0, 64, 128, 256, 512)  # beats; 0: RR90 of the whole record
    # the selected reference leaning this far to the cycle before the beat's, every beat...
    rr_previous_shares: tuple[float, ...] = (0.25, 0.5, 0.75)
    # ...or only in steady stretches slower than 1 / this (features.steady_slow_cycles) whose P wave
    # correlates at least this well with the sinus one (features.p_wave_similarity): ablation rows, not
    # eligible (docs/evaluation/README.md: both spare slow runs of atrial ectopy)
    rr_lean_min_s: tuple[float, ...] = (0.6, 0.67, 0.75)
    rr_lean_min_p_similarity: tuple[float, ...] = (0.3, 0.5, 0.7)
    rr_lean_shares: tuple[float, ...] = (0.5, 1.0)
    rr_typical_mads: tuple[float, ...] = (3.0, 6.0)  # RR90 over normal-to-normal intervals (0: every interval)
    af_masks: tuple[str, ...] = AF_MASKS  # the first is what scoring uses (selected with); the others: ablation


# ---------------------------------------------------------------------------------------------
# data


@dataclass
class SelectionData:
    """Every beat of the selection records on the default lead, the same beats on the other lead, and
    the reference AF mask (MIT-BIH's rhythm annotations; the same beats on either lead)."""

    beats: Beats
    other_lead: Beats
    reference_af: np.ndarray

    def save(self, path: Path) -> None:
        arrays = {f"beats.{k}": v for k, v in self.beats.to_arrays().items()}
        arrays |= {f"other.{k}": v for k, v in self.other_lead.to_arrays().items()}
        np.savez_compressed(path, reference_af=self.reference_af, **arrays)

    @classmethod
    def load(cls, path: Path) -> "SelectionData":
        with np.load(path, allow_pickle=False) as d:
            def part(prefix: str) -> Beats:
                return Beats(**{k.split(".", 1)[1]: d[k] for k in d.files if k.startswith(prefix)})

            return cls(beats=part("beats."), other_lead=part("other."), reference_af=d["reference_af"])


def selection_data(records: tuple[str, ...] = DS1, folder: Path | None = None, progress: bool = True) -> SelectionData:
    folder = folder or locate_mitdb(quiet=not progress)
    beats = build_beat_set(records, folder, progress=progress)
    other = variant_beat_set(records, folder, OTHER_LEAD, cache_dir=paths.cache_dir(), progress=progress)
    if not np.array_equal(beat_keys(beats), beat_keys(other)):
        raise ValueError("the two leads' beat sets differ; rebuild the caches")
    return SelectionData(beats=beats, other_lead=other, reference_af=reference_af_mask(beats, folder))


def _mask_lookup(data: SelectionData) -> AfMask:
    """The reference AF mask of any beats of the selection records (found by record and sample)."""
    keys = beat_keys(data.beats)
    order = np.argsort(keys, kind="stable")
    return lambda beats: data.reference_af[order[np.searchsorted(keys[order], beat_keys(beats))]]


def af_masks(data: SelectionData) -> dict[str, AfMask | None]:
    return {"detected": detected_af_mask, "reference": _mask_lookup(data), "none": None}


def record_folds(records: tuple[str, ...], n_folds: int, seed: int) -> list[tuple[str, ...]]:
    """The test records of each fold: a seeded permutation of the records dealt round-robin."""
    order = np.random.default_rng(seed).permutation(np.array(records))
    return [tuple(sorted(order[k::n_folds])) for k in range(n_folds)]


# ---------------------------------------------------------------------------------------------
# fold models and their raw terms


@dataclass
class FoldTerms:
    """Raw score terms of one fold under one model and adaptation: what calibration, threshold and
    out-of-fold scores are made of (no weights applied yet)."""

    held: dict[str, np.ndarray]  # every beat of the fold detector's held-out records
    held_record: np.ndarray
    held_rows: np.ndarray  # the held-out normal beats among them (calibration and threshold)
    rhythm_normals: dict[str, np.ndarray]  # rhythm terms of every training normal beat
    test: dict[str, np.ndarray]  # every beat of the fold's test records
    test_record: np.ndarray
    test_aami: np.ndarray
    test_other: dict[str, np.ndarray]  # the same test beats on their other lead
    af: dict[str, np.ndarray] = field(default_factory=dict)  # "<kind>.held" / "<kind>.test" -> mask

    def arrays(self, prefix: str) -> dict[str, np.ndarray]:
        out = {"held_record": self.held_record, "held_rows": self.held_rows, "test_record": self.test_record,
               "test_aami": self.test_aami}
        for group in ("held", "rhythm_normals", "test", "test_other", "af"):
            out |= {f"{group}.{k}": v.astype(np.float32) if v.dtype.kind == "f" else v
                    for k, v in getattr(self, group).items()}
        return {f"{prefix}/{k}": v for k, v in out.items()}

    @classmethod
    def from_arrays(cls, d, prefix: str) -> "FoldTerms":
        def group(name):
            head = f"{prefix}/{name}."
            return {k[len(head):]: d[k].astype(np.float64) if d[k].dtype.kind == "f" else d[k]
                    for k in d.files if k.startswith(head)}
        return cls(held=group("held"), held_record=d[f"{prefix}/held_record"], held_rows=d[f"{prefix}/held_rows"],
                   rhythm_normals=group("rhythm_normals"), test=group("test"), test_record=d[f"{prefix}/test_record"],
                   test_aami=d[f"{prefix}/test_aami"], test_other=group("test_other"), af=group("af"))


def _say(msg: str, progress: bool) -> None:
    if progress:
        print(msg, file=sys.stderr, flush=True)


def _key(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:12]


def _renamed(beats: Beats, suffix: str) -> Beats:
    return dataclasses.replace(beats, record=np.char.add(beats.record.astype(str), suffix))


def fold_detector(data: SelectionData, train_records: tuple[str, ...], candidate: Candidate, training: TrainConfig,
                  cache: Path | None, progress: bool) -> RecurrentAEDetector:
    """A detector trained on the normal beats of `train_records` (cached on disk by configuration).
    Held out for early stopping and calibration: the default lead of `val_fraction` of the records."""
    path = None
    if cache is not None:
        key = _key(train_records, candidate.model.to_dict(), candidate.other_lead_training, training.to_dict())
        path = cache / f"detector-{key}.safetensors"
        if path.exists():
            return RecurrentAEDetector.load(path)
    context = data.beats.subset(np.isin(data.beats.record, train_records))
    normals = context.subset(context.aami == "N")
    held = heldout_mask(normals, training.val_fraction, training.seed)
    train, validation = normals.subset(~held), normals.subset(held)
    if candidate.other_lead_training:
        other = _renamed(data.other_lead.subset(np.isin(data.other_lead.record, train_records)), OTHER_SUFFIX)
        context = Beats.concat([context, other])
        train = Beats.concat([train, other.subset((other.aami == "N") & ~np.isin(
            other.record, np.char.add(np.unique(validation.record).astype(str), OTHER_SUFFIX)))])
    t0 = time.monotonic()
    det = RecurrentAEDetector(model=candidate.model, training=training)
    det.fit(train, validation, context=context, log=lambda m: None, description="DS1 selection fold")
    _say(f"  trained on {len(train)} normal beats in {time.monotonic() - t0:.0f} s ({len(det.history_)} epochs)",
         progress)
    if path is not None:
        det.save(path)
    return det


def fold_terms(det: RecurrentAEDetector, data: SelectionData, train_records: tuple[str, ...],
               test_records: tuple[str, ...], adaptation: AdaptConfig, masks: dict[str, AfMask | None]) -> FoldTerms:
    """The raw terms a fold detector gives its held-out and test records under one adaptation."""
    det.set_params(adaptation=adaptation)
    context = data.beats.subset(np.isin(data.beats.record, train_records))
    held_normal = context.subset(np.isin(context.record, det.training_data_["heldout_records"]) & (context.aami == "N"))
    held_beats, held_rows = record_population(held_normal, context)
    test_beats = data.beats.subset(np.isin(data.beats.record, test_records))
    normals = context.subset(context.aami == "N")
    premature, pause = rhythm_terms(normals.rr, rr_reference(normals, context, window_beats=0))
    other = data.other_lead.subset(np.isin(data.other_lead.record, test_records))
    terms = FoldTerms(held=det.raw_terms(held_beats)[0], held_record=held_beats.record, held_rows=held_rows,
                      rhythm_normals={"premature": premature, "pause": pause},
                      test=det.raw_terms(test_beats)[0], test_record=test_beats.record, test_aami=test_beats.aami,
                      test_other=det.raw_terms(other)[0])
    set_af_masks(terms, held_beats, test_beats, masks)
    return terms


def set_af_masks(terms: FoldTerms, held_beats: Beats, test_beats: Beats, masks: dict[str, AfMask | None]) -> None:
    """The AF masks of a fold's held-out and test beats, one per kind."""
    for kind, mask in masks.items():
        if mask is not None:
            terms.af[f"{kind}.held"], terms.af[f"{kind}.test"] = mask(held_beats)[terms.held_rows], mask(test_beats)


def refresh_af_masks(terms: dict[tuple[int, int], FoldTerms], data: SelectionData) -> None:
    """Recompute the AF masks of stored fold terms with the rhythm stage as it is now (the masks depend on
    the beats alone, not on the fold models, so no model is retrained)."""
    masks = af_masks(data)
    for t in terms.values():
        held = data.beats.subset(np.isin(data.beats.record, np.unique(t.held_record)))
        test = data.beats.subset(np.isin(data.beats.record, np.unique(t.test_record)))
        if not (np.array_equal(held.record, t.held_record) and np.array_equal(test.record, t.test_record)):
            raise ValueError("the stored fold terms do not match the selection data; recompute the terms")
        set_af_masks(t, held, test, masks)


def with_rr_reference(folds: list[FoldTerms], data: SelectionData, window: int, previous_share: float = 0.0,
                      typical_mads: float = 0.0, lean_min_rr_s: float = 0.0,
                      lean_min_p_similarity: float = NO_P_GATE) -> list[FoldTerms]:
    """The fold terms with the prematurity term against the reference of features.rr_reference (the local
    RR90 of `window` beats leaning `previous_share` to the cycle before where the cycles are steady, at
    least lean_min_rr_s long and of a sinus-like P wave; stored terms hold the whole record's RR90 alone).
    Prematurity depends on the beats alone, not on the model."""
    if window == 0 and previous_share == 0.0 and typical_mads == 0.0:
        return folds
    beats = data.beats
    premature = rhythm_terms(beats.rr, rr_reference(beats, window_beats=window, previous_share=previous_share,
                                                    typical_mads=typical_mads, lean_min_rr_s=lean_min_rr_s,
                                                    lean_min_p_similarity=lean_min_p_similarity))[0]
    out = []
    for t in folds:
        test, held = np.isin(beats.record, np.unique(t.test_record)), np.isin(beats.record, np.unique(t.held_record))
        if not (np.array_equal(beats.record[test], t.test_record) and np.array_equal(beats.record[held], t.held_record)):
            raise ValueError("the stored fold terms do not match the selection data; recompute the terms")
        training_normals = ~test & (beats.aami == "N")
        out.append(dataclasses.replace(
            t, held={**t.held, "premature": premature[held]}, test={**t.test, "premature": premature[test]},
            test_other={**t.test_other, "premature": premature[test]},  # the same beats, the same RR intervals
            rhythm_normals={**t.rhythm_normals, "premature": premature[training_normals]}))
    return out


def candidate_terms(data: SelectionData, candidate: Candidate, config: SelectionConfig, cache: Path | None,
                    progress: bool = True) -> dict[tuple[int, int], FoldTerms]:
    """(adaptation index, fold) -> the fold terms of one model candidate."""
    folds = record_folds(tuple(np.unique(data.beats.record)), config.folds, config.seed)
    masks = af_masks(data)
    out = {}
    for k, test_records in enumerate(folds):
        train_records = tuple(r for r in np.unique(data.beats.record) if r not in test_records)
        _say(f"[{candidate.name}] fold {k + 1}/{len(folds)}: test records {', '.join(test_records)}", progress)
        det = fold_detector(data, train_records, candidate, config.training, cache, progress)
        for a, adaptation in enumerate(config.adaptations):
            out[(a, k)] = fold_terms(det, data, train_records, test_records, adaptation, masks)
    return out


def save_terms(path: Path, terms: dict[tuple[int, int], FoldTerms]) -> None:
    arrays = {}
    for (a, k), t in terms.items():
        arrays |= t.arrays(f"{a}.{k}")
    np.savez_compressed(path, **arrays)


def load_terms(path: Path) -> dict[tuple[int, int], FoldTerms]:
    with np.load(path, allow_pickle=False) as d:
        prefixes = sorted({k.split("/")[0] for k in d.files})
        return {tuple(map(int, p.split("."))): FoldTerms.from_arrays(d, p) for p in prefixes}


# ---------------------------------------------------------------------------------------------
# scores from terms (the detector's own calibration and combination)


def score_fold(terms: FoldTerms, weights: ScoreWeights, calibration_kind: str, percentile: float, af: str,
               other_lead: bool = False) -> tuple[np.ndarray, float]:
    """Out-of-fold scores of the test beats and the fold's threshold, as the detector computes them."""
    rows = terms.held_rows
    calibration = {**calibrate({k: terms.held[k][rows] for k in MORPHOLOGY_TERMS}, MORPHOLOGY_TERMS),
                   **calibrate(terms.rhythm_normals, RHYTHM_TERMS)}
    held_af, test_af = terms.af.get(f"{af}.held"), terms.af.get(f"{af}.test")
    params = calibration_params(calibration_kind)
    per_record, scale = params["calibrate_per_record"], params["record_scale"]
    z_held = zscores(terms.held, terms.held_record, calibration, per_record, scale)
    threshold = float(np.percentile(combine({k: v[rows] for k, v in z_held.items()}, weights, held_af), percentile))
    test = terms.test_other if other_lead else terms.test
    return combine(zscores(test, terms.test_record, calibration, per_record, scale), weights, test_af), threshold


def pooled(folds: list[FoldTerms], weights: ScoreWeights, calibration: str, percentile: float, af: str,
           other_lead: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(AAMI class, score, score minus its fold's threshold) of every out-of-fold beat."""
    scored = [score_fold(t, weights, calibration, percentile, af, other_lead) for t in folds]
    scores = np.concatenate([s for s, _ in scored])
    margins = np.concatenate([s - threshold for s, threshold in scored])
    return np.concatenate([t.test_aami for t in folds]), scores, margins


def pooled_ap(folds: list[FoldTerms], weights: ScoreWeights, calibration: str, af: str) -> float:
    """Average precision of the pooled out-of-fold scores (no threshold involved)."""
    aami, scores, _ = pooled(folds, weights, calibration, DEFAULT_PERCENTILE, af)
    keep = aami != ""
    return float(average_precision_score(np.isin(aami[keep], ABNORMAL_CLASSES), scores[keep]))


def normal_flagged(folds: list[FoldTerms], weights: ScoreWeights, calibration: str, percentile: float, af: str,
                   other_lead: bool = False) -> float:
    """Share of the out-of-fold normal beats above their fold's threshold."""
    aami, _, margins = pooled(folds, weights, calibration, percentile, af, other_lead)
    return float(np.mean(margins[aami == "N"] > 0))


def _labels(aami: np.ndarray) -> Beats:
    n = len(aami)
    return Beats(record=np.zeros(n, str), sample=np.zeros(n, np.int64), time_s=np.zeros(n),
                 waves=np.zeros((n, 0), np.float32), rr=np.zeros((n, 0), np.float32), symbol=aami, aami=aami)


def pooled_metrics(folds: list[FoldTerms], weights: ScoreWeights, calibration: str, percentile: float, af: str,
                   other_lead: bool = False) -> dict:
    """ROC-AUC, AP and per-class AUC of the pooled scores; the operating point (sensitivity, specificity,
    recall, F1) of each beat against its own fold's threshold."""
    aami, scores, margins = pooled(folds, weights, calibration, percentile, af, other_lead)
    ranking, point = evaluate_detector(_labels(aami), scores, np.inf), evaluate_detector(_labels(aami), margins, 0.0)
    point |= {"roc_auc": ranking["roc_auc"], "ap": ranking["ap"]}
    for c, m in point["per_class"].items():
        m["auc"] = ranking["per_class"][c]["auc"]
    return point


def keeps_promise(folds: list[FoldTerms], weights: ScoreWeights, calibration: str, af: str) -> bool:
    """Whether the share of normal beats flagged on the other lead (a recording unlike the training
    data) stays within PROMISE_BAND of the promised 100 - DEFAULT_PERCENTILE %."""
    share = normal_flagged(folds, weights, calibration, DEFAULT_PERCENTILE, af, other_lead=True)
    promised = (100.0 - DEFAULT_PERCENTILE) / 100.0
    return PROMISE_BAND[0] * promised <= share <= PROMISE_BAND[1] * promised


def _weight_grid(config: SelectionConfig, learned: bool):
    recon, distance = ((1.0,), config.distance_weights) if learned else ((0.0,), (1.0,))
    for r, d, p, q in itertools.product(recon, distance, config.rhythm_weights, config.pause_weights):
        yield ScoreWeights(recon=r, distance=d, premature=p, pause=q)


def best_weights(folds: list[FoldTerms], config: SelectionConfig, learned: bool) -> tuple[float, ScoreWeights, str]:
    """(pooled AP, weights, calibration): the best AP over the weight grid among the settings
    that keep the threshold's promise on the other lead (all settings when none does)."""
    af = config.af_masks[0]
    found = [(pooled_ap(folds, w, c, af), w, c) for w in _weight_grid(config, learned) for c in CALIBRATIONS]
    kept = [f for f in found if keeps_promise(folds, f[1], f[2], af)] or found
    return max(kept, key=lambda t: t[0])


def best_percentile(folds: list[FoldTerms], weights: ScoreWeights, calibration: str, config: SelectionConfig) -> float:
    """The most sensitive percentile (the lowest) whose pooled specificity is at least MIN_SPECIFICITY."""
    for p in sorted(config.percentiles):
        if pooled_metrics(folds, weights, calibration, p, config.af_masks[0])["specificity"] >= MIN_SPECIFICITY:
            return p
    return max(config.percentiles)


def summary(m: dict, other: dict | None = None) -> dict:
    per = m["per_class"]
    out = {"roc_auc": m["roc_auc"], "ap": m["ap"], "f1": m["f1"], "specificity": m["specificity"],
           **{f"auc_{c}": per.get(c, {}).get("auc") for c in "SVF"},
           **{f"recall_{c}": per.get(c, {}).get("recall") for c in "SVF"}}
    if other is not None:
        out |= {"roc_auc_other_lead": other["roc_auc"], "ap_other_lead": other["ap"],
                "normal_flagged_other_lead": 1.0 - other["specificity"]}
    return out


# ---------------------------------------------------------------------------------------------
# the report


def _adapt_label(a: AdaptConfig) -> str:
    return "off" if a.steps == 0 else f"{a.steps} steps, lr {a.lr:g}"


def _window_label(window: int, previous_share: float = 0.0, typical_mads: float = 0.0,
                  lean_min_rr_s: float = 0.0, lean_min_p_similarity: float = NO_P_GATE) -> str:
    rr90 = "RR90 of the whole record" if window == 0 else f"RR90 over {window} beats"
    if typical_mads:
        rr90 += f" of normal-to-normal intervals (beats within {typical_mads:g} MADs)"
    if previous_share == 0.0:
        return rr90
    where = lean_gates_label(lean_min_rr_s, lean_min_p_similarity)
    return f"{rr90}, leaning {previous_share:g} to the cycle before{where}"


def _reference_label(settings: dict) -> str:
    """_window_label of a selected or no-learning settings dict (reports before a lever existed lack its key)."""
    return _window_label(settings["rr_reference_beats"], settings.get("rr_previous_share", 0.0),
                         settings.get("rr_typical_mads", 0.0), settings.get("rr_lean_min_s", 0.0),
                         settings.get("rr_lean_min_p_similarity", NO_P_GATE))


def best_reference(folds: list[FoldTerms], data: SelectionData, config: SelectionConfig, learned: bool,
                   references: list[tuple[int, float, float, float, float]]) -> tuple[list[dict], dict]:
    """Every prematurity reference (RR90 window, previous-cycle share, typical-shape bound, steady-lean
    cycle bound, P-wave gate) with its best weights and calibration, and the best of them by pooled AP."""
    found = []
    for window, share, typical, lean_min, p_gate in references:
        with_reference = with_rr_reference(folds, data, window, share, typical, lean_min, p_gate)
        ap, weights, calibration = best_weights(with_reference, config, learned)
        found.append({"window": window, "share": share, "typical": typical, "lean_min": lean_min, "p_gate": p_gate,
                      "folds": with_reference, "ap": ap, "weights": weights, "calibration": calibration})
    return found, max(found, key=lambda f: f["ap"])


def best_rr_reference(folds: list[FoldTerms], data: SelectionData, config: SelectionConfig,
                      learned: bool) -> tuple[list[dict], dict]:
    """The RR90 window with its best weights, then for that window RR90 over normal-to-normal intervals
    (config.rr_typical_mads): every setting tried and the pick. Measured too, as ablation rows, but not
    eligible: the pick's reference leaning to the cycle before in steady slow stretches of sinus rhythm
    (config.rr_lean_shares x config.rr_lean_min_s x config.rr_lean_min_p_similarity; the best of them
    also without its P-wave gate) and in every beat (config.rr_previous_shares). Both spare runs of
    atrial ectopy as a rate change: DS1 preferred the steady lean, DS2 did not (docs/evaluation/README.md)."""
    windows, pick = best_reference(folds, data, config, learned,
                                   [(w, 0.0, 0.0, 0.0, NO_P_GATE) for w in config.rr_reference_windows])
    normal_to_normal = best_reference(folds, data, config, learned,
                                      [(pick["window"], 0.0, k, 0.0, NO_P_GATE) for k in config.rr_typical_mads])[0]
    pick = max([pick, *normal_to_normal], key=lambda f: f["ap"])
    steady = best_reference(folds, data, config, learned,
                            [(pick["window"], share, pick["typical"], lean_min, p_gate)
                             for share in config.rr_lean_shares for lean_min in config.rr_lean_min_s
                             for p_gate in config.rr_lean_min_p_similarity])[0]
    leaning = best_reference(folds, data, config, learned,
                             [(pick["window"], share, pick["typical"], 0.0, NO_P_GATE)
                              for share in config.rr_previous_shares])[0]
    best_steady = max(steady, key=lambda f: f["ap"])
    ungated = best_reference(folds, data, config, learned, [(pick["window"], best_steady["share"], pick["typical"],
                                                             best_steady["lean_min"], NO_P_GATE)])[0]
    return windows + normal_to_normal + steady + ungated + leaning, pick


def selection_report(config: SelectionConfig, terms: dict[int, dict[tuple[int, int], FoldTerms]],
                     folds: list[tuple[str, ...]], data: SelectionData) -> dict:
    """Search the score settings of every (candidate, adaptation) with the whole record's RR90; then the
    prematurity reference of the winner (and of the no-learning score); the ablation rows of the winner."""
    af = config.af_masks[0]

    def fold_list(c, a):
        return [terms[c][(a, k)] for k in range(len(folds))]

    found = []
    for c, a in itertools.product(sorted(terms), range(len(config.adaptations))):
        ap, weights, calibration = best_weights(fold_list(c, a), config, learned=True)
        found.append({"candidate": c, "adaptation": a, "ap": ap, "weights": weights, "calibration": calibration})
    best = max(found, key=lambda f: f["ap"])
    windows, pick = best_rr_reference(fold_list(best["candidate"], best["adaptation"]), data, config, learned=True)
    chosen, w, calib = pick["folds"], pick["weights"], pick["calibration"]
    percentile = best_percentile(chosen, w, calib, config)
    base_windows, base_pick = best_rr_reference(fold_list(best["candidate"], best["adaptation"]), data, config,
                                                learned=False)
    base_folds, base_w, base_calib = base_pick["folds"], base_pick["weights"], base_pick["calibration"]
    base_pct = best_percentile(base_folds, base_w, base_calib, config)

    def row(label, fl, weights, calibration, pct=percentile, mask=af):
        return {"name": label, **summary(pooled_metrics(fl, weights, calibration, pct, mask),
                                         pooled_metrics(fl, weights, calibration, pct, mask, other_lead=True))}

    rows = [row("selected", chosen, w, calib)]
    for f in found:
        if (f["candidate"], f["adaptation"]) != (best["candidate"], best["adaptation"]):
            label = (f"model {config.candidates[f['candidate']].name}, adaptation "
                     f"{_adapt_label(config.adaptations[f['adaptation']])} (its best weights, "
                     f"{_window_label(0)})")
            rows.append(row(label, fold_list(f["candidate"], f["adaptation"]), f["weights"], f["calibration"]))
    rows += [row(f"{_window_label(f['window'], f['share'], f['typical'], f['lean_min'], f['p_gate'])} "
                 "(its best weights)", f["folds"], f["weights"], f["calibration"]) for f in windows if f is not pick]
    rows += [row(f"morphology calibrated {CALIBRATION_LABELS[c]}", chosen, w, c) for c in CALIBRATIONS if c != calib]
    rows += [row("template distance weight 0", chosen, dataclasses.replace(w, distance=0.0), calib),
             row("rhythm terms off", chosen, dataclasses.replace(w, premature=0.0, pause=0.0), calib),
             row("pause weight 0", chosen, dataclasses.replace(w, pause=0.0), calib)]
    rows += [row(f"AF mask: {kind}", chosen, w, calib, mask=kind) for kind in config.af_masks[1:]]
    rows += [row(f"threshold percentile {p:g}", chosen, w, calib, pct=p) for p in config.percentiles if p != percentile]
    rows += [row(f"{NO_LEARNING} (its best weights)", base_folds, base_w, base_calib, pct=base_pct),
             *(row(f"{NO_LEARNING}, morphology calibrated {CALIBRATION_LABELS[c]}", base_folds, base_w, c,
                   pct=base_pct) for c in CALIBRATIONS if c != base_calib)]
    rows += [row(f"{NO_LEARNING}, {_window_label(f['window'], f['share'], f['typical'], f['lean_min'], f['p_gate'])} "
                 "(its best weights)",
                 f["folds"], f["weights"],
                 f["calibration"], pct=base_pct) for f in base_windows if f is not base_pick]
    rows += [row(f"{NO_LEARNING}, AF mask: {kind}", base_folds, base_w, base_calib, pct=base_pct, mask=kind)
             for kind in config.af_masks[1:]]
    candidate = config.candidates[best["candidate"]]
    return {
        "protocol": f"{config.folds}-fold cross-validation by record inside MIT-BIH DS1 (seed {config.seed})",
        "folds": [list(f) for f in folds], "training": config.training.to_dict(),
        "criterion": f"pooled out-of-fold average precision (default lead, AF mask: {af}) among the settings "
                     f"whose share of normal beats flagged on the other lead at percentile {DEFAULT_PERCENTILE:g} "
                     f"stays within {PROMISE_BAND[0]:g}-{PROMISE_BAND[1]:g} x the promised "
                     f"{100 - DEFAULT_PERCENTILE:g} %, first for every model and adaptation with the whole "
                     f"record's RR90, then for the winner's RR90 window, then whether that RR90 is taken over "
                     f"normal-to-normal intervals only (weights searched again for each); "
                     f"threshold percentile: the lowest whose pooled specificity is >= {MIN_SPECIFICITY}",
        "selected": {"candidate": candidate.name, "model_config": candidate.model.to_dict(),
                     "other_lead_training": candidate.other_lead_training,
                     "adaptation": config.adaptations[best["adaptation"]].to_dict(),
                     "weights": dataclasses.asdict(w), **calibration_params(calib),
                     "rr_reference_beats": pick["window"], "rr_previous_share": pick["share"],
                     "rr_lean_min_s": pick["lean_min"], "rr_lean_min_p_similarity": pick["p_gate"],
                     "rr_typical_mads": pick["typical"],
                     "threshold_percentile": percentile, "af_mask": af},
        "no_learning": {"weights": dataclasses.asdict(base_w), **calibration_params(base_calib),
                        "rr_reference_beats": base_pick["window"], "rr_previous_share": base_pick["share"],
                        "rr_lean_min_s": base_pick["lean_min"], "rr_lean_min_p_similarity": base_pick["p_gate"],
                        "rr_typical_mads": base_pick["typical"],
                        "threshold_percentile": base_pct},
        "grid": {"candidates": [c.name for c in config.candidates],
                 "adaptations": [a.to_dict() for a in config.adaptations],
                 "distance_weights": config.distance_weights, "rhythm_weights": config.rhythm_weights,
                 "pause_weights": config.pause_weights, "rr_reference_windows": config.rr_reference_windows,
                 "rr_previous_shares": config.rr_previous_shares, "rr_lean_min_s": config.rr_lean_min_s,
                 "rr_lean_shares": config.rr_lean_shares, "rr_lean_min_p_similarity": config.rr_lean_min_p_similarity,
                 "rr_typical_mads": config.rr_typical_mads,
                 "percentiles": config.percentiles},
        "rows": rows,
    }


TABLE_COLUMNS = (("ROC-AUC", "roc_auc"), ("AP", "ap"), ("F1", "f1"), ("spec.", "specificity"), ("AUC S", "auc_S"),
                 ("AUC V", "auc_V"), ("AUC F", "auc_F"), ("recall S", "recall_S"), ("recall V", "recall_V"),
                 ("recall F", "recall_F"), ("ROC-AUC lead 2", "roc_auc_other_lead"), ("AP lead 2", "ap_other_lead"),
                 ("N flagged lead 2", "normal_flagged_other_lead"))


def markdown_rows(rows: list[dict], columns=TABLE_COLUMNS) -> str:
    lines = ["| setting | " + " | ".join(h for h, _ in columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for r in rows:
        cells = ["–" if r.get(k) is None or not np.isfinite(r[k]) else f"{r[k]:.3f}" for _, k in columns]
        lines.append(f"| {r['name']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _calibration_label(params: dict) -> str:
    return CALIBRATION_LABELS[params["record_scale"] if params["calibrate_per_record"] else TRAINING_CALIBRATION]


def selection_markdown(report: dict, plain: dict | None, speed: list[dict] | None) -> str:
    """docs/evaluation/selection.md: what was selected on what, the ablation table, the plain AE study."""
    sel, rows = report["selected"], {r["name"]: r for r in report["rows"]}
    chosen = rows["selected"]
    base = next(r for r in report["rows"] if r["name"].startswith(NO_LEARNING))
    a = sel["adaptation"]
    lines = [
        "# Selection by cross-validation inside MIT-BIH DS1", "",
        f"Protocol: {report['protocol']}; test records of the folds: "
        + "; ".join(", ".join(f) for f in report["folds"]) + ". Each fold model trains on the normal beats of "
        "the other folds' records (early stopping and calibration on 30 % of those records, held out), then "
        "scores every beat of its test records as `ecg-rnn score` scores a new recording (whole records, "
        "per-record calibration and patient adaptation from the record's own beats, the rhythm stage's AF mask). "
        "The test records are scored again on their other lead (V1 in most; V5, V2 or V4 in a few) to see how "
        "each setting transfers. DS2 was never read: it is scored once, by `ecg-rnn evaluate`, with this "
        "selection.", "",
        f"Criterion: {report['criterion']}.", "",
        "## Selected", "",
        f"- model: {sel['candidate']} (LSTM, hidden {sel['model_config']['hidden_size']}, latent "
        f"{sel['model_config']['latent_size']}, {sel['model_config']['step_samples']} samples per recurrent step, "
        f"template + RR context, residual decoder){', trained on both leads' if sel['other_lead_training'] else ''};",
        f"- patient adaptation: {a['steps']} steps, lr {a['lr']:g}, batches of {a['batch_size']} beats drawn from "
        f"the {100 * a['typical_share']:g} % of the record's beats nearest its template;",
        f"- score: {sel['weights']['recon']:g} * z(recon) + {sel['weights']['distance']:g} * z(template distance) + "
        f"{sel['weights']['premature']:g} * max(0, z(prematurity)) + {sel['weights']['pause']:g} * max(0, z(pause)); "
        f"morphology calibrated {_calibration_label(sel)}; prematurity against the "
        f"{_reference_label(sel)};",
        f"- threshold: the {sel['threshold_percentile']:g}th percentile of held-out normal scores;",
        f"- the no-learning template + RR score, by the same search: {report['no_learning']['weights']['premature']:g}"
        f" * prematurity, {report['no_learning']['weights']['pause']:g} * pause, calibrated "
        f"{_calibration_label(report['no_learning'])}, "
        f"{_reference_label(report['no_learning'])}, "
        f"{report['no_learning']['threshold_percentile']:g}th percentile.", "",
        f"Out of fold, the selected detector reaches ROC-AUC {chosen['roc_auc']:.3f} and AP {chosen['ap']:.3f}; "
        f"the no-learning score {base['roc_auc']:.3f} and {base['ap']:.3f}: the autoencoder adds "
        f"{chosen['ap'] - base['ap']:+.3f} AP on DS1.", "",
        "## Ablation (every row from the same fold models, the same out-of-fold beats)", "",
        "Rows named `model ..., adaptation ...` are the other candidates, each with the weights best for it "
        "(with the whole record's RR90, the first stage of the search); rows named `RR90 ...` are the second "
        "stage, the selected model with another RR90 window and the weights best for it, those `... of "
        "normal-to-normal intervals` the third (RR90 only over intervals between two beats of the record's usual "
        "shape), and those `..., leaning` "
        "the selected reference leaning (geometrically) to the cycle before the beat's, in every beat or only in "
        "steady slow stretches of sinus rhythm, measured but not eligible (docs/evaluation/README.md says why); "
        "the others change one setting of the selected detector. ROC-AUC and AP rank the pooled out-of-fold "
        "scores; F1, specificity and recall count each beat against its own fold's threshold; `lead 2` "
        "columns score the same test beats on their other lead.", "",
        markdown_rows(report["rows"]),
    ]
    if plain:
        lines += [
            "## The plain LSTM autoencoder of the tutorials", "",
            "Per-beat z-scored input, LSTM hidden 64, latent 32, the latent vector repeated into the decoder, one "
            "sample per step, reconstruction error alone as the score; the same folds. Loss histories: "
            "![loss](plain-lstm-loss.png)", "",
            "| training | epochs per fold | ROC-AUC | AP | AUC V | AUC S | AUC F |", "|---|---|---|---|---|---|---|"]
        for r in plain["rows"]:
            lines.append(f"| {r['name']} | {', '.join(map(str, r['epochs']))} | {r['roc_auc']:.3f} | {r['ap']:.3f} | "
                         f"{r['auc_V']:.3f} | {r['auc_S']:.3f} | {r['auc_F']:.3f} |")
        lines += ["", PLAIN_DIAGNOSIS, ""]
    if speed:
        lines += ["## What adaptation costs", "",
                  f"The model part of scoring one 30-minute record ({speed[0]['beats']} beats of {SPEED_RECORD}: "
                  f"inputs, adaptation, forward pass), {speed[0]['threads']} torch threads on the CPU of the lent "
                  "H100 machine (idle), median of 3 runs (`python -m ecg_rnn.selection speed`):", "",
                  "| model | adaptation | seconds |", "|---|---|---|"]
        lines += [f"| {r['candidate']} | {_adapt_label(AdaptConfig(**r['adaptation']))} | {r['seconds']:.3f} |"
                  for r in speed]
        lines.append("")
    lines += [NOT_TRIED, "", "## Reproduce", "", REPRODUCE]
    return "\n".join(lines) + "\n"


PLAIN_DIAGNOSIS = (
    "Why the old comparison reported 0.485 (below chance) for this baseline: it did not train. Its loss sits "
    "at 1.0, the error of reconstructing every z-scored beat as its own mean (a constant output), for several "
    "epochs before it falls; with lr 3e-3 and patience 3 the old budget (8 epochs x 16k beats) often stopped "
    "there, and a constant reconstruction scores every beat by its own squared amplitude, which ranks no class "
    "above another. The same plateau shows above (flat curves at 1.0, and at the beats' variance for "
    "record-normalised input). `ecg-rnn evaluate` now trains it with lr 1e-3 and patience 10 (up to 100 epochs "
    "of 8,000 beats), which leaves the plateau (checked on fold 2, where lr 3e-3 stayed on it: lr 1e-3 left it "
    "after 5 epochs of 4,000 beats), and keeps its loss history in the report. Trained, it is still weak "
    "between patients: per-beat z-scoring removes the amplitude (a ventricular beat's main cue) and a "
    "32-number code reconstructs abnormal shapes as well as normal ones (PCA with 30 components on z-scored "
    "beats behaves alike).")
NOT_TRIED = (
    "## Not tried\n\n"
    "- both leads as input channels at once: beats carry one lead (ecg_rnn.beats), so this needs a change of "
    "the beat stage; training on both leads' beats (one lead per beat) was tried instead (row `both leads`);\n"
    "- a recurrent model over consecutive beats, or the preceding beat as extra input;\n"
    "- augmentation by sampling rate, amplitude or noise: every recording is resampled to 128 Hz and scaled "
    "by its own median beat before the model sees it, so rate and gain reach the model only through filtering "
    "(see generalisation.md for what they change); noise augmentation was not tried.")
REPRODUCE = (
    "```\n"
    "python -m ecg_rnn.selection data                       # DS1 beats on both leads + reference AF mask\n"
    "python -m ecg_rnn.selection terms --candidate N        # N = 0..4: each model's fold models and terms\n"
    "python -m ecg_rnn.selection plain --candidate N        # N = 0..3: the plain AE study, one budget each\n"
    "python -m ecg_rnn.selection speed                      # what adaptation costs\n"
    "python -m ecg_rnn.selection plain                      # plain-lstm.json + plain-lstm-loss.png\n"
    "python -m ecg_rnn.selection report                     # search, selection.json + selection.md\n"
    "```\n\n"
    "The fold models and terms behind the tables were computed with `--device cuda` on a lent H100 "
    "(5 candidates and 4 plain budgets as parallel processes, 5.5 minutes); the search and this report on "
    "the CPU. Without a GPU the terms take about 10 minutes per small candidate on 2 CPU cores. The AF masks "
    "stored with the terms were recomputed after the rhythm stage gained its atrial evidence "
    "(`python -m ecg_rnn.selection masks`: the masks depend on the beats alone, not on the fold models).")


# ---------------------------------------------------------------------------------------------
# the plain LSTM autoencoder of the tutorials: what its training budget does to it


PLAIN_STUDY = (
    ("previous budget: 8 epochs x 16k beats", plain_lstm_config(), dict(epochs=8, max_train_beats=16000, patience=3)),
    ("early stopping", plain_lstm_config(), dict(epochs=60, max_train_beats=16000, patience=5)),
    ("early stopping, latent 8", dataclasses.replace(plain_lstm_config(), latent_size=8),
     dict(epochs=60, max_train_beats=16000, patience=5)),
    ("early stopping, record-normalised input", dataclasses.replace(plain_lstm_config(), input_norm="record"),
     dict(epochs=60, max_train_beats=16000, patience=5)),
)
PLAIN_SCORE = dict(rhythm_weight=0.0, pause_weight=0.0, distance_weight=0.0, calibrate_per_record=False)


def plain_study(data: SelectionData, config: SelectionConfig, variant: int, progress: bool = True) -> dict:
    """Out-of-fold ROC-AUC / AP of the plain autoencoder (reconstruction error alone, the tutorials'
    score) under one training budget and input (PLAIN_STUDY[variant]), with every fold's loss history."""
    name, model, budget = PLAIN_STUDY[variant]
    training = dataclasses.replace(config.training, **budget)
    folds = record_folds(tuple(np.unique(data.beats.record)), config.folds, config.seed)
    aami, scores, histories = [], [], []
    for k, test_records in enumerate(folds):
        context = data.beats.subset(~np.isin(data.beats.record, test_records))
        test = data.beats.subset(np.isin(data.beats.record, test_records))
        t0 = time.monotonic()
        det = RecurrentAEDetector(model=model, training=training, **PLAIN_SCORE)
        det.fit(context.subset(context.aami == "N"), context=context, log=lambda m: None)
        scores.append(det.score_samples(test) - det.threshold_)  # relative to the fold's threshold
        aami.append(test.aami)
        histories.append(det.history_)
        _say(f"[plain: {name}] fold {k + 1}: {len(det.history_)} epochs, {time.monotonic() - t0:.0f} s", progress)
    aami, s = np.concatenate(aami), np.concatenate(scores)
    m = evaluate_detector(Beats(record=np.zeros(len(s), str), sample=np.zeros(len(s), np.int64),
                                time_s=np.zeros(len(s)), waves=np.zeros((len(s), 0), np.float32),
                                rr=np.zeros((len(s), 0), np.float32), symbol=aami, aami=aami), s, 0.0)
    return {"name": name, "model": model.to_dict(), "training": training.to_dict(), **summary(m),
            "epochs": [len(h) for h in histories], "histories": histories,
            "mean_score_by_class": {c: float(np.mean(s[aami == c])) for c in ("N",) + ABNORMAL_CLASSES
                                    if (aami == c).any()}}


def plot_plain_histories(study: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(study["rows"]), figsize=(4.2 * len(study["rows"]), 3.6), sharey=True)
    for ax, row in zip(np.atleast_1d(axes), study["rows"]):
        for k, h in enumerate(row["histories"]):
            ep = [e["epoch"] for e in h]
            ax.plot(ep, [e["train_loss"] for e in h], "-", color=f"C{k}", lw=1, label=f"fold {k + 1} train")
            ax.plot(ep, [e["val_loss"] for e in h], "--", color=f"C{k}", lw=1, label=f"fold {k + 1} held-out")
        ax.set_yscale("log")
        ax.set_xlabel("epoch")
        ax.set_title(f"{row['name']}\nROC-AUC {row['roc_auc']:.3f}", fontsize=9)
    np.atleast_1d(axes)[0].set_ylabel("reconstruction MSE")
    np.atleast_1d(axes)[-1].legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------
# what adaptation costs


SPEED_RECORD = "208"  # a 30-minute DS1 record with many ectopic beats (2,955 beats)
SPEED_THREADS = 2
SPEED_REPEATS = 3


def adaptation_speed(data: SelectionData, config: SelectionConfig) -> list[dict]:
    """Seconds the detector's model part (inputs, adaptation, forward pass) takes on one 30-minute
    record on the CPU, for every model candidate and adaptation (median of SPEED_REPEATS; untrained
    weights: the cost does not depend on them)."""
    import torch

    beats = data.beats.subset(data.beats.record == SPEED_RECORD)
    rows = []
    previous = torch.get_num_threads()
    torch.set_num_threads(SPEED_THREADS)
    try:
        for candidate in config.candidates:
            for adaptation in config.adaptations:
                det = RecurrentAEDetector(model=candidate.model, training=TrainConfig(device="cpu"),
                                          adaptation=adaptation)
                det.model_ = RecurrentAutoencoder(candidate.model)
                times = []
                for _ in range(SPEED_REPEATS):
                    t0 = time.perf_counter()
                    det.raw_terms(beats)
                    times.append(time.perf_counter() - t0)
                rows.append({"candidate": candidate.name, "adaptation": adaptation.to_dict(), "beats": len(beats),
                             "seconds": float(np.median(times)), "threads": SPEED_THREADS})
    finally:
        torch.set_num_threads(previous)
    return rows


# ---------------------------------------------------------------------------------------------
# command line


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ecg_rnn.selection", description=__doc__.split("\n\n")[0])
    parser.add_argument("step", nargs="?", default="all",
                        choices=("all", "data", "terms", "masks", "report", "plain", "speed"))
    parser.add_argument("--out", type=Path, default=Path("docs/evaluation"), help="folder of the reports")
    parser.add_argument("--work", type=Path, help="folder of the fold terms (default: cache/selection)")
    parser.add_argument("--data", type=Path, help="selection data file (.npz; `data` writes it) instead of MIT-BIH")
    parser.add_argument("--candidate", type=int, help="terms: the model candidate; plain: the study variant")
    parser.add_argument("--device", default="cpu", help="torch device of the fold models (cpu, cuda)")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    progress = not args.quiet
    config = SelectionConfig()
    config = dataclasses.replace(config, training=dataclasses.replace(config.training, device=args.device))
    work = args.work or paths.cache_dir() / "selection"
    work.mkdir(parents=True, exist_ok=True)
    if args.step == "data":
        selection_data(progress=progress).save(args.data or work / "data.npz")
        return 0
    data = SelectionData.load(args.data) if args.data else selection_data(progress=progress)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.step == "speed":
        (args.out / "adaptation-speed.json").write_text(json.dumps(adaptation_speed(data, config), indent=2))
        return 0
    if args.step == "plain":  # one variant (--candidate) into the work folder, or the report of those there
        if args.candidate is not None:
            row = plain_study(data, config, args.candidate, progress)
            (work / f"plain-{args.candidate}.json").write_text(json.dumps(row, default=float))
            return 0
        rows = [json.loads((work / f"plain-{i}.json").read_text()) for i in range(len(PLAIN_STUDY))
                if (work / f"plain-{i}.json").exists()]
        study = {"protocol": f"{config.folds}-fold cross-validation by record inside MIT-BIH DS1 (seed {config.seed})",
                 "score": "log reconstruction MSE alone (the tutorials' score), relative to each fold's threshold",
                 "rows": rows}
        (args.out / "plain-lstm.json").write_text(json.dumps(study, indent=2, default=float))
        plot_plain_histories(study, args.out / "plain-lstm-loss.png")
        return 0
    if args.step == "masks":  # the stored terms' AF masks after a change of the rhythm stage
        for path in sorted(work.glob("terms-*.npz")):
            terms = load_terms(path)
            refresh_af_masks(terms, data)
            save_terms(path, terms)
            _say(f"AF masks refreshed in {path}", progress)
        return 0
    indices = [args.candidate] if args.step == "terms" else range(len(config.candidates))
    if args.step in ("all", "terms"):
        for c in indices:
            save_terms(work / f"terms-{c}.npz", candidate_terms(data, config.candidates[c], config, work, progress))
    if args.step in ("all", "report"):
        terms = {c: load_terms(work / f"terms-{c}.npz") for c in range(len(config.candidates))
                 if (work / f"terms-{c}.npz").exists()}
        report = selection_report(config, terms, record_folds(tuple(np.unique(data.beats.record)), config.folds,
                                                              config.seed), data)
        (args.out / "selection.json").write_text(json.dumps(report, indent=2, default=float))
        plain = args.out / "plain-lstm.json"
        speed = args.out / "adaptation-speed.json"
        (args.out / "selection.md").write_text(selection_markdown(
            report, json.loads(plain.read_text()) if plain.exists() else None,
            json.loads(speed.read_text()) if speed.exists() else None))
        print(json.dumps(report["selected"], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
