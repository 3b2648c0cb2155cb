"""The detector follows scikit-learn's estimator conventions, and the CLI's options do what they say."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from sklearn.base import clone

from ecg_rnn import cli
from ecg_rnn.beats import Beats, beats_from_record
from ecg_rnn.detector import DEFAULT_THRESHOLD_PERCENTILE, PARAMS, RecurrentAEDetector
from ecg_rnn.experiments import _train_settings
from ecg_rnn.model import ModelConfig
from ecg_rnn.paths import sample_record
from ecg_rnn.records import read_record
from ecg_rnn.train import TrainConfig

TINY_MODEL = ModelConfig(hidden_size=8, latent_size=4)
TINY_TRAINING = TrainConfig(epochs=1, max_train_beats=256, threads=1, device="cpu")


@pytest.fixture(scope="module")
def sample_beats() -> Beats:
    return Beats.concat([beats_from_record(read_record(sample_record(name)), peaks="reference")
                         for name in ("100", "208", "232")])


def test_get_params_returns_the_constructor_arguments_and_clone_works(sample_beats):
    det = RecurrentAEDetector(model=TINY_MODEL, training=TINY_TRAINING, threshold_percentile=97.0)
    params = det.get_params()
    assert set(params) == set(PARAMS)
    assert params["model"] is TINY_MODEL and params["threshold_percentile"] == 97.0
    det.fit(sample_beats)
    twin = clone(det)
    assert twin.get_params() == det.get_params()
    assert not hasattr(twin, "model_")  # clone copies the settings, not what was learned
    with pytest.raises(RuntimeError, match="not fitted"):
        twin.score_samples(sample_beats)
    twin.set_params(threshold_percentile=90.0)
    assert twin.threshold_percentile == 90.0
    with pytest.raises(ValueError, match="unknown parameter"):
        twin.set_params(threshold=1.0)


def test_fit_leaves_global_random_and_thread_state_alone(sample_beats):
    torch.set_num_threads(2)
    torch.manual_seed(1234)
    np.random.seed(1234)
    random.seed(1234)
    before = (torch.get_rng_state().clone(), np.random.get_state()[1].copy(), random.getstate())
    RecurrentAEDetector(model=TINY_MODEL, training=TINY_TRAINING).fit(sample_beats)
    assert torch.get_num_threads() == 2
    assert torch.equal(torch.get_rng_state(), before[0])
    assert np.array_equal(np.random.get_state()[1], before[1])
    assert random.getstate() == before[2]


def test_fit_is_reproducible_and_unaffected_by_the_callers_random_state(sample_beats):
    torch.manual_seed(1)
    a = RecurrentAEDetector(model=TINY_MODEL, training=TINY_TRAINING).fit(sample_beats)
    torch.manual_seed(2)
    b = RecurrentAEDetector(model=TINY_MODEL, training=TINY_TRAINING).fit(sample_beats)
    assert np.array_equal(a.score_samples(sample_beats), b.score_samples(sample_beats))


def test_library_training_has_no_time_budget():
    assert TrainConfig().time_budget_s is None


def test_scoring_honours_the_configured_device(sample_beats):
    det = RecurrentAEDetector(model=TINY_MODEL, training=TINY_TRAINING).fit(sample_beats)
    assert next(det._placed_model().parameters()).device.type == "cpu"
    if not torch.cuda.is_available():
        det.set_params(training=TrainConfig(device="cuda"))
        with pytest.raises(ValueError, match="CUDA is not available"):
            det.score_samples(sample_beats)


def test_one_forward_pass_gives_score_reconstruction_and_latent(sample_beats):
    det = RecurrentAEDetector(model=TINY_MODEL, training=TINY_TRAINING).fit(sample_beats)
    part = sample_beats.subset(slice(0, 300))
    analysis = det.analyse(part)
    assert np.array_equal(analysis.score, det.score_samples(part))
    assert np.array_equal(analysis.reconstruction, det.reconstruct(part))
    assert np.array_equal(analysis.latent, det.embed(part))
    assert analysis.reconstruction.shape == part.waves.shape and analysis.latent.shape == (300, 4)


def test_threshold_percentile_help_states_the_real_default():
    assert cli.DEFAULT_PERCENTILE == DEFAULT_THRESHOLD_PERCENTILE
    train = cli.build_parser()._subparsers._group_actions[0].choices["train"]
    option = next(a for a in train._actions if "--threshold-percentile" in a.option_strings)
    assert f"default {DEFAULT_THRESHOLD_PERCENTILE:g}" in option.help


def test_evaluate_passes_every_training_option_on():
    args = cli.build_parser().parse_args(["evaluate", "--lr", "0.01", "--batch-size", "7", "--patience", "1",
                                          "--device", "cpu", "--epochs", "2", "--threads", "1", "--max-beats", "0"])
    overrides = cli._train_overrides(args)
    assert overrides == {"lr": 0.01, "batch_size": 7, "patience": 1, "device": "cpu", "epochs": 2, "threads": 1,
                         "max_train_beats": None}
    for config in _train_settings("inter-patient", quick=False, seed=0, overrides=overrides):
        assert (config.lr, config.batch_size, config.patience, config.device, config.epochs) == (0.01, 7, 1, "cpu", 2)
        assert config.max_train_beats is None  # 0 means every beat, as for `ecg-rnn train`


def test_max_beats_zero_means_all_beats_for_train_too():
    args = cli.build_parser().parse_args(["train", "--max-beats", "0"])
    assert cli._train_overrides(args)["max_train_beats"] is None


def test_evaluate_quiet_prints_nothing_to_stderr(tmp_path, capfd):
    assert cli.main(["evaluate", "--no-compare", "--quick", "--quiet", "--out", str(tmp_path)]) == 0
    out, err = capfd.readouterr()
    assert err == ""
    assert "template + RR90" in out and (tmp_path / "inter-patient.json").is_file()
    assert (tmp_path / "roc_pr.png").is_file()  # the plots come with the report
