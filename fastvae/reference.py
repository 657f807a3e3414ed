"""The eager oracle: plain PyTorch, written for clarity, one formula per term.

Every other backend is tested against these functions and benchmarked against
them; they are never the default. Same call signatures as every backend (see
``fastvae.backends``). Math runs in float32 at least (float64 stays float64) and
autograd builds the gradients. The fused ops also recompute with these functions when a
graph of their backward is asked for (higher-order gradients).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from . import estimators
from ._cb import CB_SERIES_BELOW, logc_coeffs
from ._dtypes import result_dtype, upcast, widened, widest

LOG_2 = math.log(2.0)
LOG_2PI = math.log(2.0 * math.pi)


def _reduce(per_sample: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == "none":
        return per_sample
    if reduction == "sum":
        return per_sample.sum()
    # An empty batch contributes nothing: 0, not the NaN of an empty mean.
    return per_sample.sum() / max(per_sample.shape[0], 1)


def logsumexp(x: torch.Tensor, dim: int) -> torch.Tensor:
    """``torch.logsumexp`` whose gradient, the softmax over ``dim``, sums to 1 to rounding.
    torch's backward weighs by ``exp(x - lse)`` with the rounded lse: where ``|x|`` is large
    (an IWAE log-weight is a whole sample's log-likelihood, 3e4 for an untrained 32x32x3
    decoder, far more early in training) that rounding is ``ulp(|x|)``, and every weight is
    off by the factor ``exp`` of it (6e-5 at 3e4, 12% at 3e6 in float32). Here the shift
    is a constant to autograd, and the weights are ``exp(x - m) / sum exp(x - m)``; where
    every ``x`` is -inf the result is -inf and the weights 0 (``log(0)``'s gradient would
    make them ``0 * inf = NaN``; a NaN sum stays NaN)."""
    m = _shift(x.detach(), dim)
    total = (x - m).exp().sum(dim)
    empty = total == 0
    log_total = torch.where(empty, torch.ones_like(total), total).log()
    return torch.where(empty, torch.full_like(total, -math.inf), log_total) + m.squeeze(dim)


def _shift(x: torch.Tensor, dim: int) -> torch.Tensor:
    """The max over ``dim`` (kept), 0 where it is not finite: a row all -inf would give
    -inf - -inf = NaN."""
    m = x.amax(dim, keepdim=True)
    return torch.where(torch.isfinite(m), m, torch.zeros_like(m))


def cb_log_norm(logits: torch.Tensor) -> torch.Tensor:
    """log C(l) of the continuous Bernoulli in logit space: log(l / tanh(l/2)), even in l.
    Below |l| = 1 the polynomial of ``fastvae._cb`` (autograd's derivative of it is the fit
    of 1/l - 1/sinh l: differentiated, the closed form cancels to ~eps/|l| there); above,
    ``log|l| - log tanh(|l|/2)``."""
    a = logits.abs()
    small = a < CB_SERIES_BELOW
    safe_a = torch.where(small, torch.ones_like(a), a)  # keeps 1/a out of the gradient
    exact = torch.log(safe_a) - torch.log(torch.tanh(safe_a / 2))
    small_l = torch.where(small, logits, torch.zeros_like(logits))  # keeps s**k's overflow out too
    s = small_l * small_l
    q = logc_coeffs(logits.dtype == torch.float64)
    poly = torch.full_like(s, q[-1])
    for c in reversed(q[:-1]):
        poly = poly * s + c
    return torch.where(small, LOG_2 + s * poly, exact)


def log_likelihood(x, recon, likelihood: str, obs_logvar=0.0) -> torch.Tensor:
    """log p(x|z) per row, summed over the last dim."""
    if likelihood == "bernoulli":
        return -F.binary_cross_entropy_with_logits(recon, x, reduction="none").sum(-1)
    if likelihood == "continuous_bernoulli":
        bern = -F.binary_cross_entropy_with_logits(recon, x, reduction="none")
        return (bern + cb_log_norm(recon)).sum(-1)
    if likelihood == "gaussian":
        return gaussian_log_prob(x, recon, obs_logvar)
    raise ValueError(f"unknown likelihood {likelihood!r}")


def _inv_sd(logvar):
    """exp(-logvar/2), its exponent held just below the dtype's overflow (float32: logvar
    < -177.4): a difference of exactly 0 times it is then 0, the exact value, with finite
    gradients, not inf * 0 = NaN. The exponent, not the product, is held so that
    autograd's chain through it stays finite as well. The hold passes the gradient on
    (straight through, as the fused kernels differentiate the held factor): a clamp's zero
    gradient would flip d/dlogvar's sign for a nonzero difference, -0.5 where the true
    derivative, 0.5 * t^2 - 0.5, is huge and positive."""
    cap = math.log(torch.finfo(logvar.dtype).max) - 1e-4   # a few ulps below: exp(cap) < inf
    y = -0.5 * logvar
    # held + (y - y) is the clamp's value exactly, with y's gradient. Not
    # y - (y - held).detach(): y - held rounds once |y| is past ~2^8 (float32), so the
    # factor would be inf at logvar = -3e9 and 1 at -1e20; an infinite y (logvar = -inf)
    # joins as 0, since inf - inf is NaN
    held = torch.clamp(y, max=cap).detach()
    finite = torch.where(torch.isfinite(y), y, 0.0)
    return torch.exp(held + (finite - finite.detach()))


def gaussian_log_prob(x, mean, logvar):
    """sum_d log N(x_d; mean_d, exp(logvar_d))."""
    dtype = result_dtype(x, mean, logvar)
    x, mean = upcast(x, dtype), upcast(mean, dtype)
    logvar = torch.as_tensor(logvar, dtype=dtype, device=x.device) if not isinstance(
        logvar, torch.Tensor) else logvar.to(dtype)
    t = (x - mean) * _inv_sd(logvar)  # not (x - mean)^2 * exp(-logvar): it overflows
    return (-0.5 * (t * t + logvar + LOG_2PI)).sum(-1)


def kl_standard_normal(mu, logvar):
    """KL(N(mu, exp(logvar)) || N(0, I)) per row."""
    return kl_per_dim(mu, logvar).sum(-1)


def kl_per_dim(mu, logvar):
    """0.5 * (mu^2 + exp(logvar) - 1 - logvar), with 0.5 * exp(logvar) as exp(logvar - log 2)."""
    dtype = result_dtype(mu, logvar)
    mu, logvar = mu.to(dtype), logvar.to(dtype)
    return 0.5 * (mu * mu - 1 - logvar) + torch.exp(logvar - LOG_2)


def kl_normal_per_dim(mu_q, logvar_q, mu_p, logvar_p):
    """KL(N(mu_q, exp(logvar_q)) || N(mu_p, exp(logvar_p))) per element:
    ``0.5 * (lv_p - lv_q + exp(lv_q - lv_p) + (d * exp(-lv_p / 2))^2 - 1)``, d = mu_q - mu_p.
    A prior given as None is 0 (N(0, I) when both are)."""
    if mu_p is None and logvar_p is None:
        return kl_per_dim(mu_q, logvar_q)
    dtype = result_dtype(mu_q, logvar_q, mu_p, logvar_p)
    mu_q, logvar_q = mu_q.to(dtype), logvar_q.to(dtype)
    mu_p = 0.0 if mu_p is None else mu_p.to(dtype)
    logvar_p = torch.zeros((), dtype=dtype, device=mu_q.device) if logvar_p is None else (
        logvar_p.to(dtype))
    u = (mu_q - mu_p) * _inv_sd(logvar_p)  # not d^2 * exp(-lv_p): it overflows
    # 0.5 * exp(lv_q - lv_p) as exp(lv_q - lv_p - log 2): e^89 / 2 fits float32, e^89 not
    return 0.5 * (logvar_p - logvar_q + u * u - 1) + torch.exp(logvar_q - logvar_p - LOG_2)


def kl_normal(mu_q, logvar_q, mu_p, logvar_p):
    """Per-row KL between diagonal Gaussians: (B, N) and priors None / (N,) / (B, N) -> (B,)."""
    return kl_normal_per_dim(mu_q, logvar_q, mu_p, logvar_p).sum(-1)


def sample_with_kl(mu_q, logvar_q, mu_p, logvar_p, generator):
    """(z, KL per row): the reparameterized sample (eps drawn as :func:`reparameterize`
    draws it) and :func:`kl_normal` of the same call."""
    return reparameterize(mu_q, logvar_q, None, generator), kl_normal(mu_q, logvar_q, mu_p,
                                                                      logvar_p)


def mc_kl_per_dim(z, mu, logvar, prior_mu=None, prior_logvar=None):
    """log q(z|x) - log p(z) per latent dim, from one sample z:
    -0.5 * ((z - mu)^2 exp(-logvar) + logvar) + 0.5 * z^2 (the log 2pi terms cancel), or
    with a prior N(prior_mu, exp(prior_logvar)) (None: 0) its
    ``+ 0.5 * ((z - prior_mu)^2 exp(-prior_logvar) + prior_logvar)`` for the last term."""
    dtype = result_dtype(z, mu, logvar, prior_mu, prior_logvar)
    z, mu, logvar = z.to(dtype), mu.to(dtype), logvar.to(dtype)
    t = (z - mu) * _inv_sd(logvar)
    tp = z - (0.0 if prior_mu is None else prior_mu.to(dtype))
    if prior_logvar is not None:
        prior_logvar = prior_logvar.to(dtype)
        tp = tp * _inv_sd(prior_logvar)
    value = 0.5 * (_square_difference(tp, t) - logvar)
    return value if prior_logvar is None else value + 0.5 * prior_logvar


def _square_difference(a, b):
    """``a^2 - b^2`` of finite or infinite ``a``, ``b``. Where a square of finite ``a``,
    ``b`` overflows (a sample far from a mean, |z| ~ 1e20 in float32: inf, or inf - inf =
    NaN) it is valued as ``(a - b)(a + b)``, which fits where the difference does, and
    differentiated as the squares, ``2a`` and ``-2b`` at every order (the product's own
    derivative, ``(a + b) +- (a - b)``, cancels where one of |a|, |b| is far below the
    other). Elsewhere it is the squares' difference, values and gradients."""
    squares = a * a - b * b
    far = ~torch.isfinite(squares) & torch.isfinite(a) & torch.isfinite(b)
    # the far branch sees 0 elsewhere, so that its masked backward never meets inf * 0
    a, b = torch.where(far, a, 0.0), torch.where(far, b, 0.0)
    a0, b0 = a.detach(), b.detach()
    da, db = a - a0, b - b0   # 0 in value; d/da 1
    # 2 * (da * a0), not da * (2 * a0): 2 * a0 overflows for a0 past half the largest float
    far_value = (a0 - b0) * (a0 + b0) + 2 * (da * a0) + da * da - 2 * (db * b0) - db * db
    return torch.where(far, far_value, squares)


def _free_bits(kl_bl: torch.Tensor, free_bits: float) -> torch.Tensor:
    """Per-sample KL with each latent dim's batch-mean KL clamped below at free_bits.

    A dim whose batch mean is below free_bits contributes the constant free_bits to
    every sample (no gradient); so the batch mean of the result is
    sum_l max(mean_b KL_bl, free_bits) (Kingma et al. 2016).
    """
    if free_bits <= 0 or kl_bl.shape[0] == 0:
        return kl_bl.sum(-1)
    below = kl_bl.mean(0, keepdim=True) < free_bits
    return torch.where(below, torch.full_like(kl_bl, free_bits), kl_bl).sum(-1)


def _stopped(estimator, mu, logvar):
    """log q's parameters as the estimator differentiates them (fastvae.estimators)."""
    if estimator is not None and estimators.stops_parameters(estimator):
        return mu.detach(), logvar.detach()
    return mu, logvar


def elbo(x, recon, mu, logvar, z, obs_logvar, *, likelihood, kl, beta, free_bits, reduction,
         prior_mu=None, prior_logvar=None, estimator="standard"):
    dtype = result_dtype(x, recon, mu, logvar, z, obs_logvar, prior_mu, prior_logvar)
    x, recon, obs_logvar = upcast(x, dtype), upcast(recon, dtype), upcast(obs_logvar, dtype)
    log_px = log_likelihood(x, recon, likelihood, obs_logvar)
    if beta == 0:   # no KL term, also where it overflows (not 0 * inf); a zero edge keeps
        # the latents in the graph (autograd.grad w.r.t. them: 0, not "unused")
        latents = [t for t in (mu, logvar, z, prior_mu, prior_logvar)
                   if isinstance(t, torch.Tensor)]
        return _reduce(log_px + sum((t * 0).sum(-1) for t in latents), reduction)
    if kl == "analytic":
        kl_bl = kl_normal_per_dim(mu, logvar, prior_mu, prior_logvar)
    else:  # STL stops log q's parameters only: log p(z) keeps the prior's and z's gradients
        kl_bl = mc_kl_per_dim(z, *_stopped(estimator, mu, logvar), prior_mu, prior_logvar)
    return _reduce(log_px - beta * _free_bits(kl_bl, free_bits), reduction)


def iwae_bound(x, recon_k, mu, logvar, z_k, obs_logvar, *, likelihood, reduction,
               estimator="standard", prior_mu=None, prior_logvar=None):
    value, weights = iwae_bound_surrogate(x, recon_k, mu, logvar, z_k, obs_logvar,
                                          likelihood=likelihood, reduction=reduction,
                                          estimator=estimator, prior_mu=prior_mu,
                                          prior_logvar=prior_logvar)
    if estimator == "dreg":
        estimators.attach_dreg_hook(value, z_k, weights)
    return value


def iwae_bound_surrogate(x, recon_k, mu, logvar, z_k, obs_logvar, *, likelihood, reduction,
                         estimator="standard", prior_mu=None, prior_logvar=None):
    """(the bound, the softmax weights w~ (K, B), detached): the bound's value with the
    estimator's gradients, except DReG's second weight on the paths into z_k (the hook
    of ``fastvae.estimators`` adds it). "stl": log q at stopped parameters (a learned
    prior's log p(z_k) is not stopped). "dreg":
    mmvae's surrogate ``sum_k w~_k log w_k`` with w~ held constant, on top of the value:
    the same first derivatives as STL, and its own higher ones."""
    dtype = result_dtype(x, recon_k, mu, logvar, z_k, obs_logvar, prior_mu, prior_logvar)
    x, recon_k, obs_logvar = upcast(x, dtype), upcast(recon_k, dtype), upcast(obs_logvar, dtype)
    k = recon_k.shape[0]
    # widened before they are repeated over the K samples: autograd sums the copies'
    # gradients in the copies' dtype, and 16-bit copies would round once per sample
    mu, logvar = _stopped(estimator, widened(mu), widened(logvar))

    def log_weights(recon_k, z_k):
        log_px = log_likelihood(x.expand_as(recon_k), recon_k, likelihood, obs_logvar)
        return log_px - mc_kl_per_dim(z_k, mu.expand_as(z_k), logvar.expand_as(z_k), prior_mu,
                                      prior_logvar).sum(-1)

    # A sample of weight exactly 0 adds 0 to every gradient: its partials can overflow (a
    # reconstruction far off at a vanishing variance), and autograd would weigh them
    # 0 * inf = NaN. Its log w is taken at the inputs as they are, without a gradient; the
    # differentiated one at x and mu in place of its recon and z, where every partial is
    # finite, and `where` gives its own inputs exactly 0.
    held = log_weights(recon_k, z_k).detach()
    weights = _softmax_weights(held)
    zero = weights == 0

    def per_sample(t):   # (K, B) -> broadcastable to a (K, B, ...) tensor
        return zero.reshape(zero.shape + (1,) * (t.dim() - 2))
    log_w = torch.where(zero, held, log_weights(torch.where(per_sample(recon_k), x, recon_k),
                                                torch.where(per_sample(z_k), mu, z_k)))
    lse = logsumexp(log_w, 0)
    if estimator == "dreg":
        surrogate = (weights * torch.where(zero, 0.0, log_w)).sum(0)
        # adds exactly 0 to the value; a row with a +inf log w (softmax's inf / inf: NaN)
        # keeps its +inf bound (its gradients are NaN, as on the fused backends)
        lse = torch.where(surrogate.isfinite(), lse.detach() + (surrogate - surrogate.detach()),
                          lse.detach())
    # log K as a tensor, rounded from float64 as math.log's would be (MPS has no float64:
    # float32 there): math.log of a symbolic K would make it a constant, a recompile for
    # each K under dynamic shapes
    log_k = torch.tensor(k, dtype=widest(lse.device), device=lse.device).log().to(lse.dtype)
    return _reduce(lse - log_k, reduction), weights


def _softmax_weights(log_w):
    """``softmax(log_w, 0)`` as :func:`logsumexp` weighs (``exp(log_w - max) / sum``), 0 where
    every ``log w`` is -inf (softmax: NaN); a NaN sum keeps its row's weights NaN."""
    e = (log_w - _shift(log_w, 0)).exp()
    total = e.sum(0, keepdim=True)
    return e / torch.where(total != 0, total, torch.ones_like(total))


_VMAP_RANDOMNESS = (
    "fastvae's samplers (reparameterize, sample_with_kl) draw eps, which torch.func's vmap "
    "refuses in its default randomness='error' mode, and so do jacfwd and hessian, built "
    "on it: pass randomness='same' or 'different' to vmap or jacfwd (hessian(f) is "
    "jacfwd(jacrev(f))); for a KL alone, fastvae.kl_normal(mu_q, logvar_q, mu_p, logvar_p) "
    "draws nothing")


def reparameterize(mu, logvar, n_samples, generator):
    shape = mu.shape if n_samples is None else (n_samples,) + tuple(mu.shape)
    # generator=None is left out: dynamo cannot trace randn(generator=...) on symbolic sizes.
    rng = {} if generator is None else {"generator": generator}
    try:
        eps = torch.randn(shape, device=mu.device, dtype=mu.dtype, **rng)
    except RuntimeError as e:
        # torch's words name vmap's flags, which torch.func.hessian has none of
        if "randomness error mode" not in str(e):
            raise
        raise RuntimeError(_VMAP_RANDOMNESS) from e
    dtype = result_dtype(mu, logvar)   # 16-bit: in float32 (and its gradients), rounded once
    z = upcast(mu, dtype) + torch.exp(0.5 * upcast(logvar, dtype)) * upcast(eps, dtype)
    return z.to(torch.promote_types(mu.dtype, logvar.dtype))


# -- discretized mixture of logistics -------------------------------------------------

DMOL_LOG_SCALE_MIN = -7.0


def dmol_split(params, channels: int):
    """(logit_probs (B, M, H, W), means, log_scales, coeffs (B, C, M, H, W) each) of the
    channels-first DMoL ``params``: ``[logit_probs | channel 0: means, log_scales, coeffs
    | channel 1: ... ]`` (NVAE's layout; C = 1 has no coeffs: None)."""
    b, _, h, w = params.shape
    per = 3 if channels == 3 else 2
    m = params.shape[1] // (1 + per * channels)
    rest = params[:, m:].reshape(b, channels, per * m, h, w)
    coeffs = rest[:, :, 2 * m:] if per == 3 else None
    return params[:, :m], rest[:, :, :m], rest[:, :, m:2 * m], coeffs


def discretized_logistic_mixture_log_prob(x, params, bits, reduction="none"):
    """log p(x) of the discretized mixture of logistics, summed per sample (no gradient to
    the discrete x). Each bin of width 2h, h = 1/(2^bits - 1), on the [-1, 1] scale:
    ``log F(y+h)`` at the bottom, ``log(1 - F(y-h))`` at the top, and in between
    ``log(F(y+h) - F(y-h)) = log F(y+h) + log(1 - F(y-h)) + log(1 - exp(-2h/s))``,
    an identity of the logistic CDF F that is finite wherever the bin's mass is."""
    dtype = result_dtype(x, params)
    x, params = x.detach().to(dtype), params.to(dtype)
    c = x.shape[1]
    n = 2 ** bits - 1
    logit_probs, means, log_scales, coeffs = dmol_split(params, c)
    log_scales = log_scales.clamp(min=DMOL_LOG_SCALE_MIN)
    k = torch.floor(x * n + 0.5).clamp(0, n)            # the bin decides the edges
    y = (2 * k / n - 1).unsqueeze(2)                     # (B, C, 1, H, W), snapped to the grid
    if c == 3:  # autoregressive over channels: m1 += c0*y0, m2 += c1*y0 + c2*y1
        t = torch.tanh(coeffs)
        means = torch.stack([means[:, 0], means[:, 1] + t[:, 0] * y[:, 0],
                             means[:, 2] + t[:, 1] * y[:, 0] + t[:, 2] * y[:, 1]], dim=1)
    inv_s = torch.exp(-log_scales)
    plus = inv_s * (y - means + 1.0 / n)
    minus = inv_s * (y - means - 1.0 / n)
    log_cdf_plus = F.logsigmoid(plus)                    # log F(y + h)
    log_sf_minus = F.logsigmoid(-minus)                  # log(1 - F(y - h))
    log_width = math.log(2.0 / n) - log_scales           # log(plus - minus), exact at any s
    width = torch.exp(log_width)
    # log(1 - exp(-w)) = log w + log((1 - exp(-w)) / w), the ratio 1 - w/2 + w^2/6 below
    # w = 1e-5 (the next term, w^3/24, is below float64's rounding there): the exact form's
    # gradient has 1/w^2, inf - inf where w is denormal. Each branch sees only its own w.
    big = width > 1e-5
    w_big = torch.where(big, width, torch.ones_like(width))
    w_small = torch.where(big, torch.zeros_like(width), width)
    log_gap = log_width + torch.log(torch.where(big, -torch.expm1(-w_big) / w_big,
                                                1 - w_small / 2 + w_small * w_small / 6))
    k = k.unsqueeze(2)
    log_bin = torch.where(k == 0, log_cdf_plus,
                          torch.where(k == n, log_sf_minus, log_cdf_plus + log_sf_minus + log_gap))
    log_px = logsumexp(torch.log_softmax(logit_probs, dim=1) + log_bin.sum(1), 1)
    return _reduce(log_px.sum((1, 2)), reduction)
