"""Representative calls of every public op, for the capture (``capture.capturing``): what
a user's forward and backward can make the Triton backend launch.

Axes: op x likelihood x KL mode x reduction x free bits x obs_logvar layout (float, a
0-dim, per-dimension, per-row or full tensor; learned or fixed) x which inputs need
gradients (training, training with x or without z, evaluation under ``no_grad``) x
dtypes (fp32, bf16, fp16, and autocast's mix: fp32 data with 16-bit network outputs)
x layouts (mu and logvar as separate tensors or the two halves of one encoder output),
at the benchmark shapes (``fastvae/bench/specs``, ``grids.py``, the issue's bar shapes)
and at the odd shapes the tests use (1, 7, non-multiples of 16, each tile class of
``configs``, L over one latent block, one-pass and two-pass IWAE).

Three tiers (``tier_calls``): "ci" (:func:`ci_calls`, what tests/test_kernels_compile.py
compiles in minutes; its docstring says how to extend it), "bench" and "full" (every
combination; hours, ``python -m fastvae.bench.offline compile --tier full``); a fourth,
"classes", is each op's launch classes (``catalog_classes``).

Inputs are ``torch.empty``: nothing reads them. Backward runs where it launches kernels;
at the large shapes a ``reduction="none"`` backward is torch's own multiply by the
(B,) grad_output, so it runs at the small shapes only.
"""
from __future__ import annotations

import itertools
from typing import Callable, Iterator, List, Optional, Tuple

import torch

import fastvae

from fastvae.backends.triton_backend.iwae_configs import SAMPLE_WARPS_D

from .catalog_features import feature_calls, iwae_rows_edge_calls, prior_elbo_call
from .stand_ins import (ALL_DTYPES, BF16, DTYPES, F16, F32, PURE, empty, finish,  # noqa: F401
                        int32_limit_lowered, stand_in_latents, stand_in_obs, stand_in_prior,
                        run_in_mode)

# Shapes (B, D, L): the benchmarks' class (B=4096 and 65536, D=784, L=32 and 64 launch the
# same specializations), narrow and wide rows at aligned sizes, then
# the tests' odd ones (ones, and non-multiples of 16 in each tile, L over one block).
ELBO_BENCH = ((4096, 784, 32),)
ELBO_TILES = ((4096, 64, 16), (4096, 256, 32), (4096, 3072, 32))
ELBO_ODD = ((1, 1, 1), (7, 7, 3), (13, 100, 17), (1003, 1003, 130), (3, 4100, 5))
# (B, D, L, K): the IWAE benchmark's (one-pass K=5, two-pass K=50), then each one-pass
# tile of iwae_configs.IWAE_ONEPASS_TILES and the two-pass kernel at odd sizes.
IWAE_BENCH = ((4096, 784, 32, 5), (4096, 784, 32, 50))
IWAE_ODD = ((1, 1, 1, 1), (7, 7, 3, 2), (5, 60, 5, 7), (5, 300, 33, 4), (5, 100, 7, 6),
            (3, 1003, 7, 3), (3, 784, 32, 8), (3, 1025, 129, 9), (3, 100, 32, 9))
# D of each column layout of the row-warp IWAE kernel (iwae_configs.iwae_row_warps_config)
IWAE_ROW_WARPS_D = (512, 528, 544, 576, 768, 784)
# (B, L, K): the bar's and benchmarks', then odd ones; K None is one (B, L) sample.
REPARAM_SHAPES = ((65536, 64, None), (65536, 64, 16), (65536, 32, 1), (4096, 32, 16),
                  (1, 1, None), (7, 3, 2), (1003, 33, 5))
# likelihood, obs_logvar layout ("" for none, else float / 0-dim / (D,) / (1, D) /
# (B, 1) / (B, D)) and whether obs_logvar is learned.
LIKELIHOODS = (("bernoulli", "", False), ("continuous_bernoulli", "", False),
               ("gaussian", "float", False), ("gaussian", "0d", True), ("gaussian", "D", True),
               ("gaussian", "1D", False), ("gaussian", "B1", True), ("gaussian", "BD", True),
               ("gaussian", "BD", False))
REDUCTIONS = ("mean", "sum", "none")
MODES = ("train", "train+x", "eval")
# Every (kl, reduction, free_bits, mode) at the benchmark shapes; at the others, these.
ELBO_SEMANTICS = tuple(itertools.product(("analytic", "mc"), REDUCTIONS, (0.0, 0.5), MODES))
ELBO_FEW = (("analytic", "mean", 0.0, "train"), ("mc", "none", 0.5, "train+x"),
            ("analytic", "sum", 0.5, "eval"))
IWAE_SEMANTICS = tuple(itertools.product(("mean", "none"), ("train", "train-z", "eval")))
IWAE_FEW = (("mean", "train"), ("none", "train+x"), ("sum", "eval"))


def elbo_calls(shapes, dtypes, semantics, chunked=(False,), likelihoods=LIKELIHOODS,
               priors=(None,), int64=(False,)) -> Iterator[Tuple[str, Callable]]:
    """``priors``: :func:`stand_ins.stand_in_prior`'s kinds; ``int64``: whether the host's
    int32 limit is lowered (:func:`stand_ins.int32_limit_lowered`)."""
    for (b, d, l), dname, (lik, obs, learned), (kl, red, fb, mode), chunk, prior, wide in (
            itertools.product(shapes, dtypes, likelihoods, semantics, chunked, priors, int64)):
        if chunk and (dname not in ("fp32", "amp-bf16") or red == "none"):
            continue  # the chunked layout: in the common training setups
        big = b * d > 1 << 22

        def call(b=b, d=d, l=l, dname=dname, lik=lik, obs=obs, learned=learned, kl=kl, red=red,
                 fb=fb, mode=mode, chunk=chunk, big=big, prior=prior, wide=wide):
            xt, nt = DTYPES[dname]
            train = mode != "eval"

            def fwd():
                x = empty((b, d), xt, mode == "train+x")
                recon = empty((b, d), nt, train)
                mu, lv = stand_in_latents(b, l, nt, train, chunk)
                z = empty((b, l), nt, train) if kl == "mc" else None
                ob = stand_in_obs(obs, learned and train, b, d) if obs else 0.0
                pm, plv = stand_in_prior(prior, b, l, nt, train)
                with int32_limit_lowered(wide):
                    v = fastvae.elbo(x, recon, mu, lv, likelihood=lik, kl=kl, z=z, free_bits=fb,
                                     obs_logvar=ob, reduction=red, prior_mu=pm,
                                     prior_logvar=plv, backend="triton", validate=False)
                finish(v, mode, big)
            run_in_mode(mode, fwd)
        yield (f"elbo B={b} D={d} L={l} {dname} {lik}{'/' + obs if obs else ''} kl={kl} "
               f"{red} fb={fb} {mode}{' chunked' if chunk else ''}"
               f"{label_tail(prior, wide)}"), call


def label_tail(prior=None, wide=False, estimator="standard") -> str:
    """A call label's tail for the switches beyond the default (every tier's labels end
    alike, so ``compile --calls`` picks them by the same words)."""
    return (f"{f' estimator={estimator}' if estimator != 'standard' else ''}"
            f"{f' prior={prior}' if prior else ''}{' INT64' if wide else ''}")


def loss_calls(shapes) -> Iterator[Tuple[str, Callable]]:
    """``fastvae.ELBOLoss`` as the benchmarks and training call it (grad_output 1)."""
    for (b, d, l), dname in itertools.product(shapes, DTYPES):
        def call(b=b, d=d, l=l, dname=dname):
            xt, nt = DTYPES[dname]
            loss = fastvae.ELBOLoss(reduction="sum", backend="triton")
            loss(empty((b, d), xt), empty((b, d), nt, True), empty((b, l), nt, True),
                 empty((b, l), nt, True)).backward()
        yield f"ELBOLoss B={b} D={d} L={l} {dname}", call


def iwae_calls(shapes, dtypes, semantics, likelihoods=LIKELIHOODS, priors=(None,),
               int64=(False,), estimators=("standard",)) -> Iterator[Tuple[str, Callable]]:
    for (b, d, l, k), dname, (lik, obs, learned), (red, mode), prior, wide, est in (
            itertools.product(shapes, dtypes, likelihoods, semantics, priors, int64,
                              estimators)):
        big = k * b * d > 1 << 22

        def call(b=b, d=d, l=l, k=k, dname=dname, lik=lik, obs=obs, learned=learned, red=red,
                 mode=mode, big=big, prior=prior, wide=wide, est=est):
            xt, nt = DTYPES[dname]
            train = mode != "eval"

            def fwd():
                x = empty((b, d), xt, mode == "train+x")
                mu, lv = stand_in_latents(b, l, nt, train, False)
                z_k = empty((k, b, l), nt, mode in ("train", "train+x"))
                ob = stand_in_obs(obs, learned and train, b, d) if obs else 0.0
                pm, plv = stand_in_prior(prior, b, l, nt, train)
                with int32_limit_lowered(wide):
                    v = fastvae.iwae_bound(x, empty((k, b, d), nt, train), mu, lv, z_k,
                                           likelihood=lik, obs_logvar=ob, reduction=red,
                                           estimator=est, prior_mu=pm, prior_logvar=plv,
                                           backend="triton", validate=False)
                finish(v, mode, big)
            run_in_mode(mode, fwd)
        yield (f"iwae B={b} D={d} L={l} K={k} {dname} {lik}{'/' + obs if obs else ''} {red} "
               f"{mode}{label_tail(prior, wide, est)}"), call


def reparameterize_calls(shapes) -> Iterator[Tuple[str, Callable]]:
    for (b, l, k), dname, grads in itertools.product(
            shapes, ("fp32", "bf16", "fp16"), ("both", "mu", "logvar", "eval")):
        def call(b=b, l=l, k=k, dname=dname, grads=grads):
            dt = DTYPES[dname][1]
            mu = empty((b, l), dt, grads in ("both", "mu"))
            lv = empty((b, l), dt, grads in ("both", "logvar"))

            def fwd():
                z = fastvae.reparameterize(mu, lv, n_samples=k, backend="triton", validate=False)
                if grads != "eval":
                    torch.autograd.grad(z, [t for t in (mu, lv) if t.requires_grad],
                                        torch.empty_like(z))
            run_in_mode("eval" if grads == "eval" else "train", fwd)
        yield f"reparameterize B={b} L={l} K={k} {dname} grads={grads}", call


def small_op_calls() -> Iterator[Tuple[str, Callable]]:
    """kl_standard_normal and gaussian_log_prob (their own host functions)."""
    for (n, l), dname, grads in itertools.product(
            ((4096, 32), (65536, 64), (1, 1), (7, 3), (1003, 130)), ("fp32", "bf16", "fp16"),
            ("both", "mu", "logvar", "eval")):
        def call(n=n, l=l, dname=dname, grads=grads):
            dt = DTYPES[dname][1]
            mu = empty((n, l), dt, grads in ("both", "mu"))
            lv = empty((n, l), dt, grads in ("both", "logvar"))
            run_in_mode("eval" if grads == "eval" else "train",
                 lambda: finish(fastvae.kl_standard_normal(mu, lv, backend="triton",
                                                            validate=False), grads, False))
        yield f"kl_standard_normal N={n} L={l} {dname} grads={grads}", call
    for (n, d), dname, lv_layout, mode in itertools.product(
            ((4096, 784), (1, 1), (7, 7), (1003, 1003), (3, 4100)), ("fp32", "bf16", "fp16"),
            ("float", "D", "BD", "BD-fixed"), ("train", "train+x", "eval")):
        def call(n=n, d=d, dname=dname, lv_layout=lv_layout, mode=mode):
            dt = DTYPES[dname][1]
            train = mode != "eval"

            def fwd():
                x = empty((n, d), dt, mode == "train+x")
                mean = empty((n, d), dt, train)
                lv = stand_in_obs(lv_layout.split("-")[0], train and "fixed" not in lv_layout, n, d)
                finish(fastvae.gaussian_log_prob(x, mean, lv, backend="triton", validate=False),
                        mode, False)
            run_in_mode(mode, fwd)
        yield f"gaussian_log_prob N={n} D={d} {dname} logvar={lv_layout} {mode}", call


TIERS = ("ci", "bench", "full")


def tier_calls(tier: str) -> List[Tuple[str, Callable]]:
    """The calls of a tier: "ci" (:func:`ci_calls`, what the test compiles), "bench"
    (every semantic combination at the benchmark shapes) or "full" (:func:`calls`)."""
    if tier == "ci":
        return ci_calls()
    if tier not in TIERS:
        raise ValueError(f"unknown catalog tier {tier!r}; one of {TIERS}")
    return calls(bench_only=tier == "bench")


def calls(bench_only: bool = False) -> List[Tuple[str, Callable]]:
    """Every catalog call as (label, zero-argument function): at the benchmark shapes,
    every semantic combination in every dtype (autocast's included); at the other
    tiles and the odd shapes, every likelihood and obs_logvar layout with a few
    combinations, in the pure dtypes (fp32 and bf16 at the odd shapes). ``bench_only``:
    the benchmark shapes alone."""
    out = [*elbo_calls(ELBO_BENCH, ALL_DTYPES, ELBO_SEMANTICS, (False, True)),
           *loss_calls(ELBO_BENCH), *iwae_calls(IWAE_BENCH, ALL_DTYPES, IWAE_SEMANTICS),
           *reparameterize_calls(REPARAM_SHAPES[:4]),
           *feature_calls(ELBO_BENCH, IWAE_BENCH)]
    if not bench_only:
        out += [*elbo_calls(ELBO_TILES, PURE, ELBO_FEW),
                *elbo_calls(ELBO_ODD, ("fp32", "bf16"), ELBO_FEW, (False, True)),
                *iwae_calls(IWAE_ODD, PURE, IWAE_FEW),
                *reparameterize_calls(REPARAM_SHAPES[4:]), *small_op_calls()]
    return out


def benchmark_labels() -> set:
    """The labels of the calls at the benchmark shapes: the "bench" tier's, and the two
    small ops' at N = 4096 and 65536 (``selection.ci_selection`` compiles all they
    launch)."""
    return {label for label, _ in [*calls(bench_only=True), *small_op_calls()]
            if not label.startswith(("kl_standard_normal", "gaussian_log_prob"))
            or label.split()[1] in ("N=4096", "N=65536")}


def always_compiled_labels() -> set:
    """What the "ci" tier compiles whatever else covers it: :func:`benchmark_labels`, and
    the two-pass IWAE calls at the edge of spilling (a register count that a cover by code
    shape would not see)."""
    return benchmark_labels() | {label for label, _ in iwae_rows_edge_calls()}


def sweep_calls() -> List[Tuple[str, Callable]]:
    """Forward calls over a sweep of sizes (D, L, K from 1 to 50,000; each likelihood),
    fp32 in training and evaluation, bf16 in training: which tiles the host picks."""
    ds = (1, 7, 16, 63, 64, 65, 100, 255, 256, 257, 784, 1003, 1024, 1025, 2048, 3072, 4100,
          50000)
    liks = [lk for lk in LIKELIHOODS if lk[1] in ("", "float", "BD")][:4]
    out = []
    for dname, mode in (("fp32", "train"), ("fp32", "eval"), ("bf16", "train")):
        out += elbo_calls([(3, d, l) for d in ds for l in (1, 32, 129)], (dname,),
                          (("analytic", "none", 0.0, mode),), likelihoods=liks)
        out += iwae_calls([(3, d, l, k) for d in (1, 64, 65, 192, 256, 257, 1024, 1025, 3072)
                           for l in (8, 32, 129) for k in (1, 2, 4, 5, 8, 9, 50)], (dname,),
                          (("none", mode),), likelihoods=liks)
    out += row_warps_calls()
    # the sample-warp IWAE kernel (bf16 Bernoulli training, K 17-64): each column layout
    out += iwae_calls([(3, d, 32, 50) for d in SAMPLE_WARPS_D], ("bf16",),
                      (("none", "train"),), likelihoods=liks[:1])
    return out


def row_warps_calls(product: bool = False) -> List[Tuple[str, Callable]]:
    """The row-warp IWAE kernel (bf16 Bernoulli training). Its layouts are each K it takes
    (2-8 samples, unrolled) by each column layout (2 or 3 chunks of 256, a tail padded to
    0-64). The sweep (so CI) takes their cross: every column layout at K = 8, every K at
    D = 784. The ``product`` (42 compiles of 2-9 s, a third of CI's compile job when
    CI compiled it) is in the classes tier (``catalog_classes``)."""
    pairs = ([(d, k) for d in IWAE_ROW_WARPS_D for k in range(2, 9)] if product else
             [(d, 8) for d in IWAE_ROW_WARPS_D] + [(784, k) for k in range(2, 8)])
    return iwae_calls([(3, d, 32, k) for d, k in pairs], ("bf16",), (("none", "train"),),
                      likelihoods=LIKELIHOODS[:1])


# The CI tier (tests/test_kernels_compile.py): each distinct specialization costs
# seconds of one core per target and Triton version, so it captures a chosen subset
# (below) rather than every combination of ``calls()``, and compiles what
# ``selection.ci_selection`` keeps of it.
CORE_LIKELIHOODS = (("bernoulli", "", False), ("continuous_bernoulli", "", False),
                    ("gaussian", "float", False), ("gaussian", "BD", True))
TRAIN = ("analytic", "mean", 0.0, "train")


def ci_calls() -> List[Tuple[str, Callable]]:
    """What CI captures, 408 specializations (380 compiled, ``selection.py``):

    * the benchmark shapes: every likelihood in training in fp32, bf16, fp16 and
      autocast's bf16; in fp32 and bf16 also the MC KL with free bits and x's gradient,
      and evaluation; the (D,) and (B, 1) obs_logvar gradients; the chunked layout;
      ``ELBOLoss``; IWAE one-pass (K=5) and two-pass (K=50) likewise; the sampler and
      the two small ops;
    * a few odd shapes (ones, sizes not multiples of 16: the masked, unaligned
      specializations);
    * every layout (:func:`layout_of`: kernel, tile, warps, likelihood) the host picks
      over the size sweep, once, in training (the most values live).

    To extend it when a kernel gains a switch: add the call that turns the switch on to
    the first group (one dtype is enough unless the switch changes pointer types);
    ``tests/test_kernels_compile.py`` then compiles it. A new tile table or size class
    is picked up by the sweep (:func:`sweep_calls`) without any change here.
    """
    bern, cb, gauss_float, gauss_bd = CORE_LIKELIHOODS
    mc_fb_x = ("mc", "sum", 0.5, "train+x")
    evaluate = ("analytic", "none", 0.0, "eval")
    out = [*elbo_calls(ELBO_BENCH, ("fp32", "bf16", "fp16"), (TRAIN,),
                       likelihoods=CORE_LIKELIHOODS),
           *elbo_calls(ELBO_BENCH, ("amp-bf16",), (TRAIN,), likelihoods=(bern, gauss_bd)),
           *elbo_calls(ELBO_BENCH, ("fp32",), (mc_fb_x, evaluate), likelihoods=CORE_LIKELIHOODS),
           *elbo_calls(ELBO_BENCH, ("bf16",), (mc_fb_x,), likelihoods=(cb, gauss_bd)),
           *elbo_calls(ELBO_BENCH, ("bf16",), (evaluate,), likelihoods=(bern,)),
           *elbo_calls(ELBO_BENCH, ("fp32",), (TRAIN,),
                       likelihoods=(("gaussian", "D", True), ("gaussian", "B1", True))),
           *elbo_calls(ELBO_BENCH, ("fp32",), (TRAIN,), (True,), likelihoods=(bern,)),
           *[c for c in loss_calls(ELBO_BENCH) if c[0].endswith(("fp32", " bf16"))],
           *iwae_calls(IWAE_BENCH, ("fp32", "bf16"), (("mean", "train"),),
                       likelihoods=CORE_LIKELIHOODS),
           *iwae_calls(IWAE_BENCH, ("fp32",), (("none", "eval"),), likelihoods=CORE_LIKELIHOODS),
           *iwae_calls(IWAE_BENCH, ("fp16", "amp-bf16"), (("mean", "train"),),
                       likelihoods=(bern,)),
           *iwae_calls(IWAE_BENCH[:1], ("fp32",), (("mean", "train"),),
                       likelihoods=(("gaussian", "D", True),)),
           # launches with a register cap (register_caps.MAXNREG)
           *iwae_calls(IWAE_BENCH[1:], ("bf16",), (("mean", "eval"),),
                       likelihoods=(("gaussian", "0d", True), bern)),
           *elbo_calls(((5, 64, 17),), ("bf16",), (("analytic", "sum", 0.5, "eval"),),
                       likelihoods=(cb,)),
           *elbo_calls(((7, 7, 3),), ("bf16",), (evaluate,), likelihoods=(bern,)),
           *elbo_calls(((5, 30, 70),), ("fp32",), (("mc", "mean", 0.0, "train"),),
                       likelihoods=(bern,)),
           *elbo_calls(((5, 30, 70),), ("bf16",), (("analytic", "mean", 0.0, "train+x"),),
                       likelihoods=(cb,)),
           *elbo_calls(((5, 784, 32),), ("bf16",), (("analytic", "mean", 0.0, "train+x"),),
                       likelihoods=(("gaussian", "D", True),)),
           *elbo_calls(((7, 7, 3),), ("bf16",), (("analytic", "none", 0.5, "train"),),
                       likelihoods=(gauss_float,)),
           *elbo_calls(((5, 784, 3),), ("fp16",), (("mc", "mean", 0.0, "train"),),
                       likelihoods=(gauss_float,)),
           *elbo_calls(((5, 784, 70),), ("fp32",), (("mc", "none", 0.5, "train"),),
                       likelihoods=(gauss_float,)),
           prior_elbo_call((5, 7, 70), "bf16", "mc", 0.0, "standard", True, "gaussian"),
           *iwae_calls(((3, 64, 70, 5),), ("bf16",), (("mean", "train"),),
                       likelihoods=(("gaussian", "D", True),)),
           *iwae_calls(((3, 784, 3, 5),), ("bf16",), (("mean", "train+x"),),
                       likelihoods=(gauss_bd,)),
           *iwae_calls(((3, 64, 32, 2),), ("fp32",), (("mean", "train"),), likelihoods=(bern,)),
           *iwae_calls(((3, 784, 70, 9),), ("fp16",), (("none", "eval"),), likelihoods=(bern,)),
           *iwae_calls(((3, 784, 70, 9),), ("fp16",), (("mean", "train"),),
                       likelihoods=(gauss_bd,)),
           *elbo_calls(((7, 7, 3),), ("fp16",), (("mc", "mean", 0.0, "train"),),
                       likelihoods=(bern,)),
           *[c for c in reparameterize_calls(REPARAM_SHAPES[:2])
             if c[0].split()[4] in ("fp32", "bf16") and c[0].endswith(("both", "eval"))],
           *[c for c in reparameterize_calls(REPARAM_SHAPES[:2] + REPARAM_SHAPES[5:6])
             if " fp16 grads=both" in c[0] or "B=7 " in c[0] and " fp32 " in c[0]],
           *[c for c in small_op_calls() if c[0].startswith(
               ("kl_standard_normal N=4096 L=32 fp32 grads=both",
                "kl_standard_normal N=4096 L=32 bf16 grads=both",
                "gaussian_log_prob N=4096 D=784 fp32 logvar=BD train",
                "gaussian_log_prob N=4096 D=784 bf16 logvar=BD train+x",
                "gaussian_log_prob N=7 D=7 fp32 logvar=float train"))],
           *elbo_calls(((7, 7, 3),), ("fp32",), (TRAIN,), likelihoods=(bern,)),
           *elbo_calls(((13, 100, 17),), ("bf16",), (("mc", "none", 0.5, "train+x"),),
                       likelihoods=(gauss_bd,)),
           *iwae_calls(((7, 7, 3, 2),), ("fp32",), (("none", "train"),), likelihoods=(bern,)),
           # the two-pass kernel on rows not aligned to 16: its half tile and register cap
           *iwae_calls(((3, 100, 32, 9),), ("fp32", "bf16"), (("mean", "train"),),
                       likelihoods=CORE_LIKELIHOODS),
           *iwae_calls(((3, 100, 32, 9),), ("bf16",), (("none", "eval"),), likelihoods=(bern,)),
           # the one-pass kernel on rows not aligned to 16: 16 warps and a register cap
           *iwae_calls(((64, 7, 70, 5),), ("bf16",), (("mean", "train+x"),),
                       likelihoods=(("gaussian", "D", True),)),
           # the pair kernel's two column pieces and a wide masked tail (fp32: 4 + 1 chunks
           # of 128 and 48 columns; bf16: 2 of 256 and 176)
           *iwae_calls(((3, 688, 3, 5),), ("fp32", "bf16"), (("none", "train"),),
                       likelihoods=(bern,)),
           *feature_calls(ELBO_BENCH + ((7, 7, 3),), IWAE_BENCH + ((7, 7, 3, 2),))]
    return out + layout_calls(have=out)


def layout_of(launch) -> tuple:
    """What decides a compiled kernel's registers and spills most, besides its mode and
    likelihood: the kernel, its BLOCK_* tile and warps (a tile or warps count chosen per
    likelihood is a layout of its own)."""
    cx = launch.constexprs()
    return (launch.short, tuple(sorted((k, v) for k, v in cx.items() if k.startswith("BLOCK"))),
            launch.options()["num_warps"])


def _layouts(entries) -> dict:
    """{layout: label of the first entry that launches it} (captured for sm_90)."""
    from . import capture
    out: dict = {}
    with capture.capturing((90,)) as rec:
        for label, fn in entries:
            rec.label = label
            fn()
    for la in rec.launches:
        out.setdefault(layout_of(la), la.call)
    return out


def layout_calls(have=()) -> List[Tuple[str, Callable]]:
    """One training call (fp32 or bf16) per layout of :func:`sweep_calls` not already
    launched by ``have``: with the continuous Bernoulli where it has the layout (its
    log-normaliser keeps the most values live), else the learned (B, D) Gaussian."""
    covered = set(_layouts(have))
    weight = {"continuous_bernoulli": 0, "gaussian/BD": 1}
    train = sorted((c for c in sweep_calls() if " train" in c[0]),
                   key=lambda c: min((w for k, w in weight.items() if f" {k} " in c[0]),
                                     default=2))
    by_label = dict(train)
    return [(label, by_label[label]) for lay, label in _layouts(train).items()
            if lay not in covered]


def kernels() -> List[str]:
    """The names of the ``@triton.jit`` kernels in ``fastvae.kernels``: the jit functions
    no other one calls (those are helpers)."""
    import importlib
    import pkgutil
    import re

    from triton.runtime.jit import JITFunction

    import fastvae.kernels as pkg
    fns = {}
    for info in pkgutil.iter_modules(pkg.__path__):
        mod = importlib.import_module(f"{pkg.__name__}.{info.name}")
        for name, obj in vars(mod).items():
            if isinstance(obj, JITFunction) and obj.fn.__module__ == mod.__name__:
                fns[f"{mod.__name__}.{name}"] = obj
    def used(name, src):  # called, or passed as an argument (a reduction's combine_fn)
        name = re.escape(name)
        return re.search(rf"\b{name}\s*\(|[,(=]\s*{name}\s*[,)]", src)
    called = {n for n, f in fns.items() for other in fns.values() if other is not f
              and used(n.rsplit('.', 1)[-1], other.src)}
    return sorted(set(fns) - called)


def record(recorder, entries: Optional[List[Tuple[str, Callable]]] = None) -> None:
    """Run ``entries`` (default: every call) under ``recorder`` (from ``capturing``),
    each labelled; a call that raises is a catalog bug and stops the capture."""
    for label, fn in (calls() if entries is None else entries):
        recorder.label = label
        try:
            fn()
        except Exception as e:
            raise RuntimeError(f"catalog call {label!r} failed: {type(e).__name__}: {e}") from e
