"""The policy: one causal language model that plays every role.

What lives here, top to bottom:
  1. the tiny default: a character-level tokenizer built with `tokenizers` and a 2-layer Llama
     model of 0.44M parameters, saved in Hugging Face format and loaded back through `load`,
     the same path a local 8B checkpoint takes (`local_files_only=True`: nothing is ever
     downloaded);
  2. `Policy`, a thin module around the Hugging Face model whose forward runs any "head" (a
     loss, last-token logits) on the final hidden states *inside* forward, so that under FSDP2
     the head sees the full, unsharded `lm_head` weight;
  3. sampling with our own decode loop over a KV cache (left-padded ragged prompts, greedy /
     temperature / top-p, eos or budget), returning the new tokens and their log-probs; for
     Llama-family models the loop calls the layers' weights directly with a preallocated
     cache (`lean_decoder`), else it goes through the Hugging Face forward;
  4. teacher-forced hidden states and log-probs of given completions;
  5. FSDP2 sharding and a context that gathers the parameters once for a whole rollout phase;
  6. checkpoints: a Hugging Face export and a resumable training state, both atomic.

The math of sampling. At each step the model gives logits z over the vocabulary. We record
log pi(y) = log_softmax(z)[y], the log-probability under the *untempered* policy, because that is
what the trainer recomputes as log pi_theta and needs as log pi_old in the ratio
pi_theta / pi_old. The token itself is drawn from softmax(z / T), restricted to the smallest set
of tokens whose probability reaches top_p (nucleus); T = 0 means argmax.

Run `python model.py --out=DIR` to build the tiny default model into DIR (`--hidden_size=192
--num_layers=4 ...` for another size).
"""
import argparse
import contextlib
import inspect
import json
import os
import random
import shutil
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F

TINY_CHARS = [chr(c) for c in range(32, 127)] + ["\n"]  # printable ASCII and newline
TINY_SPECIALS = ["<pad>", "<s>", "</s>", "<unk>"]
# The tiny chat template is the identity plus bos: roles.py renders through the chat template of
# any model, and for the tiny one that must leave its plain-text role markers untouched.
TINY_CHAT_TEMPLATE = "{{ bos_token }}{% for m in messages %}{{ m['content'] }}{% endfor %}"


# ----------------------------------------------------------------------------- the tiny default

def build_tiny_tokenizer():
    """Character-level fast tokenizer: one id per printable ASCII char, plus pad/bos/eos/unk."""
    from tokenizers import Tokenizer, decoders, models
    from transformers import PreTrainedTokenizerFast
    vocab = {tok: i for i, tok in enumerate(TINY_SPECIALS + TINY_CHARS)}
    # BPE with no merges splits every text into single characters; Fuse joins them back.
    core = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    core.decoder = decoders.Fuse()
    core.add_special_tokens(TINY_SPECIALS)
    tok = PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<s>", eos_token="</s>",
                                  pad_token="<pad>", unk_token="<unk>")
    tok.chat_template = TINY_CHAT_TEMPLATE
    return tok


def build_tiny(path, hidden_size=128, num_layers=2, num_heads=4, num_kv_heads=4,
               intermediate_size=384, max_positions=1024, seed=0):
    """Build the tiny Llama default (0.44M parameters) and save it to `path` in HF format.

    Small on purpose: on a CPU core it takes three optimizer steps in the time a 1.59M model
    (hidden 192, 4 layers) takes one, and in a ten-minute warm-up that buys more than the
    width (README, "What we tried on the warm-up")."""
    from transformers import LlamaConfig, LlamaForCausalLM
    tok = build_tiny_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tok), hidden_size=hidden_size, intermediate_size=intermediate_size,
        num_hidden_layers=num_layers, num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads, max_position_embeddings=max_positions,
        tie_word_embeddings=True, rope_theta=10000.0,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id)
    torch.manual_seed(seed)
    lm = LlamaForCausalLM(config)
    save_pretrained_atomic(lm, tok, path)
    return path


# ----------------------------------------------------------------------------- loading

def load(path, dtype=torch.float32, device="cpu"):
    """Load any local Hugging Face causal LM directory as (Policy, tokenizer). Never downloads."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging
    hf_logging.disable_progress_bar()  # one bar per weight file is noise in a training log
    if not os.path.isfile(os.path.join(path, "config.json")):
        raise FileNotFoundError(f"--model={path}: not a model directory (no config.json there)")
    tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
    if tok.pad_token_id is None:  # Llama-3 ships without one; any id works under the mask
        tok.pad_token = tok.eos_token
    lm = AutoModelForCausalLM.from_pretrained(path, local_files_only=True, dtype=dtype)
    return Policy(lm.to(device)), tok


def encode(tokenizer, texts):
    """Token ids of already-rendered texts (any bos comes from the chat template, not here)."""
    return [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]


class Policy(torch.nn.Module):
    """A causal LM whose forward applies `head(hidden, lm_head_weight)` to its last hidden states.

    Why not call the Hugging Face model directly: under FSDP2 the root module's parameters
    (embeddings, final norm, lm_head; tied ones in one group) are gathered only while the root's
    forward runs. Computing the loss inside this forward is what lets a fused loss read the full
    `lm_head` weight and have its gradient reduce-scattered like any other.
    """

    def __init__(self, lm):
        super().__init__()
        self.lm = lm

    def forward(self, head, **lm_inputs):
        out = self.lm.base_model(**lm_inputs)
        return head(out.last_hidden_state, self.lm.get_output_embeddings().weight), out


# ----------------------------------------------------------------------------- sampling

@dataclass
class Rollout:
    tokens: torch.Tensor    # [B, T] new token ids, pad after eos
    logprobs: torch.Tensor  # [B, T] log pi(token) under the untempered policy, 0 after eos
    lengths: torch.Tensor   # [B] number of new tokens, eos included
    finished: torch.Tensor  # [B] bool: stopped at eos (False: ran out of budget)


def left_pad(prompts, pad_id, device):
    """Left-padded [B, L] ids, attention mask, and positions that start at 0 on the first real
    token."""
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long, device=device)
    mask = torch.zeros((len(prompts), width), dtype=torch.long, device=device)
    for i, p in enumerate(prompts):
        ids[i, width - len(p):] = torch.tensor(p, dtype=torch.long, device=device)
        mask[i, width - len(p):] = 1
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    return ids, mask, positions


def pick_tokens(logits, temperature, top_p, generator):
    """Greedy when temperature == 0, else a draw from the tempered nucleus distribution."""
    if temperature == 0:
        return logits.argmax(-1)
    probs = torch.softmax(logits / temperature, dim=-1)
    if top_p < 1.0:
        sorted_probs, order = probs.sort(dim=-1, descending=True)
        # drop a token when the mass strictly before it already reaches top_p
        drop = sorted_probs.cumsum(-1) - sorted_probs >= top_p
        sorted_probs = sorted_probs.masked_fill(drop, 0.0)
        probs = torch.zeros_like(probs).scatter_(-1, order, sorted_probs)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def last_token_logits(hidden, weight):
    return F.linear(hidden[:, -1], weight).float()


def hf_decoder(policy):
    """Decode through the Hugging Face forward and its DynamicCache: any causal LM, any FSDP
    state. Returns step(ids, mask, positions) -> last-token logits, and keep(rows)."""
    from transformers import DynamicCache
    cache = DynamicCache()

    def step(ids, mask, positions):
        logits, _ = policy(last_token_logits, input_ids=ids, attention_mask=mask,
                           position_ids=positions, past_key_values=cache, use_cache=True)
        return logits
    return step, cache.batch_select_indices


LEAN_FAMILIES = ("llama", "qwen2", "mistral")


def lean_decoder(lm, batch, max_len):
    """Decode by calling the layers' weights directly, with a preallocated KV cache.

    The same math as the Hugging Face Llama forward (RMSNorm, rotary embeddings from the
    model's own `rotary_emb`, grouped-query attention, SiLU MLP) minus its per-call overhead
    (output capturing, mask building, cache objects growing by concatenation), which is most
    of a decoding step for a small model. Llama, Qwen2 (attention biases come with the
    modules) and Mistral without a sliding window. Under FSDP2 call it inside
    `gathered_for_rollout`, which leaves the full weights on the modules.
    """
    base = lm.base_model
    cfg = lm.config
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    weight = base.embed_tokens.weight
    shape = (batch, cfg.num_key_value_heads, max_len, head_dim)
    keys = [weight.new_zeros(shape) for _ in base.layers]
    values = [weight.new_zeros(shape) for _ in base.layers]
    visible = torch.zeros((batch, max_len), dtype=torch.bool, device=weight.device)
    filled = 0  # cache positions written so far (the same for every row: left padding)

    def rotate(x, cos, sin):
        half = x.shape[-1] // 2
        return x * cos + torch.cat((-x[..., half:], x[..., :half]), dim=-1) * sin

    def step(ids, mask, positions):
        nonlocal filled
        rows, width = ids.shape
        end = filled + width
        visible[:rows, filled:end] = mask[:, -width:].bool()
        # key j is seen by query i when it is a real token and not in i's future; every query
        # also sees itself, so a padding query never has an empty (NaN) softmax row
        causal = torch.ones((width, end), dtype=torch.bool, device=ids.device).tril(filled)
        itself = torch.zeros_like(causal)
        itself[:, filled:].fill_diagonal_(True)
        allowed = (visible[:rows, None, None, :end] & causal) | itself
        h = base.embed_tokens(ids)
        cos, sin = (x[:, None] for x in base.rotary_emb(h, positions))
        for layer, k_cache, v_cache in zip(base.layers, keys, values):
            attn, x = layer.self_attn, layer.input_layernorm(h)
            q, k, v = (proj(x).view(rows, width, -1, head_dim).transpose(1, 2)
                       for proj in (attn.q_proj, attn.k_proj, attn.v_proj))
            k_cache[:rows, :, filled:end] = rotate(k, cos, sin)
            v_cache[:rows, :, filled:end] = v
            out = F.scaled_dot_product_attention(rotate(q, cos, sin), k_cache[:rows, :, :end],
                                                 v_cache[:rows, :, :end], attn_mask=allowed,
                                                 enable_gqa=True)
            h = h + attn.o_proj(out.transpose(1, 2).reshape(rows, width, -1))
            x = layer.post_attention_layernorm(h)
            h = h + layer.mlp.down_proj(F.silu(layer.mlp.gate_proj(x)) * layer.mlp.up_proj(x))
        filled = end
        return last_token_logits(base.norm(h[:, -1:]), lm.get_output_embeddings().weight)

    def keep(rows):
        n = len(rows)
        for cache in keys + values:
            cache[:n] = cache[rows]
        visible[:n] = visible[rows]
    return step, keep


def lean_supported(lm, max_len):
    """Llama-family SiLU models whose sliding window (if any) is longer than the sequence."""
    cfg = lm.config
    window = getattr(cfg, "sliding_window", None) if (
        getattr(cfg, "use_sliding_window", True) and cfg.model_type != "llama") else None
    return (cfg.model_type in LEAN_FAMILIES and getattr(cfg, "hidden_act", "silu") == "silu"
            and (not window or max_len <= window))


@torch.inference_mode()
def generate(policy, prompts, max_new_tokens, eos_id, pad_id, temperature=1.0, top_p=1.0,
             generator=None, lean=True):
    """Sample continuations of a ragged batch of prompts (lists of ids) with a KV cache.

    Rows that reach eos leave the batch once a quarter of the live rows have finished (dropping
    copies the whole cache, so it is batched), and a batch of mixed lengths costs about what its
    live rows cost. `lean` picks `lean_decoder` where the architecture allows, else the Hugging
    Face forward. Returned tensors are ordinary ones, usable as constants in a later backward.
    """
    device = policy.lm.get_output_embeddings().weight.device
    batch = len(prompts)
    ids, mask, positions = left_pad(prompts, pad_id, device)
    max_len = ids.shape[1] + max_new_tokens
    step, keep_rows = (lean_decoder(policy.lm, batch, max_len)
                       if lean and lean_supported(policy.lm, max_len) else hf_decoder(policy))
    tokens = torch.full((batch, max_new_tokens), pad_id, dtype=torch.long, device=device)
    logprobs = torch.zeros((batch, max_new_tokens), device=device)
    lengths = torch.zeros(batch, dtype=torch.long, device=device)
    live = torch.arange(batch, device=device)  # original row of each row still decoding
    done = torch.zeros(batch, dtype=torch.bool, device=device)  # finished but not yet dropped
    logits = step(ids, mask, positions)
    next_pos = positions[:, -1] + 1
    for t in range(max_new_tokens):
        token = pick_tokens(logits, temperature, top_p, generator).masked_fill(done, pad_id)
        step_logprob = torch.log_softmax(logits, -1).gather(-1, token.clamp(min=0)[:, None])
        tokens[live, t] = token
        logprobs[live, t] = step_logprob.squeeze(-1).masked_fill(done, 0.0)
        lengths[live] += (~done).long()
        done = done | (token == eos_id)
        if t == max_new_tokens - 1 or bool(done.all()):
            break
        if 4 * int(done.sum()) >= len(live):
            keep = (~done).nonzero().squeeze(-1)
            keep_rows(keep)
            live, token, mask, next_pos = live[keep], token[keep], mask[keep], next_pos[keep]
            done = done[keep]
        mask = torch.cat([mask, mask.new_ones(len(live), 1)], dim=1)
        logits = step(token[:, None], mask, next_pos[:, None])
        next_pos = next_pos + 1
    finished = (tokens == eos_id).any(-1)
    return Rollout(tokens.clone(), logprobs.clone(), lengths.clone(), finished)


@dataclass
class Completion:
    prompt_ids: list   # the rendered prompt's token ids
    ids: list          # the new token ids, eos included when it came
    logprobs: list     # log pi_old of each new token
    text: str          # the new tokens decoded, eos and padding dropped
    finished: bool     # ended at eos


def complete(policy, tokenizer, prompts, max_new_tokens, temperature=1.0, top_p=1.0,
             generator=None, batch_size=64):
    """Sample one completion per rendered prompt string, `batch_size` prompts per decode loop.

    Prompts are sorted by length first so that each batch pads little."""
    prompt_ids = encode(tokenizer, prompts)
    order = sorted(range(len(prompts)), key=lambda i: len(prompt_ids[i]))
    out = [None] * len(prompts)
    for start in range(0, len(order), batch_size):
        rows = order[start:start + batch_size]
        roll = generate(policy, [prompt_ids[i] for i in rows], max_new_tokens,
                        tokenizer.eos_token_id, tokenizer.pad_token_id, temperature, top_p,
                        generator)
        for j, i in enumerate(rows):
            n = int(roll.lengths[j])
            ids = roll.tokens[j, :n].tolist()
            out[i] = Completion(prompt_ids[i], ids, roll.logprobs[j, :n].tolist(),
                                tokenizer.decode(ids, skip_special_tokens=True),
                                bool(roll.finished[j]))
    return out


# ----------------------------------------------------------------------------- teacher forcing

@dataclass
class Packed:
    """Prompt + completion sequences, right-padded, and where the completion tokens are scored."""
    input_ids: torch.Tensor       # [B, L]
    attention_mask: torch.Tensor  # [B, L]
    position_ids: torch.Tensor    # [B, L]
    rows: torch.Tensor            # [n] row of each scored completion token
    cols: torch.Tensor            # [n] position whose hidden state predicts it
    targets: torch.Tensor         # [n] the completion token ids
    seq_of_token: torch.Tensor    # [n] index of the sequence each token belongs to


def pack(prompts, completions, pad_id, device="cpu"):
    """Right-padded batch of prompt+completion id lists, with the completion tokens flattened."""
    seqs = [p + c for p, c in zip(prompts, completions)]
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    rows, cols = [], []
    for i, (p, s) in enumerate(zip(prompts, seqs)):
        ids[i, :len(s)] = torch.tensor(s, dtype=torch.long)
        mask[i, :len(s)] = 1
        rows += [i] * (len(s) - len(p))
        cols += range(len(p) - 1, len(s) - 1)  # hidden state at j predicts token j + 1
    rows, cols = torch.tensor(rows, dtype=torch.long), torch.tensor(cols, dtype=torch.long)
    positions = torch.arange(width).expand(len(seqs), width)
    return Packed(ids.to(device), mask.to(device), positions.to(device), rows.to(device),
                  cols.to(device), ids[rows, cols + 1].to(device), rows.to(device))


def run_head(policy, packed, head):
    """Forward `packed` and apply head(hidden [n, H] of the scored tokens, lm_head weight,
    packed)."""
    def on_scored(hidden, weight):
        return head(hidden[packed.rows, packed.cols], weight)
    result, _ = policy(on_scored, input_ids=packed.input_ids,
                       attention_mask=packed.attention_mask, position_ids=packed.position_ids,
                       use_cache=False)
    return result


def chunked_token_logprobs(hidden, weight, targets, chunk=1024):
    """log_softmax(hidden @ weight.T)[targets], a chunk of rows at a time ([n, V] never whole)."""
    out = [torch.log_softmax(F.linear(h, weight).float(), -1).gather(-1, y[:, None]).squeeze(-1)
           for h, y in zip(hidden.split(chunk), targets.split(chunk))]
    return torch.cat(out) if out else hidden.new_zeros(0, dtype=torch.float32)


@torch.no_grad()
def token_logprobs(policy, prompts, completions, pad_id):
    """Teacher-forced log pi(completion token | prefix), one 1-D tensor per completion."""
    packed = pack(prompts, completions, pad_id, policy.lm.get_output_embeddings().weight.device)
    flat = run_head(policy, packed, lambda h, w: chunked_token_logprobs(h, w, packed.targets))
    return list(flat.split([len(c) for c in completions]))


# ----------------------------------------------------------------------------- distributed

def setup_distributed():
    """Start the process group under torchrun (nccl on CUDA, gloo on CPU); no-op otherwise.

    Returns (rank, world_size, device).
    """
    if dist.is_initialized():
        rank, world = dist.get_rank(), dist.get_world_size()
        device = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() \
            else torch.device("cpu")
        return rank, world, device
    if "RANK" not in os.environ:
        device = "cuda" if torch.cuda.is_available() else "cpu"
        return 0, 1, torch.device(device)
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    if torch.cuda.is_available():
        local = int(os.environ.get("LOCAL_RANK", 0))
        torch.cuda.set_device(local)
        dist.init_process_group("nccl", device_id=torch.device("cuda", local))
        return rank, world, torch.device("cuda", local)
    dist.init_process_group("gloo")
    return rank, world, torch.device("cpu")


def teardown_distributed():
    """Leave the process group together. Without the barrier a rank that finishes first can tear
    down its gloo connections while a peer still works, and dies with SIGABRT ("terminate called
    without an active exception"); call this only on the success path, since a rank that failed
    would leave its peers waiting here."""
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def decoder_layers(lm):
    return lm.base_model.layers  # Llama, Qwen2 and Mistral all keep them here


def shard(policy, activation_checkpointing=False):
    """FSDP2: one `fully_shard` group per decoder layer, then the root (embeddings, final norm and
    lm_head together, so tied embeddings share a group). bf16 compute with fp32 gradient
    reduction on CUDA; full fp32 on CPU (gloo has no bf16 speed to gain)."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
    if torch.cuda.is_available():
        mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    else:
        mp = MixedPrecisionPolicy()
    if activation_checkpointing:
        policy.lm.gradient_checkpointing_enable(
            gradient_checkpointing_kwargs={"use_reentrant": False})
    for layer in decoder_layers(policy.lm):
        fully_shard(layer, mp_policy=mp)
    fully_shard(policy, mp_policy=mp)
    return policy


@contextlib.contextmanager
def gathered_for_rollout(policy):
    """Keep every FSDP2 group unsharded for a whole rollout phase.

    Without this each decoding step would all-gather every layer and free it again, once per
    generated token. With it the gather happens once and decoding runs at single-GPU speed, at
    the memory cost of one full copy of the (bf16) parameters.
    """
    from torch.distributed.fsdp import FSDPModule
    if not isinstance(policy, FSDPModule):
        yield
        return
    groups = [m for m in policy.modules() if isinstance(m, FSDPModule)]
    policy.set_reshard_after_forward(False)
    for m in groups:
        m.unshard()
    try:
        yield
    finally:
        for m in groups:
            m.reshard()
        policy.set_reshard_after_forward(True)
        policy.set_reshard_after_forward(False, recurse=False)  # FSDP2's default for the root


# ----------------------------------------------------------------------------- checkpoints

def is_main():
    return not dist.is_initialized() or dist.get_rank() == 0


def barrier():
    if dist.is_initialized():
        dist.barrier()


def replace_dir(tmp, final):
    """Swap a finished temporary directory into place: a reader sees the old or the new, never
    half of one (two renames; a crash between them leaves `final.old`, which is still whole)."""
    old = final + ".old"
    if os.path.exists(final):
        shutil.rmtree(old, ignore_errors=True)
        os.rename(final, old)
    os.rename(tmp, final)
    shutil.rmtree(old, ignore_errors=True)


def save_pretrained_atomic(lm, tokenizer, path, state_dict=None):
    tmp = path.rstrip("/") + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    lm.save_pretrained(tmp, state_dict=state_dict)
    tokenizer.save_pretrained(tmp)
    replace_dir(tmp, path.rstrip("/"))


def save_hf(policy, tokenizer, path):
    """Export a Hugging Face directory (safetensors) that any HF tool loads. Under FSDP the full
    state dict is gathered to rank 0 (on CPU) and only rank 0 writes."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
    full = get_model_state_dict(policy.lm, options=StateDictOptions(
        full_state_dict=True, cpu_offload=dist.is_initialized()))
    if is_main():
        save_pretrained_atomic(policy.lm, tokenizer, path, state_dict=full)
    barrier()


def rng_state():
    return {"python": random.getstate(), "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def set_rng_state(state):
    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])
    if state["cuda"] is not None:
        torch.cuda.set_rng_state_all(state["cuda"])


def save_state(policy, optimizer, path, meta):
    """Resumable training state: sharded model + optimizer (torch.distributed.checkpoint), each
    rank's RNG states, and `meta` (JSON: step, stage, anything the trainer needs). Written to
    `path.tmp` and renamed into place once every rank has finished writing."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict
    tmp = path.rstrip("/") + ".tmp"
    if is_main():
        shutil.rmtree(tmp, ignore_errors=True)
    barrier()
    model_sd, optim_sd = get_state_dict(policy, optimizer)
    dcp.save({"model": model_sd, "optim": optim_sd}, checkpoint_id=tmp)
    rank = dist.get_rank() if dist.is_initialized() else 0
    torch.save(rng_state(), os.path.join(tmp, f"rng_{rank}.pt"))
    barrier()
    if is_main():
        with open(os.path.join(tmp, "meta.json"), "w") as f:
            json.dump(meta, f)
        replace_dir(tmp, path.rstrip("/"))
    barrier()


def load_state(policy, optimizer, path):
    """Restore what `save_state` wrote, in place; returns its `meta`."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict
    # With no gradients present, get_state_dict creates the optimizer's state tensors (a fresh
    # optimizer has none), which dcp.load then fills in place.
    optimizer.zero_grad(set_to_none=True)
    model_sd, optim_sd = get_state_dict(policy, optimizer)
    state = {"model": model_sd, "optim": optim_sd}
    dcp.load(state, checkpoint_id=path)
    set_state_dict(policy, optimizer, model_state_dict=state["model"],
                   optim_state_dict=state["optim"])
    rank = dist.get_rank() if dist.is_initialized() else 0
    set_rng_state(torch.load(os.path.join(path, f"rng_{rank}.pt"), weights_only=False))
    with open(os.path.join(path, "meta.json")) as f:
        return json.load(f)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Build the tiny default model (or another size).")
    parser.add_argument("--out", default="runs/tiny/init", help="directory to write")
    sizes = inspect.signature(build_tiny).parameters
    for name in ("hidden_size", "num_layers", "num_heads", "num_kv_heads", "intermediate_size"):
        parser.add_argument(f"--{name}", type=int, default=sizes[name].default)
    args = vars(parser.parse_args())
    print("built", build_tiny(args.pop("out"), **args))
