"""The pools the caching allocator keeps for an FSDP job beyond what its tensors hold (issue 25): the blocks the
wrap leaves cached on the default stream, and the pools of FSDP1's other streams (docs/phases.md).

PYTEST_DONT_REWRITE: no asserts here; pytest need not rewrite this plugin module.
"""

from __future__ import annotations

from .activations import FP32
from .step import Step, packed_weight_bytes

BROADCAST_BUCKET = 250 * 1024 * 1024  # torch/distributed/fsdp/_init_utils.py PARAM_BROADCAST_BUCKET_SIZE (sync_module_states)


# Why an FSDP step's reserved peak can be the wrap's pool with the gathered units on top (docs/phases.md).
FSDP_WRAP_POOL = ("FSDP: the wrap's cached pool sets the step's reserved peak (no torch.cuda.empty_cache between the wrap and "
                  "the loop), counted as the wrap's largest instant (the shards and one unit flattened twice) and the blocks the "
                  "root's wrap leaves cached, the broadcast buckets' blocks the NCCL stream holds back included (docs/phases.md); "
                  "the allocator's block splitting as unit after unit is flattened can leave more, not modelled: fsdp_qlora's "
                  "Llama-2 7B QLoRA on 2 GPUs reports 3.72 GiB reserved after the wrap (benchmarks_03_2024.md), counted 3.49 "
                  "GiB (3.73 replayed with transformers 4.40's rotary caches)")


# The checkpointing era in which HF's decoder loop wraps each layer's __call__ (the FSDP unit) in torch.utils.checkpoint
# (transformers <= 4.51 models/*/modeling_*.py ``self._gradient_checkpointing_func(decoder_layer.__call__, ...)``);
# 4.52 moved the call inside the layer (GradientCheckpointingLayer, modeling_layers.py, PR #37223), under the FSDP unit.
CHECKPOINT_OUTSIDE_UNIT_BEFORE = (4, 52)


# The methods PEFT configures with LoraConfig (LoRA, QLoRA, GPTQ-LoRA, DoRA), for which the HF Trainer installs
# fsdp_auto_wrap_policy (transformers 4.48.1 trainer.py _fsdp_qlora_plugin_updates: isinstance(active_peft_config,
# LoraConfig)), so each decoder unit keeps only frozen base weights. IA3, VeRA, LoHa and LoKr get accelerate's
# TRANSFORMER_BASED_WRAP: their vectors share the decoder unit's flat parameter, which then requires grad and gets a
# post-backward hook (no hold). Prompt methods leave the decoder units frozen too but are not measured: not counted.
LORA_CONFIG = ("lora", "qlora")
# torch 2.1.0 added the reshard-only hook (distributed/fsdp/_runtime_utils.py:1448 _register_post_backward_reshard_only_hook,
# over autograd/graph.py:388's grad_fns); torch 2.0.1's FSDP has none: its frozen units reshard in the final callback
RESHARD_ONLY_HOOK_FROM = (2, 1)


def reshard_hook_holds_inputs(run) -> bool:
    """Whether an FSDP1 run over a frozen base keeps every recomputed layer's detached input, and its gradient, to the end
    of the backward (issue 25).

    With reentrant checkpointing around the FSDP unit, each layer's recompute runs the unit's forward on
    ``detach_variable(inputs)`` (torch 2.4.1 utils/checkpoint.py:290 CheckpointFunction.backward), a leaf. A unit whose flat
    parameter is frozen (the decoder layer's base weights; PEFT's fsdp_auto_wrap_policy wraps the LoRA linears as units
    of their own, which the HF Trainer installs for a PEFT model: transformers/trainer.py _fsdp_qlora_plugin_updates;
    fms-acceleration's fused QLoRA puts them in ignored_modules) gets a multi-grad hook on that leaf instead of a post-
    backward hook (torch 2.4.1 distributed/fsdp/_runtime_utils.py:1461-1503 _register_post_backward_reshard_only_hook).
    The hook's closure keeps the leaf's AccumulateGrad node (autograd/graph.py register_multi_grad_hook: grad_fns =
    map(_get_grad_fn_or_grad_acc, tensors); graph.py:159-164 gives a leaf's AccumulateGrad), which keeps the leaf, whose hook dict keeps the closure: a cycle through C++
    that Python's gc does not break, cut only when _finalize_params removes the hook at the end of the backward
    (_runtime_utils.py:1171-1179 removes ``_post_backward_hook_state``). So every finished layer's input (its storage,
    the saved forward output) and its ``.grad`` (checkpoint.py:314 reads inp.grad and leaves it) stay alive.

    Measured on the CPU (FSDP1 over gloo, transformers 4.48.1 + peft 0.13.2 + torch 2.13, a 4- and an 8-layer Mistral
    with LoRA r16 on q/k/v/o, 2 x 1,024 tokens: benchmarks/measure_fsdp_reshard_hold.py): at layer 0's recompute the
    leaves of layers 1..L-1 and their gradients are alive, and the step's peak is 2.2-2.3 and 5.8-7.3 layer inputs
    above the same run with the hook disabled at L = 4 and 8 (L - 2 = 2 and 6); as many at 1 and 4 ranks; none with non-reentrant
    checkpointing, a trained flat parameter (a full fine-tune) or transformers 5 (checkpoint inside the unit). On a bare
    torch stack of that shape (tests/test_fsdp_reshard_hold.py) the bottom layer's recompute starts exactly 2L - 3 inputs
    above the hook-less run: the L - 1 later inputs and the L - 2 gradients the bottom instant adds (backward.py)."""
    knobs = run.knobs
    return (_hold_shape(run) and bool(knobs.framework_version) and tuple(knobs.framework_version) < CHECKPOINT_OUTSIDE_UNIT_BEFORE)


def _hold_shape(run) -> bool:
    """Everything the hold needs but the transformers release: FSDP1 over a LoraConfig-frozen base, full reentrant
    checkpointing, the HF Trainer (framework = "transformers": TRL, axolotl and LLaMA-Factory subclass its Trainer, whose
    _inner_training_loop installs peft's fsdp_auto_wrap_policy for any LoraConfig model, transformers 4.48.1
    trainer.py:2318, :5131-5138), a torch with the reshard-only hook. checkpoint-reentrant unset is the trainer's default:
    reentrant before transformers 5 (4.48.1 modeling_utils.py:2539 gradient_checkpointing_kwargs = {"use_reentrant": True});
    the readers put axolotl's, LLaMA-Factory's and TRL's own (docs/trainer-configs.md). FSDP2 (fully_shard) has no
    reshard-only hook: its post-backward is an autograd Function over the unit's inputs whose context keeps only the
    parameter group (torch 2.13 distributed/fsdp/_fully_shard/_fsdp_param_group.py:891-907, :1110-1127), and on the CPU (FSDP2 over gloo,
    benchmarks/measure_fsdp_reshard_hold.py --fsdp 2) its reentrant peak is its non-reentrant one at 4, 8 and 12 layers
    (50.2 / 49.8, 61.5 / 62.8, 73.6 / 74.9 layer inputs) and grows 2.7 inputs a layer, FSDP1's hook-less run's 2.5, where
    FSDP1 with the hook grows 3.4."""
    knobs = run.knobs
    return (run.fsdp != "none" and run.fsdp_version == 1 and run.adapter is not None and run.adapter.name in LORA_CONFIG and run.gradient_checkpointing
            and not run.selective_ac and knobs.framework == "transformers" and knobs.checkpoint_reentrant is not False
            and (not knobs.torch_version or tuple(knobs.torch_version) >= RESHARD_ONLY_HOOK_FROM))


def reshard_hold_unknown(run, arch) -> str:
    """The caveat of a run the hold would apply to on transformers < 4.52 that declares no framework-version: counted as
    a current transformers (framework-version's convention, docs/profiles.md), with what an older one adds; "" if none."""
    if run.knobs.framework_version or not _hold_shape(run) or arch is None:
        return ""
    layers = arch.num_layers
    # one layer input is b x s x hidden in the compute dtype (backward.py: tokens per context-parallel rank, act =
    # run.dtype.compute_bytes); the hold adds the L - 1 inputs the bottom instant does not count and the L - 2 gradients
    one = run.batch_size * -(-run.seq_len // run.context_parallel) * arch.hidden_size * run.dtype.compute_bytes
    extra = max(0, 2 * layers - 3) * one
    return ("FSDP over a frozen LoRA base with reentrant checkpointing: on transformers before 4.52 (its decoder loop checkpoints "
            "around each FSDP unit) torch's reshard-only hook keeps every layer's recomputed input and its gradient to the end of "
            f"the backward, about {extra / 2**30:.2f} GiB more at the bottom layer here (2L - 3 = {max(0, 2 * layers - 3)} layer "
            "inputs of batch x seq x hidden, docs/multi-gpu.md); counted as a current transformers: set framework-version to the "
            "transformers release the stack runs (docs/trainer-configs.md lists what axolotl, LLaMA-Factory and TRL pin)")


def largest_fsdp_unit(run, step: Step) -> float:
    """The bytes of the largest FSDP unit's flat parameter, whole (unsharded), in the dtype FSDP stores it."""
    arch = step.arch
    unit = step.local.largest_unit * _unit_bytes(run)
    return max(unit, _root_unit(run, step)) if arch is not None else unit


def _unit_bytes(run) -> float:
    # per parameter of a decoder unit's flat parameter: a quantized base as it is stored (step.packed_weight_bytes:
    # bitsandbytes packs two 4-bit codes a byte, the absmax constants in quant_state outside the flat parameter; GPTQ's
    # qweight, scales and qzeros all made parameters, fms-acceleration autogptq_utils.py:68-99), fp32 under FSDP mixed precision
    if run.dtype.name in ("nf4", "int4", "gptq"):
        return packed_weight_bytes(run)
    return FP32 if run.precision == "mixed" and run.mode == "train" else run.dtype.bytes


def _root_bytes(run) -> float:
    # per parameter of the root unit: never quantised (fsdp_qlora train.py replace_linear skips lm_head;
    # bitsandbytes quantises only nn.Linear in the layers), so 16 bit, fp32 after kbit-prepare
    if run.dtype.quantized:
        return FP32 if run.kbit_prepare else run.dtype.compute_bytes
    return _unit_bytes(run)


def _root_unit(run, step: Step) -> float:
    """The root unit (the embedding, final norm and head: what no nested unit wraps), which outweighs a decoder layer
    where the vocabulary is large: Llama-2-7B's 262.4 M root params against 202 M (x 2 B against x 0.5 B under 4 bit)."""
    arch, params, local = step.arch, step.params, step.local
    return (arch.embedding_params() + arch.head_params()) * (local.params / params if params else 1) * _root_bytes(run)


def wrap_leftovers(run, step: Step) -> int:
    """FSDP init's cached blocks left beside the root's, which the root is wrapped last on (post-order auto-wrap).
    The last decoder unit leaves two blocks cached: its parameters' and its flat copy's (the broadcast bucket and
    FlatParamHandle's cat reuse one). The root then moves its embedding and head tables (T each), copies the head with
    the final norm into a broadcast bucket (torch/distributed/utils.py _sync_params_and_buffers, 250 MiB buckets: the
    embedding fills one alone and is broadcast as a view), flattens both (2T), frees the tables and clones its shard
    into the bucket's block, the smallest that holds it: the caching allocator hands a request the smallest cached
    block at least as large (CUDACachingAllocator.cpp get_free_block). Left cached: the decoder's two blocks, the head's
    and the flat copy's, and the embedding's unless it went into the decoder's flat block (T <= the decoder unit).
    The load phase counts the root twice (4T); this is the rest. Only for an untied head and decoder linears
    smaller than a table (each has its own block then); otherwise 0.

    Across GPUs a broadcast bucket's block is not free again when the unit's next request comes: ProcessGroupNCCL
    records every collective's input on its NCCL stream (torch 2.2 ProcessGroupNCCL.cpp collective():
    recordStream unless TORCH_NCCL_AVOID_RECORD_STREAMS), and the caching allocator keeps such a freed block out of
    the pool until that stream's event completes (CUDACachingAllocator.cpp free -> insert_events, process_events at
    the next malloc), while the flatten and the shard are asked for microseconds after the broadcast was queued. So
    each decoder unit's flat copy takes a block beside its bucket's (three blocks cached, not two) and the root's
    shard one beside the head's bucket (T more). Replayed through trace/allocator.py for fsdp_qlora's Llama-2-7B QLoRA
    on 2 GPUs (each unit's moves, buckets, flatten and shard in post-order, LoRA units first): 3.23 GiB reserved after
    the wrap without the deferral, 3.57 with it, 3.73 with transformers 4.40's per-layer rotary caches beside; the
    blog reports 3.72 (benchmarks_03_2024.md reserved_after_model_wrap)."""
    arch, local = step.arch, step.local
    if run.fsdp == "none" or arch is None or arch.tie_embeddings or local.largest_unit <= arch.embedding_params():
        return 0  # (largest_unit is the larger of a decoder layer and the embedding: past this it is the layer)
    layer = local.largest_unit * _unit_bytes(run)
    table = arch.vocab_size * arch.hidden_size * _root_bytes(run)
    biggest_linear = max(lin.d_in * lin.d_out for lin in arch.linears()) * _unit_bytes(run)
    if _root_unit(run, step) <= layer or biggest_linear >= table:
        return 0
    root_shard = _root_unit(run, step) / run.shard_group
    # the buckets' blocks held back by the NCCL stream's events: the decoder unit's (one bucket where it fits one) and the
    # root's head bucket, which its shard would have reused. Counted where the replay above checks it: a decoder unit in
    # one bucket, smaller than the root's shard (else a freed decoder block serves the shard: 16-bit Llama-2-7B, where the
    # replay adds 0.19 GiB in other blocks, not counted)
    deferred = layer + root_shard if run.shard_group > 1 and layer < BROADCAST_BUCKET and layer < root_shard else 0
    return round(2 * layer - (table if table <= layer else 0) + deferred)


SMALL_REQUEST = 1 << 20  # c10/cuda/CUDACachingAllocator.cpp kSmallSize: requests up to 1 MiB come from the small pool


def small_pool_states(run, step: Step) -> int:
    """The optimizer states the wrap's cached blocks cannot hold: every state tensor whose per-rank piece is at most 1 MiB
    is served from the small pool's 2 MiB segments (CUDACachingAllocator.cpp get_pool: size <= kSmallSize), and the
    blocks FSDP init leaves cached are all large-pool ones (a unit's moved weights, buckets, flat copies), so those
    states sit in segments beside the wrap's pool. fsdp_qlora wraps every LoRA linear as a unit of its own
    (train.py get_wrapping_policy, lambda_policy_fn), so each of Llama-2-7B's r-64 LoRA matrices is one flat parameter
    of 0.26-0.7 MiB a rank on 2 GPUs, and its AdamW states are as small: all 0.27 GiB of them."""
    tensors, opt = step.tensors, run.optimizer
    if run.fsdp == "none" or tensors is None or not tensors.total or not step.optimizer_states or opt is None or not opt.states:
        return 0
    shard = max(1, run.shard_group)
    per_state = step.optimizer_states * shard / (tensors.total * opt.states)  # bytes per element of one state tensor
    small = tensors.below(int(SMALL_REQUEST * shard / per_state) + 1)  # elements of tensors whose rank's state is <= 1 MiB
    return round(step.optimizer_states * small / tensors.total)


def offloaded_shard_copies(run, step: Step) -> int:
    """Under FSDP1 CPU offload, the GPU copy of a unit's shard that each all-gather reads: pre_unshard copies the
    CPU shard to the GPU inside ``with stream(pre_unshard_stream)`` (_runtime_utils.py _unshard; _flat_param.py
    pre_unshard: flat_param_to(device), "creates a new tensor") and it is freed once the unsharded view replaces it,
    so its blocks stay in that stream's pool, apart from the default and all-gather streams'. Counted as the
    largest unit's shard, the least that pool holds (smaller units' copies can reuse its block)."""
    if run.offload != "optimizer+params" or run.shard_group <= 1:
        return 0
    return round(largest_fsdp_unit(run, step) / run.shard_group)
