"""The bench's 16-bit agreement rule (``bench.check.check_against_fp32``): a variant's
relative L2 error against eager run in fp32 may be at most twice eager's own bf16 error
(or bf16's rtol, 3e-2, if larger); fastvae's variants of an op it computes in fp32, one
rounding: bf16's eps, 2^-7. An output that is not finite, of another shape, or missing
is refused, never passed."""
from __future__ import annotations

import pytest
import torch

from fastvae.bench import AgreementError, Case
from fastvae.bench.check import check_against_fp32

CASE = Case("elbo", 4, 8, 2, 1, torch.bfloat16, "cpu")
REF = (torch.linspace(1.0, 2.0, 64, dtype=torch.float64),)


def _off(r: float) -> tuple:
    """The reference with a relative L2 error of exactly r."""
    return (REF[0] * (1 + r),)


def test_other_variants_may_be_off_by_twice_eagers_own_error():
    eager = _off(0.1)
    check_against_fp32(CASE, "compile", _off(0.19), eager, REF)
    with pytest.raises(AgreementError, match="relative error 0.25 .* eager's own bf16 error 0.1"):
        check_against_fp32(CASE, "compile", _off(0.25), eager, REF)
    # eager nearly exact: the dtype's rtol is the bound
    check_against_fp32(CASE, "compile", _off(0.029), _off(0.001), REF)
    with pytest.raises(AgreementError):
        check_against_fp32(CASE, "compile", _off(0.031), _off(0.001), REF)


def test_fastvae_variants_are_held_to_one_rounding():
    eager = _off(0.1)
    check_against_fp32(CASE, "fastvae-torch", _off(0.007), eager, REF)
    with pytest.raises(AgreementError, match="over 0.007812"):
        check_against_fp32(CASE, "fastvae-torch", _off(0.012), eager, REF)


@pytest.mark.parametrize("bad,why", [
    ((torch.full((64,), float("nan"), dtype=torch.float64),), "relative error inf"),
    ((torch.full((64,), float("inf"), dtype=torch.float64),), "relative error inf"),
    ((REF[0][:32],), "relative error inf"),
    ((), "returned 0 tensors, eager 1"),
])
def test_what_cannot_be_compared_is_refused(bad, why):
    with pytest.raises(AgreementError, match=why):
        check_against_fp32(CASE, "compile", bad, _off(0.1), REF)
