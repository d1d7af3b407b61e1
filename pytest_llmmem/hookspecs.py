"""Hook specifications: how a plugin adds dtypes, optimizers and GPUs.

Plugins are found in the ``llmmem`` entry-point group (``LLMMEM_DISABLE_PLUGINS`` blocks them by
name, or ``all``). The built-ins in :mod:`pytest_llmmem.builtin` use these same hooks. Each hook
receives one keyword argument, ``register``, a callable taking one catalog entry; a name that two
plugins both register is an error rather than a silent override.

Example plugin module::

    from pytest_llmmem.hookspecs import hookimpl
    from pytest_llmmem.catalog import GPU, Optimizer

    @hookimpl
    def llmmem_register_gpus(register):
        register(GPU("Gaudi3", memory_bytes=128 * 1024**3))

PYTEST_DONT_REWRITE: no asserts here; pytest need not rewrite this plugin module.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

import pluggy

if TYPE_CHECKING:  # pragma: no cover
    from .catalog import GPU, DType, Optimizer

PROJECT = "llmmem"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def llmmem_register_dtypes(register: "Callable[[DType], None]") -> None:
    """Call ``register(DType(...))`` for each number format the plugin knows."""

@hookspec
def llmmem_register_optimizers(register: "Callable[[Optimizer], None]") -> None:
    """Call ``register(Optimizer(...))`` for each optimizer the plugin knows."""


@hookspec
def llmmem_register_gpus(register: "Callable[[GPU], None]") -> None:
    """Call ``register(GPU(...))`` for each accelerator the plugin knows."""
