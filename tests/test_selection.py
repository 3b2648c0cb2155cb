"""Selection by cross-validation by record: folds, fold terms, and the detector's own scores rebuilt
from them (so what is selected is what the detector computes)."""

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from ecg_rnn.adapt import AdaptConfig
from ecg_rnn.baselines import TEMPLATE_RR_PERCENTILE, TEMPLATE_RR_WEIGHTS, TemplateRRBaseline
from ecg_rnn.detector import (DEFAULT_ADAPTATION, DEFAULT_DISTANCE_WEIGHT, DEFAULT_MODEL_CONFIG,
                              DEFAULT_PAUSE_WEIGHT, DEFAULT_RHYTHM_WEIGHT, DEFAULT_THRESHOLD_PERCENTILE,
                              DEFAULT_CALIBRATE_PER_RECORD, DEFAULT_NOISE_STRATUM_PROBABILITY,
                              DEFAULT_NOISE_STRATUM_SPREAD_S, DEFAULT_RECORD_SCALE, DEFAULT_RR_LEAN_MIN_P_SIMILARITY,
                              DEFAULT_RR_LEAN_MIN_S, DEFAULT_RR_PREVIOUS_SHARE, DEFAULT_RR_REFERENCE_BEATS,
                              DEFAULT_RR_TYPICAL_MADS)
from ecg_rnn.model import ModelConfig
from ecg_rnn.protocols import DS1, build_beat_set
from ecg_rnn.selection import (Candidate, SelectionData, af_masks, fold_detector, fold_terms, load_terms,
                               record_folds, refresh_af_masks, save_terms, score_fold, with_rr_reference)
from ecg_rnn.train import TrainConfig
from ecg_rnn.variants import OTHER_LEAD, variant_beat_set
from local_data import SAMPLE_DIR

REPO = Path(__file__).resolve().parents[1]
SAMPLES = ("100", "208", "232")
TINY = Candidate("tiny", ModelConfig(hidden_size=8, latent_size=4, step_samples=6))
TINY_TRAINING = TrainConfig(epochs=1, max_train_beats=300, threads=1, device="cpu")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    cache = tmp_path_factory.mktemp("cache")
    beats = build_beat_set(SAMPLES, SAMPLE_DIR, cache_dir=cache, progress=False)
    other = variant_beat_set(SAMPLES, SAMPLE_DIR, OTHER_LEAD, cache_dir=cache, progress=False)
    return SelectionData(beats=beats, other_lead=other, reference_af=np.zeros(len(beats), bool))


def test_folds_partition_the_records():
    folds = record_folds(DS1, 5, seed=0)
    assert sorted(r for f in folds for r in f) == sorted(DS1)
    assert {len(f) for f in folds} == {4, 5}
    assert record_folds(DS1, 5, seed=0) == folds and record_folds(DS1, 5, seed=1) != folds


def test_fold_terms_rebuild_the_detectors_scores(data, tmp_path):
    """Scores and threshold computed from saved fold terms equal the fold detector's own, with
    adaptation, per-record calibration and an AF mask: selection searches what the detector does."""
    train_records, test_records = ("100", "232"), ("208",)
    det = fold_detector(data, train_records, TINY, TINY_TRAINING, cache=None, progress=False)
    adaptation = AdaptConfig(steps=3, batch_size=16)
    masks = af_masks(data)
    terms = fold_terms(det, data, train_records, test_records, adaptation, masks)
    save_terms(tmp_path / "t.npz", {(0, 0): terms})
    terms = load_terms(tmp_path / "t.npz")[(0, 0)]
    stored = {k: v.copy() for k, v in terms.af.items()}
    terms.af = {k: ~v for k, v in stored.items()}  # as if an older rhythm stage had made them
    refresh_af_masks({(0, 0): terms}, data)  # `selection masks` after a rhythm-stage change
    assert stored.keys() == terms.af.keys() and all(np.array_equal(terms.af[k], v) for k, v in stored.items())
    det.set_params(adaptation=adaptation, distance_weight=0.5, rhythm_weight=1.0, rr_reference_beats=100,
                   rr_previous_share=0.5, rr_lean_min_s=0.6, rr_lean_min_p_similarity=0.3, rr_typical_mads=3.0)
    context = data.beats.subset(np.isin(data.beats.record, train_records))
    held = np.isin(context.record, det.training_data_["heldout_records"])
    normal = context.aami == "N"
    det.recalibrate(context.subset(normal & ~held), context.subset(normal & held), context, masks["detected"])
    test = data.beats.subset(data.beats.record == "208")
    expected = det.score_samples(test, in_af=masks["detected"](test))
    whole_record, _ = score_fold(terms, det.weights, det.record_scale, det.threshold_percentile, "detected")
    assert not np.allclose(whole_record, expected, atol=1e-3)  # stored terms hold the whole record's RR90...
    terms = with_rr_reference([terms], data, det.rr_reference_beats, det.rr_previous_share, det.rr_typical_mads,
                              det.rr_lean_min_s, det.rr_lean_min_p_similarity)[0]  # ...the search swaps in its own
    scores, threshold = score_fold(terms, det.weights, det.record_scale, det.threshold_percentile, "detected")
    np.testing.assert_allclose(scores, expected, rtol=1e-4, atol=1e-4)  # fold terms are stored as float32
    assert threshold == pytest.approx(det.threshold_, abs=1e-3)
    other, _ = score_fold(terms, det.weights, det.record_scale, det.threshold_percentile, "detected",
                          other_lead=True)
    assert other.shape == scores.shape and not np.allclose(other, scores)


def test_the_shipped_defaults_are_what_selection_chose():
    selected = json.loads((REPO / "docs" / "evaluation" / "selection.json").read_text())["selected"]
    assert ModelConfig(**selected["model_config"]) == DEFAULT_MODEL_CONFIG
    assert AdaptConfig(**selected["adaptation"]) == DEFAULT_ADAPTATION
    assert selected["weights"] == {"recon": 1.0, "distance": DEFAULT_DISTANCE_WEIGHT,
                                   "premature": DEFAULT_RHYTHM_WEIGHT, "pause": DEFAULT_PAUSE_WEIGHT}
    assert selected["calibrate_per_record"] == DEFAULT_CALIBRATE_PER_RECORD
    assert selected["record_scale"] == DEFAULT_RECORD_SCALE
    assert selected["rr_reference_beats"] == DEFAULT_RR_REFERENCE_BEATS
    assert selected["rr_previous_share"] == DEFAULT_RR_PREVIOUS_SHARE
    assert selected["rr_lean_min_s"] == DEFAULT_RR_LEAN_MIN_S
    assert selected["rr_lean_min_p_similarity"] == DEFAULT_RR_LEAN_MIN_P_SIMILARITY
    assert selected["rr_typical_mads"] == DEFAULT_RR_TYPICAL_MADS
    assert selected["threshold_percentile"] == DEFAULT_THRESHOLD_PERCENTILE
    no_learning = json.loads((REPO / "docs" / "evaluation" / "selection.json").read_text())["no_learning"]
    assert no_learning["weights"] == dataclasses.asdict(TEMPLATE_RR_WEIGHTS)
    assert no_learning["calibrate_per_record"] == TemplateRRBaseline().calibrate_per_record
    assert no_learning["record_scale"] == TemplateRRBaseline().record_scale
    assert no_learning["rr_reference_beats"] == TemplateRRBaseline().rr_reference_beats
    assert no_learning["rr_previous_share"] == TemplateRRBaseline().rr_previous_share
    assert no_learning["rr_lean_min_s"] == TemplateRRBaseline().rr_lean_min_s
    assert no_learning["rr_lean_min_p_similarity"] == TemplateRRBaseline().rr_lean_min_p_similarity
    assert no_learning["rr_typical_mads"] == TemplateRRBaseline().rr_typical_mads
    assert no_learning["threshold_percentile"] == TEMPLATE_RR_PERCENTILE
    noise = json.loads((REPO / "docs" / "evaluation" / "noise" / "selection.json").read_text())
    assert noise["selected"] == {"noise_stratum_probability": DEFAULT_NOISE_STRATUM_PROBABILITY,
                                 "noise_stratum_spread_s": DEFAULT_NOISE_STRATUM_SPREAD_S}
