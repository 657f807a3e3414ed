"""The Triton ELBO's launch configurations (fastvae/backends/triton_backend/configs.py): the
row tiles shipped for GPUs run under the interpreter too (``gpu_tiles``: their masking and
loop bounds, not only the interpreter's big tiles), the staged column loop, and the
backward scale launch striding over its blocks. That every configuration the host can pick
is one tests/test_kernels_compile.py compiles is checked there.

Runs where kernels run (tests/test_triton_interpreter.py runs this module under
TRITON_INTERPRET=1).
"""
import pytest
import torch

from _backends import skip_unless_kernels_run

skip_unless_kernels_run()  # the whole module: one line in the report, not one per test

import fastvae  # noqa: E402
import triton  # noqa: E402
import triton.language as tl  # noqa: E402
from fastvae.kernels.scale import blocks  # noqa: E402
from _addresses import own_elements  # noqa: E402
from _compare import assert_close, leaf, oracle  # noqa: E402
import _formulas as F  # noqa: E402
from _elbo import check_against_formula, make_like  # noqa: E402
from _gpu_tiles import gpu_tiles  # noqa: E402,F401 (a fixture)

F32 = torch.float32


# -- the ELBO's row tiles ---------------------------------------------------------------------

@pytest.mark.parametrize("b,d,l,like,kl", [
    (33, 7, 70, "bernoulli", "mc"),                   # 32x64 tile, two row programs, L > BLOCK_L
    (9, 200, 5, "gaussian_perdim", "analytic"),       # 8x256 tile
    (17, 100, 3, "bernoulli", "analytic"),            # 16x64 tile, two 32-wide tail steps
    (3, 784, 130, "continuous_bernoulli", "analytic"),  # 2x1024 tile, L > BLOCK_L
    (2, 4100, 3, "gaussian_full", "mc"),              # 1x2048 tile, three column blocks
])
def test_elbo_shipped_gpu_tiles(seed, gpu_tiles, b, d, l, like, kl):
    for reduction, fb in (("mean", 0.5), ("none", 0.0)):
        (x, recon, mu, lv, z), obs, likelihood = make_like(b, d, l, like, F32)
        check_against_formula(x, recon, mu, lv, z if kl == "mc" else None, "triton",
                              likelihood=likelihood, kl=kl, obs_logvar=obs, reduction=reduction,
                              free_bits=fb)


@pytest.mark.parametrize("b,d,l,like,prior", [
    (33, 784, 70, "bernoulli", False),       # 16 x 64 x 32: 32 latents a step, 3 steps
    (21, 7, 70, "gaussian_full", True),      # unaligned rows' half tile; a (B, L) prior
])
def test_elbo_int64_offsets(seed, gpu_tiles, launches, monkeypatch, b, d, l, like, prior):
    """The row kernel's int64 offsets (INT64, where B times a row's span passes 2^31) and
    their tile (32 latents a step: configs.elbo_config), taken here at a small shape by
    lowering the limit: the same values and gradients, with the MC KL and free bits."""
    from fastvae.backends.triton_backend import elbo
    monkeypatch.setattr(gpu_tiles, "INT32_LIMIT", 100)
    monkeypatch.setattr(elbo, "_PLANS", {})
    (x, recon, mu, lv, z), obs, likelihood = make_like(b, d, l, like, F32)
    opts = dict(prior_mu=leaf(torch.randn(b, l)), prior_logvar=leaf(torch.randn(b, l))) \
        if prior else {}
    for reduction, fb in (("mean", 0.5), ("none", 0.0)):
        check_against_formula(x, recon, mu, lv, z, "triton", likelihood=likelihood, kl="mc",
                              obs_logvar=obs, reduction=reduction, free_bits=fb, **opts)
    assert "elbo_rows_kernel" in launches


@pytest.mark.parametrize("b,l,prior,tile", [
    (37, 30, "BL", (32, 16, 32)),      # rows of a (B, 2L) output: half the fp32 tile's rows
    (37, 30, None, (32, 16, 32)),
    (21, 100, "L", (16, 16, 64)),      # two latent steps, a shared prior row
    (37, 64, "BL", (32, 16, 64)),      # aligned rows keep their tile
])
def test_kl_int64_offsets(seed, gpu_tiles, monkeypatch, b, l, prior, tile):
    """kl_standard_normal and kl_normal with int64 offsets (INT64) and their tile
    (configs.kl_config), taken here at a small shape by lowering the limit: the value
    and every gradient against the float64 formula, a cotangent other than ones."""
    from fastvae.backends.triton_backend import _launch
    monkeypatch.setattr(gpu_tiles, "INT32_LIMIT", 100)
    seen, real = [], _launch.launch

    def record(kernel, grid, **args):
        seen.append((args["INT64"], (args["BLOCK_B"], args["BLOCK_D"], args["BLOCK_L"])))
        return real(kernel, grid, **args)
    monkeypatch.setattr(_launch, "launch", record)
    h = leaf(torch.randn(b, 2 * l) * 2)
    shape = {"BL": (b, l), "L": (l,)}.get(prior)
    pm, plv = (leaf(torch.randn(shape) * 1.5) for _ in range(2)) if prior else (None, None)
    weight = torch.randn(b)
    if prior:
        got = fastvae.kl_normal(h[:, :l], h[:, l:], pm, plv, backend="triton")
    else:
        got = fastvae.kl_standard_normal(h[:, :l], h[:, l:], backend="triton")
    assert seen == [(True, tile)]
    ins = [t for t in (h, pm, plv) if t is not None]
    got_g = torch.autograd.grad((got * weight).sum(), ins)
    o = oracle(*ins)
    want = F.kl_normal_dim(o[0][:, :l], o[0][:, l:], *(o[1:] if prior else (0.0, 0.0)))
    want = want.expand(b, l).sum(-1)
    want_g = torch.autograd.grad((want * weight.double()).sum(), o)
    assert_close("kl", got, want, F32)
    for name, g, w in zip(("d/dh", "d/dprior_mu", "d/dprior_logvar"), got_g, want_g):
        assert_close(name, g, w, F32)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_elbo_16_bit_continuous_bernoulli_padded_latents(seed, gpu_tiles, dtype):
    """16 x 64 with the latents padded to 32 (configs.ELBO_MIN_BLOCK_L): L = 5, a padded
    row, MC KL, free bits."""
    (x, recon, mu, lv, z), obs, likelihood = make_like(17, 64, 5, "continuous_bernoulli",
                                                       dtype)
    for reduction, fb in (("mean", 0.5), ("none", 0.0)):
        check_against_formula(x, recon, mu, lv, z, "triton", likelihood=likelihood, kl="mc",
                              obs_logvar=obs, reduction=reduction, free_bits=fb)


@pytest.mark.parametrize("b,d,l,like,kl", [
    (33, 7, 70, "bernoulli", "mc"),                   # a 32-row tile's padded second program
    (9, 200, 5, "gaussian_full", "analytic"),         # 8x256: 7 padded rows, a column tail
    (3, 784, 130, "gaussian_perdim", "analytic"),     # 2x1024: a padded row, L > BLOCK_L
    (2, 4100, 3, "continuous_bernoulli", "mc"),       # 1x2048: three column blocks
])
def test_elbo_tiles_read_inside_their_inputs(seed, gpu_tiles, b, d, l, like, kl):
    """Forward and backward on the shipped tiles: every load and store of every launch an
    element of the tensor its pointer came from (tests/_addresses.py)."""
    (x, recon, mu, lv, z), obs, likelihood = make_like(b, d, l, like, F32)
    with own_elements():
        check_against_formula(x, recon, mu, lv, z if kl == "mc" else None, "triton",
                              likelihood=likelihood, kl=kl, obs_logvar=obs, reduction="none")


@pytest.mark.parametrize("like,prior,stages", [("bernoulli", False, 3),
                                               ("gaussian", False, 3),
                                               ("continuous_bernoulli", False, 1),
                                               ("bernoulli", True, 1)])
def test_elbo_staged_column_loop(seed, gpu_tiles, monkeypatch, like, prior, stages):
    """ELBO_STAGES > 1 (benchmarks/gpu_tiles.py's candidates) pipelines the column loop of
    the tiles ELBO_TILE_ELEMENTS gives, values and gradients as the formula's; a learned
    prior's fp32 tile and ELBO_TILE_BY_LIK's keep 1 (the sweep never timed them)."""
    from fastvae.backends.triton_backend import _launch, elbo
    monkeypatch.setitem(gpu_tiles.ELBO_STAGES, 4, 3)
    monkeypatch.setattr(elbo, "_PLANS", {})
    seen, inner = [], _launch.launch

    def record(kernel, grid, **args):
        if "STAGES" in args:
            seen.append(args["STAGES"])
        return inner(kernel, grid, **args)
    monkeypatch.setattr(_launch, "launch", record)
    (x, recon, mu, lv, _), obs, likelihood = make_like(5, 200, 3, like, F32)
    opts = dict(prior_mu=leaf(torch.randn(3)), prior_logvar=leaf(torch.randn(3))) if prior else {}
    check_against_formula(x, recon, mu, lv, None, "triton", likelihood=likelihood,
                          obs_logvar=obs, reduction="sum", **opts)
    assert seen and set(seen) == {stages}, seen


def test_backward_scale_strides_over_blocks(seed, gpu_tiles, launches, monkeypatch):
    """The scale launch's grid is capped (one program per SM on a GPU, 4 off it); capped
    here at 2 on every device, d/drecon's 6 blocks of the shipped 8192 are walked by
    striding programs (3 blocks each): every element scaled."""
    from fastvae.backends.triton_backend import _launch, scale
    monkeypatch.setattr(scale, "_programs", lambda device: 2)
    monkeypatch.setattr(scale, "_PLANS", {})  # a plan made under the real cap is not reused
    grids, inner = [], _launch.launch

    def record(kernel, grid, **args):
        grids.append((tuple(grid), -(-args["N0"] // args["BLOCK"]) if "N0" in args else None))
        return inner(kernel, grid, **args)
    monkeypatch.setattr(_launch, "launch", record)
    (x, recon, mu, lv, _), _, _ = make_like(48, 1000, 6, "bernoulli", F32)
    got = fastvae.elbo(x, recon, mu, lv, reduction="sum", backend="triton")
    del launches[:], grids[:]
    g = torch.autograd.grad(got * 0.75, [recon, mu, lv])
    assert launches == ["scale_grads_kernel"]
    assert grids == [((2,), 6)] and gpu_tiles.SCALE_BLOCK == 8192
    o = oracle(x, recon, mu, lv)
    want = torch.autograd.grad(F.elbo(*o, reduction="sum") * 0.75, o[1:])
    for a, w, name in zip(g, want, ("recon", "mu", "logvar")):
        assert_close(f"d/d{name}", a, w, F32)


@pytest.mark.parametrize("sizes", [(5, 20000, 7, 1, 8193, 3), (5, 20000, 0, 1, 8193, 3),
                                   (8192, 8192, 1, 0, 0, 0), (0, 0, 0, 0, 0, 24577)])
def test_backward_scale_walks_each_tensor_over_its_own_blocks(seed, gpu_tiles, monkeypatch,
                                                               sizes):
    """Every slot scaled (all six filled, or some empty: the others move up), whichever
    is largest and with the others one block: each tensor has its loop over its own
    blocks, the grid capped at 2 programs."""
    from fastvae.backends.triton_backend import scale
    monkeypatch.setattr(scale, "_programs", lambda device: 2)
    monkeypatch.setattr(scale, "_PLANS", {})
    dtypes = (torch.float32, torch.bfloat16, torch.float16) * 2
    grads = [torch.randn(n, dtype=dt) for n, dt in zip(sizes, dtypes)]
    want = [(g.float() * -0.375).to(g.dtype) for g in grads]
    scale.scale_saved_(grads, torch.tensor(-0.375))
    for g, w in zip(grads, want):   # the interpreter may round the last bit otherwise
        torch.testing.assert_close(g.float(), w.float(), rtol=2 ** -7, atol=0)


@triton.jit
def _count_blocks(OUT, N, BLOCK: tl.constexpr):
    tl.store(OUT, blocks(N, BLOCK))


def test_the_scale_loops_count_blocks_without_overflow(kernels):
    """A tensor of 2^31 - 1 elements has an int32 size: cdiv's N + BLOCK - 1 wrapped
    negative there, and its loop scaled nothing (2^31 - 8191 .. 2^31 - 1 elements)."""
    for n in (0, 1, 8191, 8192, 8193, 2 ** 31 - 8191, 2 ** 31 - 1):
        out = torch.zeros(1, dtype=torch.int64)
        _count_blocks[(1,)](out, n, BLOCK=8192)
        assert out.item() == -(-n // 8192), n
