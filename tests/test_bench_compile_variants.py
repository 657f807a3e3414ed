"""The bench's torch.compile baselines: ``compile-eager-rng`` (the samplers' ``compile``
with inductor drawing through aten's RNG) is built with that option and listed for the
sampler ops only; a compiled variant torch.compile cannot build is an error row, not the
end of the run, said once per variant at the end; ``x compile`` is taken against the faster compiled variant. No timed
assertions: the times are given."""
import pytest
import torch

from fastvae import bench
from fastvae.bench import core, harness, report
from fastvae.bench.specs import _common

SAMPLERS = {"sample_with_kl", "reparameterize"}


def _case(op):
    return bench.Case(op, 8, 16, 3, k=1)


def test_compile_eager_rng_is_eager_compiled_with_fallback_random_for_the_samplers_only(
        monkeypatch):
    have = {op for op, spec in core.OPS.items() if core.COMPILE_EAGER_RNG in spec.variants}
    assert have == SAMPLERS
    calls = []

    def fake_compile(fn, **kw):
        calls.append((fn.__name__, kw))
        return fn
    monkeypatch.setattr(torch, "compile", fake_compile)
    monkeypatch.setattr(_common, "_COMPILED", {})
    for op in sorted(SAMPLERS):
        case = _case(op)
        inputs = harness.make_inputs(core.OPS[op], case, 0)
        for name in core.COMPILED:
            core.OPS[op].variants[name].build(case, inputs)
    assert calls == [
        ("eager_reparameterize", dict(dynamic=False, options=None)),
        ("eager_reparameterize", dict(dynamic=False, options={"fallback_random": True})),
        ("eager_sample_with_kl", dict(dynamic=False, options=None)),
        ("eager_sample_with_kl", dict(dynamic=False, options={"fallback_random": True}))]
    assert core.VARIANT_ORDER.index(core.COMPILE_EAGER_RNG) == \
        core.VARIANT_ORDER.index(core.COMPILE) + 1


def test_an_inductor_option_torch_lacks_is_one_line_and_the_case_goes_on(monkeypatch):
    """An older torch without the option: the build fails before any call (torch's own
    error lists every option it has); the variant's reason is one line, the rest run."""
    monkeypatch.setattr(_common, "EAGER_RNG", {"no_such_option": True})
    monkeypatch.setattr(_common, "_COMPILED", {})
    case = _case("reparameterize")
    names = [core.COMPILE_EAGER_RNG, "fastvae-torch"]
    with pytest.raises(RuntimeError, match="inductor has no option no_such_option$"):
        bench.prepare(case, names, warmup=0)
    prepared = bench.prepare(case, names, warmup=0, drop_disagreeing=True)
    assert set(prepared.steps) == {"eager", "fastvae-torch"}
    assert prepared.unbuilt == {core.COMPILE_EAGER_RNG: (
        f"{core.COMPILE_EAGER_RNG}: torch.compile could not build it (RuntimeError: torch "
        f"{torch.__version__}'s inductor has no option no_such_option)")}


def test_x_compile_is_against_the_faster_compiled_variant(monkeypatch):
    case = _case("reparameterize")
    step = lambda: ()   # noqa: E731
    given = {"eager": [4.0, 4.0, 4.0], "compile": [8.0, 8.0, 8.0],
             "compile-eager-rng": [2.0, 2.0, 3.0], "fastvae-torch": [1.0, 1.0, 1.0]}
    monkeypatch.setattr(harness, "time_interleaved", lambda steps, *a: {n: given[n] for n in steps})
    prepared = harness.Prepared(case, {}, {n: step for n in given}, {n: 1.0 for n in given})
    rows = {r["variant"]: r for r in bench.measure(prepared, with_extras=False)}
    assert {n: (r["speedup_vs_compile"], r["compile_baseline"]) for n, r in rows.items()} == {
        "eager": (0.5, "compile-eager-rng"), "compile": (0.25, "compile-eager-rng"),
        "compile-eager-rng": (1.0, "compile-eager-rng"),
        "fastvae-torch": (2.0, "compile-eager-rng")}
    assert rows["fastvae-torch"]["paired_speedup_vs_compile"] == 2.0
    assert rows["fastvae-torch"]["speedup_vs_eager"] == 4.0
    assert "compile-eager-rng in 1 of 1 case(s)" in report.compile_note(list(rows.values()))

    del prepared.steps["compile-eager-rng"]   # compile alone: against compile, no note
    rows = bench.measure(prepared, with_extras=False)
    assert {r["compile_baseline"] for r in rows} == {"compile"}
    assert report.compile_note(rows) == ""


@pytest.mark.slow   # two inductor compiles, ~20 s on two cores
def test_compile_eager_rng_draws_eagers_noise_and_compile_its_own():
    """The option does what the variant says: under one seed, compile-eager-rng's z is
    eager's (aten's RNG); compile's, from inductor's own RNG, is not."""
    _common._COMPILED.clear()
    case = _case("reparameterize")
    inputs = harness.make_inputs(core.OPS[case.op], case, 0)
    z = {}
    for name in ("eager", *core.COMPILED):
        step = core.OPS[case.op].variants[name].build(case, inputs)
        torch.manual_seed(5)
        z[name] = step()[0]
    torch.testing.assert_close(z["compile-eager-rng"], z["eager"])
    assert not torch.allclose(z["compile"], z["eager"])


def test_both_compiled_variants_unbuilt_are_said_once_each(monkeypatch, capsys):
    """No C++ compiler fails compile and compile-eager-rng alike: the last line gives each
    one's reason and case count once, and names both for --variants to leave out."""
    from fastvae import cli

    def unbuildable(case, inputs):
        def step():
            raise RuntimeError("InvalidCxxCompiler: No working C++ compiler found")
        return step
    for name in core.COMPILED:
        monkeypatch.setitem(core.OPS["reparameterize"].variants, name,
                            core.Variant(name, unbuildable))
    code = cli.main(["bench", "--ops", "reparameterize", "--batch", "8,16", "--latent", "3",
                     "--k-reparam", "2", "--reps", "2", "--budget", "0.01", "--no-extras",
                     "--variants", "compile,compile-eager-rng,fastvae-torch"])
    err = capsys.readouterr().err.strip().splitlines()[-1]
    why = "torch.compile could not build it (RuntimeError: InvalidCxxCompiler: No working C++ " \
          "compiler found) on 2 case(s)"
    assert code == 1 and err == (
        f"fastvae bench: error: compile: {why}; compile-eager-rng: {why}; --variants without "
        "compile, compile-eager-rng times the others alone")
