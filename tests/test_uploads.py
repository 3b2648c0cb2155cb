"""Uploads: every hostile or broken upload ends in one specific RecordError, nothing is written outside
the private upload folder, and good uploads (files, zip, CSV) read like the library reads them."""

from __future__ import annotations

import io
import os
import stat
import zipfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hostile_corpus import zip_bytes

from ecg_rnn import uploads
from ecg_rnn.errors import RecordError
from ecg_rnn.records import read_record
from ecg_rnn.records import read_upload
from ecg_rnn.uploads import UploadedFile, UploadError, safe_name, save_upload

SAMPLE = Path(__file__).resolve().parents[1] / "ecg_rnn" / "samples" / "mitdb"


def _files(name: str, *exts: str) -> list[UploadedFile]:
    return [UploadedFile(f"{name}.{e}", (SAMPLE / f"{name}.{e}").read_bytes()) for e in exts]




def _small_wfdb(tmp_path: Path, seconds: float = 20.0) -> dict[str, bytes]:
    """A 20 s excerpt of record 100 written as a fresh WFDB record (format 16)."""
    import wfdb

    rec = read_record(SAMPLE / "100")
    n = int(seconds * rec.fs)
    folder = tmp_path / "src"
    folder.mkdir(exist_ok=True)
    wfdb.wrsamp("ex100", fs=rec.fs, units=["mV"], sig_name=["MLII"], p_signal=rec.signal[:n, None].astype(float),
                fmt=["16"], write_dir=str(folder))
    return {p.name: p.read_bytes() for p in folder.iterdir()}


@pytest.fixture
def no_outside_writes(tmp_path, monkeypatch):
    """Point tempfile at a fresh folder and assert every upload folder is private and cleaned up."""
    import tempfile

    base = tmp_path / "tmp"
    base.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(base))
    yield base
    assert list(base.iterdir()) == [], "upload folder left behind"


def test_wfdb_files_read_like_the_library(no_outside_writes):
    record, info = read_upload(_files("100", "hea", "dat", "atr"))
    ref = read_record(SAMPLE / "100")
    assert info.chosen == "100.hea"
    assert record.digest == ref.digest
    assert np.array_equal(record.annotations.sample, ref.annotations.sample)
    assert list(record.annotations.symbol) == list(ref.annotations.symbol)
    assert record.source == "upload:100.hea"


def test_zip_with_folder_is_flattened(no_outside_writes):
    data = zip_bytes({f"mitdb/100.{e}": (SAMPLE / f"100.{e}").read_bytes() for e in ("hea", "dat", "atr")}
                | {"__MACOSX/._100.hea": b"junk", "mitdb/": b""})
    record, info = read_upload([UploadedFile("rec.zip", data)])
    assert record.digest == read_record(SAMPLE / "100").digest


def test_private_folder_mode(tmp_path):
    folder = uploads.private_folder()
    try:
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700
        save_upload([UploadedFile("a.csv", b"1\n2\n")], folder)
        assert stat.S_IMODE((folder / "a.csv").stat().st_mode) == 0o600
    finally:
        import shutil
        shutil.rmtree(folder)


def test_multiple_records_choice(tmp_path, no_outside_writes):
    files = _files("100", "hea", "dat") + _files("232", "hea", "dat")
    record, info = read_upload(files, choice="232.hea")
    assert info.candidates == ("100.hea", "232.hea")
    assert record.name == "232"
    with pytest.raises(UploadError, match="not in the upload"):
        read_upload(files, choice="999.hea")


def test_csv_needs_fs_then_reads(no_outside_writes):
    x = read_record(SAMPLE / "100").signal[:3600]
    body = "\n".join(f"{v:.4f}" for v in x).encode()
    with pytest.raises(RecordError, match="sampling rate"):
        read_upload([UploadedFile("ex.csv", body)])
    record, _ = read_upload([UploadedFile("ex.csv", body)], fs=360)
    assert record.fs == 360 and record.sig_len == 3600


@pytest.mark.parametrize("name", ["../evil.hea", "/etc/passwd", "a/b.hea", "..\\x.hea", ".hidden.hea",
                                  "C:evil.hea", "x\x00.hea", "con.hea", "~root.hea", "a\tb.hea", "x" * 200,
                                  "-rf.csv", "a?.csv", "trailing.csv ", "x\u202e.csv"])
def test_bad_upload_names_refused(name, no_outside_writes):
    with pytest.raises(UploadError):
        read_upload([UploadedFile(name, b"100 1 360 1000\n")])


def test_zip_traversal_refused(no_outside_writes, tmp_path):
    data = zip_bytes({"../../evil.hea": b"x", "100.hea": b"y"})
    with pytest.raises(UploadError, match=r"outside the archive"):
        read_upload([UploadedFile("rec.zip", data)])
    assert not (tmp_path / "evil.hea").exists()


def test_zip_absolute_member_refused(no_outside_writes):
    with pytest.raises(UploadError, match="absolute path"):
        read_upload([UploadedFile("rec.zip", zip_bytes({"/tmp/evil.hea": b"x"}))])


def test_zip_symlink_member_refused(no_outside_writes):
    data = zip_bytes({"100.hea": (SAMPLE / "100.hea").read_bytes()}, symlinks={"100.dat": "/etc/passwd"})
    with pytest.raises(UploadError, match="symbolic link"):
        read_upload([UploadedFile("rec.zip", data)])


def test_zip_bomb_refused_by_declared_size(no_outside_writes):
    data = zip_bytes({"100.dat": b"\x00" * (8 << 20), "100.hea": b"100 1 360 1000\n100.dat 16 200 16 0\n"})
    with pytest.raises(UploadError, match="zip bomb|expands"):
        read_upload([UploadedFile("bomb.zip", data)])


def test_zip_bomb_refused_by_streamed_size(no_outside_writes):
    """Members under the ratio check but past the total cap are stopped while streaming."""
    rng = np.random.default_rng(0)
    members = {f"part{i}.dat": rng.integers(0, 255, 300_000, dtype=np.uint8).tobytes() for i in range(4)}
    data = zip_bytes(members, compression=zipfile.ZIP_STORED)
    with pytest.raises(UploadError, match="MiB"):
        read_upload([UploadedFile("big.zip", data)], max_extracted=1 << 20)


def test_zip_member_lying_about_its_size(no_outside_writes):
    """A member whose header declares a tiny size but whose stream is larger cannot pass the cap."""
    payload = b"\x00" * (3 << 20)
    buf = io.BytesIO(zip_bytes({"x.dat": payload}))
    raw = bytearray(buf.getvalue())
    # patch the declared uncompressed size (local header offset 22, central directory entry offset 24)
    lh = raw.find(b"PK\x03\x04")
    raw[lh + 22:lh + 26] = (10).to_bytes(4, "little")
    cd = raw.find(b"PK\x01\x02")
    raw[cd + 24:cd + 28] = (10).to_bytes(4, "little")
    with pytest.raises(UploadError):
        read_upload([UploadedFile("liar.zip", bytes(raw))], max_extracted=1 << 20)


def test_nested_zip_and_junk_zip_refused(no_outside_writes):
    with pytest.raises(UploadError, match="nested"):
        read_upload([UploadedFile("a.zip", zip_bytes({"inner.zip": zip_bytes({"a.hea": b"x"})}))])
    with pytest.raises(UploadError, match="not a readable zip"):
        read_upload([UploadedFile("a.zip", b"PK\x03\x04 this is not a zip")])


def test_header_pointing_outside_refused(no_outside_writes, tmp_path):
    outside = tmp_path / "secret.dat"
    outside.write_bytes(b"\x00" * 4000)
    for target in (str(outside), "../secret.dat", "sub/../../secret.dat"):
        header = f"evil 1 360 1000\n{target} 16 200 16 0 0 0 0 MLII\n".encode()
        with pytest.raises(RecordError, match="outside"):
            read_upload([UploadedFile("evil.hea", header)])


def test_header_symlinked_signal_refused(no_outside_writes, tmp_path):
    """A symlink cannot arrive through an upload at all; the library refuses one on disk as well."""
    folder = tmp_path / "rec"
    folder.mkdir()
    (folder / "evil.hea").write_text("evil 1 360 1000\nevil.dat 16 200 16 0 0 0 0 MLII\n")
    (tmp_path / "real.dat").write_bytes(b"\x00" * 4000)
    os.symlink(tmp_path / "real.dat", folder / "evil.dat")
    with pytest.raises(RecordError, match="symbolic link"):
        read_record(folder / "evil")


def test_broken_files_have_specific_messages(no_outside_writes):
    cases = [
        ([UploadedFile("a.dat", b"\x00" * 100)], "needs its .hea"),
        ([UploadedFile("a.hea", b"\x00\x01\x02binary")], "binary"),
        ([UploadedFile("a.hea", b"a 1 360 1000\na.dat 16 200 16 0 0 0 0 MLII\n")], "missing"),
        ([UploadedFile("a.hea", b"a 1 360 1000\na.dat 16 200 16 0 0 0 0 MLII\n"),
          UploadedFile("a.dat", b"\x00" * 10)], "truncated"),
        ([UploadedFile("a.csv", b"time,ecg\n0,1\n")], "row"),
        ([UploadedFile("a.csv", b"time,ecg\n0,abc\n0.01,2\n")], "not a number"),
        ([UploadedFile("a.txt", "é,ü\n".encode("latin-1"))], "UTF-8"),
        ([], "no file"),
    ]
    for files, message in cases:
        with pytest.raises(RecordError, match=message):
            read_upload(files)


def test_small_wfdb_excerpt(tmp_path, no_outside_writes):
    files = [UploadedFile(n, d) for n, d in _small_wfdb(tmp_path).items()]
    record, _ = read_upload(files)
    assert record.fs == 360 and abs(record.duration_s - 20.0) < 0.01


def test_ordinary_names_with_spaces_and_accents_are_fine(no_outside_writes):
    x = read_record(SAMPLE / "100").signal[:1800]
    body = ("time,ecg\n" + "".join(f"{i / 360:.6f},{v:.4f}\n" for i, v in enumerate(x))).encode()
    record, _ = read_upload([UploadedFile("Müller ECG 2024.csv", body)])
    assert record.name == "Müller ECG 2024" and record.fs == 360


def test_upload_digest_is_content_based():
    a = [UploadedFile("x.csv", b"1\n2\n"), UploadedFile("y.hea", b"z")]
    assert uploads.upload_digest(a) == uploads.upload_digest(list(reversed(a)))
    assert uploads.upload_digest(a) != uploads.upload_digest([UploadedFile("x.csv", b"1\n3\n")])


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.text(min_size=0, max_size=40))
def test_safe_name_fuzz(name):
    try:
        out = safe_name(name)
    except UploadError:
        return
    assert out == name and "/" not in out and "\\" not in out and not out.startswith(".")
    assert Path(out).name == out


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.dictionaries(st.text(min_size=1, max_size=30), st.binary(max_size=200), max_size=5))
def test_zip_fuzz_stays_inside(tmp_path_factory, members):
    base = tmp_path_factory.mktemp("fuzz")
    folder = base / "upload"
    folder.mkdir()
    try:
        data = zip_bytes(members)
    except (ValueError, UnicodeEncodeError, IndexError):  # names zipfile itself cannot write
        return
    try:
        save_upload([UploadedFile("f.zip", data)], folder)
    except UploadError:
        pass
    for p in base.rglob("*"):
        assert p.parent == folder or p == folder, f"wrote outside the upload folder: {p}"
        assert not p.is_symlink()


_HEADERS = st.sampled_from([
    b"r 1 360 4000\nr.dat 16 200 16 0 0 0 0 MLII\n",
    b"r 2 360\nr.dat 212 200 11 1024 0 0 0 MLII\nr.dat 212 200 11 1024 0 0 0 V1\n",
    b"r 1 1e9 5\nr.dat 16\n",
    b"r 99999 360 10\n",
    b"r 1 360 4000\n/etc/passwd 16 200 16 0 0 0 0 MLII\n",
    b"r 1 360 4000\nr.dat 999 200 16 0 0 0 0 MLII\n",
])


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(header=st.one_of(_HEADERS, st.binary(max_size=300)), dat=st.binary(max_size=9000),
       csv=st.one_of(st.none(), st.binary(max_size=400), st.text(alphabet="0123456789.,;-e\ntimeNa", max_size=400)),
       fs=st.one_of(st.none(), st.floats(allow_nan=True, allow_infinity=True)))
def test_read_upload_fuzz_only_record_errors(no_outside_writes, header, dat, csv, fs):
    """Any bytes: a Record or a RecordError, never another exception, and nothing left behind."""
    files = [UploadedFile("r.hea", header), UploadedFile("r.dat", dat)]
    if csv is not None:
        files = [UploadedFile("c.csv", csv.encode() if isinstance(csv, str) else csv)]
    try:
        record, _ = read_upload(files, fs=fs)
    except RecordError:
        return
    assert np.isfinite(record.signal).all() and record.fs > 0
