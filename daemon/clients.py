"""The daemon's clients: who they are, when each was last heard, what became of its leases.

A lease is never taken from a live trainer.  A client whose pid the daemon can
see (the same pid namespace) keeps its leases until its process is gone, however
long it is silent (SIGSTOP, a debugger, a long pause).  A client in another pid
namespace cannot be seen: after `lease_timeout_s` of silence its leases are
taken back, and its next request is answered with E_LEASE_EXPIRED naming the
batches, so the loss is never silent.
"""

from __future__ import annotations

import collections
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

from vidring.loader.client import pid_alive

if TYPE_CHECKING:
    from collections.abc import Callable

    from vidring.daemon.schedule import Key

log = logging.getLogger("vidring.daemon")

# Forget a client with no leases after this much silence (the CLI, a closed trainer).
IDLE_CLIENT_S = 10.0
# Expiry notices kept for clients that have not asked again yet.
_MAX_NOTICES = 1000


@dataclass(slots=True)
class ClientRecord:
    pid: int | None = None  # None: in another pid namespace (or never said hello)
    last_seen: float = 0.0
    spilled: int = 0  # batches it copied out of the ring to free a slot


class Clients:
    def __init__(self, lease_timeout_s: float, *,
                 alive: Callable[[int], bool] = pid_alive) -> None:
        self._lease_timeout_s = lease_timeout_s
        self._alive = alive
        self._records: dict[bytes, ClientRecord] = {}
        self._notices: collections.OrderedDict[bytes, str] = collections.OrderedDict()
        self.spilled_total = 0

    def __len__(self) -> int:
        return len(self._records)

    def seen(self, identity: bytes, now: float) -> ClientRecord:
        record = self._records.setdefault(identity, ClientRecord())
        record.last_seen = now
        return record

    def forget(self, identity: bytes) -> None:
        self._records.pop(identity, None)

    def sweep(self, now: float, held_by: Callable[[bytes], int]) -> tuple[list[bytes], list[bytes]]:
        """(clients to forget, clients whose leases expire now)."""
        forget, expire = [], []
        for identity, client in self._records.items():
            silent_s = now - client.last_seen
            held = held_by(identity)
            if client.pid is not None and not self._alive(client.pid):
                if held:
                    log.info("client pid %d exited: releasing %d leases", client.pid, held)
                forget.append(identity)
            elif not held:
                # A trainer whose process lives is kept (with its epoch's index map), however
                # long it pauses; only the CLI and clients that cannot be seen are forgotten.
                if client.pid is None and silent_s > IDLE_CLIENT_S:
                    forget.append(identity)
            elif client.pid is None and silent_s > self._lease_timeout_s:
                expire.append(identity)
        return forget, expire

    def leases_expired(self, identity: bytes, keys: list[Key], silent_s: float) -> None:
        batches = ", ".join(f"epoch {e} batch {b}" for e, b in sorted(keys))
        text = (f"leases on {batches} were taken back after {silent_s:.0f} s of silence "
                "(--lease-timeout-s; your process is in another pid namespace, so the daemon "
                "cannot see that it is alive): arrays of those batches may have been "
                "overwritten since")
        log.warning("client %r: %s", identity, text)
        self._notices[identity] = text
        while len(self._notices) > _MAX_NOTICES:
            self._notices.popitem(last=False)

    def take_notice(self, identity: bytes) -> str | None:
        """Why this client's leases were taken back, once; None if they were not."""
        return self._notices.pop(identity, None)

    def silent_s(self, identity: bytes, now: float) -> float:
        return now - self._records[identity].last_seen

    def record(self, identity: bytes) -> ClientRecord:
        return self._records[identity]

    def spilled(self, identity: bytes, batches: int) -> None:
        record = self._records[identity]
        if not self.spilled_total:
            log.warning("a trainer holds every slot of the ring, so it copies its oldest batch "
                        "out (a spill) before each new one: serve with more --slots to keep "
                        "batches zero-copy")
        record.spilled += batches
        self.spilled_total += batches
