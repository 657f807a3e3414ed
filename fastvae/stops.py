"""The fastvae command's stop signals. Ctrl-C (SIGINT) and SIGTERM unwind a run as a
KeyboardInterrupt, so every cleanup runs (a half-written file's removal, the run folder's
lock), and each is also remembered: a library that swallows the exception (C code that
clears any error raised while it runs Python, where the signal's handler happened to run)
cannot lose the stop, because training calls :func:`check` at every step.
"""
from __future__ import annotations

import contextlib
import os
import shlex
import signal
import sys
import threading


class Terminated(KeyboardInterrupt):
    """SIGTERM (a scheduler's stop, ``kill``, torchrun shutting its workers down), unwound
    like Ctrl-C: a KeyboardInterrupt, so every cleanup Ctrl-C gets runs for it too."""


_asked = None   # the stop a signal asked for while :func:`handled` runs (its exception type)
_done = False   # the command's work is on disk (:func:`finished`)


def _on_signal(signum, frame):
    global _asked
    if signum == signal.SIGTERM:
        # once: a second SIGTERM (a stop that will not wait) kills as it always did
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        if isinstance(sys.exc_info()[1], KeyboardInterrupt):
            # a stop is unwinding already (its cleanup, its message): most often Ctrl-C
            # under torchrun, which relays it to its workers as SIGTERM. Raised here it
            # would cut that cleanup short and replace the stop with one that has no
            # resume command and blames a failed rank
            return
        _asked = Terminated
    else:
        _asked = KeyboardInterrupt
    if not _done:
        raise _asked


def finished() -> None:
    """The command's work is complete and on disk: a stop signal from here on lets it
    return as done, not as interrupted with a resume command for a finished run."""
    global _done
    _done = True


def exiting() -> None:
    """The command has its exit status: a stop signal while the interpreter shuts down
    (a second or more, torch's teardown) would only replace it (or print a traceback)."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)


def check() -> None:
    """Raise the stop a signal asked for, if one came and its exception was lost on the
    way; nothing outside :func:`handled` (the Python API's own callers keep their
    signals)."""
    if _asked is not None and not _done:
        raise _asked


@contextlib.contextmanager
def handled():
    """While the command runs: SIGTERM raises :class:`Terminated` (it would otherwise end
    the process without a word), and both it and SIGINT are remembered for :func:`check`.
    A signal is left alone where Python cannot set a handler (another thread), where it
    is ignored (a background job of a non-interactive shell: SIGINT) or where a program
    embedding the command has set its own handler."""
    global _asked, _done
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    own = {signal.SIGINT: signal.default_int_handler, signal.SIGTERM: signal.SIG_DFL}
    taken = [s for s, usual in own.items() if signal.getsignal(s) is usual]
    _asked, _done = None, False
    for s in taken:
        signal.signal(s, _on_signal)
    try:
        yield
    finally:
        for s in taken:
            signal.signal(s, own[s])
        _asked, _done = None, False


def resume_command(folder, flags=(), world: int = 1) -> str:
    """The command that continues the run in ``folder``, repeating ``flags``: under
    torchrun (``world`` > 1) torchrun's, with as many processes per node as this run
    has (``LOCAL_WORLD_SIZE``, not the world size of a multi-node run), since the same
    processes draw the same noise and continue bit for bit."""
    command = (f"fastvae train --resume --out {shlex.quote(str(folder))}"
               + "".join(f" {shlex.quote(str(f))}" for f in flags))
    if world <= 1:
        return f"`{command}`"
    per_node = os.environ.get("LOCAL_WORLD_SIZE") or str(world)
    return f"`torchrun --nproc_per_node={per_node} -m {command}` (with its other torchrun flags)"
