"""The ``[tool.llmmem]`` key contract: which keys exist, their limits, and the typed getters that
check every value and name the key and its line when one is wrong.

PYTEST_DONT_REWRITE: no asserts here; pytest need not rewrite this plugin module.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Sequence

from ..catalog.trainer_knobs import TRAINER_KEYS  # the trainer keys are the profile's knobs: one table
from ..catalog.registry import Catalog
from ..errors import ConfigError, did_you_mean, nearest, one_of, shown, shown_name
from .locate import TABLE, Locator, canonical  # noqa: F401  (TABLE and canonical are part of the contract)
from ..units import BYTE_UNITS_HELP, UnitError, parse_bytes
from ..values import boolean, limit, probability, type_name, whole_number

BUDGET_KEYS = ("gpu", "gpu-memory", "headroom", "method", "overhead")
TOP_KEYS = BUDGET_KEYS + ("strict", "model", "runs")  # strict: a partial or approximate estimate fails (exit 2)
ARCH_KEYS = (
    "family", "hidden-size", "num-layers", "num-heads", "num-kv-heads", "head-dim", "intermediate-size",
    "vocab-size", "tie-embeddings", "max-position-embeddings", "num-experts", "experts-per-token",
    "moe-intermediate-size", "hidden-act", "attention-dropout", "hidden-dropout",
)
MODEL_KEYS = ("params", "config", "id", "revision", "allow-network") + ARCH_KEYS  # id: a Hub id (hub.py)
TRAIN_ONLY = ("precision", "autocast", "optimizer", "gradient-checkpointing", "selective-ac", "compile", "zero-stage", "fsdp", "fsdp-version", "offload",
              "micro-batches", "context-parallel")
PARALLEL_KEYS = ("tensor-parallel", "pipeline-parallel", "sequence-parallel", "expert-parallel", "gpus-per-node", "host-memory")
# The keys an adapter reads (adapters.Adapter.keys says which apply to each).
ADAPTER_KEYS = ("lora-rank", "lora-targets", "adapter-dtype", "lora-dropout", "bitsandbytes-version", "kbit-prepare", "compute-dtype", "gptq-group-size", "modules-to-save",
                "use-dora", "use-rslora", "num-virtual-tokens", "rank-dropout", "module-dropout", "decompose-both", "decompose-factor",
                "prefix-projection", "encoder-hidden-size", "encoder-reparameterization-type", "encoder-num-layers")
INFERENCE_ONLY = ("prompt-len", "new-tokens", "logits", "engine")
# A serving engine's start-up flags, under their vLLM names (SGLang's mem_fraction_static is gpu-memory-utilization).
ENGINE_ONLY = (
    "gpu-memory-utilization", "max-model-len", "max-num-seqs", "max-num-batched-tokens", "kv-cache-dtype",
    "block-size", "enforce-eager", "quantization", "min-concurrency", "engine-version",
)
RUN_KEYS = (
    "name", "mode", "dtype", "batch-size", "seq-len", "flash-attention", "attn-implementation", "gpus", "model", "calibration", "strict",
) + TRAIN_ONLY + PARALLEL_KEYS + ADAPTER_KEYS + INFERENCE_ONLY + ENGINE_ONLY + BUDGET_KEYS
# Trainer profile and knobs (profiles.py): on the project or on a run; the run's value wins.
TOP_KEYS = TOP_KEYS + TRAINER_KEYS
RUN_KEYS = RUN_KEYS + TRAINER_KEYS
# Post-training recipes (issue 13); their checks live in recipe_keys.py.
RECIPE_KEYS = (
    "recipe", "beta", "loss-type", "reference-model", "precompute-ref-log-probs", "max-length",
    "max-prompt-length", "num-generations", "max-completion-length", "generation",
    "vllm-gpu-memory-utilization", "generation-batch-size", "steps-per-generation", "local-rollout-forward-batch-size",
    "value-head", "reward-model", "value-model", "log-prob-head",
)
RUN_KEYS = RUN_KEYS + RECIPE_KEYS
# A trainer's own config the run reads its settings from (readers/); the run's keys override it.
RUN_KEYS = RUN_KEYS + ("from", "format")
# The whole job's other phases (issue 16; phase_keys.py): on the project or on a run; the run's value wins.
PHASE_KEYS = ("eval", "eval-batch-size", "eval-samples", "eval-accumulation-steps", "eval-generate-tokens",
              "save", "offload-to-cpu", "merge-adapters", "gather-16bit-weights-on-save")
TOP_KEYS = TOP_KEYS + PHASE_KEYS
RUN_KEYS = RUN_KEYS + PHASE_KEYS
# A multimodal model's vision tower in a full fine-tune (run.VISION_TOWER): trained on images, or frozen.
RUN_KEYS = RUN_KEYS + ("vision-tower",)

MAX_PARAMS = 10**15
MAX_MEMORY = 2**50  # 1 PiB per GPU




class Context:
    """Where values come from, for error messages, and how to resolve names and files."""

    def __init__(self, path: str, locator: Locator, catalog: Catalog, read_json: Callable[[Path], Any], base_dir: Path) -> None:
        self.path, self.locator, self.catalog, self.read_json, self.base_dir = path, locator, catalog, read_json, base_dir
        self.hf_configs: Dict[Any, Any] = {}  # (config value, overrides) -> Architecture: 10,000 runs, one read

    def error(self, message: str, key: str, line: Optional[int], hint: Optional[str] = None) -> ConfigError:
        return ConfigError(message, path=self.path, key=key, line=line, hint=hint)


class Table:
    """One TOML table under check: canonical keys, unknown-key errors, typed getters."""

    def __init__(self, raw: Any, allowed: Sequence[str], ctx: Context, dotted: str, line_of: Callable[[Optional[str]], Optional[int]]):
        self.ctx, self.dotted, self.line_of = ctx, dotted, line_of
        if not isinstance(raw, dict):
            raise ctx.error(f"expected a table, got {type_name(raw)}.", dotted, line_of(None))
        self.values: Dict[str, Any] = {}
        for key, value in raw.items():
            name = canonical(str(key))
            if name not in allowed:
                raise ctx.error(
                    f'unknown key "{shown_name(key)}".{did_you_mean(name, allowed)}',
                    f"{dotted}.{shown_name(key)}",
                    line_of(name),
                    hint=f"The nearest valid keys here: {', '.join(nearest(name, allowed))} (all {len(allowed)}: docs/configuration.md).",
                )
            if name in self.values:
                raise ctx.error(f'"{key}" is given twice (kebab-case and snake_case).', f"{dotted}.{key}", line_of(name))
            self.values[name] = value

    def __contains__(self, key: str) -> bool:
        return key in self.values

    def fail(self, key: str, message: str, hint: Optional[str] = None) -> ConfigError:
        return self.ctx.error(message, f"{self.dotted}.{key}", self.line_of(key), hint)

    def integer(self, key: str, default: Optional[int] = None, low: int = 1) -> Optional[int]:
        if key not in self.values:
            return default
        try:
            return whole_number(self.values[key], low, limit(key))
        except ValueError as err:
            raise self.fail(key, str(err)) from None

    def probability(self, key: str) -> Optional[float]:
        if key not in self.values:
            return None
        try:
            return probability(self.values[key])
        except ValueError as err:
            raise self.fail(key, str(err)) from None

    def fraction(self, key: str) -> Optional[float]:
        """A share of the GPU, 0 < value <= 1 (vLLM rejects anything else: vllm/config cache checks)."""
        if key not in self.values:
            return None
        value = self.values[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not (math.isfinite(value) and 0 < value <= 1):
            raise self.fail(key, f"expected a fraction of GPU memory above 0 and at most 1, got {type_name(value)} {value!r}.",
                            hint="For example 0.9 (vLLM's default): the engine takes 90 % of the GPU.")
        return float(value)

    def positive(self, key: str) -> Optional[float]:
        if key not in self.values:
            return None
        value = self.values[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not (math.isfinite(value) and 0 < value <= 1_000_000):
            raise self.fail(key, f"expected a positive number, got {type_name(value)} {value!r}.")
        return float(value)

    def boolean(self, key: str, default: bool) -> bool:
        try:
            return boolean(self.values.get(key, default))
        except ValueError as err:
            raise self.fail(key, str(err)) from None

    def string(self, key: str, default: Optional[str] = None) -> Optional[str]:
        value = self.values.get(key, default)
        if value is not None and (not isinstance(value, str) or not value.strip()):
            raise self.fail(key, f"expected a non-empty string, got {type_name(value)} {shown(value)}.")
        return value

    def choice(self, key: str, choices: Sequence[str], default: str) -> str:
        value = self.string(key, default)
        if value.lower() not in choices:
            raise self.fail(key, f'"{shown_name(value)}" is not valid.{did_you_mean(value, choices)}', hint=f"Valid: {one_of(choices)}.")
        return value.lower()

    def size(self, key: str, allow_zero: bool = False, hint: Optional[str] = None) -> Optional[int]:
        if key not in self.values:
            return None
        try:
            value = parse_bytes(self.values[key], allow_zero=allow_zero)
        except UnitError as err:
            raise self.fail(key, f"{err}.", hint) from None
        if value > MAX_MEMORY:
            raise self.fail(key, f"{shown(self.values[key])} is more than 1 PiB per GPU; expected {BYTE_UNITS_HELP}.")
        return value

    def resolve(self, key: str, lookup: Callable[[object], Any], default: Optional[str] = None) -> Any:
        value = self.values.get(key, default)
        if value is None:
            return None
        try:
            return lookup(value)
        except ConfigError as err:
            raise self.fail(key, err.message, err.hint) from None

