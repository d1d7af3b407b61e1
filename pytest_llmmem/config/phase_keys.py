"""Keys for the phases of a whole job (issue 16): evaluation, checkpoint saving, adapter merging.

Each default is the trainer's own, read at its source (the commit read is the one profiles.py
names for the same trainer). A key set on the run wins over the project's, which wins over the
profile. job_phases.py prices what these keys describe.

PYTEST_DONT_REWRITE: no asserts here; pytest need not rewrite this plugin module.
"""

from __future__ import annotations

from typing import Dict, Sequence

from ..record import Record
from .keys import PHASE_KEYS
from ..core.run import JobSettings

SAVES = ("full-state-dict", "sharded")


class PhaseDefaults(Record):
    """What a trainer does outside its step unless told otherwise, each cited in ``sources``."""

    loader: str
    evaluates: bool
    eval_batch_size: int  # 0: the training micro-batch
    eval_generate_tokens: int
    eval_generate_batch: int  # 0: the eval batch
    eval_loss: str
    merge_on_gpu: bool
    sources: Dict[str, str]
    holds_last_outputs: bool = False  # the loop keeps the last step's outputs until the next forward returns


_HF = PhaseDefaults(
    loader="per-tensor", evaluates=False, eval_batch_size=8, eval_generate_tokens=0, eval_generate_batch=0,
    eval_loss="upcast", merge_on_gpu=True,
    sources={
        "load": "transformers/core_model_loading.py: from_pretrained loads and converts (quantises) one tensor at a time",
        "eval": 'transformers/training_args.py: eval_strategy "no" (no evaluation unless asked)',
        "eval-batch-size": "transformers/training_args.py:1128 per_device_eval_batch_size = 8",
        "eval-accumulation-steps": "transformers/training_args.py:1153 eval_accumulation_steps = None: trainer.py:3021-3050 keeps every "
                                   "eval batch's gathered logits on the GPU (EvalLoopContainer.add -> nested_concat) until "
                                   "(step + 1) % eval_accumulation_steps == 0 moves them with to_cpu_and_numpy()",
        "save": "accelerate/utils/dataclasses.py:2050-2060 FSDP1 state_dict_type FULL_STATE_DICT with "
                "FullStateDictConfig(offload_to_cpu=True, rank0_only=True)",
        "merge-adapters": "peft/tuners/lora/layer.py:1044 get_delta_weight (B @ A * scaling) added on the weight's device",
    },
)

PHASE_DEFAULTS: Dict[str, PhaseDefaults] = {
    "transformers": _HF,
    "unsloth": _HF._replace(sources={**_HF.sources, "eval": "runs on the transformers Trainer (TRL SFTTrainer)"}),
    # a hand-written loop loads with from_pretrained too; it evaluates, saves and merges only where its keys say so
    "pytorch": _HF._replace(sources={**_HF.sources, "eval": "a hand-written loop has no evaluation unless its eval keys declare one"}),
    # fsdp_qlora's train.py builds the model itself (train.py:540-631: from_pretrained, or its own load_and_quantize of each
    # safetensors tensor), has no evaluation and saves only with --save_model (train.py:1015 save_model = False)
    "fsdp-qlora": _HF._replace(sources={**_HF.sources, "eval": "AnswerDotAI/fsdp_qlora train.py @ 23fafdfb has no evaluation loop",
                                        "load": "train.py:624-628 load_and_quantize (:178) of each safetensors tensor, in parallel threads"}),
    "torchtune": _HF._replace(
        evaluates=False,
        sources={**_HF.sources, "eval": "recipes/lora_finetune_single_device.py @ bd2a0fc has no validation loop",
                 "load": "torchtune loads the checkpoint state dict and copies it into the model one tensor at a time"}),
    "litgpt": PhaseDefaults(
        loader="materialise", evaluates=True, eval_batch_size=0, eval_generate_tokens=100, eval_generate_batch=1,
        eval_loss="compute", merge_on_gpu=False,
        sources={
            "load": "litgpt/finetune/lora.py:210 fabric.init_module(empty_init=(fabric.world_size > 1)): on one device every "
                    "weight is built for real in the compute dtype before the bnb plugin quantises it",
            "eval": "litgpt/finetune/lora.py:77 EvalArgs(interval=100, max_new_tokens=100, max_iters=100); validate() :444",
            "eval-batch-size": "litgpt/finetune/lora.py:504 data.connect(batch_size=train.micro_batch_size) (val loader too)",
            "eval-generate-tokens": "litgpt/finetune/lora.py:465-478 generate_example: max_new_tokens 100, "
                                    "set_kv_cache(batch_size=1) sized for the model's max_seq_length",
            "merge-adapters": "litgpt/finetune/lora.py:277 merge_lora runs at the end, on the CPU "
                              "(litgpt/scripts/merge_lora.py:56 Fabric(accelerator=\"cpu\"))",
            "next-forward": "litgpt/finetune/lora.py:355 logits = model(input_ids, lm_head_chunk_size=128): the "
                            "last step's logits, and their graph, live until the new forward returns",
        },
        holds_last_outputs=True,
    ),
}


def job_settings(levels: Sequence, *, mode: str, framework: str, batch_size: int, fsdp: str, zero_stage: int, run_name: str,
                 adapters: Sequence[str] = ()) -> JobSettings:
    """The run's load/eval/save settings: the first level (run, then project) that sets a key wins."""
    run_level = levels[0]
    if mode == "inference":
        for key in PHASE_KEYS:
            if key in run_level:
                raise run_level.fail(key, f'only applies to training; run "{run_name}" has mode = "inference".')

    def pick(key: str):
        return next((t for t in levels if key in t), None)

    def value(key: str, read, default):
        # every level's value is checked, even one a run overrides; the first level that sets it wins
        found = [read(t) for t in levels if key in t]
        return found[0] if found else default

    def boolean(key: str, default: bool) -> bool:
        return value(key, lambda t: t.boolean(key, default), default)

    def integer(key: str, default: int, low: int = 1) -> int:
        return value(key, lambda t: t.integer(key, None, low), default)

    # A built-in profile's defaults are cited here; a plugin's profile brings its own (or the HF Trainer's).
    d = PHASE_DEFAULTS.get(framework) or run_level.ctx.catalog.profile(framework).phases or _HF
    given = tuple(k for k in PHASE_KEYS if pick(k) is not None)
    eval_keys = [k for k in given if k.startswith("eval-")]
    evaluates = boolean("eval", d.evaluates or bool(eval_keys))
    if not evaluates and eval_keys and "eval" in given:
        table = pick(eval_keys[0])
        raise table.fail(eval_keys[0], "is set but eval = false: the job never evaluates.", hint="Remove eval = false, or this key.")
    eval_batch = integer("eval-batch-size", d.eval_batch_size or batch_size)
    accumulation = integer("eval-accumulation-steps", 0)
    samples = integer("eval-samples", 0)
    generate = integer("eval-generate-tokens", d.eval_generate_tokens, 0)
    save = value("save", lambda t: t.choice("save", SAVES, "full-state-dict"), "full-state-dict")
    offload = boolean("offload-to-cpu", True)
    for key in ("save", "offload-to-cpu"):
        table = pick(key)
        if table is not None and fsdp == "none":
            raise table.fail(key, "only applies to FSDP checkpoints (fsdp = \"full-shard\", ...); this run has fsdp = \"none\".",
                             hint="Remove it, or set fsdp.")
    gather = boolean("gather-16bit-weights-on-save", False)
    table = pick("gather-16bit-weights-on-save")
    if table is not None and zero_stage != 3:
        raise table.fail("gather-16bit-weights-on-save", f"only applies to DeepSpeed ZeRO-3; this run has zero-stage = {zero_stage}.",
                         hint="Remove it, or set zero-stage = 3.")
    merge = boolean("merge-adapters", False)
    table = pick("merge-adapters")
    if table is not None and mode not in adapters:
        raise table.fail("merge-adapters", f'only applies to {_modes(adapters)}; run "{run_name}" has mode = "{mode}".')
    return JobSettings(loader=d.loader, evaluates=evaluates, eval_batch_size=eval_batch, eval_samples=samples,
                       eval_accumulation_steps=accumulation, eval_generate_tokens=generate,
                       eval_generate_batch=d.eval_generate_batch if "eval-batch-size" not in given else 0,
                       eval_loss=d.eval_loss, save=save, offload_to_cpu=offload, gather_16bit_on_save=gather,
                       merge_adapters=merge, merge_on_gpu=d.merge_on_gpu,
                       holds_last_outputs=d.holds_last_outputs, given=given)


def _modes(names: Sequence[str]) -> str:
    """'mode = "lora" or "qlora"': the modes a key applies to, for an error."""
    return "mode = " + " or ".join(f'"{n}"' for n in names)
