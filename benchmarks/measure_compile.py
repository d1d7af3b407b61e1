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
Bytes are per logit element (losses) or per token (the layer), so the small shapes here carry over.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any, Dict, List

ROOT = Path(__file__).resolve().parents[1]
BUFFER = re.compile(r"empty_strided_cpu\(\(([\d, ]+)\),[^)]*\), torch\.(\w+)\)")
SIZES = {"float32": 4, "bfloat16": 2, "float16": 2, "int64": 8}


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
    rows = measure_losses(torch) + measure_layer(torch)
    for row in rows:
        print(json.dumps({k: v for k, v in row.items() if k not in ("saved", "compiled_saved")}))
    args.out.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
