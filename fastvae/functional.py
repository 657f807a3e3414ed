"""The public ops: validate once, pick the backend, call it.

Notation: batch ``B``, data dims flattened to ``D`` per sample, latent dims ``L``,
importance samples ``K``. Posterior ``q(z|x) = N(mu, diag(exp(logvar)))``, prior
``p(z) = N(0, I)``, or a learned ``N(prior_mu, diag(exp(prior_logvar)))`` where the op
takes one.

Dtypes: inputs may be float16, bfloat16, float32 or float64 (mixing is allowed, as
under autocast). Math runs in float32 at least; results are float64 when any input
is float64, else float32; gradients come back in each input's dtype.
"""
from __future__ import annotations

import functools

import torch

from . import backends, ops, reference
from . import validation as V



def _run(backend, device, op: str):
    """The function that computes ``op``: the reference for "reference", and under a
    ``torch.func`` transform (whose every order and batching rule autograd-built math
    has), else the fused op of the selected backend."""
    name = backends.select(backend, device)
    if ops.functorch_active():
        name = "reference"
    backends.mark_used(name)
    if name == "reference":
        return getattr(reference, op)
    return functools.partial(getattr(ops, op), backend=name)


def _check_generator(generator, device) -> None:
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
    if generator is not None and generator.device.type != device.type:
        raise ValueError(f"generator is on {generator.device}, tensors on {device}")


def reparameterize(mu, logvar, n_samples=None, generator=None, backend=None, validate=None):
    r"""Draw ``z = mu + exp(0.5 * logvar) * eps`` with ``eps ~ N(0, I)``, differentiably.

    Args:
        mu, logvar: ``(B, L)`` posterior mean and log-variance.
        n_samples: ``None`` for one sample of shape ``(B, L)``; an int ``K >= 1`` for
            ``K`` samples stacked as ``(K, B, L)`` (the IWAE layout).
        generator: a ``torch.Generator`` to draw from; default the global one, so
            ``torch.manual_seed(s)`` makes the call reproducible.
        backend: "auto", "torch", "triton", "reference" or None (``FASTVAE_BACKEND``,
            else "auto").
        validate: check that mu and logvar are finite; None uses the global default
            set by :func:`fastvae.set_validation`.

    Gradients: ``dmu = dz``, ``dlogvar = dz * 0.5 * exp(0.5 * logvar) * eps``.
    Returns ``z`` in mu's dtype.
    """
    V.check_latents(mu, logvar)
    if mu.dtype != logvar.dtype:
        raise TypeError(f"mu and logvar must share a dtype, got {mu.dtype} and {logvar.dtype}")
    device = V.check_same_device(mu=mu, logvar=logvar)
    V.check_values(V.resolve_validate(validate), mu=mu, logvar=logvar)
    if n_samples is not None:
        n_samples = int(V.check_number("n_samples", n_samples, minimum=1, integer=True))
    _check_generator(generator, device)
    return _run(backend, device, "reparameterize")(mu, logvar, n_samples, generator)


def elbo(
    x,
    recon,
    mu,
    logvar,
    likelihood="bernoulli",
    kl="analytic",
    z=None,
    beta=1.0,
    free_bits=0.0,
    obs_logvar=0.0,
    reduction="mean",
    backend=None,
    validate=None,
    prior_mu=None,
    prior_logvar=None,
    *,
    _scale=1.0,
):
    r"""The evidence lower bound, ``log p(x|z) - beta * KL``, per sample then reduced.

    Args:
        x: data ``(B, *)``, any trailing shape (flattened to ``D`` per sample).
        recon: decoder output, x's shape: logits for "bernoulli" and
            "continuous_bernoulli", the mean for "gaussian".
        mu, logvar: ``(B, L)`` encoder outputs.
        likelihood:
            ``"bernoulli"``: ``log p(x|z) = sum_d x*l - softplus(l)``, x in [0, 1];
            ``"gaussian"``: ``sum_d -0.5 * ((x-m)^2 * exp(-s) + s + log(2*pi))`` with
            ``s = obs_logvar``;
            ``"continuous_bernoulli"``: the Bernoulli term plus
            ``log C(l) = log 2 + log(u / tanh u)``, ``u = l/2`` (exact at large |l|).
        kl: ``"analytic"``: ``0.5 * sum_l (mu^2 + exp(logvar) - 1 - logvar)``;
            ``"mc"``: the single-sample estimate ``log q(z|x) - log p(z) =
            sum_l -0.5 * ((z-mu)^2 * exp(-logvar) + logvar) + 0.5 * z^2`` (needs ``z``).
        z: ``(B, L)`` sample used for ``kl="mc"`` (e.g. from :func:`reparameterize`).
        beta: weight of the KL term (beta-VAE), a float >= 0.
        free_bits: nats per latent dim: each dim's KL, averaged over the batch, is
            clamped below at ``free_bits`` (Kingma et al. 2016). A clamped dim adds the
            constant ``free_bits`` to every sample's KL term and passes no gradient.
        obs_logvar: observation log-variance for "gaussian": a float, or a tensor
            broadcastable to x (per dimension, or full); it gets a gradient.
        reduction: ``"mean"`` (batch average; 0 for an empty batch), ``"sum"`` or
            ``"none"`` (shape ``(B,)``).
        backend: see :func:`reparameterize`.
        validate: run the value checks (x range, finiteness); None uses the global
            default set by :func:`fastvae.set_validation`.
        prior_mu, prior_logvar: a learned prior ``N(prior_mu, exp(prior_logvar))``
            instead of N(0, I): each None (0), a number, or a tensor broadcastable to
            mu's ``(B, L)`` (e.g. ``(L,)`` shared, or ``(B, L)`` from a conditional
            prior); tensors get gradients. The analytic KL becomes
            ``0.5 * sum_l (plv - lv + exp(lv - plv) + (mu - pm)^2 exp(-plv) - 1)``
            (:func:`kl_normal`), the "mc" one's ``log p(z)`` becomes
            ``-0.5 * sum_l ((z - pm)^2 exp(-plv) + plv)``; beta and free bits apply to it
            as to the N(0, I) KL.

    Returns the ELBO, to be maximized (``fastvae.ELBOLoss`` returns its negative).
    With ``reduction="sum"`` and the Bernoulli likelihood this is exactly minus the
    pytorch/examples VAE ``loss_function``.
    """
    V.check_option("likelihood", likelihood, V.LIKELIHOODS)
    V.check_option("kl", kl, V.KL_MODES)
    V.check_option("reduction", reduction, V.REDUCTIONS)
    beta = V.check_number("beta", beta, minimum=0.0)
    free_bits = V.check_number("free_bits", free_bits, minimum=0.0)
    batch, latent = V.check_latents(mu, logvar)
    x2, r2 = V.flatten_data(x, recon, batch)
    if kl == "mc":
        if z is None:
            raise ValueError("kl='mc' needs the sample z (B, L) it was estimated from")
        V.check_tensor("z", z)
        if z.shape != mu.shape:
            raise ValueError(f"z must have mu's shape {tuple(mu.shape)}, got {tuple(z.shape)}")
    elif z is not None:
        raise ValueError("z is only used with kl='mc'; pass kl='mc' or drop z")
    if likelihood != "gaussian" and (isinstance(obs_logvar, torch.Tensor) or obs_logvar != 0.0):
        raise ValueError(f"obs_logvar is only used with likelihood='gaussian', not {likelihood!r}")
    obs = V.canonical_obs_logvar(obs_logvar, x.shape)
    pm = V.canonical_prior("prior_mu", prior_mu, mu, "mu")
    plv = V.canonical_prior("prior_logvar", prior_logvar, mu, "mu")
    device = V.check_same_device(x=x, recon=recon, mu=mu, logvar=logvar, z=z, obs_logvar=obs,
                                 prior_mu=pm, prior_logvar=plv)
    V.check_values(V.resolve_validate(validate), likelihood=likelihood, x=x2,
                   recon=r2, mu=mu, logvar=logvar, z=z, obs_logvar=obs, prior_mu=pm,
                   prior_logvar=plv)
    fn = _run(backend, device, "elbo")
    kwargs = dict(likelihood=likelihood, kl=kl, beta=beta, free_bits=free_bits, reduction=reduction,
                  prior_mu=pm, prior_logvar=plv)
    if isinstance(fn, functools.partial):  # fused: the sign rides along, so -ELBO's
        return fn(x2, r2, mu, logvar, z, obs, scale=_scale, **kwargs)  # backward skips a pass
    value = fn(x2, r2, mu, logvar, z, obs, **kwargs)
    return value if _scale == 1.0 else _scale * value


def kl_standard_normal(mu, logvar, backend=None, validate=None):
    r"""Per-sample analytic ``KL(N(mu, exp(logvar)) || N(0, I)) =
    0.5 * sum_l (mu^2 + exp(logvar) - 1 - logvar)``.

    mu, logvar: ``(B, L)`` (or ``(*, L)``); returns ``(B,)`` (or ``(*,)``).
    """
    V.check_tensor("mu", mu)
    V.check_tensor("logvar", logvar)
    if mu.dim() < 1 or logvar.shape != mu.shape:
        raise ValueError(
            f"mu and logvar must share a shape (*, L), got {tuple(mu.shape)} and {tuple(logvar.shape)}"
        )
    device = V.check_same_device(mu=mu, logvar=logvar)
    V.check_values(V.resolve_validate(validate), mu=mu, logvar=logvar)
    lead = mu.shape[:-1]
    fn = _run(backend, device, "kl_standard_normal")
    n, l = lead.numel(), mu.shape[-1]  # not reshape(-1, l): ambiguous when L == 0
    return fn(mu.reshape(n, l), logvar.reshape(n, l)).reshape(lead)


def gaussian_log_prob(x, mean, logvar, backend=None, validate=None):
    r"""``sum_d -0.5 * ((x - mean)^2 * exp(-logvar) + logvar + log(2*pi))`` over the last dim.

    x, mean: ``(*, D)``, the same shape; logvar: a float or a tensor broadcastable
    to x (it gets a gradient). Returns ``(*,)``.
    """
    V.check_tensor("x", x)
    V.check_tensor("mean", mean)
    if x.dim() < 1 or mean.shape != x.shape:
        raise ValueError(
            f"x and mean must share a shape (*, D), got {tuple(x.shape)} and {tuple(mean.shape)}"
        )
    lead, d = x.shape[:-1], x.shape[-1]
    n = lead.numel()
    lv = V.canonical_obs_logvar(logvar, x.shape, row_dims=x.dim() - 1, name="logvar")
    device = V.check_same_device(x=x, mean=mean, logvar=lv)
    V.check_values(V.resolve_validate(validate), x=x, mean=mean, logvar=lv)
    fn = _run(backend, device, "gaussian_log_prob")
    return fn(x.reshape(n, d), mean.reshape(n, d), lv).reshape(lead)


def iwae_bound(x, recon_k, mu, logvar, z_k, likelihood="bernoulli", obs_logvar=0.0,
               reduction="none", backend=None, validate=None, prior_mu=None, prior_logvar=None):
    r"""Importance-weighted bound (Burda et al. 2016) from K samples.

    ``log w_k = log p(x|z_k) + log p(z_k) - log q(z_k|x)``,
    ``L_K = logsumexp_k(log w_k) - log K``. K=1 is the Monte-Carlo ELBO; the gradient
    weights each sample by ``softmax_k(log w_k)``; ``-L_K`` with large K estimates
    the negative log-likelihood.

    Args:
        x: ``(B, *)``; recon_k: ``(K, B, *)`` decoder outputs for each z_k;
        mu, logvar: ``(B, L)``; z_k: ``(K, B, L)``.
        likelihood, obs_logvar, backend, validate: as in :func:`elbo`.
        reduction: ``"none"`` (default, ``(B,)``), ``"mean"`` or ``"sum"``.
        prior_mu, prior_logvar: a learned prior for ``log p(z_k)``, as in :func:`elbo`
            (broadcastable to mu's ``(B, L)``, shared by the K samples).
    """
    V.check_option("likelihood", likelihood, V.LIKELIHOODS)
    V.check_option("reduction", reduction, V.REDUCTIONS)
    batch, latent = V.check_latents(mu, logvar)
    V.check_tensor("z_k", z_k)
    if z_k.dim() != 3 or z_k.shape[1:] != mu.shape or z_k.shape[0] < 1:
        raise ValueError(
            f"z_k must have shape (K, {batch}, {latent}) with K >= 1, got {tuple(z_k.shape)}"
        )
    k = z_k.shape[0]
    x2, r2 = V.flatten_data(x, recon_k, batch, recon_name="recon_k", k=k)
    if likelihood != "gaussian" and (isinstance(obs_logvar, torch.Tensor) or obs_logvar != 0.0):
        raise ValueError(f"obs_logvar is only used with likelihood='gaussian', not {likelihood!r}")
    obs = V.canonical_obs_logvar(obs_logvar, x.shape)
    pm = V.canonical_prior("prior_mu", prior_mu, mu, "mu")
    plv = V.canonical_prior("prior_logvar", prior_logvar, mu, "mu")
    device = V.check_same_device(x=x, recon_k=recon_k, mu=mu, logvar=logvar, z_k=z_k,
                                 obs_logvar=obs, prior_mu=pm, prior_logvar=plv)
    V.check_values(V.resolve_validate(validate), likelihood=likelihood, x=x2,
                   recon_k=r2, mu=mu, logvar=logvar, z_k=z_k, obs_logvar=obs, prior_mu=pm,
                   prior_logvar=plv)
    fn = _run(backend, device, "iwae_bound")
    return fn(x2, r2, mu, logvar, z_k, obs, likelihood=likelihood, reduction=reduction,
              prior_mu=pm, prior_logvar=plv)


def _gaussians(mu_q, logvar_q, mu_p, logvar_p, validate):
    """Checked ``(B, *)`` posterior flattened to ``(B, N)``, its prior in canonical form
    (None, ``(N,)`` or ``(B, N)``), and the device."""
    V.check_tensor("mu_q", mu_q)
    V.check_tensor("logvar_q", logvar_q)
    if mu_q.dim() < 1 or logvar_q.shape != mu_q.shape:
        raise ValueError(f"mu_q and logvar_q must share a shape (B, *), got {tuple(mu_q.shape)} "
                         f"and {tuple(logvar_q.shape)}")
    pm = V.canonical_prior("mu_p", mu_p, mu_q, "mu_q")
    plv = V.canonical_prior("logvar_p", logvar_p, mu_q, "mu_q")
    device = V.check_same_device(mu_q=mu_q, logvar_q=logvar_q, mu_p=pm, logvar_p=plv)
    V.check_values(V.resolve_validate(validate), mu_q=mu_q, logvar_q=logvar_q, mu_p=pm,
                   logvar_p=plv)
    b, n = mu_q.shape[0], mu_q.shape[1:].numel()  # not reshape(b, -1): ambiguous when B == 0
    return mu_q.reshape(b, n), logvar_q.reshape(b, n), pm, plv, device


def kl_normal(mu_q, logvar_q, mu_p, logvar_p, backend=None, validate=None):
    r"""Per-sample ``KL(N(mu_q, exp(logvar_q)) || N(mu_p, exp(logvar_p)))`` between diagonal
    Gaussians, summed over every non-batch dimension:

    ``0.5 * sum (lv_p - lv_q + exp(lv_q - lv_p) + (d * exp(-lv_p / 2))^2 - 1)``,
    ``d = mu_q - mu_p`` (the stable forms: float32 at log-variances of +-80 stays finite
    wherever the KL is). With ``mu_p = logvar_p = 0`` it is :func:`kl_standard_normal`.

    Args:
        mu_q, logvar_q: ``(B, *)`` posterior (any shape, e.g. ``(B, C, H, W)`` latents).
        mu_p, logvar_p: the prior: numbers, or tensors broadcastable to mu_q's shape
            (their gradients are summed over the broadcast dimensions).
        backend, validate: as in :func:`reparameterize`.

    Gradients: ``dKL/dmu_q = d exp(-lv_p) = -dKL/dmu_p``, ``dKL/dlogvar_q =
    0.5 (exp(lv_q - lv_p) - 1)``, ``dKL/dlogvar_p = 0.5 (1 - exp(lv_q - lv_p) - d^2
    exp(-lv_p))``. Returns ``(B,)``, float64 when any input is, else float32.
    """
    mu2, lv2, pm, plv, device = _gaussians(mu_q, logvar_q, mu_p, logvar_p, validate)
    return _run(backend, device, "kl_normal")(mu2, lv2, pm, plv)


def sample_with_kl(mu_q, logvar_q, mu_p=None, logvar_p=None, generator=None, backend=None,
                   validate=None):
    r"""Draw ``z = mu_q + exp(0.5 * logvar_q) * eps`` and compute
    ``KL(N(mu_q, exp(logvar_q)) || N(mu_p, exp(logvar_p)))`` per sample, in one fused op:
    the per-group step of a hierarchical VAE (one launch forward, one backward on the
    Triton backend).

    Args:
        mu_q, logvar_q: ``(B, *)`` posterior, one dtype.
        mu_p, logvar_p: the prior, as in :func:`kl_normal`; both None (the default) is
            N(0, I).
        generator, backend, validate: as in :func:`reparameterize`.

    Seeds: eps is drawn exactly as :func:`reparameterize` draws it on the same backend
    (``torch.randn`` of mu_q's shape on "torch" and "reference"; on "triton" one int64
    Philox seed from ``torch.randint`` and the same counter layout, element by element
    in the row-major order of mu_q), so after ``torch.manual_seed(s)`` (or with equally
    seeded generators) ``z`` equals ``reparameterize(mu_q.flatten(1),
    logvar_q.flatten(1)).reshape(mu_q.shape)`` bit for bit.

    Gradients: ``dmu_q = dz + g_kl dKL/dmu_q``, ``dlogvar_q = 0.5 dz exp(logvar_q/2) eps +
    g_kl dKL/dlogvar_q``, the prior's from the KL alone (:func:`kl_normal`), where
    ``g_kl`` is the KL's grad_output. No noise tensor is saved on "triton" (eps is
    regenerated from the seed in backward).

    Returns ``(z, kl)``: ``z`` in mu_q's shape and dtype, ``kl`` ``(B,)`` (float64 when
    any input is, else float32).
    """
    if mu_q.dtype != logvar_q.dtype:
        raise TypeError(f"mu_q and logvar_q must share a dtype, got {mu_q.dtype} and "
                        f"{logvar_q.dtype}")
    mu2, lv2, pm, plv, device = _gaussians(mu_q, logvar_q, mu_p, logvar_p, validate)
    _check_generator(generator, device)
    z, kl = _run(backend, device, "sample_with_kl")(mu2, lv2, pm, plv, generator)
    return z.reshape(mu_q.shape), kl
