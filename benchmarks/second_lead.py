"""Selects scoring.SECOND_LEAD_MARGIN on DS1: when a beat is judged on the recording's next ECG lead.

    .venv/bin/python -m benchmarks.second_lead --out docs/evaluation/second-lead.md

A beat is scored on the next lead where the quality stage finds the chosen lead at least `margin` more
likely noisy than that lead around it (scoring.judged_on_second_lead). Every margin of the grid scores the
same cut beats, as `ecg-rnn score` scores them, in three groups of DS1 recordings:
- unchanged: all 22 DS1 records (a switch must not cost clean recordings);
- chosen lead noisy: the DS1 records the default model holds out (it never trained on them), with
  synthetic em and ma noise at 12 and 6 dB on the chosen lead alone (ecg_rnn.noise_protocol,
  noisy_leads="chosen"), the other lead as recorded: an electrode coming loose;
- every lead noisy: the same records and noise on both leads, the NSTDB recipe.
Criterion: the best mean pooled ROC-AUC of the two noisy groups (abnormal = S, V, F, Q; beats not marked
noise, matched to the reference within 150 ms, over the noisy stretches) among the margins that cost the
unchanged records at most MAX_CLEAN_COST of pooled ROC-AUC against never switching: most recordings are
clean, and a switch must not cost them (the form of the quality stage's fusion criteria). A first
criterion, the plain mean of the three groups, chose the grid's smallest margin at a cost of 0.009 to the
unchanged records; it was replaced after that was seen (docs/evaluation/README.md). DS2 is not read.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from ecg_rnn.detector import RecurrentAEDetector
from ecg_rnn.noise_protocol import CLEAN, Counts, _metrics, stressed_cuts
from ecg_rnn.paths import default_model_path
from ecg_rnn.protocols import DS1

MARGINS = (float("inf"), 0.8, 0.6, 0.4, 0.2, 0.1)  # inf: never switch (the scoring before this setting)
KINDS = ("em", "ma")
SNRS_DB = (12.0, 6.0)
GROUPS = ("unchanged", "chosen lead noisy", "every lead noisy")
MAX_CLEAN_COST = 0.001  # pooled ROC-AUC the unchanged records may lose against never switching


def _jobs(detector, noisy_records: tuple[str, ...]):
    """(group, stressed cut) of every recording the selection scores."""
    for job in stressed_cuts(detector, DS1, KINDS[:1], (CLEAN,), progress=True):
        yield GROUPS[0], job
    for group, leads in ((GROUPS[1], "chosen"), (GROUPS[2], "all")):
        for job in stressed_cuts(detector, noisy_records, KINDS, SNRS_DB, progress=True, noisy_leads=leads):
            yield group, job


def select(detector, noisy_records: tuple[str, ...]) -> dict:
    cells: dict[tuple, Counts] = {}
    for group, job in _jobs(detector, noisy_records):
        for margin in MARGINS:
            scored = job.scored(detector, margin)
            scored.add_to(cells, (group, margin, job.kind, job.snr_db), scored.score, scored.flagged)
    rows = []
    for margin in MARGINS:
        row = {"margin": margin if np.isfinite(margin) else None}  # None: never (JSON has no infinity)
        for group in GROUPS:
            # the unchanged records count whole; the noisy groups over their noisy stretches
            stretches = ("noisy", "clean") if group == GROUPS[0] else ("noisy",)
            parts = [c for k, c in cells.items() if k[0] == group and k[1] == margin and k[-1] in stretches]
            pooled = Counts(labels=[x for c in parts for x in c.labels], scores=[x for c in parts for x in c.scores],
                            flags=[x for c in parts for x in c.flags])
            metrics = _metrics(pooled)
            row[group] = {k: metrics[k] for k in ("roc_auc", "ap", "normal_flagged", "abnormal_recall", "abnormal_beats")}
        row["criterion"] = float(np.mean([row[g]["roc_auc"] for g in GROUPS[1:]]))
        rows.append(row)
    never = rows[0][GROUPS[0]]["roc_auc"]  # MARGINS[0]: never switch
    eligible = [r for r in rows if r[GROUPS[0]]["roc_auc"] >= never - MAX_CLEAN_COST]
    best = max(eligible, key=lambda r: (round(r["criterion"], 4), np.inf if r["margin"] is None else r["margin"]))
    return {"noisy_records": list(noisy_records), "kinds": list(KINDS), "snrs_db": list(SNRS_DB),
            "criterion": f"the best mean pooled ROC-AUC of the two noisy groups among the margins costing the "
                         f"unchanged records at most {MAX_CLEAN_COST:g} of pooled ROC-AUC against never switching "
                         "(ties: the larger margin)",
            "rows": rows, "selected": best["margin"]}


def _margin_label(margin: float | None) -> str:
    return "never (off)" if margin is None else f"{margin:g}"


def markdown(report: dict, seconds: float, out: Path) -> str:
    lines = ["# When a beat is judged on the second lead (`scoring.SECOND_LEAD_MARGIN`), selected on DS1", "",
             f"Command: `.venv/bin/python -m benchmarks.second_lead --out {out}` ({seconds:.0f} s). "
             "Unchanged: all 22 DS1 records. Noisy: " + ", ".join(report["noisy_records"]) +
             " (the DS1 records the default model holds out) with synthetic em and ma noise at 12 and 6 dB, on the "
             "chosen lead alone or on every lead. Each cell: pooled ROC-AUC / normal beats flagged / abnormal "
             f"recall. Criterion: {report['criterion']}. Selected: **{_margin_label(report['selected'])}**.", "",
             "| margin | mean of the noisy groups | " + " | ".join(GROUPS) + " |", "|---|---|" + "---|" * len(GROUPS)]
    for row in report["rows"]:
        cells = [f"{row[g]['roc_auc']:.4f} / {100 * row[g]['normal_flagged']:.1f} % / {row[g]['abnormal_recall']:.3f}"
                 for g in GROUPS]
        lines.append(f"| {_margin_label(row['margin'])} | {row['criterion']:.4f} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=Path("docs/evaluation/second-lead.md"))
    args = parser.parse_args(argv)
    detector = RecurrentAEDetector.load(args.model or default_model_path())
    start = time.monotonic()
    report = select(detector, tuple(detector.training_data_["heldout_records"]))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(report, indent=2, default=float))
    args.out.write_text(markdown(report, time.monotonic() - start, args.out))
    print(args.out.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
