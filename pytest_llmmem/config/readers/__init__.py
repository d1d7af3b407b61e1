"""Runs read from a trainer's own config (``from = "train.yaml"`` on a run): adapters at the edge.

One module per format, each a table from the trainer's key to ours with every default cited; the
result is plain run keys, so the core never knows where a key came from (the report does, through
``Reading.origins``). Keys written on the run in pyproject.toml override what was read.

PYTEST_DONT_REWRITE: no asserts here; pytest need not rewrite this plugin module.
"""

import re
from pathlib import Path
from typing import Any, Dict, List, NamedTuple, Optional, Tuple

from ...io import files
from ...errors import ConfigError, shown_name

FORMATS = ("axolotl", "llama-factory", "torchtune", "trl", "litgpt")
TRAINER_LIMIT = 1024 * 1024  # a trainer YAML is a few KB; 1 MiB bounds the parse (files.py's reasoning)


class Reading(NamedTuple):
    """What a trainer config says, as our run keys, and where each came from."""

    format: str
    path: str
    values: Dict[str, Any]  # canonical run keys; "model" is a model table ({"id": ...} or {"config": ...})
    origins: Dict[str, str]  # our key -> "train.yaml: micro_batch_size" or "axolotl default (source)"
    not_modelled: Tuple[str, ...]  # memory-relevant settings the estimate does not model
    follows: Tuple[str, ...]  # other files it read (a DeepSpeed JSON)


class Mapper:
    """Collects one reading: ``put`` a value read from the file, ``assume`` a trainer default."""

    def __init__(self, fmt: str, path: Path, data: Dict[str, Any], recipe: str = "") -> None:
        self.fmt, self.path, self.data = fmt, path, data
        self.recipe = recipe  # the run's own recipe key, for configs that do not say which trainer
        self.values: Dict[str, Any] = {}
        self.origins: Dict[str, str] = {}
        self.skipped: List[str] = []
        self.follows: List[str] = []

    def get(self, key: str, default: Any = None) -> Any:
        """A top-level key; YAML's empty value (``deepspeed:``) counts as absent."""
        value = self.data.get(key)
        return default if value is None else value

    def is_set(self, key: str) -> bool:
        """A switch that is on: not absent, false, empty or 1 (a parallel degree of 1 is no parallelism)."""
        value = self.data.get(key)
        return value is True or (isinstance(value, str) and value.lower() not in ("", "false", "none")) \
            or (isinstance(value, (list, dict)) and bool(value)) or (type(value) is int and value > 1)

    def put(self, ours: str, value: Any, theirs: str, where: Optional[Path] = None) -> None:
        self.values[ours] = value
        self.origins[ours] = f"{(where or self.path).name}: {theirs}"

    def assume(self, ours: str, value: Any, cite: str) -> None:
        self.values[ours] = value
        self.origins[ours] = f"{self.fmt} default ({cite})"

    def not_modelled(self, theirs: str, why: str) -> None:
        self.skipped.append(f"{self.path.name}: {theirs} ({why}) is not modelled")

    def fail(self, theirs: str, message: str, hint: Optional[str] = None) -> ConfigError:
        return ConfigError(f"{theirs}: {message}", path=str(self.path), hint=hint)

    def reading(self) -> Reading:
        return Reading(self.fmt, str(self.path), self.values, self.origins, tuple(self.skipped), tuple(self.follows))


def load_document(path: Path) -> Any:
    """A trainer config: JSON through files.read_json, YAML through PyYAML's safe_load (no tags, no
    code: ``!!python/object`` is refused). PyYAML is imported only here, so start-up stays small."""
    shown = f'"{shown_name(str(path), 120)}"'
    try:
        if path.suffix == ".json":
            return files.read_json(path, TRAINER_LIMIT)
        text = files.read_text(path, TRAINER_LIMIT)
    except FileNotFoundError:
        raise ConfigError(f"{shown} does not exist.", hint="from is relative to the folder of the pyproject.toml (or absolute).") from None
    except files.UnreadableFile as err:
        raise ConfigError(f"{shown} cannot be read: it {err}.") from None
    try:
        import yaml
    except ImportError:
        raise ConfigError(f"{shown} is YAML, and reading it needs PyYAML, a dependency of pytest-llmmem that is missing here "
                          "(installed with --no-deps?).", hint="pip install PyYAML.") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        line = f" (line {mark.line + 1})" if mark is not None else ""
        problem = getattr(err, "problem", None) or type(err).__name__
        raise ConfigError(f"{shown} is not valid YAML{line}: {problem}.") from None
    except RecursionError:
        raise ConfigError(f"{shown} is nested too deeply to parse.") from None


def detect(data: Dict[str, Any]) -> Optional[str]:
    """The format from the keys only each trainer uses (see each module's docstring)."""
    if any(isinstance(v, dict) and "_component_" in v for v in data.values()):
        return "torchtune"
    if "model_name_or_path" in data and ({"stage", "finetuning_type", "cutoff_len"} & set(data)):
        return "llama-factory"
    if {"base_model", "micro_batch_size", "sequence_len"} & set(data):
        return "axolotl"
    if "checkpoint_dir" in data or (isinstance(data.get("train"), dict) and "micro_batch_size" in data["train"]):
        return "litgpt"
    if {"model_name_or_path", "per_device_train_batch_size", "output_dir"} & set(data):
        return "trl"
    return None


def model_table(value: str, path: Path, base_dir: Path) -> Dict[str, str]:
    """A model named in a trainer config: a local folder holding config.json, or a Hub id."""
    for folder in (path.parent, base_dir):
        candidate = folder / value
        if files.is_file(candidate / "config.json"):
            return {"config": str(files.resolve(candidate))}
    return {"id": value}


_DS_REF = re.compile(r"""^\s*["']?deepspeed["']?\s*[:=]\s*["']?([^"'\s#,]+\.json)""", re.MULTILINE)


def named_json_files(text: str) -> List[str]:
    """The DeepSpeed JSON a trainer config names (``deepspeed: ds.json``), found without PyYAML so
    the hook's owner lookup stays cheap; the reader itself follows the parsed value."""
    return _DS_REF.findall(text)
