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
_FWD = [_N, _N, _P, _N, _P, _N, _P, _N, _P, _N, _N, _N, _P, _N, _P, _P, _P, _P, _P, _P,
        ctypes.c_int, ctypes.c_int]
_BWD = [_N, _N, _P, _P, _P, _N, _P, _N, _P, _P, _P, _P, _P, _P, _P, ctypes.c_int]
_SAMPLE = [_N, _N, _P, _N, _P, _N, _P, _N, _N, _N, _P, _N, ctypes.c_int]
_SAMPLE_BWD = [_N, _N, _P, _N, _P, _N, _P, _N, _N, _N, _N, _P, _P, ctypes.c_int]
# reparameterize's backward sums this many samples in float32 in C, the blocks' sums in
# float64 here: one float32 sum over K = 20000 samples was 50x eager's error
SAMPLE_BLOCK = 64
_EVAL = [_N, _N, _N, _P, _P]
F32 = torch.float32
_ANY = (F32, torch.float16, torch.bfloat16)
Q = 1024  # the counter layout's quarter (philox.h, kernels/reparameterize.py)


def available() -> bool:
    """Whether the C library (and so the in-kernel Philox draw) can run here."""
    return native.load() is not None


def cpad(bl: int) -> int:
    """Counters per sample of a B*L draw: ``ceil(B L / 4Q) Q``, as the Triton kernels use."""
    return -(-bl // (4 * Q)) * Q


def _usable(ts, dtypes) -> bool:
    """Whether every tensor among ``ts`` (None skipped) is a CPU tensor of these dtypes."""
    for t in ts:
        if t is not None and (t.dtype not in dtypes or not t.is_cpu):
            return False
    return True


def _rows_of(t, one_per_row: bool = False):
    """(address, row stride in elements, the tensor read) of a float32 (N,) or (B, N)
    tensor with contiguous elements (a copy where they are not), or (None, 0, None).
    ``one_per_row`` (a prior: the kernel takes a column stride of 0 for it): a tensor whose
    rows repeat one float (stride (1, 0): a (B, 1, 1, 1) prior of (B, C, H, W) latents) is
    read as it is, not copied to (B, N) on every call; see :func:`_splat`."""
    if t is None:
        return None, 0, None
    if t.stride(-1) != 1 and t.shape[-1] > 1 and not (one_per_row and _splat(t)):
        t = t.contiguous()
    stride = 0 if t.dim() == 1 or t.shape[0] == 1 else t.stride(0)
    return t.data_ptr(), stride, t


def _splat(t) -> bool:
    """Whether ``t``'s rows each repeat one float (column stride 0, more than one column)."""
    return t is not None and t.stride(-1) == 0 and t.shape[-1] > 1


def _addr(t):
    return None if t is None else t.data_ptr()


def _at(base, offset: int):
    """The address ``offset`` floats past ``base``, or None."""
    return None if base is None else base + 4 * offset


def _check(rc: int, name: str) -> None:
    if rc != 0:
        raise RuntimeError(f"fastvae: {name} rejected its arguments (code {rc})")


def _kl_f32(fn, mu, lv, pm, plv, seed, flat0, z, kl, outs, threads, saved):
    """The forward kernel on float32 tensors: outs = (g_mu, g_pm, g_lv, g_plv), each a
    contiguous float32 (B, N) or None; z contiguous with the seed, or both None; row 0 is
    the draw's flat element ``flat0`` on. ``saved``: outs are kept for a backward pass, not
    read back at once (the kernel may then store them past the caches)."""
    rows, n = mu.shape
    ins = [_rows_of(t, one_per_row=prior) for t, prior in zip((mu, lv, pm, plv),
                                                               (False, False, True, True))]
    cols = [0 if _splat(t) else 1 for _, _, t in ins[2:]]   # the priors' column strides
    o = [_addr(t) for t in (z, *outs)]
    k, sd = kl.data_ptr(), _addr(seed)

    def block(i, count, nthreads):
        args = [a for p, s, _ in ins for a in (_at(p, i * s), s)]
        oi = [_at(p, i * n) for p in o]
        _check(fn(count, n, *args, *cols, sd, flat0 + i * n, oi[0], k + 4 * i, *oi[1:],
                  int(saved), nthreads), "fastvae_gauss_kl_rows")

    native.for_rows(rows, rows * n, block, threads)


def _direct(t) -> bool:
    return t is None or (t.dtype == F32 and t.is_contiguous())


def _seed(seed) -> bool:
    return seed is not None and seed.dtype == torch.int64 and seed.is_cpu


def kl_rows(mu, lv, pm, plv, seed, z, kl, g_mu, g_pm, g_lv, g_plv, threads=None) -> bool:
    """kl (B,) float32 = the per-row KL(N(mu, e^lv) || N(pm, e^plv)); z = mu + exp(lv/2) eps
    where z is given (float32 mu, lv, z; eps drawn from the one-element int64 ``seed``,
    philox.h); g_mu, g_pm, g_lv, g_plv (contiguous (B, N) in any float dtype, or None) =
    dKL/dmu, dKL/dpm, dKL/dlv, dKL/dplv, kept for a backward pass (a large call stores them
    past the caches). mu, lv (B, N); pm, plv None, (N,) or (B, N). False (nothing written)
    where the C path cannot run."""
    outs = (g_mu, g_pm, g_lv, g_plv)
    ins = (mu, lv, pm, plv)
    if kl.dtype != F32 or not _usable(ins + outs, _ANY):
        return False
    if z is not None and not (_usable((mu, lv, z), (F32,)) and _seed(seed)
                              and z.is_contiguous()):
        return False
    fn = native.symbol("fastvae_gauss_kl_rows", _FWD)
    if fn is None:
        return False
    if mu.numel() == 0:
        kl.zero_()
        return True
    seed = seed if z is not None else None
    if _usable(ins, (F32,)) and all(_direct(t) for t in outs):
        _kl_f32(fn, mu, lv, pm, plv, seed, 0, z, kl, outs, threads, saved=True)
        return True
    # 16-bit somewhere: row chunks upcast to float32, results written back
    n = mu.shape[1]
    for i, j in row_chunks(*mu.shape):
        part = [None if t is None else (t if t.dim() == 1 else t[i:j]).to(F32) for t in ins]
        tmp = [None if t is None else (t[i:j] if _direct(t) else torch.empty(
            (j - i, n), dtype=F32, device=mu.device)) for t in outs]
        _kl_f32(fn, *part, seed, i * n, None if z is None else z[i:j], kl[i:j], tmp, threads,
                saved=False)  # temporaries, read back below
        for t, w in zip(outs, tmp):
            if t is not None and not _direct(t):
                t[i:j].copy_(w)
    return True


def sample_rows(mu, lv, seed, n_samples: int, z, threads=None) -> bool:
    """z = mu + exp(lv/2) eps_k for each of max(n_samples, 1) samples, eps from the seed
    (philox.h; sample k from counter ``k * cpad(B N)`` on), by the same code as
    :func:`kl_rows`'s z. mu None: 0 (z is then ``exp(lv/2) eps``). mu, lv float32 (B, N) at
    any row stride; z contiguous ``(B, N)`` or ``(K, B, N)``. False where the C path cannot
    run."""
    return _sample(mu, lv, seed, n_samples, z, 0, cpad(lv.numel()), threads)


def _sample(mu, lv, seed, n_samples, z, flat0, cp, threads):
    if not (_usable((mu, lv, z), (F32,)) and _seed(seed) and z.is_contiguous()):
        return False
    fn = native.symbol("fastvae_gauss_sample_rows", _SAMPLE)
    if fn is None:
        return False
    rows, n = lv.shape
    if lv.numel() == 0:
        return True
    (m, sm, _m), (v, sv, _v) = _rows_of(mu), _rows_of(lv)
    o, sd, k = z.data_ptr(), seed.data_ptr(), max(n_samples, 1)

    def block(i, count, nthreads):
        _check(fn(count, n, _at(m, i * sm), sm, v + 4 * i * sv, sv, sd, k, cp, flat0 + i * n,
                  o + 4 * i * n, rows * n, nthreads), "fastvae_gauss_sample_rows")

    native.for_rows(rows, rows * n * k, block, threads)
    return True


def std_eps_rows(lv, seed, flat0: int, cp: int, out, threads=None) -> bool:
    """out = exp(lv/2) eps for rows of a larger one-sample draw (row 0 at flat element
    ``flat0``, ``cp`` its counters per sample): the aten fallback's factor for dlogvar."""
    return _sample(None, lv, seed, 0, out, flat0, cp, threads)


def sample_bwd_rows(dz, lv, seed, n_samples: int, d_mu, d_lv, threads=None) -> bool:
    """reparameterize's backward: d_lv = 0.5 exp(lv/2) sum_k dz_k eps_k, and d_mu = sum_k
    dz_k where d_mu is given, eps drawn again from the seed. dz ``(B, N)`` or ``(K, B, N)``,
    d_mu and d_lv contiguous float32 (B, N). False where the C path cannot run."""
    if not (_usable((dz, lv, d_mu, d_lv), (F32,)) and _seed(seed) and _direct(d_lv)
            and _direct(d_mu)):
        return False
    fn = native.symbol("fastvae_gauss_sample_bwd_rows", _SAMPLE_BWD)
    if fn is None:
        return False
    rows, n = lv.shape
    if lv.numel() == 0:
        return True
    dz = dz.contiguous()
    (v, sv, _v), k = _rows_of(lv), max(n_samples, 1)
    d, sd = dz.data_ptr(), seed.data_ptr()
    cp = cpad(rows * n)
    outs = parts = (d_mu, d_lv)
    starts = range(0, k, SAMPLE_BLOCK)
    blocked = len(starts) > 1
    if blocked:   # each block into ``parts``, added up in float64 into ``sums``
        parts = [None if t is None else torch.empty_like(t) for t in outs]
        sums = [None if t is None else torch.zeros(t.shape, dtype=torch.float64) for t in outs]
    gm, gl = _addr(parts[0]), parts[1].data_ptr()
    for k0 in starts:
        kb, dk = min(k - k0, SAMPLE_BLOCK), d + 4 * k0 * rows * n

        def block(i, count, nthreads, dk=dk, k0=k0, kb=kb):
            _check(fn(count, n, dk + 4 * i * n, rows * n, v + 4 * i * sv, sv, sd, k0, kb, cp,
                      i * n, _at(gm, i * n), gl + 4 * i * n, nthreads),
                   "fastvae_gauss_sample_bwd_rows")

        native.for_rows(rows, rows * n * k, block, threads)   # threads: by the whole sum
        if blocked:
            for acc, part in zip(sums, parts):
                if acc is not None:
                    acc += part
    if blocked:
        for out, acc in zip(outs, sums):
            if out is not None:
                out.copy_(acc)
    return True


def kl_bwd_rows(dz, gk, lv, seed, g_mu, g_lv, g_plv, d_mu, d_lv, d_pm, d_plv,
                threads=None) -> bool:
    """sample_with_kl's backward, float32: ``d_mu = dz + gk g_mu``, ``d_pm = -gk g_mu``,
    ``d_lv = 0.5 dz exp(lv/2) eps + gk g_lv``, ``d_plv = gk g_plv`` per row, eps drawn
    again from the seed (dz None or gk None: that term is 0; an output None: not written).
    Outputs contiguous (B, N). False where the C path cannot run."""
    saved = (g_mu, g_lv, g_plv, d_mu, d_lv, d_pm, d_plv)
    if not (_usable((dz, gk, lv) + saved, (F32,)) and all(_direct(t) for t in saved)):
        return False
    if dz is not None and d_lv is not None and not _seed(seed):
        return False
    fn = native.symbol("fastvae_gauss_kl_bwd_rows", _BWD)
    if fn is None:
        return False
    rows, n = next(t for t in (d_mu, d_lv, d_pm, d_plv) if t is not None).shape
    if rows * n == 0:
        return True
    dz = None if dz is None else dz.contiguous()
    gk = None if gk is None else gk.contiguous()
    v, sv, _v = _rows_of(lv)
    d, g, sd = _addr(dz), _addr(gk), _addr(seed if _seed(seed) else None)
    rest = [_addr(t) for t in saved]

    def block(i, count, nthreads):
        _check(fn(count, n, _at(d, i * n), _at(g, i), _at(v, i * sv), sv, sd, i * n,
                  *(_at(p, i * n) for p in rest), nthreads), "fastvae_gauss_kl_bwd_rows")

    native.for_rows(rows, rows * n, block, threads)
    return True


def philox_eval(seed: int, first_counter: int, count: int):
    """Test entry point: (uniforms, normals), each ``(count, 4)`` float32: the four words of
    the counters ``first_counter + c`` as philox.h draws them."""
    fn = native.symbol("fastvae_philox_eval", _EVAL)
    if fn is None:
        raise RuntimeError(f"C kernels unavailable: {native.status()}")
    u, nrm = torch.empty(count, 4, device="cpu"), torch.empty(count, 4, device="cpu")
    _check(fn(seed, first_counter, count, u.data_ptr(), nrm.data_ptr()), "fastvae_philox_eval")
    return u, nrm
