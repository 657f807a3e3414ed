"""Every specialization the Triton JIT would build for fastvae's calls, compiled for real
GPUs (sm_80 and sm_90) with no GPU present, under Triton 3.6.0 (the GPU machines',
installed by ``./dev setup`` in ``.triton36``) and the latest (this environment's).

Nothing here lists configurations by hand: ``fastvae.bench.offline`` drives the public
functions over a catalog of representative calls (the "ci" tier of ``catalog.py``: every
op and likelihood, the KL modes, free bits, reductions, obs_logvar gradients, gradients
needed or not, fp32/bf16/fp16 and autocast's mix, benchmark and odd shapes, and every
tile the host picks over a sweep of sizes; ``--tier bench``/``full`` on the command
line compile every combination, hours), lets Triton's own binder
derive each launch's specialization (pointer dtypes, dummies included; integers equal
to 1 made constants; divisibility by 16; constexprs) and compiles each distinct one
(``compiler.py``): every one a benchmark-shape call or a bar case (``judge.BAR``, what a
GPU run times) launches, and of the rest (switches at odd shapes, in fp32 and bf16) enough
that each code shape, each code shape with each set of arguments divisible by 16, and each
kernel's pointer types are compiled (``selection.py``; 380 of the 408 captured); the bar
cases' for both targets under both Tritons, the others for sm_90 under Triton 3.6.0 and
for sm_80 under the latest (``report.COVER_TARGETS``: every one under both Tritons and for
both targets, at half the cost of all four pairs). The interpreter
accepts code the real compiler rejects, and no CPU test sees register spills or
unvectorized loads, so per Triton version and target this checks:
  * every specialization builds (PTX and cubin);
  * ptxas reports 0 bytes of spill stores and loads (its -v log, from the same compile);
  * where the JIT saw every pointer and size divisible by 16, the widest global load is
    as wide as the tiles allow each thread, up to 16 bytes (``ld.global.v4.b32``).
Both versions run side by side in child processes (the cores shared), started in the
background when collection ends so they overlap the rest of the suite
(tests/_background.py): about 790 compiles, 12-15 CPU minutes.
``python -m fastvae.bench.offline table --triton .triton36`` prints the registers, spills,
stack and loads of each one compiled (``--tier full``: of every specialization;
benchmarks/RESULTS.md).
"""
from __future__ import annotations

import os

import pytest

import _background

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
triton = pytest.importorskip("triton")
pytestmark = [
    pytest.mark.skipif(INTERPRET, reason="kernels are interpreted functions under "
                                         "TRITON_INTERPRET=1; nothing to compile"),
    # The capture and the compile speak newer Triton's API (knobs, the JIT's
    # jit_cache_hook and preload; 3.6 and 3.9 checked).
    pytest.mark.skipif(not hasattr(triton, "knobs"),
                       reason="the offline judge needs triton.knobs (Triton >= 3.4)"),
    pytest.mark.slow,  # minutes on two cores
]

VERSIONS = ("latest", "3.6.0")
TARGETS = (80, 90)


def _compile_both():
    """{"latest": run, "3.6.0": run (where installed)}: each the catalog captured and
    compiled under that Triton (``judge.compile_catalog``), in child processes."""
    from fastvae.bench.offline import report
    paths = {"latest": None}
    pinned = report.pinned_triton()
    if pinned:
        paths["3.6.0"] = pinned
    runs = report.compile_versions(list(paths.values()), workers=os.cpu_count() or 1,
                                   popen=_background.popen,
                                   cover_targets=[report.COVER_TARGETS[v] for v in paths])
    return dict(zip(paths, runs))


pytestmark.append(pytest.mark.background("kernels_compile", _compile_both))


@pytest.fixture(scope="module")
def judged():
    """The result of ``_compile_both``, started when collection ended (conftest.py)."""
    return _background.result("kernels_compile", _compile_both)


def _run(judged, version):
    if version not in judged:
        pytest.fail("Triton 3.6.0, the GPU machines' version, is not installed in .triton36: "
                    "run ./dev setup (it installs it with pip install --no-deps --target "
                    ".triton36 triton==3.6.0), or name another folder with FASTVAE_TRITON36",
                    pytrace=False)
    run = judged[version]
    if version != "latest":
        assert run["triton"]["version"] == version, run["triton"]
    return run


def test_specialization_count(judged, capsys):
    """The number of distinct specializations per target, per kernel (printed: each one
    is a compile a user's first call pays, and a share of this module's minutes)."""
    from fastvae.bench.offline import report
    with capsys.disabled():
        print()
        for v, run in judged.items():
            print(f"[kernels_compile] {v}: {report.compile_summary(run)}")
    for run in judged.values():
        assert run["specializations"] > 0
        everywhere = {r["key"] for r in run["results"] if r["every_target"]}
        assert everywhere and len(everywhere) < run["specializations"]
        for cc in TARGETS:   # the bar cases' on each target, the rest on its own
            compiled = [r["key"] for r in run["results"] if r["cc"] == cc]
            assert len(compiled) == len(set(compiled))
            want = run["specializations"] if cc == run["cover_target"] else len(everywhere)
            assert set(compiled) >= everywhere and len(compiled) == want


def test_each_specialization_compiles_under_both_tritons_and_for_both_targets(judged):
    """The cover compiles for one target under each Triton (``report.COVER_TARGETS``):
    together, every specialization either selects is compiled under each Triton, and for
    each target under one of them."""
    if len(judged) < 2:
        pytest.skip("needs Triton 3.6.0 in .triton36 as well (the spill tests say so)")
    shapes = {v: {r["shape"] for r in run["results"]} for v, run in judged.items()}
    assert shapes["latest"] == shapes["3.6.0"]   # one catalog, one selection
    for cc in TARGETS:
        on_cc = set().union(*({r["shape"] for r in run["results"] if r["cc"] == cc}
                              for run in judged.values()))
        missing = shapes["latest"] - on_cc
        assert not missing, f"sm_{cc} never compiles {len(missing)}"


@pytest.mark.parametrize("cc", TARGETS)
@pytest.mark.parametrize("version", VERSIONS)
def test_every_specialization_compiles_without_spills(judged, version, cc):
    run = _run(judged, version)
    results = [r for r in run["results"] if r["cc"] == cc]
    assert results
    errors = [f"{r['name']} (from: {r['call']}): {r['error']}" for r in results if "error" in r]
    assert not errors, "\n".join(errors)
    missing = [r["name"] for r in results if r["spill_stores"] is None]
    assert not missing, f"no ptxas -v log captured for {missing[:5]}"
    spills = [f"{r['name']}: {r['spill_stores']} B spill stores / {r['spill_loads']} B loads, "
              f"{r['regs']} registers (from: {r['call']})" for r in results
              if r["spill_stores"] or r["spill_loads"]]
    assert not spills, f"Triton {run['triton']['version']} sm_{cc}:\n" + "\n".join(spills)
    assert max(r["regs"] for r in results) <= 255


@pytest.mark.parametrize("cc", TARGETS)
@pytest.mark.parametrize("version", VERSIONS)
def test_aligned_loads_are_vectorized(judged, version, cc):
    run = _run(judged, version)
    aligned = [r for r in run["results"] if r["cc"] == cc and r["aligned"] and "error" not in r]
    assert aligned, "the catalog has no aligned launch (all sizes multiples of 16)"
    narrow = [f"{r['name']}: widest global load {r['ld_widest']} B per thread, the tiles allow "
              f"{r['ld_allowed']} B ({r['ld_v4']} v4 / {r['ld_v2']} v2 among {r['ld_all']} "
              f"loads; from: {r['call']})" for r in aligned if r["ld_widest"] < r["ld_allowed"]]
    assert not narrow, "\n".join(narrow)


def test_catalog_launches_every_kernel(judged):
    """Every ``@triton.jit`` kernel of fastvae.kernels (a jit function no other one
    calls) is launched by some catalog call: a kernel added without a catalog call would
    never be compiled here."""
    from fastvae.bench.offline import catalog
    launched = set(judged["latest"]["kernels_launched"])
    kernels = set(catalog.kernels())
    assert kernels, "no kernels found in fastvae.kernels"
    assert kernels <= launched, f"never launched by the catalog: {sorted(kernels - launched)}"


def test_catalog_covers_every_tile(judged):
    """Every layout (kernel, BLOCK_* tile, warps: ``catalog.layout_of``) the host picks
    over a sweep of sizes (D, L, K from 1 to 50,000, each likelihood; fp32 and bf16,
    training and evaluation) is among those compiled: the catalog reaches every tile the
    configs hold, whatever their tables become (the row-warp IWAE kernel's K and column
    layouts: each of both, in the cross ``catalog.row_warps_calls`` takes)."""
    from fastvae.bench.offline import capture, catalog
    have = {repr(tuple(_lists_to_tuples(t))) for t in judged["latest"]["layouts"]}
    with capture.capturing((90,)) as rec:
        catalog.record(rec, catalog.sweep_calls())
    missing = {}
    for la in rec.launches:
        t = repr(catalog.layout_of(la))
        if t not in have:
            missing.setdefault(t, la.call)
    assert not missing, "layouts the catalog never compiles:\n" + "\n".join(
        f"{t} (e.g. {call})" for t, call in missing.items())


def _lists_to_tuples(v):
    """JSON turned the layouts' tuples into lists."""
    return tuple(_lists_to_tuples(x) for x in v) if isinstance(v, list) else v

