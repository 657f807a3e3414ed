"""pytest-benchmark suites: ``pytest benchmarks/`` (not part of the test command,
which only looks in ``tests/``); one suite: ``python benchmarks/bench_<op>.py`` with
pytest's flags.

Files here are named ``bench_<op>.py``, after the op's spec ``fastvae/bench/specs/<op>.py``
(inputs, variants, baselines, bytes moved, grids); this hook collects them. A suite
names its grid ``CASES`` (a list of ``fastvae.bench.Case``, usually
``fastvae.bench.suite_cases(op)``; optionally ``case_id(case)`` for the test ids) and
has one test taking ``benchmark, prepared, variant``: it runs once per case and variant
of the op (``fastvae.bench.OPS``), and every case is built, warmed up and checked
against eager once (``prepared``). On a GPU the rounds run with L2 warm (see
``fastvae.bench.run_benchmark``); ``fastvae bench`` flushes it.
Quick subset: ``pytest benchmarks/ -k "not 32768"``.
"""
import pytest

from fastvae import bench


def pytest_collect_file(file_path, parent):
    # A file named on the command line is collected by pytest itself already.
    if (file_path.suffix == ".py" and file_path.name.startswith("bench_")
            and not parent.session.isinitpath(file_path)):
        return pytest.Module.from_parent(parent, path=file_path)


def pytest_generate_tests(metafunc):
    cases = getattr(metafunc.module, "CASES", None)
    if cases is None or "prepared" not in metafunc.fixturenames:
        return
    metafunc.parametrize("case", cases, scope="module",
                         ids=getattr(metafunc.module, "case_id", lambda c: c.id))
    metafunc.parametrize("variant", [v for v in bench.VARIANT_ORDER
                                     if any(v in bench.OPS[c.op].variants for c in cases)])


@pytest.fixture(scope="module")
def prepared(case):
    """The case's variants, warmed up and checked (an AgreementError fails them all)."""
    yield bench.prepare(case)
