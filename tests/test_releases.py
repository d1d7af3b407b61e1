"""Release numbers (torch-version, bitsandbytes-version, engine-version) read by one rule, values.release:
what each package prints as its __version__ is accepted by every key, and nothing else is."""

from __future__ import annotations

import pytest

from pytest_llmmem.config.load import adhoc_run
from pytest_llmmem.errors import ConfigError
from pytest_llmmem.values import release

# Llama-3.2-1B-sized model, enough for a run to parse (meta-llama/Llama-3.2-1B config.json shape keys).
MODEL = {"family": "llama", "hidden-size": 2048, "num-layers": 16, "num-heads": 32, "num-kv-heads": 8,
         "intermediate-size": 8192, "vocab-size": 128256, "max-position-embeddings": 131072}

# Strings as torch, bitsandbytes and vLLM print __version__ (torch's CUDA local part, a vLLM rc and post release,
# a vLLM nightly's dev part and git local part), and the release each one reads as.
PRINTED = [
    ("2.4.0+cu121", (2, 4, 0)),
    ("2.5.0a0+git1a2b3c4", (2, 5, 0)),
    ("v0.10.2", (0, 10, 2)),
    ("0.11.0rc1", (0, 11, 0)),
    ("0.6.3.post1", (0, 6, 3)),
    ("0.9.2.dev12+g1a2b3c4", (0, 9, 2)),
    (" 0.45.5 ", (0, 45, 5)),
    ("2.1", (2, 1)),
]
NOT_RELEASES = ["latest", "2", "2.", "two.one", "2.4.0-foo", "2.4.0 rc1", "", "1" * 7 + ".0", "2.4" + ".0" * 9]


@pytest.mark.parametrize("text, parts", PRINTED)
def test_every_printed_version_reads_as_its_release(text, parts):
    assert release(text) == parts


@pytest.mark.parametrize("text", NOT_RELEASES + [2.0, None, ["2", "1"]])
def test_anything_else_is_not_a_release(text):
    assert release(text) is None


@pytest.mark.parametrize("text, parts", PRINTED)
def test_each_key_takes_what_its_package_prints(text, parts):
    """The three keys used to accept three different sets: bitsandbytes refused "0.6.3.post1", vLLM "0.11.0rc1"."""
    train = adhoc_run({**MODEL, "mode": "qlora", "torch-version": text, "bitsandbytes-version": text})
    assert train.knobs.torch_version == parts[:2]
    assert train.bnb_keeps_inputs == ((parts + (0,))[:3] < (0, 43, 2))  # 4-bit inputs kept before 0.43.2
    serve = adhoc_run({**MODEL, "mode": "inference", "engine": "vllm", "engine-version": text, "gpu": "A100-80GB"})
    assert serve.serve.engine_version is not None


@pytest.mark.parametrize("key, mode", [("torch-version", "train"), ("bitsandbytes-version", "qlora"), ("engine-version", "inference")])
@pytest.mark.parametrize("text", ["latest", "2.4.0-foo"])
def test_each_key_refuses_what_is_not_a_release(key, mode, text):
    extra = {"engine": "vllm", "gpu": "A100-80GB"} if mode == "inference" else {}
    with pytest.raises(ConfigError) as info:
        adhoc_run({**MODEL, "mode": mode, key: text, **extra})
    message = str(info.value)
    assert key in message and f'"{text}" is not a' in message and "\n" not in message
