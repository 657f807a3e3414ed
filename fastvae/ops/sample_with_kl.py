"""``fastvae::sample_with_kl``: ``z = mu_q + exp(0.5*logvar_q) * eps`` and the per-row
``KL(N(mu_q, exp(logvar_q)) || N(mu_p, exp(logvar_p)))`` in one op, the same on every
backend; ``fastvae::sample_with_kl_bwd`` is its backward, an op of its own so that
torch.compile traces the Triton backward kernel as one node.

The noise is drawn first, outside the op, by the backend's ``reparameterize_noise``
(a Philox seed, or eps itself where the backend has no in-kernel draw for these
inputs), exactly as ``reparameterize`` draws it:
the same seed gives the same z. The forward also returns the KL's gradients, and only
those are saved with the noise and a reference to logvar_q (``dKL/dmu_p = -dKL/dmu_q``
is saved once). Backward: ``dmu_q = dz + g_kl dKL/dmu_q``,
``dlogvar_q = 0.5 dz exp(logvar_q/2) eps + g_kl dKL/dlogvar_q``, the prior's from the
KL alone (per row, then summed over rows for a prior shared by every row). Where the
public function dropped the gradient outputs and the graph is freed after this backward,
the backend may write its outputs over the saved gradients (``reuse_saved``).
"""
from __future__ import annotations

from typing import List, Optional

import torch
from torch import Tensor

from .. import backends, reference
from .._dtypes import kl_bwd_sources, kl_mean_grad_dtype, kl_saved_needs, result_dtype
from . import _autograd as A


def _sample_with_kl_fwd(mu: Tensor, logvar: Tensor, prior_mu: Optional[Tensor],
                        prior_logvar: Optional[Tensor], noise: Tensor, needs: List[bool],
                        backend: str) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    return A.filled(_sample_with_kl_value(mu, logvar, prior_mu, prior_logvar, noise, needs,
                                          backend), mu)


def _sample_with_kl_value(mu, logvar, prior_mu, prior_logvar, noise, needs, backend):
    """The backend's (z, kl, *the KL's gradients), None for a gradient not needed."""
    return backends.computing(backend).sample_with_kl_fwd(mu, logvar, prior_mu, prior_logvar,
                                                          noise, needs)


_op = torch.library.custom_op("fastvae::sample_with_kl", mutates_args=())(_sample_with_kl_fwd)


@_op.register_fake
def _(mu, logvar, prior_mu, prior_logvar, noise, needs, backend):
    return (mu.new_empty(mu.shape),
            mu.new_empty(mu.shape[:1], dtype=result_dtype(mu, logvar, prior_mu, prior_logvar)),
            (mu.new_empty(mu.shape, dtype=kl_mean_grad_dtype(mu, prior_mu, needs[2]))
             if kl_saved_needs(needs)[0] else mu.new_empty(0)),
            A.grad_like(logvar, needs[1], mu, mu.shape),
            A.grad_like(prior_logvar, needs[3], mu, mu.shape))


@torch.library.custom_op("fastvae::sample_with_kl_bwd", mutates_args=())
def _bwd_op(dz: Optional[Tensor], g_kl: Optional[Tensor], logvar: Tensor, noise: Tensor,
            g_mu: Tensor, g_lv: Tensor, g_plv: Tensor, needs: List[bool], backend: str
            ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(dmu_q, dlogvar_q, dmu_p, dlogvar_p), each (B, N) or an empty placeholder."""
    return A.filled(backends.get(backend).sample_with_kl_bwd(dz, g_kl, logvar, noise, g_mu, g_lv,
                                                             g_plv, needs), logvar)


@_bwd_op.register_fake
def _(dz, g_kl, logvar, noise, g_mu, g_lv, g_plv, needs, backend):
    # each in the dtype of the saved gradient it is made from (as the backends write them)
    return tuple(logvar.new_empty(logvar.shape, dtype=s.dtype) if n else logvar.new_empty(0)
                 for n, s in zip(needs, kl_bwd_sources(g_mu, g_lv, g_plv)))


def _setup(ctx, inputs, output):
    mu, logvar, prior_mu, prior_logvar, noise, needs, backend = inputs
    ctx.set_materialize_grads(False)  # z or the KL may go unused: their grads stay None
    ctx.needs, ctx.backend = list(needs), backend
    ctx.owns_saved = False  # set by A.owned() where the caller drops the gradient outputs
    # the KL's gradients (None where not needed, as the value path and the route save
    # them: not the custom op's placeholders), then the inputs: logvar_q and the noise (eps
    # or a seed) are what dlogvar_q reads, all of them what higher orders recompute from
    A.save_with_inputs(ctx, [g if w else None for g, w in zip(output[2:], kl_saved_needs(needs))],
                       inputs[:5])
    ctx.like = [A.input_like(t) for t in (mu, logvar, prior_mu, prior_logvar)]


def _finish(ctx, grads):
    """Each gradient in its input's dtype, a shared prior's summed over rows."""
    out = [A.to_shape(g, like) if need else None
           for g, need, like in zip(grads, ctx.needs, ctx.like)]
    return (*out, None, None, None)


def _backward(ctx, dz, g_kl, *_):
    (g_mu, g_lv, g_plv), (_, logvar, _, _, noise) = A.unpacked(ctx)
    if not ctx.needs[1]:
        # only dlogvar_q reads logvar_q and the noise: not read here, a compiled backward
        # does not keep them
        logvar = g_mu if ctx.needs[0] or ctx.needs[2] else g_plv  # for its shape only
        noise = None
    args = (dz, g_kl, logvar, noise, g_mu, g_lv, g_plv, ctx.needs)
    if A.plain_eager((dz, g_kl, logvar)):
        grads = backends.get(ctx.backend).sample_with_kl_bwd(
            *args, reuse_saved=A.may_overwrite_saved(ctx))
    else:  # the op takes tensors: the value path saved None for a gradient not needed
        grads = _bwd_op(dz, g_kl, logvar, noise, *A.filled((g_mu, g_lv, g_plv), logvar),
                        ctx.needs, ctx.backend)
    return _finish(ctx, list(grads))


def _higher_order(ctx, dz, g_kl, *_):
    """The same gradients as differentiable functions: z and the KL rebuilt from the same
    eps (``reparameterize_std_eps``) and the reference KL."""
    mu, logvar, prior_mu, prior_logvar, noise = A.kept_inputs(ctx)
    outputs, cotangents = [], []   # as autograd.grad's pairs: a batched cotangent (a vmap
    if dz is not None:             # over this backward) may not enter an output
        with torch.no_grad():
            std_eps = backends.get(ctx.backend).reparameterize_std_eps(logvar, noise, 0)
        outputs.append(mu + std_eps * torch.exp(0.5 * (logvar - logvar.detach())))
        cotangents.append(dz)
    if g_kl is not None:
        outputs.append(reference.kl_normal(mu, logvar, prior_mu, prior_logvar))
        cotangents.append(g_kl)
    grads = A.recompute_grads(outputs, (mu, logvar, prior_mu, prior_logvar), ctx.needs,
                              cotangents or None)
    return (*grads, None, None, None)


def _z_constant(needs) -> tuple:
    """z = mu_q + sigma_q eps has no gradient where only the prior needs one."""
    return () if needs[0] or needs[1] else (0,)


_sample_with_kl = A.Fused(_op, _sample_with_kl_fwd, _setup,
                          A.with_higher_order(_backward, _higher_order), tensor_args=5,
                          value_forward=_sample_with_kl_value, values=2, constant=_z_constant)


def sample_with_kl(mu, logvar, prior_mu, prior_logvar, generator, *, backend):
    """(z (B, N), KL per row (B,)); prior None / (N,) / (B, N)."""
    noise = backends.get(backend).reparameterize_noise(mu, 0, generator)
    needs = A.needs(mu, logvar, prior_mu, prior_logvar)
    # z and the KL only: the gradient outputs end here, so backward may write over them
    return _sample_with_kl.value(mu, logvar, prior_mu, prior_logvar, noise, needs, backend)


def route(mu, logvar, prior_mu, prior_logvar, *, backend):
    """A :class:`~fastvae.ops._autograd.Route` for :func:`sample_with_kl` calls like this
    one (the same layouts, grad mode and backend): :func:`routed` calls it."""
    needs = A.needs(mu, logvar, prior_mu, prior_logvar)
    compute = backends.get(backend)
    fwd = compute.sample_with_kl_fwd
    prepare = getattr(fwd, "prepare", None)
    run = prepare(mu, logvar, prior_mu, prior_logvar, needs) if prepare is not None else None
    if run is None:
        def run(mu, logvar, prior_mu, prior_logvar, noise):
            return fwd(mu, logvar, prior_mu, prior_logvar, noise, needs)

    like = [A.input_like(t) for t in (mu, logvar, prior_mu, prior_logvar)]
    return A.Route(_sample_with_kl, run, 5, 5, (), needs, backend, {"like": like},
                   source=(compute, "sample_with_kl_fwd", fwd))


def routed(route, mu, logvar, prior_mu, prior_logvar, generator):
    """:func:`sample_with_kl` of a call that takes ``route`` (its signature's): the noise
    drawn as the op draws it, then the route's one node."""
    noise = backends.get(route.backend).reparameterize_noise(mu, 0, generator)
    return route.function.apply(mu, logvar, prior_mu, prior_logvar, noise)
