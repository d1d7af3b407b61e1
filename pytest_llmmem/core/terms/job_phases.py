"""The whole job, not one step: loading, evaluation and checkpoint saving as phases (issue 16).

A phase is another composition of the terms the step already computed (DESIGN.md section 7): the
weights, master weights and optimizer states stay resident through every phase after the first
step; what a phase adds is its own short-lived tensors, each derived from the code that runs it
(sources in the functions below and in phase_keys.PHASE_DEFAULTS). The run's total is the largest
phase; the step's breakdown gains one term, named after the phase, for what that phase adds above
the step, so the terms still add up to the peak.

PYTEST_DONT_REWRITE: no asserts here; pytest need not rewrite this plugin module.
"""

import math
from typing import Dict, List, NamedTuple, Optional, Tuple

from .activations import FP32, forward_transient
from ...units import format_bytes
from ..records import FRAGMENTATION
from ...model.lora import adapted_linears

INT64 = 8
# How each phase is named in a sentence ("peak at checkpoint save: ...").
LABELS = {"load": "loading", "backward": "the training step (backward)", "optimizer step": "the optimizer step",
          "eval": "evaluation", "save": "checkpoint save"}


class Phase(NamedTuple):
    """One phase of the job: its total, the terms that make it up, and what sets it."""

    name: str
    total: int
    breakdown: Dict[str, int]
    why: str = ""


def _fixed_overhead(run, details: Dict[str, int], breakdown: Dict[str, int]) -> int:
    """CUDA context and cuBLAS workspace (a given overhead replaces them), present in every phase."""
    if run.overhead_bytes is not None:
        return breakdown["overhead"]
    return details.get("overhead.cuda_context", 0) + details.get("overhead.cublas_workspace", 0)


def _frag(run, dynamic: int) -> int:
    return 0 if run.overhead_bytes is not None else round(FRAGMENTATION * dynamic)


def _resident(run, breakdown: Dict[str, int], details: Dict[str, int], forward: bool) -> Dict[str, int]:
    """What stays after the first optimizer step: weights, master copy, optimizer states and the
    persistent gradient buckets (DDP / ZeRO); the gradients themselves are freed by zero_grad
    (torch.optim.Optimizer.zero_grad(set_to_none=True), the default the trainers use). A forward
    (eval) gathers sharded units as the training forward does; a save does not."""
    weights = breakdown["weights"] - details.get("weights.autocast_copies", 0)
    if not forward:
        weights -= details.get("weights.gathered_for_compute", 0)
    buckets = details.get("gradients.buckets", 0) if run.fsdp == "none" else 0
    return {"weights": weights, "master_weights": breakdown["master_weights"],
            "optimizer_states": breakdown["optimizer_states"], "gradients": buckets}


# --- load -----------------------------------------------------------------------------------------


def load_phase(run, arch, params: int, local, breakdown: Dict[str, int], details: Dict[str, int], fixed: int) -> Phase:
    """The weights landing on the GPU, before any gradient or optimizer state exists."""
    dtype = run.dtype
    adapters = details.get("weights.adapters", 0)
    resident = _resident(run, breakdown, details, forward=False)
    if run.job.loader == "materialise" and run.gpus == 1:
        # litgpt/finetune/lora.py:210 init_module(empty_init=False) on one device: every weight is built
        # for real in the compute dtype; the bnb plugin quantises only afterwards.
        built = round(params * dtype.compute_bytes) + adapters
        why = f"litgpt builds every weight in {_compute_name(dtype)} on one device before quantising ({format_bytes(built)})" \
            if dtype.quantized else ""
        return Phase("load", built + fixed, {"weights": built, "overhead": fixed}, why)
    biggest = local.largest_layer if arch is not None else 0
    if run.fsdp != "none":
        # FSDP init (sync_module_states): each wrapped unit arrives whole, is flattened (a copy) and
        # sharded: the shards so far plus one unit twice (torch/distributed/fsdp/_init_utils.py).
        per_param = FP32 if run.precision == "mixed" and run.mode == "train" else dtype.bytes
        shards = resident["weights"] + resident["master_weights"]
        copies = round(2 * local.largest_unit * per_param)
        return Phase("load", shards + copies + fixed, {"weights": shards, "load_copies": copies, "overhead": fixed},
                     f"FSDP init flattens one {format_bytes(copies // 2)} unit at a time")
    if run.zero_stage == 3:
        # zero.Init partitions at construction; from_pretrained gathers one module at a time to copy
        # its weights in (transformers/integrations/deepspeed.py, GatheredParameters(modifier_rank=0)).
        part = resident["weights"]
        copies = round(biggest * dtype.compute_bytes)
        return Phase("load", part + copies + fixed, {"weights": part, "load_copies": copies, "overhead": fixed},
                     "zero.Init gathers one module at a time")
    weights = resident["weights"]
    copies = 0
    if dtype.quantized and arch is not None:
        # from_pretrained converts tensor by tensor: the largest linear sits in 16 bit beside its
        # quantised form (transformers/core_model_loading.py, the quantizer's create_quantized_param).
        copies = round(max(lin.d_in * lin.d_out for lin in arch.linears()) * dtype.compute_bytes)
    parts = {"weights": weights, "overhead": fixed}
    if copies:
        parts["load_copies"] = copies
    return Phase("load", weights + copies + fixed, parts, "")


def _compute_name(dtype) -> str:
    return "bf16" if dtype.compute_bytes == 2 else "fp32"


# --- eval -----------------------------------------------------------------------------------------


def eval_phase(run, arch, breakdown: Dict[str, int], details: Dict[str, int], fixed: int) -> Optional[Phase]:
    """A no-grad forward over eval batches (with the loss), the logits the Trainer keeps, and
    generation with a KV cache, all beside the resident training states."""
    job = run.job
    if not job.evaluates or arch is None:
        return None
    act, t, s = run.dtype.compute_bytes, run.tensor_parallel, run.seq_len
    b = job.eval_batch_size
    resident = _resident(run, breakdown, details, forward=True)
    vocab = arch.num_labels if arch.family.classifier else arch.vocab_size
    groups = arch.layer_groups()
    activations = max(forward_transient(arch, g, batch=b, seq=s, act=act, flash=run.flash_attention, tp=t) for g in groups)
    elems = (b if arch.family.classifier else b * s) * vocab // t
    # HF: the model's loss upcasts the logits and log-softmaxes in fp32 (loss_utils.py ForCausalLMLoss);
    # litgpt validate() calls chunked_cross_entropy(chunk_size=0) on the compute-dtype logits (lora.py:444).
    logits = elems * act + (2 * elems * FP32 if job.eval_loss == "upcast" else elems * act)
    kept, why = _kept_logits(run, arch, vocab)
    # While the forward runs, all but the last held batch are kept; the concatenation holds old + new + result.
    step_unit = kept[1]
    forward = activations + logits + max(0, kept[0] - 1) * step_unit
    concat = 2 * kept[0] * step_unit if kept[0] > 1 else 0
    parts = dict(resident)
    if concat > forward:
        parts.update(eval_logits_kept=concat)
        dynamic = 0  # kept logits live through the loop: they do not fragment the pool like short-lived tensors
    else:
        parts.update(activations=activations, logits=logits)
        if kept[0] > 1:
            parts["eval_logits_kept"] = (kept[0] - 1) * step_unit
        dynamic = activations + logits
    gen = _generation(run, arch, act, vocab)
    if gen and sum(gen.values()) > sum(v for k, v in parts.items() if k not in resident):
        parts = {**resident, **gen}
        dynamic = gen["activations"] + gen["logits"]
        why = f"generating {job.eval_generate_tokens} tokens with a KV cache of {format_bytes(gen['kv_cache'])}"
    parts["overhead"] = fixed + _frag(run, dynamic)
    return Phase("eval", sum(parts.values()), parts, why)


def _kept_logits(run, arch, vocab: int) -> Tuple[Tuple[int, int], str]:
    """((eval steps whose logits stay on the GPU, bytes one step adds), why).

    HF Trainer.evaluation_loop (transformers/trainer.py:3021-3050): each step's logits are padded
    and gathered from every data-parallel rank (gather_for_metrics), then concatenated onto
    the ones before (EvalLoopContainer.add -> nested_concat, trainer_pt_utils.py:371) with the
    labels (int64); only when (step + 1) % eval_accumulation_steps == 0 do they move to the CPU.
    Without compute_metrics the Trainer keeps no logits (prediction_loss_only): eval-samples = 0.
    """
    job = run.job
    if not job.eval_samples or job.eval_loss != "upcast" or arch.family.classifier:
        return (0, 0), ""
    dp = max(1, run.data_parallel)
    rows_per_step = job.eval_batch_size * dp
    steps = math.ceil(job.eval_samples / rows_per_step)
    held = min(steps, job.eval_accumulation_steps) if job.eval_accumulation_steps else steps
    unit = rows_per_step * run.seq_len * (vocab * run.dtype.compute_bytes + INT64)
    rows = min(job.eval_samples, held * rows_per_step)
    setting = f"eval_accumulation_steps = {job.eval_accumulation_steps}" if job.eval_accumulation_steps else "no eval_accumulation_steps"
    why = (f"the HF Trainer keeps the logits of {rows:,} eval samples on the GPU ({format_bytes(held * unit)}, "
           f"twice that while concatenating; {setting}) before moving them to the CPU")
    return (held, unit), why


def _generation(run, arch, act: int, vocab: int) -> Dict[str, int]:
    """Generation during eval (predict_with_generate, litgpt generate_example): the KV cache of
    prompt + new tokens, the prefill's transient and the last position's logits in fp32."""
    job = run.job
    if not job.eval_generate_tokens:
        return {}
    b = job.eval_generate_batch or job.eval_batch_size
    s, t = run.seq_len, run.tensor_parallel
    # litgpt sizes its cache for max_seq_length (lora.py:478 set_kv_cache); HF grows it to prompt + new.
    tokens = s if run.knobs.framework == "litgpt" else s + job.eval_generate_tokens
    kv = sum(g.count * g.attention.cache_bytes(b, tokens, act, t) for g in arch.layer_groups())
    prefill = max(forward_transient(arch, g, batch=b, seq=s, act=act, flash=run.flash_attention, tp=t) for g in arch.layer_groups())
    return {"kv_cache": kv, "activations": prefill, "logits": b * vocab * (act + FP32) // t}


# --- save -----------------------------------------------------------------------------------------


def save_phase(run, arch, params: int, local, breakdown: Dict[str, int], details: Dict[str, int], fixed: int) -> Phase:
    """A checkpoint: the state dict a rank builds on the GPU, beside the resident states."""
    job, dtype = run.job, run.dtype
    parts = dict(_resident(run, breakdown, details, forward=False))
    extra, why = 0, ""
    if run.fsdp != "none":
        # FSDP keeps fp32 flat parameters under mixed precision; the state dict has their dtype.
        per_param = FP32 if run.precision == "mixed" and run.mode == "train" else dtype.bytes
        unit = round(local.largest_unit * per_param)
        if job.save == "sharded":
            # SHARDED_STATE_DICT: a unit is unsharded, chunked and cloned per rank (_state_dict_utils.py
            # _sharded_post_state_dict_hook, _ext_chunk_tensor): one unit and this rank's shard.
            extra = unit + round(local.params * per_param / run.shard_group)
        elif job.offload_to_cpu:
            # offload_to_cpu: each unsharded unit is cloned and moved to the CPU one at a time.
            extra = 2 * unit
        else:
            # FullStateDictConfig() defaults (torch/distributed/fsdp/api.py:289 offload_to_cpu=False, :331
            # rank0_only=False): every unsharded parameter is cloned on the GPU (_state_dict_utils.py:332).
            full = round(local.params * per_param)
            extra = full + unit
            why = f"FSDP full state dict gathers {format_bytes(full)} on rank 0 (offload_to_cpu = false)"
    elif run.zero_stage == 3 and job.gather_16bit_on_save:
        # deepspeed/runtime/engine.py:5519 _zero3_consolidated_16bit_state_dict: GatheredParameters one
        # module at a time, copied to the CPU on rank 0 (:5535).
        extra = round(local.largest_layer * dtype.compute_bytes)
    if job.merge_adapters and job.merge_on_gpu and arch is not None and run.mode in ("lora", "qlora"):
        merge = _merge_bytes(run, arch)
        if merge > extra:
            extra, why = merge, f"merging LoRA adapters keeps {format_bytes(merge)} of one layer's merged weight in flight"
    if extra:
        parts["state_dict"] = extra
    parts["overhead"] = fixed
    return Phase("save", sum(parts.values()), parts, why)


def _merge_bytes(run, arch) -> int:
    """PEFT merge_and_unload, one adapted linear at a time: B @ A and its scaled copy in the adapter
    dtype (peft/tuners/lora/layer.py:1044 get_delta_weight); a 4-bit base is dequantised, cast to
    the adapter dtype and summed before requantising (peft/tuners/lora/bnb.py:110-113)."""
    linears = adapted_linears(arch, run.lora_targets)
    if not linears:
        return 0
    numel = max(lin.d_in * lin.d_out for lin in linears)
    a = run.adapter_dtype.bytes
    per = run.dtype.compute_bytes + 3 * a if run.dtype.quantized else 2 * a
    return round(numel * per)


# --- composing ------------------------------------------------------------------------------------


def _step_parts(name: str, breakdown: Dict[str, int], details: Dict[str, int]) -> Dict[str, int]:
    """The step's own phases from its breakdown: backward is the breakdown without the optimizer
    step's excess; the optimizer step has no activations or loss buffers, only its temporaries."""
    parts = {k: v for k, v in breakdown.items() if v and k not in ("optimizer_step", "calibration")}
    if name == "optimizer step":
        parts.pop("activations", None)
        parts.pop("logits", None)
        parts["overhead"] = parts.get("overhead", 0) - details.get("overhead.fragmentation", 0)
        if details.get("optimizer_step.temporaries"):
            parts["optimizer_step"] = details["optimizer_step.temporaries"]
    elif breakdown.get("optimizer_step") and "optimizer_step.temporaries" in details and len(details) and \
            breakdown["optimizer_step"] == details["optimizer_step.temporaries"]:
        parts["optimizer_step"] = breakdown["optimizer_step"]  # optimizer in backward: the step runs inside it
    return parts



def whole_job(run, arch, params: int, local, breakdown: Dict[str, int], details: Dict[str, int],
              step: Tuple[Tuple[str, int], ...]) -> Tuple[str, Tuple[Tuple[str, int], ...], Tuple[Phase, ...], str]:
    """Every phase of a training job, the one that sets the peak and why; folds the excess of a
    non-step peak into the breakdown as a term named after that phase."""
    fixed = _fixed_overhead(run, details, breakdown)
    step_total = sum(breakdown.values())
    step = step or (("backward", step_total),)
    parts: List[Phase] = [load_phase(run, arch, params, local, breakdown, details, fixed)]
    parts += [Phase(name, total, _step_parts(name, breakdown, details), "") for name, total in step]
    evaluation = eval_phase(run, arch, breakdown, details, fixed)
    if evaluation is not None:
        parts.append(evaluation)
    parts.append(save_phase(run, arch, params, local, breakdown, details, fixed))
    peak = max(parts, key=lambda p: p.total)
    if peak.total > step_total:
        breakdown[peak.name] = peak.total - step_total
    why = f"peak at {LABELS[peak.name]}: {peak.why}" if peak.name in ("load", "eval", "save") and peak.why else ""
    return peak.name, tuple((p.name, p.total) for p in parts), tuple(parts), why
