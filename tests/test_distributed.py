"""torchrun with 2 CPU processes (gloo, DistributedDataParallel) trains as well as one process."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path


TINY = ["--epochs", "2", "--max-beats", "3000", "--hidden", "16", "--latent", "4", "--quiet"]


def _train(launcher: list[str], runs: Path, name: str) -> tuple[dict, str]:
    done = subprocess.run([*launcher, "-m", "ecg_rnn", "train", "--name", name, "--runs-dir", str(runs), *TINY],
                          capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads((runs / name / "metrics.json").read_text()), done.stderr


def test_torchrun_two_processes_match_one(shared_mitdb, tmp_path):
    torchrun = Path(sys.executable).with_name("torchrun")
    if not torchrun.exists():
        torchrun = shutil.which("torchrun")
    single, _ = _train([sys.executable], tmp_path, "single")
    ddp, log = _train([str(torchrun), "--standalone", "--nproc-per-node", "2"], tmp_path, "ddp")
    assert log.count("epoch   1/2") == 1  # only rank 0 logs
    assert sorted(p.name for p in (tmp_path / "ddp").glob("*.safetensors")) == ["model.safetensors"]
    assert not list((tmp_path / "ddp").glob("*.tmp"))
    # each rank saw half of every epoch's beats, yet the result is as good
    assert abs(ddp["metrics"]["roc_auc"] - single["metrics"]["roc_auc"]) < 0.03
    assert ddp["metrics"]["roc_auc"] > 0.9
