"""The training loop behind ``fastvae train``.

One function, :func:`train`, takes a plain config dict (see :func:`default_config`)
and writes a run folder: ``checkpoint.pt`` after every epoch, ``metrics.json``,
``reconstructions.png``, ``samples.png``, ``curves.png`` and, for an MLP or conv
model with a 2-D latent space, ``latent.png``.

The folder is claimed, locked and checked writable first (:mod:`fastvae.runs`); the
NaN policy, which decides what may be saved, is :mod:`fastvae.guard`.

Reproducibility: the global torch RNG draws the model's initial weights and the
posterior noise; a separate generator shuffles the data; evaluation and pictures use
their own fixed generators so they never disturb training. All of these states go
into the checkpoint, so ``--resume`` continues bit-for-bit on CPU.

Under ``torchrun`` (``WORLD_SIZE > 1``) the model is wrapped in
DistributedDataParallel (gloo on CPU, nccl on GPU), each rank reads its share of
every global batch through a DistributedSampler, DDP averages the per-rank mean
gradients (= the gradient of the global batch mean, since the shares are equal)
and rank 0 alone writes files.
"""
from __future__ import annotations

import contextlib
import math
import time
from pathlib import Path
from types import SimpleNamespace

import torch

from . import dmol_training as dmol, objectives, ranks, stops
from ._dtypes import to_widest
from .amp import (CompiledHalves, amp_policy, compile_options, compiler_problem,
                  describe as describe_amp)
from .checkpoint import CHECKPOINT_NAME, CheckpointError, save_checkpoint
from .data import DataError, load_dataset, load_run_dataset
from .evaluation import batch_loss, batch_terms, evaluate, iwae_nll, summarize
from .finish import finish, written
from .guard import Guard, NonFiniteLoss
from .models import build_model
from .options import (check_kl_warmup, check_model_sizes, check_train_config, plain_values,
                      resolve_device)
from .progress import progress_bar
from .run_data import (check_elbo_finite, check_run_data, check_weights_finite, data_changed,
                       same_data_everywhere)
from .run_config import (RESUME_OVERRIDES, RUN_KEYS_UNLESS_GIVEN, check_data_flags,
                         prepare_config, resume_command_flags)
from .runs import (MissingExtra, RunFolderError, check_extras, check_outputs, claim_folder,
                   installed, load_weights, run_backend)

__all__ = ["train", "default_config", "evaluate", "iwae_nll", "batch_loss", "resolve_device",
           "NonFiniteLoss", "DataError", "CheckpointError", "RunFolderError",
           "MissingExtra"]

def default_config() -> dict:
    """The defaults of ``fastvae train``: digits, MLP, Bernoulli; about half a minute on 2 CPU
    cores (README)."""
    return dict(dataset="digits", data_dir="data", download=False, model="mlp", latent=8,
                hidden=[256], channels=[32, 64], groups=2, epochs=60, batch_size=32, lr=1e-3, beta=1.0,
                kl_warmup=None, n_mix=None,
                kl="analytic", likelihood="bernoulli", backend="auto", amp=False,
                compile=False, seed=0, device="auto", out=None, resume=False, progress=True,
                iwae_k=1000, threads=0, objective="elbo", k=1, estimator="standard")


def set_threads(cfg: dict, device, sample_size: int) -> None:
    """CPU intra-op threads. 0 = auto: one thread for small images (<= 1024 values:
    8x8 digits, 28x28 MNIST), whose per-batch ops are too small to split. Measured on
    2 cores: 1 thread is as fast as 2 when the machine is idle and 10-100x faster when
    other processes are busy (OpenMP threads then wait on each other). Otherwise
    torch's default."""
    n = int(cfg.get("threads") or 0)
    if n == 0 and device.type == "cpu" and sample_size <= 1024:
        n = 1
    if n > 0:
        torch.set_num_threads(n)


def train(cfg: dict, log=print) -> dict:
    """Train per ``cfg`` (see :func:`default_config`); returns the metrics dict also
    written to ``metrics.json``. Raises :class:`NonFiniteLoss` on a NaN/inf loss,
    gradient, weight, optimizer state or epoch metric (see :mod:`fastvae.guard`; the
    last good checkpoint stays), :class:`DataError`, :class:`CheckpointError`."""
    threads = torch.get_num_threads()
    try:
        return _train(cfg, log)
    finally:  # --threads is for this run only, not for the rest of the process
        torch.set_num_threads(threads)


def _checked_config(given: dict) -> dict:
    """The defaults with ``given``'s set values over them, checked as far as the settings
    alone decide, before any data or model: a ValueError or DataError naming the
    setting."""
    full = default_config()
    full.update({k: v for k, v in given.items() if v is not None})
    if full["kl_warmup"] is None:  # a hierarchy's groups collapse without it (Sønderby 2016);
        # at --beta 0 there is no weight to ramp (and a saved 0 is what the run did)
        full["kl_warmup"] = 10 if full["model"] == "hvae" and full["beta"] != 0 else 0
    check_train_config(full, combinations=not full["resume"])
    if not full["resume"]:  # a resumed run's sizes and dataset are its checkpoint's
        check_kl_warmup(given, full)
        check_model_sizes(given, full["model"], default_config())
        check_data_flags(full, given)
    return full


def _train(given: dict, log) -> dict:
    given = plain_values(given)
    rank, world, local_rank = ranks.dist_env()
    is_main = rank == 0
    say = log if is_main else (lambda *a, **k: None)
    try:   # the flags alone decide these: every rank meets them alike
        full = _checked_config(given)
    except (ValueError, DataError) as e:
        ranks.alike(e)
        raise
    # before the group, whose backend it decides: a rank without it says so itself (had
    # it joined a gloo group while the others made an NCCL one, every rank would hang)
    device = resolve_device(full["device"], local_rank)
    own_group = world > 1 and not torch.distributed.is_initialized()
    if own_group:
        if device.type == "cuda":
            torch.cuda.set_device(device)
        ranks.init_group("nccl" if device.type == "cuda" else "gloo")
    folder, failed, in_step = None, True, False
    try:
        ranks.together(lambda: _machine_ready(full, is_main, say), rank, world)
        folder, full["out"] = claim_folder(full, is_main, world)
        cfg, state, backend = ranks.together(lambda: _settled(given, full, device, say),
                                             rank, world)
        metrics = _train_in_group(cfg, state, device, backend, rank, world, say,
                                  resume_command_flags(given, full["resume"], ("epochs", "lr")))
        failed = False
        return metrics
    except BaseException as e:
        if isinstance(e, (KeyboardInterrupt, OSError, RuntimeError)):
            # so the command can say how to --resume (after a full disk, torch.compile's
            # cache's too, once it has room)
            e.run_folder = full["out"]
            e.resume_flags = resume_command_flags(given, full["resume"])
            e.resume_world = world
        in_step = ranks.in_step(e)
        raise
    finally:
        if folder is not None:
            folder.close(failed)
        if own_group:
            ranks.end_group(failed and not in_step)


def _machine_ready(full: dict, is_main: bool, say) -> None:
    """What rank 0 lacks for the run: it alone draws the pictures."""
    if is_main:
        check_extras("train", pictures=True, dataset=full["dataset"])
        if full["progress"] and not installed("tqdm"):   # a bar is no reason to stop
            say("note: no progress bar: tqdm is not installed (pip install 'fastvae[train]'; "
                "--no-progress hides this note)")


def _settled(given: dict, full: dict, device, say):
    """(config, checkpoint or None, backend name): a resume's saved settings and their
    checkpoint, checked as the run will train, and the backend it runs on ``device``."""
    cfg, state = prepare_config(given, full, say)
    if state is None:
        return cfg, state, run_backend(cfg, device)
    try:   # a resumed run's combination: its checkpoint's, as it trains
        check_train_config(cfg)
        # None reads as "the default" in a given config, never in a saved one
        unset = [k for k, v in default_config().items() if k in cfg and cfg[k] is None
                 and (v is not None or k == "kl_warmup")]
        if unset:
            raise ValueError(f"{unset[0]} is None, which fastvae train never saves")
        shape = cfg.get("data_shape")
        if not (isinstance(shape, (list, tuple)) and shape
                and all(type(n) is int and n > 0 for n in shape)):
            raise ValueError(f"data_shape is {shape!r}, not a list of image sizes")
    except ValueError as e:  # the flags passed alone: a saved value, or a mix
        key = str(e).split(":")[0]   # a saved value past today's limits: a flag may replace it
        way = (f"; resume with --{key.replace('_', '-')} to replace it"
               if key in RUN_KEYS_UNLESS_GIVEN + RESUME_OVERRIDES and given.get(key) is None
               else "")
        raise CheckpointError(f"{Path(cfg['out']) / CHECKPOINT_NAME}: its config "
                              f"cannot be resumed: {e}{way}") from None
    # a fresh run was refused any of them (prepare_config); a resumed one replaces them
    check_outputs(cfg["out"], written(cfg))
    how = (None if given.get("backend") is not None else   # the flag's: named as the flag
           f"resume it with --backend auto (or torch) to go on on {device}")
    return cfg, state, run_backend(cfg, device, how)


def _train_in_group(cfg, state, device, backend, rank, world, say, resume_flags=()):
    is_main = rank == 0
    problem = compiler_problem(cfg, device)
    if problem:   # every rank's machine alike, as torchrun starts them on one node
        raise ranks.alike(ValueError(problem + (" (--no-compile on a resume)"
                                                if state is not None else "")))
    if cfg["batch_size"] % world:   # each rank's share of every global batch is equal
        bs = cfg["batch_size"]
        if state is None:
            raise ranks.alike(ValueError(
                f"--batch-size: global batch of {bs} does not split evenly among {world} "
                f"processes; use a multiple of {world}"))
        counts = [n for n in range(1, bs + 1) if bs % n == 0]   # a resume keeps its batch
        raise ranks.alike(ValueError(
            f"the run's global batch of {bs} does not split evenly among {world} processes; "
            f"resume it with a process count that divides it ({', '.join(map(str, counts))})"))
    out = Path(cfg["out"])
    data = _load_data(cfg, state, device, rank, world, say)
    if len(data.train) < world:   # each rank's share of an epoch holds an image
        raise ranks.alike(DataError(f"{data.name}: {len(data.train)} training image(s) for "
                                    f"{world} processes; each needs at least one"))
    # The other ranks wait for rank 0's evaluations (the untrained or resumed model's, each
    # epoch's, the final estimate and pictures), which may take longer than the process
    # group's timeout (NCCL's 10 min, gloo's 30; a conv model's K=1000 estimate on a CPU
    # takes hours): in a group of their own with no practical timeout.
    waits = (torch.distributed.new_group(backend="gloo", timeout=ranks.FINISH_TIMEOUT)
             if world > 1 else None)
    # the same weights on the same data: a non-finite start (or a checkpoint that cannot
    # be restored) is every rank's, said once
    run = ranks.together(lambda: _build(cfg, state, data, device, backend, rank, world, say),
                         rank, world, group=waits)
    model = _wrap(run.core, cfg, device, world)
    sampler = None
    if world > 1:
        from torch.utils.data.distributed import DistributedSampler

        # drop_last: padding each rank's share to equal size repeats images, which would
        # count twice in the gradient and the epoch's train ELBO; instead each epoch
        # leaves out len % world of them (at most world - 1, other ones each epoch)
        sampler = DistributedSampler(range(len(data.train)), num_replicas=world, rank=rank,
                                     shuffle=True, seed=cfg["seed"], drop_last=True)
    train_x = data.train.to(device)
    if is_main:
        say(f"training {cfg['model']} VAE on {data.name} {tuple(data.shape)} "
            f"({len(data.train)} train / {len(data.test)} test), latent {cfg['latent']}, "
            f"device {device}{f' x{world}' if world > 1 else ''}, backend {run.backend_name}, "
            f"{objectives.describe(cfg)}, amp {describe_amp(run.amp_dtype, run.use_scaler)}, "
            f"out {out}")
        if run.initial is not None and state is None:
            say(f"epoch 0 (untrained): test elbo {run.initial['elbo']:.2f}")

    guard = Guard(out / CHECKPOINT_NAME, run.start if state is not None else None, out,
                  cfg["lr"], check_grads=not run.use_scaler, epochs=cfg["epochs"],
                  world=world, flags=resume_flags,
                  data_scaled=-1.0 <= data.bounds[0] and data.bounds[1] <= 1.0)
    t_run = time.perf_counter()
    for epoch in range(run.start + 1, cfg["epochs"] + 1):
        t0 = time.perf_counter()
        if sampler is not None:
            sampler.set_epoch(epoch)
            order = torch.tensor(list(sampler))
        else:
            order = torch.randperm(len(train_x), generator=run.shuffle_gen)
        sums, steps = _train_epoch(run, model, guard, train_x, order, epoch, is_main)
        sums = ranks.all_reduce(sums, world, device)
        n = sums[1].item()
        train_m = {"loss": sums[0].item() / n, **summarize(sums[2:], n)}
        train_m["elbo"] = train_m["rec"] - train_m["kl"]
        train_m = dmol.add_bpd(train_m, run.core)   # a DMoL run's unit, as the test side's
        wall = time.perf_counter() - t0
        # the weights DDP keeps equal give every rank the same numbers: rank 0 works them
        # out, as one process would, and hands them on
        test_m = ranks.from_rank_0(lambda: evaluate(run.core, data.test, cfg, device),
                                   rank, world, waits)
        wall_eval = time.perf_counter() - t0
        # a NaN in the test metrics (every rank's) is said once, and one in a rank's own
        # train metrics stops the others too (not in the next all-reduce)
        ranks.together(lambda: guard.epoch_end(run.opt, train_m, test_m, epoch, steps),
                       rank, world)
        run.history.append({"epoch": epoch, "train": train_m, "test": test_m, "wall_s": wall,
                            "wall_s_with_eval": wall_eval, "samples_per_s": n / wall})
        rng = ranks.rng_state(run.shuffle_gen, world, device)
        if is_main:
            save_checkpoint({"config": cfg, "model": run.core.state_dict(),
                             "optimizer": run.opt.state_dict(),
                             "scaler": run.scaler.state_dict() if run.use_scaler else {},
                             "epoch": epoch, "history": run.history, "initial_test": run.initial,
                             "rng": rng}, out / CHECKPOINT_NAME)
            say(f"epoch {epoch:3d}/{cfg['epochs']}  train elbo {train_m['elbo']:8.2f} "
                f"(kl {train_m['kl']:6.2f}, rec {train_m['rec']:8.2f}"
                f"{dmol.bpd_text(train_m)})  test elbo "
                f"{test_m['elbo']:8.2f} (kl {test_m['kl']:6.2f}, rec {test_m['rec']:8.2f}"
                f"{dmol.bpd_text(test_m)})  {wall:5.2f}s {n / wall:7.0f} samples/s")
        guard.saved(epoch)
    session_wall = time.perf_counter() - t_run

    stops.check()   # one in the last epoch's evaluation or checkpoint
    # The other ranks wait for rank 0's final estimate and pictures (in ``waits``) and
    # still leave together: a rank tearing down alone can hang in destroy_process_group.
    # Rank 0's failure there (a full disk) is theirs too: else each reported a lost peer,
    # and torchrun named that as the first failure.
    return ranks.together(lambda: finish(run.core, data, cfg, device, out, run.history,
                                         run.initial, run.backend_name, world, session_wall,
                                         say) if is_main else None,
                          rank, world, group=waits)


def _load_data(cfg, state, device, rank, world, say):
    """The dataset, checked against the likelihood and a resumed run's image shape."""
    is_main = rank == 0

    def load(download):
        return (load_dataset(cfg["dataset"], cfg["data_dir"], download) if state is None else
                load_run_dataset(cfg["dataset"], cfg["data_dir"], download,
                                 cfg.get("data_shape")))
    data = None
    if world > 1 and cfg["download"]:
        # rank 0 fetches the files first, the others wait; its failure (no torchvision, no
        # network) is every rank's, said once by rank 0 (a barrier left the others to
        # report a lost peer, and torchrun to name them as the first failure)
        data = ranks.together(lambda: load(True) if is_main else None, rank, world)
    # each rank's own copy too, inside together: one rank's missing file stops every rank
    data = ranks.together(lambda: load(cfg["download"] and world <= 1) if data is None
                          else data, rank, world)
    if world > 1:   # every rank indexes the same images: the sampler splits one dataset
        same_data_everywhere(data, rank, world)
    # the same images on every rank fail the same checks: rank 0 says so once
    return ranks.together(lambda: _checked_data(data, cfg, state, device, say), rank, world)


def _checked_data(data, cfg, state, device, say):
    """``data`` checked against the likelihood and a resumed run, set up for it."""
    ckpt_file = Path(cfg["out"]) / CHECKPOINT_NAME
    changed = data_changed(data, cfg.get("data_digest") if state else None, ckpt_file)
    if changed:   # resuming on it would not continue the run that was trained
        raise DataError(f"{changed}; restore the data it was trained on, or start a new run")
    check_run_data(data, cfg["likelihood"], cfg.get("data_shape"), ckpt_file,
                   saved=state is not None)
    cfg["data_digest"] = data.digest
    data = dmol.setup(data, cfg, say)
    cfg["data_shape"] = list(data.shape)
    from .plots import picture_range   # (plots' matplotlib is imported when it draws)
    cfg["picture_range"] = list(picture_range(*data.bounds))
    set_threads(cfg, device, math.prod(data.shape))
    return data


def _build(cfg, state, data, device, backend, rank, world, say) -> SimpleNamespace:
    """The model, optimizer, scaler and shuffling generator, fresh (seeded; the untrained
    model's test ELBO as ``initial``) or restored from ``state`` (a checkpoint)."""
    torch.manual_seed(cfg["seed"])
    core = build_model(cfg).to(device)
    opt = torch.optim.Adam(core.parameters(), lr=cfg["lr"])
    amp_dtype, use_scaler = amp_policy(cfg["amp"], device)
    run = SimpleNamespace(
        core=core, opt=opt, amp_dtype=amp_dtype, use_scaler=use_scaler,
        scaler=torch.amp.GradScaler(device.type, enabled=use_scaler),
        shuffle_gen=torch.Generator().manual_seed(cfg["seed"] + 1), history=[], initial=None,
        start=0, cfg=cfg, device=device, world=world)
    run.backend_name = backend
    if state is not None:
        ckpt_file = Path(cfg["out"]) / CHECKPOINT_NAME
        load_weights(core, state["model"], ckpt_file)
        check_weights_finite(core, ckpt_file)   # said so, not blamed on the data below
        try:
            opt.load_state_dict(state["optimizer"])
        except (ValueError, KeyError, TypeError, AttributeError) as e:  # AttributeError: no dict
            raise CheckpointError(f"{ckpt_file}: its optimizer state does not match the model "
                                  f"({e})") from None
        for group in opt.param_groups:  # a new --lr on resume (run_config.RESUME_OVERRIDES)
            group["lr"] = cfg["lr"]
        if use_scaler and state.get("scaler"):
            run.scaler.load_state_dict(state["scaler"])
        try:
            ranks.set_rng_state(state["rng"], run.shuffle_gen, rank, world, device)
        except (KeyError, TypeError, ValueError, RuntimeError, IndexError,
                AttributeError) as e:   # AttributeError: a state that is no dict
            raise CheckpointError(f"{ckpt_file}: its random-number state cannot be restored "
                                  f"({type(e).__name__}: {e})") from None
        history = state["history"]
        if not isinstance(history, list):
            raise CheckpointError(f"{ckpt_file}: its history is not a list of epochs: got "
                                  f"{type(history).__name__}")
        # read at the end (curves.png, metrics.json): said now, not after the training
        for entry in history:
            if not (isinstance(entry, dict) and isinstance(entry.get("train"), dict)
                    and isinstance(entry.get("test"), dict)):
                raise CheckpointError(f"{ckpt_file}: its history holds {entry!r:.80}, not an "
                                      "epoch's train and test metrics")
        run.history, run.initial = list(history), state.get("initial_test")
        run.start = state["epoch"]
        # data changed since (rescaled, replaced): said now, not as a non-finite loss that
        # a lower --lr cannot fix (evaluate draws from its own generator: resume stays exact);
        # rank 0's alone, as the epochs' (the same weights on every rank)
        if rank == 0:
            check_elbo_finite(evaluate(core, data.test, cfg, device), data.test,
                              cfg["dataset"], "the resumed model's")
        say(f"resuming {cfg['out']} at epoch {run.start}")
        saved_world = len(state["rng"].get("per_rank") or ()) or 1
        if saved_world != world:   # every process draws its own noise, from its own state
            say(f"note: the run trained with {saved_world} process(es) and resumes with "
                f"{world}: it continues, but not bit for bit as it would have with "
                f"{saved_world}")
    elif rank == 0:   # the same weights on every rank; rank 0 alone saves the numbers
        run.initial = evaluate(core, data.test, cfg, device)
        # before any step: no --lr can help
        check_elbo_finite(run.initial, data.test, cfg["dataset"], "the untrained model's",
                          "before training starts; scale the data to about [0, 1]")
    if state is None and world > 1:
        # same weights everywhere (DDP broadcasts them), own noise per rank
        torch.manual_seed(cfg["seed"] + 1000 * rank)
    return run


def _wrap(core, cfg, device, world):
    """The module the steps call: DDP across ranks, torch.compile on --compile."""
    model = core
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel as DDP

        model = DDP(core, device_ids=[device.index] if device.type == "cuda" else None)
    # dynamic=False: one graph per batch shape (full and last batch), each fully
    # specialized; there are only two shapes per run.
    options = compile_options(cfg, device) or None
    if cfg["compile"] and cfg.get("estimator") == "dreg":
        model = CompiledHalves(model, core, options)
    elif cfg["compile"]:
        model = torch.compile(model, dynamic=False, options=options)
    return model


def _train_epoch(run, model, guard, train_x, order, epoch, is_main):
    """One epoch of optimizer steps over ``order``; returns this rank's sums (loss*n, n,
    then :func:`batch_terms`' rec, kl and each group's kl) and the number of steps."""
    cfg, device = run.cfg, run.device
    local_bs = cfg["batch_size"] // run.world
    steps = math.ceil(len(order) / local_bs)
    sums = None
    bar = _progress(steps, epoch, cfg, is_main)
    run.core.train()
    t0 = time.perf_counter()
    try:   # the bar's line is cleared before a stop's message (Ctrl-C, NaN policy)
        for step in range(steps):
            stops.check()
            x = train_x[order[step * local_bs:(step + 1) * local_bs].to(device)]
            step_sums = _train_step(run, model, guard, x, epoch, step, steps)
            sums = step_sums if sums is None else sums + step_sums
            if bar is not None:
                elapsed = time.perf_counter() - t0
                bar.update(1)
                # rec - kl, as the epoch's line: a beta, warm-up or IWAE bound moves the loss
                elbo = (sums[2] - sums[3]).item() / sums[1].item()
                bar.set_postfix(elbo=f"{elbo:.2f}",
                                samples_s=f"{sums[1].item() * run.world / elapsed:.0f}",
                                refresh=False)
    finally:
        if bar is not None:
            bar.close()
    return sums, steps


def _train_step(run, model, guard, x, epoch: int, step: int, steps: int) -> torch.Tensor:
    """One optimizer step on batch ``x``; returns its sums (loss*n, n, then
    :func:`batch_terms`)."""
    cfg, device = run.cfg, run.device
    ctx = (torch.autocast(device.type, dtype=run.amp_dtype) if run.amp_dtype is not None
           else contextlib.nullcontext())
    with ctx:
        loss, parts = batch_loss(model, x, _warmed(cfg, epoch, step, steps))
    glob = ranks.all_reduce(to_widest(loss.detach().reshape(1)), run.world, device) / run.world
    guard.loss(float(glob), epoch, step + 1, steps)
    terms = batch_terms(run.core, x, parts, cfg["backend"])
    run.opt.zero_grad(set_to_none=True)
    run.scaler.scale(loss).backward()
    run.scaler.step(run.opt)
    run.scaler.update()
    guard.step(run.core, epoch, step + 1, steps)
    return _host_sums(loss, x.shape[0], terms)


def _host_sums(loss, n: int, terms) -> torch.Tensor:
    """One step's sums (:func:`_train_step`) on the CPU in float64, where the epoch adds
    them up: terms come in the device's widest dtype (float32 on MPS, which has none)."""
    return torch.cat([torch.tensor([float(loss.detach()) * n, n], dtype=torch.float64),
                      terms.cpu().double()])


def _warmed(cfg: dict, epoch: int, step: int, steps: int) -> dict:
    """cfg with beta ramped linearly from 0 over the first ``kl_warmup`` epochs (by step)."""
    done = ((epoch - 1) * steps + step + 1) / max(1, cfg.get("kl_warmup", 0) * steps)
    return cfg if done >= 1 else dict(cfg, beta=cfg["beta"] * done)


def _progress(steps, epoch, cfg, is_main):
    if not (cfg["progress"] and is_main):
        return None
    return progress_bar(steps, f"epoch {epoch}/{cfg['epochs']}", "batch")
