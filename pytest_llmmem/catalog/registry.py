"""What the estimator knows by name: number formats, optimizers, GPUs, model families, adapters, serving
engines, trainer profiles, trainer-config readers and post-training recipes.

Everything here, the built-ins included, arrives through the hooks in :mod:`pytest_llmmem.hookspecs`.
Third-party plugins (entry-point group ``llmmem``) are loaded only when a config names something the
built-ins lack, so the common case pays nothing for the entry-point scan (about 25 ms on a machine
with a hundred packages) on every pre-commit run. Until a plugin is in play, the built-ins' hook
implementations are called directly, as their hook would call them: pluggy is imported with the
first plugin, because it imports ``inspect`` (with ``ast``, ``dis`` and ``tokenize``), ~7 ms of CPU
per ``llmmem check``, a sixth of a bare ``tomllib + argparse`` script (benchmarks/cli_startup.py).

PYTEST_DONT_REWRITE: no asserts here; pytest need not rewrite this plugin module.
"""

from __future__ import annotations

import importlib
import os
import re
from typing import TYPE_CHECKING, Any, Callable, Dict, Iterable, List, Optional

from ..errors import ConfigError, did_you_mean, one_of, shown, shown_name
from .entries import GPU, AmbiguousName, DType, Engine, Optimizer, Reader, Recipe  # noqa: F401  (pytest_llmmem.catalog.GPU etc., as plugins import them)
from ..units import format_bytes

if TYPE_CHECKING:  # pragma: no cover
    from ..model.architecture import Family

DISABLE_ENV = "LLMMEM_DISABLE_PLUGINS"
# The hooks each table is filled from (hookspecs.py), in the order the tables are built.
_HOOKS = ("llmmem_register_dtypes", "llmmem_register_optimizers", "llmmem_register_gpus", "llmmem_register_families",
          "llmmem_register_engines", "llmmem_register_adapters", "llmmem_register_profiles",
          "llmmem_register_readers", "llmmem_register_recipes")


_MAX_NAME = 200  # characters; longer names are refused before normalising
_VENDORS = ("nvidia", "amd", "tesla", "geforce", "instinct")
_VENDOR = re.compile(r"^(nvidia|amd|tesla|geforce|instinct)[\s_\-]+")
_PUNCTUATION = re.compile(r"[\s_\-.]+")


def normalize_name(name: str) -> str:
    """Case-, punctuation- and vendor-insensitive key: "A100 80GB", "a100-80gb" and
    "NVIDIA A100-SXM4-80GB" (as nvidia-smi prints it) agree. The regular expressions run only where
    a plain check cannot decide: the catalog normalises every spelling of every entry on each start-up."""
    name = name.lower().strip()
    while name.startswith(_VENDORS) and _VENDOR.match(name):
        name = _VENDOR.sub("", name, count=1)
    plain = name.replace("-", "").replace("_", "").replace(".", "").replace(" ", "")
    return plain if plain.isalnum() else _PUNCTUATION.sub("", name)


def _is_ambiguous(entry: Any) -> bool:
    """By shape, not class: pytester's in-process runs may import this module twice."""
    return hasattr(entry, "choices") and not hasattr(entry, "memory_bytes")


class _Table:
    """Entries of one kind by every normalised spelling, and which plugin registered each."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.entries: Dict[str, Any] = {}  # normalized name or alias -> DType | Optimizer | GPU
        self.owners: Dict[str, str] = {}  # normalized name -> plugin that registered it
        self.names: List[str] = []  # canonical names, in registration order

    def add(self, entry: Any, owner: str) -> None:
        for spelling in (entry.name, *entry.aliases):
            key = normalize_name(spelling)
            if key in self.entries and self.entries[key] is not entry:
                raise ConfigError(
                    f'{self.kind} "{spelling}" is registered twice, by plugin "{self.owners[key]}" and by "{owner}".',
                    hint=f"Block one of them with {DISABLE_ENV}=<name>.",
                )
            self.entries[key] = entry
            self.owners[key] = owner
        if not _is_ambiguous(entry):
            self.names.append(entry.name)


class Catalog:
    """The registered dtypes, optimizers and GPUs, looked up by any common spelling."""

    def __init__(self, extra_plugins: Iterable[object] = ()) -> None:
        self._pm: Any = None  # pluggy's PluginManager, made when the first plugin is in play
        for plugin in extra_plugins:
            self._plugin_manager().register(plugin)
        self._entry_points_loaded = False
        self._collect()

    def _plugin_manager(self) -> Any:
        """pluggy's manager, with the hookspecs and the built-ins registered like any plugin."""
        if self._pm is None:
            import pluggy

            from . import builtin, hookspecs

            pm = pluggy.PluginManager(hookspecs.PROJECT)
            pm.add_hookspecs(hookspecs)
            for hook in _HOOKS:
                hookspecs.hookimpl(getattr(builtin, hook))  # the marker a plugin writes as @hookimpl
            pm.register(builtin, name="builtin")
            self._pm = pm
        return self._pm

    def _collect(self) -> None:
        self.dtypes = _Table("dtype")
        self.optimizers = _Table("optimizer")
        self.gpus = _Table("gpu")
        self.families = _Table("model family")
        self.engines = _Table("serving engine")
        self.adapters = _Table("adapter")
        self.profiles = _Table("trainer profile")
        self.readers = _Table("trainer-config format")
        self.recipes = _Table("recipe")
        tables = (self.dtypes, self.optimizers, self.gpus, self.families, self.engines, self.adapters, self.profiles, self.readers,
                  self.recipes)
        if self._pm is None:  # the built-ins alone: their hook implementations, called as the loop below would
            from . import builtin

            for table, hook in zip(tables, _HOOKS):
                getattr(builtin, hook)(register=lambda entry, t=table: t.add(entry, "builtin"))
            return
        for table, hook in zip(tables, _HOOKS):
            for impl in getattr(self._pm.hook, hook).get_hookimpls():
                owner = impl.plugin_name
                impl.function(register=lambda entry, t=table, o=owner: t.add(entry, o))

    def load_entry_points(self) -> int:
        """Load third-party plugins from the ``llmmem`` entry-point group, once."""
        if self._entry_points_loaded:
            return 0
        self._entry_points_loaded = True
        disabled = [n.strip() for n in os.environ.get(DISABLE_ENV, "").split(",") if n.strip()]
        if "all" in disabled:
            return 0
        pm = self._plugin_manager()
        for name in disabled:
            pm.set_blocked(name)
        try:
            count = pm.load_setuptools_entrypoints(pm.project_name)
        except Exception as err:  # a broken third-party plugin must not look like our crash
            raise ConfigError(
                f"an llmmem plugin failed to load: {type(err).__name__}: {err}.",
                hint=f"Fix or uninstall it, or block it with {DISABLE_ENV}=<entry-point name> (or all).",
            ) from None
        if count:
            self._collect()
        return count

    def _lookup(self, attr: str, name: object) -> Any:
        table = getattr(self, attr)
        if not isinstance(name, str):
            raise ConfigError(f"expected a {table.kind} name as a string, got {shown(name)}.", hint=f"Valid: {one_of(table.names)}.")
        key = normalize_name(name) if len(name) <= _MAX_NAME else None
        if key is None:  # no name is this long; normalising it would cost time for nothing
            raise ConfigError(f'unknown {table.kind} "{shown_name(name)}" ({len(name):,} characters).', hint=f"Valid: {one_of(table.names)}.")
        if key not in table.entries and self.load_entry_points():
            table = getattr(self, attr)  # plugins were added: the tables were rebuilt
        if key not in table.entries:
            raise ConfigError(
                f'unknown {table.kind} "{shown_name(name)}".{did_you_mean(name, table.names)}',
                hint=f"Valid: {one_of(table.names)} (or one a plugin registers).",
            )
        entry = table.entries[key]
        if _is_ambiguous(entry):
            choices = [f"{c} ({format_bytes(table.entries[normalize_name(c)].memory_bytes)})" for c in entry.choices]
            raise ConfigError(
                f'{table.kind} "{name}" is ambiguous: it could be {", ".join(choices[:-1])} or {choices[-1]}.',
                hint="Name the card you have, as nvidia-smi or rocm-smi prints it or as listed by llmmem catalog gpus.",
            )
        return entry

    def dtype(self, name: object) -> DType:
        return self._lookup("dtypes", name)

    def optimizer(self, name: object) -> Optimizer:
        return self._lookup("optimizers", name)

    def gpu(self, name: object) -> GPU:
        return self._lookup("gpus", name)

    def family(self, name: object) -> Any:
        """A model family (:class:`pytest_llmmem.model.Family`) by name or alias."""
        return self._lookup("families", name)

    def engine(self, name: object) -> Engine:
        """A serving engine (built-in or a plugin's) by name."""
        return self._lookup("engines", name)

    def adapter(self, name: object) -> Any:
        """A PEFT method (:class:`pytest_llmmem.model.adapters.Adapter`) by the mode that names it."""
        return self._lookup("adapters", name)

    def adapter_entries(self) -> List[Any]:
        """Every registered adapter, in registration order (the built-ins first)."""
        return [self.adapters.entries[normalize_name(name)] for name in self.adapters.names]

    def profile(self, name: object) -> Any:
        """A trainer profile (:class:`pytest_llmmem.catalog.profiles.Profile`, built-in or a plugin's) by name."""
        return self._lookup("profiles", name)

    def reader(self, name: object) -> Reader:
        """A trainer-config reader (built-in or a plugin's) by format name."""
        return self._lookup("readers", name)

    def recipe(self, name: object) -> Recipe:
        """A post-training recipe (built-in or a plugin's) by name; "sft" is no recipe and not here."""
        return self._lookup("recipes", name)

    def names(self, attr: str, *wanted: object) -> List[str]:
        """The registered names of one kind, in registration order; plugins are loaded first only when a
        ``wanted`` name is none of them (as a dtype or GPU name is looked up), so a typo still lists them."""
        table = getattr(self, attr)
        if any(isinstance(w, str) and w.lower() not in table.names for w in wanted) and self.load_entry_points():
            table = getattr(self, attr)  # plugins were added: the tables were rebuilt
        return list(table.names)

    def has_family(self, name: str) -> bool:
        """Is ``name`` a registered family (loading plugins if the built-ins lack it)?"""
        if len(name) > _MAX_NAME:
            return False
        key = normalize_name(name)
        return key in self.families.entries or (self.load_entry_points() > 0 and key in self.families.entries)


def loaded(ref: Any) -> Callable[..., Any]:
    """An entry's function: itself, or "module:function" (how built-ins above the catalog name theirs) imported now."""
    if not isinstance(ref, str):
        return ref
    module, _, name = ref.partition(":")
    return getattr(importlib.import_module(module), name)


_DEFAULT: Optional[Catalog] = None


def default_catalog() -> Catalog:
    """The process-wide catalog of built-ins (plus entry-point plugins once one is needed)."""
    global _DEFAULT
    if _DEFAULT is None:
        _DEFAULT = Catalog()
    return _DEFAULT


def family(name: object) -> "Family":
    """A registered family by name or alias (built-ins and plugins, through the catalog)."""
    return default_catalog().family(name)
