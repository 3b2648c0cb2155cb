"""Quality stage: noisy windows, noise segments and R-peaks fused across leads, on the shipped records."""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import pytest

from ecg_rnn import quality, stress
from ecg_rnn.errors import SignalError
from ecg_rnn.signal import detect_r_peaks, resample

SAMPLE = Path(__file__).resolve().parents[1] / "ecg_rnn" / "samples" / "mitdb"
BEAT_SYMBOLS = frozenset("NLRBAaJSVrFejnE/fQ?")
EXCERPT_S = 600.0
CLEAN_START_S, STRETCH_S = 60.0, 60.0  # the NSTDB schedule shrunk to fit a 10-minute excerpt
TOLERANCE_S = 0.15


@functools.lru_cache(maxsize=None)
def _sample(name: str) -> tuple[np.ndarray, float, np.ndarray, np.ndarray]:
    """Both leads of a shipped sample record, its rate, its reference beats and its normal beats
    (fails, not skips, when the shipped data is missing)."""
    assert (SAMPLE / f"{name}.hea").exists(), f"shipped sample record {name} is missing from {SAMPLE}"
    import wfdb

    record = wfdb.rdrecord(str(SAMPLE / name))
    annotation = wfdb.rdann(str(SAMPLE / name), "atr")
    symbols = np.array(annotation.symbol)
    beats = annotation.sample[np.isin(symbols, list(BEAT_SYMBOLS))]
    normal = annotation.sample[np.isin(symbols, ["N", "L", "R"])]
    return record.p_signal.copy(), float(record.fs), beats, normal


def _excerpt_with_noise(name: str, kind: str, snr_db: float, leads: tuple[int, ...], seed: int = 1):
    """The first EXCERPT_S of a sample record with noise on `leads` in the (shrunk) noisy stretches."""
    x, fs, beats, normal = _sample(name)
    n = int(EXCERPT_S * fs)
    x = x[:n].copy()
    mask = stress.noisy_mask(n, fs, CLEAN_START_S, STRETCH_S)
    rng = np.random.default_rng(seed)
    for lead in leads:
        noise = stress.make_noise(kind, n, fs, rng)
        x[:, lead] = stress.add_noise(x[:, lead], noise, fs, snr_db, normal[normal < n], mask)
    return x, fs, beats[beats < n], mask


def _windows_inside(mask: np.ndarray, fs: float, count: int) -> tuple[np.ndarray, np.ndarray]:
    """Windows wholly inside the noisy stretches, and windows wholly outside them."""
    window = int(quality.QualityConfig().window_s * fs)
    share = np.array([mask[k * window:(k + 1) * window].mean() for k in range(count)])
    return share == 1.0, share == 0.0


def _se_ppv(reference: np.ndarray, found: np.ndarray, fs: float) -> tuple[float, float]:
    tolerance = TOLERANCE_S * fs
    hit_reference = np.array([np.any(np.abs(found - r) <= tolerance) for r in reference])
    hit_found = np.array([np.any(np.abs(reference - f) <= tolerance) for f in found])
    return hit_reference.mean(), hit_found.mean()


@pytest.mark.parametrize("name", ["100", "208", "232"])
def test_clean_lead_0_is_not_flagged(name):
    x, fs, _, _ = _sample(name)
    assert quality.lead_quality(x[:, 0], fs).mean() <= 0.03


@pytest.mark.parametrize("kind", ["em", "ma"])
def test_stretches_with_0_db_noise_are_flagged_and_clean_stretches_are_not(kind):
    x, fs, _, mask = _excerpt_with_noise("208", kind, 0.0, leads=(0,))
    flags = quality.lead_quality(x[:, 0], fs)
    noisy, clean = _windows_inside(mask, fs, len(flags))
    assert flags[noisy].mean() >= 0.7
    assert flags[clean].mean() <= 0.05


def test_fusion_keeps_the_beats_when_one_lead_is_destroyed_and_adds_none():
    x, fs, reference, mask = _excerpt_with_noise("100", "em", -6.0, leads=(0,))
    fused = quality.fuse_leads(x, fs)
    in_noise = reference[mask[reference]]
    single = detect_r_peaks(x[:, 0], fs)
    se_single, ppv_single = _se_ppv(in_noise, single[mask[single]], fs)
    se, ppv = _se_ppv(in_noise, fused.samples[mask[fused.samples]], fs)
    assert min(se_single, ppv_single) < 0.95  # lead 0 alone is really spoilt...
    assert se >= 0.995 and ppv >= 0.995  # ...and fusion takes lead 1's beats instead
    assert (fused.lead[mask[fused.samples]] == 1).mean() >= 0.7
    assert fused.noise_segments == []  # lead 1 stayed clean: no stretch is lost


@pytest.mark.parametrize("shift", [7, -5])
def test_each_beat_is_placed_where_it_falls_in_each_lead(shift):
    """A second lead whose QRS peaks `shift` samples off the first's (lead 0 itself, moved), and lead 0
    destroyed in the noisy stretches, where lead 1 reports the beats: lead_offsets gives the shift back,
    and the beats stage places each beat at lead 0's own R-peak in lead 0 and at lead 1's in lead 1 (a
    window cut at the reported peak would be `shift` off in the lead it is not from)."""
    from ecg_rnn.beats import _detected

    x, fs, _, mask = _excerpt_with_noise("100", "em", -6.0, leads=(0,))
    clean_lead_0 = _sample("100")[0][:len(x), 0]
    x[:, 1] = np.roll(clean_lead_0, shift)
    fused = quality.fuse_leads(x, fs)
    assert len(fused.lead_offsets) == 2 and abs(fused.lead_offsets[1] - shift) <= 1
    assert (fused.lead[mask[fused.samples]] == 1).mean() > 0.7  # lead 1 reports the noisy stretches' beats
    found, _, _, in_lead = _detected(x, fs, 0, 0, len(x), quality.QualityConfig())
    in_noise = mask[found]
    lead_0_peaks = detect_r_peaks(clean_lead_0, fs)
    for column, peaks in ((0, lead_0_peaks), (1, lead_0_peaks + shift)):
        placed = in_lead[in_noise, column]
        at = np.clip(np.searchsorted(peaks, placed), 1, len(peaks) - 1)
        off = np.minimum(np.abs(peaks[at] - placed), np.abs(peaks[at - 1] - placed))
        assert np.median(off) <= 1, f"lead {column}: beats placed {np.median(off)} samples off its R-peaks"


def test_noise_on_lead_1_changes_nothing_on_a_clean_lead_0():
    x, fs, _, _ = _excerpt_with_noise("100", "ma", -6.0, leads=(1,))
    fused = quality.fuse_leads(x, fs)
    alone = detect_r_peaks(x[:, 0], fs)
    assert np.array_equal(fused.samples, alone)
    assert (fused.lead == 0).all()


def test_both_leads_noisy_become_noise_segments():
    x, fs, _, mask = _excerpt_with_noise("100", "em", -6.0, leads=(0, 1))
    fused = quality.fuse_leads(x, fs)
    t = np.arange(len(x)) / fs
    inside = np.zeros(len(x), bool)
    for start, end in fused.noise_segments:
        inside |= (t >= start) & (t < end)
    assert inside[mask].mean() >= 0.6
    assert inside[~mask].mean() <= 0.05
    assert all(0 <= a < b <= EXCERPT_S for a, b in fused.noise_segments)


def test_flat_and_clipped_stretches_are_noisy():
    x, fs, _, _ = _sample("100")
    lead = x[: int(EXCERPT_S * fs), 0].copy()
    lead[int(100 * fs):int(130 * fs)] = lead[int(100 * fs)]  # electrode off: a flat line
    clip = np.percentile(lead, [40, 60])
    lead[int(300 * fs):int(330 * fs)] = np.clip(lead[int(300 * fs):int(330 * fs)], *clip)  # saturated amplifier
    flags = quality.lead_quality(lead, fs)
    window_s = quality.QualityConfig().window_s
    assert flags[int(100 / window_s):int(130 / window_s)].all()
    assert flags[int(300 / window_s):int(330 / window_s)].all()
    assert flags.mean() <= 12 / len(flags) + 0.03


@pytest.mark.parametrize("fs_new", [128.0, 250.0])
def test_other_sampling_rates(fs_new):
    x, fs, _, mask = _excerpt_with_noise("232", "em", 0.0, leads=(0,))
    y = resample(x[:, 0], fs, fs_new)
    flags = quality.lead_quality(y, fs_new)
    noisy, clean = _windows_inside(mask, fs, len(flags))
    assert flags[noisy].mean() >= 0.7 and flags[clean].mean() <= 0.05


def test_chunks_overlapping_by_20_s_give_the_beats_of_the_whole_record():
    x, fs, _, _ = _sample("208")
    whole = quality.fuse_leads(x, fs).samples
    half, margin = len(x) // 2, int(20 * fs)
    first = quality.fuse_leads(x[:half + margin], fs).samples
    second = quality.fuse_leads(x[half - margin:], fs).samples + half - margin
    stitched = np.r_[first[first < half], second[second >= half]]
    assert len(np.setxor1d(stitched, whole)) <= 0.005 * len(whole)


def test_noise_segments_merge_adjacent_noisy_windows():
    mask = np.array([False, True, True, False, True])
    assert quality.noise_segments(mask, 5.0) == [(5.0, 15.0), (20.0, 25.0)]
    assert quality.noise_segments(mask, 5.0, duration_s=23.5) == [(5.0, 15.0), (20.0, 23.5)]
    assert quality.noise_segments(np.zeros(4, bool), 5.0) == []


def test_bad_input_raises_signal_errors():
    x, fs, _, _ = _sample("100")
    with pytest.raises(SignalError, match="long"):
        quality.lead_quality(x[: int(2 * fs), 0], fs)
    broken = x[: int(60 * fs), 0].copy()
    broken[100] = np.nan
    with pytest.raises(SignalError, match="NaN"):
        quality.lead_quality(broken, fs)
    with pytest.raises(SignalError, match="R-peaks for 1 leads"):
        quality.fuse_leads(x[: int(60 * fs)], fs, peaks=[np.array([10, 400])])


def _with_extra_peak(peaks: np.ndarray, at: int) -> np.ndarray:
    return np.sort(np.r_[peaks, at])


SPLIT_ONLY = quality.QualityConfig(template_cycle_share=0.0)
TEMPLATE_ONLY = quality.QualityConfig(max_split_share=0.0)
NO_PHANTOM_TEST = quality.QualityConfig(max_split_share=0.0, template_cycle_share=0.0)


def test_a_beat_one_lead_alone_finds_mid_cycle_is_dropped_only_when_another_lead_saw_the_cycle_whole():
    x, fs, _, _ = _sample("100")
    x = x[: int(60 * fs)]
    peaks = [detect_r_peaks(x[:, lead], fs) for lead in range(2)]
    assert quality.fuse_leads(x, fs, peaks=peaks).samples.size == peaks[0].size
    middle = int((peaks[0][30] + peaks[0][31]) // 2)  # splits a sinus cycle in two halves
    phantom = [_with_extra_peak(peaks[0], middle), peaks[1]]
    assert middle not in quality.fuse_leads(x, fs, SPLIT_ONLY, peaks=phantom).samples  # lead 1 saw the cycle whole
    assert middle in quality.fuse_leads(x, fs, NO_PHANTOM_TEST, peaks=phantom).samples  # tests off: kept
    both = [_with_extra_peak(peaks[0], middle), _with_extra_peak(peaks[1], middle)]
    assert middle in quality.fuse_leads(x, fs, peaks=both).samples  # both leads agree: a real early beat
    dead = [_with_extra_peak(peaks[0], middle), np.zeros(0, np.int64)]
    assert middle in quality.fuse_leads(x, fs, peaks=dead).samples  # a dead lead is no witness
    late = int(peaks[0][30] + 0.8 * (peaks[0][31] - peaks[0][30]))  # a long cycle before it: not a split
    assert late in quality.fuse_leads(x, fs, SPLIT_ONLY, peaks=[_with_extra_peak(peaks[0], late), peaks[1]]).samples


def test_a_beat_one_lead_alone_finds_close_to_a_neighbour_is_dropped_when_its_shape_matches_no_template():
    x, fs, _, _ = _sample("100")
    x = x[: int(60 * fs)]
    peaks = [detect_r_peaks(x[:, lead], fs) for lead in range(2)]
    # 0.2 of a cycle after a beat: its cycle before is short, but the one after is not (the split test keeps it)
    early = int(peaks[0][30] + 0.2 * (peaks[0][31] - peaks[0][30]))
    lone = [_with_extra_peak(peaks[0], early), peaks[1]]
    assert early in quality.fuse_leads(x, fs, SPLIT_ONLY, peaks=lone).samples
    assert early not in quality.fuse_leads(x, fs, TEMPLATE_ONLY, peaks=lone).samples  # the ST segment is no QRS
    # the same beat where a lead shows a QRS: a copy of the next beat moved there matches the template
    shifted = x.copy()
    width = int(0.15 * fs)
    shifted[early - width:early + width, 0] = x[peaks[0][31] - width:peaks[0][31] + width, 0]
    assert early in quality.fuse_leads(shifted, fs, TEMPLATE_ONLY, peaks=lone).samples
    # a beat both leads found, or one farther from its neighbours, is never tested
    both = [_with_extra_peak(peaks[0], early), _with_extra_peak(peaks[1], early)]
    assert early in quality.fuse_leads(x, fs, TEMPLATE_ONLY, peaks=both).samples
    strict = quality.QualityConfig(max_split_share=0.0, template_cycle_share=0.15)
    assert early in quality.fuse_leads(x, fs, strict, peaks=lone).samples


@pytest.mark.parametrize("test", [SPLIT_ONLY, TEMPLATE_ONLY], ids=["split", "template"])
def test_electrode_motion_on_both_leads_fakes_fewer_beats_and_the_test_drops_no_true_one(test):
    x, fs, reference, mask = _excerpt_with_noise("100", "em", 12.0, leads=(0, 1))
    peaks = [detect_r_peaks(x[:, lead], fs) for lead in range(2)]
    with_test = quality.fuse_leads(x, fs, test, peaks=peaks).samples
    without = quality.fuse_leads(x, fs, NO_PHANTOM_TEST, peaks=peaks).samples
    assert len(np.setdiff1d(without, with_test)) >= 5
    assert np.isin(with_test, without).all()

    def matched(found: np.ndarray) -> np.ndarray:
        return np.min(np.abs(reference[:, None] - found[None, :]), axis=1) <= TOLERANCE_S * fs

    assert (matched(with_test) == matched(without)).all()  # every reference beat found before still is
    in_noise = reference[mask[reference]]
    assert _se_ppv(in_noise, with_test[mask[with_test]], fs)[1] > _se_ppv(in_noise, without[mask[without]], fs)[1]


def test_the_phantom_tests_keep_every_annotated_beat_of_a_record_with_frequent_ventricular_ectopy():
    x, fs, reference, _ = _sample("208")
    peaks = [detect_r_peaks(x[:, lead], fs) for lead in range(2)]
    with_test = quality.fuse_leads(x, fs, peaks=peaks).samples
    without = quality.fuse_leads(x, fs, NO_PHANTOM_TEST, peaks=peaks).samples
    dropped = np.setdiff1d(without, with_test)
    assert np.isin(with_test, without).all()
    true_dropped = [d for d in dropped if np.min(np.abs(reference - d)) <= TOLERANCE_S * fs]
    assert true_dropped == []


def test_lead_agreement_is_the_share_of_beats_a_majority_of_leads_found():
    window, tolerance = 1000, 10
    same = np.array([100, 400, 700, 1300])
    assert np.allclose(quality.lead_agreement([same, same + 5], 2, window, tolerance), [1.0, 1.0])
    half = quality.lead_agreement([np.array([100, 400]), np.array([100, 700])], 2, window, tolerance)
    assert np.allclose(half, [1 / 3, 1.0])  # beats 100 (both), 400 and 700 (one lead each); no beat in window 2
    assert np.allclose(quality.lead_agreement([same], 2, window, tolerance), [0.0, 0.0])  # one lead: no witness
    four = [same, same, np.array([400]), np.array([100])]  # 100: 3 of 4 leads; 400: 3 of 4; 700, 1300: 2 of 4
    assert np.allclose(quality.lead_agreement(four, 2, window, tolerance), [2 / 3, 0.0])  # a majority, not two


def test_muscle_noise_on_both_leads_stays_readable_where_the_leads_agree_on_the_beats():
    x, fs, reference, mask = _excerpt_with_noise("100", "ma", 0.0, leads=(0, 1))
    peaks = [detect_r_peaks(x[:, lead], fs) for lead in range(2)]
    t = np.arange(len(x)) / fs

    def readable_and_beats(min_lead_agreement: float) -> tuple[float, float, float]:
        """Share of the noisy stretches left readable, and Se / +P of the beats there."""
        # the template test off: this test judges the agreement alone (with it, fewer phantoms are left to show)
        config = quality.QualityConfig(min_lead_agreement=min_lead_agreement, template_cycle_share=0.0)
        fused = quality.fuse_leads(x, fs, config, peaks=peaks)
        ok = np.ones(len(x), bool)
        for start, end in fused.noise_segments:
            ok &= ~((t >= start) & (t < end))
        kept = fused.samples[ok[fused.samples] & mask[fused.samples]]
        return (ok[mask].mean(), *_se_ppv(reference[mask[reference] & ok[reference]], kept, fs))

    never, _, _ = readable_and_beats(1.01)
    readable, se, ppv = readable_and_beats(quality.QualityConfig().min_lead_agreement)
    everything, _, ppv_everything = readable_and_beats(0.0)
    assert never <= 0.6  # both leads judged noisy in most of it...
    assert readable >= never + 0.2  # ...yet where the leads agree, the beats stay readable...
    assert se >= 0.99 and ppv >= 0.99  # ...and right (at a laxer level, 0.7 or below, +P falls under 0.99)
    assert everything == 1.0 and ppv_everything < 0.99  # where they disagree, the beats would not be
