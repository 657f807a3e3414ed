"""fastvae.sample_with_kl on every backend (the ``backend`` fixture): z is
``mu_q + exp(0.5*logvar_q) * eps`` with the very eps ``reparameterize`` draws for the
same seed, the KL is ``kl_normal``'s, and the gradients obey
``dmu_q = dz + g_kl dKL/dmu_q``, ``dlogvar_q = 0.5 dz exp(logvar_q/2) eps + g_kl
dKL/dlogvar_q``, prior gradients from the KL alone; the draws' mean and variance;
seeding; z or the KL unused; dtypes, empty inputs, gradcheck and errors.

eps is never returned (and on "triton" never stored): the tests recover it from z.
Launches (1 forward, 1 backward) and what autograd saves: tests/test_triton_backend.py.
On "torch" float32 runs the C kernel (gaussian_rows.c, z from the same code as
reparameterize's); ``cpu_path`` runs the main cases once more on the aten fallback.
"""
from __future__ import annotations

import math

import pytest
import torch

import fastvae
import _formulas as F
from _backends import bounded, case_dtype, generator
from _compare import assert_close, grads, leaf

F64 = torch.float64


def posterior(shape, dtype, grad=True):
    mu, lv = torch.randn(shape, dtype=dtype) * 2, torch.randn(shape, dtype=dtype)
    return (leaf(mu), leaf(lv)) if grad else (mu, lv)


def make_prior(kind, shape, dtype):
    if kind == "standard":
        return None, None
    if kind == "full":
        return leaf(torch.randn(shape, dtype=dtype)), leaf(torch.randn(shape, dtype=dtype))
    if kind == "channel":  # (1, C, 1, ...) mean, full log-variance
        c = [1] * len(shape)
        c[1] = shape[1]
        return leaf(torch.randn(c, dtype=dtype)), leaf(torch.randn(shape, dtype=dtype))
    return 0.5, leaf(torch.randn(shape[1:], dtype=dtype))  # a number and a shared row


def eps_of(z, mu, lv):
    return (z.detach().double() - mu.detach().double()) * torch.exp(-0.5 * lv.detach().double())


@pytest.mark.parametrize("kind", ["standard", "full", "channel", "shared"])
@pytest.mark.parametrize("shape", [(1, 1), (7, 5), (4, 3, 5, 6), (33, 2, 1, 3), (3, 1003)])
def test_value_and_gradient_identity(seed, backend, cpu_path, kind, shape):
    dt = case_dtype(backend)
    mu, lv = posterior(shape, dt)
    pm, plv = make_prior(kind, shape, dt)
    z, kl = fastvae.sample_with_kl(mu, lv, pm, plv, backend=backend)
    assert fastvae.last_backend() == backend
    assert z.shape == shape and z.dtype == dt and kl.shape == shape[:1]
    assert kl.dtype == (F64 if dt == F64 else torch.float32)
    eps = eps_of(z, mu, lv)
    assert eps.abs().max() < 7
    # the KL: the float64 formula (N(0, I) when no prior is given)
    ins = [t for t in (mu, lv, pm, plv) if isinstance(t, torch.Tensor)]
    prior = (0.0 if pm is None else pm, 0.0 if plv is None else plv)
    want_kl = F.kl_normal_dim(mu, lv, *prior).expand(shape).reshape(shape[0], -1).sum(-1)
    assert_close("kl", kl, want_kl, dt, rtol={F64: 1e-12})
    # gradients under random cotangents for z and the KL, against the same eps
    dz, gk = torch.randn(shape, dtype=dt), torch.randn(shape[0], dtype=dt)
    got = torch.autograd.grad([z, kl], ins, [dz, gk])
    z64 = mu.double() + torch.exp(0.5 * lv.double()) * eps
    want = torch.autograd.grad([z64, want_kl], ins, [dz.double(), gk.double()])
    for name, g, e, t in zip(("mu_q", "logvar_q", "mu_p", "logvar_p")[:len(ins)] if pm is not None
                             else ("mu_q", "logvar_q", "logvar_p"), got, want, ins):
        assert g.dtype == t.dtype and g.shape == t.shape
        assert_close(f"d/d{name}", g, e, dt, rtol={F64: 1e-11})


def test_the_identity_term_by_term(seed, backend):
    """dmu_q = dz + g_kl dKL/dmu_q and dlogvar_q = 0.5 dz std eps + g_kl dKL/dlogvar_q,
    the prior's = g_kl dKL/dprior, with dKL/d* from kl_normal of the same inputs."""
    dt = case_dtype(backend)
    shape = (6, 4, 3)
    mu, lv = posterior(shape, dt)
    pm, plv = make_prior("full", shape, dt)
    z, kl = fastvae.sample_with_kl(mu, lv, pm, plv, backend=backend)
    dz, gk = torch.randn(shape, dtype=dt), torch.randn(6, dtype=dt)
    g_mu, g_lv, g_pm, g_plv = torch.autograd.grad([z, kl], [mu, lv, pm, plv], [dz, gk])
    k_mu, k_lv, k_pm, k_plv = grads(fastvae.kl_normal(mu, lv, pm, plv, backend=backend),
                                    [mu, lv, pm, plv], gk.double())
    eps = eps_of(z, mu, lv)
    std = torch.exp(0.5 * lv.detach().double())
    assert_close("dmu_q", g_mu, dz.double() + k_mu.double(), dt)
    assert_close("dlogvar_q", g_lv, 0.5 * dz.double() * std * eps + k_lv.double(), dt)
    assert_close("dmu_p", g_pm, k_pm, dt)
    assert_close("dlogvar_p", g_plv, k_plv, dt)
    assert_close("dmu_p = -(dmu_q - dz)", g_pm, -(g_mu.double() - dz.double()), dt)


@pytest.mark.parametrize("use", ["z", "kl"])
def test_only_one_output_used(seed, backend, use):
    dt = case_dtype(backend)
    mu, lv = posterior((5, 7), dt)
    pm, plv = make_prior("full", (5, 7), dt)
    z, kl = fastvae.sample_with_kl(mu, lv, pm, plv, backend=backend)
    out = z.sum() if use == "z" else kl.sum()
    g = torch.autograd.grad(out, [mu, lv, pm, plv], allow_unused=True)
    if use == "z":
        assert_close("dmu_q", g[0], torch.ones(5, 7, dtype=F64), dt)
        assert_close("dlogvar_q", g[1], 0.5 * (z.double() - mu.double()).detach(), dt)
        assert all(x is None or not x.any() for x in g[2:])
    else:
        want = grads(F.kl_normal_dim(mu, lv, pm, plv).sum(-1), [mu, lv, pm, plv])
        for a, b in zip(g, want):
            assert_close("grad", a, b, dt)


@pytest.mark.parametrize("kind", ["full", "shared"])
def test_z_has_no_gradient_where_only_the_prior_needs_one(seed, backend, kind):
    """z does not depend on the prior: where only the prior needs a gradient, z does not
    require one (as on the reference), on the first call and on the repeated calls that
    take a prepared route, and the KL's prior gradients are the formula's."""
    dt = case_dtype(backend)
    mu, lv = posterior((5, 7), dt, grad=False)
    pm, plv = make_prior(kind, (5, 7), dt)
    for _ in range(3):
        z, kl = fastvae.sample_with_kl(mu, lv, pm, plv, backend=backend)
        assert not z.requires_grad and z.grad_fn is None
        assert kl.requires_grad
    # through the custom op (a dispatch mode watching): its node still knows that nobody
    # else holds the saved gradients, though z (its first output) has no node
    from torch.utils._python_dispatch import TorchDispatchMode

    class Watching(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            return func(*args, **(kwargs or {}))
    with Watching():
        z2, kl2 = fastvae.sample_with_kl(mu, lv, pm, plv, backend=backend)
    assert not z2.requires_grad
    assert backend == "reference" or kl2.grad_fn.owns_saved
    prior = [t for t in (pm, plv) if isinstance(t, torch.Tensor)]
    with pytest.raises(RuntimeError, match="does not require grad"):
        torch.autograd.grad(z.sum(), prior)
    g = torch.autograd.grad(kl.sum(), prior)
    want = grads(F.kl_normal_dim(mu, lv, pm, plv).sum(-1), prior)
    for a, b in zip(g, want):
        assert_close("prior grad", a, b, dt)


@pytest.mark.parametrize("shape", [(5, 7), (3, 2, 4, 4), (2, 5000), (6,)])
def test_same_z_as_reparameterize(backend, cpu_path, shape):
    """The seed contract: after torch.manual_seed(s), or with equally seeded generators,
    z is reparameterize's z of the flattened posterior, bit for bit ((B,): one latent each)."""
    mu, lv = posterior(shape, case_dtype(backend), grad=False)
    pm, plv = torch.randn(shape, dtype=mu.dtype), torch.randn(shape, dtype=mu.dtype)
    flat = (shape[0], -1)
    torch.manual_seed(77)
    z, _ = fastvae.sample_with_kl(mu, lv, pm, plv, backend=backend)
    torch.manual_seed(77)
    want = fastvae.reparameterize(mu.reshape(flat), lv.reshape(flat), backend=backend)
    assert torch.equal(z, want.reshape(shape))
    z2, _ = fastvae.sample_with_kl(mu, lv, generator=generator(5), backend=backend)
    want2 = fastvae.reparameterize(mu.reshape(flat), lv.reshape(flat), generator=generator(5),
                                   backend=backend)
    assert torch.equal(z2, want2.reshape(shape))


def test_seeding(backend):
    mu, lv = posterior((6, 3), case_dtype(backend), grad=False)
    torch.manual_seed(1234)
    a, ka = fastvae.sample_with_kl(mu, lv, backend=backend)
    b, _ = fastvae.sample_with_kl(mu, lv, backend=backend)
    torch.manual_seed(1234)
    c, kc = fastvae.sample_with_kl(mu, lv, backend=backend)
    assert torch.equal(a, c) and torch.equal(ka, kc) and not torch.equal(a, b)
    g1, g2 = generator(9), generator(9)
    assert torch.equal(fastvae.sample_with_kl(mu, lv, generator=g1, backend=backend)[0],
                       fastvae.sample_with_kl(mu, lv, generator=g2, backend=backend)[0])


def test_mean_and_variance(seed, backend):
    """One (mu, logvar) repeated: the draws' mean and variance are mu and exp(logvar)."""
    dt = case_dtype(backend)
    n = bounded(b=200_000, l=1)[0]
    mu = torch.full((n, 1, 1), 1.5, dtype=dt)
    lv = torch.full((n, 1, 1), math.log(0.25), dtype=dt)
    z, kl = fastvae.sample_with_kl(mu, lv, 1.0, 0.0, backend=backend)
    z = z.double().flatten()
    assert abs(z.mean().item() - 1.5) < 6 * 0.5 / math.sqrt(n)
    assert abs(z.var().item() - 0.25) < 6 * 0.25 * math.sqrt(2 / n)
    want = 0.5 * (0.0 - math.log(0.25) + 0.25 + 0.25 - 1)  # KL(N(1.5, 1/4) || N(1, 1))
    assert_close("kl", kl, torch.full((n,), want, dtype=F64), dt)


def test_gradcheck(backend):
    """float64 finite differences, re-seeded so that every evaluation draws the same eps."""
    mu, lv = posterior((3, 2, 2), F64)
    pm, plv = make_prior("channel", (3, 2, 2), F64)

    def fn(a, b, c, d):
        return fastvae.sample_with_kl(a, b, c, d, generator=generator(7), backend=backend)

    assert torch.autograd.gradcheck(fn, (mu, lv, pm, plv))
    assert torch.autograd.gradgradcheck(fn, (mu, lv, pm, plv))
    assert torch.autograd.gradcheck(lambda b: fn(mu.detach(), b, None, None), (lv,))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_low_precision(seed, backend, dtype):
    mu, lv = posterior((16, 3, 5), dtype)
    pm, plv = make_prior("full", (16, 3, 5), dtype)
    z, kl = fastvae.sample_with_kl(mu, lv, pm, plv, backend=backend)
    assert z.dtype == dtype and kl.dtype == torch.float32
    assert torch.isfinite(z).all() and eps_of(z, mu, lv).abs().max() < 8
    assert_close("kl", kl, F.kl_normal_dim(mu, lv, pm, plv).reshape(16, -1).sum(-1),
                 torch.float32, rtol=1e-5)
    (z.float().sum() + kl.sum()).backward()
    for t in (mu, lv, pm, plv):
        assert t.grad.dtype == dtype and torch.isfinite(t.grad).all()
    assert_close("dmu_p", pm.grad, grads(F.kl_normal_dim(mu, lv, pm, plv).sum(), [pm])[0], dtype,
                 rtol=4 * torch.finfo(dtype).eps)


@pytest.mark.parametrize("first", ["row", "expanded"])
def test_a_shared_row_and_its_expanded_rows_in_one_process(seed, backend, first):
    """A bfloat16 prior as one (N,) row and as that row expanded to (B, N) (row stride 0)
    launch alike, but the row's per-row gradient is kept in float32 until it is summed
    (saved_grad_dtype) and the expanded one's is not: whichever comes first, each call
    gives what it gives alone."""
    dt = torch.bfloat16
    b, n = 64, 8
    mu, lv = posterior((b, n), dt)
    row_mu, row_lv = torch.randn(n, dtype=dt), torch.randn(n, dtype=dt)

    def call(kind):
        pm, plv = leaf(row_mu.clone()), leaf(row_lv.clone())
        args = (pm, plv) if kind == "row" else (pm.expand(b, n), plv.expand(b, n))
        torch.manual_seed(1)
        z, kl = fastvae.sample_with_kl(mu, lv, *args, backend=backend)
        return [z.detach(), kl.detach(),
                *torch.autograd.grad([z, kl], [mu, lv, pm, plv],
                                     [torch.ones_like(z), torch.ones_like(kl)])]

    def fresh_plans():   # nothing kept from other calls: the next one plans anew
        if backend == "triton":
            from fastvae.backends.triton_backend import sample_with_kl as host
            host._PLANS.clear()
    second = "expanded" if first == "row" else "row"
    fresh_plans()
    alone = call(second)
    fresh_plans()
    call(first)
    for got, want in zip(call(second), alone):
        assert got.dtype == want.dtype and torch.equal(got, want)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("kind", ["full", "shared"])
def test_a_float64_prior_beside_a_narrower_posterior(seed, backend, dtype, kind):
    """The KL and the prior's gradients in float64 (on "triton" too, whose kernels' math is
    float32: that half runs in the torch backend's aten there); z the same as beside a
    prior in the posterior's dtype (the seed is drawn from mu), its gradients as usual."""
    shape = (9, 3, 5)
    mu, lv = posterior(shape, dtype)
    pm, plv = make_prior(kind, shape, F64)
    z, kl = fastvae.sample_with_kl(mu, lv, pm, plv, generator=generator(4), backend=backend)
    narrow = [p.detach().to(dtype) if isinstance(p, torch.Tensor) else p for p in (pm, plv)]
    z_narrow, _ = fastvae.sample_with_kl(mu, lv, *narrow, generator=generator(4),
                                         backend=backend)
    assert torch.equal(z, z_narrow) and kl.dtype == F64
    want_kl = F.kl_normal_dim(mu, lv, pm, plv).expand(shape).reshape(9, -1).sum(-1)
    assert_close("kl", kl, want_kl, F64, rtol=1e-12)
    ins = [t for t in (mu, lv, pm, plv) if isinstance(t, torch.Tensor)]
    dz, gk = torch.randn(shape, dtype=dtype), torch.randn(9, dtype=F64)
    got = torch.autograd.grad([z, kl], ins, [dz, gk])
    eps = eps_of(z, mu, lv)
    z64 = mu.double() + torch.exp(0.5 * lv.double()) * eps
    want = torch.autograd.grad([z64, want_kl], ins, [dz.double(), gk])
    for g, e, t in zip(got, want, ins):
        assert g.dtype == t.dtype and g.shape == t.shape
        assert_close("grad", g, e, t.dtype, rtol={F64: 1e-12})


def test_a_float64_prior_rounds_a_16_bit_posteriors_gradient_once(seed, backend):
    """Beside a float64 prior (on "triton": the KL half apart from the kernel), the bf16
    dlogvar_q = 0.5 dz std eps + g_kl dKL/dlogvar_q is summed wide and rounded once, from
    the saved bf16 dKL/dlogvar_q (``saved_grad_dtype``: bf16 has float32's range):
    elementwise within one bf16 rounding of that sum, also where q is close to p and the
    two terms cancel. (The reference rounds as eager autograd does: each path's gradient
    in bf16, then their sum.)"""
    if backend == "reference":
        pytest.skip("eager autograd's rounding")
    shape = (64, 32)
    mu = (torch.randn(shape) * 0.1).bfloat16()
    lv = (torch.randn(shape) * 0.1).bfloat16()
    pm = leaf((mu.float() + 0.05 * torch.randn(shape)).double())
    plv = leaf((lv.float() + 0.05 * torch.randn(shape)).double())
    dz, gk = torch.randn(shape).bfloat16(), torch.randn(64, dtype=F64)
    ins = [leaf(mu), leaf(lv), pm, plv]
    z, kl = fastvae.sample_with_kl(*ins, generator=generator(3), backend=backend)
    got = torch.autograd.grad([z, kl], ins[1], [dz, gk])[0]
    # eps as drawn (z's bf16 rounding hides it): the noise itself, or Philox's at std 1
    impl = fastvae.backends.get(backend)
    noise = impl.reparameterize_noise(mu, 0, generator(3))
    eps = (noise if noise.shape == shape else
           impl.reparameterize_std_eps(torch.zeros(shape), noise, 0)).double()
    lv64 = lv.double()
    saved = (0.5 * torch.expm1(lv64 - plv.detach())).bfloat16().double()
    once = (0.5 * dz.double() * torch.exp(0.5 * lv64) * eps + gk[:, None] * saved).bfloat16()
    ulp = torch.exp2(torch.floor(torch.log2(once.double().abs().clamp(min=1e-30))) - 7)
    assert float(((got.double() - once.double()) / ulp).abs().max()) <= 1.0


def test_empty(backend):
    dt = case_dtype(backend)
    mu, lv = posterior((0, 3, 2), dt)
    z, kl = fastvae.sample_with_kl(mu, lv, backend=backend)
    assert z.shape == (0, 3, 2) and kl.shape == (0,)
    (z.sum() + kl.sum()).backward()
    assert mu.grad.shape == (0, 3, 2)
    z, kl = fastvae.sample_with_kl(torch.zeros(2, 0), torch.zeros(2, 0), backend=backend)
    assert z.shape == (2, 0) and torch.equal(kl, torch.zeros(2))


def test_errors(backend):
    mu = torch.randn(4, 3)
    with pytest.raises(TypeError, match="must share a dtype"):
        fastvae.sample_with_kl(mu, mu.double(), backend=backend)
    # what is wrong with a tensor comes before how it differs from another
    with pytest.raises(TypeError, match="mu_q must be a floating-point tensor"):
        fastvae.sample_with_kl(mu.long(), mu, backend=backend)
    with pytest.raises(TypeError, match="mu_q must be a torch.Tensor, got list"):
        fastvae.sample_with_kl(mu.tolist(), mu, backend=backend)
    with pytest.raises(TypeError, match="mu_p must be a number or a tensor broadcastable to "
                       "mu_q, got numpy.ndarray"):
        fastvae.sample_with_kl(mu, mu, mu.cpu().numpy(), backend=backend)
    with pytest.raises(ValueError, match="mu_q and logvar_q must share a shape"):
        fastvae.sample_with_kl(mu, mu[:, :2], backend=backend)
    with pytest.raises(ValueError, match="mu_p of shape"):
        fastvae.sample_with_kl(mu, mu, torch.zeros(4, 2), backend=backend)
    with pytest.raises(TypeError, match="generator must be a torch.Generator"):
        fastvae.sample_with_kl(mu, mu, generator=3, backend=backend)
    with pytest.raises(ValueError, match="non-finite"):
        fastvae.sample_with_kl(mu, mu * float("nan"), backend=backend, validate=True)


def test_halves_of_one_encoder_output(seed, backend):
    """``mu, logvar = h.chunk(2, dim=1)`` (row-strided views, as hierarchical VAEs split
    one convolution's output): the same z as reparameterize, the KL and the gradients."""
    dt = case_dtype(backend)
    h = leaf(torch.randn(3, 4, 2, 5, dtype=dt))
    mu, lv = h.chunk(2, dim=1)
    pm, plv = torch.randn(3, 2, 2, 5, dtype=dt), torch.randn(3, 2, 2, 5, dtype=dt)
    torch.manual_seed(8)
    z, kl = fastvae.sample_with_kl(mu, lv, pm, plv, backend=backend)
    torch.manual_seed(8)
    want_z = fastvae.reparameterize(mu.reshape(3, -1), lv.reshape(3, -1), backend=backend)
    assert torch.equal(z.detach(), want_z.detach().reshape(z.shape))
    want_kl = F.kl_normal_dim(mu, lv, pm, plv).reshape(3, -1).sum(-1)
    assert_close("kl", kl, want_kl, dt, rtol={F64: 1e-12})
    dz, gk = torch.randn(z.shape, dtype=dt), torch.randn(3, dtype=dt)
    (g,) = torch.autograd.grad([z, kl], [h], [dz, gk])
    z64 = mu.double() + torch.exp(0.5 * lv.double()) * eps_of(z, mu, lv)
    (want,) = torch.autograd.grad([z64, want_kl], [h], [dz.double(), gk.double()])
    assert_close("d/dh", g, want, dt, rtol={F64: 1e-11})


@pytest.mark.parametrize("centre", [-170.0, -80.0, 80.0, 170.0, 200.0])
def test_extreme_log_variances(seed, backend, centre):
    """float32 log-variances far out, in lanes mixed with ordinary ones, with z drawn: the
    KL and its gradients stay finite and right. A prior variance of e^-170 makes
    (mu_q - mu_p)^2 / var_p overflow float32: those lanes have mu_p = mu_q."""
    dt = torch.float32
    shape = (4, 19)
    lv = torch.randn(shape, dtype=dt)
    lv[:, ::3] += centre
    mu = torch.randn(shape, dtype=dt)
    pm = torch.randn(shape, dtype=dt)
    if centre < -88:
        pm[:, ::3] = mu[:, ::3]
    plv = lv + torch.randn(shape, dtype=dt)
    mu, lv, pm, plv = (leaf(t) for t in (mu, lv, pm, plv))
    z, kl = fastvae.sample_with_kl(mu, lv, pm, plv, backend=backend)
    want = F.kl_normal_dim(mu, lv, pm, plv).sum(-1)
    assert_close("kl", kl, want, dt)
    gk = torch.randn(4, dtype=dt)
    got = torch.autograd.grad(kl, [mu, lv, pm, plv], gk)
    for name, g, e in zip(("mu_q", "logvar_q", "mu_p", "logvar_p"), got,
                          grads(F.kl_normal_dim(mu, lv, pm, plv).sum(-1), [mu, lv, pm, plv],
                                gk.double())):
        assert_close(f"d/d{name}", g, e, dt)


def test_retained_graph_gives_the_same_gradients_twice(seed, backend):
    """Backward may write its outputs over the saved gradients only when the graph is freed
    after it: with retain_graph a second backward sees them unchanged (float32: the C
    kernel's case on "torch")."""
    dt = torch.float32
    mu, lv = posterior((5, 9), dt)
    pm, plv = make_prior("full", (5, 9), dt)
    z, kl = fastvae.sample_with_kl(mu, lv, pm, plv, backend=backend)
    dz, gk = torch.randn(5, 9, dtype=dt), torch.randn(5, dtype=dt)
    first = torch.autograd.grad([z, kl], [mu, lv, pm, plv], [dz, gk], retain_graph=True)
    second = torch.autograd.grad([z, kl], [mu, lv, pm, plv], [dz, gk])
    for a, b in zip(first, second):
        assert torch.equal(a, b)



@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32, F64])
@pytest.mark.parametrize("kind", ["standard", "full", "shared"])
def test_the_kl_is_kl_normals_bit_for_bit_on_torch_aten(seed, monkeypatch, dtype, kind):
    """On the "torch" backend's aten path (float64 always, else ``FASTVAE_NATIVE=0``) the
    KL and the gradients it saves are kl_normal's to the bit, at log-variances of +-80
    too: one function computes them for both ops. (The C kernel's row sum with the draw
    differs in order; 16-bit backward weighs differently: a tolerance holds those.)"""
    from fastvae.backends.torch_backend import native
    try:
        with monkeypatch.context() as patch:
            patch.setenv("FASTVAE_NATIVE", "0")
            native.reset()
            shape = (40, 4001)    # more than one row chunk (rows.CHUNK_ELEMS)
            mu = leaf((torch.randn(shape) * 3).to(dtype))
            lv = leaf(torch.where(torch.rand(shape) < 0.2, 80.0 * torch.randn(shape).sign(),
                                  torch.randn(shape) * 4).to(dtype))
            pm, plv = make_prior(kind, shape, dtype)
            if kind == "full":   # equal to the posterior here and there: the cancelling case
                plv = leaf(torch.where(torch.rand(shape) < 0.3, lv.detach(), plv.detach()))
            ins = [t for t in (mu, lv, pm, plv) if isinstance(t, torch.Tensor)]
            _, kl = fastvae.sample_with_kl(mu, lv, pm, plv, generator=generator(1),
                                           backend="torch")
            want = fastvae.kl_normal(mu, lv, pm, plv, backend="torch")
            assert torch.equal(kl, want)
            if dtype in (torch.float32, F64):
                gk = torch.randn(shape[0], dtype=kl.dtype)
                got, expected = (torch.autograd.grad(k, ins, gk) for k in (kl, want))
                for g, e in zip(got, expected):
                    assert g.dtype == e.dtype and torch.equal(g, e)
    finally:
        native.reset()   # after the environment is back: the C kernel loads again
