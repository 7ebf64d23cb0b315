"""loss.py: the one loss every role trains through, without ever holding [N, V] logits.

Every completion reaches the trainer as per-token coefficients c_t (an advantage times its
credit for the policy gradient, 1 for NLL), consumed by
`fused_loss(hidden, weight, targets, coef, mode)`. With logits z_t = W h_t and
log p_t = z_t[y_t] - logsumexp(z_t), L = sum_t l_t(log p_t) / normalizer, so

    dL/dz_t = g_t (onehot(y_t) - softmax(z_t)),   g_t = dL/dlog p_t,
    dL/dh_t = g_t (W[y_t] - softmax(z_t) W),      dL/dW = sum_t dL/dz_t h_t^T.

One autograd Function walks the tokens in chunks and computes both gradients in its forward,
so the [N, V] logits never exist at once (peak: one [chunk, V] buffer; tests/bench_loss.py
measures its memory and time against the naive loss). Modes: "pg" (clipped policy gradient,
optional k3 KL), "nll", "dpo" (refinement pairs).

Tests: tests/test_loss.py (against naive PyTorch losses); benchmark: python tests/bench_loss.py.
"""
import torch
import torch.nn.functional as F

MODES = ("pg", "nll", "dpo")


def fused_loss(hidden, weight, targets, coef, mode="pg", *, old_logp=None, ref_logp=None,
               clip_eps=0.2, kl_coef=0.0, seq_id=None, n_seq=None, beta=0.1, normalizer=None,
               chunk_size=1024, mask=None):
    """The one loss every role trains through, without ever holding [N, V] logits.

    hidden [N,H]: the hidden states that predict `targets` [N]; weight [V,H]: the whole lm_head
    weight (unsharded under FSDP2); coef [N]: per-token coefficients; mask [N]: the tokens that
    count for the KL and the default normalizer (default coef != 0).
      "pg":  l_t = -min(r_t c_t, clip(r_t, 1-eps, 1+eps) c_t) + kl_coef mask_t k3_t, with
             r_t = exp(log p_t - old_logp_t) (default old_logp: log p itself, so r = 1) and
             k3_t the KL estimator to ref_logp;
      "nll": l_t = -c_t log p_t;   both: L = sum_t l_t / normalizer (default mask.sum();
             under data parallelism pass the global token count);
      "dpo": sequences 2p (chosen) and 2p+1 (rejected) of seq_id form pair p; L = sum_p
             -logsigmoid(beta (S_2p - S_2p+1)) / normalizer (default: the pairs), S the
             coef-weighted sum of log p - ref_logp of a sequence (one extra chunked pass).
    float64 stays float64; float32 and half types compute in float32. Returns (loss, stats:
    entropy, logp, tokens, and clip_frac, kl ("pg") or dpo_margin, dpo_accuracy ("dpo")).
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if hidden.dim() != 2 or weight.dim() != 2 or hidden.shape[1] != weight.shape[1]:
        raise ValueError(f"hidden [N,H] and weight [V,H] expected, got {tuple(hidden.shape)} "
                         f"and {tuple(weight.shape)}")
    mask = (coef != 0) if mask is None else mask.bool()
    if mode == "dpo":
        if seq_id is None or ref_logp is None:
            raise ValueError("mode='dpo' needs seq_id and ref_logp")
        n_seq = int(seq_id.max()) + 1 if n_seq is None else n_seq
    elif normalizer is None:
        normalizer = mask.sum().clamp(min=1)  # a tensor: no device sync
    grad_on = torch.is_grad_enabled()
    loss, stats = _FusedLoss.apply(
        hidden, weight, targets, coef.detach(), mask, *(None if x is None else x.detach()
                                                        for x in (old_logp, ref_logp)),
        seq_id, n_seq, mode, clip_eps, kl_coef, beta, normalizer, chunk_size,
        grad_on and hidden.requires_grad, grad_on and weight.requires_grad)
    return loss, dict(zip(_stat_names(mode, ref_logp is not None), stats.unbind()))


@torch.no_grad()
def token_logprobs(hidden, weight, targets, chunk_size=1024):
    """log pi(target) of each token by the fused loss's own arithmetic (dtype and chunks), so a
    pi_old recorded with it makes the first ratio exactly 1, in bf16 too."""
    w = weight.to(_compute_dtype(torch.promote_types(hidden.dtype, weight.dtype)))
    n = hidden.shape[0]
    buf = torch.empty(min(chunk_size, max(n, 1)), w.shape[0], dtype=w.dtype, device=w.device)
    return _logprobs(hidden, w, targets, _chunks(n, chunk_size), buf)


class _FusedLoss(torch.autograd.Function):
    """Chunked loss whose forward also computes the input gradients (see module docstring)."""

    @staticmethod
    def forward(ctx, hidden, weight, targets, coef, mask, old_logp, ref_logp, seq_id, n_seq,
                mode, clip_eps, kl_coef, beta, normalizer, chunk_size, grad_hidden_needed,
                grad_weight_needed):
        n = hidden.shape[0]
        dtype = _compute_dtype(torch.promote_types(hidden.dtype, weight.dtype))
        w = weight.to(dtype)  # a copy only for half-precision weights: logits in fp32
        coef, mask = coef.to(dtype), mask.to(dtype)
        old_logp, ref_logp = (None if x is None else x.to(dtype) for x in (old_logp, ref_logp))
        spans = _chunks(n, chunk_size)
        buf = torch.empty(min(chunk_size, max(n, 1)), w.shape[0], dtype=dtype, device=w.device)
        # DPO: a token's gradient depends on its whole pair's log-ratio, so a first pass
        # (no gradients kept) gathers every token's log p, then the per-token dL/dlog p.
        if mode == "dpo":
            dpo_loss, dpo_grad, dpo_stats = _dpo_terms(_logprobs(hidden, w, targets, spans, buf),
                                                       coef, ref_logp, seq_id, n_seq, beta,
                                                       normalizer)
        grad_h = torch.zeros(n, hidden.shape[1], dtype=dtype, device=w.device) \
            if grad_hidden_needed else None
        grad_w = torch.zeros_like(w) if grad_weight_needed else None
        total = torch.zeros((), dtype=dtype, device=w.device)
        logp_all_out = torch.empty(n, dtype=dtype, device=w.device)
        entropy = torch.empty(n, dtype=dtype, device=w.device)
        clipped = torch.zeros(n, dtype=torch.bool, device=w.device)
        kl_all = torch.zeros(n, dtype=dtype, device=w.device)
        for a, b in spans:
            h, y = hidden[a:b].to(dtype), targets[a:b]
            probs, logp, lse = _chunk_softmax(h, w, y, buf[: b - a])
            probs_w = torch.mm(probs, w)  # softmax(z) W, also the expected hidden-space logit
            entropy[a:b] = lse - (h * probs_w).sum(dim=1)
            logp_all_out[a:b] = logp
            if mode == "pg":
                old = logp if old_logp is None else old_logp[a:b]  # default: on policy
                ref = None if ref_logp is None else ref_logp[a:b]
                loss_t, g, clipped[a:b], kl_all[a:b] = _pg_terms(
                    logp, coef[a:b], mask[a:b], old, ref, clip_eps, kl_coef)
                total += loss_t.sum() / normalizer
                g = g / normalizer
            elif mode == "nll":
                total += -(coef[a:b] * logp).sum() / normalizer
                g = -coef[a:b] / normalizer
            else:
                g = dpo_grad[a:b]
            if grad_h is not None:
                grad_h[a:b] = g[:, None] * (w[y] - probs_w)
            if grad_w is not None:
                gh = g[:, None] * h
                grad_w.index_add_(0, y, gh)
                grad_w.addmm_(probs.t(), gh, alpha=-1)
        if mode == "dpo":
            total = dpo_loss
        ctx.save_for_backward(grad_h, grad_w)
        ctx.dtypes = (hidden.dtype, weight.dtype)
        ctx.used = False
        counted = mask.sum().clamp(min=1)
        stats = {"entropy": (entropy * mask).sum() / counted, "tokens": mask.sum(),
                 "logp": (logp_all_out * mask).sum() / counted,
                 "clip_frac": (clipped.to(dtype) * mask).sum() / counted,
                 "kl": (kl_all * mask).sum() / counted}
        if mode == "dpo":
            stats.update(dpo_stats)
        stats = torch.stack([stats[k] for k in _stat_names(mode, ref_logp is not None)])
        ctx.mark_non_differentiable(stats)
        return total, stats

    @staticmethod
    def backward(ctx, grad_total, *unused):
        if ctx.used:
            raise RuntimeError("fused_loss backward can run only once (it scales its saved "
                               "gradients in place); recompute the loss to differentiate again")
        ctx.used = True
        grad_h, grad_w = ctx.saved_tensors
        # in place: the saved gradients are as large as the weight, a copy would double them
        if grad_h is not None:
            grad_h = grad_h.mul_(grad_total).to(ctx.dtypes[0])
        if grad_w is not None:
            grad_w = grad_w.mul_(grad_total).to(ctx.dtypes[1])
        return (grad_h, grad_w) + (None,) * 15


def _pg_terms(logp, coef, mask, old_logp, ref_logp, clip_eps, kl_coef):
    """Per-token clipped surrogate (+ k3 KL): (loss_t, dloss_t/dlogp_t, clipped_t, kl_t). Where
    the min takes the clipped branch it is a constant: no gradient ("clipped").
    k3: kl_t = exp(ref - logp) - (ref - logp) - 1 >= 0, d kl_t/d logp = 1 - exp(ref - logp)."""
    ratio = torch.exp(logp - old_logp)
    clipped_ratio = ratio.clamp(1 - clip_eps, 1 + clip_eps)
    unclipped, clipped = ratio * coef, clipped_ratio * coef
    active = (ratio == clipped_ratio) | (unclipped < clipped)
    loss = -torch.minimum(unclipped, clipped)
    grad = -unclipped * active
    kl = torch.zeros_like(logp)
    if ref_logp is not None:
        diff = ref_logp - logp
        kl = diff.exp() - diff - 1
        if kl_coef:
            loss = loss + kl_coef * mask * kl
            grad = grad + kl_coef * mask * (1 - diff.exp())
    return loss, grad, ~active & (coef != 0), kl


def _dpo_terms(logp, coef, ref_logp, seq_id, n_seq, beta, normalizer):
    """Sequence-level DPO: (loss, dL/dlog p_t, stats). With z_p = beta (S_2p - S_2p+1),
    dL/dlog p_t = +-beta c_t (sigmoid(z_p) - 1) / normalizer (+ for the chosen sequence)."""
    if n_seq % 2:
        raise ValueError("mode='dpo' pairs sequences 2p (chosen) and 2p+1 (rejected): "
                         f"the number of sequences must be even, got {n_seq}")
    n_pairs = n_seq // 2
    seq_sum = torch.zeros(n_pairs * 2, dtype=logp.dtype, device=logp.device)
    seq_sum.index_add_(0, seq_id, coef * (logp - ref_logp))
    margin = beta * (seq_sum[0::2] - seq_sum[1::2])
    pairs = n_pairs if normalizer is None else normalizer
    loss = -F.logsigmoid(margin).sum() / pairs
    sign = 1 - 2 * (seq_id % 2).to(logp.dtype)  # +1 chosen, -1 rejected
    grad = sign * beta * coef * (torch.sigmoid(margin) - 1)[seq_id // 2] / pairs
    stats = {"dpo_margin": margin.mean() / beta, "dpo_accuracy": (margin > 0).to(logp.dtype).mean()}
    return loss, grad, stats


def _stat_names(mode, has_ref):
    names = ["entropy", "logp", "tokens"]
    if mode == "pg":
        names += ["clip_frac"] + (["kl"] if has_ref else [])
    if mode == "dpo":
        names += ["dpo_margin", "dpo_accuracy"]
    return names


def _chunk_softmax(h, w, y, buf):
    """(softmax, log p of the targets, logsumexp) of one chunk's logits, computed in `buf` (one
    [chunk, V] buffer reused by every chunk: a CPU run does not fault fresh pages each time)."""
    logits = torch.mm(h, w.t(), out=buf)
    row_max = logits.amax(dim=1, keepdim=True)
    target_logit = logits.gather(1, y[:, None]).squeeze(1)
    probs = logits.sub_(row_max).exp_()
    total = probs.sum(dim=1, keepdim=True)
    probs.div_(total)
    lse = (row_max + total.log()).squeeze(1)
    return probs, target_logit - lse, lse


def _logprobs(hidden, w, targets, spans, buf):
    """log p of every target, chunk by chunk, in w's dtype (no gradients kept)."""
    out = torch.empty(hidden.shape[0], dtype=w.dtype, device=w.device)
    for a, b in spans:
        _, out[a:b], _ = _chunk_softmax(hidden[a:b].to(w.dtype), w, targets[a:b], buf[: b - a])
    return out


def _chunks(n, size):
    return [(i, min(i + size, n)) for i in range(0, n, size)]


def _compute_dtype(dtype):
    """float64 stays exact; float32 and the half types (bf16, fp16) compute in float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32
