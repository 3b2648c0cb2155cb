"""Command line: a thin layer over the package. Errors are one line on stderr and a non-zero exit."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ecg_rnn import __version__
from ecg_rnn.errors import EcgRnnError

EXIT_BAD_INPUT = 2


def _add_record_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--lead", help="lead name or index (default: MLII, else the first ECG lead)")
    parser.add_argument("--fs", type=float, help="sampling rate in Hz, for a CSV without a time column")


def _add_data(sub) -> None:
    p = sub.add_parser("data", help="find MIT-BIH (MITDB_DIR, data/mitdb, ../shared/data/mitdb) or download it")
    p.add_argument("--no-download", action="store_true", help="fail instead of downloading from PhysioNet")
    p.set_defaults(run=_run_data)


def _run_data(args) -> int:
    from ecg_rnn.protocols import locate_mitdb

    folder = locate_mitdb(download=not args.no_download)
    print(folder)
    return 0


def _add_beats(sub) -> None:
    p = sub.add_parser("beats", help="cut a record into beats and write one CSV row per beat")
    p.add_argument("record", help="WFDB record path without extension (e.g. data/mitdb/100), or a .csv")
    _add_record_options(p)
    p.add_argument("--out", required=True, type=Path, help="CSV file to write")
    p.add_argument("--peaks", choices=("auto", "reference", "detect"), default="auto",
                   help="beat positions: reference annotations, the R-peak detector, or auto (reference "
                        "when annotations exist)")
    p.add_argument("--pre", type=float, help="window start before the R-peak, seconds (default 0.28)")
    p.add_argument("--post", type=float, help="window end after the R-peak, seconds (default 0.42)")
    p.add_argument("--waves", action="store_true", help="also write the normalised beat samples")
    p.set_defaults(run=_run_beats)


def _run_beats(args) -> int:
    import dataclasses

    from ecg_rnn.beats import BeatConfig, beats_from_record
    from ecg_rnn.records import read_record

    config = BeatConfig()
    overrides = {k: v for k, v in (("pre_s", args.pre), ("post_s", args.post)) if v is not None}
    config = dataclasses.replace(config, **overrides)
    record = read_record(args.record, lead=args.lead, fs=args.fs)
    beats = beats_from_record(record, beat_config=config, peaks=args.peaks)
    table = beats.table()
    if args.waves:
        for i in range(beats.waves.shape[1]):
            table[f"w{i}"] = beats.waves[:, i].round(5)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(args.out, index=False)
    print(f"{record.name}: {len(beats)} beats ({record.duration_s:.0f} s, lead {record.lead}, "
          f"{record.fs:g} Hz) -> {args.out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ecg-rnn", description=__doc__)
    parser.add_argument("--version", action="version", version=f"ecg-rnn {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in COMMANDS:
        add(sub)
    return parser


COMMANDS = [_add_data, _add_beats]


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except EcgRnnError as exc:
        print(f"ecg-rnn {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print(f"ecg-rnn {args.command}: interrupted", file=sys.stderr)
        return 130
    except (OSError, MemoryError) as exc:
        print(f"ecg-rnn {args.command}: error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
