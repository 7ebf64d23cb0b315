"""The policy: one causal language model that plays every role.

What lives here, in order:
  1. the tiny default: a BPE tokenizer trained on the texts it will read and a small Llama, in
     Hugging Face format, loaded like a local 8B checkpoint (nothing is ever downloaded);
  2. loading, whole (`load`) or into FSDP2 shards (`load_sharded`), and `Policy`;
  3. sampling: our own KV-cache decode loop (`generate`; `lean_decoder` for Llama families);
  4. teacher forcing: prompt + completion batches packed for the trainer's forward;
  5. FSDP2 sharding, `gathered_for_rollout`, and the collective helpers;
  6. atomic directory writes (the export and the resumable state are in merge.py).

The math of sampling: from logits z the token is drawn from softmax(z / T), restricted to the
smallest set of tokens whose probability reaches top_p (nucleus); T = 0 means argmax. The draw
inverts the cumulative distribution at a uniform u from a CPU generator, so a seed gives the same
completions on any device.

`python train.py` builds the tiny default into runs/tiny/init (`--tiny_layers=4 --tiny_hidden=256
...` for another size). Tests: `python -m pytest -q tests/test_model.py`.
"""
import contextlib
import copy
import datetime
import json
import os
import shutil
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F

TINY_CHARS = [chr(c) for c in range(32, 127)] + ["\n"]  # printable ASCII and newline
TINY_SPECIALS = ["<pad>", "<s>", "</s>", "<unk>"]
# Pieces a token never crosses: a word with its leading space, a letter, a number, an arrow, a sign.
TINY_PIECES = r" ?[A-Za-z]{2,}|[A-Za-z]|\d+|<->|->|<-|[^\sA-Za-z\d]|\n|\s"
# Identity plus bos: roles.py renders through the chat template, and the tiny model's plain-text
# role markers must come through untouched.
TINY_CHAT_TEMPLATE = "{{ bos_token }}{% for m in messages %}{{ m['content'] }}{% endfor %}"


# ----------------------------------------------------------------------------- the tiny default

def build_tiny_tokenizer(texts=(), vocab_size=1024):
    """BPE over printable ASCII (+ pad/bos/eos/unk), merges learned from `texts`. Merges never
    cross a TINY_PIECES piece, and the vocabulary is large enough for every piece of the texts to
    become one token: a word, and a whole number (as Llama-3's tokenizer holds numbers up to 999),
    so comparing two answers is comparing two tokens."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast
    core = Tokenizer(models.BPE(unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Split(Regex(TINY_PIECES), behavior="isolated")
    core.decoder = decoders.Fuse()
    core.train_from_iterator(list(texts), trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=TINY_SPECIALS, initial_alphabet=TINY_CHARS,
        show_progress=False))
    tok = PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<s>", eos_token="</s>",
                                  pad_token="<pad>", unk_token="<unk>")
    tok.chat_template = TINY_CHAT_TEMPLATE
    return tok


def build_tiny(path, texts=(), hidden_size=128, num_layers=2, num_heads=4, num_kv_heads=4,
               intermediate_size=384, max_positions=1024, seed=0):
    """Build a tiny Llama with a tokenizer trained on `texts`, saved to `path` in HF format."""
    from transformers import LlamaConfig, LlamaForCausalLM
    tok = build_tiny_tokenizer(texts)
    config = LlamaConfig(
        vocab_size=len(tok), hidden_size=hidden_size, intermediate_size=intermediate_size,
        num_hidden_layers=num_layers, num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads, max_position_embeddings=max_positions,
        tie_word_embeddings=True, rope_theta=10000.0, bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    torch.manual_seed(seed)
    save_pretrained_atomic(LlamaForCausalLM(config), tok, path)
    return path


# ----------------------------------------------------------------------------- loading

# Architectures whose logits are z = s * W h (W the lm_head weight, s 1 or LOGIT_SCALE's). The
# fused loss and the sampler compute z themselves, so logit soft-capping (Gemma-2) or an lm_head
# bias (Phi) would train on other logits than are sampled: such models are refused at load.
SUPPORTED = ("llama", "mistral", "qwen2", "qwen3", "gemma", "phi3", "olmo2", "granite", "cohere")
LOGIT_SCALE = {"granite": lambda c: 1.0 / c.logits_scaling, "cohere": lambda c: c.logit_scale}


def read_config(path):
    """A local model's config; refused, with the reason, if the fused loss can't reproduce it."""
    from transformers import AutoConfig
    from transformers.utils import logging as hf_logging
    hf_logging.disable_progress_bar()  # one bar per weight file is noise in a training log
    if not os.path.isfile(os.path.join(path, "config.json")):
        raise FileNotFoundError(f"--model={path}: not a model directory (no config.json there)")
    config = AutoConfig.from_pretrained(path, local_files_only=True)
    kind = getattr(config, "model_type", None)
    if kind not in SUPPORTED or getattr(config, "final_logit_softcapping", None):
        raise ValueError(f"--model={path}: model_type {kind!r} is not supported (supported: "
                         f"{', '.join(SUPPORTED)}, without logit soft-capping): its logits are not "
                         "the linear function of the last hidden state that the fused loss computes")
    return config


def load(path, dtype=torch.float32, device="cpu"):
    """(Policy, tokenizer) of a supported local HF causal LM, whole, on one device."""
    from transformers import AutoModelForCausalLM
    config = read_config(path)
    lm = AutoModelForCausalLM.from_pretrained(path, local_files_only=True, dtype=dtype)
    return Policy(lm.to(device), config), load_tokenizer(path)


def load_sharded(path, device, activation_checkpointing=False):
    """Load for FSDP2 without a full copy on every rank: each builds the model on the meta device,
    shards it and allocates its fp32 shards; rank 0 alone reads the checkpoint (in its own dtype:
    16 GB of host memory at 8B, not 32 GB on each of 8 ranks) and broadcasts it, along with the
    buffers outside the state dict (rotary frequencies) that the meta device left unset."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict
    from transformers import AutoModelForCausalLM, GenerationConfig
    config = read_config(path)
    with torch.device("meta"):  # from_config sets the config's dtype to fp32: give it a copy
        lm = AutoModelForCausalLM.from_config(copy.deepcopy(config), dtype=torch.float32)
    policy = shard(Policy(lm, config), activation_checkpointing)
    policy.to_empty(device=device)
    full, buffers = {}, {}
    if is_main():
        whole = AutoModelForCausalLM.from_pretrained(path, local_files_only=True, dtype="auto")
        full, buffers = whole.state_dict(), dict(whole.named_buffers())
    set_model_state_dict(lm, full, options=StateDictOptions(full_state_dict=True,
                                                            broadcast_from_rank0=True))
    if os.path.isfile(os.path.join(path, "generation_config.json")):  # from_config skips its eos
        lm.generation_config = GenerationConfig.from_pretrained(path, local_files_only=True)
    with torch.no_grad():
        for name, buffer in lm.named_buffers():
            if is_main():
                buffer.copy_(buffers[name])
            broadcast_(buffer)
    return policy, load_tokenizer(path)


def load_tokenizer(path):
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
    if tok.pad_token_id is None:  # Llama-3 ships without one; any id works under the mask
        tok.pad_token = tok.eos_token
    return tok


def stop_ids(lm, tokenizer):
    """Every token that ends a completion: the tokenizer's eos and the generation config's (chat
    models end a turn with their own, e.g. Llama-3's <|eot_id|>, Qwen's <|im_end|>)."""
    listed = getattr(getattr(lm, "generation_config", None), "eos_token_id", None)
    listed = listed if isinstance(listed, (list, tuple)) else [listed]
    return sorted({i for i in [tokenizer.eos_token_id, *listed] if i is not None})


def encode(tokenizer, texts):
    """Token ids of rendered prompts, a bos (or eos) in front unless a chat template writes its
    own: the first completion token always has a position predicting it."""
    start = [] if getattr(tokenizer, "chat_template", None) else \
        [tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id]
    return [start + tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]


class Policy(torch.nn.Module):
    """A causal LM whose forward applies `head(hidden * logit scale, lm_head weight)` to its last
    hidden states. The head runs inside forward because under FSDP2 the root's parameters (lm_head
    among them) are gathered only during the root's forward: so a fused loss reads the full
    lm_head weight, and its gradient is reduce-scattered like any other."""

    def __init__(self, lm, config):
        super().__init__()
        self.lm = lm
        self.logit_scale = LOGIT_SCALE.get(config.model_type, lambda c: 1.0)(config)
        self.save_dtype = config.dtype or torch.float32  # the checkpoint's own: exports keep it

    def forward(self, head, **lm_inputs):
        out = self.lm.base_model(**lm_inputs)
        hidden = out.last_hidden_state
        if self.logit_scale != 1.0:
            hidden = hidden * self.logit_scale
        return head(hidden, self.lm.get_output_embeddings().weight), out


def device_of(policy):
    """The device the policy computes on (its lm_head's; a sharded DTensor reports its own)."""
    return policy.lm.get_output_embeddings().weight.device


# ----------------------------------------------------------------------------- sampling

@dataclass
class Rollout:
    tokens: torch.Tensor    # [B, T] new token ids, pad after the stop token
    lengths: torch.Tensor   # [B] number of new tokens, the stop token included
    finished: torch.Tensor  # [B] bool: ended on a stop token (False: ran out of budget)


def left_pad(prompts, pad_id, device):
    """Left-padded [B, L] ids, mask, and positions (0 at the first real token), copied once."""
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, width - len(p):] = torch.tensor(p, dtype=torch.long)
        mask[i, width - len(p):] = 1
    ids, mask = ids.to(device), mask.to(device)
    return ids, mask, (mask.cumsum(-1) - 1).clamp(min=0)


def pick_tokens(logits, temperature, top_p, uniform):
    """Argmax when temperature == 0, else the first token whose cumulative probability under the
    tempered nucleus distribution reaches `uniform` [B] (inverse CDF)."""
    if temperature == 0:
        return logits.argmax(-1)
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    order = None
    if top_p < 1.0:  # drop a token when the mass strictly before it already reaches top_p
        probs, order = probs.sort(dim=-1, descending=True)
        probs = probs.masked_fill(probs.cumsum(-1) - probs >= top_p, 0.0)
    cdf = probs.cumsum(-1)
    # 1 - u is in (0, 1], so a zero-probability token never wins; the clamp to the last token of
    # positive probability keeps it so when a parallel cumsum rounds the cdf's flat tail
    threshold = (1 - uniform.to(cdf.device))[:, None] * cdf[:, -1:]
    last = (probs > 0).sum(-1) - 1 if order is not None else cdf.shape[-1] - 1
    picked = torch.minimum((cdf < threshold).sum(-1), torch.as_tensor(last, device=cdf.device))
    return picked if order is None else order.gather(-1, picked[:, None]).squeeze(-1)


def last_token_logits(hidden, weight):
    return F.linear(hidden[:, -1], weight).float()


def hf_decoder(policy):
    """step(ids, mask, positions) -> last-token logits, and keep(rows), through the HF forward
    and its DynamicCache: any causal LM, any FSDP state."""
    from transformers import DynamicCache
    cache = DynamicCache()

    def step(ids, mask, positions):
        return policy(last_token_logits, input_ids=ids, attention_mask=mask,
                      position_ids=positions, past_key_values=cache, use_cache=True)[0]
    return step, cache.batch_select_indices


LEAN_FAMILIES = ("llama", "qwen2", "mistral")


def lean_decoder(lm, batch, max_len):
    """Decode through the layers' weights with a preallocated KV cache: the HF Llama math
    (RMSNorm, the model's `rotary_emb`, GQA, SiLU MLP) without its per-call overhead (output
    capturing, masks, growing caches), most of a step for a small model. Under FSDP2 call it
    inside `gathered_for_rollout`.

    GQA is folded, not copied: the G query heads sharing a key/value head are stacked on the query
    axis ([B, kv_heads, G * W, D]), the mask repeated G times, so attention is plain multi-head SDPA
    with a boolean mask, which fused kernels take; `enable_gqa=True` with a mask would leave CUDA
    only the math kernel, which expands the cache G-fold at every step."""
    base, cfg = lm.base_model, lm.config
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    kv_heads, group = cfg.num_key_value_heads, cfg.num_attention_heads // cfg.num_key_value_heads
    weight = base.embed_tokens.weight
    shape = (batch, kv_heads, max_len, head_dim)
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
        # a query sees real keys not in its future, and itself (no empty, NaN softmax row)
        causal = torch.ones((width, end), dtype=torch.bool, device=ids.device).tril(filled)
        itself = torch.zeros_like(causal)
        itself[:, filled:].fill_diagonal_(True)
        allowed = ((visible[:rows, None, None, :end] & causal) | itself).repeat(1, 1, group, 1)
        h = base.embed_tokens(ids)
        cos, sin = (x[:, None] for x in base.rotary_emb(h, positions))
        for layer, k_cache, v_cache in zip(base.layers, keys, values):
            attn, x = layer.self_attn, layer.input_layernorm(h)
            q, k, v = (proj(x).view(rows, width, -1, head_dim).transpose(1, 2)
                       for proj in (attn.q_proj, attn.k_proj, attn.v_proj))
            k_cache[:rows, :, filled:end] = rotate(k, cos, sin)
            v_cache[:rows, :, filled:end] = v
            q = rotate(q, cos, sin).reshape(rows, kv_heads, group * width, head_dim)
            out = F.scaled_dot_product_attention(q, k_cache[:rows, :, :end],
                                                 v_cache[:rows, :, :end], attn_mask=allowed)
            out = out.view(rows, -1, width, head_dim).transpose(1, 2).reshape(rows, width, -1)
            h = h + attn.o_proj(out)
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


def lean_supported(policy, max_len):
    """Llama, Qwen2 (attention biases come with the modules) and Mistral: SiLU, plain logits,
    and a sliding window (if any) longer than the sequence."""
    cfg = policy.lm.config
    window = getattr(cfg, "sliding_window", None) if (
        getattr(cfg, "use_sliding_window", True) and cfg.model_type != "llama") else None
    return (cfg.model_type in LEAN_FAMILIES and getattr(cfg, "hidden_act", "silu") == "silu"
            and policy.logit_scale == 1.0 and (not window or max_len <= window))


SYNC_EVERY = 8  # decoding steps between the loop's host syncs (each stalls a GPU's queue)


@torch.inference_mode()
def generate(policy, prompts, max_new_tokens, stop, pad_id, temperature=1.0, top_p=1.0,
             generator=None, lean=True):
    """Sample continuations of ragged prompts (id lists), a row ending at any `stop` id. Every
    SYNC_EVERY steps (the only host sync) the loop stops if all rows are done, and drops the done
    ones once they are a quarter (dropping copies the cache). All uniforms come at once from
    `generator` (CPU; None: global). `lean`: `lean_decoder` where supported, else the HF forward.
    Returns ordinary tensors, usable as constants in a later backward."""
    device, batch = device_of(policy), len(prompts)
    ids, mask, positions = left_pad(prompts, pad_id, device)
    max_len = ids.shape[1] + max_new_tokens
    step, keep_rows = (lean_decoder(policy.lm, batch, max_len)
                       if lean and lean_supported(policy, max_len) else hf_decoder(policy))
    stop = torch.tensor(stop, dtype=torch.long, device=device)
    uniforms = (torch.rand((max_new_tokens, batch), generator=generator).to(device)
                if temperature > 0 else torch.zeros((max_new_tokens, batch), device=device))
    tokens = torch.full((batch, max_new_tokens), pad_id, dtype=torch.long, device=device)
    lengths = torch.zeros(batch, dtype=torch.long, device=device)
    live = torch.arange(batch, device=device)  # original row of each row still decoding
    done = torch.zeros(batch, dtype=torch.bool, device=device)  # finished but not yet dropped
    logits = step(ids, mask, positions)
    next_pos = positions[:, -1] + 1
    for t in range(max_new_tokens):
        token = pick_tokens(logits, temperature, top_p, uniforms[t, live]).masked_fill(done, pad_id)
        tokens[live, t] = token
        lengths[live] += (~done).long()
        done = done | torch.isin(token, stop)
        if t == max_new_tokens - 1:
            break
        if (t + 1) % SYNC_EVERY == 0:
            finished = int(done.sum())
            if finished == len(live):
                break
            if 4 * finished >= len(live):
                keep = (~done).nonzero().squeeze(-1)
                keep_rows(keep)
                live, token, mask, next_pos, done = (
                    x[keep] for x in (live, token, mask, next_pos, done))
        mask = torch.cat([mask, mask.new_ones(len(live), 1)], dim=1)
        logits = step(token[:, None], mask, next_pos[:, None])
        next_pos = next_pos + 1
    last = tokens.gather(1, (lengths - 1).clamp(min=0)[:, None]).squeeze(-1)
    finished = (lengths > 0) & torch.isin(last, stop)
    return Rollout(tokens.clone(), lengths.clone(), finished)


@dataclass
class Completion:
    prompt_ids: list   # the rendered prompt's token ids
    ids: list          # the new token ids, the stop token included when it came
    text: str          # the new tokens decoded, the stop token and special tokens dropped
    finished: bool     # ended on a stop token


def complete(policy, tokenizer, prompts, max_new_tokens, temperature=1.0, top_p=1.0,
             generator=None, batch_size=64):
    """One completion per rendered prompt, `batch_size` per decode loop, sorted by length."""
    prompt_ids = encode(tokenizer, prompts)
    stop = stop_ids(policy.lm, tokenizer)
    order = sorted(range(len(prompts)), key=lambda i: len(prompt_ids[i]))
    out = [None] * len(prompts)
    for start in range(0, len(order), batch_size):
        rows = order[start:start + batch_size]
        roll = generate(policy, [prompt_ids[i] for i in rows], max_new_tokens, stop,
                        tokenizer.pad_token_id, temperature, top_p, generator)
        tokens, lengths, finished = (x.tolist() for x in (roll.tokens, roll.lengths,
                                                          roll.finished))  # one copy to host
        for j, i in enumerate(rows):
            ids = tokens[j][:lengths[j]]
            text = tokenizer.decode(ids[:-1] if finished[j] else ids, skip_special_tokens=True)
            out[i] = Completion(prompt_ids[i], ids, text, finished[j])
    return out


# ----------------------------------------------------------------------------- teacher forcing

@dataclass
class Packed:
    """Prompt + completion sequences, right-padded, and where the completion tokens are scored."""
    input_ids: torch.Tensor       # [B, L]
    rows: torch.Tensor            # [n] row of each scored completion token
    cols: torch.Tensor            # [n] position whose hidden state predicts it
    targets: torch.Tensor         # [n] the completion token ids
    seq_of_token: torch.Tensor    # [n] index of the sequence each token belongs to


def pack(prompts, completions, pad_id, device):
    """Right-padded prompt+completion ids, the completion tokens flattened. No attention mask:
    with right padding no real token sees a pad and pads are never scored, so the forward keeps
    its fused causal kernel (flash attention on CUDA)."""
    if any(not p for p in prompts):
        raise ValueError("pack: an empty prompt leaves no position to predict the first "
                         "completion token (encode() puts a bos in front of every prompt)")
    seqs = [p + c for p, c in zip(prompts, completions)]
    ids = torch.full((len(seqs), max(len(s) for s in seqs)), pad_id, dtype=torch.long)
    rows, cols = [], []
    for i, (p, s) in enumerate(zip(prompts, seqs)):
        ids[i, :len(s)] = torch.tensor(s, dtype=torch.long)
        rows += [i] * (len(s) - len(p))
        cols += range(len(p) - 1, len(s) - 1)  # hidden state at j predicts token j + 1
    rows, cols = torch.tensor(rows, dtype=torch.long), torch.tensor(cols, dtype=torch.long)
    return Packed(*(t.to(device) for t in (ids, rows, cols, ids[rows, cols + 1], rows)))


def run_head(policy, packed, head):
    """Forward `packed` and apply head(hidden [n, H] of the scored tokens, lm_head weight)."""
    def on_scored(hidden, weight):
        return head(hidden[packed.rows, packed.cols], weight)
    return policy(on_scored, input_ids=packed.input_ids, use_cache=False)[0]


# ----------------------------------------------------------------------------- distributed

def setup_distributed():
    """(rank, world_size, device), starting the process group under torchrun (nccl or gloo).
    On CUDA fp32 matmuls may use TF32: the fused loss's fp32 logits of bf16 inputs lose nothing
    by it, a bf16 number being exact in TF32."""
    cuda = torch.cuda.is_available()
    if cuda:
        torch.set_float32_matmul_precision("high")
    if dist.is_initialized():
        device = torch.device("cuda", torch.cuda.current_device()) if cuda else torch.device("cpu")
        return dist.get_rank(), dist.get_world_size(), device
    if "RANK" not in os.environ:
        return 0, 1, torch.device("cuda" if cuda else "cpu")
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    if cuda:
        local = int(os.environ.get("LOCAL_RANK", 0))
        torch.cuda.set_device(local)
        # rank 0 alone reads and writes whole checkpoints while the others wait: > 10 minutes
        dist.init_process_group("nccl", device_id=torch.device("cuda", local),
                                timeout=datetime.timedelta(minutes=60))
        return rank, world, torch.device("cuda", local)
    dist.init_process_group("gloo")
    return rank, world, torch.device("cpu")


def teardown_distributed():
    """Leave the process group together (a rank that tears down gloo while a peer still works
    kills it with SIGABRT). Success path only: a failed rank would leave its peers waiting."""
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def rank():
    return dist.get_rank() if dist.is_initialized() else 0


def is_main():
    return rank() == 0


def world():
    return dist.get_world_size() if dist.is_initialized() else 1


def barrier():
    if dist.is_initialized():
        dist.barrier()


# Every collective of ours goes through these helpers, which put the tensors where the backend
# reduces them: NCCL only CUDA tensors, gloo only CPU ones.

def collective_device(backend):
    """The device a backend ("gloo", "nccl", or a map like "cpu:gloo,cuda:nccl") reduces on."""
    backends = dict(part.split(":") for part in backend.split(",")) if ":" in backend else {}
    if "cpu" in backends or backend == "gloo":
        return torch.device("cpu")
    if "nccl" in backend:
        return torch.device("cuda")  # the current device, set by setup_distributed
    raise ValueError(f"no collective device known for backend {backend!r}")


def all_reduce(values, op="sum"):
    """Sum (op "sum") or max (op "max") a list of floats over ranks; the list back."""
    if not dist.is_initialized():
        return [float(v) for v in values]
    t = torch.tensor(values, dtype=torch.float64, device=collective_device(dist.get_backend()))
    dist.all_reduce(t, op={"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX}[op])
    return t.tolist()


def all_gather_objects(obj):
    """[obj of rank 0, obj of rank 1, ...] (picklable objects; [obj] in one process)."""
    if not dist.is_initialized():
        return [obj]
    everyone = [None] * dist.get_world_size()
    dist.all_gather_object(everyone, obj)  # torch places it on the current CUDA device for nccl
    return everyone


def broadcast_(tensor):
    """Overwrite `tensor` in place with rank 0's (staged through the backend's device)."""
    if not dist.is_initialized():
        return tensor
    staged = tensor.to(collective_device(dist.get_backend()))
    dist.broadcast(staged, src=0)
    return tensor.copy_(staged)


def decoder_layers(lm):
    return lm.base_model.layers  # every architecture in SUPPORTED keeps them here


def enable_checkpointing(policy):
    """Each decoder layer recomputes its activations in backward (only in `policy.train()`)."""
    policy.lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return policy


def shard(policy, activation_checkpointing=False):
    """FSDP2: a group per decoder layer, then the root (embeddings, final norm, lm_head: tied
    weights share it). bf16 compute, fp32 reduction on CUDA; fp32 on CPU (no bf16 speed there)."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
    mp = (MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
          if torch.cuda.is_available() else MixedPrecisionPolicy())
    if activation_checkpointing:
        enable_checkpointing(policy)
    for layer in decoder_layers(policy.lm):
        fully_shard(layer, mp_policy=mp)
    fully_shard(policy, mp_policy=mp)
    return policy


@contextlib.contextmanager
def gathered_for_rollout(policy):
    """Keep every FSDP2 group unsharded for a rollout phase: one all-gather, not one per layer per
    token, so decoding runs at single-GPU speed for one full copy of the (bf16) parameters."""
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

def replace_dir(tmp, final):
    """Swap a finished directory into place: readers see the old or the new, never half (a crash
    between the renames leaves `final.old`, whole, for `recover_dir`)."""
    old = final + ".old"
    if os.path.exists(final):
        shutil.rmtree(old, ignore_errors=True)
        os.rename(final, old)
    os.rename(tmp, final)
    shutil.rmtree(old, ignore_errors=True)


def recover_dir(final):
    """Put `final` back after a crash between `replace_dir`'s renames; whether `final` exists."""
    if not os.path.exists(final) and os.path.isdir(final + ".old"):
        os.rename(final + ".old", final)
    return os.path.exists(final)


def save_pretrained_atomic(lm, tokenizer, path, state_dict=None, dtype=None):
    """save_pretrained into `path.tmp`, then swap it in; `dtype` is written to config.json when
    the state dict was cast to it (save_pretrained would record the module's own)."""
    from transformers.utils import logging as hf_logging
    hf_logging.disable_progress_bar()
    tmp = path.rstrip("/") + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    lm.save_pretrained(tmp, state_dict=state_dict)
    tokenizer.save_pretrained(tmp)
    if dtype is not None:
        config_path = os.path.join(tmp, "config.json")
        with open(config_path) as f:
            config = json.load(f)
        with open(config_path, "w") as f:
            json.dump({**config, "dtype": str(dtype).removeprefix("torch.")}, f, indent=2)
    replace_dir(tmp, path.rstrip("/"))
