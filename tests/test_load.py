"""Issue 6 §5: the app under load. A real `streamlit run app.py` on localhost; four browser sessions
(headless Chromium, one browser context each) upload four different recordings at once and each must
see its own flagged-beats table, while a fifth session uploads a hostile record and must see its error.
Meanwhile a thread polls /_stcore/health every 0.5 s: every poll must answer "ok" within the bound.
"""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from browser_helpers import (CHROMIUM, CHROMIUM_ARGS, ROOT, health, require_chromium, smallest_model,
                             streamlit_server)

SAMPLE = ROOT / "ecg_rnn" / "samples" / "mitdb"
MINUTES = 1.5
HEALTH_BOUND_S = 5.0  # every health poll answers within this, however busy the sessions are (2 cores)
SESSION_TIMEOUT_MS = 100_000

pytestmark = pytest.mark.browser


def _excerpts(folder: Path) -> dict[str, list[Path]]:
    """Four different 3-minute WFDB records (the analysis cache cannot share work between sessions)."""
    import wfdb

    from ecg_rnn.records import read_record

    out = {}
    for name, src, start_min in (("ld232b", "232", 15.0), ("ld208", "208", 0.0), ("ld232", "232", 0.0),
                                 ("ld208b", "208", 10.0)):
        rec = read_record(SAMPLE / src)
        a, b = int(start_min * 60 * rec.fs), int((start_min + MINUTES) * 60 * rec.fs)
        wfdb.wrsamp(name, fs=rec.fs, units=["mV"], sig_name=["MLII"],
                    p_signal=rec.signal[a:b, None].astype(np.float64), fmt=["16"], write_dir=str(folder))
        out[name] = [folder / f"{name}.hea", folder / f"{name}.dat"]
    hostile = folder / "hostile"
    hostile.mkdir()
    (hostile / "evil.hea").write_text("evil 1 360 1000\n../../../etc/passwd 16 200 16 0 0 0 0 MLII\n")
    (hostile / "evil.dat").write_bytes(b"\x00" * 2000)
    out["hostile"] = [hostile / "evil.hea", hostile / "evil.dat"]
    return out


class HealthPoller(threading.Thread):
    def __init__(self, url: str, every_s: float = 0.5):
        super().__init__(daemon=True)
        self.url, self.every_s = url, every_s
        self.latencies: list[float] = []
        self.failures: list[str] = []
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            t0 = time.monotonic()
            try:
                ok = health(self.url, timeout_s=HEALTH_BOUND_S)
                if not ok:
                    self.failures.append(f"not ok at {t0:.1f}")
            except OSError as exc:
                self.failures.append(f"{type(exc).__name__}: {exc}")
            dt = time.monotonic() - t0
            self.latencies.append(dt)
            if dt > HEALTH_BOUND_S:
                self.failures.append(f"answered in {dt:.2f} s")
            self.stop.wait(max(0.0, self.every_s - dt))


async def _session(browser, url: str, name: str, files: list[Path], hostile: bool) -> tuple[str, float]:
    from playwright.async_api import expect

    t0 = time.monotonic()
    context = await browser.new_context(viewport={"width": 1400, "height": 1000})
    try:
        page = await context.new_page()
        page.set_default_timeout(SESSION_TIMEOUT_MS)
        await page.goto(url)
        sidebar = page.get_by_test_id("stSidebar")
        await sidebar.get_by_text("Upload", exact=True).click()
        await page.locator("input[type=file]").set_input_files([str(f) for f in files])
        if hostile:
            error = page.get_by_test_id("stAlertContentError")
            await expect(error).to_contain_text("points outside the record's folder", timeout=SESSION_TIMEOUT_MS)
            return "error shown", time.monotonic() - t0
        await expect(page.get_by_text("flagged beats, highest score first")).to_be_visible(
            timeout=SESSION_TIMEOUT_MS)
        await expect(page.get_by_test_id("stDataFrame").first).to_be_visible(timeout=SESSION_TIMEOUT_MS)
        heading = page.get_by_role("heading", name=name)
        await expect(heading.first).to_be_visible(timeout=SESSION_TIMEOUT_MS)  # its own record, not another's
        await expect(page.get_by_test_id("stAlertContentError")).to_have_count(0)
        return "flagged table", time.monotonic() - t0
    finally:
        await context.close()


async def _drive(url: str, records: dict[str, list[Path]]):
    from playwright.async_api import async_playwright

    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            jobs = [_session(browser, url, name, files, name == "hostile") for name, files in records.items()]
            return await asyncio.gather(*jobs, return_exceptions=True)
        finally:
            await browser.close()


def test_concurrent_sessions_finish_and_health_answers(tmp_path):
    require_chromium()
    model = smallest_model()
    records = _excerpts(tmp_path)
    with streamlit_server(tmp_path, model) as (url, db, log):
        poller = HealthPoller(url)
        poller.start()
        t0 = time.monotonic()
        try:
            results = asyncio.run(_drive(url, records))
        finally:
            poller.stop.set()
            poller.join(timeout=10)
        elapsed = time.monotonic() - t0
        assert health(url), "the server stopped answering after the load"
    outcome = dict(zip(records, results))
    print(f"sessions ({elapsed:.0f} s): {outcome}; health polls: {len(poller.latencies)}, slowest "
          f"{max(poller.latencies, default=0):.2f} s")
    failed = {k: v for k, v in outcome.items() if isinstance(v, BaseException)}
    assert not failed, {k: f"{type(v).__name__}: {str(v)[:500]}" for k, v in failed.items()}
    assert outcome["hostile"][0] == "error shown"
    assert all(v[0] == "flagged table" for k, v in outcome.items() if k != "hostile")
    # polls follow each other every 0.5 s plus their answer time: never stalled beyond the bound
    assert len(poller.latencies) >= elapsed / (0.5 + HEALTH_BOUND_S), "the health poller did not keep polling"
    assert not poller.failures, poller.failures
    assert "Traceback" not in log.read_text()
    if db.exists():  # the app opened the review store while hostile uploads came and went: intact
        from ecg_rnn.reviews import ReviewStore

        assert ReviewStore(db).integrity_ok()
