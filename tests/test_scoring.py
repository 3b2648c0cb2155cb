"""Scoring of long recordings: per-record statistics are taken per stretch of at most an hour."""

from __future__ import annotations

import numpy as np
import pytest

from ecg_rnn.beats import Beats
from ecg_rnn.detector import RecurrentAEDetector
from ecg_rnn.paths import default_model_path, sample_records_dir
from ecg_rnn.records import open_record
from ecg_rnn.scoring import (AF_RHYTHM, LONGEST_STRETCH_S, SECOND_LEAD_MARGIN, flag_beats, in_stretches, score_beats,
                             score_source)
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


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as patch:
        yield patch


def test_a_beat_is_judged_on_the_second_lead_only_where_the_chosen_one_is_clearly_noisier():
    from ecg_rnn.beats import CutBeats
    from ecg_rnn.scoring import judged_on_second_lead

    beats = Beats(record=np.full(4, "r"), sample=np.arange(4), time_s=np.arange(4.0), waves=np.zeros((4, 8)),
                  rr=np.ones((4, 5)), symbol=np.full(4, ""), aami=np.full(4, ""))
    chosen, second = np.array([0.9, 0.9, 0.5, 0.1]), np.array([0.1, 0.6, 0.1, 0.9])
    cut = CutBeats(beats, [], chosen, beats, second)
    assert judged_on_second_lead(cut, 0.4).tolist() == [True, False, True, False]
    assert not judged_on_second_lead(cut, float("inf")).any()
    assert not judged_on_second_lead(CutBeats(beats, [], chosen), 0.0).any()  # a single lead: nothing to switch to


@pytest.fixture(scope="module")
def one_lead_noisy(monkeypatch_module):
    """Record 208 (many V beats) with electrode-motion noise at 0 dB on its chosen lead (MLII) alone,
    V1 as recorded: scored with and without the second lead."""
    from ecg_rnn.noise_protocol import stressed_cuts

    monkeypatch_module.setenv("MITDB_DIR", str(sample_records_dir()))
    detector = RecurrentAEDetector.load(default_model_path())
    job = next(stressed_cuts(detector, ("208",), ("em",), (0.0,), progress=False, noisy_leads="chosen"))
    return job, {margin: score_beats(detector, job.cut, False, second_lead_margin=margin)
                 for margin in (float("inf"), SECOND_LEAD_MARGIN)}


def test_where_the_chosen_lead_is_noisy_the_clean_second_lead_judges_the_beats(one_lead_noisy):
    from sklearn.metrics import roc_auc_score

    from ecg_rnn.noise_protocol import _nearest_within
    from ecg_rnn.stress import noisy_mask

    job, scored = one_lead_noisy
    alone, switched = scored[float("inf")], scored[SECOND_LEAD_MARGIN]
    assert set(alone.scored_lead) == {"MLII"} and {"MLII", "V1"} <= set(switched.scored_lead)
    in_noise = noisy_mask(job.n_samples, job.fs)[switched.beats.sample]
    on_v1 = switched.scored_lead == "V1"
    assert in_noise[on_v1].mean() > 0.9  # switched where the noise was put, not in the clean stretches
    reference = _nearest_within(switched.beats.sample, job.ref_sample, int(0.15 * job.fs))
    rows = in_noise & (reference >= 0) & (switched.quality == "ok")
    abnormal = job.ref_aami[reference[rows]] != "N"
    auc = {m: roc_auc_score(abnormal, s.score[rows]) for m, s in scored.items()}
    assert auc[SECOND_LEAD_MARGIN] > auc[float("inf")] + 0.02
    same = ~on_v1  # beats left on the chosen lead keep its score
    np.testing.assert_allclose(switched.score[same], alone.score[same])
