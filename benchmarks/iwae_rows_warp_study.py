"""Design study: the one-warp-per-row IWAE kernel (``kernels/iwae_bound_rows_warp.py``)
against the pair kernel, without a GPU.

    # correctness under the interpreter (small shapes, fp32/bf16, against the reference)
    TRITON_INTERPRET=1 TRITON_DEFAULT_FP_FUSION=1 PYTHONPATH=. python benchmarks/iwae_rows_warp_study.py check
    # registers, spills and the speed proxy (sm_90 SASS) at B=4096 D=784 L=32
    PYTHONPATH=/work/main/.triton36:. python benchmarks/iwae_rows_warp_study.py proxy

The proxy's arithmetic is ``fastvae.bench.offline``'s (one warp-instruction per scheduler
per cycle against the iwae case's memory floor); the launch is recorded and compiled as
the JIT would build it, through ``capture`` and ``compiler``.
"""
from __future__ import annotations

import argparse
import math
import sys

import torch

ROWS_A_PROGRAM = 4   # = num_warps: one row a warp
MUL16 = 0            # the kernel's MUL16 for ``proxy`` (--mul16)


def plan(k: int, d: int, l: int, element_size: int):
    """The kernel's constexprs for (K, D, L): whole chunks of 32 lanes x 16 bytes, and
    the tail's K samples in one tile."""
    v = 16 // element_size
    w = 32 * v
    nc, tail = divmod(d, w)
    tail_p = 1 << max(0, (tail - 1).bit_length()) if tail else 0
    tv = max(1, 1 << max(0, (-(-k * tail_p // 32) - 1).bit_length())) if tail else 1
    return dict(K=k, NC=nc, V=v, TAIL=tail, TAIL_P=max(tail_p, 1), TV=tv,
                BLOCK_L=max(32, 1 << (l - 1).bit_length()), RW=ROWS_A_PROGRAM)


def launch(x, recon_k, mu, logvar, z_k, c=1.0, launcher=None, mul16=0):
    """(row values, d/drecon_k, d/dmu, d/dlogvar, d/dz_k) of the bound per row, the
    gradients of ``c *`` each row's bound (reduction "none" at scale c)."""
    from fastvae.kernels import iwae_bound_rows_warp as kw
    k, b, d = recon_k.shape
    l = mu.shape[1]
    dev = x.device
    rv = torch.empty(b, dtype=torch.float32, device=dev)
    gr = torch.empty_like(recon_k)
    gmu, glv = torch.empty_like(mu), torch.empty_like(logvar)
    gz = torch.empty_like(z_k)
    cx = plan(k, d, l, recon_k.element_size())
    grid = (-(-b // cx["RW"]),)
    args = dict(X=x, R=recon_k, MU=mu, LV=logvar, Z=z_k, ROW_VALUES=rv, GR=gr, GMU=gmu,
                GLV=glv, GZ=gz, B=b, D=d, L=l, stride_x=x.stride(0),
                stride_rk=recon_k.stride(0), stride_rb=recon_k.stride(1),
                stride_mu=mu.stride(0), stride_lv=logvar.stride(0), stride_zk=z_k.stride(0),
                stride_zb=z_k.stride(1), c=float(c), row_scale=1.0, log_k=math.log(k),
                num_warps=cx["RW"], MUL16=mul16, **cx)
    if launcher is None:
        kw.iwae_rows_warp_kernel[grid](**args)
    else:
        launcher(kw.iwae_rows_warp_kernel, grid, **args)
    return rv, gr, gmu, glv, gz


def check(mul16: int = 0) -> int:
    """Values and gradients against the reference backend (float64 inside) on small
    shapes; the worst error of each output, relative to its largest magnitude."""
    import fastvae
    torch.manual_seed(0)
    worst = {}
    bad = 0
    for dtype in (torch.float32, torch.bfloat16):
        for b, d, k, l in ((3, 784, 5, 32), (5, 784, 2, 8), (9, 784, 8, 32), (4, 300, 3, 16),
                           (7, 64, 5, 20), (6, 520, 7, 32), (3, 256, 4, 32), (5, 40, 6, 5)):
            x = torch.rand(b, d).round().to(dtype)
            recon = (torch.randn(k, b, d) * 3).to(dtype)
            recon[0, 0, :7] = torch.tensor([60.0, -60.0, 0.0, 15, -15, 1e3, -1e3])
            mu = torch.randn(b, l).to(dtype)
            lv = (torch.randn(b, l) * 0.5).to(dtype)
            z = (mu.float() + torch.randn(k, b, l) * (0.5 * lv.float()).exp()).to(dtype)
            ins = [t.detach().clone().requires_grad_(True) for t in (recon, mu, lv, z)]
            ref = fastvae.iwae_bound(x, *ins[:3], ins[3], backend="reference")
            ref.sum().backward()
            # the shipped "triton" backend (the pair kernel where it applies): the baseline
            tri = [t.detach().clone().requires_grad_(True) for t in (recon, mu, lv, z)]
            base = fastvae.iwae_bound(x, *tri[:3], tri[3], backend="triton")
            base.sum().backward()
            rv, gr, gmu, glv, gz = launch(x, recon, mu, lv, z, mul16=mul16)
            for name, got, want, now in (
                    ("value", rv, ref.detach(), base.detach()),
                    ("d recon_k", gr, ins[0].grad, tri[0].grad),
                    ("d mu", gmu, ins[1].grad, tri[1].grad),
                    ("d logvar", glv, ins[2].grad, tri[2].grad),
                    ("d z_k", gz, ins[3].grad, tri[3].grad)):
                g64, w64 = got.double(), want.double()
                scale = w64.abs().max().clamp_min(1e-30)
                err = ((g64 - w64).abs().max() / scale).item()
                # the reference's gradients are rounded to the input dtype too: allow
                # two roundings of the output type (the held d/dl) plus fp32 noise
                tol = {torch.float32: 5e-5, torch.bfloat16: (4 if mul16 else 3) * 2.0 ** -8}[dtype]
                if name == "value":
                    tol = 1e-5
                elem = ((g64 - w64).abs() / w64.abs().clamp_min(1e-30))
                key = (str(dtype).split(".")[1], name)
                worst[key] = max(worst.get(key, 0.0), err)
                b64 = now.double()
                bkey = (key[0], name + " (triton backend)")
                worst[bkey] = max(worst.get(bkey, 0.0), ((b64 - w64).abs().max() / scale).item())
                if err > tol:
                    bad += 1
                    print(f"FAIL {dtype} B={b} D={d} K={k} L={l} {name}: {err:.3g} > {tol:.3g}")
                if name == "d recon_k" and dtype == torch.bfloat16:
                    big = w64.abs() > 1e-30
                    key = ("bf16", "d recon_k elementwise rel")
                    worst[key] = max(worst.get(key, 0.0), elem[big].max().item())
                    key = ("bf16", "d recon_k elementwise rel (triton backend)")
                    belem = (now.double() - w64).abs() / w64.abs().clamp_min(1e-30)
                    worst[key] = max(worst.get(key, 0.0), belem[big].max().item())
    for key, v in sorted(worst.items()):
        print(f"{key[0]:5s} {key[1]:28s} worst {v:.3g}")
    print("ok" if not bad else f"{bad} failures")
    return 1 if bad else 0


def proxy(shapes, dtypes) -> int:
    """Compile for sm_90 and sm_80 (registers, spills) and count the sm_90 SASS."""
    from fastvae.bench.core import DTYPES, Case, bytes_moved, get_op
    from fastvae.bench.offline import capture, compiler
    from fastvae.bench.offline import proxy as P
    from fastvae.backends.triton_backend import _launch
    import os
    import tempfile
    import triton
    os.environ.setdefault("TRITON_CACHE_DIR", tempfile.mkdtemp(prefix="rows-warp-"))
    print(f"Triton {triton.__version__}")
    for b, d, l, k in shapes:
        for dt in dtypes:
            dtype = DTYPES[dt]
            with capture.capturing((90, 80)) as rec:
                e = lambda *s: torch.empty(*s, dtype=dtype)  # noqa: E731
                launch(e(b, d), e(k, b, d), e(b, l), e(b, l), e(k, b, l),
                       launcher=_launch.launch, mul16=MUL16)
            case = Case("iwae", b, d, l, k, dtype, "cpu")
            for la in rec.distinct():
                comp = compiler.compile_one(la.spec, la.cc, sass=la.cc == 90)
                if "error" in comp:
                    print(comp["error"])
                    return 1
                line = (f"B={b} D={d} L={l} K={k} {dt} sm_{la.cc}: {comp['regs']} regs, "
                        f"spill {comp['spill_stores']}/{comp['spill_loads']} B, "
                        f"shared {comp['shared']}")
                if la.cc == 90 and os.environ.get("ROWS_WARP_SASS"):
                    with open(f"{os.environ['ROWS_WARP_SASS']}/k{k}_{dt}.sass", "w") as f:
                        f.write(comp["sass"])
                if la.cc == 90:
                    warps = la.options()["num_warps"]
                    args = {**la.args, **la.constexprs()}
                    lc = P.count_launch(P.jit_function(la.kernel), comp["sass"], args, la.grid,
                                        warps)
                    lo, hi = lc.warp_insns()
                    mlo, mhi = lc.mufu_warp_insns()
                    elements = get_op("iwae").largest(case)
                    per_thread = hi / (math.prod(la.grid) * warps)
                    mem = P.memory_seconds(bytes_moved(case)) * 1e6
                    issue = P.issue_seconds(hi) * 1e6
                    fit = P.programs_per_sm(comp["regs"], warps, comp["shared"])
                    bars = comp["sass"].count("BAR.SYNC")
                    sts = comp["sass"].count(" STS")
                    line += (f"; {per_thread:.0f} insns a thread, "
                             f"{hi * 32 / elements:.2f} a (k, d) element, issue {issue:.1f} us, "
                             f"MUFU {P.mufu_seconds(mhi) * 1e6:.1f} us, memory {mem:.1f} us, "
                             f"issue/memory {issue / mem:.0%}; {fit} programs "
                             f"({fit * warps} warps) an SM; BAR.SYNC {bars}, STS {sts}")
                    if lo != hi:
                        line += f" (cheapest path {lo * 32 / elements:.2f})"
                print(line, flush=True)
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("what", choices=("check", "proxy"))
    ap.add_argument("--shape", action="append", default=[],
                    help="B,D,L,K (default 4096,784,32,5 and 4096,784,32,8)")
    ap.add_argument("--dtype", default="bf16,fp32")
    ap.add_argument("--mul16", type=int, default=0, choices=(0, 1))
    a = ap.parse_args(argv)
    global MUL16
    MUL16 = a.mul16
    if a.what == "check":
        return check(a.mul16)
    shapes = [tuple(int(n) for n in s.split(",")) for s in a.shape] or [
        (4096, 784, 32, 5), (4096, 784, 32, 8)]
    return proxy(shapes, a.dtype.split(","))


if __name__ == "__main__":
    sys.exit(main())
