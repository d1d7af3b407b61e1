"""Measure on the CPU what FSDP1's reshard-only hook keeps through a reentrant-checkpointed backward (issue 25;
pytest_llmmem/core/terms/fsdp_pools.py reshard_hook_holds_inputs).

A small Mistral with PEFT LoRA (r 16 on q/k/v/o, dropout 0.1, fp32 adapters), checkpointed the way transformers <= 4.51
does it (the decoder loop wraps each FSDP unit's __call__ in torch.utils.checkpoint, use_reentrant True), wrapped as the
HF Trainer + accelerate 1.0.1 wrap a PEFT model (peft's fsdp_auto_wrap_policy, FULL_SHARD, BACKWARD_PRE,
use_orig_params, limit_all_gathers), run on ``--world`` gloo ranks; a TorchDispatchMode counts every storage the step
allocates (FSDP's own flat parameters included) and reports rank 0's peak in units of one layer input (b x s x h x 2 B),
with and without the hook (``--no-hold`` replaces _register_post_backward_reshard_only_hook with a no-op).

Needs transformers < 4.52 (the checkpoint outside the unit) and peft, e.g. a venv with torch==2.13.0 transformers==4.48.1
peft==0.13.2 accelerate==1.0.1:

    .venv/bin/python benchmarks/measure_fsdp_reshard_hold.py --layers 8           # hold: peak 66.1-66.2 units
    .venv/bin/python benchmarks/measure_fsdp_reshard_hold.py --layers 8 --no-hold # 58.8-60.4: 5.8-7.3 less, L - 2 = 6
    (--layers 4: 50.5-51.9 and 48.2-49.7, 2.2-2.3 less; --world 1 and 4 hold as many inputs; --reentrant 0 none.
    The figures move a little from run to run with the order the ranks' flat parameters are allocated in.)
"""

import argparse
import functools
import os
import weakref

import torch
import torch.distributed as dist
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten


class LiveBytes(TorchDispatchMode):
    """Every storage an op allocates (not a view of an input's), alive until its last tensor dies; the peak of their sum."""

    def __init__(self):
        super().__init__()
        self.live, self.now, self.peak = {}, 0, 0

    def _free(self, key):
        self.now -= self.live.pop(key, 0)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {t.untyped_storage().data_ptr() for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)}
        for t in tree_flatten(out)[0]:
            if not isinstance(t, torch.Tensor):
                continue
            storage = t.untyped_storage()
            key = storage.data_ptr()
            if key in inputs or key in self.live or not storage.nbytes():
                continue
            self.live[key] = storage.nbytes()
            self.now += storage.nbytes()
            weakref.finalize(storage, self._free, key)
        self.peak = max(self.peak, self.now)
        return out


def rank_main(rank, args):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(args.port))
    dist.init_process_group("gloo", rank=rank, world_size=args.world)
    torch.manual_seed(0)
    from peft import LoraConfig, get_peft_model
    from peft.utils.other import fsdp_auto_wrap_policy
    from torch.distributed.fsdp import BackwardPrefetch, FullyShardedDataParallel as FSDP, ShardingStrategy
    import torch.distributed.fsdp._runtime_utils as runtime
    from transformers import MistralConfig, MistralForCausalLM

    if args.no_hold:
        runtime._register_post_backward_reshard_only_hook = lambda *a, **k: None
    cfg = MistralConfig(hidden_size=args.hidden, intermediate_size=2 * args.hidden, num_hidden_layers=args.layers,
                        num_attention_heads=8, num_key_value_heads=2, vocab_size=256, max_position_embeddings=4096)
    cfg._attn_implementation = "sdpa"
    model = MistralForCausalLM(cfg).to(torch.bfloat16)
    model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, lora_dropout=0.1, task_type="CAUSAL_LM",
                                             target_modules=["q_proj", "k_proj", "v_proj", "o_proj"]))
    model.enable_input_require_grads()  # trl's SFTTrainer / peft prepare for reentrant checkpointing
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": bool(args.reentrant)})
    model.config.use_cache = False
    model.train()
    if args.fsdp == 2:
        # FSDP2 as accelerate >= 1.6's fsdp2_prepare_model applies it (utils/fsdp_utils.py: fully_shard on each module the
        # wrap policy names, bottom up, then on the root), with peft's policy: the decoder layers and the LoRA linears.
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        mesh = init_device_mesh("cpu", (args.world,))
        policy = fsdp_auto_wrap_policy(model)
        for module in list(model.modules())[::-1][:-1]:
            if module is not model and policy(module=module, recurse=False, nonwrapped_numel=0):
                fully_shard(module, mesh=mesh)
        fully_shard(model, mesh=mesh)
    else:
        model = FSDP(model, sharding_strategy=ShardingStrategy.FULL_SHARD, auto_wrap_policy=fsdp_auto_wrap_policy(model),
                     backward_prefetch=BackwardPrefetch.BACKWARD_PRE, use_orig_params=True, limit_all_gathers=True,
                     device_id=torch.device("cpu"))
    ids = torch.randint(0, 256, (args.batch, args.seq), generator=torch.Generator().manual_seed(1 + rank))
    counter = LiveBytes()
    with counter:
        model(input_ids=ids, labels=ids).loss.backward()
    if rank == 0:
        unit = args.batch * args.seq * args.hidden * 2
        print(f"FSDP{args.fsdp} world {args.world} layers {args.layers} hold {not args.no_hold}: peak {counter.peak} B = "
              f"{counter.peak / unit:.2f} layer inputs of {unit} B")
    dist.destroy_process_group()


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--world", type=int, default=2)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--hidden", type=int, default=512)
    p.add_argument("--seq", type=int, default=1024)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--reentrant", type=int, default=1)
    p.add_argument("--no-hold", action="store_true")
    p.add_argument("--fsdp", type=int, choices=(1, 2), default=1, help="1: FullyShardedDataParallel; 2: fully_shard")
    p.add_argument("--port", type=int, default=29533)
    args = p.parse_args()
    torch.set_num_threads(1)
    torch.multiprocessing.spawn(rank_main, args=(args,), nprocs=args.world)


if __name__ == "__main__":
    main()
