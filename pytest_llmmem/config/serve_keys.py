"""The inference and serving keys of a run: prompt-len / new-tokens / logits, and a serving engine's
start-up flags (vLLM's names; SGLang's mem_fraction_static is gpu-memory-utilization).

PYTEST_DONT_REWRITE: no asserts here; pytest need not rewrite this plugin module.
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Tuple

from .keys import ENGINE_ONLY, INFERENCE_ONLY, Table
from ..model.architecture import Architecture
from ..model.context_window import VLLM_FALLBACK
from ..core.run import KV_CACHE_DTYPES, LOGITS, ServeSettings
from ..values import release


def engine_names(catalog: Any, wanted: Any) -> Tuple[str, ...]:
    """"transformers" (no serving engine) and every registered engine, in registration order; plugins are
    loaded only when ``wanted`` is none of the built-ins (as a dtype or GPU name is looked up)."""
    engine = wanted if isinstance(wanted, str) and wanted.lower() != "transformers" else None
    return ("transformers",) + tuple(catalog.names("engines", engine))


def serving_fields(table: Table, name: str, mode: str, model: Any, seq_len: Optional[int]) -> Tuple[Dict[str, Any], Optional[int]]:
    """Run fields for inference and serving, and the resolved seq-len (prompt + new tokens)."""
    for key in INFERENCE_ONLY + ENGINE_ONLY:
        if key in table and mode != "inference":
            raise table.fail(key, f'only applies to mode = "inference"; run "{name}" has mode = "{mode}".')
    engine = table.choice("engine", engine_names(table.ctx.catalog, table.values.get("engine")), "transformers")
    if engine == "transformers":
        for key in ENGINE_ONLY:
            if key in table:
                raise table.fail(key, f"is a serving engine's start-up flag; run \"{name}\" has no engine.",
                                 hint='Add engine = "vllm" or engine = "sglang" to this run.')
    prompt = table.integer("prompt-len")
    new = table.integer("new-tokens", 0, low=0)
    seq = seq_len
    if prompt is not None:
        if seq_len is not None and seq_len != prompt + new:
            raise table.fail("seq-len", f"seq-len {seq_len} is not prompt-len {prompt} + new-tokens {new} = {prompt + new}.",
                             hint="Give prompt-len and new-tokens, or seq-len alone (prompt + new tokens).")
        seq = prompt + new
    elif new:
        if seq_len is None:
            raise table.fail("new-tokens", "new-tokens needs the prompt length: give prompt-len (or seq-len = prompt + new tokens).")
        if new >= seq_len:
            raise table.fail("new-tokens", f"new-tokens {new} leaves no prompt in seq-len {seq_len} (seq-len = prompt + new tokens).")
        prompt = seq_len - new
    logits = table.choice("logits", LOGITS, "last")
    fields: Dict[str, Any] = dict(prompt_len=prompt, new_tokens=new, logits=logits, engine=engine)
    if engine != "transformers":
        fields["serve"] = _settings(table, name, engine, model, seq)
    return fields, seq


def _settings(table: Table, name: str, engine: str, model: Any, seq_len: Optional[int]) -> ServeSettings:
    from ..serving.serve import context_limit
    from ..serving.vllm_engine import QUANTIZATIONS

    if not isinstance(model, Architecture):
        raise table.fail("engine", f'the {engine} start-up needs the model\'s architecture (KV bytes per token); run "{name}" has only params.',
                         hint='Give config = "path/config.json" or the architecture keys under [tool.llmmem.model].')
    utilization = table.fraction("gpu-memory-utilization")
    version = table.string("engine-version")
    if version is not None and release(version) is None:
        raise table.fail("engine-version", f'"{version}" is not a release number.', hint='For example "0.11.0".')
    quant = table.choice("quantization", QUANTIZATIONS, "") if "quantization" in table else None
    max_len = table.integer("max-model-len")
    limit, why = context_limit(model)
    if max_len is not None and limit and max_len > limit:
        raise table.fail("max-model-len", f"{max_len:,} is more than the model's context: {why}. {engine} refuses to start "
                         "(User-specified max_model_len is greater than the derived max_model_len).",
                         hint=f"Use max-model-len <= {limit:,}, or a checkpoint with rope_scaling for longer contexts.")
    if max_len is None and not limit and seq_len is None and isinstance(model.config, dict):
        # a config.json with no length key (Mamba's: its scan has no position limit): vLLM takes any declared
        # max_model_len and defaults to 2048 with a warning (vllm/config/model.py _get_and_verify_max_len)
        max_len = VLLM_FALLBACK
    if max_len is None and not limit:
        if seq_len is None:
            raise table.fail("engine", f"the model's context length is unknown (no max_position_embeddings), so {engine}'s "
                             "default max-model-len cannot be derived.", hint="Give max-model-len = 32768 (or seq-len) in this run.")
        max_len = seq_len  # the declared sequence length is the longest request
    kv_dtype = table.choice("kv-cache-dtype", KV_CACHE_DTYPES, "auto")
    return ServeSettings(
        gpu_memory_utilization=utilization,
        max_model_len=max_len,
        max_num_seqs=table.integer("max-num-seqs"),
        max_num_batched_tokens=table.integer("max-num-batched-tokens"),
        kv_cache_dtype=kv_dtype,
        block_size=table.integer("block-size"),
        enforce_eager=table.boolean("enforce-eager", False),
        quantization=quant,
        min_concurrency=table.positive("min-concurrency"),
        engine_version=version.strip().lstrip("v") if version else None,
    )


__all__ = ["serving_fields"]
