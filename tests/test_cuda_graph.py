"""A training step on the Triton backend captured in a CUDA graph and replayed (GPU only).

Capture fails on any host sync (``.item()``, a host read of a device value) and replays
the allocations of the captured step; so a step that captures, replays and matches the
same steps run eagerly has neither. The ELBO's batch sum uses a device ticket counter
that its last program resets, so replays need nothing from the host.
"""
import copy

import pytest
import torch

import fastvae
from _backends import HAS_TRITON

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not HAS_TRITON, reason="needs the triton package")]


def _capture(step, warmup=3):
    """Warm ``step`` up on a side stream (compiles the kernels), then capture it."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(warmup):
            step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = step()
    return graph, out


def _net(b, d, l, seed):
    torch.manual_seed(seed)
    enc = torch.nn.Linear(d, 2 * l).cuda()
    dec = torch.nn.Linear(l, d).cuda()
    return torch.nn.ModuleList([enc, dec]), torch.rand(b, d, device="cuda")


@pytest.mark.parametrize("reduction", ["sum", "mean"])
@pytest.mark.parametrize("free_bits", [0.0, 0.5])
def test_elbo_training_step_replays_like_eager(reduction, free_bits):
    """Deterministic step (z = mu, no sampling): replays equal the same eager steps."""
    b, d, l = 300, 784, 16
    net, x = _net(b, d, l, 0)
    eager = copy.deepcopy(net)
    loss_fn = fastvae.ELBOLoss(reduction=reduction, free_bits=free_bits, backend="triton")

    def make_step(model, opt):
        def step():
            opt.zero_grad(set_to_none=False)
            mu, logvar = model[0](x).chunk(2, dim=1)
            loss = loss_fn(x, model[1](mu), mu, logvar)
            loss.backward()
            opt.step()
            return loss.detach()
        return step

    opt = torch.optim.Adam(net.parameters(), lr=1e-3, capturable=True)
    graph, static_loss = _capture(make_step(net, opt))
    eager_opt = torch.optim.Adam(eager.parameters(), lr=1e-3, capturable=True)
    eager_step = make_step(eager, eager_opt)
    for _ in range(3):  # the warm-up's steps (capturing runs nothing), then step by step
        eager_step()
    for _ in range(3):
        graph.replay()
        want = eager_step()
        torch.testing.assert_close(static_loss, want, rtol=1e-5, atol=1e-4)
    for p, q in zip(net.parameters(), eager.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)
    assert fastvae.backends.last_used() == "triton"


def test_vae_training_step_with_sampling_captures_and_replays():
    """The whole step of fastvae.models.VAE (Triton sampler, ELBO, Adam): no host sync
    (the sync debug mode raises on one), captures, and each replay trains on."""
    torch.manual_seed(0)
    model = fastvae.models.VAE(data_shape=(784,), latent_dim=16, hidden=(128,)).cuda()
    x = torch.rand(512, 784, device="cuda")
    loss_fn = fastvae.ELBOLoss(reduction="sum", backend="triton")
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, capturable=True)

    def step():
        opt.zero_grad(set_to_none=False)
        recon, mu, logvar, _ = model(x, backend="triton")
        loss = loss_fn(x, recon, mu, logvar)
        loss.backward()
        opt.step()
        return loss.detach()

    step()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        step()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    graph, static_loss = _capture(step)
    losses = []
    for _ in range(20):
        graph.replay()
        losses.append(static_loss.clone())
    losses = torch.stack(losses).cpu()
    assert torch.isfinite(losses).all()
    assert losses[-5:].mean() < losses[:5].mean()  # it trains
