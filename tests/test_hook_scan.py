"""The hook in a real repository: a shared model config anywhere, renamed and deleted configs."""

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
yaml = pytest.importorskip("yaml")  # pre-commit depends on PyYAML
HOOK = yaml.safe_load((ROOT / ".pre-commit-hooks.yaml").read_text())[0]

# TinyLlama-1.1B serving in bf16 fits 4 GiB; with 44 layers instead of 22 it does not. By hand:
# a layer is 2 x 2048^2 (Q, O) + 2 x 2048 x 256 (K, V: 4 heads of 64) + 3 x 2048 x 5632 (MLP)
# + 2 x 2048 (norms) = 44,044,288 params; embeddings and LM head 2 x 32000 x 2048 + a final norm
# = 131,074,048. 22 layers: 1,100,048,384 params = 2.05 GiB of bf16 weights, + 1.36 GiB CUDA
# context and allocator + small KV cache and activations = 3.47 GiB. 44 layers: 2,069,022,720
# params = 3.85 GiB of weights alone, 5.28 GiB in all: over.
TINYLLAMA = ('{"model_type": "llama", "hidden_size": 2048, "num_hidden_layers": 22, "num_attention_heads": 32, '
             '"num_key_value_heads": 4, "intermediate_size": 5632, "vocab_size": 32000}')
PROJECT = """\
[tool.llmmem]
gpu-memory = "4 GiB"

[tool.llmmem.model]
config = "{config}"

[[tool.llmmem.runs]]
name = "serve"
mode = "inference"
batch-size = 1
seq-len = 512
"""
RUN_MODEL = """\
[tool.llmmem]
gpu-memory = "4 GiB"

[[tool.llmmem.runs]]
name = "serve"
mode = "inference"
seq-len = 512
model = {{ config = "{config}" }}
"""
GIT_ENV = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t", "GIT_CONFIG_GLOBAL": os.devnull, "GIT_CONFIG_NOSYSTEM": "1"}


def _git(repo, *args):
    return subprocess.run(["git", *args], cwd=repo, check=True, env=GIT_ENV, capture_output=True, text=True)


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


@pytest.fixture
def repo(tmp_path, monkeypatch):
    """A monorepo whose services share common/llama/config.json, committed, cwd at its root."""
    root = tmp_path / "repo"
    _write(root / "common" / "llama" / "config.json", TINYLLAMA)
    _write(root / "proj-a" / "model" / "config.json", TINYLLAMA)
    _write(root / "proj-a" / "pyproject.toml", PROJECT.format(config="model/config.json"))
    _write(root / "proj-b" / "pyproject.toml", PROJECT.format(config="../common/llama/config.json"))
    _write(root / "services" / "proj-c" / "pyproject.toml", RUN_MODEL.format(config="../../common/llama"))  # a folder
    _write(root / "docs" / "pyproject.toml", "[project]\nname = 'docs'\n")
    # copies that are not the project's: an environment and a dependency tree are not scanned
    _write(root / ".venv" / "lib" / "pkg" / "pyproject.toml", PROJECT.format(config="../../../common/llama/config.json"))
    _write(root / "node_modules" / "x" / "pyproject.toml", PROJECT.format(config="../../common/llama/config.json"))
    _git(root, "init", "-q")
    _git(root, "add", "-A")
    _git(root, "commit", "-qm", "init")
    monkeypatch.chdir(root)
    monkeypatch.delenv("GITHUB_ACTIONS", raising=False)
    return root


def _grow(root: Path) -> None:
    path = root / "common" / "llama" / "config.json"
    path.write_text(path.read_text().replace('"num_hidden_layers": 22', '"num_hidden_layers": 44'))


def test_a_shared_config_rechecks_every_project_that_uses_it(repo, run_cli):
    code, out, err = run_cli("check", "--hook", "common/llama/config.json")
    assert code == 0, err
    assert "llmmem proj-b/pyproject.toml: 1 of 1 runs fit." in out
    assert "llmmem services/proj-c/pyproject.toml: 1 of 1 runs fit." in out
    assert "proj-a" not in out and ".venv" not in out and "node_modules" not in out
    _grow(repo)
    code, out, err = run_cli("check", "--hook", "common/llama/config.json")
    assert code == 1, out + err  # before the fix: nothing owned the file by walking up, exit 0
    assert "llmmem proj-b/pyproject.toml: 0 of 1 runs fit; over budget: serve." in out
    assert "llmmem services/proj-c/pyproject.toml: 0 of 1 runs fit; over budget: serve." in out


def test_a_shared_config_without_the_hook(repo, run_cli):
    _grow(repo)
    code, out, _ = run_cli("check", "common/llama/config.json")
    assert code == 1
    assert out.count("0 of 1 runs fit; over budget: serve.") == 2


def test_from_a_subfolder_the_repository_is_scanned(repo, run_cli, monkeypatch):
    _grow(repo)
    monkeypatch.chdir(repo / "proj-a")
    code, out, _ = run_cli("check", "--hook", "../common/llama/config.json")
    assert code == 1
    assert "llmmem ../proj-b/pyproject.toml: 0 of 1 runs fit" in out


def test_renamed_config_fails_the_hook(repo, run_cli):
    _git(repo, "mv", "common/llama", "common/llama3")
    # pre-commit passes only the new name of a rename
    code, out, err = run_cli("check", "--hook", "common/llama3/config.json")
    assert code == 2, out + err  # before the fix: no owner of the new name, exit 0
    assert 'proj-b/pyproject.toml:5: tool.llmmem.model.config: "../common/llama/config.json" does not exist.' in err
    assert "services/proj-c/pyproject.toml" in err and '"../../common/llama" does not exist' in err


def test_deleted_config_fails_the_hook_with_no_files(repo, run_cli):
    _git(repo, "rm", "-q", "proj-a/model/config.json")
    code, out, err = run_cli("check", "--hook")  # pre-commit passes nothing for a deletion
    assert code == 2, out + err
    assert 'proj-a/pyproject.toml:5: tool.llmmem.model.config: "model/config.json" does not exist.' in err
    assert "proj-b" not in err


def test_the_hook_with_nothing_changed_checks_nothing(repo, run_cli):
    code, out, err = run_cli("check", "--hook")
    assert (code, err) == (0, "")
    assert "nothing to check" in out


def test_other_projects_are_still_checked_after_an_error(repo, run_cli):
    (repo / "proj-a" / "model" / "config.json").unlink()
    _grow(repo)
    code, out, err = run_cli("check", "--hook", "common/llama/config.json")
    assert code == 2  # a configuration error outranks a run over budget
    assert "proj-a/pyproject.toml:5" in err
    assert "llmmem proj-b/pyproject.toml: 0 of 1 runs fit" in out


@pytest.mark.parametrize("runs", ["5", '"x"', "[5, []]", "[{ model = 5 }]", "[{ model = { config = 5 } }]"])
def test_any_toml_shape_in_a_scanned_pyproject(repo, run_cli, runs):
    """issue 17.7: runs = 5 crashed the owners lookup with TypeError."""
    # above the changed file, where the old lookup walked up and crashed; and elsewhere in the repository
    _write(repo / "common" / "pyproject.toml", f"[tool.llmmem]\nmodel = {{ config = 3 }}\nruns = {runs}\n")
    _write(repo / "odd" / "pyproject.toml", f"[tool.llmmem]\nruns = {runs}\n")
    code, out, err = run_cli("check", "--hook", "common/llama/config.json")
    assert code == 0, err
    assert "common/pyproject.toml" not in out + err and "odd" not in out + err  # not users of the file


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs named pipes and symlinks")
def test_unreadable_pyprojects_do_not_stop_the_scan(repo, run_cli):
    (repo / "loop").mkdir()
    os.symlink("pyproject.toml", repo / "loop" / "pyproject.toml")  # a symlink to itself
    (repo / "fifo").mkdir()
    os.mkfifo(repo / "fifo" / "pyproject.toml")  # open() would block forever
    os.symlink(repo / "common", repo / "common-link")  # a symlinked folder: not followed
    os.symlink("config.json", repo / "common" / "llama" / "loop.json")
    _grow(repo)
    code, out, err = run_cli("check", "--hook", "common/llama/config.json", "common/llama/loop.json")
    assert code == 1, err
    assert out.count("0 of 1 runs fit") == 2


def test_five_thousand_paths_scan_once(repo, run_cli, monkeypatch):
    from pytest_llmmem.frontends import repo_scan

    many = repo / "data"
    many.mkdir()
    for i in range(5000):
        (many / f"{i}.json").write_text("{}")
    calls = []
    scan = repo_scan.scan_pyprojects
    monkeypatch.setattr(repo_scan, "scan_pyprojects", lambda root: calls.append(root) or scan(root))
    _grow(repo)
    start = time.process_time()  # CPU time: the wall clock of a loaded CI machine says little
    code, out, _ = run_cli("check", "--hook", *[f"data/{i}.json" for i in range(5000)], "common/llama/config.json")
    elapsed = time.process_time() - start
    assert code == 1 and out.count("0 of 1 runs fit") == 2
    assert len(calls) == 1
    assert elapsed < 2.0, elapsed  # the whole subprocess, start-up included, used 0.35 s of CPU here


# --- the manifest, through pre-commit itself ----------------------------------------------------


def _pre_commit_local(repo):
    """Our manifest's hook settings as a local hook that runs this checkout's CLI (no network)."""
    hook = dict(HOOK, entry=f"{sys.executable} -m pytest_llmmem.cli check --hook", language="system")
    hook.pop("minimum_pre_commit_version", None)
    (repo / ".pre-commit-config.yaml").write_text(yaml.safe_dump({"repos": [{"repo": "local", "hooks": [hook]}]}))
    _git(repo, "add", ".pre-commit-config.yaml")


def _run_pre_commit(repo, tmp_path):
    env = {**GIT_ENV, "PRE_COMMIT_HOME": str(tmp_path / "pre-commit-home"), "PYTHONPATH": str(ROOT)}
    env.pop("GITHUB_ACTIONS", None)
    return subprocess.run([sys.executable, "-m", "pre_commit", "run"], cwd=repo, env=env, capture_output=True, text=True)


def test_pre_commit_catches_a_rename(repo, tmp_path):
    _pre_commit_local(repo)
    _git(repo, "mv", "common/llama", "common/llama3")
    proc = _run_pre_commit(repo, tmp_path)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert '"../common/llama/config.json" does not exist.' in proc.stdout


def test_pre_commit_catches_a_deletion(repo, tmp_path):
    """Nothing matching `files` is staged, so only always_run makes pre-commit run the hook."""
    _pre_commit_local(repo)
    _git(repo, "rm", "-q", "proj-a/model/config.json")
    proc = _run_pre_commit(repo, tmp_path)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert '"model/config.json" does not exist.' in proc.stdout


def test_pre_commit_passes_a_harmless_commit(repo, tmp_path):
    _pre_commit_local(repo)
    (repo / "README.md").write_text("hello\n")
    _git(repo, "add", "README.md")
    proc = _run_pre_commit(repo, tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
