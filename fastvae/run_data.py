"""A saved model and the data it meets, checked before either is used: the weights finite;
the data in range for the likelihood, of the image shape the model was trained on, and
with a finite ELBO under the model (its densities overflow on data of another scale,
which no learning rate can help). Shared by ``fastvae train`` (fresh and resumed),
``fastvae eval`` and ``fastvae sample``."""
from __future__ import annotations

import math

import torch

from . import ranks
from .checkpoint import CheckpointError
from .data import DataError
from .guard import all_finite


def check_weights_finite(model: torch.nn.Module, ckpt_file) -> None:
    """CheckpointError naming ``ckpt_file`` when a weight of ``model`` is NaN or inf:
    nothing it computes or draws would be finite, whatever the data."""
    if not all_finite(model.state_dict().values()):
        raise CheckpointError(f"{ckpt_file}: the model's weights are not all finite; nothing "
                              "it computes or draws would be")


def _check_range(data, likelihood: str, fix: str) -> None:
    if likelihood in ("bernoulli", "continuous_bernoulli"):
        lo, hi = data.bounds
        if lo < 0 or hi > 1:
            raise DataError(f"{data.name}: likelihood {likelihood!r} needs pixels in [0, 1], got "
                            f"{data.quote(lo, hi)}; {fix}")


def check_elbo_finite(m: dict, images: torch.Tensor, dataset: str, whose: str,
                      fix: str = "on this data; was it scaled otherwise when the run was "
                                 "trained?") -> None:
    """DataError when ``m`` (:func:`~fastvae.evaluation.evaluate` on ``images``) has a
    non-finite ELBO: the model's densities overflow on this data, which no learning rate
    can help; ``whose`` model it is and what to ``fix`` go into the message (by default,
    for a trained model: the data may have been rescaled since)."""
    if not math.isfinite(m["elbo"]):
        lo, hi = float(images.min()), float(images.max())
        raise DataError(f"{whose} test ELBO is {m['elbo']} on {dataset} (values in "
                        f"[{lo:g}, {hi:g}]): its densities overflow {fix}")


def check_run_data(data, likelihood: str, data_shape, ckpt_file, saved: bool = True,
                   changed=None) -> None:
    """The data a model meets: in range for its likelihood and, for a ``saved`` one
    (resumed or evaluated), of the shape it was trained on (``data_shape``; None skips that
    check). A saved model's likelihood is its own, so the advice for out-of-range data is
    the data's scale, led by ``changed`` (:func:`data_changed`'s sentence) where the file
    is not the one it was trained on."""
    if not saved:
        _check_range(data, likelihood, "rescale the data or use --likelihood gaussian")
        return
    _check_range(data, likelihood, (f"{changed}; " if changed else "")
                 + "give it the data as it was scaled when the run was trained")
    if data_shape is not None and list(data_shape) != list(data.shape):
        raise CheckpointError(f"{ckpt_file} was trained on images of shape "
                              f"{tuple(data_shape)}, but {data.name} has {data.shape}")


def data_changed(data, digest, ckpt_file):
    """The sentence saying that ``data`` is not the data the run in ``ckpt_file`` was
    trained on (its :attr:`~fastvae.data.Dataset.digest` differs from the run's
    ``digest``), or None where it is, or the run kept no digest."""
    if digest is None or data.digest == digest:
        return None
    return (f"{data.name} holds other images than {ckpt_file} was trained on (the file was "
            "replaced or rewritten since)")


def same_data_everywhere(data, rank: int, world: int) -> None:
    """A DataError on every rank (rank 0 says it) where a rank read other images than
    rank 0 (another copy of the file on its node): the DistributedSampler indexes each
    rank's own copy, and a rank with fewer images runs fewer steps than the others,
    which then wait in the gradients' all-reduce until the group times out."""
    said = [None] * world
    torch.distributed.all_gather_object(said, (data.digest, len(data.train), len(data.test)))
    differ = [r for r, s in enumerate(said) if s != said[0]]
    if differ:
        def what(r):
            return f"rank {r}: {said[r][1]} train / {said[r][2]} test images"
        raise ranks.alike(DataError(
            f"{data.name}: the processes read different images ({what(0)}; "
            + "; ".join(what(r) + (" of other values" if said[r][1:] == said[0][1:] else "")
                        for r in differ)
            + "); every process must read the same data (the same file on each node)"))
