"""Checkpoints: task-vector merging (linear, task arithmetic, TIES, DARE), and the checkpoints a
training run writes (a Hugging Face export, a resumable state; both atomic, both FSDP-aware).

The meta-ability recipe aligns one ability at a time from the same starting checkpoint
theta_0 (the *base*) and then merges the specialists into one model. Every method here
works entry by entry on each tensor. Write delta_i = theta_i - theta_0 for the task
vector of model i and w_i for its weight.

linear           theta = sum_i w_i theta_i / sum_i w_i
                 (weighted mean of the full weights; the base is only used for checks and
                 for non-floating tensors, which are copied from it.)

task_arithmetic  theta = theta_0 + sum_i w_i delta_i

ties             (Yadav et al. 2023, "TIES-Merging")
                 1. trim:  d_i = delta_i with all but its top `density` fraction of entries
                           (by |delta_i|, per tensor; k = max(1, floor(density * numel)))
                           set to zero;
                 2. elect: gamma = sign(sum_i w_i d_i) per entry, a sum of exactly 0 counts as +;
                 3. disjoint weighted mean over the entries that agree with the election,
                           m_i = [sign(w_i d_i) == gamma]   (a trimmed entry, sign 0, never agrees)
                           tau = sum_i m_i w_i d_i / sum_i m_i w_i   (denominator 0 -> 1, so an
                                 entry no model agrees on stays at the base);
                 theta = theta_0 + tau.
                 With equal weights this is the paper's disjoint mean; unequal weights make it
                 a weighted mean, so only the ratios of the weights matter (as for linear).
                 This is the weighting mergekit's `ties` uses with its default normalize=true
                 and lambda=1.

dare             (Yu et al. 2024, "Language Models are Super Mario")
                 d_i = delta_i * b_i / density,  b_i ~ Bernoulli(density) per entry, drawn from
                 a torch.Generator seeded by (seed, model index, tensor name), so the result
                 does not depend on the order tensors are visited or how they are sharded;
                 E[d_i] = delta_i, and density = 1 is task arithmetic exactly;
                 theta = theta_0 + sum_i w_i d_i.

Arithmetic is float32 (float64 when the base tensor is float64); results are written in
the base tensor's dtype. Non-floating tensors (integer buffers) are copied from the base.

Memory: tensors are read one at a time through `safetensors.safe_open` (memory-mapped),
and the output is written one base shard at a time, so the peak is about one output
shard plus one tensor per model (all models' copies of one tensor for ties).

Output: the base's shard layout (one `model.safetensors`, or the same shard files plus
`model.safetensors.index.json`), and every other top-level file of the base directory
(config.json, generation_config.json, tokenizer files) copied as is, so
`AutoModelForCausalLM.from_pretrained(out)` loads it. Tied embeddings need no special
case: whatever keys the base stores (e.g. only `embed_tokens`) are what is merged, and
every model must store the same keys. The directory is built in `OUT.tmp` and renamed
into place only after everything was written.

Run:
    python merge.py --base=runs/align/base/model \
        --models runs/deduction/model runs/induction/model runs/abduction/model \
        --weights 1 1 1 --method=ties --density=0.5 --out=runs/merged/model
or from Python: merge(base, models, weights, method="ties", density=0.5, out=...).
"""

import argparse
import hashlib
import json
import os
import random
import shutil
import sys
import warnings

import torch
from safetensors import safe_open
from safetensors.torch import save_file

import model

METHODS = ("linear", "task_arithmetic", "ties", "dare")
INDEX = "model.safetensors.index.json"
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")  # not copied into the output


# ---------------------------------------------------------------- one tensor

def tensor_seed(seed, model_index, name):
    """A 63-bit seed for one (model, tensor): stable across runs, orders and shardings."""
    digest = hashlib.sha256(f"{seed}/{model_index}/{name}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def trim(delta, density):
    """Keep the top `density` fraction of entries of `delta` by magnitude, zero the rest."""
    if density >= 1:
        return delta
    k = max(1, int(density * delta.numel()))
    keep = torch.zeros(delta.numel(), dtype=torch.bool)
    keep[delta.abs().flatten().topk(k).indices] = True
    return delta * keep.view_as(delta)


def merge_tensor(name, base, thetas, weights, method, density=0.5, seed=0):
    """Merge one tensor. `thetas` yields the models' tensors in order (read lazily, so the
    methods that only accumulate hold one model's tensor at a time)."""
    if not base.is_floating_point():
        return base
    work = torch.float64 if base.dtype == torch.float64 else torch.float32
    b = base.to(work)
    if method == "linear":
        acc = torch.zeros_like(b)
        for w, theta in zip(weights, thetas):
            acc += w * theta.to(work)
        return (acc / sum(weights)).to(base.dtype)
    if method == "task_arithmetic":
        acc = b.clone()
        for w, theta in zip(weights, thetas):
            acc += w * (theta.to(work) - b)
        return acc.to(base.dtype)
    if method == "dare":
        acc = b.clone()
        for i, (w, theta) in enumerate(zip(weights, thetas)):
            g = torch.Generator().manual_seed(tensor_seed(seed, i, name))
            kept = torch.rand(b.shape, generator=g) < density
            acc += w * (theta.to(work) - b) * kept / density
        return acc.to(base.dtype)
    if method == "ties":
        w = torch.tensor(weights, dtype=work).view(-1, *([1] * b.dim()))
        wd = w * torch.stack([trim(theta.to(work) - b, density) for theta in thetas])
        elected = torch.where(wd.sum(0) >= 0, 1.0, -1.0).to(work)
        agree = wd.sign() == elected
        divisor = (w * agree).sum(0)
        divisor[divisor == 0] = 1
        return (b + (wd * agree).sum(0) / divisor).to(base.dtype)
    raise ValueError(f"unknown --method={method!r}; choose one of {', '.join(METHODS)}")


# ---------------------------------------------------------------- checkpoints on disk

def weight_files(directory):
    """Map tensor name -> safetensors file path for one Hugging Face model directory."""
    if not os.path.isdir(directory):
        raise ValueError(f"model directory not found: {directory}")
    index = os.path.join(directory, INDEX)
    if os.path.exists(index):
        with open(index) as f:
            weight_map = json.load(f)["weight_map"]
        return {name: os.path.join(directory, file) for name, file in weight_map.items()}
    files = sorted(f for f in os.listdir(directory) if f.endswith(".safetensors"))
    if not files:
        raise ValueError(f"no safetensors weights in {directory}")
    where = {}
    for file in files:
        with safe_open(os.path.join(directory, file), framework="pt") as f:
            for name in f.keys():
                where[name] = os.path.join(directory, file)
    return where


def open_model(files):
    """tensor name -> open safe_open handle (memory-mapped; nothing is read yet)."""
    handles = {}
    for path in set(files.values()):
        if not os.path.exists(path):
            raise ValueError(f"shard {path} named in {INDEX} is missing")
        handles[path] = safe_open(path, framework="pt")
    return {name: handles[path] for name, path in files.items()}


def architecture(directory):
    path = os.path.join(directory, "config.json")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        config = json.load(f)
    return config.get("model_type"), config.get("architectures")


def check_inputs(base, models, weights, method, density, out):
    if method not in METHODS:
        raise ValueError(f"unknown --method={method!r}; choose one of {', '.join(METHODS)}")
    if not models:
        raise ValueError("--models needs at least one model directory")
    if len(weights) != len(models):
        raise ValueError(f"--weights has {len(weights)} values but --models has {len(models)}")
    if method in ("ties", "dare") and not 0 < density <= 1:
        raise ValueError(f"--density={density} must be in (0, 1] for {method}")
    if method == "linear" and sum(weights) == 0:
        raise ValueError("--weights sum to 0; linear divides by their sum")
    out_path = os.path.realpath(out)
    for d in [base, *models]:
        if not os.path.isdir(d):
            raise ValueError(f"model directory not found: {d}")
        if os.path.realpath(d) == out_path:
            raise ValueError(f"--out={out} is also an input; write the merge elsewhere")


def check_tensors(base, base_handles, models, model_handles):
    """Every model stores exactly the base's tensor names with the base's shapes."""
    for directory, handles in zip(models, model_handles):
        missing = sorted(set(base_handles) - set(handles))
        if missing:
            raise ValueError(f"tensor {missing[0]} of base {base} is missing in {directory}")
        extra = sorted(set(handles) - set(base_handles))
        if extra:
            raise ValueError(f"tensor {extra[0]} of {directory} is not in base {base}")
        for name, handle in handles.items():
            shape = handle.get_slice(name).get_shape()
            base_shape = base_handles[name].get_slice(name).get_shape()
            if shape != base_shape:
                raise ValueError(f"shape mismatch for tensor {name}: {directory} has "
                                 f"{list(shape)}, base {base} has {list(base_shape)}")


def merge(base, models, weights, method, density=0.5, seed=0, *, out):
    """Merge `models` into `base` with `method`, write a Hugging Face directory to `out`.
    Returns `out`. Raises ValueError with a one-line message on bad input."""
    weights = [float(w) for w in weights]
    check_inputs(base, models, weights, method, density, out)
    base_files = weight_files(base)
    model_files = [weight_files(d) for d in models]
    base_arch = architecture(base)
    for directory in models:
        if architecture(directory) != base_arch:
            raise ValueError(f"architecture mismatch: {directory} is {architecture(directory)}, "
                             f"base {base} is {base_arch}")
    base_handles = open_model(base_files)
    model_handles = [open_model(files) for files in model_files]
    check_tensors(base, base_handles, models, model_handles)

    tmp = out.rstrip("/") + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)  # a leftover of an earlier failed run
    os.makedirs(tmp)
    try:
        shards = {}  # output file -> names in it, in the base's layout
        for name, path in base_files.items():
            shards.setdefault(os.path.basename(path), []).append(name)
        total_size = 0
        for file, names in shards.items():
            merged = {}
            for name in names:
                thetas = (handles[name].get_tensor(name) for handles in model_handles)
                t = merge_tensor(name, base_handles[name].get_tensor(name), thetas,
                                 weights, method, density, seed)
                merged[name] = t.contiguous()
                total_size += t.numel() * t.element_size()
            save_file(merged, os.path.join(tmp, file), metadata={"format": "pt"})
        if os.path.exists(os.path.join(base, INDEX)):
            index = {"metadata": {"total_size": total_size},
                     "weight_map": {name: os.path.basename(p) for name, p in base_files.items()}}
            with open(os.path.join(tmp, INDEX), "w") as f:
                json.dump(index, f, indent=2)
        for file in os.listdir(base):
            src = os.path.join(base, file)
            if os.path.isfile(src) and file != INDEX and not file.endswith(WEIGHT_SUFFIXES):
                shutil.copy2(src, os.path.join(tmp, file))
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    model.replace_dir(tmp, out.rstrip("/"))  # the old `out` goes only once the new is whole
    return out


# ---------------------------------------------------------------- checkpoints of a training run

def save_hf(policy, tokenizer, path):
    """Export a Hugging Face directory (safetensors) that any HF tool loads, in the checkpoint's
    own dtype (bf16 for Llama-3: 16 GB, not 32). Under FSDP the tensors are gathered one at a
    time (a collective on every rank, in the same order) and only rank 0 keeps and writes them."""
    from torch.distributed.tensor import DTensor
    full, seen = {}, {}
    for name, tensor in policy.lm.state_dict(keep_vars=True).items():
        if id(tensor) not in seen:  # tied weights: one gather, one shared tensor in the export
            with torch.no_grad():
                whole = tensor.full_tensor() if isinstance(tensor, DTensor) else tensor
            dtype = policy.save_dtype if whole.is_floating_point() else whole.dtype
            seen[id(tensor)] = whole.detach().to("cpu", dtype) if model.is_main() else None
        full[name] = seen[id(tensor)]
    if model.is_main():
        model.save_pretrained_atomic(policy.lm, tokenizer, path, state_dict=full,
                                     dtype=policy.save_dtype)
    model.barrier()


def rng_state():
    return {"python": random.getstate(), "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def set_rng_state(state):
    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])
    if state["cuda"] is not None:
        torch.cuda.set_rng_state_all(state["cuda"])


# What torch.distributed.checkpoint says on every save and load without a process group; one
# process is what the tiny run means, so the tutorial's log need not repeat it.
ONE_PROCESS = "torch.distributed is (disabled, )?unavailable or uninitialized"


def save_state(policy, optimizer, path, meta):
    """Resumable training state: sharded model + optimizer (torch.distributed.checkpoint), each
    rank's RNG states, and `meta` (JSON: step, stage, anything the trainer needs; the world size
    is added). Written to `path.tmp` and renamed into place once every rank has finished."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict
    tmp = path.rstrip("/") + ".tmp"
    if model.is_main():
        shutil.rmtree(tmp, ignore_errors=True)
    model.barrier()
    model_sd, optim_sd = get_state_dict(policy, optimizer)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", ONE_PROCESS)
        dcp.save({"model": model_sd, "optim": optim_sd}, checkpoint_id=tmp)
    torch.save(rng_state(), os.path.join(tmp, f"rng_{model.rank()}.pt"))
    model.barrier()
    if model.is_main():
        with open(os.path.join(tmp, "meta.json"), "w") as f:
            json.dump({**meta, "world": model.world()}, f)
        model.replace_dir(tmp, path.rstrip("/"))
    model.barrier()


def load_state(policy, optimizer, path):
    """Restore what `save_state` wrote, in place; returns its `meta` (without the world size).
    Model and optimizer reshard to any world size (torch.distributed.checkpoint does it); the
    RNG states are restored only at the world size they were saved at, since a rank's stream
    belongs to that rank."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict
    # With no gradients present, get_state_dict creates the optimizer's state tensors (a fresh
    # optimizer has none), which dcp.load then fills in place.
    optimizer.zero_grad(set_to_none=True)
    model_sd, optim_sd = get_state_dict(policy, optimizer)
    state = {"model": model_sd, "optim": optim_sd}
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", ONE_PROCESS)
        dcp.load(state, checkpoint_id=path)
    set_state_dict(policy, optimizer, model_state_dict=state["model"],
                   optim_state_dict=state["optim"])
    with open(os.path.join(path, "meta.json")) as f:
        meta = json.load(f)
    if meta.pop("world", 1) == model.world():
        set_rng_state(torch.load(os.path.join(path, f"rng_{model.rank()}.pt"),
                                 weights_only=False))
    return meta


# ---------------------------------------------------------------- command line

def main(argv=None):
    p = argparse.ArgumentParser(description="Merge fine-tuned checkpoints of one base model.")
    p.add_argument("--base", required=True, help="the common starting checkpoint theta_0")
    p.add_argument("--models", nargs="+", required=True, help="fine-tuned model directories")
    p.add_argument("--weights", nargs="+", type=float, required=True, help="one per model")
    p.add_argument("--method", required=True, help=" | ".join(METHODS))
    p.add_argument("--density", type=float, default=0.5, help="kept fraction (ties, dare)")
    p.add_argument("--seed", type=int, default=0, help="dare's drop masks")
    p.add_argument("--out", required=True, help="output directory (replaced atomically)")
    args = p.parse_args(argv)
    try:
        merge(args.base, args.models, args.weights, args.method, args.density, args.seed,
              out=args.out)
    except ValueError as e:
        print(f"merge.py: error: {e}", file=sys.stderr)
        sys.exit(2)
    print(f"merged {len(args.models)} models into {args.out} ({args.method})")


if __name__ == "__main__":
    main()
