"""Reparameterization ``z = mu + exp(0.5*logvar) * eps`` with ``eps`` drawn in the kernel.

No noise tensor exists: the forward draws ``eps`` from Philox (``normal4x``: the stream
and Box-Muller pairing of ``tl.randn4x``, with fast transcendentals) at
``(seed, counter)`` and the backward draws the very same numbers again from the same
``(seed, counter)``. The seed is a one-element int64 tensor read inside the kernel
(drawn by ``torch.randint`` from torch's generator, so ``torch.manual_seed`` and a
passed ``generator`` control it, no host sync, and a new seed never recompiles).

Counter layout (independent of the launch configuration, so a sample depends only on
the seed and its position): the B*L latents of one sample are cut into chunks of
``4*Q`` elements (``Q = 1024``); element ``i`` of sample ``k`` is quarter
``j = (i % 4Q) // Q`` of chunk ``i // 4Q`` and takes normal ``j`` of the four that
``normal4x`` returns for the int64 counter ``k*CPAD + (i // 4Q)*Q + i % Q``, with
``CPAD = cdiv(B*L, 4Q) * Q`` counters per sample. Each Philox call feeds four
contiguous, vectorizable quarters.

``reparameterize_fwd_kernel`` — grid ``cdiv(B*L, 4*Q*CHUNKS)``: loads mu/logvar once and
writes all K samples (``(K, B, L)``, contiguous).
``reparameterize_bwd_kernel`` — same grid: ``dmu = sum_k dz_k``,
``dlogvar = 0.5 * exp(0.5*logvar) * sum_k dz_k * eps_k``.
"""
import triton
import triton.language as tl

from ._math import cos_sin_, load_f32, log_, store_as

Q = 1024  # the counter layout's quarter length; part of the sampling contract


@triton.jit
def _quarters(BL, CHUNKS: tl.constexpr, Q: tl.constexpr):
    """This program's four quarters: element indices, their in-range masks, and the
    Philox counter (within one sample) that feeds all four."""
    pid = tl.program_id(0).to(tl.int64)
    chunk = pid * CHUNKS + tl.arange(0, CHUNKS)
    lane = tl.arange(0, Q)[None, :]
    i0 = chunk[:, None] * (4 * Q) + lane        # element index of quarter 0
    i1 = i0 + Q
    i2 = i0 + 2 * Q
    i3 = i0 + 3 * Q
    counter = chunk[:, None] * Q + lane
    return i0, i1, i2, i3, i0 < BL, i1 < BL, i2 < BL, i3 < BL, counter


@triton.jit
def _box_muller(u1, u2):
    """Two normals from two uniforms in [0, 1), as ``tl.randn4x`` pairs them. The angle is
    reduced exactly first: u2 - 1/2 in [-1/2, 1/2) is exact in fp32, and cos(2 pi u2) =
    -cos(2 pi (u2 - 1/2)), sin likewise, so the fast cos/sin see [-pi, pi)."""
    r = tl.sqrt(-2.0 * log_(tl.maximum(1.0e-7, u1)))
    c, s = cos_sin_(6.283185307179586 * (u2 - 0.5))
    return -r * c, -r * s


@triton.jit
def normal4x(seed, counter):
    """Four blocks of N(0, 1) from Philox at (seed, counter): ``tl.randn4x``'s stream and
    pairing (the sampling contract), with fast transcendentals."""
    u1, u2, u3, u4 = tl.rand4x(seed, counter)
    n1, n2 = _box_muller(u1, u2)
    n3, n4 = _box_muller(u3, u4)
    return n1, n2, n3, n4


@triton.jit
def normal_at(seed, i, Q: tl.constexpr):
    """The draw of the layout above at flat element ``i`` (an int64 tile) of sample 0, for
    kernels that walk elements in another order (``sample_with_kl``'s row tiles): normal
    ``(i % 4Q) // Q`` of ``normal4x(seed, (i // 4Q) * Q + i % Q)``, bit for bit (the same
    uniforms through the same ``_box_muller``). Each element runs its own Philox call
    (the kernels here share one among four)."""
    quarter = (i // Q) % 4
    u1, u2, u3, u4 = tl.rand4x(seed, (i // (4 * Q)) * Q + i % Q)
    low = quarter < 2  # quarters 0, 1 are normal4x's first Box-Muller pair, 2, 3 its second
    n_cos, n_sin = _box_muller(tl.where(low, u1, u3), tl.where(low, u2, u4))
    return tl.where(quarter % 2 == 0, n_cos, n_sin)


@triton.jit
def _load4(PTR, i0, i1, i2, i3, m0, m1, m2, m3):
    return (load_f32(PTR, i0, m0), load_f32(PTR, i1, m1), load_f32(PTR, i2, m2),
            load_f32(PTR, i3, m3))


@triton.jit
def _store4(PTR, i0, i1, i2, i3, v0, v1, v2, v3, m0, m1, m2, m3):
    store_as(PTR, i0, v0, m0)
    store_as(PTR, i1, v1, m1)
    store_as(PTR, i2, v2, m2)
    store_as(PTR, i3, v3, m3)


@triton.jit
def reparameterize_fwd_kernel(
    MU, LV, SEED,          # inputs: (B*L,) each, SEED one int64
    Z,                     # output: (K, B*L)
    BL, K, CPAD,
    CHUNKS: tl.constexpr, Q: tl.constexpr,
):
    i0, i1, i2, i3, m0, m1, m2, m3, counter = _quarters(BL, CHUNKS, Q)
    mu0, mu1, mu2, mu3 = _load4(MU, i0, i1, i2, i3, m0, m1, m2, m3)
    lv0, lv1, lv2, lv3 = _load4(LV, i0, i1, i2, i3, m0, m1, m2, m3)
    sd0, sd1, sd2, sd3 = tl.exp(0.5 * lv0), tl.exp(0.5 * lv1), tl.exp(0.5 * lv2), tl.exp(0.5 * lv3)
    seed = tl.load(SEED)
    k_ctr = tl.program_id(0).to(tl.int64) * 0   # k * CPAD, int64
    k_off = k_ctr                                # k * BL, int64
    for k in range(0, K):
        n0, n1, n2, n3 = normal4x(seed, k_ctr + counter)
        _store4(Z + k_off, i0, i1, i2, i3, mu0 + sd0 * n0, mu1 + sd1 * n1, mu2 + sd2 * n2,
                mu3 + sd3 * n3, m0, m1, m2, m3)
        k_ctr += CPAD
        k_off += BL


@triton.jit
def reparameterize_bwd_kernel(
    DZ, LV, SEED,          # inputs: (K, B*L), (B*L,), one int64
    DMU, DLV,              # outputs: (B*L,) each (DLV written when need_dlv)
    BL, K, CPAD, need_dlv,
    CHUNKS: tl.constexpr, Q: tl.constexpr,
):
    i0, i1, i2, i3, m0, m1, m2, m3, counter = _quarters(BL, CHUNKS, Q)
    seed = tl.load(SEED)
    zero = tl.zeros([CHUNKS, Q], dtype=tl.float32)
    gm0, gm1, gm2, gm3 = zero, zero, zero, zero
    ge0, ge1, ge2, ge3 = zero, zero, zero, zero
    k_ctr = tl.program_id(0).to(tl.int64) * 0
    k_off = k_ctr
    for k in range(0, K):
        n0, n1, n2, n3 = normal4x(seed, k_ctr + counter)
        d0, d1, d2, d3 = _load4(DZ + k_off, i0, i1, i2, i3, m0, m1, m2, m3)
        gm0 += d0
        gm1 += d1
        gm2 += d2
        gm3 += d3
        ge0 += d0 * n0
        ge1 += d1 * n1
        ge2 += d2 * n2
        ge3 += d3 * n3
        k_ctr += CPAD
        k_off += BL
    _store4(DMU, i0, i1, i2, i3, gm0, gm1, gm2, gm3, m0, m1, m2, m3)
    if need_dlv != 0:
        lv0, lv1, lv2, lv3 = _load4(LV, i0, i1, i2, i3, m0, m1, m2, m3)
        _store4(DLV, i0, i1, i2, i3, 0.5 * tl.exp(0.5 * lv0) * ge0, 0.5 * tl.exp(0.5 * lv1) * ge1,
                0.5 * tl.exp(0.5 * lv2) * ge2, 0.5 * tl.exp(0.5 * lv3) * ge3, m0, m1, m2, m3)
