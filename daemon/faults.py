"""Bad videos: failures in a row, retry delays, quarantine, and the error counts status shows.

A file that cannot be probed is quarantined at once (it will not decode
later), and so is one deleted or replaced since it was probed (it will not come
back in a few seconds; a replaced file's frames and keyframes are not the
probe's).  A clip that fails to decode, or whose worker dies under it, is
retried after `retry_delay_s`, then 4x that; a third failure in a row
quarantines its video for the daemon's lifetime.  A success resets the run.
Quarantined videos' samples get deterministic stand-ins (sampler.replacement).
"""

from __future__ import annotations

import collections
import logging

from vidring.loader.status import (
    MAX_REASON_CHARS,
    RECENT_QUARANTINED,
    ErrorSummary,
    FileError,
    printable,
)

log = logging.getLogger("vidring.daemon")

MAX_FAILURES_IN_A_ROW = 3
_BACKOFF = 4


class FaultLedger:
    def __init__(self, paths: list[str], retry_delay_s: float) -> None:
        self._paths = paths
        self.retry_delay_s = retry_delay_s
        self.quarantine: dict[int, str] = {}  # video -> reason
        self.error_count = 0
        self.last_error: FileError | None = None
        self.replaced_samples = 0
        self._in_a_row: dict[int, int] = {}
        # Status names only the last few: 2,000 missing files must still fit in one reply.
        self._recent: collections.deque[FileError] = collections.deque(maxlen=RECENT_QUARANTINED)

    def probe_failed(self, video: int, reason: str) -> None:
        self._record(video, f"probe: {reason}", quarantine=True)

    def left_out(self, video: int, reason: str) -> None:
        """Kept out of every plan (a short video under --short-policy skip): reported like
        a quarantined file, but no sample of it is ever planned or stood in for."""
        self._record(video, reason, quarantine=True)

    def clip_failed(self, video: int, reason: str, *, permanent: bool = False) -> float | None:
        """Seconds to wait before retrying the clip, or None: the video is quarantined now."""
        self._in_a_row[video] = failures = self._in_a_row.get(video, 0) + 1
        quarantine = permanent or failures >= MAX_FAILURES_IN_A_ROW
        self._record(video, reason, quarantine=quarantine)
        return None if quarantine else self.retry_delay_s * _BACKOFF ** (failures - 1)

    def clip_ok(self, video: int, *, replaced: bool) -> None:
        self._in_a_row.pop(video, None)
        self.replaced_samples += int(replaced)

    def _record(self, video: int, reason: str, *, quarantine: bool) -> None:
        path = printable(self._paths[video])
        self.error_count += 1
        self.last_error = FileError(path=path, reason=reason[:MAX_REASON_CHARS])
        if quarantine:
            self.quarantine[video] = reason
            self._recent.append(self.last_error)
            log.warning("quarantined %s: %s", path, reason)
        else:
            log.warning("will retry %s: %s", path, reason)

    def summary(self) -> ErrorSummary:
        return ErrorSummary(count=self.error_count, last=self.last_error,
                            quarantined=len(self.quarantine),
                            recent_quarantined=list(self._recent),
                            replaced_samples=self.replaced_samples)
