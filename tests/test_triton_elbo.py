"""The fused ELBO kernels (fastvae/kernels/elbo.py) against the eager reference.

Runs compiled on CUDA tensors when a GPU is present, else under TRITON_INTERPRET=1 on
CPU tensors (test_triton_interpreter.py runs this module that way). Every output
buffer starts as NaN (``poison``), so an element a kernel forgot to write fails.
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


def make(b, d, l, like, kl, dtype=torch.float32, gen=None, obs_grad=True):
    """Fresh random inputs on DEVICE; all floating inputs require grad."""
    dev = DEVICE
    x = torch.rand(b, d, generator=gen)
    if like.startswith("gaussian"):
        x = torch.randn(b, d, generator=gen)
    recon = torch.randn(b, d, generator=gen) * 3
    mu = torch.randn(b, l, generator=gen)
    lv = torch.randn(b, l, generator=gen) * 0.7
    z = (mu + torch.exp(0.5 * lv) * torch.randn(b, l, generator=gen)) if kl == "mc" else None
    obs = 0.0
    if like == "gaussian":
        obs = 0.3
    elif like == "gaussian_perdim":
        obs = leaf(torch.randn(d, generator=gen) * 0.5, obs_grad).to(dev)
    elif like == "gaussian_full":
        obs = leaf(torch.randn(b, d, generator=gen) * 0.5, obs_grad).to(dev)
    if isinstance(obs, torch.Tensor):
        obs = leaf(obs.to(dtype), obs_grad)
    ts = [leaf(t.to(dev, dtype)) if t is not None else None for t in (x, recon, mu, lv, z)]
    return (*ts, obs)


def run(x, recon, mu, lv, z, obs, like, kl, backend, **kw):
    likelihood = "gaussian" if like.startswith("gaussian") else like
    return fastvae.elbo(x, recon, mu, lv, likelihood=likelihood, kl=kl, z=z, obs_logvar=obs,
                        backend=backend, **kw)


def check(b, d, l, like, kl, reduction, beta=1.0, free_bits=0.0, dtype=torch.float32,
          weight=None):
    x, recon, mu, lv, z, obs = make(b, d, l, like, kl, dtype)
    inputs = [x, recon, mu, lv, z, obs if isinstance(obs, torch.Tensor) else None]
    kw = dict(reduction=reduction, beta=beta, free_bits=free_bits)
    got = run(x, recon, mu, lv, z, obs, like, kl, "triton", **kw)
    ref_in = oracle_inputs(*inputs)
    ref_obs = ref_in[5] if isinstance(obs, torch.Tensor) else obs
    want = run(*ref_in[:5], ref_obs, like, kl, "reference", **kw)
    assert got.dtype == torch.float32
    assert_close(got, want, dtype, "value")
    w_got = None if weight is None else weight.to(got.dtype)
    w_want = None if weight is None else weight.to(want.dtype)
    if w_got is None and got.dim():
        w_got, w_want = torch.ones_like(got), torch.ones_like(want)
    g_got = grads(got, inputs, w_got)
    g_want = grads(want, ref_in, w_want)
    for name, t, gg, gw in zip(("x", "recon", "mu", "logvar", "z", "obs"), inputs, g_got, g_want):
        if t is None:
            continue
        assert gg is not None and gg.dtype == t.dtype and gg.shape == t.shape, name
        assert torch.isfinite(gg).all(), f"d/d{name} has non-finite entries (unwritten?)"
        assert_close(gg, gw, dtype, f"d/d{name}")
    return got


# Every likelihood x kl x reduction x (plain, beta + free bits), on odd small sizes.
@pytest.mark.parametrize("like,kl,reduction,fb", list(itertools.product(
    LIKES, ["analytic", "mc"], ["mean", "sum", "none"], [False, True])))
def test_elbo_every_option(seed, like, kl, reduction, fb):
    check(3, 7, 5, like, kl, reduction, beta=0.7 if fb else 1.0, free_bits=0.55 if fb else 0.0)


@pytest.mark.parametrize("b,d,l", [(1, 1, 1), (257, 784, 32), (4, 1003, 7), (5, 1, 3), (2, 4100, 3)])
@pytest.mark.parametrize("like", ["bernoulli", "continuous_bernoulli", "gaussian_perdim"])
def test_elbo_odd_sizes(seed, b, d, l, like):
    check(b, d, l, like, "mc" if b % 2 else "analytic", "mean", free_bits=0.3 if b > 2 else 0.0)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("like,kl", [("bernoulli", "analytic"), ("continuous_bernoulli", "mc"),
                                     ("gaussian_full", "mc"), ("gaussian", "analytic")])
def test_elbo_low_precision_inputs(seed, dtype, like, kl):
    # Upcast at load: the value is fp32-accurate for the rounded inputs; gradients are
    # rounded once, on store, to the input dtype.
    check(33, 130, 9, like, kl, "sum", dtype=dtype)


def test_elbo_mixed_dtypes(seed):
    x = leaf(torch.rand(6, 50, device=DEVICE, dtype=torch.float16), False)
    recon = leaf(torch.randn(6, 50, device=DEVICE, dtype=torch.bfloat16))
    mu = leaf(torch.randn(6, 4, device=DEVICE))
    lv = leaf(torch.randn(6, 4, device=DEVICE))
    got = fastvae.elbo(x, recon, mu, lv, backend="triton")
    ref = oracle_inputs(x, recon, mu, lv)
    want = fastvae.elbo(*ref, backend="reference")
    assert_close(got, want, torch.bfloat16, "value")
    g = grads(got, [x, recon, mu, lv])
    gw = grads(want, ref)
    assert g[0] is None and g[1].dtype == torch.bfloat16 and g[2].dtype == torch.float32
    assert_close(g[1], gw[1], torch.bfloat16, "d/drecon")
    assert_close(g[3], gw[3], torch.float32, "d/dlogvar")


def test_elbo_non_contiguous_inputs(seed):
    """Row-strided slices (read in place through the row stride) and views whose columns
    are strided (copied to unit stride first); gradients land in the leaves' layouts."""
    b, d, l = 9, 40, 6
    xw = torch.rand(b, 2 * d, device=DEVICE)
    rt = leaf(torch.randn(d, b, device=DEVICE))                 # recon = rt.t(): column stride b
    muw = leaf(torch.randn(b, 3 * l, device=DEVICE))            # mu = muw[:, ::3]
    lvw = leaf(torch.randn(b, l + 5, device=DEVICE))            # logvar = lvw[:, 2:2+l]
    zw = leaf(torch.randn(2 * b, l, device=DEVICE))             # z = zw[::2]: row stride 2l
    for red in ("mean", "none"):
        args = (xw[:, :d], rt.t(), muw[:, ::3], lvw[:, 2:2 + l])
        assert not any(t.is_contiguous() for t in args)
        got = fastvae.elbo(*args, kl="mc", z=zw[::2], free_bits=0.2, reduction=red,
                           backend="triton")
        g = torch.autograd.grad(got.sum(), [rt, muw, lvw, zw])
        want = fastvae.elbo(*args, kl="mc", z=zw[::2], free_bits=0.2, reduction=red,
                            backend="reference")
        gw = torch.autograd.grad(want.sum(), [rt, muw, lvw, zw])
        assert_close(got, want, torch.float32, red)
        for name, a, w in zip(("recon", "mu", "logvar", "z"), g, gw):
            assert_close(a, w, torch.float32, f"d/d{name} ({red})")
        assert (g[1][:, 1::3] == 0).all() and (g[3][1::2] == 0).all()


def test_elbo_grad_output_scaled(seed):
    """grad_output != 1 scales the saved gradients (per row for reduction='none')."""
    check(5, 33, 4, "continuous_bernoulli", "analytic", "sum", weight=torch.tensor(2.5))
    check(5, 33, 4, "gaussian_full", "mc", "none", free_bits=0.4,
          weight=torch.linspace(-1, 2, 5, device=DEVICE))


def test_elbo_loss_module_and_scale(seed):
    x, recon, mu, lv, z, obs = make(4, 20, 3, "bernoulli", "analytic")
    loss = fastvae.ELBOLoss(backend="triton")(x, recon, mu, lv)
    want = -fastvae.elbo(*oracle_inputs(x, recon, mu, lv), backend="reference")
    assert_close(loss, want, torch.float32, "-ELBO")
    loss.backward()
    ref = oracle_inputs(x, recon, mu, lv)
    (-fastvae.elbo(*ref, backend="reference")).backward()
    assert_close(recon.grad, ref[1].grad, torch.float32, "d/drecon")
    assert_close(lv.grad, ref[3].grad, torch.float32, "d/dlogvar")


def test_elbo_is_deterministic(seed):
    """No float atomics: the same inputs give the same bits, value and gradients."""
    x, recon, mu, lv, z, obs = make(130, 300, 17, "gaussian_perdim", "mc")
    outs = []
    for _ in range(2):
        v = fastvae.elbo(x, recon, mu, lv, likelihood="gaussian", kl="mc", z=z, obs_logvar=obs,
                         free_bits=0.3, backend="triton")
        outs.append([v, *torch.autograd.grad(v, [recon, mu, lv, z, obs])])
    for a, b in zip(*outs):
        assert torch.equal(a, b)


@pytest.mark.parametrize("reduction,fb,want,bwd", [("none", 0.0, 1, 0), ("none", 0.5, 2, 0),
                                                   ("mean", 0.0, 2, 1), ("sum", 0.5, 2, 1)])
def test_elbo_launch_counts(launches, reduction, fb, want, bwd):
    """Forward: one row pass, plus one finish launch for a batch reduction or free bits.
    Backward: the saved gradients are the answer; a scalar grad_output takes one launch
    that scales them all (a (B,) one is torch's multiply)."""
    x, recon, mu, lv, z, obs = make(20, 30, 4, "gaussian_perdim", "mc")
    v = fastvae.elbo(x, recon, mu, lv, likelihood="gaussian", kl="mc", z=z, obs_logvar=obs,
                     free_bits=fb, reduction=reduction, backend="triton")
    assert len(launches) == want <= 2, launches
    del launches[:]
    v.sum().backward()
    assert launches == ["scale_grads_kernel"] * bwd


@pytest.mark.parametrize("factor", [1.0, -2.5])
def test_backward_never_reads_grad_output_on_the_host(monkeypatch, launches, factor):
    """Whether grad_output is 1 is decided in the kernel: a host read would be a GPU sync
    every step (and an error under CUDA-graph capture). Values as the reference's."""
    x, recon, mu, lv, z, obs = make(33, 70, 5, "gaussian_perdim", "mc")
    ins = [recon, mu, lv, z, obs]
    got = run(x, recon, mu, lv, z, obs, "gaussian_perdim", "mc", "triton", reduction="mean")
    ox, orecon, omu, olv, oz, oobs = oracle_inputs(x, recon, mu, lv, z, obs)
    want = run(ox, orecon, omu, olv, oz, oobs, "gaussian_perdim", "mc", "reference",
               reduction="mean")
    want_g = torch.autograd.grad(want * factor, [orecon, omu, olv, oz, oobs])

    def host_read(*_):
        raise AssertionError("backward read a tensor's value on the host")
    for name in ("__bool__", "item", "tolist", "__float__"):
        monkeypatch.setattr(torch.Tensor, name, host_read)
    del launches[:]
    got_g = torch.autograd.grad(got * factor if factor != 1.0 else got, ins)
    monkeypatch.undo()
    assert launches == ["scale_grads_kernel"]
    for g, w, name in zip(got_g, want_g, ("recon", "mu", "logvar", "z", "obs_logvar")):
        assert_close(g, w, torch.float32, f"d/d{name} x {factor}")


def test_retained_graph_backward_accumulates(seed):
    """With retain_graph the saved gradients must survive: they are scaled into new tensors."""
    x, recon, mu, lv, z, obs = make(9, 40, 3, "bernoulli", "analytic")
    v = fastvae.elbo(x, recon, mu, lv, reduction="sum", backend="triton")
    v.backward(retain_graph=True)
    g1 = recon.grad.clone()
    (2 * v).backward(retain_graph=True)
    v.backward()
    assert torch.equal(recon.grad, 4 * g1)


def test_elbo_saves_only_gradients(seed):
    """What autograd keeps for backward: the gradients (one per input), nothing else."""
    x, recon, mu, lv, z, obs = make(8, 50, 4, "bernoulli", "analytic")
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        fastvae.elbo(x, recon, mu, lv, backend="triton")
    big = [t for t in saved if t.numel() >= 8 * 50]
    assert sum(t.numel() for t in saved) <= 2 * 8 * 50 + 2 * 8 * 4 + 8, [t.shape for t in saved]
    assert len(big) <= 2


def test_elbo_forward_only_writes_no_gradients(launches):
    x, recon, mu, lv, z, obs = make(6, 10, 3, "bernoulli", "analytic")
    with torch.no_grad():
        v = fastvae.elbo(x, recon, mu, lv, backend="triton", reduction="none")
    assert torch.isfinite(v).all() and len(launches) == 1


def test_auto_backend_choice():
    assert fastvae.select_backend("auto", torch.device("cpu")) == "torch"
    if torch.cuda.is_available():
        assert fastvae.select_backend("auto", torch.device("cuda")) == "triton"
    assert fastvae.select_backend("triton", torch.device(DEVICE)) == "triton"
    x, recon, mu, lv, z, obs = make(2, 3, 2, "bernoulli", "analytic")
    fastvae.elbo(x, recon, mu, lv, backend="triton")
    assert fastvae.last_backend() == "triton"


@pytest.fixture
def gpu_tiles():
    """Launch with the tiles and warps shipped for GPUs (the ones test_kernels_compile.py
    builds), so their masking and loop bounds are checked too, not only the interpreter's."""
    from fastvae.backends import triton_backend as tb
    old = tb.CONFIG_MODE
    tb.CONFIG_MODE = "gpu"
    yield
    tb.CONFIG_MODE = old


@pytest.mark.parametrize("b,d,l,like,kl", [
    (33, 7, 70, "bernoulli", "mc"),                   # 32x64 tile, two row programs, L > BLOCK_L
    (9, 200, 5, "gaussian_perdim", "analytic"),       # 8x256 tile
    (3, 784, 130, "continuous_bernoulli", "analytic"),  # 2x1024 tile, L > BLOCK_L
    (2, 4100, 3, "gaussian_full", "mc"),              # 1x2048 tile, three column blocks
])
def test_elbo_shipped_gpu_tiles(seed, gpu_tiles, b, d, l, like, kl):
    check(b, d, l, like, kl, "mean", free_bits=0.5)
    check(b, d, l, like, kl, "none")


def test_backward_scale_strides_over_blocks(seed, gpu_tiles, launches):
    """The scale launch's grid is capped (4 programs off a GPU): with the shipped block of
    2048, d/drecon's 14 blocks are walked by striding programs; every element scaled."""
    from fastvae.backends import triton_backend as tb
    x, recon, mu, lv, z, obs = make(40, 700, 6, "bernoulli", "analytic")
    got = run(x, recon, mu, lv, z, obs, "bernoulli", "analytic", "triton", reduction="sum")
    del launches[:]
    g = torch.autograd.grad(got * 0.75, [recon, mu, lv])
    assert launches == ["scale_grads_kernel"]
    assert tb.triton.cdiv(recon.numel(), tb.SCALE_BLOCK) > tb._scale_programs(recon.device)
    ox, orecon, omu, olv = oracle_inputs(x, recon, mu, lv)
    want = run(ox, orecon, omu, olv, None, 0.0, "bernoulli", "analytic", "reference",
               reduction="sum")
    for a, w, name in zip(g, torch.autograd.grad(want * 0.75, [orecon, omu, olv]),
                          ("recon", "mu", "logvar")):
        assert_close(a, w, torch.float32, f"d/d{name}")
