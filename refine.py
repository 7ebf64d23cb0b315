"""refine.py: the judge's words into a learning signal, in the order a reader follows them.

1. Rewards per role, from one record per posing (`Posing`): with p_hat a posing's verified
   solve rate, v the judge's verdict, y the verifier's 0/1 and g a revision's gain,

       poser    r = 1 - p_hat if p_hat > 0, 0 if p_hat = 0; -1 if invalid or a duplicate
       solver   r = (1 - alpha) [v = correct] + alpha y      (alpha: 1 -> alpha_floor)
       judge    r = [v = y] + g of the revision written from its critique (an audit: [v = y])
       reviser  r = g = y(revision) - y(original)             (alignment via refinement)
       self-correction: a revision with g = 1 also joins its posing's solutions, in the solve
                prompt, with r = 1: the solver learns what the critique taught the reviser (and
                a group of only wrong solutions, which would be dropped, now pushes them down)

2. Advantages: A = (r - mean) / std within a group (the solutions of one posing; the posers of
   one family); a group whose rewards are all equal is dropped. Token credit: a solution with
   A < 0 whose critique names its first wrong step k takes A on steps k.. and 0 before.

3. The fused loss. Every completion ends as per-token coefficients c_t, consumed by
   `fused_loss(hidden, weight, targets, coef, mode)`. With logits z_t = W h_t and
   log p_t = z_t[y_t] - logsumexp(z_t), L = sum_t l_t(log p_t) / normalizer, so

       dL/dz_t = g_t (onehot(y_t) - softmax(z_t)),   g_t = dL/dlog p_t,
       dL/dh_t = g_t (W[y_t] - softmax(z_t) W),      dL/dW = sum_t dL/dz_t h_t^T.

   One autograd Function walks the tokens in chunks and computes both gradients in its
   forward, so the [N, V] logits never exist at once (peak: one [chunk, V] buffer).
   Modes: "pg" (clipped policy gradient, optional k3 KL), "nll", "dpo" (refinement pairs).

4. Refinement (AvR): rounds of critique -> revise, preference pairs, long refinement thoughts.
Tests: tests/test_refine.py, tests/test_loss.py; benchmark: python tests/bench_loss.py."""
import re
from dataclasses import dataclass, field, replace

import torch
import torch.nn.functional as F

import roles

MODES = ("pg", "nll", "dpo")


# ----------------------------------------------------------------------------- rewards per role

@dataclass
class Posing:
    """One posing of a self-play step and everything done with it (see `pose` for stand-ins)."""
    family: str
    pose: object = None        # the poser's completion; None: a stand-in (no posing was valid)
    task: object = None        # the environment's Task; None: it refused the posing
    duplicate: bool = False    # repeats an earlier valid posing of the batch
    solutions: list = field(default_factory=list)  # N completions of the solve prompt
    correct: list = field(default_factory=list)    # the verifier on each: 0.0 or 1.0
    critiques: list = field(default_factory=list)  # the judge's completion on each
    verdicts: list = field(default_factory=list)   # parsed: True, False, None (unparsable)
    pointers: list = field(default_factory=list)   # first wrong step a critique names, or None
    steps: list = field(default_factory=list)      # per solution: the step of each token
    revisions: list = field(default_factory=list)  # per solution: its revision, None if accepted
    gains: list = field(default_factory=list)      # per solution: the revision's gain (0 if none)
    audits: list = field(default_factory=list)     # (critique, verdict, truth) of known solutions


def self_play_samples(posings, alpha):
    """[(role, completion, per-token coefficients)] of one self-play step: each role's reward
    (the equations above), its advantage within its group, and the solver's token credit; and
    {role: rewards}. Role "corrected" is a self-correction: a revision in its solution's prompt."""
    rows = []  # (role, completion, reward, group, steps of its tokens, flagged step)
    for i, p in enumerate(posings):
        rate = sum(p.correct) / len(p.correct) if p.correct else 0.0
        if p.pose is not None:
            learnable = -1.0 if p.task is None or p.duplicate else (1 - rate if rate else 0.0)
            rows.append(("pose", p.pose, learnable, ("pose", p.family), None, None))
        for j, solution in enumerate(p.solutions):
            verdict, truth = p.verdicts[j], p.correct[j]
            rows.append(("solve", solution, (1 - alpha) * float(verdict is True) + alpha * truth,
                         ("solve", i), p.steps[j], p.pointers[j]))
            rows.append(("judge", p.critiques[j], agreement(verdict, truth) + p.gains[j],
                         ("judge", i), None, None))
            if p.revisions[j] is not None:
                rows.append(("revise", p.revisions[j], p.gains[j], ("revise", i), None, None))
            if p.gains[j] > 0:  # r = 1 is the group's highest: this sample is only pulled up
                rows.append(("corrected", replace(p.revisions[j], prompt_ids=solution.prompt_ids),
                             1.0, ("solve", i), None, None))
        for critique, verdict, truth in p.audits:
            rows.append(("judge", critique, agreement(verdict, truth), ("judge", i), None, None))
    group_ids = {}
    advantages, keep = group_advantages(
        [r[2] for r in rows], [group_ids.setdefault(r[3], len(group_ids)) for r in rows])
    samples = [(role, c, [a] * len(c.ids) if steps is None else token_credit(a, steps, k).tolist())
               for (role, c, _, _, steps, k), a, kept in zip(rows, advantages.tolist(),
                                                             keep.tolist()) if kept and c.ids]
    rewards = {role: [r[2] for r in rows if r[0] == role] for role in roles.ROLES}
    return samples, rewards


def agreement(verdict, truth):
    """1.0 when the judge's verdict (True / False / None: unparsable) matches the verifier."""
    return float(verdict is not None and verdict == bool(truth))


def alpha_schedule(step, total, floor):
    """The verifier's weight in the solver's reward: 1 at step 0, linearly to `floor` at `total`."""
    return floor if total <= 0 else 1.0 - (1.0 - floor) * min(max(step / total, 0.0), 1.0)


def revision_gain(original_correct, revised_correct):
    """AvR's reward: correct(revision) - correct(original) in {-1, 0, 1}; None is incorrect."""
    return int(bool(revised_correct)) - int(bool(original_correct))


def critique_rewards(gains_per_critique):
    """A critique's reward is the mean gain of the revisions made from it (0 if none)."""
    return [sum(g) / len(g) if len(g) else 0.0 for g in gains_per_critique]


def near_duplicate(texts, threshold=0.8, n=3):
    """Mark every text whose character n-grams (lower case, punctuation and runs of blanks to one
    space) have Jaccard similarity >= threshold with those of an EARLIER text of the batch."""
    grams = [_char_ngrams(t, n) for t in texts]
    marks = []
    for i, g in enumerate(grams):
        marks.append(any(len(g & h) / max(len(g | h), 1) >= threshold for h in grams[:i]))
    return marks


def duplicate_posings(problems, families, threshold=0.8):
    """Mark valid posings (problem text; None if invalid) that repeat an earlier one, exactly or
    nearly. The lines every posing of a family shares (its template) are left out of the
    comparison, or all instances of a family would look alike."""
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


def _char_ngrams(text, n):
    text = " ".join(re.sub(r"[^\w\s]", " ", text.lower()).split())
    if len(text) <= n:
        return {text}
    return {text[i:i + n] for i in range(len(text) - n + 1)}


# ----------------------------------------------------------------------------- advantages, credit

def group_advantages(rewards, group_ids, eps=1e-6):
    """A = (r - mean_group) / (std_group + eps), the population std. A group whose rewards are
    all equal carries no signal: advantage 0, dropped. Returns (advantages float64, keep bool)."""
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
    """Per-token coefficients of one solution: its advantage on every token, except that a
    negative advantage with the judge's pointer at step k (1-based) spares the steps before k,
    which the judge accepted: the blame lands where the error starts."""
    steps = torch.as_tensor(step_of_token)
    credit = torch.full(steps.shape, float(advantage), dtype=torch.float64)
    if advantage < 0 and flagged_step is not None:
        credit[steps < flagged_step] = 0.0
    return credit


# ----------------------------------------------------------------------------- the fused loss

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


# ----------------------------------------------------------------------------- refinement

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
    """One DPO pair: two answers to `problem` (role "solve": a revision and its original) or two
    critiques of `solution` (role "judge")."""
    role: str
    problem: str
    solution: str | None
    chosen: str
    rejected: str


def refinement_pairs(records):
    """Preference pairs of alignment via refinement: a revision over its original when it fixed
    the answer (the reverse when it broke it); of two or more critiques of one solution, the one
    of best mean gain over the worst, when they differ (the first wins ties)."""
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
    """A "long refinement thought" (NLL text; the model refines inside one answer): the first
    solution, then per round `Critique:` / the critique / `Revision:` / the revision, then
    `Final:` and `Answer: <final>`, the last Answer line, which the answer parser reads."""
    parts = [solution.rstrip("\n")]
    for critique, revision in critiques_and_revisions:
        parts += ["Critique:", critique.rstrip("\n"), "Revision:", revision.rstrip("\n")]
    parts += ["Final:", f"Answer: {final}"]
    return "\n".join(parts)


@dataclass
class Round:
    """One link of a refinement chain: a solution, its score (0/1 or finer), and the critique
    and verdict written on it (None if the chain ended before judging it)."""
    solution: str
    score: float
    critique: str | None = None
    verdict: bool | None = None


def refine_rounds(judge_fn, revise_fn, score_fn, problems, solutions, max_rounds):
    """Chains of critique -> revise, all at once, one judge_fn and one revise_fn call per round
    (a model batches each role). Chain i starts at solutions[i] and ends when its judge accepts,
    after `max_rounds` revisions, or when a revision did not raise the score.
    judge_fn(problems, solutions) -> [(critique, verdict)]; revise_fn(problems, solutions,
    critiques) -> [solution]; score_fn(problem, solution) -> float. Both model calls happen
    `max_rounds` times, empty once no chain is live: under FSDP each is a collective, so all
    ranks make the same calls. Returns one list of Rounds per chain, the original first."""
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
    """RefinementRecords of chains from one solution of `problem`: that solution with every
    chain's first critique (so they compete; one that accepted has no revision, gain 0), then
    one record per later round (a revision against the solution it revised)."""
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
