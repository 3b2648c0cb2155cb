"""Training loop: Adam on reconstruction error, early stopping on held-out normal beats, resume.

`fit_autoencoder` trains a `RecurrentAutoencoder` on arrays; `run_training` is what `ecg-rnn train`
(and `make train`) runs: the default detector on MIT-BIH DS1 normal beats, evaluated on DS2, written
to `runs/<name>/` with metrics and plots.
"""

from __future__ import annotations

import math
import os
import sys
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ecg_rnn import distributed
from ecg_rnn.model import RecurrentAutoencoder

RESUME_FILE = "training_state.pt"
INFERENCE_BATCH = 2048  # beats per forward pass when scoring (bounded memory, near-peak throughput)
MIN_IMPROVEMENT = 1e-6  # a held-out loss must drop by more than this to count as better


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 20
    batch_size: int = 128
    lr: float = 3e-3
    weight_decay: float = 0.0
    patience: int = 3  # epochs without a better held-out loss before stopping
    seed: int = 0
    val_fraction: float = 0.3  # of the training records held out (normals) for early stopping + threshold
    device: str = "auto"  # auto (CUDA when available) | cpu | cuda
    max_train_beats: int | None = None  # beats drawn per epoch from the training pool (None: all)
    threads: int = 1  # torch CPU threads (small recurrent nets gain little from more; 1 is robust on shared CPUs)
    time_budget_s: float | None = None  # stop after the epoch that passes this wall time (`ecg-rnn train` sets it)
    grad_clip: float = 1.0

    def to_dict(self) -> dict:
        return asdict(self)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("device cuda requested but CUDA is not available")
    return torch.device(name)


@contextmanager
def private_torch_state(seed: int, threads: int | None):
    """Seed torch (weights, dropout) and set its CPU threads for the block only: the caller's global
    random state and thread count are as it left them afterwards."""
    previous_threads = torch.get_num_threads()
    cuda = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=cuda):
        torch.manual_seed(seed)
        if threads:
            torch.set_num_threads(threads)
        try:
            yield
        finally:
            torch.set_num_threads(previous_threads)


def _tensors(inputs: dict[str, np.ndarray], device) -> list[torch.Tensor]:
    return [torch.as_tensor(inputs[k], dtype=torch.float32, device=device) for k in ("wave", "template", "rr")]


@torch.no_grad()
def batch_errors(model: RecurrentAutoencoder, inputs: dict[str, np.ndarray], device=None,
                 batch_size: int = INFERENCE_BATCH) -> np.ndarray:
    """Per-beat mean squared reconstruction error."""
    device = device or next(model.parameters()).device
    model.eval()
    wave, template, rr = _tensors(inputs, device)
    out = []
    for i in range(0, len(wave), batch_size):
        recon, _ = model(wave[i:i + batch_size], template[i:i + batch_size], rr[i:i + batch_size])
        out.append(((recon - wave[i:i + batch_size]) ** 2).mean(dim=1).cpu().numpy())
    return np.concatenate(out) if out else np.zeros(0, dtype=np.float32)


def fit_autoencoder(model: RecurrentAutoencoder, train: dict[str, np.ndarray], val: dict[str, np.ndarray],
                    config: TrainConfig, run_dir: Path | None = None, resume: bool = False,
                    progress: bool = True, log=None) -> list[dict]:
    """Train in place; the model ends with its best (lowest held-out loss) weights. Returns the history.

    With run_dir, the training state is saved after every epoch (weights-only torch file, loaded with
    weights_only=True) and `resume` continues from it.
    """
    with private_torch_state(config.seed, config.threads):
        return _train_epochs(model, train, val, config, run_dir, resume, progress, log)


def _train_epochs(model, train, val, config: TrainConfig, run_dir, resume, progress, log) -> list[dict]:
    device = resolve_device(config.device)
    distributed.setup(device)  # under torchrun: join the process group; otherwise nothing
    device = distributed.local_device(device)
    main = distributed.is_main()  # only rank 0 logs and writes
    log = (log or (lambda msg: print(msg, file=sys.stderr))) if main else (lambda msg: None)
    model.to(device)
    net = distributed.wrap(model, device)  # DistributedDataParallel under torchrun
    opt = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(config.epochs, 1), eta_min=config.lr / 10)
    history: list[dict] = []
    best_loss, best_state, start_epoch, stale = math.inf, None, 0, 0
    state_path = Path(run_dir) / RESUME_FILE if run_dir else None
    if resume and state_path and state_path.exists():
        state = torch.load(state_path, map_location=device, weights_only=True)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        best_state = state["best_model"]
        best_loss, start_epoch, stale = float(state["best_loss"]), int(state["epoch"]), int(state["stale"])
        history = list(state["history"])
        torch.set_rng_state(state["rng"].cpu())
        log(f"resumed from {state_path} at epoch {start_epoch} (best held-out loss {best_loss:.5f})")
    elif resume:
        log(f"nothing to resume in {run_dir}; starting fresh")
    wave, template, rr = _tensors(train, device)
    n = len(wave)
    started = time.monotonic()
    for epoch in range(start_epoch, config.epochs):
        if stale >= config.patience:
            break
        t0 = time.monotonic()
        model.train()
        # each epoch draws its own seeded subset of the pool (all of it when max_train_beats is None)
        order = torch.randperm(n, generator=torch.Generator().manual_seed(config.seed * 1000 + epoch))
        if config.max_train_beats:
            order = order[:config.max_train_beats]
        order = distributed.shard(order.to(device), epoch)
        total, count = 0.0, 0
        bar = tqdm(range(0, len(order), config.batch_size), desc=f"epoch {epoch + 1}/{config.epochs}",
                   unit="batch", disable=not (progress and main), leave=False, file=sys.stderr)
        for i in bar:
            idx = order[i:i + config.batch_size]
            recon, _ = net(wave[idx], template[idx], rr[idx])
            loss = ((recon - wave[idx]) ** 2).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if config.grad_clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
            opt.step()
            total += loss.item() * len(idx)
            count += len(idx)
            if (i // config.batch_size) % 20 == 0:
                bar.set_postfix(loss=f"{total / max(count, 1):.4f}")
        sched.step()
        total, count = distributed.sum_across(total, count)
        train_loss = total / max(count, 1)
        val_loss = float(batch_errors(model, val, device).mean()) if len(val["wave"]) else train_loss
        improved = val_loss < best_loss - MIN_IMPROVEMENT
        if improved:
            best_loss, stale = val_loss, 0
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        else:
            stale += 1
        seconds = time.monotonic() - t0
        history.append({"epoch": epoch + 1, "train_loss": train_loss, "val_loss": val_loss,
                        "lr": opt.param_groups[0]["lr"], "seconds": round(seconds, 2)})
        log(f"epoch {epoch + 1:3d}/{config.epochs}  train {train_loss:.5f}  held-out {val_loss:.5f}"
            f"{'  *best' if improved else ''}  ({seconds:.1f} s)")
        if state_path and main:
            state_path.parent.mkdir(parents=True, exist_ok=True)
            tmp = state_path.with_suffix(".tmp")
            torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(),
                        "scheduler": sched.state_dict(), "best_model": best_state, "best_loss": best_loss,
                        "epoch": epoch + 1, "stale": stale, "history": history,
                        "rng": torch.get_rng_state()}, tmp)
            os.replace(tmp, state_path)
        over_budget = bool(config.time_budget_s and time.monotonic() - started > config.time_budget_s)
        if distributed.sum_across(float(over_budget))[0]:  # every rank stops after the same epoch
            log(f"time budget of {config.time_budget_s:.0f} s spent; stopping after epoch {epoch + 1}")
            break
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    return history
