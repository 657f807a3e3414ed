"""Catalog calls for switches and ops beyond the core likelihoods: the discretized
mixture of logistics (its own kernel, and the ELBO's latent-only launch, D = 0) and the
gradient estimators (the ELBO without direct mu/logvar gradients; the IWAE kernels'
STORE_WEIGHTS) and the learned prior (kl_normal, sample_with_kl, the PRIOR switches), and
IWAE's per-sample obs_logvar.
One call turns each switch on, at the benchmark shapes and one odd
shape, in the dtypes whose pointer types differ (see ``catalog.ci_calls``)."""
from __future__ import annotations

import itertools
from typing import Callable, Iterator, Tuple

import torch

import fastvae

from .stand_ins import (DTYPES, empty, finish, int32_limit_lowered, run_in_mode,
                        stand_in_latents)

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
               sample_call((b, l), dname, prior))
    # a bf16 posterior beside a float32 prior: dKL/dmu_q saved in float32 for dmu_p
    yield ("sample_with_kl B=4096 L=64 bf16 prior=BL-fp32 train",
           sample_call((4096, 64), "bf16", "BL", prior_dtype=torch.float32))
    # rows cut into column chunks (the SPLIT switch): the VDVAE loop's largest group, and an
    # odd row length (2 chunks, rows not a multiple of 16) without a prior
    for shape, dname, prior in (((16, 16, 64, 64), "fp32", "BL"), ((3, 5000), "fp32", None)):
        yield (f"sample_with_kl {shape} {dname} prior={prior} train",
               sample_call(shape, dname, prior))
    for (b, d, l), dname, (kl, fb, est), per_sample in itertools.product(
            elbo_shapes, ("fp32", "bf16"),
            (("analytic", 0.0, "standard"), ("mc", 0.5, "standard"), ("mc", 0.0, "stl")),
            (False, True)):
        yield prior_elbo_call((b, d, l), dname, kl, fb, est, per_sample)
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


def prior_elbo_call(shape, dname, kl, fb, est, per_sample, likelihood="bernoulli"):
    """(label, call): an ELBO's training with a learned prior, per latent or per sample."""
    b, d, l = shape

    def call():
        xt, nt = DTYPES[dname]
        mu, lv = stand_in_latents(b, l, nt, True, False)
        p_shape = (b, l) if per_sample else (l,)
        v = fastvae.elbo(empty((b, d), xt), empty((b, d), nt, True), mu, lv,
                         likelihood=likelihood, kl=kl,
                         z=empty((b, l), nt, True) if kl == "mc" else None, free_bits=fb,
                         estimator=est, prior_mu=empty(p_shape, nt, True),
                         prior_logvar=empty(p_shape, nt, True), backend="triton",
                         validate=False)
        finish(v, "train", False)
    lik = "" if likelihood == "bernoulli" else f" {likelihood}"
    return (f"elbo B={b} D={d} L={l} {dname}{lik} kl={kl} fb={fb} estimator={est} "
            f"prior={'BL' if per_sample else 'L'}"), call


def sample_call(shape, dname, prior, prior_dtype=None, use="both", grads=("mu", "lv")):
    """One group: prior None (N(0, I)), "BL" (the posterior's shape) or "L" (one row);
    ``use``: what the loss takes ("both", "z" alone: no KL gradient, "kl" alone: no dz);
    ``grads``: which posterior tensors need one (a frozen half: a NEED_* switch off)."""
    def call():
        nt = DTYPES[dname][1]
        mu, lv = empty(shape, nt, "mu" in grads), empty(shape, nt, "lv" in grads)
        pt = prior_dtype or nt
        p_shape = shape if prior == "BL" else shape[1:]
        pm, plv = (empty(p_shape, pt, True), empty(p_shape, pt, True)) if prior else (None, None)
        z, kl = fastvae.sample_with_kl(mu, lv, pm, plv, backend="triton")
        finish({"both": z.sum() + kl.sum(), "z": z.sum(), "kl": kl.sum()}[use], "train", False)
    return call


def int64_calls() -> Iterator[Tuple[str, Callable]]:
    """The INT64 switches at small shapes (:func:`stand_ins.int32_limit_lowered`)."""
    def call():
        xt, nt = DTYPES["fp32"]
        mu, lv = stand_in_latents(64, 32, nt, True, False)
        with int32_limit_lowered():
            v = fastvae.iwae_bound(empty((64, 784), xt), empty((50, 64, 784), nt, True), mu,
                                   lv, empty((50, 64, 32), nt, True), reduction="mean",
                                   backend="triton", validate=False)
        finish(v, "train", False)
    yield "iwae B=64 D=784 L=32 K=50 fp32 INT64", call
    # every other kernel with the switch (none of them was compiled with INT64=True): the
    # ELBO row kernel and free bits' pass (MC KL, learned prior), the pair kernel, the
    # mixture's, and the row kernel as kl_standard_normal and gaussian_log_prob run it
    lowered = [
        ("elbo B=64 D=784 L=32 bf16 kl=mc fb=0.5 prior=BL INT64",
         lambda: _elbo(64, 784, 32, "bf16", kl="mc", free_bits=0.5, prior="BL")),
        # the INT64 latent step (32 x 64 x 32, configs.ELBO_INT64_BLOCK_L): its 16-byte loads
        ("elbo B=64 D=784 L=64 bf16 kl=mc INT64", lambda: _elbo(64, 784, 64, "bf16", kl="mc")),
        ("iwae B=64 D=784 L=32 K=5 bf16 (pairs) INT64",
         lambda: _iwae(64, 784, 32, 5, "bf16")),
        ("dmol B=4 C=3 8x8 M=10 bf16 INT64",
         lambda: finish(fastvae.discretized_logistic_mixture_log_prob(
             empty((4, 3, 8, 8), torch.bfloat16), empty((4, 100, 8, 8), torch.bfloat16, True),
             backend="triton", validate=False), "train", False)),
        ("kl_standard_normal N=64 L=32 bf16 INT64",
         lambda: finish(fastvae.kl_standard_normal(*stand_in_latents(64, 32, torch.bfloat16,
                                                                       True, False),
                                                   backend="triton", validate=False),
                        "train", False)),
        # rows of a (B, 2L) output: half the fp32 tile's rows, the cap (configs.kl_config)
        ("kl_normal N=64 L=30 fp32 prior=BL INT64",
         lambda: finish(fastvae.kl_normal(*stand_in_latents(64, 30, torch.float32, True, True),
                                          empty((64, 30), torch.float32, True),
                                          empty((64, 30), torch.float32, True),
                                          backend="triton", validate=False),
                        "train", False)),
        ("gaussian_log_prob N=64 D=784 bf16 logvar=BD INT64",
         lambda: finish(fastvae.gaussian_log_prob(
             empty((64, 784), torch.bfloat16), empty((64, 784), torch.bfloat16, True),
             empty((64, 784), torch.float32, True), backend="triton", validate=False),
             "train", False))]
    for label, fn in lowered:
        def lowered_call(fn=fn):
            with int32_limit_lowered():
                fn()
        yield label, lowered_call


def _elbo(b, d, l, dname, likelihood="bernoulli", kl="analytic", free_bits=0.0, prior=None,
          grads=("recon", "mu", "lv"), x_dtype=None):
    """A training ELBO: ``grads`` names the inputs that need a gradient; ``x_dtype`` x's
    dtype where it differs from the network outputs' (the host sizes the tile by x's)."""
    xt, nt = DTYPES[dname]
    xt = x_dtype or xt
    mu, lv = empty((b, l), nt, "mu" in grads), empty((b, l), nt, "lv" in grads)
    shape = (b, l) if prior == "BL" else (l,)
    pm, plv = ((empty(shape, nt, True), empty(shape, nt, True)) if prior in ("BL", "L")
               else (prior, prior) if prior is not None else (None, None))
    obs = empty((b, d), torch.float32, True) if likelihood == "gaussian" else 0.0
    v = fastvae.elbo(empty((b, d), xt, "x" in grads), empty((b, d), nt, "recon" in grads), mu,
                     lv, likelihood=likelihood, kl=kl,
                     z=empty((b, l), nt, "z" in grads) if kl == "mc" else None,
                     free_bits=free_bits, obs_logvar=obs, prior_mu=pm, prior_logvar=plv,
                     backend="triton", validate=False)
    finish(v, "train", False)


def _iwae(b, d, l, k, dname, likelihood="bernoulli", grads=("recon", "mu", "lv", "z")):
    xt, nt = DTYPES[dname]
    mu, lv = empty((b, l), nt, "mu" in grads), empty((b, l), nt, "lv" in grads)
    v = fastvae.iwae_bound(empty((b, d), xt), empty((k, b, d), nt, "recon" in grads), mu, lv,
                           empty((k, b, l), nt, "z" in grads), likelihood=likelihood,
                           reduction="mean", backend="triton", validate=False)
    finish(v, "train", False)


def iwae_rows_edge_calls() -> Iterator[Tuple[str, Callable]]:
    """Two-pass IWAE specializations at the edge of spilling (4-8 bytes at 64-96 registers
    in a coverage audit): a 64 x 16 tile at B = 1 with a (B, L) prior mean beside a number
    log-variance, pure bf16 with a (B, 1) prior at INT64, and the continuous Bernoulli's
    fp32 recon at L = 64 with d/dx (DReG), a number prior, bf16 x and fp16 mu at INT64
    (``iwae_configs.IWAE_ROWS_FULL_LATENTS_ELEMENTS``)."""
    F32, BF16, F16 = torch.float32, torch.bfloat16, torch.float16

    def run(b, d, l, k, lik, est, red, dts, prior, int64):
        xdt, rdt, mdt, ldt, zdt = dts
        x = empty((b, d), xdt, est == "dreg")
        mu, lv = empty((b, l), mdt, True), empty((b, l), ldt, True)
        if est == "dreg":   # recon_k a function of z_k
            z_k = empty((k, b, l), zdt, True)
            recon_k = (z_k @ empty((l, d), zdt)).to(rdt)
        else:
            z_k, recon_k = empty((k, b, l), zdt, True), empty((k, b, d), rdt, True)
        with int32_limit_lowered(int64):
            v = fastvae.iwae_bound(x, recon_k, mu, lv, z_k, likelihood=lik, reduction=red,
                                   estimator=est, prior_mu=prior[0], prior_logvar=prior[1],
                                   backend="triton", validate=False)
        finish(v if red != "none" else v.sum(), "train", False)

    yield ("iwae B=1 D=7 L=3 K=5000 amp-bf16 estimator=stl prior=(B,L)+number",
           lambda: run(1, 7, 3, 5000, "bernoulli", "stl", "none", (F32,) + (BF16,) * 4,
                       (empty((1, 3), F32, True), 0.5), False))
    yield ("iwae B=2 D=64 L=8 K=5000 bf16 prior=B1 INT64",
           lambda: run(2, 64, 8, 5000, "bernoulli", "standard", "sum", (BF16,) * 5,
                       (empty((2, 1), BF16, True), empty((2, 1), BF16, True)), True))
    yield ("iwae B=2 D=256 L=64 K=32 continuous_bernoulli bf16-x fp32-recon estimator=dreg "
           "prior=number INT64",
           lambda: run(2, 256, 64, 32, "continuous_bernoulli", "dreg", "mean",
                       (BF16, F32, F16, F32, F32), (0.3, -0.2), True))


def switch_calls() -> Iterator[Tuple[str, Callable]]:
    """Switch values no other catalog call turns on, one call each (what an audit of the
    public API's option space found uncompiled): sample_with_kl with only z or only the
    KL in the loss (HAS_GKL, HAS_DZ off) and with one posterior tensor frozen (NEED_GMU,
    NEED_GLV off); the mixture's 32- and 64-component tiles (M = 20, 40); the ELBO and
    IWAE with a frozen decoder (no recon gradient) or a frozen encoder (no latent ones);
    a 16-bit x beside fp32 network outputs (the tile is sized by x's dtype); a number as
    the prior of a 16-bit posterior (an fp32 prior row)."""
    for use, grads in (("z", ("mu", "lv")), ("kl", ("mu", "lv")), ("both", ("mu",)),
                       ("both", ("lv",))):
        yield (f"sample_with_kl B=4096 L=64 bf16 prior=BL use={use} grads={'+'.join(grads)}",
               sample_call((4096, 64), "bf16", "BL", use=use, grads=grads))
    for m, dname in itertools.product((20, 40), ("fp32", "bf16")):
        def dmol_call(m=m, dname=dname):
            xt, nt = DTYPES[dname]
            finish(fastvae.discretized_logistic_mixture_log_prob(
                empty((64, 3, 32, 32), xt), empty((64, 10 * m, 32, 32), nt, True),
                backend="triton", validate=False), "train", False)
        yield f"dmol B=64 C=3 32x32 M={m} {dname} train", dmol_call
    for lik, dname in itertools.product(("bernoulli", "continuous_bernoulli", "gaussian"),
                                        ("fp32", "bf16")):
        yield (f"elbo B=4096 D=784 L=32 {dname} {lik} frozen decoder",
               lambda lik=lik, dname=dname: _elbo(4096, 784, 32, dname, lik, grads=("mu", "lv")))
        yield (f"elbo B=4096 D=784 L=32 {dname} {lik} frozen encoder",
               lambda lik=lik, dname=dname: _elbo(4096, 784, 32, dname, lik, grads=("recon",)))
        yield (f"elbo B=4096 D=784 L=32 {lik} bf16 x, fp32 outputs",
               lambda lik=lik: _elbo(4096, 784, 32, "fp32", lik, x_dtype=torch.bfloat16))
    for (b, d, l, k), dname in itertools.product(((4096, 784, 32, 5), (4096, 784, 32, 50),
                                                   (64, 64, 8, 4)), ("fp32", "bf16")):
        yield (f"iwae B={b} D={d} L={l} K={k} {dname} frozen decoder",
               lambda b=b, d=d, l=l, k=k, dname=dname: _iwae(b, d, l, k, dname,
                                                             grads=("mu", "lv", "z")))
        yield (f"iwae B={b} D={d} L={l} K={k} {dname} frozen encoder",
               lambda b=b, d=d, l=l, k=k, dname=dname: _iwae(b, d, l, k, dname,
                                                             grads=("recon",)))
    yield ("elbo B=4096 D=784 L=32 bf16 prior=number",
           lambda: _elbo(4096, 784, 32, "bf16", prior=0.5))


def sample_obs_calls(iwae_shapes) -> Iterator[Tuple[str, Callable]]:
    """The IWAE bound with one obs_logvar per sample, as a decoder that outputs its
    variance gives ((K, B, D) in the network's dtype): the two-pass kernel's
    LIK_GAUSSIAN_SAMPLES, its gradient written per sample (GOBS_SAMPLES); training in fp32
    and bf16, with d/dx, evaluation, and INT64 (on rows aligned to 16 and not)."""
    def run(b, d, l, k, dname, mode, int64=False):
        xt, nt = DTYPES[dname]
        train = mode != "eval"

        def fwd():
            mu, lv = stand_in_latents(b, l, nt, train, False)
            with int32_limit_lowered(int64):
                v = fastvae.iwae_bound(
                    empty((b, d), xt, mode == "train+x"), empty((k, b, d), nt, train), mu, lv,
                    empty((k, b, l), nt, train), likelihood="gaussian",
                    obs_logvar=empty((k, b, d), nt, train),
                    reduction="none" if mode == "eval" else "mean", backend="triton",
                    validate=False)
            finish(v, mode, False)
        run_in_mode(mode, fwd)

    for (b, d, l, k), dname, mode in itertools.product(iwae_shapes, ("fp32", "bf16"),
                                                        ("train", "train+x", "eval")):
        if dname == "bf16" and mode != "train":
            continue   # the pointer types of bf16 in training: the rest as fp32's
        yield (f"iwae B={b} D={d} L={l} K={k} {dname} gaussian/KBD {mode}",
               lambda a=(b, d, l, k, dname, mode): run(*a))
    yield ("iwae B=64 D=784 L=32 K=50 fp32 gaussian/KBD train INT64",
           lambda: run(64, 784, 32, 50, "fp32", "train", int64=True))
    # rows not aligned to 16: the int64 launches' own cap (register_caps)
    yield ("iwae B=64 D=100 L=32 K=9 fp32 gaussian/KBD train INT64",
           lambda: run(64, 100, 32, 9, "fp32", "train", int64=True))


def feature_calls(elbo_shapes, iwae_shapes):
    return [*dmol_calls(), *estimator_calls(elbo_shapes, iwae_shapes),
            *prior_calls(elbo_shapes, iwae_shapes), *int64_calls(), *switch_calls(),
            *iwae_rows_edge_calls(), *sample_obs_calls(iwae_shapes)]
