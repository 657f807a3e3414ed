"""The fused IWAE kernels (fastvae/kernels/iwae.py: one pass where a row's K x D fits on
chip, else two passes) against the eager reference.

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


def make(k, b, d, l, like, dtype=torch.float32, noncontig=False):
    x = torch.randn(b, d) if like.startswith("gaussian") else torch.rand(b, d)
    recon = torch.randn(k, b, d) * 2
    mu = torch.randn(b, l)
    lv = torch.randn(b, l) * 0.5
    z = mu + torch.exp(0.5 * lv) * torch.randn(k, b, l)
    obs = {"gaussian": 0.2, "gaussian_perdim": torch.randn(d) * 0.4,
           "gaussian_full": torch.randn(b, d) * 0.4}.get(like, 0.0)
    if isinstance(obs, torch.Tensor):
        obs = leaf(obs.to(DEVICE, dtype))
        if noncontig:
            obs = strided(obs)
    ts = [leaf(t.to(DEVICE, dtype)) for t in (x, recon, mu, lv, z)]
    if noncontig:
        ts = [strided(t) for t in ts]
    return (*ts, obs)


def strided(t):
    """A leaf with the same values and a non-contiguous layout the kernels read in place:
    padded rows (row stride > width) and, for (K, B, n), the samples interleaved per row
    (strides (n + 3, K * (n + 3), 1)); a (D,) tensor is a unit-stride slice of a wider one."""
    n = t.shape[-1]
    if t.dim() == 3:
        k, b = t.shape[:2]
        base = torch.zeros(b, k, n + 3, dtype=t.dtype, device=t.device)
        base[..., :n] = t.detach().transpose(0, 1)
        out = base.transpose(0, 1)[..., :n]
    else:
        base = torch.zeros(*t.shape[:-1], n + 3, dtype=t.dtype, device=t.device)
        base[..., 1:n + 1] = t.detach()
        out = base[..., 1:n + 1]
    out = out.detach().requires_grad_(t.requires_grad)
    assert t.dim() == 1 or not out.is_contiguous()
    return out


def iwae(x, recon, mu, lv, z, obs, like, reduction, backend):
    likelihood = "gaussian" if like.startswith("gaussian") else like
    return fastvae.iwae_bound(x, recon, mu, lv, z, likelihood=likelihood, obs_logvar=obs,
                              reduction=reduction, backend=backend)


ROW_KERNELS = ("iwae_onepass_kernel", "iwae_rows_kernel")


def check(k, b, d, l, like, reduction, dtype=torch.float32, noncontig=False, seen=None,
          path=None):
    """Values and gradients vs the fp64 oracle; with ``seen`` (the ``launches`` fixture)
    and ``path`` ("onepass" / "twopass"), also that exactly that row kernel ran, once."""
    x, recon, mu, lv, z, obs = make(k, b, d, l, like, dtype, noncontig)
    inputs = [x, recon, mu, lv, z, obs if isinstance(obs, torch.Tensor) else None]
    if seen is not None:
        del seen[:]
    got = iwae(x, recon, mu, lv, z, obs, like, reduction, "triton")
    if path is not None:
        rows = [n for n in seen if n in ROW_KERNELS]
        assert rows == [ROW_KERNELS[path != "onepass"]], seen
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
    [1, 4, 9], LIKES, ["none", "mean", "sum"])))
def test_iwae_every_option(seed, launches, k, like, reduction):
    # K <= 8: the one-pass kernel; K = 9: the two-pass one
    check(k, 3, 7, 5, like, reduction, seen=launches, path="onepass" if k <= 8 else "twopass")


# (K, B, D, L) per path, odd sizes; the two-pass ones exceed one of K <= 8, D <= 1024, L <= 128
ONEPASS_SHAPES = [(1, 3, 7, 5), (3, 5, 7, 3), (5, 4, 784, 32), (8, 2, 33, 128), (5, 3, 1024, 1)]
TWOPASS_SHAPES = [(9, 3, 7, 5), (3, 2, 1030, 3), (2, 3, 7, 129), (50, 2, 30, 4)]


@pytest.mark.parametrize("path,shape,like,reduction,dtype,noncontig", [
    *[("onepass", s, lk, r, dt, nc) for s, lk, r, dt, nc in [
        (ONEPASS_SHAPES[0], "gaussian_perdim", "mean", torch.float32, True),
        (ONEPASS_SHAPES[1], "continuous_bernoulli", "none", torch.bfloat16, False),
        (ONEPASS_SHAPES[1], "gaussian_full", "sum", torch.float32, True),
        (ONEPASS_SHAPES[2], "bernoulli", "sum", torch.float32, False),
        (ONEPASS_SHAPES[2], "gaussian_full", "mean", torch.bfloat16, True),
        (ONEPASS_SHAPES[2], "gaussian_perdim", "sum", torch.float32, False),
        (ONEPASS_SHAPES[3], "gaussian", "none", torch.float32, True),
        (ONEPASS_SHAPES[4], "bernoulli", "mean", torch.float32, False)]],
    *[("twopass", s, lk, r, dt, nc) for s, lk, r, dt, nc in [
        (TWOPASS_SHAPES[0], "gaussian_perdim", "mean", torch.bfloat16, True),
        (TWOPASS_SHAPES[1], "bernoulli", "none", torch.float32, True),
        (TWOPASS_SHAPES[2], "gaussian_full", "sum", torch.float32, False),
        (TWOPASS_SHAPES[3], "continuous_bernoulli", "mean", torch.float32, False)]],
])
def test_iwae_paths(seed, launches, path, shape, like, reduction, dtype, noncontig):
    check(*shape, like, reduction, dtype, noncontig=noncontig, seen=launches, path=path)


def test_iwae_onepass_reads_recon_once(launches, monkeypatch):
    """K=5, D=784 (the benchmark's shape): one row kernel, no (K, B) log-weight scratch,
    and the kernel's source loads recon_k at one place, outside any loop."""
    import ast
    import inspect
    import textwrap

    from fastvae.backends import triton_backend as tb
    from fastvae.kernels import iwae as ki
    allocs = []
    real = tb._alloc
    monkeypatch.setattr(tb, "_alloc", lambda shape, dtype, device:
                        allocs.append(tuple(shape)) or real(shape, dtype, device))
    k, b = 5, 3
    x, recon, mu, lv, z, obs = make(k, b, 784, 32, "bernoulli")
    v = iwae(x, recon, mu, lv, z, obs, "bernoulli", "none", "triton")
    assert launches == ["iwae_onepass_kernel"], launches
    assert (k, b) not in allocs, allocs
    del launches[:]
    torch.autograd.grad(v.sum(), [recon, mu, lv, z])
    assert launches == [], launches   # the gradients were written in the forward launch
    tree = ast.parse(textwrap.dedent(inspect.getsource(ki.iwae_onepass_kernel.fn)))
    loads = [n for n in ast.walk(tree) if isinstance(n, ast.Call)
             and getattr(n.func, "attr", None) == "load" and "R +" in ast.unparse(n.args[0])]
    assert len(loads) == 1
    assert not any(isinstance(n, (ast.For, ast.While)) for n in ast.walk(tree))
    # the two-pass kernel, for contrast: two loads of recon_k
    tree2 = ast.parse(textwrap.dedent(inspect.getsource(ki.iwae_rows_kernel.fn)))
    assert sum(1 for n in ast.walk(tree2) if isinstance(n, ast.Call)
               and getattr(n.func, "attr", None) == "load" and "R +" in ast.unparse(n.args[0])) == 2


@pytest.mark.parametrize("k,b,d,l", [(2, 257, 784, 16), (1, 1, 1, 1), (5, 4, 1003, 3),
                                     (3, 2, 4100, 2)])
def test_iwae_odd_sizes(seed, k, b, d, l):
    check(k, b, d, l, "continuous_bernoulli" if d > 1000 else "bernoulli", "mean")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("k", [3, 9])   # one pass, two passes
def test_iwae_low_precision(seed, dtype, k):
    check(k, 17, 100, 6, "gaussian_full", "sum", dtype=dtype)


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


@pytest.mark.parametrize("k", [4, 9])   # one pass, two passes
def test_iwae_launches_and_determinism(launches, k):
    x, recon, mu, lv, z, obs = make(k, 50, 60, 5, "gaussian_perdim")
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


@pytest.mark.parametrize("d", [1000, 2000])   # one pass, two passes
def test_iwae_large_log_weights_are_stable(seed, d):
    """log w of order -1e4: the logsumexp must not underflow to -inf."""
    x, recon, mu, lv, z, obs = make(6, 4, d, 3, "bernoulli")
    with torch.no_grad():
        recon.mul_(20)
    got = iwae(x, recon, mu, lv, z, obs, "bernoulli", "none", "triton")
    want = iwae(*oracle_inputs(x, recon, mu, lv, z), 0.0, "bernoulli", "none", "reference")
    assert torch.isfinite(got).all() and float(got.detach().max()) < -1000
    assert_close(got, want, torch.float32, "bound")


@pytest.fixture
def gpu_tiles():
    """The shipped GPU tiles (and warps) under the interpreter."""
    from fastvae.backends import triton_backend as tb
    old = tb.CONFIG_MODE
    tb.CONFIG_MODE = "gpu"
    yield tb
    tb.CONFIG_MODE = old


# every one-pass GPU tile (B > BLOCK_B where it has several rows: masked tail rows and
# per-program obs_logvar partials), the continuous Bernoulli's 8192-element fallback to
# two passes, and the two-pass tiles
@pytest.mark.parametrize("k,b,d,l,like,path", [
    (3, 33, 7, 70, "gaussian_perdim", "onepass"),        # 8x4x64
    (6, 9, 60, 128, "bernoulli", "onepass"),             # 4x8x64
    (2, 9, 200, 5, "gaussian_perdim", "onepass"),        # 4x4x256
    (7, 5, 256, 3, "continuous_bernoulli", "onepass"),   # 2x8x256
    (2, 3, 784, 3, "continuous_bernoulli", "onepass"),   # 1x4x1024
    (5, 2, 784, 32, "gaussian_full", "onepass"),         # 1x8x1024, 16 warps
    (5, 2, 784, 32, "continuous_bernoulli", "twopass"),  # 8192 elements: CB spills
    (9, 33, 7, 70, "bernoulli", "twopass"),
    (2, 2, 4100, 3, "gaussian_full", "twopass")])
def test_iwae_shipped_gpu_tiles(seed, launches, gpu_tiles, k, b, d, l, like, path):
    check(k, b, d, l, like, "mean", seen=launches, path=path)
    check(k, b, d, l, like, "none", seen=launches, path=path)


def test_iwae_onepass_gpu_configs_are_shipped(gpu_tiles):
    """Every one-pass configuration the host can launch on a GPU is one that
    tests/test_kernels_compile.py compiles (it checks the two-pass ones itself)."""
    tb = gpu_tiles
    names = {c["name"]: c for c in tb.shipped_configs()}
    hit = set()
    for k in (1, 2, 3, 4, 5, 8, 9, 50):
        for d in (1, 7, 64, 65, 256, 784, 1024, 1025):
            for l in (1, 32, 128, 129):
                for lik in range(4):
                    cfg = tb.iwae_onepass_config(256, k, d, l, lik)
                    if cfg is None:
                        assert k > 8 or d > 1024 or l > 128 or (lik == 1 and k > 4 and d > 256)
                        continue
                    bb, bk, bd, bl, warps = cfg
                    name = f"iwae_onepass[LIK={lik},{bb}x{bk}x{bd},L{bl}]"
                    assert name in names and names[name]["num_warps"] == warps, name
                    assert k <= bk and d <= bd and l <= bl
                    hit.add(name)
    assert hit == {n for n in names if n.startswith("iwae_onepass[")}
