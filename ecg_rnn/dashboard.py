"""Analysis layer of the dashboard: everything `app.py` shows, computed without Streamlit.

- `analyse` runs the pipeline once per (record content digest, model file) and keeps what every view
  needs (scores, reconstructions, latent codes) in an `Analysis`; `AnalysisCache` holds a few of them.
- `flags_at` re-flags by a percentile threshold without touching the model (instant).
- `summary`, `confusion`, `roc_auc`: the summary view and the agreement with reference annotations.
- `cluster_flagged`: flagged beats grouped by morphology (k-means on the model's latent codes).
- `typical_normal`: the record's own typical normal beat, shown beside a flagged one.
- `beats_table`, `flagged_table`: the tables and the CSV export.
- `*_figure`: the Plotly figures.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ecg_rnn import paths
from ecg_rnn.beats import AAMI_CLASSES, ABNORMAL_CLASSES
from ecg_rnn.errors import CheckpointError
from ecg_rnn.records import Record
from ecg_rnn.scoring import score_record

RUNS_ENV = "ECG_RNN_RUNS_DIR"  # where user-trained models are looked for (default: runs/)
MODEL_ENV = "ECG_RNN_MODEL"  # the model the dashboard preselects
DEFAULT_EXAMPLE = "208"
MAX_GROUPS = 8
STRIP_SECONDS = 10.0

Progress = Callable[[float, str], None]


# ---------------------------------------------------------------------------------------------
# Models and example records


def available_models(runs_dir: Path | None = None) -> dict[str, Path]:
    """Shipped models first ('default' first), then every user-trained model under runs/."""
    out: dict[str, Path] = {}
    shipped = paths.shipped_models()
    for name in sorted(shipped, key=lambda n: (n != "default", n)):
        path = Path(shipped[name])
        if path.is_file():
            out[f"{name} (shipped)"] = path
    runs = Path(runs_dir) if runs_dir is not None else Path(os.environ.get(RUNS_ENV) or paths.runs_dir())
    if runs.is_dir():
        for path in sorted(runs.glob("*/*.safetensors")) + sorted(runs.glob("*/*/*.safetensors")):
            if path.is_file() and not path.is_symlink():
                label = "runs/" + path.relative_to(runs).as_posix()
                out.setdefault(label, path)
    return out


def preferred_model(models: dict[str, Path]) -> int:
    """Index of the model to preselect: $ECG_RNN_MODEL (a label, a name or a path) when set, else the first."""
    wanted = os.environ.get(MODEL_ENV, "").strip()
    if wanted:
        for i, (label, path) in enumerate(models.items()):
            if wanted in (label, label.split(" ")[0]) or Path(wanted).expanduser().resolve() == path.resolve():
                return i
    return 0


def model_key(path: Path) -> str:
    """Identity of a model file's content (a retrained file under the same name is a new model)."""
    st = Path(path).stat()
    h = hashlib.sha256(f"{Path(path).resolve()}:{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()[:16]


def load_detector(path: Path):
    from ecg_rnn.detector import RecurrentAEDetector

    return RecurrentAEDetector.load(path)


def example_records(folder: Path | None = None) -> dict[str, Path]:
    """The bundled MIT-BIH records (name -> record path without extension)."""
    folder = folder or paths.sample_records_dir()
    if not folder.is_dir():
        return {}
    return {p.stem: p.with_suffix("") for p in sorted(folder.glob("*.hea"))}


EXAMPLE_NOTES = {"100": "mostly normal beats", "208": "many ventricular (V) and fusion (F) beats",
                 "232": "many supraventricular (S) beats, long pauses"}


# ---------------------------------------------------------------------------------------------
# Analysis


@dataclass
class Analysis:
    """One record scored by one model: everything the views need, in plain arrays."""

    name: str
    digest: str
    model: str
    fs: float
    lead: str
    sig_name: tuple[str, ...]
    duration_s: float
    signal: np.ndarray  # float32, mV, the record's own sampling
    sample: np.ndarray  # int64 R-peaks
    time_s: np.ndarray
    rr: np.ndarray  # (n, 5) RR features
    ref_symbol: np.ndarray  # str, "" when unknown
    ref_aami: np.ndarray  # str, "" when unknown
    waves: np.ndarray  # (n, window) as the model saw them
    recon: np.ndarray  # (n, window)
    latent: np.ndarray  # (n, latent)
    score: np.ndarray  # float64
    percentile: np.ndarray  # among held-out normals, 0..100
    normal_scores: np.ndarray  # held-out normal scores of the model (threshold by percentile)
    default_percentile: float
    pre_s: float
    post_s: float
    has_reference: bool = False
    extras: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.sample)

    @property
    def key(self) -> tuple[str, str]:
        return self.digest, self.model

    @property
    def beat_time_axis(self) -> np.ndarray:
        n = self.waves.shape[1]
        return np.linspace(-self.pre_s, self.post_s, n, endpoint=False)


def analyse(record: Record, detector, model: str = "", progress: Progress | None = None) -> Analysis:
    """Cut, score, reconstruct and embed every beat of a record (the only place the model runs: one
    forward pass per beat)."""

    def tell(frac: float, text: str) -> None:
        if progress is not None:
            progress(frac, text)

    tell(0.02, f"Detecting R-peaks, cutting, scoring and reconstructing the beats of "
                f"{record.duration_s / 60:.0f} min of ECG")
    scored = score_record(detector, record, peaks="detect")
    beats = scored.beats
    recon, latent = scored.analysis.reconstruction, scored.analysis.latent
    tell(0.95, "Summarising")
    normal_scores = np.asarray(getattr(detector, "normal_scores_", np.array([])), dtype=np.float64)
    threshold = float(getattr(detector, "threshold_", np.nan))
    default_pct = float(np.asarray(detector.percentile(np.array([threshold]))).ravel()[0]) \
        if np.isfinite(threshold) else 99.0
    bc = detector.beats
    ref_aami = np.asarray(beats.aami, dtype=str)
    out = Analysis(
        name=record.name, digest=record.digest, model=model, fs=float(record.fs), lead=record.lead,
        sig_name=tuple(record.sig_name), duration_s=float(record.duration_s),
        signal=np.asarray(record.signal, dtype=np.float32), sample=np.asarray(beats.sample, dtype=np.int64),
        time_s=np.asarray(beats.time_s, dtype=np.float64), rr=np.asarray(beats.rr, dtype=np.float32),
        ref_symbol=np.asarray(beats.symbol, dtype=str), ref_aami=ref_aami,
        waves=np.asarray(beats.waves, dtype=np.float32), recon=recon, latent=latent,
        score=np.asarray(scored.score, dtype=np.float64),
        percentile=np.asarray(scored.percentile, dtype=np.float64), normal_scores=np.sort(normal_scores),
        default_percentile=round(min(max(default_pct, 50.0), 100.0), 1),
        pre_s=float(bc.pre_s), post_s=float(bc.post_s),
        has_reference=record.annotations is not None and bool((ref_aami != "").any()))
    tell(1.0, "Done")
    return out


class AnalysisCache:
    """A small process-wide LRU of analyses keyed by (record digest, model key); one computation per
    key even when several sessions ask at once."""

    def __init__(self, max_entries: int = 8, max_bytes: int = 1 << 30):
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self._sizes: dict = {}
        self._items: OrderedDict = OrderedDict()
        self._lock = threading.Lock()
        self._key_locks: dict = {}
        self.misses = 0

    def get(self, key):
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
        return None

    def get_or_compute(self, key, compute: Callable[[], object]):
        hit = self.get(key)
        if hit is not None:
            return hit
        with self._lock:
            key_lock = self._key_locks.setdefault(key, threading.Lock())
        with key_lock:
            hit = self.get(key)
            if hit is not None:
                return hit
            value = compute()
            with self._lock:
                self.misses += 1
                self._items[key] = value
                self._sizes[key] = approx_bytes(value)
                self._items.move_to_end(key)
                while len(self._items) > 1 and (len(self._items) > self.max_entries
                                                or sum(self._sizes.values()) > self.max_bytes):
                    old, _ = self._items.popitem(last=False)
                    self._sizes.pop(old, None)
                self._key_locks.pop(key, None)
            return value

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self._sizes.clear()


def approx_bytes(value, depth: int = 0) -> int:
    """Memory held by the numpy arrays inside a cached value (records, analyses, groups)."""
    if isinstance(value, np.ndarray):
        return int(value.nbytes)
    if depth > 3:
        return 0
    if isinstance(value, (list, tuple)):
        return sum(approx_bytes(v, depth + 1) for v in value)
    if isinstance(value, dict):
        return sum(approx_bytes(v, depth + 1) for v in value.values())
    if hasattr(value, "__dict__"):
        return sum(approx_bytes(v, depth + 1) for v in vars(value).values())
    return 0


# ---------------------------------------------------------------------------------------------
# Threshold, summary, agreement


def score_threshold(a: Analysis, percentile: float) -> float:
    """The score above which a beat is flagged: that percentile of the model's held-out normal scores."""
    if len(a.normal_scores):
        return float(np.percentile(a.normal_scores, float(np.clip(percentile, 0.0, 100.0))))
    return float(np.percentile(a.score, float(np.clip(percentile, 0.0, 100.0))))  # pragma: no cover


def flags_at(a: Analysis, percentile: float) -> np.ndarray:
    """Re-flag every beat at a percentile threshold (no model call)."""
    return a.score > score_threshold(a, percentile)


def heart_rate_bpm(a: Analysis) -> float:
    rr = a.rr[:, 0] if len(a) else np.array([])
    rr = rr[(rr > 0.2) & (rr < 3.0)]
    return float(60.0 / np.median(rr)) if len(rr) else float("nan")


def summary(a: Analysis, flags: np.ndarray) -> dict:
    n = len(a)
    out = {"record": a.name, "duration_s": a.duration_s, "fs": a.fs, "lead": a.lead,
           "leads": ", ".join(a.sig_name), "beats": n, "heart_rate_bpm": heart_rate_bpm(a),
           "flagged": int(flags.sum()), "flagged_share": float(flags.mean()) if n else 0.0}
    if a.has_reference:
        abnormal = np.isin(a.ref_aami, ABNORMAL_CLASSES)
        normal = a.ref_aami == "N"
        out["reference_abnormal"] = int(abnormal.sum())
        out["sensitivity"] = float(flags[abnormal].mean()) if abnormal.any() else float("nan")
        out["specificity"] = float((~flags[normal]).mean()) if normal.any() else float("nan")
        out["roc_auc"] = roc_auc(a)
    return out


def confusion(a: Analysis, flags: np.ndarray):
    """Reference AAMI class x flagged / not flagged (DataFrame), None without reference annotations."""
    import pandas as pd

    if not a.has_reference:
        return None
    rows = []
    for cls in (*AAMI_CLASSES, ""):
        m = a.ref_aami == cls
        if cls == "" and not m.any():
            continue
        rows.append({"reference": cls or "unmatched", "beats": int(m.sum()), "flagged": int(flags[m].sum()),
                     "not flagged": int((~flags[m]).sum()),
                     "flagged %": round(100.0 * flags[m].mean(), 1) if m.any() else float("nan")})
    return pd.DataFrame(rows).set_index("reference")


def roc_auc(a: Analysis) -> float:
    """ROC-AUC of the score for abnormal (S, V, F, Q) vs normal reference beats; NaN if one class is absent."""
    from sklearn.metrics import roc_auc_score

    labelled = np.isin(a.ref_aami, AAMI_CLASSES)
    y = np.isin(a.ref_aami[labelled], ABNORMAL_CLASSES)
    if labelled.sum() < 2 or y.all() or not y.any():
        return float("nan")
    return float(roc_auc_score(y, a.score[labelled]))


def typical_normal(a: Analysis, flags: np.ndarray) -> np.ndarray:
    """The record's typical normal beat: the median of its unflagged, low-score beats."""
    calm = (~flags) & (a.percentile <= np.median(a.percentile[~flags])) if (~flags).any() else ~flags
    pool = a.waves[calm] if calm.any() else (a.waves[~flags] if (~flags).any() else a.waves)
    return np.median(pool, axis=0).astype(np.float32)


# ---------------------------------------------------------------------------------------------
# Morphology groups


@dataclass(frozen=True)
class Group:
    gid: int
    index: np.ndarray  # beat indices into the Analysis, by descending score
    median_wave: np.ndarray

    @property
    def size(self) -> int:
        return len(self.index)


def cluster_flagged(a: Analysis, flags: np.ndarray, max_groups: int = MAX_GROUPS, seed: int = 0) -> list[Group]:
    """Flagged beats grouped by morphology: k-means on standardised latent codes (plus the RR ratio,
    which separates premature beats of similar shape), k chosen by silhouette; largest group first."""
    from sklearn.cluster import KMeans
    from sklearn.metrics import silhouette_score
    from sklearn.preprocessing import StandardScaler
    from threadpoolctl import threadpool_limits

    idx = np.flatnonzero(flags)
    if len(idx) == 0:
        return []
    if len(idx) < 4:
        labels = np.zeros(len(idx), dtype=int)
    else:
        feats = np.hstack([a.latent[idx], np.log(np.clip(a.rr[idx, 3:4], 0.05, 20.0))])
        x = StandardScaler().fit_transform(feats)
        x = np.nan_to_num(x)
        rng = np.random.default_rng(seed)
        sample = rng.choice(len(x), size=min(len(x), 800), replace=False)
        best, best_score = np.zeros(len(idx), dtype=int), -1.0
        # one BLAS/OpenMP thread: small problems run several times faster without thread start-up,
        # and the server stays responsive for the other sessions
        with threadpool_limits(1):
            for k in range(2, min(max_groups, len(idx) - 1) + 1):
                km = KMeans(n_clusters=k, n_init=3, random_state=seed).fit(x)
                if len(np.unique(km.labels_[sample])) < 2:
                    continue
                s = silhouette_score(x[sample], km.labels_[sample])
                if s > best_score + 0.01:
                    best, best_score = km.labels_, s
        labels = best
    groups = []
    for lab in np.unique(labels):
        members = idx[labels == lab]
        members = members[np.argsort(-a.score[members], kind="stable")]
        groups.append(Group(gid=0, index=members, median_wave=np.median(a.waves[members], axis=0)))
    groups.sort(key=lambda g: (-g.size, int(g.index[0])))
    return [Group(gid=i + 1, index=g.index, median_wave=g.median_wave) for i, g in enumerate(groups)]


# ---------------------------------------------------------------------------------------------
# Tables and export


def format_time(seconds: float) -> str:
    s = max(float(seconds), 0.0)
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    return f"{int(h):d}:{int(m):02d}:{sec:06.3f}" if h >= 1 else f"{int(m):02d}:{sec:06.3f}"


def _review_columns(a: Analysis, reviews: dict) -> dict[str, list]:
    cols: dict[str, list] = {"review": [], "review_class": [], "reviewer": [], "reviewed_at": [], "note": []}
    for s in a.sample:
        r = reviews.get(int(s))
        cols["review"].append(r.decision if r else "")
        cols["review_class"].append(r.beat_class if r else "")
        cols["reviewer"].append(r.reviewer if r else "")
        cols["reviewed_at"].append(r.updated_at if r else "")
        cols["note"].append(r.note if r else "")
    return cols


def beats_table(a: Analysis, flags: np.ndarray, reviews: dict):
    """Every beat with its score, flag and review decision (the CSV export)."""
    import pandas as pd

    frame = pd.DataFrame({
        "record": a.name, "record_digest": a.digest, "model": a.model, "beat": np.arange(len(a)),
        "sample": a.sample, "time_s": np.round(a.time_s, 4), "rr_prev_s": np.round(a.rr[:, 0], 4),
        "rr_next_s": np.round(a.rr[:, 1], 4), "score": np.round(a.score, 6),
        "percentile": np.round(a.percentile, 2), "flagged": flags.astype(bool),
        "ref_symbol": a.ref_symbol, "ref_aami": a.ref_aami})
    for name, values in _review_columns(a, reviews).items():
        frame[name] = values
    return frame


def flagged_table(a: Analysis, flags: np.ndarray, reviews: dict):
    """Flagged beats, highest score first (the table view); index = beat number."""
    import pandas as pd

    idx = np.flatnonzero(flags)
    idx = idx[np.argsort(-a.score[idx], kind="stable")]
    labels = []
    for s in a.sample[idx]:
        r = reviews.get(int(s))
        labels.append(f"{r.label} ({r.reviewer})" if r else "")
    frame = pd.DataFrame({
        "beat": idx, "time": [format_time(t) for t in a.time_s[idx]], "RR (s)": np.round(a.rr[idx, 0], 3),
        "score": np.round(a.score[idx], 4), "percentile": np.round(a.percentile[idx], 2),
        "review": labels})
    if a.has_reference:
        frame.insert(5, "reference", a.ref_aami[idx])
    return frame.set_index("beat")


def review_progress(a: Analysis, flags: np.ndarray, reviews: dict) -> tuple[int, int]:
    """(reviewed flagged beats, flagged beats)."""
    idx = np.flatnonzero(flags)
    done = sum(1 for s in a.sample[idx] if int(s) in reviews)
    return done, len(idx)


def next_unreviewed(a: Analysis, flags: np.ndarray, reviews: dict, after: int | None = None) -> int | None:
    """The next flagged, unreviewed beat by descending score, starting after `after` in that order."""
    idx = np.flatnonzero(flags)
    order = idx[np.argsort(-a.score[idx], kind="stable")]
    todo = [int(i) for i in order if int(a.sample[i]) not in reviews]
    if not todo:
        return None
    if after is not None and after in order:
        pos = int(np.flatnonzero(order == after)[0])
        later = [i for i in order[pos + 1:] if int(a.sample[i]) not in reviews]
        if later:
            return int(later[0])
    return todo[0]


def export_csv_bytes(a: Analysis, flags: np.ndarray, reviews: dict) -> bytes:
    return beats_table(a, flags, reviews).to_csv(index=False).encode("utf-8")


def export_wfdb_bytes(a: Analysis, reviews: dict, extension: str = "rev") -> tuple[str, bytes]:
    """(file name, bytes) of the WFDB annotation file of the reviewed beats of this record."""
    import tempfile

    from ecg_rnn.reviews import write_wfdb_annotations

    mine = [r for s, r in reviews.items()]
    with tempfile.TemporaryDirectory(prefix="ecg-rnn-export-") as tmp:
        path = write_wfdb_annotations(a.name, a.fs, mine, tmp, extension=extension)
        return path.name, path.read_bytes()


# ---------------------------------------------------------------------------------------------
# Figures (Plotly)


SCORE_SCALE = "YlOrRd"


def strip_figure(a: Analysis, flags: np.ndarray, centre: int, seconds: float = STRIP_SECONDS,
                 reviews: dict | None = None):
    """The ECG around one beat: the lead in mV, beats as markers coloured by score, flagged ones ringed."""
    import plotly.graph_objects as go

    reviews = reviews or {}
    t0 = float(a.time_s[centre]) - seconds / 2 if len(a) else 0.0
    t0 = float(np.clip(t0, 0.0, max(a.duration_s - seconds, 0.0)))
    lo, hi = int(t0 * a.fs), int(min(a.duration_s, t0 + seconds) * a.fs)
    t = np.arange(lo, hi) / a.fs
    x = a.signal[lo:hi]
    fig = go.Figure()
    fig.add_trace(go.Scattergl(x=t, y=x, mode="lines", line=dict(color="#1f2d3d", width=1), name=a.lead,
                               hoverinfo="skip"))
    inside = np.flatnonzero((a.sample >= lo) & (a.sample < hi))
    if len(inside):
        y = a.signal[np.clip(a.sample[inside], 0, len(a.signal) - 1)]
        top = float(np.max(x)) if len(x) else 1.0
        span = float(np.ptp(x)) if len(x) else 1.0
        ym = np.full(len(inside), top + 0.12 * span)
        text = [f"beat {i}<br>score {a.score[i]:.3f} (p{a.percentile[i]:.1f})"
                + (f"<br>{reviews[int(a.sample[i])].label}" if int(a.sample[i]) in reviews else "")
                for i in inside]
        fig.add_trace(go.Scatter(
            x=a.time_s[inside], y=ym, mode="markers", name="beats (colour: score percentile)",
            customdata=inside, text=text, hovertemplate="%{text}<extra></extra>",
            marker=dict(size=np.where(flags[inside], 14, 8), color=a.percentile[inside], cmin=50, cmax=100,
                        colorscale=SCORE_SCALE, showscale=True, colorbar=dict(title="pct", thickness=10),
                        line=dict(width=np.where(flags[inside], 2, 0), color="#c00000"),
                        symbol=np.where(flags[inside], "triangle-down", "circle"))))
        del y
        for i in inside[flags[inside]]:
            fig.add_vrect(x0=a.time_s[i] - a.pre_s, x1=a.time_s[i] + a.post_s, fillcolor="#ff4040",
                          opacity=0.10, line_width=0)
    if len(a):
        fig.add_vline(x=float(a.time_s[centre]), line=dict(color="#2060c0", width=1, dash="dot"))
    fig.update_layout(height=300, margin=dict(l=10, r=10, t=30, b=10), showlegend=False,
                      xaxis_title="time (s)", yaxis_title=f"{a.lead} (mV)",
                      title=dict(text=f"{format_time(t0)} – {format_time(t0 + seconds)}", font=dict(size=12)))
    return fig


def overview_figure(a: Analysis, flags: np.ndarray, threshold: float):
    """Score of every beat over the whole record (click a point to jump to that beat)."""
    import plotly.graph_objects as go

    fig = go.Figure()
    fig.add_trace(go.Scattergl(
        x=a.time_s, y=a.score, mode="markers", customdata=np.arange(len(a)),
        marker=dict(size=np.where(flags, 7, 4), color=a.percentile, cmin=50, cmax=100, colorscale=SCORE_SCALE,
                    line=dict(width=0)),
        hovertemplate="beat %{customdata}<br>t=%{x:.1f} s<br>score %{y:.3f}<extra></extra>", name="beats"))
    fig.add_hline(y=threshold, line=dict(color="#c00000", width=1, dash="dash"))
    fig.update_layout(height=200, margin=dict(l=10, r=10, t=10, b=10), showlegend=False,
                      xaxis_title="time (s)", yaxis_title="score", yaxis_type="log" if np.all(a.score > 0) else None,
                      clickmode="event+select", dragmode="select")
    return fig


def beat_figure(a: Analysis, i: int, normal: np.ndarray | None = None):
    """One beat, its reconstruction and the per-sample error (shaded), next to the typical normal beat."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    t = a.beat_time_axis
    fig = make_subplots(rows=1, cols=2, shared_yaxes=True, horizontal_spacing=0.04,
                        subplot_titles=(f"beat {i} at {format_time(a.time_s[i])} — score {a.score[i]:.3f}",
                                        "typical normal beat of this record"))
    fig.add_trace(go.Scatter(x=t, y=a.recon[i], mode="lines", line=dict(color="#2060c0", dash="dash"),
                             name="reconstruction"), 1, 1)
    fig.add_trace(go.Scatter(x=t, y=a.waves[i], mode="lines", line=dict(color="#c00000"), fill="tonexty",
                             fillcolor="rgba(255,80,80,0.25)", name="beat (error shaded)"), 1, 1)
    fig.add_trace(go.Bar(x=t, y=np.abs(a.waves[i] - a.recon[i]), name="|error|", marker_color="#ffa040",
                         opacity=0.5, yaxis="y"), 1, 1)
    if normal is not None:
        fig.add_trace(go.Scatter(x=t, y=normal, mode="lines", line=dict(color="#208040"), name="typical normal"),
                      1, 2)
    fig.update_layout(height=320, margin=dict(l=10, r=10, t=40, b=10), legend=dict(orientation="h", y=-0.2),
                      bargap=0)
    fig.update_xaxes(title_text="time from R-peak (s)")
    return fig


def group_figure(a: Analysis, g: Group, max_beats: int = 40):
    """A group's beats overlaid (thin) with its median beat (bold)."""
    import plotly.graph_objects as go

    t = a.beat_time_axis
    fig = go.Figure()
    show = g.index[np.linspace(0, g.size - 1, min(g.size, max_beats)).astype(int)]
    # one trace, beats separated by gaps: far lighter than one trace per beat
    xs = np.concatenate([np.append(t, np.nan) for _ in show]) if len(show) else t
    ys = np.concatenate([np.append(a.waves[i], np.nan) for i in show]) if len(show) else np.full(len(t), np.nan)
    fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines", line=dict(color="rgba(192,0,0,0.18)", width=1),
                             hoverinfo="skip", showlegend=False, connectgaps=False))
    fig.add_trace(go.Scatter(x=t, y=g.median_wave, mode="lines", line=dict(color="#1f2d3d", width=3),
                             name="median", showlegend=False))
    fig.update_layout(height=220, margin=dict(l=10, r=10, t=30, b=10),
                      title=dict(text=f"group {g.gid}: {g.size} beats", font=dict(size=12)))
    return fig


def md_escape(text: object) -> str:
    """Text from files or reviewers shown literally in Streamlit markdown (no links, no formatting)."""
    out = str(text).replace("\r", " ").replace("\n", " ")
    return "".join("\\" + c if c in "\\`*_{}[]()#+-.!|<>~$:" else c for c in out)


def fmt(value: float, spec: str = ".3f", scale: float = 1.0, suffix: str = "") -> str:
    """A number for display, '–' when it is missing (NaN)."""
    return f"{value * scale:{spec}}{suffix}" if value is not None and np.isfinite(value) else "–"


def describe_error(exc: BaseException) -> str:
    """One line for the user about an unexpected error (never a traceback)."""
    text = str(exc).splitlines()[0][:200] if str(exc) else ""
    if isinstance(exc, CheckpointError):
        return text
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
