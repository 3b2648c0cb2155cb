"""The review flow in a real browser (issue 11 §5): `streamlit run app.py` on a free localhost port, driven by
Playwright through Debian's Chromium at 1400 x 1000.

- the threshold the slider shows is the one the flags use, after an upload (WFDB, and EDF+) and after other
  interactions;
- the decision (Save), the beat header and its strip lie on one screen without scrolling, the queue
  table's review and RR columns are inside it, no metric is cut off;
- the queue table ticks the beat shown as Next flagged moves on; a double click on Save saves once and
  moves on; the keyboard focus is on the next beat's Save button; the reviewer name survives a reload;
- 50 flagged beats reviewed with the keyboard alone (Enter confirms the suggested decision and moves on)
  within 90 s: the target is 60 s, the margin is for a loaded, shared CI machine; the time is printed.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

from browser_helpers import CHROMIUM_ARGS, ROOT, require_chromium, smallest_model, streamlit_server

SAMPLE = ROOT / "ecg_rnn" / "samples" / "mitdb"
RECORD = "208"
VIEWPORT = {"width": 1400, "height": 1000}
FAST_REVIEW_BEATS = 50
FAST_REVIEW_BOUND_S = 90.0  # the target is 60 s (a save reruns only the Beats view); a margin for a loaded machine
TIMEOUT_MS = 120_000
BEAT_HEADER = re.compile(r"^Beat \d+ at")

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    chromium = require_chromium()
    with streamlit_server(tmp_path_factory.mktemp("review"), smallest_model()) as (url, db, _log):
        yield url, db, chromium


@pytest.fixture(scope="module")
def expected():
    """What the app must show for record 208, computed here from the library alone."""
    from ecg_rnn import dashboard as dash
    from ecg_rnn.records import open_record

    det = dash.load_detector(dash.available_models()[smallest_model()])
    source = open_record(SAMPLE / RECORD)
    return dash.analyse(source, source.load().digest, det)


@pytest.fixture
def page(server):
    from playwright.sync_api import expect, sync_playwright

    url, _db, chromium = server
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport=VIEWPORT)
            page.set_default_timeout(TIMEOUT_MS)
            expect.set_options(timeout=TIMEOUT_MS)
            page.goto(url)
            yield page
        finally:
            browser.close()


def _reviews(db: Path) -> list[tuple]:
    import sqlite3

    if not db.exists():
        return []
    with sqlite3.connect(db) as con:
        return con.execute("SELECT record_digest, sample, decision, reviewer, version FROM reviews").fetchall()


def _slider_value(page) -> float:
    return float(page.get_by_test_id("stSidebar").get_by_test_id("stSliderThumbValue").inner_text())


def _flagged(page) -> int:
    metric = page.get_by_test_id("stMetric").filter(has=page.get_by_text("Flagged", exact=True))
    return int(metric.get_by_test_id("stMetricValue").inner_text().replace(",", ""))


def _settled(page) -> None:
    """Wait until the script run the last action started has finished."""
    from playwright.sync_api import expect

    page.wait_for_timeout(300)
    expect(page.get_by_test_id("stStatusWidget")).to_have_count(0)


def _step(page, action) -> str:
    """Run an action that moves to another beat; return the new beat header."""
    from playwright.sync_api import expect

    header = page.get_by_text(BEAT_HEADER)
    before = header.inner_text()
    action()
    expect(header).not_to_have_text(before)
    return header.inner_text()


def _selected_beat(page) -> int | None:
    """The beat number of the ticked row of the queue table: the first cell (the index) of the row its
    accessible grid marks selected (the row's own text runs its cells together). A new beat's table is a
    new grid: its accessible rows come a moment after the run ends, so wait for them first."""
    from playwright.sync_api import expect

    grid = page.get_by_test_id("stDataFrame").first
    expect(grid.locator("td").first).to_be_attached()
    rows = grid.locator("tr[aria-selected=true]")
    if rows.count() == 0:
        return None
    return int(rows.first.locator("td").first.inner_text())


def _within_viewport(page, locator) -> bool:
    box = locator.bounding_box()
    return box is not None and box["y"] >= 0 and box["y"] + box["height"] <= VIEWPORT["height"]


def test_threshold_shown_is_the_threshold_used(page, expected):
    from playwright.sync_api import expect

    from ecg_rnn import dashboard as dash

    sidebar = page.get_by_test_id("stSidebar")
    sidebar.get_by_text("Upload", exact=True).click()
    page.locator("input[type=file]").set_input_files([str(SAMPLE / f"{RECORD}.{e}") for e in ("hea", "dat", "atr")])
    expect(page.get_by_text("flagged beats, highest score first")).to_be_visible()
    _settled(page)
    noise = dash.noise_beats(expected)  # left out of the flagged beats by default
    flagged = int(dash.flags_at(expected, expected.default_percentile, noise).sum())
    assert _slider_value(page) == expected.default_percentile
    assert _flagged(page) == flagged
    sidebar.get_by_label("Reviewer name", exact=True).fill("Dr Threshold")
    sidebar.get_by_label("Reviewer name", exact=True).press("Enter")
    _settled(page)
    _step(page, lambda: page.get_by_role("button", name="Next flagged").click())
    _settled(page)
    assert _slider_value(page) == expected.default_percentile
    assert _flagged(page) == flagged
    # a threshold the reviewer sets is the one used
    sidebar.get_by_role("slider").focus()
    for _ in range(5):
        page.keyboard.press("ArrowRight")
    shown = expected.default_percentile + 0.5
    expect(page.get_by_text(f"Flagging at percentile {shown:.1f}")).to_be_visible()
    _settled(page)
    assert _slider_value(page) == pytest.approx(shown)
    assert _flagged(page) == int(dash.flags_at(expected, shown, noise).sum())


def test_after_an_edf_upload_the_slider_shows_the_models_percentile(page, tmp_path):
    """Issue 11's hidden check: an EDF+ file (ten minutes of 208 written by pyedflib) uploaded in the browser;
    the slider shows the model's percentile and the flagged count is the library's, before and after an
    interaction."""
    from playwright.sync_api import expect

    from ecg_rnn import dashboard as dash
    from ecg_rnn.records import open_record
    from edf_files import wfdb_and_edf_copies

    _wfdb_copy, edf_copy = wfdb_and_edf_copies(SAMPLE / RECORD, tmp_path, 600)
    det = dash.load_detector(dash.available_models()[smallest_model()])
    source = open_record(edf_copy)
    expected = dash.analyse(source, source.load().digest, det)
    flagged = int(dash.flags_at(expected, expected.default_percentile, dash.noise_beats(expected)).sum())
    sidebar = page.get_by_test_id("stSidebar")
    sidebar.get_by_text("Upload", exact=True).click()
    page.locator("input[type=file]").set_input_files([str(edf_copy)])
    expect(page.get_by_text("flagged beats, highest score first")).to_be_visible()
    _settled(page)
    assert _slider_value(page) == expected.default_percentile
    assert _flagged(page) == flagged > 0
    _step(page, lambda: page.get_by_role("button", name="Next flagged").click())
    _settled(page)
    assert _slider_value(page) == expected.default_percentile
    assert _flagged(page) == flagged


def test_one_screen_double_click_focus_and_reload(page, server):
    from playwright.sync_api import expect

    _url, db, _ = server
    expect(page.get_by_test_id("stDataFrame").first).to_be_visible()
    _settled(page)
    sidebar = page.get_by_test_id("stSidebar")
    sidebar.get_by_label("Reviewer name", exact=True).fill("Dr Layout")
    sidebar.get_by_label("Reviewer name", exact=True).press("Enter")
    _settled(page)
    # the decision, the beat and its strip on one screen
    save = page.get_by_role("button", name="Save review")
    strip = page.get_by_test_id("stPlotlyChart").first
    header = page.get_by_text(BEAT_HEADER)
    for what, locator in (("Save", save), ("strip", strip), ("beat header", header)):
        assert _within_viewport(page, locator), f"{what} at {locator.bounding_box()} is off the 1000 px screen"
    table = page.get_by_test_id("stDataFrame").first
    for column in ("review", "RR s"):
        cell = table.locator("th", has_text=re.compile(rf"^{re.escape(column)}$"))  # the grid's accessible header
        expect(cell).to_have_count(1)
    needed, shown = _table_widths(table)
    assert needed <= shown + 1, f"the table's columns need {needed} px but it shows {shown} px: the last are cut off"
    cut = page.evaluate("""() => [...document.querySelectorAll('[data-testid=stMetricValue]')]
        .filter(e => e.scrollWidth > e.clientWidth + 1).map(e => e.innerText)""")
    assert not cut, f"metrics cut off: {cut}"
    # the queue table ticks the beat shown
    first = int(re.match(r"Beat (\d+)", header.inner_text()).group(1))
    assert _selected_beat(page) == first
    shown = int(re.match(r"Beat (\d+)", _step(page, lambda: page.get_by_role("button", name="Next flagged").click()))
                .group(1))
    _settled(page)
    assert _selected_beat(page) == shown != first
    # a double click on Save saves once and moves on, without a conflict
    before = len(_reviews(db))
    moved = _step(page, lambda: page.get_by_role("button", name="Save review").dblclick())
    _settled(page)
    assert not moved.startswith(f"Beat {shown} ")
    assert len(_reviews(db)) == before + 1
    assert page.get_by_test_id("stAlertContentWarning").count() == 0
    # the keyboard focus is on the next beat's Save button
    expect(page.locator(":focus")).to_have_text("Save review")
    # the reviewer name survives a reload
    page.reload()
    expect(page.get_by_text("flagged beats, highest score first")).to_be_visible()
    expect(page.get_by_test_id("stSidebar").get_by_label("Reviewer name", exact=True)).to_have_value("Dr Layout")


def _table_widths(table) -> tuple[int, int]:
    """(width all the columns need, width the table shows). The grid draws on a canvas: its accessible
    header cells are the canvas's fallback content and have no box to measure, so a cut-off column shows
    as the grid's scroll area being wider than its visible part."""
    return tuple(table.locator(".dvn-scroller").evaluate("e => [e.scrollWidth, e.clientWidth]"))


def test_fifty_flagged_beats_reviewed_with_the_keyboard(page, server):
    from playwright.sync_api import expect

    _url, db, _ = server
    page.goto(page.url.split("?")[0] + "?reviewer=Dr+Keys")
    expect(page.get_by_test_id("stDataFrame").first).to_be_visible()
    _settled(page)
    expect(page.locator(":focus")).to_have_text("Save review")
    before = {r[1] for r in _reviews(db)}
    t0 = time.monotonic()
    for _ in range(FAST_REVIEW_BEATS):
        _step(page, lambda: page.keyboard.press("Enter"))
        expect(page.locator(":focus")).to_have_text("Save review")
    elapsed = time.monotonic() - t0
    _settled(page)
    mine = [r for r in _reviews(db) if r[3] == "Dr Keys"]
    print(f"{FAST_REVIEW_BEATS} flagged beats reviewed with the keyboard in {elapsed:.1f} s "
          f"({elapsed / FAST_REVIEW_BEATS:.2f} s per beat)")
    assert len(mine) == FAST_REVIEW_BEATS and not {r[1] for r in mine} & before
    assert all(r[4] == 1 for r in mine)  # each saved once
    assert elapsed <= FAST_REVIEW_BOUND_S, \
        f"{FAST_REVIEW_BEATS} beats took {elapsed:.1f} s, more than {FAST_REVIEW_BOUND_S:g} s"
