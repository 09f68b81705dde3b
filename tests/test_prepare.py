"""`vidring prepare` on a small set: the copies are short-GOP, smaller and faithful, the new
manifest keeps the labels, a second run skips what is done, and a killed run resumes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from typing import TYPE_CHECKING

import numpy as np
import pytest

from tests.support import cli, wait_until
from vidring.daemon.manifest import load_manifest
from vidring.daemon.prepare import RECIPE_FILE, copy_size, render
from vidring.daemon.probe import probe
from vidring.daemon.targets import targets

if TYPE_CHECKING:
    from pathlib import Path


def _dataset(video_dir: Path, tmp_path: Path, n: int = 4) -> Path:
    src = tmp_path / "src"
    src.mkdir()
    lines = ["path,label,weight"]
    for i in range(n):
        (src / f"c{i}.mp4").write_bytes((video_dir / f"v{i % 6 + 10:02d}.mp4").read_bytes())
        lines.append(f"c{i}.mp4,{['walk', 'run'][i % 2]},{1 + i}")
    (src / "m.csv").write_text("\n".join(lines) + "\n")
    return src / "m.csv"


def test_prepare_writes_short_gop_copies_and_their_manifest(video_dir: Path,
                                                            tmp_path: Path) -> None:
    manifest = _dataset(video_dir, tmp_path)
    out = tmp_path / "out"
    done = cli("prepare", str(manifest), "--out", str(out), "--short-side", "32", "--gop", "4",
               "--workers", "2", timeout_s=120)
    assert done.returncode == 0, done.stderr
    assert "prepared 4 videos" in done.stdout
    assert "PSNR" in done.stdout
    psnr = float(done.stdout.split("PSNR ")[1].split(" dB")[0])
    assert psnr > 25, done.stdout
    new = load_manifest(out / "manifest.csv")
    old = load_manifest(manifest)
    assert targets(new).y.tolist() == targets(old).y.tolist()
    assert targets(new).classes == {"run": 0, "walk": 1}
    assert [r.weight for r in new.rows] == [1.0, 2.0, 3.0, 4.0]
    for before, after in zip(old.rows, new.rows, strict=True):
        a, b = probe(before.path), probe(after.path)
        assert b.frames == a.frames  # every frame kept, at its timestamp
        np.testing.assert_allclose(b.seconds(), a.seconds(), atol=1e-3)
        assert np.all(np.diff(b.keyframe_indices) == 4)
        assert min(b.width, b.height) == 32
    again = cli("prepare", str(manifest), "--out", str(out), "--short-side", "32", "--gop", "4")
    assert again.returncode == 0, again.stderr
    assert "prepared 0 videos" in again.stdout
    assert "4 already done" in again.stdout
    other = cli("prepare", str(manifest), "--out", str(out), "--short-side", "24", "--gop", "4")
    assert other.returncode == 2
    assert other.stderr.strip() == (f"vidring prepare: {out} holds copies made with "
                                    "--short-side 32 (this run: 24); use another --out, or "
                                    "the same settings to resume")
    (out / RECIPE_FILE).unlink()  # as a folder made before the settings were recorded
    unknown = cli("prepare", str(manifest), "--out", str(out), "--short-side", "32", "--gop",
                  "4")
    assert unknown.returncode == 2
    assert "settings were not recorded" in unknown.stderr
    bigger = cli("prepare", str(manifest), "--out", str(tmp_path / "big"), "--short-side",
                 "4096", "--gop", "4", timeout_s=120)
    assert bigger.returncode == 0, bigger.stderr
    for before in old.rows:  # a copy is never larger than its source
        a, b = probe(before.path), probe(tmp_path / "big" / before.path.name)
        assert (b.width, b.height) == (a.width, a.height)


@pytest.mark.parametrize(
    ("source", "short_side", "copy"),
    [((360, 640), 160, (160, 284)), ((51, 67), 4096, (50, 66)), ((640, 360), 128, (226, 128)),
     ((48, 64), 32, (32, 42))],
)
def test_a_copy_keeps_the_aspect_is_even_and_never_larger(
        source: tuple[int, int], short_side: int, copy: tuple[int, int]) -> None:
    assert copy_size(*source, short_side) == copy


def test_a_killed_prepare_resumes(video_dir: Path, tmp_path: Path) -> None:
    manifest = _dataset(video_dir, tmp_path, n=6)
    stuck = manifest.parent / "c2.mp4"
    good = stuck.read_bytes()
    stuck.unlink()
    os.mkfifo(stuck)  # the third file blocks its encoder: the run is killed there
    out = tmp_path / "out"
    args = [sys.executable, "-m", "vidring.daemon.cli", "prepare", str(manifest), "--out",
            str(out), "--short-side", "32", "--gop", "4", "--workers", "1"]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        wait_until(lambda: len(list(out.glob("*.mp4"))) >= 2, 60, "two copies done")
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    assert sorted(p.name for p in out.glob("*.mp4")) == ["c0.mp4", "c1.mp4"]
    stuck.unlink()
    stuck.write_bytes(good)
    done = cli(*args[3:], timeout_s=120)
    assert done.returncode == 0, done.stderr
    assert "prepared 4 videos" in done.stdout
    assert "2 already done" in done.stdout
    assert len(list(out.glob("*.mp4"))) == 6
    assert not list(out.glob("*.partial"))
    assert len(load_manifest(out / "manifest.csv").rows) == 6


def test_the_report_says_slower_and_kib_where_they_apply() -> None:
    report = {"encoded": 1, "seconds": 0.1, "skipped": 0, "failed": [], "manifest": "m.csv",
              "rows_written": 1, "bytes_before": 5 * 1024, "bytes_after": 3 * 1024,
              "decode_ms_per_clip_before": 1.0, "decode_ms_per_clip_after": 2.0,
              "psnr_db": 40.0}
    shown = render(report)
    assert "disk          5.0 KiB -> 3.0 KiB" in shown
    assert "1.0 -> 2.0 ms of CPU per 16-frame clip (2.0x slower)" in shown
