"""fms-acceleration's fused LoRA (LoRA_QKV, LoRA_W) against PEFT's q/k/v/o: bytes kept for backward, CPU, real tensors.

The plugin's own source at 733992a (fused_ops/unsloth_lora/utils.py, bnb/fast_lora.py, swiglu.py, geglu.py) is read
from a git checkout of foundation-model-stack/fms-acceleration; triton is stubbed (the 16-bit path, W_quant None, calls
no kernel: utils.py:81-82 fast_dequantize returns W). A 2-layer Llama, h 256, bf16, r 16 on q/k/v/o, dropout 0.1,
fp32 adapters, with and without bf16 autocast (the HF Trainer's). The layer input is handed in as a fresh tensor, as
the norm's output is in a layer.

    .venv/bin/python benchmarks/measure_foak_lora.py GIT_DIR   # torch 2.13.0, transformers 4.45.2, peft 0.13.2

Measured: PEFT 33.000 B x h a token (CPU: dropout keeps an fp32 noise tensor where CUDA keeps a 1-byte mask), under
autocast 25.375; the fused LoRA 10.000 either way (X and the three dropped X of LoRA_QKV, LoRA_W's dropped X, 2 B each).
"""
import contextlib
import pathlib
import subprocess
import sys
import tempfile
import types

COMMIT = "733992ae7355567805de92eacf4a9973c8fd4164"
SRC = "plugins/fused-ops-and-kernels/src/fms_acceleration_foak/fused_ops/unsloth_lora"
H, B, S = 256, 2, 128


class _Stub(types.ModuleType):
    """triton and triton.language: decorators that return the function, any other attribute a placeholder."""

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        if name in ("jit", "autotune", "heuristics"):
            return lambda *a, **kw: a[0] if a and callable(a[0]) and not kw else (lambda f: f)
        return object


def load(git_dir: str) -> types.ModuleType:
    root = pathlib.Path(tempfile.mkdtemp()) / "fms_acceleration_foak" / "fused_ops" / "unsloth_lora"
    (root / "bnb").mkdir(parents=True)
    for init in (root.parent.parent, root.parent, root, root / "bnb"):
        (init / "__init__.py").touch()
    for name in ("utils.py", "bnb/fast_lora.py", "swiglu.py", "geglu.py"):
        text = subprocess.run(["git", "--git-dir", git_dir, "show", f"{COMMIT}:{SRC}/{name}"], check=True,
                              capture_output=True, text=True).stdout
        (root / name).write_text(text)
    triton, language = _Stub("triton"), _Stub("triton.language")
    triton.language, triton.next_power_of_2 = language, lambda n: 1 << (n - 1).bit_length()
    sys.modules.update({"triton": triton, "triton.language": language})
    sys.path.insert(0, str(root.parent.parent.parent))
    import torch
    import fms_acceleration_foak.fused_ops.unsloth_lora.utils as utils
    utils.torch = torch  # utils.py imports torch only under its bitsandbytes guard (:34-39)
    import fms_acceleration_foak.fused_ops.unsloth_lora.bnb.fast_lora as fast_lora
    return fast_lora


def main() -> None:
    fast_lora = load(sys.argv[1])
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(hidden_size=H, intermediate_size=704, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                      vocab_size=512)
    model = get_peft_model(LlamaForCausalLM(cfg).to(torch.bfloat16),
                           LoraConfig(r=16, lora_alpha=16, lora_dropout=0.1, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"]))
    model.train()
    attn = model.base_model.model.model.layers[1].self_attn
    assert attn.q_proj.lora_A["default"].weight.dtype == torch.float32
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    x = torch.randn(B, S, H, dtype=torch.bfloat16, requires_grad=True)

    def kept(fn, amp: bool) -> float:
        seen = {}

        def pack(t):
            ptr = t.untyped_storage().data_ptr()
            if ptr not in params and ptr != x.untyped_storage().data_ptr():
                seen[ptr] = t.untyped_storage().nbytes()
            return t

        ctx = torch.autocast("cpu", dtype=torch.bfloat16) if amp else contextlib.nullcontext()
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), ctx:
            fn(x * 1)  # a fresh input, as the norm's output is
        return sum(seen.values()) / (B * S * H)

    peft = lambda y: [attn.q_proj(y), attn.k_proj(y), attn.v_proj(y), attn.o_proj(y)]
    fused = lambda y: [fast_lora.apply_lora_qkv(attn, y), fast_lora.apply_lora_o_v2(attn.o_proj, y)]
    for amp in (False, True):
        print(f"autocast {amp}: PEFT q/k/v/o keep {kept(peft, amp):.3f} B x h a token, the fused LoRA {kept(fused, amp):.3f}")


if __name__ == "__main__":
    main()
