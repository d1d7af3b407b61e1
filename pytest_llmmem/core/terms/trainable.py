"""What a training run trains, layer by layer: the record the activation counts ask whether a module's
input stays alive for backward (full training, an adapter on some modules, modules trained whole beside
it, fused kernels, a 4-bit base that keeps its input). Split from :mod:`.activations`.

PYTEST_DONT_REWRITE: no asserts here; pytest need not rewrite this plugin module.
"""

from __future__ import annotations

from typing import Any, Dict, FrozenSet, Tuple

from ...model.adapters import lora_autocast_saved, lora_saved, module_kept
from ...model.layers import Linear
from ...record import Record

FP32 = 4


class Trainable(Record):
    """Which weights get gradients: everything (full training) or an adapter on some modules."""

    full: bool
    adapted: FrozenSet[str] = frozenset()  # module names with an adapter
    adapter_bytes: int = FP32  # PEFT keeps adapters in fp32 by default
    experts: Tuple[Linear, ...] = ()  # adapted 3D routed-expert parameters (Linear.wrap == "param")
    rank: int = 0  # the adapter's rank, for what an adapted expert parameter keeps
    adapter: Any = None  # the adapters.Adapter that says what an adapted module keeps (adapters.lora_saved)
    dropout: bool = False  # lora-dropout > 0: each adapted module has a dropout of its own
    no_grad_inputs: FrozenSet[str] = frozenset()  # modules of this layer whose input needs no gradient
    whole: FrozenSet[str] = frozenset()  # modules trained in full beside the adapter (modules-to-save)
    kernels: FrozenSet[str] = frozenset()  # parts replaced by fused kernels (catalog/kernels.py PARTS)
    modules: Tuple[Tuple[str, Linear], ...] = ()  # (adapted module, its linear), for what scales with its shape (DoRA, IA3)
    one_qkv_dropout: bool = False  # q, k and v share one dropout on their common input (litgpt's fused qkv adapter)
    base_keeps_input: bool = False  # each 4-bit base linear keeps its input (bitsandbytes <= 0.43.1, MatMul4Bit ctx.tensors)
    base_cast: int = 0  # bytes per element of the 4-bit base's own cast of its input, where its dtype is not the compute dtype
    kv_grad: bool = False  # every attention's keys and values need a gradient, whatever its inputs (a trained prefix)
    autocast: bool = False  # a 16-bit base's forward under torch.autocast (Run.autocast): LoRA's fp32 adapters compute in 16 bit

    def _lora_saved(self):
        """The adapter's ``saved``, or plain LoRA's under autocast over a 16-bit base (adapters.lora_autocast_saved); DoRA,
        the other methods and a 4-bit base (PEFT's bnb layers skip the fp32 cast under autocast) keep theirs."""
        if self.autocast and self.adapter.saved is lora_saved and not self.adapter.quantized_base:
            return lora_autocast_saved
        return self.adapter.saved

    def base_keeps(self, name: str) -> bool:
        """bitsandbytes <= 0.43.1: MatMul4Bit keeps the input of the 4-bit linear ``name`` where it needs a gradient
        (``if any(ctx.needs_input_grad[:2]): ctx.tensors = (A, B)``, autograd/_functions.py:523 at 0.43.1); transformers
        leaves the head unquantised (integrations/bitsandbytes.py get_keys_to_not_convert)."""
        return self.base_keeps_input and name not in self.no_grad_inputs and name != "lm_head"

    def cast_copy(self, name: str, width: int) -> int:
        """Bytes per token of the 4-bit base's own cast of its input (Linear4bit.forward ``x.to(self.compute_dtype)``,
        nn/modules.py:465 at 0.43.1), kept per linear by MatMul4Bit where it keeps inputs (kbit-prepare: an fp32 stream)."""
        return width * self.base_cast if self.base_cast and self.base_keeps(name) else 0

    def fast_lora(self, names) -> bool:
        """Unsloth's LoRA autograd covers these modules: all of them adapted, no dropout; or fms-acceleration's, which
        takes dropout too (catalog/kernels.py ``foak-lora``)."""
        fused = ("fast-lora" in self.kernels and not self.dropout) or "foak-lora" in self.kernels
        return fused and not self.full and bool(names) and all(n in self.adapted for n in names)

    def fused_dropped(self, names, width: int, act: int) -> int:
        """Bytes per token the fused LoRA autograd keeps of its own for each module's dropped input (``width`` wide, in
        the input's dtype): fms-acceleration's matmul_lora hands ``dropout.X`` to save_for_backward (unsloth_lora/
        utils.py:262-269; bnb/fast_lora.py:289-292, :421, :97-100 @ 733992a); none without dropout (``_dropped_X`` is X)
        or under Unsloth's own kernel (dropout 0 only)."""
        if not (self.dropout and "foak-lora" in self.kernels and self.fast_lora(names)):
            return 0
        return len(names) * width * act

    def _saved(self, name: str, width: int, act: int) -> Any:
        """What the adapter on ``name`` keeps (adapters.Saved), by module where the adapter says it differs."""
        lin = dict(self.modules).get(name)
        if self.adapter.saved_on is not None and lin is not None:
            return self.adapter.saved_on(lin, self.rank, self.adapter_bytes, act, self.dropout)
        return self._lora_saved()(width, self.rank, self.adapter_bytes, act, self.dropout)

    def adapter_kept(self, name: str, width: int, act: int, tokens: int) -> int:
        """Bytes the adapter on ``name`` (input ``width`` wide) keeps of its own for backward over ``tokens`` tokens."""
        if name not in self.adapted:
            return 0
        lin = dict(self.modules).get(name)
        return module_kept(self._saved(name, width, act), width, lin.d_out if lin else 0, tokens, name not in self.no_grad_inputs)

    def shared_dropout_saved(self, names, width: int, act: int) -> int:
        """Bytes per token over-counted when ``names`` (q, k, v) share one dropout: litgpt's LoRAQKVLinear
        applies one lora_dropout to the input of the fused qkv projection (litgpt/lora.py:405, ``after_A =
        F.linear(self.lora_dropout(x), self.lora_A)`` with one lora_A of r x enabled rows, :233), where PEFT
        and torchtune have one per module: the output and mask are kept once, not once per adapted module."""
        adapted = [n for n in names if n in self.adapted]
        if not (self.one_qkv_dropout and self.dropout and len(adapted) > 1):
            return 0
        saved = self._lora_saved()(width, self.rank, self.adapter_bytes, act, self.dropout)
        mask = 0 if adapted[0] in self.no_grad_inputs else saved.mask_per_token
        return (len(adapted) - 1) * (saved.dropout_per_token + mask)

    def keeps_input(self, name: str, act: int) -> bool:
        """Does the base input of ``name`` stay alive for backward (trainable weight, or an adapter that keeps it)?"""
        return self.full or name in self.whole or (name in self.adapted and self._saved(name, 0, act).keeps_input) \
            or (self.base_keeps(name) and not self.base_cast)

    def untouched(self, names) -> bool:
        """No gradient reaches these modules: their inputs need none (the first layer's) and none of them trains."""
        return not self.full and all(n in self.no_grad_inputs and n not in self.adapted and n not in self.whole for n in names)

    def first_layer(self, linears: Dict[str, Linear]) -> "Trainable":
        """In the first layer of an adapter run the input comes from the frozen embedding: a module's input
        needs a gradient only once an adapted module before it in the layer made one (attention inputs,
        o_proj, MLP inputs, down_proj, in that order); a trained prefix (kv_grad) makes one in the attention itself."""
        stages = (("qkv", "q", "k", "v", "in", "q_a", "kv_a"), ("o",), ("gate_up", "gate", "up"), ("down",))
        no_grad, grad = set(), False
        for roles in stages:
            names = {linears[r].name for r in roles if r in linears}
            if not grad:
                no_grad |= names
            grad = grad or bool(names & self.adapted) or (self.kv_grad and "qkv" in roles)
        return self._replace(no_grad_inputs=frozenset(no_grad))
