"""Record what transformers really builds, saves and caches for each model family (issue 9 §3).

    python benchmarks/measure_families.py [--only NAME ...] [--params-only]

Reads every ``tests/data/families/*.json`` (the published ``config.json``, where it was read, and the
overrides that cut it to a CPU-sized model) and writes back, in the same file:
- ``params``: the exact parameter count of the FULL published config, built by transformers on the
  meta device (``AutoModelForCausalLM.from_config``; Gemma 3 maps to the multimodal
  ``Gemma3ForConditionalGeneration``, vision tower included); tied weights once;
- ``scenarios``: one CPU step of the cut model (published config + ``overrides``, typically 2 layers
  that keep every layer kind) with random weights and dropout 0, each term in bytes, counted as
  ``llmmem measure`` and ../shared/validation/groundtruth.jsonl count them: parameters, ``.grad``
  tensors after backward, AdamW state after one step, every tensor autograd saved for backward
  during the forward (``saved_tensors_hooks``; unique storages, parameters excluded), the logits the
  forward returns, and for inference the storages the returned cache object holds.
Full training runs in bf16 and fp32 ("pure": weights, grads and states in that dtype), LoRA with PEFT
(adapters in fp32, as PEFT keeps them) on the family's own module names, inference with use_cache.
Needs torch, transformers and (for LoRA) peft; nothing is downloaded.
"""

import argparse
import gc
import json
import sys
import weakref
from pathlib import Path
from typing import Any, Dict, List, Optional

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "tests" / "data" / "families"

# Beyond these, a full training step of the cut model does not fit this CPU box (23 GiB): AdamW in fp32
# holds 16 bytes per parameter (weights, grads, two states), in bf16 8.
MAX_TRAIN_PARAMS = {"fp32": 700_000_000, "bf16": 1_400_000_000}


def _nbytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def _storages(obj, found: Dict[int, int], seen: set) -> None:
    """Unique storages of every tensor reachable from a cache object (attributes, lists, dicts)."""
    import torch

    if id(obj) in seen:
        return
    seen.add(id(obj))
    if torch.is_tensor(obj):
        if obj.numel():
            storage = obj.untyped_storage()
            found.setdefault(storage.data_ptr(), storage.nbytes())
        return
    if isinstance(obj, dict):
        items = list(obj.values())
    elif isinstance(obj, (list, tuple)):
        items = list(obj)
    elif hasattr(obj, "__dict__") and not isinstance(obj, type):
        items = list(vars(obj).values())
    else:
        return
    for item in items:
        _storages(item, found, seen)


def _cache_layers(cache) -> List[Dict[str, Any]]:
    """What each cache layer holds: its class and the shapes of its tensors (views as they are)."""
    import torch

    rows = []
    for layer in getattr(cache, "layers", []) or []:
        shapes = {name: list(value.shape) for name, value in vars(layer).items() if torch.is_tensor(value) and value.numel()}
        for name, value in vars(layer).items():
            if isinstance(value, dict):
                for key, item in value.items():
                    if torch.is_tensor(item) and item.numel():
                        shapes[f"{name}[{key}]"] = list(item.shape)
        rows.append({"class": type(layer).__name__, "tensors": shapes})
    return rows


def hf_config(transformers, cfg: Dict[str, Any]):
    cfg = dict(cfg)
    return transformers.AutoConfig.for_model(cfg.pop("model_type"), **cfg)


def meta_params(torch, transformers, cfg: Dict[str, Any]) -> int:
    """Exact parameter count of the full published config (meta device: no memory, no init)."""
    with torch.device("meta"):
        model = transformers.AutoModelForCausalLM.from_config(hf_config(transformers, cfg))
    return sum(p.numel() for p in model.parameters())


def cut_config(case: Dict[str, Any]) -> Dict[str, Any]:
    """The published config with the case's overrides, nested keys merged (``text_config`` ...)."""
    cfg = json.loads(json.dumps(case["config"]))
    for key, value in case.get("overrides", {}).items():
        if isinstance(value, dict) and isinstance(cfg.get(key), dict):
            cfg[key].update(value)
        else:
            cfg[key] = value
    cfg.pop("quantization_config", None)  # MXFP4 / GPTQ weights are not built on the CPU: plain tensors
    return cfg


def _build(torch, transformers, cfg: Dict[str, Any], dtype, attn: str):
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(hf_config(transformers, cfg), attn_implementation=attn, dtype=dtype)
    return model


def _attn_used(model) -> str:
    config = model.config
    used = getattr(config, "_attn_implementation", None)
    text = getattr(config, "text_config", None)
    if text is not None:
        used = getattr(text, "_attn_implementation", used)
    return str(used)


EXPLAIN: Dict[str, int] = {}  # --explain: saved bytes by (dtype, shape of the first tensor seen on each storage)


def _train_step(torch, model, ids, trainable, freed: Optional[Dict[str, int]] = None, weights=()) -> Dict[str, int]:
    """One step's terms. ``freed``, when given, receives the bytes of saved storages whose graph the forward
    itself dropped before it ended (a module that builds a graph and uses only its detached result, such as
    PEFT DoRA's weight norm): transient, not kept for backward, though the pack hook saw them. ``weights``:
    buffers that are weights (VeRA's shared projections), not counted as saved like the parameters."""
    params = list(model.parameters())
    storages = {p.untyped_storage().data_ptr() for p in list(params) + list(weights)}
    saved: Dict[int, int] = {}
    alive: Dict[int, List[Any]] = {}  # storage -> weak references to the saved tensors on it (``freed`` only)
    dropped = 0

    def pack(tensor):
        nonlocal dropped
        storage = tensor.untyped_storage()
        ptr = storage.data_ptr()
        if freed is not None and ptr in alive and ptr not in storages and not any(ref() is not None for ref in alive[ptr]):
            dropped += saved.pop(ptr)  # the storage counted at this address was freed and the address reused
            del alive[ptr]
        if ptr not in storages and ptr not in saved:
            saved[ptr] = storage.nbytes()
            key = f"{str(tensor.dtype).replace('torch.', '')} {tuple(tensor.shape)} storage {storage.nbytes()}"
            EXPLAIN[key] = EXPLAIN.get(key, 0) + 1
        if freed is not None and ptr in saved:
            alive.setdefault(ptr, []).append(weakref.ref(tensor))
        return tensor

    model.train()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        out = model(input_ids=ids, labels=ids, use_cache=False)
    if freed is not None:
        gc.collect()
        dead = [ptr for ptr, refs in alive.items() if not any(ref() is not None for ref in refs)]
        freed["bytes"] = dropped + sum(saved[ptr] for ptr in dead)
    terms = {"saved_activations": sum(saved.values()) + dropped, "logits": _nbytes([out.logits])}
    out.loss.backward()
    del out
    optimizer = torch.optim.AdamW(trainable, lr=1e-5)
    optimizer.step()
    terms["gradients"] = _nbytes([p.grad for p in params if p.grad is not None])
    terms["optimizer_states"] = _nbytes([v for state in optimizer.state.values() for v in state.values()
                                         if torch.is_tensor(v) and v.dim() > 0])
    return terms


def scenario(torch, transformers, case: Dict[str, Any], spec: Dict[str, Any]) -> Dict[str, Any]:
    """Run one scenario (``mode``, ``dtype``, ``batch``, ``seq``) of the cut model; bytes per term."""
    cfg = cut_config(case)
    dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[spec["dtype"]]
    # attn_by_scenario: "<mode>-<dtype>" -> the attention one scenario runs with, where the case's default would
    # measure a CPU artefact (deepseek_v2 bf16 training: CPU SDPA's fp32 math fallback when v and q/k head dims differ)
    attn = case.get("attn_by_scenario", {}).get(f"{spec['mode']}-{spec['dtype']}", case.get("attn", "sdpa"))
    try:
        model = _build(torch, transformers, cfg, dtype, attn)
    except ValueError as err:  # e.g. Gemma 2 in transformers 5.24: "does not support ... scaled_dot_product_attention"
        if attn != "sdpa" or "scaled_dot_product_attention" not in str(err):
            raise
        model = _build(torch, transformers, cfg, dtype, "eager")
    vocab = model.get_output_embeddings().weight.shape[0]
    ids = torch.randint(0, vocab, (spec["batch"], spec["seq"]), generator=torch.Generator().manual_seed(1))
    result = {key: spec[key] for key in ("mode", "dtype", "batch", "seq")}
    result.update(attn=_attn_used(model), optimizer=None)
    params = list(model.parameters())
    result["params"] = sum(p.numel() for p in params)
    terms: Dict[str, int] = {"weights": _nbytes(params)}
    if spec["mode"] == "inference":
        model.eval()
        with torch.no_grad():
            out = model(input_ids=ids, use_cache=True)
        found: Dict[int, int] = {}
        _storages(out.past_key_values, found, set())
        terms["kv_cache"] = sum(found.values())
        terms["logits"] = _nbytes([out.logits])
        result["cache"] = {"class": type(out.past_key_values).__name__, "layers": _cache_layers(out.past_key_values)}
    elif spec["mode"] == "train":
        result["optimizer"] = "adamw"
        terms.update(_train_step(torch, model, ids, params))
    else:  # lora
        import peft

        targets = case["lora_targets"]
        modules: Any = targets
        if case.get("lora_scope"):  # a multimodal model: adapt the language model's layers, not the vision tower's
            modules = f".*{case['lora_scope']}.*\\.({'|'.join(targets)})"
        lora = peft.LoraConfig(r=spec.get("lora_r", 8), lora_alpha=16, lora_dropout=0.0, target_modules=modules)
        model = peft.get_peft_model(model, lora)
        adapters = [p for p in model.parameters() if p.requires_grad]
        result.update(optimizer="adamw", lora_r=lora.r, lora_targets=targets)
        result["trainable"] = sum(p.numel() for p in adapters)
        terms["weights"] = _nbytes(p for p in model.parameters() if not p.requires_grad)
        terms["adapter_weights"] = _nbytes(adapters)
        terms.update(_train_step(torch, model, ids, adapters))
    result["terms"] = terms
    del model
    gc.collect()
    return result


SCENARIOS = (
    {"mode": "train", "dtype": "bf16"},
    {"mode": "train", "dtype": "fp32"},
    {"mode": "lora", "dtype": "bf16"},
    {"mode": "inference", "dtype": "bf16"},
)


def measure_case(path: Path, params_only: bool = False) -> None:
    import torch
    import transformers

    torch.set_num_threads(max(1, torch.get_num_threads()))
    case = json.loads(path.read_text())
    case["params"] = meta_params(torch, transformers, case["config"])
    case["versions"] = {"torch": torch.__version__, "transformers": transformers.__version__}
    print(f"{path.stem}: params {case['params']:,}", flush=True)
    if not params_only and case.get("measure", True):
        cut = meta_params(torch, transformers, cut_config(case))
        batch, seq = case.get("batch", 2), case.get("seq", 64)
        rows = []
        for spec in SCENARIOS:
            if spec["mode"] == "train" and cut > MAX_TRAIN_PARAMS[spec["dtype"]]:
                rows.append({**spec, "batch": batch, "seq": seq, "skipped": f"cut model has {cut:,} parameters; "
                             f"a full {spec['dtype']} AdamW step does not fit the measuring machine"})
                continue
            row = scenario(torch, transformers, case, {**spec, "batch": batch, "seq": seq})
            rows.append(row)
            print(f"  {spec['mode']:<9} {spec['dtype']:<4} {row['attn']:<6} " + " ".join(f"{k}={v:,}" for k, v in row["terms"].items()), flush=True)
        case["scenarios"] = rows
    path.write_text(json.dumps(case, indent=1) + "\n")


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", help="file stems under tests/data/families")
    parser.add_argument("--params-only", action="store_true", help="only the meta-device parameter counts")
    parser.add_argument("--explain", nargs=3, metavar=("NAME", "MODE", "DTYPE"),
                        help="run one scenario and list what autograd saved (count x dtype, shape, storage bytes); writes nothing")
    args = parser.parse_args(argv)
    if args.explain:
        import torch
        import transformers

        stem, mode, dtype = args.explain
        case = json.loads((DATA / f"{stem}.json").read_text())
        row = scenario(torch, transformers, case, {"mode": mode, "dtype": dtype, "batch": case.get("batch", 2), "seq": case.get("seq", 64)})
        for key, count in sorted(EXPLAIN.items(), key=lambda item: -item[1] * int(item[0].rsplit(" ", 1)[1])):
            print(f"{count:4d} x {key}")
        print(json.dumps(row["terms"]))
        return 0
    paths = sorted(DATA.glob("*.json"))
    if args.only:
        paths = [DATA / f"{stem}.json" for stem in args.only]  # in the order given
    failed = []
    for path in paths:
        try:
            measure_case(path, args.params_only)
        except Exception as err:  # one family's failure must not lose the others' data
            print(f"{path.stem}: FAILED {type(err).__name__}: {err}", flush=True)
            failed.append(path.stem)
    if failed:
        print("failed:", " ".join(failed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
