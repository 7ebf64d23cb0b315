"""train.py end to end on a tiny model: every stage, resume, kill -9 and torchrun.

Small step counts, a one-layer model, short completions: seconds per stage.
Run: python -m pytest -q tests/test_train.py
"""
import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

import eval as evaluation
import merge as merging
import model as M
import roles
import sampling
import selfplay
import tasks
import train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FAST = ["--max_new_tokens=24", "--seeds=2", "--posings=2", "--solutions=2", "--batch=8",
        "--eval_n=8", "--save_every=1"]


def run(*args):
    return train.run(train.parse_args(list(args) + FAST))


def lines(path):
    with open(path) as f:
        return [json.loads(x) for x in f]


def weights(model_dir):
    return load_file(os.path.join(model_dir, "model.safetensors"))


def test_warmup_writes_model_metrics_and_learns_something(tiny, tmp_path):
    out = str(tmp_path / "warm")
    run("--stage=warmup", f"--model={tiny}", f"--out={out}", "--steps=3")
    log = lines(os.path.join(out, "metrics.jsonl"))
    assert [x["step"] for x in log] == [0, 1, 2]
    for key in ("loss", "entropy", "grad_norm", "tokens_per_s", "stage"):
        assert key in log[0]
    assert all(x["loss"] > 0 and x["skipped"] == 0 for x in log)
    before, after = weights(tiny), weights(os.path.join(out, "model"))
    assert any(not torch.equal(before[k], after[k]) for k in before)


@pytest.mark.parametrize("reward", ["verbal", "scalar"])
def test_alive_both_rewards(tiny, tmp_path, reward):
    out = str(tmp_path / reward)
    run("--stage=alive", f"--model={tiny}", f"--out={out}", "--steps=2", f"--reward={reward}")
    log = lines(os.path.join(out, "metrics.jsonl"))
    assert len(log) == 2 and os.path.isfile(os.path.join(out, "model", "model.safetensors"))
    assert ("pose_validity" in log[0]) == (reward == "verbal")
    assert "level/deduction" in log[0] and "acc/solve" in log[0]
    assert all(x["clip_frac"] == 0.0 for x in log)  # one epoch: the ratio is 1, nothing clips


def scripted_roles(tok, monkeypatch, known_tasks=None, copies=False):
    """A test double for the sampler, installed in selfplay: poses distinct valid instances,
    solves right and wrong in turn (wrong = corrupted until the final answer is wrong), judges
    with the programmatic critic, revises correctly (`copies`: the right answer under a wrong
    first step). It knows a problem's task from `known_tasks`, from what the environment built
    from a posing (with the step's randomness, so not the double's own guess) or drew."""
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
            while solved[0] % 2 == 1 and evaluation.score(task, text):
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
    samples, stats, solved, shown = selfplay.alive_rollouts(policy, tok, cfg, plan,
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
    assert solved and all(correct in (0.0, 1.0) for _, _, correct in solved)
    [rollout] = shown  # samples.jsonl: the whole story of the first problem
    assert rollout["valid"]
    # the problem is the posing's line with what it leaves open (names, forms) drawn afresh
    assert tasks.pose_text(scripted.environment[rollout["problem"]]) == rollout["pose"]
    assert tasks.validate("deduction", rollout["pose"], 1).prompt != rollout["problem"]
    assert [(x["correct"], x["verdict"], x["revision_gain"]) for x in rollout["solutions"]] == \
        [(True, True, None), (False, False, 1)] * 2
    assert all((x["revision"] is None) == x["correct"] for x in rollout["solutions"])


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
        samples, stats, solved, _ = selfplay.alive_rollouts(policy, tok, cfg, plan,
                                                            random.Random(0), None, step=0)
        assert len(stats["pose_validity"]) == 2 * posings  # posings only
        assert all(s.role != "pose" for s in samples) or posings
        assert len(solved) == problems * 2  # every problem's solutions reach the curriculum
        assert sorted({(f, lv) for f, lv, _ in solved}) == sorted(plan)
        assert len(selfplay.environment_tasks(plan, random.Random(0), cfg)) == problems
    monkeypatch.setattr(selfplay.roles, "parse_pose", lambda text: None)  # every posing invalid
    cfg = train.parse_args(["--families=deduction,induction", "--seeds=2", "--posings=2",
                            "--solutions=2", "--environment=0"])
    _, stats, solved, _ = selfplay.alive_rollouts(policy, tok, cfg, plan, random.Random(0), None,
                                                  step=0)
    assert stats["pose_validity"] == [0.0] * 4 and len(solved) == 2 * 2


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
    _, stats, solved, _ = selfplay.alive_rollouts(policy, tok, cfg, [("induction", 2)],
                                                  random.Random(0), None, step=0)
    assert stats["pose_validity"] == [0.0, 0.0] and stats["reward/pose"] == [0.0, -1.0]
    assert len(solved) == 2  # the seed solves an environment task in their place


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
    run("--stage=refine", f"--model={tiny}", f"--out={out}", "--steps=1", "--environment=1")
    [log] = lines(os.path.join(out, "metrics.jsonl"))
    problems = 2 * (2 + 1)  # FAST: 2 seeds x (2 posings + 1 environment task)
    assert log["acc/solve"] == 0.5 and log["reward/revise"] == 1.0
    assert log["thoughts"] == log["pairs"] == problems // 2 * 2  # wrong ones x two chains
    assert log["revisions"] == 0.5  # one revision on each wrong one's chains, none on right


def test_align_merge_domain_refine(tiny, tmp_path):
    for ability in ("deduction", "induction", "abduction"):
        run("--stage=align", f"--ability={ability}", f"--model={tiny}",
            f"--out={tmp_path}/align_{ability}", "--steps=1")
    run("--stage=merge", f"--model={tiny}", f"--out={tmp_path}/merged", "--merge_method=ties")
    merged = weights(f"{tmp_path}/merged/model")
    assert merged.keys() == weights(tiny).keys()
    run("--stage=domain", f"--model={tmp_path}/merged/model", f"--out={tmp_path}/domain",
        "--steps=1")
    run("--stage=refine", f"--model={tiny}", f"--out={tmp_path}/refine", "--steps=1")
    for stage in ("domain", "refine"):
        assert os.path.isfile(f"{tmp_path}/{stage}/model/model.safetensors")
        assert len(lines(f"{tmp_path}/{stage}/metrics.jsonl")) == 1


def test_resume_repeats_the_uninterrupted_run(tiny, tmp_path, monkeypatch):
    """A crash after step 2 was logged but before its checkpoint: the resumed run redoes
    step 2, its logs hold each step once, and it ends with the uninterrupted run's weights."""
    straight, resumed = str(tmp_path / "straight"), str(tmp_path / "resumed")
    save_state = merging.save_state

    def crash_saving_step_3(policy, optimizer, path, meta):
        if meta["step"] == 3:
            raise RuntimeError("simulated crash")
        return save_state(policy, optimizer, path, meta)
    for stage in ("warmup", "alive"):
        run(f"--stage={stage}", f"--model={tiny}", f"--out={straight}/{stage}", "--steps=4")
        monkeypatch.setattr(merging, "save_state", crash_saving_step_3)
        with pytest.raises(RuntimeError, match="simulated crash"):
            run(f"--stage={stage}", f"--model={tiny}", f"--out={resumed}/{stage}", "--steps=4")
        monkeypatch.setattr(merging, "save_state", save_state)
        assert [x["step"] for x in lines(f"{resumed}/{stage}/metrics.jsonl")] == [0, 1, 2]
        run(f"--stage={stage}", f"--model={tiny}", f"--out={resumed}/{stage}", "--steps=4",
            "--resume")
        a, b = weights(f"{straight}/{stage}/model"), weights(f"{resumed}/{stage}/model")
        for k in a:
            assert torch.equal(a[k], b[k]), (stage, k)
        assert [x["step"] for x in lines(f"{resumed}/{stage}/metrics.jsonl")] == [0, 1, 2, 3]
    assert [x["step"] for x in lines(f"{resumed}/alive/samples.jsonl")] == [0, 1, 2, 3]


def test_kill_9_loses_at_most_the_work_since_the_last_checkpoint(tiny, tmp_path):
    out = str(tmp_path / "killed")
    cmd = [sys.executable, os.path.join(ROOT, "train.py"), "--stage=warmup", f"--model={tiny}",
           f"--out={out}", "--steps=400", "--threads=1"] + FAST
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    meta = os.path.join(out, "state", "meta.json")
    deadline = time.time() + 120
    while not os.path.exists(meta) and time.time() < deadline:
        time.sleep(0.2)
    time.sleep(0.7)  # let it get somewhere in the middle of later steps or saves
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    M.recover_dir(os.path.join(out, "state"))  # killed between replace_dir's two renames?
    with open(meta) as f:
        saved = json.load(f)["step"]
    assert 1 <= saved < 400
    run("--stage=warmup", f"--model={tiny}", f"--out={out}", f"--steps={saved + 2}", "--resume")
    steps = [x["step"] for x in lines(os.path.join(out, "metrics.jsonl"))]
    assert steps == list(range(saved + 2))
    M.load(os.path.join(out, "model"))


@pytest.mark.parametrize("stage, args, run_dir", [
    ("alive", ["--steps=2", "--checkpointing=on"], ""),
    ("refine", ["--steps=2"], ""),
    ("all", ["--warmup_steps=2", "--rl_steps=2"], "alive"),  # ranks leave, rank 0 evaluates
])
def test_torchrun_two_ranks(tiny, tmp_path, stage, args, run_dir):
    """Ranks may sample different numbers of valid posings, revisions and refinement rounds; the
    run must still make the same collective calls on both and finish. The alive run (FSDP2 with
    activation checkpointing) then resumes in one process: the sharded checkpoint reshards to
    another world size (the per-rank RNG streams are not restored there)."""
    out = str(tmp_path / "ddp")
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=ROOT)
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
                             "--standalone", os.path.join(ROOT, "train.py"), f"--stage={stage}",
                             f"--model={tiny}", f"--out={out}", "--threads=1"] + args + FAST,
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert [x["step"] for x in lines(os.path.join(out, run_dir, "metrics.jsonl"))] == [0, 1]
    policy, _ = M.load(os.path.join(out, run_dir, "model"))
    assert all(torch.isfinite(p).all() for p in policy.parameters())
    if stage == "all":
        assert "| metric | warmup | alive |" in open(os.path.join(out, "report.md")).read()
    if stage == "alive":
        run("--stage=alive", f"--model={tiny}", f"--out={out}", "--steps=3", "--resume")
        assert [x["step"] for x in lines(os.path.join(out, "metrics.jsonl"))] == [0, 1, 2]


def test_all_compare_and_meta_write_their_tables(tiny, tmp_path):
    out = str(tmp_path / "pipeline")
    run("--stage=all", f"--model={tiny}", f"--out={out}", "--warmup_steps=2", "--rl_steps=1")
    table = open(os.path.join(out, "report.md")).read()
    assert "| metric | warmup | alive |" in table and "levels 3 and up" in table
    for name in ("warmup", "alive"):
        report = json.load(open(os.path.join(out, f"eval_{name}.json")))
        correct = report["accuracy"]["overall"] * 8  # a share of 8 items: a whole count
        assert report["n"] == 8 and abs(correct - round(correct)) < 1e-9 and 0 <= correct <= 8
    run("--stage=compare", f"--model={tiny}", f"--out={out}", "--compare_minutes=0",
        "--compare_eval_n=8")
    reports = json.load(open(os.path.join(out, "compare.json")))
    assert list(reports) == ["warmup", "alive", "scalar", "sft"]
    assert ("| metric | warmup | alive | scalar | sft |"
            in open(os.path.join(out, "compare.md")).read())
    for arm in ("alive", "scalar", "sft"):  # a zero budget: each arm stops after its first step
        assert len(lines(os.path.join(out, f"cmp_{arm}", "metrics.jsonl"))) == 1
    run("--stage=meta", f"--out={out}", "--steps=1", "--compare_eval_n=8")  # the same warm-up
    reports = json.load(open(os.path.join(out, "meta.json")))
    assert list(reports) == ["warmup", "deduction", "induction", "abduction", "merged", "domain"]
    assert "| accuracy, abduction |" in open(os.path.join(out, "meta.md")).read()
    # task arithmetic with weights 1/3: the merge is the mean of the three aligned models
    aligned = [weights(os.path.join(out, f"align_{a}", "model")) for a in tasks.FAMILIES[:3]]
    for name, tensor in weights(os.path.join(out, "merged", "model")).items():
        torch.testing.assert_close(tensor, sum(w[name] for w in aligned) / 3)
    assert len(lines(os.path.join(out, "domain", "metrics.jsonl"))) == 1


def test_the_tiny_default_takes_its_sizes_from_flags(tmp_path):
    cfg = train.parse_args([f"--out={tmp_path}", "--tiny_layers=3", "--tiny_hidden=48",
                            "--tiny_heads=4"])
    policy, tok = M.load(train.base_model(cfg))
    config = policy.lm.config
    assert (config.num_hidden_layers, config.hidden_size, config.num_attention_heads,
            config.intermediate_size) == (3, 48, 4, 144)
    assert tok.tokenize("Find a,b:") == ["Find", " ", "a", ",", "b", ":"]
