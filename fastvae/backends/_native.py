"""A small C kernel for the Bernoulli ELBO rows, compiled at first use; optional.

Why: on CPU the Bernoulli term costs two transcendentals per element (softplus for
the value, sigmoid for the gradient), and nothing else. Built from aten ops they are
two or three separate passes (``exp``, ``log1p``, ``sigmoid``); this loop does one
``exp`` and one ``log1p`` per element, shared between softplus and sigmoid, in
8-wide SIMD (GCC/Clang vector extensions, so no intrinsics and no torch headers),
and writes the scaled gradient straight into its output: no temporaries at all.

How: the C source below is compiled with the system C compiler (``$CC``, else
``cc``/``gcc``/``clang``) into ``$FASTVAE_CACHE_DIR`` (default
``~/.cache/fastvae``), keyed by a hash of source, flags, compiler and CPU, and
loaded with ctypes. The first call in a fresh cache costs a compile of about 0.2 s;
later processes load the cached library. ``-march=native`` is safe because the
library is built on the machine that runs it. Rows are split across
``torch.get_num_threads()`` OpenMP threads (libgomp resolves to the copy torch has
already loaded); a row's sum is always done by one thread in a fixed order, so
results do not depend on the thread count.

Fallback: with no compiler, a failed build, or ``FASTVAE_NATIVE=0``, :func:`load`
returns None and the caller uses aten ops; :func:`status` says why.

Accuracy: ``exp`` and ``log1p`` are the Cephes single-precision polynomials (about
1 ulp); ``log1p(e)`` for ``e = exp(-|l|)`` in ``[0, 1]`` takes its argument exactly
for small ``e``, so softplus is accurate for very negative logits. Logits below -87
use ``exp(-87)`` in place of a denormal: an absolute error below 2e-38.
"""
from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import threading

import torch

SOURCE = r"""
#include <stdint.h>
#include <string.h>

typedef float vf __attribute__((vector_size(32)));
typedef int32_t vi __attribute__((vector_size(32)));
#define W 8
#define SPLAT(v) ((vf){v, v, v, v, v, v, v, v})

static inline vf sel(vi m, vf a, vf b) { return (vf)((m & (vi)a) | (~m & (vi)b)); }

/* exp(x) for x <= 0 (Cephes expf); x < -87 gives exp(-87) rather than a denormal. */
static inline vf exp_nonpos(vf x) {
  x = sel(x < SPLAT(-87.0f), SPLAT(-87.0f), x);
  vf t = x * 1.44269504088896341f + 12582912.0f;  /* round(x / ln 2) by the 1.5 * 2^23 trick */
  vf fn = t - 12582912.0f;
  vi n = (vi)t - 0x4B400000;
  vf r = x - fn * 0.693359375f;                   /* ln 2 in two parts: exact reduction */
  r = r + fn * 2.12194440e-4f;
  vf p = SPLAT(1.9875691500E-4f);
  p = p * r + 1.3981999507E-3f;
  p = p * r + 8.3334519073E-3f;
  p = p * r + 4.1665795894E-2f;
  p = p * r + 1.6666665459E-1f;
  p = p * r + 5.0000001201E-1f;
  p = p * r * r + r + 1.0f;
  return p * (vf)((n + 127) << 23);               /* times 2^n, n in [-126, 0] */
}

/* log(1 + e) for e in [0, 1]: Cephes logf of m = (1 + e) / 2^k with k = (1 + e > sqrt 2);
   for k = 0 the polynomial's argument m - 1 is e itself, exact however small. */
static inline vf log1p_unit(vf e) {
  vi big = e > 0.41421356f;
  vf f = sel(big, (e - 1.0f) * 0.5f, e);
  vf k = (vf)(big & (vi)SPLAT(1.0f));
  vf z = f * f;
  vf y = SPLAT(7.0376836292E-2f);
  y = y * f - 1.1514610310E-1f;
  y = y * f + 1.1676998740E-1f;
  y = y * f - 1.2420140846E-1f;
  y = y * f + 1.4249322787E-1f;
  y = y * f - 1.6668057665E-1f;
  y = y * f + 2.0000714765E-1f;
  y = y * f - 2.4999993993E-1f;
  y = y * f + 3.3333331174E-1f;
  y = y * f * z;
  y = y + k * -2.12194440e-4f;
  y = y - 0.5f * z;
  return (f + y) + k * 0.693359375f;
}

/* x*l - softplus(l) and, into *g, c * (x - sigmoid(l)); e = exp(-|l|) serves both. */
static inline vf bern(vf l, vf x, vf c, vf *g) {
  vf e = exp_nonpos((vf)((vi)l | (vi)SPLAT(-0.0f)));
  vi pos = l >= 0.0f;
  vf sp = sel(pos, l, SPLAT(0.0f)) + log1p_unit(e);
  vf s = sel(pos, SPLAT(1.0f), e) / (1.0f + e);
  *g = c * (x - s);
  return x * l - sp;
}

static void row(int64_t d, const float *x, const float *l, float *g, float c, float *out) {
  vf acc = SPLAT(0.0f), cv = SPLAT(c), gv, xv, lv;
  int64_t j = 0;
  for (; j + W <= d; j += W) {
    memcpy(&xv, x + j, sizeof xv);
    memcpy(&lv, l + j, sizeof lv);
    acc += bern(lv, xv, cv, &gv);
    if (g) memcpy(g + j, &gv, sizeof gv);
  }
  if (j < d) { /* the tail: padded lanes are computed, then left out of the sum */
    int64_t n = d - j;
    xv = SPLAT(0.0f);
    lv = SPLAT(0.0f);
    memcpy(&xv, x + j, n * sizeof(float));
    memcpy(&lv, l + j, n * sizeof(float));
    vf v = bern(lv, xv, cv, &gv);
    for (int64_t k = 0; k < n; ++k) acc[k] += v[k];
    if (g) memcpy(g + j, &gv, n * sizeof(float));
  }
  float s = 0.0f;
  for (int k = 0; k < W; ++k) s += acc[k];
  *out = s;
}

/* Per row i: out[i] = sum_j x*l - softplus(l); g[i, :] = c * (x - sigmoid(l)) if g.
   x and l rows may be strided (stride 0 for a broadcast x); elements are contiguous. */
int fastvae_bernoulli_rows(int64_t rows, int64_t d, const float *x, int64_t sx,
                           const float *l, int64_t sl, float *g, float c, float *out,
                           int nthreads) {
#ifdef _OPENMP
#pragma omp parallel for schedule(dynamic, 8) num_threads(nthreads) if (nthreads > 1)
#endif
  for (int64_t i = 0; i < rows; ++i)
    row(d, x + i * sx, l + i * sl, g ? g + i * d : 0, c, out + i);
  return 0;
}
"""

# Tried in order: the OpenMP build, then a single-threaded one (e.g. clang without libomp).
_FLAG_SETS = (
    ["-O3", "-march=native", "-fPIC", "-shared", "-fopenmp"],
    ["-O3", "-march=native", "-fPIC", "-shared"],
    ["-O3", "-fPIC", "-shared"],
)
# Below this many elements one thread is faster than waking a second.
PARALLEL_MIN_ELEMS = 1 << 15

_lock = threading.Lock()
_fn = None
_status = "not loaded yet"


def _compiler():
    for name in (os.environ.get("CC"), "cc", "gcc", "clang"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


def _cpu_id() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return "".join(ln for ln in f if ln.startswith(("model name", "flags")))[:4096]
    except OSError:
        return platform.processor()


def _cache_dir() -> str:
    d = os.environ.get("FASTVAE_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "fastvae")
    try:
        os.makedirs(d, exist_ok=True)
        if os.access(d, os.W_OK):
            return d
    except OSError:
        pass
    return tempfile.mkdtemp(prefix="fastvae-")


def _build(cc: str, flags) -> str:
    key = hashlib.sha256("\0".join([SOURCE, cc, *flags, platform.machine(), _cpu_id()])
                         .encode()).hexdigest()[:20]
    d = _cache_dir()
    path = os.path.join(d, f"closed_form_{key}.so")
    if not os.path.exists(path):
        fd, tmp = tempfile.mkstemp(suffix=".so", dir=d)
        os.close(fd)
        src = tmp[:-3] + ".c"
        try:
            with open(src, "w") as f:
                f.write(SOURCE)
            subprocess.run([cc, *flags, "-o", tmp, src], check=True, capture_output=True,
                           timeout=120)
            os.replace(tmp, path)  # atomic: concurrent builders agree on the file
        finally:
            for p in (tmp, src):
                if os.path.exists(p):
                    os.remove(p)
    return path


def _load():
    if os.environ.get("FASTVAE_NATIVE", "1").strip().lower() in ("0", "", "false", "no", "off"):
        return None, "disabled by FASTVAE_NATIVE"
    cc = _compiler()
    if cc is None:
        return None, "no C compiler found (set CC)"
    errors = []
    for flags in _FLAG_SETS:
        try:
            fn = ctypes.CDLL(_build(cc, flags)).fastvae_bernoulli_rows
        except (OSError, subprocess.SubprocessError) as e:
            detail = getattr(e, "stderr", b"") or b""
            errors.append(f"{' '.join(flags)}: {e} {detail.decode(errors='replace')[-300:]}")
            continue
        fn.restype = ctypes.c_int
        fn.argtypes = [ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p, ctypes.c_int64,
                       ctypes.c_void_p, ctypes.c_int64, ctypes.c_void_p, ctypes.c_float,
                       ctypes.c_void_p, ctypes.c_int]
        return fn, f"loaded ({cc} {' '.join(flags)})"
    return None, "build failed: " + " | ".join(errors)


def load():
    """The compiled row kernel (a ctypes function), or None where it cannot be built."""
    global _fn, _status
    if _status == "not loaded yet":
        with _lock:
            if _status == "not loaded yet":
                _fn, _status = _load()
    return _fn


def status() -> str:
    """Why :func:`load` gives what it gives (after the first call)."""
    return _status


def reset() -> None:
    """Forget the loaded kernel so the next :func:`load` looks again (tests use this)."""
    global _fn, _status
    with _lock:
        _fn, _status = None, "not loaded yet"


def usable(x: torch.Tensor, logits: torch.Tensor) -> bool:
    """Whether the kernel can take these (B, D) tensors as they are."""
    return (x.dtype == torch.float32 and logits.dtype == torch.float32
            and x.device.type == "cpu" and logits.device.type == "cpu"
            and x.dim() == 2 and x.shape == logits.shape and x.numel() > 0
            and x.stride(1) == 1 and logits.stride(1) == 1)


def bernoulli_rows(x: torch.Tensor, logits: torch.Tensor, grad, c: float, out: torch.Tensor):
    """out[i] = sum_d x*l - softplus(l); grad (contiguous (B, D) or None) = c * (x - sigmoid(l))."""
    rows, d = x.shape
    n = torch.get_num_threads() if rows * d >= PARALLEL_MIN_ELEMS else 1
    _fn(rows, d, x.data_ptr(), x.stride(0), logits.data_ptr(), logits.stride(0),
        None if grad is None else grad.data_ptr(), c, out.data_ptr(), n)
