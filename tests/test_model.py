"""model.py and sampling.py against trusted references: Hugging Face `generate` and full
forward passes.

Every test builds its own tiny model; nothing is downloaded.
Run: python -m pytest -q tests/test_model.py
"""
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

import merge as merging
import model as M
import sampling

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def tiny(build_tiny_model):
    return build_tiny_model(hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2,
                            intermediate_size=128, seed=1)


def tiny_of_family(path, family):
    """A tiny Llama, Qwen2 (untied embeddings, attention biases) or Qwen3 (QK-norm, its gains
    drawn away from 1 so that a decoder skipping them shows) saved beside the char tokenizer."""
    import transformers
    tok = M.build_tiny_tokenizer()
    kinds = {"llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM),
             "qwen2": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM),
             "qwen3": (transformers.Qwen3Config, transformers.Qwen3ForCausalLM)}
    config, causal_lm = kinds[family]
    cfg = config(vocab_size=len(tok), hidden_size=64, intermediate_size=128, head_dim=16,
                 num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                 tie_word_embeddings=family != "qwen2", eos_token_id=tok.eos_token_id,
                 pad_token_id=tok.pad_token_id)
    torch.manual_seed(2)
    lm = causal_lm(cfg)
    with torch.no_grad():
        for name, p in lm.named_parameters():
            if name.endswith(("q_norm.weight", "k_norm.weight")):
                p.uniform_(0.5, 2.0)
    M.save_pretrained_atomic(lm, tok, path)
    return path


PROMPTS = ["<s>#problem\na=1\n#solve\n", "<s>x", "<s>a longer prompt, of ragged length!",
           "<s>12+3"]


def test_share_splits_a_count_over_ranks_exactly(monkeypatch):
    for world in (1, 2, 3, 8):
        monkeypatch.setattr(M, "world", lambda world=world: world)
        for n in range(20):
            parts = []
            for rank in range(world):
                monkeypatch.setattr(M, "rank", lambda rank=rank: rank)
                parts.append(M.share(n))
            assert sum(parts) == n and max(parts) - min(parts) <= 1, (world, n, parts)
            assert parts == sorted(parts, reverse=True)  # the extra ones go to the low ranks


def test_save_load_identical_logits(tiny, tmp_path):
    policy, tok = M.load(tiny)
    ids = torch.tensor(M.encode(tok, ["<s>hello world"]))
    before = policy.lm(input_ids=ids).logits
    merging.save_hf(policy, tok, str(tmp_path / "again"))
    again, tok2 = M.load(str(tmp_path / "again"))
    assert torch.equal(before, again.lm(input_ids=ids).logits)
    assert tok2.chat_template == M.TINY_CHAT_TEMPLATE
    assert tok2.decode(M.encode(tok2, ["Answer: 7\n"])[0]) == "Answer: 7\n"


def test_load_missing_path_names_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        M.load(str(tmp_path / "nowhere"))


def test_tiny_tokenizer_keeps_words_and_numbers_whole():
    """Trained on the world's texts: a number of the world is one token, and so is a word the
    texts hold, any ASCII text round-trips, and pieces never cross a word boundary."""
    import roles
    import tasks
    texts = roles.world_texts(0, per_cell=10)
    tok = M.build_tiny_tokenizer(texts)
    assert tok.tokenize("Eve has 27 cups.") == ["Eve", " has", " ", "27", " cups", "."]
    assert tok.tokenize("27+2=29") == ["27", "+", "2", "=", "29"]
    assert all(len(tok.tokenize(str(n))) == 1 for n in range(tasks.LIMIT + 1))
    assert tok.tokenize("b->~c") == ["b", "->", "~", "c"]
    assert tok.tokenize("c<-b") == ["c", "<-", "b"]
    for text in texts[:50] + ["unseen WORDS & odd ~ chars {}|", "x" * 30]:
        assert tok.decode(tok(text, add_special_tokens=False)["input_ids"]) == text
    chars = M.build_tiny_tokenizer()  # no texts: one token per character
    assert chars.tokenize("57 ab") == ["5", "7", " ", "a", "b"]


@pytest.mark.parametrize("lean", [True, False])
@pytest.mark.parametrize("family", ["llama", "qwen2", "qwen3"])
def test_greedy_matches_hf_generate(tmp_path, family, lean):
    policy, tok = M.load(tiny_of_family(str(tmp_path / family), family))
    prompts = M.encode(tok, PROMPTS)
    ids, mask, _ = sampling.left_pad(prompts, tok.pad_token_id, "cpu")
    # An untrained model rarely emits eos; take as "eos" a token that greedy decoding emits
    # early in one row, so rows stop at different steps and the row-dropping path is exercised.
    probe = sampling.generate(policy, prompts, 6, stop=[-1], pad_id=tok.pad_token_id, temperature=0)
    eos = int(probe.tokens[0, 3])
    assert sampling.lean_supported(policy, 64)
    ours = sampling.generate(policy, prompts, 24, [eos], tok.pad_token_id, temperature=0, lean=lean)
    hf = policy.lm.generate(input_ids=ids, attention_mask=mask, max_new_tokens=24,
                            do_sample=False, eos_token_id=eos, pad_token_id=tok.pad_token_id)
    hf_new = hf[:, ids.shape[1]:]
    width = hf_new.shape[1]
    assert torch.equal(ours.tokens[:, :width], hf_new)
    assert (ours.tokens[:, width:] == tok.pad_token_id).all()
    assert bool(ours.finished[0]) and int(ours.lengths[0]) <= 4
    assert not bool(ours.finished.all())  # some rows ran to the budget


def test_lean_decoder_reads_the_fused_kernels_output_layout(tmp_path, monkeypatch):
    """On CUDA the fused SDPA kernels return [B, H, M, D] as a transposed view of [B, M, H, D]
    memory, where the CPU kernels return it contiguous; folded GQA heads must be unfolded by
    reshape, not view, whichever layout comes back (a view raised here before)."""
    policy, tok = M.load(tiny_of_family(str(tmp_path / "llama"), "llama"))
    prompts = M.encode(tok, PROMPTS)
    ids, mask, positions = sampling.left_pad(prompts, tok.pad_token_id, "cpu")

    def prefill_logits():
        step, _ = sampling.lean_decoder(policy.lm, len(prompts), ids.shape[1])
        with torch.no_grad():
            return step(ids, mask, positions)
    expect, sdpa = prefill_logits(), F.scaled_dot_product_attention
    monkeypatch.setattr(F, "scaled_dot_product_attention", lambda *args, **kwargs: sdpa(
        *args, **kwargs).transpose(1, 2).contiguous().transpose(1, 2))
    assert torch.equal(prefill_logits(), expect)


@pytest.mark.parametrize("lean", [True, False])
@pytest.mark.parametrize("family", ["llama", "qwen3"])
def test_decoder_logits_equal_full_forward(tmp_path, family, lean):
    """The KV-cache decoders' logits at every step equal a full forward of each row alone (no
    padding, no cache): prefill of ragged prompts, then new tokens fed one at a time."""
    policy, tok = M.load(tiny_of_family(str(tmp_path / family), family))
    assert policy.lm.config.num_key_value_heads < policy.lm.config.num_attention_heads  # GQA
    prompts = M.encode(tok, PROMPTS)
    ids, mask, positions = sampling.left_pad(prompts, tok.pad_token_id, "cpu")
    fed = torch.randint(4, 90, (len(prompts), 5), generator=torch.Generator().manual_seed(0))
    step, _ = sampling.lean_decoder(policy.lm, len(prompts), ids.shape[1] + 5) if lean else \
        sampling.hf_decoder(policy)
    with torch.no_grad():
        got = [step(ids, mask, positions)]
        for t in range(4):
            mask = torch.cat([mask, mask.new_ones(len(prompts), 1)], dim=1)
            got.append(step(fed[:, t:t + 1], mask, positions[:, -1:] + 1 + t))
        for i, p in enumerate(prompts):
            full = policy.lm(input_ids=torch.tensor([p + fed[i, :4].tolist()])).logits[0].float()
            expect = full[len(p) - 1:len(p) + 4]
            torch.testing.assert_close(torch.stack([g[i] for g in got]), expect, rtol=1e-5,
                                       atol=1e-5)


def test_sampling_draws_the_tempered_nucleus_distribution():
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0]] * 4000)
    uniform = torch.rand(4000, generator=torch.Generator().manual_seed(0))
    probs = torch.softmax(logits[0] / 0.7, -1)
    picks = sampling.pick_tokens(logits, 0.7, 1.0, uniform)
    share = torch.bincount(picks, minlength=4).double() / 4000
    assert (share - probs).abs().max() < 0.03
    # softmax = [.64, .24, .09, .03]: top_p .7 keeps the first two tokens only
    picks = sampling.pick_tokens(logits, 1.0, 0.7, uniform)
    assert set(picks.tolist()) == {0, 1}
    assert abs((picks == 0).double().mean().item() - 0.64 / 0.88) < 0.03
    assert sampling.pick_tokens(logits, 1.0, 1e-6, uniform).eq(0).all()
    assert sampling.pick_tokens(logits, 0, 1.0, uniform).eq(0).all()
    # u = 0 and u close to 1: the ends of the distribution, never a zero-probability token
    masked = torch.tensor([[-float("inf"), 0.0, 0.0, -float("inf")]] * 2)
    assert sampling.pick_tokens(masked, 1.0, 1.0, torch.tensor([0.0, 1 - 1e-7])).tolist() == [2, 1]


def test_sampling_is_reproducible_from_the_generator(tiny):
    policy, tok = M.load(tiny)
    prompts = M.encode(tok, PROMPTS)

    def draw(seed):
        return sampling.generate(policy, prompts, 12, [tok.eos_token_id], tok.pad_token_id,
                          temperature=1.0, generator=torch.Generator().manual_seed(seed)).tokens
    assert torch.equal(draw(0), draw(0)) and not torch.equal(draw(0), draw(1))


def test_training_state_round_trip(tiny, tmp_path):
    policy, _ = M.load(tiny)
    opt = torch.optim.AdamW(policy.parameters(), lr=1e-2)
    policy.lm(input_ids=torch.tensor([[1, 5, 6, 7]]),
              labels=torch.tensor([[1, 5, 6, 7]])).loss.backward()
    opt.step()
    torch.manual_seed(123)
    merging.save_state(policy, opt, str(tmp_path / "state"), {"step": 7})
    expected_draw = torch.rand(3)
    params = {k: v.clone() for k, v in policy.state_dict().items()}
    with torch.no_grad():
        for p in policy.parameters():
            p.add_(1.0)
    opt.state.clear()
    meta = merging.load_state(policy, opt, str(tmp_path / "state"))
    assert meta == {"step": 7}
    for k, v in policy.state_dict().items():
        assert torch.equal(v, params[k]), k
    assert all("exp_avg" in s for s in opt.state.values()) and len(opt.state) > 0
    assert torch.equal(torch.rand(3), expected_draw)
    assert not os.path.exists(str(tmp_path / "state.tmp"))


def test_fsdp_two_ranks_match_one_process(tmp_path):
    """torchrun, 2 CPU ranks, gloo, FSDP2 loaded by rank 0's broadcast: one optimizer step on a
    fixed global batch equals the same step in one process; greedy rollouts under the gathered
    context equal unsharded ones; the export keeps the checkpoint's dtype (bf16) and loads."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=ROOT)
    worker = os.path.join(ROOT, "tests", "fsdp_worker.py")
    single = subprocess.run([sys.executable, worker, str(tmp_path)], env=env,
                            capture_output=True, text=True, timeout=300)
    assert single.returncode == 0, single.stderr[-3000:]
    multi = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
                            "--standalone", worker, str(tmp_path)],
                           env=env, capture_output=True, text=True, timeout=300)
    assert multi.returncode == 0, multi.stderr[-3000:]
    one = torch.load(tmp_path / "params_world1.pt")
    two = torch.load(tmp_path / "params_world2.pt")
    assert one.keys() == two.keys()
    for k in one:
        torch.testing.assert_close(two[k], one[k], rtol=0, atol=1e-5, msg=k)
    init = torch.load(tmp_path / "params_init.pt")
    moved = max((one[k] - init[k]).abs().max().item() for k in one)
    assert moved > 1e-4  # the step really changed the weights
    assert torch.equal(torch.load(tmp_path / "rollout_world1.pt"),
                       torch.load(tmp_path / "rollout_world2.pt"))
    exported, _ = M.load(str(tmp_path / "export_world2"), dtype=None)  # as saved: bf16
    assert exported.save_dtype == torch.bfloat16
    for k, v in exported.lm.state_dict().items():
        assert v.dtype == torch.bfloat16, k
        torch.testing.assert_close(v, one[k].to(torch.bfloat16), rtol=2**-7, atol=1e-6, msg=k)
