"""What `torchrun train.py --model=/path/to/8B` on CUDA relies on, caught here on a CPU.

No GPU runs these. Each test stands for one class of mistake that would otherwise surface only
on a rented node: a tensor left on the host, a collective on the wrong device, a model whose
logits we would compute wrongly, a stop token not stopping, a gradient from a padding batch,
token credit that drifts with a SentencePiece tokenizer, a host sync per token, an export in
the wrong dtype, a resume that cannot find its checkpoint.

The device checks put a stand-in policy on the meta device and run the trainer under a torch
function mode that fails any call whose tensors sit on two devices: whatever the trainer
builds on the host instead of on the policy's device is caught at the first op that meets it.

Run: python -m pytest -q tests/test_gpu_path.py
"""
import ast
import json
import math
import os
import traceback
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
import transformers
from safetensors import safe_open
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_leaves

import merge as merging
import model as M
import roles
import sampling
import train
import update
from loss import fused_loss

from test_train import FAST, ROOT


@pytest.fixture(scope="module")
def tiny(build_tiny_model):
    return build_tiny_model(hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2,
                            intermediate_size=64, seed=0)


# ----------------------------------------------------------------------------- devices

class OneDevice(TorchFunctionMode):
    """Fails every torch call whose tensor arguments are on more than one device."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        devices = {t.device for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)}
        if len(devices) > 1:
            raise AssertionError(f"{getattr(func, '__name__', func)} mixes "
                                 f"{sorted(map(str, devices))}")
        return func(*args, **kwargs)


class MetaPolicy(torch.nn.Module):
    """Stands in for model.Policy with its weights on the meta device (embedding -> lm_head)."""

    def __init__(self, vocab=100, dim=8):
        super().__init__()
        self.embed = torch.nn.Embedding(vocab, dim, device="meta")
        self.head = torch.nn.Linear(dim, vocab, bias=False, device="meta")
        self.lm = SimpleNamespace(get_output_embeddings=lambda: self.head)

    def forward(self, head, input_ids, use_cache=False):
        return head(self.embed(input_ids), self.head.weight), None


def record_steps(monkeypatch):
    """finish_step replaced by a recorder of the totals it gets (the optimizer cannot run on
    meta tensors, and this is the step's one host sync)."""
    seen = []

    def finish(policy, optimizer, cfg, totals):
        seen.append(totals)
        return {}
    monkeypatch.setattr(update, "finish_step", finish)
    return seen


def samples_of(lengths, advantage=1.0):
    return [update.Sample("solve", [1] + [5] * p, [6] * c, [advantage] * c) for p, c in lengths]


@pytest.mark.parametrize("mode, args", [("nll", []), ("pg", []),
                                        ("pg", ["--ppo_epochs=2", "--kl_coef=0.1"])])
def test_train_on_puts_every_tensor_on_the_policy_device(monkeypatch, mode, args):
    seen = record_steps(monkeypatch)
    cfg = train.parse_args(["--micro_batch=2"] + args)
    with OneDevice():
        update.train_on(MetaPolicy(), None, samples_of([(3, 2), (1, 4), (2, 2)]), cfg, 0, mode,
                        epochs=cfg.ppo_epochs)
    assert len(seen) == cfg.ppo_epochs and all(t.device.type == "meta" for t in seen)


def test_dpo_update_puts_every_tensor_on_the_policy_device(monkeypatch):
    seen = record_steps(monkeypatch)
    cfg = train.parse_args(["--micro_batch=2"])
    with OneDevice():
        update.dpo_update(MetaPolicy(), None, samples_of([(3, 2), (3, 3), (1, 2), (1, 1)]),
                          samples_of([(2, 5)]), cfg, 0)
    assert len(seen) == 1 and seen[0].device.type == "meta"


def test_the_device_check_catches_a_host_tensor():
    """The check itself: the trainer's old mistake (coefficients built on the host)."""
    policy = MetaPolicy()
    packed = M.pack([[1, 2]], [[3, 4]], 0, "meta")
    with OneDevice(), pytest.raises(AssertionError, match="mixes"):
        M.run_head(policy, packed, lambda h, w: fused_loss(h, w, packed.targets,
                                                              torch.ones(2), "nll"))


def test_sampling_draws_on_the_logits_device():
    """The uniforms come from a CPU generator (the same stream on every device) and meet the
    logits on the logits' device."""
    logits = torch.randn(3, 10, device="meta")
    uniform = torch.rand(3, generator=torch.Generator().manual_seed(0))
    with OneDevice():
        for top_p in (1.0, 0.9):
            assert sampling.pick_tokens(logits, 0.8, top_p, uniform).device.type == "meta"


# ----------------------------------------------------------------------------- collectives

def test_collectives_go_where_the_backend_reduces():
    assert M.collective_device("gloo").type == "cpu"
    assert M.collective_device("nccl").type == "cuda"
    assert M.collective_device("cpu:gloo,cuda:nccl").type == "cpu"
    with pytest.raises(ValueError, match="mpi"):
        M.collective_device("mpi")


def test_no_collective_outside_the_helpers():
    """Every file but model.py reaches torch.distributed's collectives only through model.py's
    helpers, which put the tensors on the backend's device."""
    collectives = {"all_reduce", "all_gather", "all_gather_object", "broadcast",
                   "broadcast_object_list", "reduce_scatter", "gather", "scatter", "reduce"}
    for name in sorted(f for f in os.listdir(ROOT) if f.endswith(".py") and f != "model.py"):
        tree = ast.parse(open(os.path.join(ROOT, name)).read())
        calls = [n.func.attr for n in ast.walk(tree) if isinstance(n, ast.Call)
                 and isinstance(n.func, ast.Attribute) and isinstance(n.func.value, ast.Name)
                 and n.func.value.id == "dist" and n.func.attr in collectives]
        assert calls == [], (name, calls)


def test_cuda_matmuls_may_use_tf32(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.delenv("RANK", raising=False)
    before = torch.get_float32_matmul_precision()
    try:
        _, _, device = M.setup_distributed()
        assert device.type == "cuda" and torch.get_float32_matmul_precision() == "high"
    finally:
        torch.set_float32_matmul_precision(before)


def test_merge_runs_outside_any_process_group(tiny, tmp_path, monkeypatch):
    """Under torchrun the merge starts no process group: rank 0 merges, the others end at once."""
    def no_group():
        raise AssertionError("merge must not start a process group")
    monkeypatch.setattr(M, "setup_distributed", no_group)
    for ability in ("deduction", "induction", "abduction"):
        merging.save_hf(M.load(tiny)[0], M.load_tokenizer(tiny), str(tmp_path / f"align_{ability}" / "model"))
    args = [f"--model={tiny}", f"--out={tmp_path}/merged", "--stage=merge"]
    monkeypatch.setenv("RANK", "1")
    train.run(train.parse_args(args))
    assert not os.path.exists(tmp_path / "merged")
    monkeypatch.setenv("RANK", "0")
    train.run(train.parse_args(args))
    assert os.path.isfile(tmp_path / "merged" / "model" / "model.safetensors")


def forwards_when_peers_have_more(monkeypatch, tiny, step):
    """Forward passes of the policy in `step(policy, tok)` when another rank has 3 micro-batches
    of everything: M.all_reduce answers every "max" with 3, as that rank would make it."""
    monkeypatch.setattr(M, "all_reduce", lambda values, op="sum": [
        max(float(v), 3.0) if op == "max" else float(v) for v in values])
    policy, tok = M.load(tiny)
    calls = []
    policy.register_forward_pre_hook(lambda *_: calls.append(1))
    step(policy, tok)
    return len(calls)


def test_every_rank_runs_as_many_forwards_whatever_its_data(tiny, monkeypatch):
    """Each FSDP forward is a collective: a rank with nothing to learn must still run exactly
    the forwards of a rank with data (reference passes included), or the ranks deadlock."""
    cfg = train.parse_args(["--micro_batch=2", "--ppo_epochs=2"])
    sgd = lambda policy: torch.optim.SGD(policy.parameters(), lr=0.0)  # noqa: E731

    def rl(samples):
        return lambda policy, tok: update.train_on(policy, sgd(policy), samples, cfg,
                                                   tok.pad_token_id, "pg", epochs=2)

    def dpo(with_data):
        def step(policy, tok):
            pairs, thoughts = dpo_samples(tok) if with_data else ([], [])
            update.dpo_update(policy, sgd(policy), pairs[:4], thoughts, cfg, tok.pad_token_id)
        return step
    for busy, idle in ((rl(samples_of([(3, 2), (1, 4), (2, 2)])), rl([])),
                       (dpo(True), dpo(False))):
        assert forwards_when_peers_have_more(monkeypatch, tiny, busy) == \
            forwards_when_peers_have_more(monkeypatch, tiny, idle)


# ----------------------------------------------------------------------------- architectures

CONFIGS = {  # tiny random configs; the scales differ from 1 so that folding them in matters
    "llama": lambda kw: transformers.LlamaConfig(**kw),
    "mistral": lambda kw: transformers.MistralConfig(**kw),
    "qwen2": lambda kw: transformers.Qwen2Config(**kw),
    "qwen3": lambda kw: transformers.Qwen3Config(head_dim=8, **kw),
    "gemma": lambda kw: transformers.GemmaConfig(head_dim=8, **kw),
    "phi3": lambda kw: transformers.Phi3Config(**kw),
    "olmo2": lambda kw: transformers.Olmo2Config(**kw),
    "granite": lambda kw: transformers.GraniteConfig(logits_scaling=4.0, **kw),
    "cohere": lambda kw: transformers.CohereConfig(logit_scale=0.25, **kw),
    "gemma2": lambda kw: transformers.Gemma2Config(head_dim=8, **kw),  # soft-caps its logits
    "phi": lambda kw: transformers.PhiConfig(**kw),                    # lm_head has a bias
}


def save_architecture(kind, path):
    tok = M.build_tiny_tokenizer()
    config = CONFIGS[kind](dict(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
        pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id))
    torch.manual_seed(0)
    lm = transformers.AutoModelForCausalLM.from_config(config)
    M.save_pretrained_atomic(lm, tok, path)
    return path


@pytest.mark.parametrize("kind", M.SUPPORTED)
def test_policy_logits_equal_the_model_logits(kind, tmp_path):
    """For every accepted architecture, the logits the fused loss and the sampler compute from
    (hidden, lm_head weight) are the Hugging Face model's own; greedy decoding matches HF's."""
    policy, tok = M.load(save_architecture(kind, str(tmp_path / kind)))
    assert kind in M.SUPPORTED
    packed = M.pack([[1, 40, 41, 42], [1, 50]], [[43, 44], [51, 52, 53]], 0, "cpu")
    with torch.no_grad():
        ours = M.run_head(policy, packed, lambda h, w: F.linear(h, w))
        theirs = policy.lm(input_ids=packed.input_ids).logits[packed.rows, packed.cols]
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
        if kind in M.LOGIT_SCALE:  # the scale is real: W h alone would be wrong
            plain = policy.lm.base_model(input_ids=packed.input_ids).last_hidden_state
            assert not torch.allclose(F.linear(plain[packed.rows, packed.cols],
                                               policy.lm.lm_head.weight), theirs, atol=1e-3)
        prompts = [[1, 40, 41, 42], [1, 50]]
        ids, mask, _ = sampling.left_pad(prompts, 0, "cpu")
        got = sampling.generate(policy, prompts, 6, [-1], 0, temperature=0)
        hf = policy.lm.generate(input_ids=ids, attention_mask=mask, max_new_tokens=6,
                                do_sample=False, eos_token_id=None, pad_token_id=0)
        assert torch.equal(got.tokens, hf[:, ids.shape[1]:])


@pytest.mark.parametrize("kind", ["gemma2", "phi"])
def test_models_whose_logits_we_would_get_wrong_are_refused(kind, tmp_path):
    path = save_architecture(kind, str(tmp_path / kind))
    with pytest.raises(ValueError, match=f"model_type '{kind}' is not supported.*llama"):
        M.load(path)


# ----------------------------------------------------------------------------- stop tokens, prompts

def test_every_eos_of_the_generation_config_stops_a_completion(tiny):
    """Chat models list several eos ids (Llama-3: 128001 and 128009); HF generate stops at any
    of them, and so must we; the stop token is not in the text the parsers read."""
    policy, tok = M.load(tiny)
    prompts = ["#problem\na=1\n#solve\n", "x", "a longer prompt, of ragged length!"]
    ids, mask, _ = sampling.left_pad(M.encode(tok, prompts), tok.pad_token_id, "cpu")
    free = sampling.generate(policy, M.encode(tok, prompts), 8, [-1], tok.pad_token_id,
                             temperature=0)
    second = int(free.tokens[0, 2])  # a token greedy decoding writes early: the second eos
    policy.lm.generation_config.eos_token_id = [tok.eos_token_id, second]
    assert M.stop_ids(policy.lm, tok) == sorted({tok.eos_token_id, second})
    hf = policy.lm.generate(input_ids=ids, attention_mask=mask, max_new_tokens=24,
                            do_sample=False, pad_token_id=tok.pad_token_id)[:, ids.shape[1]:]
    done = sampling.complete(policy, tok, prompts, 24, temperature=0)
    assert done[0].finished and len(done[0].ids) <= 3
    for c, row in zip(done, hf.tolist()):
        assert c.ids == row[:len(c.ids)]  # HF pads after its stop, we end there
        assert all(x == tok.pad_token_id for x in row[len(c.ids):])
        if c.finished:
            assert c.ids[-1] in (tok.eos_token_id, second)
            assert c.text == tok.decode(c.ids[:-1], skip_special_tokens=True)


def test_a_prompt_never_starts_empty(tiny):
    _, tok = M.load(tiny)
    assert M.encode(tok, [roles.render(tok, "")])[0] == [tok.bos_token_id]  # its chat template
    tok.chat_template = None  # a base model: no template, so encode puts the bos in front
    assert M.encode(tok, ["", "ab"]) == [[tok.bos_token_id], [tok.bos_token_id] +
                                          tok("ab", add_special_tokens=False)["input_ids"]]
    tok.bos_token = None  # no bos either (Qwen base): the eos separates documents
    assert M.encode(tok, [""])[0] == [tok.eos_token_id]
    with pytest.raises(ValueError, match="empty prompt"):
        M.pack([[]], [[5, 6]], 0, "cpu")


# ----------------------------------------------------------------------------- the loss

def test_a_padding_micro_batch_gives_exactly_zero_loss_and_gradient(tiny, monkeypatch):
    """A rank with nothing to train still runs a forward (FSDP forwards are collectives); with
    the KL term on, that padding batch must contribute nothing."""
    policy, tok = M.load(tiny)
    grads = []

    def finish(policy_, optimizer, cfg, totals):
        grads.append([p.grad for p in policy_.parameters()])
        return {"loss": totals[0].item()}
    monkeypatch.setattr(update, "finish_step", finish)
    cfg = train.parse_args(["--kl_coef=0.5", "--ppo_epochs=2"])
    out = update.train_on(policy, None, [], cfg, tok.pad_token_id, "pg", epochs=2)
    assert out["loss"] == 0.0 and len(grads) == 2
    assert all(g is not None and torch.count_nonzero(g) == 0 for g in grads[0])


def dpo_samples(tok):
    def sample(prompt, text):
        return update.Sample("solve", M.encode(tok, [prompt])[0],
                            tok(text, add_special_tokens=False)["input_ids"] + [tok.eos_token_id],
                            [1.0] * (len(text) + 1))
    pairs = [sample(p, t) for p, t in [("#p\n1+1\n#solve\n", "Answer: 2"),
                                       ("#p\n1+1\n#solve\n", "Answer: 3"),
                                       ("#p\n2+5\n#solve\n", "2+5=7\nAnswer: 7"),
                                       ("#p\n2+5\n#solve\n", "Answer: 8"),
                                       ("#p\nx\n#solve\n", "a"), ("#p\nx\n#solve\n", "bcd")]]
    return pairs, [sample("#p\n3+4\n#solve\n", "3+4=7\nAnswer: 7")]


def test_dpo_micro_batches_give_the_whole_batch_gradient(tiny, monkeypatch):
    """Pairs split over micro-batches of one pair each: the same loss and gradient as all pairs
    in one forward (DPO is a mean over pairs, so it splits exactly by pair)."""
    def grads_at(micro_batch):
        policy, tok = M.load(tiny)
        seen = {}

        def finish(policy_, optimizer, cfg, totals):
            seen["loss"] = totals[0].item()
            seen["grads"] = [p.grad.clone() for p in policy_.parameters()]
            return {}
        monkeypatch.setattr(update, "finish_step", finish)
        pairs, thoughts = dpo_samples(tok)
        update.dpo_update(policy, None, pairs, thoughts,
                          train.parse_args([f"--micro_batch={micro_batch}"]), tok.pad_token_id)
        return seen
    split, whole = grads_at(2), grads_at(64)
    assert split["loss"] == pytest.approx(whole["loss"], rel=1e-6)
    assert any(torch.count_nonzero(g) for g in whole["grads"])
    for a, b in zip(split["grads"], whole["grads"]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


# ----------------------------------------------------------------------------- token credit

def sentencepiece_tokenizer():
    """A Metaspace BPE tokenizer (the SentencePiece scheme of Llama-2, Mistral, Gemma) trained on
    the spot: words carry a leading '▁' that stands for the space before them."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    core = Tokenizer(models.BPE(unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Metaspace()
    core.decoder = decoders.Metaspace()
    texts = ["take the sum of 3 and 4\nso it is 7\nAnswer: 7", "the rest is the sum\nStep 2 is wrong"]
    core.train_from_iterator(texts * 20, trainers.BpeTrainer(
        vocab_size=120, special_tokens=["<pad>", "<s>", "</s>", "<unk>"]))
    return transformers.PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<s>",
                                                eos_token="</s>", pad_token="<pad>",
                                                unk_token="<unk>")


def test_token_steps_follow_the_text_with_a_sentencepiece_tokenizer():
    tok = sentencepiece_tokenizer()
    text = "take the sum of 3 and 4\nso it is 7\nAnswer: 7"
    enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
    ids = enc["input_ids"]
    assert tok.decode(ids) == text
    # decoded one at a time the tokens lose their spaces: per-token lengths would drift
    assert sum(len(tok.decode([i])) for i in ids) < len(text)
    line_of = roles.step_of_chars(text)
    truth = [line_of[end - 1] for _, end in enc["offset_mapping"]]
    assert roles.token_steps(tok, ids + [tok.eos_token_id], text) == truth + [3]
    assert truth[0] == 1 and truth[-1] == 3 and 2 in truth


# ----------------------------------------------------------------------------- host syncs

SYNCS = {"__bool__", "__int__", "__float__", "__index__", "item", "tolist", "nonzero"}


class CountOurSyncs(TorchFunctionMode):
    """Counts the calls that copy a device tensor's value to the host, made from our files."""

    def __init__(self):
        super().__init__()
        self.places = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if getattr(func, "__name__", "") in SYNCS:
            caller = traceback.extract_stack(limit=2)[0]
            if caller.filename.startswith(ROOT) and "/tests/" not in caller.filename:
                self.places.append(f"{os.path.basename(caller.filename)}:{caller.lineno}")
        return func(*args, **(kwargs or {}))


def test_decoding_syncs_with_the_host_once_every_few_tokens(tiny):
    policy, tok = M.load(tiny)
    with CountOurSyncs() as count:
        sampling.generate(policy, M.encode(tok, ["ab", "c"]), 24, [-1], tok.pad_token_id,
                          temperature=1)
    assert len(count.places) <= math.ceil(24 / sampling.SYNC_EVERY), count.places


def test_a_training_step_syncs_with_the_host_once(tiny):
    policy, tok = M.load(tiny)
    cfg = train.parse_args(["--micro_batch=1"])  # three micro-batches
    with CountOurSyncs() as count:
        update.train_on(policy, torch.optim.SGD(policy.parameters(), lr=0.1),
                        samples_of([(3, 2), (1, 4), (2, 2)]), cfg, tok.pad_token_id, "pg")
    assert len(count.places) == 1, count.places


def test_lean_attention_calls_plain_multi_head_sdpa(tiny, monkeypatch):
    """GQA folded into the query axis: no enable_gqa (with a mask, CUDA would take the math
    kernel, which copies the cache per group), equal head counts for queries and keys."""
    policy, tok = M.load(tiny)
    calls, sdpa = [], F.scaled_dot_product_attention

    def spy(q, k, v, **kw):
        calls.append((q.shape[1], k.shape[1], kw.get("enable_gqa", False)))
        return sdpa(q, k, v, **kw)
    monkeypatch.setattr(F, "scaled_dot_product_attention", spy)
    sampling.generate(policy, M.encode(tok, ["ab"]), 3, [-1], tok.pad_token_id, temperature=0)
    assert calls and all(q == k == 2 and not gqa for q, k, gqa in calls)  # 4 heads, 2 kv heads


# ----------------------------------------------------------------------------- checkpoints

def test_export_keeps_the_checkpoint_dtype(tmp_path):
    """A bf16 checkpoint trains in fp32 and is exported in bf16 again (16 GB at 8B, not 32)."""
    path = str(tmp_path / "bf16")
    M.build_tiny(path, hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=1,
                 intermediate_size=64)
    lm = transformers.AutoModelForCausalLM.from_pretrained(path).to(torch.bfloat16)
    M.save_pretrained_atomic(lm, M.load_tokenizer(path), path)
    policy, tok = M.load(path)
    assert next(policy.parameters()).dtype == torch.float32
    merging.save_hf(policy, tok, str(tmp_path / "export"))
    with open(tmp_path / "export" / "config.json") as f:
        assert json.load(f)["dtype"] == "bfloat16"
    with safe_open(str(tmp_path / "export" / "model.safetensors"), "pt") as f:
        for key in f.keys():
            assert torch.equal(f.get_tensor(key), lm.state_dict()[key]), key
    again, _ = M.load(str(tmp_path / "export"))
    assert again.save_dtype == torch.bfloat16


def test_resume_finds_the_checkpoint_a_crash_left_as_state_old(tiny, tmp_path):
    """replace_dir renames state -> state.old, then state.tmp -> state: a crash between the two
    leaves only state.old, which --resume must take."""
    out = str(tmp_path / "run")
    train.run(train.parse_args(["--stage=warmup", f"--model={tiny}", f"--out={out}",
                                "--steps=2"] + FAST))
    os.rename(os.path.join(out, "state"), os.path.join(out, "state.old"))
    train.run(train.parse_args(["--stage=warmup", f"--model={tiny}", f"--out={out}",
                                "--steps=3", "--resume"] + FAST))
    with open(os.path.join(out, "metrics.jsonl")) as f:
        assert [json.loads(line)["step"] for line in f] == [0, 1, 2]


# ----------------------------------------------------------------------------- activation checkpointing

@pytest.mark.parametrize("setting, forwards", [("on", 2), ("off", 1)])
def test_warmup_trains_in_training_mode_with_checkpointing(tiny, tmp_path, monkeypatch, setting,
                                                          forwards):
    """`from_pretrained` returns eval mode, where Hugging Face skips activation checkpointing:
    the warm-up must train in training mode, so that with checkpointing on each layer's
    attention runs twice per micro-batch (forward, then recomputed in backward)."""
    calls, load = [], M.load

    def counted(*args, **kwargs):
        policy, tok = load(*args, **kwargs)
        attention = M.decoder_layers(policy.lm)[0].self_attn
        attention.register_forward_pre_hook(lambda *_: calls.append(1))
        return policy, tok
    monkeypatch.setattr(M, "load", counted)
    train.run(train.parse_args(["--stage=warmup", f"--model={tiny}", f"--out={tmp_path}/w",
                                "--steps=1", "--batch=4", "--micro_batch=64",
                                f"--checkpointing={setting}"] + FAST[:1]))
    assert len(calls) == forwards

