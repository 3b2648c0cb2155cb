"""Speed benchmarks (`make bench`): writes benchmarks/results.md and benchmarks/results.json.

    python -m benchmarks.run [--model PATH] [--record 208] [--runs 5] [--skip-holter] [--skip-training]

Each figure is the median of several runs, and each is also given as a ratio against a reference
measured in the same run on the same machine, so the ratios hold on a loaded machine too.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from ecg_rnn.beats import beats_from_source
from ecg_rnn.records import open_record
from ecg_rnn.detector import RecurrentAEDetector
from ecg_rnn.paths import default_model_path
from ecg_rnn.scoring import score_beats
from ecg_rnn.protocols import DS1, build_beat_set, locate_mitdb

ROOT = Path(__file__).resolve().parents[1]
COMMAND = "make bench  # = python -m benchmarks.run"


def timed(fn, runs: int):
    """Median wall time of `runs` calls, and the last result."""
    times, result = [], None
    for _ in range(runs):
        started = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times), result


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import torch

    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return (f"{cpu}, {os.cpu_count()} logical cores; Python {platform.python_version()}, torch {torch.__version__}, "
            f"{torch.get_num_threads()} torch threads; load average {load} (1/5/15 min) at the start")


def score_file(detector: RecurrentAEDetector, record: Path, out_csv: Path) -> int:
    """The whole scoring path of `ecg-rnn score`: read, filter, R-peaks, beats, model, CSV."""
    beats = beats_from_source(open_record(record), detector.signal, detector.beats, peaks="detect")
    scored = score_beats(detector, beats, has_reference=False)
    scored.table().to_csv(out_csv, index=False)
    return len(beats)


def bench_record(detector, record: Path, runs: int) -> dict:
    import wfdb
    from wfdb import processing

    with tempfile.TemporaryDirectory() as tmp:
        seconds, n_beats = timed(lambda: score_file(detector, record, Path(tmp) / "out.csv"), runs)
    lead = wfdb.rdrecord(str(record), channels=[0]).p_signal[:, 0]
    header = wfdb.rdheader(str(record))
    gqrs, _ = timed(lambda: processing.gqrs_detect(sig=lead, fs=header.fs), max(1, runs // 2))
    return {"record": record.name, "beats": n_beats, "end_to_end_s": seconds, "gqrs_detect_s": gqrs,
            "ratio_to_gqrs": seconds / gqrs}


def bench_throughput(detector, record: Path, naive_beats: int = 300) -> dict:
    beats = beats_from_source(open_record(record), detector.signal, detector.beats, peaks="detect")
    batched, _ = timed(lambda: detector.score_samples(beats), 3)
    naive, _ = timed(lambda: [detector.score_samples(beats.subset(slice(i, i + 1)), context=beats)
                              for i in range(naive_beats)], 1)
    batched_rate, naive_rate = len(beats) / batched, naive_beats / naive
    return {"beats": len(beats), "batched_beats_per_s": batched_rate, "naive_beats_per_s": naive_rate,
            "ratio": batched_rate / naive_rate}


def holter_child(model: str, record: str, out: str, whole: bool) -> None:
    """Runs in its own process so that its peak memory is its own."""
    detector = RecurrentAEDetector.load(model)
    started = time.perf_counter()
    chunk = 1e12 if whole else None
    kwargs = {} if chunk is None else {"chunk_s": chunk}
    beats = beats_from_source(open_record(record), detector.signal, detector.beats, peaks="detect", **kwargs)
    scored = score_beats(detector, beats, has_reference=False)
    scored.table().to_csv(out, index=False)
    seconds = time.perf_counter() - started
    print(json.dumps({"seconds": seconds, "peak_rss_bytes": peak_rss_bytes(), "beats": len(beats)}))


def peak_rss_bytes() -> int:
    """This process's peak resident set (VmHWM). Not getrusage's ru_maxrss: Linux carries that across
    fork and exec, so a child started by a big parent would report the parent's peak."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def bench_holter(model: Path, holter: Path) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        results = {}
        for mode in ("chunked", "whole"):
            out = Path(tmp) / f"{mode}.csv"
            cmd = [sys.executable, "-m", "benchmarks.run", "--holter-child", str(holter), "--model", str(model),
                   "--child-out", str(out)] + (["--whole"] if mode == "whole" else [])
            done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, check=True)
            results[mode] = json.loads(done.stdout.strip().splitlines()[-1])
            results[mode]["csv"] = out.read_text()
        import io

        import pandas as pd

        a, b = (pd.read_csv(io.StringIO(results[m]["csv"])) for m in ("chunked", "whole"))
        same = a["sample"].to_numpy() == b["sample"].to_numpy() if len(a) == len(b) else np.zeros(0, bool)
        differ = int(len(a) - same.sum()) if len(a) == len(b) else None
        # a moved beat changes its neighbours' RR intervals too: compare the beats away from any move
        untouched = same & np.r_[True, same[:-1]] & np.r_[same[1:], True] if len(same) else same
        max_diff = float(np.abs(a["score"].to_numpy() - b["score"].to_numpy())[untouched].max()) if len(same) else None
    header = __import__("wfdb").rdheader(str(holter))
    return {"hours": header.sig_len / header.fs / 3600, "beats": results["chunked"]["beats"],
            "chunked_s": results["chunked"]["seconds"], "chunked_peak_rss_mib": results["chunked"]["peak_rss_bytes"] / 2**20,
            "whole_s": results["whole"]["seconds"], "whole_peak_rss_mib": results["whole"]["peak_rss_bytes"] / 2**20,
            "beats_placed_differently": differ, "max_score_difference_same_beats": max_diff}


def bench_training(model: Path) -> dict:
    """One epoch of the default configuration on MIT-BIH DS1 normal beats."""
    template = RecurrentAEDetector.load(model)
    beats = build_beat_set(DS1, signal_config=template.signal, beat_config=template.beats,
                           progress=False)
    train = beats.subset(beats.aami == "N")
    detector = RecurrentAEDetector(template.model, replace(template.training, epochs=1, time_budget_s=None),
                                   template.signal, template.beats)
    started = time.perf_counter()
    detector.fit(train, context=beats)
    seconds = time.perf_counter() - started
    n_fit = detector.training_data_["n_train_beats"]
    return {"train_beats": n_fit, "epoch_s": seconds, "train_beats_per_s": n_fit / seconds}


def report(results: dict) -> str:
    r = results
    lines = ["# Speed benchmarks", "", f"- command: `{COMMAND}`", f"- machine: {r['machine']}",
             f"- model: `{r['model']}`", "- every time is the median of several runs (counts below)", ""]
    if "record" in r:
        e = r["record"]
        lines += ["## Scoring one 30-minute record end to end", "",
                  "read + filter + R-peaks + beats + model + CSV, as `ecg-rnn score` does it "
                  f"(median of {r['runs']} runs); reference: `wfdb.processing.gqrs_detect` alone on the same lead.", "",
                  "| record | beats | end to end (s) | gqrs_detect alone (s) | ratio (target <= 0.25) | target <= 0.5 s |",
                  "|---|---:|---:|---:|---:|---|",
                  f"| {e['record']} | {e['beats']} | {e['end_to_end_s']:.3f} | {e['gqrs_detect_s']:.3f} | "
                  f"{e['ratio_to_gqrs']:.3f} | {'met' if e['end_to_end_s'] <= 0.5 else 'missed'} |", ""]
    if "throughput" in r:
        t = r["throughput"]
        lines += ["## Model throughput", "",
                  "Scoring a record's beats in batches against the naive loop that scores one beat per call.", "",
                  "| beats | batched (beats/s) | one at a time (beats/s) | ratio |", "|---:|---:|---:|---:|",
                  f"| {t['beats']} | {t['batched_beats_per_s']:.0f} | {t['naive_beats_per_s']:.0f} | {t['ratio']:.0f}x |", ""]
    if "holter" in r:
        h = r["holter"]
        lines += ["## A 24-hour Holter recording", "",
                  f"All 48 MIT-BIH records concatenated into one {h['hours']:.1f}-hour WFDB record "
                  "(`python -m benchmarks.holter`), scored from the file in half-hour chunks (the default), "
                  "against the same scoring with the whole signal loaded. Each run is its own process; peak "
                  "memory is that process's maximum resident set (Python, torch and the model included).", "",
                  "| mode | beats | seconds (target <= 30) | peak memory (MiB, target <= 1024) |", "|---|---:|---:|---:|",
                  f"| chunked | {h['beats']} | {h['chunked_s']:.1f} | {h['chunked_peak_rss_mib']:.0f} |",
                  f"| whole signal | {h['beats']} | {h['whole_s']:.1f} | {h['whole_peak_rss_mib']:.0f} |", "",
                  f"Beats placed differently by the two modes: {h['beats_placed_differently']} of {h['beats']}; "
                  f"largest score difference over the beats that are neither moved nor next to a moved beat: "
                  f"{h['max_score_difference_same_beats']:.2e}.", ""]
    if "training" in r:
        t = r["training"]
        lines += ["## Training", "",
                  "One epoch of the default configuration on MIT-BIH DS1 normal beats (training pass, held-out "
                  "loss and calibration included).", "",
                  "| training beats | epoch (s) | beats/s |", "|---:|---:|---:|",
                  f"| {t['train_beats']} | {t['epoch_s']:.1f} | {t['train_beats_per_s']:.0f} |", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=None, help="model file (default: the shipped default)")
    parser.add_argument("--record", default="208", help="MIT-BIH record for the single-record figures")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--skip-holter", action="store_true")
    parser.add_argument("--skip-training", action="store_true")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results.md")
    parser.add_argument("--holter-child", help=argparse.SUPPRESS)
    parser.add_argument("--child-out", help=argparse.SUPPRESS)
    parser.add_argument("--whole", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    model = args.model or default_model_path()
    if args.holter_child:
        holter_child(str(model), args.holter_child, args.child_out, args.whole)
        return
    detector = RecurrentAEDetector.load(model)
    mitdb = locate_mitdb()
    record = mitdb / args.record
    results = {"machine": machine(), "model": str(Path(model).resolve().relative_to(ROOT))
               if Path(model).resolve().is_relative_to(ROOT) else str(model), "runs": args.runs}
    print("scoring one record ...", file=sys.stderr)
    results["record"] = bench_record(detector, record, args.runs)
    print("model throughput ...", file=sys.stderr)
    results["throughput"] = bench_throughput(detector, record)
    if not args.skip_holter:
        holter = ROOT / "cache" / "holter24h"
        if not holter.with_suffix(".dat").exists():
            from benchmarks.holter import build_holter

            build_holter(holter, mitdb)
        print("24-hour recording ...", file=sys.stderr)
        results["holter"] = bench_holter(Path(model), holter)
    if not args.skip_training:
        print("one training epoch ...", file=sys.stderr)
        results["training"] = bench_training(Path(model))
    write_results(args.out, report(results), results)


def write_results(out: Path, text: str, results: dict) -> None:
    """The Markdown report, its JSON twin, and the report on stdout."""
    out.write_text(text)
    out.with_suffix(".json").write_text(json.dumps(results, indent=2))
    print(text)


if __name__ == "__main__":
    main()
