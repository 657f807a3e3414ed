"""fastvae.kl_normal on every backend (the ``backend`` fixture): the KL between diagonal
Gaussians, value and all four gradients against the float64 textbook formula and
``torch.distributions.kl_divergence(Normal, Normal)``, for any ``(B, *)`` shape and
every broadcast pattern of the prior, at extreme log-variances (+-80, where
``exp(lv_q) * exp(-lv_p)`` overflows float32), in low precision, on empty inputs, under
gradcheck, and its errors. On "torch" the float32 cases run the C kernel
(gaussian_rows.c); ``cpu_path`` runs the broadcast cases once more on the aten fallback;
the kernel's own checks (threads, layouts, chunks): test_gaussian_rows.py.

Launch counts and what autograd saves on Triton: tests/test_triton_backend.py.
"""
from __future__ import annotations

import math

import pytest
import torch
from torch.distributions import Normal, kl_divergence

import fastvae
import _formulas as F
from _backends import case_dtype
from _compare import assert_close, grads, leaf

F64 = torch.float64

# prior layout -> its shape for a (B, C, H, W) posterior (None: a Python number)
PRIORS = {"number": None, "0-d": (), "trailing (W,)": (-1,), "channel (1,C,1,1)": (1, -2, 1, 1),
          "per-sample (B,1,1,1)": (-4, 1, 1, 1), "full": (-4, -2, -3, -1), "(C,H,W)": (-2, -3, -1)}


def prior_tensor(kind, shape, dtype, scale=1.0, shift=0.0):
    if PRIORS[kind] is None:
        return 0.7 * scale + shift
    b, c, h, w = shape
    dims = {-1: w, -2: c, -3: h, -4: b}
    sizes = [dims.get(s, s) for s in PRIORS[kind]]
    return leaf(torch.randn(sizes, dtype=dtype) * scale + shift)


def distributions_kl(mu_q, lv_q, mu_p, lv_p):
    """torch.distributions' KL in float64, summed per sample."""
    as64 = lambda t: t.detach().double() if isinstance(t, torch.Tensor) else torch.tensor(  # noqa: E731
        float(t), dtype=F64)
    q = Normal(as64(mu_q), torch.exp(0.5 * as64(lv_q)))
    p = Normal(as64(mu_p), torch.exp(0.5 * as64(lv_p)))
    kl = kl_divergence(q, p).expand(mu_q.shape)
    return kl.reshape(mu_q.shape[0], -1).sum(-1)


@pytest.mark.parametrize("kind", list(PRIORS))
@pytest.mark.parametrize("shape", [(1, 1, 1, 1), (5, 3, 4, 7), (2, 16, 8, 8), (33, 2, 1, 3)])
def test_matches_formula_every_broadcast(seed, backend, cpu_path, kind, shape):
    dt = case_dtype(backend)
    mu, lv = leaf(torch.randn(shape, dtype=dt) * 2), leaf(torch.randn(shape, dtype=dt) * 2)
    pm, plv = prior_tensor(kind, shape, dt, 2.0), prior_tensor(kind, shape, dt, 1.5)
    got = fastvae.kl_normal(mu, lv, pm, plv, backend=backend)
    assert fastvae.last_backend() == backend
    assert got.shape == shape[:1] and got.dtype == (F64 if dt == F64 else torch.float32)
    want = F.kl_normal_dim(mu, lv, pm, plv).expand(shape).reshape(shape[0], -1).sum(-1)
    assert_close("kl", got, want, dt, rtol={F64: 1e-12})
    assert_close("kl vs torch.distributions", got, distributions_kl(mu, lv, pm, plv), dt,
                 rtol={F64: 1e-12})
    ins = [t for t in (mu, lv, pm, plv) if isinstance(t, torch.Tensor)]
    w = torch.randn(shape[0], dtype=F64)
    for name, g, e in zip(("mu_q", "logvar_q", "mu_p", "logvar_p"), grads(got, ins, w),
                          grads(want, ins, w)):
        assert g.dtype == dt
        assert_close(f"d kl / d {name}", g, e, dt, rtol={F64: 1e-11})


@pytest.mark.parametrize("shape", [(7,), (4, 9), (3, 1003), (257, 33)])
def test_any_rank_and_standard_normal_prior(seed, backend, shape):
    """(B,) and (B, L) posteriors; with mu_p = logvar_p = 0 it is kl_standard_normal."""
    dt = case_dtype(backend)
    mu, lv = torch.randn(shape, dtype=dt), torch.randn(shape, dtype=dt)
    got = fastvae.kl_normal(mu, lv, 0.0, 0.0, backend=backend)
    flat = (shape[0], -1)
    want = fastvae.kl_standard_normal(mu.reshape(flat), lv.reshape(flat), backend="reference")
    assert_close("kl", got, want, dt)
    zero = torch.zeros_like(mu)
    assert_close("tensor zeros", fastvae.kl_normal(mu, lv, zero, zero, backend=backend), want, dt)
    assert torch.equal(fastvae.kl_normal(mu, lv, mu, lv, backend=backend), torch.zeros(shape[0],
                                                                                      dtype=want.dtype))


EXTREME = [-88.0, -80.0, -40.0, 0.0, 40.0, 80.0, 88.0]


# pairs whose variance ratio exp(lv_q - lv_p) itself fits float32
@pytest.mark.parametrize("lv_q,lv_p", [(q, p) for q in EXTREME for p in EXTREME if abs(q - p) <= 80])
def test_extreme_log_variances(seed, backend, lv_q, lv_p):
    """float32 inputs at log-variances up to +-88: the value and gradients stay finite and
    right wherever the float64 KL fits float32, though ``exp(lv_q)``, ``exp(-lv_p)`` and
    ``d^2`` alone over- or underflow there (below)."""
    dt = torch.float32
    b, n = 4, 6
    lv = leaf(torch.full((b, n), lv_q) + 0.1 * torch.randn(b, n))
    plv = leaf(torch.full((b, n), lv_p) + 0.1 * torch.randn(b, n))
    pm = leaf(torch.randn(b, n))
    # a mean difference of a few prior standard deviations: d ~ exp(lv_p / 2)
    mu = leaf(pm.detach() + torch.randn(b, n) * math.exp(lv_p / 2))
    got = fastvae.kl_normal(mu, lv, pm, plv, backend=backend)
    o = [t.detach().double().requires_grad_() for t in (mu, lv, pm, plv)]
    want = F.kl_normal_dim(*o).sum(-1)
    assert torch.isfinite(got).all()
    assert_close("kl", got, want, dt, rtol=1e-4)
    assert_close("kl vs torch.distributions", got, distributions_kl(*o), dt, rtol=1e-4)
    for name, g, e in zip(("mu_q", "logvar_q", "mu_p", "logvar_p"),
                          grads(got, [mu, lv, pm, plv]), grads(want, o)):
        assert torch.isfinite(g).all(), name
        assert_close(f"d kl / d {name}", g, e, dt, rtol=1e-4)


def test_where_the_textbook_form_overflows(backend):
    """At lv_p = 88.7 a mean difference of 3 prior standard deviations squares past
    float32 (d^2 = 9 exp(88.7)): the textbook ``(e^lv_q + d^2) / e^lv_p`` is inf, the KL
    (about 4.8 per element) is not."""
    lv_q, lv_p = torch.full((2, 3), 88.0), torch.full((2, 3), 88.7)
    d = 3 * math.exp(44.35)
    mu_p = torch.zeros(2, 3)
    mu_q = mu_p + d
    naive = F.kl_normal_dim(mu_q, lv_q, mu_p, lv_p).float()  # float64 math, fine
    textbook32 = 0.5 * (lv_p - lv_q + (torch.exp(lv_q) + (mu_q - mu_p) ** 2) / torch.exp(lv_p) - 1)
    assert not torch.isfinite(textbook32).all()
    got = fastvae.kl_normal(mu_q, lv_q, mu_p, lv_p, backend=backend)
    assert_close("kl", got, naive.double().sum(-1), torch.float32, rtol=1e-5)


@pytest.mark.parametrize("prior", ["tensors", "none", "zeros"])
def test_a_variance_ratio_past_float32(seed, backend, prior):
    """lv_q - lv_p in (88.7, 89.4]: the ratio exp(lv_q - lv_p) overflows float32, half of
    it, the KL term and d/dlogvar_q, do not (e^89 / 2 = 2.2e38). One such element a row,
    the others ordinary: kl_normal, sample_with_kl's KL and the ELBO's analytic KL."""
    dt = torch.float32
    b, n = 3, 5
    diff = torch.tensor([88.8, 89.0, 89.35])
    lv_p = torch.randn(b, n) if prior == "tensors" else torch.zeros(b, n)
    lv_q = lv_p.clone()
    lv_q[:, 2] = lv_p[:, 2] + diff
    mu_q, mu_p = torch.randn(b, n), (torch.randn(b, n) if prior == "tensors"
                                     else torch.zeros(b, n))
    ins = [leaf(t) for t in (mu_q, lv_q)] + (
        [None, None] if prior == "none" else [leaf(t) for t in (mu_p, lv_p)])
    o = [leaf(t.double()) for t in (mu_q, lv_q, mu_p, lv_p)]
    want = F.kl_normal_dim(*o).sum(-1)
    assert torch.isfinite(want.float()).all()
    x = torch.rand(b, 4)
    recon = torch.zeros(b, 4)
    for what, got in (("kl_normal", fastvae.kl_normal(*ins, backend=backend)),
                      ("sample_with_kl", fastvae.sample_with_kl(*ins, backend=backend)[1]),
                      ("elbo", F.log_likelihood(x, recon, "bernoulli").float() - fastvae.elbo(
                          x, recon, *ins[:2], prior_mu=ins[2], prior_logvar=ins[3],
                          reduction="none", backend=backend))):
        assert_close(what, got, want, dt)
        used = [t for t in ins if t is not None]
        for i, (g, e) in enumerate(zip(grads(got, used), grads(want, o[:len(used)]))):
            assert torch.isfinite(g).all(), (what, i, g)
            assert_close(f"{what} d/d input {i}", g, e, dt)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_low_precision(seed, backend, dtype):
    shape = (9, 4, 5)
    mu, lv, pm, plv = (leaf(torch.randn(shape).to(dtype)) for _ in range(4))
    got = fastvae.kl_normal(mu, lv, pm, plv, backend=backend)
    assert got.dtype == torch.float32
    want = F.kl_normal_dim(mu, lv, pm, plv).reshape(9, -1).sum(-1)
    assert_close("kl", got, want, torch.float32, rtol=1e-5)
    got.sum().backward()
    eps = 4 * torch.finfo(dtype).eps
    for t, e in zip((mu, lv, pm, plv), grads(want, [mu, lv, pm, plv])):
        assert t.grad.dtype == dtype
        assert_close("grad", t.grad, e, dtype, rtol=eps)


def test_a_number_prior_beside_a_float64_log_variance_is_float64(backend):
    """The result is float64 where any posterior tensor is: a number prior then enters in
    float64 too, not rounded to float32 first (0.1 is 1.5e-9 off in float32)."""
    mu = torch.randn(3, 5)
    lv = torch.randn(3, 5, dtype=F64)
    got = fastvae.kl_normal(mu, lv, 0.1, -0.3, backend=backend)
    assert got.dtype == F64
    want = F.kl_normal_dim(mu.double(), lv, torch.tensor(0.1, dtype=F64),
                           torch.tensor(-0.3, dtype=F64)).sum(-1)
    assert_close("kl", got, want, F64, rtol=1e-13)


@pytest.mark.parametrize("op", ["kl_normal", "sample_with_kl"])
def test_float16_gradients_that_fit_float16_are_not_inf(backend, op):
    """Inside the hierarchical VAE's clamp (a mean gap of 3, logvar_p = -10) the per-row
    dKL/dmu_q = 3 e^10 = 66,079 is past float16's range while the batch mean's gradient
    (1/64 of it) fits: the saved KL gradients are float32 (``saved_grad_dtype``), and a
    grad_output past 65504 (a loss scale) is multiplied in float32 too. Both gave inf."""
    b = 64
    fn = fastvae.kl_normal if op == "kl_normal" else (
        lambda *a, **k: fastvae.sample_with_kl(*a, **k)[1])
    ins = [leaf(torch.full((b, 4), v, dtype=torch.float16)) for v in (3.0, 2.0, 0.0, -10.0)]
    fn(*ins, backend=backend).mean().backward()
    r, t = math.exp(12.0), 9 * math.exp(10.0)
    want = (3 * math.exp(10.0), 0.5 * (r - 1), -3 * math.exp(10.0), 0.5 * (1 - r - t))
    for x, w in zip(ins, want):
        assert x.grad.dtype == torch.float16
        torch.testing.assert_close(x.grad.double(), torch.full_like(x.grad.double(), w / b),
                                   rtol=2e-3, atol=0)
    mu = leaf(torch.full((b, 4), 0.01, dtype=torch.float16))
    lv = leaf(torch.zeros(b, 4, dtype=torch.float16))
    (fn(mu, lv, 0.0, 0.0, backend=backend).sum() * 70000.0).backward()
    torch.testing.assert_close(mu.grad.double(), torch.full_like(mu.grad.double(), 700.0),
                               rtol=2e-3, atol=0)


@pytest.mark.parametrize("op", ["kl_normal", "sample_with_kl", "elbo prior", "elbo obs_logvar"])
@pytest.mark.parametrize("shape", [(), (1,)])
def test_a_16_bit_log_variance_shared_by_every_column(backend, op, shape):
    """One float16 log-variance for every latent (or pixel): its gradient is the sum over
    the columns, here +-69938 each (past float16) and 0 in all. Summed over the columns
    in float16 it was inf - inf = NaN."""
    big = torch.tensor([[374.0, 0.0], [0.0, 374.0]])
    lv = leaf(torch.zeros(shape, dtype=torch.float16))
    zeros = torch.zeros(2, 2)
    if op == "kl_normal":
        out = fastvae.kl_normal(big, zeros, 0.0, lv, backend=backend)
    elif op == "sample_with_kl":
        out = fastvae.sample_with_kl(big, zeros, torch.zeros(2), lv, backend=backend)[1]
    elif op == "elbo prior":
        out = -fastvae.elbo(torch.full((2, 3), 0.5), torch.zeros(2, 3), big, zeros,
                            prior_logvar=lv, reduction="none", backend=backend)
    else:
        out = -fastvae.elbo(zeros, big, zeros, zeros, likelihood="gaussian", obs_logvar=lv,
                            reduction="none", backend=backend)
    out.backward(torch.tensor([1.0, -1.0]))
    assert lv.grad.dtype == torch.float16 and lv.grad.shape == shape
    assert lv.grad.item() == 0.0


@pytest.mark.parametrize("op", ["kl_normal", "sample_with_kl", "elbo prior", "elbo obs_logvar"])
def test_a_16_bit_log_variance_shared_by_a_rows_columns(backend, op):
    """One float16 log-variance a row, (B, 1): its gradient sums the row's 100 columns,
    one at -+65521.5 (past float16) and 99 at +-0.5, to -+65472, which float16 holds. Each
    column rounded to float16 first made it inf."""
    b, n = 2, 100
    mu = torch.zeros(b, n)
    mu[:, 0] = math.sqrt(131043.0)          # d/dlogvar_p = 0.5 (1 - 1 - 131043)
    lv_q = torch.full((b, n), -100.0)       # elsewhere 0.5 (1 - e^-100)
    lv_q[:, 0] = 0.0
    lv = leaf(torch.zeros(b, 1, dtype=torch.float16))
    if op == "kl_normal":
        out, want = fastvae.kl_normal(mu, lv_q, 0.0, lv, backend=backend), -65472.0
    elif op == "sample_with_kl":
        out, want = fastvae.sample_with_kl(mu, lv_q, 0.0, lv, backend=backend)[1], -65472.0
    elif op == "elbo prior":
        out, want = fastvae.elbo(torch.full((b, 3), 0.5), torch.zeros(b, 3), mu, lv_q,
                                 prior_logvar=lv, reduction="none", backend=backend), 65472.0
    else:   # d/dobs_logvar = 0.5 ((x - r)^2 - 1): 65521.5 once, -0.5 in 99 columns
        out, want = fastvae.elbo(torch.zeros(b, n), mu.neg(), torch.zeros(b, 1),
                                 torch.zeros(b, 1), likelihood="gaussian", obs_logvar=lv,
                                 reduction="none", backend=backend), 65472.0
    out.sum().backward()
    assert lv.grad.dtype == torch.float16
    assert lv.grad.eq(want).all(), lv.grad


def test_gradcheck(backend):
    """float64 finite differences for every input, a broadcast prior included."""
    mu = torch.randn(3, 2, 4, dtype=F64, requires_grad=True)
    lv = torch.randn(3, 2, 4, dtype=F64, requires_grad=True)
    pm = torch.randn(2, 1, dtype=F64, requires_grad=True)
    plv = torch.randn(3, 2, 4, dtype=F64, requires_grad=True)
    fn = lambda a, b, c, d: fastvae.kl_normal(a, b, c, d, backend=backend)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (mu, lv, pm, plv))
    assert torch.autograd.gradgradcheck(fn, (mu, lv, pm, plv))
    assert torch.autograd.gradcheck(lambda c: fn(mu.detach(), lv.detach(), c, 0.5), (pm,))


def test_empty_and_strided(seed, backend):
    dt = case_dtype(backend)
    kl = fastvae.kl_normal
    assert kl(torch.zeros(0, 3, 2), torch.zeros(0, 3, 2), 0.0, 1.0, backend=backend).shape == (0,)
    assert torch.equal(kl(torch.zeros(2, 0), torch.zeros(2, 0), torch.zeros(2, 0), 0.0,
                          backend=backend), torch.zeros(2))
    base = leaf(torch.randn(6, 10, dtype=dt))
    mu = base[:, ::2]
    lv = leaf(torch.randn(5, 6, dtype=dt)).t()
    pm = leaf(torch.randn(1, 5, dtype=dt))
    got = kl(mu, lv, pm.expand(6, 5), 0.3, backend=backend)
    want = F.kl_normal_dim(mu, lv, pm, 0.3).sum(-1)
    assert_close("kl", got, want, dt, rtol={F64: 1e-12})
    for g, e in zip(grads(got, [base, pm]), grads(want, [base, pm])):
        assert_close("grad", g, e, dt, rtol={F64: 1e-12})


def test_errors(backend, restore_validation):
    mu = torch.randn(4, 3)
    with pytest.raises(ValueError, match="mu_q and logvar_q must share a shape"):
        fastvae.kl_normal(mu, torch.randn(4, 2), 0.0, 0.0, backend=backend)
    with pytest.raises(ValueError, match=r"got \(\) and \(\) \(a 0-d tensor has no batch"):
        fastvae.kl_normal(torch.tensor(0.5), torch.tensor(0.1), 0.0, 0.0, backend=backend)
    with pytest.raises(ValueError, match=r"mu_p of shape \(2,\) does not broadcast to mu_q"):
        fastvae.kl_normal(mu, mu, torch.zeros(2), 0.0, backend=backend)
    with pytest.raises(ValueError, match="logvar_p of shape"):
        fastvae.kl_normal(mu, mu, 0.0, torch.zeros(5, 3), backend=backend)
    with pytest.raises(TypeError, match="mu_q must be a torch.Tensor"):
        fastvae.kl_normal([1.0], mu, 0.0, 0.0, backend=backend)
    with pytest.raises(TypeError, match="mu_p must be a number or a tensor broadcastable to mu_q, got str"):
        fastvae.kl_normal(mu, mu, "0", 0.0, backend=backend)
    with pytest.raises(TypeError, match="floating-point"):
        fastvae.kl_normal(mu, mu, torch.zeros(3, dtype=torch.long), 0.0, backend=backend)
    bad = mu.clone()
    bad[1, 2] = float("nan")
    with pytest.raises(ValueError, match="logvar_p has 1 non-finite"):
        fastvae.kl_normal(mu, mu, 0.0, bad, backend=backend, validate=True)
    with pytest.raises(ValueError, match="mu_p must be finite"):
        fastvae.kl_normal(mu, mu, float("inf"), 0.0, backend=backend)


BF16, F16, F32 = torch.bfloat16, torch.float16, torch.float32


@pytest.mark.parametrize("wanted", ["all", "means", "mu_p", "mu_q", "mu_p logvar_p"])
@pytest.mark.parametrize("prior", ["(L,)", "(B, L)"])
@pytest.mark.parametrize("dtypes", [(F32, F32), (BF16, BF16), (BF16, F32), (F16, F16),
                                    (F32, BF16), (F32, F64)], ids=str)
def test_every_subset_of_gradients(seed, backend, wanted, prior, dtypes):
    """dKL/dmu_p = -dKL/dmu_q is saved once, as dKL/dmu_q wide enough for either mean:
    each gradient right against float64, in its input's dtype and shape, whichever inputs
    need one, a shared prior's summed over rows, a 16-bit input beside a wider one, and a
    grad_output with a zero row."""
    q_dt, p_dt = dtypes
    b, n = 7, 5
    need = {"all": (1, 1, 1, 1), "means": (1, 0, 1, 0), "mu_p": (0, 0, 1, 0),
            "mu_q": (1, 0, 0, 0), "mu_p logvar_p": (0, 0, 1, 1)}[wanted]
    shape = (n,) if prior == "(L,)" else (b, n)
    ins = [(torch.randn(s) * 1.5).to(dt).requires_grad_(bool(r))
           for s, dt, r in zip(((b, n), (b, n), shape, shape), (q_dt, q_dt, p_dt, p_dt), need)]
    got = fastvae.kl_normal(*ins, backend=backend)
    o = [t.detach().double().requires_grad_() for t in ins]
    want = F.kl_normal_dim(*o).sum(-1)
    assert_close("kl", got, want, F32)
    w = torch.randn(b, dtype=F64)
    w[2] = 0.0
    used = [i for i, r in enumerate(need) if r]
    got_g = torch.autograd.grad(got, [ins[i] for i in used], w.to(got.dtype))
    want_g = torch.autograd.grad(want, [o[i] for i in used], w)
    names = ("mu_q", "logvar_q", "mu_p", "logvar_p")
    for i, g, e in zip(used, got_g, want_g):
        assert g.dtype == ins[i].dtype and g.shape == ins[i].shape, names[i]
        assert_close(f"d kl / d {names[i]}", g, e, ins[i].dtype)


@pytest.mark.parametrize("prior", ["(L,)", "(B, L)"])
@pytest.mark.parametrize("wanted,made", [("all", 3), ("means", 1)])
def test_the_mean_gradient_is_saved_once(backend, prior, wanted, made):
    """What autograd keeps: the caller's four inputs and one (B, L) gradient per saved
    partial, dKL/dmu_q standing for dKL/dmu_p too (three with every input needing a
    gradient, one where only the means do). Backward runs from them alone."""
    if backend == "reference":
        pytest.skip("eager autograd: it saves what its graph needs")
    b, n = 6, 11
    shape = (n,) if prior == "(L,)" else (b, n)
    lv_grad = wanted == "all"
    ins = [leaf(torch.randn(s), r) for s, r in zip(((b, n), (b, n), shape, shape),
                                                    (True, lv_grad, True, lv_grad))]
    storages = []

    def pack(t):
        storages.append(t.untyped_storage().data_ptr())
        return t.detach()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        got = fastvae.kl_normal(*ins, backend=backend)
    inputs = {t.untyped_storage().data_ptr() for t in ins}
    assert inputs <= set(storages)
    assert len(set(storages) - inputs) == made, len(set(storages) - inputs)
    o = [t.detach().double().requires_grad_() for t in ins]
    want = F.kl_normal_dim(*o).sum(-1)
    used = [i for i, t in enumerate(ins) if t.requires_grad]
    for i, g, e in zip(used, torch.autograd.grad(got.sum(), [ins[i] for i in used]),
                       torch.autograd.grad(want.sum(), [o[i] for i in used])):
        assert_close(f"d kl / d input {i}", g, e, F32)
