"""`llmmem fit` for a serving run: the questions deployers ask, each answered by the engine model.

The largest max-model-len that starts, the concurrency at the declared length, the smallest
tensor-parallel size that starts (and meets min-concurrency), and whether an fp8 KV cache or a
quantised checkpoint would make it fit.

PYTEST_DONT_REWRITE: no asserts here; pytest need not rewrite this plugin module.
"""

from __future__ import annotations

from typing import Any, List, Optional

from ..core.records import Estimate
from ..estimator import estimate
from ..core.records import WayOut
from ..serving.engines import largest_max_model_len
from ..units import format_bytes

TENSOR_PARALLEL = (1, 2, 4, 8, 16)


def _ok(est: Estimate) -> bool:
    return est.fits is not False


def _splits(arch: Any, tp: int) -> bool:
    """Tensor parallelism splits the attention heads; KV heads split or are replicated (vLLM's rule)."""
    kv = arch.num_kv_heads
    return arch.num_heads % tp == 0 and (kv % tp == 0 or tp % kv == 0)


def with_settings(run: Any, **changes: Any) -> Any:
    return run._replace(serve=run.serve._replace(**changes))


def smallest_tensor_parallel(run: Any) -> Optional[int]:
    for tp in TENSOR_PARALLEL:
        if tp >= run.tensor_parallel and _splits(run.model, tp):
            changed = run._replace(tensor_parallel=tp, gpus=tp * run.pipeline_parallel)
            if _ok(estimate(changed)):
                return tp
    return None


def _summary(est: Estimate) -> str:
    s = est.serving
    if not s.starts:
        return "does not start"
    return f"{s.tokens:,} KV tokens, {s.max_concurrency:.2f}x at {s.max_model_len:,}" + ("" if _ok(est) else " (below min-concurrency)")


def answers(run: Any, units: str = "gib") -> List[str]:
    """One line per question, for `llmmem fit`."""
    est = estimate(run)
    s = est.serving
    lines = [f"{line}" for line in (
        f"engine: {s.engine} {s.version}, KV pool {format_bytes(s.kv_pool_bytes, units)}: {s.tokens:,} tokens",
        f"concurrency at max-model-len {s.max_model_len:,}: {s.max_concurrency:.2f} requests",
    )]
    longest = largest_max_model_len(run)
    lines.append(f"largest max-model-len that starts: {longest:,}" if longest else "largest max-model-len that starts: none (the weights do not fit)")
    tp = smallest_tensor_parallel(run)
    lines.append(f"smallest tensor-parallel that {'starts' if run.serve.min_concurrency is None else 'meets min-concurrency'}: "
                 f"{tp if tp else 'none up to ' + str(TENSOR_PARALLEL[-1])}")
    if run.serve.kv_cache_dtype == "auto":
        lines.append(f'kv-cache-dtype = "fp8": {_summary(estimate(with_settings(run, kv_cache_dtype="fp8")))}')
    if run.serve.quantization is None and not run.dtype.quantized:
        for quant in ("fp8", "awq"):
            lines.append(f'quantization = "{quant}" checkpoint: {_summary(estimate(with_settings(run, quantization=quant)))}')
    return lines


def ways_out(run: Any, units: str = "gib") -> List[WayOut]:
    """Changes that make a refusing (or under-concurrent) server start, each checked by the engine model."""
    out: List[WayOut] = []

    def offer(key: str, value: Any, text: str, changed: Any) -> None:
        est = estimate(changed)
        if _ok(est):
            out.append(WayOut(key, value, f"{text} ({_summary(est)})", est))

    if run.serve.min_concurrency is None:
        longest = largest_max_model_len(run)
        if longest and longest < (run.serve.max_model_len or est_len(run)):
            offer("max-model-len", longest, f"starts with max-model-len <= {longest:,}", with_settings(run, max_model_len=longest))
    util = run.serve.gpu_memory_utilization
    if util is None or util < 0.95:
        offer("gpu-memory-utilization", 0.95, "with gpu-memory-utilization = 0.95", with_settings(run, gpu_memory_utilization=0.95))
    if run.serve.kv_cache_dtype == "auto":
        offer("kv-cache-dtype", "fp8", 'with kv-cache-dtype = "fp8"', with_settings(run, kv_cache_dtype="fp8"))
    if run.serve.quantization is None and not run.dtype.quantized:
        offer("quantization", "fp8", 'with an fp8 checkpoint (quantization = "fp8")', with_settings(run, quantization="fp8"))
    tp = smallest_tensor_parallel(run)
    if tp and tp != run.tensor_parallel:
        offer("tensor-parallel", tp, f"with tensor-parallel = {tp} (gpus = {tp * run.pipeline_parallel})",
              run._replace(tensor_parallel=tp, gpus=tp * run.pipeline_parallel))
    return out


def est_len(run: Any) -> int:
    return estimate(run).serving.max_model_len
