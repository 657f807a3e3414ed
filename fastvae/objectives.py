"""The training objectives of ``fastvae train``: the ELBO averaged over K samples, or the
importance-weighted bound with K samples, each with its gradient estimator
(``objective``, ``k``, ``estimator`` in the config; checked by
:func:`fastvae.options.check_objective`)."""
from __future__ import annotations

import fastvae

from ._dtypes import widened
from .options import check_hierarchical


def repeat_rows(t, k: int):
    """``t`` (B, ...) repeated for each of K samples: (K * B, ...), sample-major as
    ``recon_k.flatten(0, 1)``."""
    return t.expand(k, *t.shape).reshape(k * t.shape[0], *t.shape[1:])


def loss(model, core, x, cfg: dict):
    """The loss (batch mean, what we minimize) of one forward pass through ``model`` (``core``
    unwrapped from DDP / compile), and (recon, mu, logvar) for logging, recon ``(K, B,
    ...)`` where K > 1 (:func:`fastvae.evaluation.batch_terms` averages its K samples).

    ``objective`` "elbo": ``-ELBO``, averaged over ``k`` samples per example (Burda et
    al.'s k-sample VAE baseline); "iwae": ``-L_k``. The gradient is the ``estimator``'s
    (:func:`fastvae.iwae_bound`); K = 1 with the ELBO is the single-sample path as before.
    A hierarchical model (``--model hvae``): its ELBO, ``log p(x|z) - beta * sum of the
    groups' KLs``, and (recon, log p(x|z), the groups' KLs) for logging.
    """
    if getattr(core, "hierarchical", False):  # ELBO = log p(x|z) - sum of the groups' KLs
        check_hierarchical(cfg)   # (the command refuses them first)
        recon, kl = model(x, backend=cfg["backend"])
        rec = core.log_px(x, recon, cfg["backend"])
        return -(rec - cfg["beta"] * kl.sum(0)).mean(), (recon, rec, kl)
    k, objective = cfg.get("k", 1), cfg.get("objective", "elbo")
    estimator = cfg.get("estimator", "standard")
    # _scale=-1: the loss computed inside the fused op (as ELBOLoss, IWAELoss do), so
    # backward gets a grad_output of 1 and no pass to negate every gradient
    common = dict(likelihood=core.likelihood, obs_logvar=core._obs(), reduction="mean",
                  backend=cfg["backend"], estimator=estimator, _scale=-1.0)
    if objective == "elbo" and k == 1:
        recon, mu, logvar, z = model(x, backend=cfg["backend"])
        e = fastvae.elbo(x, recon, mu, logvar, kl=cfg["kl"], z=z if cfg["kl"] == "mc" else None,
                         beta=cfg["beta"], **common)
        return e, (recon, mu, logvar)
    recon_k, mu, logvar, z_k = model(x, backend=cfg["backend"], n_samples=k)
    if objective == "iwae":
        return fastvae.iwae_bound(x, recon_k, mu, logvar, z_k, **common), (recon_k, mu, logvar)
    # mu and logvar widened before they are repeated: their gradients' sums over the K
    # copies round to a 16-bit dtype once (fastvae._dtypes.widened)
    e = fastvae.elbo(repeat_rows(x, k), recon_k.flatten(0, 1), repeat_rows(widened(mu), k),
                     repeat_rows(widened(logvar), k), kl=cfg["kl"],
                     z=z_k.flatten(0, 1) if cfg["kl"] == "mc" else None, beta=cfg["beta"],
                     **common)
    return e, (recon_k, mu, logvar)


def describe(cfg: dict) -> str:
    """``elbo``, ``iwae K=5 dreg``, ...: the objective and its estimator, for the log."""
    k, estimator = cfg.get("k", 1), cfg.get("estimator", "standard")
    return (cfg.get("objective", "elbo") + (f" K={k}" if k > 1 else "")
            + (f" {estimator}" if estimator != "standard" else ""))
