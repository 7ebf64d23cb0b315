"""warmup.py on a tiny model: the demonstration mix, the judge pairs and the weight of their
deciding token, the judge-only phase, its verdict check and its learning-rate schedule.

Run: python -m pytest -q tests/test_warmup.py
"""
import math
import random

import pytest
import torch

import model as M
import roles
import tasks
import train
import update
import warmup


# The tiny tokenizer keeps the line break a token of its own; real ones merge it into the token
# before it (Llama-3's `.\n`) or after it. (pieces, the last teacher-forced token, the target's
# opening): None is the `tiny` fixture, whose tokenizer learned no merges.
LINE_BREAKS = [(None, "\n", ""),
               (r"\.\n|" + M.TINY_PIECES, ".\n", ""),
               (r"\n(?:Verdict|Step)|" + M.TINY_PIECES, ".", "\n")]


@pytest.mark.parametrize("pieces, forced_last, target_opens", LINE_BREAKS,
                         ids=["own-token", "merged-backwards", "merged-forwards"])
def test_verdict_check_is_the_share_a_plain_forward_gets_right(tiny, build_tiny_model, pieces,
                                                              forced_last, target_opens):
    cfg = train.parse_args(["--families=induction,abduction"])
    if pieces is not None:  # a tokenizer whose merges hold the critiques' line breaks
        rng = random.Random(0)
        critiques = [c for family in ("induction", "abduction") for level in (1, 2)
                     for _ in range(20)
                     for _, c in roles.judge_pair(tasks.sample(family, level, rng, "train"), rng)]
        tiny = build_tiny_model(texts=critiques, pieces=pieces, hidden_size=32, num_layers=1,
                                num_heads=2, num_kv_heads=1, intermediate_size=64)
    policy, tok = M.load(tiny)
    shares = warmup.verdict_check(policy, tok, cfg, [1, 2], n=6)
    [cases] = [v for k, v in warmup.VERDICT_CASES.items()
               if k[:4] == (tok.name_or_path, len(tok), cfg.families, (1, 2))]
    assert len(cases) == 12  # a reference and a slipped solution of each of 6 problems
    with torch.no_grad():
        right = [int(policy.lm(input_ids=torch.tensor([prompt])).logits[0, -1].argmax()) == t
                 for prompt, [t], _ in cases]
    by_family = [[r for r, (_, _, f) in zip(right, cases) if f == family]
                 for family in ("induction", "abduction")]
    assert all(len(rows) == 6 for rows in by_family)  # 3 problems of each family, twice
    assert list(shares) == ["induction", "abduction"]
    assert list(shares.values()) == pytest.approx([sum(rows) / len(rows) for rows in by_family])
    # the target opens the critique's second line: `Verdict: correct` or `Step k is wrong`
    assert {tok.decode(prompt[-1:]) for prompt, _, _ in cases} == {forced_last}
    starts = [tok.decode([t]) for _, [t], _ in cases]
    assert all(s.startswith(target_opens) and s.strip() for s in starts)
    starts = [s.strip() for s in starts]
    assert starts[0::2] == ["Verdict"[:len(s)] for s in starts[0::2]]
    assert starts[1::2] == ["Step"[:len(s)] for s in starts[1::2]]
    if pieces is not None:  # whole words: the merges were learned
        assert set(starts) == {"Verdict", "Step"}


def test_verdict_check_scores_each_family(tiny, monkeypatch):
    """All of one family's verdicts right and half of the other's: 1 and 0.5, where the share
    over both (0.75) would hide a family still at chance."""
    policy, tok = M.load(tiny)
    cfg = train.parse_args(["--families=induction,abduction", "--micro_batch=64"])
    warmup.verdict_check(policy, tok, cfg, [1, 2], n=8)  # builds the cases
    [cases] = [v for k, v in warmup.VERDICT_CASES.items()
               if k[:5] == (tok.name_or_path, len(tok), cfg.families, (1, 2), 8)]
    right = torch.tensor([f == "induction" or i % 2 == 0 for i, (_, _, f) in enumerate(cases)])
    monkeypatch.setattr(M, "run_head", lambda policy, packed, head: right)
    assert warmup.verdict_check(policy, tok, cfg, [1, 2], n=8) == {"induction": 1.0,
                                                                   "abduction": 0.5}


def test_judge_first_ends_once_the_verdict_check_passes(tiny, monkeypatch):
    policy, tok = M.load(tiny)
    optimizer = torch.optim.AdamW(policy.parameters(), lr=1e-3)
    cfg = train.parse_args(["--judge_first=100", "--judge_pass=0.9", "--batch=2",
                            "--demo_levels=1", "--judge_levels=4,5"])
    # the first check's mean over the families (0.925) would pass, its worst family does not
    shares = [{"induction": 0.85, "corpus": 1.0}, {"induction": 0.95, "corpus": 0.97},
              {"induction": 0.8, "corpus": 0.7}]
    checks, draws, checked = iter(shares), [], []
    monkeypatch.setattr(warmup, "CHECK_EVERY", 2)
    monkeypatch.setattr(warmup, "verdict_check", lambda policy, tok, cfg, levels:
                        checked.append(levels) or next(checks))
    real = warmup.demonstration
    monkeypatch.setattr(warmup, "demonstration",
                        lambda rng, tok, cfg, levels, mix:
                        draws.append((mix, levels["judge"])) or real(rng, tok, cfg, levels, mix))
    state = {}
    logged = [warmup.warmup_step(policy, optimizer, tok, cfg, step, 0, state)[0]
              for step in range(6)]
    assert [m.get("verdict_check") for m in logged] == [None, 0.85, None, 0.95, None, 0.7]
    assert [m.get("verdict_check/corpus") for m in logged[1::2]] == [1.0, 0.97, 0.7]
    assert state["judge_learned"] == 4  # and stays: 0.7 later does not reopen the phase
    judge_only = [float(kind == "judge") for kind in roles.DEMO_KINDS]
    # batch 2: one judge pair of the demonstrated levels per step of the phase, then one or two
    # draws of the mix, whose judge and pose demonstrations take --judge_levels
    assert draws[:4] == [(judge_only, [1])] * 4 and len(draws) >= 6
    assert draws[4:] == [(warmup.demo_settings(cfg)[1], [4, 5])] * (len(draws) - 4)
    assert checked == [[1]] * 3  # the check stays on the levels the phase was shown


@pytest.mark.parametrize("mix, weighted", [("0,1,0,0,0", True), ("1,1,0,0,0", False)])
def test_the_token_that_decides_the_verdict_weighs_more_in_judge_pairs_alone(tiny, monkeypatch,
                                                                            mix, weighted):
    """While the warm-up shows judge pairs alone, one token of each critique weighs
    --verdict_weight: the first of its second line, the one verdict_check scores (`Verdict`
    after equal answers, `Step` after different ones); every other token weighs 1. In the role
    mix every token weighs 1."""
    policy, tok = M.load(tiny)
    cfg = train.parse_args([f"--demo_mix={mix}", "--verdict_weight=7", "--judge_first=0"])
    shown = []
    monkeypatch.setattr(update, "train_on", lambda policy, opt, samples, *a: shown.extend(samples))
    for step in range(10):
        warmup.warmup_step(policy, None, tok, cfg, step, 0, {})
    judged = [s for s in shown if s.role == "judge"]
    verdicts = []
    for sample in judged:
        critique = tok.decode(sample.ids, skip_special_tokens=True)
        head = tok(critique.split("\n")[0] + "\n", add_special_tokens=False)["input_ids"]
        weight = 7.0 if weighted else 1.0
        assert sample.coef == [weight if i == len(head) else 1.0 for i in range(len(sample.ids))]
        verdicts.append(roles.parse_verdict(critique))
        word = "Verdict" if verdicts[-1] else "Step"
        assert word.startswith(tok.decode([sample.ids[len(head)]]).strip())
    assert set(verdicts) == {True, False}
    assert all(s.coef == [1.0] * len(s.ids) for s in shown if s.role != "judge")


class Pieces:
    """A stand-in tokenizer: an id is an index into a list of text pieces."""

    def __init__(self, pieces):
        self.pieces = pieces

    def decode(self, ids):
        return "".join(self.pieces[i] for i in ids)


@pytest.mark.parametrize("pieces, decisive", [
    (["Got 8, want 8", ".\n", "Verdict", ": correct"], 2),  # the line break merged backwards
    (["Got 8, want 9.", "\nStep", " 2 is wrong"], 1),       # ... or forwards
])
def test_verdict_token_finds_a_line_break_merged_into_a_token(pieces, decisive):
    assert warmup.verdict_token(Pieces(pieces), list(range(len(pieces)))) == decisive


def test_demo_mix_weighs_roles_by_their_share_of_samples(tiny):
    """A judge draw gives a pair, so it is drawn at half its weight: --demo_mix=1,1,0,0,0 gives
    as many judge samples as solve samples."""
    _, tok = M.load(tiny)
    cfg = train.parse_args(["--demo_mix=1,1,0,0,0"])
    rng, (levels, mix) = random.Random(0), warmup.demo_settings(cfg)
    samples = [s for _ in range(600)
               for s in warmup.demonstration(rng, tok, cfg, levels, mix)]
    share = sum(s.role == "judge" for s in samples) / len(samples)
    assert abs(share - 0.5) < 0.07  # 3 sd: judge draws ~ Bin(600, 1/3), 2 samples each


def test_a_batch_of_one_still_shows_the_judge_both_verdicts(tiny, monkeypatch):
    """A judge pair that does not fit the batch gives a random half, not always the first."""
    policy, tok = M.load(tiny)
    cfg, shown = train.parse_args(["--judge_first=100", "--batch=1"]), []
    monkeypatch.setattr(update, "train_on", lambda policy, opt, samples, *a: shown.extend(samples))
    for step in range(20):
        warmup.warmup_step(policy, None, tok, cfg, step, 0, {})
    verdicts = [roles.parse_verdict(tok.decode(s.ids, skip_special_tokens=True)) for s in shown]
    assert len(shown) == 20 and set(verdicts) == {True, False}


@pytest.mark.parametrize("revise_levels, revised", [("", {1}), ("2,3", {2, 3})])
def test_judge_pose_and_revise_demonstrations_take_their_own_levels(tiny, monkeypatch,
                                                                      revise_levels, revised):
    _, tok = M.load(tiny)
    shown, real = [], roles.demonstrations
    monkeypatch.setattr(roles, "demonstrations", lambda rng, family, level, kind, sees:
                        shown.append((kind, level)) or real(rng, family, level, kind, sees))
    cfg = train.parse_args(["--demo_levels=1", "--judge_levels=4,5",
                            f"--revise_levels={revise_levels}"])
    rng, (levels, mix) = random.Random(0), warmup.demo_settings(cfg)
    for _ in range(300):
        warmup.demonstration(rng, tok, cfg, levels, mix)
    by_kind = {}
    for kind, level in shown:
        by_kind.setdefault(kind, set()).add(level)
    assert by_kind["solve"] == {1} and by_kind["revise"] == revised
    assert by_kind["judge"] == by_kind["pose"] == {4, 5}


def test_the_judge_only_phase_runs_at_the_peak_rate_and_the_mixed_phase_decays_on_its_own():
    plain = train.parse_args(["--judge_first=0"])
    cfg = train.parse_args(["--judge_first=100", "--mixed_lr=0.25"])  # a scale that shows
    judge_only = [min(1.0, (s + 1) / cfg.lr_warmup) for s in range(100)]  # warm-up, then peak
    mixed = cfg.mixed_lr
    assert [train.lr_factor(cfg, "warmup", s, 1000, {}) for s in range(1000)] == pytest.approx(
        judge_only + [mixed * train.lr_factor(plain, "warmup", s, 900) for s in range(900)])
    # a phase that ended early, after step 39: the mixed phase decays over the other 960 steps
    assert [train.lr_factor(cfg, "warmup", s, 1000, {"judge_learned": 40}) for s in range(1000)] \
        == pytest.approx(judge_only[:40] + [mixed * train.lr_factor(plain, "warmup", s, 960)
                                            for s in range(960)])
    # no judge-only phase: one cosine over the whole warm-up, down to a tenth of the peak
    assert train.lr_factor(plain, "warmup", 99, 100) == pytest.approx(
        0.1 + 0.45 * (1 + math.cos(math.pi * 99 / 100)))
    assert train.lr_factor(cfg, "alive", 500, 1000, {}) == 1.0  # RL stages: constant
    # a warm-up against a deadline (no horizon): no decay, but its mixed phase at mixed_lr too
    assert [train.lr_factor(cfg, "warmup", s, None, {"judge_learned": 40}) for s in range(200)] \
        == pytest.approx(judge_only[:40] + [mixed * min(1.0, (s + 1) / cfg.lr_warmup)
                                            for s in range(160)])
