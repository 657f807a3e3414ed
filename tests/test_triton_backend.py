"""What is specific to the Triton backend's host code (fastvae/backends/triton_backend/):
kernel launches per call, what autograd saves, no host reads in backward, float64 and
empty inputs handed to the "torch" path, and (``gpu``) CUDA-only behaviour. The custom ops
under opcheck and torch.compile: tests/test_triton_custom_ops.py; the sampler's Philox
counter contract: tests/test_triton_sampler_counters.py; the fast math's error bounds:
tests/test_triton_fast_math.py.

Runs where kernels run (``kernel_device``): compiled on CUDA, else under
TRITON_INTERPRET=1 (tests/test_triton_interpreter.py runs this module so). Every output
buffer starts as NaN. The ops' values on this backend: the op suites (tests/test_<op>.py).
"""
import pytest
import torch

from _backends import skip_unless_kernels_run

skip_unless_kernels_run()  # the whole module: one line in the report, not one per test

import fastvae  # noqa: E402
from _compare import assert_close, check_no_noise_saved, leaf, oracle  # noqa: E402
import _formulas as F  # noqa: E402
from _elbo import make_like  # noqa: E402
from _triton import train_step  # noqa: E402

F32 = torch.float32


pytestmark = pytest.mark.usefixtures("kernels")   # tensors on the kernels' device


def _elbo(like="gaussian_perdim", kl="mc", b=20, d=30, l=4):
    (x, recon, mu, lv, z), obs, likelihood = make_like(b, d, l, like, F32)
    return (x, recon, mu, lv, z if kl == "mc" else None, obs), dict(likelihood=likelihood, kl=kl)


# -- launches per call (machine-independent) ---------------------------------------------------

@pytest.mark.parametrize("like", ["bernoulli", "gaussian_perdim"])
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
@pytest.mark.parametrize("fb", [0.0, 0.5])
def test_elbo_launch_counts(seed, launches, like, reduction, fb):
    """Forward: one row pass, which also sums the batch; free bits add their per-latent
    clamp pass before it, and a (D,) obs_logvar's gradient under a batch reduction its
    column sums after it. Backward: the saved gradients are the answer; a scalar
    grad_output takes one launch that scales them all (a (B,) one is torch's multiply)."""
    (x, recon, mu, lv, z, obs), opts = _elbo(like)
    v = fastvae.elbo(x, recon, mu, lv, z=z, obs_logvar=obs, free_bits=fb, reduction=reduction,
                     backend="triton", **opts)
    want = (["kl_clamp_kernel"] if fb else []) + ["elbo_rows_kernel"]
    if like == "gaussian_perdim" and reduction != "none":
        want.append("finish_kernel")
    assert launches == want
    del launches[:]
    v.sum().backward()
    assert launches == ["scale_grads_kernel"] * (reduction != "none")


def test_forward_only_launches_once(seed, launches):
    (x, recon, mu, lv, _, _), _ = _elbo("bernoulli", "analytic", 6, 10, 3)
    with torch.no_grad():
        v = fastvae.elbo(x, recon, mu, lv, backend="triton", reduction="none")
        assert torch.isfinite(v).all() and launches == ["elbo_rows_kernel"]
        del launches[:]
        z_k = torch.randn(8, 6, 3)
        w = fastvae.iwae_bound(x, recon.expand(8, 6, 10), mu, lv, z_k, backend="triton")
        assert torch.isfinite(w).all() and launches == ["iwae_bound_onepass_kernel"]


@pytest.mark.parametrize("op", ["kl_standard_normal", "gaussian_log_prob"])
def test_per_row_ops_launch_once_and_backward_launches_nothing(seed, launches, op):
    a, b = leaf(torch.randn(7, 33)), leaf(torch.randn(7, 33))
    if op == "kl_standard_normal":
        out = fastvae.kl_standard_normal(a, b, backend="triton")
    else:
        out = fastvae.gaussian_log_prob(a, b, leaf(torch.randn(33)), backend="triton")
    assert len(launches) == 1, launches
    out.sum().backward()  # per-row gradients times a (B,) grad_output: torch's multiply
    assert len(launches) == 1


def test_dmol_launches_once_and_is_deterministic(seed, launches):
    """The DMoL op: one launch (a sample's block sums are torch's, in a fixed order);
    backward of per-sample values is torch's in-place multiply. Its ELBO adds one ELBO
    launch with no data columns (D = 0), and loss.backward() one scale launch per op,
    which at grad_output 1 moves nothing."""
    x = torch.randint(0, 256, (5, 3, 9, 7)) / 255.0
    params = leaf(torch.randn(5, 40, 9, 7))
    outs = []
    for _ in range(2):
        del launches[:]
        v = fastvae.discretized_logistic_mixture_log_prob(x, params, backend="triton")
        assert launches == ["dmol_rows_kernel"], launches
        del launches[:]
        (g,) = torch.autograd.grad(v.sum(), params)
        assert launches == [], launches
        outs.append((v, g))
    assert torch.equal(outs[0][0], outs[1][0]) and torch.equal(outs[0][1], outs[1][1])
    mu, lv = leaf(torch.randn(5, 4)), leaf(torch.randn(5, 4))
    del launches[:]
    loss = fastvae.ELBOLoss(likelihood="discretized_logistic_mixture", free_bits=0.1,
                            backend="triton")(x, params, mu, lv)
    assert sorted(launches) == ["dmol_rows_kernel", "elbo_rows_kernel", "kl_clamp_kernel"]
    del launches[:]
    loss.backward()
    assert launches == ["scale_grads_kernel"] * 2, launches
    want = fastvae.ELBOLoss(likelihood="discretized_logistic_mixture", free_bits=0.1,
                            backend="torch")(x.cpu(), params.detach().cpu(), mu.detach().cpu(),
                                             lv.detach().cpu())
    assert_close("loss", loss, want, F32, scale=want.abs())


@pytest.mark.parametrize("k", [4, 9])   # one pass, two passes
def test_iwae_launches_and_determinism(seed, launches, k):
    x, recon, mu, lv, z = (leaf(t) for t in _iwae_inputs(k, 50, 60, 5))
    obs = leaf(torch.randn(60) * 0.4)
    outs = []
    for reduction, want in (("none", 1), ("mean", 2), ("mean", 2)):
        del launches[:]
        v = fastvae.iwae_bound(x, recon, mu, lv, z, likelihood="gaussian", obs_logvar=obs,
                               reduction=reduction, backend="triton")
        assert len(launches) == want, launches
        del launches[:]
        g = torch.autograd.grad(v.sum(), [recon, mu, lv, z, obs])
        # backward: the saved gradients, scaled in one launch for a scalar grad_output
        assert launches == ([] if reduction == "none" else ["scale_grads_kernel"]), launches
        outs.append([v, *g])
    for a, b in zip(outs[1], outs[2]):
        assert torch.equal(a, b)


def _iwae_inputs(k, b, d, l):
    x = torch.randn(b, d)
    mu, lv = torch.randn(b, l), torch.randn(b, l) * 0.5
    return x, torch.randn(k, b, d) * 2, mu, lv, mu + torch.exp(0.5 * lv) * torch.randn(k, b, l)


def test_reparameterize_launches(seed, launches):
    mu, lv = leaf(torch.randn(257, 33)), leaf(torch.randn(257, 33))
    z = fastvae.reparameterize(mu, lv, n_samples=3, backend="triton")
    assert launches == ["reparameterize_fwd_kernel"]
    torch.autograd.grad(z, [mu, lv], torch.randn_like(z))
    assert launches == ["reparameterize_fwd_kernel", "reparameterize_bwd_kernel"]


@pytest.mark.parametrize("prior", ["none", "full", "shared"])
def test_sample_with_kl_launches_once_each_way(seed, launches, prior):
    """One launch forward (z, the KL rows and the KL's gradients), one backward (eps
    regenerated): the per-group cost of a hierarchical VAE. A prior shared by every row
    adds torch's sum of its per-row gradient, nothing else."""
    shape = (6, 3, 5, 7)
    mu, lv = leaf(torch.randn(shape)), leaf(torch.randn(shape))
    pm = {"none": None, "full": leaf(torch.randn(shape)), "shared": leaf(torch.randn(3, 1, 1))}
    pm = pm[prior]
    plv = None if pm is None else leaf(torch.randn(shape))
    from torch.profiler import ProfilerActivity, profile
    fastvae.sample_with_kl(mu, lv, pm, plv, backend="triton")   # per-device buffers made once
    del launches[:]
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        z, kl = fastvae.sample_with_kl(mu, lv, pm, plv, backend="triton")
    assert launches == ["sample_with_kl_fwd_kernel"]
    fills = [e.name for e in prof.events() if e.name == "aten::zeros"]
    assert not fills, fills   # no zero row for a full prior: a fill launch per call
    del launches[:]
    ins = [t for t in (mu, lv, pm, plv) if t is not None]
    grads = torch.autograd.grad([z, kl], ins, [torch.randn_like(z), torch.randn_like(kl)])
    assert launches == ["sample_with_kl_bwd_kernel"]
    assert all(g.shape == t.shape and torch.isfinite(g).all() for g, t in zip(grads, ins))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("wanted", ["all", "prior"])
@pytest.mark.parametrize("routed", [False, True])
def test_sample_with_kl_backward_writes_over_the_saved_gradients(seed, monkeypatch, routed,
                                                                  wanted, dtype):
    """Where the graph is freed after it, backward writes dmu_q, dlogvar_q and dlogvar_p
    over the saved gradient each is made from and allocates only dmu_p; a retained graph keeps them (a second backward reads them again) and gets
    new buffers. The gradients are the same either way, and the same as the custom op's
    own backward, which never writes over its inputs; on a routed signature too."""
    from fastvae import gaussians
    from fastvae import validation as V
    from fastvae.backends.triton_backend import _launch
    monkeypatch.setattr(gaussians, "_ROUTES", V.Checked())
    made = []
    real = _launch.alloc
    monkeypatch.setattr(_launch, "alloc", lambda *a: made.append(a[0]) or real(*a))
    shape = (6, 3, 5, 7)
    leaves = [leaf(torch.randn(shape).to(dtype)) for _ in range(4)]
    if wanted == "prior":
        leaves[0].requires_grad_(False)
        leaves[1].requires_grad_(False)
    wrt = [t for t in leaves if t.requires_grad]
    cot = [torch.randn(shape).to(dtype), torch.randn(shape[0])]
    got_fn = []

    def grads(retain_graph, call=fastvae.sample_with_kl):
        torch.manual_seed(3)
        z, kl = call(*leaves, backend="triton")
        got_fn[:] = [kl.grad_fn]
        assert z.requires_grad == (wanted == "all")   # z does not depend on the prior
        outs, cots = zip(*[(o, c) for o, c in zip((z, kl), cot) if o.requires_grad])
        del made[:]
        got = torch.autograd.grad(outs, wrt, cots, retain_graph=retain_graph)
        allocated = len(made)
        if retain_graph:
            again = torch.autograd.grad(outs, wrt, cots)
            assert all(torch.equal(a, b) for a, b in zip(got, again))
        return got, allocated
    if routed:   # the signature seen twice: the calls below take its route
        for retain in (False, True):
            grads(retain)
    for retain in (False, True):
        got, allocated = grads(retain)
        assert type(got_fn[0]).__name__.endswith("_routeBackward") == routed
        assert allocated == ((4 if retain else 1) if wanted == "all" else (2 if retain else 1))
        want, _ = grads(True, lambda *a, **k: _op_value(*a))
        assert all(torch.equal(a, b) for a, b in zip(got, want))


def _op_value(mu, lv, pm, plv):
    """z and the KL through the custom op itself (its backward keeps the saved gradients:
    the op's outputs are the caller's)."""
    import importlib
    op = importlib.import_module("fastvae.ops.sample_with_kl")
    from fastvae import backends
    from fastvae.ops import _autograd as A
    noise = backends.get("triton").reparameterize_noise(mu.flatten(1), 0, None)
    ts = [t.flatten(1) for t in (mu, lv, pm, plv)]
    out = op._sample_with_kl.op(*ts, noise, A.needs(*ts), "triton")
    return out[0].reshape(mu.shape), out[1]


def test_samplers_save_no_noise(seed):
    check_no_noise_saved("triton")


def test_kl_normal_launches_once(seed, launches):
    mu, lv, pm, plv = (leaf(torch.randn(9, 13)) for _ in range(4))
    kl = fastvae.kl_normal(mu, lv, pm, plv, backend="triton")
    assert launches == ["elbo_rows_kernel"]
    kl.sum().backward()
    assert launches == ["elbo_rows_kernel"]  # backward weighs the saved gradients


def test_elbo_plans_key_on_the_prior(seed, launches):
    """The ELBO host's launch plans (built once per key) hold the prior's switches and
    strides: the same shapes with no prior, a shared (L,) row, a (B, L) prior, a
    mean-only prior and no prior again each get their own plan, and every call matches
    the float64 formula (a plan reused across priors would read the wrong rows or none)."""
    from fastvae.backends.triton_backend import elbo as host
    b, d, l = 6, 9, 4
    x, recon = torch.rand(b, d), leaf(torch.randn(b, d))
    mu, lv, z = leaf(torch.randn(b, l)), leaf(torch.randn(b, l) * 0.5), leaf(torch.randn(b, l))
    priors = [(None, None), (leaf(torch.randn(l)), leaf(torch.randn(l) * 0.5)),
              (leaf(torch.randn(b, l)), leaf(torch.randn(b, l) * 0.5)),
              (leaf(torch.randn(b, l)), None), (None, None)]
    host._PLANS.clear()
    for i, (pm, plv) in enumerate(priors):
        for kl in ("analytic", "mc"):
            ins = [recon, mu, lv] + ([z] if kl == "mc" else []) + [t for t in (pm, plv)
                                                                  if t is not None]
            got = fastvae.elbo(x, recon, mu, lv, kl=kl, z=z if kl == "mc" else None,
                               prior_mu=pm, prior_logvar=plv, reduction="sum",
                               backend="triton")
            o = [t.detach().double().requires_grad_() for t in ins]
            n = 4 if kl == "mc" else 3
            o_pm = o[n] if pm is not None else None
            o_plv = o[-1] if plv is not None else None
            want = F.elbo(x.double(), o[0], o[1], o[2], kl=kl, z=o[3] if kl == "mc" else None,
                          prior_mu=o_pm, prior_logvar=o_plv, reduction="sum")
            assert_close(f"prior {i}, {kl}: value", got, want, F32)
            for j, (g, w) in enumerate(zip(torch.autograd.grad(got, ins),
                                           torch.autograd.grad(want, o))):
                assert_close(f"prior {i}, {kl}: gradient {j}", g, w, F32)
    # no prior twice reuses its plans; each prior form added its own (analytic and mc)
    assert len(host._PLANS) == 2 * 4


def test_float64_and_empty_inputs_take_the_torch_path(launches):
    """float64 (gradcheck) and empty batches: the documented hand-over, same contract."""
    mu = leaf(torch.randn(4, 3, dtype=torch.float64))
    lv = leaf(torch.randn(4, 3, dtype=torch.float64))
    assert torch.autograd.gradcheck(
        lambda m, v: fastvae.kl_standard_normal(m, v, backend="triton"), (mu, lv))
    z = fastvae.reparameterize(mu, lv, n_samples=2, backend="triton")
    z.sum().backward()
    assert fastvae.last_backend() == "torch"   # what computed it, as the README says
    e = fastvae.elbo(torch.rand(0, 5), torch.randn(0, 5), torch.randn(0, 2), torch.randn(0, 2),
                     backend="triton")
    assert float(e) == 0.0 and fastvae.last_backend() == "torch"
    assert not launches
    # a call the kernels take says so again, and each handed-over op says "torch"
    fastvae.kl_standard_normal(mu.float(), lv.float(), backend="triton")
    assert fastvae.last_backend() == "triton"
    x64 = torch.rand(4, 5, dtype=torch.float64)
    r64 = torch.randn(4, 5, dtype=torch.float64)
    for call in (lambda: fastvae.elbo(x64, r64, mu, lv, backend="triton"),
                 lambda: fastvae.elbo(x64, r64, mu, lv, backend="triton"),   # its route
                 lambda: fastvae.iwae_bound(x64, r64[None], mu, lv, mu[None], backend="triton"),
                 lambda: fastvae.kl_normal(mu, lv, 0.0, 0.0, backend="triton"),
                 lambda: fastvae.gaussian_log_prob(x64, r64, 0.0, backend="triton"),
                 lambda: fastvae.sample_with_kl(mu, lv, backend="triton")):
        fastvae.kl_standard_normal(mu.float(), lv.float(), backend="triton")
        call()
        assert fastvae.last_backend() == "torch"


# -- backward: no host reads; saved tensors -------------------------------------------------------

@pytest.mark.parametrize("factor", [1.0, -2.5])
def test_backward_never_reads_grad_output_on_the_host(seed, monkeypatch, launches, factor):
    """Whether grad_output is 1 is decided in the kernel: a host read would be a GPU sync
    every step (and an error under CUDA-graph capture). Values as the reference's."""
    (x, recon, mu, lv, z, obs), opts = _elbo(b=33, d=70, l=5)
    ins = [recon, mu, lv, z, obs]
    got = fastvae.elbo(x, recon, mu, lv, z=z, obs_logvar=obs, backend="triton", **opts)
    o = oracle(x, recon, mu, lv, z, obs)
    want = F.elbo(o[0], o[1], o[2], o[3], z=o[4], obs_logvar=o[5], **opts)
    want_g = torch.autograd.grad(want * factor, o[1:])

    def host_read(*_):
        raise AssertionError("backward read a tensor's value on the host")
    for name in ("__bool__", "item", "tolist", "__float__"):
        monkeypatch.setattr(torch.Tensor, name, host_read)
    del launches[:]
    got_g = torch.autograd.grad(got * factor if factor != 1.0 else got, ins)
    monkeypatch.undo()
    assert launches == ["scale_grads_kernel"]
    for g, w, name in zip(got_g, want_g, ("recon", "mu", "logvar", "z", "obs_logvar")):
        assert_close(f"d/d{name} x {factor}", g, w, F32)


def test_elbo_saves_the_gradients_and_the_inputs(seed):
    """What autograd keeps for backward: the gradients (one per input) and the caller's
    inputs (no copy), nothing else."""
    (x, recon, mu, lv, _, _), _ = _elbo("bernoulli", "analytic", 8, 50, 4)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        fastvae.elbo(x, recon, mu, lv, backend="triton")
    inputs = {t.data_ptr() for t in (x, recon, mu, lv)}
    assert sorted(t.data_ptr() for t in saved if t.data_ptr() in inputs) == sorted(inputs)
    made = [t for t in saved if t.data_ptr() not in inputs]
    assert sum(t.numel() for t in made) <= 2 * 8 * 50 + 2 * 8 * 4 + 8, [t.shape for t in made]


# -- CUDA only -----------------------------------------------------------------------------------

@pytest.mark.gpu
def test_auto_picks_triton_for_cuda_tensors(seed):
    assert fastvae.select_backend("auto", torch.device("cuda")) == "triton"
    assert fastvae.select_backend("auto", torch.device("cpu")) == "torch"
    (x, recon, mu, lv, _, _), _ = _elbo("bernoulli", "analytic", 4, 9, 2)
    fastvae.elbo(x.cuda(), recon.cuda(), mu.cuda(), lv.cuda())
    assert fastvae.last_backend() == "triton"


@pytest.mark.gpu
def test_train_step_never_syncs_the_gpu(seed):
    """Sampler, loss and backward: no device-to-host copy (CUDA's sync debug mode raises)."""
    b, d, l = 64, 784, 16
    x = torch.rand(b, d, device="cuda")
    w = leaf(torch.randn(l, d, device="cuda") * 0.1)
    mu, lv = leaf(torch.randn(b, l, device="cuda")), leaf(torch.randn(b, l, device="cuda"))
    train_step(x, w, mu, lv).backward()  # compile and warm up first
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        loss = train_step(x, w, mu, lv)
        loss.backward()
        (2 * fastvae.elbo(x, (mu @ w), mu, lv, reduction="sum")).backward()
    finally:
        torch.cuda.set_sync_debug_mode("default")


@pytest.mark.gpu
def test_cuda_generator_drives_the_sampler():
    mu, lv = torch.randn(5, 7, device="cuda"), torch.randn(5, 7, device="cuda")
    g1 = torch.Generator(device="cuda").manual_seed(3)
    g2 = torch.Generator(device="cuda").manual_seed(3)
    a = fastvae.reparameterize(mu, lv, n_samples=2, generator=g1)
    assert fastvae.last_backend() == "triton"
    assert torch.equal(a, fastvae.reparameterize(mu, lv, n_samples=2, generator=g2))
    assert not torch.equal(a, fastvae.reparameterize(mu, lv, n_samples=2, generator=g1))
