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
    assert est.full("activations") > 150_994_944


def test_jamba_experts_get_no_adapters_and_say_so():
    # Jamba's routed experts are 3D parameters PEFT does not convert (model_type jamba is not in
    # transformers' _MODEL_TO_CONVERSION_PATTERN): gate/up/down adapt the dense layer only.
    est = _lora("jamba")
    assert any("jamba's routed experts are 3D parameters PEFT 0.21.2 does not wrap" in n for n in est.notes)
    # 954,624 trainable (PEFT count); dt_proj's 8 x (256 + 8192) = 67,584 get no gradient (fp32: x 4 B)
    assert est.trainable_params == 954_624
    assert est.full("gradients") == (954_624 - 67_584) * 4


def test_mixtral_experts_are_targeted_by_peft_names():
    # PEFT 0.21.2 names Mixtral's experts w1 (gate), w3 (up), w2 (down) and turns them into target_parameters
    # gate_up_proj (rank 2r) and down_proj (peft/utils/transformers_weight_conversion.py _MOE_TARGET_MODULE_MAPPING).
    # Mixtral-8x7B (h 4096, 8 kv heads x 128, 8 experts of 14336, 32 layers), r = 16 on q/k/v/o + w1/w3/w2, by hand:
    # attention 16 x ((4096+4096) + 2 x (4096+1024) + (4096+4096)) = 425,984 a layer;
    # gate_up_proj 8 experts x 32 x (4096 + 2 x 14336) = 8,388,608; down_proj 8 x 16 x (14336 + 4096) = 2,359,296;
    # 32 x 11,173,888 = 357,564,416 -- what peft.get_peft_model reports on the meta device (transformers 5.24).
    from pytest_llmmem.config.load import adhoc_run
    from pytest_llmmem.estimator import estimate

    config = Path(__file__).parents[1] / "pytest_llmmem" / "models" / "mistralai--Mixtral-8x7B-v0.1" / "config.json"
    mixtral = {"config": str(config), "mode": "lora", "lora-rank": 16, "seq-len": 512}
    est = estimate(adhoc_run({**mixtral, "lora-targets": ["q_proj", "k_proj", "v_proj", "o_proj", "w1", "w3", "w2"]}))
    assert est.trainable_params == 32 * (425_984 + 8_388_608 + 2_359_296) == 357_564_416
    # "all-linear" adds the router (PEFT adapts gate.weight): 32 x 16 x (4096 + 8) = 2,101,248 more
    assert estimate(adhoc_run({**mixtral, "lora-targets": "all-linear"})).trainable_params == 357_564_416 + 2_101_248
