"""The dashboard driven by Streamlit's AppTest: example record, upload, threshold kept per recording, review
(repeated clicks saved once), group review with its confirm step and undo, episodes, the review queue's
orders, conflicting reviewers, exports (beats, events, report) and a restart that keeps the reviews."""

from __future__ import annotations

import functools
import io
import zipfile
from pathlib import Path

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from browser_helpers import smallest_model
from ecg_rnn import dashboard as dash
from ecg_rnn.records import read_record, source_from_arrays
from ecg_rnn.reviews import ReviewStore

ROOT = Path(__file__).resolve().parents[1]
APP = str(ROOT / "app.py")
SAMPLE = ROOT / "ecg_rnn" / "samples" / "mitdb"
TIMEOUT = 180

_model = functools.cache(smallest_model)  # loaded when the first test runs, not when the tests are collected


@pytest.fixture
def db(tmp_path, monkeypatch) -> Path:
    path = tmp_path / "reviews.sqlite"
    monkeypatch.setenv("ECG_RNN_REVIEWS_DB", str(path))
    return path


def _app(**state) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    at.session_state["model"] = _model()
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


def _flagged(at: AppTest) -> int:
    return int(_metric(at, "Flagged").replace(",", ""))


def _slider(at: AppTest):
    """The threshold slider (keyed per recording and model)."""
    (slider,) = [s for s in at.slider if s.label.startswith("Flag beats above")]
    return slider


def _toasts(at: AppTest) -> list[str]:
    return [_text(t) for t in at.toast]


def _example_analysis(name: str = dash.DEFAULT_EXAMPLE) -> dash.Analysis:
    """The analysis the app shows for an example record, computed here independently of the app."""
    from ecg_rnn.records import open_record

    det = dash.load_detector(dash.available_models()[_model()])
    source = open_record(dash.example_records()[name])
    return dash.analyse(source, source.load().digest, det, _model())


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
    before = _flagged(at)
    _slider(at).set_value(99.9).run()
    _ok(at)
    after = _flagged(at)
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
    assert any("Saved" in t for t in _toasts(at))
    assert at.session_state["beat"] != beat  # moved on to the next unreviewed beat
    assert _metric(at, "Reviewed").startswith("1/")
    stored = list(ReviewStore(db).get(next(iter(_digests(db)))).values())
    assert len(stored) == 1 and stored[0].label == "abnormal V" and stored[0].note == "wide"
    assert stored[0].reviewer == "Dr Test"
    # restart: a fresh session (and fresh caches) sees the saved review
    import streamlit as st
    st.cache_resource.clear()
    again = _app(reviewer="Someone else")
    _ok(again)
    assert _metric(again, "Reviewed").startswith("1/")
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


def test_group_review_confirmed_then_single_correction(db):
    at = _app(reviewer="Grouper", view="Groups")
    _ok(at)
    group_buttons = [b for b in at.button if b.label.startswith("Apply to group")]
    assert len(group_buttons) == 1, "one group at a time: no other group's Apply button to hit by mistake"
    text = next(m.value for m in at.markdown if m.value.startswith("**Group 1:"))
    size = int(text.split(":")[1].split("beats")[0])
    at.radio(key=next(r.key for r in at.radio if r.key and r.key.startswith("gdec:"))).set_value("abnormal")
    at.selectbox(key=next(s.key for s in at.selectbox if s.key and s.key.startswith("gcls:"))).set_value("V")
    group_buttons[0].click()
    at.run()
    _ok(at)
    assert ReviewStore(db).count() == 0  # nothing saved before the confirmation
    assert any(f"Label **{size} beats** of group 1 as **abnormal V**" in w.value for w in at.warning)
    at.button(key="confirm_bulk").click()
    at.run()
    _ok(at)
    assert any(f"Saved {size} beats" in t for t in _toasts(at)), _toasts(at)
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


def test_group_undo_restores_previous_reviews_and_absence(db):
    at = _app(reviewer="Undoer", auto_next=False)
    _save_current(at, "noise")  # one beat reviewed before the group decision
    (digest,) = _digests(db)
    store = ReviewStore(db)
    before = store.get(digest)
    at.session_state["view"] = "Groups"
    at.run()
    at.checkbox(key=next(c.key for c in at.checkbox if c.key and c.key.startswith("gnew:"))).uncheck()
    at.radio(key=next(r.key for r in at.radio if r.key and r.key.startswith("gdec:"))).set_value("normal")
    text = next(m.value for m in at.markdown if m.value.startswith("**Group 1:"))
    size = int(text.split(":")[1].split("beats")[0])
    next(b for b in at.button if b.label.startswith("Apply to group")).click()
    at.run()
    at.button(key="confirm_bulk").click()
    at.run()
    _ok(at)
    after = store.get(digest)
    assert sum(r.decision == "normal" for r in after.values()) == size > 1
    undo = at.button(key="undo_bulk")
    assert undo.label.startswith("Undo: group 1")
    undo.click()
    at.run()
    _ok(at)
    restored = store.get(digest)
    assert {s: (r.decision, r.reviewer) for s, r in restored.items()} == \
        {s: (r.decision, r.reviewer) for s, r in before.items()}
    assert [h.source for h in store.history(digest)].count("undo") == size
    assert not [b for b in at.button if b.key == "undo_bulk"]


def test_group_form_starts_from_what_the_group_looks_like():
    """Without suggested classes, a group of wide beats starts as V, premature narrow ones as S, and beats
    like the typical normal one as normal; with suggested classes, their majority decides."""
    a = _synthetic()
    flags = np.isin(a.ref_aami, ("V", "S")) | (np.arange(len(a)) < 5)
    normal = dash.typical_normal(a, flags)
    groups = {str(a.ref_aami[g.index[0]]): g for g in dash.cluster_flagged(a, flags)}
    assert dash.group_default(a, groups["V"], normal) == ("abnormal", "V")
    assert dash.group_default(a, groups["S"], normal) == ("abnormal", "S")
    assert dash.group_default(a, groups["N"], normal) == ("normal", "")
    a.suggested = np.where(a.ref_aami == "V", "F", "N")
    assert dash.group_default(a, groups["V"], normal) == ("abnormal", "F")
    assert dash.group_default(a, groups["S"], normal) == ("normal", "")


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
    assert {"Download beats CSV", "Download events CSV"} <= set(buttons)
    assert any(label.endswith(".rev") for label in buttons)

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
    (klass,) = frame.loc[frame["review"] == "abnormal", "review_class"]  # the form starts from the suggestion
    assert list(ann.symbol) == [klass] and list(ann.sample) == reviewed
    # the Holter events of what is shown: the reviewed beat's class counts
    events = pd.read_csv(io.BytesIO(served("Download events CSV")))
    assert {"kind", "start_s", "end_s", "beats"} <= set(events.columns)
    t = float(frame.loc[frame["review"] == "abnormal", "time_s"].iloc[0])
    covering = events[events["kind"].str.startswith(klass) & (events["start_s"] <= t + 1e-3) & (events["end_s"] >= t - 1e-3)]
    assert klass not in ("V", "S") or len(covering) > 0, events.head(20)


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
    at = _app(view="Groups")
    _slider(at).set_value(100.0).run()
    _ok(at)
    flagged = _flagged(at)
    # at the 100th percentile a beat is flagged when it scores above every held-out normal beat, or
    # when it is suggested ventricular inside AF
    a = _example_analysis()
    by_score = a.score > a.normal_scores.max()
    assert flagged == int((by_score | ((a.rhythm == "AF") & (a.suggested == "V") & (a.quality != "noise"))).sum())
    if flagged == 0:
        assert any("No flagged beats" in i.value for i in at.info)
    else:
        assert any(b.label.startswith("Apply to group") for b in at.button)
    assert _slider(at).value == 100.0


def test_threshold_shown_is_used_and_kept_per_recording(db):
    """The slider starts at the model's threshold, the flags follow what it shows through other
    interactions, and a threshold set on one recording comes back when the reviewer returns to it."""
    a = _example_analysis()
    at = _app()
    assert _slider(at).value == a.default_percentile
    assert _flagged(at) == int(dash.flags_at(a, a.default_percentile).sum())
    at.sidebar.text_input(key="reviewer").input("Dr Keep").run()
    next(b for b in at.button if b.label == "Next flagged").click()
    at.run()
    assert _slider(at).value == a.default_percentile
    assert _flagged(at) == int(dash.flags_at(a, a.default_percentile).sum())
    _slider(at).set_value(99.0).run()
    assert _flagged(at) == int(dash.flags_at(a, 99.0).sum())
    at.selectbox(key="example").set_value("100").run()
    _ok(at)
    other = _example_analysis("100")
    assert _slider(at).value == other.default_percentile  # another recording: the model's threshold
    assert _flagged(at) == int(dash.flags_at(other, other.default_percentile).sum())
    at.selectbox(key="example").set_value(dash.DEFAULT_EXAMPLE).run()
    assert _slider(at).value == 99.0 and _flagged(at) == int(dash.flags_at(a, 99.0).sum())


def test_repeated_save_click_saves_once_and_moves_on(db):
    """The second click of a double click reaches the server with the page as it was before the first
    one saved: the same decision by the same reviewer is not a conflict; it moves on like the first."""
    at = _app(reviewer="Dr Twice")
    beat = int(at.session_state["beat"])
    a = _example_analysis()
    sample = int(a.sample[beat])
    (digest,) = {d for d, _ in at.session_state["seen"]}
    decision = next(r for r in at.radio if r.key and r.key.startswith("dec:b:")).value
    klass = next(x for x in at.selectbox if x.key and x.key.startswith("cls:b:")).value
    ReviewStore(db).save(digest, sample, decision, klass, "", "Dr Twice", record_name="208")  # the first click
    next(b for b in at.button if b.label == "Save review").click()
    at.run()
    _ok(at)
    assert not at.warning, [w.value for w in at.warning]
    assert ReviewStore(db).count(digest) == 1 and len(ReviewStore(db).history(digest)) == 1
    assert int(at.session_state["beat"]) != beat
    # a different decision is still a conflict, shown and not saved
    at.session_state["beat"] = beat
    at.session_state["seen"] = {}
    at.run()
    st_seen = at.session_state["seen"]
    at.session_state["seen"] = {k: 0 for k in st_seen}
    _save_current(at, "noise" if decision != "noise" else "normal")
    assert any("Not saved" in _text(w) for w in at.warning)
    assert ReviewStore(db).get_one(digest, sample).decision == decision


def test_stage_outputs_shown_when_present(db, monkeypatch):
    """With the quality, rhythm and suggestion stages' outputs (injected here into the real scoring of
    record 208), noise beats leave the flagged beats (one switch brings them back), AF burden and noise
    share are shown, the review form starts from the suggested class, the queue orders by it, and an AF
    episode is confirmed or rejected as a whole."""
    import streamlit as st

    from ecg_rnn.rhythm import Episode

    real = dash.score_source

    def with_stages(detector, source, peaks="detect"):
        scored = real(detector, source, peaks)
        t = scored.beats.time_s
        scored.episodes = [Episode("AF", 60.0, 180.0), Episode("noise", 300.0, 330.0)]
        scored.quality = np.where((t >= 300.0) & (t < 330.0), "noise", "ok")
        scored.rhythm = np.where((t >= 60.0) & (t < 180.0), "AF", "")
        scored.suggested_class = np.where(np.asarray(scored.beats.aami) == "", "Q", np.asarray(scored.beats.aami))
        return scored

    monkeypatch.setattr(dash, "score_source", with_stages)
    st.cache_resource.clear()
    try:
        at = _app(reviewer="Dr Stage")
        _ok(at)
        a = _example_analysis()
        noise = (a.time_s >= 300.0) & (a.time_s < 330.0)
        flags = dash.flags_at(a, a.default_percentile)
        assert _flagged(at) == int((flags & ~noise).sum()) < int(flags.sum())
        assert _metric(at, "AF burden") == f"{100 * 120 / a.duration_s:.1f} %"
        assert _metric(at, "Noise") == f"{100 * 30 / a.duration_s:.1f} %"
        at.sidebar.toggle(key="show_noise").set_value(True).run()
        assert _flagged(at) == int(flags.sum())
        at.sidebar.toggle(key="show_noise").set_value(False).run()
        beat = int(at.session_state["beat"])
        cls = str(a.ref_aami[beat] or "Q")
        want = ("normal", "V") if cls == "N" else ("abnormal", cls)
        decision = next(r for r in at.radio if r.key and r.key.startswith("dec:b:")).value
        klass = next(x for x in at.selectbox if x.key and x.key.startswith("cls:b:")).value
        assert (decision, klass if decision == "abnormal" else "V") == want
        at.radio(key="queue_order").set_value("suggested class").run()
        _ok(at)
        shown = list(at.dataframe[0].value["suggested"])
        rank = [dash.SUGGESTED_ORDER.index(c) for c in shown]
        assert len(shown) > 1 and rank == sorted(rank)
        # the AF episode, confirmed as a whole, then rejected: the burden follows
        at.session_state["view"] = "Episodes"
        at.run()
        _ok(at)
        assert len(at.dataframe) == 1  # the episodes table
        at.session_state[f"episodes:{a.digest}"] = {"selection": {"rows": [0], "columns": []}}
        at.run()
        at.button(key="ep_reject").click()
        at.run()
        _ok(at)
        assert _metric(at, "AF burden") == "0.0 %"
        saved = ReviewStore(db).episode_reviews(a.digest)  # in the database: it survives a server restart
        assert [(r.kind, r.decision, r.reviewer) for r in saved.values()] == [("AF", "rejected", "Dr Stage")]
        at.button(key="ep_confirm").click()
        at.run()
        assert _metric(at, "AF burden") == f"{100 * 120 / a.duration_s:.1f} %"
        assert [r.decision for r in ReviewStore(db).episode_reviews(a.digest).values()] == ["confirmed"]
    finally:
        st.cache_resource.clear()


def test_mark_a_stretch_as_noise_confirmed_and_undone(db):
    at = _app(reviewer="Dr Noise", view="Episodes")
    _ok(at)
    a = _example_analysis()
    digest = a.digest
    at.number_input(key=f"noise_from:{digest}").set_value(100.0)
    at.number_input(key=f"noise_to:{digest}").set_value(110.0).run()
    inside = dash.beats_in(a, 100.0, 110.0)
    ask = at.button(key="ask_noise")
    assert ask.label.startswith(f"Mark {len(inside)} beats")
    flagged_before = _flagged(at)
    ask.click()
    at.run()
    assert ReviewStore(db).count() == 0
    at.button(key="confirm_bulk").click()
    at.run()
    _ok(at)
    saved = ReviewStore(db).get(digest)
    assert sorted(saved) == sorted(int(x) for x in a.sample[inside])
    assert {r.decision for r in saved.values()} == {"noise"}
    flags = dash.flags_at(a, a.default_percentile)
    assert _flagged(at) == flagged_before - int(flags[inside].sum())  # noise beats leave the flagged ones
    at.button(key="undo_bulk").click()
    at.run()
    _ok(at)
    assert ReviewStore(db).count(digest) == 0 and _flagged(at) == flagged_before


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
        name="syn", digest="s" * 20, model="m", fs=fs, lead="MLII", sig_name=("MLII", "V1"), duration_s=n * 0.8 + 1,
        source=source_from_arrays("syn", rng.normal(size=(int((n * 0.8 + 1) * fs), 2)), fs, ("MLII", "V1"), 0),
        sample=sample, time_s=sample / fs,
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
    queue = dash.review_queue(a, flags)
    order = list(dash.flagged_table(a, flags, {}).index)
    assert order == list(queue) and a.score[order[0]] == a.score[flags].max()
    first = dash.next_unreviewed(a, queue, {})
    assert first == order[0]
    reviews = {int(a.sample[first]): Review(a.digest, int(a.sample[first]), "noise", "", "", "x", "t", 1)}
    assert dash.next_unreviewed(a, queue, reviews) == order[1]
    assert dash.next_unreviewed(a, queue, reviews, after=order[3]) == order[4]
    assert dash.neighbours(queue, order[3]) == (order[2], order[4])
    assert dash.neighbours(queue, 0) == (None, order[0])  # a beat outside the queue: next is its first
    assert dash.review_progress(a, flags, reviews) == (1, 20)
    table = dash.beats_table(a, flags, reviews)
    assert len(table) == 60 and (table["review"] == "noise").sum() == 1
    assert dash.typical_normal(a, flags).shape == (90,)
    for fig in (dash.strip_figure(a, flags, 3, reviews=reviews), dash.overview_figure(a, flags, 1.0),
                dash.beat_figure(a, 3, dash.typical_normal(a, flags))):
        assert fig.data


def test_queue_orders():
    a = _synthetic()
    flags = np.isin(a.ref_aami, ("V", "S"))
    by_time = dash.review_queue(a, flags, "time")
    assert list(by_time) == sorted(np.flatnonzero(flags))
    groups = dash.cluster_flagged(a, flags)
    by_group = dash.review_queue(a, flags, "group", groups)
    gid = dash.group_of_beats(a, groups)[by_group]
    assert list(gid) == sorted(gid)
    for g in np.unique(gid):  # highest score first inside a group
        assert list(a.score[by_group[gid == g]]) == sorted(a.score[by_group[gid == g]], reverse=True)
    a.suggested = np.where(a.ref_aami == "S", "S", np.where(a.ref_aami == "V", "V", "N"))
    by_class = dash.review_queue(a, flags, "suggested class")
    assert list(a.suggested[by_class]) == ["V"] * 10 + ["S"] * 10
    assert "suggested" in dash.flagged_table(a, flags, {}, by_class).columns
    with pytest.raises(ValueError):
        dash.review_queue(a, flags, "colour")


def test_strip_draws_every_lead_centred_and_stacked():
    """Leads with large offsets (5-6.5 mV, as some recorders write) are drawn centred, one below the
    other, in the order chosen lead first; the axis names the leads instead of reading raw millivolts."""
    a = _synthetic()
    t = np.arange(a.source.sig_len) / a.fs
    beat = np.exp(-((t % 0.8) - 0.3) ** 2 / 0.0004)
    leads = np.column_stack([5.5 + beat, 6.2 - 0.5 * beat, 0.3 * beat])
    a.source = source_from_arrays("syn", leads, a.fs, ("I", "II", "V1"), 1)
    a.sig_name = ("I", "II", "V1")
    assert a.lead_names == ("II", "I", "V1")
    fig = dash.strip_figure(a, np.zeros(len(a), bool), 10)
    traces = [tr for tr in fig.data if tr.name in a.lead_names]
    assert [tr.name for tr in traces] == ["II", "I", "V1"]
    medians = [float(np.median(tr.y)) for tr in traces]
    assert medians == sorted(medians, reverse=True)  # stacked downwards in lead order
    spacing = medians[0] - medians[1]
    assert abs(medians[0]) < 0.05 and spacing >= dash.STRIP_MIN_SPACING_MV
    for tr, m in zip(traces, medians):
        assert np.max(tr.y) - m < spacing / 2 and m - np.min(tr.y) < spacing / 2  # no overlap
    assert list(fig.layout.yaxis.ticktext) == ["II", "I", "V1"]


def test_noise_episodes_and_events(tmp_path):
    from ecg_rnn.reviews import Review, ReviewStore, reviewed_episodes
    from ecg_rnn.rhythm import Episode

    a = _synthetic()
    a.episodes = [Episode("AF", 0.0, 10.0), Episode("noise", 20.0, 24.0)]
    noise = dash.noise_beats(a)
    assert noise.sum() == len(dash.beats_in(a, 20.0, 24.0)) > 0
    flags = dash.flags_at(a, 99.0, noise)
    assert not (flags & noise).any()
    s = dash.summary(a, flags)
    assert s["af_burden"] == pytest.approx(10.0 / a.duration_s) and s["noise_share"] == pytest.approx(4.0 / a.duration_s)
    store = ReviewStore(tmp_path / "reviews.sqlite")
    store.save_episode(a.digest, a.episodes[0], "rejected", "Dr E")
    store.save_episode(a.digest, Episode("noise", 30.0, 32.0), "confirmed", "Dr E")
    store = ReviewStore(tmp_path / "reviews.sqlite")  # decisions persist: a new store (a reload) sees them
    kept = reviewed_episodes(a.episodes, store.episode_reviews(a.digest))
    assert [(e.kind, e.start_s) for e in kept] == [("noise", 20.0), ("noise", 30.0)]
    assert dash.summary(a, flags, kept)["af_burden"] == 0.0
    table = dash.episodes_table(a, kept, store.episode_reviews(a.digest))
    assert list(table["kind"]) == ["AF", "noise", "noise"] and table["review"].iloc[0].startswith("rejected")
    # events: a reviewed V beat counts as V, unreviewed flagged beats as their suggested class
    v = int(np.flatnonzero(a.ref_aami == "V")[0])
    reviews = {int(a.sample[v]): Review(a.digest, int(a.sample[v]), "abnormal", "V", "", "x", "t", 1)}
    classes, reviewed, _ = dash.beat_classes(a, flags, reviews)
    assert classes[v] == "V" and reviewed.sum() == 1 and set(classes[~flags]) == {"N"}
    events = dash.holter_events(a, flags, reviews, kept)
    assert set(events["kind"]) >= {"noise"} and "AF" not in set(events["kind"])


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
    assert np.array_equal(cache.get(4), np.zeros(1000)) and cache.get(0) is None and cache.get("k") is None


def test_texts_from_files_are_shown_literally():
    shown = dash.md_escape("[click](http://evil.example) **x** `y`\nz")
    assert "[click](" not in shown and "**" not in shown and "\n" not in shown
    assert shown.replace("\\", "") == "[click](http://evil.example) **x** `y` z"
    assert dash.fmt(float("nan")) == "–" and dash.fmt(0.5, ".1f", 100, "%") == "50.0%"
