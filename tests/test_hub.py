"""model = "org/name": the Hugging Face cache (a real layout in a temp dir), the bundled configs, the error."""

import json
import struct
from pathlib import Path

import pytest

from pytest_llmmem.hf import hub
from pytest_llmmem.config.load import parse
from pytest_llmmem.errors import ConfigError

COMMIT = "0123456789abcdef0123456789abcdef01234567"
OTHER = "fedcba9876543210fedcba9876543210fedcba98"
QWEN3_8B_PARAMS = 8_190_735_360  # shared validation archs.jsonl: transformers 5.24 on the meta device
# A 2-layer llama: embed 1000·64 + head 1000·64 + 2·(q,k,v,o 4·64·64 + gate,up,down 3·64·128 + 2 norms·64) + final norm 64
TINY_PARAMS = 64_000 + 64_000 + 2 * (4 * 64 * 64 + 3 * 64 * 128 + 2 * 64) + 64  # = 210,240
TINY = {"model_type": "llama", "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 4,
        "intermediate_size": 128, "vocab_size": 1000, "tie_word_embeddings": False}


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """An empty Hub cache that HF_HUB_CACHE points at (so the machine's own cache never leaks in)."""
    root = tmp_path / "hub"
    root.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(root))
    return root


def _snapshot(root: Path, model_id: str, commit: str, config: dict, branch: str = "main") -> Path:
    """The layout huggingface_hub writes: refs/<branch> holds the commit, snapshots/<commit>/ the files."""
    repo = root / ("models--" + model_id.replace("/", "--"))
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / branch).write_text(commit)
    snap = repo / "snapshots" / commit
    snap.mkdir(parents=True)
    (snap / "config.json").write_text(json.dumps(config))
    return snap


def _safetensors(path: Path, tensors: dict) -> None:
    """Header only (8-byte little-endian length + JSON): all the reader looks at."""
    header, offset = {}, 0
    for name, (dtype, shape) in tensors.items():
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset]}
    blob = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(blob)) + blob)


def _project(model_line: str) -> str:
    return f'[tool.llmmem]\ngpu = "H100-80GB"\n{model_line}\n[[tool.llmmem.runs]]\nname = "a"\nmode = "lora"\n'


def test_bundled_id_estimates_with_no_config_json(cache):
    run = parse(_project('model = "Qwen/Qwen3-8B"')).runs[0]
    assert run.model.param_count() == QWEN3_8B_PARAMS
    assert Path(run.model.source).parts[-3:] == ("models", "Qwen--Qwen3-8B", "config.json")


def test_cache_wins_over_bundled_and_follows_refs(cache):
    small = dict(json.loads((hub.BUNDLED / "Qwen--Qwen3-8B" / "config.json").read_text()), num_hidden_layers=1)
    _snapshot(cache, "Qwen/Qwen3-8B", COMMIT, small)
    found = hub.resolve("Qwen/Qwen3-8B")
    assert (found.origin, found.revision) == ("hub cache", COMMIT)
    assert parse(_project('model = "Qwen/Qwen3-8B"')).runs[0].model.num_layers == 1
    # a branch other than main, and a commit named directly
    _snapshot(cache, "org/tiny", OTHER, TINY, branch="dev")
    assert hub.resolve("org/tiny", "dev").revision == OTHER
    assert hub.resolve("org/tiny", OTHER).config_path == cache / "models--org--tiny" / "snapshots" / OTHER / "config.json"
    text = _project('[tool.llmmem.model]\nid = "org/tiny"\nrevision = "dev"')
    assert parse(text).runs[0].model.param_count() == TINY_PARAMS


def test_safetensors_headers_cross_check_the_count(cache):
    snap = _snapshot(cache, "org/tiny", COMMIT, TINY)
    (snap / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"a": "model-1.safetensors", "b": "model-2.safetensors"}}))
    _safetensors(snap / "model-1.safetensors", {"a": ("BF16", [TINY_PARAMS - 64])})
    _safetensors(snap / "model-2.safetensors", {"b": ("BF16", [64]), "__metadata__": ("x", [])})
    found = hub.resolve("org/tiny")
    assert (found.stored_params, found.stored_dtypes) == (TINY_PARAMS, ("bf16",))
    assert parse(_project('model = "org/tiny"')).runs[0].model.approximate == ()
    # a checkpoint holding 10 % more than config.json explains: the estimate says it is approximate
    _safetensors(snap / "model-2.safetensors", {"b": ("BF16", [64 + 21_024])})
    model = parse(_project('model = "org/tiny"')).runs[0].model
    assert any("231,264" in note for note in model.approximate), model.approximate


def test_unknown_id_names_the_three_ways_and_the_near_miss(cache):
    with pytest.raises(ConfigError) as err:
        parse(_project('model = "Qwen/Qwen3-8b"'), path="pyproject.toml")
    text = str(err.value)
    assert 'Did you mean "Qwen/Qwen3-8B"?' in text
    assert "Hugging Face cache" in text and "llmmem catalog models" in text and "allow-network" in text
    assert err.value.line == 3


def test_not_an_id_and_conflicting_keys(cache):
    with pytest.raises(ConfigError, match="not a Hugging Face model id"):
        parse(_project('model = "../etc/passwd"'))
    with pytest.raises(ConfigError, match="either config"):
        parse(_project('[tool.llmmem.model]\nid = "Qwen/Qwen3-8B"\nconfig = "config.json"'))
    with pytest.raises(ConfigError, match="only applies with id"):
        parse(_project('[tool.llmmem.model]\nparams = "7B"\nrevision = "main"'))


def test_network_off_by_default_and_download_refuses_offline(cache, monkeypatch):
    """allow-network goes to huggingface_hub; with HF_HUB_OFFLINE=1 its real hf_hub_download raises
    LocalEntryNotFoundError without touching the network, and the message says offline mode is why."""
    pytest.importorskip("huggingface_hub")
    called = []
    monkeypatch.setattr(hub, "download", lambda *a: called.append(a))
    with pytest.raises(ConfigError):
        hub.resolve("org/absent")
    assert called == []
    monkeypatch.undo()
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants as constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)  # read once at import (huggingface_hub/constants.py)
    with pytest.raises(ConfigError) as err:
        hub.resolve("org/absent", allow_network=True)
    assert "could not be downloaded: huggingface_hub is in offline mode (HF_HUB_OFFLINE" in err.value.message
    assert err.value.hint.startswith("Unset HF_HUB_OFFLINE") and "hf download org/absent config.json" in err.value.hint and err.value.key == "allow-network"


def _gated_hf_hub_download(repo_id, filename, revision=None, **_):
    """What hf_hub_download raises for a gated repo: the Hub answers 401 with X-Error-Code GatedRepo and
    huggingface_hub's own hf_raise_for_status turns that into GatedRepoError (utils/_http.py)."""
    httpx = pytest.importorskip("httpx2")  # the HTTP client huggingface_hub >= 1.x builds responses with
    from huggingface_hub.utils import hf_raise_for_status

    url = f"https://huggingface.co/{repo_id}/resolve/{revision or 'main'}/{filename}"
    response = httpx.Response(401, request=httpx.Request("HEAD", url), headers={
        "X-Error-Code": "GatedRepo", "X-Error-Message": f"Access to model {repo_id} is restricted. Please log in."})
    hf_raise_for_status(response)


def test_a_gated_model_without_a_token_says_so_and_how_to_log_in(cache, monkeypatch, tmp_path, run_cli):
    huggingface_hub = pytest.importorskip("huggingface_hub")
    from huggingface_hub import constants
    from huggingface_hub.utils import GatedRepoError

    with pytest.raises(GatedRepoError):  # the fake raises the real error, as the library builds it
        _gated_hf_hub_download("meta-llama/Llama-4-Scout-17B-16E-Instruct", "config.json")
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", _gated_hf_hub_download)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HF_OIDC_RESOURCE", raising=False)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))  # no `hf auth login` token either
    (tmp_path / "pyproject.toml").write_text('[tool.llmmem]\ngpu = "H100-80GB"\n[tool.llmmem.model]\n'
                                             'id = "meta-llama/Llama-4-Scout-17B-16E-Instruct"\nallow-network = true\n'
                                             '[[tool.llmmem.runs]]\nname = "serve"\nmode = "inference"\n')
    code, out, err = run_cli("check", tmp_path / "pyproject.toml")
    assert code == 2 and "Traceback" not in err, out + err
    assert '"meta-llama/Llama-4-Scout-17B-16E-Instruct" is a gated model on the Hugging Face Hub and no token is set' in err
    assert "export HF_TOKEN=" in err and "hf auth login" in err and "huggingface-cli login" in err
    monkeypatch.setenv("HF_TOKEN", "hf_notallowed")  # a token whose account has not accepted the licence
    with pytest.raises(ConfigError, match="the token huggingface_hub found has no access to it"):
        hub.resolve("meta-llama/Llama-4-Scout-17B-16E-Instruct", allow_network=True)


def test_an_unreachable_hub_is_one_clear_error(cache, monkeypatch):
    """No network and no offline flag: hf_hub_download raises LocalEntryNotFoundError (file_download.py
    _raise_on_head_call_error); the message names the network, not offline mode."""
    huggingface_hub = pytest.importorskip("huggingface_hub")
    from huggingface_hub import constants
    from huggingface_hub.utils import LocalEntryNotFoundError

    def unreachable(*_a, **_k):
        raise LocalEntryNotFoundError("An error happened while trying to locate the file on the Hub and we cannot find "
                                      "the requested files in the local cache.")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", unreachable)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    with pytest.raises(ConfigError) as err:
        hub.resolve("org/absent", allow_network=True)
    assert err.value.message == (f'"org/absent" could not be downloaded: the Hugging Face Hub could not be reached (no network, '
                                 f"a proxy, or the Hub is down), and config.json is not in the cache ({cache}).")


def test_cli_model_flag_and_catalog(cache, run_cli):
    code, out, err = run_cli("estimate", "--model", "Qwen/Qwen3-8B", "--mode", "inference", "--gpu", "H100-80GB")
    assert code == 0 and "8.19B params" in out, err
    code, out, err = run_cli("estimate", "--model", "Qwen/Qwen3-8b", "--gpu", "H100-80GB")
    assert code == 2 and "--model" in err and 'Did you mean "Qwen/Qwen3-8B"' in err
    code, out, _ = run_cli("catalog", "models")
    assert code == 0 and "Qwen/Qwen3-8B" in out and "meta-llama/Llama-3.1-8B" in out


def test_every_bundled_config_reads():
    """Each bundled config builds an Architecture of the family the index names."""
    from pytest_llmmem.hf.config import from_hf_config

    for model_id, entry in hub.bundled_index().items():
        arch = from_hf_config(json.loads((hub.BUNDLED / entry["folder"] / "config.json").read_text()), source=model_id)
        assert arch.family.name == entry["family"], model_id
        assert entry["source"]


def test_quantization_config_sets_the_served_weight_format(cache):
    """A bitsandbytes 4-bit checkpoint (quantization_config as from_pretrained writes it) serves in nf4
    unless the run says otherwise; training keeps its own default."""
    quant = dict(TINY, quantization_config={"quant_method": "bitsandbytes", "load_in_4bit": True, "bnb_4bit_quant_type": "nf4"})
    _snapshot(cache, "org/tiny-bnb", COMMIT, quant)
    text = ('[tool.llmmem]\ngpu = "H100-80GB"\nmodel = "org/tiny-bnb"\n[[tool.llmmem.runs]]\nname = "a"\nmode = "inference"\n'
            '[[tool.llmmem.runs]]\nname = "b"\nmode = "inference"\ndtype = "bf16"\n[[tool.llmmem.runs]]\nname = "c"\nmode = "lora"\n')
    a, b, c = parse(text).runs
    assert (a.dtype.name, b.dtype.name, c.dtype.name) == ("nf4", "bf16", "bf16")
    assert dict(a.settings_from)["dtype"] == "config.json: quantization_config (nf4)"
    assert hub.checkpoint_format({"quantization_config": {"quant_method": "bitsandbytes", "load_in_4bit": True}}) == "int4"  # BitsAndBytesConfig default fp4
    assert hub.checkpoint_format({"quantization_config": {"quant_method": "fp8"}}) == "fp8"
    assert hub.checkpoint_format({"torch_dtype": "bfloat16"}) is None
