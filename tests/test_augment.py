"""Crop boxes and flips: pure functions of (seed, epoch, sample), inside the frame, of the
output's aspect ratio, and mapped exactly between upright and stored frames."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vidring.daemon.augment import Augment, parse_jitter, place, stored_box
from vidring.daemon.config import ConfigError, build

JITTER = Augment(112, 112, "short_side", (128, 160), "random", flip=True)


@given(src_h=st.integers(112, 1080), src_w=st.integers(112, 1920), sample=st.integers(0, 10**6),
       epoch=st.integers(0, 100))
@settings(max_examples=300, deadline=None)
def test_boxes_lie_inside_the_frame_with_the_output_aspect(src_h: int, src_w: int, sample: int,
                                                            epoch: int) -> None:
    look = place(JITTER, (src_h, src_w), seed=3, epoch=epoch, sample=sample)
    y0, x0, h, w = look.box
    assert y0 >= 0
    assert y0 + h <= src_h
    assert x0 >= 0
    assert x0 + w <= src_w
    assert y0 % 2 == 0
    assert x0 % 2 == 0
    assert h % 2 == 0
    assert w % 2 == 0
    short = min(src_h, src_w)
    # S in 128..160 of the short side, so an HxW crop covers 112/160 .. 112/128 of it.
    assert short * 112 / 160 - 2 <= h <= short * 112 / 128 + 1
    assert abs(h - w) <= 2  # a square output keeps a square box
    assert look == place(JITTER, (src_h, src_w), seed=3, epoch=epoch, sample=sample)


def test_centre_crop_is_centred_and_fixed() -> None:
    aug = Augment(112, 112, "short_side", (128, 128), "center")
    looks = {place(aug, (360, 640), seed=0, epoch=e, sample=s) for e in range(3)
             for s in range(20)}
    assert len(looks) == 1
    (look,) = looks
    y0, x0, h, w = look.box
    assert (h, w) == (314, 314)  # 112 * 360 / 128 = 315, cut to even
    assert abs(y0 + h / 2 - 180) <= 1
    assert abs(x0 + w / 2 - 320) <= 1
    assert not look.flip


def test_stretch_takes_the_whole_frame() -> None:
    look = place(Augment(24, 32, flip=True), (48, 64), seed=0, epoch=0, sample=1)
    assert look.box == (0, 0, 48, 64)


def test_flips_are_half_and_epochs_differ() -> None:
    looks = [place(JITTER, (360, 640), seed=1, epoch=0, sample=s) for s in range(4000)]
    flipped = sum(look.flip for look in looks) / len(looks)
    assert 0.47 < flipped < 0.53
    later = [place(JITTER, (360, 640), seed=1, epoch=1, sample=s) for s in range(4000)]
    assert sum(a != b for a, b in zip(looks, later, strict=True)) > 3900
    assert len({look.box for look in looks}) > 1000


def test_turning_the_flip_on_keeps_the_crops() -> None:
    plain = Augment(112, 112, "short_side", (128, 160), "random")
    for s in range(50):
        assert (place(plain, (360, 640), seed=0, epoch=0, sample=s).box
                == place(JITTER, (360, 640), seed=0, epoch=0, sample=s).box)


@given(rows=st.integers(1, 12), cols=st.integers(1, 12), turns=st.integers(0, 3),
       data=st.data())
def test_stored_box_is_the_upright_box_turned_back(rows: int, cols: int, turns: int,
                                                   data: st.DataObject) -> None:
    stored = np.arange(rows * cols).reshape(rows, cols)
    upright = np.rot90(stored, turns)
    up_h, up_w = upright.shape
    y0 = data.draw(st.integers(0, up_h - 1))
    x0 = data.draw(st.integers(0, up_w - 1))
    h = data.draw(st.integers(1, up_h - y0))
    w = data.draw(st.integers(1, up_w - x0))
    sy, sx, sh, sw = stored_box((y0, x0, h, w), 90 * turns, (rows, cols))
    np.testing.assert_array_equal(np.rot90(stored[sy:sy + sh, sx:sx + sw], turns),
                                  upright[y0:y0 + h, x0:x0 + w])


@pytest.mark.parametrize(
    ("kwargs", "complaint"),
    [
        ({"resize": "short_side"}, "needs --short-side"),
        ({"resize": "short_side", "short_side": (100, 100)}, "less than the output's 112"),
        ({"resize": "short_side", "short_side": (160, 128)}, "MIN 160 is above MAX 128"),
        ({"crop": "random"}, "random needs --resize short_side"),
        ({"short_side": (128, 128)}, "need --resize short_side"),
        ({"resize": "fit"}, "resize: must be one of"),
    ],
)
def test_bad_settings_are_named(kwargs: dict, complaint: str) -> None:
    with pytest.raises(ValueError, match=complaint):
        Augment(112, 112, **kwargs)


def test_jitter_text() -> None:
    assert parse_jitter("128:160") == (128, 160)
    with pytest.raises(ValueError, match="MIN:MAX"):
        parse_jitter("128-160")


BASE = {"manifest": "m.csv", "name": "t", "batch_size": 2, "clip_length": 4, "size": "112x112",
        "workers": 1}


@pytest.mark.parametrize(
    ("settings", "complaint"),
    [
        ({"mean": "0.5,0.5,0.5"}, "mean: needs --dtype float16 or float32"),
        ({"dtype": "float32", "std": "1,0,1"}, "std: expected three numbers R,G,B > 0"),
        ({"dtype": "float32", "mean": "0.5,0.5"}, "mean: expected three numbers"),
        ({"dtype": "float32", "mean": "a,b,c"}, "mean: expected numbers R,G,B"),
        ({"resize": "short_side", "short_side": 128, "scale_jitter": "128:160"},
         "give --short-side or --scale-jitter, not both"),
        ({"resize": "short_side", "scale_jitter": "128"}, "scale_jitter: expected MIN:MAX"),
    ],
)
def test_bad_preprocessing_flags_are_named(settings: dict, complaint: str) -> None:
    with pytest.raises(ConfigError, match=complaint):
        build(BASE | settings)


def test_a_toml_list_is_a_mean() -> None:
    config = build(BASE | {"dtype": "float16", "mean": [0.4, 0.5, 0.6], "std": "0.2,0.2,0.2"})
    assert config.mean == (0.4, 0.5, 0.6)
    assert config.std == (0.2, 0.2, 0.2)
