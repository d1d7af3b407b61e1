"""The composite action (hooks/github): its own venv, pinned installs, several paths, the PR diff;
and the project's own workflow testing every supported Python (issue 10 item 13)."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ACTION = (ROOT / "hooks" / "github" / "action.yml").read_text(encoding="utf-8")
WORKFLOW = (ROOT / ".github" / "workflows" / "llmmem.yml").read_text(encoding="utf-8")


def test_action_leaves_the_jobs_python_alone_and_pins_what_it_installs():
    assert "uses: actions/setup-python" not in ACTION  # it changed the interpreter of every later step
    assert '"$LLMMEM_PYTHON" -m venv "$venv"' in ACTION and 'venv="$RUNNER_TEMP/llmmem-venv"' in ACTION
    assert '--constraint "$ACTION_PATH/constraints.txt"' in ACTION
    pins = [line for line in (ROOT / "hooks" / "github" / "constraints.txt").read_text().splitlines() if line and not line.startswith("#")]
    assert all(re.fullmatch(r"[A-Za-z0-9_.-]+==[0-9][0-9A-Za-z.]*", line) for line in pins), pins
    assert {"pytest", "pluggy", "tomli", "PyYAML"} <= {line.split("==")[0] for line in pins}  # [project] dependencies


def test_workflow_tests_every_supported_python():
    assert 'python-version: ["3.9", "3.10", "3.11", "3.12", "3.13"]' in WORKFLOW
    assert "pip install '.[test]' && pytest" in WORKFLOW
    assert "diff-base: ${{ github.event.pull_request.base.sha }}" in WORKFLOW


FITS = """\
[tool.llmmem]
gpu = "A100-80GB"

[tool.llmmem.model]
params = "{params}"

[[tool.llmmem.runs]]
name = "serve"
mode = "inference"
"""


def _git(repo, *args):
    subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True,
                   env={**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
                        "GIT_COMMITTER_EMAIL": "t@t"})


@pytest.mark.skipif(sys.platform == "win32", reason="the action runs bash")
def test_check_script_checks_several_paths_and_diffs_against_the_base(tmp_path):
    repo = tmp_path / "repo"
    for name in ("proj-a", "proj-b"):
        (repo / name).mkdir(parents=True)
        (repo / name / "pyproject.toml").write_text(FITS.format(params="7B"))
    _git(repo, "init", "-q")
    _git(repo, "add", ".")
    _git(repo, "commit", "-q", "-m", "base")
    base = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    # head: proj-b serves a 50B model: 50e9 x 2 B = 93.13 GiB + 1375 MiB, over the 80 GiB budget.
    (repo / "proj-b" / "pyproject.toml").write_text(FITS.format(params="50B"))
    _git(repo, "commit", "-q", "-am", "head")
    wrapper = tmp_path / "llmmem"
    wrapper.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m pytest_llmmem.cli "$@"\n')
    wrapper.chmod(0o755)
    runner = tmp_path / "runner"
    runner.mkdir()
    env = {**os.environ, "LLMMEM": str(wrapper), "LLMMEM_PATHS": "proj-a\nproj-b", "LLMMEM_ARGS": "", "LLMMEM_DIFF_BASE": base,
           "RUNNER_TEMP": str(runner), "GITHUB_ACTIONS": "true", "GITHUB_WORKSPACE": str(repo),
           "GITHUB_OUTPUT": str(runner / "output.txt"), "GITHUB_STEP_SUMMARY": str(runner / "summary.md"),
           "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(["bash", str(ROOT / "hooks" / "github" / "check.sh")], cwd=repo, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    outputs = (runner / "output.txt").read_text().splitlines()
    assert "fits=false" in outputs and f"json={runner / 'llmmem-head.json'}" in outputs
    assert "regressed=true" in outputs
    summary = (runner / "summary.md").read_text()
    assert "## llmmem: `proj-a/pyproject.toml`" in summary and "## llmmem: `proj-b/pyproject.toml`" in summary
    assert f"### llmmem: memory change against {base[:12]}" in summary
    assert "NO LONGER FITS" in summary
    assert not (runner / "llmmem-base").exists()  # the base worktree is removed


def _action_steps():
    import yaml

    return {step["name"]: step for step in yaml.safe_load(ACTION)["runs"]["steps"]}


@pytest.mark.e2e
@pytest.mark.skipif(sys.platform == "win32", reason="the action runs bash")
def test_action_installs_into_a_fresh_venv_and_reads_trainer_yaml(tmp_path):
    """Issue 23 §1: the action's two steps, run as written in action.yml (its install into a new venv under
    RUNNER_TEMP, pinned by constraints.txt, then check.sh), on a repository whose run reads an axolotl YAML:
    micro batch 1 fits 12 GiB (exit 0, fits=true), micro batch 64 does not (exit 1, fits=false)."""
    from tests.test_readers import AXOLOTL, _axolotl_repo

    steps = _action_steps()
    install, check = steps["Install pytest-llmmem into its own virtual environment"], steps["Check the memory budgets"]
    repo = _axolotl_repo(tmp_path)
    runner = tmp_path / "runner"
    runner.mkdir()
    env = {key: value for key, value in os.environ.items() if not key.startswith(("PYTHON", "VIRTUAL_ENV", "GITHUB_"))}
    env.update({"ACTION_PATH": str(ROOT / "hooks" / "github"), "LLMMEM_PYTHON": sys.executable, "RUNNER_TEMP": str(runner)})
    proc = subprocess.run(["bash", "-e", "-c", install["run"]], cwd=repo, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    env.update({"LLMMEM_PATHS": ".", "LLMMEM_ARGS": "", "LLMMEM_DIFF_BASE": "", "GITHUB_ACTIONS": "true",
                "GITHUB_OUTPUT": str(runner / "output.txt"), "GITHUB_STEP_SUMMARY": str(runner / "summary.md")})
    proc = subprocess.run(["bash", "-c", check["run"]], cwd=repo, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "fits=true" in (runner / "output.txt").read_text().splitlines()
    (repo / "train" / "lora.yml").write_text(AXOLOTL.format(mb=64))
    proc = subprocess.run(["bash", "-c", check["run"]], cwd=repo, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "fits=false" in (runner / "output.txt").read_text().splitlines()
    assert "batch-size             lora.yml: micro_batch_size" in proc.stdout  # read from the YAML, not defaulted
    assert ":x: over" in (runner / "summary.md").read_text()


HOSTILE = """\
[tool.llmmem]
gpu = "A100-80GB"

[tool.llmmem.model]
params = "{params}"

[[tool.llmmem.runs]]
name = "::error file=evil.py,line=1::pwned ![x](https://evil.example/t.png) <img src=x>"
mode = "inference"

[[tool.llmmem.runs]]
name = "  ::stop-commands::tok ##[add-mask]x %0A [a](b)"
mode = "inference"
"""


@pytest.mark.skipif(sys.platform == "win32", reason="the action runs bash")
def test_check_script_on_a_hostile_pull_request(tmp_path):
    """Issue 24: check.sh in a simulated runner on run names that would inject. The only lines of stdout
    and stderr a runner would obey are the tool's own escaped annotations; the summary (check and the
    diff against the base) holds no raw ![, < or ]( ; the outputs are exactly fits, json and regressed."""
    from tests.runner_model import commands, foreign_commands, outputs

    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "pyproject.toml").write_text(HOSTILE.format(params="7B"))
    _git(repo, "init", "-q")
    _git(repo, "add", ".")
    _git(repo, "commit", "-q", "-m", "base")
    base = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    # head: 50B params served in bf16 = 50e9 x 2 B + 1375 MiB = 94.47 GiB, over the 80 GiB budget (both runs)
    (repo / "pyproject.toml").write_text(HOSTILE.format(params="50B"))
    _git(repo, "commit", "-q", "-am", "head")
    wrapper = tmp_path / "llmmem"
    wrapper.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m pytest_llmmem.cli "$@"\n')
    wrapper.chmod(0o755)
    runner = tmp_path / "runner"
    runner.mkdir()
    env = {**os.environ, "LLMMEM": str(wrapper), "LLMMEM_PATHS": ".", "LLMMEM_ARGS": "", "LLMMEM_DIFF_BASE": base,
           "RUNNER_TEMP": str(runner), "GITHUB_ACTIONS": "true", "GITHUB_WORKSPACE": str(repo),
           "GITHUB_OUTPUT": str(runner / "output.txt"), "GITHUB_STEP_SUMMARY": str(runner / "summary.md"), "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(["bash", str(ROOT / "hooks" / "github" / "check.sh")], cwd=repo, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    log = proc.stdout + proc.stderr
    assert foreign_commands(log) == []
    own = commands(log)
    assert [line.split("::")[1] for line in own] == ["error file=pyproject.toml,line=7,title=llmmem%3A %3A%3Aerror file=evil.py%2Cline=1%3A%3Apwned ![x](https%3A//evil.example/t.png) <img src=x>",
                                                    "error file=pyproject.toml,line=11,title=llmmem%3A   %3A%3Astop-commands%3A%3Atok ##[add-mask]x %250A [a](b)"]
    from pytest_llmmem.report.layout import unfit

    assert "\\::error file=evil.py,line=1::pwned ![x](https://evil.example/t.png) <img src=x> (line 7): OVER (partial)" in unfit(log)
    summary = (runner / "summary.md").read_text()
    assert "NO LONGER FITS" in summary and f"### llmmem: memory change against {base[:12]}" in summary
    assert not any(raw in summary for raw in ("![", "<", "]("))
    assert outputs((runner / "output.txt").read_text()) == {"fits": "false", "json": str(runner / "llmmem-head.json"),
                                                           "regressed": "true", "diff": str(runner / "llmmem-diff.md")}


@pytest.mark.skipif(sys.platform == "win32", reason="the action runs bash")
@pytest.mark.parametrize("diff_base", ["--upload-pack=touch pwned", "main\n::error::x", "a:b"])
def test_check_script_refuses_a_diff_base_that_is_not_a_revision(tmp_path, diff_base):
    """diff-base reaches git and the log: an option or a command in it stops the step (exit 2), runs nothing."""
    from tests.runner_model import commands

    (tmp_path / "pyproject.toml").write_text(FITS.format(params="7B"))
    env = {**os.environ, "LLMMEM": "false", "LLMMEM_PATHS": ".", "LLMMEM_DIFF_BASE": diff_base, "RUNNER_TEMP": str(tmp_path),
           "GITHUB_ACTIONS": "true", "GITHUB_OUTPUT": str(tmp_path / "output.txt")}
    proc = subprocess.run(["bash", str(ROOT / "hooks" / "github" / "check.sh")], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.startswith("llmmem: error: diff-base must be a commit or a ref name") and commands(proc.stderr) == []
    assert not (tmp_path / "pwned").exists() and not (tmp_path / "output.txt").exists()


def test_step_outputs_with_a_line_break_in_the_path():
    from pytest_llmmem.report.github import step_outputs
    from tests.runner_model import outputs

    text = step_outputs(False, "/tmp/r\nfits=true")
    assert outputs(text) == {"fits": "false", "json": "/tmp/r\nfits=true"}  # no second fits
    assert text.startswith("fits=false\njson<<ghadelimiter_")
