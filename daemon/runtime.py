"""A pipeline's place on this machine: its owner-only folder, its lock, its socket paths.

Claimed once when a daemon starts, released once when it stops; every path a
daemon binds or removes comes from here.
"""

from __future__ import annotations

import fcntl
import logging
import os
import stat
import time
from typing import IO, TYPE_CHECKING

from vidring.loader import paths

if TYPE_CHECKING:
    from pathlib import Path


log = logging.getLogger("vidring.daemon")


class StartupError(Exception):
    """The pipeline cannot start; the message says what to fix."""


class RuntimeDir:
    def __init__(self, name: str, folder: Path, lock_path: Path, lock_file: IO[str]) -> None:
        self.name = name
        self.folder = folder
        self._lock_path = lock_path
        self._lock_file: IO[str] | None = lock_file

    @classmethod
    def claim(cls, name: str) -> RuntimeDir:
        """Make the folder (0700) and take the lock; StartupError if another daemon has it."""
        root = paths.runtime_root()
        _own_folder(root)
        folder = root / paths.check_name(name)
        lock_path = paths.lock_path(name)
        lock_file = _lock(name, lock_path)
        try:
            _own_folder(folder)
        except StartupError:
            lock_path.unlink(missing_ok=True)  # still ours: nobody else can hold it now
            lock_file.close()
            raise
        runtime = cls(name, folder, lock_path, lock_file)
        runtime._remove_sockets()  # left by a daemon killed with -9
        return runtime

    @property
    def control_endpoint(self) -> str:
        return f"ipc://{self.folder / paths.CONTROL_SOCKET}"

    @property
    def work_endpoint(self) -> str:
        return f"ipc://{self.folder / paths.WORK_SOCKET}"

    @property
    def stats_endpoint(self) -> str:
        return f"ipc://{self.folder / paths.STATS_SOCKET}"

    @classmethod
    def clear_stale(cls, name: str) -> bool:
        """Remove what a daemon killed with -9 left (sockets, folder, lock); False if a
        daemon of this name is running.  The caller unlinks its ring segment."""
        try:
            runtime = cls.claim(name)
        except StartupError:
            return False
        runtime.release()
        return True

    def release(self) -> None:
        """Remove the sockets, the folder and the lock file, then unlock."""
        if self._lock_file is None:
            return
        self._remove_sockets()
        self._lock_path.unlink(missing_ok=True)
        try:
            self.folder.rmdir()
        except OSError:
            pass  # something else was put there: leave it
        self._lock_file.close()
        self._lock_file = None

    def _remove_sockets(self) -> None:
        for sock in (paths.CONTROL_SOCKET, paths.WORK_SOCKET, paths.STATS_SOCKET):
            (self.folder / sock).unlink(missing_ok=True)


def _own_folder(folder: Path) -> None:
    """Make `folder` (0700), or check that the one there is this user's: one of another
    user is refused (they could serve batches in our name); our own with a wider mode
    is narrowed, and the log says so."""
    folder.mkdir(mode=0o700, exist_ok=True)
    st = os.lstat(folder)
    if st.st_uid != os.getuid() or not stat.S_ISDIR(st.st_mode):
        raise StartupError(f"runtime folder {folder} {paths.distrust(folder, folder=True)}: "
                           "remove it, or set VIDRING_RUNTIME_DIR to a folder of your own")
    if stat.S_IMODE(st.st_mode) & 0o077:
        os.chmod(folder, 0o700)
        log.warning("runtime folder %s had mode %04o: made it 0700", folder,
                    stat.S_IMODE(st.st_mode))


# A client checking whether a daemon is alive holds a shared lock for microseconds
# (paths.daemon_running): a start that meets one tries again rather than fail.
_LOCK_PATIENCE_S = 0.5


def _flock_soon(lock_file: IO[str]) -> bool:
    deadline = time.monotonic() + _LOCK_PATIENCE_S
    while True:
        try:
            fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.01)


def _lock(name: str, lock_path: Path) -> IO[str]:
    while True:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        if os.fstat(fd).st_uid != os.getuid():  # /dev/shm is world-writable
            os.close(fd)
            raise StartupError(f"lock file {lock_path} belongs to another user")
        lock_file = os.fdopen(fd, "r+")
        if not _flock_soon(lock_file):
            holder = lock_file.read().strip() or "?"
            lock_file.close()
            raise StartupError(f"pipeline {name!r} is already served (pid {holder}); "
                               f"stop it with `vidring stop {name}`")
        try:
            if os.stat(lock_path).st_ino == os.fstat(fd).st_ino:
                break
        except FileNotFoundError:
            pass
        lock_file.close()  # a stopping daemon unlinked it under us: lock the new file
    lock_file.truncate(0)
    lock_file.write(f"{os.getpid()}\n")
    lock_file.flush()
    return lock_file
