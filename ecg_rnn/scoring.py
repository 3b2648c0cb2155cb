"""Scoring stage: a recording -> its beats, scored, flagged, classified, with its AF and noise episodes.

Every format goes one way: `records.open_record` gives a chunk-readable source (a WFDB or EDF record is
read from disk a chunk at a time, so a 24-hour Holter stays within bounded memory), `beats.cut_source`
cuts its beats from R-peaks fused over every ECG lead and finds the stretches where every lead is noise,
the rhythm stage finds AF episodes (from the beat times and the pre-QRS part of each beat's window),
one forward pass of the detector scores the beats (inside AF by morphology) and the suggest stage
gives each a class. What a recording becomes on disk (CSV, events, WFDB annotations, report) is
ecg_rnn.outputs; many recordings are ecg_rnn.bulk.
"""

from __future__ import annotations

import dataclasses
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from ecg_rnn.beats import Beats, CutBeats, cut_source, record_af_episodes, record_af_mask
from ecg_rnn.detector import Analysis, RecurrentAEDetector
from ecg_rnn.records import Record, RecordSource, source_from_record
from ecg_rnn.rhythm import Episode, RhythmConfig, in_episodes
from ecg_rnn.suggest import suggest_classes

NOISE_QUALITY = "noise"  # `quality` of a beat in noise
OK_QUALITY = "ok"
AF_RHYTHM = "AF"  # `rhythm` of a beat in atrial fibrillation
VENTRICULAR = "V"  # the suggested class flagged inside AF whatever its score (flag_beats)
# per-record statistics of a longer recording are taken per stretch of at most this long (see in_stretches);
# an hour leaves every MIT-BIH record (30 min) whole, so the evaluated figures hold unchanged
LONGEST_STRETCH_S = 3600.0
# a beat is judged on the recording's next ECG lead where the quality stage finds the chosen lead at least
# this much more likely noisy than that one around it (judged_on_second_lead; inf: never). Selected on DS1
# with synthetic noise on the chosen lead, on both leads and on none (benchmarks/second_lead.py)
SECOND_LEAD_MARGIN = 0.8


@dataclass
class ScoredBeats:
    beats: Beats
    analysis: Analysis  # score, calibrated terms, reconstruction and latent code of every beat
    percentile: np.ndarray
    flagged: np.ndarray  # bool; never set for a beat whose quality is "noise"
    has_reference: bool = False
    quality: np.ndarray | None = None  # str per beat: "ok" or "noise" (inside a noise episode)
    rhythm: np.ndarray | None = None  # str per beat: "AF" inside an AF / flutter episode, else ""
    suggested_class: np.ndarray | None = None  # str per beat: N, S, V, F or Q
    episodes: list[Episode] = field(default_factory=list)  # AF and noise episodes, by start time
    scored_lead: np.ndarray | None = None  # str per beat: the lead its score comes from (judged_on_second_lead)

    @property
    def score(self) -> np.ndarray:
        return self.analysis.score

    def table(self):
        import pandas as pd

        n = len(self.beats)
        frame = pd.DataFrame({
            "sample": self.beats.sample.astype(np.int64),
            "time_s": np.round(self.beats.time_s, 4),
            "rr_prev_s": np.round(self.beats.rr[:, 0].astype(np.float64), 4),
            "score": np.round(self.score, 4),
            "percentile": np.round(self.percentile, 2),
            "flagged": self.flagged.astype(bool),
            "quality": self.quality if self.quality is not None else np.full(n, OK_QUALITY),
            "rhythm": self.rhythm if self.rhythm is not None else np.full(n, ""),
            "suggested_class": self.suggested_class if self.suggested_class is not None else np.full(n, ""),
            "scored_lead": self.scored_lead if self.scored_lead is not None else np.full(n, ""),
        })
        if self.has_reference:
            frame["ref_symbol"] = self.beats.symbol
            frame["ref_aami"] = self.beats.aami
        return frame


def in_stretches(beats: Beats, longest_s: float = LONGEST_STRETCH_S) -> Beats:
    """The beats with each recording longer than longest_s cut into equal stretches of at most that long,
    each named as a record of its own (`name@k`), for what is taken per record: the template, the
    calibration of the terms, the adaptation and the morphology families (RR90 is local anyway). Over a
    day heart rate and QRS change (sleep, activity, posture): against the whole day's template and spread
    the beats of an hour unlike the rest look abnormal. Recordings up to longest_s are left whole."""
    names, split = beats.record.astype(object), False
    for name in np.unique(beats.record):
        rows = np.flatnonzero(beats.record == name)
        start = beats.time_s[rows].min()
        span = float(beats.time_s[rows].max() - start)
        if span <= longest_s:
            continue
        parts = int(np.ceil(span / longest_s))
        k = np.minimum(((beats.time_s[rows] - start) / (span / parts)).astype(int), parts - 1)
        names[rows], split = [f"{name}@{i}" for i in k], True
    return dataclasses.replace(beats, record=names.astype(str)) if split else beats


def flag_beats(score: np.ndarray, threshold: float, in_noise: np.ndarray, in_af: np.ndarray,
               suggested_class: np.ndarray) -> np.ndarray:
    """A beat is flagged when its score passes the threshold, or, inside AF, when the suggestion calls it
    ventricular: there the rhythm terms are off (a short RR is the rhythm), the score stands on morphology
    alone and misses deformed beats in a record whose own beats vary widely (MIT-BIH 203), while the
    suggestion's evidence of ventricular origin (a wide QRS, a morphology family of its own) does not
    depend on the rhythm. Never inside noise."""
    ventricular_in_af = np.asarray(in_af, dtype=bool) & (np.asarray(suggested_class) == VENTRICULAR)
    return ((np.asarray(score) > threshold) | ventricular_in_af) & ~np.asarray(in_noise, dtype=bool)


def judged_on_second_lead(cut: CutBeats, margin: float = SECOND_LEAD_MARGIN) -> np.ndarray:
    """True for each beat the quality stage finds at least `margin` more likely noisy in the chosen lead
    than in the next one: its waveform there is the cleaner one to judge (False without a second lead)."""
    if cut.second_lead is None or not np.isfinite(margin):
        return np.zeros(len(cut.beats), bool)
    return cut.noise_probability - cut.second_noise_probability >= margin


def _judged_where(chosen: Analysis, second: Analysis, on_second: np.ndarray) -> Analysis:
    """The score and its terms from `second` where on_second; the reconstruction and latent code stay the
    chosen lead's, the waveform the dashboard shows and groups by."""
    return dataclasses.replace(
        chosen, score=np.where(on_second, second.score, chosen.score),
        components={k: np.where(on_second, second.components[k], v) for k, v in chosen.components.items()})


def score_beats(detector: RecurrentAEDetector, cut: CutBeats, has_reference: bool,
                rhythm_config: RhythmConfig = RhythmConfig(),
                longest_stretch_s: float = LONGEST_STRETCH_S,
                second_lead_margin: float = SECOND_LEAD_MARGIN) -> ScoredBeats:
    """Everything scoring says about the cut beats of whole records: AF episodes from the rhythm stage
    (outside the noise segments; the beats' pre-QRS samples add the atrial evidence when their windows
    hold them), scores (inside AF by morphology: a short RR there is the rhythm, not ectopy; beats the
    quality stage finds likely noisy calibrated among themselves, RecurrentAEDetector.analyse),
    percentiles among held-out normals, flags (flag_beats; never inside noise) and suggested classes. Recordings
    longer than longest_stretch_s take their per-record statistics per stretch (in_stretches). A beat whose
    chosen lead is noisy and whose next lead is not (judged_on_second_lead, second_lead_margin) is scored on
    that lead, against its own beats there (template, calibration, adaptation); its suggested class still
    comes from the chosen lead."""
    beats, noise_segments = cut.beats, cut.noise_segments
    noise = [Episode(NOISE_QUALITY, a, b) for a, b in noise_segments]
    in_noise = in_episodes(beats.time_s, noise)
    by_record = record_af_episodes(beats, rhythm_config, noise_segments, detector.signal, detector.beats)
    af = [e for found in by_record.values() for e in found]
    in_af = record_af_mask(beats, by_record)
    stretches = in_stretches(beats, longest_stretch_s)
    # the suggestion does not depend on the model: it runs on a second thread while the model scores
    # (torch's recurrent layers and numpy release the GIL while they compute), so two cores share the work
    with ThreadPoolExecutor(max_workers=1) as pool:
        suggestion = pool.submit(suggest_classes, stretches, in_af, signal_config=detector.signal,
                                 beat_config=detector.beats)
        analysis = detector.analyse(stretches, in_af=in_af, noise_probability=cut.noise_probability)
        on_second = judged_on_second_lead(cut, second_lead_margin)
        if on_second.any():
            second = detector.analyse(in_stretches(cut.second_lead, longest_stretch_s), in_af=in_af,
                                      noise_probability=cut.second_noise_probability)
            analysis = _judged_where(analysis, second, on_second)
        suggested = suggestion.result()
    chosen_name, second_name = (*cut.lead_names, "", "")[:2]
    return ScoredBeats(beats=beats, analysis=analysis, percentile=detector.percentile(analysis.score),
                       flagged=flag_beats(analysis.score, detector.threshold_, in_noise, in_af, suggested),
                       has_reference=has_reference,
                       quality=np.where(in_noise, NOISE_QUALITY, OK_QUALITY),
                       rhythm=np.where(in_af, AF_RHYTHM, ""), suggested_class=suggested,
                       episodes=sorted(af + noise, key=lambda e: e.start_s),
                       scored_lead=np.where(on_second, second_name, chosen_name))


def score_source(detector: RecurrentAEDetector, source: RecordSource, peaks: str = "detect") -> ScoredBeats:
    """Cut a recording's beats with the detector's own configs (resampled to its rate; R-peaks fused
    from every ECG lead, noise stretches found) and score them; templates come from all its beats."""
    cut = cut_source(source, detector.signal, detector.beats, peaks=peaks)
    return score_beats(detector, cut, source.annotations is not None)


def score_record(detector: RecurrentAEDetector, record: Record, peaks: str = "detect") -> ScoredBeats:
    return score_source(detector, source_from_record(record), peaks)
