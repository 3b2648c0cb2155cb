"""Build a 24-hour WFDB record by concatenating half-hour records (MIT-BIH's 48 make exactly 24 h).

    python -m benchmarks.holter --out cache/holter24h [--source DIR] [--records 100 101 ...]

Writes `<out>.hea`, `<out>.dat` (format 212, one lead) and `<out>.atr` (the records' beat annotations,
shifted), so the result can be scored and compared with its reference like any other record.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import wfdb
from tqdm.auto import tqdm

from ecg_rnn.protocols import ALL_RECORDS, locate_mitdb
from ecg_rnn.records import read_record


def build_holter(out: Path, source: Path, records: tuple[str, ...] = ALL_RECORDS, lead: str | None = None) -> Path:
    """Concatenate one lead of each record (MLII or the first ECG lead) into one record at their rate."""
    pieces, samples, symbols, offset, fs = [], [], [], 0, None
    for name in tqdm(records, desc="concatenating", unit="record"):
        record = read_record(source / name, lead=lead)
        if fs is None:
            fs = record.fs
        if record.fs != fs:
            raise SystemExit(f"{name}: sampling rate {record.fs:g} Hz differs from {fs:g} Hz; pick records of one rate")
        pieces.append(record.signal)
        if record.annotations is not None:
            samples.append(record.annotations.sample + offset)
            symbols.append(record.annotations.symbol)
        offset += record.sig_len
    signal = np.concatenate(pieces).astype(np.float64)[:, None]
    out.parent.mkdir(parents=True, exist_ok=True)
    wfdb.wrsamp(out.name, fs=fs, units=["mV"], sig_name=["ECG"], p_signal=signal, fmt=["212"],
                adc_gain=[200.0], baseline=[1024], write_dir=str(out.parent))
    if samples:
        wfdb.wrann(out.name, "atr", np.concatenate(samples), np.concatenate(symbols).tolist(),
                   write_dir=str(out.parent))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("cache/holter24h"))
    parser.add_argument("--source", type=Path, help="folder of WFDB records (default: MIT-BIH, found as `make data`)")
    parser.add_argument("--records", nargs="+", help="record names in order (default: all 48 of MIT-BIH)")
    args = parser.parse_args()
    source = args.source or locate_mitdb()
    records = tuple(args.records) if args.records else ALL_RECORDS
    out = build_holter(args.out, source, records)
    header = wfdb.rdheader(str(out))
    print(f"{out}: {header.sig_len} samples at {header.fs:g} Hz = {header.sig_len / header.fs / 3600:.2f} h")


if __name__ == "__main__":
    main()
