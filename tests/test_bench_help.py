"""``fastvae bench --help`` says what the flags take and do: --device takes what train,
eval and sample take (it said "cpu, cuda or auto", and took cuda:N and mps too), and --ops
names the ops --quick runs by default on each kind of device (it said "all")."""
import argparse

from fastvae import bench, cli
from fastvae.bench.grids import ops_of


def _help(parser, flag):
    return next(a.help for a in parser._actions if flag in a.option_strings)


def _bench_parser():
    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    return parser


def test_device_help_is_what_the_other_commands_say():
    subs = next(a for a in cli.build_parser()._actions
                if isinstance(a, argparse._SubParsersAction)).choices
    said = _help(subs["eval"], "--device")
    assert "cuda:N" in said and "mps" in said
    assert _help(_bench_parser(), "--device").startswith(said)
    assert _help(subs["sample"], "--device") == said
    assert _help(subs["train"], "--device").startswith(said)


def test_ops_help_names_the_quick_ops_of_each_device():
    said = " ".join(_help(_bench_parser(), "--ops").split())
    for device in ("cpu", "cuda"):
        quick = ops_of(argparse.Namespace(quick=True, ops=None), device)
        assert ", ".join(quick) in said, device
    assert set(ops_of(argparse.Namespace(quick=True, ops=None), "cpu")) != set(
        ops_of(argparse.Namespace(quick=True, ops=None), "cuda"))
