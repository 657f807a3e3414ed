"""Reparameterization ``z = mu + exp(0.5*logvar) * eps`` with ``eps`` drawn in the kernel.

No noise tensor exists: the forward draws ``eps`` from Philox (``tl.randn4x``) at
``(seed, counter)`` and the backward draws the very same numbers again from the same
``(seed, counter)``. The seed is a one-element int64 tensor read inside the kernel
(drawn by ``torch.randint`` from torch's generator, so ``torch.manual_seed`` and a
passed ``generator`` control it, no host sync, and a new seed never recompiles).

Counter layout (independent of the launch configuration, so a sample depends only on
the seed and its position): the B*L latents of one sample are cut into chunks of
``4*Q`` elements (``Q = 1024``); element ``i`` of sample ``k`` is quarter
``j = (i % 4Q) // Q`` of chunk ``i // 4Q`` and takes normal ``j`` of the four that
``randn4x`` returns for the int64 counter ``k*CPAD + (i // 4Q)*Q + i % Q``, with
``CPAD = cdiv(B*L, 4Q) * Q`` counters per sample. Each Philox call feeds four
contiguous, vectorizable quarters.

``reparam_fwd_kernel`` — grid ``cdiv(B*L, 4*Q*CHUNKS)``: loads mu/logvar once and
writes all K samples (``(K, B, L)``, contiguous).
``reparam_bwd_kernel`` — same grid: ``dmu = sum_k dz_k``,
``dlogvar = 0.5 * exp(0.5*logvar) * sum_k dz_k * eps_k``.
"""
import triton
import triton.language as tl

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
def reparam_fwd_kernel(MU, LV, SEED, Z, BL, K, CPAD,
                       CHUNKS: tl.constexpr, Q: tl.constexpr):
    i0, i1, i2, i3, m0, m1, m2, m3, counter = _quarters(BL, CHUNKS, Q)
    mu0 = tl.load(MU + i0, mask=m0, other=0.0).to(tl.float32)
    mu1 = tl.load(MU + i1, mask=m1, other=0.0).to(tl.float32)
    mu2 = tl.load(MU + i2, mask=m2, other=0.0).to(tl.float32)
    mu3 = tl.load(MU + i3, mask=m3, other=0.0).to(tl.float32)
    sd0 = tl.exp(0.5 * tl.load(LV + i0, mask=m0, other=0.0).to(tl.float32))
    sd1 = tl.exp(0.5 * tl.load(LV + i1, mask=m1, other=0.0).to(tl.float32))
    sd2 = tl.exp(0.5 * tl.load(LV + i2, mask=m2, other=0.0).to(tl.float32))
    sd3 = tl.exp(0.5 * tl.load(LV + i3, mask=m3, other=0.0).to(tl.float32))
    seed = tl.load(SEED)
    k_ctr = tl.program_id(0).to(tl.int64) * 0   # k * CPAD, int64
    k_off = k_ctr                                # k * BL, int64
    for k in range(0, K):
        n0, n1, n2, n3 = tl.randn4x(seed, k_ctr + counter)
        zk = Z + k_off
        tl.store(zk + i0, (mu0 + sd0 * n0).to(Z.dtype.element_ty), mask=m0)
        tl.store(zk + i1, (mu1 + sd1 * n1).to(Z.dtype.element_ty), mask=m1)
        tl.store(zk + i2, (mu2 + sd2 * n2).to(Z.dtype.element_ty), mask=m2)
        tl.store(zk + i3, (mu3 + sd3 * n3).to(Z.dtype.element_ty), mask=m3)
        k_ctr += CPAD
        k_off += BL


@triton.jit
def reparam_bwd_kernel(DZ, LV, SEED, DMU, DLV, BL, K, CPAD, need_dlv,
                       CHUNKS: tl.constexpr, Q: tl.constexpr):
    i0, i1, i2, i3, m0, m1, m2, m3, counter = _quarters(BL, CHUNKS, Q)
    seed = tl.load(SEED)
    zero = tl.zeros([CHUNKS, Q], dtype=tl.float32)
    gm0, gm1, gm2, gm3 = zero, zero, zero, zero
    ge0, ge1, ge2, ge3 = zero, zero, zero, zero
    k_ctr = tl.program_id(0).to(tl.int64) * 0
    k_off = k_ctr
    for k in range(0, K):
        n0, n1, n2, n3 = tl.randn4x(seed, k_ctr + counter)
        dzk = DZ + k_off
        d0 = tl.load(dzk + i0, mask=m0, other=0.0).to(tl.float32)
        d1 = tl.load(dzk + i1, mask=m1, other=0.0).to(tl.float32)
        d2 = tl.load(dzk + i2, mask=m2, other=0.0).to(tl.float32)
        d3 = tl.load(dzk + i3, mask=m3, other=0.0).to(tl.float32)
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
    tl.store(DMU + i0, gm0.to(DMU.dtype.element_ty), mask=m0)
    tl.store(DMU + i1, gm1.to(DMU.dtype.element_ty), mask=m1)
    tl.store(DMU + i2, gm2.to(DMU.dtype.element_ty), mask=m2)
    tl.store(DMU + i3, gm3.to(DMU.dtype.element_ty), mask=m3)
    if need_dlv != 0:
        h0 = 0.5 * tl.exp(0.5 * tl.load(LV + i0, mask=m0, other=0.0).to(tl.float32))
        h1 = 0.5 * tl.exp(0.5 * tl.load(LV + i1, mask=m1, other=0.0).to(tl.float32))
        h2 = 0.5 * tl.exp(0.5 * tl.load(LV + i2, mask=m2, other=0.0).to(tl.float32))
        h3 = 0.5 * tl.exp(0.5 * tl.load(LV + i3, mask=m3, other=0.0).to(tl.float32))
        tl.store(DLV + i0, (h0 * ge0).to(DLV.dtype.element_ty), mask=m0)
        tl.store(DLV + i1, (h1 * ge1).to(DLV.dtype.element_ty), mask=m1)
        tl.store(DLV + i2, (h2 * ge2).to(DLV.dtype.element_ty), mask=m2)
        tl.store(DLV + i3, (h3 * ge3).to(DLV.dtype.element_ty), mask=m3)
