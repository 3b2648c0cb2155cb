"""Where the tests find real data: the sample records that ship with the project, and the full MIT-BIH
database that CI provides beside the clone at ../shared/data/mitdb.

A test that needs a record the project does not ship fails (never skips) when the database is absent,
saying where it looked, so a missing database cannot pass as a green run.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from ecg_rnn.paths import sample_records_dir

REPO = Path(__file__).resolve().parents[1]
SAMPLE_DIR = sample_records_dir()
SAMPLE_RECORDS = ("100", "208", "232")
SHARED_MITDB = REPO.parent / "shared" / "data" / "mitdb"


def require_shared_mitdb() -> Path:
    """The full MIT-BIH folder; fails the calling test when it is not there."""
    if not (SHARED_MITDB / "100.hea").is_file():
        pytest.fail(f"this test needs the full MIT-BIH database at {SHARED_MITDB} (CI places ../shared beside "
                    "the clone); it is absent", pytrace=False)
    return SHARED_MITDB


def mitdb_record(name: str) -> Path:
    """A MIT-BIH record's path without extension: the shipped copy when the project ships it, else the
    full database (the shipped copies are byte-identical to the database's)."""
    if name in SAMPLE_RECORDS:
        return SAMPLE_DIR / name
    path = require_shared_mitdb() / name
    if not path.with_suffix(".hea").is_file():
        pytest.fail(f"MIT-BIH record {name} is missing from {SHARED_MITDB}", pytrace=False)
    return path
