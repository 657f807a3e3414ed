"""The row-warp IWAE kernel (kernels/iwae_bound_row_warps.py): which calls the host gives it
(iwae_configs.iwae_row_warps_config), and its values and every gradient against float64.

It holds d/dl in bf16 across the softmax, so d/drecon_k is rounded twice: per element
within ``2r + r^2`` of the float64 gradient (r = 2^-8 for a GPU's round-to-nearest, 2^-7
under the interpreter, whose bf16 conversions truncate), plus the fp32 softmax weights'
own error (``grad_rtol``: 4 eps 3D relative) and an fp32 absolute floor
(``_iwae_twice_rounded.check``). Every other output is formed in fp32 and rounded once,
held to the usual bf16 rule.

Runs where kernels run (tests/test_triton_interpreter.py runs it under TRITON_INTERPRET=1).
"""
import pytest
import torch

from _backends import skip_unless_kernels_run

skip_unless_kernels_run()

import fastvae  # noqa: E402
from fastvae.backends.triton_backend import iwae_configs  # noqa: E402
from _compare import leaf  # noqa: E402
from _gpu_tiles import gpu_tiles  # noqa: E402,F401 (a fixture)
from _iwae import make_like as iwae_inputs  # noqa: E402
from _iwae import check_weight_zero_and_nan_rows, row_kernel  # noqa: E402
from _iwae_twice_rounded import PRIOR_ESTIMATOR_CASES, check, kernels_by_alignment  # noqa: E402
from _python_calls import python_calls  # noqa: E402

BF16, F32 = torch.bfloat16, torch.float32
KERNEL, PAIRS = "row_warps", "pairs"   # as _iwae.row_kernel names them


# (K, B, D, L): B not a multiple of the 4 rows a program; K 2-8; D at the rule's bounds
# (512, 784) and inside (a 16-column tail on 2 and 3 chunks, tails of 48 and 64 columns,
# none on 3 chunks); L 1-32
@pytest.mark.parametrize("k,b,d,l,reduction,noncontig", [
    (2, 5, 512, 32, "none", False),
    (3, 3, 528, 17, "mean", True),
    (4, 6, 576, 1, "sum", False),
    (5, 7, 784, 32, "none", True),
    (6, 2, 560, 30, "mean", False),
    (7, 9, 768, 8, "sum", False),
    (8, 1, 784, 5, "none", False),
])
def test_values_and_gradients(seed, launches, gpu_tiles, k, b, d, l, reduction, noncontig):
    check(launches, KERNEL, k, b, d, l, BF16, reduction, noncontig)


@pytest.mark.parametrize("prior,estimator,reduction", PRIOR_ESTIMATOR_CASES)
def test_prior_and_estimators(seed, launches, gpu_tiles, prior, estimator, reduction):
    check(launches, KERNEL, 5, 6, 784, 12, BF16, reduction, prior=prior, estimator=estimator)


@pytest.mark.parametrize("reduction", ["none", "mean"])
def test_a_scale(seed, launches, gpu_tiles, reduction):
    """A scale, as IWAELoss's -1 (here -0.5, so that its size shows too): each row's value
    times it where unreduced (the kernel's row scale), the gradients' factor c either way."""
    check(launches, KERNEL, 4, 5, 528, 9, BF16, reduction, scale=-0.5)


@pytest.mark.parametrize("reduction,grad_output", [
    ("none", lambda b: torch.linspace(-2.0, 3.0, b)), ("sum", lambda b: torch.tensor(2.5))])
def test_a_grad_output_other_than_1(seed, launches, gpu_tiles, reduction, grad_output):
    """Backward at grad_output != 1 weighs the saved gradients (the kernel wrote them for
    grad_output 1): every gradient as the reference's, d/drecon_k within three roundings."""
    check(launches, KERNEL, 5, 6, 784, 9, BF16, reduction, grad_output=grad_output(6))


@pytest.mark.parametrize("k,d", [(5, 784), (8, 528)])
def test_extreme_logits(seed, launches, gpu_tiles, k, d):
    """Logits of +-1e4, +-88, +-20 among moderate ones: e = 2^(-|l| log2 e) underflows
    to 0 (factor 1, d/dl exactly x - 1 or x), as the float64 formula's."""
    check(launches, KERNEL, k, 5, d, 7, BF16, "none", extreme=True)


def test_a_row_of_weight_zero_and_a_nan_row(seed, launches, gpu_tiles):
    """A row whose every log w is -inf (bound -inf, gradients 0) beside a NaN row."""
    check_weight_zero_and_nan_rows(launches, KERNEL, 5, 784)


def test_which_calls_take_it(seed, routes, gpu_tiles, monkeypatch):
    """bf16 Bernoulli training at 2 <= K <= 8, 512 <= D <= 784 (a multiple of 16, at most
    64 columns past whole 256-column chunks), L <= 32, x without a gradient: this kernel.
    fp16 (its gradients saved in fp32), fp32, no d/drecon_k, d/dx, K, D, L past the
    limits and offsets past int32: the pair kernel's (or another's)."""
    configs = gpu_tiles
    bern = configs.BERNOULLI

    def takes(k, d, l, bf16=True, lik=bern, per_column=False, need_gr=True):
        return iwae_configs.iwae_row_warps_config(64, k, d, l, lik, per_column, bf16,
                                                  need_gr) is not None
    assert [k for k in range(1, 10) if takes(k, 784, 32)] == list(range(2, 9))
    assert [d for d in range(496, 801, 8) if takes(5, d, 32)] == [
        *range(512, 577, 16), 768, 784]
    assert takes(5, 784, 32) and not takes(5, 784, 33)
    assert not any((takes(5, 784, 32, bf16=False), takes(5, 784, 32, lik=configs.GAUSSIAN_SCALAR),
                    takes(5, 784, 32, per_column=True), takes(5, 784, 32, need_gr=False)))
    assert iwae_configs.iwae_row_warps_config(64, 5, 784, 32, bern, False, True, True) == (
        4, 32, 4, (8, 3, 16, 4))
    assert iwae_configs.iwae_row_warps_config(64, 8, 576, 8, bern, False, True, True) == (
        4, 32, 4, (8, 2, 64, 16))

    def kernel(dtype, grad_x=False, grad_r=True, d=784):
        (x, recon, mu, lv, z), _, _ = iwae_inputs(5, 3, d, 8, "bernoulli", dtype)
        del routes[:]
        with torch.set_grad_enabled(grad_r or grad_x):
            fastvae.iwae_bound(x.detach().requires_grad_(grad_x),
                               recon.detach().requires_grad_(grad_r), mu, lv, z,
                               backend="triton")
        return row_kernel(routes)
    assert kernel(BF16) == KERNEL
    assert kernel(torch.float16) == kernel(F32) == kernel(BF16, grad_r=False) == PAIRS
    assert kernel(BF16, d=592) == kernel(BF16, d=688) == PAIRS
    assert kernel(BF16, grad_x=True) != KERNEL and kernel(BF16, d=800) != KERNEL
    monkeypatch.setattr(configs, "INT32_LIMIT", 100)
    assert kernel(BF16) == PAIRS


def test_rows_not_16_byte_aligned_take_the_pair_kernel(seed, routes, gpu_tiles):
    """Its loads are 16 bytes a lane: a row stride of x or recon_k that Triton does not
    know to be a multiple of 16 elements, or a base pointer off 16 bytes, would compile
    them to an element each; the pair kernel runs those."""
    assert kernels_by_alignment(routes, 5, 784) == [KERNEL] + [PAIRS] * 4


@pytest.mark.parametrize("half", ["prior_mu", "prior_logvar"])
def test_a_prior_past_int32_takes_int64_offsets(seed, launches, gpu_tiles, monkeypatch, half):
    """A (B, L) prior read in place through a wide row stride counts among the offsets
    (as the ELBO's does): past int32 the pair kernel's int64 ones, not this kernel's int32
    ones, which would wrap on a GPU. Here the limit is lowered between the other tensors'
    spans (at most K B D = 11760) and the prior's (2 x 30000 + 8)."""
    configs = gpu_tiles
    (x, recon, mu, lv, z), _, _ = iwae_inputs(5, 3, 784, 8, "bernoulli", BF16)
    prior = {n: leaf((torch.randn(3, 8) * 0.5).to(BF16)) for n in ("prior_mu", "prior_logvar")}
    prior[half] = leaf((torch.randn(3, 30000) * 0.5).to(BF16))[:, :8]

    def kernel():
        del launches[:]
        fastvae.iwae_bound(x.detach(), recon, mu, lv, z, backend="triton", **prior)
        return row_kernel(launches)
    assert kernel() == KERNEL
    monkeypatch.setattr(configs, "INT32_LIMIT", 20000)
    assert kernel() == PAIRS


@pytest.mark.parametrize("k,d,l", [(5, 784, 32), (8, 576, 1), (2, 512, 7)])
def test_the_rule_costs_one_lookup(gpu_tiles, k, d, l):
    """Every IWAE call runs iwae_row_warps_config on the host: a call the kernel takes
    costs one dict lookup over one it refuses at the first test (its rule run each time,
    three next_pow2, was up to 10 calls more: about 1.1 us a call)."""
    configs = gpu_tiles
    bern = configs.BERNOULLI

    def ask(bf16):
        return iwae_configs.iwae_row_warps_config(64, k, d, l, bern, False, bf16, True)
    assert ask(True) is not None and ask(False) is None
    assert python_calls(lambda: ask(True)) == python_calls(lambda: ask(False)) + 1
