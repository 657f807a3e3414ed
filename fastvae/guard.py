"""The NaN policy of ``fastvae train``: nothing non-finite is trained on, counted as good or
saved.

Checked every step: the loss before backward, then the gradient norm and the weights
after the optimizer step (one host sync for both), and that no gradient's square
overflows (Adam keeps it in the weights' dtype: its state would be inf, every later
update 0 or NaN). Checked every epoch, before the checkpoint is written: the optimizer
state and the epoch's train and test metrics (finite
weights can still give a NaN test ELBO, e.g. a log-variance that overflows ``exp``).
A failure raises :class:`NonFiniteLoss` naming the epoch and step and the checkpoint that
stays, which is always the last one written, so it never holds a non-finite number.

With a GradScaler (fp16 on CUDA) non-finite gradients are expected: the scaler skips
that step and lowers its scale, so a step whose (unscaled) gradients are not finite is no
stop, and no update either. The steps the scaler does take are checked as any other: a
finite gradient whose square overflows Adam's state is not the scaler's to catch.
"""
from __future__ import annotations

import math
from pathlib import Path

import torch

from . import ranks, stops
from ._dtypes import widest


class NonFiniteLoss(RuntimeError):
    """Training produced a NaN or inf (loss, gradient, weight, optimizer state or metric);
    the message names the epoch, the step and the checkpoint that is kept."""


def _floating(tensors):
    return [t.detach() for t in tensors if torch.is_tensor(t) and t.is_floating_point()]


def all_finite(tensors) -> bool:
    """Whether every floating-point tensor among ``tensors`` is finite (one host sync)."""
    flags = [torch.isfinite(t).all() for t in _floating(tensors)]
    return bool(torch.stack(flags).all()) if flags else True


def _norms(tensors) -> torch.Tensor:
    """Each tensor's 2-norm, stacked, summed in float64: the square of any float32 value
    fits there, so a norm is finite iff every element is (in float32 a finite weight of
    1e30 would overflow to an inf norm). One fused call where torch has it (what
    clip_grad_norm_ uses), a loop otherwise; MPS has no float64."""
    if not tensors:
        return torch.zeros(0)
    wide = widest(tensors[0].device)
    try:
        norms = torch._foreach_norm(tensors, 2, dtype=wide)
    except (AttributeError, TypeError, RuntimeError):
        norms = [torch.linalg.vector_norm(t, dtype=wide) for t in tensors]
    return torch.stack(norms)


_SQRT_MAX = {dt: math.sqrt(torch.finfo(dt).max)
             for dt in (torch.float16, torch.bfloat16, torch.float32, torch.float64)}


def _optimizer_tensors(opt):
    for per_param in opt.state.values():
        yield from per_param.values()


class Guard:
    """Checks one run against the NaN policy; knows which checkpoint is the last good one."""

    def __init__(self, checkpoint: Path, saved_epoch: int | None, out, lr: float,
                 check_grads: bool = True, epochs: int | None = None, world: int = 1,
                 flags=(), data_scaled: bool = False):
        self.checkpoint, self.saved_epoch = Path(checkpoint), saved_epoch
        # check_grads=False under a GradScaler: a step with non-finite gradients is the
        # scaler's skipped step, not a stop (the steps it takes are checked all the same)
        self.out, self.lr, self.check_grads = out, lr, check_grads
        # what the resume command must repeat: the run's target, and the flags a resume
        # was given that its last checkpoint may not hold yet (``flags``, without --lr)
        self.flags = ([] if epochs is None else ["--epochs", epochs]) + list(flags)
        self.world = world    # under torchrun, the resume command is torchrun's
        # the data within [-1, 1] already: advice to scale it is no help
        self.data_scaled = data_scaled
        # whether an optimizer step passed the checks since the last checkpoint this run
        # wrote (or since the start): if none did, the weights are the checkpoint's
        self.stepped = False

    def saved(self, epoch: int) -> None:
        """Record that ``epoch``'s checkpoint is now on disk."""
        self.saved_epoch = epoch
        self.stepped = False

    def _stop(self, what: str, value, where: str, after_update: bool = False,
              problem: str | None = None, scale_hint: bool = False):
        """Raise NonFiniteLoss; ``after_update``: ``what`` was written by an optimizer
        update (which a lower --lr may fix), not computed before any. ``problem``: what
        is wrong, where it is not "non-finite {what} ({value})"; ``scale_hint``: data far
        from [0, 1] may be the cause as much as the learning rate. Under torchrun every
        value checked is the same on every rank (the averaged loss, gradients and train
        metrics, the weights and optimizer state DDP keeps equal, the test metrics that
        evaluate draws from its own seeded generator on those weights): rank 0 says it.
        A rank meeting one alone at an epoch's end is named by ``ranks.together`` (train)."""
        scale_hint = scale_hint and not self.data_scaled
        scaled = "the data scaled to about [0, 1] or " if scale_hint else ""
        if self.saved_epoch is None and not self.stepped and not after_update:
            # the untrained model's loss or gradient on the first batch: no --lr changes it
            kept = ("it came before any update, so no --lr can help: the untrained "
                    "model's loss or gradient overflows on this data"
                    + ("; scale it to about [0, 1]" if not self.data_scaled else
                       ", though it lies within [-1, 1]: the model's settings are the cause"))
        elif self.saved_epoch is None:
            kept = f"no checkpoint was written yet; start again with {scaled}a lower --lr"
        elif not self.stepped and not after_update:
            # computed at the checkpoint's own weights: a resume from it meets it again
            kept = (f"it came at the weights of the last good checkpoint (epoch "
                    f"{self.saved_epoch}, kept at {self.checkpoint}) before any update, so "
                    "resuming from it cannot help at any --lr; start again in a new --out "
                    f"with {scaled}a lower --lr than {self.lr:g}")
        else:
            rescale = " (or start again with the data scaled to about [0, 1])"
            kept = (f"the last good checkpoint (epoch {self.saved_epoch}) is kept at "
                    f"{self.checkpoint}; continue from it with a lower learning rate: "
                    + stops.resume_command(self.out, self.flags + ["--lr", f"{self.lr / 10:g}"],
                                           self.world)
                    + (rescale if scale_hint else ""))
        e = NonFiniteLoss(f"{problem or f'non-finite {what} ({value})'} {where}; {kept}")
        raise ranks.alike(e)

    def loss(self, value: float, epoch: int, step: int, steps: int) -> None:
        """Before backward: the (globally averaged) loss of this step."""
        if not math.isfinite(value):
            self._stop("loss", value, f"at epoch {epoch}, step {step}/{steps}")

    def step(self, model, epoch: int, step: int, steps: int) -> None:
        """After the optimizer step: the gradients it used and the weights it wrote, in
        one fused pass and one host sync (about 0.2 ms, 3% of a default digits step on
        one CPU thread)."""
        params = _floating(model.parameters())
        grads = _floating(p.grad for p in model.parameters() if p.grad is not None)
        norms = _norms(grads + params).tolist()   # the one host sync
        grad_norms = norms[:len(grads)]
        if not self.check_grads and not all(map(math.isfinite, grad_norms)):
            # a GradScaler's skipped step (it skips exactly where the gradients it unscaled
            # are not finite): no update, so the weights are still what they were
            grads, grad_norms, norms = [], [], norms[len(grad_norms):]
            if all(map(math.isfinite, norms)):
                return
        # Adam keeps each gradient's square in the weights' dtype: a finite gradient past
        # that dtype's square root makes its state inf, and every later update 0 or NaN
        # (a norm bounds its largest element: only a norm past the root needs a look)
        roots = [_SQRT_MAX.get(g.dtype, math.inf) for g in grads]
        over = [(float(g.abs().max()), r) for g, n, r in zip(grads, grad_norms, roots)
                if n > r]
        over = [(m, r) for m, r in over if m > r]
        if all(map(math.isfinite, norms)) and not over:
            self.stepped = True
            return
        where = f"at epoch {epoch}, step {step}/{steps}"
        grad_norm = math.sqrt(math.fsum(n * n for n in grad_norms))
        if not math.isfinite(grad_norm):
            self._stop("gradient norm", grad_norm, where)
        if over:
            m, r = over[0]
            self._stop("gradient", m, where, problem=(
                f"a gradient of {m:.3g}, past {r:.3g}, whose square overflows Adam's state,"),
                scale_hint=True)
        self._stop("weights after the optimizer step", "nan or inf", where, after_update=True)

    def epoch_end(self, opt, train_m: dict, test_m: dict, epoch: int, steps: int) -> None:
        """Before the checkpoint: the optimizer state and the epoch's metrics."""
        where = f"after epoch {epoch}, step {steps}/{steps}"
        if not all_finite(_optimizer_tensors(opt)):
            self._stop("optimizer state", "nan or inf", where)
        for split, m in (("train", train_m), ("test", test_m)):
            for key, value in m.items():
                for i, v in enumerate(value if isinstance(value, list) else [value]):
                    if not math.isfinite(v):  # a list: one number per latent group
                        name = f"{key}[{i}]" if isinstance(value, list) else key
                        self._stop(f"{split} {name}", v, where)
