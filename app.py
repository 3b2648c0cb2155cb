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
from ecg_rnn.records import read_upload

st.set_page_config(page_title="ecg-rnn: flagged beats", layout="wide")
log = logging.getLogger("ecg_rnn.app")

DECISION_LABELS = {"abnormal": "Abnormal", "normal": "Normal (false alarm)", "noise": "Noise"}
VIEWS = ("Beats", "Groups", "Overview", "Export")
UPLOAD_TYPES = ["hea", "dat", "atr", "qrs", "zip", "csv", "txt", "edf", "bdf"]


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
def review_store(path: str) -> rv.ReviewStore:
    return rv.ReviewStore(path)


def stop_with(message: str, hint: str = "") -> None:
    st.error(dash.md_escape(message) + (f"\n\n{hint}" if hint else ""))
    st.stop()


def unexpected(what: str, exc: BaseException) -> None:
    log.exception("%s", what)
    stop_with(f"{what} failed unexpectedly ({dash.describe_error(exc)}). The details are in the server log.")


# ---------------------------------------------------------------------------------------------
# Review actions (callbacks run before the rerun, with the versions this session last displayed)


def flash(kind: str, text: str) -> None:
    st.session_state["flash"] = (kind, text)


def show_flash(where) -> None:
    msg = st.session_state.pop("flash", None)
    if msg:
        getattr(where, msg[0])(msg[1])


def guarded_save(save):
    """Run a review save; a conflict or a refused value becomes a visible message, not a traceback."""
    try:
        return save()
    except rv.ReviewConflict as exc:
        flash("warning", dash.md_escape(str(exc)))
    except EcgRnnError as exc:
        flash("error", f"Not saved: {dash.md_escape(str(exc))}")
    return None


def save_beat(store: rv.ReviewStore, digest: str, name: str, sample: int, prefix: str, next_beat) -> None:
    key = f"{prefix}:{digest}:{sample}"
    decision = st.session_state.get(f"dec:{key}", "abnormal")
    saved = guarded_save(lambda: store.save(
        digest, sample, decision, st.session_state.get(f"cls:{key}", "V"), st.session_state.get(f"note:{key}", ""),
        st.session_state.get("reviewer", ""), expected_version=st.session_state.get("seen", {}).get((digest, sample), 0),
        record_name=name))
    if saved is None:
        return
    flash("success", f"Saved: beat at sample {sample} is {saved.label} (by {dash.md_escape(saved.reviewer)}, version {saved.version}).")
    if next_beat is not None and st.session_state.get("auto_next", True):
        st.session_state["beat"] = int(next_beat)


def save_group(store: rv.ReviewStore, digest: str, name: str, gkey: str) -> None:
    seen = st.session_state.get("seen_group", {}).get(gkey, {})
    only_new = st.session_state.get(f"gnew:{gkey}", True)
    expected = {s: v for s, v in seen.items() if v == 0 or not only_new}
    if not expected:
        flash("info", "Every beat of this group is already reviewed; untick 'only unreviewed beats' to overwrite.")
        return
    saved = guarded_save(lambda: store.save_many(
        digest, expected, st.session_state.get(f"gdec:{gkey}", "abnormal"), st.session_state.get(f"gcls:{gkey}", "V"),
        st.session_state.get(f"gnote:{gkey}", ""), st.session_state.get("reviewer", ""), record_name=name,
        source="group"))
    if saved is None:
        return
    first = next(iter(saved.values()))
    flash("success", f"Saved {len(saved)} beats of the group as {first.label} (by {dash.md_escape(first.reviewer)}).")


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


# ---------------------------------------------------------------------------------------------
# Sidebar: model, recording, threshold, reviewer


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
source = st.sidebar.radio("Source", ["Example record", "Upload"], key="source", horizontal=True)
record = None
examples = dash.example_records()
if source == "Example record":
    if not examples:
        stop_with("The bundled example records (ecg_rnn/samples/mitdb) are missing.")
    names = list(examples)
    name = st.sidebar.selectbox("Example (MIT-BIH)", names, key="example",
                                index=names.index(dash.DEFAULT_EXAMPLE) if dash.DEFAULT_EXAMPLE in names else 0,
                                format_func=lambda n: f"{n}: {dash.EXAMPLE_NOTES.get(n, '')}".rstrip(": "))
    lead = st.session_state.get(f"lead:ex:{name}")
    try:
        from ecg_rnn.records import read_record

        record = record_cache().get_or_compute(("example", name, lead),
                                               lambda: read_record(examples[name], lead=lead))
    except EcgRnnError as exc:
        stop_with(f"Example record {name}: {exc}")
    lead_key = f"lead:ex:{name}"
else:
    files = st.sidebar.file_uploader(
        "WFDB files (.hea + .dat, optional .atr), an EDF / EDF+ / BDF file, a .zip of them, or a .csv",
        type=UPLOAD_TYPES,
        accept_multiple_files=True, key="upload",
        help="Select the record's files together. A CSV holds one ECG column per lead, with a first "
             "column 'time' in seconds, or give the sampling rate below.")
    if not files:
        st.info("Upload a recording in the sidebar (WFDB `.hea` + `.dat` [+ `.atr`], a `.zip` of them, or "
                "a `.csv`), or choose **Example record** to see the dashboard at work.")
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
    lead = st.session_state.get(f"lead:up:{upkey}:{choice}")
    try:
        record, info = record_cache().get_or_compute(
            ("upload", upkey, choice, fs, lead), lambda: read_upload(uploaded, choice=choice, fs=fs, lead=lead))
    except EcgRnnError as exc:
        hint = ("Enter the sampling rate in the sidebar (CSV sampling rate)." if has_csv and not fs
                and "no time column" in str(exc) else "")
        stop_with(f"Could not read the upload: {exc}", hint)
    except Exception as exc:  # noqa: BLE001
        unexpected("Reading the upload", exc)
    if len(info.candidates) > 1:
        st.sidebar.selectbox("Record in the upload", info.candidates, key=f"choice:{upkey}",
                             index=info.candidates.index(info.chosen))
    lead_key = f"lead:up:{upkey}:{choice}"

if len(record.sig_name) > 1:
    st.sidebar.selectbox("Lead", record.sig_name, index=record.sig_name.index(record.lead)
                         if record.lead in record.sig_name else 0, key=lead_key)

# ---------------------------------------------------------------------------------------------
# Analysis (the model runs once per record content and model; everything below is cached)

cache = analysis_cache()
a = cache.get((record.digest, mkey))
if a is None:
    bar = st.progress(0.0, text=f"Scoring {record.name} with {model_label} …")
    try:
        a = cache.get_or_compute((record.digest, mkey), lambda: dash.analyse(
            record, det, model=model_label, progress=lambda f, t: bar.progress(min(f, 1.0), text=t)))
    except EcgRnnError as exc:
        bar.empty()
        stop_with(f"{record.name}: {exc}")
    except Exception as exc:  # noqa: BLE001
        bar.empty()
        unexpected(f"Scoring {record.name}", exc)
    bar.empty()
if len(a) == 0:
    stop_with(f"{record.name}: no beats were found.")

st.session_state.setdefault("pct", a.default_percentile)
pct = st.sidebar.slider("Flag beats above this percentile of normal scores", 50.0, 100.0, step=0.1, key="pct",
                        help="Percentile among the scores of held-out normal beats of other patients: "
                             f"{a.default_percentile:g} is the model's own threshold. Re-flags instantly.")
threshold = dash.score_threshold(a, pct)
flags = dash.flags_at(a, pct)

st.sidebar.subheader("Review")
st.sidebar.text_input("Reviewer name", key="reviewer", max_chars=rv.MAX_REVIEWER, placeholder="e.g. Dr A. Smith")
db_path = rv.default_db_path()
st.sidebar.caption(f"Reviews are saved in `{db_path}` (set `{rv.DB_ENV}` to change).")
try:
    store = review_store(str(db_path))
    reviews = store.get(a.digest)
except EcgRnnError as exc:
    stop_with(str(exc))

# the selected beat (index into the record's beats), reset when the record or model changes
if st.session_state.get("beat_of") != a.key:
    st.session_state["beat_of"] = a.key
    first = dash.next_unreviewed(a, flags, reviews)
    st.session_state["beat"] = int(first if first is not None else
                                   (np.flatnonzero(flags)[0] if flags.any() else 0))
st.session_state["beat"] = int(np.clip(st.session_state.get("beat", 0), 0, len(a) - 1))

# ---------------------------------------------------------------------------------------------
# Summary

s = dash.summary(a, flags)
done, total = dash.review_progress(a, flags, reviews)
st.markdown(f"### {dash.md_escape(a.name)} · lead {dash.md_escape(a.lead)} · {dash.md_escape(model_label)}")
cols = st.columns(7)
cols[0].metric("Duration", dash.format_time(a.duration_s).split(".")[0])
cols[1].metric("Sampling rate", f"{a.fs:g} Hz")
cols[2].metric("Leads", len(a.sig_name), help=s["leads"])
cols[3].metric("Beats", f"{s['beats']:,}")
cols[4].metric("Heart rate", dash.fmt(s["heart_rate_bpm"], ".0f", 1, " bpm"))
cols[5].metric("Flagged", f"{s['flagged']:,}", f"{100 * s['flagged_share']:.1f}% of beats", delta_color="off",
                  delta_arrow="off")
cols[6].metric("Reviewed", f"{done} / {total}")
st.progress(done / total if total else 1.0, text=f"Review progress: {done} of {total} flagged beats reviewed")
if a.has_reference:
    st.caption(f"Against the reference annotations: ROC-AUC {dash.fmt(s['roc_auc'])} · sensitivity "
               f"{dash.fmt(s['sensitivity'], '.1f', 100, '%')} of {s['reference_abnormal']} abnormal beats flagged · "
               f"specificity {dash.fmt(s['specificity'], '.1f', 100, '%')} (see Overview)")

tabs = st.tabs(list(VIEWS), key="view", on_change="rerun")
beat_tab, group_tab, overview_tab, export_tab = tabs


def review_form(i: int, prefix: str, where, next_beat=None) -> None:
    """The review form of one beat; the version it shows is the one a save will claim to replace."""
    sample = int(a.sample[i])
    current = reviews.get(sample)
    st.session_state.setdefault("seen", {})[(a.digest, sample)] = current.version if current else 0
    key = f"{prefix}:{a.digest}:{sample}"
    with where:
        if current:
            st.markdown(f"**Current review:** {current.label} — {dash.md_escape(current.reviewer)}, "
                        f"{current.updated_at[:19].replace('T', ' ')} UTC (version {current.version})"
                        + (f"  \n_{dash.md_escape(current.note)}_" if current.note else ""))
        else:
            st.markdown("**Not reviewed yet.**")
        with st.form(f"form:{key}", border=True):
            st.radio("Decision", list(DECISION_LABELS), key=f"dec:{key}", horizontal=True,
                     format_func=DECISION_LABELS.get,
                     index=list(DECISION_LABELS).index(current.decision) if current else 0)
            st.selectbox("Class (for abnormal beats)", rv.REVIEW_CLASSES, key=f"cls:{key}",
                         index=rv.REVIEW_CLASSES.index(current.beat_class)
                         if current and current.beat_class in rv.REVIEW_CLASSES else 0,
                         help="V ventricular, S supraventricular, F fusion, Q unclassifiable, other")
            st.text_input("Note (optional)", key=f"note:{key}", value=current.note if current else "",
                          max_chars=rv.MAX_NOTE)
            st.form_submit_button("Save review", type="primary",
                                  on_click=save_beat, args=(store, a.digest, a.name, sample, prefix, next_beat))


# ---------------------------------------------------------------------------------------------
# Beats: flagged table | strip + beat view + review

if beat_tab.open:
    with beat_tab:
        left, right = st.columns([6, 7], gap="medium")
        table = dash.flagged_table(a, flags, reviews)
        order = [int(b) for b in table.index]
        with left:
            st.markdown(f"**{len(table)} flagged beats**, highest score first (select a row to open it)")
            if len(table):
                st.dataframe(table, height=520, key="flagged_table",
                             on_select=functools.partial(on_table_select, "flagged_table", order),
                             selection_mode="single-row",
                             column_order=["time", "score", "percentile", "reference", "review", "RR (s)"],
                             column_config={
                                 "beat": st.column_config.NumberColumn(width="small"),
                                 "time": st.column_config.TextColumn(width="small"),
                                 "RR (s)": st.column_config.NumberColumn(format="%.3f", width="small"),
                                 "score": st.column_config.NumberColumn(format="%.2f", width="small"),
                                 "percentile": st.column_config.NumberColumn("pct", format="%.1f", width="small"),
                                 "reference": st.column_config.TextColumn("ref", width="small"),
                                 "review": st.column_config.TextColumn(width="medium")})
            else:
                st.info("No beat is above the threshold; lower the percentile in the sidebar to flag more.")
        with right:
            i = int(st.session_state["beat"])
            nxt = dash.next_unreviewed(a, flags, reviews, after=i)
            pos = order.index(i) if i in order else -1
            nav = st.columns([1, 1, 1, 1.2])
            nav[0].button("Prev flagged", disabled=pos <= 0,
                          on_click=go_to, args=(order[pos - 1] if pos > 0 else i,), use_container_width=True)
            st.session_state["beat_input"] = i  # the widget mirrors the selection (kept outside widget state)
            nav[1].number_input("Beat #", min_value=0, max_value=len(a) - 1, step=1, key="beat_input",
                                label_visibility="collapsed", help="Jump to any beat by its number",
                                on_change=lambda: go_to(st.session_state["beat_input"]))
            nav[2].button("Next flagged", disabled=pos >= len(order) - 1 or not order,
                          on_click=go_to, args=(order[pos + 1] if 0 <= pos < len(order) - 1 else
                                                (order[0] if order and pos < 0 else i),), use_container_width=True)
            nav[3].button("Next unreviewed", disabled=nxt is None,
                          on_click=go_to, args=(nxt if nxt is not None else i,), use_container_width=True,
                          key="next_unreviewed")
            state = "flagged" if flags[i] else "not flagged"
            ref = f" · reference: {a.ref_symbol[i]} ({a.ref_aami[i]})" if a.has_reference and a.ref_symbol[i] else ""
            st.markdown(f"**Beat {i}** at {dash.format_time(a.time_s[i])} (sample {int(a.sample[i])}) · "
                        f"RR {a.rr[i, 0]:.3f} s · score {a.score[i]:.3f} (percentile {a.percentile[i]:.1f}) · "
                        f"{state}{ref}")
            st.plotly_chart(dash.strip_figure(a, flags, i, reviews=reviews), key="strip",
                            config={"displaylogo": False})
            st.plotly_chart(dash.beat_figure(a, i, dash.typical_normal(a, flags)), key="beatfig",
                            config={"displaylogo": False})
            show_flash(st)
            st.checkbox("After saving, go to the next unreviewed beat", key="auto_next", value=True)
            review_form(i, "b", st.container(), next_beat=nxt)

# ---------------------------------------------------------------------------------------------
# Groups: flagged beats clustered by morphology, decided in one action, then corrected one by one

if group_tab.open:
    with group_tab:
        gk = (a.digest, mkey, round(float(pct), 2))
        groups = group_cache().get_or_compute(gk, lambda: dash.cluster_flagged(a, flags))
        if not groups:
            st.info("No flagged beats to group at this threshold.")
        else:
            st.markdown(f"**{len(groups)} groups** of similar flagged beats (k-means on the model's latent codes "
                        "and the RR ratio). Decide a whole group at once, then correct single beats below it.")
            show_flash(st)
            seen_group = st.session_state.setdefault("seen_group", {})
            for g in groups:
                gkey = f"{a.digest}:{mkey}:{pct:.2f}:{g.gid}"
                samples = [int(x) for x in a.sample[g.index]]
                seen_group[gkey] = {smp: (reviews[smp].version if smp in reviews else 0) for smp in samples}
                reviewed = [reviews[smp] for smp in samples if smp in reviews]
                counts = {}
                for r in reviewed:
                    counts[r.label] = counts.get(r.label, 0) + 1
                with st.container(border=True):
                    c1, c2 = st.columns([3, 2])
                    c1.plotly_chart(dash.group_figure(a, g), key=f"gfig:{gkey}", config={"displaylogo": False})
                    with c2:
                        refs = ""
                        if a.has_reference:
                            kinds, n = np.unique(a.ref_aami[g.index], return_counts=True)
                            refs = " · reference: " + ", ".join(f"{k or '?'} {c}" for k, c in zip(kinds, n))
                        st.markdown(f"**Group {g.gid}: {g.size} beats** · {len(reviewed)} reviewed"
                                    + (" (" + ", ".join(f"{k}: {v}" for k, v in counts.items()) + ")" if counts else "")
                                    + refs)
                        with st.form(f"gform:{gkey}"):
                            st.radio("Decision for the group", list(DECISION_LABELS), key=f"gdec:{gkey}",
                                     format_func=DECISION_LABELS.get, horizontal=True)
                            st.selectbox("Class (for abnormal beats)", rv.REVIEW_CLASSES, key=f"gcls:{gkey}")
                            st.text_input("Note (optional)", key=f"gnote:{gkey}", max_chars=rv.MAX_NOTE)
                            st.checkbox("Only beats not yet reviewed", value=True, key=f"gnew:{gkey}")
                            st.form_submit_button(f"Apply to group {g.gid}", type="primary", on_click=save_group,
                                                  args=(store, a.digest, a.name, gkey))
                    with st.expander(f"Correct single beats of group {g.gid}"):
                        pick = st.selectbox("Beat", [int(x) for x in g.index], key=f"gpick:{gkey}",
                                            format_func=lambda b: f"beat {b} at {dash.format_time(a.time_s[b])}, "
                                            f"score {a.score[b]:.2f}"
                                            + (f" — {reviews[int(a.sample[b])].label}" if int(a.sample[b]) in reviews
                                               else ""))
                        st.plotly_chart(dash.beat_figure(a, pick, g.median_wave), key=f"gbeat:{gkey}",
                                        config={"displaylogo": False})
                        review_form(pick, "g", st.container())
                        st.button("Open in the Beats view", key=f"gopen:{gkey}", on_click=go_to, args=(pick, "Beats"))

# ---------------------------------------------------------------------------------------------
# Overview: the whole record's scores, and agreement with the reference annotations

if overview_tab.open:
    with overview_tab:
        st.markdown("**Score of every beat** (dashed line: threshold). Select a point to open that beat.")
        st.plotly_chart(dash.overview_figure(a, flags, threshold), key="overview",
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
        st.markdown("**All beats** with their scores, flags and review decisions:")
        st.download_button("Download beats CSV", dash.export_csv_bytes(a, flags, reviews),
                           file_name=f"{a.name}_beats.csv", mime="text/csv", key="dl_csv", on_click="ignore")
        st.markdown("**Reviewed beats** as a WFDB annotation file (AAMI symbols: N normal, S, V, F, Q; 'other' "
                    "abnormal beats as Q; noise `~`):")
        if reviews:
            fname, data = dash.export_wfdb_bytes(a, reviews)
            st.download_button(f"Download {fname}", data, file_name=fname, mime="application/octet-stream",
                               key="dl_wfdb", on_click="ignore")
            st.caption(f"Put it beside the record and read it with `wfdb.rdann('{fname.rsplit('.', 1)[0]}', 'rev')`.")
        else:
            st.caption("No reviewed beats yet.")
        with st.expander("Review history of this record (every edit, with the previous value)"):
            hist = store.history(a.digest)
            if hist:
                import pandas as pd

                st.dataframe(pd.DataFrame([h.__dict__ for h in hist]), hide_index=True)
            else:
                st.caption("No edits yet.")
