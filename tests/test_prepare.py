"""`vidring prepare` on a small set: the copies are short-GOP, smaller and faithful, the new
manifest keeps the labels, a second run skips what is done, and a killed run resumes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from typing import TYPE_CHECKING

import numpy as np

from tests.support import cli, wait_until
from vidring.daemon.manifest import load_manifest
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
    assert f"{out} holds copies made with --short-side 32 (this run: 24)" in other.stderr
    bigger = cli("prepare", str(manifest), "--out", str(tmp_path / "big"), "--short-side",
                 "4096", "--gop", "4", timeout_s=120)
    assert bigger.returncode == 0, bigger.stderr
    for before in old.rows:  # a copy is never larger than its source
        a, b = probe(before.path), probe(tmp_path / "big" / before.path.name)
        assert (b.width, b.height) == (a.width, a.height)


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
