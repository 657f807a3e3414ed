"""The "torch" backend's in-kernel eps (fastvae/backends/torch_backend/philox.h): the
Triton backend's Philox stream and counter layout, with its uniforms bit for bit (the
``kernel_device`` tests: they run in tests/test_triton_interpreter.py's child under
TRITON_INTERPRET=1, or on a GPU), normals within a stated float32 bound of the float64
Box-Muller of the same uniforms, float32 z within a bound of the Triton backend's for
the same seed, and no eps kept for backward.

The statistics of the draws (KS, independence, seeding) are test_reparameterize.py's,
the seed contract with sample_with_kl test_sample_with_kl.py's."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import fastvae
from _compare import leaf
from fastvae import backends
from fastvae.backends.torch_backend import gaussian_rows, native

Q = gaussian_rows.Q
# |n - n64| <= NORMAL_BOUND * max(1, |n64|) between the C normals and float64 Box-Muller
# of the same uniforms (measured: 7.5e-7 absolute, 5.4e-7 relative over 8M normals).
NORMAL_BOUND = 8e-7


@pytest.fixture
def kernel():
    if native.load() is None:
        pytest.skip(f"compiled kernel unavailable here: {native.status()}")


def _box_muller64(u):
    """float64 normals of (count, 4) uniforms, paired (1, 2), (3, 4) as tl.randn4x does."""
    u = u.double()
    r = torch.sqrt(-2 * torch.log(u[:, 0::2].clamp(min=float(np.float32(1e-7)))))
    theta = 2 * np.pi * u[:, 1::2]
    out = torch.empty_like(u)
    out[:, 0::2], out[:, 1::2] = r * torch.cos(theta), r * torch.sin(theta)
    return out


@pytest.mark.parametrize("seed,first", [(3, 0), (2**62 - 1, 2**32 - 4096)])
def test_normals_within_the_bound_of_float64(kernel, seed, first):
    u, n = gaussian_rows.philox_eval(seed, first, 1 << 16)
    assert (u >= 0).all() and (u < 1).all()
    want = _box_muller64(u)
    assert ((n.double() - want).abs() <= NORMAL_BOUND * want.abs().clamp(min=1)).all()


def test_layout_and_the_seed_words(kernel):
    """Element i of sample k of a (B, L) draw is normal (i mod 4Q) // Q of counter
    k CPAD + (i // 4Q) Q + i mod Q; the seed's high word and the counter's matter."""
    b, l, k = 3, 3000, 2                           # B L = 9000: a partial last chunk
    seed = torch.tensor([2**40 + 5], dtype=torch.int64)
    eps = torch.empty(k, b, l)
    assert gaussian_rows.sample_rows(None, torch.zeros(b, l), seed, k, eps)
    cpad = gaussian_rows.cpad(b * l)
    assert cpad == 3 * Q
    i = torch.arange(b * l)
    for s in range(k):
        _, n = gaussian_rows.philox_eval(2**40 + 5, s * cpad, cpad)
        want = n[(i // (4 * Q)) * Q + i % Q, (i % (4 * Q)) // Q]
        assert torch.equal(eps[s].flatten(), want)
    _, low = gaussian_rows.philox_eval(5, 0, 16)
    _, high = gaussian_rows.philox_eval(2**40 + 5, 0, 16)
    _, far = gaussian_rows.philox_eval(2**40 + 5, 2**32, 16)
    assert not torch.equal(low, high) and not torch.equal(high, far)


def test_no_eps_is_saved(kernel):
    """What autograd keeps on the torch backend: logvar (the caller's), the one-element
    seed, and for sample_with_kl the KL's gradients; no (K, B, L) or (B, L) eps."""
    b, l, k = 16, 40, 4
    mu, lv, pm, plv = (leaf(torch.randn(b, l)) for _ in range(4))
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        z = fastvae.reparameterize(mu, lv, n_samples=k, backend="torch")
    assert sorted(tuple(t.shape) for t in saved) == [(1,), (b, l)]
    assert sum(t.numel() * t.element_size() for t in saved) == b * l * 4 + 8
    z.sum().backward()
    saved.clear()
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        z, kl = fastvae.sample_with_kl(mu, lv, pm, plv, backend="torch")
    assert sorted(tuple(t.shape) for t in saved) == [(1,)] + [(b, l)] * 4
    assert sum(t.data_ptr() == lv.data_ptr() for t in saved) == 1
    assert not any(t.data_ptr() == z.data_ptr() for t in saved)


def test_noise_is_a_seed_only_for_float32(kernel):
    """float64, 16-bit and empty inputs keep torch.randn's eps (the aten path), the same
    hand-over as the Triton backend's for float64 and empty ones."""
    tb = backends.get("torch")
    assert tb.reparameterize_noise(torch.zeros(2, 3), 4, None).dtype == torch.int64
    for mu in (torch.zeros(2, 3, dtype=torch.float64), torch.zeros(2, 3, dtype=torch.bfloat16),
               torch.zeros(0, 3)):
        noise = tb.reparameterize_noise(mu, 4, None)
        assert noise.dtype == mu.dtype and noise.shape == (4, *mu.shape)


# -- against the Triton kernels (interpreter or GPU) ------------------------------------------

def test_uniforms_bit_identical_to_triton(kernel_device, kernel):
    """tl.rand4x's four uniforms, bit for bit, at counters that use the high word and
    seeds that use the key's high word."""
    import triton
    import triton.language as tl

    @triton.jit
    def rand4x(SEED, U, first, N: tl.constexpr):
        i = tl.arange(0, N)
        u1, u2, u3, u4 = tl.rand4x(tl.load(SEED), first + i.to(tl.int64))
        tl.store(U + 4 * i, u1)
        tl.store(U + 4 * i + 1, u2)
        tl.store(U + 4 * i + 2, u3)
        tl.store(U + 4 * i + 3, u4)

    n = 1024
    for seed, first in [(0, 0), (12345, 2**32 - 512), (2**62 - 1, 2**40 + 16)]:
        u = torch.empty(n, 4, device=kernel_device)
        rand4x[(1,)](torch.tensor([seed], dtype=torch.int64, device=kernel_device), u, first,
                     N=n)
        mine, _ = gaussian_rows.philox_eval(seed, first, n)
        assert torch.equal(u.cpu().view(torch.int32), mine.view(torch.int32))


def test_z_matches_the_triton_backend(kernel_device, kernel):
    """The same seed on both backends: float32 z (K samples; and sample_with_kl's) within
    the normals' bound times the standard deviation, plus a few ulps of mu + std eps (the
    transcendentals differ: vecmath.h's here, the GPU's fast ones or numpy's there)."""
    tb, cb = backends.get("triton"), backends.get("torch")
    gen = torch.Generator().manual_seed(4)
    mu, lv = torch.randn(7, 1000, generator=gen), torch.randn(7, 1000, generator=gen) * 2
    seed = torch.tensor([987654321], dtype=torch.int64)
    z_c = cb.reparameterize_fwd(mu, lv, seed, 3)
    z_t = tb.reparameterize_fwd(mu.to(kernel_device), lv.to(kernel_device),
                                seed.to(kernel_device), 3).cpu()
    sd = torch.exp(0.5 * lv.double())
    eps = (z_c.double() - mu.double()) / sd
    bound = 2 * NORMAL_BOUND * sd * eps.abs().clamp(min=1) + 4e-7 * z_c.double().abs() + 1e-30
    assert ((z_c.double() - z_t.double()).abs() <= bound).all()
    z_s, _, *_ = cb.sample_with_kl_fwd(mu, lv, None, None, seed, [False] * 4)
    assert torch.equal(z_s, z_c[0])
