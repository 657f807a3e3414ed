"""The ``fastvae`` command: ``train``, ``eval``, ``sample`` and ``bench``.

``python -m fastvae`` and ``torchrun -m fastvae`` run the same thing. Errors the user
can fix (missing data, bad checkpoint, non-finite loss) print one clear line and exit
non-zero instead of a traceback.
"""
from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path

from . import _env, _warnings
from . import error_lines as el
from . import options as o
from . import ranks, stops
from .stops import Terminated


def _bool_flag(p, name, help_):
    p.add_argument(name, action=argparse.BooleanOptionalAction, default=None, help=help_)


def _threads_flag(p, default="0"):
    # train, eval and sample alike: under torchrun (OMP_NUM_THREADS=1) the flag is the
    # only way to give eval or sample more than one thread
    p.add_argument("--threads", type=o.threads, default=None,
                   help="CPU threads for torch; 0 = auto (1 for images of <= 1024 values such "
                   "as digits and MNIST, where more threads only add waiting; else torch's "
                   f"own count) [default: {default}]")


def _typed(widths) -> str:
    """A list default as it is typed after its flag (``32 64``): its repr, ``[32, 64]``,
    is no value the flag takes."""
    return " ".join(map(str, widths))


def _add_train(sub):
    from .models import MODELS
    from .train import default_config

    d = default_config()
    p = sub.add_parser("train", help="train a VAE and write a run folder",
                       description="Train a VAE. Writes checkpoint.pt, metrics.json, "
                       "reconstructions.png, samples.png, curves.png (and latent.png for an "
                       "mlp or conv model's 2-D latent space) to --out. Under torchrun it "
                       "trains with DDP. Sizes and counts are at most 2**31 - 1, --groups "
                       "at most 4096.")
    a = p.add_argument
    a("--dataset", default=None,
      help=f"digits (embedded 8x8, no download), mnist, fashion-mnist, or a path to an "
           f".npy/.npz of images [default: {d['dataset']}]")
    a("--data-dir", type=o.folder, default=None,
      help=f"folder holding the MNIST/Fashion-MNIST IDX files; with --resume of a run "
           f"trained on an .npy/.npz, the folder that file has moved to [default: "
           f"{d['data_dir']}; with --resume, the run's own]")
    _bool_flag(p, "--download", "let torchvision (if installed) fetch MNIST/Fashion-MNIST "
               "into --data-dir when the files are missing (refused with other datasets) "
               "[default: off]")
    a("--model", choices=MODELS, default=None,
      help=f"MLP VAE, convolutional VAE or hierarchical VAE (top-down latent groups with "
           f"learned priors) [default: {d['model']}]")
    a("--latent", type=o.count, default=None,
      help=f"latent dimensions L (hvae: channels of each group's latent map); 2 also draws "
           f"latent.png (mlp and conv) [default: {d['latent']}]")
    a("--hidden", type=o.count, nargs="+", default=None,
      help=f"mlp: hidden layer widths, the decoder mirrors the encoder; conv: the width of "
           f"its one fully connected layer [default: {_typed(d['hidden'])}]")
    a("--channels", type=o.count, nargs="+", default=None,
      help=f"conv and hvae models: channels per stride-2 stage; hvae: one latent "
           f"resolution per stage [default: {_typed(d['channels'])}]")
    a("--groups", type=o.groups, default=None,
      help=f"hvae model: stochastic latent groups per stage [default: {d['groups']}]")
    a("--epochs", type=o.count, default=None,
      help=f"total epochs (with --resume: train until this many, more than the run has) "
           f"[default: {d['epochs']}; with --resume, the run's own]")
    a("--batch-size", type=o.count, default=None,
      help=f"global batch size (split across torchrun ranks) [default: {d['batch_size']}]")
    a("--lr", type=o.learning_rate, default=None, help=f"Adam learning rate [default: {d['lr']}]")
    a("--beta", type=o.non_negative_float, default=None,
      help=f"KL weight (beta-VAE) in the training loss [default: {d['beta']}]")
    a("--kl-warmup", type=o.count_or_zero, default=None,
      help="epochs over which the KL weight ramps linearly from 0 to --beta (per step) "
           "[default: 10 for hvae, whose latent groups collapse without it (0 at --beta 0), "
           "else 0]")
    a("--kl", choices=o.KL_MODES, default=None,
      help=f"closed-form KL or the single-sample Monte-Carlo estimate (--objective elbo; the "
           f"IWAE bound always uses the sampled log-weights) [default: {d['kl']}]")
    a("--objective", choices=o.OBJECTIVES, default=None,
      help=f"training objective: the ELBO (averaged over --k samples), or the importance-"
           f"weighted bound with --k samples (Burda et al. 2016) [default: {d['objective']}]")
    a("--k", type=o.count, default=None,
      help=f"posterior samples per training example (hvae: 1) [default: {d['k']}]")
    a("--estimator", choices=o.ESTIMATORS, default=None,
      help=f"encoder gradient estimator: stl (sticking the landing; --objective elbo needs "
           f"--kl mc) or dreg (doubly reparameterized; --objective iwae); hvae trains with "
           f"standard only [default: "
           f"{d['estimator']}]")
    a("--likelihood", choices=o.LIKELIHOODS, default=None,
      help=f"decoder likelihood; gaussian learns a per-pixel variance; "
           f"discretized_logistic_mixture (8-bit gray or RGB images, reports bits/dim) "
           f"[default: {d['likelihood']}]")
    a("--n-mix", type=o.count, default=None,
      help="mixture components of --likelihood discretized_logistic_mixture [default: 10]")
    a("--backend", choices=o.backends.NAMES, default=None,
      help=f"fastvae backend for the loss ops [default: {d['backend']}]")
    _bool_flag(p, "--amp", "mixed precision: on CUDA bf16 autocast where the card has bf16 "
               "(sm_80+), else fp16 + GradScaler; on CPU bf16 autocast [default: off]")
    _bool_flag(p, "--compile", "torch.compile the model (with --estimator dreg: its encoder "
               "and decoder, sampling between them) [default: off]")
    a("--seed", type=o.seed, default=None, help=f"random seed [default: {d['seed']}]")
    a("--device", type=o.device, default=None,
      help=f"{o.DEVICES} [default: {d['device']}]")
    a("--out", type=o.folder, default=None,
      help="run folder, e.g. runs/NAME [default: runs/<dataset>, or runs/<dataset>-2, -3, "
           "... when that one already exists]")
    a("--resume", action="store_true", default=None,
      help="continue the run in --out (without --out: the runs/<dataset>[-N] whose "
           "checkpoint was written last) from its checkpoint (bit-for-bit on CPU), to its own "
           "--epochs unless given")
    a("--iwae-k", type=o.count_or_zero, default=None,
      help=f"importance samples for the final test NLL estimate; 0 skips it "
           f"[default: {d['iwae_k']}; with --resume, the run's own]")
    _threads_flag(p)
    _bool_flag(p, "--progress", "show the tqdm progress bar [default: on]")
    p.set_defaults(func=_cmd_train)


class _Defaults(argparse.ArgumentDefaultsHelpFormatter):
    """Each flag's default in its help, where it says something: not None (a flag that is
    off unless given), not a switch's False, not where the help names its own default."""

    def _get_help_string(self, action):
        if action.default is None or action.default is False or "(default:" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


def _add_eval(sub):
    p = sub.add_parser("eval", help="test ELBO and IWAE NLL of a trained run",
                       formatter_class=_Defaults)
    p.add_argument("run", type=o.folder, help="run folder (or its checkpoint.pt)")
    p.add_argument("--k", type=o.count_or_zero, default=1000,
                   help="importance samples per test image for the IWAE NLL estimate, at "
                        "most 2**31 - 1 (the time grows with K times the test images); 0 "
                        "skips it")
    p.add_argument("--data-dir", type=o.folder, default=None,
                   help="MNIST/Fashion-MNIST folder to read instead of the run's; for a run "
                        "trained on an .npy/.npz, the folder that file has moved to "
                        "(default: the run's own)")
    p.add_argument("--device", type=o.device, default="auto",
                   help=o.DEVICES)
    p.add_argument("--limit", type=o.count, default=None,
                   help="use only the first N test images (default: every one)")
    p.add_argument("--backend", choices=o.backends.NAMES, default=None,
                   help="fastvae backend for the ops (default: the run's own)")
    p.add_argument("--json", action="store_true", help="print the numbers as JSON")
    _bool_flag(p, "--progress", "show a progress bar for the IWAE NLL where stderr is a "
                                "terminal [default: on]")
    _threads_flag(p, default="torch's own count")
    p.set_defaults(func=_cmd_eval)


def _add_sample(sub):
    p = sub.add_parser("sample", help="draw images from a trained run's prior",
                       formatter_class=_Defaults)
    p.add_argument("run", type=o.folder, help="run folder (or its checkpoint.pt)")
    p.add_argument("--n", "-n", type=o.count, default=64,
                   help="number of images (-n under torchrun, whose own parser takes --n for "
                   "an abbreviation of its options and stops)")
    p.add_argument("--out", type=o.png_file, default=argparse.SUPPRESS,  # no "(default: None)"
                   help="PNG to write, its name ending in .png; missing folders are created "
                   "(default: RUN/samples-N-seedS.png, one file per number and seed)")
    p.add_argument("--seed", type=o.seed, default=0,
                   help="random seed of the draw (z ~ N(0, I); an hvae's top-down from its "
                   "learned priors); the run's own samples.png is --n 64 at the run's --seed + 4, "
                   "drawn on the device type it trained on")
    p.add_argument("--ncol", type=o.count, default=8,
                   help="images per row (at most --n)")
    p.add_argument("--device", type=o.device, default="auto",
                   help=o.DEVICES)
    _threads_flag(p, default="torch's own count")
    p.set_defaults(func=_cmd_sample)


def _add_bench(sub):
    # Listed here for --help only: fastvae.bench is written separately and imported
    # when bench runs (see _run_bench), so train/eval/sample never depend on it.
    sub.add_parser("bench", help="benchmark table of the fused ops (fastvae bench --help)",
                   add_help=False)


def build_parser() -> argparse.ArgumentParser:
    """The argparse parser of the ``fastvae`` command."""
    from . import __version__

    parser = o.Parser(prog="fastvae", description="Fused VAE objectives: train, evaluate and "
                     "sample VAEs, and benchmark the ops.")
    parser.add_argument("--version", action="version", version=f"fastvae {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    _add_train(sub)
    _add_eval(sub)
    _add_sample(sub)
    _add_bench(sub)
    parser.commands = sub.choices   # name -> its parser, whose errors name the command
    return parser


# -- handlers -------------------------------------------------------------------
def _cmd_train(args):
    from .train import train

    keys = ("dataset", "data_dir", "download", "model", "latent", "hidden", "channels", "groups",
            "epochs", "batch_size", "lr", "beta", "kl_warmup", "kl", "likelihood", "backend",
            "amp",
            "compile", "seed", "device", "out", "resume", "iwae_k", "progress", "threads",
            "objective", "k", "estimator", "n_mix")
    train({k: getattr(args, k) for k in keys})
    return 0


def _cmd_eval(args):
    from .run_commands import evaluate_run
    return evaluate_run(args)


def _cmd_sample(args):
    from .run_commands import sample_run
    return sample_run(args)


def _run_bench(argv) -> int:
    try:
        from . import bench
    except ImportError as e:
        print(f"fastvae bench: the benchmark module fastvae.bench is not available ({e}); it "
              "ships with the benchmarks, so update fastvae to a version that has it.",
              file=sys.stderr)
        return 2
    return int(bench.main(argv) or 0)


def _interrupted_line(command: str, e: KeyboardInterrupt) -> str:
    """What Ctrl-C or SIGTERM left: nothing eval or sample writes is half-written; train's
    checkpoints are replaced whole, so the last one resumes."""
    what = "terminated (SIGTERM)" if isinstance(e, Terminated) else "interrupted"
    if command != "train":
        return f"fastvae {command}: {what}"
    folder = getattr(e, "run_folder", None)
    if folder is None:
        return f"fastvae {command}: {what}; any checkpoint it wrote is intact"
    resume = _resume_command(e)
    if resume is None:
        return f"fastvae {command}: {what} before its first checkpoint; nothing to resume"
    return f"fastvae {command}: {what}; the last checkpoint in {folder} is intact: {resume}"


def _resume_command(e: BaseException) -> str | None:
    """What continues the run train stopped in with ``e`` (its folder and the flags it
    was given that a resume must repeat: ``train``), where that folder holds a checkpoint;
    else None."""
    from .checkpoint import CHECKPOINT_NAME

    folder = getattr(e, "run_folder", None)
    if folder is None or not (Path(folder) / CHECKPOINT_NAME).is_file():
        return None
    command = stops.resume_command(folder, getattr(e, "resume_flags", ()),
                                   getattr(e, "resume_world", 1))
    return f"{command} continues the run"


def _ranked(line: str) -> str:
    """``line``, naming its rank where another rank may print its own."""
    rank = ranks.dist_env()[0]
    return f"[rank {rank}] {line}" if rank else line


def _say(line: str, rank_0_says_it: bool) -> None:
    """``line`` printed, or, where rank 0 prints it (a failure every rank meets, or one
    rank 0 reports for them all), left for torchrun's report of this rank alone."""
    if rank_0_says_it:
        ranks.leave_word(line)
    else:
        print(line, file=sys.stderr)


def _peer_lost(e: BaseException) -> bool:
    """Whether ``e`` is a collective failing because another process of the run is gone
    (gloo's "Connection closed by peer", NCCL's errors, torch's DistError)."""
    import torch.distributed as dist

    if getattr(e, "resume_world", 1) <= 1:
        return False
    if isinstance(e, getattr(dist, "DistError", ())):
        return True
    text = str(e)
    return any(s in text for s in ("gloo", "NCCL", "Connection closed by peer",
                                   "Connection reset by peer", "Broken pipe"))


def _left_to_rank_0(command: str, rank: int, world: int) -> bool:
    """Whether this process under torchrun does nothing, for a command that does not split
    its work over processes (eval, sample, bench): every rank would print the same
    numbers, write the same files (bench: timed with the others busy on the same cores);
    rank 0 alone does it, as one process, and says so."""
    if world <= 1:
        return False
    if rank == 0:
        print(f"fastvae {command}: note: it runs in one process; torchrun's other "
              f"{world - 1} process(es) do nothing", file=sys.stderr)
    return rank != 0


def main(argv=None) -> int:
    """Entry point of the ``fastvae`` command; returns the exit status."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] == "bench":
        try:
            rank, world, _ = ranks.dist_env()
        except ValueError:   # the benchmark itself needs no ranks
            rank, world = 0, 1
        if _left_to_rank_0("bench", rank, world):
            return 0
        with _warnings.as_command("fastvae bench"):
            return _run_bench(argv[1:])
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:  # said by the parser of the command they follow: "fastvae train: error: ..."
        after = args.command in argv and argv.index(unknown[0]) > argv.index(args.command)
        (parser.commands[args.command] if after else parser).error(
            f"unrecognized arguments: {' '.join(unknown)}")
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    # under torchrun rank 0 alone says what every rank meets alike (a bad flag; a loss,
    # averaged over the ranks: fastvae.ranks.alike); another rank says what may be its own
    try:
        rank, world, _ = ranks.dist_env()
    except ValueError as e:   # before any rank's work: every later dist_env() would raise
        print(f"fastvae {args.command}: error: {e}", file=sys.stderr)
        return 2
    if args.command in ("eval", "sample") and _left_to_rank_0(args.command, rank, world):
        return 0
    with _warnings.as_command(_ranked(f"fastvae {args.command}")):
        return _run(args, quiet=rank != 0)


def _run(args, quiet: bool) -> int:
    """The command's handler, its failures said as :func:`main` promises."""
    import torch

    from .checkpoint import CheckpointError
    from .data import DataError
    from .runs import MissingExtra, RunFolderError
    from .train import NonFiniteLoss

    threads = torch.get_num_threads()
    try:
        with stops.handled():
            return int(args.func(args) or 0)
    except (DataError, CheckpointError, RunFolderError, MissingExtra, ValueError, OSError) as e:
        # OSError: the file system refused (disk full, read-only, ...); its message names
        # the file (WriteError adds that the previous version is intact).
        if _env.debug():
            raise
        line = f"fastvae {args.command}: error: {e}"
        resume = _resume_command(e)   # train's file system refusals
        line = _ranked(line if resume is None else f"{line}; {resume} from its last checkpoint")
        _say(line, quiet and getattr(e, "alike", False))
        return 2
    except NonFiniteLoss as e:
        _say(_ranked(f"fastvae {args.command}: training stopped: {e}"),
             quiet and getattr(e, "alike", False))
        return 3
    except (RuntimeError, MemoryError) as e:  # out of memory: --hidden, --batch-size, --n,
        # --k too big (numpy's picture grid raises MemoryError)
        prog = f"fastvae {args.command}"
        line = el.out_of_memory_line(prog, e, "try smaller sizes")
        if line is None:   # a full disk behind a library's error (torch.compile's cache)
            line = el.disk_full_line(prog, e, "free space there, or run without --compile")
            resume = _resume_command(e)
            line = line if line is None or resume is None else f"{line}; {resume}"
        if line is None and el.no_compiler_why(e):   # inductor's CPU code needs C++
            e.resume_flags = [*getattr(e, "resume_flags", ()), "--no-compile"]
            resume = _resume_command(e)
            line = el.no_compiler_line(prog, e, f"{el.NO_COMPILER_FIX}, or run without --compile"
                                       + (f"; {resume}" if resume else ""))
        if line is None and _peer_lost(e) and not _env.debug():
            # another process of the run failed (its own report is above or beside
            # this) or was stopped alone (a signal to one node: it says nothing); what
            # this one can add is that the checkpoint is intact
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            resume = _resume_command(e)
            print(_ranked(f"{prog}: error: another process of the run failed or was stopped "
                          f"({first}); "
                          + (f"{resume} from its last checkpoint" if resume else
                             "no checkpoint was written")), file=sys.stderr)
            return 1
        if line is None:
            raise
        print(_ranked(line), file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:
        # one Ctrl-C reaches every rank: rank 0 alone says so. A SIGTERM may have reached
        # this rank alone (a kill of its pid, a scheduler's stop on its node), every rank
        # (a scheduler's stop of the job), or come from torchrun stopping the others after
        # one failed, which no rank can tell apart: each rank it reaches says so, and
        # nothing more, or one stopped alone is named by torchrun's exit code only
        if not quiet or isinstance(e, Terminated):
            print(_ranked(_interrupted_line(args.command, e)), file=sys.stderr)
        return 128 + signal.SIGTERM if isinstance(e, Terminated) else 130
    finally:   # --threads is for this command only (main may be called in a process)
        torch.set_num_threads(threads)


def console(argv=None) -> int:
    """The ``fastvae`` command's entry point: :func:`main`, then its status kept through
    the interpreter's exit (``stops.exiting``)."""
    try:
        status = main(argv)
    except Exception:
        if not ranks.group_kept():
            raise
        # a traceback's error (a rank's own, not one the command words), printed as the
        # interpreter would, whose exit the kept group would hang or abort: left to it, the
        # rank waited there until torchrun killed it, its status 1 lost
        sys.excepthook(*sys.exc_info())
        status = 1
    stops.exiting()
    if ranks.group_kept():
        # a failed torchrun run: the kept group's threads would meet the interpreter's
        # shutdown and abort the process (signal 6) in place of its status; what the
        # command wrote is flushed, and nothing else is left to run at exit
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):   # a closed pipe: the status still goes out
                pass
        os._exit(status)
    return status


if __name__ == "__main__":
    sys.exit(console())
