"""Generalisation checks of a trained detector: DS2 as other recorders would give it, and beats inside
atrial fibrillation.

1. DS2 (never used for any choice) resampled to 128, 250 and 500 Hz, on its second lead, and with the
   amplitude halved and doubled (ecg_rnn.variants): ROC-AUC, AP, and the share of normal beats flagged,
   which the threshold promises to be about (100 - threshold percentile) %; per DS2 record, where the
   flagged normal beats come from.
2. The MIT-BIH records with atrial fibrillation or flutter: normal beats inside the reference AF / AFL
   episodes flagged, and ventricular beats found, with the AF mask given to the detector.

    python -m ecg_rnn.generalisation --out docs/evaluation   # generalisation.json + generalisation.md
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from ecg_rnn import paths
from ecg_rnn.baselines import TemplateRRBaseline
from ecg_rnn.beats import Beats
from ecg_rnn.detector import RecurrentAEDetector
from ecg_rnn.experiments import af_mask_function, detected_af_mask, reference_af_mask
from ecg_rnn.metrics import evaluate_detector
from ecg_rnn.protocols import DS1, DS2, build_beat_set, locate_mitdb
from ecg_rnn.scoring import flag_beats
from ecg_rnn.suggest import BeatLayout, SuggestConfig, classify, morphology_evidence
from ecg_rnn.variants import VARIANTS, variant_beat_set

AF_RECORDS = ("201", "202", "203", "210", "219", "221", "222")  # MIT-BIH records with AF / AFL episodes
AF_TARGETS = {"normal_flagged_pooled": 0.05, "normal_flagged_per_record": 0.10, "v_recall": 0.90}


def _say(msg: str, progress: bool) -> None:
    if progress:
        print(msg, file=sys.stderr, flush=True)


def _row(beats: Beats, scores: np.ndarray, threshold: float) -> dict:
    m = evaluate_detector(beats, scores, threshold)
    recall = {f"recall_{c}": m["per_class"].get(c, {}).get("recall") for c in ("V", "S")}
    return {"roc_auc": m["roc_auc"], "ap": m["ap"], "normal_flagged": 1.0 - m["specificity"], **recall}


def evaluate_variants(detector: RecurrentAEDetector, folder: Path, records: tuple[str, ...] = DS2,
                      progress: bool = True) -> list[dict]:
    """The detector and the no-learning template + RR score (fitted on DS1 normals) on every variant of
    `records`, each with the rhythm stage's AF mask."""
    ds1 = build_beat_set(DS1, folder, detector.signal, detector.beats, progress=progress)
    baseline = TemplateRRBaseline().fit(ds1.subset(ds1.aami == "N"), ds1, detected_af_mask)
    rows = []
    for variant in VARIANTS:
        t0 = time.monotonic()
        beats = variant_beat_set(records, folder, variant, detector.signal, detector.beats,
                                 cache_dir=paths.cache_dir(), progress=progress)
        in_af = detected_af_mask(beats)
        row = {"variant": variant.name, **_row(beats, detector.score_samples(beats, in_af=in_af), detector.threshold_)}
        base = _row(beats, baseline.score_samples(beats, in_af=in_af), baseline.threshold_)
        row |= {f"no_learning_{k}": v for k, v in base.items()}
        rows.append(row)
        _say(f"{variant.name}: ROC-AUC {row['roc_auc']:.4f} AP {row['ap']:.4f} normal flagged "
             f"{row['normal_flagged']:.3f} ({time.monotonic() - t0:.0f} s)", progress)
    return rows


def record_breakdown(detector: RecurrentAEDetector, folder: Path, records: tuple[str, ...] = DS2,
                     progress: bool = True) -> list[dict]:
    """Per record (original recordings, the rhythm stage's AF mask): normal beats flagged, abnormal beats
    found, and which term put the flagged normal beats over the threshold (median z of each term)."""
    beats = build_beat_set(records, folder, detector.signal, detector.beats, progress=progress)
    analysis = detector.analyse(beats, in_af=detected_af_mask(beats))
    flagged = analysis.score > detector.threshold_
    rows = []
    for name in records:
        normal, abnormal = (beats.record == name) & (beats.aami == "N"), (beats.record == name) & beats.is_abnormal
        wrong = normal & flagged
        rows.append({"record": name, "normal": int(normal.sum()), "normal_flagged": float(flagged[normal].mean()),
                     "abnormal": int(abnormal.sum()),
                     "abnormal_recall": float(flagged[abnormal].mean()) if abnormal.any() else None,
                     "flagged_normal_median_z": {k: float(np.median(z[wrong])) if wrong.any() else None
                                                 for k, z in analysis.components.items()}})
    return rows


def evaluate_af_records(detector: RecurrentAEDetector, folder: Path, progress: bool = True) -> dict:
    """Per AF record and pooled: normal beats inside the reference AF / AFL episodes flagged, and V recall
    (all V beats of the record), with the reference, the detected and no AF mask; flagged as scoring flags
    (scoring.flag_beats: inside the mask a beat suggested ventricular is flagged whatever its score)."""
    beats = build_beat_set(AF_RECORDS, folder, detector.signal, detector.beats, progress=progress)
    reference = reference_af_mask(beats, folder)
    # the morphology families do not depend on the AF mask: found once, classified per mask
    evidence = morphology_evidence(beats, layout=BeatLayout.of(detector.signal, detector.beats))
    out = {}
    for kind in ("reference", "detected", "none"):
        mask = af_mask_function(kind, folder)
        in_af = np.zeros(len(beats), dtype=bool) if mask is None else mask(beats)
        suggested = classify(evidence, beats.rr, beats.record, in_af, SuggestConfig())
        flagged = flag_beats(detector.score_samples(beats, in_af=in_af), detector.threshold_,
                             np.zeros(len(beats), dtype=bool), in_af, suggested)
        per_record = []
        for name in AF_RECORDS:
            rows = beats.record == name
            normal_af = rows & reference & (beats.aami == "N")
            v = rows & (beats.aami == "V")
            per_record.append({"record": name, "normal_in_af": int(normal_af.sum()),
                               "normal_in_af_flagged": float(flagged[normal_af].mean()) if normal_af.any() else None,
                               "v_beats": int(v.sum()), "v_recall": float(flagged[v].mean()) if v.any() else None})
        normal_af, v = reference & (beats.aami == "N"), beats.aami == "V"
        out[kind] = {"pooled": {"normal_in_af_flagged": float(flagged[normal_af].mean()),
                                "v_recall": float(flagged[v].mean())}, "records": per_record}
        _say(f"AF records, mask {kind}: normal beats in AF flagged {out[kind]['pooled']['normal_in_af_flagged']:.3f}, "
             f"V recall {out[kind]['pooled']['v_recall']:.3f}", progress)
    return out


def markdown(report: dict) -> str:
    lines = [f"# Generalisation of `{report['model']}`", "",
             f"Made by `{report['command']}` ({report['seconds']:.0f} s). Threshold: the "
             f"{report['threshold_percentile']:g}th percentile of held-out DS1 normal scores, which promises "
             f"about {100 - report['threshold_percentile']:g} % of normal beats flagged. Every beat at its "
             "reference position; the AF mask is the rhythm stage's (detected).", "",
             "## DS2 as other recorders give it", "",
             "| variant | ROC-AUC | ΔAUC | AP | normal flagged | recall V | recall S | no-learning ROC-AUC | "
             "no-learning AP | no-learning normal flagged |", "|---" * 10 + "|"]
    original = report["variants"][0]["roc_auc"]
    for r in report["variants"]:
        lines.append(f"| {r['variant']} | {r['roc_auc']:.4f} | {r['roc_auc'] - original:+.4f} | {r['ap']:.3f} | "
                     f"{100 * r['normal_flagged']:.1f} % | {r['recall_V']:.3f} | {r['recall_S']:.3f} | "
                     f"{r['no_learning_roc_auc']:.4f} | {r['no_learning_ap']:.3f} | "
                     f"{100 * r['no_learning_normal_flagged']:.1f} % |")
    lines += ["", "## Where the flagged normal beats come from (DS2, original recordings)", "",
              "Median z-score of each term over the record's flagged normal beats: the term that put them over "
              "the threshold.", "",
              "| record | normal beats | flagged | abnormal beats | found | z recon | z distance | z premature | "
              "z pause |", "|---" * 9 + "|"]
    for r in report["records"]:
        z = r["flagged_normal_median_z"]
        cells = ["–" if z[k] is None else f"{z[k]:.1f}" for k in ("recon", "distance", "premature", "pause")]
        found = "–" if r["abnormal_recall"] is None else f"{r['abnormal_recall']:.3f}"
        lines.append(f"| {r['record']} | {r['normal']} | {100 * r['normal_flagged']:.1f} % | {r['abnormal']} | "
                     f"{found} | " + " | ".join(cells) + " |")
    lines += ["", "## Inside atrial fibrillation (records " + ", ".join(AF_RECORDS) + ")", "",
              "Targets: normal beats inside reference AF / AFL flagged <= "
              f"{100 * AF_TARGETS['normal_flagged_pooled']:g} % "
              f"pooled and <= {100 * AF_TARGETS['normal_flagged_per_record']:g} % per record; V recall >= "
              f"{AF_TARGETS['v_recall']}. 201 and 203 are DS1 records (their normal beats may have trained the "
              "model); the others are DS2. Flagged as `ecg-rnn score` flags (scoring.flag_beats): the score "
              "passes the threshold or, inside the AF mask, the suggestion calls the beat ventricular.", "",
              "| AF mask given | record | normal beats in AF | flagged | V beats | V recall |", "|---" * 6 + "|"]
    for kind, res in report["af_records"].items():
        for r in res["records"]:
            flag = "–" if r["normal_in_af_flagged"] is None else f"{100 * r['normal_in_af_flagged']:.1f} %"
            rec = "–" if r["v_recall"] is None else f"{r['v_recall']:.3f}"
            lines.append(f"| {kind} | {r['record']} | {r['normal_in_af']} | {flag} | {r['v_beats']} | {rec} |")
        p = res["pooled"]
        lines.append(f"| {kind} | **pooled** | | **{100 * p['normal_in_af_flagged']:.1f} %** | | "
                     f"**{p['v_recall']:.3f}** |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ecg_rnn.generalisation", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, help="detector file (default: the shipped default model)")
    parser.add_argument("--out", type=Path, default=Path("docs/evaluation"))
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    progress = not args.quiet
    model = args.model or paths.default_model_path()
    detector = RecurrentAEDetector.load(model)
    folder = locate_mitdb(quiet=not progress)
    t0 = time.monotonic()
    command = " ".join(["python -m ecg_rnn.generalisation", *(sys.argv[1:] if argv is None else argv)])
    report = {"model": Path(model).name, "command": command,
              "threshold_percentile": detector.threshold_percentile,
              "variants": evaluate_variants(detector, folder, progress=progress),
              "records": record_breakdown(detector, folder, progress=progress),
              "af_records": evaluate_af_records(detector, folder, progress=progress)}
    report["seconds"] = time.monotonic() - t0
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "generalisation.json").write_text(json.dumps(report, indent=2, default=float))
    (args.out / "generalisation.md").write_text(markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
