"""Prefix tuning and p-tuning (model/prompts.py): the figures by hand, what PEFT refuses, what is not modelled.
The conformance with PEFT's own step is tests/test_adapter_conformance.py (cases prefix-tuning*, p-tuning*)."""

import json
import textwrap

import pytest

from pytest_llmmem.config.adapter_keys import NOT_MODELLED_METHODS
from pytest_llmmem.config.load import adhoc_run, parse
from pytest_llmmem.core.terms.activations import layer_saved
from pytest_llmmem.core.terms.trainable import Trainable
from pytest_llmmem.errors import ConfigError
from pytest_llmmem.estimator import estimate
from pytest_llmmem.model.prompts import PromptEncoder, p_tuning_params, prefix_params

from .test_adapters import PYPROJECT
from .test_conformance import DATA as FAMILIES, cut_config


def _run(extra: str, mode: str):
    return parse(textwrap.dedent(PYPROJECT.format(mode=mode)) + extra).runs[0]


def test_prefix_tuning_adds_its_keys_and_values_to_every_attention():
    """By hand (hidden 64, 4 heads of 16, 2 layers, batch 2 x seq 32, bf16, 8 virtual tokens): PEFT trains the keys and
    values themselves, 8 x 2 layers x 2 x 64 = 2048 parameters. The sequence keeps its 32 positions (logits 2 x 32 x 1000
    bf16). Each attention reads 32 + 8 keys under a (2, 1, 32, 40) mask: layer 1 keeps 8 more positions of K and V than
    without a prefix, 2 x 2 x 8 x 64 x 2 B = 4096, and the bf16 mask, 2 x 32 x 40 x 2 = 5120. Layer 0's input needs no
    gradient, so it keeps only the kernel's: q 2 x 32 x 64 x 2 = 8192, K and V 2 x 2 x 40 x 64 x 2 = 20480, the output
    8192, the fp32 log-sum-exp 2 x 4 x 32 x 4 = 1024, the mask 5120."""
    est = estimate(_run("num-virtual-tokens = 8\n", "prefix-tuning"))
    assert est.trainable_params == 8 * 2 * 2 * 64 == 2048 and est.details["weights.adapters"] == 2048 * 4
    assert est.details["logits.logits"] == 2 * 32 * 1000 * 2
    assert est.details["activations.prompt_encoder"] == 8 * 8  # the expanded int64 indices: one row's storage
    arch, trainable = est.run.model, Trainable(full=False, kv_grad=True)
    kw = dict(batch=2, seq=32, act=2, flash=True, trainable=trainable)
    with_prefix, without = layer_saved(arch, prefix=8, **kw)["attention"], layer_saved(arch, **kw)["attention"]
    assert with_prefix - without == 4096 + 5120
    assert layer_saved(arch, prefix=8, input_requires_grad=False, **kw)["attention"] == 8192 + 20480 + 8192 + 1024 + 5120
    assert est.details["activations.attention"] == 8192 + 20480 + 8192 + 1024 + 5120 + with_prefix
    # Eager, layer 0: q @ K^T keeps q only (q needs no gradient, so no K: the trace, tests/test_trace.py), attn @ V keeps
    # V of 40 positions 2 x 40 x 64 x 2 = 10240, and llama's fp32 softmax its output and the bf16 copy, 2 x 4 x 32 x 40 x 6
    eager = dict(kw, flash=False)
    assert layer_saved(arch, prefix=8, input_requires_grad=False, **eager)["attention"] == 8192 + 10240 + 2 * 4 * 32 * 40 * 6
    assert "prefix tuning, 8 virtual tokens" in est.run.adapter.summary(8, ())


def test_prefix_projection_and_p_tuning_train_their_encoders(tmp_path):
    """PEFT's encoders, by hand. Prefix tuning with prefix-projection (hidden 64, 2 layers, kv width T = 64, E = 32):
    Embedding(8, 64) + Linear(64, 32) + Linear(32, 2 x 2 x 64) = 512 + 2080 + 8448 = 11040; it keeps, per batch row,
    the Linear's input and the tanh output in fp32: 2 x 8 x (64 + 32) x 4 = 6144, plus 64 B of indices. P-tuning's MLP at
    the default width (E = hidden = 64): Embedding(8, 64) + 3 Linear(64, 64) = 512 + 3 x 4160 = 12,992; it runs one row and
    keeps 8 x (64 + 2 x 64) x 4 = 6144 and the indices, and the model runs on 32 + 8 positions (logits 2 x 40 x 1000 bf16).
    P-tuning's LSTM, priced by parameters only: peft.get_peft_model of the llama case cut to 2 layers (hidden 4096), 20
    virtual tokens, encoder_hidden_size 1024, 2 layers, built 79,812,608 trainable parameters (benchmarks/measure_adapters.py
    --only p-tuning with encoder_reparameterization_type LSTM, run by hand)."""
    prefix = estimate(_run("num-virtual-tokens = 8\nprefix-projection = true\nencoder-hidden-size = 32\n", "prefix-tuning"))
    assert prefix.trainable_params == 512 + (64 * 32 + 32) + (32 * 256 + 256) == 11040
    assert prefix.details["activations.prompt_encoder"] == 2 * 8 * 96 * 4 + 64
    ptuning = estimate(_run("num-virtual-tokens = 8\n", "p-tuning"))
    assert ptuning.trainable_params == 512 + 3 * (64 * 64 + 64) == 12992
    assert ptuning.details["activations.prompt_encoder"] == 8 * 192 * 4 + 64
    assert ptuning.details["logits.logits"] == 2 * 40 * 1000 * 2
    family = json.loads((FAMILIES / "llama.json").read_text(encoding="utf-8"))
    (tmp_path / "config.json").write_text(json.dumps(cut_config(family)), encoding="utf-8")
    llama = adhoc_run({"config": str(tmp_path / "config.json"), "mode": "p-tuning", "num-virtual-tokens": 20}).model
    assert p_tuning_params(llama, 20, PromptEncoder(hidden=1024, kind="lstm")) == 79_812_608
    # the llama case's GQA: PEFT's token_dim is 8 kv heads x 128 = 1024, so 20 x 2 x 2 x 1024 (prefix-tuning.json: 81,920)
    assert prefix_params(llama, 20) == 81_920


def test_what_peft_refuses_or_the_estimate_does_not_model_is_an_error():
    with pytest.raises(ConfigError, match="gradient-checkpointing: PEFT's prefix tuning does not work with gradient checkpointing"):
        _run("num-virtual-tokens = 8\ngradient-checkpointing = true\n", "prefix-tuning")
    with pytest.raises(ConfigError, match="encoder-reparameterization-type: p-tuning's LSTM encoder is not modelled"):
        _run('num-virtual-tokens = 8\nencoder-reparameterization-type = "LSTM"\n', "p-tuning")
    with pytest.raises(ConfigError, match='encoder-reparameterization-type: "gru" is not valid'):
        _run('num-virtual-tokens = 8\nencoder-reparameterization-type = "gru"\n', "p-tuning")
    with pytest.raises(ConfigError, match='prefix-projection: only applies to mode = "prefix-tuning"'):
        _run("num-virtual-tokens = 8\nprefix-projection = true\n", "p-tuning")
    with pytest.raises(ConfigError, match="prefix tuning needs num-virtual-tokens"):
        _run("", "prefix-tuning")
    assert "prefix-tuning" not in NOT_MODELLED_METHODS and "p-tuning" not in NOT_MODELLED_METHODS


@pytest.mark.parametrize("model,why", [
    ("state-spaces/mamba-130m-hf", "MambaMixer|StateSpace layers that do not"),
    ("deepseek-ai/DeepSeek-V2-Lite", "LatentAttention layers that do not"),
    ("google/gemma-2-27b", "sliding-window, sink or soft-capped layers is not modelled"),
])
def test_prefix_tuning_is_refused_where_a_layer_has_no_plain_cache(model, why):
    with pytest.raises(ConfigError, match=f"mode: .*({why})"):
        parse(textwrap.dedent(f"""
            [tool.llmmem]
            gpu-memory = "80GiB"
            [[tool.llmmem.runs]]
            name = "prefix"
            model = "{model}"
            mode = "prefix-tuning"
            num-virtual-tokens = 8
            """))
