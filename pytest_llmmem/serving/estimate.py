"""A serving run's estimate: the engine's start-up, as the usual per-GPU breakdown plus the verdicts
only an engine has (refusing to start, too few concurrent requests).

PYTEST_DONT_REWRITE: no asserts here; pytest need not rewrite this plugin module.
"""

from __future__ import annotations

from typing import Any

from ..core.compose import Item, Overhead, Phase, compose
from ..core.records import TERMS, Estimate
from .engines import startup


def served(run: Any) -> Any:
    """Per GPU: weights, the profile run's activation peak, the KV pool, and non-torch memory plus
    the CUDA context; together the engine's share of the GPU plus what sits outside it."""
    s = startup(run)
    arch = run.model
    # The engine's start-up is one phase; its overhead is the engine's own figure (serve.py), with no
    # fragmentation share: the engine sizes its pool from what the profile run reserved.
    phase = Phase("startup", (Item("weights", s.weights_bytes), Item("activations", s.activation_bytes, transient=True),
                              Item("kv_cache", s.kv_pool_bytes)))
    overhead = Overhead(s.non_torch_bytes + s.outside_bytes, None,
                        (("overhead.non_torch", s.non_torch_bytes), ("overhead.outside_engine_share", s.outside_bytes)))
    # No calibration: llmmem measure runs transformers, not a serving engine, so no factor was measured for it.
    comp = compose((phase,), overhead, TERMS)
    details = {**dict(s.items), **comp.overhead_details}
    failures = []
    if s.refusal:
        failures.append(f"{s.engine} refuses to start: {s.refusal}")
    wanted = run.serve.min_concurrency
    if wanted is not None and s.starts and s.max_concurrency < wanted:
        failures.append(f"min-concurrency {wanted:g} not met: the KV pool holds {s.tokens:,} tokens, "
                        f"{s.max_concurrency:.2f} requests of max-model-len {s.max_model_len:,} at once")
    notes = tuple(s.notes)
    return Estimate(run, "detailed", comp.breakdown, arch.param_count(), 0, notes, details,
                    approximate=tuple(getattr(arch, "approximate", ()) or ()) + s.approximate, failures=tuple(failures), serving=s)
