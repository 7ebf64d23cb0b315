"""The JSONL readers: what a good file gives, and that a bad one is refused naming its line."""
import json
import re

import pytest

import jsonl
import tasks


def test_jsonl_loading_and_errors_name_file_and_line(tmp_path):
    good = tmp_path / "good.jsonl"
    good.write_text(json.dumps({"question": "2+2?", "answer": " Four "}) + "\n\n"
                    + json.dumps({"question": "Capital of France?", "answer": "Paris"}) + "\n")
    evals = jsonl.load_eval_set(good)
    assert [t.family for t in evals] == ["jsonl", "jsonl"] and evals[0].answer == "Four"
    assert tasks.check(evals[1], " paris. ") and not tasks.check(evals[1], "london")
    docs = tmp_path / "docs.jsonl"
    docs.write_text(json.dumps({"text": "ana has 3 pens."}) + "\n")
    assert jsonl.load_corpus(docs) == ["ana has 3 pens."]
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
            jsonl.load_corpus(path)
    with pytest.raises(ValueError, match=r"missing\.jsonl:1: missing field .question."):
        jsonl.load_eval_set(tmp_path / "missing.jsonl")
