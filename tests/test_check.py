"""`vidring check` on a folder of good and bad files: the summary a person reads, the JSON a
machine reads, and a non-zero exit when a file is bad."""

from __future__ import annotations

import json
import os
import shutil
from typing import TYPE_CHECKING

import av

from tests.support import cli

if TYPE_CHECKING:
    from pathlib import Path


def _dataset(video_dir: Path, tmp_path: Path) -> Path:
    folder = tmp_path / "data"
    (folder / "walk").mkdir(parents=True)
    (folder / "jump").mkdir()
    for i in range(4):
        shutil.copy(video_dir / f"v{i:02d}.mp4", folder / "walk" / f"w{i}.mp4")
    shutil.copy(video_dir / "v05.mp4", folder / "jump" / "short.mp4")  # 3 frames
    (folder / "jump" / "broken.mp4").write_bytes(os.urandom(2048))
    return folder


def test_check_summarises_and_names_bad_files(video_dir: Path, tmp_path: Path) -> None:
    folder = _dataset(video_dir, tmp_path)
    args = ["check", str(folder), "--clip-length", "6", "--size", "24x32", "--probe-cache",
            str(tmp_path / "cache")]
    done = cli(*args)
    assert done.returncode == 1, done.stderr  # one bad file
    out = done.stdout
    assert "checked 6 videos" in out
    assert "h264 (5)" in out
    assert "64x48 (5)" in out
    assert "30 fps (5)" in out
    assert "1 shorter than a clip (6 frames)" in out
    assert "bad files     1" in out
    assert "broken.mp4: " in out
    assert "clips/s per core" in out
    report = json.loads(cli(*args, "--json").stdout)
    assert report["videos"] == 6
    assert report["gop_frames"]["max"] == 10
    assert report["clips_per_s_per_core"] > 0
    assert [b["path"] for b in report["bad"]] == [str(folder / "jump" / "broken.mp4")]
    (folder / "jump" / "broken.mp4").unlink()
    assert cli(*args).returncode == 0


def test_check_counts_the_files_that_reopen_unanalysed(video_dir: Path, tmp_path: Path) -> None:
    import av

    folder = tmp_path / "data"
    (folder / "walk").mkdir(parents=True)
    shutil.copy(video_dir / "v00.mp4", folder / "walk" / "plain.mp4")
    with av.open(str(video_dir / "v01.mp4")) as source, \
            av.open(str(folder / "walk" / "remuxed.mkv"), "w") as out:  # Matroska: analysed
        stream = source.streams.video[0]
        copy = out.add_stream_from_template(stream)
        for packet in source.demux(stream):
            if packet.size:
                packet.stream = copy
                out.mux(packet)
    args = ["check", str(folder), "--probe-cache", str(tmp_path / "cache")]
    assert "reopening     1 of 2 open without" in cli(*args).stdout
    report = json.loads(cli(*args, "--json").stdout)
    assert (report["reopen_unanalysed"], report["probed"]) == (1, 2)


def test_check_names_a_truncated_file_once(video_dir: Path, tmp_path: Path) -> None:
    """An interrupted copy of an MP4 with its index first probes as far as its data goes;
    its last frame, cut short, must make it a bad file here, not a failed clip mid-epoch."""
    whole = tmp_path / "whole.mp4"
    with av.open(str(video_dir / "v00.mp4")) as src, \
            av.open(str(whole), "w", format="mp4", options={"movflags": "faststart"}) as dst:
        out = dst.add_stream_from_template(src.streams.video[0])
        for packet in src.demux(src.streams.video[0]):
            if packet.size:
                packet.stream = out
                dst.mux(packet)
    with av.open(str(whole)) as container:
        packets = [p for p in container.demux(video=0) if p.size]
    middle = packets[len(packets) // 2]
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(whole.read_bytes()[: middle.pos + middle.size // 2])
    manifest = tmp_path / "m.csv"
    manifest.write_text(f"path,label\n{whole},0\n{cut},1\n")
    done = cli("check", str(manifest), "--clip-length", "4", "--probe-cache",
               str(tmp_path / "cache"))
    assert done.returncode == 1, done.stdout
    (line,) = [line for line in done.stdout.splitlines() if "cut.mp4" in line]
    assert line.strip() == f"{cut}: truncated: the file ends inside its last frame; copy it again"
