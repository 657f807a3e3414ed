"""A torch.export program trained through: the fused ops' ``needs`` argument is fixed when
the graph is recorded, so a loss exported from inputs that needed no gradient (the usual
example inputs) and then called on ones that do must still give every gradient, the
reference's in float64; DReG, whose hook is not in such a graph, refuses."""
import re

import pytest
import torch

import fastvae

F64 = torch.float64


class _Call(torch.nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, *args):
        return self.fn(*args)


def _inputs():
    torch.manual_seed(0)
    b, d, l, k = 4, 5, 3, 2
    x = torch.rand(b, d, dtype=F64)
    px = torch.randint(0, 256, (2, 3, 2, 2)).to(F64) / 255
    return dict(
        elbo=(lambda be: (lambda x, r, mu, lv, obs: fastvae.ELBOLoss(
            "gaussian", "analytic", 0.7, 0.1, "sum", be)(x, r, mu, lv, obs_logvar=obs)),
            (x, torch.randn(b, d, dtype=F64), torch.randn(b, l, dtype=F64),
             torch.randn(b, l, dtype=F64), torch.randn(d, dtype=F64))),
        iwae_stl=(lambda be: (lambda x, r, mu, lv, z: fastvae.IWAELoss(
            "bernoulli", "none", be, estimator="stl")(x, r, mu, lv, z).sum()),
            (x, torch.randn(k, b, d, dtype=F64), torch.randn(b, l, dtype=F64),
             torch.randn(b, l, dtype=F64), torch.randn(k, b, l, dtype=F64))),
        dmol=(lambda be: (lambda x, p: fastvae.DiscretizedLogisticMixtureNLLLoss(
            backend=be)(x, p)), (px, torch.randn(2, 30, 2, 2, dtype=F64))),
        kl_normal=(lambda be: (lambda mu, lv, pm: fastvae.kl_normal(
            mu, lv, pm, 0.3, backend=be).sum()),
            (torch.randn(b, l, dtype=F64), torch.randn(b, l, dtype=F64),
             torch.randn(l, dtype=F64))),
        gaussian_log_prob=(lambda be: (lambda x, m: fastvae.gaussian_log_prob(
            x, m, 0.2, backend=be).sum()), (x, torch.randn(b, d, dtype=F64))),
    )


@pytest.mark.parametrize("which", ["elbo", "iwae_stl", "dmol", "kl_normal",
                                   "gaussian_log_prob"])
def test_an_exported_loss_gives_the_gradients_its_example_inputs_did_not_need(which):
    make, args = _inputs()[which]
    program = torch.export.export(_Call(make("torch")), args).module()
    got_in = [a.clone().requires_grad_() for a in args]
    want_in = [a.clone().requires_grad_() for a in args]
    got = program(*got_in)
    want = make("reference")(*want_in)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    got.backward()
    want.backward()
    for i, (g, w) in enumerate(zip(got_in, want_in)):
        assert (g.grad is None) == (w.grad is None), f"input {i}"
        if w.grad is not None:
            torch.testing.assert_close(g.grad, w.grad, rtol=1e-10, atol=1e-12)


def test_an_exported_sampler_gives_the_gradients_of_z_and_the_kl():
    torch.manual_seed(0)
    mu, lv = torch.randn(4, 3, dtype=F64), torch.randn(4, 3, dtype=F64)

    def f(mu, lv):
        z, kl = fastvae.sample_with_kl(mu, lv, backend="torch")
        return z, kl

    program = torch.export.export(_Call(f), (mu, lv)).module()
    leaves = [t.clone().requires_grad_() for t in (mu, lv)]
    z, kl = program(*leaves)
    w = torch.rand(z.shape, dtype=F64)
    ((z * w).sum() + kl.sum()).backward()
    # z = mu + exp(lv/2) eps, with eps read back from z
    eps = (z.detach() - mu) * torch.exp(-0.5 * lv)
    want_mu = w + mu
    want_lv = 0.5 * w * eps * torch.exp(0.5 * lv) + 0.5 * (torch.exp(lv) - 1)
    torch.testing.assert_close(leaves[0].grad, want_mu, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(leaves[1].grad, want_lv, rtol=1e-10, atol=1e-12)


def test_an_exported_dreg_bound_refuses_its_backward():
    torch.manual_seed(0)
    x, r = torch.rand(3, 4, dtype=F64), torch.randn(2, 3, 4, dtype=F64)
    mu, lv, z = (torch.randn(*s, dtype=F64) for s in ((3, 2), (3, 2), (2, 3, 2)))
    program = torch.export.export(fastvae.IWAELoss(estimator="dreg"), (x, r, mu, lv, z)).module()
    loss = program(x, r.requires_grad_(), mu, lv, z.requires_grad_())
    with pytest.raises(RuntimeError, match="estimator='dreg' in a graph recorded"):
        loss.backward()


@pytest.mark.skipif(not hasattr(torch.compiler, "is_exporting"), reason="torch < 2.5")
@pytest.mark.parametrize("strict", [False, True])
def test_exporting_a_dreg_bound_that_needs_its_hook_names_torch_export(strict):
    """From inputs that require grad the hook is needed, and refused: named as the export
    that was run, not as a torch.compile the user never called."""
    torch.manual_seed(0)
    x, r = torch.rand(3, 4, dtype=F64), torch.randn(2, 3, 4, dtype=F64).requires_grad_()
    mu, lv, z = (torch.randn(*s, dtype=F64) for s in ((3, 2), (3, 2), (2, 3, 2)))
    with pytest.raises(Exception, match=r"estimator='dreg' is not supported inside "
                                        r"torch\.export: .* the exported graph") as e:
        torch.export.export(fastvae.IWAELoss(estimator="dreg"),
                            (x, r, mu, lv, z.requires_grad_()), strict=strict)
    # fastvae's own words, not the traceback dynamo may add (its source lines read
    # torch.compiler.is_compiling())
    assert not re.search(r"inside torch\.compile\b|the compiled (graph|function)", str(e.value))
