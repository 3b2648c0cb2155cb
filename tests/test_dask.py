"""Scoring on Dask. A LocalCluster of two workers writes what a local run writes. On a cluster started
with the dask CLI from the project's environment (loopback only), an interrupted run resumes, and a
worker killed with SIGKILL mid-run loses no recording: every recording is scored exactly once, with the
flags of a local run, and the triage table has one row per recording."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from ecg_rnn.bulk import BulkConfig, expand_inputs, read_summary, score_many
from ecg_rnn.paths import default_model_path
from local_data import SAMPLE_DIR
from test_bulk_score import write_excerpts

pytest.importorskip("distributed")

RECORDINGS = 8
SECONDS = 180.0
HOST = "127.0.0.1"
DASK = Path(sys.executable).with_name("dask")  # the dask CLI of the environment running the tests
START_S = 180  # bounds a scheduler or worker start, and a wait for the first outputs
RUN_S = 300  # bounds one `ecg-rnn score` run
POLL_S = 0.05


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("recordings")
    write_excerpts(folder, SAMPLE_DIR, RECORDINGS, SECONDS)
    return folder


@pytest.fixture(scope="module")
def local_run(folder, tmp_path_factory) -> Path:
    """The reference: the same folder scored in this process, no pool, no Dask."""
    out = tmp_path_factory.mktemp("local")
    result = score_many(expand_inputs([folder]), default_model_path(), out, BulkConfig(workers=1, progress=False))
    assert len(result.scored) == RECORDINGS and not result.failed
    return out


def _assert_same_outputs(out: Path, reference: Path, folder: Path) -> None:
    """Every recording has its CSV, equal to the local run's (flags included), one summary row each, and no
    staging folder is left behind."""
    names = sorted(p.stem for p in folder.glob("*.hea"))
    assert len(names) == RECORDINGS
    assert sorted(p.name.split(".")[0] for p in out.glob("*.meta.json")) == names
    for name in names:
        pd.testing.assert_frame_equal(pd.read_csv(out / f"{name}.csv"), pd.read_csv(reference / f"{name}.csv"))
        assert (out / f"{name}.ecgrnn").read_bytes() == (reference / f"{name}.ecgrnn").read_bytes()
    summary = read_summary(out)
    assert sorted(summary["record"]) == names and (summary["status"] == "ok").all()
    pd.testing.assert_frame_equal(summary, read_summary(reference))
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]


def test_local_cluster_with_two_workers_writes_what_a_local_run_writes(folder, local_run, tmp_path):
    out = tmp_path / "out"
    result = score_many(expand_inputs([folder]), default_model_path(), out,
                        BulkConfig(scheduler="local", workers=2, progress=False))
    assert len(result.scored) == RECORDINGS and not result.failed
    assert sum(r.flagged for r in result.scored) > 0  # the comparison below covers flags, not only zeros
    _assert_same_outputs(out, local_run, folder)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def _start(args: list[str], log: Path, cwd: Path) -> subprocess.Popen:
    with open(log, "w") as f:
        return subprocess.Popen(args, stdout=f, stderr=subprocess.STDOUT, cwd=cwd)


def _wait_for(condition, what: str, procs: list[subprocess.Popen], limit_s: float = START_S) -> None:
    deadline = time.monotonic() + limit_s
    while not condition():
        if any(p.poll() is not None for p in procs):
            pytest.fail(f"a process exited while waiting for {what}")
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {limit_s:.0f} s waiting for {what}")
        time.sleep(POLL_S)


def _done(out: Path) -> int:
    return len(list(out.glob("r*.meta.json")))


def _stop(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        if p.poll() is None:
            p.kill()
    for p in procs:
        p.wait(timeout=30)


def _kill_while_scoring(address: str, name: str, worker: subprocess.Popen, procs: list[subprocess.Popen]) -> None:
    """SIGKILL the worker `name` while it is scoring a recording, as the scheduler sees it."""
    from distributed import Client

    with Client(address, timeout=START_S) as watcher:
        found = watcher.scheduler_info(n_workers=-1)["workers"]
        addr = next(a for a, info in found.items() if info["name"] == name)
        _wait_for(lambda: watcher.processing(workers=[addr])[addr], f"{name} to score a recording", procs)
        os.kill(worker.pid, signal.SIGKILL)


def test_cluster_run_survives_a_killed_worker_and_an_interrupted_client(folder, local_run, tmp_path):
    address = f"tcp://{HOST}:{_free_port()}"
    logs = {name: tmp_path / f"{name}.log" for name in ("scheduler", "w1", "w2", "first", "second")}
    out = tmp_path / "out"
    score = [sys.executable, "-m", "ecg_rnn", "score", str(folder), "--out", str(out), "--scheduler", address,
             "--model", str(default_model_path())]
    cluster: list[subprocess.Popen] = []
    clients: list[subprocess.Popen] = []
    try:
        cluster.append(_start([str(DASK), "scheduler", "--host", HOST, "--port", address.rsplit(":", 1)[1],
                             "--no-dashboard", "--idle-timeout", "600"], logs["scheduler"], tmp_path))
        # workers run in a folder of their own: the jobs must carry absolute paths
        workers = {name: _start([str(DASK), "worker", address, "--name", name, "--nthreads", "1", "--no-nanny",
                                 "--host", HOST, "--no-dashboard", "--death-timeout", "60"], logs[name], tmp_path)
                   for name in ("w1", "w2")}
        cluster += workers.values()
        _wait_for(lambda: all("Registered to" in logs[n].read_text() for n in workers), "two workers", cluster)

        clients.append(first := _start(score, logs["first"], tmp_path))  # interrupted after its first recording
        _wait_for(lambda: _done(out) > 0, "the first recording", [first, *cluster])
        first.kill()
        first.wait(timeout=30)
        assert _done(out) < RECORDINGS, "the interrupted run had already finished; use more recordings"

        clients.append(second := _start(score, logs["second"], tmp_path))  # resumes; w1 dies under it
        _kill_while_scoring(address, "w1", workers["w1"], [second, *cluster])
        assert second.wait(timeout=RUN_S) == 0, logs["second"].read_text()[-3000:]
    finally:
        _stop(cluster + clients)
    text = logs["second"].read_text()
    skipped = int(re.search(r"skipped (\d+) recording", text).group(1))
    scored = re.findall(r"^(r\d+_\d+): \d+ beats", text, re.MULTILINE)
    assert 1 <= skipped < RECORDINGS  # what the interrupted run finished is not scored again
    assert len(scored) == len(set(scored)) == RECORDINGS - skipped  # the rest once each, the lost task too
    assert "Remove worker" in logs["scheduler"].read_text() and "name: w1" in logs["scheduler"].read_text()
    _assert_same_outputs(out, local_run, folder)
