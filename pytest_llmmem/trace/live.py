"""Live bytes of a step that runs on fake tensors: every storage an operator creates, until it dies.

A :class:`LiveBytes` dispatch mode sits above ``FakeTensorMode``. Each operator's output storages
are counted when first seen and dropped by a weak-reference callback when the storage is freed
(torch keeps one Python object per storage, so a view or an in-place result is the same storage).
Sizes are rounded up to the CUDA caching allocator's 512-byte blocks
(c10/cuda/CUDACachingAllocator.cpp kMinBlockSize, as torch/distributed/_tools/mem_tracker.py does),
so the totals are what ``torch.cuda.max_memory_allocated`` would report for the same tensors.
Every allocation and free is also replayed through the caching allocator (allocator.py), so each
phase has the reserved peak ``torch.cuda.max_memory_reserved`` would report (``reserved``).

Each storage carries a term ("activations", "gradients", ...): the phase's default when it is
created, re-tagged when its role is known (a gradient at accumulation, an optimizer state after
the step, a KV cache after the prefill). Each phase keeps its peak and the storages alive at that
instant; the composition is read from their tags when the phase is reported, so a storage
re-tagged later counts under its final role.

PYTEST_DONT_REWRITE: no asserts here; pytest need not rewrite this plugin module.
"""

from __future__ import annotations

import weakref
from typing import Any, Dict, List, Optional, Tuple

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from .allocator import CachingAllocator

BLOCK = 512  # bytes: the caching allocator's smallest block, every allocation is a multiple of it


def _rounded(nbytes: int) -> int:
    return -(-nbytes // BLOCK) * BLOCK


class LiveBytes(TorchDispatchMode):
    """Tracks live storage bytes per term and each phase's peak with its composition."""

    def __init__(self, vocab_size: int) -> None:
        super().__init__()
        self.vocab_size = vocab_size
        self.live: Dict[int, List[Any]] = {}  # id(storage) -> [bytes, term, weakref]
        self.current = 0
        self.phase = ""
        self.default_term = "activations"
        self.peaks: Dict[str, int] = {}
        self.at_peak: Dict[str, List[Tuple[int, List[Any]]]] = {}  # phase -> (bytes, entry) alive at its peak
        self._pending = False  # a new peak whose composition is not yet copied
        self._held: Optional[tuple] = None  # (storage key, entry, bytes) of an addend that may be summed in place
        self.pool = CachingAllocator()
        self.reserved: Dict[str, int] = {}  # phase -> the pool's reserved peak while it ran

    # --- counting -----------------------------------------------------------------------------

    def add(self, tensor: torch.Tensor, term: Optional[str] = None) -> None:
        """Count ``tensor``'s storage if it is new; a known storage keeps its tag unless ``term`` is given."""
        storage = tensor.untyped_storage()
        key = id(storage)
        entry = self.live.get(key)
        if entry is not None:
            if term is not None:
                entry[1] = term
            return
        nbytes = _rounded(storage.nbytes())
        if term is None:
            # the head's output, the loss's log-softmax and their gradients: one column per vocabulary entry
            term = "logits" if self.default_term == "activations" and tensor.dim() and tensor.shape[-1] == self.vocab_size \
                and tensor.dim() >= 2 and tensor.shape[-2] != self.vocab_size else self.default_term
        self.live[key] = [nbytes, term, weakref.ref(storage, lambda _ref, key=key: self._freed(key))]
        self.current += nbytes
        self.pool.allocate(key, storage.nbytes())
        if self.phase:
            self.reserved[self.phase] = max(self.reserved.get(self.phase, 0), self.pool.reserved)
        if self.phase and self.current > self.peaks.get(self.phase, -1):
            self.peaks[self.phase] = self.current
            self._pending = True

    def tag(self, tensor: Optional[torch.Tensor], term: str) -> None:
        if tensor is not None:
            self.add(tensor, term)

    def _hold(self, args) -> None:
        """autograd sums two gradients for one input (a residual stream, tied embeddings) in place on real
        tensors and out of place on a tensor subclass such as FakeTensor (torch/csrc/autograd/input_buffer.cpp
        can_accumulate_inplace: not isTensorSubclassLike, use_count 1). So the first addend's bytes are set
        aside while the sum is allocated: if that addend dies right after (the buffer let go of it: the
        in-place case) they never come back; if anything else happens first they are restored in _settle."""
        first, other = (args + (None, None))[:2]
        if not isinstance(first, torch.Tensor) or not isinstance(other, torch.Tensor) or first.shape != other.shape \
                or first.dtype != other.dtype or first.untyped_storage().nbytes() != first.numel() * first.element_size():
            return
        entry = self.live.get(id(first.untyped_storage()))
        if entry is not None and entry[0]:
            if self._pending:
                self._snapshot()  # the peak just reached still holds the addend
            self._held = (id(first.untyped_storage()), entry, entry[0])
            self.current -= entry[0]
            entry[0] = 0

    def _settle(self) -> None:
        """Give back the bytes _hold set aside: the addend outlived the sum, so both were alive."""
        if self._held is not None:
            _, entry, nbytes = self._held
            self._held = None
            entry[0] = nbytes
            self.current += nbytes
            if self.phase and self.current > self.peaks.get(self.phase, -1):
                self.peaks[self.phase] = self.current
                self._pending = True

    def _freed(self, key: int) -> None:
        if self._held is not None and self._held[0] == key:
            self._held = None  # the in-place case: the addend went as the sum arrived
            self.live.pop(key, None)
            self.pool.free(key)
            return
        self._settle()
        if self._pending:
            self._snapshot()
        entry = self.live.pop(key, None)
        if entry is not None:
            self.current -= entry[0]
        self.pool.free(key)

    def _snapshot(self) -> None:
        self.at_peak[self.phase] = self._alive()
        self._pending = False

    def _alive(self) -> List[Tuple[int, List[Any]]]:
        """(bytes now, entry) of every live storage: the bytes copied, the entry kept for its final tag."""
        return [(entry[0], entry) for entry in self.live.values()]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self._settle()
        if func is torch.ops.aten.add.Tensor:
            self._hold(args)
        out = func(*args, **(kwargs or {}))
        for item in tree_flatten(out)[0]:
            if isinstance(item, torch.Tensor):
                self.add(item)
        return out

    # --- phases -------------------------------------------------------------------------------

    def start(self, phase: str, default_term: str = "activations") -> None:
        """Open ``phase``: its peak starts from what is alive now."""
        self._settle()
        if self._pending:
            self._snapshot()
        self.phase, self.default_term = phase, default_term
        self.peaks[phase] = self.current
        self.reserved[phase] = self.pool.reserved
        self.at_peak[phase] = self._alive()

    def mark(self, name: str) -> None:
        """Record what is alive now as ``name`` (not a peak: the saved set at the end of the forward)."""
        self._settle()
        if self._pending:
            self._snapshot()
        self.at_peak[name] = self._alive()
        self.peaks[name] = self.current

    def stop(self) -> None:
        self._settle()
        if self._pending:
            self._snapshot()
        self.phase, self.default_term = "", "activations"

    def composition(self, phase: str) -> Dict[str, int]:
        """Bytes per term alive at ``phase``'s peak, by each storage's final tag."""
        parts: Dict[str, int] = {}
        for nbytes, entry in self.at_peak.get(phase, []):
            parts[entry[1]] = parts.get(entry[1], 0) + nbytes
        return parts
