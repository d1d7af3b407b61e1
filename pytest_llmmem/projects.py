"""Finding projects: the pyproject.toml a path means (the ones a changed model config affects: repo_scan).

PYTEST_DONT_REWRITE: no asserts here; pytest need not rewrite this plugin module.
"""

import json
from pathlib import Path
from typing import Any, Union

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
