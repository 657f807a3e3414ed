"""Benchmark the fused VAE ops against eager PyTorch and torch.compile.

Prints one table: variant, op, shape, dtype, median ms, speed-up vs eager and vs
torch.compile, peak extra memory, bytes saved for backward, kernels, GB/s and % of
the measured copy-bandwidth roofline. Every case first checks that its variants
agree numerically and stops with an error if one does not. ``--quick`` is a
subset that takes under two minutes on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import datetime
import itertools
import json
import math
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch.distributions import Bernoulli, Normal, kl_divergence

import fastvae

# Design notes. Everything a benchmark needs lives here, so the table of
# ``fastvae bench`` and the pytest-benchmark suites in ``benchmarks/`` measure the
# same thing:
#
# * **ops** (:data:`OPS`): ``elbo`` (forward+backward), ``elbo_eval`` (forward only,
#   no grad), ``reparameterize`` (forward+backward, K samples), ``iwae`` (forward+
#   backward, K samples), ``train_mlp`` / ``train_conv`` (a full Adam step of
#   ``fastvae.models.VAE`` / ``ConvVAE``).
# * **variants** of each op: ``eager`` (the pytorch/examples VAE loss, written by
#   hand), ``distributions`` (``torch.distributions``), ``compile`` (``torch.compile``
#   of the eager loss), ``fastvae-torch``, ``fastvae-aten`` (CPU only: the "torch"
#   backend with its compiled C row kernel switched off, i.e. the fallback where no C
#   compiler exists, as ``FASTVAE_NATIVE=0``; ops whose torch backend has no such
#   kernel do not list it) and ``fastvae-triton`` (CUDA only). Every loss variant
#   returns the *loss*, ``-ELBO`` summed over the batch, as pytorch/examples'
#   ``loss_function`` does.
# * **agreement**: before anything is timed, every variant's outputs (value and
#   gradients) are checked against ``eager``'s; a mismatch raises
#   :class:`AgreementError` (a fast wrong answer is not a result). Samplers cannot be
#   compared draw for draw across RNG streams, so ``reparameterize`` is checked for
#   self-consistency instead: ``eps = (z - mu) / std`` must look standard normal and
#   the gradients must be the closed form of the variant's own ``z``.
# * **timing**: one timed first call (the compile time of ``compile``), warm-up,
#   then all variants interleaved round-robin (the order rotates each round) and the
#   median of each taken. Wall clock, or with ``--cpu-time --threads 1`` the calling
#   thread's CPU time (``time.thread_time``), which other processes on a shared
#   machine do not inflate.
# * **extras**, measured on one separate untimed call: peak extra memory (CPU: the
#   allocator's events under ``torch.profiler(profile_memory=True)``, which sees
#   inductor's buffers too; at the ELBO's B=4096 it agreed within 0.1% with glibc's
#   "max mmap bytes" in a fresh process, the measure of the retired script
#   ``benchmarks/bench_elbo.py``, see benchmarks/RESULTS_elbo_cpu.md;
#   CUDA: ``max_memory_allocated``), bytes saved for backward
#   (``torch.autograd.graph.saved_tensors_hooks``, unique storages), kernels (CUDA:
#   kernel launches from the profiler; CPU: leaf aten compute ops plus inductor's C++
#   kernels, a machine-independent count of passes), and achieved GB/s and % of the
#   copy-bandwidth roofline from :func:`bytes_moved` (the bytes a fused
#   implementation must move) and a copy measured in the same run.
#
# ``python -m fastvae.bench --quick`` (or ``fastvae bench``) prints the table.

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16,
          "fp64": torch.float64}
DTYPE_NAMES = {v: k for k, v in DTYPES.items()}
# (rtol, atol as a fraction of the reference's largest magnitude) per dtype.
TOLERANCES = {torch.float64: (1e-7, 1e-9), torch.float32: (1e-3, 1e-4),
              torch.bfloat16: (3e-2, 2e-2), torch.float16: (1e-2, 5e-3)}


class AgreementError(AssertionError):
    """A variant's numbers disagree with the eager reference: its timing means nothing."""


# -- cases -------------------------------------------------------------------------

@dataclass(frozen=True)
class Case:
    """One benchmark configuration: op, batch B, data dims D, latent dims L, samples K."""

    op: str
    batch: int
    dim: int
    latent: int
    k: int = 1
    dtype: torch.dtype = torch.float32
    device: str = "cpu"

    @property
    def dtype_name(self) -> str:
        return DTYPE_NAMES.get(self.dtype, str(self.dtype))

    @property
    def shape(self) -> str:
        """``B=4096 D=784 L=32`` (+ `` K=16``; the sampler has no D)."""
        d = "" if self.op == "reparameterize" else f" D={self.dim}"
        return f"B={self.batch}{d} L={self.latent}" + (
            f" K={self.k}" if OPS[self.op].uses_k else "")

    @property
    def id(self) -> str:
        """A pytest id: ``B4096-D784-L32[-K16]-fp32``."""
        return self.shape.replace("=", "").replace(" ", "-") + f"-{self.dtype_name}"

    def largest_elements(self) -> int:
        """Elements of the case's largest tensor (the memory it needs scales with it)."""
        k = self.k if OPS[self.op].uses_k else 1
        if self.op == "reparameterize":
            return k * self.batch * self.latent
        return k * self.batch * self.dim


# -- the losses (every variant returns -ELBO summed over the batch) -----------------

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


def eager_reparameterize(mu, logvar, k):
    """pytorch/examples' ``reparameterize``; ``k > 1`` stacks K samples ``(K, B, L)``."""
    std = torch.exp(0.5 * logvar)
    eps = torch.randn_like(std) if k == 1 else torch.randn((k,) + tuple(std.shape),
                                                           dtype=std.dtype, device=std.device)
    return mu + eps * std


def distributions_reparameterize(mu, logvar, k):
    q = Normal(mu, torch.exp(0.5 * logvar), validate_args=False)
    return q.rsample() if k == 1 else q.rsample((k,))


def eager_iwae_loss(x, recon_k, mu, logvar, z_k):
    """``-sum_b [logsumexp_k log w_k - log K]`` written by hand (Burda et al. 2016)."""
    k = recon_k.shape[0]
    log_px = -F.binary_cross_entropy_with_logits(
        recon_k, x.expand_as(recon_k), reduction="none").sum(-1)
    log_pz = -0.5 * (z_k * z_k).sum(-1)
    log_qz = -0.5 * ((z_k - mu) ** 2 * torch.exp(-logvar) + logvar).sum(-1)
    bound = torch.logsumexp(log_px + log_pz - log_qz, dim=0) - math.log(k)
    return -bound.sum()


def distributions_iwae_loss(x, recon_k, mu, logvar, z_k):
    k = recon_k.shape[0]
    log_px = Bernoulli(logits=recon_k, validate_args=False).log_prob(x.expand_as(recon_k)).sum(-1)
    prior = Normal(torch.zeros_like(mu), torch.ones_like(mu), validate_args=False)
    q = Normal(mu, torch.exp(0.5 * logvar), validate_args=False)
    log_w = log_px + prior.log_prob(z_k).sum(-1) - q.log_prob(z_k).sum(-1)
    return -(torch.logsumexp(log_w, dim=0) - math.log(k)).sum()


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


_COMPILED: Dict[str, Callable] = {}


def compiled(fn: Callable) -> Callable:
    """``torch.compile(fn, dynamic=False)``, built once per function."""
    if fn.__name__ not in _COMPILED:
        _configure_compile()
        _COMPILED[fn.__name__] = torch.compile(fn, dynamic=False)
    return _COMPILED[fn.__name__]


def fastvae_loss(backend: str) -> Callable:
    """``fastvae.ELBOLoss(reduction="sum")``: the drop-in for the examples' loss."""
    loss = fastvae.ELBOLoss(reduction="sum", backend=backend)
    return lambda x, recon, mu, logvar: loss(x, recon, mu, logvar)


def fastvae_iwae_loss(backend: str) -> Callable:
    def loss(x, recon_k, mu, logvar, z_k):
        return -fastvae.iwae_bound(x, recon_k, mu, logvar, z_k, reduction="sum", backend=backend)
    return loss


def fastvae_reparameterize(backend: str) -> Callable:
    def draw(mu, logvar, k):
        return fastvae.reparameterize(mu, logvar, n_samples=None if k == 1 else k, backend=backend)
    return draw


# -- variants and ops ---------------------------------------------------------------

@dataclass
class Variant:
    """How one implementation runs an op: ``build(case, inputs)`` returns ``step()``,
    a closure doing one timed unit of work and returning the tensors to check."""

    name: str
    build: Callable[[Case, dict], Callable[[], tuple]]
    cuda_only: bool = False
    cpu_only: bool = False


@dataclass
class Op:
    name: str
    title: str
    make_inputs: Callable[[Case, torch.Generator], dict]
    variants: Dict[str, Variant]
    uses_k: bool = False
    # Reparameterization cannot be compared draw for draw: check each variant alone.
    self_check: Optional[Callable[[Case, dict, tuple, str], None]] = None


def _leaf(t: torch.Tensor, grad: bool) -> torch.Tensor:
    return t.detach().requires_grad_(grad)


def _data_inputs(case: Case, gen: torch.Generator, grad: bool) -> dict:
    dev, dt = case.device, case.dtype
    x = torch.rand(case.batch, case.dim, generator=gen, device=dev).to(dt)
    recon = 2.0 * torch.randn(case.batch, case.dim, generator=gen, device=dev)
    mu = torch.randn(case.batch, case.latent, generator=gen, device=dev)
    logvar = 0.5 * torch.randn(case.batch, case.latent, generator=gen, device=dev)
    return {"x": x, "recon": _leaf(recon.to(dt), grad), "mu": _leaf(mu.to(dt), grad),
            "logvar": _leaf(logvar.to(dt), grad)}


def _loss_step(loss_fn: Callable, inputs: dict, names: Sequence[str], backward: bool):
    args = [inputs[n] for n in names]
    leaves = [a for a in args if a.requires_grad]
    if not backward:
        def step():
            with torch.no_grad():
                return (loss_fn(*args),)
        return step

    def release():
        for t in leaves:
            t.grad = None

    def step():
        release()
        loss = loss_fn(*args)
        loss.backward()
        return (loss.detach(), *(t.grad for t in leaves))
    step.release = release
    return step


@contextlib.contextmanager
def native_kernel_off():
    """Inside the block the "torch" backend runs as where no C compiler exists (as with
    ``FASTVAE_NATIVE=0``): its compiled row kernel reports itself unavailable. Swapping
    ``_native.load`` leaves the loaded kernel in place, so switching back costs nothing
    (``FASTVAE_NATIVE`` plus ``_native.reset()`` would look for the kernel again on the
    next variant's call, inside its timing)."""
    from .backends.torch_backend import native as _native

    load = _native.load
    _native.load = lambda: None
    try:
        yield
    finally:
        _native.load = load


def aten_variant(fastvae_torch: Variant) -> Variant:
    """``fastvae-aten``: the ``fastvae-torch`` variant with the compiled kernel off."""
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


def _with_aten(variants: Dict[str, Variant]) -> Dict[str, Variant]:
    """Insert ``fastvae-aten`` after ``fastvae-torch`` (ops that use the C row kernel)."""
    out = {}
    for name, v in variants.items():
        out[name] = v
        if name == "fastvae-torch":
            out["fastvae-aten"] = aten_variant(v)
    return out


def _elbo_variants(backward: bool) -> Dict[str, Variant]:
    names = ("x", "recon", "mu", "logvar")

    def make(get_fn):
        return lambda case, inputs: _loss_step(get_fn(), inputs, names, backward)

    return _with_aten({
        "eager": Variant("eager", make(lambda: eager_loss)),
        "distributions": Variant("distributions", make(lambda: distributions_loss)),
        "compile": Variant("compile", make(lambda: compiled(eager_loss))),
        "fastvae-torch": Variant("fastvae-torch", make(lambda: fastvae_loss("torch"))),
        "fastvae-triton": Variant("fastvae-triton", make(lambda: fastvae_loss("triton")),
                                  cuda_only=True),
    })


def _reparam_inputs(case: Case, gen: torch.Generator) -> dict:
    d = _data_inputs(case, gen, grad=True)
    shape = (case.batch, case.latent) if case.k == 1 else (case.k, case.batch, case.latent)
    dz = torch.randn(shape, generator=gen, device=case.device).to(case.dtype)
    return {"mu": d["mu"], "logvar": d["logvar"], "dz": dz}


def _reparam_variants() -> Dict[str, Variant]:
    def make(get_fn):
        def build(case, inputs):
            draw, mu, logvar, dz = get_fn(), inputs["mu"], inputs["logvar"], inputs["dz"]

            def release():
                mu.grad = logvar.grad = None

            def step():
                release()
                z = draw(mu, logvar, case.k)
                z.backward(dz)
                return z.detach(), mu.grad, logvar.grad
            step.release = release
            return step
        return build

    return {
        "eager": Variant("eager", make(lambda: eager_reparameterize)),
        "distributions": Variant("distributions", make(lambda: distributions_reparameterize)),
        "compile": Variant("compile", make(lambda: compiled(eager_reparameterize))),
        "fastvae-torch": Variant("fastvae-torch", make(lambda: fastvae_reparameterize("torch"))),
        "fastvae-triton": Variant("fastvae-triton", make(lambda: fastvae_reparameterize("triton")),
                                  cuda_only=True),
    }


def check_reparameterize(case: Case, inputs: dict, out: tuple, name: str) -> None:
    """z must be ``mu + std * eps`` with eps ~ N(0, 1), and the gradients the closed
    form of that same z: ``dmu = sum_k dz``, ``dlogvar = 0.5 * sum_k dz * (z - mu)``."""
    z, g_mu, g_lv = (t.double() for t in out)
    mu, lv, dz = (inputs[n].detach().double() for n in ("mu", "logvar", "dz"))
    expect_shape = (case.batch, case.latent) if case.k == 1 else (case.k, case.batch, case.latent)
    if tuple(z.shape) != expect_shape:
        raise AgreementError(f"{name}: z has shape {tuple(z.shape)}, expected {expect_shape}")
    eps = (z - mu) / torch.exp(0.5 * lv)
    n = eps.numel()
    # bf16 z rounds eps by about |z| / std * 2^-8; allow for it beyond sampling noise.
    slack = 0.0 if case.dtype in (torch.float32, torch.float64) else 0.05
    mean, var = eps.mean().item(), eps.var().item()
    if abs(mean) > 6 / math.sqrt(n) + slack or abs(var - 1) > 6 * math.sqrt(2 / n) + slack:
        raise AgreementError(f"{name}: (z - mu)/std has mean {mean:.4g} and variance "
                             f"{var:.4g} over {n} draws; eps ~ N(0, 1) gives 0 and 1")
    dims = (0,) if case.k > 1 else ()
    want_mu = dz.sum(dims) if dims else dz
    prod = 0.5 * dz * (z - mu)
    want_lv = prod.sum(dims) if dims else prod
    _assert_close(f"{name}: dmu", g_mu, want_mu, case.dtype)
    _assert_close(f"{name}: dlogvar", g_lv, want_lv, case.dtype)


def _iwae_inputs(case: Case, gen: torch.Generator) -> dict:
    d = _data_inputs(case, gen, grad=True)
    dev, dt, k = case.device, case.dtype, case.k
    recon_k = 2.0 * torch.randn(k, case.batch, case.dim, generator=gen, device=dev)
    mu, lv = d["mu"].detach().float(), d["logvar"].detach().float()
    eps = torch.randn(k, case.batch, case.latent, generator=gen, device=dev)
    z_k = mu + torch.exp(0.5 * lv) * eps
    return {"x": d["x"], "recon_k": _leaf(recon_k.to(dt), True), "mu": d["mu"],
            "logvar": d["logvar"], "z_k": _leaf(z_k.to(dt), True)}


def _iwae_variants() -> Dict[str, Variant]:
    names = ("x", "recon_k", "mu", "logvar", "z_k")

    def make(get_fn):
        return lambda case, inputs: _loss_step(get_fn(), inputs, names, True)

    return _with_aten({
        "eager": Variant("eager", make(lambda: eager_iwae_loss)),
        "distributions": Variant("distributions", make(lambda: distributions_iwae_loss)),
        "compile": Variant("compile", make(lambda: compiled(eager_iwae_loss))),
        "fastvae-torch": Variant("fastvae-torch", make(lambda: fastvae_iwae_loss("torch"))),
        "fastvae-triton": Variant("fastvae-triton", make(lambda: fastvae_iwae_loss("triton")),
                                  cuda_only=True),
    })


def image_shape(dim: int) -> Tuple[int, int, int]:
    """(C, H, W) for the ConvVAE: MNIST's 1x28x28 for 784, CIFAR's 3x32x32 for 3072."""
    known = {784: (1, 28, 28), 3072: (3, 32, 32)}
    if dim in known:
        return known[dim]
    side = math.isqrt(dim)
    if side * side != dim:
        raise ValueError(f"train_conv needs D = H*W (a square) or 3072, got D={dim}")
    return (1, side, side)


def _train_inputs(case: Case, gen: torch.Generator) -> dict:
    from . import models  # imported here: models are only needed by the training step

    torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=gen)))
    if case.op == "train_mlp":  # pytorch/examples' MNIST VAE: D -> 400 -> L
        model = models.VAE(data_shape=(case.dim,), latent_dim=case.latent, hidden=(400,))
        data_shape = (case.dim,)
    else:
        data_shape = image_shape(case.dim)
        model = models.ConvVAE(data_shape=data_shape, latent_dim=case.latent)
    model = model.to(device=case.device, dtype=case.dtype)
    x = torch.rand((case.batch,) + data_shape, generator=gen, device=case.device)
    return {"x": x.to(case.dtype), "model": model, "seed": 1234}


def train_step_builder(get_loss: Callable, backend: str, own_rng: bool = False):
    """A training-step variant's ``build``: one Adam step of a copy of the case's
    model, on ``backend``, with the loss ``get_loss()`` computed from its outputs.
    ``own_rng``: the backend's sampler does not draw from torch's stream, so the
    checked first step draws z with the eager sampler instead."""
    def build(case, inputs):
        x, model = inputs["x"], copy.deepcopy(inputs["model"])
        loss_fn = get_loss()
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        params = list(model.parameters())

        def run(eager_noise):
            opt.zero_grad(set_to_none=True)
            if eager_noise:  # the same z as eager's, from torch's RNG stream
                mu, logvar = model.encode(x)
                z = fastvae.reparameterize(mu, logvar, backend="reference")
                recon = model.decode(z)
            else:
                recon, mu, logvar, _ = model(x, backend=backend)
            loss = loss_fn(x, recon, mu, logvar)
            loss.backward()
            opt.step()
            return (loss.detach(), *(p.grad for p in params))

        def step():
            return run(False)
        step.release = lambda: opt.zero_grad(set_to_none=True)
        if own_rng:
            # Triton draws eps from in-kernel Philox, not torch.randn: its first
            # (checked) step uses eager's noise; the sampler has its own check.
            step.check_step = lambda: run(True)
        return step
    return build


def _train_variants() -> Dict[str, Variant]:
    """One Adam step. ``eager``/``distributions``/``compile`` draw z with the eager
    reparameterization (backend "reference") and compute their own loss from the
    model's outputs; ``fastvae-*`` run the model on the fused backend end to end."""

    make = train_step_builder
    return {
        "eager": Variant("eager", make(lambda: eager_loss, "reference")),
        "distributions": Variant("distributions", make(lambda: distributions_loss, "reference")),
        "compile": Variant("compile", make(lambda: compiled(eager_loss), "reference")),
        "fastvae-torch": Variant("fastvae-torch", make(lambda: fastvae_loss("torch"), "torch")),
        "fastvae-triton": Variant("fastvae-triton",
                                  make(lambda: fastvae_loss("triton"), "triton", own_rng=True),
                                  cuda_only=True),
    }


OPS: Dict[str, Op] = {
    "elbo": Op("elbo", "ELBO forward+backward",
               lambda c, g: _data_inputs(c, g, grad=True), _elbo_variants(True)),
    "elbo_eval": Op("elbo_eval", "ELBO forward only (evaluation)",
                    lambda c, g: _data_inputs(c, g, grad=False), _elbo_variants(False)),
    "reparameterize": Op("reparameterize", "reparameterization forward+backward",
                         _reparam_inputs, _reparam_variants(), uses_k=True,
                         self_check=check_reparameterize),
    "iwae": Op("iwae", "IWAE bound forward+backward", _iwae_inputs, _iwae_variants(),
               uses_k=True),
    "train_mlp": Op("train_mlp", "MLP VAE training step (Adam)", _train_inputs,
                    _train_variants()),
    "train_conv": Op("train_conv", "Conv VAE training step (Adam)", _train_inputs,
                     _train_variants()),
}
VARIANT_ORDER = ("eager", "distributions", "compile", "fastvae-torch", "fastvae-aten",
                 "fastvae-triton")


def variant_names(op: str, device: str = "cpu") -> List[str]:
    """The variants of ``op`` that can run on ``device`` (triton needs CUDA and triton;
    ``fastvae-aten``, the C kernel's fallback, is a CPU variant)."""
    cuda = torch.device(device).type == "cuda"
    return [n for n, v in OPS[op].variants.items()
            if not (v.cuda_only and not (cuda and fastvae.triton_available()))
            and not (v.cpu_only and cuda)]


# -- the bytes each op must move (the roofline's numerator) --------------------------

def bytes_moved(case: Case) -> Optional[int]:
    """Bytes a fused implementation must read and write, at the case's dtype.

    elbo (fwd+bwd, gradients made in the forward pass): read x, recon, mu, logvar;
    write d recon, d mu, d logvar: ``3BD + 4BL`` elements. elbo_eval: ``2BD + 2BL``.
    reparameterize with in-kernel noise: forward reads mu, logvar and writes z
    (``2BL + KBL``); backward reads dz and logvar and writes dmu, dlogvar
    (``KBL + 3BL``). iwae: read x, recon_k, z_k, mu, logvar; write d recon_k, d z_k,
    d mu, d logvar: ``BD + 2KBD + 2KBL + 4BL``. Training steps are matmul-bound: None.
    """
    b, d, l, k = case.batch, case.dim, case.latent, case.k
    size = torch.tensor([], dtype=case.dtype).element_size()
    elements = {
        "elbo": 3 * b * d + 4 * b * l,
        "elbo_eval": 2 * b * d + 2 * b * l,
        "reparameterize": 5 * b * l + 2 * k * b * l,
        "iwae": b * d + 2 * k * b * d + 2 * k * b * l + 4 * b * l,
    }.get(case.op)
    return None if elements is None else elements * size


# -- checking -------------------------------------------------------------------------

def _assert_close(what: str, got, want, dtype) -> None:
    if got is None or want is None:
        if got is not want:
            raise AgreementError(f"{what}: one side has no value (got {got!r}, want {want!r})")
        return
    if tuple(got.shape) != tuple(want.shape):
        raise AgreementError(f"{what}: shape {tuple(got.shape)}, expected {tuple(want.shape)}")
    rtol, atol_frac = TOLERANCES.get(dtype, TOLERANCES[torch.float32])
    g, w = got.detach().double(), want.detach().double()
    scale = w.abs().max().item() if w.numel() else 0.0
    atol = atol_frac * max(scale, 1e-30)
    if not torch.isfinite(g).all():
        raise AgreementError(f"{what}: non-finite values")
    err = (g - w).abs()
    bad = err > atol + rtol * w.abs()
    if bool(bad.any()):
        i = int(torch.argmax((err - atol - rtol * w.abs()).flatten()))
        raise AgreementError(
            f"{what}: {int(bad.sum())} of {w.numel()} values differ beyond rtol={rtol}, "
            f"atol={atol:.3g}; worst at flat index {i}: {g.flatten()[i].item():.6g} vs "
            f"{w.flatten()[i].item():.6g}")


def _low_precision(dtype) -> bool:
    return dtype in (torch.bfloat16, torch.float16)


def check_agreement(case: Case, inputs: dict, outputs: Dict[str, tuple],
                    reference: Optional[tuple] = None) -> None:
    """Raise :class:`AgreementError` unless every variant matches ``eager`` (or, for
    samplers, passes :func:`check_reparameterize`).

    In bf16/fp16, ``reference`` is eager run in fp32 on the same (upcast) inputs, and
    each variant's error against it may be at most twice eager's own same-dtype error
    (flash-attention's rule), or the dtype's tolerance if that is larger: eager in
    bf16 is itself far from exact (an IWAE's log-weights summed in bf16 are off by
    nats), so "close to eager" would be the wrong test.
    """
    op = OPS[case.op]
    if op.self_check is not None:
        for name, out in outputs.items():
            op.self_check(case, inputs, out, name)
        return
    if reference is not None:
        _check_against_fp32(case, outputs, reference)
        return
    ref = outputs["eager"]
    for name, out in outputs.items():
        if name == "eager":
            continue
        if len(out) != len(ref):
            raise AgreementError(f"{name}: returned {len(out)} tensors, eager {len(ref)}")
        for i, (g, w) in enumerate(zip(out, ref)):
            what = "loss" if i == 0 else f"gradient #{i}"
            _assert_close(f"{case.op} {case.shape} {case.dtype_name}: {name} vs eager, {what}",
                          g, w, case.dtype)


def _check_against_fp32(case: Case, outputs: Dict[str, tuple], reference: tuple) -> None:
    """Low precision: each output's relative L2 error against eager in fp32 may be at
    most ``max(2 x eager's own, the dtype's rtol)`` (norm-wise, since a bf16 training
    step's gradients scatter element by element through ReLUs and convolutions)."""
    floor = TOLERANCES.get(case.dtype, TOLERANCES[torch.bfloat16])[0]

    def rel_err(got, want):
        if got is None or want is None:
            return 0.0 if got is want else math.inf
        if tuple(got.shape) != tuple(want.shape):
            return math.inf
        g, w = got.detach().double(), want.detach().double()
        if not torch.isfinite(g).all():
            return math.inf
        if not w.numel():
            return 0.0
        return (torch.linalg.vector_norm(g - w) / torch.linalg.vector_norm(w).clamp_min(1e-30)
                ).item()

    eager_err = [rel_err(g, w) for g, w in zip(outputs["eager"], reference)]
    for name, out in outputs.items():
        if len(out) != len(reference):
            raise AgreementError(f"{name}: returned {len(out)} tensors, eager {len(reference)}")
        for i, (g, w) in enumerate(zip(out, reference)):
            e, bound = rel_err(g, w), max(2 * eager_err[i], floor)
            if e > bound:
                what = "loss" if i == 0 else f"gradient #{i}"
                raise AgreementError(
                    f"{case.op} {case.shape} {case.dtype_name}: {name}, {what}: relative error "
                    f"{e:.4g} against eager in fp32, over max(2 x eager's own "
                    f"{case.dtype_name} error {eager_err[i]:.4g}, {floor})")


def _upcast_inputs(inputs: dict) -> dict:
    out = {}
    for k, v in inputs.items():
        if isinstance(v, torch.Tensor):
            out[k] = _leaf(v.detach().float(), v.requires_grad)
        elif isinstance(v, torch.nn.Module):
            out[k] = copy.deepcopy(v).float()
        else:
            out[k] = v
    return out


# -- measuring -----------------------------------------------------------------------

def _sync(device: str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def _timed(step: Callable, device: str, clock: Callable[[], float] = time.perf_counter,
           inner: int = 1) -> Tuple[float, tuple]:
    """Seconds per call of ``inner`` back-to-back calls between two syncs, and the
    last call's output."""
    _sync(device)
    t0 = clock()
    for _ in range(inner):
        out = step()
    _sync(device)
    return (clock() - t0) / inner, out


# A GPU sample is several back-to-back calls, as in a training loop: the host's launch
# work for one call overlaps the GPU's work on the one before, and the two syncs' fixed
# cost (tens of microseconds, a tenth of a fused ELBO step at B=65536) is spread out.
CUDA_SAMPLE_S = 0.02   # about this long per sample, for the slowest variant
CUDA_MAX_INNER = 10


def inner_calls(device: str, slowest_s: float) -> int:
    """Calls per timed sample: 1 on the CPU; on a GPU enough to fill CUDA_SAMPLE_S."""
    if torch.device(device).type != "cuda":
        return 1
    return max(1, min(CUDA_MAX_INNER, int(CUDA_SAMPLE_S / max(slowest_s, 1e-6))))


def time_interleaved(steps: Dict[str, Callable], device: str, reps: int,
                     clock: Callable[[], float] = time.perf_counter,
                     inner: int = 1) -> Dict[str, List[float]]:
    """``reps`` rounds; each round runs every variant once (``inner`` calls, see
    :func:`_timed`), starting one further along the list each round, so drift and noise
    hit all variants alike. ``clock``: wall clock, or ``time.thread_time`` (see
    :func:`check_cpu_time`)."""
    names = list(steps)
    times: Dict[str, List[float]] = {n: [] for n in names}
    for r in range(reps):
        for j in range(len(names)):
            n = names[(r + j) % len(names)]
            dt, out = _timed(steps[n], device, clock, inner)
            del out
            times[n].append(dt)
    return times


@contextlib.contextmanager
def count_saved():
    """Yields a dict whose ``"bytes"`` becomes the size of the distinct storages
    autograd saves for backward inside the block (``saved_tensors_hooks``)."""
    storages: Dict[Tuple[int, str], int] = {}
    result = {"bytes": 0}

    def pack(t):
        s = t.untyped_storage()
        storages[(s.data_ptr(), str(t.device))] = s.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        yield result
    result["bytes"] = sum(storages.values())


def saved_bytes(step: Callable) -> int:
    """Bytes of the distinct storages autograd saves for backward during ``step``."""
    with count_saved() as saved:
        step()
    return saved["bytes"]


_NON_COMPUTE = {"aten::" + n for n in (
    "view", "reshape", "_reshape_alias", "as_strided", "expand", "expand_as", "unsqueeze",
    "squeeze", "select", "slice", "t", "transpose", "permute", "alias", "detach", "detach_",
    "empty", "empty_like", "empty_strided", "to", "result_type", "lift_fresh", "chunk",
    "split", "unbind", "narrow", "_unsafe_view", "flatten", "numpy_T", "resize_",
    "set_", "is_nonzero", "item", "_local_scalar_dense", "contiguous")}


def extras(step: Callable, device: str) -> Tuple[Optional[int], int, Optional[int]]:
    """(peak extra bytes allocated during ``step``, bytes saved for backward, kernels).

    The previous call's gradients are freed first (``step.release``), so the peak
    counts everything the step allocates and holds at once, its new gradients
    included. CUDA: ``max_memory_allocated`` above the start, and kernel launches
    seen by the profiler. CPU: the running sum of the allocator's events under the
    profiler (it sees inductor's buffers, unlike a dispatch mode), and the leaf aten
    ops that do work plus inductor's C++ kernels. One profiled call (plus one on CUDA).
    """
    from torch.profiler import ProfilerActivity, profile

    is_cuda = torch.device(device).type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if is_cuda else [])
    # Free the previous call's gradients first: frees inside the window of memory
    # allocated before it would otherwise offset (some of) the new allocations.
    release = getattr(step, "release", lambda: None)
    peak = None
    if is_cuda:
        release()
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        step()
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - base
    release()
    _sync(device)
    with _quiet_stderr(), profile(activities=activities, profile_memory=not is_cuda) as prof:
        with count_saved() as saved:
            step()
        _sync(device)
    if is_cuda:
        kernels = sum(1 for e in prof.profiler.kineto_results.events()
                      if e.device_type() == torch.autograd.DeviceType.CUDA)
        return peak, saved["bytes"], kernels
    mem = sorted((e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"),
                 key=lambda e: e.start_ns())
    cur = peak = 0
    for e in mem:
        cur += e.nbytes()
        peak = max(peak, cur)
    kernels = 0
    for e in prof.events():
        name = e.name
        if "cpp_fused" in name or "cpp_kernel" in name:  # inductor's, e.g. graph_0_cpp_fused_*
            kernels += 1
        elif (name.startswith("aten::") and name not in _NON_COMPUTE
              and not any(c.name.startswith("aten::") for c in e.cpu_children)):
            kernels += 1
    return peak, saved["bytes"], kernels


@contextlib.contextmanager
def _quiet_stderr():
    """Silence the profiler's C++ chatter on fd 2 (it bypasses sys.stderr)."""
    try:
        fd = sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):
        yield
        return
    sys.stderr.flush()
    saved = os.dup(fd)
    with open(os.devnull, "w") as devnull:
        os.dup2(devnull.fileno(), fd)
    try:
        yield
    finally:
        os.dup2(saved, fd)
        os.close(saved)


def copy_bandwidth(device: str, nbytes: int = 256 << 20, reps: int = 10) -> float:
    """Measured copy bandwidth in bytes/s (reads + writes) on ``device``: the roofline."""
    n = nbytes // 4
    src = torch.ones(n, device=device)
    dst = torch.empty_like(src)
    dst.copy_(src)
    inner = inner_calls(device, _timed(lambda: dst.copy_(src), device)[0])
    times = [_timed(lambda: dst.copy_(src), device, inner=inner)[0] for _ in range(reps)]
    return 2 * n * 4 / statistics.median(times)


# -- running a case ------------------------------------------------------------------

@dataclass
class Prepared:
    """A case with its inputs, one built step per variant, warmed up and checked."""

    case: Case
    inputs: dict
    steps: Dict[str, Callable]
    first_call_s: Dict[str, float]


def prepare(case: Case, variants: Optional[Sequence[str]] = None, *, seed: int = 0,
            extra_variants: Optional[Dict[str, Variant]] = None, warmup: int = 1,
            check: bool = True) -> Prepared:
    """Build every variant's step on shared inputs, time the first call (the compile
    of ``compile``), warm up, and check agreement (raises :class:`AgreementError`).

    ``extra_variants`` adds variants beyond :data:`OPS`' (tests inject a wrong one).
    ``eager`` always runs: it is the reference of the check and of the ratios.
    """
    op = OPS[case.op]
    names = variant_names(case.op, case.device) if variants is None else list(variants)
    table = dict(op.variants, **(extra_variants or {}))
    names = ["eager"] + [n for n in names if n != "eager"] + [
        n for n in (extra_variants or {}) if n not in names]
    for n in names:
        if n not in table:
            raise ValueError(f"unknown variant {n!r} for op {case.op!r}; have {sorted(table)}")
    gen = torch.Generator(device="cpu").manual_seed(seed)
    inputs = op.make_inputs(case, gen) if case.device == "cpu" else _on_device(op, case, seed)
    steps = {n: table[n].build(case, inputs) for n in names}
    first, outputs = {}, {}
    for n in names:
        # The first call is checked: every variant starts from the same inputs (and, for
        # training steps, the same weights and the same seed, hence the same noise).
        torch.manual_seed(inputs.get("seed", seed))
        first[n], out = _timed(getattr(steps[n], "check_step", steps[n]), case.device)
        if check:  # keep a copy: later calls of the same step may reuse the buffers
            outputs[n] = tuple(None if t is None else t.detach().clone() for t in out)
        del out
        # A call of over a second is its own warm-up (caches and allocator are hot
        # after it); compile's first call compiles, so it always gets one more.
        slow = first[n] > 1.0 and n != "compile"
        for _ in range(0 if slow else warmup):
            _timed(steps[n], case.device)
    if check:
        reference = None
        if _low_precision(case.dtype) and op.self_check is None:
            ref_case = dataclasses.replace(case, dtype=torch.float32)
            ref_step = table["eager"].build(ref_case, _upcast_inputs(inputs))
            torch.manual_seed(inputs.get("seed", seed))
            reference = tuple(None if t is None else t.detach().clone() for t in ref_step())
            del ref_step
        try:
            check_agreement(case, inputs, outputs, reference)
        finally:
            outputs.clear()
    return Prepared(case, inputs, steps, first)


def _on_device(op: Op, case: Case, seed: int) -> dict:
    # Inputs are drawn on the CPU generator, then moved: identical data on any device.
    cpu = dataclasses.replace(case, device="cpu")
    gen = torch.Generator(device="cpu").manual_seed(seed)
    inputs = op.make_inputs(cpu, gen)
    out = {}
    for k, v in inputs.items():
        if isinstance(v, torch.Tensor):
            out[k] = _leaf(v.to(case.device), v.requires_grad)
        elif isinstance(v, torch.nn.Module):
            out[k] = v.to(case.device)
        else:
            out[k] = v
    return out


def measure(prepared: Prepared, *, reps: int = 10, budget_s: float = 1.0, min_reps: int = 5,
            with_extras: bool = True, bandwidth: Optional[float] = None,
            cpu_time: bool = False) -> List[dict]:
    """Time the prepared variants interleaved and return one row per variant.

    The number of rounds is ``reps``, lowered towards ``min_reps`` so that each
    variant's timed calls take about ``budget_s`` (big shapes on 2 cores).
    ``cpu_time``: time the calling thread's CPU time, not the wall clock."""
    case, steps = prepared.case, prepared.steps
    if torch.device(case.device).type == "cuda":  # first calls there include Triton's JIT
        slowest = max(_timed(step, case.device)[0] for step in steps.values())
    elif len(steps) > 1:
        slowest = max(prepared.first_call_s[n] for n in steps if n != "compile")
    else:
        slowest = max(prepared.first_call_s.values())
    inner = inner_calls(case.device, slowest)
    rounds = max(min_reps, min(reps, int(budget_s / max(slowest * inner, 1e-6))))
    if cpu_time:
        check_cpu_time(case.device)
    times = time_interleaved(steps, case.device, rounds,
                             time.thread_time if cpu_time else time.perf_counter, inner)
    med = {n: statistics.median(ts) for n, ts in times.items()}
    moved = bytes_moved(case)
    rows = []
    for n in steps:
        row = {
            "op": case.op, "variant": n, "batch": case.batch, "dim": case.dim,
            "latent": case.latent, "k": case.k if OPS[case.op].uses_k else None,
            "dtype": case.dtype_name, "device": case.device, "shape": case.shape,
            "median_ms": med[n] * 1e3, "rounds": rounds, "calls_per_sample": inner,
            "clock": "cpu" if cpu_time else "wall",
            "min_ms": min(times[n]) * 1e3, "max_ms": max(times[n]) * 1e3,
            "first_call_ms": prepared.first_call_s[n] * 1e3,
            "speedup_vs_eager": med["eager"] / med[n] if "eager" in med else None,
            "speedup_vs_compile": med["compile"] / med[n] if "compile" in med else None,
            # The same ratio taken within each round, then the median: variants that
            # ran back to back share the machine's load, so this one is steadier.
            "paired_speedup_vs_eager": _paired(times, "eager", n),
            "paired_speedup_vs_compile": _paired(times, "compile", n),
            "times_ms": [t * 1e3 for t in times[n]],
            "peak_extra_bytes": None, "saved_bytes": None, "kernels": None,
            "bytes_moved": moved, "gbps": None, "pct_roofline": None,
        }
        if moved is not None:
            row["gbps"] = moved / med[n] / 1e9
            if bandwidth:
                row["pct_roofline"] = 100.0 * moved / med[n] / bandwidth
        if with_extras:
            row["peak_extra_bytes"], row["saved_bytes"], row["kernels"] = extras(
                steps[n], case.device)
        rows.append(row)
    return rows


def check_cpu_time(device: str) -> None:
    """CPU time of the calling thread is the work only when that thread does all of it:
    a CPU run with one torch thread. Raises ``ValueError`` otherwise."""
    if torch.device(device).type != "cpu" or torch.get_num_threads() != 1:
        raise ValueError(f"--cpu-time times the calling thread: it needs device cpu and "
                         f"--threads 1 (have {device}, {torch.get_num_threads()} threads)")


def _paired(times: Dict[str, List[float]], base: str, n: str) -> Optional[float]:
    if base not in times:
        return None
    return statistics.median(b / t for b, t in zip(times[base], times[n]))


def run_case(case: Case, variants=None, **kw) -> List[dict]:
    """prepare + measure, freeing the case's tensors before returning."""
    prep_kw = {k: kw.pop(k) for k in ("seed", "extra_variants", "warmup", "check") if k in kw}
    prepared = prepare(case, variants, **prep_kw)
    try:
        return measure(prepared, **kw)
    finally:
        del prepared


# -- grids ---------------------------------------------------------------------------

def cases(ops: Sequence[str], batches: Sequence[int], dims: Sequence[int],
          latents: Sequence[int], *, dtypes: Sequence[torch.dtype] = (torch.float32,),
          device: str = "cpu", k_reparam: Sequence[int] = (1, 16),
          k_iwae: Sequence[int] = (5, 50), max_elements: Optional[int] = None,
          skipped: Optional[list] = None) -> List[Case]:
    """The cartesian grid, minus cases whose largest tensor exceeds ``max_elements``
    (appended to ``skipped``) and shapes that do not apply (reparameterize has no D:
    it runs at the first D only)."""
    out = []
    for op in ops:
        if op not in OPS:
            raise ValueError(f"unknown op {op!r}; have {list(OPS)}")
        ks = {"reparameterize": k_reparam, "iwae": k_iwae}.get(op, (1,))
        op_dims = dims[:1] if op == "reparameterize" else dims
        for dt in dtypes:
            for d in op_dims:
                for l in latents:
                    for k in ks:
                        for b in batches:
                            c = Case(op, b, d, l, k, dt, device)
                            if max_elements is not None and c.largest_elements() > max_elements:
                                if skipped is not None:
                                    skipped.append(c)
                                continue
                            out.append(c)
    return out


def suite_cases(op: str, device: Optional[str] = None) -> List[Case]:
    """The pytest-benchmark grid of ``op``: B in {256, 4096, 32768} (+65536 on CUDA),
    D in {784, 3072}, L in {32, 128}, fp32 (+bf16 on CUDA), K per the op. Cases whose
    largest tensor exceeds ``FASTVAE_BENCH_MAX_ELEMENTS`` are left out (default 2**27,
    512 MiB of fp32, on CPU; 2**29 on CUDA, as ``fastvae bench``: IWAE K=50 at B=65536,
    D=3072 would need 40 GB a tensor, several times over), and so is the Conv training
    step above B=4096 on CPU (tens of seconds a step on 2 cores)."""
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    cuda = torch.device(device).type == "cuda"
    batches = [256, 4096, 32768] + ([65536] if cuda else [])
    if op == "train_conv" and not cuda:
        batches = [256, 4096]
    dtypes = [torch.float32, torch.bfloat16] if cuda else [torch.float32]
    max_el = int(os.environ.get("FASTVAE_BENCH_MAX_ELEMENTS", 1 << 29 if cuda else 1 << 27))
    return cases([op], batches, [784, 3072], [32, 128], dtypes=dtypes, device=device,
                 max_elements=max_el)


def run_benchmark(benchmark, prepared: Prepared, variant: str, budget_s: float = 2.0) -> None:
    """Time one prepared variant with pytest-benchmark's ``benchmark`` fixture.

    The case was warmed up and checked by :func:`prepare` (an :class:`AgreementError`
    fails the fixture, hence every variant of the case). Rounds: about ``budget_s``
    of calls, at least 3, at most 20. On a GPU a round is up to 10 back-to-back calls
    and one sync (``calls_per_round`` in ``extra_info``), like :func:`measure`'s samples."""
    import pytest

    if variant not in prepared.steps:
        pytest.skip(f"{variant} does not run on {prepared.case.device}")
    case = prepared.case
    benchmark.group = f"{case.op} {case.shape} {case.dtype_name} {case.device}"
    first = prepared.first_call_s[variant]
    benchmark.extra_info.update(
        op=case.op, shape=case.shape, dtype=case.dtype_name, first_call_ms=first * 1e3,
        bytes_moved=bytes_moved(case), saved_bytes=saved_bytes(prepared.steps[variant]))
    step, inner = prepared.steps[variant], 1
    if torch.device(case.device).type != "cuda":
        warm = min(first, prepared.first_call_s["eager"] * 4) if variant == "compile" else first
    else:
        warm = _timed(step, case.device)[0]  # first calls there include Triton's JIT
        inner = inner_calls(case.device, warm)
        calls = itertools.count(1)

        def step():  # noqa: F811 - as measure()'s samples: `inner` calls, then one sync
            out = prepared.steps[variant]()
            if next(calls) % inner == 0:
                torch.cuda.synchronize()
            return out
    benchmark.extra_info["calls_per_round"] = inner
    rounds = max(3, min(20, int(budget_s / max(warm * inner, 1e-6))))
    benchmark.pedantic(step, rounds=rounds, iterations=inner, warmup_rounds=1)


# -- reporting -----------------------------------------------------------------------

COLUMNS = ("variant", "op", "shape", "dtype", "median ms", "x eager", "x compile",
           "peak MB", "saved MB", "kernels", "GB/s", "% roof")


def _fmt(v, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def table_rows(rows: List[dict]) -> List[List[str]]:
    mb = 1 / 2**20
    out = []
    for r in rows:
        out.append([
            r["variant"], r["op"], r["shape"], r["dtype"], _fmt(r["median_ms"], ".3f"),
            _fmt(r["speedup_vs_eager"], ".2f"), _fmt(r["speedup_vs_compile"], ".2f"),
            _fmt(None if r["peak_extra_bytes"] is None else r["peak_extra_bytes"] * mb, ".1f"),
            _fmt(None if r["saved_bytes"] is None else r["saved_bytes"] * mb, ".1f"),
            _fmt(r["kernels"], "d"), _fmt(r["gbps"], ".1f"), _fmt(r["pct_roofline"], ".1f"),
        ])
    return out


def format_table(rows: List[dict], markdown: bool = False) -> str:
    """One table, a row per (case, variant): speed-ups are eager (or compile) median
    over this variant's median, so > 1 is faster."""
    body = table_rows(rows)
    if markdown:
        lines = ["| " + " | ".join(COLUMNS) + " |",
                 "|" + "|".join("---" if i < 4 else "---:" for i in range(len(COLUMNS))) + "|"]
        lines += ["| " + " | ".join(r) + " |" for r in body]
        return "\n".join(lines)
    widths = [max(len(c), *(len(r[i]) for r in body)) if body else len(c)
              for i, c in enumerate(COLUMNS)]
    def line(cells):
        return "  ".join(c.ljust(w) if i < 4 else c.rjust(w)
                         for i, (c, w) in enumerate(zip(cells, widths)))
    return "\n".join([line(COLUMNS), line(["-" * w for w in widths])] + [line(r) for r in body])


def format_first_calls(rows: List[dict]) -> str:
    """The untimed-in-the-table first calls: compile time of ``compile``, warm-up of the rest."""
    lines = ["first call (compile for 'compile'; not in the medians):"]
    for r in rows:
        if r["variant"] == "compile":
            eager = next((q for q in rows if q["op"] == r["op"] and q["shape"] == r["shape"]
                          and q["dtype"] == r["dtype"] and q["variant"] == "eager"), None)
            lines.append(f"  {r['op']:<15} {r['shape']:<28} {r['dtype']}: compile "
                         f"{r['first_call_ms'] / 1e3:.2f} s"
                         + (f" (eager first call {eager['first_call_ms']:.1f} ms)"
                            if eager else ""))
    return "\n".join(lines) if len(lines) > 1 else ""


def processor_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment(device: str) -> dict:
    env = {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "processor": processor_name(), "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
        "python": platform.python_version(), "fastvae": fastvae.__version__,
        "device": device, "command": " ".join(["fastvae bench"] + sys.argv[1:]),
    }
    if torch.device(device).type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
    else:  # whether fastvae-torch runs the compiled C row kernel or its aten fallback
        from .backends.torch_backend import native as _native
        _native.load()
        env["native_kernel"] = _native.status()
    return env


def plot(rows: List[dict], path: str) -> None:
    """Speed-up vs eager against batch size, a line per variant, a panel per
    (op, D, L, K, dtype)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups: Dict[tuple, List[dict]] = {}
    for r in rows:
        groups.setdefault((r["op"], r["dim"], r["latent"], r["k"], r["dtype"]), []).append(r)
    n = max(1, len(groups))
    cols = min(3, n)
    nrows = math.ceil(n / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(5 * cols, 3.6 * nrows), squeeze=False)
    for ax, ((op, d, l, k, dt), rs) in zip(axes.flat, sorted(groups.items(), key=str)):
        for v in VARIANT_ORDER:
            pts = sorted((r["batch"], r["speedup_vs_eager"]) for r in rs if r["variant"] == v)
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=v)
        ax.set_xscale("log", base=2)
        ax.axhline(1.0, color="grey", lw=0.8, ls="--")
        shape = rs[0]["shape"].split(" ", 1)[1]  # the case's shape without its B
        ax.set_title(f"{op} {shape} {dt}", fontsize=9)
        ax.set_xlabel("batch size B")
        ax.set_ylabel("speed-up vs eager")
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# -- command line --------------------------------------------------------------------

# Per-op shapes (batch, dim, latent, k) when no shape flag is given. The CPU default
# leaves out what takes minutes a call on 2 cores (Conv steps above B=256, IWAE above
# B=4096); ``--batch`` etc. override every op's list; the pytest suites run the full grid.
QUICK = {
    "elbo": dict(batch=[4096], dim=[784]),
    "elbo_eval": dict(batch=[4096], dim=[784]),
    "reparameterize": dict(batch=[4096], k=[16]),
    "iwae": dict(batch=[256], dim=[784], k=[5]),
    "train_mlp": dict(batch=[4096], dim=[784]),
}
DEFAULT_CPU = {
    "elbo": dict(batch=[256, 4096, 32768], dim=[784, 3072]),
    "elbo_eval": dict(batch=[256, 4096, 32768], dim=[784, 3072]),
    "reparameterize": dict(batch=[256, 4096, 32768], k=[1, 16]),
    "iwae": dict(batch=[256, 4096], dim=[784], k=[5, 50]),
    "train_mlp": dict(batch=[256, 4096, 32768], dim=[784]),
    "train_conv": dict(batch=[256], dim=[784]),
}
# On a GPU every case compiles its `compile` variant (5-10 s): the default stays at
# about 25 cases so a run fits in minutes; the pytest suites hold the full grid.
DEFAULT_CUDA = {
    "elbo": dict(batch=[4096, 65536], dim=[784, 3072]),
    "elbo_eval": dict(batch=[65536], dim=[784, 3072]),
    "reparameterize": dict(batch=[65536], k=[1, 16]),
    "iwae": dict(batch=[4096], dim=[784], k=[5, 50]),
    "train_mlp": dict(batch=[4096, 65536], dim=[784]),
    "train_conv": dict(batch=[4096], dim=[784]),
}
QUICK_CUDA = {
    "elbo": dict(batch=[65536], dim=[784]),
    "reparameterize": dict(batch=[65536], k=[16]),
    "train_mlp": dict(batch=[65536], dim=[784]),
}


def grid_from_args(args: argparse.Namespace, device: str, skipped: list) -> List[Case]:
    """The cases ``run`` measures: the quick or default per-op shapes, with every shape
    flag given on the command line replacing that axis for all ops."""
    is_cuda = torch.device(device).type == "cuda"
    if args.quick:
        spec = QUICK_CUDA if is_cuda else QUICK
    else:
        spec = DEFAULT_CUDA if is_cuda else DEFAULT_CPU
    ops = args.ops or list(spec)
    dtypes = [DTYPES[d] for d in (args.dtype or (["fp32", "bf16"] if is_cuda else ["fp32"]))]
    max_el = args.max_elements if args.max_elements is not None else (
        1 << 29 if is_cuda else 1 << 27)
    out: List[Case] = []
    for op in ops:
        if op not in OPS:
            raise ValueError(f"unknown op {op!r}; have {list(OPS)}")
        s = spec.get(op, DEFAULT_CPU.get(op, {}))
        k_flag = {"reparameterize": args.k_reparam, "iwae": args.k_iwae}.get(op)
        out += cases([op], args.batch or s.get("batch", [4096]), args.dim or s.get("dim", [784]),
                     args.latent or s.get("latent", [32]), dtypes=dtypes, device=device,
                     k_reparam=k_flag or s.get("k", [1, 16]), k_iwae=k_flag or s.get("k", [5, 50]),
                     max_elements=max_el, skipped=skipped)
    return out


def _ints(s: str) -> List[int]:
    return [int(v) for v in s.split(",") if v]


def _strs(s: str) -> List[str]:
    return [v.strip() for v in s.split(",") if v.strip()]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``fastvae bench`` flags."""
    parser.add_argument("--quick", action="store_true",
                        help="a small subset (B=4096, D=784, L=32; IWAE at B=256 K=5; no Conv "
                             "step): under 2 minutes on 2 CPU cores")
    parser.add_argument("--ops", type=_strs, default=None,
                        help=f"comma list of {','.join(OPS)} (default: all)")
    parser.add_argument("--variants", type=_strs, default=None,
                        help=f"comma list of {','.join(VARIANT_ORDER)} (eager always runs)")
    parser.add_argument("--batch", type=_ints, default=None,
                        help="batch sizes for every op (default: per op, DEFAULT_CPU or "
                             "DEFAULT_CUDA in fastvae/bench.py)")
    parser.add_argument("--dim", type=_ints, default=None,
                        help="data dims D for every op (default: per op, 784 and/or 3072)")
    parser.add_argument("--latent", type=_ints, default=None,
                        help="latent dims L (default 32)")
    parser.add_argument("--k-reparam", type=_ints, default=None,
                        help="samples for reparameterize (default 1,16)")
    parser.add_argument("--k-iwae", type=_ints, default=None,
                        help="samples for iwae (default 5,50)")
    parser.add_argument("--dtype", type=_strs, default=None,
                        help="fp32 (CPU default), bf16, fp16 (GPU default fp32,bf16)")
    parser.add_argument("--device", default="auto", help="cpu, cuda or auto (default)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch.set_num_threads for the run (default: torch's, one per core)")
    parser.add_argument("--reps", type=int, default=None,
                        help="most interleaved rounds (default 15, quick 9)")
    parser.add_argument("--cpu-time", action="store_true",
                        help="time the calling thread's CPU time (time.thread_time) instead of "
                             "the wall clock: robust to other processes on a shared machine; "
                             "CPU only, needs --threads 1")
    parser.add_argument("--budget", type=float, default=None,
                        help="seconds of timed calls per variant per case; fewer rounds on big "
                             "shapes, never under 5 (default 1.5, quick 0.5)")
    parser.add_argument("--max-elements", type=int, default=None,
                        help="skip cases whose largest tensor has more elements "
                             "(default 2**27 on CPU, 2**29 on CUDA)")
    parser.add_argument("--no-extras", action="store_true",
                        help="skip memory, saved-bytes and kernel measurements")
    parser.add_argument("--json", metavar="FILE", default=None, help="write rows and environment")
    parser.add_argument("--plot", metavar="FILE.png", default=None,
                        help="speed-up vs batch size per variant (matplotlib)")
    parser.add_argument("--markdown", action="store_true", help="print the table as markdown")


def run(args: argparse.Namespace) -> int:
    """``fastvae bench``: run the chosen grid, print the table, write JSON / plot.
    Returns the exit status (0); an :class:`AgreementError` propagates."""
    measure_grid(args)
    return 0


def measure_grid(args: argparse.Namespace) -> List[dict]:
    """What :func:`run` does, returning the rows."""
    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if args.cpu_time:
        check_cpu_time(device)
    skipped: list = []
    grid = grid_from_args(args, device, skipped)
    reps = args.reps if args.reps is not None else (9 if args.quick else 15)
    budget = args.budget if args.budget is not None else (0.5 if args.quick else 1.5)
    env = environment(device)
    bw = copy_bandwidth(device)
    env["copy_bandwidth_gbps"] = bw / 1e9
    env["clock"] = "cpu (thread_time)" if args.cpu_time else "wall"
    head = (f"fastvae bench  {env['date']}  {env.get('gpu', env['processor'])}  "
            f"({env['cpu_count']} cores, {env['torch_threads']} threads)  torch {env['torch']}  "
            f"copy {bw / 1e9:.1f} GB/s  clock {env['clock']}")
    if "native_kernel" in env:
        head += f"\nC row kernel (fastvae-aten runs without it): {env['native_kernel']}"
    print(head, flush=True)
    rows: List[dict] = []
    t0 = time.perf_counter()
    for i, case in enumerate(grid):
        names = None
        if args.variants:
            names = [n for n in args.variants if n in variant_names(case.op, device)]
        print(f"[{i + 1}/{len(grid)}] {case.op} {case.shape} {case.dtype_name} ...",
              file=sys.stderr, flush=True)
        rows += run_case(case, names, reps=reps, budget_s=budget, with_extras=not args.no_extras,
                         bandwidth=bw, cpu_time=args.cpu_time)
    env["wall_s"] = time.perf_counter() - t0
    print(format_table(rows, markdown=args.markdown))
    first = format_first_calls(rows)
    if first:
        print(first)
    if skipped:
        print("skipped (largest tensor over --max-elements): "
              + "; ".join(f"{c.op} {c.shape}" for c in skipped))
    print(f"speed-ups are eager's (compile's) median over the variant's; {len(grid)} cases in "
          f"{env['wall_s']:.0f} s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"environment": env, "rows": rows,
                       "skipped": [dict(dataclasses.asdict(c), dtype=c.dtype_name)
                                   for c in skipped]}, f, indent=1)
    if args.plot:
        plot(rows, args.plot)
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="fastvae bench", description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
