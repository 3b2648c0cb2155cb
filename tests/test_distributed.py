"""Data-parallel training (ecg_rnn.distributed): two gloo processes on the loopback interface take the same
optimisation steps as one process on the same global batches, and `torchrun -m ecg_rnn train` has rank 0
alone log and write.

The first test is what fails when gradients are not averaged across ranks: each rank would then step on
its own half batch, and after Adam's first step (a step of about lr per parameter, signed by the gradient)
the ranks' parameters would differ from each other and from the single-process step by up to 2 * lr.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

STEP_SCRIPT = Path(__file__).with_name("ddp_step.py")
WORLD_SIZE = 2
RANK_BATCH = 16  # each rank's batch; the single process takes the 32-beat global batch
TIMEOUT_S = 180  # bounds a hung rendezvous or all-reduce
PARAM_ATOL = 1e-6  # float32 rounding of a 32-beat mean taken as two 16-beat means (measured 6e-8)
LOSS_RTOL = 1e-6


def _free_loopback_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR",
                                                           "MASTER_PORT")}
    return {**env, "OMP_NUM_THREADS": "1", **extra}


def _wait_all(procs: list[subprocess.Popen]) -> list[str]:
    """Wait for every process (killing all of them past TIMEOUT_S); return their stderr tails."""
    errors = []
    try:
        for proc in procs:
            _, err = proc.communicate(timeout=TIMEOUT_S)
            errors.append(err[-2000:])
    except subprocess.TimeoutExpired:
        for proc in procs:
            proc.kill()
        pytest.fail(f"the training processes did not finish within {TIMEOUT_S} s")
    return errors


def _result(folder: Path, rank: int) -> tuple[dict[str, np.ndarray], list[dict]]:
    with np.load(folder / f"rank{rank}.npz") as params:
        arrays = dict(params)
    return arrays, json.loads((folder / f"rank{rank}.json").read_text())


def test_two_gloo_ranks_step_like_one_process_on_the_global_batch(tmp_path):
    from ddp_step import train_one_epoch

    ddp = tmp_path / "ddp"
    ddp.mkdir()
    group = {"WORLD_SIZE": str(WORLD_SIZE), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_loopback_port()),
             "GLOO_SOCKET_IFNAME": "lo"}
    launch = dict(stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    procs = [subprocess.Popen([sys.executable, str(STEP_SCRIPT), str(ddp), str(RANK_BATCH)],
                              env=_env(**group, RANK=str(r), LOCAL_RANK=str(r)), **launch) for r in range(WORLD_SIZE)]
    try:  # the single-process reference, here while the ranks run
        one, history_one = train_one_epoch(WORLD_SIZE * RANK_BATCH)
    finally:
        errors = _wait_all(procs)
    assert [p.returncode for p in procs] == [0] * WORLD_SIZE, errors

    (rank0, history0), (rank1, history1) = _result(ddp, 0), _result(ddp, 1)
    trained = [k for k in one if not k.startswith("initial.")]
    assert trained and set(rank0) == set(rank1) == set(one)
    for name in trained:
        np.testing.assert_array_equal(rank0[name], rank1[name], err_msg=f"{name}: the ranks diverged")
        np.testing.assert_allclose(rank0[name], one[name], rtol=0, atol=PARAM_ATOL,
                                   err_msg=f"{name}: two ranks did not step like one process on the global batch")
    # the steps moved the weights far beyond the tolerance, so equal weights are not equal by standing still
    moved = max(np.abs(one[k] - one[f"initial.{k}"]).max() for k in trained)
    assert moved > 1000 * PARAM_ATOL
    assert len(history0) == len(history1) == len(history_one) == 1
    for key in ("train_loss", "val_loss"):  # the training loss is summed over both ranks' beats
        assert history0[0][key] == history1[0][key], key
        assert history0[0][key] == pytest.approx(history_one[0][key], rel=LOSS_RTOL), key


TINY = ["--epochs", "1", "--max-beats", "2000", "--hidden", "8", "--latent", "4", "--quiet"]


@pytest.mark.slow
def test_torchrun_train_logs_and_writes_on_rank_zero_only(shared_mitdb, tmp_path):
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node",
                           str(WORLD_SIZE), "-m", "ecg_rnn", "train", "--name", "ddp", "--runs-dir", str(tmp_path),
                           *TINY], capture_output=True, text=True, timeout=600,
                          env=_env(MITDB_DIR=str(shared_mitdb), GLOO_SOCKET_IFNAME="lo"))
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stderr.count("epoch   1/1") == 1  # only rank 0 logs
    assert sorted(p.name for p in (tmp_path / "ddp").glob("*.safetensors")) == ["model.safetensors"]
    assert not list((tmp_path / "ddp").glob("*.tmp"))
    metrics = json.loads((tmp_path / "ddp" / "metrics.json").read_text())
    assert metrics["n_test_beats"] > 40_000 and len(metrics["history"]) == 1
