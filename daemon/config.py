"""One typed config for a pipeline, from command-line flags or a TOML file."""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from vidring.daemon.sampler import SAMPLERS, SHORT_POLICIES, Sampling
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


def default_workers() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


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
    workers: int = field(metadata=_flag("decoder processes (default: the cores)", type=int))
    slots: int = field(default=4, metadata=_flag("batches the ring holds (default 4)", type=int))
    seed: int = field(default=0, metadata=_flag("seed of the epoch plan (default 0)", type=int))
    dtype: str = field(default="uint8", metadata=_flag("element type of x (default uint8)",
                                                       choices=sorted(DTYPES)))
    stride: int = field(default=1, metadata=_flag("take every F-th frame (default 1)", type=int))
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
        if not isinstance(self.workers, int) or not 0 <= self.workers <= MAX_WORKERS:
            raise ConfigError(f"workers: must be 0..{MAX_WORKERS}, got {self.workers!r}")
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


    def sampling(self) -> Sampling:
        return Sampling(self.clip_length, self.stride, self.sampler, self.clips_per_video,
                        bool(self.evaluation), self.short_policy, self.fps)


# The settings a user gives (flags, TOML keys): the fields, with size for height and width.
SETTINGS = [f for f in fields(ServeConfig) if not f.metadata.get("size")]
SIZE_HELP = "output HxW, e.g. 112x112 (stretched)"


def load_toml(path: str | Path) -> dict[str, Any]:
    """Settings from a TOML file: the flag names with '_' for '-', size as "HxW"."""
    try:
        data = tomllib.loads(Path(path).read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"config {path}: {exc}") from None
    known = {f.name for f in SETTINGS} | {"size"}
    for key in data:
        if key not in known:
            raise ConfigError(f"config {path}: unknown setting {key!r}")
    return data


def build(settings: dict[str, Any]) -> ServeConfig:
    """A ServeConfig from merged settings (file, then flags that were given)."""
    values = {k: v for k, v in settings.items() if v is not None}
    if "size" in values:
        values["height"], values["width"] = parse_size(values.pop("size"))
    for required in ("manifest", "name", "batch_size", "clip_length", "height"):
        if required not in values:
            flag = "size" if required == "height" else required.replace("_", "-")
            raise ConfigError(f"{flag}: required (flag --{flag} or the config file)")
    if values.get("workers") is None:
        values["workers"] = default_workers()
    values["manifest"] = Path(values["manifest"]).expanduser()
    if values.get("probe_cache") is not None:
        values["probe_cache"] = Path(values["probe_cache"]).expanduser()
    try:
        return ServeConfig(**values)
    except TypeError as exc:
        raise ConfigError(str(exc)) from None

