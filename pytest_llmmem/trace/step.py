"""One traced job at one depth: the run's model built on the meta device, its parameters swapped for
fake tensors, and the phases the estimate names run for real under ``FakeTensorMode``.

Training follows the HF Trainer's order (transformers/trainer.py training_step, _inner_training_loop):
a whole warm-up step, so the optimizer states exist (torch.optim creates them at the first step,
adam.py _init_group) and the caching allocator holds the segments a step reserves (the replayed
reserved peak is the steady state's: an optimizer step over zero gradients leaves the same
allocated bytes but a different pool, Phi-3-mini's 32 layers -10.7 % against the H100 where the
whole step is -2.8 %, benchmarks/trace_reserved.py --full-depth), then the measured step: forward and backward
("backward") and the optimizer step ("optimizer step"). The model's output object is dropped
before backward, as Trainer.compute_loss returns only the loss. Inference is a prefill of the
prompt with a KV cache ("prefill"), then one forward per new token ("decode").

Precision: "pure" keeps weights, gradients and states in the run's dtype (under ``torch.autocast`` in that dtype
where the run says autocast = true); "amp" keeps fp32 weights under ``torch.autocast``; "mixed" keeps 16-bit weights and gradients beside an fp32 master copy
the optimizer steps, each gradient cast to fp32 onto its master before the step and copied back
after (the fp16/bf16 optimizers of apex O2 and DeepSpeed's non-ZeRO path do this).

PYTEST_DONT_REWRITE: no asserts here; pytest need not rewrite this plugin module.
"""

from __future__ import annotations

import contextlib
import warnings
from typing import Dict, Optional

from ..core.run import Run
from ..errors import ConfigError
from ..hf.config import with_depth
from ..model.architecture import Architecture
from . import attention
from ..record import Record
from .build import TORCH_DTYPES, causal_lm, checkpointing, optimizer_for, require_torch
from .live import LiveBytes


class DepthTrace(Record):
    """Each phase's peak and its composition (term -> bytes), traced at one depth."""

    layers: int
    phases: Dict[str, Dict[str, int]]  # phase -> term -> bytes alive at its peak
    attention: str  # how attention ran
    reserved: Dict[str, int]  # phase -> the caching allocator's reserved peak, replayed (allocator.py)


def _attention_name(run: Run, arch: Architecture) -> str:
    if run.flash_attention and arch.family.sdpa:
        attention.register()
        return attention.NAME
    return "eager"


def _compute_dtype(torch, run: Run):
    """The dtype the model is built in: the run's, fp32 under amp, the compute dtype of a quantised one."""
    if run.precision == "amp" and run.mode == "train":
        return torch.float32
    if run.dtype.quantized:
        return torch.bfloat16 if run.dtype.compute_bytes == 2 else torch.float32
    return getattr(torch, TORCH_DTYPES[run.dtype.name])


def _peft_config(peft, run: Run):
    """The run's PEFT config: LoRA (QLoRA's adapters too) with its rank, targets, dropout, DoRA and rsLoRA, VeRA with its
    rank and targets, IA3 with its targets (the MLP's down projection feedforward), prompt tuning, prefix tuning and
    p-tuning (its MLP encoder) with their virtual tokens."""
    targets = "all-linear" if "all-linear" in run.lora_targets else list(run.lora_targets)
    name = run.adapter.name
    if name in ("lora", "qlora"):
        return peft.LoraConfig(r=run.lora_rank, lora_alpha=2 * run.lora_rank, target_modules=targets, lora_dropout=run.lora_dropout,
                               use_dora=run.use_dora, use_rslora=run.use_rslora)
    if name == "vera":
        return peft.VeraConfig(r=run.lora_rank, target_modules=targets)
    encoder = run.prompt_encoder
    if name == "prompt-tuning":
        return peft.PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=run.virtual_tokens)
    if name == "prefix-tuning":
        return peft.PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=run.virtual_tokens,
                                       prefix_projection=encoder.projection, encoder_hidden_size=encoder.hidden or None)
    if name == "p-tuning":
        return peft.PromptEncoderConfig(task_type="CAUSAL_LM", num_virtual_tokens=run.virtual_tokens,
                                        encoder_hidden_size=encoder.hidden or None)
    if name == "ia3":
        down = [lin.name.split(".")[-1] for lin in run.adapter.touches(run.model, run.lora_targets) if lin.role == "down"]
        return peft.IA3Config(target_modules=targets, feedforward_modules=down)
    # LoHa's and LoKr's training forward branches on torch.rand(1) > module_dropout (peft/tuners/loha/layer.py forward),
    # a value fake tensors do not have (aten._local_scalar_dense)
    why = " (its forward branches on a random draw, which fake tensors cannot)" if name in ("loha", "lokr") else ""
    raise ConfigError(f'run "{run.name}": method = "trace" builds LoRA, QLoRA, VeRA, IA3, prompt tuning, prefix tuning and p-tuning '
                      f'through peft; mode "{name}" is not traced{why}.', hint='Use method = "detailed" for it.')


def _with_adapters(torch, run: Run, model):
    """The run's PEFT method (_peft_config), its trainable tensors in the adapter dtype, its LoRA dropout CUDA's
    (attention.CudaDropout: a bool mask, as the detailed count has it, not the CPU's noise in the input dtype)."""
    import peft

    model = peft.get_peft_model(model, _peft_config(peft, run), autocast_adapter_dtype=False)
    for module in model.modules():
        dropouts = getattr(module, "lora_dropout", None)  # peft/tuners/lora/layer.py: one nn.Dropout per adapter
        if isinstance(dropouts, torch.nn.ModuleDict):
            for key, dropout in dropouts.items():
                if isinstance(dropout, torch.nn.Dropout):
                    dropouts[key] = attention.CudaDropout(dropout.p)
    adapter = getattr(torch, TORCH_DTYPES.get(run.adapter_dtype.name, "float32"))
    for param in model.parameters():
        if param.requires_grad:
            param.data = param.data.to(adapter)
    return model


def fake_parameters(torch, model, tracker: LiveBytes) -> None:
    """Every meta parameter and buffer replaced by a fake CPU tensor of the same shape and dtype;
    a parameter shared by two modules (tied embeddings) stays one tensor."""
    swapped: Dict[int, object] = {}
    for module in model.modules():
        for name, param in list(module._parameters.items()):
            if param is None:
                continue
            if id(param) not in swapped:
                fake = torch.nn.Parameter(torch.empty(param.shape, dtype=param.dtype), requires_grad=param.requires_grad)
                tracker.tag(fake, "weights")
                swapped[id(param)] = fake
            module._parameters[name] = swapped[id(param)]
        for name, buf in list(module._buffers.items()):
            if buf is not None:
                module._buffers[name] = torch.empty(buf.shape, dtype=buf.dtype)
                tracker.tag(module._buffers[name], "weights")


def trace_at(run: Run, arch: Architecture, layers: int) -> DepthTrace:
    """Trace ``run`` with ``arch`` cut to ``layers`` decoder layers."""
    import torch
    from torch._subclasses.fake_tensor import FakeTensorMode

    _, transformers = require_torch("method = \"trace\"")
    cut = with_depth(arch, layers) if layers != arch.num_layers else arch
    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()  # config and deprecation chatter is not the user's concern here
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return _trace(torch, transformers, FakeTensorMode, run, arch, cut, layers)
    finally:
        transformers.logging.set_verbosity(verbosity)


def _trace(torch, transformers, FakeTensorMode, run: Run, arch: Architecture, cut: Architecture, layers: int) -> DepthTrace:
    attn = _attention_name(run, arch)
    with torch.device("meta"):
        model = causal_lm(transformers, cut, run.seq_len, attn, _compute_dtype(torch, run))
    if run.adapter is not None:  # the trace builds LoRA and QLoRA adapters through peft
        model = _with_adapters(torch, run, model)
    tracker = LiveBytes(cut.vocab_size)
    with FakeTensorMode(allow_non_fake_inputs=True), tracker, attention.gpu_mask_decisions():
        tracker.start("load", "weights")
        fake_parameters(torch, model, tracker)
        tracker.stop()
        if run.trains:
            _train(torch, run, model, tracker)
        else:
            _infer(torch, run, model, tracker)
    phases = {name: tracker.composition(name) for name in tracker.peaks}
    return DepthTrace(layers, phases, attention.DESCRIPTION if attn == attention.NAME else "eager (the probabilities are saved)",
                      dict(tracker.reserved))


def _train(torch, run: Run, model, tracker: LiveBytes) -> None:
    params = [p for p in model.parameters() if p.requires_grad]
    for p in params:
        # a gradient is tagged the moment autograd accumulates it, so the backward peak counts it as one
        p.register_post_accumulate_grad_hook(lambda p: tracker.tag(p.grad, "gradients"))
    master = None
    if run.precision == "mixed" and params and params[0].dtype != torch.float32:
        tracker.start("optimizer init", "master_weights")  # built with the optimizer, after loading
        master = [p.detach().float() for p in params]
        for copy in master:
            tracker.tag(copy, "master_weights")
        tracker.stop()
    stepped = run
    if run.optimizer.name not in ("adamw", "adam", "sgd", "sgd-momentum"):
        stepped = run._replace(optimizer=run.optimizer._replace(name="adamw"))  # bitsandbytes: its states are the analytic term
    optimizer = optimizer_for(torch, stepped, master if master is not None else params, run.knobs.optimizer_impl)
    if run.gradient_checkpointing:
        checkpointing(model)
    model.train()
    ids = torch.zeros((run.batch_size, run.seq_len), dtype=torch.long)
    # amp's fp32 weights, or a 16-bit model the trainer runs under autocast (Run.autocast: PEFT's fp32 adapters compute in 16 bit)
    amp = (run.precision == "amp" and run.mode == "train") or (run.autocast and run.mode != "inference")
    # A whole warm-up step: its forward and backward leave nothing allocated but the optimizer states, yet the
    # caching allocator keeps every segment they reserved, so the measured step reuses that pool (the steady state).
    tracker.start("warm-up step", "optimizer_states")
    _forward_backward(torch, run, model, ids, amp, tracker, marks=False)
    _optimizer_step(torch, optimizer, params, master, tracker)
    optimizer.zero_grad(set_to_none=True)
    model.zero_grad(set_to_none=True)
    tracker.start("backward")
    _forward_backward(torch, run, model, ids, amp, tracker, marks=True)
    tracker.start("optimizer step", "optimizer_step")
    _optimizer_step(torch, optimizer, params, master, tracker)
    tracker.stop()


def _forward_backward(torch, run: Run, model, ids, amp: bool, tracker: LiveBytes, marks: bool) -> None:
    """One forward and backward, the loss only kept (Trainer.compute_loss), or the whole output where the profile's
    loop holds it (Profile.holds_output: out = model(...); out.loss.backward(); del out); ``marks``: record the saved set."""
    half = getattr(torch, TORCH_DTYPES[run.dtype.name]) if run.precision == "amp" else _compute_dtype(torch, run)
    with torch.autocast("cpu", dtype=half) if amp else contextlib.nullcontext():
        out = model(input_ids=ids, labels=ids)
    loss, held = out.loss, (out if run.knobs.holds_output else None)
    del out
    if marks:
        tracker.mark("forward end")  # what autograd saved, with the loss, before backward frees any of it
    loss.backward()
    del loss, held  # the held output goes once backward is done
    if marks:
        tracker.mark("backward end")  # every gradient alive: the backward peak of a deep model (trace/estimate.py extrapolate)


def _optimizer_step(torch, optimizer, params, master, tracker: LiveBytes) -> None:
    """The step; under mixed precision each gradient is cast onto its fp32 master first, and the
    stepped masters are copied back into the 16-bit weights."""
    if master is not None:
        for p, copy in zip(params, master):
            copy.grad = None if p.grad is None else p.grad.float()  # a parameter the loss does not reach has none
            tracker.tag(copy.grad, "gradients")
            p.grad = None
    optimizer.step()
    for state in optimizer.state.values():
        for value in state.values():
            if torch.is_tensor(value):
                tracker.tag(value, "optimizer_states")
    if master is not None:
        with torch.no_grad():
            for p, copy in zip(params, master):
                p.copy_(copy)


def _infer(torch, run: Run, model, tracker: LiveBytes) -> None:
    model.eval()
    prompt = run.prompt_len or run.seq_len
    ids = torch.zeros((run.batch_size, prompt), dtype=torch.long)
    keep = {} if run.logits == "all" else {"logits_to_keep": 1}
    with torch.no_grad():
        tracker.start("prefill")
        out = model(input_ids=ids, use_cache=True, **keep)
        _tag_cache(torch, out.past_key_values, tracker)
        tracker.stop()
        if run.new_tokens:
            tracker.start("decode")
            cache, step_ids = out.past_key_values, ids[:, -1:]
            del out
            for _ in range(run.new_tokens):
                # generate() keeps the last position's scores in fp32 (generation/utils.py _sample)
                logits = model(input_ids=step_ids, past_key_values=cache, use_cache=True, logits_to_keep=1).logits
                tracker.tag(logits[:, -1, :].float(), "logits")  # alive while sampling, freed before the next token
                del logits
                _tag_cache(torch, cache, tracker)
            tracker.stop()


def _tag_cache(torch, cache: Optional[object], tracker: LiveBytes) -> None:
    """Each tensor a cache layer holds (keys, values, or a Mamba layer's states) is KV cache."""
    for layer in getattr(cache, "layers", []):
        for value in vars(layer).values():
            items = value.values() if isinstance(value, dict) else [value]
            for item in items:
                if torch.is_tensor(item):
                    tracker.tag(item, "kv_cache")
