"""Benchmark: our sampler (sampling.generate) against Hugging Face `generate` on the tiny default.

Our sampler runs its lean decoder (sampling.lean_decoder: the layers' weights called directly,
a preallocated KV cache); `ours via hf forward` is the same loop over the Hugging Face forward,
to show what the loop alone and the lean decoder each contribute.

Batch 64 prompts of ragged lengths, 64 new tokens, temperature-1 sampling with top-p 1, both in
the same process after one warm-up call each; the best of `--repeats` timings counts. Tokens/s =
new tokens produced / seconds. The untrained model almost never emits eos, so both decode all 64
steps for every row: the comparison is of the loop itself, not of early stopping.

Run: python tests/bench_generate.py [--repeats=3] [--threads=2]
"""
import argparse
import json
import os
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import model as M  # noqa: E402
import sampling  # noqa: E402


def best_time(fn, repeats):
    fn()  # warm-up: allocator, kernels, lazy imports
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--new_tokens", type=int, default=64)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        policy, tok = M.load(M.build_tiny(os.path.join(tmp, "tiny")))
    policy.eval()
    texts = [f"<s>#problem\n{'abcdefgh' * (1 + i % 7)}\n#solve\n" for i in range(args.batch)]
    prompts = M.encode(tok, texts)
    ids, mask, _ = sampling.left_pad(prompts, tok.pad_token_id, "cpu")
    counts = {}

    def ours():
        out = sampling.generate(policy, prompts, args.new_tokens, [tok.eos_token_id],
                                tok.pad_token_id, temperature=1.0,
                                generator=torch.Generator().manual_seed(0))
        counts["ours"] = int(out.lengths.sum())

    def ours_hf_forward():
        out = sampling.generate(policy, prompts, args.new_tokens, [tok.eos_token_id],
                                tok.pad_token_id, temperature=1.0,
                                generator=torch.Generator().manual_seed(0), lean=False)
        counts["ours via hf forward"] = int(out.lengths.sum())

    def hf():
        torch.manual_seed(0)
        with torch.no_grad():
            out = policy.lm.generate(input_ids=ids, attention_mask=mask, do_sample=True,
                                     temperature=1.0, top_p=1.0, top_k=0,
                                     max_new_tokens=args.new_tokens,
                                     eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
        new = out[:, ids.shape[1]:]
        counts["hf"] = int((new != tok.pad_token_id).sum())

    t_ours = best_time(ours, args.repeats)
    t_loop = best_time(ours_hf_forward, args.repeats)
    t_hf = best_time(hf, args.repeats)
    ours_tok_s, hf_tok_s = counts["ours"] / t_ours, counts["hf"] / t_hf
    loop_tok_s = counts["ours via hf forward"] / t_loop
    n_params = sum(p.numel() for p in policy.parameters())
    print(f"tiny default: {n_params / 1e6:.2f}M parameters, batch {args.batch}, "
          f"{args.new_tokens} new tokens, {args.threads} threads, best of {args.repeats}")
    print(f"{'sampler':<14}{'tokens':>8}{'seconds':>10}{'tok/s':>10}")
    print(f"{'ours':<14}{counts['ours']:>8}{t_ours:>10.3f}{ours_tok_s:>10.0f}")
    print(f"{'ours, hf fwd':<14}{counts['ours via hf forward']:>8}{t_loop:>10.3f}"
          f"{loop_tok_s:>10.0f}")
    print(f"{'hf generate':<14}{counts['hf']:>8}{t_hf:>10.3f}{hf_tok_s:>10.0f}")
    print(json.dumps({"ours_tok_s": round(ours_tok_s, 1), "hf_tok_s": round(hf_tok_s, 1),
                      "ratio": round(ours_tok_s / hf_tok_s, 3)}))


if __name__ == "__main__":
    main()
