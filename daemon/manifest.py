"""The dataset: a CSV / JSONL manifest or a class-per-folder tree -> (path, label) rows.

CSV: ``path,label[,start,end]`` per line, an optional header naming those
columns; a relative path is relative to the manifest's folder.  JSONL: one
``{"path": ..., "label": ..., "start": ..., "end": ...}`` object per line.
`start` and `end` (seconds from the video's first frame, either may be left
out) bound the clips of that row to a segment of its video.  Folder: one
sub-folder per class, class names mapped to ints in sorted order.  A bad row
is an error naming the file, line and field.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from vidring.loader.protocol import INT32_LIMIT

if TYPE_CHECKING:
    from collections.abc import Sequence

VIDEO_SUFFIXES = frozenset(
    {".mp4", ".m4v", ".mkv", ".mov", ".avi", ".webm", ".mpg", ".mpeg", ".ts"})


class ManifestError(ValueError):
    """A manifest that cannot be read; the message names file, line and field."""


@dataclass(frozen=True, slots=True)
class VideoRow:
    path: Path
    label: int
    start_s: float | None = None  # clips lie in [start_s, end_s) of the video
    end_s: float | None = None


@dataclass(frozen=True, slots=True)
class Manifest:
    source: Path
    rows: tuple[VideoRow, ...]
    # class name -> label, for folder datasets; empty for explicit labels.
    classes: dict[str, int] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.rows)


def load_manifest(source: str | Path) -> Manifest:
    src = Path(source).expanduser()
    if src.is_dir():
        manifest = _from_folder(src)
    elif not src.exists():
        raise ManifestError(f"manifest {src}: no such file or folder")
    elif src.suffix.lower() == ".jsonl":
        manifest = _from_jsonl(src)
    else:
        manifest = _from_csv(src)
    if not manifest.rows:
        raise ManifestError(f"manifest {src}: no videos in it")
    return manifest


def _label(text: object, where: str) -> int:
    if isinstance(text, bool):
        raise ManifestError(f"{where}: field 'label' must be an integer, got {text!r}")
    if isinstance(text, int):
        value = text
    else:
        try:
            value = int(str(text).strip())
        except ValueError:
            raise ManifestError(
                f"{where}: field 'label' must be an integer, got {text!r}") from None
    if not -INT32_LIMIT <= value < INT32_LIMIT:
        raise ManifestError(f"{where}: field 'label' {value} does not fit in int32")
    return value


def _span(values: Sequence[object], where: str) -> tuple[float | None, float | None]:
    """(start, end) seconds; either may be empty (the video's start or end)."""
    out: list[float | None] = []
    for name, value in zip(("start", "end"), values, strict=True):
        if value is None or (isinstance(value, str) and not value.strip()):
            out.append(None)
            continue
        try:
            seconds = float(value)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            raise ManifestError(f"{where}: field {name!r} must be seconds, got {value!r}") from None
        if not seconds >= 0 or seconds == float("inf"):
            raise ManifestError(f"{where}: field {name!r} must be >= 0 seconds, got {value!r}")
        out.append(seconds)
    start, end = out
    if start is not None and end is not None and end <= start:
        raise ManifestError(f"{where}: 'end' {end:g} must come after 'start' {start:g}")
    return start, end


def _path(text: object, base: Path, where: str) -> Path:
    if not isinstance(text, str) or not text.strip():
        raise ManifestError(f"{where}: field 'path' is empty")
    path = Path(text.strip()).expanduser()
    return path if path.is_absolute() else base / path


def _from_csv(src: Path) -> Manifest:
    rows: list[VideoRow] = []
    with src.open(newline="", encoding="utf-8") as fh:
        for lineno, record in enumerate(csv.reader(fh), start=1):
            if not record or all(not cell.strip() for cell in record):
                continue
            if lineno == 1 and [c.strip().lower() for c in record] in (
                    ["path", "label"], ["path", "label", "start", "end"]):
                continue
            where = f"manifest {src}, line {lineno}"
            if len(record) not in (2, 4):
                raise ManifestError(f"{where}: expected 2 fields 'path,label' or 4 "
                                    f"'path,label,start,end', got {len(record)}")
            start, end = _span(record[2:] or ["", ""], where)
            rows.append(VideoRow(_path(record[0], src.parent, where), _label(record[1], where),
                                 start, end))
    return Manifest(src, tuple(rows))


def _from_jsonl(src: Path) -> Manifest:
    rows: list[VideoRow] = []
    with src.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            where = f"manifest {src}, line {lineno}"
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ManifestError(f"{where}: not JSON ({exc.msg})") from None
            if not isinstance(obj, dict):
                raise ManifestError(f"{where}: expected an object with 'path' and 'label'")
            for key in ("path", "label"):
                if key not in obj:
                    raise ManifestError(f"{where}: missing field {key!r}")
            path = _path(obj["path"], src.parent, where)
            start, end = _span([obj.get("start"), obj.get("end")], where)
            rows.append(VideoRow(path, _label(obj["label"], where), start, end))
    return Manifest(src, tuple(rows))


def _from_folder(src: Path) -> Manifest:
    class_dirs = sorted(p for p in src.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not class_dirs:
        raise ManifestError(f"dataset folder {src}: no class sub-folders")
    classes = {d.name: i for i, d in enumerate(class_dirs)}
    rows = [
        VideoRow(f, classes[d.name])
        for d in class_dirs
        for f in sorted(d.rglob("*"))
        if f.is_file() and f.suffix.lower() in VIDEO_SUFFIXES
    ]
    return Manifest(src, tuple(rows), classes)
