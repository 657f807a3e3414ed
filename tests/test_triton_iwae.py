"""The fused IWAE kernel (fastvae/kernels/iwae.py) against the eager reference.

Compiled on CUDA when present, else under TRITON_INTERPRET=1 (see
test_triton_interpreter.py). Output buffers start as NaN (``poison``).
"""
import itertools

import pytest
import torch

pytest.importorskip("triton")
from _triton_testing import skip_module_unless_kernels_run  # noqa: E402

skip_module_unless_kernels_run()

import fastvae
from _triton_testing import (DEVICE, assert_close, grads, launches, leaf, needs_kernels,  # noqa: F401
                             oracle_inputs, poison)

pytestmark = [needs_kernels, pytest.mark.usefixtures("poison")]

LIKES = ["bernoulli", "continuous_bernoulli", "gaussian", "gaussian_perdim", "gaussian_full"]


def make(k, b, d, l, like, dtype=torch.float32):
    x = torch.randn(b, d) if like.startswith("gaussian") else torch.rand(b, d)
    recon = torch.randn(k, b, d) * 2
    mu = torch.randn(b, l)
    lv = torch.randn(b, l) * 0.5
    z = mu + torch.exp(0.5 * lv) * torch.randn(k, b, l)
    obs = {"gaussian": 0.2, "gaussian_perdim": torch.randn(d) * 0.4,
           "gaussian_full": torch.randn(b, d) * 0.4}.get(like, 0.0)
    if isinstance(obs, torch.Tensor):
        obs = leaf(obs.to(DEVICE, dtype))
    ts = [leaf(t.to(DEVICE, dtype)) for t in (x, recon, mu, lv, z)]
    return (*ts, obs)


def iwae(x, recon, mu, lv, z, obs, like, reduction, backend):
    likelihood = "gaussian" if like.startswith("gaussian") else like
    return fastvae.iwae_bound(x, recon, mu, lv, z, likelihood=likelihood, obs_logvar=obs,
                              reduction=reduction, backend=backend)


def check(k, b, d, l, like, reduction, dtype=torch.float32):
    x, recon, mu, lv, z, obs = make(k, b, d, l, like, dtype)
    inputs = [x, recon, mu, lv, z, obs if isinstance(obs, torch.Tensor) else None]
    got = iwae(x, recon, mu, lv, z, obs, like, reduction, "triton")
    ref = oracle_inputs(*inputs)
    want = iwae(*ref[:5], ref[5] if isinstance(obs, torch.Tensor) else obs, like, reduction,
                "reference")
    # the eager reference in fp32 on the same inputs: the softmax weights amplify fp32
    # rounding of large log-weights in any fp32 implementation
    ref32 = [None if t is None else t.detach().float().requires_grad_(t.requires_grad)
             for t in ref]
    eager = iwae(*ref32[:5], ref32[5] if isinstance(obs, torch.Tensor) else obs, like, reduction,
                 "reference")
    assert_close(got, want, dtype, "bound", eager=eager)
    wg = torch.linspace(0.5, 2.0, b, device=DEVICE) if got.dim() else None
    g = grads(got, inputs, wg)
    gw = grads(want, ref, None if wg is None else wg.double())
    ge = grads(eager, ref32, wg)
    for name, t, a, w, e in zip(("x", "recon_k", "mu", "logvar", "z_k", "obs"), inputs, g, gw, ge):
        if t is None:
            continue
        assert a.dtype == t.dtype and torch.isfinite(a).all(), name
        assert_close(a, w, dtype, f"d/d{name}", eager=e)


@pytest.mark.parametrize("k,like,reduction", list(itertools.product(
    [1, 4], LIKES, ["none", "mean", "sum"])))
def test_iwae_every_option(seed, k, like, reduction):
    check(k, 3, 7, 5, like, reduction)


@pytest.mark.parametrize("k,b,d,l", [(2, 257, 784, 16), (1, 1, 1, 1), (5, 4, 1003, 3),
                                     (3, 2, 4100, 2)])
def test_iwae_odd_sizes(seed, k, b, d, l):
    check(k, b, d, l, "continuous_bernoulli" if d > 1000 else "bernoulli", "mean")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_iwae_low_precision(seed, dtype):
    check(3, 17, 100, 6, "gaussian_full", "sum", dtype=dtype)


@pytest.mark.parametrize("like", ["bernoulli", "gaussian_perdim"])
def test_iwae_k1_is_the_mc_elbo(seed, like):
    x, recon, mu, lv, z, obs = make(1, 6, 30, 4, like)
    likelihood = "gaussian" if like.startswith("gaussian") else like
    b = fastvae.iwae_bound(x, recon, mu, lv, z, likelihood=likelihood, obs_logvar=obs,
                           reduction="mean", backend="triton")
    e = fastvae.elbo(x, recon[0], mu, lv, likelihood=likelihood, kl="mc", z=z[0], obs_logvar=obs,
                     reduction="mean", backend="triton")
    assert_close(b, e, torch.float32, "K=1 bound vs MC ELBO")
    ins = [recon, mu, lv, z] + ([obs] if isinstance(obs, torch.Tensor) else [])
    for a, w in zip(torch.autograd.grad(b, ins), torch.autograd.grad(e, ins)):
        assert_close(a, w, torch.float32, "gradient")


def test_iwae_launches_and_determinism(launches):
    x, recon, mu, lv, z, obs = make(4, 50, 60, 5, "gaussian_perdim")
    outs = []
    for reduction, want in (("none", 1), ("mean", 2), ("mean", 2)):
        del launches[:]
        v = iwae(x, recon, mu, lv, z, obs, "gaussian_perdim", reduction, "triton")
        assert len(launches) == want, launches
        del launches[:]
        g = torch.autograd.grad(v.sum(), [recon, mu, lv, z, obs])
        # backward: the saved gradients, scaled in one launch for a scalar grad_output
        assert launches == ([] if reduction == "none" else ["scale_grads_kernel"]), launches
        outs.append([v, *g])
    for a, b in zip(outs[1], outs[2]):
        assert torch.equal(a, b)


def test_iwae_forward_only_is_one_pass(launches):
    x, recon, mu, lv, z, obs = make(8, 5, 20, 3, "bernoulli")
    with torch.no_grad():
        v = iwae(x, recon, mu, lv, z, obs, "bernoulli", "none", "triton")
    assert torch.isfinite(v).all() and len(launches) == 1
    want = iwae(*oracle_inputs(x, recon, mu, lv, z), 0.0, "bernoulli", "none", "reference")
    assert_close(v, want, torch.float32, "bound")


def test_iwae_large_log_weights_are_stable(seed):
    """log w of order -1e4: the online logsumexp must not underflow to -inf."""
    x, recon, mu, lv, z, obs = make(6, 4, 2000, 3, "bernoulli")
    with torch.no_grad():
        recon.mul_(20)
    got = iwae(x, recon, mu, lv, z, obs, "bernoulli", "none", "triton")
    want = iwae(*oracle_inputs(x, recon, mu, lv, z), 0.0, "bernoulli", "none", "reference")
    assert torch.isfinite(got).all() and float(got.detach().max()) < -1000
    assert_close(got, want, torch.float32, "bound")


@pytest.mark.parametrize("k,b,d,l,like", [(3, 33, 7, 70, "bernoulli"), (2, 9, 200, 5, "gaussian_perdim"),
                                          (2, 3, 784, 3, "continuous_bernoulli"),
                                          (2, 2, 4100, 3, "gaussian_full")])
def test_iwae_shipped_gpu_tiles(seed, k, b, d, l, like):
    from fastvae.backends import triton_backend as tb
    old = tb.CONFIG_MODE
    tb.CONFIG_MODE = "gpu"
    try:
        check(k, b, d, l, like, "mean")
        check(k, b, d, l, like, "none")
    finally:
        tb.CONFIG_MODE = old
