"""Flags inside atrial fibrillation on MIT-BIH's AF records, scored unannotated as `ecg-rnn score` does.

    .venv/bin/python -m benchmarks.af_flags --out docs/evaluation/af-flags.md
    .venv/bin/python -m benchmarks.af_flags --fs 128 --out docs/evaluation/af-flags-128hz.md

Per record: the share of reference-normal beats inside reference AF / flutter ((AFIB, (AFL) that get
flagged, the recall of reference V beats, and the AF duration the rhythm stage finds against the reference.
Beats are matched to the reference within 150 ms. With --fs each recording is first resampled to that
rate (every lead, polyphase with its anti-alias filter), as a recorder sampling at it would give it.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import numpy as np
import wfdb

from ecg_rnn.beats import MATCH_TOLERANCE_S, aami_class, match_reference
from ecg_rnn.detector import RecurrentAEDetector
from ecg_rnn.paths import default_model_path
from ecg_rnn.protocols import locate_mitdb
from ecg_rnn.records import RecordSource, open_record, source_from_arrays
from ecg_rnn.rhythm import Episode, in_episodes
from ecg_rnn.scoring import score_source
from ecg_rnn.signal import resample

AF_RECORDS = ("201", "202", "203", "210", "219", "221", "222")
AF_LABELS = ("(AFIB", "(AFL")


def reference_af(path: Path) -> list[Episode]:
    """The record's (AFIB and (AFL episodes, in seconds (at the record's own rate, whatever it is scored at)."""
    header = wfdb.rdheader(str(path))
    ann = wfdb.rdann(str(path), "atr")
    marks = [(s, a.strip("\x00")) for s, a in zip(ann.sample, ann.aux_note) if a.startswith("(")]
    return [Episode("AF", start / header.fs, end / header.fs)
            for (start, aux), (end, _) in zip(marks, marks[1:] + [(header.sig_len, "")]) if aux in AF_LABELS]


def unannotated(path: Path, recorder_fs: float | None) -> RecordSource:
    """The record without its annotations, as `ecg-rnn score` meets a user's recording; every ECG lead
    resampled to recorder_fs when given."""
    source = dataclasses.replace(open_record(path), annotations=None)
    if recorder_fs is None or recorder_fs == source.fs:
        return source
    return source_from_arrays(source.name, resample(source.read_leads(), source.fs, recorder_fs), recorder_fs,
                              tuple(source.sig_name[c] for c in source.ecg_channels), 0,
                              origin=f"{path} at {recorder_fs:g} Hz")


def record_row(detector, path: Path, recorder_fs: float | None = None) -> dict:
    source = unannotated(path, recorder_fs)
    scored = score_source(detector, source)
    ann = wfdb.rdann(str(path), "atr")
    reference_samples = np.round(np.asarray(ann.sample) * (source.fs / wfdb.rdheader(str(path)).fs)).astype(np.int64)
    symbol = match_reference(scored.beats.sample, reference_samples, np.asarray(ann.symbol),
                             int(MATCH_TOLERANCE_S * source.fs))
    aami = aami_class(symbol)
    af = reference_af(path)
    in_af = in_episodes(scored.beats.time_s, af)
    normal_af = (aami == "N") & in_af
    v = aami == "V"
    found = [e for e in scored.episodes if e.kind == "AF"]
    overlap = sum(max(0.0, min(a.end_s, b.end_s) - max(a.start_s, b.start_s)) for a in af for b in found)
    return {"record": path.name, "normal_in_af": int(normal_af.sum()),
            "normal_in_af_flagged": int(scored.flagged[normal_af].sum()), "v": int(v.sum()),
            "v_flagged": int(scored.flagged[v].sum()), "af_s": sum(e.duration_s for e in af),
            "found_s": sum(e.duration_s for e in found), "overlap_s": overlap}


def _share(a: float, b: float) -> str:
    return f"{a / b:.3f}" if b else "–"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=None)
    parser.add_argument("--fs", type=float, metavar="HZ", help="resample each recording to this rate first")
    parser.add_argument("--out", type=Path, default=Path("docs/evaluation/af-flags.md"))
    args = parser.parse_args(argv)
    detector = RecurrentAEDetector.load(args.model or default_model_path())
    folder = locate_mitdb(download=False, quiet=True)
    rows = [record_row(detector, folder / name, args.fs) for name in AF_RECORDS]
    rate = f", resampled to {args.fs:g} Hz" if args.fs else ""
    rate_option = f" --fs {args.fs:g}" if args.fs else ""
    total = {k: sum(r[k] for r in rows) for k in rows[0] if k != "record"}
    lines = [f"# Flags inside atrial fibrillation (MIT-BIH AF records, unannotated copies{rate})", "",
             f"Command: `.venv/bin/python -m benchmarks.af_flags{rate_option} --out {args.out}`", "",
             "| record | normal beats in AF | flagged | share | V beats | V recall | AF s (ref) | AF s found | AF Se | AF +P |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in [*rows, {"record": "**pooled**", **total}]:
        lines.append(f"| {r['record']} | {r['normal_in_af']} | {r['normal_in_af_flagged']} | "
                     f"{_share(r['normal_in_af_flagged'], r['normal_in_af'])} | {r['v']} | "
                     f"{_share(r['v_flagged'], r['v'])} | {r['af_s']:.0f} | {r['found_s']:.0f} | "
                     f"{_share(r['overlap_s'], r['af_s'])} | {_share(r['overlap_s'], r['found_s'])} |")
    lines += ["", "Targets: normal beats inside AF/AFL flagged <= 5 % pooled and <= 10 % per record; V recall >= 0.90."]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
