"""fastvae.bench's check before timing: every variant must agree with eager (values,
gradients, the training step, the samplers' draws) by the tests' shared tolerance, and
a wrong one is refused by name.

Tiny shapes, no timed assertions; ``compile`` is left out to keep this under seconds."""
import pytest
import torch

import fastvae
from fastvae import bench, testing
from fastvae.bench import core
from fastvae.bench.specs import _common, train_step


def test_bf16_variants_pass_against_fp32_eager():
    # eager in bf16 is far from exact for IWAE; the check must not reject the others.
    bench.prepare(bench.Case("iwae", 32, 20, 3, k=4, dtype=torch.bfloat16),
                  ["eager", "distributions", "fastvae-torch"], warmup=0)


def test_train_step_variants_agree_on_the_first_step():
    # "own-rng" checks the path the Triton variant takes on a GPU: its checked first
    # step draws z with the eager sampler, later steps with the backend's own.
    own = bench.Variant("own-rng", train_step.train_step_builder(
        lambda: _common.fastvae_loss("torch"), "torch", own_rng=True))
    prepared = bench.prepare(bench.Case("train_mlp", 8, 16, 2), ["eager", "fastvae-torch"],
                             extra_variants={"own-rng": own}, warmup=0)
    assert set(prepared.steps) == {"eager", "fastvae-torch", "own-rng"}


def test_train_step_check_rejects_a_wrong_loss():
    def half_kl(x, recon, mu, logvar):  # beta = 0.5 where 1 was asked for
        bce = torch.nn.functional.binary_cross_entropy_with_logits(recon, x, reduction="sum")
        return bce - 0.25 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())

    wrong = bench.Variant("wrong", train_step.train_step_builder(lambda: half_kl, "torch"))
    with pytest.raises(bench.AgreementError, match="wrong"):
        bench.prepare(bench.Case("train_conv", 4, 64, 2), ["eager"],
                      extra_variants={"wrong": wrong}, warmup=0)


def _wrong_elbo(case, inputs):
    names = ("x", "recon", "mu", "logvar")

    def loss(x, recon, mu, logvar):  # KL with the wrong sign: a classic slip
        return _common.eager_loss(x, recon, mu, logvar) + 2 * 0.5 * torch.sum(
            1 + logvar - mu.pow(2) - logvar.exp())
    return core.loss_step(loss, inputs, names, backward=True)


def _wrong_grad_elbo(case, inputs):
    class HalfGrad(torch.autograd.Function):  # right value, gradient off by 2x
        @staticmethod
        def forward(ctx, recon):
            return recon.view_as(recon)

        @staticmethod
        def backward(ctx, g):
            return 0.5 * g

    names = ("x", "recon", "mu", "logvar")
    return core.loss_step(lambda x, r, mu, lv: _common.eager_loss(x, HalfGrad.apply(r), mu, lv),
                            inputs, names, backward=True)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("build", [_wrong_elbo, _wrong_grad_elbo], ids=["value", "gradient"])
def test_agreement_check_rejects_a_wrong_variant(build, dtype):
    # bf16 is judged against eager in fp32 (relative error at most twice eager's own).
    case = bench.Case("elbo", 16, 12, 3, dtype=dtype)
    with pytest.raises(bench.AgreementError, match="wrong"):
        bench.prepare(case, ["eager"], extra_variants={"wrong": bench.Variant("wrong", build)},
                      warmup=0)


def _scaled_elbo(case, inputs):
    names = ("x", "recon", "mu", "logvar")
    return core.loss_step(lambda x, r, mu, lv: 1.02 * _common.eager_loss(x, r, mu, lv),
                          inputs, names, backward=True)


@pytest.mark.parametrize("op,k", [("elbo", 1), ("iwae", 5)])
def test_fastvae_in_16_bit_is_held_to_one_rounding_not_to_eagers_error(op, k):
    """fastvae computes in fp32 from bf16 inputs: its outputs may be off the fp32 result
    by one rounding, not by twice eager's bf16 error (IWAE's gradients ~50%, which passed
    a gradient halved: a review's find). A fastvae-named variant 2% off is refused; the
    real ones pass."""
    case = bench.Case(op, 64, 784, 8, k=k, dtype=torch.bfloat16)
    bench.prepare(case, ["eager", "fastvae-torch", "fastvae-aten"], warmup=0)
    if op == "elbo":
        wrong = {"fastvae-scaled": bench.Variant("fastvae-scaled", _scaled_elbo)}
        with pytest.raises(bench.AgreementError, match=r"fastvae-scaled, loss: .* over 0.0078"):
            bench.prepare(case, ["eager"], extra_variants=wrong, warmup=0)


def _no_noise(case, inputs):
    mu, logvar, dz = inputs["mu"], inputs["logvar"], inputs["dz"]

    def step():
        mu.grad = logvar.grad = None
        z = mu + 0 * logvar  # forgot the noise
        z.backward(dz)
        return z.detach(), mu.grad, logvar.grad
    return step


def _wrong_dlogvar(case, inputs):
    mu, logvar, dz = inputs["mu"], inputs["logvar"], inputs["dz"]

    def step():
        mu.grad = logvar.grad = None
        z = mu + torch.exp(logvar) * torch.randn_like(mu)  # std = exp(logvar): wrong
        z.backward(dz)
        return z.detach(), mu.grad, logvar.grad
    return step


@pytest.mark.parametrize("build", [_no_noise, _wrong_dlogvar], ids=["no-noise", "dlogvar"])
def test_reparameterize_self_check_rejects_a_wrong_sampler(build):
    case = bench.Case("reparameterize", 512, 1, 8, k=1)
    with pytest.raises(bench.AgreementError, match="wrong"):
        bench.prepare(case, ["eager", "fastvae-torch"],
                      extra_variants={"wrong": bench.Variant("wrong", build)}, warmup=0)


def test_a_sampler_that_keeps_its_first_noise_is_rejected():
    """Samplers are checked alone, once on the first call and once after the warm-up: a
    variant that drew its noise once and reused it would be timed without drawing any
    (a review's find)."""
    from fastvae.bench.specs.reparameterize import _make
    kept = {}

    def fixed_noise(mu, logvar, k):
        eps = kept.setdefault("eps", torch.randn(mu.shape, dtype=mu.dtype))
        return mu + eps * torch.exp(0.5 * logvar)
    case = bench.Case("reparameterize", 512, 1, 8, k=1)
    with pytest.raises(bench.AgreementError, match="fixed: a later call drew the same sample"):
        bench.prepare(case, ["eager", "fastvae-torch"],
                      extra_variants={"fixed": bench.Variant("fixed", _make(lambda: fixed_noise,
                                                                            None))})


def test_agreement_check_uses_the_shared_tolerance():
    """The check before timing is fastvae.testing's rule: a loss off by half the
    float32 allowance passes, one off by twice it is rejected."""
    rtol, atol = testing.tolerance(torch.float32)

    def scaled(factor):
        def build(case, inputs):
            return core.loss_step(lambda *a: _common.eager_loss(*a) * factor, inputs,
                                  ("x", "recon", "mu", "logvar"), backward=False)
        return bench.Variant("scaled", build)

    case = bench.Case("elbo_eval", 16, 12, 3)
    bench.prepare(case, ["eager"], extra_variants={"scaled": scaled(1 + (rtol + atol) / 2)},
                  warmup=0)
    with pytest.raises(bench.AgreementError, match="scaled vs eager, loss"):
        bench.prepare(case, ["eager"], extra_variants={"scaled": scaled(1 + 2 * (rtol + atol))},
                      warmup=0)


@pytest.mark.parametrize("op", list(bench.OPS))
def test_every_op_agrees_at_a_tiny_shape(op):
    """Every registered op, a new one included, passes its own check on the CPU
    variants (the compiled ones left out for time) and reports bytes moved consistently."""
    spec = bench.OPS[op]
    case = bench.Case(op, 8, 64, 3, k=max(spec.k_values or (1,)))
    names = [n for n in core.variant_names(op, "cpu") if n not in core.COMPILED]
    prepared = bench.prepare(case, names, warmup=0)
    assert set(prepared.steps) == set(names)
    moved = bench.bytes_moved(case)
    assert moved is None or moved > 0


def test_the_samplers_check_refuses_correlated_draws():
    """Pooled mean and variance alone passed one draw repeated for every sample, or one
    noise row for every batch row (a stream restarted at the same offset)."""
    from fastvae.bench.core import AgreementError
    from fastvae.bench.specs._common import check_noise

    g = torch.Generator().manual_seed(0)
    check_noise("iid", torch.randn(16, 64, 32, generator=g), 0.0)
    check_noise("none", torch.randn(0, 32, generator=g), 0.0)
    for what, eps in [("same for every sample",
                       torch.randn(64, 32, generator=g).expand(16, 64, 32)),
                      ("same for every row", torch.randn(1, 32, generator=g).expand(64, 32))]:
        with pytest.raises(AgreementError, match=what):
            check_noise(what, eps, 0.0)


def test_train_hvae_checks_a_fused_backend_with_its_own_kl_and_eager_draws(monkeypatch):
    """The Triton variant's checked step ran everything on the reference backend, so the
    check compared the reference with itself. Now it draws as eager draws and runs the
    KL (and the likelihood) on its backend; shown here with "torch", which takes the same
    path on the CPU."""
    from fastvae.bench.specs import train_hvae as spec
    from fastvae.models import HierarchicalVAE

    torch.manual_seed(0)
    inputs = {"x": (torch.rand(4, 1, 4, 4) < 0.3).float(),
              "model": HierarchicalVAE((1, 4, 4), 2, (4, 8), 1)}
    asked = []
    kl_normal = fastvae.kl_normal
    monkeypatch.setattr(fastvae, "kl_normal",
                        lambda *a, backend=None: asked.append(backend) or kl_normal(
                            *a, backend=backend))
    results = []
    for build in (spec._build("reference"), spec._build("torch", own_rng=True)):
        step = build(None, inputs)
        torch.manual_seed(1234)
        results.append(getattr(step, "check_step", step)())
    assert asked == ["torch"] * 2   # two groups, on the variant's backend
    for got, want in zip(results[1], results[0]):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
