"""ELBOLoss, IWAELoss and DiscretizedLogisticMixtureNLLLoss: the negative ELBO, IWAE bound
and DMoL log-likelihood as ``nn.Module``s, like torch's ``*Loss`` modules. Each, but the
DMoL IWAE bound (:class:`IWAELoss`), takes the sign inside its fused op, so that
``loss.backward()`` hands the op a grad_output of exactly 1 and the gradients its forward
pass wrote need no second pass."""
from __future__ import annotations

from torch import nn

from . import backends, estimators
from . import validation as V
from ._compiler import script_refusal
from .functional import _dmol, elbo, iwae_bound


def _option(name, allowed):
    def check(value):
        V.check_option(name, value, allowed)
        return value
    return check


def _backend(value):
    # None is read per call (FASTVAE_BACKEND), so only a value given is checked
    if value is not None:
        backends.check_name(value)
    return value


def _validate(value):
    V.resolve_validate(value)   # None, the global switch, is kept: it is read per call
    return value


def _nonnegative(name):
    return lambda value: V.check_number(name, value, minimum=0.0)


def _elbo_estimator(value):
    estimators.check_elbo_estimator(value)
    return value


def _explicit_bits(value):
    # None is the likelihood's default, read per call (see _BoundLoss)
    return None if value is None else V.check_bits(value)


class _Loss(nn.Module):
    """What every loss module shares: the reduction, the backend and validate settings.

    Each setting is checked wherever it is set, at construction, on any assignment after
    it and when unpickled, by its entry in ``_checks`` (which returns the value kept), so
    that a bad one fails there with the functional API's error, not at the next forward.
    Settings that must agree (likelihood and bits, estimator and kl or likelihood) are
    checked together at construction and per call only: settings change one at a time,
    and changing two that must agree could pass through a pair that is refused."""

    _checks = {"reduction": _option("reduction", V.REDUCTIONS), "backend": _backend,
               "validate": _validate}

    def __init__(self, reduction, backend, validate):
        super().__init__()
        self.reduction, self.backend, self.validate = reduction, backend, validate

    def __setattr__(self, name, value):
        check = self._checks.get(name)
        super().__setattr__(name, value if check is None else check(value))

    def __setstate__(self, state):
        # unpickling bypasses __setattr__: each setting is checked as its assignment would
        # be, so a module saved before a check existed fails at load, saying which one
        state = dict(state)
        for name, check in self._checks.items():
            if name in state:
                state[name] = check(state[name])
        super().__setstate__(state)

    def _chosen(self) -> list:
        """backend and validate where given (None: the environment's, the global switch)."""
        return [f"{k}={getattr(self, k)!r}" for k in ("backend", "validate")
                if getattr(self, k) is not None]

    def __prepare_scriptable__(self):
        # torch.jit.script asks this of a module and of each submodule before compiling
        raise script_refusal(type(self).__name__)


class _BoundLoss(_Loss):
    """A bound's loss: a likelihood (with its ``bits``) and an estimator besides.

    ``bits`` is kept as given (None: the likelihood's default) and read per call, as
    :func:`fastvae.elbo` reads it, so that a likelihood changed after construction takes
    its own default: a DMoL loss's default 8 is not an explicit ``bits`` a Bernoulli
    would refuse."""

    _checks = {**_Loss._checks, "likelihood": _option("likelihood", V.LIKELIHOODS),
               "bits": _explicit_bits}

    def __init__(self, likelihood, reduction, backend, validate, estimator, bits):
        super().__init__(reduction, backend, validate)
        self.likelihood, self.estimator, self.bits = likelihood, estimator, bits
        V.check_likelihood_bits(likelihood, bits)

    def __setstate__(self, state):
        # a module pickled when bits was a plain attribute: its value is an explicit one
        state = dict(state)
        if "bits" in state and "_bits" not in state:
            state["_bits"] = state.pop("bits")
        if "_bits" in state:
            state["_bits"] = _explicit_bits(state["_bits"])
        super().__setstate__(state)

    @property
    def bits(self):
        """The DMoL's bit depth (8 unless given); None for every other likelihood."""
        if self.likelihood == V.DMOL and self._bits is None:
            return V.DMOL_DEFAULT_BITS
        return self._bits

    @bits.setter
    def bits(self, value):
        self._bits = value

    def _repr(self, *settings: str) -> str:
        """The likelihood, ``settings``, the reduction, then bits, estimator, backend and
        validate where they are not implied."""
        return ", ".join([f"likelihood={self.likelihood!r}", *settings,
                          f"reduction={self.reduction!r}"]
                         + ([f"bits={self.bits}"] if self.bits is not None else [])
                         + ([f"estimator={self.estimator!r}"]
                            if self.estimator != "standard" else [])
                         + self._chosen())


class ELBOLoss(_BoundLoss):
    r"""``-ELBO = -(log p(x|z) - beta * KL)``, to be minimized.

    ``loss = ELBOLoss(likelihood="bernoulli", kl="analytic", beta=1.0, free_bits=0.0,
    reduction="mean", backend=None, validate=None, estimator="standard", *, bits=None)``;
    ``loss(x, recon, mu, logvar, z=None, obs_logvar=0.0, prior_mu=None, prior_logvar=None)``
    (a learned prior, as in :func:`fastvae.elbo`). Every argument means what it means in
    :func:`fastvae.elbo` (``bits``: the data's bit depth for
    ``likelihood="discretized_logistic_mixture"``, whose recon is the mixture's
    parameters; None for 8, refused with any other likelihood). With ``reduction="sum"``
    and the Bernoulli likelihood it equals the pytorch/examples VAE ``loss_function``
    written on logits (see :func:`fastvae.elbo`).
    """

    _checks = {**_BoundLoss._checks, "kl": _option("kl", V.KL_MODES),
               "estimator": _elbo_estimator, "beta": _nonnegative("beta"),
               "free_bits": _nonnegative("free_bits")}

    def __init__(self, likelihood="bernoulli", kl="analytic", beta=1.0, free_bits=0.0,
                 reduction="mean", backend=None, validate=None, estimator="standard", *,
                 bits=None):
        super().__init__(likelihood, reduction, backend, validate, estimator, bits)
        self.kl, self.beta, self.free_bits = kl, beta, free_bits
        estimators.check_elbo(estimator, kl)

    def forward(self, x, recon, mu, logvar, z=None, obs_logvar=0.0, prior_mu=None,
                prior_logvar=None):
        """``-elbo(x, recon, mu, logvar, ...)`` with the settings given at construction."""
        # _scale=-1 computes -ELBO inside the fused op, so loss.backward() hands it a
        # grad_output of exactly 1 and the saved gradients need no scaling pass.
        # (positional: binding sixteen keywords costs more than the rest of this call)
        return elbo(x, recon, mu, logvar, self.likelihood, self.kl, z, self.beta,
                    self.free_bits, obs_logvar, self.reduction, self.backend, self.validate,
                    prior_mu, prior_logvar, self.estimator, bits=self._bits, _scale=-1.0)

    def extra_repr(self) -> str:
        return self._repr(f"kl={self.kl!r}", f"beta={self.beta}",
                          f"free_bits={self.free_bits}")


class IWAELoss(_BoundLoss):
    r"""``-L_K``, the negative importance-weighted bound, to be minimized.

    ``loss = IWAELoss(likelihood="bernoulli", reduction="mean", backend=None, validate=None,
    estimator="standard", *, bits=None)``; ``loss(x, recon_k, mu, logvar, z_k,
    obs_logvar=0.0, prior_mu=None, prior_logvar=None)``. Every argument means what it
    means in :func:`fastvae.iwae_bound` (whose reduction default, "none", is the bound per
    sample; a loss's is "mean"). It equals ``-iwae_bound(...)``, but the sign is taken
    inside the fused op: ``loss.backward()`` hands the op a grad_output of exactly 1, so
    backward finds the gradients the forward pass wrote ready to use, where
    ``-iwae_bound(...)`` reads and writes every one of them again to negate it. (With
    ``likelihood="discretized_logistic_mixture"`` the bound is two fused ops and a
    logsumexp, whose backward weighs every saved gradient per sample anyway: the sign is
    a multiply of the result there, at no extra pass.)
    """

    _checks = {**_BoundLoss._checks,
               "estimator": _option("estimator", estimators.ESTIMATORS)}

    def __init__(self, likelihood="bernoulli", reduction="mean", backend=None, validate=None,
                 estimator="standard", *, bits=None):
        super().__init__(likelihood, reduction, backend, validate, estimator, bits)
        estimators.check_iwae(estimator, likelihood)

    def forward(self, x, recon_k, mu, logvar, z_k, obs_logvar=0.0, prior_mu=None,
                prior_logvar=None):
        """``-iwae_bound(x, recon_k, mu, logvar, z_k, ...)`` with the settings given at
        construction."""
        return iwae_bound(x, recon_k, mu, logvar, z_k, self.likelihood, obs_logvar,
                          self.reduction, self.backend, self.validate, prior_mu, prior_logvar,
                          self.estimator, bits=self._bits, _scale=-1.0)

    def extra_repr(self) -> str:
        return self._repr()


class DiscretizedLogisticMixtureNLLLoss(_Loss):
    r"""``-log p(x)`` under a discretized mixture of logistics, to be minimized.

    ``loss = DiscretizedLogisticMixtureNLLLoss(bits=8, reduction="mean", backend=None,
    validate=None)``; ``loss(x, params)``, both as in
    :func:`fastvae.discretized_logistic_mixture_log_prob`. It equals
    ``-discretized_logistic_mixture_log_prob(x, params, bits, reduction)`` in nats per
    image ("mean"), per batch ("sum") or per image ``(B,)`` ("none"); divide by
    ``C*H*W*ln 2`` for bits per dimension. ``bits=None`` is 8, as everywhere.
    The sign is taken inside the fused op, as in :class:`ELBOLoss`.
    """

    _checks = {**_Loss._checks, "bits": V.check_bits}   # None is 8 here, at once

    def __init__(self, bits=8, reduction="mean", backend=None, validate=None):
        super().__init__(reduction, backend, validate)
        self.bits = bits

    def forward(self, x, params):
        """``-discretized_logistic_mixture_log_prob(x, params, bits, reduction)``."""
        return _dmol(x, params, self.bits, self.reduction, -1.0, self.backend, self.validate)

    def extra_repr(self) -> str:
        return ", ".join([f"bits={self.bits}", f"reduction={self.reduction!r}", *self._chosen()])
