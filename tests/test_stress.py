"""Noise stress test builder: NSTDB schedule, SNR definition, noise models, several leads."""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import pytest
from scipy import signal as sps

from ecg_rnn import stress

SAMPLE = Path(__file__).resolve().parents[1] / "ecg_rnn" / "samples" / "mitdb"
FS = 360.0


@functools.lru_cache(maxsize=None)
def _sample(name: str) -> tuple[np.ndarray, float, np.ndarray]:
    """Both leads of a shipped sample record and its normal beats' samples (fails when absent)."""
    assert (SAMPLE / f"{name}.hea").exists(), f"shipped sample record {name} is missing from {SAMPLE}"
    import wfdb

    record = wfdb.rdrecord(str(SAMPLE / name))
    annotation = wfdb.rdann(str(SAMPLE / name), "atr")
    normal = annotation.sample[np.isin(annotation.symbol, ["N"])]
    return record.p_signal.copy(), float(record.fs), normal


def test_schedule_is_nstdb_five_clean_minutes_then_two_minute_stretches_noisy_first():
    n = int(12 * 60 * FS)
    mask = stress.noisy_mask(n, FS)
    minute = (np.arange(n) / FS / 60).astype(int)
    for m, noisy in [(0, False), (4, False), (5, True), (6, True), (7, False), (8, False), (9, True), (11, False)]:
        assert mask[minute == m].all() == noisy and mask[minute == m].any() == noisy, f"minute {m}"


def _independent_snr_db(clean: np.ndarray, noisy: np.ndarray, fs: float, normal: np.ndarray,
                        mask: np.ndarray) -> float:
    """SNR of one lead recomputed from the nst manual's words with plain loops (not stress' code)."""
    half = int(round(0.05 * fs))
    ptp = [np.ptp(clean[p - half:p + half + 1]) for p in normal if half <= p < len(clean) - half][:300]
    ptp = sorted(ptp)[int(len(ptp) * 0.05):len(ptp) - int(len(ptp) * 0.05)]
    signal_power = np.mean(ptp) ** 2 / 8
    noise = noisy - clean
    chunk = int(round(fs))
    rms = [np.sqrt(np.mean((noise[s:s + chunk] - noise[s:s + chunk].mean()) ** 2))
           for s in range(0, len(noise) - chunk + 1, chunk) if mask[s:s + chunk].all()]
    rms = sorted(rms)[int(len(rms) * 0.05):len(rms) - int(len(rms) * 0.05)]
    return 10 * np.log10(signal_power / np.mean(rms) ** 2)


@pytest.mark.parametrize("kind, snr_db", [("em", snr) for snr in stress.NSTDB_SNR_DB] + [("ma", 0.0), ("bw", 12.0)])
def test_measured_snr_of_each_lead_equals_the_requested_one(kind, snr_db):
    x, fs, normal = _sample("100")
    x = x[: int(13 * 60 * fs)]
    rng = np.random.default_rng(7)
    noise = np.column_stack([stress.make_noise(kind, len(x), fs, rng) for _ in range(x.shape[1])])
    noisy = stress.add_noise(x, noise, fs, snr_db, normal)
    mask = stress.noisy_mask(len(x), fs)
    for lead in range(x.shape[1]):
        assert _independent_snr_db(x[:, lead], noisy[:, lead], fs, normal, mask) == pytest.approx(snr_db, abs=0.01)


def test_noise_stays_in_its_stretches_and_adds_no_step():
    x, fs, normal = _sample("208")
    x = x[: int(10 * 60 * fs), 0]
    noise = stress.make_noise("em", len(x), fs, np.random.default_rng(3))
    added = stress.add_noise(x, noise, fs, 0.0, normal) - x
    mask = stress.noisy_mask(len(x), fs)
    edges = np.flatnonzero(np.diff(mask.astype(int))) + 1
    # outside the noisy stretches only a constant offset remains (nst's continuity offsets)
    for start, end in zip(np.r_[0, edges[1::2]], np.r_[edges[::2], len(x)]):
        assert np.ptp(added[start:end]) == pytest.approx(0.0, abs=1e-9)
    typical_step = np.median(np.abs(np.diff(added[mask])))
    for edge in edges:
        assert abs(added[edge] - added[edge - 1]) <= 20 * typical_step, f"step at sample {edge}"
    assert np.std(added[mask]) > 0.1 * np.ptp(x)  # and the noise is really there at 0 dB


def _band_share(z: np.ndarray, fs: float, low: float, high: float) -> float:
    f, p = sps.welch(z, fs, nperseg=int(16 * fs))
    return p[(f >= low) & (f < high)].sum() / p.sum()


def test_noise_models_have_their_kinds_spectra():
    rng = np.random.default_rng(11)
    n = int(300 * FS)
    bw, ma, em = (stress.make_noise(kind, n, FS, rng) for kind in ("bw", "ma", "em"))
    for z in (bw, ma, em):
        assert np.sqrt(np.mean(z ** 2)) == pytest.approx(1.0) and abs(z.mean()) < 1e-9
    assert _band_share(bw, FS, 0.0, 0.6) > 0.95  # baseline wander: below 0.5 Hz
    assert _band_share(ma, FS, 18.0, 160.0) > 0.9  # muscle: the EMG band
    assert _band_share(em, FS, 1.0, 10.0) > 0.3  # electrode motion: overlaps the QRS band...
    assert _band_share(em, FS, 0.0, 1.0) > 0.1  # ...with baseline jumps and wander too


def test_noise_is_reproducible_from_the_seed_and_independent_across_leads():
    a = stress.make_noise("em", int(60 * FS), FS, np.random.default_rng(5))
    b = stress.make_noise("em", int(60 * FS), FS, np.random.default_rng(5))
    rng = np.random.default_rng(5)
    c, d = stress.make_noise("ma", int(60 * FS), FS, rng), stress.make_noise("ma", int(60 * FS), FS, rng)
    assert np.array_equal(a, b)
    assert abs(np.corrcoef(c, d)[0, 1]) < 0.1


@pytest.mark.parametrize("fs", [128.0, 250.0, 500.0])
def test_noise_at_other_sampling_rates_keeps_its_band(fs):
    ma = stress.make_noise("ma", int(120 * fs), fs, np.random.default_rng(2))
    assert _band_share(ma, fs, 18.0, fs / 2) > 0.9


def test_bad_arguments_raise():
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="unknown noise kind"):
        stress.make_noise("hum", 1000, FS, rng)
    x, fs, normal = _sample("100")
    with pytest.raises(ValueError, match="same shape"):
        stress.add_noise(x[:, :1], np.zeros((len(x), 2)), fs, 6.0, normal)
    with pytest.raises(ValueError, match="no reference QRS"):
        stress.add_noise(x[:1000, 0], np.ones(1000), fs, 6.0, np.array([10**7]))
