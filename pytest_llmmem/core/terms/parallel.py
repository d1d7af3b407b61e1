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

from __future__ import annotations

import math
from typing import Dict, Optional

from ...model.architecture import Architecture
from ...record import Record
from ..run import Run

FP32 = 4
REDUCE_BUCKET_ELEMENTS = 500_000_000  # DeepSpeed zero_optimization.reduce_bucket_size default
# DeepSpeed's estimators size pinned host memory for offload at 1.5x the offloaded states
# (``additional_buffer_factor=1.5`` in estimate_zero*_model_states_mem_needs).
HOST_BUFFER_FACTOR = 1.5


class LocalParams(Record):
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


class AdapterBase(Record):
    """Where a LoRA / QLoRA run's frozen base weights sit on one GPU, and what goes to the host."""

    gpu: float  # all of it on the GPU: the resident shard, the quantisation constants and the gathered units
    shard: float  # the base's own (sharded) storage kept on the GPU; 0 when the parameters are offloaded
    constants: float  # 4-bit block constants (absmax), on every GPU whole
    gathered: float  # the FSDP root unit plus two decoder-layer units, all-gathered at the peak (0 without FSDP)
    host: float  # what CPU offload keeps in host memory instead


def adapter_base(run: Run, arch: Optional[Architecture], weights: float, share: float, packed: float, compute: int) -> AdapterBase:
    """The frozen base of a LoRA / QLoRA run under FSDP, ZeRO-3 and their CPU offload.

    ``weights`` is the whole base in its storage format (constants included), ``packed`` the bytes of one
    quantised weight without its constants (0.5 for 4 bit), ``compute`` the 16-bit bytes of the rest.
    """
    sharded = run.fsdp in ("full-shard", "hybrid-shard") or run.zero_stage == 3
    offloaded = sharded and run.offload == "optimizer+params"
    N = run.shard_group
    if arch is None or not sharded:
        return AdapterBase(weights * share, weights * share, 0.0, 0.0, 0.0)
    linear = arch.linear_params()
    # bitsandbytes keeps the quant_state (absmax, the nested constants) as an attribute of Linear4bit, not a
    # parameter: FSDP flattens, shards and offloads only parameters (fsdp_qlora PR #4: quantised on every rank,
    # "this leaves the quant_state dictionary attached to all rank's Linear4bit layers").
    constants = max(0.0, weights - linear * packed - (arch.param_count() - linear) * compute) * share
    stored = weights * share - constants
    if run.zero_stage == 3:
        # ZeRO-3 gathers the largest module at a time (DeepSpeed estimate_zero3_model_states_mem_needs).
        gathered = max(max(lin.d_in * lin.d_out for lin in arch.linears()) * packed, arch.vocab_size * arch.hidden_size * compute) * share
    else:
        # FSDP (torch/distributed/fsdp/_runtime_utils.py): _post_forward_reshard does not free the root
        # unit (embedding, final norm, head) after forward, so it stays gathered through backward;
        # _unshard's rate limiter (_limiter_utils._FreeEventQueue, 2 in flight) with BACKWARD_PRE prefetch
        # holds the unit being computed and the next one. With CPUOffload(offload_params=True) the shard
        # lives pinned on the CPU (_flat_param.py FlatParamHandle._init_shard_metadata: _local_shard
        # .pin_memory()) and is copied to the GPU only to be all-gathered (pre_unshard).
        h, norm = arch.hidden_size, arch.norm_params()
        unit = max(sum(lin.params for lin in g.linears(arch.family, h)) * packed
                   + (g.params(arch.family, h, norm) - sum(lin.params for lin in g.linears(arch.family, h))) * compute
                   for g in arch.layer_groups())
        root = (arch.embedding_params() + arch.head_params()) * compute
        gathered = (root + 2 * unit) * share
    shard = 0.0 if offloaded else stored / N
    return AdapterBase(shard + constants + gathered, shard, constants, gathered, stored / N if offloaded else 0.0)


class ShardedAdapters(Record):
    """A LoRA run's trained adapters on one GPU under FSDP or ZeRO-3 (the input figures unchanged without)."""

    weights: float  # the adapters' own storage kept on this GPU (their shard)
    gathered: float  # adapters all-gathered for compute beside it
    gradients: float  # the gradient shard (what offload moves)
    gradient_unit: float  # one unit's unsharded gradient before its reduce-scatter, on the GPU
    optimizer_states: float
    paged: float  # bitsandbytes paged states (host side), sharded alike


def sharded_adapters(run: Run, arch: Optional[Architecture], weights: float, gradients: float, optimizer_states: float,
                     paged: float) -> ShardedAdapters:
    """The adapters are parameters of the wrapped units like every other, so they are sharded like the full model's.

    FSDP1 shards every FlatParameter of a sharded strategy (torch/distributed/fsdp/_flat_param.py FlatParamHandle.shard);
    PEFT's and fsdp_qlora's wrap policy makes each trainable leaf (lora_A, lora_B) a unit of its own (peft/utils/other.py
    fsdp_auto_wrap_policy lambda_policy_fn; fsdp_qlora train.py:442-477 get_wrapping_policy, FSDP(...) at :724); FSDP2's
    fully_shard chunks every parameter of the module on dim 0 (torch/distributed/fsdp/_fully_shard/_fsdp_param.py
    FSDPParam._init_sharded_param); ZeRO-3 partitions every parameter. Gradients are reduce-scattered to the shard and
    the optimizer, built on the sharded parameters, keeps states for the shard only. As for the full model
    (model_states): under full/hybrid shard two units are gathered (the current and the prefetched; at most one decoder
    layer's adapters each, ZeRO-3 one) with one unit's unsharded gradient; shard-grad-op keeps the parameters unsharded
    from forward to the end of backward.
    """
    if arch is None or (run.fsdp == "none" and run.zero_stage != 3):
        return ShardedAdapters(weights, 0.0, gradients, 0.0, optimizer_states, paged)
    N, layers = run.shard_group, max(1, arch.num_layers)
    if run.fsdp == "shard-grad-op":
        kept, gathered = weights, 0.0
    else:
        kept, gathered = weights / N, (1 if run.zero_stage == 3 else 2) * weights / layers
    return ShardedAdapters(kept, gathered, gradients / N, gradients / layers, optimizer_states / N, paged / N)


class OffloadedAdapters(Record):
    """A LoRA run's trained adapters under offload: what leaves the GPU, and what stays of their states."""

    weights: float  # adapter weight bytes moved to the host
    host: float  # all bytes moved to the host
    gradients: int  # the gradient bytes left on the GPU
    optimizer_states: int  # the optimizer-state bytes left on the GPU


def offloaded_adapter_states(run: Run, adapters: float, gradients: int, optimizer_states: int) -> OffloadedAdapters:
    """What offload moves of a LoRA run's trained adapters: the optimizer states under any offload (ZeRO-Offload,
    FSDP), their gradients under FSDP / ZeRO-3 (FSDP copies each reduced shard to the pinned _cpu_grad:
    _flat_param.py), and the adapters themselves with the parameters."""
    if run.offload == "none":
        return OffloadedAdapters(0.0, 0.0, gradients, optimizer_states)
    moved = float(optimizer_states)
    optimizer_states = 0
    if run.fsdp != "none" or run.zero_stage == 3:
        moved += gradients
        gradients = 0
    weights = adapters if run.offload == "optimizer+params" else 0.0
    return OffloadedAdapters(weights, moved + weights, gradients, optimizer_states)


def host_bytes_per_node(run: Run, per_gpu: float) -> int:
    """Host memory one node needs for the offloaded states of its GPUs, with pinned buffers."""
    gpus_on_node = min(run.gpus, run.gpus_per_node)
    return round(per_gpu * gpus_on_node * HOST_BUFFER_FACTOR)
