"""The discretized mixture of logistics reduced inside its fused op, on every backend (the
``backend`` fixture): ``discretized_logistic_mixture_log_prob(..., reduction=)`` and
``fastvae.DiscretizedLogisticMixtureNLLLoss``, values and d/dparams against the float64
formula of tests/_formulas.py, and the reason both exist: backward is handed a
grad_output of exactly 1, which scales no saved gradient, where ``op(...).sum()`` and
``-op(...)`` make a pass over the whole d/dparams."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import fastvae
import _formulas as F
from _backends import case_dtype
from _compare import assert_close, grads, leaf
from _dmol import F64, OP, make
from fastvae.ops import _autograd

LOSS = fastvae.DiscretizedLogisticMixtureNLLLoss


@pytest.mark.parametrize("c", [1, 3])
@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
@pytest.mark.parametrize("shape", [(1, 1, 1, 1), (3, 4, 5, 3), (5, 2, 3, 2)],
                         ids=lambda s: "x".join(map(str, s)))
def test_reduced_op_and_loss_against_the_formula(seed, backend, c, reduction, shape):
    b, h, w, m = shape
    for dt in dict.fromkeys([case_dtype(backend), torch.float32]):
        x, p = make(b, c, h, w, m, dt)
        p = leaf(p)
        want = F.reduce(F.dmol_log_prob(x, p), reduction)
        scale = want.abs().max() + 1
        got = OP(x, p, reduction=reduction, backend=backend)
        loss_fn = LOSS(reduction=reduction, backend=backend)
        assert isinstance(loss_fn, nn.Module)
        loss = loss_fn(x, p)
        assert got.shape == loss.shape == want.shape
        assert got.dtype == loss.dtype == (F64 if dt == F64 else torch.float32)
        assert_close("log p", got, want, dt, scale=scale)
        assert torch.equal(loss, -got)    # a product by -1 is exact
        (e,) = grads(want, [p])
        for name, value, sign in (("op", got, 1), ("loss", loss, -1)):
            (g,) = grads(value, [p])
            assert g.dtype == dt and g.shape == p.shape
            assert_close(f"{name} d/dparams", g, sign * e, dt, scale=e.abs().max() + 1e-3)


@pytest.mark.parametrize("bits", [1, 5, 16])
def test_other_bit_depths(seed, backend, bits):
    dt = case_dtype(backend)
    x, p = make(3, 3, 2, 3, 4, dt, bits=bits)
    p = leaf(p)
    loss = LOSS(bits=bits, reduction="sum", backend=backend)(x, p)
    want = -F.dmol_log_prob(x, p, bits).sum()
    assert_close("nll", loss, want, dt, scale=want.abs() + 1)
    (g,), (e,) = grads(loss, [p]), grads(want, [p])
    assert_close("d nll / d params", g, e, dt, scale=e.abs().max() + 1e-3)


@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_empty_batch(backend, reduction):
    x, p = make(0, 3, 2, 2, 2, case_dtype(backend))
    p = leaf(p)
    loss = LOSS(reduction=reduction, backend=backend)(x, p)
    assert loss.shape == () and loss.item() == 0.0
    loss.backward()
    assert p.grad.shape == p.shape


def test_backward_gets_grad_output_one(seed, monkeypatch):
    """Reduced inside the op, backward is handed exactly 1 (the backends then scale
    nothing); reduced or negated outside it, a (B,) tensor of ones or -1."""
    seen = []
    real = _autograd.weigh_saved
    monkeypatch.setattr(_autograd, "weigh_saved",
                        lambda ctx, g, dims: seen.append(float(g)) or real(ctx, g, dims))
    x, p = make(3, 3, 2, 2, 2, torch.float32)
    p = leaf(p)
    LOSS(reduction="mean", backend="torch")(x, p).backward()
    LOSS(reduction="sum", backend="torch")(x, p).backward()
    OP(x, p, reduction="sum", backend="torch").backward()
    (-OP(x, p, reduction="sum", backend="torch")).backward()
    assert seen == [1.0, 1.0, 1.0, -1.0]


def test_constructor_repr_and_errors():
    assert repr(LOSS()) == "DiscretizedLogisticMixtureNLLLoss(bits=8, reduction='mean')"
    assert repr(LOSS(bits=5, reduction="sum")) == \
        "DiscretizedLogisticMixtureNLLLoss(bits=5, reduction='sum')"
    for kw, exc, msg in [({"reduction": "max"}, ValueError, "reduction"),
                         ({"bits": 0}, ValueError, "bits"), ({"bits": 17}, ValueError, "bits"),
                         ({"backend": "cuda"}, ValueError, "backend"),
                         ({"validate": "yes"}, TypeError, "validate")]:
        with pytest.raises(exc, match=msg):
            LOSS(**kw)
    x, p = make(2, 3, 2, 2, 2)
    with pytest.raises(ValueError, match="reduction"):
        OP(x, p, reduction="max")
    with pytest.raises(ValueError, match="params"):   # the op's own shape check
        LOSS()(x, p[:, :-1])
    loss = LOSS()
    with pytest.raises(ValueError, match="reduction must be one of"):   # set after it was made
        loss.reduction = "avg"
    assert repr(LOSS(backend="reference", validate=False)) == (
        "DiscretizedLogisticMixtureNLLLoss(bits=8, reduction='mean', backend='reference', "
        "validate=False)")
    assert repr(fastvae.ELBOLoss(backend="torch")).endswith("reduction='mean', backend='torch')")
