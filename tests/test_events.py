"""Holter events: hand-built beat sequences with known answers, and MIT-BIH reference labels of the shipped
records checked against counts computed here independently (regular expressions, plain loops)."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest
import wfdb

from benchmarks.events import main as events_benchmark
from benchmarks.events import read_reference, reference_track
from ecg_rnn.beats import AAMI_OF_SYMBOL
from ecg_rnn.errors import RecordError
from ecg_rnn.events import (BeatTrack, EventConfig, detect_events, episodes_from_beats, heart_rate, hourly,
                            summary)


def sequence(*parts: tuple[str, float]) -> tuple[np.ndarray, np.ndarray]:
    """Beat times and classes from (class, RR before the beat) pairs, starting at t = 1 s."""
    rr = np.array([p[1] for p in parts], dtype=float)
    return 1.0 + np.cumsum(rr) - rr[0], np.array([p[0] for p in parts])


def normal(n: int, rr: float = 1.0) -> list[tuple[str, float]]:
    return [("N", rr)] * n


def events_of(parts, **track_args) -> pd.DataFrame:
    time_s, classes = sequence(*parts)
    track_args.setdefault("duration_s", time_s[-1] + 1.0)
    return detect_events(BeatTrack.build(time_s, classes, **track_args))


def kinds(events: pd.DataFrame) -> dict:
    return events.kind.value_counts().to_dict()


# ---------------------------------------------------------------------------------------------
# Hand-built sequences


def test_couplet_is_one_event_and_not_two_isolated_beats():
    events = events_of(normal(5) + [("V", 0.6), ("V", 0.6)] + normal(5))
    ectopy = events[events.kind.str.startswith("V")]
    assert ectopy.kind.tolist() == ["V_couplet"]
    assert ectopy.beats.iloc[0] == 2 and ectopy.rate_bpm.iloc[0] == pytest.approx(100.0)


def test_run_at_120_bpm_is_vt_and_at_80_bpm_a_slow_run():
    fast = events_of(normal(5) + [("V", 0.5)] * 4 + normal(5))
    run = fast[fast.kind == "VT"]
    assert len(run) == 1 and run.beats.iloc[0] == 4 and run.rate_bpm.iloc[0] == pytest.approx(120.0)
    slow = events_of(normal(5) + [("V", 0.75)] * 3 + normal(5))
    assert kinds(slow).get("V_run") == 1 and "VT" not in kinds(slow)


def test_supraventricular_run_at_150_bpm_is_svt():
    events = events_of(normal(5) + [("S", 0.4)] * 5 + normal(5))
    svt = events[events.kind == "SVT"]
    assert len(svt) == 1 and svt.rate_bpm.iloc[0] == pytest.approx(150.0) and "S_run" not in kinds(events)


def test_a_detection_gap_splits_consecutive_v_beats():
    events = events_of(normal(5) + [("V", 0.6), ("V", 3.0)] + normal(5))
    assert kinds(events).get("V_isolated") == 2 and "V_couplet" not in kinds(events)


def test_bigeminy_needs_three_cycles_of_n_v():
    cycles = [("N", 1.0), ("V", 0.6)]
    events = events_of(normal(5) + cycles * 4 + normal(5))
    episode = events[events.kind == "V_bigeminy"]
    assert len(episode) == 1 and episode.beats.iloc[0] == 7  # V N V N V N V
    assert kinds(events).get("V_isolated") == 4
    assert "V_bigeminy" not in kinds(events_of(normal(5) + cycles * 2 + normal(5)))


def test_trigeminy_is_n_n_v_and_an_s_beat_breaks_it():
    cycle = [("N", 1.0), ("N", 1.0), ("V", 0.6)]
    events = events_of(normal(3) + cycle * 5 + normal(3))
    assert kinds(events).get("V_trigeminy") == 1 and "V_bigeminy" not in kinds(events)
    broken = cycle * 2 + [("N", 1.0), ("S", 0.6), ("V", 0.6)] + cycle  # two V beats on either side of the S
    assert "V_trigeminy" not in kinds(events_of(normal(3) + broken + normal(3)))


def test_pause_counts_unless_noise_overlaps_it():
    parts = normal(5) + [("N", 2.5)] + normal(5) + [("N", 3.0)] + normal(5)
    time_s, _ = sequence(*parts)
    quiet = events_of(parts).query("kind == 'pause'")
    assert (quiet.end_s - quiet.start_s).round(3).tolist() == [2.5, 3.0]
    across_noise = events_of(parts, episodes=[("noise", time_s[11] - 1.0, time_s[11] - 0.5)])
    pauses = across_noise[across_noise.kind == "pause"]
    assert len(pauses) == 1 and pauses.end_s.iloc[0] == pytest.approx(time_s[5])
    noisy_beat = np.zeros(len(time_s), bool)
    noisy_beat[5] = True  # the first pause ends on a beat the quality stage marked noisy
    assert len(events_of(parts, noisy=noisy_beat).query("kind == 'pause'")) == 1


def test_af_burden_and_noise_share_are_the_union_of_their_episodes():
    time_s, classes = sequence(*normal(99))
    track = BeatTrack.build(time_s, classes, duration_s=200.0,
                            episodes=[("AF", 10.0, 50.0), ("AF", 40.0, 60.0), ("noise", 100.0, 110.0)])
    facts = summary(track)
    assert facts["af_burden"] == pytest.approx(50.0 / 200.0)
    assert facts["noise_share"] == pytest.approx(10.0 / 200.0)
    af = detect_events(track).query("kind == 'AF'")
    assert af.beats.tolist() == [40, 20]  # beats at 10..49 s and 40..59 s


def test_heart_rate_extremes_skip_noisy_beats():
    parts = normal(20, 1.0) + normal(20, 0.5) + normal(20, 1.5)
    time_s, classes = sequence(*parts)
    noisy = np.zeros(len(time_s), bool)
    noisy[40:] = True  # the slow stretch is noise: the lowest rate is the 60 bpm one
    events = detect_events(BeatTrack.build(time_s, classes, duration_s=time_s[-1] + 1, noisy=noisy))
    rates = dict(zip(events.kind, events.rate_bpm))
    assert rates["HR_max"] == pytest.approx(120.0) and rates["HR_min"] == pytest.approx(60.0)
    assert "pause" not in kinds(events)


def test_reviewed_flags_follow_the_beats_behind_each_count():
    time_s, classes = sequence(*(normal(5) + [("V", 0.6)] + normal(5) + [("V", 0.6), ("V", 0.6)] + normal(5)))
    reviewed = classes == "V"
    reviewed[12] = False  # second beat of the couplet left to the suggestion
    track = BeatTrack.build(time_s, classes, duration_s=time_s[-1] + 1, reviewed=reviewed)
    events = detect_events(track)
    assert events.set_index("kind").loc[["V_isolated", "V_couplet"], "reviewed"].tolist() == [True, False]
    facts = summary(track, events)
    assert facts["V_beats"] == 3 and facts["V_couplets"] == 1
    assert facts["reviewed"]["V_beats"] == "part" and facts["reviewed"]["V_couplets"] == "none"
    assert facts["reviewed"]["S_beats"] == "part"  # no S beat: the zero rests on all beats, some unreviewed


def test_hourly_counts_and_scales_a_partial_hour():
    time_s = np.arange(1.0, 5400.0, 1.0)
    classes = np.full(len(time_s), "N")
    classes[[100, 200, 4000]] = "V"
    classes[4500] = "S"
    table = hourly(BeatTrack.build(time_s, classes, duration_s=5400.0))
    assert table.V.tolist() == [2, 1] and table.S.tolist() == [0, 1]
    assert table.ectopics_per_hour.tolist() == pytest.approx([2.0, 2 * 2.0])  # 2 in the last half hour
    assert table.hr_mean_bpm.tolist() == pytest.approx([60.0, 60.0])


def test_episodes_from_beat_labels_run_to_the_next_unflagged_beat():
    episodes = episodes_from_beats([1, 2, 3, 4, 5, 6], [False, True, True, False, True, True], "AF", 7.0)
    assert episodes[["start_s", "end_s"]].values.tolist() == [[2, 4], [5, 7]]


@pytest.mark.parametrize("change, message", [
    (dict(time_s=[2.0, 1.0]), "sorted"),
    (dict(classes=["N", "X"]), "unknown beat classes"),
    (dict(episodes=[("AF", 1.0, 99.0)]), "outside"),
    (dict(episodes=[("VF", 1.0, 2.0)]), "unknown episode kind"),
    (dict(reviewed=[True]), "differ in length"),
])
def test_bad_input_is_a_record_error(change, message):
    args = {"time_s": [1.0, 2.0], "classes": ["N", "V"], "duration_s": 10.0, **change}
    with pytest.raises(RecordError, match=message):
        BeatTrack.build(args.pop("time_s"), args.pop("classes"), **args)


def test_config_rejects_a_run_shorter_than_three():
    with pytest.raises(ValueError):
        EventConfig(run_beats=2)


# ---------------------------------------------------------------------------------------------
# MIT-BIH reference labels of the shipped records, against counts computed independently here


def reference_classes(record) -> tuple[np.ndarray, str]:
    """Beat times and the AAMI classes as one string, read straight from the annotation file."""
    ann = wfdb.rdann(str(record), "atr")
    header = wfdb.rdheader(str(record))
    beats = [(s / header.fs, AAMI_OF_SYMBOL[sym]) for s, sym in zip(ann.sample, ann.symbol) if sym in AAMI_OF_SYMBOL]
    return np.array([b[0] for b in beats]), "".join(b[1] for b in beats)


def test_record_208_ectopy_matches_a_regular_expression_count(sample_dir):
    _, classes = reference_classes(sample_dir / "208")
    run_lengths = [len(m.group()) for m in re.finditer("V+", classes)]
    trigeminy = [m for m in re.finditer(r"(?<!V)V(?:NNV){2,}(?!V)", classes)]
    bigeminy = [m for m in re.finditer(r"(?<!V)V(?:NV){2,}(?!V)", classes)]
    facts = summary(reference_track(read_reference(sample_dir / "208")))
    assert facts["V_beats"] == classes.count("V") == 992
    assert facts["V_couplets"] == run_lengths.count(2) > 100
    assert facts["V_runs"] == sum(n >= 3 for n in run_lengths)
    assert facts["V_trigeminy_episodes"] == len(trigeminy) > 0
    assert facts["V_bigeminy_episodes"] == len(bigeminy)
    assert facts["reviewed"]["V_couplets"] == "all"


def test_record_232_pauses_match_a_plain_loop_outside_noise(sample_dir):
    record = sample_dir / "232"
    times, _ = reference_classes(record)
    ann = wfdb.rdann(str(record), "atr")
    fs = wfdb.rdheader(str(record)).fs
    # noise spans: from a `~` marking MLII (signal 0) noisy until the next `~`
    marks = [(s / fs, sub) for s, sym, sub in zip(ann.sample, ann.symbol, ann.subtype) if sym == "~"]
    spans = [(start, marks[i + 1][0] if i + 1 < len(marks) else np.inf)
             for i, (start, sub) in enumerate(marks) if sub == -1 or sub & 0b10001]
    expected = []
    for a, b in zip(times[:-1], times[1:]):
        touches_noise = any(start < b and end > a for start, end in spans)
        if b - a > 2.0 and not touches_noise:
            expected.append(b - a)
    facts = summary(reference_track(read_reference(record)))
    assert facts["pauses"] == len(expected) > 50
    assert facts["longest_pause_s"] == pytest.approx(max(expected))
    assert facts["pauses"] < int(np.sum(np.diff(times) > 2.0))  # noise removed some


def test_heart_rate_windows_of_record_100_lie_in_a_physiological_range(sample_dir):
    rates = heart_rate(reference_track(read_reference(sample_dir / "100")))
    assert len(rates) > 2000 and rates.hr_bpm.between(40, 120).all()


# ---------------------------------------------------------------------------------------------
# The validation script, including its --scored comparison


def write_scored(folder, track: BeatTrack, name: str, with_events: bool) -> None:
    """Per-beat CSV of a "pipeline" that suggests exactly the reference classes, and optionally its events."""
    pd.DataFrame({"time_s": track.time_s, "suggested_class": track.classes, "rhythm": "N",
                  "quality": np.where(track.noisy, "noise", "ok")}).to_csv(folder / f"{name}.csv", index=False)
    if with_events:
        detect_events(track).to_csv(folder / f"{name}.events.csv", index=False)


def test_benchmark_puts_pipeline_counts_next_to_the_reference(sample_dir, tmp_path):
    scored = tmp_path / "scored"
    scored.mkdir()
    write_scored(scored, reference_track(read_reference(sample_dir / "208")), "208", with_events=True)
    write_scored(scored, reference_track(read_reference(sample_dir / "232")), "232", with_events=False)
    out = tmp_path / "events.md"
    events_benchmark(["--source", str(sample_dir), "--records", "100", "208", "232", "--scored", str(scored),
                      "--out", str(out)])
    lines = out.read_text().splitlines()
    row_208 = next(line for line in lines if line.startswith("| 208 | events.csv |"))
    assert "| 992 / 992 |" in row_208 and "| 181 / 181 |" in row_208  # V beats, V couplets
    row_232 = next(line for line in lines if line.startswith("| 232 | per-beat |"))
    assert "| 1382 / 1382 |" in row_232  # S beats; events computed from the per-beat columns
    assert any(line.startswith("| 100 | 2273 | 1 | 33 |") for line in lines)  # reference row
    assert not any(line.startswith("| 100 | events.csv") or line.startswith("| 100 | per-beat") for line in lines)
