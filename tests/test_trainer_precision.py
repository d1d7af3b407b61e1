"""What the HF-Trainer-based trainers keep per parameter, read from their YAML: axolotl, LLaMA-Factory and TRL.

The HF Trainer has no fp32 master copy (bf16 / fp16 only turn on torch.autocast), so the precision of a run is
decided by the dtype each trainer loads the model in and whether it casts the trained parameters up
(pytest_llmmem/config/readers/hf_args.py weights_and_compute; each reader's _precision cites its trainer's lines)."""

import re
from pathlib import Path

import pytest

from pytest_llmmem.config.load import parse
from pytest_llmmem.core.terms.step import step_terms
from pytest_llmmem.errors import ConfigError
from pytest_llmmem.estimator import estimate

yaml = pytest.importorskip("yaml")
LLAMA2 = "meta-llama/Llama-2-7b-hf"
P = 6_738_415_616  # Llama-2-7B parameters (bundled config.json; tests/test_bundle.py counts it on the meta device)
MATMUL = 6_476_005_376 + 32_000 * 4_096  # its linear weights plus the untied head: what autocast casts to bf16
# LoRA adapters, r x (d_in + d_out) per adapted linear, 32 layers, hidden 4096, MLP 11008:
QV8 = 32 * 8 * 2 * (4096 + 4096)  # r = 8 on q_proj and v_proj (axolotl's lora_target_modules in these files)
QV16 = 2 * QV8  # r = 16 on q_proj and v_proj (TRL ModelConfig: lora_r 16, PEFT's default targets for Llama)
ALL8 = 32 * 8 * (4 * (4096 + 4096) + 3 * (4096 + 11008))  # r = 8 on all seven linears (LLaMA-Factory lora_target all)

# Model states by hand (bytes), with AdamW's two states in the dtype of what it steps (torch/optim/adam.py:178-182):
PURE_BF16 = 2 * P + 2 * P + 2 * 2 * P  # bf16 weights, bf16 gradients, two bf16 states: 8 P
PURE_FP32 = 4 * P + 4 * P + 2 * 4 * P  # 16 P
AMP = 4 * P + 2 * MATMUL + 4 * P + 2 * 4 * P  # fp32 weights + autocast's bf16 copy of each matmul weight, fp32 grads, states
# "mixed" on 2 GPUs (ZeRO-2, FSDP full-shard): the fp32 master and both fp32 states sharded in two
MIXED_MASTER_AND_STATES = 4 * P // 2 + 2 * 4 * P // 2


def lora(base: float, adapters: int, adapter_bytes: int) -> int:
    """A LoRA run's model states: the frozen base, the adapters with their gradients and two AdamW states."""
    return round(base * P) + adapters * adapter_bytes * 4


def _run(tmp_path: Path, fmt: str, text: str, extra: str = ""):
    (tmp_path / "t.yaml").write_text(text)
    body = f'[tool.llmmem]\ngpu = "H100-80GB"\n[[tool.llmmem.runs]]\nfrom = "t.yaml"\nformat = "{fmt}"\n{extra}'
    return parse(body, base_dir=tmp_path).runs[0]


AX = f"base_model: {LLAMA2}\n"
AXLORA = AX + "adapter: lora\nlora_r: 8\nlora_target_modules: [q_proj, v_proj]\n"
LF = f"model_name_or_path: {LLAMA2}\nstage: sft\n"
TRL = f"model_name_or_path: {LLAMA2}\n"
LG = f"checkpoint_dir: checkpoints/{LLAMA2}\ntrain:\n  max_seq_length: 512\n"

# (format, YAML, dtype, precision (None: a LoRA run), the LoRA adapters' dtype, model states by hand, a not-modelled reason).
# "mixed" rows give the fp32 master plus the optimizer states instead (what the engine shards). Each row's source
# line is cited in its reader.
MAPPINGS = [
    # axolotl: torch_dtype bf16 from bf16 (utils/config/__init__.py:191-192), loaded so (loaders/model.py:611), no upcast
    ("axolotl", AX + "bf16: true\nflash_attention: true\n", "bf16", "pure", None, PURE_BF16, ""),
    ("axolotl", AX + "bf16: auto\nfp16: true\nflash_attention: true\n", "fp16", "pure", None, PURE_BF16, ""),  # fp16 wins over auto (:169-170)
    ("axolotl", AX + "bf16: full\nattn_implementation: flash_attention_2\n", "bf16", "pure", None, PURE_BF16, ""),  # bf16_full_eval, no autocast
    ("axolotl", AX, "fp32", "pure", None, PURE_FP32, ""),  # neither: torch_dtype float32 (:195-196)
    # sdpa (transformers' default): embed_tokens, lm_head and norms stay fp32 (loaders/model.py:427-437)
    ("axolotl", AX + "bf16: true\n", "bf16", "pure", None, PURE_BF16, "attn_implementation = unset"),
    ("axolotl", AX + "bf16: true\nflash_attention: true\ndeepspeed: ds.json\n", "bf16", "mixed", None, MIXED_MASTER_AND_STATES, ""),
    ("axolotl", AXLORA + "bf16: true\nflash_attention: true\n", "bf16", None, "fp32", lora(2, QV8, 4), ""),  # PEFT's autocast_adapter_dtype
    ("axolotl", AXLORA + "bf16: true\nflash_attention: true\npeft_autocast_adapter_dtype: false\n", "bf16", None, "bf16", lora(2, QV8, 2), ""),
    # LLaMA-Factory: cast_trainable_params_to_fp32 (model/adapter.py:340-349) -> amp; pure_bf16 -> pure bf16
    ("llama-factory", LF + "finetuning_type: full\nbf16: true\n", "bf16", "amp", None, AMP, ""),
    ("llama-factory", LF + "finetuning_type: full\nbf16: true\npure_bf16: true\n", "bf16", "pure", None, PURE_BF16, ""),
    ("llama-factory", LF + "finetuning_type: full\n", "fp32", "pure", None, PURE_FP32, ""),  # no autocast: fp32 throughout
    ("llama-factory", LF + "finetuning_type: full\nbf16: true\ndeepspeed: ds.json\n", "bf16", "mixed", None, MIXED_MASTER_AND_STATES, ""),
    # LoRA: the adapters are fp32 with or without the cast (get_peft_model's autocast_adapter_dtype, adapter.py:308)
    ("llama-factory", LF + "finetuning_type: lora\nbf16: true\n", "bf16", None, "fp32", lora(2, ALL8, 4), ""),
    ("llama-factory", LF + "finetuning_type: lora\nbf16: true\npure_bf16: true\n", "bf16", None, "fp32", lora(2, ALL8, 4), ""),
    ("llama-factory", LF + "finetuning_type: lora\n", "bf16", None, "fp32", lora(2, ALL8, 4), ""),  # the checkpoint's dtype (loader.py:154)
    # TRL: dtype float32 unless set (trl/trainer/utils.py:1144), bf16 on unless fp16 (base_config.py:105)
    ("trl", TRL, "bf16", "amp", None, AMP, ""),
    ("trl", TRL + "dtype: bfloat16\n", "bf16", "pure", None, PURE_BF16, ""),
    ("trl", TRL + "model_init_kwargs:\n  dtype: auto\n", "bf16", "pure", None, PURE_BF16, ""),  # the checkpoint's dtype, bf16 assumed
    # the CLI passes ModelConfig's dtype in place of the file's model_init_kwargs (trl/scripts/sft.py:74-79)
    ("trl", TRL + "dtype: bfloat16\nmodel_init_kwargs:\n  dtype: float32\n", "bf16", "pure", None, PURE_BF16, ""),
    # torch_dtype loses to create_model_from_path's dtype float32 (transformers modeling_utils.py:4233-4235)
    ("trl", TRL + "model_init_kwargs:\n  torch_dtype: bfloat16\n", "bf16", "amp", None, AMP, "model_init_kwargs.torch_dtype"),
    ("trl", TRL + "model_init_kwargs:\n  dtype: float32\nfp16: true\n", "fp16", "amp", None, AMP, ""),
    ("trl", TRL + "bf16: false\n", "fp32", "pure", None, PURE_FP32, ""),
    ("trl", TRL + "accelerate_config: fsdp2\n", "bf16", "mixed", None, MIXED_MASTER_AND_STATES, ""),  # accelerate's FSDP fp32 shards
    ("trl", TRL + "use_peft: true\n", "fp32", None, "fp32", lora(4, QV16, 4), "the default dtype = fp32 under bf16 autocast"),
    ("trl", TRL + "use_peft: true\ndtype: bfloat16\n", "bf16", None, "fp32", lora(2, QV16, 4), ""),
    # ZeRO-3 over a 16-bit base: autocast_adapter_dtype=False (sft_trainer.py:1089-1097); the base is sharded in two
    ("trl", TRL + "use_peft: true\ndtype: bfloat16\naccelerate_config: zero3\n", "bf16", None, "bf16", None, ""),
    # a 4-bit base: TRL casts the adapters to bf16 (sft_trainer.py:1127-1130); its float32 default dtype is the
    # compute-dtype, priced (tests/test_readers.py test_trl_dtype_is_the_4bit_compute_dtype), so nothing is reported
    ("trl", TRL + "use_peft: true\nload_in_4bit: true\n", "nf4", None, "bf16", None, ""),
    ("trl", TRL + "use_peft: true\nload_in_4bit: true\ndtype: bfloat16\n", "nf4", None, "bf16", None, ""),
    # litgpt (Lightning Fabric): "-true" converts the model (fabric/plugins/precision/half.py:42-43), "-mixed" autocasts
    # fp32 parameters (amp.py:63-64); unset is bf16-mixed for training (litgpt/utils.py:377)
    ("litgpt", LG + "precision: bf16-true\n", "bf16", "pure", None, PURE_BF16, ""),
    ("litgpt", LG + "precision: 16-true\n", "fp16", "pure", None, PURE_BF16, ""),
    ("litgpt", LG + "precision: 32-true\n", "fp32", "pure", None, PURE_FP32, ""),
    ("litgpt", LG + "precision: bf16-mixed\n", "bf16", "amp", None, AMP, ""),
    ("litgpt", LG + "precision: bf16\n", "bf16", "amp", None, AMP, ""),  # Fabric's alias of bf16-mixed (connector.py:569-575)
    ("litgpt", LG, "bf16", "amp", None, AMP, ""),
    ("litgpt", LG + "precision: bf16-mixed\ndevices: 2\n", "bf16", "mixed", None, MIXED_MASTER_AND_STATES, ""),  # FSDP's fp32 shards
    ("litgpt", LG + "precision: transformer-engine\n", "bf16", "pure", None, PURE_BF16, "precision = transformer-engine"),
    # LoRA: the adapters are made with the model, in its dtype (finetune/lora.py:210)
    ("litgpt", LG + "lora_r: 8\nprecision: bf16-true\n", "bf16", None, "bf16", lora(2, QV8, 2), ""),
    ("litgpt", LG + "lora_r: 8\n", "fp32", None, "fp32", lora(4, QV8, 4), "the default dtype = fp32 under bf16 autocast"),
]


def _read(tmp_path: Path, fmt: str, text: str):
    (tmp_path / "ds.json").write_text('{"zero_optimization": {"stage": 2}}')
    sharded = any(word in text for word in ("deepspeed", "fsdp", "zero3"))
    return _run(tmp_path, fmt, text, "gpus = 2\n" if sharded else "")


@pytest.mark.parametrize("fmt, text, dtype, precision, adapter, states, skipped", MAPPINGS)
def test_each_trainer_config_maps_to_what_its_trainer_keeps(tmp_path, fmt, text, dtype, precision, adapter, states, skipped):
    run = _read(tmp_path, fmt, text)
    assert run.dtype.name == dtype
    if precision:
        assert (run.mode, run.precision) == ("train", precision)
    else:  # an adapter run: the dtype the trainer keeps the adapters in
        assert run.mode in ("lora", "qlora") and run.adapter_dtype.name == adapter
    step = step_terms(run)
    if precision == "mixed":
        assert step.master_weights + step.optimizer_states == states
    elif states is not None:
        assert step.weights + step.master_weights + step.gradients + step.optimizer_states == states
    if precision is None:  # every row's adapters: their count by hand times the dtype the trainer keeps them in
        count = {"axolotl": QV8, "llama-factory": ALL8, "trl": QV16, "litgpt": QV8}[fmt]
        # ZeRO-3 and FSDP full / hybrid shard keep 1/N of them on each GPU, like every other parameter (parallel.sharded_adapters)
        shards = run.shard_group if run.zero_stage == 3 or run.fsdp in ("full-shard", "hybrid-shard") else 1
        assert step.trainable == count and step.detail("weights.adapters") == count * run.adapter_dtype.bytes // shards
    reasons = " | ".join(run.not_modelled)
    assert (skipped in reasons) if skipped else not reasons, reasons


@pytest.mark.parametrize("fmt, text", [(row[0], row[1]) for row in MAPPINGS])
def test_settings_from_names_only_keys_the_yaml_writes(tmp_path, fmt, text):
    """Provenance credits the file only with keys it has; a trainer default is said to be one."""
    run = _read(tmp_path, fmt, text)
    data = yaml.safe_load(text)
    origins = dict(run.settings_from)
    for ours in ("dtype", "precision", "adapter-dtype"):
        origin = origins.get(ours, "")
        if origin.startswith("t.yaml: "):
            section, _, leaf = re.match(r"[A-Za-z_][A-Za-z0-9_.]*", origin[len("t.yaml: "):]).group(0).rpartition(".")
            assert leaf in (data.get(section) if section else data), (ours, origin)


def test_trl_defaults_say_where_amp_comes_from(tmp_path):
    origins = dict(_read(tmp_path, "trl", TRL).settings_from)
    assert origins["dtype"] == "trl default (trl/trainer/base_config.py:105: bf16 unless fp16)"
    assert origins["precision"] == ("trl default (trl/trainer/utils.py:1144 create_model_from_path: dtype float32 unless set: "
                                    "fp32 weights, gradients and states under bf16 autocast)")


def test_llama_factory_amp_and_pure_bf16_bytes_per_parameter(tmp_path):
    """LLaMA-Factory's README hardware table prices a full fine-tune at 18 GB per billion parameters under AMP and
    8 under pure_bf16 (benchmarks/data/published-llama-factory.jsonl, lf-hw-7b-full-*). Through the reader:"""
    amp = step_terms(_run(tmp_path, "llama-factory", LF + "finetuning_type: full\nbf16: true\n"))
    # fp32 weights 4 P plus autocast's bf16 copy of every matmul weight, fp32 gradients 4 P, two fp32 AdamW states 8 P
    assert (amp.weights, amp.master_weights, amp.gradients, amp.optimizer_states) == (4 * P + 2 * MATMUL, 0, 4 * P, 8 * P)
    assert round((amp.weights + amp.gradients + amp.optimizer_states) / P, 2) == 17.96  # 18 but the embedding's copy
    pure = step_terms(_run(tmp_path, "llama-factory", LF + "finetuning_type: full\nbf16: true\npure_bf16: true\n"))
    assert (pure.weights, pure.master_weights, pure.gradients, pure.optimizer_states) == (2 * P, 0, 2 * P, 4 * P)  # 8 P


def test_llama_factory_yaml_reproduces_its_hardware_table_rows(tmp_path):
    """The lf-hw rows declare precision by hand; the same settings written as LLaMA-Factory YAML give the same run."""
    keys = "per_device_train_batch_size: 1\ncutoff_len: 512\nflash_attn: fa2\n"
    hand = ('[tool.llmmem]\ngpu = "H100-80GB"\n[tool.llmmem.model]\nid = "meta-llama/Llama-2-7b-hf"\n[[tool.llmmem.runs]]\n'
            'name = "r"\nmode = "train"\ndtype = "bf16"\nbatch-size = 1\nseq-len = 512\ngradient-checkpointing = true\n'
            'flash-attention = true\noptimizer = "adamw"\nprecision = ')
    for extra, precision in (("", "amp"), ("pure_bf16: true\n", "pure")):
        read = _run(tmp_path, "llama-factory", LF + "finetuning_type: full\nbf16: true\n" + keys + extra)
        declared = parse(hand + f'"{precision}"\n', base_dir=tmp_path).runs[0]
        assert read.precision == precision
        assert estimate(read).total_bytes == estimate(declared).total_bytes


def test_trl_dtype_it_does_not_load_is_one_error(tmp_path):
    with pytest.raises(ConfigError) as err:
        _run(tmp_path, "trl", TRL + "dtype: bf16\n")
    assert '"bf16" is not a dtype TRL loads a model in; expected "auto", "bfloat16"' in str(err.value)
    assert "t.yaml" in str(err.value) and "dtype" in str(err.value)


@pytest.mark.parametrize("fmt, text, on_run, precision", [
    # the launcher's ZeRO / FSDP is not in these files: given on the run, it brings the fp32 copy with it
    ("trl", TRL, 'zero-stage = 2\ngpus = 2\n', "mixed"),  # DeepSpeed casts the fp32 model to bf16 beside fp32 partitions
    ("llama-factory", LF + "finetuning_type: full\nbf16: true\n", 'fsdp = "full-shard"\ngpus = 2\n', "mixed"),
    ("axolotl", AX + "bf16: true\nflash_attention: true\n", 'zero-stage = 3\ngpus = 2\n', "mixed"),
    # the run turns the file's DeepSpeed off: the Trainer's own precision again
    ("axolotl", AX + "bf16: true\nflash_attention: true\ndeepspeed: ds.json\n", "zero-stage = 0\n", "pure"),
    ("trl", TRL + "bf16: false\n", 'zero-stage = 2\ngpus = 2\n', "pure"),  # no autocast: fp32 throughout
])
def test_zero_or_fsdp_on_the_run_decides_the_precision_too(tmp_path, fmt, text, on_run, precision):
    (tmp_path / "ds.json").write_text('{"zero_optimization": {"stage": 2}}')
    run = _run(tmp_path, fmt, text, on_run)
    assert run.precision == precision
    if precision == "mixed":  # the fp32 master and both fp32 AdamW states, sharded over the 2 GPUs
        step = step_terms(run)
        assert step.master_weights + step.optimizer_states == MIXED_MASTER_AND_STATES
        assert "on the run" in dict(run.settings_from)["precision"]


def test_trl_zero3_on_the_run_keeps_the_adapters_in_the_base_dtype(tmp_path):
    run = _run(tmp_path, "trl", TRL + "use_peft: true\ndtype: bfloat16\n", 'zero-stage = 3\ngpus = 2\n')
    assert run.adapter_dtype.name == "bf16"
    # r = 16 on q_proj, v_proj, 2 bytes each, partitioned by ZeRO-3 over the 2 GPUs like every other parameter
    assert step_terms(run).detail("weights.adapters") == QV16 * 2 // 2


TT = "model:\n  _component_: torchtune.models.llama3_2.llama3_2_1b\nbatch_size: 1\ntokenizer:\n  max_seq_len: 512\n" \
     "optimizer:\n  _component_: torch.optim.AdamW\n"


@pytest.mark.parametrize("dtype, states", [("bf16", PURE_BF16), ("fp32", PURE_FP32)])
def test_torchtune_trains_in_its_dtype_without_an_fp32_master(tmp_path, dtype, states):
    """torchtune's recipes build the model in cfg.dtype and step it so (recipes/full_finetune_single_device.py:400;
    shard_model passes no MixedPrecisionPolicy): dtype bf16 was priced "mixed", 4 bytes a parameter of master too much."""
    run = _run(tmp_path, "torchtune", TT + f"dtype: {dtype}\n", 'model = "meta-llama/Llama-2-7b-hf"\n')  # P by hand above
    assert (run.dtype.name, run.precision) == (dtype, "pure")
    step = step_terms(run)
    assert step.weights + step.master_weights + step.gradients + step.optimizer_states == states
    assert dict(run.settings_from)["precision"].startswith("t.yaml: dtype (torchtune")
