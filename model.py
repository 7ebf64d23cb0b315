"""model.py: the policy, one causal language model that plays every role.

What lives here, in order:
  1. the tiny default: a BPE tokenizer trained on the texts it will read and a small Qwen3
     (Llama's decoder with QK-norm), in Hugging Face format, loaded like a local 8B checkpoint
     (nothing is ever downloaded);
  2. loading, whole (`load`) or into FSDP2 shards (`load_sharded`), and `Policy`;
  3. teacher forcing: prompt + completion batches packed for the trainer's forward;
  4. FSDP2 sharding, `gathered_for_rollout` (parameters unsharded once per rollout phase for
     sampling.py's decode loop), and the collective helpers;
  5. atomic directory writes (the export and the resumable state are in merge.py).

`python train.py` builds the tiny default into runs/tiny/init (`--tiny_layers=4 --tiny_hidden=256
...` for another size). Tests: `python -m pytest -q tests/test_model.py`.
"""
import contextlib
import copy
import datetime
import json
import os
import shutil
from dataclasses import dataclass

import torch
import torch.distributed as dist

TINY_CHARS = [chr(c) for c in range(32, 127)] + ["\n"]  # printable ASCII and newline
TINY_SPECIALS = ["<pad>", "<s>", "</s>", "<unk>"]
# Pieces a token never crosses: a word with its leading space, a letter, a number, an arrow, a sign.
TINY_PIECES = r" ?[A-Za-z]{2,}|[A-Za-z]|\d+|<->|->|<-|[^\sA-Za-z\d]|\n|\s"
# Identity plus bos: roles.py renders through the chat template, and the tiny model's plain-text
# role markers must come through untouched.
TINY_CHAT_TEMPLATE = "{{ bos_token }}{% for m in messages %}{{ m['content'] }}{% endfor %}"


# ----------------------------------------------------------------------------- the tiny default

def build_tiny_tokenizer(texts=(), vocab_size=1024, pieces=TINY_PIECES):
    """BPE over printable ASCII (+ pad/bos/eos/unk), merges learned from `texts`. Merges never
    cross a piece (a match of the regex `pieces`), and the vocabulary is large enough for every
    piece of the texts to become one token: a word, and a whole number (as Llama-3's tokenizer
    holds numbers up to 999), so comparing two answers is comparing two tokens."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast
    core = Tokenizer(models.BPE(unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Split(Regex(pieces), behavior="isolated")
    core.decoder = decoders.Fuse()
    core.train_from_iterator(list(texts), trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=TINY_SPECIALS, initial_alphabet=TINY_CHARS,
        show_progress=False))
    tok = PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<s>", eos_token="</s>",
                                  pad_token="<pad>", unk_token="<unk>")
    tok.chat_template = TINY_CHAT_TEMPLATE
    return tok


def build_tiny(path, texts=(), hidden_size=128, num_layers=2, num_heads=4, num_kv_heads=4,
               intermediate_size=384, max_positions=1024, seed=0, pieces=TINY_PIECES):
    """Build a tiny Qwen3 with a tokenizer trained on `texts`, saved to `path` in HF format.
    Qwen3 is Llama's decoder with QK-norm: each head's query and key are RMS-normed before the
    dot product, so attention logits cannot grow with the weights. Without it the tiny model
    learned the judge's comparison only at a high rate (none in 1,800 judge-only steps at 1e-3),
    and that rate left a model that no longer learned to solve; with it the comparison was
    learned in 1,400 steps at 1e-3 (docs/findings.md, "How the tiny world became
    learnable")."""
    from transformers import Qwen3Config, Qwen3ForCausalLM
    tok = build_tiny_tokenizer(texts, pieces=pieces)
    config = Qwen3Config(
        vocab_size=len(tok), hidden_size=hidden_size, intermediate_size=intermediate_size,
        num_hidden_layers=num_layers, num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads, head_dim=hidden_size // num_heads,
        max_position_embeddings=max_positions, tie_word_embeddings=True, rope_theta=10000.0,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id)
    torch.manual_seed(seed)
    save_pretrained_atomic(Qwen3ForCausalLM(config), tok, path)
    return path


# ----------------------------------------------------------------------------- loading

# Architectures whose logits are z = s * W h (W the lm_head weight, s 1 or LOGIT_SCALE's). The
# fused loss and the sampler compute z themselves, so logit soft-capping (Gemma-2) or an lm_head
# bias (Phi) would train on other logits than are sampled: such models are refused at load.
SUPPORTED = ("llama", "mistral", "qwen2", "qwen3", "gemma", "phi3", "olmo2", "granite", "cohere")
LOGIT_SCALE = {"granite": lambda c: 1.0 / c.logits_scaling, "cohere": lambda c: c.logit_scale}


def read_config(path):
    """A local model's config; refused, with the reason, if the fused loss can't reproduce it."""
    from transformers import AutoConfig
    from transformers.utils import logging as hf_logging
    hf_logging.disable_progress_bar()  # one bar per weight file is noise in a training log
    if not os.path.isfile(os.path.join(path, "config.json")):
        raise FileNotFoundError(f"--model={path}: not a model directory (no config.json there)")
    config = AutoConfig.from_pretrained(path, local_files_only=True)
    kind = getattr(config, "model_type", None)
    if kind not in SUPPORTED or getattr(config, "final_logit_softcapping", None):
        raise ValueError(f"--model={path}: model_type {kind!r} is not supported (supported: "
                         f"{', '.join(SUPPORTED)}, without logit soft-capping): its logits are "
                         "not the linear function of the last hidden state that the fused loss "
                         "computes")
    return config


def load(path, dtype=torch.float32, device="cpu"):
    """(Policy, tokenizer) of a supported local HF causal LM, whole, on one device."""
    from transformers import AutoModelForCausalLM
    config = read_config(path)
    lm = AutoModelForCausalLM.from_pretrained(path, local_files_only=True, dtype=dtype)
    return Policy(lm.to(device), config), load_tokenizer(path)


def load_sharded(path, device, activation_checkpointing=False):
    """Load for FSDP2 without a full copy on every rank: each builds the model on the meta device,
    shards it and allocates its fp32 shards; rank 0 alone reads the checkpoint (in its own dtype:
    16 GB of host memory at 8B, not 32 GB on each of 8 ranks) and broadcasts it, along with the
    buffers outside the state dict (rotary frequencies) that the meta device left unset."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict
    from transformers import AutoModelForCausalLM, GenerationConfig
    config = read_config(path)
    with torch.device("meta"):  # from_config sets the config's dtype to fp32: give it a copy
        lm = AutoModelForCausalLM.from_config(copy.deepcopy(config), dtype=torch.float32)
    policy = shard(Policy(lm, config), activation_checkpointing)
    policy.to_empty(device=device)
    full, buffers = {}, {}
    if is_main():
        whole = AutoModelForCausalLM.from_pretrained(path, local_files_only=True, dtype="auto")
        full, buffers = whole.state_dict(), dict(whole.named_buffers())
    set_model_state_dict(lm, full, options=StateDictOptions(full_state_dict=True,
                                                            broadcast_from_rank0=True))
    if os.path.isfile(os.path.join(path, "generation_config.json")):  # from_config skips its eos
        lm.generation_config = GenerationConfig.from_pretrained(path, local_files_only=True)
    with torch.no_grad():
        for name, buffer in lm.named_buffers():
            if is_main():
                buffer.copy_(buffers[name])
            broadcast_(buffer)
    return policy, load_tokenizer(path)


def load_tokenizer(path):
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
    if tok.pad_token_id is None:  # Llama-3 ships without one; any id works under the mask
        tok.pad_token = tok.eos_token
    return tok


def stop_ids(lm, tokenizer):
    """Every token that ends a completion: the tokenizer's eos and the generation config's (chat
    models end a turn with their own, e.g. Llama-3's <|eot_id|>, Qwen's <|im_end|>)."""
    listed = getattr(getattr(lm, "generation_config", None), "eos_token_id", None)
    listed = listed if isinstance(listed, (list, tuple)) else [listed]
    return sorted({i for i in [tokenizer.eos_token_id, *listed] if i is not None})


def encode(tokenizer, texts):
    """Token ids of rendered prompts, a bos (or eos) in front unless a chat template writes its
    own: the first completion token always has a position predicting it."""
    start = [] if getattr(tokenizer, "chat_template", None) else \
        [tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id]
    return [start + tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]


class Policy(torch.nn.Module):
    """A causal LM whose forward applies `head(hidden * logit scale, lm_head weight)` to its last
    hidden states. The head runs inside forward because under FSDP2 the root's parameters (lm_head
    among them) are gathered only during the root's forward: so a fused loss reads the full
    lm_head weight, and its gradient is reduce-scattered like any other."""

    def __init__(self, lm, config):
        super().__init__()
        self.lm = lm
        self.logit_scale = LOGIT_SCALE.get(config.model_type, lambda c: 1.0)(config)
        self.save_dtype = config.dtype or torch.float32  # the checkpoint's own: exports keep it

    def forward(self, head, **lm_inputs):
        out = self.lm.base_model(**lm_inputs)
        hidden = out.last_hidden_state
        if self.logit_scale != 1.0:
            hidden = hidden * self.logit_scale
        return head(hidden, self.lm.get_output_embeddings().weight), out


def device_of(policy):
    """The device the policy computes on (its lm_head's; a sharded DTensor reports its own)."""
    return policy.lm.get_output_embeddings().weight.device


# ----------------------------------------------------------------------------- teacher forcing

@dataclass
class Packed:
    """Prompt + completion sequences, right-padded, and where the completion tokens are scored."""
    input_ids: torch.Tensor       # [B, L]
    rows: torch.Tensor            # [n] row of each scored completion token
    cols: torch.Tensor            # [n] position whose hidden state predicts it
    targets: torch.Tensor         # [n] the completion token ids
    seq_of_token: torch.Tensor    # [n] index of the sequence each token belongs to


def pack(prompts, completions, pad_id, device):
    """Right-padded prompt+completion ids, the completion tokens flattened. No attention mask:
    with right padding no real token sees a pad and pads are never scored, so the forward keeps
    its fused causal kernel (flash attention on CUDA)."""
    if any(not p for p in prompts):
        raise ValueError("pack: an empty prompt leaves no position to predict the first "
                         "completion token (encode() puts a bos in front of every prompt)")
    seqs = [p + c for p, c in zip(prompts, completions)]
    ids = torch.full((len(seqs), max(len(s) for s in seqs)), pad_id, dtype=torch.long)
    rows, cols = [], []
    for i, (p, s) in enumerate(zip(prompts, seqs)):
        ids[i, :len(s)] = torch.tensor(s, dtype=torch.long)
        rows += [i] * (len(s) - len(p))
        cols += range(len(p) - 1, len(s) - 1)  # hidden state at j predicts token j + 1
    rows, cols = torch.tensor(rows, dtype=torch.long), torch.tensor(cols, dtype=torch.long)
    return Packed(*(t.to(device) for t in (ids, rows, cols, ids[rows, cols + 1], rows)))


def run_head(policy, packed, head):
    """Forward `packed` and apply head(hidden [n, H] of the scored tokens, lm_head weight)."""
    def on_scored(hidden, weight):
        return head(hidden[packed.rows, packed.cols], weight)
    return policy(on_scored, input_ids=packed.input_ids, use_cache=False)[0]


# ----------------------------------------------------------------------------- distributed

def setup_distributed():
    """(rank, world_size, device), starting the process group under torchrun (nccl or gloo).
    On CUDA fp32 matmuls may use TF32 (a 10-bit mantissa): the fused loss's fp32 logits of bf16
    inputs lose nothing by it (a bf16 number is exact in TF32); its backward's fp32 products and
    a model kept in fp32 are rounded to it, as in most trainers."""
    cuda = torch.cuda.is_available()
    if cuda:
        torch.set_float32_matmul_precision("high")
    if dist.is_initialized():
        device = torch.device("cuda", torch.cuda.current_device()) if cuda else torch.device("cpu")
        return dist.get_rank(), dist.get_world_size(), device
    if "RANK" not in os.environ:
        return 0, 1, torch.device("cuda" if cuda else "cpu")
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    if cuda:
        local = int(os.environ.get("LOCAL_RANK", 0))
        torch.cuda.set_device(local)
        # rank 0 alone reads and writes whole checkpoints while the others wait: > 10 minutes
        dist.init_process_group("nccl", device_id=torch.device("cuda", local),
                                timeout=datetime.timedelta(minutes=60))
        return rank, world, torch.device("cuda", local)
    dist.init_process_group("gloo")
    return rank, world, torch.device("cpu")


def teardown_distributed():
    """Leave the process group together (a rank that tears down gloo while a peer still works
    kills it with SIGABRT). Success path only: a failed rank would leave its peers waiting."""
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def rank():
    return dist.get_rank() if dist.is_initialized() else 0


def is_main():
    return rank() == 0


def world():
    return dist.get_world_size() if dist.is_initialized() else 1


def share(n):
    """This rank's part of a count `n` split over the ranks: n // world, plus one on the first
    n % world ranks, so the parts add up to n."""
    return n // world() + int(rank() < n % world())


def barrier():
    if dist.is_initialized():
        dist.barrier()


# Every collective of ours goes through these helpers, which put the tensors where the backend
# reduces them: NCCL only CUDA tensors, gloo only CPU ones.

def collective_device(backend):
    """The device a backend ("gloo", "nccl", or a map like "cpu:gloo,cuda:nccl") reduces on."""
    backends = dict(part.split(":") for part in backend.split(",")) if ":" in backend else {}
    if "cpu" in backends or backend == "gloo":
        return torch.device("cpu")
    if "nccl" in backend:
        return torch.device("cuda")  # the current device, set by setup_distributed
    raise ValueError(f"no collective device known for backend {backend!r}")


def all_reduce(values, op="sum"):
    """Sum (op "sum") or max (op "max") a list of floats over ranks; the list back."""
    if not dist.is_initialized():
        return [float(v) for v in values]
    t = torch.tensor(values, dtype=torch.float64, device=collective_device(dist.get_backend()))
    dist.all_reduce(t, op={"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX}[op])
    return t.tolist()


def all_gather_objects(obj):
    """[obj of rank 0, obj of rank 1, ...] (picklable objects; [obj] in one process)."""
    if not dist.is_initialized():
        return [obj]
    everyone = [None] * dist.get_world_size()
    dist.all_gather_object(everyone, obj)  # torch places it on the current CUDA device for nccl
    return everyone


def broadcast_(tensor):
    """Overwrite `tensor` in place with rank 0's (staged through the backend's device)."""
    if not dist.is_initialized():
        return tensor
    staged = tensor.to(collective_device(dist.get_backend()))
    dist.broadcast(staged, src=0)
    return tensor.copy_(staged)


def decoder_layers(lm):
    return lm.base_model.layers  # every architecture in SUPPORTED keeps them here


def enable_checkpointing(policy):
    """Each decoder layer recomputes its activations in backward (only in `policy.train()`)."""
    policy.lm.activation_checkpointing_enable({"use_reentrant": False})
    return policy


def shard(policy, activation_checkpointing=False):
    """FSDP2: a group per decoder layer, then the root (embeddings, final norm, lm_head: tied
    weights share it). bf16 compute, fp32 reduction on CUDA; fp32 on CPU (no bf16 speed there)."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
    mp = (MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
          if torch.cuda.is_available() else MixedPrecisionPolicy())
    if activation_checkpointing:
        enable_checkpointing(policy)
    for layer in decoder_layers(policy.lm):
        fully_shard(layer, mp_policy=mp)
    fully_shard(policy, mp_policy=mp)
    return policy


@contextlib.contextmanager
def gathered_for_rollout(policy):
    """Keep every FSDP2 group unsharded for a rollout phase: one all-gather, not one per layer per
    token, so decoding runs at single-GPU speed for one full copy of the (bf16) parameters."""
    from torch.distributed.fsdp import FSDPModule
    if not isinstance(policy, FSDPModule):
        yield
        return
    groups = [m for m in policy.modules() if isinstance(m, FSDPModule)]
    policy.set_reshard_after_forward(False)
    for m in groups:
        m.unshard()
    try:
        yield
    finally:
        for m in groups:
            m.reshard()
        policy.set_reshard_after_forward(True)
        policy.set_reshard_after_forward(False, recurse=False)  # FSDP2's default for the root


# ----------------------------------------------------------------------------- checkpoints

def replace_dir(tmp, final):
    """Swap a finished directory into place: readers see the old or the new, never half (a crash
    between the renames leaves `final.old`, whole, for `recover_dir`)."""
    old = final + ".old"
    if os.path.exists(final):
        shutil.rmtree(old, ignore_errors=True)
        os.rename(final, old)
    os.rename(tmp, final)
    shutil.rmtree(old, ignore_errors=True)


def recover_dir(final):
    """Put `final` back after a crash between `replace_dir`'s renames; whether `final` exists."""
    if not os.path.exists(final) and os.path.isdir(final + ".old"):
        os.rename(final + ".old", final)
    return os.path.exists(final)


def save_pretrained_atomic(lm, tokenizer, path, state_dict=None, dtype=None):
    """save_pretrained into `path.tmp`, then swap it in; `dtype` is written to config.json when
    the state dict was cast to it (save_pretrained would record the module's own)."""
    from transformers.utils import logging as hf_logging
    hf_logging.disable_progress_bar()
    tmp = path.rstrip("/") + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    lm.save_pretrained(tmp, state_dict=state_dict)
    tokenizer.save_pretrained(tmp)
    if dtype is not None:
        config_path = os.path.join(tmp, "config.json")
        with open(config_path) as f:
            config = json.load(f)
        with open(config_path, "w") as f:
            json.dump({**config, "dtype": str(dtype).removeprefix("torch.")}, f, indent=2)
    replace_dir(tmp, path.rstrip("/"))
