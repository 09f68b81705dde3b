"""`vidring top [NAME]`: a live view of pipelines, from the statistics daemons publish.

Each pipeline's stats socket is a ZeroMQ PUB; top subscribes with CONFLATE (only the
newest message is kept), so watching costs the daemon nothing more and a slow terminal
never backs anything up.  Keys: Tab (or n) shows the next pipeline, q or Ctrl-C leaves;
the terminal is restored whatever happens.  Drawn with rich in 80 columns.
"""

from __future__ import annotations

import contextlib
import os
import select
import sys
import termios
import time
import tty
from typing import TYPE_CHECKING, Any

import msgspec
import zmq
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from vidring.loader import paths
from vidring.loader import stats as wire

if TYPE_CHECKING:
    from collections.abc import Iterator

_REFRESH_S = 0.5
# One frame (--once, a pipe) waits this long for a daemon to publish (it does every second).
_ONCE_WAIT_S = 10.0
_SPARK = " ▁▂▃▄▅▆▇█"
_WIDTH = 80


class Watch:
    """The newest Stats of every pipeline of this user, kept up to date."""

    def __init__(self) -> None:
        self._ctx = zmq.Context()
        self._subs: dict[str, zmq.Socket[Any]] = {}
        self.latest: dict[str, wire.Stats] = {}

    def refresh_names(self) -> list[str]:
        # Only this user's own pipelines, as a trainer would trust them (paths.distrust).
        names = [n for n in paths.list_pipelines() if paths.daemon_running(n)
                 and not paths.distrust(paths.runtime_dir(n), folder=True)]
        for name in names:
            if name not in self._subs:
                sock = self._ctx.socket(zmq.SUB)
                sock.setsockopt(zmq.CONFLATE, 1)
                sock.setsockopt(zmq.LINGER, 0)
                sock.setsockopt(zmq.SUBSCRIBE, b"")
                sock.connect(f"ipc://{paths.runtime_dir(name) / paths.STATS_SOCKET}")
                self._subs[name] = sock
        for name in set(self._subs) - set(names):
            self._subs.pop(name).close()
            self.latest.pop(name, None)
        return names

    def receive(self) -> None:
        for name, sock in self._subs.items():
            while sock.poll(0):
                with contextlib.suppress(msgspec.DecodeError, UnicodeDecodeError):
                    self.latest[name] = wire.decode(sock.recv())

    def close(self) -> None:
        for sock in self._subs.values():
            sock.close()
        self._ctx.term()


def run(name: str | None, *, once: bool = False) -> int:
    """Show the view until q or Ctrl-C (or, with `once`, one frame after data arrived)."""
    watch = Watch()
    names = watch.refresh_names()
    if name is not None and name not in names:
        print(f"vidring top: no running pipeline {name!r} (see `vidring ls`)", file=sys.stderr)
        watch.close()
        return 1
    selected = name or (names[0] if names else "")
    console = Console(width=min(_WIDTH, Console().width))
    once = once or not sys.stdout.isatty()  # a pipe or a file gets one frame, as `top -b -n 1`
    if once and not names:
        print("vidring top: no pipelines running", file=sys.stderr)
        watch.close()
        return 1
    give_up = time.monotonic() + _ONCE_WAIT_S
    try:
        with _keys() as keys, Live(console=console, screen=not once, auto_refresh=False) as live:
            last_names = 0.0
            while True:
                watch.receive()
                live.update(render(watch.latest, names, selected), refresh=True)
                if once and selected in watch.latest:
                    break
                if once and time.monotonic() > give_up:
                    print(f"vidring top: no statistics from {selected!r} within "
                          f"{_ONCE_WAIT_S:g} s", file=sys.stderr)
                    return 1
                key = keys(_REFRESH_S)
                if key in ("q", "Q", "\x03"):
                    return 0
                if key in ("\t", "n") and names:
                    selected = names[(names.index(selected) + 1) % len(names)
                                     if selected in names else 0]
                if time.monotonic() - last_names > 2:
                    last_names = time.monotonic()
                    names = watch.refresh_names()
                    selected = selected if selected in names or not names else names[0]
        if not console.is_terminal:  # Live ends a terminal's last line itself
            console.print()
        return 0
    except KeyboardInterrupt:
        return 0
    finally:
        watch.close()


@contextlib.contextmanager
def _keys() -> Iterator[Any]:
    """A function waiting up to its argument (seconds) for one key, or None; on a terminal
    in cbreak mode, restored on the way out."""
    fd = sys.stdin.fileno() if sys.stdin is not None and sys.stdin.isatty() else -1
    saved = termios.tcgetattr(fd) if fd >= 0 else None
    if fd >= 0:
        tty.setcbreak(fd)

    def key(timeout_s: float) -> str | None:
        if fd < 0:
            time.sleep(timeout_s)
            return None
        ready, _, _ = select.select([fd], [], [], timeout_s)
        return os.read(fd, 1).decode(errors="replace") if ready else None

    try:
        yield key
    finally:
        if saved is not None:
            termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def render(latest: dict[str, wire.Stats], names: list[str], selected: str) -> Group:
    parts: list[Any] = []
    if len(names) > 1 or not names:
        overview = Table(box=None, pad_edge=False, expand=False, title_justify="left")
        for column in ("pipeline", "ready", "clips/s", "wait p95", "workers", "errors"):
            overview.add_column(column, justify="left" if column == "pipeline" else "right")
        for n in names:
            st = latest.get(n)
            mark = ">" if n == selected else " "
            if st is None:
                overview.add_row(f"{mark}{n}", "-", "-", "-", "-", "-")
            else:
                overview.add_row(f"{mark}{n}", f"{st.ready}/{st.slots}", f"{st.clips_per_s:.1f}",
                                 f"{st.wait_p95_ms:.1f} ms", str(len(st.workers)), str(st.errors))
        parts.append(overview if names else Text("no pipelines running (vidring ls)"))
    st = latest.get(selected)
    if st is not None:
        parts.append(_detail(st))
    elif selected:
        parts.append(Text(f"{selected}: waiting for its first statistics..."))
    parts.append(Text("[Tab] next pipeline  [q] quit", style="dim"))
    return Group(*parts)


def _detail(st: wire.Stats) -> Group:
    spark = "".join(_SPARK[min(len(_SPARK) - 1, round(v / max(st.slots, 1) * (len(_SPARK) - 1)))]
                    for v in st.queue_history[-40:])
    head = Text.assemble((f"{st.name}", "bold"), f" (pid {st.pid})  epoch {st.epoch}  ",
                         f"{st.clips_per_s:.1f} clips/s")
    queue = Text(f"queue  {spark:<40} {st.ready}/{st.slots} ready")
    wait = Text(f"trainer wait p50 {st.wait_p50_ms:.1f} ms p95 {st.wait_p95_ms:.1f} ms "
                f"({st.waits}/min): {_verdict(st)}")
    scale = f"  autoscale {st.autoscale}" if st.autoscale else ""
    workers = Table(box=None, pad_edge=False, title=f"workers {len(st.workers)} / {st.target} "
                    f"wanted{scale}", title_justify="left")
    for column in ("id", "state", "pid", "cpu%", "rss MiB", "file"):
        workers.add_column(column, justify="left" if column in ("state", "file") else "right",
                           no_wrap=True)
    for w in st.workers:
        workers.add_row(str(w.worker_id), w.state, str(w.pid or "-"), f"{w.cpu_percent:.0f}",
                        f"{w.rss_mib:.0f}", _short(w.file, 36))
    stages = Text("ms/clip p50/p95 " + " ".join(
        f"{s.stage} {s.p50_ms:.1f}/{s.p95_ms:.0f}" for s in st.stages))
    slowest = Text("slowest  " + ("; ".join(f"{_short(f.path, 24)} {f.ms_per_clip:.0f} ms"
                                            for f in st.slowest[:2]) or "-"))
    errors = Text(f"errors {st.errors}  quarantined {st.quarantined}  spilled {st.spilled}")
    rows: list[Any] = [head, queue, wait, workers, stages, slowest, errors]
    rows += [Text(_short(e, _WIDTH - 2), style="red") for e in st.recent_errors]
    rows += [Text(_cut(f"scaled {line}", _WIDTH - 2), style="cyan") for line in st.scaling[-3:]]
    return Group(*rows)


def _verdict(st: wire.Stats) -> str:
    if not st.waits:
        return "(no trainer)"
    # Half the batches waited, or the ring is empty and the slow ones wait long.
    if st.wait_p50_ms > 10 or (st.wait_p95_ms > 50 and st.ready == 0):
        return "the loader is the bottleneck"
    return "the loader keeps up"


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[:width - 3] + "..."


def _short(text: str, width: int) -> str:
    return text if len(text) <= width else "..." + text[-(width - 3):]
