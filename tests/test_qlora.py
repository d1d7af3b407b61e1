"""QLoRA as bitsandbytes runs it (issue 26): what old MatMul4Bit keeps, kbit-prepare's fp32 stream, the dequantised
weight, and litgpt's loop holding the last step's graph. The bytes are held to the CPU by
tests/test_adapter_conformance.py (tests/data/adapters/qlora*.json); here the hand-derived figures and what a user sees."""

import json
import textwrap

import pytest

from pytest_llmmem.config.load import parse
from pytest_llmmem.errors import ConfigError
from pytest_llmmem.estimator import estimate

# hidden 64, 4 heads of 16, intermediate 128, vocab 1000, 2 layers; q_proj and v_proj adapted (PEFT's llama default)
PYPROJECT = """
[tool.llmmem]
gpu-memory = "80GiB"

[tool.llmmem.model]
family = "llama"
hidden-size = 64
num-layers = 2
num-heads = 4
intermediate-size = 128
vocab-size = 1000

[[tool.llmmem.runs]]
name = "q"
mode = "qlora"
batch-size = 2
seq-len = 32
"""


def _estimate(extra: str = ""):
    return estimate(parse(textwrap.dedent(PYPROJECT) + textwrap.dedent(extra)).runs[0])


def test_bitsandbytes_before_0_43_2_keeps_every_4bit_linears_input():
    """By hand, 64 tokens, bf16 activations, fp32 adapters on q/v (which keep their own fp32 casts, not the base's
    input): MatMul4Bit <= 0.43.1 keeps the input of every 4-bit linear whose input needs a gradient. Held in all:
    layer 0 (its q/k/v input comes from the frozen embedding) o_proj 64 + gate/up 64 (one shared tensor) + down_proj
    128, layer 1 also q/k/v's 64: (256 + 320) x 64 tokens x 2 B = 73,728 B, all still held once backward has run (a
    ctx attribute, not a saved variable). Of these o_proj's input is the attention kernel's output, which SDPA keeps
    anyway (measured: tests/data/adapters/qlora-bnb-0.43.1.json), so the saved bytes grow by 73,728 - 2 x 64 x 64 x 2
    = 57,344 B."""
    new, old = _estimate(), _estimate('bitsandbytes-version = "0.42.0"\n')
    assert old.breakdown["activations"] - new.breakdown["activations"] == 57_344
    assert old.details["held.bnb_ctx_inputs"] == 73_728 and "held.bnb_ctx_inputs" not in new.details
    assert _estimate('bitsandbytes-version = "0.43.2"\n').breakdown["activations"] == new.breakdown["activations"]
    # under (reentrant) checkpointing the layers' forward runs without grad: MatMul4Bit keeps nothing
    ckpt = 'gradient-checkpointing = true\n'
    assert _estimate(ckpt + 'bitsandbytes-version = "0.42.0"\n').breakdown["activations"] == _estimate(ckpt).breakdown["activations"]


def test_kbit_prepare_casts_the_rest_to_fp32_and_the_stream_follows():
    """peft.prepare_model_for_kbit_training: embeddings 1000 x 64, head 1000 x 64 and the norms (2 x 2 x 64 + 64)
    go from 2 to 4 bytes: 128,320 x 2 B = 256,640 B more weights; the logits come out fp32 (64 x 1000 x 4 B)."""
    plain, prepared = _estimate(), _estimate("kbit-prepare = true\n")
    assert prepared.details["weights.adapters"] == plain.details["weights.adapters"]
    assert prepared.breakdown["weights"] - plain.breakdown["weights"] == 128_320 * 2
    assert prepared.details["logits.logits"] == 64 * 1000 * 4 == 2 * plain.details["logits.logits"]


def test_the_largest_dequantised_weight_is_a_transient_of_the_step():
    """One 4-bit linear at a time is dequantised to bf16, in forward and in backward: the largest here is gate, up or
    down (64 x 128), 8192 x 2 B = 16,384 B; a bf16 LoRA run has none."""
    assert _estimate().details["activations.dequantized_weight"] == 64 * 128 * 2
    lora = estimate(parse(textwrap.dedent(PYPROJECT).replace('mode = "qlora"', 'mode = "lora"')).runs[0])
    assert "activations.dequantized_weight" not in lora.details


def test_compute_dtype_fp32_dequantises_and_computes_in_fp32():
    """qlora.py without --bf16 (bnb_4bit_compute_dtype and torch_dtype float32, qlora.py:262, :278): the dequantised
    gate/up/down weight is 64 x 128 x 4 B = 32,768 B; embeddings, head and norms (128,320 params, as above) go from 2 to
    4 B, and the stream with them: logits 64 x 1000 x 4 B. At LLaMA-65B's 8192 x 22016 this is 721,420,288 B, the
    688 MiB allocation of artidoro/qlora issue 17's OOM."""
    plain, fp32 = _estimate(), _estimate('compute-dtype = "fp32"\n')
    assert fp32.details["activations.dequantized_weight"] == 64 * 128 * 4 == 2 * plain.details["activations.dequantized_weight"]
    assert fp32.breakdown["weights"] - plain.breakdown["weights"] == 128_320 * 2
    assert fp32.details["logits.logits"] == 64 * 1000 * 4
    assert 8192 * 22016 * 4 == 688 * 2**20 == 721_420_288
    # bf16 is the default: naming it changes nothing
    assert _estimate('compute-dtype = "bf16"\n').total_bytes == plain.total_bytes


def test_a_compute_dtype_that_is_not_one_is_a_config_error():
    with pytest.raises(ConfigError, match='compute-dtype: "fp23" is not valid. Did you mean "fp32"?'):
        _estimate('compute-dtype = "fp23"\n')
    # torch's spelling, as a script passes it, is the same dtype
    assert _estimate('compute-dtype = "torch.float32"\n').total_bytes == _estimate('compute-dtype = "fp32"\n').total_bytes
    with pytest.raises(ConfigError, match="compute-dtype.*only applies to mode"):  # a 16-bit base computes in its dtype
        parse(textwrap.dedent(PYPROJECT).replace('mode = "qlora"', 'mode = "lora"') + 'compute-dtype = "fp32"\n')


def test_a_bitsandbytes_version_that_is_not_one_is_a_config_error():
    with pytest.raises(ConfigError, match='bitsandbytes-version.*"latest" is not a bitsandbytes release number'):
        _estimate('bitsandbytes-version = "latest"\n')
    with pytest.raises(ConfigError, match="kbit-prepare"):  # a LoRA run on a 16-bit base prepares nothing
        parse(textwrap.dedent(PYPROJECT).replace('mode = "qlora"', 'mode = "lora"') + "kbit-prepare = true\n")


LITGPT = """
[tool.llmmem]
gpu = "A10G"
[tool.llmmem.model]
family = "llama"
hidden-size = 2048
num-layers = 22
num-heads = 32
num-kv-heads = 4
intermediate-size = 5632
vocab-size = 32000
[[tool.llmmem.runs]]
name = "tiny-qlora"
mode = "qlora"
framework = "litgpt"
optimizer = "paged-adamw"
lora-rank = 32
lora-targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "lm_head"]
lora-dropout = 0.05
batch-size = 8
seq-len = 512
"""


def test_litgpt_holds_the_last_steps_graph_into_the_next_forward(write_pyproject, run_cli):
    """litgpt's TinyLlama QLoRA config (config_hub/finetune/tiny-llama/qlora.yaml at 5895df10, bitsandbytes 0.42.0 as
    litgpt pinned it then): the last step's logits keep its graph, and so every 4-bit linear input MatMul4Bit held,
    through the next forward. By hand, per token: layer 0 keeps o_proj 2048 + gate/up 2048 + down 5632, the other 21
    layers q/k/v's 2048 too: (9728 + 21 x 11,776) x 4096 tokens x 2 B = 2,105,540,608 B."""
    path = write_pyproject(LITGPT + 'bitsandbytes-version = "0.42.0"\n')
    (run,) = parse(path.read_text()).runs
    est = estimate(run)
    assert est.details["held.bnb_ctx_inputs"] == (9728 + 21 * 11_776) * 4096 * 2 == 2_105_540_608
    assert est.peak_phase == "forward"
    code, out, _ = run_cli("check", path)
    text = " ".join(out.split())
    assert code == 0 and "peak phase: forward" in text and "their graph keeps 1.96 GiB of 4-bit linear inputs" in text, out
    # with a bitsandbytes that keeps no inputs the backward is the peak again, and the next forward holds only logits
    path = write_pyproject(LITGPT)
    assert estimate(parse(path.read_text()).runs[0]).peak_phase == "backward"


def test_the_qlora_keys_are_estimate_flags(run_cli):
    """llmmem estimate takes both: the same run as the pyproject's, so the same held bytes (hand figure above)."""
    code, out, _ = run_cli("estimate", "--family", "llama", "--hidden-size", "64", "--num-layers", "2", "--num-heads", "4",
                           "--intermediate-size", "128", "--vocab-size", "1000", "--mode", "qlora", "--batch-size", "2",
                           "--seq-len", "32", "--gpu-memory", "80GiB", "--bitsandbytes-version", "0.42.0", "--kbit-prepare",
                           "--format", "json")
    assert code == 0
    (run,) = json.loads(out)["runs"]
    assert run["details"]["held.bnb_ctx_inputs"] > 0 and run["details"]["logits.logits"] == 64 * 1000 * 4
