"""What one LoHa or LoKr module holds in its own backward, measured on the CPU beside the estimate's figure.

    python benchmarks/measure_lycoris_backward.py

One bf16 nn.Linear (no bias) under ``peft.get_peft_model`` (LoHaConfig or LoKrConfig, fp32 adapters as PEFT
makes them), a (2, 64, d_in) input that needs a gradient, one forward; then the backward runs under a
TorchDispatchMode that counts every new storage until a weak reference sees it freed. Printed: the backward's peak
above what was alive when it started, in fp32 weights (d_in x d_out x 4 B), and the estimate's figure for the module
(model/lycoris.py backward_transient: the weight-sized tensors, the gradient out of the module's input and, over a
16-bit model, the base branch's 16-bit copy of the output's gradient). The rest of the measured peak is the adapters' own gradients (r-sized), less
what the backward freed before its peak (LoKr's saved factor products, a few KB).
Needs torch and peft; nothing is downloaded.
"""

import sys
import weakref
from pathlib import Path
from typing import Any, Dict, Tuple

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

CASES: Tuple[Tuple[str, int, int, int, Dict[str, Any], str], ...] = (  # method, d_in, d_out, r, config options, model dtype
    ("loha", 512, 256, 8, {}, "bf16"),
    ("loha", 2048, 512, 16, {}, "bf16"),
    ("loha", 2048, 512, 16, {}, "fp32"),
    ("loha", 512, 2048, 4, {"rank_dropout": 0.2}, "bf16"),
    ("lokr", 512, 256, 8, {}, "bf16"),
    ("lokr", 2048, 512, 8, {"decompose_factor": 8}, "bf16"),
    ("lokr", 2048, 512, 8, {}, "fp32"),
    ("lokr", 512, 256, 8, {"rank_dropout": 0.1}, "bf16"),
    ("lokr", 512, 2048, 2, {"decompose_both": True, "rank_dropout": 0.1}, "bf16"),
)
TOKENS = 2 * 64


def backward_peak(torch, peft, method: str, d_in: int, d_out: int, rank: int, options: Dict[str, Any], dtype: str) -> Tuple[int, int]:
    """(peak bytes above the start of backward, bytes of the adapters' gradients) for one adapted linear."""
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_flatten

    class Live(TorchDispatchMode):
        def __init__(self) -> None:
            super().__init__()
            self.live: Dict[int, Any] = {}
            self.current = self.peak = 0

        def _gone(self, key: int, nbytes: int) -> None:
            self.current -= nbytes
            self.live.pop(key, None)

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for tensor in tree_flatten(out)[0]:
                if isinstance(tensor, torch.Tensor) and id(tensor.untyped_storage()) not in self.live:
                    storage = tensor.untyped_storage()
                    self.current += storage.nbytes()
                    self.peak = max(self.peak, self.current)
                    self.live[id(storage)] = weakref.ref(storage, lambda _, k=id(storage), n=storage.nbytes(): self._gone(k, n))
            return out

    class One(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = torch.nn.Linear(d_in, d_out, bias=False)

        def forward(self, x):
            return self.lin(x)

    config = (peft.LoHaConfig if method == "loha" else peft.LoKrConfig)(r=rank, target_modules=["lin"], **options)
    model_dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[dtype]
    model = peft.get_peft_model(One().to(model_dtype), config)
    model.train()
    x = torch.randn(2, TOKENS // 2, d_in, dtype=model_dtype, requires_grad=True)
    loss = model(x).float().sum()
    tracker = Live()
    with tracker:
        loss.backward()
    return tracker.peak, sum(p.grad.numel() * p.grad.element_size() for p in model.parameters() if p.grad is not None)


def main() -> int:
    import peft
    import torch

    from pytest_llmmem.model.layers import Linear
    from pytest_llmmem.model.lycoris import LOHA, LOKR

    for method, d_in, d_out, rank, options, dtype in CASES:
        peak, grads = backward_peak(torch, peft, method, d_in, d_out, rank, options, dtype)
        keys = {"rank_dropout": "rank-dropout", "decompose_both": "decompose-both", "decompose_factor": "decompose-factor"}
        base = LOHA if method == "loha" else LOKR
        entry = base.configure(base, {keys[k]: v for k, v in options.items()})
        estimated = entry.backward_transient(Linear("x", "lin", d_in, d_out, False), rank, 4, {"bf16": 2, "fp32": 4}[dtype], TOKENS)
        weight = d_in * d_out * 4
        print(f"{method} {dtype} {d_in}->{d_out} r{rank} {options}: measured {peak:,} B ({peak / weight:.3f} weights; of it {grads:,} adapter "
              f"gradients), estimated {estimated:,} B ({(estimated - (peak - grads)) / (peak - grads):+.3%} of the rest)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
