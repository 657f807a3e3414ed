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


def test_compile_options_only_where_inductor_needs_them():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    fix = {"layout_optimization": False}
    assert amp.compile_options({"amp": True, "model": "hvae"}, cpu) == fix
    assert amp.compile_options({"amp": False, "model": "hvae"}, cpu) == {}
    assert amp.compile_options({"amp": True, "model": "conv"}, cpu) == {}
    assert amp.compile_options({"amp": True, "model": "hvae"}, cuda) == {}


def _upsampling_chain(h, w1, w2, w3):
    """The smallest graph inductor got wrong: two nearest upsamplings between 1x1
    convolutions, an activation, a 3x3 convolution (the hierarchical VAE's top-down path)."""
    import torch.nn.functional as F
    h = F.conv2d(F.interpolate(h, size=(4, 4), mode="nearest"), w1)
    h = F.conv2d(F.interpolate(h, size=(8, 8), mode="nearest"), w2)
    return F.conv2d(F.silu(h), w3, padding=1).float().square().sum()


def _chain_grads(device, options):
    """Gradients of the chain under bfloat16 autocast: eager's, and inductor's with
    ``options``."""
    g = torch.Generator().manual_seed(0)
    inputs = [(0.5 * torch.randn(shape, generator=g, device="cpu")).to(device).requires_grad_()
              for shape in ((16, 8, 2, 2), (8, 8, 1, 1), (8, 8, 1, 1), (1, 8, 3, 3))]
    compiled = torch.compile(_upsampling_chain, dynamic=False, options=options)
    grads = []
    for fn in (_upsampling_chain, compiled):
        with torch.autocast(device.type, dtype=torch.bfloat16):
            loss = fn(*inputs)
        grads.append(torch.autograd.grad(loss, inputs))
    return grads


def _assert_same_grads(eager, compiled):
    for e, c in zip(eager, compiled):   # bfloat16 products: a few units in the last place
        assert (c - e).abs().max() <= 0.03 * e.abs().max(), (c - e).abs().max()


def test_compiled_upsampling_chain_under_cpu_autocast_gets_eager_gradients():
    """torch 2.13's inductor, channels-last, gave the first two inputs a zero gradient."""
    options = amp.compile_options({"amp": True, "model": "hvae"}, torch.device("cpu"))
    _assert_same_grads(*_chain_grads(torch.device("cpu"), options))


@pytest.mark.gpu
def test_compiled_upsampling_chain_under_cuda_autocast_gets_eager_gradients():
    """Whether inductor's CUDA code needs the CPU's workaround: compiled without it."""
    _assert_same_grads(*_chain_grads(torch.device("cuda"), None))


def test_guard_under_a_grad_scaler_lets_it_skip_but_checks_the_steps_it_takes():
    """With a GradScaler (fp16 on CUDA) the guard left the gradients alone entirely: a
    skipped step (inf gradients) counted as an update since the checkpoint, and a finite
    gradient whose square overflows Adam's state went into it unseen (every later update
    of that weight 0, the run stopped only at the epoch's end)."""
    from fastvae.checkpoint import CHECKPOINT_NAME
    from fastvae.guard import Guard, NonFiniteLoss

    model = torch.nn.Linear(4, 1)
    guard = Guard(CHECKPOINT_NAME, 1, "out", 1e-3, check_grads=False, epochs=6)
    model.weight.grad = torch.full_like(model.weight, float("inf"))   # the scaler skips it
    model.bias.grad = torch.ones_like(model.bias)
    guard.step(model, 2, 1, 45)
    assert not guard.stepped   # no update: the weights are still the checkpoint's
    with pytest.raises(NonFiniteLoss, match=r"at epoch 2, step 2/45; it came at the weights "
                       r"of the last good checkpoint \(epoch 1, .*\) before any update"):
        guard.loss(float("nan"), 2, 2, 45)
    model.weight.grad = torch.full_like(model.weight, 3e19)   # finite: the scaler steps
    with pytest.raises(NonFiniteLoss, match=r"a gradient of 3e\+19, past 1.84e\+19, whose "
                       r"square overflows Adam's state, at epoch 2, step 3/45"):
        guard.step(model, 2, 3, 45)
    model.weight.grad = torch.ones_like(model.weight)
    guard.step(model, 2, 4, 45)
    assert guard.stepped
    with torch.no_grad():   # a skipped step leaves the weights; non-finite ones still stop
        model.weight[0, 0] = float("nan")
    model.weight.grad = torch.full_like(model.weight, float("nan"))
    with pytest.raises(NonFiniteLoss, match="weights after the optimizer step"):
        guard.step(model, 2, 5, 45)


def test_grad_scaler_run_saves_and_restores_its_scaler(monkeypatch, tmp_path):
    """The fp16 + GradScaler path (CUDA cards without bf16) run on the CPU: the scaler is
    made for the training device (a "cuda" one on a machine without CUDA disables itself,
    and the run had no scaler at all), its state goes into the checkpoint and a resume
    continues from it."""
    from fastvae import train as T

    monkeypatch.setattr(T, "amp_policy", lambda enabled, device:
                        (torch.bfloat16, True) if enabled else (None, False))
    out = tmp_path / "r"
    cfg = dict(out=str(out), epochs=1, batch_size=256, iwae_k=0, progress=False, amp=True,
               device="cpu")
    T.train(cfg, log=lambda *a, **k: None)
    saved = torch.load(out / "checkpoint.pt", weights_only=True)["scaler"]
    assert saved["scale"] == 2.0 ** 16 and saved["_growth_tracker"] == 6   # 6 steps taken
    T.train(dict(cfg, epochs=2, resume=True), log=lambda *a, **k: None)
    assert torch.load(out / "checkpoint.pt", weights_only=True)["scaler"]["_growth_tracker"] == 12
