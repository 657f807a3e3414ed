"""DistributedDataParallel on CPU (gloo, loopback only): the gradient averaged over 2
ranks equals the single-process gradient of the same global batch, and
``torchrun -m fastvae train`` runs end to end with rank 0 writing the files."""
import datetime
import json
import os
import socket
import subprocess
import sys
import time

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import _torchrun
from fastvae import models
from fastvae.models import VAE
from fastvae.train import batch_loss

CFG = {"backend": "auto", "kl": "mc", "beta": 1.0}
WORLD = 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _fixed_noise(mu, logvar, n_samples=None, generator=None, backend=None):
    # Noise must not depend on how the batch is split across ranks, so use a fixed
    # eps per latent dimension instead of the random draw.
    eps = torch.linspace(-1.0, 1.0, mu.shape[-1], dtype=mu.dtype)
    return mu + torch.exp(0.5 * logvar) * eps


def _model():
    torch.manual_seed(0)
    return VAE((1, 8, 8), latent_dim=3, hidden=(16,), likelihood="gaussian")


def _grads(model):
    return {n: p.grad.detach().clone() for n, p in model.named_parameters()}


def _worker(rank, port, x, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD,
                            timeout=datetime.timedelta(seconds=120))
    try:
        models.reparameterize = _fixed_noise
        from torch.nn.parallel import DistributedDataParallel as DDP

        core = _model()
        ddp = DDP(core)
        loss, _ = batch_loss(ddp, x.chunk(WORLD)[rank], CFG)
        loss.backward()
        torch.save(_grads(core), f"{out}.{rank}")
        dist.barrier()  # leave together: a rank tearing down alone can hang the other
    finally:
        dist.destroy_process_group()


def _spawn(fn, args, timeout=180):
    """mp.spawn with a deadline, so a stuck rank fails the test instead of hanging it."""
    ctx = mp.start_processes(fn, args=args, nprocs=WORLD, join=False, start_method="spawn")
    deadline = time.monotonic() + timeout
    while not ctx.join(timeout=1):
        if time.monotonic() > deadline:
            for p in ctx.processes:
                p.kill()
            pytest.fail(f"DDP workers did not finish in {timeout} s")


def test_ddp_gradient_equals_single_process_gradient(tmp_path, monkeypatch):
    x = torch.rand(12, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    _spawn(_worker, (_free_port(), x, str(tmp_path / "g")))
    monkeypatch.setattr(models, "reparameterize", _fixed_noise)
    single = _model()
    loss, _ = batch_loss(single, x, CFG)  # mean over the whole global batch
    loss.backward()
    want = _grads(single)
    for rank in range(WORLD):
        got = torch.load(f"{tmp_path / 'g'}.{rank}", weights_only=True)
        assert got.keys() == want.keys()
        for name in want:
            torch.testing.assert_close(got[name], want[name], rtol=1e-5, atol=1e-6)
    # and the test can fail: one rank's own (un-averaged) gradient differs
    half = _model()
    batch_loss(half, x.chunk(WORLD)[0], CFG)[0].backward()
    assert not torch.allclose(_grads(half)["decoder.0.weight"], want["decoder.0.weight"])


def test_torchrun_trains_with_rank0_writing(tmp_path):
    out = tmp_path / "run"
    env = _torchrun.env(tmp_path)
    r = _torchrun.run(tmp_path, "-m", "fastvae", "train", "--epochs", "1", "--hidden", "32",
                      "--latent", "2", "--batch-size", "128", "--iwae-k", "5", "--no-progress",
                      "--device", "cpu", "--out", out)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
    m = json.loads((out / "metrics.json").read_text())
    assert m["world_size"] == WORLD and m["device"] == "cpu"
    assert r.stdout.count("epoch   1/1") == 1  # only rank 0 prints
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(".")) == []
    state = torch.load(out / "checkpoint.pt", weights_only=True)
    per_rank = state["rng"]["per_rank"]
    assert len(per_rank) == WORLD and not torch.equal(per_rank[0]["torch"], per_rank[1]["torch"])
    # a resume past its target: every rank meets it; rank 0 alone says so, once
    r = _torchrun.run(tmp_path, "-m", "fastvae", "train", "--resume", "--out", out,
                      "--epochs", "1", "--no-progress")
    lines = _torchrun.said(r.stderr, "fastvae train: error")
    assert r.returncode != 0 and len(lines) == 1 and "--epochs 1" in lines[0], r.stderr
    assert not lines[0].startswith("[rank"), lines
    # resumed by one process: it continues, and says it is not the run torchrun would make
    r = subprocess.run([sys.executable, "-m", "fastvae", "train", "--resume", "--out", str(out),
                        "--epochs", "2", "--no-progress", "--iwae-k", "0"],
                       capture_output=True, text=True, timeout=240, env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    assert (f"note: the run trained with {WORLD} process(es) and resumes with 1: it continues, "
            f"but not bit for bit as it would have with {WORLD}") in r.stdout, r.stdout


def test_torchrun_says_an_error_once_and_refuses_an_uneven_batch(tmp_path):
    """Every rank meets a bad flag alike: rank 0 alone prints it. A global batch that
    does not split evenly among the ranks is refused, not rounded up per rank."""
    r = _torchrun.run(tmp_path, "-m", "fastvae", "train", "--epochs", "1", "--batch-size", "33",
                      "--no-progress", "--device", "cpu", "--out", tmp_path / "run")
    assert r.returncode != 0
    lines = _torchrun.said(r.stderr, "fastvae train: error")
    assert lines == ["fastvae train: error: --batch-size: global batch of 33 does not split "
                     f"evenly among {WORLD} processes; use a multiple of {WORLD}"], r.stderr
    assert not (tmp_path / "run").exists()
    # fewer training images than ranks: an epoch would give a rank none
    import numpy as np
    np.save(tmp_path / "two.npy", np.zeros((2, 4, 4), np.uint8))
    r = _torchrun.run(tmp_path, "-m", "fastvae", "train", "--epochs", "1", "--batch-size", "2",
                      "--no-progress", "--device", "cpu", "--iwae-k", "0",
                      "--dataset", tmp_path / "two.npy", "--out", tmp_path / "r")
    lines = _torchrun.said(r.stderr, "fastvae train: error")
    assert lines == [f"fastvae train: error: two.npy: 1 training image(s) for {WORLD} "
                     "processes; each needs at least one"], r.stderr


def _together_worker(rank, port, out):
    from fastvae import ranks

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD,
                            timeout=datetime.timedelta(seconds=60))

    def fails(*on):
        def fn():
            if rank in on:
                raise ValueError("the flags" if len(on) == WORLD else f"rank {rank}'s own")
            return rank
        return fn
    seen = []
    try:
        for on in ((), (1,), (0, 1), (0,)):
            try:
                seen.append(("ok", ranks.together(fails(*on), rank, WORLD)))
            except ValueError as e:
                seen.append((type(e).__name__, str(e), getattr(e, "alike", False)))
        dist.barrier()
    finally:
        dist.destroy_process_group()
    with open(f"{out}.{rank}", "w") as f:
        json.dump(seen, f)


def test_a_collective_check_is_reported_once_by_rank_0_and_never_lost(tmp_path):
    """ranks.together: nothing failed, every rank goes on; one rank's own failure reaches
    rank 0's report (that rank's own is left quiet); the same failure on every rank is
    rank 0's own error, once. A rank stopped by another's failure knows what it was (for
    torchrun's report of it: rank 0 prints the failure)."""
    _spawn(_together_worker, (_free_port(), str(tmp_path / "t")), timeout=120)
    r0, r1 = (json.loads((tmp_path / f"t.{r}").read_text()) for r in range(WORLD))
    assert r0[0] == ["ok", 0] and r1[0] == ["ok", 1]
    assert r0[1] == ["RankError", "rank 1: rank 1's own", False]
    assert r1[1] == ["ValueError", "rank 1's own", True]      # quiet: rank 0 said it
    assert r0[2] == ["ValueError", "the flags", False]
    assert r1[2] == ["ValueError", "the flags", True]
    assert r0[3] == ["ValueError", "rank 0's own", False]
    assert r1[3] == ["RankError", "stopped with the run: rank 0: ValueError: rank 0's own", True]


def test_ranks_resumed_in_another_number_draw_their_own_noise():
    """A checkpoint of another world size has no state for each rank: rank 0 continues
    the saved stream, the others streams of their own, the same ones on every resume."""
    from fastvae.ranks import set_rng_state as _set_rng_state

    torch.manual_seed(5)
    state = {"torch": torch.get_rng_state(), "shuffle": torch.Generator().get_state()}
    draws = {}
    for rank in (0, 1, 2, 1):
        _set_rng_state(state, torch.Generator(), rank, 3, torch.device("cpu"))
        draws.setdefault(rank, []).append(torch.rand(4))
    torch.set_rng_state(state["torch"])
    assert torch.equal(draws[0][0], torch.rand(4))          # rank 0: the saved stream
    assert not torch.equal(draws[1][0], draws[0][0]) and not torch.equal(draws[1][0], draws[2][0])
    assert torch.equal(draws[1][0], draws[1][1])              # the same on every resume


DATA_CASES = ("same", "differ", "download", "missing")


def _data_worker(rank, port, out):
    """_load_data and the ranks' data check of train, on 2 gloo ranks, once per case of
    DATA_CASES: rank 1 reading fewer images (``differ``) or no file (``missing``), rank
    0's --download failing (``download``). One group for all: each check is collective
    and ends alike on every rank, so the next case starts together."""
    import fastvae.train as T
    from fastvae.data import DataError

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD,
                            timeout=datetime.timedelta(seconds=60))
    real = T.load_dataset
    seen = {}
    try:
        for case in DATA_CASES:
            calls = []

            def load(name, data_dir, download=False):
                calls.append(download)
                if case == "download" and download:
                    raise DataError("mnist: --download needs torchvision")
                data = real("digits", data_dir, False)
                if case == "differ" and rank == 1:
                    data.train = data.train[:1000]
                if case == "missing" and rank == 1:
                    raise DataError("digits: no file on this node")
                return data
            T.load_dataset = load
            cfg = dict(T.default_config(), out=f"{out}-{case}", download=case == "download")
            try:
                T._load_data(cfg, None, torch.device("cpu"), rank, WORLD, lambda *a: None)
                seen[case] = [["ok"], calls]
            except (DataError, ValueError) as e:
                seen[case] = [[type(e).__name__, str(e), getattr(e, "alike", False)], calls]
            dist.barrier()
    finally:
        dist.destroy_process_group()
    with open(f"{out}.{rank}", "w") as f:
        json.dump(seen, f)


@pytest.fixture(scope="module")
def data_checks(tmp_path_factory):
    """{case: ((rank 0's outcome, its load calls), (rank 1's ...))}: one spawn of the
    ranks for every case (each spawn costs seconds of CPU)."""
    out = str(tmp_path_factory.mktemp("data") / "d")
    _spawn(_data_worker, (_free_port(), out), timeout=180)
    per_rank = [json.loads(open(f"{out}.{r}").read()) for r in range(WORLD)]
    return {case: tuple(r[case] for r in per_rank) for case in DATA_CASES}


@pytest.mark.parametrize("case", DATA_CASES)
def test_ranks_that_read_other_data_or_miss_rank_0_s_download_stop_together(data_checks, case):
    """A rank whose copy of the data differs from rank 0's would run another number of
    steps and leave the others waiting in the all-reduce: every rank stops, rank 0 says
    why. Rank 0 alone fetches with --download; its failure is every rank's, said by it."""
    (r0, calls0), (r1, calls1) = data_checks[case]
    if case == "same":
        assert r0 == r1 == ["ok"]
    elif case == "differ":
        assert r0[:2] == ["DataError", "digits: the processes read different images (rank 0: "
                          "1438 train / 359 test images; rank 1: 1000 train / 359 test "
                          "images); every process must read the same data (the same file on "
                          "each node)"]
        assert r1[0] == "DataError" and r1[2] is True   # quiet: rank 0 said it
    elif case == "missing":   # rank 1's own file: every rank stops, rank 0 names rank 1
        assert r0 == ["RankError", "rank 1: digits: no file on this node", False]
        assert r1[:2] == ["DataError", "digits: no file on this node"] and r1[2] is True
    else:
        assert r0 == ["DataError", "mnist: --download needs torchvision", False]
        assert r1[2] is True and calls0 == [True] and calls1 == []
