"""Row-kernel tiles sized by what a thread keeps live, pinned where ptxas spilled at an
occupancy step only the ``full`` catalog tier compiles (benchmarks/RESULTS.md, "the last
spills of the full tier"):

* the Gaussian with a tensor obs_logvar: 4 data elements a thread in every dtype. fp32
  data at 8 a thread (16 x 64, 4 warps) spilled 4-8 bytes at 64-80 registers with a
  16-bit recon (autocast) and a learned 0-dim obs_logvar (Triton 3.6, sm_80); 16 x 64 at
  8 warps moved the spill to 48 registers on Triton 3.9;
* kl_standard_normal on rows not aligned to 16 (a load and a 64-bit address a latent):
  16-bit latents take the fp32 tile, 8 a thread (fp16 at L = 3, 16 a thread, spilled 4
  bytes at 72 registers, Triton 3.6, sm_90); aligned rows keep their 16-byte loads;
* the 16-bit continuous Bernoulli: latents at least 32 wide (16 x 16, two a thread,
  spilled 8 bytes at 64 registers: fp16, D = 64, L = 16, Triton 3.6, sm_80);
* one-pass IWAE rows of 257-512 columns at K <= 4: a 512-column tile (1 x 4 x 1024 at 8
  warps spilled 8 bytes at 80 registers: fp32 and fp16, B = 5, D = 300, L = 33, K = 4,
  Gaussian (B, 1) obs_logvar, training with d/dx, Triton 3.9, sm_80); the continuous
  Bernoulli's at 16 warps.

Where ptxas 13 (Triton 3.9) spilled at an occupancy step a tile change would cost issue
time to leave, the launch caps its registers one step down (``register_caps.MAXNREG``): the
two-pass IWAE's 16-bit Gaussian tile without an obs_logvar gradient (48 registers, 4-8
bytes, sm_80), the 16-bit continuous Bernoulli's ELBO evaluation on unaligned rows (72
registers, 4 bytes, sm_90) and the two-pass continuous Bernoulli's 16 x 64 x 64 tile (80
registers, 12 bytes, sm_90). Where Triton 3.6 spilled so, likewise: the two-pass 16-bit
16 x 64 x 32 tile in the Bernoulli's evaluation (64 registers, 8 bytes, sm_90) and the
Gaussian float obs_logvar's training with d/dz, without d/dx (48, 4 bytes, sm_80). A sweep
of every launch class of the two-pass kernel (RESULTS.md, "The two-pass IWAE kernel on
rows not aligned to 16") found more at D = 784, capped likewise, and every launch on rows
not aligned to 16 spilling: those take half the tile's rows and a cap of 96. The ELBO row
kernel's data rows not aligned to 16 take half the rows as well (the full tile took
128-255 registers in a third of its launches at D = 7, 30, 100), and a sweep of its
classes (RESULTS.md, "ELBO rows not aligned to 16") capped the occupancy-step spills it
found (a learned prior has caps of its own, int64 offsets one: 255), as one of the one-pass
IWAE kernel's classes did for it ("The one-pass IWAE kernel's launch classes"). Two-pass
launches with int64 offsets spilled at every occupancy step (40-168 registers): they take
caps of their own ("Two-pass IWAE launches with int64 offsets"). The row kernel as the KLs
run it, with int64 offsets, takes half the rows on unaligned rows and the ELBO's cap of 255
("KL rows with int64 offsets"). The classes tier's fp16 calls under Triton 3.6 found three
more on sm_90, each capped at the step its class's other launches reached ("The classes
tier under Triton 3.6: fp16, amp, DReG, an (L,) prior").
"""
from __future__ import annotations


import pytest
import torch

triton = pytest.importorskip("triton")
if not hasattr(triton, "knobs"):
    pytest.skip("the capture needs triton.knobs (Triton >= 3.4)", allow_module_level=True)

import fastvae  # noqa: E402
from fastvae.backends.triton_backend import _launch, configs, iwae_configs  # noqa: E402
from fastvae.bench.offline import capture  # noqa: E402
from fastvae.bench.offline import catalog  # noqa: E402
from fastvae.bench.offline import catalog_features, stand_ins  # noqa: E402
from _python_calls import python_calls  # noqa: E402


def _row_tile(fn, kernel="elbo_rows_kernel"):
    with capture.capturing((90,)) as rec:
        fn()
    (launch,) = [la for la in rec.launches if la.short == kernel]
    cx = launch.constexprs()
    return cx["BLOCK_B"], cx["BLOCK_D"], cx["BLOCK_L"], launch.options()["num_warps"]


@pytest.mark.parametrize("data, net", [(torch.float32, torch.float32),
                                       (torch.float32, torch.bfloat16),
                                       (torch.bfloat16, torch.bfloat16)])
def test_a_tensor_obs_logvar_takes_four_elements_a_thread(data, net):
    b, d, l = 4096, 784, 32
    x = torch.empty(b, d, dtype=data, requires_grad=True)
    recon = torch.empty(b, d, dtype=net, requires_grad=True)
    mu, lv = (torch.empty(b, l, dtype=net, requires_grad=True) for _ in range(2))
    obs = torch.zeros((), requires_grad=True)
    block_b, block_d, _, warps = _row_tile(lambda: fastvae.elbo(
        x, recon, mu, lv, likelihood="gaussian", obs_logvar=obs, backend="triton",
        validate=False).backward())
    assert block_b * block_d // (32 * warps) == 4


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("l", [3, 16, 32])
def test_16_bit_continuous_bernoulli_latents_at_least_32_wide(dtype, l):
    x, recon = (torch.empty(4096, 64, dtype=dtype, requires_grad=True) for _ in range(2))
    mu, lv = (torch.empty(4096, l, dtype=dtype, requires_grad=True) for _ in range(2))
    tile = _row_tile(lambda: fastvae.elbo(
        x, recon, mu, lv, likelihood="continuous_bernoulli", backend="triton",
        validate=False).backward())
    assert tile == (16, 64, 32, 4)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("l, per_thread", [(3, 8), (32, 16)])
def test_kl_latents_a_thread_by_row_alignment(dtype, l, per_thread):
    mu, lv = (torch.empty(7, l, dtype=dtype, requires_grad=True) for _ in range(2))
    block_b, _, block_l, warps = _row_tile(lambda: fastvae.kl_standard_normal(
        mu, lv, backend="triton", validate=False).sum().backward())
    assert block_b * block_l // (32 * warps) == per_thread


def test_kl_config_is_the_elbo_s_on_aligned_rows():
    """Unaligned rows take the fp32 tile, and with int64 offsets half its rows (the full
    one took 220-255 registers and spilled with a (B, L) prior: RESULTS.md, "KL rows with
    int64 offsets")."""
    assert configs.kl_config(7, 32, 2, False, 32, 32) == configs.elbo_config(7, 1, 32, 2)
    assert configs.kl_config(7, 3, 2, False, 3, 3) == configs.elbo_config(7, 1, 3, 4)
    for prior in (False, True):
        assert configs.kl_config(7, 32, 2, prior, 32, 32, True) == configs.elbo_config(
            7, 1, 32, 2, prior=prior)
        assert configs.kl_config(7, 30, 2, prior, 30, 60, True) == configs.elbo_config(
            7, 1, 30, 4, prior=prior, aligned=False)


def _elbo_tile(d, l, dtype, likelihood="bernoulli", x_cols=None, obs=0.0, b=5):
    """The ELBO row kernel's tile for (b, d) data rows, x a (b, x_cols) tensor's first d
    columns (a row stride of its own)."""
    x = torch.empty(b, x_cols or d, dtype=dtype)[:, :d]
    recon = torch.empty(b, d, dtype=dtype, requires_grad=True)
    mu, lv = (torch.empty(b, l, dtype=dtype, requires_grad=True) for _ in range(2))
    return _row_tile(lambda: fastvae.elbo(x, recon, mu, lv, likelihood=likelihood,
                                          obs_logvar=obs, backend="triton",
                                          validate=False).backward())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("likelihood", ["bernoulli", "continuous_bernoulli", "gaussian"])
@pytest.mark.parametrize("d, l", [(7, 3), (30, 70), (100, 32)])
def test_elbo_data_rows_not_aligned_to_16_take_half_the_rows(dtype, likelihood, d, l):
    """Each element its own load and 64-bit address: the full tile took 128-255
    registers in a third of the launches at D = 7, 30, 100 (RESULTS.md)."""
    aligned = d + 16 - d % 16
    full = _elbo_tile(aligned, l, dtype, likelihood)
    for half in (_elbo_tile(d, l, dtype, likelihood),   # D
                 _elbo_tile(aligned, l, dtype, likelihood, x_cols=aligned + 1)):  # x's stride
        assert (2 * half[0], *half[1:]) == full


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("d", [784, 16, 7])
def test_elbo_int64_offsets_take_32_latents_a_step(dtype, d):
    """The rows and columns the same shapes take with int32 offsets (the data's 16-byte
    loads), 32 latents a step: the 16-bit 32 x 64 x 64 MC training tile took 198-235
    registers with int64 offsets and spilled at 255 (ptxas 13, sm_90, D = 784, L = 70);
    half its rows kept 16 x 64 x 64 clean, but a prior's 16-bit tile so halved loaded 8
    bytes a thread (the compile test's vector check)."""
    full = _elbo_tile(d, 70, dtype)
    with stand_ins.int32_limit_lowered():   # plans are per shape: another L
        tile = _elbo_tile(d, 69, dtype, b=20)
    assert tile == (*full[:2], 32, full[3])
    assert configs.elbo_config(5, d, 20, 2, int64=True) == configs.elbo_config(5, d, 20, 2)


def test_elbo_latent_rows_alone_keep_the_full_tile():
    """The data's tile is the one the GPU timings chose; unaligned latents (L = 20) alone
    leave it, and a (D,) obs_logvar (no row stride) counts as aligned."""
    want = configs.elbo_config(5, 64, 20, 2)
    assert _elbo_tile(64, 20, torch.bfloat16) == want
    obs = torch.zeros(64, requires_grad=True)
    assert _elbo_tile(64, 32, torch.float32, "gaussian", obs=obs) == configs.elbo_config(
        5, 64, 32, 4, configs.GAUSSIAN_TENSOR)


@pytest.mark.parametrize("strides", [(32, 32), (3, 3), (32, 3)])
def test_kl_config_costs_one_call_over_the_elbo_s(strides):
    """Every kl_standard_normal call runs it on the host: its alignment test is one
    expression, not any() over a generator (four more calls, about 0.2 us a KL)."""
    size = 2 if strides == (32, 32) else 4
    assert python_calls(lambda: configs.kl_config(7, 3, 2, False, *strides)) == (
        python_calls(lambda: configs.elbo_config(7, 1, 3, size, prior=False)) + 1)



@pytest.mark.parametrize("likelihood, dtype, d, stride, warps, cap", [
    ("gaussian", torch.float32, 304, 304, 8, None),
    ("gaussian", torch.float16, 304, 304, 8, None),
    ("continuous_bernoulli", torch.bfloat16, 304, 304, 16, None),
    ("gaussian", torch.float32, 300, 300, 16, 255),
    ("gaussian", torch.float16, 304, 312, 16, 255),
    ("bernoulli", torch.bfloat16, 300, 300, 16, 255)])
def test_iwae_onepass_rows_of_257_to_512_columns_take_512(likelihood, dtype, d, stride,
                                                          warps, cap):
    """The continuous Bernoulli's 512-column tile at 8 warps spilled 8 bytes at 64
    registers (bf16, the same call, Triton 3.9, sm_80). Rows not aligned to 16 (D, or x's
    row stride) take 16 warps whatever the tile, and a 128-latent tile (this one) a cap of
    255 (iwae_configs.IWAE_ONEPASS_UNALIGNED_WARPS, register_caps.
    IWAE_ONEPASS_UNALIGNED_MAXNREG: at 8 warps 4-36 bytes spilled at 40-168 registers, at
    16 uncapped 4-12 at 40 and 64)."""
    b, l, k = 5, 33, 4
    x = torch.empty(b, stride, dtype=dtype)[:, :d].requires_grad_()
    recon = torch.empty(k, b, d, dtype=dtype, requires_grad=True)
    mu, lv = (torch.empty(b, l, dtype=dtype, requires_grad=True) for _ in range(2))
    z = torch.empty(k, b, l, dtype=dtype, requires_grad=True)
    obs = torch.zeros(b, 1, requires_grad=True) if likelihood == "gaussian" else 0.0
    with capture.capturing((90,)) as rec:
        fastvae.iwae_bound(x, recon, mu, lv, z, likelihood=likelihood, obs_logvar=obs,
                           reduction="none", backend="triton", validate=False).sum().backward()
    (launch,) = [la for la in rec.launches if la.short == "iwae_bound_onepass_kernel"]
    cx = launch.constexprs()
    assert ((cx["BLOCK_B"], cx["BLOCK_K"], cx["BLOCK_D"], cx["BLOCK_L"]),
            launch.options()["num_warps"]) == ((1, 4, 512, 128), warps)
    assert launch.options().get("maxnreg") == cap


@pytest.mark.parametrize("d, l, cap", [(100, 70, 255), (100, 32, None), (96, 70, None)])
def test_iwae_onepass_unaligned_rows_cap_the_128_latent_tiles(d, l, cap):
    """Rows not aligned to 16 take 16 warps; the 128-latent tiles among them a cap
    (ptxas spilled there at 40 and 64 registers uncapped), the others none (they did
    not spill, and a cap would cut their programs an SM)."""
    b, k = 64, 5
    args = [torch.empty(b, d, dtype=torch.bfloat16, requires_grad=True),
            torch.empty(k, b, d, dtype=torch.bfloat16, requires_grad=True),
            *(torch.empty(b, l, dtype=torch.bfloat16, requires_grad=True) for _ in range(2)),
            torch.empty(k, b, l, dtype=torch.bfloat16, requires_grad=True)]
    with capture.capturing((90,)) as rec:
        fastvae.iwae_bound(*args, likelihood="gaussian", obs_logvar=torch.zeros(d),
                           reduction="mean", backend="triton", validate=False).backward()
    (launch,) = [la for la in rec.launches if la.short == "iwae_bound_onepass_kernel"]
    assert launch.options()["num_warps"] == (16 if d % 16 else 8)
    assert launch.constexprs()["BLOCK_L"] == (128 if l > 64 else 64)
    assert launch.options().get("maxnreg") == cap


@pytest.mark.parametrize("l, offset, cap", [(3, 0, 168), (32, 0, None), (32, 1, 168)])
def test_iwae_sample_warps_unaligned_latents_cap(l, offset, cap):
    """The sample-warp kernel's latent rows not aligned to 16 (L = 3; or mu's base pointer
    off 16 bytes) take a cap (Triton 3.9's ptxas spilled there at 128 registers); aligned
    ones none (a cap would raise their registers: ptxas takes it as its target)."""
    b, d, k = 64, 784, 50
    mu = torch.empty(b * l + offset, dtype=torch.bfloat16)[offset:].view(b, l)
    args = [torch.empty(b, d, dtype=torch.bfloat16),
            torch.empty(k, b, d, dtype=torch.bfloat16, requires_grad=True),
            mu.requires_grad_(), torch.empty(b, l, dtype=torch.bfloat16, requires_grad=True),
            torch.empty(k, b, l, dtype=torch.bfloat16, requires_grad=True)]
    with capture.capturing((80,)) as rec:
        fastvae.iwae_bound(*args, reduction="mean", backend="triton",
                           validate=False).backward()
    (launch,) = [la for la in rec.launches if la.short == "iwae_bound_sample_warps_kernel"]
    assert launch.options().get("maxnreg") == cap


def test_iwae_onepass_512_column_tile_bounds(monkeypatch):
    """Every likelihood; K 5-8 and rows past 512 columns keep the 1024-column tiles."""
    monkeypatch.setattr(configs, "CONFIG_MODE", "gpu")
    for lik in (configs.BERNOULLI, configs.CONTINUOUS_BERNOULLI, configs.GAUSSIAN_SCALAR,
                configs.GAUSSIAN_TENSOR):
        for k in (1, 2, 3, 4, 5):
            for d in (256, 257, 300, 512, 513):
                got = iwae_configs.iwae_onepass_config(5, k, d, 33, lik)
                tile = got and got[1:3]
                assert (tile == (4, 512)) == (k <= 4 and 256 < d <= 512), (lik, k, d, got)


def _launches(calls, kernel):
    """The launches of ``kernel`` that ``calls`` (catalog entries) make."""
    with capture.capturing((80,)) as rec:
        for label, fn in calls:
            rec.label = label
            fn()
    return [la for la in rec.launches if la.short == kernel]


def _maxnreg(calls, kernel):
    """The maxnreg the launches of ``kernel`` in ``calls`` ask for (one answer)."""
    (cap,) = {la.options()["maxnreg"] for la in _launches(calls, kernel)}
    return cap


@pytest.mark.parametrize("dname, obs, mode, cap", [
    ("bf16", "0d", "eval", 64), ("fp16", "0d", "eval", 64), ("amp-bf16", "0d", "eval", 64),
    ("fp16", "1D", "train", 64),
    ("fp16", "0d", "train", None),   # learned: its gradient takes 64-80 registers
    ("fp32", "0d", "eval", None)])   # another tile
def test_iwae_two_pass_16_bit_gaussian_caps_registers_without_obs_gradient(dname, obs, mode,
                                                                            cap):
    calls = catalog.iwae_calls(((4096, 784, 32, 50),), (dname,), (("mean", mode),),
                               likelihoods=(("gaussian", obs, obs == "0d"),))
    assert _maxnreg(calls, "iwae_bound_rows_kernel") == cap


@pytest.mark.parametrize("dname, obs, mode, l, cap", [
    ("fp16", "BD", "train", 3, 80), ("bf16", "D", "train+x", 3, 80),
    ("fp16", "BD", "eval", 3, None),   # no obs_logvar gradient
    ("fp16", "BD", "train", 32, None)])   # another tile (32 latents)
def test_iwae_two_pass_16_bit_gaussian_obs_gradient_at_16_latents_caps_registers(
        dname, obs, mode, l, cap):
    """fp16 training spilled 4 bytes at 64 registers (B = 64, D = 784, L = 3, K = 9,
    Triton 3.9, sm_80); 80 holds the whole obs-gradient class of that tile."""
    calls = catalog.iwae_calls(((64, 784, l, 9),), (dname,), (("mean", mode),),
                               likelihoods=(("gaussian", obs, True),))
    assert _maxnreg(calls, "iwae_bound_rows_kernel") == cap


@pytest.mark.parametrize("shape, semantics, cap", [
    ((5, 64, 17), ("analytic", "sum", 0.5, "eval"), 80),   # unaligned latent rows only
    ((5, 64, 17), ("mc", "none", 0.0, "eval"), 80),
    ((13, 100, 17), ("analytic", "sum", 0.5, "eval"), None),    # data too: the half tile
    ((4096, 784, 32), ("analytic", "sum", 0.5, "eval"), None),   # aligned: 32-40 registers
    ((5, 64, 17), ("analytic", "mean", 0.0, "train"), None)])  # gradients: 106-128
@pytest.mark.parametrize("dname", ["bf16", "fp16"])
def test_16_bit_continuous_bernoulli_caps_registers_evaluating_unaligned_rows(
        dname, shape, semantics, cap):
    calls = catalog.elbo_calls((shape,), (dname,), (semantics,),
                               likelihoods=(("continuous_bernoulli", "", False),))
    assert _maxnreg(calls, "elbo_rows_kernel") == cap


GAUSS_D = ("gaussian", "D", True)


@pytest.mark.parametrize("shape, dname, lik, semantics, cap", [
    # the 16-bit Bernoulli's half tile at D < 16, evaluating (Triton 3.6, sm_90: 72, 4 bytes)
    ((7, 7, 3), "bf16", ("bernoulli", "", False), ("analytic", "none", 0.0, "eval"), 128),
    # and its training with d/dz (fp16, MC KL: 96, 12 bytes, Triton 3.6, sm_90)
    ((7, 7, 3), "fp16", ("bernoulli", "", False), ("mc", "mean", 0.0, "train"), 128),
    ((7, 7, 3), "bf16", ("bernoulli", "", False), ("analytic", "mean", 0.0, "train"),
     None),   # no d/dz: 96-110, none spilling
    ((7, 7, 3), "bf16", ("bernoulli", "", False), ("mc", "mean", 0.0, "train+x"), None),
    ((7, 7, 3), "fp32", ("bernoulli", "", False), ("analytic", "none", 0.0, "eval"), None),
    # 64 unaligned latents a step at D <= 32 with d/dz or d/dx (Triton 3.6, sm_90: 96)
    ((5, 30, 70), "fp32", ("bernoulli", "", False), ("mc", "mean", 0.0, "train"), 128),
    ((5, 7, 70), "bf16", ("gaussian", "float", False), ("mc", "mean", 0.0, "train"), 128),
    ((5, 7, 70), "fp32", ("gaussian", "float", False), ("analytic", "mean", 0.0, "train+x"),
     128),
    ((5, 30, 70), "fp16", ("continuous_bernoulli", "", False), ("mc", "mean", 0.0, "train"),
     128),
    ((5, 30, 70), "fp32", ("bernoulli", "", False), ("analytic", "mean", 0.0, "train"), None),
    ((5, 30, 70), "bf16", ("continuous_bernoulli", "", False),   # ptxas 13, sm_90: 72
     ("analytic", "mean", 0.0, "train+x"), 128),
    ((5, 30, 70), "bf16", ("continuous_bernoulli", "", False),
     ("analytic", "mean", 0.0, "train"), None),
    # its 32-latent tile at D < 16 with d/dz (fp16, ptxas 13, sm_90: 56, 8 bytes)
    ((5, 7, 32), "fp16", ("continuous_bernoulli", "", False), ("mc", "mean", 0.0, "train"),
     128),
    ((5, 7, 32), "fp16", ("continuous_bernoulli", "", False),
     ("analytic", "mean", 0.0, "train"), None),
    # the 16-bit Gaussian float's at D < 16 with free bits (Triton 3.6, sm_90: 96, 8
    # bytes), at D >= 64 with the MC KL (fp16, Triton 3.6, sm_80: 72, 4 bytes)
    ((7, 7, 3), "bf16", ("gaussian", "float", False), ("analytic", "none", 0.5, "train"), 128),
    ((7, 7, 3), "bf16", ("gaussian", "float", False), ("analytic", "none", 0.5, "eval"), None),
    ((5, 784, 3), "fp16", ("gaussian", "float", False), ("mc", "mean", 0.0, "train"), 80),
    ((5, 784, 3), "fp16", ("gaussian", "float", False), ("analytic", "mean", 0.0, "train"),
     None),
    # the fp32 Gaussian float's 16 x 64 x 64 with d/dz (free bits, Triton 3.6, sm_90: 80)
    ((5, 784, 70), "fp32", ("gaussian", "float", False), ("mc", "none", 0.5, "train"), 128),
    ((5, 784, 70), "fp32", ("gaussian", "float", False), ("analytic", "none", 0.5, "train"),
     None),
    # the 16-bit tensor obs_logvar's gradient with d/dx (ptxas 13, sm_80: 48, 4 bytes)
    ((5, 784, 32), "bf16", GAUSS_D, ("analytic", "mean", 0.0, "train+x"), 64),
    ((5, 784, 3), "fp16", ("gaussian", "BD", True), ("mc", "mean", 0.0, "train+x"), 64),
    ((5, 30, 70), "bf16", GAUSS_D, ("analytic", "mean", 0.0, "train+x"), 64),
    ((5, 784, 32), "bf16", GAUSS_D, ("analytic", "mean", 0.0, "train"), None),
    ((5, 784, 32), "bf16", ("gaussian", "D", False), ("analytic", "mean", 0.0, "train+x"),
     None)])
def test_elbo_rows_cap_registers_in_the_class_that_spilled(shape, dname, lik, semantics, cap):
    """From a sweep of every ELBO launch class at D = 7, 30, 100, 784 and L = 3, 32, 70
    under both Tritons (RESULTS.md, "ELBO rows not aligned to 16")."""
    calls = catalog.elbo_calls((shape,), (dname,), (semantics,), likelihoods=(lik,))
    assert _maxnreg(calls, "elbo_rows_kernel") == cap


def test_elbo_rows_caps_of_a_learned_prior_and_of_int64_offsets():
    """A prior's launches take their own caps: the MC training at D = 30, L = 70 spilled
    8-104 bytes at the 128 cap of the same tile without a prior (Triton 3.6), and the 16-bit
    Gaussian float's at D < 16, L > 32 takes 168 (128 uncapped: 4 bytes, ptxas 13, sm_90).
    Int64 offsets take 255, with a prior or not (uncapped, 4-8 bytes spilled at 40-168
    registers; at 128, the 64-latent tiles spilled)."""
    def fwd(prior, b=5, d=30, dtype=torch.float32, likelihood="bernoulli"):
        x = torch.empty(b, d, dtype=dtype)
        recon, mu, lv, z, pm, plv = (torch.empty(b, n, dtype=dtype, requires_grad=True)
                                     for n in (d, 70, 70, 70, 70, 70))
        fastvae.elbo(x, recon, mu, lv, likelihood=likelihood, kl="mc", z=z, backend="triton",
                     validate=False, prior_mu=pm if prior else None,
                     prior_logvar=plv if prior else None).backward()
    assert _maxnreg([("plain", lambda: fwd(False))], "elbo_rows_kernel") == 128
    assert _maxnreg([("prior", lambda: fwd(True))], "elbo_rows_kernel") is None
    assert _maxnreg([("prior bf16", lambda: fwd(True, d=7, dtype=torch.bfloat16,
                                               likelihood="gaussian"))],
                    "elbo_rows_kernel") == 168
    with stand_ins.int32_limit_lowered():   # plans are per shape: another B
        assert _maxnreg([("int64", lambda: fwd(False, 20))], "elbo_rows_kernel") == 255
        assert _maxnreg([("int64 prior", lambda: fwd(True, 21))], "elbo_rows_kernel") == 255


@pytest.mark.parametrize("int64, cap", [(False, None), (True, 255)])
def test_kl_rows_cap_int64_offsets_only(int64, cap):
    """kl_normal as the row kernel runs it: a (B, L) prior's fp32 32 x 64 evaluation with
    int64 offsets spilled 4 bytes at 96 registers uncapped (Triton 3.9, sm_80); with int32
    ones nothing spilled, and a cap would end ptxas's occupancy target there."""
    mu, lv, pm, plv = (torch.empty(40, 64) for _ in range(4))
    lowered = stand_ins.int32_limit_lowered(int64)
    with lowered:
        assert _maxnreg([("kl", lambda: fastvae.kl_normal(mu, lv, pm, plv, backend="triton",
                                                          validate=False))],
                        "elbo_rows_kernel") == cap


@pytest.mark.parametrize("op, prior, grad, l, cap", [
    ("kl_normal", "number", True, 70, 255), ("kl_normal", "L", True, 70, 255),
    ("kl_normal", "BL", True, 70, 255),
    ("kl_normal", "L", False, 70, None),     # no gradients: 48-96, none spilling
    ("kl_normal", "L", True, 32, None),      # 32 latents a step
    ("kl_standard_normal", None, True, 70, None)])
def test_kl_normal_gradients_at_64_latents_a_step_cap_registers(op, prior, grad, l, cap):
    """kl_normal's gradients at L = 70 with int32 offsets spilled on Triton 3.6 (bf16 with a
    prior given as numbers: 128 registers, 8 bytes, sm_80; fp32 with an (L,) prior: 20
    bytes, sm_90); at 255 none of its 44 specializations at L = 70 did, either Triton."""
    mu, lv = (torch.empty(40, l, requires_grad=grad) for _ in range(2))
    pm, plv = stand_ins.stand_in_prior(prior, 40, l, torch.float32, grad)

    def call():
        if op == "kl_standard_normal":
            return fastvae.kl_standard_normal(mu, lv, backend="triton", validate=False)
        return fastvae.kl_normal(mu, lv, pm, plv, backend="triton", validate=False)
    assert _maxnreg([("kl", call)], "elbo_rows_kernel") == cap


@pytest.mark.parametrize("dname, mode, l, cap", [
    ("fp32", "train", 129, 128), ("fp16", "train+x", 129, 128), ("bf16", "eval", 129, 128),
    ("fp32", "train", 32, None)])    # 32 latents: another tile
def test_iwae_two_pass_continuous_bernoulli_wide_latents_cap_registers(dname, mode, l, cap):
    """80 registers, 12 bytes spilled (fp32 and fp16 training, B=3 D=1025 L=129 K=9,
    Triton 3.9, sm_90, at the full tile); 3.6 compiles them at 2 programs an SM, the cap's
    step. D = 1025 now takes the unaligned rows' half tile: the cap stays for aligned ones."""
    calls = catalog.iwae_calls(((3, 1024, l, 9),), (dname,), (("mean", mode),),
                               likelihoods=(("continuous_bernoulli", "", False),))
    assert _maxnreg(calls, "iwae_bound_rows_kernel") == cap


def _rows_launch(calls):
    """(tile, maxnreg) of the two-pass IWAE launches of ``calls`` (one answer)."""
    (got,) = {((la.constexprs()["BLOCK_B"], la.constexprs()["BLOCK_D"],
                la.constexprs()["BLOCK_L"], la.options()["num_warps"]),
               la.options()["maxnreg"])
              for la in _launches(calls, "iwae_bound_rows_kernel")}
    return got


@pytest.mark.parametrize("lik", [("bernoulli", "", False), ("continuous_bernoulli", "", False),
                                 ("gaussian", "float", False), ("gaussian", "BD", True)])
@pytest.mark.parametrize("dname, mode", [("fp32", "train"), ("bf16", "eval"),
                                         ("fp16", "train+x")])
@pytest.mark.parametrize("d, l", [(100, 32), (7, 3), (1025, 129)])
def test_iwae_two_pass_unaligned_rows_take_half_the_tile_and_a_cap(lik, dname, mode, d, l):
    """Rows not aligned to 16 (D here; a stride or a base pointer likewise): each element
    its own load and 64-bit address, held across the samples' loop. The full tile spilled
    8-28 bytes at 128-168 registers (fp32, D = 100, every likelihood, Triton 3.6), and
    where ptxas chose fewer registers or a cap of the aligned tile applied, 4-368 bytes;
    half the rows and 96 registers: none (RESULTS.md)."""
    calls = catalog.iwae_calls(((3, d, l, 9),), (dname,), (("mean", mode),),
                               likelihoods=(lik,))
    aligned = catalog.iwae_calls(((3, d + 16 - d % 16, l, 9),), (dname,), (("mean", mode),),
                                 likelihoods=(lik,))
    (b, bd, bl, warps), cap = _rows_launch(calls)
    (b_full, bd_full, bl_full, warps_full), _ = _rows_launch(aligned)
    assert (2 * b, bd, bl, warps) == (b_full, bd_full, bl_full, warps_full)
    assert cap == 96


def test_iwae_rows_aligned_reads_every_row_stride_and_pointer():
    x, recon = torch.empty(4, 32), torch.empty(3, 4, 32)
    assert _launch.rows_aligned(32, x, recon)
    assert not _launch.rows_aligned(33, x, recon)
    assert not _launch.rows_aligned(32, torch.empty(4, 40)[:, 1:33], recon)  # pointer
    assert not _launch.rows_aligned(32, torch.empty(4, 40)[:, :32], recon)   # stride
    assert not _launch.rows_aligned(32, x, torch.empty(4, 3, 33)[..., :32].transpose(0, 1))
    assert _launch.rows_aligned(32, x, recon, torch.empty(32))   # a (D,) obs_logvar


@pytest.mark.parametrize("lik, dname, mode, cap", [
    (("bernoulli", "", False), "amp-bf16", "eval", 72),
    (("bernoulli", "", False), "fp16", "eval", 72), (("bernoulli", "", False), "bf16", "eval", 72),
    (("bernoulli", "", False), "fp16", "train", None),     # 56-72 registers, no spill
    (("bernoulli", "", False), "fp32", "eval", None),
    (("gaussian", "float", False), "amp-fp16", "train", 56),
    (("gaussian", "float", False), "fp16", "train-z", None),   # no d/dz: 48, no spill
    (("gaussian", "float", False), "fp16", "train+x", None),
    (("gaussian", "float", False), "fp16", "eval", None)])
def test_iwae_two_pass_16_bit_tile_caps_registers_in_its_spilling_class(lik, dname, mode, cap):
    """Triton 3.6 (sm_90 for the Bernoulli's evaluation, 64 registers, 8 bytes; sm_80 for
    the Gaussian float obs_logvar's training with d/dz and without d/dx, 48, 4 bytes) at
    B=4096 D=784 L=32 K=50: the 16 x 64 x 32 tile at 4 warps, capped in that class only."""
    calls = catalog.iwae_calls(((4096, 784, 32, 50),), (dname,), (("mean", mode),),
                               likelihoods=(lik,))
    assert _maxnreg(calls, "iwae_bound_rows_kernel") == cap


BERN, CB = ("bernoulli", "", False), ("continuous_bernoulli", "", False)
GAUSS_FLOAT, GAUSS_BD = ("gaussian", "float", False), ("gaussian", "BD", True)


@pytest.mark.parametrize("lik, dname, mode, l, cap", [
    # fp32 16 x 64 x 64 at 8 warps, training with d/dz (ptxas 13, sm_90: 64, 4 bytes)
    (BERN, "fp32", "train", 70, 80), (GAUSS_BD, "fp32", "train+x", 70, 80),
    (GAUSS_FLOAT, "fp32", "train", 70, 80),
    (BERN, "fp32", "train-z", 70, None), (BERN, "bf16", "train", 70, None),
    # its Gaussian float evaluation (Triton 3.6, sm_90: 40, 8-16 bytes; ptxas 13 spilled
    # capped at 48 or 56)
    (GAUSS_FLOAT, "fp32", "eval", 70, 64), (GAUSS_FLOAT, "bf16", "eval", 70, 64),
    (BERN, "fp32", "eval", 70, None),
    # the continuous Bernoulli's fp32 8 x 64 x 16 with d/dx (Triton 3.6, sm_90: 32, 8 bytes)
    (CB, "fp32", "train+x", 3, 40), (CB, "fp32", "train", 3, None),
    # the fp32 Gaussian (B, D) obs_logvar's gradient (ptxas 13, sm_80: 64 and 80, 4 bytes)
    (GAUSS_BD, "fp32", "train", 3, 96), (GAUSS_BD, "fp32", "train+x", 32, 96),
    (("gaussian", "BD", False), "fp32", "train+x", 32, None)])
def test_iwae_two_pass_aligned_tiles_cap_registers_in_their_spilling_classes(lik, dname, mode,
                                                                             l, cap):
    calls = catalog.iwae_calls(((4096, 784, l, 9),), (dname,), (("mean", mode),),
                               likelihoods=(lik,))
    assert _maxnreg(calls, "iwae_bound_rows_kernel") == cap


@pytest.mark.parametrize("mode, cap", [("train", 96), ("train+x", 96), ("eval", None)])
def test_iwae_per_sample_obs_logvar_gradient_caps_registers(mode, cap):
    """One obs_logvar per sample, fp32, 16 x 64 x 32 at 4 warps: its gradient (the launch
    class of every obs_logvar gradient) spilled 4 bytes at 72 registers (d/dx too, B=4096
    D=784 L=32 K=5, ptxas 13 on sm_80)."""
    calls = [c for c in catalog_features.sample_obs_calls(((4096, 784, 32, 5),))
             if c[0].endswith(f"fp32 gaussian/KBD {mode}")]
    assert _maxnreg(calls, "iwae_bound_rows_kernel") == cap


@pytest.mark.parametrize("prior, int64, cap", [
    (None, False, 80), ("BL", False, None), ("L", False, None),
    (None, True, 128), ("BL", True, 168)])
def test_iwae_two_pass_with_a_prior_takes_no_class_cap(prior, int64, cap):
    """A learned prior's two more latents and gradients: at the fp32 16 x 64 x 64 tile's
    training cap (80) a (B, L) prior spilled 28-64 bytes (Triton 3.9), uncapped none; with
    int64 offsets, at 128 4-24 bytes, at 168 none."""
    calls = catalog.iwae_calls(((64, 784, 70, 9),), ("fp32",), (("mean", "train"),),
                               likelihoods=catalog.LIKELIHOODS[:1], priors=(prior,),
                               int64=(int64,))
    assert _maxnreg(calls, "iwae_bound_rows_kernel") == cap


@pytest.mark.parametrize("dname, lik, mode, prior, int64, cap", [
    # the 16-bit Bernoulli's evaluation (fp16: 48 registers, 12 bytes)
    ("fp16", ("bernoulli", "", False), "eval", None, False, 64),
    ("bf16", ("bernoulli", "", False), "eval", None, False, 64),
    ("bf16", ("bernoulli", "", False), "train", None, False, None),
    ("fp32", ("bernoulli", "", False), "eval", None, False, None),
    # the 16-bit tensor obs_logvar's gradient (fp16: 64 registers, 4 bytes)
    ("fp16", ("gaussian", "BD", True), "train", None, False, 80),
    ("amp-bf16", ("gaussian", "D", True), "train+x", None, False, 80),
    ("fp16", ("gaussian", "BD", True), "eval", None, False, None),
    ("bf16", ("gaussian", "BD", True), "train", "L", False, None),   # 124-127 uncapped
    ("bf16", ("gaussian", "D", True), "train", None, True, 128)])   # INT64's own
def test_iwae_two_pass_16_bit_64_latent_tile_caps(dname, lik, mode, prior, int64, cap):
    """The 16 x 64 x 64 tile at 8 warps, classes the fp16 calls found spilling under
    Triton 3.6 (sm_90, D = 784, L = 70, K = 9 and 16); each cap held its class's int32
    specializations on both Tritons and arches."""
    calls = catalog.iwae_calls(((64, 784, 70, 9),), (dname,), (("mean", mode),),
                               likelihoods=(lik,), priors=(prior,), int64=(int64,))
    assert _maxnreg(calls, "iwae_bound_rows_kernel") == cap


@pytest.mark.parametrize("prior", [None, "BL"])
def test_iwae_two_pass_tensor_obs_gradient_keeps_its_cap_with_a_prior(prior):
    """fp32, L = 3, a (B, D) obs_logvar's gradient: uncapped a (B, L) prior spilled 4 bytes
    at 64 registers (Triton 3.9, sm_80); it keeps the class's 96."""
    calls = catalog.iwae_calls(((64, 784, 3, 9),), ("fp32",), (("mean", "train"),),
                               likelihoods=(("gaussian", "BD", True),), priors=(prior,))
    assert _maxnreg(calls, "iwae_bound_rows_kernel") == 96


def test_iwae_two_pass_int64_launches_take_their_own_caps():
    """int64 offsets need registers the caps, found with int32 ones, would cut: the
    per-sample obs_logvar's gradient at INT64 took 96-128 registers and no spill, and at
    its class's cap of 96 spilled 32 bytes (Triton 3.9, sm_80). Without a cap, 4-24 bytes
    spilled at 40-168 registers in a sweep of every class; at 128 only the tensor
    obs_logvar's on unaligned rows did (16-64 bytes, D = 100), which take 168."""
    calls = [c for c in catalog_features.sample_obs_calls(((4096, 784, 32, 5),))
             if c[0].endswith("INT64")]
    assert [_maxnreg([c], "iwae_bound_rows_kernel") for c in calls] == [128, 168]
    def unaligned(b):   # shapes no other test here takes: a capture records new launches
        return catalog.iwae_calls(((b, 30, 32, 9),), ("fp32",), (("mean", "train"),),
                                  likelihoods=(BERN,))
    assert _maxnreg(unaligned(5), "iwae_bound_rows_kernel") == 96
    with stand_ins.int32_limit_lowered():
        assert _maxnreg(unaligned(6), "iwae_bound_rows_kernel") == 128


@pytest.mark.parametrize("shape, dname, lik, mode, cap", [
    # the 16-bit Gaussian tensor obs_logvar's gradient: 128 latents a step (128 registers,
    # 8 bytes, Triton 3.6 on sm_80 and ptxas 13 on both), 1024 columns (3.6 on sm_80)
    ((3, 64, 70, 5), "bf16", ("gaussian", "D", True), "train", 168),
    ((3, 64, 70, 2), "fp16", ("gaussian", "BD", True), "train+x", 168),
    ((3, 784, 3, 5), "bf16", ("gaussian", "BD", True), "train+x", 168),
    ((3, 64, 70, 5), "bf16", ("gaussian", "D", False), "train", None),   # no obs gradient
    ((3, 64, 70, 5), "fp32", ("gaussian", "D", True), "train", None),    # another tile
    # the fp32 Bernoulli's 16 x 4 x 64 x 32 with d/dz (3.6 on sm_80: 80, 4 bytes)
    ((3, 64, 32, 2), "fp32", ("bernoulli", "", False), "train", 128),
    ((3, 64, 32, 2), "fp32", ("bernoulli", "", False), "train+x", None),
    ((3, 64, 32, 2), "fp32", ("bernoulli", "", False), "eval", None)])
def test_iwae_onepass_caps_registers_in_the_class_that_spilled(shape, dname, lik, mode, cap):
    """From a sweep of the one-pass kernel's classes under both Tritons (RESULTS.md,
    "The one-pass IWAE kernel's launch classes")."""
    calls = catalog.iwae_calls((shape,), (dname,), (("mean", mode),), likelihoods=(lik,))
    assert _maxnreg(calls, "iwae_bound_onepass_kernel") == cap


@pytest.mark.parametrize("b, d, l, dtype, mode, int64, cap", [
    (41, 784, 64, torch.float32, "train", False, 255),      # fp32 at 64 latents
    (42, 784, 32, torch.float32, "train", False, None),     # the bar's: two programs an SM
    (43, 784, 64, torch.float32, "eval", False, None),
    (44, 300, 8, torch.bfloat16, "train", False, 255),      # 16-bit, rows not aligned
    (45, 784, 8, torch.bfloat16, "eval", False, None),
    (46, 784, 32, torch.float32, "train", True, 255),       # int64 offsets
    (47, 784, 32, torch.float32, "eval", True, None),
    (48, 784, 64, torch.bfloat16, "train", True, None)])    # 16-bit aligned: at 255, 254
def test_iwae_pairs_cap_the_classes_that_spilled(b, d, l, dtype, mode, int64, cap):
    """The pair kernel spilled 4-20 bytes at 128 registers (two programs an SM) in
    training: fp32 at 64 latents (Triton 3.6), 16-bit rows not aligned to 16 (3.9), and
    with int64 offsets fp32 at any L (both); capped at 255, 16-bit aligned rows with int64
    offsets spilled 8 bytes at 254 (3.9), uncapped none. Each case a shape of its own: a
    capture records a specialization once."""
    train = mode == "train"
    x = torch.empty(b, d, dtype=dtype)
    recon, z = (torch.empty(16, b, n, dtype=dtype, requires_grad=train) for n in (d, l))
    mu, lv = (torch.empty(b, l, dtype=dtype, requires_grad=train) for _ in range(2))

    def fwd():
        v = fastvae.iwae_bound(x, recon, mu, lv, z, reduction="mean", backend="triton",
                               validate=False)
        if train:
            v.backward()
    lowered = stand_ins.int32_limit_lowered(int64)
    with lowered, torch.set_grad_enabled(train):
        assert _maxnreg([("pairs", fwd)], "iwae_bound_pairs_kernel") == cap
