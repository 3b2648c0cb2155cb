"""Scaling of bulk scoring on Dask (`make bench-scaling`; `make bench` runs it too): recordings per hour
with 1 and 2 workers on this machine, and the scaling efficiency. Writes benchmarks/scaling.md and .json.

    python -m benchmarks.dask_scaling [--model PATH] [--records 12] [--workers 1 2] [--out benchmarks/scaling.md]

The recordings are the first N MIT-BIH records (30 minutes each), scored with `ecg_rnn.bulk.score_many`
exactly as `ecg-rnn score DIR --out OUT --scheduler tcp://...` scores them. Each worker count gets its own
LocalCluster of single-threaded worker processes, warmed up first (torch imported, model loaded: two
short recordings per worker), so the clock sees the steady state of a long archive run, not start-up.
Efficiency = rate with W workers / (W x rate with 1 worker).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

import wfdb

from benchmarks.run import machine, write_results
from ecg_rnn.bulk import ERRORS_NAME, LOOPBACK, SUMMARY_NAME, BulkConfig, score_many
from ecg_rnn.paths import default_model_path
from ecg_rnn.protocols import locate_mitdb

ROOT = Path(__file__).resolve().parents[1]
COMMAND = "make bench-scaling  # = python -m benchmarks.dask_scaling"
WARM_UP_SECONDS = 30.0  # length of each warm-up recording
WARM_UP_PER_WORKER = 2


def mitdb_records(count: int) -> list[Path]:
    folder = locate_mitdb(download=False)
    records = sorted(p.with_suffix("") for p in folder.glob("*.hea"))
    if len(records) < count:
        sys.exit(f"only {len(records)} records in {folder}; ask for --records {len(records)} or fewer")
    return records[:count]


def warm_up_records(folder: Path, source: Path, count: int) -> list[Path]:
    rec = wfdb.rdrecord(str(source), sampto=int(WARM_UP_SECONDS * wfdb.rdheader(str(source)).fs))
    paths = []
    for i in range(count):
        wfdb.wrsamp(f"warm{i}", fs=rec.fs, units=rec.units, sig_name=rec.sig_name, p_signal=rec.p_signal,
                    fmt=["16"] * rec.n_sig, write_dir=str(folder))
        paths.append(folder / f"warm{i}")
    return paths


def bench_workers(workers: int, records: list[Path], model: Path, scratch: Path) -> dict:
    """Recordings per hour of `workers` warmed-up LocalCluster workers on `records`."""
    from distributed import LocalCluster

    run_dir = scratch / f"w{workers}"
    warm_in = run_dir / "warm-in"
    warm_in.mkdir(parents=True)
    with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, host=LOOPBACK,
                      dashboard_address=None, silence_logs=logging.ERROR) as cluster:
        config = BulkConfig(scheduler=cluster.scheduler_address, progress=False)
        score_many(warm_up_records(warm_in, records[0], WARM_UP_PER_WORKER * workers), model, run_dir / "warm-out",
                   config)
        started = time.perf_counter()
        result = score_many(records, model, run_dir / "out", config)
        seconds = time.perf_counter() - started
    if result.failed:
        sys.exit(f"scoring failed: {result.failed[:3]}")
    out = run_dir / "out"
    hours = sum(s.duration_s for s in result.scored) / 3600
    beats = sum(s.beats for s in result.scored)
    output_bytes = sum(p.stat().st_size for p in out.iterdir() if p.name not in (SUMMARY_NAME, ERRORS_NAME))
    return {"workers": workers, "recordings": len(result.scored), "recorded_hours": hours, "beats": beats,
            "seconds": seconds, "recordings_per_hour": len(result.scored) / seconds * 3600,
            "worker_seconds_per_recorded_hour": workers * seconds / hours, "output_bytes_per_beat": output_bytes / beats}


def report(results: dict) -> str:
    runs = results["runs"]
    base = runs[0]
    lines = ["# Bulk scoring on Dask: scaling", "", f"- command: `{COMMAND}`", f"- machine: {results['machine']}",
             f"- load average at the end: {results['load_end']}", f"- model: `{results['model']}`",
             f"- recordings: {base['recordings']} MIT-BIH records, {base['recorded_hours']:.1f} recorded hours, "
             f"{base['beats']} beats", "",
             "| workers | wall time (s) | recordings per hour | worker-seconds per recorded hour | "
             "scaling efficiency |", "|---:|---:|---:|---:|---:|"]
    for r in runs:
        efficiency = r["recordings_per_hour"] / (r["workers"] * base["recordings_per_hour"] / base["workers"])
        r["efficiency"] = efficiency
        lines.append(f"| {r['workers']} | {r['seconds']:.1f} | {r['recordings_per_hour']:.0f} | "
                     f"{r['worker_seconds_per_recorded_hour']:.2f} | {efficiency:.2f} |")
    lines += ["", f"Outputs (per-beat CSV, .ecgrnn, .meta.json): {base['output_bytes_per_beat']:.1f} bytes per beat.", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=None, help="model file (default: the shipped default)")
    parser.add_argument("--records", type=int, default=12, help="MIT-BIH records to score (30 minutes each)")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="worker counts; the first is the base")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "scaling.md")
    args = parser.parse_args()
    model = Path(args.model or default_model_path()).resolve()
    records = mitdb_records(args.records)
    results = {"machine": machine(), "model": str(model.relative_to(ROOT)) if model.is_relative_to(ROOT) else str(model),
               "runs": []}
    with tempfile.TemporaryDirectory() as scratch:
        for workers in args.workers:
            print(f"{workers} worker(s) ...", file=sys.stderr)
            results["runs"].append(bench_workers(workers, records, model, Path(scratch)))
    results["load_end"] = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    write_results(args.out, report(results), results)


if __name__ == "__main__":
    main()
