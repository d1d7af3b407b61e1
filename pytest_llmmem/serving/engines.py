"""A serving run's engine by name: its start-up, and the longest max-model-len that starts.

The engine is the catalog's entry for the run's ``engine`` (``llmmem_register_engines``: vLLM and SGLang
are built-ins registered through the hook a plugin uses). Each engine module imports what engines
share from :mod:`.serve`; none imports the module that picks it.

PYTEST_DONT_REWRITE: no asserts here; pytest need not rewrite this plugin module.
"""

from __future__ import annotations

from typing import Any

from ..catalog.registry import default_catalog, loaded
from .serve import Startup, context_limit


def startup(run: Any) -> Startup:
    """The start-up of ``run``'s engine, as its catalog entry computes it."""
    return loaded(default_catalog().engine(run.engine).startup)(run)


# vLLM V0 switched chunked prefill on above this max-model-len, which shrinks the profile run: the
# set of lengths that start is not one interval (issue 10517: 20k and 35k start, 29k does not).
CHUNKED_PREFILL_ABOVE = 32768


def largest_max_model_len(run: Any) -> int:
    """The longest max-model-len that starts (0: none). Within each side of CHUNKED_PREFILL_ABOVE a
    longer length never frees memory, so each side is bisected, the upper one first."""
    settings = run.serve
    limit, _ = context_limit(run.model)
    limit = limit or 10_000_000

    def starts(length: int) -> bool:
        return startup(run._replace(serve=settings._replace(max_model_len=length))).starts

    for low, high in ((CHUNKED_PREFILL_ABOVE + 1, limit), (1, min(limit, CHUNKED_PREFILL_ABOVE))):
        if low > high or not starts(low):
            continue
        while low < high:
            mid = (low + high + 1) // 2
            if starts(mid):
                low = mid
            else:
                high = mid - 1
        return low
    return 0
