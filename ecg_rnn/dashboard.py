"""Analysis layer of the dashboard: everything `app.py` shows, computed without Streamlit.

- `analyse` runs the pipeline once per (record content digest, model file) and keeps what every view
  needs (scores, reconstructions, latent codes, the quality / rhythm / suggestion stages' outputs when the
  scoring stage provides them) in an `Analysis`; `AnalysisCache` holds a few of them.
- `flags_at` re-flags by a percentile threshold without touching the model (instant); noise beats are
  left out unless asked for.
- `summary`, `confusion`, `roc_auc`: the summary view and the agreement with reference annotations.
- `cluster_flagged`, `group_default`: flagged beats grouped by morphology, and the decision a group
  starts from (its suggested class, else what its shape and timing say).
- `review_queue`, `flagged_table`: the flagged beats in the reviewer's chosen order (the table and
  next / previous use the same order); `beats_table` is the CSV export.
- `BulkAction`, `bulk_save`, `undo_bulk`: a decision on many beats at once, and its undo.
- `episodes_table`: AF and noise episodes with their review state (the store keeps the decisions).
- `beat_track`, `events_csv_bytes`, `report_bytes`: the Holter events and report of what is shown.
- `*_figure`: the Plotly figures (every ECG lead on the strip, offsets removed, episodes shaded).
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ecg_rnn import paths
from ecg_rnn.beats import AAMI_CLASSES, ABNORMAL_CLASSES
from ecg_rnn.bulk import SUMMARY_NAME, read_summary
from ecg_rnn.errors import CheckpointError, DataNotFoundError
from ecg_rnn.records import RecordSource
from ecg_rnn.reviews import Review, ReviewStore, episode_key
from ecg_rnn.rhythm import Episode, in_episodes
from ecg_rnn.scoring import flag_beats, score_source
from ecg_rnn.suggest import QRS_WINDOW_S, BeatLayout, SuggestConfig, qrs_width

RUNS_ENV = "ECG_RNN_RUNS_DIR"  # where user-trained models are looked for (default: runs/)
MODEL_ENV = "ECG_RNN_MODEL"  # the model the dashboard preselects
DEFAULT_EXAMPLE = "208"
MAX_GROUPS = 8
STRIP_SECONDS = 10.0
NOISE = "noise"
AF = "AF"
EPISODE_COLOURS = {AF: "rgba(255,127,14,0.16)", NOISE: "rgba(120,120,120,0.22)"}
QUEUE_ORDERS = ("score", "time", "group", "suggested class")
SUGGESTED_ORDER = ("V", "F", "S", "Q", "N", "")  # ventricular first: the commonest reason to flag
STRIP_LEAD_PX = 70  # strip height per lead
BEAT_FIGURE_PX = 230
STRIP_MIN_SPACING_MV = 1.0  # stacked leads are at least this far apart

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
TRIAGE_COLUMNS = ["record", "triage_score", "duration_s", "beats", "flagged", "flagged_share", "suggested_v",
                  "suggested_s", "af_burden", "noise_share", "status", "error"]  # what the folder list shows


def read_triage(folder: str | os.PathLike):
    """The triage table of an `ecg-rnn score` output folder (OUT/summary.csv): one row per recording, most
    urgent first, failed recordings last (see ecg_rnn.bulk.triage_score)."""
    folder = Path(folder).expanduser()
    if not (folder / SUMMARY_NAME).is_file():
        raise DataNotFoundError(f"{folder} has no {SUMMARY_NAME}: score recordings into it first with "
                                f"`ecg-rnn score RECORDINGS --out {folder}`")
    return read_summary(folder)


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
    source: RecordSource  # the recording, chunk-readable: the strip reads every ECG lead from it
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
    quality: np.ndarray | None = None  # str per beat, "ok" / "noise" (None: no quality stage ran)
    rhythm: np.ndarray | None = None  # str per beat, "AF" / ""
    suggested: np.ndarray | None = None  # str per beat: N, S, V, F, Q
    scored_lead: np.ndarray | None = None  # str per beat: the lead its score comes from
    episodes: list[Episode] = field(default_factory=list)  # AF and noise episodes found

    def __len__(self) -> int:
        return len(self.sample)

    @property
    def key(self) -> tuple[str, str]:
        return self.digest, self.model

    @property
    def lead_names(self) -> tuple[str, ...]:
        """Every ECG lead, the chosen one first (as the strip draws them)."""
        return tuple(self.sig_name[c] for c in self.source.ecg_channels)

    @property
    def beat_time_axis(self) -> np.ndarray:
        n = self.waves.shape[1]
        return np.linspace(-self.pre_s, self.post_s, n, endpoint=False)

    @property
    def beat_layout(self) -> BeatLayout:
        """Where the R-peak lies in the beats as the model saw them (its own sampling rate)."""
        fs = self.waves.shape[1] / (self.pre_s + self.post_s)
        return BeatLayout(fs=fs, r_index=int(round(self.pre_s * fs)))


def analyse(source: RecordSource, digest: str, detector, model: str = "",
            progress: Progress | None = None) -> Analysis:
    """Cut, score, reconstruct and embed every beat of a recording (the only place the model runs: one
    forward pass per beat). digest: the recording's content digest (reviews are keyed by it)."""

    def tell(frac: float, text: str) -> None:
        if progress is not None:
            progress(frac, text)

    tell(0.02, f"Detecting R-peaks, cutting, scoring and reconstructing the beats of "
                f"{source.duration_s / 60:.0f} min of ECG")
    scored = score_source(detector, source, peaks="detect")
    beats = scored.beats
    tell(0.95, "Summarising")
    normal_scores = np.asarray(getattr(detector, "normal_scores_", np.array([])), dtype=np.float64)
    threshold = float(getattr(detector, "threshold_", np.nan))
    default_pct = float(np.asarray(detector.percentile(np.array([threshold]))).ravel()[0]) \
        if np.isfinite(threshold) else 99.0
    ref_aami = np.asarray(beats.aami, dtype=str)
    out = Analysis(
        name=source.name, digest=digest, model=model, fs=float(source.fs), lead=source.lead,
        sig_name=tuple(source.sig_name), duration_s=float(source.duration_s), source=source,
        sample=np.asarray(beats.sample, dtype=np.int64), time_s=np.asarray(beats.time_s, dtype=np.float64),
        rr=np.asarray(beats.rr, dtype=np.float32), ref_symbol=np.asarray(beats.symbol, dtype=str),
        ref_aami=ref_aami, waves=np.asarray(beats.waves, dtype=np.float32),
        recon=scored.analysis.reconstruction, latent=scored.analysis.latent,
        score=np.asarray(scored.score, dtype=np.float64),
        percentile=np.asarray(scored.percentile, dtype=np.float64), normal_scores=np.sort(normal_scores),
        default_percentile=round(min(max(default_pct, 50.0), 100.0), 1),
        pre_s=float(detector.beats.pre_s), post_s=float(detector.beats.post_s),
        has_reference=source.annotations is not None and bool((ref_aami != "").any()),
        quality=_strings(scored.quality), rhythm=_strings(scored.rhythm),
        suggested=_strings(scored.suggested_class), scored_lead=_strings(scored.scored_lead),
        episodes=list(scored.episodes or []))
    tell(1.0, "Done")
    return out


def _strings(values) -> np.ndarray | None:
    return None if values is None else np.asarray(values, dtype=str)


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


def noise_beats(a: Analysis, episodes: list[Episode] | None = None) -> np.ndarray:
    """Beats the quality stage called noise, or inside a noise episode (found or marked by a reviewer)."""
    noisy = a.quality == NOISE if a.quality is not None else np.zeros(len(a), bool)
    stretches = [e for e in (a.episodes if episodes is None else episodes) if e.kind == NOISE]
    return noisy | in_episodes(a.time_s, stretches)


def flags_at(a: Analysis, percentile: float, noise: np.ndarray | None = None) -> np.ndarray:
    """Re-flag every beat at a percentile threshold (no model call) as `ecg-rnn score` flags them
    (scoring.flag_beats: inside AF suggested V beats too); beats marked in `noise` never are."""
    none = np.zeros(len(a), bool)
    return flag_beats(a.score, score_threshold(a, percentile), none if noise is None else noise,
                      none if a.rhythm is None else a.rhythm == AF,
                      np.full(len(a), "") if a.suggested is None else a.suggested)


def heart_rate_bpm(a: Analysis) -> float:
    rr = a.rr[:, 0] if len(a) else np.array([])
    rr = rr[(rr > 0.2) & (rr < 3.0)]
    return float(60.0 / np.median(rr)) if len(rr) else float("nan")


def episode_share(episodes: list[Episode], kind: str, duration_s: float) -> float:
    """Share of the recording covered by episodes of one kind (overlaps counted once)."""
    spans = sorted((max(e.start_s, 0.0), min(e.end_s, duration_s)) for e in episodes if e.kind == kind)
    covered, reach = 0.0, 0.0
    for start, end in spans:
        start = max(start, reach)
        if end > start:
            covered += end - start
            reach = end
    return covered / duration_s if duration_s > 0 else 0.0


def summary(a: Analysis, flags: np.ndarray, episodes: list[Episode] | None = None) -> dict:
    n = len(a)
    episodes = a.episodes if episodes is None else episodes
    out = {"record": a.name, "duration_s": a.duration_s, "fs": a.fs, "lead": a.lead,
           "leads": ", ".join(a.sig_name), "beats": n, "heart_rate_bpm": heart_rate_bpm(a),
           "flagged": int(flags.sum()), "flagged_share": float(flags.mean()) if n else 0.0,
           "af_burden": episode_share(episodes, AF, a.duration_s),
           "noise_share": episode_share(episodes, NOISE, a.duration_s)}
    if a.quality is not None:
        out["noise_beats"] = int(noise_beats(a, episodes).sum())
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


def group_default(a: Analysis, g: Group, normal: np.ndarray) -> tuple[str, str]:
    """(decision, class) a group's review starts from: the majority of its suggested classes; without
    suggestions, what its median beat says against the record's typical normal beat (the suggestion
    stage's QRS-width, shape and prematurity rules, applied to the group as a whole)."""
    if a.suggested is not None:
        classes, counts = np.unique(a.suggested[g.index], return_counts=True)
        return decision_for_class(str(classes[np.argmax(counts)]))
    rules = SuggestConfig()
    layout = a.beat_layout
    widening = np.diff(qrs_width(np.stack([normal, g.median_wave]).astype(np.float64), layout))[0]
    qrs = layout.window(QRS_WINDOW_S)
    group_qrs, normal_qrs = (w[qrs] - np.median(w) for w in (g.median_wave, normal))  # offsets removed
    deviation = np.abs(group_qrs - normal_qrs).sum() / max(float(np.abs(normal_qrs).sum()), 1e-9)
    if widening >= rules.wide_qrs_s or deviation >= rules.abnormal_area:
        return "abnormal", "V"
    if float(np.median(a.rr[g.index, 3])) < rules.s_local_ratio:
        return "abnormal", "S"
    return "normal", ""


def decision_for_class(cls: str) -> tuple[str, str]:
    """A suggested AAMI class as a review (decision, class): N is a false alarm, the others abnormal."""
    return ("normal", "") if cls in ("N", "") else ("abnormal", cls)


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


def _stage_columns(a: Analysis) -> dict[str, np.ndarray]:
    """The quality, rhythm and suggestion stages' per-beat outputs, where the scoring provided them."""
    columns = {"suggested_class": a.suggested, "quality": a.quality, "rhythm": a.rhythm, "scored_lead": a.scored_lead}
    return {k: v for k, v in columns.items() if v is not None}


def beats_table(a: Analysis, flags: np.ndarray, reviews: dict):
    """Every beat with its score, flag, the stages' outputs and review decision (the CSV export)."""
    import pandas as pd

    frame = pd.DataFrame({
        "record": a.name, "record_digest": a.digest, "model": a.model, "beat": np.arange(len(a)),
        "sample": a.sample, "time_s": np.round(a.time_s, 4), "rr_prev_s": np.round(a.rr[:, 0], 4),
        "rr_next_s": np.round(a.rr[:, 1], 4), "score": np.round(a.score, 6),
        "percentile": np.round(a.percentile, 2), "flagged": flags.astype(bool),
        "ref_symbol": a.ref_symbol, "ref_aami": a.ref_aami, **_stage_columns(a)})
    for name, values in _review_columns(a, reviews).items():
        frame[name] = values
    return frame


def group_of_beats(a: Analysis, groups: list[Group]) -> np.ndarray:
    """Group id of every beat (0: in no group)."""
    out = np.zeros(len(a), dtype=np.int64)
    for g in groups:
        out[g.index] = g.gid
    return out


def review_queue(a: Analysis, flags: np.ndarray, order: str = "score", groups: list[Group] | None = None
                 ) -> np.ndarray:
    """The flagged beats in review order (the table, next / previous and next unreviewed all follow it):
    by score (highest first), time, morphology group (largest first) or suggested class (V, F, S, Q, N),
    ties by descending score."""
    if order not in QUEUE_ORDERS:
        raise ValueError(f"queue order must be one of {', '.join(QUEUE_ORDERS)}, not {order!r}")
    idx = np.flatnonzero(flags)
    keys = [-a.score[idx]]  # np.lexsort: the last key is the primary one
    if order == "time":
        keys.append(a.time_s[idx])
    elif order == "group":
        keys.append(group_of_beats(a, groups or [])[idx])
    elif order == "suggested class" and a.suggested is not None:
        rank = {c: i for i, c in enumerate(SUGGESTED_ORDER)}
        keys.append(np.array([rank.get(c, len(rank)) for c in a.suggested[idx]]))
    return idx[np.lexsort(keys)]


def flagged_table(a: Analysis, flags: np.ndarray, reviews: dict, queue: np.ndarray | None = None,
                  groups: list[Group] | None = None):
    """The flagged beats in queue order (default: highest score first); index = beat number."""
    import pandas as pd

    idx = review_queue(a, flags) if queue is None else np.asarray(queue, dtype=np.int64)
    labels = []
    for s in a.sample[idx]:
        r = reviews.get(int(s))
        labels.append(f"{r.label} ({r.reviewer})" if r else "")
    frame = pd.DataFrame({
        "beat": idx, "time": [format_time(t) for t in a.time_s[idx]], "score": np.round(a.score[idx], 4),
        "percentile": np.round(a.percentile[idx], 2)})
    if a.has_reference:
        frame["reference"] = a.ref_aami[idx]
    if a.suggested is not None:
        frame["suggested"] = a.suggested[idx]
    if groups:
        frame["group"] = group_of_beats(a, groups)[idx]
    frame["review"] = labels
    frame["RR (s)"] = np.round(a.rr[idx, 0], 3)
    return frame.set_index("beat")


def review_progress(a: Analysis, flags: np.ndarray, reviews: dict) -> tuple[int, int]:
    """(reviewed flagged beats, flagged beats)."""
    idx = np.flatnonzero(flags)
    done = sum(1 for s in a.sample[idx] if int(s) in reviews)
    return done, len(idx)


def next_unreviewed(a: Analysis, queue: np.ndarray, reviews: dict, after: int | None = None) -> int | None:
    """The next unreviewed beat of the queue after `after` (wrapping round to the queue's start)."""
    order = [int(i) for i in queue]
    todo = [i for i in order if int(a.sample[i]) not in reviews]
    if not todo:
        return None
    if after is not None and after in order:
        later = [i for i in order[order.index(after) + 1:] if int(a.sample[i]) not in reviews]
        if later:
            return later[0]
    return todo[0]


def neighbours(queue: np.ndarray, beat: int) -> tuple[int | None, int | None]:
    """(previous, next) beat of the queue around `beat`; a beat outside the queue has the queue's first
    beat as its next."""
    order = [int(i) for i in queue]
    if beat not in order:
        return None, (order[0] if order else None)
    pos = order.index(beat)
    return (order[pos - 1] if pos > 0 else None), (order[pos + 1] if pos + 1 < len(order) else None)


def export_csv_bytes(a: Analysis, flags: np.ndarray, reviews: dict) -> bytes:
    return beats_table(a, flags, reviews).to_csv(index=False).encode("utf-8")


def export_wfdb_bytes(a: Analysis, reviews: dict, extension: str = "rev") -> tuple[str, bytes]:
    """(file name, bytes) of the WFDB annotation file of the reviewed beats of this record."""
    from ecg_rnn.reviews import write_wfdb_annotations

    with tempfile.TemporaryDirectory(prefix="ecg-rnn-export-") as tmp:
        path = write_wfdb_annotations(a.name, a.fs, list(reviews.values()), tmp, extension=extension)
        return path.name, path.read_bytes()


# ---------------------------------------------------------------------------------------------
# Decisions on many beats at once (a morphology group, a stretch marked as noise), and their undo


@dataclass(frozen=True)
class BulkAction:
    """One decision saved for many beats: what each beat was before, to undo it."""

    digest: str
    what: str  # "group 2", "00:10.000 – 00:20.000"
    label: str  # "abnormal V", "noise"
    before: dict  # sample -> the Review it replaced, or None
    after_versions: dict  # sample -> version it was saved as
    episode: Episode | None = None  # the stretch a reviewer marked as noise with it

    @property
    def size(self) -> int:
        return len(self.after_versions)


def bulk_save(store: ReviewStore, digest: str, record_name: str, expected: dict[int, int], decision: str,
              beat_class: str, note: str, reviewer: str, what: str, source: str = "group",
              episode: Episode | None = None) -> BulkAction:
    """Save one decision for many beats (all or none, see ReviewStore.save_many) and return its undo."""
    before = store.get_many(digest, expected)
    saved = store.save_many(digest, expected, decision, beat_class, note, reviewer, record_name=record_name,
                            source=source)
    label = next(iter(saved.values())).label if saved else decision
    return BulkAction(digest=digest, what=what, label=label, before={s: before.get(s) for s in saved},
                      after_versions={s: r.version for s, r in saved.items()}, episode=episode)


def undo_bulk(store: ReviewStore, action: BulkAction, reviewer: str) -> int:
    """Put every beat of a bulk action back as it was (its previous review, or none); refused with
    ReviewConflict, changing nothing, when someone saved one of those beats since."""
    return store.restore(action.digest, action.after_versions, action.before, reviewer)


def same_review(existing: Review, decision: str, beat_class: str, note: str, reviewer: str) -> bool:
    """Whether a saved review is exactly the one this reviewer is saving (a repeated click, e.g. a
    double click on Save): then there is nothing to save and nothing in conflict."""
    from ecg_rnn.reviews import ReviewError, validate

    try:
        wanted = validate(decision, beat_class, note, reviewer)
    except ReviewError:
        return False
    return (existing.decision, existing.beat_class, existing.note, existing.reviewer) == wanted


def beats_in(a: Analysis, start_s: float, end_s: float) -> np.ndarray:
    """Indices of the beats whose R-peak lies in [start_s, end_s)."""
    return np.flatnonzero((a.time_s >= start_s) & (a.time_s < end_s))


# ---------------------------------------------------------------------------------------------
# Episode reviews: an AF or noise episode confirmed or rejected as a whole, a stretch marked as noise


def listed_episodes(a: Analysis, episodes: list[Episode]) -> list[Episode]:
    """Every episode found or marked (rejected ones included), by start time: the rows of episodes_table."""
    return sorted({episode_key(e): e for e in [*a.episodes, *episodes]}.values(), key=lambda e: e.start_s)


def episodes_table(a: Analysis, episodes: list[Episode], decisions: dict):
    """Every episode found or marked, with its beats and review state (the Episodes view)."""
    import pandas as pd

    rows = []
    for e in listed_episodes(a, episodes):
        r = decisions.get(episode_key(e))
        rows.append({"kind": e.kind, "start": format_time(e.start_s), "end": format_time(e.end_s),
                     "duration (s)": round(e.end_s - e.start_s, 1), "beats": len(beats_in(a, e.start_s, e.end_s)),
                     "review": f"{r.decision} ({r.reviewer})" if r else "",
                     "found by": "pipeline" if e in a.episodes else "reviewer"})
    return pd.DataFrame(rows, columns=["kind", "start", "end", "duration (s)", "beats", "review", "found by"])


# ---------------------------------------------------------------------------------------------
# Holter events and report of what the dashboard shows


def beat_classes(a: Analysis, flags: np.ndarray, reviews: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(AAMI class, reviewed, noisy) per beat: the reviewer's decision where reviewed, else the suggested
    class; without suggestions an unreviewed flagged beat is Q (unclassified) and an unflagged one N."""
    classes = a.suggested.copy() if a.suggested is not None else np.where(flags, "Q", "N")
    classes = classes.astype("<U1")
    reviewed = np.zeros(len(a), bool)
    noisy = np.zeros(len(a), bool)
    for i, s in enumerate(a.sample):
        r = reviews.get(int(s))
        if r is None:
            continue
        reviewed[i] = True
        noisy[i] = r.decision == NOISE
        classes[i] = {"normal": "N", NOISE: "Q"}.get(r.decision, r.wfdb_symbol)
    return classes, reviewed, noisy


def beat_track(a: Analysis, flags: np.ndarray, reviews: dict, episodes: list[Episode]):
    from ecg_rnn.events import BeatTrack

    classes, reviewed, noisy = beat_classes(a, flags, reviews)
    return BeatTrack.build(a.time_s, classes, duration_s=max(a.duration_s, float(a.time_s[-1]) if len(a) else 0.0),
                           reviewed=reviewed, noisy=noisy | noise_beats(a, episodes),
                           episodes=[(e.kind, e.start_s, e.end_s) for e in episodes])


def holter_events(a: Analysis, flags: np.ndarray, reviews: dict, episodes: list[Episode]):
    """The Holter events (ecg_rnn.events.detect_events) of the beats' reviewed or suggested classes."""
    from ecg_rnn.events import detect_events

    return detect_events(beat_track(a, flags, reviews, episodes))


def events_csv_bytes(a: Analysis, flags: np.ndarray, reviews: dict, episodes: list[Episode]) -> bytes:
    return holter_events(a, flags, reviews, episodes).to_csv(index=False).encode("utf-8")


def read_strip(a: Analysis, start_s: float, end_s: float) -> tuple[np.ndarray, np.ndarray]:
    """(times, samples x leads in mV) of every ECG lead between two times (invalid samples NaN)."""
    lo = int(np.clip(np.floor(start_s * a.fs), 0, a.source.sig_len))
    hi = int(np.clip(np.ceil(end_s * a.fs), lo, a.source.sig_len))
    return np.arange(lo, hi) / a.fs, np.asarray(a.source.read_leads(lo, hi), dtype=np.float64)


def report_bytes(a: Analysis, flags: np.ndarray, reviews: dict, episodes: list[Episode], percentile: float,
                 groups: list[Group], suffix: str = ".pdf") -> tuple[str, bytes]:
    """(file name, bytes) of the Holter report (ecg_rnn.holter_report) of what the dashboard shows."""
    from ecg_rnn.holter_report import write_report

    classes, reviewed, noisy = beat_classes(a, flags, reviews)
    import pandas as pd

    beats = pd.DataFrame({"time_s": a.time_s, "class": classes, "reviewed": reviewed,
                          "noisy": noisy | noise_beats(a, episodes), "groups": group_of_beats(a, groups)})
    name = f"{a.name}_report{suffix}"
    with tempfile.TemporaryDirectory(prefix="ecg-rnn-report-") as tmp:
        path = write_report(
            Path(tmp) / name, recording={"name": a.name, "duration_s": a.duration_s, "lead": a.lead},
            beats=beats, events=holter_events(a, flags, reviews, episodes),
            signal=lambda start, end: read_strip(a, start, end), lead_names=a.lead_names, fs=a.fs,
            model={"model": a.model}, threshold=score_threshold(a, percentile), threshold_percentile=percentile)
        return name, path.read_bytes()


# ---------------------------------------------------------------------------------------------
# Figures (Plotly)


SCORE_SCALE = "YlOrRd"


def stacked_leads(x: np.ndarray) -> tuple[np.ndarray, float]:
    """Leads (samples x leads) centred on their own median and stacked downwards: (traces, spacing in mV).
    The spacing fits the tallest lead of the window, so leads never overlap and amplitudes stay in mV."""
    centred = x - np.nanmedian(x, axis=0, keepdims=True) if len(x) else x
    span = float(np.nanmax(np.nanpercentile(np.abs(centred), 99.5, axis=0))) if np.isfinite(centred).any() else 0.0
    spacing = max(STRIP_MIN_SPACING_MV, 2.2 * span)
    return centred - spacing * np.arange(x.shape[1])[None, :], spacing


def span(x0: float, x1: float, fillcolor: str, **style) -> dict:
    """A shaded time span over the whole plot height (what Figure.add_vrect draws). Shapes are built as
    plain dicts and set once: each add_vrect / add_shape call re-validates every shape already there,
    which made a strip with ten flagged beats take a fifth of a second."""
    return dict(type="rect", xref="x", yref="y domain", x0=float(x0), x1=float(x1), y0=0, y1=1,
                fillcolor=fillcolor, line=dict(width=0), **style)


def episode_marks(episodes: list[Episode], start_s: float, end_s: float) -> tuple[list[dict], list[dict]]:
    """AF and noise episodes as shaded spans, with their kind written at the top: (shapes, annotations)."""
    shapes, labels = [], []
    for e in episodes:
        if e.end_s > start_s and e.start_s < end_s:
            x0 = max(e.start_s, start_s)
            colour = EPISODE_COLOURS.get(e.kind, "rgba(0,0,0,0.1)")
            shapes.append(span(x0, min(e.end_s, end_s), colour, layer="below"))
            labels.append(dict(text=e.kind, xref="x", yref="y domain", x=float(x0), y=1, xanchor="left",
                               yanchor="top", showarrow=False, font=dict(size=10)))
    return shapes, labels


def strip_figure(a: Analysis, flags: np.ndarray, centre: int, seconds: float = STRIP_SECONDS,
                 reviews: dict | None = None, episodes: list[Episode] | None = None):
    """The ECG around one beat: every ECG lead (the chosen one on top), each centred on its median and
    stacked on one time axis, with a 1 mV bar; beats as markers coloured by score (flagged ones ringed,
    labelled with their suggested class), AF and noise episodes shaded."""
    import plotly.graph_objects as go

    reviews = reviews or {}
    episodes = a.episodes if episodes is None else episodes
    t0 = float(a.time_s[centre]) - seconds / 2 if len(a) else 0.0
    t0 = float(np.clip(t0, 0.0, max(a.duration_s - seconds, 0.0)))
    t1 = min(a.duration_s, t0 + seconds)
    t, x = read_strip(a, t0, t1)
    traces, spacing = stacked_leads(x)
    names = a.lead_names
    fig = go.Figure()
    for k, name in enumerate(names):  # SVG, not WebGL: ten seconds of ECG draw faster than a new WebGL context
        fig.add_trace(go.Scatter(x=t, y=traces[:, k], mode="lines", line=dict(color="#1f2d3d", width=1),
                                 name=name, hoverinfo="skip"))
    lo, hi = int(t0 * a.fs), int(t1 * a.fs)
    inside = np.flatnonzero((a.sample >= lo) & (a.sample < hi))
    top = 0.55 * spacing
    if len(inside):
        text = [f"beat {i}<br>score {a.score[i]:.3f} (p{a.percentile[i]:.1f})"
                + (f"<br>suggested {a.suggested[i]}" if a.suggested is not None else "")
                + (f"<br>{reviews[int(a.sample[i])].label}" if int(a.sample[i]) in reviews else "")
                for i in inside]
        label = a.suggested[inside] if a.suggested is not None else None
        fig.add_trace(go.Scatter(
            x=a.time_s[inside], y=np.full(len(inside), top), mode="markers+text" if label is not None else "markers",
            name="beats (colour: score percentile)", customdata=inside, hovertext=text,
            hovertemplate="%{hovertext}<extra></extra>", text=label, textposition="top center",
            textfont=dict(size=10),
            marker=dict(size=np.where(flags[inside], 13, 7), color=a.percentile[inside], cmin=50, cmax=100,
                        colorscale=SCORE_SCALE, showscale=False,
                        line=dict(width=np.where(flags[inside], 2, 0), color="#c00000"),
                        symbol=np.where(flags[inside], "triangle-down", "circle"))))
    shapes = [span(a.time_s[i] - a.pre_s, a.time_s[i] + a.post_s, "#ff4040", opacity=0.10)
              for i in inside[flags[inside]]]
    episode_shapes, labels = episode_marks(episodes, t0, t1)
    bottom = -spacing * (len(names) - 0.5)
    shapes += [*episode_shapes, dict(type="line", x0=t0 + 0.05, x1=t0 + 0.05, y0=bottom, y1=bottom + 1.0,
                                     line=dict(color="#2060c0", width=3))]  # the 1 mV scale bar
    labels.append(dict(x=t0 + 0.1, y=bottom + 0.5, text="1 mV", showarrow=False, xanchor="left",
                       font=dict(size=10, color="#2060c0")))
    if len(a):  # the beat shown
        shapes.append(dict(type="line", xref="x", yref="y domain", x0=float(a.time_s[centre]),
                           x1=float(a.time_s[centre]), y0=0, y1=1, line=dict(color="#2060c0", width=1, dash="dot")))
    fig.update_layout(height=70 + STRIP_LEAD_PX * len(names) + 20, margin=dict(l=10, r=10, t=24, b=10),
                      showlegend=False, xaxis_title=None, shapes=shapes, annotations=labels,
                      title=dict(text=f"{format_time(t0)} – {format_time(t1)} · each lead centred, 1 mV bar",
                                 font=dict(size=12)))
    fig.update_yaxes(tickvals=-spacing * np.arange(len(names)), ticktext=list(names),
                     range=[bottom - 0.1 * spacing, top + 0.45 * spacing], zeroline=False, fixedrange=True)
    return fig


def overview_figure(a: Analysis, flags: np.ndarray, threshold: float, episodes: list[Episode] | None = None):
    """Score of every beat over the whole record (click a point to jump to that beat), episodes shaded."""
    import plotly.graph_objects as go

    fig = go.Figure()
    fig.add_trace(go.Scattergl(
        x=a.time_s, y=a.score, mode="markers", customdata=np.arange(len(a)),
        marker=dict(size=np.where(flags, 7, 4), color=a.percentile, cmin=50, cmax=100, colorscale=SCORE_SCALE,
                    line=dict(width=0)),
        hovertemplate="beat %{customdata}<br>t=%{x:.1f} s<br>score %{y:.3f}<extra></extra>", name="beats"))
    fig.add_hline(y=threshold, line=dict(color="#c00000", width=1, dash="dash"))
    shapes, labels = episode_marks(a.episodes if episodes is None else episodes, 0.0, a.duration_s)
    fig.update_layout(shapes=[*fig.layout.shapes, *shapes], annotations=[*fig.layout.annotations, *labels])
    fig.update_layout(height=220, margin=dict(l=10, r=10, t=20, b=10), showlegend=False,
                      xaxis_title="time (s)", yaxis_title="score", yaxis_type="log" if np.all(a.score > 0) else None,
                      clickmode="event+select", dragmode="select")
    return fig


BEAT_PANELS = ((0.0, 0.576), (0.616, 1.0))  # x domains: the beat (60 %) and the typical normal beat


def beat_figure(a: Analysis, i: int, normal: np.ndarray | None = None):
    """One beat, its reconstruction and the per-sample error (shaded), next to the typical normal beat.
    The two panels share the y axis; they are laid out by hand (what make_subplots builds, at a fraction
    of its cost: the figure is drawn for every beat reviewed)."""
    import plotly.graph_objects as go

    t = a.beat_time_axis
    data = [go.Scatter(x=t, y=a.recon[i], mode="lines", line=dict(color="#2060c0", dash="dash"),
                       name="reconstruction"),
            go.Scatter(x=t, y=a.waves[i], mode="lines", line=dict(color="#c00000"), fill="tonexty",
                       fillcolor="rgba(255,80,80,0.25)", name="beat (error shaded)"),
            # the error as a filled step line: one SVG path where bars would be one element per sample
            go.Scatter(x=t, y=np.abs(a.waves[i] - a.recon[i]), mode="lines", line=dict(width=0, shape="hvh"),
                       fill="tozeroy", fillcolor="rgba(255,160,64,0.5)", name="|error|")]
    if normal is not None:
        data.append(go.Scatter(x=t, y=normal, mode="lines", line=dict(color="#208040"), name="typical normal",
                               xaxis="x2", yaxis="y2"))
    titles = (f"beat {i} (red), reconstruction (blue)", "typical normal beat")
    (l0, l1), (r0, r1) = BEAT_PANELS
    return go.Figure(data=data, layout=dict(
        height=BEAT_FIGURE_PX, margin=dict(l=10, r=10, t=28, b=10), showlegend=False,
        xaxis=dict(domain=[l0, l1], anchor="y"), yaxis=dict(anchor="x"),
        xaxis2=dict(domain=[r0, r1], anchor="y2"), yaxis2=dict(anchor="x2", matches="y", showticklabels=False),
        annotations=[dict(text=text, x=(x0 + x1) / 2, y=1.0, xref="paper", yref="paper", xanchor="center",
                          yanchor="bottom", showarrow=False, font=dict(size=12))
                     for text, (x0, x1) in zip(titles, BEAT_PANELS)]))


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
