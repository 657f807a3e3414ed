"""The background jobs' children (tests/_background.py) die with the session, even when
pytest is ended by a SIGTERM, as a CI timeout ends it; their own children too. They run
nicer than the session, their own children too."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))

# A session stand-in: one job whose child (a shell) has a child of its own; it prints
# the shell's pid (= its process group) once both run, then waits to be killed.
SESSION = textwrap.dedent("""
    import sys, time
    sys.path.insert(0, {here!r})
    import _background

    def job():
        proc = _background.popen(["sh", "-c", "sleep 60 & sleep 60"])
        time.sleep(0.5)
        print(proc.pid, flush=True)
        proc.wait()

    _background.start("sleeper", job)
    time.sleep(60)
""")


def _alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def test_sigterm_kills_the_jobs_children():
    session = subprocess.Popen([sys.executable, "-c", SESSION.format(here=HERE)],
                               stdout=subprocess.PIPE, text=True)
    try:
        pgid = int(session.stdout.readline())
        assert _alive(pgid)
        session.send_signal(signal.SIGTERM)
        assert session.wait(timeout=20) == -signal.SIGTERM  # died of the signal, as before
        deadline = time.monotonic() + 10
        while _alive(pgid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _alive(pgid), "the job's processes outlived the session"
    finally:
        session.kill()


def test_jobs_children_run_nicer_than_the_session():
    """So that the serial session keeps a core whenever it has work (tests/_background.py);
    what they start inherits it."""
    if shutil.which("nice") is None:
        pytest.skip("no nice command: the jobs run at the session's priority")
    sys.path.insert(0, HERE)
    import _background
    want = min(19, os.getpriority(os.PRIO_PROCESS, 0) + _background.NICER)
    proc = _background.popen(["sh", "-c", "sleep 30 & sleep 30"])
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            group = subprocess.run(["ps", "-o", "ni=", "-g", str(proc.pid)],
                                   capture_output=True, text=True).stdout.split()
            if len(group) == 3:  # the shell and its two sleeps
                break
            time.sleep(0.05)
        assert [int(n) for n in group] == [want] * 3
        try:   # Linux with autogroups: the child's session, "/autogroup-N nice 10"
            with open(f"/proc/{proc.pid}/autogroup") as f:
                autogroup = f.read().split()
        except OSError:
            autogroup = None
        if autogroup is not None:
            assert autogroup[1:] == ["nice", str(_background.NICER)], autogroup
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
