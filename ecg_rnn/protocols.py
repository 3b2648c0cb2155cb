"""Protocol stage: where MIT-BIH lives, the standard splits, and the on-disk beat-set cache."""

from __future__ import annotations

import hashlib
import json
import os
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from ecg_rnn import paths
from ecg_rnn.beats import BeatConfig, Beats, beats_from_record
from ecg_rnn.errors import DataNotFoundError
from ecg_rnn.records import read_record
from ecg_rnn.signal import SignalConfig

# de Chazal et al. 2004: inter-patient split; the paced records are excluded.
DS1 = ("101", "106", "108", "109", "112", "114", "115", "116", "118", "119", "122", "124", "201", "203",
       "205", "207", "208", "209", "215", "220", "223", "230")
DS2 = ("100", "103", "105", "111", "113", "117", "121", "123", "200", "202", "210", "212", "213", "214",
       "219", "221", "222", "228", "231", "232", "233", "234")
PACED = ("102", "104", "107", "217")
ALL_RECORDS = tuple(sorted(DS1 + DS2 + PACED))
NON_PACED = tuple(sorted(DS1 + DS2))
PROTOCOLS = ("inter-patient", "intra-patient")
# Bumped whenever the beat-building code changes what it produces, so stale caches are not reused.
PIPELINE_VERSION = 1


def _has_records(folder: Path) -> bool:
    return folder.is_dir() and any(folder.glob("*.hea"))


def locate_mitdb(download: bool = True, quiet: bool = False) -> Path:
    """Find MIT-BIH: $MITDB_DIR, data/mitdb/, ../shared/data/mitdb/, else download into data/mitdb/."""
    candidates = []
    if os.environ.get("MITDB_DIR"):
        candidates.append(("MITDB_DIR", Path(os.environ["MITDB_DIR"]).expanduser()))
    candidates += [("data/mitdb", paths.data_dir() / "mitdb"),
                   ("../shared/data/mitdb", paths.shared_data_dir() / "mitdb")]
    for label, folder in candidates:
        if _has_records(folder):
            _say(f"MIT-BIH: using {folder} (from {label})", quiet)
            return folder
        if label == "MITDB_DIR":
            raise DataNotFoundError(f"MITDB_DIR={folder} holds no WFDB records (*.hea); fix or unset it")
    if not download:
        raise DataNotFoundError("MIT-BIH not found: set MITDB_DIR, or put it in data/mitdb/")
    target = paths.data_dir() / "mitdb"
    _say(f"MIT-BIH: not found locally; downloading from PhysioNet into {target}", quiet)
    try:
        import wfdb

        wfdb.dl_database("mitdb", str(target))
    except Exception as exc:
        raise DataNotFoundError(f"MIT-BIH download from PhysioNet failed ({type(exc).__name__}); "
                                "set MITDB_DIR to a local copy") from None
    if not _has_records(target):
        raise DataNotFoundError(f"MIT-BIH download left no records in {target}; set MITDB_DIR")
    _say(f"MIT-BIH: downloaded to {target} (from PhysioNet)", quiet)
    return target


def _say(message: str, quiet: bool) -> None:
    if not quiet:
        print(message, file=sys.stderr)


def cache_key(records: tuple[str, ...], folder: Path, signal_config: SignalConfig,
              beat_config: BeatConfig) -> str:
    """Hash of everything that determines a beat set: configs, records and their files' size/mtime."""
    stamp = [(r, *(((folder / f"{r}{ext}").stat().st_size, int((folder / f"{r}{ext}").stat().st_mtime))
                   for ext in (".hea", ".dat", ".atr") if (folder / f"{r}{ext}").exists()))
             for r in records]
    payload = json.dumps({"v": PIPELINE_VERSION, "signal": asdict(signal_config), "beats": asdict(beat_config),
                          "records": stamp, "folder": str(folder.resolve())}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def build_beat_set(records: tuple[str, ...] = ALL_RECORDS, folder: Path | None = None,
                   signal_config: SignalConfig = SignalConfig(), beat_config: BeatConfig = BeatConfig(),
                   cache_dir: Path | None = None, progress: bool = True) -> Beats:
    """Beats of many records at their reference annotations; cached on disk by cache_key in cache_dir
    (default: cache/ in the working folder)."""
    folder = folder or locate_mitdb()
    key = cache_key(tuple(records), folder, signal_config, beat_config)
    path = Path(cache_dir or paths.cache_dir()) / f"beats-{key}.npz"
    if path.exists():
        with np.load(path, allow_pickle=False) as cached:
            return Beats(**{k: cached[k] for k in cached.files})
    parts = [beats_from_record(read_record(folder / r), signal_config, beat_config, peaks="reference")
             for r in tqdm(records, desc="building beats", unit="record", disable=not progress)]
    beats = Beats.concat(parts)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp.npz")  # parallel builders (torchrun ranks) never collide
    np.savez(tmp, **beats.to_arrays())
    os.replace(tmp, path)  # atomic: an interrupted build never leaves a half-written cache
    return beats


@dataclass
class Split:
    """Training beats (normal only) and test beats (normal and abnormal) of one protocol fold."""

    name: str
    train: Beats
    test: Beats


def heldout_mask(beats: Beats, fraction: float, seed: int) -> np.ndarray:
    """Which beats to hold out: `fraction` of the records (seeded), so held-out scores come from
    patients never fitted; with fewer than 3 records, that fraction of the beats instead."""
    rng = np.random.default_rng(seed)
    records = np.unique(beats.record)
    if len(records) >= 3:
        n_held = max(1, int(round(fraction * len(records))))
        return np.isin(beats.record, rng.permutation(records)[:n_held])
    return rng.random(len(beats)) < fraction


def inter_patient(beats: Beats) -> Split:
    """de Chazal: train on the normal beats of DS1, test on every labelled beat of DS2."""
    labelled = beats.labelled
    train = np.isin(beats.record, DS1) & (beats.aami == "N")
    test = np.isin(beats.record, DS2) & labelled
    return Split("inter-patient", beats.subset(train), beats.subset(test))


def intra_patient(beats: Beats, n_folds: int = 5, seed: int = 0) -> list[Split]:
    """BeatGAN protocol: normal beats of the 44 non-paced records pooled into seeded folds; each fold
    trains on the other folds' normals and tests on its own normals plus every abnormal beat."""
    from sklearn.model_selection import KFold

    usable = np.isin(beats.record, NON_PACED) & beats.labelled
    normal_idx = np.flatnonzero(usable & (beats.aami == "N"))
    abnormal_idx = np.flatnonzero(usable & beats.is_abnormal)
    folds = KFold(n_splits=n_folds, shuffle=True, random_state=seed).split(normal_idx)
    return [Split(f"intra-patient fold {k + 1}/{n_folds}", beats.subset(normal_idx[train_pos]),
                  beats.subset(np.concatenate([normal_idx[test_pos], abnormal_idx])))
            for k, (train_pos, test_pos) in enumerate(folds)]


def protocol_splits(protocol: str, beats: Beats, seed: int = 0) -> list[Split]:
    if protocol == "inter-patient":
        return [inter_patient(beats)]
    if protocol == "intra-patient":
        return intra_patient(beats, seed=seed)
    raise ValueError(f"unknown protocol {protocol!r}; choose one of {', '.join(PROTOCOLS)}")
