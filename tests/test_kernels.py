"""Fused kernels (catalog/kernels.py): each kernel's saved bytes against a count by hand, the readers'
mappings of the trainers' flags, and the errors a user sees."""

import pytest

from pytest_llmmem.catalog.kernels import applied
from pytest_llmmem.config.load import adhoc_run, parse
from pytest_llmmem.core.terms.activations import layer_saved
from pytest_llmmem.core.terms.trainable import Trainable
from pytest_llmmem.core.terms.transients import backward_transient
from pytest_llmmem.errors import ConfigError
from pytest_llmmem.estimator import estimate

# A small Llama: T = b * s = 2 * 16 = 32 tokens, h = 64, f = 160, V = 512, 2 layers, bf16 (2 B).
LLAMA = {"family": "llama", "hidden-size": 64, "num-layers": 2, "num-heads": 4, "num-kv-heads": 2, "intermediate-size": 160,
         "vocab-size": 512, "mode": "train", "dtype": "bf16", "batch-size": 2, "seq-len": 16, "optimizer": "adamw"}
T, H, F, V, L = 32, 64, 160, 512, 2


def _est(**keys):
    return estimate(adhoc_run({**LLAMA, **keys}))


def _saved(est) -> int:
    return est.full("activations")  # the term's full size: every saved tensor


def test_liger_rms_norm_drops_the_fp32_copy_of_each_norms_input():
    # HF LlamaRMSNorm keeps the fp32 x (4 B), the normalised bf16 x (2 B, the weight trains) and one fp32 rstd
    # per row; Liger keeps X as it comes (2 B) and the rstd: 4 B x T x h less per norm, for 2 L + 1 = 5 norms.
    plain, liger = _est(), _est(kernels=["liger-rms-norm"])
    assert _saved(plain) - _saved(liger) == 5 * T * H * 4  # 40,960 B


def test_liger_glu_keeps_gate_and_up_not_the_activation():
    # HF keeps gate, act(gate) and up (3 x f x 2 B per token); Liger's SiLUMul keeps gate and up: 2 B x f less per layer.
    plain, liger = _est(), _est(kernels=["liger-glu"])
    assert _saved(plain) - _saved(liger) == L * T * F * 2  # 20,480 B


def test_liger_rope_changes_no_saved_bytes():
    # Liger rotates q and k in place and keeps cos and sin, which HF's rotary keeps too (rope.py:226).
    assert _est(kernels=["liger-rope"]).total_bytes == _est().total_bytes


def test_liger_cross_entropy_keeps_the_fp32_copy_holding_its_gradient():
    # upcast: bf16 logits 2 + fp32 log-softmax 4 + two fp32 backward tensors 8 = 14 B per logit element;
    # inplace: bf16 logits 2 + the fp32 copy holding the gradient 4 + its bf16 cast for the head 2 = 8 B.
    plain, ce = _est(), _est(kernels=["liger-cross-entropy"])
    assert ce.run.knobs.loss == "inplace"
    assert plain.full("logits") == T * V * 14 and ce.full("logits") == T * V * 8  # 229,376 and 131,072 B
    assert ce.details["logits.inplace_fp32_grad"] == T * V * 4


def test_liger_default_set_is_rope_norm_glu_and_the_fused_linear_loss():
    liger = _est(kernels=["liger"])
    assert liger.run.knobs.loss == "fused"
    assert _saved(_est()) - _saved(liger) == 5 * T * H * 4 + L * T * F * 2  # the two tests above together
    assert "logits.log_softmax" not in liger.details  # no b x s x V tensor lives (fused_linear_cross_entropy.py:68-72)


def test_unsloth_fast_lora_mlp_keeps_x_gate_and_up():
    # Unsloth's LoRA_MLP (fast_lora.py:110) keeps X (h), gate's and up's outputs (2 f) and nothing of the
    # adapters; its RMSNorm (the post-attention norm, frozen weight) keeps X in bf16 and one fp32 rstd per row.
    arch = adhoc_run({**LLAMA, "mode": "lora"}).model
    names = frozenset(lin.name for lin in arch.layer_groups()[0].linears(arch.family, H))
    t = Trainable(full=False, adapted=names, rank=8, kernels=frozenset({"fast-lora", "rms-norm"}))
    mlp = layer_saved(arch, batch=2, seq=16, act=2, flash=True, trainable=t)["mlp"]
    assert mlp == T * H * 2 + 2 * T * F * 2 + (T * H * 2 + T * 4)  # 4,096 + 20,480 + 4,224 = 28,800 B


def test_unsloth_fast_lora_needs_dropout_zero():
    # unsloth/models/llama.py:3695 patches its LoRA autograd only with lora_dropout == 0: PEFT's count otherwise.
    keys = dict(mode="lora", framework="unsloth", **{"lora-targets": ["all-linear"]})
    fast, peft = _est(**keys), _est(**keys, **{"lora-dropout": 0.05})
    assert peft.details["activations.recomputed_layer"] > fast.details["activations.recomputed_layer"]


def test_unsloth_fast_lora_mlp_backward_makes_one_d_ff_wide_gradient():
    # Unsloth's LoRA_MLP backward allocates DW = dY @ down^T (f wide) and writes h, df, de over DW, e, g and dX
    # over X (fast_lora.py:156-157, :194 out = X; swiglu.py:107-109): beside the incoming dY (h wide) that is
    # T x (f + h) x 2 B = 32 x 224 x 2 = 14,336 B at the recompute instant. PEFT's MLP (dropout on, so no
    # fast LoRA) makes the down input's gradient and act(gate) * up's three: T x (3 f + h) x 2 = 34,816 B.
    keys = dict(mode="lora", framework="unsloth", **{"lora-targets": ["all-linear"]})
    fast, peft = _est(**keys), _est(**keys, **{"lora-dropout": 0.05})
    assert fast.details["backward.activations.backward_transient"] == T * (F + H) * 2 == 14_336
    assert peft.details["backward.activations.backward_transient"] == T * (3 * F + H) * 2 == 34_816
    # LoRA on q and v only: the MLP is PEFT's frozen one, whose backward makes the three f-wide gradients
    qv = _est(mode="lora", framework="unsloth", **{"lora-targets": ["q_proj", "v_proj"]})
    assert qv.details["backward.activations.backward_transient"] == 34_816


def test_unsloth_profile_applies_its_kernels():
    est = _est(mode="lora", framework="unsloth")
    assert est.run.knobs.kernels == ("unsloth",) and est.run.knobs.loss == "fused"


def test_liger_on_a_model_type_it_does_not_patch_changes_nothing_and_says_so():
    keys = {"family": "starcoder2", "hidden-size": 64, "num-layers": 2, "num-heads": 4, "num-kv-heads": 2,
            "intermediate-size": 160, "vocab-size": 512, "mode": "train", "dtype": "bf16", "batch-size": 2, "seq-len": 16}
    plain, liger = estimate(adhoc_run(keys)), estimate(adhoc_run({**keys, "kernels": ["liger-rms-norm", "liger-glu"]}))
    assert liger.total_bytes == plain.total_bytes
    assert any("no kernels for model_type 'starcoder2'" in a for a in liger.approximate)


def _toml(run: str) -> str:
    return f'[tool.llmmem]\ngpu = "H100-80GB"\n[tool.llmmem.model]\nparams = "8B"\n[[tool.llmmem.runs]]\nname = "r"\n{run}\n'


def test_an_unknown_kernel_is_refused_with_did_you_mean():
    with pytest.raises(ConfigError) as err:
        parse(_toml('kernels = ["ligr"]'))
    assert '"ligr" is not a kernel' in err.value.message and 'Did you mean "liger"?' in err.value.message


def test_a_loss_that_contradicts_the_kernels_is_refused():
    with pytest.raises(ConfigError) as err:
        parse(_toml('kernels = ["liger"]\nloss = "upcast"'))
    assert 'loss = "fused"' in err.value.message


@pytest.mark.parametrize("name, text, kernels, loss", [
    ("trl.yaml", "model_name_or_path: Qwen/Qwen2.5-0.5B\nuse_liger_kernel: true\n", ("liger",), "fused"),
    ("axolotl.yaml", "base_model: meta-llama/Meta-Llama-3.1-8B\nplugins:\n  - axolotl.integrations.liger.LigerPlugin\n"
                     "liger_rms_norm: true\nliger_cross_entropy: true\n", ("liger-rms-norm", "liger-cross-entropy"), "inplace"),
    ("lf.yaml", "model_name_or_path: meta-llama/Meta-Llama-3-8B-Instruct\nstage: dpo\nfinetuning_type: lora\nenable_liger_kernel: true\n",
     ("liger-rope", "liger-rms-norm", "liger-glu", "liger-cross-entropy"), "inplace"),
    ("lf.yaml", "model_name_or_path: meta-llama/Meta-Llama-3-8B-Instruct\nstage: sft\nfinetuning_type: lora\nuse_unsloth: true\n",
     ("unsloth",), "fused"),
])
def test_trainer_flags_map_to_kernels(tmp_path, name, text, kernels, loss):
    (tmp_path / name).write_text(text)
    run = parse(f'[tool.llmmem]\ngpu = "H100-80GB"\n[[tool.llmmem.runs]]\nfrom = "{tmp_path / name}"\n', base_dir=tmp_path).runs[0]
    assert run.knobs.kernels == kernels and run.knobs.loss == loss
    assert not any("liger" in r or "unsloth" in r for r in run.not_modelled)


# A small Gemma 3: 4 query heads over 2 KV heads (grouped), head dim 16, h = 64, f = 160, V = 512, 2 layers.
GEMMA3 = {"family": "gemma3_text", "hidden-size": 64, "num-layers": 2, "num-heads": 4, "num-kv-heads": 2, "head-dim": 16,
          "intermediate-size": 160, "vocab-size": 512, "mode": "lora", "dtype": "bf16", "batch-size": 2, "seq-len": 16,
          "optimizer": "adamw", "lora-targets": ["all-linear"]}


def test_unsloth_gemma3_attention_runs_on_the_math_sdpa_backend():
    # unsloth_zoo patch_Gemma3Attention calls SDPA with the mask and enable_gqa: the math backend keeps the scaled fp32 q,
    # the scaled fp32 K^T and the fp32 V repeated to 4 heads (3 x T x a x d x 4 B = 3 x 32 x 4 x 16 x 4 = 24,576 B), the
    # fp32 probabilities (b x a x s x s x 4 = 2 x 4 x 16 x 16 x 4 = 8,192 B) and the reshaped copy o_proj takes
    # (T x a x d x 2 = 4,096 B): 36,864 B. The fused SDPA count keeps bf16 q, k, v (T x (a + 2 kv) x d x 2 = 8,192), the
    # output (4,096) and the fp32 log-sum-exp (b x a x s x 4 = 512): 12,800 B. 24,064 B more per layer.
    arch = adhoc_run(GEMMA3).model
    math = layer_saved(arch, batch=2, seq=16, act=2, flash=True, trainable=Trainable(full=True, kernels=frozenset({"sdpa-math"})))
    fused = layer_saved(arch, batch=2, seq=16, act=2, flash=True, trainable=Trainable(full=True))
    assert sum(math.values()) - sum(fused.values()) == 24_064
    # the part comes with the unsloth kernels on Gemma 3 only; a Llama under Unsloth keeps SDPA's count
    assert "sdpa-math" in applied(("unsloth",), "gemma3")[0] and "sdpa-math" not in applied(("unsloth",), "llama")[0]
    assert "sdpa-math" not in applied(("liger",), "gemma3")[0]


def test_unsloth_gemma3_backward_makes_two_fp32_score_matrices():
    # At s = 64, b = 1 the math backend's backward makes attn @ V's gradient for the probabilities and _safe_softmax's
    # gradient, both fp32: 2 x a x s x s x 4 = 2 x 4 x 64 x 64 x 4 = 131,072 B, wider than the MLP's (PEFT's gated MLP,
    # dropout on: 3 x T x f x 2 = 61,440 B), beside the (T, h) gradient flowing out (64 x 64 x 2 = 8,192 B): 139,264 B.
    # Without Unsloth the fused SDPA makes no score matrix and the MLP's 61,440 + 8,192 = 69,632 B count.
    keys = {**GEMMA3, "batch-size": 1, "seq-len": 64, "lora-dropout": 0.05, "gradient-checkpointing": True}
    unsloth, hf = estimate(adhoc_run({**keys, "framework": "unsloth"})), estimate(adhoc_run(keys))
    assert unsloth.details["backward.activations.backward_transient"] == 139_264
    assert hf.details["backward.activations.backward_transient"] == 69_632


# fms-acceleration's fused_lora (catalog/kernels.py foak-lora): a LoRA layer of the small Llama above, r 8 on q/k/v/o
# (every adapted module's input needs a gradient: a layer past the first), dropout on, fp32 adapters, bf16 activations.
def _foak_attention(kernels, **keys) -> int:
    arch = adhoc_run({**LLAMA, "mode": "lora"}).model
    names = frozenset(f"{p}_proj" for p in "qkvo")
    t = Trainable(full=False, adapted=names, rank=8, dropout=True, kernels=frozenset(kernels),
                  adapter=adhoc_run({**LLAMA, "mode": "lora"}).adapter, **keys)
    return layer_saved(arch, batch=2, seq=16, act=2, flash=True, trainable=t)["attention"]


def test_foak_fused_lora_keeps_x_and_each_dropped_x_not_peft_fp32_copies_and_masks():
    # PEFT with dropout keeps, per adapted module and token, the fp32 dropout output (h x 4 = 256 B), lora_A's fp32 output
    # (r x 4 = 32 B) and the bool mask (h = 64 B): 352 B, x 4 modules = 1,408 B. fms-acceleration's LoRA_QKV keeps X
    # (h x 2 = 128 B) and the three dropped X (3 x 128 B), LoRA_W its dropped X (128 B; its X is the attention kernel's
    # output, kept already): 640 B. T = 32 tokens: (1,408 - 640) x 32 = 24,576 B less per layer.
    assert _foak_attention(()) - _foak_attention({"foak-lora"}) == (1408 - 640) * T == 24_576
    # the whole attention block with the kernel: X and the dropped X 4 x 128 x 32 = 16,384; HF's RMSNorm (frozen weight)
    # the fp32 input 32 x 64 x 4 + one fp32 rstd a row 32 x 4 = 8,320; q, k, v as the kernel gets them 32 x (4 + 2 x 2) x
    # 16 x 2 = 8,192; its output 32 x 64 x 2 = 4,096 and log-sum-exp 2 x 4 x 16 x 4 = 512; o's dropped X 4,096
    assert _foak_attention({"foak-lora"}) == 16_384 + 8_320 + 8_192 + 4_096 + 512 + 4_096 == 41_600


QLORA_FOAK = {"mode": "qlora", "dtype": "nf4", "compute-dtype": "bf16", "lora-rank": 8, "lora-dropout": 0.1, "adapter-dtype": "fp32",
              "lora-targets": ["q_proj", "k_proj", "v_proj", "o_proj"], "gradient-checkpointing": True, "flash-attention": True}


def test_foak_fused_lora_lowers_the_recomputed_layer_of_a_qlora_run():
    # the recompute instant's layer is one past the first: the 24,576 B of the test above
    plain = _est(**QLORA_FOAK)
    foak = _est(**QLORA_FOAK, kernels=["foak-fused-lora"])
    assert plain.details["activations.recomputed_layer"] - foak.details["activations.recomputed_layer"] == 24_576


def test_foak_fused_lora_changes_nothing_over_a_16_bit_base():
    # the plugin omits fused_lora where the model has no quantization_method (framework_plugin_fast_kernels.py:156-159)
    keys = {**QLORA_FOAK, "mode": "lora", "dtype": "bf16"}
    del keys["compute-dtype"]
    assert _est(**keys, kernels=["foak-fused-lora"]).total_bytes == _est(**keys).total_bytes


def test_foak_fused_lora_mlp_keeps_its_dropped_inputs_and_a_mask_in_backward():
    # all-linear: LoRA_MLP keeps X (h), gate's and up's outputs (2 f) and the dropped X of gate and up (2 h) and of down
    # (f), 2 B each: 32 x (3 x 64 + 3 x 160) x 2 = 43,008 B, plus HF's post-attention RMSNorm 8,320 B. Its backward makes DW
    # (f x 2 B) beside the bool mask (downX != 0) (f x 1 B) and the incoming gradient (h x 2 B): 32 x (160 x 3 + 128) = 19,456 B.
    arch = adhoc_run({**LLAMA, "mode": "lora"}).model
    names = frozenset(lin.name for lin in arch.layer_groups()[0].linears(arch.family, H))
    t = Trainable(full=False, adapted=names, rank=8, dropout=True, kernels=frozenset({"foak-lora"}))
    assert layer_saved(arch, batch=2, seq=16, act=2, flash=True, trainable=t)["mlp"] == 43_008 + 8_320
    assert backward_transient(arch, batch=2, seq=16, act=2, trainable=t) == T * (F * 3 + H * 2) == 19_456
    # Unsloth's own kernel (dropout 0 only) makes no mask: DW and the incoming gradient, T x (f + h) x 2 B
    unsloth = t._replace(dropout=False, kernels=frozenset({"fast-lora"}))
    assert backward_transient(arch, batch=2, seq=16, act=2, trainable=unsloth) == T * (F + H) * 2 == 14_336


def test_foak_fused_lora_on_a_model_type_without_its_rule_changes_nothing_and_says_so():
    # fms-acceleration's gpt_bigcode rules patch only the loss (models/gpt_bigcode.py @ 733992a): PEFT's LoRA is counted
    assert "foak-lora" not in applied(("foak-fused-lora",), "gpt_bigcode")[0]
    parts, note = applied(("foak-fused-lora", "liger-rms-norm"), "gpt_bigcode")
    assert "no fused LoRA rule" in note and "Liger has no kernels" in note and not parts
    assert applied(("foak-fused-lora",), "mistral") == (frozenset({"foak-lora"}), "")
