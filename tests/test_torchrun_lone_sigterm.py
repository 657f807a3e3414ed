"""A SIGTERM that reaches one rank of ``fastvae train`` under torchrun alone (a kill of its
pid, a scheduler's stop on its node): that rank says so in one line, named by its rank (a
rank other than 0 died without a word, torchrun's exit code 143 the only trace), and rank 0
stops too, saying so, instead of waiting."""
import os
import signal
import subprocess
import time

import _torchrun


def test_a_sigterm_to_rank_1_alone_is_said_by_it_and_stops_rank_0(tmp_path):
    script = _torchrun.command(tmp_path, f"""
        import os
        with open({str(tmp_path)!r} + "/pid." + os.environ["RANK"], "w") as f:
            f.write(str(os.getpid()))
    """)
    run = tmp_path / "run"
    p = subprocess.Popen([*_torchrun.torchrun(), str(script), *_torchrun.TRAIN,
                          "--epochs", "1000", "--out", str(run)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         env=_torchrun.env(tmp_path))
    try:
        deadline = time.monotonic() + 120
        while not (run / "checkpoint.pt").is_file() and p.poll() is None:
            assert time.monotonic() < deadline, "no checkpoint within 120 s"
            time.sleep(0.05)
        os.kill(int((tmp_path / "pid.1").read_text()), signal.SIGTERM)
        _, err = p.communicate(timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
    said = [line for line in err.splitlines() if "fastvae train:" in line]
    resume = f"`torchrun --nproc_per_node=2 -m fastvae train --resume --out {run} --epochs 1000`"
    assert len(said) == 2, err[-3000:]
    assert said[0 if said[0].startswith("[rank 1]") else 1] == (
        f"[rank 1] fastvae train: terminated (SIGTERM); the last checkpoint in {run} is "
        f"intact: {resume} (with its other torchrun flags) continues the run"), err[-3000:]
    # its collective's lost peer, most often; torchrun's own SIGTERM, if that comes first
    assert any(line.startswith(("fastvae train: error: another process of the run failed or "
                                "was stopped", "fastvae train: terminated (SIGTERM)"))
               for line in said), err[-3000:]
