"""The named tables a plugin can add to: dtypes, optimizers, GPUs, families (registry, hookspecs, built-ins)
and the trainer profiles. Imports model/ and below.

``from pytest_llmmem.catalog import GPU, Optimizer, default_catalog`` keeps working (the names live in
:mod:`.registry` and are looked up there on first use, so importing the package loads nothing).

PYTEST_DONT_REWRITE: no asserts here; pytest need not rewrite this plugin module.
"""


_SUBMODULES = ("builtin", "entries", "hookspecs", "profiles", "registry")


def __getattr__(name: str) -> object:
    """``pytest_llmmem.catalog.GPU`` and the other registry names (PEP 562), imported on first use."""
    if name.startswith("__") or name in _SUBMODULES:
        # not a registry name: "from . import builtin" asks here first, then imports the submodule itself
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from . import registry

    try:
        return getattr(registry, name)
    except AttributeError:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
