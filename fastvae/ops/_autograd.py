"""What every fused op shares: the custom op and the plain autograd.Function built from the
same three functions, the gradient placeholders a custom op needs, the backward that
scales saved gradients, and higher-order gradients by recomputation.

A fused op's forward returns its value *and* its gradients; those gradients are saved
(with the inputs, no intermediates: :func:`save_with_inputs`), and backward multiplies
them by grad_output (Liger-Kernel's cross-entropy trick):
in place, and not at all when it is exactly 1 (the backend decides that where
grad_output lives). When a graph of the backward is asked for (``create_graph=True``,
``torch.autograd.functional.hessian``), backward recomputes the gradients from the
inputs with the reference math under autograd instead, so every order of derivative is
right on every backend.
"""
from __future__ import annotations

import functools
from typing import Callable, List, Optional

import torch
from torch import Tensor

from .. import backends
from .._compiler import tracing_here
from .._dtypes import grad_factor, same_shape, saved_grad_dtype
from ._modes import (carries_tangent, dispatch_modes, forward_ad_active, functorch_active,
                     is_tracing, plain_eager, transform_stacked)


def needs(*ts) -> List[bool]:
    """Which of ``ts`` need a gradient from this call."""
    grad = torch.is_grad_enabled()
    return [bool(grad and t is not None and t.requires_grad) for t in ts]


def filled(outputs, like: Tensor) -> tuple:
    """A backend's outputs as a custom op returns them: a gradient it left out (None) as
    an empty placeholder of its own (a custom op returns no None, and its outputs may not
    alias), each one :func:`declared`. The value path (:meth:`Fused.value`) skips this:
    it saves None as None."""
    return tuple([like.new_empty(0) if t is None else declared(t) for t in outputs])


def declared(t: Tensor) -> Tensor:
    """``t`` laid out as the fake kernels declare every output: contiguous. A backend's
    aten math keeps a permuted input's layout (``mu`` of ``torch.randn(L, B).t()``), and
    inductor's code asserts the declared strides."""
    return t.contiguous()


def grad_like(t: Optional[Tensor], need: bool, like: Tensor, shape=None) -> Tensor:
    """A fake gradient output as the backends write it: ``shape`` (default t's) in
    ``saved_grad_dtype``, or the empty placeholder when not needed."""
    if not need or t is None:
        return like.new_empty(0)
    return t.new_empty(t.shape if shape is None else shape, dtype=saved_grad_dtype(t, shape))


def weigh(g: Optional[Tensor], grad_out: Optional[Tensor], row_dim: int) -> Optional[Tensor]:
    """g * grad_out (new), grad_out () or (B,) along g's dim ``row_dim``; a row of grad_out 0
    gives 0 (an IWAE sample of weight 0 whose saved partial overflowed adds nothing, not NaN)."""
    if g is None or grad_out is None:  # None: not needed, or an undefined (zero) grad_output
        return None
    w = grad_factor(g, grad_out, row_dim)
    # rounded before the select: a 16-bit g's float32 product is then the only temporary
    # of g's size in float32, not that and a float32 select of it
    out = (g * w).to(g.dtype)
    return out if grad_out.dim() == 0 else torch.where(w == 0, 0.0, out)


def weigh_rows(ctx, grad_out: Optional[Tensor], likes, grads=None) -> List[Optional[Tensor]]:
    """The backward of a per-row op (``(B,)`` value, grad_out () or (B,)): each saved
    gradient (``grads``, default :func:`saved_grads`: pass them where backward read them
    already, a checkpointed graph's saved tensors unpack once) times grad_out along its
    rows, never in place, finished by :func:`to_shape` with ``likes`` (one per gradient);
    None where ``ctx.needs`` says not needed."""
    grads = saved_grads(ctx) if grads is None else grads
    return [to_shape(weigh(t if n else None, grad_out, 0), like)
            for t, n, like in zip(grads, ctx.needs, likes)]


def input_like(t: Optional[Tensor]):
    """(shape, dtype) of an input whose gradient :func:`to_shape` finishes, or None."""
    return None if t is None else (t.shape, t.dtype)


def cast_like(t: Optional[Tensor]):
    """:func:`input_like` of an input whose gradient has t's shape but is saved wider
    (float16, ``saved_grad_dtype``), for :func:`to_shape` to round it back; None where
    there is nothing to finish."""
    return None if t is None or saved_grad_dtype(t) == t.dtype else (t.shape, t.dtype)


def to_shape(g: Optional[Tensor], like) -> Optional[Tensor]:
    """The gradient of an input with ``like`` = (shape, dtype) (:func:`input_like`) from
    ``g``: a per-row (B, D) gradient of a shared (D,) input summed over rows, in the
    input's dtype (a shared input's per-row gradient is float32 at least,
    ``saved_grad_dtype``, so the sum rounds once)."""
    if g is None or like is None:
        return g
    shape, dtype = like
    if not same_shape(g.shape, shape):
        g = g.sum(0).reshape(shape)
    return g if g.dtype == dtype else g.to(dtype)


# whether the running backward keeps its graph: torch's own function where it has one (no
# Python frame: every routed backward asks), else assumed kept
_graph_kept = (getattr(torch._C._autograd, "_get_current_graph_task_keep_graph", None)
               or (lambda: True))


def weigh_saved(ctx, grad_out: Optional[Tensor], row_dims) -> List[Optional[Tensor]]:
    """The saved gradients times grad_out; None where ``ctx.needs`` says not needed.

    ``needs``, not ``g.numel()``, tells a placeholder from a real gradient: an empty batch
    has real, empty gradients. A scalar grad_output (every mean/sum loss) scales the saved
    gradients in place, and the backend skips even that when it is exactly 1. Allowed
    only when nothing else can see them: the public wrappers drop the op's gradient
    outputs and say so (``owned``; a direct call of the op keeps them, and they must not
    change under it), the tensors are real (a traced grad_output has no value) and the
    graph is freed after this backward (a retained graph still needs the saved gradients).
    """
    gs = [t if n else None for t, n in zip(saved_grads(ctx), ctx.needs)]
    if grad_out is not None and grad_out.dim() == 0 and may_scale_in_place(ctx, grad_out):
        return list(backends.get(ctx.backend).scale_saved_(gs, grad_out))
    return [weigh(g, grad_out, d) for g, d in zip(gs, row_dims)]


def may_scale_in_place(ctx, grad_out: Optional[Tensor]) -> bool:
    """Whether backward may multiply the saved gradients by ``grad_out`` in place (see
    :func:`weigh_saved` for why each condition)."""
    # (a meta grad_out has no value to read; a lazily negated one's memory holds -value,
    # which the Triton scale kernel would read)
    return (grad_out is not None and type(grad_out) is torch.Tensor and not grad_out.is_meta
            and not grad_out.is_neg() and may_overwrite_saved(ctx))


def may_overwrite_saved(ctx) -> bool:
    """Whether backward may write over the saved gradients: the caller dropped them
    (:func:`owned`), nothing is being traced, and the graph is freed after this backward."""
    return (ctx.owns_saved and not (torch.compiler.is_compiling() and tracing_here())
            and not _graph_kept())


def save_grads(ctx, grads, needs_, backend: str, inputs) -> None:
    """Setup shared by every value-and-gradients op: save the gradient outputs and the
    inputs (:func:`save_with_inputs`). A gradient not needed (a placeholder) is saved as
    None: backward reads none of them (``ctx.needs``)."""
    saved = list(grads)
    for i, need in enumerate(needs_):
        if not need and i < len(saved):
            saved[i] = None
    save_with_inputs(ctx, saved, inputs)
    # Only output 0 (the value) is ever differentiated: do not let autograd fill the
    # gradient outputs' grads with zeros (a memset the size of the gradients, every backward),
    # and where they are outputs of the node (the op's full outputs) give them no grad_fn:
    # backward hands a saved one back as is at grad_output 1, and it would carry this node.
    ctx.set_materialize_grads(False)
    mark_outputs_constant(ctx, grads)
    ctx.needs = list(needs_)
    ctx.backend = backend
    ctx.owns_saved = False  # set by owned()


def save_with_inputs(ctx, grads, inputs, rest=()) -> None:
    """``ctx.save_for_backward(*grads, *inputs)``: the gradients backward reads
    (:func:`saved_grads`), then the tensors the op was called on, the caller's (no copy),
    which higher-order gradients recompute from (:func:`kept_inputs`). Through autograd's
    saved tensors, they go where any op's saved inputs go: freed by a backward that frees
    the graph, dropped and recomputed by activation checkpointing, offloaded by
    ``save_on_cpu``, seen by ``saved_tensors_hooks``, and an input changed in place before
    backward is autograd's error. An inference tensor, which autograd cannot save, is kept
    as a plain reference. ``rest``: arguments that are never tensors."""
    kept = list(inputs)
    saved = [None] * len(kept)
    for i, t in enumerate(kept):  # a loop, not comprehensions: this runs on every call
        if isinstance(t, Tensor) and not t.is_inference():
            saved[i] = t
            kept[i] = None
    ctx.save_for_backward(*grads, *saved)
    ctx.n_grads = len(grads)
    ctx.inputs = (*kept, *rest)


def saved_grads(ctx) -> tuple:
    """The gradients :func:`save_with_inputs` saved."""
    return ctx.saved_tensors[:ctx.n_grads]


def unpacked(ctx) -> tuple:
    """(the gradients, the inputs then ``rest``) as :func:`save_with_inputs` saved them."""
    saved, n = ctx.saved_tensors, ctx.n_grads
    inputs = [k if s is None else s for s, k in zip(saved[n:], ctx.inputs)]
    return saved[:n], (*inputs, *ctx.inputs[len(saved) - n:])


def kept_inputs(ctx) -> tuple:
    """The inputs and ``rest`` (:func:`unpacked`), each tensor as a view of its own: the
    op's gradient w.r.t. an input is the partial derivative, and autograd.grad w.r.t. mu
    itself would also follow mu's path through z (z = mu + sigma * eps), which autograd
    then adds a second time."""
    return tuple(t.view_as(t) if isinstance(t, Tensor) else t for t in unpacked(ctx)[1])


def owned(outputs, values: int = 1):
    """The value of a value-and-gradients op whose caller drops the gradient outputs: backward
    may then scale them in place (:func:`weigh_saved`); its node, of any of ``values``."""
    # none while tracing; else the op's ctx, unless a Tensor subclass's __torch_function__
    # wrapped the output (an alias node of its own: the gradients stay unscaled, correct)
    node = None if torch.compiler.is_compiling() and tracing_here() else next(
        (o.grad_fn for o in outputs[:values] if o.grad_fn is not None), None)
    if hasattr(node, "owns_saved"):
        node.owns_saved = True
    return outputs[0]


def graph_of_backward_wanted() -> bool:
    """Whether this backward must itself be differentiable (``create_graph=True``)."""
    return torch.is_grad_enabled() and not (torch.compiler.is_compiling() and tracing_here())


def recompute_grads(value, inputs, needs_, grad_out):
    """d value / d inputs (None where not needed) as differentiable tensors: the graph of
    the backward that ``create_graph=True`` asks for. ``value`` and ``grad_out``: a tensor
    and its cotangent, or lists of them (as ``torch.autograd.grad`` takes)."""
    wanted = [t for t, n in zip(inputs, needs_) if n]
    if grad_out is None or not wanted:
        return [None] * len(inputs)
    got = iter(torch.autograd.grad(value, wanted, grad_out, create_graph=True, allow_unused=True))
    return [next(got) if n else None for n in needs_]


def follow_inputs(ctx) -> None:
    """Where the custom op's ``needs`` argument, fixed when a graph was recorded, says an
    input needs no gradient that needs one now (a ``torch.export`` program traced from
    inputs that needed none, then trained): ``ctx.needs`` becomes the inputs', and
    ``ctx.stale`` sends backward to the recomputation (:func:`with_higher_order`), since
    the forward computed none of those gradients. Without this they came back None.
    ``ctx.recorded``: the needs the op was called with. (An estimator's stopped input,
    needed now, gets the recomputation's None: the reference stops it too.)"""
    ctx.stale = False
    now = ctx.needs_input_grad
    # (an op without the argument, reparameterize, reads needs_input_grad itself)
    for i, need in enumerate(getattr(ctx, "needs", ())):  # a loop: runs on every op call
        if now[i] and not need:
            ctx.recorded = ctx.needs
            ctx.needs = [a or b for a, b in zip(ctx.needs, now)]
            ctx.stale = True
            return


def with_higher_order(backward: Callable, higher: Callable) -> Callable:
    """The backward of a fused op: the saved gradients, or :func:`recompute_grads` through
    ``higher(ctx, *grads)`` when a graph of the backward is wanted."""
    @functools.wraps(backward)
    def wrapper(ctx, *grads):
        if batched_backward(grads) or carries_tangent(grads) or getattr(ctx, "stale", False):
            # the backends' kernels cannot read batched grads (no storage), nor carry a
            # dual grad_output's tangent (a forward derivative of this backward); the
            # recomputation is aten math every transform composes with; nor make gradients
            # the forward was told were not needed (follow_inputs)
            with torch.enable_grad():
                return higher(ctx, *grads)
        if not torch.is_grad_enabled():  # the usual backward: no graph of it, no mode switch
            return backward(ctx, *grads)
        if graph_of_backward_wanted():
            return higher(ctx, *grads)
        with torch.no_grad():
            return backward(ctx, *grads)
    return wrapper


_legacy_batched = getattr(torch._C._functorch, "is_legacy_batchedtensor", None)


def batched_backward(grads) -> bool:
    """Whether a vmap runs over this backward alone: torch.func's, or the legacy one that
    ``torch.autograd.functional.jacobian/hessian(vectorize=True)`` use (a forward under
    torch.func already took the reference, :func:`functorch_active`)."""
    if functorch_active():
        return True
    if _legacy_batched is not None:
        for g in grads:  # a loop, not any(genexpr): this runs on every backward
            if g is not None and _legacy_batched(g):
                return True
    return False


def usual_backward(ctx, grad_out) -> bool:
    """Whether this backward is a training step's usual one, the one a :class:`Route`
    prepares: :func:`with_higher_order` would call the plain backward (no vmap over it,
    no graph of it wanted) and :func:`weigh_saved` would scale in place (a scalar
    grad_output, :func:`may_scale_in_place`). The same conditions, tested in one pass (a
    route's every backward asks)."""
    return (type(grad_out) is torch.Tensor and grad_out.dim() == 0 and not grad_out.is_neg()
            and not torch.is_grad_enabled() and ctx.owns_saved
            and not (torch.compiler.is_compiling() and tracing_here()) and not _graph_kept()
            and not transform_stacked() and not carries_tangent((grad_out,))
            and (_legacy_batched is None or not _legacy_batched(grad_out)))


def mark_outputs_constant(ctx, outputs) -> None:
    """Mark ``outputs`` (those that are tensors) as never differentiated; a tensor that is
    not an output of the node (the value path returns the value alone) is ignored."""
    ts = [t for t in outputs if isinstance(t, Tensor)]
    if ts:  # each call of mark_non_differentiable replaces the earlier calls' set
        ctx.mark_non_differentiable(*(getattr(ctx, "non_differentiable", None) or ()), *ts)


def mark_constant(ctx, output, constant) -> None:
    """Mark the outputs ``constant(ctx.needs)`` names, which depend on no input needing a
    gradient (``sample_with_kl``'s z with only the prior's): unmarked, they keep a graph."""
    mark_outputs_constant(ctx, [output[i] for i in constant(ctx.needs)])


class Fused:
    """One fused op, two ways in, the same forward, setup and backward.

    The ``torch.library`` custom op is what torch.compile, fake/meta tensors, dispatch
    modes and ``opcheck`` see. An eager call on real tensors takes the same three
    functions as a plain ``autograd.Function`` instead: the custom op's dispatch costs
    about as much as a whole small fused step on CPU (RESULTS.md).
    """

    def __init__(self, op, forward, setup, backward, tensor_args: int = 0, value_forward=None,
                 values: int = 1, constant=None, plain_forward=None):
        plain_setup = setup
        if constant is not None:   # every way in (the op, both Functions, routes) marks them
            def setup(ctx, inputs, output):
                plain_setup(ctx, inputs, output)
                mark_constant(ctx, output, constant)

        def op_setup(ctx, inputs, output):
            # not setup(): the needs follow_inputs widens decide which outputs are constant
            plain_setup(ctx, inputs, output)
            follow_inputs(ctx)
            if constant is not None:
                mark_constant(ctx, output, constant)
        op.register_autograd(backward, setup_context=op_setup)
        self.op = op
        self.backward = backward
        self.tensor_args = tensor_args  # the leading arguments that may be tensors (value())
        self.values = values            # the leading outputs value() returns
        self.constant = constant
        # value(): forward's arguments, the backend's outputs as they come (None for a
        # gradient not needed: nothing outside the op sees them, so no placeholders)
        value_forward = value_forward or forward
        # the plain Function's forward: the custom op's, or one that skips the copy into
        # the layout the op declares (:func:`declared`), which only the op's callers see
        plain_forward = plain_forward or forward

        def forward_with_ctx(ctx, *args):
            # ctx-style, not setup_context-style: apply() then skips an inspect.signature
            # bind per call (as slow as the dispatch this path avoids).
            output = plain_forward(*args)
            setup(ctx, args, output)
            return output

        def value_with_ctx(ctx, *args):
            # (*tensor arguments, the rest packed in one tuple): apply() handles each of
            # its arguments on every call, and only the tensors need it
            lead = len(args) - 1
            args = (*args[:-1], *args[-1])
            output = value_forward(*args)
            setup(ctx, args, output)
            ctx.owns_saved = True  # nobody else holds the gradient outputs
            ctx.lead = lead
            return output[0] if values == 1 else tuple(output[:values])

        def value_backward(ctx, *grads):
            got = backward(ctx, *grads)
            return (*got[:ctx.lead], None)

        self.name = name = forward.__name__.strip('_')
        self.function = type(f"{name}_function", (torch.autograd.Function,),
                             {"forward": staticmethod(forward_with_ctx),
                              "backward": staticmethod(backward)})
        # The value alone, for value-and-gradients ops whose caller drops the gradients:
        # every output of an autograd.Function costs autograd bookkeeping, per call.
        self.value_function = type(f"{name}_value_function", (torch.autograd.Function,),
                                   {"forward": staticmethod(value_with_ctx),
                                    "backward": staticmethod(value_backward)})

    def __call__(self, *args):
        return self.function.apply(*args) if plain_eager(args) else self.op(*args)

    def value(self, *args):
        """Output 0 of a value-and-gradients op (the first ``values`` outputs, a tuple, for
        an op with several), whose gradients backward may then scale or overwrite in place
        (:func:`owned`)."""
        n = self.tensor_args or len(args)
        if plain_eager(args[:n]):
            return self.value_function.apply(*args[:n], args[n:])
        outputs = self.op(*args)
        value = owned(outputs, self.values)
        return value if self.values == 1 else tuple(outputs[:self.values])


class Route:
    """A fused op's value path (:meth:`Fused.value`) prepared for calls that differ from one
    call only in the values of its leading tensors (their shapes, strides, dtypes, devices
    and ``requires_grad``, the grad mode, the backend and every other argument the same;
    the caller keys routes by all of that, ``fastvae.functional``). What each such call
    would work out again is worked out once: which gradients are needed, the backend's
    plan (``run``: the leading tensors -> the backend's outputs), the setup attributes
    that depend on nothing else (``fixed``) and, on the first usual backward, the
    backend's scaling (a backend function's ``prepare``, ``fastvae.backends``). A call
    takes a route only where the value path would be the plain ``autograd.Function``
    (:meth:`usable`); its ctx is the value path's, and any backward but the usual one
    (:func:`usual_backward`) is the op's own (``fused.backward``), so higher orders, a
    retained graph, a batched or per-row grad_output go where they went. ``finish(ctx,
    grads)``: the op's last step of the usual backward, None where it changes nothing.

    An op with several values (``fused.values``, e.g. ``sample_with_kl``'s z and KL) has
    no scalar grad_output to scale by: every backward is the op's own, which writes over
    the saved gradients where it may (:func:`may_overwrite_saved`).
    """

    __slots__ = ("run", "rest", "needs", "backend", "fixed", "backward", "lead", "finish",
                 "source", "_scale", "_scale_from", "function")

    def __init__(self, fused: "Fused", run: Callable, lead: int, given: int, rest: tuple,
                 needs_, backend: str, fixed: dict, finish: Optional[Callable] = None,
                 source: tuple = (None, None, None)):
        self.run, self.lead, self.rest = run, lead, (None,) * (lead - given) + tuple(rest)
        self.needs, self.backend, self.fixed = list(needs_), backend, tuple(fixed.items())
        self.backward, self.finish = fused.backward, finish
        self.source = source   # (backend module, name, the function run prepares)
        self._scale = self._scale_from = None
        self.function = _route_function(self, given, fused.name, fused.values, fused.constant)

    @staticmethod
    def eager() -> bool:
        """Whether the value path would now be the plain ``autograd.Function`` of the
        backend's op: nothing traces, no dispatch mode, no ``torch.func`` transform
        (:func:`plain_eager`, :func:`reference_only`; real tensors: the caller's)."""
        # reference_only()'s checks inline, as every routed call asks them; its compile
        # check shared (past it, functorch_active is transform_stacked)
        return not ((torch.compiler.is_compiling() and tracing_here()) or dispatch_modes()
                    or transform_stacked() or forward_ad_active() or is_tracing())

    def usable(self) -> bool:
        """Whether a call now may take this route (besides its key): :meth:`eager`, and the
        backend function the route prepared is still the one the backend has (a test or a
        profiler that replaces it sees every call, as without routes)."""
        module, name, fn = self.source
        return self.eager() and (module is None or getattr(module, name) is fn)

    def scale(self, grads, grad_out):
        """The backend's ``scale_saved_`` of the saved gradients (their layout is the
        route's), prepared by its ``prepare`` attribute where it has one, again whenever
        the backend's function is replaced."""
        fn = backends.get(self.backend).scale_saved_
        if fn is not self._scale_from:
            prepare = getattr(fn, "prepare", None)
            self._scale = (prepare(grads) if prepare is not None else None) or fn
            self._scale_from = fn
        return self._scale(grads, grad_out)


def _route_function(route: Route, given: int, name: str, values: int, constant=None):
    """The ``autograd.Function`` of one route: its ``given`` leading tensors are its only
    inputs (each input of ``apply`` costs autograd per call; the trailing absent ones,
    the run gets as None), the route itself reached through its class, not an argument.
    It returns the op's first ``values`` outputs (one: the tensor itself)."""
    pad = (None,) * (route.lead - given)

    def forward(ctx, *tensors):
        output = route.run(*tensors, *pad)
        # the backend leaves a gradient not needed as None (its contract), as save_grads
        # makes it
        save_with_inputs(ctx, output[values:], tensors, route.rest)
        ctx.set_materialize_grads(False)   # an unused value's grad stays None
        ctx.needs, ctx.backend, ctx.owns_saved = route.needs, route.backend, True
        for name, value in route.fixed:
            setattr(ctx, name, value)
        if constant is not None:
            mark_constant(ctx, output, constant)
        return output[0] if values == 1 else tuple(output[:values])

    if values == 1:
        def backward(ctx, grad_out):
            if usual_backward(ctx, grad_out):
                got = route.scale(list(saved_grads(ctx)), grad_out)
                if route.finish is not None:
                    got = route.finish(ctx, got)
            else:
                got = route.backward(ctx, grad_out)
            return tuple(got[:given])
    else:
        def backward(ctx, *grads):
            return tuple(route.backward(ctx, *grads)[:given])

    return type(f"{name}_route", (torch.autograd.Function,),
                {"forward": staticmethod(forward), "backward": staticmethod(backward)})
