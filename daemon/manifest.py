"""The dataset: a CSV / JSONL manifest or a class-per-folder tree -> rows.

CSV: ``path,label[,start,end[,weight]]`` per line, or any of those columns in
any order under a header line naming them.  A first line is data when its first
cell is a video path (a known suffix, or a file that is there), else it is the
header, and an unknown name in it is an error: a misspelt header is never read
as a video.  JSONL: one object per line with
the same keys.  A relative path is relative to the manifest's folder.
`start` and `end` (seconds from the video's first frame, either may be left
out) bound the clips of that row to a segment of its video; `weight` (>= 0,
default 1) is the row's sample weight.  A label is kept as written here and
read by targets.py (a class index or name, several, or numbers).  Folder: one
sub-folder per class, class names mapped to ints in sorted order.  A bad row,
or a column or key that is not one of these, is an error naming the file,
line and field: nothing is silently dropped.
"""

from __future__ import annotations

import codecs
import csv
import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vidring.loader.status import printable

if TYPE_CHECKING:
    from collections.abc import Sequence

VIDEO_SUFFIXES = frozenset(
    {".mp4", ".m4v", ".mkv", ".mov", ".avi", ".webm", ".mpg", ".mpeg", ".ts", ".m2ts", ".mts",
     ".flv", ".wmv", ".asf", ".3gp", ".3g2", ".ogv", ".mxf", ".vob", ".f4v", ".y4m"})
COLUMNS = ("path", "label", "start", "end", "weight")


class ManifestError(ValueError):
    """A manifest that cannot be read; the message names file, line and field."""


@dataclass(frozen=True, slots=True)
class VideoRow:
    path: Path
    label: Any  # as written: an int or a str (a CSV cell, a class name), or a JSON list
    start_s: float | None = None  # clips lie in [start_s, end_s) of the video
    end_s: float | None = None
    weight: float = 1.0
    where: str = ""  # "manifest FILE, line N", for errors about this row


@dataclass(frozen=True, slots=True)
class Manifest:
    source: Path
    rows: tuple[VideoRow, ...]
    # class name -> label, for folder datasets; empty for explicit labels.
    classes: dict[str, int] = field(default_factory=dict)
    weighted: bool = False  # a `weight` column or key was given

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


def _from_csv(src: Path) -> Manifest:
    rows: list[VideoRow] = []
    columns: list[str] | None = None
    weighted = False
    with io.StringIO(_text(src), newline="") as fh:
        for lineno, record in enumerate(csv.reader(fh), start=1):
            where = f"manifest {src}, line {lineno}"
            if not record or all(not cell.strip() for cell in record):
                continue
            if columns is None and not rows and not _is_video(record[0], src.parent):
                names = [c.strip().lower() for c in record]
                if not set(names) & set(COLUMNS):
                    raise ManifestError(
                        f"{where}: {record[0].strip()!r} is neither a video file nor a column "
                        f"name ({', '.join(COLUMNS)}); a manifest whose first video is "
                        "missing needs a header line, such as 'path,label'")
                columns = _header(names, where)
                weighted = "weight" in columns
                continue
            if columns is not None:
                if len(record) != len(columns):
                    raise ManifestError(f"{where}: expected {len(columns)} fields "
                                        f"({','.join(columns)}), got {len(record)}")
                cells = dict(zip(columns, record, strict=True))
            elif len(record) in (2, 4, 5):
                cells = dict(zip(COLUMNS, record, strict=False))
                weighted = weighted or len(record) == 5
            else:
                raise ManifestError(f"{where}: expected 2 fields 'path,label', 4 "
                                    "'path,label,start,end' or 5 (and weight), or a header "
                                    f"line naming the columns; got {len(record)}")
            rows.append(_row(cells, src.parent, where))
    return Manifest(src, tuple(rows), weighted=weighted)


def _is_video(cell: str, base: Path) -> bool:
    """Whether a first line's first cell is a video path (a known suffix, or a file that is
    there): then the line is data, whatever its label.  Else it is the header, so that a
    misspelt one ('file,label') is an error, not a missing video and a class 'label'."""
    path = Path(cell.strip()).expanduser()
    return path.suffix.lower() in VIDEO_SUFFIXES or (base / path).is_file()


def _text(src: Path) -> str:
    """The manifest as text; bytes that are not UTF-8 are an error naming their line."""
    data = src.read_bytes().removeprefix(codecs.BOM_UTF8)  # as spreadsheets save CSV
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise ManifestError(f"manifest {src}, line {line}: byte 0x{data[exc.start]:02x} is not "
                            "UTF-8; save the manifest as UTF-8") from None


def _header(names: list[str], where: str) -> list[str]:
    for name in names:
        if name not in COLUMNS:
            raise ManifestError(f"{where}: unknown column {name!r} (known: "
                                f"{', '.join(COLUMNS)})")
    if len(set(names)) != len(names):
        raise ManifestError(f"{where}: a column is named twice in {','.join(names)}")
    if "label" not in names:
        raise ManifestError(f"{where}: the header names no 'label' column")
    return names


def _from_jsonl(src: Path) -> Manifest:
    rows: list[VideoRow] = []
    weighted = False
    with io.StringIO(_text(src)) as fh:
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
            for key in obj:
                if key not in COLUMNS:
                    raise ManifestError(f"{where}: unknown field {key!r} (known: "
                                        f"{', '.join(COLUMNS)})")
            weighted = weighted or "weight" in obj
            rows.append(_row(obj, src.parent, where))
    return Manifest(src, tuple(rows), weighted=weighted)


def _row(cells: dict[str, Any], base: Path, where: str) -> VideoRow:
    """One row from its fields by name (CSV cells or a JSON object)."""
    for key in ("path", "label"):
        if key not in cells:
            raise ManifestError(f"{where}: missing field {key!r}")
    start, end = _span([cells.get("start"), cells.get("end")], where)
    weight = cells.get("weight")
    return VideoRow(_path(cells["path"], base, where), cells["label"], start, end,
                    1.0 if weight is None else _weight(weight, where), where)


def _weight(value: object, where: str) -> float:
    problem = f"{where}: field 'weight' must be a number >= 0, got {value!r}"
    if isinstance(value, bool):
        raise ManifestError(problem)
    try:
        weight = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ManifestError(problem) from None
    if not (weight >= 0 and math.isfinite(weight)):
        raise ManifestError(problem)
    return weight


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


def _from_folder(src: Path) -> Manifest:
    class_dirs = sorted(p for p in src.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not class_dirs:
        raise ManifestError(f"dataset folder {src}: no class sub-folders")
    # Names that are not UTF-8 are shown with \xNN escapes: they travel as JSON.
    classes = {printable(d.name): i for i, d in enumerate(class_dirs)}
    rows = [
        VideoRow(f, classes[printable(d.name)], where=f"dataset folder {src}, file {f}")
        for d in class_dirs
        for f in sorted(d.rglob("*"))
        if f.is_file() and f.suffix.lower() in VIDEO_SUFFIXES
    ]
    return Manifest(src, tuple(rows), classes)
