#!/usr/bin/env bash
# The GPU smoke test (not collected by pytest). On CUDA: a tiny random Qwen3 (4 layers, GQA)
# through `warmup` (5 steps) and `alive` (3 steps) under torchrun, FSDP2 in bf16 with activation
# checkpointing, on 1 rank and, when more GPUs are visible, on all of them; then eval.py on the
# result; then which fused attention kernels the lean decoder and the training forward run with.
# Prints seconds per step and peak GPU memory per stage.
#
#   bash tests/gpu_smoke.sh                 # from the repository root, on a CUDA machine
#   SMOKE_ON_CPU=1 bash tests/gpu_smoke.sh  # the same plumbing on CPU (gloo), to check the script
set -euo pipefail
cd "$(dirname "$0")/.."
out=${SMOKE_OUT:-runs/gpu_smoke}
rm -rf "$out"
if [ -z "${SMOKE_ON_CPU:-}" ]; then
  python -c "import torch; assert torch.cuda.is_available(), 'gpu_smoke.sh: no CUDA device'"
fi
gpus=$(python -c "import torch; print(torch.cuda.device_count())")
python -c "import torch, transformers; print('torch', torch.__version__, '| transformers',
transformers.__version__, '| cuda', torch.version.cuda, '|', torch.cuda.get_device_name(0)
if torch.cuda.is_available() else 'cpu')"
python -c "import model, roles; model.build_tiny('$out/init', roles.world_texts(0),
hidden_size=256, num_layers=4, num_heads=8, num_kv_heads=2, intermediate_size=704)"

quick="--max_new_tokens=64 --seeds=4 --posings=2 --solutions=4 --batch=16 --micro_batch=8"
quick="$quick --save_every=2 --checkpointing=on --threads=1"
ranks_list=1
[ "$gpus" -gt 1 ] && ranks_list="1 $gpus"
for ranks in $ranks_list; do
  run="$out/ranks$ranks"
  torchrun --standalone --nproc_per_node="$ranks" train.py --stage=warmup --model="$out/init" \
    --out="$run/warmup" --steps=5 $quick
  torchrun --standalone --nproc_per_node="$ranks" train.py --stage=alive \
    --model="$run/warmup/model" --out="$run/alive" --steps=3 $quick
  python - "$run" "$ranks" <<'EOF'
import json, statistics, sys
run, ranks = sys.argv[1], sys.argv[2]
for stage in ("warmup", "alive"):
    rows = [json.loads(line) for line in open(f"{run}/{stage}/metrics.jsonl")]
    seconds = statistics.median(r["seconds"] for r in rows[1:] or rows)  # step 0 warms up
    peak = max((r.get("gpu_peak_gib", 0.0) for r in rows), default=0.0)
    print(f"SMOKE ranks={ranks} {stage}: {len(rows)} steps, median {seconds:.2f} s/step, "
          f"peak GPU memory {peak:.2f} GiB, last loss {rows[-1]['loss']:.4f}, "
          f"skipped {sum(r['skipped'] for r in rows)}")
EOF
done
python eval.py --model="$out/ranks1/alive/model" --out="$out/eval.json" --n=40 --samples=1 \
  --n_judge=10 --n_pose=10 --max_new_tokens=64 >/dev/null
python -c "import json; r = json.load(open('$out/eval.json')); print('SMOKE eval:', r['n'],
'items, accuracy', r['accuracy']['overall'], '| judge', r['judge_agreement'], '| pose',
r['pose_validity'], '| seconds', r['seconds'])"

python - "$out/init" <<'EOF'
# Which attention kernels serve the lean decoder (boolean mask, GQA folded into the query axis)
# and the training forward (causal, no mask): each kernel alone, then "fused" = all but math.
import sys, torch
from torch.nn.attention import SDPBackend, sdpa_kernel
import model as M
import sampling
if not torch.cuda.is_available():
    print("SMOKE kernels: skipped (no CUDA)")
    sys.exit(0)
policy, tok = M.load(sys.argv[1], dtype=torch.bfloat16, device="cuda")
prompts = M.encode(tok, ["#problem\nab\n#solve\n", "#problem\nlonger one here\n#solve\n"])
packed = M.pack(prompts, [[5, 6, 7], [8, 9]], tok.pad_token_id, "cuda")
fused = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.CUDNN_ATTENTION]
failed = False
for name, backends in [(b.name, [b]) for b in fused] + [("fused", fused)]:
    results = []
    for what, call in (("decode", lambda: sampling.generate(policy, prompts, 8, [-1], 0, temperature=0)),
                       ("train forward", lambda: M.run_head(policy, packed, lambda h, w: h.sum()))):
        try:
            with sdpa_kernel(backends), torch.no_grad():
                call()
            results.append(f"{what} ok")
        except RuntimeError as e:
            # only "No available kernel" is the backend refusing the call; anything else is a bug
            refused = "No available kernel" in str(e)
            failed = failed or not refused
            results.append(f"{what} {'refused' if refused else 'FAILED'} "
                           f"({str(e).splitlines()[0][:60]})")
    print(f"SMOKE kernels {name}: " + ", ".join(results))
sys.exit(1 if failed else 0)
EOF
