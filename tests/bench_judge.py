"""Benchmark: can the tiny model learn to judge, in a fixed wall time, from judge demonstrations?

A fresh tiny model (train.py's default sizes, or the flags below) is trained on the teacher's
critiques alone (`--demo_mix=0,1,0,0,0`: half on reference solutions, half on solutions with
one slip carried to the answer) for `--seconds` of wall time, then judges held-out items
greedily (eval.judge_metrics: every item once with its reference solution, once corrupted).
Judging here is learnable only by comparing the solution's answer with the reference, which
is what the critique's first line does; a model that always says one verdict scores 0.5.
Each seed builds its own model (the comparison is learned late and abruptly, so one run can
miss it).

Run: python tests/bench_judge.py [--seconds=300 | --steps=2000] [--seeds=2] [--levels=1,2] [--n=200]
        [--tiny_layers=2 --tiny_hidden=128 --lr=2e-3 --batch=32 --threads=2]
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
import train  # noqa: E402


def judge_run(seconds, seed, levels, n, flags, out, steps=None):
    """Train a fresh tiny model on judge demonstrations for `seconds` (or exactly `steps`, at
    the warm-up's decaying learning rate); its held-out figures."""
    cfg = train.parse_args([f"--out={out}", f"--seed={seed}", "--demo_mix=0,1,0,0,0",
                            f"--demo_levels={levels}", "--save_every=1000000"] + flags)
    torch.set_num_threads(cfg.threads or os.cpu_count())
    start = time.time()
    model = train.run_stage(cfg, "warmup", train.base_model(cfg), os.path.join(out, "judge"),
                            steps or 10**9, train.warmup_step, cfg.lr,
                            deadline=None if steps else start + seconds)
    trained = time.time() - start
    policy, tok = evaluation.load_for_eval(model)
    generate_fn = evaluation.model_generate_fn(policy, tok, max_new_tokens=cfg.max_new_tokens)
    items = evaluation.held_out(cfg.families.split(","), [int(x) for x in levels.split(",")], n,
                                seed=seed)
    judged = evaluation.judge_metrics(generate_fn, items, seed)
    with open(os.path.join(out, "judge", "metrics.jsonl")) as f:
        steps = sum(1 for _ in f)
    return {"seed": seed, "steps": steps, "train_s": round(trained),
            "agreement": judged["agreement"]["overall"]["mean"],
            "se": judged["agreement"]["overall"]["se"],
            "accepts_reference": judged["on_correct"]["mean"],
            "rejects_wrong": judged["on_incorrect"]["mean"],
            "per_family": {f: s["mean"] for f, s in judged["agreement"]["family"].items()}}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=300)
    parser.add_argument("--steps", type=int, default=0, help="exactly this many steps instead")
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--levels", default="1,2")
    parser.add_argument("--n", type=int, default=200, help="held-out items (2 judgements each)")
    args, flags = parser.parse_known_args()
    rows = []
    for seed in range(args.seeds):
        with tempfile.TemporaryDirectory() as out:
            rows.append(judge_run(args.seconds, seed, args.levels, args.n, flags, out,
                                  args.steps or None))
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    print(f"judge-only training, {args.seconds:.0f} s a seed, levels {args.levels}, "
          f"{2 * args.n} held-out judgements, flags {' '.join(flags) or '(defaults)'}, "
          f"torch threads {torch.get_num_threads()}")
    print(f"{'seed':>4} {'steps':>6} {'agreement':>14} {'accepts ref':>12} {'rejects wrong':>14}  "
          "per family")
    for r in rows:
        print(f"{r['seed']:>4} {r['steps']:>6} {r['agreement']:>8.3f}±{r['se']:.3f} "
              f"{r['accepts_reference']:>12.3f} {r['rejects_wrong']:>14.3f}  "
              + " ".join(f"{f} {v:.2f}" for f, v in r["per_family"].items()))
    mean = {k: round(sum(r[k] for r in rows) / len(rows), 3)
            for k in ("agreement", "accepts_reference", "rejects_wrong", "steps")}
    print(json.dumps({"seconds": args.seconds, "seeds": args.seeds, "levels": args.levels,
                      "flags": flags, **mean, "min_agreement": min(r["agreement"] for r in rows)}))


if __name__ == "__main__":
    main()
