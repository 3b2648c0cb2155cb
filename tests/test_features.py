"""Score calibration and combination (no learning): per-record z-scores, short records, AF, populations."""

import dataclasses

import numpy as np
import pytest

from ecg_rnn.beats import Beats
from ecg_rnn.features import (RECORD_PRIOR_BEATS, RR_LEAN_TOLERANCE, ScoreWeights, combine, nearby_maximum,
                              normal_to_normal, p_wave_similarity, record_population, rhythm_terms, rr_reference,
                              template_distances, zscores)

CALIBRATION = {"recon": [0.0, 1.0], "distance": [0.0, 1.0], "premature": [0.1, 0.1], "pause": [0.0, 0.05]}


def _raw(n, rng, shift=0.0):
    return {"recon": rng.normal(shift, 2.0, n), "distance": rng.normal(shift, 1.0, n),
            "premature": rng.normal(0.1, 0.1, n), "pause": rng.normal(0.0, 0.05, n)}


def test_per_record_z_ignores_how_a_record_differs_from_training():
    """A lead or recorder whose beats all reconstruct worse (shifted, wider errors) gets the same
    per-record z-scores as one like the training data; the training-set calibration flags it wholesale."""
    rng = np.random.default_rng(0)
    base = _raw(2000, rng)
    worse = {k: (v * 3 + 5 if k in ("recon", "distance") else v) for k, v in base.items()}
    record = np.full(2000, "a")
    z_base, z_worse = zscores(base, record, CALIBRATION), zscores(worse, record, CALIBRATION)
    for k in ("recon", "distance"):
        np.testing.assert_allclose(z_base[k], z_worse[k], atol=0.05 * np.abs(z_base[k]).max())
    np.testing.assert_array_equal(z_base["premature"], z_worse["premature"])  # rhythm: training calibration
    assert np.mean(zscores(worse, record, CALIBRATION, per_record=False)["recon"] > 3) > 0.5


def test_a_short_strip_leans_on_the_training_calibration():
    rng = np.random.default_rng(1)
    raw = _raw(10, rng, shift=4.0)
    weight = 10 / (10 + RECORD_PRIOR_BEATS)
    median = np.median(raw["recon"])
    for record_scale, spread in (("all_beats", np.abs(raw["recon"] - median)),
                                 ("lower_half", median - raw["recon"][raw["recon"] <= median])):
        z = zscores(raw, np.full(10, "strip"), CALIBRATION, record_scale=record_scale)["recon"]
        expected = (1 - weight) * median / (weight * 1.4826 * np.median(spread) + (1 - weight))
        assert abs(np.median(z) - expected) < 1e-9, record_scale


def test_abnormal_beats_do_not_widen_the_lower_half_scale():
    """A record where 30 % of beats are abnormal (high errors, spread out): the scale from all beats
    is inflated by them and their z-scores shrink; the lower half's scale is the normal beats' own."""
    rng = np.random.default_rng(2)
    normal, abnormal = rng.normal(0.0, 1.0, 1400), rng.uniform(3.0, 12.0, 600)
    raw = {"recon": np.concatenate([normal, abnormal]), "distance": np.concatenate([normal, abnormal]),
           "premature": np.zeros(2000), "pause": np.zeros(2000)}
    record = np.full(2000, "r")
    lower, every = (zscores(raw, record, CALIBRATION, record_scale=s)["recon"] for s in ("lower_half", "all_beats"))
    normal_sd = np.std(lower[:1400])  # 0.71: the median itself moves up with the abnormal share
    assert 0.65 < normal_sd < 1.1
    assert np.std(every[:1400]) < 0.85 * normal_sd  # the abnormal beats widened the full-MAD scale
    assert np.median(lower[1400:]) > 1.2 * np.median(every[1400:])
    with pytest.raises(ValueError, match="record_scale"):
        zscores(raw, record, CALIBRATION, record_scale="upper_half")


def test_rhythm_adds_only_evidence_and_nothing_in_af():
    z = {"recon": np.array([0.0, 0.0, 0.0]), "distance": np.array([1.0, 1.0, 1.0]),
         "premature": np.array([4.0, -4.0, 4.0]), "pause": np.array([2.0, 2.0, -2.0])}
    w = ScoreWeights(recon=1.0, distance=0.5, premature=1.0, pause=0.5)
    np.testing.assert_allclose(combine(z, w), [0.5 + 4 + 1, 0.5 + 1, 0.5 + 4])
    np.testing.assert_allclose(combine(z, w, np.array([True, False, True])), [0.5, 0.5 + 1, 0.5])


def test_population_finds_every_beat_and_adds_the_missing():
    def beats(record, sample):
        n = len(sample)
        return Beats(record=np.array(record), sample=np.array(sample), time_s=np.array(sample, float),
                     waves=np.zeros((n, 4), np.float32), rr=np.ones((n, 5), np.float32),
                     symbol=np.full(n, "N"), aami=np.full(n, "N"))

    context = beats(["a", "a", "a", "b", "b"], [10, 20, 30, 10, 20])
    scored = beats(["a", "b", "a", "c"], [30, 10, 40, 5])
    population, rows = record_population(scored, context)
    assert set(population.record) == {"a", "b", "c"}  # record c comes from the scored beats alone
    np.testing.assert_array_equal(population.record[rows], scored.record)
    np.testing.assert_array_equal(population.sample[rows], scored.sample)
    assert len(population) == 5 + 2  # a#40 and c#5 were missing from the context


def _rhythm_beats(record, rr_prev):
    n = len(rr_prev)
    rr = np.ones((n, 5), np.float32)
    rr[:, 0] = rr_prev
    time_s = np.cumsum(rr_prev)
    return Beats(record=np.array(record), sample=(time_s * 100).astype(np.int64), time_s=time_s,
                 waves=np.zeros((n, 4), np.float32), rr=rr, symbol=np.full(n, "N"), aami=np.full(n, "N"))


def test_local_rr90_follows_a_change_of_heart_rate():
    """Half an hour at 60 bpm then at 100 bpm: against the whole record's RR90 every beat of the faster
    half looks premature; against the RR90 of the 256 beats around it, only beats near the change do."""
    rr = np.r_[np.full(900, 1.0), np.full(1500, 0.6)]
    beats = _rhythm_beats(["r"] * len(rr), rr)
    whole = rhythm_terms(beats.rr, rr_reference(beats, window_beats=0))[0]
    local = rhythm_terms(beats.rr, rr_reference(beats, window_beats=256))[0]
    fast = np.arange(len(rr)) >= 900
    assert np.all(whole[fast] > 0.5)  # -log(0.6 / 1.0)
    assert np.mean(local[fast] > 0.05) < 0.1 and np.all(local[~fast] == 0.0)


def test_leaning_to_the_cycle_before_spares_a_rate_change_but_not_an_ectopic_beat():
    """A jump from 60 to 120 bpm (1:1 conduction after 2:1 block) and, later, one beat 40 % early with its
    compensatory pause: against RR90 alone every fast beat near the jump is more premature than the ectopic
    one; with the reference leaning half-way to the cycle before, their prematurity halves and ranks below
    the ectopic beat's, which keeps all of its own."""
    rr = np.r_[np.full(60, 1.0), np.full(60, 0.5), np.full(60, 1.0), [0.6, 1.4], np.full(60, 1.0)]
    beats = _rhythm_beats(["r"] * len(rr), rr)
    ectopic = 180
    rr90 = rr_reference(beats, window_beats=128)
    leaning = rr_reference(beats, window_beats=128, previous_share=0.5)
    np.testing.assert_allclose(leaning, np.sqrt(rr90 * np.r_[rr[0], rr[:-1]]))
    np.testing.assert_allclose(rr_reference(beats, window_beats=128, previous_share=1.0), np.r_[rr[0], rr[:-1]])
    alone, leant = (rhythm_terms(beats.rr, ref)[0] for ref in (rr90, leaning))
    fast = np.arange(61, 120)  # after the jump's first beat
    assert np.all(alone[fast] > 0.6) and alone[ectopic] == pytest.approx(-np.log(0.6), abs=1e-6)
    assert np.all(alone[fast] > alone[ectopic])
    np.testing.assert_allclose(leant[fast], alone[fast] / 2)
    assert leant[ectopic] == alone[ectopic] and np.all(leant[fast] < leant[ectopic])
    part = beats.subset(np.arange(100, 200))  # scored alone, with the record as context: the same
    np.testing.assert_allclose(rr_reference(part, beats, window_beats=128, previous_share=0.5), leaning[100:200])


def test_only_steady_slow_cycles_lean_so_sinus_arrhythmia_is_spared_and_atrial_runs_are_not():
    """Respiratory sinus arrhythmia (cycles swinging 0.85-1.15 s, under 12 % from one to the next), a jump
    from 2:1 block (1.6 s) to 1:1 conduction (0.8 s), a run of five atrial beats at 0.45 s and one beat
    40 % early. With the lean limited to steady cycles of at least 0.67 s, the arrhythmia's short cycles
    and the 1:1 beats after the first lose their prematurity; the jump's first beat, the atrial run (fast)
    and the early beat (unsteady) keep all of theirs."""
    swing = 1.0 + 0.15 * np.sin(2 * np.pi * np.arange(160) / 8)
    rr = np.r_[swing, np.full(40, 1.6), np.full(40, 0.8), np.full(40, 1.0), np.full(5, 0.45), np.full(40, 1.0),
               [0.6, 1.4], np.full(40, 1.0)]
    beats = _rhythm_beats(["r"] * len(rr), rr)
    alone = rhythm_terms(beats.rr, rr_reference(beats, window_beats=128))[0]
    gated = rhythm_terms(beats.rr, rr_reference(beats, window_beats=128, previous_share=1.0, lean_min_rr_s=0.67))[0]
    arrhythmia, first_1to1, later_1to1 = np.arange(1, 160), 200, np.arange(201, 240)
    atrial, early = np.arange(280, 285), 325
    assert np.max(alone[arrhythmia]) > 0.25 and np.all(np.abs(gated[arrhythmia]) < np.log1p(RR_LEAN_TOLERANCE))
    assert np.all(alone[later_1to1] > 0.5) and np.all(gated[later_1to1] == 0.0)
    kept = np.r_[first_1to1, atrial, early]
    assert np.all(alone[kept] > 0.4)
    np.testing.assert_array_equal(gated[kept], alone[kept])
    everywhere = rhythm_terms(beats.rr, rr_reference(beats, window_beats=128, previous_share=1.0))[0]
    assert np.all(everywhere[atrial[1:]] == 0.0)  # leaning in every beat would spare the run


def test_the_p_wave_gate_keeps_a_slow_atrial_run_premature_and_still_spares_sinus_arrhythmia():
    """A slow run of atrial ectopy (0.8 s cycles, steady, after sinus rhythm at 1.0 s) whose P wave is
    inverted, and later respiratory sinus arrhythmia with the sinus P wave. Leaning in steady slow
    cycles alone spares the run as a rate change; with the P-wave gate its beats keep their prematurity,
    while the arrhythmia's short cycles are still spared."""
    swing = 1.0 + 0.15 * np.sin(2 * np.pi * np.arange(160) / 8)
    rr = np.r_[np.full(80, 1.0), np.full(20, 0.8), np.full(60, 1.0), swing]
    atrial = np.zeros(len(rr), dtype=bool)
    atrial[80:100] = True
    p_wave = np.sin(np.linspace(0.0, np.pi, 6))  # a positive bump before the QRS
    noise = np.random.default_rng(0).normal(0.0, 0.05, (len(rr), 6))
    beats = _rhythm_beats(["r"] * len(rr), rr)
    beats = dataclasses.replace(beats, waves=np.hstack([np.where(atrial[:, None], -p_wave, p_wave) + noise,
                                                        np.zeros((len(rr), 4))]).astype(np.float32))
    columns, sinus_arrhythmia, run = slice(0, 6), np.arange(161, 320), np.arange(81, 100)
    similarity = p_wave_similarity(beats.waves, ~atrial, columns)
    assert np.all(similarity[~atrial] > 0.8) and np.all(similarity[atrial] < -0.8)

    def prematurity(**lean):
        return rhythm_terms(beats.rr, rr_reference(beats, window_beats=128, p_columns=columns, **lean))[0]

    alone = prematurity()
    ungated = prematurity(previous_share=1.0, lean_min_rr_s=0.67)
    gated = prematurity(previous_share=1.0, lean_min_rr_s=0.67, lean_min_p_similarity=0.5)
    assert np.all(alone[run] > 0.2) and np.all(ungated[run] == 0.0)
    np.testing.assert_array_equal(gated[run], alone[run])
    assert np.max(alone[sinus_arrhythmia]) > 0.25
    assert np.all(np.abs(gated[sinus_arrhythmia]) < np.log1p(RR_LEAN_TOLERANCE))


def test_rr90_over_normal_to_normal_intervals_ignores_compensatory_pauses():
    """Trigeminy (N N V: V 0.5 s early, then a 1.3-s compensatory pause) and then sinus rhythm at 0.9 s:
    against the RR90 of every interval the sinus beats near the trigeminy look premature (the pauses set
    RR90); over normal-to-normal intervals only (between two beats of the usual shape) they do not, and
    the V beats keep their prematurity."""
    pattern = [0.9, 0.5, 1.3]  # the RR before N, before V, before the N after V
    rr = np.r_[np.tile(pattern, 40), np.full(120, 0.9)]
    beats = _rhythm_beats(["r"] * len(rr), rr)
    ventricular = np.r_[np.tile([False, True, False], 40), np.zeros(120, bool)]
    waves = np.zeros((len(rr), 4), np.float32) + np.random.default_rng(0).normal(0, 0.01, (len(rr), 4))
    waves[ventricular] += np.array([2.0, -2.0, 2.0, -2.0], np.float32)
    beats = Beats(**{**beats.__dict__, "waves": waves.astype(np.float32)})
    nn = normal_to_normal(template_distances(beats), 3.0)
    assert not nn[ventricular].any() and not nn[np.flatnonzero(ventricular) + 1].any()  # coupling and pause out
    assert nn[120:].all()
    every = rhythm_terms(beats.rr, rr_reference(beats, window_beats=128))[0]
    normal = rhythm_terms(beats.rr, rr_reference(beats, window_beats=128, typical_mads=3.0))[0]
    given = rr_reference(beats, window_beats=128, typical_mads=3.0, distance=template_distances(beats))
    np.testing.assert_allclose(rhythm_terms(beats.rr, given)[0], normal)  # the caller's distances: the same
    sinus = np.arange(120, 135)  # their windows of 128 beats hold over 10 % pauses
    assert np.all(every[sinus] > 0.3)  # -log(0.9 / 1.3)
    np.testing.assert_allclose(normal[sinus], 0.0, atol=1e-9)
    np.testing.assert_allclose(normal[ventricular], -np.log(0.5 / 0.9), atol=1e-9)


def test_local_rr90_per_record_in_time_order_and_whole_for_short_records():
    rng = np.random.default_rng(0)
    long_rr, short_rr = rng.uniform(0.5, 1.0, 600), rng.uniform(0.5, 1.0, 40)
    beats = Beats.concat([_rhythm_beats(["a"] * 600, long_rr), _rhythm_beats(["b"] * 40, short_rr)])
    reference = rr_reference(beats, window_beats=100)
    assert np.allclose(reference[600:], np.percentile(short_rr, 90))  # fewer beats than the window: all of them
    order = rng.permutation(len(beats))  # the same beats in another order: the same reference per beat
    np.testing.assert_allclose(rr_reference(beats.subset(order), window_beats=100), reference[order])
    assert np.isclose(reference[300], np.percentile(long_rr[250:350], 90))
    assert np.isclose(reference[0], np.percentile(long_rr[:100], 90))  # windows shift inward at the ends
    part = beats.subset(np.arange(280, 320))  # scored alone, with the record as context: the same
    np.testing.assert_allclose(rr_reference(part, beats, window_beats=100), reference[280:320])


def test_nearby_maximum_is_the_largest_value_within_the_span_of_each_beat_in_its_record():
    rng = np.random.default_rng(3)
    for n in (1, 2, 9, 700):
        time_s = np.sort(rng.uniform(0.0, 300.0, n))
        values, record = rng.random(n), np.where(rng.random(n) < 0.5, "a", "b")
        for within_s in (0.0, 0.7, 4.0, 50.0):
            brute = [values[(record == record[i]) & (np.abs(time_s - time_s[i]) <= within_s)].max() for i in range(n)]
            np.testing.assert_allclose(nearby_maximum(values, time_s, record, within_s), brute)
    shuffled = rng.permutation(n)  # beats in any order: each takes its neighbours in time
    np.testing.assert_allclose(nearby_maximum(values[shuffled], time_s[shuffled], record[shuffled], 4.0),
                               nearby_maximum(values, time_s, record, 4.0)[shuffled])
