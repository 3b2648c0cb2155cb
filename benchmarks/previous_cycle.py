"""What leaning the prematurity reference to the cycle before costs and gains: the prematurity term
alone as a score of supraventricular (S) beats against normal (N) beats, per MIT-BIH record, with the
shipped reference (the local RR90 of 128 beats over normal-to-normal intervals, not leaning), leaning
half-way (geometrically) to the cycle before in every beat (`features.rr_reference(..., previous_share=0.5)`),
leaning to it only in steady stretches under 90 bpm (`previous_share=1.0, lean_min_rr_s=0.67`: cycles of
at least 0.67 s within 15 % of the one before), and only there and where the beat's P wave correlates at
least 0.3 with the record's sinus one (`lean_min_p_similarity=0.3`, the sixth DS1 round's pick).

    .venv/bin/python -m benchmarks.previous_cycle --out docs/evaluation/previous-cycle.md

Reference beats of DS1 and DS2 (paced records left out); records with at least MIN_S_BEATS S beats
are listed, every record counts in the pooled rows. Leaning spares a sudden rate change; this table
shows what it costs a record whose atrial ectopy comes in runs and salvos, where each ectopic cycle
follows another short one: why no leaning ships.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from ecg_rnn.features import (DEFAULT_RR_LEAN_MIN_P_SIMILARITY, DEFAULT_RR_LEAN_MIN_S, DEFAULT_RR_PREVIOUS_SHARE,
                              DEFAULT_RR_REFERENCE_BEATS, DEFAULT_RR_TYPICAL_MADS, NO_P_GATE, rhythm_terms,
                              rr_reference)
from ecg_rnn.metrics import auc_or_nan
from ecg_rnn.protocols import DS1, DS2, build_beat_set

COMMAND = ".venv/bin/python -m benchmarks.previous_cycle --out docs/evaluation/previous-cycle.md"
MIN_S_BEATS = 30
# (column label, previous_share, lean_min_rr_s, lean_min_p_similarity)
REFERENCES = (("RR90 alone (shipped)", DEFAULT_RR_PREVIOUS_SHARE, DEFAULT_RR_LEAN_MIN_S,
               DEFAULT_RR_LEAN_MIN_P_SIMILARITY),
              ("leaning 0.5, every beat", 0.5, 0.0, NO_P_GATE),
              ("leaning 1, steady cycles >= 0.67 s", 1.0, 0.67, NO_P_GATE),
              ("leaning 1, steady cycles >= 0.67 s, sinus P wave (DS1's pick)", 1.0, 0.67, 0.3))


def prematurity(beats, share: float, lean_min_rr_s: float, lean_min_p_similarity: float) -> np.ndarray:
    return rhythm_terms(beats.rr, rr_reference(beats, window_beats=DEFAULT_RR_REFERENCE_BEATS, previous_share=share,
                                               typical_mads=DEFAULT_RR_TYPICAL_MADS, lean_min_rr_s=lean_min_rr_s,
                                               lean_min_p_similarity=lean_min_p_similarity))[0]


def rows_of(name: str, records: tuple[str, ...]) -> list[dict]:
    beats = build_beat_set(records, progress=False)
    terms = [prematurity(beats, *lean) for _, *lean in REFERENCES]
    rows, s = np.isin(beats.aami, ("N", "S")), beats.aami == "S"
    out = []
    for record in (*records, "pooled"):
        mine = rows if record == "pooled" else rows & (beats.record == record)
        if record == "pooled" or (s & mine).sum() >= MIN_S_BEATS:
            out.append({"set": name, "record": record, "s_beats": int((s & mine).sum()),
                        "auc": [auc_or_nan(s[mine], t[mine]) for t in terms]})
    return out


def markdown(rows: list[dict]) -> str:
    lines = ["# The prematurity reference leaning to the cycle before: what it costs and gains", "",
             f"Command: `{COMMAND}`", "", __doc__.split("\n\n")[0].replace("\n", " "), "",
             f"ROC-AUC of the prematurity term alone, S beats against N beats (records with at least "
             f"{MIN_S_BEATS} S beats; pooled: every record of the set):", "",
             "| set | record | S beats | " + " | ".join(label for label, *_ in REFERENCES) + " |",
             "|---|---|---:|" + "---:|" * len(REFERENCES)]
    lines += [f"| {r['set']} | {r['record']} | {r['s_beats']} | " + " | ".join(f"{a:.3f}" for a in r["auc"]) + " |"
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
