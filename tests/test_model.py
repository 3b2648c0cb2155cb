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


def test_training_resume(tmp_path):
    """Best-checkpoint state is saved every epoch (weights-only) and --resume continues from it."""
    import numpy as np

    from ecg_rnn.train import RESUME_FILE, TrainConfig, fit_autoencoder

    rng = np.random.default_rng(0)
    data = {"wave": rng.normal(size=(64, 90)).astype(np.float32), "template": np.zeros((64, 90), np.float32),
            "rr": np.zeros((64, 3), np.float32)}
    cfg = ModelConfig(hidden_size=4, latent_size=2)
    logs = []
    h2 = fit_autoencoder(RecurrentAutoencoder(cfg), data, data, TrainConfig(epochs=2, batch_size=32, patience=9),
                         run_dir=tmp_path, progress=False, log=logs.append)
    assert (tmp_path / RESUME_FILE).is_file() and len(h2) == 2
    torch.load(tmp_path / RESUME_FILE, weights_only=True)  # loadable without unpickling code
    h3 = fit_autoencoder(RecurrentAutoencoder(cfg), data, data, TrainConfig(epochs=3, batch_size=32, patience=9),
                         run_dir=tmp_path, resume=True, progress=False, log=logs.append)
    assert [h["epoch"] for h in h3] == [1, 2, 3]
    assert h3[:2] == h2
    assert any("resumed" in m for m in logs)
