"""A single-process run has no other process to lose: an error whose text mentions gloo
or a closed connection (a library's own socket error) is not reported as "another
process of the run failed", it propagates as the error it is."""
from __future__ import annotations

import pytest

from fastvae import cli


def test_a_single_process_error_mentioning_a_closed_peer_is_not_blamed_on_a_peer(
        tmp_path, monkeypatch, capsys):
    (tmp_path / "checkpoint.pt").write_bytes(b"")

    def fails(args):
        e = RuntimeError("[gloo] Connection closed by peer")
        e.run_folder, e.resume_world = str(tmp_path), 1
        raise e
    monkeypatch.setattr(cli, "_cmd_train", fails)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.delenv("RANK", raising=False)
    with pytest.raises(RuntimeError, match="Connection closed by peer"):
        cli.main(["train", "--epochs", "2"])
    assert "another process" not in capsys.readouterr().err
