"""The public ops between two diagonal Gaussians: ``kl_normal`` and ``sample_with_kl``
(re-exported by ``fastvae.functional``): validate once, pick the backend, call it."""
from __future__ import annotations

import functools
import math

import torch

from . import ops
from . import validation as V
from ._compiler import tracing_here
from .dispatch import check_generator as _check_generator
from .dispatch import keep_route as _keep_route, route_taken as _route_taken
from .dispatch import run as _run

_CHECKED = V.Checked()   # signatures: plain tensors and a prior of None or plain tensors


def _gaussians(mu_q, logvar_q, mu_p, logvar_p, validate, sig):
    """Checked ``(B, *)`` posterior flattened to ``(B, N)``, its prior in canonical form
    (None, ``(N,)`` or ``(B, N)``), and the device."""
    # sig: V.layouts of the four (None for a numeric prior: checked every call)
    if sig in _CHECKED:   # the checks below passed on these
        pm, plv = _priors(mu_q, mu_p, logvar_p)
        device = mu_q.device
    else:
        V.check_tensor("mu_q", mu_q)
        V.check_tensor("logvar_q", logvar_q)
        if mu_q.dim() < 1 or logvar_q.shape != mu_q.shape:
            batchless = " (a 0-d tensor has no batch dimension: B = 1 is shape (1,))" * (
                mu_q.dim() == 0)
            raise ValueError(f"mu_q and logvar_q must share a shape (B, *), got "
                             f"{tuple(mu_q.shape)} and {tuple(logvar_q.shape)}{batchless}")
        pm = V.canonical_prior("mu_p", mu_p, mu_q, "mu_q", logvar_q)
        plv = V.canonical_prior("logvar_p", logvar_p, mu_q, "mu_q", logvar_q)
        device = V.check_same_device(mu_q=mu_q, logvar_q=logvar_q, mu_p=pm, logvar_p=plv)
        _CHECKED.add(sig)
    V.check_values(V.resolve_validate(validate), mu_q=mu_q, logvar_q=logvar_q, mu_p=mu_p,
                   logvar_p=logvar_p)
    return (*_rows(mu_q, logvar_q), pm, plv, device)


def _priors(mu_q, mu_p, logvar_p):
    """The canonical priors of checked tensors (or None)."""
    shape = mu_q.shape
    return (None if mu_p is None else V.broadcast_rows(mu_p, shape),
            None if logvar_p is None else V.broadcast_rows(logvar_p, shape))


def _rows(mu_q, logvar_q):
    if mu_q.dim() == 2:  # already (B, N): no view (an autograd node each) per call
        return mu_q, logvar_q
    b, n = mu_q.shape[0], math.prod(mu_q.shape[1:])  # not reshape(b, -1): ambiguous when B == 0
    return mu_q.reshape(b, n), logvar_q.reshape(b, n)


def kl_normal(mu_q, logvar_q, mu_p, logvar_p, backend=None, validate=None):
    r"""Per-sample ``KL(N(mu_q, exp(logvar_q)) || N(mu_p, exp(logvar_p)))`` between diagonal
    Gaussians, summed over every non-batch dimension:

    ``0.5 * sum (lv_p - lv_q + exp(lv_q - lv_p) + (d * exp(-lv_p / 2))^2 - 1)``,
    ``d = mu_q - mu_p`` (the stable forms: float32 at log-variances of +-80 stays finite
    wherever the KL is, up to half float32's largest: the square is formed before it is
    halved, so a term past 1.7e38, ``|d exp(-lv_p/2)| > 1.8e19``, is inf in every
    backend). With ``mu_p = logvar_p = 0`` it is :func:`kl_standard_normal`.

    Args:
        mu_q, logvar_q: ``(B, *)`` posterior (any shape, e.g. ``(B, C, H, W)`` latents).
        mu_p, logvar_p: the prior, required (``None, None`` for N(0, I)): None (0),
            numbers, or tensors broadcastable to mu_q's shape
            (their gradients are summed over the broadcast dimensions).
        backend, validate: as in :func:`reparameterize`.

    Gradients: ``dKL/dmu_q = d exp(-lv_p) = -dKL/dmu_p``, ``dKL/dlogvar_q =
    0.5 (exp(lv_q - lv_p) - 1)``, ``dKL/dlogvar_p = 0.5 (1 - exp(lv_q - lv_p) - d^2
    exp(-lv_p))``. Returns ``(B,)``, float64 when any input is, else float32.
    """
    sig = None if torch.compiler.is_compiling() and tracing_here() else V.layouts(
        mu_q, logvar_q, mu_p, logvar_p)
    mu2, lv2, pm, plv, device = _gaussians(mu_q, logvar_q, mu_p, logvar_p, validate, sig)
    return _run(backend, device, "kl_normal")(mu2, lv2, pm, plv)


def sample_with_kl(mu_q, logvar_q, mu_p=None, logvar_p=None, generator=None, backend=None,
                   validate=None):
    r"""Draw ``z = mu_q + exp(0.5 * logvar_q) * eps`` and compute
    ``KL(N(mu_q, exp(logvar_q)) || N(mu_p, exp(logvar_p)))`` per sample, in one fused op:
    the per-group step of a hierarchical VAE (one launch forward, one backward on the
    Triton backend; one C pass each way on "torch" for float32).

    Args:
        mu_q, logvar_q: ``(B, *)`` posterior, one dtype.
        mu_p, logvar_p: the prior, as in :func:`kl_normal`; None stands for 0, so both
            None (the default) is N(0, I).
        generator, backend, validate: as in :func:`reparameterize`.

    Seeds: eps is drawn exactly as :func:`reparameterize` draws it on the same backend
    (on "triton", and on "torch" for float32 CPU inputs where its C kernel runs, one int64
    Philox seed from ``torch.randint`` and the Triton kernels' counter layout, element by
    element in the row-major order of mu_q; else ``torch.randn`` of mu_q's shape, as on
    "reference"), so after ``torch.manual_seed(s)`` (or with equally seeded generators)
    ``z`` equals ``reparameterize(mu_q.reshape(B, N), logvar_q.reshape(B, N))`` reshaped to
    mu_q's shape, bit for bit (``N``: the product of the non-batch sizes, 1 for a ``(B,)``
    mu_q: one scalar latent per sample). The two Philox backends share the uniforms bit
    for bit; their float32 z differ only by their transcendentals (tests/test_philox.py
    states the bound).

    Gradients: ``dmu_q = dz + g_kl dKL/dmu_q``, ``dlogvar_q = 0.5 dz exp(logvar_q/2) eps +
    g_kl dKL/dlogvar_q``, the prior's from the KL alone (:func:`kl_normal`), where
    ``g_kl`` is the KL's grad_output. No noise tensor is saved where eps comes from a seed
    (it is drawn again in backward).

    Returns ``(z, kl)``: ``z`` in mu_q's shape and dtype, ``kl`` ``(B,)`` (float64 when
    any input is, else float32).
    """
    # (none under torch.compile: the memo is off there, V.Checked)
    layouts = None if torch.compiler.is_compiling() and tracing_here() else V.layouts(
        mu_q, logvar_q, mu_p, logvar_p)
    sig = _route_key(layouts, backend)
    seen = _ROUTES.get(sig)
    if type(seen) is ops.Route and _route_taken(seen, backend, validate, mu_q.device):
        _check_generator(generator, mu_q.device)
        z, kl = ops.sample_with_kl_routed(seen, *_rows(mu_q, logvar_q),
                                          *_priors(mu_q, mu_p, logvar_p), generator)
        return (z if z.shape == mu_q.shape else z.reshape(mu_q.shape)), kl
    mu2, lv2, pm, plv, device = _gaussians(mu_q, logvar_q, mu_p, logvar_p, validate, layouts)
    if mu_q.dtype != logvar_q.dtype:
        raise TypeError(f"mu_q and logvar_q must share a dtype, got {mu_q.dtype} and "
                        f"{logvar_q.dtype}")
    _check_generator(generator, device)
    fn = _run(backend, device, "sample_with_kl")
    z, kl = fn(mu2, lv2, pm, plv, generator)
    if isinstance(fn, functools.partial):
        # a signature seen again is a loop's (a hierarchical VAE's group): a route for
        # its next calls
        _keep_route(_ROUTES, sig, seen, fn, device, lambda: ops.sample_with_kl_route(
            mu2, lv2, pm, plv, backend=fn.keywords["backend"]))
    return (z if z.shape == mu_q.shape else z.reshape(mu_q.shape)), kl


_ROUTES = V.Checked()   # sample_with_kl's signatures: the backend that ran one, then its Route


def _route_key(layouts, backend):
    """What a route of :func:`sample_with_kl` depends on: the tensors' layouts (a numeric
    prior: None, no route), the backend argument and the grad mode."""
    if layouts is None or not (backend is None or type(backend) is str):
        return None
    return layouts, backend, torch.is_grad_enabled()
