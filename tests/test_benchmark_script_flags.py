"""Every standalone script under benchmarks/ parses its flags with the project's parser
(``fastvae.options.Parser``): ``--help`` works on a machine without a GPU, and a bad value
is one line naming the flag, before any work (plain argparse printed the whole usage block
first, took ``--rep`` for ``--reps``, and an empty or blocked ``--out`` was an OSError
traceback)."""
import argparse
import pathlib

import pytest

from fastvae import options as o

from _doc_commands import script

ROOT = pathlib.Path(__file__).resolve().parents[1]
SCRIPTS = sorted(p.stem for p in (ROOT / "benchmarks").glob("*.py")
                 if not p.name.startswith("bench_") and "\ndef main(" in p.read_text()
                 and 'if __name__ == "__main__":' in p.read_text())


class _Built(Exception):
    pass


def test_the_scripts_are_found():
    assert {"host_path", "gpu_tiles", "gpu_probe", "gpu_hvae_loop"} <= set(SCRIPTS)


@pytest.mark.parametrize("name", SCRIPTS)
def test_script_help_and_parser(name, capsys, monkeypatch):
    main = script(name).main
    built = []

    def catch(self, args=None, namespace=None):
        built.append(self)
        raise _Built
    with monkeypatch.context() as m:
        m.setattr(argparse.ArgumentParser, "parse_args", catch)
        with pytest.raises(_Built):
            main([])
    assert isinstance(built[0], o.Parser), f"{name}.py parses with {type(built[0]).__name__}"
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    assert capsys.readouterr().out.startswith("usage:")


def _one_line_error(capsys, main, argv, flag):
    with pytest.raises(SystemExit) as e:
        main(argv)
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and len(err.splitlines()) == 1 and flag in err, err
    return err


@pytest.mark.parametrize("name", ["gpu_tiles", "gpu_probe", "gpu_hvae_loop"])
def test_gpu_script_refuses_bad_reps_and_out_in_one_line(name, capsys, tmp_path):
    main = script(name).main
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    bad = [["--out", ""], ["--out", str(blocker)], ["--out", str(blocker / "sub")],
           ["--budget-s", "-1"], ["--rep", "3"]]
    if name != "gpu_tiles":
        bad += [["--reps", "0"], ["--reps", str(2 ** 40)]]
    for argv in bad:
        _one_line_error(capsys, main, ["--smoke"] + argv, argv[0])
    assert blocker.is_file()


def test_gpu_tiles_refuses_offline_with_smoke(capsys):
    """--smoke interprets the kernels (TRITON_INTERPRET=1), which --offline then could not
    compile: a traceback after the import, now a usage line before it."""
    err = _one_line_error(capsys, script("gpu_tiles").main, ["--smoke", "--offline"],
                          "--offline")
    assert "--smoke" in err, err


@pytest.mark.parametrize("argv, flag", [
    (["--batch", str(2 ** 40)], "--batch"), (["--calls", "0"], "--calls"),
    (["--layers", "-1"], "--layers"), (["--profile", "x"], "--profile"),
    (["--op", "reparameterize", "--layers", "3"], "--layers"), (["--dtype", "fp8"], "--dtype")])
def test_host_path_refuses_bad_flags_in_one_line(argv, flag, capsys):
    _one_line_error(capsys, script("host_path").main, argv, flag)


def test_estimators_speed_bounds_its_threads(capsys, monkeypatch):
    """--threads 100000 reached torch.set_num_threads, where libgomp aborts the process."""
    mod = script("estimators_speed")
    monkeypatch.setattr(mod, "make_inputs", lambda *a: pytest.fail("not checked up front"))
    _one_line_error(capsys, mod.main, ["--threads", "100000"], "--threads")
