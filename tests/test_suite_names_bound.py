"""Every global name the functions of a test module (or of a tests/_*.py helper module) read
is bound in that module or a builtin. A test that runs only on a GPU (``gpu``) or under
TRITON_INTERPRET=1 is skipped in a plain CPU session, so a helper moved to another module
would leave it a NameError no CPU run reports."""
import builtins
import os
import symtable

HERE = os.path.dirname(os.path.abspath(__file__))
MODULE_NAMES = {"__file__", "__name__", "__doc__", "__spec__", "__loader__", "__package__",
                "__builtins__"}


def unbound_globals(source: str, filename: str) -> list:
    """(scope, name) for each global read in a function of ``source`` that neither the
    module binds (anywhere at top level, imports included) nor builtins provide."""
    top = symtable.symtable(source, filename, "exec")
    bound = {s.get_name() for s in top.get_symbols()
             if s.is_assigned() or s.is_imported() or s.is_namespace()} | MODULE_NAMES
    missing = []

    def visit(table):
        for s in table.get_symbols():
            name = s.get_name()
            if (s.is_global() and s.is_referenced() and name not in bound
                    and not hasattr(builtins, name)):
                missing.append((table.get_name(), name))
        for child in table.get_children():
            visit(child)
    for child in top.get_children():
        visit(child)
    return missing


def test_the_check_sees_a_name_bound_nowhere():
    src = ("import os\nLIMIT = 3\n\n\ndef helper():\n    return os.sep * LIMIT\n\n\n"
           "def test_gpu_only():\n    helper()\n    _moved_away(len(__file__))\n")
    assert unbound_globals(src, "x.py") == [("test_gpu_only", "_moved_away")]


def test_every_test_module_binds_the_names_its_functions_read():
    missing = {}
    for name in sorted(os.listdir(HERE)):
        if not name.endswith(".py"):
            continue
        with open(os.path.join(HERE, name)) as f:
            found = unbound_globals(f.read(), name)
        if found:
            missing[name] = found
    assert not missing, f"names read but bound nowhere in their module: {missing}"
