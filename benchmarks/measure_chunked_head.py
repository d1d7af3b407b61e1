"""A chunked head's backward on the CPU: the V x h weight's gradients summed over the chunks.

    python benchmarks/measure_chunked_head.py

torchtune's chunked output (TransformerDecoder.chunked_output, one ``output(chunk)`` per chunk, then
CEWithChunkedOutputLoss) uses the head weight once per chunk. Autograd sums a tensor's gradients in its
InputBuffer (torch/csrc/autograd/input_buffer.cpp InputBuffer::add) before AccumulateGrad, so at each
chunk's head backward after the first the sum so far and the new V x h gradient live together. The step
runs eagerly on small shapes under pytest_llmmem.trace.live.LiveBytes, which counts every storage from
its creation to its death; the backward's peak is printed beside that count: the weight, two V x h
gradients, the chunk gradients not yet consumed (N - 1 at the second chunk; every CE backward runs
before any head backward, autograd taking the later-made node first) and the hidden state's.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> int:
    import torch
    import torch.nn.functional as F

    from pytest_llmmem.trace.live import LiveBytes

    torch.manual_seed(0)
    vocab, hidden, seq, chunks = 1000, 512, 256, 4
    weight = torch.randn(vocab, hidden, dtype=torch.bfloat16, requires_grad=True)
    tracker = LiveBytes(vocab)
    with tracker:
        h = torch.randn(1, seq, hidden, dtype=torch.bfloat16, requires_grad=True)
        labels = torch.randint(0, vocab, (1, seq))
        logits = [F.linear(c, weight) for c in h.chunk(chunks, dim=1)]
        loss = sum(F.cross_entropy(c.reshape(-1, vocab).float(), t.reshape(-1), reduction="sum")
                   for c, t in zip(logits, labels.chunk(chunks, dim=1)))
        del logits  # the recipe's ``del logits``
        tracker.start("backward")
        loss.backward()
    matrix = vocab * hidden * 2
    chunk_grad = seq // chunks * vocab * 2
    at_peak = sorted((b for b, _ in tracker.at_peak["backward"] if b >= 512), reverse=True)
    counted = matrix + 2 * matrix + (chunks - 1) * chunk_grad + seq * hidden * 2 + 2 * (seq // chunks) * hidden * 2
    print(f"backward peak {tracker.peaks['backward']:,} B; alive then: {at_peak}")
    print(f"weight + 2 V x h gradients + {chunks - 1} chunk gradients + h + 2 chunk input gradients = {counted:,} B "
          "(the rest: the labels and two small scalars)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
