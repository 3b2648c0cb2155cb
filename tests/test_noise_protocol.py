"""The noise stress test protocol: NSTDB-style noise through the scoring path, compared with the
reference beats."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from ecg_rnn import cli
from ecg_rnn.detector import RecurrentAEDetector
from ecg_rnn.noise_protocol import (MIN_RANKED_BEATS, Counts, _metrics, _nearest_within, _stressed, evaluate_noise,
                                   select_noise_stratum, stressed_cuts)
from ecg_rnn.paths import default_model_path, sample_records_dir


@pytest.fixture(scope="module")
def report(monkeypatch_module):
    monkeypatch_module.setenv("MITDB_DIR", str(sample_records_dir()))
    detector = RecurrentAEDetector.load(default_model_path())
    return evaluate_noise(detector, ("100",), kinds=("em",), snrs=(12.0, -6.0), progress=False)


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as patch:
        yield patch


def _row(report, snr, stretch="noisy"):
    return next(r for r in report["rows"] if r["snr_db"] == snr and r["stretch"] == stretch)


def test_clean_record_is_found_whole(report):
    clean = _row(report, "clean")
    assert clean["reference_beats"] > 900  # record 100: 2273 beats, about half in the "noisy" stretches
    assert clean["sensitivity"] > 0.999 and clean["ppv"] > 0.999 and clean["coverage"] > 0.999
    assert clean["normal_flagged"] < 0.05


def test_heavy_noise_costs_detections_but_clean_stretches_keep_them(report):
    heavy, mild = _row(report, -6.0), _row(report, 12.0)
    assert heavy["reference_beats"] == mild["reference_beats"] == _row(report, "clean")["reference_beats"]
    assert heavy["coverage"] < mild["coverage"]  # at -6 dB beats are lost or marked noise
    assert _row(report, -6.0, "clean")["coverage"] > 0.99  # the clean stretches between stay clean


def test_cli_writes_the_noise_report(tmp_path, monkeypatch):
    monkeypatch.setenv("MITDB_DIR", str(sample_records_dir()))
    assert cli.main(["evaluate", "--protocol", "noise", "--records", "232", "--quiet", "--out", str(tmp_path)]) == 0
    saved = json.loads((tmp_path / "noise.json").read_text())
    assert saved["records"] == ["232"] and len(saved["rows"]) == 3 * 7 * 2  # kinds x (clean + 6 SNRs) x stretches
    assert np.isfinite([r["sensitivity"] for r in saved["rows"]]).all()
    assert "| em | 12.0 |" in (tmp_path / "noise.md").read_text()


def test_a_recorder_at_another_rate_gets_the_same_noisy_recording_resampled(monkeypatch_module):
    """--fs 128: the noise goes in at MIT-BIH's rate, the recording is then sampled as a 128 Hz recorder
    samples it, and the reference beats move with it: they are still found where the noise leaves them."""
    detector = RecurrentAEDetector.load(default_model_path())
    native, recorded = (next(stressed_cuts(detector, ("100",), ("em",), (12.0,), progress=False, recorder_fs=fs))
                        for fs in (None, 128.0))
    assert native.fs == 360.0 and recorded.fs == 128.0
    assert recorded.n_samples == pytest.approx(native.n_samples * 128 / 360, abs=1)
    np.testing.assert_allclose(recorded.ref_sample / 128.0, native.ref_sample / 360.0, atol=0.5 / 128)
    for job in (native.scored(detector), recorded.scored(detector)):
        clean_part = ~job.noisy[job.ref_sample] & job.after_learning[job.ref_sample]
        found = _nearest_within(job.ref_sample, job.sample, int(0.05 * job.fs)) >= 0
        assert found[clean_part].mean() > 0.99


def test_cli_resamples_the_stressed_recordings_and_puts_the_noise_on_the_leads_asked(tmp_path, monkeypatch):
    monkeypatch.setenv("MITDB_DIR", str(sample_records_dir()))
    assert cli.main(["evaluate", "--protocol", "noise", "--records", "232", "--fs", "128", "--noisy-leads", "chosen",
                     "--quiet", "--out", str(tmp_path)]) == 0
    saved = json.loads((tmp_path / "noise.json").read_text())
    assert saved["recorder_fs"] == 128.0 and saved["noisy_leads"] == "chosen"
    assert "--fs 128 --noisy-leads chosen" in (tmp_path / "noise.md").read_text()


def test_noise_on_the_chosen_lead_alone_leaves_the_others_as_recorded():
    leads = np.random.default_rng(0).standard_normal((360 * 480, 2)) * 0.1  # 8 minutes: noise from minute 5 on
    peaks = np.arange(100, 360 * 480 - 100, 300)
    both, chosen = (_stressed(leads, 360.0, "em", 0.0, peaks, 1, where) for where in ("all", "chosen"))
    np.testing.assert_array_equal(chosen[:, 1], leads[:, 1])
    np.testing.assert_array_equal(chosen[:, 0], both[:, 0])  # the same noise on the chosen lead
    assert not np.allclose(both[:, 1], leads[:, 1])


def _cell(normal: int, abnormal: int) -> Counts:
    labels = np.array(["N"] * normal + ["V"] * abnormal)
    return Counts(labels=[labels], scores=[(labels == "V").astype(float)], flags=[labels == "V"])


def test_a_cell_ranks_its_beats_only_with_enough_of_each_kind():
    few, enough = _metrics(_cell(20, MIN_RANKED_BEATS - 1)), _metrics(_cell(20, MIN_RANKED_BEATS))
    assert few["abnormal_beats"] == MIN_RANKED_BEATS - 1 and np.isnan(few["roc_auc"]) and np.isnan(few["ap"])
    assert few["abnormal_recall"] == 1.0  # the recall is counted however few they are
    assert enough["abnormal_beats"] == MIN_RANKED_BEATS and enough["roc_auc"] == enough["ap"] == 1.0


def test_noise_seed_is_the_same_in_every_process():
    """The figures must repeat: the seed may not depend on the process's string-hash salt."""
    code = "from ecg_rnn.noise_protocol import noise_seed; print(noise_seed('100', 'em'), noise_seed('100', 'ma'))"
    seeds = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                            env={**os.environ, "PYTHONHASHSEED": salt}).stdout for salt in ("1", "2", "3")}
    assert len(seeds) == 1 and len(set(next(iter(seeds)).split())) == 2


@pytest.fixture(scope="module")
def stressed_100(monkeypatch_module):
    """Record 100 with electrode motion at 12 dB, scored with and without the noisy stratum (and without the
    second lead, which judges some noisy beats on the other lead: only the stratum differs)."""
    monkeypatch_module.setenv("MITDB_DIR", str(sample_records_dir()))
    detector = RecurrentAEDetector.load(default_model_path())
    cut = next(stressed_cuts(detector, ("100",), ("em",), (12.0,), progress=False))
    return {(value, spread): cut.scored(copy.copy(detector).set_params(noise_stratum_probability=value,
                                                                        noise_stratum_spread_s=spread), float("inf"))
            for value, spread in ((1.0, 0.0), (0.2, 0.0), (0.3, 0.0), (0.3, 20.0))}


def _normal_flagged(job, stretch_mask):
    at = stretch_mask[np.clip(job.sample, 0, len(stretch_mask) - 1)]
    near = np.abs(job.ref_sample[np.clip(np.searchsorted(job.ref_sample, job.sample), 0, len(job.ref_sample) - 1)]
                  - job.sample) <= 0.15 * job.fs
    return job.flagged[at & near & job.ok].mean()


def test_noisy_beats_are_calibrated_among_themselves(stressed_100):
    whole, split = stressed_100[1.0, 0.0], stressed_100[0.2, 0.0]
    np.testing.assert_array_equal(whole.sample, split.sample)  # the same beats, only calibrated apart
    noisy_at = whole.noisy[np.clip(whole.sample, 0, len(whole.noisy) - 1)]
    clean_at = ~noisy_at & whole.after_learning[np.clip(whole.sample, 0, len(whole.noisy) - 1)]
    assert np.median(whole.noise_probability[noisy_at]) > 0.2 > np.median(whole.noise_probability[clean_at])
    noisy_stretch, clean_stretch = whole.noisy, ~whole.noisy & whole.after_learning
    assert _normal_flagged(whole, noisy_stretch) > 0.2  # against the clean beats' spread noise looks abnormal
    assert _normal_flagged(split, noisy_stretch) < 0.5 * _normal_flagged(whole, noisy_stretch)
    assert _normal_flagged(split, clean_stretch) < 0.05


def test_the_noisy_stratum_spread_takes_in_the_noisy_stretch_between_its_noisiest_windows(stressed_100):
    """Electrode motion comes in bursts: windows between a burst's noisiest ones are called clean by the
    quality model yet deform their beats; spreading the stratum over 20 s calibrates them with the noise."""
    own, spread = stressed_100[0.3, 0.0], stressed_100[0.3, 20.0]
    np.testing.assert_array_equal(own.sample, spread.sample)
    assert _normal_flagged(own, own.noisy) > 0.15
    assert _normal_flagged(spread, spread.noisy) < 0.5 * _normal_flagged(own, own.noisy)
    assert _normal_flagged(spread, ~spread.noisy & spread.after_learning) < 0.05


def test_noise_stratum_selection_takes_the_best_mean_of_clean_and_noisy_roc_auc(monkeypatch):
    monkeypatch.setenv("MITDB_DIR", str(sample_records_dir()))
    detector = RecurrentAEDetector.load(default_model_path())
    report = select_noise_stratum(detector, ("208",), ("232",), strata=(1.0, 0.2), spreads_s=(0.0, 20.0),
                                  kinds=("ma",), snrs=(6.0,), progress=False)
    for row in report["rows"]:
        assert row["criterion"] == pytest.approx((row["clean_roc_auc"] + row["noisy_roc_auc"]) / 2)
    aucs = {(r["noise_stratum_probability"], r["noise_stratum_spread_s"]): r["criterion"] for r in report["rows"]}
    assert set(aucs) == {(1.0, 0.0), (0.2, 0.0), (0.2, 20.0)}  # without a stratum the spread is not tried
    best = max(aucs, key=aucs.get)
    assert report["selected"] == {"noise_stratum_probability": best[0], "noise_stratum_spread_s": best[1]}
    assert all(0.5 < a < 1.0 for a in aucs.values())  # 208 holds hundreds of V beats: ranking works
    assert {"ma 6 dB noisy", "ma 6 dB clean", "unchanged records, clean stretches"} <= set(report["rows"][0])
