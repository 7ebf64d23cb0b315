"""update.py: one optimizer step of the policy on a list of samples, one process or FSDP2.

A Sample is a prompt, a completion and a coefficient per completion token. train_on packs the
samples into micro-batches of `micro_batch` sequences, runs each through loss.fused_loss
(the head never forms the [tokens, vocab] logits), sums the gradients, clips them and steps:

    pg:   L = -sum_t min(r_t c_t, clip(r_t, 1 - eps, 1 + eps) c_t) / T
    nll:  L = -sum_t c_t log pi(y_t) / T
    dpo:  L = -sum_p log sigmoid(beta (S_chosen - S_rejected)) / P     (dpo_update)

with c_t a token's coefficient (its advantage times its credit from refine.py; 1 for NLL),
r_t = pi_theta / pi_old, T the token count and P the pair count over every rank, and S a
sequence's summed log pi - log pi_ref. Each rank divides by the global count and scales its
loss by the world size, since FSDP averages gradients over ranks; a rank with fewer
micro-batches runs padding ones (each FSDP forward is a collective every rank must join).
Beside them: `nll_sample` (a demonstration as a Sample of coefficient 1) and `step_randomness`
(every step's task RNG and sampling generator from (seed, step, rank), so a resumed run repeats
the uninterrupted one).

Nothing to run here: warmup.py and selfplay.py call it, tests/test_train.py and
tests/test_gpu_path.py test it (against a naive loss, on a meta-device policy, over gloo).
"""
import math
import random
from dataclasses import dataclass

import torch

import model as M
import roles
from loss import fused_loss, token_logprobs


@dataclass
class Sample:
    """One sequence to train on: a prompt, a completion and a coefficient per completion token."""
    role: str
    prompt_ids: list
    ids: list
    coef: list


@dataclass
class MicroBatch:
    """Samples packed for one forward on the policy's device."""
    packed: M.Packed
    coef: torch.Tensor  # [n] coefficient of each completion token
    mask: torch.Tensor  # [n] bool, False on a padding batch
    padding: bool       # a stand-in that keeps this rank in step with the others


def micro_batches(groups, pad_id, device):
    """One MicroBatch per group of samples, then padding ones up to the most any rank has (at
    least one): every FSDP forward is a collective, so every rank runs as many. A padding batch
    (one pad token, coefficient 0, mask False) gives exactly 0 loss and 0 gradient."""
    count = max(1, int(M.all_reduce([len(groups)], "max")[0]))
    out = []
    for group in groups + [None] * (count - len(groups)):
        part = group or [Sample("padding", [pad_id], [pad_id], [0.0])]
        packed = M.pack([s.prompt_ids for s in part], [s.ids for s in part], pad_id, device)
        coef = torch.tensor([c for s in part for c in s.coef], device=device)
        out.append(MicroBatch(packed, coef, torch.full_like(coef, group is not None,
                                                            dtype=torch.bool), group is None))
    return out


def logprobs_of(policy, batch):
    """log pi of the batch's completion tokens, by the fused loss's arithmetic (no gradient)."""
    with torch.no_grad():
        return M.run_head(policy, batch.packed,
                          lambda h, w: token_logprobs(h, w, batch.packed.targets))


def train_on(policy, optimizer, samples, cfg, pad_id, mode, epochs=1):
    """`epochs` optimizer steps on `samples` (mode "pg" or "nll"), each the gradient of the fused
    loss summed over micro-batches of `micro_batch` samples. The loss is divided by the global
    token count and scaled by the world size, since FSDP averages gradients over ranks.

    The policy gradient's pi_old and the KL's reference are the policy before the first epoch:
    with one epoch and no KL it is pi_theta itself (ratio exactly 1, nothing to compute); else its
    log-probs are taken by the loss's own arithmetic on the same micro-batches, so the first
    epoch's ratio is exactly 1 in bf16 too (the sampler's bf16 log-probs would not be). Returns
    the last epoch's figures (loss, entropy, grad norm, tokens, and the clipped fraction)."""
    device = M.device_of(policy)
    samples = sorted(samples, key=lambda s: len(s.prompt_ids) + len(s.ids))  # less padding
    size = cfg.micro_batch
    batches = micro_batches([samples[i:i + size] for i in range(0, len(samples), size)], pad_id,
                            device)
    tokens = M.all_reduce([sum(len(s.ids) for s in samples)])[0]
    normalizer = torch.tensor(max(tokens, 1.0), device=device)
    old = [None] * len(batches)
    if mode == "pg" and (epochs > 1 or cfg.kl_coef):
        old = [logprobs_of(policy, b) for b in batches]
    for _ in range(epochs):
        totals = []
        for b, old_logp in zip(batches, old):
            def head(hidden, weight):
                return fused_loss(hidden, weight, b.packed.targets, b.coef, mode,
                                    old_logp=old_logp, clip_eps=cfg.clip_eps,
                                    kl_coef=cfg.kl_coef, ref_logp=old_logp if cfg.kl_coef else None,
                                    mask=b.mask, normalizer=normalizer)
            loss, stats = M.run_head(policy, b.packed, head)
            (loss * M.world()).backward()
            totals.append(figures(loss, stats, b.mask))
        metrics = finish_step(policy, optimizer, cfg, torch.stack(totals).sum(0))
    return metrics


def figures(loss, stats, mask):
    """[loss, entropy x tokens, tokens, clipped tokens] of one micro-batch, on its device."""
    n = mask.sum().to(loss.dtype)
    clipped = stats.get("clip_frac", torch.zeros_like(n))
    return torch.stack([loss.detach(), stats["entropy"] * n, n, clipped * n]).double()


def finish_step(policy, optimizer, cfg, totals):
    """Clip, skip the step if anything is non-finite, else apply it. `totals`: this rank's
    summed `figures`. The step's one host sync reads them together with the gradient norm."""
    norm = torch.nn.utils.clip_grad_norm_(policy.parameters(), cfg.grad_clip)
    norm = norm.full_tensor() if hasattr(norm, "full_tensor") else norm
    *mine, norm = torch.cat([totals, norm.detach().double().view(1).to(totals.device)]).tolist()
    loss, ent_sum, n, clipped = M.all_reduce(mine)  # one collective for all figures
    skipped = not (math.isfinite(norm) and math.isfinite(loss))
    if not skipped:
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return {"loss": loss, "entropy": ent_sum / max(n, 1), "grad_norm": norm,
            "skipped": int(skipped), "tokens": n, "clip_frac": clipped / max(n, 1)}


def nll_sample(tok, role, prompt, completion, cfg):
    ids = tok(completion, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    return Sample(role, M.encode(tok, [roles.render(tok, prompt, cfg.hints)])[0], ids,
                  [1.0] * len(ids))


def step_randomness(cfg, step, rank):
    """The step's task RNG and sampling generator, from (seed, step, rank) alone: a resumed
    run draws exactly what the uninterrupted one drew. The generator is a CPU one on every
    device: the sampler draws its uniforms on the host (sampling.generate)."""
    return (random.Random(f"{cfg.seed}/{step}/{rank}"),
            torch.Generator().manual_seed(hash((cfg.seed, step, rank)) % 2**31))



def dpo_update(policy, optimizer, pairs, thoughts, cfg, pad_id):
    """One step on DPO pairs (samples 2p chosen, 2p+1 rejected) plus long-thought NLL, in
    micro-batches of at most `micro_batch` sequences that never split a pair. The DPO reference
    is the policy itself before the step (the sampling policy: no second copy), its log-probs
    taken on the same micro-batch. Loss: the mean over every rank's pairs plus the mean over
    every rank's thought tokens."""
    device = M.device_of(policy)
    per = 2 * max(1, cfg.micro_batch // 2)
    n_pairs, n_tokens = M.all_reduce([len(pairs) // 2, sum(len(s.ids) for s in thoughts)])
    plan = [(b, "dpo", n_pairs) for b in micro_batches(
        [pairs[i:i + per] for i in range(0, len(pairs), per)], pad_id, device)]
    plan += [(b, "nll", n_tokens) for b in micro_batches(
        [thoughts[i:i + cfg.micro_batch] for i in range(0, len(thoughts), cfg.micro_batch)],
        pad_id, device)]
    normalizers = {mode: torch.tensor(max(count, 1.0), device=device) for _, mode, count in plan}
    totals = []
    for b, mode, _ in plan:
        # every DPO batch takes its reference forward, padding ones too: each forward is a
        # collective under FSDP, so every rank must run as many
        ref = logprobs_of(policy, b) if mode == "dpo" else None
        mode = "nll" if b.padding else mode  # a padding batch has no pair to compare

        def head(hidden, weight):
            return fused_loss(hidden, weight, b.packed.targets, b.coef, mode, ref_logp=ref,
                                seq_id=b.packed.seq_of_token, n_seq=len(b.packed.input_ids),
                                beta=cfg.dpo_beta, mask=b.mask, normalizer=normalizers[mode])
        loss, stats = M.run_head(policy, b.packed, head)
        (loss * M.world()).backward()
        totals.append(figures(loss, stats, b.mask))
    return finish_step(policy, optimizer, cfg, torch.stack(totals).sum(0))

