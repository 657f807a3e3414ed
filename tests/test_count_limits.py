"""Sizes and counts past what any machine holds or finishes are refused when the flags are
parsed, naming the flag and the limit; the limit itself, and workable large values, pass.
Before, a size from 2**63 was torch's overflow traceback, an hvae's --groups 2**64 built
layers for weeks, and ``eval --k 10**12`` / ``train --iwae-k 10**12`` ran for ever."""
import pytest

from fastvae import options as o
from fastvae.cli import build_parser
from fastvae.train import train

HUGE = str(2 ** 64)


def _refused(argv, capsys, flag, limit):
    with pytest.raises(SystemExit) as e:
        build_parser().parse_args(argv)
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and len(err.splitlines()) == 1
    assert f"argument {flag}: must be at most {limit}" in err, err


@pytest.mark.parametrize("flag", ["--latent", "--hidden", "--channels", "--epochs",
                                  "--batch-size", "--k", "--n-mix", "--kl-warmup", "--iwae-k"])
def test_train_refuses_a_count_past_the_limit(flag, capsys):
    _refused(["train", flag, HUGE], capsys, flag, o.MAX_COUNT)
    _refused(["train", flag, str(o.MAX_COUNT + 1)], capsys, flag, o.MAX_COUNT)
    assert getattr(build_parser().parse_args(["train", flag, str(o.MAX_COUNT)]),
                   flag[2:].replace("-", "_")) in (o.MAX_COUNT, [o.MAX_COUNT])


def test_groups_past_their_limit_are_refused(capsys):
    _refused(["train", "--groups", HUGE], capsys, "--groups", o.MAX_GROUPS)
    assert build_parser().parse_args(["train", "--groups", "64"]).groups == 64


def test_eval_refuses_an_iwae_k_past_the_limit(capsys):
    _refused(["eval", "run", "--k", str(10 ** 12)], capsys, "--k", o.MAX_COUNT)
    assert build_parser().parse_args(["eval", "run", "--k", "100000"]).k == 100000


def test_bench_sizes_past_the_limit_are_refused():
    with pytest.raises(o.BadValue, match="must be at most 2147483647"):
        o.positive_ints(f"8,{HUGE}")


def test_workable_large_values_pass():
    args = build_parser().parse_args(["train", "--epochs", "100000", "--batch-size", "65536"])
    assert (args.epochs, args.batch_size) == (100000, 65536)


@pytest.mark.parametrize("key, value", [("hidden", [8, 2 ** 40]), ("latent", 2 ** 63),
                                        ("iwae_k", 10 ** 12), ("groups", 10 ** 6)])
def test_the_training_api_refuses_them_too(key, value, tmp_path):
    cfg = {"dataset": "digits", "out": str(tmp_path), key: value}
    if key == "groups":
        cfg["model"] = "hvae"
    with pytest.raises(ValueError, match=f"{key}: must be at most"):
        train(cfg)


@pytest.mark.parametrize("argv, flag", [(["eval", "run", "--limit"], "--limit"),
                                        (["sample", "run", "--n"], "--n/-n"),
                                        (["sample", "run", "-n"], "--n/-n"),
                                        (["sample", "run", "--ncol"], "--ncol")])
def test_eval_and_sample_counts_past_the_limit_are_refused(argv, flag, capsys):
    """``sample --n 10**14`` reached the picture's size check, ``eval --limit`` none at all:
    their counts have train's limit, said by the parser."""
    _refused([*argv, HUGE], capsys, flag, o.MAX_COUNT)
    _refused([*argv, str(o.MAX_COUNT + 1)], capsys, flag, o.MAX_COUNT)
    args = build_parser().parse_args([*argv, str(o.MAX_COUNT)])
    assert o.MAX_COUNT in (getattr(args, k, None) for k in ("limit", "n", "ncol"))
