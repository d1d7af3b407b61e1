"""``llmmem measure``: run one real step of a declared run and compare it with the estimate, term by term.

Needs the optional extra (``pip install pytest-llmmem[measure]``: torch and transformers); the
core never imports this module. The model is built from its shape with random weights: nothing
is downloaded and no checkpoint is read.

- On the CPU (the default without a GPU) the accounting is exact: parameters, gradients and
  optimizer state after one step, every tensor autograd saves for backward (through
  ``torch.autograd.graph.saved_tensors_hooks``; unique storages, parameters excluded), the
  logits and the KV cache. Weights, gradients and states are kept in the run's dtype ("pure"
  precision), as in the shared ground truth. Deep models are shrunk to a few layers: every term
  is compared on that same shrunk architecture, and the output says so.
- On a CUDA GPU the step runs there and the peak of ``torch.cuda.max_memory_allocated``, the
  caching allocator's reserved pool and the driver's view (total minus free, CUDA context
  included) are compared with the estimate's total.

PYTEST_DONT_REWRITE: no asserts here; pytest need not rewrite this plugin module.
"""

from __future__ import annotations

from typing import Dict, Optional

from ..errors import ConfigError
from ..core.records import Estimate
from ..estimator import estimate
from ..hf.config import with_depth
from ..model.architecture import Architecture
from ..core.run import Run
from ..io import files
from ..record import Record
from ..trace.build import TORCH_DTYPES, causal_lm, checkpointing, optimizer_for, require_torch

DEFAULT_CPU_LAYERS = 2
TORCH_OPTIMIZERS = ("adamw", "adam", "sgd", "sgd-momentum")


class Measurement(Record):
    """Measured bytes per term beside the estimate of the same (possibly shrunk) run."""

    run: Run  # the run as measured (shrunk in depth when ``shrunk_from`` is set)
    device: str
    terms: Dict[str, int]  # term -> measured bytes
    estimated: Dict[str, int]  # term -> estimated bytes, the same terms
    shrunk_from: Optional[int] = None  # the declared depth, when the measured model has fewer layers

    @property
    def ratio(self) -> float:
        """measured / estimated over the compared terms: the calibration ``--write`` stores."""
        return sum(self.terms.values()) / max(1, sum(self.estimated.values()))


def _check_measurable(run: Run) -> Architecture:
    if not isinstance(run.model, Architecture):
        raise ConfigError(f'run "{run.name}": measure needs the architecture (config or shape keys), not only params.')
    if run.adapter is not None:
        raise ConfigError(f'run "{run.name}": measure runs full training and inference; {run.mode} needs peft/bitsandbytes and is not measured yet.')
    if run.dtype.quantized:
        raise ConfigError(f'run "{run.name}": measure builds {run.dtype.name} weights only through bitsandbytes, which it does not use.')
    if run.trains and run.optimizer.name not in TORCH_OPTIMIZERS:
        raise ConfigError(f'run "{run.name}": measure steps torch optimizers ({", ".join(TORCH_OPTIMIZERS)}); "{run.optimizer.name}" is not one.')
    if run.gpus > 1:
        raise ConfigError(f'run "{run.name}": measure runs one process on one device; this run declares {run.gpus} GPUs.')
    if run.recipe.post_training:
        # An SFT step measured against a DPO/GRPO/PPO estimate would store a wrong calibration.
        raise ConfigError(f'run "{run.name}": measure runs an SFT step; recipe = "{run.recipe.name}" needs the trainer itself '
                          '(benchmarks/measure_rl.py runs TRL\'s DPO step).')
    return run.model


def measure(run: Run, device: str = "auto", max_layers: Optional[int] = None) -> Measurement:
    """Run one step of ``run`` and measure it (see the module docstring)."""
    arch = _check_measurable(run)
    torch, transformers = require_torch("llmmem measure")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    limit = max_layers if max_layers is not None else (DEFAULT_CPU_LAYERS if device == "cpu" else arch.num_layers)
    shrunk_from = arch.num_layers if limit < arch.num_layers else None
    if shrunk_from:
        arch = with_depth(arch, limit)
        run = run._replace(model=arch)
    dtype = getattr(torch, TORCH_DTYPES[run.dtype.name])
    torch.manual_seed(0)
    model = causal_lm(transformers, arch, run.seq_len, "sdpa" if run.flash_attention and arch.family.sdpa else "eager", dtype)
    model.to(device)
    ids = torch.randint(0, arch.vocab_size, (run.batch_size, run.seq_len), device=device)
    est = estimate(run._replace(precision="pure" if run.trains else run.precision, gpus=1))
    if device == "cpu":
        terms, estimated = _cpu_step(torch, model, ids, run, est)
    else:
        terms, estimated = _cuda_step(torch, model, ids, run, est, device)
    return Measurement(run, device, terms, estimated, shrunk_from)


def _nbytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def _cpu_step(torch, model, ids, run: Run, est: Estimate):
    """Exact tensor accounting for one step on the CPU."""
    params = list(model.parameters())
    terms: Dict[str, int] = {"weights": _nbytes(params)}
    d, b = est.details, est.full_terms
    estimated: Dict[str, int] = {"weights": b["weights"]}
    if not run.trains:
        # Generation asks for the last position's logits only, as generate() does (logits_to_keep=1).
        keep = {} if run.logits == "all" else {"logits_to_keep": 1}
        with torch.no_grad():
            out = model(ids, use_cache=True, **keep)
        cache = getattr(out, "cache", None) or out.past_key_values
        # every tensor a cache layer holds: keys and values, or a Mamba layer's conv and SSM states
        # (dicts by state index in transformers 5.24 cache_utils.LinearAttentionLayer)
        held = [v for layer in cache.layers for v in vars(layer).values()]
        held += [t for v in held if isinstance(v, dict) for t in v.values()]
        # counted by storage: a sliding layer's cache is a view that keeps the whole prompt alive
        storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in held if torch.is_tensor(t) and t.dim() > 0}
        terms["kv_cache"] = sum(storages.values())
        terms["logits"] = _nbytes([out.logits])
        estimated.update(kv_cache=b["kv_cache"], logits=d.get("logits.all_positions", d.get("logits.last_position", 0)))
        return terms, estimated
    if run.gradient_checkpointing:
        checkpointing(model)
    model.train()
    storages = {p.untyped_storage().data_ptr() for p in params}
    saved: Dict[int, int] = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in storages:
            saved.setdefault(storage.data_ptr(), storage.nbytes())
        return tensor

    handles = []
    if run.gradient_checkpointing:
        # A checkpointed layer keeps its inputs for the recompute; the ones transformers passes by keyword (the
        # attention mask: modeling_layers.py GradientCheckpointingLayer binds kwargs with functools.partial) are
        # held by the closure where no saved-tensor hook sees them, so they are collected here.
        def hold(module, args, kwargs):
            mask = kwargs.get("attention_mask")
            if torch.is_tensor(mask):
                saved.setdefault(mask.untyped_storage().data_ptr(), mask.untyped_storage().nbytes())

        layers = [m for m in model.modules() if any(c.__name__ == "GradientCheckpointingLayer" for c in type(m).__mro__)]
        handles = [layer.register_forward_pre_hook(hold, with_kwargs=True) for layer in layers]
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        out = model(ids, labels=ids)
    for handle in handles:
        handle.remove()
    terms["saved activations"] = sum(saved.values())
    terms["logits"] = _nbytes([out.logits])
    out.loss.backward()
    optimizer = optimizer_for(torch, run, params)
    optimizer.step()
    terms["gradients"] = _nbytes([p.grad for p in params if p.grad is not None])
    terms["optimizer_states"] = _nbytes([v for state in optimizer.state.values() for v in state.values()
                                         if torch.is_tensor(v) and v.dim() > 0])
    estimated.update(
        gradients=b["gradients"], optimizer_states=b["optimizer_states"], logits=d["logits.logits"],
        # what autograd keeps during the forward: activations less the backward recompute, plus the log-softmax
        # (and Gemma 2's soft-capped logits, whose tanh output is saved too)
        **{"saved activations": b["activations"] - d.get("activations.recomputed_layer", 0) + d.get("logits.log_softmax", 0)
           + d.get("logits.compiled_saved", 0)
           + d.get("logits.softcap_tanh", 0)},
    )
    return terms, estimated


def _cuda_step(torch, model, ids, run: Run, est: Estimate, device: str):
    """Peak memory of one step on a CUDA GPU: allocated, reserved, and the driver's view."""
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    if run.trains:
        if run.gradient_checkpointing:
            checkpointing(model)
        model.train()
        optimizer = optimizer_for(torch, run, list(model.parameters()))
        for _ in range(2):  # the second step has the optimizer states and gradients of the first
            optimizer.zero_grad(set_to_none=True)
            model(ids, labels=ids).loss.backward()
            optimizer.step()
    else:
        with torch.no_grad():
            model(ids, use_cache=True)
    torch.cuda.synchronize(device)
    free, total = torch.cuda.mem_get_info(device)
    terms = {"max_memory_allocated": torch.cuda.max_memory_allocated(device),
             "max_memory_reserved": torch.cuda.max_memory_reserved(device),
             "driver used (nvidia-smi)": total - free}
    estimated = {"max_memory_allocated": est.allocated_bytes, "max_memory_reserved": est.reserved_bytes,
                 "driver used (nvidia-smi)": est.total_bytes}
    return terms, estimated


def render(m: Measurement) -> str:
    def mib(n: int) -> str:
        return f"{n / 2**20:.2f} MiB"

    lines = [f'llmmem measure: run "{m.run.name}" on {m.device}']
    if m.shrunk_from:
        lines.append(f"  measured on {m.run.model.num_layers} of its {m.shrunk_from} layers (activations and states scale per layer); "
                     "the estimate below is for the same shrunk model")
    width = max(len(k) for k in m.terms)
    lines.append(f"  {'term':<{width}}  {'estimated':>14}  {'measured':>14}  {'measured/est':>12}")
    for term, value in m.terms.items():
        est = m.estimated.get(term, 0)
        ratio = f"{value / est:.3f}" if est else "-"
        lines.append(f"  {term:<{width}}  {mib(est):>14}  {mib(value):>14}  {ratio:>12}")
    if m.device == "cpu":
        lines.append(f"  compared terms together: measured/estimated = {m.ratio:.3f}")
    else:
        # The driver's view is what a budget must hold, so it is the calibration on a GPU.
        lines.append(f"  driver view / estimate = {m.ratio:.3f}")
    return "\n".join(lines)


def calibration_of(m: Measurement) -> float:
    """The factor ``--write`` stores: the whole comparison on the CPU, the driver's view on a GPU."""
    if m.device == "cpu":
        return round(m.ratio, 3)
    return round(m.terms["driver used (nvidia-smi)"] / max(1, m.estimated["driver used (nvidia-smi)"]), 3)


def write_calibration(path: str, run: Run, value: float) -> None:
    """Set ``calibration = value`` in the run's [[tool.llmmem.runs]] table."""
    from pathlib import Path


    try:
        text = files.read_text(path, files.PYPROJECT_LIMIT)
    except (OSError, ValueError) as err:
        raise ConfigError(f"cannot be read: {err}.", path=path) from None
    lines = text.splitlines(keepends=True)
    header = (run.line or 0) - 1
    if header < 0 or not lines[header].strip().startswith("[[tool.llmmem.runs]]"):
        raise ConfigError(f'run "{run.name}" is not a [[tool.llmmem.runs]] table of its own (an inline table?); '
                          f"add calibration = {value} to it by hand.", path=path, line=run.line)
    end = header + 1
    while end < len(lines) and not lines[end].lstrip().startswith("["):
        end += 1
    new = f"calibration = {value}  # llmmem measure: measured / estimated\n"
    for index in range(header + 1, end):
        if lines[index].split("=")[0].strip() in ("calibration",):
            lines[index] = new
            break
    else:
        insert = end
        while insert > header + 1 and not lines[insert - 1].strip():
            insert -= 1  # keep the blank lines between tables after the new key
        lines.insert(insert, new)
    Path(path).write_text("".join(lines), encoding="utf-8")
