"""Tests for selfplay.py: one step's rollouts of alive, of scalar GRPO and of refinement, with a
scripted sampler in place of the model (scripted_roles), so every reward, advantage, count and
sample can be asserted exactly.
Run: python -m pytest -q tests/test_selfplay.py
"""
import json
import os
import random

import eval as evaluation
import model as M
import roles
import sampling
import selfplay
import tasks
import train


def scripted_roles(tok, monkeypatch, known_tasks=None, copies=False, wrong=False):
    """A test double for the sampler, installed in selfplay: poses distinct valid instances,
    solves right and wrong in turn (`wrong`: every solution wrong; a wrong one is the reference
    corrupted until its final answer is wrong), judges with the programmatic critic, revises
    correctly (`copies`: the right answer under a wrong first step). It knows a problem's task
    from `known_tasks`, from what the environment built from a posing (with the step's
    randomness, so not the double's own guess) or drew."""
    task_of = {} if known_tasks is None else known_tasks
    rng, critique_of, solved = random.Random(0), {}, [0]

    def shown_to_judge(task, text):  # remember the critique this text will need
        critique_of[roles.judge_prompt(task.prompt, task.answer, text)] = tasks.critique(task, text)
        return text

    def text_for(prompt):
        role = roles.role_of(prompt)
        if role == "pose":
            family, level = prompt.split("\n")[-2].split()[1:]
            task = None
            while not isinstance(task, tasks.Task) or task.prompt in task_of:
                # a posing the environment builds in train, and not one posed before
                text = tasks.pose_text(tasks.sample(family, int(level), rng))
                task = tasks.validate(family, text, int(level), split="train")
            task_of[task.prompt] = task
            return text
        if role == "judge":  # the solutions it wrote, else an audit: the reference or a slip
            if prompt not in critique_of:
                task = known(prompt.split("#problem\n", 1)[1].split("\n#", 1)[0])
                reference = roles.judge_prompt(task.prompt, task.answer, tasks.solve(task))
                return tasks.critique(task, tasks.solve(task)) if prompt == reference else \
                    "Verdict: incorrect"
            return critique_of[prompt]
        task = known(prompt.split("#problem\n", 1)[1].split("\n#", 1)[0])
        if role == "solve":
            text = tasks.solve(task)
            while (wrong or solved[0] % 2 == 1) and evaluation.score(task, text):
                text, _ = tasks.corrupt(task, rng)  # until the final answer is wrong too
            solved[0] += 1
            return shown_to_judge(task, text)
        first, rest = tasks.solve(task).split("\n", 1)
        text = f"{first}1\n{rest}" if copies else f"{first}\n{rest}"
        start = roles.split_prompt(prompt)[1]  # the prompt ends on the revision's first lines
        return shown_to_judge(task, text[len(start):] if text.startswith(start) else text)

    def known(problem):
        return task_of.get(problem) or sample_texts.environment[problem]

    def sample_texts(policy, tok_, prompts, cfg, gen):
        out = []
        sample_texts.prompts += prompts
        for p in prompts:
            text = text_for(p)
            ids = tok(text, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
            out.append(sampling.Completion(M.encode(tok, [p])[0], ids, text, True))
        return out

    def recording(make):  # `make` (tasks.validate or tasks.sample), its Tasks remembered
        def made(*args, **kwargs):
            task = make(*args, **kwargs)
            if isinstance(task, tasks.Task):
                sample_texts.environment[task.prompt] = task
            return task
        return made
    sample_texts.environment, sample_texts.recording, sample_texts.prompts = {}, recording, []
    monkeypatch.setattr(selfplay, "sample_texts", sample_texts)
    monkeypatch.setattr(selfplay.tasks, "validate", recording(tasks.validate))
    return sample_texts


def test_alive_turns_words_into_per_role_coefficients(tiny, monkeypatch):
    policy, tok = M.load(tiny)
    scripted = scripted_roles(tok, monkeypatch)
    cfg = train.parse_args(["--families=deduction,induction", "--seeds=4", "--posings=2",
                            "--solutions=4", "--environment=0"])
    plan = [("deduction", 1), ("induction", 1), ("deduction", 2), ("induction", 2)]
    samples, stats, groups, shown = selfplay.alive_rollouts(policy, tok, cfg, plan,
                                                            random.Random(0), None, step=0)
    assert stats["pose_validity"] == [1.0] * 8
    assert stats["acc/solve"] == [1.0, 0.0] * 16  # the double alternates right and wrong
    assert stats["judge_agreement"] == [1.0] * 32  # the critic is always right
    assert stats["reward/revise"] == [1.0] * 16  # every wrong one was rejected, then fixed
    by_role = {}
    for s in samples:
        by_role.setdefault(s.role, []).append(s)
    assert len(by_role["solve"]) == 32 and "pose" not in by_role  # posers all tie at 0.5
    for s in by_role["solve"]:
        text = tok.decode(s.ids, skip_special_tokens=True)
        if s.coef[0] > 0:
            assert min(s.coef) > 0  # a correct solution: all tokens pushed up
        else:  # a wrong one: accepted steps keep 0, the flagged step on is pushed down
            steps = roles.token_steps(tok, s.ids, text)
            flagged = min(st for st, c in zip(steps, s.coef) if c < 0)
            assert all(c == 0 for st, c in zip(steps, s.coef) if st < flagged)
            assert all(c < 0 for st, c in zip(steps, s.coef) if st >= flagged)
    assert any(s.coef[0] == 0 for s in by_role["solve"])  # credit did split some solutions
    # each fixed revision also joins its solutions, pulled up, in the solve prompt
    assert stats["corrected"] == [0.0, 1.0] * 16
    assert len(by_role["corrected"]) == 16 and all(min(s.coef) > 0 for s in by_role["corrected"])
    # ... whole: the start the revise prompt gave (the critique's fix) and what the reviser wrote
    for s in by_role["corrected"]:
        prompt = tok.decode(s.prompt_ids, skip_special_tokens=True)
        task = scripted.environment[prompt.split("#problem\n", 1)[1].split("\n#solve", 1)[0]]
        assert prompt == roles.solve_prompt(task.prompt)
        assert tok.decode(s.ids, skip_special_tokens=True) == tasks.solve(task)
    starts = [roles.split_prompt(p)[1] for p in scripted.prompts if roles.role_of(p) == "revise"]
    assert len(starts) == 16 and sum(map(bool, starts)) >= 8  # most slips are in a step
    assert [g.correct for g in groups] == [[1.0, 0.0] * 2] * 8  # the curriculum's figures
    assert all(g.rescued for g in groups)  # a revision fixed a solution of each
    [rollout] = shown  # samples.jsonl: the whole story of the first problem
    assert rollout["valid"]
    # the problem is the posing's line with what it leaves open (names, forms) drawn afresh
    assert tasks.pose_text(scripted.environment[rollout["problem"]]) == rollout["pose"]
    assert tasks.validate("deduction", rollout["pose"], 1).prompt != rollout["problem"]
    assert [(x["correct"], x["verdict"], x["revision_gains"]) for x in rollout["solutions"]] == \
        [(True, True, []), (False, False, [1.0])] * 2
    assert all(len(x["revisions"]) == (not x["correct"]) for x in rollout["solutions"])


def test_a_pointer_past_the_first_wrong_step_is_dropped(tiny, monkeypatch):
    """Token credit spares the steps before the judge's pointer; a judge that names the step after
    the first wrong one would spare that one, so the environment drops its pointer and every
    wrong solution takes its advantage on every token."""
    policy, tok = M.load(tiny)
    scripted = scripted_roles(tok, monkeypatch)

    def one_step_late(policy_, tok_, prompts, cfg, gen):
        out = scripted(policy_, tok_, prompts, cfg, gen)
        for i, (prompt, c) in enumerate(zip(prompts, out)):
            k = roles.parse_pointer(c.text) if roles.role_of(prompt) == "judge" else None
            if k:
                text = c.text.replace(f"Step {k} ", f"Step {k + 1} ")
                ids = tok(text, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
                out[i] = sampling.Completion(c.prompt_ids, ids, text, True)
        return out
    monkeypatch.setattr(selfplay, "sample_texts", one_step_late)
    cfg = train.parse_args(["--families=deduction,induction", "--seeds=2", "--posings=2",
                            "--solutions=4", "--environment=0"])
    samples = selfplay.alive_rollouts(policy, tok, cfg, [("deduction", 2), ("induction", 2)],
                                      random.Random(0), None, step=0)[0]
    solved = [s.coef for s in samples if s.role == "solve"]
    assert any(c[0] < 0 for c in solved) and all(0 not in c for c in solved)
    task = tasks.sample("induction", 2, random.Random(1))
    late = f"Got 1, want {task.answer}.\nStep 2 is wrong: it should be 1+1=2.\nVerdict: incorrect"
    assert selfplay.audited_pointer(task, tasks.solve(task), late) == 2  # no wrong step to spare
    assert selfplay.audited_pointer(task, "x\n" + tasks.solve(task), late) is None


def test_a_whole_revision_keeps_the_start_tokens_the_reviser_read():
    """A tokenizer that opens every encoding with a marker (as SentencePiece's leading space):
    the start's ids come from the revise prompt's tail, not from encoding the start alone."""
    class Marking:
        chat_template, bos_token_id, eos_token_id = None, 1, 2

        def __call__(self, text, add_special_tokens=False):
            return {"input_ids": [3] + [ord(c) for c in text]}
    tok, cfg = Marking(), train.parse_args([])
    prompt = roles.revise_prompt("p", "1+1=3\nAnswer: 3", "Step 1 is wrong: 1+1=2, not 3.")
    revision = sampling.Completion(M.encode(tok, [prompt])[0], [ord("A"), 2], "A", True)
    whole = selfplay.whole_revision(tok, cfg, sampling.Completion([1, 9], [], "", True), prompt,
                                    revision)
    assert whole.prompt_ids == [1, 9] and whole.text == "1+1=2\nA" and whole.finished
    assert whole.ids == [ord(c) for c in "1+1=2\n"] + [ord("A"), 2]


def test_each_seed_also_solves_environment_tasks(tiny, monkeypatch):
    """--environment=E adds E environment tasks of the seed's family and level to its posings
    (solved, judged and trained like them, not counted as posings; scalar draws as many tasks);
    a seed with no valid posing still gets one at E=0; --posings=0: environment tasks alone."""
    policy, tok = M.load(tiny)
    scripted = scripted_roles(tok, monkeypatch)
    monkeypatch.setattr(selfplay.tasks, "sample", scripted.recording(tasks.sample))
    plan = [("deduction", 1), ("induction", 2)]
    for posings, environment, problems in ((2, 0, 4), (2, 2, 8), (0, 2, 4), (0, 0, 2)):
        cfg = train.parse_args(["--families=deduction,induction", "--seeds=2",
                                f"--posings={posings}", "--solutions=2",
                                f"--environment={environment}"])
        samples, stats, groups, _ = selfplay.alive_rollouts(policy, tok, cfg, plan,
                                                            random.Random(0), None, step=0)
        assert len(stats["pose_validity"]) == 2 * posings  # posings only
        assert all(s.role != "pose" for s in samples) or posings
        assert [len(g.correct) for g in groups] == [2] * problems  # all reach the curriculum
        assert sorted({(g.family, g.level) for g in groups}) == sorted(plan)
        assert len(selfplay.environment_tasks(plan, random.Random(0), cfg)) == problems
    monkeypatch.setattr(selfplay.roles, "parse_pose", lambda text: None)  # every posing invalid
    cfg = train.parse_args(["--families=deduction,induction", "--seeds=2", "--posings=2",
                            "--solutions=2", "--environment=0"])
    _, stats, groups, _ = selfplay.alive_rollouts(policy, tok, cfg, plan, random.Random(0), None,
                                                  step=0)
    assert stats["pose_validity"] == [0.0] * 4 and len(groups) == 2


def test_a_posing_of_a_held_out_problem_costs_the_poser_nothing(tiny, monkeypatch):
    """An induction line fixes the whole problem and the poser cannot see the split's hash: a
    held-out one is refused with reward 0, a line the environment cannot build with -1."""
    policy, tok = M.load(tiny)
    scripted = scripted_roles(tok, monkeypatch)
    monkeypatch.setattr(selfplay.tasks, "sample", scripted.recording(tasks.sample))
    held = tasks.pose_text(tasks.sample("induction", 2, random.Random(0), "eval"))
    lines = iter([held, "start 5 add 9 show 3"])
    monkeypatch.setattr(selfplay.roles, "parse_pose", lambda text: next(lines))
    cfg = train.parse_args(["--families=induction", "--seeds=1", "--posings=2", "--solutions=2",
                            "--environment=0"])
    _, stats, groups, _ = selfplay.alive_rollouts(policy, tok, cfg, [("induction", 2)],
                                                  random.Random(0), None, step=0)
    assert stats["pose_validity"] == [0.0, 0.0] and stats["reward/pose"] == [0.0, -1.0]
    assert len(groups) == 1  # the seed solves an environment task in their place


def test_a_revision_that_copies_the_answer_under_wrong_steps_earns_nothing(tiny, monkeypatch):
    """The critique names the reference answer; only a revision whose whole chain is right
    (tasks.faithful) gains, and only such a one joins the solve group."""
    policy, tok = M.load(tiny)
    scripted_roles(tok, monkeypatch, copies=True)
    cfg = train.parse_args(["--families=deduction,induction", "--seeds=2", "--posings=2",
                            "--solutions=4", "--environment=0"])
    samples, stats, _, _ = selfplay.alive_rollouts(policy, tok, cfg, [("deduction", 2),
                                                                      ("induction", 2)],
                                                   random.Random(0), None, step=0)
    assert stats["reward/revise"] == [0.0] * 8 and stats["corrected"] == [0.0] * 16
    assert not any(s.role in ("corrected", "revise") for s in samples)  # one tied group each


def test_group_counts_find_the_all_wrong_groups_and_the_revisions_that_rescue_them(tiny,
                                                                                   monkeypatch):
    """Groups whose solutions are all wrong (GRPO learns nothing from them) are counted per
    family, and rescued only by a revision whose whole chain is right."""
    policy, tok = M.load(tiny)
    plan = [("deduction", 1), ("induction", 2)]
    cfg = train.parse_args(["--families=deduction,induction,corpus", "--seeds=2", "--posings=2",
                            "--solutions=2", "--environment=0"])
    for copies, fooled in ((False, False), (True, False), (False, True)):
        scripted_roles(tok, monkeypatch, copies=copies, wrong=True)
        if fooled:  # the judge accepts every solution: nothing is revised, nothing rescued
            monkeypatch.setattr(selfplay.roles, "parse_verdict", lambda text: True)
        _, _, groups, _ = selfplay.alive_rollouts(policy, tok, cfg, plan, random.Random(0), None,
                                                  step=0)
        rescued = 0 if copies or fooled else 2  # nor by a right answer under a wrong step
        accepted = 4 if fooled else 0  # of the family's 2 x 2 wrong solutions
        assert selfplay.group_counts(cfg.families.split(","), groups) == {
            "groups/deduction": 2, "all_wrong/deduction": 2, "rescued/deduction": rescued,
            "judged_wrong/deduction": 4, "accepted_wrong/deduction": accepted,
            "groups/induction": 2, "all_wrong/induction": 2, "rescued/induction": rescued,
            "judged_wrong/induction": 4, "accepted_wrong/induction": accepted,
            "groups/corpus": 0, "all_wrong/corpus": 0, "rescued/corpus": 0,
            "judged_wrong/corpus": 0, "accepted_wrong/corpus": 0}
    # scalar: one group per environment task, its solutions in the order they were sampled
    scripted = scripted_roles(tok, monkeypatch)  # right and wrong in turn
    monkeypatch.setattr(selfplay.tasks, "sample", scripted.recording(tasks.sample))
    for n in (1, 3):
        cfg = train.parse_args(["--families=deduction,induction", "--seeds=2", "--posings=2",
                                f"--solutions={n}", "--environment=0"])
        _, stats, groups, _ = selfplay.scalar_rollouts(policy, tok, cfg, plan, random.Random(0),
                                                       None)
        assert [len(g.correct) for g in groups] == [n] * 4 and not any(g.rescued for g in groups)
        assert not any(g.accepted for g in groups)  # no judge
        assert sum((g.correct for g in groups), []) == stats["acc/solve"]
        assert [(g.family, g.level) for g in groups] == [plan[0]] * 2 + [plan[1]] * 2
        counts = selfplay.group_counts(["deduction", "induction"], groups)
        # one solution each: right, wrong, right, wrong; three: 101 010 101 010, none all wrong
        assert (counts["all_wrong/deduction"], counts["all_wrong/induction"]) == \
            ((1, 1) if n == 1 else (0, 0))


def test_a_problem_with_no_right_solution_gets_all_wrong_revisions_tries_per_solution(
        tiny, monkeypatch):
    """Where every solution of a problem is wrong (no GRPO signal), each rejected one is revised
    --all_wrong_revisions times; where some are right, once. Every try is the reviser's sample
    and, when it fixes the answer, a right solution in the solve prompt."""
    policy, tok = M.load(tiny)
    plan = [("deduction", 1), ("induction", 2)]
    cfg = train.parse_args(["--families=deduction,induction", "--seeds=2", "--posings=2",
                            "--solutions=2", "--environment=0", "--all_wrong_revisions=3"])
    for wrong, tries in ((True, 3), (False, 1)):  # all wrong; right and wrong in turn
        scripted = scripted_roles(tok, monkeypatch, wrong=wrong)
        samples, stats, groups, _ = selfplay.alive_rollouts(policy, tok, cfg, plan,
                                                            random.Random(0), None, step=0)
        rejected = sum(g.correct.count(0.0) for g in groups)  # the scripted judge is right
        assert rejected == (8 if wrong else 4)
        asked = [p for p in scripted.prompts if roles.role_of(p) == "revise"]
        assert len(asked) == tries * rejected
        assert stats["reward/revise"] == [1.0] * (tries * rejected)  # the double revises right
        fixed = [s for s in samples if s.role == "corrected"]
        assert len(fixed) == tries * rejected
        for s in fixed:  # each a right solution, whole, in its problem's solve prompt
            prompt = tok.decode(s.prompt_ids, skip_special_tokens=True)
            task = scripted.environment[prompt.split("#problem\n", 1)[1].split("\n#solve", 1)[0]]
            assert prompt == roles.solve_prompt(task.prompt)
            assert tok.decode(s.ids, skip_special_tokens=True) == tasks.solve(task)
        assert stats["corrected"] == ([1.0] * 8 if wrong else [0.0, 1.0] * 4)


def test_audits_add_judgements_of_a_reference_and_a_slipped_solution(tiny, monkeypatch):
    policy, tok = M.load(tiny)
    scripted_roles(tok, monkeypatch)
    plan = [("deduction", 1), ("induction", 2)]
    rewards = {}
    for audits in (False, True):
        cfg = train.parse_args(["--families=deduction,induction", "--posings=2", "--solutions=4",
                                f"--audits={audits}", "--environment=0"])
        samples, stats, _, _ = selfplay.alive_rollouts(policy, tok, cfg, plan, random.Random(0),
                                                       None, step=0)
        rewards[audits] = stats["reward/judge"]
    assert len(rewards[True]) == len(rewards[False]) + 2 * 4  # two audits per problem
    # per problem: its 4 judgements, then its two audits, which the scripted critic gets right
    audit_rewards = [r for k in range(4) for r in rewards[True][6 * k + 4:6 * k + 6]]
    assert audit_rewards == [1.0] * 8


def test_the_judge_anchor_is_teacher_pairs_on_the_plans_cells(tiny, monkeypatch):
    tok = M.load_tokenizer(tiny)
    plan = [("induction", 1), ("abduction", 4)]
    assert selfplay.judge_anchor(random.Random(0), tok, train.parse_args(["--judge_anchor=0"]),
                                 plan) == []
    samples = selfplay.judge_anchor(random.Random(0), tok, train.parse_args(["--judge_anchor=3"]),
                                    plan)
    assert [s.role for s in samples] == ["anchor"] * 6
    assert all(s.coef == [1.0] * len(s.ids) for s in samples)  # their PG gradient is their NLL's
    verdicts = [roles.parse_verdict(tok.decode(s.ids, skip_special_tokens=True)) for s in samples]
    assert verdicts == [True, False] * 3  # the reference solution, then the slipped one
    problems = [tok.decode(s.prompt_ids, skip_special_tokens=True) for s in samples]
    assert ["Sequence:" in p for p in problems] == [True, True, False, False, True, True]
    assert ["Rules:" in p for p in problems] == [False, False, True, True, False, False]
    # --judge_anchor counts pairs per step: two ranks share three as two and one
    monkeypatch.setattr(M, "world", lambda: 2)
    shares = []
    for rank in (0, 1):
        monkeypatch.setattr(M, "rank", lambda rank=rank: rank)
        shares.append(len(selfplay.judge_anchor(random.Random(0), tok,
                                                train.parse_args(["--judge_anchor=3"]), plan)))
    assert shares == [4, 2]


def test_refine_pairs_and_thoughts_from_scripted_roles(tiny, tmp_path, monkeypatch):
    """Half the solutions wrong, the critic catches each, the revision fixes it and is then
    accepted: every wrong solution gives, per chain, one (revision > original) pair and one
    long thought; right ones are accepted unrevised; two critiques that agree make no pair."""
    known, environment_tasks = {}, selfplay.environment_tasks

    def remembered(plan, rng, cfg):
        drawn = environment_tasks(plan, rng, cfg)
        known.update({t.prompt: t for t in drawn})
        return drawn
    monkeypatch.setattr(selfplay, "environment_tasks", remembered)
    _, tok = M.load(tiny)
    scripted_roles(tok, monkeypatch, known)
    out = str(tmp_path / "refine")
    train.run(train.parse_args(["--stage=refine", f"--model={tiny}", f"--out={out}", "--steps=1",
                                "--environment=1", "--seeds=2", "--posings=2", "--solutions=2",
                                "--max_new_tokens=24", "--batch=8"]))
    with open(os.path.join(out, "metrics.jsonl")) as f:
        [log] = [json.loads(line) for line in f]
    problems = 2 * (2 + 1)  # 2 seeds x (2 posings + 1 environment task)
    assert log["acc/solve"] == 0.5 and log["reward/revise"] == 1.0
    assert log["thoughts"] == log["pairs"] == problems // 2 * 2  # wrong ones x two chains
    assert log["revisions"] == 0.5  # one revision on each wrong one's chains, none on right


def judge_says(scripted, tok, critique, solutions=None):
    """The scripted sampler with every judge completion replaced by `critique`; the solutions it
    writes are appended to `solutions` when given."""
    def sample_texts(policy, tok_, prompts, cfg, gen):
        out = scripted(policy, tok_, prompts, cfg, gen)
        if solutions is not None:
            solutions.extend(c.text for p, c in zip(prompts, out) if roles.role_of(p) == "solve")
        return [sampling.Completion(c.prompt_ids, tok(critique)["input_ids"], critique, True)
                if roles.role_of(p) == "judge" else c for p, c in zip(prompts, out)]
    return sample_texts


def test_critic_teacher_revises_from_the_teachers_critique_not_the_judges(tiny, monkeypatch):
    """--critic=teacher (the oracle ablation) hands every revision the programmatic teacher's
    critique of its solution; the default hands it the judge's own words, here a wrong fix."""
    policy, tok = M.load(tiny)
    plan = [("induction", 2), ("deduction", 1)]
    wrong_fix = "Step 1 is wrong: it should be 1+1=2.\nVerdict: incorrect"
    for critic in ("judge", "teacher"):
        scripted, written = scripted_roles(tok, monkeypatch, wrong=True), []
        monkeypatch.setattr(selfplay, "sample_texts", judge_says(scripted, tok, wrong_fix, written))
        cfg = train.parse_args(["--families=induction,deduction", "--seeds=2", "--solutions=2",
                                "--environment=0", f"--critic={critic}"])
        selfplay.alive_rollouts(policy, tok, cfg, plan, random.Random(0), None, step=0)
        problems = [scripted.environment[p.split("#problem\n", 1)[1].split("\n#", 1)[0]]
                    for p in scripted.prompts if roles.role_of(p) == "solve"]
        assert len(written) == 4  # every solution wrong, every verdict "incorrect": all revised
        assert [p for p in scripted.prompts if roles.role_of(p) == "revise"] == [
            roles.revise_prompt(task.prompt, text, wrong_fix if critic == "judge" else
                                tasks.critique(task, text))
            for task, text in zip(problems, written)]


def test_judged_all_wrong_spends_words_only_where_the_verifier_is_silent(tiny, monkeypatch):
    """--judged=all_wrong: a problem with a right solution learns from the verifier alone (no
    critique, no revision, reward = exact match); every solution of a problem with none is
    judged and revised, even one the judge calls correct (the verifier says it is not)."""
    policy, tok = M.load(tiny)
    plan = [("deduction", 1), ("induction", 2)]
    cfg = train.parse_args(["--families=deduction,induction", "--seeds=2", "--posings=2",
                            "--solutions=2", "--environment=0", "--judged=all_wrong"])
    scripted = scripted_roles(tok, monkeypatch)  # right and wrong in turn: none all wrong
    samples, stats, groups, _ = selfplay.alive_rollouts(policy, tok, cfg, plan, random.Random(0),
                                                        None, step=cfg.alpha_steps)  # alpha 0.5
    asked = [roles.role_of(p) for p in scripted.prompts]
    assert asked.count("solve") == 8 and "judge" not in asked and "revise" not in asked
    assert stats["reward/solve"] == [c for g in groups for c in g.correct] == [1.0, 0.0] * 4
    assert stats["judge_agreement"] == [] and {s.role for s in samples} <= {"pose", "solve"}
    assert all(a is None for g in groups for a in g.accepted)

    lenient = "Verdict: correct"  # the judge errs; the reviser rewrites the whole solution
    scripted = scripted_roles(tok, monkeypatch, wrong=True)
    monkeypatch.setattr(selfplay, "sample_texts", judge_says(scripted, tok, lenient))
    samples, stats, groups, _ = selfplay.alive_rollouts(policy, tok, cfg, plan, random.Random(0),
                                                        None, step=cfg.alpha_steps)
    asked = [roles.role_of(p) for p in scripted.prompts]
    assert asked.count("judge") == asked.count("revise") == 8
    assert stats["judge_agreement"] == [0.0] * 8 and stats["reward/revise"] == [1.0] * 8
    assert stats["reward/solve"] == [0.0] * 8  # the verdict "correct" earns a wrong one nothing
    assert sum(s.role == "corrected" for s in samples) == 8


def test_judged_one_all_wrong_revises_one_solution_a_group_from_the_reference_solution(
        tiny, monkeypatch):
    """--judged=one_all_wrong: only the first solution of a problem with none right is judged
    and revised; its rescue joins the group; a critique or revision alone in its group earns no
    advantage, so only the poser and the solver are trained. --judge_sees=solution: the judge's
    prompt holds the whole reference solution."""
    policy, tok = M.load(tiny)
    plan = [("deduction", 1), ("induction", 2)]
    cfg = train.parse_args(["--families=deduction,induction", "--seeds=2", "--posings=2",
                            "--solutions=2", "--environment=0", "--judged=one_all_wrong",
                            "--judge_sees=solution"])
    scripted, written = scripted_roles(tok, monkeypatch, wrong=True), []
    monkeypatch.setattr(selfplay, "sample_texts",
                        judge_says(scripted, tok, "Verdict: correct", written))
    samples, stats, groups, _ = selfplay.alive_rollouts(policy, tok, cfg, plan, random.Random(0),
                                                        None, step=0)
    solved = [p for p in scripted.prompts if roles.role_of(p) == "solve"]
    judged = [p for p in scripted.prompts if roles.role_of(p) == "judge"]
    assert len(solved) == 8 and len(judged) == 4 and [roles.role_of(p) for p in
                                                      scripted.prompts].count("revise") == 4
    problems = [scripted.environment[p.split("#problem\n", 1)[1].split("\n#", 1)[0]]
                for p in solved[::2]]
    assert judged == [roles.judge_prompt(t.prompt, tasks.solve(t), text)  # every step in view
                      for t, text in zip(problems, written[::2])]
    assert [g.accepted for g in groups] == [[True, None]] * 4
    assert stats["reward/solve"] == [0.0] * 8 and stats["reward/revise"] == [1.0] * 4
    assert sum(s.role == "corrected" for s in samples) == 4  # each rescue joins its group
    # no judge or reviser sample (one a group), no poser's (every p_hat is 0: reward 0 each)
    assert {s.role for s in samples} == {"solve", "corrected"}
