"""`vidring check MANIFEST`: probe every video and say, before training, what the dataset is.

Codecs, resolutions, frame rates, durations and GOP lengths, how many videos are
shorter than a clip, every bad file with its reason, and an estimate of clips/s per
core for the pipeline's settings, from a few clips decoded and timed here.  The probes
go to the same cache `vidring serve` reads, so a check also warms the daemon's start.
"""

from __future__ import annotations

import collections
import json
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from vidring.daemon.decode import ClipDecoder, DecodeError
from vidring.daemon.manifest import load_manifest
from vidring.daemon.probe import ProbeCache, VideoInfo, default_cache_dir
from vidring.daemon.startup import progress_bar
from vidring.loader.status import printable

if TYPE_CHECKING:
    from pathlib import Path

_TIMED_CLIPS = 8


@dataclass(frozen=True, slots=True)
class Settings:
    clip_length: int = 16
    stride: int = 1
    height: int = 112
    width: int = 112
    processes: int = 1


def check(manifest: str | Path, settings: Settings, cache_dir: Path | None = None,
          seed: int = 0) -> dict[str, Any]:
    rows = load_manifest(manifest).rows
    cache = ProbeCache(cache_dir or default_cache_dir())
    started = time.monotonic()
    with progress_bar(len(rows)) as shown:
        results = cache.get_many([row.path for row in rows], processes=settings.processes,
                                 progress=shown)
    probe_s = time.monotonic() - started
    good = [(str(row.path), r) for row, r in zip(rows, results, strict=True)
            if isinstance(r, VideoInfo)]
    bad = [{"path": printable(str(row.path)), "reason": r}
           for row, r in zip(rows, results, strict=True) if isinstance(r, str)]
    needed = (settings.clip_length - 1) * settings.stride + 1
    infos = [info for _, info in good]
    return {
        "manifest": printable(str(manifest)), "videos": len(rows), "probe_s": round(probe_s, 2),
        "codecs": _counts(info.codec or "?" for info in infos),
        "resolutions": _counts("x".join(map(str, info.upright_size[::-1])) for info in infos),
        "frame_rates": _counts(f"{_fps(info):g} fps" for info in infos),
        "duration_s": _spread([_duration(info) for info in infos]),
        "gop_frames": _spread([_gop(info) for info in infos]),
        "shorter_than_a_clip": sum(info.frames < needed for info in infos),
        "reopen_unanalysed": sum(bool(info.reopen_as) for info in infos),
        "probed": len(infos),
        "frames_per_clip": needed,
        "bad": bad,
        "clips_per_s_per_core": estimate_clips_per_s(good, settings, seed),
    }


def render(report: dict[str, Any]) -> str:
    def counts(name: str) -> str:
        return ", ".join(f"{k} ({v})" for k, v in report[name].items()) or "-"

    def spread(name: str, unit: str) -> str:
        s = report[name]
        return f"min {s['min']:g}{unit}, median {s['median']:g}{unit}, max {s['max']:g}{unit}" \
            if s else "-"

    lines = [
        f"checked {report['videos']} videos of {report['manifest']} in {report['probe_s']} s",
        f"codecs        {counts('codecs')}",
        f"resolutions   {counts('resolutions')}",
        f"frame rates   {counts('frame_rates')}",
        f"durations     {spread('duration_s', ' s')}",
        f"GOP lengths   {spread('gop_frames', ' frames')}",
        f"short         {report['shorter_than_a_clip']} shorter than a clip "
        f"({report['frames_per_clip']} frames)",
        f"reopening     {report['reopen_unanalysed']} of {report['probed']} open without "
        "FFmpeg's stream analysis (plain MP4)",
    ]
    estimate = report["clips_per_s_per_core"]
    lines.append(f"estimate      {estimate:.1f} clips/s per core for these settings"
                 if estimate else "estimate      - (no clip could be timed)")
    lines.append(f"bad files     {len(report['bad'])}")
    lines += [f"  {b['path']}: {b['reason']}" for b in report["bad"]]
    return "\n".join(lines)


def as_json(report: dict[str, Any]) -> str:
    return json.dumps(report, indent=2)


def _counts(values: Any) -> dict[str, int]:
    return dict(collections.Counter(values).most_common())


def _spread(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    arr = np.asarray(values, dtype=np.float64)
    return {"min": round(float(arr.min()), 2), "median": round(float(np.median(arr)), 2),
            "max": round(float(arr.max()), 2)}


def _fps(info: VideoInfo) -> float:
    gaps = np.diff(info.seconds())
    return round(1.0 / float(np.median(gaps)), 2) if len(gaps) and np.median(gaps) > 0 else 0.0


def _duration(info: VideoInfo) -> float:
    fps = _fps(info)
    return float(info.seconds()[-1]) + (1.0 / fps if fps else 0.0)


def _gop(info: VideoInfo) -> float:
    keys = np.append(info.keyframe_indices, info.frames)
    return float(np.max(np.diff(keys))) if len(keys) > 1 else float(info.frames)


def estimate_clips_per_s(good: list[tuple[str, VideoInfo]], settings: Settings,
                         seed: int) -> float:
    """Clips per second of one core: a few clips at random starts, decoded and timed here
    as a worker decodes them (pre-roll from the keyframe included)."""
    if not good:
        return 0.0
    rng = np.random.default_rng(seed)
    decoder = ClipDecoder(settings.height, settings.width)
    out = np.empty((settings.clip_length, settings.height, settings.width, 3), np.uint8)
    spent, timed = 0.0, 0
    try:
        for _ in range(_TIMED_CLIPS):
            path, info = good[int(rng.integers(len(good)))]
            span = (settings.clip_length - 1) * settings.stride + 1
            start = int(rng.integers(0, max(info.frames - span, 0) + 1))
            frames = [min(start + t * settings.stride, info.frames - 1)
                      for t in range(settings.clip_length)]
            began = time.process_time()
            try:
                decoder.decode_into(path, *info.seek_target(start),
                                    [int(info.frame_pts[f]) for f in frames], out,
                                    reopen=info.reopen)
            except DecodeError:
                continue
            spent += time.process_time() - began
            timed += 1
    finally:
        decoder.close()
    return round(timed / spent, 1) if spent > 0 else 0.0
