"""The readers of files that are not TOML, on what a pull request (or a poisoned cache) can hold
(issue 24, part 4): a safetensors header claiming a huge length, an index naming ../../ shards, a
snapshot linked out of the Hub cache, a trainer config (or the files it names) outside the repository,
and configs that name each other. Each is skipped or refused in words: never read, never a traceback."""

import json
import os
import struct
from pathlib import Path

import pytest

from pytest_llmmem.config.load import parse
from pytest_llmmem.errors import ConfigError
from pytest_llmmem.hf import hub
from tests.test_hub import COMMIT, TINY, TINY_PARAMS, _safetensors, _snapshot

pytest.importorskip("yaml")


@pytest.fixture
def cache(tmp_path, monkeypatch):
    root = tmp_path / "hub"
    root.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(root))
    return root


def test_a_header_claiming_a_huge_length_is_not_read(cache):
    snap = _snapshot(cache, "org/tiny", COMMIT, TINY)
    # 2^63 - 1 bytes of header claimed, 20 present: the 8 MiB bound refuses it before any read
    (snap / "model.safetensors").write_bytes(struct.pack("<Q", 2**63 - 1) + b"{}" * 10)
    found = hub.resolve("org/tiny")
    assert (found.origin, found.stored_params, found.stored_dtypes) == ("hub cache", None, ())


@pytest.mark.parametrize("header", [
    {"a": {"dtype": "BF16", "shape": ["64"], "data_offsets": [0, 0]}},  # a size as text
    {"a": {"dtype": "BF16", "shape": 64, "data_offsets": [0, 0]}},  # not a list
    {"a": {"dtype": "BF16", "shape": [2**40] * 8, "data_offsets": [0, 0]}},  # 2^320 elements
    {"a": {"dtype": "BF16", "shape": [[[[]]]], "data_offsets": [0, 0]}},
])
def test_a_header_no_checkpoint_holds_skips_the_cross_check(cache, header):
    snap = _snapshot(cache, "org/tiny", COMMIT, TINY)
    blob = json.dumps(header).encode()
    (snap / "model.safetensors").write_bytes(struct.pack("<Q", len(blob)) + blob)
    assert hub.resolve("org/tiny").stored_params is None
    assert parse(_project()).runs[0].model.param_count() == TINY_PARAMS  # the estimate goes on from config.json


def test_a_header_nested_too_deep_skips_the_cross_check(cache):
    snap = _snapshot(cache, "org/tiny", COMMIT, TINY)
    blob = b"[" * 200_000 + b"]" * 200_000  # 400 KB, under the 8 MiB bound, too deep for the parser
    (snap / "model.safetensors").write_bytes(struct.pack("<Q", len(blob)) + blob)
    assert hub.resolve("org/tiny").stored_params is None


@pytest.mark.parametrize("shard", ["../../../../outside.safetensors", "@ABS@", "sub/../../x.safetensors", "", 7])
def test_an_index_naming_shards_outside_the_snapshot_reads_none_of_them(cache, tmp_path, shard):
    snap = _snapshot(cache, "org/tiny", COMMIT, TINY)
    outside = tmp_path / "outside.safetensors"  # a valid header the ../../ path would reach
    _safetensors(outside, {"a": ("BF16", [TINY_PARAMS])})
    shard = str(outside) if shard == "@ABS@" else shard
    assert (snap / "../../../../outside.safetensors").resolve() == outside.resolve()
    (snap / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"a": shard}}))
    assert hub.resolve("org/tiny").stored_params is None


def test_a_shard_linked_out_of_the_cache_is_not_read_but_one_in_blobs_is(cache, tmp_path):
    snap = _snapshot(cache, "org/tiny", COMMIT, TINY)
    blobs = cache / "models--org--tiny" / "blobs"
    blobs.mkdir()
    _safetensors(blobs / "0123abcd", {"a": ("BF16", [TINY_PARAMS])})
    os.symlink("../../blobs/0123abcd", snap / "model.safetensors")  # as huggingface_hub writes it
    assert hub.resolve("org/tiny").stored_params == TINY_PARAMS
    _safetensors(tmp_path / "elsewhere", {"a": ("BF16", [TINY_PARAMS])})
    os.remove(snap / "model.safetensors")
    os.symlink(tmp_path / "elsewhere", snap / "model.safetensors")
    assert hub.resolve("org/tiny").stored_params is None


def test_a_snapshot_linked_out_of_the_cache_is_refused(cache, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "config.json").write_text(json.dumps(TINY))
    repo = cache / "models--org--tiny"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(COMMIT)
    (repo / "snapshots").mkdir()
    os.symlink(elsewhere, repo / "snapshots" / COMMIT)
    with pytest.raises(ConfigError) as err:
        hub.resolve("org/tiny")
    assert err.value.key == "id" and "outside the model's folder in the cache; it is not read" in err.value.message


def _project(model: str = 'model = "org/tiny"') -> str:
    return f'[tool.llmmem]\ngpu = "H100-80GB"\n{model}\n[[tool.llmmem.runs]]\nname = "a"\nmode = "lora"\n'


# --- trainer configs (from = "train.yaml") --------------------------------------------------------

AXOLOTL = "base_model: meta-llama/Llama-3.1-8B\nmicro_batch_size: 1\nsequence_len: 512\nadapter: lora\nlora_r: 8\n"


@pytest.fixture
def repo(tmp_path):
    """A git checkout (a .git folder marks its root) with a trainer config outside it."""
    root = tmp_path / "repo"
    (root / ".git").mkdir(parents=True)
    (root / "proj").mkdir()
    (tmp_path / "outside.yaml").write_text(AXOLOTL)
    return root


def _check(root: Path, run_cli, source: str):
    (root / "proj" / "pyproject.toml").write_text(f'[tool.llmmem]\ngpu = "H100-80GB"\n[[tool.llmmem.runs]]\nname = "sft"\nfrom = "{source}"\n')
    return run_cli("check", root / "proj" / "pyproject.toml")


@pytest.mark.parametrize("source", ["../../outside.yaml", "@ABS@", "link.yaml"])
def test_from_outside_the_repository_is_refused(repo, run_cli, source):
    os.symlink(repo.parent / "outside.yaml", repo / "proj" / "link.yaml")  # a link the pull request adds
    source = str(repo.parent / "outside.yaml") if source == "@ABS@" else source
    code, out, err = _check(repo, run_cli, source)
    assert code == 2 and out == "" and err.count("\n") == 1
    assert err.startswith(f"llmmem: error: {repo / 'proj' / 'pyproject.toml'}:5: tool.llmmem.runs[0].from: ")
    assert f"lies outside the repository ({repo}), symlinks followed" in err and "Copy the trainer config into the repository" in err


def test_from_elsewhere_in_the_repository_is_read(repo, run_cli):
    (repo / "configs").mkdir()
    (repo / "configs" / "train.yaml").write_text(AXOLOTL)
    code, out, err = _check(repo, run_cli, "../configs/train.yaml")
    assert code in (0, 1) and "train.yaml: micro_batch_size" in out, err


@pytest.mark.parametrize("line", ["deepspeed: ../../ds.json", "base_model: ../../model"])
def test_files_a_trainer_config_names_outside_the_repository_are_refused(repo, run_cli, line):
    (repo.parent / "ds.json").write_text(json.dumps({"zero_optimization": {"stage": 3}}))
    (repo.parent / "model").mkdir()
    (repo.parent / "model" / "config.json").write_text(json.dumps(TINY))
    (repo / "proj" / "train.yaml").write_text(AXOLOTL + line + "\n")
    code, _, err = _check(repo, run_cli, "train.yaml")
    assert code == 2 and err.count("\n") == 1 and "lies outside the repository" in err, err


def test_configs_that_name_each_other_are_read_once(repo, run_cli):
    """No reader follows a chain: a YAML naming itself as its DeepSpeed JSON is one clean error; a
    DeepSpeed JSON naming another file is read alone; from naming the pyproject itself is an error."""
    proj = repo / "proj"
    (proj / "train.yaml").write_text(AXOLOTL + "deepspeed: train.yaml\n")
    code, _, err = _check(repo, run_cli, "train.yaml")
    assert code == 2 and err.count("\n") == 1 and f'train.yaml:6: deepspeed: "{proj / "train.yaml"}" cannot be read: Expecting value' in err, err
    (proj / "ds.json").write_text(json.dumps({"zero_optimization": {"stage": 2}, "deepspeed": "train.yaml", "from": "ds.json"}))
    (proj / "train.yaml").write_text(AXOLOTL + "deepspeed: ds.json\n")
    run = parse(f'[tool.llmmem]\ngpu = "H100-80GB"\n[[tool.llmmem.runs]]\nfrom = "{proj / "train.yaml"}"\n', base_dir=proj).runs[0]
    assert run.zero_stage == 2 and run.reads == (str(proj / "train.yaml"), str(proj / "ds.json"))
    code, _, err = _check(repo, run_cli, "pyproject.toml")
    assert code == 2 and err.count("\n") == 1, err
