"""Signal stage: zero-phase filtering, resampling and R-peak detection."""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction

import numpy as np
from scipy import signal as sps

from ecg_rnn.errors import SignalError
from ecg_rnn.records import FLAT_PTP_MV, bridge_gaps


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


def resample_ratio(fs_in: float, fs_out: float) -> Fraction:
    """fs_out / fs_in as the nearest small fraction up / down (the polyphase factors)."""
    return Fraction(fs_out / fs_in).limit_denominator(1000)


def resample(x: np.ndarray, fs_in: float, fs_out: float) -> np.ndarray:
    """Polyphase resampling by the nearest small rational ratio, along the first axis (samples; a 2-D
    array is resampled one lead per column)."""
    if fs_in == fs_out:
        return np.asarray(x, dtype=np.float32)
    ratio = resample_ratio(fs_in, fs_out)
    return sps.resample_poly(x, ratio.numerator, ratio.denominator).astype(np.float32)


def preprocess(x: np.ndarray, fs: float, config: SignalConfig = SignalConfig()) -> np.ndarray:
    """Filter at the native rate (before any anti-alias loss), then resample to config.fs."""
    if len(x) < 2 * fs:
        raise SignalError(f"signal is only {len(x) / fs:.2f} s long; need at least 2 s of ECG")
    filtered = bandpass(x, fs, config.highpass_hz, config.lowpass_hz, config.filter_order)
    return resample(filtered, fs, config.fs)


# --------------------------------------------------------------------------------------------------
# R-peak (QRS) detection
#
# Pan–Tompkins-style, made offline and vectorised where it matters:
#   1. decimate by an integer factor to a working rate of 150–300 Hz (boxcar mean; the band-pass
#      below removes what the boxcar lets through; signals under 100 Hz are upsampled instead),
#      then zero-phase band-pass 4–20 Hz;
#   2. energy feature: centred 150 ms moving average of the squared derivative; candidate QRS are
#      its local maxima at least 200 ms apart (scipy.signal.find_peaks);
#   3. drop candidates inside ventricular flutter/fibrillation (sinusoid-like signal with no quiet
#      baseline, Kuo–Dillman "filter leakage"), which has no QRS complexes to report;
#   4. one pass over the candidates with adaptive thresholds: signal level = lower median of the last
#      8 QRS heights (robust to large ectopic beats), noise level = running mean of rejected peaks,
#      searchback for a missed beat after 1.5 median RR, T-wave rejection by slope within 320 ms,
#      replacement of a P wave / artefact by the taller QRS that follows it, and a threshold that
#      halves every 1 s after 2 s without a beat (recovers from amplitude drops and artefacts);
#   5. move each detection to the largest deflection of the QRS from the local baseline in the
#      original signal (positive or negative), at the input's own sampling rate.
# --------------------------------------------------------------------------------------------------

_MIN_FS = 40.0  # Hz; below this the 4–20 Hz QRS band does not fit
_WORK_FS = 150.0  # decimate by the largest integer factor that keeps at least this rate
_UPSAMPLE_BELOW_FS = 100.0  # ...and upsample slower signals to at least this rate
_BAND_HZ = (4.0, 20.0)  # QRS band of the detection feature
_MWI_S = 0.15  # moving-window integration length
_REFRACTORY_S = 0.20  # no two QRS closer than this
_T_WAVE_S = 0.32  # a peak this soon after a QRS is a T wave unless it is steep:
_T_WAVE_SLOPE = 0.6  # ...its maximal slope must reach this fraction of that QRS' maximal slope
_SLOPE_HALF_S = 0.075  # half-width of the window where a candidate's maximal slope is measured
_THRESHOLD = 0.2  # threshold = noise + _THRESHOLD * (signal - noise)
_LEVEL_BEATS = 8  # signal level and RR are medians over this many recent beats
_SEARCHBACK_RR = 1.5  # search back for a missed beat after this many median RR intervals
_SEARCHBACK_LEVEL = 0.4  # ...accepting the largest candidate above this fraction of the threshold
_DECAY_S = 2.0  # without a beat for longer than this, the threshold halves...
_HALVING_S = 1.0  # ...every this many seconds
_P_WAVE_RR = 0.35  # a QRS this soon (fraction of RR) after a detection may replace it...
_P_WAVE_HEIGHT = 0.8  # ...if that detection is lower than this fraction of the QRS' height
_P_WAVE_SLOPE = 1.2  # ...and not steeper than this multiple of the QRS' slope
_FLUTTER_WINDOW_S = 2.0  # flutter analysis windows (50 % overlap)
_FLUTTER_STRONG = (0.40, 0.05)  # (max leakage, min feature floor/peak ratio) that flags a window
_FLUTTER_WEAK = (0.65, 0.02)  # ...weaker limits that extend a flagged run of windows
_REFINE_ANCHOR_S = 0.10  # anchor: largest band-passed deflection within this of the feature peak
_REFINE_PEAK_S = 0.05  # R-peak: largest deviation from baseline within this of that anchor
_REFINE_BASELINE_S = 0.25  # baseline: median of the signal within this of the anchor


def detect_r_peaks(x: np.ndarray, fs: float) -> np.ndarray:
    """Return sorted int64 sample indices (in x's own sampling) of R-peaks in a raw single-lead ECG (mV, any fs from ~50 Hz to 10 kHz).

    The raw lead may carry baseline wander, noise and either QRS polarity; filtering is done here.
    Each index sits on the QRS' largest deflection from its local baseline (the R-peak, or the S/QS
    trough of a negative complex). Stretches of ventricular flutter/fibrillation yield no indices.
    Raises SignalError when the signal is unusable (flat, shorter than 1 s, not finite, several
    leads, fs under 40 Hz) or holds no beats.
    """
    x, fs = _checked_lead(x, fs)
    if fs < _UPSAMPLE_BELOW_FS:  # too coarse for slopes and T-wave tests: detect on an upsampled copy
        up = int(np.ceil(_UPSAMPLE_BELOW_FS / fs))
        peaks = _detect(sps.resample_poly(x, up, 1), fs * up, len(x) / fs)
        return np.unique(np.clip(np.round(peaks / up), 0, len(x) - 1)).astype(np.int64)
    return _detect(x, fs, len(x) / fs)


def detection_step(fs: float) -> int:
    """The detector's decimation factor at this rate: signals read in chunks must start on multiples
    of it to be detected exactly as when read whole."""
    return max(1, int(fs // _WORK_FS))


def _detect(x: np.ndarray, fs: float, seconds: float) -> np.ndarray:
    """detect_r_peaks on a checked lead sampled at >= _UPSAMPLE_BELOW_FS."""
    q = detection_step(fs)
    fw = fs / q
    xd = _decimate(x, q)
    band, deriv, energy = _qrs_features(xd, fw)
    cand, _ = sps.find_peaks(energy, distance=max(1, int(round(_REFRACTORY_S * fw))))
    flutter = _flutter_mask(xd, energy, fw)
    cand = cand[~flutter[cand]]
    # where a flutter episode ended before each candidate: a beatless stretch that must not lower the threshold
    ends = np.flatnonzero(flutter[:-1] & ~flutter[1:]) + 1
    since = np.r_[0, ends][np.searchsorted(ends, cand)]
    if len(cand) == 0:
        raise SignalError(f"no heartbeats found in the {seconds:.1f} s signal; is it an ECG lead?")
    hw = int(round(_SLOPE_HALF_S * fw))
    slope = np.abs(deriv)[np.clip(cand[:, None] + np.arange(-hw, hw + 1), 0, len(deriv) - 1)].max(axis=1)
    qrs = cand[_adaptive_threshold(cand, energy[cand], slope, since, fw)]
    if len(qrs) == 0:
        raise SignalError(f"no heartbeats found in the {seconds:.1f} s signal; is it an ECG lead?")
    return _refine_to_r_peak(x, xd, band, qrs, q, fw)


def _checked_lead(x: np.ndarray, fs: float) -> tuple[np.ndarray, float]:
    """One finite float64 lead and its rate, or a SignalError saying what is wrong."""
    try:
        fs = float(fs)
    except (TypeError, ValueError):
        raise SignalError(f"sampling rate {fs!r} is not a number") from None
    if not np.isfinite(fs) or fs < _MIN_FS:
        raise SignalError(f"sampling rate {fs:g} Hz is unusable for R-peak detection; "
                          f"need a finite rate of at least {_MIN_FS:g} Hz")
    try:
        x = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise SignalError(f"signal is not numeric ({exc})") from None
    if x.ndim != 1:
        if sum(n > 1 for n in x.shape) > 1:
            raise SignalError(f"expected one ECG lead, got an array of shape {x.shape}; pass a single column")
        x = x.reshape(-1)
    if len(x) < fs:
        raise SignalError(f"signal is only {len(x) / fs:.2f} s long; need at least 1 s of ECG to find R-peaks")
    if np.isfinite(x).sum() < 2:
        raise SignalError("signal has fewer than 2 finite samples; check the recording")
    x = bridge_gaps(x)
    if np.ptp(x) < FLAT_PTP_MV:
        raise SignalError(f"signal is flat (peak-to-peak {np.ptp(x):.3g} mV); check the lead and its gain")
    return x, fs


def _decimate(x: np.ndarray, q: int) -> np.ndarray:
    """Mean of each run of q samples (the band-pass that follows does the real anti-aliasing)."""
    if q == 1:
        return x
    n = len(x) // q * q
    out = x[0:n:q].copy()
    for k in range(1, q):
        out += x[k:n:q]
    out *= 1.0 / q
    return out


def _qrs_features(xd: np.ndarray, fw: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Band-passed signal, its derivative and the QRS energy feature (all at the working rate)."""
    sos = sps.butter(2, [_BAND_HZ[0], min(_BAND_HZ[1], 0.4 * fw)], btype="bandpass", fs=fw, output="sos")
    band = sps.sosfiltfilt(sos, xd)
    deriv = np.empty_like(band)
    deriv[1:-1] = 0.5 * (band[2:] - band[:-2])
    deriv[0], deriv[-1] = deriv[1], deriv[-2]
    w = max(1, int(round(_MWI_S * fw)))
    h = w // 2
    cum = np.zeros(len(deriv) + w + 1)  # running sum of the zero-padded squared derivative
    np.square(deriv, out=cum[1 + h:1 + h + len(deriv)])
    np.cumsum(cum, out=cum)
    energy = cum[w:w + len(deriv)] - cum[:len(deriv)]
    energy *= 1.0 / w
    return band, deriv, energy


def _flutter_mask(xd: np.ndarray, energy: np.ndarray, fw: float) -> np.ndarray:
    """True (at the working rate) inside ventricular flutter/fibrillation.

    A window is flutter when the QRS energy never falls back to a quiet baseline (its 10th percentile
    is a sizeable fraction of its 90th) and the raw signal is nearly a sinusoid: it cancels against
    itself shifted by half its mean period (Kuo & Dillman's VF-filter leakage is low).
    """
    size = int(round(_FLUTTER_WINDOW_S * fw))
    hop = size // 2
    mask = np.zeros(len(xd), bool)
    n = (len(xd) - size) // hop + 1 if len(xd) >= size else 0
    if n < 1:
        return mask
    cols = np.arange(0, size, max(1, int(fw // 60)))
    p10, p90 = len(cols) // 10, 9 * len(cols) // 10
    window = np.partition(energy[np.arange(n)[:, None] * hop + cols], [p10, p90], axis=1)
    floor = window[:, p10] / np.maximum(window[:, p90], 1e-300)
    todo = np.flatnonzero(floor > min(_FLUTTER_STRONG[1], _FLUTTER_WEAK[1]))
    if len(todo) == 0:
        return mask
    sos = sps.butter(2, [1.0, min(30.0, 0.4 * fw)], btype="bandpass", fs=fw, output="sos")
    y = sps.sosfiltfilt(sos, xd)
    seg = y[todo[:, None] * hop + np.arange(size)]
    seg -= seg.mean(axis=1, keepdims=True)
    wiggle = np.abs(np.diff(seg, axis=1)).sum(axis=1)
    half_period = np.pi * np.abs(seg).sum(axis=1) / np.maximum(wiggle, 1e-300)  # samples, as for a sinusoid
    half_period = np.clip(np.floor(half_period + 0.5).astype(np.int64), 1, size // 2)
    leakage = np.ones(n)
    for shift in np.unique(half_period):
        rows = np.flatnonzero(half_period == shift)
        a, b = seg[rows, shift:], seg[rows, :-shift]
        total = np.abs(a).sum(axis=1) + np.abs(b).sum(axis=1)
        leakage[todo[rows]] = np.abs(a + b).sum(axis=1) / np.maximum(total, 1e-300)
    strong = (leakage < _FLUTTER_STRONG[0]) & (floor > _FLUTTER_STRONG[1])
    weak = (leakage < _FLUTTER_WEAK[0]) & (floor > _FLUTTER_WEAK[1])
    run = np.cumsum(np.r_[1, np.diff(weak.astype(np.int8)) != 0])  # label runs of equal `weak`
    flagged = strong | (weak & np.isin(run, run[strong & weak]))
    for k in np.flatnonzero(flagged):
        mask[k * hop:k * hop + size] = True
    return mask


def _adaptive_threshold(cand: np.ndarray, height: np.ndarray, slope: np.ndarray, since: np.ndarray,
                        fw: float) -> np.ndarray:
    """Which candidates are QRS complexes: one pass with adaptive thresholds, searchback, T/P rejection."""
    refractory, t_wave, decay, halving = _REFRACTORY_S * fw, _T_WAVE_S * fw, _DECAY_S * fw, _HALVING_S * fw
    pos, hs, ss, quiet = cand.tolist(), height.tolist(), slope.tolist(), since.tolist()
    n = len(pos)
    # initial levels: the median over the first 16 s of each 2 s block's tallest peak is a QRS
    block = (cand // (2 * fw)).astype(np.int64)
    early = block < 8
    tallest = np.zeros(int(block[early].max()) + 1 if early.any() else 1)
    np.maximum.at(tallest, block[early], height[early])
    spk = float(np.median(tallest[tallest > 0])) if (tallest > 0).any() else float(height.max())
    low = height[early & (height < 0.3 * spk)]
    npk = float(np.median(low)) if len(low) else 0.1 * spk
    thr = npk + _THRESHOLD * (spk - npk)
    levels, rrs, rr = [spk], [], fw
    last, last_k, last_slope = -10.0 * fw, -1, 0.0
    previous: list[tuple[float, int, float]] = []  # (last, last_k, last_slope) before each acceptance
    keep = np.zeros(n, bool)

    def accept(k: int) -> None:
        nonlocal spk, rr, last, last_k, last_slope
        keep[k] = True
        levels.append(hs[k])
        if len(levels) > _LEVEL_BEATS:
            del levels[0]
        spk = sorted(levels)[(len(levels) - 1) // 2]
        if last_k >= 0:
            rrs.append(pos[k] - last)
            if len(rrs) > _LEVEL_BEATS:
                del rrs[0]
            rr = sorted(rrs)[len(rrs) // 2]
        previous.append((last, last_k, last_slope))
        if len(previous) > 4:
            del previous[0]
        last, last_k, last_slope = pos[k], k, ss[k]

    i = 0
    while i < n:
        c, h = pos[i], hs[i]
        if last_k >= 0 and c - last > _SEARCHBACK_RR * rr and i > last_k + 1:
            best, kb = -1.0, -1
            for k in range(last_k + 1, i):
                dt = pos[k] - last
                if dt > refractory and hs[k] > best and (dt >= t_wave or ss[k] >= _T_WAVE_SLOPE * last_slope):
                    best, kb = hs[k], k
            if kb >= 0 and best > _SEARCHBACK_LEVEL * thr:
                accept(kb)
                thr = npk + _THRESHOLD * (spk - npk)
                continue  # look at candidate i again, now after the recovered beat
        gap = c - max(last, quiet[i])
        th = thr * 0.5 ** ((gap - decay) / halving) if gap > decay else thr
        dt = c - last
        if h <= th:
            npk = 0.125 * h + 0.875 * npk
        elif dt >= t_wave or last_k < 0:
            if h <= thr:  # found only by the decayed threshold: the signal got smaller, start afresh
                levels.clear()
                npk = min(npk, 0.5 * h)
            accept(i)
        elif dt >= refractory and ss[i] < _T_WAVE_SLOPE * last_slope:
            npk = 0.125 * h + 0.875 * npk  # T wave
        elif dt < _P_WAVE_RR * rr and last_slope < _P_WAVE_SLOPE * ss[i] and hs[last_k] < _P_WAVE_HEIGHT * h:
            # the previous detection was a P wave or an artefact just before this, taller, QRS
            keep[last_k] = False
            npk = 0.125 * hs[last_k] + 0.875 * npk
            levels.pop()
            if rrs and previous and previous[-1][1] >= 0:
                rrs.pop()
            last, last_k, last_slope = previous.pop() if previous else (-10.0 * fw, -1, 0.0)
            accept(i)
        elif dt >= refractory:
            accept(i)
        else:
            npk = 0.125 * h + 0.875 * npk
        thr = npk + _THRESHOLD * (spk - npk)
        i += 1
    return keep


def _refine_to_r_peak(x: np.ndarray, xd: np.ndarray, band: np.ndarray, qrs: np.ndarray, q: int,
                      fw: float) -> np.ndarray:
    """Move each detection onto the QRS' largest deflection from baseline, in x's own sampling."""
    n, rows = len(xd), np.arange(len(qrs))

    def windows(centre: np.ndarray, half_s: float) -> np.ndarray:
        half = max(1, int(round(half_s * fw)))
        return np.clip(centre[:, None] + np.arange(-half, half + 1), 0, n - 1)

    near = windows(qrs, _REFINE_ANCHOR_S)
    anchor = near[rows, np.argmax(np.abs(band[near]), axis=1)]  # largest band-passed deflection
    near = windows(anchor, _REFINE_PEAK_S)
    baseline = np.median(xd[windows(anchor, _REFINE_BASELINE_S)], axis=1, keepdims=True)
    deviation = xd[near] - baseline
    k = np.argmax(np.abs(deviation), axis=1)
    sign = np.sign(deviation[rows, k])
    sign[sign == 0] = 1.0
    peak = near[rows, k] * q + (q - 1) // 2
    if q > 1:  # the same extremum in the original samples
        near = np.clip(peak[:, None] + np.arange(-q - 1, q + 2), 0, len(x) - 1)
        peak = near[rows, np.argmax(x[near] * sign[:, None], axis=1)]
    return np.unique(peak).astype(np.int64)
