"""Tests for tasks.py: every family checked by brute force written here independently of it,
the critic against reference and corrupted solutions, answer checking, the held-out split,
JSONL errors, determinism, sizes and posing validation. Run: python -m pytest -q tests/test_tasks.py
"""
import itertools
import json
import random
import re

import pytest

import tasks


def draws(family, level, n, seed=0):
    rng = random.Random(f"{family}-{level}-{seed}")
    return [tasks.sample(family, level, rng) for _ in range(n)]


# --- independent brute force ----------------------------------------------------------

def truth(text, env):
    """Evaluate a formula (~ & | ^ -> <->, parentheses) by a fresh recursive descent."""
    toks = re.findall(r"<->|->|[~&|^()a-z]", text)
    pos = [0]

    def atom():
        t = toks[pos[0]]
        pos[0] += 1
        if t == "~":
            return not atom()
        if t == "(":
            v = expr()
            pos[0] += 1
            return v
        return bool(env[t])

    def expr():
        a = atom()
        if pos[0] < len(toks) and toks[pos[0]] != ")":
            op = toks[pos[0]]
            pos[0] += 1
            b = atom()
            return {"&": a and b, "|": a or b, "^": a != b, "->": b or not a, "<->": a == b}[op]
        return a

    value = expr()
    assert pos[0] == len(toks), text
    return value


@pytest.mark.parametrize("level", tasks.LEVELS)
def test_deduction_has_exactly_one_model(level):
    for t in draws("deduction", level, 60):
        head, *formulas = t.prompt.split("\n")
        names = re.search(r"Find ([a-z,]+) ", head).group(1).split(",")
        models = [env for bits in itertools.product((0, 1), repeat=len(names))
                  for env in [dict(zip(names, bits))] if all(truth(f, env) for f in formulas)]
        assert len(models) == 1, t.prompt
        assert tasks.check(t, ",".join(f"{k}={v}" for k, v in models[0].items()))


def next_terms(phrase, terms, box=range(-12, 13)):
    """All next terms of the stated rule family that fit the terms, over a parameter box."""
    out = set()
    if phrase == "add the two terms before, plus a number":
        for c in box:
            seq = list(terms[:2])
            while len(seq) <= len(terms):
                seq.append(seq[-1] + seq[-2] + c)
            if seq[:len(terms)] == list(terms):
                out.add(seq[-1])
        return out
    if phrase == "multiply by a number, then add a number":
        for m, c in itertools.product(range(-5, 6), range(-30, 31)):
            seq = [terms[0]]
            while len(seq) <= len(terms):
                seq.append(seq[-1] * m + c)
            if seq[:len(terms)] == list(terms):
                out.add(seq[-1])
        return out
    if phrase == "the step grows by the same number each time":
        for d, e in itertools.product(box, box):
            seq = [terms[0]]
            while len(seq) <= len(terms):
                seq.append(seq[-1] + d + e * (len(seq) - 1))
            if seq[:len(terms)] == list(terms):
                out.add(seq[-1])
        return out
    period = {"add the same number each time": 1, "add two numbers in turn": 2,
              "add three numbers in turn": 3}[phrase]
    for steps in itertools.product(box, repeat=period):
        seq = [terms[0]]
        while len(seq) <= len(terms):
            seq.append(seq[-1] + steps[(len(seq) - 1) % period])
        if seq[:len(terms)] == list(terms):
            out.add(seq[-1])
    return out


@pytest.mark.parametrize("level", tasks.LEVELS)
def test_induction_next_term_is_identifiable(level):
    for t in draws("induction", level, 25):
        phrase = re.search(r"Rule: (.*)\.", t.prompt).group(1)
        terms = [int(x) for x in re.findall(r"-?\d+", t.prompt.split("\n")[1])]
        assert next_terms(phrase, terms) == {int(t.answer)}, t.prompt


def parse_abduction(prompt):
    lines = dict(line.split(": ", 1) for line in prompt.split("\n") if ": " in line)
    rules = [r.split("->") for r in lines["Rules"].split(", ")]
    return rules, lines["Causes"].split(", "), lines["Seen"].split(", ")


def reach(rules, start):
    seen, grew = {start}, True
    while grew:
        new = {b for a, b in rules if a in seen} - seen
        seen |= new
        grew = bool(new)
    return seen


@pytest.mark.parametrize("level", tasks.LEVELS)
def test_abduction_has_exactly_one_explaining_cause(level):
    for t in draws("abduction", level, 60):
        rules, causes, obs = parse_abduction(t.prompt)
        explaining = [c for c in causes if set(obs) <= reach(rules, c)]
        assert explaining == [t.answer], t.prompt


@pytest.mark.parametrize("level", [2, 3, 4, 5])
def test_abduction_shortcuts_stay_at_or_under_60_percent(level):
    scores = {"most direct links to what is seen": 0, "most rules out of it": 0,
              "most nodes reached": 0}
    ts = draws("abduction", level, 300, seed=7)
    for t in ts:
        rules, causes, obs = parse_abduction(t.prompt)
        pick = {
            "most direct links to what is seen":
                max(causes, key=lambda c: sum([c, o] in rules for o in obs)),
            "most rules out of it": max(causes, key=lambda c: sum(a == c for a, _ in rules)),
            "most nodes reached": max(causes, key=lambda c: len(reach(rules, c))),
        }
        for name, c in pick.items():
            scores[name] += c == t.answer
    for name, hits in scores.items():
        assert hits / len(ts) <= 0.6, (name, hits / len(ts))


# --- critic ----------------------------------------------------------------------------

@pytest.mark.parametrize("family", tasks.FAMILIES)
def test_critic_accepts_references_and_names_the_corrupted_step(family):
    rng = random.Random(3)
    for level in tasks.LEVELS:
        for t in draws(family, level, 25, seed=1):
            ok = tasks.critique(t, tasks.solve(t))
            assert ok.split("\n")[-1] == "Verdict: correct", (t, ok)
            for _ in range(3):
                text, k = tasks.corrupt(t, rng)
                assert text != tasks.solve(t)
                assert len(text.split("\n")) == len(tasks.solve(t).split("\n"))
                crit = tasks.critique(t, text)
                assert crit.split("\n")[-1] == "Verdict: incorrect", (text, crit)
                assert re.search(r"Step (\d+)", crit).group(1) == str(k), (text, k, crit)


def test_critic_reads_any_text_without_raising():
    t = draws("induction", 1, 1)[0]
    n = len(t.steps) + 1
    for text in ["", None, "\n\n", "blah", "Answer:", "???\nAnswer", "Answer: 3\nAnswer: 4", 12]:
        crit = tasks.critique(t, text)
        assert crit.split("\n")[-1] == "Verdict: incorrect"
    assert "No Answer line" in tasks.critique(t, "some words only")
    assert tasks.critique(t, f"Answer: {t.answer}").endswith("Verdict: correct")
    wrong = tasks.critique(t, tasks.solve(t).replace(f"Answer: {t.answer}", "Answer: 999"))
    assert wrong.startswith(f"Step {n} ") and "Verdict: incorrect" in wrong
    extra = tasks.critique(t, tasks.solve(t) + "\nmore words")
    assert extra.startswith(f"Step {n + 1} ")


def test_critiques_are_short_at_level_1():
    rng = random.Random(5)
    for family in tasks.FAMILIES:
        for t in draws(family, 1, 40):
            assert len(tasks.critique(t, tasks.corrupt(t, rng)[0])) <= 110


def test_deduction_critic_accepts_a_true_step_in_another_order():
    for t in draws("deduction", 3, 30):
        steps = list(t.steps)
        independent = [s for s in steps if " with " not in s]
        if len(independent) >= 2:
            a, b = steps.index(independent[0]), steps.index(independent[1])
            steps[a], steps[b] = steps[b], steps[a]
            text = "\n".join(steps + [f"Answer: {t.answer}"])
            assert tasks.critique(t, text).endswith("Verdict: correct")


# --- answers, split, loading, determinism, sizes ------------------------------------------

def test_check_accepts_surface_forms_and_rejects_other_answers():
    for family in tasks.FAMILIES:
        for t in draws(family, 2, 30):
            a = t.answer
            for variant in (a, f"  {a} ", a.upper(), a + ".",
                            a.replace(",", ", ").replace("=", " = ")):
                assert tasks.check(t, variant), (family, variant)
            assert not tasks.check(t, "")
            assert not tasks.check(t, a + " or maybe not")
            if family == "deduction":
                flipped = a[:-1] + str(1 - int(a[-1]))
                assert not tasks.check(t, flipped)
                assert tasks.check(t, ",".join(reversed(a.split(","))))  # any order
            if family == "induction":
                assert not tasks.check(t, str(int(a) + 1))
    t = draws("abduction", 3, 1)[0]
    assert not tasks.check(t, next(c for c in t.data[1] if c != t.answer))


def test_train_and_eval_never_overlap():
    rng = random.Random(11)
    train, held = set(), set()
    for i in range(10_000):
        family, level = tasks.FAMILIES[i % 4], 1 + (i // 4) % 3
        split = "eval" if i % 5 == 0 else "train"
        t = tasks.sample(family, level, rng, split=split)
        assert tasks.split_of(t) == split
        (held if split == "eval" else train).add(t.prompt)
    assert len(held) > 500 and len(train) > 2_000
    assert not train & held


def test_jsonl_loading_and_errors_name_file_and_line(tmp_path):
    good = tmp_path / "good.jsonl"
    good.write_text(json.dumps({"question": "2+2?", "answer": " Four "}) + "\n\n"
                    + json.dumps({"question": "Capital of France?", "answer": "Paris"}) + "\n")
    evals = tasks.load_eval_set(good)
    assert [t.family for t in evals] == ["jsonl", "jsonl"] and evals[0].answer == "Four"
    assert tasks.check(evals[1], " paris. ") and not tasks.check(evals[1], "london")
    docs = tmp_path / "docs.jsonl"
    docs.write_text(json.dumps({"text": "ana has 3 pens."}) + "\n")
    assert tasks.load_corpus(docs) == ["ana has 3 pens."]
    cases = {
        "empty.jsonl": (b"", 1),
        "bad.jsonl": (b'{"text": "ok"}\n{"text": oops}\n', 2),
        "missing.jsonl": (b'{"text": "ok"}\n{"txt": "x"}\n', 2),
        "bytes.jsonl": (b'{"text": "ok"}\n{"text": "ok"}\n{"text": "\xff"}\n', 3),
    }
    for name, (content, line) in cases.items():
        path = tmp_path / name
        path.write_bytes(content)
        with pytest.raises(ValueError, match=rf"{re.escape(str(path))}:{line}:"):
            tasks.load_corpus(path)
    with pytest.raises(ValueError, match=r"missing\.jsonl:1: missing field .question."):
        tasks.load_eval_set(tmp_path / "missing.jsonl")


def test_same_seed_same_tasks():
    for family in tasks.FAMILIES:
        for level in tasks.LEVELS:
            a = [tasks.sample(family, level, random.Random(42), "eval") for _ in range(2)]
            assert a[0] == a[1]
            r1, r2 = random.Random(9), random.Random(9)
            assert tasks.corrupt(a[0], r1) == tasks.corrupt(a[0], r2)
    assert tasks.document(random.Random(1), 3) == tasks.document(random.Random(1), 3)


def test_sizes_fit_a_tiny_model_at_level_1_and_grow():
    for family in tasks.FAMILIES:
        low, high = draws(family, 1, 200), draws(family, 3, 100)
        assert max(len(t.prompt) for t in low) <= 200, family
        assert max(len(tasks.solve(t)) for t in low) <= 120, family
        size = [sum(len(t.prompt) + len(tasks.solve(t)) for t in ts) / len(ts)
                for ts in (low, high)]
        assert size[1] > size[0], family


# --- posing ----------------------------------------------------------------------------

@pytest.mark.parametrize("family", tasks.FAMILIES)
def test_validate_round_trips(family):
    for level in tasks.LEVELS:
        for t in draws(family, level, 20, seed=2):
            doc = t.data[0] if family == "corpus" else None
            assert tasks.validate(family, tasks.pose_text(t), level, document=doc) == t


def test_corpus_posing_needs_an_inferable_span():
    """A span that occurs once but that its paragraph does not determine (a name, a premise's
    relation, a filler word) is no task; numbers, conclusions and sampled spans are."""
    doc = "ana has 3 pens. ana gets 4 more. now ana has 7 pens."
    assert "does not determine" in tasks.validate("corpus", "now", 1, document=doc)
    rng, rejected, accepted = random.Random(4), 0, 0
    for level in tasks.LEVELS:
        for _ in range(20):
            doc = tasks.document(rng, level)
            derived = set(re.findall(r"so \w+ is the ([\w-]+) of", doc)) | {"true", "false"}
            for word in set(re.findall(r"[a-z][a-z-]*|\d+", doc)):
                if doc.count(word) != 1 or re.search(rf"[\w-]{word}|{word}[\w-]", doc):
                    continue  # not a whole word that occurs exactly once
                got = tasks.validate("corpus", word, level, document=doc)
                if word.isdigit() or word in derived:
                    assert isinstance(got, tasks.Task) and got.steps, (doc, word, got)
                    accepted += 1
                else:
                    assert isinstance(got, str) and "does not determine" in got, (doc, word)
                    rejected += 1
    assert rejected > 100 and accepted > 100
    for level in tasks.LEVELS:
        for t in draws("corpus", level, 30, seed=5):
            got = tasks.validate("corpus", tasks.pose_text(t), level, document=t.data[0])
            assert got == t and got.steps, (t, got)


def test_validate_rejects_invalid_posings():
    head = "Find a,b,c (1=true, 0=false) so that all hold:\n"
    assert "2 satisfying" in tasks.validate("deduction", head + "a|b\n~c\na->b", 1)
    assert "0 satisfying" in tasks.validate("deduction", head + "a\n~a\nb&c", 1)
    assert "level 1" in tasks.validate("deduction", head + "(a|b)&c\n~a\nb->c", 1)
    ok = tasks.validate("deduction", head + "~a\na|b\nb->c", 1)
    assert ok.answer == "a=0,b=1,c=1"
    assert isinstance(tasks.validate("deduction", head + "a&&b", 1), str)
    assert "fits level 1" in tasks.validate("deduction", head + "~a\na|b\nb->c", 2)
    ind = "Rule: add two numbers in turn.\nSequence: {}, ?"
    assert tasks.validate("induction", ind.format("1, 3, 4, 6, 7"), 2).answer == "9"
    flat = "Rule: multiply by a number, then add a number.\nSequence: 2, 2, 2, 2, ?"
    assert "must change" in tasks.validate("induction", flat, 4)
    assert "no rule" in tasks.validate("induction", ind.format("1, 3, 4, 6, 9"), 2)
    assert "not a level 1" in tasks.validate("induction", ind.format("1, 3, 4, 6, 7"), 1)
    assert "exactly 5" in tasks.validate("induction", ind.format("1, 3, 4"), 2)
    abd = ("Rules: a->x, a->y, b->x, b->y, c->x\nCauses: a, b, c\nSeen: x, y\n"
           "Which cause explains all?")
    assert "2 causes" in tasks.validate("abduction", abd, 2)
    assert tasks.validate("abduction", abd.replace("b->y, ", ""), 2).answer == "a"
    assert "level 1" in tasks.validate("abduction", abd.replace("b->y, ", ""), 1)
    doc = "ana has 3 pens. ana gets 4 more. now ana has 7 pens."
    t = tasks.validate("corpus", "7", 1, document=doc)
    assert t.answer == "7" and t.prompt.endswith("now ana has [?] pens.") and t.steps == ("3+4=7",)
    assert "does not occur" in tasks.validate("corpus", "9", 1, document=doc)
    assert "2 times" in tasks.validate("corpus", "ana has", 1, document=doc)
    assert "cuts a word" in tasks.validate("corpus", "mor", 1, document=doc)
    assert isinstance(tasks.validate("corpus", " ", 1, document=doc), str)
    assert isinstance(tasks.validate("corpus", "7", 1), str)
    for family in tasks.FAMILIES:
        for junk in ["", "???", "Answer: 3", "\x00\xff", None]:
            assert isinstance(tasks.validate(family, junk, 1, document=doc), str)
