"""Review store: optimistic concurrency, history, durability under concurrent and killed writers,
and the exports reading back with wfdb."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from ecg_rnn.reviews import (ReviewConflict, ReviewError, ReviewStore, default_db_path, reviewed_episodes,
                             validate, write_wfdb_annotations)
from ecg_rnn.rhythm import Episode

DIGEST = "d" * 20


def test_save_get_and_history(tmp_path):
    store = ReviewStore(tmp_path / "r.sqlite")
    r1 = store.save(DIGEST, 1000, "abnormal", "V", "wide QRS", "ann", expected_version=0, record_name="208")
    assert r1.version == 1 and r1.label == "abnormal V" and r1.wfdb_symbol == "V"
    r2 = store.save(DIGEST, 1000, "normal", "", "", "bob", expected_version=1)
    assert r2.version == 2 and r2.record_name == "208"
    got = store.get(DIGEST)
    assert list(got) == [1000] and got[1000].reviewer == "bob" and got[1000].decision == "normal"
    hist = store.history(DIGEST, 1000)
    assert [(h.version, h.decision, h.reviewer) for h in hist] == [(1, "abnormal", "ann"), (2, "normal", "bob")]
    assert (hist[1].prev_decision, hist[1].prev_class, hist[1].prev_note, hist[1].prev_reviewer) == \
        ("abnormal", "V", "wide QRS", "ann")
    assert hist[0].prev_decision is None
    with sqlite3.connect(tmp_path / "r.sqlite") as con:
        assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_stale_save_is_refused_naming_the_other_reviewer(tmp_path):
    store = ReviewStore(tmp_path / "r.sqlite")
    store.save(DIGEST, 5, "abnormal", "S", "", "alice", expected_version=0)
    with pytest.raises(ReviewConflict, match="alice") as info:
        store.save(DIGEST, 5, "normal", "", "", "bob", expected_version=0)  # bob loaded it before alice saved
    assert info.value.conflicts[0].reviewer == "alice"
    assert store.get_one(DIGEST, 5).decision == "abnormal"  # nothing overwritten
    assert len(store.history(DIGEST, 5)) == 1


def test_group_save_is_all_or_nothing(tmp_path):
    store = ReviewStore(tmp_path / "r.sqlite")
    store.save(DIGEST, 20, "noise", "", "", "alice")
    with pytest.raises(ReviewConflict, match="1 of these 3 beats"):
        store.save_many(DIGEST, {10: 0, 20: 0, 30: 0}, "abnormal", "V", "", "bob")
    assert set(store.get(DIGEST)) == {20}
    saved = store.save_many(DIGEST, {10: 0, 20: 1, 30: 0}, "abnormal", "V", "group 1", "bob")
    assert sorted(saved) == [10, 20, 30]
    assert all(r.decision == "abnormal" and r.beat_class == "V" for r in store.get(DIGEST).values())
    assert [h.source for h in store.history(DIGEST, 10)] == ["group"]


@pytest.mark.parametrize("args, message", [
    (("maybe", "", "", "x"), "decision"),
    (("abnormal", "", "", "x"), "class"),
    (("abnormal", "Z", "", "x"), "class"),
    (("normal", "", "", "  "), "name"),
    (("normal", "", "x" * 5000, "x"), "note"),
])
def test_validation(args, message):
    with pytest.raises(ReviewError, match=message):
        validate(*args)


def test_normal_drops_class_and_cleans_text():
    assert validate("Normal", "V", " ok\x07 ", " Dr\x00 A ") == ("normal", "", "ok", "Dr A")


def test_db_path_from_env(monkeypatch, tmp_path):
    monkeypatch.setenv("ECG_RNN_REVIEWS_DB", str(tmp_path / "x.sqlite"))
    assert default_db_path() == tmp_path / "x.sqlite"
    monkeypatch.delenv("ECG_RNN_REVIEWS_DB")
    assert default_db_path().name == "reviews.sqlite" and default_db_path().parent.name == "data"


def test_episode_decisions_persist_the_last_one_standing(tmp_path):
    found = [Episode("AF", 10.0, 70.0), Episode("AF", 100.0, 160.0)]
    store = ReviewStore(tmp_path / "r.sqlite")
    store.save_episode(DIGEST, found[0], "confirmed", "Dr A")
    store.save_episode(DIGEST, found[0], "rejected", "Dr B")  # a second decision replaces the first
    store.save_episode(DIGEST, Episode("noise", 200.0, 205.5), "confirmed", "Dr B")
    store.save_episode("other", found[1], "rejected", "Dr B")
    decisions = ReviewStore(tmp_path / "r.sqlite").episode_reviews(DIGEST)
    assert [(r.kind, r.start_s, r.decision, r.reviewer) for r in decisions.values()] == [
        ("AF", 10.0, "rejected", "Dr B"), ("noise", 200.0, "confirmed", "Dr B")]
    assert reviewed_episodes(found, decisions) == [found[1], Episode("noise", 200.0, 205.5)]
    store.remove_episode(DIGEST, Episode("noise", 200.0, 205.5))
    assert reviewed_episodes(found, store.episode_reviews(DIGEST)) == [found[1]]


@pytest.mark.parametrize("episode, decision, reviewer, message", [
    (Episode("AF", 0.0, 30.0), "maybe", "Dr A", "confirmed or rejected"),
    (Episode("AF", 0.0, 30.0), "confirmed", "  ", "enter your name"),
    (Episode("AF", 30.0, 30.0), "confirmed", "Dr A", "must end after it starts"),
    (Episode("AF", float("nan"), 30.0), "confirmed", "Dr A", "must end after it starts"),
])
def test_episode_decision_validation(tmp_path, episode, decision, reviewer, message):
    store = ReviewStore(tmp_path / "r.sqlite")
    with pytest.raises(ReviewError, match=message):
        store.save_episode(DIGEST, episode, decision, reviewer)
    assert store.episode_reviews(DIGEST) == {}


def test_garbage_db_file_gives_clear_error(tmp_path):
    bad = tmp_path / "bad.sqlite"
    bad.write_bytes(b"this is not a database" * 100)
    with pytest.raises(ReviewError, match="not a usable reviews database"):
        ReviewStore(bad)


def test_database_damaged_after_start_gives_clear_error(tmp_path):
    path = tmp_path / "r.sqlite"
    store = ReviewStore(path)
    store.save(DIGEST, 1, "noise", "", "", "ann")
    for suffix in ("", "-wal", "-shm"):
        p = Path(str(path) + suffix)
        if p.exists():
            p.write_bytes(b"garbage" * 2000)
    with pytest.raises(ReviewError, match="reviews database"):
        store.get(DIGEST)
    with pytest.raises(ReviewError, match="reviews database"):
        store.save(DIGEST, 2, "noise", "", "", "ann")


def test_wfdb_export_reads_back(tmp_path):
    import wfdb

    store = ReviewStore(tmp_path / "r.sqlite")
    for sample, (decision, cls) in {300: ("abnormal", "V"), 100: ("normal", ""), 200: ("noise", ""),
                                    400: ("abnormal", "other"), 500: ("abnormal", "S"),
                                    600: ("abnormal", "F"), 700: ("abnormal", "Q")}.items():
        store.save(DIGEST, sample, decision, cls, "", "ann")
    path = write_wfdb_annotations("208", 360.0, store.get(DIGEST).values(), tmp_path)
    ann = wfdb.rdann(str(tmp_path / "208"), "rev")
    assert list(ann.sample) == [100, 200, 300, 400, 500, 600, 700]
    assert list(ann.symbol) == ["N", "~", "V", "Q", "S", "F", "Q"]
    assert ann.fs == 360 and path.name == "208.rev"
    with pytest.raises(ReviewError, match="no reviewed beats"):
        write_wfdb_annotations("x", 360.0, [], tmp_path)


# ---------------------------------------------------------------------------------------------
# Several processes

_WRITER = textwrap.dedent("""
    import sys, time
    from ecg_rnn.reviews import ReviewStore, ReviewConflict
    db, who, mode, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    store = ReviewStore(db)
    print("ready", flush=True)
    sys.stdin.readline()  # start together
    if mode == "own":  # distinct beats per writer
        base = 0 if who == "a" else 1_000_000
        for i in range(n):
            store.save("rec", base + i, "abnormal", "V", f"{who}{i}", who)
    elif mode == "shared":  # the same beats, read-modify-write with retry on conflict
        for i in range(n):
            beat = i % 5
            while True:
                cur = store.get_one("rec", beat)
                try:
                    store.save("rec", beat, "normal", "", f"{who}{i}", who,
                               expected_version=cur.version if cur else 0)
                    break
                except ReviewConflict:
                    continue
    elif mode == "forever":  # report every committed save, until killed
        i = 0
        while True:
            store.save_many("rec", {i * 10 + k: 0 for k in range(10)}, "abnormal", "S", "x" * 500, who)
            print(i, flush=True)
            i += 1
    print("done", flush=True)
""")


def _spawn(tmp_path: Path, db: Path, who: str, mode: str, n: int) -> subprocess.Popen:
    script = tmp_path / "writer.py"
    script.write_text(_WRITER)
    proc = subprocess.Popen([sys.executable, str(script), str(db), who, mode, str(n)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    return proc


def _run_two_writers(tmp_path, mode: str, n: int) -> ReviewStore:
    """Start two writer processes, release them together, wait for both; the store they wrote."""
    db = tmp_path / "r.sqlite"
    ReviewStore(db)
    procs = [_spawn(tmp_path, db, w, mode, n) for w in ("a", "b")]
    for p in procs:
        p.stdin.write("go\n")
        p.stdin.flush()
    for p in procs:
        out, _ = p.communicate(timeout=120)
        assert p.returncode == 0 and "done" in out
    return ReviewStore(db)


def test_two_processes_distinct_beats_lose_nothing(tmp_path):
    store = _run_two_writers(tmp_path, "own", 60)
    assert store.count("rec") == 120
    assert len(store.history("rec")) == 120
    assert store.integrity_ok()


def test_two_processes_same_beats_no_lost_update(tmp_path):
    """Both writers edit the same 5 beats 40 times each: every save lands as its own version."""
    store = _run_two_writers(tmp_path, "shared", 40)
    reviews = store.get("rec")
    assert sum(r.version for r in reviews.values()) == 80
    hist = store.history("rec")
    assert len(hist) == 80
    for beat in range(5):  # the history chain of each beat is unbroken: version k follows k-1
        chain = [h for h in hist if h.sample == beat]
        assert [h.version for h in chain] == list(range(1, len(chain) + 1))


def test_writer_killed_mid_save_keeps_committed_reviews(tmp_path):
    db = tmp_path / "r.sqlite"
    ReviewStore(db)
    proc = _spawn(tmp_path, db, "k", "forever", 0)
    proc.stdin.write("go\n")
    proc.stdin.flush()
    committed = -1
    deadline = time.time() + 60
    while committed < 30 and time.time() < deadline:
        committed = int(proc.stdout.readline().strip())
    time.sleep(0.003)  # land the kill somewhere inside a later save
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    store = ReviewStore(db)
    assert store.integrity_ok()
    reviews = store.get("rec")
    # every save whose commit was reported is there, complete; a save in flight is all or nothing
    for i in range(committed + 1):
        assert all(i * 10 + k in reviews for k in range(10)), f"committed save {i} lost"
    assert len(reviews) % 10 == 0
    assert len(store.history("rec")) == len(reviews)
    # and the database keeps working for the next writer
    store.save("rec", 10 ** 9, "noise", "", "", "after")
    assert store.get_one("rec", 10 ** 9).reviewer == "after"
    os.remove(db)
