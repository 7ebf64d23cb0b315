"""Self-verifiable tasks: four families, a reference solver, and the programmatic critic.

Every task is a small problem whose answer the environment can compute and check, so the
policy can be rewarded without a human: the poser writes an instance, `validate` decides if
it is well posed and computes the answer, the solver writes steps, and `critique` (the
teacher the judge role learns from) checks each step and names the first wrong one.

Families (levels 1 to 5, sizes grow with the level):
  deduction  propositional formulas over a few letters (~ not, & and, | or, ^ xor,
             -> implies, <-> iff) with exactly one satisfying assignment (brute force over
             all 2^n); solved by propagation, one formula forcing values per step.
             Canonical answer: `a=0,b=1,c=1` (every variable, alphabetical, 1 = true).
  induction  integer sequence from a rule family stated in the prompt; the visible terms fix
             the next term: every parameter setting of the family in a bounded range that
             reproduces them predicts the same next term. Canonical answer: `14`, `-3`.
  abduction  cause -> effect rules with chains and distractors; the one cause whose forward
             closure covers every observation. Distractors explain all but some observations
             and are linked as often and as directly, so counting links does not find it.
             Canonical answer: the cause's name, e.g. `k`.
  corpus     a raw document with one span masked as `[?]`; the span must be inferable: the
             rest of its paragraph determines it, and the environment derives it in steps.
             Canonical answer: the span exactly as written in the document.
  jsonl      (loaded eval sets only) question/answer pairs, checked by normalised match.

Text formats (shared with roles.py):
  solution   step lines, then `Answer: <answer>`; the Answer line is the last step.
  critique   short words naming `Step k` (the first wrong step) and its fix, then one line
             `Verdict: correct` or `Verdict: incorrect`.

Held-out split: `split_of` hashes the prompt (sha256), so an eval prompt never occurs in
train. Pure standard library; run the tests with `python -m pytest -q tests/test_tasks.py`.
"""
import hashlib
import itertools
import json
import operator
import re
from dataclasses import dataclass

FAMILIES = ("deduction", "induction", "abduction", "corpus")
LEVELS = (1, 2, 3, 4, 5)
MASK = "[?]"
EVAL_EVERY = 5  # one prompt in EVAL_EVERY (by hash) is held out for evaluation


@dataclass(frozen=True)
class Task:
    family: str
    level: int
    prompt: str  # text shown to the solver
    answer: str  # canonical answer (see module docstring)
    steps: tuple = ()  # reference steps, without the Answer line; () when unknown
    data: tuple = ()  # structured instance: deduction (vars, formulas), induction
    #                   (rule, terms), abduction (rules, causes, seen), corpus (document,)


# --- Shared text helpers ------------------------------------------------------------------

_ANSWER = re.compile(r"^\s*answer\s*:(.*)$", re.IGNORECASE)
_EQUATION = re.compile(r"^(-?\d+)([-+*/])(-?\d+)=(-?\d+)$")
_OPS = {"+": operator.add, "-": operator.sub, "*": operator.mul}


def _norm(text):
    """Lower case, single spaces, no trailing full stop: the form answers and steps compare in."""
    return " ".join(str(text).lower().split()).rstrip(".").strip()


def _lines(text):
    """The non-blank lines of a posing, normalised."""
    return [_norm(line) for line in str(text).strip().split("\n") if line.strip()]


def _equation(a, op, b):
    """One arithmetic step written the way a character model reads it best: `9-2=7`."""
    if op in ("+", "-") and b < 0:
        op, b = ("-" if op == "+" else "+"), -b
    value = _OPS[op](a, b)
    return f"{a}{op}{b}={value}", value


def _fold(x, moves):
    """Apply (op, number) moves to x in turn, one equation per move: (steps, result)."""
    steps = []
    for op, b in moves:
        step, x = _equation(x, op, b)
        steps.append(step)
    return steps, x


def _arith(line):
    """(lhs, true value, written value) if `line` is one equation like `5+3=8`, else None."""
    m = _EQUATION.match(line.replace(" ", ""))
    if not m:
        return None
    a, op, b, c = int(m.group(1)), m.group(2), int(m.group(3)), int(m.group(4))
    value = _OPS[op](a, b) if op != "/" else a // b if b and a % b == 0 else None
    return f"{a}{op}{b}", value, c


# --- Deduction: find the one assignment that makes every formula true ---------------------
# Formulas are nested tuples: a variable is its letter, ("~", f), or (op, f, g).
# level: (variables, most formulas, most operators in one formula)
DEDUCTION = {1: (3, 3, 1), 2: (3, 4, 2), 3: (4, 5, 2), 4: (4, 6, 3), 5: (5, 7, 3)}
_BINARY = ("&", "|", "->", "^", "<->")
_BINARY_BY_LEVEL = {1: ("&", "|", "->")}
_DED_HEADER = re.compile(r"^find ([a-z](?:,[a-z])*) \(1=true, 0=false\) so that all hold:?$")
_PAIRS = r"[a-z]=[01](?:,[a-z]=[01])*"  # an assignment as the steps write it: a=1,b=0


def _ev(f, env):
    if isinstance(f, str):
        return env[f]
    if f[0] == "~":
        return not _ev(f[1], env)
    a, b = _ev(f[1], env), _ev(f[2], env)
    return {"&": a and b, "|": a or b, "^": a != b, "->": (not a) or b, "<->": a == b}[f[0]]


def _vars_of(f):
    return {f} if isinstance(f, str) else set().union(*(_vars_of(g) for g in f[1:]))


def _n_ops(f):
    return 0 if isinstance(f, str) else 1 + sum(_n_ops(g) for g in f[1:])


def _fmt(f):
    def operand(g):
        return f"({_fmt(g)})" if not isinstance(g, str) and g[0] != "~" else _fmt(g)
    if isinstance(f, str):
        return f
    if f[0] == "~":
        return "~" + operand(f[1])
    return operand(f[1]) + f[0] + operand(f[2])


def _parse_formula(text):
    """Inverse of _fmt: binary operators take two operands; nest with parentheses."""
    toks = re.findall(r"<->|->|[~&|^()]|[a-z]|\S", text.replace(" ", ""))[::-1]  # pop() reads on

    def take():
        if not toks:
            raise ValueError("formula ends too early")
        return toks.pop()

    def unary():
        t = take()
        if t == "~":
            return ("~", unary())
        if t == "(":
            f = expr()
            if take() != ")":
                raise ValueError("missing )")
            return f
        if re.fullmatch(r"[a-z]", t):
            return t
        raise ValueError(f"unexpected {t!r}")

    def expr():
        left = unary()
        return (take(), left, unary()) if toks and toks[-1] in _BINARY else left

    f = expr()
    if toks:
        raise ValueError("use parentheses to nest operators")
    return f


def _satisfying(names, formulas, known=None):
    """Every assignment of `names` that, with `known`, makes all the formulas true."""
    envs = (dict(zip(names, bits)) for bits in itertools.product((0, 1), repeat=len(names)))
    return [env for env in envs if all(_ev(f, {**(known or {}), **env}) for f in formulas)]


def _forced(f, known):
    """Values of f's unknown variables that every way of making f true agrees on."""
    free = sorted(_vars_of(f) - set(known))
    sats = _satisfying(free, [f], known)
    return {v: sats[0][v] for v in free if len({s[v] for s in sats}) == 1} if sats else {}


def _assign(env):
    return ",".join(f"{v}={int(env[v])}" for v in sorted(env))


def _read_assign(text):
    """Inverse of _assign ('' reads as nothing)."""
    return {kv[0]: int(kv[2]) for kv in text.split(",") if kv}


def _propagate(variables, formulas):
    """Steps deriving the assignment one formula at a time; None when propagation gets stuck."""
    known, steps = {}, []
    while len(known) < len(variables):
        for f in formulas:
            forced = _forced(f, known)
            if forced:
                premises = {v: known[v] for v in _vars_of(f) if v in known}
                used = f" with {_assign(premises)}" if premises else ""
                steps.append(f"{_fmt(f)}{used} gives {_assign(forced)}")
                known.update(forced)
                break
        else:
            return None
    return steps


def _ded_fits(level, variables, formulas):
    n_vars, most_formulas, most_ops = DEDUCTION[level]
    ops = max(_n_ops(f) for f in formulas)
    return len(variables) == n_vars and len(formulas) <= most_formulas and ops <= most_ops


def _ded_task(level, variables, formulas):
    """Validity checks shared by the sampler and the poser's instances: Task or reason."""
    if not _ded_fits(level, variables, formulas):
        n_vars, most_formulas, most_ops = DEDUCTION[level]
        return (f"level {level} wants {n_vars} variables, at most {most_formulas} formulas "
                f"of at most {most_ops} operators")
    if level > 1 and _ded_fits(level - 1, variables, formulas):
        return f"too small for level {level}: it fits level {level - 1}"
    models = _satisfying(variables, formulas)
    if len(models) != 1:
        return f"has {len(models)} satisfying assignments, needs exactly 1"
    steps = _propagate(variables, formulas)
    if steps is None:
        return "cannot be solved one formula at a time"
    head = f"Find {','.join(variables)} (1=true, 0=false) so that all hold:"
    prompt = "\n".join([head] + [_fmt(f) for f in formulas])
    return Task("deduction", level, prompt, _assign(models[0]), tuple(steps),
                (tuple(variables), tuple(_fmt(f) for f in formulas)))


def _random_formula(rng, variables, n_ops, ops):
    if n_ops == 0:
        return rng.choice(variables)
    if rng.random() < 0.3:
        inner = _random_formula(rng, variables, n_ops - 1, ops)
        if not (isinstance(inner, tuple) and inner[0] == "~"):
            return ("~", inner)
    left_ops = rng.randint(0, n_ops - 1)
    left = _random_formula(rng, variables, left_ops, ops)
    right = _random_formula(rng, variables, n_ops - 1 - left_ops, ops)
    if left == right:
        return ("~", left) if not (isinstance(left, tuple) and left[0] == "~") else left
    return (rng.choice(ops), left, right)


def _sample_deduction(level, rng):
    n_vars, most_formulas, most_ops = DEDUCTION[level]
    variables = "abcde"[:n_vars]
    ops = _BINARY_BY_LEVEL.get(level, _BINARY)
    target = {v: rng.randint(0, 1) for v in variables}
    formulas, n_models = [], 2 ** n_vars
    for _ in range(40):
        if len(formulas) == most_formulas or n_models == 1:
            break
        size = most_ops if not formulas else rng.randint(1, most_ops)
        f = _random_formula(rng, variables, size, ops)
        if not _ev(f, target) or _n_ops(f) == 0:
            continue
        left = len(_satisfying(variables, formulas + [f]))
        if left < n_models:  # every formula must cut the models down
            formulas.append(f)
            n_models = left
    rng.shuffle(formulas)
    return _ded_task(level, variables, formulas) if n_models == 1 else None


def _parse_deduction(text):
    lines = _lines(text)
    if not lines:
        raise ValueError("empty")
    m = _DED_HEADER.match(lines[0])
    if not m:
        raise ValueError("first line must be: Find a,b,c (1=true, 0=false) so that all hold:")
    variables = m.group(1).split(",")
    if variables != sorted(set(variables)):
        raise ValueError("variables must be distinct and in alphabetical order")
    formulas = [_parse_formula(line) for line in lines[1:]]
    if not formulas:
        raise ValueError("no formulas")
    if set().union(*map(_vars_of, formulas)) - set(variables):
        raise ValueError("a formula uses an undeclared variable")
    return variables, formulas


def _ded_step_ok(task, line, prior):
    """A true step: one of the formulas, premises already derived, conclusion forced."""
    m = re.fullmatch(rf"(.+?)(?: with ({_PAIRS}))? gives ({_PAIRS})", line.replace(", ", ","))
    if not m:
        return False
    try:
        f = _parse_formula(m.group(1))
    except ValueError:
        return False
    if f not in [_parse_formula(g) for g in task.data[1]]:
        return False
    known = {}
    for p in prior:  # earlier lines were all accepted; collect what they derived
        g = re.search(rf"gives ({_PAIRS})$", _norm(p).replace(", ", ","))
        if g:
            known.update(_read_assign(g.group(1)))
    premises, claimed = _read_assign(m.group(2) or ""), _read_assign(m.group(3))
    if any(known.get(v) != val for v, val in premises.items()) or set(premises) - _vars_of(f):
        return False
    forced = _forced(f, premises)
    return all(v not in premises and forced.get(v) == val for v, val in claimed.items())


def _check_deduction(task, text):
    pair = r"([a-z])\s*=\s*(0|1|true|false)\b"
    pairs, rest = re.findall(pair, text.lower()), re.sub(pair, "", text.lower())
    if rest.strip(" ,;\t\n.") or not pairs:
        return False
    given = {v: int(val in ("1", "true")) for v, val in pairs}
    return len(given) == len(pairs) and _assign(given) == task.answer  # no letter given twice


# --- Induction: the next term of a sequence made by a stated rule -------------------------
# rule: (phrase in the prompt, visible terms, parameters)
RULES = {
    "add": ("add the same number each time", 4, 1),
    "alternate": ("add two numbers in turn", 5, 2),
    "grow": ("the step grows by the same number each time", 5, 2),
    "cycle": ("add three numbers in turn", 6, 3),
    "muladd": ("multiply by a number, then add a number", 4, 2),
    "sum": ("add the two terms before, plus a number", 5, 1),
}
INDUCTION = {1: ("add",), 2: ("alternate",), 3: ("grow", "cycle"), 4: ("muladd",), 5: ("sum",)}
TERM_LIMIT = {1: 40, 2: 40, 3: 60, 4: 200, 5: 200}  # largest |term| shown at each level
PARAM_RANGE = range(-60, 61)  # the bounded family that identifiability is checked within


def _extend(rule, start, params, n):
    """The first n terms of `rule` from its start term(s) and parameters."""
    seq = list(start)
    while len(seq) < n:
        i = len(seq) - 1
        if rule in ("add", "alternate", "cycle"):
            seq.append(seq[-1] + params[i % len(params)])
        elif rule == "grow":
            seq.append(seq[-1] + params[0] + i * params[1])
        elif rule == "muladd":
            seq.append(seq[-1] * params[0] + params[1])
        else:  # sum
            seq.append(seq[-1] + seq[-2] + params[0])
    return seq[:n]


def _predictions(rule, terms):
    """Every next term the family allows given the visible terms: enumerate each parameter
    over its bounded range, dropping a partial choice as soon as the terms it fixes differ."""
    n_params = RULES[rule][2]
    ranges = [range(-9, 10) if rule == "muladd" and i == 0 else PARAM_RANGE
              for i in range(n_params)]
    start, preds = terms[:2 if rule == "sum" else 1], set()

    def search(params):
        if len(params) == n_params:
            seq = _extend(rule, start, params, len(terms) + 1)
            if seq[:len(terms)] == list(terms):
                preds.add(seq[-1])
            return
        for v in ranges[len(params)]:
            chosen = params + (v,)
            # in the additive rules the first j parameters alone fix the first j+1 terms
            padded = chosen + (0,) * (n_params - len(chosen))
            fixed = len(chosen) + 1
            if rule == "muladd" or _extend(rule, start, padded, fixed) == list(terms[:fixed]):
                search(chosen)

    search(())
    return preds


def _ind_steps(rule, terms):
    """The reference steps and the next term they reach."""
    if rule == "muladd":
        (d1, a), (d2, b) = _equation(terms[1], "-", terms[0]), _equation(terms[2], "-", terms[1])
        m = b // a
        c_step, c = _equation(terms[1], "-", terms[0] * m)
        tail, nxt = _fold(terms[-1], [("*", m), ("+", c)])
        return [d1, d2, f"{b}/{a}={m}", f"{terms[0]}*{m}={terms[0] * m}", c_step, *tail], nxt
    if rule == "sum":
        s_step, s = _equation(terms[0], "+", terms[1])
        c_step, c = _equation(terms[2], "-", s)
        tail, nxt = _fold(terms[-2], [("+", terms[-1]), ("+", c)])
        return [s_step, c_step, *tail], nxt
    diffs = [_equation(b, "-", a) for a, b in zip(terms, terms[1:])]
    steps, gaps = [s for s, _ in diffs], [g for _, g in diffs]
    if rule == "grow":
        seconds = [_equation(b, "-", a) for a, b in zip(gaps, gaps[1:])]
        steps += [s for s, _ in seconds]
        gap_step, gap = _equation(gaps[-1], "+", seconds[-1][1])
        steps.append(gap_step)
    else:  # the steps repeat with the period of the rule's parameters
        gap = gaps[-RULES[rule][2]]
    final, nxt = _equation(terms[-1], "+", gap)
    return steps + [final], nxt


def _ind_task(level, rule, terms):
    phrase, n_terms, _ = RULES[rule]
    if rule not in INDUCTION[level]:
        return f"rule '{phrase}' is not a level {level} rule"
    if len(terms) != n_terms:
        return f"this rule shows exactly {n_terms} terms"
    if max(abs(t) for t in terms) > TERM_LIMIT[level]:
        return f"terms must stay within {TERM_LIMIT[level]} at level {level}"
    if rule == "muladd" and terms[1] == terms[0]:
        return "the terms must change"
    preds = _predictions(rule, terms)
    if len(preds) != 1:
        return "no rule of this kind fits the terms" if not preds else "next term is not determined"
    steps, nxt = _ind_steps(rule, terms)
    if nxt not in preds or abs(nxt) > 2 * TERM_LIMIT[level]:
        return "next term is out of range"
    prompt = f"Rule: {phrase}.\nSequence: {', '.join(map(str, terms))}, ?"
    return Task("induction", level, prompt, str(nxt), tuple(steps), (rule, tuple(terms)))


def _sample_induction(level, rng):
    rule = rng.choice(INDUCTION[level])
    if rule == "add":
        start, params = [rng.randint(0, 9)], (rng.randint(1, 5),)
    elif rule == "alternate":
        start, params = [rng.randint(0, 12)], tuple(rng.sample(range(-3, 7), 2))
    elif rule == "cycle":
        start, params = [rng.randint(0, 9)], tuple(rng.choice(range(-3, 7)) for _ in range(3))
    elif rule == "grow":
        start, params = [rng.randint(0, 9)], (rng.randint(-2, 4), rng.randint(1, 3))
    elif rule == "muladd":
        start, params = [rng.randint(1, 5)], (rng.randint(2, 3), rng.randint(-3, 4))
    else:
        start, params = [rng.randint(0, 5), rng.randint(0, 5)], (rng.randint(-2, 3),)
    return _ind_task(level, rule, tuple(_extend(rule, start, params, RULES[rule][1])))


def _parse_induction(text):
    lines = _lines(text)
    if len(lines) != 2 or not (lines[0].startswith("rule: ") and lines[1].startswith("sequence: ")):
        raise ValueError("write two lines: 'Rule: ...' and 'Sequence: 1, 2, 3, ?'")
    phrase = lines[0][len("rule: "):]
    rule = next((r for r, (p, _, _) in RULES.items() if p == phrase), None)
    if rule is None:
        raise ValueError("unknown rule; use one of: " + "; ".join(p for p, _, _ in RULES.values()))
    parts = [p.strip() for p in lines[1][len("sequence: "):].split(",")]
    if len(parts) < 2 or parts[-1] != "?" or not all(re.fullmatch(r"-?\d+", p) for p in parts[:-1]):
        raise ValueError("the sequence is integers separated by commas, ending in ?")
    return rule, tuple(int(p) for p in parts[:-1])


def _check_number(task, text):
    text = str(text).replace(" ", "").rstrip(".")
    return bool(re.fullmatch(r"[+-]?\d+", text)) and int(text) == int(task.answer)


# --- Abduction: which single cause explains everything seen? ------------------------------
# level: (candidate causes, observations, longest chain in rules)
ABDUCTION = {1: (2, 2, 1), 2: (3, 2, 2), 3: (3, 3, 2), 4: (4, 3, 3), 5: (4, 4, 3)}
MAX_RULES = {1: 6, 2: 14, 3: 18, 4: 26, 5: 32}


def _paths(rules, start):
    """Every node `start` reaches, with the shortest chain of rules to it (breadth first)."""
    paths, queue, rules = {start: [start]}, [start], sorted(rules)
    for node in queue:
        for a, b in rules:
            if a == node and b not in paths:
                paths[b] = paths[node] + [b]
                queue.append(b)
    return paths


def _abd_task(level, rules, causes, seen):
    rules, causes, seen = tuple(sorted(set(rules))), tuple(sorted(causes)), tuple(sorted(seen))
    n_causes, n_seen, _ = ABDUCTION[level]
    if (len(causes), len(seen), len(set(causes + seen))) != (n_causes, n_seen, n_causes + n_seen):
        return f"level {level} wants {n_causes} distinct causes and {n_seen} things seen"
    if len(rules) > MAX_RULES[level]:
        return f"at most {MAX_RULES[level]} rules at level {level}"
    reach = {c: _paths(rules, c) for c in causes}
    explaining = [c for c in causes if all(o in reach[c] for o in seen)]
    if len(explaining) != 1:
        return f"{len(explaining)} causes explain everything seen, needs exactly 1"
    steps = []
    for c in causes:
        if c == explaining[0]:
            steps += ["->".join(reach[c][o]) for o in seen]
        else:
            steps.append(f"{c} misses {next(o for o in seen if o not in reach[c])}")
    prompt = (f"Rules: {', '.join(f'{a}->{b}' for a, b in rules)}\nCauses: {', '.join(causes)}\n"
              f"Seen: {', '.join(seen)}\nWhich cause explains all?")
    return Task("abduction", level, prompt, explaining[0], tuple(steps), (rules, causes, seen))


def _sample_abduction(level, rng):
    """The explaining cause reaches the observations through chains. Around it: a strong
    distractor linked directly to all observations but one (plus a second route and unseen
    effects), a weak one with a single chain, and (from level 4) one like the answer but an
    observation short. The answer is neither the most nor the least linked cause."""
    n_causes, n_seen, depth = ABDUCTION[level]
    names = rng.sample("abcdefghijklmnopqrstuvwxyz", 26)
    causes = [names.pop() for _ in range(n_causes)]
    seen = [names.pop() for _ in range(n_seen)]
    rules = set()

    def chain(cause, goal, hops):  # cause -> middle -> ... -> goal
        node = cause
        for _ in range(hops):
            rules.add((node, names[-1]))
            node = names.pop()
        rules.add((node, goal))

    truth, strong, *others = causes
    try:  # names can run out on big draws: then this draw fails
        for j, o in enumerate(seen):
            chain(truth, o, rng.randint(1 if j == 0 and level > 1 else 0, depth - 1))
        missing = rng.choice(seen)
        for o in seen:
            if o != missing:
                rules.add((strong, o))
        for _ in range(2 if depth > 1 else 0):  # second routes
            goal = rng.choice([o for o in seen if o != missing])
            chain(strong, goal, rng.randint(1, depth - 1))
        for _ in range(rng.randint(1, 2) + level // 4):  # effects nobody saw
            rules.add((strong, names.pop()))
        for i, c in enumerate(others):
            covered = [rng.choice(seen)] if i == 0 else rng.sample(seen, n_seen - 1)
            for o in covered:
                chain(c, o, depth - 1 if i == 0 else rng.randint(0, depth - 1))
    except IndexError:
        return None
    return _abd_task(level, rules, causes, seen)


def _parse_abduction(text):
    fields = dict(line.split(": ", 1) for line in _lines(text) if ": " in line)
    if not {"rules", "causes", "seen"} <= set(fields):
        raise ValueError("write 'Rules: a->x, ...', 'Causes: a, b' and 'Seen: x, y' lines")
    rules = [tuple(r.split("->")) for r in fields["rules"].replace(" ", "").split(",")]
    causes = fields["causes"].replace(" ", "").split(",")
    seen = fields["seen"].replace(" ", "").split(",")
    if not all(len(r) == 2 and all(re.fullmatch(r"[a-z]+", x) for x in r) for r in rules):
        raise ValueError("each rule is name->name")
    if not all(re.fullmatch(r"[a-z]+", x) for x in causes + seen):
        raise ValueError("names are lowercase words")
    return rules, causes, seen


def _abd_step_ok(task, line, prior):
    """A true step: a chain of rules from a cause to something seen, or a cause that misses
    something seen (`prior` is unused: abduction steps stand alone)."""
    rules, causes, seen = task.data
    m = re.fullmatch(r"([a-z]+) misses ([a-z]+)", line)
    if m:
        c, o = m.groups()
        return c in causes and o in seen and o not in _paths(rules, c)
    nodes = line.replace(" ", "").split("->")
    return (len(nodes) > 1 and nodes[0] in causes and nodes[-1] in seen
            and all(edge in rules for edge in zip(nodes, nodes[1:])))


# --- Corpus: tiny self-consistent documents, one inferable span masked --------------------
# One paragraph per line, each of one kind: counting (arithmetic), ages (ordering with
# numbers), kinship, and a rule chain. A span is inferable when the rest of its paragraph
# determines it; `_inferable` finds those spans and the steps that derive them, and only
# they are valid posings (so every corpus Task has a worked solution).
NAMES = ("ana", "bo", "cal", "dev", "eli", "fay", "gil", "hal", "ivy", "jon", "kai", "lou",
         "mia", "ned", "oz", "pam", "rui", "sid", "tia", "vik", "wyn", "zed")
THINGS = ("apples", "pens", "coins", "cards", "eggs", "shells", "stamps", "beads")
NONCE = ("blick", "dax", "wug", "fep", "zorb", "tupa", "mip", "kiv", "lorp", "snib")
CORPUS = {1: (1, 2), 2: (2, 2), 3: (2, 3), 4: (3, 3), 5: (3, 4)}  # level: (paragraphs, chain)
_KIN = {"mother": "grandmother", "father": "grandfather", "sister": "aunt", "brother": "uncle"}
_COUNT = re.compile(r"(\w+) has \d+ (\w+)\.((?: \1 (?:gets \d+ more|loses \d+)\.)+)"
                    r" now \1 has \d+ \2\.")
_AGES = re.compile(r"(?:\w+ is \d+ years older than \w+\. )+so \w+ is \d+ years older than \w+\.")
_KINSHIP = re.compile(r"\w+ is the (\w+) of \w+\.((?: \w+ is the (?:mother|father) of \w+\.)+)"
                      r" so \w+ is the ([\w-]+) of \w+\.")
_RULE = re.compile(r"((?:(?:every|no) \w+ is a \w+\. )+)(\w+) is a (\w+)\. "
                   r"so \2 is a (\w+): (true|false)\.")


def _kin_up(word):
    """The relation one generation further up: mother -> grandmother -> great-grandmother."""
    return _KIN.get(word) or "great-" + word


def _write_paragraph(kind, rng, chain, names):
    if kind == "count":
        p, thing, have = names.pop(), rng.choice(THINGS), rng.randint(1, 9)
        out = [f"{p} has {have} {thing}."]
        for _ in range(max(1, chain - 1)):
            if have > 2 and rng.random() < 0.4:
                n = rng.randint(1, have - 1)
                out.append(f"{p} loses {n}.")
                have -= n
            else:
                n = rng.randint(1, 9)
                out.append(f"{p} gets {n} more.")
                have += n
        return " ".join(out + [f"now {p} has {have} {thing}."])
    if kind == "ages":
        people = [names.pop() for _ in range(chain + 1)]
        gaps = [rng.randint(2, 9) for _ in range(chain)]
        out = [f"{a} is {g} years older than {b}." for a, b, g in zip(people, people[1:], gaps)]
        return " ".join(out + [f"so {people[0]} is {sum(gaps)} years older than {people[-1]}."])
    if kind == "kin":
        people = [names.pop() for _ in range(chain + 1)]
        rels = [rng.choice(tuple(_KIN))] + [rng.choice(("mother", "father")) for _ in people[2:]]
        word = rels[0]
        for _ in rels[1:]:
            word = _kin_up(word)
        out = [f"{a} is the {r} of {b}." for a, b, r in zip(people, people[1:], rels)]
        return " ".join(out + [f"so {people[0]} is the {word} of {people[-1]}."])
    kinds = rng.sample(NONCE, chain + 1)
    who, truth = names.pop(), rng.random() < 0.5
    out = [f"every {a} is a {b}." for a, b in zip(kinds, kinds[1:])]
    if not truth:
        out[-1] = f"no {kinds[-2]} is a {kinds[-1]}."
    out.append(f"{who} is a {kinds[0]}.")
    return " ".join(out + [f"so {who} is a {kinds[-1]}: {'true' if truth else 'false'}."])


def document(rng, level):
    """A small self-consistent document: one paragraph (line) per kind, longer chains up the
    levels."""
    n_paragraphs, chain = CORPUS[level]
    names = rng.sample(NAMES, len(NAMES))
    kinds = rng.sample(("count", "ages", "kin", "rule"), n_paragraphs)
    return "\n".join(_write_paragraph(k, rng, rng.randint(2, chain), names) for k in kinds)


def _paragraph_spans(paragraph):
    """[(start, end, steps)] for the spans of one paragraph that the rest determines."""
    nums = [(m.start(), m.end(), int(m.group())) for m in re.finditer(r"\b\d+\b", paragraph)]
    values = [v for _, _, v in nums]
    count = _COUNT.fullmatch(paragraph)
    if count:
        signs = ["+" if e == "gets" else "-" for e in re.findall(r"(gets|loses)", count.group(3))]
        n, out = len(signs), []

        def moves(events, undo=False):  # apply (or undo, last first) some events to a count
            if undo:
                return [("-" if signs[j] == "+" else "+", values[j + 1]) for j in reversed(events)]
            return [(signs[j], values[j + 1]) for j in events]

        for i, (s, e, _) in enumerate(nums):
            if i == n + 1:  # the final count: forward through every event
                steps, _ = _fold(values[0], moves(range(n)))
            elif i == 0:  # the starting count: undo every event from the final one
                steps, _ = _fold(values[-1], moves(range(n), undo=True))
            else:  # event i-1: the count after it less the count before it
                fwd, before = _fold(values[0], moves(range(i - 1)))
                back, after = _fold(values[-1], moves(range(i, n), undo=True))
                pair = (after, before) if signs[i - 1] == "+" else (before, after)
                steps = fwd + back + [_equation(pair[0], "-", pair[1])[0]]
            out.append((s, e, steps))
        return out
    if _AGES.fullmatch(paragraph):
        out = []
        for i, (s, e, _) in enumerate(nums):
            if i == len(nums) - 1:  # the total gap: add the gaps
                steps, _ = _fold(values[0], [("+", g) for g in values[1:-1]])
            else:  # one gap: the total less the others
                others = [g for j, g in enumerate(values[:-1]) if j != i]
                steps, _ = _fold(values[-1], [("-", g) for g in others])
            out.append((s, e, steps))
        return out
    kin = _KINSHIP.fullmatch(paragraph)
    if kin:
        steps, word = [], kin.group(1)
        for _ in re.findall(r"(mother|father)", kin.group(2)):
            steps.append(f"{word} of a parent is {_kin_up(word)}")
            word = _kin_up(word)
        return [(kin.start(3), kin.end(3), steps)] if word == kin.group(3) else []
    rule = _RULE.fullmatch(paragraph)
    if rule:
        links = re.findall(r"(every|no) (\w+) is a (\w+)\.", rule.group(1))
        who, kind, steps = rule.group(2), rule.group(3), []
        for quant, a, b in links:
            if a != kind:
                return []
            steps.append(f"{who} is {'not ' if quant == 'no' else ''}a {b}")
            kind = b if quant == "every" else None
        if kind is None and links[-1][0] != "no":
            return []
        truth = "true" if kind == rule.group(4) else "false"
        return [(rule.start(5), rule.end(5), steps)] if truth == rule.group(5) else []
    return []


def _inferable(doc):
    """{(start, end): steps} for every span of `doc` that the rest of its paragraph determines."""
    found, offset = {}, 0
    for line in doc.split("\n"):
        for s, e, steps in _paragraph_spans(line):
            found[offset + s, offset + e] = steps
        offset += len(line) + 1
    return found


def _corpus_task(level, span, doc):
    if not span.strip() or span != span.strip() or "\n" in span or len(span) > 40:
        return "the span must be a short piece of one line, without surrounding spaces"
    if MASK in span or MASK in doc:
        return f"the document already holds {MASK}"
    n = doc.count(span)
    if n == 0:
        return "the span does not occur in the document"
    if n > 1:
        return f"the span occurs {n} times, needs once"
    start = doc.index(span)
    end = start + len(span)
    if (start > 0 and doc[start - 1].isalnum()) or (end < len(doc) and doc[end].isalnum()):
        return "the span cuts a word or number in two"
    steps = _inferable(doc).get((start, end))
    if not steps:
        return ("the rest of the document does not determine the span: mask a number, "
                "relation or truth value that follows from its paragraph")
    prompt = f"Fill in {MASK}:\n{doc[:start]}{MASK}{doc[end:]}"
    return Task("corpus", level, prompt, span, tuple(steps), (doc,))


def _sample_corpus(level, rng):
    doc = document(rng, level)
    spans = [doc[s:e] for s, e in _inferable(doc)]
    spans = [s for s in spans if doc.count(s) == 1]
    return _corpus_task(level, rng.choice(spans), doc) if spans else None


# --- The common interface -----------------------------------------------------------------

# one random draw each: a Task, or a reason or None when the draw fails (sample draws again)
_SAMPLERS = {"deduction": _sample_deduction, "induction": _sample_induction,
             "abduction": _sample_abduction, "corpus": _sample_corpus}
_POSINGS = {"deduction": (_parse_deduction, _ded_task), "induction": (_parse_induction, _ind_task),
            "abduction": (_parse_abduction, _abd_task)}  # family: (parser, Task or reason)
_CHECKS = {"deduction": _check_deduction, "induction": _check_number}  # else: normalised text
_OTHER_ROUTES = {"deduction": _ded_step_ok, "abduction": _abd_step_ok}  # true non-reference steps


def split_of(task):
    """'eval' for one prompt in EVAL_EVERY, by a stable hash of the prompt (the canonical
    problem)."""
    digest = hashlib.sha256(_norm(task.prompt).encode()).digest()
    return "eval" if int.from_bytes(digest[:8], "big") % EVAL_EVERY == 0 else "train"


def sample(family, level, rng, split="train"):
    """A random task of `family` at `level` from `split`; the same rng state gives the same task."""
    if family not in _SAMPLERS or level not in LEVELS or split not in ("train", "eval"):
        raise ValueError(f"unknown family/level/split: {family!r}, {level!r}, {split!r}")
    while True:  # redraw until a draw is valid and the hash puts it in the requested split
        task = _SAMPLERS[family](level, rng)
        if isinstance(task, Task) and split_of(task) == split:
            return task


def solve(task):
    """The reference worked solution: the steps, then the Answer line."""
    return "\n".join([*task.steps, f"Answer: {task.answer}"])


def check(task, answer_text):
    """Does `answer_text` (what follows `Answer:`) equal the answer, up to spacing and case?"""
    if not isinstance(answer_text, str):
        return False
    if task.family in _CHECKS:
        return _CHECKS[task.family](task, answer_text)
    return _norm(answer_text) == _norm(task.answer)


def _step_ok(task, line, prior):
    """A step holds if it is a reference step or, where the family allows other routes,
    a true statement about the problem (deduction, abduction)."""
    n = _norm(line)
    if n in {_norm(s) for s in task.steps}:
        return True
    return task.family in _OTHER_ROUTES and _OTHER_ROUTES[task.family](task, n, prior)


def critique(task, solution_text):
    """The teacher's critique: the first wrong step and its fix, or all steps hold; then the
    verdict. Reads any text without raising; steps are lines, the Answer line the last."""
    text = solution_text if isinstance(solution_text, str) else ""
    lines = text.rstrip().split("\n") if text.strip() else []
    answer_at = max((i for i, line in enumerate(lines) if _ANSWER.match(line)), default=None)
    if answer_at is None:
        return "No Answer line, so the solution cannot be read.\nVerdict: incorrect"
    for i, line in enumerate(lines):
        k, fix = i + 1, None
        if not line.strip():
            continue
        if i > answer_at:
            fix = "nothing may follow the Answer line"
        elif i == answer_at:
            given = _ANSWER.match(line).group(1).strip()
            if not check(task, given):
                fix = f"the answer is {task.answer}, not {given or 'empty'}"
        elif _ANSWER.match(line):
            fix = "only the last line is an Answer line"
        elif task.steps and not _step_ok(task, line, lines[:i]):
            eq = _arith(_norm(line))
            if eq and eq[1] is not None and eq[1] != eq[2]:
                fix = f"{eq[0]}={eq[1]}, not {eq[2]}"
            elif k <= len(task.steps):
                fix = f"it should be {task.steps[k - 1]}"
            else:
                fix = "it does not follow from the problem"
        if fix:
            return f"Step {k} is wrong: {fix}.\nVerdict: incorrect"
    return "All steps hold.\nVerdict: correct"


_SWAPS = {"true": "false", "false": "true", "aunt": "uncle", "uncle": "aunt",
          "mother": "father", "father": "mother", "grandmother": "grandfather",
          "grandfather": "grandmother", "great-aunt": "great-uncle", "great-uncle": "great-aunt"}


def _mutants(task, line):
    """Plausible one-slip versions of a line: the last number off by one or two (a flipped
    truth value in deduction), a relation or truth word swapped, another name (abduction)."""
    out = []
    nums = list(re.finditer(r"-?\d+", line))
    if nums:
        m = nums[-1]
        v = int(m.group())
        for w in ((1 - v,) if task.family == "deduction" else (v - 1, v + 1, v + 2)):
            out.append(line[:m.start()] + str(w) + line[m.end():])
    for m in re.finditer(r"[a-z][a-z-]*", line):
        if m.group() in _SWAPS:
            out.append(line[:m.start()] + _SWAPS[m.group()] + line[m.end():])
    for said, slip in ((" is a ", " is not a "), (" is not a ", " is a ")):
        if said in line:
            out.append(line.replace(said, slip))
    if task.family == "abduction":
        rules, causes, seen = task.data
        middles = sorted({x for r in rules for x in r} - set(causes) - set(seen))
        for m in re.finditer(r"[a-z]+", line):  # a name swapped for another of its kind
            kind = next((k for k in (causes, seen, middles) if m.group() in k), ())
            out += [line[:m.start()] + n + line[m.end():] for n in kind if n != m.group()]
    if task.family == "deduction" and line.startswith("Answer:"):
        out = [line[:m.start()] + str(1 - int(m.group())) + line[m.end():]
               for m in re.finditer(r"[01]", line)]
    return list(dict.fromkeys(o for o in out if o != line))


def corrupt(task, rng):
    """The reference solution with exactly one step replaced by a plausible mistake, and that
    step's 1-based number (the Answer line counts as the last step)."""
    lines = solve(task).split("\n")
    options = []
    for i, line in enumerate(lines):
        if i == len(lines) - 1:
            bad = [m for m in _mutants(task, line)
                   if not check(task, _ANSWER.match(m).group(1).strip())]
        else:
            bad = [m for m in _mutants(task, line) if not _step_ok(task, m, lines[:i])]
        if bad:
            options.append((i, bad))
    if not options:  # an answer no mutation reaches (e.g. a loaded question)
        options = [(len(lines) - 1, [f"Answer: not {task.answer}"])]
    i, bad = rng.choice(options)
    lines[i] = rng.choice(bad)
    return "\n".join(lines), i + 1


def pose_text(task):
    """What a poser writes for this instance: the problem statement (for corpus, the span)."""
    return task.answer if task.family == "corpus" else task.prompt


def validate(family, pose_text, level, document=None):
    """The Task a posing defines (answer computed here), or a short reason it is invalid."""
    if family not in FAMILIES or level not in LEVELS:
        return f"unknown family or level: {family!r}, {level!r}"
    if not isinstance(pose_text, str) or not pose_text.strip():
        return "empty posing"
    if family in _POSINGS:
        parse, build = _POSINGS[family]
        try:
            return build(level, *parse(pose_text))
        except ValueError as e:
            return f"cannot read the {family} posing: {e}"
    if not isinstance(document, str):
        return "a corpus posing needs the document"
    return _corpus_task(level, pose_text, document)


# --- JSONL loading ------------------------------------------------------------------------

def _read_jsonl(path, fields):
    """One dict per non-blank line, each with string-able `fields`; ValueError names file:line."""
    with open(path, "rb") as fh:
        raw = fh.read().split(b"\n")
    rows = []
    for n, line in enumerate(raw, 1):
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError:
            raise ValueError(f"{path}:{n}: not valid UTF-8") from None
        if not text.strip():
            continue
        try:
            row = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{n}: malformed JSON ({e.msg})") from None
        if not isinstance(row, dict):
            raise ValueError(f"{path}:{n}: expected a JSON object")
        for f in fields:
            if f not in row:
                raise ValueError(f"{path}:{n}: missing field {f!r}")
            value = row[f]
            if isinstance(value, bool) or not isinstance(value, (str, int, float)) \
                    or not str(value).strip():
                raise ValueError(f"{path}:{n}: field {f!r} must be a non-empty string or number")
        rows.append(row)
    if not rows:
        raise ValueError(f"{path}:1: empty file")
    return rows


def load_corpus(path):
    """Raw documents from JSONL lines `{"text": ...}`."""
    return [str(row["text"]) for row in _read_jsonl(path, ("text",))]


def load_eval_set(path):
    """Tasks (family 'jsonl', level 0) from JSONL lines `{"question": ..., "answer": ...}`;
    checked by normalised exact match (case, spacing, a trailing full stop)."""
    return [Task("jsonl", 0, str(row["question"]), str(row["answer"]).strip())
            for row in _read_jsonl(path, ("question", "answer"))]
