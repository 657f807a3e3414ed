"""pytest-benchmark suites: ``pytest benchmarks/`` (not part of the test command,
which only looks in ``tests/``).

Files here are named ``bench_<op>.py``; this hook collects them. The shared machinery
(variants, agreement checks, grids, bytes-moved model) lives in ``fastvae.bench``.
Quick subset: ``pytest benchmarks/ -k "not 32768"``.
"""
import pytest


def pytest_collect_file(file_path, parent):
    # A file named on the command line is collected by pytest itself already.
    if (file_path.suffix == ".py" and file_path.name.startswith("bench_")
            and not parent.session.isinitpath(file_path)):
        return pytest.Module.from_parent(parent, path=file_path)
