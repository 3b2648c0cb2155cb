"""Recordings as other recorders would give them: another sampling rate, the other lead, another gain.

A variant is made from the raw MIT-BIH recording before anything of the pipeline touches it (the
signal is resampled with its reference beat positions, or scaled, or the other lead is read), so the
whole pipeline (filters, resampling to the pipeline rate, beat cutting, normalisation) meets it as it
would meet such a recording. Beat sets of variants are cached on disk like build_beat_set's.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from ecg_rnn.beats import BeatConfig, Beats, beats_from_record
from ecg_rnn.protocols import PIPELINE_VERSION, cache_key
from ecg_rnn.records import Annotations, Record, read_record
from ecg_rnn.signal import SignalConfig, resample


@dataclass(frozen=True)
class Variant:
    name: str
    other_lead: bool = False  # read the lead the default choice (MLII) does not take
    fs: float | None = None  # resample the raw recording to this rate (Hz)
    gain: float = 1.0  # multiply the signal by this


ORIGINAL = Variant("original (MLII, 360 Hz)")
OTHER_LEAD = Variant("second lead (V1, V2, V4 or V5)", other_lead=True)
VARIANTS = (ORIGINAL, Variant("resampled to 128 Hz", fs=128.0), Variant("resampled to 250 Hz", fs=250.0),
            Variant("resampled to 500 Hz", fs=500.0), OTHER_LEAD, Variant("amplitude x0.5", gain=0.5),
            Variant("amplitude x2", gain=2.0))


def variant_record(path: Path, variant: Variant) -> Record:
    """The recording at `path` as the variant describes it."""
    record = read_record(path)
    if variant.other_lead:
        other = next(i for i, name in enumerate(record.sig_name) if name != record.lead)
        record = read_record(path, lead=other)
    if variant.fs is not None and variant.fs != record.fs:
        ann = record.annotations
        moved = Annotations(sample=np.round(ann.sample * variant.fs / record.fs).astype(np.int64), symbol=ann.symbol)
        record = dataclasses.replace(record, signal=resample(record.signal, record.fs, variant.fs), fs=variant.fs,
                                     annotations=moved)
    if variant.gain != 1.0:
        record = dataclasses.replace(record, signal=(record.signal * variant.gain).astype(np.float32))
    return record


def variant_beat_set(records: tuple[str, ...], folder: Path, variant: Variant,
                     signal_config: SignalConfig = SignalConfig(), beat_config: BeatConfig = BeatConfig(),
                     cache_dir: Path | None = None, progress: bool = True) -> Beats:
    """Beats of the records as the variant gives them, at their reference beat positions (cached)."""
    path = None
    if cache_dir is not None:
        key = hashlib.sha256(json.dumps([cache_key(records, folder, signal_config, beat_config),
                                         dataclasses.asdict(variant), PIPELINE_VERSION]).encode()).hexdigest()[:16]
        path = Path(cache_dir) / f"variant-beats-{key}.npz"
        if path.exists():
            with np.load(path, allow_pickle=False) as cached:
                return Beats(**{k: cached[k] for k in cached.files})
    parts = [beats_from_record(variant_record(Path(folder) / r, variant), signal_config, beat_config, peaks="reference")
             for r in tqdm(records, desc=variant.name, unit="record", disable=not progress)]
    beats = Beats.concat(parts)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp.npz")
        np.savez(tmp, **beats.to_arrays())
        os.replace(tmp, path)
    return beats
