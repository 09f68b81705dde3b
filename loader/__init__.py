"""vidring.loader: everything the trainer process imports.

``ClipDataset`` pulls in Keras, so it is imported on first use; the daemon
and its workers import the rest of this package without paying for Keras.
"""

from typing import Any

from vidring.loader.client import (
    Client,
    DaemonError,
    DaemonUnavailable,
    LeaseExpired,
    RingExhausted,
    UntrustedPipeline,
    VidringError,
)
from vidring.loader.ring import Ring, RingError, RingLayout, SlotState, provenance_dtype
from vidring.loader.status import StatusRecord

__all__ = [
    "Batch",
    "Client",
    "ClipDataset",
    "DaemonError",
    "DaemonUnavailable",
    "LeaseExpired",
    "Ring",
    "RingError",
    "RingExhausted",
    "RingLayout",
    "Sample",
    "SlotState",
    "StatusRecord",
    "UntrustedPipeline",
    "VidringError",
    "provenance_dtype",
]


def __getattr__(name: str) -> Any:
    if name in ("ClipDataset", "Batch", "Sample"):
        from vidring.loader import sequence

        return getattr(sequence, name)
    raise AttributeError(f"module 'vidring.loader' has no attribute {name!r}")
