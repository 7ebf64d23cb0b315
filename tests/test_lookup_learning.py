"""A fresh tiny model learns to copy at a fixed distance: the short version of
tests/bench_lookup.py, and the check that its training loop and exact match work.

Copying 8 letters that stand a fixed number of tokens back needs only positional attention,
which the tiny model learns within a hundred steps. Exact match needs all 8 letters (and
the end of text) right, so it is about 0 until the copy is learned, and the test asserts both
ends of that rise.

Run: python -m pytest -q tests/test_lookup_learning.py
"""

import argparse

import bench_lookup

STEPS = 100  # seed 0: exact match 0.00 at steps 20 and 40, 1.00 from 60 (about 5 s)


def test_a_fresh_model_learns_to_copy_at_a_fixed_distance():
    args = argparse.Namespace(steps=STEPS, every=20, batch=32, lr=4e-3, n=100, seed=0,
                              layers=2, hidden=128, pieces="tiny")
    rows, _ = bench_lookup.run_task("offset", args)
    assert [step for step, _, _ in rows] == [20, 40, 60, 80, 100]
    # low before the copy is learned (a metric that scored everything right would fail here)
    assert rows[0][2] < 0.5 < rows[-1][2], rows
