"""A fresh tiny model learns to judge one cell: the short version of tests/bench_judge.py.

Judge-only training on contrastive pairs of one cell (corpus, level 1), then greedy judging
of held-out items, each once with its reference solution and once with a slipped one. Always
giving one verdict scores 0.5, so passing needs the comparison of the two answers, learned
from scratch in about a minute and a half.

Run: python -m pytest -q tests/test_judge_learning.py
"""

import argparse

import bench_judge

# seed 0, lr 4e-3 held at the peak (the judge-only phase's rate), 2 threads: held-out agreement
# 0.99 after 800 steps (91 s), the verdict check passed at step 500; the click moves with every
# redraw of the tokenizer's texts (0.62 at step 500 of a decaying rate after the teacher's
# miscounts, 0.99 before), so the test leaves it 300 steps
STEPS = 800


def test_a_fresh_model_learns_to_judge_one_cell(tmp_path):
    args = argparse.Namespace(role="judge", seconds=0, steps=STEPS, levels="1", eval_levels="",
                              n=100)
    row = bench_judge.run_seed(args, 0, ["--families=corpus", "--lr=4e-3", "--threads=2"],
                               str(tmp_path))
    assert row["steps"] == STEPS
    assert row["agreement"] > 0.5 + 3 * row["se"], row
    assert min(row["accepts_reference"], row["rejects_wrong"]) > 0.6, row
