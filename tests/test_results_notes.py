"""A dated correction of an op's recorded ratios in benchmarks/RESULTS.md ("2026-12-05: every
dmol `x eager` above is against ...") sits at the end of a section that ran that op, where a
reader of those tables meets it. The dmol one had been appended at the file's end, and the
sections added after it left it under an IWAE kernel study."""
import os
import re

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTE = re.compile(r"^\d{4}-\d{2}-\d{2}: every (\w+) `x eager` above")


def sections(text):
    """(heading, body) of each ``###`` section."""
    parts = re.split(r"^### ", text, flags=re.M)
    return [(p.split("\n", 1)[0], p) for p in parts[1:]]


def test_every_dated_ratio_note_follows_a_run_of_its_op():
    with open(os.path.join(ROOT, "benchmarks", "RESULTS.md")) as f:
        text = f.read()
    notes = 0
    for heading, body in sections(text):
        for line in body.splitlines():
            m = NOTE.match(line)
            if m:
                notes += 1
                op = m.group(1)
                assert re.search(rf"--ops (\S+,)?{op}\b", body), (
                    f"the note on {op}'s ratios sits under '### {heading}', which runs no "
                    f"`--ops {op}`")
    assert notes, "no dated ratio note found: the pattern or RESULTS.md changed"
