"""Labels as targets: class names, one-hot, multi-hot, regression and weights, CSV and JSONL;
a row that does not fit its mode names its line and field."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pytest

from vidring.daemon.manifest import ManifestError, load_manifest
from vidring.daemon.targets import targets

if TYPE_CHECKING:
    from pathlib import Path


def _csv(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "m.csv"
    path.write_text(text)
    return path


def _jsonl(tmp_path: Path, *lines: str) -> Path:
    path = tmp_path / "m.jsonl"
    path.write_text("".join(line + "\n" for line in lines))
    return path


def test_class_names_are_numbered_in_sorted_order(tmp_path: Path) -> None:
    t = targets(load_manifest(_csv(tmp_path, "path,label\na.mp4,walk\nb.mp4,jump\nc.mp4,3\n")))
    assert t.classes == {"3": 0, "jump": 1, "walk": 2}
    assert t.y.dtype == np.int32
    assert t.y.tolist() == [2, 1, 0]
    assert t.width == 0


def test_onehot_from_names_and_from_indices(tmp_path: Path) -> None:
    t = targets(load_manifest(_csv(tmp_path, "a.mp4,b\nb.mp4,a\n")), "onehot")
    assert t.y.dtype == np.float32
    assert t.y.tolist() == [[0, 1], [1, 0]]
    t = targets(load_manifest(_jsonl(tmp_path, '{"path": "a", "label": 2}',
                                     '{"path": "b", "label": 0}')), "onehot")
    assert t.y.tolist() == [[0, 0, 1], [1, 0, 0]]
    assert t.classes == {}


def test_multi_hot_csv_and_jsonl_agree(tmp_path: Path) -> None:
    csv = targets(load_manifest(_csv(tmp_path, "path,label\na,cat;dog\nb,\nc,dog\n")), "multi")
    jl = targets(load_manifest(_jsonl(tmp_path, '{"path": "a", "label": ["cat", "dog"]}',
                                      '{"path": "b", "label": []}',
                                      '{"path": "c", "label": "dog"}')), "multi")
    for t in (csv, jl):
        assert t.classes == {"cat": 0, "dog": 1}
        assert t.y.tolist() == [[1, 1], [0, 0], [0, 1]]


def test_regression_rows_of_one_width(tmp_path: Path) -> None:
    t = targets(load_manifest(_csv(tmp_path, "a.mp4,0.5;1\nb.mp4,-2;3e-1\n")), "regression")
    assert t.y.dtype == np.float32
    np.testing.assert_allclose(t.y, [[0.5, 1.0], [-2.0, 0.3]])
    t = targets(load_manifest(_jsonl(tmp_path, '{"path": "a", "label": 1.5}')), "regression")
    assert t.y.tolist() == [[1.5]]


def test_weights_from_a_column_or_a_key(tmp_path: Path) -> None:
    m = load_manifest(_csv(tmp_path, "weight,path,label\n0.5,a,1\n2,b,0\n"))
    assert m.weighted
    assert targets(m).weights.tolist() == [0.5, 2.0]
    m = load_manifest(_jsonl(tmp_path, '{"path": "a", "label": 1, "weight": 0}',
                             '{"path": "b", "label": 0}'))
    assert m.weighted
    assert targets(m).weights.tolist() == [0.0, 1.0]
    assert not load_manifest(_csv(tmp_path, "a.mp4,1\n")).weighted


@pytest.mark.parametrize(
    ("mode", "lines", "complaint"),
    [
        ("index", ['{"path": "a", "label": [1, 2]}'], "line 1: field 'label' is a list"),
        ("index", ['{"path": "a", "label": 1.5}'], "line 1: field 'label' must be a class"),
        ("onehot", ['{"path": "a", "label": 0}', '{"path": "b", "label": -1}'],
         r"line 2: field 'label' -1 must be a class index in 0\.\.99999"),
        ("multi", ['{"path": "a", "label": [0, true]}'], "line 1: field 'label' must be a"),
        ("regression", ['{"path": "a", "label": [1, 2]}', '{"path": "b", "label": [1]}'],
         "line 2: field 'label' has 1 numbers, the rows before it 2"),
        ("regression", ['{"path": "a", "label": "tall"}'],
         "line 1: field 'label' must be numbers"),
        ("regression", ['{"path": "a", "label": NaN}'], "line 1: field 'label' must be numbers"),
    ],
)
def test_a_wrong_row_names_line_and_field(tmp_path: Path, mode: str, lines: list[str],
                                          complaint: str) -> None:
    path = _jsonl(tmp_path, *lines)
    with pytest.raises(ManifestError, match=complaint) as info:
        targets(load_manifest(path), mode)
    assert str(path) in str(info.value)


def test_folder_labels_are_classes_not_numbers(tmp_path: Path) -> None:
    (tmp_path / "walk").mkdir()
    (tmp_path / "walk" / "a.mp4").write_bytes(b"")
    m = load_manifest(tmp_path)
    assert targets(m, "onehot").y.tolist() == [[1.0]]
    with pytest.raises(ManifestError, match="not numbers for --labels regression"):
        targets(m, "regression")
