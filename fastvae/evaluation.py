"""Evaluation of a trained VAE: the test ELBO and its parts, and the IWAE NLL estimate;
also one training batch's loss and its logged parts (:func:`batch_loss`,
:func:`batch_terms`), shared by the training loop and ``fastvae eval``.

Each evaluation draws from its own fixed generator, so the numbers are comparable across
epochs and the training RNG is untouched.
"""
from __future__ import annotations

import math

import torch

import fastvae

from . import dmol_training as dmol, objectives
from ._dtypes import to_widest, widened
from .progress import progress_bar

__all__ = ["batch_loss", "batch_terms", "summarize", "evaluate", "iwae_nll", "nll_fields",
           "nll_text"]


def _core(model):
    """The plain VAE under DDP / torch.compile wrappers."""
    while hasattr(model, "module") or hasattr(model, "_orig_mod"):
        model = getattr(model, "module", None) or model._orig_mod
    return model


def batch_loss(model, x, cfg: dict):
    """The loss (batch mean, what we minimize) of one forward pass through ``model``
    (possibly DDP- or compile-wrapped), and the pieces for logging (:func:`batch_terms`):
    ``-ELBO``, or ``-L_K`` with ``--objective iwae`` (:func:`fastvae.objectives.loss`)."""
    return objectives.loss(model, _core(model), x, cfg)


@torch.no_grad()
def batch_terms(core, x, parts, backend) -> torch.Tensor:
    """A batch's summed reconstruction term ``log p(x|z)``, analytic KL and, for a
    hierarchical model, each group's KL: ``[rec, kl, kl_1, ..., kl_G]`` on x's device, in
    its widest dtype (float64; float32 on MPS), as the sums over batches are carried.
    A recon of K samples each, ``(K, B, ...)``: rec is the mean over all K, as the K-sample
    objectives average them (at beta 1, a K-sample ELBO's loss is then -(rec - kl))."""
    if getattr(core, "hierarchical", False):
        _, rec, kl = parts
        return to_widest(torch.cat([torch.stack([rec.sum(), kl.sum()]), kl.sum(1)]))
    recon, mu, logvar = (t.detach() for t in parts)
    kl = fastvae.kl_standard_normal(widened(mu), widened(logvar), backend=backend).sum()
    k = recon.shape[0] if recon.dim() > x.dim() else 1
    if k > 1:   # each image once per sample, in recon's flattened order
        x, mu, logvar = (objectives.repeat_rows(t, k) for t in (x, mu, logvar))
        recon = recon.flatten(0, 1)
    rec = fastvae.elbo(x, recon, mu, logvar, likelihood=core.likelihood, beta=0.0,
                       obs_logvar=core._obs(), reduction="sum", backend=backend) / k
    return to_widest(torch.stack([rec, kl]))


def summarize(sums: torch.Tensor, n: float) -> dict:
    """Per-sample means of :func:`batch_terms`' sums: rec, kl and, where there are groups,
    ``kl_groups`` (top group first)."""
    m = {"rec": sums[0].item() / n, "kl": sums[1].item() / n}
    if sums.numel() > 2:
        m["kl_groups"] = [v / n for v in sums[2:].tolist()]
    return m


@torch.no_grad()
def evaluate(core, images: torch.Tensor, cfg: dict, device, batch_size: int = 512) -> dict:
    """Mean test ELBO (beta = 1, analytic KL), KL and reconstruction term, per sample.

    Uses its own fixed generator, so the numbers are comparable across epochs and the
    training RNG is untouched.
    """
    was = core.training
    core.eval()
    gen = torch.Generator(device=device).manual_seed(cfg["seed"] + 2)
    sums = 0
    try:
        # an empty set is one empty batch: its sums are zeros of the right length
        for i in range(0, max(1, len(images)), batch_size):
            x = images[i:i + batch_size].to(device)
            out = core(x, generator=gen, backend=cfg["backend"])
            if getattr(core, "hierarchical", False):
                parts = (out[0], core.log_px(x, out[0], cfg["backend"]), out[1])
            else:
                parts = out[:3]
            sums = sums + batch_terms(core, x, parts, cfg["backend"])
    finally:
        core.train(was)
    m = summarize(sums, max(1, len(images)))
    return dmol.add_bpd({"elbo": m["rec"] - m["kl"], **m}, core)


@torch.no_grad()
def iwae_nll(core, images: torch.Tensor, k: int, device, seed: int, batch_size: int = 256,
             backend=None, progress: bool = False) -> float:
    """Mean importance-sampled NLL estimate over ``images`` with ``k`` samples each, its ops
    on ``backend`` (a run's ``cfg["backend"]``, as :func:`evaluate` uses). ``progress``: a
    bar on a terminal's stderr (an hvae at K = 1000 takes about a minute on 2 cores)."""
    was = core.training
    core.eval()
    gen = torch.Generator(device=device).manual_seed(seed + 3)
    total = 0.0
    bar = None
    try:
        if progress:
            bar = progress_bar(len(images), f"IWAE NLL (K={k})", "image", terminal_only=True)
        for i in range(0, len(images), batch_size):
            batch = images[i:i + batch_size]
            total += float(core.iwae_nll(batch.to(device), k, generator=gen,
                                         backend=backend).sum())
            if bar is not None:
                bar.update(len(batch))
    finally:
        core.train(was)
        if bar is not None:
            bar.close()
    return total / max(1, len(images))


# what makes the mean of the per-image estimates -log mean_k w_k NaN or inf, by its value
_NOT_FINITE = {
    "inf": "every one of the K log-weights of some test image is -inf (its likelihood "
           "estimate is 0)",
    "-inf": "a log-weight overflowed to +inf",
    "nan": "a log-weight is NaN, or one image's estimate is +inf and another's -inf",
}


def nll_fields(key: str, nll) -> dict:
    """``{key: nll}`` for a JSON record, plus ``key + "_not_finite"`` (``"nan"``, ``"inf"``
    or ``"-inf"``) where the estimate is not finite: the JSON writer turns NaN and inf into
    null, which alone would read as "not computed" (``--k 0``)."""
    if nll is None or math.isfinite(nll):
        return {key: nll}
    return {key: nll, key + "_not_finite": str(nll)}


def nll_text(nll: float, k: int, digits: int) -> str:
    """``IWAE NLL (K=5) 31.42 nats`` for a log line or, where the estimate is NaN or inf,
    that it is not and what makes it so; the ELBO, from other draws, is not affected."""
    if math.isfinite(nll):
        return f"IWAE NLL (K={k}) {nll:.{digits}f} nats"
    return (f"IWAE NLL (K={k}) is not finite ({nll}): {_NOT_FINITE[str(nll)]}; the test elbo "
            "does not depend on it")
