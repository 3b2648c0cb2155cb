"""Shared fixtures: real records from data/ and, where present, the full MIT-BIH from ../shared."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SAMPLE_DIR = REPO / "data" / "mitdb-sample"
SHARED_MITDB = REPO.parent / "shared" / "data" / "mitdb"


@pytest.fixture
def sample_dir() -> Path:
    return SAMPLE_DIR


@pytest.fixture
def shared_mitdb() -> Path:
    if not (SHARED_MITDB / "100.hea").exists():
        pytest.skip("full MIT-BIH not present at ../shared/data/mitdb")
    return SHARED_MITDB


@pytest.fixture
def record_copy(tmp_path):
    """Copy a sample record into a private folder so a test may damage it."""

    def copy(name: str = "100", with_atr: bool = True) -> Path:
        for ext in (".hea", ".dat") + ((".atr",) if with_atr else ()):
            shutil.copy(SAMPLE_DIR / f"{name}{ext}", tmp_path / f"{name}{ext}")
        return tmp_path / name

    return copy
