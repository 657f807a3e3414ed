"""A fused op's gradient, as torch.autograd.grad returns it, is a plain tensor: no
requires_grad, no grad_fn. The forward's saved gradients are outputs of the op's
autograd node where the op returns all of them (iwae_bound with estimator="dreg",
which needs the softmax weights; any op under a dispatch mode, which takes the
custom op); at a grad_output of exactly 1 backward hands a saved gradient back as is,
and it carried the op's node as its grad_fn: ``.numpy()`` refused it, it kept the
node alive, and differentiating a function of it went back into the freed graph
("Trying to backward through the graph a second time") rather than saying the
gradient does not require one. Checked against the float64 value of the gradient."""
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

import fastvae
from _backends import BACKENDS

F64 = torch.float64


def _gradients(backend, estimator, objective):
    torch.manual_seed(0)
    k, b, l, d = 4, 3, 2, 5
    mu, lv = torch.randn(b, l, requires_grad=True), torch.randn(b, l, requires_grad=True)
    plv = torch.randn(b, l, requires_grad=True)           # a (B, L) prior: its gradient per row
    x = torch.rand(b, d, requires_grad=True)
    z = mu + torch.exp(0.5 * lv) * torch.randn(k, b, l)
    w = torch.randn(l, d)
    if objective == "iwae":
        v = fastvae.iwae_bound(x, z @ w, mu, lv, z, estimator=estimator, backend=backend,
                               reduction="sum", prior_logvar=plv)
    else:
        v = fastvae.elbo(x, z[0] @ w, mu, lv, kl="mc", z=z[0], estimator=estimator,
                         backend=backend, reduction="sum", prior_logvar=plv)
    gx, gp = torch.autograd.grad(v, [x, plv])
    # the float64 gradients w.r.t. x and the prior's log-variance, by autograd on the
    # reference (neither goes through z, so no estimator changes them)
    x64, p64 = (t.detach().double().requires_grad_() for t in (x, plv))
    zd = z.detach().double()
    if objective == "iwae":
        v64 = fastvae.iwae_bound(x64, zd @ w.double(), mu.detach().double(),
                                 lv.detach().double(), zd, backend="reference",
                                 reduction="sum", prior_logvar=p64)
    else:
        v64 = fastvae.elbo(x64, zd[0] @ w.double(), mu.detach().double(),
                           lv.detach().double(), kl="mc", z=zd[0], backend="reference",
                           reduction="sum", prior_logvar=p64)
    return (gx, gp), torch.autograd.grad(v64, [x64, p64])


def _check(got, want):
    for g, e in zip(got, want):
        assert not g.requires_grad and g.grad_fn is None
        torch.testing.assert_close(g.cpu().numpy().astype("float64"), e.cpu().numpy(),
                                   rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("backend", BACKENDS, indirect=True)
def test_dreg_gradients_are_plain_tensors(backend):
    _check(*_gradients(backend, "dreg", "iwae"))


@pytest.mark.parametrize("backend", [b for b in BACKENDS if b != "reference"], indirect=True)
@pytest.mark.parametrize("objective,estimator", [("iwae", "standard"), ("iwae", "stl"),
                                                 ("elbo", "standard"), ("elbo", "stl")])
def test_gradients_under_a_dispatch_mode_are_plain_tensors(backend, objective, estimator):
    with FlopCounterMode(display=False):
        got, want = _gradients(backend, estimator, objective)
    _check(got, want)
