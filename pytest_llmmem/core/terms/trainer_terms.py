"""The terms a trainer's implementation choices change: the loss, the optimizer step, 4-bit storage.

Each function takes the resolved knobs (:mod:`profiles`) and returns bytes with the source of its
formula; ``estimate`` composes them. The loss implementation is a parameter of the logits term,
the optimizer implementation (foreach / fused / for-loop, paged, 8-bit) of the optimizer term.

PYTEST_DONT_REWRITE: no asserts here; pytest need not rewrite this plugin module.
"""

from __future__ import annotations

import math
from typing import Dict, List, Optional, Tuple

from ...catalog.entries import Optimizer
from ...catalog.profiles import FOREACH_TWO_LISTS_BEFORE, Knobs
from ...record import Record

FP32 = 4
# bitsandbytes pages a state buffer only from 1e5 elements (bitsandbytes/optim/optimizer.py:383
# get_state_buffer: "if not self.is_paged or p.numel() < 1e5: torch.zeros_like(...)").
PAGED_MIN_NUMEL = 100_000
# The torch.optim classes whose foreach/for-loop paths are modelled below (torch/optim/adam.py).
TORCH_ADAM = ("adam", "adamw")


# --- 4-bit weights ------------------------------------------------------------------------------


def four_bit_bytes(layout: str, double_quant: bool) -> float:
    """Bytes per 4-bit weight, block constants included.

    bitsandbytes (functional.py:918 quantize_4bit, blocksize 64): 4 bits + one fp32 absmax per 64
    weights; with double quantisation (compress_statistics, functional.py:940) the absmax are
    quantised to 8 bits in blocks of 256 with one fp32 absmax each (QLoRA paper section 3).
    torchao NF4Tensor (nf4_tensor.py:1077 to_nf4(block_size=64, scaler_block_size=256)): 4 bits,
    an int8 scaler per 64 weights and a quantization_factor in the weight's dtype (bf16) per 256
    scalers (double_quantize_scalers, nf4_tensor.py:721-778); torchao has no other layout.
    """
    if layout == "torchao":
        return 0.5 + 1 / 64 + 2 / (64 * 256)
    if double_quant:
        return 0.5 + 1 / 64 + FP32 / (64 * 256)
    return 0.5 + FP32 / 64


def gptq_bytes(group_size: int) -> float:
    """Bytes per GPTQ 4-bit weight, its scales and zeros included (QuantLinear, qlinear_tritonv2.py:67-93).

    qweight packs eight 4-bit codes an int32 (0.5 B a weight); each group of ``group_size`` input rows has an
    fp16 scale and a 4-bit zero per output column (2.5 B a group). ``-1`` is one group per column (GPTQ's
    group_size -1): its scales and zeros are 2.5 B per output column of each linear, under 0.1 % of a
    4,096-wide weight, not counted. g_idx (int32 per input row, 4 B x d_in a linear) is not counted either:
    0.15 % of Mistral-7B's 4-bit weights."""
    return 0.5 + 2.5 / group_size if group_size > 0 else 0.5


# --- loss ---------------------------------------------------------------------------------------


def _next_pow2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


def loss_terms(knobs: Knobs, *, rows: int, vocab: int, hidden: int, act: int, tp: int, head_trains: bool,
               logits_act: Optional[int] = None) -> Dict[str, int]:
    """``logits.*`` items of one training step's head + loss, per tensor-parallel rank.

    upcast (HF ForCausalLMLoss): the 16-bit logits, the fp32 log-softmax cross_entropy keeps, and
    two fp32 tensors at the start of backward: nll_loss's gradient and log_softmax_backward's output
    (measured 14.06 B per logit element over forward + backward on an H100 against 2 + 4 + 8 here:
    benchmarks/data/trainer-gpu-h100.jsonl, benchmarks/trainer_gpu_check.py).
    chunked (torchtune LinearCrossEntropyLoss / litgpt chunked_cross_entropy): every chunk's
    log-softmax stays saved for backward (fp32 when the chunk is upcast, as torchtune does; the
    compute dtype in litgpt), the logits live whole only when the model returns them (litgpt),
    and the transients shrink to one chunk (saved bytes measured on the CPU: groundtruth-rl "loss"
    rows; peaks on an H100: torchtune 5.13 and litgpt 4.31 B per logit element against 5.0 and 4.1 here).
    fused (Liger FusedLinearCrossEntropy, Cut Cross-Entropy, Unsloth): no b*s*V tensor lives; the
    forward computes the gradients chunk by chunk and keeps grad_input (b*s*h) and, when the head
    trains, grad_weight (V*h) for backward (liger_kernel/ops/fused_linear_cross_entropy.py:68-86:
    chunk_size = next_pow2(ceil(BT / ceil(V / H))), one fp32 loss per token).
    inplace (Liger cross_entropy, kernels.py): HF's ForCausalLMLoss still upcasts the logits
    (logits.float()), the kernel writes the gradient into that fp32 copy and keeps it
    (liger_kernel/ops/cross_entropy.py:564 save_for_backward(_input.detach())); backward only casts
    it to the logits' dtype for the head (the .float()'s gradient), with no log-softmax and no fp32
    transients: 2 + 4 + 2 B per logit element against upcast's 2 + 4 + 8.
    """
    elems = rows * vocab // tp
    # The logits as the model returns them: fp32 where the family upcasts them itself (Mamba,
    # modeling_mamba.py:794 ``lm_head(...).float()``; the loss's own .float() is then a no-op).
    returned = elems * (logits_act or act)
    if knobs.compiled_loss and knobs.loss in ("upcast", "chunked"):
        return compiled_loss_terms(knobs, rows=rows, elems=elems, act=act, returned=returned)
    if knobs.loss == "upcast" and knobs.returns_fp32_logits:
        # transformers before 4.46 (4.40.0 models/llama/modeling_llama.py:1227-1241): the head's 16-bit output dies at
        # ``logits = logits.float()`` (the model returns the fp32 copy: ``returned``) and CrossEntropyLoss runs on
        # ``logits[..., :-1, :].contiguous()``, a copy that dies when forward returns (log_softmax keeps its output)
        return {"logits": returned, "lm_head_output": elems * act, "shift_copy": elems * FP32, "log_softmax": elems * FP32,
                "fp32_transient": 2 * elems * FP32}
    # transformers 4.46-4.48 (Profile.shifted_loss_copy): ForCausalLMLoss computes on logits.float()[..., :-1, :].contiguous(),
    # so at its cross_entropy the fp32 upcast and the fp32 shifted copy are both alive beside the 16-bit logits; they die
    # when the forward returns (backward.py "forward end"). An in-place kernel keeps the shifted copy as its own buffer.
    shifted = knobs.shifted_loss_copy and knobs.chunk_upcast and knobs.loss in ("upcast", "inplace")
    if knobs.loss == "upcast":
        return {"logits": returned, "log_softmax": elems * FP32, "fp32_transient": 2 * elems * FP32,
                "loss_forward_copies": 2 * elems * FP32 if shifted else 0}
    if knobs.loss == "inplace" and not knobs.chunk_upcast:
        # a kernel over the logits as they come (Unsloth before 2024.11.7, Profile.inplace_loss_before) keeps them and
        # writes their gradient into them: one b*s*V tensor in the logits' dtype from the head to its backward.
        # The model returns them too, and the HF Trainer's fp16 / bf16 wraps its forward in accelerate's
        # convert_outputs_to_fp32 (accelerate 0.30 accelerator.py:1356-1365, utils/operations.py:780-789 tensor.float()):
        # an fp32 copy at the end of the forward, gone with the outputs before backward (backward.py "forward end")
        upcast_copy = 0 if (logits_act or act) >= FP32 else elems * FP32
        return {"inplace_grad": returned, "outputs_fp32": upcast_copy}
    if knobs.loss == "inplace":
        return {"logits": returned, "inplace_fp32_grad": elems * FP32, "grad_cast": elems * (logits_act or act),
                "loss_forward_copies": elems * FP32 if shifted else 0}
    if knobs.loss == "chunked":
        n = max(1, knobs.loss_chunks)
        chunk = -(-elems // n)
        kept = FP32 if knobs.chunk_upcast else act
        return {
            "logits": returned if knobs.keeps_logits else chunk * act,
            "log_softmax": elems * kept,
            # forward: the chunk's fp32 copy; backward: its gradient and the 16-bit gradient of the chunk
            "chunk_transient": chunk * (kept + act) if knobs.chunk_upcast else chunk * act,
        }
    chunk_rows = min(rows, _next_pow2(-(-rows // max(1, -(-vocab // hidden)))))
    return {
        "fused_chunk_logits": chunk_rows * vocab * act // tp,
        "fused_grad_input": rows * hidden * act,
        "fused_grad_weight": vocab * hidden * act // tp if head_trains else 0,
        "fused_loss_per_token": rows * FP32,
    }


# Inductor's compiled cross-entropy keeps, per row, the int64 label and the fp32 row max and log-sum-exp
# (benchmarks/data/compile-cpu.jsonl: 16 B per row in every case).
COMPILED_CE_ROW = 8 + 2 * FP32


def compiled_loss_terms(knobs: Knobs, *, rows: int, elems: int, act: int, returned: int) -> Dict[str, int]:
    """``logits.*`` items of a loss torch.compile compiles (torchtune: Profile.compiles_loss).

    Inductor fuses cross_entropy's log-softmax and nll into one pass: its min-cut partitioner keeps the
    logits the compiled step is given (or, with the head inside it, the matmul's 16-bit output), not a
    log-softmax, and the backward is one kernel writing one gradient buffer in the input's dtype. Read
    from the partitioner's backward inputs and Inductor's generated code on the CPU
    (benchmarks/measure_compile.py, benchmarks/data/compile-cpu.jsonl): a chunk's step keeps 2 B per
    bf16 logit and allocates 2 B per logit in backward; nn.CrossEntropyLoss compiled whole on fp32 logits
    keeps 4 B and allocates 4 B (eager: 4 B kept, 8 B in two fp32 backward buffers).
    upcast: the model's fp32 logits (torchtune's TransformerDecoder returns ``output(h).float()``) stay
    saved; chunked: every chunk's 16-bit logits stay saved (they are the model's output when it keeps
    them, counted there) and one chunk's 16-bit gradient is the transient.
    """
    if knobs.loss == "upcast":
        saved = elems * FP32 + rows * COMPILED_CE_ROW
        return {"logits": returned, "compiled_saved": saved, "fp32_transient": elems * FP32}
    chunk = -(-elems // max(1, knobs.loss_chunks))
    kept_chunks = 0 if knobs.keeps_logits else elems * act
    return {"logits": returned if knobs.keeps_logits else chunk * act, "compiled_saved": kept_chunks + rows * COMPILED_CE_ROW,
            "chunk_transient": chunk * act}


# --- trainable tensors --------------------------------------------------------------------------


class Tensors(Record):
    """The trainable tensors by size, as the optimizer sees them: (numel, how many)."""

    sizes: Tuple[Tuple[int, int], ...]

    @property
    def total(self) -> int:
        return sum(n * k for n, k in self.sizes)

    @property
    def largest(self) -> int:
        return max((n for n, _ in self.sizes), default=0)

    def below(self, limit: int) -> int:
        """Elements in tensors with fewer than ``limit`` elements each."""
        return sum(n * k for n, k in self.sizes if n < limit)


def full_model_tensors(arch, params: int) -> Tensors:
    """Every parameter of a full fine-tune: the layers' matrices, embedding and head, and the rest
    (norm weights and biases: vectors of at most a few thousand elements) as hidden-size vectors."""
    h = arch.hidden_size
    sizes: List[Tuple[int, int]] = [(lin.d_in * lin.d_out, lin.count * layers) for layers, lins in arch.group_linears() for lin in lins]
    embed = arch.vocab_size * h
    sizes.append((embed, 1 if arch.tie_embeddings or arch.family.classifier else 2))
    matrices = sum(n * k for n, k in sizes)
    vectors = max(0, params - matrices)
    if vectors:
        sizes.append((h, -(-vectors // h)))
    return Tensors(tuple(sizes))


def adapter_tensors(adapter, groups, rank: int) -> Tensors:
    """The tensors an adapter trains on each adapted matrix of every layer (LoRA: A and B, PEFT
    LoraLayer; adapters.Adapter.tensors); ``groups`` is (layer count, adapted linears) per layer group."""
    sizes = []
    for layers, linears in groups:
        for lin in linears:
            if lin.wrap == "bypassed":
                continue  # no gradient, so no optimizer state (layers.Linear.wrap)
            sizes += [(numel, lin.count * layers) for numel in adapter.tensors(lin, rank)]
    return Tensors(tuple(sizes))


# --- optimizer ----------------------------------------------------------------------------------


def bnb_state_bytes(opt: Optimizer, tensors: Tensors, weight_bytes: float = FP32) -> Tuple[int, int]:
    """(device bytes, paged bytes) of a bitsandbytes (or torchao) 8-bit optimizer's states.

    Tensors under ``min_8bit_size`` (4096) keep 32-bit states even in an 8-bit optimizer
    (bitsandbytes/optim/optimizer.py:502 "if p.numel() < config['min_8bit_size']: dtype = torch.float32"),
    torchao's keep zeros_like(p) (Optimizer.small_in_param_dtype);
    a paged optimizer puts each state of 1e5 elements or more in CUDA unified memory (:383).
    """
    device = paged = 0.0
    small = weight_bytes if opt.small_in_param_dtype else FP32
    for numel, count in tensors.sizes:
        per_state = small if numel < opt.small_tensor_numel else (opt.state_bytes if opt.state_bytes is not None else FP32)
        size = numel * count * opt.states * per_state
        if opt.paged and numel >= PAGED_MIN_NUMEL:
            paged += size
        else:
            device += size
    return round(device), round(paged)


def step_temporaries(knobs: Knobs, opt: Optimizer, state_list_bytes: float, largest_state_bytes: float) -> Tuple[int, str]:
    """Bytes the optimizer's step allocates on top of the states, and where that comes from.

    foreach (torch/optim/adam.py:762 _multi_tensor_adam, the CUDA default when fused is not asked):
    ``exp_avg_sq_sqrt = torch._foreach_sqrt(device_exp_avg_sqs)`` builds one state-sized list for
    all parameters at once, then divides, adds eps and applies it in place. torch 2.0 (adamw.py
    _multi_tensor_adamw) added eps out of place, ``denom = torch._foreach_add(exp_avg_sq_sqrt, eps)``,
    so two state-sized lists lived at once until pytorch/pytorch#104898 (torch 2.1); ms-swift issue
    411 died allocating that ``denom`` (Mistral-7B pure bf16 on an 80 GB card, 76.61 GiB allocated).
    for-loop (adam.py:544 _single_tensor_adam): ``(exp_avg_sq.sqrt() / bias_correction2_sqrt)``
    holds two temporaries of one parameter at a time, the largest one sets the peak.
    fused (torch._fused_adamw_): one kernel updates in place, nothing extra.
    Only torch.optim Adam/AdamW are modelled; bitsandbytes and the others update in place per tensor.
    """
    if opt.name not in TORCH_ADAM or knobs.optimizer_impl == "fused":
        return 0, ""
    if knobs.optimizer_impl == "foreach":
        old = bool(knobs.torch_version) and knobs.torch_version < FOREACH_TWO_LISTS_BEFORE
        lists, torch_note = (2, ", and torch < 2.1's out-of-place denom (two lists)") if old else (1, "")
        if knobs.optimizer_in_backward:  # one optimizer per parameter: the list is one tensor
            return round(lists * largest_state_bytes), f"foreach AdamW per parameter (optimizer in backward): one state-sized temporary{torch_note}"
        return round(lists * state_list_bytes), f"foreach AdamW: torch._foreach_sqrt of every exp_avg_sq at once{torch_note}"
    return round(2 * largest_state_bytes), "for-loop AdamW: sqrt and divide of the largest parameter"


def largest_grad_bytes(tensors: Tensors, grad_bytes_per_param: float) -> int:
    """Optimizer in backward (torchtune optimizer_in_bwd: a post-accumulate-grad hook steps and
    frees each gradient, training/_optimizer_in_backward / register_optim_in_bwd_hooks): the full
    gradient set never lives; at most the largest parameter's gradient does."""
    return round(tensors.largest * grad_bytes_per_param)


def offloaded_layer_inputs(layer_inputs: int, layers: int, resident: int = 1) -> Tuple[int, int]:
    """(bytes left on the GPU, bytes in host memory) when checkpointed layer inputs are offloaded.

    torchtune OffloadActivations (training/_activation_offloading.py) and Unsloth's offloaded
    checkpointing copy each saved layer input to pinned host memory in forward and bring it back
    for the recompute; the GPU keeps ``resident`` layer inputs (Profile.offload_resident: torchtune's
    forward stash of 5, Unsloth's kept last input and its GPU buffer, one in flight otherwise).
    """
    if layers <= 1:
        return layer_inputs, 0
    one = math.ceil(layer_inputs / layers)
    kept = min(layers, max(1, resident)) * one
    return kept, max(0, layer_inputs - kept)


# --- composing the step ---------------------------------------------------------------------------


def trainable_tensors(run, arch, params: int):
    """The trainable tensors of ``run`` by size, or None without the architecture."""
    if arch is None or not run.trains:
        return None
    adapter = run.adapter
    if adapter is None:
        return full_model_tensors(arch, params)
    groups = [(n, adapter.touches(arch, run.lora_targets, lins)) for n, lins in arch.group_linears()]
    return adapter_tensors(adapter, groups, run.lora_rank)


class StepOptimizer(Record):
    """The optimizer's part of a step: whether it runs, the gradients it leaves alive, its temporaries."""

    runs: bool  # an optimizer and trainable parameters: the step has an optimizer phase
    gradients: int  # the gradient bytes the step holds (the largest one only under optimizer-in-backward)
    temporaries: int  # what the step's update allocates on top of the states (step_temporaries)
    in_backward: bool  # the update runs inside backward, one parameter at a time
    why: str
    details: Tuple[Tuple[str, int], ...]


def optimizer_step(run, tensors, trainable: int, gradients: int, optimizer_states: int) -> StepOptimizer:
    """The optimizer step of ``run``: which gradients live and what its update allocates.

    Without optimizer-in-backward the step runs after backward, when activations and the loss
    buffers are gone: the step's peak is the resident states plus its temporaries, and the run's
    peak is the larger of the two phases (measured on an H100, benchmarks/data/gpu-peaks-h100.jsonl:
    Qwen3-8B bf16, backward 30.9 GiB, foreach AdamW step 76.4 GiB); job_phases.step_phases lists both.
    """
    opt, knobs = run.optimizer, run.knobs
    if opt is None or not trainable:
        return StepOptimizer(False, gradients, 0, False, "", ())
    details: Dict[str, int] = {}
    per_param_grad = gradients / trainable
    if knobs.optimizer_in_backward and tensors is not None:
        details["gradients.largest_only"] = gradients = largest_grad_bytes(tensors, per_param_grad)
    temps, why = 0, ""
    if opt.states and not opt.factored and run.offload == "none":
        state_list = optimizer_states / opt.states
        largest = state_list * (tensors.largest / tensors.total) if tensors is not None and tensors.total else state_list
        if opt.step_bytes_per_element and tensors is not None:
            # one parameter at a time: the largest one's local part (catalog/builtin.py torchao-adamw-8bit), split by
            # the states' shard group and tensor parallelism as its states are
            temps = round(opt.step_bytes_per_element * tensors.largest / (run.shard_group * run.tensor_parallel))
            why = f"{opt.doc}'s compiled step: {opt.step_bytes_per_element:g} B per element of the largest parameter"
        else:
            temps, why = step_temporaries(knobs, opt, state_list, largest)
    if temps:
        details["optimizer_step.temporaries"] = temps
    return StepOptimizer(True, gradients, temps, knobs.optimizer_in_backward, why, tuple(details.items()))
