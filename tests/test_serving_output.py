"""What a vLLM user reads (issue 23 part 5): each thing said once, and CI warnings about what can fail."""

import pytest

from pytest_llmmem.report.layout import unfit

PROJECT = """
[tool.llmmem]
gpu = "H100-80GB"
model = "meta-llama/Llama-3.1-8B"

[[tool.llmmem.runs]]
name = "default"
mode = "inference"
engine = "vllm"
max-model-len = 8192

[[tool.llmmem.runs]]
name = "tp2"
mode = "inference"
engine = "vllm"
gpus = 2
tensor-parallel = 2
max-model-len = 8192

[[tool.llmmem.runs]]
name = "tight"
mode = "inference"
engine = "vllm"
gpu = "RTX-3090"
max-model-len = 32768

[[tool.llmmem.runs]]
name = "refused"
mode = "inference"
engine = "vllm"
gpu = "RTX-3090"
max-model-len = 131072
"""
REFUSAL = "To serve at least one request with the model's max seq len (131072)"


@pytest.fixture
def served(write_pyproject, monkeypatch):
    path = write_pyproject(PROJECT)
    monkeypatch.chdir(path.parent)
    return path


def test_a_refusal_is_said_once_and_tensor_parallel_once(served, run_cli):
    code, out, _ = run_cli("check")
    text = unfit(out)
    assert code == 1
    assert text.count(REFUSAL) == 1  # was 3: the verdict, "REFUSES TO START" and "FAILS"
    assert "refused (line 27): FAILS: 21.83 GiB of 24.00 GiB budget (91.0 %); vllm refuses to start: " + REFUSAL in text
    assert "  inference | bf16 | vllm | 2 GPUs TP=2 | 8.03B params | budget: H100-80GB" in text.splitlines()  # was "vllm TP=2 | 2 GPUs TP=2"
    assert text.splitlines()[-1] == "3 of 4 runs fit; fails: refused."  # within its budget: not "over budget"


def test_github_warns_on_what_can_fail_not_on_the_engine_share(served, run_cli, monkeypatch, tmp_path):
    monkeypatch.setenv("GITHUB_ACTIONS", "true")
    monkeypatch.setenv("RUNNER_TEMP", str(tmp_path))
    _, out, _ = run_cli("check")
    notes = [line for line in out.splitlines() if line.startswith("::")]
    # default and tp2 take 0.9 x 79.18 GiB + the CUDA context = 90.2 % of the budget, as vLLM means to: no warning
    assert not any("title=llmmem%3A default::" in n or "title=llmmem%3A tp2::" in n for n in notes), notes
    # tight: 40,592 KV tokens / 32,768 = 1.24x, fewer than two max-model-len requests at once
    tight = next(n for n in notes if "title=llmmem%3A tight::" in n)
    assert tight.startswith("::warning ") and "the KV cache holds 40,592 tokens, 1.24x max-model-len 32,768" in tight
    refused = next(n for n in notes if "title=llmmem%3A refused::" in n)
    assert refused.startswith("::error ") and "refused fails: vllm refuses to start: " + REFUSAL in refused
    assert "over its" not in refused  # 21.83 of 24.00 GiB is within the budget


def test_a_run_without_an_engine_near_its_budget_still_warns(write_pyproject, run_cli, monkeypatch, tmp_path):
    monkeypatch.setenv("GITHUB_ACTIONS", "true")
    monkeypatch.setenv("RUNNER_TEMP", str(tmp_path))
    # 7e9 params x 2 bytes = 13.04 GiB of weights + 0.78 GiB context and workspace = 13.82 GiB; budget 15 GiB: 92.1 %
    path = write_pyproject('[tool.llmmem]\ngpu-memory = "15 GiB"\nmodel = { params = "7B" }\n\n'
                           '[[tool.llmmem.runs]]\nname = "serve"\nmode = "inference"\n')
    _, out, _ = run_cli("check", path)
    warning = next(line for line in out.splitlines() if line.startswith("::warning "))
    assert "::serve uses 92.1 %25 of its 15.00 GiB budget (13.82 GiB), and the estimate is partial" in warning
