"""jsonl.py: your own data from JSONL files, for the corpus family and for evaluation.

Two readers, one per file kind; every line is one JSON object:
  --corpus FILE    `{"text": "..."}` (train.py): raw documents, the warm-up's language-modelling
                   text in place of the corpus family's generated stories;
  --data FILE      `{"question": "...", "answer": "..."}` (eval.py): held-out items scored by
                   exact match of the final answer (tasks.check), with no reference steps.
A bad file is refused with its path and line number; blank lines are skipped.

    python eval.py --model=runs/tiny/alive/model --data=my_eval.jsonl

Tests: python -m pytest -q tests/test_jsonl.py
"""
import json

import tasks


def _read_jsonl(path, fields):
    """One dict per non-blank line, each with string-able `fields`; ValueError names file:line."""
    with open(path, "rb") as fh:
        raw, rows = fh.read().split(b"\n"), []
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
            if type(row[f]) not in (str, int, float) or not str(row[f]).strip():
                raise ValueError(f"{path}:{n}: field {f!r} must be a non-empty string or number")
        rows.append(row)
    if not rows:
        raise ValueError(f"{path}:1: empty file")
    return rows


def load_corpus(path):
    """Raw documents from JSONL lines `{"text": ...}`."""
    return [str(row["text"]) for row in _read_jsonl(path, ("text",))]


def load_eval_set(path):
    """Tasks (family 'jsonl', level 0, checked by `tasks.check`) from `{"question":, "answer":}`
    lines."""
    return [tasks.Task("jsonl", 0, str(row["question"]), str(row["answer"]).strip())
            for row in _read_jsonl(path, ("question", "answer"))]
