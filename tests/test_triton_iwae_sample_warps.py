"""The sample-warp IWAE kernel (kernels/iwae_bound_sample_warps.py): which calls the host
gives it (iwae_configs.iwae_sample_warps_config), and its values and every gradient
against float64.

It writes d/dl unweighted and weighs it in a sweep after the row's softmax, so
d/drecon_k is rounded twice and weighed by the weight split into bf16 ``hi + lo``: in bf16
per element within ``(1 + r)^2 (1 + 2r^2) - 1`` of the float64 gradient (r = 2^-8 for a
GPU's round-to-nearest, 2^-7 under the interpreter, whose bf16 conversions truncate),
plus the fp32 softmax weights' own error (``grad_rtol``: 4 eps 3D relative) and an fp32
absolute floor (``_iwae_twice_rounded.check``). Every other output is formed in fp32 and
rounded once, held to the usual bf16 rule.

Runs where kernels run (tests/test_triton_interpreter.py runs it under TRITON_INTERPRET=1).
"""
import pytest
import torch

from _backends import skip_unless_kernels_run

skip_unless_kernels_run()

import fastvae  # noqa: E402
from _addresses import own_elements  # noqa: E402
from _gpu_tiles import gpu_tiles  # noqa: E402,F401 (a fixture)
from _iwae import make_like as iwae_inputs  # noqa: E402
from _iwae import check_weight_zero_and_nan_rows, row_kernel  # noqa: E402
from _iwae_twice_rounded import PRIOR_ESTIMATOR_CASES, check, kernels_by_alignment  # noqa: E402

BF16, F16, F32 = torch.bfloat16, torch.float16, torch.float32
KERNEL = "sample_warps"   # as _iwae.row_kernel names it


# (K, B, D, L, dtype): K past the pair kernel's 16 (or D past its 784) up to 64, padded to
# the 4 samples a step (K = 50: 52; 17: 20; 64: none); D: 2 and 3 chunks of 256 and tails
# of 16-32 columns or none; L 1-32
@pytest.mark.parametrize("k,b,d,l,dtype,reduction,noncontig", [
    (50, 3, 784, 32, BF16, "none", False),
    (17, 2, 528, 17, BF16, "mean", True),
    (17, 3, 768, 1, BF16, "sum", False),
    (64, 2, 544, 8, BF16, "none", False),
])
def test_values_and_gradients(seed, launches, gpu_tiles, k, b, d, l, dtype, reduction,
                              noncontig):
    check(launches, KERNEL, k, b, d, l, dtype, reduction, noncontig)


@pytest.mark.parametrize("prior,estimator,reduction", PRIOR_ESTIMATOR_CASES)
def test_prior_and_estimators(seed, launches, gpu_tiles, prior, estimator, reduction):
    check(launches, KERNEL, 20, 3, 528, 12, BF16, reduction, prior=prior, estimator=estimator)


@pytest.mark.parametrize("reduction", ["none", "mean"])
def test_a_scale(seed, launches, gpu_tiles, reduction):
    """A scale, as IWAELoss's -1 (here -0.5): each row's value times it where unreduced,
    the gradients' factor c either way."""
    check(launches, KERNEL, 18, 3, 528, 9, BF16, reduction, scale=-0.5)


@pytest.mark.parametrize("reduction,grad_output", [
    ("none", lambda b: torch.linspace(-2.0, 3.0, b)), ("sum", lambda b: torch.tensor(2.5))])
def test_a_grad_output_other_than_1(seed, launches, gpu_tiles, reduction, grad_output):
    """Backward at grad_output != 1 weighs the saved gradients: every gradient as the
    reference's, d/drecon_k within three roundings."""
    check(launches, KERNEL, 19, 3, 784, 9, BF16, reduction, grad_output=grad_output(3))


@pytest.mark.parametrize("k,d,dtype", [(50, 784, BF16), (24, 528, BF16)])
def test_extreme_logits(seed, launches, gpu_tiles, k, d, dtype):
    """Logits of +-1e4, +-88, +-20, 30, -40 among moderate ones, in whole chunks and in
    the tail: e = 2^(-|l| log2 e) underflows to 0 (factor 1, d/dl exactly x - 1 or x), as
    the float64 formula's."""
    check(launches, KERNEL, k, 3, d, 7, dtype, "none", extreme=True)


def test_a_row_of_weight_zero_and_a_nan_row(seed, launches, gpu_tiles):
    """A row whose every log w is -inf (bound -inf, gradients 0) beside a NaN row."""
    check_weight_zero_and_nan_rows(launches, KERNEL, 21, 784)


def test_which_calls_take_it(seed, routes, gpu_tiles):
    """bf16 Bernoulli training at 17 <= K <= 64, 512 <= D <= 784 (a multiple of 16, at
    most 32 columns past whole 256-column chunks), L <= 32, x without a gradient: this
    kernel. fp16, fp32, d/dx, K, D, L past the limits: the two-pass kernel (or another)."""
    from fastvae.backends.triton_backend.iwae_configs import iwae_sample_warps_config
    bern = gpu_tiles.BERNOULLI

    def takes(k, d, l=32, bf16=True, per_column=False, need_gr=True):
        return iwae_sample_warps_config(k, d, l, bern, per_column, bf16, need_gr) is not None
    assert [k for k in range(1, 70) if takes(k, 784)] == list(range(17, 65))
    assert [d for d in range(496, 801, 8) if takes(50, d)] == [512, 528, 544, 768, 784]
    assert not any((takes(50, 784, 33), takes(50, 784, bf16=False),
                    takes(50, 784, per_column=True), takes(50, 784, need_gr=False)))
    assert iwae_sample_warps_config(50, 784, 32, bern, False, True, True) == (
        64, 4, 32, 4, (8, 3, 16))

    def kernel(dtype, grad_x=False, k=50):
        (x, recon, mu, lv, z), _, _ = iwae_inputs(k, 2, 784, 8, "bernoulli", dtype)
        del routes[:]
        fastvae.iwae_bound(x.detach().requires_grad_(grad_x), recon, mu, lv, z,
                           backend="triton")
        return row_kernel(routes)
    assert kernel(BF16) == KERNEL
    assert kernel(F16) == kernel(F32) == kernel(BF16, grad_x=True) == "twopass"
    assert kernel(BF16, k=16) == "pairs"


@pytest.mark.parametrize("k,d,l,prior,estimator", [
    (17, 528, 17, "row", "dreg"), (50, 784, 32, None, "standard"), (19, 512, 1, "shared", "stl")])
def test_reads_and_writes_inside_its_tensors(seed, launches, gpu_tiles, k, d, l, prior,
                                             estimator):
    """Strided inputs read in place, samples padded to the warps (K - 1's row read again)
    and to 64 in the tail and latent tiles: every load and store an element of the tensor
    its pointer came from, the log-weight scratch and the weights included
    (tests/_addresses.py)."""
    with own_elements():
        check(launches, KERNEL, k, 3, d, l, noncontig=True, prior=prior, estimator=estimator)


def test_offsets_past_int32_take_the_two_pass_kernel(seed, launches, gpu_tiles, monkeypatch):
    """Its offsets are int32: one past the largest, K B D for d/drecon_k, within the limit
    runs it; past it, the two-pass kernel's int64 offsets."""
    k, b, d = 20, 3, 528
    (x, recon, mu, lv, z), _, _ = iwae_inputs(k, b, d, 8, "bernoulli", BF16)

    def kernel():
        del launches[:]
        fastvae.iwae_bound(x.detach(), recon, mu, lv, z, backend="triton")
        return row_kernel(launches)
    monkeypatch.setattr(gpu_tiles, "INT32_LIMIT", k * b * d)
    assert kernel() == KERNEL
    monkeypatch.setattr(gpu_tiles, "INT32_LIMIT", k * b * d - 1)
    assert kernel() == "twopass"


def test_rows_not_16_byte_aligned_take_the_two_pass_kernel(seed, routes, gpu_tiles):
    """Its loads are 16 bytes a lane: a row stride of x or recon_k that Triton does not
    know to be a multiple of 16 elements, or a base pointer off 16 bytes, would compile
    them to an element each; the two-pass kernel runs those."""
    assert kernels_by_alignment(routes, 20, 528) == [KERNEL] + ["twopass"] * 4


def test_a_card_without_bf16_mma_takes_the_other_kernels(seed, routes, gpu_tiles,
                                                         monkeypatch):
    """The row- and sample-warp kernels unpack bf16 with an ``mma`` that needs sm_80: an
    older card (a T4, sm_75) runs bf16 through the pair and two-pass kernels, where these
    two would not compile."""
    from fastvae.backends.triton_backend import iwae_bound as host

    def kernel(k):
        (x, recon, mu, lv, z), _, _ = iwae_inputs(k, 3, 784, 8, "bernoulli", BF16)
        del routes[:]
        fastvae.iwae_bound(x.detach(), recon, mu, lv, z, backend="triton")
        return row_kernel(routes)
    assert (kernel(5), kernel(50)) == ("row_warps", KERNEL)
    monkeypatch.setattr(host, "_bf16_mma", lambda device: False)
    assert (kernel(5), kernel(50)) == ("pairs", "twopass")

    monkeypatch.undo()
    capability = {}
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda d: capability[d.index])
    monkeypatch.setattr(host, "_BF16_MMA", {})
    capability.update({0: (7, 5), 1: (9, 0)})
    assert [host._bf16_mma(torch.device("cuda", i)) for i in (0, 1)] == [False, True]
    assert host._bf16_mma(torch.device("cpu"))
