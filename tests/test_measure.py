"""llmmem measure on the CPU with tiny real models; skipped cleanly where torch is not installed."""

import textwrap

import pytest

from pytest_llmmem.config.load import adhoc_run, load
from pytest_llmmem.errors import ConfigError
from pytest_llmmem.estimator import estimate

TINY = {"family": "llama", "hidden-size": 128, "num-layers": 3, "num-heads": 4, "num-kv-heads": 2,
        "intermediate-size": 344, "vocab-size": 512}


def test_measure_rejects_what_it_cannot_run():
    from pytest_llmmem.frontends.measure import measure

    with pytest.raises(ConfigError, match="needs the architecture"):
        measure(adhoc_run({"params": "7B", "mode": "inference"}))
    with pytest.raises(ConfigError, match="lora needs peft"):
        measure(adhoc_run({**TINY, "mode": "lora"}))
    with pytest.raises(ConfigError, match='"lion" is not one'):
        measure(adhoc_run({**TINY, "optimizer": "lion"}))


def test_calibration_is_applied_and_reported():
    plain = estimate(adhoc_run({"params": "1B", "mode": "inference", "gpu": "L4"}))
    calibrated = estimate(adhoc_run({"params": "1B", "mode": "inference", "gpu": "L4", "calibration": 1.1}))
    assert calibrated.breakdown["calibration"] == round(0.1 * plain.total_bytes)
    assert "calibrated: x 1.1 from llmmem measure" in calibrated.notes
    with pytest.raises(ConfigError, match="expected a factor from 0.5 to 2.0"):
        adhoc_run({"params": "1B", "calibration": 7})


@pytest.fixture
def torch_available():
    pytest.importorskip("torch")
    pytest.importorskip("transformers")


@pytest.mark.parametrize("extra", [
    {"mode": "train", "dtype": "fp32", "optimizer": "adamw", "batch-size": 2, "seq-len": 32},
    {"mode": "train", "dtype": "bf16", "optimizer": "sgd-momentum", "seq-len": 64, "gradient-checkpointing": True},
    # Eager attention with grouped-query heads: K and V are repeated to every head before the matmuls.
    {"mode": "train", "dtype": "fp32", "optimizer": "adam", "seq-len": 32, "flash-attention": False},
    {"mode": "train", "dtype": "bf16", "optimizer": "adam", "seq-len": 32, "flash-attention": False},
    # Eager and checkpointed: each checkpointed layer holds the forward's float attention mask (a keyword input).
    {"mode": "train", "dtype": "bf16", "optimizer": "adamw", "seq-len": 64, "flash-attention": False, "gradient-checkpointing": True},
    {"mode": "inference", "dtype": "bf16", "batch-size": 2, "seq-len": 64},  # generation: last position's logits
    {"mode": "inference", "dtype": "bf16", "batch-size": 2, "seq-len": 64, "logits": "all"},  # a scoring forward
])
def test_cpu_measurement_matches_the_estimate(torch_available, extra):
    from pytest_llmmem.frontends.measure import measure

    result = measure(adhoc_run({**TINY, **extra}), device="cpu", max_layers=2)
    assert result.shrunk_from == 3 and result.run.model.num_layers == 2
    for term in ("weights", "gradients", "optimizer_states", "kv_cache", "logits"):
        if term in result.terms:
            assert result.terms[term] == result.estimated[term], term  # exact: shapes and dtypes only
    if "saved activations" in result.terms:
        # Every saved tensor is modelled; what is left are a few scalars (the loss, the label count).
        assert abs(result.terms["saved activations"] - result.estimated["saved activations"]) < 64
    assert abs(result.ratio - 1) < 0.001


def test_measure_write_stores_the_calibration(torch_available, tmp_path, run_cli):
    path = tmp_path / "pyproject.toml"
    path.write_text(textwrap.dedent("""\
        [tool.llmmem]
        gpu = "L4"

        [tool.llmmem.model]
        hidden-size = 128
        num-layers = 2
        num-heads = 4
        intermediate-size = 344
        vocab-size = 512

        [[tool.llmmem.runs]]
        name = "sft"
        dtype = "fp32"
        seq-len = 32

        [[tool.llmmem.runs]]
        name = "serve"
        mode = "inference"
        """))
    code, out, err = run_cli("measure", path, "--run", "sft", "--device", "cpu", "--write")
    assert code == 0, err
    assert 'llmmem measure: run "sft" on cpu' in out and "wrote calibration = " in out
    run = load(path).run("sft")
    assert run.calibration is not None and abs(run.calibration - 1) < 0.03
    assert path.read_text().count("calibration = ") == 1
    run_cli("measure", path, "--run", "sft", "--device", "cpu", "--write")  # a second write replaces the line
    assert path.read_text().count("calibration = ") == 1
    assert load(path).run("serve").calibration is None


def test_measured_steps_run_with_the_collector_on(tmp_path, run_cli, monkeypatch):
    """The CLI pauses the cyclic collector for a check; a measured step's autograd graphs and hooks are
    cycles, so `llmmem measure` turns it back on (and leaves it as it found it afterwards)."""
    import gc

    from pytest_llmmem.frontends import measure as measure_module

    seen = []
    monkeypatch.setattr(measure_module, "measure", lambda run, **_: seen.append(gc.isenabled()) or run.name)
    monkeypatch.setattr(measure_module, "render", lambda name: f"measured {name}")
    path = tmp_path / "pyproject.toml"
    path.write_text('[tool.llmmem]\ngpu = "L4"\n[tool.llmmem.model]\nparams = "1B"\n'
                    '[[tool.llmmem.runs]]\nname = "a"\n[[tool.llmmem.runs]]\nname = "b"\n', encoding="utf-8")
    code, out, _ = run_cli("measure", path)
    assert code == 0 and out.splitlines() == ["measured a", "measured b"]
    assert seen == [True, True]
    assert gc.isenabled()
