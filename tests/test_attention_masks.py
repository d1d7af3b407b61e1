"""The (batch, 1, seq, seq) attention masks transformers 5.24 builds: where the estimate counts them.

Each figure is computed by hand from the shapes (see pytest_llmmem/core/terms/attention_masks.py for the sources
and the CPU measurement behind each rule). They are quadratic in the sequence: at long context they
are gigabytes.
"""

import json

import pytest

from pytest_llmmem.core.terms.attention_masks import model_masks, sdpa_layer_mask
from pytest_llmmem.config.load import adhoc_run
from pytest_llmmem.estimator import estimate

# A Mistral-7B shape with as many K/V heads as query heads, so that a sliding window changes nothing
# but the mask (with fewer K/V heads transformers also repeats K and V once a mask is passed).
MISTRAL_MHA = {"model_type": "mistral", "architectures": ["MistralForCausalLM"], "hidden_size": 4096, "num_hidden_layers": 32,
               "num_attention_heads": 32, "num_key_value_heads": 32, "intermediate_size": 14336, "vocab_size": 32000,
               "max_position_embeddings": 32768, "tie_word_embeddings": False}


def _write(tmp_path, config):
    path = tmp_path / f"config-{len(list(tmp_path.iterdir()))}.json"
    path.write_text(json.dumps(config), encoding="utf-8")
    return path


def _run(tmp_path, config, **keys):
    return estimate(adhoc_run({"config": str(_write(tmp_path, config)), "gpu": "H100-80GB", **keys}))


@pytest.mark.parametrize("tp", [1, 2])
def test_sdpa_keeps_a_sliding_layers_mask_for_backward(tmp_path, tp):
    # Window 4096 < 8192 tokens: every layer gets a bool mask, SDPA converts it to bf16 (b, 1, s, s) and keeps
    # it for backward: 32 layers x 1 x 8192 x 8192 x 2 B = 4 GiB more than the same model without a window,
    # whole on every tensor-parallel rank (the mask has no head dimension to split).
    keys = dict(mode="train", dtype="bf16", **{"batch-size": 1, "seq-len": 8192, "tensor-parallel": tp, "gpus": tp})
    windowed = _run(tmp_path, {**MISTRAL_MHA, "sliding_window": 4096}, **keys)
    full = _run(tmp_path, {**MISTRAL_MHA, "sliding_window": None}, **keys)
    assert windowed.full("activations") - full.full("activations") == 32 * 8192 * 8192 * 2 == 4 * 2**30


def test_no_mask_below_the_window(tmp_path):
    # 4096 tokens under a 4096 window still need one (masking_utils.py:286 kv_length >= window); 4095 do not.
    # Every saved activation (Estimate.full): the optimizer step, not the backward, may set the peak.
    keys = dict(mode="train", dtype="bf16", **{"batch-size": 1})
    assert _run(tmp_path, {**MISTRAL_MHA, "sliding_window": 4096}, **keys, **{"seq-len": 4095}).full("activations") == \
        _run(tmp_path, {**MISTRAL_MHA, "sliding_window": None}, **keys, **{"seq-len": 4095}).full("activations")
    assert _run(tmp_path, {**MISTRAL_MHA, "sliding_window": 4096}, **keys, **{"seq-len": 4096}).full("activations") - \
        _run(tmp_path, {**MISTRAL_MHA, "sliding_window": None}, **keys, **{"seq-len": 4096}).full("activations") == 32 * 4096 * 4096 * 2


def test_eager_prefill_holds_the_float_mask_beside_the_scores(tmp_path):
    # Eager attention, b = 1, s = 2048, bf16, h 1024, 8 heads (= K/V heads) x 128, MLP 4096, one layer at a time:
    # residual + norm output 2 x 2048 x 1024 x 2 = 8,388,608; attention q/k/v/out 2048 x 32 x 128 x 2 = 16,777,216
    # plus the bf16 scores, their fp32 copy and fp32 softmax 8 x 2048 x 2048 x 10 = 335,544,320 (above the MLP's
    # 50,331,648); and the forward's one float mask, 2048 x 2048 x 2 = 8,388,608 (masking_utils.py:617), alive
    # for every layer.
    small = {**MISTRAL_MHA, "hidden_size": 1024, "num_hidden_layers": 4, "num_attention_heads": 8, "num_key_value_heads": 8,
             "intermediate_size": 4096, "sliding_window": None}
    est = _run(tmp_path, small, mode="inference", dtype="bf16", **{"batch-size": 1, "seq-len": 2048, "flash-attention": False})
    assert est.full("activations") == 8_388_608 + 16_777_216 + 335_544_320 + 8_388_608


def test_checkpointed_layers_keep_the_forwards_mask(tmp_path):
    # With gradient checkpointing the mask is an input of every checkpointed layer and stays through backward:
    # eager, b = 2, s = 4096, bf16: one float mask 2 x 4096 x 4096 x 2 = 67,108,864 B.
    keys = dict(mode="train", dtype="bf16", **{"batch-size": 2, "seq-len": 4096, "gradient-checkpointing": True})
    eager = _run(tmp_path, {**MISTRAL_MHA, "sliding_window": None}, **keys, **{"flash-attention": False})
    assert eager.details["activations.attention_masks"] == 67_108_864
    # SDPA, full causal attention: no mask at all (is_causal); with a 1024 window: a bool one, 2 x 4096 x 4096 x 1 B
    assert "activations.attention_masks" not in _run(tmp_path, {**MISTRAL_MHA, "sliding_window": None}, **keys).details
    assert _run(tmp_path, {**MISTRAL_MHA, "sliding_window": 1024}, **keys).details["activations.attention_masks"] == 33_554_432


def test_eager_masks_per_attention_kind(tmp_path):
    # Gemma 2 (eager only) builds one float mask per kind, full and sliding: 2 x (1 x 512 x 512 x 2 B) = 1,048,576.
    config = {"model_type": "gemma2", "architectures": ["Gemma2ForCausalLM"], "hidden_size": 256, "num_hidden_layers": 2,
              "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 128, "intermediate_size": 512, "vocab_size": 1000,
              "sliding_window": 128, "max_position_embeddings": 8192}
    run = adhoc_run({"config": str(_write(tmp_path, config)), "mode": "inference", "dtype": "bf16", "batch-size": 1, "seq-len": 512})
    assert model_masks(run.model, batch=1, seq=512, act=2, flash=True) == 2 * 512 * 512 * 2
    # A LLaMA under SDPA without a window needs none; eager, one.
    llama = adhoc_run({"config": str(_write(tmp_path, {**MISTRAL_MHA, "model_type": "llama", "sliding_window": None})),
                       "mode": "inference", "dtype": "bf16"})
    assert model_masks(llama.model, batch=4, seq=1024, act=2, flash=True) == 0
    assert model_masks(llama.model, batch=4, seq=1024, act=2, flash=False) == 4 * 1024 * 1024 * 2
    group = llama.model.layer_groups()[0]
    assert sdpa_layer_mask(llama.model, group.attention, batch=4, seq=1024, act=2, flash=True) == 0


def test_flash_attention_2_builds_no_mask(tmp_path):
    # attn-implementation = "flash_attention_2": the window goes to the kernel (masking_utils.py:621-660 returns None),
    # so the SDPA run's 32 x 1 x 8192 x 8192 x 2 B = 4 GiB of kept additive masks vanish, and the windowed model under
    # FA2 keeps what the windowless one keeps under SDPA.
    keys = dict(mode="train", dtype="bf16", **{"batch-size": 1, "seq-len": 8192})
    windowed = {**MISTRAL_MHA, "sliding_window": 4096}
    sdpa = _run(tmp_path, windowed, **keys)
    fa2 = _run(tmp_path, windowed, **keys, **{"attn-implementation": "flash_attention_2"})
    assert sdpa.full("activations") - fa2.full("activations") == 32 * 8192 * 8192 * 2 == 4 * 2**30
    assert fa2.full("activations") == _run(tmp_path, {**MISTRAL_MHA, "sliding_window": None}, **keys).full("activations")
    # flash_attention_3 is the same mask function (masking_utils.py:725)
    assert _run(tmp_path, windowed, **keys, **{"attn-implementation": "flash_attention_3"}).full("activations") == fa2.full("activations")
    # checkpointed, window 1024, b 2, s 4096: SDPA's bool mask 2 x 4096 x 4096 x 1 B = 33,554,432 is kept; FA2 has none
    ckpt = dict(mode="train", dtype="bf16", **{"batch-size": 2, "seq-len": 4096, "gradient-checkpointing": True})
    narrow = {**MISTRAL_MHA, "sliding_window": 1024}
    assert _run(tmp_path, narrow, **ckpt).details["activations.attention_masks"] == 33_554_432
    assert "activations.attention_masks" not in _run(tmp_path, narrow, **ckpt, **{"attn-implementation": "flash_attention_2"}).details


def test_flash_attention_2_prefill_drops_the_masks(tmp_path):
    # Inference prefill, b 1, s 2048, window 1024, bf16, h 1024, 8 heads x 128, MLP 4096, 4 layers: under SDPA the
    # layer's peak is residual + norm 8,388,608 + q/k/v/out 16,777,216 + the additive copy 2048 x 2048 x 2 = 8,388,608
    # (the MLP's 50,331,648 is wider without it: 8,388,608 + 50,331,648 = 58,720,256 vs 33,554,432) plus the forward's bool
    # mask 2048 x 2048 x 1 = 4,194,304; under FA2 only the layer's 58,720,256.
    small = {**MISTRAL_MHA, "hidden_size": 1024, "num_hidden_layers": 4, "num_attention_heads": 8, "num_key_value_heads": 8,
             "intermediate_size": 4096, "sliding_window": 1024}
    keys = dict(mode="inference", dtype="bf16", **{"batch-size": 1, "seq-len": 2048})
    assert _run(tmp_path, small, **keys).full("activations") == 58_720_256 + 4_194_304
    assert _run(tmp_path, small, **keys, **{"attn-implementation": "flash_attention_2"}).full("activations") == 58_720_256


def test_attn_implementation_eager_is_flash_attention_false_and_a_contradiction_is_named(tmp_path):
    from pytest_llmmem.errors import ConfigError

    config = str(_write(tmp_path, {**MISTRAL_MHA, "sliding_window": 1024}))
    base = {"config": config, "gpu": "H100-80GB", "mode": "train", "dtype": "bf16", "seq-len": 2048}
    eager = adhoc_run({**base, "attn-implementation": "eager"})
    assert (eager.flash_attention, eager.attn_implementation) == (False, "eager")
    assert estimate(eager).breakdown == estimate(adhoc_run({**base, "flash-attention": False})).breakdown
    default = adhoc_run(base)  # flash-attention = true alone: transformers' default, sdpa
    assert (default.flash_attention, default.attn_implementation, default.mask_free) == (True, "sdpa", False)
    with pytest.raises(ConfigError, match=r'attn-implementation: "flash_attention_2" contradicts flash-attention = false'):
        adhoc_run({**base, "flash-attention": False, "attn-implementation": "flash_attention_2"})
    with pytest.raises(ConfigError, match=r"attn-implementation.*Valid: "):
        adhoc_run({**base, "attn-implementation": "fa2"})
