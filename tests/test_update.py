"""update.py's policy-gradient step on a tiny model: the ratio pi_theta / pi_old and its clip.

Run: python -m pytest -q tests/test_update.py
"""
import pytest
import torch

import model as M
import train
import update
from loss import fused_loss, token_logprobs


def rl_samples_of(prompts, completions, advantages):
    return [update.Sample("solve", p, c, [a] * len(c))
            for p, c, a in zip(prompts, completions, advantages)]


PROMPTS, COMPLETIONS = [[1, 5, 6], [1, 7], [1, 9, 9, 9]], [[8, 9, 10], [11, 12], [13, 14]]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_ratio_is_exactly_one_until_the_weights_move(tiny, dtype):
    """pi_old is taken by the loss's own arithmetic on the same micro-batches, so with frozen
    weights every epoch's ratio is 1: with a clip range of 1e-3 nothing is clipped, in bf16 too.
    The bf16 logits of the plain forward (what a sampler reads) are not that close: as pi_old
    they put tokens outside the same clip range."""
    policy, tok = M.load(tiny, dtype=dtype)
    cfg = train.parse_args(["--clip_eps=1e-3", "--micro_batch=2"])
    samples = rl_samples_of(PROMPTS, COMPLETIONS, [1.0, -1.0, 1.0])
    frozen = torch.optim.SGD(policy.parameters(), lr=0.0)
    metrics = update.train_on(policy, frozen, samples, cfg, tok.pad_token_id, "pg", epochs=3)
    assert metrics["clip_frac"] == 0.0 and metrics["tokens"] == 7
    if dtype == torch.bfloat16:
        packed = M.pack(PROMPTS, COMPLETIONS, tok.pad_token_id, "cpu")
        with torch.no_grad():
            logits = policy.lm(input_ids=packed.input_ids).logits  # bf16
            sampler = torch.log_softmax(logits[packed.rows, packed.cols], -1).float().gather(
                -1, packed.targets[:, None]).squeeze(-1)
            _, stats = M.run_head(policy, packed, lambda h, w: fused_loss(
                h, w, packed.targets, torch.ones(7), "pg", old_logp=sampler, clip_eps=1e-3))
        assert stats["clip_frac"] > 0


def test_clip_fraction_counts_tokens_outside_the_trust_region(tiny):
    """The second epoch's clipped fraction is that of the tokens whose ratio after the first step,
    exp(log pi_1 - log pi_0) recomputed here, left the clip range on its advantage's side (above
    1 + eps for a positive advantage, below 1 - eps for a negative one)."""
    cfg = train.parse_args(["--grad_clip=100"])
    advantages = [1.0, -1.0, 1.0]
    samples = rl_samples_of(PROMPTS, COMPLETIONS, advantages)
    packed = M.pack(PROMPTS, COMPLETIONS, 0, "cpu")
    coef = torch.tensor([a for a, c in zip(advantages, COMPLETIONS) for _ in c])

    def logp(policy):
        return M.run_head(policy, packed, lambda h, w: token_logprobs(h, w, packed.targets))
    policy, tok = M.load(tiny)
    before = logp(policy)
    one = update.train_on(policy, torch.optim.SGD(policy.parameters(), lr=3.0), samples, cfg,
                          tok.pad_token_id, "pg", epochs=1)
    ratio = torch.exp(logp(policy) - before)
    expected = ((coef > 0) & (ratio > 1 + cfg.clip_eps)) | ((coef < 0) & (ratio < 1 - cfg.clip_eps))
    policy, tok = M.load(tiny)
    two = update.train_on(policy, torch.optim.SGD(policy.parameters(), lr=3.0), samples, cfg,
                          tok.pad_token_id, "pg", epochs=2)
    assert one["clip_frac"] == 0.0 and 0 < expected.sum() < len(coef)
    assert two["clip_frac"] == pytest.approx(expected.double().mean().item())
