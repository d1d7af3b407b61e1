"""The whole job, not one step: loading, the step's backward and optimizer step, evaluation and
checkpoint saving as phases (issue 16).

Each phase lists the terms the step already priced (step.py) as :class:`..compose.Phase` items: the
weights, master weights and optimizer states stay resident through every phase after the first
step; what a phase adds is its own tensors, each derived from the code that runs it (sources in
the functions below and in phase_keys.PHASE_DEFAULTS). :func:`compose.compose` adds the overhead
and picks the peak; a load, eval or save peak is shown as the step's breakdown plus one term, named
after the phase, for what that phase adds above the step, so the terms still add up to the peak.

PYTEST_DONT_REWRITE: no asserts here; pytest need not rewrite this plugin module.
"""

from __future__ import annotations

import math
from typing import List, Optional, Tuple

from ...catalog.profiles import PROFILES
from ...units import format_bytes
from ..compose import Item, Phase, allocated, overhead_slot
from ..records import SLACK_OPTIMIZER_STEP
from .activations import FP32
from .transients import forward_transient
from .backward import INSTANTS, accumulates, backward_instants, held_logits, instant_items, pool_share
from .fsdp_pools import largest_fsdp_unit, offloaded_shard_copies, small_pool_states, wrap_leftovers
from .step import Step
from .trainer_terms import StepOptimizer

INT64 = 8
# How each phase is named in a sentence ("peak at checkpoint save: ...").
LABELS = {"forward": "the next step's forward", "load": "loading", "adapter forward": "the training step (forward)",
          "first step": "the first training step (Unsloth offloads from the second)",
          "backward": "the training step (backward)", "optimizer step": "the optimizer step", "eval": "evaluation", "save": "checkpoint save"}
STEP = ("backward", "optimizer step")  # a job phase is shown above the larger of these
# the phases whose peak the notes and the verdict name ("OVER ... at loading"): any but the steady step's own
JOB_NOTED = ("forward", "adapter forward", "first step", "load", "eval", "save")


def _job_phase(name: str, items: List[Item], why: str = "") -> Phase:
    return Phase(name, tuple(items), why, over=STEP, excess=name)


def _resident(run, step: Step, forward: bool) -> List[Item]:
    """What stays after the first optimizer step: weights, master copy, optimizer states and the
    persistent gradient buckets (DDP / ZeRO); the gradients themselves are freed by zero_grad
    (torch.optim.Optimizer.zero_grad(set_to_none=True), the default the trainers use). A forward
    (eval) gathers sharded units as the training forward does; a save does not."""
    weights = step.weights - step.detail("weights.autocast_copies")
    if not forward:
        weights -= step.detail("weights.gathered_for_compute")
    buckets = step.detail("gradients.buckets") if run.fsdp == "none" else 0
    return [Item("weights", weights, shown_if_zero=True), Item("master_weights", step.master_weights, shown_if_zero=True),
            Item("optimizer_states", step.optimizer_states, shown_if_zero=True), Item("gradients", buckets, shown_if_zero=True)]


# --- load -----------------------------------------------------------------------------------------


def load_phase(run, step: Step) -> Phase:
    """The weights landing on the GPU, before any gradient or optimizer state exists."""
    dtype, arch, params, local = run.dtype, step.arch, step.params, step.local
    adapters = step.detail("weights.adapters")
    resident = {item.term: item.bytes for item in _resident(run, step, forward=False)}
    if run.job.loader == "materialise" and run.gpus == 1:
        # litgpt/finetune/lora.py:210 init_module(empty_init=False) on one device: every weight is built
        # for real in the compute dtype; the bnb plugin quantises only afterwards.
        built = round(params * dtype.compute_bytes) + adapters
        why = f"litgpt builds every weight in {_compute_name(dtype)} on one device before quantising ({format_bytes(built)})" \
            if dtype.quantized else ""
        return _job_phase("load", [Item("weights", built, shown_if_zero=True)], why)
    biggest = local.largest_layer if arch is not None else 0
    if run.fsdp != "none":
        # FSDP init (sync_module_states): each wrapped unit arrives whole, is flattened (a copy) and
        # sharded: the shards so far plus one unit twice (torch/distributed/fsdp/_init_utils.py).
        shards = resident["weights"] + resident["master_weights"]
        copies = round(2 * largest_fsdp_unit(run, step))
        return _job_phase("load", [Item("weights", shards, shown_if_zero=True), Item("load_copies", copies, shown_if_zero=True)],
                          f"FSDP init flattens one {format_bytes(copies // 2)} unit at a time")._replace(cached=wrap_leftovers(run, step))
    if run.zero_stage == 3:
        # zero.Init partitions at construction; from_pretrained gathers one module at a time to copy
        # its weights in (transformers/integrations/deepspeed.py, GatheredParameters(modifier_rank=0)).
        part = resident["weights"]
        copies = round(biggest * dtype.compute_bytes)
        return _job_phase("load", [Item("weights", part, shown_if_zero=True), Item("load_copies", copies, shown_if_zero=True)],
                          "zero.Init gathers one module at a time")
    weights = resident["weights"]
    copies = 0
    if dtype.quantized and arch is not None:
        # from_pretrained converts tensor by tensor: the largest linear sits in 16 bit beside its
        # quantised form (transformers/core_model_loading.py, the quantizer's create_quantized_param).
        copies = round(max(lin.d_in * lin.d_out for lin in arch.linears()) * dtype.compute_bytes)
    items = [Item("weights", weights, shown_if_zero=True), overhead_slot()]
    if copies:
        items.append(Item("load_copies", copies))
    return _job_phase("load", items)


def _compute_name(dtype) -> str:
    return "bf16" if dtype.compute_bytes == 2 else "fp32"


# --- eval -----------------------------------------------------------------------------------------


def eval_phase(run, step: Step) -> Optional[Phase]:
    """A no-grad forward over eval batches (with the loss), the logits the Trainer keeps, and
    generation with a KV cache, all beside the resident training states."""
    job, arch = run.job, step.arch
    if not job.evaluates or arch is None:
        return None
    act, t, s = run.dtype.compute_bytes, run.tensor_parallel, run.seq_len
    b = job.eval_batch_size
    resident = _resident(run, step, forward=True)
    vocab = arch.num_labels if arch.family.classifier else arch.vocab_size
    groups = arch.layer_groups()
    activations = max(forward_transient(arch, g, batch=b, seq=s, act=act, flash=run.flash_attention, tp=t, fa=run.mask_free) for g in groups)
    elems = (b if arch.family.classifier else b * s) * vocab // t
    # HF: the model's loss upcasts the logits and log-softmaxes in fp32 (loss_utils.py ForCausalLMLoss);
    # litgpt validate() calls chunked_cross_entropy(chunk_size=0) on the compute-dtype logits (lora.py:444).
    logits = elems * act + (2 * elems * FP32 if job.eval_loss == "upcast" else elems * act)
    kept, why = _kept_logits(run, arch, vocab)
    # While the forward runs, all but the last held batch are kept; the concatenation holds old + new + result.
    step_unit = kept[1]
    forward = activations + logits + max(0, kept[0] - 1) * step_unit
    concat = 2 * kept[0] * step_unit if kept[0] > 1 else 0
    if concat > forward:
        # kept logits live through the loop: they do not fragment the pool like short-lived tensors
        own = [Item("eval_logits_kept", concat, shown_if_zero=True)]
    else:
        own = [Item("activations", activations, transient=True, shown_if_zero=True), Item("logits", logits, transient=True, shown_if_zero=True)]
        if kept[0] > 1:
            own.append(Item("eval_logits_kept", (kept[0] - 1) * step_unit, shown_if_zero=True))
    gen = _generation(run, arch, act, vocab)
    if gen and sum(i.bytes for i in gen) > sum(i.bytes for i in own):
        own = gen
        why = f"generating {job.eval_generate_tokens} tokens with a KV cache of {format_bytes(gen[0].bytes)}"
    return _job_phase("eval", resident + own, why)


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


def _generation(run, arch, act: int, vocab: int) -> List[Item]:
    """Generation during eval (predict_with_generate, litgpt generate_example): the KV cache of
    prompt + new tokens, the prefill's transient and the last position's logits in fp32."""
    job = run.job
    if not job.eval_generate_tokens:
        return []
    b = job.eval_generate_batch or job.eval_batch_size
    s, t = run.seq_len, run.tensor_parallel
    # litgpt sizes its cache for max_seq_length (lora.py:478 set_kv_cache); HF grows it to prompt + new.
    tokens = s if run.knobs.framework == "litgpt" else s + job.eval_generate_tokens
    kv = sum(g.count * g.attention.cache_bytes(b, tokens, act, t) for g in arch.layer_groups())
    prefill = max(forward_transient(arch, g, batch=b, seq=s, act=act, flash=run.flash_attention, tp=t, fa=run.mask_free) for g in arch.layer_groups())
    return [Item("kv_cache", kv, shown_if_zero=True), Item("activations", prefill, transient=True, shown_if_zero=True),
            Item("logits", b * vocab * (act + FP32) // t, transient=True, shown_if_zero=True)]


# --- save -----------------------------------------------------------------------------------------


def save_phase(run, step: Step) -> Phase:
    """A checkpoint: the state dict a rank builds on the GPU, beside the resident states."""
    job, dtype, arch, local = run.job, run.dtype, step.arch, step.local
    items = _resident(run, step, forward=False)
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
    if job.merge_adapters and job.merge_on_gpu and arch is not None and run.adapter is not None:
        merge = _merge_bytes(run, arch)
        if merge > extra:
            extra, why = merge, f"merging LoRA adapters keeps {format_bytes(merge)} of one layer's merged weight in flight"
    if extra:
        items.append(Item("state_dict", extra))
    return _job_phase("save", items, why)


def _merge_bytes(run, arch) -> int:
    """merge_and_unload, one adapted linear at a time: the largest one's bytes in flight, as the
    adapter says (adapters.lora_merge for LoRA and QLoRA)."""
    linears = run.adapter.touches(arch, run.lora_targets)
    if not linears:
        return 0
    numel = max(lin.d_in * lin.d_out for lin in linears)
    return run.adapter.merge(numel, run.dtype.quantized, run.dtype.compute_bytes, run.adapter_dtype.bytes)


# --- the step and the whole job ------------------------------------------------------------------


def step_phases(run, step: Step, opt: StepOptimizer) -> Tuple[Phase, ...]:
    """The step's own phases. Backward holds the resident states and, at its peak instant
    (backward.py), the part of the gradients, saved activations and loss buffers alive then (each
    item keeps its full size; ``alive`` is what the total counts) plus that instant's own temporaries;
    with the optimizer in backward, its temporaries too. The optimizer step (after backward) holds
    every gradient and the update's temporaries (``optimizer_step``), shown as its own items. Where the trainer's
    activation offload starts with the second step, the first step's backward is a phase of its own before them
    (:func:`first_step_phase`)."""
    states = [Item("weights", step.weights), Item("master_weights", step.master_weights)]
    optimizer = Item("optimizer_states", step.optimizer_states)
    if not run.trains:
        prefill = states + [optimizer, Item("activations", step.activations, transient=True),
                            Item("logits", step.logits, transient=True), Item("kv_cache", step.kv_cache), overhead_slot(shown_if_zero=False)]
        return (Phase("prefill", tuple(prefill)),)
    # the first step's own backward where the offload starts with the second, and an adapter's large forward
    before = first_step_phase(run, step, states, opt.gradients) + _adapter_forward(run, step, states + [optimizer], opt.gradients)
    candidates = backward_instants(run, step, opt.gradients)
    instant = max(candidates, key=lambda i: i.total)  # backward_instant's choice, without building them twice
    in_backward = [Item("optimizer_step", opt.temporaries)] if opt.in_backward else []

    def backward_at(at) -> Tuple[Item, ...]:
        gradients, *alive = instant_items(run, step, opt.gradients, at)
        return tuple(states + [gradients, optimizer] + alive + [Item("kv_cache", step.kv_cache), overhead_slot(shown_if_zero=False)]
                     + in_backward)

    others = tuple(backward_at(c) for c in candidates if c != instant)
    why = f"the backward peaks at its {instant.name} instant ({INSTANTS[instant.name]})"
    backward = Phase("backward", backward_at(instant), why, instants=others)
    if opt.in_backward or not opt.runs:
        return before + (backward,)
    update = states + [Item("gradients", step_gradients(run, step, opt)), optimizer, Item("kv_cache", step.kv_cache), overhead_slot(),
                       Item("optimizer_step", opt.temporaries, slack=_step_slack(run))]
    if run.knobs.holds_output_to_step:  # the loop lets go of the output only after optimizer.step() (fsdp_qlora train.py:878, :894)
        update.append(Item("logits", held_logits(run, step)))
    return before + (backward, Phase("optimizer step", tuple(update), follows="backward"))


def first_pass_step(step: Step) -> Step:
    """The step with its offloaded layer inputs back on the GPU: plain checkpointing's (step.py keeps every input, and
    offloaded_layer_inputs splits them into the resident and the host's part)."""
    host = step.detail("host.offloaded_activations")
    details = tuple((k, v + host if k == "activations.layer_inputs" else 0 if k == "host.offloaded_activations" else v) for k, v in step.details)
    return step._replace(activations=step.activations + host, details=details, host=step.host - host)


def first_step_phase(run, step: Step, states: List[Item], gradients: int) -> Tuple[Phase, ...]:
    """The first step's backward where the trainer's offload starts with the second step (Knobs.first_pass_kept:
    Unsloth 2025.3.1 up to 2025.11.4, catalog/profiles.py cites unsloth_zoo's FIRST_PASS). Its forward keeps every
    checkpointed layer input on the GPU, so its backward is plain checkpointing's; the optimizer states do not exist
    yet (torch.optim creates them in the first optimizer.step()), nor, in the first micro-batch, any earlier gradient.
    The pool's slack is the offloaded step's (backward.pool_share: the Gemma 3 run whose first pass stranded its
    blocks, docs/trace.md). () where it does not apply."""
    basis = first_step_basis(run, step)
    if basis is None:
        return ()
    one_batch, first, host = basis
    candidates = backward_instants(one_batch, first, gradients)
    instant = max(candidates, key=lambda i: i.total)

    def at(candidate) -> Tuple[Item, ...]:
        grads, *alive = instant_items(one_batch, first, gradients, candidate)
        return tuple(states + [grads] + alive + [Item("kv_cache", step.kv_cache), overhead_slot(shown_if_zero=False)])

    return (Phase("first step", at(instant), first_step_why(run, host, instant.name),
                  instants=tuple(at(c) for c in candidates if c != instant)),)


def first_step_basis(run, step: Step):
    """(the first micro-batch's run, the step with its offloaded layer inputs back on the GPU, those inputs' bytes)
    where the first step keeps what the later ones offload (Knobs.first_pass_kept); None otherwise. An SFT step's
    phase (:func:`first_step_phase`) and a recipe's policy step (recipes.py) are priced from it."""
    host = step.detail("host.offloaded_activations")
    if not (run.knobs.first_pass_kept and host and step.arch is not None):
        return None
    one_batch = run._replace(micro_batches=1) if accumulates(run) else run  # the first micro-batch: no gradient made yet
    return one_batch, first_pass_step(step), host


def first_step_why(run, host: int, instant: str) -> str:
    """Why the first step is a phase of its own, for the notes."""
    version = ".".join(map(str, run.knobs.framework_version))
    return (f"{run.knobs.framework} {version} offloads no checkpointed layer input in the first forward (unsloth_zoo FIRST_PASS), "
            f"so the first step keeps all of them on the GPU, {format_bytes(host)} more than the later steps; its backward peaks "
            f"at its {instant} instant ({INSTANTS[instant]})")


def first_step_unknown(run, step: Step) -> str:
    """The caveat of a run whose trainer has releases that keep the first step's layer inputs (Profile.first_pass_kept)
    and that declares no framework-version: counted as a current release (framework-version's convention), with what
    an older one keeps; "" if none."""
    profile = PROFILES.get(run.knobs.framework)
    host = step.detail("host.offloaded_activations")
    if run.knobs.framework_version or not (run.trains and run.knobs.activation_offload and host and profile and profile.first_pass_kept):
        return ""
    first, fixed = (".".join(map(str, v)) for v in profile.first_pass_kept)
    return (f"{run.knobs.framework} releases {first} up to {fixed} (not included) offload no checkpointed layer input in the first "
            f"step's forward (unsloth_zoo FIRST_PASS, docs/profiles.md): that step keeps {format_bytes(host)} more on the GPU than "
            "the later ones; counted as a current release: set framework-version to count an older one")


def _step_slack(run) -> float:
    """The pool's slack beside the optimizer step's temporaries (core/records.py SLACK_OPTIMIZER_STEP), fitted on
    one-GPU steps; a sharded step's temporaries are its flat shards' (FSDP, ZeRO), measured by nothing: none counted,
    so a run that ran is not put over its card on a guess (fms-acceleration's 2-GPU 8B full-FT rows, 78.5 GiB)."""
    return 0.0 if run.fsdp != "none" or run.zero_stage else SLACK_OPTIMIZER_STEP


def _adapter_forward(run, step: Step, states: List[Item], gradients: int) -> Tuple[Phase, ...]:
    """The forward of an adapter that builds something large in its own forward (DoRA's weight norm,
    adapters.dora_forward_transient): the states, the saved activations (all of them, an upper bound: the
    last adapted module runs before the last layer's are saved), no loss buffers yet, and that module's
    transient. Gradients exist in a forward only while they accumulate over micro-batches (zero_grad frees
    them after each step). Shown as the backward plus the excess, under activations."""
    transient = step.detail("forward.adapter_transient")
    if not transient:
        return ()
    kept = states + ([Item("gradients", gradients)] if run.micro_batches > 1 else [])
    # the step's own saved blocks: the backward's share of the pool beside them (backward.pool_share)
    items = kept + [Item("activations", step.activations + transient, transient=True, slack=pool_share(run, step)), overhead_slot(shown_if_zero=False)]
    return (Phase("adapter forward", tuple(items), f"{run.adapter.summary(run.lora_rank, run.lora_targets)} holds {format_bytes(transient)} in one module's forward",
                  over=("backward",), excess="activations"),)


def step_gradients(run, step: Step, opt: StepOptimizer) -> int:
    """The gradients alive at the optimizer step. ``precision = "mixed"`` (16-bit weights and gradients beside an
    fp32 master copy, stepped by the optimizer) casts each 16-bit gradient onto its master as an fp32 gradient
    before the step and frees the 16-bit one (apex amp O2's master gradients; DeepSpeed's non-ZeRO FP16_Optimizer
    and BF16_Optimizer, deepspeed/runtime/fp16/fused_optimizer.py, bf16_optimizer.py, step on fp32 gradient
    copies): 4 B per trained parameter at the step (measured on fake tensors:
    trace_sweep.py's mixed runs, 0.825 - 0.892 of the trace with 2 B). ZeRO and FSDP price their own fp32 partitions (parallel.model_states); the HF
    Trainer's bf16 = true on fp32 weights is ``precision = "amp"``: fp32 gradients throughout."""
    grads = opt.gradients
    if run.precision != "mixed" or run.mode != "train" or run.dtype.bytes >= FP32 or run.zero_stage or run.fsdp != "none":
        return grads
    # The cast runs parameter by parameter in module order, each 16-bit gradient freed once its fp32 copy exists, so
    # the peak is at one end: the first (the embedding's fp32 copy beside every 16-bit gradient) or the last (every
    # fp32 gradient beside an untied head's 16-bit one; a tied model ends on the final norm).
    arch, bytes_ = step.arch, run.dtype.bytes
    buckets = step.detail("gradients.buckets")
    half = grads - buckets
    matrix = arch.vocab_size * arch.hidden_size // run.tensor_parallel if arch is not None and not arch.family.classifier else 0
    first = half + matrix * FP32
    last = half * FP32 / bytes_ + (0 if arch is None or arch.tie_embeddings else matrix * bytes_)
    return round(max(first, last)) + buckets


def next_forward_phase(run, step: Step) -> Optional[Phase]:
    """The next step's forward where the loop still holds the last step's outputs (litgpt).

    litgpt's fit loop rebinds ``logits = model(input_ids, lm_head_chunk_size=128)`` (litgpt/finetune/lora.py:355;
    :276 at 5895df10, the config hub's benchmark commit): until the new forward returns, the last step's logits live, and through their grad_fn the last
    step's graph, with what its nodes hold as attributes after backward (MatMul4Bit's ctx inputs with bitsandbytes
    <= 0.43.1: activations.held_inputs). The gradients are gone (optimizer.zero_grad(), set_to_none).
    """
    if not (run.job.holds_last_outputs and run.trains and step.arch is not None):
        return None
    held = step.detail("held.bnb_ctx_inputs")
    returned = step.detail("logits.logits")
    share = pool_share(run, step)
    items = _resident(run, step, forward=True) + [
        Item("activations", step.activations, transient=True, shown_if_zero=True, slack=share),
        Item("logits", 2 * returned, transient=True, shown_if_zero=True, slack=share),  # the new forward's and the last step's
        Item("last_step_graph", held, shown_if_zero=True)]
    why = (f"litgpt holds the last step's logits into the next forward; their graph keeps {format_bytes(held)} of "
           "4-bit linear inputs (bitsandbytes <= 0.43.1)") if held else "litgpt holds the last step's logits into the next forward"
    return _job_phase("forward", items, why)


def job_phases(run, step: Step, opt: StepOptimizer) -> Tuple[Phase, ...]:
    """Every phase of a training job, in order: load, the step's, the next forward (where the loop holds the last
    step's outputs), eval (when the job evaluates), save."""
    evaluation = eval_phase(run, step)
    forward = next_forward_phase(run, step)
    load = load_phase(run, step)
    steps = tuple(_after_fsdp_wrap(run, step, load, p) for p in step_phases(run, step, opt))
    return ((load,) + steps + ((forward,) if forward else ()) + ((evaluation,) if evaluation else ()) + (save_phase(run, step),))


def _after_fsdp_wrap(run, step: Step, load: Phase, phase: Phase) -> Phase:
    """An FSDP step's phase with the two pools the caching allocator keeps apart. The wrap runs on the default stream
    and its freed blocks stay cached into the step: fsdp_qlora train.py calls empty_cache only before the wrap
    (train.py:634; FSDP(...) :724, the loop :809) and transformers' Trainer only every torch_empty_cache_steps
    (training_args.py, default None). The step's default-stream tensors reuse them; the all-gathered units do not:
    FSDP1 allocates each padded unsharded flat parameter inside ``with stream(unshard_stream)``
    (torch/distributed/fsdp/_runtime_utils.py _unshard -> _flat_param.py unshard, _alloc_storage), FSDP2 on its
    all-gather stream (_fully_shard/_fsdp_param_group.py), and a cached block serves only its own stream."""
    gathered = step.detail("weights.gathered_for_compute")
    if run.fsdp == "none" or not gathered or phase.name not in STEP:
        return phase
    # the load phase's items under FSDP are resident (weights, load_copies): its reserve is those and its leftovers.
    # The small pool's optimizer states cannot reuse it either: they are apart from it like the gathered units
    apart = gathered + small_pool_states(run, step)
    return phase._replace(apart=apart, held_pool=allocated(load.items) + load.cached, cached=offloaded_shard_copies(run, step))


def job_note(peak: Phase) -> str:
    """Why a load, eval or save phase sets the peak, for the notes ("" when the step sets it)."""
    return f"peak at {LABELS[peak.name]}: {peak.why}" if peak.name in JOB_NOTED and peak.why else ""
