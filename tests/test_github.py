"""GitHub Actions guardrail: exact annotations, job summary, step outputs, report diffs, actionlint."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pytest_llmmem.report.github import MAX_ANNOTATIONS, escape_data, escape_property

ROOT = Path(__file__).resolve().parents[1]

# 7B params known by count only, so every figure is hand-computable:
#   train bf16 mixed AdamW: at the optimizer step the bf16 gradients are cast onto the fp32 masters, so
#   7e9 x (2 + 4 + 4 + 8) = 126e9 B (backward: 2 B gradients, 112e9 B), + 800 MiB overhead (768 MiB CUDA
#   context + 32 MiB cuBLAS) = 126,838,860,800 B = 118.13 GiB; A100-80GB budget 80 GiB -> 147.7 %.
#   serve: 7e9 x 2 + 800 MiB = 14,838,860,800 B = 13.82 GiB of 16 GB (14.90 GiB) -> 92.7 %: warning.
PROJECT = """\
[tool.llmmem]
gpu = "A100-80GB"

[tool.llmmem.model]
params = "7B"

[[tool.llmmem.runs]]
name = "train"
dtype = "bf16"

[[tool.llmmem.runs]]
name = "serve"
mode = "inference"
gpu-memory = "16 GB"

[[tool.llmmem.runs]]
name = "small"
mode = "inference"
model = { params = "1B" }
"""


@pytest.fixture
def actions_env(tmp_path, monkeypatch):
    monkeypatch.setenv("GITHUB_ACTIONS", "true")
    monkeypatch.setenv("GITHUB_WORKSPACE", str(tmp_path))
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(tmp_path / "summary.md"))
    monkeypatch.setenv("GITHUB_OUTPUT", str(tmp_path / "output.txt"))
    monkeypatch.setenv("RUNNER_TEMP", str(tmp_path))
    (tmp_path / "train").mkdir()
    (tmp_path / "train" / "pyproject.toml").write_text(PROJECT)
    return tmp_path


def test_escaping_follows_the_actions_toolkit():
    assert escape_data("50 % over\r\nnext") == "50 %25 over%0D%0Anext"
    assert escape_property("llmmem: a,b") == "llmmem%3A a%2Cb"


def test_annotations_are_exact(actions_env, run_cli):
    code, out, _ = run_cli("check", actions_env / "train" / "pyproject.toml")
    assert code == 1
    annotations = [line for line in out.splitlines() if line.startswith("::")]
    # Every run is known by params only, so each annotation also says the estimate is partial; "small"
    # fits with room to spare and is annotated only for that (1e9 x 2 B + 800 MiB = 2.64 GiB, 3.3 %).
    partial = "estimate is partial: the model is given by params only: activations, logits and KV cache are not counted."
    assert annotations == [
        "::error file=train/pyproject.toml,line=7,title=llmmem%3A train::train needs 118.13 GiB per GPU, over its 80.00 GiB budget "
        f"(147.7 %25); biggest term: optimizer states 52.15 GiB. The {partial}",
        f"::warning file=train/pyproject.toml,line=11,title=llmmem%3A serve::serve uses 92.7 %25 of its 14.90 GiB budget (13.82 GiB), and the {partial}",
        f"::warning file=train/pyproject.toml,line=16,title=llmmem%3A small::small fits (2.64 GiB of 80.00 GiB, 3.3 %25), but the {partial}",
    ]


def test_job_summary_and_outputs(actions_env, run_cli):
    run_cli("check", actions_env / "train")
    summary = (actions_env / "summary.md").read_text()
    assert "| run | total | budget | used | verdict |" in summary
    assert "| train | 118.13 GiB | 80.00 GiB | 147.7 % | :x: over (partial) |" in summary
    assert "| serve | 13.82 GiB | 14.90 GiB | 92.7 % | :warning: fits (partial) |" in summary
    assert "| optimizer states | 52.15 GiB | 44.2 % |" in summary  # 56e9 of 126.84e9
    assert summary.count("```mermaid") == 3 and '    "optimizer states" : 52.15' in summary
    report = actions_env / "llmmem-report.json"
    assert (actions_env / "output.txt").read_text() == f"fits=false\njson={report}\n"
    assert [r["name"] for r in json.loads(report.read_text())["runs"]] == ["train", "serve", "small"]


def test_at_most_ten_annotations(actions_env, run_cli):
    runs = "".join(f'\n[[tool.llmmem.runs]]\nname = "r{i}"\ndtype = "bf16"\n' for i in range(12))
    (actions_env / "train" / "pyproject.toml").write_text(PROJECT.split("[[tool.llmmem.runs]]")[0] + runs)
    _, out, _ = run_cli("check", actions_env / "train", "--format", "github")
    annotations = [line for line in out.splitlines() if line.startswith("::")]
    assert len(annotations) == MAX_ANNOTATIONS + 1
    assert annotations[-1] == "::notice title=llmmem::2 more llmmem annotations not shown; see the job summary."


def test_text_mode_has_no_annotations(write_pyproject, run_cli, monkeypatch):
    monkeypatch.delenv("GITHUB_ACTIONS", raising=False)
    _, out, _ = run_cli("check", write_pyproject(PROJECT))
    assert "::error" not in out


def test_pytest_plugin_annotates_and_summarises(pytester, monkeypatch):
    summary = pytester.path / "summary.md"
    monkeypatch.setenv("GITHUB_ACTIONS", "true")
    monkeypatch.setenv("GITHUB_WORKSPACE", str(pytester.path))
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    pytester.makepyprojecttoml(PROJECT)
    result = pytester.runpytest("--llmmem")
    result.stdout.fnmatch_lines(["::error file=pyproject.toml,line=7,title=llmmem%3A train::train needs 118.13 GiB per GPU*"])
    assert "| train | 118.13 GiB | 80.00 GiB | 147.7 % | :x: over (partial) |" in summary.read_text()


# --- llmmem diff ---------------------------------------------------------------------------------


def _report(tmp_path, name, text, run_cli):
    path = tmp_path / f"{name}.toml"
    path.write_text(text)
    out = tmp_path / f"{name}.json"
    run_cli("check", path, "--format", "json", "--json-out", out)
    return out


def test_diff_names_the_terms_that_moved(tmp_path, run_cli):
    base = _report(tmp_path, "base", PROJECT.replace('dtype = "bf16"', 'dtype = "bf16"\noptimizer = "sgd"'), run_cli)
    head = _report(tmp_path, "head", PROJECT, run_cli)
    code, out, _ = run_cli("diff", base, head)
    # sgd -> adamw adds 2 fp32 states: 7e9 x 8 B = 56e9 B = +52.2 GiB; base total 7e9 x (2 + 4 + 4) + 800 MiB
    # = 70.84e9 B = 66.0 GiB at the optimizer step (fp32 gradients on the masters)
    assert out.splitlines()[0] == "train: 66.0 -> 118.1 GiB (+52.2, optimizer states +52.2) [NO LONGER FITS]"
    assert out.splitlines()[1] == "serve: 13.8 -> 13.8 GiB (+0.0) [fits]"
    assert code == 1  # a run that fitted no longer does


def test_diff_markdown_and_no_regression(tmp_path, run_cli):
    base = _report(tmp_path, "base", PROJECT, run_cli)
    head = _report(tmp_path, "head", PROJECT.replace('dtype = "bf16"', 'dtype = "bf16"\noptimizer = "adamw-8bit"'), run_cli)
    code, out, _ = run_cli("diff", base, head, "--format", "markdown")
    assert code == 0
    assert out.splitlines()[0] == "| run | before (GiB) | after (GiB) | change | largest changes | verdict |"
    # 8-bit AdamW keeps 2 x (1 + 4/256) = 2.0313 B/param instead of 8 (bitsandbytes absmax per 256,
    # optim/optimizer.py:524): saves 7e9 x 5.96875 = 41.78e9 B = 38.9 GiB; 126.84e9 - 41.78e9 = 85.06e9 B
    # = 79.2 GiB, under the 80 GiB budget.
    assert "| train | 118.1 | 79.2 | -38.9 | optimizer states -38.9 | fits |" in out


def test_diff_bad_input(tmp_path, run_cli):
    (tmp_path / "x.json").write_text("[1, 2]")
    code, _, err = run_cli("diff", tmp_path / "x.json", tmp_path / "x.json")
    assert code == 2 and "is not an llmmem JSON report" in err


# --- the action and the workflow -----------------------------------------------------------------


def test_actionlint_passes_on_the_workflow_and_the_action():
    beside = Path(sys.executable).parent / "actionlint"
    actionlint = str(beside) if beside.exists() else shutil.which("actionlint")
    if actionlint is None:
        pytest.skip("actionlint not installed (pip install '.[test]')")
    # Linting the workflow also loads ./hooks/github/action.yml and checks the inputs it is given.
    proc = subprocess.run([actionlint, "-no-color", ".github/workflows/llmmem.yml"], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_action_passes_inputs_through_env_only():
    text = (ROOT / "hooks" / "github" / "action.yml").read_text()
    runs = text.split("runs:", 1)[1]
    for block in runs.split("    - ")[1:]:
        if "run:" in block:
            assert "shell: bash" in block
            script = block.split("run:", 1)[1]
            assert "${{" not in script, block


def test_negative_calibration_is_a_line_of_its_own_not_a_pie_slice(actions_env, run_cli):
    # calibration = 0.9 on "train": (0.9 - 1) x 126,838,860,800 B = -12,683,886,080 B = -11.81 GiB
    # (see PROJECT's comment for the 118.13 GiB before it); total 114,154,974,720 B = 106.32 GiB.
    # Mermaid rejects a negative slice, so the correction must not be one.
    text = PROJECT.replace('name = "train"\ndtype = "bf16"', 'name = "train"\ndtype = "bf16"\ncalibration = 0.9')
    (actions_env / "train" / "pyproject.toml").write_text(text)
    run_cli("check", actions_env / "train", "--run", "train")
    summary = (actions_env / "summary.md").read_text()
    pie = summary.split("```mermaid")[1].split("```")[0]
    slices = [float(line.rsplit(":", 1)[1]) for line in pie.splitlines() if line.strip().startswith('"')]
    assert slices and all(value >= 0 for value in slices)
    assert "calibration" not in pie
    assert "| measured calibration | -11.81 GiB | -11.1 % |" in summary  # the table keeps the signed term
    after_pie = summary.split("```mermaid")[1].split("```", 1)[1]
    assert "> measured calibration: -11.81 GiB, a correction not drawn in the pie (its slices add up to 118.13 GiB; total 106.32 GiB)" in after_pie
