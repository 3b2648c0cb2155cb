"""Record stage: every recording format behind one chunk-readable `RecordSource`.

`open_record(path)` opens a WFDB record (streamed from disk a chunk at a time), a CSV file or a .zip of
either (read into memory) as a `RecordSource`: the chosen lead and every ECG lead, in mV, readable in
slices, with its reference annotations. `read_record` loads one lead whole as a `Record` (the
dashboard's strip, tests). Scoring, the dashboard and bulk runs all go through `open_record`.

Every file is untrusted: headers are checked before wfdb allocates anything, signal files must
sit beside their header (no `..`, absolute paths or symlinks), and sizes are bounded.
"""

from __future__ import annotations

import hashlib
import os
import re
import dataclasses
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ecg_rnn.errors import RecordError
from ecg_rnn.uploads import (MAX_EXTRACTED_BYTES, MAX_UPLOAD_BYTES, ZIP_SUFFIX, UploadedFile, UploadError,
                             record_candidates, safe_name, upload_folder)

# Bounds that keep a hostile header from exhausting memory (a 48 h Holter at 500 Hz fits).
MAX_SAMPLES = 100_000_000
MAX_CHANNELS = 64
MIN_FS, MAX_FS = 50.0, 20_000.0
MIN_SECONDS = 3.0
MAX_HEADER_BYTES = 1 << 20
MAX_CSV_BYTES = 512 << 20
MAX_CSV_COLUMNS = 64
CSV_SUFFIXES = (".csv", ".txt")
MAX_MISSING_SHARE = 0.2  # a lead with more invalid (NaN) samples than this is refused, not bridged
FLAT_PTP_MV = 1e-6  # a lead whose range is below this is flat
# an annotation takes at most 16 bytes in a WFDB file (sample skips, aux text): a bound on its size
MAX_ANNOTATION_BYTES_PER_SAMPLE = 16
ANNOTATION_FILE_SLACK = 4096
# Storage formats wfdb decodes without extra libraries (FLAC 508/516/524 need soundfile).
READABLE_FORMATS = {"8": 1.0, "16": 2.0, "24": 3.0, "32": 4.0, "61": 2.0, "80": 1.0, "160": 2.0,
                    "212": 1.5, "310": 4 / 3, "311": 4 / 3}
UNIT_TO_MV = {"mv": 1.0, "uv": 1e-3, "µv": 1e-3, "v": 1e3, "nu": 1.0, "": 1.0}

_ECG_LEAD = re.compile(
    r"^(ml?i{1,3}|i{1,3}|a?v[rlf]|v\d|mlii|ecg.*|cm\d|d\d|ml\d?|mv\d|lead.*|v|ds?\d)$", re.IGNORECASE)
# MIT-BIH's modified lead II first, then II, then the chest leads (where ectopy is judged), then the rest
PREFERRED_LEADS = ("MLII", "II", "V1", "V5", "V2", "V3", "V4", "V6", "V")
_TIME_COLUMN = re.compile(r"^(time|t|time_s|times|seconds|sec|s|elapsed.*|'elapsed time')$", re.IGNORECASE)


@dataclass(frozen=True)
class Annotations:
    """Reference annotations (wfdb naming): sample indices and their symbols."""

    sample: np.ndarray  # int64, in the record's own sampling
    symbol: np.ndarray  # str


@dataclass(frozen=True)
class Record:
    """One lead of one recording, in millivolts, with its reference annotations when present."""

    name: str
    signal: np.ndarray  # float32, mV
    fs: float
    lead: str
    sig_name: tuple[str, ...]  # every lead the file holds
    units: str
    annotations: Annotations | None = None
    source: str = ""
    digest: str = field(default="", compare=False)

    @property
    def sig_len(self) -> int:
        return int(len(self.signal))

    @property
    def duration_s(self) -> float:
        return self.sig_len / self.fs


def content_digest(signal: np.ndarray, fs: float, annotations: Annotations | None) -> str:
    """Stable identity of a recording's content (reviews are keyed by it, not by file name)."""
    h = hashlib.sha256()
    h.update(np.ascontiguousarray(signal, dtype=np.float32).tobytes())
    h.update(repr(float(fs)).encode())
    if annotations is not None:
        h.update(annotations.sample.astype(np.int64).tobytes())
    return h.hexdigest()[:20]


def _check_file_size(p: Path, limit: int, kind: str, advice: str) -> None:
    if not p.is_file():
        raise RecordError(f"{p.name}: file not found")
    size = p.stat().st_size
    if size > limit:
        raise RecordError(f"{p.name}: {size >> 20} MiB is larger than the {limit >> 20} MiB {kind} limit; {advice}")


def bridge_gaps(x: np.ndarray) -> np.ndarray:
    """Invalid samples (NaN, inf) bridged linearly; an all-invalid stretch becomes the baseline (0)."""
    bad = ~np.isfinite(x)
    if not bad.any():
        return x
    if bad.all():
        return np.zeros_like(x)
    idx = np.arange(len(x))
    return np.interp(idx, idx[~bad], x[~bad])


def is_ecg_lead(name: str, unit: str = "") -> bool:
    return bool(_ECG_LEAD.match(name.strip())) or "ecg" in name.lower() or unit.strip().lower() in ("mv", "uv", "µv")


Reader = Callable[[int, int, tuple[int, ...]], np.ndarray]  # (start, stop, channels) -> (n, k) mV


@dataclass(frozen=True)
class RecordSource:
    """A recording readable a slice at a time, whatever its format: the chosen lead and every ECG lead
    in mV (float64; invalid samples NaN), plus its reference annotations."""

    name: str
    fs: float
    sig_len: int
    sig_name: tuple[str, ...]  # every signal the file holds
    channel: int  # the chosen lead
    ecg_channels: tuple[int, ...]  # every ECG lead, the chosen one first
    units: str
    annotations: Annotations | None
    origin: str  # where it came from: a path, or upload:<name>
    reader: Reader = field(repr=False, compare=False)
    in_memory: bool = False  # held (and already validated) in memory: reading is free

    @property
    def lead(self) -> str:
        return self.sig_name[self.channel]

    @property
    def duration_s(self) -> float:
        return self.sig_len / self.fs

    def read(self, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Samples [start, stop) of the chosen lead."""
        return self.read_leads(start, stop, (self.channel,))[:, 0]

    def read_leads(self, start: int = 0, stop: int | None = None,
                   channels: tuple[int, ...] | None = None) -> np.ndarray:
        """Samples [start, stop) of several leads (default: every ECG lead), one column each."""
        stop = self.sig_len if stop is None else min(stop, self.sig_len)
        return self.reader(start, stop, tuple(channels or self.ecg_channels))

    def load(self) -> "Record":
        """The chosen lead read whole and validated (gaps bridged)."""
        signal = validated_signal(self.read(), self.fs, self.where)
        return Record(name=self.name, signal=signal, fs=self.fs, lead=self.lead, sig_name=self.sig_name,
                      units=self.units, annotations=self.annotations, source=self.origin,
                      digest=content_digest(signal, self.fs, self.annotations))

    @property
    def where(self) -> str:
        """How error messages name the recording."""
        return Path(self.origin).name if self.origin and not self.origin.startswith("upload:") else self.name

    def check(self, chunk_samples: int) -> None:
        """check_signal over the chosen lead, read `chunk_samples` at a time (bounded memory)."""
        missing, low, high = 0, np.inf, -np.inf
        for start in range(0, self.sig_len, chunk_samples):
            x = self.read(start, start + chunk_samples)
            finite = x[np.isfinite(x)]
            missing += len(x) - len(finite)
            if len(finite):
                low, high = min(low, float(finite.min())), max(high, float(finite.max()))
        check_signal(self.sig_len, missing, high - low if high >= low else 0.0, self.fs, self.where)


def ecg_channels(sig_name: tuple[str, ...], units: list[str], chosen: int) -> tuple[int, ...]:
    """The chosen lead first, then every other signal that looks like an ECG lead."""
    others = [i for i, n in enumerate(sig_name)
              if i != chosen and is_ecg_lead(n, units[i] if i < len(units) else "")]
    return (chosen, *others)


def source_from_arrays(name: str, leads: np.ndarray, fs: float, sig_name: tuple[str, ...], channel: int,
                       annotations: Annotations | None = None, origin: str = "",
                       units: list[str] | None = None) -> RecordSource:
    """An in-memory recording (one column per signal, mV) as a RecordSource."""
    leads = np.asarray(leads, dtype=np.float64).reshape(len(leads), -1)
    return RecordSource(name=name, fs=float(fs), sig_len=len(leads), sig_name=tuple(sig_name), channel=channel,
                        ecg_channels=ecg_channels(tuple(sig_name), units or ["mV"] * len(sig_name), channel),
                        units="mV", annotations=annotations, origin=origin,
                        reader=lambda start, stop, chans: leads[start:stop, list(chans)], in_memory=True)


def source_from_record(record: "Record") -> RecordSource:
    """A Record held in memory (one lead) as a RecordSource."""
    return source_from_arrays(record.name, record.signal[:, None], record.fs, (record.lead,), 0,
                              record.annotations, record.source)


def open_record(path: str | os.PathLike, lead: str | int | None = None, fs: float | None = None,
                annotator: str = "atr") -> RecordSource:
    """Open a WFDB record (path without extension, or its .hea), an EDF / EDF+ / BDF file, a CSV file
    or a .zip of any of them."""
    p = Path(path)
    suffix = p.suffix.lower()
    if suffix in CSV_SUFFIXES:
        return open_csv(p, fs=fs, lead=lead)
    if suffix == ZIP_SUFFIX:
        return read_zip(p, fs=fs, lead=lead)
    if suffix in EDF_SUFFIXES:
        return open_edf(p, lead=lead)
    if suffix in (".hea", ".dat", ".atr"):
        p = p.with_suffix("")
    return open_wfdb(p, lead=lead, annotator=annotator)


def read_record(path: str | os.PathLike, lead: str | int | None = None, fs: float | None = None,
                annotator: str = "atr") -> Record:
    """One lead of a recording, read whole and validated (see open_record)."""
    return open_record(path, lead=lead, fs=fs, annotator=annotator).load()


@dataclass(frozen=True)
class UploadInfo:
    """What an upload holds: the record entry points found, and which one was read."""

    candidates: tuple[str, ...]
    chosen: str


def open_upload(files: Iterable[UploadedFile], choice: str | None = None, fs: float | None = None,
                lead: str | int | None = None, max_extracted: int = MAX_EXTRACTED_BYTES
                ) -> tuple[RecordSource, UploadInfo]:
    """Save an upload privately, pick its record (a WFDB header or a CSV), read it into memory.

    Raises RecordError (UploadError for the upload itself) with one specific line on any problem.
    """
    files = list(files)
    with upload_folder(files, max_extracted=max_extracted) as (folder, saved):
        candidates = record_candidates(folder)
        if not candidates:
            kinds = ", ".join(sorted({Path(n).suffix or n for n in saved})) or "nothing"
            hint = " (a .dat needs its .hea header)" if any(n.lower().endswith(".dat") for n in saved) else ""
            raise UploadError(f"upload: no record found in {kinds}{hint}; upload a WFDB header (.hea) "
                              "with its signal file (.dat), a .zip of them, or a .csv")
        if choice is None:
            chosen = candidates[0]
        elif choice in candidates:
            chosen = choice
        else:
            raise UploadError(f"upload: {choice!r} is not in the upload; choose one of {', '.join(candidates)}")
        try:
            source = in_memory(open_record(folder / chosen, lead=lead, fs=fs))
        except (OSError, MemoryError) as exc:
            raise UploadError(f"{chosen}: could not be read ({type(exc).__name__})") from None
    # the upload folder is gone once read: keep only the file name as its origin
    return dataclasses.replace(source, origin=f"upload:{chosen}"), UploadInfo(tuple(candidates), chosen)


def read_upload(files: Iterable[UploadedFile], choice: str | None = None, fs: float | None = None,
                lead: str | int | None = None, max_extracted: int = MAX_EXTRACTED_BYTES
                ) -> tuple[Record, UploadInfo]:
    """open_upload, with the chosen lead loaded as a Record."""
    source, info = open_upload(files, choice, fs, lead, max_extracted)
    return source.load(), info


def in_memory(source: RecordSource) -> RecordSource:
    """Every ECG lead of a source read whole and validated (for files about to disappear)."""
    if source.in_memory:
        return source
    leads = source.read_leads()
    validated_signal(leads[:, 0], source.fs, source.where)  # the chosen lead is checked as if read whole
    return dataclasses.replace(source, reader=lambda start, stop, chans, all_=source.ecg_channels:
                               leads[start:stop, [all_.index(c) for c in chans]], in_memory=True)


def read_zip(path: str | os.PathLike, fs: float | None = None, lead: str | int | None = None) -> RecordSource:
    """The (first) record of a .zip, through the dashboard's upload protections: members are
    extracted into a private temporary folder (no traversal, symlinks, nested archives or bombs)."""
    p = Path(path)
    _check_file_size(p, MAX_UPLOAD_BYTES, "archive", "extract it and pass the record's header")
    try:
        name = safe_name(p.name)
    except UploadError:
        name = "archive.zip"
    source, info = open_upload([UploadedFile(name, p.read_bytes())], fs=fs, lead=lead)
    return dataclasses.replace(source, origin=f"{p}:{info.chosen}")


# ---------------------------------------------------------------------------------------------
# WFDB


def _read_header_text(hea: Path) -> str:
    if hea.is_symlink():
        raise RecordError(f"{hea.name}: header is a symbolic link; refusing to follow it (copy the record's "
                          "files into one folder)")
    if not hea.is_file():
        raise RecordError(f"{hea.name}: header file not found; pass a WFDB record path without "
                          "extension (e.g. data/mitdb/100), a .csv or a .zip file")
    size = hea.stat().st_size
    if size > MAX_HEADER_BYTES:
        raise RecordError(f"{hea.name}: header is {size} bytes, too large for a WFDB header")
    raw = hea.read_bytes()
    if b"\x00" in raw:
        raise RecordError(f"{hea.name}: is binary data, not a WFDB text header")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        try:
            return raw.decode("latin-1")
        except UnicodeDecodeError:  # pragma: no cover - latin-1 decodes any byte
            raise RecordError(f"{hea.name}: header is not text") from None


def _check_file_name(file_name: str, header: str) -> None:
    if (not file_name or file_name in (".", "..") or "/" in file_name or "\\" in file_name
            or os.path.isabs(file_name) or file_name.startswith("~")):
        raise RecordError(f"{header}: signal file name {file_name!r} points outside the record's "
                          "folder; signal files must sit beside the header")


def _check_header_file_names(text: str, header: str) -> None:
    """Vet the signal file names in the raw text, before wfdb parses (and maybe opens) them."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    # refuse absurd channel counts before wfdb parses thousands of lines
    first = lines[0].split() if lines else []
    claimed = int(first[1]) if len(first) > 1 and first[1].isascii() and first[1].isdigit() and len(first[1]) < 12 else 0
    if max(claimed, len(lines) - 1) > MAX_CHANNELS and "/" not in (first[0] if first else ""):
        raise RecordError(f"{header}: header claims {max(claimed, len(lines) - 1)} signals; at most "
                          f"{MAX_CHANNELS} are supported")
    if len(first) > 2 and not re.match(r"^\d*\.?\d", first[2]):  # wfdb silently falls back to 250 Hz
        raise RecordError(f"{header}: not a valid WFDB header: the sampling rate {first[2][:20]!r} in its "
                          "record line is not a number")
    for line in lines[1:MAX_CHANNELS + 1]:
        _check_file_name(line.split()[0], header)


def _safe_signal_file(folder: Path, file_name: str, header: str) -> Path:
    """A signal file named by a header must be a plain file right beside the header."""
    _check_file_name(file_name, header)
    path = folder / file_name
    if path.is_symlink():
        raise RecordError(f"{header}: signal file {file_name} is a symbolic link; refusing to follow it")
    if not path.is_file():
        raise RecordError(f"{header}: signal file {file_name} is missing; put it beside the header")
    return path


def _check_header(h, hea_name: str) -> None:
    if getattr(h, "n_seg", None):
        raise RecordError(f"{hea_name}: multi-segment WFDB records are not supported; "
                          "convert it to a single-segment record first")
    if not h.n_sig:
        raise RecordError(f"{hea_name}: header describes no signals")
    if h.n_sig > MAX_CHANNELS:
        raise RecordError(f"{hea_name}: header claims {h.n_sig} signals; at most {MAX_CHANNELS} are supported")
    signal_lines = len(h.file_name or [])
    if signal_lines != h.n_sig or len(h.fmt or []) != h.n_sig:
        raise RecordError(f"{hea_name}: header announces {h.n_sig} signals but describes {signal_lines}")
    if h.fs is None or not np.isfinite(h.fs) or not (MIN_FS <= h.fs <= MAX_FS):
        raise RecordError(f"{hea_name}: sampling rate {'(none)' if h.fs is None else f'{h.fs:g}'} Hz is outside the supported "
                          f"{MIN_FS:g}-{MAX_FS:g} Hz")
    if h.sig_len is not None and h.sig_len > MAX_SAMPLES:
        raise RecordError(f"{hea_name}: header claims {h.sig_len} samples per signal; at most "
                          f"{MAX_SAMPLES} are supported")
    if any(int(spf or 1) != 1 for spf in (h.samps_per_frame or [])):
        raise RecordError(f"{hea_name}: signals with several samples per frame (multi-frequency records) are "
                          "not supported; resample them to one rate first")
    for fmt in h.fmt:
        if str(fmt) not in READABLE_FORMATS:
            raise RecordError(f"{hea_name}: storage format {fmt!r} is not supported "
                              f"(supported: {', '.join(sorted(READABLE_FORMATS, key=int))})")


def _check_signal_files(h, folder: Path, hea_name: str) -> int:
    """Check every signal file's size against the header; return the usable signal length."""
    lengths = []
    for file_name in dict.fromkeys(h.file_name):
        path = _safe_signal_file(folder, file_name, hea_name)
        idx = [i for i, f in enumerate(h.file_name) if f == file_name]
        bytes_per_frame = sum(READABLE_FORMATS[str(h.fmt[i])] for i in idx)
        offset = max(int((h.byte_offset or [0] * h.n_sig)[i] or 0) for i in idx)
        available = max(0, path.stat().st_size - offset)
        frames_in_file = int(available // bytes_per_frame)
        if h.sig_len:
            if frames_in_file < h.sig_len:
                raise RecordError(f"{hea_name}: signal file {file_name} holds {frames_in_file} samples "
                                  f"but the header says {h.sig_len}; the file is truncated")
            lengths.append(h.sig_len)
        else:
            lengths.append(frames_in_file)
    length = min(lengths)
    if length > MAX_SAMPLES:
        raise RecordError(f"{hea_name}: signal holds {length} samples; at most {MAX_SAMPLES} are supported")
    return length


def choose_lead(sig_name: list[str], units: list[str], lead: str | int | None, where: str) -> int:
    """The user's choice; else MLII / II, then a chest lead (PREFERRED_LEADS), else the first ECG-looking
    lead, else the first signal."""
    names = [str(n) for n in sig_name]
    if lead is not None and str(lead).strip() != "":
        text = str(lead).strip()
        if text.lstrip("-").isascii() and text.lstrip("-").isdigit():
            i = int(text)
            if 0 <= i < len(names):
                return i
            raise RecordError(f"{where}: lead index {i} does not exist; the record has leads "
                              f"0-{len(names) - 1}: {', '.join(names)}")
        for i, n in enumerate(names):
            if n.strip().lower() == text.lower():
                return i
        raise RecordError(f"{where}: lead {text!r} not found; available leads: {', '.join(names)}")
    for wanted in PREFERRED_LEADS:  # the leads a reader expects first: II, then the chest leads
        for i, n in enumerate(names):
            if _lead_key(n) == wanted:
                return i
    for i, n in enumerate(names):
        if is_ecg_lead(n, units[i] if i < len(units) else ""):
            return i
    return 0


def _lead_key(name: str) -> str:
    """A lead name reduced for matching: 'ECG II', 'Lead II', 'ii', 'MLII' -> 'II' / 'MLII'."""
    key = re.sub(r"^(ecg|lead)[\s_-]*", "", name.strip(), flags=re.IGNORECASE).strip().upper()
    return key


def check_signal(n: int, n_missing: int, ptp: float, fs: float, where: str) -> None:
    """Refuse a lead that is all or mostly missing, too short, or flat (from its summary statistics,
    so a recording read in chunks is judged exactly like one read whole)."""
    if n_missing == n:
        raise RecordError(f"{where}: the signal holds no valid samples (all NaN)")
    if n_missing / n > MAX_MISSING_SHARE:
        raise RecordError(f"{where}: {n_missing / n:.0%} of the samples are missing (NaN); at most "
                          f"{MAX_MISSING_SHARE:.0%} can be bridged")
    if n < MIN_SECONDS * fs:
        raise RecordError(f"{where}: recording is {n / fs:.2f} s long; at least {MIN_SECONDS:g} s "
                          "(a few beats) are needed")
    if ptp < FLAT_PTP_MV:
        raise RecordError(f"{where}: the signal is flat (no variation); check the lead and the file")


def validated_signal(x: np.ndarray, fs: float, where: str) -> np.ndarray:
    """A checked lead as float32 mV, short gaps (WFDB invalid-sample markers, NaN) bridged linearly."""
    x = np.asarray(x, dtype=np.float64)
    bad = ~np.isfinite(x)
    finite = x[~bad]
    check_signal(len(x), int(bad.sum()), float(np.ptp(finite)) if len(finite) else 0.0, fs, where)
    return bridge_gaps(x).astype(np.float32)


def _wfdb_reader(path: Path, to_mv: list[float]) -> Reader:
    def read(start: int, stop: int, channels: tuple[int, ...]) -> np.ndarray:
        import wfdb

        try:
            rec = wfdb.rdrecord(str(path), channels=list(channels), sampfrom=start, sampto=stop, physical=True)
        except Exception as exc:
            raise RecordError(f"{path.name}.hea: signal file could not be decoded ({type(exc).__name__}: "
                              f"{str(exc).splitlines()[0][:120] if str(exc) else ''})") from None
        return rec.p_signal * np.asarray([to_mv[c] for c in channels])
    return read


def open_wfdb(path: str | os.PathLike, lead: str | int | None = None, annotator: str = "atr") -> RecordSource:
    """Validate a WFDB header, its signal files and annotations without reading the samples."""
    import wfdb  # deferred: wfdb pulls in pandas/matplotlib at import time

    p = Path(path)
    hea = p.with_name(p.name + ".hea")
    text = _read_header_text(hea)
    _check_header_file_names(text, hea.name)
    try:
        h = wfdb.rdheader(str(p))
    except Exception as exc:  # wfdb raises many types on malformed text
        first = text.splitlines()[0][:80] if text.strip() else "(empty)"
        raise RecordError(f"{hea.name}: not a valid WFDB header ({type(exc).__name__}: "
                          f"{str(exc).splitlines()[0][:120] if str(exc) else 'parse error'}); "
                          f"first line: {first!r}") from None
    _check_header(h, hea.name)
    sig_len = _check_signal_files(h, p.parent, hea.name)
    if not h.sig_len:  # wfdb cannot read a slice of a record whose header gives no length
        raise RecordError(f"{hea.name}: the record line gives no signal length; add it as the 4th field "
                          f"(the signal file holds {sig_len} samples)")
    names = tuple(str(n) for n in (h.sig_name or [f"sig{i}" for i in range(h.n_sig)]))
    units = [str(u or "mV") for u in (h.units or ["mV"] * h.n_sig)]
    channel = choose_lead(list(names), units, lead, hea.name)
    to_mv = [UNIT_TO_MV.get(u.strip().lower(), 1.0) for u in units]
    unit = units[channel]
    return RecordSource(name=p.name, fs=float(h.fs), sig_len=sig_len, sig_name=names, channel=channel,
                        ecg_channels=ecg_channels(names, units, channel),
                        units="mV" if unit.strip().lower() in UNIT_TO_MV else unit,
                        annotations=read_annotations(p, annotator, sig_len), origin=str(p),
                        reader=_wfdb_reader(p, to_mv))


def read_annotations(path: Path, annotator: str, sig_len: int) -> Annotations | None:
    """Read `<record>.<annotator>` when it exists; a corrupt file is an error, a missing one is not."""
    import wfdb

    ann_path = path.with_name(f"{path.name}.{annotator}")
    if not ann_path.exists():
        return None
    if ann_path.is_symlink() or not ann_path.is_file():
        raise RecordError(f"{ann_path.name}: annotation file is not a regular file")
    if ann_path.stat().st_size > MAX_ANNOTATION_BYTES_PER_SAMPLE * sig_len + ANNOTATION_FILE_SLACK:
        raise RecordError(f"{ann_path.name}: annotation file is larger than any annotation of "
                          f"{sig_len} samples could be")
    try:
        ann = wfdb.rdann(str(path), annotator)
    except Exception as exc:
        raise RecordError(f"{ann_path.name}: annotation file could not be read ({type(exc).__name__}); "
                          "remove it to score without reference labels") from None
    sample = np.asarray(ann.sample, dtype=np.int64)
    symbol = np.asarray(ann.symbol, dtype=str)
    keep = (sample >= 0) & (sample < sig_len)
    return Annotations(sample=sample[keep], symbol=symbol[keep])


# ---------------------------------------------------------------------------------------------
# EDF, EDF+ and BDF (pyedflib: a maintained C reader that reads a slice of a signal without loading it)

EDF_SUFFIXES = (".edf", ".bdf")
EDF_FIXED_HEADER = 256  # bytes of the file header; then 256 bytes per signal
EDF_ANNOTATION_LABELS = ("EDF Annotations", "BDF Annotations")


def _edf_field(raw: bytes, start: int, length: int, where: str, what: str) -> str:
    try:
        return raw[start:start + length].decode("ascii").strip()
    except UnicodeDecodeError:
        raise RecordError(f"{where}: not an EDF/BDF file (the {what} field is not ASCII text)") from None


def _edf_int(raw: bytes, start: int, length: int, where: str, what: str) -> int:
    text = _edf_field(raw, start, length, where, what)
    try:
        return int(text)
    except ValueError:
        raise RecordError(f"{where}: not a valid EDF/BDF header ({what} {text[:12]!r} is not a number)") from None


def _check_edf_header(path: Path) -> None:
    """Check what an EDF/BDF header claims against the file itself before the C reader sees it: signal
    count, header size and record count must agree with the file's size (a truncated file or a header
    that lies is refused here, in one line)."""
    where = path.name
    if path.is_symlink():
        raise RecordError(f"{where}: is a symbolic link; refusing to follow it")
    if not path.is_file():
        raise RecordError(f"{where}: file not found")
    size = path.stat().st_size
    with path.open("rb") as fh:
        fixed = fh.read(EDF_FIXED_HEADER)
        if len(fixed) < EDF_FIXED_HEADER or fixed[:8] not in (b"0       ", b"\xffBIOSEMI"):
            raise RecordError(f"{where}: not an EDF or BDF file (no EDF header); export the recording as "
                              "EDF/EDF+/BDF, WFDB or CSV")
        n_signals = _edf_int(fixed, 252, 4, where, "signal count")
        if not 1 <= n_signals <= MAX_CHANNELS:
            raise RecordError(f"{where}: header claims {n_signals} signals; 1-{MAX_CHANNELS} are supported")
        header_bytes = _edf_int(fixed, 184, 8, where, "header size")
        if header_bytes != EDF_FIXED_HEADER * (n_signals + 1):
            raise RecordError(f"{where}: header size {header_bytes} does not match its {n_signals} signals; "
                              "the header is corrupt")
        signal_headers = fh.read(header_bytes - EDF_FIXED_HEADER)
    if len(signal_headers) < header_bytes - EDF_FIXED_HEADER:
        raise RecordError(f"{where}: the file ends inside its header; it is truncated")
    bytes_per_sample = 3 if fixed[:8] == b"\xffBIOSEMI" else 2
    per_record = sum(_edf_int(signal_headers, 216 * n_signals + 8 * i, 8, where, "samples per record")
                     for i in range(n_signals))
    n_records = _edf_int(fixed, 236, 8, where, "record count")
    record_bytes = per_record * bytes_per_sample
    if record_bytes <= 0 or n_records == 0 or n_records < -1:
        raise RecordError(f"{where}: header describes no samples ({n_records} records of {per_record} samples)")
    available = (size - header_bytes) // record_bytes
    if n_records > available:
        raise RecordError(f"{where}: header claims {n_records} data records but the file holds {available}; "
                          "the file is truncated or its header is wrong")
    if n_records * per_record > MAX_SAMPLES * n_signals:
        raise RecordError(f"{where}: header claims {n_records * per_record} samples; at most "
                          f"{MAX_SAMPLES} per signal are supported")


def _edf_reader(path: Path, to_mv: list[float]) -> Reader:
    def read(start: int, stop: int, channels: tuple[int, ...]) -> np.ndarray:
        import pyedflib

        with pyedflib.EdfReader(str(path)) as edf:
            return np.stack([edf.readSignal(c, start, stop - start) * to_mv[c] for c in channels], axis=1)
    return read


def _edf_annotations(edf, fs: float, sig_len: int) -> Annotations | None:
    """EDF+ annotations as reference events: onset -> sample; the text is the symbol (a WFDB beat symbol
    such as N or V makes it a reference beat; anything else is kept as an event)."""
    onsets, _durations, texts = edf.readAnnotations()
    if len(onsets) == 0:
        return None
    sample = np.round(np.asarray(onsets, dtype=np.float64) * fs).astype(np.int64)
    keep = (sample >= 0) & (sample < sig_len)
    return Annotations(sample=sample[keep], symbol=np.asarray([str(t).strip() for t in texts], dtype=str)[keep])


def open_edf(path: str | os.PathLike, lead: str | int | None = None) -> RecordSource:
    """An EDF, EDF+ or BDF recording: ECG leads sharing the chosen lead's rate, read in slices."""
    import pyedflib

    p = Path(path)
    _check_edf_header(p)
    try:
        with pyedflib.EdfReader(str(p)) as edf:
            labels = [str(x) for x in edf.getSignalLabels()]
            rates = [float(f) for f in edf.getSampleFrequencies()]
            lengths = [int(n) for n in edf.getNSamples()]
            units = [str(edf.getPhysicalDimension(i)) for i in range(len(labels))]
            channel = choose_lead(labels, units, lead, p.name)
            fs = rates[channel]
            if not (np.isfinite(fs) and MIN_FS <= fs <= MAX_FS):
                raise RecordError(f"{p.name}: sampling rate {fs:g} Hz is outside the supported "
                                  f"{MIN_FS:g}-{MAX_FS:g} Hz")
            annotations = _edf_annotations(edf, fs, lengths[channel])
    except RecordError:
        raise
    except Exception as exc:  # pyedflib reports malformed files as OSError and others
        raise RecordError(f"{p.name}: not a readable EDF/BDF file ({type(exc).__name__}: "
                          f"{str(exc).splitlines()[0][:120] if str(exc) else 'unreadable'})") from None
    same_rate = [i for i, r in enumerate(rates) if r == fs and lengths[i] == lengths[channel]]
    ecg = tuple(i for i in ecg_channels(tuple(labels), units, channel) if i in same_rate)
    to_mv = [UNIT_TO_MV.get(u.strip().lower(), 1.0) for u in units]
    return RecordSource(name=p.stem, fs=fs, sig_len=lengths[channel], sig_name=tuple(labels), channel=channel,
                        ecg_channels=ecg, units="mV", annotations=annotations, origin=str(p),
                        reader=_edf_reader(p, to_mv))


# ---------------------------------------------------------------------------------------------
# CSV


def read_csv(path: str | os.PathLike, fs: float | None = None, lead: str | int | None = None) -> Record:
    """One lead of a CSV file (see open_csv)."""
    return open_csv(path, fs, lead).load()


def looks_like_signal_table(path: str | os.PathLike) -> bool:
    """Whether a text file's second line is all numbers: a signal table, with or without a header line.
    A folder scan takes only these as CSV recordings, so that the checksum list and notes that come with a
    downloaded database (PhysioNet's SHA256SUMS.txt) are not read as ECG."""
    try:
        with Path(path).open("rb") as fh:
            lines = [fh.readline(1 << 16) for _ in range(2)]
        fields = lines[1].decode("utf-8").replace(";", ",").replace("\t", ",").split(",")
        return len(lines[1].strip()) > 0 and all(f.strip().lower() in ("", "nan") or _is_number(f) for f in fields)
    except (OSError, UnicodeDecodeError):
        return False


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def open_csv(path: str | os.PathLike, fs: float | None = None, lead: str | int | None = None) -> RecordSource:
    """Read a CSV into memory: one signal column plus `fs`, or a time column (seconds) plus signal columns."""
    import pandas as pd

    p = Path(path)
    where = p.name
    _check_file_size(p, MAX_CSV_BYTES, "CSV", "convert long recordings to WFDB")
    with p.open("rb") as fh:
        first = fh.readline(1 << 16)
    if b"\x00" in first:
        raise RecordError(f"{where}: is binary data, not a CSV file")
    try:
        first_text = first.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise RecordError(f"{where}: is not UTF-8 text; save the CSV as UTF-8") from None
    delimiter = ";" if first_text.count(";") > first_text.count(",") else ","
    n_cols = first_text.count(delimiter) + 1
    if n_cols > MAX_CSV_COLUMNS or (len(first) >= (1 << 16) and not first.endswith(b"\n")):
        raise RecordError(f"{where}: has more than {MAX_CSV_COLUMNS} columns; expected a time column "
                          "and a few ECG leads")
    has_header = any(c.isalpha() for c in first_text.replace("e", "").replace("E", "").replace("nan", ""))
    try:
        frame = pd.read_csv(p, sep=delimiter, header=0 if has_header else None, encoding="utf-8",
                            skipinitialspace=True)
    except UnicodeDecodeError:
        raise RecordError(f"{where}: is not UTF-8 text; save the CSV as UTF-8") from None
    except Exception as exc:
        raise RecordError(f"{where}: not a readable CSV ({str(exc).splitlines()[0][:120]})") from None
    if not has_header:
        frame.columns = [f"col{i}" for i in range(frame.shape[1])]
    frame.columns = [str(c).strip().strip("'\"") for c in frame.columns]
    if len(frame) < 2:
        raise RecordError(f"{where}: holds {len(frame)} data row(s); a recording needs many samples")
    numeric = frame.apply(pd.to_numeric, errors="coerce")
    for col in frame.columns:
        bad = numeric[col].isna() & frame[col].notna() & (frame[col].astype(str).str.strip().str.lower() != "nan")
        if bad.any():
            row = int(np.flatnonzero(bad.to_numpy())[0])
            raise RecordError(f"{where}: column {col!r} row {row + 1} is not a number "
                              f"({str(frame[col].iloc[row])[:30]!r})")
    time_col = _time_column(numeric)
    signal_cols = [c for c in numeric.columns if c != time_col]
    if not signal_cols:
        raise RecordError(f"{where}: has only a time column; add an ECG column")
    if time_col is not None:
        t = numeric[time_col].to_numpy(dtype=np.float64)
        steps = np.diff(t)
        if not np.all(np.isfinite(steps)) or np.any(steps <= 0):
            raise RecordError(f"{where}: time column {time_col!r} must increase strictly")
        step = float(np.median(steps))
        if np.max(np.abs(steps - step)) > 0.1 * step:
            raise RecordError(f"{where}: time column {time_col!r} is not evenly spaced; resample it first")
        inferred = (len(t) - 1) / (t[-1] - t[0])  # the whole span: immune to rounded time stamps
        nearest = round(inferred)
        fs = float(fs) if fs else (float(nearest) if abs(inferred - nearest) < 1e-3 * inferred else inferred)
    if not fs:
        raise RecordError(f"{where}: has no time column; give the sampling rate (CLI: --fs 360)")
    if not np.isfinite(fs) or not (MIN_FS <= fs <= MAX_FS):
        raise RecordError(f"{where}: sampling rate {fs:g} Hz is outside the supported {MIN_FS:g}-{MAX_FS:g} Hz")
    channel = choose_lead(signal_cols, ["mV"] * len(signal_cols), lead, where)
    validated_signal(numeric[signal_cols[channel]].to_numpy(dtype=np.float64), fs, where)
    return source_from_arrays(p.stem, numeric[signal_cols].to_numpy(dtype=np.float64), fs, tuple(signal_cols),
                              channel, origin=str(p))


def _time_column(numeric) -> str | None:
    if numeric.shape[1] < 2:
        return None
    first = numeric.columns[0]
    if _TIME_COLUMN.match(first):
        return first
    return None


# ---------------------------------------------------------------------------------------------
# writing WFDB annotation files (scores, reviews)


RECORD_SUFFIXES = (".hea", ".dat", ".atr", *CSV_SUFFIXES, *EDF_SUFFIXES, ZIP_SUFFIX)
MAX_RECORD_NAME = 60


def wfdb_record_name(path_or_name: str | os.PathLike) -> str:
    """A WFDB record name (letters, digits, - and _) for a file or upload name, its suffix dropped."""
    stem = Path(path_or_name).name
    for suffix in RECORD_SUFFIXES:
        if stem.lower().endswith(suffix):
            stem = stem[: -len(suffix)]
    return re.sub(r"[^A-Za-z0-9_-]", "_", stem)[:MAX_RECORD_NAME] or "record"


def write_annotation_file(folder: str | os.PathLike, record_name: str, extension: str, sample, symbol: list[str],
                          aux_note: list[str], fs: float, empty_note: str = "no annotations") -> Path:
    """Write `<folder>/<record_name>.<extension>`, which wfdb.rdann(folder/record_name, extension) reads.
    WFDB annotation files cannot be empty: without annotations it holds one comment at sample 0."""
    import wfdb

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    sample = np.asarray(sample, dtype=np.int64)
    if len(sample) == 0:
        sample, symbol, aux_note = np.array([0]), ['"'], [empty_note]
    wfdb.wrann(record_name, extension, sample=sample, symbol=list(symbol), aux_note=list(aux_note), fs=fs,
               write_dir=str(folder))
    return folder / f"{record_name}.{extension}"
