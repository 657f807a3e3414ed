"""The gradient estimators on the CPU "torch" backend, around the fused ops rather than in
them: torch.compile and torch.func, DReG's check of the decoder's path into z_k and the
lifetime of its hook, a sample of zero weight, the ELBOLoss module, and the errors. The
estimators' values and gradients on every backend: tests/test_estimators.py.
"""
from __future__ import annotations

import math
import threading
import weakref

import pytest
import torch

import fastvae
from _compare import leaf

def _eager_and_compiled(fn, *args, fullgraph):
    torch._dynamo.reset()
    want = fn(*args)
    want_g = torch.autograd.grad(want, args[:3])
    got = torch.compile(fn, fullgraph=fullgraph, backend="aot_eager")(*args)
    return want, want_g, got, torch.autograd.grad(got, args[:3])


def _iwae_step(estimator):
    def step(mu, lv, w, eps, x):
        z = mu + torch.exp(0.5 * lv) * eps
        return fastvae.iwae_bound(x, z @ w, mu, lv, z, reduction="mean", backend="torch",
                                  estimator=estimator)
    return step


def _inputs(seed):
    g = torch.Generator().manual_seed(seed)
    mu, lv, w = (leaf(torch.randn(s, generator=g, device="cpu") * 0.5)
                 for s in ((3, 2), (3, 2), (2, 5)))
    return (mu, lv, w, torch.randn(4, 3, 2, generator=g, device="cpu"),
            torch.rand(3, 5, generator=g, device="cpu"))


def test_stl_compiles_without_graph_break(seed):
    """STL is only a needs pattern and the estimator string: one custom-op node each."""
    def elbo_step(mu, lv, w, eps, x):
        z = mu + torch.exp(0.5 * lv) * eps[0]
        return fastvae.elbo(x, z @ w, mu, lv, kl="mc", z=z, backend="torch", estimator="stl")
    for fn in (_iwae_step("stl"), elbo_step):
        want, want_g, got, got_g = _eager_and_compiled(fn, *_inputs(seed), fullgraph=True)
        torch.testing.assert_close(got, want)
        for a, b in zip(got_g, want_g):
            torch.testing.assert_close(a, b)


def test_dreg_under_compile_runs_eagerly_or_says_why(seed):
    """Its hook cannot live in a graph: a fullgraph compile raises an error that says so;
    otherwise dynamo runs the bound eagerly and the gradients are eager's."""
    want, want_g, got, got_g = _eager_and_compiled(_iwae_step("dreg"), *_inputs(seed),
                                                   fullgraph=False)
    torch.testing.assert_close(got, want)
    for a, b in zip(got_g, want_g):
        torch.testing.assert_close(a, b)
    torch._dynamo.reset()
    with pytest.raises(Exception, match=r"estimator='dreg' is not supported inside torch.compile"
                                         r": .* the compiled graph cannot hold\. Call fastvae"
                                         r"\.iwae_bound outside the compiled function"):
        torch.compile(_iwae_step("dreg"), fullgraph=True, backend="aot_eager")(*_inputs(seed))


def test_dreg_refuses_a_graph_that_hides_the_decoders_path(seed):
    """A compiled function that samples *and* decodes returns z_k and recon_k from one node:
    the decoder's path into z_k is inside it, out of the hook's reach."""
    mu, lv, w, eps, x = _inputs(seed)

    def sample_and_decode(mu, lv, w):
        z = mu + torch.exp(0.5 * lv) * eps
        return z @ w, z
    torch._dynamo.reset()
    recon, z = torch.compile(sample_and_decode, backend="aot_eager")(mu, lv, w)
    with pytest.raises(ValueError, match="come out of one autograd node"):
        fastvae.iwae_bound(x, recon, mu, lv, z, estimator="dreg", backend="torch")
    # sampling outside, decoding inside a compiled function: the path is visible
    decode = torch.compile(lambda z, w: z @ w, backend="aot_eager")
    z = mu + torch.exp(0.5 * lv) * eps
    v = fastvae.iwae_bound(x, decode(z, w), mu, lv, z, reduction="sum", estimator="dreg",
                           backend="torch")
    z2 = mu + torch.exp(0.5 * lv) * eps
    want = fastvae.iwae_bound(x, z2 @ w, mu, lv, z2, reduction="sum", estimator="dreg",
                              backend="torch")
    for a, b in zip(torch.autograd.grad(v, [mu, lv]), torch.autograd.grad(want, [mu, lv])):
        torch.testing.assert_close(a, b)


class _Wrapper:
    """A node's Python object as torch 2.11 made it: created on access, cached only while
    referenced (torch 2.13 keeps one per node), so a freed one's id is free for reuse."""
    __slots__ = ("node", "__weakref__")

    def __init__(self, node):
        self.node = node

    @property
    def next_functions(self):
        return tuple((p.wrap(), i) for p, i in self.node.parents)


class _Node:
    def __init__(self, *parents):
        self.parents, self.ref = parents, None

    def wrap(self):
        w = None if self.ref is None else self.ref()
        if w is None:
            w = _Wrapper(self)
            self.ref = weakref.ref(w)
        return w


class _Out:
    """A tensor's ``grad_fn`` / ``output_nr`` over the fake graph."""
    def __init__(self, node):
        self.node, self.output_nr = node, 0

    @property
    def grad_fn(self):
        return self.node.wrap()


def test_dreg_graph_check_with_short_lived_node_objects():
    """z = mu + s * eps, recon = view(z W) + b: recon reads z, though a node's object is
    freed between accesses (the GPU run's torch 2.11: recon's new object took the freed id
    of z's, and the check refused the plain pipeline); a sampler that also outputs recon
    through views is still caught, and recon = view(z) is z's own path."""
    from fastvae.estimators import _decoder_path
    z_add = _Node((_Node(), 0), (_Node((_Node((_Node(), 0)), 0)), 0))
    mm = _Node((_Node((z_add, 0)), 0), (_Node(), 0))
    recon = _Out(_Node((_Node((mm, 0)), 0), (_Node(), 0)))
    for _ in range(5):
        assert _decoder_path(recon, _Out(z_add)) is None
    sampler = _Node((_Node(), 0), (_Node(), 0))     # one node outputs recon (0) and z (1)
    z, hidden = _Out(_Node((sampler, 1))), _Out(_Node((_Node((sampler, 0)), 0)))
    assert _decoder_path(hidden, z) is not None
    assert _decoder_path(_Out(_Node((z.node, 0))), z) is None


@pytest.mark.parametrize("passed", ["view", "clone", "cast", "leaf cast"])
def test_dreg_refuses_a_z_k_that_is_not_the_decoded_tensor(seed, passed):
    """A view, copy or cast of the decoded samples as z_k: the decoder's gradient reaches
    the samples around the hook on z_k, so the encoder's gradient would be wrong (it was,
    silently: 31-67% off). What the decoder read may be reshaped, and a no-op contiguous()
    is z_k itself."""
    mu, lv, w, eps, x = _inputs(seed)
    z = torch.randn(4, 3, 2, requires_grad=True) if passed == "leaf cast" else (
        mu + torch.exp(0.5 * lv) * eps)
    given = {"view": lambda t: t.view_as(t), "clone": torch.clone,
             "cast": lambda t: t.double(), "leaf cast": lambda t: t.double()}[passed]
    with pytest.raises(ValueError, match=r"copy, cast or view of the decoded samples"):
        fastvae.iwae_bound(x, z @ w, mu, lv, given(z), estimator="dreg", backend="torch")
    for recon, z_k in ((z @ w, z.contiguous()), ((z.reshape(-1, 2) @ w).reshape(4, 3, 5), z)):
        fastvae.iwae_bound(x, recon, mu, lv, z_k, estimator="dreg", backend="torch")


@pytest.mark.parametrize("backend", ["reference", "torch"])
@pytest.mark.parametrize("cut", ["detach", "detached leaf"])
def test_dreg_refuses_a_z_k_cut_from_the_decoded_samples(seed, backend, cut):
    """The decoder reads z, the bound gets a detached copy (or one made a leaf): the
    decoder's gradient reaches mu, logvar around z_k, without the bound's own d/dz_k and
    the second w~_k (it was silently 60-140% off the DReG gradient; the requires_grad
    early return skipped the check). Decoded from the cut z_k too, the encoder gets no
    gradient from the bound, as documented, and the call runs."""
    mu, lv, w, eps, x = _inputs(seed)
    z = mu + torch.exp(0.5 * lv) * eps
    cut_z = z.detach() if cut == "detach" else z.detach().requires_grad_()
    with pytest.raises(ValueError, match=r"z_k is cut from the samples the decoder read"):
        fastvae.iwae_bound(x, z @ w, mu, lv, cut_z, estimator="dreg", backend=backend)
    v = fastvae.iwae_bound(x, cut_z @ w, mu, lv, cut_z, estimator="dreg", reduction="sum",
                           backend=backend)
    g_mu, g_lv, g_w = torch.autograd.grad(v, [mu, lv, w], allow_unused=True)
    assert g_w is not None and (g_mu is None or not g_mu.any()) and (
        g_lv is None or not g_lv.any())


@pytest.mark.parametrize("backend", ["reference", "torch"])
def test_dreg_names_a_decoder_that_reads_the_encoder_directly(seed, backend):
    """A cut z_k decoded, plus mu read by the decoder itself: refused, and the message names
    that way too (it said only that z_k was cut from the samples the decoder read)."""
    mu, lv, w, eps, x = _inputs(seed)
    cut_z = (mu + torch.exp(0.5 * lv) * eps).detach()
    with pytest.raises(ValueError, match=r"or the decoder reads mu or logvar directly"):
        fastvae.iwae_bound(x, cut_z @ w + mu.sum(-1, keepdim=True), mu, lv, cut_z,
                           estimator="dreg", backend=backend)


def test_dreg_hooks_do_not_pile_up_on_a_kept_z_k(seed):
    """A leaf z_k used for many bounds holds the hooks of the bounds still alive only (each
    call added one, kept until z_k was freed); the gradients are unchanged by the pruning."""
    mu, lv, w, eps, x = _inputs(seed)
    z = (mu + torch.exp(0.5 * lv) * eps).detach().requires_grad_()
    grads = []
    for _ in range(6):
        v = fastvae.iwae_bound(x, z @ w, mu, lv, z, estimator="dreg", reduction="sum",
                               backend="torch")
        grads.append(torch.autograd.grad(v, [z, w]))
    assert len(z._backward_hooks) <= 2
    for g in grads[1:]:
        torch.testing.assert_close(g, grads[0], rtol=0, atol=0)
    alive = [fastvae.iwae_bound(x, z @ w, mu, lv, z, estimator="dreg", backend="torch")
             for _ in range(3)]
    assert len(z._backward_hooks) >= 3   # a bound still alive keeps its hook
    del alive


def test_a_pending_dreg_bound_keeps_its_hook_when_its_value_tensor_is_gone(seed):
    """Two bounds on one z_k, each value reduced at once (its tensor freed, its graph not):
    the first one's backward is still its own DReG gradient (pruning by the value tensor
    dropped its hook: encoder gradients 30-40% off)."""
    mu, lv, w, eps, x = _inputs(seed)
    w2 = (w * 0.5 + 0.1).detach().requires_grad_()

    def first_bound_grad(second: bool):
        z = mu + torch.exp(0.5 * lv) * eps
        l1 = -fastvae.iwae_bound(x, z @ w, mu, lv, z, estimator="dreg", backend="torch").mean()
        if second:
            l2 = -fastvae.iwae_bound(x, z @ w2, mu, lv, z, estimator="dreg",  # noqa: F841
                                     backend="torch").mean()
        return torch.autograd.grad(l1, [mu, lv])
    for a, b in zip(first_bound_grad(False), first_bound_grad(True)):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("stall", ["making z_k's list", "pruning it"])
def test_two_threads_attaching_to_one_z_k_keep_both_hooks(monkeypatch, stall):
    """Two threads bound one z_k, the first held up while the second runs through: each
    made its own list of z_k's hooks (or the first's prune wrote over the second's entry),
    so a hook was missing from its peers and two bounds in one backward were not refused."""
    from fastvae import estimators
    z = torch.randn(4, 3, 2, requires_grad=True)
    first_waiting, second_done = threading.Event(), threading.Event()

    def hold_up_the_first():
        if threading.current_thread().name == "first":
            first_waiting.set()
            second_done.wait(timeout=0.5)   # serialized (the fix): the second is not running

    class Stalling(type(estimators._hooks_on)):
        def get(self, key, default=None):
            found = super().get(key, default)
            if stall == "making z_k's list":
                hold_up_the_first()
            return found
    hooks_on = Stalling()
    if stall == "pruning it":   # a dead hook on z_k, whose removal holds the first up
        class Dead:
            hook = staticmethod(lambda: None)
            remove = staticmethod(hold_up_the_first)
        hooks_on[z] = [(Dead, Dead)]
    monkeypatch.setattr(estimators, "_hooks_on", hooks_on)

    values = []   # each bound's graph, which alone holds its hook

    def attach(done=None):
        values.append((z * 1).sum())
        estimators.attach_dreg_hook(values[-1], z, torch.ones(4, 3))
        if done is not None:
            done.set()
    first = threading.Thread(target=attach, name="first")
    first.start()
    assert first_waiting.wait(timeout=5)
    second = threading.Thread(target=attach, args=(second_done,), name="second")
    second.start()
    first.join()
    second.join()
    peers = hooks_on[z]
    assert len(peers) == 2 and all(f.hook().peers is peers for f, _ in peers)


@pytest.mark.parametrize("backend", ["reference", "torch"])
def test_a_sample_of_zero_weight_leaves_every_estimator_finite(backend):
    """log w = -inf for one sample (its Gaussian density underflows): the bound is the other
    samples', whatever the estimator (the reference's DReG surrogate made it 0 * -inf = NaN),
    and that sample passes no gradient."""
    x = torch.zeros(1, 2)
    mu, lv = (torch.zeros(1, 1, requires_grad=True) for _ in range(2))
    z = mu + torch.exp(0.5 * lv) * torch.tensor([[[0.5]], [[-0.3]]])
    recon = torch.tensor([[[1e20, 0.0]], [[0.1, 0.2]]], requires_grad=True)
    want = fastvae.iwae_bound(x, recon[1:], mu, lv, z[1:], likelihood="gaussian",
                              backend="reference") - math.log(2)
    for est in fastvae.estimators.ESTIMATORS:
        v = fastvae.iwae_bound(x, recon, mu, lv, z, likelihood="gaussian", estimator=est,
                               backend=backend)
        torch.testing.assert_close(v, want)
        g = torch.autograd.grad(v, [recon, mu])
        assert all(torch.isfinite(t).all() for t in g) and not g[0][0].any()


def test_torch_func(seed):
    """torch.func runs the reference: STL works there (stopped parameters are a detach);
    DReG's hook does not exist there, and it says so."""
    mu, lv, w, eps, x = _inputs(seed)

    def stl(mu):
        z = mu + torch.exp(0.5 * lv.detach()) * eps[0]
        return fastvae.elbo(x, z @ w.detach(), mu, lv.detach(), kl="mc", z=z, estimator="stl")
    got = torch.func.grad(stl)(mu.detach())
    torch.testing.assert_close(got, torch.autograd.grad(stl(mu), mu)[0])
    with pytest.raises(RuntimeError, match="not available under torch.func"):
        torch.func.grad(lambda m: _iwae_step("dreg")(m, lv.detach(), w.detach(), eps, x))(
            mu.detach())


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")
def test_jit_trace_refuses_dreg(seed):
    """torch.jit.trace records the reference's aten ops, not DReG's hook on z_k: a traced
    step would replay STL's gradients. It says so (it had failed with a ctypes error; then,
    with traces going to the reference, had given STL silently)."""
    mu, lv, w, eps, x = _inputs(seed)
    w = w.detach()   # a closure constant the trace may hold
    with pytest.raises(RuntimeError, match="torch.jit.trace"):
        torch.jit.trace(lambda m, v: _iwae_step("dreg")(m, v, w, eps, x), (mu, lv),
                        check_trace=False)


def test_a_compiled_step_that_samples_decodes_and_bounds_is_refused():
    """torch.compile of a whole DReG step (a model's iwae_bound: sampling, decoding and the
    bound): dynamo breaks the graph at DReG and runs the bound eagerly, but z_k and recon_k
    leave the compiled part as one autograd node. The graph check used to return early
    while tracing and never ran eagerly: wrong encoder gradients, silently. Now it breaks
    the graph itself, so it runs on the real tensors and says so."""
    from fastvae.models import VAE

    torch.manual_seed(0)
    model = VAE((1, 4, 4), 2, hidden=(8,))
    step = torch.compile(lambda x: -model.iwae_bound(x, 2, estimator="dreg"),
                         backend="aot_eager")
    with pytest.raises(ValueError, match="come out of one autograd node"):
        step(torch.rand(3, 1, 4, 4)).backward()


def test_forward_mode_ad(seed):
    """A dual level runs the reference, as torch.func does: STL's tangent is its gradient
    dotted with the tangent; DReG, whose second weight is a backward hook, is refused
    (it returned STL's tangent, silently)."""
    import torch.autograd.forward_ad as fwad
    mu, lv, w, eps, x = _inputs(seed)
    t = torch.randn_like(mu)
    want = (torch.autograd.grad(_iwae_step("stl")(mu, lv, w, eps, x), mu)[0] * t).sum()
    with fwad.dual_level():
        dual = fwad.make_dual(mu.detach(), t)
        got = fwad.unpack_dual(_iwae_step("stl")(dual, lv.detach(), w.detach(), eps, x)).tangent
        torch.testing.assert_close(got, want)
        with pytest.raises(RuntimeError, match="forward-mode AD"):
            _iwae_step("dreg")(dual, lv.detach(), w.detach(), eps, x)


def test_elbo_loss_module_takes_the_estimator(seed):
    mu, lv, w, eps, x = _inputs(seed)
    loss = fastvae.ELBOLoss(kl="mc", estimator="stl", backend="torch")
    assert "estimator='stl'" in repr(loss)
    z = mu + torch.exp(0.5 * lv) * eps[0]
    got = torch.autograd.grad(loss(x, z @ w, mu, lv, z=z), [mu, lv, w])
    z = mu + torch.exp(0.5 * lv) * eps[0]
    e = fastvae.elbo(x, z @ w, mu, lv, kl="mc", z=z, estimator="stl", backend="torch")
    for a, b in zip(got, torch.autograd.grad(-e, [mu, lv, w])):
        torch.testing.assert_close(a, b)
    with pytest.raises(ValueError, match="needs kl='mc'"):
        fastvae.ELBOLoss(estimator="stl")


def test_errors():
    x, recon, mu, lv = torch.rand(2, 3), torch.randn(2, 3), torch.randn(2, 2), torch.randn(2, 2)
    z = torch.randn(2, 2)
    with pytest.raises(ValueError, match="estimator='stl' .* needs kl='mc'"):
        fastvae.elbo(x, recon, mu, lv, estimator="stl")
    with pytest.raises(ValueError, match="estimator='dreg' is the importance-weighted bound's"):
        fastvae.elbo(x, recon, mu, lv, kl="mc", z=z, estimator="dreg")
    with pytest.raises(ValueError, match=r"estimator must be one of \('standard', 'stl'\)"):
        fastvae.elbo(x, recon, mu, lv, kl="mc", z=z, estimator="STL")
    with pytest.raises(ValueError, match=r"estimator must be one of \('standard', 'stl', 'dreg'\)"):
        fastvae.iwae_bound(x, recon[None], mu, lv, z[None], estimator="drge")
