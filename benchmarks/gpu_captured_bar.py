"""``gpu_probe.py --captured-bar``: the bar's cases, each variant's fwd+bwd step
captured in a CUDA graph and replayed back-to-back."""
from __future__ import annotations

import time

import torch

from fastvae.bench.core import Case, bytes_moved

from gpu_report import T0, fmt, log
from gpu_steps import BAR, DTYPES, SMOKE
from gpu_timing import graph_ms


def captured_cases(shape, device, smoke):
    """(case, variants) of ``--captured-bar``: the issue's bar cases, ELBO fp32 and bf16
    against eager and compile, reparameterize K=1 and 16 fp32 against eager."""
    b, d, l = shape["batch"], shape["dim"], shape["latent"]
    fused = "fastvae-torch" if smoke else "fastvae-triton"
    out = [(Case("elbo", b, d, l, dtype=dtype, device=device.type),
            ("eager",) + (() if smoke else ("compile",)) + (fused,))
           for dtype in DTYPES.values()]
    out += [(Case("reparameterize", b, 0, l, k=k, device=device.type), ("eager", fused))
            for k in (1, 16)]
    return out


def captured_bar(device, bw, reps, budget_s, smoke, rows, saved=lambda: None):
    """Append the rows of ``--captured-bar`` to ``rows``: per case and variant, ms per
    graph replay (None off CUDA), % of the copy roofline and the ratios to eager's and
    compile's replays; ``saved()`` after each case (a killed stage keeps what it has)."""
    from fastvae import bench
    for case, variants in captured_cases(SMOKE if smoke else BAR, device, smoke):
        saved()  # the rows so far, a failed case's too
        label = f"{case.op} {case.shape} {case.dtype_name}"
        if time.monotonic() - T0 > budget_s:
            rows.append({"case": label, "error": "skipped: budget spent"})
            continue
        try:
            prepared = bench.prepare(case, list(variants))
        except Exception as e:  # a variant that disagrees or fails: reported, the rest run
            rows.append({"case": label, "error": f"{type(e).__name__}: {e}"[:300]})
            log(f"captured {label}: FAILED {rows[-1]['error']}")
            continue
        got = {}
        for v in variants:
            try:
                got[v] = graph_ms(prepared.steps[v], device, reps)
            except Exception as e:  # reported, the other variants still run
                rows.append({"case": label, "variant": v,
                             "error": f"{type(e).__name__}: {e}"[:300]})
                log(f"captured {label} {v}: FAILED {rows[-1]['error']}")
        nbytes = bytes_moved(case)
        for v, ms in got.items():
            def ratio(ref):
                return got[ref] / ms if ms and got.get(ref) else None
            rows.append({"case": label, "variant": v, "graph_ms": ms,
                         "pct_roof": 100 * nbytes / (ms / 1e3) / bw if ms and nbytes else None,
                         "x_eager": ratio("eager"), "x_compile": ratio("compile")})
            log(f"captured {label} {v}: " + (f"{ms:.3f} ms" if ms else
                                              "no CUDA graph off a GPU"))
        del prepared
        saved()
        if device.type == "cuda":
            torch.cuda.empty_cache()


def captured_markdown(res):
    lines = [f"# The bar cases, each variant's fwd+bwd captured in a CUDA graph: {res['device']}, "
             f"torch {res['torch']}, triton {res['triton']}",
             f"shape {res['shape']}; copy bandwidth {res['copy_gbps']:.0f} GB/s; ms per replay, "
             "back-to-back replays (L2 warm)", "",
             "| case | variant | graph ms | % roof | x eager | x compile |",
             "|---|---|---:|---:|---:|---:|"]
    for r in res["rows"]:
        if "error" in r:
            lines.append(f"| {r['case']} | {r.get('variant', '')} | FAILED: {r['error']} "
                         "| | | |")
            continue
        lines.append(f"| {r['case']} | {r['variant']} | {fmt(r['graph_ms'], '.3f')} | "
                     f"{fmt(r['pct_roof'], '.1f')} | {fmt(r['x_eager'], '.2f')} | "
                     f"{fmt(r['x_compile'], '.2f')} |")
    return "\n".join(lines)
