"""Worker for test_model.py's FSDP2 test: one optimizer step on a fixed global batch.

Run alone (world 1: model.load, no sharding) or under `torchrun --nproc_per_node=2` (FSDP2 over
gloo, loaded by model.load_sharded: rank 0 reads the checkpoint, the others receive their
shards); both write what they ended with into OUT_DIR so the test can compare them.
Usage: python tests/fsdp_worker.py OUT_DIR
   or: torchrun --nproc_per_node=2 tests/fsdp_worker.py OUT_DIR
"""
import os
import sys

import torch
import torch.nn.functional as F

import merge as merging
import model as M
import sampling

out_dir = sys.argv[1]
rank, world, device = M.setup_distributed()
init_dir = os.path.join(out_dir, "init")
if rank == 0 and not os.path.exists(init_dir):  # a bf16 checkpoint, trained in fp32
    M.build_tiny(init_dir, hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2,
                 intermediate_size=128, seed=3)
    whole, _ = M.load(init_dir, dtype=torch.bfloat16)
    M.save_pretrained_atomic(whole.lm, M.load_tokenizer(init_dir), init_dir)
M.barrier()
policy, tok = M.load(init_dir) if world == 1 else M.load_sharded(init_dir, device)
if world == 1:
    torch.save({k: v.clone() for k, v in policy.lm.state_dict().items()},
               os.path.join(out_dir, "params_init.pt"))

# A fixed global batch of ragged prompt/completion pairs; rank r takes every world-th pair.
gen = torch.Generator().manual_seed(0)
pairs = [(torch.randint(4, 100, (3 + i,), generator=gen).tolist(),
          torch.randint(4, 100, (5 + 2 * i,), generator=gen).tolist()) for i in range(4)]
global_tokens = sum(len(c) for _, c in pairs)
mine = pairs[rank::world]

# SGD, not Adam: Adam's first step is about lr * sign(g), which turns float noise in near-zero
# gradient entries into lr-sized differences; SGD shows any gradient difference as it is.
opt = torch.optim.SGD(policy.parameters(), lr=1.0, momentum=0.9)
packed = M.pack([p for p, _ in mine], [c for _, c in mine], tok.pad_token_id, device)


def summed_nll(hidden, weight):
    return F.cross_entropy(F.linear(hidden, weight), packed.targets, reduction="sum")


# FSDP averages gradients over ranks; scaling by world turns that into the global-batch sum.
loss = M.run_head(policy, packed, summed_nll) * world / global_tokens
loss.backward()
opt.step()
opt.zero_grad()

prompts = M.encode(tok, ["<s>abc", "<s>a longer one", "<s>z"])
with M.gathered_for_rollout(policy):
    rollout = sampling.generate(policy, prompts, 12, [tok.eos_token_id], tok.pad_token_id,
                                temperature=0)

state_dir = os.path.join(out_dir, f"state_world{world}")
merging.save_state(policy, opt, state_dir, {"step": 1})
merging.save_hf(policy, tok, os.path.join(out_dir, f"export_world{world}"))
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
full = get_model_state_dict(policy.lm, options=StateDictOptions(full_state_dict=True,
                                                                 cpu_offload=world > 1))
with torch.no_grad():  # spoil the weights, then the saved state must bring them back
    for p in policy.parameters():
        p.mul_(0.5)
assert merging.load_state(policy, opt, state_dir) == {"step": 1}
again = get_model_state_dict(policy.lm, options=StateDictOptions(full_state_dict=True,
                                                                  cpu_offload=world > 1))
if rank == 0:
    for k in full:
        assert torch.equal(full[k], again[k]), f"state reload changed {k}"
    torch.save(full, os.path.join(out_dir, f"params_world{world}.pt"))
    torch.save(rollout.tokens, os.path.join(out_dir, f"rollout_world{world}.pt"))
M.teardown_distributed()
