"""train.py: every stage of the pipeline wired together, single process or `torchrun` (FSDP2).

    python train.py                          # tiny default into runs/tiny (2-core CPU, ~10 min)
    python train.py --stage=alive --model=DIR --out=DIR [--steps=N --seed=N --resume ...]
    torchrun --nproc_per_node=8 train.py --stage=alive --model=/path/to/8B --out=runs/8b \
        --rl_lr=1e-6

Stages (each reads a model directory and writes `<out>/model`, `<out>/metrics.jsonl`):
  warmup   NLL on demonstrations of every role and on raw documents (warmup.py), optionally
           judge demonstrations alone first (--judge_first).
  mistakes NLL on the teacher's critiques and fixes of the model's own solutions (mistakes.py);
           in the pipelines, after the warm-up when --mistakes_steps is set.
  alive    self-play (selfplay.py): pose, solve, judge in words, revise; rewards per role
           from refine.py; one clipped policy-gradient step (update.py).
  align    one meta-ability (--ability), GRPO on exact match; merge: the three aligned models
           as task vectors (merge.py); domain: self-play from the merge.
  refine   alignment via refinement: chains of self-critique -> revise, DPO on (better, worse)
           pairs, NLL on the long refinement thoughts of chains that fixed a solution.
  all      warmup, alive, and the before/after table; compare: alive, --reward=scalar (plain
           GRPO, no poser or judge) and an SFT control from one warm-up, equal wall time each
           (or --compare_steps); meta: align x3, merge, domain, from one warm-up.

This file holds the flat config, the stage loop every stage shares (learning-rate schedule,
atomic resumable checkpoints, one metrics line per step) and the pipelines. Every step's
randomness derives from (seed, step, rank), so a resumed run repeats the uninterrupted one
exactly on CPU.
"""
import dataclasses
import gc
import json
import math
import os
import re
import sys
import time
from dataclasses import dataclass

import torch
import torch.distributed as dist
from tqdm import tqdm

import curves
import eval as evaluation
import merge as merging
import mistakes
import model as M
import roles
import selfplay
import tasks
import warmup

STAGES = ("warmup", "mistakes", "alive", "align", "merge", "domain", "refine", "all", "compare",
          "meta")


@dataclass
class Config:
    stage: str = "all"          # one of STAGES
    model: str = ""             # input model directory; "" builds the tiny default:
    tiny_layers: int = 2        # ... its decoder layers,
    tiny_hidden: int = 128      # ... hidden size (the MLP is 3x wider)
    tiny_heads: int = 4         # ... and attention heads
    out: str = "runs/tiny"      # run directory of this stage (or of the whole pipeline)
    steps: int = 0              # optimizer steps of the stage; 0 = that stage's default below
    warmup_steps: int = 1800    # default steps of warmup (the tutorial: 10 min in all)
    rl_steps: int = 50          # default steps of alive / align / domain (the tutorial: 10 min)
    refine_steps: int = 30      # default steps of refine
    refine_rounds: int = 2      # refine: most critique -> revise rounds per chain
    seed: int = 0               # every step's randomness derives from (seed, step, rank)
    resume: bool = False        # continue from <out>/state
    ability: str = "deduction"  # align: which meta-ability (deduction|induction|abduction)
    reward: str = "verbal"      # alive/domain: verbal (the judge's words) | scalar (GRPO baseline)
    families: str = "deduction,induction,abduction,corpus"  # task families used in training
    corpus: str = ""            # JSONL of {"text": ...} raw documents; "" = the generated one
    lr: float = 1e-3            # learning rate of NLL stages (tiny default; ~1e-5 for 8B)
    rl_lr: float = 3e-5         # learning rate of RL stages (1e-4 cost the tiny model level 1)
    lr_warmup: int = 10         # linear learning-rate warm-up steps
    grad_clip: float = 1.0      # max global grad norm
    weight_decay: float = 0.0   # AdamW's decoupled weight decay
    batch: int = 32             # warmup: demonstration samples per step, all ranks (>= 1 each)
    seeds: int = 8              # alive: seeds (family x level) per step, all ranks (>= 1 each)
    posings: int = 1            # alive: M posings per seed (scalar, align, refine draw
                                #   posings + environment tasks per seed instead)
    solutions: int = 4          # alive: N solutions per valid posing
    environment: int = 1        # alive: environment tasks per seed, solved beside its posings
    all_wrong_revisions: int = 1  # alive: revisions per rejected solution of a problem whose
                                  #   solutions are all wrong (else 1): no verifier signal there
    judged: str = "all"         # alive: solutions the judge critiques: all | all_wrong (only where
                                #   the verifier finds none right, each revised; alpha pinned at 1)
                                #   | one_all_wrong (the first of each such problem's solutions)
    judge_sees: str = "answer"  # the reference in the judge's prompt: answer | solution (its steps)
    critic: str = "judge"       # alive: whose critique a revision reads: judge (the model's own) |
                                #   teacher (tasks.critique; an ablation: the most words could give)
    temperature: float = 1.0    # rollout sampling temperature
    top_p: float = 1.0          # rollout nucleus
    max_new_tokens: int = 160   # per completion
    micro_batch: int = 16       # sequences per forward/backward
    clip_eps: float = 0.2       # PPO ratio clip
    ppo_epochs: int = 1         # optimizer steps per rollout batch
    kl_coef: float = 0.0        # k3 KL to the sampling policy (off by default)
    alpha_floor: float = 0.5    # lowest weight of the verifier in the solver's reward
    alpha_steps: int = 100      # steps over which alpha anneals from 1 to alpha_floor
    audits: bool = False        # alive: the judge also judges a reference and a corrupted one
    judge_anchor: int = 16      # alive: teacher judge pairs per step (all ranks), NLL beside PG
                                #   (a judge near 0.99 holds with 4: the evidence run)
    promote: float = 0.6        # curriculum: raise a family's level when its solve rate is above
    demote: float = 0.1         # ... lower it when below this
    start_level: int = 2        # curriculum: starting level of every family
    demo_levels: str = "1,2"    # warmup: levels of the demonstrations
    judge_levels: str = "1,2,3,4,5"  # warmup: levels of judge and pose demos after the
                                     #   judge-only phase; "" = demo_levels
    revise_levels: str = ""     # warmup: levels of the revise demos; "" = demo_levels
    demo_mix: str = "4,3,1,1,1"  # warmup: share of solve,judge,revise,pose,text samples
    judge_first: int = 1200     # warmup: at most N first steps on judge demos only (peak lr),
    judge_pass: float = 0.9     # ... ending once the verdict check (held-out) reaches this share;
    mixed_lr: float = 1.0       # ... then the mixed phase peaks at this share of lr
    verdict_weight: float = 10.0  # warmup: while it shows judge pairs alone, NLL weight of the
                                  #   critique token that decides the verdict (1: plain NLL)
    mistakes_steps: int = 0     # mistakes: steps of the stage (pipelines: 0 = no such stage)
    mistakes_pool: int = 4000   # mistakes: own solutions sampled at its start
    mistakes_lr: float = 3e-4   # mistakes: peak learning rate, decaying as the warm-up's
    merge_method: str = "task_arithmetic"  # merge: linear|task_arithmetic|ties|dare
    merge_density: float = 0.5  # merge: ties/dare density
    merge_models: str = ""      # merge: comma-separated dirs; "" = <out>/../align_<ability>/model
    dpo_beta: float = 0.1       # refine: DPO temperature
    save_every: int = 20        # steps between resumable checkpoints
    eval_n: int = 200           # held-out solver items per evaluation in `all`
    compare_minutes: float = 4.0  # compare: wall minutes of each of the three arms
    compare_steps: str = ""     # compare: "A,S,F" steps of alive, scalar, SFT in their place
                                #   (a timed comparison rerun step for step: compare.md's line)
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
    checks = {"stage": STAGES, "reward": ("verbal", "scalar"), "critic": ("judge", "teacher"),
              "judged": ("all", "all_wrong", "one_all_wrong"), "judge_sees": roles.JUDGE_SEES,
              "checkpointing": ("auto", "on", "off"), "ability": tasks.FAMILIES[:3],
              "merge_method": merging.METHODS}
    for key, valid in checks.items():
        if getattr(cfg, key) not in valid:
            sys.exit(f"train.py: --{key}={getattr(cfg, key)!r}; valid: {', '.join(valid)}")
    bad = [f for f in cfg.families.split(",") if f not in tasks.FAMILIES]
    if bad:
        sys.exit(f"train.py: --families has {bad}; valid: {', '.join(tasks.FAMILIES)}")
    try:
        levels, mix = warmup.demo_settings(cfg)
    except ValueError:
        sys.exit("train.py: --demo_levels, --judge_levels, --revise_levels and --demo_mix take "
                 "comma-separated numbers")
    if not set().union(*levels.values()) <= set(tasks.LEVELS):
        sys.exit(f"train.py: --demo_levels={cfg.demo_levels!r}, --judge_levels="
                 f"{cfg.judge_levels!r}, --revise_levels={cfg.revise_levels!r}; levels are "
                 f"{tasks.LEVELS}")
    if len(mix) != len(roles.DEMO_KINDS) or min(mix) < 0 or sum(mix) <= 0:
        sys.exit(f"train.py: --demo_mix={cfg.demo_mix!r} needs {len(roles.DEMO_KINDS)} weights "
                 f">= 0, not all 0, for {','.join(roles.DEMO_KINDS)}")
    # below these the run would fail deep in the sampler, the update or the checkpoint loop, or
    # train silently on nothing (a zero grad_clip scales every gradient to 0)
    for key, low in (("batch", 1), ("seeds", 1), ("solutions", 1), ("all_wrong_revisions", 1),
                     ("mistakes_pool", 1), ("max_new_tokens", 1), ("micro_batch", 1),
                     ("ppo_epochs", 1), ("save_every", 1), ("eval_n", 1), ("compare_eval_n", 1),
                     ("posings", 0), ("environment", 0), ("judge_anchor", 0), ("temperature", 0),
                     ("verdict_weight", 0)):
        if getattr(cfg, key) < low:
            sys.exit(f"train.py: --{key}={getattr(cfg, key)} must be >= {low}")
    for key, high in (("top_p", 1), ("merge_density", 1), ("grad_clip", math.inf),
                      ("lr", math.inf), ("rl_lr", math.inf), ("mistakes_lr", math.inf)):
        if not 0 < getattr(cfg, key) <= high:
            sys.exit(f"train.py: --{key}={getattr(cfg, key)} must be "
                     + (f"in (0, {high}]" if high < math.inf else "> 0"))
    if cfg.compare_steps and not re.fullmatch(r"[1-9]\d*,[1-9]\d*,[1-9]\d*", cfg.compare_steps):
        sys.exit(f"train.py: --compare_steps={cfg.compare_steps!r} needs three step counts "
                 "> 0, of alive, scalar and SFT: --compare_steps=177,474,722")
    if cfg.stage == "mistakes" and not (cfg.steps or cfg.mistakes_steps):
        sys.exit("train.py: --stage=mistakes needs --steps=N (or --mistakes_steps=N)")
    if cfg.compare_steps and cfg.stage != "compare":
        sys.exit(f"train.py: --compare_steps is for --stage=compare, not --stage={cfg.stage}")
    if cfg.audits and cfg.judged != "all":
        sys.exit(f"train.py: --audits with --judged={cfg.judged}: an audit's reward is compared "
                 "with the judgements of right solutions, which it does not make")
    if cfg.all_wrong_revisions > 1 and cfg.temperature == 0:
        sys.exit(f"train.py: --all_wrong_revisions={cfg.all_wrong_revisions} with --temperature=0 "
                 "writes the same revision each time; sample (--temperature > 0) or use 1")
    missing = [d for d in cfg.merge_models.split(",") if cfg.merge_models and not os.path.isdir(d)]
    if missing:
        sys.exit(f"train.py: --merge_models: no such directory {', '.join(missing)}")
    if cfg.corpus:
        try:
            warmup.corpus_documents(cfg.corpus)
        except (OSError, ValueError) as err:
            sys.exit(f"train.py: --corpus: {err}")
    return cfg


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
    """Linear warm-up, then constant for RL stages and, for the NLL warm-up and its stage on the
    model's mistakes, cosine decay to 10% over `steps` (a small model trained by NLL ends clearly
    lower with it). A run that ends at a deadline (`steps` None) has no horizon and stays constant
    after its linear warm-up (after a judge-only phase, at `mixed_lr` times the rate, warmed up
    again). With --judge_first the judge-only phase stays at the peak rate: it ends on the verdict
    check, not on a horizon, and the comparison clicks only after enough steps at a high rate
    (decayed over 1,200 steps, seed 0 missed it where 1,325 at the peak did not; docs/findings.md,
    "A judge-only phase at its peak rate"). The mixed phase then decays over the steps left from
    `mixed_lr` times the rate (a rate that makes the comparison click can be too high to go on
    learning the other roles at; docs/findings.md, "How the tiny world became learnable")."""
    scale, decays = 1.0, stage in ("warmup", "mistakes") and steps is not None
    if stage == "warmup" and cfg.judge_first:
        end = min((state or {}).get("judge_learned", cfg.judge_first), steps or math.inf)
        if step < end:
            decays = False
        else:  # the mixed phase, at mixed_lr with or without a horizon
            step, steps, scale = step - end, steps and steps - end, cfg.mixed_lr
    warm = scale * min(1.0, (step + 1) / max(1, cfg.lr_warmup))
    return warm * (0.1 + 0.45 * (1 + math.cos(math.pi * step / steps))) if decays else warm


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
    report = evaluation.evaluate(generate_fn, n=n, seed=cfg.seed, judge_sees=cfg.judge_sees)
    evaluation.write_json(report, out_json)
    return report


def run(cfg):
    if cfg.stage == "merge":
        return merge_stage(cfg)
    rank, world_size, device = M.setup_distributed()
    torch.set_num_threads(cfg.threads or max(1, (os.cpu_count() or 1) // world_size))
    torch.manual_seed(cfg.seed)
    rl = (cfg.rl_steps, selfplay.rl_step, cfg.rl_lr)
    single = {"warmup": (cfg.warmup_steps, warmup.warmup_step, cfg.lr),
              "mistakes": (cfg.mistakes_steps, mistakes.mistakes_step, cfg.mistakes_lr),
              "alive": rl, "domain": rl, "align": rl,
              "refine": (cfg.refine_steps, selfplay.refine_step, cfg.rl_lr)}
    if cfg.stage == "align":
        cfg.families, cfg.reward = cfg.ability, "scalar"
    if cfg.stage in single:
        steps, step_fn, lr = single[cfg.stage]
        return run_stage(cfg, cfg.stage, base_model(cfg), cfg.out, cfg.steps or steps, step_fn, lr)
    return {"compare": compare, "meta": meta}.get(cfg.stage, run_all)(cfg)


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
    """Every rank leaves the process group now, only rank 0 goes on to the one-process work
    (evaluation): idle ranks must not wait in a barrier through a long evaluation (a collective
    times out), and a rank that leaves while a peer finishes a collective can die under gloo."""
    main = M.is_main()
    M.teardown_distributed()
    return main


def run_all(cfg):
    """warmup (-> mistakes) -> alive, then the before/after table (<out>/report.md)."""
    arms, start = warm_start(cfg, reuse=False)
    arms["alive"] = run_stage(cfg, "alive", start, os.path.join(cfg.out, "alive"),
                              cfg.steps or cfg.rl_steps, selfplay.rl_step, cfg.rl_lr)
    if only_main_goes_on():
        report_arms(cfg, arms, "report", cfg.eval_n)
    return arms["alive"]


def warm_start(cfg, reuse):
    """({"warmup": <out>/warmup/model, with --mistakes_steps "mistakes": <out>/mistakes/model},
    the last of them: the model every arm starts from). With `reuse` (compare and meta, whose
    comparisons share one warm-up) a stage whose model is already there is not trained again."""
    stages = [("warmup", cfg.warmup_steps, warmup.warmup_step, cfg.lr)]
    if cfg.mistakes_steps:
        stages.append(("mistakes", cfg.mistakes_steps, mistakes.mistakes_step, cfg.mistakes_lr))
    arms, start = {}, None
    for name, steps, step_fn, lr in stages:
        done = os.path.join(cfg.out, name, "model")
        start = arms[name] = done if reuse and os.path.isdir(done) else run_stage(
            cfg, name, start or base_model(cfg), os.path.join(cfg.out, name), steps, step_fn, lr)
    return arms, start


def report_arms(cfg, arms, name, n, extra=""):
    """Every arm evaluated on the same `n` held-out items; <out>/<name>.md (with the `extra`
    table below, if any), .json."""
    reports = {arm: evaluate_dir(path, os.path.join(cfg.out, f"eval_{arm}.json"), cfg, n)
               for arm, path in arms.items()}
    table = evaluation.comparison_table(reports) + (f"\n\n{extra}" if extra else "")
    with open(os.path.join(cfg.out, f"{name}.md"), "w") as f:
        f.write(table + "\n")
    evaluation.write_json(reports, os.path.join(cfg.out, f"{name}.json"))
    print(table)
    return reports


def compare(cfg):
    """alive vs --reward=scalar vs SFT control from one warm-up: equal wall time each, or the
    steps --compare_steps gives each."""
    arms, warm = warm_start(cfg, reuse=True)
    runs = {arm: os.path.join(cfg.out, f"cmp_{arm}") for arm in ("alive", "scalar", "sft")}
    # each arm ends at its deadline (so its step count follows the machine's speed), or after
    # the steps --compare_steps gives it: these stages' rates do not depend on the horizon, so
    # a timed arm's first N steps are an N-step run's
    fixed = dict(zip(runs, map(int, cfg.compare_steps.split(",")))) if cfg.compare_steps else {}

    def steps_and_deadline(arm):
        return (fixed[arm], None) if fixed else (10**6, time.time() + cfg.compare_minutes * 60)

    for arm, reward in (("alive", "verbal"), ("scalar", "scalar")):
        steps, deadline = steps_and_deadline(arm)
        arms[arm] = run_stage(dataclasses.replace(cfg, reward=reward), "alive", warm, runs[arm],
                              steps, selfplay.rl_step, cfg.rl_lr, deadline)
    # the control continues the warm-up's own mix (no judge-only phase) at a tenth of its rate
    steps, deadline = steps_and_deadline("sft")
    arms["sft"] = run_stage(dataclasses.replace(cfg, judge_first=0), "sft", warm, runs["sft"],
                            steps, warmup.warmup_step, cfg.lr * 0.1, deadline)
    if not only_main_goes_on():
        return arms
    extra = curves.budget_line(list(runs.values()), list(runs)) + "\n\n" + curves.group_table(
        [runs["alive"], runs["scalar"]], ["alive", "scalar"], cfg.families.split(","))
    report_arms(cfg, arms, "compare", cfg.compare_eval_n, extra)
    curves.plot_curves(list(runs.values()), os.path.join(cfg.out, "compare.png"),
                       labels=list(runs))
    return arms


def meta(cfg):
    """Meta-ability alignment from one warm-up: align each of deduction, induction and abduction
    (`rl_steps` each), merge the three (`merge_method`), domain self-play from the merge."""
    arms, warm = warm_start(cfg, reuse=True)
    steps = cfg.steps or cfg.rl_steps
    for ability in tasks.FAMILIES[:3]:
        arms[ability] = run_stage(dataclasses.replace(cfg, families=ability, reward="scalar"),
                                  "align", warm, os.path.join(cfg.out, f"align_{ability}"),
                                  steps, selfplay.rl_step, cfg.rl_lr)
    # rank 0 merges while the others wait here (the 60-minute collective timeout covers 8B)
    arms["merged"] = merge_stage(dataclasses.replace(cfg, model=warm,
                                                     out=os.path.join(cfg.out, "merged")))
    M.barrier()
    arms["domain"] = run_stage(cfg, "domain", arms["merged"], os.path.join(cfg.out, "domain"),
                               steps, selfplay.rl_step, cfg.rl_lr)
    if only_main_goes_on():
        report_arms(cfg, arms, "meta", cfg.compare_eval_n)
    return arms


if __name__ == "__main__":
    run(parse_args(sys.argv[1:]))
    # reached by every rank (a no-op after only_main_goes_on); on an error torchrun stops the rest
    M.teardown_distributed()
