"""Many recordings: scored on a process pool on this machine or on a Dask cluster, resumable, with a
triage table of the whole output folder.

Every recording goes through `score_recording`, the same function on a process pool (concurrent.futures)
and on Dask workers (`Client.map` with `pure=False`, gathered with `as_completed`). A worker process
loads the detector once (a cache keyed by model path and content digest). A recording's outputs are
written whole and its CSV last (outputs.score_file), so "done" is "its CSV and meta file exist": a
rerun skips finished recordings, and a task that Dask reruns because its worker died either finds the
recording done or scores it again into the same files. A bad recording is an outcome with an error,
not an exception, so the others go on.

At the end the client writes `OUT/errors.csv` (this run's failures) and `OUT/summary.csv` (the triage
table: one row per recording scored into OUT, rebuilt from every `<name>.meta.json`, so a resumed run
lists everything), each atomically.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import sys
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import pandas as pd
from tqdm.auto import tqdm

from ecg_rnn.detector import RecurrentAEDetector
from ecg_rnn.errors import CheckpointError, EcgRnnError
from ecg_rnn.records import CSV_SUFFIXES, EDF_SUFFIXES, looks_like_signal_table
from ecg_rnn.outputs import (META_SUFFIX, STAGING_SUFFIX, ScoredFile, output_name, read_meta, score_file,
                             staging_dir)

SUMMARY_NAME = "summary.csv"
ERRORS_NAME = "errors.csv"
RESERVED_NAMES = frozenset(Path(n).stem for n in (SUMMARY_NAME, ERRORS_NAME))  # a recording may not shadow them
LOCAL_SCHEDULER = "local"
LOOPBACK = "127.0.0.1"
CONNECT_TIMEOUT_S = 30
WORKER_WAIT_S = 60  # how long a run waits for the first worker to join the scheduler
TASK_TORCH_THREADS = 1  # one recording per core: processes scale; intra-op threads on one batch scale poorly
FREQUENT_V_PER_HOUR = 30.0  # >= 30 ventricular ectopic beats in an hour is "frequent" (Lown grade 2)
SUMMARY_DECIMALS = 4
SUMMARY_COLUMNS = ["record", "path", "duration_s", "fs", "leads", "lead", "beats", "flagged", "flagged_share",
                   "suggested_v", "suggested_s", "af_burden", "noise_share", "max_score", "triage_score",
                   "status", "error"]
INTEGER_COLUMNS = ["leads", "beats", "flagged", "suggested_v", "suggested_s"]  # empty for a failed recording
TEXT_COLUMNS = ["record", "path", "lead", "status", "error"]  # a record named 100 stays "100"
ERROR_COLUMNS = ["record", "path", "error"]


class ClusterError(EcgRnnError):
    """The Dask scheduler cannot be reached, or no worker joined it."""


@dataclass(frozen=True)
class BulkConfig:
    """How `score_many` scores: per-recording options, and where the work runs."""

    peaks: str = "detect"  # beat positions: detect, reference or auto
    lead: str | int | None = None
    fs: float | None = None  # for a CSV without a time column
    workers: int = 0  # processes (0: one per CPU core); with scheduler="local" the LocalCluster's workers
    scheduler: str | None = None  # None: a process pool; "local": a LocalCluster; "tcp://HOST:PORT": a cluster
    overwrite: bool = False  # score recordings again whose outputs exist
    progress: bool = True


@dataclass(frozen=True)
class RecordJob:
    """Everything a worker needs to score one recording (paths absolute: a worker's cwd is its own)."""

    path: str
    out_dir: str
    model_path: str
    model_digest: str
    peaks: str
    lead: str | int | None
    fs: float | None
    overwrite: bool
    threads: int | None  # torch threads of the worker process; None leaves the caller's setting


@dataclass(frozen=True)
class Outcome:
    path: str
    scored: ScoredFile | None = None
    error: str = ""


@dataclass
class BulkResult:
    scored: list[ScoredFile]
    skipped: list[Path]
    failed: list[tuple[Path, str]]
    summary: Path
    errors: Path
    recordings: int = 0  # rows of the triage table


def expand_inputs(inputs: list[str | os.PathLike]) -> list[Path]:
    """Record paths as given, with every folder replaced by the WFDB records, EDF/BDF and CSV files in it
    (text files only where they hold a signal table: not a downloaded database's checksum list)."""
    found: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            found += sorted(p.with_suffix("") for p in item.glob("*.hea"))
            found += sorted(p for suffix in EDF_SUFFIXES for p in item.glob(f"*{suffix}"))
            found += sorted(p for suffix in CSV_SUFFIXES for p in item.glob(f"*{suffix}") if looks_like_signal_table(p))
        else:
            found.append(item)
    return list(dict.fromkeys(found))


def is_done(path: str | os.PathLike, out_dir: Path) -> bool:
    """The recording's CSV (written last) and its meta file exist in `out_dir`."""
    name = output_name(path)
    return (out_dir / f"{name}.csv").exists() and (out_dir / f"{name}{META_SUFFIX}").exists()


def file_digest(path: str | os.PathLike) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


# ---------------------------------------------------------------------------------------------
# one recording, on whichever worker runs it

_detectors: dict[tuple[str, str], RecurrentAEDetector] = {}  # this process's detectors


def worker_detector(model_path: str, digest: str) -> RecurrentAEDetector:
    """The detector of this process, loaded once per model file and content. A worker whose copy of the
    model differs from the client's (storage that is not shared) refuses to score with it."""
    key = (model_path, digest)
    if key not in _detectors:
        detector = RecurrentAEDetector.load(model_path)  # a missing or damaged file: a clear CheckpointError
        if file_digest(model_path) != digest:
            raise CheckpointError(f"{model_path} on this worker differs from the client's copy; put the model "
                                  "on storage that every worker reads")
        _detectors[key] = detector
    return _detectors[key]


def score_recording(job: RecordJob) -> Outcome:
    """Score one recording into `job.out_dir`. A recording found done is not scored again: that is a
    retried task whose first run finished before its worker died."""
    out_dir = Path(job.out_dir)
    if not job.overwrite and is_done(job.path, out_dir):
        return Outcome(job.path, read_meta(out_dir, output_name(job.path)))
    try:
        detector = worker_detector(job.model_path, job.model_digest)
        if job.threads:
            import torch

            torch.set_num_threads(job.threads)
        return Outcome(job.path, score_file(detector, job.path, out_dir, job.peaks, job.lead, job.fs))
    except EcgRnnError as exc:
        return Outcome(job.path, error=str(exc))
    except ValueError as exc:  # an option the detector cannot use for this recording
        return Outcome(job.path, error=f"{Path(job.path).name}: {exc}")


# ---------------------------------------------------------------------------------------------
# many recordings


def score_many(paths: list[Path], model_path: str | os.PathLike, out_dir: str | os.PathLike,
               config: BulkConfig = BulkConfig()) -> BulkResult:
    """Score recordings into `out_dir`, skipping those already done unless `config.overwrite`; a bad
    recording is reported and the others go on. Writes OUT/errors.csv and OUT/summary.csv at the end,
    also when interrupted."""
    out_dir = Path(os.path.abspath(out_dir))
    out_dir.mkdir(parents=True, exist_ok=True)
    todo, skipped, refused = plan(paths, out_dir, config.overwrite)
    result = BulkResult(scored=[], skipped=skipped, failed=refused, summary=out_dir / SUMMARY_NAME,
                        errors=out_dir / ERRORS_NAME)
    try:
        if todo:
            _score_todo(todo, Path(model_path), out_dir, config, result, total=len(paths) - len(refused))
    finally:
        remove_stale_staging(out_dir)
        write_errors(result.failed, out_dir)
        result.recordings = len(write_summary(out_dir, result.failed))
    return result


def plan(paths: list[Path], out_dir: Path, overwrite: bool) -> tuple[list[Path], list[Path], list[tuple[Path, str]]]:
    """(to score, already done, refused): a recording is refused when its outputs would overwrite the
    triage table or another recording's outputs in this run (two inputs with the same name)."""
    owner: dict[str, Path] = {}
    todo, skipped, refused = [], [], []
    for path in paths:
        name = output_name(path)
        if name in RESERVED_NAMES or name in owner:
            clash = "the triage table" if name in RESERVED_NAMES else f"those of {owner[name]}"
            refused.append((path, f"{path}: its outputs would overwrite {clash} in {out_dir}; rename it or "
                                  "score it into another --out"))
            continue
        owner[name] = path
        (todo if overwrite or not is_done(path, out_dir) else skipped).append(path)
    return todo, skipped, refused


def _score_todo(todo: list[Path], model_path: Path, out_dir: Path, config: BulkConfig, result: BulkResult,
                total: int) -> None:
    model_path = Path(os.path.abspath(model_path))
    digest = file_digest(model_path) if model_path.is_file() else ""
    worker_detector(str(model_path), digest)  # a bad model file fails here, once, in one line
    workers = max(1, min(config.workers or os.cpu_count() or 1, len(todo)))
    inline = config.scheduler is None and workers == 1  # one process: same code, no pool start-up
    jobs = [RecordJob(path=os.path.abspath(p), out_dir=str(out_dir), model_path=str(model_path), model_digest=digest,
                      peaks=config.peaks, lead=config.lead, fs=config.fs, overwrite=config.overwrite,
                      threads=None if inline else TASK_TORCH_THREADS) for p in todo]
    given = {job.path: p for job, p in zip(jobs, todo)}
    if inline:
        outcomes = (_settled(partial(score_recording, job), job) for job in jobs)
    elif config.scheduler is None:
        outcomes = _on_process_pool(jobs, workers)
    else:
        outcomes = _on_dask(jobs, config.scheduler, workers)
    with tqdm(total=total, initial=total - len(todo), desc="scoring", unit="record", file=sys.stderr,
              disable=None if config.progress else True) as bar:
        for outcome in outcomes:
            if outcome.scored is not None:
                result.scored.append(outcome.scored)
            else:
                result.failed.append((given[outcome.path], outcome.error))
            bar.update(1)


def _settled(get: Callable[[], Outcome], job: RecordJob) -> Outcome:
    """The outcome of one task. An exception the task let through (its workers died, a disk is full)
    becomes that recording's failure, so the others go on; so does an output the client cannot see."""
    try:
        outcome = get()
    except Exception as exc:  # noqa: BLE001 -- reported for this recording in errors.csv
        first_line = (str(exc).strip().splitlines() or [""])[0]
        return Outcome(job.path, error=f"{Path(job.path).name}: {type(exc).__name__}: {first_line}")
    if outcome.scored is not None and not outcome.scored.csv.exists():
        return Outcome(job.path, error=f"{Path(job.path).name}: scored on a worker, but {outcome.scored.csv} is "
                                       "not visible here: --out must be storage that every worker shares")
    return outcome


def _on_process_pool(jobs: list[RecordJob], workers: int) -> Iterator[Outcome]:
    with ProcessPoolExecutor(max_workers=workers) as pool:
        futures = {pool.submit(score_recording, job): job for job in jobs}
        for future in as_completed(futures):
            yield _settled(future.result, futures[future])


def _on_dask(jobs: list[RecordJob], scheduler: str, workers: int) -> Iterator[Outcome]:
    """Tasks are impure (`pure=False`): each is scheduled as given, and Dask reruns a task whose worker
    died (up to distributed.scheduler.allowed-failures times) on another worker."""
    from distributed import as_completed as completed

    with dask_client(scheduler, workers) as client:
        futures = client.map(score_recording, jobs, pure=False)
        job_of = {future.key: job for future, job in zip(futures, jobs)}
        for future in completed(futures):
            yield _settled(future.result, job_of[future.key])


@contextmanager
def dask_client(scheduler: str, workers: int):
    """A Client of the cluster at `scheduler` ("tcp://HOST:PORT"), or of a LocalCluster of `workers`
    single-threaded processes on the loopback interface ("local")."""
    from distributed import Client, LocalCluster

    if scheduler == LOCAL_SCHEDULER:
        with (LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, host=LOOPBACK,
                           dashboard_address=None, silence_logs=logging.ERROR) as cluster,
              Client(cluster) as client):
            yield client
        return
    try:
        client = Client(scheduler, timeout=CONNECT_TIMEOUT_S)
    except (OSError, TimeoutError, ValueError) as exc:
        raise ClusterError(f"cannot reach the Dask scheduler at {scheduler} ({type(exc).__name__}: {exc}); start "
                           f"one with `dask scheduler`, or give --scheduler {LOCAL_SCHEDULER}") from None
    with client:
        try:
            client.wait_for_workers(1, timeout=WORKER_WAIT_S)
        except TimeoutError:
            raise ClusterError(f"no Dask worker joined the scheduler at {scheduler} within {WORKER_WAIT_S} s; "
                               f"start workers with `dask worker {scheduler}`") from None
        yield client


def remove_stale_staging(out_dir: Path) -> None:
    """Staging folders of recordings that are done: left by a worker killed while writing."""
    for staging in out_dir.glob(f".*{STAGING_SUFFIX}"):
        name = staging.name[1:].split(".", 1)[0]
        if staging.is_dir() and (out_dir / f"{name}.csv").exists():
            shutil.rmtree(staging, ignore_errors=True)


# ---------------------------------------------------------------------------------------------
# errors and triage table


def write_errors(failed: list[tuple[Path, str]], out_dir: Path) -> Path:
    rows = [{"record": output_name(p), "path": os.path.abspath(p), "error": message} for p, message in failed]
    return _write_csv(pd.DataFrame(rows, columns=ERROR_COLUMNS), out_dir / ERRORS_NAME)


def triage_score(done: ScoredFile) -> float:
    """(1 - noise share) x (flagged share of the clean beats + min(V beats per hour / 30, 1) + AF burden).

    Each term is 0..1, so 3 is the most urgent: a recording rises with the share of its clean beats the
    detector flags, with frequent ventricular ectopy (30 an hour and more counts fully), and with time in
    atrial fibrillation; a noisy recording sinks, since its figures are less trustworthy. A figure the
    per-beat table lacks (no quality, rhythm or suggested class column) adds nothing."""
    stats = done.stats
    hours = done.duration_s / 3600
    v_per_hour = (stats.get("suggested_v") or 0) / hours if hours > 0 else 0.0
    urgency = (stats["flagged_clean_share"] + min(v_per_hour / FREQUENT_V_PER_HOUR, 1.0)
               + (stats.get("af_burden") or 0.0))
    return urgency * (1.0 - (stats.get("noise_share") or 0.0))


def summary_table(out_dir: Path, failed: list[tuple[Path, str]] = ()) -> pd.DataFrame:
    """One row per recording scored into `out_dir` (from its meta file), plus one per recording of
    `failed` that has no outputs there; by triage score, highest first, failures last."""
    names = sorted(p.name[: -len(META_SUFFIX)] for p in out_dir.glob(f"*{META_SUFFIX}"))
    done = [read_meta(out_dir, n) for n in names if (out_dir / f"{n}.csv").exists()]
    rows = [_summary_row(d) for d in done]
    scored_names = {d.name for d in done}
    rows += [{"record": output_name(p), "path": os.path.abspath(p), "status": "failed", "error": message}
             for p, message in failed if output_name(p) not in scored_names]
    table = pd.DataFrame(rows, columns=SUMMARY_COLUMNS).astype({c: "Int64" for c in INTEGER_COLUMNS})
    table = table.sort_values(["triage_score", "record"], ascending=[False, True], na_position="last",
                              kind="stable")
    return table.round(SUMMARY_DECIMALS).reset_index(drop=True)


def _summary_row(done: ScoredFile) -> dict:
    stats = done.stats
    return {"record": done.name, "path": done.path, "duration_s": done.duration_s, "fs": done.fs,
            "leads": done.leads, "lead": done.lead, "beats": done.beats, "flagged": done.flagged,
            "flagged_share": stats["flagged_share"], "suggested_v": stats.get("suggested_v"),
            "suggested_s": stats.get("suggested_s"), "af_burden": stats.get("af_burden"),
            "noise_share": stats.get("noise_share"), "max_score": stats.get("max_score"),
            "triage_score": triage_score(done), "status": "ok", "error": ""}


def write_summary(out_dir: Path, failed: list[tuple[Path, str]] = ()) -> pd.DataFrame:
    table = summary_table(out_dir, failed)
    _write_csv(table, out_dir / SUMMARY_NAME)
    return table


def read_summary(out_dir: str | os.PathLike) -> pd.DataFrame:
    """OUT/summary.csv as written (unknown figures NaN, empty errors "")."""
    table = pd.read_csv(Path(out_dir) / SUMMARY_NAME, dtype={c: str for c in TEXT_COLUMNS})
    return table.assign(error=table["error"].fillna(""))


def _write_csv(frame: pd.DataFrame, path: Path) -> Path:
    with staging_dir(path.parent, path.stem) as staging:
        frame.to_csv(staging / path.name, index=False)
        os.replace(staging / path.name, path)
    return path
