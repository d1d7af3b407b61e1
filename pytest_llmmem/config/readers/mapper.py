"""The readers' shared parts: the Mapper that turns a trainer's keys into run keys and remembers where
each came from, the guarded YAML loader with key lines, format detection and the trainer key lists.

PYTEST_DONT_REWRITE: no asserts here; pytest need not rewrite this plugin module.
"""

from __future__ import annotations

import os
import re
from functools import lru_cache
from pathlib import Path
from typing import Any, Dict, FrozenSet, List, Optional, Tuple

from ...io import files
from ...io.json_lines import line_of
from ...errors import ConfigError, did_you_mean, nearest, shown_name
from ...record import Record

TRAINER_LIMIT = 1024 * 1024  # a trainer YAML is a few KB; 1 MiB bounds the parse (files.py's reasoning)


class Reading(Record):
    """What a trainer config says, as our run keys, and where each came from."""

    format: str
    path: str
    values: Dict[str, Any]  # canonical run keys; "model" is a model table ({"id": ...} or {"config": ...})
    origins: Dict[str, str]  # our key -> "train.yaml: micro_batch_size" or "axolotl default (source)"
    not_modelled: Tuple[str, ...]  # memory-relevant settings the estimate does not model
    follows: Tuple[str, ...]  # other files it read (a DeepSpeed JSON)
    places: Dict[str, Tuple[str, Optional[int], str]]  # our key -> (file as shown, its line, their key)


class Mapper:
    """Collects one reading: ``put`` a value read from the file, ``assume`` a trainer default."""

    def __init__(self, fmt: str, path: Path, data: Dict[str, Any], recipe: str = "", lines: Optional[Dict[str, int]] = None,
                 shown: str = "", root: Optional[Path] = None, engine: Optional[Dict[str, Any]] = None) -> None:
        self.fmt, self.path, self.data = fmt, path, data
        self.root = root or path.parent  # the repository: every file the config names must lie in it
        self.recipe = recipe  # the run's own recipe key, for configs that do not say which trainer
        self.engine = dict(engine or {})  # the run's own zero-stage / fsdp, which override the file's
        self.lines = lines or {}  # "key" and "section.key" -> line in the file (YAML node marks)
        self.shown = shown or str(path)  # the file as messages name it: relative to where the pyproject is shown
        self.values: Dict[str, Any] = {}
        self.origins: Dict[str, str] = {}
        self.places: Dict[str, Tuple[str, Optional[int], str]] = {}
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

    def put(self, ours: str, value: Any, theirs: str, where: Optional[Path] = None, lines: Optional[Dict[str, int]] = None) -> None:
        """A value the file gives under ``theirs`` (its key, then an optional note); ``where`` is another
        file it follows (a DeepSpeed JSON), ``lines`` the line of each of that file's keys."""
        self.values[ours] = value
        self.origins[ours] = f"{(where or self.path).name}: {theirs}"
        key = _KEY.match(theirs)
        if where is None and key:
            self.places[ours] = (self.shown, self.lines.get(key.group(0)), key.group(0))
        elif where is not None:
            self.places[ours] = (self.shown_as(where), line_of(key.group(0) if key else theirs, lines or {}), theirs)

    def shown_as(self, where: Path) -> str:
        """A file the config names, as messages name it: beside the config as the config is shown."""
        if where == self.path:
            return self.shown
        try:
            return os.path.normpath(os.path.join(os.path.dirname(self.shown), os.path.relpath(where, self.path.parent)))
        except ValueError:  # another drive on Windows
            return str(where)

    def given(self, key: str) -> bool:
        """The file writes ``key`` (a dotted "section.key" looks inside the section)."""
        section, _, leaf = key.rpartition(".")
        table = self.data.get(section) if section else self.data
        return isinstance(table, dict) and leaf in table

    def declared(self, ours: str) -> Any:
        """Our key as the run will have it: the run's own zero-stage / fsdp over what the file gave."""
        return self.engine[ours] if ours in self.engine else self.values.get(ours)

    def assume(self, ours: str, value: Any, cite: str) -> None:
        self.values[ours] = value
        self.origins[ours] = f"{self.fmt} default ({cite})"

    def modules_to_save(self, theirs: str) -> None:
        """PEFT's modules_to_save under the trainer's key: the head and the embedding are priced (a full
        trainable copy each); any other module is reported as not modelled."""
        value = self.get(theirs)
        if not value:
            return
        # a comma-separated string is a list (LLaMA-Factory split_arg, hparams/finetuning_args.py:590)
        names = [n.strip() for n in value.split(",") if n.strip()] if isinstance(value, str) else list(value) if isinstance(value, list) else []
        if names and all(n in ("lm_head", "embed_tokens") for n in names):
            self.put("modules-to-save", names, theirs)
        else:
            self.not_modelled(theirs, "fully trained modules beside the adapters (only lm_head and embed_tokens are priced)")

    def dora_and_rslora(self, dora: str, rslora: str = "", values: Optional[Dict[str, Any]] = None) -> None:
        """PEFT's use_dora and use_rslora (LoraConfig, both False by default) under the trainer's keys, read from
        ``values`` (a section; the file's top level by default); over a 4-bit base it is QDoRA (adapters.with_qdora).
        rsLoRA changes only the scaling: the run says so, the memory is LoRA's."""
        table = self.data if values is None else values
        where = dora if values is None else f"model.{dora}"
        if isinstance(table.get(dora), bool):
            self.put("use-dora", table[dora], where)
        if rslora and isinstance(table.get(rslora), bool):
            self.put("use-rslora", table[rslora], rslora if values is None else f"model.{rslora}")

    def not_modelled(self, theirs: str, why: str) -> None:
        self.skipped.append(f"{self.path.name}: {theirs} ({why}) is not modelled")

    def fail(self, theirs: str, message: str, hint: Optional[str] = None) -> ConfigError:
        return ConfigError(message, path=self.shown, key=theirs, line=self.lines.get(theirs), hint=hint)

    def check_keys(self, keys: Optional[Tuple[str, ...]] = None) -> None:
        """Every key the file writes is one of its trainer's (keys/<format>.txt, or a plugin reader's
        ``keys``): a typo such as micro_batch_sise is an error, as in [tool.llmmem], not a silent default."""
        top, sections = known_keys(self.fmt) if keys is None else (frozenset(keys), {})
        self.key_list = f"pytest_llmmem/config/readers/keys/{self.fmt}.txt" if keys is None else f"the {self.fmt} plugin's Reader.keys"
        for key in self.data:
            if str(key) not in top:
                raise self.unknown(str(key), top)
        for section, keys in sections.items():
            if isinstance(self.data.get(section), dict):
                for key in self.data[section]:
                    if str(key) not in keys:
                        raise self.unknown(f"{section}.{key}", keys)

    def unknown(self, key: str, known: FrozenSet[str]) -> ConfigError:
        section, _, leaf = key.rpartition(".")
        near = ", ".join(f'"{k}"' for k in nearest(leaf, sorted(known)))
        under = f" under {section}:" if section else ""
        return self.fail(shown_name(key), f'unknown {self.fmt} key "{shown_name(leaf)}".{did_you_mean(leaf, known)}',
                         hint=f"Nearest {self.fmt} keys: {near}; all {len(known)}{under} are in {self.key_list}.")

    def reading(self) -> Reading:
        return Reading(self.fmt, str(self.path), self.values, self.origins, tuple(self.skipped), tuple(self.follows), self.places)


_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_.]*")  # the key a "theirs" text starts with: "train.micro_batch_size (…)"
KEYS = Path(__file__).parent / "keys"


@lru_cache(maxsize=None)
def known_keys(fmt: str) -> Tuple[FrozenSet[str], Dict[str, FrozenSet[str]]]:
    """(top-level keys, {section: its keys}) of a trainer, from keys/<format>.txt: "#" comments,
    then keys separated by spaces; a line "section: ..." (continued on indented lines) lists a section's."""
    top: List[str] = []
    sections: Dict[str, List[str]] = {}
    current = top
    for line in (KEYS / f"{fmt}.txt").read_text(encoding="utf-8").splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        words = line.split()
        if words[0].endswith(":"):
            current = sections.setdefault(words[0][:-1], [])
            words = words[1:]
        elif not line.startswith(" "):
            current = top
        current.extend(words)
    return frozenset(top), {name: frozenset(keys) for name, keys in sections.items()}


def outside(name: str, root: Path) -> str:
    """The error for a file a trainer config names that lies outside the repository."""
    return (f'"{shown_name(name, 120)}" lies outside the repository ({shown_name(str(root), 120)}), symlinks followed: '
            "llmmem reads only the project's own files, since the project may be a pull request's.")


def load_document(path: Path) -> Tuple[Any, Dict[str, int]]:
    """(a trainer config, the line of each "key" and "section.key"): JSON through files.read_json_lines,
    YAML through PyYAML's SafeLoader (no tags, no code: ``!!python/object`` is refused),
    composed first so each key's node mark gives its line. PyYAML is imported only here, so start-up
    stays small."""
    shown = f'"{shown_name(str(path), 120)}"'
    try:
        if path.suffix == ".json":
            return files.read_json_lines(path, TRAINER_LIMIT)
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
        loader = yaml.SafeLoader(text)
        try:
            node = loader.get_single_node()
            return (loader.construct_document(node) if node is not None else None), _key_lines(node)
        finally:
            loader.dispose()
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        line = f" (line {mark.line + 1})" if mark is not None else ""
        problem = getattr(err, "problem", None) or type(err).__name__
        raise ConfigError(f"{shown} is not valid YAML{line}: {problem}.") from None
    except RecursionError:
        raise ConfigError(f"{shown} is nested too deeply to parse.") from None


def _key_lines(node: Any) -> Dict[str, int]:
    """1-based lines of the top-level keys and of the keys one level down ("train.micro_batch_size")."""
    from yaml.nodes import MappingNode, ScalarNode

    lines: Dict[str, int] = {}
    for key, value in node.value if isinstance(node, MappingNode) else ():
        if isinstance(key, ScalarNode):
            lines.setdefault(key.value, key.start_mark.line + 1)
            for sub, _ in value.value if isinstance(value, MappingNode) else ():
                if isinstance(sub, ScalarNode):
                    lines.setdefault(f"{key.value}.{sub.value}", sub.start_mark.line + 1)
    return lines


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


def model_table(value: str, m: Mapper, base_dir: Path) -> Dict[str, str]:
    """A model named in a trainer config: a local folder holding config.json (in the repository), or a Hub id."""
    for folder in (m.path.parent, base_dir):
        candidate = folder / value
        if files.is_file(candidate / "config.json"):
            if not files.within(candidate / "config.json", m.root):
                raise ConfigError(outside(value, m.root), path=m.shown)
            return {"config": str(files.resolve(candidate))}
    return {"id": value}


_DS_REF = re.compile(r"""^\s*["']?deepspeed["']?\s*[:=]\s*["']?([^"'\s#,]+\.json)""", re.MULTILINE)


def named_json_files(text: str) -> List[str]:
    """The DeepSpeed JSON a trainer config names (``deepspeed: ds.json``), found without PyYAML so
    the hook's owner lookup stays cheap; the reader itself follows the parsed value."""
    return _DS_REF.findall(text)
