"""Record what a PEFT adapter method really adds on the CPU (issue 26): one case per method or option.

    python benchmarks/measure_adapters.py [--only NAME ...]

Reads every ``tests/data/adapters/*.json`` (the family case under tests/data/families it builds on, the
method's ``peft_type`` (LoRA when absent; CONFIGS) and its config arguments, the scenarios) and writes back,
per scenario, the trainable parameter count ``peft.get_peft_model`` builds, and one CPU step's terms counted as
benchmarks/measure_families.py counts them (saved tensors: ``saved_tensors_hooks``, unique storages, parameters
excluded, and so are the buffers the method adds: VeRA's shared projections, recorded as ``adapter_buffers``).
``freed_in_forward``: saved storages whose graph the forward itself dropped (DoRA's weight norm pushes an
identity through lora_A and lora_B and uses only the detached result), transient, not kept. Beside them, what the
CPU keeps differently from CUDA: aten's CPU dropout (``_dropout_impl``) multiplies by a scaled noise tensor
in the input's dtype and autograd keeps that noise, where CUDA's ``native_dropout`` keeps a bool mask.
A walk of the autograd graph finds those noise tensors (a multiply's saved operand whose values are only
0 and 1 / (1 - p)) and records their bytes and elements, so a test can count them as CUDA does.
Needs torch, transformers and peft (and bitsandbytes for the QLoRA cases: measure_qlora.py); nothing is downloaded.
"""

import argparse
import gc
import json
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional

sys.path.insert(0, str(Path(__file__).resolve().parent))
import measure_families as families  # noqa: E402  (the same build, step and counting)
import measure_qlora as quantized  # noqa: E402  (a case with a "bnb" table: the 4-bit base as bitsandbytes runs it)

DATA = families.ROOT / "tests" / "data" / "adapters"


def dropout_noise(torch, loss, p: float) -> Dict[str, int]:
    """Bytes and elements of the CPU dropout noise tensors the graph of ``loss`` keeps."""
    if not p:
        return {"bytes": 0, "elements": 0}
    scale = 1.0 / (1.0 - p)
    seen, stack, found = set(), [loss.grad_fn], {}
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        if type(node).__name__ == "MulBackward0":
            other = getattr(node, "_saved_other", None)
            if torch.is_tensor(other) and other.dim() > 0 and other.is_floating_point():
                values = other.float().unique()
                if values.numel() <= 2 and all(abs(v) < 1e-6 or abs(v - scale) < 1e-3 * scale for v in values.tolist()):
                    found[other.untyped_storage().data_ptr()] = (other.untyped_storage().nbytes(), other.numel())
        stack.extend(fn for fn, _ in node.next_functions)
    return {"bytes": sum(b for b, _ in found.values()), "elements": sum(n for _, n in found.values())}


# peft's config class for each method a case names (``"peft_type"``; LoRA when absent)
CONFIGS = {"lora": "LoraConfig", "ia3": "IA3Config", "loha": "LoHaConfig", "lokr": "LoKrConfig", "vera": "VeraConfig",
           "prompt": "PromptTuningConfig", "prefix": "PrefixTuningConfig", "p-tuning": "PromptEncoderConfig"}


def peft_config(peft, case: Dict[str, Any]):
    """The case's PEFT config: its class by ``peft_type``, its arguments as recorded (task CAUSAL_LM for the prompt methods)."""
    kind = case.get("peft_type", "lora")
    args = dict(case["peft"], task_type="CAUSAL_LM") if kind in ("prompt", "prefix", "p-tuning") else case["peft"]
    return getattr(peft, CONFIGS[kind])(**args)


def scenario(torch, transformers, peft, family: Dict[str, Any], case: Dict[str, Any], spec: Dict[str, Any]) -> Dict[str, Any]:
    if "bnb" in case:
        model = quantized.load(torch, transformers, peft, families.cut_config(family), case, family.get("attn", "sdpa"), families._build)
    else:
        dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[spec["dtype"]]
        model = families._build(torch, transformers, families.cut_config(family), dtype, family.get("attn", "sdpa"))
        base_buffers = {b.untyped_storage().data_ptr() for b in model.buffers()}
        model = peft.get_peft_model(model, peft_config(peft, case))
    adapters = [p for p in model.parameters() if p.requires_grad]
    # buffers the method adds (VeRA's shared frozen projections): weights, counted apart from the parameters
    added = [] if "bnb" in case else list({b.untyped_storage().data_ptr(): b for b in model.buffers()
                                           if b.untyped_storage().data_ptr() not in base_buffers}.values())
    vocab = model.get_output_embeddings().weight.shape[0]
    ids = torch.randint(0, vocab, (spec["batch"], spec["seq"]), generator=torch.Generator().manual_seed(1))
    result = dict(spec, trainable=sum(p.numel() for p in adapters))
    terms = {"weights": families._nbytes(p for p in model.parameters() if not p.requires_grad),
             "adapter_weights": families._nbytes(adapters)}
    if added:
        terms["adapter_buffers"] = families._nbytes(added)
    # the step as measure_families counts it, plus a second forward for the graph walk (same seed, same noise counts)
    if "bnb" in case:
        terms["weights"] += quantized.quant_state_bytes(model)
        freed = {}
        step, result["held_after_backward"] = quantized.step(torch, model, ids, adapters, freed)
        terms.update(step)
        result["freed_in_forward"] = freed
    else:
        freed: Dict[str, int] = {}
        terms.update(families._train_step(torch, model, ids, adapters, freed, added))
        result["freed_in_forward"] = freed
    model.train()
    out = model(input_ids=ids, labels=ids, use_cache=False)
    result["cpu_dropout_noise"] = dropout_noise(torch, out.loss, case["peft"].get("lora_dropout", 0.0))
    result["terms"] = terms
    del model, out
    gc.collect()
    return result


def measure_case(path: Path) -> None:
    import peft
    import torch
    import transformers

    case = json.loads(path.read_text())
    family = json.loads((families.DATA / f"{case['family_case']}.json").read_text())
    case["versions"] = {"torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__}
    if "bnb" in case:
        import bitsandbytes

        case["versions"]["bitsandbytes"] = bitsandbytes.__version__
    rows = []
    for spec in case["scenarios"]:
        spec = {k: spec[k] for k in ("dtype", "batch", "seq")}
        row = scenario(torch, transformers, peft, family, case, spec)
        rows.append(row)
        print(f"{path.stem} {spec['dtype']}: trainable {row['trainable']:,} " + " ".join(f"{k}={v:,}" for k, v in row["terms"].items())
              + f" noise={row['cpu_dropout_noise']} freed={row['freed_in_forward']}", flush=True)
    case["scenarios"] = rows
    path.write_text(json.dumps(case, indent=1) + "\n")


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", help="file stems under tests/data/adapters")
    args = parser.parse_args(argv)
    paths = [DATA / f"{stem}.json" for stem in args.only] if args.only else sorted(DATA.glob("*.json"))
    for path in paths:
        measure_case(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
