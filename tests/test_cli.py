"""The ``fastvae`` command: help, train -> eval -> sample, errors, the bench hook."""
import json
import subprocess
import sys
import types

import pytest
import torch

from fastvae import cli

from _cli import TINY

TRAIN_FLAGS = ["--dataset", "--data-dir", "--model", "--latent", "--hidden", "--epochs",
               "--batch-size", "--lr", "--beta", "--kl", "--likelihood", "--backend", "--amp",
               "--compile", "--seed", "--device", "--out", "--resume", "--objective", "--k",
               "--estimator", "--n-mix"]


def test_python_m_fastvae_help():
    r = subprocess.run([sys.executable, "-m", "fastvae", "--help"], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    for cmd in ("train", "eval", "sample", "bench"):
        assert cmd in r.stdout


def test_train_help_documents_every_flag(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["train", "--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    for flag in TRAIN_FLAGS:
        assert flag in text, flag
    # every flag has its own help text (argparse would print the bare flag otherwise)
    parser = cli.build_parser()
    train = parser._subparsers._group_actions[0].choices["train"]
    assert all(a.help for a in train._actions)


@pytest.mark.parametrize("cmd", ["eval", "sample"])
def test_eval_and_sample_help_give_each_default_once(capsys, cmd):
    """A default in the help where it says something: never "(default: None)" for a flag
    off unless given, nor a second one where the help names its own."""
    with pytest.raises(SystemExit) as e:
        cli.main([cmd, "--help"])
    assert e.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "(default: None)" not in text and "(default: False)" not in text, text
    assert "(default: auto)" in text, text
    if cmd == "eval":
        assert "(default: the run's own) (default" not in text, text
        assert "(default: 1000)" in text, text


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
    assert cli.main(["train", "--hidden", "100000000000"]) == 2
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


def test_bench_hook_without_and_with_module(monkeypatch, capsys):
    """The hook works whether or not fastvae.bench exists; a fake stands in for it
    (the real module's own tests live in test_bench.py)."""
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


# -- every numeric flag is checked by argparse: exit 2, one line naming the flag, no work ---
BAD_VALUES = [
    ("train", "--batch-size", "0"), ("train", "--batch-size", "-4"),
    ("train", "--epochs", "-3"), ("train", "--epochs", "0"),
    ("train", "--latent", "0"), ("train", "--latent", "-1"),
    ("train", "--hidden", "0"), ("train", "--hidden", "32 -1"),
    ("train", "--channels", "0"), ("train", "--device", "tpu"), ("train", "--device", "meta"),
    ("train", "--device", "cuda:x"), ("train", "--lr", "0"), ("train", "--lr", "-1e-3"),
    ("train", "--lr", "nan"), ("train", "--lr", "inf"), ("train", "--lr", "1e300"),
    ("train", "--lr", "1e-300"), ("train", "--lr", "1e38"),
    ("train", "--beta", "-1"), ("train", "--beta", "1e39"),
    ("train", "--beta", "nan"), ("train", "--iwae-k", "-1"), ("train", "--threads", "-2"), ("train", "--threads", "100000"),
    ("train", "--seed", "-1"), ("train", "--seed", str(2 ** 63 - 1)),
    ("train", "--batch-size", "many"), ("train", "--n-mix", "0"),
    ("train", "--out", ""), ("sample", "--out", " "), ("sample", "--out", "x.txt"),
    ("sample", "--out", "x"), ("sample", "--out", "pngs/"),
    ("sample", "--ncol", "0"), ("sample", "--n", "0"), ("sample", "--seed", "-5"),
    ("sample", "--device", "tpu"),
    ("eval", "--limit", "-5"), ("eval", "--limit", "0"), ("eval", "--k", "-1"),
    ("eval", "--device", "tpu"),
]


@pytest.mark.parametrize("argv,prefix", [(["train", "--bogus"], "fastvae train: error"),
                                         (["eval", "run", "--bogus"], "fastvae eval: error"),
                                         (["--bogus"], "fastvae: error"),
                                         (["--bogus", "train"], "fastvae: error")])
def test_an_unknown_flag_is_named_by_its_command(capsys, argv, prefix):
    with pytest.raises(SystemExit) as e:
        cli.main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(prefix) and "--bogus" in err[0], err


@pytest.mark.parametrize("argv,flag", [(["train", "--iwae", "5"], "--iwae"),
                                       (["train", "--lat", "2"], "--lat"),
                                       (["eval", "run", "--lim", "3"], "--lim"),
                                       (["sample", "run", "--see", "3"], "--see"),
                                       (["bench", "--qui"], "--qui")])
def test_a_flag_is_never_taken_by_a_prefix(tmp_path, monkeypatch, capsys, argv, flag):
    """``--iwae 5`` was ``--iwae-k 5`` (the final estimate's K) on a run that trained the
    ELBO; every prefix is an unknown flag, refused before any folder is made."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as e:
        cli.main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"unrecognized arguments: {flag}" in err[0], err
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("command", ["eval", "sample"])
def test_an_empty_run_path_is_refused_not_read_as_the_current_folder(tmp_path, monkeypatch,
                                                                      capsys, command):
    """``fastvae eval "$RUN"`` with RUN unset read whatever run the current folder held."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as e:
        cli.main([command, ""])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "argument run: must name a folder or file, got ''" in err[0], err


@pytest.mark.parametrize("command,flag,value", BAD_VALUES)
def test_bad_flag_values_are_refused_by_argparse(tmp_path, capsys, monkeypatch, command, flag,
                                                 value):
    monkeypatch.chdir(tmp_path)
    run = [] if command == "train" else [str(tmp_path / "run")]
    with pytest.raises(SystemExit) as e:
        cli.main([command, *run, flag, *(value.split() or [value])])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err
    assert flag in err and "Traceback" not in err, err
    assert list(tmp_path.iterdir()) == []  # refused before anything was created


@pytest.mark.parametrize("make,out,needle", [
    (lambda d: (d / "afile").write_text(""), "afile/x.png", "afile is a file, not a folder"),
    (lambda d: (d / "d.png").mkdir(), "d.png", "cannot write d.png: it is a folder")])
def test_sample_refuses_an_out_it_cannot_write_before_any_work(tmp_path, capsys, monkeypatch,
                                                               make, out, needle):
    """An --out under a file, or naming a folder: one line at the flag, before the
    checkpoint is read or a sample drawn (it was the OS's EEXIST or EISDIR at the end)."""
    monkeypatch.chdir(tmp_path)
    make(tmp_path)
    with pytest.raises(SystemExit) as e:
        cli.main(["sample", "no-such-run", "--out", out])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "--out" in err and needle in err, err


def test_sample_checks_its_default_picture_in_the_run_folder_before_decoding(
        tmp_path, capsys, monkeypatch):
    """Without --out the picture goes into the run's folder; one that refuses new files is
    one line before any image is decoded, as a given --out is."""
    import tempfile

    from fastvae import models
    run = tmp_path / "run"
    assert cli.main(["train", *TINY, "--out", str(run)]) == 0
    capsys.readouterr()

    def refuse(**kw):
        raise PermissionError(13, "Permission denied")
    monkeypatch.setattr(tempfile, "mkstemp", refuse)
    for cls in vars(models).values():
        if isinstance(cls, type) and hasattr(cls, "sample_chunks"):
            monkeypatch.setattr(cls, "sample_chunks", lambda *a, **k: pytest.fail("decoded"))
    assert cli.main(["sample", str(run), "--n", "4"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "refuses new files" in err, err
    assert "samples-4-seed0.png" in err and "pass --out" in err
    assert not list(run.glob("samples-*"))


def test_a_file_to_write_in_a_folder_that_refuses_files_is_refused_first(tmp_path, monkeypatch,
                                                                       capsys):
    """os.access says yes to root for any folder, and /proc, /sys or a read-only mount
    still refuse a new file: bench --json found out only after the whole benchmark. The
    check makes (and removes) a file there; a folder that refuses it is one line at the
    flag, before any work."""
    import tempfile
    from fastvae import options as o

    def refuse(**kw):
        raise PermissionError(13, "Permission denied")
    monkeypatch.setattr(tempfile, "mkstemp", refuse)
    with pytest.raises(o.BadValue, match="refuses new files .Permission denied"):
        o.file_to_write(str(tmp_path / "x.json"))
    monkeypatch.undo()
    assert o.file_to_write(str(tmp_path / "x.json")) and list(tmp_path.iterdir()) == []
    with pytest.raises(SystemExit) as e:
        cli.main(["bench", "--ops", "elbo", "--batch", "4", "--dim", "8", "--latent", "2",
                  "--reps", "1", "--variants", "eager", "--no-extras",
                  "--json", "/proc/fastvae-check.json"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "--json" in err and "cannot write" in err, err


def test_a_file_to_write_may_be_in_folders_to_create(tmp_path):
    """The writers create missing folders (atomic_write): the nearest existing one is what
    the check looks at."""
    from fastvae import options as o
    for name in ("a/b/x.json", "a/b/x.png"):
        path = str(tmp_path / name)
        assert (o.png_file if name.endswith(".png") else o.file_to_write)(path) == path
    assert not (tmp_path / "a").exists()


@pytest.mark.parametrize("key,value", [("batch_size", 0), ("epochs", -3), ("latent", 0),
                                       ("hidden", [32, 0]), ("channels", [0]), ("lr", 0.0),
                                       ("beta", float("nan")), ("lr", 1e300), ("lr", 1e-300),
                                       ("lr", 1e38), ("iwae_k", -1),
                                       ("threads", -1), ("threads", 100000),
                                       ("device", "tpu"), ("seed", -1),
                                       ("n_mix", 0), ("out", "")])
def test_the_training_api_checks_its_settings_too(tmp_path, key, value):
    from fastvae import train as T

    with pytest.raises(ValueError, match=key):
        T.train({"out": str(tmp_path / "r"), "progress": False, key: value}, log=print)
    assert list(tmp_path.iterdir()) == []


def test_the_largest_lr_is_the_one_whose_first_adam_step_fits_float32():
    """Adam's first step is lr / (1 - 0.9): 1e38 is within float32 but its step is not, and
    torch raised an overflow RuntimeError from inside the optimizer."""
    from fastvae import options as o

    import math

    f32_max = torch.finfo(torch.float32).max
    largest = f32_max * (1 - 0.9)
    assert o.learning_rate(largest) == largest and largest / (1 - 0.9) <= f32_max
    with pytest.raises(o.BadValue, match=r"at most 3.403e\+37"):
        o.learning_rate(math.nextafter(largest, math.inf))


def test_good_edge_values_are_accepted():
    parser = cli.build_parser()
    args = parser.parse_args(["train", "--device", "cuda:1", "--iwae-k", "0", "--threads", "0",
                              "--beta", "0", "--seed", "0", "--lr", "1e-5", "--hidden", "8", "4"])
    assert (args.device, args.iwae_k, args.beta, args.hidden) == ("cuda:1", 0, 0.0, [8, 4])
    assert parser.parse_args(["eval", "r", "--k", "0"]).k == 0
    assert parser.parse_args(["sample", "r", "--out", "a/B.PNG"]).out == "a/B.PNG"


# -- optional dependencies are checked before any work ------------------------------------
@pytest.mark.parametrize("missing", ["matplotlib", "sklearn"])
def test_train_without_the_train_extra_fails_first(tmp_path, capsys, monkeypatch, missing):
    from fastvae import train as T

    monkeypatch.setitem(sys.modules, missing, None)  # as if not installed
    monkeypatch.setattr(T, "load_dataset", lambda *a, **k: pytest.fail("loaded data"))
    assert cli.main(["train", *TINY, "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert missing in err.replace("scikit-learn", "sklearn")
    assert "pip install 'fastvae[train]'" in err
    assert list(tmp_path.iterdir()) == []


def test_a_matplotlib_that_does_not_import_fails_first(tmp_path, capsys, monkeypatch):
    """Installed but broken (built against another numpy): found before training, not as
    a traceback after the whole run when the pictures are drawn (a review's find)."""
    from fastvae import plots
    from fastvae import train as T

    def broken():
        raise ImportError("numpy.core.multiarray failed to import")
    monkeypatch.setattr(plots, "pyplot", broken)
    monkeypatch.setattr(T, "load_dataset", lambda *a, **k: pytest.fail("loaded data"))
    assert cli.main(["train", *TINY, "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert err == ("fastvae train: error: fastvae train needs matplotlib (for the pictures), "
                   "which is installed but does not import: numpy.core.multiarray failed to "
                   "import\n")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("progress", [[], ["--no-progress"]])
def test_train_without_tqdm_trains_and_says_there_is_no_bar(tmp_path, capsys, monkeypatch,
                                                            progress):
    """tqdm only draws the progress bar: a run without it trains, with a note where the bar
    was asked for (it was silently dropped)."""
    from fastvae import train as T

    monkeypatch.setitem(sys.modules, "tqdm", None)  # as if not installed
    monkeypatch.setattr(T, "_train_in_group", lambda *a: {"stopped": "here"})
    argv = ["train", *[a for a in TINY if a != "--no-progress"], *progress]
    assert cli.main([*argv, "--out", str(tmp_path / "run")]) == 0
    out = capsys.readouterr().out
    note = "note: no progress bar: tqdm is not installed (pip install 'fastvae[train]'"
    assert (note in out) == (not progress), out


def test_sample_without_matplotlib_fails_first(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    assert cli.main(["sample", str(tmp_path / "nothing-here")]) == 2
    err = capsys.readouterr().err
    assert "matplotlib" in err and "pip install" in err and "no checkpoint" not in err, err


def test_a_cuda_device_that_is_not_there_is_named_as_asked(monkeypatch):
    import torch
    from fastvae.options import resolve_device
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match=r"--device cuda:99 asked for, but torch sees no CUDA"):
            resolve_device("cuda:99")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(ValueError, match=r"--device cuda:99 asked for, but torch sees 2 CUDA"):
        resolve_device("cuda:99")
    assert resolve_device("cuda:1") == torch.device("cuda", 1)


# -- pictures: normal-sized whatever the data's shape ---------------------------------------
def _png_size(path):
    from PIL import Image

    with Image.open(path) as im:
        return im.size


def test_flat_data_is_drawn_as_squares_at_the_size_of_its_images(tmp_path, capsys):
    """(N, 64) flat digits: the loader keeps them (1, 1, 64), the pictures show them 8x8
    at the digits' sizes (they were 1-pixel strips scaled up 48 times across the width:
    816 x 25,008 px here, 816 x 301,488 for (N, 784), and an OOM kill for (N, 4096))."""
    import numpy as np

    from fastvae.data import load_digits

    digits = load_digits()
    flat = torch.cat([digits.train, digits.test]).reshape(-1, 64).numpy()
    np.save(tmp_path / "flat.npy", flat)
    run = tmp_path / "run"
    assert cli.main(["train", *TINY, "--iwae-k", "0", "--dataset", str(tmp_path / "flat.npy"),
                     "--out", str(run)]) == 0
    assert json.loads((run / "metrics.json").read_text())["config"]["data_shape"] == [1, 1, 64]
    # 8 columns of 8x8 cells with 1-px borders, scaled 6x so a cell is 48 px
    assert _png_size(run / "reconstructions.png") == (438, 438)
    assert _png_size(run / "samples.png") == (438, 438)
    assert _png_size(run / "latent.png") == (816, 816)  # 15 x 15 cells
    png = tmp_path / "s.png"
    assert cli.main(["sample", str(run), "--n", "16", "--out", str(png)]) == 0
    assert _png_size(png) == (438, 6 * (2 * 9 + 1))


def test_a_grid_draws_flat_squares_as_squares_and_bounds_its_upscaling(tmp_path):
    from fastvae import plots

    g = torch.Generator().manual_seed(0)
    squares = torch.rand(10, 1, 7, 7, generator=g)
    plots.save_grid(squares, tmp_path / "a.png", ncol=4)
    plots.save_grid(squares.reshape(10, 1, 1, 49), tmp_path / "b.png", ncol=4)
    plots.save_grid(squares.reshape(10, 49), tmp_path / "c.png", ncol=4)
    assert (tmp_path / "a.png").read_bytes() == (tmp_path / "b.png").read_bytes() \
        == (tmp_path / "c.png").read_bytes()
    assert _png_size(tmp_path / "a.png") == (7 * (4 * 8 + 1), 7 * (3 * 8 + 1))
    # a strip of no square length stays a strip, its long side not scaled up
    strips = torch.rand(4, 1, 1, 1000, generator=g)
    plots.save_grid(strips, tmp_path / "d.png", ncol=2)
    assert _png_size(tmp_path / "d.png") == (2 * 1001 + 1, 2 * 2 + 1)
    # a short one is scaled up until its short side is visible, its long side within 512
    plots.save_grid(strips[:, :, :, :10], tmp_path / "e.png", ncol=2)
    assert _png_size(tmp_path / "e.png") == (48 * (2 * 11 + 1), 48 * (2 * 2 + 1))
    plots.save_grid(strips[:, :, :, :99], tmp_path / "f.png", ncol=2)
    assert _png_size(tmp_path / "f.png") == (5 * (2 * 100 + 1), 5 * (2 * 2 + 1))
    # many small images are scaled up only while the picture stays within its pixel budget
    assert plots.grid_size((64, 1, 8, 8), ncol=8) == (6 * 73, 6 * 73)
    w, h = plots.grid_size((16384, 1, 8, 8), ncol=128)
    assert (w, h) == (3 * 1153, 3 * 1153) and w * h <= plots.MAX_UPSCALED_PIXELS
    for images, ncol in ((squares, 4), (strips, 2), (strips[:, :, :, :10], 2)):
        plots.save_grid(images, tmp_path / "x.png", ncol=ncol)
        assert plots.grid_size(images, ncol) == _png_size(tmp_path / "x.png")


def test_sample_decodes_in_chunks_and_draws_no_more_columns_than_images(tmp_path, capsys,
                                                                        monkeypatch):
    """--n 100000 decoded every image at once (7 GB); --ncol 1000 --n 64 made a 54,006 px
    wide picture, mostly filler."""
    from fastvae import observation
    from fastvae.models import VAE

    run = tmp_path / "run"
    assert cli.main(["train", *TINY, "--iwae-k", "0", "--out", str(run)]) == 0
    capsys.readouterr()
    png = tmp_path / "s.png"
    assert cli.main(["sample", str(run), "--n", "10", "--ncol", "1000", "--out", str(png)]) == 0
    # 10 columns of 8x8 digits, 6x: (10 * 9 + 1) * 6 wide
    assert _png_size(png) == (546, 60)
    assert capsys.readouterr().out == f"wrote 10 samples to {png} (546 x 60 px)\n"
    batches = []
    decode = VAE.decode

    def counted(self, z):
        batches.append(len(z))
        return decode(self, z)
    monkeypatch.setattr(VAE, "decode", counted)
    assert cli.main(["sample", str(run), "--n", "120", "--out", str(tmp_path / "a.png")]) == 0
    assert batches == [120]  # a chunk is at least 64 images, else ~16 MiB of output
    batches.clear()
    monkeypatch.setattr(observation, "SAMPLE_CHUNK_MIN", 1)
    monkeypatch.setattr(observation, "SAMPLE_CHUNK_ELEMENTS", 50 * 64)
    assert cli.main(["sample", str(run), "--n", "120", "--out", str(tmp_path / "b.png")]) == 0
    assert batches == [50, 50, 20]
    # a picture past 16 megapixels even unscaled: refused before any decoding
    from fastvae import plots
    most = plots.most_images((1, 8, 8), 8)
    w, h = plots.grid_size((most, 1, 8, 8), 8)
    assert w * h <= plots.MAX_UPSCALED_PIXELS
    w, h = plots.grid_size((most + 1, 1, 8, 8), 8)
    assert w * h > plots.MAX_UPSCALED_PIXELS
    batches.clear()
    assert cli.main(["sample", str(run), "--n", str(most + 1), "--out",
                     str(tmp_path / "c.png")]) == 2
    err = capsys.readouterr().err
    assert err == (f"fastvae sample: error: --n {most + 1} makes a picture of {w} x {h} px, "
                   f"past the 16 megapixels a picture may have; draw at most {most} (at "
                   f"--ncol 8)\n") and batches == [] and not (tmp_path / "c.png").exists()
