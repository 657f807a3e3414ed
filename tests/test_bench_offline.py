"""The offline judge (`python -m fastvae.bench.offline`): its options refused before any
work, the proxy's shapes, and compile --kernel, without a GPU."""
import pytest


@pytest.mark.parametrize("argv,msg", [
    (["proxy", "--ops", "foo"], "--ops: unknown foo"),
    (["proxy", "--dtype", "fp8"], "--dtype: unknown fp8"),
    (["proxy", "--json", __file__ + "/x.json"], "--json: cannot write"),
    (["proxy", "--triton", "/nonexistent-dir"], "holds no triton package"),
    (["compile", "--workers", "0"], "--workers: must be a positive integer"),
    (["compile", "--workers", "2147483647"], "--workers: must be at most 64"),
    (["table", "--workers", "65"], "--workers: must be at most 64"),
    (["compile", "--kernel", "iwae_bound_onepass_kernel,foo"], "--kernel: unknown foo; have "),
    (["compile", "--cover-target", "75"], "--cover-target: must be 80 or 90"),
    (["compile", "--calls", " , "], "--calls: must name words of a call's label"),
    (["compile", "--tier", "full", "--cover-target", "80"], "--cover-target: the cover is the ci"),
    (["compile", "--maxnreg", "own,8"], "--maxnreg: a cap must be 16 to 255 registers, got 8"),
    (["compile", "--maxnreg", "96,many"], "--maxnreg: must be register counts, none or own"),
    (["compile", "--maxnreg", ","], "--maxnreg: must name register caps"),
    (["proxy", "--ops", "iwae", "--shape", "64,8"], "--shape: must be B,D,L or B,D,L,K"),
    (["proxy", "--ops", "iwae", "--shape", "64,0,8,5"], "--shape: must be a positive integer"),
    (["proxy", "--shape", "64,64,8,5"], "--shape: name the ops to run at it with --ops"),
    (["proxy", "--ops", "iwae,elbo", "--shape", "64,64,8,5"],
     "--shape: elbo takes no K, got 64,64,8,5")])
def test_the_offline_judge_refuses_bad_options_before_any_work(capsys, argv, msg):
    from fastvae.bench.offline.__main__ import main

    with pytest.raises(SystemExit) as e:
        main(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2 and msg in err and len(err.strip().splitlines()) == 1, err


def test_the_proxy_runs_each_op_at_each_shape_given():
    """--shape replaces the bar shapes: each op of --ops at each (B, D, L, K), K 1 for
    B,D,L; without it, the bar's shapes of those ops."""
    from fastvae.bench.offline import __main__ as offline, judge

    seen = []
    shapes = [offline._shape("65536,64,8,5"), offline._shape("16,256,16")]
    assert shapes == [(65536, 64, 8, 5), (16, 256, 16, 1)]
    cases = judge.bar_cases(("fp32", "bf16"), ["iwae", "reparameterize"], shapes)
    for c in cases:
        seen.append((c.op, c.batch, c.dim, c.latent, c.k, c.dtype_name))
    assert seen == [(op, *s, dt) for op in ("iwae", "reparameterize") for s in shapes
                    for dt in ("fp32", "bf16")]
    assert {(c.op, c.batch, c.dim, c.latent, c.k) for c in judge.bar_cases(("fp32",), ["iwae"])} \
        == {b for b in judge.BAR if b[0] == "iwae"}


def test_the_offline_judge_without_triton_says_so_in_one_line(capsys, monkeypatch):
    """Where the work would run under this interpreter and it has no Triton: exit 2 and
    one line, not an import traceback (proxy without --here runs under .triton36)."""
    import sys

    from fastvae.bench.offline.__main__ import main

    monkeypatch.setitem(sys.modules, "triton", None)   # import triton raises ImportError
    for argv in (["compile"], ["table"], ["proxy", "--here", "--ops", "iwae"],
                 ["compile", "--kernel", "elbo_rows_kernel"]):
        try:   # --kernel: refused while parsing unless this session imported Triton's jit
            code = main(argv)
        except SystemExit as e:
            code = e.code
        err = capsys.readouterr().err
        assert code == 2 and "error: " in err and "no Triton here" in err, (argv, err)
        assert len(err.strip().splitlines()) == 1, err


def test_compile_with_kernel_builds_only_that_kernels_specializations(monkeypatch):
    """--kernel keeps the named kernels' specializations of the tier's capture, and
    compiles nothing else (the capture still runs every call)."""
    pytest.importorskip("triton")
    import os

    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        pytest.skip("the capture needs Triton's JIT, not the interpreter")
    from fastvae.bench.offline import catalog, judge

    calls = [*catalog.iwae_calls(((7, 7, 3, 2), (3, 1025, 129, 9)), ("fp32",),
                                 (("mean", "train"),), likelihoods=catalog.LIKELIHOODS[:1]),
             *catalog.elbo_calls(((7, 7, 3),), ("fp32",), (catalog.TRAIN,),
                                 likelihoods=catalog.LIKELIHOODS[:1])]
    monkeypatch.setattr(catalog, "tier_calls", lambda tier: calls)
    jobs = []
    monkeypatch.setattr(judge.compiler, "compile_all", lambda j, workers: jobs.extend(j) or [
        {"name": "stub"} for _ in j])
    out = judge.compile_catalog(tier="full", kernels=["iwae_bound_onepass_kernel"])
    assert jobs and out["per_kernel"] == {"iwae_bound_onepass_kernel": len(jobs) // 2}
    # the other kernels' were captured, not left out by a selection: the summary says none
    assert out["captured"] == out["specializations"]
    assert {"iwae_bound_rows_kernel", "elbo_rows_kernel"} <= {
        k.rsplit(".", 1)[-1] for k in out["kernels_launched"]}


def _needs_the_jit():
    pytest.importorskip("triton")
    import os

    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        pytest.skip("the capture needs Triton's JIT, not the interpreter")


def test_compile_with_calls_keeps_the_calls_whose_label_has_every_word(monkeypatch, capsys):
    """--calls filters the tier's calls and the bar cases by whole words of their labels
    (``fp16`` is not ``amp-fp16``); a filter that keeps none is a one-line error."""
    _needs_the_jit()
    from fastvae.bench.offline import catalog, judge
    from fastvae.bench.offline.__main__ import main

    calls = [*catalog.elbo_calls(((64, 30, 3),), ("fp16", "amp-fp16", "fp32"),
                                 (catalog.TRAIN,), likelihoods=catalog.LIKELIHOODS[:1]),
             *catalog.elbo_calls(((64, 30, 3),), ("fp16",), (catalog.TRAIN,),
                                 likelihoods=catalog.LIKELIHOODS[:1], int64=(True,))]
    monkeypatch.setattr(catalog, "tier_calls", lambda tier: calls)
    monkeypatch.setattr(judge, "bar_calls", lambda: [])
    monkeypatch.setattr(judge.compiler, "compile_all", lambda jobs, workers: [
        {"cc": cc} for _, cc, _ in jobs])
    out = judge.compile_catalog(tier="full", calls_with=("fp16",))
    assert out["calls"] == 2 and {r["call"] for r in out["results"]} == {
        calls[0][0], calls[3][0]}
    out = judge.compile_catalog(tier="full", calls_with=("fp16", "INT64"))
    assert out["calls"] == 1 and {r["call"] for r in out["results"]} == {calls[3][0]}
    assert main(["compile", "--tier", "full", "--calls", "fp8"]) == 2
    err = capsys.readouterr().err
    assert "no call of the full tier (or bar case) has each of fp8" in err, err
    assert len(err.strip().splitlines()) == 1, err


def test_compile_with_maxnreg_compiles_each_specialization_under_each_cap(monkeypatch):
    """--maxnreg own,none,N: each specialization once a cap, its spec's cap replaced (own:
    left as its launch chose), each result naming the cap; a job repeated (a launch's own
    cap among those given) compiles once, since a second compile would come from the
    worker's cache without a ptxas report; the summary a line a cap."""
    import json

    _needs_the_jit()
    from fastvae.bench.offline import catalog, judge, report
    from fastvae.bench.offline.__main__ import _caps

    caps = _caps("own,none,96,none")
    assert caps == ["own", None, 96]
    calls = [*catalog.elbo_calls(((64, 30, 3),), ("fp32",), (catalog.TRAIN,),
                                 likelihoods=catalog.LIKELIHOODS[:1])]
    monkeypatch.setattr(catalog, "tier_calls", lambda tier: calls)
    monkeypatch.setattr(judge, "bar_calls", lambda: [])
    jobs = []

    def compile_all(j, workers):   # a stub: the registers a cap allows, 48 uncapped
        jobs.extend(j)
        caps = [json.loads(spec)["options"]["maxnreg"] for spec, _, _ in j]
        return [{"regs": cap or 48, "spill_stores": 0, "cap_compiled": cap} for cap in caps]
    monkeypatch.setattr(judge.compiler, "compile_all", compile_all)
    own = judge.compile_catalog(tier="full")
    owns = [r["cap_compiled"] for r in own["results"]]
    n = len(owns)
    assert n > 0 and None in owns   # the uncapped launches' own job is the "none" one
    del jobs[:]
    out = judge.compile_catalog(tier="full", caps=caps)
    assert len(out["results"]) == 3 * n
    assert len(jobs) == len(set(jobs)) == 2 * n + sum(o not in (None, 96) for o in owns)
    for cap, want in (("own", owns), (None, [None] * n), (96, [96] * n)):
        assert [r["cap_compiled"] for r in out["results"] if r["cap"] == cap] == want, cap
    out["seconds"] = dict(capture=0, compile=0, cpu=0)
    lines = report.compile_summary(out).splitlines()[1:]
    own_regs = sorted(o or 48 for o in owns)
    assert lines == [
        f"  maxnreg own: {n} compiles, 0 failing or spilling, {own_regs[0]}-{own_regs[-1]} "
        f"registers", f"  maxnreg none: {n} compiles, 0 failing or spilling, 48-48 registers",
        f"  maxnreg 96: {n} compiles, 0 failing or spilling, 96-96 registers"]
    with pytest.raises(ValueError, match="at least one register cap"):
        judge.compile_catalog(tier="full", caps=())


def test_a_register_cap_reaches_ptxas(monkeypatch, tmp_path):
    """The cap --maxnreg writes into a specialization is the one the compiler honours (a
    kernel compiled at 32 uses at most 32 registers a thread) and the result names it."""
    _needs_the_jit()
    from fastvae.bench.offline import capture, catalog, compiler

    calls = [*catalog.elbo_calls(((64, 30, 3),), ("fp32",), (catalog.TRAIN,),
                                 likelihoods=catalog.LIKELIHOODS[:1])]
    with capture.capturing((90,)) as rec:
        catalog.record(rec, calls)
    la = next(la for la in rec.distinct() if la.short == "elbo_rows_kernel")
    monkeypatch.setenv("TRITON_CACHE_DIR", str(tmp_path))
    free = compiler.compile_one(compiler.with_maxnreg(la.spec, None), 90)
    capped = compiler.compile_one(compiler.with_maxnreg(la.spec, 32), 90)
    assert free["maxnreg"] is None and capped["maxnreg"] == 32
    assert free["regs"] > 32 >= capped["regs"], (free["regs"], capped["regs"])


def test_the_classes_tier_labels_its_calls_once_and_takes_their_switches():
    """The "classes" tier (catalog_classes): one label a call, and a spread sample of its
    calls launches what its labels say: INT64 where the label ends with it, int32 offsets
    elsewhere."""
    _needs_the_jit()
    from fastvae.bench.offline import capture, catalog, catalog_classes

    calls = catalog_classes.tier_calls("classes")
    labels = [label for label, _ in calls]
    assert len(set(labels)) == len(labels), "two calls of the classes tier share a label"
    sample = calls[::151] + [c for c in calls if c[0].endswith("INT64")][::97]
    with capture.capturing() as rec:
        catalog.record(rec, sample)
    switched = [(la.call, la.constexprs()["INT64"]) for la in rec.launches
                if "INT64" in la.constexprs()]
    assert {wide for _, wide in switched} == {True, False}
    assert all(wide == call.endswith("INT64") for call, wide in switched), [
        s for s in switched if s[1] != s[0].endswith("INT64")]
    assert catalog_classes.TIERS == (*catalog.TIERS, "classes")


def test_a_cover_target_compiles_the_bar_cases_for_every_target_and_the_rest_for_it(
        monkeypatch):
    """``cover_target`` (CI: one per Triton, report.COVER_TARGETS): the bar cases'
    specializations compile for both targets, the others' (a benchmark call's too) for
    that target alone, and each result says which it is and names its specialization as
    every Triton does."""
    pytest.importorskip("triton")
    import os

    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        pytest.skip("the capture needs Triton's JIT, not the interpreter")
    from fastvae.bench.offline import catalog, judge

    calls = [*catalog.elbo_calls(((64, 64, 16),), ("fp32",), (catalog.TRAIN,),
                                 likelihoods=catalog.LIKELIHOODS[:1]),
             *catalog.elbo_calls(((7, 7, 3),), ("bf16",), (catalog.TRAIN,),
                                 likelihoods=catalog.LIKELIHOODS[:1])]
    monkeypatch.setattr(judge, "bar_calls", lambda: calls[:1])
    monkeypatch.setattr(catalog, "tier_calls", lambda tier: calls[1:])
    monkeypatch.setattr(catalog, "always_compiled_labels", lambda: {calls[1][0]})
    monkeypatch.setattr(judge.compiler, "compile_all", lambda jobs, workers: [
        {"cc": cc} for _, cc, _ in jobs])
    both = judge.compile_catalog(tier="ci")
    out = judge.compile_catalog(tier="ci", cover_target=90)
    assert out["specializations"] == both["specializations"] and out["cover_target"] == 90
    every = [r for r in out["results"] if r["every_target"]]
    cover = [r for r in out["results"] if not r["every_target"]]
    assert every and cover and {r["call"] for r in every} == {calls[0][0]}
    assert all({r["cc"] for r in every if r["key"] == k} == {80, 90} for k in
               {r["key"] for r in every})
    assert {r["cc"] for r in cover} == {90}
    assert {r["key"] for r in out["results"]} == {r["key"] for r in both["results"]}
    assert len({r["shape"] for r in out["results"]}) == out["specializations"]
    with pytest.raises(ValueError, match="needs the ci tier"):
        judge.compile_catalog(tier="full", cover_target=80)


def test_a_specialization_has_one_name_under_every_triton():
    """``selection.shape_id`` leaves out the options a Triton version adds to the JIT's
    key: the latest and 3.6.0 name the same launch alike (the compile test pairs them)."""
    import json

    from fastvae.bench.offline import selection
    from fastvae.bench.offline.capture import Launch

    spec = dict(name="m.k", signature={"P": "*fp32", "N": "i32"}, constant_keys=[],
                constant_vals=[], attrs_keys=[[0]], attrs_vals=[[["tt.divisibility", 16]]],
                options=dict(num_warps=4, maxnreg=None, arch="sm80"))
    newer = dict(spec, options=dict(spec["options"], fpsan_homomorphic_casts=False), target=[],
                 attrs_keys=[[0], [1]], attrs_vals=[[["tt.divisibility", 16]], []])
    a, b = (Launch(kernel="m.k", cc=80, key=json.dumps(s), spec=json.dumps(s), grid=(1,),
                   args={}) for s in (spec, newer))
    assert selection.shape_id(a) == selection.shape_id(b)
    capped = dict(spec, options=dict(spec["options"], maxnreg=64))
    c = Launch(kernel="m.k", cc=80, key="", spec=json.dumps(capped), grid=(1,), args={})
    assert selection.shape_id(c) != selection.shape_id(a)


def test_compile_versions_hands_each_triton_its_cover_target(monkeypatch):
    from fastvae.bench.offline import report

    calls = []
    monkeypatch.setattr(report.compiler, "run_version",
                        lambda path, args, popen: calls.append((path, args)) or {})
    report.compile_versions([None, "/t36"], workers=2, cover_targets=[80, 90])
    assert sorted(calls, key=lambda c: str(c[0])) == [
        ("/t36", ["compile", "--workers", "2", "--tier", "ci", "--cover-target", "90"]),
        (None, ["compile", "--workers", "2", "--tier", "ci", "--cover-target", "80"])]
    with pytest.raises(ValueError, match="2 Tritons but 1 cover targets"):
        report.compile_versions([None, "/t36"], workers=2, cover_targets=[80])


def test_the_proxy_hands_its_shapes_to_the_pinned_tritons_child(monkeypatch):
    from fastvae.bench.offline import report

    calls = []
    monkeypatch.setattr(report.compiler, "run_version", lambda path, args: calls.append(args))
    report.proxy_run("/t36", ["iwae"], ["bf16"], [(65536, 64, 8, 5), (16, 256, 16, 1)])
    assert calls == [["proxy", "--here", "--ops", "iwae", "--dtype", "bf16",
                      "--shape", "65536,64,8,5", "--shape", "16,256,16,1"]]


@pytest.mark.parametrize("argv", [["proxy", "--here", "--ops", "elbo", "--shape", "64,16,4"],
                                  ["compile", "--kernel", "elbo_rows_kernel", "--workers", "1"]])
def test_the_offline_judge_under_triton_interpret_says_so_in_one_line(argv):
    """TRITON_INTERPRET=1 (left set from a CPU test session) makes the kernels interpreted
    functions, nothing the GPU JIT compiles: one line naming it, not a traceback, and not
    "--kernel: unknown elbo_rows_kernel; have " with an empty list."""
    import os
    import pathlib
    import subprocess
    import sys

    pytest.importorskip("triton")
    root = pathlib.Path(__file__).resolve().parents[1]
    r = subprocess.run([sys.executable, "-m", "fastvae.bench.offline", *argv], cwd=root,
                       env=dict(os.environ, TRITON_INTERPRET="1"), capture_output=True,
                       text=True, timeout=300)
    err = r.stderr.strip()
    assert r.returncode == 2 and len(err.splitlines()) == 1, err
    assert "TRITON_INTERPRET=1" in err and "Traceback" not in err, err
