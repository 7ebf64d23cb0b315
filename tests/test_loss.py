"""Tests of loss.fused_loss against a naive reference written here independently.

The reference materialises the full [N, V] logits, takes log_softmax and lets autograd
differentiate; the fused loss must agree on the loss and on the gradients with respect to
the hidden states and the lm_head weight, for every mode, within 1e-5 (float32) and 1e-10
(float64) relative error, measured as max|fused - naive| / max|naive| per tensor.

Run: python -m pytest -q tests/test_loss.py
"""
import pytest
import torch
import torch.nn.functional as F

from loss import fused_loss

TOLERANCE = {torch.float32: 1e-5, torch.float64: 1e-10}


def naive_loss(hidden, weight, targets, coef, mode, old_logp=None, ref_logp=None, clip_eps=0.2,
               kl_coef=0.0, seq_id=None, beta=0.1, normalizer=None, mask=None):
    """Full logits, log_softmax, autograd: the textbook version of each objective."""
    logits = hidden.float() @ weight.float().T if hidden.dtype != torch.float64 \
        else hidden @ weight.T
    logp = F.log_softmax(logits, dim=-1).gather(1, targets[:, None]).squeeze(1)
    mask = ((coef != 0) if mask is None else mask).to(logp.dtype)
    tokens = normalizer if normalizer is not None else max(int(mask.sum()), 1)
    if mode == "nll":
        return -(coef * logp).sum() / tokens
    if mode == "pg":
        old = logp.detach() if old_logp is None else old_logp
        ratio = torch.exp(logp - old)
        clipped = torch.clamp(ratio, 1 - clip_eps, 1 + clip_eps)
        per_token = -torch.min(ratio * coef, clipped * coef)
        if kl_coef:
            log_ref_over_pi = ref_logp - logp
            per_token = per_token + kl_coef * mask * (
                torch.exp(log_ref_over_pi) - log_ref_over_pi - 1)
        return per_token.sum() / tokens
    # dpo: pair p = (sequence 2p chosen, sequence 2p+1 rejected)
    n_pairs = (int(seq_id.max()) + 2) // 2
    terms = []
    for p in range(n_pairs):
        chosen, rejected = seq_id == 2 * p, seq_id == 2 * p + 1
        pi = (coef * logp)[chosen].sum() - (coef * logp)[rejected].sum()
        ref = (coef * ref_logp)[chosen].sum() - (coef * ref_logp)[rejected].sum()
        terms.append(-F.logsigmoid(beta * (pi - ref)))
    return torch.stack(terms).sum() / (n_pairs if normalizer is None else normalizer)


def make_case(n, vocab, dim, dtype, mode, seed=0):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(n, dim, generator=g, dtype=dtype)
    weight = torch.randn(vocab, dim, generator=g, dtype=dtype) / dim ** 0.5
    targets = torch.randint(0, vocab, (n,), generator=g)
    coef = torch.randn(n, generator=g, dtype=dtype)
    coef[torch.rand(n, generator=g) < 0.2] = 0  # masked tokens
    with torch.no_grad():
        true_logp = F.log_softmax(hidden @ weight.T, -1).gather(1, targets[:, None]).squeeze(1)
    kw = {}
    if mode == "pg":  # off policy by up to +-0.5 nats: some tokens clip, some not
        kw = dict(old_logp=true_logp + (torch.rand(n, generator=g, dtype=dtype) - 0.5),
                  ref_logp=true_logp + 0.3 * torch.randn(n, generator=g, dtype=dtype),
                  kl_coef=0.05)
    if mode == "nll":
        coef = coef.abs()
    if mode == "dpo":  # 3 pairs = 6 sequences of contiguous tokens; coef 0/1 (prompt/completion)
        seq_id = torch.sort(torch.randint(0, 6, (n,), generator=g)).values
        seq_id[:6] = torch.arange(6)
        seq_id = torch.sort(seq_id).values
        coef = (coef != 0).to(dtype)
        kw = dict(seq_id=seq_id, ref_logp=true_logp + torch.randn(n, generator=g, dtype=dtype),
                  beta=0.5)
    return hidden, weight, targets, coef, kw


def rel_err(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


def run_both(hidden, weight, targets, coef, mode, chunk_size, **kw):
    h1, w1 = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
    loss, stats = fused_loss(h1, w1, targets, coef, mode, chunk_size=chunk_size, **kw)
    loss.backward()
    h2, w2 = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
    ref = naive_loss(h2, w2, targets, coef, mode, **kw)
    ref.backward()
    return (loss, h1.grad, w1.grad, stats), (ref, h2.grad, w2.grad)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("mode", ["pg", "nll", "dpo"])
@pytest.mark.parametrize("n,vocab,chunk", [(203, 997, 64), (50, 130, 64), (128, 301, 32)])
def test_matches_naive(mode, dtype, n, vocab, chunk):
    hidden, weight, targets, coef, kw = make_case(n, vocab, 24, dtype, mode, seed=n + vocab)
    fused, naive = run_both(hidden, weight, targets, coef, mode, chunk, **kw)
    (loss, gh, gw, stats), (ref, rh, rw) = fused, naive
    tol = TOLERANCE[dtype]
    assert abs(loss.item() - ref.item()) <= tol * max(abs(ref.item()), 1e-3)
    assert rel_err(gh, rh) <= tol
    assert rel_err(gw, rw) <= tol
    assert gh.dtype == dtype and gw.dtype == dtype
    if mode == "pg":  # the case must actually exercise clipping, but not everywhere
        assert 0 < stats["clip_frac"].item() < 1
        assert stats["kl"].item() > 0


@pytest.mark.parametrize("mode", ["pg", "nll"])
def test_on_policy_default_and_explicit_normalizer(mode):
    hidden, weight, targets, coef, _ = make_case(70, 211, 16, torch.float64, mode)
    (loss, gh, gw, stats), (ref, rh, rw) = run_both(hidden, weight, targets, coef, mode, 16,
                                                    normalizer=1000)
    assert abs(loss.item() - ref.item()) <= 1e-10 * abs(ref.item())
    assert rel_err(gh, rh) <= 1e-10 and rel_err(gw, rw) <= 1e-10
    if mode == "pg":
        assert stats["clip_frac"].item() == 0  # ratio is 1 on policy


def test_kl_mask_reaches_zero_coefficient_tokens():
    hidden, weight, targets, coef, kw = make_case(90, 150, 16, torch.float64, "pg")
    mask = torch.ones(90, dtype=torch.bool)
    mask[-10:] = False  # e.g. padding
    (loss, gh, gw, _), (ref, rh, rw) = run_both(hidden, weight, targets, coef, "pg", 32,
                                                mask=mask, **kw)
    assert abs(loss.item() - ref.item()) <= 1e-10 * abs(ref.item())
    assert rel_err(gh, rh) <= 1e-10 and rel_err(gw, rw) <= 1e-10
    zero_coef = (coef == 0) & mask
    assert zero_coef.any() and gh[zero_coef].abs().sum() > 0  # KL pulls them, coef does not


def test_chunk_size_does_not_change_the_result():
    hidden, weight, targets, coef, kw = make_case(37, 101, 8, torch.float64, "pg")
    results = []
    for chunk in (1, 5, 37, 1000):
        h, w = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
        loss, _ = fused_loss(h, w, targets, coef, "pg", chunk_size=chunk, **kw)
        loss.backward()
        results.append((loss.detach(), h.grad, w.grad))
    for other in results[1:]:
        for a, b in zip(results[0], other):
            assert torch.allclose(a, b, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_tied_embedding_gradients_add_up(dtype):
    g = torch.Generator().manual_seed(3)
    vocab, dim, n = 173, 20, 61
    table = torch.randn(vocab, dim, generator=g, dtype=dtype) / dim ** 0.5
    mix = torch.randn(dim, dim, generator=g, dtype=dtype) / dim ** 0.5
    inputs = torch.randint(0, vocab, (n,), generator=g)
    targets = torch.randint(0, vocab, (n,), generator=g)
    coef = torch.randn(n, generator=g, dtype=dtype)
    grads = []
    for loss_fn in ("fused", "naive"):
        emb, lin = table.clone().requires_grad_(), mix.clone().requires_grad_()
        hidden = torch.tanh(emb[inputs] @ lin)  # the table is the input embedding ...
        if loss_fn == "fused":  # ... and the lm_head weight
            loss, _ = fused_loss(hidden, emb, targets, coef, "pg", chunk_size=16)
        else:
            loss = naive_loss(hidden, emb, targets, coef, "pg")
        loss.backward()
        grads.append((emb.grad, lin.grad))
    (fe, fl), (ne, nl) = grads
    assert rel_err(fe, ne) <= TOLERANCE[dtype] and rel_err(fl, nl) <= TOLERANCE[dtype]


@pytest.mark.parametrize("mode", ["pg", "nll", "dpo"])
def test_grad_output_scales_gradients(mode):
    hidden, weight, targets, coef, kw = make_case(40, 97, 8, torch.float64, mode)
    h1, w1 = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
    (fused_loss(h1, w1, targets, coef, mode, chunk_size=16, **kw)[0] * 3).backward()
    h2, w2 = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
    (naive_loss(h2, w2, targets, coef, mode, **kw) * 3).backward()
    assert rel_err(h1.grad, h2.grad) <= 1e-10 and rel_err(w1.grad, w2.grad) <= 1e-10


def test_stats_entropy_and_logp_match_full_softmax():
    hidden, weight, targets, coef, kw = make_case(45, 89, 8, torch.float64, "pg")
    _, stats = fused_loss(hidden, weight, targets, coef, "pg", chunk_size=8, **kw)
    logprobs = F.log_softmax(hidden @ weight.T, -1)
    mask = coef != 0
    entropy = -(logprobs.exp() * logprobs).sum(-1)[mask].mean()
    logp = logprobs.gather(1, targets[:, None]).squeeze(1)
    assert abs(stats["entropy"].item() - entropy.item()) < 1e-9
    assert abs(stats["logp"].item() - logp[mask].mean().item()) < 1e-9
    diff = kw["ref_logp"] - logp
    assert abs(stats["kl"].item() - (diff.exp() - diff - 1)[mask].mean().item()) < 1e-9
    assert stats["tokens"].item() == mask.sum().item()


def test_dpo_stats_and_gradient_sign():
    hidden, weight, targets, coef, kw = make_case(60, 97, 8, torch.float64, "dpo")
    h = hidden.clone().requires_grad_()
    loss, stats = fused_loss(h, weight, targets, coef, "dpo", chunk_size=16, **kw)
    loss.backward()
    # closed form: S = sum of c (log p - ref) per sequence; a pair is right when S_chosen > S_rej
    logp = F.log_softmax(hidden @ weight.T, -1).gather(1, targets[:, None]).squeeze(1)
    sums = torch.zeros(6, dtype=logp.dtype).index_add_(0, kw["seq_id"],
                                                       coef * (logp - kw["ref_logp"]))
    assert stats["dpo_accuracy"].item() == (sums[0::2] > sums[1::2]).double().mean().item()
    assert abs(stats["dpo_margin"].item() - (sums[0::2] - sums[1::2]).mean().item()) < 1e-9
    # a small step against the gradient must lower the loss
    with torch.no_grad():
        lower, _ = fused_loss(hidden - 1e-3 * h.grad, weight, targets, coef, "dpo", **kw)
    assert lower.item() < loss.item()


def test_bfloat16_inputs_compute_in_float32():
    hidden, weight, targets, coef, kw = make_case(64, 131, 16, torch.float32, "pg")
    hb, wb = hidden.bfloat16().requires_grad_(), weight.bfloat16().requires_grad_()
    loss, _ = fused_loss(hb, wb, targets, coef, "pg", chunk_size=16, **kw)
    loss.backward()
    assert loss.dtype == torch.float32 and hb.grad.dtype == torch.bfloat16
    # the reference sees the very same (bf16-representable) values in float32
    h2 = hb.detach().float().requires_grad_()
    w2 = wb.detach().float().requires_grad_()
    ref = naive_loss(h2, w2, targets, coef, "pg", **kw)
    ref.backward()
    assert abs(loss.item() - ref.item()) <= 1e-5 * abs(ref.item())
    assert rel_err(hb.grad.float(), h2.grad) <= 1e-2 and rel_err(wb.grad.float(), w2.grad) <= 1e-2


def test_no_grad_and_frozen_weight():
    hidden, weight, targets, coef, kw = make_case(30, 50, 8, torch.float64, "nll")
    with torch.no_grad():
        loss, _ = fused_loss(hidden.requires_grad_(), weight, targets, coef, "nll")
    assert not loss.requires_grad
    h = hidden.detach().clone().requires_grad_()
    loss, _ = fused_loss(h, weight, targets, coef, "nll", chunk_size=7)  # weight frozen
    loss.backward()
    h2 = hidden.detach().clone().requires_grad_()
    naive_loss(h2, weight, targets, coef, "nll").backward()
    assert rel_err(h.grad, h2.grad) <= 1e-10 and weight.grad is None


def test_second_backward_is_refused_and_bad_mode_raises():
    hidden, weight, targets, coef, _ = make_case(10, 20, 4, torch.float64, "nll")
    h = hidden.clone().requires_grad_()
    loss, _ = fused_loss(h, weight, targets, coef, "nll")
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError):
        loss.backward()
    with pytest.raises(ValueError):
        fused_loss(h, weight, targets, coef, "ppo")
    with pytest.raises(ValueError):
        fused_loss(h, weight, targets, coef, "dpo")  # needs seq_id and ref_logp
    with pytest.raises(ValueError):  # sequence 2 has no rejected partner
        fused_loss(h, weight, targets, coef, "dpo", ref_logp=torch.zeros(10, dtype=h.dtype),
                   seq_id=torch.tensor([0, 0, 1, 1, 1, 2, 2, 2, 2, 2]))
