"""Noise stress test: calibrated synthetic noise added to clean ECGs, as the MIT-BIH Noise Stress
Test Database (NSTDB) did it.

Recipe (Moody GB, Muldrow WK, Mark RG. "A noise stress test for arrhythmia detectors", Computers in
Cardiology 11:381-384, 1984; implemented by the WFDB program `nst`, whose manual page, section
"Signal-to-noise ratios" (WFDB Applications Guide, nst(1), physionet.org/physiotools/wag/nst-1.htm),
defines S and N exactly as below):

- schedule: the first 5 minutes stay clean (a "learning period"), then 2-minute stretches alternate,
  noisy first: noisy 5-7 min, clean 7-9 min, noisy 9-11 min, ... to the end (`noisy_mask`);
- signal power S, per lead: the peak-to-peak amplitude of each of the first 300 normal QRS complexes
  is the range of the signal from 50 ms before to 50 ms after its annotation; the largest 5 % and the
  smallest 5 % of these are discarded and the rest averaged; S = (that mean)^2 / 8, the power of a
  sinusoid with that peak-to-peak amplitude (`qrs_power`);
- noise power N, per lead: the noise is cut into 1-second chunks; in each the RMS difference from the
  chunk's own mean is taken; the largest and smallest 5 % are discarded and the rest averaged; N is
  the square of that mean (`noise_power`; nst measures it on the first 300 s of the noise record,
  here on the noise samples that fall inside the noisy stretches, so the SNR holds where noise is);
- SNR = 10 log10(S / (a^2 N)) is solved for the noise gain a; NSTDB used 24, 18, 12, 6, 0 and -6 dB;
- whenever a gain changes, a constant offset keeps the output continuous (nst's offsets b), so the
  start and end of a noisy stretch add no step;
- each lead gets its own noise signal and its own gain (NSTDB paired the two leads of a clean record
  with the two independent leads of a noise record).

The NSTDB noise recordings themselves are not shipped, so `make_noise` synthesises the three kinds
(each model is described in its function's docstring). Imports only numpy and ecg_rnn.signal.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ecg_rnn.signal import bandpass

NOISE_KINDS = ("bw", "ma", "em")
NSTDB_SNR_DB = (24.0, 18.0, 12.0, 6.0, 0.0, -6.0)
CLEAN_START_S = 300.0  # noise-free learning period at the start
STRETCH_S = 120.0  # then noisy and clean stretches of this length alternate, noisy first
QRS_HALF_WINDOW_S = 0.05  # peak-to-peak QRS amplitude is measured within this of the annotation
MAX_QRS_BEATS = 300  # nst measures the first 300 normal QRS complexes
TRIM_FRACTION = 0.05  # largest and smallest 5 % of the measurements are discarded
SINE_POWER_DIVISOR = 8.0  # power of a sinusoid = (peak-to-peak amplitude)^2 / 8
NOISE_CHUNK_S = 1.0  # noise RMS is measured in chunks of this length


def noisy_mask(n: int, fs: float, clean_start_s: float = CLEAN_START_S, stretch_s: float = STRETCH_S) -> np.ndarray:
    """True for the samples inside NSTDB's noisy stretches: from clean_start_s on, stretch_s noisy,
    stretch_s clean, alternately (shorter arguments make the same schedule fit a short excerpt)."""
    t = np.arange(n) / float(fs) - clean_start_s
    return (t >= 0) & (np.floor(t / stretch_s) % 2 == 0)


def _trimmed_mean(values: np.ndarray) -> float:
    """Mean of the values without the largest and smallest TRIM_FRACTION of them (as nst's sigamp)."""
    v = np.sort(np.asarray(values, dtype=np.float64))
    cut = int(len(v) * TRIM_FRACTION)
    return float(v[cut:len(v) - cut].mean())


def _as_columns(x: np.ndarray) -> np.ndarray:
    """A (n, leads) float64 view of a 1-D or 2-D signal."""
    x = np.asarray(x, dtype=np.float64)
    return x[:, None] if x.ndim == 1 else x


def qrs_power(signal: np.ndarray, fs: float, ref_peaks: np.ndarray) -> np.ndarray:
    """nst's signal power S per lead: (trimmed mean peak-to-peak amplitude of the first 300 QRS
    complexes at ref_peaks, each within +-50 ms) ** 2 / 8. ref_peaks should hold normal beats only."""
    x = _as_columns(signal)
    half = int(round(QRS_HALF_WINDOW_S * fs))
    peaks = np.asarray(ref_peaks, dtype=np.int64)
    peaks = peaks[(peaks >= half) & (peaks < len(x) - half)][:MAX_QRS_BEATS]
    if len(peaks) == 0:
        raise ValueError("no reference QRS complexes inside the signal; pass the normal beats' R-peak samples")
    windows = x[peaks[:, None] + np.arange(-half, half + 1)]  # (beats, window, leads)
    ptp = windows.max(axis=1) - windows.min(axis=1)
    return np.array([_trimmed_mean(ptp[:, lead]) ** 2 / SINE_POWER_DIVISOR for lead in range(x.shape[1])])


def noise_power(noise: np.ndarray, fs: float, mask: np.ndarray | None = None) -> np.ndarray:
    """nst's noise power N per lead: the trimmed mean over 1-s chunks (those wholly inside mask, when
    given) of the RMS difference from each chunk's mean, squared."""
    z = _as_columns(noise)
    chunk = max(1, int(round(NOISE_CHUNK_S * fs)))
    starts = np.arange(0, len(z) - chunk + 1, chunk)
    if mask is not None:
        inside = np.r_[0, np.cumsum(np.asarray(mask, dtype=np.int64))]
        starts = starts[inside[starts + chunk] - inside[starts] == chunk]
    if len(starts) == 0:
        raise ValueError(f"noise needs at least one whole {NOISE_CHUNK_S:g} s chunk (inside the mask) to be measured")
    chunks = z[starts[:, None] + np.arange(chunk)]  # (chunks, chunk, leads)
    rms = np.sqrt(((chunks - chunks.mean(axis=1, keepdims=True)) ** 2).mean(axis=1))
    return np.array([_trimmed_mean(rms[:, lead]) ** 2 for lead in range(z.shape[1])])


def add_noise(signal: np.ndarray, noise: np.ndarray, fs: float, snr_db: float, ref_peaks: np.ndarray,
              mask: np.ndarray | None = None) -> np.ndarray:
    """signal plus noise scaled, lead by lead, to snr_db (NSTDB definition) inside the noisy stretches.

    signal and noise are (n,) or (n, leads) of the same shape (one independent noise column per lead);
    ref_peaks are R-peak samples of normal beats (for S); mask defaults to noisy_mask(n, fs). Outside
    the mask only a constant offset remains (nst keeps the output continuous when gains change).
    """
    x, z = _as_columns(signal), _as_columns(noise)
    if x.shape != z.shape:
        raise ValueError(f"signal {x.shape} and noise {z.shape} must have the same shape (one noise column per lead)")
    mask = noisy_mask(len(x), fs) if mask is None else np.asarray(mask, dtype=bool)
    gain = np.sqrt(qrs_power(x, fs, ref_peaks) / (noise_power(z, fs, mask) * 10.0 ** (snr_db / 10.0)))
    added = np.zeros_like(x)
    edges = np.flatnonzero(np.diff(np.r_[0, mask.astype(np.int8), 0]))  # starts and ends of noisy stretches
    level = np.zeros(x.shape[1])  # the offset that keeps the output continuous
    previous_end = 0
    for start, end in zip(edges[::2], edges[1::2]):
        added[previous_end:start] = level
        stretch = gain * z[start:end]
        added[start:end] = stretch - stretch[0] + level
        level = added[end - 1]
        previous_end = end
    added[previous_end:] = level
    out = x + added
    return out[:, 0] if np.ndim(signal) == 1 else out


def make_noise(kind: str, n: int, fs: float, rng: np.random.Generator) -> np.ndarray:
    """n samples of synthetic noise of one NSTDB kind ('bw', 'ma' or 'em') at fs Hz, unit RMS.

    Call it once per lead for independent noise on each lead."""
    if kind not in _GENERATORS:
        raise ValueError(f"unknown noise kind {kind!r}; choose one of {', '.join(NOISE_KINDS)}")
    if n < 2 * fs:
        raise ValueError(f"noise of {n / fs:.2f} s is too short; need at least 2 s")
    z = _GENERATORS[kind](n, float(fs), rng)
    z = z - z.mean()
    return z / np.sqrt(np.mean(z ** 2))


# --------------------------------------------------------------------------------------------------
# Noise models

_SLOW_FS = 20.0  # slow components are drawn at this rate and interpolated
BW_DRIFT_HZ = 0.5  # baseline wander: random walk kept below this frequency...
BW_DRIFT_FLOOR_HZ = 0.02  # ...and above this one (no unbounded drift)
BW_RESPIRATION_HZ = (0.15, 0.4)  # respiration rate range (9-24 breaths per minute)
BW_RESPIRATION_SHARE = 0.5  # respiration's share of the wander amplitude
MA_BAND_HZ = (20.0, 150.0)  # EMG band (its upper edge is capped below Nyquist)
MA_BURST_HZ = 0.7  # muscle contractions: envelope fluctuations up to this rate
MA_FLOOR = 0.15  # resting EMG relative to a contraction
EM_STEPS_PER_S = 0.4  # electrode motion: mean rate of baseline jumps (half-cell potential changes)
EM_RISE_S = (0.02, 0.06)  # ...each rising with a time constant in this range (not an ideal step)...
EM_RECOVERY_S = (0.15, 0.8)  # ...and recovering exponentially with a time constant in this range
EM_MOTION_BAND_HZ = (1.0, 10.0)  # motion transients: band-limited noise in the QRS-overlapping band
EM_MOTION_BURSTS_PER_S = 1.0  # ...gated on in bursts at this mean rate...
EM_MOTION_BURST_S = (0.3, 1.5)  # ...of these durations
EM_MIX = (0.5, 0.6, 0.3, 0.15)  # RMS weights of steps, transients, wander and muscle noise in 'em'


def _slow_noise(n: int, fs: float, rng: np.random.Generator, low_hz: float, high_hz: float,
                integrate: bool) -> np.ndarray:
    """Gaussian (or, integrated, Brownian) noise band-limited to low_hz-high_hz, drawn at _SLOW_FS and
    interpolated to n samples at fs (cheap at any rate)."""
    m = int(np.ceil(n / fs * _SLOW_FS)) + 2
    white = rng.standard_normal(m)
    drawn = np.cumsum(white) if integrate else white
    slow = bandpass(drawn, _SLOW_FS, low_hz, high_hz).astype(np.float64)
    return np.interp(np.arange(n) / fs, np.arange(m) / _SLOW_FS, slow)


def _unit(z: np.ndarray) -> np.ndarray:
    return z / max(float(np.sqrt(np.mean(z ** 2))), 1e-12)


def _baseline_wander(n: int, fs: float, rng: np.random.Generator) -> np.ndarray:
    """'bw': a Brownian (1/f^2) drift band-limited to 0.02-0.5 Hz (body and lead movement) plus a
    respiration component whose rate wanders within 0.15-0.4 Hz, each half of the amplitude."""
    drift = _unit(_slow_noise(n, fs, rng, BW_DRIFT_FLOOR_HZ, BW_DRIFT_HZ, integrate=True))
    low, high = BW_RESPIRATION_HZ
    rate = low + (high - low) * (0.5 + 0.5 * np.tanh(_slow_noise(n, fs, rng, 0.005, 0.05, integrate=False)))
    phase = 2 * np.pi * np.cumsum(rate) / fs + rng.uniform(0, 2 * np.pi)
    depth = 1.0 + 0.3 * _unit(_slow_noise(n, fs, rng, 0.01, 0.1, integrate=False))  # breath depth varies
    respiration = _unit(np.sin(phase) * depth)
    return (1 - BW_RESPIRATION_SHARE) * drift + BW_RESPIRATION_SHARE * respiration


def _muscle(n: int, fs: float, rng: np.random.Generator) -> np.ndarray:
    """'ma': Gaussian noise band-passed to the EMG band (20-150 Hz, capped at 0.45 fs), amplitude-
    modulated by a bursty envelope (muscle contractions lasting a fraction of a second to seconds
    over a low resting level)."""
    high = min(MA_BAND_HZ[1], 0.45 * fs)
    emg = bandpass(rng.standard_normal(n), fs, MA_BAND_HZ[0], high, order=3).astype(np.float64)
    drive = _slow_noise(n, fs, rng, 0.05, MA_BURST_HZ, integrate=False)
    envelope = MA_FLOOR + np.maximum(_unit(drive), 0.0) ** 2
    return emg * envelope


def _electrode_motion(n: int, fs: float, rng: np.random.Generator) -> np.ndarray:
    """'em': the hard kind, because it overlaps the QRS band. A Poisson train (0.4/s) of baseline
    jumps of random sign and size, each rising within tens of milliseconds (time constant 0.02-0.06 s)
    and recovering exponentially (0.15-0.8 s): the electrode's half-cell potential jumping when the
    skin-electrode contact is disturbed and settling again; plus bursts of 1-10 Hz motion transients
    (Hann-gated, 0.3-1.5 s long, starting once a second on average) whose slopes resemble QRS
    complexes; like NSTDB's em record it also carries some baseline wander and muscle noise.
    The burst rate was set so that detect_r_peaks keeps roughly the positive predictivity published
    for Pan-Tompkins-type detectors on NSTDB's em records at 12 dB (about 0.92 over DS1, see
    docs/quality.md); at 6 and 0 dB it is worse than those reports (about 0.73 and 0.62): a
    conservative stand-in, not a replica."""
    steps = np.zeros(n)
    count = rng.poisson(EM_STEPS_PER_S * n / fs)
    for at, size, rise, tau in zip(rng.integers(0, n, count), rng.standard_normal(count),
                                   rng.uniform(*EM_RISE_S, count), rng.uniform(*EM_RECOVERY_S, count)):
        t = np.arange(min(n - at, int(5 * tau * fs) + 1)) / fs
        steps[at:at + len(t)] += size * (np.exp(-t / tau) - np.exp(-t / rise))
    motion = bandpass(rng.standard_normal(n), fs, *EM_MOTION_BAND_HZ, order=2).astype(np.float64)
    gate = np.zeros(n)
    bursts = rng.poisson(EM_MOTION_BURSTS_PER_S * n / fs)
    for at, seconds in zip(rng.integers(0, n, bursts), rng.uniform(*EM_MOTION_BURST_S, bursts)):
        length = int(seconds * fs)
        gate[at:at + length] = np.maximum(gate[at:at + length], np.hanning(length)[:n - at])
    parts = (steps, motion * gate, _baseline_wander(n, fs, rng), _muscle(n, fs, rng))
    return sum(weight * _unit(part) for weight, part in zip(EM_MIX, parts))


_GENERATORS: dict[str, Callable[[int, float, np.random.Generator], np.ndarray]] = {
    "bw": _baseline_wander, "ma": _muscle, "em": _electrode_motion}
