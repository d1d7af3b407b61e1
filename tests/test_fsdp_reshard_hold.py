"""FSDP1 over a frozen base with reentrant checkpointing around each unit (HF transformers <= 4.51) holds every finished
layer's recomputed input and its gradient to the end of the backward (issue 25; core/terms/fsdp_pools.py
reshard_hook_holds_inputs): counted at the backward's bottom instant."""

import pytest

from pytest_llmmem.config.load import adhoc_run
from pytest_llmmem.estimator import estimate

# fms-acceleration's Mistral-7B QLoRA on 2 GPUs (benchmarks/data/published-fms-acceleration.jsonl, b4 x 4,096 packed)
RUN = {"name": "fsdp", "id": "mistralai/Mistral-7B-v0.1", "mode": "qlora", "dtype": "nf4", "batch-size": 4, "seq-len": 4096,
       "gradient-checkpointing": True, "gpus": 2, "fsdp": "full-shard", "framework": "transformers",
       "framework-version": "4.48.1", "lora-rank": 16, "lora-targets": ["q_proj", "k_proj", "v_proj", "o_proj"]}
HELD = "backward.activations.fsdp_held_input_grads"


def test_the_bottom_layer_holds_every_input_and_the_gradients_of_layers_2_to_L_minus_1():
    est = estimate(adhoc_run(RUN))
    # by hand: one layer input is b x s x hidden x 2 B = 4 x 4096 x 4096 x 2 = 134,217,728 B (128 MiB); Mistral-7B has
    # 32 layers: all 32 inputs alive (4 GiB) and 30 held gradients (layer 1's is the one flowing in), 3.75 GiB
    assert est.details["activations.layer_inputs"] == 32 * 134_217_728
    assert est.details[HELD] == 30 * 134_217_728
    # the same run on transformers 4.52 (the checkpoint inside the unit) holds nothing, and peaks lower
    later = estimate(adhoc_run({**RUN, "framework-version": "4.52.0"}))
    assert HELD not in later.details
    assert est.allocated_bytes > later.allocated_bytes


@pytest.mark.parametrize("extra", [
    {"framework-version": "4.52.0"},  # GradientCheckpointingLayer: the checkpoint runs inside the FSDP unit
    {},  # no framework-version: a current transformers
    {"mode": "train", "dtype": "bf16"},  # a trained flat parameter gets a post-backward hook, not the reshard-only one
    {"gpus": 1, "fsdp": "none"},
    {"gradient-checkpointing": False},
    {"mode": "ia3", "dtype": "bf16"},
    {"torch-version": "2.0.1"},  # before torch 2.1's reshard-only hook  # not a LoraConfig method: its vectors make the decoder unit's flat parameter trained
])
def test_runs_without_the_hold(extra):
    run = {**RUN, **extra}
    if run["mode"] in ("train", "ia3"):
        run = {k: v for k, v in run.items() if not k.startswith("lora-")}
    if not extra:
        run.pop("framework-version")
    assert HELD not in estimate(adhoc_run(run)).details


def test_the_hold_is_counted_not_marked_approximate():
    reasons = estimate(adhoc_run(RUN)).approximate
    assert not any("frozen base with checkpointing" in r for r in reasons)


# one rank: FSDP switches FULL_SHARD to NO_SHARD, which keeps the same hooks (the hold is measured alike on 1, 2, 4 ranks)
@pytest.mark.filterwarnings("ignore:FSDP is switching to use `NO_SHARD`:UserWarning")
def test_measured_on_the_cpu_the_bottom_layer_holds_2L_minus_3_more_layer_inputs(tmp_path):
    """The mechanism itself on torch's FSDP1 (one gloo rank): the decoder loop of transformers <= 4.51 (reentrant
    checkpoint around each unit's __call__), each layer's base frozen and its adapter pair wrapped as units of their own
    (peft's fsdp_auto_wrap_policy). At the bottom layer's recompute the run holds, against the same run with the
    reshard-only hook disabled, every later layer's input (L - 1) and the gradients of layers 2..L-1 (L - 2): exactly
    what backward.py's bottom instant adds (activations.layer_inputs less one layer's, and fsdp_held_input_grads)."""
    torch = pytest.importorskip("torch")
    dist = pytest.importorskip("torch.distributed")
    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("torch.distributed with gloo is needed")
    import functools
    import weakref

    from torch import nn
    from torch.utils.checkpoint import checkpoint
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_flatten
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP
    from torch.distributed.fsdp.wrap import ModuleWrapPolicy, _or_policy, lambda_auto_wrap_policy
    import torch.distributed.fsdp._runtime_utils as runtime

    class LiveBytes(TorchDispatchMode):
        """Bytes of the storages ops allocate (not views of their inputs), alive until their last tensor dies."""

        def __init__(self):
            super().__init__()
            self.live, self.now = {}, 0

        def _free(self, key):
            self.now -= self.live.pop(key, 0)

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            inputs = {t.untyped_storage().data_ptr() for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)}
            for t in tree_flatten(out)[0]:
                if isinstance(t, torch.Tensor):
                    storage = t.untyped_storage()
                    key = storage.data_ptr()
                    if key not in inputs and key not in self.live and storage.nbytes():
                        self.live[key] = storage.nbytes()
                        self.now += storage.nbytes()
                        weakref.finalize(storage, self._free, key)
            return out

    class Layer(nn.Module):
        def __init__(self, h):
            super().__init__()
            self.base, self.lora_A, self.lora_B = nn.Linear(h, h, bias=False), nn.Linear(h, 4, bias=False), nn.Linear(4, h, bias=False)
            self.base.weight.requires_grad_(False)

        def forward(self, x):
            return x + self.base(x) + self.lora_B(self.lora_A(x))

    class Stack(nn.Module):
        def __init__(self, layers):
            super().__init__()
            self.layers = layers

        def forward(self, x):
            for layer in self.layers:
                x = checkpoint(layer.__call__, x, use_reentrant=True)
            return x

    h, tokens = 256, 2048
    unit = tokens * h * 4  # one fp32 layer input, 2 MiB

    def at_bottom(layers: int, hold: bool) -> int:
        kept = runtime._register_post_backward_reshard_only_hook
        if not hold:
            runtime._register_post_backward_reshard_only_hook = lambda *a, **k: None
        try:
            torch.manual_seed(0)
            stack = nn.ModuleList(Layer(h) for _ in range(layers))
            adapters = functools.partial(lambda_auto_wrap_policy, lambda_fn=lambda m: isinstance(m, nn.Linear) and m.weight.requires_grad)
            policy = functools.partial(_or_policy, policies=[adapters, ModuleWrapPolicy({Layer})])
            model = FSDP(Stack(stack), auto_wrap_policy=policy, use_orig_params=True, device_id=torch.device("cpu"))
            counter, seen = LiveBytes(), []
            stack[0].register_forward_pre_hook(lambda m, a: seen.append(counter.now) if torch.is_grad_enabled() else None)
            x = torch.randn(tokens, h).requires_grad_(True)
            with counter:
                model(x).sum().backward()
            return seen[0]
        finally:
            runtime._register_post_backward_reshard_only_hook = kept

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        for layers in (4, 8):
            assert at_bottom(layers, True) - at_bottom(layers, False) == (2 * layers - 3) * unit  # 5 and 13 inputs
    finally:
        dist.destroy_process_group()
