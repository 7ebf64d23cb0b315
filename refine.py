"""refine.py: the judge's words into a learning signal, in the order a reader follows them.

1. Rewards per role, from one record per posing (`Posing`): with p_hat a posing's verified
   solve rate, v the judge's verdict, y the verifier's 0/1 and g a revision's gain,

       poser    r = 1 - p_hat if p_hat > 0, 0 if p_hat = 0; -1 if invalid or a duplicate;
                0 if held out (its line fixes a problem whose split hash it cannot see)
       solver   r = (1 - alpha) [v = correct] + alpha y      (alpha: 1 -> alpha_floor)
       judge    r = [v = y] + mean g of the revisions written from its critique (0 if none;
                an audit: [v = y])
       reviser  r = g = y(revision) - y(original)             (alignment via refinement;
                in self-play y(revision) checks the whole chain, tasks.faithful)
       self-correction: a revision with g = 1 also joins its posing's solutions, whole (the
                critique's fix it started from included), in the solve prompt, with r = 1:
                the solver learns what the critique taught the reviser (and a group of only
                wrong solutions, which would be dropped, now pushes them down)

2. Advantages: A = (r - mean) / std within a group (the solutions of one posing; the posers of
   one family; the critiques of one posing's right solutions, and apart from them those of its
   wrong ones: only a critique not saying "correct" is revised (with --judged=all_wrong, every
   critique) and can earn a gain, which in one group would make accepting a right solution
   score below the mean and teach the judge to reject); a group whose rewards are all equal is
   dropped. Token credit: a solution with A < 0 whose critique names its first wrong step k
   takes A on steps k.. and 0 before; a k the environment finds past the first wrong step is
   dropped (selfplay.audited_pointer: A whole).
   The per-token coefficients c_t = A x credit are what loss.fused_loss consumes.

3. Refinement (AvR): rounds of critique -> revise, preference pairs, long refinement thoughts.
Tests: tests/test_refine.py."""
import re
from dataclasses import dataclass, field

import torch

import roles

# ----------------------------------------------------------------------------- rewards per role

@dataclass
class Posing:
    """One posing of a self-play step and everything done with it (see `pose` for stand-ins)."""
    family: str
    pose: object = None        # the poser's completion; None: a stand-in (no posing was valid)
    task: object = None        # the environment's Task; None: it refused the posing
    duplicate: bool = False    # repeats an earlier valid posing of the batch
    held_out: bool = False     # well formed, but a held-out problem: refused, not penalised
    solutions: list = field(default_factory=list)  # N completions of the solve prompt
    correct: list = field(default_factory=list)    # the verifier on each: 0.0 or 1.0
    critiques: list = field(default_factory=list)  # the judge's completion on each (or None)
    verdicts: list = field(default_factory=list)   # parsed: True, False, None (unparsable)
    pointers: list = field(default_factory=list)   # its first wrong step, audited; or None
    steps: list = field(default_factory=list)      # per solution: the step of each token
    revisions: list = field(default_factory=list)  # per solution: the reviser's completions (the
    #                                                 revise prompt ends on its start); [] if none
    revised: list = field(default_factory=list)    # ... each whole, in the solve prompt
    gains: list = field(default_factory=list)      # ... and each one's gain
    audits: list = field(default_factory=list)     # (critique, verdict, truth) of known solutions


def self_play_samples(posings, alpha):
    """[(role, completion, per-token coefficients)] of one self-play step: each role's reward
    (the equations above), its advantage within its group, and the solver's token credit; and
    {role: rewards}. Role "corrected" is a self-correction: a revision in its solution's prompt."""
    rows = []  # (role, completion, reward, group, steps of its tokens, flagged step)
    for i, p in enumerate(posings):
        rate = sum(p.correct) / len(p.correct) if p.correct else 0.0
        critique_gains = critique_rewards(p.gains)
        if p.pose is not None:
            learnable = (0.0 if p.held_out else -1.0 if p.task is None or p.duplicate else
                         1 - rate if rate else 0.0)
            rows.append(("pose", p.pose, learnable, ("pose", p.family), None, None))
        for j, solution in enumerate(p.solutions):
            verdict, truth = p.verdicts[j], p.correct[j]
            if p.critiques[j] is None:  # not judged (--judged=all_wrong): the verifier alone
                rows.append(("solve", solution, truth, ("solve", i), None, None))
                continue
            rows.append(("solve", solution, (1 - alpha) * float(verdict is True) + alpha * truth,
                         ("solve", i), p.steps[j], p.pointers[j]))
            rows.append(("judge", p.critiques[j], agreement(verdict, truth) + critique_gains[j],
                         ("judge", i, truth), None, None))
            for revision, whole, g in zip(p.revisions[j], p.revised[j], p.gains[j]):
                rows.append(("revise", revision, g, ("revise", i), None, None))
                if g > 0:  # r = 1 is the group's highest: this sample is only pulled up
                    rows.append(("corrected", whole, 1.0, ("solve", i), None, None))
        for critique, verdict, truth in p.audits:
            rows.append(("judge", critique, agreement(verdict, truth), ("judge", i, truth), None,
                         None))
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


def duplicate_posings(problems, cells, threshold=0.8):
    """Mark valid posings (problem text; None if invalid) that repeat an earlier one: exactly, or
    nearly within its cell (family and level). The lines every posing of a cell shares (its
    template, `Which cause explains it?`) are left out of the near comparison, or all
    instances of a cell would look alike; across cells templates differ, and a short problem
    under a long shared line would look like another."""
    members = {}  # cell -> indices of its valid posings
    for i, (p, c) in enumerate(zip(problems, cells)):
        if p is not None:
            members.setdefault(c, []).append(i)
    near = {}
    for mine in members.values():
        template = set.intersection(*(set(problems[i].split("\n")) for i in mine))
        keys = ["\n".join(line for line in problems[i].split("\n") if line not in template)
                for i in mine]
        near.update(zip(mine, near_duplicate(keys, threshold)))
    seen, marked = set(), []
    for i, p in enumerate(problems):
        marked.append(p is not None and (near[i] or p in seen))
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
    which the judge accepted: the blame lands where the error starts (on the last step if k is
    past it: a solution that stopped short, whose missing step has no tokens)."""
    steps = torch.as_tensor(step_of_token)
    credit = torch.full(steps.shape, float(advantage), dtype=torch.float64)
    if advantage < 0 and flagged_step is not None and steps.numel():
        credit[steps < min(flagged_step, int(steps.max()))] = 0.0
    return credit


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
