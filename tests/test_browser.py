"""End to end in a real browser: `streamlit run app.py` on a free localhost port, driven by Playwright
through Debian's Chromium (headless). Uploads a real MIT-BIH record, sees the flagged table, confirms a
beat and saves a screenshot to test-artifacts/dashboard.png."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from browser_helpers import CHROMIUM, CHROMIUM_ARGS, ROOT, require_chromium, smallest_model, streamlit_server

SAMPLE = ROOT / "ecg_rnn" / "samples" / "mitdb"
ARTIFACTS = ROOT / "test-artifacts"
RECORD = "208"

pytestmark = pytest.mark.browser


@pytest.fixture
def server(tmp_path):
    require_chromium()
    model = smallest_model()
    with streamlit_server(tmp_path, model) as (url, db, _log):
        yield url, db


def test_upload_review_screenshot(server):
    from playwright.sync_api import expect, sync_playwright

    from ecg_rnn.reviews import ReviewStore

    url, db = server
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1600, "height": 1800})
            page.set_default_timeout(120_000)
            expect.set_options(timeout=120_000)
            page.goto(url)
            sidebar = page.get_by_test_id("stSidebar")
            sidebar.get_by_text("Upload", exact=True).click()
            uploader = page.locator("input[type=file]")
            uploader.set_input_files([str(SAMPLE / f"{RECORD}.{e}") for e in ("hea", "dat", "atr")])
            expect(page.get_by_text("flagged beats, highest score first")).to_be_visible()
            expect(page.get_by_test_id("stDataFrame").first).to_be_visible()
            expect(page.get_by_text(f"### {RECORD}").or_(page.get_by_role("heading", name=RECORD)).first) \
                .to_be_visible()
            sidebar.get_by_label("Reviewer name").fill("Dr Browser")
            sidebar.get_by_label("Reviewer name").press("Enter")
            page.wait_for_timeout(500)
            page.get_by_role("button", name="Save review").first.click()
            expect(page.get_by_text("Saved: beat at sample")).to_be_visible()
            expect(page.get_by_text("Reviewed").first).to_be_visible()
            page.evaluate("document.querySelectorAll('section').forEach(s => s.scrollTo(0, 0))")
            page.evaluate("window.scrollTo(0, 0)")
            page.wait_for_timeout(1500)  # let the charts settle before the screenshot
            shot = ARTIFACTS / "dashboard.png"
            page.screenshot(path=str(shot), full_page=True)
            assert shot.stat().st_size > 20_000
        finally:
            browser.close()
    store = ReviewStore(db)
    assert store.count() == 1
    with_review = next(iter(store.get(_only_digest(db)).values()))
    assert with_review.reviewer == "Dr Browser" and with_review.decision == "abnormal"
    if os.environ.get("ECG_RNN_UPDATE_SCREENSHOT"):
        shutil.copy(shot, ROOT / "docs" / "dashboard.png")


def _only_digest(db: Path) -> str:
    import sqlite3

    with sqlite3.connect(db) as con:
        (digest,) = {r[0] for r in con.execute("SELECT record_digest FROM reviews")}
    return digest
