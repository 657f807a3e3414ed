r"""Gradient estimators of the sampled objectives: the option, its checks, and the
gradient hook that DReG's second weight rides on.

Notation: ``z = mu + sigma * eps``, ``sigma = exp(logvar / 2)``; ``phi`` = the encoder
outputs (mu, logvar); ``log w_k = log p(x|z_k) + log p(z_k) - log q(z_k; phi)``,
``w~_k = softmax_k(log w_k)``. The reported value never depends on the estimator.

``"standard"``: the reparameterized gradient of the value itself.

``"stl"``, sticking the landing (Roeder et al. 2017): ``log q(z; phi)`` is
differentiated only through z, its parameters held fixed (phi stopped). For the
diagonal Gaussian the direct partials of ``-log q`` w.r.t. (mu, logvar) vanish and the
one w.r.t. z, ``(z - mu) / sigma^2``, stays; the fused ops simply do not form the
direct mu/logvar gradients (the encoder's gradient arrives through z alone). Unbiased
for the ELBO, zero variance at the optimum where q equals the posterior; for the IWAE
bound with K > 1 it is biased (Tucker et al. 2018).

``"dreg"``, doubly reparameterized (Tucker et al. 2018), for the IWAE bound: decoder
gradients ``sum_k w~_k d log w_k / d theta`` (unchanged), encoder gradient
``sum_k w~_k^2 (d log w_k / d z_k)(d z_k / d phi)`` with log q at stopped phi.
The fused op writes the STL gradients (``w~_k`` once) for recon_k and z_k; the second
``w~_k`` must reach *every* path into z_k, the decoder's included, which the op cannot
see. So the op registers a gradient hook on z_k (:func:`attach_dreg_hook`, mmvae's
construction) that multiplies the gradient arriving at z_k by ``w~_k`` during the
backward pass of that bound: z_k's own gradient (``z_k.grad`` for a leaf) is then
``w~_k^2 d log w_k / d z_k``, and ``reparameterize``'s backward turns it into the
encoder's DReG gradient. Higher-order gradients (``create_graph=True``) differentiate
that gradient with the weights held constant: the hook weighs the bound's own backward,
not the backward of its gradient.
"""
from __future__ import annotations

import threading
import weakref
from typing import Optional

import torch
from torch import Tensor
from torch.utils.weak import WeakTensorKeyDictionary

from ._compiler import tracing_here
from .validation import DMOL

ESTIMATORS = ("standard", "stl", "dreg")
ELBO_ESTIMATORS = ("standard", "stl")


def check_elbo(estimator: str, kl: str) -> None:
    """ValueError unless ``estimator`` is one of ELBO_ESTIMATORS, and "stl" has kl="mc"."""
    check_elbo_estimator(estimator)
    if estimator == "stl" and kl != "mc":
        raise ValueError("estimator='stl' changes the gradient of the Monte-Carlo KL term: it "
                         "needs kl='mc' and the sample z (the analytic KL has no sampling noise "
                         "to remove)")


def check_elbo_estimator(estimator: str) -> None:
    """ValueError unless ``estimator`` is one of ELBO_ESTIMATORS (whatever the kl)."""
    if estimator == "dreg":
        raise ValueError("estimator='dreg' is the importance-weighted bound's estimator "
                         "(fastvae.iwae_bound); for the ELBO use 'stl', which DReG equals at K=1")
    if estimator not in ELBO_ESTIMATORS:
        raise ValueError(f"estimator must be one of {ELBO_ESTIMATORS}, got {estimator!r}")


def check_iwae(estimator: str, likelihood: str) -> None:
    """ValueError unless ``estimator`` is one of ESTIMATORS and built for ``likelihood``:
    DReG's gradient hook is not built for the discretized logistic mixture."""
    if estimator not in ESTIMATORS:
        raise ValueError(f"estimator must be one of {ESTIMATORS}, got {estimator!r}")
    if estimator == "dreg" and likelihood == DMOL:
        raise ValueError(f"estimator='dreg' is not available with likelihood={likelihood!r}; "
                         "use 'stl' or 'standard'")


def stops_parameters(estimator: str) -> bool:
    """Whether log q's parameters are stopped: no direct gradient w.r.t. mu and logvar."""
    return estimator != "standard"


def _graph_task() -> Optional[int]:
    current = getattr(torch._C, "_current_graph_task_id", None)
    return None if current is None else int(current())


class DregHook:
    """The second DReG weight: multiplies the gradient reaching z_k (K, B, L) by the
    bound's softmax weights ``w~`` (K, B), in a backward pass that goes through the
    bound, and only there.

    Two tensor hooks: one on the bound's value arms it with the current graph task (the
    value's gradient is always computed before z_k's, which needs every consumer of z_k
    done), one on z_k applies it in that same task. A backward that does not go through
    the bound (another loss of the same z_k alone) leaves z_k's gradient unchanged.
    Within the bound's backward the hook sees the *total* gradient of z_k, so every
    other loss that also uses z_k in that backward gets the weight too: give a DReG
    bound its own z_k. Two DReG bounds of one z_k in one backward would each weigh the
    other's gradient too: weighing it then raises (``peers``: the hooks on that z_k).
    """

    def __init__(self, weights: Tensor, peers: list):
        self.weights = weights.detach().unsqueeze(-1)
        self.task: Optional[int] = None
        self.armed = False
        self.peers = peers

    def arm(self, grad):
        self.task, self.armed = _graph_task(), True

    def __call__(self, grad: Tensor) -> Tensor:
        if not self.armed or self.task != _graph_task():
            return grad
        if self.task is None:  # no graph-task ids in this torch: one use per arming
            self.armed = False
        else:  # only where z_k's gradient is weighed: a backward to the decoder alone is fine
            for forward, _ in self.peers:
                other = forward.hook()
                if (other is not None and other is not self and other.armed
                        and other.task == self.task):
                    raise RuntimeError(
                        "estimator='dreg': two DReG bounds of the same z_k are in one "
                        "backward pass; each would weigh the other's gradient of z_k too, "
                        "and the encoder's gradient would be wrong. Draw a z_k for each "
                        "bound, or put all the samples in one bound")
        # The weights stay float32 (float64) and the product is rounded to the gradient's
        # dtype once: a 16-bit copy of w~ added a rounding of its own (z_k's gradient came
        # out up to 1.7 ulp off in float16 and bfloat16, the standard estimator's 0.5).
        wide = torch.promote_types(grad.dtype, self.weights.dtype)
        return (grad.to(wide) * self.weights.to(wide)).to(grad.dtype)


def _edge(t: Tensor):
    """(node, output index) through which gradient reaches ``t`` (which requires it): its
    grad_fn, or a leaf's gradient accumulator (torch >= 2.2: ``get_gradient_edge``, which
    for a grad_fn would also make a view each call)."""
    if t.grad_fn is not None:
        return t.grad_fn, t.output_nr
    edge = torch.autograd.graph.get_gradient_edge(t)
    return edge.node, edge.output_nr


def _decoder_path(recon_k: Tensor, z_k: Tensor, encoder=()):
    """How recon_k's graph meets z_k: None where it reads z_k itself (the decoder took z_k
    or a view taken from it: the hook on z_k sees that gradient) or nothing z_k came from;
    else the node it meets instead, which is z_k's own producer (one node made both, as a
    torch.compile'd model that samples and decodes) or one z_k was made from (z_k is a
    copy, cast or view of the tensor that was decoded). Both leave the decoder's gradient
    out of the hook's reach. Where recon_k does not read z_k and nothing z_k came from
    (z_k a leaf, or None for one that requires no gradient), the node of one of the
    ``encoder`` tensors (mu, logvar) that recon_k's graph reaches: the decoder's gradient
    goes to the encoder around z_k."""
    target = (None, None) if z_k is None else _edge(z_k)
    start = recon_k.grad_fn
    if start is None:
        return None
    # Node objects are held until the walks end: in torch 2.11 a node's Python object lives
    # only while referenced (a new one is made on the next access once the last is freed),
    # so a freed one's id could come back as another node's.
    seen, stack = {id(start): start}, [start]
    while stack:
        for n, i in stack.pop().next_functions:
            if n is None:
                continue
            if n is target[0] and i == target[1]:
                return None
            if id(n) not in seen:
                seen[id(n)] = n
                stack.append(n)
    made_from, stack = {id(target[0]): target[0]}, [target[0]]
    while stack and target[0] is not None:
        node = stack.pop()
        if seen.get(id(node)) is node:
            return node
        for n, _ in node.next_functions:
            if n is not None and id(n) not in made_from:
                made_from[id(n)] = n
                stack.append(n)
    for t in encoder:
        if isinstance(t, Tensor) and t.requires_grad:
            node = _edge(t)[0]
            if seen.get(id(node)) is node:
                return node
    return None


def check_dreg_graph(recon_k: Tensor, z_k: Tensor, mu=None, logvar=None) -> None:
    """ValueError where the decoder's gradient would reach the sample other than through
    z_k (:func:`_decoder_path`): DReG's hook on z_k would then weigh only the bound's
    direct gradient, and the encoder's gradient would be silently wrong. A z_k cut from
    the decoded samples (detached, or made a leaf) is refused where recon_k still carries
    mu's or logvar's gradient; cut from both, the encoder gets none (the documented rule)."""
    if not torch.is_grad_enabled():
        return
    compiling = torch.compiler.is_compiling() and tracing_here()
    if not z_k.requires_grad:
        # nothing to weigh; under a trace there is no graph to read (the hook is skipped too)
        if not compiling and recon_k.requires_grad:
            _refuse_cut(_decoder_path(recon_k, None, (mu, logvar)))
        return
    if compiling:
        # a traced graph has no autograd nodes to read; refusing breaks the graph here, so
        # this check runs eagerly on the real tensors (a compiled model that samples and
        # decodes is one node: wrong encoder gradients, silently), fullgraph raises
        _refuse_compiling()
    node = _decoder_path(recon_k, z_k, (mu, logvar))
    if node is None:
        return
    if z_k.grad_fn is None:
        _refuse_cut(node)
    if node is z_k.grad_fn:
        raise ValueError(
            f"estimator='dreg': recon_k and z_k come out of one autograd node "
            f"({type(node).__name__}, e.g. a torch.compile'd model that samples and decodes), "
            "which hides the decoder's path from z_k to recon_k from DReG's hook on z_k. Draw "
            "z_k outside that region (fastvae.reparameterize) and pass it to the decoder, or "
            "use estimator='stl'")
    raise ValueError(
        "estimator='dreg': recon_k does not read this z_k but a tensor z_k was made from (z_k "
        f"is a copy, cast or view of the decoded samples, or the decoder reads the encoder's "
        f"output directly; they meet at {type(node).__name__}), so DReG's hook on z_k would "
        "miss the decoder's gradient and the encoder's gradient would be wrong. Pass the very "
        "tensor the decoder read as z_k (the bound takes mixed dtypes: no cast is needed), or "
        "use estimator='stl'")


def _refuse_cut(node) -> None:
    if node is not None:
        raise ValueError(
            "estimator='dreg': recon_k carries the encoder's gradient but not through this "
            f"z_k (they meet at {type(node).__name__}): z_k is cut from the samples the "
            "decoder read (detached, or a leaf made from them), or the decoder reads mu or "
            "logvar directly. That gradient would reach mu, logvar around z_k, without the "
            "bound's own d/dz_k and DReG's second weight, and the encoder's gradient would be "
            "wrong. Pass the very tensor the decoder read as z_k, or decode the cut z_k too "
            "(the encoder then gets no gradient from this bound)")


def _refuse_compiling():
    # torch.export traces through torch.compile's machinery: named as what the user ran
    # (torch.compiler.is_exporting: torch >= 2.5)
    exporting = getattr(torch.compiler, "is_exporting", lambda: False)()
    what, verb, done = (("torch.export", "export", "exported") if exporting
                        else ("torch.compile", "compile", "compiled"))
    raise RuntimeError(
        f"estimator='dreg' is not supported inside {what}: its second weight is a gradient "
        f"hook on z_k that the {done} graph cannot hold. Call fastvae.iwae_bound outside "
        f"the {done} function ({verb} the model, not the loss), or use estimator='stl'")


def attach_dreg_hook(value: Tensor, z_k: Tensor, weights: Tensor) -> None:
    """Register DReG's hook (see :class:`DregHook`) for a bound ``value`` computed from
    ``z_k`` with softmax weights ``weights`` (K, B). Nothing when no gradient can flow.
    Not under torch.compile: dynamo cannot trace the hooks' Python state."""
    if not (torch.is_grad_enabled() and value.requires_grad and z_k.requires_grad):
        return
    if torch.compiler.is_compiling() and tracing_here():
        _refuse_compiling()
    # Two threads bounding one z_k: unlocked, each could make z_k's list, or prune it while
    # the other appends, and a hook would be left out of its peers (no two-bound refusal).
    with _hooks_lock:
        peers = _hooks_on.get(z_k)
        if peers is None:
            peers = _hooks_on[z_k] = []
        hook = DregHook(weights, peers)
        value.register_hook(hook.arm)   # the bound's graph holds the hook, and only it
        # A hook stays on z_k until z_k is freed; a z_k kept across steps (a leaf) would
        # gather one per call. z_k's hook holds DregHook weakly: once the bound's graph is
        # freed (its backward ran, or it was dropped) it can never be armed again, and goes.
        kept = []
        for forward, handle in peers:
            if forward.hook() is None:
                handle.remove()
            else:
                kept.append((forward, handle))
        peers[:] = kept
        forward = _Forward(hook)
        peers.append((forward, z_k.register_hook(forward)))


class _Forward:
    """z_k's hook: the bound's :class:`DregHook`, while the bound's graph keeps it."""

    def __init__(self, hook: DregHook):
        self.hook = weakref.ref(hook)

    def __call__(self, grad: Tensor) -> Tensor:
        hook = self.hook()
        return grad if hook is None else hook(grad)


_hooks_on = WeakTensorKeyDictionary()   # z_k -> [(its hook, the hook's handle)]
_hooks_lock = threading.Lock()
