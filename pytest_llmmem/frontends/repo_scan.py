"""Which pyprojects a changed (or vanished) model config affects, found by one scan of the repository.

A model config can be shared from anywhere (``config = "../common/llama/config.json"``), so walking
up from a changed file misses its users; and pre-commit passes only the new name of a rename and
nothing for a deletion. So the hook scans the repository once: every pyproject.toml that mentions
llmmem is read (cheaply: a substring test before any TOML parsing) and indexed by the resolved path of
each model config it names, its own or a run's. Folders that hold no project of the user's (any
dot-folder such as .git or .venv, virtual environments, node_modules, build output) are skipped and
symlinked folders are not followed, so the walk ends, and stays well under a second for a normal
repository (scanning stops after MAX_ENTRIES entries, and says so).

PYTEST_DONT_REWRITE: no asserts here; pytest need not rewrite this plugin module.
"""

from __future__ import annotations

import os
import stat
from typing import Any, Dict, List, Optional, Sequence

from ..io import files
from ..io.projects import repository_root  # noqa: F401  (lives in projects: check imports it without the scanner)
from ..io.files import toml
from ..record import Record

SKIP_FOLDERS = frozenset({"node_modules", "venv", "__pycache__", "site-packages", "build", "dist", "htmlcov"})
MAX_ENTRIES = 200_000  # files and folders looked at; 10,052 files in 1,003 folders take 14 ms of CPU


def _skipped(name: str) -> bool:
    return name.startswith(".") or name in SKIP_FOLDERS or name.endswith(".egg-info")


def scan_pyprojects(root: str) -> "Scan":
    """Every pyproject.toml under ``root`` (absolute paths, sorted), skipping folders that hold no
    project; ``complete`` is False when MAX_ENTRIES was reached first."""
    found: List[str] = []
    stack, seen = [root], 0
    while stack:
        folder = stack.pop()
        try:
            with os.scandir(folder) as entries:
                for entry in entries:
                    seen += 1
                    if seen > MAX_ENTRIES:
                        return Scan(sorted(found), False)
                    try:
                        if entry.is_dir(follow_symlinks=False):
                            if not _skipped(entry.name):
                                stack.append(entry.path)
                        elif entry.name == "pyproject.toml":
                            found.append(entry.path)
                    except OSError:
                        continue
        except OSError:  # unreadable folder, or one removed while scanning
            continue
    return Scan(sorted(found), True)


class Scan(Record):
    pyprojects: List[str]
    complete: bool


def read_small_text(path: str) -> Optional[str]:
    """A pyproject's text through the guarded reader, or None when it is anything but a readable
    regular file of sane size (a FIFO, a symlink loop, 200 MB): checking that file itself says why."""
    try:
        return files.read_text(path, files.PYPROJECT_LIMIT)
    except (OSError, ValueError):  # FileNotFoundError, UnreadableFile
        return None


def llmmem_table(text: Optional[str]) -> Optional[Dict[str, Any]]:
    """The [tool.llmmem] table of a pyproject's text, or None (no table, not TOML, unreadable)."""
    if text is None or "llmmem" not in text:
        return None
    try:
        tool = toml.loads(text).get("tool")
    except (ValueError, RecursionError):  # TOMLDecodeError is a ValueError
        return None
    table = tool.get("llmmem") if isinstance(tool, dict) else None
    return table if isinstance(table, dict) else None


def model_config_refs(table: Dict[str, Any]) -> List[str]:
    """The ``config`` paths of [tool.llmmem.model] and of every run's model, whatever shape the TOML has."""
    models = [table.get("model")]
    runs = table.get("runs")
    if isinstance(runs, list):
        models += [run.get("model") for run in runs if isinstance(run, dict)]
    refs = [model.get("config") for model in models if isinstance(model, dict)]
    if isinstance(runs, list):  # from = "train.yaml": the trainer config a run reads (readers/)
        refs += [run.get("from") for run in runs if isinstance(run, dict)]
    return list(dict.fromkeys(ref for ref in refs if isinstance(ref, str) and ref and "\0" not in ref))


def followed_files(trainer_config: str, folder: str) -> List[str]:
    """The DeepSpeed JSON a trainer config names, as the reader looks for it: beside the config, then
    beside the pyproject (a text scan: the hook does not import PyYAML to index a repository)."""
    if not trainer_config.endswith((".yaml", ".yml", ".json")):
        return []
    from ..config.readers.mapper import named_json_files

    text = read_small_text(trainer_config)
    found: List[str] = []
    for name in named_json_files(text or ""):
        found += [os.path.realpath(os.path.join(os.path.dirname(trainer_config), name)), os.path.realpath(os.path.join(folder, name))]
    return list(dict.fromkeys(found))


def resolve_config(folder: str, ref: str) -> str:
    """Where a ``config`` value points, as the config reader resolves it: relative to the pyproject's
    folder, a folder meaning its config.json; symlinks resolved (a loop is left as written)."""
    path = os.path.realpath(os.path.join(folder, ref))
    try:
        if stat.S_ISDIR(os.stat(path).st_mode):
            path = os.path.join(path, "config.json")
    except (OSError, ValueError):
        pass
    return path


def exists(path: str) -> bool:
    try:
        os.stat(path)
        return True
    except (OSError, ValueError):
        return os.path.lexists(path)  # a symlink loop exists; reading it says what is wrong


class Index(Record):
    """The [tool.llmmem] pyprojects of a repository by the model configs they name."""

    owners: Dict[str, List[str]]  # resolved model config path -> pyprojects naming it
    missing: List[str]  # pyprojects naming a model config that does not exist
    complete: bool  # False when the scan stopped at MAX_ENTRIES


def index_projects(roots: Sequence[str], extra: Sequence[str] = ()) -> Index:
    """Scan each root once (plus the ``extra`` pyprojects) and index what their models point at."""
    owners: Dict[str, List[str]] = {}
    missing: List[str] = []
    complete, seen = True, set()
    candidates: List[str] = []
    for root in roots:
        scan = scan_pyprojects(root)
        complete &= scan.complete
        candidates += scan.pyprojects
    for pyproject in list(candidates) + list(extra):
        if pyproject in seen:
            continue
        seen.add(pyproject)
        table = llmmem_table(read_small_text(pyproject))
        if table is None:
            continue
        folder = os.path.dirname(pyproject)
        for ref in model_config_refs(table):
            target = resolve_config(folder, ref)
            owners.setdefault(target, []).append(pyproject)
            if not exists(target) and pyproject not in missing:
                missing.append(pyproject)
            for followed in followed_files(target, folder):
                if pyproject not in owners.setdefault(followed, []):
                    owners[followed].append(pyproject)
    return Index(owners, missing, complete)


def walk_up(path: str) -> List[str]:
    """The pyproject.toml files in ``path``'s folder and each folder above it."""
    found, folder = [], os.path.dirname(os.path.abspath(path))
    while True:
        candidate = os.path.join(folder, "pyproject.toml")
        if os.path.lexists(candidate):
            found.append(candidate)
        parent = os.path.dirname(folder)
        if parent == folder:
            return found
        folder = parent
