"""PyTorch's CUDA caching allocator, replayed: what ``torch.cuda.max_memory_reserved`` would read for a stream
of allocations and frees.

The rules are c10/cuda/CUDACachingAllocator.cpp's with the default configuration (no
``PYTORCH_CUDA_ALLOC_CONF``: no expandable segments, no max_split_size, no garbage collection):

- a request is rounded up to a multiple of 512 bytes (``round_size``, kMinBlockSize);
- requests up to 1 MiB (kSmallSize) are served from the small pool, larger ones from the large pool;
- a request is served from the smallest cached free block of its pool that is large enough, the
  lowest address among equals (``get_free_block``: ``std::set::lower_bound`` over blocks ordered by
  stream, size and address);
- with none, a new segment is reserved (``cudaMalloc``): 2 MiB (kSmallBuffer) for a small request,
  20 MiB (kLargeBuffer) for one under 10 MiB (kMinLargeAlloc), else the request rounded up to 2 MiB
  (kRoundLarge) (``get_allocation_size``);
- a block larger than the request is split when the rest is at least 512 bytes (small pool) or more
  than 1 MiB (large pool) (``should_split``); otherwise the whole block is handed out;
- a freed block merges with its free neighbours in the same segment (``free_block`` /
  ``try_merge_blocks``) and stays cached: reserved bytes never fall unless a ``cudaMalloc`` fails,
  when every segment with nothing allocated in it is released and the request retried
  (``release_cached_blocks`` in ``alloc_block``'s retry).

One stream only: a block freed on another stream would stay in that stream's pool, which a traced step
on one device never has. Held against the H100 (benchmarks/allocator_replay.py): the replayed reserved
peaks of the measured steady training steps (benchmarks/data/gpu-peaks-h100-steady.jsonl).
"""

from __future__ import annotations

import bisect
from typing import Dict, List, Optional, Tuple

MIN_BLOCK = 512  # kMinBlockSize: every request is a multiple of it
SMALL_REQUEST = 1 << 20  # kSmallSize: the largest request the small pool serves
SMALL_SEGMENT = 2 << 20  # kSmallBuffer: a small-pool segment
MIN_LARGE_SEGMENT = 10 << 20  # kMinLargeAlloc: a request under this gets a whole LARGE_SEGMENT
LARGE_SEGMENT = 20 << 20  # kLargeBuffer
LARGE_ROUND = 2 << 20  # kRoundLarge: larger requests' segments are rounded up to it


def round_size(nbytes: int) -> int:
    """A request's size as the allocator books it (``round_size``)."""
    return MIN_BLOCK if nbytes < MIN_BLOCK else -(-nbytes // MIN_BLOCK) * MIN_BLOCK


def segment_size(size: int) -> int:
    """The ``cudaMalloc`` a rounded request makes when no cached block serves it (``get_allocation_size``)."""
    if size <= SMALL_REQUEST:
        return SMALL_SEGMENT
    if size < MIN_LARGE_SEGMENT:
        return LARGE_SEGMENT
    return -(-size // LARGE_ROUND) * LARGE_ROUND


class _Block:
    __slots__ = ("segment", "offset", "size", "free", "prev", "next", "small")

    def __init__(self, segment: int, offset: int, size: int, small: bool) -> None:
        self.segment, self.offset, self.size, self.small = segment, offset, size, small
        self.free = True
        self.prev: Optional[_Block] = None
        self.next: Optional[_Block] = None

    @property
    def order(self) -> Tuple[int, int, int]:
        return (self.size, self.segment, self.offset)


class CachingAllocator:
    """The allocator's segments and blocks; ``allocate``/``free`` by a caller's key (a storage's id).

    ``capacity``: the bytes ``cudaMalloc`` may reserve in all (a card less its CUDA context); None: unbounded.
    Each peak is a high-water mark since the last ``reset_peaks`` (torch.cuda.reset_peak_memory_stats).
    """

    def __init__(self, capacity: Optional[int] = None) -> None:
        self.capacity = capacity
        self.allocated = 0  # bytes of blocks handed out (stats allocated_bytes: each block's booked size)
        self.reserved = 0  # bytes of segments reserved (stats reserved_bytes)
        self.peak_allocated = 0
        self.peak_reserved = 0
        self.out_of_memory = False  # a request failed even after the cache was released
        self._free: Dict[bool, List[Tuple[int, int, int]]] = {True: [], False: []}  # pool -> sorted block orders
        self._by_order: Dict[Tuple[int, int, int], _Block] = {}
        self._segments: Dict[int, int] = {}  # segment -> bytes
        self._handed: Dict[int, _Block] = {}  # key -> block
        self._next_segment = 0

    def allocate(self, key: int, nbytes: int) -> None:
        size = round_size(nbytes)
        small = size <= SMALL_REQUEST
        block = self._best_fit(size, small) or self._new_segment(size, small)
        if block is None:
            self.out_of_memory = True
            return
        rest = block.size - size
        if (rest >= MIN_BLOCK) if small else (rest > SMALL_REQUEST):
            tail = _Block(block.segment, block.offset + size, rest, small)
            tail.prev, tail.next = block, block.next
            if block.next is not None:
                block.next.prev = tail
            block.next = tail
            block.size = size
            self._cache(tail)
        block.free = False
        self._handed[key] = block
        self.allocated += block.size
        self.peak_allocated = max(self.peak_allocated, self.allocated)

    def free(self, key: int) -> None:
        block = self._handed.pop(key, None)
        if block is None:
            return
        self.allocated -= block.size
        block.free = True
        for neighbour in (block.prev, block.next):
            if neighbour is not None and neighbour.free:
                self._uncache(neighbour)
                first, second = (neighbour, block) if neighbour is block.prev else (block, neighbour)
                first.size += second.size
                first.next = second.next
                if second.next is not None:
                    second.next.prev = first
                block = first
        self._cache(block)

    def reset_peaks(self) -> None:
        self.peak_allocated, self.peak_reserved = self.allocated, self.reserved

    def _best_fit(self, size: int, small: bool) -> Optional[_Block]:
        pool = self._free[small]
        at = bisect.bisect_left(pool, (size, -1, -1))
        if at == len(pool):
            return None
        return self._by_order.pop(pool.pop(at))

    def _new_segment(self, size: int, small: bool) -> Optional[_Block]:
        nbytes = segment_size(size)
        if self.capacity is not None and self.reserved + nbytes > self.capacity:
            self._release_cache()
            if self.reserved + nbytes > self.capacity:
                return None
        segment = self._next_segment
        self._next_segment += 1
        self._segments[segment] = nbytes
        self.reserved += nbytes
        self.peak_reserved = max(self.peak_reserved, self.reserved)
        return _Block(segment, 0, nbytes, small)

    def _release_cache(self) -> None:
        """cudaFree every segment whose blocks are all free (one free block spanning it)."""
        for small, pool in self._free.items():
            kept = []
            for order in pool:
                block = self._by_order[order]
                if block.prev is None and block.next is None:
                    self.reserved -= self._segments.pop(block.segment)
                    del self._by_order[order]
                else:
                    kept.append(order)
            self._free[small] = kept

    def _cache(self, block: _Block) -> None:
        bisect.insort(self._free[block.small], block.order)
        self._by_order[block.order] = block

    def _uncache(self, block: _Block) -> None:
        pool = self._free[block.small]
        del pool[bisect.bisect_left(pool, block.order)]
        del self._by_order[block.order]
