"""torch.compile(fullgraph=True) through the public API, and torch.library.opcheck on every
custom op in fastvae/ops/ (schema, autograd registration, fake tensors, AOT dispatch), on
the "torch" backend (the Triton backend's: tests/test_triton_custom_ops.py)."""
from __future__ import annotations

import importlib

import pytest
import torch
from torch import nn

import fastvae
import fastvae.ops  # noqa: F401  (registers torch.ops.fastvae.*)

# fastvae/ops/elbo.py, the module (``fastvae.ops.elbo`` is the function it exports)
ELBO_OP = importlib.import_module("fastvae.ops.elbo")


class TinyVAE(nn.Module):
    def __init__(self, d=12, l=3):
        super().__init__()
        self.enc = nn.Linear(d, 2 * l)
        self.dec = nn.Linear(l, d)

    def forward(self, x):
        mu, lv = self.enc(x).chunk(2, -1)
        z = fastvae.reparameterize(mu, lv, backend="torch")
        logits = self.dec(z)
        return fastvae.elbo(x, logits, mu, lv, kl="mc", z=z, beta=0.5, backend="torch")


def fused_calls(monkeypatch, op: str):
    """A list that records each call of the "torch" backend's ``<op>_fwd``: a compiled call
    must reach the fused op (one custom-op node), not trace the reference math."""
    from fastvae.backends import torch_backend
    calls = []
    real = getattr(torch_backend, f"{op}_fwd")
    monkeypatch.setattr(torch_backend, f"{op}_fwd", lambda *a: calls.append(op) or real(*a))
    return calls


def _grads(model):
    return [p.grad.clone() for p in model.parameters()]


def test_compiled_train_step_fullgraph_matches_eager(monkeypatch):
    """One graph (no break) for encoder -> reparameterize -> decoder -> elbo; the same value
    and parameter gradients as eager when both draw the same eps."""
    calls = fused_calls(monkeypatch, "elbo")
    torch._dynamo.reset()
    model = TinyVAE()
    x = torch.rand(9, 12)
    compiled = torch.compile(model, fullgraph=True)
    with torch._inductor.config.patch(fallback_random=True):  # eager's RNG stream in the graph
        torch.manual_seed(3)
        v_c = compiled(x)
        v_c.backward()
        g_c = _grads(model)
        model.zero_grad()
        torch.manual_seed(3)
        v_e = model(x)
        v_e.backward()
        g_e = _grads(model)
    torch.testing.assert_close(v_c, v_e, rtol=1e-5, atol=1e-5)
    for a, b in zip(g_c, g_e):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    # and an optimizer step through the compiled module changes the loss
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(3):
        opt.zero_grad()
        (-compiled(x)).backward()
        opt.step()
    del calls[:]
    compiled(x)
    assert calls, "the compiled step never reached the fused op"


OPS = {
    "elbo": lambda a, k: fastvae.elbo(*a, **k),
    "kl_standard_normal": lambda a, k: fastvae.kl_standard_normal(*a, **k),
    "gaussian_log_prob": lambda a, k: fastvae.gaussian_log_prob(*a, **k),
    "iwae_bound": lambda a, k: fastvae.iwae_bound(*a, **k),
    "kl_normal": lambda a, k: fastvae.kl_normal(*a, **k),
    "discretized_logistic_mixture_log_prob":
        lambda a, k: fastvae.discretized_logistic_mixture_log_prob(*a, **k),
}


def _case(op):
    b, d, l, k = 4, 6, 3, 2
    x, r = torch.rand(b, d), torch.randn(b, d, requires_grad=True)
    mu, lv = torch.randn(b, l, requires_grad=True), torch.randn(b, l, requires_grad=True)
    if op == "elbo":
        return (x, r, mu, lv), dict(likelihood="gaussian", obs_logvar=torch.zeros(d, requires_grad=True),
                                    reduction="none", free_bits=0.1)
    if op == "kl_standard_normal":
        return (mu, lv), {}
    if op == "gaussian_log_prob":
        return (x, r, torch.zeros(d, requires_grad=True)), {}
    if op == "kl_normal":
        return (mu, lv, torch.randn(b, l, requires_grad=True),
                torch.randn(l, requires_grad=True)), {}
    if op == "discretized_logistic_mixture_log_prob":
        return (torch.randint(0, 256, (b, 3, 2, 3)) / 255.0,
                torch.randn(b, 20, 2, 3, requires_grad=True)), dict(bits=8)
    return (x, torch.randn(k, b, d, requires_grad=True), mu, lv,
            torch.randn(k, b, l, requires_grad=True)), dict(reduction="mean")


@pytest.mark.parametrize("op", list(OPS))
def test_each_op_compiles_without_graph_break(monkeypatch, op):
    args, kw = _case(op)
    fn = OPS[op]
    eager = fn(args, dict(kw, backend="torch"))
    calls = fused_calls(monkeypatch, op)
    torch._dynamo.reset()
    compiled = torch.compile(lambda *a: fn(a, dict(kw, backend="torch")), fullgraph=True,
                             backend="aot_eager")
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        got = compiled(*args)
    torch.testing.assert_close(got, eager)
    # the compiled graph keeps what its backward reads, the gradients, not the inputs the
    # eager op saves for higher orders (which a compiled backward does not give)
    assert not {t.data_ptr() for t in saved} & {a.data_ptr() for a in args}, op
    ins = [a for a in args if a.requires_grad] + [v for v in kw.values()
                                                  if isinstance(v, torch.Tensor) and v.requires_grad]
    g1 = torch.autograd.grad(got.sum(), ins)
    g2 = torch.autograd.grad(eager.sum(), ins)
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b)
    assert calls, "the compiled call never reached the fused op"


def _op_args():
    """Raw argument tuples for the custom ops, covering optional tensors and needs patterns."""
    b, d, l, k = 3, 5, 2, 2

    def t(*s, grad=True):
        return torch.randn(*s, requires_grad=grad)

    x = torch.rand(b, d)
    yield "elbo-bern-mean", torch.ops.fastvae.elbo.default, (
        x, t(b, d), t(b, l), t(b, l), None, None, None, None, 0.0, "bernoulli", "analytic", 1.0,
        0.0, "mean", 1.0, "standard", [False, True, True, True, False, False, False, False],
        "torch")
    yield "elbo-gauss-mc-none-obs", torch.ops.fastvae.elbo.default, (
        x, t(b, d), t(b, l), t(b, l), t(b, l), t(d), None, None, 0.0, "gaussian", "mc", 0.7, 0.2,
        "none", -1.0, "standard", [False, True, True, True, True, True, False, False], "torch")
    yield "elbo-bern-prior", torch.ops.fastvae.elbo.default, (
        x, t(b, d), t(b, l), t(b, l), t(b, l), None, t(b, l), t(l), 0.0, "bernoulli", "mc", 1.0,
        0.1, "mean", 1.0, "standard", [False, True, True, True, True, False, True, True],
        "torch")
    # sticking the landing: the op is not asked for mu/logvar gradients (a prior's stay)
    yield "elbo-bern-mc-stl", torch.ops.fastvae.elbo.default, (
        x, t(b, d), t(b, l), t(b, l), t(b, l), None, None, None, 0.0, "bernoulli", "mc", 1.0,
        0.0, "mean", 1.0, "stl", [False, True, False, False, True, False, False, False],
        "torch")
    yield "elbo-bern-mc-stl-prior", torch.ops.fastvae.elbo.default, (
        x, t(b, d), t(b, l), t(b, l), t(b, l), None, t(l), t(b, l), 0.0, "bernoulli", "mc", 1.0,
        0.0, "mean", 1.0, "stl", [False, True, False, False, True, False, True, True], "torch")
    yield "elbo-cb-sum-nograd", torch.ops.fastvae.elbo.default, (
        x, t(b, d, grad=False), t(b, l, grad=False), t(b, l), None, None, None, None, 0.0,
        "continuous_bernoulli", "analytic", 1.0, 0.0, "sum", 1.0, "standard",
        [False, False, False, True, False, False, False, False], "torch")
    yield "iwae-bern", torch.ops.fastvae.iwae_bound.default, (
        x, t(k, b, d), t(b, l), t(b, l), t(k, b, l), None, None, None, 0.0, "bernoulli", "none",
        1.0, "standard", [False, True, True, True, True, False, False, False], "torch")
    yield "iwae-gauss-obs", torch.ops.fastvae.iwae_bound.default, (
        x, t(k, b, d), t(b, l), t(b, l), t(k, b, l), t(b, d), t(b, l), t(b, l), 0.0, "gaussian",
        "mean", -1.0, "standard", [False, True, True, True, True, True, True, True], "torch")
    # x's dtype is not the result's: the weights' placeholder (no weights wanted) is
    # the fake's, in the result dtype, not x's
    yield "iwae-bf16-x-prior", torch.ops.fastvae.iwae_bound.default, (
        x.bfloat16(), t(k, b, d), t(b, l), t(b, l), t(k, b, l), None, t(b, l), t(l), 0.0,
        "bernoulli", "none", 1.0, "standard", [False, True, True, True, True, False, True, True],
        "torch")
    # the estimators: DReG's op also returns the softmax weights for its hook
    for est in ("stl", "dreg"):
        yield f"iwae-bern-{est}", torch.ops.fastvae.iwae_bound.default, (
            x, t(k, b, d), t(b, l), t(b, l), t(k, b, l), None, None, None, 0.0, "bernoulli",
            "sum", -1.0, est, [False, True, False, False, True, False, False, False], "torch")
        yield f"iwae-bern-{est}-prior", torch.ops.fastvae.iwae_bound.default, (
            x, t(k, b, d), t(b, l), t(b, l), t(k, b, l), None, t(b, l), t(l), 0.0, "bernoulli",
            "sum", 1.0, est, [False, True, False, False, True, False, True, True], "torch")
    yield "gauss-float", torch.ops.fastvae.gaussian_log_prob.default, (
        t(b, d), t(b, d), None, 0.3, [True, True, False], "torch")
    yield "gauss-tensor", torch.ops.fastvae.gaussian_log_prob.default, (
        t(b, d), t(b, d), t(d), 0.0, [True, True, True], "torch")
    yield "kl", torch.ops.fastvae.kl_standard_normal.default, (
        t(b, l), t(b, l), [True, True], "torch")
    yield "kl-normal", torch.ops.fastvae.kl_normal.default, (
        t(b, l), t(b, l), t(b, l), t(l), [True, True, True, True], "torch")
    yield "kl-normal-half-prior", torch.ops.fastvae.kl_normal.default, (
        t(b, l), t(b, l), None, t(b, l), [True, False, False, True], "torch")
    # one latent group: noise is eps itself on the "torch" backend
    for prior in (True, False):
        pm, plv = (t(b, l), t(l)) if prior else (None, None)
        yield f"sample-with-kl-prior{int(prior)}", torch.ops.fastvae.sample_with_kl.default, (
            t(b, l), t(b, l), pm, plv, torch.randn(b, l), [True, True, prior, prior], "torch")
    saved = [torch.randn(b, l) for _ in range(3)]
    yield "sample-with-kl-bwd", torch.ops.fastvae.sample_with_kl_bwd.default, (
        torch.randn(b, l), torch.randn(b), t(b, l, grad=False), torch.randn(b, l), *saved,
        [True, True, True, True], "torch")
    yield "sample-with-kl-bwd-kl-only", torch.ops.fastvae.sample_with_kl_bwd.default, (
        None, torch.randn(b), t(b, l, grad=False), torch.randn(b, l), *saved,
        [True, False, True, True], "torch")
    images = torch.randint(0, 256, (b, 3, 2, 3)) / 255.0
    yield "dmol-rgb-mean", torch.ops.fastvae.discretized_logistic_mixture_log_prob.default, (
        images, t(b, 20, 2, 3), 8, "mean", -1.0, [True], "torch")
    yield "dmol-gray-none-nograd", torch.ops.fastvae.discretized_logistic_mixture_log_prob.default, (
        images[:, :1], t(b, 6, 2, 3, grad=False), 5, "none", 1.0, [False], "torch")
    # the sampler: noise is eps itself on the "torch" backend
    for n in (0, 3):
        shape = (b, l) if n == 0 else (n, b, l)
        yield f"reparameterize-k{n}", torch.ops.fastvae.reparameterize.default, (
            t(b, l), t(b, l), torch.randn(shape), n, "torch")
        yield f"reparameterize-bwd-k{n}", torch.ops.fastvae.reparameterize_bwd.default, (
            torch.randn(shape), t(b, l, grad=False), torch.randn(shape), n, n == 0, "torch")
    # float32 where the C kernel runs: noise is a Philox seed, eps drawn in the kernel
    seed = torch.tensor([12345], dtype=torch.int64)
    yield "reparameterize-seed-k3", torch.ops.fastvae.reparameterize.default, (
        t(b, l), t(b, l), seed, 3, "torch")
    yield "sample-with-kl-seed", torch.ops.fastvae.sample_with_kl.default, (
        t(b, l), t(b, l), t(b, l), t(l), seed, [True, True, True, True], "torch")
    # 16-bit inputs shared by every row, or beside a float32 prior: the per-row gradients
    # such an input's sum is made from are float32 (saved_grad_dtype), in the fakes as well
    def h(*s, grad=True):
        return t(*s, grad=False).bfloat16().requires_grad_(grad)

    yield "kl-normal-bf16-shared-prior", torch.ops.fastvae.kl_normal.default, (
        h(b, l), h(b, l), h(l), h(l), [True, True, True, True], "torch")
    yield "elbo-gauss-none-bf16-shared", torch.ops.fastvae.elbo.default, (
        x.bfloat16(), h(b, d), h(b, l), h(b, l), None, h(d), h(l), h(l), 0.0, "gaussian",
        "analytic", 1.0, 0.0, "none", 1.0, "standard",
        [False, True, True, True, False, True, True, True], "torch")
    yield "iwae-bf16-shared-prior", torch.ops.fastvae.iwae_bound.default, (
        x.bfloat16(), h(k, b, d), h(b, l), h(b, l), h(k, b, l), None, h(l), h(l), 0.0,
        "bernoulli", "none", 1.0, "standard", [False, True, True, True, True, False, True, True],
        "torch")
    yield "gauss-tensor-bf16-shared", torch.ops.fastvae.gaussian_log_prob.default, (
        h(b, d), h(b, d), h(d), 0.0, [True, True, True], "torch")
    yield "sample-with-kl-bf16-f32-prior", torch.ops.fastvae.sample_with_kl.default, (
        h(b, l), h(b, l), t(l), t(b, l), torch.randn(b, l).bfloat16(), [True, True, True, True],
        "torch")
    yield "sample-with-kl-bwd-mixed", torch.ops.fastvae.sample_with_kl_bwd.default, (
        torch.randn(b, l).bfloat16(), torch.randn(b), h(b, l, grad=False),
        torch.randn(b, l).bfloat16(), torch.randn(b, l), torch.randn(b, l).bfloat16(),
        torch.randn(b, l), [True, True, True, True], "torch")
    # validate=True's checks under torch.compile: every tensor named, one absent
    import fastvae.value_checks  # noqa: F401  (registers the op)
    yield "check-values", torch.ops.fastvae.check_values.default, (
        [torch.rand(b, d), None, torch.randn(b, l)], "x,recon,mu", "bernoulli", 0)


CASES = list(_op_args())


@pytest.mark.parametrize("name,op,args", CASES, ids=[c[0] for c in CASES])
def test_opcheck(name, op, args):
    torch.library.opcheck(op, args)


def test_every_registered_op_is_opchecked():
    registered = {n for n in dir(torch.ops.fastvae) if not n.startswith("_")
                  and isinstance(getattr(torch.ops.fastvae, n), torch._ops.OpOverloadPacket)}
    covered = {c[1].name().split("::")[1].split(".")[0] for c in CASES}
    public = {"elbo", "iwae_bound", "gaussian_log_prob", "kl_standard_normal", "reparameterize",
              "kl_normal", "sample_with_kl"}
    assert public <= registered
    assert registered == covered, registered ^ covered


def test_dynamic_batch_sizes_compile_once(monkeypatch):
    """Dynamic shapes: one compiled graph serves several batch sizes (the fake kernels are
    shape-generic), with eager's values. It starts as a fresh process does, with no fused
    op bound yet (``dispatch._fused``), which a compiled call must not guard on."""
    calls = fused_calls(monkeypatch, "elbo")
    from fastvae import dispatch
    monkeypatch.setattr(dispatch, "_fused", {})
    torch._dynamo.reset()

    def loss(x, r, mu, lv):
        return fastvae.elbo(x, r, mu, lv, likelihood="gaussian", reduction="mean", backend="torch")

    from torch._dynamo.testing import CompileCounterWithBackend

    counter = CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(loss, fullgraph=True, dynamic=True, backend=counter)
    counts = []
    for b in (5, 7, 12):
        x, r = torch.rand(b, 6), torch.randn(b, 6, requires_grad=True)
        mu, lv = torch.randn(b, 3, requires_grad=True), torch.randn(b, 3)
        got = compiled(x, r, mu, lv)
        counts.append(counter.frame_count)
        want = loss(x, r, mu, lv)
        torch.testing.assert_close(got, want)
        g1 = torch.autograd.grad(got, [r, mu])
        g2 = torch.autograd.grad(want, [r, mu])
        for a, c in zip(g1, g2):
            torch.testing.assert_close(a, c)
    assert counts[0] >= 1 and counts[1:] == [counts[0]] * 2, f"recompiled for a new batch size: {counts}"
    assert len(calls) >= 6, "the compiled calls never reached the fused op"  # 3 eager, 3 compiled


@pytest.mark.parametrize("backend", ["torch", "reference"])
def test_reparameterize_compiles_with_dynamic_batch(backend):
    """The sampler traces with symbolic batch sizes (randn(generator=None) did not), and the
    compiled step's z has the mean/std that mu and logvar ask for."""
    torch._dynamo.reset()

    def step(mu, lv):
        return fastvae.reparameterize(mu, lv, backend=backend)

    compiled = torch.compile(step, fullgraph=True, dynamic=True, backend="aot_eager")
    for b in (500, 701, 1203):
        mu = torch.full((b, 4), 2.0, requires_grad=True)
        lv = torch.full((b, 4), -2.0, requires_grad=True)  # std = e^-1
        z = compiled(mu, lv)
        assert z.shape == (b, 4)
        assert abs(float(z.mean()) - 2.0) < 0.05
        assert abs(float(z.std()) - float(torch.exp(torch.tensor(-1.0)))) < 0.03
        z.sum().backward()
        torch.testing.assert_close(mu.grad, torch.ones_like(mu))


def _elbo_args(needs=(False, True, True, True, False, False, False, False)):
    g = torch.Generator().manual_seed(7)
    x = torch.rand(6, 10, generator=g)
    recon, mu, lv = (torch.randn(s, generator=g).requires_grad_() for s in ((6, 10), (6, 3), (6, 3)))
    return (x, recon, mu, lv, None, None, None, None, 0.0, "bernoulli", "analytic", 1.0, 0.0,
            "mean", -1.0, "standard", list(needs), "torch")


def test_eager_calls_skip_the_custom_op_dispatch(monkeypatch):
    """Eager calls on real tensors run the op's own forward/setup/backward as an
    autograd.Function (the custom op's dispatch costs tens of microseconds a call);
    tracing, fake or meta tensors and dispatch modes still see the custom op."""
    from torch.utils.flop_counter import FlopCounterMode

    calls = []
    real_op = ELBO_OP._elbo.op
    monkeypatch.setattr(ELBO_OP._elbo, "op", lambda *a: calls.append("op") or real_op(*a))
    x, recon, mu, lv = _elbo_args()[:4]
    fastvae.elbo(x, recon, mu, lv, backend="torch").backward()
    assert calls == [] and recon.grad is not None
    with FlopCounterMode(display=False):
        fastvae.elbo(x, recon, mu, lv, backend="torch")
    assert calls == ["op"]
    meta = [t.to("meta") for t in (x, recon, mu, lv)]
    v = fastvae.elbo(*meta, backend="torch")
    assert calls == ["op", "op"] and v.device.type == "meta" and v.shape == ()


def test_function_path_and_custom_op_agree_bitwise():
    outs = []
    for call in (ELBO_OP._elbo.function.apply, ELBO_OP._elbo.op):
        args = _elbo_args()
        res = call(*args)
        grads = torch.autograd.grad(res[0] * 3.0, args[1:4])
        outs.append([t.detach() for t in res] + list(grads))
    for a, b in zip(*outs):
        assert torch.equal(a, b)


@pytest.mark.parametrize("logvar_grad", [True, False])
def test_sample_with_kl_compiles_without_graph_break(monkeypatch, logvar_grad):
    """The op with two values (z and the KL) on the custom op's path: one graph, eager's
    z for the same seed, eager's KL and gradients. The graph saves no input but logvar_q,
    and that only where dlogvar_q reads it."""
    b, l = 4, 3
    leaves = [torch.randn(b, l, requires_grad=(i != 1 or logvar_grad)) for i in range(4)]
    dz, dkl = torch.randn(b, l), torch.randn(b)

    def fn(*a):
        return fastvae.sample_with_kl(*a, backend="torch")
    torch.manual_seed(7)
    z_e, kl_e = fn(*leaves)
    need = [t for t in leaves if t.requires_grad]
    g_e = torch.autograd.grad([z_e, kl_e], need, [dz, dkl])
    calls = fused_calls(monkeypatch, "sample_with_kl")
    torch._dynamo.reset()
    compiled = torch.compile(fn, fullgraph=True, backend="aot_eager")
    torch.manual_seed(7)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        z, kl = compiled(*leaves)
    torch.testing.assert_close(z, z_e)
    torch.testing.assert_close(kl, kl_e)
    for a, e in zip(torch.autograd.grad([z, kl], need, [dz, dkl]), g_e):
        torch.testing.assert_close(a, e)
    kept = {t.data_ptr() for t in saved}
    assert [t.data_ptr() in kept for t in leaves] == [False, logvar_grad, False, False]
    assert calls, "the compiled call never reached the fused op"


def test_constant_result_marks_what_torchs_decorator_marks(monkeypatch):
    """``fastvae._compiler.constant_result`` sets, without dynamo loaded, exactly what
    ``torch.compiler.assume_constant_result`` sets: a torch that marks functions another
    way fails here, not silently in a trace."""
    import sys

    from fastvae import _compiler

    def ours():
        return 1

    def torchs():
        return 1
    torch.compiler.assume_constant_result(torchs)
    monkeypatch.delitem(sys.modules, "torch._dynamo")
    assert _compiler.constant_result(ours) is ours
    assert vars(ours) == vars(torchs) == {_compiler._MARK: True}


def test_importing_fastvae_leaves_dynamo_unloaded():
    """``import fastvae`` (and the CLI's module) costs about ``import torch``: loading
    torch._dynamo would about double it for every process that never compiles."""
    import subprocess
    import sys
    code = "import sys, fastvae, fastvae.cli; print('torch._dynamo' in sys.modules)"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "False"


class _TracedLoss(nn.Module):
    def __init__(self):
        super().__init__()
        self.enc, self.dec, self.loss = nn.Linear(20, 8), nn.Linear(4, 20), fastvae.ELBOLoss()

    def forward(self, x):
        mu, lv = self.enc(x).chunk(2, -1)
        return self.loss(x, self.dec(mu), mu, lv)


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")
def test_jit_trace_records_the_reference_math():
    """torch.jit.trace records aten ops: a fused op's C kernel is none (its pointer
    arithmetic met the trace's tensor-valued sizes: a bare ctypes error), so a traced call
    runs the reference's math, on new inputs too."""
    torch.manual_seed(0)
    model = _TracedLoss()
    x = torch.rand(6, 20)
    traced = torch.jit.trace(model, (x,), check_trace=False)
    x2 = torch.rand(6, 20)
    with torch.no_grad():
        mu, lv = model.enc(x2).chunk(2, -1)
        want = -fastvae.elbo(x2, model.dec(mu), mu, lv, backend="reference")
    torch.testing.assert_close(traced(x2), want)
    mu, lv = torch.randn(6, 4), torch.randn(6, 4)
    for draw in (lambda m, v: fastvae.reparameterize(m, v),
                 lambda m, v: fastvae.sample_with_kl(m, v)[0]):
        traced = torch.jit.trace(draw, (mu, lv), check_trace=False)
        torch.manual_seed(5)
        got = traced(mu, lv)
        torch.manual_seed(5)
        want = fastvae.reparameterize(mu, lv, backend="reference")
        torch.testing.assert_close(got, want)


PUBLIC_OPS = ["elbo", "iwae_bound", "reparameterize", "kl_standard_normal", "kl_normal",
              "sample_with_kl", "gaussian_log_prob", "discretized_logistic_mixture_log_prob"]


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")
@pytest.mark.parametrize("name", PUBLIC_OPS)
def test_jit_script_of_a_public_op_is_refused_in_one_line(name):
    """TorchScript cannot compile the ops (Python); its own error named a keyword-only
    argument of functional.py. Refused as the loss modules are, also where a scripted
    function or module calls the op, and for a model, whose ops are the same."""
    op = getattr(fastvae, name)
    message = rf"fastvae\.{name} cannot be compiled by torch\.jit\.script"

    def user(x, y):
        return op(x, y)

    class User(nn.Module):
        def forward(self, x, y):
            return op(x, y)

    for scripted in (op, user, User()):
        with pytest.raises(TypeError, match=message):
            torch.jit.script(scripted)
    from fastvae.models import ConvVAE, HierarchicalVAE, VAE
    for model in (VAE(), ConvVAE(), HierarchicalVAE()):
        with pytest.raises(TypeError, match=f"{type(model).__name__} cannot be compiled"):
            torch.jit.script(model)
