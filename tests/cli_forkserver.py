"""Run many `python -m ecg_rnn ...` invocations cheaply: import the package once, then fork one fresh
process per invocation that runs `ecg_rnn/__main__.py` exactly as `python -m ecg_rnn` does (runpy),
with its own cwd, stdout/stderr files, exit status, wall-clock limit and peak-memory growth.

Usage: python tests/cli_forkserver.py JOBS.json RESULTS.json
JOBS.json: [{"argv": [...], "cwd": "...", "stdout": "...", "stderr": "..."}, ...]
An uncaught exception in a child prints its traceback to the child's stderr and exits 1, as the
interpreter would; a child that runs past `limit_s` is killed (returncode -9).
"""

from __future__ import annotations

import json
import os
import resource
import signal
import sys
import time


def _child(job: dict) -> None:
    import runpy
    import traceback

    os.chdir(job["cwd"])
    for fd, path in ((1, job["stdout"]), (2, job["stderr"])):
        f = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.dup2(f, fd)
        os.close(f)
    sys.stdout = os.fdopen(1, "w", buffering=1)
    sys.stderr = os.fdopen(2, "w", buffering=1)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    sys.argv = ["ecg-rnn", *job["argv"]]
    code = 0
    try:
        runpy.run_module("ecg_rnn", run_name="__main__", alter_sys=True)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        if exc.code is not None and not isinstance(exc.code, int):
            print(exc.code, file=sys.stderr)
    except BaseException:  # noqa: BLE001 - what the interpreter does with an uncaught exception
        traceback.print_exc()
        code = 1
    grown_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    with open(job["stderr"] + ".rss", "w") as fh:
        fh.write(str(grown_kib))
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def main() -> None:
    jobs = json.load(open(sys.argv[1]))
    limit = float(os.environ.get("CLI_LIMIT_S", "60"))
    import ecg_rnn.cli  # noqa: F401 - warm: what every child would import
    import ecg_rnn.detector  # noqa: F401
    import ecg_rnn.records  # noqa: F401
    import ecg_rnn.uploads  # noqa: F401
    import wfdb  # noqa: F401

    results = []
    for job in jobs:
        t0 = time.monotonic()
        pid = os.fork()
        if pid == 0:
            _child(job)
        killed = False
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            if time.monotonic() - t0 > limit:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                killed, status = True, -9
                break
            time.sleep(0.02)
        rc = -9 if killed else os.waitstatus_to_exitcode(status)
        try:
            rss = int(open(job["stderr"] + ".rss").read())
            os.unlink(job["stderr"] + ".rss")
        except (OSError, ValueError):
            rss = -1
        results.append({"rc": rc, "seconds": time.monotonic() - t0, "rss_growth_kib": rss})
    json.dump(results, open(sys.argv[2], "w"))


if __name__ == "__main__":
    main()
