"""What the fused ops keep for backward, as autograd sees it: the gradients their forward
wrote and the caller's inputs (higher orders recompute from them), both through
``save_for_backward``, like any op's saved inputs. So activation checkpointing drops and
recomputes the inputs, ``saved_tensors_hooks`` (``save_on_cpu``) see and may replace them,
and an input changed in place before backward is autograd's error.

Every case runs three times: the repeated calls of elbo, ELBOLoss and sample_with_kl take
the prepared route (``fastvae.ops.Route``), which saves what the op's own path saves.
"""
from __future__ import annotations

import weakref
from contextlib import nullcontext

import pytest
import torch
from torch.utils.checkpoint import checkpoint

import fastvae
from _backends import case_dtype
from _compare import assert_close, leaf

B, D, L = 4, 9, 3
OPS = ["elbo", "ELBOLoss", "iwae_bound", "kl_normal", "kl_standard_normal", "sample_with_kl",
       "gaussian_log_prob"]


def _loss(op, backend, x, act, mu, lv):
    """A scalar from ``op`` called on ``act`` (B, D), an activation nothing else holds
    (or views of it), and the leaves mu, lv (B, L)."""
    p_mu, p_lv = act[:, :L], 0.5 * act[:, L:2 * L]
    if op == "elbo":
        return fastvae.elbo(x, act, mu, lv, backend=backend)
    if op == "ELBOLoss":
        return fastvae.ELBOLoss(backend=backend)(x, act, mu, lv)
    if op == "iwae_bound":
        return fastvae.iwae_bound(x, torch.stack([act, 0.5 * act]), mu, lv,
                                  torch.stack([mu, 0.5 * mu]), reduction="mean",
                                  backend=backend)
    if op == "kl_normal":
        return fastvae.kl_normal(mu, lv, p_mu, p_lv, backend=backend).sum()
    if op == "kl_standard_normal":
        return fastvae.kl_standard_normal(p_mu, lv + act[:, L:2 * L], backend=backend).sum()
    if op == "sample_with_kl":
        z, kl = fastvae.sample_with_kl(mu, lv, p_mu, p_lv, backend=backend)
        return (z * z).sum() + kl.sum()
    return fastvae.gaussian_log_prob(x, act, lv[:, :1] - 0.1 * act.abs(), backend=backend).sum()


def _inputs(backend, dtype=torch.float64):
    dt = case_dtype(backend, dtype)
    x = torch.rand(B, D, dtype=dt)
    w, mu, lv = (leaf(torch.randn(*s, dtype=dt)) for s in ((L, D), (B, L), (B, L)))
    return x, w, mu, lv


def _first_and_second(op, backend, seed, x, w, mu, lv, wrap):
    """The loss's gradients w.r.t. (w, mu, lv) (from the fused first-order backward, then
    again as a graph: both must agree), and those of their squared norm (second order),
    with the activation act = mu @ w computed inside ``wrap(region)``."""
    refs = []

    def region(mu, lv):
        act = mu @ w
        refs.append(weakref.ref(act))
        return _loss(op, backend, x, act, mu, lv)

    torch.manual_seed(seed)   # sample_with_kl's eps: the same draws in every run
    loss = wrap(region)(mu, lv)
    alive = refs[0]() is not None   # (refcounts: no gc pass, which costs more than the case)
    plain = torch.autograd.grad(loss, (w, mu, lv), retain_graph=True)
    first = torch.autograd.grad(loss, (w, mu, lv), create_graph=True)
    for g, e in zip(plain, first):
        assert_close("first-order gradient, fused and recomputed", g, e.detach(), x.dtype)
    second = torch.autograd.grad(sum((g * g).sum() for g in first), (w, mu, lv))
    return alive, [g.detach() for g in first], list(second)


def _plain(region):
    return region


def _checkpointed(region):
    return lambda *a: checkpoint(region, *a, use_reentrant=False)


def _inside(context):
    """The wrap that runs a region inside ``context()``."""
    def wrap(region):
        def run(*a):
            with context():
                return region(*a)
        return run
    return wrap


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
@pytest.mark.parametrize("op", OPS)
def test_activation_checkpointing_drops_and_recomputes_the_inputs(seed, backend, cpu_path, op,
                                                                  dtype):
    """The activation an op was called on is freed after a checkpointed forward (it used to
    stay alive, held outside autograd's saved tensors) and recomputed for backward; the
    gradients, first and second order, are those of the plain call. Every dtype and CPU
    path: a backward that unpacked the saved tensors twice (kl_normal off the float32 C
    kernel) is an error under checkpointing."""
    x, w, mu, lv = _inputs(backend, dtype)
    for _ in range(3):
        held, want1, want2 = _first_and_second(op, backend, seed, x, w, mu, lv, _plain)
        freed, got1, got2 = _first_and_second(op, backend, seed, x, w, mu, lv, _checkpointed)
        assert not freed, "the checkpointed region's activation outlived its forward"
        if op not in ("iwae_bound", "gaussian_log_prob"):   # (their recon is a new tensor)
            assert held or backend == "reference"
        for g, e in zip(got1 + got2, want1 + want2):
            assert_close("gradient under checkpoint", g, e, x.dtype)


@pytest.mark.parametrize("where", ["forward", "backward"])
@pytest.mark.parametrize("op", OPS)
def test_checkpoint_with_a_dispatch_mode_on_one_side(seed, backend, op, where):
    """A dispatch mode (here FlopCounterMode) sends a call through the custom op, a plain
    call takes the autograd.Function: a checkpointed forward and its recomputation that go
    different ways save the same tensors (sample_with_kl's custom op saved its placeholders
    for gradients not needed) and give the plain call's gradients."""
    from torch.utils.flop_counter import FlopCounterMode

    x, w, mu, lv = _inputs(backend)
    lv.requires_grad_(False)   # a gradient not needed: the op's placeholders
    for _ in range(2):
        torch.manual_seed(seed)
        want = torch.autograd.grad(_loss(op, backend, x, mu @ w, mu, lv), (w, mu))

        def region(mu):
            return _loss(op, backend, x, mu @ w, mu, lv)

        torch.manual_seed(seed)
        with FlopCounterMode(display=False) if where == "forward" else nullcontext():
            loss = checkpoint(region, mu, use_reentrant=False)
        w.grad = mu.grad = None
        with FlopCounterMode(display=False) if where == "backward" else nullcontext():
            loss.backward()   # (not autograd.grad: the mode's module hooks refuse it for ELBOLoss)
        got = (w.grad, mu.grad)
        for g, e in zip(got, want):
            assert_close(f"gradient, a dispatch mode in the {where}", g, e, x.dtype)


@pytest.mark.parametrize("op", OPS)
def test_saved_tensor_hooks_see_and_replace_the_inputs(seed, backend, op):
    """``saved_tensors_hooks`` (what ``save_on_cpu`` is built on) get the inputs too: here
    each saved tensor is packed as a copy, which backward then reads, first and second
    order (autograd re-attaches a saved input to its graph)."""
    x, w, mu, lv = _inputs(backend)
    for _ in range(3):
        _, want1, want2 = _first_and_second(op, backend, seed, x, w, mu, lv, _plain)
        packed = []
        copying = _inside(lambda: torch.autograd.graph.saved_tensors_hooks(
            lambda t: packed.append(t.data_ptr()) or t.clone(), lambda t: t))
        _, got1, got2 = _first_and_second(op, backend, seed, x, w, mu, lv, copying)
        if backend != "reference":   # (the reference saves what its torch ops save)
            assert mu.data_ptr() in packed or op in ("kl_standard_normal", "gaussian_log_prob")
            assert x.data_ptr() in packed or op in ("kl_normal", "kl_standard_normal",
                                                     "sample_with_kl")
        for g, e in zip(got1 + got2, want1 + want2):
            assert_close("gradient from copies of the saved tensors", g, e, x.dtype)


@pytest.mark.parametrize("op", ["elbo", "ELBOLoss", "sample_with_kl"])
def test_save_on_cpu(seed, backend, op):
    """``torch.autograd.graph.save_on_cpu``: the same gradients, first and second order (on
    a GPU the saved inputs are offloaded; on CPU it packs copies)."""
    x, w, mu, lv = _inputs(backend)
    for _ in range(3):
        _, want1, want2 = _first_and_second(op, backend, seed, x, w, mu, lv, _plain)
        _, got1, got2 = _first_and_second(op, backend, seed, x, w, mu, lv,
                                          _inside(torch.autograd.graph.save_on_cpu))
        for g, e in zip(got1 + got2, want1 + want2):
            assert_close("gradient under save_on_cpu", g, e, x.dtype)


def test_a_first_order_backward_checks_the_inputs_versions(backend):
    """An input changed in place between the call and backward is autograd's error (the op
    saved it), for the first-order backward of a routed call too."""
    if backend == "reference":
        pytest.skip("the reference saves what its own ops save")
    x, w, mu, lv = _inputs(backend)
    for _ in range(3):
        act = mu @ w
        loss = fastvae.ELBOLoss(backend=backend)(x, act, mu, lv)
        with torch.no_grad():
            act.add_(1.0)
        with pytest.raises(RuntimeError, match="modified by an inplace operation"):
            loss.backward()
