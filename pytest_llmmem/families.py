"""The built-in model families, where plugins import them from (``from pytest_llmmem.families import LLAMA``);
the table is :mod:`pytest_llmmem.model.families`.

PYTEST_DONT_REWRITE: no asserts here; pytest need not rewrite this plugin module.
"""

from __future__ import annotations

from .model.families import *  # noqa: F401,F403  (every public family record and builtin_families)
