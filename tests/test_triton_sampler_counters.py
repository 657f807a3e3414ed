"""The Triton sampler's Philox counter contract: the draws depend on (seed, position) only,
counters past 2^32 reach Philox's second word, and column chunks past 2^31 start where
they should. Runs where kernels run (``kernel_device``): compiled on CUDA, else under
TRITON_INTERPRET=1 (tests/test_triton_interpreter.py runs this module so)."""
import pytest
import torch

from _backends import skip_unless_kernels_run

skip_unless_kernels_run()  # the whole module: one line in the report, not one per test
# a module global: Triton 3.0's interpreter resolves `tl` in a kernel's module globals
import triton.language as tl  # noqa: E402
from fastvae.kernels.sample_with_kl import _chunk  # noqa: E402  (a kernel's global, as tl)

from _compare import assert_close  # noqa: E402

F32 = torch.float32


pytestmark = pytest.mark.usefixtures("kernels")   # tensors on the kernels' device


# -- the sampler's counter contract --------------------------------------------------------------

def test_noise_depends_on_seed_and_position_only(seed):
    """The draws depend on (seed, position), not on the launch configuration; sample k of
    K is the same draw whatever K is."""
    from fastvae import backends
    from fastvae.backends.triton_backend import configs
    tb = backends.get("triton")
    mu, lv = torch.randn(9, 2000), torch.randn(9, 2000)
    noise = tb.reparameterize_noise(mu, 2, None)
    assert noise.dtype == torch.int64 and noise.numel() == 1
    ref = tb.reparameterize_fwd(mu, lv, noise, 2)
    mode = configs.CONFIG_MODE
    try:
        configs.CONFIG_MODE = "gpu" if mode != "gpu" else "interpret"
        other = tb.reparameterize_fwd(mu, lv, noise, 2)
    finally:
        configs.CONFIG_MODE = mode
    assert torch.equal(ref, other)
    assert torch.equal(tb.reparameterize_fwd(mu, lv, noise, 3)[:2], ref)
    # and backward regenerates the very same eps: std * eps read off the forward with mu = 0
    std_eps = tb.reparameterize_std_eps(lv, noise, 2)
    assert_close("std * eps", std_eps, ref.double() - mu.double(), F32)


def test_large_counters_use_the_high_word(kernel_device):
    """Counters past 2**32 (K * B*L/4 > 2**32 in real use) feed Philox's second word: a
    draw far down the K axis is not a copy of an early one. Checked on the counter
    itself (such tensors do not fit a test) through randn4x, as the kernels call it."""
    import triton

    from fastvae.backends.triton_backend import _launch

    @triton.jit
    def draw(SEED, CTR, OUT):
        i = tl.arange(0, 4)
        ctr = tl.load(CTR + i)
        n0, n1, n2, n3 = tl.randn4x(tl.load(SEED), ctr)
        tl.store(OUT + i, n0)

    seed = torch.tensor([99], dtype=torch.int64)
    ctr = torch.tensor([5, 5 + 2**32, 5 + 2**33, 5], dtype=torch.int64)
    out = torch.empty(4)
    draw[(1,)](seed, ctr, out, **_launch.OPTIONS)
    assert out[0] == out[3]
    assert len({float(v) for v in out[:3]}) == 3


def test_sample_with_kl_chunks_past_2_31_columns(kernel_device):
    """A row of more than 2^31 latents (B = 1, a (1, 48, 8192, 8192) map) split into the
    chunks an H200's plan makes: every chunk starts where it should (an int32 product
    would wrap negative from chunk 352 on: reads and writes before the buffers, the
    row's last third never written). Checked on the helper itself (such tensors do not
    fit a test)."""
    import triton

    from fastvae.backends.triton_backend import _launch

    @triton.jit
    def chunks(OUT, N, CHUNK):
        start, end = _chunk(N, CHUNK, True)
        p = tl.program_id(1)
        tl.store(OUT + 2 * p, start.to(tl.int64))
        tl.store(OUT + 2 * p + 1, end.to(tl.int64))

    n, chunk, programs = 3 << 30, 6100992, 528
    out = torch.empty(programs, 2, dtype=torch.int64)
    chunks[(1, programs)](out, n, chunk, **_launch.OPTIONS)
    starts = torch.arange(programs, dtype=torch.int64) * chunk
    assert torch.equal(out[:, 0], starts)
    assert torch.equal(out[:, 1], torch.clamp(starts + chunk, max=n))
