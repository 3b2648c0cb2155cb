"""Speed claims the unit tests used to assert with a stopwatch (a shared 2-core box made those flaky):

    python -m benchmarks.timings [--out benchmarks/timings.md] [--runs 3] [--strict]

- R-peak detection on a 30-minute MIT-BIH record (650 000 samples): under 1 s;
- a cached beat set (records 100 and 232) loads again in under 0.5 s;
- the beat set of all 48 MIT-BIH records builds, uncached, in under 60 s.

Writes a Markdown table (median of --runs runs, each target met or missed); --strict exits 1 when a
target is missed. The tests keep the functional half of each claim (the detector's accuracy, the cache
being used rather than rebuilt, the de Chazal beat counts).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from benchmarks.run import machine, timed
from ecg_rnn.paths import sample_records_dir
from ecg_rnn.protocols import ALL_RECORDS, build_beat_set, locate_mitdb
from ecg_rnn.signal import detect_r_peaks

ROOT = Path(__file__).resolve().parents[1]
SAMPLE_DIR = sample_records_dir()
COMMAND = "python -m benchmarks.timings"
RPEAKS_TARGET_S = 1.0
CACHE_TARGET_S = 0.5
WHOLE_DATABASE_TARGET_S = 60.0


def rpeaks_seconds(runs: int, record: str = "208") -> tuple[float, int]:
    import wfdb

    lead = wfdb.rdrecord(str(SAMPLE_DIR / record), channels=[0])
    x, fs = lead.p_signal[:, 0], float(lead.fs)
    detect_r_peaks(x, fs)  # warm-up: filter design and imports are not the claim
    seconds, _ = timed(lambda: detect_r_peaks(x, fs), runs)
    return seconds, len(x)


def cache_seconds(runs: int) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        build_beat_set(("100", "232"), SAMPLE_DIR, cache_dir=Path(tmp), progress=False)
        seconds, _ = timed(lambda: build_beat_set(("100", "232"), SAMPLE_DIR, cache_dir=Path(tmp), progress=False),
                           runs)
    return seconds


def whole_database_seconds() -> float:
    mitdb = locate_mitdb()
    with tempfile.TemporaryDirectory() as tmp:  # uncached: a fresh cache folder
        seconds, _ = timed(lambda: build_beat_set(ALL_RECORDS, mitdb, cache_dir=Path(tmp), progress=False), 1)
    return seconds


def report(rows: list[tuple[str, float, float, int]], runs: int, machine_line: str) -> str:
    lines = ["# Timing claims", "", f"- command: `{COMMAND} --runs {runs}`", f"- machine: {machine_line}", "",
             "| claim | measured (s) | target (s) | runs | |", "|---|---:|---:|---:|---|"]
    lines += [f"| {claim} | {seconds:.3f} | {target:g} | {n} | {'met' if seconds < target else 'MISSED'} |"
              for claim, seconds, target, n in rows]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "timings.md")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    args = parser.parse_args(argv)
    machine_line = machine()  # its load average is the one at the start
    rpeaks, n = rpeaks_seconds(args.runs)
    rows = [(f"detect_r_peaks on MIT-BIH 208 ({n} samples, 30 min), median", rpeaks, RPEAKS_TARGET_S, args.runs),
            ("cached beat set of 100 + 232 loaded again, median", cache_seconds(args.runs), CACHE_TARGET_S, args.runs),
            ("beat set of all 48 MIT-BIH records, uncached", whole_database_seconds(), WHOLE_DATABASE_TARGET_S, 1)]
    text = report(rows, args.runs, machine_line)
    args.out.write_text(text)
    print(text)
    missed = [claim for claim, seconds, target, _ in rows if seconds >= target]
    return 1 if args.strict and missed else 0


if __name__ == "__main__":
    sys.exit(main())
