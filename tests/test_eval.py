"""Tests of eval.py: scripted test doubles in place of the model (a perfect solver scores 1.0
everywhere, a hopeless one 0.0, an always-"correct" judge agrees half the time), exact
self-correction counts, the statistics against closed forms, fixed held-out items, a real
tiny model end to end through the command line, clear errors, and the curve plot with and
without matplotlib.

Run: python -m pytest -q tests/test_eval.py
"""

import itertools
import json
import math
import os
import random
import re
import subprocess
import sys

import pytest

import curves
import eval as ev
import model
import roles
import tasks

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SMALL = dict(n=40, samples=2, n_judge=20, n_pose=20, seed=3)


# ----------------------------------------------------------------------------- test doubles

def sections(prompt):
    """{section name: body} of a role prompt; a body line escaped by roles.escape is unescaped."""
    out, name = {}, None
    for line in prompt.rstrip("\n").split("\n"):
        m = re.fullmatch(r"#(problem|reference|solution|critique|doc|pose|solve|judge|revise)"
                         r"( .*)?", line)
        if m:
            name = m.group(1)
            out[name] = m.group(2).strip() if m.group(2) else ""
            continue
        line = line[1:] if line.startswith(roles.ESC) else line
        out[name] = line if out[name] == "" else out[name] + "\n" + line
    return out


def double(known, solve="right", judge="critic", revise="right", pose="valid", calls=None):
    """A generate_fn playing every role by script. `known` maps problem text -> Task; the
    poser adds the tasks it poses. `calls` (a list) records the role of every prompt."""
    rng = random.Random(0)

    def answer(task, right):
        return tasks.solve(task) if right else "I guess.\nAnswer: nope"

    def play(prompt):
        role = roles.role_of(prompt)
        s = sections(prompt)
        if calls is not None:
            calls.append(role)
        if role == "solve":
            task = known[s["problem"]]
            return answer(task, solve(task) if callable(solve) else solve == "right")
        if role == "judge":
            if judge == "critic":  # the programmatic teacher: a perfect judge
                return tasks.critique(known[s["problem"]], s["solution"])
            return f"Looks fine.\nVerdict: {judge}"
        if role == "revise":
            task = known[s["problem"]]
            # "copied": the critique's reference answer under a step that does not reach it
            text = f"I guess.\nAnswer: {task.answer}" if revise == "copied" else \
                answer(task, revise == "right")
            start = roles.split_prompt(prompt)[1]  # the revision's first lines: the prompt's end
            return text[len(start):] if text.startswith(start) else text
        family, level = s["pose"].split()
        if pose != "valid":
            return "  "  # nothing a parser can read
        doc = s.get("doc")
        text = "mask 1" if doc else tasks.pose_text(tasks.sample(family, int(level), rng))
        task = tasks.validate(family, text, int(level), document=doc)
        known[task.prompt] = task
        return text

    return lambda prompts, temperature: [play(p) for p in prompts]


def known_items(**kw):
    return {t.prompt: t for t in ev.held_out(n=kw["n"], seed=kw["seed"])}


def all_means(table):
    return [s["mean"] for s in [table["overall"], *table["family"].values(),
                                *table["level"].values(), *table["cell"].values()]]


# ----------------------------------------------------------------------------- the metrics

def test_perfect_double_scores_one_everywhere():
    report = ev.evaluate(double(known_items(**SMALL)), **SMALL)
    assert report["n"] == 40
    assert set(report["accuracy"]) == {"overall", *tasks.FAMILIES}
    assert all(v == 1.0 for v in report["accuracy"].values())
    assert all(v == 0.0 for v in report["accuracy_se"].values())
    assert set(report["accuracy_by_level"]) == {"1", "2", "3", "4", "5"}
    assert (len(report["greedy"]["cell"]) == 20
            and all(m == 1.0 for m in all_means(report["greedy"])))
    for j in ("pass@1", "pass@2"):
        assert all(m == 1.0 for m in all_means(report["sampled"][j]))
    assert report["judge_agreement"] == 1.0
    assert report["judge"]["on_correct"]["mean"] == report["judge"]["on_incorrect"]["mean"] == 1.0
    assert report["judge"]["agreement"]["overall"]["n"] == 40  # two per judged item
    assert (report["self_correction"]["wrong_to_right"]
            == report["self_correction"]["right_to_wrong"] == 0.0)
    assert report["self_correction"]["revised"] == 0.0  # the critic accepts every right solution
    assert report["pose_validity"] == 1.0
    assert report["pose"]["solve_rate"]["mean"] == 1.0 and report["pose"]["solve_rate"]["n"] == 20
    json.dumps(report)  # JSON-able


def test_hopeless_double_scores_zero():
    report = ev.evaluate(double(known_items(**SMALL), solve="wrong", revise="wrong",
                                pose="invalid"), **SMALL)
    assert all(v == 0.0 for v in report["accuracy"].values())
    for j in ("pass@1", "pass@2"):
        assert all(m == 0.0 for m in all_means(report["sampled"][j]))
    assert report["pose_validity"] == 0.0
    assert report["pose"]["solve_rate"]["n"] == 0 and report["pose"]["distinct"] is None
    assert report["pose"]["invalid_reasons"] == {"no posing could be read": 20}
    # every wrong solution is flagged, revised, and stays wrong
    assert report["self_correction"]["revised"] == 1.0
    assert (report["self_correction"]["wrong_to_right"]
            == report["self_correction"]["right_to_wrong"] == 0.0)


def test_always_correct_judge_agrees_half():
    report = ev.evaluate(double(known_items(**SMALL), judge="correct"), **SMALL)
    judge = report["judge"]
    assert report["judge_agreement"] == 0.5
    assert judge["on_correct"]["mean"] == 1.0 and judge["on_incorrect"]["mean"] == 0.0
    assert judge["says_correct"]["mean"] == 1.0 and judge["unparsed"]["mean"] == 0.0
    assert judge["agreement"]["overall"]["se"] == pytest.approx(math.sqrt(0.25 / 40))
    assert judge["on_wrong_answer"]["mean"] == judge["on_wrong_step"]["mean"] == 0.0
    assert judge["names_the_step"]["mean"] == 0.0


def test_judge_slips_split_by_where_they_are():
    """Every slip carries to the answer, so a judge that only compares the Answer line with
    the reference catches slips in the Answer line and in earlier steps alike, but names no
    step; the critic catches and names both."""
    def answer_only(prompts, temperature):
        out = []
        for p in prompts:
            s = sections(p)
            given = roles.parse_answer(s["solution"])
            out.append(f"Verdict: {'correct' if given == s['reference'] else 'incorrect'}")
        return out

    judged = ev.held_out(n=60, seed=5)
    rng = random.Random("alive-eval-corrupt:5")  # the corruptions judge_metrics will draw
    corrupted = [tasks.corrupt(t, rng) for t in judged]
    in_answer = sum(k == len(t.steps) + 1 for t, (_, k) in zip(judged, corrupted))
    assert 0 < in_answer < len(judged)  # both kinds occur in this sample
    naive = ev.judge_metrics(answer_only, judged, seed=5)
    assert naive["on_wrong_answer"] == {"mean": 1.0, "se": 0.0, "n": in_answer}
    assert naive["on_wrong_step"] == {"mean": 1.0, "se": 0.0, "n": len(judged) - in_answer}
    assert naive["names_the_step"]["mean"] == 0.0 and naive["on_correct"]["mean"] == 1.0
    assert naive["on_incorrect"]["mean"] == 1.0

    critic = ev.judge_metrics(double({t.prompt: t for t in judged}), judged, seed=5)
    for key in ("on_correct", "on_wrong_answer", "on_wrong_step", "names_the_step"):
        assert critic[key]["mean"] == 1.0


def test_the_judge_reads_the_reference_solution_with_judge_sees_solution():
    """Every judge prompt, held-out judgements and self-correction alike, holds the whole
    reference solution; the report says which reference the judge read."""
    known, prompts = known_items(**SMALL), []
    play = double(known)

    def recording(batch, temperature):
        prompts.extend(batch)
        return play(batch, temperature)
    report = ev.evaluate(recording, **SMALL, judge_sees="solution")
    judged = [sections(p) for p in prompts if roles.role_of(p) == "judge"]
    assert len(judged) == 2 * SMALL["n_judge"] + SMALL["n_judge"]  # pairs, then its own
    assert all(s["reference"] == tasks.solve(known[s["problem"]]) for s in judged)
    assert report["config"]["judge_sees"] == "solution" and report["judge_agreement"] == 1.0


def test_unparsable_verdict_counts_as_disagreement():
    report = ev.evaluate(double(known_items(**SMALL), judge="maybe"), **SMALL)
    assert report["judge_agreement"] == 0.0 and report["judge"]["unparsed"]["mean"] == 1.0


def test_self_correction_counts_on_a_script():
    known = known_items(**SMALL)
    judged = ev.held_out(n=SMALL["n"], seed=SMALL["seed"])[:SMALL["n_judge"]]
    good = {t.prompt for t in judged[::4]}  # the solver is right on every fourth judged item
    right = sum(t.prompt in good for t in judged)

    def solver(task):
        return task.prompt in good

    calls = []
    fixed = ev.evaluate(double(known, solve=solver, judge="incorrect", revise="right",
                               calls=calls), **SMALL)
    s = fixed["self_correction"]
    assert (s["count_wrong_to_right"], s["count_right_to_wrong"]) == (20 - right, 0)
    assert s["wrong_to_right"] == (20 - right) / 20 and s["right_to_wrong"] == 0.0
    assert s["wrong_to_right_given_wrong"] == 1.0
    assert s["before"]["mean"] == right / 20 and s["after"]["mean"] == 1.0
    assert s["net"] == pytest.approx(s["after"]["mean"] - s["before"]["mean"])
    assert s["net_change"]["mean"] == pytest.approx(s["net"]) and s["net_change"]["n"] == 20
    assert calls.count("revise") == 20
    assert s["wrong_to_right_faithful"] == s["wrong_to_right"]
    copied = ev.evaluate(double(known, solve=solver, judge="incorrect", revise="copied"),
                         **SMALL)["self_correction"]
    assert copied["wrong_to_right"] == (20 - right) / 20 and copied["wrong_to_right_faithful"] == 0

    broken = ev.evaluate(double(known, solve=solver, judge="incorrect", revise="wrong"), **SMALL)
    s = broken["self_correction"]
    assert (s["count_wrong_to_right"], s["count_right_to_wrong"]) == (0, right)
    assert s["right_to_wrong"] == right / 20 and s["right_to_wrong_given_right"] == 1.0

    calls = []
    trusting = ev.evaluate(double(known, solve=solver, judge="correct", revise="wrong",
                                  calls=calls), **SMALL)
    assert "revise" not in calls and trusting["self_correction"]["revised"] == 0.0
    assert trusting["self_correction"]["verdict_agreement"]["mean"] == right / 20


def test_contract_keys_and_ranges_on_a_mixed_double():
    known = known_items(**SMALL)
    report = ev.evaluate(double(known, solve=lambda t: t.level <= 2, judge="correct"), **SMALL)
    for key in ("accuracy", "judge_agreement", "self_correction", "pose_validity", "n"):
        assert key in report
    assert report["accuracy_by_level"] == {"1": 1.0, "2": 1.0, "3": 0.0, "4": 0.0, "5": 0.0}
    assert report["accuracy"]["overall"] == 0.4
    assert report["accuracy_se"]["overall"] == pytest.approx(math.sqrt(0.4 * 0.6 / 40), abs=1e-6)
    assert "greedy accuracy" in ev.format_report(report)


def test_skipping_judge_and_pose_gives_nulls():
    calls = []
    report = ev.evaluate(double(known_items(**SMALL), calls=calls),
                         **{**SMALL, "n_judge": 0, "n_pose": 0})
    assert report["judge_agreement"] is None and report["pose_validity"] is None
    assert report["self_correction"] == {"wrong_to_right": None, "right_to_wrong": None}
    assert report["skipped"] == ["judge", "self_correction", "pose"]
    assert set(calls) == {"solve"}
    text = ev.format_report(report)
    assert "greedy accuracy" in text and "judge agreement" not in text


def test_comparison_table_with_and_without_the_judge():
    full = ev.evaluate(double(known_items(**SMALL)), **SMALL)
    bare = ev.evaluate(double(known_items(**SMALL)), **{**SMALL, "n_judge": 0, "n_pose": 0})
    rows = {line.split(" | ")[0].lstrip("| "): line.rstrip(" |").split(" | ")[1:]
            for line in ev.comparison_table({"full": full, "bare": bare}).split("\n")[2:]}
    assert rows["accuracy, all levels"] == ["1.000±0.000", "1.000±0.000"]
    assert rows["accuracy, induction"] == ["1.000±0.000", "1.000±0.000"]
    assert rows["judge agreement"] == ["1.000±0.000", "-"]
    assert rows["judge rejects a wrong solution"] == ["1.000±0.000", "-"]
    assert rows["judge agrees on its own solution"] == ["1.000±0.000", "-"]
    assert rows["self-correction net"] == ["0.000±0.000", "-"]
    assert rows["self-correction wrong->right"] == ["0.000", "-"]
    assert rows["pose validity"] == ["1.000±0.000", "-"]
    assert rows["held-out items (n)"] == ["40", "40"]


def test_a_difference_on_the_same_items_is_measured_item_by_item():
    """The paired row: the mean and standard error of the per-item differences from the first
    column on levels 3 and up (brute force here), smaller than the two separate errors combined
    when the models agree on most items; none for the first column or for other items."""
    known = {**known_items(n=40, seed=3), **known_items(n=40, seed=4)}

    def one(task):  # right on about two items in three
        return int(ev.item_id(task), 16) % 3 != 0

    def two(task):  # ... and on every item of level 4
        return one(task) or task.level == 4
    base, better, elsewhere = (ev.evaluate(double(known, solve=f), **{**SMALL, "n_judge": 0,
                                                                        "n_pose": 0, "seed": s})
                               for f, s in ((one, 3), (two, 3), (two, 4)))
    diffs = [b[2] - a[2] for a, b in zip(base["greedy_by_item"], better["greedy_by_item"])
             if a[1] >= 3]
    mean = sum(diffs) / len(diffs)
    se = math.sqrt(sum((d - mean) ** 2 for d in diffs) / len(diffs)) / math.sqrt(len(diffs))
    got = ev.paired_difference(better, base)
    assert got["n"] == 24 and got["mean"] == pytest.approx(mean, abs=1e-6)
    assert got["se"] == pytest.approx(se, abs=1e-6)
    assert 0 < got["mean"] and got["se"] < math.hypot(*(ev.pooled(
        [r["greedy"]["level"][lv] for lv in ("3", "4", "5")])["se"] for r in (base, better)))
    assert ev.paired_difference(elsewhere, base) is None  # another seed: other items
    row = [line for line in ev.comparison_table({"w": base, "a": better, "b": elsewhere})
           .split("\n") if line.startswith("| ... minus w's")][0]
    assert row == f"| ... minus w's, item by item | - | {ev._cell(got)} | - |"


def test_jsonl_data_set(tmp_path):
    path = tmp_path / "set.jsonl"
    path.write_text('{"question": "What is 2+2?", "answer": "4"}\n'
                    '{"question": "Capital of France?", "answer": "Paris"}\n')

    def gen(prompts, temperature):
        return ["Answer: 4" if "2+2" in p else "Answer: paris." if "France" in p else "Answer: ?"
                for p in prompts]

    report = ev.evaluate(gen, data=str(path), n_judge=0, n_pose=0, samples=1)
    assert report["n"] == 2 and report["accuracy"] == {"overall": 1.0, "jsonl": 1.0}
    assert report["accuracy_by_level"] == {"0": 1.0}


def test_bad_arguments_raise():
    gen = double({})
    with pytest.raises(ValueError, match="families"):
        ev.evaluate(gen, families=("nope",))
    with pytest.raises(ValueError):
        ev.evaluate(gen, n=0)


# ----------------------------------------------------------------------------- items and statistics

def test_held_out_items_are_fixed_spread_and_held_out():
    a, b = ev.held_out(n=60, seed=7), ev.held_out(n=60, seed=7)
    assert a == b
    assert [t.prompt for t in ev.held_out(n=60, seed=8)] != [t.prompt for t in a]
    assert all(tasks.split_of(t) == "eval" for t in a)
    cells = {}
    for t in a:
        cells[(t.family, t.level)] = cells.get((t.family, t.level), 0) + 1
    assert len(cells) == 20 and set(cells.values()) == {3}
    assert len({(t.family, t.level) for t in a[:20]}) == 20  # any prefix is spread too
    # a cell's items do not depend on which other cells are asked for
    only = ev.held_out(families=("induction",), levels=(2,), n=3, seed=7)
    assert only == [t for t in a if (t.family, t.level) == ("induction", 2)]


def test_pass_at_matches_enumeration():
    for k in (1, 2, 4, 5):
        for c in range(k + 1):
            draws = [1] * c + [0] * (k - c)
            for j in range(1, k + 1):
                subsets = list(itertools.combinations(draws, j))
                want = sum(any(s) for s in subsets) / len(subsets)
                assert ev.pass_at(k, c, j) == pytest.approx(want)


def test_mean_se_closed_form():
    s = ev.mean_se([1.0] * 30 + [0.0] * 70)
    assert s["mean"] == 0.3 and s["n"] == 100
    assert s["se"] == pytest.approx(math.sqrt(0.3 * 0.7 / 100), abs=1e-6)
    assert ev.mean_se([]) == {"mean": None, "se": None, "n": 0}


# ----------------------------------------------------------------------------- the real thing

def test_tiny_model_end_to_end_through_the_cli(tmp_path):
    model.build_tiny(str(tmp_path / "m"), hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=1,
                     intermediate_size=64)
    out = tmp_path / "sub" / "e.json"
    run = subprocess.run([sys.executable, os.path.join(ROOT, "eval.py"),
                          f"--model={tmp_path / 'm'}",
                          f"--out={out}", "--n=8", "--samples=2", "--n_judge=4", "--n_pose=4",
                          "--max_new_tokens=12", "--families", "deduction,corpus"],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    report = json.loads(out.read_text())
    assert report["n"] == 8 and set(report["accuracy"]) == {"overall", "deduction", "corpus"}
    acc = report["accuracy"]  # 4 items a family: quarters, and the overall is their mean
    assert all(abs(4 * acc[f] - round(4 * acc[f])) < 1e-9 for f in ("deduction", "corpus"))
    assert acc["overall"] == pytest.approx((acc["deduction"] + acc["corpus"]) / 2)
    assert report["judge"]["agreement"]["overall"]["n"] == 8
    assert report["config"]["model"] == str(tmp_path / "m")
    assert "greedy accuracy" in run.stdout and "judge agreement" in run.stdout
    assert not [f for f in os.listdir(out.parent) if f != "e.json"]  # no temp file left


@pytest.mark.parametrize("argv, words", [
    (["--model=/no/such/dir", "--out=x.json"], "not a model directory"),
    (["--model=/no/such/dir", "--families", "deduction,nope"], "unknown family"),
    (["--n=many"], "--n"),
    (["--model=/x", "--wat=1"], "unknown argument"),
    ([], "--model"),
    (["--plot=/no/such/run"], "No such file"),
])
def test_cli_errors_are_one_line(argv, words, capsys):
    assert ev.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and words in err and "Traceback" not in err


# ----------------------------------------------------------------------------- curves

def write_run(folder, stages=(("warmup", 3), ("alive", 4))):
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "metrics.jsonl"), "w") as fh:
        for stage, steps in stages:
            for step in range(steps):
                fh.write(json.dumps({"stage": stage, "step": step, "loss": 1.0 / (step + 1),
                                     "reward/solve": step / 10, "acc/solve": 0.1 * step,
                                     "note": "text", "flag": True}) + "\n")
        fh.write('{"stage": "alive", "step": 9, "lo')  # a run still being written


def test_curve_keys_and_steps(tmp_path):
    write_run(str(tmp_path))
    rows = curves.read_metrics(str(tmp_path))
    assert len(rows) == 7
    assert curves.curve_keys([rows]) == ["reward/solve", "acc/solve", "loss"]
    xs = curves.steps_of(rows)
    assert xs == [0, 1, 2, 3, 4, 5, 6]  # the second stage starts after the first


def test_group_table_sums_each_runs_counts(tmp_path):
    for run, steps in (("a", [(4, 2, 1), (4, 1, 0), (4, 0, 0)]), ("b", [(2, 2, 0)])):
        os.makedirs(tmp_path / run)
        with open(tmp_path / run / "metrics.jsonl", "w") as fh:
            for groups, wrong, rescued in steps:  # corpus absent: a step before it was logged
                judged = {"judged_wrong/induction": 2 * wrong, "accepted_wrong/induction": rescued}
                fh.write(json.dumps({"groups/induction": groups, "all_wrong/induction": wrong,
                                     "rescued/induction": rescued,
                                     **(judged if run == "a" else {})}) + "\n")
    table = curves.group_table([str(tmp_path / "a"), str(tmp_path / "b")], ["alive", "scalar"],
                               ["induction", "corpus"])
    assert table.split("\n")[2:] == [
        "| alive | 3 / 12 (1) | 0 / 0 (0) |",
        "| alive: wrong solutions its judge accepted / judged | 1 / 6 | 0 / 0 |",
        "| scalar | 2 / 2 (0) | 0 / 0 (0) |"]


def test_plot_without_matplotlib_says_so(tmp_path, monkeypatch, capsys):
    write_run(str(tmp_path))
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # makes `import matplotlib` fail
    assert curves.plot_curves([str(tmp_path)], str(tmp_path / "curves.png")) is None
    assert "matplotlib is not installed" in capsys.readouterr().err
    assert ev.main([f"--plot={tmp_path}"]) == 1
    assert not (tmp_path / "curves.png").exists()


def test_plot_writes_a_png(tmp_path):
    pytest.importorskip("matplotlib")
    write_run(str(tmp_path / "a"))
    write_run(str(tmp_path / "b"), stages=(("sft", 5),))
    out = curves.plot_curves([str(tmp_path / "a"), str(tmp_path / "b")],
                             str(tmp_path / "cmp.png"), labels=["alive", "sft"])
    assert out and open(out, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    assert ev.main([f"--plot={tmp_path / 'a'}"]) == 0 and (tmp_path / "a" / "curves.png").exists()


def test_pooled_levels_and_comparison_table():
    cells = [{"mean": 0.5, "se": 0.0, "n": 10}, {"mean": 0.0, "se": 0.0, "n": 30}, None]
    pooled = ev.pooled(cells)
    assert pooled["n"] == 40 and abs(pooled["mean"] - 0.125) < 1e-12
    assert abs(pooled["se"] - math.sqrt(0.125 * 0.875 / 40)) < 1e-12
    assert ev.pooled([None]) is None
