"""Benchmark: which lookups does the tiny model learn in a CPU budget?

Deduction and abduction are lookups: a step names a variable, and the solver must find the rule
where that variable stands and copy what stands beside it (`v<-t` needs the `t` of the rule
`t->v`). A transformer does this with an induction head: attend to the earlier position that
follows the current key, copy its token. This probe trains a fresh tiny Llama (train.py's default
sizes, its tokenizer built on the probe's texts) on one synthetic task at a time and reports
teacher-forced exact match on held-out items (every completion token the argmax), so each row
says whether one kind of lookup is learned within `--steps`:

  offset     copy 8 letters that stand at a fixed distance back (no lookup: positional attention)
  symbols    repeat 5-15 random one-token symbols (`%(&!`): an induction head with a one-token
             key, every copied token a target
  letters    the same with letters written `a b c`: the tiny tokenizer keeps a letter apart from
             the space before it, so the key of each copied letter is two tokens (letter,
             space); with `--pieces=spaced` a letter keeps its space (` b`) and the key is one
  abduction  tasks.py's abduction at level 1 (solve demonstrations): one lookup an item, keyed
             by the effect and the arrow before it, with 2-4 rules to choose from

Run: python tests/bench_lookup.py [--tasks=offset,symbols,letters,abduction] [--steps=1500]
        [--seed=0] [--layers=2 --hidden=128] [--pieces=tiny|spaced] [--threads=2]
Prints a table of exact match every `--every` steps and a last-line JSON of the final figures.
"""
import argparse
import json
import math
import os
import random
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import model  # noqa: E402
import roles  # noqa: E402
import tasks  # noqa: E402

LETTERS = "abcdefghijklmnopqrstuvwxyz"
# --pieces=spaced: a letter keeps the space before it (` a`, as BPE vocabularies hold it), so a
# key of two tokens (letter, space) becomes one; otherwise the tiny default's pieces.
PIECES = {"tiny": model.TINY_PIECES,
          "spaced": r" ?[A-Za-z]+|\d+|<->|->|<-|[^\sA-Za-z\d]|\n|\s"}
SYMBOLS = "!$%&()*+/;=?@[]^_{}|"  # each its own token (model.TINY_PIECES)


def item(task, rng):
    """(prompt, completion) of one draw of `task`."""
    if task == "offset":
        seq = " ".join(rng.choice(LETTERS) for _ in range(8))
        return f"Copy: {seq}\n", seq
    if task in ("symbols", "letters"):
        alphabet, sep = (SYMBOLS, "") if task == "symbols" else (LETTERS, " ")
        seq = sep.join(rng.choice(alphabet) for _ in range(rng.randint(5, 15)))
        return f"Copy: {seq}\n", seq
    t = tasks.sample("abduction", 1, rng)
    return roles.solve_prompt(t.prompt), "\n".join(t.steps) + f"\nAnswer: {t.answer}"


def encode(tok, pairs):
    """Right-padded ids [B, L] and a mask of the completion tokens (eos included)."""
    rows = []
    for prompt, completion in pairs:
        p = tok(prompt, add_special_tokens=False).input_ids
        c = tok(completion, add_special_tokens=False).input_ids + [tok.eos_token_id]
        rows.append((p + c, [0] * len(p) + [1] * len(c)))
    width = max(len(ids) for ids, _ in rows)
    ids = torch.tensor([ids + [tok.pad_token_id] * (width - len(ids)) for ids, _ in rows])
    mask = torch.tensor([m + [0] * (width - len(m)) for _, m in rows])
    return ids, mask


def exact_match(lm, ids, mask):
    """Share of items whose every completion token is the model's argmax."""
    with torch.no_grad():
        guess = lm(ids).logits[:, :-1].argmax(-1)
    right = (guess == ids[:, 1:]) | (mask[:, 1:] == 0)
    return right.all(1).float().mean().item()


def run_task(task, args):
    """Train a fresh tiny model on `task`; [(step, loss, exact match)] and seconds taken."""
    rng = random.Random(args.seed)
    texts = ["".join(item(task, rng)) for _ in range(2000)] + [SYMBOLS, LETTERS]
    with tempfile.TemporaryDirectory() as path:
        model.build_tiny(path, texts, hidden_size=args.hidden, num_layers=args.layers,
                         intermediate_size=3 * args.hidden, seed=args.seed,
                         pieces=PIECES[args.pieces])
        policy, tok = model.load(path)
    lm = policy.lm.train()
    held_out = encode(tok, [item(task, random.Random(10**6 + k)) for k in range(args.n)])
    optimizer = torch.optim.AdamW(lm.parameters(), lr=args.lr, betas=(0.9, 0.95),
                                  weight_decay=0.0)
    rows, start = [], time.time()
    for step in range(1, args.steps + 1):
        scale = min(1.0, step / 50) * 0.5 * (1 + math.cos(math.pi * step / args.steps))
        for group in optimizer.param_groups:
            group["lr"] = args.lr * scale
        ids, mask = encode(tok, [item(task, rng) for _ in range(args.batch)])
        logits = lm(ids).logits[:, :-1]
        nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), ids[:, 1:],
                                                reduction="none")
        loss = (nll * mask[:, 1:]).sum() / mask[:, 1:].sum()
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(lm.parameters(), 1.0)
        optimizer.step()
        if step % args.every == 0 or step == args.steps:
            lm.eval()
            rows.append((step, loss.item(), exact_match(lm, *held_out)))
            lm.train()
    return rows, time.time() - start


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", default="offset,symbols,letters,abduction")
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--every", type=int, default=250, help="evaluate every this many steps")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--lr", type=float, default=4e-3, help="train.py's --lr")
    parser.add_argument("--n", type=int, default=200, help="held-out items")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--layers", type=int, default=2, help="train.py's --tiny_layers")
    parser.add_argument("--hidden", type=int, default=128, help="train.py's --tiny_hidden")
    parser.add_argument("--pieces", choices=sorted(PIECES), default="tiny",
                        help="what a token may hold (see PIECES)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: all cores)")
    args = parser.parse_args(argv)
    names = args.tasks.split(",")
    unknown = [t for t in names if t not in ("offset", "symbols", "letters", "abduction")]
    if unknown:
        parser.error(f"--tasks: unknown {unknown}")
    torch.set_num_threads(args.threads or os.cpu_count())
    torch.manual_seed(args.seed)
    results = {}
    for task in names:
        rows, seconds = run_task(task, args)
        results[task] = {"exact": rows[-1][2], "loss": round(rows[-1][1], 4),
                         "seconds": round(seconds), "curve": [r[2] for r in rows]}
        print(f"{task}: " + "  ".join(f"{s}:{e:.2f}" for s, _, e in rows)
              + f"  ({seconds:.0f} s)", flush=True)
    print(f"\nexact match on {args.n} held-out items after {args.steps} steps of batch "
          f"{args.batch}, lr {args.lr}, seed {args.seed}, {args.layers} layers of {args.hidden}, "
          f"pieces {args.pieces}")
    print(f"{'task':<10} {'exact':>6} {'loss':>7} {'seconds':>8}")
    for task, r in results.items():
        print(f"{task:<10} {r['exact']:>6.2f} {r['loss']:>7.3f} {r['seconds']:>8}")
    print(json.dumps({"steps": args.steps, "seed": args.seed, "layers": args.layers,
                      "hidden": args.hidden, "pieces": args.pieces, **{
        t: {"exact": r["exact"], "loss": r["loss"]} for t, r in results.items()}}))


if __name__ == "__main__":
    main()
