"""Shared by the browser tests: a real `streamlit run app.py` on a free localhost port, and Chromium."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
HOST = "127.0.0.1"


def require_chromium() -> str:
    """Chromium's path; fails the test where it is missing (.ci/run installs it: a missing browser must not
    pass as a skipped test)."""
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is not installed (.ci/run installs Debian's chromium)", pytrace=False)
    return CHROMIUM


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def health(url: str, timeout_s: float = 2.0) -> bool:
    with urllib.request.urlopen(url + "/_stcore/health", timeout=timeout_s) as r:
        return r.read().strip() == b"ok"


def wait_healthy(url: str, proc: subprocess.Popen, timeout_s: float = 90.0) -> None:
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"streamlit exited with {proc.returncode}")
        try:
            if health(url):
                return
        except OSError:
            pass
        time.sleep(0.3)
    raise TimeoutError("streamlit did not become healthy")


def smallest_model() -> str:
    """The dashboard label of the smallest shipped model, checked to load. The models ship with the
    project: none, or one that does not load, fails the test instead of skipping it."""
    from ecg_rnn import dashboard as dash

    models = dash.available_models()
    shipped = {k: v for k, v in models.items() if k.endswith("(shipped)")}
    assert shipped, f"no shipped model among the dashboard's models {sorted(models)}"
    label = min(shipped, key=lambda k: shipped[k].stat().st_size)
    dash.load_detector(shipped[label])  # a shipped model that does not load is a defect: let it raise
    return label




@contextlib.contextmanager
def streamlit_server(tmp_path: Path, model: str, extra_env: dict | None = None):
    """Yield (url, reviews db path, log path) of a headless Streamlit server running app.py."""
    port = free_port()
    db = tmp_path / "reviews.sqlite"
    env = dict(os.environ, ECG_RNN_REVIEWS_DB=str(db), ECG_RNN_MODEL=model, PYTHONUNBUFFERED="1",
               **(extra_env or {}))
    log_path = tmp_path / "streamlit.log"
    log = open(log_path, "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", "app.py", "--server.address", HOST,
         "--server.port", str(port), "--server.headless", "true", "--browser.gatherUsageStats", "false"],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://{HOST}:{port}"
    try:
        wait_healthy(url, proc)
        yield url, db, log_path
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
        print(log_path.read_text()[-3000:])
