"""torch.library custom ops: the one place the fused backends meet autograd.

Each op's forward runs a backend's ``*_fwd`` ("torch": ``backends.closed_form``,
"triton": ``backends.triton_backend``), which returns the value *and* its gradients
in one pass. Only those gradients are saved; backward scales them by grad_output
(Liger-Kernel's cross-entropy trick), in place and not at all when it is exactly 1:
the backend decides that where grad_output lives (the Triton kernel reads it on the
GPU, so backward never syncs with the host). Gradients that are not needed come back
as empty placeholders, since a custom op cannot return None. Registering fake (meta)
kernels lets ``torch.compile(fullgraph=True)`` trace through every op without a graph
break; eager calls run the same functions as a plain autograd.Function (``_Fused``).
"""
from __future__ import annotations

import functools
import importlib
import os
from typing import List, Optional

import torch
from torch import Tensor

from .backends import closed_form, result_dtype

_IMPLS = {"torch": closed_form}


def _impl(backend: str):
    if backend not in _IMPLS:  # first Triton use; imported up front where it can run (below)
        _IMPLS[backend] = importlib.import_module("fastvae.backends.triton_backend")
    return _IMPLS[backend]


# Import the Triton backend now where it can run, so that torch.compile never traces an
# import; elsewhere (CPU-only machines) importing triton would only cost start-up time.
if torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
    try:
        _impl("triton")
    except ImportError:
        pass


def _needs(*ts) -> List[bool]:
    grad = torch.is_grad_enabled()
    return [bool(grad and t is not None and t.requires_grad) for t in ts]


def _grad_like(t: Optional[Tensor], need: bool, like: Tensor, shape=None) -> Tensor:
    if not need or t is None:
        return like.new_empty(0)
    return t.new_empty(shape if shape is not None else t.shape)


def _graph_kept() -> bool:
    keep = getattr(torch._C._autograd, "_get_current_graph_task_keep_graph", None)
    return True if keep is None else bool(keep())


def _weigh(g: Tensor, grad_out: Tensor, row_dim: int) -> Tensor:
    """g * grad_out (a new tensor), grad_out () or (B,) laid along g's dim ``row_dim``."""
    if g is None or grad_out is None:  # None: not needed, or an undefined (zero) grad_output
        return None
    if grad_out.dim() == 0:
        return g * grad_out.to(g.dtype)
    shape = [1] * g.dim()
    shape[row_dim] = -1
    return g * grad_out.reshape(shape).to(g.dtype)


def _weigh_saved(ctx, grad_out: Tensor, row_dims) -> List[Optional[Tensor]]:
    """The saved gradients times grad_out; None where the op's ``needs`` says not needed.

    ``needs``, not ``g.numel()``, tells a placeholder from a real gradient: an empty batch
    has real, empty gradients (eager autograd gives zero-size grads there). A scalar
    grad_output (every mean/sum loss) scales the saved gradients in place, and the
    backend skips even that when it is exactly 1, as for ``loss.backward()``. Allowed
    only when nothing else can see them: the public wrappers drop the op's gradient
    outputs and say so (``_owned``; a direct call of the op keeps them, and they must
    not change under it), the tensors are real (a traced grad_output has no value) and
    the graph is freed after this backward (a retained graph still needs the saved
    gradients, and a later backward of it accumulates into the leaf's .grad in place).
    """
    gs = [t if n else None for t, n in zip(ctx.saved_tensors, ctx.needs)]
    if (ctx.owns_saved and grad_out is not None and grad_out.dim() == 0
            and type(grad_out) is torch.Tensor and not torch.compiler.is_compiling()
            and not _graph_kept()):
        return list(_impl(ctx.backend).scale_saved_(gs, grad_out))
    return [_weigh(g, grad_out, d) for g, d in zip(gs, row_dims)]


_TWICE = (b"fastvae's fused ops are differentiable once (their backward returns saved closed-form "
          b"gradients); for higher-order gradients (create_graph=True) use backend='reference'")


def _once_differentiable(backward):
    """Like ``torch.autograd.function.once_differentiable``, for register_autograd.

    The backward hands back saved *outputs* of the op, which carry the op's grad_fn; under
    ``create_graph=True`` autograd would differentiate them as if the gradient outputs had
    zero gradient, giving silently wrong second derivatives. Instead, detach them and make
    any attempt to differentiate them raise.
    """
    @functools.wraps(backward)
    def wrapper(ctx, *grads):
        with torch.no_grad():
            out = backward(ctx, *grads)
        if not torch.is_grad_enabled() or torch.compiler.is_compiling():
            return out
        def fake(v):
            if v is None:
                return None
            v = v.detach()
            v.requires_grad_(True)
            return v
        return torch._C._functions.DelayedError(_TWICE, len(out))(*[fake(v) for v in out])
    return wrapper


def _to_shape(g, shape):
    """Collect a per-row (B, D) gradient of a (D,) tensor over rows."""
    if g is None or shape is None or g.shape == shape:
        return g
    return g.sum(0).reshape(shape)


def _fake_value_and_grads(tensors, reduction, needs):
    """Fake outputs of elbo and iwae_bound: the value, then one gradient (or placeholder)
    for each of ``tensors`` = (x, recon, mu, logvar, z, obs), as their ``*_fwd`` return."""
    x, obs = tensors[0], tensors[5]
    out_shape = (x.shape[0],) if reduction == "none" else ()
    obs_shape = x.shape if (reduction == "none" and obs is not None) else None
    grads = [_grad_like(t, n, x) for t, n in zip(tensors[:5], needs)]
    grads.append(_grad_like(obs, needs[5], x, obs_shape))
    return (x.new_empty(out_shape, dtype=result_dtype(*tensors)), *grads)


def _save_grads(ctx, output, obs, needs, backend):
    """Setup shared by elbo and iwae_bound: keep only the gradient outputs."""
    ctx.save_for_backward(*output[1:])
    # Only output 0 (the value) is ever differentiated: do not let autograd fill the
    # gradient outputs' grads with B x D zeros (a memset and a buffer the size of
    # the gradients, every backward).
    ctx.set_materialize_grads(False)
    ctx.needs = list(needs)
    ctx.backend = backend
    ctx.owns_saved = False  # set by _owned
    ctx.obs_shape = None if obs is None else obs.shape


def _owned(outputs):
    """The value of a value-and-gradients op whose caller drops the gradient outputs:
    backward may then scale them in place (``_weigh_saved``)."""
    value = outputs[0]
    if not torch.compiler.is_compiling() and value.grad_fn is not None:
        value.grad_fn.owns_saved = True  # the node is the op's autograd ctx
    return value


def _plain_eager(args) -> bool:
    """Real tensors, no tracing, no dispatch mode watching: the autograd.Function path."""
    if torch.compiler.is_compiling() or _dispatch_modes():
        return False
    return all(type(a) is Tensor and a.device.type != "meta" for a in args
               if isinstance(a, Tensor))


def _dispatch_modes() -> int:
    depth = getattr(torch._C, "_len_torch_dispatch_stack", None)
    return 1 if depth is None else depth()


class _Fused:
    """One fused op, two ways in, the same forward, setup and backward.

    The ``torch.library`` custom op is what torch.compile, fake/meta tensors, dispatch
    modes and ``opcheck`` see. An eager call on real tensors takes the same three
    functions as a plain ``autograd.Function`` instead: the custom op's dispatch (its
    schema's default filling, the dispatcher, dynamo's disable guards) measured 0.17-0.19
    ms per ELBO fwd+bwd on this project's CPUs, a sixth of a whole fused step at B=256.
    """

    def __init__(self, op, forward, setup, backward):
        op.register_autograd(backward, setup_context=setup)
        self.op = op

        def forward_with_ctx(ctx, *args):
            # ctx-style, not setup_context-style: apply() then skips an inspect.signature
            # bind per call (as slow as the dispatch this path avoids).
            output = forward(*args)
            setup(ctx, args, output)
            return output

        self.function = type(f"{forward.__name__.strip('_')}_function",
                             (torch.autograd.Function,),
                             {"forward": staticmethod(forward_with_ctx),
                              "backward": staticmethod(backward)})

    def __call__(self, *args):
        return self.function.apply(*args) if _plain_eager(args) else self.op(*args)


# -- elbo ---------------------------------------------------------------------------

def _elbo_fwd(x: Tensor, recon: Tensor, mu: Tensor, logvar: Tensor, z: Optional[Tensor],
              obs: Optional[Tensor], obs_scalar: float, likelihood: str, kl: str, beta: float,
              free_bits: float, reduction: str, scale: float, needs: List[bool], backend: str
              ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    return tuple(_impl(backend).elbo_fwd(x, recon, mu, logvar, z, obs, obs_scalar, likelihood, kl,
                                         beta, free_bits, reduction, scale, needs))


_elbo_op = torch.library.custom_op("fastvae::elbo", mutates_args=())(_elbo_fwd)


@_elbo_op.register_fake
def _(x, recon, mu, logvar, z, obs, obs_scalar, likelihood, kl, beta, free_bits, reduction,
      scale, needs, backend):
    return _fake_value_and_grads((x, recon, mu, logvar, z, obs), reduction, needs)


def _elbo_setup(ctx, inputs, output):
    _save_grads(ctx, output, obs=inputs[5], needs=inputs[13], backend=inputs[14])


@_once_differentiable
def _elbo_backward(ctx, grad_out, *_):
    g = _weigh_saved(ctx, grad_out, (0, 0, 0, 0, 0, 0))
    g[5] = _to_shape(g[5], ctx.obs_shape)
    return (*g, None, None, None, None, None, None, None, None, None)


_elbo = _Fused(_elbo_op, _elbo_fwd, _elbo_setup, _elbo_backward)


def elbo(x, recon, mu, logvar, z, obs_logvar, *, likelihood, kl, beta, free_bits, reduction,
         backend, scale=1.0):
    """``scale * ELBO`` through the fused op; arguments as ``fastvae.backends`` documents."""
    obs, obs_scalar = (obs_logvar, 0.0) if isinstance(obs_logvar, Tensor) else (None, obs_logvar)
    needs = _needs(x, recon, mu, logvar, z, obs)
    return _owned(_elbo(x, recon, mu, logvar, z, obs, float(obs_scalar), likelihood, kl,
                        float(beta), float(free_bits), reduction, float(scale), needs, backend))


# -- iwae_bound ---------------------------------------------------------------------

def _iwae_fwd(x: Tensor, recon_k: Tensor, mu: Tensor, logvar: Tensor, z_k: Tensor,
              obs: Optional[Tensor], obs_scalar: float, likelihood: str, reduction: str,
              needs: List[bool], backend: str
              ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    return tuple(_impl(backend).iwae_bound_fwd(x, recon_k, mu, logvar, z_k, obs, obs_scalar,
                                               likelihood, reduction, needs))


_iwae_op = torch.library.custom_op("fastvae::iwae_bound", mutates_args=())(_iwae_fwd)


@_iwae_op.register_fake
def _(x, recon_k, mu, logvar, z_k, obs, obs_scalar, likelihood, reduction, needs, backend):
    return _fake_value_and_grads((x, recon_k, mu, logvar, z_k, obs), reduction, needs)


def _iwae_setup(ctx, inputs, output):
    _save_grads(ctx, output, obs=inputs[5], needs=inputs[9], backend=inputs[10])


@_once_differentiable
def _iwae_backward(ctx, grad_out, *_):
    g = _weigh_saved(ctx, grad_out, (0, 1, 0, 0, 1, 0))  # recon_k, z_k: (K, B, ...)
    g[5] = _to_shape(g[5], ctx.obs_shape)
    return (*g, None, None, None, None, None)


_iwae = _Fused(_iwae_op, _iwae_fwd, _iwae_setup, _iwae_backward)


def iwae_bound(x, recon_k, mu, logvar, z_k, obs_logvar, *, likelihood, reduction, backend):
    obs, obs_scalar = (obs_logvar, 0.0) if isinstance(obs_logvar, Tensor) else (None, obs_logvar)
    needs = _needs(x, recon_k, mu, logvar, z_k, obs)
    return _owned(_iwae(x, recon_k, mu, logvar, z_k, obs, float(obs_scalar), likelihood,
                        reduction, needs, backend))


# -- gaussian_log_prob and kl_standard_normal (per row, so backward weighs rows) --------

def _gauss_fwd(x: Tensor, mean: Tensor, logvar: Optional[Tensor], logvar_scalar: float,
               needs: List[bool], backend: str) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    return tuple(_impl(backend).gaussian_log_prob_fwd(x, mean, logvar, logvar_scalar, needs))


_gauss_op = torch.library.custom_op("fastvae::gaussian_log_prob", mutates_args=())(_gauss_fwd)


@_gauss_op.register_fake
def _(x, mean, logvar, logvar_scalar, needs, backend):
    return (x.new_empty(x.shape[:1], dtype=result_dtype(x, mean, logvar)),
            _grad_like(x, needs[0], x), _grad_like(mean, needs[1], x),
            _grad_like(logvar, needs[2], x, x.shape))


def _gauss_setup(ctx, inputs, output):
    ctx.save_for_backward(*output[1:])
    ctx.set_materialize_grads(False)  # as in _elbo_setup
    ctx.needs = list(inputs[4])
    ctx.lv_shape = None if inputs[2] is None else inputs[2].shape


@_once_differentiable
def _gauss_backward(ctx, grad_out, *_):
    g = [_weigh(t if n else None, grad_out, 0) for t, n in zip(ctx.saved_tensors, ctx.needs)]
    return g[0], g[1], _to_shape(g[2], ctx.lv_shape), None, None, None


_gauss = _Fused(_gauss_op, _gauss_fwd, _gauss_setup, _gauss_backward)


def gaussian_log_prob(x, mean, logvar, *, backend):
    lv, lv_scalar = (logvar, 0.0) if isinstance(logvar, Tensor) else (None, logvar)
    return _gauss(x, mean, lv, float(lv_scalar), _needs(x, mean, lv), backend)[0]


def _kl_fwd(mu: Tensor, logvar: Tensor, needs: List[bool], backend: str
            ) -> tuple[Tensor, Tensor, Tensor]:
    return tuple(_impl(backend).kl_standard_normal_fwd(mu, logvar, needs))


_kl_op = torch.library.custom_op("fastvae::kl_standard_normal", mutates_args=())(_kl_fwd)


@_kl_op.register_fake
def _(mu, logvar, needs, backend):
    return (mu.new_empty(mu.shape[:1], dtype=result_dtype(mu, logvar)),
            _grad_like(mu, needs[0], mu), _grad_like(logvar, needs[1], mu))


def _kl_setup(ctx, inputs, output):
    ctx.save_for_backward(*output[1:])
    ctx.set_materialize_grads(False)  # as in _elbo_setup
    ctx.needs = list(inputs[2])


@_once_differentiable
def _kl_backward(ctx, grad_out, *_):
    return (*(_weigh(t if n else None, grad_out, 0) for t, n in zip(ctx.saved_tensors, ctx.needs)),
            None, None)


_kl = _Fused(_kl_op, _kl_fwd, _kl_setup, _kl_backward)


def kl_standard_normal(mu, logvar, *, backend):
    return _kl(mu, logvar, _needs(mu, logvar), backend)[0]


def reparameterize(mu, logvar, n_samples, generator, *, backend):
    return _impl(backend).reparameterize(mu, logvar, n_samples, generator)
