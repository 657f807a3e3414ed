"""README's ```python blocks run as written, on the CPU in well under a second each, and do
what the text around them says (tests/test_readme_signatures.py holds the API table's
signatures; this holds the code a reader copies).

A block runs in a fresh namespace. One that uses the reader's own objects (a model, a batch)
is preceded by an HTML comment, invisible on the rendered page, naming the context that
supplies them at tiny sizes: ``<!-- readme-test: drop_in -->``. A block with no comment must
run alone, so a new block that leans on names it does not define fails here until it gets a
context. After the block, its context's check holds the text's claim about it.
"""
import os
import re

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import fastvae

README = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")
MARK = re.compile(r"<!--\s*readme-test:\s*([a-z_]+)\s*-->")


def _blocks():
    """(line of the opening fence, context name or None, source) of every ```python block."""
    with open(README, encoding="utf-8") as f:
        lines = f.read().splitlines()
    found, i = [], 0
    while i < len(lines):
        if lines[i].strip() == "```python":
            start, context = i + 1, None
            j = i - 1
            while j >= 0 and not lines[j].strip():
                j -= 1
            if j >= 0 and MARK.fullmatch(lines[j].strip()):
                context = MARK.fullmatch(lines[j].strip()).group(1)
            end = lines.index("```", i + 1)
            found.append((start, context, "\n".join(lines[i + 1:end]) + "\n"))
            i = end
        i += 1
    return found


# ---- contexts: the reader's objects, tiny, and the claim checked after the block ----

class _TinyVAE(nn.Module):
    """pytorch/examples' VAE interface (encode -> mu, logvar; decode -> logits), 784 -> 4."""

    def __init__(self, latent=4):
        super().__init__()
        self.latent = latent
        self.enc = nn.Linear(784, 2 * latent)
        self.dec = nn.Linear(latent, 784)

    def encode(self, x):
        h = self.enc(x)
        return h[:, :self.latent], h[:, self.latent:]

    def decode(self, z):
        return self.dec(z)


def _drop_in_setup():
    return {"torch": torch, "F": F, "model": _TinyVAE(), "x": torch.rand(3, 1, 28, 28)}


def _drop_in_check(ns):
    """"fastvae.elbo(..., reduction="sum") equals minus that loss, in value and gradients":
    the block's own loss and the gradients its backward left, against loss_function's at
    the block's own sample."""
    model, x, mu, logvar, z = ns["model"], ns["x"], ns["mu"], ns["logvar"], ns["z"]
    assert x.shape == (3, 784) and ns["loss"].ndim == 0 and torch.isfinite(ns["loss"])
    block_grads = [p.grad.clone() for p in model.parameters()]
    eps = ((z - mu) * torch.exp(-0.5 * logvar)).detach()
    model.zero_grad()
    mu, logvar = model.encode(x)
    theirs = ns["loss_function"](model.decode(mu + torch.exp(0.5 * logvar) * eps), x, mu, logvar)
    theirs.backward()
    torch.testing.assert_close(ns["loss"].detach(), theirs.detach(), rtol=1e-5, atol=1e-4)
    for p, g in zip(model.parameters(), block_grads):
        torch.testing.assert_close(g, p.grad, rtol=1e-4, atol=1e-5)
    with torch.no_grad():  # the comment's alternative: the loss module gives the same value
        torch.testing.assert_close(
            fastvae.ELBOLoss(reduction="sum")(x, ns["logits"], ns["mu"], ns["logvar"]),
            ns["loss"].detach())


def _estimators_setup():
    B, D, L = 4, 10, 3
    x = torch.rand(B, D).round()
    encoder = nn.Linear(D, 2 * L)
    h = encoder(x)
    return {"fastvae": fastvae, "x": x, "decoder": nn.Linear(L, D), "encoder": encoder,
            "mu": h[:, :L], "logvar": h[:, L:], "K": 5}


def _estimators_check(ns):
    """"The value they return does not change"; each gives the encoder a gradient."""
    x, decoder, mu, logvar = ns["x"], ns["decoder"], ns["mu"], ns["logvar"]
    z, z_k, loss, bound = ns["z"], ns["z_k"], ns["loss"], ns["bound"]
    assert z.shape == mu.shape and z_k.shape == (ns["K"],) + tuple(mu.shape)
    assert loss.ndim == 0 and bound.ndim == 0
    with torch.no_grad():
        torch.testing.assert_close(
            loss, -fastvae.elbo(x, decoder(z), mu, logvar, kl="mc", z=z))
        torch.testing.assert_close(
            bound, fastvae.iwae_bound(x, decoder(z_k), mu, logvar, z_k, reduction="mean"))
    # "Under both, the encoder's gradient arrives through z alone": each must give it one.
    params = list(ns["encoder"].parameters())
    for name, value in (("stl loss", loss), ("dreg bound", bound)):
        grads = torch.autograd.grad(value, params, retain_graph=True, allow_unused=True)
        assert all(g is not None and torch.isfinite(g).all() for g in grads), name
        assert sum(g.abs().sum() for g in grads) > 0, f"{name}: no encoder gradient"


CONTEXTS = {
    "drop_in": (_drop_in_setup, _drop_in_check),
    "estimators": (_estimators_setup, _estimators_check),
}

BLOCKS = _blocks()


def test_the_readme_has_python_blocks():
    assert BLOCKS, "README.md has no ```python block: the parser or the README changed"


@pytest.mark.parametrize("start,context,source", BLOCKS,
                         ids=[f"README.md:{s}-{c or 'alone'}" for s, c, _ in BLOCKS])
def test_readme_block_runs(start, context, source):
    assert context is None or context in CONTEXTS, (
        f"README.md:{start}: unknown readme-test context {context!r}; known: {sorted(CONTEXTS)}")
    setup, check = CONTEXTS[context] if context else (dict, None)
    torch.manual_seed(0)
    ns = setup()
    # Line numbers in a traceback are README's own.
    exec(compile("\n" * start + source, README, "exec"), ns)
    if check is not None:
        check(ns)
