"""A GPTQ 4-bit base under LoRA (dtype = "gptq"): its weight bytes by group size, and the key's errors.

fms-acceleration's GPTQ-LoRA (its triton_v2 QuantLinear) keeps qweight (0.5 B a weight) and, per group of input
rows, an fp16 scale and a 4-bit zero per output column; the checkpoint's group size decides those bytes.
"""

import pytest

from pytest_llmmem.config.load import adhoc_run
from pytest_llmmem.core.terms.trainer_terms import gptq_bytes
from pytest_llmmem.errors import ConfigError
from pytest_llmmem.estimator import estimate

RUN = {"name": "gptq", "id": "mistralai/Mistral-7B-v0.1", "mode": "qlora", "dtype": "gptq", "compute-dtype": "fp16",
       "lora-rank": 16, "lora-targets": ["q_proj", "k_proj", "v_proj", "o_proj"], "batch-size": 1, "seq-len": 512}


def test_bytes_per_weight_by_group_size():
    # 0.5 B of packed int32 codes + (2 B fp16 scale + 0.5 B packed zero) per group of 128 input rows;
    # group_size -1 (one group per column) leaves the 0.5 B.
    assert gptq_bytes(128) == 0.5 + 2.5 / 128 == 0.51953125
    assert gptq_bytes(32) == 0.578125
    assert gptq_bytes(-1) == 0.5


def test_group_size_moves_only_the_linear_weights():
    # Mistral-7B's linear weights: 7,241,732,096 params less the embedding and head (2 x 32,000 x 4,096 =
    # 262,144,000) and the 65 RMSNorm vectors (266,240) = 6,979,321,856; group 128 against -1 adds
    # 2.5 / 128 B to each: 136,315,856.5 B (the embedding, head and norms stay fp16 in both).
    per_group = estimate(adhoc_run(RUN)).breakdown["weights"]
    per_column = estimate(adhoc_run({**RUN, "gptq-group-size": -1})).breakdown["weights"]
    assert abs((per_group - per_column) - 6_979_321_856 * 2.5 / 128) <= 1


@pytest.mark.parametrize("extra, message", [
    ({"dtype": "nf4"}, 'only applies to a GPTQ base (dtype = "gptq")'),
    ({"gptq-group-size": 0}, "expected a positive integer or -1"),
    ({"gptq-group-size": "128"}, "expected a positive integer or -1"),
])
def test_group_size_errors(extra, message):
    with pytest.raises(ConfigError, match="gptq-group-size") as caught:
        adhoc_run({**RUN, "gptq-group-size": 64, **extra})
    assert message in str(caught.value)
