"""Bulk scoring: a folder of recordings on a process pool, resumable, one bad file does not stop the rest;
the triage table and the per-recording writes that make a rerun or a retried task safe."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest
import wfdb

from ecg_rnn import bulk
from ecg_rnn.bulk import BulkConfig, expand_inputs, read_summary, score_many
from ecg_rnn.errors import CheckpointError
from ecg_rnn.paths import default_model_path
from ecg_rnn.outputs import ANNOTATION_EXTENSION, ScoredFile, beat_table_stats, read_meta

QUIET = BulkConfig(progress=False)
BROKEN_HEADER = "broken 1 360 1000\nbroken.dat 16 200 16 0 0 0 0 II\n"


def write_excerpts(folder: Path, sample_dir: Path, count: int, seconds: float) -> list[str]:
    """`count` WFDB excerpts of `seconds` each, cut in turn from the sample records 100, 208 and 232 (the
    n-th cut of a record starts where its previous one ended); returns their names."""
    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for i in range(count):
        source = ("100", "208", "232")[i % 3]
        start = int(i // 3 * seconds * 360)
        rec = wfdb.rdrecord(str(sample_dir / source), sampfrom=start, sampto=start + int(seconds * 360))
        names.append(f"x{source}" if count <= 3 else f"r{i:02d}_{source}")
        wfdb.wrsamp(names[-1], fs=360, units=rec.units, sig_name=rec.sig_name, p_signal=rec.p_signal,
                    fmt=["16", "16"], write_dir=str(folder))
    return names


def _folder(tmp_path, sample_dir, seconds=120):
    """Three short WFDB excerpts of the sample records, plus one broken header."""
    folder = tmp_path / "in"
    write_excerpts(folder, sample_dir, 3, seconds)
    (folder / "broken.hea").write_text(BROKEN_HEADER)
    return folder


def test_folder_is_scored_in_parallel_and_resumes(tmp_path, sample_dir):
    folder = _folder(tmp_path, sample_dir)
    paths = expand_inputs([folder])
    assert [p.name for p in paths] == ["broken", "x100", "x208", "x232"]
    out = tmp_path / "out"
    first = score_many(paths, default_model_path(), out, BulkConfig(workers=2, progress=False))
    assert sorted(s.name for s in first.scored) == ["x100", "x208", "x232"]
    assert [(p.name, "missing" in m) for p, m in first.failed] == [("broken", True)]
    for name in ("x100", "x208", "x232"):
        table = pd.read_csv(out / f"{name}.csv")
        assert len(table) > 100 and {"sample", "score", "percentile", "flagged"} <= set(table.columns)
        wfdb.rdann(str(out / name), ANNOTATION_EXTENSION)
        meta = read_meta(out, name)
        assert (meta.beats, meta.flagged) == (len(table), int(table["flagged"].sum()))
        assert (meta.duration_s, meta.fs, meta.leads, meta.path) == (120.0, 360.0, 2, str(folder / name))
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no staging folder is left behind
    errors = pd.read_csv(out / bulk.ERRORS_NAME)
    assert list(errors["record"]) == ["broken"] and "missing" in errors["error"][0]
    stamp = (out / "x100.csv").stat().st_mtime_ns
    again = score_many(paths, default_model_path(), out, BulkConfig(workers=2, progress=False))
    assert sorted(p.name for p in again.skipped) == ["x100", "x208", "x232"] and not again.scored
    assert (out / "x100.csv").stat().st_mtime_ns == stamp
    assert read_summary(out)["record"].tolist().count("x100") == 1
    redo = score_many(paths[1:2], default_model_path(), out, BulkConfig(workers=1, overwrite=True, progress=False))
    assert [s.name for s in redo.scored] == ["x100"]
    assert sorted(read_summary(out)["record"]) == ["x100", "x208", "x232"]  # a partial rerun lists everything
    assert pd.read_csv(out / bulk.ERRORS_NAME).empty  # errors.csv holds the latest run's failures


def test_parallel_equals_serial(tmp_path, sample_dir):
    folder = _folder(tmp_path, sample_dir, seconds=60)
    (folder / "broken.hea").unlink()
    paths = expand_inputs([folder])
    score_many(paths, default_model_path(), tmp_path / "a", BulkConfig(workers=1, progress=False))
    score_many(paths, default_model_path(), tmp_path / "b", BulkConfig(workers=2, progress=False))
    for p in paths:
        a, b = (pd.read_csv(tmp_path / d / f"{p.name}.csv") for d in ("a", "b"))
        pd.testing.assert_frame_equal(a, b)
    pd.testing.assert_frame_equal(read_summary(tmp_path / "a"), read_summary(tmp_path / "b"))


def test_summary_has_one_row_per_recording_sorted_by_triage_score(tmp_path, sample_dir):
    folder = _folder(tmp_path, sample_dir, seconds=60)
    out = tmp_path / "out"
    score_many(expand_inputs([folder]), default_model_path(), out, QUIET)
    summary = read_summary(out)
    assert list(summary.columns) == bulk.SUMMARY_COLUMNS
    assert summary["record"].tolist()[-1] == "broken" and summary["status"].tolist() == ["ok"] * 3 + ["failed"]
    ok = summary[summary["status"] == "ok"]
    assert ok["triage_score"].is_monotonic_decreasing
    for row in ok.itertuples():
        table = pd.read_csv(out / f"{row.record}.csv")
        assert (row.beats, row.flagged) == (len(table), table["flagged"].sum())
        assert row.flagged_share == pytest.approx(table["flagged"].mean(), abs=1e-4)
        assert row.max_score == pytest.approx(table["score"].max(), abs=1e-4)
        assert row.triage_score == pytest.approx(bulk.triage_score(read_meta(out, row.record)), abs=1e-4)


def test_beat_table_stats_use_quality_rhythm_and_suggested_class_when_present():
    table = pd.DataFrame({"rr_prev_s": [float("nan"), 1.0, 1.0, 0.5, 0.5, 1.0],
                          "score": [0.1, 5.0, 0.2, 3.0, 0.3, 0.4],
                          "flagged": [False, True, False, True, False, False],
                          "quality": ["ok", "ok", "noise", "ok", "ok", "noise"],
                          "rhythm": ["", "", "", "AF", "AF", ""],
                          "suggested_class": ["N", "V", "N", "S", "N", "V"]})
    stats = beat_table_stats(table)
    assert stats["flagged_share"] == pytest.approx(2 / 6)
    assert stats["flagged_clean_share"] == pytest.approx(2 / 4)  # the noisy beats are left out
    assert stats["noise_share"] == pytest.approx(2 / 6)
    assert stats["af_burden"] == pytest.approx(1.0 / 4.0)  # by time: 1 s of AF out of 4 s of known RR
    assert (stats["suggested_v"], stats["suggested_s"], stats["max_score"]) == (2, 1, 5.0)
    bare = beat_table_stats(table[["rr_prev_s", "score", "flagged"]])
    assert bare["noise_share"] is bare["af_burden"] is bare["suggested_v"] is None
    assert bare["flagged_clean_share"] == bare["flagged_share"]


def _scored(name: str, hours: float, **stats) -> ScoredFile:
    base = {"flagged_share": 0.0, "flagged_clean_share": 0.0, "noise_share": None, "af_burden": None,
            "suggested_v": None, "suggested_s": None, "max_score": 1.0}
    return ScoredFile(name=name, beats=100, flagged=0, fs=360.0, lead="MLII", csv=Path(f"{name}.csv"),
                      annotations=Path(f"{name}.ecgrnn"), path=name, duration_s=hours * 3600, leads=1,
                      stats={**base, **stats})


def test_triage_score_ranks_ectopy_af_and_flags_and_discounts_noise():
    quiet = _scored("quiet", 1.0)
    ectopic = _scored("ectopic", 2.0, suggested_v=60)  # 30 V beats an hour: the full term
    af = _scored("af", 1.0, af_burden=0.5)
    noisy_af = _scored("noisy_af", 1.0, af_burden=0.5, noise_share=0.5)
    assert bulk.triage_score(quiet) == 0.0
    assert bulk.triage_score(ectopic) == pytest.approx(1.0)
    assert bulk.triage_score(_scored("more", 2.0, suggested_v=600)) == pytest.approx(1.0)  # capped
    assert bulk.triage_score(af) == pytest.approx(0.5) and bulk.triage_score(noisy_af) == pytest.approx(0.25)
    assert bulk.triage_score(_scored("flags", 1.0, flagged_clean_share=0.2)) == pytest.approx(0.2)


def test_folder_scan_skips_a_downloaded_database_checksum_list(tmp_path, sample_dir):
    """PhysioNet's download holds SHA256SUMS.txt and RECORDS beside the records: neither is a recording,
    while a text file holding a signal table (with or without a header line) is."""
    folder = _folder(tmp_path, sample_dir, seconds=30)
    (folder / "SHA256SUMS.txt").write_text("8d8a5349fb16638ebbf649f1779d12e9  100.atr\n"
                                           "b2ea3c250e56e48f4b7b90697832b8aa  100.dat\n")
    (folder / "RECORDS").write_text("x100\nx208\n")
    (folder / "notes.txt").write_text("Recorded at the clinic\non 2 May\n")
    (folder / "table.txt").write_text("time,MLII\n0.0,0.1\n0.0028,0.2\n")
    (folder / "bare.txt").write_text("0.1\t0.2\n0.3\tnan\n")
    assert [p.name for p in expand_inputs([folder])] == ["broken", "x100", "x208", "x232", "bare.txt", "table.txt"]


def test_plan_refuses_a_name_clash_instead_of_overwriting(tmp_path, sample_dir):
    folder = _folder(tmp_path, sample_dir, seconds=30)
    other = tmp_path / "other"
    write_excerpts(other, sample_dir, 1, 30)
    (folder / "summary.hea").write_text(BROKEN_HEADER.replace("broken", "summary"))
    paths = expand_inputs([folder, other])
    todo, skipped, refused = bulk.plan(paths, tmp_path / "out", overwrite=False)
    assert [p.name for p in todo] == ["broken", "x100", "x208", "x232"] and not skipped
    assert [(p.parent.name, p.name) for p, _ in refused] == [("in", "summary"), ("other", "x100")]
    assert "triage table" in refused[0][1] and str(folder / "x100") in refused[1][1]


def test_a_retried_task_finds_its_recording_done_and_leaves_it(tmp_path, sample_dir):
    folder = _folder(tmp_path, sample_dir, seconds=30)
    out = tmp_path / "out"
    model = str(default_model_path())
    job = bulk.RecordJob(path=str(folder / "x208"), out_dir=str(out), model_path=model,
                         model_digest=bulk.file_digest(model), peaks="detect", lead=None, fs=None, overwrite=False,
                         threads=None)
    first = bulk.score_recording(job)
    stamp = first.scored.csv.stat().st_mtime_ns
    retry = bulk.score_recording(job)
    assert retry.scored == first.scored and retry.scored.csv.stat().st_mtime_ns == stamp
    stale = out / ".x208.abc.partial"  # a worker killed while writing
    stale.mkdir()
    bulk.remove_stale_staging(out)
    assert not stale.exists()
    assert bulk.score_recording(replace(job, path=str(folder / "broken"))).error


def test_a_worker_refuses_a_model_that_differs_from_the_clients(tmp_path):
    model = default_model_path()
    with pytest.raises(CheckpointError, match="differs from the client's copy"):
        bulk.worker_detector(str(model), bulk.file_digest(model)[::-1])


def test_cli_many_records_reports_each_failure_and_exits_2(tmp_path, sample_dir):
    folder = _folder(tmp_path, sample_dir, seconds=60)
    out = tmp_path / "out"
    model = ["--model", str(default_model_path())]
    done = subprocess.run([sys.executable, "-m", "ecg_rnn", "score", str(folder), "--out", str(out),
                           "--workers", "2", *model], capture_output=True, text=True, timeout=300)
    assert done.returncode == 2
    errors = [line for line in done.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and "broken" in errors[0] and "Traceback" not in done.stderr
    assert sorted(p.name for p in out.glob("*.meta.json")) == ["x100.meta.json", "x208.meta.json", "x232.meta.json"]
    assert all((out / f"{name}.csv").is_file() for name in ("x100", "x208", "x232"))
    assert f"triage table: {out / bulk.SUMMARY_NAME} (4 recordings" in done.stdout
    again = subprocess.run([sys.executable, "-m", "ecg_rnn", "score", str(folder / "x100"), "--out", str(out),
                            *model], capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and "skipped 1 recording(s) already scored" in again.stdout
