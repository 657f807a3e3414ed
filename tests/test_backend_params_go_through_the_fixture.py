"""A test that parametrizes ``backend`` itself with the session's BACKENDS must pass
``indirect=True``: only the ``backend`` fixture (tests/conftest.py) makes CUDA the default
device for "triton". Parametrized directly, the fixture never runs, the case's tensors
stay on the CPU, and on a GPU machine (not interpreted) backend="triton" refuses them
("backend='triton' needs CUDA tensors"): every such case failed there, and only there
(under TRITON_INTERPRET=1 CPU tensors are what the kernels take)."""
import ast
import glob
import os

HERE = os.path.dirname(os.path.abspath(__file__))


def _argument(node, i, name):
    """The call's argument ``name``, given in place ``i`` or by keyword."""
    if len(node.args) > i:
        return node.args[i]
    return next((k.value for k in node.keywords if k.arg == name), None)


def _names(argnames):
    """parametrize's argnames: "a, b", ("a", "b") or ["a", "b"]."""
    try:
        value = ast.literal_eval(argnames)
    except ValueError:
        return []
    return [n.strip() for n in value.split(",")] if isinstance(value, str) else list(value)


def _literal(node) -> bool:
    try:
        ast.literal_eval(node)
        return True
    except ValueError:
        return False


def _through_the_fixture(indirect):
    if indirect is None:
        return False
    try:
        value = ast.literal_eval(indirect)
    except ValueError:
        return True   # computed: not this test's to judge
    return value is True or (isinstance(value, (list, tuple)) and "backend" in value)


def _direct_backend_params(paths=None):
    bad = []
    for path in paths or sorted(glob.glob(os.path.join(HERE, "**", "test_*.py"),
                                          recursive=True)):
        tree = ast.parse(open(path).read(), path)
        literal_names = {t.id for n in tree.body if isinstance(n, ast.Assign)
                         for t in n.targets if isinstance(t, ast.Name) and _literal(n.value)}
        for node in ast.walk(tree):
            if not (isinstance(node, ast.Call)
                    and getattr(node.func, "attr", "") == "parametrize"):
                continue
            argnames, argvalues = _argument(node, 0, "argnames"), _argument(node, 1, "argvalues")
            if argnames is None or argvalues is None or "backend" not in _names(argnames):
                continue
            # a literal list names CPU backends only; anything computed may hold "triton"
            if _literal(argvalues) or (isinstance(argvalues, ast.Name)
                                       and argvalues.id in literal_names):
                continue
            if not _through_the_fixture(_argument(node, 99, "indirect")):
                bad.append(f"{os.path.relpath(path, HERE)}:{node.lineno}")
    return bad


def test_backend_parametrized_from_backends_goes_through_the_fixture():
    bad = _direct_backend_params()
    assert not bad, ("parametrize('backend', ...BACKENDS...) without indirect=True (the "
                     f"'triton' cases get CPU tensors on a GPU machine): {bad}")


def test_the_scan_reads_every_spelling(tmp_path):
    f = tmp_path / "test_spellings.py"
    f.write_text("""import pytest
GPU = [b for b in BACKENDS if b != "reference"]
@pytest.mark.parametrize(argnames="backend", argvalues=BACKENDS)
def test_a(backend): pass
@pytest.mark.parametrize("kl, backend", [(k, b) for k in "ab" for b in BACKENDS])
def test_b(kl, backend): pass
@pytest.mark.parametrize(("backend",), GPU)
def test_c(backend): pass
@pytest.mark.parametrize("backend,kl", [(b, 1) for b in BACKENDS], indirect=["backend"])
def test_d(backend, kl): pass
@pytest.mark.parametrize("backend", BACKENDS, indirect=True)
def test_e(backend): pass
@pytest.mark.parametrize("backend", ["torch", "reference"])
def test_f(backend): pass
CPU = ("torch", "reference")
@pytest.mark.parametrize("backend", CPU)
def test_g(backend): pass
""")
    assert [b.split(":")[1] for b in _direct_backend_params([str(f)])] == ["3", "5", "7"]
