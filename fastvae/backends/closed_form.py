"""The "torch" backend: closed-form forward and gradient in one pass, for any device.

Each ``*_fwd`` computes an op's value and its analytic gradients together; the
autograd wiring that saves only those gradients lives once, in ``fastvae.ops``.

Speed (the ELBO): the Bernoulli term is nearly all of the cost (two transcendentals
per element), so for float32 (and fp16/bf16, upcast a row chunk at a time) it runs in
a small C kernel, ``fastvae.backends.torch_backend.native``, that does one ``exp`` and one
``log1p`` per element and writes the gradient straight into its output. That kernel
is compiled with the system C compiler on first use (about 0.2 s, cached on disk
per machine, ``~/.cache/fastvae``); with no compiler, a failed build, or
``FASTVAE_NATIVE=0`` the same math runs as aten ops over row chunks sized for L2
(slower, still no B x D temporaries beyond the gradients). Everything else (the
Gaussian and continuous-Bernoulli terms, float64) takes the chunked aten path.
Memory: the only B x D tensors are the returned gradients.
"""
from __future__ import annotations

import math

import torch

from .torch_backend import native as _native
from . import reduce_scale, result_dtype, upcast

_LOG2 = math.log(2.0)
_HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)


# -- likelihood terms: value per row and d/d(recon), d/d(obs_logvar) per element ----------

def _bernoulli(x, logits):
    e = torch.exp(-logits.abs())
    softplus = logits.clamp(min=0) + torch.log1p(e)
    sig = torch.where(logits >= 0, 1.0 / (1.0 + e), e / (1.0 + e))
    return (x * logits - softplus).sum(-1), x - sig


def _cb_log_norm(logits):
    """log C(l) = log 2 + log(u / tanh u), u = l/2, and its derivative in l."""
    u = logits * 0.5
    a = u.abs()
    small = a < (1e-3 if logits.dtype == torch.float64 else 5e-2)
    a_safe = torch.where(small, torch.ones_like(a), a)
    t = torch.tanh(a_safe)
    exact = torch.log(a_safe) - torch.log(t)
    u2 = u * u
    value = torch.where(small, u2 / 3 - 7 * u2 * u2 / 90, exact) + _LOG2
    # d/du log(u/tanh u) = 1/u - 1/tanh u + tanh u (odd in u); times du/dl = 1/2.
    d_exact = torch.sign(u) * (1 / a_safe - 1 / t + t)
    d_small = 2 * u / 3 - 14 * u * u2 / 45
    return value, 0.5 * torch.where(small, d_small, d_exact)


def _gaussian(x, mean, logvar):
    inv_var = torch.exp(-logvar) if isinstance(logvar, torch.Tensor) else math.exp(-logvar)
    diff = x - mean
    sq = diff * diff * inv_var
    value = -0.5 * (sq + logvar + 2 * _HALF_LOG_2PI)
    return value.sum(-1), diff * inv_var, 0.5 * (sq - 1)


def _log_likelihood(x, recon, likelihood, obs_logvar):
    """(value per row, d/drecon, d/dobs_logvar or None)."""
    if likelihood == "gaussian":
        return _gaussian(x, recon, obs_logvar)
    value, grad = _bernoulli(x, recon)
    if likelihood == "continuous_bernoulli":
        log_c, d_log_c = _cb_log_norm(recon)
        value, grad = value + log_c.sum(-1), grad + d_log_c
    return value, grad, None


# -- the ELBO's likelihood term, row chunk by row chunk -----------------------------------
#
# Eager autograd keeps several B x D tensors alive (the BCE's intermediates, then the
# gradient); here the only B x D tensors are the gradients we return. Everything else
# is a temporary of one row chunk, sized to stay in L2 cache (1 MiB per core on the
# development machine): _CHUNK_ELEMS fp32 elements are 512 KiB per temporary. Measured
# (aten path, fwd+bwd, 1 thread, D=784): 2^14 / 2^16 / 2^17 / 2^18 / 2^20 elements gave
# 19.1 / 14.9 / 13.6 / 14.3 / 16.8 ms at B=4096 (smaller chunks pay per-op overhead,
# larger ones fall out of L2) and 1.48 / 1.24 / 1.17 / 1.14 / 1.13 ms at B=256.
_CHUNK_ELEMS = 1 << 17


def _row_chunks(batch: int, d: int):
    rows = max(1, _CHUNK_ELEMS // max(d, 1))
    return [(i, min(i + rows, batch)) for i in range(0, batch, rows)]


def _scale_into(out, g, c: float):
    """out = c * g (out may be g itself, or of another dtype)."""
    if c == 1.0:
        if out is not g:
            out.copy_(g)
    else:
        torch.mul(g, c, out=out)


def _bernoulli_chunk(x, logits, g, c: float, rows):
    """rows = sum_d x*l - softplus(l); g (if given) = c * (x - sigmoid(l)).

    x, logits: one chunk in the compute dtype. The compiled kernel (float32) does it
    in one pass; otherwise aten ops over the chunk, with one chunk-sized temporary.
    """
    if logits.dtype == torch.float32 and _native.load() is not None:
        x, logits = x.contiguous(), logits.contiguous()
        direct = g is None or (g.dtype == torch.float32 and g.is_contiguous())
        out = g if direct else torch.empty_like(logits)
        _native.bernoulli_rows(x, logits, out, c, rows)
        if not direct:
            g.copy_(out)
        return
    s = torch.sigmoid(logits)
    if g is not None:
        if c == -1.0:      # -ELBO (ELBOLoss): one pass, straight into g
            torch.sub(s, x, out=g)
        elif c == 1.0:
            torch.sub(x, s, out=g)
        else:
            torch.mul(x - s, c, out=g)
    # softplus(l) = relu(l) + log1p(e), e = exp(-|l|), and -log1p(e) = log sigmoid(|l|)
    # = log(0.5 + |s - 0.5|): the sigmoid we already have, one log instead of
    # softplus's exp + log1p (3x slower in aten). The log's argument is in [0.5, 1], so
    # the error is absolute, below 1e-7 per element, like fp32 rounding of the value.
    # float64 keeps log1p: there the tests ask for full precision.
    if s.dtype == torch.float64:
        t = torch.log1p(torch.exp(-logits.abs())).neg_()
    else:
        t = s.sub_(0.5).abs_().add_(0.5).log_()
    t.addcmul_(x, logits).sub_(logits.clamp(min=0))
    torch.sum(t, -1, out=rows)


def _log_px_rows(x, recon, likelihood, obs, c, dtype, g_x, g_r, g_obs):
    """log p(x|z) per row (in ``dtype``); writes the c-scaled gradients into the given
    outputs (None where not needed). g_obs is (D,) (summed over rows) or (B, D)."""
    batch, d = x.shape
    rows = torch.empty(batch, dtype=dtype, device=x.device)
    if likelihood == "bernoulli":
        if (dtype == torch.float32 and _native.usable(x, recon) and _native.load() is not None
                and (g_r is None or g_r.dtype == torch.float32)):
            chunks = [(0, batch)]  # the kernel makes no temporaries: no need to chunk
        else:
            chunks = _row_chunks(batch, d)
        for i, j in chunks:
            rs = recon[i:j].to(dtype)
            _bernoulli_chunk(x[i:j].to(dtype), rs, None if g_r is None else g_r[i:j], c,
                             rows[i:j])
            if g_x is not None:  # d/dx of x*l is the logits
                torch.mul(rs, c, out=g_x[i:j])
        return rows
    obs_rows = isinstance(obs, torch.Tensor) and obs.dim() == 2
    if isinstance(obs, torch.Tensor) and not obs_rows:
        obs = obs.to(dtype)
    # A (D,) gradient is summed over rows chunk after chunk, in a fixed order, in dtype.
    g_obs_sum = None
    if g_obs is not None and g_obs.dim() == 1:
        g_obs_sum = torch.zeros(d, dtype=dtype, device=x.device)
    for i, j in _row_chunks(batch, d):
        xs, rs = x[i:j].to(dtype), recon[i:j].to(dtype)
        o = obs[i:j].to(dtype) if obs_rows else obs
        value, g, g_o = _log_likelihood(xs, rs, likelihood, o)
        rows[i:j] = value
        if g_r is not None:
            torch.mul(g, c, out=g_r[i:j])
        if g_x is not None:  # d/dx: the logits (continuous Bernoulli), -(x - m) / var (Gaussian)
            torch.mul(g if likelihood == "gaussian" else rs,
                      -c if likelihood == "gaussian" else c, out=g_x[i:j])
        if g_obs_sum is not None:
            g_obs_sum.add_(g_o.sum(0), alpha=c)
        elif g_obs is not None:
            torch.mul(g_o, c, out=g_obs[i:j])
    if g_obs_sum is not None:
        g_obs.copy_(g_obs_sum)
    return rows


def _kl_terms(mu, logvar, z, kl):
    """Per-dim KL (B, L) and its partials w.r.t. mu, logvar, z (z's is None for analytic)."""
    if kl == "analytic":
        var = torch.exp(logvar)
        return 0.5 * (mu * mu + var - 1 - logvar), mu, 0.5 * (var - 1), None
    inv_var = torch.exp(-logvar)
    diff = z - mu
    sq = diff * diff * inv_var
    value = -0.5 * (sq + logvar) + 0.5 * z * z
    return value, diff * inv_var, 0.5 * (sq - 1), z - diff * inv_var


def _out(g, like, need: bool):
    """A gradient output in its input's dtype, or the empty placeholder ops.py expects."""
    if not need or g is None:
        return like.new_empty(0)
    return g.to(like.dtype)


def _obs(obs, obs_scalar):
    return obs_scalar if obs is None else obs


def _grad_buffer(t, need: bool, shape=None):
    """The output a gradient is written into (t's dtype), or None when not needed."""
    if not need or t is None:
        return None
    return torch.empty(shape if shape is not None else t.shape, dtype=t.dtype, device=t.device)


def scale_saved_(grads, grad_out):
    """Backward of the fused losses (``fastvae.ops``): the saved gradients times the
    scalar ``grad_out``, in place; untouched when it is exactly 1 (reading it is a host
    sync on a GPU, which the Triton backend avoids; this one is the CPU path)."""
    if bool(grad_out == 1):
        return grads
    return [None if g is None else g.mul_(grad_out) for g in grads]


def elbo_fwd(x, recon, mu, logvar, z, obs, obs_scalar, likelihood, kl, beta, free_bits,
             reduction, scale, needs):
    """ELBO (times ``scale``) and its gradients w.r.t. (x, recon, mu, logvar, z, obs).

    The gradients are of the returned value: for "mean"/"sum" of the reduced value,
    for "none" of each row's own value (backward weighs rows by grad_output).
    The Bernoulli term of fp32 inputs runs in the compiled kernel of
    ``fastvae.backends.torch_backend.native`` when it is available (first use compiles it, about
    0.2 s, once per machine); otherwise in row chunks of aten ops.
    """
    dtype = result_dtype(x, recon, mu, logvar, z, obs)
    batch = x.shape[0]
    c = scale * reduce_scale(batch, reduction)
    g_x, g_r = _grad_buffer(x, needs[0]), _grad_buffer(recon, needs[1])
    g_obs = None
    if needs[5] and obs is not None and likelihood == "gaussian":
        g_obs = _grad_buffer(obs, True, x.shape if reduction == "none" else obs.shape)
    log_px = _log_px_rows(x, recon, likelihood, _obs(obs, obs_scalar), c, dtype,
                          g_x, g_r, g_obs)
    kc = -beta * c
    if kl == "analytic" and free_bits <= 0:
        kl_rows, g_mu, g_lv = _analytic_kl_rows(upcast(mu, dtype), upcast(logvar, dtype), kc,
                                                needs[2], needs[3])
        g_z = None
    else:
        kl_bl, d_mu, d_lv, d_z = _kl_terms(upcast(mu, dtype), upcast(logvar, dtype), upcast(z, dtype), kl)
        if free_bits > 0 and kl_bl.shape[0] > 0:
            below = kl_bl.mean(0, keepdim=True) < free_bits
            kl_bl = torch.where(below, torch.full_like(kl_bl, free_bits), kl_bl)
            keep = (~below).to(dtype)
            d_mu, d_lv = d_mu * keep, d_lv * keep
            d_z = None if d_z is None else d_z * keep
        kl_rows, g_mu, g_lv = kl_bl.sum(-1), d_mu * kc, d_lv * kc
        g_z = None if d_z is None else d_z * kc
    per_sample = log_px.sub_(kl_rows, alpha=beta) if beta != 0 else log_px
    value = per_sample.mul_(c) if reduction == "none" else per_sample.sum() * c
    return (
        value.to(dtype),
        g_x if g_x is not None else x.new_empty(0),
        g_r if g_r is not None else x.new_empty(0),
        _out(g_mu, mu, needs[2]),
        _out(g_lv, logvar, needs[3]),
        _out(g_z, z if z is not None else mu, needs[4]),
        g_obs if g_obs is not None else x.new_empty(0),
    )


def _analytic_kl_rows(mu, logvar, kc: float, need_mu: bool, need_lv: bool):
    """Per-row analytic KL and its gradients times kc, in five B x L passes instead of a
    dozen: at small B these small ops are a visible part of the whole call."""
    var = torch.exp(logvar)
    g_lv = torch.sub(var, 1).mul_(0.5 * kc) if need_lv else None
    g_mu = torch.mul(mu, kc) if need_mu else None
    # 0.5 * sum_l (mu^2 + var - 1 - logvar), reusing var's buffer
    rows = var.sub_(logvar).addcmul_(mu, mu).sum(-1).sub_(mu.shape[-1]).mul_(0.5)
    return rows, g_mu, g_lv


def gaussian_log_prob_fwd(x, mean, logvar, logvar_scalar, needs):
    """Per-row log density and its per-row gradients w.r.t. (x, mean, logvar)."""
    dtype = result_dtype(x, mean, logvar)
    value, g_mean, g_lv = _gaussian(upcast(x, dtype), upcast(mean, dtype), upcast(_obs(logvar, logvar_scalar), dtype))
    return (value, _out(-g_mean, x, needs[0]), _out(g_mean, mean, needs[1]),
            _out(g_lv, logvar if logvar is not None else x, needs[2]))


def kl_standard_normal_fwd(mu, logvar, needs):
    dtype = result_dtype(mu, logvar)
    kl_bl, d_mu, d_lv, _ = _kl_terms(upcast(mu, dtype), upcast(logvar, dtype), None, "analytic")
    # d_mu is mu itself: clone it, a custom op's output may not alias its input.
    return kl_bl.sum(-1), _out(d_mu.clone(), mu, needs[0]), _out(d_lv, logvar, needs[1])


def iwae_bound_fwd(x, recon_k, mu, logvar, z_k, obs, obs_scalar, likelihood, reduction, needs):
    """Per-row bound (reduced unless "none") and gradients w.r.t. (x, recon_k, mu, logvar, z_k, obs).

    Each sample's log p(x|z_k) runs through the ELBO's row machinery (the compiled
    Bernoulli kernel where available), writing d log p / d recon_k straight into the
    returned gradient, which is then weighted in place by softmax_k(log w) -- no other
    (K, B, D) temporaries.
    """
    dtype = result_dtype(x, recon_k, mu, logvar, z_k, obs)
    k, batch = recon_k.shape[0], recon_k.shape[1]
    ob = _obs(obs, obs_scalar)
    gaussian = likelihood == "gaussian"
    # d/drecon is also what d/dx (Gaussian) and d/dobs are built from.
    want_r = needs[1] or (needs[0] and gaussian)
    g_r = None
    if want_r:  # low-precision recon: weigh in dtype, round once at the end
        g_r = torch.empty(recon_k.shape, dtype=dtype if recon_k.dtype != dtype else recon_k.dtype,
                          device=recon_k.device)
    need_obs = needs[5] and obs is not None and gaussian
    g_o_k = torch.empty(x.shape, dtype=dtype, device=x.device) if need_obs else None
    g_obs_k = [] if need_obs else None
    log_px = torch.empty(k, batch, dtype=dtype, device=x.device)
    for i in range(k):
        log_px[i] = _log_px_rows(x, recon_k[i], likelihood, ob, 1.0, dtype, None,
                                 None if g_r is None else g_r[i], g_o_k)
        if need_obs:
            g_obs_k.append(g_o_k.clone())
    kl_kbl, d_mu, d_lv, d_z = _kl_terms(upcast(mu, dtype).expand(k, -1, -1),
                                        upcast(logvar, dtype).expand(k, -1, -1),
                                        upcast(z_k, dtype), "mc")
    log_w = log_px.sub_(kl_kbl.sum(-1))                   # (K, B)
    bound = torch.logsumexp(log_w, dim=0) - math.log(k)   # (B,)
    c = reduce_scale(batch, reduction)
    wc = (torch.softmax(log_w, dim=0) * c).unsqueeze(-1)  # d bound / d log_w, (K, B, 1)
    if g_r is not None:
        g_r.mul_(wc.to(g_r.dtype))
    g_x = None
    if needs[0]:
        g_x = -g_r.sum(0) if gaussian else (upcast(recon_k, dtype) * wc).sum(0)
    g_obs = None
    if need_obs:
        g_obs = sum(g * wc[i] for i, g in enumerate(g_obs_k))  # (B, D), in sample order
        if reduction != "none" and obs.shape != g_obs.shape:
            g_obs = g_obs.sum(0)
    value = bound if reduction == "none" else bound.sum() * c
    return (
        value,
        _out(g_x, x, needs[0]),
        _out(g_r, recon_k, needs[1]),
        _out(-(d_mu * wc).sum(0), mu, needs[2]),
        _out(-(d_lv * wc).sum(0), logvar, needs[3]),
        _out(-d_z * wc, z_k, needs[4]),
        _out(g_obs, obs if obs is not None else x, needs[5]),
    )


class _Reparameterize(torch.autograd.Function):
    """Saves std * eps, the one new tensor dlogvar needs (the Triton backend regenerates eps),
    and logvar itself (a reference, no memory) for second-order gradients."""

    @staticmethod
    def forward(ctx, mu, logvar, eps):
        std = torch.exp(0.5 * logvar)
        ctx.save_for_backward(std * eps if ctx.needs_input_grad[1] else None, logvar)
        ctx.sample_dims = eps.dim() - mu.dim()
        return torch.addcmul(mu, std, eps)

    @staticmethod
    def backward(ctx, dz):
        std_eps, logvar = ctx.saved_tensors
        dims = tuple(range(ctx.sample_dims))
        dmu = dz.sum(dims) if dims else dz
        dlv = None
        if std_eps is not None:
            if torch.is_grad_enabled():  # create_graph: std * eps as a function of logvar
                std_eps = std_eps * torch.exp(0.5 * (logvar - logvar.detach()))
            prod = dz * std_eps * 0.5
            dlv = prod.sum(dims) if dims else prod
        return dmu, dlv, None


def reparameterize(mu, logvar, n_samples, generator):
    shape = mu.shape if n_samples is None else (n_samples,) + tuple(mu.shape)
    # generator=None is left out: dynamo cannot trace randn(generator=...) on symbolic sizes.
    rng = {} if generator is None else {"generator": generator}
    eps = torch.randn(shape, device=mu.device, dtype=mu.dtype, **rng)
    return _Reparameterize.apply(mu, logvar, eps)
