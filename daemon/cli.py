"""The `vidring` command: serve, status, scale, stop, ls, demo.

Each subcommand is one small function: the request it sends, how it prints
the reply.  `serve` runs in the foreground (systemd or a terminal); SIGTERM
and Ctrl-C stop it the same way `vidring stop` does (NOTE [ shutdown ] in
server.py).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import Any

from vidring.loader import paths
from vidring.loader.client import Client, VidringError

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2


def _request(name: str, type_: str, timeout_s: float, **fields: Any) -> dict[str, Any]:
    with Client(name, timeout_s=timeout_s, heartbeat=False) as client:
        return client.request(type_, **fields)


# -- serve ---------------------------------------------------------------------


def cmd_serve(args: argparse.Namespace) -> int:
    """Start a daemon in the foreground and serve until stopped."""
    from vidring.daemon import config as cfg
    from vidring.daemon.server import StartupError, serve

    logging.basicConfig(level=getattr(logging, args.log_level.upper()), stream=sys.stderr,
                        format=f"vidring[{args.name or '?'}] %(levelname)s %(message)s")
    settings: dict[str, Any] = cfg.load_toml(args.config) if args.config else {}
    for key in ("manifest", "name", "batch_size", "clip_length", "size", "workers", "slots",
                "seed", "dtype", "stride", "task_timeout_s", "lease_timeout_s", "exhausted_wait_s",
                "retry_delay_s", "probe_cache"):
        value = getattr(args, key)
        if value is not None:
            settings[key] = value
    try:
        config = cfg.build(settings)
        return serve(config)
    except (cfg.ConfigError, StartupError, ValueError, OSError) as exc:
        print(f"vidring serve: {exc}", file=sys.stderr)
        return EXIT_ERROR


# -- status ----------------------------------------------------------------------


def format_status(st: dict[str, Any]) -> str:
    slots, workers, errors = st["slots"], st["workers"], st["errors"]
    shape = "x".join(str(v) for v in st["batch_shape"])
    lines = [
        f"pipeline  {st['name']} (pid {st['pid']})  epoch {st['epoch']}  "
        f"{st['batches_per_epoch']} batches/epoch of {shape} {st['dtype']}",
        f"queue     {slots['ready']} ready / {slots['total']} slots  "
        f"({slots['filling']} filling, {slots['leased']} leased, {slots['free']} free)",
        f"workers   {workers['alive']} alive / {workers['target']} wanted  "
        f"({workers.get('busy', 0)} busy, {workers.get('restarts', 0)} restarts)",
        f"rate      {st['clips_per_s']:.1f} clips/s  ({st['clips_total']} clips total)",
    ]
    if errors["count"]:
        last = errors["last"]
        lines.append(f"errors    {errors['count']}, {len(errors.get('quarantined', []))} files "
                     f"quarantined; last: {last['path']}: {last['reason']}")
    else:
        lines.append("errors    0")
    return "\n".join(lines)


def cmd_status(args: argparse.Namespace) -> int:
    """Show a pipeline's queue depth, workers, rate and errors."""
    st = _request(args.name, "status", args.timeout)
    print(json.dumps(st, indent=2) if args.json else format_status(st))
    return EXIT_OK


def cmd_scale(args: argparse.Namespace) -> int:
    """Change the number of decoder workers while serving."""
    reply = _request(args.name, "scale", args.timeout, workers=args.workers)
    w = reply["workers"]
    print(f"{args.name}: workers {w['previous']} -> {w['target']}")
    return EXIT_OK


def cmd_stop(args: argparse.Namespace) -> int:
    """Stop a pipeline: its workers exit and its ring is unlinked."""
    _request(args.name, "stop", args.timeout)
    print(f"{args.name}: stopping")
    return EXIT_OK


def cmd_ls(args: argparse.Namespace) -> int:
    """List the pipelines running on this machine for this user."""
    rows = []
    for name in paths.list_pipelines():
        try:
            st = _request(name, "status", args.timeout)
        except VidringError:
            continue  # a socket left by a killed daemon; the next start removes it
        rows.append(st)
    if args.json:
        print(json.dumps(rows, indent=2))
        return EXIT_OK
    if not rows:
        print("no pipelines running")
        return EXIT_OK
    print(f"{'NAME':20} {'PID':>8} {'EPOCH':>6} {'READY':>7} {'WORKERS':>8} {'CLIPS/S':>8} "
          f"{'ERRORS':>6}")
    for st in rows:
        print(f"{st['name']:20} {st['pid']:>8} {st['epoch']:>6} "
              f"{st['slots']['ready']:>3}/{st['slots']['total']:<3} "
              f"{st['workers']['alive']:>8} {st['clips_per_s']:>8.1f} {st['errors']['count']:>6}")
    return EXIT_OK


def cmd_demo(args: argparse.Namespace) -> int:
    """Make a synthetic video set, serve it and train a tiny Keras model from it."""
    from vidring.daemon.demo import run_demo

    return run_demo(epochs=args.epochs, videos=args.videos, workers=args.workers,
                    folder=args.folder)


# -- parser ----------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vidring", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help=cmd_serve.__doc__, description=cmd_serve.__doc__)
    serve.add_argument("--config", help="TOML file with these settings; flags override it")
    serve.add_argument("--manifest", help="CSV (path,label), JSONL, or a folder per class")
    serve.add_argument("--name", help="pipeline name (the trainer's ClipDataset(name))")
    serve.add_argument("--batch-size", type=int)
    serve.add_argument("--clip-length", type=int, help="frames per clip (T)")
    serve.add_argument("--size", help="output HxW, e.g. 112x112 (stretched)")
    serve.add_argument("--workers", type=int, help="decoder processes (default: the cores)")
    serve.add_argument("--slots", type=int, help="batches the ring holds (default 4)")
    serve.add_argument("--seed", type=int)
    serve.add_argument("--dtype", choices=["uint8", "float32"])
    serve.add_argument("--stride", type=int, help="take every F-th frame (default 1)")
    serve.add_argument("--task-timeout-s", type=float, help="kill a decode stalled this long")
    serve.add_argument("--lease-timeout-s", type=float,
                       help="take back leases of a live but silent trainer after this")
    serve.add_argument("--exhausted-wait-s", type=float,
                       help="how long a request waits when the trainer holds every slot")
    serve.add_argument("--retry-delay-s", type=float,
                       help="wait before retrying a failed clip (default 2; then 4x)")
    serve.add_argument("--probe-cache", help="folder for probe results (default ~/.cache/vidring)")
    serve.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    serve.set_defaults(func=cmd_serve)

    for name, func in (("status", cmd_status), ("scale", cmd_scale), ("stop", cmd_stop)):
        p = sub.add_parser(name, help=func.__doc__, description=func.__doc__)
        p.add_argument("name", help="pipeline name")
        if name == "scale":
            p.add_argument("workers", type=int, help="the new worker count")
        if name == "status":
            p.add_argument("--json", action="store_true", help="one JSON object")
        p.add_argument("--timeout", type=float, default=5.0, help="seconds to wait (default 5)")
        p.set_defaults(func=func)

    ls = sub.add_parser("ls", help=cmd_ls.__doc__, description=cmd_ls.__doc__)
    ls.add_argument("--json", action="store_true")
    ls.add_argument("--timeout", type=float, default=2.0)
    ls.set_defaults(func=cmd_ls)

    demo = sub.add_parser("demo", help=cmd_demo.__doc__, description=cmd_demo.__doc__)
    demo.add_argument("--epochs", type=int, default=4)
    demo.add_argument("--videos", type=int, default=64, help="videos per class pair (default 64)")
    demo.add_argument("--workers", type=int, default=None)
    demo.add_argument("--folder", default=None, help="where to write the demo videos")
    demo.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except VidringError as exc:
        print(f"vidring {args.command}: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except ValueError as exc:
        print(f"vidring {args.command}: {exc}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
