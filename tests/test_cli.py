"""The command line, run as a real process: one row per beat, and one error line on bad input."""

from __future__ import annotations

import subprocess
import sys

import pandas as pd
import pytest

from ecg_rnn.records import read_record


def run_cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "ecg_rnn", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, timeout=120)


def test_beats_csv_from_wfdb_record(tmp_path, sample_dir):
    out = tmp_path / "beats.csv"
    result = run_cli("beats", sample_dir / "232", "--out", out)
    assert result.returncode == 0, result.stderr
    table = pd.read_csv(out, keep_default_na=False)
    assert list(table.columns) == ["record", "sample", "time_s", "rr_prev_s", "rr_next_s", "rr_local_s",
                                   "rr_prev_ratio", "rr_next_ratio", "ref_symbol", "ref_aami"]
    annotations = read_record(sample_dir / "232").annotations
    assert len(table) == sum(s in "NLRejAaJSVEF/fQ" for s in annotations.symbol)
    assert set(table.ref_aami) <= {"N", "S", "V", "F", "Q"}
    assert "beats" in result.stdout


def test_beats_csv_from_csv_with_detected_peaks(tmp_path, sample_dir):
    x = read_record(sample_dir / "100").signal[: 360 * 30]
    src = tmp_path / "excerpt.csv"
    pd.DataFrame({"MLII": x}).to_csv(src, index=False)
    out = tmp_path / "beats.csv"
    result = run_cli("beats", src, "--fs", 360, "--out", out, "--waves")
    assert result.returncode == 0, result.stderr
    table = pd.read_csv(out, keep_default_na=False)
    assert 30 <= len(table) <= 45  # about 75 bpm over 30 s
    assert (table.ref_symbol == "").all()
    assert "w89" in table.columns


@pytest.mark.parametrize("make_input,message", [
    (lambda d: d / "missing", "header file not found"),
    (lambda d: (d / "junk.hea").write_bytes(b"\x00\x01binary") and d / "junk", "binary data"),
    (lambda d: (d / "one.csv").write_text("1\n2\n3\n") and d / "one.csv", "give the sampling rate"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path, make_input, message):
    result = run_cli("beats", make_input(tmp_path), "--out", tmp_path / "o.csv")
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_data_reports_where_mitdb_came_from(sample_dir):
    import os

    env = {**os.environ, "MITDB_DIR": str(sample_dir)}
    result = subprocess.run([sys.executable, "-m", "ecg_rnn", "data"], capture_output=True, text=True, env=env,
                            timeout=60)
    assert result.returncode == 0
    assert "from MITDB_DIR" in result.stderr and str(sample_dir) in result.stdout
