"""The loss head of Answer.AI's fsdp_qlora loop on the CPU: each b x s x V buffer's lifetime and the pool it needs.

    python benchmarks/measure_fsdp_qlora_head.py [--batch 4] [--seq 1024]

fsdp_qlora's train.py (AnswerDotAI/fsdp_qlora @ 23fafdfb) runs ``output = model(input_ids, labels=labels)`` (:841),
``loss.backward()`` (:863), ``optimizer.step()`` (:878) and only then ``output = None`` (:894), on the transformers its
README pins (``transformers!=4.38.*,!=4.39.*``: 4.37 or 4.40 in Feb-May 2024). Their LlamaForCausalLM.forward
(transformers 4.40.0 models/llama/modeling_llama.py:1227-1241; 4.37.2 :1201-1215) upcasts the logits it returns,
``logits = logits.float()``, and computes the loss inside forward on ``logits[..., :-1, :].contiguous()`` with
CrossEntropyLoss. That head is reproduced here on a small Llama body (transformers' own LlamaModel) and run for two
steps on fake tensors under pytest_llmmem.trace.live.LiveBytes, which counts every storage from creation to death and
replays each allocation and free through the caching allocator (trace/allocator.py). Printed per logit element (E =
b x s x V): the loss head's bytes at the step's allocated peak, and the pool's reserved peak less its allocated peak,
beside the same model with transformers 5's head under the HF Trainer (the loss only kept).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

VOCAB = 32000  # Llama-2's vocabulary: the head dominates the step on a small body


def head_440(torch, model, ids):
    """transformers 4.40's LlamaForCausalLM.forward from the body's output on: fp32 logits returned, the loss on a
    contiguous shifted copy (modeling_llama.py:1227-1241)."""
    hidden = model.model(input_ids=ids).last_hidden_state
    logits = model.lm_head(hidden)
    logits = logits.float()
    shift_logits = logits[..., :-1, :].contiguous()
    shift_labels = ids[..., 1:].contiguous()
    loss = torch.nn.CrossEntropyLoss()(shift_logits.view(-1, VOCAB), shift_labels.view(-1))
    return loss, logits


def run(torch, transformers, batch: int, seq: int, loop: str):
    from torch._subclasses.fake_tensor import FakeTensorMode

    from pytest_llmmem.trace.live import LiveBytes
    from pytest_llmmem.trace.step import fake_parameters

    config = transformers.LlamaConfig(hidden_size=256, intermediate_size=512, num_hidden_layers=2, num_attention_heads=4,
                                      num_key_value_heads=4, vocab_size=VOCAB, max_position_embeddings=seq)
    with torch.device("meta"):
        model = transformers.LlamaForCausalLM(config).to(torch.bfloat16)
    for name, param in model.named_parameters():
        param.requires_grad = "layers" in name  # the head and the embedding frozen, as under LoRA
    tracker = LiveBytes(VOCAB)
    with FakeTensorMode(allow_non_fake_inputs=True), tracker:
        fake_parameters(torch, model, tracker)
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, foreach=True)
        ids = torch.zeros((batch, seq), dtype=torch.long)
        for phase in ("warm-up", "step"):
            tracker.start(phase)
            if loop == "fsdp-qlora":
                loss, output = head_440(torch, model, ids)  # train.py:841 output = model(...); loss = output.loss
            else:
                loss, output = model(input_ids=ids, labels=ids).loss, None  # Trainer.compute_loss returns the loss only
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            del loss, output  # train.py:894 output = None, after the optimizer step
        tracker.stop()
    return tracker.peaks["step"], tracker.composition("step"), tracker.reserved["step"]


def main(argv) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq", type=int, default=1024)
    args = parser.parse_args(argv)
    import warnings

    import torch
    import transformers

    warnings.simplefilter("ignore")
    transformers.logging.set_verbosity_error()
    elems = args.batch * args.seq * VOCAB
    print(f"Llama body h256 x 2 layers, V {VOCAB}, b {args.batch} x s {args.seq}: E = {elems:,} logit elements")
    for loop in ("fsdp-qlora", "hf-trainer"):
        peak, parts, reserved = run(torch, transformers, args.batch, args.seq, loop)
        head = parts.get("logits", 0)
        print(f"  {loop:<11} allocated peak {peak / 2**20:9.1f} MiB, loss head at it {head / elems:5.2f} B/E, "
              f"reserved peak {reserved / 2**20:9.1f} MiB, reserved - allocated {(reserved - peak) / elems:5.2f} B/E")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
