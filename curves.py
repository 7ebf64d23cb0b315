"""curves.py: training curves, one subplot per logged figure, from runs' metrics.jsonl.

Every stage appends one JSON object per step to <run>/metrics.jsonl (train.py); this draws the
known figures (CURVES, plus any other reward/* and acc/*) against the step, a line per run, the
stages of one run laid end to end with a dotted line where each begins. `group_table` sums the
RL steps' group counts (selfplay.group_counts) into the table `--stage=compare` prints: how many
groups had no right solution (nothing for GRPO to learn from), and how many of those a revision
rescued; `budget_line` the steps each arm took in its time.

    python eval.py --plot=runs/tiny/alive                 # -> runs/tiny/alive/curves.png
    python eval.py --plot=runs/c/cmp_alive,runs/c/cmp_scalar  # two runs on the same axes

Tests: tests/test_eval.py.
"""
import json
import math
import os
import sys
import tempfile

CURVES = ("reward/pose", "reward/solve", "reward/judge", "reward/revise", "acc/solve",
          "judge_agreement", "pose_validity", "corrected", "verdict_check", "loss",
          "entropy")  # plus other reward/*, acc/*
NO_MATPLOTLIB = "matplotlib is not installed, so no curves were drawn (pip install matplotlib)"


def read_metrics(path):
    """Rows of a run's metrics.jsonl (its directory or the file), skipping unreadable lines."""
    if os.path.isdir(path):
        path = os.path.join(path, "metrics.jsonl")
    rows = []
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                pass
    return [row for row in rows if isinstance(row, dict)]


def curve_keys(runs):
    """Known curve keys present as numbers in any run, then other reward/* and acc/* keys."""
    present = {k for rows in runs for row in rows for k, v in row.items()
               if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}
    extra = sorted(k for k in present - set(CURVES) if k.startswith(("reward/", "acc/")))
    return [k for k in CURVES if k in present] + extra


def steps_of(rows):
    """x of each row: its `step` (else its index), shifted so each stage (counting its steps from
    0) starts after the last one ended."""
    xs, offset = [], 0
    for i, row in enumerate(rows):
        step = row.get("step", i)
        step = step if isinstance(step, (int, float)) and not isinstance(step, bool) else i
        if xs and step + offset <= xs[-1] and row.get("stage") != rows[i - 1].get("stage"):
            offset = xs[-1] + 1 - step
        xs.append(step + offset)
    return xs


def group_table(runs, labels, families):
    """Markdown: per RL run and family, its groups whose solutions were all wrong, of all its
    groups, and (in brackets) how many of those a revision rescued, summed over every step; for
    a run with a judge, a row more: the wrong solutions it accepted, of those it judged."""
    lines = ["| all-wrong groups / groups (rescued) | " + " | ".join(families) + " |",
             "|---|" + "---|" * len(families)]
    keys = ("groups", "all_wrong", "rescued", "judged_wrong", "accepted_wrong")
    for run, label in zip(runs, labels):
        rows = read_metrics(run)
        total = {(key, f): sum(r.get(f"{key}/{f}") or 0 for r in rows)
                 for f in families for key in keys}
        lines.append(f"| {label} | " + " | ".join(
            f"{total['all_wrong', f]:.0f} / {total['groups', f]:.0f} "
            f"({total['rescued', f]:.0f})" for f in families) + " |")
        if any(total["judged_wrong", f] for f in families):
            lines.append(f"| {label}: wrong solutions its judge accepted / judged | " + " | ".join(
                f"{total['accepted_wrong', f]:.0f} / {total['judged_wrong', f]:.0f}"
                for f in families) + " |")
    return "\n".join(lines)


def budget_line(runs, labels):
    """One line: each run's steps and their summed seconds, and the --compare_steps value that
    reruns them step for step (a timed arm's step count follows the machine's speed)."""
    counts = [(len(rows), sum(r.get("seconds") or 0 for r in rows))
              for rows in map(read_metrics, runs)]
    return ("Steps (seconds) of each arm: " + ", ".join(
        f"{label} {n} ({sec:.0f} s)" for label, (n, sec) in zip(labels, counts))
        + f". Rerun them step for step: --compare_steps={','.join(str(n) for n, _ in counts)}")


def plot_curves(runs, out_png, labels=None):
    """out_png with a subplot per curve key, a line per run (dirs or metrics.jsonl files); None
    (after a line on stderr) without matplotlib."""
    runs = [runs] if isinstance(runs, (str, os.PathLike)) else list(runs)
    labels = list(labels) if labels else [os.path.basename(os.path.normpath(str(r))) for r in runs]
    tables = [read_metrics(r) for r in runs]
    keys = curve_keys(tables)
    if not keys:
        raise ValueError(f"no curves to draw in {', '.join(map(str, runs))} "
                         f"(known keys: {', '.join(CURVES)})")
    try:
        import matplotlib
        matplotlib.use("Agg")  # files only, no display needed
        import matplotlib.pyplot as plt
    except ImportError:
        print(NO_MATPLOTLIB, file=sys.stderr)
        return None
    cols = min(len(keys), 2)
    rows = math.ceil(len(keys) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5.5 * cols, 3 * rows), squeeze=False)
    for ax, key in zip(axes.flat, keys):
        for table, label in zip(tables, labels):
            points = [(x, r[key]) for x, r in zip(steps_of(table), table)
                      if isinstance(r.get(key), (int, float)) and not isinstance(r.get(key), bool)]
            if points:
                ax.plot(*zip(*points), label=label, linewidth=1)
        if len(tables) == 1:  # where each stage of the run begins
            for x, row, prev in zip(steps_of(tables[0])[1:], tables[0][1:], tables[0]):
                if row.get("stage") != prev.get("stage"):
                    ax.axvline(x, color="gray", linestyle=":", linewidth=1)
        ax.set(title=key, xlabel="step")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(keys):]:
        ax.axis("off")
    if len(runs) > 1:
        axes.flat[0].legend(fontsize="small")
    fig.tight_layout()
    fd, tmp = tempfile.mkstemp(suffix=".png", dir=os.path.dirname(os.path.abspath(out_png)))
    os.close(fd)
    fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    os.replace(tmp, out_png)
    return out_png
