"""Quality stage: which stretches of each lead are too noisy to trust, and R-peaks fused across leads.

`lead_quality` gives one verdict per window of one lead from established signal-quality indices
(Li, Clark & Clifford 2008, "Robust heart rate estimation from multiple asynchronous noisy
sources", Physiol Meas 29:15-32; Clifford et al. 2012, "Signal quality indices and data fusion for
determining clinical acceptability of electrocardiograms", Physiol Meas 33:1419-1433), combined by a
small logistic model fitted on MIT-BIH DS1 records with synthetic noise (docs/quality.md):

- bSQI twice: agreement of our `detect_r_peaks` (squared slope, 4-20 Hz) with a second, deliberately
  simple detector on another feature (curve length, as Zong's wqrs) in the 5-15 Hz band, and with the
  same detector in the 15-35 Hz band: matched beats / beats of either, 150 ms tolerance. Noise that
  fools one detector rarely fools the other the same way (muscle noise is loud at 15-35 Hz, electrode
  motion at 1-10 Hz);
- kSQI: kurtosis of the 1-40 Hz window (an ECG is spiky, noise is not);
- pSQI: power 5-15 Hz over 5-40 Hz (QRS energy against muscle noise);
- basSQI: power below 1 Hz over power below 40 Hz (baseline wander);
- the window's 1-40 Hz RMS and beat count relative to the median window of the array (noise adds
  energy and false beats);

and, whatever the model says, two hard limits: a flat or clipped line (most samples repeat their
predecessor) and more beats than a heart can make.

`fuse_leads` combines the leads: per window only the leads that are not noisy vote; a beat is kept
when more than half of the clean leads found it, ties going to the preferred lead (the first clean
one in the caller's order) unless another clean lead is clearly less likely noisy: noise on one lead
neither adds nor removes beats. A beat only one lead found, splitting a cycle that another lead saw
whole (both its cycles shorter than max_split_share of the local median cycle), is dropped: electrode
motion on one lead fakes such beats between true ones. So is a beat only one lead found, close to a
neighbour (a cycle shorter than template_cycle_share of the local median), whose QRS correlates with no
lead's template (the median of the beats every lead found) above min_template_correlation: template
matching is Clifford's tSQI applied to one beat; an early ventricular beat that only one lead shows
matches no template either, but the other lead almost always shows it, so the test asks for both.
Windows where every lead is noisy are noise segments, unless the leads still agree on the beats (at
least min_lead_agreement of them found by a majority of the leads: muscle noise that leaves every QRS
readable); their beats come from the least noisy lead, and the segments are returned so that later
stages can leave them out. The reported
R-peak is the preferred lead's, so R-peaks only move to another lead's QRS extremum where they must.

Everything is a pure function of the arrays passed, so long recordings may be processed in chunks.
Imports only numpy, scipy, ecg_rnn.errors and ecg_rnn.signal.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
from scipy import fft as sp_fft
from scipy import signal as sps
from scipy.ndimage import maximum_filter1d, median_filter, minimum_filter1d

from ecg_rnn.errors import SignalError
from ecg_rnn.signal import detect_r_peaks


@dataclass(frozen=True)
class QualityConfig:
    """Window length and the limits that make a window noisy (selected on DS1, see docs/quality.md)."""

    window_s: float = 5.0  # one verdict per window of this length
    match_tolerance_s: float = 0.15  # two detectors agree on a beat this close
    max_noise_probability: float = 0.9  # the model's probability of noise above which a window is noisy
    max_flat_share: float = 0.5  # noisy: more samples than this repeat their predecessor (flat, clipped)
    max_rate_bpm: float = 300.0  # noisy: more beats than this rate in a window
    # a beat one lead alone found, between two beats another lead found, is a phantom when both its
    # cycles are shorter than this share of the local median cycle (0: keep every voted beat)
    max_split_share: float = 0.75
    # where every lead is noisy, the window stays readable (no noise segment) when at least this share of
    # its beats were found by a majority of the leads: independent noise rarely fakes the same beat in
    # several leads (above 1: every such window is a noise segment; a single lead has no agreement)
    min_lead_agreement: float = 0.8
    # a beat one lead alone found, with a cycle on either side shorter than this share of the local median
    # cycle, is a phantom when its QRS matches the record's own beats in no lead: correlation with each
    # lead's template below min_template_correlation (0: no template test)
    template_cycle_share: float = 0.6
    min_template_correlation: float = 0.7


@dataclass(frozen=True)
class FusedPeaks:
    """R-peaks fused from several leads."""

    samples: np.ndarray  # int64, sorted R-peak samples
    lead: np.ndarray  # int64 per beat: the lead whose peak is reported (the first clean lead that found it)
    noisy: np.ndarray  # bool (windows, leads): lead_quality of every lead
    noise_segments: list[tuple[float, float]]  # (start_s, end_s) where every lead is noisy and they disagree
    probability: np.ndarray  # float (windows, leads): the quality model's probability of noise
    lead_offsets: np.ndarray  # int64 per lead: where its R-peaks fall against the first lead's (_lead_offsets)


_FUSE_TOLERANCE_S = 0.1  # peaks of different leads this close are one beat (QRS extrema differ by lead)
_LEAD_THREADS = 2  # leads judged at once (the machines this targets have two cores or more)
_SPLIT_CONTEXT_CYCLES = 21  # the local median cycle of a phantom's test spans this many cycles
_TEMPLATE_HALF_S = 0.1  # the template test compares the 1-40 Hz signal within this of the R-peak
_TEMPLATE_MIN_BEATS = 8  # fewer beats found by every lead than this: no template, no test
_TEMPLATE_MAX_BEATS = 300  # the template is the median of at most this many of them, evenly spread
_TIE_MARGIN = 0.5  # a clean lead this much less likely noisy than the preferred one settles ties
_OFFSET_MIN_BEATS = 8  # a lead's R-peak offset needs this many beats found by it and the first lead
_WORK_FS = 100.0  # features are computed after decimating by the largest integer keeping this rate
_BAND_HZ = (1.0, 40.0)  # kurtosis and RMS are taken on this band (baseline and mains removed)
_QRS_BAND_HZ = (5.0, 15.0)
_HIGH_QRS_BAND_HZ = (15.0, 35.0)
_ECG_BAND_HZ = (5.0, 40.0)
_BASELINE_HZ = 1.0
_LENGTH_S = 0.13  # curve-length window of the second detector (as in Zong's wqrs)
_SECOND_REFRACTORY_S = 0.25
_SECOND_LEVEL_S = 4.0  # its threshold: a share of the largest curve length within this...
_SECOND_THRESHOLD = 0.3  # ...this share
# Logistic model of P(noisy window): weights of FEATURES and the bias, fitted on MIT-BIH DS1 lead 0
# (clean windows against windows with synthetic em/ma noise at 6 and 0 dB; bw counted as clean) by
# `python -m benchmarks.rhythm --quality` (which also selects max_noise_probability).
FEATURES = ("bsqi", "bsqi_high", "log_kurtosis", "qrs_power_ratio", "baseline_power_ratio",
            "log_relative_rms", "log_relative_beats")
_WEIGHTS = np.array([-1.383, -11.540, -1.394, -3.726, -3.482, 5.276, 3.746])
_BIAS = 17.050


def lead_quality(x: np.ndarray, fs: float, config: QualityConfig = QualityConfig(),
                 peaks: np.ndarray | None = None) -> np.ndarray:
    """One bool per window_s window of a single lead (the last window ends at the lead's end): True
    where the lead is too noisy to trust. peaks: detect_r_peaks(x, fs) when already computed."""
    return _quality(x, fs, config, peaks)[0]


def window_features(x: np.ndarray, fs: float, config: QualityConfig = QualityConfig(),
                    peaks: np.ndarray | None = None) -> np.ndarray:
    """The model's FEATURES, one row per window_s window of a single lead."""
    return _features(x, fs, config, peaks)[0]


def noise_segments(mask: np.ndarray, window_s: float, duration_s: float | None = None) -> list[tuple[float, float]]:
    """(start_s, end_s) of each run of consecutive noisy windows; the last end is clipped to
    duration_s when given (the last window of a signal may be partial)."""
    flags = np.r_[False, np.asarray(mask, dtype=bool).reshape(-1), False]
    edges = np.flatnonzero(np.diff(flags.astype(np.int8)))
    limit = np.inf if duration_s is None else float(duration_s)
    return [(float(a * window_s), float(min(b * window_s, limit))) for a, b in zip(edges[::2], edges[1::2])]


def fuse_leads(leads: np.ndarray, fs: float, config: QualityConfig = QualityConfig(),
               peaks: Sequence[np.ndarray] | None = None) -> FusedPeaks:
    """R-peaks from every lead of leads (samples x leads, in order of preference), trusting per window
    only the leads lead_quality finds clean. peaks: detect_r_peaks of each lead when already computed."""
    x = np.asarray(leads, dtype=np.float64)
    if x.ndim == 1:
        x = x[:, None]
    if x.ndim != 2:
        raise SignalError(f"expected a (samples, leads) array, got shape {x.shape}")
    if peaks is not None and len(peaks) != x.shape[1]:
        raise SignalError(f"got R-peaks for {len(peaks)} leads but the signal has {x.shape[1]}")
    # each lead on its own thread: filtering, R-peak detection and medians release the GIL, so two
    # cores judge two leads at once
    with ThreadPoolExecutor(max_workers=min(x.shape[1], _LEAD_THREADS)) as pool:
        per_lead = list(pool.map(lambda lead: _quality(x[:, lead], fs, config, None if peaks is None else peaks[lead]),
                                 range(x.shape[1])))
    noisy = np.column_stack([flags for flags, _, _, _ in per_lead])
    probability = np.column_stack([p for _, p, _, _ in per_lead])
    # the preferred lead per window is the first clean one in the caller's order (R-peak positions
    # differ by lead, so switching only where needed keeps RR intervals smooth), the least noisy one
    # where all are noisy; it reports the R-peaks and settles ties, unless another clean lead is
    # clearly less noisy (a lead without a flag may still carry some noise)
    rows = np.arange(len(noisy))
    least_noisy = np.argmin(noisy + probability, axis=1)
    preferred = np.where(noisy.all(axis=1), least_noisy, np.argmin(noisy, axis=1))
    clearly = probability[rows, preferred] - probability[rows, least_noisy] > _TIE_MARGIN
    tie_break = np.where(clearly, least_noisy, preferred)
    window = int(round(config.window_s * fs))
    lead_peaks = [p for _, _, p, _ in per_lead]
    tolerance = int(round(_FUSE_TOLERANCE_S * fs))
    grouped = _grouped(lead_peaks, tolerance)  # the vote and the lead agreement judge the same beats
    samples, lead = _vote(grouped, noisy, tie_break, preferred, window)
    keep = ~_split_cycles(samples, lead_peaks, tolerance, config.max_split_share)
    samples, lead = samples[keep], lead[keep]
    keep = ~_template_mismatches([band for _, _, _, band in per_lead], fs, samples, lead_peaks, tolerance, config)
    samples, lead = samples[keep], lead[keep]
    unreadable = noisy.all(axis=1) & (_agreement(grouped, len(noisy), window) < config.min_lead_agreement)
    return FusedPeaks(samples, lead, noisy, noise_segments(unreadable, config.window_s, len(x) / fs), probability,
                      _lead_offsets(grouped))


def _lead_offsets(grouped: _Grouped) -> np.ndarray:
    """Per lead, the median of its R-peak sample minus the first lead's over the beats both found (0 for the
    first lead and for a lead sharing fewer than _OFFSET_MIN_BEATS beats with it). QRS extrema fall at
    lead-specific times: a beat another lead reports sits about this far from where the first lead puts it,
    and a window cut there from the first lead is shifted by as much."""
    sample, lead, beat, _, leads = grouped
    offsets = np.zeros(leads, np.int64)
    if len(sample) == 0:
        return offsets
    first_lead_at = np.full(beat[-1] + 1, -1, np.int64)
    first_lead_at[beat[lead == 0]] = sample[lead == 0]
    for k in range(1, leads):
        shared = (lead == k) & (first_lead_at[beat] >= 0)
        if shared.sum() >= _OFFSET_MIN_BEATS:
            offsets[k] = int(round(float(np.median(sample[shared] - first_lead_at[beat[shared]]))))
    return offsets


def lead_agreement(peaks: Sequence[np.ndarray], windows: int, window: int, tolerance: int) -> np.ndarray:
    """Per window: the share of its beats (peaks of all leads, those closer than tolerance being one
    beat) that more than half of the leads found (both of two); 0 with a single lead, 1 where no lead
    found a beat. A majority, not any two: with many leads, noise beats of two leads coincide by chance."""
    return _agreement(_grouped(peaks, tolerance), windows, window)


def _agreement(grouped: _Grouped, windows: int, window: int) -> np.ndarray:
    """lead_agreement of peaks already grouped into beats."""
    sample, lead, beat, first, leads = grouped
    if len(sample) == 0:
        return np.ones(windows)
    if leads < 2:
        return np.zeros(windows)
    leads_per_beat = np.bincount(np.unique(beat * leads + lead) // leads, minlength=beat[-1] + 1)
    win = np.minimum(sample[first] // window, windows - 1)
    beats = np.bincount(win, minlength=windows)
    shared = np.bincount(win, weights=2 * leads_per_beat > leads, minlength=windows)
    return np.where(beats > 0, shared / np.maximum(beats, 1), 1.0)


class _Grouped(NamedTuple):
    """Peaks of all leads in time order, and the beats they form."""

    sample: np.ndarray  # int64 per peak
    lead: np.ndarray  # int64 per peak: the lead that found it
    beat: np.ndarray  # int64 per peak: its beat (peaks closer than the tolerance are one beat)
    first: np.ndarray  # int64 per beat: the index of its first peak
    leads: int  # how many leads were given


def _grouped(peaks: Sequence[np.ndarray], tolerance: int) -> _Grouped:
    """The peaks of every lead grouped into beats."""
    sample = np.concatenate([np.asarray(p, dtype=np.int64) for p in peaks])
    lead = np.concatenate([np.full(len(p), k, np.int64) for k, p in enumerate(peaks)])
    order = np.lexsort((lead, sample))
    sample, lead = sample[order], lead[order]
    beat = np.r_[0, np.cumsum(np.diff(sample) > tolerance)] if len(sample) else np.zeros(0, np.int64)
    first = np.r_[0, np.flatnonzero(np.diff(beat)) + 1] if len(sample) else np.zeros(0, np.int64)
    return _Grouped(sample, lead, beat, first, len(peaks))


def _vote(grouped: _Grouped, noisy: np.ndarray, tie_break: np.ndarray, preferred: np.ndarray,
          window: int) -> tuple[np.ndarray, np.ndarray]:
    """Fused R-peak samples and the lead each is taken from.

    Peaks of all leads are grouped into beats (peaks closer than the tolerance); each beat is judged in
    the window of its earliest peak: it is kept when more than half of the clean leads found it, or
    exactly half including the tie_break lead; where every lead is noisy, the tie_break lead (then
    the least noisy) decides alone. The reported sample is the preferred lead's peak when it found the beat, else that
    of the voter with the lowest index.
    """
    sample, lead, beat, first, leads = grouped
    if len(sample) == 0:
        return sample, lead
    beats = beat[-1] + 1
    win = np.minimum(sample[first] // window, len(preferred) - 1)[beat]  # each peak judged in its beat's window
    all_noisy = noisy.all(axis=1)[win]
    voter = ~noisy[win, lead] | (all_noisy & (lead == tie_break[win]))
    voting_pairs = np.unique(beat[voter] * leads + lead[voter])  # a lead votes once per beat
    votes = np.bincount(voting_pairs // leads, minlength=beats)
    needed = np.where(all_noisy, 1, (~noisy).sum(axis=1)[win])[first]
    has_tie_break = np.bincount(beat, weights=voter & (lead == tie_break[win]), minlength=beats) > 0
    keep = (2 * votes > needed) | ((2 * votes == needed) & has_tie_break)
    rank = np.where(voter, np.where(lead == preferred[win], -1, lead), leads)
    pick = np.lexsort((rank, beat))
    chosen = pick[np.r_[0, np.flatnonzero(np.diff(beat[pick])) + 1]]
    return sample[chosen][keep], lead[chosen][keep]


def _split_cycles(samples: np.ndarray, lead_peaks: list[np.ndarray], tolerance: int, max_share: float
                  ) -> np.ndarray:
    """Per fused beat: True where exactly one lead found it, another lead found both its neighbours,
    and both its cycles are shorter than max_share of the median of the 21 cycles around it (a dead
    lead finds no neighbours, so a single-lead recording or a flat lead drops nothing)."""
    if max_share <= 0 or len(lead_peaks) < 2 or len(samples) < 3:
        return np.zeros(len(samples), bool)
    found = _found_by(samples, lead_peaks, tolerance)
    alone = found.sum(axis=1) == 1
    others = ~found & alone[:, None]  # for a beat one lead found: the leads that did not find it
    neighbours_seen = np.zeros_like(found)
    neighbours_seen[1:-1] = found[:-2] & found[2:]
    before, after = _relative_cycles(samples)
    return alone & (others & neighbours_seen).any(axis=1) & (before < max_share) & (after < max_share)


def _found_by(samples: np.ndarray, lead_peaks: list[np.ndarray], tolerance: int) -> np.ndarray:
    """bool (beats, leads): which leads found each fused beat."""
    return np.column_stack([_within(samples, np.asarray(p, dtype=np.int64), tolerance) for p in lead_peaks])


def _relative_cycles(samples: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per beat, the cycle before and the cycle after it over the median of the cycles around it
    (inf where there is none)."""
    cycles = np.diff(samples).astype(np.float64)
    ratio = cycles / median_filter(cycles, size=_SPLIT_CONTEXT_CYCLES, mode="nearest")
    return np.r_[np.inf, ratio], np.r_[ratio, np.inf]


def _template_mismatches(bands: list[np.ndarray], fs: float, samples: np.ndarray, lead_peaks: list[np.ndarray],
                         tolerance: int, config: QualityConfig) -> np.ndarray:
    """Per fused beat: True where exactly one lead found it, a cycle on either side is shorter than
    template_cycle_share of the local median, and its QRS correlates with no lead's template above
    min_template_correlation. bands: each lead's 1-40 Hz signal at the working rate (_features)."""
    none = np.zeros(len(samples), bool)
    if config.template_cycle_share <= 0 or len(lead_peaks) < 2 or len(samples) < 3:
        return none
    found = _found_by(samples, lead_peaks, tolerance)
    close = np.minimum(*_relative_cycles(samples)) < config.template_cycle_share
    suspects = np.flatnonzero((found.sum(axis=1) == 1) & close)
    agreed = np.flatnonzero(found.all(axis=1))
    if len(suspects) == 0 or len(agreed) < _TEMPLATE_MIN_BEATS:
        return none
    agreed = agreed[np.linspace(0, len(agreed) - 1, min(len(agreed), _TEMPLATE_MAX_BEATS)).astype(int)]
    best = np.full(len(suspects), -1.0)
    for band in bands:
        windows = _qrs_windows(band, fs, samples[np.r_[agreed, suspects]])
        template = np.median(windows[:len(agreed)], axis=0)
        best = np.maximum(best, _correlation(windows[len(agreed):], template))
    out = none.copy()
    out[suspects] = best < config.min_template_correlation
    return out


def _qrs_windows(band: np.ndarray, fs: float, samples: np.ndarray) -> np.ndarray:
    """A lead's 1-40 Hz signal at the working rate within _TEMPLATE_HALF_S of each sample (samples at fs)."""
    q = _decimation(fs)
    half = max(1, int(round(_TEMPLATE_HALF_S * fs / q)))
    centres = np.clip(np.asarray(samples) // q, half, max(half, len(band) - half - 1))
    return band[np.clip(centres[:, None] + np.arange(-half, half + 1), 0, len(band) - 1)]


def _correlation(windows: np.ndarray, template: np.ndarray) -> np.ndarray:
    """Pearson correlation of each row with the template."""
    a = windows - windows.mean(axis=1, keepdims=True)
    b = template - template.mean()
    return a @ b / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b), 1e-12)


def _within(samples: np.ndarray, peaks: np.ndarray, tolerance: int) -> np.ndarray:
    """Per sample: whether a peak of the sorted peaks lies within tolerance."""
    if len(peaks) == 0:
        return np.zeros(len(samples), bool)
    right = np.clip(np.searchsorted(peaks, samples), 0, len(peaks) - 1)
    left = np.maximum(right - 1, 0)
    return np.minimum(np.abs(peaks[right] - samples), np.abs(peaks[left] - samples)) <= tolerance


def _quality(x: np.ndarray, fs: float, config: QualityConfig, peaks: np.ndarray | None
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(noisy flags, noise probability, R-peaks, 1-40 Hz signal at the working rate) of one lead."""
    features, flat, beats, peaks, ecg = _features(x, fs, config, peaks)
    probability = 1.0 / (1.0 + np.exp(-(features @ _WEIGHTS + _BIAS)))
    noisy = ((probability > config.max_noise_probability) | (flat > config.max_flat_share)
             | (beats > config.max_rate_bpm / 60.0 * config.window_s))
    return noisy, probability, peaks, ecg


def _features(x: np.ndarray, fs: float, config: QualityConfig, peaks: np.ndarray | None
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(FEATURES per window, share of repeated samples per window, beats per window, R-peaks, the 1-40 Hz
    signal at the working rate)."""
    x = np.asarray(x, dtype=np.float64).reshape(-1)
    window = int(round(config.window_s * fs))
    if len(x) < window or window < fs:
        raise SignalError(f"signal is {len(x) / fs:.2f} s long; quality needs at least one "
                          f"{config.window_s:g} s window of at least 1 s")
    if not np.isfinite(x).all():
        raise SignalError("signal holds NaN or infinite samples; bridge or drop them before the quality stage")
    starts = _window_starts(len(x), window)
    peaks = _peaks_or_none(x, fs) if peaks is None else np.asarray(peaks, dtype=np.int64)
    q = _decimation(fs)
    xd, fw = _decimate(x, q), fs / q
    band = _band_limiter(xd, fw)
    tolerance = int(round(config.match_tolerance_s * fs))

    def agreement(band_hz: tuple[float, float]) -> np.ndarray:
        second = _second_detector(band(*band_hz), fw) * q + (q - 1) // 2
        return _bsqi(peaks, second, starts, window, tolerance)

    ecg = band(*_BAND_HZ)
    squared = ecg * ecg
    moments = [_window_sums(power, starts // q, window // q) / (window // q)
               for power in (ecg, squared, squared * ecg, squared * squared)]
    qrs_ratio, baseline_ratio = _spectral_ratios(xd[_window_rows(starts // q, window // q, len(xd))], fw)
    beats = np.bincount(_window_of(peaks, starts, window), minlength=len(starts))
    variance, kurtosis = _central_moments(*moments)
    rms = np.sqrt(variance)
    features = np.column_stack([
        agreement(_QRS_BAND_HZ), agreement(_HIGH_QRS_BAND_HZ), np.log(np.maximum(kurtosis, 1e-12)),
        qrs_ratio, baseline_ratio,
        np.log(np.maximum(rms, 1e-300) / max(float(np.median(rms)), 1e-300)),
        np.log((beats + 1.0) / (np.median(beats) + 1.0))])
    repeated = np.zeros(len(x))
    repeated[1:] = x[1:] == x[:-1]
    flat = _window_sums(repeated, starts, window) / window
    return features, flat, beats, peaks, ecg


def _peaks_or_none(x: np.ndarray, fs: float) -> np.ndarray:
    """detect_r_peaks, or no peaks where it finds no heartbeat (a flat or destroyed lead)."""
    try:
        return detect_r_peaks(x, fs)
    except SignalError:
        return np.zeros(0, np.int64)


def _window_starts(n: int, window: int) -> np.ndarray:
    """Start of each window; the last one is moved back to end at the signal's end."""
    count = -(-n // window)
    return np.minimum(np.arange(count) * window, n - window)


def _window_rows(starts: np.ndarray, length: int, n: int) -> np.ndarray:
    """Index matrix (windows, length) into a signal of n samples."""
    return np.minimum(starts[:, None] + np.arange(length), n - 1)


def _window_of(samples: np.ndarray, starts: np.ndarray, window: int) -> np.ndarray:
    """Which window each sample belongs to (the last window owns the tail)."""
    return np.minimum(np.asarray(samples, dtype=np.int64) // window, len(starts) - 1)


def _decimation(fs: float) -> int:
    """The largest integer factor that keeps the working rate at _WORK_FS or above."""
    return max(1, int(fs // _WORK_FS))


def _decimate(x: np.ndarray, q: int) -> np.ndarray:
    if q == 1:
        return x
    n = len(x) // q * q
    return x[:n].reshape(-1, q).mean(axis=1)


def _band_limiter(x: np.ndarray, fs: float):
    """A function giving x limited to a frequency band (zero phase, by one FFT shared by all bands)."""
    size = sp_fft.next_fast_len(len(x), real=True)
    spectrum = sp_fft.rfft(x, n=size)
    f = sp_fft.rfftfreq(size, 1.0 / fs)

    def band(low: float, high: float) -> np.ndarray:
        return sp_fft.irfft(spectrum * ((f >= low) & (f < min(high, 0.45 * fs))), n=size)[:len(x)]

    return band


def _second_detector(band: np.ndarray, fw: float) -> np.ndarray:
    """A deliberately simple QRS detector on another feature than detect_r_peaks: curve length of the
    band-limited signal over 130 ms above its floor (the smallest value of its 1-s block and the
    next); peaks at least 250 ms apart above 30 % of the largest value within 4 s. Returns samples at
    the working rate fw."""
    span = max(1, int(round(_LENGTH_S * fw)))
    travelled = np.zeros(len(band))
    np.cumsum(np.abs(np.diff(band)), out=travelled[1:])
    length = np.zeros(len(band))  # curve length over the span centred on each sample
    length[span // 2:span // 2 + len(band) - span] = travelled[span:] - travelled[:-span]
    block = max(1, int(round(fw)))
    blocks = np.concatenate([length, np.zeros(-len(length) % block)]).reshape(-1, block)
    floor = minimum_filter1d(blocks.min(axis=1), 2)
    level = maximum_filter1d(blocks.max(axis=1), int(_SECOND_LEVEL_S)) - floor
    length -= floor[np.arange(len(length)) // block]
    peaks, _ = sps.find_peaks(length, distance=max(1, int(_SECOND_REFRACTORY_S * fw)))
    return peaks[length[peaks] > _SECOND_THRESHOLD * level[peaks // block]]


def _bsqi(first: np.ndarray, second: np.ndarray, starts: np.ndarray, window: int, tolerance: int) -> np.ndarray:
    """Per window: beats both detectors found / beats either found (1 where neither found any)."""
    matched = np.zeros(len(first), bool)
    if len(first) and len(second):
        j = np.searchsorted(second, first)
        after = second[np.minimum(j, len(second) - 1)]
        before = second[np.maximum(j - 1, 0)]
        matched = np.minimum(np.abs(after - first), np.abs(first - before)) <= tolerance
    count = len(starts)
    both = np.bincount(_window_of(first[matched], starts, window), minlength=count)
    either = (np.bincount(_window_of(first, starts, window), minlength=count)
              + np.bincount(_window_of(second, starts, window), minlength=count) - both)
    # a beat near a window edge may match across it: clip the rare ratio above 1
    return np.where(either > 0, np.minimum(both / np.maximum(either, 1), 1.0), 1.0)


def _window_sums(v: np.ndarray, starts: np.ndarray, length: int) -> np.ndarray:
    """Sum of v over each window [start, start + length) (windows end inside v)."""
    bounds = np.column_stack([starts, starts + length]).ravel()
    return np.add.reduceat(np.concatenate([v, [0.0]]), bounds)[::2]


def _central_moments(m1: np.ndarray, m2: np.ndarray, m3: np.ndarray, m4: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Variance and Pearson kurtosis (3 for Gaussian noise) from the raw moments of each window."""
    variance = np.maximum(m2 - m1 ** 2, 1e-300)
    fourth = m4 - 4 * m1 * m3 + 6 * m1 ** 2 * m2 - 3 * m1 ** 4
    return variance, fourth / variance ** 2


def _spectral_ratios(w: np.ndarray, fw: float) -> tuple[np.ndarray, np.ndarray]:
    """Per row: power 5-15 Hz / 5-40 Hz, and power under 1 Hz / under 40 Hz (mean removed)."""
    spectrum = np.abs(np.fft.rfft(w - w.mean(axis=1, keepdims=True), axis=1)) ** 2
    f = np.fft.rfftfreq(w.shape[1], 1.0 / fw)

    def power(low: float, high: float) -> np.ndarray:
        return spectrum[:, (f >= low) & (f < high)].sum(axis=1)

    ecg = np.maximum(power(*_ECG_BAND_HZ), 1e-300)
    total = np.maximum(power(0.0, _ECG_BAND_HZ[1]), 1e-300)
    return power(*_QRS_BAND_HZ) / ecg, power(0.0, _BASELINE_HZ) / total
