"""Beat stage: fixed-length windows around R-peaks, RR-interval context and AAMI labels."""

from __future__ import annotations

import dataclasses
import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, fields
from fractions import Fraction

import numpy as np
from scipy.ndimage import median_filter

from ecg_rnn.errors import SignalError
from ecg_rnn import signal as ecg_signal
from ecg_rnn.records import (Annotations, Record, RecordSource, bridge_gaps, source_from_record,
                             validated_signal)
from ecg_rnn.quality import QualityConfig, fuse_leads
from ecg_rnn.rhythm import Episode, RhythmConfig, af_episodes, in_episodes, pre_qrs_columns
from ecg_rnn.signal import SignalConfig, preprocess, resample_ratio

AAMI_CLASSES = ("N", "S", "V", "F", "Q")
ABNORMAL_CLASSES = AAMI_CLASSES[1:]  # every class but N counts as abnormal
# MIT-BIH symbol -> AAMI class (ANSI/AAMI EC57). B, n, r and ? are rare extras mapped as EC57 does.
AAMI_OF_SYMBOL = {
    **dict.fromkeys("NLRej", "N"), "B": "N",
    **dict.fromkeys("AaJS", "S"), "n": "S",
    **dict.fromkeys("VE", "V"), "r": "V",
    "F": "F",
    **dict.fromkeys("/fQ", "Q"), "?": "Q",
}
BEAT_SYMBOLS = frozenset(AAMI_OF_SYMBOL)
RR_FEATURES = ("rr_prev_s", "rr_next_s", "rr_local_s", "rr_prev_ratio", "rr_next_ratio")
MATCH_TOLERANCE_S = 0.15  # a detected beat takes the label of a reference beat this close
CHUNK_S = 1800.0  # long recordings are cut in half-hour chunks...
MARGIN_S = 20.0  # ...read with this much overlap on each side
TAIL_SHARE = 0.25  # a last chunk shorter than this share of a chunk joins the one before
MIN_TEMPLATE_SIMILARITY = 0.3  # see template_similarity


@dataclass(frozen=True)
class BeatConfig:
    """How beats are cut from the pipeline signal."""

    pre_s: float = 0.28  # window start before the R-peak: covers the P wave
    post_s: float = 0.42  # window end after the R-peak: covers the T wave at normal rates
    normalisation: str = "record"  # record: scale by the record's median beat | beat: z-score | none
    rr_local_beats: int = 21  # centred median over this many RR intervals gives the local rhythm

    def window_samples(self, fs: float) -> tuple[int, int]:
        return int(round(self.pre_s * fs)), int(round(self.post_s * fs))

    def __post_init__(self):
        if self.normalisation not in ("record", "beat", "none"):
            raise ValueError(f"normalisation must be record, beat or none, not {self.normalisation!r}")


@dataclass
class Beats:
    """A set of beats from one or more records; every array has one row per beat."""

    record: np.ndarray  # str: record name of each beat
    sample: np.ndarray  # int64: R-peak in the record's own sampling
    time_s: np.ndarray  # float64
    waves: np.ndarray  # float32 (n, window)
    rr: np.ndarray  # float32 (n, len(RR_FEATURES))
    symbol: np.ndarray  # str: reference symbol, "" when unknown
    aami: np.ndarray  # str: AAMI class, "" when unknown

    def __len__(self) -> int:
        return len(self.sample)

    def subset(self, mask_or_index) -> "Beats":
        return Beats(**{f.name: getattr(self, f.name)[mask_or_index] for f in fields(self)})

    @property
    def is_abnormal(self) -> np.ndarray:
        return np.isin(self.aami, ABNORMAL_CLASSES)

    @property
    def labelled(self) -> np.ndarray:
        return self.aami != ""

    @staticmethod
    def concat(parts: list["Beats"]) -> "Beats":
        return Beats(**{f.name: np.concatenate([getattr(p, f.name) for p in parts]) for f in fields(Beats)})

    def to_arrays(self) -> dict[str, np.ndarray]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def table(self):
        """One row per beat: position, RR context and reference labels (a pandas DataFrame)."""
        import pandas as pd

        frame = pd.DataFrame({"record": self.record, "sample": self.sample, "time_s": self.time_s.round(4)})
        for i, name in enumerate(RR_FEATURES):
            frame[name] = self.rr[:, i].round(4)
        frame["ref_symbol"] = self.symbol
        frame["ref_aami"] = self.aami
        return frame


def aami_class(symbols: np.ndarray) -> np.ndarray:
    lookup = np.vectorize(lambda s: AAMI_OF_SYMBOL.get(s, ""), otypes=[str])
    return lookup(symbols) if len(symbols) else np.array([], dtype=str)


def reference_beats(record: Record) -> tuple[np.ndarray, np.ndarray]:
    """Beat annotations only (rhythm, noise and comment annotations are dropped)."""
    return reference_beats_of(record.annotations)


def reference_beats_of(ann: Annotations | None) -> tuple[np.ndarray, np.ndarray]:
    if ann is None:
        return np.array([], dtype=np.int64), np.array([], dtype=str)
    keep = np.isin(ann.symbol, list(BEAT_SYMBOLS))
    order = np.argsort(ann.sample[keep], kind="stable")  # a hand-made file need not be sorted
    return ann.sample[keep][order], ann.symbol[keep][order]


def match_reference(peaks: np.ndarray, ref_sample: np.ndarray, ref_symbol: np.ndarray,
                    tolerance: int) -> np.ndarray:
    """The reference symbol of the nearest reference beat within `tolerance` samples, else ""."""
    out = np.full(len(peaks), "", dtype=ref_symbol.dtype if len(ref_symbol) else "<U1")
    if len(ref_sample) == 0 or len(peaks) == 0:
        return out
    right = np.clip(np.searchsorted(ref_sample, peaks), 1, len(ref_sample) - 1) if len(ref_sample) > 1 \
        else np.zeros(len(peaks), dtype=int)
    left = np.maximum(right - 1, 0)
    nearest = np.where(np.abs(ref_sample[left] - peaks) <= np.abs(ref_sample[right] - peaks), left, right)
    close = np.abs(ref_sample[nearest] - peaks) <= tolerance
    out[close] = ref_symbol[nearest[close]]
    return out


def rr_context(peak_times: np.ndarray, local_beats: int) -> np.ndarray:
    """Previous, next and local (centred median) RR interval in seconds, and their ratios."""
    n = len(peak_times)
    if n < 2:
        raise SignalError(f"found {n} beat(s); RR context needs at least 2")
    intervals = np.diff(peak_times)
    rr_prev = np.concatenate([[intervals[0]], intervals])
    rr_next = np.concatenate([intervals, [intervals[-1]]])
    size = min(local_beats, len(rr_prev)) | 1  # odd, for a centred window
    rr_local = median_filter(rr_prev, size=size, mode="nearest")
    rr_local = np.maximum(rr_local, 1e-3)
    return np.stack([rr_prev, rr_next, rr_local, rr_prev / rr_local, rr_next / rr_local], axis=1).astype(
        np.float32)


def cut_windows(x: np.ndarray, centres: np.ndarray, pre: int, post: int) -> np.ndarray:
    """Windows x[c-pre : c+post] for every centre; the filtered signal is padded with its baseline (0)."""
    padded = np.pad(x, (pre, post))
    index = centres[:, None] + np.arange(pre + post)[None, :]
    return padded[index]


def normalise(waves: np.ndarray, how: str) -> np.ndarray:
    """Remove each beat's offset; scale per record (keeps how a beat differs from its patient's
    usual amplitude, the strongest anomaly cue) or per beat (z-score)."""
    centred = waves - np.median(waves, axis=1, keepdims=True)
    if how == "none":
        return waves.astype(np.float32)
    if how == "beat":
        scale = centred.std(axis=1, keepdims=True)
    else:
        typical = np.median(centred, axis=0)
        scale = np.ptp(typical) if len(waves) else 1.0
    return (centred / np.maximum(scale, 1e-6)).astype(np.float32)


def chunk_bounds(n: int, fs: float, align: int, chunk_s: float = CHUNK_S, margin_s: float = MARGIN_S):
    """(core_start, core_stop, read_start, read_stop) per chunk. Reads overlap by a margin so filters
    and the detector's adaptive thresholds settle before the core; starts are multiples of `align`
    (the resampler's down factor, and the detector's decimation factor) so that chunks line up sample
    for sample with the whole. A tail shorter than TAIL_SHARE of a chunk joins the chunk before it (a
    30-minute record of 1,805 s is one chunk, not a second one of 5 s)."""
    size = max(align, int(chunk_s * fs) // align * align)
    margin = -(-int(margin_s * fs) // align) * align
    count = _chunk_count(n, size)
    for k in range(count):
        start = k * size
        stop = n if k == count - 1 else start + size
        yield start, stop, max(0, start - margin), min(n, stop + margin)


def _chunk_count(n: int, size: int) -> int:
    count = max(1, -(-n // size))
    return count - 1 if count > 1 and n - (count - 1) * size < TAIL_SHARE * size else count


@dataclass
class CutBeats:
    """The beats of a recording, the stretches where every lead was too noisy to trust, and how noisy
    the lead each beat's waveform comes from was around it; with detected R-peaks and a second ECG lead,
    the same beats cut from that lead too (scoring may judge a beat there where the chosen lead is noisy)."""

    beats: Beats
    noise_segments: list[tuple[float, float]]  # (start_s, end_s), merged, by start
    # per beat: the quality model's probability of noise in the chosen lead's window holding the beat
    # (0 where the R-peaks came from annotations: no quality was judged)
    noise_probability: np.ndarray
    second_lead: Beats | None = None  # the same beats, waveforms from the next ECG lead (ecg_channels[1])
    second_noise_probability: np.ndarray | None = None  # as noise_probability, in that lead
    lead_names: tuple[str, ...] = ()  # (chosen lead, next lead) where the source names them


def _detected(leads: np.ndarray, fs: float, lo: int, start: int, stop: int, quality_config: QualityConfig
              ) -> tuple[np.ndarray, list[tuple[float, float]], np.ndarray, np.ndarray]:
    """R-peaks fused from every lead of a chunk (column 0 is the chosen lead), its noise segments, and,
    for the first two leads (one column each, one column with a single lead), the noise probability at
    each R-peak and where each R-peak falls in that lead (the reported lead's peak moved by the leads'
    R-peak offset: a window cut there is aligned like that lead's other beats); limited to the chunk's
    core [start, stop)."""
    fused = fuse_leads(leads, fs, quality_config)
    found = fused.samples + lo
    window = max(int(round(quality_config.window_s * fs)), 1)
    probability = fused.probability[np.minimum(fused.samples // window, len(fused.probability) - 1), :2]
    offsets = fused.lead_offsets
    in_lead = found[:, None] - offsets[fused.lead][:, None] + offsets[None, :2]
    segments = [(max(a + lo / fs, start / fs), min(b + lo / fs, stop / fs)) for a, b in fused.noise_segments]
    core = (found >= start) & (found < stop)
    return found[core], [(a, b) for a, b in segments if b > a], probability[core], in_lead[core]


def _merged_segments(segments: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Touching or overlapping segments (chunk borders) joined."""
    merged: list[list[float]] = []
    for a, b in sorted(segments):
        if merged and a <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], b)
        else:
            merged.append([a, b])
    return [(a, b) for a, b in merged]


def cut_beats(read, n: int, fs: float, name: str, ref_sample: np.ndarray, ref_symbol: np.ndarray,
              signal_config: SignalConfig, beat_config: BeatConfig, peaks: str = "auto",
              chunk_s: float = CHUNK_S, quality_config: QualityConfig = QualityConfig()) -> CutBeats:
    """Beats of a signal of n samples, a chunk at a time: `read(start, stop)` returns the samples in mV,
    one column per ECG lead, the chosen lead first (the beat waveforms come from it; with detected R-peaks
    and a second lead, CutBeats.second_lead holds the same beats cut from the next one).

    peaks: "reference" uses the annotated beats (the evaluation protocols); "detect" fuses the R-peak
    detections of every lead, trusting only the leads the quality stage finds clean, and labels matched
    beats from the annotations; "auto" is reference when annotations exist.
    """
    use_reference = peaks == "reference" or (peaks == "auto" and len(ref_sample) > 0)
    if peaks == "reference" and len(ref_sample) == 0:
        raise SignalError(f"{name}: has no reference beat annotations; use detected R-peaks")
    ratio = resample_ratio(fs, signal_config.fs) if fs != signal_config.fs else Fraction(1)
    pre, post = beat_config.window_samples(signal_config.fs)
    align = math.lcm(ratio.denominator, ecg_signal.detection_step(fs))  # chunks start in phase with both
    bounds = list(chunk_bounds(n, fs, align, chunk_s))
    samples, windows, noise, probabilities = [], [], [], []
    for start, stop, lo, hi in bounds:
        leads = np.asarray(read(lo, hi), dtype=np.float64).reshape(hi - lo, -1)
        leads = np.column_stack([bridge_gaps(leads[:, k]) for k in range(leads.shape[1])])
        # the waveforms' leads (the chosen one; the next one too where the quality stage judges both) are
        # filtered while R-peaks are sought
        cut_leads = 1 if use_reference else min(leads.shape[1], 2)
        with ThreadPoolExecutor(max_workers=1) as pool:
            filtering = [pool.submit(preprocess, leads[:, k], fs, signal_config) for k in range(cut_leads)]
            if use_reference:
                found = ref_sample[(ref_sample >= start) & (ref_sample < stop)]
                probability, in_lead = np.zeros((len(found), 1)), found[:, None]
            else:
                found, segments, probability, in_lead = _detected(leads, fs, lo, start, stop, quality_config)
                noise += segments
                if len(found) == 0 and len(bounds) == 1:  # in a long recording: a beatless stretch
                    raise SignalError(f"no heartbeats found in the {(hi - lo) / fs:.1f} s signal; is it an ECG lead?")
            filtered = [job.result() for job in filtering]
        offset = lo * ratio.numerator // ratio.denominator  # exact: lo is a multiple of the denominator
        centres = np.clip(np.round(in_lead * (signal_config.fs / fs)).astype(np.int64) - offset, 0,
                          len(filtered[0]) - 1)
        samples.append(found.astype(np.int64))
        probabilities.append(probability)
        windows.append([cut_windows(lead, centres[:, k], pre, post) for k, lead in enumerate(filtered)])
    sample = np.concatenate(samples)
    if len(sample) < 3:
        raise SignalError(f"{name}: found {len(sample)} beat(s); at least 3 are needed")
    symbol = ref_symbol[np.searchsorted(ref_sample, sample)] if use_reference else match_reference(
        sample, ref_sample, ref_symbol, int(MATCH_TOLERANCE_S * fs))
    symbol = np.asarray(symbol, dtype=str)
    raw = [np.concatenate([chunk[k] for chunk in windows]) for k in range(len(windows[0]))]
    if not use_reference:
        check_beats_resemble(raw[0], name)
    time_s = sample / fs
    beats = Beats(record=np.full(len(sample), name), sample=sample, time_s=time_s,
                  waves=normalise(raw[0], beat_config.normalisation),
                  rr=rr_context(time_s, beat_config.rr_local_beats), symbol=symbol, aami=aami_class(symbol))
    probability = np.concatenate(probabilities)
    if len(raw) == 1:
        return CutBeats(beats, _merged_segments(noise), probability[:, 0])
    second = dataclasses.replace(beats, waves=normalise(raw[1], beat_config.normalisation))
    return CutBeats(beats, _merged_segments(noise), probability[:, 0], second, probability[:, 1])


def template_similarity(waves: np.ndarray) -> float:
    """Median correlation of the beats with their median beat: 0.82-0.99 on every MIT-BIH record,
    below 0.1 for white noise, where a detector finds "beats" that share no shape."""
    centred = waves - waves.mean(axis=1, keepdims=True)
    template = np.median(centred, axis=0)
    norms = np.linalg.norm(centred, axis=1) * np.linalg.norm(template)
    return float(np.median(centred @ template / np.maximum(norms, 1e-12)))


def check_beats_resemble(waves: np.ndarray, name: str) -> None:
    similarity = template_similarity(waves)
    if similarity < MIN_TEMPLATE_SIMILARITY:
        raise SignalError(f"{name}: the detected beats share no common shape (median correlation "
                          f"{similarity:.2f} with the median beat); the signal looks like noise, not an ECG lead")


def cut_source(source: RecordSource, signal_config: SignalConfig = SignalConfig(),
               beat_config: BeatConfig = BeatConfig(), peaks: str = "auto", chunk_s: float = CHUNK_S,
               quality_config: QualityConfig = QualityConfig()) -> CutBeats:
    """Cut every beat of a recording, reading every ECG lead a chunk at a time (a 24-hour Holter stays
    within bounded memory); the result equals that of the recording read whole. See cut_beats."""
    chunk = int(chunk_s * source.fs)
    read = source.read_leads
    if source.in_memory:
        validated_signal(source.read(), source.fs, source.where)
    elif _chunk_count(source.sig_len, max(chunk, 1)) == 1:  # one chunk: every lead read once, and kept
        leads = source.read_leads()
        validated_signal(leads[:, 0], source.fs, source.where)
        read = lambda start, stop: leads[start:stop]  # noqa: E731
    else:
        source.check(chunk)
    ref_sample, ref_symbol = reference_beats_of(source.annotations)
    cut = cut_beats(read, source.sig_len, source.fs, source.name, ref_sample, ref_symbol,
                    signal_config, beat_config, peaks, chunk_s, quality_config)
    return dataclasses.replace(cut, lead_names=tuple(source.sig_name[c] for c in source.ecg_channels[:2]))


def beats_from_source(source: RecordSource, signal_config: SignalConfig = SignalConfig(),
                      beat_config: BeatConfig = BeatConfig(), peaks: str = "auto", chunk_s: float = CHUNK_S) -> Beats:
    """The beats of cut_source, without its noise segments."""
    return cut_source(source, signal_config, beat_config, peaks, chunk_s).beats


def beats_from_record(record: Record, signal_config: SignalConfig = SignalConfig(),
                      beat_config: BeatConfig = BeatConfig(), peaks: str = "auto",
                      chunk_s: float = CHUNK_S) -> Beats:
    """Cut every beat of a record held in memory (see cut_beats for `peaks`)."""
    return beats_from_source(source_from_record(record), signal_config, beat_config, peaks, chunk_s)


def record_af_episodes(beats: Beats, rhythm_config: RhythmConfig = RhythmConfig(),
                       noise_segments: list[tuple[float, float]] | tuple = (),
                       signal_config: SignalConfig = SignalConfig(),
                       beat_config: BeatConfig = BeatConfig()) -> dict[str, list[Episode]]:
    """The rhythm stage's AF episodes of each record of `beats` (whole records): from the beat times and,
    where the beat windows (cut with these configs) reach before the P wave, the atrial evidence of the
    pre-QRS part of each window. The one way scoring, training and evaluation find AF."""
    atrial = pre_qrs_columns(beat_config.pre_s, signal_config.fs)
    if atrial is not None and atrial.stop > beats.waves.shape[1]:  # windows narrower than the configs say
        atrial = None
    episodes = {}
    for name in np.unique(beats.record):
        rows = beats.record == name
        episodes[str(name)] = af_episodes(beats.time_s[rows], rhythm_config, noise_segments,
                                          None if atrial is None else beats.waves[rows][:, atrial])
    return episodes


def record_af_mask(beats: Beats, episodes: dict[str, list[Episode]]) -> np.ndarray:
    """True for each beat inside an AF episode of its own record."""
    mask = np.zeros(len(beats), dtype=bool)
    for name, found in episodes.items():
        rows = np.flatnonzero(beats.record == name)
        mask[rows] = in_episodes(beats.time_s[rows], found)
    return mask
