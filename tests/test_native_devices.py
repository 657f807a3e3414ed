"""The "torch" backend's C kernels write through raw pointers, so every buffer they touch
must be a CPU tensor: a temporary allocated without ``device=`` follows
``torch.set_default_device`` (a user's "cuda" default), and a CUDA tensor handed to the
backend (the Triton backend delegates float64 and D = 0 calls to it) must take the aten
path. Either mistake is a segmentation fault on a GPU machine, so the checks run in a child
process; "meta" stands in for CUDA (its data pointer is 0: the same crash, on any machine).
"""
import subprocess
import sys
import textwrap

import pytest

from fastvae.backends.torch_backend import native

pytestmark = pytest.mark.skipif(native.load() is None, reason="C kernels unavailable")

CHILD = textwrap.dedent("""
    import torch
    import fastvae
    from fastvae.backends.torch_backend import gaussian_rows, rows

    def calls():
        g = torch.Generator().manual_seed(0)
        def r(*s, dt=torch.float32):
            return torch.randn(*s, generator=g, device="cpu").to(dt).requires_grad_()
        out = []
        x = (torch.rand(6, 20, generator=g, device="cpu") < 0.5).float()
        recon, mu, lv = r(6, 20), r(6, 5), r(6, 5)
        loss = fastvae.elbo(x, recon, mu, lv, backend="torch")
        out += [loss, *torch.autograd.grad(loss, [recon, mu, lv])]
        xd = torch.randint(0, 256, (2, 3, 4, 4), generator=g, device="cpu").float() / 127.5 - 1
        params = r(2, 30, 4, 4)
        v = fastvae.discretized_logistic_mixture_log_prob(xd, params, backend="torch").sum()
        out += [v, *torch.autograd.grad(v, [params])]
        for dt in (torch.float32, torch.bfloat16):  # bfloat16: the chunked float32 temporaries
            m, l, pm, pl = r(4, 9, dt=dt), r(4, 9, dt=dt), r(4, 9, dt=dt), r(4, 9, dt=dt)
            torch.manual_seed(1)
            z, kl = fastvae.sample_with_kl(m, l, pm, pl, backend="torch")
            out += [z, kl, *torch.autograd.grad((z.float().sum() + kl.float().sum()),
                                                [m, l, pm, pl])]
        out += list(gaussian_rows.philox_eval(5, 0, 16))
        return [t.detach().float() for t in out]

    want = calls()
    torch.set_default_device("meta")   # temporaries without device= land here
    got = calls()
    assert all(t.device.type == "cpu" for t in got)
    assert all(torch.equal(a, b) for a, b in zip(want, got)), "results changed"

    # A non-CPU tensor handed to the backend takes the aten path, never the C kernel.
    torch.set_default_device("cpu")
    x, logits = torch.empty(4, 8, device="meta"), torch.empty(4, 8, device="meta")
    g_r = torch.empty(4, 8, device="meta")
    rows.log_px_rows(x, logits, "bernoulli", None, -1.0, torch.float32, None, g_r, None)
    rows.log_px_rows(x[:, :0], logits[:, :0], "bernoulli", None, -1.0, torch.float32, None,
                     g_r[:, :0], None)
    print("ok")
""")


def test_c_paths_under_another_default_device_and_with_non_cpu_tensors():
    proc = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), (
        f"exit {proc.returncode}\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
