"""The ``fastvae`` command end to end (train -> eval -> sample, a conv model on MNIST
files, the bench hook), and the errors a command meets while it works: one line, exit 2
(3 for a non-finite loss), never a traceback."""
import json
import sys
import types

import pytest
import torch

from fastvae import cli

from _cli import TINY


def test_train_eval_sample(tmp_path, capsys, monkeypatch):
    run = tmp_path / "run"
    assert cli.main(["train", *TINY, "--out", str(run)]) == 0
    out = capsys.readouterr().out
    assert "epoch   1/1" in out and "test elbo" in out
    assert (run / "latent.png").is_file() and (run / "metrics.json").is_file()
    assert cli.main(["eval", str(run), "--k", "5", "--json"]) == 0
    m = json.loads(capsys.readouterr().out)
    assert m["k"] == 5 and m["n_test"] == 359 and m["iwae_nll"] > 0 and m["elbo"] < 0
    png = tmp_path / "s.png"
    assert cli.main(["sample", str(run), "--n", "10", "--out", str(png)]) == 0
    assert png.is_file() and png.read_bytes()[:4] == b"\x89PNG"
    # by default one file per number and seed: another seed's draw replaces nothing
    for seed in ("0", "1"):
        assert cli.main(["sample", str(run), "--n", "4", "--seed", seed]) == 0
    assert (run / "samples-4-seed0.png").read_bytes() != (run / "samples-4-seed1.png").read_bytes()
    # numpy's MemoryError (the picture grid of a huge --n) is the out-of-memory line too
    from fastvae import plots

    def no_memory(*a, **k):
        raise MemoryError("Unable to allocate 46.6 GiB for an array with shape (10000000, 8)")
    with monkeypatch.context() as m:
        m.setattr(plots, "save_grid", no_memory)
        assert cli.main(["sample", str(run), "--n", "10", "--out", str(tmp_path / "x.png")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "out of memory (Unable to allocate" in err, err
    # --resume continues the same run to more epochs
    assert cli.main(["train", "--epochs", "2", "--out", str(run), "--resume", "--no-progress",
                     "--iwae-k", "0"]) == 0
    assert len(json.loads((run / "metrics.json").read_text())["epochs"]) == 2


def test_conv_on_mnist_idx_files_with_amp(tmp_path, capsys):
    """28x28 IDX files in torchvision's layout -> conv VAE, bf16 autocast, Gaussian
    likelihood with the MC KL: the whole path runs and the run can be evaluated."""
    import numpy as np

    from fastvae.data import write_idx

    raw = tmp_path / "data" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.RandomState(0)
    write_idx(raw / "train-images-idx3-ubyte.gz", rng.randint(0, 256, (48, 28, 28)).astype(np.uint8))
    write_idx(raw / "t10k-images-idx3-ubyte", rng.randint(0, 256, (8, 28, 28)).astype(np.uint8))
    run = tmp_path / "run"
    args = ["train", "--dataset", "mnist", "--data-dir", str(tmp_path / "data"), "--model", "conv",
            "--channels", "4", "8", "--hidden", "16", "--latent", "2", "--epochs", "1",
            "--batch-size", "16", "--amp", "--likelihood", "gaussian", "--kl", "mc",
            "--iwae-k", "3", "--no-progress", "--out", str(run)]
    assert cli.main(args) == 0
    m = json.loads((run / "metrics.json").read_text())
    assert m["config"]["data_shape"] == [1, 28, 28] and m["config"]["amp"] is True
    assert np.isfinite(m["final"]["test_iwae_nll"])
    capsys.readouterr()
    assert cli.main(["eval", str(run), "--k", "2", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["n_test"] == 8


def test_bench_hook_without_and_with_module(monkeypatch, capsys):
    """The hook works whether or not fastvae.bench exists; a fake stands in for it
    (the real module's own tests live in test_bench_*.py)."""
    import fastvae

    # `from . import bench` finds an already-imported submodule as a package
    # attribute first, so hide both the attribute and the sys.modules entry.
    monkeypatch.delattr(fastvae, "bench", raising=False)
    monkeypatch.setitem(sys.modules, "fastvae.bench", None)  # import fails
    assert cli.main(["bench"]) == 2
    assert "fastvae.bench is not available" in capsys.readouterr().err
    seen = {}
    fake = types.ModuleType("fastvae.bench")
    fake.main = lambda argv: seen.setdefault("argv", argv) and 0
    monkeypatch.setitem(sys.modules, "fastvae.bench", fake)
    monkeypatch.setattr(fastvae, "bench", fake, raising=False)
    assert cli.main(["bench", "--sizes", "big"]) == 0
    assert seen == {"argv": ["--sizes", "big"]}


def test_user_errors_are_one_line_not_tracebacks(tmp_path, capsys):
    assert cli.main(["train", *TINY, "--dataset", "mnist", "--data-dir", str(tmp_path),
                     "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "train-images-idx3-ubyte" in err and str(tmp_path) in err and "Traceback" not in err
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "checkpoint.pt").write_bytes(b"not a checkpoint")
    assert cli.main(["eval", str(tmp_path / "bad")]) == 2
    assert "not a readable fastvae checkpoint" in capsys.readouterr().err
    assert cli.main(["sample", str(tmp_path / "nothing")]) == 2
    assert "no checkpoint" in capsys.readouterr().err


@pytest.mark.parametrize("value,traceback", [("1", True), ("yes", True), ("0", False),
                                             ("false", False), ("off", False), ("", False)])
def test_fastvae_debug_0_keeps_the_one_line(tmp_path, capsys, monkeypatch, value, traceback):
    """FASTVAE_DEBUG shows the traceback; 0, false, no, off and empty mean off, as for
    FASTVAE_NATIVE (the out-of-memory line is read through the same switch)."""
    from fastvae import train as T
    monkeypatch.setenv("FASTVAE_DEBUG", value)
    if traceback:
        with pytest.raises(Exception, match="no checkpoint"):
            cli.main(["eval", str(tmp_path / "nothing")])
    else:
        assert cli.main(["eval", str(tmp_path / "nothing")]) == 2
        assert "no checkpoint" in capsys.readouterr().err

    def too_big(cfg):
        raise MemoryError("can't allocate memory")
    monkeypatch.setattr(T, "train", too_big)
    if traceback:
        with pytest.raises(MemoryError):
            cli.main(["train"])
    else:
        assert cli.main(["train"]) == 2
        assert "out of memory" in capsys.readouterr().err


@pytest.mark.skipif(torch.backends.mps.is_available(), reason="needs a torch without MPS")
def test_a_device_torch_cannot_use_is_one_line(tmp_path, capsys):
    assert cli.main(["train", *TINY, "--device", "mps", "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "--device mps asked for, but torch sees no MPS device" in err, err
    assert "Traceback" not in err and list(tmp_path.iterdir()) == []


def test_out_of_memory_is_one_line_and_other_runtime_errors_are_not_hidden(monkeypatch, capsys):
    from fastvae import train as T

    def too_big(cfg):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: "
                           "can't allocate memory: you tried to allocate 25600000000000 bytes.")
    monkeypatch.setattr(T, "train", too_big)
    assert cli.main(["train", "--hidden", "1000000000"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("fastvae train: error: out of memory") and err.count("\n") == 1, err
    def bug(cfg):
        raise RuntimeError("a bug")
    monkeypatch.setattr(T, "train", bug)
    with pytest.raises(RuntimeError, match="a bug"):
        cli.main(["train"])


def test_a_full_disk_behind_torch_compiles_error_is_one_line(monkeypatch, capsys, tmp_path):
    """torch.compile writes its cache as it compiles; on a full disk its InductorError
    (around the OSError) was a traceback, exit 1 (a review's find): now one line naming
    the cache and the way out, and the resume command where a checkpoint was kept."""
    import errno

    from fastvae import train as T

    class InductorError(RuntimeError):   # torch's, as far as the command can tell
        pass
    InductorError.__module__ = "torch._inductor.exc"

    def compile_on_full_disk(cfg):
        try:
            raise OSError(errno.EFBIG, "File too large")
        except OSError as inner:
            e = InductorError("OSError: [Errno 27] File too large")
            e.__cause__ = inner
            e.run_folder = str(tmp_path)
            raise e
    (tmp_path / "checkpoint.pt").write_bytes(b"")
    monkeypatch.setattr(T, "train", compile_on_full_disk)
    assert cli.main(["train", "--compile", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(
        "fastvae train: error: torch.compile could not write its cache (TORCHINDUCTOR_CACHE_DIR"
    ) and "File too large (EFBIG); free space there, or run without --compile; `fastvae " \
        f"train --resume --out {tmp_path}` continues the run" in err, err


def test_non_finite_loss_exits_non_zero(tmp_path, capsys):
    code = cli.main(["train", *TINY, "--lr", "1e30", "--out", str(tmp_path / "r")])
    assert code == 3
    err = capsys.readouterr().err
    assert "non-finite loss" in err and "epoch 1, step" in err
