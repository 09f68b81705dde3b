"""Where a pipeline's control sockets and lock live on this machine."""

from __future__ import annotations

import fcntl
import os
import re
import stat
from pathlib import Path

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,47}$")
# The sockets inside a pipeline's folder.
CONTROL_SOCKET = "control.sock"  # trainers and the CLI
WORK_SOCKET = "work.sock"  # decoder workers
STATS_SOCKET = "stats.sock"  # live statistics, published (`vidring top`)


def check_name(name: str) -> str:
    """A pipeline name becomes a path and a segment name: keep it plain."""
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise ValueError(
            f"pipeline name {name!r}: use 1-48 letters, digits, '_', '.' or '-', "
            "starting with a letter or digit"
        )
    return name


def runtime_roots() -> list[Path]:
    """Where pipelines of this user may live, the preferred one first.

    VIDRING_RUNTIME_DIR overrides; else $XDG_RUNTIME_DIR/vidring (a login
    session or a systemd --user unit), else /tmp/vidring-UID (a system
    service has no XDG_RUNTIME_DIR).  Clients look in all of them, so a
    trainer in a login shell finds a daemon started by systemd.
    """
    override = os.environ.get("VIDRING_RUNTIME_DIR")
    if override:
        return [Path(override)]
    roots = []
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    if xdg and os.path.isdir(xdg) and os.access(xdg, os.W_OK):
        roots.append(Path(xdg) / "vidring")
    roots.append(Path(f"/tmp/vidring-{os.getuid()}"))
    return roots


def runtime_root() -> Path:
    """The folder a daemon started here creates its pipeline folder in."""
    return runtime_roots()[0]


def runtime_dir(name: str) -> Path:
    """The pipeline's folder: the one holding its socket if any, else the preferred one."""
    check_name(name)
    roots = runtime_roots()
    for root in roots:
        if (root / name / CONTROL_SOCKET).exists():
            return root / name
    return roots[0] / name


def control_socket_path(name: str) -> Path:
    return runtime_dir(name) / CONTROL_SOCKET


def distrust(path: Path, *, folder: bool) -> str:
    """Why `path` cannot be trusted to be this user's own (empty if it can): it must be
    ours, not a symlink, and a folder must be 0700 (another user who could write in it
    could put a socket of theirs there)."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return f"{path} does not exist"
    if st.st_uid != os.getuid():
        return f"{path} belongs to uid {st.st_uid}, not to this user (uid {os.getuid()})"
    if stat.S_ISLNK(st.st_mode):
        return f"{path} is a symbolic link"
    if folder and (not stat.S_ISDIR(st.st_mode) or stat.S_IMODE(st.st_mode) & 0o077):
        return f"{path} has mode {stat.S_IMODE(st.st_mode):04o}, not 0700"
    return ""


def lock_path(name: str) -> Path:
    """The lock that stops a second daemon of this name.  It sits beside the segment it
    guards, so two daemons of one name conflict whatever their XDG_RUNTIME_DIR; no
    segment name starts with "vidring.lock", so no pipeline name can make it collide."""
    return Path(f"/dev/shm/vidring.lock-{os.getuid()}-{check_name(name)}")


def daemon_running(name: str) -> bool:
    """Whether a daemon of this name holds its lock (starting, serving or stopping).  The
    kernel drops an flock with its holder, so a daemon killed with -9 is seen at once,
    whatever pid namespace it ran in."""
    try:
        fd = os.open(lock_path(name), os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # drops the shared lock if we got it
    return False


def lock_pid(name: str) -> int:
    """The pid the last daemon of this name wrote in its lock (0 if none)."""
    try:
        return int(lock_path(name).read_text().strip() or "0")
    except (OSError, ValueError):
        return 0


def list_pipelines() -> list[str]:
    """Names with a control socket (the daemon behind one may be gone)."""
    names: set[str] = set()
    for root in runtime_roots():
        if root.is_dir():
            names.update(p.name for p in root.iterdir() if (p / CONTROL_SOCKET).exists())
    return sorted(names)
