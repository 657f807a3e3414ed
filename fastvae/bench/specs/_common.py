"""What the specs share: the pytorch/examples loss, ``torch.compile`` of a baseline,
the standard set of variants, and ``fastvae-aten``, the one place the benchmarks reach
into a backend's internals."""
from __future__ import annotations

import contextlib
import math
from typing import Callable, Dict

import torch
import torch.nn.functional as F
from torch.distributions import Bernoulli, Normal, kl_divergence

import fastvae
from fastvae.backends.torch_backend import native as _native

from ..core import COMPILE, COMPILE_EAGER_RNG, AgreementError, Case, Variant, leaf


# -- checks -----------------------------------------------------------------------

def check_noise(name: str, eps: torch.Tensor, slack: float) -> None:
    """AgreementError unless the draws ``eps`` look like independent N(0, 1): their mean
    and variance, and the mean product of neighbours along each dimension (0 for
    independent draws: a stream restarted at the same offset, the same noise for every
    sample or row, gives ~1), each within 6 standard errors (plus ``slack`` for 16-bit
    rounding). A stream shifted by a few elements between samples is not caught."""
    n = eps.numel()
    if n == 0:   # no latent: no draw to test
        return
    mean, var = eps.mean().item(), eps.var().item() if n > 1 else 1.0
    if abs(mean) > 6 / math.sqrt(n) + slack or abs(var - 1) > 6 * math.sqrt(2 / n) + slack:
        raise AgreementError(f"{name}: (z - mu)/std has mean {mean:.4g} and variance "
                             f"{var:.4g} over {n} draws; eps ~ N(0, 1) gives 0 and 1")
    for dim, size in enumerate(eps.shape):
        if size < 2:
            continue
        pairs = eps.narrow(dim, 1, size - 1) * eps.narrow(dim, 0, size - 1)
        c = pairs.mean().item()
        if abs(c) > 6 / math.sqrt(pairs.numel()) + slack:
            raise AgreementError(f"{name}: neighbouring draws along dim {dim} of "
                                 f"(z - mu)/std correlate ({c:.3g} over {pairs.numel()} "
                                 "pairs); independent draws give 0")


# -- baselines --------------------------------------------------------------------

def eager_loss(x, recon, mu, logvar):
    """pytorch/examples' VAE ``loss_function`` (BCE on logits + analytic KL), summed."""
    bce = F.binary_cross_entropy_with_logits(recon, x, reduction="sum")
    kld = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())
    return bce + kld


def distributions_loss(x, recon, mu, logvar):
    """The same loss through ``torch.distributions`` (Bernoulli log_prob, Normal KL)."""
    rec = Bernoulli(logits=recon, validate_args=False).log_prob(x).sum()
    q = Normal(mu, torch.exp(0.5 * logvar), validate_args=False)
    p = Normal(torch.zeros_like(mu), torch.ones_like(mu), validate_args=False)
    return kl_divergence(q, p).sum() - rec


def fastvae_loss(backend: str) -> Callable:
    """``fastvae.ELBOLoss(reduction="sum")``: the drop-in for the examples' loss."""
    loss = fastvae.ELBOLoss(reduction="sum", backend=backend)
    return lambda x, recon, mu, logvar: loss(x, recon, mu, logvar)


def _configure_compile() -> None:
    """Every shape is its own static graph: raise dynamo's recompile limit so the
    ``compile`` variant never silently falls back to eager after 8 shapes."""
    import torch._dynamo.config as dcfg
    for name in ("recompile_limit", "cache_size_limit"):
        if hasattr(dcfg, name):
            setattr(dcfg, name, max(getattr(dcfg, name), 1024))
    if hasattr(dcfg, "accumulated_recompile_limit"):
        dcfg.accumulated_recompile_limit = max(dcfg.accumulated_recompile_limit, 4096)
    try:  # name inductor's C++ kernels in the profiler, so CPU kernel counts see them
        import torch._inductor.config as icfg
        icfg.cpp.enable_kernel_profile = True
    except (ImportError, AttributeError):
        pass


_COMPILED: Dict[tuple, Callable] = {}


def compiled(fn: Callable, **options) -> Callable:
    """``torch.compile(fn, dynamic=False, options=options)`` (inductor config options),
    built once per function and options. An option this torch's inductor lacks is a
    one-line RuntimeError (torch's own lists every option it has)."""
    key = (fn.__name__, tuple(sorted(options.items())))
    if key not in _COMPILED:
        _configure_compile()
        import torch._inductor.config as icfg
        missing = [name for name in options if not hasattr(icfg, name)]
        if missing:
            raise RuntimeError(f"torch {torch.__version__}'s inductor has no option "
                               f"{', '.join(missing)}")
        _COMPILED[key] = torch.compile(fn, dynamic=False, options=options or None)
    return _COMPILED[key]


# Inductor draws randn with its own generated RNG code by default; fallback_random has
# it call aten's, the RNG eager draws with (an option since before torch 2.0). On the CPU that alone took
# sample_with_kl's compile from 24 to 5.5 ms at B=4096 L=64 (benchmarks/RESULTS.md).
EAGER_RNG = {"fallback_random": True}


# -- the standard variants ----------------------------------------------------------

def standard_variants(make: Callable, eager: Callable, distributions: Callable,
                      fastvae_fn: Callable[[str], Callable], *, aten: bool = False,
                      sampler: bool = False) -> Dict[str, Variant]:
    """``eager``, ``distributions``, ``compile`` (of ``eager``), ``fastvae-torch``, with
    ``aten`` also ``fastvae-aten`` (ops whose torch backend has the C row kernel), with
    ``sampler`` (ops whose eager draws noise) also ``compile-eager-rng`` (``compile``
    drawing with aten's RNG, :data:`EAGER_RNG`), and ``fastvae-triton`` (CUDA only).

    ``make(get_fn, backend)`` returns a variant's ``build``: ``get_fn()`` gives the
    function to time (called at build time, so ``compile`` compiles only when used);
    ``backend`` is the fastvae backend the variant runs on, None for the baselines.
    ``fastvae_fn(backend)`` is fastvae's function on that backend.
    """
    variants = {
        "eager": Variant("eager", make(lambda: eager, None)),
        "distributions": Variant("distributions", make(lambda: distributions, None)),
        COMPILE: Variant(COMPILE, make(lambda: compiled(eager), None)),
    }
    if sampler:
        variants[COMPILE_EAGER_RNG] = Variant(
            COMPILE_EAGER_RNG, make(lambda: compiled(eager, **EAGER_RNG), None))
    variants["fastvae-torch"] = Variant("fastvae-torch",
                                        make(lambda: fastvae_fn("torch"), "torch"))
    if aten:
        variants["fastvae-aten"] = aten_variant(variants["fastvae-torch"])
    variants["fastvae-triton"] = Variant(
        "fastvae-triton", make(lambda: fastvae_fn("triton"), "triton"), cuda_only=True)
    return variants


# -- fastvae-aten: the torch backend without its compiled C row kernel ---------------
# The only use of a backend's internals in the benchmarks (``_native``, the C kernel).

@contextlib.contextmanager
def native_kernel_off():
    """Inside the block the "torch" backend runs as where no C compiler exists (as with
    ``FASTVAE_NATIVE=0``): its compiled row kernel reports itself unavailable. Swapping
    ``_native.load`` leaves the loaded kernel in place, so switching back costs nothing
    (``FASTVAE_NATIVE`` plus ``_native.reset()`` would look for the kernel again on the
    next variant's call, inside its timing)."""
    load = _native.load
    _native.load = lambda: None
    try:
        yield
    finally:
        _native.load = load


def aten_variant(fastvae_torch: Variant) -> Variant:
    """``fastvae-aten``: the ``fastvae-torch`` variant with the compiled kernel off
    (CPU only)."""
    def build(case, inputs):
        inner = fastvae_torch.build(case, inputs)

        def off(fn):
            def run():
                with native_kernel_off():
                    return fn()
            return run

        step = off(inner)
        if hasattr(inner, "release"):
            step.release = inner.release
        if hasattr(inner, "check_step"):
            step.check_step = off(inner.check_step)
        return step
    return Variant("fastvae-aten", build, cpu_only=True)


def native_status() -> str:
    """Whether ``fastvae-torch`` runs the compiled C row kernel here, or why not."""
    _native.load()
    return _native.status()


# -- inputs ---------------------------------------------------------------------------

def vae_inputs(case: Case, gen: torch.Generator, grad: bool) -> dict:
    """A VAE loss's inputs: data ``x`` in [0, 1] (B, D), decoder logits ``recon``
    (B, D), encoder outputs ``mu`` and ``logvar`` (B, L); leaves with ``grad``."""
    dev, dt = case.device, case.dtype
    x = torch.rand(case.batch, case.dim, generator=gen, device=dev).to(dt)
    recon = 2.0 * torch.randn(case.batch, case.dim, generator=gen, device=dev)
    mu = torch.randn(case.batch, case.latent, generator=gen, device=dev)
    logvar = 0.5 * torch.randn(case.batch, case.latent, generator=gen, device=dev)
    return {"x": x, "recon": leaf(recon.to(dt), grad), "mu": leaf(mu.to(dt), grad),
            "logvar": leaf(logvar.to(dt), grad)}
