"""The loss modules use every setting they were made with and every argument of a call:
a learned prior reaches ELBOLoss's KL as (prior_mu, prior_logvar), each module's own
``validate=True`` runs the value checks with the global switch off, and IWAELoss checks
its estimator where it is made (None is not an estimator)."""
import pytest
import torch

import fastvae
from _dmol import make as make_dmol


def _latent_inputs(b=4, d=6, l=3):
    torch.manual_seed(0)
    return torch.rand(b, d), torch.randn(b, d), torch.randn(b, l), torch.randn(b, l), \
        torch.randn(b, l)


@pytest.mark.parametrize("kl", ["analytic", "mc"])
def test_elbo_loss_with_a_learned_prior_is_minus_the_elbo(backend, kl):
    x, recon, mu, lv, z = _latent_inputs()
    pm, plv = torch.randn(mu.shape), torch.randn(mu.shape[1:]) * 0.5
    z = z if kl == "mc" else None
    ins = [t.clone().requires_grad_() for t in (recon, mu, lv, pm, plv)]
    loss = fastvae.ELBOLoss(kl=kl, backend=backend)(x, *ins[:3], z=z, prior_mu=ins[3],
                                                    prior_logvar=ins[4])
    wide = [t.double().requires_grad_() for t in (recon, mu, lv, pm, plv)]
    want = -fastvae.elbo(x.double(), *wide[:3], kl=kl, z=None if z is None else z.double(),
                         prior_mu=wide[3], prior_logvar=wide[4], backend="reference")
    torch.testing.assert_close(loss.double(), want.detach(), rtol=1e-5, atol=1e-5)
    for g, w in zip(torch.autograd.grad(loss, ins), torch.autograd.grad(want, wide)):
        torch.testing.assert_close(g.double(), w, rtol=1e-4, atol=1e-5)


def test_a_loss_made_with_validate_true_checks_values(restore_validation):
    fastvae.set_validation(False)
    x, recon, mu, lv, z = _latent_inputs()
    mu[0, 0] = float("nan")
    with pytest.raises(ValueError, match="mu has 1 non-finite"):
        fastvae.ELBOLoss(validate=True)(x, recon, mu, lv)
    with pytest.raises(ValueError, match="mu has 1 non-finite"):
        fastvae.IWAELoss(validate=True)(x, recon[None], mu, lv, z[None])
    torch.manual_seed(0)
    xi, params = make_dmol(2, 1, 3, 3, 2, torch.float32)
    off_grid = xi.clone()
    off_grid[0, 0, 0, 0] = 0.5 / 255   # half a bin off the 8-bit grid
    with pytest.raises(ValueError, match="x must lie on the 8-bit grid"):
        fastvae.DiscretizedLogisticMixtureNLLLoss(validate=True)(off_grid, params)
    # the same calls with the modules' default validate=None: the switch is off
    fastvae.IWAELoss()(x, recon[None], mu, lv, z[None])
    fastvae.DiscretizedLogisticMixtureNLLLoss()(off_grid, params)


def test_iwae_loss_and_bound_refuse_an_estimator_of_none():
    with pytest.raises(ValueError, match="estimator must be one of"):
        fastvae.IWAELoss(estimator=None)
    x, recon, mu, lv, z = _latent_inputs()
    with pytest.raises(ValueError, match="estimator must be one of"):
        fastvae.iwae_bound(x, recon[None], mu, lv, z[None], estimator=None)


@pytest.mark.parametrize("make, call", [
    (fastvae.ELBOLoss, lambda loss, x, recon, mu, lv, z: loss(x, recon, mu, lv)),
    (fastvae.IWAELoss, lambda loss, x, recon, mu, lv, z: loss(x, recon[None], mu, lv, z[None])),
])
def test_a_likelihood_changed_after_construction_takes_its_own_bits(make, call):
    """A DMoL loss's default bits is not an explicit bits: switched to the Bernoulli, the
    loss is the Bernoulli's; an explicit bits is still refused there."""
    args = _latent_inputs()
    loss = make(likelihood="discretized_logistic_mixture")
    assert loss.bits == 8
    loss.likelihood = "bernoulli"
    assert loss.bits is None and " bits=" not in repr(loss)
    torch.testing.assert_close(call(loss, *args), call(make(), *args))
    explicit = make(likelihood="discretized_logistic_mixture", bits=5)
    explicit.likelihood = "bernoulli"
    with pytest.raises(ValueError, match="bits is only used with"):
        call(explicit, *args)
    back = make()
    back.likelihood = "discretized_logistic_mixture"
    assert back.bits == 8 and "bits=8" in repr(back)


def test_the_dmol_loss_has_no_settings_it_would_ignore():
    loss = fastvae.DiscretizedLogisticMixtureNLLLoss(bits=5)
    assert loss.bits == 5
    for name in ("likelihood", "estimator"):
        assert not hasattr(loss, name)


@pytest.mark.parametrize("likelihood,bits", [("bernoulli", None),
                                             ("discretized_logistic_mixture", 8)])
def test_a_loss_pickled_with_bits_as_an_attribute_still_runs(likelihood, bits):
    """A bound loss pickled while ``bits`` was a plain attribute holds it in its state:
    unpickled, the property reads it (it had no ``_bits``: forward raised
    AttributeError)."""
    old = fastvae.ELBOLoss(likelihood=likelihood)
    state = dict(old.__dict__)
    del state["_bits"]
    state["bits"] = bits
    loss = fastvae.ELBOLoss.__new__(fastvae.ELBOLoss)
    loss.__setstate__(state)
    assert loss.bits == (8 if bits else None) and loss._bits == bits
    if bits is None:
        args = _latent_inputs()
        torch.testing.assert_close(loss(*args[:4]), fastvae.ELBOLoss()(*args[:4]))


@pytest.mark.parametrize("make,name,value,error,match", [
    (fastvae.ELBOLoss, "beta", -1.0, ValueError, "beta"),
    (fastvae.ELBOLoss, "kl", "exact", ValueError, "kl must be one of"),
    (fastvae.ELBOLoss, "free_bits", float("nan"), ValueError, "free_bits must be finite"),
    (fastvae.IWAELoss, "estimator", "vimco", ValueError, "estimator"),
    (fastvae.IWAELoss, "_bits", 0, ValueError, "bits must be in 1..16"),
    (fastvae.ELBOLoss, "bits", 17, ValueError, "bits must be in 1..16"),   # the old name
    (fastvae.DiscretizedLogisticMixtureNLLLoss, "reduction", "avg", ValueError,
     "reduction must be one of"),
    (fastvae.DiscretizedLogisticMixtureNLLLoss, "bits", 2.5, TypeError, "bits"),
])
def test_a_pickled_setting_no_assignment_would_take_fails_at_load(make, name, value, error,
                                                                   match):
    """Unpickling bypasses the checked assignments: a state holding a setting that no
    assignment would take (saved by hand, or before its check existed) fails at load with
    the assignment's error, not at the first forward or silently."""
    import io
    loss = make()
    state = dict(loss.__dict__)
    if name == "bits" and "_bits" in state:   # a bound loss pickled when bits was plain
        del state["_bits"]
    state[name] = value
    fresh = make.__new__(make)
    with pytest.raises(error, match=match):
        fresh.__setstate__(state)
    buffer = io.BytesIO()
    torch.save(loss, buffer)   # the same through torch.load of a whole module
    buffer.seek(0)
    assert repr(torch.load(buffer, weights_only=False)) == repr(loss)


def test_a_dmol_loss_pickled_with_bits_none_reads_8():
    """Before settings were checked on assignment, ``loss.bits = None`` on the DMoL NLL
    loss stayed None (its forward read 8); unpickled, that state bypasses the check:
    it reads 8, in its repr and in a torch.save round trip, as a loss made today."""
    import io
    state = dict(fastvae.DiscretizedLogisticMixtureNLLLoss().__dict__, bits=None)
    loss = fastvae.DiscretizedLogisticMixtureNLLLoss.__new__(
        fastvae.DiscretizedLogisticMixtureNLLLoss)
    loss.__setstate__(state)
    assert loss.bits == 8 and "bits=8" in repr(loss)
    buffer = io.BytesIO()
    torch.save(loss, buffer)
    buffer.seek(0)
    assert torch.load(buffer, weights_only=False).bits == 8


@pytest.mark.parametrize("make", [fastvae.ELBOLoss, fastvae.IWAELoss,
                                  fastvae.DiscretizedLogisticMixtureNLLLoss])
def test_torch_jit_script_is_refused_in_one_line(make):
    """TorchScript cannot compile the ops; its own error named a property setter of
    loss.py. A model holding the loss is refused the same way."""
    with pytest.raises(TypeError, match=r"cannot be compiled by torch\.jit\.script"):
        torch.jit.script(make())
    model = torch.nn.Module()
    model.loss = make()
    with pytest.raises(TypeError, match=r"cannot be compiled by torch\.jit\.script"):
        torch.jit.script(model)


_DMOL = "discretized_logistic_mixture"
_REFUSED = [   # (setting, a value refused alone, its error)
    ("reduction", "avg", ValueError, "reduction must be one of"),
    ("backend", "cuda", ValueError, "backend must be one of"),
    ("validate", "yes", TypeError, "validate must be None or a bool"),
    ("bits", 3.5, TypeError, "bits must be an int, got float"),
    ("bits", 99, ValueError, r"bits must be in 1\.\.16, got 99"),
]
_BOUND_REFUSED = [
    ("likelihood", "bce", ValueError, "likelihood must be one of"),
    ("estimator", None, ValueError, "estimator must be one of"),
]
_ELBO_REFUSED = [
    ("kl", "sampled", ValueError, "kl must be one of"),
    ("beta", -1.0, ValueError, r"beta must be >= 0\.0"),
    ("free_bits", "a", TypeError, "free_bits must be a real number"),
    ("estimator", "dreg", ValueError, "estimator='dreg' is the importance-weighted"),
]


@pytest.mark.parametrize("make, setting, value, exc, msg", [
    *[(fastvae.DiscretizedLogisticMixtureNLLLoss, *r) for r in _REFUSED],
    *[(fastvae.IWAELoss, *r) for r in _REFUSED + _BOUND_REFUSED],
    *[(fastvae.ELBOLoss, *r) for r in _REFUSED + _BOUND_REFUSED + _ELBO_REFUSED],
])
def test_a_setting_assigned_after_construction_is_checked_there(make, setting, value, exc,
                                                                msg):
    """Assignment checks a setting as construction does, with its error, and keeps the
    old value (it was refused at the next forward; a bound loss's bits=99 on a Bernoulli
    was said as a bits the Bernoulli does not take)."""
    with pytest.raises(exc, match=msg):
        make(**{setting: value})
    loss = make()
    before = repr(loss)
    with pytest.raises(exc, match=msg):
        setattr(loss, setting, value)
    assert repr(loss) == before


@pytest.mark.parametrize("make", [fastvae.ELBOLoss, fastvae.IWAELoss])
def test_settings_that_must_agree_are_changed_one_at_a_time(make):
    """Only a setting's own value is checked at assignment: a DMoL loss goes to the
    Bernoulli by dropping its bits and then switching, or the other way round, as
    construction would refuse the pair midway; the pair is checked at the call."""
    loss = make(likelihood=_DMOL, bits=5)
    loss.likelihood = "bernoulli"
    loss.bits = None
    assert repr(loss) == repr(make())
    loss.bits = 4
    loss.likelihood = _DMOL
    assert loss.bits == 4 and "bits=4" in repr(loss)


def test_a_dmol_loss_given_bits_none_later_holds_8_as_at_construction():
    """Construction turns bits=None into 8; an assignment did not (repr said bits=None
    while forward used 8)."""
    loss = fastvae.DiscretizedLogisticMixtureNLLLoss(bits=5)
    loss.bits = None
    assert loss.bits == 8
    assert repr(loss) == "DiscretizedLogisticMixtureNLLLoss(bits=8, reduction='mean')"


@pytest.mark.parametrize("make", [fastvae.ELBOLoss, fastvae.IWAELoss,
                                  fastvae.DiscretizedLogisticMixtureNLLLoss])
def test_checked_losses_still_copy_pickle_and_hold_no_state(make):
    import copy
    import pickle
    dmol = {} if make is fastvae.DiscretizedLogisticMixtureNLLLoss else {"likelihood": _DMOL}
    loss = make(**dmol, reduction="sum", bits=5)
    for other in (copy.deepcopy(loss), pickle.loads(pickle.dumps(loss))):
        assert repr(other) == repr(loss) and other.bits == 5
        with pytest.raises(ValueError, match="reduction must be one of"):
            other.reduction = "avg"
    assert loss.state_dict() == {}


def test_a_dmol_loss_pickled_with_bits_as_a_plain_attribute_still_runs():
    torch.manual_seed(0)
    x, params = make_dmol(2, 1, 3, 3, 2, torch.float32)
    made = fastvae.DiscretizedLogisticMixtureNLLLoss(bits=8)
    loss = fastvae.DiscretizedLogisticMixtureNLLLoss.__new__(
        fastvae.DiscretizedLogisticMixtureNLLLoss)
    loss.__setstate__(dict(made.__dict__))   # bits is a plain attribute, as it always was
    assert loss.bits == 8 and repr(loss) == repr(made)
    torch.testing.assert_close(loss(x, params), made(x, params))
