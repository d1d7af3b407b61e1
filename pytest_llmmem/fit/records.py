"""The record every way out is: one change to a run and the estimate it gives (the training search
in :mod:`.search` and a server's in :mod:`.serving` both return them).

PYTEST_DONT_REWRITE: no asserts here; pytest need not rewrite this plugin module.
"""

from typing import NamedTuple

from ..core.records import Estimate


class WayOut(NamedTuple):
    """One change that makes the run fit, with the estimate it gives."""

    key: str
    value: object
    text: str
    estimate: Estimate
