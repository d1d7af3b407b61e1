"""Per-GPU model states under ZeRO, FSDP, tensor, pipeline and expert parallelism, and offload.

Conventions (all per GPU): ``P`` is the parameters one GPU owns after tensor parallelism (split
t ways, Megatron-LM) and pipeline parallelism (the fullest stage: the first holds the embedding,
the last the head), with MoE experts split over expert-parallel ranks. ``N`` is the group the
sharded states are spread over (the data-parallel size; for FSDP hybrid-shard, the GPUs of one
node). Mixed precision keeps 2 B weights, 4 B fp32 master weights, 2 B gradients and 8 B AdamW
states per parameter: the ZeRO paper's 16 B/param (Rajbhandari et al. 2020, section 3.1).

Where this follows DeepSpeed's own estimators rather than the paper (deepspeed.runtime.zero
``estimate_zero2_model_states_mem_needs`` / ``estimate_zero3_model_states_mem_needs``):
- ZeRO-1/2 and 3 cast each reduced 16-bit gradient partition to fp32 for the optimizer step
  (4 B/param / N), which the paper's 2 + 2 + 12 leaves out. So ZeRO-1 is 4 B/param + 16 B/param / N,
  matching DeepSpeed's stage-1/2 estimate, and ZeRO-3 is 18 B/param / N plus the gathered largest
  layer (params and grads, 4 B x its params), matching DeepSpeed's stage-3 estimate.
- ZeRO-2 keeps only its gradient partition plus one reduce bucket (reduce_bucket_size, 5e8
  elements by default) of 16-bit gradients, so it is below DeepSpeed's stage-1/2 estimate, which
  keeps all 16-bit gradients (4 B/param) as an upper bound.
FSDP full-shard keeps the fp32 sharded flat parameter as the master copy (no 16-bit shard) and
gathers one wrapped unit (a decoder layer) at a time with the next one prefetched (PyTorch FSDP
docs, forward/backward prefetch), so 16 B/param / N plus two gathered units.

PYTEST_DONT_REWRITE: no asserts here; pytest need not rewrite this plugin module.
"""

import math
from typing import Dict, NamedTuple, Optional

from .model import Architecture
from .run import Run

FP32 = 4
REDUCE_BUCKET_ELEMENTS = 500_000_000  # DeepSpeed zero_optimization.reduce_bucket_size default
# DeepSpeed's estimators size pinned host memory for offload at 1.5x the offloaded states
# (``additional_buffer_factor=1.5`` in estimate_zero*_model_states_mem_needs).
HOST_BUFFER_FACTOR = 1.5


class LocalParams(NamedTuple):
    """Parameters one GPU owns, and the largest block it must gather at once under full sharding."""

    params: int
    largest_layer: int  # largest single module (DeepSpeed's largest_layer_params), after tensor parallelism
    largest_unit: int  # largest FSDP-wrapped unit: a decoder layer, or the embedding
    layers: int  # decoder layers on the fullest pipeline stage
    frozen: int = 0  # of ``params``, those that take no gradient and no optimizer state (a frozen vision tower)


def frozen_params(run: Run, arch: Optional[Architecture]) -> int:
    """Parameters a full fine-tune leaves without .grad and optimizer state: the vision tower and projector
    of a multimodal model under vision-tower = "frozen" (run.VISION_TOWERS)."""
    if arch is None or run.mode != "train" or run.vision_tower != "frozen":
        return 0
    return arch.extra_params


def local_params(run: Run, arch: Optional[Architecture], total: int) -> LocalParams:
    """Tensor parallelism splits every matrix t ways; pipeline parallelism gives each stage ceil(L/p)
    layers, the first stage the embedding and the last the head (a tied head is a second copy there,
    as Megatron-LM does); expert parallelism splits the experts."""
    t, p, e = run.tensor_parallel, run.pipeline_parallel, run.expert_parallel
    if arch is None:
        return LocalParams(math.ceil(total / (t * p)), 0, 0, 0)
    h, norm = arch.hidden_size, arch.norm_params()
    per_group = []  # (layers, params of one layer with its experts split e ways)
    for g in arch.layer_groups():
        experts = sum(lin.params for lin in g.linears(arch.family, h) if lin.count > 1)
        per_group.append((g.count, g.params(arch.family, h, norm) - experts + experts // e))
    decoder = sum(n * params for n, params in per_group)
    layer = max(params for _, params in per_group)  # the largest layer: one FSDP unit
    layers = math.ceil(arch.num_layers / p)
    # The fullest stage's share of the decoder: its layers' fraction of all of them (exact when uniform).
    stack = decoder if p == 1 else math.ceil(decoder * layers / arch.num_layers)
    embed, head = arch.embedding_params() + arch.extra_params, arch.head_params()
    if p == 1:
        stage = embed + stack + head
    else:
        tied_copy = arch.vocab_size * arch.hidden_size if arch.tie_embeddings and not arch.family.classifier else 0
        stage = max(embed + stack, stack + head + tied_copy)
    biggest_linear = max([lin.d_in * lin.d_out for lin in arch.linears()] + [0])
    largest = max(arch.vocab_size * arch.hidden_size, biggest_linear)
    # The vision tower sits with the embedding, on the first stage: frozen here when that is the fullest.
    frozen = frozen_params(run, arch) if p == 1 or stage == embed + stack else 0
    return LocalParams(math.ceil(stage / t), math.ceil(largest / t), math.ceil(max(layer, embed) / t), layers, math.ceil(frozen / t))


def model_states(run: Run, local: LocalParams, weight_bytes: float, grad_bytes: float, opt_bytes_per_param: float,
                 mixed: bool) -> Dict[str, float]:
    """Per-GPU bytes of weights, master weights, gradients and optimizer states, plus what goes to the host.

    ``weight_bytes``/``grad_bytes`` are per parameter (16-bit under mixed precision);
    ``opt_bytes_per_param`` is the optimizer's state bytes per parameter.
    """
    P, N = local.params, run.shard_group
    # A frozen tower holds weights (and, on the safe side, its share of master weights, buckets and fp32 partitions:
    # FSDP's flat parameters and DeepSpeed's partitions may still include it) but no gradients and no optimizer state.
    T = P - local.frozen
    master = FP32 if mixed else 0
    out = {"weights": weight_bytes * P, "master_weights": master * P, "gradients": grad_bytes * T,
           "optimizer_states": opt_bytes_per_param * T, "weights.gathered": 0.0, "gradients.buckets": 0.0,
           "gradients.fp32_partition": 0.0, "host": 0.0}
    zero, fsdp = run.zero_stage, run.fsdp
    if zero == 0 and fsdp == "none":
        if run.data_parallel > 1:
            # DDP's gradient buckets duplicate the gradients unless gradient_as_bucket_view=True (PyTorch DDP docs).
            out["gradients.buckets"] = grad_bytes * P
        return out
    fp32_grads = FP32 if mixed else grad_bytes
    out["master_weights"] = master * P / N
    out["optimizer_states"] = opt_bytes_per_param * T / N
    if fsdp != "none":
        # FSDP: sharded fp32 flat params (the master under mixed precision), sharded fp32 grads,
        # two 16-bit units gathered (current + prefetched) with the current unit's gradient.
        out["gradients"] = fp32_grads * T / N
        out["gradients.buckets"] = grad_bytes * local.largest_unit
        if fsdp == "shard-grad-op":
            out["weights"] = weight_bytes * P  # kept unsharded between forward and backward (ZeRO-2-like)
        else:
            out["weights"] = 0.0 if mixed else weight_bytes * P / N
            out["weights.gathered"] = 2 * weight_bytes * local.largest_unit
    elif zero == 1:
        out["gradients.fp32_partition"] = fp32_grads * P / N if mixed else 0.0
    elif zero == 2:
        out["gradients"] = grad_bytes * T / N
        out["gradients.buckets"] = grad_bytes * min(P, REDUCE_BUCKET_ELEMENTS)
        out["gradients.fp32_partition"] = fp32_grads * P / N if mixed else 0.0
    else:  # ZeRO-3: the 16-bit gradient partition becomes the fp32 one (DeepSpeed's 18 B/param)
        out["weights"] = weight_bytes * P / N
        out["gradients"] = fp32_grads * T / N
        out["weights.gathered"] = weight_bytes * local.largest_layer
        out["gradients.buckets"] = grad_bytes * local.largest_layer
    if run.offload != "none":
        moved = out["master_weights"] + out["optimizer_states"] + out["gradients.fp32_partition"]
        if zero == 3 or fsdp != "none":
            moved += out["gradients"]  # ZeRO-3 / FSDP offload keep the fp32 gradient shard on the host
            out["gradients"] = 0.0
        out["master_weights"] = out["optimizer_states"] = out["gradients.fp32_partition"] = 0.0
        if run.offload == "optimizer+params":
            moved += out["weights"]
            out["weights"] = 0.0
        out["host"] = moved
    return out


def host_bytes_per_node(run: Run, per_gpu: float) -> int:
    """Host memory one node needs for the offloaded states of its GPUs, with pinned buffers."""
    gpus_on_node = min(run.gpus, run.gpus_per_node)
    return round(per_gpu * gpus_on_node * HOST_BUFFER_FACTOR)
