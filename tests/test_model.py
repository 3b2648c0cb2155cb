"""The recurrent autoencoder family: shapes, cells, context, and config validation."""

import pytest
import torch

from ecg_rnn.model import ModelConfig, RecurrentAutoencoder


@pytest.mark.parametrize("cell", ["lstm", "gru"])
@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("context", [False, True])
def test_shapes(cell, bidirectional, context):
    cfg = ModelConfig(cell=cell, bidirectional=bidirectional, context=context, hidden_size=8, latent_size=4,
                      num_layers=2, dropout=0.1)
    model = RecurrentAutoencoder(cfg).eval()
    wave, template, rr = torch.randn(5, 90), torch.randn(5, 90), torch.randn(5, 3)
    recon, z = model(wave, template, rr)
    assert recon.shape == (5, 90) and z.shape == (5, 4)
    assert torch.isfinite(recon).all()


def test_residual_decoding_starts_near_template():
    """With context the decoder predicts the deviation from the template: output = template + head."""
    cfg = ModelConfig(hidden_size=8, latent_size=4)
    model = RecurrentAutoencoder(cfg).eval()
    for p in model.head.parameters():
        torch.nn.init.zeros_(p)
    template = torch.randn(3, 90)
    recon, _ = model(torch.randn(3, 90), template, torch.zeros(3, 3))
    assert torch.allclose(recon, template)


def test_plain_has_no_context_inputs():
    cfg = ModelConfig(context=False, step_samples=1, hidden_size=8, latent_size=4)
    model = RecurrentAutoencoder(cfg)
    assert model.encoder.input_size == 1 and model.decoder.input_size == 4


@pytest.mark.parametrize("bad", [dict(cell="rnn"), dict(step_samples=7), dict(dropout=1.5),
                                 dict(input_norm="x"), dict(latent_size=0)])
def test_bad_config(bad):
    with pytest.raises(ValueError):
        ModelConfig(**bad)
