"""validate=True inside torch.compile(fullgraph=True): the value checks are one custom op
that the graph keeps (an op returning nothing is otherwise dead code) and that raises
eager's ValueError when the compiled function runs."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch

import fastvae

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_validate_true_compiles_fullgraph_and_raises_at_run_time():
    torch._dynamo.reset()

    def step(x, recon, mu, logvar):
        return fastvae.elbo(x, recon, mu, logvar, backend="torch", validate=True)

    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    x, recon = torch.rand(4, 6), torch.randn(4, 6, requires_grad=True)
    mu, logvar = torch.randn(4, 3, requires_grad=True), torch.randn(4, 3, requires_grad=True)
    got = compiled(x, recon, mu, logvar)
    torch.testing.assert_close(got, step(x, recon, mu, logvar))
    got.backward()
    bad_mu = mu.detach().clone()
    bad_mu[1, 2] = float("nan")
    with pytest.raises(ValueError, match=r"^mu has 1 non-finite value\(s\) \(NaN or inf\)$"):
        compiled(x, recon, bad_mu, logvar)
    with pytest.raises(ValueError, match=r"likelihood='bernoulli' needs x in \[0, 1\]"):
        compiled(x + 1.0, recon, mu, logvar)


def test_validate_true_compiled_dmol_checks_the_grid():
    torch._dynamo.reset()
    compiled = torch.compile(
        lambda x, p: fastvae.discretized_logistic_mixture_log_prob(x, p, backend="torch",
                                                                   validate=True),
        fullgraph=True, backend="aot_eager")
    x = torch.randint(0, 256, (2, 1, 2, 2)) / 255.0
    params = torch.randn(2, 3, 2, 2)
    compiled(x, params)
    with pytest.raises(ValueError, match="x must lie on the 8-bit grid"):
        compiled(x + 0.4 / 255, params)


def test_validate_true_compiled_under_vmap():
    torch._dynamo.reset()
    compiled = torch.compile(
        torch.vmap(lambda mu, lv: fastvae.kl_standard_normal(mu, lv, backend="torch",
                                                             validate=True)),
        fullgraph=True, backend="aot_eager")
    mu, lv = torch.randn(5, 2, 3), torch.randn(5, 2, 3)
    torch.testing.assert_close(compiled(mu, lv), 0.5 * (mu ** 2 + lv.exp() - 1 - lv).sum(-1))
    lv[4, 1, 0] = float("inf")
    with pytest.raises(ValueError, match="^logvar has 1 non-finite value"):
        compiled(mu, lv)


def test_a_torch_without_register_vmap_imports_and_checks_eagerly():
    """torch.library's register_vmap is torch >= 2.5 (pyproject says torch >= 2.4): there
    ``import fastvae`` must still work, the checks running as eager code (a graph break under
    torch.compile, as before the op), not an AttributeError at import."""
    code = textwrap.dedent("""
        import torch, torch._library.custom_ops as c
        del c.CustomOpDef.register_vmap
        import fastvae
        from fastvae import value_checks
        assert not value_checks._traceable
        mu = torch.zeros(2, 3)
        lv = torch.full((2, 3), float("nan"))
        try:
            fastvae.kl_standard_normal(mu, lv, backend="torch", validate=True)
        except ValueError as e:
            print(e)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "logvar has 6 non-finite value(s) (NaN or inf)"
