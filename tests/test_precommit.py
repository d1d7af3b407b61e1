"""The pre-commit hook: manifest, which files trigger it, which pyprojects it checks, end to end."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
yaml = pytest.importorskip("yaml")  # pre-commit depends on PyYAML
HOOK = yaml.safe_load((ROOT / ".pre-commit-hooks.yaml").read_text())[0]

FITS = """\
[tool.llmmem]
gpu = "H100-80GB"

[tool.llmmem.model]
config = "model/config.json"

[[tool.llmmem.runs]]
name = "serve"
mode = "inference"
batch-size = 1
seq-len = 2048
"""
# TinyLlama-1.1B serving on an H100: 2.05 GiB of bf16 weights plus a small KV cache.
TINYLLAMA = ('{"model_type": "llama", "hidden_size": 2048, "num_hidden_layers": 22, "num_attention_heads": 32, '
             '"num_key_value_heads": 4, "intermediate_size": 5632, "vocab_size": 32000}')


def _pre_commit(*args, **kwargs):
    return subprocess.run([sys.executable, "-m", "pre_commit", *args], capture_output=True, text=True, **kwargs)


def test_manifest_is_valid():
    proc = _pre_commit("validate-manifest", str(ROOT / ".pre-commit-hooks.yaml"))
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_manifest_settings():
    assert HOOK["id"] == "llmmem"
    assert HOOK["language"] == "python"
    assert HOOK["entry"] == "llmmem check --hook"
    assert HOOK["pass_filenames"] is True and HOOK["require_serial"] is True
    assert HOOK["always_run"] is True  # a deleted model config passes no file (tests/test_hook_scan.py)


@pytest.mark.parametrize("path", ["pyproject.toml", "services/trainer/pyproject.toml", "model/config.json", "configs/llama-7b.json"])
def test_files_regex_matches(path):
    assert re.search(HOOK["files"], path)


@pytest.mark.parametrize("path", ["pyproject.toml.bak", "my_pyproject.toml", "setup.cfg", "train.py", "config.jsonl", "notes/json.md"])
def test_files_regex_skips(path):
    assert not re.search(HOOK["files"], path)


@pytest.fixture
def monorepo(tmp_path, monkeypatch):
    """Two services with budgets, one without, as pre-commit would pass their changed files."""
    for name in ("a", "b"):
        (tmp_path / name / "model").mkdir(parents=True)
        (tmp_path / name / "pyproject.toml").write_text(FITS)
        (tmp_path / name / "model" / "config.json").write_text(TINYLLAMA)
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "pyproject.toml").write_text("[project]\nname = 'docs'\n")
    (tmp_path / "unrelated.json").write_text("{}")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_hook_checks_each_pyproject_once(monorepo, run_cli):
    code, out, err = run_cli("check", "--hook", "a/pyproject.toml", "a/model/config.json", "b/model/config.json",
                             "docs/pyproject.toml", "unrelated.json")
    assert code == 0, err
    assert out.count("llmmem a/pyproject.toml: 1 of 1 runs fit.") == 1
    assert out.count("llmmem b/pyproject.toml: 1 of 1 runs fit.") == 1  # found as the owner of b/model/config.json
    assert "docs" not in out  # no [tool.llmmem]: skipped in hook mode
    assert "  serve " in out and "ok" in out


def test_hook_output_is_short_unless_over(monorepo, run_cli):
    _, out, _ = run_cli("check", "--hook", "a/pyproject.toml")
    assert "weights" not in out  # no breakdown for a run that fits
    (monorepo / "a" / "pyproject.toml").write_text(FITS.replace('"H100-80GB"', '"T4"').replace("batch-size = 1", "batch-size = 256"))
    code, out, _ = run_cli("check", "--hook", "a/model/config.json")
    assert code == 1
    assert "  serve " in out and "OVER" in out and "KV cache" in out and "ways out:" in out


def test_hook_with_nothing_to_check(monorepo, run_cli):
    code, out, _ = run_cli("check", "--hook", "docs/pyproject.toml", "unrelated.json")
    assert code == 0
    assert "nothing to check" in out


@pytest.mark.e2e
def test_try_repo_end_to_end(tmp_path):
    """pre-commit installs this checkout as a hook (from the package index) and runs it on a repo."""
    repo = tmp_path / "repo"
    (repo / "model").mkdir(parents=True)
    (repo / "pyproject.toml").write_text(FITS)
    (repo / "model" / "config.json").write_text(TINYLLAMA)
    (repo / ".pre-commit-config.yaml").write_text(
        f"repos:\n  - repo: {ROOT}\n    rev: HEAD\n    hooks:\n      - id: llmmem\n")
    env = {**os.environ, "PRE_COMMIT_HOME": str(tmp_path / "cache"), "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}
    env.pop("GITHUB_ACTIONS", None)
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True, env=env)
    subprocess.run(["git", "add", "-A"], cwd=repo, check=True, env=env)

    proc = _pre_commit("try-repo", str(ROOT), "llmmem", "--files", "pyproject.toml", cwd=repo, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "llmmem (GPU memory budgets)" in proc.stdout and "Passed" in proc.stdout

    (repo / "pyproject.toml").write_text(FITS.replace('"H100-80GB"', '"T4"').replace("batch-size = 1", "batch-size = 256"))
    subprocess.run(["git", "add", "-A"], cwd=repo, check=True, env=env)
    proc = _pre_commit("try-repo", str(ROOT), "llmmem", "--files", "pyproject.toml", "model/config.json", cwd=repo, env=env)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "Failed" in proc.stdout
    assert "llmmem pyproject.toml: 0 of 1 runs fit; over budget: serve." in proc.stdout
    assert "serve (line 7): OVER" in proc.stdout


@pytest.mark.e2e
def test_try_repo_on_a_yaml_driven_repo_from_an_empty_cache(tmp_path):
    """Issue 23 §1: the documented snippet as it is (no additional_dependencies) reads an axolotl YAML through
    `from`: pre-commit builds the hook's environment from nothing, a commit whose staged micro_batch_size
    fits 12 GiB passes, one whose micro_batch_size makes it over budget is blocked (exit 1, not 2)."""
    from tests.test_readers import AXOLOTL, _axolotl_repo

    repo = _axolotl_repo(tmp_path)  # TinyLlama LoRA, micro batch 1: 6.5 GiB of 12 (tests/test_readers.py)
    (repo / ".pre-commit-config.yaml").write_text(
        f"repos:\n  - repo: {ROOT}\n    rev: HEAD\n    hooks:\n      - id: llmmem\n")
    cache = tmp_path / "cache"
    assert not cache.exists()
    env = {**os.environ, "PRE_COMMIT_HOME": str(cache), "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}
    env.pop("GITHUB_ACTIONS", None)
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True, env=env)
    subprocess.run(["git", "add", "-A"], cwd=repo, check=True, env=env)

    proc = _pre_commit("try-repo", str(ROOT), "llmmem", cwd=repo, env=env)  # the staged files, as `git commit` runs it
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Passed" in proc.stdout and "PyYAML" not in proc.stdout

    (repo / "train" / "lora.yml").write_text(AXOLOTL.format(mb=64))
    subprocess.run(["git", "add", "-A"], cwd=repo, check=True, env=env)
    proc = _pre_commit("try-repo", str(ROOT), "llmmem", cwd=repo, env=env)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "llmmem pyproject.toml: 0 of 1 runs fit; over budget: sft." in proc.stdout
    assert "lora.yml: micro_batch_size" in proc.stdout  # the breakdown says where the batch came from
