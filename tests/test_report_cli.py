"""`ecg-rnn report`: a Holter report of a recording, rendered and read back (poppler's pdftotext)."""

from __future__ import annotations

import re
import subprocess

import numpy as np
import pytest
import wfdb

from ecg_rnn import cli
from ecg_rnn.detector import RecurrentAEDetector
from ecg_rnn.paths import default_model_path, sample_record
from ecg_rnn.records import open_record
from ecg_rnn.rhythm import AF, Episode
from ecg_rnn.scoring import score_source
from local_data import mitdb_record


def _pdf_text(path) -> str:
    return subprocess.run(["pdftotext", "-layout", str(path), "-"], capture_output=True, text=True, check=True).stdout


def _value_after(text: str, label: str) -> str:
    match = re.search(re.escape(label) + r"\s+([0-9.]+%?)", text)
    assert match, f"{label!r} not in the report"
    return match.group(1)


def test_report_names_ventricular_ectopy_with_the_scored_count(tmp_path):
    record = sample_record("208")
    assert cli.main(["report", str(record), "--out", str(tmp_path / "208.pdf")]) == 0
    assert cli.main(["report", str(record), "--out", str(tmp_path / "208.html")]) == 0
    scored = score_source(RecurrentAEDetector.load(default_model_path()), open_record(record))
    v_beats = int((scored.suggested_class == "V").sum())
    assert v_beats > 500  # 208 holds 992 reference V beats
    text = _pdf_text(tmp_path / "208.pdf")
    assert "Holter report: 208" in text and "Ventricular (V) beats" in text
    assert int(_value_after(text, "Ventricular (V) beats")) == v_beats
    assert "AF burden" in text
    page = (tmp_path / "208.html").read_text()
    assert "Ventricular (V) beats" in page and f">{v_beats}<" in page
    pages = subprocess.run(["pdftoppm", "-r", "30", "-png", str(tmp_path / "208.pdf"), str(tmp_path / "page")],
                           capture_output=True, check=True)
    assert pages.returncode == 0 and len(list(tmp_path.glob("page*.png"))) >= 2


def test_report_of_an_af_record_states_its_af_burden(tmp_path):
    """The report states the rhythm stage's AF burden, exactly, and on 201 that burden is the reference's
    within 5 points (31.7 % against 33.6 %: with the atrial evidence, 201's trigeminy and blocked atrial
    premature beats are no longer read as AF, see docs/evaluation/rhythm.md)."""
    record = mitdb_record("201")
    assert cli.main(["report", str(record), "--out", str(tmp_path / "201.pdf")]) == 0
    burden = float(_value_after(_pdf_text(tmp_path / "201.pdf"), "AF burden").rstrip("%")) / 100
    source = open_record(record)
    scored = score_source(RecurrentAEDetector.load(default_model_path()), source)
    found_s = sum(e.duration_s for e in scored.episodes if e.kind == AF)
    assert burden == pytest.approx(found_s / source.duration_s, abs=0.0006)  # printed to 0.1 %
    ann = wfdb.rdann(str(record), "atr")
    rhythm = [(s, a) for s, a in zip(ann.sample, ann.aux_note) if a.startswith("(")]
    in_af, total = 0, wfdb.rdheader(str(record)).sig_len
    for (start, aux), (end, _) in zip(rhythm, rhythm[1:] + [(total, "")]):
        in_af += (end - start) if aux.strip("\x00") in ("(AFIB", "(AFL") else 0
    assert 0.3 < in_af / total and abs(burden - in_af / total) < 0.05, (burden, in_af / total)


@pytest.mark.parametrize("name", ["report.docx", "report"])
def test_report_refuses_other_formats_in_one_line(tmp_path, capsys, name):
    assert cli.main(["report", str(sample_record("100")), "--out", str(tmp_path / name)]) == cli.EXIT_BAD_INPUT
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and ".pdf or .html" in err[0]
    assert not np.any([p.suffix for p in tmp_path.iterdir()])


def test_report_follows_the_reviewed_af_episodes(tmp_path):
    """A rejected AF episode leaves the burden; a confirmed stretch the pipeline missed joins it."""
    from ecg_rnn.reviews import ReviewStore

    record = mitdb_record("201")
    source = open_record(record)
    scored = score_source(RecurrentAEDetector.load(default_model_path()), source)
    af = [e for e in scored.episodes if e.kind == AF]
    store = ReviewStore(tmp_path / "reviews.sqlite")
    for e in af:
        store.save_episode(source.load().digest, e, "rejected", "Dr R")
    store.save_episode(source.load().digest, Episode(AF, 0.0, 60.0 * 10), "confirmed", "Dr R")
    out = tmp_path / "201.pdf"
    assert cli.main(["report", str(record), "--out", str(out), "--reviews", str(tmp_path / "reviews.sqlite")]) == 0
    burden = float(_value_after(_pdf_text(out), "AF burden").rstrip("%")) / 100
    assert burden == pytest.approx(600.0 / source.duration_s, abs=0.0006)
