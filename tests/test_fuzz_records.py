"""Property-based fuzzing of the record readers: only RecordError escapes, no file outside the
record's folder is ever opened (watched with a Python audit hook), and memory stays bounded (tracemalloc
peak; numpy and pandas report their buffers to it)."""

from __future__ import annotations

import os
import sys
import tempfile
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ecg_rnn.errors import RecordError
from ecg_rnn.records import read_csv, read_record
from local_data import SAMPLE_DIR

_watch: dict = {"folder": None, "outside": [], "hooked": False}


def _audit(event, args):
    folder = _watch["folder"]
    if folder is None or event != "open" or not isinstance(args[0], (str, bytes, os.PathLike)):
        return
    path = os.path.realpath(os.fsdecode(args[0]))
    if not path.startswith(folder) and not path.startswith(sys.prefix) and not path.startswith(
            sys.base_prefix) and "/site-packages/" not in path and not path.startswith(("/proc", "/sys/", "/dev/", "/usr/share/")):
        _watch["outside"].append(path)


@pytest.fixture(scope="module", autouse=True)
def watched_opens():
    """Install the audit hook when these tests run, not when they are collected. Audit hooks cannot be
    removed: it is installed once per process and is inert while _watch["folder"] is None."""
    if not _watch["hooked"]:
        sys.addaudithook(_audit)
        _watch["hooked"] = True
    # Warm up: the first read imports wfdb and pandas, which open their own metadata files.
    read_record(SAMPLE_DIR / "100")


MAX_PEAK_BYTES = 64 << 20  # inputs are a few KiB: any allocation near this follows a hostile size claim


def _read_watched(folder: Path, reader):
    _watch["folder"], _watch["outside"] = os.path.realpath(folder), []
    tracemalloc.start()
    try:
        reader()
    except RecordError as exc:
        assert str(exc) and "\n" not in str(exc)
    finally:
        _watch["folder"] = None
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    assert not _watch["outside"], f"opened files outside the record folder: {_watch['outside']}"
    assert peak < MAX_PEAK_BYTES, f"reading a few KiB allocated {peak >> 20} MiB"


def test_the_watch_sees_an_outside_open(tmp_path):
    """Without this the fuzz tests below would pass with a hook that sees nothing."""
    outside = tmp_path / "outside.txt"
    outside.write_text("x")
    (tmp_path / "folder").mkdir()
    with pytest.raises(AssertionError, match="outside the record folder"):
        _read_watched(tmp_path / "folder", outside.read_text)


file_names = st.one_of(st.sampled_from(["rec.dat", "../rec.dat", "/etc/hostname", "sub/rec.dat", "..", "~",
                                        "rec.dat\x00", "C:\\rec.dat", "./rec.dat"]),
                       st.text(min_size=1, max_size=12).filter(lambda s: not s.isspace()))
formats = st.sampled_from(["16", "212", "80", "8", "999", "508", "16x2", "-16", "16:200", "abc"])
numbers = st.one_of(st.integers(-5, 10**11).map(str), st.sampled_from(["nan", "inf", "", "1e99", "0x10"]))


@st.composite
def headers(draw):
    n_sig = draw(st.integers(0, 4))
    record_line = f"rec {draw(numbers) if draw(st.booleans()) else n_sig} {draw(numbers)} {draw(numbers)}"
    lines = [record_line] + [
        f"{draw(file_names)} {draw(formats)} {draw(numbers)} 16 0 {draw(numbers)} 0 0 {draw(st.text(max_size=5))}"
        for _ in range(n_sig)]
    if draw(st.booleans()):
        lines.insert(draw(st.integers(0, len(lines))), draw(st.text(max_size=40)))
    return "\n".join(lines) + "\n"


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(headers(), st.binary(max_size=4000))
def test_header_fuzz_only_record_errors_and_no_outside_access(header, dat):
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "upload"
        folder.mkdir()
        try:
            (folder / "rec.hea").write_text(header, encoding="utf-8", errors="surrogatepass")
        except (UnicodeEncodeError, ValueError):
            (folder / "rec.hea").write_bytes(header.encode("utf-8", "replace"))
        (folder / "rec.dat").write_bytes(dat)
        _read_watched(folder, lambda: read_record(folder / "rec"))


@settings(max_examples=80, deadline=None)
@given(st.binary(max_size=3000))
def test_binary_header_fuzz(raw):
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / "rec.hea").write_bytes(raw)
        _read_watched(folder, lambda: read_record(folder / "rec"))


cells = st.one_of(st.floats(allow_nan=True, allow_infinity=True).map(repr), st.text(max_size=6),
                  st.integers(-10**6, 10**6).map(str), st.just(""))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.lists(cells, min_size=1, max_size=4), min_size=0, max_size=30),
       st.sampled_from([",", ";"]), st.one_of(st.none(), st.floats(-10, 10**6)))
def test_csv_fuzz_only_record_errors(rows, sep, fs):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "rec.csv"
        text = "\n".join(sep.join(c.replace(sep, "") for c in row) for row in rows)
        path.write_bytes(text.encode("utf-8", "replace"))
        _read_watched(Path(tmp), lambda: read_csv(path, fs=fs))


def test_csv_fuzz_accepts_a_real_signal(tmp_path):
    x = np.sin(np.arange(3600) / 20.0)
    path = tmp_path / "ok.csv"
    path.write_text("\n".join(f"{v:.5f}" for v in x))
    assert read_csv(path, fs=360).sig_len == 3600
