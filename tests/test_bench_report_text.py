"""The bench's printed report: each speed-up in its own column (x eager, then x compile),
markdown aligning the four name columns left and the numbers right, the first-call
table's compile time in seconds beside eager's first call in ms, the busy-machine note
from a load of 1.0 up, and the command line as it was typed with or without ``bench``."""
from __future__ import annotations

import sys

import pytest

from fastvae.bench import report

ROW = dict(variant="compile", op="elbo", shape="B=4 D=8 L=2", dtype="fp32", median_ms=2.0,
           speedup_vs_eager=1.25, speedup_vs_compile=0.5, peak_extra_bytes=None,
           saved_bytes=None, kernels=3, gbps=12.0, pct_roofline=40.0)


def test_each_speedup_is_in_its_own_column():
    head, rule, body = report.format_table([ROW], markdown=True).splitlines()
    cells = dict(zip([c.strip() for c in head.strip("|").split("|")],
                     [c.strip() for c in body.strip("|").split("|")]))
    assert cells["x eager"] == "1.25" and cells["x compile"] == "0.50"
    assert cells["median ms"] == "2.000" and cells["% roof"] == "40.0"
    assert rule == "|---|---|---|---|" + "---:|" * 8


def test_first_calls_give_compile_seconds_beside_eagers_milliseconds():
    rows = [dict(ROW, first_call_ms=2500.0), dict(ROW, variant="eager", first_call_ms=12.0)]
    lines = report.format_first_calls(rows).splitlines()
    assert len(lines) == 2
    assert lines[1].endswith("fp32: compile 2.50 s (eager first call 12.0 ms)"), lines


@pytest.mark.parametrize("load,busy", [(0.99, False), (1.0, True)])
def test_a_load_of_one_is_busy(load, busy):
    env = dict(cpu_count=2, torch_threads=2, clock="wall", load_average=[load, 0.0, 0.0])
    assert bool(report.busy_note(env)) is busy


@pytest.mark.parametrize("argv", [["fastvae", "bench", "--quick"],
                                  ["python -m fastvae.bench", "--quick"]])
def test_the_command_line_keeps_its_flags(monkeypatch, argv):
    monkeypatch.setattr(sys, "argv", argv)
    assert report._bench_args() == ["--quick"]


@pytest.mark.parametrize("end,busy", [(2.9, False), (3.0, True), (None, False)])
def test_load_that_rose_during_the_run_is_busy(end, busy):
    """A run that starts quiet and ends beside other jobs is as suspect: the load at its
    end, less the bench's own threads (2 here), from 1.0 up is named after the table."""
    env = dict(cpu_count=2, torch_threads=2, clock="wall", load_average=[0.9, 3.1, 3.4],
               load_average_end=None if end is None else [end, 5.0, 4.0])
    note = report.busy_note(env)
    assert bool(note) is busy
    if busy:
        assert "at the end of the run (0.9 before it)" in note and "--cpu-time" in note
