"""Benchmark: which lookups does the tiny model learn in a CPU budget?

Abduction is a lookup (and deduction was one while its rules were shuffled): a step names a
variable, and the solver must find the rule where that variable stands and copy what stands
beside it (`v<-t` needs the `t` of the rule `t->v`). This probe trains a fresh tiny model
(train.py's default sizes, its tokenizer built on the probe's texts) on one synthetic task at a
time and reports teacher-forced exact match on fresh draws (every completion token the argmax;
a greedy decode would write the same), so each row says whether one kind of lookup is learned
within `--steps`:

  offset          copy 8 letters that stand at a fixed distance back (positional attention)
  symbols         repeat 5-15 distinct symbols (`%(&!`, one token each): each copied token
                  follows the copy of the token before it, a key of one token
  spaced_symbols  the same written `% ( &`: a space token between, so the key of each copied
                  symbol is two tokens (the symbol, the space), and half the targets are spaces
  letters         the same as spaced_symbols with letters (`a b c`); with `--pieces=spaced` a
                  letter keeps the space before it (` b`), so the key is one token again and
                  the text is as long as spaced_symbols'
  abduction       tasks.py's abduction at level 1 (solve demonstrations, 2-4 rules `t->v`):
                  one lookup an item, backwards (the step `v<-t` needs the letter two tokens
                  before the effect's place in the rules)

The sequence stands on its own line of the prompt, so the copy's tokens are the prompt's tokens
under either piece set. Abduction's fresh draws include about 1% of problems also drawn in
training.

Run: python tests/bench_lookup.py [--tasks=offset,symbols,spaced_symbols,letters,abduction]
        [--steps=1500] [--seed=0] [--layers=2 --hidden=128] [--pieces=tiny|spaced] [--threads=2]
Prints exact match every `--every` steps per task, a table and a last-line JSON of the final
figures.
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

TASKS = ("offset", "symbols", "spaced_symbols", "letters", "abduction")
LETTERS = "abcdefghijklmnopqrstuvwxyz"
SYMBOLS = "!$%&()*+/;=?@[]^_{}|"  # 20 signs, each its own piece under either piece set
# --pieces=spaced: a letter keeps the space before it (` a`, as BPE vocabularies hold it), so a
# key of two tokens (letter, space) becomes one; words and signs are split as the tiny default's.
PIECES = {"tiny": model.TINY_PIECES,
          "spaced": r" ?[A-Za-z]+|\d+|<->|->|<-|[^\sA-Za-z\d]|\n|\s"}


def item(task, rng):
    """(prompt, completion) of one draw of `task`."""
    if task == "abduction":
        t = tasks.sample("abduction", 1, rng)
        return roles.solve_prompt(t.prompt), "\n".join(t.steps) + f"\nAnswer: {t.answer}"
    if task == "offset":
        seq = " ".join(rng.choice(LETTERS) for _ in range(8))
    else:  # distinct tokens: one key, one place to copy from
        alphabet = SYMBOLS if task.endswith("symbols") else LETTERS
        sep = "" if task == "symbols" else " "
        seq = sep.join(rng.sample(alphabet, rng.randint(5, 15)))
    return f"Copy:\n{seq}\n", seq


def encode(tok, pairs):
    """The pairs packed as the trainer packs them (model.pack: right-padded, the completion
    tokens and eos flattened with the position that predicts each)."""
    prompts = [tok(p, add_special_tokens=False).input_ids for p, _ in pairs]
    completions = [tok(c, add_special_tokens=False).input_ids + [tok.eos_token_id]
                   for _, c in pairs]
    return model.pack(prompts, completions, tok.pad_token_id, "cpu")


def scored_logits(lm, packed):
    """Logits at the positions that predict the completion tokens, [n, vocab]."""
    return lm(packed.input_ids).logits[packed.rows, packed.cols]


def exact_match(lm, packed):
    """Share of items whose every completion token is the model's argmax."""
    with torch.no_grad():
        wrong = (scored_logits(lm, packed).argmax(-1) != packed.targets).long()
    items = packed.input_ids.shape[0]
    return (torch.zeros(items, dtype=torch.long).index_add_(0, packed.rows, wrong) == 0
            ).float().mean().item()


def run_task(task, args):
    """Train a fresh tiny model on `task`; [(step, loss, exact match)] and seconds taken."""
    rng = random.Random(args.seed)
    texts = ["".join(item(task, rng)) for _ in range(2000)]
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
        # the probe's own schedule (50 warm-up steps, cosine to zero), so a run's last figure is
        # at the end of its decay whatever --steps is
        scale = min(1.0, step / 50) * 0.5 * (1 + math.cos(math.pi * step / args.steps))
        for group in optimizer.param_groups:
            group["lr"] = args.lr * scale
        packed = encode(tok, [item(task, rng) for _ in range(args.batch)])
        loss = torch.nn.functional.cross_entropy(scored_logits(lm, packed), packed.targets)
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(lm.parameters(), 1.0)
        optimizer.step()
        if step % args.every == 0 or step == args.steps:
            lm.eval()
            rows.append((step, loss.item(), exact_match(lm, held_out)))
            lm.train()
    return rows, time.time() - start


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", default=",".join(TASKS), help="comma-separated subset")
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--every", type=int, default=250, help="evaluate every this many steps")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--lr", type=float, default=4e-3, help="peak rate (train.py's --lr)")
    parser.add_argument("--n", type=int, default=200, help="held-out items")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--layers", type=int, default=2, help="train.py's --tiny_layers")
    parser.add_argument("--hidden", type=int, default=128, help="train.py's --tiny_hidden")
    parser.add_argument("--pieces", choices=sorted(PIECES), default="tiny",
                        help="what a token may hold (see PIECES)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: all cores)")
    args = parser.parse_args(argv)
    names = args.tasks.split(",")
    unknown = [t for t in names if t not in TASKS]
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
    print(f"{'task':<15} {'exact':>6} {'loss':>7} {'seconds':>8}")
    for task, r in results.items():
        print(f"{task:<15} {r['exact']:>6.2f} {r['loss']:>7.3f} {r['seconds']:>8}")
    final = {t: {"exact": r["exact"], "loss": r["loss"]} for t, r in results.items()}
    print(json.dumps({"steps": args.steps, "seed": args.seed, "layers": args.layers,
                      "hidden": args.hidden, "pieces": args.pieces, **final}))


if __name__ == "__main__":
    main()
