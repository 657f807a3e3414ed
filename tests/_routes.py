"""What the prepared-call tests share (tests/test_prepared_calls.py for the ELBO,
tests/test_prepared_sampling.py for sample_with_kl)."""
from __future__ import annotations

from fastvae import validation as V


def unprepared(module, memo: str, fn):
    """``fn()`` with ``module``'s route memo ``memo`` emptied, so that no route exists for
    its calls and each goes the unprepared way; the memo as it was after."""
    saved = getattr(module, memo)
    setattr(module, memo, V.Checked())
    try:
        return fn()
    finally:
        setattr(module, memo, saved)
