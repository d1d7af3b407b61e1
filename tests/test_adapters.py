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
from pytest_llmmem.core.records import SLACK_UNCHECKPOINTED
from pytest_llmmem.model.methods import BUILTIN
from pytest_llmmem.model.adapters import (LORA, QLORA, Saved, dora_forward_transient, dora_saved, dora_tensors, ia3_saved_on,
                                          lora_autocast_saved, lora_saved, module_kept, lora_tensors, qdora_forward_transient, qdora_saved, vera_saved,
                                          with_qdora)
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
    with pytest.raises(ConfigError, match='lora-rank: only applies to mode = "lora" or "qlora" or "vera" or "loha" or "lokr"; run "adapted" has mode = "train"'):
        parse(text)


def test_lora_and_qlora_are_two_entries_that_differ_by_the_base():
    """QLoRA is LoRA over a 4-bit base, and reads the keys of that base: which bitsandbytes, kbit-prepare, its compute dtype and a GPTQ group size."""
    assert [a.name for a in BUILTIN][:2] == ["lora", "qlora"]
    assert (LORA.quantized_base, LORA.default_dtype) == (False, "bf16") and (QLORA.quantized_base, QLORA.default_dtype) == (True, "nf4")
    # and QLoRA's DoRA is QDoRA: DoRA's entry with the 4-bit weight dequantised for its norm (tests/data/adapters/qdora*.json)
    assert "use-dora" in LORA.keys and "use-dora" in QLORA.keys and QLORA.dora is with_qdora
    assert QLORA.keys == LORA.keys + ("bitsandbytes-version", "kbit-prepare", "compute-dtype", "gptq-group-size")
    assert QLORA._replace(name="lora", doc=LORA.doc, quantized_base=False, default_dtype="bf16", keys=LORA.keys, dora=LORA.dora) == LORA
    assert _estimate("qlora").run.dtype.name == "nf4"


def test_every_key_an_adapter_reads_is_in_the_key_contract():
    assert set().union(*(a.keys for a in BUILTIN)) == set(ADAPTER_KEYS)


def test_lora_counts_a_and_b_and_keeps_the_cast_input_and_the_rank_wide_hidden():
    gate_up = Linear("gate_up", "gate_up_proj", 64, 256, False, rank_scale=2)
    assert lora_tensors(gate_up, 8) == (16 * 64, 16 * 256)  # PEFT's fused gate_up adapter: rank 2r
    # bf16 activations, fp32 adapters: the fp32 copy of a 64-wide input (64 x 4 B) and lora_A's 8-wide fp32 output
    assert lora_saved(64, 8, 4, 2)[:4] == (False, 64 * 4 + 8 * 4, 0, 0)
    assert lora_saved(64, 8, 2, 2)[:4] == (True, 8 * 2, 0, 0)  # same dtype: the input itself is kept, no copy
    # lora-dropout > 0: the dropout's own output (64 x 2 B) replaces the input, and a 1-byte mask per element;
    # the output is the part modules sharing one dropout keep once
    assert lora_saved(64, 8, 2, 2, dropout=True)[:4] == (False, 64 * 2 + 8 * 2, 64, 64 * 2)
    assert not any(lora_saved(64, 8, 4, 2, dropout=True)[4:])  # nothing that scales with the output or the weight


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


def _lora_run(extra: str, mode: str = "lora"):
    return parse(textwrap.dedent(PYPROJECT.format(mode=mode)) + extra).runs[0]


@pytest.mark.parametrize("dropout", ["lora-dropout = 0.1\n", ""], ids=["dropout", "no-dropout"])
def test_fp32_adapters_under_autocast_keep_16_bit_casts(dropout):
    """autocast = true (the HF Trainer's bf16 over a bf16 model): lora_A keeps its bf16 cast of PEFT's fp32 input or
    dropout output and lora_B lora_A's bf16 output, each module the bf16 casts of its two weights. By hand (the PYPROJECT
    model: q and v 64 -> 64, 2 layers, 2 x 32 tokens, rank 8, fp32 adapters): per module and token (64 + 8) x (4 - 2) B
    less, 2 modules x 2 layers x 64 tokens x 144 B = 36,864 B; lora_B's weight cast (64 x 8 x 2 B) in each of the 4
    modules, lora_A's (8 x 64 x 2 B) where the input needs a gradient (layer 1's 2 modules): 6 x 1024 B more. The
    dropout's mask is the same either way; without dropout lora_A's cast replaces PEFT's fp32 copy of the input."""
    plain, amp = estimate(_lora_run(dropout)), estimate(_lora_run(dropout + "autocast = true\n"))
    saved = lambda est: sum(v for k, v in est.details.items() if k.startswith("activations."))  # noqa: E731
    assert amp.run.autocast and not plain.run.autocast
    assert saved(plain) - saved(amp) == 36_864 - 6 * 1024 == 30_720
    # adapters in the model's dtype: autocast casts nothing, so nothing changes
    assert saved(estimate(_lora_run(dropout + 'adapter-dtype = "bf16"\nautocast = true\n'))) == \
        saved(estimate(_lora_run(dropout + 'adapter-dtype = "bf16"\n')))


def test_autocast_figure_is_the_measured_layer_difference():
    """benchmarks/measure_lora_autocast.py (h 256, q/o 256 -> 256, k/v 256 -> 128, r 16, dropout 0.1, 256 tokens, the
    layer's input needing a gradient) measured 66.594 B x h a token a layer without autocast and 58.969 with it: 7.625 B x h
    less. By the fields (the CPU keeps its dropout noise either way, so the masks cancel): 4 x (256 + 16) x 2 B x 256
    tokens less, 4 x 16 x 256 x 2 B (lora_A's weight casts) + 16 x 2 B x (256 + 128 + 128 + 256) (lora_B's) more."""
    outs, tokens, h = (256, 128, 128, 256), 256, 256
    kept = lambda fn: sum(module_kept(fn(h, 16, 4, 2, True), h, d_out, tokens, True) for d_out in outs)  # noqa: E731
    assert kept(lora_saved) - kept(lora_autocast_saved) == 4 * 272 * 2 * 256 - 4 * 16 * 256 * 2 - 16 * 2 * 768 == 499_712
    assert 499_712 / tokens / h == 7.625 == round(66.594 - 58.969, 3)


def test_autocast_with_a_method_it_does_not_price_is_approximate():
    """Only plain LoRA over a 16-bit base keeps its 16-bit casts by lora_autocast_saved; DoRA and QLoRA (PEFT's bnb layers
    skip the fp32 cast under autocast) are priced as without autocast, and the estimate says so."""
    lora = estimate(_lora_run("autocast = true\n"))
    dora, plain_dora = estimate(_lora_run("use-dora = true\nautocast = true\n")), estimate(_lora_run("use-dora = true\n"))
    assert not any("autocast" in a for a in lora.approximate)
    assert any("autocast = true with LoRA" in a for a in dora.approximate) and dora.total_bytes == plain_dora.total_bytes
    qlora = estimate(_lora_run("autocast = true\n", mode="qlora"))
    assert any("over a 4-bit base" in a for a in qlora.approximate)


def test_autocast_is_refused_over_fp32_weights():
    """fp32 weights under autocast is precision = "amp"; autocast = true names 16-bit weights."""
    with pytest.raises(ConfigError, match='autocast.*dtype is "fp32"'):
        _lora_run('dtype = "fp32"\nautocast = true\n')
    with pytest.raises(ConfigError, match="autocast: only applies to training"):
        parse(textwrap.dedent(PYPROJECT.format(mode="inference")) + "autocast = true\n")


def test_dora_adds_a_magnitude_per_output_and_keeps_both_outputs():
    """By hand (the PYPROJECT model: hidden 64, q/v 64 -> 64, 2 layers, rank 8, bf16, fp32 adapters): DoRA adds one
    magnitude per output feature, 2 x 2 x 64 = 256 beside LoRA's 4096. Each adapted module keeps, per token, the base
    output (64 x 2 B) and lora_B's output (64 x 4 B); per module the detached norm and m / norm (64 x 4 B each) and
    m / norm - 1 where the input needs a gradient (layer 1 only): 2 x 2 x 64 x 6 x 64 tokens + (2 x 2 x 2 + 2) x 64 x 4."""
    lora, dora = estimate(_lora_run("")), estimate(_lora_run("use-dora = true\n"))
    assert dora.trainable_params == lora.trainable_params + 256 == 4352
    assert dora_tensors(Linear("q", "q_proj", 64, 96, False), 8) == (8 * 64, 96 * 8, 96)
    assert dora_saved(64, 8, 4, 2)[:3] == lora_saved(64, 8, 4, 2)[:3]  # LoRA's own input cast and r-wide output
    saved = lambda est: sum(v for k, v in est.details.items() if k.startswith("activations."))  # noqa: E731
    assert saved(dora) - saved(lora) == 2 * 2 * 64 * 6 * 64 + (2 * 2 * 2 + 2) * 64 * 4
    assert dora.details["weights.adapters"] == 4352 * 4 and "DoRA r=8" in dora.run.adapter.summary(8, ("q_proj",))


def test_dora_with_dropout_keeps_the_weight_cast_to_the_adapter_dtype():
    """With dropout PEFT recomputes the base output from the dropped input (F.linear(x, W.to(fp32))), which keeps the
    fp32 copy of W where the input needs a gradient: layer 1's q and v, 2 x 64 x 64 x 4 B; the base output is fp32 then
    (2 B more per output feature per token); lora-dropout's own output and mask as LoRA's."""
    lora = estimate(_lora_run("lora-dropout = 0.1\n"))
    dora = estimate(_lora_run("lora-dropout = 0.1\nuse-dora = true\n"))
    saved = lambda est: sum(v for k, v in est.details.items() if k.startswith("activations."))  # noqa: E731
    assert saved(dora) - saved(lora) == 2 * 64 * 64 * 4 + 2 * 2 * 64 * 8 * 64 + (2 * 2 * 2 + 2) * 64 * 4


def test_dora_builds_its_weight_norm_in_the_forward():
    """dora.py get_weight_norm per module, fp32 adapters over bf16 (by hand, q 64 -> 64, r 8): the identity 64 x 64,
    lora_A's output 64 x 8, B A, W cast, s B A and W + s B A (64 x 64 each): 4 x (4096 + 512 + 4 x 4096) = 83,968 B.
    The forward phase holds it over the weights, the optimizer states and the saved activations, without gradients
    or loss buffers; the composer adds the step's 5 % slack (no checkpointing: records.SLACK_UNCHECKPOINTED) to what is
    transient and the fixed overhead."""
    est = estimate(_lora_run("use-dora = true\n"))
    d, phases = est.details, dict(est.phases)
    transient = d["forward.adapter_transient"]
    assert transient == dora_forward_transient(Linear("q", "q_proj", 64, 64, False), 8, 4, 2) == 83_968
    saved = sum(v for k, v in d.items() if k.startswith("activations."))
    fixed = d["overhead.cuda_context"] + d["overhead.cublas_workspace"]
    states = d["weights.adapters"] + est.run.model.param_count() * 2 + 4352 * 4 * 2  # bf16 base, fp32 adapters, two AdamW states
    assert abs(phases["adapter forward"] - (states + saved + transient + round(SLACK_UNCHECKPOINTED * (saved + transient)) + fixed)) <= 2
    assert "adapter forward" not in dict(estimate(_lora_run("")).phases)


def test_dora_is_refused_where_peft_or_the_model_cannot_say():
    with pytest.raises(ConfigError, match="use-dora: DoRA on embed_tokens"):
        _lora_run('use-dora = true\nlora-targets = ["q_proj", "embed_tokens"]\n')
    with pytest.raises(ConfigError, match='use-dora: only applies to mode = "lora" or "qlora"; run "adapted" has mode = "vera"'):
        _lora_run("use-dora = true\n", mode="vera")


def test_qdora_is_dora_over_the_dequantised_weight():
    """QDoRA (use-dora on qlora) dequantises W for its norm in every forward: a new 64 x 64 tensor where the adapter dtype
    is the compute dtype (bf16: 2 x (64^2 identity + 64 x 8 + 4 x 64^2) against DoRA's 3 x 64^2, whose W is the parameter);
    in fp32 both cast W (4 x (64^2 + 64 x 8 + 4 x 64^2)). With dropout F.linear keeps that W, fp32 or not; QDoRA's
    saved bytes otherwise are DoRA's (measured with fp32 adapters: tests/data/adapters/qdora.json, qdora-dropout.json)."""
    lin = Linear("q", "q_proj", 64, 64, False)
    assert qdora_forward_transient(lin, 8, 2, 2) == 2 * (64 * 64 + 64 * 8 + 4 * 64 * 64) == dora_forward_transient(lin, 8, 2, 2) + 2 * 64 * 64
    assert qdora_forward_transient(lin, 8, 4, 2) == 4 * (64 * 64 + 64 * 8 + 4 * 64 * 64) == dora_forward_transient(lin, 8, 4, 2)
    assert qdora_saved(64, 8, 2, 2, dropout=True).per_weight_grad == 2 and dora_saved(64, 8, 2, 2, dropout=True).per_weight_grad == 0
    assert qdora_saved(64, 8, 4, 2) == dora_saved(64, 8, 4, 2)
    run = _lora_run("use-dora = true\n", mode="qlora")
    assert run.adapter.forward_transient is qdora_forward_transient and "DoRA r=8" in run.adapter.summary(8, ("q_proj",))


def test_rslora_changes_no_figure_and_says_so():
    lora, rslora = estimate(_lora_run("")), estimate(_lora_run("use-rslora = true\n"))
    assert rslora.breakdown == lora.breakdown and rslora.trainable_params == lora.trainable_params
    assert any("use-rslora" in note and "the memory is LoRA's" in note for note in rslora.notes)


def test_peft_methods_not_modelled_are_refused_by_name_not_priced_as_lora():
    with pytest.raises(ConfigError, match=r'mode: "adalora" \(PEFT AdaLoraConfig: .*\) is not modelled yet'):
        _estimate("adalora")
    with pytest.raises(ConfigError, match=r'mode: "dora" is an option of LoRA .* Use mode = "lora" with use-dora = true'):
        _estimate("dora")


def test_vera_trains_two_vectors_per_module_over_shared_frozen_projections():
    """By hand (hidden 64, q/v 64 -> 64, 2 layers, VeRA's default r 256): lambda_d (256) and lambda_b (64) per module,
    4 x 320 = 1280 trained; vera_A 256 x 64 and vera_B 64 x 256 frozen, fp32: 2 x 16,384 x 4 B. Each module keeps
    F.linear(x, A) (256 x 4 B) and F.linear(.., B) (64 x 4 B) per token, 64 tokens, and not its input."""
    est = estimate(_lora_run("", mode="vera"))
    assert est.trainable_params == 4 * (256 + 64) == 1280
    assert est.details["weights.adapter_projections"] == 2 * 256 * 64 * 4
    assert vera_saved(64, 256, 4, 2) == Saved(False, 256 * 4, per_output=4)
    assert any("assumed 256 (PEFT's VeraConfig default r)" in n for n in est.notes)
    with pytest.raises(ConfigError, match="lora-targets: VeRA does not adapt"):
        _lora_run('lora-targets = ["q_proj", "lm_head"]\n', mode="vera")
    with pytest.raises(ConfigError, match='lora-dropout: only applies to mode = "lora" or "qlora"'):
        _lora_run("lora-dropout = 0.1\n", mode="vera")


def test_ia3_scales_the_outputs_and_the_down_projection_input():
    """By hand (hidden 64, ffn 128, llama: PEFT's IA3 defaults k_proj, v_proj, down_proj; down_proj feedforward):
    2 layers x (64 + 64 + 128) = 512 trained; k and v keep their bf16 base output (64 x 2 B per token), down_proj
    its fp32 input cast (128 x 4 B), plus each vector's copy where the input needs a gradient."""
    est = estimate(_lora_run("", mode="ia3"))
    assert est.trainable_params == 2 * (64 + 64 + 128) == 512
    down, k = Linear("down", "down_proj", 128, 64, False), Linear("k", "k_proj", 64, 64, False)
    assert ia3_saved_on(down, 0, 4, 2) == Saved(False, 128 * 4, fixed_grad=128 * 4)
    assert ia3_saved_on(down, 0, 2, 2).keeps_input  # same dtype: the input itself
    assert ia3_saved_on(k, 0, 4, 2) == Saved(False, 0, per_output=2, per_output_fixed_grad=4)
    assert "IA3 on k_proj, v_proj, down_proj" in est.run.adapter.summary(0, est.run.lora_targets)
    assert not any("lora-rank" in n for n in est.notes)
    with pytest.raises(ConfigError, match='lora-rank: only applies to mode = "lora" or "qlora" or "vera"'):
        _lora_run("lora-rank = 4\n", mode="ia3")


def test_prompt_tuning_lengthens_every_sequence_by_its_virtual_tokens():
    """By hand (hidden 64, vocab 1000, batch 2 x seq 32, 8 virtual tokens): 8 x 64 = 512 trained embeddings; the frozen
    model runs on 40 positions, so the logits are 2 x 40 x 1000 bf16; its first layer's input (the prompt) needs a
    gradient, so layer 0 keeps what layer 1 keeps: the two layers alike."""
    est = estimate(_lora_run("num-virtual-tokens = 8\n", mode="prompt-tuning"))
    assert est.trainable_params == 8 * 64 == 512
    assert est.details["logits.logits"] == 2 * 40 * 1000 * 2
    assert est.details["weights.adapters"] == 512 * 4 and "prompt tuning, 8 virtual tokens" in est.run.adapter.summary(8, ())
    from pytest_llmmem.core.terms.activations import layer_saved
    from pytest_llmmem.core.terms.trainable import Trainable

    arch = est.run.model
    per_layer = sum(layer_saved(arch, batch=2, seq=40, act=2, flash=True, trainable=Trainable(full=False)).values())
    assert est.details["activations.attention"] + est.details["activations.mlp"] == 2 * per_layer
    with pytest.raises(ConfigError, match="prompt tuning needs num-virtual-tokens"):
        _lora_run("", mode="prompt-tuning")
    with pytest.raises(ConfigError, match='num-virtual-tokens: only applies to mode = "prompt-tuning"'):
        _lora_run("num-virtual-tokens = 8\n")
