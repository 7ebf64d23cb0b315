"""refine.py: verbal feedback into learning signal, and the fused chunked loss.

Read top to bottom:

1. The fused loss.  Every role ends in one per-token coefficient vector `c`, consumed by
   `fused_loss(hidden, weight, targets, coef, mode)`.  With logits z_t = W h_t and
   log p_t = z_t[y_t] - logsumexp(z_t), the loss is L = sum_t l_t(log p_t) / normalizer, so

       dL/dz_t = g_t * (onehot(y_t) - softmax(z_t)),   g_t = dL/dlog p_t,
       dL/dh_t = W^T dL/dz_t = g_t * (W[y_t] - softmax(z_t) W),
       dL/dW   = sum_t dL/dz_t h_t^T = scatter_rows(y_t, g_t h_t) - softmax(Z)^T (g h).

   One `torch.autograd.Function` walks the tokens in chunks, computes a chunk's logits,
   log-probs and both gradients inside the forward pass, and keeps only dL/dh [N,H] and
   dL/dW [V,H]; backward scales them by grad_output.  So the [N, V] logits never exist at
   once: peak extra memory is one [chunk, V] buffer plus the gradients.
   Modes: "pg" (clipped policy gradient, optional k3 KL), "nll" (SFT, critique
   distillation), "dpo" (sequence-level DPO on refinement pairs).

2. Rewards per role (poser learnability, audited solver verdicts, judge agreement,
   refinement gain), group-normalised advantages, and token credit from the judge's
   pointer to the first wrong step.

3. Refinement (alignment via refinement): rounds of critique -> revise, preference pairs,
   and "long refinement thought" NLL samples.

Run the tests with `python -m pytest -q tests/test_loss.py tests/test_refine.py` and the
memory/time benchmark with `python tests/bench_loss.py`.
"""
import re
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

MODES = ("pg", "nll", "dpo")


# ---------------------------------------------------------------------------------------
# 1. The fused loss
# ---------------------------------------------------------------------------------------

def _compute_dtype(dtype):
    """float64 stays exact; float32 and the half types (bf16, fp16) compute in float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _chunk_softmax(h, w, y, buf):
    """Logits of one chunk into `buf`, then softmax in place.

    Returns (probs, log p of the targets, logsumexp); `probs` is `buf` (one [chunk, V]
    buffer, reused across chunks so a CPU run does not fault fresh pages every chunk).
    """
    logits = torch.mm(h, w.t(), out=buf)
    row_max = logits.amax(dim=1, keepdim=True)
    target_logit = logits.gather(1, y[:, None]).squeeze(1)
    probs = logits.sub_(row_max).exp_()
    total = probs.sum(dim=1, keepdim=True)
    probs.div_(total)
    lse = (row_max + total.log()).squeeze(1)
    return probs, target_logit - lse, lse


def _pg_terms(logp, coef, mask, old_logp, ref_logp, clip_eps, kl_coef):
    """Per-token clipped surrogate (+ k3 KL): (loss_t, dloss_t/dlogp_t, clipped_t, kl_t).

    l_t = -min(r c, clip(r, 1-eps, 1+eps) c) + kl_coef * mask_t * kl_t,  r = exp(logp - old).
    The min follows the unclipped branch when r is inside the clip range (both branches
    agree there) or when that branch is the smaller one; otherwise the clipped branch is a
    constant and the token gets no policy gradient (it is "clipped").
    k3 KL: kl_t = exp(ref - logp) - (ref - logp) - 1 >= 0, d kl_t/d logp = 1 - exp(ref - logp).
    """
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


def _chunks(n, size):
    return [(i, min(i + size, n)) for i in range(0, n, size)]


def _logprobs(hidden, w, targets, spans, buf):
    """log p of every target, chunk by chunk, in w's dtype (no gradients kept)."""
    out = torch.empty(hidden.shape[0], dtype=w.dtype, device=w.device)
    for a, b in spans:
        _, out[a:b], _ = _chunk_softmax(hidden[a:b].to(w.dtype), w, targets[a:b], buf[: b - a])
    return out


@torch.no_grad()
def token_logprobs(hidden, weight, targets, chunk_size=1024):
    """log pi(target) of each token by the fused loss's own arithmetic (its dtype, its chunks), so
    a log-prob recorded with it is the one `fused_loss` recomputes from the same forward: a
    ratio pi_theta / pi_old starts at exactly 1, in bf16 too. hidden [N,H], weight [V,H]."""
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
        old_logp = None if old_logp is None else old_logp.to(dtype)
        ref_logp = None if ref_logp is None else ref_logp.to(dtype)
        spans = _chunks(n, chunk_size)
        buf = torch.empty(min(chunk_size, max(n, 1)), w.shape[0], dtype=dtype, device=w.device)

        # DPO: a token's gradient depends on its whole pair's log-ratio, so a first pass
        # (no gradients kept) gathers every token's log p, then the per-token dL/dlog p.
        dpo_grad = None
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
        stats = {
            "entropy": (entropy * mask).sum() / counted,
            "logp": (logp_all_out * mask).sum() / counted,
            "tokens": mask.sum(),
            "clip_frac": (clipped.to(dtype) * mask).sum() / counted,
            "kl": (kl_all * mask).sum() / counted,
        }
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


def _stat_names(mode, has_ref):
    names = ["entropy", "logp", "tokens"]
    if mode == "pg":
        names += ["clip_frac"] + (["kl"] if has_ref else [])
    if mode == "dpo":
        names += ["dpo_margin", "dpo_accuracy"]
    return names


def _dpo_terms(logp, coef, ref_logp, seq_id, n_seq, beta, normalizer):
    """Sequence-level DPO from per-token log-probs: (loss, dL/dlog p_t, stats).

    Pairing convention: sequence ids 2p (chosen) and 2p+1 (rejected) form pair p; a token's
    log-prob enters its sequence's sum weighted by coef_t (1 on completion tokens, 0 on
    prompt tokens).  With S = sum_t c_t (log p_t - ref_t) per sequence and
    z_p = beta (S_2p - S_2p+1):  L = sum_p -logsigmoid(z_p) / normalizer (default: the
    number of pairs), and dL/dlog p_t = +-beta c_t (sigmoid(z_p) - 1) / normalizer.
    """
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


def fused_loss(hidden, weight, targets, coef, mode="pg", *, old_logp=None, ref_logp=None,
               clip_eps=0.2, kl_coef=0.0, seq_id=None, n_seq=None, beta=0.1, normalizer=None,
               chunk_size=1024, mask=None):
    """The one loss every role trains through, without ever holding [N, V] logits.

    hidden [N,H]: last hidden states of the tokens that predict `targets` [N] (already
    shifted); weight [V,H]: the full lm_head weight (may be tied to the embeddings; under
    FSDP2 pass the unsharded tensor); coef [N]: per-token coefficients (0 masks a token).
    mask [N] (optional, bool): the tokens that count for the KL term and the default
    normalizer; default `coef != 0`.  Pass the completion mask when some completion
    tokens carry coefficient 0 but should still be held to the reference by the KL.

    mode "pg":  l_t = -min(r_t c_t, clip(r_t, 1-eps, 1+eps) c_t) + kl_coef mask_t kl_t
                with r_t = exp(log p_t - old_logp_t) (old_logp default: log p detached, so
                r = 1 on policy) and kl_t the k3 estimator to ref_logp (only if kl_coef).
    mode "nll": l_t = -c_t log p_t (SFT, critique distillation; c_t a weight, usually 1).
    Both: loss = sum_t l_t / normalizer (default: mask.sum(), at least 1; under data
    parallel pass the global token count so ranks sum to the global mean).
    mode "dpo": seq_id [N] puts tokens in sequences, sequences 2p (chosen) and 2p+1
                (rejected) form pair p; loss = sum_p -logsigmoid(beta((S_w - R_w) -
                (S_l - R_l))) / normalizer (default: the number of pairs), S and R the
                coef-weighted sums of log p and ref_logp of each sequence; n_seq the number
                of sequences (default seq_id.max() + 1, which reads a device value back to
                the host).  Costs one extra chunked forward pass (the per-token gradient
                needs the pair totals).

    Precision: float64 stays float64; float32, bf16 and fp16 compute logits, softmax and
    gradient accumulation in float32 (half weights are copied to float32 once per call).
    Returns (loss scalar, stats dict of detached tensors: entropy, logp, tokens, and
    clip_frac / kl for "pg", dpo_margin / dpo_accuracy for "dpo"; means over `mask`).
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
        hidden, weight, targets, coef.detach(), mask, _detached(old_logp),
        _detached(ref_logp), seq_id, n_seq, mode, clip_eps, kl_coef, beta, normalizer, chunk_size,
        grad_on and hidden.requires_grad, grad_on and weight.requires_grad)
    return loss, dict(zip(_stat_names(mode, ref_logp is not None), stats.unbind()))


def _detached(x):
    return None if x is None else x.detach()


# ---------------------------------------------------------------------------------------
# 2. Rewards per role, advantages, token credit
# ---------------------------------------------------------------------------------------

def _normalise_text(text):
    return " ".join(re.sub(r"[^\w\s]", " ", text.lower()).split())


def _char_ngrams(text, n):
    text = _normalise_text(text)
    if len(text) <= n:
        return {text}
    return {text[i:i + n] for i in range(len(text) - n + 1)}


def near_duplicate(texts, threshold=0.8, n=3):
    """Mark every text that nearly repeats an EARLIER text of the batch (the first stays).

    Texts are normalised (lower case, punctuation to spaces, whitespace collapsed) and
    compared by the Jaccard similarity of their character n-gram sets; similarity >=
    threshold is a near-duplicate.  Compared against every earlier text, duplicate or not.
    """
    grams = [_char_ngrams(t, n) for t in texts]
    marks = []
    for i, g in enumerate(grams):
        marks.append(any(len(g & h) / max(len(g | h), 1) >= threshold for h in grams[:i]))
    return marks


def duplicate_posings(problems, families, threshold=0.8):
    """Mark posings that repeat an earlier valid posing of the batch (exactly or nearly).

    problems: the canonical problem text of each valid posing, None for invalid ones. Lines
    shared by every posing of a family (its template: "Find a,b,c ... so that all hold:") are
    removed before comparing, or every instance of a family would look like every other;
    then `near_duplicate` on what is left. Exact repeats are always marked."""
    shared = {}
    for p, f in zip(problems, families):
        if p is not None:
            lines = set(p.split("\n"))
            shared[f] = shared[f] & lines if f in shared else lines
    keys = [f"<invalid {i}>" if p is None else
            "\n".join(line for line in p.split("\n") if line not in shared[f])
            for i, (p, f) in enumerate(zip(problems, families))]
    near, seen, marked = near_duplicate(keys, threshold), set(), []
    for p, n in zip(problems, near):
        marked.append(p is not None and (n or p in seen))
        seen.add(p)
    return marked


def poser_rewards(solve_rates, valid, duplicate, invalid_reward=-1.0, duplicate_reward=-1.0):
    """Learnability reward of each posing.

    valid posing with solve rate p: 1 - p if p > 0 else 0 (unsolved problems teach nothing,
    always-solved ones neither); invalid (the environment refused it): -1; a valid
    near-duplicate of an earlier posing in the batch: `duplicate_reward` (-1 by default,
    as bad as an invalid posing: self-play posers collapse onto repeats otherwise).
    solve_rates of invalid posings are ignored (may be None).
    """
    rewards = []
    for p, ok, dup in zip(solve_rates, valid, duplicate):
        if not ok:
            rewards.append(invalid_reward)
        elif dup:
            rewards.append(duplicate_reward)
        else:
            rewards.append(1.0 - p if p > 0 else 0.0)
    return rewards


def alpha_schedule(step, total, floor):
    """Weight of the verifier in the solver reward: 1 at step 0, linearly down to `floor`
    at step `total`, then flat; it never lets the self-judge alone decide the reward."""
    if total <= 0:
        return floor
    return 1.0 - (1.0 - floor) * min(max(step / total, 0.0), 1.0)


def solver_rewards(verdicts, verified, alpha):
    """The judge's verdict audited by the verifier: (1 - alpha) verdict + alpha verified.

    verdict True/False/None (None: the judge's output was unparsable, scores 0);
    verified True/False/None (None: no verifier for this task, the verdict alone counts).
    """
    rewards = []
    for verdict, truth in zip(verdicts, verified):
        v = 1.0 if verdict else 0.0
        rewards.append(v if truth is None else (1 - alpha) * v + alpha * float(truth))
    return rewards


def judge_rewards(verdicts, verified, gains=None):
    """Agreement of the judge's verdict with the verifier (1 or 0; unparsable verdict: 0), plus
    the gain of the revision made from its critique (`gains`, 0 where nothing was revised).
    Where no verifier exists (verified None) there is no reward: None, leave it out."""
    gains = gains or [0.0] * len(verdicts)
    return [None if truth is None else float(verdict is not None and verdict == truth) + gain
            for verdict, truth, gain in zip(verdicts, verified, gains)]


def revision_gain(original_correct, revised_correct):
    """AvR's refinement-aware reward: correct(revision) - correct(original), in {-1, 0, 1}.
    Unknown correctness (None) counts as incorrect."""
    return int(bool(revised_correct)) - int(bool(original_correct))


def critique_rewards(gains_per_critique):
    """A critique's reward is the mean gain of the revisions made from it (0 if none)."""
    return [sum(g) / len(g) if len(g) else 0.0 for g in gains_per_critique]


def group_advantages(rewards, group_ids, eps=1e-6):
    """A = (r - mean_group) / (std_group + eps), std the population std (unbiased=False).

    A group whose rewards are all equal carries no learning signal (and would only add
    noise): its advantages are 0 and its members are dropped.  Returns (advantages,
    keep), float64 and bool tensors aligned with `rewards`.
    """
    rewards = torch.as_tensor(rewards, dtype=torch.float64)
    group_ids = torch.as_tensor(group_ids)
    advantages = torch.zeros_like(rewards)
    keep = torch.zeros(rewards.shape, dtype=torch.bool)
    for g in torch.unique(group_ids):
        members = group_ids == g
        r = rewards[members]
        if r.max() == r.min():
            continue
        advantages[members] = (r - r.mean()) / (r.std(unbiased=False) + eps)
        keep[members] = True
    return advantages, keep


def token_credit(advantage, step_of_token, flagged_step):
    """Per-token coefficients of one completion from its scalar advantage and the judge's
    pointer to the first wrong step (1-based; None when the judge flagged nothing).

    advantage >= 0, or no pointer: the advantage on every token.  advantage < 0 with step k
    flagged: tokens of the steps before k (which the judge accepted) get 0, tokens of steps
    k and later take the negative advantage, so the blame lands where the error starts.
    """
    steps = torch.as_tensor(step_of_token)
    credit = torch.full(steps.shape, float(advantage), dtype=torch.float64)
    if advantage < 0 and flagged_step is not None:
        credit[steps < flagged_step] = 0.0
    return credit


# ---------------------------------------------------------------------------------------
# 3. Refinement: rounds, preference pairs, long refinement thoughts
# ---------------------------------------------------------------------------------------

@dataclass
class Attempt:
    """One critique of a solution and the revisions written from it."""
    critique: str
    revisions: list
    revisions_correct: list


@dataclass
class RefinementRecord:
    """A solution, whether it was correct, and the critique attempts made on it."""
    problem: str
    solution: str
    correct: bool
    attempts: list = field(default_factory=list)


@dataclass
class PreferencePair:
    """One DPO pair.  role "solve": chosen/rejected answer `problem` (a revision is paired
    with its original as two answers to the same problem); role "judge": chosen/rejected
    critique `solution` of `problem`."""
    role: str
    problem: str
    solution: str | None
    chosen: str
    rejected: str


def refinement_pairs(records):
    """Preference pairs of alignment via refinement.

    For every revision: revision over original when it fixed the answer (gain +1), original
    over revision when it broke it (gain -1), no pair when nothing changed.  For every
    solution with two or more critiques: the critique with the best mean gain over the one
    with the worst, when those means differ (first one wins ties).
    """
    pairs = []
    for rec in records:
        for attempt in rec.attempts:
            for revision, ok in zip(attempt.revisions, attempt.revisions_correct):
                gain = revision_gain(rec.correct, ok)
                if gain:
                    chosen, rejected = (revision, rec.solution) if gain > 0 \
                        else (rec.solution, revision)
                    pairs.append(PreferencePair("solve", rec.problem, None, chosen, rejected))
        if len(rec.attempts) >= 2:
            means = critique_rewards([[revision_gain(rec.correct, ok) for ok in a.revisions_correct]
                                      for a in rec.attempts])
            best, worst = means.index(max(means)), means.index(min(means))
            if means[best] != means[worst]:
                pairs.append(PreferencePair("judge", rec.problem, rec.solution,
                                            rec.attempts[best].critique,
                                            rec.attempts[worst].critique))
    return pairs


def long_thought(solution, critiques_and_revisions, final):
    """One "long refinement thought" NLL training text: the model refines inside one answer.

    Format (lines): the first solution, then for every round a line `Critique:`, the
    critique, a line `Revision:`, the revision; then a line `Final:` and `Answer: <final>`,
    so the last `Answer:` line (the one the answer parser reads) is the final answer.
    """
    parts = [solution.rstrip("\n")]
    for critique, revision in critiques_and_revisions:
        parts += ["Critique:", critique.rstrip("\n"), "Revision:", revision.rstrip("\n")]
    parts += ["Final:", f"Answer: {final}"]
    return "\n".join(parts)


@dataclass
class Round:
    """One link of a refinement chain: a solution, its score (a verifier's 0/1, or any finer
    progress score), and the critique and verdict written on it (None when the chain ended
    before judging it)."""
    solution: str
    score: float
    critique: str | None = None
    verdict: bool | None = None


def refine_rounds(judge_fn, revise_fn, score_fn, problems, solutions, max_rounds):
    """Rounds of critique -> revise over many chains at once, with one judge_fn and one
    revise_fn call per round, so a model can batch each role.

    Chain i starts at solutions[i], an answer to problems[i].  Each round judges the current
    solution of every live chain.  A chain ends when its judge accepts (verdict True), after
    `max_rounds` revisions, or when its last revision did not raise the score (a revision
    that fixed nothing is not revised again); every other chain is revised from its critique
    and the revision scored.

    judge_fn(problems, solutions) -> [(critique, verdict)], verdict True / False / None;
    revise_fn(problems, solutions, critiques) -> [solution];
    score_fn(problem, solution) -> float.
    Both are called exactly `max_rounds` times, with empty lists once no chain is live: under
    FSDP every model call is a collective, so all ranks must make the same calls.
    Returns one list of Rounds per chain, the original solution first.
    """
    chains = [[Round(s, score_fn(p, s))] for p, s in zip(problems, solutions)]
    live = list(range(len(chains)))
    for _ in range(max_rounds):
        judged = judge_fn([problems[i] for i in live], [chains[i][-1].solution for i in live])
        for i, (critique, verdict) in zip(live, judged):
            chains[i][-1].critique, chains[i][-1].verdict = critique, verdict
        live = [i for i in live if chains[i][-1].verdict is not True]
        revised = revise_fn([problems[i] for i in live], [chains[i][-1].solution for i in live],
                            [chains[i][-1].critique for i in live])
        for i, solution in zip(live, revised):
            chains[i].append(Round(solution, score_fn(problems[i], solution)))
        live = [i for i in live if chains[i][-1].score > chains[i][-2].score]
    return chains


def chain_records(problem, chains):
    """RefinementRecords from chains that start at one solution of `problem`: that solution
    with every chain's first critique (so critiques of the same solution compete), then one
    record per later round (a revision against the solution it revised).  A critique that
    accepted its solution has no revision, hence gain 0."""
    first = chains[0][0]
    records = [RefinementRecord(problem, first.solution, first.score >= 1)]
    for chain in chains:
        if chain[0].critique is not None:
            revised = chain[1:2]
            records[0].attempts.append(Attempt(chain[0].critique, [r.solution for r in revised],
                                               [r.score >= 1 for r in revised]))
        for before, after in zip(chain[1:], chain[2:]):
            records.append(RefinementRecord(problem, before.solution, before.score >= 1,
                                            [Attempt(before.critique, [after.solution],
                                                     [after.score >= 1])]))
    return records
