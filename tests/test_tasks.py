"""Tests for tasks.py: every family solved by brute force written here independently of it, the
level ladder, the critic against reference and slipped solutions, answer checking, the held-out
split (canonical, leak-free), structural shortcuts, the size of every cell, posing validation
and determinism. Run: python -m pytest -q tests/test_tasks.py
"""
import itertools
import random
import re
from collections import Counter

import pytest

import tasks


def draws(family, level, n, seed=0, split="train"):
    rng = random.Random(f"{family}-{level}-{seed}")
    return [tasks.sample(family, level, rng, split) for _ in range(n)]


# ----------------------------------------------------------------------------- brute force

def holds(formula, env):
    """Truth of one formula of the deduction syntax: a literal, or literal OP literal."""
    m = re.fullmatch(r"(~?)([a-z])(?:(<->|->|\||\^)(~?)([a-z]))?", formula)
    a = env[m.group(2)] != (m.group(1) == "~")
    if not m.group(3):
        return a
    b = env[m.group(5)] != (m.group(4) == "~")
    return {"->": (not a) or b, "|": a or b, "^": a != b, "<->": a == b}[m.group(3)]


@pytest.mark.parametrize("level", tasks.LEVELS)
def test_deduction_has_exactly_one_model(level):
    for t in draws("deduction", level, 40):
        head, *formulas = t.prompt.split("\n")
        names = head[len("Find "):-1].split(",")
        models = [env for bits in itertools.product((0, 1), repeat=len(names))
                  for env in [dict(zip(names, bits))] if all(holds(f, env) for f in formulas)]
        assert len(models) == 1, t.prompt
        assert tasks.check(t, ",".join(f"{k}={int(v)}" for k, v in models[0].items()))
        assert len(formulas) == level + 2  # one fact, L + 1 rules


@pytest.mark.parametrize("level", tasks.LEVELS)
def test_induction_next_terms_are_identifiable(level):
    """Every rule of period 1 or 2 with steps of size 1..9 that reproduces the shown terms
    predicts the same term L places on."""
    sizes = [d for d in range(-9, 10) if d]  # wider than the generator's 1..STEP
    for t in draws("induction", level, 40):
        terms = [int(x) for x in t.prompt.split("\n")[0][len("Sequence: "):].split(", ")]
        predictions = set()
        for period in (1, 2):
            for steps in itertools.product(sizes, repeat=period):
                seq = [terms[0]]
                while len(seq) < len(terms) + level:
                    seq.append(seq[-1] + steps[(len(seq) - 1) % period])
                if seq[:len(terms)] == terms:
                    predictions.add(seq[-1])
        assert predictions == {int(t.answer)}, t.prompt


def parse_abduction(prompt):
    lines = dict(line.split(": ", 1) for line in prompt.split("\n") if ": " in line)
    return ([r.split("->") for r in lines["Rules"].split(", ")], lines["Causes"].split(", "),
            lines["Seen"])


def reach(rules, start):
    seen, grew = {start}, True
    while grew:
        new = {b for a, b in rules if a in seen} - seen
        seen |= new
        grew = bool(new)
    return seen


@pytest.mark.parametrize("level", tasks.LEVELS)
def test_abduction_has_exactly_one_explaining_cause(level):
    for t in draws("abduction", level, 40):
        rules, causes, seen = parse_abduction(t.prompt)
        assert [c for c in causes if seen in reach(rules, c)] == [t.answer], t.prompt


@pytest.mark.parametrize("level", tasks.LEVELS)
def test_corpus_mask_is_determined_by_the_rest_of_the_story(level):
    """Of every value 0..LIMIT in place of [?], exactly one makes the story add up."""
    for t in draws("corpus", level, 40):
        story = t.prompt.split("\n", 1)[1]
        fits = []
        for guess in range(tasks.LIMIT + 1):
            text = story.replace(tasks.MASK, str(guess))
            start = int(re.search(r"has (\d+)", text).group(1))
            end = int(re.search(r"Now \w+ has (\d+)", text).group(1))
            moves = [int(n) * (-1 if verb in ("gives away", "loses", "eats", "sells") else 1)
                     for verb, n in re.findall(r"Then \w+ (gives away|\w+) (\d+)\.", text)]
            if start + sum(moves) == end and len(moves) == level:
                fits.append(guess)
        assert fits == [int(t.answer)], t.prompt


def test_abduction_steps_walk_back_one_link_each_from_the_seen_effect():
    """Reference and slipped solutions alike: step k is `child<-parent`, its child the parent of
    step k - 1 (the first the seen effect); the reference walks the rules backwards to the
    answer, a slip jumps to another chain and walks on from there."""
    rng = random.Random(4)
    for level in tasks.LEVELS:
        for t in draws("abduction", level, 20, seed=2):
            rules, _, seen = parse_abduction(t.prompt)
            parent_of = {b: a for a, b in rules}
            slipped, k = tasks.corrupt(t, rng)
            for text in (tasks.solve(t), slipped):
                *steps, answer = text.split("\n")
                links = [step.split("<-") for step in steps]
                assert len(links) == level and all(len(link) == 2 for link in links), text
                assert [c for c, _ in links] == [seen] + [p for _, p in links[:-1]], text
                miscopied = text == slipped and k == level + 1  # the slip is the Answer line
                assert (answer == f"Answer: {links[-1][1]}") != miscopied, text
            assert all(parent_of[c] == p for c, p in (s.split("<-") for s in t.steps))


# ----------------------------------------------------------------------------- the ladder

@pytest.mark.parametrize("family", ["induction", "deduction", "abduction"])
def test_each_level_is_the_one_below_with_one_more_step(family):
    """The same posing at level L + 1 has one step more than at level L (a posing valid at
    level 5 is valid at every level below)."""
    for t in draws(family, 5, 30):
        counts = [len(tasks.validate(family, tasks.pose_text(t), level).steps)
                  for level in tasks.LEVELS]
        assert counts == list(range(counts[0], counts[0] + 5)), (t.prompt, counts)


def test_corpus_level_is_the_number_of_events_and_of_steps():
    for level in tasks.LEVELS:
        for t in draws("corpus", level, 30):
            assert t.prompt.count("Then ") == level == len(t.steps)


def test_every_step_is_one_small_move_in_range():
    for family in ("induction", "corpus"):
        for level in tasks.LEVELS:
            for t in draws(family, level, 30):
                for k, step in enumerate(t.steps, 1):
                    a, op, d, c, left = re.fullmatch(r"(\d+)([-+])(\d+)=(\d+)(?: \((\d+) left\))?",
                                                     step).groups()
                    assert int(c) == (int(a) + int(d) if op == "+" else int(a) - int(d))
                    assert max(map(int, (a, d, c))) <= tasks.LIMIT
                    # induction counts down the steps left: one less each line, 0 on the last
                    assert left is None if family == "corpus" else int(left) == len(t.steps) - k


def test_induction_steps_repeat_the_move_two_lines_up():
    """Past the terms shown, a step adds what the step two lines up added: the same rule at
    every level, so level L+1 is level L with one more line of the same kind."""
    for level in tasks.LEVELS:
        for t in draws("induction", level, 30):
            shown = t.prompt.split("\n")[0].count(",") + 1
            moves = [int(d) if op == "+" else -int(d)
                     for op, d in (re.match(r"\d+([-+])(\d+)", s).groups() for s in t.steps)]
            assert len(moves) == shown - 1 + level
            assert all(moves[i] == moves[i - 2] for i in range(shown - 1, len(moves)))
            assert f"term {shown - 1 + level} places after the first" in t.prompt


# ----------------------------------------------------------------------------- the critic

@pytest.mark.parametrize("family", tasks.FAMILIES)
def test_critic_accepts_references_and_names_the_slipped_step(family):
    rng = random.Random(3)
    for level in tasks.LEVELS:
        for t in draws(family, level, 25, seed=1):
            ok = tasks.critique(t, tasks.solve(t))
            assert ok == f"Got {t.answer}, want {t.answer}.\nVerdict: correct"
            for _ in range(3):
                text, k = tasks.corrupt(t, rng)
                miscount = family == "induction" and \
                    text.split("\n")[0].split(" (")[-1] != t.steps[0].split(" (")[-1]  # count
                assert (len(text.split("\n")) == len(tasks.solve(t).split("\n"))) != miscount
                assert not tasks.check(t, tasks.answer_of(text))  # the slip reaches the answer
                crit = tasks.critique(t, text)
                assert crit.startswith(f"Got {tasks.answer_of(text)}, want {t.answer}.\n")
                assert crit.split("\n")[-1] == "Verdict: incorrect", (text, crit)
                assert re.search(r"Step (\d+)", crit).group(1) == str(k), (text, k, crit)


def test_one_induction_corruption_in_three_miscounts_from_step_1():
    """A miscount is the chain of a level one or two away: every step's move and sum right, the
    count wrong from step 1, so the solution stops early or late and its answer is another term;
    the critic names step 1 and writes it with the right count (the reviser goes on from it)."""
    rng, miscounts, n = random.Random(5), 0, 0
    for level in tasks.LEVELS:
        for t in draws("induction", level, 200, seed=3):
            text, k = tasks.corrupt(t, rng)
            n += 1
            if len(text.split("\n")) == len(tasks.solve(t).split("\n")):
                continue
            miscounts += 1
            *steps, answer = text.split("\n")
            sums, counts = zip(*(step[:-len(" left)")].split(" (") for step in steps))
            assert k == 1 == tasks.first_wrong_step(t, text) and answer != f"Answer: {t.answer}"
            assert 1 <= abs(len(steps) - len(t.steps)) <= 2
            assert answer == f"Answer: {sums[-1].split('=')[1]}", text
            assert counts == tuple(str(len(steps) - i) for i in range(1, len(steps) + 1))
            assert all(a == b.split(" (")[0] for a, b in zip(sums, t.steps)), text
            moves = [(int(x), int(op + d), int(y))
                     for x, op, d, y in (re.fullmatch(r"(\d+)([-+])(\d+)=(\d+)", a).groups()
                                         for a in sums)]  # past the reference's: the rule goes on
            assert all(x == y0 and d == d2 and y == x + d for (_, d2, _), (_, _, y0), (x, d, y)
                       in zip(moves, moves[1:], moves[2:])), text
            assert f"Step 1 is wrong: it should be {t.steps[0]}." in tasks.critique(t, text)
    assert 0.25 < miscounts / n < 0.38, miscounts / n  # a third (SE 0.015), less out of range


def test_critic_says_what_a_slipped_sum_should_be():
    t = tasks.validate("induction", "start 4 add 3 show 3", 2)
    assert tasks.solve(t) == "4+3=7 (3 left)\n7+3=10 (2 left)\n10+3=13 (1 left)\n" \
                             "13+3=16 (0 left)\nAnswer: 16"
    wrong = "4+3=7 (3 left)\n7+3=10 (2 left)\n10+3=14 (1 left)\n14+3=17 (0 left)\nAnswer: 17"
    assert tasks.critique(t, wrong) == ("Got 17, want 16.\nStep 3 is wrong: 10+3=13 (1 left), "
                                        "not 14.\nVerdict: incorrect")
    miscounted = wrong.replace("10+3=14 (1 left)", "10+3=13 (3 left)")  # the count, not the sum
    assert "Step 3 is wrong: it should be 10+3=13 (1 left)." in tasks.critique(t, miscounted)
    skipped = "4+3=7 (3 left)\n13+3=16 (0 left)\nAnswer: 16"  # right answer, a step missing
    assert tasks.critique(t, skipped).endswith("Verdict: correct")


def test_critic_reads_any_text_without_raising():
    t = draws("induction", 1, 1)[0]
    for text in ["", None, "\n\n", "blah", "Answer:", "???\nAnswer", "Answer: 3\nAnswer: 4", 12]:
        crit = tasks.critique(t, text)
        assert crit.split("\n")[-1] == "Verdict: incorrect" and "Step " in crit
    assert tasks.critique(t, "some words").startswith("Got nothing,")
    assert tasks.critique(t, f"Answer: {t.answer}").endswith("Verdict: correct")


def test_critiques_are_short():
    rng = random.Random(5)
    for family in tasks.FAMILIES:
        for t in draws(family, 1, 40):
            assert len(tasks.critique(t, tasks.corrupt(t, rng)[0])) <= 120


# ----------------------------------------------------------------------------- answers, split

def test_check_accepts_surface_forms_and_rejects_other_answers():
    for family in tasks.FAMILIES:
        for t in draws(family, 2, 30):
            a = t.answer
            for variant in (a, f"  {a} ", a.upper(), a + ".", a.replace(",", ", ")):
                assert tasks.check(t, variant), (family, variant)
            assert not tasks.check(t, "") and not tasks.check(t, a + " or maybe not")
            assert not tasks.check(t, tasks.corrupt(t, random.Random(1))[0].split(": ")[-1])


def test_first_wrong_step_is_where_a_solution_leaves_the_reference():
    """The teacher's pointer, whatever the answer: the first line unlike the reference's (up to
    spacing and case), where a solution that stopped short ends; None for the reference."""
    task = tasks.sample("induction", 2, random.Random(0))
    lines = tasks.solve(task).split("\n")
    assert tasks.first_wrong_step(task, " " + tasks.solve(task).upper()) is None
    for k in range(1, len(lines) + 1):
        assert tasks.first_wrong_step(task, "\n".join(lines[:k - 1] + ["1+1=3"] + lines[k:])) == k
    guessed = "\n".join(["1+1=3"] + lines[1:])  # the right answer under a wrong first step
    assert tasks.check(task, tasks.answer_of(guessed))
    assert tasks.first_wrong_step(task, guessed) == 1
    assert tasks.first_wrong_step(task, "\n".join(lines[:2])) == 3  # step 3 is missing
    longer = "\n".join(lines[:-1] + ["9+9=18"] + lines[-1:])  # a line too many before the Answer
    assert tasks.first_wrong_step(task, longer) == len(lines)
    unknown = tasks.Task("jsonl", 0, "2+2?", "4")  # no reference steps: only the Answer line
    assert tasks.first_wrong_step(unknown, "2+2=4\nAnswer: 4") == 1
    assert tasks.first_wrong_step(unknown, "Answer: 4") is None


@pytest.mark.parametrize("family", tasks.FAMILIES)
def test_faithful_needs_every_step_not_only_the_answer(family):
    for t in draws(family, 3, 30):
        reference = tasks.solve(t)
        assert tasks.faithful(t, reference)
        assert tasks.faithful(t, "\n" + reference.upper().replace("=", " = ") + "\n")
        # the answer copied from a critique's `want` under a wrong step: right, not faithful
        lines = reference.splitlines()
        copied = "\n".join([lines[0] + "1", *lines[1:]])
        assert tasks.check(t, tasks.answer_of(copied)) and not tasks.faithful(t, copied)
        assert not tasks.faithful(t, "\n".join(reference.splitlines()[1:]))  # a step left out
    loaded = tasks.Task("jsonl", 0, "2+2?", "4")  # no known steps: the answer decides
    assert tasks.faithful(loaded, "I think\nAnswer: 4") and not tasks.faithful(loaded, "Answer: 5")


def test_train_and_eval_never_share_a_problem_up_to_order():
    """The split hashes the canonical form: a held-out problem with its rules in another order
    is still held out, and no problem occurs in both splits."""
    canonical = {"train": set(), "eval": set()}
    for i in range(4000):
        family, level, split = tasks.FAMILIES[i % 4], 1 + (i // 4) % 5, ("train", "eval")[i % 2]
        t = tasks.sample(family, level, random.Random(i), split)
        assert tasks.split_of(t) == split
        canonical[split].add((family, level, t.canonical))
        if family in ("deduction", "abduction") and split == "eval":
            again = tasks.validate(family, tasks.pose_text(t), level)
            if isinstance(again, tasks.Task) and again.canonical == t.canonical:
                assert tasks.split_of(again) == "eval"
    assert not canonical["train"] & canonical["eval"]
    assert len(canonical["eval"]) > 1400


def test_no_eval_story_is_a_train_document():
    rng = random.Random(8)
    train_docs = {tasks.document(rng, level) for level in tasks.LEVELS for _ in range(1000)}
    for level in tasks.LEVELS:
        for t in draws("corpus", level, 200, split="eval"):
            assert t.canonical not in train_docs
            assert tasks.split_of(tasks.Task("corpus", level, "", "", canonical=t.canonical)) \
                == "eval"


def test_abduction_answer_is_found_by_no_structural_shortcut():
    """Counting links, reading positions or name order picks the explaining cause no more often
    than a blind guess among the causes."""
    ts = [t for level in tasks.LEVELS for t in draws("abduction", level, 400, seed=7)]
    chance = sum(1 / len(parse_abduction(t.prompt)[1]) for t in ts) / len(ts)
    hits = Counter()
    for t in ts:
        rules, causes, seen = parse_abduction(t.prompt)
        order = [a for a, _ in rules]
        picks = {
            "first listed": causes[0], "last listed": causes[-1],
            "most rules out": max(causes, key=lambda c: sum(a == c for a, _ in rules)),
            "most nodes reached": max(causes, key=lambda c: len(reach(rules, c))),
            "earliest in the rules": min(causes, key=order.index),
            "latest in the rules": max(causes, key=order.index),
            "nearest name to the seen one": min(causes, key=lambda c: abs(ord(c) - ord(seen))),
        }
        hits.update(name for name, c in picks.items() if c == t.answer)
    for name in hits:
        assert hits[name] / len(ts) <= chance + 0.04, (name, hits[name] / len(ts), chance)


def test_deduction_values_are_not_read_off_the_signs():
    """Apart from the fact (which states its value), a variable written with `~` somewhere is
    false about as often as not."""
    right = total = 0
    for t in [t for level in tasks.LEVELS for t in draws("deduction", level, 200, seed=3)]:
        values = dict(pair.split("=") for pair in t.answer.split(","))
        fact = t.steps[0][-3]
        for name, value in values.items():
            if name == fact:
                continue
            guess = "0" if f"~{name}" in t.prompt else "1"
            right += guess == value
            total += 1
    assert abs(right / total - 0.5) < 0.05, right / total


def test_the_induction_cells_hold_thousands_of_problems():
    """Counted exactly: every start and every one or two steps the generator allows. Small
    numbers make these cells smaller than the others' (thousands, not tens of thousands);
    held-out problems are still never trained on."""
    sizes = [d for d in range(-tasks.STEP, tasks.STEP + 1) if d]
    rules = [(d,) for d in sizes] + [p for p in itertools.product(sizes, sizes) if p[0] != p[1]]
    for level in tasks.LEVELS:
        valid = [t for start in range(tasks.LIMIT + 1) for diffs in rules
                 for shown in range(tasks.SHOWN[0], tasks.SHOWN[1] + 1)
                 for t in [tasks.validate("induction", tasks.pose_text(
                     tasks.Task("induction", level, "", "", data=(start, diffs, shown))), level)]
                 if isinstance(t, tasks.Task)]
        train = sum(tasks.split_of(t) == "train" for t in valid)
        assert train >= 1000, (level, train)


@pytest.mark.parametrize("family", ["deduction", "abduction", "corpus"])
def test_the_other_cells_hold_over_ten_thousand_train_problems(family):
    """Level 1, the smallest cell, 3,000 draws: a cell of 10,000 problems drawn uniformly would
    repeat about 3000^2 / 20000 = 450 of them; fewer repeats mean a larger cell."""
    seen = Counter(t.canonical for t in draws(family, 1, 3000, seed=4))
    assert 3000 - len(seen) < 450, (family, 3000 - len(seen))


# ----------------------------------------------------------------------------- posing

@pytest.mark.parametrize("family", tasks.FAMILIES)
def test_validate_round_trips_the_parameters(family):
    for level in tasks.LEVELS:
        for t in draws(family, level, 20, seed=2):
            doc = t.canonical if family == "corpus" else None
            again = tasks.validate(family, tasks.pose_text(t), level, document=doc)
            assert again.data == t.data and again.level == level and again.family == family
            if family in ("induction", "corpus"):
                assert again == t  # nothing left to chance


def test_validate_rejects_invalid_posings_with_a_reason():
    assert f"leaves 0..{tasks.LIMIT}" in tasks.validate("induction", "start 23 add 2 show 3", 2)
    assert "different steps" in tasks.validate("induction", "start 5 add 3 add 3 show 3", 2)
    assert "different steps" in tasks.validate("induction", "start 5 add 9 show 3", 1)
    assert "show 3 to 6 terms" in tasks.validate("induction", "start 5 add 1 show 7", 1)
    assert "write: start" in tasks.validate("induction", "begin 5 add 1 show 3", 1)
    assert "write: start" in tasks.validate("induction", "start 5 add 1", 1)  # show is needed
    assert tasks.validate("induction", "start 9  sub 2  show 3", 1).answer == "3"
    assert "forces nothing after a variable that is 0" in tasks.validate(
        "deduction", "start 0 rules ->", 1)
    assert tasks.validate("deduction", "start 0 rules ^", 1).answer.count("=") == 3
    assert "operators of" in tasks.validate("deduction", "start 1 rules & ^", 1)
    assert "2 to 4 causes" in tasks.validate("abduction", "causes 5", 1)
    doc = tasks.document(random.Random(0), 2)
    assert tasks.validate("corpus", "mask 4", 2, document=doc).answer == re.findall(r"\d+",
                                                                                  doc)[3]
    assert "from 1 to 4" in tasks.validate("corpus", "mask 5", 2, document=doc)
    assert "story of 3 events" in tasks.validate("corpus", "mask 1", 3, document=doc)
    assert "story of 2 events" in tasks.validate("corpus", "mask 1", 2)
    for family in tasks.FAMILIES:
        for junk in ["", "???", "Answer: 3", "\x00\xff", None, "start 1 rules"]:
            assert isinstance(tasks.validate(family, junk, 1, document=doc), str)


# ----------------------------------------------------------------------------- determinism

def test_same_seed_same_tasks():
    for family in tasks.FAMILIES:
        for level in tasks.LEVELS:
            a = [tasks.sample(family, level, random.Random(42), "eval") for _ in range(2)]
            assert a[0] == a[1]
            assert tasks.corrupt(a[0], random.Random(9)) == tasks.corrupt(a[0], random.Random(9))
    assert tasks.document(random.Random(1), 3) == tasks.document(random.Random(1), 3)


def test_sizes_fit_a_tiny_model_at_level_1_and_grow():
    for family in tasks.FAMILIES:
        low, high = draws(family, 1, 200), draws(family, 3, 100)
        assert max(len(t.prompt) for t in low) <= 200, family
        assert max(len(tasks.solve(t)) for t in low) <= 120, family
        size = [sum(len(t.prompt) + len(tasks.solve(t)) for t in ts) / len(ts)
                for ts in (low, high)]
        assert size[1] > size[0], family


def test_a_posing_of_a_held_out_problem_is_invalid_in_training():
    rng = random.Random(5)
    held = [tasks.sample("induction", 2, rng, "eval") for _ in range(20)]
    for t in held:
        text = tasks.pose_text(t)
        assert tasks.validate("induction", text, 2).prompt == t.prompt  # the same problem
        assert tasks.validate("induction", text, 2, split="train") == tasks.HELD_OUT
    train_task = tasks.sample("induction", 2, rng, "train")
    assert tasks.validate("induction", tasks.pose_text(train_task), 2, split="train").prompt == \
        train_task.prompt


def test_what_a_posing_leaves_open_comes_from_the_rng():
    """A line fixes only its parameters: with an rng the names, forms and order are drawn anew
    (self-play's `causes 3` is a new problem each time, not one of three it could memorise);
    without one they are seeded by the line, and the same rng state gives the same problem."""
    for family, line in (("abduction", "causes 3"), ("deduction", "start 1 rules -> <->")):
        rng = random.Random(0)
        drawn = [tasks.validate(family, line, 4, rng=rng) for _ in range(200)]
        assert all(tasks.pose_text(t) == line and t.level == 4 for t in drawn)
        assert len({t.prompt for t in drawn}) == 200
        assert tasks.validate(family, line, 4).prompt == tasks.validate(family, line, 4).prompt
        assert tasks.validate(family, line, 4, rng=random.Random(7)).prompt == \
            tasks.validate(family, line, 4, rng=random.Random(7)).prompt
    # a draw that falls in the held-out split is redrawn: the poser chose only the line
    refused = [(lv, line) for lv in tasks.LEVELS for line in ("causes 2", "causes 3", "causes 4")
               if tasks.validate("abduction", line, lv, split="train") == tasks.HELD_OUT]
    assert refused and all(tasks.split_of(tasks.validate(
        "abduction", line, lv, split="train", rng=random.Random(0))) == "train"
        for lv, line in refused)
    # induction's line fixes the whole problem: the rng changes nothing
    assert tasks.validate("induction", "start 4 add 3 show 3", 2, rng=random.Random(1)) == \
        tasks.validate("induction", "start 4 add 3 show 3", 2)
