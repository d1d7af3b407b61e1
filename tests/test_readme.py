"""The README's promises a new user acts on first: the two set-up commands, what CI runs, what
`measure` refuses (issue 10 items 11 and 12)."""

import re
from pathlib import Path

import pytest

from pytest_llmmem.config.load import adhoc_run
from pytest_llmmem.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")
CI = (ROOT / ".ci" / "run").read_text(encoding="utf-8")


def _samples_module():
    """docs/samples.py, which regenerates every marked sample output (not a package: loaded by path)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("llmmem_doc_samples", ROOT / "docs" / "samples.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


SAMPLES = _samples_module()
MARKED = [(path.relative_to(ROOT).as_posix(), name, body) for path in SAMPLES.documents()
          for name, body in SAMPLES.samples(path.read_text(encoding="utf-8"))]


@pytest.mark.parametrize("doc, name, body", MARKED, ids=[f"{d}: {n}" for d, n, _ in MARKED])
def test_sample_output_is_what_the_code_prints(doc, name, body):
    """A sample that drifted from the code fails here; `python docs/samples.py --update` refreshes it."""
    assert body == SAMPLES.produce(name), f"{doc}: the sample '{name}' is stale; run python docs/samples.py --update"


def test_every_sample_block_is_marked():
    """Each output block in the guide names the command that produced it (an unmarked one could drift)."""
    import re as _re

    for path in SAMPLES.documents():
        text = path.read_text(encoding="utf-8")
        for block in _re.finditer(r"(?P<before>[^\n]*)\n```text\n", "\n" + text):
            assert block["before"].startswith("<!-- generated: "), f"{path.name}: a ```text block without a generated marker"


def _first_block() -> list:
    return re.search(r"```sh\n(.*?)```", README, re.S).group(1).strip().splitlines()


def test_two_setup_commands_and_the_light_test_command():
    assert _first_block() == ["pip install . && llmmem check examples", "pip install '.[test]' && pytest"]


def test_ci_runs_the_readme_commands_and_then_the_measurement_tests():
    assert "pip install .\n" in CI and "llmmem check examples\n" in CI
    assert "pip install '.[test]'\n" in CI and "run_pytest pytest\n" in CI
    light, measured = CI.index("run_pytest pytest\n"), CI.index("pip install 'torch==2.13.0' '.[test,measure]'")
    assert light < measured  # the README's light run first, without torch
    assert '[ "$status" -eq 5 ]' in CI  # pytest's "no tests collected" is a failure


def test_readme_says_how_to_get_the_cpu_wheel():
    assert "pip install torch --index-url https://download.pytorch.org/whl/cpu" in README


@pytest.mark.parametrize("mode", ["lora", "qlora"])
def test_measure_refusing_lora_is_documented(mode):
    from pytest_llmmem.frontends.measure import _check_measurable

    run = adhoc_run({"hidden-size": 64, "num-layers": 2, "num-heads": 4, "intermediate-size": 128, "vocab-size": 100, "mode": mode})
    with pytest.raises(ConfigError, match=f"{mode} needs peft/bitsandbytes"):
        _check_measurable(run)
    accuracy = (ROOT / "docs" / "accuracy.md").read_text(encoding="utf-8")  # the reference beside the README guide
    paragraph = accuracy[accuracy.index("**Measure your own run.**"):accuracy.index("**The overhead default**")]
    assert '`mode = "lora"` and `"qlora"`' in paragraph and "refuses" in paragraph


def test_the_readme_is_a_guide_and_links_its_reference():
    """Issue 23 part 6: 1,341 lines held the guide and the reference together; the reference is in docs/."""
    assert len(README.splitlines()) < 600
    linked = set(re.findall(r"\(docs/([a-z-]+\.md)\)", README))
    assert linked == {p.name for p in (ROOT / "docs").glob("*.md")}  # every docs page is linked, every link exists


def test_install_and_pinning_can_be_followed():
    """Not on PyPI and no tag: the README installs from the repository and pins a commit."""
    assert "pip install pytest-llmmem\n" not in README and "rev: v0.1.0" not in README and "@v1\n" not in README
    assert 'pip install "pytest-llmmem @ git+https://github.com/OWNER/pytest-llmmem@COMMIT"' in README
    assert "  - repo: local\n" in README and "        entry: llmmem check --hook\n" in README


def test_the_readmes_local_pre_commit_hook_works(tmp_path):
    """The `repo: local` example, copied from the README as it is, blocks an over-budget commit and
    passes a fitting one (llmmem on PATH, as after the README's install; no download)."""
    import os
    import shutil
    import subprocess
    import sys

    pytest.importorskip("pre_commit")
    block = re.search(r"```yaml\n(# \.pre-commit-config\.yaml\nrepos:\n  - repo: local\n.*?)```", README, re.S).group(1)
    repo = tmp_path / "repo"
    shutil.copytree(ROOT / "examples", repo)
    (repo / ".pre-commit-config.yaml").write_text(block)
    env = {**os.environ, "PRE_COMMIT_HOME": str(tmp_path / "cache"), "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t", "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    env.pop("GITHUB_ACTIONS", None)
    git = lambda *args: subprocess.run(["git", *args], cwd=repo, check=True, env=env, capture_output=True)  # noqa: E731
    git("init", "-q")
    git("add", "-A")
    over = subprocess.run([sys.executable, "-m", "pre_commit", "run", "--files", "pyproject.toml"], cwd=repo, env=env,
                          capture_output=True, text=True)
    assert over.returncode == 1 and "2 of 3 runs fit; over budget: full-sft." in over.stdout, over.stdout + over.stderr
    text = (repo / "pyproject.toml").read_text()
    (repo / "pyproject.toml").write_text(text[:text.index('[[tool.llmmem.runs]]\nname = "full-sft"')])  # drop the over-budget run
    git("add", "-A")
    fits = subprocess.run([sys.executable, "-m", "pre_commit", "run", "--files", "pyproject.toml"], cwd=repo, env=env,
                          capture_output=True, text=True)
    assert fits.returncode == 0 and "Passed" in fits.stdout, fits.stdout + fits.stderr
