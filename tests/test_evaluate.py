"""Metrics and the evaluate CLI on a tiny configuration."""

import json
from pathlib import Path

import numpy as np
import pytest

from ecg_rnn.beats import Beats
from ecg_rnn.evaluate import evaluate_detector, markdown_table

SAMPLE = Path(__file__).resolve().parents[1] / "data" / "mitdb-sample"


def _beats(aami):
    n = len(aami)
    return Beats(record=np.full(n, "x"), sample=np.arange(n), time_s=np.arange(n) * 1.0,
                 waves=np.zeros((n, 90), np.float32), rr=np.ones((n, 5), np.float32),
                 symbol=np.array(aami), aami=np.array(aami))


def test_metrics_by_hand():
    aami = ["N"] * 6 + ["V", "V", "S", "S"]
    scores = np.array([0, 1, 2, 3, 4, 9, 8, 7, 6, 0.5])
    m = evaluate_detector(_beats(aami), scores, threshold=5)
    assert m["sensitivity"] == pytest.approx(3 / 4)
    assert m["specificity"] == pytest.approx(5 / 6)
    assert m["per_class"]["V"]["recall"] == 1.0 and m["per_class"]["S"]["recall"] == 0.5
    assert m["per_class"]["V"]["auc"] == pytest.approx(5 / 6)
    assert 0 < m["roc_auc"] < 1 and 0 < m["ap"] <= 1
    assert "F" not in m["per_class"]


def test_evaluate_cli_tiny(tmp_path, monkeypatch, capsys):
    """inter-patient on the bundled sample (208 is DS1; 100 and 232 are DS2), quick configs, 1 epoch."""
    from ecg_rnn.cli import main
    from ecg_rnn.detector import RecurrentAEDetector
    from ecg_rnn.model import ModelConfig
    from ecg_rnn.protocols import build_beat_set, inter_patient
    from ecg_rnn.train import TrainConfig

    monkeypatch.setenv("MITDB_DIR", str(SAMPLE))
    beats = build_beat_set(("100", "208", "232"), SAMPLE, cache_dir=tmp_path / "cache", progress=False)
    split = inter_patient(beats)
    det = RecurrentAEDetector(model=ModelConfig(hidden_size=8, latent_size=4),
                              training=TrainConfig(epochs=1, max_train_beats=300))
    det.fit(split.train, log=lambda m: None)
    det.save(tmp_path / "tiny.safetensors")
    out = tmp_path / "report"
    rc = main(["evaluate", "--model", str(tmp_path / "tiny.safetensors"), "--protocol", "inter-patient",
               "--quick", "--epochs", "1", "--max-beats", "300", "--out", str(out), "--quiet"])
    assert rc == 0
    report = json.loads((out / "inter-patient.json").read_text())
    names = [r["name"] for r in report["rows"]]
    assert any("PCA" in n for n in names) and any("IsolationForest" in n for n in names)
    assert any("plain LSTM" in n for n in names) and any("gru" in n for n in names)
    for row in report["rows"]:
        assert 0 <= row["metrics"]["roc_auc"] <= 1
    assert "| method |" in (out / "inter-patient.md").read_text()
    assert "ROC-AUC" in capsys.readouterr().out
    assert markdown_table(report).count("\n") == len(report["rows"]) + 1
