"""Tests of refine.py's words-into-signal functions on hand-computed cases.

Run: python -m pytest -q tests/test_refine.py
"""
import math
from dataclasses import dataclass

import refine

import pytest
import torch

from refine import (Attempt, Posing, RefinementRecord, alpha_schedule, critique_rewards,
                    group_advantages, long_thought, near_duplicate, refine_rounds,
                    refinement_pairs, revision_gain, self_play_samples, token_credit)


def test_near_duplicate_marks_only_later_repeats():
    texts = ["Find x: 3 + x = 7.", "find X:  3+x = 7", "List the primes below 20.",
             "Find x: 3 + x = 7!", "Sort these: 9 4 1"]
    assert near_duplicate(texts, threshold=0.8) == [False, True, False, True, False]
    assert near_duplicate(["ab", "ab", ""], threshold=0.9) == [False, True, False]
    # lowering the threshold makes loosely similar texts duplicates
    assert near_duplicate(["abcdef", "abcdxy"], threshold=0.3) == [False, True]
    assert near_duplicate(["abcdef", "abcdxy"], threshold=0.5) == [False, False]


@dataclass
class Said:
    """A stand-in completion: only its token ids (and its prompt's) matter to the samples."""
    n: int
    prompt_ids: tuple = ()

    @property
    def ids(self):
        return list(range(self.n))


def posing(correct, verdicts, pointers=None, gains=None, revised=None, family="deduction",
           pose=True, valid=True, duplicate=False, held_out=False):
    n = len(correct)
    return Posing(family, Said(2) if pose else None, object() if valid else None, duplicate,
                  held_out, solutions=[Said(3) for _ in correct], correct=correct,
                  critiques=[Said(1) for _ in correct], verdicts=verdicts,
                  pointers=pointers or [None] * n, steps=[[1, 2, 3]] * n,
                  revisions=[[Said(2)] if r else [] for r in (revised or [False] * n)],
                  revised=[[Said(3)] if r else [] for r in (revised or [False] * n)],
                  gains=[[g] if r else [] for g, r in zip(gains or [0.0] * n,
                                                           revised or [False] * n)])


def test_every_roles_reward_follows_its_equation():
    alpha = 0.25
    p = posing([1.0, 0.0, 0.0, 1.0], [True, True, None, False], gains=[0.0, 1.0, -1.0, 0.0],
               revised=[False, True, True, True])
    _, rewards = self_play_samples([p, posing([], [], valid=False),
                                    posing([1.0], [True], duplicate=True),
                                    posing([1.0, 1.0], [True, True]),
                                    posing([], [], valid=False, held_out=True)], alpha)
    # poser: 1 - p_hat (p_hat 0.5); invalid -1; duplicate -1; always solved 0; held out 0
    assert rewards["pose"] == [0.5, -1.0, -1.0, 0.0, 0.0]
    # solver: (1 - alpha) [verdict correct] + alpha [verified]
    assert rewards["solve"][:4] == pytest.approx([1.0, 0.75, 0.0, 0.25])
    # judge: agreement with the verifier (unparsable: 0) + its critique's revision gain
    assert rewards["judge"][:4] == [1.0, 1.0, -1.0, 0.0]
    assert rewards["revise"] == [1.0, -1.0, 0.0]  # only the revised solutions


def test_samples_take_group_advantages_and_token_credit():
    p = posing([1.0, 0.0], [True, False], pointers=[None, 2])
    samples, _ = self_play_samples([p], alpha=1.0)
    solve = [coef for role, _, coef in samples if role == "solve"]
    # rewards 1 and 0 in one group: advantages +1 and -1 (population std 0.5)
    assert solve[0] == pytest.approx([1.0] * 3, rel=1e-5)
    assert solve[1] == pytest.approx([0.0, -1.0, -1.0], rel=1e-5)  # step 1 spared, blamed from 2
    assert [role for role, _, _ in samples].count("pose") == 0  # a lone poser has no group
    # posers are compared within their family across the batch
    two = [posing([1.0, 0.0], [True, False]), posing([1.0, 1.0], [True, True])]
    pose = [coef for role, _, coef in self_play_samples(two, 1.0)[0] if role == "pose"]
    assert pose == [pytest.approx([1.0, 1.0], rel=1e-5), pytest.approx([-1.0, -1.0], rel=1e-5)]


def test_a_revision_that_fixes_the_answer_joins_the_solutions_in_the_solve_prompt():
    p = posing([0.0, 0.0, 0.0], [False, False, True], gains=[1.0, 0.0, 0.0],
               revised=[True, True, False])
    p.solutions = [Said(3, prompt_ids=("solve", k)) for k in range(3)]
    p.revisions[0] = [Said(2, prompt_ids=("revise", 0))]  # the reviser's tokens past its start
    p.revised[0] = [Said(4, prompt_ids=("solve", 0))]  # the whole revision, in the solve prompt
    samples, rewards = self_play_samples([p], alpha=1.0)
    corrected = [(c, coef) for role, c, coef in samples if role == "corrected"]
    assert len(corrected) == 1 and rewards["solve"] == [0.0, 0.0, 0.0]
    c, coef = corrected[0]
    assert c is p.revised[0][0]
    revise = [c for role, c, _ in samples if role == "revise"]
    assert revise == [p.revisions[0][0], p.revisions[1][0]]  # the reviser learns its own tokens
    # rewards 0, 0, 0 and 1 in one group: mean 1/4, population std sqrt(3)/4
    assert coef == pytest.approx([math.sqrt(3)] * 4, rel=1e-5)
    solve = [coef for role, _, coef in samples if role == "solve"]
    assert solve == [pytest.approx([-1 / math.sqrt(3)] * 3, rel=1e-5)] * 3


def test_several_revisions_of_one_critique_each_learn_and_the_critique_earns_their_mean_gain():
    # an all-wrong group (GRPO drops it): three tries from the first critique, two of them right
    p = posing([0.0, 0.0], [False, False])
    p.revisions = [[Said(2), Said(2), Said(2)], [Said(2)]]
    p.revised = [[Said(3), Said(4), Said(5)], [Said(3)]]
    p.gains = [[1.0, 0.0, 1.0], [0.0]]
    samples, rewards = self_play_samples([p], alpha=1.0)
    assert rewards["judge"] == pytest.approx([1 + 2 / 3, 1.0])
    assert rewards["revise"] == [1.0, 0.0, 1.0, 0.0]
    corrected = [c for role, c, _ in samples if role == "corrected"]
    assert corrected == [p.revised[0][0], p.revised[0][2]]
    # solve group: rewards 0, 0 (the solutions) and 1, 1 (the rescues): advantages -1 and +1
    solve = [coef for role, _, coef in samples if role == "solve"]
    assert solve == [pytest.approx([-1.0] * 3, rel=1e-5)] * 2
    rescues = [coef for role, _, coef in samples if role == "corrected"]
    assert rescues == [pytest.approx([1.0] * 3, rel=1e-5), pytest.approx([1.0] * 5, rel=1e-5)]


def test_a_gain_on_a_wrong_solution_never_pushes_the_judge_off_accepting_a_right_one():
    # two right solutions accepted (r = 1), two wrong ones rejected, one of them fixed (r = 2):
    # in one group the accepts would sit below the mean (1.25) and be pushed down
    p = posing([1.0, 1.0, 0.0, 0.0], [True, True, False, False], gains=[0.0, 0.0, 1.0, 0.0],
               revised=[False, False, True, True])
    samples, rewards = self_play_samples([p], alpha=1.0)
    assert rewards["judge"] == [1.0, 1.0, 2.0, 1.0]
    judge = [coef for role, _, coef in samples if role == "judge"]
    # the accepts tie within their group (dropped); the rejections differ by their gain alone
    assert judge == [pytest.approx([1.0], rel=1e-5), pytest.approx([-1.0], rel=1e-5)]
    # a wrong verdict on a right solution is still pushed down against a right one
    p = posing([1.0, 1.0], [True, False], gains=[0.0, 0.0], revised=[False, True])
    judge = [coef for role, _, coef in self_play_samples([p], 1.0)[0] if role == "judge"]
    assert judge == [pytest.approx([1.0], rel=1e-5), pytest.approx([-1.0], rel=1e-5)]


def test_an_audit_is_rewarded_for_agreement_alone():
    p = posing([0.0], [False], gains=[1.0], revised=[True])
    p.audits = [(Said(2), True, 1.0), (Said(2), True, 0.0), (Said(2), None, 0.0)]
    _, rewards = self_play_samples([p], 1.0)
    assert rewards["judge"] == [2.0, 1.0, 0.0, 0.0]  # its critique's gain counts, an audit's not


def test_alpha_schedule():
    assert alpha_schedule(0, 100, 0.2) == 1.0
    assert alpha_schedule(50, 100, 0.2) == pytest.approx(0.6)
    assert alpha_schedule(100, 100, 0.2) == pytest.approx(0.2)
    assert alpha_schedule(500, 100, 0.2) == pytest.approx(0.2)


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
    # a pointer past the last step (the solution stopped short) blames the last step
    assert token_credit(-0.5, steps, 9).tolist() == [0, 0, 0, 0, -0.5, -0.5, -0.5]


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


def scripted_refinement(verdicts, revisions, scores):
    """judge/revise/score doubles over solution names, recording every call they get."""
    calls = []

    def judge(problems, solutions):
        calls.append(("judge", list(solutions)))
        return [(f"c({s})", verdicts[s]) for s in solutions]

    def revise(problems, solutions, critiques):
        calls.append(("revise", list(solutions)))
        assert critiques == [f"c({s})" for s in solutions]  # each revision reads its critique
        return [revisions[s] for s in solutions]
    return judge, revise, lambda problem, solution: scores[solution], calls


def test_refine_rounds_batches_chains_and_stops_each_on_its_own_rule():
    verdicts = {"a0": False, "a1": False, "b0": True, "c0": False, "d0": False, "d1": False,
                "d2": False, "e0": False, "e1": True}
    revisions = {"a0": "a1", "a1": "a2", "c0": "c1", "d0": "d1", "d1": "d2", "d2": "d3",
                 "e0": "e1"}
    scores = {"a0": 0, "a1": 1, "a2": 1, "b0": 0, "c0": 0, "c1": 0,
              "d0": 0.2, "d1": 0.5, "d2": 0.7, "d3": 0.9, "e0": 0, "e1": 1}
    judge, revise, score, calls = scripted_refinement(verdicts, revisions, scores)
    chains = refine_rounds(judge, revise, score, list("ABCDE"), ["a0", "b0", "c0", "d0", "e0"],
                           max_rounds=3)
    # a: fixed, rejected anyway, and the second revision gains nothing (it stays right);
    # b: accepted at once; c: the revision gains nothing; d: rises every round until
    # max_rounds; e: fixed, then accepted. Chains that end on a revision leave it unjudged.
    assert [[r.solution for r in chain] for chain in chains] == [
        ["a0", "a1", "a2"], ["b0"], ["c0", "c1"], ["d0", "d1", "d2", "d3"], ["e0", "e1"]]
    assert [r.critique for r in chains[0]] == ["c(a0)", "c(a1)", None]
    assert [(r.critique, r.verdict) for r in chains[4]] == [("c(e0)", False), ("c(e1)", True)]
    assert [r.score for r in chains[3]] == [0.2, 0.5, 0.7, 0.9]
    # one batched call per role per round
    assert calls == [("judge", ["a0", "b0", "c0", "d0", "e0"]),
                     ("revise", ["a0", "c0", "d0", "e0"]),
                     ("judge", ["a1", "d1", "e1"]), ("revise", ["a1", "d1"]),
                     ("judge", ["d2"]), ("revise", ["d2"])]
    assert [[r.solution for r in c]
            for c in refine_rounds(judge, revise, score, ["B"], ["b0"], 0)] == [["b0"]]


def test_refine_rounds_calls_every_round_even_with_no_live_chain():
    judge, revise, score, calls = scripted_refinement({"s": True}, {}, {"s": 1})
    assert [[r.solution for r in c] for c in refine_rounds(judge, revise, score, ["P"], ["s"], 2)] \
        == [["s"]]
    assert calls == [("judge", ["s"]), ("revise", []), ("judge", []), ("revise", [])]


def test_chain_records_feed_refinement_pairs():
    judge, revise, score, _ = scripted_refinement(
        {"w": False, "r1": False}, {"w": "r1", "r1": "r2"}, {"w": 0, "r1": 1, "r2": 0})
    # two chains from the same wrong solution "w": each fixes it, then breaks the fix
    chains = refine_rounds(judge, revise, score, ["P", "P"], ["w", "w"], 2)
    records = refine.chain_records("P", chains)
    assert [(r.solution, r.correct, [(a.critique, a.revisions, a.revisions_correct)
                                     for a in r.attempts]) for r in records] == [
        ("w", False, [("c(w)", ["r1"], [True]), ("c(w)", ["r1"], [True])]),
        ("r1", True, [("c(r1)", ["r2"], [False])]),
        ("r1", True, [("c(r1)", ["r2"], [False])])]
    solve = [(p.chosen, p.rejected) for p in refinement_pairs(records) if p.role == "solve"]
    assert solve == [("r1", "w"), ("r1", "w"), ("r1", "r2"), ("r1", "r2")]
    # a critique that accepts a wrong solution gains 0 and loses to one that led to a fix
    accepting = [[refine.Round("w", 0, "fine", True)],
                 [refine.Round("w", 0, "step 1", False), refine.Round("r1", 1)]]
    pairs = refinement_pairs(refine.chain_records("P", accepting))
    assert [(p.role, p.chosen, p.rejected) for p in pairs] == [("solve", "r1", "w"),
                                                              ("judge", "step 1", "fine")]


def test_duplicate_posings_ignore_the_template_of_their_cell():
    header = "Find a,b,c (1=true, 0=false) so that all hold:"
    problems = [f"{header}\nc&b\nc->b\n~a", f"{header}\na|b\n~b\nc^a",
                f"{header}\nc&b\nc->b\n~a", None, "Rule: add.\nSequence: 1, 2, ?"]
    families = ["deduction", "deduction", "deduction", "deduction", "induction"]
    # the second differs only below the shared header: not a duplicate; the third repeats the
    # first exactly; an invalid posing is never a duplicate
    assert refine.duplicate_posings(problems, families) == [False, False, True, False, False]
    assert refine.near_duplicate([f"{header}\nc&b", f"{header}\na|b"]) == [False, True]
    # a template line shared within a cell, not across the family: two short sequences of one
    # level differ, though with the line kept they would look alike
    two = ["Sequence: 28, 29, 27, 28\nFind the term 2 after the last.",
           "Sequence: 28, 27, 26\nFind the term 2 after the last.",
           "Sequence: 4, 5\nFind the term 1 after the last."]
    assert refine.near_duplicate(two[:2]) == [False, True]
    assert refine.duplicate_posings(two, [("induction", 2)] * 2 + [("induction", 1)]) == \
        [False, False, False]
