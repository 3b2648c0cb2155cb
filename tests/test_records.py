"""Reading records: real WFDB and CSV files, and every kind of bad input gets one clear error."""

from __future__ import annotations

import numpy as np
import pytest
import wfdb

from ecg_rnn.errors import RecordError
from ecg_rnn.records import MAX_SAMPLES, choose_lead, read_csv, read_record


def test_reads_mitdb_record_with_mlii_and_annotations(sample_dir):
    record = read_record(sample_dir / "208")
    assert record.fs == 360.0
    assert record.lead == "MLII"
    assert record.sig_name == ("MLII", "V1")
    assert record.sig_len == 650000
    assert record.units == "mV"
    assert record.signal.dtype == np.float32
    reference = wfdb.rdann(str(sample_dir / "208"), "atr")  # every annotation of the file, in order
    assert np.array_equal(record.annotations.sample, reference.sample)
    assert list(record.annotations.symbol) == reference.symbol and len(reference.symbol) == 3040
    assert 0.5 < np.ptp(record.signal[:3600]) < 10  # millivolts, not ADC units


def test_lead_override_by_name_and_index(sample_dir):
    assert read_record(sample_dir / "100", lead="V5").lead == "V5"
    assert read_record(sample_dir / "100", lead=1).lead == "V5"
    assert read_record(str(sample_dir / "100") + ".hea").name == "100"


def test_paced_record_without_mlii_falls_back_to_first_ecg_lead():
    assert choose_lead(["V5", "V2"], ["mV", "mV"], None, "x") == 0
    assert choose_lead(["RESP", "ABP", "II"], ["l/min", "mmHg", "mV"], None, "x") == 2
    assert choose_lead(["RESP", "PLETH", "ECG"], ["", "", ""], None, "x") == 2


def test_unknown_lead_names_the_available_ones(sample_dir):
    with pytest.raises(RecordError, match=r"lead 'V9' not found; available leads: MLII, V5"):
        read_record(sample_dir / "100", lead="V9")
    with pytest.raises(RecordError, match="lead index 7 does not exist"):
        read_record(sample_dir / "100", lead=7)


@pytest.mark.parametrize("fs", [250, 1000])
def test_other_sampling_rates_and_formats(tmp_path, fs):
    t = np.arange(int(20 * fs)) / fs
    ecg = np.sin(2 * np.pi * 1.2 * t) ** 63  # sharp periodic peaks, 72 bpm
    wfdb.wrsamp("synth", fs=fs, units=["mV"], sig_name=["II"], p_signal=ecg[:, None], fmt=["16"],
                write_dir=str(tmp_path))
    record = read_record(tmp_path / "synth")
    assert record.fs == fs and record.lead == "II" and record.annotations is None
    assert np.allclose(record.signal, ecg, atol=1e-3)


def test_missing_dat(record_copy):
    path = record_copy()
    path.with_suffix(".dat").unlink()
    with pytest.raises(RecordError, match="signal file 100.dat is missing"):
        read_record(path)


def test_missing_header(tmp_path):
    with pytest.raises(RecordError, match="header file not found"):
        read_record(tmp_path / "nothing")


def test_truncated_dat(record_copy):
    path = record_copy()
    dat = path.with_suffix(".dat")
    dat.write_bytes(dat.read_bytes()[:100_000])
    with pytest.raises(RecordError, match="holds 33333 samples but the header says 650000; the file is truncated"):
        read_record(path)


@pytest.mark.parametrize("target", ["../100.dat", "/etc/passwd", "sub/100.dat", ".."])
def test_header_pointing_outside_folder(record_copy, target):
    path = record_copy()
    hea = path.with_suffix(".hea")
    hea.write_text(hea.read_text().replace("100.dat", target))
    with pytest.raises(RecordError, match="points outside the record's folder"):
        read_record(path)


def test_symlinked_signal_file(record_copy, tmp_path):
    path = record_copy()
    dat = path.with_suffix(".dat")
    real = tmp_path / "elsewhere.bin"
    dat.rename(real)
    dat.symlink_to(real)
    with pytest.raises(RecordError, match="symbolic link"):
        read_record(path)


@pytest.mark.parametrize("first_line,message", [
    ("100 2 360 9000000000", "claims 9000000000 samples"),
    ("100 5000 360 650000", "claims 5000 signals"),
    ("100 2 1 650000", "sampling rate 1 Hz is outside"),
])
def test_absurd_header_refused_before_allocating(record_copy, first_line, message):
    path = record_copy()
    hea = path.with_suffix(".hea")
    lines = hea.read_text().splitlines()
    hea.write_text("\n".join([first_line] + lines[1:]) + "\n")
    with pytest.raises(RecordError, match=message):
        read_record(path)


def test_unknown_storage_format(record_copy):
    path = record_copy()
    hea = path.with_suffix(".hea")
    hea.write_text(hea.read_text().replace(" 212 ", " 999 "))
    with pytest.raises(RecordError, match="storage format"):
        read_record(path)


def test_binary_junk_header(tmp_path):
    (tmp_path / "junk.hea").write_bytes(bytes(range(256)) * 4)
    with pytest.raises(RecordError, match="binary data, not a WFDB text header"):
        read_record(tmp_path / "junk")


def test_garbage_text_header(tmp_path):
    (tmp_path / "junk.hea").write_text("this is not a header at all\n")
    with pytest.raises(RecordError, match="not a valid WFDB header"):
        read_record(tmp_path / "junk")


def test_corrupt_annotation_file(record_copy):
    path = record_copy()
    path.with_suffix(".atr").write_bytes(b"\xff" * 999)
    with pytest.raises(RecordError, match="annotation file could not be read"):
        read_record(path)


def _write_record(folder, x, fs=360):
    wfdb.wrsamp("rec", fs=fs, units=["mV"], sig_name=["MLII"], p_signal=x[:, None], fmt=["16"],
                write_dir=str(folder))
    return folder / "rec"


def test_flat_signal(tmp_path):
    with pytest.raises(RecordError, match="flat"):
        read_record(_write_record(tmp_path, np.zeros(36000)))


def test_all_nan_signal(tmp_path):
    x = np.full(36000, np.nan)
    x[0] = 0.0  # wfdb cannot write an all-NaN column; one sample keeps it writable
    with pytest.raises(RecordError, match="missing"):
        read_record(_write_record(tmp_path, x))


def test_short_gaps_are_bridged(tmp_path):
    x = np.sin(np.arange(36000) / 50.0)
    x[1000:1010] = np.nan
    record = read_record(_write_record(tmp_path, x))
    assert np.isfinite(record.signal).all()


def test_record_shorter_than_a_few_beats(tmp_path):
    with pytest.raises(RecordError, match=r"recording is 1.00 s long"):
        read_record(_write_record(tmp_path, np.sin(np.arange(360) / 10.0)))


# --- CSV -------------------------------------------------------------------------------------


def _excerpt(sample_dir, seconds=20):
    return read_record(sample_dir / "100").signal[: int(seconds * 360)]


def test_csv_with_time_column(tmp_path, sample_dir):
    x = _excerpt(sample_dir)
    path = tmp_path / "rec.csv"
    path.write_text("time,MLII\n" + "\n".join(f"{i / 360:.6f},{v:.4f}" for i, v in enumerate(x)))
    record = read_csv(path)
    assert record.fs == 360 and record.lead == "MLII" and record.sig_len == len(x)
    assert np.allclose(record.signal, x, atol=1e-4)


def test_csv_single_column_needs_fs(tmp_path, sample_dir):
    path = tmp_path / "one.csv"
    path.write_text("\n".join(f"{v:.4f}" for v in _excerpt(sample_dir)))
    with pytest.raises(RecordError, match="give the sampling rate"):
        read_csv(path)
    assert read_csv(path, fs=360).fs == 360


@pytest.mark.parametrize("body,message", [
    ("time,ecg\n0,1\n", "holds 1 data row"),
    ("ecg\n1\n2\nabc\n4\n", "row 3 is not a number"),
    (",".join(["1"] * 5000) + "\n", "more than 64 columns"),
    ("time,ecg\n0,1\n0.5,2\n0.4,3\n", "must increase strictly"),
])
def test_bad_csv(tmp_path, body, message):
    path = tmp_path / "bad.csv"
    path.write_text(body)
    with pytest.raises(RecordError, match=message):
        read_csv(path, fs=360)


def test_csv_not_utf8(tmp_path):
    path = tmp_path / "latin.csv"
    path.write_bytes("température\n1\n2\n".encode("utf-16"))
    with pytest.raises(RecordError):
        read_csv(path, fs=360)


def test_max_samples_bound_is_sane():
    assert MAX_SAMPLES >= 48 * 3600 * 500  # a 48 h Holter at 500 Hz fits
