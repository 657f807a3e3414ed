"""What the prepared-call tests share (tests/test_prepared_calls.py for the ELBO,
tests/test_prepared_sampling.py for sample_with_kl)."""
from __future__ import annotations

import fastvae
from fastvae import backends
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


def backend_switches(monkeypatch, builder: str, run):
    """FASTVAE_BACKEND from "torch" to "triton" and back for one signature, where both
    fused backends run (``run()`` makes one call and its backward, and returns (its
    result, whether it was routed)). The old backend's route steps aside; a route is
    built (``fastvae.ops.<builder>``) for a backend that ran the signature twice in a
    row, and alternating backends build none. Returns the results of the new backend's
    first (unprepared) and third (routed) calls, to compare."""
    builds = []
    real = getattr(fastvae.ops, builder)
    monkeypatch.setattr(fastvae.ops, builder,
                        lambda *a, **k: builds.append(k["backend"]) or real(*a, **k))
    monkeypatch.setenv("FASTVAE_BACKEND", "torch")
    assert [run()[1] for _ in range(3)] == [False, False, True]
    assert backends.last_used() == "torch" and builds == ["torch"]
    for name in ("triton", "torch") * 3:
        monkeypatch.setenv("FASTVAE_BACKEND", name)
        assert not run()[1] and backends.last_used() == name
    assert builds == ["torch"]
    monkeypatch.setenv("FASTVAE_BACKEND", "triton")
    calls = [run() for _ in range(3)]
    assert [routed for _, routed in calls] == [False, False, True]
    assert backends.last_used() == "triton" and builds == ["torch", "triton"]
    return calls[0][0], calls[2][0]
