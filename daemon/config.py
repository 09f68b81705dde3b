"""One typed config for a pipeline, from command-line flags or a TOML file."""

from __future__ import annotations

import json
import os
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from vidring.daemon.augment import CROPS, RESIZES, Augment, parse_jitter
from vidring.daemon.autoscale import parse_range
from vidring.daemon.frames import DEFAULT_INTERPOLATION, INTERPOLATIONS
from vidring.daemon.sampler import SAMPLERS, SHORT_POLICIES, Sampling
from vidring.daemon.targets import LABELS
from vidring.loader.paths import check_name
from vidring.loader.protocol import MAX_WORKERS
from vidring.loader.ring import DTYPES


class ConfigError(ValueError):
    """A setting that is missing or out of range; the message names it."""


def parse_size(text: str) -> tuple[int, int]:
    """'HxW' -> (H, W)."""
    try:
        h, w = (int(v) for v in str(text).lower().split("x"))
    except ValueError:
        raise ConfigError(f"size: expected HxW such as 112x112, got {text!r}") from None
    if h < 1 or w < 1:
        raise ConfigError(f"size: height and width must be positive, got {text!r}")
    return h, w


MAX_WORKERS_PER_CORE = 4


def default_workers() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def default_max_workers() -> int:
    """Four per usable core: decoding is CPU-bound, so more only adds memory (each worker
    is a Python process with FFmpeg loaded) and start-up time."""
    return min(MAX_WORKERS, MAX_WORKERS_PER_CORE * default_workers())


def workers_setting(value: Any) -> int:
    """A worker count, or "auto": one per usable core but one, left to the trainer's own
    process (its Python loop, the model step on a CPU)."""
    if value == "auto":
        return max(1, default_workers() - 1)
    try:
        return int(value)
    except (TypeError, ValueError):
        raise ConfigError(f"workers: expected a number or 'auto', got {value!r}") from None


def _flag(help_: str, **argparse_kwargs: Any) -> dict[str, Any]:
    """Field metadata: the field is also a `vidring serve` flag and a TOML key."""
    return {"help": help_, **argparse_kwargs}


@dataclass(frozen=True, slots=True)
class ServeConfig:
    """A pipeline's settings; each field (but height and width: `size`) is a flag and a key."""

    manifest: Path = field(metadata=_flag("CSV (path,label), JSONL, or a folder per class"))
    name: str = field(metadata=_flag("pipeline name (the trainer's ClipDataset(name))"))
    batch_size: int = field(metadata=_flag("clips per batch", type=int))
    clip_length: int = field(metadata=_flag("frames per clip (T)", type=int))
    height: int = field(metadata={"size": True})
    width: int = field(metadata={"size": True})
    workers: int = field(metadata=_flag(
        "decoder processes, or auto: one per core but one for the trainer (default: the "
        "cores)"))
    max_workers: int | None = field(default=None, metadata=_flag(
        "the most workers `vidring scale` may ask for (default: 4 per core, or --workers or "
        "the --autoscale maximum if more)", type=int))
    slots: int = field(default=4, metadata=_flag("batches the ring holds (default 4)", type=int))
    seed: int = field(default=0, metadata=_flag("seed of the epoch plan (default 0)", type=int))
    dtype: str = field(default="uint8", metadata=_flag("element type of x (default uint8)",
                                                       choices=sorted(DTYPES)))
    stride: int = field(default=1, metadata=_flag("take every F-th frame (default 1)", type=int))
    worker_max_clips: int = field(default=10_000, metadata=_flag(
        "a worker decodes this many clips, then a fresh process takes its place, which "
        "bounds its memory (default 10000; 0: never)", type=int))
    task_timeout_s: float = field(default=60.0, metadata=_flag(
        "kill a decode stalled this long; the clip is retried (default 60)", type=float))
    lease_timeout_s: float = field(default=60.0, metadata=_flag(
        "take back leases of a live but silent trainer after this (default 60)", type=float))
    exhausted_wait_s: float = field(default=30.0, metadata=_flag(
        "how long a request waits when the trainer holds every slot (default 30)",
        type=float))
    retry_delay_s: float = field(default=2.0, metadata=_flag(
        "wait before retrying a failed clip (default 2; then 4x)", type=float))
    probe_cache: Path | None = field(default=None, metadata=_flag(
        "folder for probe results (default ~/.cache/vidring/probe)"))
    sampler: str = field(default="random", metadata=_flag(
        "where clips lie: random (default), random_keyframe (faster on long GOPs), uniform "
        "(evaluation), segments (TSN)",
        choices=list(SAMPLERS)))
    fps: float | None = field(default=None, metadata=_flag(
        "resample clips to this many frames per second by timestamps (instead of --stride)",
        type=float))
    clips_per_video: int = field(default=1, metadata=_flag(
        "clips of each video per epoch (default 1)", type=int))
    evaluation: bool = field(default=False, metadata=_flag(
        "an evaluation pipeline: every video in manifest order, the same in every epoch, the "
        "last batch padded (implied by --sampler uniform)", action="store_true", default=None))
    short_policy: str = field(default="repeat_last", metadata=_flag(
        "a video shorter than a clip: repeat_last (default), wrap, or skip (left out at start)",
        choices=list(SHORT_POLICIES)))
    shard: int = field(default=0, metadata=_flag(
        "serve part I of every epoch (one daemon per host; default 0)", type=int))
    num_shards: int = field(default=1, metadata=_flag(
        "how many parts each epoch is split into (default 1)", type=int))
    metrics_port: int | None = field(default=None, metadata=_flag(
        "serve Prometheus metrics on this port (off by default)", type=int))
    metrics_address: str = field(default="127.0.0.1", metadata=_flag(
        "the address the metrics are served on (default loopback)"))
    autoscale: str | None = field(default=None, metadata=_flag(
        "MIN:MAX: grow the workers while the trainer waits and cores are idle, shrink them "
        "while batches sit ready (starts at --workers)"))
    decode: str = field(default="cpu", metadata=_flag(
        "where videos are decoded: cpu (default), or cuda (NVDEC through FFmpeg's hwaccel; "
        "the CPU where no GPU can)", choices=["cpu", "cuda"]))
    resize: str = field(default="stretch", metadata=_flag(
        "stretch (default: the whole frame to HxW) or short_side (scale, then crop HxW)",
        choices=list(RESIZES)))
    short_side: int | None = field(default=None, metadata=_flag(
        "with --resize short_side: the short side S in pixels before the crop", type=int))
    scale_jitter: str | None = field(default=None, metadata=_flag(
        "with --resize short_side: S drawn per clip from MIN:MAX (instead of --short-side)"))
    crop: str = field(default="center", metadata=_flag(
        "where the HxW crop lies: center (default) or random", choices=list(CROPS)))
    flip: bool = field(default=False, metadata=_flag(
        "flip clips left to right with probability 1/2", action="store_true", default=None))
    interpolation: str = field(default=DEFAULT_INTERPOLATION, metadata=_flag(
        f"resize filter (default {DEFAULT_INTERPOLATION}: antialiased when shrinking)",
        choices=list(INTERPOLATIONS)))
    mean: tuple[float, ...] | None = field(default=None, metadata=_flag(
        "float dtypes: subtract this R,G,B mean (of pixels scaled to 0..1)"))
    std: tuple[float, ...] | None = field(default=None, metadata=_flag(
        "float dtypes: then divide by this R,G,B standard deviation"))
    labels: str = field(default="index", metadata=_flag(
        "targets: index (default; class indices or names), onehot, multi (multi-hot), "
        "regression (numbers)", choices=list(LABELS)))

    def __post_init__(self) -> None:
        try:
            check_name(self.name)
        except ValueError as exc:
            raise ConfigError(f"name: {exc}") from None
        for name in ("batch_size", "clip_length", "height", "width", "slots", "stride",
                     "clips_per_video"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"{name}: must be a positive integer, got {value!r}")
        if not isinstance(self.worker_max_clips, int) or self.worker_max_clips < 0:
            raise ConfigError(f"worker_max_clips: must be an integer >= 0, got "
                              f"{self.worker_max_clips!r}")
        if not isinstance(self.workers, int) or not 0 <= self.workers <= MAX_WORKERS:
            raise ConfigError(f"workers: must be 0..{MAX_WORKERS}, got {self.workers!r}")
        if self.max_workers is not None and (
                not isinstance(self.max_workers, int) or isinstance(self.max_workers, bool)
                or not 1 <= self.max_workers <= MAX_WORKERS):
            raise ConfigError(f"max_workers: must be 1..{MAX_WORKERS}, got "
                              f"{self.max_workers!r}")
        if self.max_workers is not None and isinstance(self.workers, int) and (
                self.workers > self.max_workers):
            raise ConfigError(f"max_workers: {self.max_workers} is below workers "
                              f"{self.workers}")
        if self.slots < 2:
            raise ConfigError("slots: need at least 2 (one leased, one filling)")
        if self.dtype not in DTYPES:
            raise ConfigError(f"dtype: must be one of {sorted(DTYPES)}, got {self.dtype!r}")
        if not isinstance(self.seed, int) or not 0 <= self.seed < 2**63:
            raise ConfigError(f"seed: must be an integer in 0..2**63-1, got {self.seed!r}")
        try:
            self.sampling()
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        if (not isinstance(self.num_shards, int) or not isinstance(self.shard, int)
                or not 0 <= self.shard < self.num_shards):
            raise ConfigError(f"shard: must be in 0..num_shards-1, got shard {self.shard!r} "
                              f"of {self.num_shards!r}")
        for name in ("task_timeout_s", "lease_timeout_s", "exhausted_wait_s", "retry_delay_s"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name}: must be > 0, got {getattr(self, name)!r}")
        try:
            self.augment()
            if self.autoscale is not None:
                most = parse_range(self.autoscale)[1]
                if self.max_workers is not None and most > self.max_workers:
                    raise ConfigError(f"max_workers: {self.max_workers} is below the autoscale "
                                      f"maximum {most}")
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        for name in ("mean", "std"):
            value = getattr(self, name)
            if value is None:
                continue
            if self.dtype == "uint8":
                raise ConfigError(f"{name}: needs --dtype float16 or float32")
            if len(value) != 3 or (name == "std" and not all(v > 0 for v in value)):
                raise ConfigError(f"{name}: expected three numbers R,G,B"
                                  f"{' > 0' if name == 'std' else ''}, got {value!r}")

    def augment(self) -> Augment:
        if self.short_side is not None and self.scale_jitter is not None:
            raise ValueError("short_side: give --short-side or --scale-jitter, not both")
        if self.scale_jitter is not None:
            side = parse_jitter(self.scale_jitter)
        else:
            side = (self.short_side or 0, self.short_side or 0)
        return Augment(self.height, self.width, self.resize, side, self.crop,
                       bool(self.flip))

    def sampling(self) -> Sampling:
        return Sampling(self.clip_length, self.stride, self.sampler, self.clips_per_video,
                        bool(self.evaluation), self.short_policy, self.fps)


# The settings a user gives (flags, TOML keys): the fields, with size for height and width.
SETTINGS = [f for f in fields(ServeConfig) if not f.metadata.get("size")]
SIZE_HELP = "output HxW, e.g. 112x112 (see --resize)"


def load_toml(path: str | Path) -> dict[str, Any]:
    """Settings from a TOML file: the flag names with '_' for '-', size as "HxW"."""
    try:
        data = tomllib.loads(Path(path).read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"config {path}: {exc}") from None
    known = {f.name: f for f in SETTINGS}
    for key, value in data.items():
        if key != "size" and key not in known:
            raise ConfigError(f"config {path}: unknown setting {key!r}")
        expected = _toml_kind(known[key] if key != "size" else None, value)
        if expected:
            raise ConfigError(f"config {path}: {key}: expected {expected}, got {value!r}")
    # A unit may start anywhere: a relative path in the file is relative to the file.
    for key in ("manifest", "probe_cache"):
        if isinstance(data.get(key), str):
            value = Path(data[key]).expanduser()
            data[key] = str(value if value.is_absolute() else Path(path).parent / value)
    return data


def _toml_kind(setting: Any, value: Any) -> str:
    """What a TOML value of `setting` should have been, or "" if it is of the right kind
    (its range is ServeConfig's to check, as for a flag)."""
    meta = {} if setting is None else setting.metadata
    number = isinstance(value, int | float) and not isinstance(value, bool)
    if setting is not None and setting.name == "workers":
        ok, kind = value == "auto" or (number and isinstance(value, int)), 'a number or "auto"'
    elif setting is not None and setting.name in ("mean", "std"):
        ok, kind = isinstance(value, list | str), 'three numbers, [R, G, B] or "R,G,B"'
    elif meta.get("action") == "store_true":
        ok, kind = isinstance(value, bool), "true or false"
    elif meta.get("type") is int:
        ok, kind = number and isinstance(value, int), "a whole number"
    elif meta.get("type") is float:
        ok, kind = number, "a number"
    else:
        ok, kind = isinstance(value, str), "a string"
    return "" if ok else kind


def build(settings: dict[str, Any]) -> ServeConfig:
    """A ServeConfig from merged settings (file, then flags that were given)."""
    values = {k: v for k, v in settings.items() if v is not None}
    if "size" in values:
        values["height"], values["width"] = parse_size(values.pop("size"))
    missing = [f"--{'size' if key == 'height' else key.replace('_', '-')}"
               for key in ("manifest", "name", "batch_size", "clip_length", "height")
               if key not in values]
    if missing:
        raise ConfigError(f"required: {', '.join(missing)} (flags, or keys of the config "
                          "file)")
    values["workers"] = (default_workers() if values.get("workers") is None
                         else workers_setting(values["workers"]))
    if values.get("max_workers") is None:
        # Never below what was asked for explicitly: the default only guards `scale`.
        try:
            most = parse_range(values["autoscale"])[1] if values.get("autoscale") else 0
        except ValueError:
            most = 0  # reported by ServeConfig
        values["max_workers"] = max(default_max_workers(), values["workers"], most)
    values["manifest"] = Path(values["manifest"]).expanduser()
    for name in ("mean", "std"):
        if name in values:
            values[name] = _numbers(name, values[name])
    if values.get("probe_cache") is not None:
        values["probe_cache"] = Path(values["probe_cache"]).expanduser()
    try:
        return ServeConfig(**values)
    except TypeError as exc:
        raise ConfigError(str(exc)) from None



def as_toml(config: ServeConfig) -> str:
    """The config as a file `vidring serve --config` reads back to the same config."""
    lines = []
    for setting in SETTINGS:
        value = getattr(config, setting.name)
        if value is None:
            lines.append(f"# {setting.name} is not set")
            continue
        lines.append(f"{setting.name} = {_toml_value(value)}")
        if setting.name == "clip_length":
            lines.append(f'size = "{config.height}x{config.width}"')
    return "\n".join(lines)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (tuple, list)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return json.dumps(str(value))  # a TOML basic string is written like a JSON one


def _numbers(name: str, value: Any) -> tuple[float, ...]:
    """'R,G,B' (a flag) or [R, G, B] (TOML) -> floats."""
    items = value.split(",") if isinstance(value, str) else value
    try:
        return tuple(float(v) for v in items)
    except (TypeError, ValueError):
        raise ConfigError(f"{name}: expected numbers R,G,B, got {value!r}") from None
