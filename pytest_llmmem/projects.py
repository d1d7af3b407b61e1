"""Finding projects: the pyproject.toml a path means, and the ones a changed model config affects.

PYTEST_DONT_REWRITE: no asserts here; pytest need not rewrite this plugin module.
"""

import json
from pathlib import Path
from typing import Any, List, Union

from ._toml import toml
from .errors import ConfigError

def find_pyproject(path: Union[str, Path, None] = None) -> Path:
    """PATH itself when it is a file, else PATH/pyproject.toml (default: the current folder)."""
    target = Path(path) if path else Path.cwd()
    if target.is_dir():
        target = target / "pyproject.toml"
    if not target.exists():
        raise ConfigError(f"{target} does not exist.", hint="Pass a pyproject.toml, or a folder that holds one.")
    return target


def read_json(path: Path) -> Any:
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def has_llmmem_table(path: Path) -> bool:
    """Whether a pyproject.toml declares [tool.llmmem] (unreadable or invalid TOML counts as yes,
    so that checking it reports the problem instead of skipping it)."""
    try:
        document = toml.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, toml.TOMLDecodeError):
        return True
    tool = document.get("tool")
    return isinstance(tool, dict) and "llmmem" in tool


def owners_of(changed: Path, stop: Path) -> List[Path]:
    """The pyproject.toml files, in ``changed``'s folder and its parents up to ``stop``, whose
    [tool.llmmem] model (or a run's model) points its ``config`` at ``changed``."""
    target = changed.resolve()
    stop = stop.resolve()
    found = []
    for folder in [target.parent, *target.parent.parents]:
        candidate = folder / "pyproject.toml"
        if candidate.is_file():
            try:
                table = toml.loads(candidate.read_text(encoding="utf-8")).get("tool", {}).get("llmmem", {})
            except (OSError, UnicodeDecodeError, toml.TOMLDecodeError, AttributeError):
                table = {}
            models = [table.get("model")] + [r.get("model") for r in table.get("runs", []) if isinstance(r, dict)] if isinstance(table, dict) else []
            for model in models:
                ref = model.get("config") if isinstance(model, dict) else None
                if isinstance(ref, str) and ref:
                    resolved = (folder / ref).resolve()
                    if resolved.is_dir():
                        resolved = resolved / "config.json"
                    if resolved == target:
                        found.append(candidate)
                        break
        if folder == stop or stop not in folder.parents:
            break
    return found

