"""Faults survived, end to end: bad files, dead and stalled workers, scaling, no workers."""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path

import pytest

from tests.support import CLIP, N_VIDEOS, SIZE, Daemons, cli, status, wait_until
from vidring.loader import ClipDataset, DaemonError

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
    assert st.workers.target == 1 and st.workers.restarts == 0


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
    assert "in decoder worker" in quarantined[str(vanishing)]  # retried twice, then quarantined
    assert st.errors.count == 2 + 3
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


def test_a_passing_error_is_retried_not_quarantined(daemons: Daemons, video_dir: Path,
                                                    tmp_path: Path) -> None:
    files = [tmp_path / f"c{i}.mp4" for i in range(4)]
    for i, f in enumerate(files):
        f.write_bytes((video_dir / f"v{i + 10:02d}.mp4").read_bytes())
    (tmp_path / "m.csv").write_text("".join(f"{f},{i}\n" for i, f in enumerate(files)))
    name = daemons.start(tmp_path / "m.csv", workers=0, slots=2,
                         extra=["--retry-delay-s", "2"])
    aside = tmp_path / "aside.mp4"
    files[2].rename(aside)  # storage hiccup: gone for a moment, before any worker reads it
    assert cli("scale", name, "1").returncode == 0
    results: list[object] = []
    with ClipDataset(name) as ds:
        reader = threading.Thread(target=lambda: results.append(ds.batch(0).y.tolist()))
        reader.start()
        wait_until(lambda: status(name).errors.count >= 1, 30, "the first failure")
        aside.rename(files[2])  # back before the retry
        reader.join(timeout=30)
        assert not reader.is_alive()
    assert sorted(results[0]) == [0, 1, 2, 3]  # the real clip, not a stand-in
    st = status(name)
    assert st.errors.quarantined == 0 and st.errors.replaced_samples == 0
