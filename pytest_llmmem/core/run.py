"""A declared run and its budget, fully resolved: what the estimator takes as input.

PYTEST_DONT_REWRITE: no asserts here; pytest need not rewrite this plugin module.
"""

from __future__ import annotations

from typing import Optional, Tuple, Union

from ..catalog.entries import DType, Optimizer
from ..model.adapters import Adapter
from ..model.methods import builtin_adapter
from ..model.prompts import PromptEncoder
from ..model.architecture import Architecture, ParamsOnly
from ..catalog.profiles import Knobs
from ..record import Record
from ..units import format_bytes

# A run's mode: full training, inference, or the name of an adapter (adapters.py; a plugin may add one).
MODES = ("train", "inference")
FSDP_MODES = ("none", "full-shard", "shard-grad-op", "hybrid-shard")
OFFLOADS = ("none", "optimizer", "optimizer+params")
PRECISIONS = ("mixed", "pure", "amp")
# "trained": images go through the vision tower and it trains (gradients, optimizer states; its activations are
# not modelled). "frozen": text-only data or requires_grad=False: the tower gets no .grad, and torch AdamW keeps
# no state for it (Adam._init_group, which AdamW inherits, creates a parameter's state at its first gradient:
# torch/optim/adam.py:139).
VISION_TOWERS = ("trained", "frozen")
METHODS = ("detailed", "rule-of-thumb", "trace")  # trace: trace/, needs the measure extra
LOGITS = ("last", "all")
# transformers' attn_implementation values (transformers 5.25 masking_utils.py:720-727 AttentionMaskInterface)
ATTN_IMPLEMENTATIONS = ("sdpa", "flash_attention_2", "flash_attention_3", "eager")
# the ones whose mask function is flash_attention_mask (masking_utils.py:724-725): a 2D padding mask or None, never 4D
FLASH_KERNELS = ("flash_attention_2", "flash_attention_3")
KV_CACHE_DTYPES = ("auto", "fp8", "fp8_e4m3", "fp8_e5m2")
# recipe = "sft" is no recipe: the plain step. Every other recipe is a catalog entry (catalog.entries.Recipe).
SFT = "sft"


class ServeSettings(Record):
    """What a serving engine is started with (its own flag names, kebab-case); None = the engine's default."""

    gpu_memory_utilization: Optional[float] = None  # vLLM --gpu-memory-utilization, SGLang --mem-fraction-static
    max_model_len: Optional[int] = None
    max_num_seqs: Optional[int] = None
    max_num_batched_tokens: Optional[int] = None
    kv_cache_dtype: str = "auto"
    block_size: Optional[int] = None
    enforce_eager: bool = False
    quantization: Optional[str] = None  # fp8, awq, gptq, mxfp4, bitsandbytes
    min_concurrency: Optional[float] = None  # requests of max-model-len tokens the pool must hold at once
    engine_version: Optional[str] = None


class RecipeSettings(Record):
    """What a post-training recipe adds to a step (issue 13); recipes.py prices it, recipe_keys.py reads it.

    ``reference`` says whether a frozen reference model sits in memory, already resolved from the
    trainer's rules (LoRA, reference-free loss, precomputed log-probs, beta = 0).
    """

    name: str = SFT  # sft, or a recipe the catalog registers (dpo, grpo, ppo, reward, or a plugin's)
    beta: Optional[float] = None
    loss_type: Optional[str] = None
    reference: bool = False
    precompute_ref_log_probs: bool = False
    prompt_len: int = 0  # prompt tokens of each row (0: not split)
    completion_len: int = 0  # completion tokens of each row (generated for grpo/ppo)
    num_generations: int = 0
    generation: str = "transformers"  # transformers | vllm-colocate | vllm-server
    vllm_gpu_memory_utilization: float = 0.0
    generation_batch_size: int = 0  # completions generated at once per device (ppo: per rollout)
    rollout_chunk: int = 0  # ppo: local_rollout_forward_batch_size, rows per generate() / no-grad forward
    value_head: str = "separate"  # ppo: separate | shared
    # dpo: how the policy's log-probs are taken; "" = the recipe entry's head (TRL's fused LM head),
    # "logits" = the model's whole logits then log_softmax (LLaMA-Factory's CustomDPOTrainer)
    log_prob_head: str = ""
    reward_model: Optional[Union[Architecture, ParamsOnly]] = None  # ppo: another model than the policy's shape
    value_model: Optional[Union[Architecture, ParamsOnly]] = None

    @property
    def post_training(self) -> bool:
        """A recipe's models and phases beside the policy's step (every recipe but the plain SFT step)."""
        return self.name != SFT


class JobSettings(Record):
    """The phases of a whole training job besides its step (issue 16); phase_keys.py reads them,
    job_phases.py prices them. Defaults come from the trainer profile (phase_keys.PHASE_DEFAULTS)."""

    loader: str = "per-tensor"  # per-tensor (HF from_pretrained) | materialise (litgpt on one device)
    evaluates: bool = False
    eval_batch_size: int = 8
    eval_samples: int = 0  # examples whose logits evaluation keeps for compute_metrics (0: none kept / not given)
    eval_accumulation_steps: int = 0  # 0: HF's None, every eval batch's logits stay on the GPU
    eval_generate_tokens: int = 0
    eval_generate_batch: int = 0  # 0: the eval batch size
    eval_loss: str = "upcast"  # upcast (HF fp32 loss) | compute (litgpt validate: cross_entropy in the compute dtype)
    save: str = "full-state-dict"  # full-state-dict | sharded
    offload_to_cpu: bool = True
    gather_16bit_on_save: bool = False  # DeepSpeed stage3_gather_16bit_weights_on_model_save
    merge_adapters: bool = False
    merge_on_gpu: bool = True  # litgpt merges on the CPU
    holds_last_outputs: bool = False  # the loop keeps the last step's outputs (their graph) into the next forward: litgpt
    given: Tuple[str, ...] = ()


class Budget(Record):
    """Per-GPU memory a run may use: the ceiling less the headroom kept free."""

    ceiling_bytes: int
    headroom_bytes: int = 0
    gpu: Optional[str] = None  # catalog name when the ceiling came from ``gpu``
    unified: bool = False  # the ceiling is a unified-memory device's (catalog GPU.unified)
    cuda_total_bytes: Optional[int] = None  # what the CUDA runtime reports for the card (catalog GPU.cuda_total_bytes)

    @property
    def bytes(self) -> int:
        return self.ceiling_bytes - self.headroom_bytes

    def describe(self, units: str = "gib") -> str:
        base = self.gpu or format_bytes(self.ceiling_bytes, units)
        return f"{base} less {format_bytes(self.headroom_bytes, units)} headroom" if self.headroom_bytes else base


class Run(Record):
    """One declared training or serving job, every default applied and every name resolved."""

    name: str
    model: Union[Architecture, ParamsOnly]
    mode: str = "train"
    dtype: Optional[DType] = None
    precision: str = "mixed"
    # 16-bit weights and a forward under torch.autocast in the run's dtype: the HF Trainer's bf16 / fp16 = true over a
    # 16-bit model (transformers 4.45.2 training_args.py:1798-1805 sets ACCELERATE_MIXED_PRECISION; accelerate 1.0.1
    # accelerator.py:1413-1424 wraps forward in torch.autocast, a 16-bit model included). Only fp32 LoRA adapters over
    # a 16-bit base keep less for it (adapters.lora_autocast_saved); "amp" runs under autocast whatever this says.
    autocast: bool = False
    optimizer: Optional[Optimizer] = None
    batch_size: int = 1
    seq_len: int = 2048
    seq_len_given: bool = True
    gradient_checkpointing: bool = False
    compiled: bool = False  # torch.compile: fused norms and (torchtune) a compiled loss, marked approximate (core/terms/checkpointing.py)
    selective_ac: str = ""  # with checkpointing: "" every layer, "op" torchtitan's op-level SAC, or a layer period (checkpointing.py)
    flash_attention: bool = True
    # transformers' attn_implementation: "sdpa" (its default), "flash_attention_2" / "_3" (no 4D masks, the window
    # passed as window_size: attention_masks.py), or "eager" (= flash_attention False)
    attn_implementation: str = "sdpa"
    lora_rank: int = 8  # peft/tuners/lora/config.py LoraConfig: r = 8
    lora_rank_given: bool = True
    lora_targets: Tuple[str, ...] = ("q_proj", "v_proj")  # or ("all-linear",)
    lora_dropout: float = 0.0  # peft/tuners/lora/config.py LoraConfig: lora_dropout = 0.0
    # bitsandbytes <= 0.43.1: each 4-bit linear keeps its input in MatMul4Bit's ctx (bitsandbytes-version)
    bnb_keeps_inputs: bool = False
    # peft.prepare_model_for_kbit_training: every non-4-bit parameter in fp32, so the activations too (kbit-prepare)
    kbit_prepare: bool = False
    gptq_group_size: int = 128  # dtype gptq: input rows per scale and zero (quantize_config.json group_size; -1: one per column)
    modules_to_save: Tuple[str, ...] = ()  # LoraConfig.modules_to_save: lm_head / embed_tokens trained in full
    use_dora: bool = False  # LoraConfig.use_dora = False: DoRA's magnitude vectors (adapters.with_dora)
    use_rslora: bool = False  # LoraConfig.use_rslora = False: scaling alpha / sqrt(r), the same memory
    virtual_tokens: int = 0  # PromptTuningConfig.num_virtual_tokens (no default): prepended to every sequence
    prompt_encoder: PromptEncoder = PromptEncoder()  # what makes a prefix or p-tuning prompt (prompts.PromptEncoder)
    adapter_dtype: Optional[DType] = None
    gpus: int = 1  # total GPUs: data-parallel x tensor-parallel x pipeline-parallel
    zero_stage: int = 0  # DeepSpeed ZeRO 0-3
    fsdp: str = "none"  # PyTorch FSDP sharding strategy
    fsdp_version: int = 1  # 1: FullyShardedDataParallel (flat parameters), 2: fully_shard (the reshard hook's hold is FSDP1's)
    tensor_parallel: int = 1
    pipeline_parallel: int = 1
    sequence_parallel: bool = False  # Megatron sequence parallelism (with tensor parallelism)
    expert_parallel: int = 1
    context_parallel: int = 1  # the sequence sharded over this many GPUs (torchtitan context_parallel_degree)
    offload: str = "none"  # ZeRO-Offload / FSDP CPU offload
    micro_batches: int = 1  # pipeline micro-batches in flight / gradient accumulation steps
    gpus_per_node: int = 8
    host_memory_bytes: Optional[int] = None  # host-memory budget per node, for offload
    budget: Optional[Budget] = None
    method: str = "detailed"
    overhead_bytes: Optional[int] = None  # replaces the CUDA context / allocator default
    calibration: Optional[float] = None  # measured / estimated, stored by `llmmem measure --write`
    strict: bool = False  # a partial or approximate estimate fails instead of passing with a warning
    vision_tower: str = "trained"  # a multimodal model in a full fine-tune: VISION_TOWERS
    # Inference: prompt + new tokens (= seq-len), and whether the forward returns every position's
    # logits (a scoring forward) or the last one only (generation: transformers generate() passes
    # logits_to_keep=1, generation/utils.py; vLLM and SGLang compute logits for sampled tokens only).
    prompt_len: Optional[int] = None
    new_tokens: int = 0
    logits: str = "last"
    engine: str = "transformers"
    serve: Optional[ServeSettings] = None
    knobs: Knobs = Knobs()  # the trainer profile and its knobs (profiles.py)
    knobs_shown: Tuple[Tuple[str, str, str], ...] = ()  # (key, value, "profile" | "set") that differ from stock transformers
    job: JobSettings = JobSettings()  # load / eval / save phases (issue 16)
    recipe: RecipeSettings = RecipeSettings()  # sft unless a run declares recipe = "<a catalog recipe>"
    file: Optional[str] = None
    line: Optional[int] = None
    # from = "train.yaml" (readers/): (key, where it came from) for each setting read or defaulted,
    # the memory-relevant settings the estimate leaves out (they make it partial), and the files read.
    settings_from: Tuple[Tuple[str, str], ...] = ()
    not_modelled: Tuple[str, ...] = ()
    reads: Tuple[str, ...] = ()
    settings: Tuple[Tuple[str, str], ...] = ()  # (key, value as text) of those settings, for llmmem diff
    adapter_entry: Optional[Adapter] = None  # the adapter ``mode`` names, as the config's catalog registered it

    @property
    def mask_free(self) -> bool:
        """FlashAttention-2/3 through transformers: no (b, 1, s, s) attention masks (attention_masks.py)."""
        return self.flash_attention and self.attn_implementation in FLASH_KERNELS

    @property
    def adapter(self) -> Optional[Adapter]:
        """The PEFT method this run trains; None for full training and inference. A run built without
        a config (or given another mode by _replace) gets the built-in adapter of that name."""
        entry = self.adapter_entry if self.adapter_entry is not None and self.adapter_entry.name == self.mode else builtin_adapter(self.mode)
        if self.use_dora and entry is not None and entry.dora is not None:
            return entry.dora(entry)  # use-dora: the same method with DoRA's magnitude vectors
        return entry

    def adapter_params(self, arch: Architecture, trained_only: bool = False) -> int:
        """The adapter's parameters on ``arch`` at this run's rank, targets and prompt (adapters.Adapter.params)."""
        return self.adapter.params(arch, self.lora_rank, self.lora_targets, trained_only=trained_only,
                                   virtual_tokens=self.virtual_tokens, encoder=self.prompt_encoder)

    @property
    def trains(self) -> bool:
        return self.mode != "inference"

    @property
    def data_parallel(self) -> int:
        # context-parallel ranks count here: FSDP shards over data x context parallel (torchtitan dp_shard_cp)
        return self.gpus // (self.tensor_parallel * self.pipeline_parallel)

    @property
    def shard_group(self) -> int:
        """GPUs that share one copy of the sharded model states (1 when nothing is sharded)."""
        if self.fsdp == "hybrid-shard":
            return max(1, min(self.data_parallel, self.gpus_per_node // (self.tensor_parallel * self.pipeline_parallel)))
        if self.fsdp != "none" or self.zero_stage:
            return self.data_parallel
        return 1
