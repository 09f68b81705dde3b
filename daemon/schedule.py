"""Slots, leases and what to fill next: the daemon's bookkeeping, without I/O.

A batch is named by its key (epoch, plan batch).  The first request of a
client for index i of an epoch is assigned that client's next plan batch of
the epoch; a repeat gets the same one (DESIGN.md, "Batches, epochs and what
Keras really does").  Each client has its own index maps, so trainers at
different epochs of one pipeline never change what the other's epoch holds;
prefetch fills the next batches of every client in turn, the one that asked
last first.  A client may read one part of
each epoch (ClipDataset(shard=i, num_shards=n)): plan batches i, i + n, ...;
the parts of n clients are disjoint and cover the epoch.

Slot states (ring.SlotState), each transition made in one place here:
    FREE -> FILLING   start_fill(): its B clips go to the workers
    FILLING -> READY  clip_done() for the last clip
    READY -> LEASED   lease(); a LEASED slot may carry several leases
    LEASED -> FREE    release() of its last lease; the content stays valid, so
                      a repeated request finds it until the slot is refilled

Leases live in one table here, each with its owner (the client's ZeroMQ
identity), so a client's leases are released by owner when it goes.

What to fill: the keys the trainer waits on, then the next plan batches in
order (crossing into the next epoch), as many as there are slots that are
not leased.  A slot is only ever refilled if its content is not among those.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from vidring.loader.ring import SlotState
from vidring.loader.status import SlotCounts

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

Key = tuple[int, int]  # (epoch, plan batch)


@dataclass(frozen=True, slots=True)
class Lease:
    slot: int
    owner: bytes


@dataclass(slots=True)
class SlotRecord:
    state: SlotState = SlotState.FREE
    key: Key | None = None
    valid: bool = False  # content of `key` is complete
    fill_seq: int = 0
    remaining: set[int] = field(default_factory=set)  # positions still decoding


class Scheduler:
    def __init__(self, slot_count: int, batches_per_epoch: int, batch_size: int,
                 on_change: Callable[[int, SlotRecord], None] = lambda _slot, _rec: None,
                 first_lease_id: int = 1) -> None:
        if batches_per_epoch < 1:
            raise ValueError("an epoch needs at least one batch")
        self.slots = [SlotRecord() for _ in range(slot_count)]
        self.batches_per_epoch = batches_per_epoch
        self.batch_size = batch_size
        self.consumer_epoch = 0  # the epoch of the last request (status shows it)
        self._on_change = on_change
        self._content: dict[Key, int] = {}  # key -> slot filling or holding it
        # owner -> epoch -> {request index -> plan batch}
        self._index_maps: dict[bytes, dict[int, dict[int, int]]] = {}
        self._lead = b""  # the owner that asked last: prefetched first
        self._current: dict[bytes, int] = {}  # owner -> the epoch it asked for last
        self._parts: dict[bytes, tuple[int, int]] = {}  # owner -> (shard, num_shards)
        self._leases: dict[int, Lease] = {}
        self._next_lease = first_lease_id

    # -- requests ------------------------------------------------------------

    def set_part(self, owner: bytes, shard: int, num_shards: int) -> int:
        """`owner` reads plan batches shard, shard + num_shards, ...; returns how many."""
        if not 0 <= shard < num_shards <= self.batches_per_epoch:
            raise IndexError(f"shard {shard} of {num_shards}: need 0 <= shard < num_shards <= "
                             f"{self.batches_per_epoch} batches per epoch")
        self._parts[owner] = (shard, num_shards)
        return self.part_length(owner)

    def part_length(self, owner: bytes) -> int:
        shard, num_shards = self._parts.get(owner, (0, 1))
        return len(range(shard, self.batches_per_epoch, num_shards))

    def assign(self, owner: bytes, epoch: int, index: int) -> Key:
        """The plan batch that serves `owner`'s request (epoch, index); stable within the epoch."""
        length = self.part_length(owner)
        if not 0 <= index < length:
            raise IndexError(f"batch index {index} out of range 0..{length - 1}")
        maps = self._index_maps.setdefault(owner, {})
        mapping = maps.setdefault(epoch, {})
        if index not in mapping:
            mapping[index] = self._plan_batch(owner, len(mapping))
        # Prefetch follows each trainer, also backwards (a trainer resumed at an
        # earlier epoch against a long-running daemon).
        self._lead, self.consumer_epoch = owner, epoch
        self._current[owner] = epoch
        for other in [e for e in maps if abs(e - epoch) > 1]:
            del maps[other]
        return (epoch, mapping[index])

    def available(self, key: Key) -> int | None:
        """The slot holding key's complete content, if any."""
        slot = self._content.get(key)
        if slot is not None and self.slots[slot].valid:
            return slot
        return None

    def all_leased(self) -> bool:
        return all(rec.state == SlotState.LEASED for rec in self.slots)

    def lease(self, slot: int, owner: bytes) -> int:
        rec = self.slots[slot]
        assert rec.valid, "lease of a slot without complete content"
        lease_id = self._next_lease
        self._next_lease += 1
        self._leases[lease_id] = Lease(slot, owner)
        if rec.state != SlotState.LEASED:
            rec.state = SlotState.LEASED  # READY/FREE(valid) -> LEASED
            self._on_change(slot, rec)
        return lease_id

    def release(self, lease_id: int, owner: bytes) -> bool:
        """Give back one lease; only its owner can."""
        lease = self._leases.get(lease_id)
        if lease is None or lease.owner != owner:
            return False
        del self._leases[lease_id]
        if not any(other.slot == lease.slot for other in self._leases.values()):
            rec = self.slots[lease.slot]
            rec.state = SlotState.FREE  # LEASED -> FREE, content kept for repeats
            self._on_change(lease.slot, rec)
        return True

    def release_owner(self, owner: bytes) -> list[Key]:
        """Give back every lease of `owner`; returns the batches they held."""
        mine = [(lease_id, lease) for lease_id, lease in self._leases.items()
                if lease.owner == owner]
        keys = []
        for lease_id, lease in mine:
            key = self.slots[lease.slot].key
            if key is not None:
                keys.append(key)
            self.release(lease_id, owner)
        return keys

    def forget(self, owner: bytes) -> None:
        """A client that left: its leases go back and its index maps go."""
        self.release_owner(owner)
        self._index_maps.pop(owner, None)
        self._parts.pop(owner, None)
        self._current.pop(owner, None)

    def _plan_batch(self, owner: bytes, k: int) -> int:
        """The k-th plan batch of `owner`'s part of an epoch."""
        shard, num_shards = self._parts.get(owner, (0, 1))
        return shard + k * num_shards

    def held_by(self, owner: bytes) -> int:
        return sum(lease.owner == owner for lease in self._leases.values())

    # -- filling -------------------------------------------------------------

    def wanted(self, waiting: list[Key]) -> list[Key]:
        """Keys that should be in the ring, most urgent first."""
        capacity = sum(rec.state != SlotState.LEASED for rec in self.slots)
        keys: list[Key] = []
        for key in waiting:
            if key not in keys:
                keys.append(key)
        owners = [self._lead, *(o for o in self._current if o != self._lead)]
        streams = [self._upcoming(owner) for owner in owners]
        # Round robin over the clients' next batches; clients reading the same batches
        # share them, so a bounded number of turns always fills the capacity.
        for _ in range(4 * (capacity + 1) * len(streams)):
            if len(keys) >= capacity:
                break
            key = next(streams[_ % len(streams)])
            if key not in keys:
                keys.append(key)
        return keys[:max(capacity, len(waiting))]

    def _upcoming(self, owner: bytes) -> Iterator[Key]:
        """The batches `owner` will ask for next, in order, across epochs."""
        maps = self._index_maps.get(owner, {})
        length = self.part_length(owner)
        epoch = self._current.get(owner, self.consumer_epoch)
        k = len(maps.get(epoch, {}))
        while True:
            if k >= length:
                epoch, k = epoch + 1, len(maps.get(epoch + 1, {}))
                continue
            yield (epoch, self._plan_batch(owner, k))
            k += 1

    def next_fills(self, waiting: list[Key]) -> list[tuple[int, Key]]:
        """Start filling slots for wanted keys not yet in the ring; returns (slot, key)."""
        wanted = self.wanted(waiting)
        wanted_set = set(wanted)
        started: list[tuple[int, Key]] = []
        for key in wanted:
            if key in self._content:
                continue
            slot = self._victim(wanted_set)
            if slot is None:
                break
            self._start_fill(slot, key)
            started.append((slot, key))
        return started

    def _victim(self, wanted: set[Key]) -> int | None:
        best: tuple[int, int] | None = None
        for slot, rec in enumerate(self.slots):
            if rec.state == SlotState.FREE and rec.key is None:
                rank = 0
            elif rec.state in (SlotState.FREE, SlotState.READY) and rec.key not in wanted:
                rank = 1 if rec.state == SlotState.FREE else 2
            else:
                continue
            if best is None or rank < best[0]:
                best = (rank, slot)
        return None if best is None else best[1]

    def _start_fill(self, slot: int, key: Key) -> None:
        rec = self.slots[slot]
        if rec.key is not None:
            self._content.pop(rec.key, None)
        rec.state = SlotState.FILLING  # FREE/READY (unwanted) -> FILLING
        rec.key = key
        rec.valid = False
        rec.fill_seq += 1
        rec.remaining = set(range(self.batch_size))
        self._content[key] = slot
        self._on_change(slot, rec)

    def clip_done(self, slot: int, position: int) -> bool:
        """Record one finished clip; True when it completed the batch."""
        rec = self.slots[slot]
        rec.remaining.discard(position)
        if rec.state == SlotState.FILLING and not rec.remaining:
            rec.state = SlotState.READY  # FILLING -> READY
            rec.valid = True
            self._on_change(slot, rec)
            return True
        return False

    # -- status --------------------------------------------------------------

    def counts(self) -> SlotCounts:
        states = [rec.state for rec in self.slots]
        return SlotCounts(total=len(states), free=states.count(SlotState.FREE),
                          filling=states.count(SlotState.FILLING),
                          ready=states.count(SlotState.READY),
                          leased=states.count(SlotState.LEASED))
