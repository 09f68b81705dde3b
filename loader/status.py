"""The status record: what `vidring status --json` prints and `ClipDataset.status()` returns.

One frozen, versioned record, built in one place by the daemon.  Its size is
bounded whatever happens (the last few quarantined files, counts for the rest),
so it always fits in one message.  README.md lists these fields; a test keeps
that list equal to this file.
"""

from __future__ import annotations

from dataclasses import dataclass

STATUS_VERSION = 2
# How many quarantined files the record names; the count covers all of them.
RECENT_QUARANTINED = 20
# Longer error texts are cut to this, so one odd exception cannot swell the record.
MAX_REASON_CHARS = 500


def printable(text: str) -> str:
    """A file name for people and JSON: bytes that are not UTF-8 (Linux names are bytes,
    held by Python as surrogates) written as \\xNN."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


@dataclass(frozen=True, slots=True, kw_only=True)
class SlotCounts:
    total: int
    """Slots in the ring."""
    free: int
    """Slots that may be filled (a free slot may still hold a batch a repeat can use)."""
    filling: int
    """Slots whose clips are being decoded."""
    ready: int
    """Slots holding a complete batch nobody has leased yet: the queue depth."""
    leased: int
    """Slots the trainer holds."""


@dataclass(frozen=True, slots=True, kw_only=True)
class WorkerCounts:
    target: int
    """Workers wanted (`--workers`, `vidring scale`)."""
    alive: int
    """Worker processes running."""
    starting: int
    """Started, not yet ready for a clip."""
    idle: int
    """Ready and waiting for a clip."""
    busy: int
    """Decoding a clip."""
    stopping: int
    """Asked to exit (scaled down or killed after a stalled decode)."""
    backoff: int
    """Waiting to be started again after failing to start or crashing at once."""
    fatal: int
    """Given up on after failing to start too often; `vidring scale` tries them again."""
    restarts: int
    """Unplanned worker exits, and workers killed for a stalled decode or for not answering."""
    recycled: int
    """Workers retired after --worker-max-clips clips and replaced (planned, not failures)."""
    last_error: str
    """Why a worker last failed to start or died ('' if none has)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class FileError:
    path: str
    """The video file."""
    reason: str
    """What went wrong, as the probe or the decoder said it."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ErrorSummary:
    count: int
    """Failed probes and clip decodes since the daemon started."""
    last: FileError | None
    """The most recent failure."""
    quarantined: int
    """Videos quarantined (never decoded again by this daemon)."""
    recent_quarantined: list[FileError]
    """The last few quarantined videos, newest last."""
    replaced_samples: int
    """Samples served from a stand-in video because theirs was quarantined."""


@dataclass(frozen=True, slots=True, kw_only=True)
class StatusRecord:
    version: int
    """Layout version of this record (STATUS_VERSION)."""
    name: str
    """The pipeline name."""
    pid: int
    """The daemon's process id."""
    phase: str
    """'probing' while the daemon reads its videos (most counts are 0 until then), 'serving'."""
    probed: int
    """Videos probed so far."""
    epoch: int
    """The epoch the trainer is reading."""
    batches_per_epoch: int
    """Batches in one epoch of the pipeline (a ClipDataset shard reads its part of them)."""
    batch_shape: tuple[int, ...]
    """Shape of `x`: (batch, frames, height, width, 3)."""
    dtype: str
    """Element type of `x`."""
    sampler: str
    """Where clips lie in their videos: random, uniform or segments."""
    clips_per_video: int
    """Clips of each video per epoch."""
    evaluation: bool
    """Every video in manifest order, the same each epoch, the last batch padded (weight 0)."""
    preprocess: str
    """Resize, crop, flip, filter and normalisation of the frames, in words."""
    labels: str
    """What labels become: index (int32 (B,)), onehot, multi (multi-hot) or regression."""
    label_shape: tuple[int, ...]
    """Shape of `y`."""
    weights: bool
    """The manifest gives sample weights: a ClipDataset yields (x, y, weight)."""
    slots: SlotCounts
    """The ring's slots by state."""
    workers: WorkerCounts
    """The decoder workers by state."""
    clips_per_s: float
    """Clips decoded per second over the last 5 s."""
    clips_total: int
    """Clips decoded since the daemon started."""
    errors: ErrorSummary
    """Failures and quarantined videos."""
    videos: int
    """Rows of the manifest."""
    classes: int
    """Distinct class names (0 when labels are integers); the names are in hello."""
    manifest: str
    """The manifest file or folder."""
    segment: str
    """The ring's shared-memory segment under /dev/shm."""
    ring_mib: float
    """Size of the ring in MiB."""
    clients: int
    """Connected trainers and command-line tools."""
    spilled: int
    """Batches trainers copied out of the ring to free a slot (more --slots avoids it)."""
    waiting_requests: int
    """Batch requests waiting for their batch."""
    queued_clips: int
    """Clips waiting for a free worker, retries included."""
    uptime_s: float
    """Seconds since the daemon started."""
