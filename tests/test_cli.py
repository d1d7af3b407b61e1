"""What a user sees from `llmmem`: exit codes, the table, JSON, units, ad-hoc estimates."""

import json
import subprocess
import sys
from pathlib import Path

from pytest_llmmem.io import files
from pytest_llmmem.report.layout import unfit

EXAMPLE = Path(__file__).resolve().parents[1] / "examples"

FITTING = """
[tool.llmmem]
gpu = "H100-80GB"
headroom = "2 GiB"

[tool.llmmem.model]
params = "1B"

[[tool.llmmem.runs]]
name = "serve"
mode = "inference"
dtype = "bf16"
"""


def test_fitting_run_exits_0(write_pyproject, run_cli):
    path = write_pyproject(FITTING)
    code, out, err = run_cli("check", path)
    out = unfit(out)  # sentences whole, as they were before wrapping to 80 columns
    assert code == 0, err
    # 1e9 params x 2 bytes = 1.86 GiB weights + 1.34 GiB CUDA context and cuBLAS workspace
    assert "serve (line 9): FITS" in out  # the [[tool.llmmem.runs]] header (text starts with a blank line)
    assert "budget: H100-80GB less 2.00 GiB headroom" in out
    assert "1 of 1 runs fit." in out
    assert "activations, logits and KV cache not computed" in out


def test_folder_or_file(write_pyproject, run_cli, monkeypatch):
    path = write_pyproject(FITTING)
    assert run_cli("check", path.parent)[0] == 0
    monkeypatch.chdir(path.parent)
    assert run_cli("check")[0] == 0


def test_example_has_a_fitting_and_an_over_budget_run(run_cli):
    code, out, err = run_cli("check", EXAMPLE)
    assert code == 1
    assert "lora-sft (line 13): FITS" in out
    assert "full-sft (line 30): OVER" in out
    assert "biggest term: optimizer states" in out
    assert "2 of 3 runs fit; over budget: full-sft." in out


def test_json_document(run_cli):
    code, out, _ = run_cli("check", EXAMPLE, "--format", "json")
    assert code == 1
    doc = json.loads(out)
    assert doc["version"] == 1
    assert doc["file"].endswith("pyproject.toml")
    names = [r["name"] for r in doc["runs"]]
    assert names == ["lora-sft", "serve", "full-sft"]
    full = doc["runs"][2]
    assert full["fits"] is False
    assert full["params"] == 6_738_415_616 == full["trainable_params"]
    assert sum(full["breakdown"].values()) == full["total_bytes"]
    assert full["budget_bytes"] == 81920 * 2**20 * 95 // 100  # A100-80GB less 5 %
    assert {"name", "fits", "total_bytes", "budget_bytes", "params", "trainable_params", "breakdown", "notes"} <= set(full)


def test_run_selection(run_cli):
    code, out, _ = run_cli("check", EXAMPLE, "--run", "serve", "--format", "json")
    assert code == 0
    assert [r["name"] for r in json.loads(out)["runs"]] == ["serve"]
    code, _, err = run_cli("check", EXAMPLE, "--run", "serv")
    assert code == 2
    assert 'no run named "serv". Did you mean "serve"?' in err


def test_decimal_units(write_pyproject, run_cli):
    path = write_pyproject(FITTING.replace('params = "1B"', 'params = "7B"').replace('headroom = "2 GiB"', ""))
    code, out, _ = run_cli("check", path, "--units", "gb", "--format", "text")
    assert "GB = 10^9 bytes" in out
    assert "14.00 GB" in out  # 7e9 x 2 bytes of weights


def test_estimate_without_pyproject(run_cli):
    code, out, err = run_cli("estimate", "--params", "7B", "--dtype", "bf16", "--mode", "inference", "--method", "rule-of-thumb", "--units", "gb")
    assert code == 0, err
    assert "14.00 GB (no budget set)" in out
    code, out, _ = run_cli("estimate", "--params", "7B", "--mode", "train", "--dtype", "fp32", "--method", "rule-of-thumb", "--gpu", "A100-80GB")
    assert code == 1  # 112 GB of model states on an 80 GiB GPU
    assert "OVER: 104.31 GiB" in out  # 112e9 / 1024^3


def test_estimate_flags_are_checked(run_cli):
    code, _, err = run_cli("estimate", "--params", "7B", "--dtype", "bf61")
    assert code == 2
    assert 'Did you mean "bf16"?' in err
    code, _, err = run_cli("estimate", "--params", "7B", "--mode", "lora", "--lora-targets", "q_proj")
    assert code == 0, err


def test_usage_error_exits_2(run_cli, capsys):
    import pytest

    with pytest.raises(SystemExit) as info:
        run_cli("frobnicate")
    assert info.value.code == 2


def test_catalog_lists_builtins(run_cli):
    code, out, _ = run_cli("catalog", "gpus")
    assert code == 0
    assert "A100-80GB    80.00 GiB" in out
    assert "MI300X" in out


def test_console_script_runs_in_a_subprocess():
    proc = subprocess.run([sys.executable, "-m", "pytest_llmmem.cli", "check", str(EXAMPLE), "--format", "json"], capture_output=True, text=True)
    assert proc.returncode == 1
    assert json.loads(proc.stdout)["runs"][0]["name"] == "lora-sft"


def test_the_console_script_is_main_in_a_process_that_exits_next(run_cli):
    # pyproject's llmmem script is frontends.cli:script: main's output and exit code, the collector left off
    # and the run's objects frozen (gc.freeze) so that the interpreter's exit traverses none of them (start-up)
    scripts = files.toml.loads((Path(__file__).resolve().parent.parent / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["llmmem"] == "pytest_llmmem.frontends.cli:script"
    code = ("import gc, sys; from pytest_llmmem.frontends.cli import script; sys.argv = ['llmmem', 'check', sys.argv[1]];"
            "code = script(); print(gc.isenabled(), gc.get_freeze_count() > 1000, file=sys.stderr); sys.exit(code)")
    proc = subprocess.run([sys.executable, "-c", code, str(EXAMPLE)], capture_output=True, text=True)
    assert (proc.returncode, proc.stdout) == run_cli("check", EXAMPLE)[:2]
    assert proc.returncode == 1 and proc.stderr.split() == ["False", "True"]


def test_core_never_imports_pytest():
    code = (
        "import sys; from pytest_llmmem import cli, estimator, units; from pytest_llmmem.config import load;"
        "from pytest_llmmem.report import text; from pytest_llmmem.catalog import registry; from pytest_llmmem.model import architecture;"
        "from pytest_llmmem.serving import engines; from pytest_llmmem.recipes import recipes; from pytest_llmmem.fit import search;"
        "cli.main(['check', sys.argv[1], '--format', 'json']);"
        "assert not any(m == 'pytest' or m.startswith(('_pytest', 'pytest.')) for m in sys.modules), sorted(sys.modules)"
    )
    proc = subprocess.run([sys.executable, "-c", code, str(EXAMPLE)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


# What `llmmem check` must not import for plain training and inference runs: pre-commit runs it on every
# commit, so each of these costs every user start-up time (benchmarks/cli_startup.py) for nothing.
NOT_NEEDED_BY_CHECK = (
    "pytest_llmmem.frontends.commands",  # the other sub-commands and their flags
    "pytest_llmmem.serving", "pytest_llmmem.config.serve_keys", "pytest_llmmem.fit.serving",  # only runs with engine = "vllm" | "sglang"
    "pytest_llmmem.recipes", "pytest_llmmem.config.recipe_keys",  # only runs with recipe = "dpo" | "grpo" | ...
    "pytest_llmmem.config.trainer_config", "pytest_llmmem.config.readers",  # only runs with from = "train.yaml"
    "pytest_llmmem.hf.hub",  # only a model given by Hub id
    "pytest_llmmem.frontends.repo_scan",  # only --hook and model-config paths
    "pytest_llmmem.report.github", "pytest_llmmem.report.diff", "pytest_llmmem.frontends.measure", "pytest_llmmem.frontends.pytest_checks",
    "difflib",  # did-you-mean tables: only on an error
    "pytest_llmmem.io.json_lines",  # the line of each key of a JSON file: only an error that names one
    "pluggy", "pytest_llmmem.hookspecs", "pytest_llmmem.catalog.hookspecs", "inspect",  # only once a plugin is in play (catalog/registry.py): pluggy imports inspect
)


def _modules_after_check(path):
    code = "import sys; from pytest_llmmem import cli; cli.main(['check', sys.argv[1]]); print('\\n'.join(sorted(sys.modules)))"
    proc = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True)
    assert proc.returncode in (0, 1), proc.stderr
    return set(proc.stdout.splitlines())


def test_check_imports_only_what_plain_runs_need(write_pyproject):
    # The example: LoRA, inference and an over-budget full training run (which loads fit for its ways out).
    loaded = _modules_after_check(EXAMPLE / "pyproject.toml")
    assert "pytest_llmmem.estimator" in loaded and "pytest_llmmem.fit.search" in loaded  # the check really ran
    assert sorted(m for m in loaded if m.startswith(NOT_NEEDED_BY_CHECK)) == []
    # A training run that fits: no ways out to compute, so fit stays unloaded too.
    fitting = write_pyproject(FITTING.replace('mode = "inference"', 'mode = "train"'))
    loaded = _modules_after_check(fitting)
    assert "pytest_llmmem.estimator" in loaded
    assert sorted(m for m in loaded if m.startswith(NOT_NEEDED_BY_CHECK + ("pytest_llmmem.fit",))) == []


def test_fit_command(run_cli):
    code, out, _ = run_cli("fit", EXAMPLE, "--run", "full-sft")
    assert code == 1  # the run does not fit as declared
    lines = out.splitlines()
    assert lines[0].startswith("full-sft (")
    assert "largest batch-size that fits: none (batch-size 1 is over)" in out
    # 7B at 18 B/param / N: N = 2 is the first count under 76 GiB (see tests/test_fit.py)
    assert "with zero-stage = 3: 2" in out
    # bitsandbytes 8-bit states: 1 + 4/256 B each (absmax per 256, optimizer.py:524), not 1 + 4/2048. The peak is
    # the optimizer step (mixed precision steps on fp32 gradients, job_phases.step_gradients): bf16 weights 2 +
    # fp32 master 4 + fp32 gradients 4 B/param = 67.38 GB, + 2 x (1 + 4/256) B/param of states = 13.69 GB, + the
    # head's 32000 x 4096 bf16 gradient still being cast (0.26 GB) + the 768 MiB context and 32 MiB workspace
    # (0.84 GB) = 82.18 GB = 76.53 GiB: still over the 76 GiB budget
    assert 'optimizer = "adamw-8bit": 76.53 GiB, still over' in out
    code, out, _ = run_cli("fit", EXAMPLE, "--run", "lora-sft")
    assert code == 0
    # boundary property checked in tests/test_fit.py; 37 since the backward's peak is its start (core/terms/backward.py):
    # every saved activation and 12 B per logit element (the bf16 logits are gone), no gradient yet (24 when all were added)
    assert "largest batch-size that fits: 37" in out


LORA_WITHOUT_RANK = """
[tool.llmmem]
gpu = "A100-80GB"

[tool.llmmem.model]
id = "meta-llama/Llama-3.1-8B"

[[tool.llmmem.runs]]
name = "lora"
mode = "lora"
seq-len = 2048
{extra}"""


def test_a_lora_run_without_a_rank_says_it_assumed_8(write_pyproject, run_cli):
    """Issue 23 §3: mode = "lora" without lora-rank priced r = 8 silently; it is said as a missing seq-len is."""
    code, out, err = run_cli("check", write_pyproject(LORA_WITHOUT_RANK.format(extra="")))
    assert code == 0, err
    assert "  note: lora-rank not set: assumed 8 (PEFT's LoraConfig default r)" in out
    code, out, err = run_cli("check", write_pyproject(LORA_WITHOUT_RANK.format(extra="lora-rank = 8\n")))
    assert code == 0 and "lora-rank not set" not in out, err


def test_a_long_path_keeps_the_unit_note_whole(tmp_path, run_cli):
    # The header wraps at 80 columns; a path of 70 characters leaves no room for "(GB = 10^9 bytes)" on its line,
    # which must then move whole to the next line instead of breaking at its spaces.
    import shutil

    deep = tmp_path / ("d" * max(1, 70 - len(str(tmp_path))))
    shutil.copytree(EXAMPLE, deep)
    code, out, _ = run_cli("check", str(deep), "--units", "gb", "--format", "text")
    assert code == 1  # the example's full-sft run is over budget on purpose
    assert "    (GB = 10^9 bytes)" in out.splitlines()[:3]
