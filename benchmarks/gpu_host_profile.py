"""``gpu_probe.py --host-profile``: where the host time of small fused calls goes."""
from __future__ import annotations

import os

import torch

from fastvae.checkpoint import atomic_write

from gpu_report import log
from gpu_steps import elbo_step, reparam_step, swk_step
from gpu_timing import host_us

HOST_SHAPE = dict(batch=64, dim=784, latent=16)   # small: the GPU never holds the host up


def host_profile(device, backend, out_dir, calls=300):
    """Per fused call (fwd+bwd at small shapes): median host time, and a cProfile of
    ``calls`` calls (functions by own time and by cumulative time) -> host_profile.txt."""
    import cProfile
    import io
    import pstats
    steps = [("ELBOLoss fp32", elbo_step(HOST_SHAPE, torch.float32, device, backend)[0]),
             ("reparameterize K=1", reparam_step(HOST_SHAPE, 1, torch.float32, device,
                                                 backend)[0]),
             ("sample_with_kl (16,16,8,8)", swk_step(device, backend))]
    text = []
    for name, step in steps:
        for _ in range(5):
            step()
        us = host_us(step, device, 100)
        prof = cProfile.Profile()
        if device.type == "cuda":
            torch.cuda.synchronize()
        prof.enable()
        for _ in range(calls):
            step()
        prof.disable()
        if device.type == "cuda":
            torch.cuda.synchronize()
        buf = io.StringIO()
        st = pstats.Stats(prof, stream=buf)
        st.sort_stats("tottime").print_stats(25)
        st.sort_stats("cumulative").print_stats(30)
        text.append(f"## {name}: host {us:.0f} us per fwd+bwd (median of 100, synced between "
                    f"calls); cProfile of {calls} calls below\n{buf.getvalue()}")
        log(f"host {name}: {us:.0f} us")
        # after each step, whole (temp file and rename): a stage killed at its limit keeps
        # the steps it profiled, where open("w") would leave it truncated mid-write
        data = "\n".join(text).encode()
        atomic_write(os.path.join(out_dir, "host_profile.txt"), lambda f: f.write(data))
