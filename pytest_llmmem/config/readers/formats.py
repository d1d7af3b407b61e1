"""Reading a trainer config by its format: the document, the format detected or given, and the one module
that maps that format's keys. Apart from the package's ``__init__`` because every format module imports
:class:`Mapper` from there; loaded only for a run with ``from = "train.yaml"``.

PYTEST_DONT_REWRITE: no asserts here; pytest need not rewrite this plugin module.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Optional

from ...catalog.registry import default_catalog, loaded
from ...errors import ConfigError, one_of, shown_name
from ...io import files
from ...io.projects import repository_root
from .mapper import Mapper, Reading, detect, load_document, outside


def read(path: Path, fmt: Optional[str], base_dir: Path, recipe: str = "", shown: str = "", root: Optional[Path] = None,
         engine: Optional[Dict[str, Any]] = None) -> Reading:
    """``path`` mapped to our run keys; ``fmt`` None means detect it. ``shown`` is how messages name
    the file (its errors carry their YAML line). ``path`` and every file it names must lie in ``root``,
    the repository (default: the one holding ``base_dir``). ``engine``: the run's own zero-stage / fsdp."""
    root = root or Path(repository_root(str(base_dir)))
    if not files.within(path, root):
        raise ConfigError(outside(str(path), root), hint="Copy the trainer config into the repository and name it from there.")
    data, lines = load_document(path)
    if not isinstance(data, dict):
        raise ConfigError(f'"{shown_name(str(path), 120)}" holds no mapping of settings; expected a trainer config.')
    catalog = default_catalog()
    if fmt is None:
        fmt = detect(data) or _detected_by_plugin(catalog, data)
        if fmt is None:
            raise ConfigError(f'cannot tell which trainer "{shown_name(str(path), 120)}" is for.',
                              hint=f"Add format = ... beside from: {one_of(catalog.names('readers'))}.")
    reader = catalog.reader(fmt)
    mapper = Mapper(reader.name, path, data, recipe, lines, shown, root, engine)
    mapper.check_keys(reader.keys)
    loaded(reader.read)(mapper, base_dir)
    return mapper.reading()


def _detected_by_plugin(catalog, data) -> Optional[str]:
    """A plugin reader's format that claims ``data``, tried after the built-ins' checks (plugins loaded now)."""
    catalog.load_entry_points()
    readers = [catalog.reader(name) for name in catalog.names("readers")]
    return next((r.name for r in readers if r.detect is not None and r.detect(data)), None)
