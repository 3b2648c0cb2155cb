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


TWELVE_LEADS = {  # (lead MLII, lead V1) weights: twelve distinct mixtures, ordered as a 12-lead recorder writes them
    "I": (0.5, 0.3), "II": (1.0, 0.0), "III": (0.5, -0.3), "aVR": (-0.75, 0.0), "aVL": (0.0, 0.3),
    "aVF": (0.75, -0.15), "V1": (0.0, 1.0), "V2": (0.3, 0.9), "V3": (0.6, 0.6), "V4": (0.9, 0.3),
    "V5": (1.0, 0.1), "V6": (0.8, 0.0)}


def test_a_twelve_lead_edf_at_257_hz_scores_like_the_two_lead_original(tmp_path):
    """As a 12-lead Holter (INCART-like: 257 Hz, I ... V6) would give record 208: lead II is chosen, the
    beats are the reference beats, and the ventricular beats are flagged and suggested as on MIT-BIH's own
    360 Hz two-lead file."""
    import wfdb

    from ecg_rnn.signal import resample

    source = open_record(sample_record("208"))
    leads = source.read_leads(0, SECONDS * 360)
    mlii, v1 = (resample(leads[:, c], 360.0, 257.0).astype(np.float64) for c in (0, 1))
    signal = np.stack([a * mlii + b * v1 for a, b in TWELVE_LEADS.values()], axis=1)
    wfdb.wrsamp("twelve", fs=257, units=["mV"] * 12, sig_name=list(TWELVE_LEADS), p_signal=signal,
                fmt=["16"] * 12, adc_gain=[400.0] * 12, baseline=[0] * 12, write_dir=str(tmp_path))
    reference = source.annotations
    keep = reference.sample < SECONDS * 360
    wfdb.wrann("twelve", "atr", np.round(reference.sample[keep] * 257 / 360).astype(int),
               list(reference.symbol[keep]), write_dir=str(tmp_path), fs=257)
    wfdb_copy, edf_copy = wfdb_and_edf_copies(tmp_path / "twelve", tmp_path, SECONDS, annotate=False)
    (tmp_path / f"{wfdb_copy.name}.atr").unlink()  # both copies unannotated, as a user's recording arrives
    assert open_record(edf_copy).lead == "II" and len(open_record(edf_copy).ecg_channels) == 12
    out = tmp_path / "out"
    for path in (sample_record("208"), edf_copy):
        assert cli.main(["score", str(path), "--out", str(out)]) == 0
    original = pd.read_csv(out / "208.csv")
    original = original[original["time_s"] < SECONDS - 1]
    twelve = pd.read_csv(out / f"{edf_copy.stem}.csv")
    nearest = np.abs(twelve["time_s"].to_numpy()[:, None] - original["time_s"].to_numpy()[None, :]).argmin(axis=0)
    same_beat = np.abs(twelve["time_s"].to_numpy()[nearest] - original["time_s"].to_numpy()) < 0.05
    assert same_beat.mean() > 0.99
    ventricular = (original["ref_aami"] == "V").to_numpy() & same_beat
    assert ventricular.sum() > 200
    flagged, suggested = (twelve[column].to_numpy()[nearest][same_beat] for column in ("flagged", "suggested_class"))
    assert (flagged == original["flagged"].to_numpy()[same_beat]).mean() > 0.95
    assert twelve["flagged"].to_numpy()[nearest][ventricular].mean() > 0.95
    suggested_v = {name: (table["suggested_class"].to_numpy()[rows][ventricular] == "V").mean()
                   for name, table, rows in (("twelve", twelve, nearest), ("original", original, slice(None)))}
    # 208's first ten minutes mix V with fusion beats, whose suggestion turns on a few per cent of QRS area:
    # the share suggested V moves by several points with the rate and the lead set, beat agreement stays high
    assert suggested_v["twelve"] == pytest.approx(suggested_v["original"], abs=0.1)
    assert (suggested == original["suggested_class"].to_numpy()[same_beat]).mean() > 0.9
    normal = (original["ref_aami"] == "N").to_numpy() & same_beat
    assert twelve["flagged"].to_numpy()[nearest][normal].mean() == pytest.approx(
        original["flagged"].to_numpy()[normal].mean(), abs=0.03)
