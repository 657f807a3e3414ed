"""Runs the op suites on the Triton backend under TRITON_INTERPRET=1, in a child pytest.

Every op suite takes the ``backend`` fixture; in the child it yields "triton" only (see
tests/_backends.py), so the same cases that run on "reference" and "torch" here run on
the kernels there: on float32 inputs, against the float64 oracles, sizes capped by
``_backends.bounded``. The Triton-only modules (launch counts, tiles) run there too.
TRITON_INTERPRET must be set before the kernels are first imported, and setting it here
would change what other suites see (backend="triton" accepting CPU tensors), hence the
child; it starts when collection ends and runs beside the rest of the session
(tests/_background.py). On a GPU machine the same suites also run in this session, compiled, on CUDA.
The children's conftest.py installs tests/_interpreter_patch.py (a launch patches
triton.language once, not again at every helper call).
"""
import ast
import functools
import os
import subprocess
import sys
import time

import pytest

import _background
from _backends import HAS_TRITON, INTERPRET

HERE = os.path.dirname(os.path.abspath(__file__))
MODULES = [
    # one suite per op
    "test_elbo.py", "test_elbo_numerics_cb_normaliser.py", "test_elbo_numerics_extremes.py",
    "test_elbo_numerics_many_rows.py", "test_elbo_numerics_dtypes.py", "test_elbo_autograd.py",
    "test_iwae_bound.py", "test_iwae_bound_numerics.py", "test_iwae_bound_past_float32.py",
    "test_iwae_obs_logvar_per_sample.py",
    "test_reparameterize.py", "test_kl_standard_normal.py", "test_gaussian_log_prob.py",
    "test_kl_normal.py", "test_sample_with_kl.py", "test_shared_inputs.py",
    "test_higher_order.py", "test_loss_module.py", "test_iwae_loss.py", "test_estimators.py",
    "test_discretized_logistic_mixture_log_prob.py", "test_dmol_log_prob_extremes.py",
    "test_dmol_log_prob_torch_backend.py", "test_dmol_objectives.py",
    "test_dmol_loss.py", "test_float16_saved_gradients.py", "test_prepared_calls.py", "test_vanishing_variance.py",
    "test_prepared_sampling.py", "test_saved_inputs.py", "test_dmol_iwae_16_bit_latents.py",
    "test_dmol_iwae_loss.py", "test_iwae_all_weights_zero_grads.py", "test_iwae_16_bit_latents.py",
    "test_dmol_edge_held_by_a_far_mean.py", "test_bernoulli_long_row_sum.py",
    "test_dreg_sample_of_log_weight_minus_inf.py", "test_free_bits_boundary.py",
    "test_kl_prior_variance_past_float32.py", "test_returned_gradients_carry_no_graph.py",
    "test_strided_x_columns.py", "test_validation.py", "test_validation_tensors.py",
    "test_validation_values.py", "test_validation_memo.py", "test_backend_selection.py",
    "test_zero_grad_out_row_with_overflowed_partial.py", "test_16_bit_gradients_weighed_once.py",
    "test_loss_module_settings.py", "test_prior_part_none_is_zero.py",
    "test_route_follows_requires_grad.py", "test_route_grad_mode.py",
    "test_dreg_16_bit_weight_rounded_once.py",
    # the Triton backend's own, and the torch backend's copy of its Philox stream
    "test_triton_backend.py", "test_triton_custom_ops.py", "test_triton_sampler_counters.py",
    "test_triton_fast_math.py", "test_triton_elbo_tiles.py", "test_triton_iwae_tiles.py",
    "test_triton_iwae_row_warps.py", "test_triton_iwae_sample_warps.py",
    "test_triton_own_elements.py",
    "test_triton_sample_with_kl_chunks.py",
    "test_philox.py",
    # the children's own speed-up of the interpreter (tests/_interpreter_patch.py)
    "test_interpreter_patch.py",
]


def _interpreter_child(modules):
    """(return code, output, seconds) of a child pytest over ``modules``."""
    env = dict(os.environ, TRITON_INTERPRET="1", TRITON_DEFAULT_FP_FUSION="1",
               PYTHONWARNINGS="ignore")
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--maxfail=20",
           "-o", "addopts=", "-rfEX", "--durations=5", *[os.path.join(HERE, m) for m in modules]]
    start = time.monotonic()
    proc = _background.popen(cmd, cwd=os.path.dirname(HERE), env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
    out, _ = proc.communicate()
    return proc.returncode, out, time.monotonic() - start


# Two children, every other module each: the last one to finish then shares the cores
# with the other instead of running alone at the end of the session.
HALVES = [MODULES[0::2], MODULES[1::2]]
JOBS = [(f"triton_interpreter_{i}", functools.partial(_interpreter_child, half))
        for i, half in enumerate(HALVES)]


@pytest.mark.slow
@pytest.mark.skipif(not HAS_TRITON, reason="needs the triton package")
@pytest.mark.skipif(INTERPRET, reason="already under TRITON_INTERPRET=1: the modules run directly")
@pytest.mark.parametrize("half", [pytest.param(i, marks=pytest.mark.background(*JOBS[i]))
                                  for i in range(len(JOBS))])
def test_op_suites_on_triton_under_interpreter(half):
    returncode, out, seconds = _background.result(*JOBS[half])
    tail = out[-6000:]
    print(f"child pytest under TRITON_INTERPRET=1 over {HALVES[half]}: {seconds:.0f} s\n{tail}")
    assert returncode == 0, f"the op suites under TRITON_INTERPRET=1 failed:\n{tail}"
    assert " passed" in out, tail


def _runs_over_backends(fn: ast.FunctionDef) -> bool:
    """A test taking ``backend`` as a fixture, or through its own parametrize over
    ``BACKENDS`` (under the interpreter: "triton"); not one naming its backends itself."""
    if "backend" not in [a.arg for a in fn.args.args]:
        return False
    own = [ast.unparse(d) for d in fn.decorator_list
           if "parametrize" in ast.unparse(d) and "backend" in ast.unparse(d)]
    return not own or any("BACKENDS" in d for d in own)


def test_every_suite_over_backends_runs_under_the_interpreter():
    """A new module whose tests run over the session's backends is listed above, else its
    cases would never run on the kernels."""
    missing = []
    for name in sorted(os.listdir(HERE)):
        if not (name.startswith("test_") and name.endswith(".py")) or name in MODULES:
            continue
        with open(os.path.join(HERE, name)) as f:
            tree = ast.parse(f.read())
        if any(isinstance(n, ast.FunctionDef) and n.name.startswith("test_")
               and _runs_over_backends(n) for n in ast.walk(tree)):
            missing.append(name)
    assert not missing, f"add to MODULES: {missing}"


# Run on a GPU as well (benchmarks/gpu_session.sh), where the fixtures below make CUDA the
# default device: a draw there with a CPU generator and no device= raises ("Expected a 'cuda'
# device type for generator"), and the CPU sessions never see it.
GPU_MODULES = sorted(set(MODULES) | {"test_amp.py", "test_cuda_graph.py"})
_DEFAULT_DEVICE_FIXTURES = {"backend", "kernels", "gpu_tiles"}


def _from_default_device_generator(fn: ast.FunctionDef) -> set:
    """Names ``fn`` binds to a generator on the default device or a named one
    (:func:`_is_generator_call`)."""
    names = set()
    for node in ast.walk(fn):
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            t, v = node.targets[0], node.value
            both = isinstance(t, ast.Tuple) and isinstance(v, ast.Tuple)
            names |= {a.id for a, b in (zip(t.elts, v.elts) if both else [(t, v)])
                      if isinstance(a, ast.Name) and _is_generator_call(b)}
    return names


def _is_generator_call(v) -> bool:
    """``generator(...)`` (tests/_backends.py), or a ``torch.Generator(device=...)``
    (seeded or not) on a device other than the CPU."""
    if isinstance(v, ast.Call) and isinstance(v.func, ast.Name) and v.func.id == "generator":
        return True
    return any(isinstance(c, ast.Call) and isinstance(c.func, (ast.Attribute, ast.Name))
               and getattr(c.func, "attr", getattr(c.func, "id", None)) == "Generator"
               and any(k.arg == "device" and not _names_cpu(k.value) for k in c.keywords)
               for c in ast.walk(v))


def _names_cpu(node) -> bool:
    """``"cpu"``, or ``torch.device("cpu")``."""
    if isinstance(node, ast.Call) and node.args:
        node = node.args[0]
    return isinstance(node, ast.Constant) and node.value == "cpu"


def _used_fixtures(node) -> set:
    """Fixture names in ``pytest.mark.usefixtures(...)`` calls under ``node`` (a module's
    ``pytestmark`` or a test's decorators)."""
    names = set()
    for call in ast.walk(node):
        if (isinstance(call, ast.Call) and isinstance(call.func, ast.Attribute)
                and call.func.attr == "usefixtures"):
            names |= {a.value for a in call.args if isinstance(a, ast.Constant)}
    return names


def _cpu_generator_draws(tree) -> list:
    """Calls given ``generator=`` that neither name ``device=`` nor take a generator from
    ``_backends.generator``, in tests taking a fixture that sets the default device and in
    the module's helpers (which such tests call). Not followed: a generator handed to a
    helper and used there with ``device=`` (the helper is checked on its own)."""
    found = []
    module_wide = set()
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "pytestmark"
                                                for t in node.targets):
            module_wide |= _used_fixtures(node.value)
    for fn in tree.body:
        if not isinstance(fn, ast.FunctionDef):
            continue
        args = {a.arg for a in fn.args.args} | module_wide
        for d in fn.decorator_list:
            args |= _used_fixtures(d)
        if fn.name.startswith("test_") and not args & _DEFAULT_DEVICE_FIXTURES:
            continue  # the default device stays the CPU there, on a GPU too
        ok = _from_default_device_generator(fn)
        for node in ast.walk(fn):
            if not isinstance(node, ast.Call):
                continue
            kw = {k.arg: k.value for k in node.keywords}
            g = kw.get("generator")
            if g is None or "device" in kw or isinstance(g, ast.Constant) or _is_generator_call(g):
                continue
            if isinstance(g, ast.Name) and g.id in ok:
                continue
            found.append(f"{fn.name}, line {node.lineno}: {ast.unparse(node)[:80]}")
    return found


def test_gpu_modules_draw_with_a_cpu_generator_only_on_the_cpu():
    """In the modules a GPU session runs, every call given a generator either says
    ``device=`` (draw on the CPU, then move: the same numbers on every backend) or takes
    ``_backends.generator(seed)`` (on the default device)."""
    bad = {}
    for name in GPU_MODULES:
        with open(os.path.join(HERE, name)) as f:
            found = _cpu_generator_draws(ast.parse(f.read()))
        if found:
            bad[name] = found
    assert not bad, f"draws that fail where CUDA is the default device: {bad}"


def test_the_generator_check_sees_fixtures_however_they_are_used():
    src = """
import pytest, torch
pytestmark = pytest.mark.usefixtures("kernels")
def test_module_wide():
    g = torch.Generator().manual_seed(0)
    torch.randn(3, generator=g)
def test_named_device():
    g = torch.Generator(device="cuda").manual_seed(0)
    torch.randn(3, generator=g)
def test_named_cpu():
    g = torch.Generator(device=torch.device("cpu"))
    torch.randn(3, generator=g)
"""
    assert _cpu_generator_draws(ast.parse(src)) == [
        "test_module_wide, line 6: torch.randn(3, generator=g)",
        "test_named_cpu, line 12: torch.randn(3, generator=g)"]
    assert _cpu_generator_draws(ast.parse(src.replace("pytestmark", "unused"))) == []
    decorated = src.replace("pytestmark = ", "").replace("def test_module_wide", (
        "@pytest.mark.usefixtures('backend')\ndef test_module_wide"))
    assert len(_cpu_generator_draws(ast.parse(decorated))) == 1
