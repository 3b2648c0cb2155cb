"""Undoing a group decision: ReviewStore.restore puts every beat back as it was, or refuses whole."""

from __future__ import annotations

import pytest

from ecg_rnn.reviews import ReviewConflict, ReviewStore


def test_restore_puts_back_previous_reviews_and_removes_new_ones(tmp_path):
    store = ReviewStore(tmp_path / "r.sqlite")
    store.save("rec", 10, "abnormal", "V", reviewer="ann")
    before = store.get_many("rec", [10, 20])
    saved = store.save_many("rec", {10: 1, 20: 0}, "normal", reviewer="bob", source="group")
    assert {s: r.decision for s, r in store.get("rec").items()} == {10: "normal", 20: "normal"}
    assert store.restore("rec", {s: r.version for s, r in saved.items()}, {10: before[10], 20: None}, "bob") == 2
    after = store.get("rec")
    assert set(after) == {10} and (after[10].decision, after[10].beat_class, after[10].reviewer) == ("abnormal", "V", "ann")
    undo = [h for h in store.history("rec") if h.source == "undo"]
    assert len(undo) == 2 and {h.sample for h in undo} == {10, 20}


def test_restore_refuses_when_a_beat_changed_since_and_changes_nothing(tmp_path):
    store = ReviewStore(tmp_path / "r.sqlite")
    saved = store.save_many("rec", {1: 0, 2: 0}, "abnormal", "V", reviewer="ann", source="group")
    store.save("rec", 2, "normal", reviewer="cy", expected_version=saved[2].version)
    with pytest.raises(ReviewConflict, match="changed since"):
        store.restore("rec", {s: r.version for s, r in saved.items()}, {1: None, 2: None}, "ann")
    assert {s: r.decision for s, r in store.get("rec").items()} == {1: "abnormal", 2: "normal"}
