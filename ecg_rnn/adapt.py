"""Patient adaptation: unsupervised fine-tuning of the autoencoder on the recording it is scoring.

A model trained on other patients reconstructs this patient's normal beats only as well as they
resemble the training patients'. Before scoring, a copy of the model takes a few gradient steps on the
recording's own *typical* beats (the share of its beats nearest the record's template beat): it learns
this patient's normal variation (shape changes with rate, breathing, electrode position), which a
fixed template cannot. Ectopic beats are a minority far from the template, so they stay out of the
adaptation set and keep their large reconstruction error. No labels are used; the cost is bounded by
`steps` (a fixed number of mini-batches, however long the recording).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch

from ecg_rnn.model import RecurrentAutoencoder
from ecg_rnn.train import private_torch_state


# The fine-tuning runs on one CPU thread: float sums in the backward pass depend on the thread count, so
# a recording then adapts to the same weights in any process (a pool worker, a Dask worker, the CLI);
# a few small steps gain nothing from more threads.
ADAPT_THREADS = 1


@dataclass(frozen=True)
class AdaptConfig:
    steps: int = 0  # gradient steps per recording (0: no adaptation)
    batch_size: int = 64  # beats per step, drawn from the typical beats
    lr: float = 1e-3  # Adam learning rate of the fine-tuning
    typical_share: float = 0.5  # the share of the recording's beats nearest its template that adapt the model
    seed: int = 0

    def __post_init__(self):
        if self.steps < 0 or self.batch_size < 1 or self.lr <= 0:
            raise ValueError("adaptation needs steps >= 0, batch_size >= 1 and lr > 0")
        if not 0.0 < self.typical_share <= 1.0:
            raise ValueError("typical_share must be in (0, 1]")

    def to_dict(self) -> dict:
        return asdict(self)


def typical_beats(distance: np.ndarray, share: float) -> np.ndarray:
    """Indices of the `share` of beats nearest the template (smallest template distance)."""
    n = max(1, int(round(share * len(distance))))
    return np.sort(np.argsort(distance, kind="stable")[:n])


def _copy_of(model: RecurrentAutoencoder, device: torch.device) -> RecurrentAutoencoder:
    """A new autoencoder with `model`'s weights, built from its state dict, not deep-copied: pickling a
    recurrent layer rebuilds its flat-weight bookkeeping, which races with other threads using the same
    model (the dashboard scores concurrent sessions with one cached detector)."""
    with torch.random.fork_rng(devices=[]):  # the new layers' initial draws leave every random state alone
        tuned = RecurrentAutoencoder(model.config).to(device)
    tuned.load_state_dict(model.state_dict())
    return tuned


def adapt(model: RecurrentAutoencoder, inputs: dict[str, np.ndarray], distance: np.ndarray,
          config: AdaptConfig) -> RecurrentAutoencoder:
    """A copy of `model` fine-tuned on one recording's typical beats (model inputs of its beats and
    their template distances); `model` itself is left as it was. With steps=0, `model` itself."""
    if config.steps == 0 or len(distance) == 0:
        return model
    device = next(model.parameters()).device
    tuned = _copy_of(model, device)
    typical = torch.as_tensor(typical_beats(distance, config.typical_share), device=device)
    wave, template, rr = (torch.as_tensor(inputs[k], dtype=torch.float32, device=device)
                          for k in ("wave", "template", "rr"))
    # seeded dropout and draws, the caller's random state kept; gradients on even under torch.no_grad()
    with private_torch_state(config.seed, ADAPT_THREADS), torch.enable_grad():
        draws = torch.Generator().manual_seed(config.seed)
        step = AdamSteps(list(tuned.parameters()), config.lr)
        tuned.train()
        for _ in range(config.steps):
            idx = typical[torch.randint(len(typical), (config.batch_size,), generator=draws).to(device)]
            recon, _ = tuned(wave[idx], template[idx], rr[idx])
            loss = ((recon - wave[idx]) ** 2).mean()
            tuned.zero_grad(set_to_none=True)
            loss.backward()
            step()
    return tuned.eval()


class AdamSteps:
    """Adam (Kingma & Ba 2015, default betas), written out: constructing a torch.optim optimizer
    imports torch._dynamo on first use (seconds), more than scoring a whole recording takes."""

    BETAS = (0.9, 0.999)
    EPS = 1e-8

    def __init__(self, params: list[torch.Tensor], lr: float):
        self.params, self.lr, self.t = params, lr, 0
        self.m = [torch.zeros_like(p) for p in params]
        self.v = [torch.zeros_like(p) for p in params]

    @torch.no_grad()
    def __call__(self) -> None:
        self.t += 1
        b1, b2 = self.BETAS
        for p, m, v in zip(self.params, self.m, self.v):
            if p.grad is None:
                continue
            m.mul_(b1).add_(p.grad, alpha=1 - b1)
            v.mul_(b2).addcmul_(p.grad, p.grad, value=1 - b2)
            denom = (v / (1 - b2 ** self.t)).sqrt_().add_(self.EPS)
            p.addcdiv_(m, denom, value=-self.lr / (1 - b1 ** self.t))
