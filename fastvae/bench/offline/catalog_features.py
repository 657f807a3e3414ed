"""Catalog calls for switches and ops beyond the core likelihoods: the discretized
mixture of logistics (its own kernel, and the ELBO's latent-only launch, D = 0) and the
gradient estimators (the ELBO without direct mu/logvar gradients; the IWAE kernels'
STORE_WEIGHTS) and the learned prior (kl_normal, sample_with_kl, the PRIOR switches).
One call turns each switch on, at the benchmark shapes and one odd
shape, in the dtypes whose pointer types differ (see ``catalog.ci_calls``)."""
from __future__ import annotations

import itertools
from typing import Callable, Iterator, Tuple

import torch

import fastvae

from .stand_ins import DTYPES, empty, finish, run_in_mode, stand_in_latents

DMOL = "discretized_logistic_mixture"
# (B, C, H, W, M): the benchmark's RGB case, a grayscale one, an odd one
DMOL_SHAPES = ((64, 3, 32, 32, 10), (8, 1, 28, 28, 5), (3, 3, 5, 7, 3))


def dmol_calls() -> Iterator[Tuple[str, Callable]]:
    for (b, c, h, w, m), dname, mode in itertools.product(
            DMOL_SHAPES, ("fp32", "bf16"), ("train", "eval")):
        def call(b=b, c=c, h=h, w=w, m=m, dname=dname, mode=mode):
            xt, nt = DTYPES[dname]

            def fwd():
                x = empty((b, c, h, w), xt)
                params = empty((b, (10 if c == 3 else 3) * m, h, w), nt, mode != "eval")
                finish(fastvae.discretized_logistic_mixture_log_prob(
                    x, params, backend="triton", validate=False), mode, False)
            run_in_mode(mode, fwd)
        yield f"dmol B={b} C={c} {h}x{w} M={m} {dname} {mode}", call
    for dname, kl in (("fp32", "analytic"), ("bf16", "mc")):
        def elbo_call(dname=dname, kl=kl):
            xt, nt = DTYPES[dname]
            b, c, h, w, m = DMOL_SHAPES[0]
            x = empty((b, c, h, w), xt)
            params = empty((b, 10 * m, h, w), nt, True)
            mu, lv = stand_in_latents(b, 64, nt, True, False)
            z = empty((b, 64), nt, True) if kl == "mc" else None
            finish(fastvae.elbo(x, params, mu, lv, likelihood=DMOL, kl=kl, z=z,
                                backend="triton", validate=False), "train", False)
        yield f"elbo {DMOL} B=64 L=64 {dname} kl={kl} train", elbo_call


def estimator_calls(elbo_shapes, iwae_shapes) -> Iterator[Tuple[str, Callable]]:
    for (b, d, l), dname in itertools.product(elbo_shapes, ("fp32", "bf16")):
        def call(b=b, d=d, l=l, dname=dname):
            xt, nt = DTYPES[dname]
            mu, lv = stand_in_latents(b, l, nt, True, False)
            v = fastvae.elbo(empty((b, d), xt), empty((b, d), nt, True), mu, lv, kl="mc",
                             z=empty((b, l), nt, True), estimator="stl", backend="triton",
                             validate=False)
            finish(v, "train", False)
        yield f"elbo B={b} D={d} L={l} {dname} estimator=stl", call
    for (b, d, l, k), dname in itertools.product(iwae_shapes, ("fp32", "bf16")):
        def call(b=b, d=d, l=l, k=k, dname=dname):
            xt, nt = DTYPES[dname]
            mu, lv = stand_in_latents(b, l, nt, True, False)
            # "stl" and "dreg" launch the same specialization (weights stored)
            v = fastvae.iwae_bound(empty((b, d), xt), empty((k, b, d), nt, True), mu, lv,
                                   empty((k, b, l), nt, True), reduction="mean",
                                   estimator="stl", backend="triton", validate=False)
            finish(v, "train", False)
        yield f"iwae B={b} D={d} L={l} K={k} {dname} estimator=stl", call




def prior_calls(elbo_shapes, iwae_shapes) -> Iterator[Tuple[str, Callable]]:
    """The learned prior: kl_normal, sample_with_kl (its own kernels, forward and
    backward), and the PRIOR switches of the ELBO (analytic and MC KL, free bits' pass,
    with STL) and IWAE kernels; a per-latent (L,) prior and a per-sample (B, L) one."""
    for (b, l), dname, shared in itertools.product(((4096, 64), (7, 3)), ("fp32", "bf16"),
                                                   (False, True)):
        def kl_call(b=b, l=l, dname=dname, shared=shared):
            nt = DTYPES[dname][1]
            mu, lv = stand_in_latents(b, l, nt, True, False)
            if shared:  # one (L,) row: float32 per-row gradients for a bf16 one
                pm, plv = empty((l,), nt, True), empty((l,), nt, True)
            else:
                pm, plv = stand_in_latents(b, l, nt, True, False)
            finish(fastvae.kl_normal(mu, lv, pm, plv, backend="triton"), "train", False)
        prior = "L" if shared else "BL"
        yield f"kl_normal B={b} L={l} {dname} prior={prior} train", kl_call
        yield (f"sample_with_kl B={b} L={l} {dname} prior={prior} train",
               _sample_call((b, l), dname, prior))
    # a bf16 posterior beside a float32 prior: dKL/dmu_q saved in float32 for dmu_p
    yield ("sample_with_kl B=4096 L=64 bf16 prior=BL-fp32 train",
           _sample_call((4096, 64), "bf16", "BL", prior_dtype=torch.float32))
    # rows cut into column chunks (the SPLIT switch): the VDVAE loop's largest group, and an
    # odd row length (2 chunks, rows not a multiple of 16) without a prior
    for shape, dname, prior in (((16, 16, 64, 64), "fp32", "BL"), ((3, 5000), "fp32", None)):
        yield (f"sample_with_kl {shape} {dname} prior={prior} train",
               _sample_call(shape, dname, prior))
    for (b, d, l), dname, (kl, fb, est), per_sample in itertools.product(
            elbo_shapes, ("fp32", "bf16"),
            (("analytic", 0.0, "standard"), ("mc", 0.5, "standard"), ("mc", 0.0, "stl")),
            (False, True)):
        def elbo_call(b=b, d=d, l=l, dname=dname, kl=kl, fb=fb, est=est, per_sample=per_sample):
            xt, nt = DTYPES[dname]
            mu, lv = stand_in_latents(b, l, nt, True, False)
            shape = (b, l) if per_sample else (l,)
            v = fastvae.elbo(empty((b, d), xt), empty((b, d), nt, True), mu, lv, kl=kl,
                             z=empty((b, l), nt, True) if kl == "mc" else None, free_bits=fb,
                             estimator=est, prior_mu=empty(shape, nt, True),
                             prior_logvar=empty(shape, nt, True), backend="triton",
                             validate=False)
            finish(v, "train", False)
        yield (f"elbo B={b} D={d} L={l} {dname} kl={kl} fb={fb} estimator={est} "
               f"prior={'BL' if per_sample else 'L'}"), elbo_call
    for (b, d, l, k), dname, est in itertools.product(iwae_shapes, ("fp32", "bf16"),
                                                       ("standard", "stl")):
        def iwae_call(b=b, d=d, l=l, k=k, dname=dname, est=est):
            xt, nt = DTYPES[dname]
            mu, lv = stand_in_latents(b, l, nt, True, False)
            v = fastvae.iwae_bound(empty((b, d), xt), empty((k, b, d), nt, True), mu, lv,
                                   empty((k, b, l), nt, True), reduction="mean", estimator=est,
                                   prior_mu=empty((l,), nt, True),
                                   prior_logvar=empty((l,), nt, True), backend="triton",
                                   validate=False)
            finish(v, "train", False)
        yield f"iwae B={b} D={d} L={l} K={k} {dname} estimator={est} prior=L", iwae_call


def _sample_call(shape, dname, prior, prior_dtype=None):
    """One group: prior None (N(0, I)), "BL" (the posterior's shape) or "L" (one row)."""
    def call():
        nt = DTYPES[dname][1]
        mu, lv = empty(shape, nt, True), empty(shape, nt, True)
        pt = prior_dtype or nt
        p_shape = shape if prior == "BL" else shape[1:]
        pm, plv = (empty(p_shape, pt, True), empty(p_shape, pt, True)) if prior else (None, None)
        z, kl = fastvae.sample_with_kl(mu, lv, pm, plv, backend="triton")
        finish(z.sum() + kl.sum(), "train", False)
    return call


def int64_calls() -> Iterator[Tuple[str, Callable]]:
    """The two-pass IWAE kernel's INT64 switch at a small shape (the int32 limit lowered
    for the call: a real K*B*D > 2^31 would need tens of GB of stand-ins)."""
    from fastvae.backends.triton_backend import configs

    def call():
        xt, nt = DTYPES["fp32"]
        mu, lv = stand_in_latents(64, 32, nt, True, False)
        saved, configs.INT32_LIMIT = configs.INT32_LIMIT, 1000
        try:
            v = fastvae.iwae_bound(empty((64, 784), xt), empty((50, 64, 784), nt, True), mu,
                                   lv, empty((50, 64, 32), nt, True), reduction="mean",
                                   backend="triton", validate=False)
        finally:
            configs.INT32_LIMIT = saved
        finish(v, "train", False)
    yield "iwae B=64 D=784 L=32 K=50 fp32 INT64", call


def feature_calls(elbo_shapes, iwae_shapes):
    return [*dmol_calls(), *estimator_calls(elbo_shapes, iwae_shapes),
            *prior_calls(elbo_shapes, iwae_shapes), *int64_calls()]
