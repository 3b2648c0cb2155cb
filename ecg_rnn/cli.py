"""Command line: a thin layer over the package. Errors are one line on stderr and a non-zero exit."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ecg_rnn import __version__
from ecg_rnn.errors import EcgRnnError

EXIT_BAD_INPUT = 2
DEFAULT_PERCENTILE = 95.0  # the detector's DEFAULT_THRESHOLD_PERCENTILE (a test keeps them equal; importing
# the detector here would load torch for every `--help`)


def _add_record_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--lead", help="lead name or index (default: MLII / II, then a chest lead, else the "
                                       "first ECG lead)")
    parser.add_argument("--fs", type=float, help="sampling rate in Hz, for a CSV without a time column")


def _add_data(sub) -> None:
    p = sub.add_parser("data", help="find MIT-BIH (MITDB_DIR, data/mitdb, ../shared/data/mitdb) or download it")
    p.add_argument("--no-download", action="store_true", help="fail instead of downloading from PhysioNet")
    p.set_defaults(run=_run_data)


def _run_data(args) -> int:
    from ecg_rnn.protocols import locate_mitdb

    folder = locate_mitdb(download=not args.no_download)
    print(folder)
    return 0


def _add_beats(sub) -> None:
    p = sub.add_parser("beats", help="cut a record into beats and write one CSV row per beat")
    p.add_argument("record", help="WFDB record path without extension (e.g. data/mitdb/100), or a .csv")
    _add_record_options(p)
    p.add_argument("--out", required=True, type=Path, help="CSV file to write")
    p.add_argument("--peaks", choices=("auto", "reference", "detect"), default="auto",
                   help="beat positions: reference annotations, the R-peak detector, or auto (reference "
                        "when annotations exist)")
    p.add_argument("--pre", type=float, help="window start before the R-peak, seconds (default 0.28)")
    p.add_argument("--post", type=float, help="window end after the R-peak, seconds (default 0.42)")
    p.add_argument("--waves", action="store_true", help="also write the normalised beat samples")
    p.set_defaults(run=_run_beats)


def _run_beats(args) -> int:
    import dataclasses

    from ecg_rnn.beats import BeatConfig, beats_from_record
    from ecg_rnn.records import read_record

    config = BeatConfig()
    overrides = {k: v for k, v in (("pre_s", args.pre), ("post_s", args.post)) if v is not None}
    config = dataclasses.replace(config, **overrides)
    record = read_record(args.record, lead=args.lead, fs=args.fs)
    beats = beats_from_record(record, beat_config=config, peaks=args.peaks)
    table = beats.table()
    if args.waves:
        for i in range(beats.waves.shape[1]):
            table[f"w{i}"] = beats.waves[:, i].round(5)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(args.out, index=False)
    print(f"{record.name}: {len(beats)} beats ({record.duration_s:.0f} s, lead {record.lead}, "
          f"{record.fs:g} Hz) -> {args.out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ecg-rnn", description=__doc__)
    parser.add_argument("--version", action="version", version=f"ecg-rnn {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in COMMANDS:
        add(sub)
    return parser


COMMANDS = [_add_data, _add_beats]


# ---------------------------------------------------------------------------------------------
# train / evaluate / score (the detector; see ecg_rnn.detector)


def _add_model_options(p) -> None:
    g = p.add_argument_group("model")
    g.add_argument("--cell", choices=("lstm", "gru"), help="recurrent cell (default lstm)")
    g.add_argument("--hidden", type=int, help="hidden units per layer")
    g.add_argument("--layers", type=int, help="stacked recurrent layers")
    g.add_argument("--latent", type=int, help="latent code size")
    g.add_argument("--dropout", type=float, help="dropout between layers and on the latent code")
    g.add_argument("--bidirectional", action="store_true", default=None, help="bidirectional encoder")
    g.add_argument("--no-context", dest="context", action="store_false", default=None,
                   help="plain autoencoder: no template channel, RR conditioning or residual decoding")


def _add_train_options(p) -> None:
    g = p.add_argument_group("training")
    g.add_argument("--epochs", type=int, help="maximum epochs")
    g.add_argument("--batch-size", type=int)
    g.add_argument("--lr", type=float, help="Adam learning rate")
    g.add_argument("--patience", type=int, help="early-stopping patience (epochs)")
    g.add_argument("--seed", type=int)
    g.add_argument("--device", choices=("auto", "cpu", "cuda"), help="auto: CUDA when available")
    g.add_argument("--max-beats", type=int, help="training beats drawn per epoch (0: all)")
    g.add_argument("--threads", type=int, help="torch CPU threads")


def _model_config(args, base):
    import dataclasses

    names = {"cell": "cell", "hidden": "hidden_size", "layers": "num_layers", "latent": "latent_size",
             "dropout": "dropout", "bidirectional": "bidirectional", "context": "context"}
    over = {f: getattr(args, a) for a, f in names.items() if getattr(args, a, None) is not None}
    if over.get("context") is False:
        over.setdefault("input_norm", "beat")
    return dataclasses.replace(base, **over)


def _train_overrides(args) -> dict:
    """The TrainConfig fields the training options set (train and evaluate read them alike)."""
    names = {"epochs": "epochs", "batch_size": "batch_size", "lr": "lr", "patience": "patience",
             "seed": "seed", "device": "device", "max_beats": "max_train_beats", "threads": "threads"}
    over = {f: getattr(args, a) for a, f in names.items() if getattr(args, a, None) is not None}
    if over.get("max_train_beats") == 0:  # 0: every beat, for train and evaluate alike
        over["max_train_beats"] = None
    return over


def _add_train(sub) -> None:
    p = sub.add_parser("train", help="train the detector on MIT-BIH DS1 normal beats; writes runs/<name>/")
    p.add_argument("--name", default="default", help="run name: output goes to runs/<name>/ (default: default)")
    p.add_argument("--runs-dir", type=Path, help="parent folder of the run (default: runs/ in the working folder)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run from its last epoch")
    p.add_argument("--ship", type=Path, metavar="PATH",
                   help="also save the model (and a .json sidecar) here, e.g. ecg_rnn/models/default.safetensors")
    p.add_argument("--threshold-percentile", type=float,
                   help=f"threshold = this percentile of held-out normal scores (default {DEFAULT_PERCENTILE:g})")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    _add_model_options(p)
    _add_train_options(p)
    p.set_defaults(run=_run_train)


def _run_train(args) -> int:
    import dataclasses

    from ecg_rnn import paths
    from ecg_rnn.detector import DEFAULT_MODEL_CONFIG, DEFAULT_TRAIN_CONFIG
    from ecg_rnn.experiments import TRAIN_TIME_BUDGET_S, run_training

    runs_dir = args.runs_dir or paths.runs_dir()
    try:
        mc = _model_config(args, DEFAULT_MODEL_CONFIG)
        tc = dataclasses.replace(DEFAULT_TRAIN_CONFIG, time_budget_s=TRAIN_TIME_BUDGET_S, **_train_overrides(args))
    except ValueError as exc:
        raise _BadArgs(str(exc)) from None
    result = run_training(args.name, mc, tc, runs_dir=runs_dir, resume=args.resume,
                          progress=not args.quiet, threshold_percentile=args.threshold_percentile,
                          ship_to=args.ship)
    if result is None:  # a torchrun rank other than 0: rank 0 reports
        return 0
    m = result["metrics"]
    print(f"{args.name}: DS1 -> DS2  ROC-AUC {m['roc_auc']:.4f}  AP {m['ap']:.4f}  sens {m['sensitivity']:.3f}  "
          f"spec {m['specificity']:.3f}  ({result['train_seconds']:.0f} s) -> "
          f"{runs_dir / args.name}")
    return 0


def _add_evaluate(sub) -> None:
    p = sub.add_parser("evaluate", help="evaluate a model on a protocol and compare with baselines")
    p.add_argument("--model", type=Path, help="detector file (default: the shipped default model)")
    p.add_argument("--protocol", choices=("inter-patient", "intra-patient", "noise"), default="inter-patient",
                   help="noise: the NSTDB-style noise stress test on DS2 records (unannotated copies through "
                        "the scoring path)")
    p.add_argument("--records", nargs="+", metavar="NAME",
                   help="noise protocol: MIT-BIH records to stress (default: all of DS2)")
    p.add_argument("--dataset", choices=("mitdb", "ecg5000"), default="mitdb",
                   help="ecg5000: train and evaluate on UCR ECG5000 (normal = class 1)")
    p.add_argument("--out", type=Path, help="folder for the JSON + Markdown report (default: runs/evaluate-<...>)")
    p.add_argument("--quick", action="store_true", help="small, fast configs for the trained comparisons")
    p.add_argument("--no-compare", action="store_true", help="only the given model (and rule-free baselines)")
    p.add_argument("--save-variants", type=Path, metavar="DIR",
                   help="save the trained LSTM / GRU / BiLSTM variants (inter-patient) into DIR")
    p.add_argument("--folds", type=int, help="intra-patient: evaluate only the first N of the 5 folds")
    p.add_argument("--fs", type=float, metavar="HZ", dest="recorder_fs",
                   help="noise protocol: resample every stressed recording to this rate before scoring, as a "
                        "recorder sampling at it gives it (default: MIT-BIH's 360 Hz)")
    p.add_argument("--noisy-leads", choices=("all", "chosen"), default="all",
                   help="noise protocol: noise on every lead (the NSTDB recipe, default) or on the chosen lead alone")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    _add_train_options(p)
    p.set_defaults(run=_run_evaluate)


def _run_evaluate(args) -> int:
    from ecg_rnn import paths
    from ecg_rnn.experiments import evaluate_ecg5000, evaluate_protocol
    from ecg_rnn.reports import markdown_table, write_report

    try:
        overrides = _train_overrides(args)
        seed = overrides.pop("seed", 0)
        scored = None
        if args.dataset == "ecg5000":
            report = evaluate_ecg5000(seed=seed, progress=not args.quiet, overrides=overrides)
            out = args.out or paths.runs_dir() / "evaluate-ecg5000"
        elif args.protocol == "noise":
            return _run_noise_test(args)
        else:
            from ecg_rnn.detector import RecurrentAEDetector

            model = args.model or paths.default_model_path()
            result = evaluate_protocol(RecurrentAEDetector.load(model), args.protocol, quick=args.quick,
                                       compare=not args.no_compare, seed=seed, progress=not args.quiet,
                                       save_variants=args.save_variants, model_name=str(model),
                                       folds=args.folds, overrides=overrides)
            report, scored = result.report, result.scored
            out = args.out or paths.runs_dir() / f"evaluate-{args.protocol}"
    except (TypeError, ValueError) as exc:
        raise _BadArgs(str(exc)) from None
    written = write_report(report, out, scored)
    print(markdown_table(report))
    print(f"-> {', '.join(str(p) for p in written)}")
    return 0


def _run_noise_test(args) -> int:
    import json

    from ecg_rnn import paths
    from ecg_rnn.detector import RecurrentAEDetector
    from ecg_rnn.noise_protocol import MIN_RANKED_BEATS, evaluate_noise, markdown_table
    from ecg_rnn.protocols import DS2

    model = args.model or paths.default_model_path()
    detector = RecurrentAEDetector.load(model)
    report = evaluate_noise(detector, tuple(args.records or DS2), progress=not args.quiet,
                            recorder_fs=args.recorder_fs, noisy_leads=args.noisy_leads)
    out = args.out or paths.runs_dir() / "evaluate-noise"
    out.mkdir(parents=True, exist_ok=True)
    (out / "noise.json").write_text(json.dumps(report, indent=2, default=float))
    tables = {stretch: markdown_table(report, stretch) for stretch in ("noisy", "clean")}
    variant, options = "", ""
    if args.recorder_fs:
        variant, options = f", resampled to {args.recorder_fs:g} Hz after the noise was added", f" --fs {args.recorder_fs:g}"
    if args.noisy_leads == "chosen":
        variant, options = variant + ", noise on the chosen lead alone", options + " --noisy-leads chosen"
    (out / "noise.md").write_text(
        "# Noise stress test (MIT-BIH + NSTDB-style synthetic noise)\n\n"
        f"Records: {', '.join(report['records'])}{variant}. Command: `ecg-rnn evaluate --protocol noise --records "
        f"{' '.join(report['records'])}{options} --out {out}`; model: `{Path(model).name}`.\n\n"
        f"ROC-AUC and AP rank the covered beats (abnormal = S, V, F, Q); \"–\" where fewer than "
        f"{MIN_RANKED_BEATS} abnormal or normal beats are covered.\n\n"
        f"## Noisy stretches\n\n{tables['noisy']}\n\n## Clean stretches of the same records\n\n{tables['clean']}\n")
    print(tables["noisy"])
    print(f"-> {out / 'noise.json'}, {out / 'noise.md'}")
    return 0


def _add_score(sub) -> None:
    p = sub.add_parser("score", help="score every beat of recordings; writes a CSV and a WFDB annotation "
                                     "file (extension .ecgrnn) per record, and a triage table summary.csv")
    p.add_argument("records", nargs="+", metavar="RECORD",
                   help="WFDB record path without extension, a .csv or .zip, or a folder of them")
    p.add_argument("--model", type=Path, help="detector file (default: the shipped default model)")
    p.add_argument("--out", type=Path, required=True,
                   help="output folder (on a cluster: storage that every worker shares)")
    p.add_argument("--peaks", choices=("auto", "reference", "detect"), default="detect",
                   help="beat positions: the R-peak detector (default), reference annotations, or auto")
    p.add_argument("--workers", type=int, default=0,
                   help="processes for many recordings (default: one per CPU core); with --scheduler local, "
                        "the LocalCluster's worker processes")
    p.add_argument("--scheduler", metavar="ADDRESS",
                   help="score on Dask: tcp://HOST:PORT of a running scheduler, or 'local' to start a "
                        "LocalCluster here (default: a process pool, no Dask)")
    p.add_argument("--overwrite", action="store_true",
                   help="score recordings again whose outputs already exist in --out (default: skip them)")
    _add_record_options(p)
    p.set_defaults(run=_run_score)


def _run_score(args) -> int:
    from ecg_rnn.bulk import BulkConfig, expand_inputs, score_many
    from ecg_rnn.paths import default_model_path
    from ecg_rnn.outputs import ANNOTATION_EXTENSION

    paths = expand_inputs(args.records)
    if not paths:
        raise _BadArgs(f"no recordings found in {', '.join(map(str, args.records))}")
    config = BulkConfig(peaks=args.peaks, lead=args.lead, fs=args.fs, workers=args.workers,
                        scheduler=args.scheduler, overwrite=args.overwrite, progress=len(paths) > 1)
    result = score_many(paths, args.model or default_model_path(), args.out, config)
    if len(paths) == 1 and result.failed:
        raise _BadArgs(result.failed[0][1])
    for done in sorted(result.scored, key=lambda d: d.name):
        print(f"{done.name}: {done.beats} beats, {done.flagged} flagged ({done.fs:g} Hz, lead {done.lead}) -> "
              f"{done.csv}, {done.annotations} (wfdb.rdann(..., '{ANNOTATION_EXTENSION}'))")
    if result.skipped:
        print(f"skipped {len(result.skipped)} recording(s) already scored in {args.out} (--overwrite to redo)")
    print(f"triage table: {result.summary} ({result.recordings} recordings, most urgent first)")
    for _, message in result.failed:
        print(f"ecg-rnn score: error: {message}", file=sys.stderr)
    if result.failed:
        print(f"ecg-rnn score: {len(result.failed)} recording(s) failed, listed in {result.errors}", file=sys.stderr)
    return EXIT_BAD_INPUT if result.failed else 0


class _BadArgs(EcgRnnError):
    """An option value the detector cannot use."""


def _add_report(sub) -> None:
    p = sub.add_parser("report", help="score a recording and write its Holter report (PDF or HTML)")
    p.add_argument("record", metavar="RECORD", help="WFDB record path without extension, an EDF/BDF, .csv or .zip")
    p.add_argument("--out", type=Path, required=True, help="report file: .pdf or .html")
    p.add_argument("--model", type=Path, help="detector file (default: the shipped default model)")
    p.add_argument("--reviews", type=Path,
                   help="review database whose decisions override the suggested classes and the AF / noise "
                        "episodes found (default: "
                        "$ECG_RNN_REVIEWS_DB, else data/reviews.sqlite when it exists)")
    _add_record_options(p)
    p.set_defaults(run=_run_report)


def _run_report(args) -> int:
    import dataclasses

    from ecg_rnn import paths
    from ecg_rnn.detector import RecurrentAEDetector
    from ecg_rnn.outputs import write_recording_report
    from ecg_rnn.records import open_record
    from ecg_rnn.reviews import ReviewStore, default_db_path, reviewed_episodes
    from ecg_rnn.scoring import score_source

    if args.out.suffix.lower() not in (".pdf", ".html"):
        raise _BadArgs(f"{args.out.name}: the report is written as .pdf or .html; pick one of those suffixes")
    model = args.model or paths.default_model_path()
    detector = RecurrentAEDetector.load(model)
    source = open_record(args.record, lead=args.lead, fs=args.fs)
    scored = score_source(detector, source)
    database = args.reviews or default_db_path()
    reviews, decisions = {}, {}
    if Path(database).is_file():
        store, digest = ReviewStore(database), source.load().digest
        reviews, decisions = store.get(digest), store.episode_reviews(digest)
    scored = dataclasses.replace(scored, episodes=reviewed_episodes(scored.episodes, decisions))
    path = write_recording_report(args.out, scored, source, detector, Path(model).name, reviews)
    print(f"{source.name}: {len(scored.beats)} beats, {len(reviews)} reviewed, {len(decisions)} episodes "
          f"reviewed -> {path}")
    return 0


COMMANDS += [_add_train, _add_evaluate, _add_score, _add_report]


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except EcgRnnError as exc:
        print(f"ecg-rnn {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print(f"ecg-rnn {args.command}: interrupted", file=sys.stderr)
        return 130
    except (OSError, MemoryError) as exc:
        print(f"ecg-rnn {args.command}: error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
