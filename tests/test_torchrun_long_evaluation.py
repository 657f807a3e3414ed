"""Under torchrun rank 0 alone evaluates the test set (the untrained model's, each
epoch's) while the other ranks wait: in the default group that wait was bounded by its
timeout (NCCL's 10 minutes, gloo's 30), past which a long evaluation ended the run as a
lost peer. They wait, as for the final estimate, in a group of their own."""
import _torchrun


def test_an_evaluation_longer_than_the_group_timeout_is_waited_for(tmp_path):
    # the default group's timeout 5 s, each evaluation 7 s: the untrained model's (in
    # ranks.together) and the epoch's (ranks.from_rank_0)
    script = _torchrun.command(tmp_path, """
        import datetime, time
        import torch
        from fastvae import ranks
        import fastvae.train as T

        def init_group(backend):
            import torch.distributed.nn.functional  # noqa: F401
            torch.distributed.init_process_group(backend,
                                                 timeout=datetime.timedelta(seconds=5))
        ranks.init_group = init_group
        real = T.evaluate

        def slow(*args):
            time.sleep(7)
            return real(*args)
        T.evaluate = slow
    """)
    r = _torchrun.run(tmp_path, script, *_torchrun.TRAIN, "--out", tmp_path / "run")
    assert r.returncode == 0, r.stderr[-3000:]
    assert (tmp_path / "run" / "checkpoint.pt").is_file()
