"""`fastvae train` under torchrun with one of train's functions wrapped to log its calls:
rank 0 alone writes checkpoint.pt (other ranks would write the same file at once, into a
folder they hold no lock on) and evaluates the test set (every rank evaluated it whole, the
same numbers N times over), and every epoch visits the data in a new order
(DistributedSampler's order depends on the epoch given to it), as a single process
reshuffles each epoch."""
import _torchrun


def _train_with(tmp_path, name: str, logged: str) -> list:
    """The lines ``fastvae.train.<name>`` logged (``logged``: an f-string expression of
    its arguments) over a 2-epoch run on 2 ranks."""
    log = tmp_path / "calls"
    script = _torchrun.command(tmp_path, f"""
        import os
        import fastvae.train as T
        real = T.{name}
        def wrapped(*args):
            line = {logged}
            if line is not None:
                with open({str(log)!r}, "a") as f:
                    f.write(line + "\\n")
            return real(*args)
        T.{name} = wrapped
    """)
    r = _torchrun.run(tmp_path, script, *_torchrun.TRAIN, "--epochs", "2",
                      "--out", tmp_path / "run")
    assert r.returncode == 0, r.stderr[-3000:]
    return log.read_text().split()


def test_only_rank_0_writes_the_checkpoint(tmp_path):
    assert _train_with(tmp_path, "save_checkpoint", 'os.environ["RANK"]') == ["0", "0"]


def test_only_rank_0_evaluates_the_test_set(tmp_path):
    # the untrained model's, then each of the 2 epochs'
    assert _train_with(tmp_path, "evaluate", 'os.environ["RANK"]') == ["0", "0", "0"]


def test_each_epoch_under_torchrun_has_its_own_order(tmp_path):
    # _train_epoch(run, model, guard, train_x, order, epoch, is_main): rank 0's first 20
    first, second = _train_with(tmp_path, "_train_epoch",
                                '",".join(map(str, args[4][:20].tolist())) if args[6] else None')
    assert first != second
