"""Small things a user sees from `llmmem` (issue 10 item 12): units, fit's answers, paths, summaries."""

import re
import json
import os
import sys
from pathlib import Path

import pytest
from pytest_llmmem.report.layout import unfit

EXAMPLE = Path(__file__).resolve().parents[1] / "examples"

FITTING = """\
[tool.llmmem]
gpu = "H100-80GB"
headroom = "2 GiB"

[tool.llmmem.model]
params = "1B"

[[tool.llmmem.runs]]
name = "serve"
mode = "inference"
"""


def test_units_gb_names_the_headroom_in_gb(write_pyproject, run_cli):
    code, out, _ = run_cli("check", write_pyproject(FITTING), "--units", "gb", "--format", "text")
    assert code == 0
    assert "budget: H100-80GB less 2.15 GB headroom" in out  # 2 x 1024^3 = 2.147e9 bytes
    assert "GiB" not in out.split("\n", 1)[1]  # every figure after the unit line is decimal


def test_fit_single_gpu_lora_does_not_point_at_a_missing_line(run_cli):
    code, out, _ = run_cli("fit", EXAMPLE, "--run", "lora-sft")
    assert code == 0
    assert "fewest GPUs" not in out  # no such line is printed for a LoRA run
    assert "zero-stage = 3 on 1 GPU: n/a (only for full training)" in out


def test_fit_single_gpu_full_training_keeps_the_pointer(run_cli):
    _, out, _ = run_cli("fit", EXAMPLE, "--run", "full-sft")
    out = unfit(out)
    assert "fewest GPUs that fit:" in out
    assert "zero-stage = 3 on 1 GPU: n/a (one GPU shards nothing; see the fewest GPUs above)" in out


def test_fit_inference_gives_a_real_answer(run_cli):
    code, out, _ = run_cli("fit", EXAMPLE, "--run", "serve")
    out = unfit(out)
    assert code == 0
    assert "needs the architecture" not in out  # the architecture is given (llama2-7b/config.json)
    # the exact boundaries are property-checked in tests/test_fit.py; here: the inference answer is given
    # generation counts the last position's logits only (issue 12): 26 and 13,320 with the 768 MiB context
    # (25 and 13,200 with 1343 MiB)
    assert "largest batch-size that fits: 26 (at seq-len 4096)" in out
    assert "longest seq-len that fits:    13320 (at batch-size 8)" in out
    assert "gradient-checkpointing = true: n/a (only for training: inference keeps no activations for a backward pass)" in out


def test_fit_without_an_architecture_does_not_invent_a_batch(write_pyproject, run_cli):
    code, out, _ = run_cli("fit", write_pyproject(FITTING))
    out = unfit(out)
    assert code == 0
    assert "1048576" not in out and "16777216" not in out  # the search bounds, not answers
    assert "largest batch-size that fits: n/a (batch and sequence need the architecture: give config or the shape)" in out


def test_fit_prints_paths_as_given(run_cli, monkeypatch):
    monkeypatch.chdir(EXAMPLE)
    _, out, _ = run_cli("fit", "--run", "serve")
    assert out.splitlines()[0].startswith("serve (pyproject.toml:23): FITS")
    monkeypatch.chdir(EXAMPLE / "llama2-7b")
    _, out, _ = run_cli("fit", "..", "--run", "serve")
    assert out.splitlines()[0].startswith("serve (../pyproject.toml:23): FITS")


@pytest.fixture
def nested(tmp_path, monkeypatch):
    """proj/pyproject.toml declares runs; proj/src/pyproject.toml does not; cwd is proj/src/pkg."""
    (tmp_path / "proj" / "src" / "pkg").mkdir(parents=True)
    (tmp_path / "proj" / ".git").mkdir()
    (tmp_path / "proj" / "pyproject.toml").write_text(FITTING)
    (tmp_path / "proj" / "src" / "pyproject.toml").write_text("[project]\nname = 'x'\n")
    monkeypatch.chdir(tmp_path / "proj" / "src" / "pkg")
    return tmp_path


def test_check_in_a_subfolder_finds_the_nearest_llmmem_pyproject(nested, run_cli):
    code, out, err = run_cli("check", "--format", "text")
    assert code == 0, err
    assert out.startswith("llmmem: ../../pyproject.toml (GiB = 1024^3 bytes)")
    code, out, _ = run_cli("fit")
    assert code == 0 and out.startswith("serve (../../pyproject.toml:8): FITS")


def test_the_upward_search_stops_at_the_repository_root(nested, run_cli, monkeypatch):
    (nested / "pyproject.toml").write_text(FITTING)  # above the repository: not this project's
    (nested / "proj" / "pyproject.toml").write_text("[project]\nname = 'x'\n")
    code, _, err = run_cli("check")
    assert code == 2
    assert "no pyproject.toml with [tool.llmmem] in" in err and "up to the repository root" in err


@pytest.mark.parametrize("argv, flag", [
    (["--params", "7B", "--dtype", "bf61"], '--dtype: unknown dtype "bf61". Did you mean "bf16"?'),
    (["--params", "7B", "--batch-size", "0"], "--batch-size: 0 is out of range"),
    (["--params", "7B", "--mode", "inference", "--optimizer", "adamw"], '--optimizer: only applies to training; --mode is "inference".'),
    (["--config", "nope.json"], '--config: "nope.json" does not exist. The path is relative to the current folder (or absolute).'),
])
def test_estimate_errors_name_the_flag(run_cli, argv, flag):
    code, _, err = run_cli("estimate", *argv)
    assert code == 2
    assert f"llmmem: error: command line: {flag}" in err
    assert "tool.llmmem" not in err


def test_no_budget_is_not_a_pass(run_cli):
    code, out, _ = run_cli("estimate", "--params", "7B", "--mode", "inference", "--format", "text")
    assert code == 0
    assert "runs fit" not in out
    assert out.rstrip().endswith("1 run without a budget: nothing to check it against.")


def _actions(monkeypatch, tmp_path, runner_temp=True):
    monkeypatch.setenv("GITHUB_ACTIONS", "true")
    monkeypatch.setenv("GITHUB_WORKSPACE", str(tmp_path))
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(tmp_path / "summary.md"))
    monkeypatch.setenv("GITHUB_OUTPUT", str(tmp_path / "output.txt"))
    if runner_temp:
        (tmp_path / "runner").mkdir()
        monkeypatch.setenv("RUNNER_TEMP", str(tmp_path / "runner"))
    else:
        monkeypatch.delenv("RUNNER_TEMP", raising=False)
    monkeypatch.chdir(tmp_path)


def test_a_pipe_in_a_run_name_keeps_the_summary_table(write_pyproject, run_cli, monkeypatch, tmp_path):
    path = write_pyproject(FITTING.replace('name = "serve"', 'name = "serve|fast"'))
    _actions(monkeypatch, tmp_path)
    run_cli("check", path)
    summary = (tmp_path / "summary.md").read_text()
    # 1e9 x 2 B = 1.86 GiB + 800 MiB overhead = 2.64 GiB; H100-80GB reports 81559 MiB = 79.65 GiB, less 2
    assert "| serve\\|fast | 2.64 GiB | 77.65 GiB | 3.4 % | :warning: fits (partial) |" in summary


def test_the_hook_writes_no_file_under_github_actions(write_pyproject, run_cli, monkeypatch, tmp_path):
    write_pyproject(FITTING)
    _actions(monkeypatch, tmp_path)
    before = sorted(p.name for p in tmp_path.rglob("*"))
    code, out, _ = run_cli("check", "--hook", "pyproject.toml")
    assert code == 0 and "llmmem pyproject.toml: 1 of 1 runs fit." in out
    assert sorted(p.name for p in tmp_path.rglob("*")) == before  # no summary, no outputs, no JSON


def test_without_runner_temp_no_json_is_written(write_pyproject, run_cli, monkeypatch, tmp_path):
    write_pyproject(FITTING)
    _actions(monkeypatch, tmp_path, runner_temp=False)
    code, _, _ = run_cli("check", "pyproject.toml")
    assert code == 0
    assert not (tmp_path / "llmmem-report.json").exists()  # before: written into the repository
    assert (tmp_path / "output.txt").read_text() == "fits=true\n"
    assert "| serve | 2.64 GiB |" in (tmp_path / "summary.md").read_text()


def test_with_runner_temp_the_json_goes_there(write_pyproject, run_cli, monkeypatch, tmp_path):
    write_pyproject(FITTING)
    _actions(monkeypatch, tmp_path)
    run_cli("check", "pyproject.toml")
    report = tmp_path / "runner" / "llmmem-report.json"
    assert json.loads(report.read_text())["runs"][0]["name"] == "serve"
    assert (tmp_path / "output.txt").read_text() == f"fits=true\njson={report}\n"
    assert not os.path.exists(tmp_path / "llmmem-report.json")


def test_output_closed_early_is_quiet(tmp_path):
    """`llmmem check | head -1`: the reader closes the pipe; no "internal error", no traceback, and the exit
    code is still the verdict (a `set -o pipefail` CI step must not read a closed pipe as a config error).

    400 runs print well over the 64 KiB a pipe buffers, so llmmem is still writing when the pipe closes.
    """
    import subprocess
    import sys

    runs = "".join(f'[[tool.llmmem.runs]]\nname = "r{i}"\nmode = "inference"\n' for i in range(400))
    (tmp_path / "pyproject.toml").write_text(
        '[tool.llmmem]\ngpu-memory = "1 GiB"\n[tool.llmmem.model]\nparams = "7B"\n' + runs, encoding="utf-8")
    report = tmp_path / "report.json"
    proc = subprocess.Popen([sys.executable, "-m", "pytest_llmmem.cli", "check", str(tmp_path), "--json-out", str(report)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.readline()
    proc.stdout.close()  # as head does after its first line
    with proc.stderr:
        err = proc.stderr.read().decode()
    code = proc.wait(timeout=60)
    assert "internal error" not in err and "Traceback" not in err
    assert code == 1  # over budget: 7B params in bf16 are 14 GB of weights against 1 GiB
    assert len(json.loads(report.read_text())["runs"]) == 400  # the report is still written in full


def test_reader_gone_before_the_annotations_keeps_the_verdict_and_the_step_files(
        write_pyproject, monkeypatch, tmp_path):
    """Under Actions the text is printed, then the annotations: a reader that goes away between the two
    used to end the run with exit 2 and no summary or step outputs (`| head` in a pipefail step)."""
    from pytest_llmmem.frontends.cli import main

    class ReaderGoneAtAnnotations:
        """A stdout whose reader leaves when the first workflow command ("::error ...") is written."""
        encoding = "utf-8"
        errors = "backslashreplace"

        def __init__(self, sink):
            self.sink, self.text = sink, []

        def write(self, text):
            if text.startswith("::"):
                raise BrokenPipeError(32, "Broken pipe")
            self.text.append(text)
            return len(text)

        def flush(self):
            pass

        def fileno(self):  # closed_reader points this descriptor at devnull
            return self.sink.fileno()

    write_pyproject(FITTING.replace('params = "1B"', 'params = "70B"'))  # 70e9 x 2 B = 130 GiB of weights: over
    _actions(monkeypatch, tmp_path)
    with open(tmp_path / "sink", "w") as sink:
        monkeypatch.setattr(sys, "stdout", ReaderGoneAtAnnotations(sink))
        code = main(["check", "pyproject.toml", "--format", "github"])
    assert code == 1  # the verdict, not a configuration error
    assert (tmp_path / "output.txt").read_text().startswith("fits=false\n")
    assert "| serve |" in (tmp_path / "summary.md").read_text()


# --- every config key is a flag of `llmmem estimate` (issue 23 part 5) ----------------------------

# Keys that are not a flag of their own name, and why.
NOT_A_FLAG = {
    "runs": "estimate is one run",
    "id": "--model (the Hub id)",
    "model": "--model (the Hub id); the other model keys are flags of their own",
    "format": "--from-format (--format is the output's: text, json, github)",
    "reward-model": "a table of its own model keys: declare it in a pyproject",
    "value-model": "a table of its own model keys: declare it in a pyproject",
}


def test_every_config_key_is_an_estimate_flag(run_cli, capsys):
    from pytest_llmmem.config import keys

    with pytest.raises(SystemExit) as done:  # argparse's --help exits 0
        run_cli("estimate", "--help")
    out = capsys.readouterr().out
    flags = set(re.findall(r"--([a-z0-9-]+)", out))
    every = dict.fromkeys(keys.TOP_KEYS + keys.MODEL_KEYS + keys.RUN_KEYS)
    assert done.value.code == 0
    assert [key for key in every if key not in flags and key not in NOT_A_FLAG] == []
    assert {"model", "from-format"} <= flags


def test_estimate_reads_a_trainer_config_with_from(run_cli, monkeypatch):
    monkeypatch.chdir(Path(__file__).parent / "data" / "trainer_configs" / "axolotl")
    code, out, err = run_cli("estimate", "--from", "qlora.yml", "--gpu", "A10G", "--model", "meta-llama/Llama-3.1-8B")
    out = unfit(out)
    assert code == 1, err  # over a 24 GB A10G
    # axolotl's examples/llama-3/qlora.yml: adapter qlora, lora_r 32 on all linear layers, micro_batch_size 2 x sequence_len 4096
    assert "  qlora | nf4 | paged-adamw | r=32 on all-linear | batch 2 x seq 4096 | checkpointing | 8.03B params | budget: A10G" in out
    assert "    batch-size             qlora.yml: micro_batch_size" in out
    assert "    model                  command line (the run)" in out  # --model overrides the file's base_model
    code, _, err = run_cli("estimate", "--from", "missing.yml", "--gpu", "A10G")
    assert code == 2 and 'llmmem: error: command line: --from: "missing.yml" does not exist' in err


def test_gradient_checkpointing_flag_takes_selective_and_its_policy(run_cli):
    # --gradient-checkpointing alone is true; with a value it is the key's value, as in the TOML contract.
    code, out, err = run_cli("estimate", "--params", "7B", "--gpu", "H100-80GB", "--mode", "train",
                             "--gradient-checkpointing", "selective", "--selective-ac", "2")
    assert code == 1, err  # over budget: mixed-precision AdamW keeps 16 B per parameter, 7e9 x 16 B = 104 GiB > 80
    assert "checkpointing every 2 layers (selective)" in out
    code, out, err = run_cli("estimate", "--params", "7B", "--gpu", "H100-80GB", "--mode", "train",
                             "--gradient-checkpointing", "selectiv")
    assert code == 2
    assert 'Did you mean "selective"?' in err
