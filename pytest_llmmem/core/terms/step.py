"""One training step's terms (or one inference prefill's), before any phase is composed.

:func:`step_terms` prices what a step holds, term by term, each with its source: the weights in
their storage format, master weights, gradients and optimizer states as parallelism shards them,
and what scales with batch and sequence (activations, the loss head, the KV cache). It returns an
immutable :class:`Step`; the phases (job_phases.py, recipes.py) list its terms as items and
:mod:`compose` turns them into the peak.

PYTEST_DONT_REWRITE: no asserts here; pytest need not rewrite this plugin module.
"""

from __future__ import annotations

import math
from typing import Dict, Optional, Tuple

from ...record import Record
from .activations import FP32, held_inputs, layer_saved
from .model_ends import head_saved, rotary_tables
from .trainable import Trainable
from .attention_masks import model_masks
from .checkpointing import context_parallel_kv, selective_saved
from ...catalog.entries import DType, Optimizer
from ...catalog.kernels import applied as kernels_applied
from ...model.architecture import Architecture
from ...model.layers import peft_target_problem
from ...model.adapters import lora_saved, outer_targets
from ..compose import Pairs
from .parallel import (LocalParams, adapter_base, frozen_params, host_bytes_per_node, local_params, model_states,
                       offloaded_adapter_states, sharded_adapters)
from .prefill import prefill_terms, stage_groups
from ..run import Run
from .trainer_terms import Tensors, bnb_state_bytes, four_bit_bytes, gptq_bytes, loss_terms, offloaded_layer_inputs, trainable_tensors
from ...units import format_bytes


class Step(Record):
    """What one step holds, term by term (bytes per GPU), and what the estimate says about it."""

    arch: Optional[Architecture]
    params: int
    trainable: int  # trainable parameters, as reported
    trained: int  # of those, the ones that get a gradient and optimizer states
    tensors: Optional[Tensors]  # the trainable tensors by size, as the optimizer sees them
    local: LocalParams
    weights: int  # stored weights, plus gathered units, autocast copies and adapters
    master_weights: int
    gradients: int
    optimizer_states: int
    activations: int
    logits: int
    kv_cache: int
    details: Pairs  # "term.item" -> bytes, in the order they are priced
    notes: Tuple[str, ...]
    host: int  # host memory per node: offloaded states, paged optimizer states, offloaded activations

    def detail(self, key: str) -> int:
        return dict(self.details).get(key, 0)


def stored_weight_bytes(run: Run, params: int) -> Tuple[int, str]:
    """Weights in their storage format; quantised formats keep embeddings, head and norms in 16 bit."""
    dtype = run.dtype
    fp32 = run.model.fp32_params() if isinstance(run.model, Architecture) else 0
    if not dtype.quantized:
        return round((params - fp32) * dtype.bytes + fp32 * max(dtype.bytes, FP32)), ""
    # 4-bit layouts differ by library and double quantisation (trainer_terms.four_bit_bytes).
    stored = four_bit_bytes(run.knobs.nf4_layout if dtype.name == "nf4" else "bitsandbytes", run.knobs.double_quant) \
        if dtype.name in ("nf4", "int4") else gptq_bytes(run.gptq_group_size) if dtype.name == "gptq" else dtype.bytes
    if isinstance(run.model, Architecture):
        linear = run.model.linear_params()
        # kbit-prepare: peft.prepare_model_for_kbit_training casts every fp16/bf16 parameter that is not Params4bit to
        # fp32 (peft/utils/other.py:203-209): embeddings, head and norms
        rest = FP32 if run.kbit_prepare else dtype.compute_bytes
        return round(linear * stored + (params - linear) * rest), ""
    return round(params * stored), f"{dtype.name} applied to all {params:,} params: without the architecture the 16-bit embeddings and norms cannot be separated"


def packed_weight_bytes(run: Run) -> float:
    """Bytes of one stored base weight without its block constants (4 bit: half a byte). GPTQ's scales and zeros
    are buffers fms-acceleration turns into parameters under FSDP (autogptq_utils.py:68-99), so they shard with it."""
    if run.dtype.name == "gptq":
        return gptq_bytes(run.gptq_group_size)
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


def step_terms(run: Run) -> Step:
    """Every term of one step of ``run`` (see the module docstring)."""
    arch = run.model if isinstance(run.model, Architecture) else None
    params = arch.param_count() if arch else run.model.params
    dtype: DType = run.dtype
    act = dtype.compute_bytes
    notes = []
    details: Dict[str, int] = {}  # this step's own items, frozen into Step.details below
    master = gradients = optimizer_states = 0

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
        weight_size = FP32 if amp else dtype.bytes
        opt_total, opt_note = _optimizer_bytes(run.optimizer, run, trained, weight_size, mixed or amp)
        if bnb:
            opt_total, paged = bnb_state_bytes(run.optimizer, tensors, weight_size)
            paged = paged / run.shard_group * share
        states = model_states(run, local, weight_size, weight_size, opt_total / trained, mixed)
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
        master = round(states["master_weights"])
        gradients = round(states["gradients"] + states["gradients.buckets"] + states["gradients.fp32_partition"])
        for item in ("gradients.buckets", "gradients.fp32_partition"):
            if states[item]:
                details[item] = round(states[item])
        optimizer_states = round(states["optimizer_states"])
        if states["host"]:
            host = host_bytes_per_node(run, states["host"])
            details["host.offloaded_per_gpu"] = round(states["host"])
    elif run.trains:  # an adapter run: run.adapter says what it adds (adapters.py)
        base = adapter_base(run, arch, weights, share, packed_weight_bytes(run), FP32 if run.kbit_prepare else act)  # FSDP / ZeRO-3 shards, gathers, offload
        weights = round(base.gpu)
        for item, value in (("weights.gathered_for_compute", base.gathered), ("weights.quant_constants", base.constants)):
            if value:
                details[item] = round(value)
        host_base = base.host
        if arch is None:
            notes.append("LoRA adapters need the architecture to count: give config or the architecture keys")
        else:
            trainable = run.adapter_params(arch)
            experts_note = peft_target_problem(arch.family.name, arch.linears(), run.lora_targets)[1]
            if experts_note:
                notes.append(experts_note)
            adapter_bytes = run.adapter_dtype.bytes
            if run.adapter.shared is not None:  # frozen tensors the method adds once (VeRA's projections), in the adapter dtype
                layers = run.adapter.touches(arch, run.lora_targets)
                details["weights.adapter_projections"] = round(run.adapter.shared(layers, run.lora_rank) * adapter_bytes)
                weights += details["weights.adapter_projections"]
            # Adapters train in their own dtype: PEFT keeps them fp32, so grads and states are fp32 too.
            # A bypassed adapter (Linear.wrap) gets no .grad, and torch AdamW keeps no state for it.
            trained = run.adapter_params(arch, trained_only=True)
            optimizer_states, opt_note = _optimizer_bytes(run.optimizer, run, trained, adapter_bytes, False)
            if bnb:
                optimizer_states, paged = bnb_state_bytes(run.optimizer, tensors)
            shards = sharded_adapters(run, arch, trainable * adapter_bytes, trained * adapter_bytes, optimizer_states, paged)
            details["weights.adapters"] = round(shards.weights)
            weights += details["weights.adapters"] + round(shards.gathered)
            if shards.gathered:
                details["weights.gathered_for_compute"] = details.get("weights.gathered_for_compute", 0) + round(shards.gathered)
            gradients, optimizer_states, paged = round(shards.gradients), round(shards.optimizer_states), shards.paged
            # modules-to-save: PEFT's ModulesToSaveWrapper trains a full copy of each named module in the model's
            # dtype beside the frozen original (peft/utils/other.py ModulesToSaveWrapper: deepcopy of the module),
            # so weights, gradients and optimizer states of a hidden x vocab matrix each, in that dtype.
            whole = len(run.modules_to_save) * arch.hidden_size * arch.vocab_size
            if whole:
                details["weights.modules_to_save"] = round(whole * act)
                weights += details["weights.modules_to_save"]
                trainable += whole
                gradients += round(whole * act)
                optimizer_states += _optimizer_bytes(run.optimizer, run, whole, act, False)[0]
            off = offloaded_adapter_states(run, details["weights.adapters"], gradients, optimizer_states)
            weights -= off.weights
            gradients, optimizer_states = off.gradients, off.optimizer_states
            if shards.gradient_unit:  # on the GPU until reduce-scattered, whatever offload moves
                details["gradients.buckets"] = round(shards.gradient_unit)
                gradients += details["gradients.buckets"]
            host_base += off.host
        if host_base:
            details["host.offloaded_per_gpu"] = round(host_base)
            host += host_bytes_per_node(run, host_base)
    else:
        weights = round(weights * share)
    rope = rope_caches(run, arch)
    if rope:
        details["weights.rope_caches"] = rope
        weights += rope
    if opt_note:
        notes.append(opt_note)
    if paged:
        # bitsandbytes paged states live in CUDA unified memory: the GPU keeps them while it has room and
        # the driver pages them to host under pressure, so they count against host memory, not the GPU.
        details["host.paged_optimizer_states"] = round(paged)
        host += host_bytes_per_node(run, paged)
        notes.append(f"{run.optimizer.name}: {format_bytes(round(paged))} of optimizer states are paged (CUDA unified memory): "
                     "held on the GPU while it has room, evicted to host memory under pressure; not in the GPU total")

    activations = logits = kv_cache = 0
    if arch is None:
        notes.append(
            "activations, logits and KV cache not computed: the model has only params; give "
            "config = \"path/config.json\" or hidden-size, num-layers, num-heads, intermediate-size "
            "and vocab-size under [tool.llmmem.model] to include them"
        )
    else:
        # kbit-prepare: the fp32 embedding makes the residual stream fp32, and every Linear4bit returns its input's
        # dtype (bitsandbytes nn/modules.py Linear4bit.forward: out.to(inp_dtype)), so every activation is fp32
        # (measured: tests/data/adapters/qlora-kbit-prepare.json)
        dynamic, activations, logits, kv_cache = _dynamic_terms(run, arch, FP32 if run.kbit_prepare else act)
        details.update(dynamic)
    if arch is not None and run.flash_attention and not arch.family.sdpa:
        notes.append(f"{arch.family.name} has no SDPA path in transformers: counted as eager attention (flash-attn would keep less)")
    if not run.seq_len_given and arch is not None:
        notes.append(f"seq-len not set: assumed {run.seq_len}")
    if run.use_rslora and run.adapter is not None:
        notes.append("use-rslora: rsLoRA scales B A by alpha / sqrt(r) instead of alpha / r (peft/tuners/lora/layer.py "
                     "update_layer) and adds no tensor: the memory is LoRA's")
    if not run.lora_rank_given and run.adapter is not None and run.adapter.rank_source:
        notes.append(f"lora-rank not set: assumed {run.lora_rank} ({run.adapter.rank_source})")
    host += host_bytes_per_node(run, details.get("host.offloaded_activations", 0))
    return Step(arch, params, trainable, trained, tensors, local, weights, master, gradients, optimizer_states,
                activations, logits, kv_cache, tuple(details.items()), tuple(notes), host)


def rope_caches(run: Run, arch: Optional[Architecture]) -> int:
    """Per-layer cos/sin caches for every position a release keeps resident (Knobs.rope_caches: Unsloth before 2024.8 on
    Llama, catalog/profiles.py): 2 x positions x rotary dims per layer in the model's dtype, positions the larger of the
    run's sequence and the model's max_position_embeddings (unsloth/models/llama.py from_pretrained: max_position_embeddings
    = max(max_seq_length, model_max_seq_length))."""
    if not run.knobs.rope_caches or arch is None or arch.family.name != "llama":
        return 0
    positions = max(run.seq_len, arch.context()[0])
    layers = math.ceil(arch.num_layers / run.pipeline_parallel)
    return layers * rotary_tables(arch, seq=positions, act=run.dtype.compute_bytes)  # one model-wide table per layer


def trainable_for(run: Run, arch: Architecture) -> Trainable:
    """What trains in a step and the fused kernels that replace its modules' autograd (shared with the backward instant)."""
    kernels, _ = kernels_applied(run.knobs.kernels, arch.family.name)  # fused kernels change what modules keep (catalog/kernels.py)
    if run.adapter is not None and run.adapter.saved is not lora_saved:
        kernels = kernels - {"fast-lora", "foak-lora"}  # Unsloth's LoRA autograd replaces plain LoRA modules only (not DoRA, VeRA, IA3)
    if run.adapter is None or not run.adapter.quantized_base:
        # fms-acceleration installs its fused LoRA only where the model has a quantization_method
        # (framework_plugin_fast_kernels.py:156-159 @ 733992a: otherwise "fused_lora" is omitted from its rules)
        kernels = kernels - {"foak-lora"}
    if run.compiled:
        # torch.compile fuses each RMSNorm: Inductor's min-cut partitioner keeps its 16-bit input and one fp32 rstd per
        # row, not the fp32 copy (benchmarks/data/compile-cpu.jsonl torchtune-layer compiled_saved), as the fused
        # rms-norm kernel part does (catalog/kernels.py)
        kernels = kernels | {"rms-norm"}
    if run.mode == "train":
        trainable = Trainable(full=True, kernels=kernels)
    else:
        adapted = run.adapter.touches(arch, run.lora_targets)
        modules = tuple(lin for lin in adapted if lin.wrap == "module") + outer_targets(arch, run.lora_targets)
        trainable = Trainable(full=False, adapted=frozenset(lin.name for lin in modules), adapter_bytes=int(run.adapter_dtype.bytes),
                              experts=tuple(lin for lin in adapted if lin.wrap == "param"), rank=run.lora_rank, adapter=run.adapter,
                              dropout=run.lora_dropout > 0, whole=frozenset(run.modules_to_save), kernels=kernels,
                              one_qkv_dropout=run.knobs.framework == "litgpt",  # litgpt/lora.py:405 LoRAQKVLinear
                              # bitsandbytes <= 0.43.1 (Trainable.base_keeps); under checkpointing the forward runs
                              # without grad (reentrant, transformers < 5's default), so MatMul4Bit keeps nothing
                              base_keeps_input=run.bnb_keeps_inputs and run.adapter.quantized_base and not run.gradient_checkpointing,
                              # Linear4bit.forward's x.to(compute_dtype) is no copy where the compute dtype is fp32 already
                              base_cast=run.dtype.compute_bytes if run.kbit_prepare and run.dtype.compute_bytes < FP32 else 0,
                              modules=tuple((lin.name, lin) for lin in modules),
                              # a trained prefix (prefix tuning, prompts.py): every attention's keys and values need a gradient
                              kv_grad=bool(run.adapter.prompt is not None and run.virtual_tokens and run.adapter.kv_prefix),
                              autocast=run.autocast and run.precision != "amp")
    return trainable


def _dynamic_terms(run: Run, arch: Architecture, act: int) -> Tuple[Pairs, int, int, int]:
    """Activations, logits and KV cache, which scale with batch and sequence; each a sum over layer
    groups. Returns (their items, activations, logits, KV cache)."""
    # Context parallelism shards every activation's sequence over its ranks (checkpointing.py).
    # A prompt the adapter prepends (prompt tuning) lengthens every sequence by its virtual tokens: PEFT concatenates
    # them before the input embeddings and -100 labels before the labels (peft/peft_model.py PeftModelForCausalLM.forward)
    # (p-tuning too); prefix tuning's enter every layer's keys and values instead (prompts.py), a prefix each attention reads
    virtual = run.virtual_tokens if run.adapter is not None and run.adapter.prompt is not None else 0
    prefix = virtual if virtual and run.adapter.kv_prefix else 0
    prompt = virtual - prefix
    b, s = run.batch_size, -(-(run.seq_len + prompt) // run.context_parallel)
    tokens = b * s
    vocab_out = arch.num_labels if arch.family.classifier else arch.vocab_size
    logit_rows = b if arch.family.classifier else tokens
    t, p = run.tensor_parallel, run.pipeline_parallel
    layers = math.ceil(arch.num_layers / p)  # on the fullest pipeline stage
    stage = stage_groups(arch, layers)
    flash = run.flash_attention
    if not run.trains:
        terms = prefill_terms(run, arch, stage, act)
        return terms.details, terms.activations, terms.logits, terms.kv_cache
    details: Dict[str, int] = {}
    trainable = trainable_for(run, arch)
    if run.mode != "train":
        modules = tuple(lin for _, lin in trainable.modules)
        if run.adapter.forward_transient is not None:
            # what one adapted module holds in flight in its own forward (DoRA's weight norm), the largest of them:
            # the forward phase's own item (job_phases.step_phases)
            details["forward.adapter_transient"] = max(
                (run.adapter.forward_transient(lin, run.lora_rank * lin.rank_scale, trainable.adapter_bytes, act) for lin in modules), default=0)
    amp = run.precision == "amp" and run.mode == "train"
    kw = dict(batch=b, seq=s, act=act, flash=flash, trainable=trainable, amp=amp, tp=t, sp=run.sequence_parallel, prefix=prefix, fa=run.mask_free)
    head = head_saved(arch, batch=b, seq=s, act=act, trainable=trainable, amp=amp)
    rotary = rotary_tables(arch, seq=s, act=act)
    # 1F1B pipelining: the first stage holds activations of up to p micro-batches in flight
    # (Narayanan et al. 2021, PipeDream-Flush; Korthikanti et al. 2022 section 4.2.3).
    in_flight = min(p, run.micro_batches) if p > 1 else 1
    blocks = {"attention": 0, "mlp": 0}
    biggest_layer = 0
    for i, (n, g) in enumerate(stage):
        rest = layer_saved(arch, g, **kw)
        # In a LoRA run the first layer's input comes from the frozen embedding (no gradient), unless it is adapted.
        # (or a trained prompt is part of its input)
        first_grad = trainable.full or bool(prompt) or "embed_tokens" in trainable.adapted | trainable.whole
        first = layer_saved(arch, g, input_requires_grad=first_grad, **kw) if i == 0 else rest
        biggest_layer = max(biggest_layer, sum(rest.values()))
        for block in blocks:
            blocks[block] += first[block] + rest[block] * (n - 1)
    if run.selective_ac:
        # Selective checkpointing (torchtitan / torchtune): some layers or some ops kept, the rest recomputed.
        details.update(selective_saved(arch, stage, run.selective_ac, tokens=tokens, act=act, tp=t, compiled=run.compiled,
                                       full_layer=lambda i, g: sum(layer_saved(arch, g, input_requires_grad=trainable.full or i > 1, **kw).values())))
        details["activations.recomputed_layer"] = biggest_layer + rotary
    elif run.gradient_checkpointing:
        # Per-layer checkpointing keeps each layer's input; backward recomputes one layer at a time
        # (Chen et al. 2016; HF gradient_checkpointing_enable, non-reentrant).
        details["activations.layer_inputs"] = layers * in_flight * tokens * arch.hidden_size * act // (t if run.sequence_parallel else 1)
        details["activations.recomputed_layer"] = biggest_layer + rotary  # the recompute keeps the rotary tables too
        # the forward's attention masks are inputs of every checkpointed layer: they stay through backward
        masks = model_masks(arch, batch=b, seq=s, act=act, flash=flash, fa=run.mask_free) * in_flight
        if masks:
            details["activations.attention_masks"] = masks
        if run.knobs.activation_offload:
            details["activations.layer_inputs"], details["host.offloaded_activations"] = offloaded_layer_inputs(
                details["activations.layer_inputs"], layers * in_flight, run.knobs.offload_resident)
    else:
        for block, total in blocks.items():
            details[f"activations.{block}"] = total * in_flight
        details["activations.rotary_tables"] = rotary
    details["activations.embedding_and_head"] = head
    if run.adapter is not None and run.adapter.prompt_saved is not None:  # what makes the virtual tokens (prompts.py)
        details["activations.prompt_encoder"] = run.adapter.prompt_saved(arch, run.virtual_tokens, run.prompt_encoder, run.batch_size,
                                                                        int(run.adapter_dtype.bytes))
    if run.adapter is not None and run.adapter.quantized_base:
        # One 4-bit linear at a time is dequantised to the compute dtype: in forward (bitsandbytes
        # backends/default/ops.py:341 _gemm_4bit_default_impl, dequantize_4bit then F.linear; CUDA takes that path
        # for training batches, backends/cuda/ops.py:954-967; <= 0.49 autograd/_functions.py F.linear(A,
        # dequantize_4bit(B).to(A.dtype).t())) and in backward (MatMul4Bit.backward :384, for grad_A); freed
        # after its matmul, so the largest one is a transient of the step.
        details["activations.dequantized_weight"] = max(lin.d_in * lin.d_out for lin in arch.linears() if lin.wrap == "module") \
            * run.dtype.compute_bytes // t
    if trainable.base_keeps_input:
        # what MatMul4Bit's ctx still holds once backward has run (activations.held_inputs), for the next step's forward
        details["held.bnb_ctx_inputs"] = sum(n * held_inputs(arch, g, tokens=tokens, act=act, trainable=trainable, first=False)
                                             for n, g in stage) * in_flight
        if stage and not ({"embed_tokens"} & (trainable.adapted | trainable.whole)):
            n0, g0 = stage[0]
            details["held.bnb_ctx_inputs"] -= (held_inputs(arch, g0, tokens=tokens, act=act, trainable=trainable, first=False)
                                               - held_inputs(arch, g0, tokens=tokens, act=act, trainable=trainable, first=True)) * in_flight
    if run.context_parallel > 1:
        details["activations.context_parallel_kv"] = context_parallel_kv(arch, batch=b, seq=run.seq_len, act=act, tp=t)
    activations = sum(v for k, v in details.items() if k.startswith("activations."))
    # Loss (trainer_terms.loss_terms): HF's fp32 upcast, torchtune/litgpt chunks, or a fused kernel.
    # Megatron's vocab-parallel cross-entropy splits the buffers over the tensor-parallel ranks.
    # Counting the last stage's logits beside the first stage's activations over-states pipeline runs slightly.
    knobs = run.knobs if not arch.family.classifier else run.knobs._replace(loss="upcast")
    loss = loss_terms(knobs, rows=logit_rows, vocab=vocab_out, hidden=arch.hidden_size, act=act, tp=t, head_trains=trainable.full,
                      logits_act=FP32 if arch.family.logits_fp32 or knobs.returns_fp32_logits else act)
    details.update((f"logits.{k}", v) for k, v in loss.items() if v)
    if arch.final_softcap and knobs.loss != "fused":
        # Gemma 2 final-logit soft-capping: tanh keeps its output, another b*s*V tensor
        # (modeling_gemma2.py Gemma2ForCausalLM.forward: logits / cap, tanh, * cap).
        details["logits.softcap_tanh"] = logit_rows * vocab_out * act // t
    logits = sum(v for k, v in details.items() if k.startswith("logits."))
    return tuple(details.items()), activations, logits, 0
