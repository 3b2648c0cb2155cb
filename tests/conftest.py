"""Shared fixtures: real records shipped in data/, the full MIT-BIH from ../shared (a test that needs it
fails when it is absent), and the shipped default model, loaded once per session."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from local_data import SAMPLE_DIR, require_shared_mitdb


@pytest.fixture
def sample_dir() -> Path:
    return SAMPLE_DIR


@pytest.fixture(scope="session")
def shared_mitdb() -> Path:
    return require_shared_mitdb()


@pytest.fixture(scope="session")
def default_detector():
    """The shipped default model (it ships with the project: missing is a failure, not a skip)."""
    from ecg_rnn.detector import RecurrentAEDetector
    from ecg_rnn.paths import default_model_path

    path = default_model_path()
    assert path.is_file(), f"the shipped default model {path} is missing"
    return RecurrentAEDetector.load(path)


@pytest.fixture
def record_copy(tmp_path):
    """Copy a sample record into a private folder so a test may damage it."""

    def copy(name: str = "100", with_atr: bool = True) -> Path:
        for ext in (".hea", ".dat") + ((".atr",) if with_atr else ()):
            shutil.copy(SAMPLE_DIR / f"{name}{ext}", tmp_path / f"{name}{ext}")
        return tmp_path / name

    return copy
