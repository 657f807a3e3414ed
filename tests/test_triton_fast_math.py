"""The Triton kernels' fast math (kernels/_math.py): the Bernoulli terms within the stated
error bound over the whole input range, compiled or interpreted, and the bound at the
hardware approximations' documented worst error. Runs where kernels run
(tests/test_triton_interpreter.py runs this module under TRITON_INTERPRET=1)."""
import pytest
import torch

from _backends import skip_unless_kernels_run

skip_unless_kernels_run()  # the whole module: one line in the report, not one per test

import fastvae  # noqa: E402
from _compare import leaf  # noqa: E402

F32 = torch.float32


pytestmark = pytest.mark.usefixtures("kernels")   # tensors on the kernels' device


# -- fast math: the stated error bounds (kernels/_math.py), over the whole input range ---------

def _logit_sweep():
    """Every regime of the Bernoulli terms: the tails (e = exp(-|l|) underflows past ~88,
    and ex2.approx flushes denormals), the log's argument near 1, and a fine grid at 0."""
    wide = torch.linspace(-120.0, 120.0, 9601, dtype=torch.float64)
    fine = torch.linspace(-1.0, 1.0, 4001, dtype=torch.float64)
    return torch.cat([wide, fine, torch.tensor([-1e30, -88.7, 88.7, 1e30], dtype=torch.float64)])


@pytest.mark.parametrize("x_value", [0.0, 0.3, 1.0])
def test_bernoulli_terms_within_the_stated_bound(x_value):
    """Per element, value x*l - softplus(l) within 5e-7 + 2 ulp of its magnitude and
    gradient x - sigmoid(l) within 5e-7 of float64: compiled (on a GPU), the hardware's
    ex2/lg2 approximations; interpreted, the same formulas with exact logs."""
    logits64 = _logit_sweep()
    n = logits64.numel()
    logits = leaf(logits64.float()[:, None])
    x = torch.full((n, 1), x_value)
    mu, lv = torch.zeros(n, 1), torch.zeros(n, 1)  # KL 0: each row is one element's term
    got = fastvae.elbo(x, logits, mu, lv, reduction="none", backend="triton")
    (g,) = torch.autograd.grad(got.sum(), [logits])
    l64 = logits.detach().double()[:, 0]
    want = x_value * l64 - torch.nn.functional.softplus(l64)
    want_g = x_value - torch.sigmoid(l64)
    err = (got.double().cpu() - want.cpu()).abs()
    assert bool((err <= 5e-7 + 2 * 2**-24 * (x_value * l64.abs() + want.abs()).cpu()).all()), \
        float(err.max())
    assert float((g.double()[:, 0].cpu() - want_g.cpu()).abs().max()) <= 5e-7


@pytest.mark.parametrize("lg_err,ex_err", [(s1 * 2**-22, s2 * 2**-22) for s1 in (-1, 1)
                                           for s2 in (-1, 1)])
def test_the_bound_holds_at_the_approximations_worst_error(lg_err, ex_err):
    """The same formulas in float32 with lg2 off by its documented worst case (2^-22
    absolute on [0.5, 2]) and ex2 by its (2^-22 relative), every sign: still within the
    5e-7 of kernels/_math.py. (What the interpreter cannot run, bounded on CPU.)"""
    l = _logit_sweep().float()
    l = l[l.abs() < 1e29]
    ex2 = lambda t: torch.exp2(t) * (1 + ex_err)  # noqa: E731
    lg2 = lambda t: torch.log2(t) + lg_err  # noqa: E731
    e = ex2(-l.abs() * 1.4426950408889634)
    log1p_e = lg2(1.0 + e) * 0.6931471805599453
    softplus = torch.clamp(l, min=0) + log1p_e
    sigmoid = ex2((torch.clamp(l, max=0) - log1p_e) * 1.4426950408889634)
    l64 = l.double()
    assert float((softplus.double() - torch.nn.functional.softplus(l64)).abs().max()) <= 5e-7 \
        + float(2**-23 * l64.abs().max())
    assert float((sigmoid.double() - torch.sigmoid(l64)).abs().max()) <= 5e-7
