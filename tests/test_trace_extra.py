"""method = "trace" without the measure extra: a one-paragraph error naming it, exit 2 (no torch needed)."""

import importlib.util

# A two-layer LLaMA the trace builds in a second; a LoRA run, so the trace needs peft as well.
TINY_PYPROJECT = """
[tool.llmmem]
gpu-memory = "{budget}"
method = "{method}"
[tool.llmmem.model]
family = "llama"
hidden-size = 256
num-layers = 2
num-heads = 4
intermediate-size = 512
vocab-size = 1024
[[tool.llmmem.runs]]
name = "tiny"
mode = "lora"
dtype = "bf16"
seq-len = 64
"""


def test_trace_without_torch_names_the_extra(run_cli, write_pyproject, monkeypatch):
    # All three are hidden, so the message is the same with or without the measure extra installed (CI's light run has none).
    path = write_pyproject(TINY_PYPROJECT.format(budget="80 GiB", method="trace"))
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name in ("torch", "transformers", "peft") else real(name, *a))
    code, out, err = run_cli("check", path)
    assert code == 2 and out == ""
    assert 'run "tiny": method = "trace" runs the model on fake tensors and needs torch and transformers and peft' in err
    assert "(torch, transformers, peft not installed)" in err and "pip install 'pytest-llmmem[measure]'" in err
    assert "Traceback" not in err and err.count("\n") == 1  # one paragraph


def test_an_unknown_method_names_the_valid_ones(run_cli, write_pyproject):
    path = write_pyproject(TINY_PYPROJECT.format(budget="80 GiB", method="traced"))
    code, _, err = run_cli("check", path)
    assert code == 2 and '"trace"' in err and "did you mean" in err.lower()


def test_checks_method_flag_offers_every_method():
    from pytest_llmmem.core.run import METHODS
    from pytest_llmmem.frontends.cli import CHECK_METHODS

    assert CHECK_METHODS == METHODS
