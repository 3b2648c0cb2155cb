"""Recurrent autoencoders for single beats (nanoGPT-style: one config, one module, no magic).

The encoder reads a beat as a sequence (``step_samples`` samples per recurrent step, to keep the
sequence short on CPU) and compresses it into a small latent code. The decoder unrolls that code back
into the beat. With ``context=True`` both halves also see the patient's own context:

- the record's template (median) beat as a second input channel at every step, and
- the beat's rhythm (log RR-ratio features) broadcast to every step,

and the decoder predicts the beat's *deviation* from the template (residual decoding). A normal beat
is then "template + a small, typical deviation", which a small latent code can carry; an ectopic beat's
large or atypical deviation cannot be squeezed through it, so its reconstruction error is large.

With ``context=False`` and ``decoder="repeat"`` it is the classic LSTM autoencoder (the latent code is
repeated as the decoder input at every step), used as the plain baseline.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

CELLS = ("lstm", "gru")
N_RR_INPUTS = 3  # log rr_prev_ratio, log rr_next_ratio, log(rr_local / 0.8 s)


@dataclass(frozen=True)
class ModelConfig:
    cell: str = "lstm"  # lstm | gru
    hidden_size: int = 64
    num_layers: int = 1
    latent_size: int = 12
    dropout: float = 0.0  # between stacked layers and on the latent code
    bidirectional: bool = False  # bidirectional encoder (the decoder is always causal)
    window: int = 90  # samples per beat (BeatConfig window at SignalConfig.fs)
    step_samples: int = 3  # samples fed per recurrent step (window must be a multiple)
    context: bool = True  # template channel + RR conditioning + residual decoding
    input_norm: str = "record"  # record: waves as cut (scaled by the record's median beat) | beat: z-score

    def __post_init__(self):
        if self.cell not in CELLS:
            raise ValueError(f"cell must be one of {', '.join(CELLS)}, not {self.cell!r}")
        if self.input_norm not in ("record", "beat"):
            raise ValueError(f"input_norm must be record or beat, not {self.input_norm!r}")
        if self.window % self.step_samples:
            raise ValueError(f"window {self.window} is not a multiple of step_samples {self.step_samples}")
        for name in ("hidden_size", "num_layers", "latent_size", "window", "step_samples"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be positive")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError("dropout must be in [0, 1)")

    @property
    def steps(self) -> int:
        return self.window // self.step_samples

    def to_dict(self) -> dict:
        return asdict(self)


def _rnn(cell: str, input_size: int, hidden: int, layers: int, dropout: float, bidirectional: bool):
    cls = nn.LSTM if cell == "lstm" else nn.GRU
    return cls(input_size, hidden, num_layers=layers, batch_first=True,
               dropout=dropout if layers > 1 else 0.0, bidirectional=bidirectional)


class RecurrentAutoencoder(nn.Module):
    def __init__(self, config: ModelConfig = ModelConfig()):
        super().__init__()
        self.config = c = config
        s = c.step_samples
        enc_in = s * (2 if c.context else 1) + (N_RR_INPUTS if c.context else 0)
        dec_in = c.latent_size + (s + N_RR_INPUTS if c.context else 0)
        directions = 2 if c.bidirectional else 1
        self.encoder = _rnn(c.cell, enc_in, c.hidden_size, c.num_layers, c.dropout, c.bidirectional)
        self.to_latent = nn.Linear(c.hidden_size * directions, c.latent_size)
        self.latent_dropout = nn.Dropout(c.dropout)
        self.decoder = _rnn(c.cell, dec_in, c.hidden_size, c.num_layers, c.dropout, False)
        self.head = nn.Linear(c.hidden_size, s)

    def _steps(self, x: torch.Tensor) -> torch.Tensor:  # (B, W) -> (B, T, s)
        return x.reshape(x.shape[0], self.config.steps, self.config.step_samples)

    def _context(self, template: torch.Tensor | None, rr: torch.Tensor | None, n: int, like: torch.Tensor):
        c = self.config
        if template is None:
            template = torch.zeros(n, c.window, dtype=like.dtype, device=like.device)
        if rr is None:
            rr = torch.zeros(n, N_RR_INPUTS, dtype=like.dtype, device=like.device)
        rr_steps = rr[:, None, :].expand(n, c.steps, rr.shape[1])
        return self._steps(template), rr_steps

    def encode(self, wave: torch.Tensor, template: torch.Tensor | None = None,
               rr: torch.Tensor | None = None) -> torch.Tensor:
        c = self.config
        x = self._steps(wave)
        if c.context:
            t_steps, rr_steps = self._context(template, rr, wave.shape[0], wave)
            x = torch.cat([x, t_steps, rr_steps], dim=-1)
        _, h = self.encoder(x)
        h = h[0] if isinstance(h, tuple) else h  # LSTM: (h, c)
        directions = 2 if c.bidirectional else 1
        last = h[-directions:]  # last layer, every direction: (directions, B, H)
        return self.to_latent(last.transpose(0, 1).reshape(wave.shape[0], -1))

    def decode(self, z: torch.Tensor, template: torch.Tensor | None = None,
               rr: torch.Tensor | None = None) -> torch.Tensor:
        c = self.config
        x = self.latent_dropout(z)[:, None, :].expand(z.shape[0], c.steps, c.latent_size)
        if c.context:
            t_steps, rr_steps = self._context(template, rr, z.shape[0], z)
            x = torch.cat([x, t_steps, rr_steps], dim=-1)
        out, _ = self.decoder(x)
        recon = self.head(out).reshape(z.shape[0], c.window)
        if c.context:
            recon = recon + (template if template is not None else 0.0)
        return recon

    def forward(self, wave: torch.Tensor, template: torch.Tensor | None = None,
                rr: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        z = self.encode(wave, template, rr)
        return self.decode(z, template, rr), z

    def n_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())
