"""The built-in dtypes, optimizers, GPUs, model families, adapters, engines, trainer profiles,
trainer-config readers and post-training recipes, registered through the same hooks a plugin uses.

The functions below are the built-ins' hook implementations. They carry no ``@hookimpl`` here: that
marker imports pluggy, which ``llmmem check`` does not load until a plugin is in play
(:class:`pytest_llmmem.catalog.Catalog` calls them directly until then, and marks them with
``hookspecs.hookimpl`` when it registers them with pluggy beside the plugins).

PYTEST_DONT_REWRITE: no asserts here; pytest need not rewrite this plugin module.
"""

from __future__ import annotations

from ..model.methods import BUILTIN as BUILTIN_ADAPTERS
from .entries import GPU, AmbiguousName, DType, Engine, Optimizer, Reader, Recipe
from .profiles import PROFILES
from ..units import GiB, MiB

# NF4 as bitsandbytes stores it for QLoRA: 4 bits per weight, one 8-bit absmax per block of 64,
# and (double quantisation) one fp32 scale per 256 blocks: 0.5 + 1/64 + 4/(64*256) B/param
# (Dettmers et al. 2023, QLoRA, section 3: "0.127 bits per parameter" of constants).
NF4_BYTES = 0.5 + 1 / 64 + 4 / (64 * 256)
# bitsandbytes 4-bit without double quantisation (load_in_4bit defaults): 0.5 B plus one fp32
# absmax per block of 64 weights (bitsandbytes functional.quantize_4bit, blocksize=64).
INT4_BYTES = 0.5 + 4 / 64
# GPTQ 4-bit as AutoGPTQ / GPTQModel's QuantLinear stores it (fms-acceleration's copy:
# plugins/accelerated-peft/src/fms_acceleration_peft/gptqmodel/nn_modules/qlinear/qlinear_tritonv2.py:67-93):
# qweight int32 (in/32*4, out) = 0.5 B a weight, and per group of 128 input rows an fp16 scale and a
# 4-bit zero per output column (scales (in/g, out) fp16, qzeros (in/g, out/8) int32): 0.5 + (2 + 0.5)/128.
GPTQ_BYTES = 0.5 + (2 + 0.5) / 128
# MXFP4 (OCP Microscaling Formats v1.0, section 5: FP4 E2M1 elements in blocks of 32 sharing one
# 8-bit E8M0 scale): 4 + 8/32 = 4.25 bits per weight, as gpt-oss ships its expert weights.
MXFP4_BYTES = 4.25 / 8


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
    register(DType("gptq", GPTQ_BYTES, 2, seed_bytes=0.5, quantized=True, aliases=("autogptq", "gptq-4bit"),
                   doc="GPTQ 4-bit (AutoGPTQ / GPTQModel QuantLinear), group 128 unless gptq-group-size says"))
    register(DType("mxfp4", MXFP4_BYTES, 2, quantized=True, aliases=("mx-fp4",), doc="OCP MX FP4 (gpt-oss experts): 4 bits + one 8-bit scale per 32"))
    register(DType("nf4", NF4_BYTES, 2, seed_bytes=0.5, quantized=True, aliases=("normalfloat4",), doc="QLoRA NF4, double quantisation"))


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
    # torchao AdamW8bit (torchao/optim/adam.py, prototype/low_bit_optim/adam.py in torchao 0.7): OptimState8bit keeps
    # uint8 codes and one fp32 scale per block of 256 (subclass_8bit.py OptimState8bit.zeros, block_size=256); a tensor
    # under 4096 elements (or not a multiple of 256) keeps zeros_like(p), the parameter's dtype (_AdamBase._new_buffer).
    # Its step is torch.compile(single_param_adam) per parameter, which keeps exp_avg_f32 and exp_avg_sq_f32 "for the
    # param update": Inductor materialises both, 2 x fp32 of the parameter stepped (measured on the CPU:
    # benchmarks/data/compile-cpu.jsonl torchao-adamw8bit-step, 8.03 B per element).
    register(Optimizer("torchao-adamw-8bit", aliases=("ao-adamw-8bit", "torchao-adamw8bit"), doc="torchao AdamW8bit",
                       small_in_param_dtype=True, step_bytes_per_element=2 * (4 + 4 / 256), **eight_bit))
    # Paged variants: states of 1e5+ elements in CUDA unified memory, evicted to host under pressure
    # (bitsandbytes/optim/optimizer.py:383 get_state_buffer -> F.get_paged).
    register(Optimizer("paged-adamw-8bit", aliases=("pagedadamw8bit",), doc="bitsandbytes PagedAdamW8bit", paged=True, **eight_bit))
    # 32-bit paged AdamW keeps fp32 states whatever the weights' dtype (optim_bits=32, optimizer.py:496).
    register(Optimizer("paged-adamw", 2, state_bytes=4, paged=True, aliases=("pagedadamw", "paged-adamw-32bit"), doc="bitsandbytes PagedAdamW"))
    # Adafactor (Shazeer & Stern 2018) with beta1=None: a matrix keeps row and column second-moment vectors.
    register(Optimizer("adafactor", 1, state_bytes=4, factored=True, doc="Adafactor, factored second moments, no momentum"))


def llmmem_register_families(register):
    from ..model.families import builtin_families  # the table is built only when a family is looked up

    for fam in builtin_families():
        register(fam)


def llmmem_register_adapters(register):
    for adapter in BUILTIN_ADAPTERS:  # model/methods.py: the LoRA-like (adapters.py) and prompt methods (prompts.py)
        register(adapter)


# Capacities are what the driver reports as total memory (nvidia-smi "MiB"; rocm-smi bytes), which is
# what a process can fill: an "80GB" A100 shows 81920 MiB = 80 GiB. Sources: nvidia-smi tables quoted in
# public issues and logs (found through the project's search tool), Modal's list of nvidia-smi totals
# (modal-labs/modal-client PR #2797), shared/validation/serving.jsonl. A name that means more than one
# card (A100, V100, H100, A6000, GH200) is an AmbiguousName: an error listing the cards, never a pick.
# Compute capabilities: NVIDIA's CUDA GPUs table (developer.nvidia.com/cuda-gpus: A100 8.0; A40, A10,
# A10G, RTX A6000, RTX 3090 8.6; L4, L40, L40S, RTX 6000 Ada, RTX 4090 8.9; H100, H200, H20, GH200 9.0;
# B100, B200, GB200 10.0; RTX 5090 12.0; GB10 12.1; T4 7.5; V100 7.0). AMD cards are not CUDA devices: none.
# cuda_total_bytes: what the CUDA runtime reports as total (cudaMemGetInfo), read from a log or message that prints it;
# set only where one was found (vLLM start-up logs, CUDA OOM messages, torch.cuda.mem_get_info on the H100).
def llmmem_register_gpus(register):
    register(GPU("A100-40GB", 40960 * MiB, aliases=("a100-40g", "a100-sxm4-40gb", "a100-pcie-40gb"), compute_capability=(8, 0), kind="nvidia datacenter"))
    # CUDA total 79.15 GiB: vLLM 0.8.2's log, "total_gpu_memory (79.15GiB)" (validation serving.jsonl)
    register(GPU("A100-80GB", 81920 * MiB, aliases=("a100-80g", "a100-sxm4-80gb", "a100-pcie-80gb", "a100-80gb-pcie"), compute_capability=(8, 0), kind="nvidia datacenter",
                 cuda_total_bytes=round(79.15 * GiB)))
    register(AmbiguousName("A100", ("A100-40GB", "A100-80GB")))
    # H100 SXM and PCIe both show 81559 MiB (Modal PR #2797: "H100: 81559MiB"); NVL 95830 MiB.
    # CUDA total 85,017,493,504 B: torch.cuda.mem_get_info() on an H100 80GB HBM3 (benchmarks/data/gpu-peaks-h100.jsonl); vLLM
    # prints 79.18 GiB, and so does a CUDA OOM on it, "total capacity of 79.18 GiB" (benchmarks/data/gpu-peaks-h100-steady.jsonl).
    register(GPU("H100-80GB", 81559 * MiB, aliases=("h100-sxm", "h100-pcie", "h100-80g", "h100-80gb-hbm3", "h100-sxm5-80gb"), compute_capability=(9, 0), kind="nvidia datacenter",
                 cuda_total_bytes=85017493504))
    register(GPU("H100-NVL", 95830 * MiB, aliases=("h100-94gb", "h100-94g", "h100-nvl-94gb"), compute_capability=(9, 0), kind="nvidia datacenter"))
    register(AmbiguousName("H100", ("H100-80GB", "H100-NVL")))
    register(GPU("H200-141GB", 143771 * MiB, aliases=("h200", "h200-141g"), compute_capability=(9, 0), kind="nvidia datacenter"))
    # "NVIDIA H20 ... 4MiB / 97871MiB" (nvidia-smi table in a public deployment guide).
    register(GPU("H20", 97871 * MiB, aliases=("h20-96gb",), compute_capability=(9, 0), kind="nvidia datacenter"))
    # GH200 96 GB HBM3: "NVIDIA GH200 480GB ... 1MiB / 97871MiB" (several public nvidia-smi tables; the
    # 480GB in the name counts the Grace LPDDR5X). GH200 144 GB HBM3e: "NVIDIA GH200 144G HBM3e, ...,
    # 146831 MiB" (nvidia-smi --query-gpu=name,memory.total output in a public setup guide).
    register(GPU("GH200-96GB", 97871 * MiB, aliases=("gh200-480gb", "gh200-120gb", "gh200-96g"), compute_capability=(9, 0), kind="nvidia datacenter"))
    register(GPU("GH200-144GB", 146831 * MiB, aliases=("gh200-144g-hbm3e", "gh200-144g", "gh200-624gb"), compute_capability=(9, 0), kind="nvidia datacenter"))
    register(AmbiguousName("GH200", ("GH200-96GB", "GH200-144GB")))
    # GB10 (DGX Spark): 128 GB LPDDR5x shared by the Grace CPU and the GPU (NVIDIA DGX Spark datasheet); there is
    # no card total: CUDA reports what the OS leaves free, which the desktop and the page cache shrink.
    register(GPU("GB10", 128 * 1024 * MiB, aliases=("dgx-spark", "gb10-spark"), compute_capability=(12, 1), kind="nvidia workstation", unified=True))
    register(GPU("B200", 183359 * MiB, aliases=("b200-180gb", "b200-192gb"), compute_capability=(10, 0), kind="nvidia datacenter"))
    # B100: no driver-reported total found; 192 GB is NVIDIA's documented HBM3e capacity, taken as
    # 192 x 10^9 bytes (the lower reading of "GB"; B200's driver total is 183359 MiB, above it).
    register(GPU("B100", 192 * 10**9, aliases=("b100-192gb",), compute_capability=(10, 0), kind="nvidia datacenter"))
    # GB200 (one Blackwell GPU of the superchip): "NVIDIA GB200 ... 0MiB / 189471MiB" (public nvidia-smi tables).
    register(GPU("GB200", 189471 * MiB, aliases=("gb200-186gb",), compute_capability=(10, 0), kind="nvidia datacenter"))
    register(GPU("L4", 23034 * MiB, aliases=("l4-24gb",), compute_capability=(8, 9), kind="nvidia datacenter"))
    register(GPU("L40S", 46068 * MiB, aliases=("l40s-48gb",), compute_capability=(8, 9), kind="nvidia datacenter"))
    # L40 and A40 with ECC on (the data-centre default): "NVIDIA L40 ... 5MiB / 46068MiB",
    # "NVIDIA A40 ... 0MiB / 46068MiB" (public nvidia-smi tables; an A40 with ECC off shows 49140 MiB).
    register(GPU("L40", 46068 * MiB, aliases=("l40-48gb",), compute_capability=(8, 9), kind="nvidia datacenter"))
    register(GPU("A40", 46068 * MiB, aliases=("a40-48gb",), compute_capability=(8, 6), kind="nvidia datacenter"))
    register(GPU("A10G", 23028 * MiB, aliases=("a10g-24gb",), compute_capability=(8, 6), kind="nvidia datacenter"))
    # A10: 23028 MiB (Modal PR #2797; NVML total 24146608128 B in a public detect-gpu issue).
    register(GPU("A10", 23028 * MiB, aliases=("a10-24gb",), compute_capability=(8, 6), kind="nvidia datacenter"))
    # CUDA total 14.74 GiB: vLLM 0.8.2 V0 log on a Colab T4, "total_gpu_memory (14.74GiB)"; a 0.7.2 Colab T4 log shows 14.56 GiB
    # (the driver's share varies): serving-logs.jsonl vllm-cookbook-t4-llama32-3b-v0-fallback, vllm-colab-t4-qwen25-1.5b-v0-072.
    register(GPU("T4", 15360 * MiB, aliases=("t4-16gb", "tesla-t4"), compute_capability=(7, 5), kind="nvidia datacenter",
                 cuda_total_bytes=round(14.74 * GiB)))
    # 16160 MiB: the Tesla V100-SXM2 16GB in Hugging Face's model-memory-anatomy measurements.
    register(GPU("V100-16GB", 16160 * MiB, aliases=("v100-16g", "tesla-v100-sxm2-16gb"), compute_capability=(7, 0), kind="nvidia datacenter"))
    register(GPU("V100-32GB", 32768 * MiB, aliases=("v100-32g",), compute_capability=(7, 0), kind="nvidia datacenter"))
    register(AmbiguousName("V100", ("V100-16GB", "V100-32GB")))
    # RTX A6000 and RTX 6000 Ada both show 49140 MiB ("NVIDIA RTX A6000 ... / 49140MiB",
    # "NVIDIA RTX 6000 Ada Gene... / 49140MiB" in public nvidia-smi tables); "A6000" alone is either.
    # CUDA total 47.54 GiB: artidoro/qlora issue 17's OOM, "(GPU 0; 47.54 GiB total capacity; 45.09 GiB already allocated; ...)"
    register(GPU("RTX-A6000", 49140 * MiB, aliases=("rtx-a6000-48gb",), compute_capability=(8, 6), kind="nvidia workstation",
                 cuda_total_bytes=round(47.54 * GiB)))
    register(GPU("RTX-6000-Ada", 49140 * MiB, aliases=("rtx-6000-ada-generation", "a6000-ada", "rtx-a6000-ada", "6000-ada"), compute_capability=(8, 9), kind="nvidia workstation"))
    register(AmbiguousName("A6000", ("RTX-A6000", "RTX-6000-Ada")))
    # CUDA total 23.58 GiB: vLLM issue 10517, "total_gpu_memory=23.58GiB"
    register(GPU("RTX-3090", 24576 * MiB, aliases=("3090", "rtx3090", "geforce-rtx-3090"), compute_capability=(8, 6), kind="nvidia consumer",
                 cuda_total_bytes=round(23.58 * GiB)))
    register(GPU("RTX-4090", 24564 * MiB, aliases=("4090", "rtx4090", "geforce-rtx-4090"), compute_capability=(8, 9), kind="nvidia consumer"))
    register(GPU("RTX-5090", 32607 * MiB, aliases=("5090", "rtx5090", "geforce-rtx-5090"), compute_capability=(12, 0), kind="nvidia consumer"))
    # MI300X: 192 GB HBM3; rocm-smi reports 205822885888 bytes of VRAM.
    register(GPU("MI300X", 205822885888, aliases=("mi300x-192gb", "instinct-mi300x"), kind="amd datacenter"))
    # MI250X: each of its two dies is one device to ROCm: "VRAM Total Memory (B): 68702699520"
    # (rocm-smi output in public job logs; the card's 128 GB is two of these).
    register(GPU("MI250X", 68702699520, aliases=("mi250x-gcd", "instinct-mi250x-mi250", "mi250x-mi250"), kind="amd datacenter"))
    # MI325X: no rocm-smi total found; 256 GB is AMD's documented HBM3E capacity, taken as
    # 256 x 10^9 bytes (the lower reading of "GB"; MI300X's 192 GB reads as 205.8e9 B in rocm-smi).
    register(GPU("MI325X", 256 * 10**9, aliases=("mi325x-256gb", "instinct-mi325x"), kind="amd datacenter"))


def llmmem_register_engines(register):
    # The serving modules sit above the catalog: each start-up is named, imported when a run uses it.
    register(Engine("vllm", "pytest_llmmem.serving.vllm_engine:startup", doc="vLLM V1 (vllm/v1/worker/gpu_worker.py)"))
    register(Engine("sglang", "pytest_llmmem.serving.sglang_engine:startup", doc="SGLang (python/sglang/srt/model_executor)"))


def llmmem_register_profiles(register):
    # torchtune, Unsloth, litgpt and the Hugging Face stack: each knob cited in catalog/profiles.py.
    for profile in PROFILES.values():
        register(profile)


def llmmem_register_readers(register):
    # The readers sit in config/, above the catalog: each is named, imported when a run reads that format.
    for name, module in (("axolotl", "axolotl"), ("llama-factory", "llama_factory"), ("torchtune", "torchtune"),
                         ("trl", "trl"), ("litgpt", "litgpt")):
        register(Reader(name, f"pytest_llmmem.config.readers.{module}:read", doc=f"config/readers/{module}.py"))


def llmmem_register_recipes(register):
    # Defaults read from the installed trl-1.16.0 wheel (PPO from TRL's last PPO trainer, recipes/ppo_rollout.py).
    # trl/trainer/dpo_trainer.py _compute_loss: one forward of the concatenated [chosen, rejected] batch
    # through model(..., fused_lm_head=True); labels are the completion tokens only. beta: dpo_config.py default=0.1.
    # log-prob-head = "logits": a DPO trainer that takes the model's whole logits (config/recipe_keys.py LOG_PROB_HEADS).
    register(Recipe("dpo", keys=("beta", "loss-type", "reference-model", "precompute-ref-log-probs", "max-length", "max-prompt-length",
                                 "log-prob-head"),
                    models=("policy", "reference"), rows_per_example=2, head="fused", beta=0.1,
                    ways_out=("mode", "precompute-ref-log-probs"), doc="TRL 1.16 DPOTrainer"))
    # trl/trainer/grpo_trainer.py: generate, then _get_per_token_logps_and_entropies with the fused head
    # over the completion (labels[:, :-logits_to_keep] = -100); batch-size counts completions.
    # grpo_config.py: max_completion_length default=512, num_generations default=8 (:480), beta default=0.0
    # (:681-682, "the reference model is not loaded").
    register(Recipe("grpo", keys=("beta", "reference-model", "max-prompt-length", "num-generations", "max-completion-length",
                                  "generation", "vllm-gpu-memory-utilization", "generation-batch-size", "steps-per-generation"),
                    models=("policy", "reference"), head="fused", generation="generate", completion_len=512, num_generations=8,
                    beta=0.0, beta_gates_reference=True, ways_out=("mode", "beta", "generation", "num-generations"),
                    doc="TRL 1.16 GRPOTrainer"))
    # trl/experimental/ppo/ppo_trainer.py: policy (+ PolicyAndValueWrapper value model), ref_policy,
    # reward_model; full logits of the response through selective_log_softmax. ppo_config.py: response_length default=53.
    register(Recipe("ppo", keys=("reference-model", "max-prompt-length", "max-completion-length", "generation",
                                 "vllm-gpu-memory-utilization", "generation-batch-size", "local-rollout-forward-batch-size",
                                 "value-head", "reward-model", "value-model"),
                    models=("policy", "reference", "reward", "value"), generation="rollout", completion_len=53,
                    ways_out=("mode", "value-head", "generation"), doc="TRL PPOTrainer (trl/experimental/ppo/ppo_trainer.py)"))
    # trl/trainer/reward_trainer.py: AutoModelForSequenceClassification(num_labels=1), chosen and
    # rejected concatenated into one forward, -logsigmoid(chosen - rejected).
    register(Recipe("reward", keys=("max-length",), rows_per_example=2, head="score", ways_out=("mode",), doc="TRL 1.16 RewardTrainer"))
