"""How a long recording is flagged: the 24-hour file of all 48 MIT-BIH records back to back, scored as
`ecg-rnn score` does, with per-record statistics per stretch of at most an hour (the default) and over
the whole day, against the reference beat labels (a detected beat takes the class of the reference beat
within 150 ms; N against S, V and F).

    python -m benchmarks.holter            # builds cache/holter24h once
    python -m benchmarks.holter_flags [--record cache/holter24h]
"""

from __future__ import annotations

import argparse

import numpy as np
from sklearn.metrics import average_precision_score, roc_auc_score

from ecg_rnn.beats import cut_source
from ecg_rnn.detector import RecurrentAEDetector
from ecg_rnn.paths import default_model_path
from ecg_rnn.records import open_record
from ecg_rnn.scoring import LONGEST_STRETCH_S, score_beats

RATED_ABNORMAL = ("S", "V", "F")  # Q (paced and unclassifiable beats, four paced records here) is left out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--record", default="cache/holter24h")
    args = parser.parse_args()
    detector = RecurrentAEDetector.load(default_model_path())
    source = open_record(args.record)
    cut = cut_source(source, detector.signal, detector.beats, peaks="detect")
    cls = cut.beats.aami  # the reference class of each detected beat (matched by cut_source), "" where none
    normal, abnormal = cls == "N", np.isin(cls, RATED_ABNORMAL)
    print(f"{args.record}: {len(cut.beats)} beats, {source.duration_s / 3600:.1f} h")
    print("| per-record statistics | normal beats flagged | abnormal recall | ROC-AUC | AP |")
    print("|---|---:|---:|---:|---:|")
    for label, longest in ((f"per stretch of at most {LONGEST_STRETCH_S / 3600:g} h", LONGEST_STRETCH_S),
                           ("over the whole recording", float("inf"))):
        scored = score_beats(detector, cut, False, longest_stretch_s=longest)
        rated = normal | abnormal
        print(f"| {label} | {scored.flagged[normal].mean():.3f} | {scored.flagged[abnormal].mean():.3f} | "
              f"{roc_auc_score(abnormal[rated], scored.score[rated]):.3f} | "
              f"{average_precision_score(abnormal[rated], scored.score[rated]):.3f} |")


if __name__ == "__main__":
    main()
