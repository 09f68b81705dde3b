"""Faults survived, end to end: bad files, dead and stalled workers, scaling, no workers."""

from __future__ import annotations

import os
import signal
import sys
import threading
from typing import TYPE_CHECKING

import pytest

from tests.support import CLIP, N_VIDEOS, SIZE, Daemons, cli, status, wait_until
from vidring.loader import ClipDataset, DaemonError

if TYPE_CHECKING:
    from pathlib import Path


def test_scaling_mid_epoch_loses_and_duplicates_nothing(daemons: Daemons, manifest: Path) -> None:
    name = daemons.start(manifest, batch_size=2, workers=1, slots=2, seed=3)
    with ClipDataset(name) as ds:
        for epoch, (at, workers) in enumerate([(1, 3), (2, 1)]):
            labels: list[int] = []
            for i in range(len(ds)):
                labels += ds[i][1].tolist()
                if i == at:
                    done = cli("scale", name, str(workers))
                    assert done.returncode == 0, done.stderr
                    wait_until(lambda n=workers: status(name).workers.alive == n, 30,
                               f"{workers} workers")
            assert sorted(labels) == list(range(N_VIDEOS)), f"epoch {epoch}"
            ds.set_epoch(epoch + 1)
    st = status(name)
    assert st.workers.target == 1
    assert st.workers.restarts == 0


def test_corrupt_missing_and_vanished_files_are_replaced_and_counted(
        daemons: Daemons, video_dir: Path, tmp_path: Path) -> None:
    corrupt = tmp_path / "corrupt.mp4"
    corrupt.write_bytes(os.urandom(4096))
    missing = tmp_path / "missing.mp4"
    vanishing = tmp_path / "vanishing.mp4"
    vanishing.write_bytes((video_dir / "v07.mp4").read_bytes())
    good = 9
    rows = [f"{video_dir / f'v{i:02d}.mp4'},{i}" for i in range(good)]
    rows += [f"{corrupt},100", f"{missing},101", f"{vanishing},102"]
    bad_manifest = tmp_path / "m.csv"
    bad_manifest.write_text("\n".join(rows) + "\n")  # 12 rows: every row in every epoch
    name = daemons.start(bad_manifest, workers=0, slots=2, seed=1,
                         extra=["--retry-delay-s", "0.1"])
    vanishing.unlink()  # probed at start, gone before any worker opens it
    assert cli("scale", name, "2").returncode == 0
    with ClipDataset(name) as ds:
        for epoch in range(2):
            replaced = 0
            for i in range(len(ds)):
                b = ds.batch(i)
                assert b.x.shape == (4, CLIP, *SIZE, 3)
                assert set(b.y.tolist()) <= set(range(good))
                replaced += int(b.provenance["replaced"].sum())
                assert set(b.provenance["planned_index"][b.provenance["replaced"] == 1]) <= {
                    9, 10, 11}
            assert replaced == 3, f"epoch {epoch}: each bad file's sample replaced"
            ds.set_epoch(epoch + 1)
        st = ds.status()
    quarantined = {q.path: q.reason for q in st.errors.recent_quarantined}
    assert set(quarantined) == {str(corrupt), str(missing), str(vanishing)}
    assert "No such file" in quarantined[str(missing)]
    assert quarantined[str(corrupt)].startswith("probe:")
    # Gone since its probe: it will not come back in a few seconds, so no retries.
    assert "no longer exists" in quarantined[str(vanishing)]
    assert st.errors.count == 2 + 1
    assert st.errors.replaced_samples >= 6


def test_a_killed_worker_is_respawned_and_its_clip_reissued(daemons: Daemons,
                                                             manifest: Path) -> None:
    name = daemons.start(manifest, batch_size=2, workers=2, slots=2, seed=4)
    with ClipDataset(name) as ds:
        labels: list[int] = []
        for i in range(len(ds)):
            labels += ds[i][1].tolist()
            if i in (1, 4):
                os.kill(daemons.workers(name)[0].pid, signal.SIGKILL)
        assert sorted(labels) == list(range(N_VIDEOS))
    wait_until(lambda: status(name).workers.alive == 2, 30, "workers respawned")
    assert status(name).workers.restarts == 2


def test_no_workers_is_an_error_not_a_hang(daemons: Daemons, manifest: Path) -> None:
    name = daemons.start(manifest, workers=0, slots=2)
    with ClipDataset(name, timeout_s=5) as ds:
        with pytest.raises(DaemonError, match="scaled to 0"):
            ds[0]
        assert cli("scale", name, "1").returncode == 0
        assert ds[0][0].shape[0] == 4


def _own_copies(video_dir: Path, tmp_path: Path) -> list[Path]:
    """Four test videos copied where a test may break them, listed in tmp_path/m.csv
    with labels 0..3: one batch of 4 is exactly these."""
    files = [tmp_path / f"c{i}.mp4" for i in range(4)]
    for i, f in enumerate(files):
        f.write_bytes((video_dir / f"v{i + 10:02d}.mp4").read_bytes())
    (tmp_path / "m.csv").write_text("".join(f"{f},{i}\n" for i, f in enumerate(files)))
    return files


def test_a_passing_error_is_retried_not_quarantined(daemons: Daemons, video_dir: Path,
                                                    tmp_path: Path) -> None:
    files = _own_copies(video_dir, tmp_path)
    name = daemons.start(tmp_path / "m.csv", workers=0, slots=2,
                         extra=["--retry-delay-s", "2"])
    # A storage hiccup: the same file (size, mtime) reads back garbage for a moment.
    good, st = files[2].read_bytes(), files[2].stat()
    files[2].write_bytes(os.urandom(len(good)))
    os.utime(files[2], ns=(st.st_atime_ns, st.st_mtime_ns))
    assert cli("scale", name, "1").returncode == 0
    results: list[object] = []
    with ClipDataset(name) as ds:
        reader = threading.Thread(target=lambda: results.append(ds.batch(0).y.tolist()))
        reader.start()
        wait_until(lambda: status(name).errors.count >= 1, 30, "the first failure")
        files[2].write_bytes(good)  # back before the retry
        os.utime(files[2], ns=(st.st_atime_ns, st.st_mtime_ns))
        reader.join(timeout=30)
        assert not reader.is_alive()
    assert sorted(results[0]) == [0, 1, 2, 3]  # the real clip, not a stand-in
    st = status(name)
    assert st.errors.quarantined == 0
    assert st.errors.replaced_samples == 0


def test_a_file_replaced_after_its_probe_is_quarantined_at_once(daemons: Daemons,
                                                                video_dir: Path,
                                                                tmp_path: Path) -> None:
    files = _own_copies(video_dir, tmp_path)
    name = daemons.start(tmp_path / "m.csv", workers=0, slots=2,
                         extra=["--retry-delay-s", "30"])  # a retry would time the test out
    files[1].unlink()
    os.mkfifo(files[1])  # a different file now: opening it would block forever
    files[3].write_bytes((video_dir / "v00.mp4").read_bytes())  # another video, same name
    assert cli("scale", name, "1").returncode == 0
    with ClipDataset(name, timeout_s=30) as ds:
        b = ds.batch(0)
        assert b.x.shape == (4, CLIP, *SIZE, 3)
        assert sorted(b.provenance["planned_index"][b.provenance["replaced"] == 1]) == [1, 3]
    st = status(name)
    assert st.errors.quarantined == 2
    assert st.errors.count == 2  # each failed once, and was quarantined then
    reasons = {q.path: q.reason for q in st.errors.recent_quarantined}
    assert "changed since it was probed" in reasons[str(files[1])]
    assert "changed since it was probed" in reasons[str(files[3])]


def test_a_worker_that_cannot_be_spawned_leaves_the_daemon_serving(
        daemons: Daemons, manifest: Path, tmp_path: Path) -> None:
    python = tmp_path / "python"  # a wrapper, as an operator might use to pin cores
    python.write_text(f'#!/bin/sh\nexec {sys.executable} "$@"\n')
    python.chmod(0o755)
    name = daemons.start(manifest, workers=1, slots=2, env={"VIDRING_WORKER_PYTHON": str(python)})
    wait_until(lambda: status(name).workers.idle == 1, 30, "the first worker ready")
    python.unlink()  # the interpreter is gone: the next spawn fails
    assert cli("scale", name, "2").returncode == 0
    st = wait_until(lambda: (s := status(name)).workers.backoff == 1 and s, 10, "a back-off")
    assert "cannot start decoder worker" in st.workers.last_error
    assert st.workers.idle + st.workers.busy == 1
    shown = cli("status", name)
    assert "1 in back-off" in shown.stdout
    assert "cannot start" in shown.stdout
    with ClipDataset(name) as ds:
        labels = [v for i in range(len(ds)) for v in ds[i][1].tolist()]
    assert sorted(labels) == list(range(N_VIDEOS))


def test_status_answers_with_two_thousand_missing_files(daemons: Daemons, video_dir: Path,
                                                        tmp_path: Path) -> None:
    rows = [f"{tmp_path / 'gone' / f'{i:04d}.mp4'},{i % 7}" for i in range(2000)]
    rows += [f"{video_dir / f'v{i:02d}.mp4'},{i}" for i in range(N_VIDEOS)]
    (tmp_path / "m.csv").write_text("\n".join(rows) + "\n")
    name = daemons.start(tmp_path / "m.csv", workers=1, slots=2)
    st = status(name)
    assert st.errors.quarantined == 2000
    assert len(st.errors.recent_quarantined) == 20
    assert st.videos == 2000 + N_VIDEOS
    shown = cli("status", name)
    assert shown.returncode == 0
    assert "2000 files quarantined" in shown.stdout
    assert cli("status", name, "--json").returncode == 0
