"""The one phase composer: phases of immutable items in, the peak and its breakdown out (DESIGN.md section 2).

Every phase of a job (load, the training step's backward and optimizer step, evaluation, checkpoint
save, a recipe's generation, a serving engine's start-up, an inference prefill) is a tuple of
:class:`Item` records: the bytes alive while the phase runs, each under the breakdown term it counts
as, marked resident (held through the phase) or transient (allocated and freed inside it). This
module applies the overhead (CUDA context and cuBLAS workspace, or the run's ``overhead`` key), the
caching allocator's slack beside the short-lived bytes (each item's share) and the ``calibration`` factor, once,
to every phase alike; the peak is the largest phase.

How a peak is shown: a phase with ``over`` is shown as the phase it stands on (the largest of those
it names) plus one term, ``excess``, for what it adds above it, so the step's terms stay visible when
a job's save or load sets the peak; a phase without ``over`` is shown as its own items.

PYTEST_DONT_REWRITE: no asserts here; pytest need not rewrite this plugin module.
"""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

from .records import CUBLAS_WORKSPACE_BYTES, FRAGMENTATION, cuda_context_bytes
from ..record import Record
from .run import Run

OVERHEAD = "overhead"  # the term the composer fills in

Pairs = Tuple[Tuple[str, int], ...]


class Item(Record):
    """Bytes alive during a phase, under one breakdown term.

    ``transient``: allocated and freed inside the phase (activations, loss buffers, one layer's
    forward temporaries), which the allocator's pool fragments; resident items (weights, states,
    gradients, a KV cache, kept logits, a state dict) do not. ``alive``: the bytes of this item
    alive at the phase's peak instant where that is less than its full size (None: all of it);
    the breakdown and the total count ``alive``, the full size stays in the item (and in details).
    ``shown_if_zero``: the phase's breakdown lists the term even at 0 bytes (a job phase lists
    every resident state term; the step lists only what it holds).
    """

    term: str
    bytes: int
    transient: bool = False
    alive: Optional[int] = None
    shown_if_zero: bool = False
    slack: Optional[float] = None  # the share of its bytes the pool keeps cached beside it (None: the overhead's share)

    @property
    def at_peak(self) -> int:
        return self.bytes if self.alive is None else self.alive


def overhead_slot(shown_if_zero: bool = True) -> Item:
    """Where a phase's breakdown shows its overhead term; the composer fills in the bytes."""
    return Item(OVERHEAD, 0, shown_if_zero=shown_if_zero)


class Phase(Record):
    """One phase of a job, as what is alive while it runs (an ``overhead`` item marks where its
    overhead is shown; without one the overhead comes last)."""

    name: str
    items: Tuple[Item, ...]
    why: str = ""  # what sets this phase's peak, for the report ("FSDP init flattens one unit at a time")
    over: Tuple[str, ...] = ()  # shown above the largest of these phases ...
    excess: str = ""  # ... with what it adds above it as this term
    # Terms shown when this phase sets the peak but not counted in its total. Kept only where a
    # recipe's figures carry them today (recipes.py says which); nothing new should use it.
    carried: Tuple[Item, ...] = ()
    # The phase's items at its other candidate instants (the backward's: terms/backward.py backward_instants).
    # ``items`` is the instant with the most allocated; another may hold more short-lived bytes, and so more
    # reserved: the composer takes each high-water mark over all of them (Overhead.fragmented).
    instants: Tuple[Tuple[Item, ...], ...] = ()
    # Bytes of ``items`` allocated on another CUDA stream (FSDP's all-gather stream): the caching allocator serves a
    # stream only from blocks allocated on it (c10/cuda/CUDACachingAllocator.cpp get_free_block skips a cached block
    # whose stream differs), so they sit in their own segments beside the default stream's pool.
    apart: int = 0
    # The reserve an earlier phase left cached in the default stream's pool (no empty_cache in between): its
    # allocations reuse those blocks, so that pool reserves at least this much through the phase.
    held_pool: int = 0
    # Blocks cached that no item holds at the phase's instants (reserved, not allocated): another stream's pool (FSDP1
    # offload's GPU copies of shards, terms/fsdp_pools.py offloaded_shard_copies) or blocks this phase freed and
    # could not reuse (FSDP init's last decoder unit under the root's larger tensors, fsdp_pools.wrap_leftovers).
    cached: int = 0
    # The earlier phase of the same step whose reserve stays cached into this one (the optimizer step after the
    # backward): the caching allocator gives memory back only on a failed cudaMalloc or empty_cache
    # (c10/cuda/CUDACachingAllocator.cpp free_block caches the block; release_cached_blocks runs from alloc_block's
    # retry and emptyCache), so this phase's pool is at least that one's. The composer fills in ``kept_pool``.
    follows: str = ""
    kept_pool: int = 0

    @property
    def resident(self) -> Tuple[Item, ...]:
        return tuple(i for i in self.items if not i.transient and i.term != OVERHEAD)

    @property
    def transient(self) -> Tuple[Item, ...]:
        return tuple(i for i in self.items if i.transient)


class Overhead(Record):
    """What every phase holds beyond its items: a fixed part and the pool's slack, a share of each short-lived item's
    bytes (the item's own ``slack``, else ``fragmentation``)."""

    fixed: int
    fragmentation: Optional[float]  # None: the fixed part is all (a given overhead, an engine's own figures)
    details: Pairs = ()  # the fixed part's items, "overhead.cuda_context" ...

    def of(self, phase: Phase) -> int:
        return self.fixed + self.fragmented(phase)

    def fragmented(self, phase: Phase) -> int:
        """Reserved beyond allocated: the phase's reserved peak less its allocated peak, at each instant a share of
        each short-lived item (Item.slack: records.SLACK_*; records.FRAGMENTATION for the rest). The two peaks are
        separate high-water marks (torch/cuda/memory.py max_memory_allocated: "allocated_bytes.all.peak",
        max_memory_reserved: "reserved_bytes.all.peak"), so the reserved one is the largest allocated + slack over the
        phase's instants, wherever its allocated peak is."""
        if self.fragmentation is None:
            return 0
        reserved = max(self._reserved(items, phase) for items in (phase.items,) + phase.instants)
        return reserved - allocated(phase.items)

    def held_pool_binds(self, phase: Phase) -> bool:
        """Whether the pool an earlier phase left (``Phase.held_pool``) sets this phase's reserved peak."""
        if self.fragmentation is None or not phase.held_pool:
            return False
        return all(self._own_stream(items, phase) < phase.held_pool for items in (phase.items,) + phase.instants)

    def _reserved(self, items: Sequence[Item], phase: Phase) -> int:
        """One instant's reserved bytes: the default stream's pool (its own need, or what an earlier phase left
        cached, whichever is larger) plus the blocks other streams hold (``Phase.apart``) and those no item holds (``Phase.cached``)."""
        return self._default_pool(items, phase) + phase.apart + phase.cached

    def pool(self, phase: Phase) -> int:
        """The default stream's pool the phase leaves cached: its largest reserve over its instants."""
        if self.fragmentation is None:
            return 0
        return max(self._default_pool(items, phase) for items in (phase.items,) + phase.instants)

    def _default_pool(self, items: Sequence[Item], phase: Phase) -> int:
        return max(self._own_stream(items, phase), phase.held_pool, phase.kept_pool)

    def _own_stream(self, items: Sequence[Item], phase: Phase) -> int:
        return allocated(items) - phase.apart + self._slack(items)

    def _slack(self, items: Sequence[Item]) -> int:
        return round(sum((self.fragmentation if i.slack is None else i.slack) * i.at_peak
                         for i in items if i.transient or i.slack is not None))


def allocated(items: Sequence[Item]) -> int:
    """The bytes the items hold at the phase's instant, without the overhead the composer adds."""
    return sum(i.at_peak for i in items if i.term != OVERHEAD)


def training_overhead(overhead_bytes: Optional[int], torch_version: Tuple[int, ...] = ()) -> Overhead:
    """A run's overhead: the CUDA context (by torch release: records.cuda_context_bytes), the cuBLAS workspace and the
    pool's fragmentation of short-lived tensors, unless the run gives its own ``overhead`` (which replaces all three).
    None of it reads the budget: fit.search.smallest_gpu judges one estimate against every card."""
    if overhead_bytes is not None:
        return Overhead(overhead_bytes, None)
    context = cuda_context_bytes(torch_version)
    return Overhead(context + CUBLAS_WORKSPACE_BYTES, FRAGMENTATION,
                    (("overhead.cuda_context", context), ("overhead.cublas_workspace", CUBLAS_WORKSPACE_BYTES)))


def run_overhead(run: Run) -> Overhead:
    """The overhead of ``run``: its own figure, or the default for its torch release."""
    return training_overhead(run.overhead_bytes, run.knobs.torch_version)


class Shown(Record):
    """A composed phase: its total and its own breakdown, in the order the phase lists its items."""

    name: str
    total: int
    breakdown: Dict[str, int]
    why: str = ""


class Composition(Record):
    """The peak of a list of phases, its breakdown (adding up to the peak, calibration included)."""

    peak: str
    breakdown: Dict[str, int]
    overhead_details: Dict[str, int]  # the shown phase's overhead items
    phases: Tuple[Shown, ...]  # every phase, in order

    @property
    def totals(self) -> Tuple[Tuple[str, int], ...]:
        return tuple((p.name, p.total) for p in self.phases)


def compose(phases: Sequence[Phase], overhead: Overhead, terms: Sequence[str], calibration: Optional[float] = None) -> Composition:
    """The largest phase (of equals, the one with more allocated, then the first), shown under ``terms``; calibration
    scales the sum."""
    phases = _kept_pools(phases, overhead)
    shown = tuple(_shown(p, overhead) for p in phases)
    by_name = {p.name: (p, s) for p, s in zip(phases, shown)}
    # of equal totals, the phase with more allocated: a phase holding an earlier one's pool reserves no more than it
    peak, peak_shown = max(zip(phases, shown), key=lambda ps: (ps[1].total, allocated(ps[0].items)))
    breakdown, base = _present(peak, by_name, overhead, terms)
    for item in peak.carried:
        breakdown[item.term] = breakdown.get(item.term, 0) + item.at_peak
    if calibration is not None:
        # A measured correction (llmmem measure --write): the signed difference it makes to the total.
        breakdown["calibration"] = round((calibration - 1) * sum(breakdown.values()))
    details = dict(overhead.details)
    if overhead.fragmentation is not None:
        details["overhead.fragmentation"] = overhead.fragmented(base)
    return Composition(peak.name, breakdown, details, shown)


def _kept_pools(phases: Sequence[Phase], overhead: Overhead) -> List[Phase]:
    """Each phase that ``follows`` another with that phase's pool (Phase.follows), in order."""
    out: List[Phase] = []
    for phase in phases:
        before = next((p for p in out if p.name == phase.follows), None) if phase.follows else None
        out.append(phase._replace(kept_pool=overhead.pool(before)) if before is not None else phase)
    return out


def _shown(phase: Phase, overhead: Overhead) -> Shown:
    own = overhead.of(phase)
    items = list(phase.items)
    if not any(i.term == OVERHEAD for i in items):
        items.append(overhead_slot())
    out: Dict[str, int] = {}
    for item in items:
        value = own if item.term == OVERHEAD else item.at_peak
        if value or item.shown_if_zero:
            out[item.term] = out.get(item.term, 0) + value
    total = allocated(phase.items) + own
    return Shown(phase.name, total, out, phase.why)


def _present(phase: Phase, by_name, overhead: Overhead, terms: Sequence[str]) -> Tuple[Dict[str, int], Phase]:
    """The breakdown a peak at ``phase`` is shown as, and the phase whose own items it lists."""
    below: List[Tuple[Phase, Shown]] = [by_name[n] for n in phase.over if n in by_name]
    if not below:
        out = dict.fromkeys(terms, 0)
        for item in phase.items:
            if item.term != OVERHEAD:
                out[item.term] = out.get(item.term, 0) + item.at_peak
        out[OVERHEAD] = overhead.of(phase)
        return out, phase
    under, under_shown = max(below, key=lambda ps: ps[1].total)
    out, base = _present(under, by_name, overhead, terms)
    mine = by_name[phase.name][1].total
    if mine > under_shown.total:
        out[phase.excess] = out.get(phase.excess, 0) + mine - under_shown.total
    return out, base
