"""A model named by its Hugging Face Hub id: the local cache, then the bundled configs, then (opt-in)
a download. Offline unless the project says ``allow-network = true`` (or ``--allow-network``).

PYTEST_DONT_REWRITE: no asserts here; pytest need not rewrite this plugin module.
"""

from __future__ import annotations

import json
import os
import re
import struct
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from ..io import files
from ..errors import ConfigError, did_you_mean, shown_name
from ..record import Record

BUNDLED = Path(__file__).parents[1] / "models"  # pytest_llmmem/models: package data beside the subpackages
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}/[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")
_COMMIT = re.compile(r"^[0-9a-f]{40}$")
# A safetensors header is at most 100 MB (safetensors/src/tensor.rs MAX_HEADER_SIZE); an LLM's is
# tens of KB per shard. 8 MiB bounds the read per shard.
_HEADER_LIMIT = 8 * 1024 * 1024
# safetensors dtype names (safetensors/src/tensor.rs Dtype) -> ours, for the stored-weights note.
_STORED = {"BF16": "bf16", "F16": "fp16", "F32": "fp32", "F8_E4M3": "fp8", "F8_E5M2": "fp8", "I8": "int8", "U8": "uint8"}


class Resolved(Record):
    """Where a Hub id's config.json was found, and what the checkpoint beside it says."""

    model_id: str
    config_path: Path
    origin: str  # "hub cache" | "bundled" | "download"
    revision: str  # the commit (cache, download) or the bundled entry's revision ("" when not recorded)
    stored_params: Optional[int] = None  # sum of tensor sizes in the safetensors headers, when present
    stored_dtypes: Tuple[str, ...] = ()  # dtypes the headers hold (bf16, fp8, ...)

    def describe(self) -> str:
        rev = f" @ {self.revision[:12]}" if self.revision else ""
        return f"{self.model_id}{rev} ({self.origin}: {self.config_path})"


def cache_dir() -> Path:
    """The Hub cache folder, as huggingface_hub computes it (huggingface_hub/constants.py:
    HF_HUB_CACHE, else HF_HOME/hub, HF_HOME defaulting to $XDG_CACHE_HOME/huggingface, else ~/.cache/huggingface)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    home = os.environ.get("HF_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "huggingface")
    return Path(home).expanduser() / "hub"


def bundled_index() -> Dict[str, Dict[str, Any]]:
    """id -> {family, folder, revision, taken_from, [checked_against], [same_as], source} of the configs shipped
    with the package. revision: the Hub commit where the source states one, else null. taken_from: where the
    config.json was copied from, "github:OWNER/REPO@COMMIT:PATH" (the file is the JSON), "...:PATH#L<n>" (the JSON
    object or Python dict opening on line n) or "...:PATH#NAME['key']" (a Python dict literal); source_url makes it
    a link. "validation:FILE#ROW" (the project's shared validation data) and "index:ID" (a code-search index id) are
    the older, unlinked forms. checked_against: a GitHub source holding every key with the same value
    (benchmarks/check_bundle_sources.py). added: {key: a GitHub document} for a key the source lacks and that
    document states (GLM-4-9B-0414's context limit, from its README). same_as: another id whose folder this one shares (a release whose
    architecture keys are the same, such as an Instruct model and its base). source: what was copied and left out."""
    return files.read_json(BUNDLED / "index.json")


def catalog_lines(urls: bool = False) -> List[str]:
    """``llmmem catalog models``: each bundled id, its family, the Hub revision where its source states one,
    and the file its config.json was copied from (index.json's taken_from / checked_against) as
    REPOSITORY@COMMIT:PATH, the path left out where the line would pass 80 columns (``catalog show ID`` names
    it; the same in any terminal, so a wider one loses nothing by wrapping). ``urls``: the https link
    instead, whole however wide (a link cut in two opens nothing)."""
    index = bundled_index()
    id_width = max(len(model_id) for model_id in index)
    lines = ['bundled model configs (model = "org/name" when the Hugging Face cache lacks them), from models/index.json:',
             "  id, family, Hub revision (where the source states one)",
             "    the public file its config.json was copied from" + ("" if urls else ": REPOSITORY@COMMIT:PATH")]
    for model_id, entry in sorted(index.items(), key=lambda item: item[0].lower()):
        revision = (entry.get("revision") or "")[:12] or "-"
        lines.append(f"  {model_id:<{id_width}} {entry['family']:<12} {revision}")
        lines.append(_source_line("    from ", entry.get("taken_from") or "no source recorded", urls))
        if entry.get("same_as"):
            lines.append(f"    the same config.json as {entry['same_as']}")
        if entry.get("checked_against"):
            lines.append(_source_line("    same values in ", entry["checked_against"], urls))
        for key, where in sorted(entry.get("added", {}).items()):  # a key its source lacks, from the model's own docs
            lines.append(_source_line(f"    {key} from ", where, urls))
    lines.append("  (#L<n>: the config opens on line n of that file; validation:FILE#ROW = the project's shared "
                 "validation data; index:ID = a public GitHub file found by its id in a code-search index, repository not recorded)")
    if not urls:
        lines.append("  llmmem catalog show ID: one id's config, its source's link and notes; catalog models --urls: every link")
    return lines


def _source_line(prefix: str, locator: str, urls: bool, width: int = 80) -> str:
    """One source as a listing line: its link, or REPOSITORY@COMMIT:PATH when that fits ``width`` (the
    commit's first 12 characters, as the revision column), else REPOSITORY@COMMIT."""
    found = _GITHUB.match(locator)
    if urls or not found:
        return prefix + source_url(locator)
    short = f"{found['repo']}@{found['commit'][:12]}"
    whole = f"{short}:{found['path']}{found['anchor'] or ''}"
    return prefix + (whole if len(prefix) + len(whole) <= width else short)


_GITHUB = re.compile(r"^github:(?P<repo>[\w.-]+/[\w.-]+)@(?P<commit>[0-9a-f]{7,40}):(?P<path>[^#]+)(?P<anchor>#L\d+)?(?:#.*)?$")


def source_url(locator: str) -> str:
    """A github: locator as the https link of that file at that commit (its #L<n> line anchor kept); any other
    locator as it is."""
    found = _GITHUB.match(locator)
    if not found:
        return locator
    return f"https://github.com/{found['repo']}/blob/{found['commit']}/{found['path']}{found['anchor'] or ''}"


def resolve(model_id: str, revision: Optional[str] = None, allow_network: bool = False) -> Resolved:
    """The config.json for ``model_id``; ConfigError (key "id") naming the three ways when none is found."""
    if not isinstance(model_id, str) or not _ID.match(model_id):
        raise ConfigError(f'"{shown_name(str(model_id), 120)}" is not a Hugging Face model id; expected "org/name", e.g. "Qwen/Qwen3-8B".', key="id")
    found = from_cache(model_id, revision, cache_dir())
    if found:
        return found
    index = bundled_index()
    entry = index.get(model_id)
    if entry and revision in (None, "main", entry.get("revision")):
        return Resolved(model_id, BUNDLED / entry["folder"] / "config.json", "bundled", entry.get("revision") or "")
    if allow_network:
        return download(model_id, revision)
    rev = f" at revision {revision}" if revision else ""
    near = did_you_mean(model_id, list(index))
    raise ConfigError(
        f'"{model_id}"{rev} is not in the local Hugging Face cache ({cache_dir()}) nor among the bundled configs, '
        f"and downloading is off.{near}",
        key="id",
        hint=(f'Three ways: download it once (hf download {model_id} config.json) so the cache holds it; '
              'use one of the bundled ids (llmmem catalog models); or set allow-network = true in the model table '
              '(or --allow-network) with pip install "pytest-llmmem[hub]". Or point config at a config.json.'),
    )


def from_cache(model_id: str, revision: Optional[str], root: Path) -> Optional[Resolved]:
    """models--org--name/snapshots/<commit>/config.json, the commit read from refs/<branch> (the
    layout huggingface_hub/file_download.py writes: blobs, refs, snapshots)."""
    repo = root / ("models--" + model_id.replace("/", "--"))
    rev = revision or "main"
    if _COMMIT.match(rev):
        commit = rev
    else:
        try:
            commit = files.read_text(repo / "refs" / rev, 1024).strip()
        except (FileNotFoundError, files.UnreadableFile):
            return None
        if not _COMMIT.match(commit):
            return None
    snapshot = repo / "snapshots" / commit
    config = snapshot / "config.json"
    if not files.is_file(config):
        return None
    if not _in_cache(config, repo):
        raise ConfigError(f'the Hugging Face cache\'s config.json for "{model_id}" ({shown_name(str(config), 160)}) is a link to '
                          f"{shown_name(str(files.resolve(config)), 160)}, outside the model's folder in the cache; it is not read.",
                          key="id", hint="Download it again (hf download ... config.json), or point config at a config.json.")
    params, dtypes = _stored_weights(snapshot, repo)
    return Resolved(model_id, config, "hub cache", commit, params, dtypes)


def _in_cache(path: Path, repo: Path) -> bool:
    """Whether ``path`` (links followed) lies in the model's cache folder or its blobs (a blobs folder
    moved to another disk and linked back stays in): huggingface_hub links each snapshot file to
    ../../blobs/<hash>, never elsewhere, so a link out of the cache is not the Hub's."""
    return files.within(path, repo) or files.within(path, repo / "blobs")


def _shard_names(index: Any) -> Optional[List[str]]:
    """The shard files model.safetensors.index.json's weight_map names, or None when one is not a plain
    file name of the snapshot (absolute, '..', a folder, not text): such an index is not the Hub's."""
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
        return None
    names = sorted(set(weight_map.values()))
    if any(not name or Path(name).is_absolute() or ".." in Path(name).parts or "\\" in name or "\0" in name for name in names):
        return None
    return names


MAX_COUNT = 2**62  # elements in one tensor; more is not a real checkpoint (and keeps the product a small int)


def _stored_weights(snapshot: Path, repo: Path) -> Tuple[Optional[int], Tuple[str, ...]]:
    """Parameter count and dtypes from the safetensors headers in a snapshot (8-byte little-endian
    header length, then a JSON header of {name: {dtype, shape, data_offsets}}: safetensors format
    spec, README "Format"). Shards come from model.safetensors.index.json's weight_map. Anything a
    real checkpoint would not hold (a shard outside the cache, a shape that is not a list of sizes)
    gives (None, ()): the cross-check is skipped, nothing is refused."""
    try:
        shards = _shard_names(files.read_json(snapshot / "model.safetensors.index.json"))
    except (FileNotFoundError, files.UnreadableFile):
        shards = ["model.safetensors"] if files.is_file(snapshot / "model.safetensors") else []
    if not shards:
        return None, ()
    total, dtypes = 0, set()
    for shard in shards:
        header = _header(snapshot / shard) if _in_cache(snapshot / shard, repo) else None
        if header is None:
            return None, ()
        for name, tensor in header.items():
            if name == "__metadata__" or not isinstance(tensor, dict):
                continue
            shape = tensor.get("shape", [])
            if not isinstance(shape, list) or not all(type(d) is int and 0 <= d <= MAX_COUNT for d in shape) or len(shape) > 8:
                return None, ()
            count = 1
            for dim in shape:
                count = min(count * dim, MAX_COUNT + 1)
            if count > MAX_COUNT:
                return None, ()
            total += count
            dtypes.add(_STORED.get(str(tensor.get("dtype")), str(tensor.get("dtype")).lower()[:16]))
    return total, tuple(sorted(dtypes))


def _header(path: Path) -> Optional[Dict[str, Any]]:
    """A safetensors file's JSON header, or None when absent (a partial download) or malformed: a
    length past 8 MiB is not read (whatever it claims), nor a header nested too deep to parse."""
    try:
        if files.describe(path):
            return None
        with open(path, "rb") as handle:
            size = struct.unpack("<Q", handle.read(8))[0]
            if size > _HEADER_LIMIT:
                return None
            header = json.loads(handle.read(size).decode("utf-8"))
    except (OSError, ValueError, struct.error, RecursionError):
        return None
    return header if isinstance(header, dict) else None


def checkpoint_format(config: Any) -> Optional[str]:
    """The weight format a quantised checkpoint's config.json declares (its quantization_config, read by
    from_pretrained: transformers/utils/quantization_config.py QuantizationMethod), as our dtype name."""
    quant = config.get("quantization_config") if isinstance(config, dict) else None
    if not isinstance(quant, dict):
        return None
    method = str(quant.get("quant_method", "")).lower()
    if method == "bitsandbytes":
        if quant.get("load_in_4bit") is True:
            return "nf4" if str(quant.get("bnb_4bit_quant_type", "fp4")).lower() == "nf4" else "int4"  # BitsAndBytesConfig default fp4
        return "int8" if quant.get("load_in_8bit") is True else None
    return {"fp8": "fp8", "fbgemm_fp8": "fp8", "mxfp4": "mxfp4"}.get(method)


def download(model_id: str, revision: Optional[str]) -> Resolved:
    """config.json through huggingface_hub (the optional extra), into the standard cache; HF_TOKEN
    is read by huggingface_hub itself (huggingface_hub/utils/_auth.py get_token)."""
    try:
        from huggingface_hub import hf_hub_download
        from huggingface_hub.utils import (EntryNotFoundError, GatedRepoError, LocalEntryNotFoundError, RepositoryNotFoundError,
                                           RevisionNotFoundError)
    except ImportError:
        raise ConfigError(f'"{model_id}" would be downloaded, but huggingface_hub is not installed.', key="allow-network",
                          hint='pip install "pytest-llmmem[hub]", or download config.json into the cache yourself.') from None
    try:
        path = hf_hub_download(model_id, "config.json", revision=revision)
    except GatedRepoError:  # a subclass of RepositoryNotFoundError (huggingface_hub/errors.py): caught first
        raise ConfigError(f'"{model_id}" is a gated model on the Hugging Face Hub and {_token_state()}, so its config.json '
                          "cannot be downloaded.", key="id",
                          hint=(f"Accept its licence at https://huggingface.co/{model_id}, then export HF_TOKEN=<a read token> "
                                "or run `hf auth login` (`huggingface-cli login` before huggingface_hub 1.0); or put "
                                "config.json in the cache yourself, or point config at a copy.")) from None
    except RevisionNotFoundError:
        raise ConfigError(f'"{model_id}" has no revision "{revision}".', key="revision") from None
    except RepositoryNotFoundError:
        raise ConfigError(f'"{model_id}" does not exist on the Hub (or is private and {_token_state()}).', key="id") from None
    except LocalEntryNotFoundError:  # offline: HF_HUB_OFFLINE, or the Hub could not be reached (file_download.py)
        cause, offline = _offline_cause()
        raise ConfigError(f'"{model_id}" could not be downloaded: {cause}, and config.json is not in the cache '
                          f"({cache_dir()}).", key="allow-network",
                          hint=("Unset HF_HUB_OFFLINE to download it; or " if offline else "")
                          + (f"on a machine with network access run `hf download {model_id} config.json` and copy the "
                             "cache, or point config at a copy of its config.json.")) from None
    except EntryNotFoundError:
        raise ConfigError(f'"{model_id}" has no config.json on the Hub (not a transformers checkpoint?).', key="id",
                          hint="Point config at the architecture's config.json.") from None
    except Exception as err:  # timeouts, HTTP 5xx, a bad token: huggingface_hub raises many kinds
        raise ConfigError(f'"{model_id}" could not be downloaded: {type(err).__name__}: {shown_name(str(err), 200)}.', key="id") from None
    found = from_cache(model_id, revision, cache_dir())
    return found._replace(origin="download") if found else Resolved(model_id, Path(path), "download", revision or "")


def _token_state() -> str:
    """Whether huggingface_hub holds a token (HF_TOKEN, else the file `hf auth login` writes), for the gated message."""
    try:
        from huggingface_hub import get_token  # huggingface_hub/utils/_auth.py (0.21 and later)

        token = get_token()
    except Exception:  # older huggingface_hub, or an OIDC exchange that failed: fall back to the variable
        token = os.environ.get("HF_TOKEN")
    return "the token huggingface_hub found has no access to it" if token else "no token is set (HF_TOKEN or `hf auth login`)"


def _offline_cause() -> Tuple[str, bool]:
    """Why huggingface_hub did not reach the Hub: offline mode (HF_HUB_OFFLINE, huggingface_hub/constants.py) or the network."""
    try:
        from huggingface_hub import constants

        offline = bool(constants.HF_HUB_OFFLINE)
    except Exception:
        offline = False
    if offline:
        return "huggingface_hub is in offline mode (HF_HUB_OFFLINE or TRANSFORMERS_OFFLINE is set)", True
    return "the Hugging Face Hub could not be reached (no network, a proxy, or the Hub is down)", False
