"""The public ops: validate once, pick the backend, call it.

Notation: batch ``B``, data dims flattened to ``D`` per sample, latent dims ``L``,
importance samples ``K``. Posterior ``q(z|x) = N(mu, diag(exp(logvar)))``, prior
``p(z) = N(0, I)``, or a learned ``N(prior_mu, diag(exp(prior_logvar)))`` where the op
takes one.

Dtypes: inputs may be float16, bfloat16, float32 or float64 (mixing is allowed, as
under autocast, but for the samplers' mu and logvar, which share one dtype, z's). Math
runs in float32 at least; results are float64 when any input
is float64, else float32; gradients come back in each input's dtype.
"""
from __future__ import annotations

import functools
import math

import torch

from . import estimators, ops, reference
from ._compiler import tracing_here
from ._dtypes import widened
from . import validation as V
from .dispatch import check_generator as _check_generator
from .dispatch import keep_route as _keep_route, route_taken as _route_taken
from .dispatch import run as _run
from .gaussians import kl_normal, sample_with_kl  # noqa: F401  (public here too)


def reparameterize(mu, logvar, n_samples=None, generator=None, backend=None, validate=None):
    r"""Draw ``z = mu + exp(0.5 * logvar) * eps`` with ``eps ~ N(0, I)``, differentiably.

    Args:
        mu, logvar: ``(B, L)`` posterior mean and log-variance, one dtype (z takes it).
        n_samples: ``None`` for one sample of shape ``(B, L)``; an int ``K >= 1`` for
            ``K`` samples stacked as ``(K, B, L)`` (the IWAE layout).
        generator: a ``torch.Generator`` to draw from; default the global one, so
            ``torch.manual_seed(s)`` makes the call reproducible.
        backend: "auto", "torch", "triton", "reference" or None (``FASTVAE_BACKEND``,
            else "auto").
        validate: check that mu and logvar are finite; None uses the global default
            set by :func:`fastvae.set_validation`. The checks read a value back to the
            host: not inside a CUDA graph capture (validate=False there).

    Gradients: ``dmu = dz``, ``dlogvar = dz * 0.5 * exp(0.5 * logvar) * eps``.
    Returns ``z`` in mu's dtype.
    """
    V.check_latents(mu, logvar)
    if mu.dtype != logvar.dtype:
        raise TypeError(f"mu and logvar must share a dtype, got {mu.dtype} and {logvar.dtype}")
    device = V.check_same_device(mu=mu, logvar=logvar)
    V.check_values(V.resolve_validate(validate), mu=mu, logvar=logvar)
    if n_samples is not None:
        # a tensor's dim, not a loop: any K whose (K, B, L) torch can hold
        n_samples = V.check_count("n_samples", n_samples, each=mu.shape[0] * mu.shape[1],
                                  limit=V.MAX_ELEMENTS)
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
    estimator="standard",
    *,
    bits=None,
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
            default set by :func:`fastvae.set_validation`. Not inside a CUDA graph
            capture (see :func:`reparameterize`).
        prior_mu, prior_logvar: a learned prior ``N(prior_mu, exp(prior_logvar))``
            instead of N(0, I): each None (0), a number, or a tensor broadcastable to
            mu's ``(B, L)`` (e.g. ``(L,)`` shared, or ``(B, L)`` from a conditional
            prior); tensors get gradients. The analytic KL becomes
            ``0.5 * sum_l (plv - lv + exp(lv - plv) + (mu - pm)^2 exp(-plv) - 1)``
            (:func:`kl_normal`), the "mc" one's ``log p(z)`` becomes
            ``-0.5 * sum_l ((z - pm)^2 exp(-plv) + plv)``; beta and free bits apply to it
            as to the N(0, I) KL. With ``estimator="stl"`` only log q's mu, logvar are
            stopped: log p(z) keeps its gradients w.r.t. the prior and z.
        estimator: the gradient estimator (the value is the same):
            ``"standard"``: the reparameterized gradient of the value;
            ``"stl"`` (sticking the landing, Roeder et al. 2017; needs ``kl="mc"``):
            ``log q(z|x)`` differentiated through z only, its parameters mu, logvar
            held fixed: no direct gradient w.r.t. mu and logvar, ``d/dz`` unchanged,
            so the encoder's gradient arrives through z (pass the z of
            :func:`reparameterize`). Unbiased; zero variance where q is the posterior.
        bits: ``"discretized_logistic_mixture"`` only: the data's bit depth, None for 8
            (see :func:`discretized_logistic_mixture_log_prob`, whose op computes
            log p(x|z) and its gradient in one pass; the latent part is this op with no
            data columns, and the two values add). Any other likelihood refuses a value.
        _scale: internal (the loss modules' sign, folded into the fused op so that its
            backward needs no extra pass); leave it at 1.

    ``likelihood="discretized_logistic_mixture"``: x is ``(B, C, H, W)`` on the
    ``bits`` grid and recon the mixture's parameters ``(B, 10*M, H, W)`` (C = 3) or
    ``(B, 3*M, H, W)`` (C = 1); M is read from recon's channel count.

    Returns the ELBO, to be maximized (``fastvae.ELBOLoss`` returns its negative).
    With ``reduction="sum"`` and the Bernoulli likelihood this is minus the
    pytorch/examples VAE ``loss_function`` written on logits (its BCE as
    ``binary_cross_entropy_with_logits``, as the README shows). The original's
    ``binary_cross_entropy`` of ``sigmoid(logits)`` agrees to the rounding of
    ``1 - sigmoid`` (in float32 already 0.16 nat off at a logit of 15 against x = 0);
    where the sigmoid rounds to 1 (logit past ~16.6) or 0 (below ~-88.7) its log is
    clamped at -100 and this is not.
    """
    # (no signature under torch.compile: the memo is off there, V.Checked)
    sig = None if torch.compiler.is_compiling() and tracing_here() else _elbo_signature(
        x, recon, mu, logvar, z, obs_logvar, prior_mu, prior_logvar, likelihood, kl, beta,
        free_bits, reduction, estimator, bits, backend, _scale)
    seen = _ELBO_CHECKED.get(sig)
    if type(seen) is ops.Route and _route_taken(seen, backend, validate, x.device):
        x2, r2 = V.data_rows(x, recon, mu.shape[0])
        return seen.function.apply(x2, r2, mu, logvar) if z is None else seen.function.apply(
            x2, r2, mu, logvar, z)
    if seen is not None:  # the checks below passed on these
        x2, r2 = V.data_rows(x, recon, mu.shape[0])
        obs = obs_logvar
        pm = plv = None
        device = x.device
    else:
        V.check_option("likelihood", likelihood, V.LIKELIHOODS)
        V.check_option("kl", kl, V.KL_MODES)
        V.check_option("reduction", reduction, V.REDUCTIONS)
        estimators.check_elbo(estimator, kl)
        beta = V.check_number("beta", beta, minimum=0.0)
        free_bits = V.check_number("free_bits", free_bits, minimum=0.0)
        bits = V.check_likelihood_bits(likelihood, bits)
        if likelihood == V.DMOL:
            return _dmol_elbo(x, recon, mu, logvar, kl, z, beta, free_bits, obs_logvar, bits,
                              reduction, backend, validate, _scale, estimator, prior_mu,
                              prior_logvar)
        batch, latent = V.check_latents(mu, logvar)
        x2, r2 = V.flatten_data(x, recon, batch)
        if kl == "mc":
            if z is None:
                raise ValueError("kl='mc' needs the sample z (B, L) it was estimated from")
            V.check_tensor("z", z)
            if z.shape != mu.shape:
                raise ValueError(f"z must have mu's shape {tuple(mu.shape)}, got "
                                 f"{tuple(z.shape)}")
        elif z is not None:
            raise ValueError("z is only used with kl='mc'; pass kl='mc' or drop z")
        if likelihood != "gaussian" and (isinstance(obs_logvar, torch.Tensor)
                                         or obs_logvar != 0.0):
            raise ValueError(f"obs_logvar is only used with likelihood='gaussian', not "
                             f"{likelihood!r}")
        obs = V.canonical_obs_logvar(obs_logvar, x.shape)
        pm = V.canonical_prior("prior_mu", prior_mu, mu, "mu", logvar)
        plv = V.canonical_prior("prior_logvar", prior_logvar, mu, "mu", logvar)
        device = V.check_same_device(x=x, recon=recon, mu=mu, logvar=logvar, z=z,
                                     obs_logvar=obs, prior_mu=pm, prior_logvar=plv)
        _ELBO_CHECKED.add(sig)
    if V.resolve_validate(validate):  # (off: not even the keyword dict, on every call)
        V.check_values(True, likelihood=likelihood, x=x2, recon=r2, mu=mu, logvar=logvar, z=z,
                       obs_logvar=obs_logvar, prior_mu=prior_mu, prior_logvar=prior_logvar)
    fn = _run(backend, device, "elbo")
    kwargs = dict(likelihood=likelihood, kl=kl, beta=beta, free_bits=free_bits, reduction=reduction,
                  prior_mu=pm, prior_logvar=plv, estimator=estimator)
    if isinstance(fn, functools.partial):  # fused: the sign rides along, so -ELBO's
        value = fn(x2, r2, mu, logvar, z, obs, scale=_scale, **kwargs)  # backward skips a pass
        # a signature seen again is a loop's: a route for its next calls
        _keep_route(_ELBO_CHECKED, sig, seen, fn, device, lambda: ops.elbo_route(
            x2, r2, mu, logvar, z, obs, likelihood=likelihood, kl=kl, beta=beta,
            free_bits=free_bits, reduction=reduction, backend=fn.keywords["backend"],
            scale=_scale, estimator=estimator))
        return value
    value = fn(x2, r2, mu, logvar, z, obs, **kwargs)
    return value if _scale == 1.0 else _scale * value


_ELBO_CHECKED = V.Checked()


def _elbo_signature(x, recon, mu, logvar, z, obs_logvar, prior_mu, prior_logvar, likelihood,
                    kl, beta, free_bits, reduction, estimator, bits, backend, scale):
    """Everything :func:`elbo`'s structural checks read (``V.Checked``), for the common call
    (plain tensors, a float obs_logvar, no prior), and what its route
    (``fastvae.ops.Route``) depends on besides: the tensors' layouts (``V.layouts``), the
    other arguments' values and the grad mode. None for any other call: checked every
    time."""
    if (type(obs_logvar) is not float or type(beta) is not float
            or type(free_bits) is not float or prior_mu is not None
            or prior_logvar is not None or type(likelihood) is not str
            or type(kl) is not str or type(reduction) is not str
            or type(estimator) is not str or bits is not None
            or not (backend is None or type(backend) is str) or type(scale) is not float):
        return None
    tensors = V.layouts(x, recon, mu, logvar, z)
    # a zero as its text: -0.0 == 0.0, and a route keeps its numbers' signs
    return None if tensors is None else (tensors, obs_logvar or str(obs_logvar), likelihood,
                                         kl, beta or str(beta), free_bits or str(free_bits),
                                         reduction, estimator, backend, scale or str(scale),
                                         torch.is_grad_enabled())


def kl_standard_normal(mu, logvar, backend=None, validate=None):
    r"""Per-sample analytic ``KL(N(mu, exp(logvar)) || N(0, I)) =
    0.5 * sum_l (mu^2 + exp(logvar) - 1 - logvar)``.

    mu, logvar: ``(B, L)`` (or ``(*, L)``); returns ``(B,)`` (or ``(*,)``): the sum runs
    over the last dim only, so ``(K, B, L)`` samples give ``(K, B)``. For ``(B, C, H, W)``
    latents, :func:`kl_normal` with a prior of 0.0, 0.0 sums every non-batch dim.
    Float64 when either input is, else float32. backend, validate: as in
    :func:`reparameterize`.
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
    n, l = math.prod(lead), mu.shape[-1]  # not reshape(-1, l): ambiguous when L == 0
    return fn(mu.reshape(n, l), logvar.reshape(n, l)).reshape(lead)


def gaussian_log_prob(x, mean, logvar, backend=None, validate=None):
    r"""``sum_d -0.5 * ((x - mean)^2 * exp(-logvar) + logvar + log(2*pi))`` over the last dim.

    x, mean: ``(*, D)``, the same shape; logvar: a float or a tensor broadcastable
    to x (it gets a gradient). Returns ``(*,)``, float64 when any input is, else float32.
    backend, validate: as in :func:`reparameterize`.
    """
    V.check_tensor("x", x)
    V.check_tensor("mean", mean)
    if x.dim() < 1 or mean.shape != x.shape:
        raise ValueError(
            f"x and mean must share a shape (*, D), got {tuple(x.shape)} and {tuple(mean.shape)}"
        )
    lead, d = x.shape[:-1], x.shape[-1]
    n = math.prod(lead)
    lv = V.canonical_obs_logvar(logvar, x.shape, row_dims=x.dim() - 1, name="logvar")
    device = V.check_same_device(x=x, mean=mean, logvar=lv)
    V.check_values(V.resolve_validate(validate), x=x, mean=mean, logvar=logvar)
    fn = _run(backend, device, "gaussian_log_prob")
    return fn(x.reshape(n, d), mean.reshape(n, d), lv).reshape(lead)


def iwae_bound(x, recon_k, mu, logvar, z_k, likelihood="bernoulli", obs_logvar=0.0,
               reduction="none", backend=None, validate=None, prior_mu=None, prior_logvar=None,
               estimator="standard", *, bits=None, _scale=1.0):
    r"""Importance-weighted bound (Burda et al. 2016) from K samples.

    ``log w_k = log p(x|z_k) + log p(z_k) - log q(z_k|x)``,
    ``L_K = logsumexp_k(log w_k) - log K``. K=1 is the Monte-Carlo ELBO; the gradient
    weights each sample by ``softmax_k(log w_k)``; ``-L_K`` with large K estimates
    the negative log-likelihood.

    Args:
        x: ``(B, *)``; recon_k: ``(K, B, *)`` decoder outputs for each z_k;
        mu, logvar: ``(B, L)``; z_k: ``(K, B, L)``.
        likelihood, obs_logvar, backend, validate, bits, _scale: as in :func:`elbo`,
            except that ``obs_logvar`` may also be one per sample: broadcastable to x,
            it is shared by the K samples (a learned constant); broadcastable to
            recon_k's ``(K, B, *)`` and not to x, sample k's is ``obs_logvar[k]`` (a
            decoder that outputs its variance). For ``"discretized_logistic_mixture"``
            recon_k is ``(K, B, 10*M, H, W)`` (RGB) or ``(K, B, 3*M, H, W)`` (gray).
        reduction: ``"none"`` (default, ``(B,)``), ``"mean"`` or ``"sum"``.
        prior_mu, prior_logvar: a learned prior for ``log p(z_k)``, as in :func:`elbo`
            (broadcastable to mu's ``(B, L)``, shared by the K samples). Under "stl" and
            "dreg" its gradients are the standard ones (``w~_k`` weighting); its
            ``d log p(z_k) / d z_k`` is part of ``d log w_k / d z_k`` (DReG's ``w~_k^2``).
        estimator: the gradient estimator; the value is the bound whatever it is.
            With ``w~_k = softmax_k(log w_k)``:
            ``"standard"``: the gradient of the bound, ``sum_k w~_k d log w_k``;
            ``"stl"``: the same with ``log q`` at stopped parameters (no direct
            gradient w.r.t. mu and logvar; the encoder's arrives through z_k).
            Biased for K > 1 (Tucker et al. 2018), unlike DReG;
            ``"dreg"`` (doubly reparameterized, Tucker et al. 2018): decoder gradients
            as "standard" (``w~_k`` weighting), encoder gradient
            ``sum_k w~_k^2 (d log w_k / d z_k)(d z_k / d phi)`` with log q at stopped
            parameters. Unbiased, and its signal-to-noise ratio decays far more slowly
            with K than the standard estimator's (which goes as 1/sqrt(K)).
            The second ``w~_k`` is a gradient hook this call registers on ``z_k``: in
            this bound's backward it multiplies *every* gradient reaching z_k (the
            decoder's path included) by ``w~_k``, so ``z_k.grad`` is
            ``w~_k^2 d log w_k / d z_k``. Draw z_k with :func:`reparameterize`, decode
            it, and pass the very tensor the decoder read (a copy, cast or view of it
            is refused: the decoder's gradient would go around the hook) for this bound
            alone (another loss on the same z_k in the same backward would be weighted
            too; a second DReG bound of it in that backward raises). Eager only: inside
            ``torch.compile(fullgraph=True)``, ``torch.func`` transforms, forward-mode
            AD and ``torch.jit.trace`` it raises (a compile with graph breaks runs the
            bound eagerly). Not with
            ``likelihood="discretized_logistic_mixture"``. Higher-order gradients
            (``create_graph=True``) differentiate the first-order DReG gradient with
            the weights ``w~_k`` held constant: a surrogate's, not the derivative of
            that gradient field.
            Under "stl" and "dreg" the encoder's gradient arrives through z_k alone: a
            z_k cut from mu, logvar (detached, or drawn under ``no_grad``) gives it none;
            "dreg" refuses one cut from samples that the decoder read uncut.
    """
    V.check_option("likelihood", likelihood, V.LIKELIHOODS)
    V.check_option("reduction", reduction, V.REDUCTIONS)
    estimators.check_iwae(estimator, likelihood)
    bits = V.check_likelihood_bits(likelihood, bits)
    if likelihood == V.DMOL:
        value = _dmol_iwae_bound(x, recon_k, mu, logvar, z_k, obs_logvar, bits, reduction,
                                 backend, validate, estimator, prior_mu, prior_logvar)
        return value if _scale == 1.0 else _scale * value
    batch, _ = V.check_latents(mu, logvar)
    k = V.check_samples(z_k, mu)
    x2, r2 = V.flatten_data(x, recon_k, batch, recon_name="recon_k", k=k)
    if likelihood != "gaussian" and (isinstance(obs_logvar, torch.Tensor) or obs_logvar != 0.0):
        raise ValueError(f"obs_logvar is only used with likelihood='gaussian', not {likelihood!r}")
    obs = V.canonical_iwae_obs_logvar(obs_logvar, x.shape, recon_k.shape)
    pm = V.canonical_prior("prior_mu", prior_mu, mu, "mu", logvar)
    plv = V.canonical_prior("prior_logvar", prior_logvar, mu, "mu", logvar)
    device = V.check_same_device(x=x, recon_k=recon_k, mu=mu, logvar=logvar, z_k=z_k,
                                 obs_logvar=obs, prior_mu=pm, prior_logvar=plv)
    V.check_values(V.resolve_validate(validate), likelihood=likelihood, x=x2,
                   recon_k=r2, mu=mu, logvar=logvar, z_k=z_k, obs_logvar=obs_logvar,
                   prior_mu=prior_mu, prior_logvar=prior_logvar)
    if estimator == "dreg":
        if ops.reference_only():
            raise RuntimeError("estimator='dreg' is not available under torch.func transforms, "
                               "forward-mode AD or torch.jit.trace: its second weight is a "
                               "gradient hook on z_k, which they do not run (a trace would "
                               "replay without it); use estimator='stl' or 'standard' there")
        estimators.check_dreg_graph(recon_k, z_k, mu, logvar)
    fn = _run(backend, device, "iwae_bound")
    kwargs = dict(likelihood=likelihood, reduction=reduction, prior_mu=pm, prior_logvar=plv,
                  estimator=estimator)
    if isinstance(fn, functools.partial):  # fused: the sign rides along (IWAELoss), so
        return fn(x2, r2, mu, logvar, z_k, obs, scale=_scale, **kwargs)  # no scaling pass
    value = fn(x2, r2, mu, logvar, z_k, obs, **kwargs)
    return value if _scale == 1.0 else _scale * value


def discretized_logistic_mixture_log_prob(x, params, bits=8, reduction="none", backend=None,
                                          validate=None):
    r"""Per-sample log-likelihood of images under a discretized mixture of logistics
    (PixelCNN++, NVAE), exactly normalized over the ``2^bits`` values of each channel.

    Args:
        x: ``(B, C, H, W)``, C = 1 or 3, values ``k / (2^bits - 1)`` in [0, 1] (checked
            when validation is on); the integer bin ``k = round(x (2^bits - 1))``
            decides the edge bins. No gradient flows to x. A dtype that cannot hold the
            grid is refused (float16 above 11 bits, bfloat16 above 8).
        params: NVAE's channels-first layout, M components: for C = 3 ``(B, 10*M, H,
            W)`` = ``[logit_probs | channel 0: means, log_scales, coeffs | channel 1:
            ... | channel 2: ...]`` (M each); for C = 1 ``(B, 3*M, H, W)`` =
            ``[logit_probs | means | log_scales]``.
        bits: bit depth of the data, 1..16; None for 8, as in :func:`elbo`.
        reduction: ``"none"`` (``(B,)``), ``"sum"`` or ``"mean"`` over the batch, reduced
            inside the fused op: ``op(..., reduction="sum")`` hands its backward a
            grad_output of 1, which touches no saved gradient, where ``op(...).sum()``
            scales the whole ``d/dparams`` by a ``(B,)`` tensor of ones.
        backend, validate: as in :func:`elbo`.

    On the [-1, 1] scale, ``y = 2k/(2^bits - 1) - 1``, ``h = 1/(2^bits - 1)``,
    ``s = max(log_scale, -7)`` (no gradient below the clamp), coefficients
    ``tanh(coeffs)``; means are autoregressive over channels: ``m0 = mean0``,
    ``m1 = mean1 + c0*y0``, ``m2 = mean2 + c1*y0 + c2*y1``. With
    ``u+- = exp(-s) (y - m +- h)`` a channel's log mass is ``log sigmoid(u+)`` in the
    bottom bin, ``log(1 - sigmoid(u-))`` in the top one and
    ``log(sigmoid(u+) - sigmoid(u-))`` between (in log space, finite wherever the value
    fits the dtype; -inf where it does not, as for a float32 mean past ~3e35), and
    ``log p(x) = sum_pixels logsumexp_m [log_softmax(logit_probs)_m + sum_c l_cm]``.

    Returns ``(B,)``, or a scalar when reduced (float32, float64 if an input is); its
    negation, the loss, is :class:`fastvae.DiscretizedLogisticMixtureNLLLoss`, which takes
    the sign inside the op as well. The fused backends compute the value and d/dparams in
    one pass with no ``B x C x M x H x W`` tensor (the CPU path chunk by chunk of
    pixels); gradients come back in params' dtype.
    """
    return _dmol(x, params, bits, reduction, 1.0, backend, validate)


def _dmol(x, params, bits, reduction, scale, backend, validate, params_name="params"):
    """``scale`` times the DMoL log-likelihood, reduced inside the fused op. Every caller
    comes here (the loss module too, whose reduction may be set after it was made)."""
    V.check_option("reduction", reduction, V.REDUCTIONS)
    V.check_dmol(x, params, params_name=params_name)
    bits = V.check_bits(bits)
    V.check_grid_dtype(x, bits, params_name)
    device = V.check_same_device(**{"x": x, params_name: params})
    V.check_dmol_values(V.resolve_validate(validate), x, bits, **{params_name: params})
    fn = _run(backend, device, "discretized_logistic_mixture_log_prob")
    if isinstance(fn, functools.partial):
        return fn(x, params, bits, reduction, scale=scale)
    value = fn(x, params, bits, reduction)
    return value if scale == 1.0 else scale * value


def _no_obs_logvar(obs_logvar):
    if isinstance(obs_logvar, torch.Tensor) or obs_logvar != 0.0:
        raise ValueError(f"obs_logvar is only used with likelihood='gaussian', not {V.DMOL!r}")


def _dmol_elbo(x, recon, mu, logvar, kl, z, beta, free_bits, obs_logvar, bits, reduction,
               backend, validate, scale, estimator="standard", prior_mu=None,
               prior_logvar=None):
    """The ELBO of a DMoL decoder as two fused ops whose values add: the DMoL op (log
    p(x|z), reduced and scaled, its gradient made in its forward) and the ELBO op on no
    data columns (the KL part: free bits, "mc", ...). Backward hands each a scalar
    grad_output, which at 1 touches no saved gradient."""
    _no_obs_logvar(obs_logvar)
    batch, _ = V.check_latents(mu, logvar)
    V.check_dmol(x, recon, params_name="recon")
    V.check_x_batch(x, batch)
    log_px = _dmol(x, recon, bits, reduction, scale, backend, validate, params_name="recon")
    no_data = x.new_zeros(batch, 0)
    latent = elbo(no_data, no_data, mu, logvar, kl=kl, z=z, beta=beta, free_bits=free_bits,
                  reduction=reduction, backend=backend, validate=validate,
                  prior_mu=prior_mu, prior_logvar=prior_logvar, estimator=estimator,
                  _scale=scale)
    return log_px + latent


def _dmol_iwae_bound(x, recon_k, mu, logvar, z_k, obs_logvar, bits, reduction, backend,
                     validate, estimator="standard", prior_mu=None, prior_logvar=None):
    """The IWAE bound of a DMoL decoder: log p(x|z_k) from the fused DMoL op (K*B rows,
    their gradients saved and weighed in place by softmax_k(log w_k) in backward), and
    ``log p(z_k) - log q(z_k|x)`` as the ELBO op's Monte-Carlo KL on the K*B rows (no data
    columns). ``estimator="stl"`` evaluates log q at stopped mu, logvar; DReG's gradient
    hook is not built for this likelihood (``estimators.check_iwae`` refuses it)."""
    _no_obs_logvar(obs_logvar)
    batch, _ = V.check_latents(mu, logvar)
    k = V.check_samples(z_k, mu)
    V.check_tensor("x", x)
    V.check_x_batch(x, batch)
    V.check_dmol(x, recon_k, params_name="recon_k", k=k)
    bits = V.check_bits(bits)
    V.check_grid_dtype(x, bits, "recon_k")
    if V.resolve_validate(validate):  # each input by its own name, before any is repeated
        V.check_dmol_values(True, x, bits, recon_k=recon_k)  # over the samples
        V.check_values(True, mu=mu, logvar=logvar, z_k=z_k, prior_mu=prior_mu,
                       prior_logvar=prior_logvar)
    x_k = x.expand(k, *x.shape).reshape(k * batch, *x.shape[1:])
    log_px = _dmol(x_k, recon_k.reshape(k * batch, *recon_k.shape[2:]), bits, "none", 1.0,
                   backend, False, params_name="recon_k").reshape(k, batch)
    # log p(z_k) - log q(z_k|x) as the ELBO op's latent part on K*B rows with no data
    # columns (the MC KL, its squares' difference as (tp - t)(tp + t): two log densities
    # overflow to inf - inf for a sample far from both means; STL stops log q's mu,
    # logvar only). The latents' parameters are repeated over the K samples, each widened
    # first, so that a gradient summed over the copies is float32 and rounds to a 16-bit
    # input's dtype once.
    def rows(t):   # (B, L) or (L,) -> (K*B, L) or (L,); L spelled: -1 cannot size B = 0
        t = widened(t)
        if t is None or t.dim() == 1:
            return t
        return t.expand(k, *t.shape).reshape(k * batch, t.shape[-1])

    pm = rows(V.canonical_prior("prior_mu", prior_mu, mu, "mu", logvar))
    plv = rows(V.canonical_prior("prior_logvar", prior_logvar, mu, "mu", logvar))
    no_data = x.new_zeros(k * batch, 0, dtype=torch.float32)
    log_pz_qz = elbo(no_data, no_data, rows(mu), rows(logvar), kl="mc",
                     z=widened(z_k).reshape(k * batch, z_k.shape[-1]), reduction="none",
                     backend=backend, validate=False, prior_mu=pm, prior_logvar=plv,
                     estimator=estimator)
    bound = reference.logsumexp(log_px + log_pz_qz.reshape(k, batch), 0) - math.log(k)
    if reduction == "none":
        return bound
    total = bound.sum()
    return total if reduction == "sum" else total / max(batch, 1)
