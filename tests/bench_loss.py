"""Benchmark: fused chunked loss against the naive full-logits loss, memory and time.

Shape: vocabulary 128,256 (Llama-3's), hidden size 512, 4,096 tokens, float32, mode "pg"
(off-policy ratios, k3 KL on), forward plus backward, 2 threads.  Each variant runs in a
fresh subprocess so its peak memory (max RSS, getrusage) is its own.  The figure reported
as the loss's peak is max RSS at the end minus the resident set measured right after the
inputs were built (both shown), i.e. the memory the loss itself added: logits, softmax,
gradient buffers and the returned gradients.  Time is the minimum of several repeats (the
machine is shared, so the minimum is the least noisy estimate); the naive and fused
subprocesses alternate, `rounds` of each, and the peak is the largest over them.  The
naive subprocess also runs the fused loss afterwards on the same inputs and reports the
largest relative error, max|fused - naive| / max|naive| over the hidden and weight
gradients (and the loss).

Run: python tests/bench_loss.py [--chunk=N] [--repeats=N] [--rounds=N]
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import time

VOCAB, HIDDEN, TOKENS = 128256, 512, 4096


def current_rss_mb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def max_rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def make_inputs(torch):
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(TOKENS, HIDDEN, generator=g)
    weight = torch.randn(VOCAB, HIDDEN, generator=g) / HIDDEN ** 0.5
    targets = torch.randint(0, VOCAB, (TOKENS,), generator=g)
    coef = torch.randn(TOKENS, generator=g)
    # per-token old / reference log-probs near the current ones (computed cheaply here as
    # a constant offset plus noise; the loss only needs them to be plausible numbers)
    old_logp = -12.0 + 0.3 * torch.randn(TOKENS, generator=g)
    ref_logp = -12.0 + 0.3 * torch.randn(TOKENS, generator=g)
    return hidden, weight, targets, coef, dict(old_logp=old_logp, ref_logp=ref_logp, kl_coef=0.05)


def naive_pg(torch, hidden, weight, targets, coef, old_logp, ref_logp, kl_coef, clip_eps=0.2):
    logits = hidden @ weight.T
    logp = torch.log_softmax(logits, dim=-1).gather(1, targets[:, None]).squeeze(1)
    ratio = torch.exp(logp - old_logp)
    per_token = -torch.min(ratio * coef, ratio.clamp(1 - clip_eps, 1 + clip_eps) * coef)
    diff = ref_logp - logp
    per_token = per_token + kl_coef * (coef != 0) * (diff.exp() - diff - 1)
    return per_token.sum() / (coef != 0).sum().clamp(min=1)


def run_one(variant, chunk, repeats):
    import torch
    torch.set_num_threads(2)
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
    from loss import fused_loss

    hidden, weight, targets, coef, kw = make_inputs(torch)
    hidden.requires_grad_()
    weight.requires_grad_()
    baseline_rss, baseline_max = current_rss_mb(), max_rss_mb()

    def step():
        hidden.grad = weight.grad = None
        start = time.perf_counter()
        if variant == "naive":
            loss = naive_pg(torch, hidden, weight, targets, coef, **kw)
        else:
            loss, _ = fused_loss(hidden, weight, targets, coef, "pg", chunk_size=chunk, **kw)
        loss.backward()
        return time.perf_counter() - start, loss.item()

    runs = [step() for _ in range(repeats)]
    times, ref_loss = [t for t, _ in runs], runs[-1][1]
    result = {"variant": variant, "chunk": chunk, "time_s": min(times), "times_s": times,
              "baseline_rss_mb": baseline_rss, "baseline_max_rss_mb": baseline_max,
              "max_rss_mb": max_rss_mb(), "peak_mb": max_rss_mb() - baseline_rss}
    if variant == "naive":  # accuracy on the full shape, after the naive peak was read
        ref_h, ref_w = hidden.grad, weight.grad
        hidden.grad = weight.grad = None
        loss, _ = fused_loss(hidden, weight, targets, coef, "pg", chunk_size=chunk, **kw)
        loss.backward()
        errs = [((a - b).abs().max() / b.abs().max()).item()
                for a, b in ((hidden.grad, ref_h), (weight.grad, ref_w))]
        errs.append(abs(loss.item() - ref_loss) / abs(ref_loss))
        result["max_rel_err"] = max(errs)
    print(json.dumps(result))


def spawn(variant, chunk, repeats):
    out = subprocess.run([sys.executable, os.path.abspath(__file__), f"--run={variant}",
                          f"--chunk={chunk}", f"--repeats={repeats}"],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser(description="fused vs naive loss: memory and time")
    parser.add_argument("--chunk", type=int, default=1024, help="tokens per chunk of the fused loss")
    parser.add_argument("--repeats", type=int, default=2, help="timed repeats per process")
    parser.add_argument("--rounds", type=int, default=2, help="alternating processes per variant")
    parser.add_argument("--run", choices=("naive", "fused"), help=argparse.SUPPRESS)  # a child
    args = parser.parse_args()
    chunk, repeats, rounds = args.chunk, args.repeats, args.rounds
    if args.run:
        return run_one(args.run, chunk, repeats)
    # alternate the subprocesses so that load from other programs hits both alike
    results = {"naive": [], "fused": []}
    for _ in range(rounds):
        for variant in results:
            results[variant].append(spawn(variant, chunk, repeats))
    naive, fused = (dict(max(runs, key=lambda r: r["peak_mb"]),
                         time_s=min(r["time_s"] for r in runs),
                         max_rel_err=max(r.get("max_rel_err", 0.0) for r in runs))
                    for runs in results.values())
    print(f"vocab {VOCAB}, hidden {HIDDEN}, tokens {TOKENS}, float32, mode pg, chunk {chunk}, "
          f"2 threads, time: min of {rounds} alternating processes x {repeats} repeats")
    print(f"{'variant':8} {'peak MB (loss)':>15} {'max RSS MB':>11} {'inputs RSS MB':>14} "
          f"{'time s':>8}")
    for r in (naive, fused):
        print(f"{r['variant']:8} {r['peak_mb']:15.0f} {r['max_rss_mb']:11.0f} "
              f"{r['baseline_rss_mb']:14.0f} {r['time_s']:8.3f}")
    print(f"fused/naive: peak {fused['peak_mb'] / naive['peak_mb']:.1%}, "
          f"time {fused['time_s'] / naive['time_s']:.2f}x; max relative grad error "
          f"{naive['max_rel_err']:.2e}")
    print(json.dumps({"peak_mb_naive": round(naive["peak_mb"], 1),
                      "peak_mb_fused": round(fused["peak_mb"], 1),
                      "time_naive_s": round(naive["time_s"], 4),
                      "time_fused_s": round(fused["time_s"], 4),
                      "max_rel_err": naive["max_rel_err"]}))


if __name__ == "__main__":
    main()
