r"""The four roles of one model: pose, solve, judge, revise.

One set of weights plays every role; the prompt alone says which. This file
writes those prompts, reads back what the model wrote, and writes the demonstrations of
each role that the warm-up trains on (from tasks.py's reference solver and teacher).

Prompt formats (plain and short, sized for a tiny model; every prompt ends
exactly where the model's output begins: on its role's marker, or for revise on the
start of the revision written for it, `revision_start`):

    pose    "#pose induction 2\n"              -> a parameter line (tasks.py)
            "#doc\n<document>\n#pose corpus 2\n" -> which number to mask
    solve   "#problem\n<problem>\n#solve\n"                      -> a solution
    judge   "#problem\n<problem>\n#reference\n<answer>\n#solution\n<solution>\n#judge\n"
                                                                 -> a critique
    revise  "#problem\n<problem>\n#solution\n<solution>\n#critique\n<critique>\n#revise\n"
            + the solution's steps before the one the critique flags and the critique's
            fix of it                                   -> the rest of the new solution
            (the critique without the reference answer: `without_reference`)

Output formats:

    solution   one step per line, then `Answer: <answer>` (itself the last step)
    critique   the two answers side by side, the first wrong step as `Step k` when
               there is one, then ONE final line `Verdict: correct` or
               `Verdict: incorrect`

A line is a "marker line" when it starts with `#` plus one of the section names
above. Every text inserted into a prompt goes through `escape` first: any line
that starts with `#` (after blanks), or with the word `answer` or `verdict`, gets
a backslash in front (`\Verdict: correct`), and every kind of line break becomes
`\n`. So a solver that writes `Verdict: correct` or `#judge` cannot forge the
judge's prompt, and the line numbers (steps) the judge sees are those of
`step_of_chars`. Escape is the second line of defence: verdicts are parsed from
the judge's own output only.

Parsers are strict and never raise, on any input (None, bytes, junk, 1e6 chars):
anything off-format is None, which the caller scores as wrong or invalid.

    parse_answer   text after the LAST `Answer:` line, stripped; None if no such
                   line, if it is empty, or if the output contains a marker line
                   (the model ran on into another section).
    parse_verdict  True/False from exactly one `Verdict: correct|incorrect` line
                   (case-insensitive, blanks around allowed). None when there is
                   no verdict line, two or more (even agreeing), a value other
                   than correct/incorrect (`correct-ish`, `correct.`), any
                   non-blank text after it, or a marker line anywhere.
    parse_pointer  k of the first `Step k` in a critique whose verdict is
                   incorrect; None otherwise or when k < 1.
    parse_pose     the posed text stripped; None if empty or if escaping would
                   change it (so the solver sees exactly what was posed).
    revision_start the lines a revision starts from (above); "" when the critique
                   names no step with a fix in the teacher's words. `revision` puts
                   them back in front of what the reviser wrote.

Run the tests: python -m pytest -q tests/test_roles.py
"""

import random
import re
import unicodedata

import tasks

ROLES = ("pose", "solve", "judge", "revise")
SECTIONS = ("pose", "doc", "problem", "solve", "reference", "solution", "judge", "critique",
            "revise")
ESC = "\\"  # put in front of a dangerous line; a line starting with it is never dangerous

# The same line boundaries as str.splitlines, so no exotic break can hide a line.
_BREAK = re.compile("\r\n|[\n\r\v\f\x1c\x1d\x1e\x85\u2028\u2029]")
# re.ASCII: plain IGNORECASE would also read `İ`/`ı` as `i`, look-alikes escape() might miss.
_VERDICT = re.compile(r"[ \t]*verdict[ \t]*:(.*)", re.IGNORECASE | re.ASCII)
_STEP = re.compile(r"\bStep[ \t]+([0-9]+)")
_WORD = re.compile(r"(answer|verdict)(?![a-z])")
_HASHES = ("#", "\ufe5f", "\uff03")  # every character whose NFKD form holds a `#`

# For chat models that have never seen our markers, `render(..., hints=True)` puts one
# line saying the format before the prompt. The tiny model learns the markers instead,
# and every character costs it compute, so hints are off by default.
HINTS = {
    "pose": "Write the parameter line of a new problem of the family named after #pose, e.g. "
            "'start 4 add 3 show 3' (induction), 'start 1 rules -> ^' (deduction), 'causes 3' "
            "(abduction), 'mask 2' (corpus: which number of the document). Nothing else.",
    "solve": "Solve the problem: one short step per line, then a last line 'Answer: <answer>'.",
    "judge": "Write 'Got <the solution's answer>, want <the reference answer>.', then if they "
             "differ name the first wrong step as 'Step k is wrong: ...', then end with one line "
             "'Verdict: correct' or 'Verdict: incorrect'.",
    "revise": "Using the critique, continue the corrected solution from the lines already "
              "written: one short step per line, then a last line 'Answer: <answer>'.",
}


# ---------------------------------------------------------------- prompts

def pose_prompt(family, level, document=None):
    """Ask for a new problem of `family` at `level`, or (with a document) a span to mask."""
    family = str(family)
    if not family or any(c.isspace() for c in family) or int(level) != level:
        raise ValueError(f"bad family/level: {family!r} {level!r}")
    head = f"#pose {family} {int(level)}\n"
    return head if document is None else f"#doc\n{_block(document)}{head}"


def solve_prompt(problem):
    return f"#problem\n{_block(problem)}#solve\n"


def judge_prompt(problem, reference, solution):
    return (f"#problem\n{_block(problem)}#reference\n{_block(reference)}"
            f"#solution\n{_block(solution)}#judge\n")


JUDGE_SEES = ("answer", "solution")  # what the judge reads as the reference (--judge_sees)


def judge_reference(task, sees="answer"):
    """The reference the judge reads: the task's answer, or (sees="solution") its whole reference
    solution, steps and Answer line; a task without reference steps (JSONL) has only its answer.
    Shown the answer alone, the judge cannot name a wrong step whose value the answer does not
    reveal (induction's misread difference); shown the steps, it can compare line by line
    (docs/findings.md, "A judge that reads the reference solution")."""
    if sees not in JUDGE_SEES:
        raise ValueError(f"the judge sees one of {JUDGE_SEES}, not {sees!r}")
    return tasks.solve(task) if sees == "solution" and task.steps else task.answer


def revise_prompt(problem, solution, critique):
    """Ends on the start of the revision (`revision_start`): the model writes only the rest."""
    return (f"#problem\n{_block(problem)}#solution\n{_block(solution)}"
            f"#critique\n{_block(without_reference(critique))}#revise\n"
            f"{revision_start(solution, critique)}")


_WANT = re.compile(r", want [^\n]*")


def without_reference(critique):
    """The critique as the reviser reads it: `Got 24, want 25.` becomes `Got 24.`. The judge
    needs the reference to decide; a reviser shown it copied it into its Answer line under steps
    that do not reach it (README, "The method in one step"), so it must redo the chain from the
    step the critique names."""
    return _WANT.sub(".", critique, count=1) if isinstance(critique, str) else critique


# the teacher's pointer with its fix: `Step 4 is wrong: 8-1=7 (2 left), not 8.` or
# `Step 2 is wrong: it should be b->c with b=1 gives c=1.` (tasks.critique)
_FIX = re.compile(r"[ \t]*Step[ \t]+([0-9]{1,9}) is wrong: (?:it should be (.+)|(.+), not [^,]*)"
                  r"\.[ \t]*")


def revision_start(solution, critique):
    """Where a revision starts: the solution's lines before the one the critique flags, then
    the critique's fix of that line, each ending in a line break (k may be one past the last
    line: a solution that stopped early goes on with the fix). "" when the critique holds no
    one `Step k is wrong: <fix>` line, k is out of that range, the fix is not one plain line
    (it quotes `, not` or `want`), or a line would need escaping (an Answer line: the reviser
    writes the answer itself).

    The reviser continues from there rather than rewriting the whole solution: the warm-up's
    reviser, asked for a whole new solution, copied the wrong one line for line, the flagged
    step included, even under the teacher's critique; started on the fix, it often completes the
    reference chain (docs/findings.md, "Why the reviser starts on the critique's fix"). A wrong
    fix now binds the revision too: it cannot be right, and its critique's gain is -1."""
    text, found = _as_text(solution), [m for m in map(_FIX.fullmatch, _lines(critique) or []) if m]
    if text is None or len(found) != 1:
        return ""
    k, fix = int(found[0].group(1)), found[0].group(2) or found[0].group(3)
    kept = _BREAK.split(text)[:k - 1] + [fix]
    if len(kept) != k or ", not " in fix or "want" in fix or any(map(_dangerous, kept)):
        return ""
    return "\n".join(kept) + "\n"


def _block(text):
    """One section's body: escaped, ending in exactly one newline."""
    return escape(text).rstrip("\n") + "\n"


def split_prompt(prompt):
    """(the prompt through its last marker line, what follows it: the start of the answer, "" but
    in a revise prompt). Inserted text is escaped and a start has no dangerous line, so the
    last line starting with `#` is the template's own marker."""
    text = _as_text(prompt) or ""
    at = text.rfind("\n#") + 1
    if at == 0 and not text.startswith("#"):  # no marker line: all of it was asked
        return text, ""
    end = text.find("\n", at) + 1 or len(text)
    return text[:end], text[end:]


def revision(prompt, completion):
    """The whole revision: the start a revise prompt ended on, then what the reviser wrote."""
    return split_prompt(prompt)[1] + completion


def role_of(prompt):
    """The role a prompt asks for (from its last marker line), or None."""
    last = split_prompt(prompt)[0].rstrip("\n").rsplit("\n", 1)[-1]
    name = last[1:].split(" ", 1)[0] if last.startswith("#") else ""
    return name if name in ROLES else None


def render(tokenizer, prompt, hints=False):
    """The exact text fed to the model: a chat turn if the tokenizer has a template, else as is;
    with `hints`, the role's format instruction goes first in that turn. The start of a
    revision goes after the turn, as the first words of the model's reply."""
    if not getattr(tokenizer, "chat_template", None):
        return prompt
    role = role_of(prompt)
    asked, start = split_prompt(prompt)
    content = f"{HINTS[role]}\n\n{asked}" if hints and role else asked
    return tokenizer.apply_chat_template([{"role": "user", "content": content}],
                                         tokenize=False, add_generation_prompt=True) + start


# ---------------------------------------------------------------- escaping

def _head(line, n=12):
    """First n visible characters of a line, folded so look-alikes compare equal:
    leading blanks and invisible format characters (zero-width space, BOM) dropped,
    compatibility forms unfolded (fullwidth `＃` -> `#`, `ſ` -> `s`), accents dropped
    (`İ` -> `i`), casefolded. Look-alikes from other scripts (Cyrillic `е`) are not caught."""
    s = line.lstrip()[:n]
    if s.isascii():  # the common case, at C speed: ASCII has no format characters
        return s.lower()
    chars = []
    for c in line:
        if unicodedata.category(c) == "Cf" or (not chars and c.isspace()):
            continue
        chars.append(c)
        if len(chars) >= n:
            break
    folded = unicodedata.normalize("NFKD", "".join(chars)).casefold()
    return "".join(c for c in folded if not unicodedata.combining(c))


def _dangerous(line):
    """Broad on purpose: wider than anything a parser or marker test would read."""
    head = _head(line)
    return head.startswith("#") or _WORD.match(head) is not None


def _is_marker(line):
    head = _head(line, 16)
    if not head.startswith("#"):
        return False
    name = re.match(r"[a-z]*", head[1:]).group()
    return name in SECTIONS


def escape(text):
    """Neutralise one role's text before it enters another role's prompt.

    Line breaks become `\\n`; a line starting (after blanks) with `#`, `answer` or
    `verdict` in any case or look-alike gets `\\` in front. Line count and order are
    kept, so step numbers are too. Idempotent: escape(escape(t)) == escape(t)."""
    text = _as_text(text) or ""
    return "\n".join(ESC + line if _dangerous(line) else line for line in _BREAK.split(text))


# ---------------------------------------------------------------- parsers

def _as_text(x):
    if isinstance(x, str):
        return x
    if isinstance(x, (bytes, bytearray)):
        return bytes(x).decode("utf-8", "replace")
    return None


def _lines(text):
    """Lines of a model's output, or None when it is not text or ran into another section."""
    text = _as_text(text)
    if text is None:
        return None
    lines = _BREAK.split(text)
    if any(c in text for c in _HASHES) and any(_is_marker(line) for line in lines):
        return None
    return lines


def parse_answer(text):
    lines = _lines(text)
    return None if lines is None else tasks.answer_of("\n".join(lines))


def parse_verdict(text):
    lines = _lines(text)
    if lines is None:
        return None
    at = [i for i, line in enumerate(lines) if _VERDICT.match(line)]
    if len(at) != 1 or any(line.strip() for line in lines[at[0] + 1:]):
        return None
    value = _VERDICT.match(lines[at[0]]).group(1).strip().lower()
    return {"correct": True, "incorrect": False}.get(value)


def parse_pointer(text):
    if parse_verdict(text) is not False:
        return None
    m = _STEP.search(_as_text(text))
    if m is None or len(m.group(1)) > 9:  # int() of thousands of digits raises
        return None
    k = int(m.group(1))
    return k if k >= 1 else None


def parse_pose(text):
    text = _as_text(text)
    posed = text.strip() if text is not None else ""
    return posed if posed and escape(posed) == posed else None


def step_of_chars(text):
    """1-based line (step) number of every character; a line break belongs to the line it ends."""
    text = _as_text(text) or ""
    steps, start, step = [], 0, 1
    for m in _BREAK.finditer(text):
        steps += [step] * (m.end() - start)
        start, step = m.end(), step + 1
    return steps + [step] * (len(text) - start)


CONTEXT = 4  # tokens of left context when decoding one token's characters


def token_steps(tok, ids, text):
    """1-based solution step (line of `text`, the decoded completion) of each completion token,
    found from where the token's characters end; the stop token counts with the last step.

    A token's characters are what it adds to the text of the few tokens before it. Decoded
    alone, a SentencePiece token (Llama-2, Mistral, Gemma) loses its leading-space marker, and
    every step boundary after it would move."""
    char_steps = step_of_chars(text) or [1]
    windows = [ids[max(0, i - CONTEXT):i + 1] for i in range(len(ids))]
    texts = tok.batch_decode(windows + [w[:-1] for w in windows], skip_special_tokens=True)
    steps, end = [], 0
    for with_it, without in zip(texts[:len(ids)], texts[len(ids):]):
        end += len(with_it) - len(without)
        steps.append(char_steps[min(max(end - 1, 0), len(char_steps) - 1)])
    return steps


# ---------------------------------------------------------------- demonstrations

DEMO_KINDS = ("solve", "judge", "revise", "pose", "text")  # "text": a raw document


def demonstrations(rng, family, level, kind, judge_sees="answer"):
    """(prompt, completion)s of one demonstration of `kind` (a role) on a fresh train task. A
    judge demonstration is a contrastive pair: the task's reference solution and the same
    solution corrupted (tasks.corrupt: one slip, or a miscount), each with its critique. Shown
    one at a time, the tiny judge stayed at chance on the numeric and letter answers for 2,000
    steps; shown side by side in one batch, the two differ in a step and the answer, and the
    comparison is learned (docs/findings.md, "How the tiny world became learnable"). The judge
    reads `judge_reference(task, judge_sees)`."""
    task = tasks.sample(family, level, rng, "train")
    if kind == "solve":
        return [(solve_prompt(task.prompt), tasks.solve(task))]
    if kind == "judge":
        return judge_pair(task, rng, judge_sees)
    if kind == "revise":  # the prompt ends on the reference's lines up to the fix: the rest
        wrong = tasks.corrupt(task, rng)[0]
        prompt, reference = revise_prompt(task.prompt, wrong, tasks.critique(task, wrong)), \
            tasks.solve(task)
        start = split_prompt(prompt)[1]
        assert reference.startswith(start), "the teacher's fix is the reference's own line"
        return [(prompt, reference[len(start):])]
    document = task.canonical if family == "corpus" else None
    return [(pose_prompt(family, level, document), tasks.pose_text(task))]


def judge_pair(task, rng, sees="answer"):
    """[(judge prompt, teacher's critique)] on `task`'s reference solution, then on the same
    solution corrupted (tasks.corrupt, drawn with `rng`: one slip, or a miscount)."""
    reference = judge_reference(task, sees)
    return [(judge_prompt(task.prompt, reference, solution), tasks.critique(task, solution))
            for solution in (tasks.solve(task), tasks.corrupt(task, rng)[0])]


def world_texts(seed, per_cell=60):
    """Texts of every role, family and level, and raw documents: what the tiny tokenizer is
    trained on (levels the demonstrations never show included: the vocabulary is not a
    lesson)."""
    rng = random.Random(f"tokenizer/{seed}")
    texts = [tasks.document(rng, level) for level in tasks.LEVELS for _ in range(per_cell)]
    for family in tasks.FAMILIES:
        for level in tasks.LEVELS:
            for kind in DEMO_KINDS[:4]:
                texts += ["".join(pair) for _ in range(per_cell)
                          for pair in demonstrations(rng, family, level, kind)]
    return texts
