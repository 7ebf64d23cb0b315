"""Benchmark: can the tiny model learn to judge (or to solve), in a fixed budget, from
demonstrations of that role alone?

A fresh tiny model (train.py's default sizes, or the flags below) is trained on the teacher's
critiques alone (`--demo_mix=0,1,0,0,0`: contrastive pairs, each task with its reference
solution and corrupted, the error carried to the answer) for `--seconds` of wall time, then judges
held-out items greedily (eval.judge_metrics: every item once with its reference solution,
once corrupted). Judging here is learnable only by comparing the solution's answer with the
reference, which is what the critique's first line does; a model that always says one verdict
scores 0.5. The judge trains as in the warm-up's judge-only phase (at the peak rate, its
deciding token weighed --verdict_weight), and the table shows the step at which the verdict
check, every 100 steps, first passed in every family (with --seconds the checks' time counts
too).
With `--role=solve` it is trained on reference solutions alone (`--demo_mix=1,0,0,0,0`) and
scored by greedy accuracy on held-out problems of `--eval_levels` (by default the trained
levels and the one above them, if any, which is never demonstrated).
Each seed builds its own model (both skills are learned late and abruptly, so one run can
miss it).

Run: python tests/bench_judge.py [--role=judge|solve] [--seconds=300 | --steps=2000] [--seeds=2]
        [--levels=1,2] [--eval_levels=1,2,3] [--n=200]
        [--tiny_layers=2 --tiny_hidden=128 --lr=1e-3 --batch=32 --threads=2]
"""
import argparse
import json
import os
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import eval as evaluation  # noqa: E402
import tasks  # noqa: E402
import train  # noqa: E402
import warmup  # noqa: E402

MIX = {"judge": "0,1,0,0,0", "solve": "1,0,0,0,0"}  # weights of roles.DEMO_KINDS


def trained_model(role, seconds, seed, levels, flags, out, steps=None):
    """A fresh tiny model trained on `role` demonstrations for `seconds` (or exactly `steps`):
    its directory, config, steps taken, seconds, and the first step at which the verdict check
    (warmup.verdict_check, every 100 steps) reached the warm-up's default pass mark in every
    family (None: never, or a solver). A judge is trained as the warm-up's judge-only phase
    trains it, at the peak rate throughout; here the check never ends that phase (these flags
    come after the caller's). A solver's rate decays over `steps`."""
    phase_flags = [f"--judge_first={steps or 10**9}", "--judge_pass=2"] if role == "judge" \
        else ["--judge_first=0"]
    cfg = train.parse_args([f"--out={out}", f"--seed={seed}", f"--demo_mix={MIX[role]}",
                            f"--demo_levels={levels}", f"--judge_levels={levels}",
                            "--save_every=1000000"] + flags + phase_flags)
    torch.set_num_threads(cfg.threads or os.cpu_count())
    start = time.time()
    model = train.run_stage(cfg, "warmup", train.base_model(cfg), os.path.join(out, role),
                            steps or 10**9, warmup.warmup_step, cfg.lr,
                            deadline=None if steps else start + seconds)
    trained = time.time() - start
    with open(os.path.join(out, role, "metrics.jsonl")) as f:
        logged = [json.loads(line) for line in f]
    passed_at = [m["step"] + 1 for m in logged
                 if m.get("verdict_check", 0) >= train.Config.judge_pass]
    return model, cfg, len(logged), trained, passed_at[0] if passed_at else None


def run_seed(args, seed, flags, out):
    """One seed's row: training figures and the held-out figures of its role."""
    model, cfg, steps, trained, passed_at = trained_model(args.role, args.seconds, seed,
                                                          args.levels, flags, out,
                                                          args.steps or None)
    policy, tok = evaluation.load_for_eval(model)
    generate_fn = evaluation.model_generate_fn(policy, tok, max_new_tokens=cfg.max_new_tokens)
    families = cfg.families.split(",")
    row = {"seed": seed, "steps": steps, "train_s": round(trained), "check_passed_at": passed_at}
    if args.role == "solve":
        trained_levels = [int(x) for x in args.levels.split(",")]
        above = [lv for lv in tasks.LEVELS if lv == max(trained_levels) + 1]  # none above 5
        levels = [int(x) for x in args.eval_levels.split(",")] if args.eval_levels else \
            trained_levels + above
        items = evaluation.held_out(families, levels, args.n, seed=seed)
        greedy = evaluation.solver_metrics(generate_fn, items, 0, 1.0)[0]["greedy"]
        return {**row, "accuracy": greedy["overall"]["mean"], "se": greedy["overall"]["se"],
                "per_level": {lv: s["mean"] for lv, s in sorted(greedy["level"].items())},
                "per_family": {f: s["mean"] for f, s in greedy["family"].items()}}
    items = evaluation.held_out(families, [int(x) for x in args.levels.split(",")], args.n,
                                seed=seed)
    judged = evaluation.judge_metrics(generate_fn, items, seed)
    return {**row, "agreement": judged["agreement"]["overall"]["mean"],
            "se": judged["agreement"]["overall"]["se"],
            "accepts_reference": judged["on_correct"]["mean"],
            "rejects_wrong": judged["on_incorrect"]["mean"],
            "per_family": {f: s["mean"] for f, s in judged["agreement"]["family"].items()}}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--role", choices=sorted(MIX), default="judge")
    parser.add_argument("--seconds", type=float, default=300)
    parser.add_argument("--steps", type=int, default=0, help="exactly this many steps instead")
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--levels", default="1,2", help="levels of the demonstrations")
    parser.add_argument("--eval_levels", default="", help="solve: held-out levels")
    parser.add_argument("--n", type=int, default=200, help="held-out items (judge: 2 each)")
    args, flags = parser.parse_known_args()
    rows = []
    for seed in range(args.seeds):
        with tempfile.TemporaryDirectory() as out:
            rows.append(run_seed(args, seed, flags, out))
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    budget = f"{args.steps} steps" if args.steps else f"{args.seconds:.0f} s"
    print(f"{args.role}-only training, {budget} a seed, demonstrations of levels {args.levels}, "
          f"{args.n} held-out items, flags {' '.join(flags) or '(defaults)'}, "
          f"torch threads {torch.get_num_threads()}")
    if args.role == "solve":
        figures = ("accuracy", "steps")
        print(f"{'seed':>4} {'steps':>6} {'accuracy':>14}  per level | per family")
        for r in rows:
            print(f"{r['seed']:>4} {r['steps']:>6} {r['accuracy']:>8.3f}±{r['se']:.3f}  "
                  + " ".join(f"{lv} {v:.2f}" for lv, v in r["per_level"].items()) + " | "
                  + " ".join(f"{f} {v:.2f}" for f, v in r["per_family"].items()))
    else:
        figures = ("agreement", "accepts_reference", "rejects_wrong", "steps")
        print(f"{'seed':>4} {'steps':>6} {'check passed at':>16} {'agreement':>14} "
              f"{'accepts ref':>12} {'rejects wrong':>14}  per family")
        for r in rows:
            print(f"{r['seed']:>4} {r['steps']:>6} {str(r['check_passed_at'] or '-'):>16} "
                  f"{r['agreement']:>8.3f}±{r['se']:.3f} "
                  f"{r['accepts_reference']:>12.3f} {r['rejects_wrong']:>14.3f}  "
                  + " ".join(f"{f} {v:.2f}" for f, v in r["per_family"].items()))
    mean = {k: round(sum(r[k] for r in rows) / len(rows), 3) for k in figures}
    print(json.dumps({"role": args.role, "seconds": args.seconds, "steps_asked": args.steps,
                      "seeds": args.seeds, "levels": args.levels, "flags": flags, **mean,
                      f"min_{figures[0]}": min(r[figures[0]] for r in rows)}))


if __name__ == "__main__":
    main()
