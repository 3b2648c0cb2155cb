"""The package installs from a wheel and works outside the checkout (shipped model and example
records are package data)."""

from __future__ import annotations

import subprocess
import sys
import sysconfig
from pathlib import Path

import pandas as pd
import pytest

REPO = Path(__file__).resolve().parents[1]
BUILD_TIMEOUT_S = 300


def _run(cmd: list, cwd: Path, **kwargs) -> subprocess.CompletedProcess:
    done = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=BUILD_TIMEOUT_S, **kwargs)
    assert done.returncode == 0, f"{' '.join(map(str, cmd))} failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}"
    return done


@pytest.fixture(scope="module")
def installed_env(tmp_path_factory) -> Path:
    """A fresh virtual environment holding only the wheel built from this checkout; the
    dependencies come from the test environment's site-packages (a .pth line), not from the network."""
    work = tmp_path_factory.mktemp("install")
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(work / "dist"),
          str(REPO)], cwd=work)
    wheel = next((work / "dist").glob("ecg_rnn-*.whl"))
    env = work / "env"
    _run([sys.executable, "-m", "venv", "--without-pip", str(env)], cwd=work)
    python = env / "bin" / "python"
    site = Path(_run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                     cwd=work).stdout.strip())
    (site / "test_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    _run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps", "--no-index",
          str(wheel)], cwd=work)
    return env


def test_wheel_scores_a_record_outside_the_repository(installed_env, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    where = _run([str(installed_env / "bin" / "python"), "-c", "import ecg_rnn; print(ecg_rnn.__file__)"],
                 cwd=elsewhere).stdout.strip()
    assert Path(where).is_relative_to(installed_env), f"ecg_rnn imported from {where}, not the installed wheel"
    sample = _run([str(installed_env / "bin" / "python"), "-c",
                   "from ecg_rnn.paths import sample_record; print(sample_record('100'))"], cwd=elsewhere).stdout.strip()
    assert Path(sample).is_relative_to(installed_env)
    _run([str(installed_env / "bin" / "ecg-rnn"), "score", sample, "--out", "scored"], cwd=elsewhere)
    table = pd.read_csv(elsewhere / "scored" / "100.csv")
    assert len(table) > 2000  # record 100 holds 2273 beats
    assert (elsewhere / "scored" / "100.ecgrnn").is_file()
    assert not (REPO / "scored").exists()
