"""The Triton backend's custom ops as torch sees them: ``torch.library.opcheck`` on every
op (schema, fake kernels against the kernels' real outputs, autograd registration) and
a training step under ``torch.compile(fullgraph=True)``.

Runs where kernels run (``kernel_device``): compiled on CUDA, else under
TRITON_INTERPRET=1 (tests/test_triton_interpreter.py runs this module so).
"""
import pytest
import torch

from _backends import skip_unless_kernels_run

skip_unless_kernels_run()  # the whole module: one line in the report, not one per test

from _compare import leaf  # noqa: E402
from _triton import train_step  # noqa: E402


pytestmark = pytest.mark.usefixtures("kernels")   # tensors on the kernels' device


def _needs(*ts):
    return [t is not None and t.requires_grad for t in ts]


def test_opcheck_every_op(seed):
    import importlib
    ops = {n: importlib.import_module(f"fastvae.ops.{n}") for n in (
        "elbo", "iwae_bound", "gaussian_log_prob", "kl_standard_normal", "reparameterize",
        "kl_normal", "sample_with_kl")}
    from fastvae import backends
    b, d, l, k = 3, 10, 4, 2
    x = torch.rand(b, d)
    recon = leaf(torch.randn(b, d))
    mu, lv, z, pm = (leaf(torch.randn(b, l)) for _ in range(4))
    plv = leaf(torch.randn(l))
    obs = leaf(torch.randn(d))
    rk, zk = leaf(torch.randn(k, b, d)), leaf(torch.randn(k, b, l))
    cases = [
        (ops["elbo"]._elbo_op, (x, recon, mu, lv, None, None, None, None, 0.0, "bernoulli",
                                "analytic", 1.0, 0.0, "mean", 1.0, "standard",
                                _needs(x, recon, mu, lv, None, None, None, None), "triton")),
        (ops["elbo"]._elbo_op, (x, recon, mu, lv, z, obs, None, None, 0.0, "gaussian", "mc", 0.5,
                                0.2, "none", -1.0, "standard",
                                _needs(x, recon, mu, lv, z, obs, None, None), "triton")),
        (ops["elbo"]._elbo_op, (x, recon, mu, lv, z, None, pm, plv, 0.0, "continuous_bernoulli",
                                "mc", 1.0, 0.0, "sum", 1.0, "standard",
                                _needs(x, recon, mu, lv, z, None, pm, plv), "triton")),
        (ops["elbo"]._elbo_op, (x, recon, mu, lv, None, None, pm, None, 0.0, "bernoulli",
                                "analytic", 1.0, 0.3, "none", 1.0, "standard",
                                _needs(x, recon, mu, lv, None, None, pm, None), "triton")),
        (ops["elbo"]._elbo_op, (x, recon, mu, lv, z, None, None, None, 0.0,
                                "continuous_bernoulli", "mc", 1.0, 0.0, "sum", 1.0, "stl",
                                [False, True, False, False, True, False, False, False],
                                "triton")),
        (ops["elbo"]._elbo_op, (x, recon, mu, lv, z, None, pm, plv, 0.0, "bernoulli", "mc", 1.0,
                                0.0, "sum", 1.0, "stl",
                                [False, True, False, False, True, False, True, True], "triton")),
        (ops["iwae_bound"]._iwae_bound_op, (x, rk, mu, lv, zk, obs, pm, plv, 0.0, "gaussian",
                                            "mean", -1.0, "standard",
                                            _needs(x, rk, mu, lv, zk, obs, pm, plv), "triton")),
        (ops["iwae_bound"]._iwae_bound_op, (x, rk, mu, lv, zk, None, None, None, 0.0,
                                            "bernoulli", "none", 1.0, "dreg",
                                            [False, True, False, False, True, False, False,
                                             False], "triton")),
        (ops["iwae_bound"]._iwae_bound_op, (x, rk, mu, lv, zk, None, pm, plv, 0.0, "bernoulli",
                                            "none", -1.0, "dreg",
                                            [False, True, False, False, True, False, True, True],
                                            "triton")),
        (ops["gaussian_log_prob"]._op, (x, recon, obs, 0.0, _needs(x, recon, obs), "triton")),
        (ops["kl_standard_normal"]._op, (mu, lv, [True, True], "triton")),
        (ops["kl_normal"]._op, (mu, lv, pm, plv, [True, True, True, True], "triton")),
        (ops["kl_normal"]._op, (mu, lv, None, plv, [True, False, False, True], "triton")),
    ]
    dmol = importlib.import_module("fastvae.ops.discretized_logistic_mixture_log_prob")
    images = torch.randint(0, 256, (b, 3, 2, 5)) / 255.0
    cases += [(dmol._op, (images, leaf(torch.randn(b, 30, 2, 5)), 8, "sum", -1.0, [True],
                          "triton")),
              (dmol._op, (images[:, :1], torch.randn(b, 6, 2, 5), 3, "none", 1.0, [False],
                          "triton"))]
    for n in (3, 0):
        noise = backends.get("triton").reparameterize_noise(mu, n, None)
        cases.append((ops["reparameterize"]._op, (mu, lv, noise, n, "triton")))
        cases.append((ops["reparameterize"]._bwd_op,
                      (torch.randn((n, b, l) if n else (b, l)), lv.detach(), noise, n, True,
                       "triton")))
    noise = backends.get("triton").reparameterize_noise(mu, 0, None)
    swk = ops["sample_with_kl"]
    for prior, needs in (((pm, plv), [True] * 4), ((None, None), [True, True, False, False])):
        cases.append((swk._op, (mu, lv, *prior, noise, needs, "triton")))
    g = [leaf(torch.randn(b, l), False) for _ in range(3)]
    cases.append((swk._bwd_op, (torch.randn(b, l), torch.randn(b), lv.detach(), noise, *g,
                                [True] * 4, "triton")))
    cases.append((swk._bwd_op, (None, torch.randn(b), lv.detach(), noise, *g,
                                [True, False, True, True], "triton")))
    # bf16 inputs shared by every row, or beside a float32 prior: float32 per-row gradients
    # (saved_grad_dtype, kl_mean_grad_dtype) in the kernels' buffers and in the fakes alike
    def h(*s):
        return leaf(torch.randn(*s).bfloat16())
    hm, hl = h(b, l), h(b, l)
    cases += [
        (ops["kl_normal"]._op, (hm, hl, h(l), h(l), [True] * 4, "triton")),
        (ops["elbo"]._elbo_op, (x.bfloat16(), h(b, d), hm, hl, None, h(d), h(l), h(l), 0.0,
                                "gaussian", "analytic", 1.0, 0.0, "none", 1.0, "standard",
                                [False, True, True, True, False, True, True, True], "triton")),
        (ops["gaussian_log_prob"]._op, (h(b, d), h(b, d), h(d), 0.0, [True] * 3, "triton")),
        (swk._op, (hm, hl, leaf(torch.randn(l)), leaf(torch.randn(b, l)),
                   backends.get("triton").reparameterize_noise(hm, 0, None), [True] * 4,
                   "triton"))]
    cases.append((swk._bwd_op, (torch.randn(b, l).bfloat16(), torch.randn(b), hl.detach(),
                                backends.get("triton").reparameterize_noise(hm, 0, None),
                                torch.randn(b, l), torch.randn(b, l).bfloat16(),
                                torch.randn(b, l), [True] * 4, "triton")))
    # a float64 prior beside float32 latents: the seed's z, the KL half in float64
    d = [leaf(torch.randn(s, dtype=torch.float64)) for s in ((l,), (b, l))]
    cases.append((swk._op, (mu, lv, *d, noise, [True] * 4, "triton")))
    cases.append((swk._bwd_op, (torch.randn(b, l), torch.randn(b, dtype=torch.float64),
                                lv.detach(), noise, torch.randn(b, l, dtype=torch.float64),
                                torch.randn(b, l), torch.randn(b, l, dtype=torch.float64),
                                [True] * 4, "triton")))
    for op, args in cases:
        torch.library.opcheck(op, args)


# inductor on CUDA only: on CPU tensors it spends ~40 s building C++ around the same
# custom-op nodes (tests/test_compile.py covers inductor on the CPU backends)
@pytest.mark.parametrize("compile_backend", ["aot_eager", pytest.param("inductor",
                                                                       marks=pytest.mark.gpu)])
def test_compiled_train_step_has_no_graph_break(seed, monkeypatch, launches, compile_backend):
    """torch.compile(fullgraph=True) traces reparameterize (seed drawn by torch.randint,
    a tensor: no .item(), no recompile per seed) and elbo as single custom-op nodes that
    launch the kernels; the backward runs through the registered autograd."""
    import torch._dynamo

    torch._dynamo.reset()
    b, d, l = 8, 20, 3
    x = torch.rand(b, d)
    w = leaf(torch.randn(l, d) * 0.3)
    mu, lv = leaf(torch.randn(b, l)), leaf(torch.randn(b, l) * 0.3)
    step = torch.compile(train_step, fullgraph=True, backend=compile_backend)
    loss = step(x, w, mu, lv)
    loss.backward()
    for t in (w, mu, lv):
        assert t.grad is not None and torch.isfinite(t.grad).all()
    explain = torch._dynamo.explain(train_step)(x, w, mu, lv)
    assert explain.graph_break_count == 0 and explain.graph_count == 1
    # a second call draws a new seed (a tensor: no recompile) and so a new loss
    del launches[:]
    assert float(step(x, w, mu, lv).detach()) != float(loss.detach())
    assert "reparameterize_fwd_kernel" in launches and "elbo_rows_kernel" in launches, launches
