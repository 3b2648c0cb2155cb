"""The noise stress test protocol: NSTDB-style noise through the scoring path, compared with the
reference beats."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from ecg_rnn import cli
from ecg_rnn.detector import RecurrentAEDetector
from ecg_rnn.noise_protocol import evaluate_noise
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


def test_noise_seed_is_the_same_in_every_process():
    """The figures must repeat: the seed may not depend on the process's string-hash salt."""
    code = "from ecg_rnn.noise_protocol import noise_seed; print(noise_seed('100', 'em'), noise_seed('100', 'ma'))"
    seeds = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                            env={**os.environ, "PYTHONHASHSEED": salt}).stdout for salt in ("1", "2", "3")}
    assert len(seeds) == 1 and len(set(next(iter(seeds)).split())) == 2
