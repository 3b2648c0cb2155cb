"""The dashboard opens an `ecg-rnn score` output folder: its recordings listed by triage score, the most
urgent one opened for review, another one chosen from the list."""

from __future__ import annotations

import pytest

pytest.importorskip("streamlit")

from ecg_rnn.bulk import BulkConfig, expand_inputs, read_summary, score_many  # noqa: E402
from ecg_rnn.paths import default_model_path  # noqa: E402
from test_app import _app, _ok, _text  # noqa: E402
from test_bulk_score import BROKEN_HEADER, write_excerpts  # noqa: E402


def _heading(at) -> str:
    return next(m.value for m in at.markdown if m.value.startswith("### "))


def _triage_table(at):
    return next(d.value for d in at.dataframe if "triage_score" in d.value.columns)


def test_scored_folder_lists_recordings_by_triage_score_and_opens_the_chosen_one(tmp_path, monkeypatch, sample_dir):
    monkeypatch.setenv("ECG_RNN_REVIEWS_DB", str(tmp_path / "reviews.sqlite"))
    folder = tmp_path / "in"
    write_excerpts(folder, sample_dir, 3, 60)
    (folder / "broken.hea").write_text(BROKEN_HEADER)
    out = tmp_path / "out"
    score_many(expand_inputs([folder]), default_model_path(), out, BulkConfig(workers=1, progress=False))
    expected = read_summary(out)["record"].tolist()
    assert expected[-1] == "broken"  # the failed recording is listed last

    at = _app(source="Scored folder", triage_folder=str(out))
    _ok(at)
    assert _triage_table(at)["record"].tolist() == expected
    chosen = at.selectbox(key="triage_record")
    assert chosen.options == expected[:-1] and chosen.value == expected[0]  # a failed one cannot be opened
    assert _heading(at).startswith(f"### {expected[0]} ")
    chosen.set_value(expected[1]).run()
    _ok(at)
    assert _heading(at).startswith(f"### {expected[1]} ")


def test_a_folder_without_a_triage_table_says_how_to_make_one(tmp_path):
    at = _app(source="Scored folder", triage_folder=str(tmp_path))
    assert not at.exception
    message = _text(at.error[0])
    assert "has no summary.csv" in message and f"ecg-rnn score RECORDINGS --out {tmp_path}" in message
