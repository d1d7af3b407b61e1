"""What one PEFT LoRA decoder layer keeps for backward with and without the HF Trainer's bf16 autocast (CPU, real tensors).

The HF Trainer with ``bf16=True`` sets ACCELERATE_MIXED_PRECISION=bf16 (transformers 4.45.2 training_args.py:1798-1805) and
prepares the model with accelerate (trainer.py:2189-2204), whose prepare_model wraps forward in torch.autocast
(accelerate 1.0.1 accelerator.py:1413-1424), a bf16 model included. PEFT 0.13.2's Linear.forward casts x to the fp32
adapter's dtype and runs lora_B(lora_A(dropout(x))) (peft/tuners/lora/layer.py:581-584); under autocast lora_A's linear
keeps a bf16 cast of the fp32 dropout output, not the fp32 output itself.

    .venv/bin/python benchmarks/measure_lora_autocast.py   # torch 2.13.0, transformers 4.45.2, peft 0.13.2

Prints the bytes each layer keeps (distinct storages, saved_tensors_hooks), per token, in units of the hidden size.
"""
import contextlib

import torch
from peft import LoraConfig, get_peft_model
from transformers import LlamaConfig, LlamaForCausalLM

H, F, B, S = 256, 704, 2, 128


def saved_bytes(layer, x, pos, autocast: bool) -> int:
    seen = {}

    def pack(t):
        if isinstance(t, torch.Tensor) and not isinstance(t, torch.nn.Parameter) and t.untyped_storage().nbytes():
            seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    ctx = torch.autocast("cpu", dtype=torch.bfloat16) if autocast else contextlib.nullcontext()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), ctx:
        layer(x, position_embeddings=pos)
    params = {p.untyped_storage().data_ptr() for p in layer.parameters()}
    return sum(v for k, v in seen.items() if k not in params and k != x.untyped_storage().data_ptr())


def main() -> None:
    torch.manual_seed(0)
    cfg = LlamaConfig(hidden_size=H, intermediate_size=F, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                      vocab_size=512, attn_implementation="sdpa", torch_dtype=torch.bfloat16)
    model = LlamaForCausalLM(cfg).to(torch.bfloat16)
    model = get_peft_model(model, LoraConfig(r=16, lora_alpha=16, lora_dropout=0.1, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"]))
    model.train()
    inner = model.base_model.model.model
    layer = inner.layers[1]
    assert layer.self_attn.q_proj.lora_A["default"].weight.dtype == torch.float32
    x = torch.randn(B, S, H, dtype=torch.bfloat16, requires_grad=True)
    pos = inner.rotary_emb(x, torch.arange(S).unsqueeze(0).expand(B, S))
    tokens = B * S
    plain, amp = saved_bytes(layer, x, pos, False), saved_bytes(layer, x, pos, True)
    print(f"no autocast: {plain:,} B = {plain / tokens / H:.3f} B x h a token")
    print(f"bf16 autocast: {amp:,} B = {amp / tokens / H:.3f} B x h a token")
    print(f"difference: {(plain - amp) / tokens / H:.3f} B x h a token (4 adapted modules)")


if __name__ == "__main__":
    main()
