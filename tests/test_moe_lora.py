"""LoRA on MoE models as PEFT 0.21.2 + transformers 5.24 build it: which routed experts get adapters,
and what an adapted 3D expert parameter keeps (the per-term match is in test_conformance.py)."""

import tempfile
from pathlib import Path

from .test_conformance import DATA, _case, _estimate, cut_config


def _lora(stem):
    case = _case(DATA / f"{stem}.json")
    scenario = next(s for s in case["scenarios"] if s["mode"] == "lora")
    return _estimate(cut_config(case), Path(tempfile.mkdtemp()), scenario, case)


def test_qwen3_moe_adapters_are_what_peft_wraps():
    # Cut Qwen3-30B-A3B (h 2048, 32 q heads / 4 kv heads x 128, layer 0 dense, layer 1 MoE: 16 experts,
    # moe_intermediate 768), r = 8 on q/k/v/o + gate/up/down. PEFT (peft.get_peft_model, printed by hand):
    # attention 2 layers x 8 x ((2048+4096) + 2 x (2048+512) + (4096+2048)) = 278,528;
    # the dense layer's gate/up/down get NONE (their names moved to target_parameters);
    # experts.gate_up_proj rank 16: 16 x 16 x (2048 + 1536) = 917,504; experts.down_proj rank 8:
    # 16 x 8 x (768 + 2048) = 360,448. Total 1,556,480 (the recorded scenario's "trainable").
    est = _lora("qwen3_moe")
    assert est.trainable_params == 278_528 + 917_504 + 360_448 == 1_556_480


def test_frozen_experts_add_the_merged_weight_to_saved_activations():
    # The adapted expert parameters are parametrised as baddbmm(W, lhs, rhs): one merged bf16 copy each,
    # 16 x 1536 x 2048 x 2 + 16 x 2048 x 768 x 2 = 150,994,944 B, kept by the grouped matmul.
    est = _lora("qwen3_moe")
    assert est.breakdown["activations"] > 150_994_944


def test_jamba_experts_get_no_adapters_and_say_so():
    # Jamba's routed experts are 3D parameters PEFT does not convert (model_type jamba is not in
    # transformers' _MODEL_TO_CONVERSION_PATTERN): gate/up/down adapt the dense layer only.
    est = _lora("jamba")
    assert any("jamba's routed experts are 3D parameters PEFT 0.21.2 does not wrap" in n for n in est.notes)
    # 954,624 trainable (PEFT count); dt_proj's 8 x (256 + 8192) = 67,584 get no gradient (fp32: x 4 B)
    assert est.trainable_params == 954_624
    assert est.breakdown["gradients"] == (954_624 - 67_584) * 4
