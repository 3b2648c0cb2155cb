"""The Holter report of shipped record 208 (reference labels as the reviewed classes), rendered as PDF with
poppler's pdftoppm and read back with pdftotext, and as HTML with the same figures."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import wfdb

from benchmarks.events import read_reference, reference_track
from ecg_rnn.errors import RecordError
from ecg_rnn.events import detect_events, summary
from ecg_rnn.holter_report import ReportConfig, write_report

SMALL = ReportConfig(max_strips=4, max_groups=2, dpi=50)  # a few strips keep the test fast
AF_EPISODE = ("AF", 600.0, 780.0)  # the sample records have no AF: one episode shows the burden's path


def poppler(tool: str) -> str:
    found = shutil.which(tool)
    assert found, f"{tool} is missing: install poppler-utils (apt-get install poppler-utils)"
    return found


@pytest.fixture
def record_208(sample_dir):
    ref = read_reference(sample_dir / "208")
    track = reference_track(ref)
    episodes = pd.concat([track.episodes, pd.DataFrame([AF_EPISODE], columns=["kind", "start_s", "end_s"])])
    track = type(track).build(track.time_s, track.classes, duration_s=track.duration_s, reviewed=track.reviewed,
                              noisy=track.noisy, episodes=episodes)
    events = detect_events(track)
    beats = pd.DataFrame({"time_s": track.time_s, "class": track.classes, "reviewed": track.reviewed,
                          "noisy": track.noisy, "groups": np.where(track.classes == "V", "wide", "narrow")})
    signal = wfdb.rdrecord(str(sample_dir / "208"))
    return {"track": track, "events": events, "beats": beats, "signal": signal.p_signal,
            "lead_names": signal.sig_name, "fs": signal.fs, "facts": summary(track, events)}


def write(path: Path, data: dict, **overrides) -> Path:
    args = dict(recording={"name": "208", "duration_s": data["track"].duration_s}, beats=data["beats"],
                events=data["events"], signal=data["signal"], lead_names=data["lead_names"], fs=data["fs"],
                model={"name": "reference labels", "file": "none"}, threshold=2.5, threshold_percentile=97.0,
                config=SMALL)
    return write_report(path, **{**args, **overrides})


def test_pdf_report_renders_and_states_the_counts(record_208, tmp_path):
    pdf = write(tmp_path / "208.pdf", record_208)
    subprocess.run([poppler("pdftoppm"), "-r", "30", "-png", str(pdf), str(tmp_path / "page")], check=True)
    pages = sorted(tmp_path.glob("page-*.png"))
    assert len(pages) >= 2
    text = subprocess.run([poppler("pdftotext"), "-layout", str(pdf), "-"], check=True, capture_output=True,
                          text=True).stdout
    facts = record_208["facts"]
    assert facts["V_beats"] == 992 and facts["af_burden"] == pytest.approx(180.0 / record_208["track"].duration_s)
    assert re.search(r"Ventricular \(V\) beats\s+992\s+reviewed", text)
    assert re.search(rf"Ventricular couplets\s+{facts['V_couplets']}\s", text)
    assert re.search(rf"AF burden\s+{100 * facts['af_burden']:.1f}%", text)
    assert "Ventricular trigeminy" in text and "threshold" in text and "97th percentile" in text
    images = subprocess.run([poppler("pdfimages"), "-list", str(pdf)], check=True, capture_output=True,
                            text=True).stdout.splitlines()[2:]
    images = [line for line in images if line.split()[2] == "image"]  # not their alpha masks
    assert len(images) == 1 + SMALL.max_strips  # the trend, then the strips the budget allows


def test_html_report_holds_the_same_figures(record_208, tmp_path):
    page = write(tmp_path / "208.html", record_208).read_text()
    facts = record_208["facts"]
    assert "<td>Ventricular (V) beats</td><td>992</td><td>reviewed</td>" in page
    assert f"<td>Ventricular couplets</td><td>{facts['V_couplets']}</td>" in page
    assert f"<td>AF burden</td><td>{100 * facts['af_burden']:.1f}%</td>" in page
    assert page.count("<img src='data:image/png;base64,") == 1 + SMALL.max_strips
    assert "src='http" not in page  # self-contained


def test_morphology_groups_get_strips_within_the_budget(record_208, tmp_path):
    couplets = record_208["events"].query("kind == 'V_couplet'")
    page = write(tmp_path / "208.html", record_208, events=couplets,
                 config=ReportConfig(max_strips=2, max_groups=5, dpi=40)).read_text()
    assert page.count("<img ") == 1 + 2  # trend, the couplet, then only the largest group
    assert "Group narrow: 1963 beats" in page and "Group wide" not in page


def test_strips_read_through_a_callable_of_a_long_recording(record_208, tmp_path):
    calls = []
    data = record_208["signal"]

    def strip(start_s, end_s):
        calls.append(end_s - start_s)
        first, stop = int(start_s * 360), int(end_s * 360)
        return np.arange(first, stop) / 360, data[first:stop]

    write(tmp_path / "208.html", record_208, signal=strip)
    assert len(calls) == SMALL.max_strips and max(calls) == pytest.approx(SMALL.strip_s)
    with pytest.raises(RecordError, match="duration_s"):
        write(tmp_path / "other.pdf", record_208, signal=strip, recording={"name": "208"})


def test_unknown_suffix_is_refused_before_anything_is_written(record_208, tmp_path):
    with pytest.raises(RecordError, match=r"\.pdf or \.html"):
        write(tmp_path / "208.docx", record_208)
    assert not list(tmp_path.iterdir())
