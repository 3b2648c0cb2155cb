"""Where things live: what ships inside the package, and the user's working folders.

Shipped models and the example records are package data, found through importlib.resources, so an
installed ecg-rnn works from any folder. Everything the user makes (runs, caches, the reviews database,
a downloaded MIT-BIH) lives under the working folder: `$ECG_RNN_HOME` when set, else the current folder.
"""

from __future__ import annotations

import os
from importlib.resources import files
from pathlib import Path

HOME_ENV = "ECG_RNN_HOME"
SHIPPED_MODEL_NAMES = ("default", "lstm", "gru", "bilstm")


def _package_dir(*parts: str) -> Path:
    return Path(str(files("ecg_rnn").joinpath(*parts)))


def models_dir() -> Path:
    """The shipped models (package data)."""
    return _package_dir("models")


def sample_records_dir() -> Path:
    """The bundled MIT-BIH example records 100, 208 and 232 (package data)."""
    return _package_dir("samples", "mitdb")


def sample_record(name: str) -> Path:
    """A bundled example record's path without extension, as wfdb takes it."""
    return sample_records_dir() / name


def default_model_path() -> Path:
    return models_dir() / "default.safetensors"


def shipped_models() -> dict[str, Path]:
    return {n: models_dir() / f"{n}.safetensors" for n in SHIPPED_MODEL_NAMES
            if (models_dir() / f"{n}.safetensors").is_file()}


def workspace() -> Path:
    """The folder user files go to: $ECG_RNN_HOME, else the current folder."""
    return Path(os.environ.get(HOME_ENV) or ".").resolve()


def runs_dir() -> Path:
    return workspace() / "runs"


def cache_dir() -> Path:
    return workspace() / "cache"


def data_dir() -> Path:
    return workspace() / "data"


def shared_data_dir() -> Path:
    """A `shared/data` folder beside the working folder (how CI provides the full databases)."""
    return workspace().parent / "shared" / "data"
