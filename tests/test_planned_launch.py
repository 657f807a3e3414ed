"""Planned launches (fastvae/backends/triton_backend/_planned.py), checked without a GPU:
a repeated launch skips Triton's binder and calls the compiled kernel Triton picked for
the same key, so it must pick the kernel, and pass the arguments, that
``kernel[grid](**args)`` would, every time; and a change of anything Triton specializes
on (shapes, strides, dtypes, alignment, device, knobs) must not reuse a stale kernel.

Inside ``jit_no_gpu`` Triton's real ``JITFunction.run`` binds CPU tensors for a stand-in
sm_90 device and records, per launch, (its cache key, grid, arguments): every planned
launch below is followed by ``kernel[grid](**args)`` on the same arguments, and both
records must be the same. Runs on the installed Triton and, in a child, on 3.6.0.
"""
import os
import subprocess
import sys

import pytest
import torch

pytest.importorskip("triton")
from triton.runtime.jit import JITFunction  # noqa: E402

import fastvae  # noqa: E402
from fastvae import _env  # noqa: E402
from fastvae.backends.triton_backend import _launch, _planned, configs  # noqa: E402
from fastvae.backends.triton_backend import elbo as elbo_host  # noqa: E402
from fastvae.backends.triton_backend import reparameterize as reparam_host  # noqa: E402
from fastvae.backends.triton_backend import sample_with_kl as swk_host  # noqa: E402
from fastvae.backends.triton_backend import scale as scale_host  # noqa: E402
from fastvae.bench.offline.jit_no_gpu import jit_no_gpu, set_device  # noqa: E402

if not isinstance(fastvae.kernels.elbo.elbo_rows_kernel, JITFunction):
    pytest.skip("the kernels are interpreted (TRITON_INTERPRET=1): nothing is compiled",
                allow_module_level=True)


def _same(a, b) -> bool:
    return len(a) == len(b) and all(x is y if isinstance(x, torch.Tensor) else
                                    (type(x) is type(y) and x == y) for x, y in zip(a, b))


class Checked:
    """Every planned launch, then Triton's own launch of the same arguments; counts how
    the planned one went (``direct``: the compiled kernel's launcher, ``triton``: through
    kernel[grid], ``cancelled``: the first launch of a specialization, not compiled)."""

    def __init__(self, runs):
        self.runs, self.counts, self.keys = runs, dict(direct=0, triton=0, cancelled=0), []

    def __call__(self, p, args, slow):
        slowed = []

        def counted(*a, **k):
            slowed.append(1)
            return slow(*a, **k)
        n = len(self.runs)
        _planned_launch(p, args, counted)
        planned = self.runs[n:]
        n = len(self.runs)
        # what Triton would do with these arguments and the options every launch passes
        p.kernel[p.grid](**p.arguments(args), **_launch.OPTIONS)
        triton = self.runs[n:]
        assert len(triton) == 1, "Triton's launch did not run a cached kernel"
        if not planned:
            assert slowed, "a planned launch ran nothing without asking Triton"
            self.counts["cancelled"] += 1
            return
        assert len(planned) == 1
        (key, grid, got, _), (want_key, want_grid, want, _) = planned[0], triton[0]
        assert key == want_key, f"{p}: a different specialization than Triton's"
        assert grid == want_grid and _same(got, want), f"{p}: other arguments than Triton's"
        self.counts["triton" if slowed else "direct"] += 1
        self.keys.append(key)


_planned_launch = _planned.launch


@pytest.fixture
def checked(monkeypatch):
    monkeypatch.setattr(_env, "interpreting", lambda: True)   # CPU tensors stand in for CUDA
    monkeypatch.setattr(configs, "CONFIG_MODE", "gpu")
    hosts = (elbo_host, scale_host, swk_host, reparam_host)
    for h in hosts:
        h._PLANS.clear()
    with jit_no_gpu(90) as runs:
        check = Checked(runs)
        monkeypatch.setattr(_planned, "launch", check)
        yield check
    for h in hosts:     # their caches hold the stand-in kernels
        h._PLANS.clear()


def _step(x, recon, mu, lv, **kw):
    loss = fastvae.elbo(x, recon, mu, lv, backend="triton", **kw)
    (loss if loss.dim() == 0 else loss.sum()).backward()


def _inputs(b, d, l, dtype=torch.float32, offset=0):
    """Leaves; ``offset`` elements into a larger buffer (offset 1: data_ptr % 16 != 0 in fp32)."""
    def leaf(n, m):
        buf = torch.randn(n * m + offset, dtype=dtype)
        return buf[offset:].view(n, m).requires_grad_()
    return torch.rand(b, d, dtype=dtype), leaf(b, d), leaf(b, l), leaf(b, l)


def test_planned_launches_pick_what_triton_picks(checked):
    """Repeated steps launch directly; floats changing between calls (beta) do not
    change the specialization; every change of what Triton specializes on does, and each
    planned launch passes the arguments in the binder's order (checked by ``checked``)."""
    x, recon, mu, lv = _inputs(6, 9, 4)
    for beta in (1.0, 0.5, 2.0, 0.25):
        _step(x, recon, mu, lv, beta=beta, reduction="sum")
    # first step: both launches' compiles "cancelled"; second: through Triton; then direct
    assert checked.counts == dict(cancelled=2, triton=2, direct=4)
    variants = [
        _inputs(6, 9, 4, offset=1),                 # same plan, unaligned pointers
        _inputs(7, 9, 4),                           # batch
        _inputs(6, 17, 4),                          # D
        _inputs(6, 9, 4, dtype=torch.bfloat16),     # dtype
        _inputs(16, 16, 16),                        # ints divisible by 16
    ]
    for ins in variants:
        before = dict(checked.counts)
        for _ in range(3):
            _step(*ins, reduction="sum")
        assert checked.counts["direct"] > before["direct"]
    # the reduction; strides: a row of a wider buffer
    wide = torch.randn(6, 20, requires_grad=True)
    for _ in range(3):
        _step(x, recon, mu, lv, reduction="mean")
        _step(x, wide[:, :9], mu, lv, reduction="none", free_bits=0.1)
        _step(x, recon, mu, lv, likelihood="gaussian", obs_logvar=torch.zeros(9,
              requires_grad=True), reduction="sum")
    assert len(set(checked.keys)) >= 10


def test_routed_steps_launch_what_triton_picks(checked, monkeypatch):
    """Validation off, a repeated signature takes its route (``fastvae.ops.Route``), whose
    prepared plans (``elbo_fwd.prepare``, ``scale_saved_.prepare``) launch directly: the
    kernel and the arguments Triton's own launch picks, on fresh values each step, and
    the route's plans follow a new alignment."""
    from fastvae import functional, validation
    monkeypatch.setattr(functional, "_ELBO_CHECKED", validation.Checked())  # no routes yet
    routed = []
    for offset in (0, 1, 0):
        for _ in range(4):
            x, recon, mu, lv = _inputs(6, 9, 4, offset=offset)
            before = checked.counts["direct"]
            loss = fastvae.elbo(x, recon, mu, lv, backend="triton", reduction="sum",
                                validate=False)
            took = type(loss.grad_fn).__name__.startswith("elbo_fwd_route")
            loss.backward()
            if took:
                routed.append(checked.counts["direct"] - before)
    # direct launches per routed step. Offset 0: a route from the third step. Offset 1
    # (the same signature) takes it at once; its row kernel's new alignment is a new key,
    # whose first launch the stand-in cancels and whose second goes through Triton
    assert routed == [2, 2] + [1, 1, 2, 2] + [2, 2, 2, 2], routed


def test_sampler_planned_launches_pick_what_triton_picks(checked):
    """sample_with_kl's and reparameterize's launches, planned per shape: with and without
    a prior, rows split into column chunks or not, bf16, K samples; each third step
    launches directly."""
    def leaf(*shape, dtype=torch.float32):
        return torch.randn(*shape, dtype=dtype).requires_grad_()
    cases = [((6, 9), None, torch.float32), ((3, 5000), "full", torch.float32),
             ((4, 2, 3, 3), "shared", torch.bfloat16)]
    for shape, prior, dtype in cases:
        mu, lv = leaf(*shape, dtype=dtype), leaf(*shape, dtype=dtype)
        pm = plv = None
        if prior == "full":
            pm, plv = leaf(*shape), leaf(*shape)
        elif prior == "shared":
            pm, plv = leaf(*shape[1:], dtype=dtype), leaf(*shape[1:], dtype=dtype)
        before = dict(checked.counts)
        for _ in range(3):
            z, kl = fastvae.sample_with_kl(mu, lv, pm, plv, backend="triton")
            torch.autograd.backward([z, kl], [torch.ones_like(z), torch.ones_like(kl)])
        got = {k: checked.counts[k] - before[k] for k in before}
        assert got == dict(cancelled=2, triton=2, direct=2), (shape, prior, got)
    for k in (None, 3):   # reparameterize's two
        mu, lv = leaf(5, 7), leaf(5, 7)
        before = dict(checked.counts)
        for _ in range(3):
            z = fastvae.reparameterize(mu, lv, n_samples=k, backend="triton")
            z.backward(torch.ones_like(z))
        got = {k: checked.counts[k] - before[k] for k in before}
        assert got == dict(cancelled=2, triton=2, direct=2), (k, got)


def test_device_and_knobs_key_the_cache(checked):
    """Another current device, or Triton's debug knob turned on, never reuses a kernel
    compiled for the old one: the launch goes through Triton first."""
    import triton
    x, recon, mu, lv = _inputs(5, 7, 3)
    for _ in range(3):
        _step(x, recon, mu, lv)
    direct = checked.counts["direct"]
    set_device(80)
    for _ in range(3):
        _step(x, recon, mu, lv)
    assert checked.counts["cancelled"] == 4 and checked.counts["direct"] == direct + 2
    saved = triton.knobs.runtime.debug
    triton.knobs.runtime.debug = True
    try:
        for _ in range(3):
            _step(x, recon, mu, lv)
    finally:
        triton.knobs.runtime.debug = saved
    assert checked.counts["cancelled"] == 6 and checked.counts["direct"] == direct + 4


def test_each_call_keys_on_its_tensors_and_ints(checked):
    """A plan reused with other tensor dtypes, pointer alignments or per-call ints (the
    host functions fix these per plan; the key does not rely on it)."""
    k = fastvae.kernels.scale.scale_grads_kernel
    p = _launch.Planned(k, (2,), torch.device("cpu"), dict(N1=0, N2=0, N3=0, N4=0, N5=0,
                                                           BLOCK=16, num_warps=1))
    calls = [(torch.float32, 0, 4), (torch.bfloat16, 0, 4), (torch.float32, 1, 4),
             (torch.float32, 0, 1), (torch.float32, 0, 16), (torch.float32, 0, True)]
    for dtype, offset, n0 in calls * 3:
        g = torch.zeros(20, dtype=dtype)[offset:]
        _launch.launch_planned(p, GO=torch.ones(()), N0=n0,
                               **{f"G{i}": g for i in range(configs.SCALE_SLOTS)})
    assert checked.counts == dict(cancelled=6, triton=6, direct=6)
    assert len(set(checked.keys)) == 6


def test_a_rebound_kernel_global_keys_on_its_value(checked):
    """A global the kernel read when compiled (Triton compares their values on every
    launch; a direct launch once, then checks each name still holds that object): rebound
    to an equal value, launches stay direct; to another value, or its value changed in
    place, the planned launch raises Triton's own error, as kernel[grid] does; bound back,
    direct again."""
    import triton.language as tl
    k = fastvae.kernels.elbo.elbo_rows_kernel
    x, recon, mu, lv = _inputs(5, 7, 3)
    for _ in range(3):
        _step(x, recon, mu, lv, reduction="sum")
    numeric = [(name, g) for (name, _), (val, g) in k.used_global_vals.items()
               if type(getattr(val, "value", None)) is int]
    assert numeric, "the stand-in compile records the globals the kernel reads"
    name, g = numeric[0]
    old = g[name]
    compared, inside = [], []
    ne, planned = type(old).__ne__, _planned_launch

    def counted_ne(a, b):
        compared.extend(inside)
        return ne(a, b)

    def flagged(p, args, slow):   # the planned launch only, not Triton's own after it
        inside.append(1)
        try:
            return planned(p, args, slow)
        finally:
            inside.pop()
    with pytest.MonkeyPatch.context() as m:   # values compared once, not every launch
        m.setattr(type(old), "__ne__", counted_ne)
        m.setattr(sys.modules[__name__], "_planned_launch", flagged)
        direct = checked.counts["direct"]
        _step(x, recon, mu, lv, reduction="sum")
    assert checked.counts["direct"] == direct + 2 and not compared, compared
    try:
        direct = checked.counts["direct"]
        g[name] = tl.constexpr(old.value)          # another object, the same value
        _step(x, recon, mu, lv, reduction="sum")
        assert checked.counts["direct"] == direct + 2
        g[name] = tl.constexpr(old.value + 100)
        with pytest.raises(RuntimeError, match=f"Global variable {name} has changed"):
            _step(x, recon, mu, lv, reduction="sum")
        g[name] = old
        _step(x, recon, mu, lv, reduction="sum")
        raised = []

        def planned_raises(p, args, slow):   # the planned launch itself, before Triton's
            try:
                return planned(p, args, slow)
            except RuntimeError as e:
                raised.append(str(e))
                raise
        value, old.value = old.value, old.value + 100   # changed in place, not rebound
        try:
            with pytest.MonkeyPatch.context() as m:
                m.setattr(sys.modules[__name__], "_planned_launch", planned_raises)
                with pytest.raises(RuntimeError, match=f"Global variable {name} has changed"):
                    _step(x, recon, mu, lv, reduction="sum")
        finally:
            old.value = value
        assert raised and f"Global variable {name} has changed" in raised[0]
    finally:
        g[name] = old
    direct = checked.counts["direct"]
    _step(x, recon, mu, lv, reduction="sum")
    assert checked.counts["direct"] == direct + 2


def test_launch_hooks_get_the_launch_metadata(checked):
    """With a launch hook registered (a profiler), a direct launch hands the launcher
    Triton's launch metadata; with none, it does not build it (nothing reads it)."""
    import triton
    hook = triton.knobs.runtime.launch_enter_hook
    x, recon, mu, lv = _inputs(5, 7, 3)
    for _ in range(3):
        _step(x, recon, mu, lv, reduction="sum")
    # each launch twice: planned (rows, then scale), then Triton's own
    assert checked.runs[-4][3] is None and checked.runs[-2][3] is None
    assert checked.counts["direct"] == 2

    def seen(meta):
        pass
    hook.add(seen)
    try:
        _step(x, recon, mu, lv, reduction="sum")
    finally:
        hook.remove(seen)
    assert checked.counts["direct"] == 4
    assert [run[3].get()["name"] for run in checked.runs[-4:]] == ["elbo_rows_kernel"] * 2 + [
        "scale_grads_kernel"] * 2


def test_a_replaced_launch_sees_every_planned_launch(checked, launches):
    """The ``launches`` fixture (and the compile test's capture) replace
    ``_launch.launch``: planned launches then all go through it, none directly."""
    x, recon, mu, lv = _inputs(5, 7, 3)
    for _ in range(3):
        _step(x, recon, mu, lv, reduction="sum")
    assert launches == ["elbo_rows_kernel", "scale_grads_kernel"] * 3
    assert checked.counts["direct"] == 0


def test_a_plan_made_under_the_stand_in_gpu_is_not_used_after_it(checked, monkeypatch):
    """jit_no_gpu's stand-in reports an H200's 132 SMs, and the scale and sampler grids are
    per SM: their plans key on the SM count, so a plan made inside is not used outside
    (it was: the scale kernel then ran 132 programs where the host plans 4)."""
    grids = []
    real = _launch.launch
    monkeypatch.setattr(_launch, "launch", lambda kernel, grid, **args: (
        grids.append(grid) if "scale" in str(kernel) else None, real(kernel, grid, **args))[1])
    x, recon, mu, lv = _inputs(80, 16384, 3)   # more scale blocks (8192 elements) than SMs
    _step(x, recon, mu, lv, reduction="sum")
    assert grids[-1] == (configs.SCALE_PROGRAMS_PER_SM * 132,)
    monkeypatch.setattr(_launch, "sm_count", lambda device: None)   # as outside the stand-in
    _step(x, recon, mu, lv, reduction="sum")
    assert grids[-1] == (4,)


def test_a_call_that_does_not_fit_the_plan_goes_to_triton():
    """An argument the plan does not expect, or one missing: Triton's own path, with
    its own error; a callable grid or an interpreted kernel: never direct."""
    k = fastvae.kernels.scale.scale_grads_kernel
    p = _launch.Planned(k, (1,), torch.device("cpu"), dict(
        N0=4, N1=0, N2=0, N3=0, N4=0, N5=0, BLOCK=4, num_warps=1))
    seen = []

    def slow(kernel, grid, **args):
        seen.append(sorted(args))
    g = torch.zeros(4)
    slots = {f"G{i}": g for i in range(configs.SCALE_SLOTS)}
    _planned_launch(p, dict(GO=torch.ones(()), **slots, extra=1.0), slow)
    del slots["G0"]
    _planned_launch(p, dict(GO=torch.ones(()), G7=g, **slots), slow)
    assert len(seen) == 2 and "extra" in seen[0] and "G7" in seen[1]
    assert not _launch.Planned(k, lambda meta: (1,), torch.device("cpu"), {}).direct
    assert not _launch.Planned(lambda: None, (1,), torch.device("cpu"), {}).direct


def test_direct_launch_can_be_switched_off(monkeypatch):
    """FASTVAE_DIRECT_LAUNCH=0 (read at import as ``_planned.ENABLED``): no plan is direct.
    How each value reads: tests/test_env_switches.py."""
    k = fastvae.kernels.scale.scale_grads_kernel
    assert _launch.Planned(k, (1,), torch.device("cpu"), {}).direct
    monkeypatch.setattr(_planned, "ENABLED", False)
    assert not _launch.Planned(k, (1,), torch.device("cpu"), {}).direct
    code = "from fastvae.backends.triton_backend import _planned; print(_planned.ENABLED)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, env=dict(os.environ, FASTVAE_DIRECT_LAUNCH="off")).stdout
    assert out.strip() == "False"


CHILD = os.environ.get("FASTVAE_PLANNED_CHILD") == "1"


@pytest.mark.skipif(not CHILD, reason="the Triton 3.6.0 child's own check")
def test_child_runs_triton_3_6():
    import triton
    assert triton.__version__ == "3.6.0"


def test_every_kernel_is_built_with_fma_fusion(monkeypatch):
    """Kernels are compiled with FMA fusion (``_launch.OPTIONS``), which their error
    bounds and the proxy's instruction counts assume, even where the environment turns
    Triton's default off (Triton 3.10's default). Records catalog calls until every
    kernel has been launched."""
    from fastvae.bench.offline import capture, catalog
    monkeypatch.setenv("TRITON_DEFAULT_FP_FUSION", "0")
    kernels, seen = set(catalog.kernels()), set()
    with capture.capturing((90,)) as rec:
        for entry in catalog.ci_calls():
            catalog.record(rec, [entry])
            seen.update(la.kernel for la in rec.launches)
            if kernels <= seen:
                break
    assert kernels <= seen, f"never launched: {sorted(kernels - seen)}"
    unfused = {la.short for la in rec.launches if not la.options()["enable_fp_fusion"]}
    assert not unfused, f"compiled without FMA fusion: {sorted(unfused)}"


@pytest.mark.skipif(CHILD, reason="the child itself")
def test_under_triton_3_6():
    """The same checks with Triton 3.6.0, the GPU machines' version (its JITFunction.run
    differs from the latest's)."""
    from fastvae.bench.offline.report import pinned_triton
    path = pinned_triton()
    if path is None:
        pytest.fail("Triton 3.6.0 is not installed in .triton36: run ./dev setup")
    env = dict(os.environ, FASTVAE_PLANNED_CHILD="1",
               PYTHONPATH=os.pathsep.join(filter(None, [path, os.environ.get("PYTHONPATH")])))
    env.pop("TRITON_INTERPRET", None)
    proc = subprocess.run([sys.executable, "-m", "pytest", __file__, "-q", "-x", "-p",
                           "no:cacheprovider", "-k", "pick or keys_on or child_runs"],
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0 and "6 passed" in proc.stdout, \
        proc.stdout[-3000:] + proc.stderr[-2000:]
