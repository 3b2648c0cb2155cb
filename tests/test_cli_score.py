"""`ecg-rnn score`: per-record CSV + WFDB annotation file; bad input is one line and exit 2."""

import pickle
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ecg_rnn.cli import main

SAMPLE = Path(__file__).resolve().parents[1] / "ecg_rnn" / "samples" / "mitdb"
COLUMNS = ["sample", "time_s", "rr_prev_s", "score", "percentile", "flagged", "quality", "rhythm", "suggested_class",
           "scored_lead"]


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    """A tiny detector (2 epochs, a few hundred beats of record 100) saved to a temporary file."""
    from ecg_rnn.beats import beats_from_record
    from ecg_rnn.detector import RecurrentAEDetector
    from ecg_rnn.model import ModelConfig
    from ecg_rnn.records import read_record
    from ecg_rnn.train import TrainConfig

    beats = beats_from_record(read_record(SAMPLE / "100"), peaks="reference")
    normal = beats.subset(np.flatnonzero(beats.aami == "N")[:500])
    det = RecurrentAEDetector(model=ModelConfig(hidden_size=8, latent_size=4),
                              training=TrainConfig(epochs=2, batch_size=64, max_train_beats=300))
    det.fit(normal, log=lambda m: None)
    path = tmp_path_factory.mktemp("model") / "tiny.safetensors"
    det.save(path)
    return path


def test_score_writes_csv_and_annotations(model_file, tmp_path, capsys):
    import wfdb

    out = tmp_path / "out"
    rc = main(["score", str(SAMPLE / "208"), str(SAMPLE / "100"), "--model", str(model_file), "--out", str(out),
               "--peaks", "reference"])
    assert rc == 0
    for name in ("208", "100"):
        table = pd.read_csv(out / f"{name}.csv")
        assert list(table.columns) == COLUMNS + ["ref_symbol", "ref_aami"]
        assert len(table) > 1000 and table["flagged"].dtype == bool
        ann = wfdb.rdann(str(out / name), "ecgrnn")
        flagged = table.loc[table["flagged"], "sample"].to_numpy()
        assert len(flagged) > 0  # the model's 95th-percentile threshold flags beats in both records
        beat_marks = np.isin(ann.symbol, ["V", "S", "F", "Q"])  # rhythm (+) and noise (~) marks aside
        np.testing.assert_array_equal(ann.sample[beat_marks], flagged)
        suggested = table.loc[table["flagged"], "suggested_class"].map({"V": "V", "S": "S", "F": "F"}).fillna("Q")
        assert list(np.asarray(ann.symbol)[beat_marks]) == list(suggested)
        events = pd.read_csv(out / f"{name}.events.csv")
        assert list(events.columns[:3]) == ["kind", "start_s", "end_s"]
        assert set(table["quality"]) <= {"ok", "noise"} and set(table["rhythm"].dropna()) <= {"AF"}
    assert "208" in capsys.readouterr().out


def test_score_detected_peaks_and_csv_input(model_file, tmp_path):
    """Detected R-peaks on a CSV record sampled at another rate (resampled by the pipeline)."""
    import wfdb

    from ecg_rnn.records import read_record

    rec = read_record(SAMPLE / "100")
    x = rec.signal[: int(60 * rec.fs)]
    t = np.arange(len(x)) / rec.fs
    keep = np.arange(0, len(x), 3)  # 120 Hz
    csv = tmp_path / "clip.csv"
    pd.DataFrame({"time": t[keep], "MLII": x[keep]}).to_csv(csv, index=False)
    out = tmp_path / "out"
    assert main(["score", str(csv), "--model", str(model_file), "--out", str(out)]) == 0
    table = pd.read_csv(out / "clip.csv")
    assert list(table.columns) == COLUMNS  # no reference annotations
    assert 55 <= len(table) <= 95  # about 75 beats in a minute of record 100
    wfdb.rdann(str(out / "clip"), "ecgrnn")


def test_score_bad_inputs(model_file, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["score", str(tmp_path / "nope"), "--model", str(model_file), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("ecg-rnn score: error:") and "\n" not in err
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    evil = tmp_path / "evil.safetensors"
    evil.write_bytes(pickle.dumps(Evil()))
    assert main(["score", str(SAMPLE / "100"), "--model", str(evil), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert "not a safetensors file" in err and "\n" not in err
    assert not marker.exists()
    assert main(["score", str(SAMPLE / "100"), "--model", str(tmp_path / "missing.safetensors"),
                 "--out", str(out)]) == 2
