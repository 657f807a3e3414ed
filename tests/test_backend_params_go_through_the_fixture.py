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


def _direct_backend_params():
    bad = []
    for path in sorted(glob.glob(os.path.join(HERE, "test_*.py"))):
        tree = ast.parse(open(path).read(), path)
        for node in ast.walk(tree):
            if not (isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "parametrize"
                    and node.args and isinstance(node.args[0], ast.Constant)
                    and node.args[0].value == "backend" and len(node.args) > 1):
                continue
            # only lists built from BACKENDS can hold "triton" (literal lists name CPU ones)
            if "BACKENDS" not in ast.unparse(node.args[1]):
                continue
            indirect = next((k.value for k in node.keywords if k.arg == "indirect"), None)
            if not (isinstance(indirect, ast.Constant) and indirect.value is True):
                bad.append(f"{os.path.basename(path)}:{node.lineno}")
    return bad


def test_backend_parametrized_from_backends_goes_through_the_fixture():
    bad = _direct_backend_params()
    assert not bad, ("parametrize('backend', ...BACKENDS...) without indirect=True (the "
                     f"'triton' cases get CPU tensors on a GPU machine): {bad}")
