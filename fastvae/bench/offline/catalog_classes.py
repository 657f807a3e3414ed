"""The "classes" tier: every op's launch classes, for a register and spill audit.

The "ci" tier compiles the benchmark shapes and a cover of the rest; what decides a
kernel's registers is its launch class, which a cover by code shape can miss: the dtypes,
the likelihood and obs_logvar layout, which inputs need gradients, the KL mode, free
bits, a learned prior, rows aligned to 16 elements or not (D = 7, 30, 100 beside 784:
Triton specializes an int argument on divisibility by 16), int32 or int64 offsets (the
host's limit lowered, ``stand_ins.int32_limit_lowered``), and each latent block (L = 3,
32, 70). This tier is their product per op, at B = 64 (a multiple of 16, so an aligned
launch gets the vector check). Thousands of specializations: compile one kernel at a time,

    python -m fastvae.bench.offline compile --tier classes --kernel elbo_rows_kernel
    PYTHONPATH=.triton36 python -m fastvae.bench.offline compile --tier classes \\
        --kernel iwae_bound_onepass_kernel --json onepass36.json

(tens of minutes each on two cores, per Triton). A spill found here is fixed where the
launch class is decided (``configs``, ``iwae_configs``, ``register_caps``) and its call
joins the ci tier (``catalog.ci_calls``), which CI compiles.
"""
from __future__ import annotations

import itertools
from typing import Callable, Iterator, List, Tuple

import fastvae

from . import catalog
from .catalog import MODES, elbo_calls, iwae_calls
from .catalog_features import sample_call
from .stand_ins import (DTYPES, empty, finish, int32_limit_lowered, run_in_mode,
                        stand_in_latents, stand_in_obs, stand_in_prior)

TIERS = (*catalog.TIERS, "classes")

B = 64
# rows not aligned to 16 (each a column block of 16, 32, 64) and aligned ones
ROWS = (7, 30, 100, 784)
LATENTS = (3, 32, 70)
# the likelihoods whose code differs: Bernoulli, continuous Bernoulli, and the Gaussian's
# obs_logvar as a number, a learned (D,) row and a learned (B, D) tensor
LIKELIHOODS = (("bernoulli", "", False), ("continuous_bernoulli", "", False),
               ("gaussian", "float", False), ("gaussian", "D", True),
               ("gaussian", "BD", True))
BOTH_INT = (False, True)
PAIR_DTYPES = ("fp32", "bf16")
# 16-bit pointers of another type, and autocast's fp32 data beside bf16 outputs
OTHER_DTYPES = ("fp16", "amp-bf16")


def tier_calls(tier: str) -> List[Tuple[str, Callable]]:
    """The calls of a tier: this module's "classes", or ``catalog.tier_calls``'s."""
    return class_calls() if tier == "classes" else catalog.tier_calls(tier)


def class_calls() -> List[Tuple[str, Callable]]:
    return [*elbo_class_calls(), *iwae_class_calls(), *kl_class_calls(),
            *gaussian_log_prob_class_calls(), *dmol_class_calls(), *sampler_class_calls()]


def elbo_class_calls() -> Iterator[Tuple[str, Callable]]:
    shapes = [(B, d, l) for d in ROWS for l in LATENTS]
    every = list(itertools.product(("analytic", "mc"), ("mean",), (0.0,), MODES))
    yield from elbo_calls(shapes, PAIR_DTYPES, every, (False, True), LIKELIHOODS,
                          int64=BOTH_INT)
    yield from elbo_calls(shapes, OTHER_DTYPES, (("mc", "mean", 0.0, "train"),
                                                 ("analytic", "mean", 0.0, "eval")),
                          likelihoods=LIKELIHOODS)
    # free bits' pass and a learned prior (its own gradients) with reduction "none"
    yield from elbo_calls(shapes, PAIR_DTYPES,
                          list(itertools.product(("analytic", "mc"), ("none",), (0.5,),
                                                 ("train", "eval"))),
                          likelihoods=(LIKELIHOODS[0], LIKELIHOODS[4]), priors=("L", "BL"),
                          int64=BOTH_INT)


def iwae_class_calls() -> Iterator[Tuple[str, Callable]]:
    """K = 2, 5 (one-pass, pairs), 9, 16 (two-pass, pairs), 50 (two-pass, sample warps);
    D = 300 beside ``ROWS``: the pair kernel's rows (D = 700 goes elsewhere)."""
    shapes = [(B, d, l, k) for d in ROWS[:3] + (300, 784) for l in LATENTS
              for k in (2, 5, 9, 16, 50)]
    every = (("mean", "train"), ("mean", "train-z"), ("mean", "train+x"), ("none", "eval"))
    yield from iwae_calls(shapes, PAIR_DTYPES, every, LIKELIHOODS, int64=BOTH_INT)
    yield from iwae_calls(shapes, OTHER_DTYPES, (("mean", "train"), ("none", "eval")),
                          LIKELIHOODS)
    yield from iwae_calls(shapes, PAIR_DTYPES, (("mean", "train"),),
                          (LIKELIHOODS[0], LIKELIHOODS[4]), priors=("L", "BL"), int64=BOTH_INT)
    # the weights stored (STL and DReG launch the same kernels)
    yield from iwae_calls(shapes, PAIR_DTYPES, (("mean", "train"),), LIKELIHOODS[:1],
                          estimators=("dreg",))
    # the row-warp kernel's every K by every column layout (CI compiles a cross of them)
    yield from catalog.row_warps_calls(product=True)


def kl_class_calls() -> Iterator[Tuple[str, Callable]]:
    """kl_standard_normal and kl_normal (the row kernel on tiles of their own): separate
    rows and the halves of one (B, 2L) output (a base pointer off 16 bytes at odd L)."""
    grads = ("both", "mu", "logvar", "eval")
    for l, dname, g, chunk, wide in itertools.product(
            (3, 30, 32, 70, 784), ("fp32", "bf16", "fp16"), grads, (False, True), BOTH_INT):
        if chunk and g in ("mu", "logvar"):
            continue   # the halves of one output need a gradient or neither does

        def call(l=l, dname=dname, g=g, chunk=chunk, wide=wide):
            nt = DTYPES[dname][1]
            mu, lv = _latents(l, nt, g, chunk)
            with int32_limit_lowered(wide):
                v = fastvae.kl_standard_normal(mu, lv, backend="triton", validate=False)
            finish(v, "eval" if g == "eval" else "train", False)
        yield _label("kl_standard_normal", l, dname, g, chunk, None, wide), _in_mode(g, call)
    for l, dname, g, chunk, prior, wide in itertools.product(
            (3, 30, 32, 70), PAIR_DTYPES, ("both", "eval"), (False, True),
            ("number", "L", "BL"), BOTH_INT):
        def call(l=l, dname=dname, g=g, chunk=chunk, prior=prior, wide=wide):
            nt = DTYPES[dname][1]
            mu, lv = _latents(l, nt, g, chunk)
            pm, plv = stand_in_prior(prior, B, l, nt, g != "eval")
            with int32_limit_lowered(wide):
                v = fastvae.kl_normal(mu, lv, pm, plv, backend="triton", validate=False)
            finish(v, "eval" if g == "eval" else "train", False)
        yield _label("kl_normal", l, dname, g, chunk, prior, wide), _in_mode(g, call)


def _latents(l, dt, grads, chunk):
    """mu, logvar needing the gradients ``grads`` names; chunked: the halves of one
    output that needs one (or not, "eval")."""
    if chunk:
        return stand_in_latents(B, l, dt, grads != "eval", True)
    return (empty((B, l), dt, grads in ("both", "mu")),
            empty((B, l), dt, grads in ("both", "logvar")))


def _label(op, l, dname, grads, chunk, prior, wide) -> str:
    return (f"{op} N={B} L={l} {dname} grads={grads}{' chunked' if chunk else ''}"
            f"{catalog.label_tail(prior, wide)}")


def _in_mode(grads, call):
    return lambda: run_in_mode("eval" if grads == "eval" else "train", call)


def gaussian_log_prob_class_calls() -> Iterator[Tuple[str, Callable]]:
    for d, dname, layout, mode, wide in itertools.product(
            ROWS + (3000,), ("fp32", "bf16", "fp16"), ("float", "D", "BD", "BD-fixed"),
            MODES, BOTH_INT):
        def call(d=d, dname=dname, layout=layout, mode=mode, wide=wide):
            dt = DTYPES[dname][1]
            train = mode != "eval"

            def fwd():
                lv = stand_in_obs(layout.split("-")[0], train and "fixed" not in layout, B, d)
                with int32_limit_lowered(wide):
                    v = fastvae.gaussian_log_prob(empty((B, d), dt, mode == "train+x"),
                                                  empty((B, d), dt, train), lv,
                                                  backend="triton", validate=False)
                finish(v, mode, False)
            run_in_mode(mode, fwd)
        yield (f"gaussian_log_prob N={B} D={d} {dname} logvar={layout} {mode}"
               f"{catalog.label_tail(wide=wide)}"), call


def dmol_class_calls() -> Iterator[Tuple[str, Callable]]:
    """The mixture: grayscale and RGB, odd and aligned images, each component tile."""
    for c, (h, w), m, dname, mode, wide in itertools.product(
            (1, 3), ((5, 7), (8, 8), (32, 32)), (3, 10, 20, 40), PAIR_DTYPES,
            ("train", "eval"), BOTH_INT):
        def call(c=c, h=h, w=w, m=m, dname=dname, mode=mode, wide=wide):
            xt, nt = DTYPES[dname]

            def fwd():
                params = empty((4, (10 if c == 3 else 3) * m, h, w), nt, mode != "eval")
                with int32_limit_lowered(wide):
                    v = fastvae.discretized_logistic_mixture_log_prob(
                        empty((4, c, h, w), xt), params, backend="triton", validate=False)
                finish(v, mode, False)
            run_in_mode(mode, fwd)
        yield f"dmol B=4 C={c} {h}x{w} M={m} {dname} {mode}{catalog.label_tail(wide=wide)}", call


def sampler_class_calls() -> Iterator[Tuple[str, Callable]]:
    """reparameterize (one draw and K) and sample_with_kl (each prior, each use of its
    outputs in the loss, a frozen posterior half), every dtype."""
    yield from catalog.reparameterize_calls([(B, l, k) for l in LATENTS
                                             for k in (None, 1, 5, 16)])
    for shape, dname, prior, (use, grads) in itertools.product(
            ((B, 3), (B, 32), (B, 70), (16, 16, 8, 8), (3, 5000)), ("fp32", "bf16", "fp16"),
            (None, "L", "BL"), (("both", ("mu", "lv")), ("z", ("mu", "lv")),
                                ("kl", ("mu", "lv")), ("both", ("mu",)))):
        yield (f"sample_with_kl {shape} {dname} prior={prior} use={use} "
               f"grads={'+'.join(grads)}", sample_call(shape, dname, prior, use=use, grads=grads))
