"""Beats: windows, RR context and AAMI labels on real records, plus properties of the pieces."""

from __future__ import annotations

import collections

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ecg_rnn.beats import (AAMI_OF_SYMBOL, RR_FEATURES, TAIL_SHARE, BeatConfig, aami_class, beats_from_record,
                           chunk_bounds, cut_source, cut_windows, match_reference, normalise, rr_context)
from ecg_rnn import quality
from ecg_rnn.errors import SignalError
from ecg_rnn.quality import QualityConfig
from ecg_rnn.records import open_record, read_record
from ecg_rnn.signal import SignalConfig


def test_aami_mapping_follows_the_standard():
    expected = {"N": "NLRej", "S": "AaJS", "V": "VE", "F": "F", "Q": "/fQ"}
    for cls, symbols in expected.items():
        assert all(AAMI_OF_SYMBOL[s] == cls for s in symbols)
    assert list(aami_class(np.array(["N", "+", "~", "V", "|", "A"]))) == ["N", "", "", "V", "", "S"]


def test_record_208_beats_match_reference_counts(sample_dir):
    record = read_record(sample_dir / "208")
    beats = beats_from_record(record)
    counts = collections.Counter(beats.aami)
    # MIT-BIH 208 reference: 1586 N, 992 V, 373 F
    assert counts["N"] == 1586 and counts["V"] == 992 and counts["F"] == 373
    assert beats.waves.shape == (len(beats), 36 + 54)
    assert beats.waves.dtype == np.float32 and np.isfinite(beats.waves).all()
    assert np.all(np.diff(beats.sample) > 0)
    assert np.allclose(beats.time_s, beats.sample / 360.0)


def test_each_beat_carries_its_windows_noise_probability(sample_dir):
    """Detected beats carry the quality model's noise probability of their window in the chosen lead
    (208 holds noisy stretches); beats at annotated R-peaks were not judged (0)."""
    source = open_record(sample_dir / "208")
    detected = cut_source(source, peaks="detect", chunk_s=1e12)  # one chunk: the quality stage sees it all
    assert detected.noise_probability.shape == (len(detected.beats),)
    config = QualityConfig()
    chosen_lead = source.read_leads()[:, 0].astype(np.float64)
    per_window = quality._quality(chosen_lead, source.fs, config, None)[1]  # the chosen lead's windows
    window = int(round(config.window_s * source.fs))
    np.testing.assert_allclose(detected.noise_probability, per_window[detected.beats.sample // window])
    assert np.median(detected.noise_probability) < 0.3 < 0.9 < detected.noise_probability.max()
    reference = cut_source(open_record(sample_dir / "208"), peaks="reference")
    np.testing.assert_array_equal(reference.noise_probability, np.zeros(len(reference.beats)))


def test_window_is_configurable(sample_dir):
    record = read_record(sample_dir / "100")
    beats = beats_from_record(record, SignalConfig(fs=250.0), BeatConfig(pre_s=0.2, post_s=0.4))
    assert beats.waves.shape[1] == 50 + 100


def test_record_normalisation_keeps_relative_amplitude(sample_dir):
    beats = beats_from_record(read_record(sample_dir / "208"))
    n_amp = np.ptp(beats.waves[beats.aami == "N"], axis=1)
    v_amp = np.ptp(beats.waves[beats.aami == "V"], axis=1)
    assert 0.7 < np.median(n_amp) < 1.3  # scaled by the record's median beat
    assert np.median(v_amp) > 1.2 * np.median(n_amp)  # PVCs stay larger than the patient's norm


def test_premature_s_beats_have_short_previous_rr(sample_dir):
    beats = beats_from_record(read_record(sample_dir / "232"))
    ratio = beats.rr[:, RR_FEATURES.index("rr_prev_ratio")]
    assert np.median(ratio[beats.aami == "S"]) < np.median(ratio[beats.aami == "N"])


def test_detected_peaks_get_reference_labels(sample_dir):
    record = read_record(sample_dir / "100")
    beats = beats_from_record(record, peaks="detect")
    assert abs(len(beats) - 2273) <= 5
    assert (beats.symbol != "").mean() > 0.99
    assert (beats.aami == "N").sum() > 2200


def test_reference_peaks_required_but_missing(tmp_path, sample_dir):
    record = read_record(sample_dir / "100")
    unlabelled = type(record)(**{**record.__dict__, "annotations": None})
    with pytest.raises(SignalError, match="no reference beat annotations"):
        beats_from_record(unlabelled, peaks="reference")


def test_rr_context_regular_rhythm():
    times = np.arange(20) * 0.8
    rr = rr_context(times, 21)
    assert np.allclose(rr[:, :3], 0.8) and np.allclose(rr[:, 3:], 1.0)


def test_rr_context_premature_beat():
    times = np.cumsum([0.8] * 10 + [0.5, 1.1] + [0.8] * 10)
    rr = rr_context(times, 21)
    i = 10
    assert rr[i, 0] == pytest.approx(0.5) and rr[i, 3] == pytest.approx(0.5 / 0.8)
    assert rr[i - 1, 1] == pytest.approx(0.5)


@settings(max_examples=50, deadline=None)
@given(st.lists(st.floats(0.25, 2.5), min_size=2, max_size=60), st.sampled_from([5, 11, 21]))
def test_rr_context_properties(intervals, local):
    times = np.concatenate([[0.0], np.cumsum(intervals)])
    rr = rr_context(times, local)
    assert rr.shape == (len(times), len(RR_FEATURES))
    assert np.all(rr[:, :3] > 0) and np.isfinite(rr).all()
    assert np.allclose(rr[1:, 0], intervals, rtol=1e-5)
    assert np.allclose(rr[:-1, 1], intervals, rtol=1e-5)
    assert np.allclose(rr[:, 3], rr[:, 0] / rr[:, 2], rtol=1e-4)


@settings(max_examples=50, deadline=None)
@given(st.integers(50, 400), st.lists(st.integers(0, 399), min_size=1, max_size=30),
       st.integers(0, 40), st.integers(1, 40))
def test_windows_have_fixed_length_and_centre(n, centres, pre, post):
    x = np.arange(1, n + 1, dtype=np.float32)
    c = np.clip(np.array(centres), 0, n - 1)
    w = cut_windows(x, c, pre, post)
    assert w.shape == (len(c), pre + post)
    assert np.array_equal(w[:, pre], x[c])  # the R-peak sits at index `pre`


@settings(max_examples=50, deadline=None)
@given(st.lists(st.integers(0, 10_000), min_size=1, max_size=50, unique=True),
       st.lists(st.integers(-30, 30), min_size=1, max_size=50))
def test_match_reference_finds_nearby_beats(ref, jitter):
    ref = np.sort(np.array(ref))
    symbols = np.array(["N", "V", "A"])[np.arange(len(ref)) % 3]
    k = min(len(ref), len(jitter))
    peaks = ref[:k] + np.array(jitter[:k])
    got = match_reference(peaks, ref, symbols, tolerance=54)
    nearest = np.abs(ref[None, :] - peaks[:, None]).min(axis=1)
    assert np.all((got != "") == (nearest <= 54))


def test_normalise_beat_zscores():
    waves = np.random.default_rng(0).normal(3, 5, size=(10, 90)).astype(np.float32)
    z = normalise(waves, "beat")
    assert np.allclose(z.std(axis=1), 1, atol=1e-5)
    with pytest.raises(ValueError, match="normalisation"):
        BeatConfig(normalisation="global")


@given(n=st.integers(1, 20_000), size=st.integers(1, 3_000), align=st.integers(1, 7))
@settings(max_examples=200, deadline=None)
def test_chunks_cover_the_signal_once_and_a_short_tail_joins_the_last(n, size, align):
    bounds = list(chunk_bounds(n, 1.0, align, chunk_s=size, margin_s=3))
    cores = [(start, stop) for start, stop, _, _ in bounds]
    assert cores[0][0] == 0 and cores[-1][1] == n
    assert all(a[1] == b[0] for a, b in zip(cores, cores[1:]))  # contiguous, no overlap
    assert all(start % align == 0 for start, _ in cores)
    assert all(lo <= start < stop <= hi <= n for start, stop, lo, hi in bounds)
    full = max(align, size // align * align)
    assert all(stop - start == full for start, stop in cores[:-1])
    last = cores[-1][1] - cores[-1][0]
    assert last < full + TAIL_SHARE * full  # a tail only joins when short
    assert len(cores) == 1 or last >= TAIL_SHARE * full


@pytest.mark.parametrize("peaks", ["detect", "reference"])
def test_chunked_reading_equals_the_whole_record(tmp_path, sample_dir, peaks):
    from benchmarks.holter import build_holter
    from ecg_rnn.beats import beats_from_source
    from ecg_rnn.records import open_record

    path = build_holter(tmp_path / "long", sample_dir, ("100", "208", "232"))  # 1.5 h, one lead
    source = open_record(path)
    chunked = beats_from_source(source, peaks=peaks, chunk_s=300)  # 17 chunks, the last 317 s long
    whole = beats_from_record(read_record(path), peaks=peaks, chunk_s=1e9)
    assert source.sig_len == 3 * 650000
    assert np.array_equal(chunked.sample, whole.sample)
    assert np.array_equal(chunked.symbol, whole.symbol)
    assert np.allclose(chunked.waves, whole.waves, atol=1e-5)
    assert np.allclose(chunked.rr, whole.rr)


@pytest.mark.parametrize("noise", ["normal", "uniform"])
def test_pure_noise_is_refused(noise):
    from ecg_rnn.records import Record

    rng = np.random.default_rng(3)
    x = (rng.normal(0, 0.5, 60 * 360) if noise == "normal" else rng.uniform(-1, 1, 60 * 360)).astype(np.float32)
    record = Record(name="noise", signal=x, fs=360.0, lead="II", sig_name=("II",), units="mV")
    with pytest.raises(SignalError, match="looks like noise, not an ECG lead"):
        beats_from_record(record, peaks="detect")


def test_real_records_resemble_their_median_beat(sample_dir):
    from ecg_rnn.beats import template_similarity

    for name in ("100", "208", "232"):
        beats = beats_from_record(read_record(sample_dir / name), peaks="detect")
        assert template_similarity(beats.waves) > 0.8
