"""train.py: every stage of the pipeline, single process or `torchrun` (FSDP2).

    python train.py                          # tiny default into runs/tiny (2-core CPU, ~6 min)
    python train.py --stage=alive --model=DIR --out=DIR [--steps=N --seed=N --resume ...]
    torchrun --nproc_per_node=8 train.py --stage=alive --model=/path/to/8B --out=runs/8b \
        --rl_lr=1e-6

Stages (each reads a model directory and writes `<out>/model`, `<out>/metrics.jsonl`):
  warmup   NLL on demonstrations of every role at levels 1-2 (roles.demonstrations) and
           on raw documents; with --judge_first=N, judge demonstrations alone for at most N
           steps, ending early once a held-out verdict check passes (judging is learned late
           and abruptly, and not at all when mixed with the other roles from the start).
  alive    self-play: per step B seeds, M posings each (validated by the environment), N
           solutions per valid posing, every solution judged in words and revised if not
           accepted; rewards per role from refine.py; one clipped policy-gradient loss.
  align    one meta-ability (--ability), GRPO on exact match; merge: the three aligned models
           as task vectors (merge.py); domain: self-play from the merge.
  refine   alignment via refinement: chains of self-critique -> revise, DPO on (better, worse)
           pairs, NLL on the long refinement thoughts of chains that fixed a solution.
  all      warmup, alive, and the before/after table; compare: alive, --reward=scalar (plain
           GRPO, no poser or judge) and an SFT control, equal wall time from one warm-up;
           meta: align x3, merge, domain, from one warm-up.

The loss: L = -sum_t min(r_t c_t, clip(r_t) c_t) / T_global, c_t a token's coefficient (its
advantage times its credit, refine.py), r_t = pi_theta / pi_old; each rank divides by the
global token count and scales by the world size, since FSDP averages gradients over ranks.

Simplifications, stated plainly:
  - one optimizer step per rollout batch, so r_t = 1 and the clip acts only with ppo_epochs > 1
    (pi_old is then the trainer's own forward, not the sampler's bf16 log-probs); the KL of
    kl_coef is to that pi_old, so it too acts only from the second epoch. At 8B the options that
    matter are rl_lr, the batch sizes and max_new_tokens; ppo_epochs and kl_coef are for
    experiments;
  - p_hat and a revision's correctness come from the verifier, which every family here has;
    the judge's verdict enters the solver's reward with weight 1 - alpha;
  - a revision is trained in its own critique-conditioned prompt; one that fixes the answer is
    also trained in the solve prompt with reward 1 (the off-policy part of self-correction: its
    ratio is taken against the solve prompt as if sampled there);
  - DPO in `refine` uses the sampling policy as its reference (no second copy);
  - every step's randomness derives from (seed, step, rank): a resumed run repeats the
    uninterrupted one exactly on CPU.
"""
import dataclasses
import gc
import json
import math
import os
import random
import sys
import time
from dataclasses import dataclass

import torch
import torch.distributed as dist
from tqdm import tqdm

import eval as evaluation
import merge as merging
import model as M
import refine as R
import roles
import tasks

STAGES = ("warmup", "alive", "align", "merge", "domain", "refine", "all", "compare", "meta")


@dataclass
class Config:
    stage: str = "all"          # one of STAGES
    model: str = ""             # input model directory; "" builds the tiny default:
    tiny_layers: int = 2        # ... its decoder layers,
    tiny_hidden: int = 128      # ... hidden size (the MLP is 3x wider)
    tiny_heads: int = 4         # ... and attention heads
    out: str = "runs/tiny"      # run directory of this stage (or of the whole pipeline)
    steps: int = 0              # optimizer steps of the stage; 0 = that stage's default below
    warmup_steps: int = 1000    # default steps of warmup
    rl_steps: int = 100         # default steps of alive / align / domain
    refine_steps: int = 30      # default steps of refine
    refine_rounds: int = 2      # refine: most critique -> revise rounds per chain
    seed: int = 0               # every step's randomness derives from (seed, step, rank)
    resume: bool = False        # continue from <out>/state
    ability: str = "deduction"  # align: which meta-ability (deduction|induction|abduction)
    reward: str = "verbal"      # alive/domain: verbal (the judge's words) | scalar (GRPO baseline)
    families: str = "deduction,induction,abduction,corpus"  # task families used in training
    corpus: str = ""            # JSONL of {"text": ...} raw documents; "" = the generated one
    lr: float = 4e-3            # learning rate of NLL stages (tiny default; ~1e-5 for 8B)
    rl_lr: float = 1e-4         # learning rate of RL stages (5e-4 collapsed the tiny model)
    lr_warmup: int = 10         # linear learning-rate warm-up steps
    grad_clip: float = 1.0      # max global grad norm
    weight_decay: float = 0.0   # AdamW's decoupled weight decay
    batch: int = 32             # warmup: demonstration samples per step (per rank: / world)
    seeds: int = 8              # alive: seeds (problem families x levels) per step, all ranks
    posings: int = 2            # alive: M posings per seed
    solutions: int = 4          # alive: N solutions per valid posing
    temperature: float = 1.0    # rollout sampling temperature
    top_p: float = 1.0          # rollout nucleus
    max_new_tokens: int = 160   # per completion
    micro_batch: int = 16       # sequences per forward/backward
    clip_eps: float = 0.2       # PPO ratio clip
    ppo_epochs: int = 1         # optimizer steps per rollout batch
    kl_coef: float = 0.0        # k3 KL to the sampling policy (off by default)
    alpha_floor: float = 0.5    # lowest weight of the verifier in the solver's reward
    alpha_steps: int = 100      # steps over which alpha anneals from 1 to alpha_floor
    audits: bool = False        # alive: the judge also judges a reference and a slipped solution
    promote: float = 0.6        # curriculum: raise a family's level when its solve rate is above
    demote: float = 0.1         # ... lower it when below this
    start_level: int = 2        # curriculum: starting level of every family
    demo_levels: str = "1,2"    # warmup: levels of the demonstrations
    judge_levels: str = ""      # warmup: levels of judge and pose demos after the judge-only
                                #   phase; "" = demo_levels
    demo_mix: str = "3,3,2,1,1"  # warmup: share of solve,judge,revise,pose,text samples
    judge_first: int = 0        # warmup: at most N first steps on judge demonstrations only,
    judge_pass: float = 0.9     # ... ending once the verdict check (held-out) reaches this share;
    mixed_lr: float = 0.25      # ... then the mixed phase peaks at this share of lr
    merge_method: str = "task_arithmetic"  # merge: linear|task_arithmetic|ties|dare
    merge_density: float = 0.5  # merge: ties/dare density
    merge_models: str = ""      # merge: comma-separated dirs; "" = <out>/../align_<ability>/model
    dpo_beta: float = 0.1       # refine: DPO temperature
    save_every: int = 20        # steps between resumable checkpoints
    eval_n: int = 200           # held-out solver items per evaluation in `all`
    compare_minutes: float = 4.0  # compare: wall minutes of each of the three arms
    compare_eval_n: int = 600   # compare, meta: held-out items for the final table
    hints: bool = False         # prepend format hints to role prompts (for chat models)
    checkpointing: str = "auto"  # activation checkpointing: auto (on with CUDA) | on | off
    threads: int = 0            # CPU threads per process; 0 = cores / ranks


# ----------------------------------------------------------------------------- config

def parse_args(argv):
    cfg = Config()
    fields = {f.name: f for f in dataclasses.fields(Config)}
    for arg in argv:
        key, _, value = arg.lstrip("-").partition("=")
        if not arg.startswith("--") or key not in fields:
            sys.exit(f"train.py: unknown argument {arg!r}; valid keys: "
                     + ", ".join(f"--{k}" for k in fields))
        kind = type(getattr(cfg, key))
        try:
            if kind is bool:
                if value.lower() not in ("", "1", "true", "0", "false"):
                    raise ValueError(value)
                parsed = value.lower() in ("", "1", "true")
            else:
                parsed = kind(value)
        except ValueError:
            sys.exit(f"train.py: --{key}={value!r} is not a valid {kind.__name__}")
        setattr(cfg, key, parsed)
    checks = {"stage": STAGES, "reward": ("verbal", "scalar"),
              "checkpointing": ("auto", "on", "off"),
              "ability": tasks.FAMILIES[:3], "merge_method": merging.METHODS}
    for key, valid in checks.items():
        if getattr(cfg, key) not in valid:
            sys.exit(f"train.py: --{key}={getattr(cfg, key)!r}; valid: {', '.join(valid)}")
    bad = [f for f in cfg.families.split(",") if f not in tasks.FAMILIES]
    if bad:
        sys.exit(f"train.py: --families has {bad}; valid: {', '.join(tasks.FAMILIES)}")
    try:
        levels, mix = demo_settings(cfg)
        judged = judge_levels(cfg)
    except ValueError:
        sys.exit("train.py: --demo_levels, --judge_levels and --demo_mix take comma-separated "
                 "numbers")
    if not set(levels) | set(judged) <= set(tasks.LEVELS):
        sys.exit(f"train.py: --demo_levels={cfg.demo_levels!r}, --judge_levels="
                 f"{cfg.judge_levels!r}; levels are {tasks.LEVELS}")
    if len(mix) != len(roles.DEMO_KINDS) or min(mix) < 0 or sum(mix) <= 0:
        sys.exit(f"train.py: --demo_mix={cfg.demo_mix!r} needs {len(roles.DEMO_KINDS)} weights "
                 f">= 0, not all 0, for {','.join(roles.DEMO_KINDS)}")
    if cfg.corpus:
        try:
            CORPUS[cfg.corpus] = tasks.load_corpus(cfg.corpus)
        except (OSError, ValueError) as err:
            sys.exit(f"train.py: --corpus: {err}")
    return cfg


# ----------------------------------------------------------------------------- samples and loss

@dataclass
class Sample:
    """One sequence to train on: a prompt, a completion and a coefficient per completion token."""
    role: str
    prompt_ids: list
    ids: list
    coef: list


@dataclass
class MicroBatch:
    """Samples packed for one forward on the policy's device."""
    packed: M.Packed
    coef: torch.Tensor  # [n] coefficient of each completion token
    mask: torch.Tensor  # [n] bool, False on a padding batch
    padding: bool       # a stand-in that keeps this rank in step with the others


def micro_batches(groups, pad_id, device):
    """One MicroBatch per group of samples, then padding ones up to the most any rank has (at
    least one): every FSDP forward is a collective, so every rank runs as many. A padding batch
    (one pad token, coefficient 0, mask False) gives exactly 0 loss and 0 gradient."""
    count = max(1, int(M.all_reduce([len(groups)], "max")[0]))
    out = []
    for group in groups + [None] * (count - len(groups)):
        part = group or [Sample("padding", [pad_id], [pad_id], [0.0])]
        packed = M.pack([s.prompt_ids for s in part], [s.ids for s in part], pad_id, device)
        coef = torch.tensor([c for s in part for c in s.coef], device=device)
        out.append(MicroBatch(packed, coef, torch.full_like(coef, group is not None,
                                                            dtype=torch.bool), group is None))
    return out


def logprobs_of(policy, batch):
    """log pi of the batch's completion tokens, by the fused loss's arithmetic (no gradient)."""
    with torch.no_grad():
        return M.run_head(policy, batch.packed,
                          lambda h, w: R.token_logprobs(h, w, batch.packed.targets))


def train_on(policy, optimizer, samples, cfg, pad_id, mode, epochs=1):
    """`epochs` optimizer steps on `samples` (mode "pg" or "nll"), each the gradient of the fused
    loss summed over micro-batches of `micro_batch` samples. The loss is divided by the global
    token count and scaled by the world size, since FSDP averages gradients over ranks.

    The policy gradient's pi_old and the KL's reference are the policy before the first epoch:
    with one epoch and no KL it is pi_theta itself (ratio exactly 1, nothing to compute); else its
    log-probs are taken by the loss's own arithmetic on the same micro-batches, so the first
    epoch's ratio is exactly 1 in bf16 too (the sampler's bf16 log-probs would not be). Returns
    the last epoch's figures (loss, entropy, grad norm, tokens, and the clipped fraction)."""
    device = M.device_of(policy)
    samples = sorted(samples, key=lambda s: len(s.prompt_ids) + len(s.ids))  # less padding
    size = cfg.micro_batch
    batches = micro_batches([samples[i:i + size] for i in range(0, len(samples), size)], pad_id,
                            device)
    tokens = M.all_reduce([sum(len(s.ids) for s in samples)])[0]
    normalizer = torch.tensor(max(tokens, 1.0), device=device)
    old = [None] * len(batches)
    if mode == "pg" and (epochs > 1 or cfg.kl_coef):
        old = [logprobs_of(policy, b) for b in batches]
    for _ in range(epochs):
        totals = []
        for b, old_logp in zip(batches, old):
            def head(hidden, weight):
                return R.fused_loss(hidden, weight, b.packed.targets, b.coef, mode,
                                    old_logp=old_logp, clip_eps=cfg.clip_eps,
                                    kl_coef=cfg.kl_coef, ref_logp=old_logp if cfg.kl_coef else None,
                                    mask=b.mask, normalizer=normalizer)
            loss, stats = M.run_head(policy, b.packed, head)
            (loss * M.world()).backward()
            totals.append(figures(loss, stats, b.mask))
        metrics = finish_step(policy, optimizer, cfg, torch.stack(totals).sum(0))
    return metrics


def figures(loss, stats, mask):
    """[loss, entropy x tokens, tokens, clipped tokens] of one micro-batch, on its device."""
    n = mask.sum().to(loss.dtype)
    clipped = stats.get("clip_frac", torch.zeros_like(n))
    return torch.stack([loss.detach(), stats["entropy"] * n, n, clipped * n]).double()


def finish_step(policy, optimizer, cfg, totals):
    """Clip, skip the step if anything is non-finite, else apply it. `totals`: this rank's
    summed `figures`. The step's one host sync reads them together with the gradient norm."""
    norm = torch.nn.utils.clip_grad_norm_(policy.parameters(), cfg.grad_clip)
    norm = norm.full_tensor() if hasattr(norm, "full_tensor") else norm
    *mine, norm = torch.cat([totals, norm.detach().double().view(1).to(totals.device)]).tolist()
    loss, ent_sum, n, clipped = M.all_reduce(mine)  # one collective for all figures
    skipped = not (math.isfinite(norm) and math.isfinite(loss))
    if not skipped:
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return {"loss": loss, "entropy": ent_sum / max(n, 1), "grad_norm": norm,
            "skipped": int(skipped), "tokens": n, "clip_frac": clipped / max(n, 1)}


def nll_sample(tok, role, prompt, completion, cfg):
    ids = tok(completion, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    return Sample(role, M.encode(tok, [roles.render(tok, prompt, cfg.hints)])[0], ids,
                  [1.0] * len(ids))


# ----------------------------------------------------------------------------- warm-up

def demo_settings(cfg):
    """(levels, weight of each of roles.DEMO_KINDS) from --demo_levels and --demo_mix."""
    return ([int(x) for x in cfg.demo_levels.split(",")],
            [float(x) for x in cfg.demo_mix.split(",")])


def judge_levels(cfg):
    """Levels of the judge and pose demonstrations after the judge-only phase (--judge_levels,
    else --demo_levels)."""
    return [int(x) for x in (cfg.judge_levels or cfg.demo_levels).split(",")]


def demonstration(rng, tok, cfg, levels, mix, judged):
    """NLL samples of one demonstration of a random role on a task of one of `levels` (1-2 by
    default; corpus text for language modelling), or for the judge and the poser one of
    `judged`: neither role solves, so showing them longer problems demonstrates no solving.
    `mix` weighs the roles by their share of samples, so a judge demonstration (a pair,
    roles.demonstrations) is drawn at half its weight."""
    family = rng.choice(cfg.families.split(","))
    kind = rng.choices(roles.DEMO_KINDS, [w / 2 if k == "judge" else w
                                          for k, w in zip(roles.DEMO_KINDS, mix)])[0]
    level = rng.choice(judged if kind in ("judge", "pose") else levels)
    if kind == "text":
        return [nll_sample(tok, kind, "", raw_document(rng, cfg), cfg)]
    return [nll_sample(tok, kind, prompt, completion, cfg)
            for prompt, completion in roles.demonstrations(rng, family, level, kind)]


def raw_document(rng, cfg):
    """A document for language modelling: from --corpus when given, else a story of the corpus
    family at any level (the raw corpus may be broader than the demonstrations)."""
    if cfg.corpus:
        return rng.choice(CORPUS[cfg.corpus])
    return tasks.document(rng, rng.choice(tasks.LEVELS))


CORPUS = {}  # path -> documents, read once per process


def step_randomness(cfg, step, rank):
    """The step's task RNG and sampling generator, from (seed, step, rank) alone: a resumed
    run draws exactly what the uninterrupted one drew. The generator is a CPU one on every
    device: the sampler draws its uniforms on the host (model.generate)."""
    return (random.Random(f"{cfg.seed}/{step}/{rank}"),
            torch.Generator().manual_seed(hash((cfg.seed, step, rank)) % 2**31))


def warmup_step(policy, optimizer, tok, cfg, step, rank, state):
    """One NLL step on demonstrations. Judging is learned late and abruptly, and not at all
    when mixed with the other roles from the start (tests/bench_judge.py), so the first
    `judge_first` steps show judge demonstrations of `demo_levels` only, and that phase ends
    early once `verdict_check` passes; the judge and the poser see `judge_levels` after it."""
    rng, _ = step_randomness(cfg, step, rank)
    levels, mix = demo_settings(cfg)
    judge_phase = step < cfg.judge_first and "judge_learned" not in state
    if judge_phase:
        mix = [float(kind == "judge") for kind in roles.DEMO_KINDS]
    judged = levels if judge_phase else judge_levels(cfg)
    samples, size = [], max(1, cfg.batch // M.world())
    while len(samples) < size:
        drawn = demonstration(rng, tok, cfg, levels, mix, judged)
        # a pair that does not fit gives one of its halves, either: always the first (the
        # reference solution) would show the judge more accepts than rejects
        samples += drawn if len(samples) + len(drawn) <= size else [rng.choice(drawn)]
    metrics = train_on(policy, optimizer, samples, cfg, tok.pad_token_id, "nll")
    if cfg.judge_first and (step + 1) % CHECK_EVERY == 0:  # logged after the phase too
        metrics["verdict_check"] = verdict_check(policy, tok, cfg, levels)
        if judge_phase and metrics["verdict_check"] >= cfg.judge_pass:
            state["judge_learned"] = step + 1
    return metrics, []


CHECK_EVERY = 100  # warm-up steps between two verdict checks
VERDICT_CASES = {}  # (tokenizer, families, levels, n, seed, hints) -> (prompt ids, target id)s


def verdict_check(policy, tok, cfg, levels, n=64):
    """The share of 2n held-out judgements (n reference solutions, n slipped ones) whose verdict
    the model gets right when the teacher's first critique line (the two answers side by side)
    is given: the next token is `Verdict` or `Step`. Teacher-forced, no sampling; its problems
    are drawn apart from the evaluation's (eval.held_out with their own seed)."""
    key = (tok.name_or_path, len(tok), cfg.families, tuple(levels), n, cfg.seed, cfg.hints)
    if key not in VERDICT_CASES:
        cases = []
        for task in evaluation.held_out(cfg.families.split(","), levels, n,
                                        seed=f"verdict-check:{cfg.seed}"):
            for prompt, critique in roles.judge_pair(task, random.Random(task.prompt)):
                head = tok(critique.split("\n")[0] + "\n", add_special_tokens=False)["input_ids"]
                whole = tok(critique, add_special_tokens=False)["input_ids"]
                if whole[:len(head)] != head:
                    raise ValueError(f"verdict check: the tokenizer {tok.name_or_path!r} merges "
                                     "across the critique's first line break; use --judge_first=0")
                rendered = roles.render(tok, prompt, cfg.hints)
                cases.append((M.encode(tok, [rendered])[0] + head, [whole[len(head)]]))
        VERDICT_CASES[key] = cases
    cases, hits = VERDICT_CASES[key], 0
    policy.eval()  # no activation checkpointing, no dropout
    with torch.no_grad():
        for i in range(0, len(cases), cfg.micro_batch):
            chunk = cases[i:i + cfg.micro_batch]
            packed = M.pack([p for p, _ in chunk], [t for _, t in chunk], tok.pad_token_id,
                            M.device_of(policy))
            hits += int(M.run_head(policy, packed, lambda h, w: (
                torch.mm(h.float(), w.t().float()).argmax(-1) == packed.targets).sum()))
    policy.train()
    # every rank scored the same cases; the mean keeps them in exact agreement
    return M.all_reduce([hits / len(cases)])[0] / M.world()


# ----------------------------------------------------------------------------- self-play

def sample_texts(policy, tok, prompts, cfg, gen):
    with M.gathered_for_rollout(policy):
        return M.complete(policy, tok, [roles.render(tok, p, cfg.hints) for p in prompts],
                          cfg.max_new_tokens, cfg.temperature, cfg.top_p, gen,
                          batch_size=max(cfg.micro_batch, 64))


def seed_plan(rng, cfg, curriculum):
    """This rank's share of the step's seeds: (family, its curriculum level) each."""
    families = cfg.families.split(",")
    return [(f, curriculum[f]) for f in (rng.choice(families)
                                         for _ in range(max(1, cfg.seeds // M.world())))]


def environment_tasks(plan, rng, cfg):
    """`posings` tasks drawn by the environment for every seed of the plan."""
    return [tasks.sample(f, lvl, rng, "train") for f, lvl in plan for _ in range(cfg.posings)]


def scalar_rollouts(policy, tok, cfg, plan, rng, gen):
    """The baseline: environment tasks, N solutions each, reward = exact match (GRPO)."""
    task_list = environment_tasks(plan, rng, cfg)
    prompts = [roles.solve_prompt(t.prompt) for t in task_list for _ in range(cfg.solutions)]
    sols = sample_texts(policy, tok, prompts, cfg, gen)
    owner = [i for i in range(len(task_list)) for _ in range(cfg.solutions)]
    correct = [evaluation.score(task_list[i], s.text) for i, s in zip(owner, sols)]
    adv, keep = R.group_advantages(correct, owner)
    stats = {"reward/solve": correct, "acc/solve": correct}
    solved = [(task_list[i].family, task_list[i].level, c) for i, c in zip(owner, correct)]
    samples = [Sample("solve", s.prompt_ids, s.ids, [a] * len(s.ids))
               for s, a, k in zip(sols, adv.tolist(), keep.tolist()) if k and s.ids]
    return samples, stats, solved, []


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
                              split="train")
        posings.append(R.Posing(plan[i][0], pose, task if isinstance(task, tasks.Task) else None))
    posed = [p for p in posings if p.task is not None]
    for p, dup in zip(posed, R.duplicate_posings([p.task.prompt for p in posed],
                                                 [p.family for p in posed])):
        p.duplicate = dup
    # A seed none of whose posings is valid is solved on an environment task of its family and
    # level, so solver, judge and reviser keep learning while the poser learns to pose.
    for i, (family, level) in enumerate(plan):
        if all(p.task is None for p, seed in zip(posings, seeds) if seed == i):
            posings.append(R.Posing(family, task=tasks.sample(family, level, rng, "train")))
    problems = [p for p in posings if p.task is not None]
    # 2. solve: N solutions per problem; 3. judge each in words, the reference answer in view
    each = [p for p in problems for _ in range(cfg.solutions)]
    sols = sample_texts(policy, tok, [roles.solve_prompt(p.task.prompt) for p in each], cfg, gen)
    # audits: a reference and a slipped solution per problem, judged too, so the judge's
    # reward is not agreement on mostly wrong solutions alone (which teaches it to reject all)
    audited = [(p, text, truth) for p in (problems if cfg.audits else []) for text, truth in
               ((tasks.solve(p.task), 1.0), (tasks.corrupt(p.task, rng)[0], 0.0))]
    judged = [(p, s.text) for p, s in zip(each, sols)] + [(p, text) for p, text, _ in audited]
    critiques = sample_texts(policy, tok, [roles.judge_prompt(p.task.prompt, p.task.answer, text)
                                           for p, text in judged], cfg, gen)
    for (p, _, truth), c in zip(audited, critiques[len(sols):]):
        p.audits.append((c, roles.parse_verdict(c.text), truth))
    for p, s, c in zip(each, sols, critiques):
        p.solutions.append(s)
        p.correct.append(float(evaluation.score(p.task, s.text)))
        p.steps.append(roles.token_steps(tok, s.ids, s.text))
        p.critiques.append(c)
        p.verdicts.append(roles.parse_verdict(c.text))
        p.pointers.append(roles.parse_pointer(c.text))
        p.revisions.append(None)
        p.gains.append(0.0)
    # 4. revise what the judge did not accept, conditioned on its critique
    redo = [(p, j) for p in problems for j, v in enumerate(p.verdicts) if v is not True]
    revisions = sample_texts(policy, tok, [roles.revise_prompt(p.task.prompt, p.solutions[j].text,
                                                               p.critiques[j].text)
                                           for p, j in redo], cfg, gen)
    for (p, j), r in zip(redo, revisions):
        p.revisions[j] = r
        p.gains[j] = float(R.revision_gain(p.correct[j], evaluation.score(p.task, r.text)))
    # 5. rewards, advantages and credit of every role
    alpha = R.alpha_schedule(step, cfg.alpha_steps, cfg.alpha_floor)
    trained, rewards = R.self_play_samples(posings, alpha)
    samples = [Sample(role, c.prompt_ids, c.ids, coef) for role, c, coef in trained]
    stats = {**{f"reward/{role}": r for role, r in rewards.items()},
             "acc/solve": [c for p in problems for c in p.correct],
             "pose_validity": [float(p.task is not None) for p in posings if p.pose is not None],
             "judge_agreement": [R.agreement(v, c)
                                 for p in problems for v, c in zip(p.verdicts, p.correct)],
             "corrected": [float(g > 0) for p in problems for g in p.gains]}
    solved = [(p.task.family, p.task.level, c) for p in problems for c in p.correct]
    # one whole rollout for samples.jsonl: the first posing, and the first problem (that
    # posing's if it was valid) with its solutions, critiques and revisions
    first = problems[0]
    shown = [{"pose": posings[0].pose.text, "valid": posings[0].task is not None,
              "problem": first.task.prompt, "answer": first.task.answer,
              "solutions": [{"text": s.text, "correct": c, "critique": k.text, "verdict": v,
                             "revision": r and r.text, "revision_gain": g if r else None}
                            for s, c, k, v, r, g in zip(first.solutions, first.correct,
                                                        first.critiques, first.verdicts,
                                                        first.revisions, first.gains)]}]
    return samples, stats, solved, shown


def means_over_ranks(stats):
    """{key: list of values on this rank} -> {key: mean over every rank's values, or None}."""
    sums = M.all_reduce([x for values in stats.values() for x in (sum(values), len(values))])
    return {key: total / count if count else None
            for key, total, count in zip(stats, sums[0::2], sums[1::2])}


def update_curriculum(curriculum, history, solved, cfg):
    """Raise a family's level when the solver beats `promote` there, lower it below `demote`."""
    for family, level, correct in solved:
        if level == curriculum.get(family):
            history.setdefault(family, []).append(correct)
    for family, results in history.items():
        if len(results) >= 16:
            rate = sum(results) / len(results)
            if rate > cfg.promote and curriculum[family] < max(tasks.LEVELS):
                curriculum[family] += 1
            elif rate < cfg.demote and curriculum[family] > min(tasks.LEVELS):
                curriculum[family] -= 1
            history[family] = []


def rl_step(policy, optimizer, tok, cfg, step, rank, state):
    """One self-play (or scalar-baseline) step; `state` carries the curriculum across steps."""
    rng, gen = step_randomness(cfg, step, rank)
    plan = seed_plan(rng, cfg, state["curriculum"])
    policy.eval()
    if cfg.reward == "scalar":
        samples, stats, solved, shown = scalar_rollouts(policy, tok, cfg, plan, rng, gen)
    else:
        samples, stats, solved, shown = alive_rollouts(policy, tok, cfg, plan, rng, gen, step)
    policy.train()
    metrics = train_on(policy, optimizer, samples, cfg, tok.pad_token_id, "pg", cfg.ppo_epochs)
    # every rank must agree on the curriculum: gather the (family, level, correct) triples
    everyone = M.all_gather_objects(solved)
    update_curriculum(state["curriculum"], state["history"], sum(everyone, []), cfg)
    metrics.update(means_over_ranks(stats))
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
    rng, gen = step_randomness(cfg, step, rank)
    plan = seed_plan(rng, cfg, state["curriculum"])
    task_of = {t.prompt: t for t in environment_tasks(plan, rng, cfg)}
    problems = list(task_of)

    def judge(ps, solutions):
        prompts = [roles.judge_prompt(p, task_of[p].answer, s) for p, s in zip(ps, solutions)]
        return [(c.text, roles.parse_verdict(c.text))
                for c in sample_texts(policy, tok, prompts, cfg, gen)]

    def revise(ps, solutions, critiques):
        prompts = [roles.revise_prompt(p, s, c) for p, s, c in zip(ps, solutions, critiques)]
        return [r.text for r in sample_texts(policy, tok, prompts, cfg, gen)]

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
                thoughts.append(nll_sample(tok, "refine", roles.solve_prompt(p), text, cfg))
    samples = []
    for pair in R.refinement_pairs(records):
        prompt = (roles.solve_prompt(pair.problem) if pair.role == "solve" else
                  roles.judge_prompt(pair.problem, task_of[pair.problem].answer, pair.solution))
        samples += [nll_sample(tok, pair.role, prompt, pair.chosen, cfg),
                    nll_sample(tok, pair.role, prompt, pair.rejected, cfg)]
    metrics = dpo_update(policy, optimizer, samples, thoughts, cfg, tok.pad_token_id)
    metrics.update(means_over_ranks({
        "reward/revise": [b.score - a.score for chain in chains for a, b in zip(chain, chain[1:])],
        "revisions": [len(chain) - 1 for chain in chains],
        "acc/solve": [float(chain[0].score >= 1) for chain in chains[::2]]}))
    metrics["pairs"], metrics["thoughts"] = M.all_reduce([len(samples) // 2, len(thoughts)])
    return metrics, []


def dpo_update(policy, optimizer, pairs, thoughts, cfg, pad_id):
    """One step on DPO pairs (samples 2p chosen, 2p+1 rejected) plus long-thought NLL, in
    micro-batches of at most `micro_batch` sequences that never split a pair. The DPO reference
    is the policy itself before the step (the sampling policy: no second copy), its log-probs
    taken on the same micro-batch. Loss: the mean over every rank's pairs plus the mean over
    every rank's thought tokens."""
    device = M.device_of(policy)
    per = 2 * max(1, cfg.micro_batch // 2)
    n_pairs, n_tokens = M.all_reduce([len(pairs) // 2, sum(len(s.ids) for s in thoughts)])
    plan = [(b, "dpo", n_pairs) for b in micro_batches(
        [pairs[i:i + per] for i in range(0, len(pairs), per)], pad_id, device)]
    plan += [(b, "nll", n_tokens) for b in micro_batches(
        [thoughts[i:i + cfg.micro_batch] for i in range(0, len(thoughts), cfg.micro_batch)],
        pad_id, device)]
    normalizers = {mode: torch.tensor(max(count, 1.0), device=device) for _, mode, count in plan}
    totals = []
    for b, mode, _ in plan:
        # every DPO batch takes its reference forward, padding ones too: each forward is a
        # collective under FSDP, so every rank must run as many
        ref = logprobs_of(policy, b) if mode == "dpo" else None
        mode = "nll" if b.padding else mode  # a padding batch has no pair to compare

        def head(hidden, weight):
            return R.fused_loss(hidden, weight, b.packed.targets, b.coef, mode, ref_logp=ref,
                                seq_id=b.packed.seq_of_token, n_seq=len(b.packed.input_ids),
                                beta=cfg.dpo_beta, mask=b.mask, normalizer=normalizers[mode])
        loss, stats = M.run_head(policy, b.packed, head)
        (loss * M.world()).backward()
        totals.append(figures(loss, stats, b.mask))
    return finish_step(policy, optimizer, cfg, torch.stack(totals).sum(0))


# ----------------------------------------------------------------------------- the stage loop

def run_stage(cfg, stage, model_dir, out, steps, step_fn, lr, deadline=None):
    """Load `model_dir`, train `steps` steps of `step_fn` (or until `deadline`), export `out/model`.

    Checkpoints every `save_every` steps into `out/state` (atomic), resumes from it with
    --resume, logs one JSON line per step into `out/metrics.jsonl`."""
    rank, _, device = M.setup_distributed()
    os.makedirs(out, exist_ok=True)
    checkpointing = cfg.checkpointing == "on" or (cfg.checkpointing == "auto" and
                                                  device.type == "cuda")
    if dist.is_initialized():
        policy, tok = M.load_sharded(model_dir, device, checkpointing)
    else:
        policy, tok = M.load(model_dir, device=device)
        if checkpointing:
            M.enable_checkpointing(policy)
    policy.train()  # from_pretrained returns eval mode, where checkpointing is skipped
    optimizer = torch.optim.AdamW(policy.parameters(), lr=lr, betas=(0.9, 0.95),
                                  weight_decay=cfg.weight_decay)
    start_level = min(cfg.start_level, max(tasks.LEVELS))
    state = {"curriculum": {f: start_level for f in cfg.families.split(",")}, "history": {}}
    state_dir, start = os.path.join(out, "state"), 0
    if cfg.resume:
        if M.is_main():
            M.recover_dir(state_dir)  # a crash between replace_dir's renames left state.old
        M.barrier()
        if not os.path.isdir(state_dir):
            raise SystemExit(f"train.py: --resume but no checkpoint in {state_dir}")
        meta = merging.load_state(policy, optimizer, state_dir)
        start, state = meta["step"], meta["state"]
    metrics_path = os.path.join(out, "metrics.jsonl")
    samples_path = os.path.join(out, "samples.jsonl")
    if M.is_main():
        truncate_log(metrics_path, start)
        truncate_log(samples_path, start)
        span = f"from step {start} for {deadline - time.time():.0f} s" if deadline else \
            f"steps {start}..{steps}"
        print(f"[{stage}] {model_dir} -> {out}: {span}, ranks {M.world()}", flush=True)
    # a deadline run has no step count to show (tqdm reads len() of the range unless total=inf)
    bar = tqdm(range(start, steps), disable=not M.is_main(), desc=stage, dynamic_ncols=True,
               total=float("inf") if deadline else steps - start)
    for step in bar:
        began = time.time()
        for group in optimizer.param_groups:
            group["lr"] = lr * lr_factor(cfg, stage, step, None if deadline else steps, state)
        metrics, shown = step_fn(policy, optimizer, tok, cfg, step, rank, state)
        metrics.update(stage=stage, step=step, lr=optimizer.param_groups[0]["lr"],
                       seconds=time.time() - began)
        metrics["tokens_per_s"] = metrics.get("tokens", 0) / metrics["seconds"]
        if device.type == "cuda":
            metrics["gpu_peak_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
        if M.is_main():
            append_json(metrics_path, metrics)
            if shown:
                append_json(samples_path, {"step": step, "rollouts": shown})
            bar.set_postfix({k: round(v, 3) for k, v in metrics.items()
                             if k in ("loss", "acc/solve", "judge_agreement") and v is not None})
        if (step + 1) % cfg.save_every == 0 or step + 1 == steps:
            merging.save_state(policy, optimizer, state_dir, {"step": step + 1, "state": state})
        # every rank must stop at the same step: the clock decides on rank 0's word (max)
        if deadline is not None and M.all_reduce([time.time() > deadline], "max")[0]:
            merging.save_state(policy, optimizer, state_dir, {"step": step + 1, "state": state})
            break
    merging.save_hf(policy, tok, os.path.join(out, "model"))
    del policy, optimizer
    gc.collect()  # FSDP2 modules sit in reference cycles: free this stage's memory for the next
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return os.path.join(out, "model")


def lr_factor(cfg, stage, step, steps, state=None):
    """Linear warm-up, then constant for RL stages and cosine decay to 10% over `steps` for the
    NLL warm-up (a small model trained by NLL ends clearly lower with the decay). A run that
    ends at a deadline (`steps` None) has no horizon to decay over and stays constant.
    With --judge_first the judge-only phase has a schedule of its own over its N steps, and the
    mixed phase one over the steps left, peaking at `mixed_lr` times the rate: judging was
    learned as the rate decayed (not in 5,000 judge-only steps at a nearly constant rate), and
    was wiped out within 100 mixed steps back at the full rate (README, "Learning to judge")."""
    scale = 1.0
    if stage == "warmup" and steps is not None and cfg.judge_first:
        end = min((state or {}).get("judge_learned", cfg.judge_first), steps)
        step, steps, scale = (step, cfg.judge_first, 1.0) if step < end else \
            (step - end, steps - end, cfg.mixed_lr)
    warm = scale * min(1.0, (step + 1) / max(1, cfg.lr_warmup))
    if stage != "warmup" or steps is None:
        return warm
    return warm * (0.1 + 0.45 * (1 + math.cos(math.pi * step / steps)))


def append_json(path, obj):
    with open(path, "a") as f:
        f.write(json.dumps(obj, default=float) + "\n")


def truncate_log(path, start):
    """Keep the lines of steps before `start` (none on a fresh run): after a resume the log
    matches the weights, with no step written twice."""
    if not os.path.exists(path):
        return
    with open(path) as f:
        kept = [line for line in f if json.loads(line).get("step", 0) < start]
    with open(path, "w") as f:
        f.writelines(kept)


# ----------------------------------------------------------------------------- pipelines

def base_model(cfg):
    """The input model: --model, or the tiny default built once into <out>/init."""
    if cfg.model:
        if not os.path.isfile(os.path.join(cfg.model, "config.json")):
            raise SystemExit(f"train.py: --model={cfg.model} is not a model directory "
                             "(no config.json)")
        return cfg.model
    path = os.path.join(cfg.out, "init")
    if M.is_main() and not os.path.isdir(path):
        M.build_tiny(path, roles.world_texts(cfg.seed), hidden_size=cfg.tiny_hidden,
                     num_layers=cfg.tiny_layers, num_heads=cfg.tiny_heads,
                     num_kv_heads=cfg.tiny_heads, intermediate_size=3 * cfg.tiny_hidden,
                     seed=cfg.seed)
    M.barrier()
    return path


def evaluate_dir(model_dir, out_json, cfg, n):
    """eval.py on this process alone, its report also written to `out_json`."""
    policy, tok = evaluation.load_for_eval(model_dir)
    generate_fn = evaluation.model_generate_fn(policy, tok, max_new_tokens=cfg.max_new_tokens,
                                               seed=cfg.seed, hints=cfg.hints)
    report = evaluation.evaluate(generate_fn, n=n, seed=cfg.seed)
    evaluation.write_json(report, out_json)
    return report


def run(cfg):
    if cfg.stage == "merge":
        return merge_stage(cfg)
    rank, world_size, device = M.setup_distributed()
    torch.set_num_threads(cfg.threads or max(1, (os.cpu_count() or 1) // world_size))
    torch.manual_seed(cfg.seed)
    rl = cfg.steps or cfg.rl_steps
    if cfg.stage == "warmup":
        return run_stage(cfg, "warmup", base_model(cfg), cfg.out,
                         cfg.steps or cfg.warmup_steps, warmup_step, cfg.lr)
    if cfg.stage in ("alive", "domain"):
        return run_stage(cfg, cfg.stage, base_model(cfg), cfg.out, rl, rl_step, cfg.rl_lr)
    if cfg.stage == "align":
        cfg.families, cfg.reward = cfg.ability, "scalar"
        return run_stage(cfg, "align", base_model(cfg), cfg.out, rl, rl_step, cfg.rl_lr)
    if cfg.stage == "refine":
        return run_stage(cfg, "refine", base_model(cfg), cfg.out,
                         cfg.steps or cfg.refine_steps, refine_step, cfg.rl_lr)
    if cfg.stage == "compare":
        return compare(cfg)
    if cfg.stage == "meta":
        return meta(cfg)
    return run_all(cfg)


def merge_stage(cfg):
    """The aligned models merged by merge.py. One process's work, so under torchrun it starts no
    process group: rank 0 merges and the other ranks end at once, rather than waiting in a
    collective that would time out (NCCL's watchdog) while three 8B checkpoints are merged."""
    out = os.path.join(cfg.out, "model")
    if int(os.environ.get("RANK", "0")) != 0:
        return out
    torch.set_num_threads(cfg.threads or os.cpu_count() or 1)
    parent = os.path.dirname(os.path.abspath(cfg.out))
    models = (cfg.merge_models.split(",") if cfg.merge_models else
              [os.path.join(parent, f"align_{a}", "model") for a in tasks.FAMILIES[:3]])
    merging.merge(base_model(cfg), models, [1.0 / len(models)] * len(models), cfg.merge_method,
                  density=cfg.merge_density, seed=cfg.seed, out=out)
    return out


def only_main_goes_on():
    """Every rank leaves the process group now, and only rank 0 goes on to the single-process
    work (evaluation). Leaving right after the last collective matters: idle ranks must not
    wait in a barrier through a long evaluation (a collective times out), and a rank that
    leaves while a peer still finishes a collective can die of it under gloo."""
    main = M.is_main()
    M.teardown_distributed()
    return main


def run_all(cfg):
    """warmup -> eval -> alive -> eval, then the before/after table."""
    warm = run_stage(cfg, "warmup", base_model(cfg), os.path.join(cfg.out, "warmup"),
                     cfg.warmup_steps, warmup_step, cfg.lr)
    alive = run_stage(cfg, "alive", warm, os.path.join(cfg.out, "alive"),
                      cfg.steps or cfg.rl_steps, rl_step, cfg.rl_lr)
    if not only_main_goes_on():
        return alive
    reports = {name: evaluate_dir(path, os.path.join(cfg.out, f"eval_{name}.json"), cfg, cfg.eval_n)
               for name, path in (("warmup", warm), ("alive", alive))}
    table = evaluation.comparison_table(reports)
    with open(os.path.join(cfg.out, "report.md"), "w") as f:
        f.write(table + "\n")
    print(table)
    return alive


def shared_warmup(cfg):
    """The one warm-up every arm starts from: <out>/warmup/model, trained first if missing."""
    warm = os.path.join(cfg.out, "warmup", "model")
    if os.path.isdir(warm):
        return warm
    return run_stage(cfg, "warmup", base_model(cfg), os.path.join(cfg.out, "warmup"),
                     cfg.warmup_steps, warmup_step, cfg.lr)


def report_arms(cfg, arms, name):
    """Every arm evaluated on the same `compare_eval_n` held-out items; <out>/<name>.md, .json."""
    reports = {arm: evaluate_dir(path, os.path.join(cfg.out, f"eval_{arm}.json"), cfg,
                                 cfg.compare_eval_n) for arm, path in arms.items()}
    table = evaluation.comparison_table(reports)
    with open(os.path.join(cfg.out, f"{name}.md"), "w") as f:
        f.write(table + "\n")
    evaluation.write_json(reports, os.path.join(cfg.out, f"{name}.json"))
    print(table)
    return reports


def compare(cfg):
    """alive vs --reward=scalar vs SFT control, equal wall time each, from one warm-up."""
    warm = shared_warmup(cfg)
    budget = cfg.compare_minutes * 60
    arms = {"warmup": warm}
    big = 10**6  # the deadline, not the step count, ends each arm
    arms["alive"] = run_stage(dataclasses.replace(cfg, reward="verbal"), "alive", warm,
                              os.path.join(cfg.out, "cmp_alive"), big, rl_step, cfg.rl_lr,
                              time.time() + budget)
    arms["scalar"] = run_stage(dataclasses.replace(cfg, reward="scalar"), "alive", warm,
                               os.path.join(cfg.out, "cmp_scalar"), big, rl_step, cfg.rl_lr,
                               time.time() + budget)
    # the control continues the warm-up's own mix (no judge-only phase) at a tenth of its rate
    arms["sft"] = run_stage(dataclasses.replace(cfg, judge_first=0), "sft", warm,
                            os.path.join(cfg.out, "cmp_sft"), big,
                            warmup_step, cfg.lr * 0.1, time.time() + budget)
    if not only_main_goes_on():
        return arms
    report_arms(cfg, arms, "compare")
    evaluation.plot_curves([os.path.join(cfg.out, f"cmp_{a}") for a in ("alive", "scalar", "sft")],
                           os.path.join(cfg.out, "compare.png"), labels=["alive", "scalar", "sft"])
    return arms


def meta(cfg):
    """Meta-ability alignment from one warm-up: align each of deduction, induction and abduction
    (`rl_steps` each), merge the three (`merge_method`), domain self-play from the merge."""
    warm = shared_warmup(cfg)
    steps = cfg.steps or cfg.rl_steps
    arms = {"warmup": warm}
    for ability in tasks.FAMILIES[:3]:
        arms[ability] = run_stage(dataclasses.replace(cfg, families=ability, reward="scalar"),
                                  "align", warm, os.path.join(cfg.out, f"align_{ability}"),
                                  steps, rl_step, cfg.rl_lr)
    # rank 0 merges while the others wait here (the 60-minute collective timeout covers 8B)
    arms["merged"] = merge_stage(dataclasses.replace(cfg, model=warm,
                                                     out=os.path.join(cfg.out, "merged")))
    M.barrier()
    arms["domain"] = run_stage(cfg, "domain", arms["merged"], os.path.join(cfg.out, "domain"),
                               steps, rl_step, cfg.rl_lr)
    if only_main_goes_on():
        report_arms(cfg, arms, "meta")
    return arms


if __name__ == "__main__":
    run(parse_args(sys.argv[1:]))
    # reached by every rank (a no-op after only_main_goes_on); on an error torchrun stops the rest
    M.teardown_distributed()
