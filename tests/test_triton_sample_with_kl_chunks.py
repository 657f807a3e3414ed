"""Triton sample_with_kl's rows cut into column chunks (the KL folded by ticket): forced
chunks against one chunk bit for bit, the GPU's chunk rule and its shipped chunks under
the interpreter (``gpu_tiles``).

Runs where kernels run (tests/test_triton_interpreter.py runs this module under
TRITON_INTERPRET=1).
"""
import pytest
import torch

from _backends import skip_unless_kernels_run

skip_unless_kernels_run()  # the whole module: one line in the report, not one per test

import fastvae  # noqa: E402
from _compare import assert_close, leaf  # noqa: E402
import _formulas as F  # noqa: E402
from _gpu_tiles import gpu_tiles  # noqa: E402,F401 (a fixture)

F32 = torch.float32


# -- sample_with_kl: rows cut into column chunks -------------------------------------------------

def _swk_config(monkeypatch, block_b, block_n, chunk):
    """Force sample_with_kl's (BLOCK_B, BLOCK_N, CHUNK) whatever the shape."""
    from fastvae.backends.triton_backend import configs
    monkeypatch.setattr(configs, "sample_with_kl_config",
                        lambda b, n, sms=None: (block_b, block_n, chunk, -(-n // chunk), 4))


def _swk_run(mu, lv, pm, plv, dz, gk, seed=5):
    """(z, kl, gradients of every tensor input) of one seeded call."""
    torch.manual_seed(seed)
    z, kl = fastvae.sample_with_kl(mu, lv, pm, plv, backend="triton")
    ins = [t for t in (mu, lv, pm, plv) if isinstance(t, torch.Tensor)]
    return z.detach(), kl.detach(), torch.autograd.grad([z, kl], ins, [dz, gk])


@pytest.mark.parametrize("prior,dtype", [("full", F32), ("shared", torch.bfloat16)])
def test_sample_with_kl_chunks(seed, kernels, launches, monkeypatch, prior, dtype):
    """10 rows (row blocks of 4: the last one partly empty) of 300 latents in 5 chunks of
    64 (the last one 44): one launch each way; z and every gradient are the one-chunk
    launch's bit for bit (eps indexed by element, no reduction in backward), the KL the
    float64 formula's, the same bits on a second call; every ticket is back at zero."""
    from fastvae.backends.triton_backend import _launch
    b, n = 10, 300
    mu, lv = leaf(torch.randn(b, n).to(dtype) * 2), leaf(torch.randn(b, n).to(dtype))
    pm, plv = {"full": (leaf(torch.randn(b, n).to(dtype)), leaf(torch.randn(b, n).to(dtype))),
               "shared": (0.5, leaf(torch.randn(n).to(dtype))), "none": (None, None)}[prior]
    dz, gk = torch.randn(b, n).to(dtype), torch.randn(b).to(dtype)
    _swk_config(monkeypatch, 4, 64, 64)
    z, kl, g = _swk_run(mu, lv, pm, plv, dz, gk)
    assert launches == ["sample_with_kl_fwd_kernel", "sample_with_kl_bwd_kernel"]
    assert not _launch.ticket(mu.device, 3)[:3].any()
    z2, kl2, g2 = _swk_run(mu, lv, pm, plv, dz, gk)
    assert torch.equal(z, z2) and torch.equal(kl, kl2)
    assert all(torch.equal(a, c) for a, c in zip(g, g2))
    _swk_config(monkeypatch, 4, 512, n)
    z1, kl1, g1 = _swk_run(mu, lv, pm, plv, dz, gk)
    assert torch.equal(z, z1)
    assert all(torch.equal(a, c) for a, c in zip(g, g1))
    want = F.kl_normal_dim(mu, lv, 0.0 if pm is None else pm, 0.0 if plv is None else plv)
    assert_close("kl", kl, want.expand(b, n).sum(-1), F32)


def test_sample_with_kl_shipped_chunks(seed, gpu_tiles, launches):
    """The GPU's rule off a GPU (132 SMs assumed): 3 rows of 5000 latents, row blocks of one
    row, each cut in two chunks (3072 and 1928) with its own ticket, the N(0, I) prior; z
    is reparameterize's, the KL and both gradients the float64 formulas'."""
    b, n = 3, 5000
    block_b, block_n, chunk, chunks, _ = gpu_tiles.sample_with_kl_config(b, n)
    assert (block_b, chunk, chunks) == (1, 3072, 2)
    mu, lv = leaf(torch.randn(b, n)), leaf(torch.randn(b, n))
    dz, gk = torch.randn(b, n), torch.randn(b)
    z, kl, g = _swk_run(mu, lv, None, None, dz, gk)
    torch.manual_seed(5)
    assert torch.equal(z, fastvae.reparameterize(mu, lv, backend="triton").detach())
    eps = (z.double() - mu.detach().double()) * torch.exp(-0.5 * lv.detach().double())
    want_kl = F.kl_normal_dim(mu, lv, 0.0, 0.0).sum(-1)
    assert_close("kl", kl, want_kl, F32)
    z64 = mu.double() + torch.exp(0.5 * lv.double()) * eps
    want = torch.autograd.grad([z64, want_kl], [mu, lv], [dz.double(), gk.double()])
    for name, a, w in zip(("mu_q", "logvar_q"), g, want):
        assert_close(f"d/d{name}", a, w, F32)


@pytest.mark.parametrize("sms", [108, 132])
def test_sample_with_kl_chunk_rule(gpu_tiles, sms):
    """At the VDVAE loop's shapes (batch 16, 16 channels at 1..64 pixels a side): chunks of
    whole BLOCK_N steps covering the row, none under the minimum, and the rows of 64^2 and
    32^2 pixels spread over at least half the SMs where they were 16 programs."""
    configs = gpu_tiles
    for r in (1, 4, 8, 16, 32, 64):
        b, n = 16, 16 * r * r
        block_b, block_n, chunk, chunks, _ = configs.sample_with_kl_config(b, n, sms)
        assert chunk % block_n == 0 and (chunks - 1) * chunk < n <= chunks * chunk
        assert chunks == 1 or block_b * chunk >= configs.SAMPLE_WITH_KL_MIN_CHUNK
        if r >= 32:
            assert -(-b // block_b) * chunks >= sms // 2
