"""Config resolution a user relies on: overrides, spellings, line numbers, budgets."""

import pytest

from pytest_llmmem.catalog.registry import default_catalog
from pytest_llmmem.config.load import load
from pytest_llmmem.errors import ConfigError
from pytest_llmmem.model.architecture import Architecture, ParamsOnly
from pytest_llmmem.units import GiB, MiB

BASE = """\
[tool.llmmem]
gpu = "A100-80GB"
headroom = "10%"

[tool.llmmem.model]
hidden-size = 4096
num-layers = 32
num-heads = 32
intermediate-size = 11008
vocab-size = 32000
"""


def test_run_overrides_budget_and_model(write_pyproject):
    path = write_pyproject(BASE + """
[[tool.llmmem.runs]]
name = "default"

[[tool.llmmem.runs]]
name = "own-budget"
gpu-memory = "40 GiB"
headroom = "2 GiB"

[[tool.llmmem.runs]]
name = "bigger-vocab"
model = { vocab-size = 128256 }

[[tool.llmmem.runs]]
name = "other-model"
model = { params = "13B" }
""")
    runs = {r.name: r for r in load(path).runs}
    # 80 GiB less 10 %: 81920 MiB * 0.9 = 73728 MiB
    assert runs["default"].budget.bytes == 73728 * MiB
    assert runs["default"].budget.gpu == "A100-80GB"
    assert runs["own-budget"].budget.bytes == 38 * GiB  # run-level gpu-memory and headroom win
    assert runs["own-budget"].budget.gpu is None
    assert isinstance(runs["bigger-vocab"].model, Architecture)
    assert runs["bigger-vocab"].model.vocab_size == 128256 and runs["bigger-vocab"].model.hidden_size == 4096  # merged
    assert runs["other-model"].model == ParamsOnly(13 * 10**9, str(path))  # params replaces the project's model


def test_snake_case_keys_and_defaults(write_pyproject):
    path = write_pyproject(BASE + """
[[tool.llmmem.runs]]
name = "snake"
batch_size = 4
gradient_checkpointing = true
""")
    run = load(path).runs[0]
    assert (run.batch_size, run.gradient_checkpointing) == (4, True)
    assert (run.mode, run.dtype.name, run.precision, run.optimizer.name, run.flash_attention) == ("train", "bf16", "mixed", "adamw", True)
    assert run.seq_len_given is False  # the estimate says it assumed 2048


def test_inline_runs_get_their_line(write_pyproject):
    path = write_pyproject("""\
[tool.llmmem]
gpu = "A100-80GB"
model = { params = "7B" }
runs = [
  { name = "a", mode = "inference" },
  { name = "b", mode = "inference", batch-size = 0 },
]
""")
    with pytest.raises(ConfigError) as info:
        load(path)
    assert info.value.line == 6  # the line naming run "b"
    assert info.value.key == "tool.llmmem.runs[1].batch-size"


@pytest.fixture
def offline(tmp_path, monkeypatch):
    """An empty Hub cache (downloading is off by default), so an unknown id is an error."""
    (tmp_path / "hub").mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))


@pytest.mark.parametrize("model_lines, line", [
    ('model.id = "acme/unknown-7B"', 8),  # a dotted key: its own line
    ('[tool.llmmem.runs.model]\nid = "acme/unknown-7B"', 9),  # the second run's model sub-table: the id line
    ('model = { id = "acme/unknown-7B" }', 8),  # an inline table: the line of "model"
])
def test_a_run_model_error_points_at_the_line_of_the_key(write_pyproject, offline, model_lines, line):
    # Lines 1-5 hold the project and a first run; the second run's header is line 6, its name line 7.
    path = write_pyproject(f"""\
[tool.llmmem]
gpu = "A100-80GB"
[[tool.llmmem.runs]]
name = "a"
model = {{ params = "7B" }}
[[tool.llmmem.runs]]
name = "b"
{model_lines}
""")
    with pytest.raises(ConfigError) as info:
        load(path)
    assert (info.value.key, info.value.line) == ("tool.llmmem.runs[1].model.id", line)


def test_a_dotted_project_model_key_gets_its_line(write_pyproject, offline):
    path = write_pyproject('[tool.llmmem]\ngpu = "A100-80GB"\nmodel.id = "acme/unknown-7B"\n[[tool.llmmem.runs]]\nname = "a"\n')
    with pytest.raises(ConfigError) as info:
        load(path)
    assert (info.value.key, info.value.line) == ("tool.llmmem.model.id", 3)


@pytest.mark.parametrize("spelling", ["A100-80GB", "a100 80gb", "A100_80GB", "NVIDIA A100-SXM4-80GB", "a100-pcie-80gb"])
def test_gpu_spellings(spelling):
    assert default_catalog().gpu(spelling).memory_bytes == 80 * GiB


def test_with_overrides_is_checked_like_the_file(write_pyproject):
    project = load(write_pyproject(BASE + '\n[[tool.llmmem.runs]]\nname = "sft"\nbatch-size = 1\n'))
    assert project.with_overrides("sft", batch_size=8).batch_size == 8
    with pytest.raises(ConfigError, match='Did you mean "batch-size"'):
        project.with_overrides("sft", batch_szie=8)
