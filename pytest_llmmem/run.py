"""A declared run and its budget, fully resolved: what the estimator takes as input."""


from typing import NamedTuple, Optional, Tuple, Union

from .catalog import DType, Optimizer
from .model import Architecture, ParamsOnly

MODES = ("train", "inference", "lora", "qlora")
PRECISIONS = ("mixed", "pure", "amp")
METHODS = ("detailed", "rule-of-thumb")


class Budget(NamedTuple):
    """Per-GPU memory a run may use: the ceiling less the headroom kept free."""

    ceiling_bytes: int
    headroom_bytes: int = 0
    gpu: Optional[str] = None  # catalog name when the ceiling came from ``gpu``

    @property
    def bytes(self) -> int:
        return self.ceiling_bytes - self.headroom_bytes

    def describe(self) -> str:
        from .units import format_bytes

        base = self.gpu or format_bytes(self.ceiling_bytes)
        return f"{base} less {format_bytes(self.headroom_bytes)} headroom" if self.headroom_bytes else base


class Run(NamedTuple):
    """One declared training or serving job, every default applied and every name resolved."""

    name: str
    model: Union[Architecture, ParamsOnly]
    mode: str = "train"
    dtype: Optional[DType] = None
    precision: str = "mixed"
    optimizer: Optional[Optimizer] = None
    batch_size: int = 1
    seq_len: int = 2048
    seq_len_given: bool = True
    gradient_checkpointing: bool = False
    flash_attention: bool = True
    lora_rank: int = 8
    lora_targets: Tuple[str, ...] = ("q_proj", "v_proj")  # or ("all-linear",)
    adapter_dtype: Optional[DType] = None
    gpus: int = 1
    budget: Optional[Budget] = None
    method: str = "detailed"
    overhead_bytes: Optional[int] = None  # replaces the CUDA context / allocator default
    file: Optional[str] = None
    line: Optional[int] = None

    @property
    def trains(self) -> bool:
        return self.mode != "inference"
