"""Measure on a CUDA GPU what the trainer knobs change: the loss implementation and the AdamW step.

    python benchmarks/trainer_gpu_check.py [--out trainer-gpu.jsonl]

1. Loss: the head + cross-entropy of a Llama-3.1-8B-sized head (hidden 4096, vocab 128256, bf16,
   2 x 2048 tokens) as HF ForCausalLMLoss does it (fp32 upcast), as torchtune's
   LinearCrossEntropyLoss does it (8 chunks, each upcast; torchtune/modules/loss/cross_entropy_loss.py)
   and as litgpt does it (128-token lm_head chunks, cross-entropy in bf16; litgpt/utils.py
   chunked_cross_entropy). Peak allocated above the inputs over forward + backward, frozen head (LoRA).
2. AdamW step: Llama-3.2-1B-shaped bf16 parameters (tied embedding), second step (states exist),
   peak allocated above weights + grads + states for foreach=True, foreach=False and fused=True.
Each figure is written as a JSON line with the prediction of pytest_llmmem.trainer_terms beside it.
"""

import argparse
import json

import torch
import torch.nn.functional as F


def _peak_above(fn) -> int:
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - base


def loss_peaks(b=2, s=2048, h=4096, v=128256):
    dev = "cuda"
    weight = torch.randn(v, h, device=dev, dtype=torch.bfloat16) * 0.02
    target = torch.randint(0, v, (b * s,), device=dev)
    out = {}

    def hf():
        hidden = torch.randn(b, s, h, device=dev, dtype=torch.bfloat16, requires_grad=True)
        logits = hidden @ weight.t()
        loss = F.cross_entropy(logits.float().view(-1, v), target)
        loss.backward()

    def torchtune(chunks=8):
        hidden = torch.randn(b, s, h, device=dev, dtype=torch.bfloat16, requires_grad=True)
        flat = hidden.reshape(-1, h)
        idx = torch.where(target != -100)[0]
        hs, ts = flat.index_select(0, idx), target.index_select(0, idx)
        total = torch.zeros((), device=dev)
        for hc, tc in zip(hs.tensor_split(chunks, 0), ts.tensor_split(chunks, 0)):
            total = total + F.cross_entropy((hc @ weight.t()).float(), tc, reduction="sum")
        (total / idx.numel()).backward()

    def litgpt(chunk=128):
        hidden = torch.randn(b, s, h, device=dev, dtype=torch.bfloat16, requires_grad=True)
        logits = [c @ weight.t() for c in hidden.split(chunk, dim=1)]
        tchunks = target.view(b, s).split(chunk, dim=1)
        losses = [F.cross_entropy(lc.reshape(-1, v), tc.reshape(-1), reduction="none") for lc, tc in zip(logits, tchunks)]
        (torch.cat(losses).sum() / (b * s)).backward()

    for name, fn in (("upcast", hf), ("chunked-torchtune", torchtune), ("chunked-litgpt", litgpt)):
        fn()  # warm-up (cuBLAS workspace, kernels)
        out[name] = _peak_above(fn)
    return out


def adam_peaks():
    dev = "cuda"
    h, f, kv, layers, vocab = 2048, 8192, 512, 16, 128256
    shapes = [(vocab, h)]
    for _ in range(layers):
        shapes += [(h,), (h, h), (kv, h), (kv, h), (h, h), (h,), (f, h), (f, h), (h, f)]
    shapes.append((h,))
    out = {"numel": sum(torch.Size(s).numel() for s in shapes), "largest": vocab * h}
    for impl, kw in (("foreach", {"foreach": True}), ("for-loop", {"foreach": False}), ("fused", {"fused": True})):
        params = [torch.nn.Parameter(torch.ones(s, device=dev, dtype=torch.bfloat16)) for s in shapes]
        opt = torch.optim.AdamW(params, lr=1e-5, **kw)
        for p in params:
            p.grad = torch.full_like(p, 1e-3)
        opt.step()
        out[impl] = _peak_above(opt.step)
        del opt, params
        torch.cuda.empty_cache()
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="trainer-gpu.jsonl")
    args = parser.parse_args()
    rows = [{"what": "loss", "gpu": torch.cuda.get_device_name(), "torch": torch.__version__, **loss_peaks()},
            {"what": "adamw_step", "gpu": torch.cuda.get_device_name(), "torch": torch.__version__, **adam_peaks()}]
    with open(args.out, "w") as sink:
        for row in rows:
            sink.write(json.dumps(row) + "\n")
            print(json.dumps(row))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
