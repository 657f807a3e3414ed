"""Higher-order gradients of every op on every backend (the ``backend`` fixture): Hessians
(``torch.autograd.functional.hessian``), gradient penalties (``create_graph=True`` then a
second grad), ``torch.func`` transforms (grad, jacrev, vmap) and forward-mode AD, against
the reference backend in float64 (float32 inputs on "triton", as everywhere).

The fused ops save first-order gradients only; when a graph of the backward is asked for
they recompute it from the inputs with the reference math (fastvae/ops/_autograd.py),
and under ``torch.func`` the public functions run the reference math outright
(``last_backend()`` says "reference"). These tests hold both to the right answer.
"""
from __future__ import annotations

import pytest
import torch
from torch.autograd.functional import hessian, jacobian

import fastvae
from _backends import case_dtype, generator
from _compare import assert_close, leaf

F64 = torch.float64
B, D, L, K = 3, 4, 2, 2


def _inputs(dt):
    """The same numbers in any dtype (drawn in float64 on the CPU, then cast and moved)."""
    g = torch.Generator().manual_seed(0)
    dev = torch.get_default_device()

    def t(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g, dtype=F64, device="cpu") * scale).to(dev, dt)

    x = torch.rand(B, D, generator=g, dtype=F64, device="cpu").to(dev, dt)
    return dict(x=x, xg=t(B, D), recon=t(B, D, scale=2), mu=t(B, L), lv=t(B, L, scale=0.5),
                z=t(B, L), obs=t(D, scale=0.3), obs_full=t(B, D, scale=0.3),
                recon_k=t(K, B, D, scale=2), z_k=t(K, B, L))


# name: (function of (backend, fixed inputs, *differentiable inputs), differentiable names)
CASES = {
    "elbo-bernoulli": (lambda be, f, r, m, v: fastvae.elbo(
        f["x"], r, m, v, reduction="sum", backend=be), ["recon", "mu", "lv"]),
    "elbo-cb-mc": (lambda be, f, r, m, v, z: fastvae.elbo(
        f["x"], r, m, v, likelihood="continuous_bernoulli", kl="mc", z=z, beta=0.7,
        backend=be), ["recon", "mu", "lv", "z"]),
    "elbo-gaussian-none": (lambda be, f, x, r, m, v, z, o: fastvae.elbo(
        x, r, m, v, likelihood="gaussian", kl="mc", z=z, obs_logvar=o, reduction="none",
        backend=be), ["xg", "recon", "mu", "lv", "z", "obs"]),
    "iwae-gaussian": (lambda be, f, x, r, m, v, z, o: fastvae.iwae_bound(
        x, r, m, v, z, likelihood="gaussian", obs_logvar=o, reduction="mean", backend=be),
        ["xg", "recon_k", "mu", "lv", "z_k", "obs"]),
    "iwae-bernoulli": (lambda be, f, r, m, v, z: fastvae.iwae_bound(
        f["x"], r, m, v, z, backend=be), ["recon_k", "mu", "lv", "z_k"]),
    "kl_standard_normal": (lambda be, f, m, v: fastvae.kl_standard_normal(m, v, backend=be),
                           ["mu", "lv"]),
    "gaussian_log_prob": (lambda be, f, x, m, v: fastvae.gaussian_log_prob(x, m, v, backend=be),
                          ["xg", "recon", "obs_full"]),
}


def _setup(name, backend):
    """(scalar function of the differentiable inputs on ``backend``, the same on the
    reference, the inputs in the case's dtype, their float64 copies, the dtype)."""
    fn, names = CASES[name]
    dt = case_dtype(backend)
    fixed, fixed64 = _inputs(dt), _inputs(F64)
    w = torch.linspace(0.5, 1.5, B, dtype=dt)  # rows weighted: per-row outputs too

    def scalar(be, fx):
        def f(*ts):
            out = fn(be, fx, *ts)
            return (out * w.to(out.dtype)).sum() if out.dim() else out
        return f

    ins = [leaf(fixed[n]) for n in names]
    ins64 = [leaf(fixed64[n]) for n in names]
    return scalar(backend, fixed), scalar("reference", fixed64), ins, ins64, dt


@pytest.mark.parametrize("name", list(CASES))
def test_hessian(backend, name):
    f, f_ref, ins, ins64, dt = _setup(name, backend)
    got, want = hessian(f, tuple(ins)), hessian(f_ref, tuple(ins64))
    for i, (row, row_want) in enumerate(zip(got, want)):
        for j, (h, e) in enumerate(zip(row, row_want)):
            assert_close(f"d2 / d{i} d{j}", h, e, dt, scale=e.abs().max() + 1e-3)


@pytest.mark.parametrize("name", list(CASES))
def test_gradient_penalty(backend, name):
    """create_graph=True: the first gradient is the plain one, and carries a graph whose
    gradient (here of a penalty sum(g^2)) is the true second derivative."""
    f, f_ref, ins, ins64, dt = _setup(name, backend)
    g1 = torch.autograd.grad(f(*ins), ins, create_graph=True)
    assert all(g.requires_grad for g in g1), "a gradient lost its graph: a penalty would be dropped"
    plain = torch.autograd.grad(f(*ins), ins)
    pen = torch.autograd.grad(sum((g.double() ** 2).sum() for g in g1), ins)
    g1_ref = torch.autograd.grad(f_ref(*ins64), ins64, create_graph=True)
    pen_ref = torch.autograd.grad(sum((g ** 2).sum() for g in g1_ref), ins64)
    for i, (a, b, e) in enumerate(zip(g1, plain, g1_ref)):
        assert_close(f"first order {i}, create_graph", a, e, dt, scale=e.abs().max() + 1e-3)
        assert_close(f"first order {i}, plain", b, a, dt, scale=e.abs().max() + 1e-3)
    for i, (a, e) in enumerate(zip(pen, pen_ref)):
        assert_close(f"penalty gradient {i}", a, e, dt, scale=e.abs().max() + 1e-3)


# the ops whose backward runs a C kernel or a Triton kernel on the grads, besides CASES
VECTORIZED = {
    **CASES,
    "kl_normal": (lambda be, f, m, v, pm: fastvae.kl_normal(m, v, pm, f["lv"] * 0.5, backend=be),
                  ["mu", "lv", "z"]),
    "sample_with_kl": (lambda be, f, m, v, pm: fastvae.sample_with_kl(
        m, v, pm, f["lv"] * 0.5, backend=be)[1], ["mu", "lv", "z"]),
}


@pytest.mark.parametrize("dtype", [torch.float32, F64])  # float32: the C kernels' inputs
@pytest.mark.parametrize("name", list(VECTORIZED))
def test_vectorized_jacobian_and_hessian(backend, name, dtype):
    """``vectorize=True`` runs the backward under a (legacy) vmap, whose batched grads have
    no storage for a kernel to read: the ops recompute there, with the right numbers."""
    fn, names = VECTORIZED[name]
    dt = case_dtype(backend, dtype)
    fixed, fixed64 = _inputs(dt), _inputs(F64)
    ins, ins64 = tuple(fixed[n] for n in names), tuple(fixed64[n] for n in names)
    got = jacobian(lambda *ts: fn(backend, fixed, *ts), ins, vectorize=True)
    want = jacobian(lambda *ts: fn("reference", fixed64, *ts), ins64)
    for i, (a, e) in enumerate(zip(got, want)):
        assert_close(f"jacobian {i}", a, e, dt, scale=e.abs().max() + 1e-3)
    w = torch.linspace(0.5, 1.5, B, dtype=dt)

    def scalar(be, fx):
        def f(*ts):
            out = fn(be, fx, *ts)
            return (out * w.to(out.dtype)).sum() if out.dim() else out
        return f
    got = hessian(scalar(backend, fixed), ins, vectorize=True)
    want = hessian(scalar("reference", fixed64), ins64)
    for i, (row, row_want) in enumerate(zip(got, want)):
        for j, (h, e) in enumerate(zip(row, row_want)):
            assert_close(f"d2 / d{i} d{j}", h, e, dt, scale=e.abs().max() + 1e-3)


@pytest.mark.parametrize("scale", [1.0, 0.5])   # 1: the plain backward skips its scaling
@pytest.mark.parametrize("dtype", [torch.float32, F64])  # float32: the C kernels' inputs
@pytest.mark.parametrize("name", list(VECTORIZED))
def test_forward_derivative_of_a_backward(backend, name, dtype, scale):
    """A forward run before a dual level opens, its backward inside one with a dual
    grad_output (the derivative of a gradient w.r.t. per-sample loss weights): the
    gradient's tangent is the gradient taken at the tangent, as backward is linear in
    grad_output. The saved gradients and the kernels carry no tangent; it was dropped."""
    import torch.autograd.forward_ad as fwad
    fn, names = VECTORIZED[name]
    dt = case_dtype(backend, dtype)
    fixed, fixed64 = _inputs(dt), _inputs(F64)
    ins, ins64 = [leaf(fixed[n]) for n in names], [leaf(fixed64[n]) for n in names]
    out, want_out = fn(backend, fixed, *ins), fn("reference", fixed64, *ins64)
    tangent = torch.linspace(-1.0, 2.0, want_out.numel(), dtype=F64).reshape(want_out.shape)
    with fwad.dual_level():
        grad_out = fwad.make_dual(torch.full_like(out, scale), tangent.to(out.device, out.dtype))
        got = [fwad.unpack_dual(g).tangent
               for g in torch.autograd.grad(out, ins, grad_out)]   # the graph freed too
    want = torch.autograd.grad(want_out, ins64, tangent.to(want_out.device))
    for i, (a, e) in enumerate(zip(got, want)):
        assert a is not None, f"the tangent of gradient {i} was dropped"
        assert_close(f"tangent of gradient {i}", a, e, dt, scale=e.abs().max() + 1e-3)


@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_sample_with_kl_z_jacobian_vectorized(backend, dtype):
    """z's Jacobian under a vmap over the backward equals the plain one (the same eps)."""
    dt = case_dtype(backend, dtype)
    f = _inputs(dt)

    def z_of(m, v):
        torch.manual_seed(3)
        return fastvae.sample_with_kl(m, v, f["z"], f["lv"] * 0.5, backend=backend)[0]
    plain = jacobian(z_of, (f["mu"], f["lv"]))
    vec = jacobian(z_of, (f["mu"], f["lv"]), vectorize=True)
    for i, (a, e) in enumerate(zip(vec, plain)):
        assert_close(f"d z / d input {i}", a, e, dt, scale=e.abs().max() + 1e-3)


@pytest.mark.parametrize("name", list(CASES))
def test_torch_func_grad_and_jacrev(backend, name):
    f, f_ref, ins, ins64, dt = _setup(name, backend)
    argnums = tuple(range(len(ins)))
    got = torch.func.grad(f, argnums=argnums)(*[t.detach() for t in ins])
    assert fastvae.last_backend() == "reference"  # transforms run the reference math
    want = torch.autograd.grad(f_ref(*ins64), ins64)
    for i, (a, e) in enumerate(zip(got, want)):
        assert_close(f"torch.func.grad {i}", a, e, dt, scale=e.abs().max() + 1e-3)
    jac = torch.func.jacrev(torch.func.grad(f, argnums=0))(*[t.detach() for t in ins])
    h = hessian(f_ref, tuple(ins64))[0][0]
    assert_close("jacrev(grad)", jac, h, dt, scale=h.abs().max() + 1e-3)


def test_torch_func_vmap(backend):
    """vmap over a leading dimension: each slice as its own call."""
    dt = case_dtype(backend)
    x, m = torch.randn(5, B, D, dtype=dt), torch.randn(5, B, D, dtype=dt)
    mu, lv = torch.randn(5, B, L, dtype=dt), torch.randn(5, B, L, dtype=dt)
    r = torch.randn(5, B, D, dtype=dt)
    xs = torch.rand(5, B, D, dtype=dt)
    for what, fn, args in [
            ("gaussian_log_prob", lambda a, b: fastvae.gaussian_log_prob(a, b, 0.3, backend=backend),
             (x, m)),
            ("kl_standard_normal", lambda a, b: fastvae.kl_standard_normal(a, b, backend=backend),
             (mu, lv)),
            ("elbo", lambda a, b, c, d: fastvae.elbo(a, b, c, d, reduction="none", backend=backend),
             (xs, r, mu, lv))]:
        got = torch.func.vmap(fn)(*args)
        want = torch.stack([fn(*(a[i] for a in args)) for i in range(5)])
        assert_close(what, got, want, dt, rtol={F64: 1e-13})


@pytest.mark.parametrize("name", list(CASES))
def test_forward_mode_ad(backend, name):
    """torch.autograd.forward_ad: the JVP along random tangents is the float64 reference's
    gradient dotted with them (the fused ops' autograd.Function has no jvp: an open dual
    level runs the reference math, as a torch.func transform does). Two plain calls of the
    dual call's signature first, so a prepared route exists and must step aside too."""
    import torch.autograd.forward_ad as fwad
    f, f_ref, ins, ins64, dt = _setup(name, backend)
    for _ in range(2):
        f(*[t.detach() for t in ins])
    g = torch.Generator().manual_seed(3)
    tangents = [torch.randn(t.shape, generator=g, dtype=F64, device="cpu").to(t.device)
                for t in ins]
    with fwad.dual_level():
        out = f(*[fwad.make_dual(t.detach(), v.to(dt)) for t, v in zip(ins, tangents)])
        got = fwad.unpack_dual(out).tangent
    assert fastvae.last_backend() == "reference"
    grads = torch.autograd.grad(f_ref(*ins64), ins64)
    want = sum((gr * v).sum() for gr, v in zip(grads, tangents))
    assert_close("JVP", got, want, dt, scale=want.abs() + 1e-3)


def test_forward_mode_ad_of_the_samplers(backend):
    """reparameterize's and sample_with_kl's z tangents: t_mu + 0.5 exp(0.5 lv) eps t_lv,
    eps recovered from z; sample_with_kl's KL tangent is kl_normal's gradient dotted with
    the tangents."""
    import torch.autograd.forward_ad as fwad
    dt = case_dtype(backend)
    g = torch.Generator().manual_seed(4)
    dev = torch.get_default_device()
    mu, lv, pm, plv, t_mu, t_lv, t_pm, t_plv = (
        torch.randn(3, 2, generator=g, dtype=F64, device="cpu").to(dev) for _ in range(8))
    for _ in range(2):  # the dual call's signature: a prepared route that must step aside
        fastvae.sample_with_kl(mu.to(dt), lv.to(dt), pm.to(dt), plv.to(dt),
                               generator=generator(6), backend=backend)
    with fwad.dual_level():
        dual = [fwad.make_dual(a.to(dt), t.to(dt)) for a, t in
                ((mu, t_mu), (lv, t_lv), (pm, t_pm), (plv, t_plv))]
        z = fastvae.reparameterize(dual[0], dual[1], generator=generator(5), backend=backend)
        z2, kl = fastvae.sample_with_kl(*dual, generator=generator(6), backend=backend)
        tz, tz2, tkl = (fwad.unpack_dual(o).tangent for o in (z, z2, kl))
        zv, z2v = fwad.unpack_dual(z).primal, fwad.unpack_dual(z2).primal
    for what, zz, tt in (("reparameterize", zv, tz), ("sample_with_kl z", z2v, tz2)):
        eps = (zz.double() - mu) * torch.exp(-0.5 * lv)
        assert_close(what, tt, t_mu + 0.5 * torch.exp(0.5 * lv) * eps * t_lv, dt, scale=1.0)
    ins64 = [leaf(a) for a in (mu, lv, pm, plv)]
    grads = torch.autograd.grad(fastvae.kl_normal(*ins64, backend="reference").sum(), ins64,
                                retain_graph=True)
    for i in range(3):  # each row's KL: its own row's gradient dotted with the tangents
        want = sum((gr[i] * v[i]).sum() for gr, v in zip(grads, (t_mu, t_lv, t_pm, t_plv)))
        assert_close(f"sample_with_kl KL row {i}", tkl[i], want, dt, scale=want.abs() + 1e-3)


# -- reparameterize: z = mu + exp(0.5 logvar) eps, with eps recovered from z ---------------------

def _sample(backend, n_samples):
    dt = case_dtype(backend)
    mu, lv = leaf(torch.randn(3, 2, dtype=dt)), leaf(torch.randn(3, 2, dtype=dt) * 0.5)
    z = fastvae.reparameterize(mu, lv, n_samples=n_samples, generator=generator(5),
                               backend=backend)
    m64, l64 = leaf(mu.double()), leaf(lv.double())
    eps = ((z.detach().double() - m64.detach()) * torch.exp(-0.5 * l64.detach()))
    return dt, mu, lv, z, m64, l64, m64 + torch.exp(0.5 * l64) * eps


@pytest.mark.parametrize("n_samples", [None, 2])
def test_reparameterize_second_derivative(backend, n_samples):
    """d/dlogvar of sum(dz * 0.5 * std * eps) = sum(dz * 0.25 * std * eps) (a penalty on
    dlogvar), and d/dmu of it is 0."""
    dt, mu, lv, z, m64, l64, z64 = _sample(backend, n_samples)
    dz = torch.randn(z.shape, dtype=dt)
    (glv,) = torch.autograd.grad(z, lv, dz, create_graph=True)
    assert glv.requires_grad, "dlogvar lost its graph: a penalty on it would be silently ignored"
    h_lv, h_mu = torch.autograd.grad(glv.sum(), [lv, mu], allow_unused=True)
    (glv64,) = torch.autograd.grad(z64, l64, dz.double(), create_graph=True)
    (want,) = torch.autograd.grad(glv64.sum(), l64)
    assert_close("dlogvar", glv, glv64, dt, rtol={F64: 1e-12}, scale=1.0)
    assert_close("d2 / dlogvar2", h_lv, want, dt, rtol={F64: 1e-12}, scale=1.0)
    assert h_mu is None or torch.all(h_mu == 0)


@pytest.mark.parametrize("n_samples", [None, 2])
def test_reparameterize_hessian_through_a_loss(backend, n_samples):
    """The Hessian of sum(w * z^2) w.r.t. (mu, logvar), through the sampler's backward."""
    dt = case_dtype(backend)
    mu, lv = leaf(torch.randn(3, 2, dtype=dt)), leaf(torch.randn(3, 2, dtype=dt) * 0.5)
    shape = (3, 2) if n_samples is None else (n_samples, 3, 2)
    w = torch.rand(shape, dtype=dt) + 0.5
    seen = []

    def f(m, v):  # the same draw every call: a fresh generator at one seed
        z = fastvae.reparameterize(m, v, n_samples=n_samples, generator=generator(5),
                                   backend=backend)
        seen.append(z.detach())
        return (w * z * z).sum()

    got = hessian(f, (mu, lv))
    eps = (seen[0].double() - mu.detach().double()) * torch.exp(-0.5 * lv.detach().double())

    def f64(m, v):
        z = m + torch.exp(0.5 * v) * eps
        return (w.double() * z * z).sum()

    want = hessian(f64, (mu.detach().double(), lv.detach().double()))
    for i in range(2):
        for j in range(2):
            assert_close(f"d2 / d{i} d{j}", got[i][j], want[i][j], dt,
                         scale=want[i][j].abs().max() + 1e-3)


def test_reparameterize_under_torch_func(backend):
    """torch.func.grad through the sampler (the reference math, eps from torch's generator)."""
    dt = case_dtype(backend)
    mu, lv = torch.randn(3, 2, dtype=dt), torch.randn(3, 2, dtype=dt) * 0.5

    def f(m, v):
        z = fastvae.reparameterize(m, v, generator=generator(9), backend=backend)
        return (z * z).sum()

    g_mu, g_lv = torch.func.grad(f, argnums=(0, 1))(mu, lv)
    assert fastvae.last_backend() == "reference"
    eps = torch.randn(3, 2, generator=generator(9), dtype=dt).double()
    z = mu.double() + torch.exp(0.5 * lv.double()) * eps
    assert_close("dmu", g_mu, 2 * z, dt, rtol={F64: 1e-13})
    assert_close("dlogvar", g_lv, z * torch.exp(0.5 * lv.double()) * eps, dt, rtol={F64: 1e-13})
    # vmap: each slice draws its own eps (randomness="different"), of mu's shape
    mus, lvs = torch.randn(4, 3, 2, dtype=dt), torch.randn(4, 3, 2, dtype=dt)
    zs = torch.func.vmap(lambda m, v: fastvae.reparameterize(m, v, backend=backend),
                         randomness="different")(mus, lvs)
    eps = (zs.double() - mus.double()) * torch.exp(-0.5 * lvs.double())
    assert zs.shape == (4, 3, 2) and zs.dtype == dt and torch.isfinite(eps).all()
    assert len({tuple(e.flatten().tolist()) for e in eps}) == 4


# -- what cannot be done says so ---------------------------------------------------------------------

def test_input_modified_in_place_after_the_call_is_an_error(backend):
    """The fused ops save their inputs for backward (higher orders recompute from them), so
    one changed in place since the call is autograd's error, in every backward, as for any
    op that saves its inputs. (The reference's autograd graph saves no input here: it
    answers for the values at the call.)"""
    dt = case_dtype(backend)
    mu, lv = leaf(torch.randn(3, 2, dtype=dt)), leaf(torch.randn(3, 2, dtype=dt))
    m, v = mu * 1, lv * 1
    out = fastvae.kl_standard_normal(m, v, backend=backend).sum()
    want = torch.autograd.grad(fastvae.kl_standard_normal(mu * 1, lv * 1, backend="reference")
                               .sum(), [mu, lv])
    with torch.no_grad():
        v.add_(1.0)
    if backend != "reference":
        for create_graph in (True, False):
            with pytest.raises(RuntimeError, match="modified by an inplace operation"):
                torch.autograd.grad(out, [mu, lv], create_graph=create_graph, retain_graph=True)
        return
    got = torch.autograd.grad(out, [mu, lv], create_graph=True)
    for a, e in zip(got, want):
        assert_close("gradient at the call's values", a, e, dt)
