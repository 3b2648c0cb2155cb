"""Rhythm stage: atrial fibrillation (and flutter with variable block) episodes from beat times alone.

In atrial fibrillation the ventricles are driven by a chaotic atrial activity: the RR intervals
are irregular *and* never repeat a pattern. Ectopic beats make sinus rhythm just as irregular, but
in patterns that recur (a premature beat with its fixed coupling interval and compensatory pause,
bigeminy, trigeminy), so irregularity alone calls ectopy AF. This stage therefore measures how far
each short RR pattern is from the closest other pattern of the same window, the idea behind
sample entropy (Richman & Moorman 2000) and its AF detector, the coefficient of sample entropy
(Lake & Moorman 2011), and behind Lorenz-plot dispersion detectors (Sarkar, Ritscher & Mehra 2008):

1. the beat series is split where a noise segment or a gap longer than max_rr_s interrupts it;
2. windows of window_beats RR intervals (every step_beats intervals) are embedded as points of
   `embedding` consecutive intervals; each point's Chebyshev distance to its nearest neighbour in the
   window is taken, and the window's *dispersion* is the median of those distances over the median
   RR (dimensionless, so any heart rate and sampling rate work). Recurring patterns, however
   irregular, have close neighbours (dispersion of a few %); AF's random intervals do not;
3. a second, classic sign of ectopy gates it: a premature beat's short interval followed by its
   compensatory pause makes successive RR intervals anti-correlated, while in AF they are nearly
   independent, so windows whose lag-1 RR autocorrelation is below min_serial_correlation are not AF;
4. each RR interval takes the measures of the window centred nearest to it; with hysteresis, AF
   starts where the dispersion reaches enter_dispersion and lasts while it stays above
   hold_dispersion; episodes closer than merge_gap_s are merged and those shorter than min_episode_s
   (30 s, the clinical definition of an AF episode) dropped.

Parameters were selected by leave-one-record-out over all 48 MIT-BIH records; a DS1-only selection
(two AF records) did not carry over to DS2 (docs/evaluation/rhythm.md has both).
Imports only numpy and ecg_rnn.errors.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ecg_rnn.errors import SignalError

AF = "AF"
_WINDOW_BLOCK = 2048  # windows compared at once (bounds memory on 24-hour recordings)


@dataclass(frozen=True)
class RhythmConfig:
    """AF detection settings (selected by leave-one-record-out over the 48 MIT-BIH records, see
    docs/evaluation/rhythm.md for the out-of-fold figures and the DS1-only selection)."""

    window_beats: int = 32  # RR intervals per analysis window
    step_beats: int = 4  # a window starts every this many intervals
    embedding: int = 3  # consecutive RR intervals per pattern
    min_serial_correlation: float = -0.4  # windows whose RR lag-1 autocorrelation is below this are not AF
    enter_dispersion: float = 0.08  # AF starts where the window dispersion reaches this...
    hold_dispersion: float = 0.068  # ...and goes on while it stays at or above this
    merge_gap_s: float = 10.0  # episodes closer than this are one episode
    min_episode_s: float = 30.0  # shorter episodes are dropped
    max_rr_s: float = 3.0  # a longer gap between beats (asystole, lost signal) interrupts the analysis

    def __post_init__(self):
        if not 2 <= self.embedding < self.window_beats // 2:
            raise ValueError(f"embedding must be at least 2 and under half of window_beats ({self.window_beats})")
        if self.step_beats < 1:
            raise ValueError("step_beats must be at least 1")
        if self.hold_dispersion > self.enter_dispersion:
            raise ValueError("hold_dispersion must not exceed enter_dispersion")


@dataclass(frozen=True)
class Episode:
    """One rhythm episode, in seconds from the recording's start."""

    kind: str
    start_s: float
    end_s: float

    @property
    def duration_s(self) -> float:
        return self.end_s - self.start_s


def af_episodes(beat_times_s: np.ndarray, config: RhythmConfig = RhythmConfig(),
                noise_segments: Sequence[tuple[float, float]] = ()) -> list[Episode]:
    """AF episodes (kind "AF") from R-peak times in seconds; beats inside noise_segments (start_s,
    end_s) are ignored and the analysis does not run across them."""
    t = _checked_times(beat_times_s)
    spans: list[list[float]] = []
    for run in _clean_runs(t, noise_segments, config.max_rr_s):
        spans += _af_spans(run, config)
    return [Episode(AF, start, end) for start, end in _merged(spans, config.merge_gap_s)
            if end - start >= config.min_episode_s]


def in_episodes(times_s: np.ndarray, episodes: Sequence[Episode]) -> np.ndarray:
    """True for each time that falls inside one of the episodes (start inclusive, end exclusive)."""
    times = np.asarray(times_s, dtype=np.float64)
    if not episodes:
        return np.zeros(times.shape, bool)
    ordered = sorted(episodes, key=lambda e: e.start_s)
    starts = np.array([e.start_s for e in ordered])
    ends = np.maximum.accumulate(np.array([e.end_s for e in ordered]))  # overlapping episodes nest
    k = np.searchsorted(starts, times, side="right") - 1
    return (k >= 0) & (times < ends[np.maximum(k, 0)])


def rr_dispersion(rr_s: np.ndarray, config: RhythmConfig = RhythmConfig()) -> np.ndarray:
    """Per RR interval: the dispersion of the window centred nearest to it (see the module doc).
    Needs at least window_beats intervals."""
    return _window_measures(np.asarray(rr_s, dtype=np.float64), config)[0]


def rr_serial_correlation(rr_s: np.ndarray, config: RhythmConfig = RhythmConfig()) -> np.ndarray:
    """Per RR interval: the lag-1 autocorrelation of the RR intervals of the window centred nearest
    to it; strongly negative where premature beats and their compensatory pauses alternate."""
    return _window_measures(np.asarray(rr_s, dtype=np.float64), config)[1]


def _window_measures(rr: np.ndarray, config: RhythmConfig) -> tuple[np.ndarray, np.ndarray]:
    """(dispersion, lag-1 autocorrelation) of the windows, each interval taking its nearest window's."""
    w, step = config.window_beats, config.step_beats
    if len(rr) < w:
        raise SignalError(f"{len(rr)} RR intervals are too few for a {w}-interval window")
    starts = np.arange(0, len(rr) - w + 1, step)
    if starts[-1] != len(rr) - w:
        starts = np.r_[starts, len(rr) - w]
    measures = [_window_dispersion_and_correlation(rr[block[:, None] + np.arange(w)], config.embedding)
                for block in np.array_split(starts, -(-len(starts) // _WINDOW_BLOCK))]
    centres = starts + w / 2.0
    nearest = np.searchsorted((centres[1:] + centres[:-1]) / 2.0, np.arange(len(rr)) + 0.5)
    return (np.concatenate([d for d, _ in measures])[nearest],
            np.concatenate([c for _, c in measures])[nearest])


def _checked_times(beat_times_s: np.ndarray) -> np.ndarray:
    try:
        t = np.asarray(beat_times_s, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError):
        raise SignalError("beat times must be numbers (seconds)") from None
    if not np.isfinite(t).all():
        raise SignalError("beat times hold NaN or infinite values; pass finite R-peak times in seconds")
    return np.unique(t)


def _clean_runs(t: np.ndarray, noise_segments: Sequence[tuple[float, float]], max_rr_s: float) -> list[np.ndarray]:
    """The beat times split into runs: no beat inside a noise segment, no noise segment and no gap
    longer than max_rr_s between two beats of a run."""
    segments = sorted((float(a), float(b)) for a, b in noise_segments if b > a)
    breaks = np.diff(t) > max_rr_s
    if segments:
        starts, ends = np.array(segments).T
        ends = np.maximum.accumulate(ends)
        k = np.searchsorted(ends, t, side="right")  # first segment ending after each beat
        inside = (k < len(starts)) & (starts[np.minimum(k, len(starts) - 1)] <= t)
        t = t[~inside]
        k = np.searchsorted(ends, t[:-1], side="right")
        breaks = (np.diff(t) > max_rr_s) | ((k < len(starts)) & (starts[np.minimum(k, len(starts) - 1)] < t[1:]))
    return np.split(t, np.flatnonzero(breaks) + 1)


def _af_spans(t: np.ndarray, config: RhythmConfig) -> list[list[float]]:
    """[start_s, end_s] of the AF stretches of one uninterrupted run of beats."""
    rr = np.diff(t)
    if len(rr) < config.window_beats:
        return []
    dispersion, correlation = _window_measures(rr, config)
    uncorrelated = correlation >= config.min_serial_correlation
    held = np.r_[False, (dispersion >= config.hold_dispersion) & uncorrelated, False]
    edges = np.flatnonzero(np.diff(held.astype(np.int8)))
    entered = np.r_[0, np.cumsum((dispersion >= config.enter_dispersion) & uncorrelated)]
    return [[t[a], t[b]] for a, b in zip(edges[::2], edges[1::2]) if entered[b] > entered[a]]


def _window_dispersion_and_correlation(windows: np.ndarray, embedding: int) -> tuple[np.ndarray, np.ndarray]:
    """Per window (row): the median nearest-neighbour Chebyshev distance between its embedded RR
    patterns over its median RR, and the lag-1 autocorrelation of its RR intervals (float32: ample
    for seconds, and twice as fast)."""
    windows = windows.astype(np.float32)
    points = windows.shape[1] - embedding + 1
    distance = None
    for lag in range(embedding):
        coordinate = windows[:, lag:lag + points]
        gap = np.abs(coordinate[:, :, None] - coordinate[:, None, :])
        distance = gap if distance is None else np.maximum(distance, gap, out=distance)
    distance[:, np.arange(points), np.arange(points)] = np.inf
    dispersion = np.median(distance.min(axis=2), axis=1) / np.median(windows, axis=1)
    centred = windows - windows.mean(axis=1, keepdims=True)
    correlation = ((centred[:, 1:] * centred[:, :-1]).sum(axis=1)
                   / np.maximum((centred ** 2).sum(axis=1), np.finfo(np.float32).tiny))
    return dispersion, correlation


def _merged(spans: list[list[float]], gap_s: float) -> list[tuple[float, float]]:
    """Spans (sorted) merged where they are at most gap_s apart."""
    merged: list[list[float]] = []
    for start, end in sorted(spans):
        if merged and start - merged[-1][1] <= gap_s:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    return [(a, b) for a, b in merged]
