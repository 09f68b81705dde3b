"""Spill: move a slot mapping's pages out of the ring, in place, keeping every view valid.

Arrays handed to the trainer point into a per-lease mapping of one slot.  To
give the slot back while those arrays live on, the mapping's pages are
replaced under the same addresses by a private copy:

 1. map anonymous private memory somewhere else and copy the slot into it
    (the lease is still held, so the daemon cannot change the slot meanwhile);
 2. make it read-only, like the slot mapping;
 3. mremap(MREMAP_FIXED) it over the slot mapping's addresses: the kernel
    swaps the pages in one step, so a thread reading the arrays at that moment
    sees the same bytes before and after.

Then the lease can go back.  The Python mmap object still owns the address
range and unmaps it (now the private copy) when the last array dies.
Linux only, like the rest of the ring.
"""

from __future__ import annotations

import ctypes
import mmap
import os

import numpy as np

_MREMAP_MAYMOVE = 1
_MREMAP_FIXED = 2
_MAP_FAILED = ctypes.c_void_p(-1).value

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                       ctypes.c_int, ctypes.c_long]
_libc.mremap.restype = ctypes.c_void_p
_libc.mremap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_size_t, ctypes.c_int,
                         ctypes.c_void_p]
_libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
_libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]


def address_of(mapping: mmap.mmap) -> int:
    """Where `mapping`'s first byte lies in this process."""
    view = np.frombuffer(mapping, dtype=np.uint8, count=1)
    return int(view.ctypes.data)


def make_private(mapping: mmap.mmap) -> None:
    """Replace the pages behind `mapping` by a private read-only copy, at the same address."""
    size = -(-len(mapping) // mmap.PAGESIZE) * mmap.PAGESIZE
    target = address_of(mapping)
    copy = _libc.mmap(None, size, mmap.PROT_READ | mmap.PROT_WRITE,
                      mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS, -1, 0)
    if copy in (None, _MAP_FAILED):
        _raise("mmap")
    try:
        ctypes.memmove(copy, target, len(mapping))
        if _libc.mprotect(copy, size, mmap.PROT_READ) != 0:
            _raise("mprotect")
        moved = _libc.mremap(copy, size, size, _MREMAP_MAYMOVE | _MREMAP_FIXED, target)
        if moved in (None, _MAP_FAILED):
            _raise("mremap")
    except BaseException:
        _libc.munmap(copy, size)
        raise


def _raise(call: str) -> None:
    err = ctypes.get_errno()
    raise OSError(err, f"spilling a batch out of the ring: {call}: {os.strerror(err)}")
