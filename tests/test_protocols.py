"""Protocol splits and the beat-set cache, on the sample records and (slow) the whole database."""

from __future__ import annotations

import collections
import dataclasses

import numpy as np
import pytest

from ecg_rnn.beats import BeatConfig
from ecg_rnn import protocols
from ecg_rnn.errors import DataNotFoundError
from ecg_rnn.protocols import (ALL_RECORDS, DS1, DS2, NON_PACED, PACED, build_beat_set, inter_patient,
                               intra_patient, locate_mitdb)


def test_split_lists_are_the_published_ones():
    assert len(DS1) == len(DS2) == 22 and not set(DS1) & set(DS2)
    assert set(PACED) == {"102", "104", "107", "217"}
    assert len(NON_PACED) == 44 and len(ALL_RECORDS) == 48


def test_locate_prefers_mitdb_dir(monkeypatch, sample_dir, capsys):
    monkeypatch.setenv("MITDB_DIR", str(sample_dir))
    assert locate_mitdb() == sample_dir
    assert "from MITDB_DIR" in capsys.readouterr().err


def test_locate_refuses_empty_mitdb_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("MITDB_DIR", str(tmp_path))
    with pytest.raises(DataNotFoundError, match="holds no WFDB records"):
        locate_mitdb()


def test_cache_is_reused_and_keyed_by_config(tmp_path, sample_dir, monkeypatch):
    records = ("100", "232")
    first = build_beat_set(records, sample_dir, cache_dir=tmp_path, progress=False)
    assert len(list(tmp_path.glob("beats-*.npz"))) == 1

    def no_reading(*args, **kwargs):
        raise AssertionError("a cached beat set was built again from the records")

    with monkeypatch.context() as patch:  # the second build must come from the cache alone
        patch.setattr(protocols, "read_record", no_reading)
        again = build_beat_set(records, sample_dir, cache_dir=tmp_path, progress=False)
    for field in dataclasses.fields(first):
        assert np.array_equal(getattr(first, field.name), getattr(again, field.name)), field.name
    build_beat_set(records, sample_dir, beat_config=BeatConfig(pre_s=0.3), cache_dir=tmp_path, progress=False)
    assert len(list(tmp_path.glob("beats-*.npz"))) == 2


def test_intra_patient_folds_partition_the_normals(sample_dir, tmp_path):
    beats = build_beat_set(("100", "208", "232"), sample_dir, cache_dir=tmp_path, progress=False)
    folds = intra_patient(beats, n_folds=5, seed=1)
    n_normal = int(((beats.aami == "N")).sum())
    held_out = []
    for fold in folds:
        assert set(fold.train.aami) == {"N"}
        test_normals = fold.test.subset(fold.test.aami == "N")
        held_out.append(set(zip(test_normals.record, test_normals.sample)))
        assert int(fold.test.is_abnormal.sum()) == int(beats.is_abnormal.sum())
        assert len(fold.train) + len(test_normals) == n_normal
    assert sum(len(h) for h in held_out) == n_normal
    assert len(set().union(*held_out)) == n_normal


@pytest.mark.slow
def test_whole_database_has_de_chazal_counts(shared_mitdb, tmp_path):
    beats = build_beat_set(ALL_RECORDS, shared_mitdb, cache_dir=tmp_path, progress=False)  # speed: make bench
    split = inter_patient(beats)
    assert set(split.train.aami) == {"N"} and set(np.unique(split.train.record)) <= set(DS1)
    counts = collections.Counter(split.test.aami)
    # de Chazal et al. 2004, Table: DS2 beat counts per AAMI class
    assert (counts["N"], counts["S"], counts["V"], counts["F"], counts["Q"]) == (44259, 1837, 3221, 388, 7)
