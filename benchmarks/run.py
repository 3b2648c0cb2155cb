"""Speed benchmarks (`make bench`): writes benchmarks/results.md and benchmarks/results.json.

    python -m benchmarks.run [--model PATH] [--record 208] [--runs 5] [--holter-runs 3] [--skip-holter]
                              [--skip-training]

Each figure is the median of several runs, and each is also given as a ratio against a reference
measured in the same run on the same machine, so the ratios hold on a loaded machine too.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from ecg_rnn.beats import beats_from_source, cut_source
from ecg_rnn.cli import main as ecg_rnn_cli
from ecg_rnn.records import open_record
from ecg_rnn.detector import RecurrentAEDetector
from ecg_rnn.outputs import read_meta, score_file
from ecg_rnn.paths import default_model_path
from ecg_rnn.scoring import score_beats
from ecg_rnn.protocols import DS1, build_beat_set, locate_mitdb

ROOT = Path(__file__).resolve().parents[1]
COMMAND = "make bench  # = python -m benchmarks.run"
RECORD_TARGET_S = 1.0  # one 30-minute record through every stage of `ecg-rnn score`
BARE_RECORD_TARGET_S = 0.5  # the same without patient adaptation
HOLTER_TARGET_S, HOLTER_TARGET_MIB = 30.0, 1024.0
WHOLE_CHUNK_S = 1e12  # a chunk longer than any recording: the signal read whole
SCORE_TOLERANCE = 1e-3  # scores closer than this count as the same (float32 passes, thread order)


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


def bench_record(detector, record: Path, runs: int) -> dict:
    """One recording through outputs.score_file, what `ecg-rnn score` runs per recording: read, quality and
    R-peaks fused over the leads, beats, rhythm, patient adaptation and model, suggested classes, and the
    per-beat CSV, events, annotations and meta files; then the same without patient adaptation. Scored from
    an unannotated copy, as a user's recording arrives (no reference annotations to read and match)."""
    import wfdb
    from wfdb import processing

    no_adaptation = copy.copy(detector).set_params(adaptation=replace(detector.adaptation, steps=0))
    with tempfile.TemporaryDirectory() as tmp:
        copied = unannotated_copy(record, Path(tmp) / "in")
        seconds, done = timed(lambda: score_file(detector, copied, Path(tmp) / "out"), runs)
        bare, _ = timed(lambda: score_file(no_adaptation, copied, Path(tmp) / "out"), runs)
        n_beats = done.beats
    lead = wfdb.rdrecord(str(record), channels=[0]).p_signal[:, 0]
    header = wfdb.rdheader(str(record))
    gqrs, _ = timed(lambda: processing.gqrs_detect(sig=lead, fs=header.fs), max(1, runs // 2))
    return {"record": record.name, "beats": n_beats, "end_to_end_s": seconds, "without_adaptation_s": bare,
            "gqrs_detect_s": gqrs, "ratio_to_gqrs": seconds / gqrs}


def unannotated_copy(record: Path, folder: Path) -> Path:
    """The record's header and signal files copied into folder, without its annotation files."""
    import wfdb

    folder.mkdir(parents=True)
    header = wfdb.rdheader(str(record))
    for name in {f"{record.name}.hea", *header.file_name}:
        shutil.copy(record.parent / name, folder / name)
    return folder / record.name


def bench_throughput(detector, record: Path, naive_beats: int = 300) -> dict:
    """The autoencoder's pass over a record's beats: all in batches against one beat per call (the model
    alone: templates, calibration and adaptation are per record, not per beat)."""
    beats = beats_from_source(open_record(record), detector.signal, detector.beats, peaks="detect")
    inputs = detector._inputs(beats, None)
    model = detector.model_
    batched, _ = timed(lambda: detector._forward(model, inputs), 3)
    naive, _ = timed(lambda: [detector._forward(model, {k: v[i:i + 1] for k, v in inputs.items()})
                              for i in range(naive_beats)], 1)
    batched_rate, naive_rate = len(beats) / batched, naive_beats / naive
    return {"beats": len(beats), "batched_beats_per_s": batched_rate, "naive_beats_per_s": naive_rate,
            "ratio": batched_rate / naive_rate}


def holter_child(model: str, record: str, out: str, whole: bool) -> None:
    """Runs in its own process so that its peak memory is its own. Chunked: `ecg-rnn score RECORD --out
    OUT` itself (the CLI's main, here: model loading, scoring, every output file, the triage table).
    Whole: the same stages with the signal read whole, for the comparison of the two."""
    started = time.perf_counter()
    if whole:
        detector = RecurrentAEDetector.load(model)
        source = open_record(record)
        cut = cut_source(source, detector.signal, detector.beats, peaks="detect", chunk_s=WHOLE_CHUNK_S)
        scored = score_beats(detector, cut, source.annotations is not None)
        Path(out).mkdir(parents=True, exist_ok=True)
        scored.table().to_csv(Path(out) / f"{Path(record).name}.csv", index=False)
        beats = len(cut.beats)
    else:
        code = ecg_rnn_cli(["score", record, "--model", model, "--out", out, "--overwrite"])
        if code:
            raise SystemExit(f"ecg-rnn score exited with {code}")
        beats = read_meta(Path(out), Path(record).name).beats
    seconds = time.perf_counter() - started
    print(json.dumps({"seconds": seconds, "peak_rss_bytes": peak_rss_bytes(), "beats": beats}))


def peak_rss_bytes() -> int:
    """This process's peak resident set (VmHWM). Not getrusage's ru_maxrss: Linux carries that across
    fork and exec, so a child started by a big parent would report the parent's peak."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def holter_run(model: Path, holter: Path, out: Path, whole: bool) -> dict:
    """One mode in its own process: its time inside the process, the process's wall time (Python start-up
    and imports included, as a user waits for `ecg-rnn score`) and its peak memory."""
    cmd = [sys.executable, "-m", "benchmarks.run", "--holter-child", str(holter), "--model", str(model),
           "--child-out", str(out)] + (["--whole"] if whole else [])
    started = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, check=True)
    return {**json.loads(done.stdout.strip().splitlines()[-1]), "process_s": time.perf_counter() - started}


def bench_holter(model: Path, holter: Path, runs: int) -> dict:
    """`ecg-rnn score` on the 24-hour record `runs` times (medians), and once with the signal read whole."""
    import pandas as pd

    with tempfile.TemporaryDirectory() as tmp:
        chunked = [holter_run(model, holter, Path(tmp) / f"chunked-{i}", whole=False) for i in range(runs)]
        whole = holter_run(model, holter, Path(tmp) / "whole", whole=True)
        a, b = (pd.read_csv(Path(tmp) / mode / f"{holter.name}.csv", keep_default_na=False)
                for mode in ("chunked-0", "whole"))
    header = __import__("wfdb").rdheader(str(holter))
    row = {"hours": header.sig_len / header.fs / 3600, "beats": chunked[0]["beats"], "chunked_runs": runs,
           "chunked_s_each": [r["seconds"] for r in chunked], **compare_modes(a, b)}
    for mode, done in (("chunked", chunked), ("whole", [whole])):
        row |= {f"{mode}_s": statistics.median(r["seconds"] for r in done),
                f"{mode}_process_s": statistics.median(r["process_s"] for r in done),
                f"{mode}_peak_rss_mib": statistics.median(r["peak_rss_bytes"] for r in done) / 2**20}
    return row


def compare_modes(a, b) -> dict:
    """How the per-beat tables of the chunked and the whole-signal runs differ: beats placed differently,
    beats whose quality, rhythm or flag differs, and over the other beats (a moved beat changes its
    neighbours' RR intervals too, so they are left out as well) how many scores differ by more than
    SCORE_TOLERANCE."""
    if len(a) != len(b):
        return {"beats_placed_differently": None, "quality_differs": None, "rhythm_differs": None,
                "flag_differs": None, "score_differs_same_beats": None}
    same = a["sample"].to_numpy() == b["sample"].to_numpy()
    untouched = same & np.r_[True, same[:-1]] & np.r_[same[1:], True]
    quality, rhythm = ((a[c].to_numpy() != b[c].to_numpy()) for c in ("quality", "rhythm"))
    alike = untouched & ~quality & ~rhythm
    score_diff = np.abs(a["score"].to_numpy() - b["score"].to_numpy())
    flag = same & (a["flagged"].to_numpy() != b["flagged"].to_numpy())
    return {"beats_placed_differently": int(len(a) - same.sum()), "quality_differs": int(quality.sum()),
            "rhythm_differs": int(rhythm.sum()), "flag_differs": int(flag.sum()),
            "score_differs_same_beats": int((score_diff[alike] > SCORE_TOLERANCE).sum())}


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
                  "`outputs.score_file`, what `ecg-rnn score` runs per recording: read, quality and R-peaks fused "
                  "over the leads, beats, rhythm, patient adaptation and model, suggested classes, CSV, events, "
                  f"annotations and meta files (median of {r['runs']} runs, the model loaded once), from an unannotated "
                  "copy of the record (as a user's recording arrives); reference: "
                  "`wfdb.processing.gqrs_detect` alone on the same lead.", "",
                  f"| record | beats | end to end (s, target <= {RECORD_TARGET_S:g}) | without patient adaptation "
                  f"(s, target <= {BARE_RECORD_TARGET_S:g}) | gqrs_detect alone (s) | ratio (target <= 0.25) |",
                  "|---|---:|---:|---:|---:|---:|",
                  f"| {e['record']} | {e['beats']} | {e['end_to_end_s']:.3f} "
                  f"({_verdict(e['end_to_end_s'] <= RECORD_TARGET_S)}) | {e['without_adaptation_s']:.3f} "
                  f"({_verdict(e['without_adaptation_s'] <= BARE_RECORD_TARGET_S)}) | {e['gqrs_detect_s']:.3f} | "
                  f"{e['ratio_to_gqrs']:.3f} |", ""]
    if "throughput" in r:
        t = r["throughput"]
        lines += ["## Model throughput", "",
                  "The autoencoder's pass over a record's beats in batches against the naive loop that passes one "
                  "beat per call (the model alone: templates, calibration and adaptation are per record).", "",
                  "| beats | batched (beats/s) | one at a time (beats/s) | ratio |", "|---:|---:|---:|---:|",
                  f"| {t['beats']} | {t['batched_beats_per_s']:.0f} | {t['naive_beats_per_s']:.0f} | {t['ratio']:.0f}x |", ""]
    if "holter" in r:
        h = r["holter"]
        met = h["chunked_s"] <= HOLTER_TARGET_S and h["chunked_peak_rss_mib"] <= HOLTER_TARGET_MIB
        lines += ["## A 24-hour Holter recording", "",
                  f"All 48 MIT-BIH records concatenated into one {h['hours']:.1f}-hour WFDB record "
                  "(`python -m benchmarks.holter`). Chunked: `ecg-rnn score` itself (its `main` in a fresh "
                  "process: model loading, reading in half-hour chunks, every stage and every output file); "
                  "whole signal: the same stages with the signal loaded at once, to compare the two. Each run "
                  "is its own process; seconds are timed inside it, the process column adds Python start-up "
                  "and imports; peak memory is that process's maximum resident set (VmHWM: Python, torch and "
                  "the model included).", "",
                  f"| mode | beats | seconds (target <= {HOLTER_TARGET_S:g}) | process (s) | "
                  f"peak memory (MiB, target <= {HOLTER_TARGET_MIB:g}) |", "|---|---:|---:|---:|---:|",
                  f"| chunked (`ecg-rnn score`, median of {h['chunked_runs']} runs: "
                  f"{', '.join(f'{x:.1f}' for x in h['chunked_s_each'])} s) | {h['beats']} | {h['chunked_s']:.1f} | "
                  f"{h['chunked_process_s']:.1f} | {h['chunked_peak_rss_mib']:.0f} |",
                  f"| whole signal | {h['beats']} | {h['whole_s']:.1f} | {h['whole_process_s']:.1f} | "
                  f"{h['whole_peak_rss_mib']:.0f} |", "",
                  f"Targets for `ecg-rnn score`: {_verdict(met)}. Beats placed differently by the two modes: "
                  f"{h['beats_placed_differently']} of {h['beats']}. Beats whose quality differs: "
                  f"{h['quality_differs']}, whose rhythm differs: {h['rhythm_differs']} (the quality stage judges "
                  "each 5-s window against the median window of the signal it is given, a half-hour chunk or the "
                  "whole day, and AF is not sought inside noise). Beats whose flag differs: "
                  f"{h['flag_differs']}. Of the beats neither moved nor next to a moved beat, with the same "
                  f"quality and rhythm, {h['score_differs_same_beats']} score differently (by more than "
                  f"{SCORE_TOLERANCE:g}): the quality model's noise probability, which decides a beat's noisy "
                  "stratum (calibration among a recording's likely noisy beats), is judged against the signal "
                  "given as well, and each stratum's calibration moves with its members.", ""]
    if "training" in r:
        t = r["training"]
        lines += ["## Training", "",
                  "One epoch of the default configuration on MIT-BIH DS1 normal beats (training pass, held-out "
                  "loss and calibration included).", "",
                  "| training beats | epoch (s) | beats/s |", "|---:|---:|---:|",
                  f"| {t['train_beats']} | {t['epoch_s']:.1f} | {t['train_beats_per_s']:.0f} |", ""]
    return "\n".join(lines)


def _verdict(met: bool) -> str:
    return "met" if met else "missed"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=None, help="model file (default: the shipped default)")
    parser.add_argument("--record", default="208", help="MIT-BIH record for the single-record figures")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--skip-holter", action="store_true")
    parser.add_argument("--holter-runs", type=int, default=3, help="runs of `ecg-rnn score` on the 24-hour record")
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
        results["holter"] = bench_holter(Path(model), holter, args.holter_runs)
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
