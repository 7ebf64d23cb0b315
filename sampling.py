"""sampling.py: completions from the policy, with our own KV-cache decode loop.

`generate` decodes a batch of left-padded prompts token by token; for Llama-family models
`lean_decoder` calls the decoder layers directly on a preallocated KV cache (no Hugging Face
cache objects), otherwise the Hugging Face forward serves (`hf_decoder`). `complete` renders
text in and text out for the roles; it is what self-play and eval.py call.

The math: from logits z the token is drawn from softmax(z / T), restricted to the smallest set
of tokens whose probability reaches top_p (nucleus); T = 0 means argmax. The draw inverts the
cumulative distribution at a uniform u from a CPU generator, so a seed gives the same uniforms
on any device (and the same completions wherever the logits agree).

Tests: tests/test_model.py (against Hugging Face `generate` and logits);
benchmark: python tests/bench_generate.py.
"""
from dataclasses import dataclass

import torch
import torch.nn.functional as F

import model as M


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
                      position_ids=positions, cache=cache, use_cache=True)[0]
    return step, cache.batch_select_indices


LEAN_FAMILIES = ("llama", "qwen2", "qwen3", "mistral")


def lean_decoder(lm, batch, max_len):
    """Decode through the layers' weights with a preallocated KV cache: the HF Llama math
    (RMSNorm, the model's `rotary_emb`, GQA, SiLU MLP; Qwen3's QK-norm) without its per-call
    overhead (output capturing, masks, growing caches), most of a step for a small model. Under
    FSDP2 call it inside `gathered_for_rollout`.

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
            if cfg.model_type == "qwen3":  # each head's query and key RMS-normed, then rotated
                q, k = attn.q_norm(q), attn.k_norm(k)
            k_cache[:rows, :, filled:end] = rotate(k, cos, sin)
            v_cache[:rows, :, filled:end] = v
            q = rotate(q, cos, sin).reshape(rows, kv_heads, group * width, head_dim)
            out = F.scaled_dot_product_attention(q, k_cache[:rows, :, :end],
                                                 v_cache[:rows, :, :end], attn_mask=allowed)
            # reshape, not view: CUDA's fused kernels return a transposed view of [B, M, H, D]
            out = out.reshape(rows, -1, width, head_dim).transpose(1, 2).reshape(rows, width, -1)
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
    """Llama, Qwen2 (attention biases come with the modules), Qwen3 and Mistral: SiLU, plain
    logits, and a sliding window (if any) longer than the sequence."""
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
    Returns inference tensors: to read (complete() copies them to lists); clone one outside
    inference mode before it enters a computation autograd records."""
    device, batch = M.device_of(policy), len(prompts)
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
    return Rollout(tokens, lengths, finished)


@dataclass
class Completion:
    prompt_ids: list   # the rendered prompt's token ids
    ids: list          # the new token ids, the stop token included when it came
    text: str          # the new tokens decoded, the stop token and special tokens dropped
    finished: bool     # ended on a stop token


def complete(policy, tokenizer, prompts, max_new_tokens, temperature=1.0, top_p=1.0,
             generator=None, batch_size=64):
    """One completion per rendered prompt, `batch_size` per decode loop, sorted by length."""
    prompt_ids = M.encode(tokenizer, prompts)
    stop = M.stop_ids(policy.lm, tokenizer)
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
