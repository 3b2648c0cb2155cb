"""Why the prematurity reference does not lean to the cycle before: the prematurity term alone as a
score of supraventricular (S) beats against normal (N) beats, per MIT-BIH record, with the reference of
the shipped detector (the local RR90 of 128 beats over normal-to-normal intervals) and leaning half-way (geometrically) to the
cycle before the beat's (`features.rr_reference(..., previous_share=0.5)`).

    .venv/bin/python -m benchmarks.previous_cycle --out docs/evaluation/previous-cycle.md

Reference beats of DS1 and DS2 (paced records left out); records with at least MIN_S_BEATS S beats
are listed, every record counts in the pooled rows. DS1's selection found the leaning reference better
(docs/evaluation/selection.md); this table shows what it costs a record whose atrial ectopy comes in
runs and salvos, where each ectopic cycle follows another short one.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from ecg_rnn.features import DEFAULT_RR_REFERENCE_BEATS, DEFAULT_RR_TYPICAL_MADS, rhythm_terms, rr_reference
from ecg_rnn.metrics import auc_or_nan
from ecg_rnn.protocols import DS1, DS2, build_beat_set

COMMAND = ".venv/bin/python -m benchmarks.previous_cycle --out docs/evaluation/previous-cycle.md"
MIN_S_BEATS = 30
LEANING = 0.5


def prematurity_auc(beats, share: float) -> tuple[np.ndarray, np.ndarray]:
    """(prematurity of every beat, its S-vs-N rows) with the reference leaning `share` to the cycle before."""
    premature = rhythm_terms(beats.rr, rr_reference(beats, window_beats=DEFAULT_RR_REFERENCE_BEATS,
                                                    previous_share=share, typical_mads=DEFAULT_RR_TYPICAL_MADS))[0]
    return premature, np.isin(beats.aami, ("N", "S"))


def rows_of(name: str, records: tuple[str, ...]) -> list[dict]:
    beats = build_beat_set(records, progress=False)
    alone, rows = prematurity_auc(beats, 0.0)
    leaning, _ = prematurity_auc(beats, LEANING)
    s = beats.aami == "S"
    out = []
    for record in records:
        mine = rows & (beats.record == record)
        if (s & mine).sum() >= MIN_S_BEATS:
            out.append({"set": name, "record": record, "s_beats": int((s & mine).sum()),
                        "auc_rr90": auc_or_nan(s[mine], alone[mine]), "auc_leaning": auc_or_nan(s[mine], leaning[mine])})
    out.append({"set": name, "record": "pooled", "s_beats": int((s & rows).sum()),
                "auc_rr90": auc_or_nan(s[rows], alone[rows]), "auc_leaning": auc_or_nan(s[rows], leaning[rows])})
    return out


def markdown(rows: list[dict]) -> str:
    lines = ["# The prematurity reference leaning to the cycle before: what it costs", "",
             f"Command: `{COMMAND}`", "", __doc__.split("\n\n")[0].replace("\n", " "), "",
             f"ROC-AUC of the prematurity term alone, S beats against N beats (records with at least "
             f"{MIN_S_BEATS} S beats; pooled: every record of the set):", "",
             f"| set | record | S beats | RR90 of {DEFAULT_RR_REFERENCE_BEATS} beats, normal-to-normal (shipped) | "
             f"leaning {LEANING:g} |",
             "|---|---|---:|---:|---:|"]
    lines += [f"| {r['set']} | {r['record']} | {r['s_beats']} | {r['auc_rr90']:.3f} | {r['auc_leaning']:.3f} |"
              for r in rows]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("docs/evaluation/previous-cycle.md"))
    args = parser.parse_args(argv)
    text = markdown(rows_of("DS1", DS1) + rows_of("DS2", DS2))
    args.out.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
