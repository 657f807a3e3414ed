"""README's API table writes each call's full signature: it is the one Python sees, so the
table cannot drift from the code (a parameter added, renamed or given another default). The
loss modules' rows also write the call of the module, ``loss(...)``: its forward's signature."""
import inspect
import os
import re

import pytest

import fastvae

README = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")
CALLS = ("elbo", "ELBOLoss", "IWAELoss", "reparameterize", "kl_standard_normal",
         "gaussian_log_prob", "kl_normal", "sample_with_kl", "iwae_bound",
         "discretized_logistic_mixture_log_prob", "DiscretizedLogisticMixtureNLLLoss",
         "load_run", "models.HierarchicalVAE")


def _table_signature(name: str) -> str:
    with open(README, encoding="utf-8") as f:
        rows = [line for line in f if line.startswith(f"| `fastvae.{name}(")]
    assert len(rows) == 1, f"README's API table has {len(rows)} rows for fastvae.{name}"
    found = re.match(rf"\| `fastvae\.{re.escape(name)}(\(.*?\))`", rows[0])
    assert found, rows[0][:120]
    return found.group(1)


@pytest.mark.parametrize("name", CALLS)
def test_the_api_table_gives_the_signature(name):
    obj = fastvae
    for part in name.split("."):
        obj = getattr(obj, part)
    sig = inspect.signature(obj)
    public = [p for p in sig.parameters.values() if not p.name.startswith("_")]
    want = str(sig.replace(parameters=public, return_annotation=sig.empty)).replace("'", '"')
    assert _table_signature(name) == want


LOSSES = ("ELBOLoss", "IWAELoss", "DiscretizedLogisticMixtureNLLLoss")


@pytest.mark.parametrize("name", LOSSES)
def test_the_api_table_gives_the_loss_call(name):
    with open(README, encoding="utf-8") as f:
        rows = [line for line in f if line.startswith(f"| `fastvae.{name}(")]
    calls = re.findall(r"`loss(\(.*?\))`", rows[0])
    assert len(calls) == 1, f"README's row for fastvae.{name} writes {len(calls)} loss(...) calls"
    sig = inspect.signature(getattr(fastvae, name).forward)
    params = [p for p in sig.parameters.values() if p.name != "self" and not p.name.startswith("_")]
    want = str(sig.replace(parameters=params, return_annotation=sig.empty)).replace("'", '"')
    assert calls[0] == want


def test_the_development_layout_names_every_module_of_the_package():
    """README's "Development" layout names each file of ``fastvae/`` (beside the package's
    own __init__, __main__ and _version): a module added without a line there is one a
    reader cannot place."""
    with open(README, encoding="utf-8") as f:
        layout = f.read().split("## Development", 1)[1].split("```", 2)[1]
    package = os.path.join(os.path.dirname(README), "fastvae")
    files = {n for n in os.listdir(package) if n.endswith(".py")}
    files -= {"__init__.py", "__main__.py", "_version.py"}
    assert sorted(n for n in files if not re.search(rf"(?<![\w.]){re.escape(n)}", layout)) == []
