"""PPO's rollout phase (issue 13): TRL's PPOTrainer generates in chunks and keeps every generated
token's scores.

Read from TRL's last PPO trainer (trl/experimental/ppo/ppo_trainer.py at huggingface/trl f2cd577,
v1.9.0-26; TRL 1.16 no longer ships PPO):
- one rollout covers the local batch, per_device_train_batch_size x gradient_accumulation_steps
  (ppo_trainer.py:463, the dataloader's batch at :484);
- ``batch_generation`` (:115-144) calls ``generate`` on ``local_rollout_forward_batch_size`` rows at a
  time (ppo_config.py:141-144, default 64) with ``output_scores=True`` (:101-111): every generated
  token's processed fp32 scores (rows x V x 4 B; transformers generation/utils.py:3248-3256) are kept
  and stacked into a (rows, response, V) copy while generate's output (its KV cache with it) is alive;
  the chunks are then padded into one (local batch, response, V) fp32 tensor (:137-142), a second copy;
- that tensor, ``logitss``, is never deleted: it lives through the update's training and until the next
  rollout has built its own (:690), so from the second update on a rollout holds two of them;
- then, chunk by chunk (:698-760), the reference forward (``forward``, :191-220) returns the logits of
  every position and, with output_hidden_states=True, every layer's hidden states.
Checked on the CPU with TRL 1.9.0's PPOTrainer (benchmarks/measure_ppo.py, tests/data/ppo-rollout-trl.json):
rows per generate(), its KV cache, the scores' shape and bytes, their lifetime, the reference outputs.

PYTEST_DONT_REWRITE: no asserts here; pytest need not rewrite this plugin module.
"""

from __future__ import annotations

from typing import Dict

from ..core.terms.activations import FP32
from ..core.terms.transients import forward_transient
from ..model.architecture import Architecture
from ..core.terms.prefill import stage_kv
from ..core.run import Run

ROLLOUT_CHUNK = 64  # trl/experimental/ppo/ppo_config.py:141-144: local_rollout_forward_batch_size default 64


def rollout_phase(run: Run, arch: Architecture, act: int) -> Dict[str, int]:
    """The rollout's figures, named as recipes.generation_phase names them, plus ``rollout_scores``:
    the (local batch, response, V) fp32 scores that stay referenced through the update (counted as a
    resident term by the caller). The other items are what the rollout's peak adds above that term:
    the largest of (1) the last chunk's generate() (its KV cache after the last token, the previous
    update's scores still referenced, this update's scores and the chunk's stacked copy), (2) the pad
    (the previous scores, the chunk list and the padded copy) and (3) a chunk's reference forward
    (logits of every position and every layer's hidden state, plus one layer's transient)."""
    rs = run.recipe
    t = run.tensor_parallel
    local, completion = rs.generation_batch_size, rs.completion_len
    prompt = rs.prompt_len or run.seq_len - completion
    chunk = min(rs.rollout_chunk or ROLLOUT_CHUNK, local)
    vocab, h = arch.vocab_size, arch.hidden_size
    scores = local * completion * vocab * FP32 // t
    chunk_scores = chunk * completion * vocab * FP32 // t
    kv = stage_kv(run, arch, chunk, prompt + completion - 1, act)
    seq = prompt + completion
    transient = max(forward_transient(arch, g, batch=chunk, seq=seq, act=act, flash=run.flash_attention, tp=t, fa=run.mask_free) for g in arch.layer_groups())
    hidden = chunk * seq * (arch.num_layers + 1) * h * act  # output_hidden_states=True: embeddings + every layer
    ref_logits = chunk * seq * vocab * act // t
    generate = kv + scores + chunk_scores  # beside the previous update's scores (the resident term)
    pad = 2 * scores
    forward = transient + hidden + ref_logits  # beside this update's padded scores (the resident term); the previous are gone
    out = {"kv_cache": kv, "rollout_scores": scores, "reference_logits": ref_logits, "reference_hidden_states": hidden,
           "kv_cache_at_peak": 0, "transient": 0, "logits": 0, "sampling_fp32": 0}
    peak = max(generate, pad, forward)
    if peak == generate:
        out.update(kv_cache_at_peak=kv, logits=scores + chunk_scores)
    elif peak == pad:
        out.update(logits=pad)
    else:
        out.update(transient=transient + hidden, logits=ref_logits)
    return out
