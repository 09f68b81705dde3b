"""The shared-memory ring: header, layout math, create / attach / close / unlink.

One POSIX segment per pipeline, named ``vidring-<uid>-<name>``, mode 0600::

    [ header (4 KiB): magic, version, layout, per-slot state table ]
    [ slot 0 ][ slot 1 ] ... [ slot S-1 ]          each slot page-aligned
    slot = [ x (B,T,H,W,C) ][ y ][ w (B,) float32 ][ provenance (B,) records ]
           each 64-byte aligned; y is (B,) int32 class indices, or (B, K) float32
           (one-hot, multi-hot or regression targets) when the layout's y_width is K

The daemon alone writes the state table; workers write pixels into the places
they are told; the trainer only reads.  Nobody here registers with
multiprocessing's resource tracker: in Python 3.11 the tracker unlinks every
segment a process attached when that process exits (cpython gh-82300), which
would pull the ring from under the daemon when a trainer exits.
"""

from __future__ import annotations

import enum
import functools
import math
import mmap
import os
import stat
import struct
from dataclasses import dataclass

import numpy as np

try:  # the C module behind multiprocessing.shared_memory
    import _posixshmem
except ImportError as exc:  # pragma: no cover - non-POSIX platforms
    raise ImportError("vidring needs POSIX shared memory (Linux)") from exc

MAGIC = b"VIDRING\x00"
LAYOUT_VERSION = 3
PAGE_BYTES = mmap.PAGESIZE
ALIGN_BYTES = 64
HEADER_BYTES = 4096
MAX_SLOTS = (HEADER_BYTES - 128) // 32

DTYPES = {"uint8": 0, "float32": 1, "float16": 2}
DTYPE_NAMES = {code: name for name, code in DTYPES.items()}


@functools.lru_cache(maxsize=8)
def provenance_dtype(clip_length: int) -> np.dtype:
    """Per-sample provenance: where each clip of a batch came from and how it was cut."""
    return np.dtype([
        ("video_index", "<i4"),  # row of the manifest actually decoded
        ("planned_index", "<i4"),  # row the epoch plan asked for
        ("frames", "<i4", (clip_length,)),  # frame indices in the video, in order
        ("pts", "<i8", (clip_length,)),  # and their presentation timestamps
        ("crop", "<i4", (4,)),  # y0, x0, h, w in pixels of the upright source frame
        ("rotation", "<i2"),  # degrees counter-clockwise that made the frames upright
        ("flip", "u1"),  # 1 when flipped left to right after the crop
        ("replaced", "u1"),  # 1 when planned_index failed and video_index stood in
        ("padding", "u1"),  # 1 when it only fills an evaluation pipeline's last batch
        ("_pad", "u1"),
    ])


# magic, version, slot_count, slot_bytes, data_offset, B, T, H, W, C, dtype,
# x_offset, y_offset, prov_offset, ring_id, y_width, pad, w_offset
_HEADER = struct.Struct("<8sIIQQIIIIIIQQQQIIQ")
_SLOT_TABLE_OFFSET = 128
# state, pad, epoch, plan_batch, fill_seq
_SLOT_ENTRY = struct.Struct("<IIqqQ")


class SlotState(enum.IntEnum):
    """Slot life cycle: FREE -> FILLING -> READY -> LEASED -> FREE (daemon-owned)."""

    FREE = 0
    FILLING = 1
    READY = 2
    LEASED = 3


class RingError(Exception):
    """The ring segment is missing, foreign, or cannot be created."""


def _align(n: int, to: int) -> int:
    return (n + to - 1) // to * to


def segment_name(name: str) -> str:
    return f"vidring-{os.getuid()}-{name}"


@dataclass(frozen=True, slots=True)
class RingLayout:
    """Shapes and byte offsets of one ring; a pure function of its arguments."""

    slot_count: int
    batch_size: int
    clip_length: int
    height: int
    width: int
    dtype: str = "uint8"
    channels: int = 3
    y_width: int = 0  # 0: y is (B,) int32; K: y is (B, K) float32

    def __post_init__(self) -> None:
        if not isinstance(self.y_width, int) or self.y_width < 0:
            raise ValueError(f"ring layout: y_width must be an int >= 0, got {self.y_width!r}")
        for name in ("slot_count", "batch_size", "clip_length", "height", "width", "channels"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"ring layout: {name} must be a positive int, got {value!r}")
        if self.slot_count > MAX_SLOTS:
            raise ValueError(f"ring layout: slot_count {self.slot_count} exceeds {MAX_SLOTS}")
        if self.dtype not in DTYPES:
            raise ValueError(
                f"ring layout: dtype must be one of {sorted(DTYPES)}, got {self.dtype!r}")

    @property
    def x_shape(self) -> tuple[int, int, int, int, int]:
        return (self.batch_size, self.clip_length, self.height, self.width, self.channels)

    @property
    def np_dtype(self) -> np.dtype:
        return np.dtype(self.dtype)

    @property
    def y_shape(self) -> tuple[int, ...]:
        return (self.batch_size, self.y_width) if self.y_width else (self.batch_size,)

    @property
    def y_dtype(self) -> np.dtype:
        return np.dtype("<f4" if self.y_width else "<i4")

    @property
    def provenance_dtype(self) -> np.dtype:
        return provenance_dtype(self.clip_length)

    @property
    def sample_bytes(self) -> int:
        return _sizes(self)[0]

    @property
    def x_bytes(self) -> int:
        return self.batch_size * self.sample_bytes

    @property
    def x_offset(self) -> int:
        return 0

    @property
    def y_offset(self) -> int:
        return _sizes(self)[1]

    @property
    def w_offset(self) -> int:
        return _sizes(self)[2]

    @property
    def prov_offset(self) -> int:
        return _sizes(self)[3]

    @property
    def slot_bytes(self) -> int:
        return _sizes(self)[4]

    @property
    def data_offset(self) -> int:
        return HEADER_BYTES

    @property
    def total_bytes(self) -> int:
        return self.data_offset + self.slot_count * self.slot_bytes

    def slot_offset(self, slot: int) -> int:
        if not 0 <= slot < self.slot_count:
            raise IndexError(f"slot {slot} out of range 0..{self.slot_count - 1}")
        return self.data_offset + slot * self.slot_bytes

    def sample_offset(self, slot: int, position: int) -> int:
        """Byte offset in the segment of clip `position` of `slot`'s x array."""
        if not 0 <= position < self.batch_size:
            raise IndexError(f"position {position} out of range 0..{self.batch_size - 1}")
        return self.slot_offset(slot) + self.x_offset + position * self.sample_bytes


# A slot's views are built for every clip, by the daemon, the workers and the trainer:
# the sizes they need are worked out once per layout.
@functools.lru_cache(maxsize=16)
def _sizes(layout: RingLayout) -> tuple[int, int, int, int, int]:
    """(sample_bytes, y_offset, w_offset, prov_offset, slot_bytes) of `layout`."""
    sample_bytes = (layout.clip_length * layout.height * layout.width * layout.channels
                    * layout.np_dtype.itemsize)
    y_offset = _align(layout.x_offset + layout.batch_size * sample_bytes, ALIGN_BYTES)
    w_offset = _align(y_offset + layout.y_dtype.itemsize * math.prod(layout.y_shape),
                      ALIGN_BYTES)
    prov_offset = _align(w_offset + 4 * layout.batch_size, ALIGN_BYTES)
    # Page-aligned so one slot can be mapped on its own (see Ring.map_slot).
    slot_bytes = _align(prov_offset + layout.provenance_dtype.itemsize * layout.batch_size,
                        PAGE_BYTES)
    return sample_bytes, y_offset, w_offset, prov_offset, slot_bytes


@dataclass(frozen=True, slots=True)
class SlotViews:
    """numpy views of one slot; they keep the mapping they view alive."""

    x: np.ndarray
    y: np.ndarray
    w: np.ndarray  # sample weights
    provenance: np.ndarray


def views_of(buffer: mmap.mmap | memoryview, base_offset: int, layout: RingLayout) -> SlotViews:
    """x, y and provenance arrays over `buffer` starting at `base_offset` (no copy)."""
    x = np.frombuffer(
        buffer, dtype=layout.np_dtype, count=math.prod(layout.x_shape),
        offset=base_offset + layout.x_offset,
    ).reshape(layout.x_shape)
    y = np.frombuffer(buffer, dtype=layout.y_dtype, count=math.prod(layout.y_shape),
                      offset=base_offset + layout.y_offset).reshape(layout.y_shape)
    w = np.frombuffer(buffer, dtype="<f4", count=layout.batch_size,
                      offset=base_offset + layout.w_offset)
    prov = np.frombuffer(
        buffer, dtype=layout.provenance_dtype, count=layout.batch_size,
        offset=base_offset + layout.prov_offset,
    )
    return SlotViews(x, y, w, prov)


class Ring:
    """One ring segment: owns its fd and mapping for the whole of its life."""

    def __init__(self, name: str, fd: int, mm: mmap.mmap, layout: RingLayout,
                 ring_id: int) -> None:
        self.name = name
        self.layout = layout
        self.ring_id = ring_id
        self._fd = fd
        self._inode = os.fstat(fd).st_ino
        self._mm: mmap.mmap | None = mm

    # -- life cycle -------------------------------------------------------

    @classmethod
    def create(cls, name: str, layout: RingLayout, *, replace_stale: bool = True) -> Ring:
        """Create, reserve and initialise the segment `name`.

        The memory is reserved up front with posix_fallocate so a full /dev/shm
        is an error here, not a SIGBUS in the middle of an epoch.
        """
        if replace_stale:
            unlink(name)
        flags = os.O_CREAT | os.O_EXCL | os.O_RDWR
        try:
            fd = _posixshmem.shm_open("/" + name, flags, mode=0o600)
        except FileExistsError as exc:
            raise RingError(f"ring segment {name!r} already exists") from exc
        try:
            os.fchmod(fd, 0o600)  # umask cannot widen it, but be explicit
            try:
                os.posix_fallocate(fd, 0, layout.total_bytes)
            except OSError as exc:
                free = _shm_free_bytes()
                raise RingError(
                    f"cannot reserve {layout.total_bytes / 2**20:.1f} MiB for ring {name!r} "
                    f"in /dev/shm ({exc.strerror}; {free / 2**20:.1f} MiB free): "
                    "use fewer --slots, a smaller batch, or a larger /dev/shm"
                ) from exc
            mm = mmap.mmap(fd, layout.total_bytes)
        except BaseException:
            os.close(fd)
            _posixshmem.shm_unlink("/" + name)
            raise
        ring_id = int.from_bytes(os.urandom(8), "little") >> 1
        _HEADER.pack_into(
            mm, 0, MAGIC, LAYOUT_VERSION, layout.slot_count, layout.slot_bytes,
            layout.data_offset, layout.batch_size, layout.clip_length, layout.height,
            layout.width, layout.channels, DTYPES[layout.dtype], layout.x_offset,
            layout.y_offset, layout.prov_offset, ring_id, layout.y_width, 0, layout.w_offset,
        )
        ring = cls(name, fd, mm, layout, ring_id)
        for slot in range(layout.slot_count):
            ring.set_slot_state(slot, SlotState.FREE, epoch=-1, plan_batch=-1, fill_seq=0)
        return ring

    @classmethod
    def attach(cls, name: str, *, writable: bool = False) -> Ring:
        """Map an existing segment read-only (trainer) or writable (workers)."""
        flags = os.O_RDWR if writable else os.O_RDONLY
        try:
            fd = _posixshmem.shm_open("/" + name, flags, mode=0o600)
        except FileNotFoundError as exc:
            raise RingError(f"no ring segment {name!r} in /dev/shm") from exc
        try:
            st = os.fstat(fd)
            if st.st_uid != os.getuid() or stat.S_IMODE(st.st_mode) & 0o077:
                raise RingError(
                    f"ring segment {name!r} belongs to uid {st.st_uid} with mode "
                    f"{stat.S_IMODE(st.st_mode):04o}: only this user's own (0600) is trusted")
            size = st.st_size
            if size < HEADER_BYTES:
                raise RingError(f"ring segment {name!r} is {size} bytes: too small for a header")
            access = mmap.ACCESS_WRITE if writable else mmap.ACCESS_READ
            mm = mmap.mmap(fd, size, access=access)
            fields = _HEADER.unpack_from(mm, 0)
            if fields[0] != MAGIC:
                raise RingError(f"segment {name!r} is not a vidring ring (bad magic)")
            if fields[1] != LAYOUT_VERSION:
                raise RingError(
                    f"ring {name!r} has layout version {fields[1]}, this vidring reads "
                    f"{LAYOUT_VERSION}: upgrade the trainer and daemon together"
                )
            (_, _, slots, slot_bytes, data_offset, b, t, h, w, c, dtype_code, xo, yo, po,
             ring_id, y_width, _, wo) = fields
            layout = RingLayout(slots, b, t, h, w, DTYPE_NAMES[dtype_code], c, y_width)
            expected = (layout.slot_bytes, layout.data_offset, layout.x_offset,
                        layout.y_offset, layout.w_offset, layout.prov_offset)
            if (slot_bytes, data_offset, xo, yo, wo, po) != expected or size < layout.total_bytes:
                raise RingError(f"ring {name!r} header disagrees with its layout math")
        except BaseException:
            os.close(fd)
            raise
        return cls(name, fd, mm, layout, ring_id)

    def close(self) -> None:
        """Drop this process's mapping; views already handed out stay valid."""
        if self._mm is None:
            return
        try:
            self._mm.close()
        except BufferError:
            # numpy views still point into it; the mmap is freed with the last one.
            pass
        self._mm = None
        os.close(self._fd)

    def unlink(self) -> None:
        """Remove the segment's name, unless it now names another ring (a newer daemon's)."""
        try:
            if os.stat(f"/dev/shm/{self.name}").st_ino != self._inode:
                return
        except FileNotFoundError:
            return
        unlink(self.name)

    def __enter__(self) -> Ring:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- access -----------------------------------------------------------

    @property
    def buffer(self) -> mmap.mmap:
        if self._mm is None:
            raise RingError(f"ring {self.name!r} is closed")
        return self._mm

    def views(self, slot: int) -> SlotViews:
        """Views of `slot` in this process's whole-segment mapping."""
        return views_of(self.buffer, self.layout.slot_offset(slot), self.layout)

    def map_slot(self, slot: int) -> mmap.mmap:
        """A separate read-only mapping of one slot.

        Arrays made from it keep *this* object alive and nothing else, so a
        weakref.finalize on it fires exactly when the trainer drops the last
        array viewing the slot.
        """
        return mmap.mmap(self._fd, self.layout.slot_bytes, access=mmap.ACCESS_READ,
                         offset=self.layout.slot_offset(slot))

    def sample_array(self, slot: int, position: int) -> np.ndarray:
        """Writable (T, H, W, C) view of one clip's place in a slot (workers)."""
        lay = self.layout
        return np.frombuffer(
            self.buffer, dtype=lay.np_dtype, count=lay.sample_bytes // lay.np_dtype.itemsize,
            offset=lay.sample_offset(slot, position),
        ).reshape(lay.x_shape[1:])

    def slot_state(self, slot: int) -> tuple[SlotState, int, int, int]:
        """(state, epoch, plan_batch, fill_seq) of `slot` from the header table."""
        self.layout.slot_offset(slot)
        state, _, epoch, plan_batch, fill_seq = _SLOT_ENTRY.unpack_from(
            self.buffer, _SLOT_TABLE_OFFSET + slot * _SLOT_ENTRY.size)
        return SlotState(state), epoch, plan_batch, fill_seq

    def set_slot_state(self, slot: int, state: SlotState, *, epoch: int, plan_batch: int,
                       fill_seq: int) -> None:
        self.layout.slot_offset(slot)
        _SLOT_ENTRY.pack_into(self.buffer, _SLOT_TABLE_OFFSET + slot * _SLOT_ENTRY.size,
                              int(state), 0, epoch, plan_batch, fill_seq)


def unlink(name: str) -> bool:
    """Remove segment `name` if it exists; True if it did."""
    try:
        _posixshmem.shm_unlink("/" + name)
    except FileNotFoundError:
        return False
    return True


def _shm_free_bytes() -> int:
    try:
        st = os.statvfs("/dev/shm")
    except OSError:
        return 0
    return st.f_bavail * st.f_frsize
