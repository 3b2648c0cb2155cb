"""EDF / EDF+ copies of WFDB records for the tests: the same digital samples and gain, so the physical
signal is the WFDB record's own; beat annotations become EDF+ annotations."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyedflib
import wfdb

DATA_RECORD_S = 1  # EDF data records of 1 s: the copies are cut to whole seconds
ANNOTATION_SIGNALS = 6


def wfdb_and_edf_copies(record: Path, folder: Path, seconds: int, annotate: bool = True) -> tuple[Path, Path]:
    """The first `seconds` of a WFDB record (format 212 or 16) written twice: as WFDB and as EDF+."""
    header = wfdb.rdheader(str(record))
    n = int(seconds * header.fs)
    rec = wfdb.rdrecord(str(record), sampto=n, physical=False)
    digital = rec.d_signal.astype(np.int64)
    name = f"{record.name}_{seconds}s"
    wfdb.wrsamp(name, fs=rec.fs, units=rec.units, sig_name=rec.sig_name, d_signal=rec.d_signal,
                fmt=rec.fmt, adc_gain=rec.adc_gain, baseline=rec.baseline, write_dir=str(folder))
    ann = wfdb.rdann(str(record), "atr", sampto=n - 1)
    wfdb.wrann(name, "atr", ann.sample, ann.symbol, write_dir=str(folder), fs=rec.fs)
    edf_path = folder / f"{name}.edf"
    writer = pyedflib.EdfWriter(str(edf_path), len(rec.sig_name), file_type=pyedflib.FILETYPE_EDFPLUS)
    try:
        headers = []
        for i, label in enumerate(rec.sig_name):
            centred = digital[:, i] - rec.baseline[i]
            low, high = -(2 ** 15) + 1, 2 ** 15 - 1  # the EDF digital range; physical = digital / gain
            headers.append({"label": label, "dimension": rec.units[i], "sample_frequency": rec.fs,
                            "physical_min": low / rec.adc_gain[i], "physical_max": high / rec.adc_gain[i],
                            "digital_min": low, "digital_max": high, "transducer": "", "prefilter": ""})
            digital[:, i] = centred
        writer.setSignalHeaders(headers)
        # EDF+ keeps annotations in an annotation signal of bounded size per data record: room for
        # a few beats per second
        writer.set_number_of_annotation_signals(ANNOTATION_SIGNALS)
        writer.writeSamples([np.ascontiguousarray(digital[:, i], dtype=np.int32) for i in range(digital.shape[1])],
                            digital=True)
        if annotate:
            for sample, symbol in zip(ann.sample, ann.symbol):
                writer.writeAnnotation(sample / rec.fs, -1, symbol)
    finally:
        writer.close()
    return folder / name, edf_path
