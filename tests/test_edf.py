"""EDF, EDF+ and BDF recordings: read through the same RecordSource as WFDB, scored alike, hostile
files refused in one line."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyedflib
import pytest

from edf_files import wfdb_and_edf_copies
from ecg_rnn import cli
from ecg_rnn.errors import RecordError
from ecg_rnn.paths import sample_record
from ecg_rnn.records import open_record, read_upload
from ecg_rnn.uploads import UploadedFile

SECONDS = 600


@pytest.fixture(scope="module")
def copies(tmp_path_factory):
    """(WFDB copy, EDF+ copy) of the first 10 minutes of record 208 (many V beats)."""
    return wfdb_and_edf_copies(sample_record("208"), tmp_path_factory.mktemp("edf"), SECONDS)


def test_edf_reads_the_same_signal_leads_and_annotations(copies):
    wfdb_copy, edf_copy = (open_record(p) for p in copies)
    assert (edf_copy.fs, edf_copy.sig_len, edf_copy.lead) == (wfdb_copy.fs, wfdb_copy.sig_len, "MLII")
    assert edf_copy.ecg_channels == wfdb_copy.ecg_channels == (0, 1)
    np.testing.assert_allclose(edf_copy.read_leads(1000, 5000), wfdb_copy.read_leads(1000, 5000), atol=1e-9)
    assert np.array_equal(edf_copy.annotations.sample, wfdb_copy.annotations.sample)
    assert np.array_equal(edf_copy.annotations.symbol, wfdb_copy.annotations.symbol)


def test_edf_scores_like_its_wfdb_original(copies, tmp_path):
    wfdb_copy, edf_copy = copies
    for path in copies:
        assert cli.main(["score", str(path), "--out", str(tmp_path)]) == 0
    original = pd.read_csv(tmp_path / f"{wfdb_copy.name}.csv")
    converted = pd.read_csv(tmp_path / f"{edf_copy.stem}.csv")
    assert len(original) > 500
    assert np.array_equal(converted["sample"], original["sample"])
    assert np.array_equal(converted["flagged"], original["flagged"])
    np.testing.assert_allclose(converted["score"], original["score"], atol=1e-3)  # the CSV rounds to 4 places
    assert np.array_equal(converted["ref_symbol"].fillna(""), original["ref_symbol"].fillna(""))


def test_edf_upload_reads_like_the_file(copies):
    edf_copy = copies[1]
    record, info = read_upload([UploadedFile(edf_copy.name, edf_copy.read_bytes())])
    assert info.chosen == edf_copy.name and record.fs == 360 and record.lead == "MLII"
    np.testing.assert_allclose(record.signal, open_record(edf_copy).load().signal)


def test_bdf_is_read(tmp_path):
    """BDF (24-bit BioSemi) through the same reader."""
    path = tmp_path / "rec.bdf"
    fs, n = 256, 256 * 20
    t = np.arange(n) / fs
    ecg = np.zeros(n)
    for beat in np.arange(0.5, 20, 0.8):  # 75 bpm: a QRS-like Gaussian every 0.8 s
        ecg += np.exp(-0.5 * ((t - beat) / 0.012) ** 2)
    writer = pyedflib.EdfWriter(str(path), 1, file_type=pyedflib.FILETYPE_BDFPLUS)
    writer.setSignalHeaders([{"label": "ECG II", "dimension": "mV", "sample_frequency": fs, "physical_min": -5,
                              "physical_max": 5, "digital_min": -8388608, "digital_max": 8388607,
                              "transducer": "", "prefilter": ""}])
    writer.writeSamples([ecg])
    writer.close()
    source = open_record(path)
    assert (source.fs, source.sig_len, source.lead) == (256.0, n, "ECG II")
    np.testing.assert_allclose(source.read(), ecg, atol=1e-5)


def _patched(path, out, offset: int, text: bytes):
    data = bytearray(path.read_bytes())
    data[offset:offset + len(text)] = text
    out.write_bytes(bytes(data))
    return out


@pytest.mark.parametrize("case, message", [
    ("truncated", "truncated"),
    ("more_records", "header claims 9999 data records"),
    ("more_signals", "header size .* does not match"),
    ("thousands_of_signals", "header claims 9999 signals"),
    ("junk", "not an EDF or BDF file"),
    ("text", "not an EDF or BDF file"),
    ("non_ascii_count", "not ASCII text"),
])
def test_hostile_edf_files_get_one_line(copies, tmp_path, capsys, case, message):
    good = copies[1]
    bad = tmp_path / "bad.edf"
    if case == "truncated":
        bad.write_bytes(good.read_bytes()[: len(good.read_bytes()) // 2])
    elif case == "more_records":
        _patched(good, bad, 236, b"9999    ")
    elif case == "more_signals":
        _patched(good, bad, 252, b"3   ")
    elif case == "thousands_of_signals":
        _patched(good, bad, 252, b"9999")
    elif case == "junk":
        bad.write_bytes(np.random.default_rng(0).bytes(5000))
    elif case == "text":
        bad.write_text("this is a letter, not a recording\n" * 20)
    else:
        _patched(good, bad, 252, "³   ".encode("latin-1"))
    with pytest.raises(RecordError, match=message):
        open_record(bad)
    assert cli.main(["score", str(bad), "--out", str(tmp_path / "out")]) == cli.EXIT_BAD_INPUT
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("ecg-rnn score: error: bad.edf")


def test_lead_choice_prefers_lead_ii_then_chest_leads():
    from ecg_rnn.records import choose_lead

    assert choose_lead(["I", "II", "V1"], ["mV"] * 3, None, "x") == 1
    assert choose_lead(["ECG I", "ECG II"], ["uV", "uV"], None, "x") == 1
    assert choose_lead(["I", "aVR", "V5"], ["mV"] * 3, None, "x") == 2
    assert choose_lead(["I", "aVR"], ["mV"] * 2, None, "x") == 0
