"""``fastvae bench --gpu-train-step``: the large-batch GPU training-step case (B=65536,
MLP and Conv), and its clear refusal without CUDA."""
import pytest
import torch

from fastvae.bench import cli as bench_cli


def test_without_cuda_it_says_so_and_measures_nothing(monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(bench_cli, "measure_grid", lambda args: pytest.fail("measured"))
    assert bench_cli.main(["--gpu-train-step"]) == 2
    err = capsys.readouterr().err
    assert "--gpu-train-step: skipped, no CUDA device" in err


def test_on_another_device_it_refuses(monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(bench_cli, "measure_grid", lambda args: pytest.fail("measured"))
    assert bench_cli.main(["--gpu-train-step", "--device", "cpu"]) == 2
    assert "CUDA only, not --device cpu" in capsys.readouterr().err


@pytest.mark.parametrize("device", ["auto", "cuda:1"])
def test_with_cuda_it_runs_both_models_at_the_large_batch(monkeypatch, device):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    seen = []
    monkeypatch.setattr(bench_cli, "measure_grid", lambda args: seen.append(args) or [])  # no rows
    assert bench_cli.main(["--gpu-train-step", "--device", device, "--dtype", "bf16"]) == 0
    (args,) = seen
    assert args.ops == ["train_mlp", "train_conv"]
    assert args.batch == [65536] and args.dim == [784]
    assert args.device == ("cuda" if device == "auto" else device)
    assert args.dtype == ["bf16"]
