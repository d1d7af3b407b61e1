"""Finding projects: the pyproject.toml a path means (the ones a changed model config affects: repo_scan).

PYTEST_DONT_REWRITE: no asserts here; pytest need not rewrite this plugin module.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Union

from . import files
from .files import toml
from ..errors import ConfigError, shown_name
from .files import read_json  # noqa: F401  (the model config reader: config.parse's default)


def find_pyproject(path: Union[str, Path, None] = None) -> Path:
    """PATH itself when it is a file, else PATH/pyproject.toml (default: the nearest [tool.llmmem] one)."""
    if not path:
        return nearest_pyproject()
    target = Path(path)
    if files.is_dir(target) and target.name != "pyproject.toml":  # a folder so named is refused on reading
        target = target / "pyproject.toml"
    try:
        files.describe(target)  # only "missing" matters here; reading it says what else is wrong
    except FileNotFoundError:
        raise ConfigError(f"{shown_name(target, 200)} does not exist.", hint="Pass a pyproject.toml, or a folder that holds one.") from None
    return target


def nearest_pyproject() -> Path:
    """The pyproject.toml with [tool.llmmem] in the current folder or the nearest folder above it, as
    pytest and ruff look for their own tables; the search stops at the repository root (the folder
    holding .git). Returned relative to the current folder, as messages show it."""
    cwd = os.getcwd()
    root = repository_root(cwd)
    folder = cwd
    while True:
        candidate = os.path.join(folder, "pyproject.toml")
        if os.path.lexists(candidate) and has_llmmem_table(Path(candidate)):  # unreadable counts: checking it says why
            return Path(os.path.relpath(candidate))
        parent = os.path.dirname(folder)
        if folder == root or parent == folder:
            break
        folder = parent
    if os.path.lexists(os.path.join(cwd, "pyproject.toml")):
        return Path("pyproject.toml")  # checking it says that it has no [tool.llmmem]
    raise ConfigError(f"no pyproject.toml with [tool.llmmem] in {shown_name(cwd, 200)} or the folders above it "
                      f"(up to the repository root, {shown_name(root, 200)}).", hint="Pass a pyproject.toml, or a folder that holds one.")


def read_pyproject(path: Path) -> str:
    """A pyproject.toml's text, or a ConfigError "cannot be read: ..." naming it."""
    try:
        return files.read_text(path, files.PYPROJECT_LIMIT)
    except FileNotFoundError:
        raise ConfigError("does not exist.", path=shown_name(path, 200)) from None
    except files.UnreadableFile as err:
        raise ConfigError(f"cannot be read: it {err}.", path=shown_name(path, 200)) from None


def has_llmmem_table(path: Path) -> bool:
    """Whether a pyproject.toml declares [tool.llmmem] (unreadable or invalid TOML counts as yes,
    so that checking it reports the problem instead of skipping it)."""
    try:
        text = files.read_text(path, files.PYPROJECT_LIMIT)
        if "llmmem" not in text:  # spares the parse of every other pyproject a commit touches
            return False
        document = toml.loads(text)
    except (OSError, ValueError, RecursionError):  # UnreadableFile, TOMLDecodeError are ValueErrors
        return True
    tool = document.get("tool")
    return isinstance(tool, dict) and "llmmem" in tool


def repository_root(start: str) -> str:
    """The nearest folder at or above ``start`` holding ``.git`` (a folder, or a file in a worktree or
    submodule); ``start`` itself outside a repository. No git process is started."""
    folder = os.path.abspath(start)
    while True:
        if os.path.lexists(os.path.join(folder, ".git")):
            return folder
        parent = os.path.dirname(folder)
        if parent == folder:
            return os.path.abspath(start)
        folder = parent
