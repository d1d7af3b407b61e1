"""The public plugin API, where plugins import it from (``from pytest_llmmem.hookspecs import hookimpl``);
the specifications are :mod:`pytest_llmmem.catalog.hookspecs`.

PYTEST_DONT_REWRITE: no asserts here; pytest need not rewrite this plugin module.
"""

from __future__ import annotations

from .catalog.hookspecs import (
    PROJECT,
    hookimpl,
    hookspec,
    llmmem_register_adapters,
    llmmem_register_dtypes,
    llmmem_register_families,
    llmmem_register_gpus,
    llmmem_register_optimizers,
)

__all__ = ["PROJECT", "hookimpl", "hookspec", "llmmem_register_adapters", "llmmem_register_dtypes", "llmmem_register_families",
           "llmmem_register_gpus", "llmmem_register_optimizers"]
