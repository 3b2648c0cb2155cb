"""Signal stage: zero-phase filtering, resampling and R-peak detection."""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction

import numpy as np
from scipy import signal as sps

from ecg_rnn.errors import SignalError


@dataclass(frozen=True)
class SignalConfig:
    """How a raw lead becomes the pipeline's signal."""

    fs: float = 128.0  # pipeline sampling rate (Hz); beats are cut at this rate
    highpass_hz: float = 0.5  # removes baseline wander
    lowpass_hz: float = 40.0  # removes mains hum and muscle noise
    filter_order: int = 2  # per direction; filtfilt doubles it


def bandpass(x: np.ndarray, fs: float, low_hz: float, high_hz: float, order: int = 2) -> np.ndarray:
    """Zero-phase Butterworth band-pass (a high-pass only when high_hz >= Nyquist)."""
    nyquist = fs / 2.0
    if high_hz >= nyquist * 0.95:
        sos = sps.butter(order, low_hz, btype="highpass", fs=fs, output="sos")
    else:
        sos = sps.butter(order, [low_hz, high_hz], btype="bandpass", fs=fs, output="sos")
    padlen = min(len(x) - 1, int(3 * fs))
    return sps.sosfiltfilt(sos, x, padlen=padlen).astype(np.float32)


def resample(x: np.ndarray, fs_in: float, fs_out: float) -> np.ndarray:
    """Polyphase resampling by the nearest small rational ratio."""
    if fs_in == fs_out:
        return np.asarray(x, dtype=np.float32)
    ratio = Fraction(fs_out / fs_in).limit_denominator(1000)
    return sps.resample_poly(x, ratio.numerator, ratio.denominator).astype(np.float32)


def preprocess(x: np.ndarray, fs: float, config: SignalConfig = SignalConfig()) -> np.ndarray:
    """Filter at the native rate (before any anti-alias loss), then resample to config.fs."""
    if len(x) < 2 * fs:
        raise SignalError(f"signal is only {len(x) / fs:.2f} s long; need at least 2 s of ECG")
    filtered = bandpass(x, fs, config.highpass_hz, config.lowpass_hz, config.filter_order)
    return resample(filtered, fs, config.fs)
