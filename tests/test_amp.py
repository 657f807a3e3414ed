"""``fastvae train --amp``: the autocast dtype and the GradScaler per device (fastvae/amp.py)."""
import pytest
import torch

from fastvae import amp, cli


def test_off_is_off_everywhere():
    assert amp.amp_policy(False, torch.device("cpu")) == (None, False)
    assert amp.amp_policy(False, torch.device("cuda")) == (None, False)  # asks no CUDA


def test_cpu_is_bfloat16_without_a_scaler():
    assert amp.amp_policy(True, torch.device("cpu")) == (torch.bfloat16, False)


@pytest.mark.parametrize("capability,want", [((9, 0), (torch.bfloat16, False)),
                                             ((8, 0), (torch.bfloat16, False)),
                                             ((7, 5), (torch.float16, True)),
                                             ((6, 1), (torch.float16, True))])
def test_cuda_bf16_where_the_card_has_it_else_fp16_with_a_scaler(monkeypatch, capability, want):
    seen = []
    monkeypatch.setattr(torch.cuda, "get_device_capability",
                        lambda index=None: seen.append(index) or capability)
    assert amp.amp_policy(True, torch.device("cuda", 1)) == want
    assert seen == [1]  # the capability of the training device, not the current one


def test_flag_values_are_checked():
    with pytest.raises(TypeError, match="amp must be a bool"):
        amp.amp_policy("yes", torch.device("cpu"))
    with pytest.raises(ValueError, match="cuda or cpu"):
        amp.amp_policy(True, torch.device("meta"))


def test_describe():
    assert amp.describe(None, False) == "off"
    assert amp.describe(torch.float16, True) == "float16 autocast + GradScaler"
    assert amp.describe(torch.bfloat16, False) == "bfloat16 autocast"


def test_cli_flag_parses_and_documents_the_policy(capsys):
    args = cli.build_parser().parse_args(["train", "--amp"])
    assert args.amp is True
    assert cli.build_parser().parse_args(["train", "--no-amp"]).amp is False
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["train", "--amp=1"])
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["train", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "bf16 autocast where the card has bf16" in help_text


@pytest.mark.gpu
def test_cuda_amp_training_step_runs_in_the_chosen_dtype():
    dtype, scaler = amp.amp_policy(True, torch.device("cuda"))
    model = torch.nn.Linear(8, 8).cuda()
    with torch.autocast("cuda", dtype=dtype):
        y = model(torch.randn(4, 8, device="cuda"))
    assert y.dtype == dtype
    assert scaler == (dtype == torch.float16)
