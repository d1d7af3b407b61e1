"""The built-in dtypes, optimizers, GPUs and model families, registered through the same hooks a plugin uses.

PYTEST_DONT_REWRITE: no asserts here; pytest need not rewrite this plugin module.
"""

from __future__ import annotations

from .catalog import GPU, DType, Optimizer
from .hookspecs import hookimpl
from .units import MiB

# NF4 as bitsandbytes stores it for QLoRA: 4 bits per weight, one 8-bit absmax per block of 64,
# and (double quantisation) one fp32 scale per 256 blocks: 0.5 + 1/64 + 4/(64*256) B/param
# (Dettmers et al. 2023, QLoRA, section 3: "0.127 bits per parameter" of constants).
NF4_BYTES = 0.5 + 1 / 64 + 4 / (64 * 256)
# bitsandbytes 4-bit without double quantisation (load_in_4bit defaults): 0.5 B plus one fp32
# absmax per block of 64 weights (bitsandbytes functional.quantize_4bit, blocksize=64).
INT4_BYTES = 0.5 + 4 / 64
# MXFP4 (OCP Microscaling Formats v1.0, section 5: FP4 E2M1 elements in blocks of 32 sharing one
# 8-bit E8M0 scale): 4 + 8/32 = 4.25 bits per weight, as gpt-oss ships its expert weights.
MXFP4_BYTES = 4.25 / 8


@hookimpl
def llmmem_register_dtypes(register):
    register(DType("fp32", 4, 4, aliases=("float32", "float", "f32"), doc="IEEE single precision"))
    register(DType("tf32", 4, 4, aliases=("tensorfloat32",), doc="fp32 storage, TF32 matmuls"))
    register(DType("fp16", 2, 2, aliases=("float16", "half", "f16"), doc="IEEE half precision"))
    register(DType("bf16", 2, 2, aliases=("bfloat16",), doc="bfloat16"))
    register(
        DType("fp8", 1, 2, quantized=True, aliases=("float8", "e4m3", "fp8-e4m3"), doc="8-bit float weights, 16-bit compute")
    )
    # LLM.int8 adds one fp32 scale per output row: under 0.1 % for hidden sizes >= 4096 (Dettmers 2022).
    register(DType("int8", 1, 2, quantized=True, aliases=("llm.int8", "8bit"), doc="bitsandbytes LLM.int8 weights"))
    register(DType("int4", INT4_BYTES, 2, seed_bytes=0.5, quantized=True, aliases=("fp4", "4bit"), doc="bitsandbytes 4-bit, blocksize 64"))
    register(DType("mxfp4", MXFP4_BYTES, 2, quantized=True, aliases=("mx-fp4",), doc="OCP MX FP4 (gpt-oss experts): 4 bits + one 8-bit scale per 32"))
    register(DType("nf4", NF4_BYTES, 2, seed_bytes=0.5, quantized=True, aliases=("normalfloat4",), doc="QLoRA NF4, double quantisation"))


@hookimpl
def llmmem_register_optimizers(register):
    # torch.optim.AdamW / Adam: exp_avg and exp_avg_sq, each the size of the parameter.
    register(Optimizer("adamw", 2, aliases=("adamw-torch", "adamw-torch-fused", "adamw-hf"), doc="torch.optim.AdamW"))
    register(Optimizer("adam", 2, doc="torch.optim.Adam"))
    register(Optimizer("sgd", 0, doc="plain SGD, no momentum buffer"))
    register(Optimizer("sgd-momentum", 1, aliases=("momentum",), doc="SGD with a momentum buffer"))
    # Lion keeps one momentum tensor (Chen et al. 2023, Symbolic Discovery of Optimization Algorithms).
    register(Optimizer("lion", 1, doc="Lion"))
    # bitsandbytes 8-bit AdamW: two uint8 states plus one fp32 absmax per block of 256
    # (bitsandbytes/optim/optimizer.py:524 Optimizer2State.init_state, blocksize = 256); tensors under
    # 4096 elements keep fp32 states (:502, min_8bit_size=4096; Dettmers 2022, 8-bit Optimizers).
    eight_bit = dict(states=2, state_bytes=1 + 4 / 256, small_tensor_numel=4096)
    register(Optimizer("adamw-8bit", aliases=("adam8bit", "adamw8bit", "bnb-adamw-8bit"), doc="bitsandbytes AdamW8bit", **eight_bit))
    # Paged variants: states of 1e5+ elements in CUDA unified memory, evicted to host under pressure
    # (bitsandbytes/optim/optimizer.py:383 get_state_buffer -> F.get_paged).
    register(Optimizer("paged-adamw-8bit", aliases=("pagedadamw8bit",), doc="bitsandbytes PagedAdamW8bit", paged=True, **eight_bit))
    # 32-bit paged AdamW keeps fp32 states whatever the weights' dtype (optim_bits=32, optimizer.py:496).
    register(Optimizer("paged-adamw", 2, state_bytes=4, paged=True, aliases=("pagedadamw", "paged-adamw-32bit"), doc="bitsandbytes PagedAdamW"))
    # Adafactor (Shazeer & Stern 2018) with beta1=None: a matrix keeps row and column second-moment vectors.
    register(Optimizer("adafactor", 1, state_bytes=4, factored=True, doc="Adafactor, factored second moments, no momentum"))


@hookimpl
def llmmem_register_families(register):
    from .families import builtin_families  # the table is built only when a family is looked up

    for fam in builtin_families():
        register(fam)


# Capacities are what the driver reports as total memory (nvidia-smi "MiB"), which is what a
# process can fill: an "80GB" A100 shows 81920 MiB = 80 GiB, i.e. vendors' "GB" here means GiB.
@hookimpl
def llmmem_register_gpus(register):
    register(GPU("A100-40GB", 40960 * MiB, aliases=("a100-40g", "a100-sxm4-40gb", "a100-pcie-40gb")))
    register(GPU("A100-80GB", 81920 * MiB, aliases=("a100", "a100-80g", "a100-sxm4-80gb", "a100-pcie-80gb")))
    register(GPU("H100-80GB", 81559 * MiB, aliases=("h100", "h100-sxm", "h100-pcie", "h100-80g", "h100-80gb-hbm3")))
    register(GPU("H100-94GB", 95830 * MiB, aliases=("h100-nvl", "h100-94g")))
    register(GPU("H200-141GB", 143771 * MiB, aliases=("h200", "h200-141g")))
    register(GPU("B200", 183359 * MiB, aliases=("b200-180gb", "b200-192gb")))
    register(GPU("L4", 23034 * MiB, aliases=("l4-24gb",)))
    register(GPU("L40S", 46068 * MiB, aliases=("l40s-48gb",)))
    register(GPU("A10G", 23028 * MiB, aliases=("a10g-24gb",)))
    register(GPU("T4", 15360 * MiB, aliases=("t4-16gb", "tesla-t4")))
    # 16160 MiB: the Tesla V100-SXM2 16GB in Hugging Face's model-memory-anatomy measurements.
    register(GPU("V100-16GB", 16160 * MiB, aliases=("v100", "v100-16g", "tesla-v100-sxm2-16gb")))
    register(GPU("V100-32GB", 32768 * MiB, aliases=("v100-32g",)))
    register(GPU("RTX-3090", 24576 * MiB, aliases=("3090", "rtx3090", "geforce-rtx-3090")))
    register(GPU("RTX-4090", 24564 * MiB, aliases=("4090", "rtx4090", "geforce-rtx-4090")))
    register(GPU("RTX-5090", 32607 * MiB, aliases=("5090", "rtx5090", "geforce-rtx-5090")))
    # MI300X: 192 GB HBM3; rocm-smi reports 205822885888 bytes of VRAM.
    register(GPU("MI300X", 205822885888, aliases=("mi300x-192gb", "instinct-mi300x")))

