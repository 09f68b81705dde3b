"""`vidring prepare MANIFEST --out DIR`: a one-time re-encode of a dataset into a training copy.

Random clips of long-GOP video pay for the pre-roll from the keyframe: about 130 frames
decoded per 16 kept at GOP 250.  The training copy is cut for the loader instead:
- keyframes every `--gop` frames (default 16) and no B-frames, so a clip starts at most
  a GOP after its keyframe and frames leave the decoder as they go in;
- libx264's `fastdecode` tune (no CABAC, no deblocking): cheaper to decode;
- the training resolution with a margin for crops (`--short-side S`, default 160, the
  aspect kept, never larger than the source), turned upright, at `--crf` quality
  (default 20);
- the same frames at the same timestamps, so a manifest's `start`/`end` still hold.
Files are encoded in `--workers` processes with a progress bar.  Each is written to a
`.partial` name and renamed when complete, so an interrupted run resumes where it stopped
and files already done are skipped; DIR/prepare.json records the settings, and a run into
DIR with others is refused rather than keep old copies.  The new manifest
(DIR/manifest.csv or .jsonl, the labels, segments and weights unchanged) is written last.
The report gives the disk size, the decode CPU per clip before and after (timed here), and
the copy's fidelity: PSNR against the source resized to the same size.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import multiprocessing
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import av
import numpy as np

from vidring.daemon.check import Settings, estimate_clips_per_s
from vidring.daemon.manifest import Manifest, load_manifest
from vidring.daemon.probe import probe
from vidring.daemon.startup import progress_bar

if TYPE_CHECKING:
    from vidring.daemon.manifest import VideoRow

_PSNR_FRAMES = 8  # frames compared per file for the fidelity figure
_TIMED_CLIPS = 8
RECIPE_FILE = "prepare.json"  # DIR's recipe: a rerun must ask for the same one


@dataclass(frozen=True, slots=True)
class Recipe:
    short_side: int = 160
    gop: int = 16
    crf: int = 20

    def __post_init__(self) -> None:
        if self.short_side < 16 or self.gop < 1 or not 0 <= self.crf <= 51:
            raise ValueError(f"need --short-side >= 16, --gop >= 1, --crf 0..51, got "
                             f"{self.short_side}, {self.gop}, {self.crf}")


def output_name(row: VideoRow, index: int, manifest: Manifest) -> str:
    """Where a row's copy goes under DIR: its path relative to the manifest's folder, or
    its row number and name for a file elsewhere."""
    base = manifest.source if manifest.source.is_dir() else manifest.source.parent
    try:
        relative = row.path.resolve().relative_to(base.resolve())
    except ValueError:
        relative = Path(f"{index:06d}-{row.path.stem}")
    return str(relative.with_suffix(".mp4"))


def encode_copy(src: str, dst: str, recipe: Recipe) -> tuple[str, float]:
    """Re-encode one file (in a worker process); (dst, PSNR in dB) or raises."""
    partial = dst + ".partial"
    os.makedirs(os.path.dirname(dst) or ".", exist_ok=True)
    rotation = probe(src).rotation
    wanted: dict[int, np.ndarray] = {}  # frame index -> the source at the copy's size
    with av.open(src) as inp, av.open(partial, "w", format="mp4") as out:
        stream_in = inp.streams.video[0]
        stream_in.codec_context.thread_count = 1
        up_h, up_w = _upright(stream_in.codec_context.height, stream_in.codec_context.width,
                              rotation)
        height, width = copy_size(up_h, up_w, recipe.short_side)
        stream = out.add_stream("libx264", rate=stream_in.average_rate or 30)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.time_base = stream_in.time_base
        stream.options = {"preset": "medium", "tune": "fastdecode", "crf": str(recipe.crf),
                          "threads": "1", "x264-params": f"keyint={recipe.gop}:min-keyint="
                          f"{recipe.gop}:scenecut=0:bframes=0"}
        for n, frame in enumerate(inp.decode(stream_in)):
            rgb: np.ndarray = frame.to_ndarray(format="rgb24")
            if rotation:
                rgb = np.ascontiguousarray(np.rot90(rgb, rotation // 90))
            small = av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(
                width=width, height=height, format="yuv420p", interpolation="AREA")
            small.pts, small.time_base = frame.pts, frame.time_base
            if n % 16 == 0 and len(wanted) < _PSNR_FRAMES:
                wanted[n] = small.to_ndarray(format="rgb24").astype(np.float64)
            for packet in stream.encode(small):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    # Fidelity: the copy as written, decoded, against the source at the copy's size.
    errors = []
    with av.open(partial) as copy:
        for n, frame in enumerate(copy.decode(video=0)):
            if n in wanted:
                got = frame.to_ndarray(format="rgb24").astype(np.float64)
                errors.append(float(np.mean((got - wanted[n]) ** 2)))
            if n >= max(wanted, default=0):
                break
    os.replace(partial, dst)
    mse = float(np.mean(errors)) if errors else 0.0
    return dst, (99.0 if mse == 0 else 10 * math.log10(255.0**2 / mse))


def _upright(height: int, width: int, rotation: int) -> tuple[int, int]:
    return (width, height) if rotation % 180 else (height, width)


def copy_size(height: int, width: int, short_side: int) -> tuple[int, int]:
    """The copy's (height, width): the short side at `short_side`, the aspect kept, never
    larger than the source, each even (yuv420p), rounded down so as not to pass it."""
    short = min(height, width)
    side = min(short_side, short)
    return max(2, height * side // short // 2 * 2), max(2, width * side // short // 2 * 2)


def _ignore_interrupts() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent ends the pool


def _encode_job(job: tuple[str, str, Recipe]) -> tuple[str, float, str]:
    src, dst, recipe = job
    try:
        done, psnr = encode_copy(src, dst, recipe)
        return done, psnr, ""
    except (av.FFmpegError, OSError, ValueError) as exc:
        return dst, 0.0, f"{src}: {type(exc).__name__}: {exc}"


def prepare(manifest_path: str | Path, out: str | Path, recipe: Recipe, *,
            processes: int = 1) -> dict[str, Any]:
    manifest = load_manifest(manifest_path)
    out = Path(out).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    _claim(out, recipe)
    targets = [str(out / output_name(row, i, manifest)) for i, row in enumerate(manifest.rows)]
    todo = [(str(row.path), dst, recipe) for row, dst in zip(manifest.rows, targets, strict=True)
            if not os.path.exists(dst)]
    skipped = len(targets) - len(todo)
    failures: list[str] = []
    psnrs: list[float] = []
    started = time.monotonic()
    with progress_bar(len(targets)) as shown:
        shown(skipped)
        ctx = multiprocessing.get_context("spawn")
        with ctx.Pool(max(1, processes), initializer=_ignore_interrupts) as pool:
            for n, (_, psnr, error) in enumerate(pool.imap_unordered(_encode_job, todo), 1):
                if error:
                    failures.append(error)
                else:
                    psnrs.append(psnr)
                shown(skipped + n)
    new_manifest = _write_manifest(manifest, out, [Path(t) for t in targets])
    done = [(str(r.path), t) for r, t in zip(manifest.rows, targets, strict=True)
            if os.path.exists(t)]
    return {
        "videos": len(targets), "encoded": len(todo) - len(failures), "skipped": skipped,
        "failed": failures, "seconds": round(time.monotonic() - started, 1),
        "manifest": str(new_manifest), "rows_written": sum(1 for _ in done),
        "bytes_before": sum(os.path.getsize(s) for s, _ in done),
        "bytes_after": sum(os.path.getsize(t) for _, t in done),
        "psnr_db": round(float(np.mean(psnrs)), 1) if psnrs else None,
        "decode_ms_per_clip_before": _clip_cost([s for s, _ in done]),
        "decode_ms_per_clip_after": _clip_cost([t for _, t in done]),
    }


def _claim(out: Path, recipe: Recipe) -> None:
    """Record DIR's recipe, or check that this run asks for the one DIR was made with: a
    file already done is skipped, so another recipe would silently keep the old copies."""
    path = out / RECIPE_FILE
    wanted = dataclasses.asdict(recipe)
    if not path.exists():
        if any(out.rglob("*.mp4")):
            raise ValueError(f"{out} holds copies whose settings were not recorded (made "
                             f"before {RECIPE_FILE}); use another --out")
        path.write_text(json.dumps(wanted) + "\n")
        return
    try:
        made = json.loads(path.read_text())
    except ValueError:
        made = None
    if not isinstance(made, dict):
        raise ValueError(f"{path} is not the settings prepare writes; use another --out")
    if made != wanted:
        differ = [f"--{k.replace('_', '-')} {made.get(k)} (this run: {v})"
                  for k, v in wanted.items() if made.get(k) != v]
        raise ValueError(f"{out} holds copies made with {', '.join(differ)}; use another "
                         "--out, or the same settings to resume")


def _write_manifest(manifest: Manifest, out: Path, targets: list[Path]) -> Path:
    """The rows whose copy exists, pointing at it, with their labels and the rest as written."""
    rows = [(row, target) for row, target in zip(manifest.rows, targets, strict=True)
            if target.exists()]
    names = {v: k for k, v in manifest.classes.items()}
    jsonl = manifest.source.suffix.lower() == ".jsonl"
    path = out / ("manifest.jsonl" if jsonl else "manifest.csv")
    tmp = path.with_suffix(".partial")
    with open(tmp, "w", newline="") as fh:
        if jsonl:
            for row, target in rows:
                obj = {"path": os.path.relpath(target, out), "label": row.label}
                obj |= {k: v for k, v in (("start", row.start_s), ("end", row.end_s))
                        if v is not None}
                if manifest.weighted:
                    obj["weight"] = row.weight
                fh.write(json.dumps(obj) + "\n")
        else:
            writer = csv.writer(fh)
            columns = ["path", "label", "start", "end"] + (["weight"] if manifest.weighted else [])
            writer.writerow(columns)
            for row, target in rows:
                label = names.get(row.label, row.label) if manifest.classes else row.label
                cells = [os.path.relpath(target, out), label,
                         "" if row.start_s is None else row.start_s,
                         "" if row.end_s is None else row.end_s]
                writer.writerow(cells + ([row.weight] if manifest.weighted else []))
    os.replace(tmp, path)
    return path


def _clip_cost(paths: list[str]) -> float:
    """CPU ms per random 16-frame clip, decoded as a worker does, on a few of `paths`."""
    infos = []
    for path in paths[:_TIMED_CLIPS]:
        try:
            infos.append((path, probe(path)))
        except Exception:
            continue
    rate = estimate_clips_per_s(infos, Settings(), seed=1)
    return round(1000.0 / rate, 1) if rate else 0.0


def render(report: dict[str, Any]) -> str:
    before, after = report["bytes_before"], report["bytes_after"]
    cost_before, cost_after = (report["decode_ms_per_clip_before"],
                               report["decode_ms_per_clip_after"])
    lines = [
        f"prepared {report['encoded']} videos in {report['seconds']} s "
        f"({report['skipped']} already done, {len(report['failed'])} failed)",
        f"manifest      {report['manifest']} ({report['rows_written']} rows)",
        f"disk          {_size(before)} -> {_size(after)}",
        f"decode        {cost_before} -> {cost_after} ms of CPU per 16-frame clip"
        + _speedup(cost_before, cost_after),
        f"fidelity      PSNR {report['psnr_db']} dB against the source at the copy's size"
        if report["psnr_db"] is not None else "fidelity      - (nothing encoded this run)",
    ]
    lines += [f"  failed: {f}" for f in report["failed"]]
    return "\n".join(lines)


def _size(n: int) -> str:
    return f"{n / 2**20:.1f} MiB" if n >= 2**20 else f"{n / 2**10:.1f} KiB"


def _speedup(before: float, after: float) -> str:
    if not before or not after:
        return ""
    return (f" ({before / after:.1f}x faster)" if before >= after
            else f" ({after / before:.1f}x slower)")
