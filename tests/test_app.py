"""The dashboard driven by Streamlit's AppTest: example record, upload, threshold, review, group review,
conflicting reviewers, export and a restart that keeps the reviews."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("streamlit")
from streamlit.testing.v1 import AppTest  # noqa: E402

from browser_helpers import smallest_model  # noqa: E402
from ecg_rnn import dashboard as dash  # noqa: E402
from ecg_rnn.records import read_record  # noqa: E402
from ecg_rnn.reviews import ReviewStore  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
APP = str(ROOT / "app.py")
SAMPLE = ROOT / "ecg_rnn" / "samples" / "mitdb"
TIMEOUT = 180


MODEL = smallest_model()


@pytest.fixture
def db(tmp_path, monkeypatch) -> Path:
    path = tmp_path / "reviews.sqlite"
    monkeypatch.setenv("ECG_RNN_REVIEWS_DB", str(path))
    return path


def _app(**state) -> AppTest:
    if MODEL is None:
        pytest.skip("no trained model that loads (run make train)")
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    at.session_state["model"] = MODEL
    for k, v in state.items():
        at.session_state[k] = v
    return at.run()


def _ok(at: AppTest) -> None:
    assert not at.exception, [e.message for e in at.exception]
    assert not at.error, [e.value for e in at.error]


def _text(element) -> str:
    """Displayed text of a message element (the app escapes markdown in texts from files and users)."""
    return element.value.replace("\\", "")


def _metric(at: AppTest, label: str) -> str:
    return next(m.value for m in at.metric if m.label == label)


@pytest.fixture(scope="module")
def excerpt_files(tmp_path_factory) -> dict[str, bytes]:
    """Two minutes of record 208 (many V beats) as a fresh WFDB record with its reference annotations."""
    import wfdb

    folder = tmp_path_factory.mktemp("excerpt")
    rec = read_record(SAMPLE / "208")
    n = int(120 * rec.fs)
    wfdb.wrsamp("ex208", fs=rec.fs, units=["mV"], sig_name=["MLII"], p_signal=rec.signal[:n, None].astype(float),
                fmt=["16"], write_dir=str(folder))
    keep = rec.annotations.sample < n
    wfdb.wrann("ex208", "atr", rec.annotations.sample[keep], symbol=list(rec.annotations.symbol[keep]),
               fs=rec.fs, write_dir=str(folder))
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def _upload(at: AppTest, files: dict[str, bytes]) -> AppTest:
    at.radio(key="source").set_value("Upload").run()
    at.file_uploader(key="upload").set_value([(n, d, "application/octet-stream") for n, d in files.items()])
    return at.run()


def test_example_record_without_any_file(db):
    at = _app()
    _ok(at)
    assert at.selectbox(key="example").value == dash.DEFAULT_EXAMPLE
    assert int(_metric(at, "Beats").replace(",", "")) > 2000
    assert _metric(at, "Sampling rate") == "360 Hz"
    assert int(_metric(at, "Flagged").replace(",", "")) > 0
    assert len(at.dataframe) >= 1  # the flagged-beats table
    assert any("ROC-AUC" in c.value for c in at.caption)
    # jump to any beat by number
    at.number_input(key="beat_input").set_value(5).run()
    _ok(at)
    assert any(m.value.startswith("**Beat 5**") for m in at.markdown)


def test_threshold_moves_without_rerunning_the_model(db, monkeypatch):
    at = _app()
    _ok(at)
    calls = []
    real = dash.analyse
    monkeypatch.setattr(dash, "analyse", lambda *a, **k: calls.append(1) or real(*a, **k))
    before = int(_metric(at, "Flagged").replace(",", ""))
    at.slider(key="pct").set_value(99.9).run()
    _ok(at)
    after = int(_metric(at, "Flagged").replace(",", ""))
    at.session_state["view"] = "Overview"
    at.run()
    _ok(at)
    assert after < before
    assert calls == []  # re-flagging and switching views never call the model


def test_review_next_unreviewed_and_restart(db):
    at = _app(reviewer="Dr Test")
    _ok(at)
    beat = int(at.session_state["beat"])
    at.radio(key=next(r.key for r in at.radio if r.key and r.key.startswith("dec:b:"))).set_value("abnormal")
    at.selectbox(key=next(s.key for s in at.selectbox if s.key and s.key.startswith("cls:b:"))).set_value("V")
    at.text_input(key=next(t.key for t in at.text_input if t.key and t.key.startswith("note:b:"))).input("wide")
    at.button(key=next(b.key for b in at.button if "form:b:" in (b.key or "") or b.label == "Save review")).click()
    at.run()
    _ok(at)
    assert any("Saved" in _text(s) for s in at.success)
    assert at.session_state["beat"] != beat  # moved on to the next unreviewed beat
    assert _metric(at, "Reviewed").startswith("1 /")
    stored = list(ReviewStore(db).get(next(iter(_digests(db)))).values())
    assert len(stored) == 1 and stored[0].label == "abnormal V" and stored[0].note == "wide"
    assert stored[0].reviewer == "Dr Test"
    # restart: a fresh session (and fresh caches) sees the saved review
    import streamlit as st
    st.cache_resource.clear()
    again = _app(reviewer="Someone else")
    _ok(again)
    assert _metric(again, "Reviewed").startswith("1 /")
    again.number_input(key="beat_input").set_value(beat).run()
    assert any("abnormal V" in m.value and "Dr Test" in m.value for m in again.markdown)


def _digests(db: Path) -> set[str]:
    import sqlite3

    with sqlite3.connect(db) as con:
        return {r[0] for r in con.execute("SELECT record_digest FROM reviews")}


def _save_current(at: AppTest, decision: str) -> AppTest:
    at.radio(key=next(r.key for r in at.radio if r.key and r.key.startswith("dec:b:"))).set_value(decision)
    at.button(key=next(b.key for b in at.button if b.label == "Save review")).click()
    return at.run()


def test_two_reviewers_never_overwrite_silently(db):
    first = _app(reviewer="Alice", auto_next=False)
    second = _app(reviewer="Bob", auto_next=False)  # a second tab, showing the same beat
    assert first.session_state["beat"] == second.session_state["beat"]
    _save_current(first, "noise")
    _ok(first)
    _save_current(second, "normal")
    assert any("Alice" in _text(w) and "Not saved" in _text(w) for w in second.warning)
    (review,) = ReviewStore(db).get(next(iter(_digests(db)))).values()
    assert (review.decision, review.reviewer) == ("noise", "Alice")
    # having now seen Alice's decision, Bob may replace it deliberately
    _save_current(second, "normal")
    (review,) = ReviewStore(db).get(next(iter(_digests(db)))).values()
    assert (review.decision, review.reviewer, review.version) == ("normal", "Bob", 2)


def test_group_review_then_single_correction(db):
    at = _app(reviewer="Grouper", view="Groups")
    _ok(at)
    group_buttons = [b for b in at.button if b.label.startswith("Apply to group")]
    assert group_buttons, "no groups shown"
    text = next(m.value for m in at.markdown if m.value.startswith("**Group 1:"))
    size = int(text.split(":")[1].split("beats")[0])
    gkey = group_buttons[0].key or ""
    at.radio(key=next(r.key for r in at.radio if r.key and r.key.startswith("gdec:"))).set_value("abnormal")
    at.selectbox(key=next(s.key for s in at.selectbox if s.key and s.key.startswith("gcls:"))).set_value("V")
    group_buttons[0].click()
    at.run()
    _ok(at)
    assert any(f"Saved {size} beats" in _text(s) for s in at.success), [s.value for s in at.success]
    (digest,) = _digests(db)
    store = ReviewStore(db)
    assert store.count(digest) == size
    assert {h.source for h in store.history(digest)} == {"group"}
    # correct one beat of the group individually
    at.radio(key=next(r.key for r in at.radio if r.key and r.key.startswith("dec:g:"))).set_value("normal")
    at.button(key=next(b.key for b in at.button if b.label == "Save review")).click()
    at.run()
    _ok(at)
    decisions = [r.decision for r in store.get(digest).values()]
    assert decisions.count("normal") == 1 and decisions.count("abnormal") == size - 1
    del gkey


def test_export_csv_and_wfdb(db, tmp_path, monkeypatch):
    """The bytes the two download buttons serve: the CSV of all beats and a WFDB file wfdb reads back."""
    import pandas as pd
    import wfdb
    from streamlit.runtime.memory_media_file_storage import MemoryMediaFileStorage
    from streamlit.testing.v1 import app_test

    storages = []

    class KeptStorage(MemoryMediaFileStorage):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            storages.append(self)

    monkeypatch.setattr(app_test, "MemoryMediaFileStorage", KeptStorage)
    at = _app(reviewer="Exporter")
    _save_current(at, "abnormal")
    at.session_state["view"] = "Export"
    at.run()
    _ok(at)
    buttons = {b.label: b for b in at.get("download_button")}
    assert "Download beats CSV" in buttons and any(label.endswith(".rev") for label in buttons)

    def served(label: str) -> bytes:
        name = buttons[label].proto.url.rsplit("/", 1)[-1]
        return storages[-1].get_file(name).content

    frame = pd.read_csv(io.BytesIO(served("Download beats CSV")))
    assert int(_metric(at, "Beats").replace(",", "")) == len(frame)
    assert frame["flagged"].sum() == int(_metric(at, "Flagged").replace(",", ""))
    assert (frame["review"] == "abnormal").sum() == 1 and set(frame["reviewer"].dropna()) == {"Exporter"}
    rev = next(label for label in buttons if label.endswith(".rev"))
    name = rev.removeprefix("Download ")
    (tmp_path / name).write_bytes(served(rev))
    ann = wfdb.rdann(str(tmp_path / name.removesuffix(".rev")), "rev")
    reviewed = frame.loc[frame["review"] == "abnormal", "sample"].tolist()
    assert list(ann.symbol) == ["V"] and list(ann.sample) == reviewed


def test_upload_wfdb_files_and_zip(db, excerpt_files):
    at = _upload(_app(), excerpt_files)
    _ok(at)
    assert _metric(at, "Duration").startswith("02:00")
    assert any("ROC-AUC" in c.value for c in at.caption)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for n, d in excerpt_files.items():
            zf.writestr(f"rec/{n}", d)
    at.file_uploader(key="upload").set_value(("ex208.zip", buf.getvalue(), "application/zip"))
    at.run()
    _ok(at)
    assert _metric(at, "Duration").startswith("02:00")


def test_upload_csv_asks_for_the_sampling_rate(db):
    x = read_record(SAMPLE / "100").signal[: 360 * 60]
    body = ("\n".join(f"{v:.4f}" for v in x)).encode()
    at = _upload(_app(), {"excerpt.csv": body})
    assert not at.exception
    assert any("sampling rate" in _text(e) for e in at.error)
    at.number_input(key="csv_fs").set_value(360.0).run()
    _ok(at)
    assert _metric(at, "Sampling rate") == "360 Hz"


@pytest.mark.parametrize("files, message", [
    ({"evil.zip": b"zip"}, "not a readable zip"),
    ({"100.dat": b"\x00" * 1000}, "needs its .hea"),
    ({"x.hea": b"x 1 360 1000\n../../etc/passwd 16 200 16 0 0 0 0 MLII\n"}, "outside"),
    ({"x.hea": b"\x00\x01 binary junk"}, "binary"),
    ({"x.hea": b"x 1 360 1000000000000\nx.dat 16 200 16 0 0 0 0 MLII\n"}, "samples"),
    ({"x.csv": ("time,ecg\n" + "".join(f"{i / 360:.6f},nan\n" for i in range(2000))).encode()}, "NaN"),
    ({"x.csv": b"time,ecg\n0,1\n0.1,2\n0.2,1\n"}, "10 Hz"),
])
def test_bad_uploads_get_a_specific_message(db, files, message):
    if message == "not a readable zip":
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w") as zf:
            zf.writestr("../../evil.hea", b"x")
        files, message = {"evil.zip": buf.getvalue()}, "outside the archive"
    at = _upload(_app(), files)
    assert not at.exception, [e.message for e in at.exception]
    assert len(at.error) == 1 and message in _text(at.error[0]), [e.value for e in at.error]
    assert "Traceback" not in at.error[0].value


def test_no_flagged_beats_and_empty_groups(db):
    at = _app(pct=100.0, view="Groups")
    _ok(at)
    flagged = int(_metric(at, "Flagged").replace(",", ""))
    assert flagged >= 0
    if flagged == 0:
        assert any("No flagged beats" in i.value for i in at.info)
    assert np.isfinite(float(at.session_state["pct"]))


def test_selected_beat_survives_switching_views(db):
    at = _app()
    at.number_input(key="beat_input").set_value(7).run()
    at.session_state["view"] = "Groups"
    at.run()
    at.session_state["view"] = "Beats"
    at.run()
    _ok(at)
    assert any(m.value.startswith("**Beat 7**") for m in at.markdown)


# ---------------------------------------------------------------------------------------------
# The analysis layer on a synthetic record (no model needed)


def _synthetic(n: int = 60, seed: int = 0) -> dash.Analysis:
    rng = np.random.default_rng(seed)
    t = np.linspace(-0.28, 0.42, 90, endpoint=False)
    normal = np.exp(-(t / 0.02) ** 2)
    wide = 0.8 * np.exp(-(t / 0.06) ** 2)
    kind = np.array(["N"] * (n - 20) + ["V"] * 10 + ["S"] * 10)
    waves = np.stack([(wide if k == "V" else normal) + 0.01 * rng.normal(size=90) for k in kind]).astype(np.float32)
    latent = np.stack([[0.0, 0.0] if k == "N" else ([5.0, 0.0] if k == "V" else [0.0, 5.0]) for k in kind])
    latent = (latent + 0.1 * rng.normal(size=latent.shape)).astype(np.float32)
    score = np.where(kind == "N", rng.normal(0, 1, n), rng.normal(8, 1, n))
    rr = np.ones((n, 5), dtype=np.float32)
    rr[kind == "S", 3] = 0.6
    fs = 100.0
    sample = (np.arange(n) * 80 + 50).astype(np.int64)
    return dash.Analysis(
        name="syn", digest="s" * 20, model="m", fs=fs, lead="MLII", sig_name=("MLII",), duration_s=n * 0.8 + 1,
        signal=rng.normal(size=int((n * 0.8 + 1) * fs)).astype(np.float32), sample=sample, time_s=sample / fs,
        rr=rr, ref_symbol=np.where(kind == "N", "N", np.where(kind == "V", "V", "A")), ref_aami=kind,
        waves=waves, recon=np.tile(normal, (n, 1)).astype(np.float32), latent=latent, score=score,
        percentile=np.clip(50 + 10 * score, 0, 100), normal_scores=np.sort(rng.normal(0, 1, 500)),
        default_percentile=99.0, pre_s=0.28, post_s=0.42, has_reference=True)


def test_flags_summary_and_agreement():
    a = _synthetic()
    flags = dash.flags_at(a, 99.0)
    assert flags[-20:].all() and flags[:-20].sum() <= 2
    assert dash.flags_at(a, 100.0).sum() <= flags.sum()
    s = dash.summary(a, flags)
    assert s["beats"] == 60 and s["flagged"] == flags.sum() and abs(s["heart_rate_bpm"] - 60) < 1
    assert s["roc_auc"] > 0.99 and s["sensitivity"] == 1.0
    table = dash.confusion(a, flags)
    assert table.loc["V", "flagged"] == 10 and table.loc["S", "beats"] == 10 and table.loc["N", "beats"] == 40


def test_clusters_separate_morphologies_largest_first():
    a = _synthetic()
    flags = np.isin(a.ref_aami, ("V", "S"))
    flags[:5] = False
    groups = dash.cluster_flagged(a, flags)
    assert len(groups) == 2 and sum(g.size for g in groups) == 20
    for g in groups:
        assert len(set(a.ref_aami[g.index])) == 1  # one morphology per group
        assert list(a.score[g.index]) == sorted(a.score[g.index], reverse=True)
    assert dash.cluster_flagged(a, np.zeros(len(a), bool)) == []
    one = np.zeros(len(a), bool)
    one[-1] = True
    assert [g.size for g in dash.cluster_flagged(a, one)] == [1]


def test_next_unreviewed_and_tables():
    from ecg_rnn.reviews import Review

    a = _synthetic()
    flags = np.isin(a.ref_aami, ("V", "S"))
    order = list(dash.flagged_table(a, flags, {}).index)
    assert a.score[order[0]] == a.score[flags].max()
    first = dash.next_unreviewed(a, flags, {})
    assert first == order[0]
    reviews = {int(a.sample[first]): Review(a.digest, int(a.sample[first]), "noise", "", "", "x", "t", 1)}
    assert dash.next_unreviewed(a, flags, reviews) == order[1]
    assert dash.next_unreviewed(a, flags, reviews, after=order[3]) == order[4]
    assert dash.review_progress(a, flags, reviews) == (1, 20)
    table = dash.beats_table(a, flags, reviews)
    assert len(table) == 60 and (table["review"] == "noise").sum() == 1
    assert dash.typical_normal(a, flags).shape == (90,)
    for fig in (dash.strip_figure(a, flags, 3, reviews=reviews), dash.overview_figure(a, flags, 1.0),
                dash.beat_figure(a, 3, dash.typical_normal(a, flags))):
        assert fig.data


def test_analysis_cache_computes_once_and_bounds_memory():
    import threading

    cache = dash.AnalysisCache(max_entries=3, max_bytes=10_000)
    calls = []

    def compute():
        calls.append(1)
        return np.zeros(100)

    threads = [threading.Thread(target=cache.get_or_compute, args=("k", compute)) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1
    for i in range(5):
        cache.get_or_compute(i, lambda: np.zeros(1000))  # 8 kB each: only one fits
    assert cache.get(4) is not None and cache.get(0) is None and cache.get("k") is None


def test_texts_from_files_are_shown_literally():
    shown = dash.md_escape("[click](http://evil.example) **x** `y`\nz")
    assert "[click](" not in shown and "**" not in shown and "\n" not in shown
    assert shown.replace("\\", "") == "[click](http://evil.example) **x** `y` z"
    assert dash.fmt(float("nan")) == "–" and dash.fmt(0.5, ".1f", 100, "%") == "50.0%"
