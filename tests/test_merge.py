"""Tests of merge.py: each method against a closed form written here independently, the
TIES sign election on a case worked by hand, DARE's determinism and unbiasedness, sharded
inputs, a merged tiny Llama that loads and generates, atomic output, and clear errors.

Run: python -m pytest -q tests/test_merge.py
"""

import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file, save_file

import merge as merge_mod
from merge import merge, merge_tensor

CONFIG = {"model_type": "llama", "architectures": ["LlamaForCausalLM"]}
SHAPES = {"a.weight": (6, 5), "b.bias": (7,), "c.scale": (3, 4, 2)}
WEIGHTS = [0.5, 1.0, 2.0]


def write_dir(path, tensors, n_shards=1, config=CONFIG):
    """A minimal Hugging Face-style directory: safetensors (optionally sharded) + config."""
    os.makedirs(path, exist_ok=True)
    names = sorted(tensors)
    if n_shards == 1:
        save_file(tensors, os.path.join(path, "model.safetensors"), metadata={"format": "pt"})
    else:
        weight_map = {}
        for s in range(n_shards):
            file = f"model-{s + 1:05d}-of-{n_shards:05d}.safetensors"
            part = {n: tensors[n] for n in names[s::n_shards]}
            save_file(part, os.path.join(path, file), metadata={"format": "pt"})
            weight_map.update({n: file for n in part})
        with open(os.path.join(path, "model.safetensors.index.json"), "w") as f:
            json.dump({"metadata": {}, "weight_map": weight_map}, f)
    if config is not None:
        with open(os.path.join(path, "config.json"), "w") as f:
            json.dump(config, f)
    return str(path)


@pytest.fixture
def dirs(tmp_path):
    """A base and three fine-tunes of it (float32 tensors plus an integer buffer)."""
    g = torch.Generator().manual_seed(0)
    base = {n: torch.randn(s, generator=g) for n, s in SHAPES.items()}
    base["pos_ids"] = torch.arange(5)
    models = []
    for i in range(3):
        m = {n: t + torch.randn(t.shape, generator=g) for n, t in base.items() if n != "pos_ids"}
        m["pos_ids"] = torch.arange(5) + 10 * (i + 1)  # must not leak into the merge
        models.append(m)
    base_dir = write_dir(tmp_path / "base", base)
    with open(os.path.join(base_dir, "tokenizer.json"), "w") as f:
        f.write('{"dummy": true}')
    model_dirs = [write_dir(tmp_path / f"m{i}", m) for i, m in enumerate(models)]
    return base, models, base_dir, model_dirs, tmp_path


def run(dirs, method, weights=WEIGHTS, **kw):
    base, models, base_dir, model_dirs, tmp = dirs
    out = str(tmp / f"out_{method}")
    merge(base_dir, model_dirs, weights, method, out=out, **kw)
    return load_file(os.path.join(out, "model.safetensors")), out


def ties_reference(base, thetas, weights, density):
    """TIES written out directly: threshold trim, sign of the weighted sum (0 -> +),
    weighted mean of the agreeing entries, zero where none agree."""
    trimmed = []
    for t in thetas:
        d = t - base
        k = max(1, int(density * d.numel()))
        threshold = d.abs().flatten().sort(descending=True).values[k - 1]
        trimmed.append(torch.where(d.abs() >= threshold, d, torch.zeros_like(d)))
    weighted = [w * d for w, d in zip(weights, trimmed)]
    total = sum(weighted)
    gamma = torch.where(total >= 0, torch.ones_like(total), -torch.ones_like(total))
    num = sum(torch.where(wd.sign() == gamma, wd, torch.zeros_like(wd)) for wd in weighted)
    den = sum(torch.where(wd.sign() == gamma, torch.full_like(wd, w), torch.zeros_like(wd))
              for w, wd in zip(weights, weighted))
    return base + torch.where(den == 0, torch.zeros_like(num), num / den)


def test_linear_is_normalised_weighted_mean(dirs):
    base, models, *_ = dirs
    out, out_dir = run(dirs, "linear")
    total = sum(WEIGHTS)
    for name in SHAPES:
        expect = sum(w / total * m[name] for w, m in zip(WEIGHTS, models))
        torch.testing.assert_close(out[name], expect)
    assert torch.equal(out["pos_ids"], base["pos_ids"])
    # Scaling all weights changes nothing for a normalised mean.
    out2, _ = run(dirs, "linear", weights=[3 * w for w in WEIGHTS])
    torch.testing.assert_close(out2["a.weight"], out["a.weight"])
    # Non-weight files come along.
    with open(os.path.join(out_dir, "tokenizer.json")) as f:
        assert json.load(f) == {"dummy": True}
    assert os.path.exists(os.path.join(out_dir, "config.json"))


def test_task_arithmetic_closed_form(dirs):
    base, models, *_ = dirs
    out, _ = run(dirs, "task_arithmetic")
    for name in SHAPES:
        expect = base[name] + sum(w * (m[name] - base[name]) for w, m in zip(WEIGHTS, models))
        torch.testing.assert_close(out[name], expect)
    assert torch.equal(out["pos_ids"], base["pos_ids"])


@pytest.mark.parametrize("density", [0.3, 1.0])
def test_ties_closed_form(dirs, density):
    base, models, *_ = dirs
    out, _ = run(dirs, "ties", density=density)
    for name in SHAPES:
        expect = ties_reference(base[name], [m[name] for m in models], WEIGHTS, density)
        torch.testing.assert_close(out[name], expect)
    assert torch.equal(out["pos_ids"], base["pos_ids"])


def test_ties_sign_election_by_hand():
    # base = 1 everywhere, weights (1, 1, 2), density 0.5 -> keep the top 2 of 4 per model.
    #   delta_1 = [ 4, -3,   0.1, 0.2]  -> trimmed [ 4, -3,  0, 0]
    #   delta_2 = [-2,  5,   0.3, 0.1]  -> trimmed [-2,  5,  0, 0]
    #   delta_3 = [ 1, -1.5, 0.5, 0.2]  -> trimmed [ 1, -1.5, 0, 0], weighted x2 [2, -3, 0, 0]
    # weighted sums: [4-2+2, -3+5-3, 0, 0] = [4, -1, 0, 0] -> elected signs [+, -, +, +]
    # entry 0: models 1, 3 agree -> (4 + 2) / (1 + 2) = 2     (model 2's -2 is dropped)
    # entry 1: models 1, 3 agree -> (-3 - 3) / (1 + 2) = -2   (model 2's 5, the largest, too)
    # entries 2, 3: trimmed in every model -> no agreeing entry -> stay at base.
    # merged = base + [2, -2, 0, 0] = [3, -1, 1, 1]  (task arithmetic would give [5, 0, ..])
    base = torch.ones(4)
    deltas = [[4, -3, 0.1, 0.2], [-2, 5, 0.3, 0.1], [1, -1.5, 0.5, 0.2]]
    thetas = [base + torch.tensor(d) for d in deltas]
    out = merge_tensor("x", base, thetas, [1, 1, 2], "ties", density=0.5)
    torch.testing.assert_close(out, torch.tensor([3.0, -1.0, 1.0, 1.0]))
    # A tie of the weighted sum elects +: deltas +2 and -2 (weights 1, 1) -> only +2 kept.
    out = merge_tensor("x", torch.zeros(1), [torch.tensor([2.0]), torch.tensor([-2.0])],
                       [1, 1], "ties", density=1.0)
    assert out.item() == 2.0


def test_dare_density_one_is_task_arithmetic_and_seeded(dirs):
    ta, _ = run(dirs, "task_arithmetic")
    d1, _ = run(dirs, "dare", density=1.0)
    for name in SHAPES:
        assert torch.equal(d1[name], ta[name])
    a, _ = run(dirs, "dare", density=0.5, seed=3)
    b, _ = run(dirs, "dare", density=0.5, seed=3)
    c, _ = run(dirs, "dare", density=0.5, seed=4)
    assert all(torch.equal(a[n], b[n]) for n in SHAPES)
    assert not torch.equal(a["a.weight"], c["a.weight"])


def test_dare_drops_rescales_and_is_unbiased():
    g = torch.Generator().manual_seed(1)
    base = torch.randn(2000, generator=g)
    delta = torch.randn(2000, generator=g) + 3  # away from 0 so kept/dropped is unambiguous
    out = merge_tensor("w", base, [base + delta], [1.0], "dare", density=0.25, seed=0)
    kept = torch.isclose(out, base + delta / 0.25)
    dropped = torch.isclose(out, base)
    assert bool((kept | dropped).all())  # every entry is either dropped or rescaled
    assert abs(kept.float().mean().item() - 0.25) < 0.04
    # Mean over seeds approaches task arithmetic (two models, weights 0.5 and 2).
    thetas = [base + delta, base - 0.5 * delta]
    ta = merge_tensor("w", base, thetas, [0.5, 2.0], "task_arithmetic")
    mean = sum(merge_tensor("w", base, thetas, [0.5, 2.0], "dare", density=0.5, seed=s)
               for s in range(200)) / 200
    # Per entry std of one draw <= 0.5*|d|*1 + 2*0.5|d|*1 ~ 2|d|; over 200 draws ~ 0.14|d|.
    assert (mean - ta).abs().mean().item() < 0.1 * delta.abs().mean().item()
    assert (mean - ta).abs().mean().item() < 0.2 * (ta - base).abs().mean().item()


def test_dtypes_kept_and_computed_in_float32():
    base = torch.tensor([1.0, 2.0, 3.0], dtype=torch.bfloat16)
    thetas = [base + 1, base - 1]
    out = merge_tensor("x", base, thetas, [1.0, 1.0], "linear")
    assert out.dtype == torch.bfloat16 and torch.equal(out, base)
    base64 = torch.tensor([1e-12], dtype=torch.float64)
    out = merge_tensor("x", base64, [base64 * 2], [1.0], "task_arithmetic")
    assert out.dtype == torch.float64 and out.item() == 2e-12


def test_sharded_inputs_and_output_layout(dirs):
    base, models, base_dir, model_dirs, tmp = dirs
    single, _ = run(dirs, "ties", density=0.5)
    sharded_base = write_dir(tmp / "base_sharded", base, n_shards=2)
    sharded_m0 = write_dir(tmp / "m0_sharded", models[0], n_shards=3)
    out = str(tmp / "out_sharded")
    merge(sharded_base, [sharded_m0, *model_dirs[1:]], WEIGHTS, "ties", density=0.5, out=out)
    with open(os.path.join(out, "model.safetensors.index.json")) as f:
        index = json.load(f)
    with open(os.path.join(sharded_base, "model.safetensors.index.json")) as f:
        assert index["weight_map"] == json.load(f)["weight_map"]
    merged = {}
    for file in set(index["weight_map"].values()):
        merged.update(load_file(os.path.join(out, file)))
    assert set(merged) == set(single)
    for name in single:
        assert torch.equal(merged[name], single[name])
    assert index["metadata"]["total_size"] == sum(t.numel() * t.element_size()
                                                  for t in merged.values())


def test_output_replaced_atomically(dirs, monkeypatch):
    base, models, base_dir, model_dirs, tmp = dirs
    out = str(tmp / "out")
    os.makedirs(out)
    with open(os.path.join(out, "old_marker"), "w") as f:
        f.write("x")

    def broken_save(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(merge_mod, "save_file", broken_save)
    with pytest.raises(RuntimeError):
        merge(base_dir, model_dirs, WEIGHTS, "linear", out=out)
    assert os.listdir(out) == ["old_marker"] and not os.path.exists(out + ".tmp")
    monkeypatch.undo()
    merge(base_dir, model_dirs, WEIGHTS, "linear", out=out)
    assert "old_marker" not in os.listdir(out) and "model.safetensors" in os.listdir(out)
    assert not os.path.exists(out + ".tmp") and not os.path.exists(out + ".old")


def test_errors_name_the_culprit(dirs):
    base, models, base_dir, model_dirs, tmp = dirs
    out = str(tmp / "out_err")

    def error(base_dir=base_dir, model_dirs=model_dirs, weights=WEIGHTS, method="ties", **kw):
        with pytest.raises(ValueError) as e:
            merge(base_dir, model_dirs, weights, method, out=out, **kw)
        assert "\n" not in str(e.value)
        return str(e.value)

    assert "--weights" in error(weights=[1.0, 1.0])
    assert "--density" in error(density=0.0)
    assert "--density" in error(method="dare", density=1.5)
    assert "slerp" in error(method="slerp")
    assert "nowhere" in error(model_dirs=[str(tmp / "nowhere")] * 3)
    os.makedirs(tmp / "empty")
    msg = error(model_dirs=[str(tmp / "empty")] * 3)
    assert "empty" in msg and "no safetensors" in msg
    other = write_dir(tmp / "gpt", models[0], config={"model_type": "gpt2",
                                                     "architectures": ["GPT2LMHeadModel"]})
    msg = error(model_dirs=[other, *model_dirs[1:]])
    assert "gpt" in msg and "architecture" in msg
    missing = write_dir(tmp / "missing", {n: t for n, t in models[0].items() if n != "b.bias"})
    msg = error(model_dirs=[missing, *model_dirs[1:]])
    assert "b.bias" in msg and "missing" in msg
    wrong = dict(models[0], **{"c.scale": torch.zeros(3, 4, 3)})
    msg = error(model_dirs=[write_dir(tmp / "wrong", wrong), *model_dirs[1:]])
    assert "c.scale" in msg and "[3, 4, 3]" in msg and "[3, 4, 2]" in msg
    assert not os.path.exists(out) and not os.path.exists(out + ".tmp")


def test_cli_error_is_one_line_exit_2(dirs, capsys):
    base, models, base_dir, model_dirs, tmp = dirs
    with pytest.raises(SystemExit) as e:
        merge_mod.main([f"--base={base_dir}", "--models", *model_dirs, "--weights", "1", "2",
                        "--method=ties", f"--out={tmp / 'o'}"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "--weights has 2 values but --models has 3" in err and "Traceback" not in err


def test_tiny_llama_merge_loads_and_generates(tmp_path):
    transformers = pytest.importorskip("transformers")
    config = transformers.LlamaConfig(
        vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True)
    torch.manual_seed(0)
    base = transformers.LlamaForCausalLM(config)
    base.save_pretrained(tmp_path / "base")
    model_dirs = []
    for i in range(2):
        model = transformers.LlamaForCausalLM(config)
        model.load_state_dict(base.state_dict())
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.02 * torch.randn_like(p))
        model.save_pretrained(tmp_path / f"m{i}", max_shard_size="20KB" if i else "1GB")
        model_dirs.append(str(tmp_path / f"m{i}"))
    out = str(tmp_path / "merged")
    script = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "merge.py")
    proc = subprocess.run(
        [sys.executable, script, f"--base={tmp_path / 'base'}", "--models", *model_dirs,
         "--weights", "0.6", "0.4", "--method=ties", "--density=0.7", f"--out={out}"],
        capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "generation_config.json" in os.listdir(out)

    merged = transformers.AutoModelForCausalLM.from_pretrained(out, local_files_only=True)
    stored = load_file(os.path.join(out, "model.safetensors"))
    assert "lm_head.weight" not in stored  # tied: only embed_tokens is stored and merged
    emb = merged.model.embed_tokens.weight
    assert torch.equal(emb, stored["model.embed_tokens.weight"])
    assert torch.equal(merged.lm_head.weight, emb)
    assert not torch.equal(emb, base.model.embed_tokens.weight)
    tokens = merged.generate(torch.tensor([[1, 5, 9]]), max_new_tokens=4, do_sample=False,
                             pad_token_id=0)
    assert tokens.shape == (1, 7) and int(tokens.max()) < 64
