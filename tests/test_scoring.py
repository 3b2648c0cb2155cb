"""Scoring of long recordings: per-record statistics are taken per stretch of at most an hour."""

from __future__ import annotations

import numpy as np

from ecg_rnn.beats import Beats
from ecg_rnn.detector import RecurrentAEDetector
from ecg_rnn.paths import default_model_path
from ecg_rnn.records import open_record
from ecg_rnn.scoring import AF_RHYTHM, LONGEST_STRETCH_S, flag_beats, in_stretches, score_source
from local_data import mitdb_record


def _beats(record: str, seconds: float, rr_s: float = 0.8) -> Beats:
    t = np.arange(0.0, seconds, rr_s)
    n = len(t)
    return Beats(record=np.full(n, record), sample=(t * 360).astype(np.int64), time_s=t,
                 waves=np.zeros((n, 4), np.float32), rr=np.full((n, 3), rr_s, np.float32),
                 symbol=np.full(n, ""), aami=np.full(n, ""))


def test_a_day_is_cut_into_equal_stretches_and_a_half_hour_stays_whole():
    day = _beats("holter", 2.5 * LONGEST_STRETCH_S)
    short = _beats("mitdb", 1805.0)  # an MIT-BIH record: 30 min 5 s
    both = Beats.concat([day, short])
    cut = in_stretches(both)
    names, counts = np.unique(cut.record[: len(day)], return_counts=True)
    assert list(names) == ["holter@0", "holter@1", "holter@2"]
    assert counts.max() - counts.min() <= 1  # equal stretches, not two full hours and a half
    assert (cut.record[len(day):] == "mitdb").all()
    for k in range(3):  # every stretch is contiguous in time and at most an hour long
        t = cut.time_s[cut.record == f"holter@{k}"]
        assert t.max() - t.min() <= LONGEST_STRETCH_S and np.all(np.diff(t) > 0)
    assert (cut.sample == both.sample).all() and (both.record[: len(day)] == "holter").all()  # input untouched
    assert in_stretches(short) is short


def test_inside_af_a_suggested_ventricular_beat_is_flagged_whatever_its_score():
    score = np.array([9.0, 1.0, 1.0, 1.0, 9.0])
    in_af = np.array([False, True, False, True, True])
    suggested = np.array(["N", "V", "V", "S", "V"])
    in_noise = np.array([False, False, False, False, True])
    flags = flag_beats(score, 5.0, in_noise, in_af, suggested)
    assert flags.tolist() == [True, True, False, False, False]  # AF + V: flagged; outside AF: the score; noise: never


def test_mitbih_203_ventricular_beats_inside_af_are_flagged():
    """203: AF with multiform ventricular beats in a record whose own beats vary widely; against its own
    spread half of its V beats inside AF score below the threshold."""
    detector = RecurrentAEDetector.load(default_model_path())
    scored = score_source(detector, open_record(mitdb_record("203")))
    in_af, v = scored.rhythm == AF_RHYTHM, scored.beats.aami == "V"
    by_score = scored.analysis.score > detector.threshold_
    assert (v & in_af).sum() > 300 and by_score[v & in_af].mean() < 0.7
    assert scored.flagged[v & in_af].mean() > 0.85
    assert np.array_equal(scored.flagged & ~by_score, in_af & (scored.suggested_class == "V") & ~by_score
                          & (scored.quality != "noise"))
