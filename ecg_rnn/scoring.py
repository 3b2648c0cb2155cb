"""Scoring stage: recordings -> beat scores -> flags, written as CSV and WFDB annotation files.

Every format goes one way: `records.open_record` gives a chunk-readable source (a WFDB record is read
from disk a chunk at a time, so a 24-hour Holter stays within bounded memory), `beats_from_source` cuts
its beats, and one forward pass of the detector scores them. Many recordings are scored by a process
pool (concurrent.futures), one detector per worker, with a progress bar; a recording whose outputs
already exist is skipped, so an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import os
import sys
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from ecg_rnn.beats import Beats, beats_from_source
from ecg_rnn.detector import Analysis, RecurrentAEDetector
from ecg_rnn.errors import EcgRnnError
from ecg_rnn.records import (CSV_SUFFIXES, Record, RecordSource, open_record, source_from_record,
                             wfdb_record_name, write_annotation_file)

ANNOTATION_EXTENSION = "ecgrnn"  # wfdb.rdann(DIR/<name>, "ecgrnn") reads the flagged beats
FLAG_SYMBOL = "Q"  # WFDB symbol of a flagged beat: unclassified abnormal


@dataclass
class ScoredBeats:
    beats: Beats
    analysis: Analysis  # score, calibrated terms, reconstruction and latent code of every beat
    percentile: np.ndarray
    flagged: np.ndarray  # bool
    has_reference: bool = False

    @property
    def score(self) -> np.ndarray:
        return self.analysis.score

    def table(self):
        import pandas as pd

        frame = pd.DataFrame({
            "sample": self.beats.sample.astype(np.int64),
            "time_s": np.round(self.beats.time_s, 4),
            "rr_prev_s": np.round(self.beats.rr[:, 0].astype(np.float64), 4),
            "score": np.round(self.score, 4),
            "percentile": np.round(self.percentile, 2),
            "flagged": self.flagged.astype(bool),
        })
        if self.has_reference:
            frame["ref_symbol"] = self.beats.symbol
            frame["ref_aami"] = self.beats.aami
        return frame


def score_beats(detector: RecurrentAEDetector, beats: Beats, has_reference: bool) -> ScoredBeats:
    """Scores, percentiles among held-out normals, and flags of the beats of whole records."""
    analysis = detector.analyse(beats)
    return ScoredBeats(beats=beats, analysis=analysis, percentile=detector.percentile(analysis.score),
                       flagged=analysis.score > detector.threshold_, has_reference=has_reference)


def score_source(detector: RecurrentAEDetector, source: RecordSource, peaks: str = "detect") -> ScoredBeats:
    """Cut a recording's beats with the detector's own configs (resampled to its rate) and score them;
    templates come from all beats of the recording."""
    beats = beats_from_source(source, detector.signal, detector.beats, peaks=peaks)
    return score_beats(detector, beats, has_reference=source.annotations is not None)


def score_record(detector: RecurrentAEDetector, record: Record, peaks: str = "detect") -> ScoredBeats:
    return score_source(detector, source_from_record(record), peaks)


@dataclass(frozen=True)
class ScoredFile:
    """What scoring one file produced (a small, picklable summary for the process pool)."""

    name: str
    beats: int
    flagged: int
    fs: float
    lead: str
    csv: Path
    annotations: Path


def output_name(path: str | os.PathLike) -> str:
    return wfdb_record_name(path)


def score_file(detector: RecurrentAEDetector, path: str | os.PathLike, out_dir: Path, peaks: str = "detect",
               lead: str | int | None = None, fs: float | None = None) -> ScoredFile:
    """Score one recording and write `<out_dir>/<name>.csv` and `<name>.ecgrnn`. The CSV is written
    last and atomically: its presence marks the recording as done."""
    source = open_record(path, lead=lead, fs=fs)
    scored = score_source(detector, source, peaks)
    name = output_name(path)
    out_dir.mkdir(parents=True, exist_ok=True)
    annotations = write_annotations(scored, out_dir, name, source.fs)
    csv = out_dir / f"{name}.csv"
    tmp = out_dir / f".{name}.csv.partial"
    scored.table().to_csv(tmp, index=False)
    os.replace(tmp, csv)
    return ScoredFile(name=name, beats=len(scored.beats), flagged=int(scored.flagged.sum()), fs=source.fs,
                      lead=source.lead, csv=csv, annotations=annotations)


def write_annotations(scored: ScoredBeats, out_dir, record_name: str, fs: float,
                      extension: str = ANNOTATION_EXTENSION) -> Path:
    """WFDB annotation file `<out_dir>/<record_name>.ecgrnn` with one annotation per flagged beat:
    symbol 'Q' (unclassified abnormal beat) at the beat's R-peak sample, and "score=... pct=..." as its
    aux_note. Read it with wfdb.rdann(str(out_dir / record_name), "ecgrnn")."""
    idx = np.flatnonzero(scored.flagged)
    aux = [f"score={scored.score[i]:.2f} pct={scored.percentile[i]:.1f}" for i in idx]
    return write_annotation_file(out_dir, record_name, extension, scored.beats.sample[idx], [FLAG_SYMBOL] * len(idx),
                                 aux, fs, empty_note="ecg-rnn: no beats flagged")


# ---------------------------------------------------------------------------------------------
# many recordings


def expand_inputs(inputs: list[str | os.PathLike]) -> list[Path]:
    """Record paths as given, with every folder replaced by the WFDB records and CSV files in it."""
    found: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            found += sorted(p.with_suffix("") for p in item.glob("*.hea"))
            found += sorted(p for suffix in CSV_SUFFIXES for p in item.glob(f"*{suffix}"))
        else:
            found.append(item)
    return list(dict.fromkeys(found))


def is_done(path: Path, out_dir: Path) -> bool:
    name = output_name(path)
    return (out_dir / f"{name}.csv").exists() and (out_dir / f"{name}.{ANNOTATION_EXTENSION}").exists()


_worker: dict = {}


def _init_worker(model_path: str, threads: int) -> None:
    import torch

    torch.set_num_threads(threads)
    _worker["detector"] = RecurrentAEDetector.load(model_path)


def _score_in_worker(path: Path, out_dir: Path, options: dict) -> ScoredFile:
    return score_file(_worker["detector"], path, out_dir, **options)


@dataclass
class BulkResult:
    scored: list[ScoredFile]
    skipped: list[Path]
    failed: list[tuple[Path, str]]


def score_many(paths: list[Path], model_path: Path, out_dir: Path, workers: int = 0, overwrite: bool = False,
               progress: bool = True, **options) -> BulkResult:
    """Score many recordings on a process pool; recordings already scored are skipped unless
    `overwrite`. A bad recording is reported and the others go on."""
    out_dir.mkdir(parents=True, exist_ok=True)
    todo = [p for p in paths if overwrite or not is_done(p, out_dir)]
    result = BulkResult(scored=[], skipped=[p for p in paths if p not in todo], failed=[])
    if not todo:
        return result
    detector = RecurrentAEDetector.load(model_path)  # a bad model file fails here, once, in one line
    workers = max(1, min(workers or os.cpu_count() or 1, len(todo)))
    bar = tqdm(total=len(todo), desc="scoring", unit="record", disable=None if progress else True, file=sys.stderr)
    if workers == 1:  # no pool for a single worker: same code path, no process start-up
        _worker["detector"] = detector
        for path in todo:
            _collect(result, path, lambda p=path: _score_in_worker(p, out_dir, options), bar)
    else:
        with ProcessPoolExecutor(max_workers=workers, initializer=_init_worker,
                                 initargs=(str(model_path), 1)) as pool:
            futures = {pool.submit(_score_in_worker, p, out_dir, options): p for p in todo}
            for future in as_completed(futures):
                _collect(result, futures[future], future.result, bar)
    bar.close()
    return result


def _collect(result: BulkResult, path: Path, get, bar) -> None:
    try:
        result.scored.append(get())
    except EcgRnnError as exc:
        result.failed.append((path, str(exc)))
    except ValueError as exc:  # an option the detector cannot use for this recording
        result.failed.append((path, f"{path.name}: {exc}"))
    bar.update(1)
