"""Score ecg_rnn.signal.detect_r_peaks on every record of an MIT-BIH-style database.

    .venv/bin/python -m benchmarks.rpeaks [--mitdb DIR] [--out benchmarks/rpeaks.md] [--runs 3]

For each record (channel 0, whole record) the detections are matched to the reference beat
annotations with wfdb.processing.compare_annotations and a 150 ms window; detections within 0.15 s
of the record's start or end are ignored (a beat cut by the edge may or may not be annotated).
Writes a Markdown table (record, reference beats, TP, FN, FP, sensitivity, positive predictivity,
median seconds of detect_r_peaks over --runs runs) with a gross total row, and prints it.

The database is --mitdb, else $MITDB_DIR, else data/mitdb/ if it holds records, else
../shared/data/mitdb/ (both relative to the repository root).
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import wfdb
from tqdm.auto import tqdm
from wfdb.processing import compare_annotations

from ecg_rnn.protocols import locate_mitdb
from ecg_rnn.signal import detect_r_peaks

REPO_ROOT = Path(__file__).resolve().parents[1]
BEAT_SYMBOLS = frozenset("NLRBAaJSVrFejnE/fQ?")  # MIT-BIH beat annotations (no rhythm/noise/flutter marks)
WINDOW_S = 0.15  # match tolerance, and the edge margin where detections are ignored


@dataclass(frozen=True)
class RecordScore:
    record: str
    reference: int
    tp: int
    fn: int
    fp: int
    seconds: float

    @property
    def sensitivity(self) -> float:
        return self.tp / max(self.tp + self.fn, 1)

    @property
    def predictivity(self) -> float:
        return self.tp / max(self.tp + self.fp, 1)


def default_mitdb() -> Path:
    """Where the project finds MIT-BIH ($MITDB_DIR, data/mitdb, ../shared/data/mitdb); no download."""
    return locate_mitdb(download=False, quiet=True)


def record_names(folder: Path) -> list[str]:
    """Records that have both a header and reference annotations."""
    return sorted(p.stem for p in folder.glob("*.hea") if p.with_suffix(".atr").exists())


def score_record(folder: Path, name: str, runs: int = 3) -> RecordScore:
    record = wfdb.rdrecord(str(folder / name), channels=[0])
    annotation = wfdb.rdann(str(folder / name), "atr")
    fs = float(record.fs)
    x = record.p_signal[:, 0]
    reference = np.array([s for s, sym in zip(annotation.sample, annotation.symbol) if sym in BEAT_SYMBOLS],
                         dtype=np.int64)
    times = []
    for _ in range(max(1, runs)):
        start = time.perf_counter()
        peaks = detect_r_peaks(x, fs)
        times.append(time.perf_counter() - start)
    margin = int(WINDOW_S * fs)
    peaks = peaks[(peaks >= margin) & (peaks < len(x) - margin)]
    result = compare_annotations(reference, peaks, int(WINDOW_S * fs))
    return RecordScore(name, len(reference), int(result.tp), int(result.fn), int(result.fp), float(np.median(times)))


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def command_line() -> str:
    python = Path(sys.executable)
    try:
        python = python.relative_to(Path.cwd())
    except ValueError:
        pass
    return shlex.join([str(python), "-m", "benchmarks.rpeaks", *sys.argv[1:]])


def load_average() -> str:
    try:
        return "load average " + " / ".join(f"{v:.2f}" for v in os.getloadavg()) + " (1 / 5 / 15 min) at the end"
    except (AttributeError, OSError):
        return "load average unknown"


def markdown(scores: list[RecordScore], folder: Path, command: str, runs: int) -> str:
    tp, fn, fp = (sum(getattr(s, k) for s in scores) for k in ("tp", "fn", "fp"))
    n = sum(s.reference for s in scores)
    seconds = np.array([s.seconds for s in scores])
    lines = [
        "# R-peak detector on MIT-BIH",
        "",
        f"- command: `{command}`",
        f"- machine: {cpu_model()}, {os.cpu_count()} logical cores; Python {platform.python_version()}, "
        f"NumPy {np.__version__}; {load_average()}",
        f"- database: `{os.path.relpath(folder)}` ({len(scores)} records, channel 0, whole records)",
        f"- matching: `wfdb.processing.compare_annotations`, {WINDOW_S * 1000:.0f} ms window, reference = beat "
        f"annotations ({''.join(sorted(BEAT_SYMBOLS))}); detections within {WINDOW_S:g} s of either end ignored",
        f"- seconds: wall time of `detect_r_peaks` alone, median of {runs} run(s)",
        "",
        "| record | reference beats | TP | FN | FP | Se (%) | +P (%) | seconds |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for s in scores:
        lines.append(f"| {s.record} | {s.reference} | {s.tp} | {s.fn} | {s.fp} | {100 * s.sensitivity:.2f} | "
                     f"{100 * s.predictivity:.2f} | {s.seconds:.3f} |")
    lines.append(f"| **gross** | **{n}** | **{tp}** | **{fn}** | **{fp}** | **{100 * tp / max(tp + fn, 1):.2f}** | "
                 f"**{100 * tp / max(tp + fp, 1):.2f}** | **{seconds.sum():.2f}** |")
    worst = sorted(scores, key=lambda s: (s.fn + s.fp), reverse=True)[:5]
    lines += [
        "",
        f"Gross sensitivity {100 * tp / max(tp + fn, 1):.3f} %, positive predictivity {100 * tp / max(tp + fp, 1):.3f} %; "
        f"seconds per record: median {np.median(seconds):.3f}, max {seconds.max():.3f} (record "
        f"{scores[int(np.argmax(seconds))].record}).",
        "",
        "Most errors (FN + FP): " + ", ".join(
            f"{s.record} ({s.fn} FN, {s.fp} FP; Se {100 * s.sensitivity:.2f} %, +P {100 * s.predictivity:.2f} %)"
            for s in worst) + ".",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.rpeaks", description=__doc__.split("\n\n")[0])
    parser.add_argument("--mitdb", type=Path, default=None, help="database folder (default: see module doc)")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "benchmarks" / "rpeaks.md", help="Markdown file to write")
    parser.add_argument("--runs", type=int, default=3, help="timed runs per record (median is reported)")
    parser.add_argument("--records", nargs="*", default=None, help="only these records")
    args = parser.parse_args(argv)
    folder = (args.mitdb or default_mitdb()).expanduser()
    names = record_names(folder) if folder.is_dir() else []
    if args.records:
        names = [n for n in names if n in set(args.records)]
    if not names:
        print(f"no annotated WFDB records (*.hea with *.atr) in {folder}; pass --mitdb DIR or set MITDB_DIR",
              file=sys.stderr)
        return 2
    scores = [score_record(folder, name, args.runs) for name in tqdm(names, desc="records", unit="record")]
    report = markdown(scores, folder, command_line(), args.runs)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(report)
    print(report)
    print(f"written to {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
