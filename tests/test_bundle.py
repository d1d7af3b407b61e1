"""Issue 15 acceptance: the bundled configs cover every family the project supports, a bundled id
estimates offline, and a typo of one gets "did you mean".

The counts are literal so the test runs without torch: each is ``sum(p.numel() for p in
model.parameters())`` of the model transformers 5.24.0 builds from the bundled config.json on the meta
device (``AutoModelForCausalLM``; bert through ``AutoModelForSequenceClassification``, the family's
classifier head); ``test_bundled_counts_rederived_with_transformers`` rebuilds each when torch is installed.
"""

import json

import pytest

from pytest_llmmem.hf import hub
from pytest_llmmem.config.load import parse
from pytest_llmmem.errors import ConfigError
from pytest_llmmem.estimator import estimate
from pytest_llmmem.model.families import builtin_families
from pytest_llmmem.hf.config import from_hf_config

# Families with no bundled config yet, and why. A family leaves this table when a published
# config.json for one of its checkpoints is bundled; a new family must come with one.
NOT_BUNDLED: dict = {}

BUNDLED_COUNTS = {
    "mistralai/Mixtral-8x7B-v0.1": 46_702_792_704,
    "Qwen/Qwen1.5-MoE-A2.7B-Chat": 14_315_784_192,
    "google/gemma-2b": 2_506_172_416,
    # gpt2 by hand: wte 50257·768 + wpe 1024·768 + 12·(c_attn 768·2304+2304 + c_proj 768²+768
    # + c_fc 768·3072+3072 + mlp.c_proj 3072·768+768 + 2 LayerNorms 4·768) + ln_f 2·768; head tied
    "openai-community/gpt2": 124_439_808,
    "bigcode/gpt_bigcode-santacoder": 1_124_886_528,
    # pythia-14m by hand: embed_in + embed_out 2·50304·128 = 12,877,824; per layer qkv 128·384+384,
    # dense 128²+128, h_to_4h 128·512+512, 4h_to_h 512·128+128, 2 LayerNorms 4·128 = 198,272 (×6);
    # final LayerNorm 256 -> 14,067,712
    "EleutherAI/pythia-14m": 14_067_712,
    # phi-2 by hand: embed 51200·2560 + 32·(q,k,v,dense 4·(2560²+2560) + fc1 2560·10240+10240
    # + fc2 10240·2560+2560 + one LayerNorm 2·2560) + final LayerNorm 2·2560 + lm_head 2560·51200+51200
    "microsoft/phi-2": 2_779_683_840,
    "google-bert/bert-base-uncased": 109_483_778,
    # GLM-4-9B-0414 by hand: embed + untied lm_head 2·151552·4096 = 1,241,513,984; per layer q 4096·4096+4096,
    # k and v 4096·256+256 each (attention_bias not in the file: Glm4Config's default, true), o 4096·4096,
    # gate_up 4096·27392, down 13696·4096, 4 RMSNorms 4·4096 = 203,969,024 (×40); final norm 4096
    "zai-org/GLM-4-9B-0414": 9_400_279_040,
    # Command R7B by hand: tied embedding 256000·4096 = 1,048,576,000; per layer q, o 4096·4096 each, k, v
    # 4096·1024 each, gate/up/down 3·4096·14336, one bias-free LayerNorm 4096 = 218,107,904 (×32); final norm 4096
    "CohereLabs/c4ai-command-r7b-12-2024": 8_028_033_024,
    # Issue 23: the ids trainers' examples and users write. Each count is transformers' on the meta device, and
    # within rounding of the model card's published size (in the comment).
    "meta-llama/Meta-Llama-3-8B": 8_030_261_248,  # 8.03B
    "meta-llama/Meta-Llama-3-8B-Instruct": 8_030_261_248,  # 8.03B
    "meta-llama/Meta-Llama-3-70B": 70_553_706_496,  # 70.6B
    "meta-llama/Llama-3.1-70B": 70_553_706_496,  # 70.6B
    "meta-llama/Llama-3.1-70B-Instruct": 70_553_706_496,  # 70.6B
    "meta-llama/Llama-3.1-405B": 405_853_388_800,  # 405B
    "meta-llama/Llama-3.2-1B": 1_235_814_400,  # 1.23B
    "meta-llama/Llama-3.2-1B-Instruct": 1_235_814_400,  # 1.23B
    "meta-llama/Llama-3.2-3B-Instruct": 3_212_749_824,  # 3.21B
    "meta-llama/Llama-2-7b-hf": 6_738_415_616,  # 6.74B
    "meta-llama/Llama-2-13b-hf": 13_015_864_320,  # 13.0B
    "meta-llama/Llama-2-70b-hf": 68_976_648_192,  # 69.0B
    "mistralai/Mistral-7B-v0.1": 7_241_732_096,  # 7.24B
    "mistralai/Mistral-7B-v0.3": 7_248_023_552,  # 7.25B
    "mistralai/Mistral-Nemo-Base-2407": 12_247_782_400,  # 12.2B
    "mistralai/Mixtral-8x22B-v0.1": 140_620_634_112,  # 141B
    "Qwen/Qwen2-0.5B": 494_032_768,  # 0.49B
    "Qwen/Qwen2-0.5B-Instruct": 494_032_768,  # 0.49B
    "Qwen/Qwen2-1.5B-Instruct": 1_543_714_304,  # 1.54B
    "Qwen/Qwen2-72B-Instruct": 72_706_203_648,  # 72.7B
    "Qwen/Qwen2.5-0.5B": 494_032_768,  # 0.49B
    "Qwen/Qwen2.5-3B-Instruct": 3_085_938_688,  # 3.09B
    "Qwen/Qwen3-1.7B": 1_720_574_976,  # 1.7B
    "Qwen/Qwen3-235B-A22B": 235_093_634_560,  # 235B
    "google/gemma-2-2b-it": 2_614_341_888,  # 2.61B
    "google/gemma-2-9b-it": 9_241_705_984,  # 9.24B
    "google/gemma-2-27b": 27_227_128_320,  # 27.2B
    "microsoft/Phi-3-mini-128k-instruct": 3_821_079_552,  # 3.82B
    "microsoft/Phi-3.5-mini-instruct": 3_821_079_552,  # 3.82B
    "Qwen/Qwen2.5-1.5B": 1_543_714_304,  # 1.54B
    "Qwen/Qwen2.5-7B": 7_615_616_512,  # 7.61B
    "Qwen/Qwen2.5-32B": 32_763_876_352,  # the card's 32.5B (31.0B without embeddings: 31.2B here); the Hub's 32.8B
    "Qwen/Qwen2.5-72B": 72_706_203_648,  # 72.7B
    "deepseek-ai/DeepSeek-R1-Distill-Qwen-32B": 32_763_876_352,  # 32.8B (Qwen2.5-32B's shape)
    "meta-llama/Llama-3.3-70B-Instruct": 70_553_706_496,  # 70.6B
    "deepseek-ai/DeepSeek-R1": 671_026_404_352,  # 671B (the Hub's 685B adds the multi-token-prediction layer)
    # Issue 23 part 4, second pass: each card's figure beside the count (Qwen's "non-embedding" leaves out the
    # embedding and, when untied, the head: 14,770,033,664 - 2·152064·5120 = 13.21B for Qwen2.5-14B)
    "Qwen/Qwen2.5-14B": 14_770_033_664,  # 14.7B (13.1B non-embedding)
    "Qwen/Qwen2.5-3B": 3_085_938_688,  # 3.09B (2.77B non-embedding, tied: 3,085,938,688 - 151936·2048)
    "Qwen/Qwen3-14B": 14_768_307_200,  # 14.8B (13.2B non-embedding)
    "Qwen/Qwen3-4B": 4_022_468_096,  # 4.0B (3.6B non-embedding, tied)
    "deepseek-ai/DeepSeek-R1-Distill-Qwen-7B": 7_615_616_512,  # 7.62B (Qwen2.5-Math-7B's shape, as Qwen2.5-7B's)
    "deepseek-ai/DeepSeek-R1-Distill-Llama-70B": 70_553_706_496,  # 70.6B (Llama-3.3-70B-Instruct's shape)
    # Issue 23 part 4, third pass: Qwen2.5-7B's shape (the card's 7.61B, 6.53B non-embedding: 7,615,616,512 -
    # 2·152064·3584) and the base Mixtral's file (the card's 46.7B)
    "Qwen/Qwen2.5-7B-Instruct": 7_615_616_512,
    "mistralai/Mixtral-8x7B-Instruct-v0.1": 46_702_792_704,
    # phi-4 by hand (the card's 14B): embed + untied head 2·100352·5120 = 1,027,604,480; per layer qkv
    # 5120·(5120 + 2·1280), o 5120², gate_up 5120·35840, down 17920·5120, 2 RMSNorms 2·5120 = 340,797,440 (×40);
    # final norm 5120
    "microsoft/phi-4": 14_659_507_200,
    # falcon-40b by hand (the card's 40B): tied embedding 65024·8192 = 532,676,608; per layer fused qkv
    # 8192·(128 + 2·8)·64, dense 8192², h_to_4h and 4h_to_h 2·8192·32768, ln_attn and ln_mlp 4·8192 = 679,510,016
    # (×60); ln_f 2·8192. The instruct release's file is the one bundled, so both ids count the same
    "tiiuae/falcon-40b": 41_303_293_952,
    "tiiuae/falcon-40b-instruct": 41_303_293_952,
    # Issue 23 part 4, fourth pass: Hub files at a stated revision (a research capsule's downloads). Llama-3.1-8B's
    # shape (the card's 8.03B) and Qwen2.5-1.5B's (the card's 1.54B, 1.31B non-embedding: 1,543,714,304 - 151936·1536)
    "deepseek-ai/DeepSeek-R1-Distill-Llama-8B": 8_030_261_248,
    "Qwen/Qwen2.5-1.5B-Instruct": 1_543_714_304,
    # gemma-3-4b-it (the card's 4B; the same count as test_families.py's gemma-3-4b-pt: text 3,880,263,168 with the
    # tied 262,208-token embedding, the SigLIP tower and projector 419,816,304) from its sparse published file
    "google/gemma-3-4b-it": 4_300_079_472,
    # Mistral-Small-24B-Instruct-2501 by hand (the card's 24B): untied embedding and head 2·131072·5120 = 1,342,177,280;
    # per layer q and o 2·5120·4096, k and v 2·5120·1024, gate/up/down 3·5120·32768, 2 RMSNorms 2·5120 = 555,755,520
    # (×40); final norm 5120
    "mistralai/Mistral-Small-24B-Instruct-2501": 23_572_403_200,
    # Issue 23 part 4, fifth pass: the configs relinked to a GitHub file, counted by transformers 5.25.0 on the meta
    # device. granite-3.3-2b-instruct (tied 49,159-token embedding) and Jamba-v0.1 (52B total in the model card)
    "ibm-granite/granite-3.3-2b-instruct": 2_533_539_840,
    "ai21labs/Jamba-v0.1": 51_570_323_328,
    "microsoft/Phi-3.5-MoE-instruct": 41_873_153_344,  # 41.9B (attention and lm_head biases)
    # Issue 23 part 4, sixth pass: gemma-3-12b-it (the card's 12B) now from DiffSynth-Studio's whole literal (layer_types
    # and dtype keys kept; the count of the trimmed copy before); unsloth/Phi-4 shares microsoft/phi-4's file (by hand above)
    "google/gemma-3-12b-it": 12_187_325_040,
    "unsloth/Phi-4": 14_659_507_200,
    # Qwen2.5-72B-Instruct: Qwen2.5-72B's shape (the card's 72.7B; the inspection report it is quoted from sums its 37
    # safetensors files to 72,706,203,648). DeepSeek-R1-Distill-Qwen-1.5B by hand (the Hub's 1.78B): untied embedding
    # and head 2·151936·1536 = 466,747,392; per layer q 1536²+1536, k and v 1536·256+256 each, o 1536², gate/up/down
    # 3·1536·8960, 2 RMSNorms 2·1536 = 46,797,824 (×28); final norm 1536
    "Qwen/Qwen2.5-72B-Instruct": 72_706_203_648,
    "deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B": 1_777_088_000,
    # Issue 23 part 4, seventh pass (transformers 5.25.0 on the meta device). Qwen2.5-32B-Instruct: Qwen2.5-32B's shape
    # (the card's 32.5B); its checkpoint folder's model.safetensors.index.json has total_size 65,527,752,704 bf16 bytes, 2·this
    "Qwen/Qwen2.5-32B-Instruct": 32_763_876_352,
    # Qwen2.5-0.5B-Instruct: Qwen2.5-0.5B's shape (the card's 0.49B, 0.36B non-embedding: tied, 494,032,768 - 151936·896)
    "Qwen/Qwen2.5-0.5B-Instruct": 494_032_768,
    # gemma-3-27b-it (the card's 27B): its config.json as transformers 4.56.2 re-serialises it, the text and SigLIP towers
    "google/gemma-3-27b-it": 27_432_406_640,
}

# The ids issue 23 part 4 bundled (second pass on): each is estimated offline through the CLI below.
NEWLY_BUNDLED = ("Qwen/Qwen2.5-14B", "Qwen/Qwen2.5-3B", "Qwen/Qwen3-14B", "Qwen/Qwen3-4B",
                 "deepseek-ai/DeepSeek-R1-Distill-Qwen-7B", "deepseek-ai/DeepSeek-R1-Distill-Llama-70B",
                 "Qwen/Qwen2.5-7B-Instruct", "mistralai/Mixtral-8x7B-Instruct-v0.1", "microsoft/phi-4",
                 "tiiuae/falcon-40b-instruct", "deepseek-ai/DeepSeek-R1-Distill-Llama-8B", "Qwen/Qwen2.5-1.5B-Instruct",
                 "google/gemma-3-4b-it", "mistralai/Mistral-Small-24B-Instruct-2501", "Qwen/Qwen2.5-72B-Instruct",
                 "deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B", "Qwen/Qwen2.5-32B-Instruct",
                 "Qwen/Qwen2.5-0.5B-Instruct", "google/gemma-3-27b-it")


def _bundled_config(model_id: str) -> dict:
    entry = hub.bundled_index()[model_id]
    return json.loads((hub.BUNDLED / entry["folder"] / "config.json").read_text())


@pytest.fixture
def offline(tmp_path, monkeypatch):
    """An empty Hub cache, and a download that fails the test if anything tries it."""
    root = tmp_path / "hub"
    root.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(root))
    monkeypatch.setattr(hub, "download", lambda *a: pytest.fail(f"tried the network for {a}"))
    return root


def test_every_family_in_the_table_has_a_bundled_config():
    families = {family.name for family in builtin_families()}
    bundled = {entry["family"] for entry in hub.bundled_index().values()}
    assert bundled <= families, bundled - families
    assert families - bundled == set(NOT_BUNDLED)


@pytest.mark.parametrize("model_id", sorted(BUNDLED_COUNTS))
def test_bundled_count_is_exact(model_id):
    arch = from_hf_config(_bundled_config(model_id), source=model_id)
    assert arch.family.name == hub.bundled_index()[model_id]["family"]
    assert arch.param_count() == BUNDLED_COUNTS[model_id]


@pytest.mark.parametrize("model_id", sorted(BUNDLED_COUNTS))
def test_bundled_counts_rederived_with_transformers(model_id):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    cfg = _bundled_config(model_id)
    model_type = cfg.pop("model_type")
    config = transformers.AutoConfig.for_model(model_type, **cfg)
    auto = transformers.AutoModelForSequenceClassification if model_type == "bert" else transformers.AutoModelForCausalLM
    with torch.device("meta"):
        model = auto.from_config(config)
    assert sum(p.numel() for p in model.parameters()) == BUNDLED_COUNTS[model_id]


def test_a_new_bundled_id_estimates_offline(offline):
    text = '[tool.llmmem]\ngpu = "H100-80GB"\nmodel = "microsoft/phi-2"\n[[tool.llmmem.runs]]\nname = "serve"\nmode = "inference"\ndtype = "bf16"\n'
    run = parse(text).runs[0]
    assert run.model.param_count() == BUNDLED_COUNTS["microsoft/phi-2"]
    assert run.model.source.replace("\\", "/").endswith("models/microsoft--phi-2/config.json")
    result = estimate(run)
    # bf16 weights: 2 bytes per parameter, 2 · 2,779,683,840 = 5,559,367,680
    assert result.breakdown["weights"] == 5_559_367_680
    assert (result.partial, result.approximate) == ((), ())
    assert result.total_bytes > result.breakdown["weights"]


def test_a_typo_of_a_new_id_gets_did_you_mean(offline):
    with pytest.raises(ConfigError) as err:
        parse('[tool.llmmem]\ngpu = "H100-80GB"\nmodel = "microsoft/phi2"\n[[tool.llmmem.runs]]\nname = "a"\nmode = "lora"\n')
    assert 'Did you mean "microsoft/phi-2"?' in str(err.value)


@pytest.mark.parametrize("word, suggested", [
    ("meta-llama/Llama-3.1-70B-Instruct", ""),  # another size is another model (issue 23 §3)
    ("meta-llama/llama-3.1-8b-instruct", "meta-llama/Llama-3.1-8B-Instruct"),  # the same size, another case
    ("Qwen/Qwen2.5-15B", ""), ("Qwen/Qwen2.5-1.5b", "Qwen/Qwen2.5-1.5B"),  # 15B is not 1.5B
    ("microsoft/Phi-3-mini-128k-instruct", ""),  # the 4k context model is another checkpoint
    ("meta-llama/Llama-3.1", "meta-llama/Llama-3.1-8B"),  # no size written: any size may be meant
    ("google/gemma-3-27b-it", ""),  # Gemma 3 is not Gemma 2 at the same size: the digits differ (3 27 / 2 27)
    ("mistralai/Mistral-7B-Instruct-v0.2", ""),  # v0.2 is not v0.3 (another vocabulary)
    ("meta-llama/Llama-31-8B", "meta-llama/Llama-3.1-8B"),  # a dropped dot keeps the digits 3 1 8
])
def test_did_you_mean_never_changes_the_model_size(word, suggested):
    from pytest_llmmem.errors import did_you_mean

    options = ["meta-llama/Llama-3.1-8B", "meta-llama/Llama-3.1-8B-Instruct", "Qwen/Qwen2.5-1.5B", "microsoft/Phi-3-mini-4k-instruct",
               "google/gemma-2-27b", "mistralai/Mistral-7B-Instruct-v0.3"]
    assert did_you_mean(word, options) == (f' Did you mean "{suggested}"?' if suggested else "")


def test_catalog_lists_the_new_ids(offline, run_cli):
    code, out, _ = run_cli("catalog", "models")
    assert code == 0
    for model_id in BUNDLED_COUNTS:
        assert model_id in out


SOURCE_FORMS = {  # how index.json's taken_from names where each config.json was copied from (hub.bundled_index)
    "github": r"github:[\w.-]+/[\w.-]+@[0-9a-f]{40}:[\w./-]+(#L\d+|#\w+\['[^']+'\])?",
    "validation": r"validation:(archs|serving|measured2)\.jsonl#[\w.-]+",
    "index": r"index:\d+",
}


def test_every_bundled_config_records_where_it_came_from():
    """One index entry per bundled folder (no config without a source, no source without a config), each
    with a source in one of the three forms, a Hub revision only as a full commit, and any second source a
    GitHub file (checked by benchmarks/check_bundle_sources.py against a clone)."""
    import re

    index = hub.bundled_index()
    folders = {p.name for p in hub.BUNDLED.iterdir() if p.is_dir() and not p.name.startswith(("_", "."))}
    assert folders == {entry["folder"] for entry in index.values()}
    for model_id, entry in index.items():
        if entry.get("same_as"):  # a release sharing another id's file: its folder, its family
            base = index[entry["same_as"]]
            assert (entry["folder"], entry["family"]) == (base["folder"], base["family"]) and not base.get("same_as"), model_id
        else:
            assert entry["folder"] == model_id.replace("/", "--")
        assert any(re.fullmatch(form, entry["taken_from"]) for form in SOURCE_FORMS.values()), (model_id, entry["taken_from"])
        assert entry["revision"] is None or re.fullmatch(r"[0-9a-f]{40}", entry["revision"]), model_id
        assert "checked_against" not in entry or re.fullmatch(SOURCE_FORMS["github"], entry["checked_against"]), model_id
        for key, where in entry.get("added", {}).items():  # a key the source lacks: in the file, from a GitHub document
            assert key in _bundled_config(model_id) and re.fullmatch(SOURCE_FORMS["github"], where), (model_id, key)
        assert entry["source"]  # the prose: what was copied, what was left out


def _check_bundle_sources():
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("check_bundle_sources", Path(__file__).parents[1] / "benchmarks" / "check_bundle_sources.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_github_source_is_one_the_checker_reads():
    """benchmarks/check_bundle_sources.py re-reads each github: locator from a clone; one it cannot parse
    would be skipped as "not checkable" and never re-checked."""
    checker = _check_bundle_sources()
    locators = [entry[field] for entry in hub.bundled_index().values() for field in ("taken_from", "checked_against") if entry.get(field, "").startswith("github:")]
    assert len(locators) >= 20
    assert all(checker.GITHUB.match(locator) for locator in locators), [loc for loc in locators if not checker.GITHUB.match(loc)]


def test_the_checker_reads_each_source_form():
    """The three github: forms, read from file text the way the checker reads ``git show COMMIT:PATH``:
    a whole JSON file, the JSON object opening on line n (a C# raw string here, as in dotLLM's test), and a
    Python dict literal; a value that differs is named, keys the source has beyond the bundled ones counted."""
    checker = _check_bundle_sources()
    config = {"model_type": "smollm3", "hidden_size": 2048, "no_rope_layers": [1, 1, 1, 0]}
    whole = checker.GITHUB.match("github:o/r@" + "a" * 40 + ":testdata/config.json")
    assert checker.read_source(json.dumps(dict(config, torch_dtype="bfloat16")), whole) == dict(config, torch_dtype="bfloat16")
    quoted = 'const string json = """\n{\n  "model_type": "smollm3", "hidden_size": 2048,\n  "no_rope_layers": [1,1,1,0]\n}\n""";\n'
    on_line_2 = checker.GITHUB.match("github:o/r@" + "a" * 40 + ":Tests.cs#L2")
    assert checker.read_source("// line 1\n" + quoted, checker.GITHUB.match("github:o/r@" + "a" * 40 + ":Tests.cs#L3")) == config
    assert checker.read_source("// line 1\n" + quoted, on_line_2) is None  # no object opens on line 2
    preset = checker.GITHUB.match("github:o/r@" + "a" * 40 + ":preset.py#PRESETS['smol']")
    assert checker.read_source("PRESETS = {'smol': " + repr(config) + "}\n", preset) == config
    assert checker.compare(config, dict(config, torch_dtype="bfloat16", use_cache=True)) == "every key equal (the source has 2 more keys)"
    assert checker.compare(config, dict(config, hidden_size=4096)) == "DIFFERS in hidden_size"
    assert checker.compare(config, {"model_type": "smollm3"}) == "DIFFERS in hidden_size, no_rope_layers"
    # a key index.json's "added" names (taken from another document) is not looked for in the source
    assert checker.compare(config, {"model_type": "smollm3", "no_rope_layers": [1, 1, 1, 0]}, {"hidden_size": "github:o/r@x:README.md#L1"}) == "every key equal"


def test_catalog_shows_each_config_source_and_revision(offline, run_cli):
    code, out, _ = run_cli("catalog", "models", "--urls")
    lines = out.splitlines()
    assert code == 0 and len([line for line in lines if line.startswith("    from ")]) == len(hub.bundled_index())
    # the revision pythia-14m's source states (config_source.source_commit), as 12 characters
    assert any(line.split() == ["EleutherAI/pythia-14m", "gpt_neox", "94f7c35d5e9f"] for line in lines)
    # a github: locator is printed as the link of the file at its commit, the line anchor kept
    mlc = "https://github.com/mlc-ai/mlc-llm/blob/79d603f085f50500e9509fa01785ffa7ecfaaa93/python/mlc_llm/model/model_preset.py"
    at = next(i for i, line in enumerate(lines) if line.split() == ["Qwen/Qwen3-0.6B", "qwen3", "-"])
    assert lines[at + 1] == f"    from {mlc}#L1725"
    assert f"    same values in {mlc}#L388" in lines  # Mixtral-8x7B-v0.1's second source
    at = next(i for i, line in enumerate(lines) if line.split() == ["meta-llama/Meta-Llama-3.1-70B", "llama", "-"])
    assert lines[at + 2] == "    the same config.json as meta-llama/Llama-3.1-70B"


def test_every_github_locator_becomes_a_link():
    """source_url: github:OWNER/REPO@COMMIT:PATH[#L<n>] -> https://github.com/OWNER/REPO/blob/COMMIT/PATH[#L<n>]."""
    commit = "a" * 40
    assert hub.source_url(f"github:o/r@{commit}:dir/config.json") == f"https://github.com/o/r/blob/{commit}/dir/config.json"
    assert hub.source_url(f"github:o/r@{commit}:t.py#L12") == f"https://github.com/o/r/blob/{commit}/t.py#L12"
    assert hub.source_url(f"github:o/r@{commit}:p.py#PRESETS['x']") == f"https://github.com/o/r/blob/{commit}/p.py"
    assert hub.source_url("index:123") == "index:123"


def test_every_bundled_config_names_a_public_file():
    """Issue 23 part 4: every bundled config names a file a user can open, a GitHub file at a commit (the last
    two unlinked ones, gemma-3-12b-it's code-search id and unsloth/Phi-4's validation row, were linked: 12 before
    the issue's second pass, then 11, 8, 7, 6, 5, 4, 3, 2, 0)."""
    unlinked = {model_id: entry["taken_from"] for model_id, entry in hub.bundled_index().items()
                if not hub.source_url(entry["taken_from"]).startswith("https://github.com/")}
    assert unlinked == {}


def test_the_checker_passes_the_bundle_and_fails_a_config_naming_no_public_file(capsys, tmp_path, monkeypatch):
    """benchmarks/check_bundle_sources.py exits 0 on the bundle (no clone given: each locator "not checkable
    here", none without a public file), and 1 naming an id whose taken_from is a code-search id or a validation
    row, with what it names instead."""
    checker = _check_bundle_sources()
    assert checker.without_public_url(hub.bundled_index()) == {}
    assert checker.without_public_url({"a/b": {"taken_from": "github:o/r@" + "a" * 40 + ":config.json"}, "c/d": {"taken_from": "index:1"}}) == {"c/d": "index:1"}
    assert checker.main([]) == 0
    assert "name no public file" not in capsys.readouterr().out
    (tmp_path / "o--m").mkdir()
    (tmp_path / "o--m" / "config.json").write_text('{"model_type": "llama"}')
    (tmp_path / "index.json").write_text(json.dumps({"o/m": {"folder": "o--m", "taken_from": "validation:serving.jsonl#row-1"}}))
    monkeypatch.setattr(checker, "MODELS", tmp_path)
    assert checker.main([]) == 1
    out = capsys.readouterr().out
    assert "o/m: no public URL (taken_from validation:serving.jsonl#row-1)" in out
    assert "1 bundled configs name no public file" in out


# Families whose modeling has no position limit: vLLM takes any declared max-model-len and defaults to 2048
# (vllm/config/model.py _get_and_verify_max_len, no length key in config.json). MambaConfig has no such key.
NO_POSITION_LIMIT = {"mamba"}
# Bundled configs whose published context limit was not found in a public copy of the file (issue 23 part 2);
# GLM-4-9B-0414's came from its README (index.json "added"), so none is left.
CONTEXT_NOT_FOUND: set = set()


@pytest.mark.parametrize("model_id", sorted(hub.bundled_index()))
def test_every_bundled_config_yields_a_context_limit(model_id):
    entry = hub.bundled_index()[model_id]
    limit, why = from_hf_config(_bundled_config(model_id), source=model_id).context()
    if entry["family"] in NO_POSITION_LIMIT or model_id in CONTEXT_NOT_FOUND:
        assert limit == 0
    else:
        assert limit >= 512 and why, model_id


@pytest.mark.parametrize("model_id, limit", [
    ("meta-llama/Llama-2-7b-hf", 4096), ("meta-llama/Llama-3.2-3B", 131072), ("Qwen/Qwen2-7B", 131072),
    ("unsloth/Mistral-7B-v0.2", 32768), ("tiiuae/falcon-7b", 2048), ("tiiuae/falcon-40b", 2048), ("ai21labs/Jamba-v0.1", 262144),
    ("zai-org/GLM-4-9B-0414", 32768),  # THUDM/GLM-4 README.md:137 "natively trained with a 32K context"
])
def test_the_configs_that_had_no_limit_carry_the_published_one(model_id, limit):
    assert from_hf_config(_bundled_config(model_id), source=model_id).context()[0] == limit


def test_falcon_7bs_published_remote_code_config_reads_as_falcon():
    # the bundled file is falcon-7b's config.json as the Hub served it in 2023 (model_type RefinedWebModel, n_head,
    # n_layer); it was "not a known family" before the falcon family took that model_type as an alias. By hand: tied
    # embedding 65024·4544 = 295,469,056; per layer fused qkv 4544·(71 + 2)·64 (multi-query: one K, one V head),
    # dense 4544², h_to_4h and 4h_to_h 2·4544·18176, one LayerNorm (parallel attention) 2·4544 = 207,070,080 (×32);
    # ln_f 2·4544 -> 6,921,720,704, the count the Falcon-format copy bundled before gave
    cfg = _bundled_config("tiiuae/falcon-7b")
    assert (cfg["model_type"], cfg["n_head"], cfg["n_layer"]) == ("RefinedWebModel", 71, 32)
    arch = from_hf_config(cfg, source="tiiuae/falcon-7b")
    assert (arch.family.name, arch.num_heads, arch.num_kv_heads, arch.num_layers) == ("falcon", 71, 1, 32)
    assert arch.param_count() == 6_921_720_704


def test_seq_len_past_llama2s_4096_is_refused(offline, run_cli, tmp_path):
    # issue 23: seq-len = 65536 on the bundled Llama-2-7b-hf used to FIT (its copy had no max_position_embeddings)
    (tmp_path / "pyproject.toml").write_text('[tool.llmmem]\ngpu = "H100-80GB"\nmodel = "meta-llama/Llama-2-7b-hf"\n'
                                             '[[tool.llmmem.runs]]\nname = "sft"\nmode = "lora"\nseq-len = 65536\n')
    code, _, err = run_cli("check", tmp_path / "pyproject.toml")
    assert code == 2 and "65,536 tokens is past the model's context of 4,096" in err


@pytest.mark.parametrize("model_id", ["meta-llama/Meta-Llama-3-8B", "mistralai/Mistral-7B-v0.1", "meta-llama/Meta-Llama-3.1-70B",
                                      "meta-llama/Llama-3.3-70B-Instruct", "Qwen/Qwen2.5-7B",
                                      "meta-llama/Llama-3.1-70B-Instruct", "Qwen/Qwen2.5-0.5B", "Qwen/Qwen2-0.5B-Instruct"])
def test_ids_from_the_trainers_examples_estimate_offline(offline, run_cli, tmp_path, model_id):
    """axolotl's and LLaMA-Factory's examples name these ids (base_model / model_name_or_path); TRL's docs Qwen2-0.5B-Instruct."""
    (tmp_path / "train.yml").write_text(f"base_model: {model_id}\nadapter: qlora\nload_in_4bit: true\nlora_r: 16\nsequence_len: 2048\n"
                                        "micro_batch_size: 1\ngradient_checkpointing: true\n")
    (tmp_path / "pyproject.toml").write_text('[tool.llmmem]\ngpu = "H100-80GB"\n[[tool.llmmem.runs]]\nfrom = "train.yml"\n')
    code, out, err = run_cli("check", tmp_path / "pyproject.toml", "--format", "json")
    assert code in (0, 1), err
    assert json.loads(out)["runs"][0]["params"] == BUNDLED_COUNTS.get(model_id, BUNDLED_COUNTS.get(model_id.replace("Meta-Llama-3.1", "Llama-3.1")))


@pytest.mark.parametrize("model_id", NEWLY_BUNDLED)
def test_each_newly_bundled_id_estimates_offline_through_the_cli(offline, run_cli, model_id):
    code, out, err = run_cli("estimate", "--model", model_id, "--mode", "inference", "--gpu", "H100-80GB", "--format", "json")
    assert code in (0, 1), err
    run = json.loads(out)["runs"][0]
    assert run["params"] == BUNDLED_COUNTS[model_id]
    # bf16 weights, the estimate's default dtype: 2 bytes per parameter
    assert run["breakdown"]["weights"] == 2 * BUNDLED_COUNTS[model_id]


def test_glm4_0414s_published_context_refuses_a_longer_sequence(offline, run_cli):
    # issue 23: the bundled GLM-4-9B-0414 carried no limit, so 65,536 tokens were priced (1,146.58 GiB, OVER)
    code, out, err = run_cli("estimate", "--model", "zai-org/GLM-4-9B-0414", "--mode", "lora", "--lora-targets", "all-linear",
                             "--seq-len", "65536", "--gpu", "H100-80GB")
    assert code == 2 and "65,536 tokens is past the model's context of 32,768" in err, err
