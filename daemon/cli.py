"""The `vidring` command: serve, status, scale, stop, ls, demo.

The subcommands that talk to a running daemon (status, scale, stop) come
from the command registry (commands.py): each class says what it sends and
how it prints the reply.  `serve` runs in the foreground (systemd or a
terminal); SIGTERM and Ctrl-C stop it the same way `vidring stop` does
(NOTE [ shutdown ] in server.py).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import logging
import sys
from typing import TYPE_CHECKING, Any

from vidring.daemon.commands import REGISTRY, Command, by_name
from vidring.daemon.manifest import ManifestError
from vidring.loader import paths, protocol
from vidring.loader.client import Client, DaemonUnavailable, VidringError

if TYPE_CHECKING:
    from vidring.loader.status import StatusRecord

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


# -- serve ---------------------------------------------------------------------


def cmd_serve(args: argparse.Namespace) -> int:
    """Start a daemon in the foreground and serve until stopped."""
    from vidring.daemon import config as cfg
    from vidring.daemon.runtime import StartupError
    from vidring.daemon.startup import serve
    from vidring.loader.ring import RingError

    logging.basicConfig(level=getattr(logging, args.log_level.upper()), stream=sys.stderr,
                        format=f"vidring[{args.name or '?'}] %(levelname)s %(message)s")
    settings: dict[str, Any] = cfg.load_toml(args.config) if args.config else {}
    for key in [f.name for f in cfg.SETTINGS] + ["size"]:
        value = getattr(args, key)
        if value is not None:
            settings[key] = value
    try:
        config = cfg.build(settings)
    except cfg.ConfigError as exc:
        field = str(exc).split(":", 1)[0]
        from_file = args.config and getattr(args, field, None) is None and field in settings
        print(f"vidring serve: {f'config {args.config}: ' if from_file else ''}{exc}",
              file=sys.stderr)
        return EXIT_USAGE
    try:
        return serve(config)
    except (StartupError, RingError, ValueError, OSError) as exc:
        if args.debug:
            raise
        print(f"vidring serve: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except Exception as exc:  # one line for the operator; --debug for the traceback
        if args.debug:
            raise
        print(f"vidring serve: {type(exc).__name__}: {exc} (--debug shows where)",
              file=sys.stderr)
        return EXIT_ERROR


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    from vidring.daemon import config as cfg

    parser.add_argument("--config", help="TOML file with these settings; flags override it")
    for setting in cfg.SETTINGS:
        flag = dict(setting.metadata)
        parser.add_argument(f"--{setting.name.replace('_', '-')}", **flag)
        if setting.name == "clip_length":
            parser.add_argument("--size", help=cfg.SIZE_HELP)
    parser.add_argument("--log-level", default="info",
                        choices=["debug", "info", "warning", "error"])
    parser.add_argument("--debug", action="store_true",
                        help="print the traceback of an error, not just its one line")


# -- commands sent to a running daemon -----------------------------------------------


def run_command(cmd: Command[Any], args: argparse.Namespace) -> int:
    request = cmd.build_request(args)
    assert request.reply_type is not None, "operator commands are answered"
    try:
        with Client(args.name, timeout_s=args.timeout, heartbeat=False) as client:
            reply = client.call(request, request.reply_type)
    except DaemonUnavailable:
        if not cmd.when_gone(args):
            raise
        return EXIT_OK
    print(cmd.render(reply, args))
    return EXIT_OK


def cmd_ls(args: argparse.Namespace) -> int:
    """List the pipelines on this machine for this user (stale: its daemon was killed)."""
    rows: list[StatusRecord] = []
    stale: list[str] = []
    for name in paths.list_pipelines():
        if not paths.daemon_running(name):
            stale.append(name)
            continue
        try:
            with Client(name, timeout_s=args.timeout, heartbeat=False) as client:
                rows.append(client.status())
        except VidringError:
            stale.append(name)  # holds its lock but does not answer
    if args.json:
        print(json.dumps([json.loads(protocol.to_json(st)) for st in rows]
                         + [{"name": name, "phase": "stale"} for name in stale], indent=2))
        return EXIT_OK
    if not rows and not stale:
        print("no pipelines running")
        return EXIT_OK
    print(f"{'NAME':20} {'PID':>8} {'EPOCH':>6} {'READY':>7} {'WORKERS':>8} {'CLIPS/S':>8} "
          f"{'ERRORS':>6}")
    for st in rows:
        print(f"{st.name:20} {st.pid:>8} {st.epoch:>6} "
              f"{st.slots.ready:>3}/{st.slots.total:<3} "
              f"{st.workers.alive:>8} {st.clips_per_s:>8.1f} {st.errors.count:>6}")
    for name in stale:
        running = paths.daemon_running(name)
        print(f"{name:20} {paths.lock_pid(name) or '-':>8}  "
              f"{'not answering' if running else 'stale: its daemon is gone'}"
              f"{'' if running else f' (`vidring stop {name}` removes it)'}")
    return EXIT_OK


def cmd_check(args: argparse.Namespace) -> int:
    """Probe every video of a dataset and summarise it; exit 1 if any file is bad."""
    from pathlib import Path

    from vidring.daemon import check
    from vidring.daemon.config import default_workers, parse_size

    height, width = parse_size(args.size)
    settings = check.Settings(args.clip_length, args.stride, height, width,
                              args.workers or default_workers())
    report = check.check(args.manifest, settings,
                         Path(args.probe_cache).expanduser() if args.probe_cache else None)
    print(check.as_json(report) if args.json else check.render(report))
    return EXIT_ERROR if report["bad"] else EXIT_OK


def cmd_prepare(args: argparse.Namespace) -> int:
    """Re-encode a dataset once into a training copy (short GOP, training size); resumable."""
    from vidring.daemon import prepare
    from vidring.daemon.config import default_workers

    recipe = prepare.Recipe(args.short_side, args.gop, args.crf)
    report = prepare.prepare(args.manifest, args.out, recipe,
                             processes=args.workers or default_workers())
    print(json.dumps(report, indent=2) if args.json else prepare.render(report))
    return EXIT_ERROR if report["failed"] else EXIT_OK


def cmd_top(args: argparse.Namespace) -> int:
    """A live view of pipelines: queue depth, rate, trainer waits, workers, stage times."""
    from vidring.daemon.top import run

    return run(args.name, once=args.once)


def cmd_demo(args: argparse.Namespace) -> int:
    """Make a synthetic video set, serve it and train a tiny Keras model from it."""
    from vidring.daemon.demo import run_demo

    return run_demo(epochs=args.epochs, videos=args.videos, workers=args.workers,
                    folder=args.folder)


# -- parser ----------------------------------------------------------------------


def version() -> str:
    try:
        return importlib.metadata.version("vidring")
    except importlib.metadata.PackageNotFoundError:
        return "unknown (not installed)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vidring", description=__doc__.split("\n")[0])
    parser.add_argument("--version", action="version", version=f"vidring {version()}")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help=cmd_serve.__doc__, description=cmd_serve.__doc__)
    add_serve_arguments(serve)
    serve.set_defaults(func=cmd_serve)

    for cmd in REGISTRY.values():
        if not cmd.cli:
            continue
        doc = (type(cmd).__doc__ or "").strip()
        p = sub.add_parser(cmd.name, help=doc, description=doc)
        p.add_argument("name", help="pipeline name")
        cmd.add_arguments(p)
        p.add_argument("--timeout", type=float, default=5.0, help="seconds to wait (default 5)")
        p.set_defaults(func=lambda args: run_command(by_name(args.command), args))

    ls = sub.add_parser("ls", help=cmd_ls.__doc__, description=cmd_ls.__doc__)
    ls.add_argument("--json", action="store_true")
    ls.add_argument("--timeout", type=float, default=2.0)
    ls.set_defaults(func=cmd_ls)

    chk = sub.add_parser("check", help=cmd_check.__doc__, description=cmd_check.__doc__)
    chk.add_argument("manifest", help="CSV, JSONL or a folder per class")
    chk.add_argument("--clip-length", type=int, default=16)
    chk.add_argument("--stride", type=int, default=1)
    chk.add_argument("--size", default="112x112", help="output HxW of the pipeline")
    chk.add_argument("--workers", type=int, default=None, help="probe processes")
    chk.add_argument("--probe-cache", default=None)
    chk.add_argument("--json", action="store_true", help="one JSON object")
    chk.set_defaults(func=cmd_check)

    prep = sub.add_parser("prepare", help=cmd_prepare.__doc__, description=cmd_prepare.__doc__)
    prep.add_argument("manifest", help="CSV, JSONL or a folder per class")
    prep.add_argument("--out", required=True, help="folder for the copies and their manifest")
    prep.add_argument("--short-side", type=int, default=160,
                      help="short side of the copies in pixels (default 160: room to crop 112)")
    prep.add_argument("--gop", type=int, default=16, help="frames between keyframes (16)")
    prep.add_argument("--crf", type=int, default=20, help="libx264 quality, lower is better")
    prep.add_argument("--workers", type=int, default=None, help="encoding processes")
    prep.add_argument("--json", action="store_true", help="the report as one JSON object")
    prep.set_defaults(func=cmd_prepare)

    top = sub.add_parser("top", help=cmd_top.__doc__, description=cmd_top.__doc__)
    top.add_argument("name", nargs="?", help="the pipeline shown first (default: all)")
    top.add_argument("--once", action="store_true",
                     help="print one frame once statistics arrive, then exit")
    top.set_defaults(func=cmd_top)

    demo = sub.add_parser("demo", help=cmd_demo.__doc__, description=cmd_demo.__doc__)
    demo.add_argument("--epochs", type=int, default=4, help="epochs of model.fit (default 4)")
    demo.add_argument("--videos", type=int, default=64,
                      help="training videos, half of each class (default 64)")
    demo.add_argument("--workers", type=int, default=None,
                      help="decoder workers (default: one per core)")
    demo.add_argument("--folder", default=None,
                      help="write the demo videos here and keep them (default: a temporary "
                           "folder, removed at the end)")
    demo.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Exit codes: 0 done (a daemon stopped by `vidring stop`, SIGTERM, SIGINT or SIGHUP
    exits 0), 1 an error (one line on stderr), 2 a usage error, 130 interrupted before a
    daemon could handle Ctrl-C itself."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except (VidringError, ManifestError) as exc:  # the data, not the command line
        print(f"vidring {args.command}: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except ValueError as exc:
        print(f"vidring {args.command}: {exc}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
