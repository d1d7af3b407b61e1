"""The backward's peak instant: what is alive when the training step's backward peaks (issue 22).

Every term of the step is priced at its full size (step.py): every saved activation, every loss
buffer, every gradient. They are not all alive at once. Autograd frees a layer's saved tensors as
soon as its backward ran, the moment that layer's gradients appear (torch/csrc/autograd/engine.cpp
releases a node's saved variables after it runs unless retain_graph), so the backward's peak is the
resident states plus the largest live set at one instant. The live set is linear in the layer the
backward has reached, so its largest value is at one end; the candidates are:

- ``loss``: the start of backward. Every saved activation and the loss head's buffers at the start
  of its backward (:func:`loss_alive`), no gradient yet.
- ``first layer``: the last decoder layer's backward. The saved activations less the head's, one
  layer's backward temporaries (:func:`.transients.backward_transient`) and the head's gradient.
- ``recompute`` (checkpointing): the kept layer inputs, one recomputed layer, its backward
  temporaries, and every gradient but the last layer's and the embedding's.
- ``head`` (a chunked head, torchtune's): every saved activation, the loss buffers less one chunk's
  logits and gradient, and two V x h gradients of the head: the sum so far and the next chunk's.
- ``end``: every gradient, the gradient flowing into the embedding, and, with tied embeddings, the
  head's V x h gradient waiting in autograd's input buffer beside the embedding's own until the two
  are summed (torch/csrc/autograd/input_buffer.cpp).

With gradient accumulation (micro-batches without pipeline stages) every instant also holds every
gradient: the earlier micro-batches made them all (:func:`accumulates`).
Where the training loop itself holds the model's returned logits through backward (litgpt; a hand-written
``out = model(**batch); out.loss.backward()``), every instant holds them too (:func:`held_logits`).

Measured against the trace on fake tensors (benchmarks/trace_sweep.py; tests/test_backward_instant.py).
The terms' full sizes stay in the estimate's details; the breakdown shows what is alive at the instant.

PYTEST_DONT_REWRITE: no asserts here; pytest need not rewrite this plugin module.
"""

from __future__ import annotations

from typing import Dict, List, Optional, Tuple

from ...record import Record
from ..compose import Item
from ..records import FRAGMENTATION, SLACK_CHECKPOINTED, SLACK_UNCHECKPOINTED, torch1
from .fsdp_pools import reshard_hook_holds_inputs
from .transients import backward_transient, loops_over_experts
from .step import Step, trainable_for

# The loss head's items that are alive when its backward starts, per loss implementation.
# upcast: HF ForCausalLMLoss's 16-bit logits die with the model's output before backward (the HF Trainer's
# compute_loss returns only the loss, transformers/trainer.py compute_loss; torchtune deletes them, recipes/
# full_finetune_single_device.py "del logits"); the fp32 log-softmax and the two fp32 backward buffers live.
LOSS_ALIVE = {
    # under torch.compile (trainer_terms.compiled_loss_terms) the loss keeps its input, not a log-softmax
    "upcast": ("log_softmax", "compiled_saved", "fp32_transient", "softcap_tanh"),
    # Liger's cross_entropy writes the gradient into HF's fp32 copy of the logits and keeps it (kernels.py)
    "inplace": ("inplace_fp32_grad", "grad_cast", "inplace_grad", "softcap_tanh"),
    # torchtune / litgpt: every chunk's log-softmax and one chunk's transients; litgpt's own ``logits`` local
    # (the model returns them) stays through fabric.backward (litgpt/finetune/lora.py fit)
    "chunked": ("log_softmax", "compiled_saved", "chunk_transient", "softcap_tanh"),
    # Liger / CCE: the gradients computed in the forward; the chunk's logits are gone
    "fused": ("fused_grad_input", "fused_grad_weight", "fused_loss_per_token"),
}

# What each instant is, for the phase's note.
INSTANTS = {"loss": "every saved activation and the loss head's buffers",
            "head": "the head's gradient summed over the loss chunks beside every saved activation", "first layer": "the last layer's backward beside the head's gradient",
            "recompute": "one checkpointed layer recomputed and back-propagated", "end": "every gradient made",
            "forward end": "the forward's last instant: the loss's fp32 copies of the logits beside its buffers and every saved activation"}


class Instant(Record):
    """The backward's peak instant: its name and the bytes of each term alive then."""

    name: str
    activations: int
    logits: int
    gradients: int
    extra: Tuple[Tuple[str, int], ...]  # (detail name, bytes) alive only at this instant, under its term

    @property
    def total(self) -> int:
        return self.activations + self.logits + self.gradients + sum(v for _, v in self.extra)


def held_logits(run, step: Step) -> int:
    """The returned logits the training loop itself still references while backward runs, alive at every instant.

    Autograd keeps none of them: the head's matmul saves its input, not its output, and the loss's .float() saves
    nothing (HF ForCausalLMLoss, transformers/loss/loss_utils.py). They die when the loop lets go of the model's output:
    the HF Trainer's compute_loss returns only the loss (transformers/trainer.py training_step, compute_loss), so not
    there; litgpt's ``logits`` local stays through fabric.backward (litgpt/finetune/lora.py fit); a hand-written loop's
    ``out = model(**batch); out.loss.backward()`` keeps ``out.logits`` (CausalLMOutputWithPast) until ``del out``
    (Profile.holds_output). On fake tensors (benchmarks/gpu_peaks.py's loop on Qwen3-0.6B, b8 x 2048, 151,936 vocab)
    the backward peak is 4.64 GiB higher holding ``out`` than holding only the loss: 16,384 x 151,936 bf16 logits.
    Held through the phase, they are a resident item of every instant (compose.Item: kept logits), not the loss's."""
    knobs = run.knobs
    if not (knobs.holds_output or (knobs.loss == "chunked" and knobs.keeps_logits)):
        return 0
    return step.detail("logits.logits")


def loss_alive(run, step: Step) -> int:
    """The loss head's bytes alive when backward starts (LOSS_ALIVE; the logits the loop holds are :func:`held_logits`)."""
    items = dict((k[len("logits."):], v) for k, v in step.details if k.startswith("logits."))
    names = LOSS_ALIVE.get(run.knobs.loss, tuple(items))
    return sum(items.get(n, 0) for n in names)


def fp32_head_blocks(run, step: Step, loss: int) -> Tuple[Tuple[str, int], ...]:
    """The loss instant's b*s*V blocks where the model returns fp32 logits and the loop holds them (Knobs.returns_fp32_logits:
    fsdp_qlora's train.py on transformers 4.40), as items without the pool's share of short-lived bytes.

    At the start of the head's backward (LogSoftmaxBackward) four fp32 b*s*V tensors are alive: the returned logits the
    loop holds (:func:`held_logits`), log_softmax's saved output, nll_loss's gradient and its own; the lm_head's 16-bit
    output died at ``logits.float()``. Each is over 10 MiB, so the caching allocator gives each a segment of its own, the
    request rounded up to 2 MiB (c10/cuda/CUDACachingAllocator.cpp get_allocation_size), and the b*(s-1)*V shifted
    tensors round to the b*s*V ones' size whenever b*V*4 B is under 2 MiB: every later one reuses a freed one of the
    same size. The pool's slack at that instant is then the one cached block none of them fits in, the 16-bit output's.
    Replayed through the allocator on fake tensors (benchmarks/measure_fsdp_qlora_head.py, V 32,000, two steps): the head
    holds 16.0 B per logit element at the step's allocated peak and the pool reserves 2.2-2.9 B more (2 B: that block),
    where the 30 % share (records.FRAGMENTATION) of the three short-lived buffers would add 3.6."""
    if not (run.knobs.returns_fp32_logits and held_logits(run, step)):
        return ()
    return (("logits.loss_buffers", loss), ("logits.lm_head_output_cached", step.detail("logits.lm_head_output")))


def expert_delta_gradient(run, arch, act: int) -> int:
    """LoRA on 3D expert parameters: the largest merged-weight gradient alive at once in an MoE layer's backward.

    PEFT's ParamWrapper merges W + B @ A into a new (experts, d_in, d_out) weight in the forward
    (peft/tuners/lora/layer.py _LoraFactorsProxy) and the grouped matmul's backward makes that weight's
    gradient, the parameter's full size, before B and A get theirs. The backward meets the parameters in
    reverse order (down_proj first); each one's merged weight is freed with its node, so a later, larger
    gradient counts only what exceeds the merged weights already freed. Measured on fake tensors
    (trace_sweep.py Mixtral LoRA, 2 layers, 128 tokens): 241 MB above the saved set = the down projection's
    (2, 14336, 4096) bf16 gradient, 234.9 MB, and the (128, 4096) gradient flowing in.
    """
    if run.adapter is None:
        return 0
    merged = [lin.count * lin.d_in * lin.d_out * act for lin in run.adapter.touches(arch, run.lora_targets) if lin.wrap == "param"]
    largest, freed = 0, 0
    for size in reversed(merged):
        largest = max(largest, size - freed)
        freed += size
    return largest


def adapter_backward(run, arch, act: int, tokens: int) -> int:
    """The largest adapted module's own backward, where its method says (LoHa's and LoKr's delta rebuilt for its
    factors' gradients: model/lycoris.py backward_transient); 0 for the others."""
    adapter = run.adapter
    if adapter is None or adapter.backward_transient is None:
        return 0
    return max((adapter.backward_transient(lin, run.lora_rank * lin.rank_scale, run.adapter_dtype.bytes, act, tokens)
                for lin in adapter.touches(arch, run.lora_targets)), default=0)


def backward_instant(run, step: Step, gradients: int, loss: Optional[int] = None, lm_head: bool = True) -> Instant:
    """The candidate instant with the most bytes allocated (what max_memory_allocated and the trace see)."""
    return max(backward_instants(run, step, gradients, loss, lm_head), key=lambda i: i.total)


def backward_instants(run, step: Step, gradients: int, loss: Optional[int] = None, lm_head: bool = True) -> List[Instant]:
    """Every candidate instant (module docstring), ``gradients`` being the step's gradient bytes. The composer takes
    the reserved peak over all of them (compose.Phase.instants): the one with the most allocated need not hold the
    most short-lived bytes.

    A recipe's policy (recipes/recipes.py) replaces the step's head: ``loss`` is then its head's bytes alive when
    backward starts (default :func:`loss_alive`), and ``lm_head`` False says the model has no V x h output head
    (a reward model's h x 1 score), so no head gradient is made."""
    arch = step.arch
    recomputed = step.detail("activations.recomputed_layer")
    saved = step.activations - recomputed
    # the logits the loop holds, beside every instant's own items; a recipe's policy head says what it keeps itself
    held, own_head = (), ()
    if loss is None:
        kept_logits = held_logits(run, step)
        held = (("logits.held_output", kept_logits),) if kept_logits else ()
        loss = loss_alive(run, step)
        own_head = fp32_head_blocks(run, step, loss)
    if arch is None:
        return [Instant("loss", saved, loss, gradients, held)]
    act = run.dtype.compute_bytes
    tokens = run.batch_size * -(-run.seq_len // run.context_parallel)
    t = run.tensor_parallel
    per_param = gradients / step.trained if step.trained else 0
    vh = arch.vocab_size * arch.hidden_size // t
    whole = set(run.modules_to_save)
    head_trains = lm_head and not arch.family.classifier and (run.mode == "train" or "lm_head" in whole)
    embed_trains = run.mode == "train" or "embed_tokens" in whole
    tied = arch.tie_embeddings and head_trains and embed_trains and not arch.family.classifier
    matrix = round(vh * per_param)  # one V x h gradient: the head's or the embedding's
    head_grad = matrix if head_trains else 0
    matrices = matrix if tied else (head_grad + (matrix if embed_trains else 0))
    per_layer = max(0, gradients - matrices) // max(1, arch.num_layers)
    trainable = trainable_for(run, arch)
    transient = max(backward_transient(arch, g, batch=run.batch_size, seq=tokens // run.batch_size, act=act, tp=t, trainable=trainable,
                                       expert_loop=loops_over_experts(run.knobs))
                    for g in arch.layer_groups())
    transient = max(transient, expert_delta_gradient(run, arch, act) + tokens * arch.hidden_size * act)
    transient = max(transient, adapter_backward(run, arch, act, tokens))
    candidates = [Instant("loss", saved, 0 if own_head else loss, 0, held + own_head)]
    outputs_fp32 = step.detail("logits.outputs_fp32")
    if outputs_fp32:
        # the forward's last instant: the loss computed, the model's 16-bit logits returned and upcast by accelerate's
        # convert_outputs_to_fp32 (trainer_terms.loss_terms); the HF Trainer's compute_loss returns only the loss,
        # so the copy dies before backward starts (transformers 4.40 trainer.py:3161-3186). It is one allocation with a
        # segment of its own (c10/cuda/CUDACachingAllocator.cpp get_allocation_size: from 10 MiB a request is rounded up
        # to 2 MiB and, no cached block being that large, cudaMalloc'd whole), so the pool's slack on short-lived
        # tensors (compose.Overhead.fragmented) does not apply to it: an instant-only item, not a transient one
        candidates.append(Instant("forward end", saved, loss, 0, (("logits.outputs_fp32", outputs_fp32),) + held))
    copies = step.detail("logits.loss_forward_copies")
    if copies:
        # transformers 4.46-4.48's ForCausalLMLoss (loss/loss_utils.py:36-39 at 4.48.1): at its cross_entropy the model's
        # 16-bit logits (alive until compute_loss returns), the fp32 upcast, the fp32 shifted copy and what the loss keeps
        # (the log-softmax; an in-place kernel keeps the shifted copy itself) are alive beside every saved activation. The
        # copies die when the forward returns; each over 10 MiB is a segment of its own (as outputs_fp32 above), no share of
        # the pool's slack. Published: fms-acceleration's Mistral-7B LoRA / QLoRA rows grow 0.25 GiB a 4,096-token row
        # (2 B a logit element) faster than the backward's start alone gives
        kept = step.detail("logits.log_softmax") if run.knobs.loss == "upcast" else step.detail("logits.inplace_fp32_grad")
        candidates.append(Instant("forward end", saved, step.detail("logits.logits") + kept, 0,
                                  (("logits.loss_forward_copies", copies),) + held))
    layer_work = (("activations.backward_transient", transient),) + held
    if recomputed:
        # one layer recomputed and back-propagated: at the top every layer input is still kept and only the
        # head's gradient exists; at the bottom one input is left and every gradient but that layer's and
        # (untied) the embedding's is made
        inputs, masks = step.detail("activations.layer_inputs"), step.detail("activations.attention_masks")
        before = max(0, gradients - per_layer - (matrix if embed_trains and not tied else 0))
        candidates.append(Instant("recompute", inputs + masks + recomputed, 0, head_grad, layer_work))
        bottom, hold = inputs // max(1, arch.num_layers), ()
        if reshard_hook_holds_inputs(run):
            # FSDP1's reshard-only hook keeps every finished layer's detached input and its gradient (fsdp_pools.py):
            # at the bottom layer every input is still alive, and the gradients of layers 2..L-1 (layer 1's is the one
            # flowing in, the transient's)
            bottom = inputs
            hold = (("activations.fsdp_held_input_grads", max(0, arch.num_layers - 2) * (inputs // max(1, arch.num_layers))),)
        candidates.append(Instant("recompute", bottom + masks + recomputed, 0, before, layer_work + hold))
    else:
        candidates.append(Instant("first layer", saved - step.detail("activations.embedding_and_head"), 0, head_grad, layer_work))
    end = held
    if embed_trains:
        end += (("activations.embedding_grad_input", tokens * arch.hidden_size * act),)
    if tied:
        end += (("gradients.tied_head_waiting", head_grad),)
    candidates.append(Instant("end", 0, 0, gradients, end))
    if head_trains and run.knobs.compiled_loss and run.knobs.loss == "chunked" and not run.knobs.keeps_logits \
            and run.knobs.loss_chunks > 1 and step.trained:
        # torchtune's chunked head uses the V x h weight once per chunk, and autograd sums those gradients in the
        # weight's InputBuffer (torch/csrc/autograd/input_buffer.cpp InputBuffer::add: the sum so far and the new
        # one live together; measured on the CPU: benchmarks/measure_chunked_head.py). Compiled, each chunk's
        # step keeps only its bf16 logits (trainer_terms.compiled_loss_terms), so by the second chunk's head
        # backward one chunk's logits and its gradient are gone from the loss's buffers, whether the head runs
        # in the model (CEWithChunkedOutputLoss) or in the loss (LinearCrossEntropyLoss). Eager, the fp32
        # log-softmaxes make the loss instant the larger one.
        one = round(vh * step.gradients / step.trained)
        chunk = step.detail("logits.logits")  # one chunk's logits in the compute dtype (trainer_terms.loss_terms)
        candidates.append(Instant("head", saved, max(0, loss - 2 * chunk), one, (("gradients.head_accumulation", one),) + held))
    if accumulates(run):
        # From the second micro-batch on every gradient exists before backward starts: .grad is kept across
        # micro-batches and AccumulateGrad adds each new gradient into it in place (torch/csrc/autograd/functions/
        # accumulate_grad.h accumulateGrad: variable_grad += new_grad), zero_grad runs only after the optimizer
        # step (transformers/trainer.py _inner_training_loop: optimizer.step() then model.zero_grad()). So every
        # instant holds all of them; the new gradient being added is one parameter's, freed at once (not counted).
        candidates = [c._replace(gradients=gradients) for c in candidates]
    return candidates


def accumulates(run) -> bool:
    """Whether the step accumulates gradients over micro-batches (micro-batches without pipeline stages)."""
    return run.micro_batches > 1 and run.pipeline_parallel == 1


def instant_details(instant: Instant) -> Dict[str, int]:
    """The instant's own items for the estimate's details, under ``backward.`` (not part of any term's full size)."""
    return {f"backward.{name}": value for name, value in instant.extra if value}


def instant_items(run, step: Step, gradients: int, instant: Instant) -> List[Item]:
    """The backward phase's items for the step's own terms: gradients, saved activations and loss buffers at their
    full size, ``alive`` at the instant, then the instant's own temporaries (each under its term). Shared by the
    SFT step (job_phases.step_phases) and a recipe's policy (recipes/recipes.py), so both compose one backward."""
    share = pool_share(run, step)
    own = [Item(name.split(".")[0], value, transient=name.startswith("activations."),
                slack=share if name.startswith("activations.") else None) for name, value in instant.extra]
    return [Item("gradients", gradients, alive=instant.gradients),
            Item("activations", step.activations, transient=True, alive=instant.activations, slack=share),
            Item("logits", step.logits, transient=True, alive=instant.logits, slack=share)] + own


def pool_share(run, step: Step) -> float:
    """The pool's slack beside the backward's short-lived blocks, as a share of them: whether the step recomputes
    its layers decides whether the loss head's blocks come back whole (core/records.py SLACK_CHECKPOINTED). A fused
    linear cross-entropy (Liger, CCE) makes no b x s x V block, so nothing large is left for the backward to carve
    (fms-acceleration's one-GPU Liger LoRA and QLoRA rows: nvidia-smi +9-27 % over with 30 %, +0-4 % with 5 %),
    unless the layer inputs come back from the host each layer (activation offload, Unsloth's: its Gemma 3 run at
    15k tokens died on an 80 GB card, which 5 % would call fitting) or the step is sharded (the 2-GPU FSDP Liger
    rows are 14-25 % under nvidia-smi already with 30 %)."""
    if torch1(run.knobs.torch_version):
        return FRAGMENTATION  # the V100 rows it was fitted on (torch 1.x): 5 % puts them 18-23 % under nvidia-smi
    if not step.detail("activations.recomputed_layer"):
        return SLACK_UNCHECKPOINTED
    fused_loss = bool(step.detail("logits.fused_grad_input"))
    one_gpu = run.fsdp == "none" and not run.zero_stage
    return SLACK_UNCHECKPOINTED if fused_loss and one_gpu and not run.knobs.activation_offload else SLACK_CHECKPOINTED
