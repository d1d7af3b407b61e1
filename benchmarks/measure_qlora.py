"""QLoRA as it runs through bitsandbytes on the CPU, for benchmarks/measure_adapters.py (issue 26).

A case with a ``"bnb"`` table is built as transformers loads a 4-bit checkpoint: the random cut model is saved,
then loaded with ``BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type, bnb_4bit_use_double_quant,
bnb_4bit_compute_dtype=bf16)`` (bitsandbytes' CPU backend quantises it), optionally passed through
``peft.prepare_model_for_kbit_training`` (``"kbit_prepare"``), then through ``peft.get_peft_model``.

What the CPU keeps that saved-tensor hooks do not see: ``MatMul4Bit`` (bitsandbytes/autograd/_functions.py) keeps
its state as Python attributes of its ctx (``ctx.tensors``), not through ``save_for_backward``. bitsandbytes up to
0.43.1 kept the linear's input there (``ctx.tensors = (A, B)``, _functions.py:523 at 0.43.1; removed by #1270,
commit 9e753741, first released in 0.43.2). ``"bitsandbytes_version": "0.43.1"`` runs the installed
MatMul4Bit with that one line as 0.43.1 had it; the graph walk below finds every ctx.tensors storage that the
hooks did not record. A ctx attribute is not freed by backward (only saved variables are): ``held_after_backward``
is what the graph still holds once backward has run, for as long as the trainer keeps a reference to it.
Weights count the quant state beside the packed bytes: absmax, the code table and, with double quantisation,
the second-level absmax, code and offset (bitsandbytes/functional.py QuantState).
"""

import gc
import tempfile
import weakref
from typing import Any, Dict, Tuple


def _old_forward(original):
    """MatMul4Bit.forward keeping the input in ctx.tensors, as bitsandbytes <= 0.43.1 did (_functions.py:523)."""

    def forward(ctx, A, B, out=None, bias=None, quant_state=None):
        output = original(ctx, A, B, out, bias, quant_state)
        if any(ctx.needs_input_grad[:2]):
            ctx.tensors = (A, ctx.tensors[1])
        return output

    return staticmethod(forward)


def version_keeps_input(version: str) -> bool:
    parts = tuple(int(p) for p in version.split(".")[:3])
    return parts < (0, 43, 2)


def load(torch, transformers, peft, cfg: Dict[str, Any], case: Dict[str, Any], attn: str, build):
    """The 4-bit model of ``case`` (its "bnb" table), kbit-prepared if asked, with the case's LoRA."""
    from bitsandbytes.autograd import _functions

    bnb = case["bnb"]
    if not hasattr(_functions.MatMul4Bit, "_installed_forward"):
        _functions.MatMul4Bit._installed_forward = _functions.MatMul4Bit.forward
    installed = _functions.MatMul4Bit._installed_forward
    keeps = version_keeps_input(bnb.get("bitsandbytes_version", "0.50.2"))
    _functions.MatMul4Bit.forward = _old_forward(installed) if keeps else staticmethod(installed)
    # "compute_dtype": bnb_4bit_compute_dtype and the dtype the rest loads in, the same as qlora.py sets them
    # (fp32 without --bf16/--fp16); bf16 unless the case names it
    compute = {"bf16": torch.bfloat16, "fp32": torch.float32}[bnb.get("compute_dtype", "bf16")]
    with tempfile.TemporaryDirectory() as folder:
        build(torch, transformers, cfg, torch.bfloat16, attn).save_pretrained(folder)
        gc.collect()
        quant = transformers.BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=bnb.get("quant_type", "nf4"),
                                                bnb_4bit_use_double_quant=bnb.get("double_quant", False),
                                                bnb_4bit_compute_dtype=compute)
        model = transformers.AutoModelForCausalLM.from_pretrained(folder, quantization_config=quant, dtype=compute,
                                                                  device_map="cpu", attn_implementation=attn)
    if bnb.get("kbit_prepare"):
        model = peft.prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    return peft.get_peft_model(model, peft.LoraConfig(**case["peft"]))


def quant_state_bytes(model) -> int:
    """Bytes of every Linear4bit's quant state (absmax, code; nested: state2 absmax and code, offset)."""
    import bitsandbytes as bnb

    total = 0
    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit):
            state = module.weight.quant_state
            total += state.absmax.nbytes + state.code.nbytes
            if state.nested:
                total += state.state2.absmax.nbytes + state.state2.code.nbytes + state.offset.nbytes
    return total


def ctx_tensors(torch, loss, skip) -> Dict[int, int]:
    """Storages held in MatMul4Bit ctx.tensors of the graph of ``loss`` (bytes by storage), less ``skip``."""
    found: Dict[int, int] = {}
    seen, stack = set(), [loss.grad_fn]
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        if "MatMul4Bit" in type(node).__name__:
            for tensor in getattr(node, "tensors", None) or ():
                if torch.is_tensor(tensor):
                    storage = tensor.untyped_storage()
                    if storage.data_ptr() not in skip:
                        found[storage.data_ptr()] = storage.nbytes()
        stack.extend(fn for fn, _ in node.next_functions)
    return found


def step(torch, model, ids, adapters, freed: Dict[str, int]) -> Tuple[Dict[str, int], int]:
    """One step's terms as measure_families counts them, plus ctx.tensors, and what the graph holds after backward.
    ``freed`` receives the saved bytes whose graph the forward itself dropped (QDoRA's weight norm, as
    measure_families._train_step records DoRA's): transient, not kept for backward."""
    params = list(model.parameters())
    storages = {p.untyped_storage().data_ptr() for p in params}
    saved: Dict[int, int] = {}
    alive: Dict[int, list] = {}  # storage -> weak references to the saved tensors on it
    dropped = 0

    def pack(tensor):
        nonlocal dropped
        ptr = tensor.untyped_storage().data_ptr()
        if ptr in alive and not any(ref() is not None for ref in alive[ptr]):
            dropped += saved.pop(ptr)  # the storage counted at this address was freed and the address reused
            del alive[ptr]
        if ptr not in storages:
            saved.setdefault(ptr, tensor.untyped_storage().nbytes())
            alive.setdefault(ptr, []).append(weakref.ref(tensor))
        return tensor

    model.train()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        out = model(input_ids=ids, labels=ids, use_cache=False)
    gc.collect()
    freed["bytes"] = dropped + sum(saved[ptr] for ptr, refs in alive.items() if not any(ref() is not None for ref in refs))
    saved_total = sum(saved.values()) + dropped
    held = ctx_tensors(torch, out.loss, storages | set(saved))
    terms = {"saved_activations": saved_total + sum(held.values()), "logits": out.logits.nbytes}
    out.loss.backward()
    after = sum(ctx_tensors(torch, out.loss, storages).values())
    del out
    optimizer = torch.optim.AdamW(adapters, lr=1e-5)
    optimizer.step()
    terms["gradients"] = sum(p.grad.nbytes for p in params if p.grad is not None)
    terms["optimizer_states"] = sum(v.nbytes for s in optimizer.state.values() for v in s.values() if torch.is_tensor(v) and v.dim() > 0)
    return terms, after
