"""Slow, self-contained jobs of the suite (the interpreter child pytest, the kernels'
compile under two Tritons) started when collection ends, so that they run in child
processes beside the rest of the session instead of after it: on two cores the suite's
wall time is then about its CPU time over two. The tests that need a job's result wait
for it with :func:`result`, which starts it if collection did not (a test run alone).

The session is one serial process; the jobs are several (compile workers, two
interpreter halves). At equal priority each of the ~7 processes gets 2/7 of a core, the
jobs finish first, and the session's remaining tests then run alone on one core while
the other idles. So the jobs' children run :data:`NICER` steps nicer than the session:
the session keeps a core whenever it has work, the jobs take what it leaves, and the
two cores stay busy to the end (where there is no ``nice`` command, all at one priority).
Each child's session (its autogroup, where Linux schedules by them) is made nicer too:
otherwise it would share the CPU with the test session as an equal whatever its nice.

A job is a zero-argument function. Child processes it starts through :func:`popen`
run in process groups of their own, killed whole (their workers too) when the session
ends or is interrupted (Ctrl-C), or when pytest gets a SIGTERM (a CI timeout), so no
run leaves any behind.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable, Dict, List

_lock = threading.Lock()
_pool = None
_jobs: Dict[str, Future] = {}
_procs: List[subprocess.Popen] = []
_stopped = False
NICER = 10


def start(name: str, job: Callable[[], object]) -> None:
    """Run ``job`` in a background thread under ``name`` (once)."""
    global _pool
    with _lock:
        if name in _jobs:
            return
        if _pool is None:
            _pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="fastvae-test-job")
            _stop_on_sigterm()
        _jobs[name] = _pool.submit(job)


def result(name: str, job: Callable[[], object]):
    """The job's result (its exception re-raised), waiting for it; started here if needed."""
    start(name, job)
    return _jobs[name].result()


def popen(cmd, **kwargs) -> subprocess.Popen:
    """``subprocess.Popen`` whose process :func:`stop` kills, run NICER steps nicer than
    this one (the module's docstring says why)."""
    with _lock:
        if _stopped:
            raise RuntimeError("the test session has ended")
        # set before the command runs: it may start processes at once
        nice = shutil.which("nice")
        if nice and isinstance(cmd, (list, tuple)):
            cmd = [nice, "-n", str(NICER), *cmd]
        proc = subprocess.Popen(cmd, start_new_session=True, **kwargs)
        _procs.append(proc)
    _nicer_autogroup(proc.pid)
    return proc


def _nicer_autogroup(pid: int) -> None:
    """Where Linux schedules by autogroup (each session a group that shares the CPU with
    the others as one, nice values counting only inside it), a child in a session of its
    own would weigh as much as the whole test session: its group is made NICER too."""
    try:
        with open(f"/proc/{pid}/autogroup", "w") as f:
            f.write(str(NICER))
    except OSError:   # no autogroups here, or it has ended: nice alone decides
        pass


def stop() -> None:
    """Kill the child processes still running (the session ended, perhaps interrupted)."""
    global _stopped
    with _lock:
        _stopped = True
        procs = list(_procs)
    for proc in procs:
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait()


def _stop_on_sigterm() -> None:
    """On SIGTERM, kill the children, then die of the signal as before (Python's default
    SIGTERM ends the process without pytest's session end, which would leave them)."""
    if (threading.current_thread() is not threading.main_thread()
            or signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL):
        return

    def handler(signum, frame):
        stop()
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)

    signal.signal(signal.SIGTERM, handler)
