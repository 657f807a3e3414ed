"""What ``fastvae train`` does differently under torchrun: the ranks' environment, sums
over them, each rank's random state in a checkpoint, and which errors every rank meets
alike (so that rank 0 alone reports them, :func:`together` where only the ranks can tell)."""
from __future__ import annotations

import datetime
import json
import os
import time

import torch


def alike(e: BaseException) -> BaseException:
    """``e``, marked as an error every rank meets alike (it follows from the flags, the
    world size or rank 0's broadcast): the command prints it on rank 0 only. Any other
    error is printed by each rank that meets it, as it may be that rank's alone (a data
    file missing on one node)."""
    e.alike = True
    return e


class RankError(ValueError):
    """What stopped other ranks of the run, as rank 0 reports it (:func:`together`)."""


def together(fn, rank: int, world: int, group=None):
    """``fn()`` on every rank, then how it ended compared over the ranks (a collective:
    every rank must call it). Where any rank failed, every rank raises, and rank 0 alone
    reports: its own error where every failing rank met that same one (the flags, the
    run folder), else each failing rank's message, named (a rank's own machine or files);
    the other ranks' errors are marked :func:`alike`, so none is printed twice and none
    is lost. ``group``: the process group to compare in (the default one's). Without
    torchrun, ``fn()``."""
    if world <= 1:
        return fn()
    try:
        out, err = fn(), None
    except Exception as e:   # any: a rank that skipped the gather would hang the others
        out, err = None, e
    _arrive(group)
    said = [None] * world
    torch.distributed.all_gather_object(
        said, None if err is None else (str(err), type(err).__name__), group=group)
    failed = [(r, s[0]) for r, s in enumerate(said) if s is not None]
    if not failed:
        return out
    if rank:
        if err is None:   # what rank 0 reports, for torchrun's entry of this rank (cli)
            err = RankError("stopped with the run: " + "; ".join(
                f"rank {r}: {said[r][1]}: {s}" for r, s in failed))
        raise _together(alike(err))
    if said[0] is not None and all(s == said[0][0] for _, s in failed):
        raise _together(err)
    raise _together(RankError("; ".join(f"rank {r}: {s}" for r, s in failed))) from err


def _arrive(group) -> None:
    """Wait for every rank of ``group`` to get here, in Python where the group is gloo's
    (the ``waits`` group always is): a rank blocked in a collective runs no signal handler
    until it ends, so a SIGTERM to a rank waiting out rank 0's evaluation (hours, for a
    conv model's final estimate on a CPU) was handled only then, past a scheduler's grace
    period, whose SIGKILL ended the rank without a word. A rank that leaves this wait
    leaves the barrier unfinished: its group is kept (:func:`end_group`)."""
    if torch.distributed.get_backend(group) != "gloo":   # NCCL's waits are brief
        return
    work = torch.distributed.barrier(group=group, async_op=True)
    while not work.is_completed():   # true too once a peer is lost: wait() raises it
        time.sleep(0.01)
    work.wait()


def _together(e: BaseException) -> BaseException:
    e.together = True
    return e


def leave_word(line: str) -> None:
    """``line`` as this process's failure, where torchrun reads it (its error file), for a
    rank that prints nothing because rank 0 reports what stopped the run. torchrun names
    the first process it sees fail as the root cause: often such a rank (it returns while
    rank 0 is still printing), shown as exit code 2 with no message, the real cause left
    to a list of other failures or, torchrun having stopped rank 0, unnamed. Not under
    torchrun, nothing."""
    path = os.environ.get("TORCHELASTIC_ERROR_FILE")
    if not path:
        return
    # the layout torch's @record writes: for a plain string message torchrun warns twice
    # (a "new message format") on every such failure and cannot add the exit code to it
    word = {"message": line, "extraInfo": {"timestamp": str(int(time.time()))}}
    try:
        with open(path, "w") as f:
            json.dump({"message": word}, f)
    except OSError:   # its report is torchrun's alone: the exit status still goes out
        pass


def in_step(e: BaseException) -> bool:
    """Whether every rank raises ``e`` at the same point (:func:`alike`, or out of
    :func:`together`): none of them has left a collective unfinished."""
    return getattr(e, "alike", False) or getattr(e, "together", False)


def from_rank_0(fn, rank: int, world: int, group=None):
    """``fn()`` run on rank 0 alone, its result given to every rank (a collective); its
    failure stops every rank, said by rank 0 (:func:`together`). For work whose result is
    the same on every rank (the test set's evaluation): done once, not once a rank, with
    the numbers one process gets. ``group``: the process group the others wait in (the
    default one's: its timeout bounds ``fn``). Without torchrun, ``fn()``."""
    if world <= 1:
        return fn()
    out = [together(lambda: fn() if rank == 0 else None, rank, world, group)]
    torch.distributed.broadcast_object_list(out, src=0, group=group)
    return out[0]


def init_group(backend: str) -> None:
    """torch's default process group, made so that ``destroy_process_group`` frees it."""
    # torch.distributed.nn.functional binds group.WORLD as its functions' default argument
    # when it is imported, and DDP's first use of torch._dynamo imports it: imported after
    # the group exists, it holds the group for good, whose gloo threads then run into the
    # interpreter's shutdown, where one releasing a finished collective aborts the rank
    # (signal 6). Imported first, it binds None.
    import torch.distributed.nn.functional  # noqa: F401

    torch.distributed.init_process_group(backend)


_held = []   # the default groups of failed runs (end_group)


def end_group(failed: bool) -> None:
    """destroy_process_group; after a failure that may have left a collective of this rank
    unfinished (a stop, a lost peer, an error of this rank's own) the group itself is
    kept: its destructor waits for this rank's collectives, and one another rank will
    never join (a SIGTERM to this rank alone, mid-step) would hang the rank for good. So
    are its other groups (the ``waits`` group of :func:`together`'s barrier). An error
    every rank raised at the same point (:func:`in_step`) is no such failure."""
    if failed:
        _held.extend(torch.distributed.distributed_c10d._world.pg_map)
    torch.distributed.destroy_process_group()


def group_kept() -> bool:
    """Whether a failed run kept its process group (:func:`end_group`): its gloo threads
    still run, and the interpreter's shutdown would abort the process under them."""
    return bool(_held)


# the other ranks' wait for rank 0's evaluations and final estimate (train._train_in_group)
FINISH_TIMEOUT = datetime.timedelta(days=30)


def dist_env():
    """(rank, world_size, local_rank) from torchrun's environment, or (0, 1, 0); a
    ValueError naming the variable where one is not a whole number, or RANK is missing or
    outside the world (WORLD_SIZE left set outside torchrun)."""
    world = _env_int("WORLD_SIZE", "1")
    if world <= 1:
        return 0, 1, 0
    rank = _env_int("RANK", None)
    if not 0 <= rank < world:
        raise ValueError(f"environment variable RANK is {rank}, outside 0..{world - 1} "
                         f"(WORLD_SIZE {world}); run under torchrun, or unset WORLD_SIZE")
    return rank, world, _env_int("LOCAL_RANK", "0")


def _env_int(name: str, default):
    value = os.environ.get(name, default)
    if value is None:
        raise ValueError(f"environment variable {name} is not set but WORLD_SIZE is "
                         f"{os.environ['WORLD_SIZE']}; run under torchrun, or unset WORLD_SIZE")
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {name} must be a whole number (torchrun sets "
                         f"it), got {value!r}") from None


def all_reduce(t: torch.Tensor, world: int, device) -> torch.Tensor:
    """Sum over ranks, returned on the CPU (NCCL reduces only CUDA tensors)."""
    if world > 1:
        t = t.to(device)
        torch.distributed.all_reduce(t)
    return t.cpu()


def rng_state(shuffle_gen, world: int, device) -> dict:
    state = {"torch": torch.get_rng_state(), "shuffle": shuffle_gen.get_state()}
    # a CPU run draws nothing on a GPU: asking would start CUDA on every visible device
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state_all()
    if world > 1:  # every rank draws its own noise; rank 0 saves them all
        mine = {k: v for k, v in state.items() if k != "shuffle"}
        states = [None] * world
        torch.distributed.all_gather_object(states, mine)
        state["per_rank"] = states
    return state


def set_rng_state(state: dict, shuffle_gen, rank: int, world: int, device):
    per_rank = state.get("per_rank")
    own = per_rank[rank] if world > 1 and per_rank and len(per_rank) == world else state
    torch.set_rng_state(own["torch"])
    # a CUDA run's states only: a run on another device draws nothing on a GPU, and
    # restoring them (a CUDA run's, or an older CPU run's checkpoint) would start CUDA on
    # every visible device, as asking for them did (rng_state)
    if "cuda" in own and device.type == "cuda" and torch.cuda.is_available():
        # only the devices this machine shows: a run saved where more were visible (a
        # 2-GPU node, one process on cuda:0) resumes on one GPU instead of being refused
        for i, device_state in enumerate(list(own["cuda"])[:torch.cuda.device_count()]):
            torch.cuda.set_rng_state(device_state, i)
    shuffle_gen.set_state(state["shuffle"])
    if world > 1 and own is state and rank:
        # another number of processes than the run had: rank 0 continues the saved
        # stream, and every other rank a stream of its own derived from it (the same
        # state on every rank would draw the same noise on each, for good)
        base = int(torch.randint(2 ** 62, (1,), generator=torch.Generator().set_state(
            state["torch"])))
        torch.manual_seed(base + rank)
