"""One epoch of `fit_autoencoder` (two optimisation steps) on real normal beats of record 100. As a script
it is one rank of a gloo process group (test_distributed.py sets RANK, WORLD_SIZE, MASTER_ADDR and
MASTER_PORT as torchrun would) and writes its parameters before and after training, and its history, to
OUT_DIR/rank<r>.npz and OUT_DIR/rank<r>.json; the test runs `train_one_epoch` in its own process for the
single-process reference.

Usage: python tests/ddp_step.py OUT_DIR BATCH_SIZE
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch

N_TRAIN = 64  # two steps of a 32-beat global batch: the second step also checks the optimiser state
N_VAL = 32
MODEL_SEED = 0


def real_inputs() -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Training and held-out inputs from the first normal beats of shipped record 100."""
    from ecg_rnn.beats import beats_from_record
    from ecg_rnn.records import read_record
    from local_data import SAMPLE_DIR

    beats = beats_from_record(read_record(SAMPLE_DIR / "100"), peaks="reference")
    normal = np.flatnonzero(beats.aami == "N")[:N_TRAIN + N_VAL]
    waves = beats.waves[normal]
    template = np.broadcast_to(np.median(beats.waves, axis=0), waves.shape).astype(np.float32)
    rr = beats.rr[normal, :3].astype(np.float32)  # the beats' own RR intervals (s): real rhythm inputs
    arrays = {"wave": waves, "template": template, "rr": rr}
    return ({k: v[:N_TRAIN] for k, v in arrays.items()}, {k: v[N_TRAIN:] for k, v in arrays.items()})


def train_one_epoch(batch_size: int) -> tuple[dict[str, np.ndarray], list[dict]]:
    """Parameters ("initial.<name>" before, "<name>" after) and the history of one epoch."""
    from ecg_rnn.model import ModelConfig, RecurrentAutoencoder
    from ecg_rnn.train import TrainConfig, fit_autoencoder

    train, val = real_inputs()
    torch.manual_seed(MODEL_SEED)  # the same initial weights in every process (DDP also broadcasts rank 0's)
    model = RecurrentAutoencoder(ModelConfig(hidden_size=8, latent_size=4))
    initial = {f"initial.{k}": v.detach().clone().numpy() for k, v in model.state_dict().items()}
    config = TrainConfig(epochs=1, batch_size=batch_size, device="cpu", threads=1, time_budget_s=None)
    history = fit_autoencoder(model, train, val, config, progress=False, log=lambda message: None)
    return {**initial, **{k: v.detach().numpy() for k, v in model.state_dict().items()}}, history


def main() -> None:
    from ecg_rnn import distributed

    out, batch_size = Path(sys.argv[1]), int(sys.argv[2])
    params, history = train_one_epoch(batch_size)
    rank = distributed.rank()
    np.savez(out / f"rank{rank}.npz", **params)
    (out / f"rank{rank}.json").write_text(json.dumps(history))
    distributed.teardown()


if __name__ == "__main__":
    main()
