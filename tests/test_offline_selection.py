"""fastvae.bench.offline.selection: which captured specializations the CI compiles.
Every benchmark-shape one; of the rest, enough that each code shape, each code shape's
alignment class and each kernel's pointer types are compiled at least once."""
from __future__ import annotations

import json

from fastvae.bench.offline import selection
from fastvae.bench.offline.capture import Launch


def _launch(call, pointers=("*fp32", "*fp32"), tile=64, aligned=True, warps=4, maxnreg=None):
    names = [f"P{i}" for i in range(len(pointers))] + ["N", "BLOCK"]
    spec = dict(signature=dict(zip(names, [*pointers, "i32", "constexpr"])),
                constant_keys=[[len(names) - 1]], constant_vals=[tile],
                attrs_keys=[[i] for i in range(len(pointers) + 1)],
                attrs_vals=[[["tt.divisibility", 16]] if aligned else []
                            for _ in range(len(pointers) + 1)],
                options=dict(num_warps=warps, maxnreg=maxnreg))
    text = json.dumps(spec)
    return Launch(kernel="k.kernel", cc=90, key=text, spec=text, grid=(1,), args={}, call=call)


def _chosen(launches, bench=()):
    picked = selection.ci_selection(launches, set(bench).__contains__)
    return [la.call for la in launches if (la.kernel, la.key) in picked]


def test_a_launch_whose_every_feature_is_compiled_elsewhere_is_left_out():
    a = _launch("a fp32")
    b = _launch("b bf16 tile 128", ("*bf16", "*bf16"), tile=128)
    c = _launch("c bf16 tile 64", ("*bf16", "*bf16"))  # a's code, b's pointer types
    assert _chosen([a, b, c]) == ["a fp32", "b bf16 tile 128"]


def test_a_new_code_shape_alignment_or_pointer_type_is_compiled():
    a = _launch("a")
    others = [_launch("tile", tile=128), _launch("warps", warps=8),
              _launch("masked", aligned=False), _launch("pointers", ("*fp32", "*bf16")),
              _launch("register cap", maxnreg=64)]
    assert _chosen([a, *others]) == ["a", "tile", "warps", "masked", "pointers", "register cap"]


def test_each_set_of_divisible_arguments_is_its_own_class():
    a = _launch("a")
    half = _launch("only the pointers divisible")
    spec = json.loads(half.spec)
    spec["attrs_vals"][-1] = []   # N not divisible by 16
    half.spec = half.key = json.dumps(spec)
    none = _launch("none divisible", aligned=False)
    assert _chosen([a, half, none]) == ["a", "only the pointers divisible", "none divisible"]


def test_benchmark_shape_launches_are_all_compiled():
    a = _launch("a fp32")
    b = _launch("b bf16 tile 128", ("*bf16", "*bf16"), tile=128)
    c = _launch("bench bf16 tile 64", ("*bf16", "*bf16"))
    assert _chosen([a, b, c], bench=["bench bf16 tile 64"]) == [
        "a fp32", "b bf16 tile 128", "bench bf16 tile 64"]
    # also where a benchmark call launches it after another call did first
    c_first = _launch("odd bf16 tile 64", ("*bf16", "*bf16"))
    picked = selection.ci_selection([a, b, c_first, c], {"bench bf16 tile 64"}.__contains__)
    assert (c.kernel, c.key) in picked
    # and a repeat of a specialization (another target, another call) is one choice
    again = _launch("a again")
    again.key = a.key
    assert selection.ci_selection([a, again], lambda call: False) == {(a.kernel, a.key)}
