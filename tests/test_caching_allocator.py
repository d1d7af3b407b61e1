"""The caching-allocator replay (trace/allocator.py): each rule of c10/cuda/CUDACachingAllocator.cpp on a hand-made
sequence, and the trace's reserved peak on fake tensors."""

import pytest

from pytest_llmmem.trace.allocator import CachingAllocator, round_size, segment_size
from pytest_llmmem.units import MiB


def test_requests_round_to_512_bytes_and_segments_by_size():
    assert (round_size(1), round_size(512), round_size(513)) == (512, 512, 1024)
    assert segment_size(1 * MiB) == 2 * MiB  # the small pool's segment
    assert segment_size(1 * MiB + 512) == 20 * MiB  # under 10 MiB: a whole 20 MiB segment
    assert segment_size(10 * MiB) == 10 * MiB
    assert segment_size(10 * MiB + 512) == 12 * MiB  # larger: rounded up to 2 MiB


def test_best_fit_splits_only_when_more_than_a_mebibyte_is_left():
    pool = CachingAllocator()
    pool.allocate("a", 6 * MiB)  # a new 20 MiB segment; the 14 MiB left is split off and cached
    assert (pool.allocated, pool.reserved) == (6 * MiB, 20 * MiB)
    pool.allocate("b", 13 * MiB)  # served by the 14 MiB block: 1 MiB left is not > 1 MiB, so all 14 are booked
    assert (pool.allocated, pool.reserved) == (20 * MiB, 20 * MiB)
    pool.free("a")
    pool.free("b")  # merged back into one 20 MiB block
    pool.allocate("c", 19 * MiB)
    assert (pool.allocated, pool.reserved) == (20 * MiB, 20 * MiB)


def test_a_freed_block_too_small_for_the_next_request_stays_reserved():
    # the growing-tensor pattern: 100 MiB freed, then 120 MiB asked: a second segment, 220 MiB reserved
    pool = CachingAllocator()
    pool.allocate("x", 100 * MiB)
    pool.free("x")
    pool.allocate("y", 120 * MiB)
    assert (pool.allocated, pool.reserved, pool.peak_reserved) == (120 * MiB, 220 * MiB, 220 * MiB)
    pool.allocate("z", 90 * MiB)  # the cached 100 MiB block serves it: 10 MiB left is split off
    assert (pool.allocated, pool.reserved) == (210 * MiB, 220 * MiB)


def test_blocks_asked_for_again_at_their_size_come_back_without_slack():
    # core/records.py SLACK_UNCHECKPOINTED: a step's saved tensors (4 x 30 MiB) and its loss buffer (200 MiB), freed
    # and asked for again at the same sizes by the next step, are each served by the block its predecessor left
    # (best fit): 4 x 30 + 200 = 320 MiB reserved after both steps, nothing beside it
    pool = CachingAllocator()
    for step in range(2):
        for layer in range(4):
            pool.allocate(("saved", layer), 30 * MiB)
        pool.allocate("loss", 200 * MiB)
        pool.free("loss")
        for layer in range(4):
            pool.free(("saved", layer))
    assert (pool.peak_allocated, pool.peak_reserved) == (320 * MiB, 320 * MiB)


def test_a_long_lived_tensor_carved_from_a_freed_loss_block_strands_the_rest():
    # core/records.py SLACK_CHECKPOINTED: checkpointed, the freed 200 MiB loss buffer is the only large free block
    # when 30 MiB of long-lived tensors (an optimizer state made in the first step) are asked for: best fit splits
    # them off it, and the next step's 200 MiB loss buffer finds 170 MiB free, too small: a second segment.
    # Reserved 12 + 200 + 200 = 412 MiB against 12 + 30 + 200 = 242 MiB allocated: the 170 MiB rest is the slack.
    pool = CachingAllocator()
    pool.allocate("layer input", 12 * MiB)
    pool.allocate("loss", 200 * MiB)
    pool.free("loss")
    pool.allocate("state", 30 * MiB)
    pool.allocate("loss", 200 * MiB)
    assert (pool.peak_allocated, pool.peak_reserved) == (242 * MiB, 412 * MiB)


def test_a_full_card_releases_the_cache_and_retries_before_failing():
    pool = CachingAllocator(capacity=150 * MiB)
    pool.allocate("x", 100 * MiB)
    pool.free("x")
    pool.allocate("y", 120 * MiB)  # 100 + 120 > 150: the free 100 MiB segment is released, then 120 reserved
    assert (pool.reserved, pool.out_of_memory) == (120 * MiB, False)
    pool.allocate("z", 100 * MiB)  # 120 in use + 100 > 150 with nothing cached to release
    assert pool.out_of_memory


def test_peaks_restart_from_what_is_held():
    pool = CachingAllocator()
    pool.allocate("x", 40 * MiB)
    pool.free("x")
    pool.reset_peaks()  # torch.cuda.reset_peak_memory_stats: the peaks restart at the current figures
    assert (pool.peak_allocated, pool.peak_reserved) == (0, 40 * MiB)


def test_the_trace_replays_its_allocations_through_the_allocator():
    torch = pytest.importorskip("torch")
    from torch._subclasses.fake_tensor import FakeTensorMode

    from pytest_llmmem.trace.live import LiveBytes

    tracker = LiveBytes(vocab_size=7)
    with FakeTensorMode(), tracker:
        tracker.start("step")
        first = torch.empty(3 * MiB, dtype=torch.uint8)  # a 20 MiB segment, 17 MiB cached beside it
        del first
        second = torch.empty(30 * MiB, dtype=torch.uint8)  # the free 20 MiB cannot hold it: a 30 MiB segment
        tracker.stop()
    assert tracker.peaks["step"] == 30 * MiB
    assert tracker.reserved["step"] == 50 * MiB
    del second
