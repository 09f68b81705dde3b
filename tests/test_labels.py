"""Every kind of target from the manifest through `fit`: class names, one-hot, multi-hot,
regression and sample weights; a wrong row of each kind stops `serve` naming line and field."""

from __future__ import annotations

import math
import os
from typing import TYPE_CHECKING, Any

import keras
import numpy as np
import pytest

from tests.support import CLIP, N_VIDEOS, SIZE, cli
from vidring.loader import ClipDataset

if TYPE_CHECKING:
    from pathlib import Path

    from tests.support import Daemons

pytestmark = pytest.mark.slow

NAMES = ("jump", "run", "walk")


def _label(mode: str, video: int) -> str:
    if mode in ("index", "onehot"):
        return NAMES[video % 3]
    if mode == "multi":
        return ";".join(NAMES[k] for k in range(3) if (video >> k) & 1)
    return f"{video * 0.5};{-video}"


def _expected(mode: str, video: int) -> Any:
    if mode == "index":
        return video % 3  # the names sorted: jump=0, run=1, walk=2
    if mode == "onehot":
        return np.eye(3, dtype=np.float32)[video % 3]
    if mode == "multi":
        return np.array([(video >> k) & 1 for k in range(3)], np.float32)
    return np.array([video * 0.5, -video], np.float32)


HEADS = {
    "index": (keras.layers.Dense(3, activation="softmax"), "sparse_categorical_crossentropy"),
    "onehot": (keras.layers.Dense(3, activation="softmax"), "categorical_crossentropy"),
    "multi": (keras.layers.Dense(3, activation="sigmoid"), "binary_crossentropy"),
    "regression": (keras.layers.Dense(2), "mse"),
}


@pytest.mark.parametrize("mode", list(HEADS))
def test_targets_and_weights_reach_fit(daemons: Daemons, video_dir: Path, tmp_path: Path,
                                       mode: str) -> None:
    manifest = tmp_path / "m.csv"
    lines = ["path,label,weight"]
    lines += [f"{video_dir / f'v{i:02d}.mp4'},{_label(mode, i)},{0.5 + i % 2}"
              for i in range(N_VIDEOS)]
    manifest.write_text("\n".join(lines) + "\n")
    name = daemons.start(manifest, workers=2, dtype="float32", extra=["--labels", mode])
    with ClipDataset(name) as ds:
        if mode != "regression":
            assert ds.class_names == list(NAMES)
        assert ds.status().weights
        x, y, w = ds[0]
        assert y.shape == ((4,) if mode == "index" else (4, 2 if mode == "regression" else 3))
        assert y.dtype == (np.int32 if mode == "index" else np.float32)
        del x, y, w
        head, loss = HEADS[mode]
        model = keras.Sequential([keras.Input((CLIP, *SIZE, 3)), keras.layers.Flatten(), head])
        model.compile("sgd", loss)
        history = model.fit(ds, epochs=1, verbose=0)
        assert math.isfinite(history.history["loss"][0])
        for i in range(len(ds)):
            batch = ds.batch(i)
            for sample, y_row, w_row in zip(batch.samples(), batch.y, batch.w, strict=True):
                np.testing.assert_array_equal(y_row, _expected(mode, sample.video_index))
                assert w_row == 0.5 + sample.video_index % 2
                assert sample.path == str(video_dir / f"v{sample.video_index:02d}.mp4")


@pytest.mark.parametrize(
    ("mode", "row", "complaint"),
    [
        ("index", "a.mp4,run;walk", "line 3: field 'label' 'run;walk' holds several labels"),
        ("onehot", "a.mp4,", "line 3: field 'label' is empty"),
        ("multi", "a.mp4,3;-4", "line 3: field 'label' -4 must be a class index"),
        ("regression", "a.mp4,1.5", "line 3: field 'label' has 1 numbers, the rows before it 2"),
    ],
)
def test_a_wrong_row_stops_serve_naming_line_and_field(tmp_path: Path, mode: str, row: str,
                                                       complaint: str) -> None:
    manifest = tmp_path / "m.csv"
    first = "b.mp4,0.5;1" if mode == "regression" else "b.mp4,2"
    manifest.write_text(f"path,label\n{first}\n{row}\n")
    done = cli("serve", "--name", f"bad-{os.getpid()}-{mode}", "--manifest", str(manifest),
               "--batch-size", "1", "--clip-length", "2", "--size", "8x8", "--labels", mode)
    assert done.returncode != 0
    assert complaint in done.stderr
    assert str(manifest) in done.stderr
