"""sample_with_kl on the "torch" backend: z, the per-row KL to the prior and the KL's
gradients in one pass; backward in one more. Both run in the C kernel of
``gaussian_rows`` where it is available (float32; 16-bit forward on upcast row chunks,
with aten's z), else as row-chunked aten ops (float64, ``FASTVAE_NATIVE=0``, no compiler);
the KL and its gradients are ``kl_normal``'s (:func:`.kl_normal.kl_into`).

``noise`` is drawn by :func:`reparameterize_noise` exactly as ``reparameterize`` draws
it: for float32 where the C kernel runs a Philox seed, eps drawn in the kernel's
registers forward and again backward (no eps tensor exists; the Triton backend's stream,
so float32 z matches its z for the same seed to a float32 bound), else eps itself. ``z``
is computed by the same code as reparameterize's, so the two give the same z for the
same seed, bit for bit. Only the KL's gradients are saved (``fastvae.ops.sample_with_kl``), and
``dKL/dmu_p = -dKL/dmu_q`` is not saved twice. Every B x N temporary is one row chunk
(``rows.CHUNK_ELEMS``), so the passes run in cache and allocate no large buffers.
"""
from __future__ import annotations

import torch

from ..._dtypes import SIXTEEN_BIT, kl_bwd_sources, kl_saved_needs, widened
from . import gaussian_rows
from .kl_normal import kl_buffers, kl_into
from .reparameterize import reparameterize_fwd, seeded
from .rows import row_chunks


def sample_with_kl_fwd(mu, logvar, prior_mu, prior_logvar, noise, needs):
    """(z, KL per row, dKL/dmu_q, dKL/dlogvar_q, dKL/dlogvar_p): the gradients where
    ``needs`` = (mu_q, logvar_q, mu_p, logvar_p) asks for them (dKL/dmu_q also for mu_p),
    None otherwise."""
    kl, g_mu, g_lv, g_plv = kl_buffers(mu, logvar, prior_mu, prior_logvar, needs)
    if seeded(noise):  # z from the kernel's pass, eps drawn there, the same
        # code as reparameterize's z: the same bits
        z = torch.empty_like(mu, memory_format=torch.contiguous_format)
        if gaussian_rows.kl_rows(mu, logvar, prior_mu, prior_logvar, noise, z, kl,
                                 g_mu, None, g_lv, g_plv):
            return z, kl, g_mu, g_lv, g_plv
    z = reparameterize_fwd(mu, logvar, noise, 0)
    return (z, *kl_into(mu, logvar, prior_mu, prior_logvar, kl, g_mu, g_lv, g_plv))


def sample_with_kl_bwd(dz, g_kl, logvar, noise, g_mu, g_lv, g_plv, needs, reuse_saved=False):
    """(dmu_q, dlogvar_q, dmu_p, dlogvar_p) from dz and the KL's grad_output ``g_kl`` (either
    may be None: that output was not used): ``dmu_q = dz + g_kl dKL/dmu_q``,
    ``dlogvar_q = 0.5 dz exp(logvar/2) eps + g_kl dKL/dlogvar_q``, and the prior's from the
    KL alone, per row (B, N). None where ``needs`` says not needed.

    ``reuse_saved``: the caller owns g_mu, g_lv and g_plv and drops them after this call,
    so the C kernel may write dmu_q (else dmu_p), dlogvar_q and dlogvar_p over them, each
    element right after reading it: no new buffers, and no cache lines fetched only to be
    overwritten (the pass is memory-bound)."""
    batch, n = logvar.shape
    # (the others are None or placeholders)
    saved = tuple(g if r else None for g, r in zip((g_mu, g_lv, g_plv), kl_saved_needs(needs)))
    outs = _bwd_outputs(logvar, needs, saved, reuse_saved)
    if any(needs) and gaussian_rows.kl_bwd_rows(dz, g_kl, logvar if needs[1] else None,
                                                noise if needs[1] else None, *saved, *outs):
        return tuple(outs)
    if reuse_saved:  # the aten path below reads g_mu after writing d_mu: new buffers
        outs = _bwd_outputs(logvar, needs, saved, False)
    gk = None if g_kl is None else g_kl.unsqueeze(-1)
    for i, j in row_chunks(batch, n):
        d_mu, d_lv, d_pm, d_plv = (None if o is None else o[i:j] for o in outs)
        dzc = None if dz is None else dz[i:j]
        gkc = None if gk is None else gk[i:j]
        if d_mu is not None:
            _sum_into(d_mu, dzc, gkc, g_mu, i, j)
        if d_lv is not None:
            h = None
            if dzc is not None:  # 0.5 * dz * exp(logvar / 2) * eps
                h = _std_eps(logvar, noise, i, j).mul_(0.5).mul_(dzc)
            _sum_into(d_lv, h, gkc, g_lv, i, j)
        if d_pm is not None:
            _sum_into(d_pm, None, gkc, g_mu, i, j, sign=-1.0)
        if d_plv is not None:
            _sum_into(d_plv, None, gkc, g_plv, i, j)
    return tuple(outs)


def _bwd_outputs(logvar, needs, saved, reuse: bool):
    """The four (B, N) backward outputs (None where not needed), each in the dtype of the
    saved gradient it is made from (``saved`` = (g_mu, g_lv, g_plv)): dmu_q and dmu_p
    g_mu's, dlogvar_q g_lv's, dlogvar_p g_plv's. New buffers, or with ``reuse`` the saved
    gradient itself: dmu_q, else dmu_p, over g_mu; dlogvar_q over g_lv; dlogvar_p over
    g_plv."""
    g_mu, g_lv, g_plv = saved
    source = kl_bwd_sources(*saved)
    over = (g_mu if needs[0] else None, g_lv, None if needs[0] else g_mu, g_plv)
    return [None if not need else (r if reuse and r is not None and r.shape == logvar.shape
                                   and r.is_contiguous()
                                   else logvar.new_empty(logvar.shape, dtype=s.dtype))
            for need, s, r in zip(needs, source, over)]


def _std_eps(logvar, noise, i, j):
    """exp(logvar / 2) * eps of rows i:j, eps drawn again from a seed or given; float32
    at least (a 16-bit term is summed wide, then rounded once)."""
    if not seeded(noise):
        return torch.mul(widened(logvar[i:j]), 0.5).exp_().mul_(noise[i:j])
    out = torch.empty((j - i, logvar.shape[1]), dtype=logvar.dtype, device=logvar.device)
    if not gaussian_rows.std_eps_rows(logvar[i:j], noise, i * logvar.shape[1],
                                      gaussian_rows.cpad(logvar.numel()), out):
        raise RuntimeError("fastvae: sample_with_kl's backward got a Philox seed but the C "
                           "kernel cannot run on these tensors")
    return out


def _sum_into(out, base, gk, g, i, j, sign=1.0):
    """out = base + sign * gk * g[i:j] (a missing term counts as 0), summed in float32 at
    least and rounded to a 16-bit out once."""
    if gk is None:
        out.copy_(base) if base is not None else out.zero_()
    elif base is None:
        torch.mul(g[i:j], gk if sign == 1.0 else -gk, out=out)
    elif out.dtype in SIXTEEN_BIT:
        out.copy_(torch.addcmul(widened(base), gk, widened(g[i:j]), value=sign))
    else:
        torch.addcmul(base, gk, g[i:j], value=sign, out=out)
