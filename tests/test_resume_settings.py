"""What a resumed or evaluated run may take from the command line besides its checkpoint
(another backend, for another device), what the resume command a stop prints repeats,
and a damaged checkpoint's zip trailer: one error line, as for any damaged file."""
import os

import pytest
import torch

import fastvae
from fastvae import cli
from fastvae import train as T
from fastvae.checkpoint import CHECKPOINT_NAME, checksum

from _cli import TINY


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("resume") / "run"
    assert cli.main(["train", *TINY, "--iwae-k", "0", "--out", str(out)]) == 0
    return out


def _copy(run, dst, **config):
    """The run's checkpoint in ``dst``, its config updated by ``config`` and checksummed
    again (as a run trained so would have written it)."""
    state = torch.load(run / CHECKPOINT_NAME, weights_only=True)
    state.pop("checksum")
    state["config"] = dict(state["config"], **config)
    state["checksum"] = checksum(state)
    dst.mkdir(parents=True)
    torch.save(state, dst / CHECKPOINT_NAME)
    return dst


def _err_line(capsys):
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    return err


def test_a_triton_run_goes_on_on_a_cpu_with_another_backend(run, tmp_path, capsys):
    """A run trained with --backend triton (on a GPU) moved to a CPU: its backend cannot
    run there. The error says which flag chooses another; --resume and eval take it."""
    if not fastvae.triton_available() or os.environ.get("TRITON_INTERPRET"):
        pytest.skip("needs triton, not interpreted")
    moved = _copy(run, tmp_path / "moved", backend="triton")
    capsys.readouterr()
    assert cli.main(["eval", str(moved), "--k", "0", "--device", "cpu"]) == 2
    assert "the run's backend is 'triton': pass --backend auto (or torch)" in _err_line(capsys)
    assert cli.main(["eval", str(moved), "--k", "0", "--device", "cpu",
                     "--backend", "torch"]) == 0
    resume = ["train", "--resume", "--out", str(moved), "--epochs", "2", "--no-progress",
              "--device", "cpu"]
    capsys.readouterr()
    assert cli.main(resume) == 2
    assert "resume it with --backend auto (or torch) to go on on cpu" in _err_line(capsys)
    assert cli.main(resume + ["--backend", "torch"]) == 0
    assert "resuming with --backend torch (the checkpoint had triton)" in capsys.readouterr().out
    assert torch.load(moved / CHECKPOINT_NAME, weights_only=True)["config"]["backend"] == "torch"


def test_a_backend_asked_by_the_flag_is_named_as_the_flag(run, capsys):
    """--backend triton on a CPU, for a run trained with torch: the error names the flag
    that asked for it, not the run's saved backend."""
    if not fastvae.triton_available() or os.environ.get("TRITON_INTERPRET"):
        pytest.skip("needs triton, not interpreted")
    capsys.readouterr()
    for argv in (["eval", str(run), "--k", "0"],
                 ["train", "--resume", "--out", str(run), "--epochs", "3", "--no-progress"]):
        assert cli.main([*argv, "--device", "cpu", "--backend", "triton"]) == 2
        err = _err_line(capsys)
        assert err.startswith(f"fastvae {argv[0]}: error: --backend triton: ") and "run's" not in err


def test_a_triton_run_on_a_machine_without_triton_says_which_flag(run, tmp_path, capsys,
                                                                  monkeypatch):
    from fastvae import backends
    monkeypatch.setattr(backends, "triton_available", lambda: False)
    moved = _copy(run, tmp_path / "moved", backend="triton")
    capsys.readouterr()
    assert cli.main(["eval", str(moved), "--k", "0", "--device", "cpu"]) == 2
    err = _err_line(capsys)
    assert "needs the triton package" in err and "pass --backend auto (or torch)" in err
    assert cli.main(["train", "--resume", "--out", str(moved), "--epochs", "2",
                     "--no-progress", "--device", "cpu"]) == 2
    assert "resume it with --backend auto (or torch)" in _err_line(capsys)
    # a fresh run asking for it: the flag's one line too, and no run folder left
    assert cli.main(["train", "--backend", "triton", "--out", str(tmp_path / "fresh"),
                     "--epochs", "1", "--no-progress", "--device", "cpu"]) == 2
    err = _err_line(capsys)
    assert err.startswith("fastvae train: error: --backend triton:") and "triton package" in err
    assert not (tmp_path / "fresh").exists()


def test_a_nan_stop_in_a_resume_repeats_what_it_was_given(run, tmp_path):
    """The NaN policy's command, like a signal's, repeats the flags a resume was given
    (its last good checkpoint may be the one from before them)."""
    from fastvae.guard import Guard, NonFiniteLoss
    from fastvae.run_config import resume_command_flags

    given = {"epochs": 3, "iwae_k": 500, "backend": "torch", "lr": 0.1}
    guard = Guard(CHECKPOINT_NAME, 1, "out", 0.1, epochs=3,
                  flags=resume_command_flags(given, True, ("epochs", "lr")))
    guard.stepped = True
    with pytest.raises(NonFiniteLoss, match=r"`fastvae train --resume --out out --epochs 3 "
                                            r"--iwae-k 500 --backend torch --lr 0.01`"):
        guard.loss(float("nan"), 2, 1, 5)


@pytest.mark.parametrize("compile_", [False, True])
def test_a_resume_s_command_repeats_compile_as_the_switch_it_is(compile_):
    """--compile and --no-compile take no value: the command a stop prints must parse,
    and ask for what the resume was given."""
    from fastvae.run_config import resume_command_flags

    flags = resume_command_flags({"epochs": 3, "compile": compile_}, True)
    assert flags == ["--epochs", "3", "--compile" if compile_ else "--no-compile"]
    args = cli.build_parser().parse_args(["train", "--resume", *flags])
    assert args.compile is compile_


def test_a_stopped_resume_s_command_repeats_what_it_was_given(run, tmp_path, capsys,
                                                             monkeypatch):
    """Stopped before its first checkpoint, a resume's checkpoint still holds the old K
    and thread count: the command it prints repeats them, not only --epochs and --lr."""
    target = _copy(run, tmp_path / "r")

    def stopped(*a, **k):
        raise KeyboardInterrupt
    monkeypatch.setattr(T, "_train_in_group", stopped)
    capsys.readouterr()
    assert cli.main(["train", "--resume", "--out", str(target), "--epochs", "3", "--iwae-k",
                     "500", "--threads", "1", "--lr", "0.01", "--no-progress"]) == 130
    assert (f"--resume --out {target} --epochs 3 --iwae-k 500 --threads 1 --lr 0.01` "
            "continues") in _err_line(capsys)


def test_a_damaged_zip64_trailer_is_one_error_line(run, tmp_path, capsys):
    """zipfile's own check raises on a zip64 locator that says the archive spans disks."""
    path = _copy(run, tmp_path / "z") / CHECKPOINT_NAME
    raw = bytearray(path.read_bytes())
    i = raw.rfind(b"PK\x06\x07")
    if i < 0:
        pytest.skip("this torch writes no zip64 end locator")
    raw[i + 16] ^= 4      # its count of disks
    path.write_bytes(bytes(raw))
    capsys.readouterr()
    assert cli.main(["eval", str(path.parent), "--k", "0"]) == 2
    assert "truncated or corrupt" in _err_line(capsys)


def test_compile_without_a_cpp_compiler_is_one_line_and_a_resume_may_drop_it(
        run, tmp_path, capsys):
    """torch.compile's CPU code is C++: without a compiler --compile is refused before any
    training (one line, no run folder left), and a compiled run resumes with --no-compile."""
    from torch._inductor import config as inductor_config
    capsys.readouterr()
    with inductor_config.patch({"cpp.cxx": (None, str(tmp_path / "no-such-g++"))}):
        assert cli.main(["train", *TINY, "--iwae-k", "0", "--compile",
                         "--out", str(tmp_path / "fresh")]) == 2
        assert ("--compile: torch.compile's CPU code needs a working C++ compiler"
                in _err_line(capsys))
        assert not (tmp_path / "fresh").exists()
        compiled = _copy(run, tmp_path / "compiled", compile=True)
        resume = ["train", "--resume", "--out", str(compiled), "--epochs", "2",
                  "--no-progress", "--device", "cpu"]
        assert cli.main(resume) == 2
        assert "train without --compile (--no-compile on a resume)" in _err_line(capsys)
        assert cli.main(resume + ["--no-compile"]) == 0
    assert ("resuming with --no-compile (the checkpoint had --compile; inductor draws its "
            "own noise" in capsys.readouterr().out)
    config = torch.load(compiled / CHECKPOINT_NAME, weights_only=True)["config"]
    assert config["compile"] is False


def test_a_compiler_lost_mid_run_is_one_line_with_the_resume_command(tmp_path, capsys,
                                                                    monkeypatch):
    """InvalidCxxCompiler deep in an InductorError chain (the compiler gone after the
    check): one line, and the resume command that goes on without compiling."""
    from torch._inductor import exc

    def lost(args):
        try:
            raise exc.InvalidCxxCompiler()
        except exc.InvalidCxxCompiler as inner:
            e = RuntimeError("backend='inductor' raised: see above")
            e.__cause__ = inner
        (tmp_path / CHECKPOINT_NAME).write_bytes(b"")
        e.run_folder, e.resume_flags = str(tmp_path), ["--epochs", "3"]
        raise e

    monkeypatch.setattr(cli, "_cmd_train", lost)
    assert cli.main(["train"]) == 2
    line = _err_line(capsys)
    assert line.startswith("fastvae train: error: torch.compile needs a working C++ compiler (")
    assert (f"`fastvae train --resume --out {tmp_path} --epochs 3 --no-compile` continues the "
            "run") in line
