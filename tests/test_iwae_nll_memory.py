"""The models' IWAE NLL folds each chunk of samples into a running log-sum-exp: what it
holds does not grow with K (the hvae kept every K x B float64 log-weight: eval --k 10**7 at
batch 256 needed ~20 GB; the mlp and conv models one tensor per chunk), and the estimate is
the all-at-once logsumexp of the same draws to float64 rounding."""
from __future__ import annotations

import gc
import math

import pytest
import torch

from fastvae import hvae as H
from fastvae import models
from fastvae.models import ConvVAE, HierarchicalVAE, VAE
from fastvae.observation import RunningLogSumExp

INF, NAN = math.inf, math.nan


def _folded(blocks):
    acc = RunningLogSumExp()
    for b in blocks:
        acc.add(b)
    return acc.result()


@pytest.mark.parametrize("sizes", [(1,), (3, 1, 5), (1,) * 9, (4, 4)])
def test_running_logsumexp_is_the_float64_logsumexp_of_the_blocks(sizes):
    """Blocks whose max rises, falls and spans 1e4 nats, folded one by one."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(sum(sizes), 5, generator=gen, dtype=torch.float64) * 30 - 200
    x[-1, 0], x[0, 1] = 1e4, -1e4  # the max rises by far at the end; falls after the start
    blocks = list(x.float().split(sizes))
    want = torch.logsumexp(torch.cat(blocks).double(), 0)
    torch.testing.assert_close(_folded(blocks), want, rtol=1e-13, atol=0)


def test_running_logsumexp_of_infinities_and_nan_is_torch_s():
    """Per column: all -inf, -inf before a far-negative value (0 * inf must not make NaN),
    +inf late, NaN early, and a finite column beside them."""
    cols = torch.tensor([[-INF, -INF, 5.0, NAN, 1.0],
                         [-INF, -1e3, INF, 1.0, 2.0],
                         [-INF, -INF, 1.0, 2.0, 3.0]], dtype=torch.float64)
    want = torch.logsumexp(cols, 0)
    got = _folded(cols.split(1))
    torch.testing.assert_close(got, want, equal_nan=True, rtol=1e-15, atol=0)
    assert got[0] == -INF and got[2] == INF and got[3].isnan()


def _small_hvae():
    torch.manual_seed(0)
    model = HierarchicalVAE((1, 8, 8), latent_channels=3, channels=(8, 12))
    torch.manual_seed(1)
    for groups in model.stages:  # posteriors and priors that differ (fresh ones are equal)
        for group in groups:
            group.prior.reset_parameters()
            group.posterior.reset_parameters()
    return model


def _record_log_weights(model, monkeypatch):
    """Each chunk's per-sample log-weights (mlp, conv: the chunk's logsumexp, ``bound +
    log k_c``), in float64, as iwae_nll computes them from its draws."""
    seen = []
    if isinstance(model, HierarchicalVAE):
        real_td, real_px, stats = H.HierarchicalVAE._top_down, H.HierarchicalVAE.log_px, []

        def top_down(self, *a, **kw):
            recon, st = real_td(self, *a, **kw)
            stats.append(torch.stack(st).sum(0).double())
            return recon, st

        def log_px(self, x, recon, backend=None):
            out = real_px(self, x, recon, backend)
            seen.append((out.double() + stats.pop()).reshape(-1, 4))
            return out
        monkeypatch.setattr(H.HierarchicalVAE, "_top_down", top_down)
        monkeypatch.setattr(H.HierarchicalVAE, "log_px", log_px)
    else:
        real = models.iwae_bound

        def spy(x, recon_k, *a, **kw):
            out = real(x, recon_k, *a, **kw)
            seen.append(out.double()[None] + math.log(recon_k.shape[0]))
            return out
        monkeypatch.setattr(models, "iwae_bound", spy)
    return seen


MAKERS = [lambda: VAE((1, 8, 8), 3, hidden=(16,)),
          lambda: ConvVAE((1, 8, 8), 3, channels=(4, 8), hidden=16),
          _small_hvae]


@pytest.mark.parametrize("make", MAKERS, ids=["mlp", "conv", "hvae"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_the_estimate_is_the_all_at_once_logsumexp_of_the_same_draws(make, dtype, monkeypatch):
    torch.manual_seed(0)
    model = make().to(dtype)
    x = torch.rand(4, 1, 8, 8).round().to(dtype)
    seen = _record_log_weights(model, monkeypatch)
    k = 23
    got = model.iwae_nll(x, k=k, chunk_size=5, generator=torch.Generator().manual_seed(3))
    assert len(seen) == 5  # 5, 5, 5, 5, 3
    want = -(torch.logsumexp(torch.cat(seen), 0) - math.log(k))
    assert got.dtype == dtype
    torch.testing.assert_close(got.double(), want.to(dtype).double(), rtol=1e-12, atol=0)


def _live_tensors() -> int:
    gc.collect()
    return sum(1 for o in gc.get_objects() if issubclass(type(o), torch.Tensor))


@pytest.mark.parametrize("make", MAKERS, ids=["mlp", "conv", "hvae"])
def test_what_is_held_across_chunks_does_not_grow_with_k(make, monkeypatch):
    """One sample per chunk: the tensors alive as each chunk is scored are as many at the
    last chunk as at the second."""
    torch.manual_seed(0)
    model = make()
    x = torch.rand(3, 1, 8, 8).round()
    counts = []
    if isinstance(model, HierarchicalVAE):
        real = H.HierarchicalVAE.log_px

        def spy(self, *a, **kw):
            counts.append(_live_tensors())
            return real(self, *a, **kw)
        monkeypatch.setattr(H.HierarchicalVAE, "log_px", spy)
    else:
        real = models.iwae_bound

        def spy(*a, **kw):
            counts.append(_live_tensors())
            return real(*a, **kw)
        monkeypatch.setattr(models, "iwae_bound", spy)
    model.iwae_nll(x, k=6, chunk_size=1)
    assert len(counts) == 6
    assert counts[-1] == counts[1], counts
