"""The discretized mixture's ``bits`` argument means the same at every public entry point
that takes it: ``discretized_logistic_mixture_log_prob``, ``DiscretizedLogisticMixtureNLLLoss``,
``elbo``/``ELBOLoss`` and ``iwae_bound``/``IWAELoss`` with the DMoL likelihood, and
``dmol_sample``. None is 8 (elbo's and iwae_bound's default), a numpy integer is an int,
and anything else outside 1..16 is one line naming ``bits``."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import fastvae
import _formulas as F
from _compare import assert_close
from _dmol import DMOL, OP, make
from fastvae.dmol_sampling import dmol_sample

LOSS = fastvae.DiscretizedLogisticMixtureNLLLoss


def _inputs(k=2):
    x, p = make(3, 3, 2, 3, 2)
    mu, logvar = torch.randn(3, 4, dtype=x.dtype), torch.randn(3, 4, dtype=x.dtype)
    p_k = p.expand(k, *p.shape).clone()
    z_k = torch.randn(k, 3, 4, dtype=x.dtype)
    return x, p, mu, logvar, p_k, z_k


def _every_entry_point(bits, inputs):
    """Each public call's value at ``bits`` on the float64 ``inputs``."""
    x, p, mu, logvar, p_k, z_k = inputs
    return {
        "log_prob": OP(x, p, bits=bits),
        "nll_loss": LOSS(bits=bits, reduction="none")(x, p),
        "elbo": fastvae.elbo(x, p, mu, logvar, likelihood=DMOL, reduction="none", bits=bits),
        "elbo_loss": fastvae.ELBOLoss(likelihood=DMOL, reduction="none", bits=bits)(
            x, p, mu, logvar),
        "iwae_bound": fastvae.iwae_bound(x, p_k, mu, logvar, z_k, likelihood=DMOL, bits=bits),
        "iwae_loss": fastvae.IWAELoss(likelihood=DMOL, reduction="none", bits=bits)(
            x, p_k, mu, logvar, z_k),
    }


def test_none_is_8_at_every_entry_point(seed):
    inputs = _inputs()
    none, eight = _every_entry_point(None, inputs), _every_entry_point(8, inputs)
    for name in none:
        assert torch.equal(none[name], eight[name]), name
    # and that is the 8-bit grid's likelihood: the float64 formula's
    x, p = inputs[:2]
    assert_close("bits=None", OP(x, p, bits=None), F.dmol_log_prob(x, p, 8))
    assert LOSS(bits=None).bits == 8
    assert "bits=8" in repr(LOSS(bits=None))


def test_none_is_8_when_sampling():
    p = torch.randn(2, 20, 3, 3)
    got = dmol_sample(p, bits=None, generator=torch.Generator().manual_seed(1))
    want = dmol_sample(p, bits=8, generator=torch.Generator().manual_seed(1))
    assert torch.equal(got, want)


def test_a_numpy_integer_is_an_int(seed):
    x, p = make(2, 1, 2, 2, 3)
    assert torch.equal(OP(x, p, bits=np.int64(8)), OP(x, p, bits=8))
    assert LOSS(bits=np.int32(5)).bits == 5


@pytest.mark.parametrize("bits,error,text", [
    (0, ValueError, "bits must be in 1..16, got 0"),
    (17, ValueError, "bits must be in 1..16, got 17"),
    (8.0, TypeError, "bits must be an int, got float"),
    (True, TypeError, "bits must be an int, got bool"),
    (np.float64(8), TypeError, "bits must be an int"),
    ("8", TypeError, "bits must be an int, got str"),
])
def test_bad_bits_is_the_same_error_everywhere(bits, error, text):
    x, p, mu, logvar, p_k, z_k = _inputs()
    calls = [lambda: OP(x, p, bits=bits), lambda: LOSS(bits=bits),
             lambda: fastvae.elbo(x, p, mu, logvar, likelihood=DMOL, bits=bits),
             lambda: fastvae.ELBOLoss(likelihood=DMOL, bits=bits),
             lambda: fastvae.iwae_bound(x, p_k, mu, logvar, z_k, likelihood=DMOL, bits=bits),
             lambda: fastvae.IWAELoss(likelihood=DMOL, bits=bits),
             lambda: dmol_sample(p, bits=bits)]
    for call in calls:
        with pytest.raises(error, match=text.replace(".", r"\.")):
            call()
