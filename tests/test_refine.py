"""Tests of refine.py's words-into-signal functions on hand-computed cases.

Run: python -m pytest -q tests/test_refine.py
"""
import math

import refine

import pytest
import torch

from refine import (Attempt, RefinementRecord, alpha_schedule, critique_rewards,
                    group_advantages, judge_rewards, long_thought, near_duplicate, poser_rewards,
                    refine_rounds, refinement_pairs, revision_gain, should_continue_refining,
                    solver_rewards, token_credit)


def test_poser_rewards_learnability_invalid_and_duplicates():
    rewards = poser_rewards([0.25, 0.0, 1.0, None, 0.5], [True, True, True, False, True],
                            [False, False, False, False, True])
    assert rewards == [0.75, 0.0, 0.0, -1.0, -1.0]
    assert poser_rewards([0.5], [True], [True], duplicate_reward=-0.5) == [-0.5]


def test_near_duplicate_marks_only_later_repeats():
    texts = ["Find x: 3 + x = 7.", "find X:  3+x = 7", "List the primes below 20.",
             "Find x: 3 + x = 7!", "Sort these: 9 4 1"]
    assert near_duplicate(texts, threshold=0.8) == [False, True, False, True, False]
    assert near_duplicate(["ab", "ab", ""], threshold=0.9) == [False, True, False]
    # lowering the threshold makes loosely similar texts duplicates
    assert near_duplicate(["abcdef", "abcdxy"], threshold=0.3) == [False, True]
    assert near_duplicate(["abcdef", "abcdxy"], threshold=0.5) == [False, False]


def test_solver_rewards_and_alpha_schedule():
    rewards = solver_rewards([True, False, None, True, None], [False, True, True, None, None], 0.25)
    assert rewards == pytest.approx([0.75, 0.25, 0.25, 1.0, 0.0])
    assert alpha_schedule(0, 100, 0.2) == 1.0
    assert alpha_schedule(50, 100, 0.2) == pytest.approx(0.6)
    assert alpha_schedule(100, 100, 0.2) == pytest.approx(0.2)
    assert alpha_schedule(500, 100, 0.2) == pytest.approx(0.2)


def test_judge_rewards_agreement():
    assert judge_rewards([True, False, None, True, None], [True, True, False, False, None]) == \
        [1.0, 0.0, 0.0, 0.0, None]


def test_revision_gain_and_critique_rewards():
    assert [revision_gain(o, r) for o, r in [(False, True), (True, False), (True, True),
                                             (None, True), (False, None)]] == [1, -1, 0, 1, 0]
    assert critique_rewards([[1, 0, 1, 0], [-1], []]) == [0.5, -1.0, 0.0]


def test_group_advantages_population_std_and_dropped_groups():
    adv, keep = group_advantages([1.0, 0.0, 0.0, 0.0, 0.5, 0.5, 3.0, 1.0], [0, 0, 0, 0, 1, 1, 2, 2])
    # group 0: mean 0.25, population std sqrt(3)/4
    std = math.sqrt(3) / 4
    expected = [0.75 / (std + 1e-6)] + [-0.25 / (std + 1e-6)] * 3 + [0.0, 0.0] + \
        [1 / (1 + 1e-6), -1 / (1 + 1e-6)]
    assert torch.allclose(adv, torch.tensor(expected, dtype=torch.float64))
    assert keep.tolist() == [True] * 4 + [False, False] + [True, True]


def test_token_credit_blames_from_the_flagged_step_on():
    steps = [1, 1, 2, 2, 3, 3, 3]
    assert token_credit(-0.5, steps, 2).tolist() == [0, 0, -0.5, -0.5, -0.5, -0.5, -0.5]
    assert token_credit(-0.5, steps, None).tolist() == [-0.5] * 7
    assert token_credit(0.8, steps, 2).tolist() == pytest.approx([0.8] * 7)
    assert token_credit(-1.0, torch.tensor(steps), 1).tolist() == [-1.0] * 7


def test_refinement_pairs():
    fixed = RefinementRecord("P1", "wrong", False, [
        Attempt("c-good", ["right1", "wrong2"], [True, False]),   # mean gain 0.5
        Attempt("c-bad", ["wrong3"], [False]),                    # mean gain 0
    ])
    broken = RefinementRecord("P2", "right", True, [Attempt("c-only", ["oops"], [False])])
    tie = RefinementRecord("P3", "s", True, [Attempt("a", ["s2"], [True]), Attempt("b", [], [])])
    pairs = refinement_pairs([fixed, broken, tie])
    solve = [(p.problem, p.chosen, p.rejected) for p in pairs if p.role == "solve"]
    judge = [(p.problem, p.solution, p.chosen, p.rejected) for p in pairs if p.role == "judge"]
    assert solve == [("P1", "right1", "wrong"), ("P2", "right", "oops")]
    assert judge == [("P1", "wrong", "c-good", "c-bad")]  # P3's critiques tie at 0


def test_long_thought_format():
    text = long_thought("1+1=3\nAnswer: 3\n", [("Step 1 is wrong.\nVerdict: incorrect",
                                                "1+1=2\nAnswer: 2")], "2")
    assert text == ("1+1=3\nAnswer: 3\nCritique:\nStep 1 is wrong.\nVerdict: incorrect\n"
                    "Revision:\n1+1=2\nAnswer: 2\nFinal:\nAnswer: 2")
    assert text.splitlines()[-1] == "Answer: 2"
    assert long_thought("Answer: 5", [], "5") == "Answer: 5\nFinal:\nAnswer: 5"


def test_should_continue_refining():
    assert should_continue_refining([])
    assert should_continue_refining([0.0, 0.5])
    assert not should_continue_refining([0.5, 0.0])
    assert not should_continue_refining([-1.0])


def fakes(judgements, revisions):
    calls = []

    def solve(problem):
        return "s0"

    def judge(problem, solution):
        calls.append(solution)
        return judgements[solution]

    def revise(problem, solution, critique):
        return revisions[solution]
    return solve, judge, revise, calls


def test_refine_rounds_stops_when_accepted():
    solve, judge, revise, calls = fakes(
        {"s0": ("Step 1 is wrong.", False), "s1": ("All steps hold.", True)},
        {"s0": "s1"})
    history = refine_rounds(solve, judge, revise, "P", max_rounds=5)
    assert history == [("s0", "Step 1 is wrong.", False), ("s1", "All steps hold.", True)]
    assert calls == ["s0", "s1"]


def test_refine_rounds_stops_without_gain_and_at_max_rounds():
    solve, judge, revise, _ = fakes({"s0": ("c0", False), "s1": ("c1", None), "s2": ("c2", True)},
                                    {"s0": "s1", "s1": "s2"})
    assert [h[0] for h in refine_rounds(solve, judge, revise, "P", 5)] == ["s0", "s1"]
    # a finer score keeps refining while it rises, and max_rounds bounds the revisions
    solve, judge, revise, _ = fakes({"s0": ("c0", 0.2), "s1": ("c1", 0.5), "s2": ("c2", 0.7),
                                     "s3": ("c3", 0.7)}, {"s0": "s1", "s1": "s2", "s2": "s3"})
    assert [h[0] for h in refine_rounds(solve, judge, revise, "P", 5)] == ["s0", "s1", "s2", "s3"]
    assert [h[0] for h in refine_rounds(solve, judge, revise, "P", 1)] == ["s0", "s1"]
    assert [h[0] for h in refine_rounds(solve, judge, revise, "P", 0)] == ["s0"]


def test_duplicate_posings_ignore_the_family_template():
    header = "Find a,b,c (1=true, 0=false) so that all hold:"
    problems = [f"{header}\nc&b\nc->b\n~a", f"{header}\na|b\n~b\nc^a",
                f"{header}\nc&b\nc->b\n~a", None, "Rule: add.\nSequence: 1, 2, ?"]
    families = ["deduction", "deduction", "deduction", "deduction", "induction"]
    # the second differs only below the shared header: not a duplicate; the third repeats the
    # first exactly; an invalid posing is never a duplicate
    assert refine.duplicate_posings(problems, families) == [False, False, True, False, False]
    assert refine.near_duplicate([f"{header}\nc&b", f"{header}\na|b"]) == [False, True]
