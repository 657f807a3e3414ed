"""What every GPU script under benchmarks/ reports the same way (gpu_probe.py,
gpu_tiles.py, gpu_hvae_loop.py): the log line, the table cell, the device to measure on,
the report's head and its files, whether a row failed."""
from __future__ import annotations

import os
import sys
import time

import torch

from fastvae import options as o
from fastvae.checkpoint import atomic_write, write_json


def log(msg):
    print(f"[{time.monotonic() - T0:6.1f}s] {msg}", flush=True)


T0 = time.monotonic()


def fmt(v, spec=""):
    """A table cell: ``v`` formatted, "-" for None."""
    return "-" if v is None else format(v, spec)


def device_for(script: str, smoke: bool):
    """The device a script measures on: CUDA, or the CPU under ``--smoke``; None (after a
    one-line reason) when neither."""
    if torch.cuda.is_available() and not smoke:
        return torch.device("cuda")
    if smoke:
        return torch.device("cpu")
    print(f"{script}: no CUDA device (torch.cuda.is_available() is False); --smoke exercises "
          "the code paths on CPU", file=sys.stderr)
    return None


def add_out(parser) -> None:
    """The scripts' --out: $OUT where set and not empty (gpu_session.sh sets it)."""
    parser.add_argument("--out", type=o.folder, default=os.environ.get("OUT") or "gpu_out",
                        help="folder for the report (default: $OUT where set and not empty, "
                             "else gpu_out)")


def make_out(parser, path: str) -> None:
    """The report's folder, made; a path that cannot be one (a file in the way, no
    permission) is a usage error naming --out, not an OSError traceback."""
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as e:
        parser.error(f"argument --out: cannot make the folder {path}: "
                     f"{e.strerror or type(e).__name__}")


def environment(device, shape, bw, **extra) -> dict:
    """The head of a report: card (or "cpu (smoke)"), versions, shape, copy bandwidth."""
    cuda = device.type == "cuda"
    return {"device": torch.cuda.get_device_name(device) if cuda else "cpu (smoke)",
            "torch": torch.__version__, "triton": triton_version(), **extra, "shape": shape,
            "copy_gbps": bw / 1e9, "cuda": cuda}


def write_report(out_dir: str, name: str, res: dict, md: str, quiet: bool = False) -> None:
    """``name``.json and ``name``.md in ``out_dir``, the table printed unless ``quiet``
    (a partial report, rewritten after each row: each file is replaced whole, so a run
    killed at its time limit leaves the last complete one)."""
    write_json(res, os.path.join(out_dir, f"{name}.json"))
    data = (md + "\n").encode()
    atomic_write(os.path.join(out_dir, f"{name}.md"), lambda f: f.write(data))
    if not quiet:
        print(md)


def failed(rows) -> bool:
    """Whether a row failed (a row skipped for the budget did not)."""
    return any("error" in r and not r["error"].startswith("skipped") for r in rows)


def triton_version():
    try:
        import triton
        return triton.__version__
    except ImportError:
        return "not installed"
