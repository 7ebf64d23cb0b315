r"""Evaluation: how well one model solves, judges, corrects itself and poses, on held-out items.

The model enters only as `generate_fn(role prompts, temperature) -> texts` (temperature 0 is
greedy; `model_generate_fn` wraps a policy, tests pass doubles), prompted as in training
(roles.py); the environment (tasks.py), never the model's opinion, scores what it wrote.
`held_out` draws split="eval" items evenly over families x levels, each cell from an rng seeded
by (seed, family, level), level-major round-robin: every model gets the same items and any
prefix (a smaller n; judge and self-correction) covers every cell. A repeat within a cell is
redrawn up to REDRAWS times (small cells may keep some; `distinct` counts).

Item i gives x_i in [0, 1]; over n items p = (1/n) sum_i x_i, se = sqrt(sum_i (x_i - p)^2) / n
(0/1 values: sqrt(p (1 - p) / n)), overall, per family, level and cell ("family/level"):
  accuracy         x_i = 1 if the greedy `Answer:` line passes tasks.check (contract `accuracy`)
  pass@j at T      k = `samples` draws, c_i right: x_i = 1 - C(k - c_i, j) / C(k, j), j in (1, k)
  judge agreement  greedy verdict (none counts 0) on the reference solution (truth: correct) and
                   its tasks.corrupt corruption (incorrect); means per class `on_correct` /
                   `on_incorrect`, the latter split into `on_wrong_answer` (the Answer line) /
                   `on_wrong_step` (an earlier slip carried on, or a miscount);
                   `names_the_step`: the critique's parse_pointer hits the slipped step; the
                   judge reads roles.judge_reference(task, judge_sees) as its reference
  self-correction  on n_judge items the model judges its greedy s (with its reference)
                   and, unless its verdict is "correct", revises s given its critique:
                   wrong_to_right = #(s wrong, final right) / n, right_to_wrong likewise, `net` =
                   after - before accuracy; `wrong_to_right_faithful` counts only revisions
                   that are the reference chain (tasks.faithful: a right answer under
                   wrong steps is a guess or a copy, not a correction);
                   `verdict_agreement`: its verdict vs tasks.check (on its own solutions)
  by item          `greedy_by_item`: [family, level, 0/1, problem hash] per item; two models scored
                   on the same items differ by mean(x_i - x'_i) with se from those differences
  posing           n_pose pose prompts at T: validity = share parse_pose reads and tasks.validate
                   accepts (contract `pose_validity`), distinct valid / valid, greedy solve_rate
With `data=FILE` (JSONL {"question", "answer"}) accuracy and self-correction use its items; judge
and posing keep the held-out items. n_judge=0 / n_pose=0 skip them (null, listed in `skipped`).

Run: python eval.py --model=DIR --out=FILE.json [--families deduction induction] [--levels 3 4]
         [--n=600] [--data=FILE.jsonl] [--samples=4] [--temperature=0.8] [--seed=0] [--hints]
         [--n_judge=200] [--n_pose=100] [--max_new_tokens=256] [--batch_size=64]
         [--judge_sees=answer|solution]
     python eval.py --plot=RUN_DIR          (RUN_DIR/metrics.jsonl -> RUN_DIR/curves.png)
JSON is written atomically, a table to stdout, progress to stderr. Under FSDP, call `evaluate`
inside `model.gathered_for_rollout(policy)` on every rank. Tests: pytest -q tests/test_eval.py
"""
import argparse
import collections
import hashlib
import json
import math
import os
import random
import sys
import tempfile
import time

import torch

import curves
import jsonl
import model
import roles
import sampling
import tasks

DEFAULT_N = 600
REDRAWS = 10  # tries for a problem not yet in its cell before a repeat is accepted


def load_for_eval(path):
    """(policy, tokenizer) in eval mode: bf16 on the GPU when there is one, else fp32 on the CPU."""
    cuda = torch.cuda.is_available()
    policy, tokenizer = model.load(path, dtype=torch.bfloat16 if cuda else torch.float32,
                                   device="cuda" if cuda else "cpu")
    return policy.eval(), tokenizer


def model_generate_fn(policy, tokenizer, max_new_tokens=256, batch_size=64, seed=0, hints=False,
                      top_p=1.0):
    """generate_fn of a loaded model; one CPU Generator seeded once makes sampling reproducible."""
    generator = torch.Generator().manual_seed(seed)

    def generate_fn(prompts, temperature):
        rendered = [roles.render(tokenizer, p, hints=hints) for p in prompts]
        return [c.text for c in sampling.complete(policy, tokenizer, rendered, max_new_tokens,
                                                  temperature=temperature, top_p=top_p,
                                                  generator=generator, batch_size=batch_size)]
    return generate_fn


def cells_of(families, levels):
    """(family, level) cells, level-major, so a round-robin prefix covers every family early."""
    return [(f, lv) for lv in levels for f in families]


def check_cells(families, levels):
    """ValueError naming the valid ones when a family or level is unknown (or none is given)."""
    bad = ([f for f in families if f not in tasks.FAMILIES]
           + [lv for lv in levels if lv not in tasks.LEVELS])
    if bad or not families or not levels:
        raise ValueError(f"unknown family or level {', '.join(map(str, bad)) or '(none given)'}; "
                         f"families are {', '.join(tasks.FAMILIES)}, "
                         f"levels {', '.join(map(str, tasks.LEVELS))}")


def held_out(families=tasks.FAMILIES, levels=tasks.LEVELS, n=DEFAULT_N, seed=0):
    """n held-out tasks spread evenly over the cells, in round-robin order (see module doc)."""
    cells = cells_of(families, levels)
    counts = [n // len(cells) + (i < n % len(cells)) for i in range(len(cells))]
    drawn = []
    for (family, level), k in zip(cells, counts):
        rng = random.Random(f"alive-eval:{seed}:{family}:{level}")
        items, seen = [], set()
        while len(items) < k:
            for _ in range(REDRAWS):
                task = tasks.sample(family, level, rng, split="eval")
                if task.prompt not in seen:
                    break
            items.append(task)
            seen.add(task.prompt)
        drawn.append(items)
    return [items[j] for j in range(max(counts, default=0)) for items in drawn if j < len(items)]


def mean_se(values):
    """{"mean", "se", "n"} of per-item values; mean and se are None for no items."""
    n = len(values)
    if n == 0:
        return {"mean": None, "se": None, "n": 0}
    p = sum(values) / n
    var = sum((x - p) ** 2 for x in values) / n
    return {"mean": round(p, 6), "se": round(math.sqrt(var / n), 6), "n": n}


def breakdown(values, keys):
    """mean_se overall, per family, per level and per cell; keys[i] = (family, level) of item i."""
    out = {"overall": mean_se(values)}
    for name, key in (("family", lambda f, lv: f), ("level", lambda f, lv: str(lv)),
                      ("cell", lambda f, lv: f"{f}/{lv}")):
        groups = collections.defaultdict(list)
        for v, (f, lv) in zip(values, keys):
            groups[key(f, lv)].append(v)
        out[name] = {g: mean_se(vs) for g, vs in groups.items()}
    return out


def pass_at(k, c, j):
    """Unbiased pass@j from k draws with c correct: 1 - C(k-c, j) / C(k, j)."""
    return 1.0 - math.comb(k - c, j) / math.comb(k, j)


def score(task, text):
    """1.0 when the solver's own `Answer:` line is right, else 0.0 (no Answer line is wrong)."""
    answer = roles.parse_answer(text)
    return float(answer is not None and tasks.check(task, answer))


def solver_metrics(generate_fn, items, samples, temperature):
    """Greedy accuracy and pass@j at temperature; also the greedy texts and scores for reuse."""
    keys = [(t.family, t.level) for t in items]
    prompts = [roles.solve_prompt(t.prompt) for t in items]
    greedy = generate_fn(prompts, 0.0)
    correct = [score(t, x) for t, x in zip(items, greedy)]
    out = {"greedy": breakdown(correct, keys), "sampled": None}
    if samples > 0:
        drawn = generate_fn(prompts * samples, temperature)  # draw s of item i at s * len + i
        hits = [int(sum(score(t, drawn[s * len(items) + i]) for s in range(samples)))
                for i, t in enumerate(items)]
        out["sampled"] = {"temperature": temperature, "samples": samples}
        for j in sorted({1, samples}):
            out["sampled"][f"pass@{j}"] = breakdown([pass_at(samples, c, j) for c in hits], keys)
    return out, greedy, correct


def judge_metrics(generate_fn, items, seed, sees="answer"):
    """Agreement of greedy verdicts with the truth on reference vs corrupted solutions."""
    rng = random.Random(f"alive-eval-corrupt:{seed}")
    cases = []  # (task, solution, truth, the corrupted step or None)
    for t in items:
        bad, step = tasks.corrupt(t, rng)
        cases += [(t, tasks.solve(t), True, None), (t, bad, False, step)]
    texts = generate_fn([roles.judge_prompt(t.prompt, roles.judge_reference(t, sees), s)
                         for t, s, _, _ in cases], 0.0)
    verdicts = [roles.parse_verdict(x) for x in texts]
    agree = [float(v is not None and v == truth) for v, (_, _, truth, _) in zip(verdicts, cases)]
    # the slip is in the Answer line itself, or in an earlier step whose error carried on
    slips = [(a, step == len(t.steps) + 1, roles.parse_pointer(x) == step)
             for a, (t, _, truth, step), x in zip(agree, cases, texts) if not truth]
    return {"agreement": breakdown(agree, [(t.family, t.level) for t, _, _, _ in cases]),
            "on_correct": mean_se([a for a, (_, _, truth, _) in zip(agree, cases) if truth]),
            "on_incorrect": mean_se([a for a, _, _ in slips]),
            "on_wrong_answer": mean_se([a for a, in_answer, _ in slips if in_answer]),
            "on_wrong_step": mean_se([a for a, in_answer, _ in slips if not in_answer]),
            "names_the_step": mean_se([float(named) for _, _, named in slips]),
            "says_correct": mean_se([float(v is True) for v in verdicts]),
            "unparsed": mean_se([float(v is None) for v in verdicts])}


def self_correction_metrics(generate_fn, items, solutions, before, sees="answer"):
    """Own verdict on own greedy solution; revise unless "correct"; count the answer flips."""
    critiques = generate_fn([roles.judge_prompt(t.prompt, roles.judge_reference(t, sees), s)
                             for t, s in zip(items, solutions)], 0.0)
    verdicts = [roles.parse_verdict(c) for c in critiques]
    redo = [i for i, v in enumerate(verdicts) if v is not True]
    asked = [roles.revise_prompt(items[i].prompt, solutions[i], critiques[i]) for i in redo]
    revisions = [roles.revision(prompt, text)
                 for prompt, text in zip(asked, generate_fn(asked, 0.0) if redo else [])]
    after, chained = list(before), 0  # chained: wrong -> the reference chain, step for step
    for i, text in zip(redo, revisions):
        after[i] = score(items[i], text)
        chained += not before[i] and tasks.faithful(items[i], text)
    n, wrong = len(items), sum(1 for b in before if not b)
    w2r = sum(1 for b, a in zip(before, after) if not b and a)
    r2w = sum(1 for b, a in zip(before, after) if b and not a)
    return {"wrong_to_right": w2r / n, "right_to_wrong": r2w / n, "net": (w2r - r2w) / n,
            "wrong_to_right_faithful": chained / n,
            "n": n, "count_wrong_to_right": w2r, "count_right_to_wrong": r2w,
            "wrong_to_right_given_wrong": w2r / wrong if wrong else None,
            "right_to_wrong_given_right": r2w / (n - wrong) if n > wrong else None,
            "net_change": mean_se([a - b for a, b in zip(after, before)]),
            "before": mean_se(before), "after": mean_se(after), "revised": len(redo) / n,
            "verdict_agreement": mean_se([float(v is not None and v == bool(b))
                                          for v, b in zip(verdicts, before)])}


def pose_metrics(generate_fn, families, levels, n_pose, seed, temperature):
    """Share of valid posings (environment decides), how many distinct, and the solve rate."""
    rng = random.Random(f"alive-eval-pose:{seed}")
    cells = cells_of(families, levels)
    asks = [(f, lv, tasks.document(rng, lv, "eval") if f == "corpus" else None)
            for f, lv in (cells[i % len(cells)] for i in range(n_pose))]
    texts = generate_fn([roles.pose_prompt(f, lv, doc) for f, lv, doc in asks], temperature)
    results = [tasks.validate(f, posed, lv, document=doc) if posed is not None
               else "no posing could be read"
               for (f, lv, doc), posed in zip(asks, map(roles.parse_pose, texts))]
    valid = [r for r in results if isinstance(r, tasks.Task)]
    solved = generate_fn([roles.solve_prompt(t.prompt) for t in valid], 0.0) if valid else []
    reasons = collections.Counter(r for r in results if isinstance(r, str))
    return {"validity": breakdown([float(isinstance(r, tasks.Task)) for r in results],
                                  [(f, lv) for f, lv, _ in asks]),
            "distinct": len({t.prompt for t in valid}) / len(valid) if valid else None,
            "solve_rate": mean_se([score(t, x) for t, x in zip(valid, solved)]),
            "invalid_reasons": dict(reasons.most_common(5))}


def evaluate(generate_fn, families=tasks.FAMILIES, levels=tasks.LEVELS, n=None, seed=0, samples=4,
             temperature=0.8, data=None, n_judge=200, n_pose=100, log=None, judge_sees="answer"):
    """Every metric of the module docstring as one JSON-able dict (contract keys on top). n: solver
    items (None: 600, or all of data); data: a JSONL path or Tasks; log: gets a line per phase."""
    families, levels = tuple(families), tuple(levels)
    check_cells(families, levels)
    if (n is not None and n < 1) or samples < 0 or n_judge < 0 or n_pose < 0 or temperature < 0:
        raise ValueError("need n >= 1 and samples, n_judge, n_pose, temperature >= 0")
    log = log or (lambda line: None)
    clock, seconds = [time.time()], {}

    def lap(name):
        clock.append(time.time())
        seconds[name] = round(clock[-1] - clock[-2], 2)
        log(f"{name}: {seconds[name]:.1f} s")
    is_path = isinstance(data, (str, os.PathLike))
    items = held_out(families, levels, n or DEFAULT_N, seed) if data is None else \
        (jsonl.load_eval_set(data) if is_path else list(data))[:n]
    lap("items")
    solver, greedy, correct = solver_metrics(generate_fn, items, samples, temperature)
    lap(f"solve ({len(items)} greedy + {len(items) * samples} sampled)")
    skipped = ["judge", "self_correction"] * (not n_judge) + ["pose"] * (not n_pose)
    judge = fixes = pose = None
    if n_judge:
        judged = items[:n_judge] if data is None else held_out(families, levels, n_judge, seed)
        judge = judge_metrics(generate_fn, judged, seed, judge_sees)
        lap(f"judge ({2 * len(judged)} judgements)")
        k = min(n_judge, len(items))
        fixes = self_correction_metrics(generate_fn, items[:k], greedy[:k], correct[:k], judge_sees)
        lap(f"self-correction ({k} items)")
    if n_pose:
        pose = pose_metrics(generate_fn, families, levels, n_pose, seed, temperature)
        lap(f"pose ({n_pose} posings)")
    table = solver["greedy"]
    return {
        "n": len(items), "accuracy": {"overall": table["overall"]["mean"],  # the contract's layout
                                      **{f: s["mean"] for f, s in table["family"].items()}},
        "accuracy_se": {"overall": table["overall"]["se"],
                        **{f: s["se"] for f, s in table["family"].items()}},
        "accuracy_by_level": {lv: s["mean"] for lv, s in table["level"].items()},
        "accuracy_by_level_se": {lv: s["se"] for lv, s in table["level"].items()},
        "judge_agreement": judge["agreement"]["overall"]["mean"] if judge else None,
        "self_correction": fixes or {"wrong_to_right": None, "right_to_wrong": None},
        "pose_validity": pose["validity"]["overall"]["mean"] if pose else None,
        "greedy": table, "sampled": solver["sampled"], "judge": judge, "pose": pose,
        "greedy_by_item": [[t.family, t.level, c, item_id(t)] for t, c in zip(items, correct)],
        "distinct": len({t.prompt for t in items}), "skipped": skipped,
        "config": {"families": list(families), "levels": list(levels), "seed": seed,
                   "samples": samples, "temperature": temperature, "n_judge": n_judge,
                   "n_pose": n_pose, "judge_sees": judge_sees, "data": str(data) if is_path else
                   None if data is None else "in-memory"},
        "seconds": seconds}


def _cell(stat):
    """'mean±se' of a {"mean", "se"} cell, '0.123' of a number, '-' where there is none."""
    if isinstance(stat, (int, float)):
        return f"{stat:.3f}"
    return "-" if not stat or stat["mean"] is None else f"{stat['mean']:.3f}±{stat['se']:.3f}"


def grid(table, title):
    """Rows = levels, columns = families, with the overall row and column."""
    families = list(table["family"])
    rows = [[table["cell"].get(f"{f}/{lv}") for f in families] + [table["level"][lv]]
            for lv in table["level"]]
    rows.append([table["family"][f] for f in families] + [table["overall"]])
    return "\n".join([title, "level  " + "".join(f"{f:>15}" for f in families + ["all"])]
                     + [f"{label:<7}" + "".join(f"{_cell(c):>15}" for c in row)
                        for label, row in zip([*table["level"], "all"], rows)])


def pooled(stats):
    """Mean and standard error of several {"mean", "se", "n"} cells taken as one sample."""
    cells = [c for c in stats if c and c["mean"] is not None and c["n"]]
    n = sum(c["n"] for c in cells)
    if not n:
        return None
    p = sum(c["mean"] * c["n"] for c in cells) / n
    return {"mean": p, "se": math.sqrt(p * (1 - p) / n), "n": n}


def item_id(task):
    """A short stable name of an item's problem (reports scored the same items if theirs agree)."""
    return hashlib.sha256(task.prompt.encode()).hexdigest()[:12]


def paired_difference(report, base, levels_from=3):
    """Mean and standard error of report's greedy score minus base's, item by item, on the items
    of levels >= levels_from; None unless both scored the same items (eval's default split and
    seed). On shared items this is the standard error of the difference: models that agree on
    most items differ by less noise than their two separate errors add up to."""
    mine, theirs = report.get("greedy_by_item"), base.get("greedy_by_item")
    if not mine or not theirs or [x[3] for x in mine] != [x[3] for x in theirs]:
        return None
    return mean_se([a[2] - b[2] for a, b in zip(mine, theirs) if int(a[1]) >= levels_from])


def comparison_table(reports):
    """A markdown table with one column per evaluated model (`{name: evaluate(...)}`)."""
    names = list(reports)
    levels = sorted({lv for r in reports.values() for lv in r["greedy"]["level"]}, key=int)
    families = list(dict.fromkeys(f for r in reports.values() for f in r["greedy"]["family"]))
    rows = [("accuracy, all levels", lambda r: r["greedy"]["overall"])]
    rows += [(f"accuracy, level {lv}", lambda r, lv=lv: r["greedy"]["level"].get(lv))
             for lv in levels]
    rows.append(("accuracy, levels 3 and up", lambda r: pooled(
        [r["greedy"]["level"].get(lv) for lv in levels if int(lv) >= 3])))
    base = reports[names[0]]
    rows.append((f"... minus {names[0]}'s, item by item", lambda r: None if r is base else
                 paired_difference(r, base)))
    rows += [(f"accuracy, {f}", lambda r, f=f: r["greedy"]["family"].get(f)) for f in families]
    rows.append(("pass@1 sampled", lambda r: (r["sampled"] or {}).get("pass@1", {}).get("overall")))
    rows += [("judge agreement", lambda r: (r["judge"] or {}).get("agreement", {}).get("overall")),
             ("judge accepts a reference solution", lambda r: (r["judge"] or {}).get("on_correct")),
             ("judge rejects a wrong solution", lambda r: (r["judge"] or {}).get("on_incorrect")),
             ("judge agrees on its own solution",
              lambda r: (r["self_correction"] or {}).get("verdict_agreement")),
             ("self-correction net", lambda r: (r["self_correction"] or {}).get("net_change")),
             ("pose validity", lambda r: (r["pose"] or {}).get("validity", {}).get("overall")),
             ("self-correction wrong->right", lambda r: r["self_correction"].get("wrong_to_right")),
             ("... of which the whole chain is right",
              lambda r: r["self_correction"].get("wrong_to_right_faithful")),
             ("self-correction right->wrong", lambda r: r["self_correction"].get("right_to_wrong"))]
    out = ["| metric | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for label, get in rows:
        out.append(f"| {label} | " + " | ".join(_cell(get(reports[n])) for n in names) + " |")
    out.append("| held-out items (n) | " + " | ".join(str(reports[n]["n"]) for n in names) + " |")
    return "\n".join(out)


def format_report(report):
    """A short plain-text summary of `evaluate`'s dict."""
    out = [grid(report["greedy"], f"greedy accuracy ± standard error, {report['n']} held-out "
                                  f"items ({report['distinct']} distinct)")]
    sampled = report["sampled"]
    if sampled:
        k, t = sampled["samples"], sampled["temperature"]
        out.append(grid(sampled["pass@1"], f"pass@1 at T={t} ({k} draws per item)"))
        out.append(f"pass@{k} at T={t}: {_cell(sampled[f'pass@{k}']['overall'])}")
    judge = report["judge"]
    if judge:
        j = {k: _cell(judge[k]) for k in ("on_correct", "on_incorrect", "on_wrong_answer",
                                          "on_wrong_step", "names_the_step")}
        agree = judge["agreement"]["overall"]
        out.append(f"judge agreement {_cell(agree)} over {agree['n']} judgements (on correct "
                   f"{j['on_correct']}, on incorrect {j['on_incorrect']}: wrong answer "
                   f"{j['on_wrong_answer']}, wrong earlier step {j['on_wrong_step']}; names the "
                   f"step {j['names_the_step']}; no verdict {judge['unparsed']['mean']:.3f})")
        s = report["self_correction"]
        out.append(f"self-correction on {s['n']} items: wrong->right {s['wrong_to_right']:.3f}, "
                   f"right->wrong {s['right_to_wrong']:.3f}, net {s['net']:+.3f} (accuracy "
                   f"{s['before']['mean']:.3f} -> {s['after']['mean']:.3f}, "
                   f"revised {s['revised']:.3f})")
    pose = report["pose"]
    if pose:
        out.append(f"posing: validity {_cell(pose['validity']['overall'])} of "
                   f"{pose['validity']['overall']['n']}, distinct {_cell(pose['distinct'])}, "
                   f"solve rate {_cell(pose['solve_rate'])} on {pose['solve_rate']['n']} valid")
    if report["skipped"]:
        out.append(f"skipped: {', '.join(report['skipped'])}")
    return "\n\n".join(out)


def write_json(obj, path):
    """Write obj as JSON atomically: a temp file in the same folder, then os.replace."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".json", dir=folder)
    with os.fdopen(fd, "w") as fh:
        json.dump(obj, fh, indent=1)
        fh.write("\n")
    os.replace(tmp, path)


def _words(values):
    """`--families a b` and `--families=a,b` alike."""
    return [w for v in values or [] for w in v.split(",") if w]


def parse_args(argv):
    """The checked command-line arguments; ValueError (or ArgumentError) on a usage error."""
    parser = argparse.ArgumentParser(
        description="Evaluate a model on held-out items, or plot a run.", exit_on_error=False)
    parser.add_argument("--model", help="Hugging Face model directory to evaluate")
    parser.add_argument("--out", help="JSON file to write (atomically); without it, print only")
    parser.add_argument("--families", nargs="+", help=f"subset of {', '.join(tasks.FAMILIES)}")
    parser.add_argument("--levels", nargs="+", help="subset of 1 2 3 4 5")
    parser.add_argument("--n", type=int, help=f"held-out solver items (default {DEFAULT_N}; "
                                              "with --data: all of it)")
    parser.add_argument("--data", help="JSONL eval set {question, answer} instead of task families")
    parser.add_argument("--samples", type=int, default=4, help="draws per item at --temperature")
    parser.add_argument("--temperature", type=float, default=0.8, help="sampling temperature")
    parser.add_argument("--seed", type=int, default=0, help="items and sampler seed")
    parser.add_argument("--n_judge", type=int, default=200, help="judge / self-correction items")
    parser.add_argument("--n_pose", type=int, default=100, help="pose prompts")
    parser.add_argument("--max_new_tokens", type=int, default=256, help="budget of every output")
    parser.add_argument("--batch_size", type=int, default=64, help="prompts per decode batch")
    parser.add_argument("--judge_sees", choices=roles.JUDGE_SEES, default="answer",
                        help="the judge's reference: the answer, or the whole reference solution")
    parser.add_argument("--hints", action="store_true",
                        help="a model with a chat template reads each role's format first")
    parser.add_argument("--plot",
                        help="run directory (or several, comma separated): draw curves.png")
    args, extra = parser.parse_known_args(argv)
    if extra:
        raise ValueError(f"unknown argument(s) {' '.join(extra)}; see --help")
    args.families = _words(args.families) or list(tasks.FAMILIES)
    try:
        args.levels = [int(w) for w in _words(args.levels)] or list(tasks.LEVELS)
    except ValueError:
        raise ValueError(f"--levels takes numbers in {tasks.LEVELS}") from None
    check_cells(args.families, args.levels)
    if not args.model and not args.plot:
        raise ValueError("give --model=DIR to evaluate or --plot=RUN_DIR to draw curves")
    if args.max_new_tokens < 1 or args.batch_size < 1 or (args.n is not None and args.n < 1):
        raise ValueError("--n, --max_new_tokens and --batch_size must be >= 1")
    if min(args.samples, args.n_judge, args.n_pose, args.temperature) < 0:
        raise ValueError("--samples, --n_judge, --n_pose and --temperature must be >= 0")
    return args


def main(argv=None):
    """Exit status: 0 done, 1 a plot not drawn (no matplotlib), 2 a usage error (one-line: only the
    user's inputs, i.e. flags, files and model directory, are caught)."""
    try:
        args = parse_args(argv)
        status = 0
        if args.plot:
            runs = [r for r in args.plot.split(",") if r]
            first = runs[0]
            folder = first if os.path.isdir(first) else os.path.dirname(os.path.abspath(first))
            drawn = curves.plot_curves(runs, os.path.join(folder, "curves.png"))
            print(f"curves: {drawn}" if drawn else "curves: not drawn")
            status = 0 if drawn else 1
        if not args.model:
            return status
        data = jsonl.load_eval_set(args.data) if args.data is not None else None
        policy, tokenizer = load_for_eval(args.model)
    except (argparse.ArgumentError, ValueError, OSError) as e:
        print(f"eval.py: error: {e}", file=sys.stderr)
        return 2
    generate_fn = model_generate_fn(policy, tokenizer, args.max_new_tokens, args.batch_size,
                                    args.seed, args.hints)
    report = evaluate(generate_fn, args.families, args.levels, args.n, args.seed, args.samples,
                      args.temperature, data, args.n_judge, args.n_pose,
                      log=lambda line: print(line, file=sys.stderr, flush=True),
                      judge_sees=args.judge_sees)
    report["config"].update(model=args.model, data=args.data)
    if args.out:
        write_json(report, args.out)
    print(format_report(report))
    return status


if __name__ == "__main__":
    sys.exit(main())
