"""Issue 6 §1: every hostile or broken recording of tests/hostile_corpus.py, through

(a) the library: `read_record` + `score_record` with the shipped default model;
(b) the CLI `python -m ecg_rnn score CASE --out DIR` in its own process: exit 0 with a CSV, or exit 2
    with exactly one stderr line and no traceback; nothing created or changed outside the out folder;
(c) the dashboard: the upload functions the app uses (`records.open_upload` + `dashboard.analyse`), and
    for a few cases the app itself (AppTest), which shows one specific error.

Each case ends in its specific error or a correct result (a case holding the same signal as another gives
exactly its beats and, to float tolerance, its scores); a CLI process that hangs is killed after
TIME_LIMIT_S; the cases refused for their size are refused before allocating (peak memory growth measured).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import hostile_corpus as hc
from ecg_rnn import dashboard as dash
from ecg_rnn.bulk import ERRORS_NAME, SUMMARY_NAME
from ecg_rnn.errors import EcgRnnError
from ecg_rnn.outputs import EVENTS_SUFFIX
from ecg_rnn.records import open_upload, read_record

ROOT = Path(__file__).resolve().parents[1]
TIME_LIMIT_S = 60.0  # a CLI process still running after this is killed (a hang, not a speed claim)
SMALL_MEMORY_BYTES = 64 << 20  # refused-for-size cases: peak allocation while reading (tracemalloc)
SMALL_RSS_KIB = 200 << 10  # refused-for-size cases: peak RSS growth of the CLI process


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("hostile")
    return root, hc.build_corpus(root)


def _score(det, record):
    from ecg_rnn.scoring import score_record

    return score_record(det, record)


def _check_result(case: hc.Case, record, scored, reference) -> list[str]:
    """What is wrong with an "ok" result (empty when it is correct)."""
    problems = []
    if case.check is not None and not case.check(record):
        problems.append(f"sanity check failed (fs {record.fs}, {record.sig_len} samples, lead {record.lead!r})")
    if len(scored.beats) < 3 or not np.all(np.isfinite(scored.score)):
        problems.append(f"{len(scored.beats)} beats, finite scores: {np.all(np.isfinite(scored.score))}")
    if case.same_as:
        problems += _compare(case, scored.beats.sample, scored.score,
                             None if reference is None else (reference.beats.sample, reference.score))
    return problems


CSV_SCORE_STEP = 1e-4  # the per-beat CSV rounds scores to 4 decimals: one step is the least it can show


def _compare(case: hc.Case, sample, score, reference: tuple | None, resolution: float = 0.0) -> list[str]:
    """Exactly the beats (R-peak samples) of the case holding the same signal, and its scores within the
    case's tolerance (or, for scores read back from a CSV, one rounding step where the case allows any
    difference at all)."""
    if reference is None:
        return [f"no result of {case.same_as!r} to compare with"]
    sample_ref, score_ref = (np.asarray(a) for a in reference)
    sample, score = np.asarray(sample), np.asarray(score)
    if not np.array_equal(sample, sample_ref):
        moved = len(np.setxor1d(sample, sample_ref))
        return [f"{len(sample)} beats where {case.same_as!r} has {len(sample_ref)}; {moved} R-peaks differ"]
    diff = float(np.max(np.abs(score - score_ref), initial=0.0))
    tolerance = case.score_atol if case.score_atol <= hc.SAME_SIGNAL_SCORE_ATOL else max(case.score_atol, resolution)
    if diff > tolerance * (1 + 1e-9):
        return [f"scores differ from {case.same_as!r}'s by up to {diff:.2e} (tolerance {tolerance:g})"]
    return []


def _error_problems(case: hc.Case, message: str, expected: str) -> list[str]:
    problems = []
    if case.expect == "ok":
        problems.append(f"expected a result, got error {message!r}")
    elif case.expect != "ok-or-error" and expected not in message:
        problems.append(f"expected an error containing {expected!r}, got {message!r}")
    if "\n" in message or "Traceback" in message:
        problems.append(f"error is not one line: {message!r}")
    return problems


# ---------------------------------------------------------------------------------------------
# (a) the library


def test_library_reads_and_scores_every_case(corpus, default_detector):
    root, cases = corpus
    results, failures = {}, []
    for case in cases:
        problems = []
        if case.small_memory:
            tracemalloc.start()
        try:
            record = read_record(case.path(root), fs=case.fs)
            scored = _score(default_detector, record)
        except EcgRnnError as exc:
            problems += _error_problems(case, str(exc), case.expect)
        except Exception as exc:  # noqa: BLE001 - the point: nothing but EcgRnnError may escape
            problems.append(f"crashed with {type(exc).__name__}: {exc}")
        else:
            results[case.name] = scored
            if case.expect not in ("ok", "ok-or-error"):
                problems.append(f"expected an error containing {case.expect!r}, got a result")
            else:
                problems += _check_result(case, record, scored, results.get(case.same_as))
        finally:
            if case.small_memory:
                peak = tracemalloc.get_traced_memory()[1]
                tracemalloc.stop()
                if peak > SMALL_MEMORY_BYTES:
                    problems.append(f"allocated {peak >> 20} MiB before refusing")
        failures += [f"{case.name}: {p}" for p in problems]
    assert not failures, "\n".join(failures)


# ---------------------------------------------------------------------------------------------
# (b) the CLI, one process per case


def _cli_env(tmp: Path) -> dict:
    env = dict(os.environ, TMPDIR=str(tmp), OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONWARNINGS="ignore",
               CLI_LIMIT_S=str(TIME_LIMIT_S))
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _cli_job(root: Path, case: hc.Case, work: Path) -> dict:
    out = work / "out" / case.name
    logs = work / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    argv = ["score", str(case.path(root)), "--out", str(out)] + (["--fs", str(case.fs)] if case.fs else [])
    return {"argv": argv, "cwd": str(work / "cwd"), "stdout": str(logs / f"{case.name}.out"),
            "stderr": str(logs / f"{case.name}.err"), "out": str(out)}


RUN_TABLES = (SUMMARY_NAME, ERRORS_NAME)


def _cli_problems(case: hc.Case, job: dict, rc: int, seconds: float, rss_kib: int,
                  reference: pd.DataFrame | None) -> list[str]:
    stdout = Path(job["stdout"]).read_text(errors="replace")
    stderr = Path(job["stderr"]).read_text(errors="replace")
    out = Path(job["out"])
    # every run writes the triage table and the error list (ecg_rnn.bulk); the rest is the recording's own
    made = sorted(p.name for p in out.iterdir() if p.name not in RUN_TABLES) if out.is_dir() else []
    problems = []
    if rc == -9:
        problems.append(f"killed after {seconds:.0f} s (limit {TIME_LIMIT_S:.0f} s)")
    if "Traceback" in stderr + stdout:
        problems.append(f"traceback: {stderr[-600:]}")
    if case.small_memory and rss_kib > SMALL_RSS_KIB:
        problems.append(f"peak RSS grew by {rss_kib >> 10} MiB before refusing")
    if rc == 0:
        if case.expect not in ("ok", "ok-or-error"):
            problems.append(f"exit 0 where an error containing {case.expect!r} was expected")
        csvs = [n for n in made if n.endswith(".csv") and not n.endswith(EVENTS_SUFFIX)]
        if len(csvs) != 1:
            problems.append(f"expected one CSV in the out folder, found {made}")
        else:
            table = pd.read_csv(out / csvs[0])
            if len(table) < 3 or not np.all(np.isfinite(table["score"])):
                problems.append(f"CSV has {len(table)} rows")
            if case.same_as:
                problems += _compare(case, table["sample"], table["score"],
                                     None if reference is None else (reference["sample"], reference["score"]),
                                     resolution=CSV_SCORE_STEP)
    elif rc == 2:
        lines = stderr.splitlines()
        if len(lines) != 1 or not lines[0].startswith("ecg-rnn score: error: "):
            problems.append(f"stderr is not exactly one error line: {stderr[-600:]!r}")
        else:
            problems += _error_problems(case, lines[0], case.expect)
        if made:
            problems.append(f"files written despite the error: {made}")
    else:
        problems.append(f"exit status {rc}; stderr {stderr[-600:]!r}")
    return problems


def _scores_table(job: dict, rc: int) -> pd.DataFrame | None:
    """The CSV a successful `score` wrote (None after an error)."""
    csv = Path(job["out"]) / "rec.csv"
    return pd.read_csv(csv) if rc == 0 and csv.is_file() else None


def test_cli_scores_or_refuses_every_case(corpus, tmp_path):
    root, cases = corpus
    work = tmp_path / "cli"
    (work / "cwd").mkdir(parents=True)
    (work / "tmp").mkdir()
    before = hc.snapshot(root)
    jobs = [_cli_job(root, c, work) for c in cases]
    (work / "jobs.json").write_text(json.dumps(jobs))
    proc = subprocess.run([sys.executable, str(Path(__file__).with_name("cli_forkserver.py")),
                           str(work / "jobs.json"), str(work / "results.json")],
                          env=_cli_env(work / "tmp"), cwd=work / "cwd", capture_output=True, text=True,
                          timeout=TIME_LIMIT_S * len(jobs) + 60)  # each case is killed at TIME_LIMIT_S
    assert proc.returncode == 0, proc.stderr[-2000:]
    results = json.loads((work / "results.json").read_text())
    failures, tables = [], {}
    for case, job, res in zip(cases, jobs, results):
        tables[case.name] = _scores_table(job, res["rc"])
        problems = _cli_problems(case, job, res["rc"], res["seconds"], res["rss_growth_kib"],
                                 tables.get(case.same_as))
        failures += [f"{case.name}: {p}" for p in problems]
    # nothing outside the out folders changed: the corpus (cases + canary), the cwd, the temp folder
    assert hc.snapshot(root) == before, "the corpus or the canary folder changed"
    assert not list((work / "cwd").iterdir()), list((work / "cwd").iterdir())
    assert not list((work / "tmp").iterdir()), f"left in TMPDIR: {list((work / 'tmp').iterdir())}"
    assert not failures, "\n".join(failures)


def test_cli_real_processes(corpus, tmp_path):
    """The fork server above matches real `python -m ecg_rnn score` processes (results and an attack)."""
    root, cases = corpus
    by_name = {c.name: c for c in cases}
    work = tmp_path / "cli"
    (work / "cwd").mkdir(parents=True)
    (work / "tmp").mkdir()
    before = hc.snapshot(root)
    chosen = [by_name["reference"], by_name["volts"], by_name["dotdot"]]
    jobs = [_cli_job(root, c, work) for c in chosen]
    procs = []
    for job in jobs:
        with open(job["stdout"], "w") as so, open(job["stderr"], "w") as se:
            procs.append((subprocess.Popen([sys.executable, "-m", "ecg_rnn", *job["argv"]], cwd=job["cwd"],
                                           env=_cli_env(work / "tmp"), stdout=so, stderr=se), time.monotonic()))
    failures, tables = [], {}
    for case, job, (proc, t0) in zip(chosen, jobs, procs):
        try:
            rc = proc.wait(timeout=TIME_LIMIT_S * 2)
        except subprocess.TimeoutExpired:
            proc.kill()
            rc = -9
        tables[case.name] = _scores_table(job, rc)
        failures += [f"{case.name}: {p}" for p in
                     _cli_problems(case, job, rc, time.monotonic() - t0, 0, tables.get(case.same_as))]
    assert hc.snapshot(root) == before
    assert not list((work / "cwd").iterdir()) and not list((work / "tmp").iterdir())
    assert not failures, "\n".join(failures)


# ---------------------------------------------------------------------------------------------
# (c) the dashboard: the upload path the app uses


def test_dashboard_upload_path_for_every_case(corpus, default_detector, tmp_path, monkeypatch):
    root, cases = corpus
    private_tmp = tmp_path / "tmp"
    private_tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(private_tmp))
    before = hc.snapshot(root)
    results, failures = {}, []
    for case in cases:
        if case.upload is None:
            continue
        problems = []
        try:
            source, _info = open_upload(case.uploaded(root), fs=case.fs)
            a = dash.analyse(source, source.load().digest, default_detector)
        except EcgRnnError as exc:
            problems += _error_problems(case, str(exc), case.expected_upload)
        except Exception as exc:  # noqa: BLE001
            problems.append(f"crashed with {type(exc).__name__}: {exc}")
        else:
            results[case.name] = a
            if case.expect not in ("ok", "ok-or-error"):
                problems.append(f"expected an error containing {case.expected_upload!r}, got a result")
            elif len(a) < 3 or not np.all(np.isfinite(a.score)):
                problems.append(f"{len(a)} beats")
            elif case.same_as:
                ref = results.get(case.same_as)
                problems += _compare(case, a.sample, a.score, None if ref is None else (ref.sample, ref.score))
            if not source.origin.startswith("upload:"):
                problems.append(f"the record keeps a temporary path: {source.origin}")
        left = list(private_tmp.iterdir())
        if left:
            problems.append(f"upload folder left behind: {left}")
        failures += [f"{case.name}: {p}" for p in problems]
    assert hc.snapshot(root) == before
    assert not failures, "\n".join(failures)


APP_CASES = ["dotdot", "zip_symlink", "zip_bomb", "csv_million_columns", "fs_1hz", "flat", "volts", "white_noise"]


def test_app_shows_a_specific_error_or_a_result(corpus, tmp_path, monkeypatch):
    from test_app import _app, _text

    root, cases = corpus
    monkeypatch.setenv("ECG_RNN_REVIEWS_DB", str(tmp_path / "reviews.sqlite"))
    failures = []
    for case in [c for c in cases if c.name in APP_CASES]:
        at = _app(source="Upload")
        at.file_uploader(key="upload").set_value(
            [(f.name, f.data, "application/octet-stream") for f in case.uploaded(root)])
        at.run()
        errors = [_text(e) for e in at.error]
        if at.exception:
            failures.append(f"{case.name}: exception {[e.message for e in at.exception]}")
        elif case.expect == "ok" or (case.expect == "ok-or-error" and not errors):
            if errors or not any(m.label == "Beats" for m in at.metric):
                failures.append(f"{case.name}: expected the analysis, got errors {errors}")
        elif len(errors) != 1 or (case.expect != "ok-or-error" and case.expected_upload not in errors[0]) \
                or "unexpectedly" in errors[0] or "Traceback" in errors[0]:
            failures.append(f"{case.name}: expected one error containing {case.expected_upload!r}, got {errors}")
    assert not failures, "\n".join(failures)
