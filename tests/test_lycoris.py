"""LoHa and LoKr (model/lycoris.py): their parameters, what they keep, their options and the errors a user sees.

The toy model below: hidden 64, 4 heads of 16 (k/v 64 wide too), MLP 128, 2 layers, 2 x 32 = 64 tokens, bf16 with
fp32 adapters; PEFT's LoHa and LoKr defaults are r 8 on LoRA's llama targets q_proj and v_proj (64 -> 64).
The measured cases are tests/data/adapters/loha*.json and lokr*.json (tests/test_adapter_conformance.py).
"""

import textwrap

import pytest

from pytest_llmmem.config.load import parse
from pytest_llmmem.errors import ConfigError
from pytest_llmmem.estimator import estimate
from pytest_llmmem.model.layers import Linear
from pytest_llmmem.model.lycoris import kron_factors, lokr_tensors
from pytest_llmmem.report.text import describe_run

from .test_adapters import PYPROJECT  # the toy model: hidden 64, 2 layers, 4 heads, f 128, V 1000, 2 x 32 tokens
from .test_conformance import estimated_terms


def _run(mode: str, extra: str = ""):
    (run,) = parse(textwrap.dedent(PYPROJECT.format(mode=mode)) + textwrap.dedent(extra)).runs
    return run


def _saved(mode: str, extra: str = "") -> int:
    return estimated_terms(estimate(_run(mode, extra)), mode)["saved_activations"]


def test_loha_trains_two_hadamard_pairs_per_module():
    """hada_w1_a, hada_w2_a (64 x 8) and hada_w1_b, hada_w2_b (8 x 64): 4 x 512 = 2048 per module, 4 modules."""
    assert estimate(_run("loha")).trainable_params == 4 * 2048


def test_lokr_factor_shapes_follow_rank_decompose_both_and_factor():
    """64 = 8 x 8 on both sides. Defaults: w1 8 x 8 full, w2 8 x 8 full (r 8 is not below 8 / 2): 128 per module.
    decompose-both with r 2 (below 4): both as r-rank halves, 8 x 2 + 2 x 8 = 32 each, 64 per module.
    decompose-factor 4: 64 = 4 x 16, w1 4 x 4 = 16, w2 16 x 16 = 256 full (r 8 is not below 16 / 2): 272."""
    assert estimate(_run("lokr")).trainable_params == 4 * 128
    assert estimate(_run("lokr", "lora-rank = 2\ndecompose-both = true\n")).trainable_params == 4 * 64
    assert estimate(_run("lokr", "decompose-factor = 4\n")).trainable_params == 4 * 272


def test_kron_factors_as_peft_splits_dimensions():
    # by hand: 4096 = 64 x 64; 14336 = 112 x 128 (the divisors nearest its square root, 119.7); a prime stays whole;
    # a factor that divides is taken as written (PEFT's order); one that does not bounds the smaller side
    assert kron_factors(4096) == (64, 64) and kron_factors(14336) == (112, 128) and kron_factors(127) == (1, 127)
    assert kron_factors(128, 64) == (64, 2) and kron_factors(96, 5) == (4, 24)
    # w2 of a 4096 -> 1024 linear at r 8: 1024 = 32 x 32, 4096 = 64 x 64; w1 32 x 64 full, w2 32 x 8 + 8 x 64
    assert lokr_tensors(Linear("v", "v_proj", 4096, 1024, False), 8) == (2048, 256, 512)


def test_kron_factors_equal_peft_factorization():
    layer = pytest.importorskip("peft.tuners.lokr.layer")
    for dim in list(range(1, 1200)) + [3584, 4096, 11008, 14336, 18944, 128256, 151936]:
        for factor in (-1, 1, 2, 3, 4, 8, 16, 17, 64, 100):
            assert kron_factors(dim, factor) == layer.factorization(dim, factor), (dim, factor)


def test_parameters_equal_peft_on_the_meta_device():
    """peft.get_peft_model on a 4-layer Llama-3-8B slice (h 4096, kv 1024, MLP 14336) built on the meta device."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    peft = pytest.importorskip("peft")
    arch = dict(hidden_size=4096, num_hidden_layers=4, num_attention_heads=32, num_key_value_heads=8, intermediate_size=14336,
                vocab_size=128256)
    config = transformers.AutoConfig.for_model("llama", **arch)
    every = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    cases = [("loha", peft.LoHaConfig(r=16, target_modules=every), "lora-rank = 16\nlora-targets = \"all-linear\"\n"),
             ("lokr", peft.LoKrConfig(r=8, target_modules=every), "lora-targets = \"all-linear\"\n"),
             ("lokr", peft.LoKrConfig(r=4, decompose_both=True, decompose_factor=16, target_modules=every),
              "lora-rank = 4\nlora-targets = \"all-linear\"\ndecompose-both = true\ndecompose-factor = 16\n")]
    ours = {"hidden_size": "hidden-size", "num_hidden_layers": "num-layers", "num_attention_heads": "num-heads",
            "num_key_value_heads": "num-kv-heads", "intermediate_size": "intermediate-size", "vocab_size": "vocab-size"}
    model_keys = "".join(f"{ours[key]} = {value}\n" for key, value in arch.items())
    for mode, peft_config, keys in cases:
        with torch.device("meta"):
            model = peft.get_peft_model(transformers.AutoModelForCausalLM.from_config(config), peft_config)
        measured = sum(p.numel() for p in model.parameters() if p.requires_grad)
        text = textwrap.dedent(PYPROJECT.format(mode=mode)).replace(
            "hidden-size = 64\nnum-layers = 2\nnum-heads = 4\nintermediate-size = 128\nvocab-size = 1000\n", model_keys)
        (run,) = parse(text + keys).runs
        assert estimate(run).trainable_params == measured, (mode, keys)


def test_loha_keeps_the_rebuilt_delta_where_the_input_needs_a_gradient():
    """By hand, against LoRA on the same targets: both keep each module's input cast to fp32 (64 tokens x 64 x 4 B);
    LoRA adds lora_A's r-wide output (64 x 8 x 4 = 2048 B) per module; LoHa the fp32 scale tensor (4 B) per module and
    the rebuilt 64 x 64 fp32 delta (16,384 B) F.linear keeps where the input needs a gradient: layer 1's q and v
    (layer 0's input comes from the frozen embedding)."""
    assert _saved("loha") - _saved("lora") == 2 * 16384 + 4 * 4 - 4 * 2048


def test_rank_dropout_keeps_its_row_mask_per_module():
    """LoHa's drop is one d_out vector in the delta's dtype (fp32 here: 64 x 4 B), LoKr's is ``.float()`` (fp32):
    kept by the in-place multiply for every adapted module, 4 of them."""
    assert _saved("loha", "rank-dropout = 0.1\n") - _saved("loha") == 4 * 64 * 4
    assert _saved("lokr", "rank-dropout = 0.1\n") - _saved("lokr") == 4 * 64 * 4
    assert _saved("lokr", "module-dropout = 0.2\n") == _saved("lokr")  # the step that skips no module is the peak


def test_the_rebuild_is_the_adapter_forward_phase():
    """LoHa holds (w1_a w1_b), (w2_a w2_b) and their product, 3 x 64 x 64 x 4 B, before the scaled delta exists."""
    est = estimate(_run("loha"))
    assert est.details["forward.adapter_transient"] == 3 * 64 * 64 * 4
    assert "LoHa r=8 on q_proj, v_proj" in describe_run(est)
    lokr = estimate(_run("lokr", "decompose-both = true\nrank-dropout = 0.1\n"))
    assert lokr.details["forward.adapter_transient"] == 64 * 64 * 4  # the Kronecker product beside its scaled copy
    assert "LoKr r=8 on q_proj, v_proj (decompose-both, rank-dropout 0.1)" in describe_run(lokr)


@pytest.mark.parametrize("mode,extra,message", [
    ("lokr", "decompose-factor = 0\n", r"decompose-factor: expected -1 or a positive whole number, got an integer 0\. -1 \(PEFT's default\)"),
    ("lokr", "decompose-factor = 2.5\n", r"decompose-factor: expected -1 or a positive whole number, got a number 2\.5"),
    ("loha", "rank-dropout = 1.5\n", r"rank-dropout: expected a probability from 0 up to \(not including\) 1"),
    ("loha", "decompose-both = true\n", r'decompose-both: only applies to mode = "lokr"; run "adapted" has mode = "loha"'),
    ("loha", "lora-dropout = 0.05\n", r'lora-dropout: only applies to mode = "lora" or "qlora"; run "adapted" has mode = "loha"'),
    ("lora", "rank-dropout = 0.1\n", r'rank-dropout: only applies to mode = "loha" or "lokr"; run "adapted" has mode = "lora"'),
    ("lokr", 'lora-targets = ["q_proj", "lm_head"]\n', r"lora-targets: LoKr does not adapt \"lm_head\" here"),
    # peft 0.21.2 over a bitsandbytes 0.50.2 Linear4bit (CPU): "shape '[1024, 1]' is invalid for input of size 2048"
    ("lokr", 'dtype = "nf4"\n', r"dtype: PEFT's LoKr does not run over nf4 base weights: it shapes its delta by the base weight's"),
])
def test_bad_values_are_one_paragraph_naming_the_key(mode, extra, message):
    with pytest.raises(ConfigError, match=message) as info:
        estimate(_run(mode, extra))
    assert "\n\n" not in str(info.value) and "Traceback" not in str(info.value)


def test_the_trace_says_why_it_cannot_run_loha():
    """PEFT's LoHa/LoKr forward branches on ``torch.rand(1) > module_dropout``: a value fake tensors do not have."""
    pytest.importorskip("torch")
    pytest.importorskip("peft")
    from pytest_llmmem.trace.estimate import traced

    with pytest.raises(ConfigError, match=r'mode "loha" is not traced \(its forward branches on a random draw.*method = "detailed"'):
        traced(_run("loha"))


def test_the_factors_backward_is_the_layer_transient_where_it_is_the_largest():
    """Hidden 512 (q/v 512 -> 512), vocab 128 so the last layer's backward sets the peak, 64 tokens, bf16, fp32 adapters.
    LoHa's HadaWeight.backward holds five 512 x 512 fp32 tensors (5 x 1 MiB) beside the input's gradient and the base
    branch's bf16 copy of the output's gradient, 64 x (512 + 512) x 2 B; LoKr's Kronecker backward three, four with
    rank-dropout (measured on the CPU: benchmarks/measure_lycoris_backward.py)."""
    def transient(mode: str, extra: str = "") -> int:
        text = textwrap.dedent(PYPROJECT.format(mode=mode)).replace("hidden-size = 64", "hidden-size = 512").replace(
            "intermediate-size = 128", "intermediate-size = 1024").replace("vocab-size = 1000", "vocab-size = 128")
        est = estimate(parse(text + extra).runs[0])
        assert est.peak_phase == "backward"
        return est.details["backward.activations.backward_transient"]

    flowing = 64 * (512 + 512) * 2
    assert transient("loha") == 5 * 512 * 512 * 4 + flowing
    assert transient("lokr") == 3 * 512 * 512 * 4 + flowing
    assert transient("lokr", "rank-dropout = 0.1\n") == 4 * 512 * 512 * 4 + flowing
    assert transient("lora") < 512 * 512 * 4  # LoRA's backward holds no weight-sized tensor of its own
