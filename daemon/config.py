"""One typed config for a pipeline, from command-line flags or a TOML file."""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from vidring.loader.paths import check_name
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


@dataclass(frozen=True, slots=True)
class ServeConfig:
    manifest: Path
    name: str
    batch_size: int
    clip_length: int
    height: int
    width: int
    workers: int
    slots: int = 4
    seed: int = 0
    dtype: str = "uint8"
    stride: int = 1
    # A decode running longer than this is a stall: the worker is killed, the clip replaced.
    task_timeout_s: float = 60.0
    # Leases of a client whose process is alive but silent this long are taken back.
    lease_timeout_s: float = 60.0
    # A request finding every slot leased waits this long for a release, then fails.
    exhausted_wait_s: float = 30.0
    # First wait before a failed clip is retried (the second waits 4x as long).
    retry_delay_s: float = 2.0
    probe_cache: Path | None = None

    def __post_init__(self) -> None:
        try:
            check_name(self.name)
        except ValueError as exc:
            raise ConfigError(f"name: {exc}") from None
        for name in ("batch_size", "clip_length", "height", "width", "slots", "stride"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"{name}: must be a positive integer, got {value!r}")
        if not isinstance(self.workers, int) or not 0 <= self.workers <= 1024:
            raise ConfigError(f"workers: must be 0..1024, got {self.workers!r}")
        if self.slots < 2:
            raise ConfigError("slots: need at least 2 (one leased, one filling)")
        if self.dtype not in DTYPES:
            raise ConfigError(f"dtype: must be one of {sorted(DTYPES)}, got {self.dtype!r}")
        if not isinstance(self.seed, int) or not 0 <= self.seed < 2**63:
            raise ConfigError(f"seed: must be an integer in 0..2**63-1, got {self.seed!r}")
        for name in ("task_timeout_s", "lease_timeout_s", "exhausted_wait_s", "retry_delay_s"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name}: must be > 0, got {getattr(self, name)!r}")

    @property
    def size(self) -> str:
        return f"{self.height}x{self.width}"


def load_toml(path: str | Path) -> dict[str, Any]:
    """Settings from a TOML file: the flag names with '_' for '-', size as "HxW"."""
    try:
        data = tomllib.loads(Path(path).read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"config {path}: {exc}") from None
    known = {f.name for f in fields(ServeConfig)} | {"size"}
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
    values.setdefault("workers", default_workers())
    values["manifest"] = Path(values["manifest"]).expanduser()
    if values.get("probe_cache") is not None:
        values["probe_cache"] = Path(values["probe_cache"]).expanduser()
    try:
        return ServeConfig(**values)
    except TypeError as exc:
        raise ConfigError(str(exc)) from None

