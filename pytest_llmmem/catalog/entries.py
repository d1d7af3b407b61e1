"""The records a catalog holds: a number format, an optimizer, a GPU, a name that means more than one
GPU, a trainer-config reader, a serving engine and a post-training recipe. Apart from the registry so that the built-ins (:mod:`.builtin`) and the registry both import them
from below, and neither imports the other back.

PYTEST_DONT_REWRITE: no asserts here; pytest need not rewrite this plugin module.
"""

from __future__ import annotations

from typing import Any, Optional, Tuple

from ..record import Record


class DType(Record):
    """A number format for weights (and the format activations are computed in)."""

    name: str
    bytes: float  # storage per parameter, quantisation scales included (detailed method)
    compute_bytes: int  # bytes per activation element when this format is the run's dtype
    seed_bytes: Optional[float] = None  # the seed rule of thumb's figure; defaults to ``bytes``
    quantized: bool = False  # embeddings, head and norms stay in the 16-bit compute format
    aliases: Tuple[str, ...] = ()
    doc: str = ""

    @property
    def rule_bytes(self) -> float:
        return self.bytes if self.seed_bytes is None else self.seed_bytes


class Optimizer(Record):
    """An optimizer's state, per trainable parameter."""

    name: str
    states: float  # full-size state tensors per parameter (AdamW: exp_avg and exp_avg_sq = 2)
    state_bytes: Optional[float] = None  # per state element; None: fp32 under mixed precision, else the param dtype
    factored: bool = False  # Adafactor: a matrix keeps a row and a column vector, not a full state
    aliases: Tuple[str, ...] = ()
    doc: str = ""
    paged: bool = False  # bitsandbytes paged: large states live in CUDA unified memory
    small_tensor_numel: int = 0  # tensors below this many elements keep fp32 states (bitsandbytes 8-bit)
    small_in_param_dtype: bool = False  # ... in the parameter's dtype instead (torchao: zeros_like(p))
    step_bytes_per_element: float = 0  # what one parameter's update allocates per element of it (torchao's compiled step)


class GPU(Record):
    """An accelerator and the memory a process can see on it (what nvidia-smi reports as total)."""

    name: str
    memory_bytes: int
    aliases: Tuple[str, ...] = ()
    doc: str = ""
    # vendor and class ("nvidia datacenter", "nvidia workstation", "nvidia consumer", "amd datacenter"):
    # a way out offers another card only of the declared card's kind, where the same software and
    # procurement apply ("" : a plugin's card, offered to none but its own kind)
    kind: str = ""
    # memory shared with the CPU (GB10 / DGX Spark): a process gets what the OS and its page cache leave,
    # not a fixed total, so every estimate against it is marked approximate (estimator.UNIFIED_MEMORY)
    unified: bool = False
    # CUDA compute capability (major, minor), None for a card that is not CUDA (AMD) or a plugin's that
    # names none: vLLM 0.8-0.10 serve on the V0 engine below 8.0 (serving/vllm_engine.py _era)
    compute_capability: Optional[Tuple[int, int]] = None
    # What the CUDA runtime reports as the device's total (cudaMemGetInfo, torch.cuda.mem_get_info, "total capacity"
    # in an OOM message, vLLM's total_gpu_memory): below nvidia-smi's total, the driver keeps the rest. None: not
    # measured for this card (serving then takes memory_bytes and says so). What a serving engine takes its fraction
    # of, and what a training process can fill.
    cuda_total_bytes: Optional[int] = None


class AmbiguousName(Record):
    """A name people use for more than one card ("A100": 40 or 80 GB): looking it up is an error
    that lists the cards it could mean, never a silent pick of one."""

    name: str
    choices: Tuple[str, ...]  # canonical names of the cards it could mean
    aliases: Tuple[str, ...] = ()


class Reader(Record):
    """A trainer-config format (``from = "train.yaml"``): ``read(mapper, base_dir)`` maps its keys to
    run keys with ``mapper.put`` / ``mapper.assume`` (:class:`pytest_llmmem.config.readers.mapper.Mapper`).

    ``read`` is the function or "module:function" (the built-ins': the catalog sits below config/).
    ``detect(data) -> bool`` tells the format from a parsed file when the run gives no ``format``;
    the built-ins' detection is the ordered checks of ``config.readers.detect``, tried first. ``keys``:
    every top-level key the format may write (a typo is then an error); None: the built-in key list
    ``config/readers/keys/<name>.txt``."""

    name: str
    read: Any
    detect: Any = None
    keys: Optional[Tuple[str, ...]] = None
    aliases: Tuple[str, ...] = ()
    doc: str = ""


class Engine(Record):
    """A serving engine: ``startup(run) -> serving.serve.Startup`` says what it holds once started.

    ``startup`` is the function, or "module:function" imported on first use (how the built-ins name
    theirs: the catalog sits below the serving modules and imports none of them)."""

    name: str
    startup: Any
    aliases: Tuple[str, ...] = ()
    doc: str = ""


class Recipe(Record):
    """A post-training recipe (``recipe = "<name>"``): what its step holds beyond an SFT step of the
    same model. Everything the TOML's keys (config/recipe_keys.py), the estimate (recipes/recipes.py),
    the report and ``llmmem fit`` (fit/recipes.py) need is declared here, so none of them branches on
    the recipe's name and a plugin adds one with one entry. "sft" is no recipe: the plain step."""

    name: str
    keys: Tuple[str, ...] = ()  # the recipe keys it reads (config/keys.py RECIPE_KEYS); another is a contradiction
    # What its step holds: "policy", "reference" (a frozen copy, unless the trainer's rules drop it:
    # LoRA, a reference-free loss, precomputed log-probs, beta = 0 where beta gates it), "reward", "value".
    models: Tuple[str, ...] = ("policy",)
    rows_per_example: int = 1  # forward rows per batch element: 2 when chosen and rejected run together
    head: str = "hf"  # "fused" (TRL's fused log-prob head), "score" (a sequence-classification head), "hf" (full logits)
    # Its generation phase: "" none; "generate" (in-process generate() or a vLLM engine); "rollout"
    # (PPO's chunked rollout that keeps every token's scores, recipes/ppo_rollout.py).
    generation: str = ""
    completion_len: int = 0  # max-completion-length's default when it generates
    num_generations: int = 0  # num-generations' default: completions per prompt, compared within their group
    beta: Optional[float] = None  # beta's default (the KL coefficient), when it reads beta
    beta_gates_reference: bool = False  # beta = 0 loads no reference model (TRL GRPO)
    ways_out: Tuple[str, ...] = ()  # the keys llmmem fit may change to make it fit (fit/recipes.py SWITCHES)
    aliases: Tuple[str, ...] = ()
    doc: str = ""


# What a recipe's fields may say (tests/test_tables.py holds the built-ins to them; config/recipe_keys.py a plugin's).
RECIPE_MODELS = ("policy", "reference", "reward", "value")
RECIPE_HEADS = ("fused", "score", "hf")
RECIPE_GENERATIONS = ("", "generate", "rollout")
