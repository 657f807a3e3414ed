"""Packaging: version, fastvae.kernels importable, no top-level ``kernels`` installed by us,
the C kernel's source in the wheel and the sdist, setup.py's packages and package data."""
from __future__ import annotations

import ast
import importlib
import importlib.metadata as md
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import zipfile
from fnmatch import fnmatch
from pathlib import Path

import pytest

import fastvae

ROOT = Path(__file__).resolve().parents[1]


def test_version():
    assert isinstance(fastvae.__version__, str)
    assert re.fullmatch(r"\d+\.\d+\.\d+([.-]?(a|b|rc|dev|post)\d*)?(\+[\w.]+)?", fastvae.__version__)
    assert md.version("fastvae") == fastvae.__version__  # installed metadata agrees


def test_fastvae_kernels_importable():
    mod = importlib.import_module("fastvae.kernels")
    assert mod.__name__ == "fastvae.kernels"
    assert Path(mod.__file__).resolve().parent == (ROOT / "kernels").resolve()


_PROBE = """
import importlib.metadata as md, importlib.util, json
dist = md.distribution("fastvae")
spec = importlib.util.find_spec("kernels")
import fastvae.kernels
print(json.dumps({
    "top_level": (dist.read_text("top_level.txt") or "").split(),
    "first_parts": sorted({f.parts[0] for f in (dist.files or [])}),
    "kernels_dists": md.packages_distributions().get("kernels", []),
    "kernels_origin": None if spec is None else spec.origin,
    "fastvae_kernels": fastvae.kernels.__name__,
}))
"""


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """What the installed distribution provides, seen from a directory outside the checkout
    (run from the repo root, Python would find the source tree's kernels/ and egg-info)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run([sys.executable, "-c", _PROBE], cwd=tmp_path_factory.mktemp("elsewhere"),
                         env=env, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def test_no_top_level_kernels_from_this_distribution(installed):
    assert "kernels" not in installed["top_level"], installed
    assert "kernels" not in installed["first_parts"], installed  # no site-packages/kernels/...
    assert "fastvae" not in installed["kernels_dists"], installed


def test_find_spec_kernels_outside_the_checkout(installed):
    """``import kernels`` must not find ours (None, or someone else's package)."""
    origin = installed["kernels_origin"]
    assert origin is None or str(ROOT) not in origin, (
        f"top-level 'kernels' resolves into this project: {origin}")
    assert installed["fastvae_kernels"] == "fastvae.kernels"


def _source_copy(tmp_path) -> Path:
    """The files a build reads, copied (setuptools builds in-tree: build/, egg-info)."""
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "setup.py", "README.md", "LICENSE", "MANIFEST.in"):
        shutil.copy(ROOT / name, src / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(ROOT / "fastvae", src / "fastvae", ignore=ignore)
    shutil.copytree(ROOT / "kernels", src / "kernels", ignore=ignore)
    (src / "tests").mkdir()   # one test file, as setuptools would add by default
    (src / "tests" / "test_x.py").write_text("def test_x():\n    pass\n")
    return src


# The torch backend's C kernels are compiled from these files at first use: they must ship.
C_SOURCES = sorted(str(p.relative_to(ROOT)) for ext in ("*.c", "*.h")
                   for p in (ROOT / "fastvae/backends/torch_backend").glob(ext))


def test_built_wheel_has_only_the_fastvae_namespace(tmp_path):
    """Build the wheel (no network, no isolation) and list its top-level entries."""
    pytest.importorskip("setuptools")
    pytest.importorskip("wheel")
    src = _source_copy(tmp_path)
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
         "-q", "-w", str(tmp_path), str(src)],
        capture_output=True, text=True, timeout=120)
    if proc.returncode != 0:
        pytest.skip(f"wheel build unavailable here: {proc.stderr[-500:]}")
    (whl,) = tmp_path.glob("fastvae-*.whl")
    names = zipfile.ZipFile(whl).namelist()
    tops = {n.split("/")[0] for n in names}
    assert tops == {"fastvae", f"fastvae-{fastvae.__version__}.dist-info"}, tops
    assert "fastvae/kernels/__init__.py" in names
    assert not any(n.startswith("kernels/") for n in names)
    assert "fastvae/backends/torch_backend/native.py" in names
    assert "fastvae/backends/torch_backend/vecmath.h" in C_SOURCES
    for c_source in C_SOURCES:
        assert zipfile.ZipFile(whl).read(c_source) == (ROOT / c_source).read_bytes()


def test_sdist_ships_the_c_kernel_source(tmp_path):
    """The sdist (PEP 517 hook, no isolation) carries the C files, and a wheel built from
    that sdist does too."""
    pytest.importorskip("setuptools")
    src = _source_copy(tmp_path)
    out = tmp_path / "dist"
    proc = subprocess.run(
        [sys.executable, "-c", "import sys, setuptools.build_meta as b; "
         "print(b.build_sdist(sys.argv[1]))", str(out)],
        cwd=src, capture_output=True, text=True, timeout=120)
    if proc.returncode != 0:
        pytest.skip(f"sdist build unavailable here: {proc.stderr[-500:]}")
    (sdist,) = out.glob("fastvae-*.tar.gz")
    with tarfile.open(sdist) as tar:
        names = tar.getnames()
        top = names[0].split("/")[0]
        assert all(f"{top}/{c}" in names for c in C_SOURCES), names
        assert f"{top}/LICENSE" in names
        # the suite needs the repository (conftest, helpers, benchmarks/): none ships
        assert not [n for n in names if n.startswith(f"{top}/tests")], names
        safe = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
        tar.extractall(tmp_path / "unpacked", **safe)
    pytest.importorskip("wheel")
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
         "-q", "-w", str(tmp_path / "whl"), str(tmp_path / "unpacked" / top)],
        capture_output=True, text=True, timeout=120)
    if proc.returncode != 0:
        pytest.skip(f"wheel build unavailable here: {proc.stderr[-500:]}")
    (whl,) = (tmp_path / "whl").glob("fastvae-*.whl")
    names = zipfile.ZipFile(whl).namelist()
    assert set(C_SOURCES) <= set(names)
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names), names


def _setup_arguments() -> dict:
    """The literal keyword arguments of setup.py's ``setup(...)`` call, read without running it."""
    tree = ast.parse((ROOT / "setup.py").read_text())
    (call,) = [n for n in ast.walk(tree) if isinstance(n, ast.Call)
               and getattr(n.func, "id", None) == "setup"]
    return {k.arg: ast.literal_eval(k.value) for k in call.keywords}


def _package_folders() -> dict:
    """Installed package name -> source folder, for every folder of fastvae/ and kernels/
    that holds Python files (what the wheel must carry)."""
    out = {}
    for top, name in (("fastvae", "fastvae"), ("kernels", "fastvae.kernels")):
        for py in sorted((ROOT / top).rglob("*.py")):
            rel = py.parent.relative_to(ROOT / top)
            if "__pycache__" not in rel.parts:
                out[".".join((name, *rel.parts))] = py.parent
    return out


def test_setup_lists_every_package():
    """setup.py names its packages one by one, and an editable install (``./dev``) imports a
    subpackage it forgot from the source tree anyway: only the wheel would lack it."""
    folders, listed = _package_folders(), set(_setup_arguments()["packages"])
    assert listed == set(folders), (f"not in setup.py: {sorted(set(folders) - listed)}; "
                                    f"no such folder: {sorted(listed - set(folders))}")
    assert not [f for f in folders.values() if not (f / "__init__.py").is_file()]


def test_package_data_covers_every_file_the_code_loads():
    """Every file beside the Python modules (the C sources the torch backend compiles at run
    time, say) matches setup.py's package_data for its package, so it ships in the wheel."""
    data = _setup_arguments().get("package_data", {})
    missing = [str(path.relative_to(ROOT)) for name, folder in _package_folders().items()
               for path in sorted(folder.iterdir())
               if path.is_file() and path.suffix not in (".py", ".pyc")
               and not path.name.startswith(".")
               and not any(fnmatch(path.name, pat) for pat in data.get(name, ()))]
    assert not missing, f"files not in setup.py's package_data: {missing}"
    assert C_SOURCES and all(any(fnmatch(Path(c).name, p) for p in
                                 data["fastvae.backends.torch_backend"]) for c in C_SOURCES)
