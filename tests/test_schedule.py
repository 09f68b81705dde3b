"""Slot and lease bookkeeping, without processes."""

from __future__ import annotations

import pytest

from vidring.daemon.schedule import Scheduler
from vidring.loader.ring import SlotState
from vidring.loader.status import SlotCounts


def _fill_all(s: Scheduler, waiting: list | None = None) -> list:
    started = s.next_fills(waiting or [])
    for slot, _ in started:
        for pos in range(s.batch_size):
            s.clip_done(slot, pos)
    return started


def test_repeated_index_gets_the_same_batch_and_first_requests_go_in_plan_order() -> None:
    s = Scheduler(slot_count=3, batches_per_epoch=5, batch_size=2)
    assert [s.assign(b"a", 0, i)[1] for i in (4, 0, 2)] == [0, 1, 2]
    assert s.assign(b"a", 0, 0) == (0, 1)
    assert s.assign(b"a", 1, 3) == (1, 0)


def test_prefetch_fills_plan_order_across_the_epoch_boundary() -> None:
    s = Scheduler(slot_count=3, batches_per_epoch=2, batch_size=1)
    assert [key for _, key in _fill_all(s)] == [(0, 0), (0, 1), (1, 0)]
    assert all(rec.state == SlotState.READY for rec in s.slots)


def test_lease_release_and_repeat_from_kept_content() -> None:
    s = Scheduler(slot_count=2, batches_per_epoch=4, batch_size=1)
    _fill_all(s)
    key = s.assign(b"a", 0, 0)
    slot = s.available(key)
    assert slot is not None
    lease = s.lease(slot, b"a")
    assert s.slots[slot].state == SlotState.LEASED
    assert not s.release(lease, b"b")  # only its owner can
    assert s.release(lease, b"a")
    assert not s.release(lease, b"a")
    assert s.slots[slot].state == SlotState.FREE
    assert s.available(key) == slot  # a repeated request before refill needs no decode


def test_waiting_key_evicts_unwanted_prefetch_not_leased_slots() -> None:
    s = Scheduler(slot_count=2, batches_per_epoch=8, batch_size=1)
    _fill_all(s)  # (0,0), (0,1)
    first = s.lease(s.available(s.assign(b"a", 0, 0)), b"a")
    s.release(first, b"a")
    s.assign(b"a", 0, 1)
    s.lease(s.available((0, 1)), b"a")
    # Both slots busy or kept; a waiting request for batch 0 of a new epoch must get one.
    started = s.next_fills([(1, 0)])
    assert [key for _, key in started] == [(1, 0)]
    assert s.held_by(b"a") == 1
    assert s.slots[s.available((0, 1))].state == SlotState.LEASED


def test_all_leased_is_detected() -> None:
    s = Scheduler(slot_count=2, batches_per_epoch=4, batch_size=1)
    _fill_all(s)
    for i in range(2):
        s.lease(s.available(s.assign(b"a", 0, i)), b"a")
    assert s.all_leased()
    assert s.next_fills([s.assign(b"a", 0, 2)]) == []


def test_counts() -> None:
    s = Scheduler(slot_count=3, batches_per_epoch=4, batch_size=2)
    s.next_fills([])
    assert s.counts() == SlotCounts(total=3, free=0, filling=3, ready=0, leased=0)


def test_leases_are_released_by_owner() -> None:
    s = Scheduler(slot_count=3, batches_per_epoch=4, batch_size=1)
    _fill_all(s)
    slots = [s.available(s.assign(b"a", 0, i)) for i in range(3)]
    a1, a2 = s.lease(slots[0], b"a"), s.lease(slots[1], b"a")
    b1 = s.lease(slots[1], b"b")  # a repeated request: two owners share slot 1
    s.lease(slots[2], b"b")
    assert (s.held_by(b"a"), s.held_by(b"b")) == (2, 2)
    assert len(s.release_owner(b"a")) == 2
    assert not s.release(a1, b"a")
    assert not s.release(a2, b"a")
    assert s.slots[slots[0]].state == SlotState.FREE
    assert s.slots[slots[1]].state == SlotState.LEASED  # b still holds it
    assert s.release(b1, b"b")
    assert s.slots[slots[1]].state == SlotState.FREE
    assert s.release_owner(b"a") == []
    assert s.held_by(b"b") == 1


def test_each_client_has_its_own_epoch_and_index_map() -> None:
    s = Scheduler(slot_count=2, batches_per_epoch=4, batch_size=1)
    assert [s.assign(b"a", 0, i)[1] for i in (3, 1)] == [0, 1]
    assert [s.assign(b"b", 5, i)[1] for i in (1, 0)] == [0, 1]  # not batch 2 of a's epoch
    assert s.assign(b"a", 0, 0) == (0, 2)
    assert s.assign(b"a", 0, 3) == (0, 0)
    assert s.consumer_epoch == 0  # prefetch follows whoever asked last
    s.forget(b"a")
    assert s.assign(b"a", 0, 2) == (0, 0)  # a new client starts afresh


def test_client_parts_are_disjoint_and_cover_the_plan() -> None:
    s = Scheduler(slot_count=2, batches_per_epoch=8, batch_size=1)
    lengths = [s.set_part(bytes([i]), i, 3) for i in range(3)]
    assert lengths == [3, 3, 2]
    parts = [[s.assign(bytes([i]), 0, k)[1] for k in range(n)] for i, n in enumerate(lengths)]
    assert parts == [[0, 3, 6], [1, 4, 7], [2, 5]]
    with pytest.raises(IndexError, match="out of range"):
        s.assign(b"\x02", 0, 2)
    with pytest.raises(IndexError, match="num_shards"):
        s.set_part(b"x", 3, 3)
    s.set_part(b"lead", 1, 2)
    s.assign(b"lead", 0, 0)
    # The asker's next batch first, then the next client's (whose epoch-0 part is all read).
    assert [key for _, key in s.next_fills([])] == [(0, 3), (1, 0)]


def test_prefetch_serves_every_shard_in_turn() -> None:
    s = Scheduler(slot_count=4, batches_per_epoch=8, batch_size=1)
    for i in range(2):
        s.set_part(bytes([i]), i, 2)
        s.assign(bytes([i]), 0, 0)
    filled = [key for _, key in _fill_all(s)]
    assert sorted(filled) == [(0, 2), (0, 3), (0, 4), (0, 5)]  # each shard's next two
