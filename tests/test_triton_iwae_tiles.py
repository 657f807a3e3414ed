"""The Triton IWAE bound's launch configurations (triton_backend/iwae_configs.py):
its choice of kernel (one pass where a row's K x D fits on chip, the pair kernel, else two
passes: which one ran, what each reads) and every tile shipped for GPUs, run under the
interpreter too (``gpu_tiles``). That every configuration the host can pick is one
tests/test_kernels_compile.py compiles is checked there.

Runs where kernels run (tests/test_triton_interpreter.py runs this module under
TRITON_INTERPRET=1).
"""
import ast
import inspect
import textwrap

import pytest
import torch

from _backends import skip_unless_kernels_run

skip_unless_kernels_run()  # the whole module: one line in the report, not one per test

import fastvae  # noqa: E402
from fastvae.backends.triton_backend import iwae_configs  # noqa: E402
import triton.language as tl  # noqa: E402
from _addresses import own_elements  # noqa: E402
from _compare import assert_close, leaf, oracle  # noqa: E402
import _formulas as F  # noqa: E402
from _gpu_tiles import gpu_tiles  # noqa: E402,F401 (a fixture)
from _iwae import check as check_iwae  # noqa: E402
from _iwae import eager_fp32  # noqa: E402
from _iwae import make_like as iwae_inputs  # noqa: E402
from _iwae import row_kernel  # noqa: E402

F32 = torch.float32
# -- the IWAE bound: which kernel, and every shipped tile ----------------------------------------

@pytest.mark.parametrize("k,like", [(k, like) for k in (1, 4, 8, 9) for like in
                                    ("bernoulli", "continuous_bernoulli", "gaussian_full")])
def test_iwae_kernel_choice(seed, kernels, launches, k, like):
    """K <= 8 with small D and L: the one-pass kernel; K = 9: the two-pass one."""
    check_iwae("triton", k, 3, 7, 5, like, "mean")
    assert row_kernel(launches) == ("onepass" if k <= 8 else "twopass")


# (K, B, D, L) per path, odd sizes; the two-pass ones exceed one of K <= 8, D <= 1024, L <= 128
@pytest.mark.parametrize("path,shape,like,reduction,dtype,noncontig", [
    ("onepass", (1, 3, 7, 5), "gaussian_perdim", "mean", F32, True),
    ("onepass", (3, 5, 7, 3), "continuous_bernoulli", "none", torch.bfloat16, False),
    ("onepass", (3, 5, 7, 3), "gaussian_full", "sum", F32, True),
    ("onepass", (5, 4, 784, 32), "bernoulli", "sum", F32, False),
    ("onepass", (5, 4, 784, 32), "gaussian_full", "mean", torch.bfloat16, True),
    ("onepass", (5, 4, 784, 32), "gaussian_perdim", "sum", F32, False),
    ("onepass", (8, 2, 33, 128), "gaussian", "none", F32, True),
    ("onepass", (5, 3, 1024, 1), "bernoulli", "mean", F32, False),
    ("twopass", (9, 3, 7, 5), "gaussian_perdim", "mean", torch.bfloat16, True),
    ("twopass", (3, 2, 1030, 3), "bernoulli", "none", F32, True),
    ("twopass", (2, 3, 7, 129), "gaussian_full", "sum", F32, False),
    ("twopass", (16, 2, 30, 4), "continuous_bernoulli", "mean", F32, False),
    # one obs_logvar per sample: the two-pass kernel at any K
    ("twopass", (2, 5, 7, 3), "gaussian_samples", "mean", F32, True),
    ("twopass", (9, 3, 7, 5), "gaussian_samples", "none", torch.bfloat16, True),
])
def test_iwae_paths(seed, kernels, launches, path, shape, like, reduction, dtype, noncontig):
    check_iwae("triton", *shape, like, reduction, dtype, noncontig=noncontig)
    assert row_kernel(launches) == path


@pytest.mark.parametrize("path,shape,like,dtype,noncontig", [
    ("onepass", (3, 5, 7, 3), "continuous_bernoulli", torch.bfloat16, False),
    ("onepass", (5, 3, 784, 32), "gaussian_full", F32, True),
    ("onepass", (1, 3, 7, 5), "gaussian_perdim", F32, True),
    ("twopass", (9, 3, 7, 5), "gaussian_perdim", torch.bfloat16, True),
    ("twopass", (3, 2, 1030, 3), "bernoulli", F32, True),
    ("twopass", (2, 3, 7, 129), "gaussian_full", F32, False),
    ("twopass", (3, 5, 7, 3), "gaussian_samples", F32, True),
])
def test_iwae_paths_read_inside_their_inputs(seed, kernels, launches, gpu_tiles, path, shape,
                                             like, dtype, noncontig):
    """The one- and two-pass kernels, forward and backward, on the shipped tiles (rows and
    columns past B and D masked, strided inputs read in place): every load and store an
    element of the tensor its pointer came from (tests/_addresses.py)."""
    with own_elements():
        check_iwae("triton", *shape, like, "none", dtype, noncontig=noncontig)
    assert row_kernel(launches) == path


def _recon_loads(kernel):
    """The calls in a kernel's source that load from recon_k (the pointer R): ``load`` or
    ``load_f32`` of R or of ``r_ptr`` (a pointer into R advanced a block a step), or
    ``load_data`` (x, recon, obs_logvar) with R as its recon."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(kernel.fn)))

    def reads_r(n):
        name = ast.unparse(n.func).split(".")[-1]
        args = [ast.unparse(a).split(" ")[0] for a in n.args]
        return ((name in ("load", "load_f32") and args[:1] in (["R"], ["r_ptr"]))
                or (name == "load_data" and args[1:2] == ["R"]))
    return tree, [n for n in ast.walk(tree) if isinstance(n, ast.Call) and reads_r(n)]


def test_iwae_onepass_reads_recon_once(kernels, launches, monkeypatch):
    """K=5, D=784 (the benchmark's shape, x without a gradient): one row kernel (the pair
    kernel), no (K, B) log-weight scratch, the gradients written in the forward launch, and
    the one-pass kernels' sources load recon_k at one place each, outside any loop (the
    pair kernel's per piece of columns; the two-pass kernel, for contrast, in loops)."""
    from fastvae.backends.triton_backend import _launch
    from fastvae.kernels import iwae_bound as ki
    from fastvae.kernels import iwae_bound_pairs as kp
    allocs = []
    real = _launch.alloc
    monkeypatch.setattr(_launch, "alloc", lambda shape, dtype, device:
                        allocs.append(tuple(shape)) or real(shape, dtype, device))
    k, b = 5, 3
    (x, recon, mu, lv, z), _, _ = iwae_inputs(k, b, 784, 32, "bernoulli", F32)
    v = fastvae.iwae_bound(x.detach(), recon, mu, lv, z, backend="triton")
    assert launches == ["iwae_bound_pairs_kernel"], launches
    assert (k, b) not in allocs, allocs
    del launches[:]
    torch.autograd.grad(v.sum(), [recon, mu, lv, z])
    assert launches == [], launches
    # the pair kernel reads in _piece, once per piece of disjoint columns
    for kernel, n in ((ki.iwae_bound_onepass_kernel, 1), (kp._piece, 1),
                      (kp.iwae_bound_pairs_kernel, 0)):
        tree, loads = _recon_loads(kernel)
        assert len(loads) == n, kernel.fn.__name__
        assert not any(isinstance(n, (ast.For, ast.While)) for n in ast.walk(tree))
    # the Bernoulli's column loop, the other likelihoods', the masked tail (pass 2 reads
    # again in _grad_block)
    assert len(_recon_loads(ki.iwae_bound_rows_kernel)[1]) == 3


# every one-pass GPU tile (B > BLOCK_B where it has several rows: masked tail rows and
# per-program obs_logvar partials), the continuous Bernoulli's 8192-element fallback to
# two passes, and the two-pass tiles
@pytest.mark.parametrize("k,b,d,l,like,path", [
    (3, 33, 7, 70, "gaussian_perdim", "onepass"),        # 8x4x64 (Gaussians, D % 16)
    (3, 33, 48, 20, "bernoulli", "onepass"),             # 16x4x64 (L <= 32)
    (6, 9, 33, 5, "gaussian", "onepass"),                # 4x8x64
    (6, 9, 60, 128, "bernoulli", "onepass"),             # 4x8x64 (D not a multiple of 16)
    (5, 9, 64, 8, "bernoulli", "onepass"),               # 8x8x64, 16 latents
    (2, 9, 200, 5, "gaussian_perdim", "onepass"),        # 2x4x256
    (7, 5, 256, 3, "continuous_bernoulli", "onepass"),   # 2x8x256
    (4, 2, 300, 33, "gaussian_full", "onepass"),         # 1x4x512 (257-512 columns)
    (2, 3, 257, 3, "continuous_bernoulli", "onepass"),   # 1x4x512
    (2, 3, 784, 3, "continuous_bernoulli", "onepass"),   # 1x4x1024
    (5, 2, 784, 32, "gaussian_full", "onepass"),         # 1x8x1024, 16 warps
    (5, 2, 784, 32, "continuous_bernoulli", "twopass"),  # 8192 elements: CB spills
    (9, 33, 7, 70, "bernoulli", "twopass"),
    (2, 2, 4100, 3, "gaussian_full", "twopass")])
def test_iwae_shipped_gpu_tiles(seed, launches, gpu_tiles, k, b, d, l, like, path):
    for reduction in ("mean", "none"):
        del launches[:]
        check_iwae("triton", k, b, d, l, like, reduction)
        assert row_kernel(launches) == path


def test_iwae_onepass_latent_block_follows_l(gpu_tiles):
    """Where the latents are at least half a one-pass tile's work (BLOCK_D <= 2 *
    BLOCK_L), its BLOCK_L is L rounded up to a power of two, at least 16 and at least two
    latents a thread (fewer would repeat the latent math on the spare threads), at most
    the tile's own: the latents of D = 64, L = 8 are not a 128-wide tile. The 1024-column
    tiles keep theirs."""
    configs = gpu_tiles
    for lik in (configs.BERNOULLI, configs.CONTINUOUS_BERNOULLI, configs.GAUSSIAN_SCALAR,
                configs.GAUSSIAN_TENSOR):
        for k, d in ((2, 7), (5, 64), (4, 200), (8, 256), (3, 784), (8, 1024)):
            for l in (1, 8, 16, 17, 33, 64, 65, 128):
                got = iwae_configs.iwae_onepass_config(64, k, d, l, lik)
                if got is None:
                    continue
                bb, bk, bd, bl, warps = got
                full = next(t[3] for t in iwae_configs.iwae_onepass_tiles(lik)
                            if t[:3] == (bb, bk, bd))
                threads = 64 * warps   # two latents a thread
                if bd > 2 * full:
                    assert bl == full, (lik, k, d, l, got)
                    continue
                assert bl >= l and bl & (bl - 1) == 0 and bl <= full, (lik, k, d, l, got)
                assert bl == full or (bl >= 16 and bb * bk * bl >= threads), got
                half = bl // 2   # the smallest such power of two: half of it would not do
                assert bl == 16 or half < l or bb * bk * half < threads, (lik, k, d, l, got)
        assert iwae_configs.iwae_onepass_config(64, 5, 64, 8, lik)[3] < 128


def test_iwae_pairs_take_narrow_rows_where_the_one_pass_tiles_do_worse(gpu_tiles):
    """Rows of 129-256 columns: the pair kernel where D is a multiple of 16 and 2 <= K <= 8,
    for 16-bit inputs only from K = 5 (below, the one-pass tile pads K little and was
    faster); none at 128 columns or fewer. Above 256 columns its own limits hold."""
    configs = gpu_tiles
    bern = configs.BERNOULLI

    def pairs(k, d, size):
        return iwae_configs.iwae_pairs_config(64, k, d, 32, bern, False, size) is not None
    for d in (144, 192, 256):
        assert [k for k in range(1, 10) if pairs(k, d, 4)] == [2, 3, 4, 5, 6, 7, 8]
        assert [k for k in range(1, 10) if pairs(k, d, 2)] == [5, 6, 7, 8]
    for d in (64, 128, 129, 200, 255):
        assert not any(pairs(k, d, size) for k in range(1, 9) for size in (2, 4)), d
    assert pairs(16, 257, 2) and pairs(3, 784, 2)
    # one-row tiles narrower than a chunk (bf16's 256 columns): the tail alone
    assert iwae_configs.iwae_pairs_config(64, 5, 144, 32, bern, False, 2)[4] == (256, 0, 0, 256)


# the two-pass kernel's multi-row tiles (16 x 64; 32 x 64 for 16-bit Gaussians with a
# tensor obs_logvar): a padded last program (its log-weight scratch rows), full column
# blocks and a masked tail, none, two latent blocks, K not a power of two
@pytest.mark.parametrize("k,b,d,l,like,dtype,reduction", [
    (9, 17, 80, 70, "bernoulli", F32, "none"),
    (10, 33, 64, 5, "bernoulli", torch.bfloat16, "mean"),
    (11, 3, 70, 3, "gaussian_perdim", F32, "sum"),
    (12, 35, 70, 3, "gaussian_perdim", torch.bfloat16, "mean"),
    (5, 35, 70, 3, "gaussian_samples", torch.bfloat16, "mean"),
    (9, 17, 80, 70, "gaussian_samples", F32, "sum"),
])
def test_iwae_rows_tiles(seed, launches, gpu_tiles, k, b, d, l, like, dtype, reduction):
    check_iwae("triton", k, b, d, l, like, reduction, dtype)
    assert row_kernel(launches) == "twopass"


@pytest.mark.parametrize("dtype", [F32, torch.bfloat16])
def test_iwae_rows_extreme_logits(seed, launches, gpu_tiles, dtype):
    """Logits of +-120 in the two-pass kernel's tile: the sigmoid's 1 / (1 + 2^(-l log2 e))
    meets an overflow to inf (weight 0) and an underflow to 0 (weight 1); softplus stays
    exact; values and gradients as the float64 formula. bf16 takes pass 1's product of
    the ``1 + e`` factors (``LOG_OF_PRODUCT``, its fma a factor) and its unmasked loads
    (5 rows of a 16-row tile: the padded rows read the last)."""
    k, b, d, l = 9, 5, 70, 3
    (x, recon, mu, lv, z), _, _ = iwae_inputs(k, b, d, l, "bernoulli", dtype)
    with torch.no_grad():
        recon.mul_(40.0).clamp_(-120.0, 120.0)
        recon[:, :, :4] = torch.tensor([120.0, -120.0, 89.0, -89.0])
    got = fastvae.iwae_bound(x, recon, mu, lv, z, backend="triton")
    assert row_kernel(launches) == "twopass"
    o = oracle(x, recon, mu, lv, z)
    want = F.iwae(*o)
    # each term rounds to ~ulp(|l|), and the softmax carries that into the weights in any
    # fp32 implementation: the terms' size sets the value's scale, fp32 eager the gradients'
    assert_close("bound", got, want, dtype, scale=recon.detach().abs().sum(-1).max(0).values)
    g = torch.autograd.grad(got.sum(), [recon, mu, lv, z])
    e = torch.autograd.grad(want.sum(), o[1:5])
    eager = eager_fp32([x, recon, mu, lv, z])[1][1:5]
    for a, w, ee, name in zip(g, e, eager, ("recon_k", "mu", "logvar", "z_k")):
        assert torch.isfinite(a).all(), name
        assert_close(f"d/d{name}", a, w, dtype, eager=ee)


@pytest.mark.parametrize("like", ["bernoulli", "gaussian_samples"])
def test_iwae_rows_int64_offsets(seed, launches, gpu_tiles, monkeypatch, like):
    """The two-pass kernel's int64 offsets (INT64, where K*B*D can pass 2^31), taken here
    at a small shape by lowering the limit: the same values and gradients."""
    from fastvae.backends.triton_backend import iwae_bound as host
    monkeypatch.setattr(gpu_tiles, "INT32_LIMIT", 100)
    (x, recon, mu, lv, z), _, _ = iwae_inputs(9, 3, 20, 3, "bernoulli", F32)
    assert host._needs_int64(x, recon, mu, lv, z, x, 9, 3, 20, 3, 16, 0, 0)
    check_iwae("triton", 9, 3, 20, 3, like, "none")
    assert row_kernel(launches) == "twopass"


@pytest.fixture
def nan_in_masked_lanes(monkeypatch):
    """Under the interpreter, a masked load without ``other`` reads NaN where the GPU
    leaves whatever its registers held (the interpreter reads 0): a kernel that leaves
    masked lanes unset (the pair kernel's fp32 whole-chunk pieces; 16-bit ones load
    clamped rows unmasked) must drop them. Yields the dtypes of the loads so filled: only
    those with a lane masked off (the interpreter sends an unmasked load here too, with an
    all-true mask); a GPU's stand-in list is never empty."""
    from triton.runtime import interpreter
    from fastvae import _env
    builder = getattr(interpreter, "InterpreterBuilder", None)
    if not _env.interpreting() or not hasattr(builder, "create_masked_load"):
        yield [None]   # a GPU: its registers hold whatever they held
        return
    real, np, unset = builder.create_masked_load, interpreter.np, []

    def load(self, ptrs, mask, other, *args, **kwargs):
        ty = ptrs.get_element_ty()
        np_dtype = interpreter._get_np_dtype(ty)
        nan = (0x7FC0 if ty == tl.bfloat16   # held as uint16 bits here
               else np.nan if np.issubdtype(np_dtype, np.floating) else None)
        if other is None and nan is not None and not mask.data.all():
            unset.append(ty)
            other = interpreter.TensorHandle(np.full(ptrs.data.shape, nan, dtype=np_dtype), ty)
        return real(self, ptrs, mask, other, *args, **kwargs)
    monkeypatch.setattr(builder, "create_masked_load", load)
    yield unset


@pytest.fixture
def masked_lanes_nan(nan_in_masked_lanes):
    """:func:`nan_in_masked_lanes`, and a check that such a load ran."""
    yield
    assert nan_in_masked_lanes, "no masked load without other= ran"


# the pair kernel: (row, sample) pairs as tile rows (Bernoulli, x without a gradient;
# 256 < D <= 784, D a multiple of 16 above 512, K <= 16, L <= 64; 128 < D <= 256 a
# multiple of 16 with 2 <= K <= 8, K >= 5 in 16-bit): K not dividing 16 (a padded pair and
# a padded last program), K = 16 (one row a program), two rows of 7 in 16 (two pieces and
# a wide tail), rows narrower than a chunk (bf16: the tail alone), fp32 and bf16; bf16 at
# 512 <= D <= 784 (not 592-752) and L <= 32 is the row-warp kernel's
# (tests/test_triton_iwae_row_warps.py), here under the same NaN-filled masked lanes: a
# padded row of its last program
@pytest.mark.parametrize("k,b,d,l,like,dtype,reduction,path", [
    (5, 4, 300, 33, "bernoulli", F32, "none", "pairs"),
    (16, 2, 257, 3, "bernoulli", torch.bfloat16, "mean", "pairs"),
    (7, 5, 688, 64, "bernoulli", F32, "sum", "pairs"),
    (7, 5, 688, 64, "bernoulli", torch.bfloat16, "sum", "pairs"),
    (3, 7, 144, 20, "bernoulli", F32, "mean", "pairs"),
    (7, 5, 576, 20, "bernoulli", torch.bfloat16, "sum", "row_warps"),
])
def test_iwae_pairs(seed, launches, gpu_tiles, nan_in_masked_lanes, k, b, d, l, like, dtype,
                    reduction, path):
    _check_pairs(launches, k, b, d, l, like, dtype, reduction, path)
    # fp32 whole chunks load masked without other=; 16-bit ones load clamped rows unmasked
    # (the row-warp kernel's masked loads all set other=)
    assert nan_in_masked_lanes or dtype != F32, "no masked load without other= ran"


@pytest.mark.parametrize("d", [144, 192])
def test_iwae_pairs_tail_alone(seed, launches, gpu_tiles, d):
    """bf16 rows narrower than one 256-column chunk: one masked tail piece, no whole
    chunks (so no load leaves lanes unset: not under ``masked_lanes_nan``)."""
    _check_pairs(launches, 6, 5, d, 9, "bernoulli", torch.bfloat16, "none")


@pytest.mark.parametrize("k,b,d,l,dtype,path", [
    (7, 5, 688, 7, torch.bfloat16, "pairs"),    # a padded row and padded pairs
    (5, 1, 300, 7, torch.float16, "pairs"),     # B = 1: every row past the first is padding
    (5, 4, 300, 7, F32, "pairs"),               # fp32 keeps its masks
    (7, 5, 576, 7, torch.bfloat16, "row_warps"),  # 3 padded rows of a 4-row program
    (5, 1, 784, 7, torch.bfloat16, "row_warps"),
])
def test_iwae_pairs_read_inside_their_inputs(seed, launches, gpu_tiles, k, b, d, l, dtype,
                                             path):
    """Every lane a load of the pair and row-warp kernels reads is an element of the tensor
    its pointer came from: 16-bit whole chunks load a padded row unmasked, from row
    ``min(row, B - 1)``. Past B the GPU reads another allocation's bytes (recon_k's, say:
    inside the launch's tensors, yet not x's), or faults; the outputs alone would not show
    it (the padded pairs' and rows' values are dropped)."""
    with own_elements():
        _check_pairs(launches, k, b, d, l, "bernoulli", dtype, "none", path)


def _check_pairs(launches, k, b, d, l, like, dtype, reduction, path="pairs"):
    (x, recon, mu, lv, z), obs, likelihood = iwae_inputs(k, b, d, l, like, dtype)
    x = x.detach()
    obs = obs.detach() if isinstance(obs, torch.Tensor) else obs
    opts = dict(likelihood=likelihood, obs_logvar=obs, reduction=reduction)
    got = fastvae.iwae_bound(x, recon, mu, lv, z, backend="triton", **opts)
    assert row_kernel(launches) == path
    o = oracle(x, recon, mu, lv, z)
    want = F.iwae(*o, likelihood=likelihood, reduction=reduction,
                  obs_logvar=oracle(obs)[0] if isinstance(obs, torch.Tensor) else obs)
    ins = [x, recon, mu, lv, z, obs if isinstance(obs, torch.Tensor) else None]
    eager, eager_g = eager_fp32(ins, **opts)
    assert_close("bound", got, want, dtype, eager=eager)
    g = torch.autograd.grad(got.sum(), [recon, mu, lv, z])
    e = torch.autograd.grad(want.sum(), o[1:5])
    for a, w, ee, name in zip(g, e, eager_g[1:5], ("recon_k", "mu", "logvar", "z_k")):
        assert a.dtype == dtype, name
        assert_close(f"d/d{name}", a, w, dtype, rtol={F32: 1e-3}, eager=ee)


@pytest.mark.parametrize("estimator, prior, grads", [
    ("dreg", False, True),     # the softmax weights stored (STORE_WEIGHTS)
    ("standard", True, True),  # a learned prior's gradients per row
    ("standard", False, False),  # no gradient: d/dl not formed
], ids=["dreg", "prior", "value-only"])
def test_iwae_pairs_specializations(seed, launches, gpu_tiles, masked_lanes_nan, estimator,
                                    prior, grads):
    """The pair kernel's other switches, with padded pairs (K = 5, B = 4) whose unset
    lanes read NaN: the values and gradients of the "torch" backend on the same inputs."""
    k, b, d, l = 5, 4, 300, 33
    (x, recon, mu, lv, z), _, _ = iwae_inputs(k, b, d, l, "bernoulli", F32)
    x = x.detach()
    pm = leaf(torch.randn(b, l) * 0.5) if prior else None
    plv = leaf(torch.randn(b, l) * 0.5) if prior else None
    leaves = [t for t in (recon, mu, lv, z, pm, plv) if t is not None]
    outs = {}
    for backend in ("triton", "torch"):
        with torch.set_grad_enabled(grads):
            v = fastvae.iwae_bound(x, recon, mu, lv, z, prior_mu=pm, prior_logvar=plv,
                                   estimator=estimator, backend=backend)
        if backend == "triton":
            assert row_kernel(launches) == "pairs"
        # DReG stops log q's parameters: mu and logvar take no gradient (z_k is a leaf)
        outs[backend] = [v, *(torch.autograd.grad(v.sum(), leaves, allow_unused=True)
                              if grads else ())]
    for i, (a, w) in enumerate(zip(outs["triton"], outs["torch"])):
        assert a is None or torch.isfinite(a).all(), i
        assert_close(f"output {i}", a, w, F32, rtol={F32: 1e-4})
