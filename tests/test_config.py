"""train.py's flat config: every bad flag is refused before any model is built, with one line
that names it, never a traceback from deep inside a later stage.

Run: python -m pytest -q tests/test_config.py
"""
import os
import re
import subprocess
import sys

import pytest

import train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("args, message", [
    (["--stage=nope"], "valid: warmup"),
    (["--nope=1"], "valid keys"),
    (["--steps=many"], "not a valid int"),
    (["--demo_levels=1,7"], "levels are (1, 2, 3, 4, 5)"),
    (["--stage=alive", "--model=/no/such/dir"], "not a model directory"),
])
def test_bad_input_gives_one_clear_line(args, message, tmp_path):
    """The whole command line, as a user runs it: a message on stderr, no traceback."""
    result = subprocess.run([sys.executable, os.path.join(ROOT, "train.py"), *args,
                             f"--out={tmp_path}"], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode != 0
    assert message in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize("arg, message", [
    ("--revise_levels=0", "levels are (1, 2, 3, 4, 5)"),
    ("--demo_mix=1,2", "needs 5 weights"),
    ("--demo_mix=0,0,0,0,0", "not all 0"),
    ("--verdict_weight=-1", "--verdict_weight=-1.0 must be >= 0"),
    # each of these crashed or trained on nothing, steps or stages later
    ("--top_p=0", "--top_p=0.0 must be in (0, 1]"),         # every token masked: bad index
    ("--max_new_tokens=0", "--max_new_tokens=0 must be >= 1"),  # a gather on no columns
    ("--micro_batch=0", "--micro_batch=0 must be >= 1"),    # range() with step 0
    ("--all_wrong_revisions=0", "--all_wrong_revisions=0 must be >= 1"),  # no revision there
    ("--save_every=0", "--save_every=0 must be >= 1"),      # step % 0 after the first step
    ("--temperature=-0.5", "--temperature=-0.5 must be >= 0"),  # sampled -logits/0.5
    ("--grad_clip=0", "--grad_clip=0.0 must be > 0"),       # every gradient scaled to 0
    ("--merge_density=0", "--merge_density=0.0 must be in (0, 1]"),  # after three align runs
    ("--rl_lr=-1e-5", "--rl_lr=-1e-05 must be > 0"),
    ("--merge_models=/no/a,/no/b", "--merge_models: no such directory /no/a, /no/b"),
    ("--compare_steps=177,474", "--compare_steps='177,474' needs three step counts > 0"),
    ("--compare_steps=1,0,2", "--compare_steps='1,0,2' needs three step counts > 0"),
    ("--compare_steps=1,2,3", "--compare_steps is for --stage=compare, not --stage=all"),
    ("--all_wrong_revisions=2 --temperature=0", "writes the same revision each time"),
    ("--audits --judged=all_wrong", "--audits with --judged=all_wrong"),  # audits never trained
    ("--audits --judged=one_all_wrong", "--audits with --judged=one_all_wrong"),
    ("--judged=some", "--judged='some'; valid: all, all_wrong, one_all_wrong"),
    ("--judge_sees=steps", "--judge_sees='steps'; valid: answer, solution"),
    ("--stage=mistakes", "--stage=mistakes needs --steps=N (or --mistakes_steps=N)"),
    ("--mistakes_pool=0", "--mistakes_pool=0 must be >= 1"),  # rng.choice of an empty pool
    ("--mistakes_lr=0", "--mistakes_lr=0.0 must be > 0"),
    ("--critic=oracle", "--critic='oracle'; valid: judge, teacher"),
])
def test_out_of_range_values_are_refused_by_name(arg, message):
    with pytest.raises(SystemExit, match=re.escape(message)):
        train.parse_args(arg.split())


def test_the_defaults_and_their_edges_are_accepted():
    assert train.parse_args([]) == train.Config()
    cfg = train.parse_args(["--top_p=1", "--temperature=0", "--posings=0", "--judge_anchor=0",
                            "--verdict_weight=0", "--merge_density=1"])
    assert (cfg.top_p, cfg.temperature, cfg.posings, cfg.judge_anchor, cfg.verdict_weight,
            cfg.merge_density) == (1, 0, 0, 0, 0, 1)


def test_bad_corpus_file_names_file_and_line(tmp_path):
    bad = tmp_path / "corpus.jsonl"
    bad.write_text('{"text": "fine"}\n{"txt": "no text field"}\n')
    with pytest.raises(SystemExit, match=r"corpus.jsonl:2"):
        train.parse_args(["--stage=warmup", f"--corpus={bad}"])
