"""The continuous Bernoulli's log-normaliser near l = 0, shared by the reference and the
"torch" backend.

With p = sigmoid(l), 1 - 2p = -tanh(l/2) and artanh(1 - 2p) = -l/2, so the paper's
C(p) = 2 artanh(1 - 2p) / (1 - 2p) is ``l / tanh(l/2)``: ``log C`` is even in l (log 2 at
0) and ``d/dl log C = 1/l - 1/sinh l`` (odd, l/6 near 0, 1/l at large |l|).

That derivative is a difference of two terms of size 1/|l|: evaluated as written it is
off by about eps/|l| absolute, 6 eps/l^2 relative (float32: 1e-6 absolute at |l| = 0.1;
float64: 3e-10 relative at |l| = 2e-3). From |l| = 1 on, the difference is within 0.7
eps absolute and 5 eps relative (float32 and float64 alike). Below it, ``l P(l^2)`` with
``P`` the Chebyshev fit (``mpmath.chebyfit``) of ``(1/l - 1/sinh l)/l`` in ``s = l^2`` on
[0, 1] (s = -pi^2, the pole of 1/sinh, is what limits it): 5 terms are within 2.1e-8
relative (0.2 float32 eps), 10 terms within 2.3e-16 (the Taylor series, radius pi, would
need 8 and 16). Integrated term by term, ``log 2 + sum_k P_k s^(k+1) / (2k+2)`` is the
value whose derivative is that polynomial (the reference differentiates its value).
"""
from __future__ import annotations

CB_SERIES_BELOW = 1.0   # |l|

CB_DLOGC_32 = (0.16666666335698338, -0.019444278624865988, 0.0020489238722627015,
               -0.00020614405884124837, 1.6710220268526303e-05)
CB_DLOGC_64 = (0.16666666666666663, -0.019444444444439032, 0.002050264550085514,
               -0.00020998677018398745, 2.133603055808856e-05, -2.1632904737833464e-06,
               2.1910093965188846e-07, -2.2023346317071523e-08, 2.0808091257444982e-09,
               -1.3993746874358106e-10)


def dlogc_coeffs(float64: bool) -> tuple:
    """P's coefficients, lowest power first: the float64 fit, or float32's."""
    return CB_DLOGC_64 if float64 else CB_DLOGC_32


def logc_coeffs(float64: bool) -> tuple:
    """Q with ``log C = log 2 + s Q(s)`` below CB_SERIES_BELOW: P integrated, ``P_k/(2k+2)``."""
    return tuple(c / (2 * k + 2) for k, c in enumerate(dlogc_coeffs(float64)))
