"""Uploaded files: untrusted bytes -> a private folder per upload (the records stage reads it).

Every uploaded file name and every zip member is checked before anything touches the disk: no path
separators, no `..`, no absolute paths, no hidden or device-like names, no symbolic links, no nested
archives, and bounded counts and sizes (an archive is streamed with a hard cap, so a zip bomb or a
member that lies about its size stops at the limit). The files land in a fresh `tempfile.mkdtemp`
folder (mode 0700) that nothing else shares, and `records.open_upload` then applies the library's
own validation (a header may only name signal files beside it).
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import shutil
import stat
import tempfile
import zipfile
import zlib
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from ecg_rnn.errors import RecordError

MAX_UPLOAD_BYTES = 256 << 20  # per upload, all files together (matches .streamlit/config.toml)
MAX_EXTRACTED_BYTES = 1 << 30  # what one zip may expand to, all members together
MAX_FILES = 64  # files per upload, zip members included
MAX_RATIO = 200  # a member that expands more than this from its compressed size is refused
MAX_NAME = 128
RECORD_SUFFIXES = {".hea", ".csv", ".txt", ".edf", ".bdf"}  # entry points of a record
ZIP_SUFFIX = ".zip"
_BAD_CHARS = set('/\\:*?"<>|')
_RESERVED = {"con", "prn", "aux", "nul", *(f"com{i}" for i in range(10)), *(f"lpt{i}" for i in range(10))}


class UploadError(RecordError):
    """An uploaded file or archive is refused before it is read (name, type, size, archive layout)."""


@dataclass(frozen=True)
class UploadedFile:
    """One uploaded file: its name as the browser sent it, and its bytes."""

    name: str
    data: bytes


def safe_name(name: str, where: str = "upload") -> str:
    """A plain file name that can only refer to a file inside the upload folder, or UploadError."""
    if not isinstance(name, str) or not name:
        raise UploadError(f"{where}: a file has no name")
    shown = name[:80]
    if "\x00" in name or any(ord(c) < 32 for c in name):
        raise UploadError(f"{where}: file name {shown!r} contains control characters")
    if "/" in name or "\\" in name or name in (".", "..") or ".." in name.split("."):
        raise UploadError(f"{where}: file name {shown!r} contains a path; upload plain files only "
                          "(no folders, no '..')")
    if os.path.isabs(name) or re.match(r"^[A-Za-z]:", name) or name.startswith("~"):
        raise UploadError(f"{where}: file name {shown!r} is an absolute path; upload plain files only")
    if len(name) > MAX_NAME:
        raise UploadError(f"{where}: file name is {len(name)} characters long; at most {MAX_NAME}")
    bad = sorted({c for c in name if c in _BAD_CHARS or not c.isprintable()})
    if bad:
        raise UploadError(f"{where}: file name {shown!r} contains {''.join(bad)!r}; rename the file")
    if name[0] in ".- " or name[-1] in ". ":
        raise UploadError(f"{where}: file name {shown!r} starts with a dot, a dash or a space (or ends with a "
                          "dot or a space); rename the file")
    if name.split(".")[0].lower() in _RESERVED:
        raise UploadError(f"{where}: file name {shown!r} is a reserved device name; rename the file")
    return name


def _member_is_symlink(info: zipfile.ZipInfo) -> bool:
    mode = info.external_attr >> 16
    return stat.S_ISLNK(mode)


def _member_name(info: zipfile.ZipInfo, archive: str) -> str | None:
    """The plain file name a zip member is saved as (folders flattened), None for folders/macOS junk."""
    raw = info.filename
    where = f"{archive}: member {raw[:80]!r}"
    if "\x00" in raw:
        raise UploadError(f"{where} has a NUL byte in its name")
    path = raw.replace("\\", "/")
    if path.startswith("/") or re.match(r"^[A-Za-z]:", path):
        raise UploadError(f"{where} has an absolute path; refusing the archive")
    parts = [p for p in path.split("/") if p not in ("", ".")]
    if any(p == ".." for p in parts):
        raise UploadError(f"{where} points outside the archive ('..'); refusing the archive")
    if _member_is_symlink(info):
        raise UploadError(f"{where} is a symbolic link; refusing the archive")
    if info.is_dir() or not parts:
        return None
    if parts[0] == "__MACOSX" or parts[-1].startswith("._") or parts[-1] in (".DS_Store", "Thumbs.db"):
        return None
    if info.flag_bits & 0x1:
        raise UploadError(f"{where} is encrypted; upload an unencrypted archive")
    return safe_name(parts[-1], archive)


def _extract_zip(data: bytes, archive: str, folder: Path, budget: list[int], count: list[int],
                 max_extracted: int) -> list[str]:
    try:
        zf = zipfile.ZipFile(io.BytesIO(data))
    except (zipfile.BadZipFile, zipfile.LargeZipFile, ValueError, OSError, EOFError) as exc:
        raise UploadError(f"{archive}: not a readable zip archive ({str(exc)[:80] or type(exc).__name__})") \
            from None
    written = []
    with zf:
        infos = zf.infolist()
        if len(infos) > 4 * MAX_FILES:
            raise UploadError(f"{archive}: holds {len(infos)} entries; at most {MAX_FILES} files per upload")
        plan = []
        declared = 0
        for info in infos:
            name = _member_name(info, archive)
            if name is None:
                continue
            if name.lower().endswith(ZIP_SUFFIX):
                raise UploadError(f"{archive}: member {name!r} is itself an archive; nested archives "
                                  "are not accepted")
            declared += info.file_size
            if declared > max_extracted:
                raise UploadError(f"{archive}: expands to more than {max_extracted >> 20} MiB; "
                                  "upload the record's files without the archive or a shorter record")
            if info.file_size > (1 << 20) and info.file_size > MAX_RATIO * max(info.compress_size, 1):
                raise UploadError(f"{archive}: member {name!r} expands {info.file_size // max(info.compress_size, 1)}"
                                  f"-fold; refusing a likely zip bomb")
            plan.append((info, name))
        for info, name in plan:
            count[0] += 1
            if count[0] > MAX_FILES:
                raise UploadError(f"{archive}: more than {MAX_FILES} files in one upload")
            target = folder / name
            if target.exists():
                raise UploadError(f"{archive}: file {name!r} appears twice in the upload")
            try:
                with zf.open(info) as src, _create_private(target) as dst:
                    while True:
                        chunk = src.read(1 << 20)
                        if not chunk:
                            break
                        budget[0] -= len(chunk)
                        if budget[0] < 0:
                            raise UploadError(f"{archive}: expands to more than {max_extracted >> 20} MiB; "
                                              "refusing a likely zip bomb")
                        dst.write(chunk)
            except UploadError:
                raise
            except (zipfile.BadZipFile, NotImplementedError, RuntimeError, EOFError, ValueError,
                    zlib.error) as exc:
                raise UploadError(f"{archive}: member {name!r} could not be extracted "
                                  f"({str(exc)[:80] or type(exc).__name__})") from None
            written.append(name)
    return written


@contextmanager
def _create_private(path: Path):
    """Create a new regular file (never follow or overwrite anything) readable only by us."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_BINARY", 0)
    fd = os.open(path, flags, 0o600)
    with os.fdopen(fd, "wb") as fh:
        yield fh


def private_folder(prefix: str = "ecg-rnn-upload-") -> Path:
    """A fresh folder only this user can enter (tempfile.mkdtemp creates it with mode 0700)."""
    folder = Path(tempfile.mkdtemp(prefix=prefix))
    os.chmod(folder, 0o700)
    return folder


def save_upload(files: Iterable[UploadedFile], folder: Path,
                max_extracted: int = MAX_EXTRACTED_BYTES, max_upload: int = MAX_UPLOAD_BYTES) -> list[str]:
    """Write the uploaded files (zip archives extracted) into `folder`; return the saved names."""
    files = list(files)
    if not files:
        raise UploadError("upload: no file was uploaded")
    total = sum(len(f.data) for f in files)
    if total > max_upload:
        raise UploadError(f"upload: {total >> 20} MiB is more than the {max_upload >> 20} MiB upload limit")
    if len(files) > MAX_FILES:
        raise UploadError(f"upload: {len(files)} files; at most {MAX_FILES} per upload")
    budget, count, saved = [max_extracted], [0], []
    for f in files:
        name = safe_name(f.name)
        if name.lower().endswith(ZIP_SUFFIX):
            saved += _extract_zip(f.data, name, folder, budget, count, max_extracted)
            continue
        count[0] += 1
        target = folder / name
        if target.exists():
            raise UploadError(f"upload: file {name!r} was uploaded twice")
        with _create_private(target) as dst:
            dst.write(f.data)
        saved.append(name)
    return saved


def record_candidates(folder: Path) -> list[str]:
    """Readable entry points in an upload folder: WFDB headers and CSV files (sorted names)."""
    out = []
    for p in sorted(folder.iterdir()):
        if p.is_symlink() or not p.is_file():
            continue
        if p.suffix.lower() in RECORD_SUFFIXES:
            out.append(p.name)
    return out


def upload_digest(files: Iterable[UploadedFile]) -> str:
    """Content hash of an upload (names and bytes), the cache key of everything computed from it."""
    h = hashlib.sha256()
    for f in sorted(files, key=lambda f: f.name):
        h.update(f.name.encode("utf-8", "replace") + b"\x00")
        h.update(len(f.data).to_bytes(8, "little"))
        h.update(hashlib.sha256(f.data).digest())
    return h.hexdigest()[:24]


@contextmanager
def upload_folder(files: Iterable[UploadedFile], max_extracted: int = MAX_EXTRACTED_BYTES) -> Iterator[
        tuple[Path, list[str]]]:
    """A private folder holding the upload, removed afterwards whatever happens."""
    folder = private_folder()
    try:
        saved = save_upload(files, folder, max_extracted=max_extracted)
        yield folder, saved
    finally:
        shutil.rmtree(folder, ignore_errors=True)
