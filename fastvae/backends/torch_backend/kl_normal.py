"""kl_normal on the "torch" backend: per-row KL between diagonal Gaussians and its gradients,
in one pass of the C kernel of ``gaussian_rows`` where it is available (float32; 16-bit on
upcast row chunks), else as row-chunked aten ops (float64, ``FASTVAE_NATIVE=0``, no
compiler). The one home of this math on the backend: ``sample_with_kl`` writes its KL
with :func:`kl_into` too."""
from __future__ import annotations

import torch

from ..._dtypes import kl_bwd_sources, kl_mean_grad_dtype, kl_saved_needs, result_dtype, upcast
from . import gaussian_rows, terms
from .rows import grad_buffer, row_chunks


def kl_normal_fwd(mu_q, logvar_q, mu_p, logvar_p, needs):
    """(KL per row, d/dmu_q, d/dlogvar_q, d/dlogvar_p), each gradient per row (B, N)
    whatever its input's shape (``fastvae.ops`` sums a shared prior's); None where
    ``needs`` = (mu_q, logvar_q, mu_p, logvar_p) does not ask for it. d/dmu_q is there
    where mu_q or mu_p needs a gradient (d/dmu_p is its negative), in
    ``kl_mean_grad_dtype``. Any device (the Triton backend hands a float64 prior here)."""
    return kl_into(mu_q, logvar_q, mu_p, logvar_p,
                   *kl_buffers(mu_q, logvar_q, mu_p, logvar_p, needs))


def kl_buffers(mu, logvar, prior_mu, prior_logvar, needs):
    """New buffers for the KL (B,) and its wanted gradients (B, N) (None where not wanted)."""
    kl = mu.new_empty(mu.shape[0], dtype=result_dtype(mu, logvar, prior_mu, prior_logvar))
    g_mu = (mu.new_empty(mu.shape, dtype=kl_mean_grad_dtype(mu, prior_mu, needs[2]))
            if kl_saved_needs(needs)[0] else None)
    return (kl, g_mu, grad_buffer(logvar, needs[1], mu.shape),
            grad_buffer(prior_logvar, needs[3], mu.shape))


def kl_into(mu, logvar, prior_mu, prior_logvar, kl, g_mu, g_lv, g_plv):
    """The KL and its gradients written into the given buffers (:func:`kl_buffers`): the
    C kernel where it runs, else row-chunked aten in the KL's dtype."""
    if gaussian_rows.kl_rows(mu, logvar, prior_mu, prior_logvar, None, None, kl,
                             g_mu, None, g_lv, g_plv):
        return kl, g_mu, g_lv, g_plv
    dtype = kl.dtype
    for i, j in row_chunks(*mu.shape):
        _kl_chunk(upcast(mu[i:j], dtype), upcast(logvar[i:j], dtype),
                  upcast(_rows(prior_mu, i, j), dtype), upcast(_rows(prior_logvar, i, j), dtype),
                  kl[i:j], *(None if g is None else g[i:j] for g in (g_mu, g_lv, g_plv)))
    return kl, g_mu, g_lv, g_plv


def _rows(t, i, j):
    """Rows i:j of a prior (None, a shared (N,) or (1, N) row, or (B, N))."""
    return t if t is None or t.dim() == 1 or t.shape[0] == 1 else t[i:j]


def _kl_chunk(mu, lv, pm, plv, kl, g_mu, g_lv, g_plv):
    """KL rows and the wanted gradients of one chunk, written into the given outputs.

    With ``u = (mu - pm) exp(-plv/2)``, ``r = exp(lv - plv)``: d/dmu ``u exp(-plv/2)``,
    d/dlv ``0.5 (r - 1)``, d/dplv ``-(0.5 (r - 1) + 0.5 u^2)`` and the KL
    ``0.5 (plv - lv) - d/dplv``, with ``0.5 r`` as ``exp(lv - plv - log 2)`` (finite up to
    lv - plv = 89.4 in float32): the C kernel's terms in its order, seven chunk passes for
    all of it (eight with a prior's plv: its factor is held finite, :func:`terms.inv_sd`).
    """
    if plv is None:
        u = mu.clone() if pm is None else mu - pm
        half_r = torch.sub(lv, terms.LOG_2).exp_()
        half_lv_diff = lv * -0.5
    else:
        inv_sdp = terms.inv_sd(plv)
        u = torch.sub(mu, pm).mul_(inv_sdp) if pm is not None else mu * inv_sdp
        if g_mu is not None:
            torch.mul(u, inv_sdp, out=g_mu)
        half_r = torch.sub(lv, plv).sub_(terms.LOG_2).exp_()   # e^89 / 2 fits float32
        half_lv_diff = torch.sub(plv, lv).mul_(0.5)
    if plv is None and g_mu is not None:
        g_mu.copy_(u)
    half_r1 = half_r.sub_(0.5)                          # 0.5 (r - 1) = d/dlogvar_q
    if g_lv is not None:
        g_lv.copy_(half_r1)
    neg_gplv = half_r1.addcmul_(u, u, value=0.5)        # 0.5 (r - 1) + 0.5 u^2
    if g_plv is not None:
        torch.mul(neg_gplv, -1.0, out=g_plv)
    torch.sum(half_lv_diff.add_(neg_gplv), -1, out=kl)


def kl_normal_bwd(grad_out, g_mu, g_lv, g_plv, needs):
    """The saved gradients times the KL's grad_output (B,), per row, in one pass of the C
    kernel: [d_mu, d_lv, d_pm, d_plv], None where not needed; d_pm = -grad_out g_mu.
    None where the C path cannot run (the caller weighs them in aten)."""
    if grad_out.dim() != 1 or not any(needs):
        return None
    outs = [torch.empty_like(g) if n else None
            for g, n in zip(kl_bwd_sources(g_mu, g_lv, g_plv), needs)]
    if not gaussian_rows.kl_bwd_rows(None, grad_out, None, None,
                                     g_mu if kl_saved_needs(needs)[0] else None,
                                     g_lv if needs[1] else None, g_plv if needs[3] else None,
                                     *outs):
        return None
    return outs
