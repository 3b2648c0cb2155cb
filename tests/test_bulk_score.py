"""Bulk scoring: a folder of recordings on a process pool, resumable, one bad file does not stop the rest."""

from __future__ import annotations

import subprocess
import sys

import pandas as pd
import wfdb

from ecg_rnn.paths import default_model_path
from ecg_rnn.scoring import ANNOTATION_EXTENSION, expand_inputs, score_many


def _folder(tmp_path, sample_dir, seconds=120):
    """Three short WFDB excerpts of the sample records, plus one broken header."""
    folder = tmp_path / "in"
    folder.mkdir()
    for name in ("100", "208", "232"):
        rec = wfdb.rdrecord(str(sample_dir / name), sampto=int(seconds * 360))
        wfdb.wrsamp(f"x{name}", fs=360, units=rec.units, sig_name=rec.sig_name, p_signal=rec.p_signal,
                    fmt=["16", "16"], write_dir=str(folder))
    (folder / "broken.hea").write_text("broken 1 360 1000\nbroken.dat 16 200 16 0 0 0 0 II\n")
    return folder


def test_folder_is_scored_in_parallel_and_resumes(tmp_path, sample_dir):
    folder = _folder(tmp_path, sample_dir)
    paths = expand_inputs([folder])
    assert [p.name for p in paths] == ["broken", "x100", "x208", "x232"]
    out = tmp_path / "out"
    first = score_many(paths, default_model_path(), out, workers=2, progress=False)
    assert sorted(s.name for s in first.scored) == ["x100", "x208", "x232"]
    assert [(p.name, "missing" in m) for p, m in first.failed] == [("broken", True)]
    for name in ("x100", "x208", "x232"):
        table = pd.read_csv(out / f"{name}.csv")
        assert len(table) > 100 and {"sample", "score", "percentile", "flagged"} <= set(table.columns)
        wfdb.rdann(str(out / name), ANNOTATION_EXTENSION)
    stamp = (out / "x100.csv").stat().st_mtime_ns
    again = score_many(paths, default_model_path(), out, workers=2, progress=False)
    assert sorted(p.name for p in again.skipped) == ["x100", "x208", "x232"] and not again.scored
    assert (out / "x100.csv").stat().st_mtime_ns == stamp
    redo = score_many(paths[1:2], default_model_path(), out, workers=1, overwrite=True, progress=False)
    assert [s.name for s in redo.scored] == ["x100"]


def test_parallel_equals_serial(tmp_path, sample_dir):
    folder = _folder(tmp_path, sample_dir, seconds=60)
    (folder / "broken.hea").unlink()
    paths = expand_inputs([folder])
    score_many(paths, default_model_path(), tmp_path / "a", workers=1, progress=False)
    score_many(paths, default_model_path(), tmp_path / "b", workers=2, progress=False)
    for p in paths:
        a, b = (pd.read_csv(tmp_path / d / f"{p.name}.csv") for d in ("a", "b"))
        pd.testing.assert_frame_equal(a, b)


def test_cli_many_records_reports_each_failure_and_exits_2(tmp_path, sample_dir):
    folder = _folder(tmp_path, sample_dir, seconds=60)
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, "-m", "ecg_rnn", "score", str(folder), "--out", str(out),
                           "--workers", "2"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 2
    errors = [line for line in done.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and "broken" in errors[0] and "Traceback" not in done.stderr
    assert sorted(p.name for p in out.glob("*.csv")) == ["x100.csv", "x208.csv", "x232.csv"]
    again = subprocess.run([sys.executable, "-m", "ecg_rnn", "score", str(folder / "x100"), "--out", str(out)],
                           capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and "skipped 1 recording(s) already scored" in again.stdout
