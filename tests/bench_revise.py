"""Benchmark: how often does a model's reviser turn its own wrong solution into the reference
chain, and what does starting the revision on the critique's fix buy?

For each cell (family, level): `--problems` train problems, `--solutions` samples each at
temperature 1; every wrong one is critiqued twice, by the model's own judge (sampled, its
reference in view: --judge_sees) and by the programmatic teacher (tasks.critique), and revised
from each critique twice: asked for the whole revision (the revise prompt cut at its `#revise`
marker, roles.split_prompt), and started on the critique's fix (the revise prompt as the model
is asked it: the steps before the flagged one and the corrected step, roles.revision_start). A
revision counts when the whole chain is the reference's (tasks.faithful). Also counted:
problems none of whose samples was right, and how many of those got at least one faithful
revision: that is where plain GRPO has nothing to learn from and a revision is the only signal,
and how often the judge's pointer (its `Step k`) is the teacher's first wrong step.

Run: python tests/bench_revise.py --model=runs/evidence/warmup/model
        [--cells=induction/3,induction/4,corpus/3] [--problems=40] [--solutions=4] [--seed=1]
        [--revise_temperature=1.0] [--judge_sees=answer|solution]
"""
import argparse
import json
import os
import random
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import eval as evaluation  # noqa: E402
import roles  # noqa: E402
import sampling  # noqa: E402
import tasks  # noqa: E402


def complete(policy, tok, prompts, temperature, generator, max_new_tokens=160):
    """The model's completions of raw (unrendered) prompts, as texts."""
    return [c.text for c in sampling.complete(
        policy, tok, [roles.render(tok, p) for p in prompts], max_new_tokens, temperature,
        generator=generator)]


def revise_counts(policy, tok, wrong, critiques, generator, temperature):
    """{"whole", "started"}: (faithful revisions, problems with one) from these critiques."""
    out = {}
    for how in ("whole", "started"):
        prompts = [roles.revise_prompt(t.prompt, s, c) for (t, s), c in zip(wrong, critiques)]
        if how == "whole":  # the prompt up to its marker: the reviser writes every line
            prompts = [roles.split_prompt(p)[0] for p in prompts]
        texts = complete(policy, tok, prompts, temperature, generator)
        ok = [tasks.faithful(t, roles.revision(p, x))
              for (t, _), p, x in zip(wrong, prompts, texts)]
        out[how] = (sum(ok), len({t.prompt for (t, _), good in zip(wrong, ok) if good}))
    return out


def bench_cell(policy, tok, family, level, args, generator):
    rng = random.Random(f"{args.seed}/{family}/{level}")
    problems = [tasks.sample(family, level, rng, "train") for _ in range(args.problems)]
    each = [t for t in problems for _ in range(args.solutions)]
    texts = complete(policy, tok, [roles.solve_prompt(t.prompt) for t in each], 1.0, generator)
    right = [evaluation.score(t, x) for t, x in zip(each, texts)]
    wrong = [(t, x) for t, x, r in zip(each, texts, right) if not r]
    solved = {t.prompt for t, r in zip(each, right) if r}
    own = complete(policy, tok, [roles.judge_prompt(t.prompt, roles.judge_reference(
        t, args.judge_sees), x) for t, x in wrong], 1.0, generator)
    teacher = [tasks.critique(t, x) for t, x in wrong]
    row = {"cell": f"{family}/{level}", "wrong": len(wrong), "samples": len(each),
           "all_wrong_problems": len({t.prompt for t in problems} - solved),
           "judge_names_the_teachers_step": sum(roles.parse_pointer(a) == roles.parse_pointer(b)
                                                for a, b in zip(own, teacher))}
    for name, critiques in (("judge", own), ("teacher", teacher)):
        for how, (n, problems_fixed) in revise_counts(policy, tok, wrong, critiques, generator,
                                                      args.revise_temperature).items():
            row[f"{name}/{how}"] = n
            row[f"{name}/{how}/problems"] = problems_fixed
    return row


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True, help="model directory (train.py's output)")
    parser.add_argument("--cells", default="induction/3,induction/4,corpus/3,deduction/3")
    parser.add_argument("--problems", type=int, default=40, help="train problems per cell")
    parser.add_argument("--solutions", type=int, default=4, help="samples per problem")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--judge_sees", choices=roles.JUDGE_SEES, default="answer",
                        help="the judge's reference, as the model was trained (train.py's flag)")
    parser.add_argument("--revise_temperature", type=float, default=1.0,
                        help="revisions' sampling temperature (self-play samples at 1)")
    args = parser.parse_args()
    policy, tok = evaluation.load_for_eval(args.model)
    generator = torch.Generator().manual_seed(args.seed)
    cells = [cell.split("/") for cell in args.cells.split(",")]
    rows = [bench_cell(policy, tok, family, int(level), args, generator)
            for family, level in cells]
    print("| cell | wrong / samples | problems all wrong | judge names the teacher's step "
          "| judge: whole | judge: started | teacher: whole | teacher: started |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        cols = [f"{r[f'{c}/{h}']} ({r[f'{c}/{h}/problems']})" for c in ("judge", "teacher")
                for h in ("whole", "started")]
        print(f"| {r['cell']} | {r['wrong']} / {r['samples']} | {r['all_wrong_problems']} | "
              f"{r['judge_names_the_teachers_step']} | " + " | ".join(cols) + " |")
    print(f"(faithful revisions of the wrong samples, revised at temperature "
          f"{args.revise_temperature}; in brackets the problems with at least one)")
    print(json.dumps({"model": args.model, "rows": rows}))


if __name__ == "__main__":
    main()
