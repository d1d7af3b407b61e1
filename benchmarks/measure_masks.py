"""Where transformers' attention masks live in one CPU step, beside what the estimate counts for them.

    python benchmarks/measure_masks.py [--seq 256] [--batch 2]

Builds tiny 2-layer models with random weights (LLaMA; Mistral with a sliding window shorter than
the sequence; Gemma 2, eager only) in bf16 and runs a training step (forward + backward) or a prefill,
with an all-ones attention_mask as generate() and the Trainer pass it. A TorchDispatchMode records every
new storage (freed through weakref.finalize), so the step's peak and what is alive at it are exact;
saved_tensors_hooks give what autograd keeps. A "mask" is any (b or 1, 1, s, s) tensor. Columns:
masks autograd saved, masks alive at the step's peak (bytes), and the mask bytes the estimate's
activations term holds for the same step (pytest_llmmem.attention_masks). A prefill's figure is the
layer transient's: at a short sequence the step's own peak can lie elsewhere (the MLP, the logits).
Needs torch and transformers; nothing is downloaded.
"""

import argparse
import sys
import weakref
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

CASES = (  # family, attention, mode, sliding window, gradient checkpointing
    ("llama", "eager", "train", None, False),
    ("llama", "eager", "train", None, True),
    ("llama", "eager", "prefill", None, False),
    ("llama", "sdpa", "train", None, False),
    ("llama", "sdpa", "prefill", None, False),
    ("mistral", "sdpa", "train", 64, False),
    ("mistral", "sdpa", "train", 64, True),
    ("mistral", "sdpa", "prefill", 64, False),
    ("gemma2", "eager", "prefill", 64, False),
)


def _tracker(torch):
    from torch.utils._python_dispatch import TorchDispatchMode

    class Live(TorchDispatchMode):
        """Live bytes of every storage an op creates; the set alive at the highest point."""

        def __init__(self) -> None:
            super().__init__()
            self.live: Dict[int, Tuple[int, Tuple[int, ...]]] = {}
            self.total = self.peak = 0
            self.at_peak: List[Tuple[int, Tuple[int, ...]]] = []

        def _free(self, key: int) -> None:
            self.total -= self.live.pop(key)[0]

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for t in out if isinstance(out, (tuple, list)) else (out,):
                if isinstance(t, torch.Tensor) and t.untyped_storage().nbytes() and id(t.untyped_storage()) not in self.live:
                    storage = t.untyped_storage()
                    self.live[id(storage)] = (storage.nbytes(), tuple(t.shape))
                    weakref.finalize(storage, self._free, id(storage))
                    self.total += storage.nbytes()
                    if self.total > self.peak:
                        self.peak, self.at_peak = self.total, list(self.live.values())
            return out

    return Live()


def _is_mask(shape: Tuple[int, ...], seq: int) -> bool:
    return len(shape) == 4 and shape[1] == 1 and shape[2:] == (seq, seq)


def step(family: str, attn: str, mode: str, window: Optional[int], ckpt: bool, batch: int, seq: int) -> Dict[str, Any]:
    import torch
    import transformers

    shape = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                 vocab_size=128, max_position_embeddings=4096)
    if family == "gemma2":
        shape.update(head_dim=16, num_key_value_heads=2)
    if window:
        shape["sliding_window"] = window
    torch.manual_seed(0)
    config = transformers.AutoConfig.for_model(family, **shape)
    model = transformers.AutoModelForCausalLM.from_config(config, attn_implementation=attn, dtype=torch.bfloat16)
    if ckpt:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    ids = torch.randint(0, 128, (batch, seq), generator=torch.Generator().manual_seed(1))
    ones = torch.ones(batch, seq, dtype=torch.long)
    saved: Dict[int, Tuple[int, Tuple[int, ...]]] = {}

    def pack(t):
        saved.setdefault(id(t.untyped_storage()), (t.untyped_storage().nbytes(), tuple(t.shape)))
        return t

    live = _tracker(torch)
    if mode == "train":
        model.train()
        with live, torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            out = model(input_ids=ids, attention_mask=ones, labels=ids, use_cache=False)
        with live:
            out.loss.backward()
            del out
    else:
        model.eval()
        with live, torch.no_grad():
            out = model(input_ids=ids, attention_mask=ones, use_cache=True)
            del out
    return {"saved": sum(n for n, s in saved.values() if _is_mask(s, seq)),
            "at_peak": sum(n for n, s in live.at_peak if _is_mask(s, seq)), "peak": live.peak, "config": config}


def estimated(attn: str, mode: str, ckpt: bool, batch: int, seq: int, config) -> int:
    """The mask bytes the estimate counts in the same step: its activations term, less the same estimate
    with the two mask rules of pytest_llmmem.attention_masks switched off."""
    import json
    import tempfile
    from unittest import mock

    from pytest_llmmem.core.terms import activations
    from pytest_llmmem.core import detailed as estimate_module
    from pytest_llmmem.config.load import adhoc_run
    from pytest_llmmem.estimator import estimate

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder, "config.json")
        path.write_text(json.dumps(config.to_dict()), encoding="utf-8")
        keys = {"config": str(path), "dtype": "bf16", "batch-size": batch, "seq-len": seq, "flash-attention": attn == "sdpa"}
        if mode == "train":
            keys.update({"mode": "train", "precision": "pure", "gradient-checkpointing": ckpt})
        else:
            keys.update({"mode": "inference", "logits": "all"})
        run = adhoc_run(keys)
    counted = estimate(run).breakdown["activations"]
    zero = lambda *args, **kwargs: 0  # noqa: E731
    with mock.patch.object(activations, "sdpa_layer_mask", zero), mock.patch.object(activations, "model_masks", zero), \
            mock.patch.object(estimate_module, "model_masks", zero):
        return counted - estimate(run).breakdown["activations"]


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--batch", type=int, default=2)
    args = parser.parse_args(argv)
    print(f"b = {args.batch}, s = {args.seq}, bf16; one (b, 1, s, s) bf16 mask = {args.batch * args.seq * args.seq * 2:,} B")
    print(f"{'family':8} {'attn':6} {'step':8} {'window':>6} {'ckpt':5} {'saved':>10} {'at peak':>10} {'estimated':>10}")
    for family, attn, mode, window, ckpt in CASES:
        row = step(family, attn, mode, window, ckpt, args.batch, args.seq)
        est = estimated(attn, mode, ckpt, args.batch, args.seq, row["config"])
        print(f"{family:8} {attn:6} {mode:8} {window or '-':>6} {'yes' if ckpt else 'no':5} {row['saved']:>10,} {row['at_peak']:>10,} {est:>10,}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
