"""Crops, flips, rotation and normalisation through a real daemon: every sample equals an
independent reference cut at its provenance's box, and batches are the same bytes whatever
the worker count."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pytest

from tests.support import CLIP, HEIGHT, SIZE, WIDTH, epoch_bytes, reference_sample, video_frames
from vidring.daemon.demo import write_video
from vidring.loader import ClipDataset

if TYPE_CHECKING:
    from pathlib import Path

    from tests.support import Daemons

# Short side 32..44 of the 48-pixel side, a random 24x32 crop, flips.
AUGMENT = ["--resize", "short_side", "--scale-jitter", "32:44", "--crop", "random", "--flip"]
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
NORMALISE = ["--mean", ",".join(map(str, MEAN)), "--std", ",".join(map(str, STD))]


def _check_epoch(ds: ClipDataset, to_float: bool = False,
                 interpolation: str = "area") -> list[np.void]:
    """Compare every sample of one epoch with its reference; the provenance rows seen."""
    rows = []
    for i in range(len(ds)):
        batch = ds.batch(i)
        for sample, x, prov in zip(batch.samples(), batch.x, batch.provenance, strict=True):
            ref = reference_sample(sample.path, prov, SIZE, interpolation)
            if to_float:
                want = (ref / 255.0 - np.array(MEAN)) / np.array(STD)
                np.testing.assert_allclose(x, want, rtol=0, atol=1e-6)
            else:
                np.testing.assert_array_equal(x, ref, err_msg=f"{sample}")
            rows.append(prov.copy())
    ds.set_epoch(ds.epoch + 1)
    return rows


def test_crops_and_flips_equal_the_reference(daemons: Daemons, manifest: Path) -> None:
    name = daemons.start(manifest, workers=2, extra=AUGMENT)
    with ClipDataset(name) as ds:
        rows = _check_epoch(ds) + _check_epoch(ds)
        status = ds.status()
    boxes = {tuple(r["crop"]) for r in rows}
    assert len(boxes) > 5  # random places and sizes
    assert all(r["crop"][2] <= HEIGHT and r["crop"][3] <= WIDTH for r in rows)
    assert 0 < sum(int(r["flip"]) for r in rows) < len(rows)
    assert status.preprocess == "short side 32:44, random crop 24x32, flip, area"


def test_another_filter_is_used_as_asked(daemons: Daemons, manifest: Path) -> None:
    name = daemons.start(manifest, workers=2, extra=[*AUGMENT, "--interpolation", "bicubic"])
    with ClipDataset(name) as ds:
        _check_epoch(ds, interpolation="bicubic")
        with pytest.raises(AssertionError):
            _check_epoch(ds)  # the default filter gives other bytes


def test_normalised_floats_within_1e_6(daemons: Daemons, manifest: Path) -> None:
    name = daemons.start(manifest, workers=2, dtype="float32", extra=AUGMENT + NORMALISE)
    with ClipDataset(name) as ds:
        assert ds.layout.dtype == "float32"
        _check_epoch(ds, to_float=True)


def test_float16_is_the_float32_value_rounded(daemons: Daemons, manifest: Path) -> None:
    half = daemons.start(manifest, workers=1, dtype="float16", extra=AUGMENT + NORMALISE)
    full = daemons.start(manifest, workers=1, dtype="float32", extra=AUGMENT + NORMALISE)
    with ClipDataset(half) as h, ClipDataset(full) as f:
        for i in range(len(h)):
            x16, x32 = h.batch(i).x, f.batch(i).x
            assert x16.dtype == np.float16
            np.testing.assert_array_equal(x16, x32.astype(np.float16))


def test_same_bytes_for_1_and_3_workers_and_new_looks_each_epoch(daemons: Daemons,
                                                                   manifest: Path) -> None:
    extra = [*AUGMENT, *NORMALISE, "--clips-per-video", "4"]
    one = daemons.start(manifest, workers=1, dtype="float32", extra=extra)
    three = daemons.start(manifest, workers=3, dtype="float32", extra=extra)
    with ClipDataset(one) as a, ClipDataset(three) as b:
        epochs_a = [epoch_bytes(a), epoch_bytes(a)]
        epochs_b = [epoch_bytes(b), epoch_bytes(b)]
        layout = a.layout
    assert epochs_a == epochs_b
    prov_dtype = layout.provenance_dtype
    first, second = (np.concatenate([np.frombuffer(p, prov_dtype) for _, _, p in epoch])
                     for epoch in epochs_a)
    # The same sample position gets a new crop in the next epoch.
    assert (first["crop"] != second["crop"]).any(axis=1).mean() > 0.5
    flips = np.concatenate([first["flip"], second["flip"]])
    assert 0.3 < flips.mean() < 0.7, f"{flips.sum()} of {len(flips)} flipped"


def _upright_content(index: int, n_frames: int) -> np.ndarray:
    """Test frames with a bright block in the top-left corner of the upright picture."""
    frames = video_frames(index, n_frames)
    frames[:, :12, :16] = 255
    return frames


@pytest.mark.parametrize("rotation", [90, 270])
def test_rotated_videos_are_served_upright(daemons: Daemons, tmp_path: Path,
                                           rotation: int) -> None:
    turns = rotation // 90
    manifest = tmp_path / "m.csv"
    rows = []
    for i in range(4):
        stored = np.ascontiguousarray(np.rot90(_upright_content(i, 20), -turns, axes=(1, 2)))
        write_video(tmp_path / f"r{i}.mp4", stored, gop=10, rotation=rotation)
        rows.append(f"r{i}.mp4,{i}\n")
    manifest.write_text("".join(rows))
    plain = daemons.start(manifest, workers=1, batch_size=2)
    cut = daemons.start(manifest, workers=2, batch_size=2, extra=AUGMENT)
    with ClipDataset(plain) as ds:
        for i in range(len(ds)):
            batch = ds.batch(i)
            for x, prov in zip(batch.x, batch.provenance, strict=True):
                assert int(prov["rotation"]) == rotation
                assert tuple(prov["crop"]) == (0, 0, HEIGHT, WIDTH)  # the upright frame
                # Upright: the block is at the top left, at 24x32 a 6x8 corner.
                assert x[:, :5, :7].mean() > 240
                assert x[:, 12:, 16:].mean() < 200
                ref = reference_sample(tmp_path / f"r{int(prov['video_index'])}.mp4", prov, SIZE)
                np.testing.assert_array_equal(x, ref)
    with ClipDataset(cut) as ds:
        rows = _check_epoch(ds) + _check_epoch(ds)
    assert len({tuple(r["crop"]) for r in rows}) > 1
    assert rows[0]["frames"].shape[0] == CLIP
