"""The row-warp IWAE kernel's unpack ``mma`` (kernels/iwae_bound_row_warps.py,
``_lane_mask`` and ``_unpack_mma``: compiled only, so no interpreted test reaches it): its B
fragment rule against the PTX ISA's fragment layout, modelled here."""


def _mma_m16n8k8(a_regs, b_regs):
    """PTX ISA's mma.m16n8k8 (bf16 A row, B col, f32 D) by its fragment layout: lane
    4g + t holds A[g][2t + i] and A[g + 8][2t + i] (a0..a3), B[2t + i][g] (b0, b1), and
    gets D[g][2t + i], D[g + 8][2t + i] (d0..d3)."""
    a = [[0.0] * 8 for _ in range(16)]
    b = [[0.0] * 8 for _ in range(8)]
    for lane in range(32):
        g, t = divmod(lane, 4)
        for i in range(2):
            a[g][2 * t + i], a[g + 8][2 * t + i] = a_regs[lane][i], a_regs[lane][2 + i]
            b[2 * t + i][g] = b_regs[lane][i]
    d = [[sum(a[r][k] * b[k][c] for k in range(8)) for c in range(8)] for r in range(16)]
    return [[d[lane // 4][2 * (lane % 4) + i] for i in range(2)]
            + [d[lane // 4 + 8][2 * (lane % 4) + i] for i in range(2)] for lane in range(32)]


def test_the_identity_fragment_gives_each_lane_its_own_elements():
    """The kernel's unpack mma (``_unpack_mma``, compiled only): B from ``_lane_mask``'s
    rule (ones in the low half where g = 2t, the high half where g = 2t + 1) makes every
    lane's D its own four A elements, as the elementwise asm needs."""
    def lane_b(lane):
        g, t2 = lane >> 2, (lane & 3) * 2
        return [1.0 if g == t2 else 0.0, 1.0 if g == t2 + 1 else 0.0]
    a_regs = [[float(4 * lane + i + 1) for i in range(4)] for lane in range(32)]
    assert _mma_m16n8k8(a_regs, [lane_b(n) for n in range(32)]) == a_regs
