"""Self-verifiable tasks: four families of chains, their reference solutions and the teacher.

A task is a chain of `level` steps of one kind, each checkable alone (level k+1 adds one step).
The environment computes every answer; a slip carries through to the answer, so the verdict
compares final answers and the critique names the first wrong step. Numbers stay in 0..LIMIT
(29); a step is `x+d=y` or `x-d=y`, d in 1..STEP (5) (numbers to 99 halved accuracy at L1-2).

Families (L = level):
  induction  3-6 terms of a sequence adding fixed steps (one, or two in turn); find the term L
             after the last (asked as places after the first). Steps: every move, then L more,
             each repeating the move two lines up and counting down the terms left (`4+3=7 (3
             left)`), so level L+1 reads like L (docs/findings.md, "Counting down composes").
  deduction  one fact and L + 1 rules (->, |, ^, <->, with negations), each forcing the next
             variable from the one before, listed in that order; find all (1 = true, 0 =
             false). Steps: the fact, then one per rule. Answer: `c=1,a=0,b=1` (in that order).
             Rules in chain order: step k reads line k (docs/findings.md, "Read by position").
  abduction  2-4 causes, each heading an equally long chain of L rules to an effect; one effect
             is seen: which cause explains it? Steps: the chain traced back, `v<-m` (rule `m->v`).
  corpus     a raw document (a story of L events changing a count) with one number masked as
             `[?]`, which the rest determines. Steps: L folds of the count.

Posing: a level-free parameter line, expanded at the level asked and checked by `validate`:
`start 4 add 3 sub 2 show 4`, `start 1 rules -> ^` (the fact, then the operators), `causes 3`,
`mask 2` (the 2nd number); the names, forms and order it leaves open: `validate`'s rng.

Formats (roles.py parses them): a solution is one step per line, then `Answer: <answer>`; a
critique is `Got <answer>, want <reference>.`, then if they differ `Step k is wrong: <fix>.`,
then `Verdict: correct|incorrect`. `split_of` hashes a canonical form (rules sorted; for corpus
the story), so a reordered eval problem never lands in train nor an eval story in a train
document. Pure standard library. Tests: python -m pytest -q tests/test_tasks.py
"""
import hashlib
import random
import re
from dataclasses import dataclass

FAMILIES = ("deduction", "induction", "abduction", "corpus")
LEVELS = (1, 2, 3, 4, 5)
MASK = "[?]"
EVAL_EVERY = 5  # one problem in EVAL_EVERY (by hash of its canonical form) is held out
HELD_OUT = "a problem of the eval split"  # validate's answer to a training posing of one
LIMIT = 29  # every number in a problem or a step lies in 0..LIMIT
STEP = 5  # every step adds or subtracts 1..STEP
LETTERS = "abcdefghijklmnopqrstuvwxyz"
SHOWN = (3, 6)  # induction shows 3..6 terms


@dataclass(frozen=True)
class Task:
    family: str
    level: int
    prompt: str        # text shown to the solver
    answer: str        # canonical answer
    steps: tuple = ()  # reference steps, without the Answer line; () when unknown
    data: tuple = ()   # the posing's parameters (what pose_text writes back)
    canonical: str = ""  # the problem up to the order of its rules: what the split hashes


# ----------------------------------------------------------------------------- arithmetic
def _move(x, d):
    """One step from x by the signed amount d: (`x+d=y` or `x-d=y`, y)."""
    return (f"{x}+{d}={x + d}" if d >= 0 else f"{x}-{-d}={x + d}"), x + d


def _fold(x, moves, slip=None, first=1):
    """Signed moves from x, one step each; `slip` = (k, error) adds error at step k, carried on."""
    steps = []
    for k, d in enumerate(moves, first):
        step, x = _move(x, d)
        if slip and slip[0] == k:
            x += slip[1]
            step = step.rsplit("=", 1)[0] + f"={x}"
        steps.append(step)
    return steps, x


def _in_range(steps):
    """No step writes a negative number or one above LIMIT."""
    return all("=-" not in s and not s.startswith("-") and
               all(int(n) <= LIMIT for n in re.findall(r"\d+", s)) for s in steps)


# ----------------------------------------------------------------------------- induction
def _ind_solve(level, start, diffs, shown, slip=None):
    """Terms, steps (past the terms each moves as the one two lines up) and the answer."""
    terms = [start + sum(diffs[j % len(diffs)] for j in range(i)) for i in range(shown)]
    steps, moves = [], []
    for k, (a, b) in enumerate(zip(terms, terms[1:]), 1):
        m = abs(b - a) + (slip[1] if slip and slip[0] == k else 0)  # the step's size
        steps.append(f"{a}+{m}={b}" if b >= a else f"{a}-{m}={b}")  # the move from a to b
        moves.append(m if b >= a else -m)
    for _ in range(level):
        moves.append(moves[-2])
    tail, last = _fold(terms[-1], moves[len(steps):], slip, first=len(steps) + 1)
    steps += tail
    return terms, [f"{s} ({len(steps) - k} left)" for k, s in enumerate(steps, 1)], last


def _induction(level, params, rng=None):
    start, diffs, shown = params
    if not 0 <= start <= LIMIT or not all(1 <= abs(d) <= STEP for d in diffs) or not SHOWN[0] \
            <= shown <= SHOWN[1] or len(diffs) not in (1, 2) or len(set(diffs)) < len(diffs):
        return (f"start in 0..{LIMIT}, one or two different steps of 1..{STEP} (add or sub), "
                f"show {SHOWN[0]} to {SHOWN[1]} terms")
    terms, steps, answer = _ind_solve(level, start, diffs, shown)
    if not _in_range(steps) or min(terms) < 0:  # a count (at most 10) is in range too
        return f"the sequence leaves 0..{LIMIT} within {level} more terms"
    prompt = (f"Sequence: {', '.join(map(str, terms))}\n"
              f"Find the term {shown - 1 + level} places after the first.")
    return Task("induction", level, prompt, str(answer), tuple(steps), params, prompt)


def _ind_params(level, rng):
    diffs = tuple(rng.choice((-1, 1)) * rng.randint(1, STEP) for _ in range(rng.choice((1, 2))))
    return rng.randint(0, LIMIT), diffs, rng.randint(*SHOWN)


def _ind_pose(params):
    moves = " ".join(f"{'add' if d > 0 else 'sub'} {abs(d)}" for d in params[1])
    return f"start {params[0]} {moves} show {params[2]}"


def _ind_read(text):
    m = re.fullmatch(r"start (\d+)((?: (?:add|sub) \d+){1,2}) show (\d+)", text)
    if not m:
        raise ValueError("write: start N add D [sub D] show T")
    moves = re.findall(r"(add|sub) (\d+)", m.group(2))
    return (int(m.group(1)), tuple(int(d) * (1 if op == "add" else -1) for op, d in moves),
            int(m.group(3)))


# ----------------------------------------------------------------------------- deduction
# Each operator forces the next variable v from the known value x of the one before, u: OPS[op]
# maps x to v's value; FALLACY is what a careless step concludes where the rule forces nothing.
OPS = {"->": {1: 1}, "->~": {1: 0}, "~->": {0: 1}, "~->~": {0: 0}, "|": {0: 1}, "|~": {0: 0},
       "^": {0: 1, 1: 0}, "<->": {0: 0, 1: 1}}
FALLACY = {"->": {0: 0}, "->~": {0: 1}, "~->": {1: 0}, "~->~": {1: 1}, "|": {1: 0}, "|~": {1: 1}}
# Equivalent written forms of each operator (one drawn at random), `~` on v or not alike: the
# signs alone do not give v's value away.
FORMS = {"->": ("{u}->{v}", "~{v}->~{u}"), "->~": ("{u}->~{v}", "{v}->~{u}"),
         "~->": ("~{u}->{v}", "~{v}->{u}"), "~->~": ("~{u}->~{v}", "{v}->{u}"),
         "|": ("{u}|{v}", "{v}|{u}", "~{v}->{u}"), "|~": ("{u}|~{v}", "~{v}|{u}", "{v}->{u}"),
         "^": ("{u}^{v}", "{v}^{u}", "~{u}<->{v}"), "<->": ("{u}<->{v}", "{v}<->{u}", "~{u}^{v}")}


def _ded_solve(names, value, ops, written, slip=None):
    """Steps from the fact through each rule (`written`: the rules as shown) to every value."""
    x = 1 - value if slip and slip[0] == 1 else value
    steps, known = [f"{'' if value else '~'}{names[0]} gives {names[0]}={x}"], {names[0]: x}
    for k, (op, u, v, rule) in enumerate(zip(ops, names, names[1:], written), 2):
        x = OPS[op].get(x, FALLACY.get(op, {}).get(x))
        if slip and slip[0] == k:
            x = 1 - x
        known[v] = x
        steps.append(f"{rule} with {u}={known[u]} gives {v}={x}")
    return steps, ",".join(f"{n}={known[n]}" for n in names)


def _deduction(level, params, rng):
    value, pattern = params
    if value not in (0, 1) or not 1 <= len(pattern) <= 3 or any(op not in OPS for op in pattern):
        return f"start 0 or 1, then 1-3 operators of {' '.join(OPS)}"
    ops, x = _ded_ops(level, pattern), value
    for op in ops:
        if x not in OPS[op]:
            return f"rule {op} forces nothing after a variable that is {x}"
        x = OPS[op][x]
    names = rng.sample(LETTERS, len(ops) + 1)
    written = [rng.choice(FORMS[op]).format(u=u, v=v) for op, u, v in zip(ops, names, names[1:])]
    steps, answer = _ded_solve(names, value, ops, written)
    formulas = [f"{'' if value else '~'}{names[0]}"] + written
    prompt = "\n".join([f"Find {','.join(names)}:"] + formulas)
    return Task("deduction", level, prompt, answer, tuple(steps), params,
                "\n".join(sorted(formulas)))


def _ded_ops(level, pattern):
    """L + 1 operators, the pattern repeated (so even level 1 has over 10,000 problems)."""
    return [pattern[i % len(pattern)] for i in range(level + 1)]


def _ded_params(level, rng):
    while True:
        value, pattern = rng.randint(0, 1), tuple(rng.choice(list(OPS))
                                                  for _ in range(rng.randint(1, 3)))
        if not isinstance(_deduction(level, (value, pattern), random.Random(0)), str):
            return value, pattern


def _ded_read(text):
    m = re.fullmatch(r"start ([01]) rules ((?:\S+ ?){1,3})", text)
    if not m:
        raise ValueError("write: start 0|1 rules OP [OP [OP]]")
    return int(m.group(1)), tuple(m.group(2).split())


# ----------------------------------------------------------------------------- abduction
def _abd_solve(chains, seen, slip=None):
    """Trace the seen effect back to its cause, one `child<-parent` link a step (each starts where
    the one before ended: a longer chain is more of the same); a slip jumps to another chain."""
    at = next(i for i, c in enumerate(chains) if c[-1] == seen)
    depth, steps = len(chains[at]) - 1, []
    for k in range(1, depth + 1):
        j = depth - k  # the step from chains[at][j + 1] back to chains[at][j]
        child = chains[at][j + 1]
        if slip and slip[0] == k:
            at = (at + slip[1]) % len(chains)
        steps.append(f"{child}<-{chains[at][j]}")
    return steps, chains[at][0]


def _abduction(level, params, rng):
    (n_causes,) = params
    if not 2 <= n_causes <= 4:
        return "2 to 4 causes"
    names = rng.sample(LETTERS, n_causes * (level + 1))
    chains = [names[i * (level + 1):(i + 1) * (level + 1)] for i in range(n_causes)]
    seen = rng.choice(chains)[-1]
    steps, answer = _abd_solve(chains, seen)
    rules = [f"{a}->{b}" for c in chains for a, b in zip(c, c[1:])]
    causes = sorted(c[0] for c in chains)
    prompt = (f"Rules: {', '.join(rng.sample(rules, len(rules)))}\nCauses: {', '.join(causes)}\n"
              f"Seen: {seen}\nWhich cause explains it?")
    return Task("abduction", level, prompt, answer, tuple(steps), params, f"{sorted(rules)} {seen}")


# ----------------------------------------------------------------------------- corpus
NAMES = ("Ann", "Ben", "Cal", "Dee", "Eve", "Finn", "Gus", "Hal", "Ida", "Jo", "Kim", "Lou",
         "Max", "Ned", "Oli", "Pam", "Ray", "Sue", "Tom", "Uma")
THINGS = ("apples", "beads", "cards", "coins", "eggs", "pens", "shells", "stamps", "cups", "books")
GAIN, LOSS = ("gets", "finds", "buys", "wins"), ("gives away", "loses", "eats", "sells")
_STORY = re.compile(r"(\w+) has (\d+) (\w+)\.")


def document(rng, level, split="train"):
    """A raw document of `split`: a story of `level` events on a count (numbers in 0..LIMIT)."""
    while True:
        who, what, count = rng.choice(NAMES), rng.choice(THINGS), rng.randint(0, LIMIT)
        lines, x = [f"{who} has {count} {what}."], count
        for _ in range(level):
            d = rng.randint(1, STEP) * rng.choice((-1, 1))
            lines.append(f"Then {who} {rng.choice(GAIN if d > 0 else LOSS)} {abs(d)}.")
            x += d
            if not 0 <= x <= LIMIT:
                break
        else:
            doc = " ".join(lines + [f"Now {who} has {x} {what}."])
            if split_of(Task("corpus", level, "", "", canonical=doc)) == split:
                return doc


def _story(doc):
    """(start, signed events, end) of a document `document` wrote, or None."""
    m = _STORY.match(doc)
    events = re.findall(rf"Then \w+ ({'|'.join(GAIN + LOSS)}) (\d+)\.", doc)
    end = re.search(r"Now \w+ has (\d+) \w+\.$", doc)
    return None if not m or not end else \
        (int(m.group(2)), [int(d) * (1 if v in GAIN else -1) for v, d in events], int(end.group(1)))


def _corpus_solve(doc, index, slip=None):
    """Steps to the index-th number (1 = the start, 2.. = events, last = the end)."""
    start, moves, end = _story(doc)
    if index == len(moves) + 2:  # the end: forward through every event
        return _fold(start, moves, slip)
    if index == 1:  # the start: undo every event from the end
        return _fold(end, [-d for d in reversed(moves)], slip)
    j = index - 2  # event j: the count after it less the count before it
    fwd, before = _fold(start, moves[:j], slip)
    back, after = _fold(end, [-d for d in reversed(moves[j + 1:])], slip, first=j + 1)
    diff = f"{after}-{before}" if after >= before else f"{before}-{after}"
    amount = abs(after - before) + (slip[1] if slip and slip[0] == len(moves) else 0)
    return fwd + back + [f"{diff}={amount}"], amount


def _corpus(level, params, rng=None, doc=None):
    (index,) = params
    story = _story(doc) if isinstance(doc, str) else None
    if story is None or len(story[1]) != level:
        return f"the document must be a story of {level} events"
    numbers = list(re.finditer(r"\d+", doc))
    if not 1 <= index <= len(numbers):
        return f"mask a number from 1 to {len(numbers)}"
    steps, answer = _corpus_solve(doc, index)
    m = numbers[index - 1]
    prompt = f"Fill in {MASK}:\n{doc[:m.start()]}{MASK}{doc[m.end():]}"
    return Task("corpus", level, prompt, str(answer), tuple(steps), params, doc)


# ----------------------------------------------------------------------------- the interface
FAMILY = {  # family: (build(level, params, rng), draw params, write a posing, read a posing)
    "induction": (_induction, _ind_params, _ind_pose, _ind_read),
    "deduction": (_deduction, _ded_params, lambda p: f"start {p[0]} rules {' '.join(p[1])}",
                  _ded_read),
    "abduction": (_abduction, lambda level, rng: (rng.randint(2, 4),),
                  lambda p: f"causes {p[0]}", lambda t: _read_one(r"causes (\d)", t)),
    "corpus": (_corpus, None, lambda p: f"mask {p[0]}", lambda t: _read_one(r"mask (\d+)", t)),
}


def _read_one(pattern, text):
    m = re.fullmatch(pattern, text)
    if not m:
        raise ValueError(f"write: {pattern.split(' ')[0]} N")
    return (int(m.group(1)),)


def split_of(task):
    """'eval' for one problem in EVAL_EVERY, by a stable hash of its canonical form."""
    digest = hashlib.sha256(f"{task.family}:{task.canonical or task.prompt}".encode()).digest()
    return "eval" if int.from_bytes(digest[:8], "big") % EVAL_EVERY == 0 else "train"


def sample(family, level, rng, split="train"):
    """A random task of `family` at `level` from `split`; the same rng state gives the same task."""
    if family not in FAMILY or level not in LEVELS or split not in ("train", "eval"):
        raise ValueError(f"unknown family/level/split: {family!r}, {level!r}, {split!r}")
    build, draw = FAMILY[family][:2]
    while True:  # redraw until a draw is valid and the hash puts it in the requested split
        task = _corpus(level, (rng.randint(1, level + 2),), doc=document(rng, level, split)) \
            if family == "corpus" else build(level, draw(level, rng), rng)
        if isinstance(task, Task) and split_of(task) == split:
            return task


def solve(task):
    """The reference worked solution: the steps, then the Answer line."""
    return "\n".join([*task.steps, f"Answer: {task.answer}"])


def _norm(text):
    """Lower case, no spaces, no trailing full stop: the form answers and steps compare in."""
    return "".join(str(text).lower().split()).rstrip(".")


def check(task, answer_text):
    """Does `answer_text` (what follows `Answer:`) equal the answer, up to spacing and case?"""
    return isinstance(answer_text, str) and _norm(answer_text) == _norm(task.answer)


# The one definition of an answer line: the critic reads it here, roles.parse_answer everywhere
# else. re.ASCII: plain IGNORECASE would also read `İ`/`ı` as `i`, look-alikes escape() misses.
ANSWER_LINE = re.compile(r"[ \t]*answer[ \t]*:(.*)", re.IGNORECASE | re.ASCII)


def faithful(task, text):
    """Is `text` the reference solution line for line (up to spacing and case)? A reviser can copy
    the reference answer under wrong steps, or guess a cause: only the chain tells a correction
    from these. A task without known steps (JSONL) is judged by its answer."""
    if not task.steps:
        return check(task, answer_of(text))
    return first_wrong_step(task, "\n".join(x for x in str(text).splitlines() if x.strip())) is None


def answer_of(text):
    """What follows the last `Answer:` line of a solution, stripped; None if none or empty."""
    found = [m.group(1).strip() for m in map(ANSWER_LINE.fullmatch, str(text).splitlines()) if m]
    return found[-1] if found and found[-1] else None


def first_wrong_step(task, text):
    """1-based number of the first line of `text` that is not the reference's (the Answer line
    counts; if one ends first, where it ends); None if every line is the reference's."""
    return _first_difference(str(text or "").split("\n"), solve(task).split("\n"))


def _first_difference(lines, reference):
    lines, reference = [_norm(x) for x in lines], [_norm(x) for x in reference]
    return None if lines == reference else 1 + next(
        (i for i, (a, b) in enumerate(zip(lines, reference)) if a != b),
        min(len(lines), len(reference) - 1))


def critique(task, solution_text):
    """The teacher on any text: both answers, if they differ the first wrong line, the verdict."""
    given = answer_of(solution_text) if isinstance(solution_text, str) else None
    head = f"Got {given[:40] if given else 'nothing'}, want {task.answer}."
    if given is not None and check(task, given):
        return f"{head}\nVerdict: correct"
    lines, reference = str(solution_text or "").split("\n"), solve(task).split("\n")
    k = (_first_difference(lines, reference) or len(reference)) - 1
    lhs, _, written = _norm(lines[k] if k < len(lines) else "").split("(")[0].partition("=")
    want_lhs, _, want = _norm(reference[k]).split("(")[0].partition("=")  # before a count
    slip = k < len(task.steps) and lhs == want_lhs and written != want
    fix = f"{reference[k]}, not {written}" if slip and re.fullmatch(r"\d+[-+]\d+", lhs) else \
        f"it should be {reference[k]}"
    return f"{head}\nStep {k + 1} is wrong: {fix}.\nVerdict: incorrect"


def corrupt(task, rng):
    """The reference with one slip carried to the answer, and the slipped step (1-based; the Answer
    line counts last). About a third of induction's instead miscount from step 1 (a chain one or
    two steps longer or shorter), the tiny solver's commonest error; returned with k = 1."""
    k = rng.randint(1, len(task.steps) + 1)
    if task.family == "induction" and rng.random() < 1 / 3:
        _, steps, answer = _ind_solve(max(0, task.level + rng.choice((-2, -1, 1, 2))), *task.data)
        if _in_range(steps) and str(answer) != task.answer:
            return "\n".join([*steps, f"Answer: {answer}"]), 1
    if k > len(task.steps):
        return "\n".join([*task.steps, f"Answer: {_wrong_answer(task, rng)}"]), k
    for error in rng.sample((-2, -1, 1, 2), 4):
        steps, answer = _slipped(task, (k, error))
        to_zero = re.search(r"=0( \(|$)", steps[k - 1])  # the slipped value (before a count)
        if _in_range(steps) and str(answer) != task.answer and not to_zero:
            return "\n".join([*steps, f"Answer: {answer}"]), k
    return corrupt(task, rng)  # no slip of this step stays in range: another step


def _slipped(task, slip):
    if task.family == "induction":
        return _ind_solve(task.level, *task.data, slip)[1:]
    if task.family == "corpus":
        return _corpus_solve(task.canonical, task.data[0], slip)
    if task.family == "deduction":
        names = [s.split(" gives ")[-1][0] for s in task.steps]
        written = [s.split(" with ")[0] for s in task.steps[1:]]
        return _ded_solve(names, task.data[0], _ded_ops(task.level, task.data[1]), written,
                          (slip[0], None))
    rules, causes, seen = task.prompt.split("\n")[:3]  # abduction: the chains, cause first
    links = dict(r.split("->") for r in rules[len("Rules: "):].split(", "))
    chains = [[c] for c in causes[len("Causes: "):].split(", ")]
    for chain in chains:
        while chain[-1] in links:
            chain.append(links[chain[-1]])
    return _abd_solve(chains, seen[len("Seen: "):], (slip[0], 1 + (slip[1] % (len(chains) - 1))))


def _wrong_answer(task, rng):
    if task.family == "deduction":
        pairs = task.answer.split(",")
        i = rng.randrange(len(pairs))
        pairs[i] = pairs[i][:-1] + str(1 - int(pairs[i][-1]))
        return ",".join(pairs)
    if task.family == "abduction":
        return rng.choice([c for c in task.prompt.split("\n")[1][8:].split(", ")
                           if c != task.answer])
    n = int(task.answer)
    return str(rng.choice([m for m in (n - 2, n - 1, n + 1, n + 2) if 0 <= m <= LIMIT]))


def pose_text(task):
    """What a poser writes for this instance: its parameter line."""
    return FAMILY[task.family][2](task.data)


def validate(family, pose_text, level, document=None, split=None, rng=None):
    """The Task a posing defines, or why not; with `split`, one of the other split is invalid.
    `rng` (self-play's) draws what the line leaves open; None: a generator seeded by the line."""
    if family not in FAMILIES or level not in LEVELS:
        return f"unknown family or level: {family!r}, {level!r}"
    if not isinstance(pose_text, str) or not pose_text.strip():
        return "empty posing"
    build, _, _, read = FAMILY[family]
    text = " ".join(pose_text.split())
    try:
        params = read(text)
    except ValueError as e:
        return f"cannot read the {family} posing: {e}"
    for _ in range(8 if rng else 1):  # an open part redrawn: the poser chose only the line
        task = _corpus(level, params, doc=document) if family == "corpus" else \
            build(level, params, rng or random.Random(f"{family}:{level}:{text}"))
        if not (split and isinstance(task, Task)) or split_of(task) == split:
            return task
    return HELD_OUT if split == "train" else "a problem of the train split"
