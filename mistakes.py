"""mistakes.py: a short NLL stage on the model's own errors, between the warm-up and self-play.

The warm-up's teacher demonstrates judging and revising on its own corruptions of reference
solutions: one slipped value, or a miscount. The policy's own wrong solutions look otherwise
(deductions that stop short or skip a rule, a misread difference), and on those the warmed-up
judge accepted about half its wrong deductions while its reviser, started on the fix of a step
it had never seen go wrong that way, completed almost none (docs/findings.md, "A reviser taught
on its own errors"). This stage shows the teacher at work on the model's own solutions:

  1. once, at the start: `mistakes_pool` train problems (a random family of --families and a
     random level of 1-5) solved by the policy at the rollout temperature; the verifier splits
     them into right and wrong;
  2. every step, NLL (L = -(1/T) sum_t log pi(y_t | prompt, y_<t), as in the warm-up) on
       batch/2  demonstrations of the warm-up's mix (warmup.demonstration_batch), so the roles
                the stage does not show are not forgotten;
       batch/2  judge demonstrations: the teacher's critique (tasks.critique) of an own
                solution, three wrong ones for each right one;
       batch/4  revise demonstrations: an own wrong solution and its teacher critique, the prompt
                ending on the teacher's fix (roles.revise_prompt), the completion the rest of the
                reference solution; only where the solution's lines before the fix are the
                reference's (else no reference completes it), and never abduction: with its own
                errors' revise demonstrations, the solver learned to pick the wrong cause (0.12-0.18
                at levels 3 and up, below a uniform guess's 0.36; findings);
     so 1.25 x batch samples a step, one optimizer step (update.train_on), the rate decaying as
     in the warm-up.

Simplifications: the pool is sampled once, from the model the stage starts from, so late in the
stage its solutions are no longer quite the policy's; its texts sit in the resumable state, so a
resumed run trains on the same pool.

    python train.py --stage=mistakes --model=runs/evidence/warmup/model --out=runs/m \
        --steps=600 --judge_sees=solution

Tests: tests/test_mistakes.py.
"""
import functools
import random

import eval as evaluation
import model as M
import roles
import selfplay
import tasks
import update
import warmup

NO_REVISE_DEMOS = ("abduction",)  # families whose own errors are never revise demonstrations


def pool_problems(seed, families, size):
    """The pool's problems, the same on every rank and on resume (drawn from the seed alone)."""
    rng = random.Random(f"mistakes/{seed}")
    return [tasks.sample(rng.choice(families.split(",")), rng.choice(tasks.LEVELS), rng, "train")
            for _ in range(size)]


def own_solutions(policy, tok, cfg, gen):
    """The policy's solution of every pool problem, each rank solving its share, gathered so
    that every rank holds them all (in the pool's order)."""
    problems = pool_problems(cfg.seed, cfg.families, cfg.mistakes_pool)
    mine = list(range(M.rank(), len(problems), M.world()))
    texts = [c.text for c in selfplay.sample_texts(
        policy, tok, [roles.solve_prompt(problems[i].prompt) for i in mine], cfg, gen)]
    solved = {}
    for indices, answers in M.all_gather_objects((mine, texts)):
        solved.update(zip(indices, answers))
    return [solved[i] for i in range(len(problems))]


def revise_demo(task, wrong):
    """(revise prompt ending on the teacher's fix, the rest of the reference solution), or None
    when the fix starts nothing (no step named) or the solution's lines before it differ from
    the reference's."""
    prompt = roles.revise_prompt(task.prompt, wrong, tasks.critique(task, wrong))
    start, reference = roles.split_prompt(prompt)[1], tasks.solve(task)
    return (prompt, reference[len(start):]) if start and reference.startswith(start) else None


@functools.lru_cache(maxsize=1)
def split_pool(seed, families, texts):
    """(right, wrong, revise demonstrations) of the pool: once per process, not per step."""
    pool = list(zip(pool_problems(seed, families, len(texts)), texts))
    scores = [evaluation.score(t, x) for t, x in pool]
    right = [item for item, score in zip(pool, scores) if score]
    wrong = [item for item, score in zip(pool, scores) if not score]
    fixes = [demo for t, x in wrong if t.family not in NO_REVISE_DEMOS
             for demo in [revise_demo(t, x)] if demo]
    return right, wrong, fixes


def mistakes_step(policy, optimizer, tok, cfg, step, rank, state):
    """One NLL step of the module docstring's batch; the first samples the pool into `state`."""
    rng, gen = update.step_randomness(cfg, step, rank)
    if "mistakes" not in state:
        policy.eval()
        state["mistakes"] = own_solutions(policy, tok, cfg, gen)
        policy.train()
    right, wrong, fixes = split_pool(cfg.seed, cfg.families, tuple(state["mistakes"]))
    levels, mix = warmup.demo_settings(cfg)
    samples = warmup.demonstration_batch(rng, tok, cfg, levels, mix,
                                         max(1, M.share(cfg.batch // 2)))
    # a quarter of the critiques are of right solutions, counted over all ranks (per rank, a
    # share of 3 or fewer would round it to none: a judge that only ever rejects)
    n_right = M.share(cfg.batch // 2 // 4)
    for k in range(n_right + M.share(cfg.batch // 2 - cfg.batch // 2 // 4)):
        task, text = rng.choice((right if k < n_right else wrong) or right or wrong)
        prompt = roles.judge_prompt(task.prompt, roles.judge_reference(task, cfg.judge_sees), text)
        samples.append(update.nll_sample(tok, "judge", prompt, tasks.critique(task, text), cfg))
    for _ in range(M.share(cfg.batch // 4) if fixes else 0):
        samples.append(update.nll_sample(tok, "revise", *rng.choice(fixes), cfg))
    metrics = update.train_on(policy, optimizer, samples, cfg, tok.pad_token_id, "nll")
    n = len(state["mistakes"])
    metrics.update({"pool/right": len(right) / n, "pool/wrong": len(wrong) / n,
                    "pool/revise_demos": len(fixes) / n})
    return metrics, []
