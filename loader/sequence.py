"""ClipDataset: a keras.utils.PyDataset whose batches are views of ring slots.

Batch semantics (DESIGN.md, "Batches, epochs and what Keras really does"):
the daemon fills plan batches in order; the first request for index i in an
epoch is served the next plan batch and remembered, a repeated request for i
returns the same plan batch.  So Keras's shuffled index order and its two
spec-inference calls never change what an epoch contains: every plan batch
exactly once.

Lifetime: each batch maps its slot separately, and the slot's lease is given
back when the last array viewing that mapping is garbage collected, at once
with ``release`` (after which the arrays must not be read), or by a spill when
the trainer holds every slot: the batch is then copied out of the ring in
place and its arrays stay valid (leases.py).
"""

from __future__ import annotations

import gc
import json
import mmap
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import keras
import numpy as np

from vidring.loader.client import (
    Client,
    DaemonUnavailable,
    RingExhausted,
    RingFull,
    VidringError,
)
from vidring.loader.epochs import EpochTracker
from vidring.loader.leases import HeldBatches
from vidring.loader.ring import Ring, RingLayout, SlotState, views_of

if TYPE_CHECKING:
    from collections.abc import Iterator

    from vidring.loader import protocol
    from vidring.loader.status import StatusRecord

# Asking again after a RingFull that found nothing to spill sends releases still queued.
_RETRIES_WITHOUT_SPILL = 5
_MISS_PAUSE_S = 0.05


@dataclass(frozen=True, slots=True)
class Sample:
    """Where one clip of a batch came from and how it was cut (README, "Provenance")."""

    video_index: int  # the manifest row decoded
    path: str  # its file
    frames: tuple[int, ...]  # frame indices in the video
    pts: tuple[int, ...]  # their presentation timestamps
    crop: tuple[int, int, int, int]  # y0, x0, h, w in pixels of the upright source frame
    rotation: int  # degrees counter-clockwise that made the source upright
    flip: bool  # flipped left to right after the crop
    replaced: bool  # the planned row failed and this one stood in
    planned_index: int  # the manifest row the plan asked for
    padding: bool  # only fills an evaluation pipeline's last batch
    weight: float  # its sample weight


@dataclass(frozen=True, slots=True)
class Batch:
    """One delivered batch; x, y, w and provenance all view the same slot."""

    x: np.ndarray
    y: np.ndarray
    w: np.ndarray  # sample weights: the manifest's `weight` column, 0 for padding
    provenance: np.ndarray
    epoch: int
    index: int
    plan_batch: int
    lease_id: int
    _paths: Callable[[Sequence[int]], list[str]]

    @property
    def sample_weight(self) -> np.ndarray:
        return self.w

    def samples(self) -> list[Sample]:
        """One record per clip of the batch, its file's path included."""
        prov = self.provenance
        paths = self._paths([int(v) for v in prov["video_index"]])
        return [Sample(int(p["video_index"]), path, tuple(int(f) for f in p["frames"]),
                       tuple(int(t) for t in p["pts"]),
                       (int(p["crop"][0]), int(p["crop"][1]), int(p["crop"][2]),
                        int(p["crop"][3])),
                       int(p["rotation"]), bool(p["flip"]), bool(p["replaced"]),
                       int(p["planned_index"]), bool(p["padding"]), float(w))
                for p, path, w in zip(prov, paths, self.w, strict=True)]


class ClipDataset(keras.utils.PyDataset):
    """The batches of a running vidring daemon, for ``model.fit`` and plain loops.

    Args:
        name: the pipeline name given to ``vidring serve --name``.
        timeout_s: a daemon that is gone or silent this long raises DaemonUnavailable.
        epoch: the plan epoch to start at.
        evaluation: read `epoch` on every pass (validation data, ``evaluate``), so
            every evaluation sees the same clips.
        shard, num_shards: read only plan batches shard, shard + num_shards, ... of
            each epoch, so `num_shards` processes of one host split one pipeline; the
            parts are disjoint and cover the epoch (their lengths differ by at most one
            batch).  See also ``from_input_context``.
        **kwargs: forwarded to PyDataset.  Keras's threads (``workers=N``) are
            fine; ``use_multiprocessing`` is refused (decoding already runs in
            the daemon's processes).

    How the epoch moves on is in epochs.py; pass ``callbacks=[ds.epoch_callback()]``
    to ``fit`` to make it Keras's own epoch (``initial_epoch``, BackupAndRestore).
    """

    def __init__(self, name: str, timeout_s: float = 10.0, *, epoch: int = 0,
                 evaluation: bool = False, shard: int = 0, num_shards: int = 1,
                 **kwargs: Any) -> None:
        if kwargs.get("use_multiprocessing"):
            # Batches already come from worker processes; a forked copy of this
            # object would share one ZeroMQ socket across processes.
            raise ValueError("ClipDataset: use_multiprocessing=True is not supported (and not "
                             "needed: the daemon's workers decode in parallel)")
        super().__init__(**kwargs)
        self.name = name
        self._client = Client(name, timeout_s=timeout_s)
        try:
            self.info = self._client.hello(shard, num_shards)
            self._ring = Ring.attach(self.info.status.segment)
        except BaseException:
            self._client.close()
            raise
        self.layout: RingLayout = self._ring.layout
        self._path_of: dict[int, str] = {}
        self._batches_per_epoch = self.info.batches
        self._held = HeldBatches(self._client)
        # An evaluation pipeline's batches do not depend on the epoch anyway.
        self.evaluation = evaluation or self.info.status.evaluation
        self._epochs = EpochTracker(self._batches_per_epoch, evaluation=self.evaluation)
        try:
            self.set_epoch(epoch)
        except ValueError:
            self.close()
            raise

    @classmethod
    def from_input_context(cls, name: str, input_context: Any = None,
                           **kwargs: Any) -> ClipDataset:
        """This process's part of pipeline `name` under tf.distribute: from a
        ``tf.distribute.InputContext`` (its input pipeline id and count), or, with none
        given, from ``TF_CONFIG`` (multi-worker training: the chief, then the workers)."""
        if input_context is not None:
            shard, num_shards = input_context.input_pipeline_id, input_context.num_input_pipelines
        else:
            shard, num_shards = shard_from_tf_config(os.environ.get("TF_CONFIG", ""))
        return cls(name, shard=shard, num_shards=num_shards, **kwargs)

    # -- PyDataset ----------------------------------------------------------

    def __len__(self) -> int:
        return self._batches_per_epoch

    def __getitem__(self, index: int) -> tuple[np.ndarray, ...]:
        """(x, y), or (x, y, sample_weight) when the manifest has a `weight` column or the
        pipeline evaluates (its last batch is padded: weight 0, so Keras's metrics are
        exactly those of the real clips)."""
        batch = self.batch(index)
        if self.info.status.evaluation or self.info.status.weights:
            return batch.x, batch.y, batch.w
        return batch.x, batch.y

    @property
    def class_names(self) -> list[str]:
        """The class names in label order (empty when the manifest's labels are numbers)."""
        return sorted(self.info.classes, key=self.info.classes.__getitem__)

    def paths(self, video_indices: Sequence[int]) -> list[str]:
        """The files of these manifest rows (asked of the daemon once, then remembered)."""
        missing = sorted({int(i) for i in video_indices} - self._path_of.keys())
        if missing:
            self._path_of.update(zip(missing, self._client.paths(missing), strict=True))
        return [self._path_of[int(i)] for i in video_indices]

    def on_epoch_begin(self) -> None:
        self._epochs.begin()

    def on_epoch_end(self) -> None:
        self._epochs.end()

    @property
    def epoch(self) -> int:
        """The plan epoch the next batch comes from."""
        return self._epochs.epoch

    def set_epoch(self, epoch: int) -> None:
        """Serve `epoch` next (resuming, or driving epochs by hand)."""
        self._epochs.set(int(epoch) if isinstance(epoch, np.integer) else epoch)

    def epoch_callback(self) -> EpochCallback:
        """A Keras callback for ``fit``: the plan epoch becomes Keras's epoch."""
        return EpochCallback(self._epochs)

    def __iter__(self) -> Iterator[tuple[np.ndarray, ...]]:
        """One epoch in index order; a loop that runs to the end moves on to the next epoch."""
        for index in range(len(self)):
            yield self[index]
        self._epochs.pass_done()

    # -- vidring ------------------------------------------------------------

    def batch(self, index: int) -> Batch:
        """Batch `index` of the current epoch with its provenance (zero copy)."""
        n = len(self)
        if not isinstance(index, (int, np.integer)):
            raise TypeError(f"batch index must be an int, got {type(index).__name__}")
        if index < 0:
            index += n
        if not 0 <= index < n:
            raise IndexError(f"batch index {index} out of range for {n} batches per epoch")
        lease = self._lease(int(index))
        slot, lease_id = lease.slot, lease.lease_id
        self._epochs.read(int(index))
        try:
            if lease.ring_id != self._ring.ring_id:
                raise DaemonUnavailable(
                    f"pipeline {self.name!r} was restarted (a new ring); create a new "
                    "ClipDataset to attach to it")
            state, epoch, plan_batch, fill_seq = self._ring.slot_state(slot)
            if (state != SlotState.LEASED or epoch != lease.epoch
                    or plan_batch != lease.plan_batch or fill_seq != lease.fill_seq):
                raise VidringError(
                    f"pipeline {self.name!r}: slot {slot} holds {state.name} epoch {epoch} "
                    f"batch {plan_batch}, but the lease says epoch {lease.epoch} batch "
                    f"{lease.plan_batch}: daemon and ring disagree"
                )
            slot_map = self._ring.map_slot(slot)
        except BaseException:
            self._client.release(lease_id)
            raise
        views = views_of(slot_map, 0, self.layout)
        self._held.add(slot_map, lease_id)
        return Batch(views.x, views.y, views.w, views.provenance, lease.epoch, int(index),
                     plan_batch, lease_id, self.paths)

    def _lease(self, index: int) -> protocol.Lease:
        # The daemon answers RingFull when this trainer holds every slot it could
        # fill: copy the oldest held batch out of the ring (a spill) and ask again.
        misses = 0
        while True:
            try:
                return self._client.get_batch(self.epoch, index)
            except RingFull:
                if self._held.spill_oldest():
                    continue
                misses += 1
                if misses > _RETRIES_WITHOUT_SPILL:
                    raise RingExhausted(
                        f"pipeline {self.name!r}: the ring stays full although this trainer "
                        "holds no batch it could give back") from None
                # Dead batches in cycles, or a lease another thread is about to record:
                # their releases or spills go before the next try.
                gc.collect()
                time.sleep(_MISS_PAUSE_S * misses)

    @property
    def spilled(self) -> int:
        """Batches this dataset copied out of the ring to free a slot (see README)."""
        return self._held.spilled

    def release(self, *arrays: np.ndarray | Batch) -> None:
        """Give the slots of these arrays or batches back now, before GC does."""
        for item in arrays:
            self._held.release(_mapping_of(item.x if isinstance(item, Batch) else item))

    def status(self) -> StatusRecord:
        """The daemon's status record (same as `vidring status NAME --json`)."""
        return self._client.status()

    def close(self) -> None:
        """Release every lease and disconnect.

        Arrays already returned stay mapped (no crash on access), but their slots
        go back to the daemon, which refills them: do not read them after close().
        """
        self._client.close()
        self._ring.close()

    def __enter__(self) -> ClipDataset:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class EpochCallback(keras.callbacks.Callback):
    """Sets a ClipDataset's plan epoch to Keras's epoch as each epoch of ``fit`` starts,
    before any batch of it is read (Keras calls callbacks first)."""

    def __init__(self, epochs: EpochTracker) -> None:
        super().__init__()
        self._epochs = epochs

    def on_epoch_begin(self, epoch: int, logs: Any = None) -> None:  # noqa: ARG002
        self._epochs.follow(epoch)


def shard_from_tf_config(text: str) -> tuple[int, int]:
    """(shard, num_shards) of this task in a TF_CONFIG: chief first, then the workers."""
    if not text:
        return 0, 1
    try:
        config = json.loads(text)
        cluster, task = config["cluster"], config["task"]
        chiefs, workers = len(cluster.get("chief", [])), len(cluster.get("worker", []))
        kind, index = task["type"], int(task["index"])
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"TF_CONFIG: {exc!r} in {text[:200]!r}") from None
    if kind == "chief":
        return index, chiefs + workers
    if kind == "worker":
        return chiefs + index, chiefs + workers
    raise ValueError(f"TF_CONFIG: task type {kind!r} reads no training data")


def _mapping_of(arr: np.ndarray) -> mmap.mmap:
    base: Any = arr
    while isinstance(base, np.ndarray):
        base = base.base
    if isinstance(base, memoryview):
        base = base.obj
    if not isinstance(base, mmap.mmap):
        raise TypeError("array is not a view of a vidring slot")
    return base
