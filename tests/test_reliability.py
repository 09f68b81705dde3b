"""Faults injected into real daemons: frozen workers and daemons, killed daemons, hostile
file systems and users.  Each test checks that every sample arrived exactly once (or was
counted as replaced), waits stayed bounded, and nothing was left behind."""

from __future__ import annotations

import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from typing import TYPE_CHECKING

import psutil
import pytest

from tests.support import N_VIDEOS, SIZE, Daemons, cli, status, wait_until
from vidring.daemon import liveness
from vidring.daemon.demo import write_video
from vidring.daemon.runtime import RuntimeDir
from vidring.loader import ClipDataset, DaemonUnavailable, UntrustedPipeline, paths
from vidring.loader.ring import segment_name

if TYPE_CHECKING:
    from pathlib import Path

ROOT = os.geteuid() == 0
NOBODY = 65534


def _one_epoch_labels(ds: ClipDataset) -> list[int]:
    labels = [v for i in range(len(ds)) for v in ds[i][1].tolist()]
    ds.set_epoch(ds.epoch + 1)
    return labels


def test_an_idle_worker_frozen_with_sigstop_is_replaced_within_seconds(
        daemons: Daemons, manifest: Path) -> None:
    name = daemons.start(manifest, workers=2, slots=2)
    wait_until(lambda: status(name).slots.ready == 2, 30, "the ring filled, workers idle")
    frozen = daemons.workers(name)[0]
    frozen.suspend()
    try:
        started = time.monotonic()
        wait_until(lambda: not frozen.is_running() or frozen.status() == psutil.STATUS_ZOMBIE,
                   liveness.IDLE_SILENCE_S + 5, "the frozen worker killed")
        assert time.monotonic() - started < liveness.IDLE_SILENCE_S + 3
    finally:
        if frozen.is_running():
            frozen.kill()
    st = wait_until(lambda: (s := status(name)).workers.idle == 2 and s, 30, "a replacement")
    assert st.workers.restarts == 1
    assert "stopped answering" in st.workers.last_error
    with ClipDataset(name) as ds:
        assert sorted(_one_epoch_labels(ds)) == list(range(N_VIDEOS))


def test_a_frozen_worker_holds_the_trainer_seconds_not_a_minute(daemons: Daemons,
                                                                manifest: Path) -> None:
    # --task-timeout-s is the default 60 s: the stall deadline adapts once clips are timed.
    name = daemons.start(manifest, batch_size=2, workers=1, slots=2)
    with ClipDataset(name, timeout_s=30) as ds:
        labels = _one_epoch_labels(ds)  # 16 clips timed
        assert sorted(labels) == list(range(N_VIDEOS))
        worker = daemons.workers(name)[0]
        labels = []
        for i in range(len(ds)):
            if i == 2:
                worker.suspend()  # busy or idle: either way it no longer works
            started = time.monotonic()
            labels += ds[i][1].tolist()
            assert time.monotonic() - started < liveness.MIN_STALL_S + 8, f"batch {i}"
        assert sorted(labels) == list(range(N_VIDEOS))
    assert status(name).workers.restarts == 1
    wait_until(lambda: not worker.is_running() or worker.status() == psutil.STATUS_ZOMBIE,
               10, "the frozen worker gone")


def test_a_daemon_frozen_and_thawed_goes_on_serving(daemons: Daemons, manifest: Path) -> None:
    name = daemons.start(manifest, workers=2, slots=2)
    daemon = psutil.Process(daemons.pid(name))
    with ClipDataset(name, timeout_s=20) as ds:
        labels = [v for i in range(2) for v in ds[i][1].tolist()]
        daemon.suspend()
        time.sleep(2)  # the fault itself: the daemon frozen for a while, not a wait
        daemon.resume()
        labels += [v for i in range(2, len(ds)) for v in ds[i][1].tolist()]
    assert sorted(labels) == list(range(N_VIDEOS))


def test_a_daemon_killed_with_sigkill_is_seen_at_once_and_stop_clears_it(
        daemons: Daemons, manifest: Path) -> None:
    name = daemons.start(manifest, workers=2, slots=2)
    workers = daemons.workers(name)
    proc = daemons.running.pop(name)
    with ClipDataset(name, timeout_s=5) as ds:
        ds[0]
        proc.kill()
        proc.wait(timeout=10)
        started = time.monotonic()
        with pytest.raises(DaemonUnavailable):
            _one_epoch_labels(ds)
        assert time.monotonic() - started < 8
    # Workers follow their parent (PR_SET_PDEATHSIG, and a getppid() check).
    _, alive = psutil.wait_procs(workers, timeout=10)
    assert not alive
    started = time.monotonic()
    shown = cli("status", name)
    assert time.monotonic() - started < 3
    assert shown.returncode == 1
    assert "is not running" in shown.stderr
    listed = cli("ls")
    assert name in listed.stdout
    assert "stale" in listed.stdout
    assert os.path.exists(f"/dev/shm/{segment_name(name)}")
    stopped = cli("stop", name)
    assert stopped.returncode == 0, stopped.stderr
    assert "removed what its daemon left" in stopped.stdout
    assert not os.path.exists(f"/dev/shm/{segment_name(name)}")
    assert not paths.lock_path(name).exists()
    assert not paths.runtime_dir(name).exists()
    assert name not in cli("ls").stdout


def test_a_trainer_refuses_a_pipeline_folder_open_to_others(daemons: Daemons,
                                                            manifest: Path) -> None:
    name = daemons.start(manifest, workers=1, slots=2)
    folder = paths.runtime_dir(name)
    os.chmod(folder, 0o777)
    try:
        with pytest.raises(UntrustedPipeline, match="mode 0777, not 0700"):
            ClipDataset(name)
    finally:
        os.chmod(folder, 0o700)
    with ClipDataset(name) as ds:
        assert ds[0][0].shape[0] == 4


@pytest.mark.skipif(not ROOT, reason="giving a folder to another user needs root")
def test_another_users_folder_is_refused_by_trainer_and_daemon(manifest: Path,
                                                             tmp_path: Path) -> None:
    root = tmp_path / "runtime"
    root.mkdir(mode=0o700)
    env = {"VIDRING_RUNTIME_DIR": str(root)}
    name = f"foreign-{os.getpid()}"
    planted = root / name
    planted.mkdir(mode=0o700)
    (planted / paths.CONTROL_SOCKET).write_text("")  # another user's "daemon"
    os.chown(planted, NOBODY, NOBODY)
    os.environ["VIDRING_RUNTIME_DIR"] = str(root)
    try:
        with pytest.raises(UntrustedPipeline, match=f"belongs to uid {NOBODY}"):
            ClipDataset(name)
    finally:
        del os.environ["VIDRING_RUNTIME_DIR"]
    done = subprocess.run(
        [sys.executable, "-m", "vidring.daemon.cli", "serve", "--name", name, "--manifest",
         str(manifest), "--batch-size", "4", "--clip-length", "4", "--size", "8x8",
         "--workers", "1"], capture_output=True, text=True, timeout=60,
        env={**os.environ, **env})
    assert done.returncode == 1
    assert f"belongs to uid {NOBODY}" in done.stderr
    assert "Traceback" not in done.stderr
    assert not os.path.exists(f"/dev/shm/{segment_name(name)}")
    assert not paths.lock_path(name).exists()


def test_under_umask_000_everything_is_still_owner_only(daemons: Daemons, manifest: Path,
                                                        tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    old = os.umask(0)
    try:
        name = daemons.start(manifest, workers=1, slots=2,
                             extra=["--probe-cache", str(cache)])
    finally:
        os.umask(old)
    folder = paths.runtime_dir(name)
    modes = {
        "runtime root": (folder.parent, 0o700),
        "pipeline folder": (folder, 0o700),
        "control socket": (folder / paths.CONTROL_SOCKET, 0o700),
        "ring": (f"/dev/shm/{segment_name(name)}", 0o600),
        "lock": (paths.lock_path(name), 0o600),
        "probe cache": (cache, 0o700),
    }
    for what, (path, most) in modes.items():
        mode = stat.S_IMODE(os.stat(path).st_mode)
        assert mode & ~most == 0, f"{what} {path} has mode {mode:04o}"
    entries = list(cache.iterdir())
    assert entries
    for entry in entries:
        assert stat.S_IMODE(entry.stat().st_mode) == 0o600, entry


def test_any_file_name_that_exists_is_served(daemons: Daemons, video_dir: Path,
                                             tmp_path: Path) -> None:
    folder = tmp_path / "classes"
    for label, raw in enumerate([b"caf\xe9", b"plain"]):  # Latin-1, not UTF-8
        sub = os.path.join(os.fsencode(folder), raw)
        os.makedirs(sub)
        for i in range(4):
            src = video_dir / f"v{i + 4 * label:02d}.mp4"
            shutil.copy(src, os.path.join(sub, b"clip-\xff-%d.mp4" % i))
    name = daemons.start(folder, batch_size=2, workers=2, slots=2)
    with ClipDataset(name) as ds:
        assert ds.class_names == ["caf\\xe9", "plain"]  # shown, and sent as JSON, escaped
        seen = []
        for i in range(len(ds)):
            for sample in ds.batch(i).samples():
                assert os.path.exists(sample.path)
                seen.append(os.fsencode(sample.path))
    assert len(set(seen)) == 8
    assert all(b"clip-\xff-" in path for path in seen)
    assert status(name).errors.count == 0


def test_relative_paths_in_a_config_file_are_relative_to_the_file(
        daemons: Daemons, manifest: Path, tmp_path: Path) -> None:
    config = tmp_path / "conf" / "train.toml"
    config.parent.mkdir()
    shutil.copy(manifest, tmp_path / "conf" / "m.csv")
    for video in manifest.parent.glob("*.mp4"):
        shutil.copy(video, tmp_path / "conf" / video.name)
    config.write_text('manifest = "m.csv"\nbatch_size = 4\nclip_length = 4\nsize = "24x32"\n')
    name = daemons.start(manifest, workers=1, slots=2,
                         extra=["--config", str(config)])  # the flag overrides: both work
    assert status(name).manifest == str(manifest)
    name = f"toml-{os.getpid()}"
    daemons.running[name] = subprocess.Popen(
        [sys.executable, "-m", "vidring.daemon.cli", "serve", "--name", name, "--config",
         str(config), "--workers", "1", "--probe-cache", str(daemons.probe_cache)],
        cwd="/", stdin=subprocess.DEVNULL)
    st = wait_until(lambda: _serving(name), 60, "the daemon started from /")
    assert st.manifest == str(tmp_path / "conf" / "m.csv")


def _serving(name: str) -> object:
    try:
        st = status(name)
    except DaemonUnavailable:
        return None
    return st if st.phase == "serving" else None


@pytest.mark.skipif(not ROOT or shutil.which("unshare") is None,
                    reason="a private /dev/shm needs root and unshare(1)")
def test_a_ring_larger_than_dev_shm_is_one_line(manifest: Path) -> None:
    name = f"tiny-shm-{os.getpid()}"
    script = (f"mount -t tmpfs -o size=1m tmpfs /dev/shm && exec {sys.executable} -m "
              f"vidring.daemon.cli serve --name {name} --manifest {manifest} --batch-size 8 "
              f"--clip-length 16 --size 112x112 --workers 1 --slots 8")
    done = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
                          capture_output=True, text=True, timeout=60)
    if "mount" in done.stderr and done.returncode != 0 and "reserve" not in done.stderr:
        pytest.skip(f"cannot mount a private /dev/shm here: {done.stderr.strip()}")
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert lines[-1].startswith("vidring serve: cannot reserve"), done.stderr
    assert "larger /dev/shm" in lines[-1]
    assert "Traceback" not in done.stderr


def test_write_video_keeps_rotation_for_fixtures(tmp_path: Path) -> None:
    """The rotation fixtures rely on the container's display matrix surviving a write."""
    import av
    import numpy as np

    path = tmp_path / "r.mp4"
    write_video(path, np.zeros((2, *SIZE, 3), np.uint8), rotation=90)
    with av.open(str(path)) as container:
        assert next(container.decode(video=0)).rotation == 90


def test_workers_retire_after_max_clips_and_nothing_is_lost(daemons: Daemons,
                                                            manifest: Path) -> None:
    name = daemons.start(manifest, workers=2, slots=2, extra=["--worker-max-clips", "5"])
    with ClipDataset(name) as ds:
        for _ in range(2):
            assert sorted(_one_epoch_labels(ds)) == list(range(N_VIDEOS))
    st = status(name)
    assert st.workers.recycled >= 4  # 32 clips, 5 a worker
    assert st.workers.restarts == 0
    assert st.errors.count == 0


def test_a_trainer_killed_with_sigkill_gives_its_leases_back(daemons: Daemons,
                                                             manifest: Path) -> None:
    name = daemons.start(manifest, workers=2, slots=3)
    script = ("import os, signal, sys\n"
              "from vidring.loader import ClipDataset\n"
              "ds = ClipDataset(sys.argv[1])\n"
              "held = [ds[i] for i in range(2)]\n"  # two leases held
              "print('holding', flush=True)\n"
              "os.kill(os.getpid(), signal.SIGKILL)\n")
    done = subprocess.run([sys.executable, "-c", script, name], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == -signal.SIGKILL
    assert "holding" in done.stdout
    wait_until(lambda: status(name).slots.leased == 0, 10, "the dead trainer's leases back")
    with ClipDataset(name) as ds:
        assert sorted(_one_epoch_labels(ds)) == list(range(N_VIDEOS))


def test_a_daemon_narrows_its_own_runtime_folder_and_says_so(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    root = tmp_path / "runtime"
    root.mkdir()
    os.chmod(root, 0o777)
    monkeypatch.setenv("VIDRING_RUNTIME_DIR", str(root))
    runtime = RuntimeDir.claim(f"narrow-{os.getpid()}")
    try:
        assert stat.S_IMODE(root.stat().st_mode) == 0o700
        assert stat.S_IMODE(runtime.folder.stat().st_mode) == 0o700
        assert "had mode 0777: made it 0700" in caplog.text
    finally:
        runtime.release()
    assert not runtime.folder.exists()
