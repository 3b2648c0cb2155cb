"""ecg-rnn dashboard: upload a recording, see the flagged beats, review them.

Layout and widgets only. The analysis is in ecg_rnn.dashboard, uploads in ecg_rnn.uploads / records and the
review store in ecg_rnn.reviews. Run with `make app` (streamlit run app.py on localhost).
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path

import numpy as np
import streamlit as st

from ecg_rnn import dashboard as dash
from ecg_rnn import reviews as rv
from ecg_rnn import uploads as up
from ecg_rnn.errors import EcgRnnError
from ecg_rnn.records import open_record, open_upload
from ecg_rnn.rhythm import Episode

st.set_page_config(page_title="ecg-rnn: flagged beats", layout="wide")
log = logging.getLogger("ecg_rnn.app")

DECISION_LABELS = {"abnormal": "Abnormal", "normal": "Normal", "noise": "Noise"}  # normal: a false alarm
VIEWS = ("Beats", "Groups", "Episodes", "Overview", "Export")
UPLOAD_TYPES = ["hea", "dat", "atr", "qrs", "zip", "csv", "txt", "edf", "bdf"]
PAGE_ROWS = 14  # the queue table shows the page of the current beat, all of it without scrolling
ROW_PX = 35
REVIEW_PX, GROUP_PX = 104, 34  # queue table columns: together with the others they fit 1400 px
# one screen at 1400 x 1000: less padding above the page and between blocks, smaller metric values
COMPACT_CSS = """<style>
[data-testid="stMainBlockContainer"] {padding: 3.2rem 1.5rem 1rem 1.5rem;}
[data-testid="stMainBlockContainer"] [data-testid="stVerticalBlock"] {gap: 0.45rem;}
[data-testid="stMetricValue"] {font-size: 1.3rem;}
[data-testid="stMain"] h3 {padding: 0 0 0.2rem 0;}
</style>"""
# keyboard: n / p / u press Next flagged / Prev flagged / Next unreviewed (outside text fields); when a
# beat's Save button is drawn (a save, a step) the focus goes to it, so Enter confirms and moves on.
# While the app reruns, the previous beat's form stays on the page (marked data-stale) until the new one
# replaces it: a pressed Save gives up the focus, and only a current (not stale) button is focused or
# pressed, so Enter never lands on the form of the beat just saved. The frame stays the same from run to
# run: it watches the page for the new button instead of waiting to be reloaded at the end of each run,
# at most once a frame and by the buttons' text content (innerText would lay the page out again on each of
# the many changes a chart makes while it draws).
KEYBOARD_JS = """<script>
(() => {
  const document = window.parent.document;  // this runs in a component's frame, on the app's origin
  const current = (label) => [...document.querySelectorAll('button')]
    .find(x => x.textContent.trim() === label && !x.closest('[data-stale=true]'));
  const press = (label) => {
    const b = current(label);
    if (b && !b.disabled) { b.click(); return true; }
    return false;
  };
  const keys = {n: 'Next flagged', p: 'Prev flagged', u: 'Next unreviewed'};
  const onKey = (ev) => {
    const t = ev.target, tag = (t.tagName || '').toLowerCase();
    if (ev.ctrlKey || ev.metaKey || ev.altKey || tag === 'input' || tag === 'textarea' || t.isContentEditable) return;
    if (keys[ev.key] && press(keys[ev.key])) ev.preventDefault();
  };
  const onClick = (ev) => {
    const b = ev.target.closest && ev.target.closest('button');
    if (b && b.textContent.trim() === 'Save review') setTimeout(() => b.blur(), 0);
  };
  let focused = null;  // the Save button focused last: each new one is focused once
  const focusNewSave = () => {
    const b = current('Save review');
    if (b && b !== focused) { focused = b; b.focus({preventScroll: true}); }
  };
  let queued = false;  // one look per frame, however many changes the frame brought
  const watch = () => {
    if (queued) return;
    queued = true;
    window.parent.requestAnimationFrame(() => { queued = false; focusNewSave(); });
  };
  // a reloaded frame (a new page view) replaces the listeners and the watcher of the previous one
  const parent = window.parent;
  if (parent.ecgRnnKeys) {
    document.removeEventListener('keydown', parent.ecgRnnKeys);
    document.removeEventListener('click', parent.ecgRnnSaveClick);
    parent.ecgRnnWatcher.disconnect();
  }
  parent.ecgRnnKeys = onKey;
  parent.ecgRnnSaveClick = onClick;
  parent.ecgRnnWatcher = new MutationObserver(watch);
  document.addEventListener('keydown', onKey);
  document.addEventListener('click', onClick);
  parent.ecgRnnWatcher.observe(document.body, {childList: true, subtree: true, attributes: true,
                                               attributeFilter: ['data-stale']});
  window.addEventListener('pagehide', () => parent.ecgRnnWatcher.disconnect());  // left the Beats view
  focusNewSave();
})();
</script>"""


# ---------------------------------------------------------------------------------------------
# Process-wide caches (shared by all sessions): keyed by content hashes, never by file names


@st.cache_resource(show_spinner=False)
def analysis_cache() -> dash.AnalysisCache:
    return dash.AnalysisCache(max_entries=8)


@st.cache_resource(show_spinner=False)
def record_cache() -> dash.AnalysisCache:
    return dash.AnalysisCache(max_entries=8)


@st.cache_resource(show_spinner=False)
def group_cache() -> dash.AnalysisCache:
    return dash.AnalysisCache(max_entries=32)


@st.cache_resource(show_spinner=False, max_entries=6)
def detector(path: str, key: str):
    return dash.load_detector(Path(path))


@st.cache_resource(show_spinner=False)
def long_lived_objects_frozen() -> bool:
    """Streamlit collects garbage after every script run (runner.postScriptGC): a full collection walks
    every object of the server, about 0.3 s once torch, pandas and plotly are loaded, and a save costs two
    runs (its own, then the fragments it reruns). The objects alive after the first page is drawn (modules,
    models) live as long as the server: collected once, then frozen, later collections skip them."""
    import gc

    gc.collect()
    gc.freeze()
    return True


@st.cache_resource(show_spinner=False)
def review_store(path: str) -> rv.ReviewStore:
    return rv.ReviewStore(path)


def episode_reviews() -> rv.ReviewStore:
    """Episode decisions live in the review store, beside the beat reviews."""
    return review_store(str(rv.default_db_path()))


def stop_with(message: str, hint: str = "") -> None:
    st.error(dash.md_escape(message) + (f"\n\n{hint}" if hint else ""))
    st.stop()


def unexpected(what: str, exc: BaseException) -> None:
    log.exception("%s", what)
    stop_with(f"{what} failed unexpectedly ({dash.describe_error(exc)}). The details are in the server log.")


def opened(source):
    """A recording source with its content digest (reviews are keyed by it)."""
    return source, source.load().digest


# ---------------------------------------------------------------------------------------------
# Actions (callbacks run before the rerun, with the versions this session last displayed)


def flash(kind: str, text: str) -> None:
    st.session_state["flash"] = (kind, text)


def show_flash(where) -> None:
    msg = st.session_state.pop("flash", None)
    if msg and msg[0] == "success":
        st.toast(msg[1])  # a toast does not move the page under the reviewer's pointer
    elif msg:
        getattr(where, msg[0])(msg[1])


def guarded(save):
    """Run a review save; a conflict or a refused value becomes a visible message, not a traceback."""
    try:
        return save()
    except rv.ReviewConflict as exc:
        flash("warning", dash.md_escape(str(exc)))
    except EcgRnnError as exc:
        flash("error", f"Not saved: {dash.md_escape(str(exc))}")
    return None


def save_beat(store: rv.ReviewStore, digest: str, name: str, sample: int, prefix: str, next_beat,
              refresh: tuple[str, ...] = ()) -> None:
    """Save the form of one beat. `refresh` names the fragments that show what a save changes (the Beats
    view, the review counts): only they rerun, not the whole app, which keeps save-and-next fast."""
    record_review(store, digest, name, sample, prefix, next_beat)
    if refresh:
        st.rerun(list(refresh))


def record_review(store: rv.ReviewStore, digest: str, name: str, sample: int, prefix: str, next_beat) -> None:
    key = f"{prefix}:{digest}:{sample}"
    state = st.session_state
    values = (state.get(f"dec:{key}", "abnormal"), state.get(f"cls:{key}", "V"), state.get(f"note:{key}", ""),
              state.get("reviewer", ""))
    try:
        saved = store.save(digest, sample, *values, expected_version=state.get("seen", {}).get((digest, sample), 0),
                           record_name=name)
    except rv.ReviewConflict as exc:
        if not all(dash.same_review(c, *values) for c in exc.conflicts):
            flash("warning", dash.md_escape(str(exc)))
            return
        saved = exc.conflicts[0]  # the same decision by the same reviewer (a repeated click): saved already
    except EcgRnnError as exc:
        flash("error", f"Not saved: {dash.md_escape(str(exc))}")
        return
    flash("success", f"Saved: beat at sample {sample} is {saved.label} (by {dash.md_escape(saved.reviewer)}, "
                     f"version {saved.version}).")
    if next_beat is not None and state.get("auto_next", True):
        state["beat"] = int(next_beat)


def ask_bulk(pending: dict) -> None:
    """A decision on many beats waits for its confirmation (the confirm step shows what it will do)."""
    st.session_state["pending"] = pending


def ask_group(gkey: str, what: str) -> None:
    state = st.session_state
    seen = state.get("seen_group", {}).get(gkey, {})
    only_new = state.get(f"gnew:{gkey}", True)
    expected = {s: v for s, v in seen.items() if v == 0 or not only_new}
    if not expected:
        flash("info", "Every beat of this group is already reviewed; untick 'only beats not yet reviewed' to "
                      "overwrite.")
        return
    ask_bulk({"key": gkey, "what": what, "expected": expected, "decision": state.get(f"gdec:{gkey}", "abnormal"),
              "cls": state.get(f"gcls:{gkey}", "V"), "note": state.get(f"gnote:{gkey}", ""), "source": "group"})


def confirm_bulk(store: rv.ReviewStore, digest: str, name: str) -> None:
    p = st.session_state.pop("pending", None)
    if not p:
        return
    episode = Episode(dash.NOISE, *p["stretch"]) if p.get("stretch") else None
    action = guarded(lambda: dash.bulk_save(store, digest, name, p["expected"], p["decision"], p["cls"], p["note"],
                                            st.session_state.get("reviewer", ""), p["what"], p["source"], episode))
    if action is None:
        return
    if episode is not None:
        episode_reviews().save_episode(digest, episode, "confirmed", st.session_state.get("reviewer", ""))
    st.session_state["undo"] = action
    flash("success", f"Saved {action.size} beats of {action.what} as {action.label}.")


def undo_last(store: rv.ReviewStore) -> None:
    action = st.session_state.get("undo")
    if action is None:
        return
    done = guarded(lambda: dash.undo_bulk(store, action, st.session_state.get("reviewer", "") or "undo"))
    if done is None:
        return
    if action.episode is not None:
        episode_reviews().remove_episode(action.digest, action.episode)
    st.session_state.pop("undo", None)
    flash("success", f"Undone: {done} beats of {action.what} are back as they were.")


def review_episode(digest: str, episode: Episode, decision: str) -> None:
    try:
        episode_reviews().save_episode(digest, episode, decision, st.session_state.get("reviewer", ""))
    except EcgRnnError as exc:
        flash("error", f"Not saved: {dash.md_escape(str(exc))}")
        return
    flash("success", f"{episode.kind} episode at {dash.format_time(episode.start_s)} {decision}.")


def go_to(beat: int, view: str | None = None) -> None:
    st.session_state["beat"] = int(beat)
    if view:
        st.session_state["view"] = view


def on_table_select(table_key: str, order: list[int]) -> None:
    rows = st.session_state.get(table_key, {}).get("selection", {}).get("rows", [])
    if rows and rows[0] < len(order):
        st.session_state["beat"] = int(order[rows[0]])


def on_overview_select(chart_key: str) -> None:
    points = st.session_state.get(chart_key, {}).get("selection", {}).get("points", [])
    for p in points:
        if p.get("customdata") is not None:
            value = p["customdata"]
            go_to(int(value[0] if isinstance(value, (list, tuple)) else value), "Beats")
            return


def remember_threshold(digest: str, key: str) -> None:
    st.session_state.setdefault("pct_by_record", {})[digest] = float(st.session_state[key])


def remember_reviewer() -> None:
    """The reviewer name lives in the page address (?reviewer=...): a reload or a bookmark keeps it, and
    nothing about one reviewer is stored on the server where other sessions would see it."""
    name = st.session_state.get("reviewer", "").strip()
    if name:
        st.query_params["reviewer"] = name
    else:
        st.query_params.pop("reviewer", None)


# ---------------------------------------------------------------------------------------------
# Sidebar: model, recording, threshold, reviewer


st.html(COMPACT_CSS)
st.sidebar.title("ecg-rnn")
st.sidebar.caption("Find abnormal heartbeats with a recurrent autoencoder; review what was flagged.")

try:
    models = dash.available_models()
except Exception as exc:  # noqa: BLE001
    unexpected("Listing the models", exc)
if not models:
    stop_with("No model found.", "Run `make train` (or `ecg-rnn train`) to create one, or put a trained "
                                 "`*.safetensors` model under `runs/<name>/`.")
model_label = st.sidebar.selectbox("Model", list(models), key="model", index=dash.preferred_model(models),
                                   help="Shipped variants (LSTM, GRU, bidirectional encoder) and your own "
                                        "trained models found under runs/")
model_path = models[model_label]
try:
    mkey = dash.model_key(model_path)
    det = detector(str(model_path), mkey)
except EcgRnnError as exc:
    stop_with(f"Model {model_label}: {exc}")
except Exception as exc:  # noqa: BLE001
    unexpected(f"Loading model {model_label}", exc)

st.sidebar.subheader("Recording")
source_kind = st.sidebar.radio("Source", ["Example record", "Upload", "Scored folder"], key="source",
                               horizontal=True)
examples = dash.example_records()
if source_kind == "Example record":
    if not examples:
        stop_with("The bundled example records (ecg_rnn/samples/mitdb) are missing.")
    names = list(examples)
    name = st.sidebar.selectbox("Example (MIT-BIH)", names, key="example",
                                index=names.index(dash.DEFAULT_EXAMPLE) if dash.DEFAULT_EXAMPLE in names else 0,
                                format_func=lambda n: f"{n}: {dash.EXAMPLE_NOTES.get(n, '')}".rstrip(": "))
    lead_key = f"lead:ex:{name}"
    lead = st.session_state.get(lead_key)
    try:
        source, digest = record_cache().get_or_compute(("example", name, lead),
                                                       lambda: opened(open_record(examples[name], lead=lead)))
    except EcgRnnError as exc:
        stop_with(f"Example record {name}: {exc}")
elif source_kind == "Scored folder":  # the output folder of `ecg-rnn score`: its recordings, most urgent first
    folder = st.sidebar.text_input("Output folder of `ecg-rnn score`", key="triage_folder",
                                   help="Lists the folder's summary.csv by triage score; open one to review it")
    if not folder:
        st.info("Enter the output folder of `ecg-rnn score RECORDINGS --out FOLDER` in the sidebar to list its "
                "recordings, most urgent first.")
        st.stop()
    try:
        triage = dash.read_triage(folder)
    except EcgRnnError as exc:
        stop_with(str(exc))
    openable = triage.loc[triage["status"] == "ok", "record"].tolist()

    def open_selected_row() -> None:
        rows = st.session_state["triage_table"]["selection"]["rows"]
        if rows and triage["record"].iloc[rows[0]] in openable:
            st.session_state["triage_record"] = triage["record"].iloc[rows[0]]

    with st.expander(f"{len(triage)} recordings in {folder}, most urgent first (select one to open it)",
                     expanded=True):
        st.dataframe(triage[dash.TRIAGE_COLUMNS], hide_index=True, key="triage_table", selection_mode="single-row",
                     on_select=open_selected_row)
    if not openable:
        stop_with(f"No recording of {folder} was scored; its errors.csv says why.")
    if st.session_state.get("triage_record") not in openable:
        st.session_state["triage_record"] = openable[0]
    name = st.sidebar.selectbox("Recording (most urgent first)", openable, key="triage_record")
    path = triage.set_index("record").at[name, "path"]
    lead_key = f"lead:tr:{path}"
    lead = st.session_state.get(lead_key)
    try:
        source, digest = record_cache().get_or_compute(("path", path, lead),
                                                       lambda: opened(open_record(path, lead=lead)))
    except EcgRnnError as exc:
        stop_with(f"{name} ({path}): {exc}")
else:
    files = st.sidebar.file_uploader(
        "WFDB files (.hea + .dat, optional .atr), an EDF / EDF+ / BDF file, a .zip of them, or a .csv",
        type=UPLOAD_TYPES,
        accept_multiple_files=True, key="upload",
        help="Select the record's files together. A CSV holds one ECG column per lead, with a first "
             "column 'time' in seconds, or give the sampling rate below.")
    if not files:
        st.info("Upload a recording in the sidebar (WFDB `.hea` + `.dat` [+ `.atr`], an EDF / BDF file, a `.zip` "
                "of them, or a `.csv`), or choose **Example record** to see the dashboard at work.")
        st.stop()
    uploaded = [up.UploadedFile(f.name, f.getvalue()) for f in files]
    ids = tuple(getattr(f, "file_id", "") or f.name for f in files)
    has_csv = any(f.name.lower().endswith((".csv", ".txt")) for f in uploaded)
    fs = None
    if has_csv:
        fs_value = st.sidebar.number_input("CSV sampling rate (Hz)", min_value=0.0, max_value=20000.0, value=0.0,
                                           step=1.0, key="csv_fs",
                                           help="Needed when the CSV has no time column; 0 = read it from the "
                                                "time column")
        fs = fs_value or None
    digests = st.session_state.setdefault("upload_digests", {})
    if ids not in digests or not all(ids):
        digests.clear()
        digests[ids] = up.upload_digest(uploaded)
    upkey = digests[ids]
    choice = st.session_state.get(f"choice:{upkey}")
    lead_key = f"lead:up:{upkey}:{choice}"
    lead = st.session_state.get(lead_key)

    def read_the_upload():
        src, upload_info = open_upload(uploaded, choice=choice, fs=fs, lead=lead)
        return (*opened(src), upload_info)

    try:
        source, digest, info = record_cache().get_or_compute(("upload", upkey, choice, fs, lead), read_the_upload)
    except EcgRnnError as exc:
        hint = ("Enter the sampling rate in the sidebar (CSV sampling rate)." if has_csv and not fs
                and "no time column" in str(exc) else "")
        stop_with(f"Could not read the upload: {exc}", hint)
    except Exception as exc:  # noqa: BLE001
        unexpected("Reading the upload", exc)
    if len(info.candidates) > 1:
        st.sidebar.selectbox("Record in the upload", info.candidates, key=f"choice:{upkey}",
                             index=info.candidates.index(info.chosen))

if len(source.sig_name) > 1:
    st.sidebar.selectbox("Lead (the strip draws every ECG lead; the model scores this one)", source.sig_name,
                         index=source.channel, key=lead_key)

# ---------------------------------------------------------------------------------------------
# Analysis (the model runs once per record content and model; everything below is cached)

cache = analysis_cache()
# the progress bar's place is there in every run, so the elements below (the Beats view fragment among them)
# keep their positions, and with them their ids, whether this run scored the recording or not: a click
# queued during a full run reaches the fragment the run draws
scoring = st.empty()
a = cache.get((digest, mkey))
if a is None:
    bar = scoring.progress(0.0, text=f"Scoring {source.name} with {model_label} …")
    try:
        a = cache.get_or_compute((digest, mkey), lambda: dash.analyse(
            source, digest, det, model=model_label, progress=lambda f, t: bar.progress(min(f, 1.0), text=t)))
    except EcgRnnError as exc:
        bar.empty()
        stop_with(f"{source.name}: {exc}")
    except Exception as exc:  # noqa: BLE001
        bar.empty()
        unexpected(f"Scoring {source.name}", exc)
    bar.empty()
if len(a) == 0:
    stop_with(f"{a.name}: no beats were found.")

# the threshold: one slider per recording and model, starting from the value this session set for the
# recording, else the model's own; nothing presets the widget's state, so what it shows is what is used
pct_key = f"pct:{a.digest}:{mkey}"
pct = st.sidebar.slider("Flag beats above this percentile of normal scores", 50.0, 100.0, step=0.1,
                        value=float(st.session_state.get("pct_by_record", {}).get(a.digest, a.default_percentile)),
                        key=pct_key, on_change=remember_threshold, args=(a.digest, pct_key),
                        help="Percentile among the scores of held-out normal beats of other patients: "
                             f"{a.default_percentile:g} is the model's own threshold. Re-flags instantly; "
                             "kept per recording.")
try:
    ep_decisions = episode_reviews().episode_reviews(a.digest)
except EcgRnnError as exc:
    stop_with(str(exc))
episodes = rv.reviewed_episodes(a.episodes, ep_decisions)
noise = dash.noise_beats(a, episodes)
show_noise = False
if noise.any():
    show_noise = st.sidebar.toggle(f"Show the {int(noise.sum()):,} noise beats among the flagged", key="show_noise",
                                   help="Beats in noise (the quality stage, or stretches you marked) are left "
                                        "out of the flagged beats unless shown here.")
threshold = dash.score_threshold(a, pct)
flags = dash.flags_at(a, pct, None if show_noise else noise)

st.sidebar.subheader("Review")
reviewer_value = {} if "reviewer" in st.session_state else {"value": st.query_params.get("reviewer", "")}
st.sidebar.text_input("Reviewer name", key="reviewer", max_chars=rv.MAX_REVIEWER, placeholder="e.g. Dr A. Smith",
                      on_change=remember_reviewer, **reviewer_value)
st.sidebar.checkbox("After saving, go to the next unreviewed beat", key="auto_next", value=True)
db_path = rv.default_db_path()
try:
    store = review_store(str(db_path))
    reviews = store.get(a.digest)
except EcgRnnError as exc:
    stop_with(str(exc))

# the queue: the order the table shows and next / previous / next unreviewed follow
orders = [o for o in dash.QUEUE_ORDERS if o != "suggested class" or a.suggested is not None]
group_key = (a.digest, mkey, round(float(pct), 2), show_noise)


def flagged_groups() -> list[dash.Group]:
    return group_cache().get_or_compute(group_key, lambda: dash.cluster_flagged(a, flags))


def typical_normal() -> np.ndarray:
    """The record's typical normal beat at this threshold (drawn beside every beat: computed once)."""
    return group_cache().get_or_compute((*group_key, "typical normal"), lambda: dash.typical_normal(a, flags))


def current_queue() -> tuple[str, np.ndarray]:
    """(queue order, queue): the order the reviewer chose (the Beats view's radio sets it) and its beats."""
    order = st.session_state.get("queue_order", "score")
    order = order if order in orders else "score"
    return order, dash.review_queue(a, flags, order, flagged_groups() if order == "group" else None)


def stored_reviews() -> dict:
    """This record's reviews as stored now. The fragments below (the Beats view, the review counts) rerun
    alone after a save: they read the store again instead of the reviews the last full run read."""
    try:
        return store.get(a.digest)
    except EcgRnnError as exc:
        stop_with(str(exc))


# the selected beat (index into the record's beats), reset when the record or model changes
if st.session_state.get("beat_of") != a.key:
    st.session_state["beat_of"] = a.key
    _, queue = current_queue()
    first = dash.next_unreviewed(a, queue, reviews)
    st.session_state["beat"] = int(first if first is not None else (queue[0] if len(queue) else 0))
st.session_state["beat"] = int(np.clip(st.session_state.get("beat", 0), 0, len(a) - 1))

# ---------------------------------------------------------------------------------------------
# Summary

BEATS_VIEW, REVIEW_COUNTS = "beats_view", "review_counts"  # fragment keys: a save reruns these two alone


@st.fragment(key=REVIEW_COUNTS)
def review_counts(where: str) -> None:
    """How many flagged beats are reviewed: the sidebar's bar or the summary's metric (both call sites
    rerun together after a save)."""
    done, total = dash.review_progress(a, flags, stored_reviews())
    if where == "sidebar":
        st.progress(done / total if total else 1.0, text=f"{done} of {total} flagged beats reviewed")
    else:
        st.metric("Reviewed", f"{done}/{total}", help="flagged beats reviewed")


s = dash.summary(a, flags, episodes)
with st.sidebar:
    review_counts("sidebar")
st.sidebar.caption(f"Reviews are saved in `{db_path}` (set `{rv.DB_ENV}` to change); your name is kept in the "
                   "page address, so a reload or a bookmark remembers it. Keys: **Enter** saves "
                   "the shown decision and moves on, **n** / **p** next / previous flagged, **u** next unreviewed.")
st.markdown(f"### {dash.md_escape(a.name)} · lead {dash.md_escape(a.lead)} · {dash.md_escape(model_label)}")
metrics = [("Duration", dash.format_time(a.duration_s).split(".")[0], None),
           ("Sampling rate", f"{a.fs:g} Hz", None), ("Leads", len(a.sig_name), s["leads"]),
           ("Beats", f"{s['beats']:,}", None), ("Heart rate", dash.fmt(s["heart_rate_bpm"], ".0f", 1, " bpm"), None),
           ("Flagged", f"{s['flagged']:,}", f"{100 * s['flagged_share']:.1f} % of beats"),
           ("Reviewed", None, None)]  # drawn by review_counts
if a.episodes or a.rhythm is not None or a.quality is not None or episodes:
    metrics += [("AF burden", f"{100 * s['af_burden']:.1f} %", "share of the recording in AF episodes"),
                ("Noise", f"{100 * s['noise_share']:.1f} %", "share of the recording in noise episodes")]
for col, (label, value, help_text) in zip(st.columns(len(metrics)), metrics):
    if label == "Reviewed":
        with col:
            review_counts("metric")
    else:
        col.metric(label, value, help=help_text)
agreement = (f" · against the reference: ROC-AUC {dash.fmt(s['roc_auc'])}, sensitivity "
             f"{dash.fmt(s['sensitivity'], '.1f', 100, '%')} of {s['reference_abnormal']} abnormal beats, specificity "
             f"{dash.fmt(s['specificity'], '.1f', 100, '%')}" if a.has_reference else "")
st.caption(f"Flagging at percentile **{pct:.1f}** (score above {threshold:.3f}; the model's own: "
           f"{a.default_percentile:g}) · {s['flagged']:,} flagged ({100 * s['flagged_share']:.1f} %)" + agreement)

tabs = st.tabs(list(VIEWS), key="view", on_change="rerun")
beat_tab, group_tab, episode_tab, overview_tab, export_tab = tabs


def review_form(i: int, prefix: str, where, reviews: dict, next_beat=None, refresh: tuple[str, ...] = ()) -> None:
    """The review form of one beat, starting from the suggested class (or the current review); the
    version it shows is the one a save will claim to replace. A save reruns the `refresh` fragments (the
    whole app when none)."""
    sample = int(a.sample[i])
    current = reviews.get(sample)
    st.session_state.setdefault("seen", {})[(a.digest, sample)] = current.version if current else 0
    key = f"{prefix}:{a.digest}:{sample}"
    if current:
        decision, cls = current.decision, current.beat_class
    elif a.suggested is not None:
        decision, cls = dash.decision_for_class(str(a.suggested[i]))
    else:
        decision, cls = "abnormal", "V"
    with where:
        if current:
            st.markdown(f"**Current review:** {current.label} — {dash.md_escape(current.reviewer)}, "
                        f"{current.updated_at[:19].replace('T', ' ')} UTC (v{current.version})"
                        + (f"  \n_{dash.md_escape(current.note)}_" if current.note else ""))
        else:
            st.markdown("**Not reviewed yet**" + (f" · suggested: **{a.suggested[i]}**" if a.suggested is not None
                                                  else ""))
        with st.form(f"form:{key}", border=True):
            st.radio("Decision", list(DECISION_LABELS), key=f"dec:{key}", horizontal=True,
                     format_func=DECISION_LABELS.get, index=list(DECISION_LABELS).index(decision))
            c1, c2 = st.columns([1, 2])
            c1.selectbox("Class", rv.REVIEW_CLASSES, key=f"cls:{key}",
                         index=rv.REVIEW_CLASSES.index(cls) if cls in rv.REVIEW_CLASSES else 0,
                         help="For abnormal beats: V ventricular, S supraventricular, F fusion, Q unclassifiable, "
                              "other")
            c2.text_input("Note (optional)", key=f"note:{key}", value=current.note if current else "",
                          max_chars=rv.MAX_NOTE)
            st.form_submit_button("Save review", type="primary",
                                  on_click=save_beat,
                                  args=(store, a.digest, a.name, sample, prefix, next_beat, refresh))


def beat_header(i: int) -> str:
    state = "flagged" if flags[i] else "not flagged"
    extra = f" · suggested **{a.suggested[i]}**" if a.suggested is not None else ""
    extra += " · noise" if noise[i] else ""
    extra += " · in AF" if a.rhythm is not None and a.rhythm[i] == dash.AF else ""
    extra += f" · reference {a.ref_symbol[i]} ({a.ref_aami[i]})" if a.has_reference and a.ref_symbol[i] else ""
    return (f"**Beat {i}** at {dash.format_time(a.time_s[i])} (sample {int(a.sample[i])}) · RR {a.rr[i, 0]:.3f} s · "
            f"score {a.score[i]:.3f} (pct {a.percentile[i]:.1f}) · {state}{extra}")


# ---------------------------------------------------------------------------------------------
# Beats: the review queue | strip of every lead, beat view and review, on one screen

@st.fragment(key=BEATS_VIEW)
def beats_view() -> None:
    """The review queue | the beat's strip, figures and form. A fragment: a step to another beat or a save
    reruns this view (and the review counts) alone, not the sidebar, summary and caches of the whole app."""
    reviews = stored_reviews()
    queue_order, queue = current_queue()
    st.session_state["beat"] = i = int(np.clip(st.session_state.get("beat", 0), 0, len(a) - 1))
    # the queue table's columns (widths below, every queue order) fit its column at 1400 px without
    # scrolling sideways; the rest is the beat's strip, figure and form
    left, right = st.columns([11, 13], gap="small")
    # drawn first: the beat's header and form, so its Save button (and the keyboard focus) is there while
    # the table and the figures are drawn, and Enter can confirm a beat without waiting for them
    with right:
        strip_slot, fig_col = beat_review(i, queue, reviews)
    with left:
        queue_table(i, queue_order, queue, reviews)
    strip_slot.plotly_chart(dash.strip_figure(a, flags, i, reviews=reviews, episodes=episodes), key="strip",
                            config={"displaylogo": False, "displayModeBar": False})
    fig_col.plotly_chart(dash.beat_figure(a, i, typical_normal()), key="beatfig",
                         config={"displaylogo": False, "displayModeBar": False})


def beat_review(i: int, queue: np.ndarray, reviews: dict):
    """Next / previous, the beat's header and its review form; returns the places of its strip and figure."""
    prev_beat, next_beat = dash.neighbours(queue, i)
    nxt = dash.next_unreviewed(a, queue, reviews, after=i)
    nav = st.columns([1, 1, 1, 1.3])
    nav[0].button("Prev flagged", disabled=prev_beat is None, on_click=go_to,
                  args=(prev_beat if prev_beat is not None else i,), use_container_width=True)
    st.session_state["beat_input"] = i  # the widget mirrors the selection (kept outside widget state)
    nav[1].number_input("Beat #", min_value=0, max_value=len(a) - 1, step=1, key="beat_input",
                        label_visibility="collapsed", help="Jump to any beat by its number",
                        on_change=lambda: go_to(st.session_state["beat_input"]))
    nav[2].button("Next flagged", disabled=next_beat is None, on_click=go_to,
                  args=(next_beat if next_beat is not None else i,), use_container_width=True)
    nav[3].button("Next unreviewed", disabled=nxt is None, on_click=go_to, args=(nxt if nxt is not None else i,),
                  use_container_width=True, key="next_unreviewed")
    st.markdown(beat_header(i))
    strip_slot = st.container()
    show_flash(st)
    fig_col, form_col = st.columns([4, 3], gap="small")
    review_form(i, "b", form_col, reviews, next_beat=nxt, refresh=(BEATS_VIEW, REVIEW_COUNTS))
    return strip_slot, fig_col


def queue_table(i: int, queue_order: str, queue: np.ndarray, reviews: dict) -> None:
    """The flagged beats in queue order, one page at a time: the page of the beat shown, its row ticked."""
    order = [int(b) for b in queue]
    st.radio("Queue order", orders, key="queue_order", horizontal=True, label_visibility="collapsed",
             format_func=lambda o: f"by {o}")
    phrase = {"score": "highest score first", "time": "in time order", "group": "by morphology group",
              "suggested class": "by suggested class (V, F, S, Q, N)"}[queue_order]
    st.markdown(f"**{len(order)} flagged beats**, {phrase} (select a row to open it)")
    if not order:
        st.info("No beat is above the threshold; lower the percentile in the sidebar to flag more.")
        return
    pos = order.index(i) if i in order else 0
    first = pos - pos % PAGE_ROWS
    page = queue[first:first + PAGE_ROWS]
    table = dash.flagged_table(a, flags, reviews, page, flagged_groups() if queue_order == "group" else None)
    # keyed by the beat shown: the new table ticks its row (a drawn table keeps its own selection)
    table_key = f"queue:{a.digest}:{queue_order}:{pct:.2f}:{show_noise}:{i}"
    st.dataframe(table, height=ROW_PX * (PAGE_ROWS + 1) + 3, key=table_key,
                 selection_default={"selection": {"rows": [pos - first] if i in order else []}},
                 on_select=functools.partial(on_table_select, table_key, [int(b) for b in page]),
                 selection_mode="single-row", row_height=ROW_PX,
                 column_order=[c for c in ("time", "score", "reference", "suggested", "group", "review",
                                           "RR (s)") if c in table.columns],
                 column_config={
                     "_index": st.column_config.NumberColumn("beat", width=50),
                     "time": st.column_config.TextColumn(width=70),
                     "score": st.column_config.NumberColumn(format="%.2f", width=46),
                     "reference": st.column_config.TextColumn("ref", width=32),
                     "suggested": st.column_config.TextColumn("sugg", width=38),
                     "group": st.column_config.NumberColumn("grp", width=GROUP_PX),
                     # the group column (group order) takes its width from the review column
                     "review": st.column_config.TextColumn(
                         width=REVIEW_PX - (GROUP_PX if "group" in table.columns else 0)),
                     "RR (s)": st.column_config.NumberColumn("RR s", format="%.3f", width=48)})
    pages = (len(order) + PAGE_ROWS - 1) // PAGE_ROWS
    c1, c2 = st.columns([2, 1])
    c1.caption(f"rows {first + 1}–{first + len(page)} of {len(order)} · page {first // PAGE_ROWS + 1} of {pages}")
    st.session_state["queue_page"] = first // PAGE_ROWS + 1  # mirrors the shown beat's page
    c2.number_input("Page", 1, pages, step=1, key="queue_page", label_visibility="collapsed",
                    on_change=lambda: go_to(order[(st.session_state["queue_page"] - 1) * PAGE_ROWS]))

if beat_tab.open:
    with beat_tab:
        beats_view()
        # the keys, and the focus on each new beat's Save button (see KEYBOARD_JS): our own constant script
        # in a same-origin frame (never user content), drawn while the Beats view is open
        st.sidebar.iframe(KEYBOARD_JS, height=1)

# ---------------------------------------------------------------------------------------------
# Groups: flagged beats clustered by morphology, one group at a time, decided with a confirm step and
# an undo, then corrected one by one


def pending_and_undo(where) -> None:
    """The confirm step of a decision on many beats, and the undo of the last one."""
    pending = st.session_state.get("pending")
    with where:
        if pending:
            n = len(pending["expected"])
            label = f"{pending['decision']} {pending['cls']}" if pending["decision"] == "abnormal" else pending["decision"]
            replaced = sum(1 for v in pending["expected"].values() if v)
            st.warning(f"Label **{n} beats** of {pending['what']} as **{label}**"
                       + (f" (replacing {replaced} existing reviews)" if replaced else "") + "?")
            c1, c2 = st.columns(2)
            c1.button(f"Confirm: label {n} beats as {label}", type="primary", key="confirm_bulk",
                      on_click=confirm_bulk, args=(store, a.digest, a.name), use_container_width=True)
            c2.button("Cancel", key="cancel_bulk", on_click=lambda: st.session_state.pop("pending", None),
                      use_container_width=True)
        action = st.session_state.get("undo")
        if action is not None and action.digest == a.digest:
            st.button(f"Undo: {action.what}, {action.size} beats labelled {action.label}", key="undo_bulk",
                      on_click=undo_last, args=(store,), icon=":material/undo:")


if group_tab.open:
    with group_tab:
        groups = flagged_groups()
        if not groups:
            st.info("No flagged beats to group at this threshold.")
        else:
            normal = typical_normal()
            defaults = {g.gid: dash.group_default(a, g, normal) for g in groups}

            def group_label(gid: int) -> str:
                d, c = defaults[gid]
                return f"Group {gid} · {groups[gid - 1].size} beats · {d} {c}".strip()

            st.markdown(f"**{len(groups)} groups** of similar flagged beats (k-means on the model's latent codes and "
                        "the RR ratio), largest first. Decide a whole group at once (you confirm first, and can "
                        "undo), then correct single beats below.")
            show_flash(st)
            gid = st.radio("Group", [g.gid for g in groups], key=f"gsel:{a.digest}:{mkey}", horizontal=True,
                           format_func=group_label, label_visibility="collapsed")
            g = groups[int(gid) - 1]
            gkey = f"{a.digest}:{mkey}:{pct:.2f}:{g.gid}"
            samples = [int(x) for x in a.sample[g.index]]
            st.session_state.setdefault("seen_group", {})[gkey] = {
                smp: (reviews[smp].version if smp in reviews else 0) for smp in samples}
            reviewed = [reviews[smp] for smp in samples if smp in reviews]
            counts: dict[str, int] = {}
            for r in reviewed:
                counts[r.label] = counts.get(r.label, 0) + 1
            with st.container(border=True):
                c1, c2 = st.columns([3, 2])
                c1.plotly_chart(dash.group_figure(a, g), key=f"gfig:{gkey}", config={"displaylogo": False})
                with c2:
                    facts = []
                    if a.suggested is not None:
                        kinds, n = np.unique(a.suggested[g.index], return_counts=True)
                        facts.append("suggested: " + ", ".join(f"{k} {c}" for k, c in zip(kinds, n)))
                    if a.has_reference:
                        kinds, n = np.unique(a.ref_aami[g.index], return_counts=True)
                        facts.append("reference: " + ", ".join(f"{k or '?'} {c}" for k, c in zip(kinds, n)))
                    st.markdown(f"**Group {g.gid}: {g.size} beats** · {len(reviewed)} reviewed"
                                + (" (" + ", ".join(f"{k}: {v}" for k, v in counts.items()) + ")" if counts else "")
                                + "".join(f"  \n{f}" for f in facts))
                    decision, cls = defaults[g.gid]
                    with st.form(f"gform:{gkey}"):
                        st.radio("Decision for the group", list(DECISION_LABELS), key=f"gdec:{gkey}",
                                 format_func=DECISION_LABELS.get, horizontal=True,
                                 index=list(DECISION_LABELS).index(decision))
                        st.selectbox("Class (for abnormal beats)", rv.REVIEW_CLASSES, key=f"gcls:{gkey}",
                                     index=rv.REVIEW_CLASSES.index(cls) if cls in rv.REVIEW_CLASSES else 0)
                        st.text_input("Note (optional)", key=f"gnote:{gkey}", max_chars=rv.MAX_NOTE)
                        st.checkbox("Only beats not yet reviewed", value=True, key=f"gnew:{gkey}")
                        st.form_submit_button(f"Apply to group {g.gid}", type="primary", on_click=ask_group,
                                              args=(gkey, f"group {g.gid}"))
                    pending_and_undo(st.container())
            with st.expander(f"Correct single beats of group {g.gid}"):
                pick = st.selectbox("Beat", [int(x) for x in g.index], key=f"gpick:{gkey}",
                                    format_func=lambda b: f"beat {b} at {dash.format_time(a.time_s[b])}, "
                                    f"score {a.score[b]:.2f}"
                                    + (f" — {reviews[int(a.sample[b])].label}" if int(a.sample[b]) in reviews else ""))
                st.plotly_chart(dash.beat_figure(a, pick, g.median_wave), key=f"gbeat:{gkey}",
                                config={"displaylogo": False})
                review_form(pick, "g", st.container(), reviews)
                st.button("Open in the Beats view", key=f"gopen:{gkey}", on_click=go_to, args=(pick, "Beats"))

# ---------------------------------------------------------------------------------------------
# Episodes: AF and noise stretches reviewed as episodes, not beat by beat

if episode_tab.open:
    with episode_tab:
        show_flash(st)
        table = dash.episodes_table(a, episodes, ep_decisions)
        if len(table):
            st.markdown(f"**{len(table)} episodes** (AF: atrial fibrillation or flutter; noise: unreadable ECG). "
                        "Select one to see it and confirm or reject it as a whole.")
            ep_key = f"episodes:{a.digest}"
            st.dataframe(table, key=ep_key, on_select="rerun", selection_mode="single-row", hide_index=True)
            rows = st.session_state.get(ep_key, {}).get("selection", {}).get("rows", [])
            shown = dash.listed_episodes(a, episodes)
            if rows and rows[0] < len(shown):
                e = shown[rows[0]]
                centre = int(np.argmin(np.abs(a.time_s - min(e.start_s + dash.STRIP_SECONDS / 2, e.end_s))))
                st.plotly_chart(dash.strip_figure(a, flags, centre, reviews=reviews, episodes=episodes),
                                key="episode_strip", config={"displaylogo": False, "displayModeBar": False})
                c1, c2 = st.columns(2)
                c1.button(f"Confirm this {e.kind} episode", type="primary", key="ep_confirm",
                          on_click=review_episode, args=(a.digest, e, "confirmed"), use_container_width=True)
                c2.button(f"Reject: not {e.kind}", key="ep_reject", on_click=review_episode,
                          args=(a.digest, e, "rejected"), use_container_width=True)
        else:
            st.info("No AF or noise episodes in this recording" + ("" if a.quality is not None or a.rhythm is not None
                    else " (this scoring provides none)") + ". You can still mark a stretch as noise below.")
        st.markdown("**Mark a stretch as noise**: every beat in it is reviewed as noise and left out of the "
                    "flagged beats (confirmed first; undoable).")
        t_beat = float(a.time_s[int(st.session_state["beat"])])
        c1, c2, c3 = st.columns([1, 1, 2])
        start_s = c1.number_input("From (s)", 0.0, float(a.duration_s), value=max(0.0, t_beat - 5.0), step=1.0,
                                  key=f"noise_from:{a.digest}")
        end_s = c2.number_input("To (s)", 0.0, float(a.duration_s), value=min(a.duration_s, t_beat + 5.0), step=1.0,
                                key=f"noise_to:{a.digest}")
        inside = dash.beats_in(a, start_s, end_s)
        what = f"{dash.format_time(start_s)} – {dash.format_time(end_s)}"
        c3.button(f"Mark {len(inside)} beats ({what}) as noise", disabled=len(inside) == 0 or end_s <= start_s,
                  key="ask_noise", on_click=ask_bulk, args=({
                      "key": "noise", "what": what, "decision": "noise", "cls": "", "note": "marked as a noise stretch",
                      "expected": {int(a.sample[b]): (reviews[int(a.sample[b])].version
                                                       if int(a.sample[b]) in reviews else 0) for b in inside},
                      "source": "noise", "stretch": (float(start_s), float(end_s))},))
        pending_and_undo(st.container())

# ---------------------------------------------------------------------------------------------
# Overview: the whole record's scores, and agreement with the reference annotations

if overview_tab.open:
    with overview_tab:
        st.markdown("**Score of every beat** (dashed line: threshold; shaded: AF and noise episodes). Select a point "
                    "to open that beat.")
        st.plotly_chart(dash.overview_figure(a, flags, threshold, episodes), key="overview",
                        on_select=functools.partial(on_overview_select, "overview"), selection_mode=("points", "box"),
                        config={"displaylogo": False})
        if a.has_reference:
            c1, c2 = st.columns([3, 2])
            with c1:
                st.markdown("**Flagged vs reference AAMI class** (beats matched to the annotations within 150 ms)")
                st.dataframe(dash.confusion(a, flags))
            with c2:
                st.metric("ROC-AUC (abnormal vs normal)", dash.fmt(s["roc_auc"]))
                st.metric("Sensitivity", dash.fmt(s["sensitivity"], ".1f", 100, "%"))
                st.metric("Specificity", dash.fmt(s["specificity"], ".1f", 100, "%"))
        else:
            st.caption("This recording has no reference annotations (.atr); upload one to see the agreement.")

# ---------------------------------------------------------------------------------------------
# Export

if export_tab.open:
    with export_tab:
        st.markdown("**All beats** with their scores, flags, suggested classes and review decisions:")
        st.download_button("Download beats CSV", dash.export_csv_bytes(a, flags, reviews),
                           file_name=f"{a.name}_beats.csv", mime="text/csv", key="dl_csv", on_click="ignore")
        st.markdown("**Holter events** (ectopic beats, couplets, runs, bigeminy, pauses, AF and noise episodes, heart "
                    "rate extremes) from the reviewed classes, else the suggested ones:")
        try:
            events_csv = dash.events_csv_bytes(a, flags, reviews, episodes)
        except EcgRnnError as exc:
            st.warning(f"No events: {dash.md_escape(str(exc))}")
        else:
            st.download_button("Download events CSV", events_csv, file_name=f"{a.name}.events.csv", mime="text/csv",
                               key="dl_events", on_click="ignore")
        st.markdown("**Reviewed beats** as a WFDB annotation file (AAMI symbols: N normal, S, V, F, Q; 'other' "
                    "abnormal beats as Q; noise `~`):")
        if reviews:
            fname, data = dash.export_wfdb_bytes(a, reviews)
            st.download_button(f"Download {fname}", data, file_name=fname, mime="application/octet-stream",
                               key="dl_wfdb", on_click="ignore")
            st.caption(f"Put it beside the record and read it with `wfdb.rdann('{fname.rsplit('.', 1)[0]}', 'rev')`.")
        else:
            st.caption("No reviewed beats yet.")
        st.markdown("**Holter report** (summary, heart-rate trend, example strips, model and threshold):")
        c1, c2 = st.columns([1, 3])
        fmt_choice = c1.radio("Format", [".pdf", ".html"], horizontal=True, key="report_format",
                              label_visibility="collapsed")
        report_state = (a.digest, mkey, round(float(pct), 2), show_noise, fmt_choice, len(reviews),
                        max((r.updated_at for r in reviews.values()), default=""), tuple(map(rv.episode_key, episodes)))
        if c2.button("Prepare the report", key="make_report"):
            with st.spinner("Writing the report …"):
                try:
                    st.session_state["report"] = (report_state, *dash.report_bytes(
                        a, flags, reviews, episodes, pct, flagged_groups(), fmt_choice))
                except EcgRnnError as exc:
                    st.error(f"No report: {dash.md_escape(str(exc))}")
        ready = st.session_state.get("report")
        if ready and ready[0] == report_state:
            st.download_button(f"Download {ready[1]}", ready[2], file_name=ready[1], key="dl_report", on_click="ignore",
                               mime="application/pdf" if ready[1].endswith(".pdf") else "text/html")
        with st.expander("Review history of this record (every edit, with the previous value)"):
            hist = store.history(a.digest)
            if hist:
                import pandas as pd

                st.dataframe(pd.DataFrame([h.__dict__ for h in hist]), hide_index=True)
            else:
                st.caption("No edits yet.")

long_lived_objects_frozen()  # at the end: the first page drawn has imported everything it needs
