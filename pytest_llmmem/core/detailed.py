"""The methods of one model: a resolved :class:`Run` in, a per-GPU :class:`Estimate` out.

Which runs are recipes or servers is decided above (:mod:`pytest_llmmem.estimator`). Two methods.
``rule-of-thumb`` is the seed's arithmetic and nothing more (inference = params x bytes per dtype, training = 4 x inference). ``detailed`` counts what sits in GPU memory at the
peak of a training step or an inference prefill; each term below names its source.

PYTEST_DONT_REWRITE: no asserts here; pytest need not rewrite this plugin module.
"""

import math
from typing import Dict, Optional, Tuple

from .terms.activations import FP32, Trainable, head_saved, layer_saved, rotary_tables
from .terms.attention_masks import model_masks
from .terms.checkpointing import context_parallel_kv, selective_approximate, selective_saved
from ..catalog.entries import DType, Optimizer
from .terms.job_phases import whole_job
from ..model.lora import adapted_linears, lora_params
from ..model.layers import peft_target_problem
from ..model.architecture import Architecture
from .terms.parallel import adapter_base, frozen_params, host_bytes_per_node, local_params, model_states, offloaded_adapter_states
from .terms.prefill import prefill_terms, stage_groups
from .records import CUBLAS_WORKSPACE_BYTES, CUDA_CONTEXT_BYTES, FRAGMENTATION, TERMS, Estimate
from .run import Run
from .terms.trainer_terms import bnb_state_bytes, four_bit_bytes, loss_terms, offloaded_layer_inputs, optimizer_phase, trainable_tensors
from ..units import format_bytes


def estimate_model(run: Run) -> Estimate:
    """One model's estimate by its method: an SFT run, or a recipe's policy, reference or critic.
    Which runs are recipes or servers is decided above this module (:func:`pytest_llmmem.estimator.estimate`)."""
    if run.method == "rule-of-thumb":
        from .rule_of_thumb import rule_of_thumb

        return rule_of_thumb(run)
    return detailed(run)


# --- detailed ----------------------------------------------------------------------------------


def stored_weight_bytes(run: Run, params: int) -> Tuple[int, str]:
    """Weights in their storage format; quantised formats keep embeddings, head and norms in 16 bit."""
    dtype = run.dtype
    fp32 = run.model.fp32_params() if isinstance(run.model, Architecture) else 0
    if not dtype.quantized:
        return round((params - fp32) * dtype.bytes + fp32 * max(dtype.bytes, FP32)), ""
    # 4-bit layouts differ by library and double quantisation (trainer_terms.four_bit_bytes).
    stored = four_bit_bytes(run.knobs.nf4_layout if dtype.name == "nf4" else "bitsandbytes", run.knobs.double_quant) \
        if dtype.name in ("nf4", "int4") else dtype.bytes
    if isinstance(run.model, Architecture):
        linear = run.model.linear_params()
        return round(linear * stored + (params - linear) * dtype.compute_bytes), ""
    return round(params * stored), f"{dtype.name} applied to all {params:,} params: without the architecture the 16-bit embeddings and norms cannot be separated"


def _packed_bytes(run: Run) -> float:
    """Bytes of one stored base weight without its block constants (4 bit: half a byte)."""
    return 0.5 if run.dtype.name in ("nf4", "int4") else run.dtype.bytes


def _optimizer_bytes(opt: Optimizer, run: Run, trainable: int, param_bytes: float, mixed: bool) -> Tuple[int, str]:
    """State bytes: fp32 under mixed precision, the param dtype under pure training, unless fixed."""
    per_state = opt.state_bytes if opt.state_bytes is not None else (FP32 if mixed else param_bytes)
    if not opt.factored:
        return round(trainable * opt.states * per_state), ""
    # Adafactor keeps a row and a column vector per matrix and a full state per vector (Shazeer & Stern 2018).
    arch = run.model
    if run.mode != "train":
        return round(trainable * per_state), ""  # adapters: a full state each, an upper bound
    if not isinstance(arch, Architecture):
        return 0, ("adafactor's factored states (a row and a column per matrix: well under 1 % of the weights "
                   "for transformer shapes) need the architecture and are not counted")
    matrices = sum(n * sum(l.count * (l.d_in + l.d_out) for l in lin) for n, lin in arch.group_linears())
    vectors = sum(n * sum(l.count * l.d_out for l in lin if l.bias) for n, lin in arch.group_linears())
    vectors += arch.norm_params() * (sum(g.norms * g.count for g in arch.layer_groups()) + 1)
    embed = arch.vocab_size + arch.hidden_size
    head = 0 if arch.tie_embeddings or arch.family.classifier else arch.vocab_size + arch.hidden_size
    return round((matrices + vectors + embed + head) * per_state), ""


def detailed(run: Run) -> Estimate:
    arch = run.model if isinstance(run.model, Architecture) else None
    params = arch.param_count() if arch else run.model.params
    dtype: DType = run.dtype
    act = dtype.compute_bytes
    notes = []
    details: Dict[str, int] = {}
    breakdown = dict.fromkeys(TERMS, 0)

    weights, note = stored_weight_bytes(run, params)
    if note:
        notes.append(note)
    trainable, trained, opt_note, host = 0, 0, "", 0
    frozen = frozen_params(run, arch)  # a frozen vision tower: weights, but no gradients or optimizer states
    tensors = trainable_tensors(run, arch, params - frozen)
    bnb = run.optimizer is not None and (run.optimizer.paged or run.optimizer.small_tensor_numel) and tensors is not None
    paged = 0  # bitsandbytes paged states, in CUDA unified memory
    local = local_params(run, arch, params)
    share = local.params / params  # the part of the model one GPU holds under tensor/pipeline parallelism
    if run.mode == "train":
        trainable = trained = params - frozen
        amp = run.precision == "amp"
        mixed = run.precision == "mixed" and dtype.bytes < FP32
        # amp = torch.autocast: fp32 weights, gradients and states, no separate master copy.
        weight_bytes = FP32 if amp else dtype.bytes
        opt_total, opt_note = _optimizer_bytes(run.optimizer, run, trained, weight_bytes, mixed or amp)
        if bnb:
            opt_total, paged = bnb_state_bytes(run.optimizer, tensors)
            paged = paged / run.shard_group * share
        states = model_states(run, local, weight_bytes, weight_bytes, opt_total / trained, mixed)
        weights = round(states["weights"] + states["weights.gathered"])
        if states["weights.gathered"]:
            details["weights.gathered_for_compute"] = round(states["weights.gathered"])
        if amp:
            # torch.autocast casts each linear's weight to 16 bit once per forward and keeps the copy
            # for backward (torch.autocast docs, weight cache).
            matmul_params = (arch.linear_params() + (0 if arch.family.classifier else arch.vocab_size * arch.hidden_size)) if arch else params
            details["weights.autocast_copies"] = round(matmul_params * share * act)
            weights += details["weights.autocast_copies"]
        # Mixed precision keeps an fp32 master copy beside the 16-bit weights (Micikevicius et al. 2018;
        # the ZeRO paper's 2 + 2 + 12 bytes/param for Adam); model_states shards it.
        breakdown["master_weights"] = round(states["master_weights"])
        breakdown["gradients"] = round(states["gradients"] + states["gradients.buckets"] + states["gradients.fp32_partition"])
        for item in ("gradients.buckets", "gradients.fp32_partition"):
            if states[item]:
                details[item] = round(states[item])
        breakdown["optimizer_states"] = round(states["optimizer_states"])
        if states["host"]:
            host = host_bytes_per_node(run, states["host"])
            details["host.offloaded_per_gpu"] = round(states["host"])
    elif run.trains:  # lora / qlora
        base = adapter_base(run, arch, weights, share, _packed_bytes(run), act)  # FSDP / ZeRO-3 shards, gathers, offload
        weights = round(base.gpu)
        for item, value in (("weights.gathered_for_compute", base.gathered), ("weights.quant_constants", base.constants)):
            if value:
                details[item] = round(value)
        host_base = base.host
        if arch is None:
            notes.append("LoRA adapters need the architecture to count: give config or the architecture keys")
        else:
            trainable = lora_params(arch, run.lora_rank, run.lora_targets)
            experts_note = peft_target_problem(arch.family.name, arch.linears(), run.lora_targets)[1]
            if experts_note:
                notes.append(experts_note)
            adapter_bytes = run.adapter_dtype.bytes
            details["weights.adapters"] = round(trainable * adapter_bytes)
            weights += details["weights.adapters"]
            # Adapters train in their own dtype: PEFT keeps them fp32, so grads and states are fp32 too.
            # A bypassed adapter (Linear.wrap) gets no .grad, and torch AdamW keeps no state for it.
            trained = lora_params(arch, run.lora_rank, run.lora_targets, trained_only=True)
            breakdown["gradients"] = round(trained * adapter_bytes)
            breakdown["optimizer_states"], opt_note = _optimizer_bytes(run.optimizer, run, trained, adapter_bytes, False)
            if bnb:
                breakdown["optimizer_states"], paged = bnb_state_bytes(run.optimizer, tensors)
            moved, to_host = offloaded_adapter_states(run, details["weights.adapters"], breakdown)
            weights -= moved
            host_base += to_host
        if host_base:
            details["host.offloaded_per_gpu"] = round(host_base)
            host += host_bytes_per_node(run, host_base)
    else:
        weights = round(weights * share)
    if opt_note:
        notes.append(opt_note)
    if paged:
        # bitsandbytes paged states live in CUDA unified memory: the GPU keeps them while it has room and
        # the driver pages them to host under pressure, so they count against host memory, not the GPU.
        details["host.paged_optimizer_states"] = round(paged)
        host += host_bytes_per_node(run, paged)
        notes.append(f"{run.optimizer.name}: {format_bytes(round(paged))} of optimizer states are paged (CUDA unified memory): "
                     "held on the GPU while it has room, evicted to host memory under pressure; not in the GPU total")
    breakdown["weights"] = weights

    if arch is None:
        notes.append(
            "activations, logits and KV cache not computed: the model has only params; give "
            "config = \"path/config.json\" or hidden-size, num-layers, num-heads, intermediate-size "
            "and vocab-size under [tool.llmmem.model] to include them"
        )
    else:
        _dynamic_terms(run, arch, act, breakdown, details)
    if arch is not None and run.flash_attention and not arch.family.sdpa:
        notes.append(f"{arch.family.name} has no SDPA path in transformers: counted as eager attention (flash-attn would keep less)")
    if not run.seq_len_given and arch is not None:
        notes.append(f"seq-len not set: assumed {run.seq_len}")
    if not run.lora_rank_given and run.mode in ("lora", "qlora"):
        notes.append(f"lora-rank not set: assumed {run.lora_rank} (PEFT's LoraConfig default r)")

    if run.overhead_bytes is not None:
        breakdown["overhead"] = run.overhead_bytes
    else:
        # Only short-lived tensors fragment the pool; weights, states and the KV cache live all run.
        dynamic = breakdown["activations"] + breakdown["logits"]
        details["overhead.cuda_context"] = CUDA_CONTEXT_BYTES
        details["overhead.cublas_workspace"] = CUBLAS_WORKSPACE_BYTES
        details["overhead.fragmentation"] = round(FRAGMENTATION * dynamic)
        breakdown["overhead"] = CUDA_CONTEXT_BYTES + CUBLAS_WORKSPACE_BYTES + details["overhead.fragmentation"]
    peak_phase, phases, why = optimizer_phase(run, tensors, trained, breakdown, details)
    if breakdown["optimizer_step"]:
        notes.append(f"peak in the optimizer step: {why} ({format_bytes(details['optimizer_step.temporaries'])})")
    parts: Tuple[object, ...] = ()
    if run.trains:
        # Loading, evaluation and checkpoint saving: the same terms composed per phase (job_phases.py).
        peak_phase, phases, parts, job_why = whole_job(run, arch, params, local, breakdown, details, phases)
        if job_why:
            notes.insert(0, job_why)
    if run.calibration is not None:
        # A measured correction (llmmem measure --write): the signed difference it makes to the total.
        breakdown["calibration"] = round((run.calibration - 1) * sum(breakdown.values()))
        notes.append(f"calibrated: x {run.calibration} from llmmem measure")
    if run.zero_stage == 3 and arch is None:
        notes.append("ZeRO-3's gathered largest layer not counted: it needs the architecture")
    partial, approximate = _caveats(run, arch)
    host += host_bytes_per_node(run, details.get("host.offloaded_activations", 0))
    return Estimate(run, "detailed", breakdown, params, trainable, tuple(notes), details, host, partial, approximate,
                    peak_phase=peak_phase, phases=phases, phase_parts=parts)


def _caveats(run: Run, arch: Optional[Architecture]) -> Tuple[Tuple[str, ...], Tuple[str, ...]]:
    """Why the estimate leaves terms out (partial) or is not exact (approximate)."""
    if arch is None:
        missing = "activations, logits and KV cache" if run.trains or run.mode == "inference" else "activations"
        partial = [f"the model is given by params only: {missing} are not counted"]
        if run.mode in ("lora", "qlora"):
            partial.append("LoRA adapters need the architecture: their weights, gradients and optimizer states are not counted")
        return tuple(partial) + run.not_modelled, ()
    approximate, not_modelled = list(arch.approximate), run.not_modelled
    if run.mode == "train" and arch.extra_params and run.vision_tower == "trained":
        not_modelled += ('image inputs: the vision tower\'s activations are not counted (vision-tower = "trained"); '
                         'for text-only training or a frozen tower declare vision-tower = "frozen"',)
    if run.selective_ac:
        approximate.extend(selective_approximate(arch, run.selective_ac))
    if run.trains and any(g.attention.kind == "mamba" for g in arch.layer_groups()):
        approximate.append("Mamba layers' training activations depend on the mamba-ssm CUDA kernels and are estimated, not measured")
    return not_modelled, tuple(approximate)


def _dynamic_terms(run: Run, arch: Architecture, act: int, breakdown: Dict[str, int], details: Dict[str, int]) -> None:
    """Activations, logits and KV cache, which scale with batch and sequence; each a sum over layer groups."""
    # Context parallelism shards every activation's sequence over its ranks (checkpointing.py).
    b, s = run.batch_size, -(-run.seq_len // run.context_parallel)
    tokens = b * s
    vocab_out = arch.num_labels if arch.family.classifier else arch.vocab_size
    logit_rows = b if arch.family.classifier else tokens
    t, p = run.tensor_parallel, run.pipeline_parallel
    layers = math.ceil(arch.num_layers / p)  # on the fullest pipeline stage
    stage = stage_groups(arch, layers)
    flash = run.flash_attention
    if not run.trains:
        prefill_terms(run, arch, stage, act, breakdown, details)
        return
    if run.mode == "train":
        trainable = Trainable(full=True)
    else:
        adapted = adapted_linears(arch, run.lora_targets)
        names = frozenset(lin.name for lin in adapted if lin.wrap == "module")
        trainable = Trainable(full=False, adapted=names, adapter_bytes=int(run.adapter_dtype.bytes),
                              experts=tuple(lin for lin in adapted if lin.wrap == "param"), rank=run.lora_rank)
    amp = run.precision == "amp" and run.mode == "train"
    kw = dict(batch=b, seq=s, act=act, flash=flash, trainable=trainable, amp=amp, tp=t, sp=run.sequence_parallel)
    head = head_saved(arch, batch=b, seq=s, act=act, trainable=trainable, amp=amp)
    rotary = rotary_tables(arch, seq=s, act=act)
    # 1F1B pipelining: the first stage holds activations of up to p micro-batches in flight
    # (Narayanan et al. 2021, PipeDream-Flush; Korthikanti et al. 2022 section 4.2.3).
    in_flight = min(p, run.micro_batches) if p > 1 else 1
    blocks = {"attention": 0, "mlp": 0}
    biggest_layer = 0
    for i, (n, g) in enumerate(stage):
        rest = layer_saved(arch, g, **kw)
        # In a LoRA run the first layer's input comes from the frozen embedding (no gradient).
        first = layer_saved(arch, g, input_requires_grad=trainable.full, **kw) if i == 0 else rest
        biggest_layer = max(biggest_layer, sum(rest.values()))
        for block in blocks:
            blocks[block] += first[block] + rest[block] * (n - 1)
    if run.selective_ac:
        # Selective checkpointing (torchtitan / torchtune): some layers or some ops kept, the rest recomputed.
        details.update(selective_saved(arch, stage, run.selective_ac, tokens=tokens, act=act, tp=t,
                                       full_layer=lambda i, g: sum(layer_saved(arch, g, input_requires_grad=trainable.full or i > 1, **kw).values())))
        details["activations.recomputed_layer"] = biggest_layer + rotary
    elif run.gradient_checkpointing:
        # Per-layer checkpointing keeps each layer's input; backward recomputes one layer at a time
        # (Chen et al. 2016; HF gradient_checkpointing_enable, non-reentrant).
        details["activations.layer_inputs"] = layers * in_flight * tokens * arch.hidden_size * act // (t if run.sequence_parallel else 1)
        details["activations.recomputed_layer"] = biggest_layer + rotary  # the recompute keeps the rotary tables too
        # the forward's attention masks are inputs of every checkpointed layer: they stay through backward
        masks = model_masks(arch, batch=b, seq=s, act=act, flash=flash) * in_flight
        if masks:
            details["activations.attention_masks"] = masks
        if run.knobs.activation_offload:
            details["activations.layer_inputs"], details["host.offloaded_activations"] = offloaded_layer_inputs(
                details["activations.layer_inputs"], layers * in_flight)
    else:
        for block, total in blocks.items():
            details[f"activations.{block}"] = total * in_flight
        details["activations.rotary_tables"] = rotary
    details["activations.embedding_and_head"] = head
    if run.context_parallel > 1:
        details["activations.context_parallel_kv"] = context_parallel_kv(arch, batch=b, seq=run.seq_len, act=act, tp=t)
    breakdown["activations"] = sum(v for k, v in details.items() if k.startswith("activations."))
    # Loss (trainer_terms.loss_terms): HF's fp32 upcast, torchtune/litgpt chunks, or a fused kernel.
    # Megatron's vocab-parallel cross-entropy splits the buffers over the tensor-parallel ranks.
    # Counting the last stage's logits beside the first stage's activations over-states pipeline runs slightly.
    knobs = run.knobs if not arch.family.classifier else run.knobs._replace(loss="upcast")
    loss = loss_terms(knobs, rows=logit_rows, vocab=vocab_out, hidden=arch.hidden_size, act=act, tp=t, head_trains=trainable.full,
                      logits_act=FP32 if arch.family.logits_fp32 else act)
    details.update((f"logits.{k}", v) for k, v in loss.items() if v)
    if arch.final_softcap and knobs.loss != "fused":
        # Gemma 2 final-logit soft-capping: tanh keeps its output, another b*s*V tensor
        # (modeling_gemma2.py Gemma2ForCausalLM.forward: logits / cap, tanh, * cap).
        details["logits.softcap_tanh"] = logit_rows * vocab_out * act // t
    breakdown["logits"] = sum(v for k, v in details.items() if k.startswith("logits."))
