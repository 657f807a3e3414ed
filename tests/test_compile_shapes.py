"""torch.compile and torch.export where the shapes and layouts are not the plain ones: permuted
inputs (the fake kernels' strides), a batch as large as the latent dim and a dynamic batch
(no guard on B), activation-checkpointed blocks (no side effect while tracing), and the
reference backend under ``dynamic=True``."""
from __future__ import annotations

import pytest
import torch
from torch.utils.checkpoint import checkpoint

import fastvae
import fastvae.ops  # noqa: F401  (registers torch.ops.fastvae.*)


def _permuted(*shape, dtype, grad=True):
    """A tensor of ``shape`` laid out column-major (a transpose's view); a 1-d one strided."""
    if len(shape) == 1:
        t = torch.randn(2 * shape[0], dtype=dtype)[::2]
    else:
        t = torch.randn(*reversed(shape), dtype=dtype).permute(*reversed(range(len(shape))))
    return t.detach().requires_grad_(grad)


def _permuted_cases():
    b, d, l, k = 3, 5, 2, 2
    ops = torch.ops.fastvae
    for dt in (torch.float32, torch.float64):
        def t(*s, grad=True):
            return _permuted(*s, dtype=dt, grad=grad)
        x = t(b, d, grad=False).abs().clamp(0, 1).detach()
        name = str(dt).split(".")[1]
        yield f"elbo-{name}", ops.elbo.default, (
            x, t(b, d), t(b, l), t(b, l), None, None, None, None, 0.0, "bernoulli", "analytic",
            1.0, 0.0, "mean", 1.0, "standard", [False, True, True, True] + [False] * 4, "torch")
        yield f"elbo-gauss-mc-prior-{name}", ops.elbo.default, (
            x, t(b, d), t(b, l), t(b, l), t(b, l), t(b, d), t(l), t(b, l), 0.0, "gaussian", "mc",
            0.7, 0.2, "none", -1.0, "standard", [False] + [True] * 7, "torch")
        yield f"iwae-{name}", ops.iwae_bound.default, (
            x, t(k, b, d), t(b, l), t(b, l), t(k, b, l), t(d), t(l), t(b, l), 0.0, "gaussian",
            "none", 1.0, "standard", [False] + [True] * 7, "torch")
        yield f"gauss-{name}", ops.gaussian_log_prob.default, (
            t(b, d), t(b, d), t(b, d), 0.0, [True, False, True], "torch")
        yield f"kl-{name}", ops.kl_standard_normal.default, (t(b, l), t(b, l), [True, True], "torch")
        yield f"kl-normal-{name}", ops.kl_normal.default, (
            t(b, l), t(b, l), t(l), t(b, l), [True, False, True, True], "torch")
        yield f"reparameterize-{name}", ops.reparameterize.default, (
            t(b, l), t(b, l), _permuted(b, l, dtype=dt, grad=False), 0, "torch")
        yield f"reparameterize-k-{name}", ops.reparameterize.default, (
            t(b, l), t(b, l), _permuted(k, b, l, dtype=dt, grad=False), k, "torch")
        yield f"reparameterize-bwd-{name}", ops.reparameterize_bwd.default, (
            _permuted(b, l, dtype=dt, grad=False), t(b, l, grad=False),
            _permuted(b, l, dtype=dt, grad=False), 0, True, "torch")
        yield f"sample-with-kl-{name}", ops.sample_with_kl.default, (
            t(b, l), t(b, l), t(b, l), t(l), _permuted(b, l, dtype=dt, grad=False),
            [True] * 4, "torch")
        images = (torch.randint(0, 256, (3, 2, 3, b)) / 255.0).to(dt).permute(3, 0, 1, 2)
        yield f"dmol-{name}", ops.discretized_logistic_mixture_log_prob.default, (
            images, t(b, 20, 2, 3), 8, "mean", -1.0, [True], "torch")


PERMUTED = list(_permuted_cases())


@pytest.mark.parametrize("name,op,args", PERMUTED, ids=[c[0] for c in PERMUTED])
def test_opcheck_of_permuted_inputs(name, op, args):
    """The real outputs have the strides the fake kernels declare (inductor asserts them)."""
    torch.library.opcheck(op, args)


def test_inductor_runs_an_elbo_of_transposed_latents():
    x = torch.rand(8, 4)
    recon = torch.randn(8, 4, requires_grad=True)
    mu, logvar = (_permuted(8, 3, dtype=torch.float32) for _ in range(2))

    def loss(x, recon, mu, logvar):
        return fastvae.elbo(x, recon, mu, logvar, backend="torch")

    want = loss(x, recon, mu, logvar)
    torch._dynamo.reset()
    got = torch.compile(loss, fullgraph=True)(x, recon, mu, logvar)
    torch.testing.assert_close(got, want)
    for a, b in zip(torch.autograd.grad(got, [recon, mu, logvar]),
                    torch.autograd.grad(want, [recon, mu, logvar])):
        torch.testing.assert_close(a, b)


def test_a_batch_as_large_as_the_latent_dim_does_not_recompile():
    """A learned (L,) prior beside (B, L) posteriors: shapes compared lengths first, so the
    dynamic graph holds no guard B != L."""
    from torch._dynamo.testing import CompileCounterWithBackend

    l = 3
    prior_mu = torch.zeros(l, requires_grad=True)

    def loss(x, recon, mu, logvar):
        return fastvae.elbo(x, recon, mu, logvar, prior_mu=prior_mu, backend="torch")

    torch._dynamo.reset()
    counter = CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(loss, fullgraph=True, dynamic=True, backend=counter)
    frames = []
    for b in (5, 7, l, 9):
        args = (torch.rand(b, 6), torch.randn(b, 6, requires_grad=True),
                torch.randn(b, l, requires_grad=True), torch.randn(b, l, requires_grad=True))
        got = compiled(*args)
        torch.testing.assert_close(got, loss(*args))
        got.backward()
        frames.append(counter.frame_count)
    assert frames == [frames[0]] * 4, frames


class _Prior(torch.nn.Module):
    def __init__(self, which):
        super().__init__()
        self.which = which

    def forward(self, mu, logvar, p):
        if self.which == "kl_normal":
            return fastvae.kl_normal(mu, logvar, p, None)
        if self.which == "gaussian_log_prob":
            return fastvae.gaussian_log_prob(mu, logvar, p)
        if self.which == "elbo":
            return fastvae.elbo(mu.sigmoid(), logvar, mu, logvar, prior_mu=p)
        if self.which == "sample_with_kl":
            return fastvae.sample_with_kl(mu, logvar, p, None)[1]
        return fastvae.kl_standard_normal(mu, logvar)


@pytest.mark.parametrize("which", ["kl_standard_normal", "kl_normal", "gaussian_log_prob",
                                   "elbo", "sample_with_kl"])
def test_export_keeps_the_batch_dynamic(which):
    """torch.export (non-strict, its default) of a dynamic batch: no shape arithmetic of
    fastvae's makes the batch a constant, nor compares it with L."""
    b = torch.export.Dim("b")
    args = (torch.randn(6, 3), torch.randn(6, 3), torch.randn(3))
    ep = torch.export.export(_Prior(which), args, dynamic_shapes=({0: b}, {0: b}, None))
    other = (torch.randn(9, 3), torch.randn(9, 3), torch.randn(3))
    if which != "sample_with_kl":   # a sampler's draw differs between the two calls
        torch.testing.assert_close(ep.module()(*other), _Prior(which)(*other))
    else:
        assert ep.module()(*other).shape == (9,)


@pytest.mark.parametrize("backend", ["torch", "reference"])
def test_a_checkpointed_block_compiles_fullgraph(backend, monkeypatch):
    """Inside torch.utils.checkpoint (a higher-order op: no side effects while tracing),
    from a fresh process's state (no backend marked used yet), with a float prior."""
    from fastvae import backends
    monkeypatch.setattr(backends, "_last_used", None)
    enc, dec = torch.nn.Linear(8, 6), torch.nn.Linear(3, 8)

    def block(x):
        mu, logvar = enc(x).chunk(2, -1)
        z = fastvae.reparameterize(mu, logvar, backend=backend)
        return (-fastvae.elbo(x, dec(z), mu, logvar, backend=backend)
                + fastvae.kl_normal(z, logvar, 0.1, None, backend=backend).mean())

    torch._dynamo.reset()
    step = torch.compile(lambda x: checkpoint(block, x, use_reentrant=False), fullgraph=True,
                         backend="aot_eager")
    x = torch.rand(4, 8)
    torch.manual_seed(0)
    got = step(x)
    # the fused ops mark as they run; the reference's compiled math marks nothing
    assert fastvae.last_backend() == (None if backend == "reference" else backend)
    got.backward()
    got_grads = [p.grad.clone() for p in enc.parameters()]
    for p in enc.parameters():
        p.grad = None
    torch.manual_seed(0)
    want = block(x)
    want.backward()
    torch.testing.assert_close(got, want)
    for a, p in zip(got_grads, enc.parameters()):
        torch.testing.assert_close(a, p.grad)


def test_a_compiled_fused_call_marks_its_backend_as_it_runs(monkeypatch):
    """last_backend() after compiled calls alone: the fused op marks as it runs, and
    tracing marks nothing (a mark there would be a side effect dynamo replays)."""
    from fastvae import backends
    marks = []
    monkeypatch.setattr(backends, "mark_used", lambda name: marks.append(
        (name, torch.compiler.is_compiling())))
    torch._dynamo.reset()
    f = torch.compile(lambda mu, lv: fastvae.kl_standard_normal(mu, lv, backend="torch"),
                      fullgraph=True, backend="aot_eager")
    f(torch.randn(4, 3), torch.randn(4, 3))
    f(torch.randn(4, 3), torch.randn(4, 3))   # the compiled graph alone, no trace
    assert marks == [("torch", False)] * 2, marks


def test_the_reference_elbo_compiles_with_dynamic_true():
    """dynamo makes a float argument symbolic under dynamic=True: the dtype rule traces."""
    def loss(x, recon, mu, logvar):
        return fastvae.elbo(x, recon, mu, logvar, backend="reference")

    torch._dynamo.reset()
    compiled = torch.compile(loss, fullgraph=True, dynamic=True, backend="aot_eager")
    for b in (4, 6):
        args = (torch.rand(b, 5), torch.randn(b, 5), torch.randn(b, 2), torch.randn(b, 2))
        torch.testing.assert_close(compiled(*args), loss(*args))


def test_the_reference_iwae_compiles_once_for_every_k():
    """K, symbolic under dynamic=True, is not made a constant by log K."""
    from torch._dynamo.testing import CompileCounterWithBackend

    dec = torch.nn.Linear(2, 6)

    def loss(x, mu, lv, k):
        z_k = fastvae.reparameterize(mu, lv, n_samples=k, backend="reference")
        return fastvae.IWAELoss(backend="reference")(x, dec(z_k), mu, lv, z_k)

    torch._dynamo.reset()
    counter = CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(loss, fullgraph=True, dynamic=True, backend=counter)
    frames = []
    for k in (2, 3, 5):
        args = (torch.rand(4, 6), torch.randn(4, 2), torch.randn(4, 2), k)
        torch.manual_seed(0)
        got = compiled(*args)
        torch.manual_seed(0)
        torch.testing.assert_close(got, loss(*args))
        frames.append(counter.frame_count)
    assert frames == [frames[0]] * 3, frames


def test_a_sample_count_puts_no_guard_on_the_batch():
    """reparameterize's bound on K * B * L (a tensor torch can hold) is checked on plain
    sizes only: on a symbolic batch it would be a guard of the graph (dynamo reads a SymInt's
    type as int), which a strict export of a Dim batch refuses, its range reaching past it."""
    class Draw(torch.nn.Module):
        def forward(self, mu, logvar):
            return fastvae.reparameterize(mu, logvar, 3, backend="torch")

    b = torch.export.Dim("b")
    ep = torch.export.export(Draw(), (torch.randn(6, 2), torch.randn(6, 2)),
                             dynamic_shapes=({0: b}, {0: b}), strict=True)
    assert ep.module()(torch.randn(9, 2), torch.randn(9, 2)).shape == (3, 9, 2)
