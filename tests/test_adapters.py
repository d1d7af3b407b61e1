"""Adapters as a kind: LoRA and QLoRA are two entries, and a plugin's adapter is a mode like theirs."""

import textwrap
import types

import pytest

from pytest_llmmem.catalog import Catalog
from pytest_llmmem.config.keys import ADAPTER_KEYS
from pytest_llmmem.config.load import parse
from pytest_llmmem.errors import ConfigError
from pytest_llmmem.estimator import estimate
from pytest_llmmem.hookspecs import hookimpl
from pytest_llmmem.model.adapters import BUILTIN, LORA, QLORA, lora_saved, lora_tensors
from pytest_llmmem.model.layers import Linear

# A toy method: LoRA whose A stays at its initialisation and is not trained (only B, d_out x r, gets a gradient).
# Its whole definition is this entry; nothing else in the package names it.
TOY = LORA._replace(name="toy-lora", doc="LoRA with A not trained", tensors=lambda lin, rank: (rank * lin.rank_scale * lin.d_out,))


def toy_plugin():
    plugin = types.SimpleNamespace()
    plugin.llmmem_register_adapters = hookimpl(lambda register: register(TOY))
    return plugin


PYPROJECT = """
[tool.llmmem]
gpu-memory = "80GiB"

[tool.llmmem.model]
hidden-size = 64
num-layers = 2
num-heads = 4
intermediate-size = 128
vocab-size = 1000

[[tool.llmmem.runs]]
name = "adapted"
mode = "{mode}"
batch-size = 2
seq-len = 32
"""


def _estimate(mode, catalog=None):
    (run,) = parse(textwrap.dedent(PYPROJECT.format(mode=mode)), catalog=catalog).runs
    return estimate(run)


def test_a_plugin_adapter_is_a_mode_and_only_its_entry_counts():
    catalog = Catalog(extra_plugins=[toy_plugin()])
    toy = _estimate("toy-lora", catalog)
    # llama's PEFT default targets are q_proj and v_proj (64 -> 64 here), rank 8, 2 layers:
    # the toy trains B only, 8 x 64 = 512 per linear, 2 x 2 x 512 = 2048; LoRA trains A and B, 8 x 128 per linear
    assert toy.run.adapter is TOY and toy.trainable_params == 2048
    assert _estimate("lora").trainable_params == 4 * 8 * 128 == 4096
    assert toy.details["weights.adapters"] == 2048 * toy.run.adapter_dtype.bytes
    # the built-in modes read the same with the plugin in the catalog
    assert _estimate("lora", catalog) == _estimate("lora")


def test_an_unknown_mode_lists_the_registered_adapters():
    with pytest.raises(ConfigError) as err:
        _estimate("toy-lora")
    assert 'mode: "toy-lora" is not valid' in str(err.value) and '"lora", "qlora"' in str(err.value)
    with pytest.raises(ConfigError) as err:
        _estimate("dora", Catalog(extra_plugins=[toy_plugin()]))
    assert "toy-lora" in str(err.value)


def test_an_adapter_key_names_the_modes_it_applies_to():
    text = textwrap.dedent(PYPROJECT.format(mode="train")) + "lora-rank = 16\n"
    with pytest.raises(ConfigError, match='lora-rank: only applies to mode = "lora" or "qlora"; run "adapted" has mode = "train"'):
        parse(text)


def test_lora_and_qlora_are_two_entries_that_differ_by_the_base():
    """QLoRA is LoRA over a 4-bit base, and reads the two keys of that base: which bitsandbytes, and kbit-prepare."""
    assert [a.name for a in BUILTIN] == ["lora", "qlora"]
    assert (LORA.quantized_base, LORA.default_dtype) == (False, "bf16") and (QLORA.quantized_base, QLORA.default_dtype) == (True, "nf4")
    assert QLORA.keys == LORA.keys + ("bitsandbytes-version", "kbit-prepare")
    assert QLORA._replace(name="lora", doc=LORA.doc, quantized_base=False, default_dtype="bf16", keys=LORA.keys) == LORA
    assert _estimate("qlora").run.dtype.name == "nf4"


def test_every_key_an_adapter_reads_is_in_the_key_contract():
    assert set().union(*(a.keys for a in BUILTIN)) == set(ADAPTER_KEYS)


def test_lora_counts_a_and_b_and_keeps_the_cast_input_and_the_rank_wide_hidden():
    gate_up = Linear("gate_up", "gate_up_proj", 64, 256, False, rank_scale=2)
    assert lora_tensors(gate_up, 8) == (16 * 64, 16 * 256)  # PEFT's fused gate_up adapter: rank 2r
    # bf16 activations, fp32 adapters: the fp32 copy of a 64-wide input (64 x 4 B) and lora_A's 8-wide fp32 output
    assert lora_saved(64, 8, 4, 2) == (False, 64 * 4 + 8 * 4, 0, 0)
    assert lora_saved(64, 8, 2, 2) == (True, 8 * 2, 0, 0)  # same dtype: the input itself is kept, no copy
    # lora-dropout > 0: the dropout's own output (64 x 2 B) replaces the input, and a 1-byte mask per element;
    # the output is the part modules sharing one dropout keep once
    assert lora_saved(64, 8, 2, 2, dropout=True) == (False, 64 * 2 + 8 * 2, 64, 64 * 2)


def test_the_docs_table_lists_every_built_in_adapter():
    from pathlib import Path

    table = (Path(__file__).parent.parent / "docs" / "adapters.md").read_text(encoding="utf-8").split("## The built-in adapters")[1]
    rows = [line.split("|")[1].strip().strip("`") for line in table.splitlines() if line.startswith("| `")]
    assert rows == [a.name for a in BUILTIN]


def test_the_head_and_the_embedding_are_targets_peft_adapts():
    """By hand (the PYPROJECT model: hidden 64, vocab 1000, 2 layers, q/v 64 -> 64, rank 8): q_proj and v_proj add
    2 x 2 x 8 x 128 = 4096; lm_head adds A (8 x 64) and B (1000 x 8) = 8512; embed_tokens lora_embedding_A
    (8 x 1000) and B (64 x 8) = 8512 too. "all-linear" with lm_head adds the head to every layer linear."""
    def run(targets):
        text = textwrap.dedent(PYPROJECT.format(mode="lora")) + f"lora-targets = {targets}\n"
        return estimate(parse(text).runs[0])

    assert run('["q_proj", "v_proj", "lm_head"]').trainable_params == 4096 + 8512
    assert run('["q_proj", "v_proj", "embed_tokens"]').trainable_params == 4096 + 8512
    assert run('["all-linear", "lm_head"]').trainable_params == run('"all-linear"').trainable_params + 8512
    with pytest.raises(ConfigError, match='"lm_haed" is not a linear layer'):
        run('["lm_haed"]')


def test_modules_to_save_trains_a_full_copy_in_the_model_dtype():
    """By hand (hidden 64, vocab 1000, bf16): lm_head and embed_tokens copies are 2 x 64 x 1000 = 128,000 trainable
    parameters beside q/v's 4096, each copy's weights, gradients and two AdamW states 2 bytes a parameter."""
    text = textwrap.dedent(PYPROJECT.format(mode="lora")) + 'modules-to-save = ["lm_head", "embed_tokens"]\n'
    est = estimate(parse(text).runs[0])
    assert est.trainable_params == 4096 + 128_000
    assert est.details["weights.modules_to_save"] == 128_000 * 2
    with pytest.raises(ConfigError, match="modules-to-save"):
        parse(textwrap.dedent(PYPROJECT.format(mode="lora")) + 'modules-to-save = ["q_proj"]\n')


def test_litgpt_keeps_one_dropout_output_and_mask_for_q_k_and_v():
    """litgpt's fused qkv adapter applies one dropout to the shared input (litgpt/lora.py:405), PEFT one per module.
    By hand (the PYPROJECT model: hidden 64, 2 layers, 2 x 32 tokens, bf16, rank 8, adapters bf16 as litgpt trains
    them): adding k and v to q adds per layer and token only their two rank-8 lora_A outputs under litgpt,
    2 x 8 x 2 B = 32 B, over 64 tokens and 2 layers 4096 B; under PEFT each also keeps its own dropout output
    (64 x 2 B) and, past layer 0, a 1-byte mask (64 B): 4096 + 2 modules x 2 layers x 64 tokens x 128 B
    + 2 modules x 64 tokens x 64 B = 4096 + 32,768 + 8192 = 45,056 B."""
    def saved(framework, targets):
        text = textwrap.dedent(PYPROJECT.format(mode="lora")) + (
            f'lora-targets = {targets}\nlora-dropout = 0.05\nadapter-dtype = "bf16"\nframework = "{framework}"\n')
        return estimate(parse(text).runs[0]).breakdown["activations"]

    assert saved("litgpt", '["q_proj", "k_proj", "v_proj"]') - saved("litgpt", '["q_proj"]') == 4096
    assert saved("transformers", '["q_proj", "k_proj", "v_proj"]') - saved("transformers", '["q_proj"]') == 45_056
