"""Manifests: CSV, JSONL and class folders; a bad row names file, line and field."""

from __future__ import annotations

from pathlib import Path

import pytest

from vidring.daemon.manifest import ManifestError, load_manifest
from vidring.daemon.targets import targets


def test_csv_relative_and_absolute_paths(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    csv = tmp_path / "sub" / "m.csv"
    csv.write_text("path,label\na.mp4,3\n/abs/b.mp4,4\n\n")
    m = load_manifest(csv)
    assert [r.path for r in m.rows] == [tmp_path / "sub" / "a.mp4", Path("/abs/b.mp4")]
    assert targets(m).y.tolist() == [3, 4]


def test_csv_without_header(tmp_path: Path) -> None:
    csv = tmp_path / "m.csv"
    csv.write_text("a.mp4,1\n")
    assert targets(load_manifest(csv)).y.tolist() == [1]
    (tmp_path / "clip-0001").touch()  # a video without a suffix, known by being there
    csv.write_text("clip-0001,0\nb.mp4,1\n")
    assert [r.path.name for r in load_manifest(csv).rows] == ["clip-0001", "b.mp4"]
    csv.write_text("a.mp4,start\nb.mp4,end\n")  # classes named like columns: still data
    assert [r.label for r in load_manifest(csv).rows] == ["start", "end"]
    (tmp_path / "videos").mkdir()  # a folder named like a misspelt header's first cell
    csv.write_text("videos,class\na.mp4,1\n")
    with pytest.raises(ManifestError, match="line 1: 'videos' is neither a video file"):
        load_manifest(csv)


def test_csv_saved_with_a_byte_order_mark(tmp_path: Path) -> None:
    csv = tmp_path / "m.csv"
    csv.write_bytes(b"\xef\xbb\xbfpath,label\na.mp4,3\n")
    assert targets(load_manifest(csv)).y.tolist() == [3]


@pytest.mark.parametrize(
    ("text", "complaint"),
    [
        ("path,label\na.mp4\n", r"line 2: expected 2 fields"),
        ("path,label\n ,1\n", r"line 2: field 'path' is empty"),
        ("path,label\na.mp4,99999999999\n", r"line 2: field 'label' .* int32"),
        ("path,label\na.mp4,\n", r"line 2: field 'label' is empty"),
        ("path,label\na.mp4,cat;dog\n", r"line 2: field 'label' 'cat;dog' holds several"),
        ("path,label,size\na.mp4,1,3\n", r"line 1: unknown column 'size'"),
        ("file,label\na.mp4,1\n", r"line 1: unknown column 'file'"),
        ("filename,class\na.mp4,1\n", r"line 1: 'filename' is neither a video file nor a "
                                       r"column name \(path, label.*needs a header line"),
        ("path,label,weight\na.mp4,1,-2\n", r"line 2: field 'weight' must be a number >= 0"),
        ("path,label,weight\na.mp4,1,heavy\n", r"line 2: field 'weight' must be a number"),
        ("path,label\n", "no videos"),
    ],
)
def test_csv_errors_name_line_and_field(tmp_path: Path, text: str, complaint: str) -> None:
    csv = tmp_path / "m.csv"
    csv.write_text(text)
    with pytest.raises(ManifestError, match=complaint) as info:
        targets(load_manifest(csv))
    assert str(csv) in str(info.value)


def test_jsonl(tmp_path: Path) -> None:
    jl = tmp_path / "m.jsonl"
    jl.write_text('{"path": "a.mp4", "label": 2}\n{"path": "b.mp4"}\n')
    with pytest.raises(ManifestError, match="line 2: missing field 'label'"):
        load_manifest(jl)
    jl.write_text('{"path": "a.mp4", "label": 2}\n')
    assert targets(load_manifest(jl)).y.tolist() == [2]
    jl.write_text('{"path": "a.mp4", "label": 2, "camera": "left"}\n')
    with pytest.raises(ManifestError, match="line 1: unknown field 'camera'"):
        load_manifest(jl)


def test_class_folders_map_sorted_names_to_ints(tmp_path: Path) -> None:
    for cls, files in {"walk": ["x.mp4", "y.MKV"], "jump": ["z.mp4"], "empty": []}.items():
        (tmp_path / cls).mkdir()
        for f in files:
            (tmp_path / cls / f).write_bytes(b"")
    (tmp_path / "walk" / "notes.txt").write_text("not a video")
    m = load_manifest(tmp_path)
    assert m.classes == {"empty": 0, "jump": 1, "walk": 2}
    labels = targets(m)
    assert labels.classes == m.classes
    assert sorted((r.path.name, int(y)) for r, y in zip(m.rows, labels.y, strict=True)) == [
        ("x.mp4", 2), ("y.MKV", 2), ("z.mp4", 1)]


def test_missing_manifest(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match="no such file"):
        load_manifest(tmp_path / "nope.csv")


def test_start_and_end_seconds_in_csv_and_jsonl(tmp_path: Path) -> None:
    csv = tmp_path / "m.csv"
    csv.write_text("path,label,start,end\na.mp4,1,1.5,4\nb.mp4,2,,\nc.mp4,3,2,\n")
    rows = load_manifest(csv).rows
    assert [(r.start_s, r.end_s) for r in rows] == [(1.5, 4.0), (None, None), (2.0, None)]
    jsonl = tmp_path / "m.jsonl"
    jsonl.write_text('{"path": "a.mp4", "label": 0, "start": 0.5}\n'
                     '{"path": "b.mp4", "label": 1, "end": 3}\n')
    rows = load_manifest(jsonl).rows
    assert [(r.start_s, r.end_s) for r in rows] == [(0.5, None), (None, 3.0)]


@pytest.mark.parametrize(
    ("text", "complaint"),
    [
        ("a.mp4,1,x,2\n", r"line 1: field 'start' must be seconds, got 'x'"),
        ("a.mp4,1,-1,2\n", r"line 1: field 'start' must be >= 0 seconds"),
        ("a.mp4,1,3,2\n", r"line 1: 'end' 2 must come after 'start' 3"),
        ("a.mp4,1,3\n", r"line 1: expected 2 fields 'path,label', 4"),
    ],
)
def test_bad_start_or_end_names_line_and_field(tmp_path: Path, text: str,
                                               complaint: str) -> None:
    csv = tmp_path / "m.csv"
    csv.write_text(text)
    with pytest.raises(ManifestError, match=complaint):
        load_manifest(csv)


def test_a_manifest_that_is_not_utf8_names_its_line(tmp_path: Path) -> None:
    csv = tmp_path / "m.csv"
    csv.write_bytes(b"path,label\na.mp4,1\nb\xff.mp4,2\n")
    with pytest.raises(ManifestError, match=r"m\.csv, line 3: byte 0xff is not UTF-8"):
        load_manifest(csv)
