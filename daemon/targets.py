"""A manifest's labels as training targets (`vidring serve --labels`).

- `index` (the default): one label per row; y is int32 (B,).  A label is a class
  index, or a class name: when any label of the manifest is not an integer, every
  label is a name, and names are numbered in sorted order (the map is in `hello`,
  and ClipDataset.class_names).
- `onehot`: the same labels; y is float32 (B, K), one-hot.
- `multi`: any number of labels per row (CSV: separated by ';', JSONL: a list);
  y is float32 (B, K), multi-hot.  A row may have none.
- `regression`: numbers (CSV: separated by ';', JSONL: a number or a list); y is
  float32 (B, D), the same D for every row.
K is the number of class names, or the largest class index + 1.  A manifest's
`weight` column becomes each sample's weight.  A label that does not fit its
mode is an error naming the row's file, line and field.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from vidring.daemon.manifest import ManifestError
from vidring.loader.protocol import INT32_LIMIT

if TYPE_CHECKING:
    from vidring.daemon.manifest import Manifest, VideoRow

LABELS = ("index", "onehot", "multi", "regression")
SEPARATOR = ";"
MAX_CLASSES = 100_000  # a one-hot or multi-hot row wider than this is a mistake
_INTEGER = re.compile(r"[+-]?\d+")


@dataclass(frozen=True, slots=True)
class Targets:
    y: np.ndarray  # (N,) int32, or (N, K) float32
    classes: dict[str, int]  # class name -> index; empty when labels are numbers
    weights: np.ndarray  # (N,) float32
    mode: str

    @property
    def width(self) -> int:
        """0 when y is (N,); K when it is (N, K)."""
        return 0 if self.y.ndim == 1 else int(self.y.shape[1])


def targets(manifest: Manifest, mode: str = "index") -> Targets:
    if mode not in LABELS:
        raise ValueError(f"labels: must be one of {', '.join(LABELS)}, got {mode!r}")
    weights = np.array([row.weight for row in manifest.rows], dtype=np.float32)
    if mode == "regression":
        if manifest.classes:
            raise ManifestError(f"dataset folder {manifest.source}: its labels are classes, "
                                "not numbers for --labels regression")
        return Targets(_numbers(manifest.rows), {}, weights, mode)
    per_row = [_classes_of(row, several=mode == "multi") for row in manifest.rows]
    classes = dict(manifest.classes)
    if not classes and any(isinstance(v, str) for labels in per_row for v in labels):
        names = sorted({str(v) for labels in per_row for v in labels})
        classes = {name: index for index, name in enumerate(names)}
    indices = [[classes[str(v)] if classes and not manifest.classes else int(v) for v in labels]
               for labels in per_row]
    if mode == "index":
        return Targets(np.array([i[0] for i in indices], dtype=np.int32), classes, weights,
                       mode)
    width = len(classes) if classes else 1 + max((v for i in indices for v in i), default=0)
    for row, labels in zip(manifest.rows, indices, strict=True):
        for value in labels:
            if not 0 <= value < MAX_CLASSES:
                raise ManifestError(f"{row.where}: field 'label' {value} must be a class "
                                    f"index in 0..{MAX_CLASSES - 1} for --labels {mode}")
    y = np.zeros((len(indices), width), dtype=np.float32)
    for n, labels in enumerate(indices):
        y[n, labels] = 1.0
    return Targets(y, classes, weights, mode)


def _classes_of(row: VideoRow, *, several: bool) -> list[int | str]:
    """The row's labels as class indices (int) or names (str)."""
    raw = row.label
    if isinstance(raw, str):
        items: list[Any] = raw.split(SEPARATOR) if several else [raw]
        if not several and SEPARATOR in raw:
            raise ManifestError(f"{row.where}: field 'label' {raw!r} holds several labels; "
                                "use --labels multi")
        items = [item.strip() for item in items if item.strip() or not several]
    elif isinstance(raw, list):
        if not several:
            raise ManifestError(f"{row.where}: field 'label' is a list; use --labels multi")
        items = raw
    else:
        items = [raw]
    out: list[int | str] = []
    for item in items:
        if isinstance(item, bool) or not isinstance(item, (int, str)):
            raise ManifestError(f"{row.where}: field 'label' must be a class index or name, "
                                f"got {item!r}")
        if isinstance(item, str) and not item:
            raise ManifestError(f"{row.where}: field 'label' is empty")
        if isinstance(item, str) and _INTEGER.fullmatch(item):
            item = int(item)
        if isinstance(item, int) and not -INT32_LIMIT <= item < INT32_LIMIT:
            raise ManifestError(f"{row.where}: field 'label' {item} does not fit in int32")
        out.append(item)
    return out


def _numbers(rows: tuple[VideoRow, ...]) -> np.ndarray:
    values: list[list[float]] = []
    for row in rows:
        raw = row.label
        items = raw.split(SEPARATOR) if isinstance(raw, str) else (
            raw if isinstance(raw, list) else [raw])
        try:
            numbers = [float(v) for v in items if not isinstance(v, bool)]
        except (TypeError, ValueError):
            numbers = []
        if len(numbers) != len(items) or not items or not all(map(math.isfinite, numbers)):
            raise ManifestError(f"{row.where}: field 'label' must be numbers for --labels "
                                f"regression (';'-separated in a CSV), got {raw!r}")
        if values and len(numbers) != len(values[0]):
            raise ManifestError(f"{row.where}: field 'label' has {len(numbers)} numbers, the "
                                f"rows before it {len(values[0])}")
        values.append(numbers)
    return np.array(values, dtype=np.float32)
