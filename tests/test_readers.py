"""from = "train.yaml": published example configs of each trainer (tests/data/trainer_configs/, each
naming its source path) map to the runs a user of that trainer would declare by hand."""

import json
import shutil
from pathlib import Path

import pytest

from pytest_llmmem.hf import hub
from pytest_llmmem.config.load import parse
from pytest_llmmem.errors import ConfigError
from pytest_llmmem.report.layout import unfit

pytest.importorskip("yaml")
DATA = Path(__file__).parent / "data" / "trainer_configs"
COMMIT = "0123456789abcdef0123456789abcdef01234567"
LLAMA = hub.BUNDLED / "meta-llama--Llama-3.1-8B" / "config.json"
QWEN = hub.BUNDLED / "Qwen--Qwen3-0.6B" / "config.json"
# Ids the examples name that are not bundled: a cache entry with a bundled config of the same family as
# a shape stand-in (these tests check the mapping, not the model's size).
CACHED = {
    "NousResearch/Meta-Llama-3-8B": LLAMA, "meta-llama/Meta-Llama-3-8B": LLAMA, "NousResearch/Meta-Llama-3.1-8B": LLAMA,
    "meta-llama/Meta-Llama-3-8B-Instruct": LLAMA, "Qwen/Qwen3-4B-Instruct-2507": QWEN, "Qwen/Qwen2.5-0.5B": QWEN,
}
ALL7 = ["q_proj", "v_proj", "k_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    root = tmp_path / "hub"
    for model_id, config in CACHED.items():
        repo = root / ("models--" + model_id.replace("/", "--"))
        (repo / "refs").mkdir(parents=True)
        (repo / "refs" / "main").write_text(COMMIT)
        (repo / "snapshots" / COMMIT).mkdir(parents=True)
        shutil.copy(config, repo / "snapshots" / COMMIT / "config.json")
    monkeypatch.setenv("HF_HUB_CACHE", str(root))
    return root


def _run(relpath: str, extra: str = "", tmp: Path = None):
    text = f'[tool.llmmem]\ngpu = "H100-80GB"\n[[tool.llmmem.runs]]\nfrom = "{DATA / relpath}"\n{extra}'
    return parse(text, base_dir=tmp or DATA).runs[0]


# (fixture, model id, expected run fields, expected knobs, not-modelled keys). Each figure is the example's
# own value or the trainer default the reader cites (see pytest_llmmem/config/readers/<format>.py).
CASES = [
    ("axolotl/lora-8b.yml", "NousResearch/Meta-Llama-3-8B",
     dict(mode="lora", dtype="int8", lora_rank=32, lora_dropout=0.05, lora_targets=("all-linear",), batch_size=2, seq_len=4096,
          optimizer="adamw-8bit", gradient_checkpointing=True, flash_attention=True,
          modules_to_save=("embed_tokens", "lm_head")), {}, []),
    ("axolotl/qlora.yml", "NousResearch/Meta-Llama-3-8B",
     dict(mode="qlora", dtype="nf4", lora_rank=32, lora_dropout=0.05, lora_targets=("all-linear",), batch_size=2, seq_len=4096,
          optimizer="paged-adamw", gradient_checkpointing=True, attn_implementation="flash_attention_2"), {"double_quant": True}, []),
    ("axolotl/fft-8b.yaml", "meta-llama/Meta-Llama-3-8B",
     # bf16: auto loads the model in bf16 and nothing casts it up: pure bf16 (readers/axolotl.py _precision)
     dict(mode="train", dtype="bf16", precision="pure", batch_size=1, seq_len=8192, optimizer="paged-adamw-8bit",
          gradient_checkpointing=True, attn_implementation="flash_attention_2"), {}, []),
    ("axolotl/fft-8b-liger-fsdp.yaml", "NousResearch/Meta-Llama-3.1-8B",
     # FSDP: accelerate upcasts the trainable bf16 parameters to fp32 shards (hf_args.weights_and_compute): mixed
     dict(mode="train", dtype="bf16", precision="mixed", batch_size=2, seq_len=4096, optimizer="adamw", fsdp="full-shard",
          offload="optimizer+params", gradient_checkpointing=True, attn_implementation="flash_attention_2"), {"loss": "fused", "optimizer_impl": "fused",
                                         "kernels": ("liger-rope", "liger-rms-norm", "liger-glu", "liger-fused-linear-cross-entropy")}, []),
    ("llama-factory/llama3_lora_sft_ds3.yaml", "meta-llama/Meta-Llama-3-8B-Instruct",
     # ZeRO-3: no cast_trainable_params_to_fp32, but get_peft_model's autocast_adapter_dtype keeps the adapters fp32
     # (LLaMA-Factory model/adapter.py:308, readers/llama_factory.py _precision)
     dict(mode="lora", dtype="bf16", lora_rank=8, lora_dropout=0.0, lora_targets=("all-linear",), batch_size=1, seq_len=2048, zero_stage=3,
          gradient_checkpointing=True, optimizer="adamw", adapter_dtype="fp32", autocast=False), {}, []),
    ("llama-factory/llama3_lora_dpo.yaml", "meta-llama/Meta-Llama-3-8B-Instruct",
     dict(mode="lora", dtype="bf16", lora_rank=8, batch_size=1, seq_len=2048, adapter_dtype="fp32"), {}, []),
    ("llama-factory/qwen3_lora_sft.yaml", "Qwen/Qwen3-4B-Instruct-2507",
     # bf16: true over the bf16 checkpoint, no DeepSpeed: accelerate's torch.autocast over a 16-bit model (hf_args.weights_and_compute)
     dict(mode="lora", dtype="bf16", lora_rank=8, lora_targets=("all-linear",), batch_size=1, seq_len=2048, autocast=True), {}, []),
    ("llama-factory/llama3_lora_sft_otfq.yaml", "meta-llama/Meta-Llama-3-8B-Instruct",
     dict(mode="qlora", dtype="nf4", lora_rank=8, batch_size=1, seq_len=2048), {"double_quant": True}, []),
    ("torchtune/8B_qlora_single_device.yaml", "meta-llama/Llama-3.1-8B",
     dict(mode="qlora", dtype="nf4", lora_rank=8, lora_targets=tuple(ALL7), batch_size=2, optimizer="adamw", gradient_checkpointing=True),
     {"framework": "torchtune", "loss": "chunked", "optimizer_impl": "fused"}, ["tokenizer.max_seq_len"]),
    ("torchtune/8B_lora.yaml", "meta-llama/Llama-3.1-8B",
     dict(mode="lora", dtype="bf16", lora_rank=8, lora_dropout=0.0, lora_targets=("q_proj", "v_proj"), batch_size=2, gradient_checkpointing=False),
     {"framework": "torchtune", "loss": "chunked", "optimizer_impl": "fused"}, ["tokenizer.max_seq_len"]),
    ("torchtune/8B_full.yaml", "meta-llama/Llama-3.1-8B",
     dict(mode="train", dtype="bf16", batch_size=2, fsdp="full-shard", gradient_checkpointing=True, optimizer="adamw"),
     {"framework": "torchtune", "loss": "upcast", "optimizer_impl": "for-loop"}, ["tokenizer.max_seq_len"]),
    ("torchtune/8B_full_single_device.yaml", "meta-llama/Llama-3.1-8B",
     dict(mode="train", dtype="bf16", batch_size=2, optimizer="paged-adamw-8bit", gradient_checkpointing=True),
     {"framework": "torchtune", "loss": "fused", "optimizer_in_backward": True}, ["tokenizer.max_seq_len"]),
    ("trl/example_config.yaml", "Qwen/Qwen2.5-0.5B",
     # no dtype: TRL loads fp32 and autocasts to bf16 (readers/trl.py _loaded_dtype): amp
     dict(mode="train", dtype="bf16", precision="amp", batch_size=8, seq_len=1024, gradient_checkpointing=True, optimizer="adamw"),
     {"loss": "fused"}, []),
    ("trl/sft_config_num_processes.yaml", "Qwen/Qwen2.5-0.5B", dict(mode="train", precision="amp", batch_size=8, seq_len=1024, gpus=4), {}, []),
    ("trl/sft_config_zero2.yaml", "Qwen/Qwen2.5-0.5B", dict(mode="train", precision="mixed", batch_size=8, zero_stage=2), {}, []),
    ("litgpt/llama-3-8b-lora.yaml", "meta-llama/Meta-Llama-3-8B",
     dict(mode="lora", dtype="bf16", lora_rank=32, lora_dropout=0.05, lora_targets=("q_proj", "v_proj"), batch_size=1, seq_len=512, optimizer="adamw"),
     {"framework": "litgpt"}, []),
    ("litgpt/llama-3-8b-qlora.yaml", "meta-llama/Meta-Llama-3-8B",
     dict(mode="qlora", dtype="nf4", lora_rank=32, batch_size=2, seq_len=512), {"framework": "litgpt", "double_quant": False}, []),
    ("litgpt/llama-3-8b-full.yaml", "meta-llama/Meta-Llama-3-8B",
     dict(mode="train", dtype="bf16", batch_size=4, seq_len=512, gpus=4, fsdp="full-shard"), {"framework": "litgpt"}, []),
    ("litgpt/phi-3-lora.yaml", "microsoft/Phi-3-mini-4k-instruct",
     dict(mode="lora", lora_rank=8, lora_targets=("all-linear", "lm_head"), batch_size=4, seq_len=512), {"framework": "litgpt"}, []),
]


@pytest.mark.parametrize("relpath, model_id, fields, knobs, skipped", CASES, ids=[c[0] for c in CASES])
def test_published_example_maps_to_its_run(relpath, model_id, fields, knobs, skipped):
    run = _run(relpath)
    assert run.model.source.endswith("config.json")
    assert model_id.replace("/", "--") in run.model.source
    for field, expected in fields.items():
        value = getattr(run, field)
        value = getattr(value, "name", value)  # DType / Optimizer -> its name
        assert value == expected, (field, value)
    for knob, expected in knobs.items():
        assert getattr(run.knobs, knob) == expected, (knob, getattr(run.knobs, knob))
    for key in skipped:
        assert any(key in reason for reason in run.not_modelled), run.not_modelled
    if not skipped:
        assert run.not_modelled == ()
    assert run.reads[0] == str(DATA / relpath)


def test_llama_factory_dpo_takes_the_whole_logits():
    # LLaMA-Factory's CustomDPOTrainer.concatenated_forward upcasts the whole logits and log_softmaxes them
    # (train/dpo/trainer.py), so its DPO stage maps to log-prob-head = "logits", not TRL's fused head.
    run = _run("llama-factory/llama3_lora_dpo.yaml")
    assert (run.recipe.name, run.recipe.log_prob_head) == ("dpo", "logits")


def test_every_format_has_four_examples():
    assert {p.name: len(list(p.glob("*.y*ml"))) for p in DATA.iterdir() if p.is_dir()} == {
        "axolotl": 4, "llama-factory": 4, "torchtune": 4, "trl": 4, "litgpt": 4}


def test_trl_dpo_config_takes_the_recipe_from_the_run():
    """`trl dpo --config dpo_config.yaml`: the command names the trainer, so the run says recipe = "dpo"."""
    run = _run("trl/dpo_config_num_processes.yaml", 'recipe = "dpo"\n')
    assert (run.recipe.name, run.gpus, run.batch_size) == ("dpo", 4, 8)


@pytest.mark.parametrize("yaml_keys, generation_batch, skipped", [
    ("gradient_accumulation_steps: 4\n", 32, False),  # GRPOConfig: steps_per_generation defaults to it
    ("gradient_accumulation_steps: 4\nsteps_per_generation: 2\n", 16, False),
    ("generation_batch_size: 64\n", 8, True),  # over all processes: not read as a per-GPU figure
])
def test_trl_grpo_generation_batch(tmp_path, yaml_keys, generation_batch, skipped):
    """per_device_train_batch_size 8 x steps_per_generation completions per generate() on each GPU."""
    (tmp_path / "grpo.yaml").write_text("model_name_or_path: Qwen/Qwen2.5-0.5B\nnum_generations: 8\n"
                                        "per_device_train_batch_size: 8\nmax_completion_length: 256\n" + yaml_keys)
    text = f'[tool.llmmem]\ngpu = "H100-80GB"\n[[tool.llmmem.runs]]\nfrom = "{tmp_path / "grpo.yaml"}"\nmax-prompt-length = 256\n'
    run = parse(text, base_dir=tmp_path).runs[0]
    assert run.recipe.generation_batch_size == generation_batch
    assert any("generation_batch_size" in reason for reason in run.not_modelled) is skipped


def test_run_keys_override_the_file_and_the_report_says_where_each_came_from(run_cli, tmp_path):
    run = _run("axolotl/qlora.yml", "batch-size = 8\n")
    origins = dict(run.settings_from)
    assert run.batch_size == 8 and origins["batch-size"].endswith("(the run)")
    assert origins["seq-len"] == "qlora.yml: sequence_len (sample_packing: rows packed to it)"
    assert origins["optimizer"] == "qlora.yml: optimizer"
    shutil.copy(DATA / "axolotl/lora-8b.yml", tmp_path)  # a trainer config is read only inside the repository
    (tmp_path / "pyproject.toml").write_text(f'[tool.llmmem]\ngpu = "H100-80GB"\n[[tool.llmmem.runs]]\nfrom = "{tmp_path / "lora-8b.yml"}"\n')
    code, out, err = run_cli("check", tmp_path / "pyproject.toml")
    assert "settings from:" in out and "lora-8b.yml: micro_batch_size" in out, err
    # lora_modules_to_save (embed_tokens, lm_head) is priced now: read like any other key, the verdict not partial
    assert "lora-8b.yml: lora_modules_to_save" in out and "partial" not in out, out


def test_deepspeed_json_is_followed_and_offload_read(tmp_path):
    (tmp_path / "ds.json").write_text(json.dumps({"zero_optimization": {"stage": 3, "offload_optimizer": {"device": "cpu"},
                                                                       "offload_param": {"device": "cpu"}}, "train_micro_batch_size_per_gpu": 4}))
    (tmp_path / "t.yaml").write_text("model_name_or_path: meta-llama/Llama-3.1-8B\nstage: sft\nfinetuning_type: full\ndeepspeed: ds.json\nbf16: true\n")
    run = parse(f'[tool.llmmem]\ngpu = "H100-80GB"\n[[tool.llmmem.runs]]\nfrom = "t.yaml"\ngpus = 8\n', base_dir=tmp_path).runs[0]
    assert (run.zero_stage, run.offload, run.batch_size, run.gpus) == (3, "optimizer+params", 4, 8)
    assert run.reads == (str(tmp_path / "t.yaml"), str(tmp_path / "ds.json"))
    assert dict(run.settings_from)["zero-stage"] == "ds.json: zero_optimization.stage"


def test_bad_trainer_configs_are_one_clear_error(tmp_path):
    cases = {
        "missing.yaml": None,
        "bad.yaml": "base_model: [unclosed\n",
        "list.yaml": "- a\n- b\n",
        "unknown.yaml": "foo: 1\n",
        "code.yaml": "base_model: !!python/object/apply:os.system ['echo hi']\n",
    }
    for name, text in cases.items():
        if text is not None:
            (tmp_path / name).write_text(text)
        with pytest.raises(ConfigError) as err:
            parse(f'[tool.llmmem]\ngpu = "H100-80GB"\n[[tool.llmmem.runs]]\nfrom = "{name}"\n', base_dir=tmp_path)
        assert "\n" not in str(err.value)
    (tmp_path / "ds.yaml").write_text("base_model: meta-llama/Llama-3.1-8B\nmicro_batch_size: 1\ndeepspeed: nowhere.json\n")
    with pytest.raises(ConfigError, match="nowhere.json\" does not exist"):
        parse('[tool.llmmem]\ngpu = "H100-80GB"\n[[tool.llmmem.runs]]\nfrom = "ds.yaml"\n', base_dir=tmp_path)
    (tmp_path / "neg.yaml").write_text("base_model: meta-llama/Llama-3.1-8B\nmicro_batch_size: -2\n")
    with pytest.raises(ConfigError, match=r"^neg.yaml:2: micro_batch_size: -2 is out of range; expected 1 to 1,000,000.$"):
        parse('[tool.llmmem]\ngpu = "H100-80GB"\n[[tool.llmmem.runs]]\nfrom = "neg.yaml"\n', base_dir=tmp_path)
    with pytest.raises(ConfigError, match="not valid"):
        parse('[tool.llmmem]\ngpu = "H100-80GB"\n[[tool.llmmem.runs]]\nfrom = "neg.yaml"\nformat = "axolotol"\n', base_dir=tmp_path)


TINYLLAMA = ('{"model_type": "llama", "hidden_size": 2048, "num_hidden_layers": 22, "num_attention_heads": 32, '
             '"num_key_value_heads": 4, "intermediate_size": 5632, "vocab_size": 32000}')
AXOLOTL = "base_model: ../model\nadapter: lora\nlora_r: 8\nsequence_len: 1024\nmicro_batch_size: {mb}\ngradient_checkpointing: true\ndeepspeed: ds.json\n"


def _axolotl_repo(tmp_path, run_extra=""):
    """A repository whose one run reads an axolotl YAML (micro batch 1) that names a ZeRO-0 DeepSpeed JSON."""
    root = tmp_path / "repo"
    (root / "model").mkdir(parents=True)
    (root / "model" / "config.json").write_text(TINYLLAMA)
    (root / "train").mkdir()
    (root / "train" / "lora.yml").write_text(AXOLOTL.format(mb=1))
    (root / "train" / "ds.json").write_text('{"zero_optimization": {"stage": 0}}')
    (root / "pyproject.toml").write_text('[tool.llmmem]\ngpu-memory = "12 GiB"\n[[tool.llmmem.runs]]\nname = "sft"\n'
                                         'from = "train/lora.yml"\n' + run_extra)
    return root


def test_hook_rechecks_the_runs_that_read_a_changed_yaml_or_its_deepspeed_json(tmp_path, monkeypatch, run_cli):
    """Acceptance: an axolotl YAML whose micro_batch_size grows makes the hook re-check and fail."""
    import subprocess

    from tests.test_hook_scan import GIT_ENV, HOOK

    root = _axolotl_repo(tmp_path)
    subprocess.run(["git", "init", "-q"], cwd=root, check=True, env=GIT_ENV)
    monkeypatch.chdir(root)
    monkeypatch.delenv("GITHUB_ACTIONS", raising=False)
    import re

    assert re.search(HOOK["files"], "train/lora.yml") and re.search(HOOK["files"], "train/ds.json")
    code, out, err = run_cli("check", "--hook", "train/lora.yml")
    assert code == 0 and "llmmem pyproject.toml: 1 of 1 runs fit." in out, out + err
    code, out, err = run_cli("check", "--hook", "train/ds.json")  # the DeepSpeed JSON it names: same owner
    assert code == 0 and "1 of 1 runs fit" in out, out + err
    (root / "train" / "lora.yml").write_text(AXOLOTL.format(mb=64))
    code, out, err = run_cli("check", "--hook", "train/lora.yml")
    assert code == 1 and "0 of 1 runs fit; over budget: sft." in out, out + err
    code, out, err = run_cli("check", "--hook", "unrelated.yaml")  # a YAML no run reads checks nothing
    assert code == 0 and "nothing to check" in out, out + err


def _commit(root, message):
    import subprocess

    from tests.test_hook_scan import GIT_ENV

    subprocess.run(["git", "add", "-A"], cwd=root, check=True, env=GIT_ENV)
    subprocess.run(["git", "commit", "-q", "-m", message], cwd=root, check=True, env=GIT_ENV)
    return subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, check=True, env=GIT_ENV, capture_output=True, text=True).stdout.strip()


def _report_at(root, commit, where, run_cli):
    """llmmem check --format json on a checkout of ``commit``, as hooks/github/check.sh does for diff-base."""
    import subprocess

    from tests.test_hook_scan import GIT_ENV

    subprocess.run(["git", "worktree", "add", "-q", "--detach", str(where), commit], cwd=root, check=True, env=GIT_ENV)
    code, out, err = run_cli("check", where / "pyproject.toml", "--format", "json")
    assert code in (0, 1), err
    report = where.parent / (where.name + ".json")
    report.write_text(out)
    return report, json.loads(out)["runs"][0]


def test_diff_follows_the_yaml_and_the_deepspeed_json_between_two_revisions(tmp_path, monkeypatch, run_cli):
    """`llmmem diff` of two revisions whose pyproject.toml is the same: the axolotl YAML's micro_batch_size
    goes 1 -> 64, then its DeepSpeed JSON goes to ZeRO-3. Each side reads its own revision's files.
    TinyLlama shape: 32000·2048·2 embeddings + 22 layers × (2·2048² + 2·2048·256 + 3·2048·5632 + 2·2048)
    + 2048 = 1,100,048,384 params; LoRA r=8 on q_proj, v_proj: 22 × 8·((2048+2048) + (2048+256)) = 1,126,400."""
    root = _axolotl_repo(tmp_path, run_extra="gpus = 4\n")
    import subprocess

    from tests.test_hook_scan import GIT_ENV

    subprocess.run(["git", "init", "-q"], cwd=root, check=True, env=GIT_ENV)
    monkeypatch.delenv("GITHUB_ACTIONS", raising=False)
    first = _commit(root, "micro batch 1")
    (root / "train" / "lora.yml").write_text(AXOLOTL.format(mb=64))
    second = _commit(root, "micro batch 64")
    (root / "train" / "ds.json").write_text('{"zero_optimization": {"stage": 3}}')
    third = _commit(root, "ZeRO-3")
    one, run1 = _report_at(root, first, tmp_path / "at-1", run_cli)
    sixty_four, run64 = _report_at(root, second, tmp_path / "at-64", run_cli)
    zero3, run3 = _report_at(root, third, tmp_path / "at-zero3", run_cli)
    assert run1["settings"]["batch-size"] == "1" and run64["settings"]["batch-size"] == "64"
    # the (b, s, vocab) logits and their loss tensors grow with the micro batch: exactly 64 times. Per logit element
    # (HF's upcast loss, trainer_terms.loss_terms) on this fp32 run (no bf16 key: axolotl's default): the logits 4 B
    # + the log-softmax 4 B + two fp32 backward tensors 8 B = 16 B, times b·1024·32000: the term's full size
    # (details["full.logits"]; the breakdown shows the part alive at the backward's peak instant).
    assert run64["details"]["full.logits"] == 64 * run1["details"]["full.logits"] == 64 * 1024 * 32000 * 16
    code, out, err = run_cli("diff", one, sixty_four)
    out = unfit(out)  # each run's line whole, as before the 80-column wrap
    gib = lambda n: f"{n / 2**30:.1f}"  # noqa: E731
    assert code == 1, err  # it fitted 12 GiB at micro batch 1 and no longer does
    assert out.splitlines()[0].startswith(f"sft: {gib(run1['total_bytes'])} -> {gib(run64['total_bytes'])} GiB (+")
    # 6.2 GiB at micro batch 1: the backward peaks at the start of the loss's backward, where the fp32 logits
    # (4 B of the 16) are already gone and no adapter gradient exists yet (core/terms/backward.py)
    assert out.splitlines()[0].endswith("[NO LONGER FITS]") and gib(run1["total_bytes"]) == "5.6"
    assert out.splitlines()[1] == "  settings changed: batch-size 1 -> 64 (lora.yml: micro_batch_size)"
    # ZeRO-3 over 4 GPUs partitions the frozen fp32 weights and gathers the largest module (the 32000 x 2048
    # embedding, fp32) to compute it; it partitions the fp32 adapters too (a quarter each) and gathers one of the
    # 22 layers' adapters at a time (parallel.sharded_adapters)
    assert run64["breakdown"]["weights"] == 1_100_048_384 * 4 + 1_126_400 * 4
    assert run3["breakdown"]["weights"] == 1_100_048_384 * 4 // 4 + 32000 * 2048 * 4 + 1_126_400 * 4 // 4 + 1_126_400 * 4 // 22
    code, out, err = run_cli("diff", sixty_four, zero3, "--format", "markdown")
    assert code == 0, err  # over before, over after: not a regression
    row = out.splitlines()[2]
    assert row.startswith(f"| sft | {gib(run64['total_bytes'])} | {gib(run3['total_bytes'])} | -2.8 | weights -2.8; ")
    # the origin is the pull request's file and key: Markdown-escaped (it renders as ds.json: zero_optimization.stage)
    assert "settings: zero-stage - -> 3 (ds.json\\: zero\\_optimization.stage) |" in row


def test_without_pyyaml_the_error_says_how_to_install_it(monkeypatch, tmp_path):
    import sys

    monkeypatch.setitem(sys.modules, "yaml", None)  # import yaml -> ImportError
    (tmp_path / "t.yaml").write_text("base_model: meta-llama/Llama-3.1-8B\nmicro_batch_size: 1\n")
    with pytest.raises(ConfigError, match=r'needs PyYAML, a dependency of pytest-llmmem that is missing here.*pip install PyYAML'):
        parse('[tool.llmmem]\ngpu = "H100-80GB"\n[[tool.llmmem.runs]]\nfrom = "t.yaml"\n', base_dir=tmp_path)
    (tmp_path / "t.json").write_text('{"model_name_or_path": "meta-llama/Llama-3.1-8B", "per_device_train_batch_size": 2}')
    run = parse('[tool.llmmem]\ngpu = "H100-80GB"\n[[tool.llmmem.runs]]\nfrom = "t.json"\n', base_dir=tmp_path).runs[0]
    assert (run.batch_size, run.name) == (2, "t")  # TRL JSON needs no PyYAML; the run is named after the file


# (format, trainer config with one mistyped key, the line it is on, the key as shown, the suggestion)
TYPOS = [
    ("axolotl", "base_model: meta-llama/Llama-3.1-8B\nmicro_batch_sise: 8\n", 2, "micro_batch_sise", "micro_batch_size"),
    ("llama-factory", "model_name_or_path: meta-llama/Llama-3.1-8B\nstage: sft\nfinetuning_type: lora\n"
     "per_device_train_batch_sise: 4\n", 4, "per_device_train_batch_sise", "per_device_train_batch_size"),
    ("trl", "model_name_or_path: meta-llama/Llama-3.1-8B\nper_device_train_batch_size: 2\nmax_lenght: 2048\n", 3,
     "max_lenght", "max_length"),
    ("torchtune", "model:\n  _component_: torchtune.models.llama3_1.lora_llama3_1_8b\nbatch_sise: 4\n", 3, "batch_sise", "batch_size"),
    ("litgpt", "checkpoint_dir: checkpoints/meta-llama/Llama-3.1-8B\ntrain:\n  max_seq_length: 512\n  micro_batch_sise: 4\n", 4,
     "train.micro_batch_sise", "micro_batch_size"),
]


@pytest.mark.parametrize("fmt, text, line, key, suggestion", TYPOS, ids=[t[0] for t in TYPOS])
def test_a_mistyped_trainer_key_is_an_error_naming_its_line(fmt, text, line, key, suggestion, tmp_path, monkeypatch, run_cli):
    """Issue 23 §3: micro_batch_sise was silently batch 1. Each trainer's keys (readers/keys/<format>.txt)
    refuse a typo with did-you-mean and the three nearest, on the YAML's own line, through the CLI."""
    (tmp_path / "train.yaml").write_text(text)
    (tmp_path / "pyproject.toml").write_text('[tool.llmmem]\ngpu = "H100-80GB"\n[[tool.llmmem.runs]]\nname = "sft"\n'
                                             f'from = "train.yaml"\nformat = "{fmt}"\n')
    monkeypatch.chdir(tmp_path)
    code, out, err = run_cli("check", "pyproject.toml")
    assert (code, out) == (2, ""), err
    leaf = key.rpartition(".")[2]
    assert err.startswith(f'llmmem: error: train.yaml:{line}: {key}: unknown {fmt} key "{leaf}". Did you mean "{suggestion}"? '
                          f'Nearest {fmt} keys: "{suggestion}", '), err
    assert err.count('", "') == 2 and "\n" not in err.rstrip("\n")  # three nearest, one paragraph


def _keys_the_readers_read():
    """Every trainer key a reader module reads: m.get / m.given / m.is_set("key"), "key" in m.data, UNMODELLED."""
    import ast

    from pytest_llmmem.config import readers

    read = {}
    for fmt, module in (("axolotl", "axolotl"), ("llama-factory", "llama_factory"), ("torchtune", "torchtune"), ("trl", "trl"),
                        ("litgpt", "litgpt")):
        tree = ast.parse((Path(readers.__file__).parent / f"{module}.py").read_text())
        keys = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in ("get", "given", "is_set") \
                    and isinstance(node.func.value, ast.Name) and node.func.value.id == "m" and node.args \
                    and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str):
                keys.add(node.args[0].value)
            if isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "UNMODELLED" for t in node.targets):
                keys |= {pair.elts[0].value for pair in node.value.elts}
        read[fmt] = keys
    return read


def test_every_key_a_reader_reads_is_a_known_key_of_its_trainer():
    """A key the reader maps (or reports as not modelled) can never be refused as unknown."""
    from pytest_llmmem.config.readers.mapper import known_keys

    for fmt, keys in _keys_the_readers_read().items():
        top, sections = known_keys(fmt)
        section, _, leaf = zip(*(k.partition(".") for k in keys))
        missing = [k for k, s, l in zip(keys, section, leaf) if (s not in top) or (l and s in sections and l not in sections[s])]
        assert missing == [], (fmt, missing)  # a key inside a section that is not checked (model._component_) needs its section
    assert len(known_keys("axolotl")[0]) > 400 and "micro_batch_size" in known_keys("axolotl")[0]
    assert known_keys("litgpt")[1]["train"] >= {"micro_batch_size", "max_seq_length", "global_batch_size"}


@pytest.mark.parametrize("relpath", [c[0] for c in CASES] + ["trl/dpo_config_num_processes.yaml"])
def test_settings_from_names_only_keys_the_file_writes(relpath):
    """Issue 23 §3: "settings from" credited train.yaml: micro_batch_size to a file without that key."""
    import re

    import yaml

    data = yaml.safe_load((DATA / relpath).read_text())
    run = _run(relpath, 'recipe = "dpo"\n' if "dpo_config" in relpath else "")
    name = Path(relpath).name
    for ours, origin in run.settings_from:
        if origin.startswith(f"{name}: "):
            key = re.match(r"[A-Za-z_][A-Za-z0-9_.]*", origin[len(name) + 2:])
            if key is None:  # "(litgpt config)": the format itself, not a key
                continue
            section, _, leaf = key.group(0).rpartition(".")
            assert leaf in (data.get(section) if section else data), (ours, origin)


def test_a_missing_micro_batch_size_is_credited_to_axolotls_default(tmp_path):
    (tmp_path / "t.yaml").write_text("base_model: meta-llama/Llama-3.1-8B\nsequence_len: 1024\n")
    run = parse('[tool.llmmem]\ngpu = "H100-80GB"\n[[tool.llmmem.runs]]\nfrom = "t.yaml"\n', base_dir=tmp_path).runs[0]
    assert run.batch_size == 1
    assert dict(run.settings_from)["batch-size"] == "axolotl default (axolotl src/axolotl/utils/schemas/training.py:77: micro_batch_size default 1)"


def test_an_error_from_a_yaml_value_names_the_yaml_file_and_line(tmp_path, monkeypatch, run_cli):
    """Issue 23 §3: a base_model typo pointed at pyproject.toml:8: tool.llmmem.runs[0].model.id."""
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "no-cache"))
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "train.yaml").write_text("adapter: lora\nlora_r: 16\nbase_model: meta-llama/Llama-3.1-8b\n")
    (tmp_path / "pyproject.toml").write_text('[tool.llmmem]\ngpu = "H100-80GB"\n[[tool.llmmem.runs]]\nname = "sft"\n'
                                             'from = "configs/train.yaml"\n')
    monkeypatch.chdir(tmp_path)
    code, out, err = run_cli("check", "pyproject.toml")
    assert code == 2, out
    assert err.startswith('llmmem: error: configs/train.yaml:3: base_model: "meta-llama/Llama-3.1-8b" is not in the local '), err
    assert 'Did you mean "meta-llama/Llama-3.1-8B"?' in err and "pyproject.toml" not in err
    (tmp_path / "configs" / "train.yaml").write_text("adapter: lora\nlora_r: 0\nbase_model: meta-llama/Llama-3.1-8B\n")
    code, out, err = run_cli("check", "pyproject.toml")
    assert err == "llmmem: error: configs/train.yaml:2: lora_r: 0 is out of range; expected 1 to 65,536.\n", err
    (tmp_path / "pyproject.toml").write_text('[tool.llmmem]\ngpu = "H100-80GB"\n[[tool.llmmem.runs]]\nname = "sft"\n'
                                             'from = "configs/train.yaml"\nlora-rank = 0\n')
    code, out, err = run_cli("check", "pyproject.toml")  # the run's own value: the pyproject line, as before
    assert err.startswith("llmmem: error: pyproject.toml:6: tool.llmmem.runs[0].lora-rank: 0 is out of range"), err


@pytest.mark.parametrize("fmt, text, key", [
    ("axolotl", "base_model: meta-llama/Llama-3.1-8B\nactivation_offloading: true\n", "activation_offloading"),
    ("axolotl", "base_model: meta-llama/Llama-3.1-8B\ntiled_mlp: true\n", "tiled_mlp"),
    ("llama-factory", "model_name_or_path: meta-llama/Llama-3.1-8B\nstage: sft\nfinetuning_type: full\nupcast_layernorm: true\n", "upcast_layernorm"),
])
def test_a_real_key_that_changes_memory_is_accepted_and_reported_as_not_modelled(fmt, text, key, tmp_path):
    """Never refuse a real trainer key: one the estimate does not model makes the verdict partial instead."""
    (tmp_path / "t.yaml").write_text(text)
    run = parse(f'[tool.llmmem]\ngpu = "H100-80GB"\n[[tool.llmmem.runs]]\nfrom = "t.yaml"\nformat = "{fmt}"\n', base_dir=tmp_path).runs[0]
    assert any(reason.startswith(f"t.yaml: {key} (") for reason in run.not_modelled), run.not_modelled


@pytest.mark.parametrize("yaml_keys, checkpointing, selective, cp", [
    ("enable_activation_checkpointing: false\nac_mode: selective\nac_option: 2\n", True, "2", 1),
    ("enable_activation_checkpointing: false\nac_mode: selective\nac_option: op\ncontext_parallel_dim: 2\n", True, "op", 2),
    # full_finetune_distributed._setup_model applies neither policy when both are set
    ("enable_activation_checkpointing: true\nac_mode: selective\nac_option: 2\n", False, "", 1),
])
def test_torchtune_selective_checkpointing_and_context_parallel(tmp_path, yaml_keys, checkpointing, selective, cp):
    (tmp_path / "full.yaml").write_text("model:\n  _component_: torchtune.models.llama3_1.llama3_1_8b\nbatch_size: 2\n"
                                        "tokenizer:\n  max_seq_len: 4096\nfsdp_cpu_offload: false\n" + yaml_keys)
    text = f'[tool.llmmem]\ngpu = "H100-80GB"\n[[tool.llmmem.runs]]\nfrom = "{tmp_path / "full.yaml"}"\ngpus = 2\n'
    run = parse(text, base_dir=tmp_path).runs[0]
    assert (run.gradient_checkpointing, run.selective_ac, run.context_parallel) == (checkpointing, selective, cp)
    assert not any("context_parallel_dim" in reason for reason in run.not_modelled)


def test_torch_compile_in_a_trainer_config_makes_the_run_approximate_not_partial(tmp_path):
    (tmp_path / "c.yaml").write_text("model:\n  _component_: torchtune.models.llama3_1.llama3_1_8b\nbatch_size: 2\n"
                                     "tokenizer:\n  max_seq_len: 4096\ncompile: true\n")
    run = parse(f'[tool.llmmem]\ngpu = "H100-80GB"\n[[tool.llmmem.runs]]\nfrom = "{tmp_path / "c.yaml"}"\n', base_dir=tmp_path).runs[0]
    assert run.compiled and not any("compile" in reason for reason in run.not_modelled)


@pytest.mark.parametrize("fmt, text, expected", [
    # each trainer's default when the file leaves lora_dropout out (the reader cites where it is set)
    ("axolotl", "base_model: NousResearch/Meta-Llama-3-8B\nadapter: lora\n", 0.0),  # schemas/peft.py:80
    ("llama-factory", "model_name_or_path: meta-llama/Meta-Llama-3-8B-Instruct\nfinetuning_type: lora\n", 0.0),  # finetuning_args.py:73
    ("litgpt", "checkpoint_dir: checkpoints/meta-llama/Meta-Llama-3-8B\nlora_r: 8\n", 0.05),  # finetune/lora.py:58
    ("trl", "model_name_or_path: Qwen/Qwen2.5-0.5B\nuse_peft: true\n", 0.05),  # trainer/model_config.py:115
    ("trl", "model_name_or_path: Qwen/Qwen2.5-0.5B\nuse_peft: true\nlora_dropout: 0.1\n", 0.1),
])
def test_lora_dropout_is_read_or_the_trainers_default_is_credited(fmt, text, expected, tmp_path):
    (tmp_path / "train.yaml").write_text(text, encoding="utf-8")
    run = parse(f'[tool.llmmem]\ngpu = "H100-80GB"\n[[tool.llmmem.runs]]\nfrom = "train.yaml"\nformat = "{fmt}"\n',
                base_dir=tmp_path).runs[0]
    assert run.lora_dropout == expected


@pytest.mark.parametrize("dtype_line, compute_bytes", [
    ("dtype: float32\n", 4),  # get_quantization_config: bnb_4bit_compute_dtype=model_args.dtype, so fp32 dequantisation
    ("dtype: bfloat16\n", 2),
    ("dtype: auto\n", 2),  # the checkpoint's dtype (bf16 assumed)
    ("", 4),  # ModelConfig's dtype defaults to float32 since TRL v0.27.0 (#4778), and the compute dtype with it
])
def test_trl_dtype_is_the_4bit_compute_dtype(dtype_line, compute_bytes, tmp_path):
    (tmp_path / "train.yaml").write_text("model_name_or_path: Qwen/Qwen2.5-0.5B\nuse_peft: true\nload_in_4bit: true\n" + dtype_line,
                                         encoding="utf-8")
    run = parse(f'[tool.llmmem]\ngpu = "H100-80GB"\n[[tool.llmmem.runs]]\nfrom = "train.yaml"\nformat = "trl"\n',
                base_dir=tmp_path).runs[0]
    assert run.mode == "qlora" and run.dtype.compute_bytes == compute_bytes


@pytest.mark.parametrize("yaml_keys,expected,skipped", [
    ("additional_target: embed_tokens,lm_head\n", ("embed_tokens", "lm_head"), False),  # split_arg: commas
    ("resize_vocab: true\n", ("embed_tokens", "lm_head"), False),  # adapter.py:246: both embeddings join it
    ("additional_target: norm\n", (), True),  # a module that is not priced is reported, not dropped silently
])
def test_llama_factory_additional_target_is_peft_modules_to_save(run_cli, tmp_path, yaml_keys, expected, skipped):
    (tmp_path / "sft.yaml").write_text("model_name_or_path: meta-llama/Meta-Llama-3-8B-Instruct\nstage: sft\n"
                                       "finetuning_type: lora\nlora_target: q_proj,v_proj\n" + yaml_keys)
    (tmp_path / "pyproject.toml").write_text(f'[tool.llmmem]\ngpu = "H100-80GB"\n[[tool.llmmem.runs]]\nfrom = "{tmp_path / "sft.yaml"}"\n')
    run = parse((tmp_path / "pyproject.toml").read_text(), base_dir=tmp_path).runs[0]
    assert run.modules_to_save == expected
    assert any("additional_target" in reason for reason in run.not_modelled) is skipped
    code, out, err = run_cli("check", tmp_path / "pyproject.toml")
    assert code in (0, 1), err
    if expected:
        # the run reports where it came from and prices the copies (Llama-3 8B: 4096 x 128,256 each)
        assert "sft.yaml: " + ("additional_target" if "additional" in yaml_keys else "resize_vocab") in out, out
        assert "partial" not in out, out


@pytest.mark.parametrize("fmt, text, dora, rslora", [
    # each trainer's own key for PEFT's use_dora / use_rslora (all False by default)
    ("axolotl", "base_model: NousResearch/Meta-Llama-3-8B\nadapter: lora\npeft_use_dora: true\npeft_use_rslora: true\n", True, True),
    ("llama-factory", "model_name_or_path: meta-llama/Meta-Llama-3-8B-Instruct\nfinetuning_type: lora\nuse_dora: true\n", True, False),
    ("trl", "model_name_or_path: Qwen/Qwen2.5-0.5B\nuse_peft: true\nuse_rslora: true\n", False, True),
    ("torchtune", "model:\n  _component_: torchtune.models.llama3_1.lora_llama3_1_8b\n  use_dora: true\nbatch_size: 2\n", True, False),
    ("axolotl", "base_model: NousResearch/Meta-Llama-3-8B\nadapter: lora\n", False, False),
])
def test_use_dora_and_use_rslora_are_read_from_each_trainer(fmt, text, dora, rslora, tmp_path):
    (tmp_path / "train.yaml").write_text(text, encoding="utf-8")
    run = parse(f'[tool.llmmem]\ngpu = "H100-80GB"\n[[tool.llmmem.runs]]\nfrom = "train.yaml"\nformat = "{fmt}"\n',
                base_dir=tmp_path).runs[0]
    assert (run.use_dora, run.use_rslora) == (dora, rslora)
    assert not any("dora" in reason or "rslora" in reason for reason in run.not_modelled)
    if dora:  # DoRA's magnitude vectors are counted: one per output feature of each adapted linear
        assert run.adapter.tensors(run.model.linears()[0], 8)[-1] == run.model.linears()[0].d_out


def test_qdora_from_a_trainer_config_is_priced_as_qdora(tmp_path):
    """DoRA over a 4-bit base (QDoRA, tests/data/adapters/qdora*.json): axolotl's peft_use_dora on a qlora adapter maps
    to use-dora, and the run counts the magnitude vectors (one per output feature of each adapted linear)."""
    (tmp_path / "train.yaml").write_text("base_model: NousResearch/Meta-Llama-3-8B\nadapter: qlora\nload_in_4bit: true\n"
                                         "peft_use_dora: true\n", encoding="utf-8")
    run = parse(f'[tool.llmmem]\ngpu = "H100-80GB"\n[[tool.llmmem.runs]]\nfrom = "train.yaml"\n', base_dir=tmp_path).runs[0]
    assert run.mode == "qlora" and run.use_dora and not any("QDoRA" in reason for reason in run.not_modelled)
    assert run.adapter.tensors(run.model.linears()[0], 8)[-1] == run.model.linears()[0].d_out


# Each trainer's attention switch, to transformers' attn_implementation (the masks differ: core/terms/attention_masks.py):
# axolotl schemas/enums.py:118-125 LEGACY_ATTN_FLAG_TO_IMPL; LLaMA-Factory model_utils/attention.py:65-92; TRL as given.
ATTENTION_CASES = [
    ("axolotl/qlora.yml", "flash_attention: true", "flash_attention_2"),
    ("axolotl/qlora.yml", "flash_attention: false\nsdp_attention: true", "sdpa"),
    ("axolotl/qlora.yml", "flash_attention: false\nattn_implementation: eager", "eager"),
    ("llama-factory/qwen3_lora_sft.yaml", "flash_attn: fa2", "flash_attention_2"),
    ("llama-factory/qwen3_lora_sft.yaml", "flash_attn: sdpa", "sdpa"),
    ("llama-factory/qwen3_lora_sft.yaml", "flash_attn: auto", "sdpa"),  # auto: transformers' default
    ("llama-factory/qwen3_lora_sft.yaml", "flash_attn: disabled", "eager"),
    ("trl/example_config.yaml", "attn_implementation: flash_attention_2", "flash_attention_2"),
    ("trl/example_config.yaml", "attn_implementation: sdpa", "sdpa"),
]


@pytest.mark.parametrize("fixture, line, kernel", ATTENTION_CASES)
def test_each_trainers_attention_switch_names_the_kernel(tmp_path, fixture, line, kernel):
    text = (DATA / fixture).read_text(encoding="utf-8")
    text = "\n".join(l for l in text.splitlines() if not l.startswith(("flash_attention:", "flash_attn:", "attn_implementation:")))
    path = tmp_path / Path(fixture).name
    path.write_text(text + "\n" + line + "\n", encoding="utf-8")
    run = _run(str(path), tmp=tmp_path)
    assert (run.attn_implementation, run.flash_attention, run.mask_free) == (kernel, kernel != "eager", kernel.startswith("flash"))
