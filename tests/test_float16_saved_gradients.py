"""float16 gradients under a loss scale, on every backend. The fused ops compute their
gradients in the forward and backward weighs them by grad_output; a float16 input's are
saved in float32 until then (``fastvae._dtypes.saved_grad_dtype``) and rounded to float16
once, after the weighing. Saved in float16, a gradient below 6e-8 was already 0 when a
GradScaler's 2^16 reached it (a fifth of a mean ELBO's pixel gradients at B = 128), and
one past 65504 already inf where the weighed one fits."""
from __future__ import annotations

import pytest
import torch

import fastvae
from _dmol import make, slots
from _compare import leaf

F16, F64 = torch.float16, torch.float64
SCALE = 2.0 ** 16                  # a GradScaler's initial loss scale
SUBNORMAL = 2.0 ** -24             # float16's spacing below 6e-5


def _close(what, got, want, atol=0.0):
    """Each element within float16's rounding of the float64 gradient: 3e-3 relative, and
    the subnormal spacing where the gradient is that small; ``atol``: the float32 math's
    own absolute error, scaled."""
    assert got.dtype == F16, f"{what}: gradient dtype {got.dtype}"
    g, w = got.double(), want.double()
    w = torch.where(w.abs() > 65520, w.sign() * float("inf"), w)  # rounds to float16's inf
    bound = torch.where(w.isinf(), 0.0, 3e-3 * w.abs() + SUBNORMAL + atol)
    bad = ~((g == w) | ((g - w).abs() <= bound))
    assert not bool(bad.any()), (
        f"{what}: {int(bad.sum())} of {w.numel()} off, e.g. got {g[bad][0].item():.4g}, "
        f"want {w[bad][0].item():.4g} ({int(((g == 0) & (w != 0)).sum())} flushed to 0)")


def _grad(loss_fn, inputs, i, backend):
    ins = [leaf(t) for t in inputs]
    (g,) = torch.autograd.grad(loss_fn(*ins, backend=backend), [ins[i]])
    return g


def _check(what, loss_fn, inputs, i, backend, atol=0.0):
    """d loss / d inputs[i] on ``backend`` (float16 inputs) against the reference in float64
    on the same values."""
    got = _grad(loss_fn, inputs, i, backend)
    want = _grad(loss_fn, [t.double() for t in inputs], i, "reference")
    _close(what, got, want, atol)


@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_elbo_mean_under_a_loss_scale(seed, backend, reduction):
    """Logits that agree with x (|l| from 3 to 15): d/dl = (x - sigmoid(l)) / B is below
    6e-8 for most pixels until the loss scale multiplies it. (x - sigmoid(l)) in float32
    is within about ulp(1) = 2^-23 of the exact value: that, scaled, is allowed too."""
    b, d, l = 128, 784, 8
    x = (torch.rand(b, d) < 0.5).to(F16)
    recon = ((x.float() * 2 - 1) * (3 + 12 * torch.rand(b, d))).to(F16)
    mu, lv = torch.randn(b, l).to(F16), torch.randn(b, l).to(F16)

    def loss(x, recon, mu, lv, backend):
        v = fastvae.elbo(x, recon, mu, lv, reduction=reduction, backend=backend)
        return (v.mean() if reduction == "none" else v) * SCALE
    _check("d/drecon", loss, [x, recon, mu, lv], 1, backend, atol=2.0 ** -23 * SCALE / b)
    _check("d/dmu", loss, [x, recon, mu, lv], 2, backend)


def test_iwae_bound_mean_under_a_loss_scale(seed, backend):
    k, b, d, l = 3, 64, 16, 2
    x = torch.zeros(b, d, dtype=F16)
    recon_k = (-20.0 + torch.rand(k, b, d)).to(F16)
    z = torch.zeros(b, l, dtype=F16)
    zk = torch.randn(k, b, l).to(F16)

    def loss(x, recon_k, mu, lv, zk, backend):
        return fastvae.iwae_bound(x, recon_k, mu, lv, zk, reduction="mean",
                                  backend=backend) * SCALE
    _check("d/drecon_k", loss, [x, recon_k, z, z, zk], 1, backend)


def test_gaussian_gradients_past_float16_range_before_the_batch_mean(seed, backend):
    """(x - m) e^10 / B: 1e5 per row, 1.4e3 once divided by B; the division is backward's."""
    b, d = 64, 4
    x = torch.zeros(b, d, dtype=F16)
    mean = (4.0 + torch.rand(b, d)).to(F16)
    z = torch.zeros(b, 2, dtype=F16)

    def elbo_loss(x, mean, backend):
        return fastvae.elbo(x, mean, z, z, likelihood="gaussian", obs_logvar=-10.0,
                            reduction="sum", backend=backend) / b

    def log_prob_loss(x, mean, backend):
        return fastvae.gaussian_log_prob(x, mean, -10.0, backend=backend).sum() / b
    _check("elbo d/dmean", elbo_loss, [x, mean], 1, backend)
    _check("gaussian_log_prob d/dmean", log_prob_loss, [x, mean], 1, backend)
    _check("gaussian_log_prob d/dx", log_prob_loss, [x, mean], 0, backend)


def test_discretized_mixture_under_a_loss_scale(seed, backend):
    """A component with logit -20 has a responsibility near e^-20: its gradients are below
    float16's range until the loss scale (over B) multiplies them."""
    m = 3
    x, p = make(64, 1, 4, 4, m, torch.float32)
    p[:, 0] = -20.0
    p = p.to(F16)
    x = x.to(F16)
    assert slots(1) * m == p.shape[1]

    def loss(x, p, backend):
        return fastvae.discretized_logistic_mixture_log_prob(x, p, backend=backend).mean() * SCALE
    _check("d/dparams", loss, [x, p], 1, backend)
