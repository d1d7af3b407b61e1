"""What torch.compile (Inductor) keeps for backward and allocates in it, measured on the CPU.

    python benchmarks/measure_compile.py [--out benchmarks/data/compile-cpu.jsonl]

Inductor's saved set is its min-cut partitioner's choice (torch/_functorch/partitioners.py
min_cut_rematerialization_partition, called by torch/_inductor/compile_fx.py): the backward graph's
inputs other than the incoming gradients are what the forward keeps. This script wraps that call to
read them (shape and dtype from each node's fake value), and reads the buffers the generated backward
allocates from Inductor's output code (torch._inductor.utils.run_and_get_code). The partitioner runs on
FX graphs before code generation, so what it keeps does not depend on the device the code is made for.

Cases (each the way the framework writes it, rewritten here in a few lines; torchtune's own layer when
torchtune is installed):
- ``chunk-ce``: torchtune's chunked loss step, F.cross_entropy(chunk.float(), labels, reduction="sum")
  (torchtune/modules/loss/ce_chunked_output_loss.py CEWithChunkedOutputLoss.compute_cross_entropy; the
  recipes compile only that method: torchtune/training/_compile.py compile_loss).
- ``linear-chunk-ce``: the same with the output projection inside the compiled step (torchtune's
  LinearCrossEntropyLoss.compute_cross_entropy, torchtune/modules/loss/cross_entropy_loss.py:107-114).
- ``whole-ce``: nn.CrossEntropyLoss compiled whole on the fp32 logits torchtune's TransformerDecoder
  returns without chunking (torchtune/modules/transformer.py ``self.output(h).float()``).
- ``torchtune-layer``: one torchtune Llama 3.2 decoder layer, eager (saved-tensor hooks) and compiled the
  way torchtune compiles it (torchtune/training/_compile.py compile_model: ``m.compile()`` per layer).
- ``torchao-adamw8bit-step``: one step of torchao's AdamW8bit (torchao/optim/adam.py: torch.compile of
  single_param_adam per parameter) on a bf16 parameter, after its states exist; the buffers the generated code
  allocates, per element of the parameter (torchao installed; skipped otherwise).
Bytes are per logit element (losses) or per token (the layer), so the small shapes here carry over.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from pathlib import Path
from typing import Any, Dict, List

ROOT = Path(__file__).resolve().parents[1]
BUFFER = re.compile(r"empty_strided_cpu\(\(([\d, ]+)\),[^)]*\), torch\.(\w+)\)")
SIZES = {"float32": 4, "bfloat16": 2, "float16": 2, "int64": 8, "uint8": 1}


def _saved_recorder(torch):
    """Wrap Inductor's partitioner; every call appends the (name, shape, dtype, bytes) the backward takes."""
    import torch._inductor.compile_fx as compile_fx

    calls: List[List[tuple]] = []
    partition = compile_fx.min_cut_rematerialization_partition

    def recording(*args, **kwargs):
        forward, backward = partition(*args, **kwargs)
        saved = []
        for node in backward.graph.nodes:
            value = node.meta.get("val")
            if node.op == "placeholder" and not node.name.startswith("tangents") and isinstance(value, torch.Tensor):
                saved.append((node.name, tuple(value.shape), str(value.dtype).split(".")[-1], value.numel() * value.element_size()))
        calls.append(saved)
        return forward, backward

    compile_fx.min_cut_rematerialization_partition = recording
    return calls


def _backward_buffers(codes: List[str]) -> List[tuple]:
    """(shape, dtype) of each buffer the last generated graph (the backward) allocates."""
    return [(tuple(int(x) for x in shape.split(",") if x.strip()), dtype) for shape, dtype in BUFFER.findall(codes[-1])]


def measure_losses(torch) -> List[Dict[str, Any]]:
    """Saved bytes per logit element and the backward's (rows, vocab) buffers of the three compiled losses."""
    import torch.nn.functional as F
    from torch._inductor.utils import run_and_get_code

    rows, vocab, hidden = 64, 1000, 32
    calls = _saved_recorder(torch)
    labels = torch.randint(0, vocab, (rows,))

    def chunk_ce(chunk, target):
        return F.cross_entropy(chunk.float(), target, ignore_index=-100, reduction="sum")

    def linear_chunk_ce(hidden_chunk, weight, target):
        return F.cross_entropy(F.linear(hidden_chunk, weight).float(), target, ignore_index=-100, reduction="sum")

    whole = torch.nn.CrossEntropyLoss()
    cases = {
        "chunk-ce": (chunk_ce, lambda: (torch.randn(rows, vocab, dtype=torch.bfloat16, requires_grad=True), labels)),
        "linear-chunk-ce": (linear_chunk_ce, lambda: (torch.randn(rows, hidden, dtype=torch.bfloat16, requires_grad=True),
                                                      torch.randn(vocab, hidden, dtype=torch.bfloat16, requires_grad=True), labels)),
        "whole-ce": (whole, lambda: (torch.randn(rows, vocab, dtype=torch.float32, requires_grad=True), labels)),
    }
    out = []
    for name, (fn, inputs) in cases.items():
        compiled = torch.compile(fn, dynamic=False)
        args = inputs()

        def step():
            compiled(*args).backward()

        _, codes = run_and_get_code(step)
        saved = calls[-1]
        full = [s for s in saved if s[1] == (rows, vocab)]
        buffers = [b for b in _backward_buffers(codes) if b[0] == (rows, vocab)]
        out.append({"case": name, "rows": rows, "vocab": vocab,
                    "saved_bytes_per_logit": sum(s[3] for s in full) / (rows * vocab),
                    "saved_bytes_per_row": sum(s[3] for s in saved if s[1][:1] == (rows,) and s[1] != (rows, vocab)) / rows,
                    "saved": [list(s[1:]) for s in saved],
                    "backward_logit_buffers": [b[1] for b in buffers],
                    "backward_bytes_per_logit": sum(SIZES[b[1]] for b in buffers)})
    return out


def measure_layer(torch) -> List[Dict[str, Any]]:
    """Bytes per token one torchtune Llama 3.2 3B-shaped decoder layer keeps, eager and compiled."""
    try:
        from torchtune.models.llama3_2._component_builders import llama3_2
    except ImportError:
        print("torchtune is not installed: the layer case is skipped", file=sys.stderr)
        return []
    calls = _saved_recorder(torch)
    h, inter, heads, kv, batch, seq = 3072, 8192, 24, 8, 1, 64
    model = llama3_2(vocab_size=128, num_layers=1, num_heads=heads, num_kv_heads=kv, embed_dim=h, max_seq_len=seq,
                     intermediate_dim=inter).to(torch.bfloat16)
    layer = model.layers[0]
    weights = {p.data_ptr() for p in layer.parameters()}
    tokens = batch * seq
    x = torch.randn(batch, seq, h, dtype=torch.bfloat16, requires_grad=True)
    kept: Dict[int, int] = {}

    def pack(t):
        if t.data_ptr() not in weights:
            kept[t.data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        y = layer(x)
    y.sum().backward()
    eager = sum(kept.values())
    layer.compile(dynamic=False)
    x2 = torch.randn(batch, seq, h, dtype=torch.bfloat16, requires_grad=True)
    layer(x2).sum().backward()
    # the layer's own weights and its RoPE cache come in as graph inputs ("primals") of those shapes
    constant = {tuple(t.shape) for t in list(layer.parameters()) + list(layer.buffers())}
    activations = [s for s in calls[-1] if not (s[0].startswith("primals") and s[1] in constant)]
    compiled = sum(s[3] for s in activations)
    return [{"case": "torchtune-layer", "hidden": h, "intermediate": inter, "heads": heads, "kv_heads": kv, "tokens": tokens,
             "eager_bytes_per_token": eager / tokens, "compiled_bytes_per_token": compiled / tokens,
             "compiled_saved": [list(s[1:]) for s in activations]}]


def _sac_block(torch, h: int, inter: int, heads: int, kv: int):
    """torchtitan's Llama 3 block in a few lines (see the module docstring), under its op-level SAC policy."""
    from collections import defaultdict

    import torch.nn.functional as F
    from torch.utils.checkpoint import CheckpointPolicy, checkpoint, create_selective_checkpoint_contexts

    hd, nn = h // heads, torch.nn
    save = {torch.ops.aten.mm.default, torch.ops.aten._scaled_dot_product_flash_attention_for_cpu.default}

    def context_fn():
        meta: Dict[str, int] = defaultdict(int)

        def policy(ctx, func, *args, **kwargs):
            key = "recompute" if ctx.is_recompute else "forward"
            meta[key] += func == torch.ops.aten.mm.default
            keep = func in save and not (func == torch.ops.aten.mm.default and meta[key] % 2 == 0)
            return CheckpointPolicy.MUST_SAVE if keep else CheckpointPolicy.PREFER_RECOMPUTE

        return create_selective_checkpoint_contexts(policy)

    def norm(x, weight):
        x32 = x.float()
        return (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + 1e-5)).type_as(x) * weight

    def rope(x, cos, sin):
        return x * cos + torch.cat((-x[..., hd // 2:], x[..., : hd // 2]), -1) * sin

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.attention_norm, self.ffn_norm = nn.Parameter(torch.ones(h)), nn.Parameter(torch.ones(h))
            self.wq, self.wk, self.wv, self.wo = (nn.Linear(h, h, bias=False), nn.Linear(h, kv * hd, bias=False),
                                                  nn.Linear(h, kv * hd, bias=False), nn.Linear(h, h, bias=False))
            self.w1, self.w2, self.w3 = nn.Linear(h, inter, bias=False), nn.Linear(inter, h, bias=False), nn.Linear(h, inter, bias=False)

        def layer(self, x, cos, sin):
            b, t, _ = x.shape
            xn = norm(x, self.attention_norm)
            q, k, v = (rope(self.wq(xn).view(b, t, heads, hd), cos, sin), rope(self.wk(xn).view(b, t, kv, hd), cos, sin),
                       self.wv(xn).view(b, t, kv, hd))
            k, v = (z.repeat_interleave(heads // kv, dim=2).transpose(1, 2) for z in (k, v))
            o = F.scaled_dot_product_attention(q.transpose(1, 2), k, v, is_causal=True)
            x = x + self.wo(o.transpose(1, 2).reshape(b, t, h))
            return x + self.w2(F.silu(self.w1(norm(x, self.ffn_norm))) * self.w3(norm(x, self.ffn_norm)))

        def forward(self, x, cos, sin):
            return checkpoint(self.layer, x, cos, sin, use_reentrant=False, context_fn=context_fn, preserve_rng_state=False)

    return Block()


def measure_sac_layer(torch) -> List[Dict[str, Any]]:
    """Bytes per token a torchtitan block keeps under op-level SAC, eager and compiled."""
    from torch.profiler import ProfilerActivity, profile

    calls = _saved_recorder(torch)
    h, inter, heads, kv, seq = 512, 1792, 8, 2, 128  # Llama 3.1 8B / 8: intermediate 3.5 h, 4 query heads per KV head
    block = _sac_block(torch, h, inter, heads, kv).to(torch.bfloat16)
    angles = torch.arange(seq).float()[:, None] * 500000.0 ** (-torch.arange(0, h // heads // 2).float() / (h // heads // 2))
    cos, sin = (torch.cat((f(angles), f(angles)), -1)[None, :, None, :].to(torch.bfloat16) for f in (torch.cos, torch.sin))
    x = torch.randn(1, seq, h, dtype=torch.bfloat16, requires_grad=True)
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        y = block(x, cos, sin)
    # the net of the forward's allocations less its output: the policy's cache; the checkpoint keeps x (the caller's) too
    eager = sum(e.cpu_memory_usage for e in prof.events() if e.cpu_parent is None) - y.numel() * y.element_size() + x.numel() * 2
    y.sum().backward()
    torch.compile(block, dynamic=False)(x.detach().requires_grad_(), cos, sin).sum().backward()
    constant = {tuple(t.shape) for t in block.parameters()} | {tuple(cos.shape)}
    activations = [s for s in calls[-1] if not (s[0].startswith("primals") and s[1] in constant)]
    return [{"case": "torchtitan-sac-layer", "hidden": h, "intermediate": inter, "heads": heads, "kv_heads": kv, "tokens": seq,
             "eager_bytes_per_token": eager / seq, "compiled_bytes_per_token": sum(s[3] for s in activations) / seq,
             "compiled_saved": [list(s[1:]) for s in activations]}]


def measure_low_bit_step(torch) -> List[Dict[str, Any]]:
    """Bytes per parameter element torchao's compiled AdamW8bit step allocates, read from Inductor's output code."""
    try:
        from torchao.optim import AdamW8bit
    except ImportError:
        print("torchao is not installed: the AdamW8bit step case is skipped", file=sys.stderr)
        return []
    import torchao
    from torch._inductor.utils import run_and_get_code

    rows, cols = 1024, 3072  # a Llama 3.2 3B-wide matrix; the buffers scale with the element count
    param = torch.nn.Parameter(torch.randn(rows, cols, dtype=torch.bfloat16))
    optimizer = AdamW8bit([param], lr=1e-4)
    param.grad = torch.randn_like(param)
    _, codes = run_and_get_code(optimizer.step)
    buffers = [(shape, dtype) for shape, dtype in BUFFER.findall(codes[-1])]
    allocated = sum(math.prod(int(x) for x in shape.split(",") if x.strip()) * SIZES[dtype] for shape, dtype in buffers)
    return [{"case": "torchao-adamw8bit-step", "numel": rows * cols, "torchao": torchao.__version__,
             "step_bytes_per_element": round(allocated / (rows * cols), 4), "buffers": [[s, d] for s, d in buffers]}]


def main(argv: List[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "data" / "compile-cpu.jsonl")
    args = parser.parse_args(argv)
    import torch
    import torch._functorch.config as functorch_config
    import torch._inductor.config as inductor_config

    # a cached graph skips the partitioner this script reads: compile every case afresh
    inductor_config.fx_graph_cache = False
    functorch_config.enable_autograd_cache = False
    torch.manual_seed(0)
    rows = measure_losses(torch) + measure_layer(torch) + measure_sac_layer(torch) + measure_low_bit_step(torch)
    for row in rows:
        print(json.dumps({k: v for k, v in row.items() if k not in ("saved", "compiled_saved", "buffers")}))
    args.out.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
