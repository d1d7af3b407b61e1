"""Issue 23: an error caused by a value in a JSON file (the DeepSpeed config a trainer config follows, a
trainer's arguments file, a model's config.json) names that file and line, as an error in a trainer YAML
does; before, it named the file alone (or the pyproject line that pointed at it)."""

import json

import pytest

from pytest_llmmem.io.json_lines import key_lines, line_of

PYPROJECT = '[tool.llmmem]\ngpu = "H100-80GB"\n[[tool.llmmem.runs]]\nname = "sft"\nfrom = "configs/{name}"\n'
AXOLOTL = "base_model: meta-llama/Meta-Llama-3-8B\nadapter: lora\nlora_r: 16\nsequence_len: 2048\nmicro_batch_size: 1\n"


@pytest.fixture
def project(tmp_path, monkeypatch):
    """A repository with configs/ and no Hub cache; the CLI runs from its root, so paths show relative."""
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "no-cache"))
    (tmp_path / ".git").mkdir()
    (tmp_path / "configs").mkdir()
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _check(run_cli, project, name: str) -> str:
    (project / "pyproject.toml").write_text(PYPROJECT.format(name=name))
    code, out, err = run_cli("check", "pyproject.toml")
    assert code == 2, out
    return err


def test_a_deepspeed_value_names_the_json_file_and_its_line(project, run_cli):
    (project / "configs" / "train.yaml").write_text(AXOLOTL + "deepspeed: ds.json\n")
    # "stage" is written on line 4 of ds.json
    (project / "configs" / "ds.json").write_text('{\n  "train_micro_batch_size_per_gpu": 2,\n  "zero_optimization": {\n'
                                                 '    "stage": 7\n  }\n}\n')
    err = _check(run_cli, project, "train.yaml")
    assert err == "llmmem: error: configs/ds.json:4: zero_optimization.stage: 7 is out of range; expected 0 to 3.\n"
    (project / "configs" / "ds.json").write_text('{\n  "zero_optimization": {"stage": 2},\n  "train_micro_batch_size_per_gpu": 0\n}\n')
    err = _check(run_cli, project, "train.yaml")
    assert err == "llmmem: error: configs/ds.json:3: train_micro_batch_size_per_gpu: 0 is out of range; expected 1 to 1,000,000.\n"


def test_an_inline_deepspeed_table_names_the_yaml_line_of_its_section(project, run_cli):
    # the YAML's key lines go two levels down: deepspeed.zero_optimization is on line 7
    (project / "configs" / "train.yaml").write_text(AXOLOTL + "deepspeed:\n  zero_optimization:\n    stage: 9\n")
    err = _check(run_cli, project, "train.yaml")
    assert err == "llmmem: error: configs/train.yaml:7: zero_optimization.stage: 9 is out of range; expected 0 to 3.\n"


def test_a_json_trainer_config_names_the_line_of_the_value(project, run_cli):
    args = {"model_name_or_path": "meta-llama/Meta-Llama-3-8B", "output_dir": "out", "per_device_train_batch_size": 0, "use_peft": True}
    (project / "configs" / "args.json").write_text(json.dumps(args, indent=2))  # one key a line: the batch on line 4
    err = _check(run_cli, project, "args.json")
    assert err == "llmmem: error: configs/args.json:4: per_device_train_batch_size: 0 is out of range; expected 1 to 1,000,000.\n"
    args = {"model_name_or_path": "meta-llama/Meta-Llama-3-8B", "output_dir": "out", "per_device_train_batch_sise": 2}
    (project / "configs" / "args.json").write_text(json.dumps(args, indent=2))
    err = _check(run_cli, project, "args.json")
    assert err.startswith('llmmem: error: configs/args.json:4: per_device_train_batch_sise: unknown trl key "per_device_train_batch_sise". '
                          'Did you mean "per_device_train_batch_size"?'), err


def test_a_model_config_json_value_names_that_file_and_line(project, run_cli):
    (project / "models" / "tiny").mkdir(parents=True)
    config = {"model_type": "llama", "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": -3,
              "num_attention_heads": 32, "vocab_size": 128256}
    (project / "models" / "tiny" / "config.json").write_text(json.dumps(config, indent=2))  # num_hidden_layers on line 5
    (project / "pyproject.toml").write_text('[tool.llmmem]\ngpu = "H100-80GB"\nmodel = {config = "models/tiny"}\n'
                                            '[[tool.llmmem.runs]]\nname = "a"\nmode = "lora"\n')
    code, out, err = run_cli("check", "pyproject.toml")
    assert code == 2, out
    assert err == "llmmem: error: models/tiny/config.json:5: num_hidden_layers: -3 is out of range; expected 1 to 10,000.\n"
    # a value the pyproject overrides is the pyproject's: its line, as before
    (project / "pyproject.toml").write_text('[tool.llmmem]\ngpu = "H100-80GB"\nmodel = {config = "models/tiny", num_hidden_layers = 0}\n'
                                            '[[tool.llmmem.runs]]\nname = "a"\nmode = "lora"\n')
    code, out, err = run_cli("check", "pyproject.toml")
    assert code == 2 and err.startswith("llmmem: error: pyproject.toml:3: "), err


def test_key_lines_reads_nested_keys_and_skips_arrays():
    text = ('{\n  "a": 1,\n  "b": {\n    "c": {"d": [{"e": 1}]},\n    "f\\"g": "x:y"\n  },\n'
            '  "list": [{"h": 2}],\n  "a": 3\n}\n')
    lines = key_lines(text)
    # a on line 2 (the repeated a on line 8 is not taken), b on 3, b.c and b.c.d on 4, the escaped key on 5
    assert lines == {"a": 2, "b": 3, "b.c": 4, "b.c.d": 4, 'b.f"g': 5, "list": 7}
    assert line_of("b.c.zzz", lines) == 4 and line_of("nowhere", lines) is None
