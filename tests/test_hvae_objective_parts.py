"""The hierarchical VAE's objective, part by part, against float64 formulas: its
log-variances are twice the soft-clamped log-standard-deviations (bounded by 10), its
ELBO weighs the groups' KL by beta and scores x under the learned obs_logvar, its IWAE
estimate pairs every image with its own features and counts log p(z) - log q(z), and a
config without "groups" builds the class's default."""
import math

import torch
import torch.nn.functional as F

from fastvae import hvae
from fastvae.hvae import BOUND, HierarchicalVAE, gaussian_params
from fastvae.models import build_model


def _model(likelihood="bernoulli"):
    """A small model whose groups' heads are perturbed away from zero, so that each
    posterior differs from its prior and from image to image."""
    torch.manual_seed(0)
    model = HierarchicalVAE((1, 4, 4), latent_channels=2, channels=(4, 6), groups=2,
                            likelihood=likelihood)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return model


def test_log_variance_is_twice_the_clamped_log_sd():
    torch.manual_seed(0)
    raw = torch.randn(3, 4, 2, 2, dtype=torch.float64) * 20
    mu, logvar = gaussian_params(raw)
    want_mu = BOUND * torch.tanh(raw[:, :2] / BOUND)
    want_lv = 2 * BOUND * torch.tanh(raw[:, 2:] / BOUND)
    torch.testing.assert_close(mu, want_mu)
    torch.testing.assert_close(logvar, want_lv)
    assert logvar.abs().max() > BOUND   # reaches past the log-sd's bound, up to 2 * BOUND


def test_elbo_weighs_the_kl_by_beta_under_the_learned_obs_logvar():
    model = _model("gaussian")
    with torch.no_grad():
        model.obs_logvar.copy_(torch.randn(model.obs_logvar.shape))
    x = torch.rand(5, 1, 4, 4)
    beta = 0.25
    torch.manual_seed(3)
    with torch.no_grad():
        recon, kl = model(x)
    torch.manual_seed(3)
    got = model.elbo(x, beta=beta, reduction="none")
    s = model.obs_logvar.double().expand_as(x)
    log_px = (-0.5 * ((x.double() - recon.double()) ** 2 * torch.exp(-s) + s
                      + math.log(2 * math.pi))).flatten(1).sum(1)
    want = log_px - beta * kl.double().sum(0)
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-4)


def test_iwae_nll_at_the_posterior_means_is_the_log_density_formula(monkeypatch):
    """With every draw at its posterior mean (the sampler replaced) the K samples are
    equal, so -L_K is minus one log w, computed here in float64."""
    model = _model()
    torch.manual_seed(1)
    x = torch.rand(3, 1, 4, 4).round()
    monkeypatch.setattr(hvae, "reparameterize", lambda mu, lv, **kw: mu)
    got = model.iwae_nll(x, k=4, chunk_size=2)
    log_pz_qz = []

    def draw(q, p):
        z = q[0].double()
        lq = torch.distributions.Normal(z, torch.exp(0.5 * q[1].double())).log_prob(z)
        lp = torch.distributions.Normal(p[0].double(), torch.exp(0.5 * p[1].double()))
        log_pz_qz.append((lp.log_prob(z) - lq).flatten(1).sum(1))
        return q[0], None

    with torch.no_grad():
        recon, _ = model._top_down(3, model._bottom_up(x), draw)
    log_px = -F.binary_cross_entropy_with_logits(recon.double(), x.double(),
                                                 reduction="none").flatten(1).sum(1)
    want = -(log_px + torch.stack(log_pz_qz).sum(0))
    assert torch.stack(log_pz_qz).abs().min() > 1e-3   # q and p differ in every group
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-4)


def test_a_config_without_groups_builds_the_default_number():
    m = build_model({"model": "hvae", "data_shape": [1, 8, 8], "latent": 2})
    default = HierarchicalVAE((1, 8, 8), latent_channels=2)
    assert m.num_groups == default.num_groups
    assert m.state_dict().keys() == default.state_dict().keys()
