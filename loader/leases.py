"""The batches a trainer holds: each lease with the slot mapping its arrays view.

A lease goes back when the last array viewing its mapping is garbage
collected (a weakref.finalize on the mapping), on `release`, or by a spill:
when the trainer holds every slot the daemon could fill, its oldest held
batch is copied out of the ring in place (spill.py) and its lease given back,
so frameworks that keep batches (Keras's queue, Keras-on-JAX, tf.distribute)
never exhaust the ring.  Nothing is copied while the trainer stays within it.
"""

from __future__ import annotations

import logging
import threading
import weakref
from typing import TYPE_CHECKING

from vidring.loader.spill import make_private

if TYPE_CHECKING:
    import mmap

    from vidring.loader.client import Client

log = logging.getLogger("vidring")


class HeldBatches:
    def __init__(self, client: Client) -> None:
        self._client = client
        # Reentrant: a finalizer may run in this thread while the lock is held.
        self._lock = threading.RLock()
        self._held: dict[int, weakref.ref[mmap.mmap]] = {}  # lease id -> mapping, oldest first
        self._lease_of: dict[int, int] = {}  # id(mapping) -> lease id
        self.spilled = 0

    def __len__(self) -> int:
        return len(self._held)

    def add(self, mapping: mmap.mmap, lease_id: int) -> None:
        with self._lock:
            self._held[lease_id] = weakref.ref(mapping)
            self._lease_of[id(mapping)] = lease_id
        weakref.finalize(mapping, self._dropped, id(mapping), lease_id)

    def release(self, mapping: mmap.mmap) -> None:
        """Give the lease behind `mapping` back now (its arrays must not be read again)."""
        with self._lock:
            lease_id = self._lease_of.get(id(mapping))
            if lease_id is None or self._held.pop(lease_id, None) is None:
                return
            del self._lease_of[id(mapping)]
        self._client.release(lease_id)

    def spill_oldest(self) -> bool:
        """Copy the oldest held batch out of the ring and give its slot back.

        False when nothing is held (what the daemon counts may be releases not yet sent).
        """
        with self._lock:
            for lease_id, ref in list(self._held.items()):
                mapping = ref()
                if mapping is None:
                    continue  # dying: its finalizer gives it back
                make_private(mapping)
                del self._held[lease_id]
                del self._lease_of[id(mapping)]
                self.spilled += 1
                break
            else:
                return False
        if self.spilled == 1:
            log.warning("vidring pipeline %r: the trainer holds every slot of the ring, so its "
                        "oldest batch is copied out before each new one; serve with more "
                        "--slots to keep batches zero-copy", self._client.name)
        self._client.release_spilled(lease_id)
        return True

    def _dropped(self, key: int, lease_id: int) -> None:
        # Runs in whichever thread dropped the last view; Client.release never blocks.
        with self._lock:
            if self._held.pop(lease_id, None) is None:
                return  # released or spilled already
            if self._lease_of.get(key) == lease_id:
                del self._lease_of[key]
        self._client.release(lease_id)
