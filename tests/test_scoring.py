"""Scoring of long recordings: per-record statistics are taken per stretch of at most an hour."""

from __future__ import annotations

import numpy as np

from ecg_rnn.beats import Beats
from ecg_rnn.scoring import LONGEST_STRETCH_S, in_stretches


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
