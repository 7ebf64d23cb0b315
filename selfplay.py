"""selfplay.py: the steps of the RL stages: ALIVE self-play, its scalar baseline, refinement.

One `rl_step` of alive (--reward=verbal), on `seeds` (family, curriculum level) pairs:
  1. pose: `posings` problems per seed; the environment (tasks.validate) decides validity
     and computes the answer, so the poser cannot pose what it cannot check;
  2. solve: `solutions` samples per valid problem and per `environment` task of the seed;
  3. judge: each solution critiqued in words, the reference in view (its answer; --judge_sees=
     solution: its steps too, roles.judge_reference), its verdict parsed
     and its pointer to the first wrong step kept where the steps before it are right;
  4. revise: each solution the judge did not accept (`all_wrong_revisions` times when none of
     its problem's solutions is right: the verifier gives no signal there), conditioned on its
     critique and started on its fix (roles.revision_start: the steps before the flagged one,
     then the critique's corrected step; the reviser writes the rest); a revision counts as
     right only when its whole chain is (tasks.faithful): an answer right under wrong steps (a
     guess, or a copy when the reviser saw the reference) must not teach the solver;
  5. learn: refine.self_play_samples turns the record into rewards per role, group advantages
     A = (r - mean r) / std r and token credit; with `judge_anchor` teacher judge pairs
     (NLL) beside them, update.train_on takes one clipped PG step.
--reward=scalar keeps steps 2 and 5 with r = exact match on environment tasks (plain GRPO),
`posings + environment` of them per seed: as many problems as alive solves.
--judged=all_wrong spends words only where the verifier is silent: steps 3 and 4 take only the
solutions of problems none of whose solutions is right (each revised, whatever its verdict), and
every solver reward is the verifier's (alpha is 1); --judged=one_all_wrong takes only the first
solution of each such problem, a quarter of the judge's and reviser's calls at N = 4 (with
all_wrong_revisions 1, one critique and one revision a group: their own groups of one give them no
advantage, so the judge learns from its anchor alone and the reviser not at all; the solver learns
from the rescues).
--critic=teacher hands the reviser the programmatic teacher's critique in place of the judge's
(an oracle ablation: the most the words could give; the judge's critique is still sampled, costs
its time and is rewarded as before, the gains of the revisions made from the teacher's words
included).
The curriculum judges a family once at least 16 of its solutions at its level have gathered:
their solve rate above --promote raises the level, below --demote lowers it. Each step also logs,
per family, its groups with no right solution and how many of those a revision rescued.

`refine_step` (alignment via refinement): one solution per problem, two chains of self-critique
-> revise from it, DPO on (better, worse) pairs plus NLL on the chains that fixed a wrong answer.

Simplifications, stated plainly:
  - one optimizer step per rollout batch, so r_t = 1 and the clip acts only with ppo_epochs > 1
    (pi_old is then the trainer's own forward, not the sampler's bf16 log-probs); the KL of
    kl_coef is to that pi_old, so it too acts only from the second epoch. At 8B the options that
    matter are rl_lr, the batch sizes and max_new_tokens; ppo_epochs and kl_coef are for
    experiments;
  - p_hat and a revision's correctness come from the verifier, which every family here has;
    the judge's verdict enters the solver's reward with weight 1 - alpha;
  - a revision is trained in its own critique-conditioned prompt (the tokens it sampled after its
    start); one that fixes the answer is also trained whole, start included, in the solve prompt
    with reward 1 (the off-policy part of self-correction: its ratio is taken against the solve
    prompt as if sampled there, though the start's tokens are the critique's words);
  - the judge anchor is the programmatic teacher's supervision inside self-play: the judge
    does not learn from its agreement with the verifier alone;
  - DPO in `refine` uses the sampling policy as its reference (no second copy).

    python train.py --stage=alive --model=runs/tiny/warmup/model --out=runs/a [--reward=scalar]

Tests: tests/test_selfplay.py (one step's rollouts with a scripted sampler).
"""
from typing import NamedTuple

import eval as evaluation
import model as M
import refine as R
import roles
import sampling
import tasks
import update


class Group(NamedTuple):
    """One problem's solutions in a step: what the curriculum and the group counts read."""
    family: str
    level: int
    correct: list   # the verifier's 0/1 for each solution
    rescued: bool   # a revision of one of them was right, whole chain (alive; False in scalar)
    accepted: list  # per solution, did the judge say "correct" (None: not judged; alive only)


def sample_texts(policy, tok, prompts, cfg, gen):
    with M.gathered_for_rollout(policy):
        return sampling.complete(policy, tok, [roles.render(tok, p, cfg.hints) for p in prompts],
                                 cfg.max_new_tokens, cfg.temperature, cfg.top_p, gen,
                                 batch_size=max(cfg.micro_batch, 64))


def seed_plan(rng, cfg, curriculum):
    """This rank's share of the step's seeds: (family, its curriculum level) each."""
    families = cfg.families.split(",")
    return [(f, curriculum[f]) for f in (rng.choice(families)
                                         for _ in range(max(1, M.share(cfg.seeds))))]


def environment_tasks(plan, rng, cfg):
    """`posings + environment` tasks (at least one) drawn by the environment for every seed of
    the plan: the baselines solve as many problems per seed as alive does when all its posings
    are valid (or, with neither, the one task alive gives a seed with no valid posing)."""
    return [tasks.sample(f, lvl, rng, "train") for f, lvl in plan
            for _ in range(max(1, cfg.posings + cfg.environment))]


def scalar_rollouts(policy, tok, cfg, plan, rng, gen):
    """The baseline: environment tasks, N solutions each, reward = exact match (GRPO)."""
    task_list = environment_tasks(plan, rng, cfg)
    prompts = [roles.solve_prompt(t.prompt) for t in task_list for _ in range(cfg.solutions)]
    sols = sample_texts(policy, tok, prompts, cfg, gen)
    owner = [i for i in range(len(task_list)) for _ in range(cfg.solutions)]
    correct = [evaluation.score(task_list[i], s.text) for i, s in zip(owner, sols)]
    adv, keep = R.group_advantages(correct, owner)
    stats = {"reward/solve": correct, "acc/solve": correct}
    groups = [Group(t.family, t.level, correct[i * cfg.solutions:(i + 1) * cfg.solutions], False,
                    []) for i, t in enumerate(task_list)]
    samples = [update.Sample("solve", s.prompt_ids, s.ids, [a] * len(s.ids))
               for s, a, k in zip(sols, adv.tolist(), keep.tolist()) if k and s.ids]
    return samples, stats, groups, []


def alive_rollouts(policy, tok, cfg, plan, rng, gen, step):
    """Pose -> validate -> solve -> judge -> revise, recorded in one refine.Posing per posing;
    refine.self_play_samples turns the records into rewards, advantages and token credit."""
    # 1. pose: M posings per seed; the environment decides validity and computes the answer
    docs = [tasks.document(rng, lvl) if f == "corpus" else None for f, lvl in plan]
    seeds = [i for i in range(len(plan)) for _ in range(cfg.posings)]
    poses = sample_texts(policy, tok, [roles.pose_prompt(*plan[i], docs[i]) for i in seeds],
                         cfg, gen)
    posings = []
    for i, pose in zip(seeds, poses):
        task = tasks.validate(plan[i][0], roles.parse_pose(pose.text) or "", plan[i][1], docs[i],
                              split="train", rng=rng)
        posings.append(R.Posing(plan[i][0], pose, task if isinstance(task, tasks.Task) else None,
                                held_out=task == tasks.HELD_OUT))
    posed = [p for p in posings if p.task is not None]
    for p, dup in zip(posed, R.duplicate_posings([p.task.prompt for p in posed],
                                                 [(p.family, p.task.level) for p in posed])):
        p.duplicate = dup
    # Each seed also solves `environment` tasks the environment draws at its family and level
    # (on posed problems alone the solver learned past level 2 far less often: README), at
    # least one when none of its posings is valid, so the other roles learn while the poser
    # learns to pose. --posings=0 --environment=2 is self-play on environment tasks alone.
    for i, (family, level) in enumerate(plan):
        none_valid = all(p.task is None for p, seed in zip(posings, seeds) if seed == i)
        for _ in range(max(cfg.environment, int(none_valid))):
            posings.append(R.Posing(family, task=tasks.sample(family, level, rng, "train")))
    problems = [p for p in posings if p.task is not None]
    # 2. solve: N solutions per problem; 3. judge each in words, the reference in view
    # (--judged=all_wrong: only those of problems none of whose solutions the verifier finds
    # right, the others learning from the verifier alone as in GRPO; one_all_wrong: the first of
    # each such problem's solutions)
    each = [p for p in problems for _ in range(cfg.solutions)]
    sols = sample_texts(policy, tok, [roles.solve_prompt(p.task.prompt) for p in each], cfg, gen)
    verified = [float(evaluation.score(p.task, s.text)) for p, s in zip(each, sols)]
    solved = {id(p) for p, r in zip(each, verified) if r}
    to_judge = [k for k, p in enumerate(each) if cfg.judged == "all" or (
        id(p) not in solved and (cfg.judged == "all_wrong" or k % cfg.solutions == 0))]
    # audits: a reference and a corrupted solution per problem, judged too, so the judge's
    # reward is not agreement on mostly wrong solutions alone (which teaches it to reject all)
    audited = [(p, text, truth) for p in (problems if cfg.audits else []) for text, truth in
               ((tasks.solve(p.task), 1.0), (tasks.corrupt(p.task, rng)[0], 0.0))]
    judged = [(each[k], sols[k].text) for k in to_judge] + [(p, text) for p, text, _ in audited]
    # every rank asks, even with nothing to judge: a rollout's all-gather is a collective
    judge_prompts = [roles.judge_prompt(p.task.prompt,
                                        roles.judge_reference(p.task, cfg.judge_sees), text)
                     for p, text in judged]
    critiques = sample_texts(policy, tok, judge_prompts, cfg, gen)
    for (p, _, truth), c in zip(audited, critiques[len(to_judge):]):
        p.audits.append((c, roles.parse_verdict(c.text), truth))
    critique_of = dict(zip(to_judge, critiques))
    for k, (p, s) in enumerate(zip(each, sols)):
        c = critique_of.get(k)  # None: not judged
        p.solutions.append(s)
        p.correct.append(verified[k])
        p.steps.append(roles.token_steps(tok, s.ids, s.text))
        p.critiques.append(c)
        p.verdicts.append(c and roles.parse_verdict(c.text))
        p.pointers.append(c and audited_pointer(p.task, s.text, c.text))
        p.revisions.append([])
        p.revised.append([])
        p.gains.append([])
    # 4. revise what the judge did not accept (--judged=*all_wrong: every solution it judged, all
    # wrong), from its fix of the step it flags; a problem whose solutions are all wrong (the
    # verifier's blind spot) gets `all_wrong_revisions` each. --critic=teacher hands the reviser
    # the programmatic teacher's critique instead (an oracle ablation: what the judge's words
    # could give at best)
    redo = [(p, j) for p in problems for j, (c, v) in enumerate(zip(p.critiques, p.verdicts))
            if c and (v is not True or cfg.judged != "all")
            for _ in range(1 if any(p.correct) else cfg.all_wrong_revisions)]
    notes = [p.critiques[j].text if cfg.critic == "judge" else
             tasks.critique(p.task, p.solutions[j].text) for p, j in redo]
    asked = [roles.revise_prompt(p.task.prompt, p.solutions[j].text, note)
             for (p, j), note in zip(redo, notes)]
    for (p, j), prompt, r in zip(redo, asked, sample_texts(policy, tok, asked, cfg, gen)):
        whole = whole_revision(tok, cfg, p.solutions[j], prompt, r)
        p.revisions[j].append(r)
        p.revised[j].append(whole)
        right = tasks.faithful(p.task, whole.text)
        p.gains[j].append(float(R.revision_gain(p.correct[j], right)))
    # 5. rewards, advantages and credit of every role
    # judged only where every solution is wrong, a verdict could only reward a wrong one
    alpha = 1.0 if cfg.judged != "all" else R.alpha_schedule(step, cfg.alpha_steps,
                                                              cfg.alpha_floor)
    trained, rewards = R.self_play_samples(posings, alpha)
    samples = [update.Sample(role, c.prompt_ids, c.ids, coef) for role, c, coef in trained]
    stats = {**{f"reward/{role}": r for role, r in rewards.items()},
             "acc/solve": [c for p in problems for c in p.correct],
             "pose_validity": [float(p.task is not None) for p in posings if p.pose is not None],
             "judge_agreement": [R.agreement(v, r) for p in problems
                                 for c, v, r in zip(p.critiques, p.verdicts, p.correct) if c],
             "corrected": [float(any(g > 0 for g in gains))
                           for p in problems for gains in p.gains]}
    groups = [Group(p.task.family, p.task.level, p.correct,
                    any(g > 0 for gains in p.gains for g in gains),
                    [c and v is True for c, v in zip(p.critiques, p.verdicts)]) for p in problems]
    # one whole rollout for samples.jsonl: the first posing, and the first problem (that
    # posing's if it was valid) with its solutions, critiques and revisions
    first = problems[0]
    shown = [{"pose": posings[0].pose and posings[0].pose.text,  # None: no poser (posings=0)
              "valid": posings[0].task is not None,
              "problem": first.task.prompt, "answer": first.task.answer,
              "solutions": [{"text": s.text, "correct": c, "critique": k and k.text, "verdict": v,
                             "revisions": [w.text for w in r], "revision_gains": g}
                            for s, c, k, v, r, g in zip(first.solutions, first.correct,
                                                        first.critiques, first.verdicts,
                                                        first.revised, first.gains)]}]
    return samples, stats, groups, shown


def audited_pointer(task, solution, critique):
    """The step k the critique names as the solution's first wrong one, if the environment finds
    every step before k right (its first wrong step, tasks.first_wrong_step, is k or later);
    else None, and the solution takes its advantage whole. Token credit spares the steps before
    k, so a pointer past the first error would spare wrong steps: unchecked, the judge's late
    pointers (on its own solutions it named the teacher's step 13 times in 152 at induction
    level 3, often flagging the Answer line) taught answers that follow from none of the steps,
    and abduction fell below chance under self-play (docs/findings.md, "Why the judge's
    pointer is audited"). A task without reference steps (JSONL) keeps only k = 1, which
    spares nothing."""
    k, first = roles.parse_pointer(critique), tasks.first_wrong_step(task, solution)
    return k if k is not None and (first is None or k <= first) else None


def whole_revision(tok, cfg, solution, prompt, revision):
    """A revision as the solver would have written it, in `solution`'s solve prompt: the start
    its revise prompt ended on, then what the reviser wrote. The start's ids are those the
    reviser read, the tail of its prompt's ids (encoded alone, a SentencePiece tokenizer would
    open them with a space marker); if encoding did not split the prompt there, the start
    encoded alone."""
    asked, start = roles.split_prompt(prompt)
    head = M.encode(tok, [roles.render(tok, asked, cfg.hints)])[0]
    read = revision.prompt_ids[len(head):] if revision.prompt_ids[:len(head)] == head else \
        tok(start, add_special_tokens=False)["input_ids"]
    return sampling.Completion(solution.prompt_ids, read + revision.ids,
                               roles.revision(prompt, revision.text), revision.finished)


def means_over_ranks(stats):
    """{key: list of values on this rank} -> {key: mean over every rank's values, or None}."""
    sums = M.all_reduce([x for values in stats.values() for x in (sum(values), len(values))])
    return {key: total / count if count else None
            for key, total, count in zip(stats, sums[0::2], sums[1::2])}


def group_counts(families, groups):
    """Per family, the step's groups, those whose solutions were all wrong (scalar GRPO learns
    nothing from them; in alive only the judge's verdict, where it errs, tells them apart) and
    those of them that a revision rescued (a whole right chain, trained as a right solution in
    the solve prompt; alive only); and the wrong solutions judged, with those the judge accepted
    (alive only): on the policy's own errors, which the eval's corrupted solutions may not
    resemble. Counts, so a run's totals are sums over its metrics.jsonl (curves.group_table)."""
    counts = {}
    for family in families:
        mine = [g for g in groups if g.family == family]
        wrong = [g for g in mine if not any(g.correct)]
        accepted = [a for g in mine for c, a in zip(g.correct, g.accepted)
                    if not c and a is not None]  # the wrong ones it judged
        counts.update({f"groups/{family}": len(mine), f"all_wrong/{family}": len(wrong),
                       f"rescued/{family}": sum(g.rescued for g in wrong),
                       f"judged_wrong/{family}": len(accepted),
                       f"accepted_wrong/{family}": sum(accepted)})
    return counts


def update_curriculum(curriculum, history, groups, cfg):
    """Raise a family's level when the solver beats `promote` there, lower it below `demote`."""
    for g in groups:
        if g.level == curriculum.get(g.family):
            history.setdefault(g.family, []).extend(g.correct)
    for family, results in history.items():
        if len(results) >= 16:
            rate = sum(results) / len(results)
            if rate > cfg.promote and curriculum[family] < max(tasks.LEVELS):
                curriculum[family] += 1
            elif rate < cfg.demote and curriculum[family] > min(tasks.LEVELS):
                curriculum[family] -= 1
            history[family] = []


def judge_anchor(rng, tok, cfg, plan):
    """This rank's share of the step's `judge_anchor` teacher pairs (the warm-up's judge demos: a
    reference solution and a corrupted one) on the plan's families and levels, as samples of
    coefficient 1: with one epoch the policy gradient of such a sample is its NLL gradient (with
    ppo_epochs > 1 its ratio is clipped like any other). In self-play most solutions of a hard
    family are wrong, so "incorrect" agrees with the verifier almost always there, and the judge
    drifts to rejecting reference solutions it accepted after the warm-up (README); the pairs
    keep the comparison itself in the loss. Their tokens count in the loss's normalizer (and in
    the logged loss, which they lower by about their share of tokens)."""
    cells = (plan[k % len(plan)] for k in range(M.share(cfg.judge_anchor)))
    return [update.nll_sample(tok, "anchor", prompt, critique, cfg)
            for family, level in cells
            for prompt, critique in roles.demonstrations(rng, family, level, "judge",
                                                         cfg.judge_sees)]


def rl_step(policy, optimizer, tok, cfg, step, rank, state):
    """One self-play (or scalar-baseline) step; `state` carries the curriculum across steps."""
    rng, gen = update.step_randomness(cfg, step, rank)
    plan = seed_plan(rng, cfg, state["curriculum"])
    policy.eval()
    if cfg.reward == "scalar":
        samples, stats, groups, shown = scalar_rollouts(policy, tok, cfg, plan, rng, gen)
    else:
        samples, stats, groups, shown = alive_rollouts(policy, tok, cfg, plan, rng, gen, step)
        samples += judge_anchor(rng, tok, cfg, plan)
    policy.train()
    metrics = update.train_on(policy, optimizer, samples, cfg, tok.pad_token_id, "pg",
                              cfg.ppo_epochs)
    # every rank must agree on the curriculum: gather every rank's groups
    everyone = sum(M.all_gather_objects(groups), [])
    update_curriculum(state["curriculum"], state["history"], everyone, cfg)
    metrics.update(means_over_ranks(stats))
    metrics.update(group_counts(cfg.families.split(","), everyone))
    for role in ("pose", "solve", "judge", "revise"):
        lengths = [len(s.ids) for s in samples if s.role == role]
        metrics[f"len/{role}"] = sum(lengths) / len(lengths) if lengths else None
    metrics.update({f"level/{f}": lvl for f, lvl in state["curriculum"].items()})
    return metrics, shown


def refine_step(policy, optimizer, tok, cfg, step, rank, state):
    """Alignment via refinement: solve each problem once, then two chains of up to
    `refine_rounds` self-critique -> revise rounds from that solution (refine.refine_rounds);
    DPO on refine.refinement_pairs (a revision against what it revised; the better of the two
    first critiques by revision gain) plus NLL on the long refinement thoughts of the chains
    that turned a wrong solution into a right one."""
    rng, gen = update.step_randomness(cfg, step, rank)
    plan = seed_plan(rng, cfg, state["curriculum"])
    task_of = {t.prompt: t for t in environment_tasks(plan, rng, cfg)}
    problems = list(task_of)
    reference = {p: roles.judge_reference(t, cfg.judge_sees) for p, t in task_of.items()}

    def judge(ps, solutions):
        prompts = [roles.judge_prompt(p, reference[p], s) for p, s in zip(ps, solutions)]
        return [(c.text, roles.parse_verdict(c.text))
                for c in sample_texts(policy, tok, prompts, cfg, gen)]

    def revise(ps, solutions, critiques):
        prompts = [roles.revise_prompt(p, s, c) for p, s, c in zip(ps, solutions, critiques)]
        return [roles.revision(asked, r.text)
                for asked, r in zip(prompts, sample_texts(policy, tok, prompts, cfg, gen))]

    policy.eval()
    sols = [s.text for s in sample_texts(policy, tok, [roles.solve_prompt(p) for p in problems],
                                         cfg, gen)]
    chains = R.refine_rounds(judge, revise, lambda p, s: evaluation.score(task_of[p], s),
                             [p for p in problems for _ in range(2)],
                             [s for s in sols for _ in range(2)], cfg.refine_rounds)
    policy.train()
    records, thoughts = [], []
    for i, p in enumerate(problems):
        pair_of_chains = chains[2 * i:2 * i + 2]
        records += R.chain_records(p, pair_of_chains)
        for chain in pair_of_chains:
            if chain[0].score < 1 <= chain[-1].score:
                text = R.long_thought(chain[0].solution,
                                      [(a.critique, b.solution) for a, b in zip(chain, chain[1:])],
                                      roles.parse_answer(chain[-1].solution))
                thoughts.append(update.nll_sample(tok, "refine", roles.solve_prompt(p), text,
                                                  cfg))
    samples = []
    for pair in R.refinement_pairs(records):
        prompt = (roles.solve_prompt(pair.problem) if pair.role == "solve" else
                  roles.judge_prompt(pair.problem, reference[pair.problem], pair.solution))
        samples += [update.nll_sample(tok, pair.role, prompt, pair.chosen, cfg),
                    update.nll_sample(tok, pair.role, prompt, pair.rejected, cfg)]
    metrics = update.dpo_update(policy, optimizer, samples, thoughts, cfg, tok.pad_token_id)
    metrics.update(means_over_ranks({
        "reward/revise": [b.score - a.score for chain in chains for a, b in zip(chain, chain[1:])],
        "revisions": [len(chain) - 1 for chain in chains],
        "acc/solve": [float(chain[0].score >= 1) for chain in chains[::2]]}))
    metrics["pairs"], metrics["thoughts"] = M.all_reduce([len(samples) // 2, len(thoughts)])
    return metrics, []

