"""train.py end to end on a tiny model: every stage, resume, kill -9 and torchrun.

Small step counts, a one-layer model, short completions: seconds per stage.
Run: python -m pytest -q tests/test_train.py
"""
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

import merge as merging
import model as M
import tasks
import train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FAST = ["--max_new_tokens=24", "--seeds=2", "--posings=2", "--solutions=2", "--batch=8",
        "--eval_n=8", "--save_every=1", "--mistakes_pool=8"]


def run(*args):
    return train.run(train.parse_args(list(args) + FAST))


def lines(path):
    with open(path) as f:
        return [json.loads(x) for x in f]


def weights(model_dir):
    return load_file(os.path.join(model_dir, "model.safetensors"))


def test_warmup_writes_model_metrics_and_learns_something(tiny, tmp_path):
    out = str(tmp_path / "warm")
    run("--stage=warmup", f"--model={tiny}", f"--out={out}", "--steps=3")
    log = lines(os.path.join(out, "metrics.jsonl"))
    assert [x["step"] for x in log] == [0, 1, 2]
    for key in ("loss", "entropy", "grad_norm", "tokens_per_s", "stage"):
        assert key in log[0]
    assert all(x["loss"] > 0 and x["skipped"] == 0 for x in log)
    before, after = weights(tiny), weights(os.path.join(out, "model"))
    assert any(not torch.equal(before[k], after[k]) for k in before)


@pytest.mark.parametrize("reward", ["verbal", "scalar"])
def test_alive_both_rewards(tiny, tmp_path, reward):
    out = str(tmp_path / reward)
    run("--stage=alive", f"--model={tiny}", f"--out={out}", "--steps=2", f"--reward={reward}")
    log = lines(os.path.join(out, "metrics.jsonl"))
    assert len(log) == 2 and os.path.isfile(os.path.join(out, "model", "model.safetensors"))
    assert ("pose_validity" in log[0]) == (reward == "verbal")
    assert "level/deduction" in log[0] and "acc/solve" in log[0]
    assert all(x["clip_frac"] == 0.0 for x in log)  # one epoch: the ratio is 1, nothing clips


def test_align_merge_domain_refine(tiny, tmp_path):
    for ability in ("deduction", "induction", "abduction"):
        run("--stage=align", f"--ability={ability}", f"--model={tiny}",
            f"--out={tmp_path}/align_{ability}", "--steps=1")
    run("--stage=merge", f"--model={tiny}", f"--out={tmp_path}/merged", "--merge_method=ties")
    merged = weights(f"{tmp_path}/merged/model")
    assert merged.keys() == weights(tiny).keys()
    run("--stage=domain", f"--model={tmp_path}/merged/model", f"--out={tmp_path}/domain",
        "--steps=1")
    run("--stage=refine", f"--model={tiny}", f"--out={tmp_path}/refine", "--steps=1")
    for stage in ("domain", "refine"):
        assert os.path.isfile(f"{tmp_path}/{stage}/model/model.safetensors")
        assert len(lines(f"{tmp_path}/{stage}/metrics.jsonl")) == 1


def test_resume_repeats_the_uninterrupted_run(tiny, tmp_path, monkeypatch):
    """A crash after step 2 was logged but before its checkpoint: the resumed run redoes
    step 2, its logs hold each step once, and it ends with the uninterrupted run's weights."""
    straight, resumed = str(tmp_path / "straight"), str(tmp_path / "resumed")
    save_state = merging.save_state

    def crash_saving_step_3(policy, optimizer, path, meta):
        if meta["step"] == 3:
            raise RuntimeError("simulated crash")
        return save_state(policy, optimizer, path, meta)
    for stage in ("warmup", "mistakes", "alive"):  # mistakes: its pool in the saved state
        run(f"--stage={stage}", f"--model={tiny}", f"--out={straight}/{stage}", "--steps=4")
        monkeypatch.setattr(merging, "save_state", crash_saving_step_3)
        with pytest.raises(RuntimeError, match="simulated crash"):
            run(f"--stage={stage}", f"--model={tiny}", f"--out={resumed}/{stage}", "--steps=4")
        monkeypatch.setattr(merging, "save_state", save_state)
        assert [x["step"] for x in lines(f"{resumed}/{stage}/metrics.jsonl")] == [0, 1, 2]
        run(f"--stage={stage}", f"--model={tiny}", f"--out={resumed}/{stage}", "--steps=4",
            "--resume")
        a, b = weights(f"{straight}/{stage}/model"), weights(f"{resumed}/{stage}/model")
        for k in a:
            assert torch.equal(a[k], b[k]), (stage, k)
        assert [x["step"] for x in lines(f"{resumed}/{stage}/metrics.jsonl")] == [0, 1, 2, 3]
    assert [x["step"] for x in lines(f"{resumed}/alive/samples.jsonl")] == [0, 1, 2, 3]


def test_kill_9_loses_at_most_the_work_since_the_last_checkpoint(tiny, tmp_path):
    out = str(tmp_path / "killed")
    cmd = [sys.executable, os.path.join(ROOT, "train.py"), "--stage=warmup", f"--model={tiny}",
           f"--out={out}", "--steps=400", "--threads=1"] + FAST
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    meta = os.path.join(out, "state", "meta.json")
    deadline = time.time() + 120
    while not os.path.exists(meta) and time.time() < deadline:
        time.sleep(0.2)
    time.sleep(0.7)  # let it get somewhere in the middle of later steps or saves
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    M.recover_dir(os.path.join(out, "state"))  # killed between replace_dir's two renames?
    with open(meta) as f:
        saved = json.load(f)["step"]
    assert 1 <= saved < 400
    run("--stage=warmup", f"--model={tiny}", f"--out={out}", f"--steps={saved + 2}", "--resume")
    steps = [x["step"] for x in lines(os.path.join(out, "metrics.jsonl"))]
    assert steps == list(range(saved + 2))
    M.load(os.path.join(out, "model"))


@pytest.mark.parametrize("stage, args, run_dir", [
    ("alive", ["--steps=2", "--checkpointing=on"], ""),
    ("refine", ["--steps=2"], ""),
    ("mistakes", ["--steps=2"], ""),  # each rank solves a share of the pool, gathered
    ("alive", ["--steps=2", "--judged=one_all_wrong", "--judge_sees=solution"], ""),
    ("all", ["--warmup_steps=2", "--rl_steps=2"], "alive"),  # ranks leave, rank 0 evaluates
])
def test_torchrun_two_ranks(tiny, tmp_path, stage, args, run_dir):
    """Ranks may sample different numbers of valid posings, revisions and refinement rounds; the
    run must still make the same collective calls on both and finish. The alive run (FSDP2 with
    activation checkpointing) then resumes in one process: the sharded checkpoint reshards to
    another world size (the per-rank RNG streams are not restored there)."""
    out = str(tmp_path / "ddp")
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=ROOT)
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
                             "--standalone", os.path.join(ROOT, "train.py"), f"--stage={stage}",
                             f"--model={tiny}", f"--out={out}", "--threads=1"] + args + FAST,
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert [x["step"] for x in lines(os.path.join(out, run_dir, "metrics.jsonl"))] == [0, 1]
    policy, _ = M.load(os.path.join(out, run_dir, "model"))
    assert all(torch.isfinite(p).all() for p in policy.parameters())
    if stage == "all":
        assert "| metric | warmup | alive |" in open(os.path.join(out, "report.md")).read()
    if stage == "mistakes":  # every rank holds the whole pool, saved for a resume
        with open(os.path.join(out, "state", "meta.json")) as f:
            pool = json.load(f)["state"]["mistakes"]
        assert len(pool) == 8 and all(isinstance(text, str) for text in pool)
    if "--checkpointing=on" in args:  # the FSDP2 checkpoint, resumed in one process
        run("--stage=alive", f"--model={tiny}", f"--out={out}", "--steps=3", "--resume")
        assert [x["step"] for x in lines(os.path.join(out, "metrics.jsonl"))] == [0, 1, 2]


def test_all_compare_and_meta_write_their_tables(tiny, tmp_path, capsys):
    out = str(tmp_path / "pipeline")
    run("--stage=all", f"--model={tiny}", f"--out={out}", "--warmup_steps=2", "--rl_steps=1")
    table = open(os.path.join(out, "report.md")).read()
    assert "| metric | warmup | alive |" in table and "levels 3 and up" in table
    for name in ("warmup", "alive"):
        report = json.load(open(os.path.join(out, f"eval_{name}.json")))
        correct = report["accuracy"]["overall"] * 8  # a share of 8 items: a whole count
        assert report["n"] == 8 and abs(correct - round(correct)) < 1e-9 and 0 <= correct <= 8
    run("--stage=compare", f"--model={tiny}", f"--out={out}", "--compare_minutes=0",
        "--compare_eval_n=8")
    reports = json.load(open(os.path.join(out, "compare.json")))
    assert list(reports) == ["warmup", "alive", "scalar", "sft"]
    table = open(os.path.join(out, "compare.md")).read()
    assert "| metric | warmup | alive | scalar | sft |" in table
    assert "| all-wrong groups / groups (rescued) | deduction | induction | abduction | corpus |" \
        in table and "\n| alive | " in table and "\n| scalar | " in table
    for arm in ("alive", "scalar", "sft"):  # a zero budget: each arm stops after its first step
        assert len(lines(os.path.join(out, f"cmp_{arm}", "metrics.jsonl"))) == 1
    assert "Rerun them step for step: --compare_steps=1,1,1" in table
    # the same comparison by step counts (test_fixed_steps_rerun_a_timed_arm_... says why)
    for steps in ("1,1,1", "2,1,3"):
        again = str(tmp_path / steps.replace(",", "_"))
        shutil.copytree(os.path.join(out, "warmup"), os.path.join(again, "warmup"))
        run("--stage=compare", f"--out={again}", f"--compare_steps={steps}", "--compare_eval_n=8")
        assert [len(lines(os.path.join(again, f"cmp_{arm}", "metrics.jsonl")))
                for arm in ("alive", "scalar", "sft")] == [int(n) for n in steps.split(",")]
        assert f"--compare_steps={steps}" in open(os.path.join(again, "compare.md")).read()
    # --mistakes_steps: the stage on the warm-up's own mistakes, then every arm from its model
    again = str(tmp_path / "mistakes")
    shutil.copytree(os.path.join(out, "warmup"), os.path.join(again, "warmup"))
    run("--stage=compare", f"--out={again}", "--compare_steps=1,1,1", "--compare_eval_n=8",
        "--mistakes_steps=2")
    assert list(json.load(open(os.path.join(again, "compare.json")))) == [
        "warmup", "mistakes", "alive", "scalar", "sft"]
    assert len(lines(os.path.join(again, "mistakes", "metrics.jsonl"))) == 2
    printed = capsys.readouterr().out
    assert "| metric | warmup | mistakes | alive | scalar | sft |" in printed
    assert all(f"[{stage}] {again}/mistakes/model -> {again}/cmp_{arm}" in printed
               for stage, arm in (("alive", "alive"), ("alive", "scalar"), ("sft", "sft")))
    for arm in ("alive", "scalar", "sft"):  # the timed arms, step for step
        timed, fixed = (weights(os.path.join(d, f"cmp_{arm}", "model"))
                        for d in (out, str(tmp_path / "1_1_1")))
        assert all(torch.equal(timed[k], fixed[k]) for k in timed)
    run("--stage=meta", f"--out={out}", "--steps=1", "--compare_eval_n=8")  # the same warm-up
    reports = json.load(open(os.path.join(out, "meta.json")))
    assert list(reports) == ["warmup", "deduction", "induction", "abduction", "merged", "domain"]
    assert "| accuracy, abduction |" in open(os.path.join(out, "meta.md")).read()
    # task arithmetic with weights 1/3: the merge is the mean of the three aligned models
    aligned = [weights(os.path.join(out, f"align_{a}", "model")) for a in tasks.FAMILIES[:3]]
    for name, tensor in weights(os.path.join(out, "merged", "model")).items():
        torch.testing.assert_close(tensor, sum(w[name] for w in aligned) / 3)
    assert len(lines(os.path.join(out, "domain", "metrics.jsonl"))) == 1


def test_fixed_steps_rerun_a_timed_arm_because_its_rate_has_no_horizon():
    """A timed arm (no step count) and an N-step run take the same rate at every step, so
    --compare_steps=N reruns the first N steps of a timed comparison; the warm-up's decay would
    not (it is never a comparison arm)."""
    cfg = train.parse_args(["--lr_warmup=10"])
    for stage in ("alive", "sft"):
        assert [train.lr_factor(cfg, stage, s, 50) for s in range(50)] == \
            [train.lr_factor(cfg, stage, s, None) for s in range(50)]
    cfg.judge_first = 0  # (a judge-only phase stays at the peak too)
    assert train.lr_factor(cfg, "warmup", 40, 50) < train.lr_factor(cfg, "warmup", 40, None)


def test_the_tiny_default_takes_its_sizes_from_flags(tmp_path):
    cfg = train.parse_args([f"--out={tmp_path}", "--tiny_layers=3", "--tiny_hidden=48",
                            "--tiny_heads=4"])
    policy, tok = M.load(train.base_model(cfg))
    config = policy.lm.config
    assert (config.num_hidden_layers, config.hidden_size, config.num_attention_heads,
            config.intermediate_size) == (3, 48, 4, 144)
    assert tok.tokenize("Find a,b:") == ["Find", " ", "a", ",", "b", ":"]
