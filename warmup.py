"""warmup.py: the warm-up stage, NLL on demonstrations of every role before any self-play.

Each step draws `batch` samples: a role by --demo_mix (solve, judge, revise, pose, raw text),
a family, a level of that role's levels (--demo_levels; --judge_levels for the judge and the
poser, --revise_levels for the reviser), and the programmatic teacher's demonstration of that role
(roles.demonstrations; a judge demonstration is a pair, the same task with its reference
solution and corrupted). The loss is the completion tokens' weighted negative
log-likelihood, L = -(1/T) sum_t w_t log pi(y_t | prompt, y_<t), one optimizer step per batch
(update.train_on), with w_t = 1 except, while the batch is judge pairs alone, on the token of
a critique that decides its verdict (`verdict_token`), which weighs --verdict_weight.

Judging is learned late and abruptly, and not at all when mixed with the other roles from the
start (tests/bench_judge.py). So with --judge_first=N the first N steps show judge pairs only, at
the peak rate, and that phase ends early once `verdict_check` (held-out, teacher-forced, in the
family judged worst) passes --judge_pass; the mixed phase that follows decays from --mixed_lr of
the rate (train.lr_factor).

    python train.py --stage=warmup --out=runs/w --steps=2000 [--judge_first=1200 ...]
"""
import functools
import random

import torch

import eval as evaluation
import jsonl
import model as M
import roles
import tasks
import update


def demo_settings(cfg):
    """({role: the levels of its demonstrations}, weight of each of roles.DEMO_KINDS) from
    --demo_levels, --judge_levels (judge and pose), --revise_levels and --demo_mix."""
    def read(levels):
        return [int(x) for x in (levels or cfg.demo_levels).split(",")]
    solved, judged = read(cfg.demo_levels), read(cfg.judge_levels)
    levels = dict.fromkeys(roles.DEMO_KINDS, solved)
    levels.update(judge=judged, pose=judged, revise=read(cfg.revise_levels))
    return levels, [float(x) for x in cfg.demo_mix.split(",")]


def demonstration(rng, tok, cfg, levels, mix):
    """NLL samples of one demonstration of a random role on a task of one of its `levels` (a
    dict by role; corpus text for language modelling). The judge and the poser may see longer
    problems than the solver: neither solves, so they demonstrate no solving. A reviser does,
    helped by the critique (--revise_levels; "" keeps it on the solver's levels). `mix` weighs
    the roles by their share of samples, so a judge demonstration (a pair,
    roles.demonstrations) is drawn at half its weight."""
    family = rng.choice(cfg.families.split(","))
    kind = rng.choices(roles.DEMO_KINDS, [w / 2 if k == "judge" else w
                                          for k, w in zip(roles.DEMO_KINDS, mix)])[0]
    level = rng.choice(levels[kind])  # drawn for text too: one stream of draws for any mix
    if kind == "text":
        return [update.nll_sample(tok, kind, "", raw_document(rng, cfg), cfg)]
    return [update.nll_sample(tok, kind, prompt, completion, cfg)
            for prompt, completion in roles.demonstrations(rng, family, level, kind,
                                                           cfg.judge_sees)]


def demonstration_batch(rng, tok, cfg, levels, mix, size):
    """`size` NLL samples of `demonstration`s."""
    samples = []
    while len(samples) < size:
        drawn = demonstration(rng, tok, cfg, levels, mix)
        # a pair that does not fit gives one of its halves, either: always the first (the
        # reference solution) would show the judge more accepts than rejects
        samples += drawn if len(samples) + len(drawn) <= size else [rng.choice(drawn)]
    return samples


def verdict_token(tok, ids):
    """The index in a critique's ids of the token that decides its verdict: the first after the
    echo line (`Verdict` when the two answers agree, `Step` when they differ), or the token that
    carries the line break when the tokenizer merges it into the next word. Of a critique's
    10-30 tokens it is the one that needs the comparison; the rest copy the solution, the
    reference or the teacher's fix."""
    for end in range(1, len(ids) + 1):
        text = tok.decode(ids[:end])
        if "\n" in text:
            return end if text.endswith("\n") and end < len(ids) else end - 1
    raise ValueError(f"a critique without a line break: {tok.decode(ids)!r}")


def raw_document(rng, cfg):
    """A document for language modelling: from --corpus when given, else a story of the corpus
    family at any level (the raw corpus may be broader than the demonstrations)."""
    if cfg.corpus:
        return rng.choice(corpus_documents(cfg.corpus))
    return tasks.document(rng, rng.choice(tasks.LEVELS))


@functools.lru_cache(maxsize=None)
def corpus_documents(path):
    """The documents of a --corpus file, read once per process (train.parse_args reads it first,
    so a bad file is refused before any model is built)."""
    return jsonl.load_corpus(path)


def warmup_step(policy, optimizer, tok, cfg, step, rank, state):
    """One NLL step on demonstrations. Judging is learned late and abruptly, and not at all
    when mixed with the other roles from the start (tests/bench_judge.py), so the first
    `judge_first` steps show judge demonstrations of `demo_levels` only, and that phase ends
    early once `verdict_check` passes; the judge and the poser see `judge_levels` after it, the
    reviser `revise_levels`."""
    rng, _ = update.step_randomness(cfg, step, rank)
    levels, mix = demo_settings(cfg)
    judge_phase = step < cfg.judge_first and "judge_learned" not in state
    if judge_phase:  # judge pairs of the solver's levels only
        mix = [float(kind == "judge") for kind in roles.DEMO_KINDS]
        levels = dict(levels, judge=levels["solve"])
    samples = demonstration_batch(rng, tok, cfg, levels, mix, max(1, M.share(cfg.batch)))
    if not any(w for kind, w in zip(roles.DEMO_KINDS, mix) if kind != "judge"):
        # judge pairs alone: the token that decides the verdict weighs more (in the role mix
        # the weight cost the tutorial's solver half its accuracy on levels 1-2)
        for sample in samples:
            sample.coef[verdict_token(tok, sample.ids)] = cfg.verdict_weight
    metrics = update.train_on(policy, optimizer, samples, cfg, tok.pad_token_id, "nll")
    if cfg.judge_first and (step + 1) % CHECK_EVERY == 0:  # logged after the phase too
        shares = verdict_check(policy, tok, cfg, levels["solve"])
        metrics["verdict_check"] = min(shares.values())  # the family judged worst decides
        metrics.update({f"verdict_check/{family}": v for family, v in shares.items()})
        if judge_phase and metrics["verdict_check"] >= cfg.judge_pass:
            state["judge_learned"] = step + 1
    return metrics, []


CHECK_EVERY = 100  # warm-up steps between two verdict checks
VERDICT_CASES = {}  # (tokenizer, families, levels, n, seed, hints, judge_sees) -> cases


def verdict_check(policy, tok, cfg, levels, n=64):
    """{family: the share of its held-out judgements whose verdict the model gets right when the
    teacher's critique is given up to its deciding token} (`verdict_token`: `Verdict` or `Step`,
    or the token that carries the line break into one of them): n problems over the families,
    each judged with its reference solution and corrupted. The comparison is learned family by
    family, so the warm-up passes the check on the lowest share (one over all families passed
    0.91 while induction and abduction were near chance, and the mixed phase then took it down
    to 0.75). Teacher-forced, no sampling; its problems are drawn apart from the evaluation's
    (eval.held_out with their own seed)."""
    families = cfg.families.split(",")
    key = (tok.name_or_path, len(tok), cfg.families, tuple(levels), n, cfg.seed, cfg.hints,
           cfg.judge_sees)
    if key not in VERDICT_CASES:
        cases = []
        for task in evaluation.held_out(families, levels, n, seed=f"verdict-check:{cfg.seed}"):
            for prompt, critique in roles.judge_pair(task, random.Random(task.prompt),
                                                     cfg.judge_sees):
                ids = tok(critique, add_special_tokens=False)["input_ids"]
                decisive = verdict_token(tok, ids)
                rendered = roles.render(tok, prompt, cfg.hints)
                cases.append((M.encode(tok, [rendered])[0] + ids[:decisive], [ids[decisive]],
                              task.family))
        VERDICT_CASES[key] = cases
    cases, right = VERDICT_CASES[key], []
    policy.eval()  # no activation checkpointing, no dropout
    with torch.no_grad():
        for i in range(0, len(cases), cfg.micro_batch):
            chunk = cases[i:i + cfg.micro_batch]
            packed = M.pack([p for p, _, _ in chunk], [t for _, t, _ in chunk],
                            tok.pad_token_id, M.device_of(policy))
            right += M.run_head(policy, packed, lambda h, w: (
                torch.mm(h.float(), w.t().float()).argmax(-1) == packed.targets)).tolist()
    policy.train()
    by_family = {family: [] for family in families}
    for hit, (_, _, family) in zip(right, cases):
        by_family[family].append(hit)
    shares = [sum(hits) / max(1, len(hits)) for hits in by_family.values()]
    # every rank scored the same cases; the mean keeps them in exact agreement
    return {family: share / M.world() for family, share in zip(families, M.all_reduce(shares))}

