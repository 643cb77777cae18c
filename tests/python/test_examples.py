"""Runs every examples/*.py (CPU only) and compares what it prints with the expected output committed
next to it (examples/<name>.out): the text must match, numbers within a relative 1e-3 (absolute 1e-4
near zero), so that another compiler's last-bit rounding does not fail the test while a changed
result does."""
import glob
import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
EXAMPLES = sorted(glob.glob(os.path.join(ROOT, "examples", "*.py")))
NUMBER = re.compile(r"-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?")


def split(line):
    """A line as (its text with every number replaced by #, the numbers)."""
    return NUMBER.sub("#", line), [float(x) for x in NUMBER.findall(line)]


def test_every_example_has_expected_output():
    assert EXAMPLES, "no examples found"
    for path in EXAMPLES:
        assert os.path.exists(path[:-3] + ".out"), f"{os.path.basename(path)} has no expected output"


@pytest.mark.parametrize("path", EXAMPLES, ids=[os.path.basename(p) for p in EXAMPLES])
def test_example_output(path):
    env = dict(os.environ, PYTHONPATH=os.path.join(ROOT, "python"), OMP_NUM_THREADS="1")
    run = subprocess.run([sys.executable, path], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    with open(path[:-3] + ".out") as f:
        want = f.read().splitlines()
    got = run.stdout.splitlines()
    assert len(got) == len(want), run.stdout
    for g, w in zip(got, want):
        (gt, gn), (wt, wn) = split(g), split(w)
        assert gt == wt, f"got:  {g}\nwant: {w}"
        assert gn == pytest.approx(wn, rel=1e-3, abs=1e-4), f"got:  {g}\nwant: {w}"
