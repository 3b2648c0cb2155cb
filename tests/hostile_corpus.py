"""One corpus of hostile and broken recordings (issue 6 §1), generated into a folder.

`build_corpus(root)` writes every case into `root/cases/<name>/` and a canary folder `root/canary/`
(a file that hostile headers and symlinks point at; nothing may read its data into a result, write to
it, or create files beside it). Each `Case` says what a reader must do with it:

- `expect == "ok"`: read and score to a result; `check(record)` is a sanity check of the record, and
  `same_as` names a case holding the same signal: the result must have exactly its beats (same samples)
  and its scores within `score_atol` (float tolerance, unless a conversion changes the samples' floats);
- otherwise `expect` is a substring of the one specific error line (`upload_expect` when the dashboard
  upload words it differently, e.g. a zip member that is refused before any header is parsed).

`entry` is the path handed to `read_record` and `ecg-rnn score` (relative to the case folder);
`upload` lists the files a user would upload in the dashboard (None: a case that cannot be uploaded,
e.g. a symbolic link on disk; its upload twin is the zip with a symlink member).
"""

from __future__ import annotations

import io
import os
import stat
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "ecg_rnn" / "samples" / "mitdb"
SECONDS = 40  # excerpt length: long enough for RR context, short enough to score in well under a second
CANARY = "canary"
CANARY_FILE = "secret.dat"
SAME_SIGNAL_SCORE_ATOL = 1e-6  # the same samples give the same scores: float tolerance only


@dataclass
class Case:
    name: str
    what: str  # one line for the README table
    entry: str
    expect: str  # "ok" or an error substring
    files: dict[str, bytes] = field(default_factory=dict)
    symlinks: dict[str, str] = field(default_factory=dict)  # name -> target (relative to the corpus root)
    upload: list[str] | None = None  # names uploaded in the dashboard; None = not uploadable
    upload_expect: str | None = None
    check: Callable | None = None  # check(record) for "ok" cases
    same_as: str | None = None
    score_atol: float = SAME_SIGNAL_SCORE_ATOL  # largest score difference from the same_as case
    fs: float | None = None  # --fs for a CSV without a time column
    small_memory: bool = False  # refused before allocating: peak memory growth must stay tiny

    @property
    def expected_upload(self) -> str:
        return self.upload_expect or self.expect

    def folder(self, root: Path) -> Path:
        return root / "cases" / self.name

    def path(self, root: Path) -> Path:
        return self.folder(root) / self.entry

    def uploaded(self, root: Path):
        from ecg_rnn.uploads import UploadedFile

        return [UploadedFile(n, (self.folder(root) / n).read_bytes()) for n in self.upload or []]


# ---------------------------------------------------------------------------------------------
# building blocks


def excerpt(record: str = "208", seconds: float = SECONDS) -> tuple[np.ndarray, float]:
    """`seconds` of a bundled MIT-BIH record's MLII lead, in mV."""
    from ecg_rnn.records import read_record

    rec = read_record(SAMPLE / record)
    return rec.signal[: int(seconds * rec.fs)].astype(np.float64), rec.fs


def wfdb_files(name: str, signal: np.ndarray, fs: float, units: str = "mV", fmt: str = "16",
               sig_name: str = "MLII", scratch: Path | None = None) -> dict[str, bytes]:
    """{file name: bytes} of a single-lead WFDB record written by wfdb.wrsamp."""
    import tempfile

    import wfdb

    with tempfile.TemporaryDirectory(dir=scratch) as tmp:
        wfdb.wrsamp(name, fs=fs, units=[units], sig_name=[sig_name], p_signal=np.asarray(signal, float)[:, None],
                    fmt=[fmt], write_dir=tmp)
        return {p.name: p.read_bytes() for p in Path(tmp).iterdir()}


def header(name: str, n_sig: int, fs: float, n: int, lines: list[str]) -> bytes:
    return (f"{name} {n_sig} {fs:g} {n}\n" + "".join(ln + "\n" for ln in lines)).encode()


def zip_bytes(members: dict[str, bytes], symlinks: dict[str, str] | None = None,
              compression: int = zipfile.ZIP_DEFLATED) -> bytes:
    """A zip archive held in memory; `symlinks` become symbolic-link members."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression) as zf:
        for n, data in members.items():
            zf.writestr(n, data)
        for n, target in (symlinks or {}).items():
            info = zipfile.ZipInfo(n)
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            zf.writestr(info, target)
    return buf.getvalue()


def zip_declaring(members: dict[str, bytes], declared: int) -> bytes:
    """A stored (uncompressed) zip whose central directory claims each member is `declared` bytes."""
    import struct

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        for n, d in members.items():
            zf.writestr(n, d)
    data = bytearray(buf.getvalue())
    pos = 0
    while (pos := data.find(b"PK\x01\x02", pos)) >= 0:  # central directory entries
        struct.pack_into("<I", data, pos + 24, min(declared, 0xFFFFFFFE))
        pos += 4
    return bytes(data)


def csv_bytes(signal: np.ndarray, fs: float | None, column: str = "MLII") -> bytes:
    if fs is None:
        return "".join(f"{v:.5f}\n" for v in signal).encode()
    t = np.arange(len(signal)) / fs
    return (f"time,{column}\n" + "".join(f"{a:.6f},{b:.5f}\n" for a, b in zip(t, signal))).encode()


def _resampled(x: np.ndarray, fs: float, fs_new: float) -> np.ndarray:
    from scipy.signal import resample_poly

    from fractions import Fraction

    r = Fraction(fs_new / fs).limit_denominator(1000)
    return resample_poly(x, r.numerator, r.denominator)


# ---------------------------------------------------------------------------------------------
# the corpus


def cases() -> list[Case]:
    x, fs = excerpt()
    n = len(x)
    good = wfdb_files("rec", x, fs)
    good_hea = good["rec.hea"].decode()
    dat_line = good_hea.splitlines()[1]  # "rec.dat 16 <gain>(...)/mV 16 0 ..."
    rng = np.random.default_rng(6)
    out: list[Case] = []

    def add(**kw):
        out.append(Case(**kw))

    def sig_line(file_name: str, fmt: str = "16") -> str:
        parts = dat_line.split()
        parts[0], parts[1] = file_name, fmt
        return " ".join(parts)

    # --- the reference: a clean 40 s excerpt of record 208 (WFDB format 16, mV) ------------------
    add(name="reference", what="clean 40 s excerpt of MIT-BIH 208 (WFDB, mV)", entry="rec", expect="ok",
        files=good, upload=["rec.hea", "rec.dat"], check=lambda r: r.sig_len == n and r.fs == fs)

    # --- headers that point outside the folder ----------------------------------------------------
    add(name="dotdot", what="header names its signal file `../canary/secret.dat`", entry="rec",
        expect="points outside the record's folder",
        files={"rec.hea": header("rec", 1, fs, n, [sig_line(f"../../{CANARY}/{CANARY_FILE}")]),
               "rec.dat": good["rec.dat"]}, upload=["rec.hea", "rec.dat"])
    add(name="absolute", what="header names an absolute path (`/etc/passwd`)", entry="rec",
        expect="points outside the record's folder",
        files={"rec.hea": header("rec", 1, fs, n, [sig_line("/etc/passwd")]), "rec.dat": good["rec.dat"]},
        upload=["rec.hea", "rec.dat"])
    add(name="symlink", what="signal file is a symbolic link to a file outside the folder", entry="rec",
        expect="symbolic link", files={"rec.hea": good["rec.hea"]},
        symlinks={"rec.dat": f"{CANARY}/{CANARY_FILE}"}, upload=None)
    add(name="symlink_header", what="the header itself is a symbolic link to a header outside the folder",
        entry="rec", expect="symbolic link", files={}, symlinks={"rec.hea": f"{CANARY}/canary.hea"}, upload=None)

    # --- sizes that would exhaust memory --------------------------------------------------------------
    add(name="billions_of_samples", what="header claims 5 000 000 000 samples (file holds 40 s)", entry="rec",
        expect="at most 100000000", small_memory=True,
        files={"rec.hea": header("rec", 1, fs, 5_000_000_000, [sig_line("rec.dat")]), "rec.dat": good["rec.dat"]},
        upload=["rec.hea", "rec.dat"])
    add(name="thousands_of_channels", what="header claims 5 000 signals (5 000 signal lines)", entry="rec",
        expect="at most 64", small_memory=True,
        files={"rec.hea": header("rec", 5000, fs, n, [sig_line("rec.dat")] * 5000), "rec.dat": good["rec.dat"]},
        upload=["rec.hea", "rec.dat"])
    add(name="channels_claimed", what="record line claims 100 000 signals, one signal line", entry="rec",
        expect="100000 signals", small_memory=True,
        files={"rec.hea": header("rec", 100_000, fs, n, [sig_line("rec.dat")]), "rec.dat": good["rec.dat"]},
        upload=["rec.hea", "rec.dat"])
    add(name="fs_not_a_number", what="record line with sampling rate `nan`", entry="rec",
        expect="is not a number", files={"rec.hea": header("rec", 1, float("nan"), n, [sig_line("rec.dat")]),
                                         "rec.dat": good["rec.dat"]}, upload=["rec.hea", "rec.dat"])
    add(name="no_length", what="record line without a signal length", entry="rec", expect="gives no signal length",
        files={"rec.hea": f"rec 1 {fs:g}\n{sig_line('rec.dat')}\n".encode(), "rec.dat": good["rec.dat"]},
        upload=["rec.hea", "rec.dat"])
    add(name="multi_frequency", what="4 samples per frame (multi-frequency record)", entry="rec",
        expect="samples per frame", files={"rec.hea": header("rec", 1, fs, n, [sig_line("rec.dat", "16x4")]),
                                           "rec.dat": good["rec.dat"]}, upload=["rec.hea", "rec.dat"])
    add(name="dat_shorter", what="`.dat` shorter than the header says (truncated)", entry="rec",
        expect="the file is truncated", files={"rec.hea": good["rec.hea"], "rec.dat": good["rec.dat"][: n]},
        upload=["rec.hea", "rec.dat"])
    add(name="dat_longer", what="`.dat` longer than the header says (trailing junk)", entry="rec", expect="ok",
        files={"rec.hea": good["rec.hea"], "rec.dat": good["rec.dat"] + rng.bytes(200_000)},
        upload=["rec.hea", "rec.dat"], check=lambda r: r.sig_len == n, same_as="reference")
    add(name="dat_missing", what="header without its `.dat`", entry="rec", expect="is missing",
        files={"rec.hea": good["rec.hea"]}, upload=["rec.hea"])
    add(name="unknown_format", what="unknown storage format (999)", entry="rec", expect="storage format",
        files={"rec.hea": header("rec", 1, fs, n, [sig_line("rec.dat", "999")]), "rec.dat": good["rec.dat"]},
        upload=["rec.hea", "rec.dat"])
    add(name="flac_format", what="FLAC storage format (508, needs a plug-in)", entry="rec", expect="storage format",
        files={"rec.hea": header("rec", 1, fs, n, [sig_line("rec.dat", "508")]), "rec.dat": good["rec.dat"]},
        upload=["rec.hea", "rec.dat"])

    # --- junk and encodings -------------------------------------------------------------------------------
    add(name="junk_hea", what="binary junk named `.hea`", entry="rec", expect="binary data",
        files={"rec.hea": rng.bytes(4096), "rec.dat": good["rec.dat"]}, upload=["rec.hea", "rec.dat"])
    add(name="junk_hea_no_nul", what="binary junk without NUL bytes named `.hea`", entry="rec",
        expect="not a valid WFDB header",
        files={"rec.hea": bytes(rng.integers(128, 256, 4096, dtype=np.uint8)), "rec.dat": good["rec.dat"]},
        upload=["rec.hea", "rec.dat"])
    add(name="empty_hea", what="empty `.hea`", entry="rec", expect="not a valid WFDB header",
        files={"rec.hea": b"", "rec.dat": good["rec.dat"]}, upload=["rec.hea", "rec.dat"])
    add(name="latin1_header", what="non-UTF-8 header (Latin-1 lead name and comment)", entry="rec", expect="ok",
        files={"rec.hea": good["rec.hea"].replace(b"MLII", "MLII-é".encode("latin-1")) + "# Ä patient\n".encode(
            "latin-1"), "rec.dat": good["rec.dat"]},
        upload=["rec.hea", "rec.dat"], check=lambda r: r.lead.startswith("MLII"), same_as="reference")
    add(name="utf16_csv", what="UTF-16 CSV (non-UTF-8 text)", entry="rec.csv", expect="binary data",
        files={"rec.csv": csv_bytes(x, fs).decode().encode("utf-16")}, upload=["rec.csv"])
    add(name="latin1_csv", what="Latin-1 CSV header (non-UTF-8 text)", entry="rec.csv", expect="not UTF-8",
        files={"rec.csv": csv_bytes(x, fs, column="Dérivation II").decode().encode("latin-1")}, upload=["rec.csv"])
    add(name="corrupt_atr", what="corrupt annotation file beside a good record", entry="rec",
        expect="annotation file could not be read",
        files={**good, "rec.atr": b"\xff" * 3}, upload=["rec.hea", "rec.dat", "rec.atr"])

    # --- archives (the CLI and the library read a .zip through the same protections) -----------------
    add(name="zip_ok", what="`.zip` holding a good record", entry="rec.zip", expect="ok",
        files={"rec.zip": zip_bytes(good)}, upload=["rec.zip"], same_as="reference")
    add(name="zip_traversal", what="`.zip` with a `../../` member", entry="rec.zip", expect="outside the archive",
        files={"rec.zip": zip_bytes({**good, "../../evil.hea": good["rec.hea"]})}, upload=["rec.zip"])
    add(name="zip_absolute", what="`.zip` with an absolute member path", entry="rec.zip",
        expect="absolute path", files={"rec.zip": zip_bytes({"/tmp/evil.hea": good["rec.hea"]})}, upload=["rec.zip"])
    add(name="zip_symlink", what="`.zip` with a symbolic-link member", entry="rec.zip", expect="symbolic link",
        files={"rec.zip": zip_bytes({"rec.hea": good["rec.hea"]}, {"rec.dat": "/etc/passwd"})}, upload=["rec.zip"])
    add(name="zip_bomb", what="`.zip` expanding 1000-fold (zip bomb)", entry="rec.zip", expect="zip bomb",
        files={"rec.zip": zip_bytes({"rec.hea": good["rec.hea"], "rec.dat": b"\x00" * (64 << 20)})},
        upload=["rec.zip"], small_memory=True)
    add(name="zip_past_limit", what="`.zip` whose members declare 3 GiB (past the 1 GiB limit)", entry="rec.zip",
        expect="expands to more than", files={"rec.zip": zip_declaring(good, 3 << 30)}, upload=["rec.zip"],
        small_memory=True)
    add(name="zip_nested", what="`.zip` inside a `.zip`", entry="rec.zip", expect="nested archives",
        files={"rec.zip": zip_bytes({"inner.zip": zip_bytes(good)})}, upload=["rec.zip"])
    add(name="zip_junk", what="junk named `.zip`", entry="rec.zip", expect="not a readable zip",
        files={"rec.zip": rng.bytes(2000)}, upload=["rec.zip"])

    # --- CSV ----------------------------------------------------------------------------------------------
    add(name="csv_ok", what="CSV with a time column", entry="rec.csv", expect="ok", files={"rec.csv": csv_bytes(x, fs)},
        upload=["rec.csv"], check=lambda r: r.fs == fs and r.sig_len == n)
    add(name="csv_all_nan", what="CSV whose signal is all NaN", entry="rec.csv", expect="no valid samples",
        files={"rec.csv": csv_bytes(np.full(n, np.nan), fs)}, upload=["rec.csv"])
    nan_heavy = x.copy()
    nan_heavy[::2] = np.nan
    add(name="csv_half_nan", what="CSV with 50% NaN", entry="rec.csv", expect="missing (NaN)",
        files={"rec.csv": csv_bytes(nan_heavy, fs)}, upload=["rec.csv"])
    nan_gaps = x.copy()
    nan_gaps[1000:1010] = np.nan
    add(name="csv_nan_gap", what="CSV with a short NaN gap", entry="rec.csv", expect="ok",
        files={"rec.csv": csv_bytes(nan_gaps, fs)}, upload=["rec.csv"],
        check=lambda r: bool(np.isfinite(r.signal).all()))
    add(name="csv_inf", what="CSV with `inf` values", entry="rec.csv", expect="ok",
        files={"rec.csv": csv_bytes(np.where(np.arange(n) == 500, np.inf, x), fs)}, upload=["rec.csv"],
        check=lambda r: bool(np.isfinite(r.signal).all()))
    text = csv_bytes(x, fs).decode().splitlines()
    text[100] = "0.2750,hello"
    add(name="csv_text", what="CSV with text in the signal column", entry="rec.csv", expect="is not a number",
        files={"rec.csv": ("\n".join(text) + "\n").encode()}, upload=["rec.csv"])
    add(name="csv_single_row", what="CSV with a single data row", entry="rec.csv", expect="1 data row",
        files={"rec.csv": b"time,MLII\n0,0.1\n"}, upload=["rec.csv"])
    add(name="csv_single_line", what="CSV: one line, no header, 1 000 values", entry="rec.csv", expect="columns",
        files={"rec.csv": ",".join(f"{v:.4f}" for v in x[:1000]).encode() + b"\n"}, upload=["rec.csv"], fs=360)
    add(name="csv_million_columns", what="CSV with 2 000 000 columns", entry="rec.csv", expect="columns",
        files={"rec.csv": b"0.1," * 2_000_000 + b"0.1\n" + b"0.2," * 2_000_000 + b"0.2\n"}, upload=["rec.csv"],
        small_memory=True)
    add(name="csv_empty", what="empty CSV", entry="rec.csv", expect="rec.csv:", files={"rec.csv": b""},
        upload=["rec.csv"])
    add(name="csv_no_fs", what="CSV without time column nor sampling rate", entry="rec.csv",
        expect="sampling rate", files={"rec.csv": csv_bytes(x, None)}, upload=["rec.csv"])

    # --- sampling rates -----------------------------------------------------------------------------------
    x1 = _resampled(x, fs, 1.0)
    add(name="fs_1hz", what="WFDB record at 1 Hz", entry="rec", expect="outside the supported 50-20000 Hz",
        files=wfdb_files("rec", np.tile(x1, 5), 1.0), upload=["rec.hea", "rec.dat"])
    add(name="fs_1hz_csv", what="CSV at 1 Hz (time column)", entry="rec.csv", expect="outside the supported",
        files={"rec.csv": csv_bytes(np.tile(x1, 5), 1.0)}, upload=["rec.csv"])
    x100k = _resampled(x[: int(10 * fs)], fs, 100_000.0)
    add(name="fs_100khz", what="WFDB record at 100 kHz", entry="rec", expect="outside the supported 50-20000 Hz",
        files=wfdb_files("rec", x100k, 100_000.0), upload=["rec.hea", "rec.dat"])
    add(name="fs_100khz_csv", what="CSV at 100 kHz", entry="rec.csv", expect="outside the supported",
        files={"rec.csv": csv_bytes(x100k[:500_000], None)}, upload=["rec.csv"], fs=100_000)
    x50 = _resampled(x, fs, 50.0)
    add(name="fs_50hz", what="WFDB record at 50 Hz (lowest supported rate)", entry="rec", expect="ok",
        files=wfdb_files("rec", x50, 50.0), upload=["rec.hea", "rec.dat"],
        check=lambda r: r.fs == 50.0)
    x20k = _resampled(x[: int(20 * fs)], fs, 20_000.0)
    add(name="fs_20khz", what="WFDB record at 20 kHz (highest supported rate)", entry="rec", expect="ok",
        files=wfdb_files("rec", x20k, 20_000.0), upload=["rec.hea", "rec.dat"],
        check=lambda r: r.fs == 20_000.0)

    # --- content --------------------------------------------------------------------------------------------
    add(name="flat", what="flat line", entry="rec", expect="flat",
        files=wfdb_files("rec", np.full(n, 0.25), fs), upload=["rec.hea", "rec.dat"])
    add(name="flat_csv", what="flat line (CSV)", entry="rec.csv", expect="flat",
        files={"rec.csv": csv_bytes(np.zeros(n), fs)}, upload=["rec.csv"])
    add(name="white_noise", what="pure white noise", entry="rec", expect="looks like noise",
        files=wfdb_files("rec", rng.normal(0, 0.5, n), fs), upload=["rec.hea", "rec.dat"])
    add(name="too_short", what="1 s recording", entry="rec", expect="at least 3 s",
        files=wfdb_files("rec", x[: int(fs)], fs), upload=["rec.hea", "rec.dat"])
    add(name="volts", what="signal in volts (header units `V`)", entry="rec", expect="ok",
        files=wfdb_files("rec", x / 1000.0, fs, units="V"), upload=["rec.hea", "rec.dat"],
        check=lambda r: r.units == "mV" and 0.5 < np.ptp(r.signal) < 20, same_as="reference")
    # the same digital samples, 1000x smaller in float32 through the filters: rounding moves the
    # scores (which span about 8) by at most 1.1e-6 (measured with two versions of the default model)
    add(name="volts_as_mv", what="volt-sized values labelled `mV` (1000x too small)", entry="rec",
        expect="ok", files=wfdb_files("rec", x / 1000.0, fs), upload=["rec.hea", "rec.dat"],
        same_as="reference", score_atol=1e-5)
    # 32-bit samples at a finer gain than the reference's 16-bit ones: the signals differ by up to the
    # reference's quantisation step (3.0e-5 mV), which moved the scores by at most 4.2e-4 and 5.6e-4
    # (two versions of the default model); since the noisy stratum, a beat whose window's noise
    # probability sits at the stratum's edge can change stratum and move that stratum's calibration:
    # 3.6e-3 measured
    add(name="microvolts", what="signal in microvolts (header units `uV`)", entry="rec", expect="ok",
        files=wfdb_files("rec", x * 1000.0, fs, units="uV", fmt="32"), upload=["rec.hea", "rec.dat"],
        check=lambda r: 0.5 < np.ptp(r.signal) < 20, same_as="reference", score_atol=1e-2)
    return out


def build_corpus(root: Path, only: list[str] | None = None) -> list[Case]:
    """Write every case (or those named in `only`) and the canary under `root`; return the cases."""
    root = Path(root)
    canary = root / CANARY
    canary.mkdir(parents=True, exist_ok=True)
    x, fs = excerpt()
    files = wfdb_files("canary", x, fs)
    (canary / CANARY_FILE).write_bytes(files["canary.dat"])
    (canary / "canary.hea").write_bytes(files["canary.hea"].replace(b"canary.dat", CANARY_FILE.encode()))
    out = []
    for case in cases():
        if only is not None and case.name not in only:
            continue
        folder = case.folder(root)
        folder.mkdir(parents=True, exist_ok=True)
        for name, data in case.files.items():
            (folder / name).write_bytes(data)
        for name, target in case.symlinks.items():
            os.symlink(root / target, folder / name)
        out.append(case)
    return out


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    """Every path under `folder` with its size and modification time (symlinks not followed)."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(folder):
        for n in dirnames + filenames:
            p = Path(dirpath) / n
            st = p.lstat()
            out[str(p.relative_to(folder))] = (st.st_size, st.st_mtime_ns)
    return out
