"""What the Triton-only test modules share (tests/test_triton_custom_ops.py compiles this
step, tests/test_triton_backend.py checks it never syncs the GPU)."""
import fastvae


def train_step(x, w, mu, lv):
    z = fastvae.reparameterize(mu, lv, backend="triton")
    return -fastvae.elbo(x, z @ w, mu, lv, kl="mc", z=z, backend="triton")
