"""What a scored recording becomes on disk and for a reader: its per-beat CSV, Holter events, WFDB
annotations and the Holter report.

`score_file` (one recording of `ecg-rnn score`; ecg_rnn.bulk runs it for many) writes
`<name>.ecgrnn`, `<name>.events.csv`, `<name>.meta.json` and `<name>.csv` through a staging folder, each
moved into place whole, the CSV last: its presence marks the recording as done, and a reader never sees
half a file.

The class of every beat is the reviewer's decision where a person reviewed it (ecg_rnn.reviews), else
the suggested class; beats inside noise are noisy; AF and noise episodes come from the scoring stage.
`recording_events` turns that into ecg_rnn.events' events table, `write_recording_report` into the
Holter report (PDF or HTML). `ecg-rnn score` writes the events as `<record>.events.csv`; `ecg-rnn
report` and the dashboard write the report.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ecg_rnn.detector import RecurrentAEDetector
from ecg_rnn.events import BeatTrack, detect_events
from ecg_rnn.records import RecordSource, open_record, wfdb_record_name, write_annotation_file
from ecg_rnn.reviews import Review
from ecg_rnn.scoring import AF_RHYTHM, NOISE_QUALITY, ScoredBeats, score_source

ANNOTATION_EXTENSION = "ecgrnn"  # wfdb.rdann(DIR/<name>, "ecgrnn") reads the flagged beats
EVENTS_SUFFIX = ".events.csv"
FLAG_SYMBOL = "Q"  # WFDB symbol of a flagged beat: unclassified abnormal...
FLAG_SYMBOLS = {"V": "V", "S": "S", "F": "F"}  # ...unless its suggested class says more
EPISODE_MARKS = {  # episode kind -> WFDB annotations (sample, symbol, aux) at its start and end
    "AF": lambda start, end: [(start, "+", "(AFIB"), (end, "+", "(N")],
    "noise": lambda start, end: [(start, "~", "noise"), (end, "~", "clean")],
}
STAGING_SUFFIX = ".partial"  # staging folders: .<name>.<random>.partial
META_SUFFIX = ".meta.json"
SUGGESTED_COUNTS = {"suggested_v": "V", "suggested_s": "S"}  # summary figure -> `suggested_class`

REVIEW_TO_CLASS = {"V": "V", "S": "S", "F": "F", "Q": "Q", "other": "Q"}  # abnormal review class -> AAMI


def beat_classes(scored: ScoredBeats, reviews: dict[int, Review] | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(class, reviewed, noisy) per beat: a review overrides the suggestion (a beat reviewed as noise
    counts as noisy and keeps its suggested class)."""
    n = len(scored.beats)
    classes = np.array(scored.suggested_class if scored.suggested_class is not None else ["N"] * n, dtype="<U1")
    noisy = (scored.quality == NOISE_QUALITY) if scored.quality is not None else np.zeros(n, bool)
    reviewed = np.zeros(n, bool)
    for i, sample in enumerate(scored.beats.sample):
        review = (reviews or {}).get(int(sample))
        if review is None:
            continue
        reviewed[i] = True
        if review.decision == "normal":
            classes[i] = "N"
        elif review.decision == "abnormal":
            classes[i] = REVIEW_TO_CLASS.get(review.beat_class, "Q")
        else:
            noisy[i] = True
    return classes, reviewed, noisy


def beat_track(scored: ScoredBeats, duration_s: float, reviews: dict[int, Review] | None = None) -> BeatTrack:
    classes, reviewed, noisy = beat_classes(scored, reviews)
    episodes = [(e.kind, e.start_s, e.end_s) for e in scored.episodes]
    return BeatTrack.build(scored.beats.time_s, classes, duration_s=duration_s, reviewed=reviewed, noisy=noisy,
                           episodes=episodes)


def recording_events(scored: ScoredBeats, duration_s: float, reviews: dict[int, Review] | None = None) -> pd.DataFrame:
    """The Holter events of a recording (columns kind, start_s, end_s, beats, rate_bpm, reviewed, detail)."""
    return detect_events(beat_track(scored, duration_s, reviews))


def report_beats(scored: ScoredBeats, reviews: dict[int, Review] | None = None) -> pd.DataFrame:
    """The per-beat frame the Holter report reads."""
    classes, reviewed, noisy = beat_classes(scored, reviews)
    return pd.DataFrame({"time_s": scored.beats.time_s, "class": classes, "reviewed": reviewed, "noisy": noisy})


def write_recording_report(path, scored: ScoredBeats, source: RecordSource, detector, model_name: str,
                           reviews: dict[int, Review] | None = None):
    """The Holter report of a scored recording, its strips read from the recording itself."""
    from ecg_rnn.holter_report import write_report  # here: `ecg-rnn score` need not load matplotlib and reportlab

    fs = source.fs

    def strip(start_s: float, end_s: float) -> tuple[np.ndarray, np.ndarray]:
        start, stop = max(0, int(start_s * fs)), min(source.sig_len, int(np.ceil(end_s * fs)))
        leads = source.read_leads(start, stop)
        return np.arange(start, start + len(leads)) / fs, leads

    return write_report(
        path, recording={"name": source.name, "source": source.origin, "duration_s": source.duration_s},
        beats=report_beats(scored, reviews), events=recording_events(scored, source.duration_s, reviews),
        signal=strip, lead_names=[source.sig_name[c] for c in source.ecg_channels], fs=fs,
        model={"model": model_name, "trained on": detector.training_data_.get("description", "")},
        threshold=float(detector.threshold_), threshold_percentile=float(detector.threshold_percentile))


# ---------------------------------------------------------------------------------------------
# `ecg-rnn score`: the files of one recording


@dataclass(frozen=True)
class ScoredFile:
    """What scoring one file produced: a small, picklable summary, also written as `<name>.meta.json`."""

    name: str
    beats: int
    flagged: int
    fs: float
    lead: str
    csv: Path
    annotations: Path
    path: str  # the recording, as an absolute path
    duration_s: float
    leads: int  # ECG leads in the file
    stats: dict = field(default_factory=dict)  # beat_table_stats of its per-beat table


def output_name(path: str | os.PathLike) -> str:
    return wfdb_record_name(path)


def score_file(detector: RecurrentAEDetector, path: str | os.PathLike, out_dir: Path, peaks: str = "detect",
               lead: str | int | None = None, fs: float | None = None) -> ScoredFile:
    """Score one recording and write `<out_dir>/<name>.ecgrnn`, `<name>.events.csv`, `<name>.meta.json`
    and `<name>.csv`, each moved into place whole, the CSV last: its presence marks the recording as done."""
    source = open_record(path, lead=lead, fs=fs)
    scored = score_source(detector, source, peaks)
    name = output_name(path)
    table = scored.table()
    done = ScoredFile(name=name, beats=len(scored.beats), flagged=int(scored.flagged.sum()), fs=float(source.fs),
                      lead=source.lead, csv=out_dir / f"{name}.csv",
                      annotations=out_dir / f"{name}.{ANNOTATION_EXTENSION}", path=os.path.abspath(path),
                      duration_s=float(source.duration_s), leads=len(source.ecg_channels),
                      stats=beat_table_stats(table))
    events = recording_events(scored, source.duration_s)
    with staging_dir(out_dir, name) as staging:
        events.to_csv(staging / f"{name}{EVENTS_SUFFIX}", index=False)
        written = [write_annotations(scored, staging, name, source.fs), staging / f"{name}{EVENTS_SUFFIX}",
                   write_meta(done, staging)]
        table.to_csv(staging / done.csv.name, index=False)
        for file in [*written, staging / done.csv.name]:  # the CSV last
            os.replace(file, out_dir / file.name)
    return done


@contextmanager
def staging_dir(out_dir: Path, name: str) -> Iterator[Path]:
    """A private folder inside `out_dir` (hidden, `.<name>.*.partial`) to write files into before each is
    moved into place with os.replace, which is atomic within one file system; removed afterwards. Two
    writers of the same recording (a retried task) never share one."""
    out_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=out_dir, prefix=f".{name}.", suffix=STAGING_SUFFIX))
    try:
        yield staging
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def beat_table_stats(table) -> dict[str, float | int | None]:
    """One recording's triage figures from its per-beat table. A figure whose column the table lacks
    (quality, rhythm, suggested_class) is None: unknown, not zero."""
    flagged = table["flagged"].to_numpy(dtype=bool)
    has_quality = "quality" in table
    noise = table["quality"].eq(NOISE_QUALITY).to_numpy() if has_quality else np.zeros(len(table), bool)
    stats = {"flagged_share": _share(flagged), "flagged_clean_share": _share(flagged[~noise]),
             "noise_share": _share(noise) if has_quality else None,
             "af_burden": _time_share(table, table["rhythm"].eq(AF_RHYTHM).to_numpy()) if "rhythm" in table else None,
             "max_score": float(table["score"].max()) if len(table) else None}
    for key, symbol in SUGGESTED_COUNTS.items():
        stats[key] = int(table["suggested_class"].eq(symbol).sum()) if "suggested_class" in table else None
    return stats


def _share(mask: np.ndarray) -> float:
    return float(mask.mean()) if len(mask) else 0.0


def _time_share(table, mask: np.ndarray) -> float:
    """Share of the time (each beat weighted by its preceding RR interval) that `mask` covers."""
    rr = table["rr_prev_s"].to_numpy(dtype=float)
    known = np.isfinite(rr)
    total = rr[known].sum()
    return float(rr[known & mask].sum() / total) if total > 0 else _share(mask)


def write_meta(done: ScoredFile, folder: Path) -> Path:
    """`<folder>/<name>.meta.json`: the ScoredFile, its output files named relative to their folder."""
    path = folder / f"{done.name}{META_SUFFIX}"
    path.write_text(json.dumps({**asdict(done), "csv": done.csv.name, "annotations": done.annotations.name}, indent=1))
    return path


def read_meta(out_dir: Path, name: str) -> ScoredFile:
    data = json.loads((out_dir / f"{name}{META_SUFFIX}").read_text())
    return ScoredFile(**{**data, "csv": out_dir / data["csv"], "annotations": out_dir / data["annotations"]})


def write_annotations(scored: ScoredBeats, out_dir, record_name: str, fs: float,
                      extension: str = ANNOTATION_EXTENSION) -> Path:
    """WFDB annotation file `<out_dir>/<record_name>.ecgrnn`, read with wfdb.rdann(out_dir/record_name,
    "ecgrnn"): one annotation per flagged beat at its R-peak (symbol V, S or F from its suggested class,
    else Q; aux "score=... pct=..."), a rhythm annotation '+' with aux "(AFIB" where an AF episode starts and
    "(N" where it ends, and a noise annotation '~' (aux "noise") where a noise episode starts and '~' (aux
    "clean") where it ends."""
    idx = np.flatnonzero(scored.flagged)
    classes = scored.suggested_class if scored.suggested_class is not None else np.full(len(scored.beats), "")
    rows = [(int(scored.beats.sample[i]), FLAG_SYMBOLS.get(str(classes[i]), FLAG_SYMBOL),
             f"score={scored.score[i]:.2f} pct={scored.percentile[i]:.1f}") for i in idx]
    for episode in scored.episodes:
        start, end = (int(round(t * fs)) for t in (episode.start_s, episode.end_s))
        rows += EPISODE_MARKS[episode.kind](start, end)
    rows.sort(key=lambda row: row[0])
    return write_annotation_file(out_dir, record_name, extension, [r[0] for r in rows], [r[1] for r in rows],
                                 [r[2] for r in rows], fs, empty_note="ecg-rnn: no beats flagged")
