"""Review store: a reviewer's decisions on flagged beats, kept in SQLite, and their exports.

Durability: WAL journal, `synchronous=FULL`, one transaction per save (`BEGIN IMMEDIATE`), so a
process killed mid-save leaves either the whole save or none of it. Reviews are keyed by the record's
content digest (`Record.digest`) and the beat's R-peak sample, so renaming a file keeps its reviews.
AF and noise episodes are reviewed as a whole (confirmed, rejected, or marked where none was found) in
`episode_reviews`, keyed by the digest and the episode's kind and bounds.

Concurrency: every review carries a version. A save states the version it edited (0: none yet); when
someone else saved in between, the save is refused with `ReviewConflict`, naming them, instead of
silently overwriting. Every save also appends to `review_history` with the previous value.
"""

from __future__ import annotations

import math
import os
import sqlite3
import time
from collections.abc import Iterable
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from ecg_rnn.errors import EcgRnnError
from ecg_rnn.paths import data_dir
from ecg_rnn.records import wfdb_record_name, write_annotation_file
from ecg_rnn.rhythm import Episode

DB_ENV = "ECG_RNN_REVIEWS_DB"
DECISIONS = ("abnormal", "normal", "noise")
EPISODE_DECISIONS = ("confirmed", "rejected")
REVIEW_CLASSES = ("V", "S", "F", "Q", "other")  # the AAMI abnormal classes, V first (the commonest review)
MAX_NOTE = 2000
MAX_REVIEWER = 80
SCHEMA_VERSION = 1
# Review -> WFDB annotation symbol (AAMI classes; "other" abnormal beats are unclassifiable, Q;
# noise is WFDB's signal-quality mark "~").
WFDB_SYMBOL = {("normal", ""): "N", ("noise", ""): "~", **{("abnormal", c): c for c in "VSFQ"},
               ("abnormal", "other"): "Q"}

_SCHEMA = """
CREATE TABLE IF NOT EXISTS reviews (
    record_digest TEXT NOT NULL,
    sample INTEGER NOT NULL,
    record_name TEXT NOT NULL DEFAULT '',
    decision TEXT NOT NULL CHECK (decision IN ('abnormal', 'normal', 'noise')),
    beat_class TEXT NOT NULL DEFAULT '',
    note TEXT NOT NULL DEFAULT '',
    reviewer TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    version INTEGER NOT NULL,
    PRIMARY KEY (record_digest, sample)
);
CREATE TABLE IF NOT EXISTS review_history (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    record_digest TEXT NOT NULL,
    sample INTEGER NOT NULL,
    version INTEGER NOT NULL,
    decision TEXT NOT NULL,
    beat_class TEXT NOT NULL,
    note TEXT NOT NULL,
    reviewer TEXT NOT NULL,
    changed_at TEXT NOT NULL,
    prev_decision TEXT,
    prev_class TEXT,
    prev_note TEXT,
    prev_reviewer TEXT,
    prev_version INTEGER NOT NULL,
    source TEXT NOT NULL DEFAULT 'beat'
);
CREATE INDEX IF NOT EXISTS review_history_beat ON review_history (record_digest, sample);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS episode_reviews (
    record_digest TEXT NOT NULL,
    kind TEXT NOT NULL,
    start_s REAL NOT NULL,
    end_s REAL NOT NULL,
    decision TEXT NOT NULL CHECK (decision IN ('confirmed', 'rejected')),
    reviewer TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    PRIMARY KEY (record_digest, kind, start_s, end_s)
);
"""


class ReviewError(EcgRnnError, ValueError):
    """A review cannot be saved (bad input, unusable database)."""


class ReviewConflict(ReviewError):
    """Someone saved the beat after this reviewer loaded it; nothing was written."""

    def __init__(self, message: str, conflicts: list["Review"]):
        super().__init__(message)
        self.conflicts = conflicts


@dataclass(frozen=True)
class Review:
    record_digest: str
    sample: int
    decision: str
    beat_class: str
    note: str
    reviewer: str
    updated_at: str
    version: int
    record_name: str = ""

    @property
    def label(self) -> str:
        """Short text for tables: 'abnormal V', 'normal', 'noise'."""
        return f"{self.decision} {self.beat_class}".strip()

    @property
    def wfdb_symbol(self) -> str:
        return WFDB_SYMBOL[(self.decision, self.beat_class if self.decision == "abnormal" else "")]


@dataclass(frozen=True)
class EpisodeReview:
    kind: str  # "AF" or "noise"
    start_s: float
    end_s: float
    decision: str  # "confirmed" or "rejected"
    reviewer: str
    at: str

    @property
    def episode(self) -> Episode:
        return Episode(self.kind, self.start_s, self.end_s)


def episode_key(e: Episode) -> tuple[str, float, float]:
    return e.kind, float(e.start_s), float(e.end_s)


def reviewed_episodes(found: Iterable[Episode], decisions: dict[tuple[str, float, float], EpisodeReview]
                      ) -> list[Episode]:
    """The episodes that hold after review: those found, less the rejected ones, plus stretches a
    reviewer marked (confirmed episodes that were not found), by start time."""
    by_key = {episode_key(e): e for e in found}
    kept = [e for k, e in by_key.items() if getattr(decisions.get(k), "decision", "") != "rejected"]
    marked = [r.episode for k, r in decisions.items() if k not in by_key and r.decision == "confirmed"]
    return sorted(kept + marked, key=lambda e: (e.start_s, e.kind))


@dataclass(frozen=True)
class HistoryEntry:
    sample: int
    version: int
    decision: str
    beat_class: str
    note: str
    reviewer: str
    changed_at: str
    prev_decision: str | None
    prev_class: str | None
    prev_note: str | None
    prev_reviewer: str | None
    source: str


def default_db_path() -> Path:
    """$ECG_RNN_REVIEWS_DB, else data/reviews.sqlite in the working folder (see ecg_rnn.paths)."""
    value = os.environ.get(DB_ENV, "").strip()
    return Path(value).expanduser() if value else data_dir() / "reviews.sqlite"


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def _clean_text(text: str | None, limit: int, what: str) -> str:
    text = "" if text is None else str(text)
    text = "".join(c for c in text if c in "\t\n" or ord(c) >= 32).strip()
    if len(text) > limit:
        raise ReviewError(f"{what} is {len(text)} characters long; at most {limit}")
    return text


def validate(decision: str, beat_class: str | None, note: str | None, reviewer: str | None
             ) -> tuple[str, str, str, str]:
    """Normalised (decision, class, note, reviewer), or ReviewError with what to fix."""
    decision = str(decision or "").strip().lower()
    if decision not in DECISIONS:
        raise ReviewError(f"decision must be one of {', '.join(DECISIONS)}, not {decision!r}")
    beat_class = str(beat_class or "").strip()
    if decision == "abnormal":
        if beat_class not in REVIEW_CLASSES:
            raise ReviewError(f"an abnormal beat needs a class: one of {', '.join(REVIEW_CLASSES)}")
    else:
        beat_class = ""
    reviewer = _clean_text(reviewer, MAX_REVIEWER, "reviewer name").replace("\n", " ")
    if not reviewer:
        raise ReviewError("enter your name as reviewer before saving (sidebar)")
    return decision, beat_class, _clean_text(note, MAX_NOTE, "note"), reviewer


class ReviewStore:
    """Reviews in one SQLite file. Cheap to create; every operation opens its own connection, so one
    store may be shared by threads (Streamlit sessions) and processes."""

    def __init__(self, path: str | os.PathLike | None = None, timeout_s: float = 30.0):
        self.path = Path(path) if path is not None else default_db_path()
        self.timeout_s = timeout_s
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self._connect() as con:
                con.executescript(_SCHEMA)
                con.execute("INSERT OR IGNORE INTO meta(key, value) VALUES ('schema_version', ?)",
                            (str(SCHEMA_VERSION),))
        except (sqlite3.DatabaseError, ReviewError) as exc:
            raise ReviewError(f"{self.path}: not a usable reviews database ({exc}); move it aside or "
                              f"set {DB_ENV} to another file") from None
        except OSError as exc:
            raise ReviewError(f"{self.path}: cannot create the reviews database ({exc.strerror or exc}); "
                              f"set {DB_ENV} to a writable file") from None

    @contextmanager
    def _connect(self):
        """One connection per operation; SQLite failures become a ReviewError with one line."""
        try:
            con = sqlite3.connect(self.path, timeout=self.timeout_s, isolation_level=None)
        except sqlite3.Error as exc:
            raise ReviewError(f"{self.path}: cannot open the reviews database ({exc})") from None
        try:
            con.execute("PRAGMA busy_timeout = %d" % int(self.timeout_s * 1000))
            mode = con.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() != "wal":  # pragma: no cover - e.g. a network filesystem
                raise ReviewError(f"{self.path}: SQLite refused WAL mode ({mode}); use a local disk")
            con.execute("PRAGMA synchronous = FULL")
            yield con
        except sqlite3.DatabaseError as exc:
            raise ReviewError(f"{self.path}: the reviews database failed ({exc}); nothing was changed") from None
        finally:
            con.close()

    @contextmanager
    def _transaction(self):
        """BEGIN IMMEDIATE takes the write lock up front, so the check-then-write below is atomic."""
        with self._connect() as con:
            for attempt in range(50):
                try:
                    con.execute("BEGIN IMMEDIATE")
                    break
                except sqlite3.OperationalError as exc:
                    if "locked" not in str(exc) and "busy" not in str(exc):
                        raise
                    time.sleep(0.05 * (attempt + 1))
            else:  # pragma: no cover - the lock holder took more than a minute
                raise ReviewError(f"{self.path}: the database stayed locked; try again")
            try:
                yield con
            except BaseException:
                if con.in_transaction:
                    con.execute("ROLLBACK")
                raise
            else:
                con.execute("COMMIT")

    # -- reading -------------------------------------------------------------------------------

    def get(self, record_digest: str) -> dict[int, Review]:
        """Every review of one record, by beat sample."""
        with self._connect() as con:
            rows = con.execute(
                "SELECT record_digest, sample, decision, beat_class, note, reviewer, updated_at, version, "
                "record_name FROM reviews WHERE record_digest = ? ORDER BY sample", (record_digest,)).fetchall()
        return {int(r[1]): Review(r[0], int(r[1]), *r[2:7], int(r[7]), r[8]) for r in rows}

    def get_one(self, record_digest: str, sample: int) -> Review | None:
        return self.get_many(record_digest, [sample]).get(int(sample))

    def get_many(self, record_digest: str, samples: Iterable[int]) -> dict[int, Review]:
        wanted = {int(s) for s in samples}
        return {s: r for s, r in self.get(record_digest).items() if s in wanted}

    def history(self, record_digest: str, sample: int | None = None) -> list[HistoryEntry]:
        """Every change, oldest first (one beat, or the whole record)."""
        query = ("SELECT sample, version, decision, beat_class, note, reviewer, changed_at, prev_decision, "
                 "prev_class, prev_note, prev_reviewer, source FROM review_history WHERE record_digest = ?")
        args: tuple = (record_digest,)
        if sample is not None:
            query += " AND sample = ?"
            args += (int(sample),)
        with self._connect() as con:
            rows = con.execute(query + " ORDER BY id", args).fetchall()
        return [HistoryEntry(int(r[0]), int(r[1]), *r[2:]) for r in rows]

    def count(self, record_digest: str | None = None) -> int:
        with self._connect() as con:
            if record_digest is None:
                return int(con.execute("SELECT COUNT(*) FROM reviews").fetchone()[0])
            return int(con.execute("SELECT COUNT(*) FROM reviews WHERE record_digest = ?",
                                   (record_digest,)).fetchone()[0])

    def episode_reviews(self, record_digest: str) -> dict[tuple[str, float, float], EpisodeReview]:
        """Every episode decision of one record, by (kind, start_s, end_s)."""
        with self._connect() as con:
            rows = con.execute("SELECT kind, start_s, end_s, decision, reviewer, updated_at FROM episode_reviews "
                               "WHERE record_digest = ? ORDER BY start_s", (record_digest,)).fetchall()
        return {(r[0], float(r[1]), float(r[2])): EpisodeReview(r[0], float(r[1]), float(r[2]), *r[3:]) for r in rows}

    def integrity_ok(self) -> bool:
        with self._connect() as con:
            return con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"

    # -- writing -------------------------------------------------------------------------------

    def save(self, record_digest: str, sample: int, decision: str, beat_class: str = "", note: str = "",
             reviewer: str = "", expected_version: int = 0, record_name: str = "") -> Review:
        """Save one beat's review if nobody saved it since `expected_version`; else ReviewConflict."""
        saved = self.save_many(record_digest, {int(sample): int(expected_version)}, decision, beat_class,
                               note, reviewer, record_name=record_name, source="beat")
        return saved[int(sample)]

    def save_episode(self, record_digest: str, episode: Episode, decision: str, reviewer: str) -> EpisodeReview:
        """Confirm or reject a whole episode (the last decision stands); a confirmed episode that the
        pipeline did not find is a stretch the reviewer marked."""
        if decision not in EPISODE_DECISIONS:
            raise ReviewError(f"an episode is {' or '.join(EPISODE_DECISIONS)}, not {decision!r}")
        reviewer = _clean_text(reviewer, MAX_REVIEWER, "reviewer name")
        if not reviewer:
            raise ReviewError("enter your name as reviewer before saving (sidebar)")
        if not (math.isfinite(episode.start_s) and math.isfinite(episode.end_s) and episode.end_s > episode.start_s):
            raise ReviewError(f"an episode must end after it starts ({episode.start_s} to {episode.end_s} s)")
        review = EpisodeReview(episode.kind, float(episode.start_s), float(episode.end_s), decision, reviewer, _now())
        with self._transaction() as con:
            con.execute("INSERT INTO episode_reviews (record_digest, kind, start_s, end_s, decision, reviewer, "
                        "updated_at) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (record_digest, kind, start_s, end_s) "
                        "DO UPDATE SET decision = excluded.decision, reviewer = excluded.reviewer, "
                        "updated_at = excluded.updated_at",
                        (record_digest, *episode_key(episode), decision, reviewer, review.at))
        return review

    def remove_episode(self, record_digest: str, episode: Episode) -> None:
        """Forget an episode decision (the undo of a marked noise stretch)."""
        with self._transaction() as con:
            con.execute("DELETE FROM episode_reviews WHERE record_digest = ? AND kind = ? AND start_s = ? "
                        "AND end_s = ?", (record_digest, *episode_key(episode)))

    def save_many(self, record_digest: str, expected: dict[int, int], decision: str, beat_class: str = "",
                  note: str = "", reviewer: str = "", record_name: str = "", source: str = "group"
                  ) -> dict[int, Review]:
        """Save one decision for many beats in a single transaction: all of them or, on any conflict,
        none (ReviewConflict lists the beats someone else saved meanwhile)."""
        decision, beat_class, note, reviewer = validate(decision, beat_class, note, reviewer)
        if not expected:
            return {}
        record_name = _clean_text(record_name, 200, "record name")
        stamp = _now()
        out: dict[int, Review] = {}
        with self._transaction() as con:
            current = {}
            samples = sorted(int(s) for s in expected)
            for start in range(0, len(samples), 500):
                chunk = samples[start:start + 500]
                marks = ",".join("?" * len(chunk))
                for row in con.execute(
                        "SELECT sample, decision, beat_class, note, reviewer, updated_at, version, record_name "
                        f"FROM reviews WHERE record_digest = ? AND sample IN ({marks})",
                        (record_digest, *chunk)):
                    current[int(row[0])] = Review(record_digest, int(row[0]), *row[1:6], int(row[6]), row[7])
            conflicts = [current[s] for s in samples
                         if current.get(s) is not None and current[s].version != int(expected[s])
                         or current.get(s) is None and int(expected[s]) != 0]
            if conflicts:
                raise ReviewConflict(_conflict_message(conflicts, len(samples)), conflicts)
            for s in samples:
                prev = current.get(s)
                version = (prev.version if prev else 0) + 1
                name = record_name or (prev.record_name if prev else "")
                con.execute(
                    "INSERT INTO reviews (record_digest, sample, record_name, decision, beat_class, note, "
                    "reviewer, updated_at, version) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) "
                    "ON CONFLICT (record_digest, sample) DO UPDATE SET record_name = excluded.record_name, "
                    "decision = excluded.decision, beat_class = excluded.beat_class, note = excluded.note, "
                    "reviewer = excluded.reviewer, updated_at = excluded.updated_at, "
                    "version = excluded.version",
                    (record_digest, s, name, decision, beat_class, note, reviewer, stamp, version))
                con.execute(
                    "INSERT INTO review_history (record_digest, sample, version, decision, beat_class, note, "
                    "reviewer, changed_at, prev_decision, prev_class, prev_note, prev_reviewer, "
                    "prev_version, source) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (record_digest, s, version, decision, beat_class, note, reviewer, stamp,
                     prev.decision if prev else None, prev.beat_class if prev else None,
                     prev.note if prev else None, prev.reviewer if prev else None,
                     prev.version if prev else 0, source))
                out[s] = Review(record_digest, s, decision, beat_class, note, reviewer, stamp, version, name)
        return out

    def restore(self, record_digest: str, expected: dict[int, int], previous: dict[int, "Review | None"],
                reviewer: str) -> int:
        """Undo: put each beat of `expected` (sample -> the version the caller saved) back to `previous`
        (its review before, or None for no review), in one transaction, with a history entry per beat
        (source "undo"). Refused with ReviewConflict, changing nothing, when a beat changed since."""
        samples = sorted(expected)
        stamp = _now()
        with self._transaction() as con:
            current = self.get_many(record_digest, samples)
            changed = [current[s] for s in samples if s in current and current[s].version != expected[s]]
            missing = [s for s in samples if s not in current]
            if changed or missing:
                raise ReviewConflict(f"Not undone: {len(changed) + len(missing)} of these {len(samples)} beats "
                                     "were changed since; nothing was undone.", changed)
            for s in samples:
                _restore_rows(con, record_digest, s, current[s], previous.get(s), reviewer, stamp)
        return len(samples)


def _restore_rows(con, record_digest: str, sample: int, now: "Review", previous: "Review | None", reviewer: str,
                  stamp: str) -> None:
    """One beat put back: its previous review, or no review; the history keeps what was replaced."""
    version = now.version + 1
    if previous is None:
        con.execute("DELETE FROM reviews WHERE record_digest = ? AND sample = ?", (record_digest, sample))
        restored = ("", "", "", reviewer)
    else:
        con.execute("UPDATE reviews SET decision = ?, beat_class = ?, note = ?, reviewer = ?, updated_at = ?, "
                    "version = ? WHERE record_digest = ? AND sample = ?",
                    (previous.decision, previous.beat_class, previous.note, previous.reviewer, stamp, version,
                     record_digest, sample))
        restored = (previous.decision, previous.beat_class, previous.note, previous.reviewer)
    con.execute("INSERT INTO review_history (record_digest, sample, version, decision, beat_class, note, reviewer, "
                "changed_at, prev_decision, prev_class, prev_note, prev_reviewer, prev_version, source) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'undo')",
                (record_digest, sample, version, *restored, stamp, now.decision, now.beat_class, now.note,
                 now.reviewer, now.version))


def _conflict_message(conflicts: list[Review], n: int) -> str:
    who = sorted({c.reviewer for c in conflicts})
    first = conflicts[0]
    beats = "this beat" if n == 1 else f"{len(conflicts)} of these {n} beats"
    return (f"Not saved: {', '.join(who)} saved {beats} meanwhile (e.g. '{first.label}' at "
            f"{first.updated_at[:19].replace('T', ' ')} UTC). Their decision is shown now; "
            "save again to replace it.")


# ---------------------------------------------------------------------------------------------
# Exports


def wfdb_annotations(reviews: Iterable[Review]) -> tuple[list[int], list[str], list[str]]:
    """Samples, AAMI symbols and aux notes of the reviewed beats, sorted by sample."""
    rows = sorted(reviews, key=lambda r: r.sample)
    aux = [("other" if r.beat_class == "other" else "") for r in rows]
    return [r.sample for r in rows], [r.wfdb_symbol for r in rows], aux


def write_wfdb_annotations(record_name: str, fs: float, reviews: Iterable[Review], folder: str | os.PathLike,
                           extension: str = "rev") -> Path:
    """Write `<record_name>.<extension>` (WFDB annotation file) of the reviewed beats; wfdb.rdann reads it."""
    samples, symbols, aux = wfdb_annotations(reviews)
    if not samples:
        raise ReviewError("no reviewed beats to export yet")
    return write_annotation_file(folder, wfdb_record_name(record_name), extension, samples, symbols, aux, fs)
