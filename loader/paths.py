"""Where a pipeline's control sockets and lock live on this machine."""

from __future__ import annotations

import os
import re
from pathlib import Path

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,47}$")


def check_name(name: str) -> str:
    """A pipeline name becomes a path and a segment name: keep it plain."""
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise ValueError(
            f"pipeline name {name!r}: use 1-48 letters, digits, '_', '.' or '-', "
            "starting with a letter or digit"
        )
    return name


def runtime_root() -> Path:
    """Owner-only folder holding every pipeline of this user."""
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    if xdg and os.path.isdir(xdg) and os.access(xdg, os.W_OK):
        return Path(xdg) / "vidring"
    return Path(f"/tmp/vidring-{os.getuid()}")


def runtime_dir(name: str) -> Path:
    return runtime_root() / check_name(name)


def control_endpoint(name: str) -> str:
    return f"ipc://{runtime_dir(name) / 'control.sock'}"


def work_endpoint(name: str) -> str:
    return f"ipc://{runtime_dir(name) / 'work.sock'}"


def control_socket_path(name: str) -> Path:
    return runtime_dir(name) / "control.sock"


def list_pipelines() -> list[str]:
    """Names with a live-looking control socket (the daemon may still be gone)."""
    root = runtime_root()
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if (p / "control.sock").exists())
