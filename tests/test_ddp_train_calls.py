"""`fastvae train` under torchrun with some of train's functions wrapped to log their calls:
rank 0 alone writes checkpoint.pt (other ranks would write the same file at once, into a
folder they hold no lock on) and evaluates the test set (every rank evaluated it whole, the
same numbers N times over), and every epoch visits the data in a new order
(DistributedSampler's order depends on the epoch given to it), as a single process
reshuffles each epoch."""
import pytest

import _torchrun

# fastvae.train's function -> an f-string expression of its arguments logged per call
# (None: not logged)
LOGGED = {
    "save_checkpoint": 'os.environ["RANK"]',
    "evaluate": 'os.environ["RANK"]',
    # _train_epoch(run, model, guard, train_x, order, epoch, is_main): rank 0's first 20
    "_train_epoch": '",".join(map(str, args[4][:20].tolist())) if args[6] else None',
}


# the wrapper of one function, run before the command
WRAP = """
real_{name} = T.{name}
def wrapped_{name}(*args):
    line = {logged}
    if line is not None:
        with open({log!r}, "a") as f:
            f.write(line + "\\n")
    return real_{name}(*args)
T.{name} = wrapped_{name}
"""


@pytest.fixture(scope="module")
def calls(tmp_path_factory) -> dict:
    """{name: the lines it logged} over one 2-epoch run on 2 ranks with each of LOGGED's
    functions wrapped (one torchrun for the module: each costs ~13 CPU s)."""
    tmp_path = tmp_path_factory.mktemp("train_calls")
    script = _torchrun.command(tmp_path, "import os\nimport fastvae.train as T\n" + "".join(
        WRAP.format(name=name, logged=logged, log=str(tmp_path / name))
        for name, logged in LOGGED.items()))
    r = _torchrun.run(tmp_path, script, *_torchrun.TRAIN, "--epochs", "2",
                      "--out", tmp_path / "run")
    assert r.returncode == 0, r.stderr[-3000:]
    return {name: (tmp_path / name).read_text().split() for name in LOGGED}


def test_only_rank_0_writes_the_checkpoint(calls):
    assert calls["save_checkpoint"] == ["0", "0"]


def test_only_rank_0_evaluates_the_test_set(calls):
    # the untrained model's, then each of the 2 epochs'
    assert calls["evaluate"] == ["0", "0", "0"]


def test_each_epoch_under_torchrun_has_its_own_order(calls):
    first, second = calls["_train_epoch"]
    assert first != second
