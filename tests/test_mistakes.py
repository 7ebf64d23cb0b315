"""Tests for mistakes.py: the pool of the model's own solutions, what each step trains on, and the
revise demonstrations it may and may not build. A scripted solver stands in for the model where
the pool's contents must be known; train.py's tests run the stage end to end (resume, torchrun).

Run: python -m pytest -q tests/test_mistakes.py
"""
import random

import eval as evaluation
import mistakes
import model as M
import roles
import sampling
import tasks
import train
import update

FAMILIES = "deduction,induction,abduction,corpus"


def scripted_pool(size):
    """The pool's problems and a text for each: the reference solution (right) for every third,
    else the reference corrupted (tasks.corrupt: one slip, or a miscount) until its answer is
    wrong."""
    rng, problems, texts = random.Random(0), mistakes.pool_problems(0, FAMILIES, size), []
    for i, task in enumerate(problems):
        text = tasks.solve(task)
        while i % 3 and evaluation.score(task, text):
            text = tasks.corrupt(task, rng)[0]
        texts.append(text)
    return problems, texts


def test_a_revise_demonstration_starts_on_the_teachers_fix_and_completes_the_reference():
    """On the teacher's corruptions every fix starts a prefix of the reference (but a slip in the
    Answer line, which the reviser writes itself: no start, no demonstration)."""
    rng, made = random.Random(1), 0
    for family in ("deduction", "induction", "corpus"):
        for _ in range(20):
            task = tasks.sample(family, rng.choice(tasks.LEVELS), rng, "train")
            wrong = tasks.corrupt(task, rng)[0]
            prompt = roles.revise_prompt(task.prompt, wrong, tasks.critique(task, wrong))
            start, demo = roles.split_prompt(prompt)[1], mistakes.revise_demo(task, wrong)
            assert (demo is None) == (start == "")
            if demo:
                made += 1
                assert demo[0] == prompt and start + demo[1] == tasks.solve(task)
            # the same error under a first line spaced otherwise (equal to the teacher, who
            # compares lines up to case and spacing): the start is no prefix of the reference
            first, later = wrong.split("\n", 1)
            if start and tasks.first_wrong_step(task, wrong) > 1:
                spaced = first.replace("=", " = ")
                assert spaced != first and mistakes.revise_demo(task, f"{spaced}\n{later}") is None
    assert made >= 30
    task = tasks.sample("deduction", 2, rng, "train")
    assert mistakes.revise_demo(task, tasks.solve(task)) is None  # right: nothing to fix


def test_the_pool_splits_by_the_verifier_and_keeps_abduction_out_of_revise_demos():
    problems, texts = scripted_pool(60)
    assert problems == mistakes.pool_problems(0, FAMILIES, 60)  # from the seed alone
    assert {t.family for t in problems} == set(FAMILIES.split(","))
    assert {t.level for t in problems} == set(tasks.LEVELS)
    right, wrong, fixes = mistakes.split_pool(0, FAMILIES, tuple(texts))
    assert right == [(t, x) for i, (t, x) in enumerate(zip(problems, texts)) if i % 3 == 0]
    assert wrong == [(t, x) for i, (t, x) in enumerate(zip(problems, texts)) if i % 3]
    demos = [(t.family, mistakes.revise_demo(t, x)) for t, x in wrong]
    assert fixes == [demo for family, demo in demos if demo and family != "abduction"]
    assert len(fixes) >= 20  # most of the slips it writes are fixable
    assert any(demo for family, demo in demos if family == "abduction")  # left out, not unfixable


def test_a_step_trains_on_the_mix_critiques_of_own_solutions_and_fixes(tiny, monkeypatch):
    """batch 8: 4 samples of the warm-up's mix, 4 teacher critiques of pool solutions (1 of a
    right one, 3 of wrong ones), the judge reading the whole reference solution, and 2 revise
    demos. The pool is sampled at the first step only, every problem once."""
    policy, tok = M.load(tiny)
    problems, texts = scripted_pool(30)
    text_of, asked, trained = dict(zip((t.prompt for t in problems), texts)), [], []

    def solver(policy_, tok_, prompts, cfg, gen):
        asked.extend(prompts)
        return [sampling.Completion([], [], text_of[p.split("#problem\n", 1)[1].split("\n#")[0]],
                                    True) for p in prompts]
    monkeypatch.setattr(mistakes.selfplay, "sample_texts", solver)
    monkeypatch.setattr(update, "train_on", lambda policy_, opt, samples, *rest: (
        trained.append(samples) or {"loss": 0.0}))
    cfg = train.parse_args([f"--families={FAMILIES}", "--batch=8", "--mistakes_pool=30",
                            "--judge_sees=solution"])
    state = {}
    for step in range(3):
        metrics, _ = mistakes.mistakes_step(policy, None, tok, cfg, step, 0, state)
    assert asked == [roles.solve_prompt(t.prompt) for t in problems]  # once, at step 0
    assert state["mistakes"] == texts and metrics["pool/right"] == 10 / 30

    def key(sample):
        return tuple(sample.prompt_ids), tuple(sample.ids)
    judged = {key(update.nll_sample(tok, "judge", roles.judge_prompt(
        task.prompt, tasks.solve(task), text), tasks.critique(task, text), cfg)):
        evaluation.score(task, text) for task, text in zip(problems, texts)}
    fixes = {key(update.nll_sample(tok, "revise", *demo, cfg))
             for demo in mistakes.split_pool(0, FAMILIES, tuple(texts))[2]}
    assert len(trained) == 3 and all(len(samples) == 10 for samples in trained)
    for samples in trained:
        assert [s.role for s in samples[4:]] == ["judge"] * 4 + ["revise"] * 2
        assert {s.role for s in samples[:4]} <= set(roles.DEMO_KINDS)  # the warm-up's mix
        assert [judged[key(s)] for s in samples[4:8]] == [1.0, 0.0, 0.0, 0.0]
        assert all(key(s) in fixes for s in samples[8:])
