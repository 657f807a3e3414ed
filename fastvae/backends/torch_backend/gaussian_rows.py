"""The Gaussian-prior rows of ``gaussian_rows.c`` for kl_normal, sample_with_kl and
reparameterize on the "torch" backend: z, the per-row KL and its gradients in one pass,
sample_with_kl's gradients in one more.

Each function returns False where the C library is unavailable (``native.status()``
says why: ``FASTVAE_NATIVE=0``, no compiler, a failed build) or the tensors are not CPU
float32/16-bit; the caller then runs its aten path. float64 always takes the aten path
(the tests hold it to float64 precision). 16-bit inputs: the forward upcasts one row
chunk (``rows.CHUNK_ELEMS``) at a time to float32 temporaries and writes back, as the
aten path does; a 16-bit sample's z stays aten's (``reparameterize_fwd``) and the
backward of 16-bit gradients stays on the aten path.
"""
from __future__ import annotations

import ctypes

import torch

from . import native
from .rows import row_chunks

_P, _N = ctypes.c_void_p, ctypes.c_int64
_FWD = [_N, _N, _P, _N, _P, _N, _P, _N, _P, _N, _P, _P, _P, _P, _P, _P, _P, ctypes.c_int]
_BWD = [_N, _N, _P, _P, _P, _N, _P, _P, _P, _P, _P, _P, _P, _P, ctypes.c_int]
_SAMPLE = [_N, _N, _P, _N, _P, _N, _P, _P, ctypes.c_int]
_LOW = (torch.float16, torch.bfloat16)
F32 = torch.float32


def _cpu(*ts) -> bool:
    return all(t is None or t.device.type == "cpu" for t in ts)


def _rows_of(t):
    """(tensor, row stride) for a float32 (N,) or (B, N) tensor with contiguous elements
    (a copy where they are not), or (None, 0)."""
    if t is None:
        return None, 0
    if t.dim() == 2 and t.shape[1] > 1 and t.stride(1) != 1:
        t = t.contiguous()
    elif t.dim() == 1 and t.shape[0] > 1 and t.stride(0) != 1:
        t = t.contiguous()
    return t, (0 if t.dim() == 1 or t.shape[0] == 1 else t.stride(0))


def _at(t, offset: int):
    """The address of element ``offset`` of a float32 tensor, or None."""
    return None if t is None else t.data_ptr() + 4 * offset


def _check(rc: int, name: str) -> None:
    if rc != 0:
        raise RuntimeError(f"fastvae: {name} rejected its arguments (code {rc})")


def _kl_f32(mu, lv, pm, plv, eps, z, kl, outs, threads):
    """The forward kernel on float32 tensors: outs = (g_mu, g_pm, g_lv, g_plv), each a
    contiguous float32 (B, N) or None; eps and z contiguous, or both None."""
    fn = native.symbol("fastvae_gauss_kl_rows", _FWD)
    rows, n = mu.shape
    ins = [_rows_of(t) for t in (mu, lv, pm, plv)]

    def block(i, count, nthreads):
        args = [a for t, s in ins for a in (_at(t, i * s), s)]
        o = [_at(t, i * n) for t in (eps, z, *outs)]
        _check(fn(count, n, *args, o[0], o[1], _at(kl, i), *o[2:], nthreads),
               "fastvae_gauss_kl_rows")

    native.for_rows(rows, rows * n, block, threads)


def _direct(t, dtype=F32) -> bool:
    return t is None or (t.dtype == dtype and t.is_contiguous())


def kl_rows(mu, lv, pm, plv, eps, z, kl, g_mu, g_pm, g_lv, g_plv, threads=None) -> bool:
    """kl (B,) float32 = the per-row KL(N(mu, e^lv) || N(pm, e^plv)); z = mu + exp(lv/2) eps
    where z is given (float32 only); g_mu, g_pm, g_lv, g_plv (contiguous (B, N) in any
    float dtype, or None) = dKL/dmu, dKL/dpm, dKL/dlv, dKL/dplv. mu, lv (B, N); pm, plv
    None, (N,) or (B, N). False (nothing written) where the C path cannot run."""
    ts = (mu, lv, pm, plv, eps, z, g_mu, g_pm, g_lv, g_plv)
    if (kl.dtype != F32 or not _cpu(kl, *ts) or native.symbol("fastvae_gauss_kl_rows", _FWD) is None
            or any(t is not None and t.dtype not in (F32, *_LOW) for t in ts)):
        return False
    outs = (g_mu, g_pm, g_lv, g_plv)
    if z is not None and not (mu.dtype == lv.dtype == eps.dtype == z.dtype == F32
                              and eps.is_contiguous() and z.is_contiguous()):
        return False
    if mu.numel() == 0:
        kl.zero_()
        return True
    ins = (mu, lv, pm, plv)
    if all(t is None or t.dtype == F32 for t in ins) and all(_direct(t) for t in outs):
        _kl_f32(mu, lv, pm, plv, eps, z, kl, outs, threads)
        return True
    # 16-bit somewhere: row chunks upcast to float32, results written back
    for i, j in row_chunks(*mu.shape):
        part = [None if t is None else (t if t.dim() == 1 else t[i:j]).to(F32) for t in ins]
        tmp = [None if t is None else (t[i:j] if _direct(t) else torch.empty(
            (j - i, mu.shape[1]), dtype=F32)) for t in outs]
        _kl_f32(*part, None if z is None else eps[i:j], None if z is None else z[i:j], kl[i:j],
                tmp, threads)
        for t, w in zip(outs, tmp):
            if t is not None and not _direct(t):
                t[i:j].copy_(w)
    return True


def sample_rows(mu, lv, eps, z, threads=None) -> bool:
    """z = mu + exp(lv/2) eps, float32 (B, N) (eps and z contiguous; mu, lv at any row
    stride), by the same code as :func:`kl_rows`'s z. False where the C path cannot run."""
    if not (mu.dtype == lv.dtype == eps.dtype == z.dtype == F32 and _cpu(mu, lv, eps, z)
            and eps.is_contiguous() and z.is_contiguous()):
        return False
    fn = native.symbol("fastvae_gauss_sample_rows", _SAMPLE)
    if fn is None:
        return False
    rows, n = mu.shape
    if mu.numel() == 0:
        return True
    (m, sm), (v, sv) = _rows_of(mu), _rows_of(lv)

    def block(i, count, nthreads):
        _check(fn(count, n, _at(m, i * sm), sm, _at(v, i * sv), sv, _at(eps, i * n),
                  _at(z, i * n), nthreads), "fastvae_gauss_sample_rows")

    native.for_rows(rows, rows * n, block, threads)
    return True


def kl_bwd_rows(dz, gk, lv, eps, g_mu, g_lv, g_plv, d_mu, d_lv, d_pm, d_plv,
                threads=None) -> bool:
    """sample_with_kl's backward, float32: ``d_mu = dz + gk g_mu``, ``d_pm = -gk g_mu``,
    ``d_lv = 0.5 dz exp(lv/2) eps + gk g_lv``, ``d_plv = gk g_plv`` per row (dz None or gk
    None: that term is 0; an output None: not written). Outputs contiguous (B, N).
    False where the C path cannot run."""
    ts = (dz, gk, lv, eps, g_mu, g_lv, g_plv, d_mu, d_lv, d_pm, d_plv)
    if not _cpu(*ts) or any(t is not None and t.dtype != F32 for t in ts) or not all(
            _direct(t) for t in (d_mu, d_lv, d_pm, d_plv, g_mu, g_lv, g_plv)):
        return False
    fn = native.symbol("fastvae_gauss_kl_bwd_rows", _BWD)
    if fn is None:
        return False
    rows, n = next(t for t in (d_mu, d_lv, d_pm, d_plv) if t is not None).shape
    if rows * n == 0:
        return True
    dz = None if dz is None else dz.contiguous()
    gk = None if gk is None else gk.contiguous()
    eps = None if eps is None else eps.contiguous()
    v, sv = _rows_of(lv)
    rest = (eps, g_mu, g_lv, g_plv, d_mu, d_lv, d_pm, d_plv)

    def block(i, count, nthreads):
        _check(fn(count, n, _at(dz, i * n), _at(gk, i), _at(v, i * sv), sv,
                  *(_at(t, i * n) for t in rest), nthreads), "fastvae_gauss_kl_bwd_rows")

    native.for_rows(rows, rows * n, block, threads)
    return True
