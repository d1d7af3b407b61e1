"""The whole job's phases (issue 16): load, backward, optimizer step, eval, save.

Figures are computed by hand from the formulas' sources (comments say how); the golden cases are
the two the issue asks for: an HF evaluation that accumulates logits, and an FSDP full state dict.
"""

import json

import pytest

from pytest_llmmem.config.load import adhoc_run, parse
from pytest_llmmem.errors import ConfigError
from pytest_llmmem.estimator import estimate
from pytest_llmmem.fit.search import ways_out
from pytest_llmmem.report.github import step_summary
from pytest_llmmem.report.text import as_dict, render_failure

# Llama-3.1-8B (shared/validation/archs.jsonl): 8,030,261,248 params.
LLAMA3_8B = {"family": "llama", "hidden-size": 4096, "num-layers": 32, "num-heads": 32, "num-kv-heads": 8,
             "intermediate-size": 14336, "vocab-size": 128256}
LLAMA3_8B_PARAMS = 8_030_261_248
# Llama-2-7B: 6,738,415,616 params.
LLAMA2_7B = {"family": "llama", "hidden-size": 4096, "num-layers": 32, "num-heads": 32, "num-kv-heads": 32,
             "intermediate-size": 11008, "vocab-size": 32000}


def _part(est, name):
    return next(p for p in est.phase_parts if p.name == name)


EVAL_RUN = {**LLAMA3_8B, "mode": "lora", "gpu": "H100-80GB", "batch-size": 1, "seq-len": 1024,
            "eval-batch-size": 8, "eval-samples": 200}


def test_hf_eval_that_keeps_every_batchs_logits_is_over_while_the_step_fits():
    est = estimate(adhoc_run(EVAL_RUN))
    budget = est.budget_bytes
    assert dict(est.phases)["backward"] <= budget and dict(est.phases)["optimizer step"] <= budget
    assert est.fits is False and est.peak_phase == "eval"
    # 200 samples / 8 per step = 25 steps held; one step = 8 x 1024 positions x (128,256 bf16 logits
    # + one int64 label); nested_concat holds old + new + result at the last step: twice the lot.
    assert _part(est, "eval").breakdown["eval_logits_kept"] == 2 * 25 * 8 * 1024 * (128256 * 2 + 8)
    assert est.total_bytes == dict(est.phases)["eval"]  # the breakdown adds up to the peak phase
    message = render_failure(est)
    assert "per GPU at evaluation" in message and "peak at evaluation: the HF Trainer keeps the logits of 200 eval samples" in message
    options = {w.key: w for w in ways_out(est.run)}
    assert "eval-accumulation-steps" in options and options["eval-accumulation-steps"].value == 1


def test_eval_accumulation_steps_1_fixes_it():
    est = estimate(adhoc_run({**EVAL_RUN, "eval-accumulation-steps": 1}))
    assert est.fits is True
    evaluation = _part(est, "eval").breakdown
    # one batch held: its logits are the forward's own output; the upcast loss adds two fp32 copies
    # (8 x 1024 x 128,256 elements x (2 + 4 + 4) bytes).
    assert "eval_logits_kept" not in evaluation and evaluation["logits"] == 8 * 1024 * 128256 * 10


def test_without_compute_metrics_no_logits_are_kept():
    # No eval-samples: prediction_loss_only (no compute_metrics), the Trainer keeps no logits.
    est = estimate(adhoc_run({k: v for k, v in EVAL_RUN.items() if k != "eval-samples"}))
    assert est.fits is True and "eval_logits_kept" not in _part(est, "eval").breakdown


FSDP_RUN = {**LLAMA3_8B, "mode": "train", "gpu": "A100-40GB", "gpus": 4, "fsdp": "full-shard", "batch-size": 1,
            "seq-len": 1024, "gradient-checkpointing": True}


def test_four_gpu_fsdp_fits_training_but_not_a_full_state_dict_without_cpu_offload():
    fits = estimate(adhoc_run(FSDP_RUN))  # accelerate's default: FullStateDictConfig(offload_to_cpu=True)
    assert fits.fits is True and fits.peak_phase == "backward"
    est = estimate(adhoc_run({**FSDP_RUN, "offload-to-cpu": False}))
    assert dict(est.phases)["backward"] == dict(fits.phases)["backward"]
    assert est.fits is False and est.peak_phase == "save"
    # Every fp32 flat parameter cloned on the GPU (4 B x 8,030,261,248) plus the unit being gathered:
    # the largest unit is the embedding, 128,256 x 4,096 params, fp32.
    assert _part(est, "save").breakdown["state_dict"] == 4 * LLAMA3_8B_PARAMS + 4 * 128256 * 4096
    assert "peak at checkpoint save: FSDP full state dict gathers 29.92 GiB on rank 0" in est.notes[0]
    options = {w.key for w in ways_out(est.run)}
    assert {"offload-to-cpu", "save"} <= options
    sharded = estimate(adhoc_run({**FSDP_RUN, "save": "sharded"}))
    # sharded: one unit gathered plus this rank's quarter of the fp32 params
    assert _part(sharded, "save").breakdown["state_dict"] == 4 * 128256 * 4096 + 4 * LLAMA3_8B_PARAMS // 4


def test_litgpt_qlora_on_one_device_peaks_while_loading():
    est = estimate(adhoc_run({**LLAMA2_7B, "mode": "qlora", "framework": "litgpt", "gpu": "A10G", "batch-size": 2, "seq-len": 512,
                              "lora-rank": 32, "lora-targets": ["q_proj", "v_proj"]}))
    assert est.peak_phase == "load"
    # every weight in bf16 (6,738,415,616 x 2) + the bf16 adapters: 32 layers x (q, v) x 32 x (4096 + 4096)
    built = 6_738_415_616 * 2 + 32 * 2 * 32 * (4096 + 4096) * 2
    assert _part(est, "load").breakdown["weights"] == built
    # litgpt-hub-14 (shared/validation/measured2.jsonl): 13.68 GB max_memory_allocated; this is 13.51 GB.
    assert abs(built / 13.68e9 - 1) < 0.02
    # On two devices litgpt builds on the meta device (empty_init=True): loading no longer sets the peak.
    multi = estimate(adhoc_run({**LLAMA2_7B, "mode": "qlora", "framework": "litgpt", "gpu": "A10G", "gpus": 2, "batch-size": 2,
                                "seq-len": 512, "lora-rank": 32, "lora-targets": ["q_proj", "v_proj"]}))
    assert multi.peak_phase != "load"


def test_hf_quantised_load_converts_one_tensor_at_a_time():
    est = estimate(adhoc_run({**LLAMA2_7B, "mode": "qlora", "gpu": "A10G", "batch-size": 2, "seq-len": 512}))
    load = _part(est, "load").breakdown
    assert load["load_copies"] == 4096 * 11008 * 2  # the largest linear (the MLP's), in bf16
    assert est.peak_phase != "load"


def test_fsdp_init_of_a_4bit_base_flattens_the_16bit_root_unit():
    """fsdp_qlora's 7B QLoRA on two GPUs (benchmarks_03_2024.md: 3.72 GiB reserved after the FSDP wrap). The root
    unit, the embedding, final norm and untied head that no decoder-layer unit wraps, stays bf16: 32000 x 4096 +
    4096 + 32000 x 4096 = 262,148,096 params x 2 B, moved and flattened (two copies) = 1,048,592,384 B; a 4-bit
    decoder layer is 202,383,360 x 0.5 B. The phase: the shards and that unit twice, 2.96 GiB. The shards: the base's
    and half of the bf16 adapters (r 64 on six linears of 32 layers: 143,130,624 params x 2 B / 2 GPUs), 2,127,310,848 B."""
    est = estimate(adhoc_run({**LLAMA2_7B, "mode": "qlora", "gpu": "RTX-3090", "gpus": 2, "fsdp": "full-shard", "double-quant": True,
                              "adapter-dtype": "bf16", "lora-rank": 64, "batch-size": 1, "seq-len": 512,
                              "lora-targets": ["q_proj", "k_proj", "v_proj", "up_proj", "down_proj", "gate_proj"]}))
    load = _part(est, "load").breakdown
    assert load["load_copies"] == 2 * 262_148_096 * 2 == 1_048_592_384
    assert est.details["weights.adapters"] == 143_130_624 * 2 // 2
    assert load["weights"] + load["load_copies"] == 2_127_310_848 + 1_048_592_384
    assert est.peak_phase != "load"  # the step (3.88 GiB without the CUDA context) stays the peak


def test_merge_adapters_on_the_gpu():
    est = estimate(adhoc_run({**LLAMA3_8B, "mode": "lora", "gpu": "H100-80GB", "batch-size": 1, "seq-len": 512, "merge-adapters": True}))
    # PEFT get_delta_weight: B @ A and its scaled copy in fp32 for the largest adapted linear (q_proj 4096 x 4096)
    assert _part(est, "save").breakdown["state_dict"] == 4096 * 4096 * 2 * 4


def test_json_and_github_summary_show_every_phase():
    est = estimate(adhoc_run({**FSDP_RUN, "offload-to-cpu": False}))
    doc = json.loads(json.dumps(as_dict(est)))
    assert set(doc["phase_breakdowns"]) == {"load", "backward", "optimizer step", "save"}
    save = doc["phase_breakdowns"]["save"]
    assert save["total_bytes"] == sum(save["breakdown"].values()) == doc["total_bytes"]
    summary = step_summary("pyproject.toml", [doc])
    assert "| save **peak** |" in summary and "FSDP full state dict gathers" in summary


def _parse(body: str, top: str = ""):
    text = f'[tool.llmmem]\ngpu = "H100-80GB"\n{top}[tool.llmmem.model]\nparams = "7B"\n{body}'
    return parse(text)


def test_keys_levels_and_errors():
    project = _parse('[[tool.llmmem.runs]]\nname = "a"\nmode = "lora"\n'
                     '[[tool.llmmem.runs]]\nname = "b"\neval-batch-size = 2\n', top="eval-batch-size = 4\n")
    a, b = project.runs
    assert a.job.evaluates and a.job.eval_batch_size == 4 and b.job.eval_batch_size == 2
    with pytest.raises(ConfigError, match='only applies to FSDP checkpoints'):
        _parse('[[tool.llmmem.runs]]\nname = "a"\noffload-to-cpu = false\n')
    with pytest.raises(ConfigError, match='only applies to training'):
        _parse('[[tool.llmmem.runs]]\nname = "a"\nmode = "inference"\neval-batch-size = 2\n')
    with pytest.raises(ConfigError, match='eval = false'):
        _parse('[[tool.llmmem.runs]]\nname = "a"\neval = false\neval-samples = 10\n')
    with pytest.raises(ConfigError, match='only applies to DeepSpeed ZeRO-3'):
        _parse('[[tool.llmmem.runs]]\nname = "a"\ngather-16bit-weights-on-save = true\n')
    with pytest.raises(ConfigError, match='"shardd" is not valid'):
        _parse('[[tool.llmmem.runs]]\nname = "a"\nfsdp = "full-shard"\ngpus = 2\nsave = "shardd"\n')


def test_inference_runs_have_no_job_phases():
    est = estimate(adhoc_run({**LLAMA3_8B, "mode": "inference", "gpu": "H100-80GB", "seq-len": 1024}))
    assert est.phases == () and est.phase_parts == ()


@pytest.mark.parametrize("accumulation", [None, 2, 1])
def test_kept_logits_match_a_real_trainer_evaluate_on_the_cpu(accumulation, tmp_path):
    """HF Trainer.evaluate() with compute_metrics on a tiny Llama (fp32, CPU): the largest logits tensor
    the EvalLoopContainer holds is the estimate's held steps x one step's logits."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    from transformers import trainer_pt_utils

    from pytest_llmmem.core.terms.job_phases import _kept_logits

    cfg = transformers.LlamaConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
                                   intermediate_size=128, vocab_size=128)
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(cfg)

    class Data(torch.utils.data.Dataset):
        def __len__(self):
            return 20

        def __getitem__(self, i):
            ids = torch.randint(0, 128, (16,))
            return {"input_ids": ids, "labels": ids.clone()}

    peak = [0]
    original = trainer_pt_utils.EvalLoopContainer.add

    def add(self, tensors):
        original(self, tensors)
        if isinstance(self.tensors, torch.Tensor):
            peak[0] = max(peak[0], self.tensors.numel() * self.tensors.element_size())

    args = transformers.TrainingArguments(str(tmp_path), per_device_eval_batch_size=4, eval_accumulation_steps=accumulation,
                                          report_to=[], use_cpu=True, disable_tqdm=True)
    trainer = transformers.Trainer(model=model, args=args, eval_dataset=Data(), compute_metrics=lambda p: {"n": 0.0})
    try:
        trainer_pt_utils.EvalLoopContainer.add = add
        trainer.evaluate()
    finally:
        trainer_pt_utils.EvalLoopContainer.add = original
    keys = {"family": "llama", "hidden-size": 64, "num-layers": 2, "num-heads": 4, "intermediate-size": 128, "vocab-size": 128,
            "mode": "lora", "dtype": "fp32", "precision": "pure", "seq-len": 16, "eval-batch-size": 4, "eval-samples": 20}
    if accumulation:
        keys["eval-accumulation-steps"] = accumulation
    run = adhoc_run(keys)
    (held, _), _ = _kept_logits(run, run.model, 128)
    assert held * 4 * 16 * 128 * 4 == peak[0]  # steps held x (4 samples x 16 positions x 128 logits x fp32)


def test_text_report_gives_both_torch_peaks():
    # PyTorch keeps max_memory_allocated and max_memory_reserved apart (torch/cuda/memory.py); a trainer's
    # log prints one or the other. Reserved is the total less the CUDA context (0.75 GiB on an H100, outside
    # the caching allocator); allocated also leaves out the pool's slack and workspaces (the whole overhead term).
    from pytest_llmmem.report.text import render_run

    est = estimate(adhoc_run({**LLAMA3_8B, "mode": "lora", "gpu": "H100-80GB", "batch-size": 2, "seq-len": 2048}))
    gib = 1024 ** 3
    assert est.details["overhead.cuda_context"] == 0.75 * gib
    reserved, allocated = est.total_bytes - 0.75 * gib, est.total_bytes - est.breakdown["overhead"]
    assert allocated < reserved < est.total_bytes
    line = f"  torch peaks: max_memory_allocated {allocated / gib:.2f} GiB, max_memory_reserved {reserved / gib:.2f} GiB"
    assert line in render_run(est).splitlines()
