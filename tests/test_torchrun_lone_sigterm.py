"""A SIGTERM that reaches one rank of ``fastvae train`` under torchrun alone (a kill of its
pid, a scheduler's stop on its node): that rank says so in one line, named by its rank (a
rank other than 0 died without a word, torchrun's exit code 143 the only trace), and rank 0
stops too, saying so, instead of waiting."""
import contextlib
import os
import signal
import subprocess
import time

import _torchrun


def _sigterm_to_rank_1(tmp_path, setup: str, args: list, ready, settle: float = 0.0,
                       timeout: float = 60) -> str:
    """torchrun's stderr, its ranks running ``setup`` then ``fastvae train *args``, after a
    SIGTERM to rank 1 alone once the file ``ready`` exists (``settle`` s later); every
    process of the run killed if it has not ended ``timeout`` s after the signal."""
    script = _torchrun.command(tmp_path, f"""
        import os
        with open({str(tmp_path)!r} + "/pid." + os.environ["RANK"], "w") as f:
            f.write(str(os.getpid()))
    """ + setup)
    p = subprocess.Popen([*_torchrun.torchrun(), str(script), *_torchrun.TRAIN, *args],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         env=_torchrun.env(tmp_path))
    try:
        deadline = time.monotonic() + 120
        while not ready.is_file() and p.poll() is None:
            assert time.monotonic() < deadline, f"no {ready.name} within 120 s"
            time.sleep(0.05)
        time.sleep(settle)
        os.kill(int((tmp_path / "pid.1").read_text()), signal.SIGTERM)
        return p.communicate(timeout=timeout)[1]
    finally:
        if p.poll() is None:   # its ranks too: one left behind would run on, orphaned
            p.kill()
            for pid in tmp_path.glob("pid.*"):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(pid.read_text()), signal.SIGKILL)


def test_a_sigterm_to_rank_1_alone_is_said_by_it_and_stops_rank_0(tmp_path):
    run = tmp_path / "run"
    err = _sigterm_to_rank_1(tmp_path, "", ["--epochs", "1000", "--out", str(run)],
                             run / "checkpoint.pt")
    said = _torchrun.said(err)
    resume = f"`torchrun --nproc_per_node=2 -m fastvae train --resume --out {run} --epochs 1000`"
    assert len(said) == 2, err[-3000:]
    assert said[0 if said[0].startswith("[rank 1]") else 1] == (
        f"[rank 1] fastvae train: terminated (SIGTERM); the last checkpoint in {run} is "
        f"intact: {resume} (with its other torchrun flags) continues the run"), err[-3000:]
    # its collective's lost peer, most often; torchrun's own SIGTERM, if that comes first
    assert any(line.startswith(("fastvae train: error: another process of the run failed or "
                                "was stopped", "fastvae train: terminated (SIGTERM)"))
               for line in said), err[-3000:]


def test_a_sigterm_to_rank_1_waiting_for_rank_0_s_evaluation_is_handled_at_once(tmp_path):
    """Rank 1 waits while rank 0 evaluates the test set (hours, for a large estimate): a
    wait in a collective ran no signal handler until the collective ended, so its SIGTERM
    was handled only after the evaluation, past a scheduler's grace period."""
    setup = f"""
        import time
        import fastvae.train as T
        real, calls = T.evaluate, []

        def slow(*args):   # the epoch's evaluation, after the untrained model's
            calls.append(1)
            if len(calls) == 2:
                open({str(tmp_path)!r} + "/evaluating", "w").close()
                time.sleep(120)
            return real(*args)
        T.evaluate = slow
    """
    # rank 1 stops, then torchrun stops rank 0 (its evaluation would take 120 s more)
    err = _sigterm_to_rank_1(tmp_path, setup, ["--out", str(tmp_path / "run")],
                             tmp_path / "evaluating", settle=1, timeout=45)
    said = [line for line in err.splitlines() if line.startswith("[rank 1] fastvae train:")]
    assert said == ["[rank 1] fastvae train: terminated (SIGTERM) before its first checkpoint; "
                    "nothing to resume"], err[-3000:]
