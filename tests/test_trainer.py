"""What the trainer sees, end to end against real daemons: zero-copy batches, exact pixels,
epochs under fit, clear errors when the daemon is gone or the ring is full."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import threading
import time
from typing import TYPE_CHECKING

import numpy as np
import pytest

from tests.support import (
    CLIP,
    N_VIDEOS,
    SIZE,
    Daemons,
    epoch_bytes,
    reference_decode,
    status,
    wait_until,
)
from vidring.daemon import sampler
from vidring.loader import ClipDataset, DaemonUnavailable, RingExhausted
from vidring.loader.ring import segment_name

if TYPE_CHECKING:
    from pathlib import Path


def _mapping_of_address(address: int) -> str:
    with open("/proc/self/maps") as fh:
        for line in fh:
            fields = line.split()
            lo, hi = (int(v, 16) for v in fields[0].split("-"))
            if lo <= address < hi:
                return fields[5] if len(fields) > 5 else ""
    return ""


def test_zero_copy_views_lie_in_the_segment(main_pipeline: str) -> None:
    with ClipDataset(main_pipeline) as ds:
        b = ds.batch(0)
        assert b.x.shape == (4, CLIP, *SIZE, 3)
        assert b.x.dtype == np.uint8
        assert b.y.shape == (4,)
        assert b.y.dtype == np.int32
        # Every array's memory is a mapping of the daemon's segment, not a private copy.
        segment = f"/dev/shm/{segment_name(main_pipeline)}"
        for arr in (b.x, b.y, b.provenance):
            assert _mapping_of_address(arr.ctypes.data) == segment
        assert not b.x.flags.writeable
        assert not b.x.flags.owndata
        x, y = ds[0]  # a repeated index: the same batch
        assert np.shares_memory(x, b.x) or np.array_equal(x, b.x)
        np.testing.assert_array_equal(y, b.y)


def test_pixels_equal_an_independent_sequential_decode(main_pipeline: str, video_dir: Path) -> None:
    seen_cross_gop = False
    references: dict[int, np.ndarray] = {}
    with ClipDataset(main_pipeline) as ds:
        for i in range(len(ds)):
            b = ds.batch(i)
            for pos, prov in enumerate(b.provenance):
                video = int(prov["video_index"])
                if video not in references:
                    references[video] = reference_decode(video_dir / f"v{video:02d}.mp4", *SIZE)
                ref = references[video]
                frames = sampler.clip_frames(int(prov["frames"][0]), len(ref), CLIP, 1)
                np.testing.assert_array_equal(b.x[pos], ref[frames],
                                              err_msg=f"video {video} start {prov['frames'][0]}")
                assert b.y[pos] == video  # labels are the video index in this manifest
                seen_cross_gop |= frames[0] // 10 != frames[-1] // 10
    assert len(references) >= N_VIDEOS - 3
    assert seen_cross_gop, "no clip crossed a GOP boundary; pick another seed"


@pytest.mark.slow
def test_fit_two_epochs_with_shuffle_and_validation(daemons: Daemons, manifest: Path) -> None:
    import keras

    train_name = daemons.start(manifest, batch_size=4, workers=2, slots=4, seed=7,
                               dtype="float32")
    val_name = daemons.start(manifest, batch_size=8, workers=1, slots=2, seed=8, dtype="float32")

    class Recording(ClipDataset):
        """Records the labels of every batch Keras asks for, per (epoch, index)."""

        def __init__(self, name: str) -> None:
            super().__init__(name)
            self.seen: dict[tuple[int, int], list[int]] = {}

        def __getitem__(self, index: int):
            x, y = super().__getitem__(index)
            assert x.shape == (4, CLIP, *SIZE, 3)
            assert x.dtype == np.float32
            assert y.shape == (4,)
            assert y.dtype == np.int32
            labels = y.tolist()
            key = (self.epoch, int(index))
            assert self.seen.setdefault(key, labels) == labels, f"index {key} changed batch"
            return x, y

    train = Recording(train_name)
    val = ClipDataset(val_name)
    model = keras.Sequential([
        keras.Input((CLIP, *SIZE, 3)),
        keras.layers.Conv3D(4, 3, activation="relu"),
        keras.layers.GlobalAveragePooling3D(),
        keras.layers.Dense(N_VIDEOS, activation="softmax"),
    ])
    model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    history = model.fit(train, epochs=2, validation_data=val, verbose=0)  # shuffle=True default
    assert len(history.history["loss"]) == 2
    assert "val_loss" in history.history
    for epoch in (0, 1):
        batches = {i: lab for (e, i), lab in train.seen.items() if e == epoch}
        assert sorted(batches) == list(range(len(train)))
        labels = sorted(v for lab in batches.values() for v in lab)
        assert labels == list(range(N_VIDEOS)), f"epoch {epoch}: each video exactly once"
    assert train.spilled == 0  # a plain fit stays within the ring: nothing copied
    assert status(train_name).spilled == 0
    train.close()
    val.close()


def test_same_seed_same_bytes_whatever_the_worker_count(daemons: Daemons, manifest: Path) -> None:
    one = daemons.start(manifest, workers=1, slots=2, seed=5)
    three = daemons.start(manifest, workers=3, slots=5, seed=5)
    other = daemons.start(manifest, workers=2, slots=3, seed=6)
    epochs = {}
    for name in (one, three, other):
        with ClipDataset(name) as ds:
            epochs[name] = epoch_bytes(ds) + epoch_bytes(ds)
    assert epochs[one] == epochs[three]
    assert epochs[one][0] != epochs[one][N_VIDEOS // 4]  # epoch 0 and 1 differ
    assert epochs[other] != epochs[one]


def test_epoch_moves_on_only_after_a_whole_epoch(main_pipeline: str) -> None:
    with ClipDataset(main_pipeline) as ds:
        ds[0], ds[1]
        ds.on_epoch_end()  # fit's reset() after spec inference
        assert ds.epoch == 0
        ds.on_epoch_begin()
        ds[3]
        ds.on_epoch_end()  # a distribution strategy's symbolic build
        assert ds.epoch == 0
        ds.on_epoch_begin()
        for i in range(len(ds)):
            ds[i]
        ds.on_epoch_end()
        assert ds.epoch == 1
        for _ in ds:
            pass
        assert ds.epoch == 2
    with pytest.raises(ValueError, match="use_multiprocessing"):
        ClipDataset(main_pipeline, use_multiprocessing=True)


def test_a_restarted_daemon_is_detected(daemons: Daemons, manifest: Path) -> None:
    name = daemons.start(manifest, workers=1, slots=2)
    ds = ClipDataset(name, timeout_s=5)
    assert ds[0][0].shape[0] == 4
    daemons.stop(name)
    daemons.start(manifest, name=name, workers=1, slots=2)
    with pytest.raises(DaemonUnavailable, match=r"restarted|exited"):
        ds[1]
    ds.close()
    wait_until(lambda: status(name).slots.leased == 0, 10, "the stale lease released")


def test_trainer_exit_keeps_the_segment_and_frees_its_leases(main_pipeline: str) -> None:
    script = (
        "import sys\n"
        "from vidring.loader import ClipDataset\n"
        "ds = ClipDataset(sys.argv[1])\n"
        "x, y = ds[0]\n"
        "print(int(y.sum()), flush=True)\n"
        "import os; os._exit(0)\n"  # no close(), no finalizers: like a crash
    )
    done = subprocess.run([sys.executable, "-c", script, main_pipeline], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert os.path.exists(f"/dev/shm/{segment_name(main_pipeline)}")
    wait_until(lambda: status(main_pipeline).slots.leased == 0, 10,
               "the dead trainer's lease to be taken back")
    with ClipDataset(main_pipeline) as ds:
        assert ds[1][0].shape[0] == 4


def test_held_batches_are_spilled_and_keep_their_bytes(daemons: Daemons, manifest: Path) -> None:
    name = daemons.start(manifest, batch_size=2, workers=1, slots=2)
    segment = f"/dev/shm/{segment_name(name)}"
    with ClipDataset(name) as ds:
        held, at_handout = [], []
        for i in range(len(ds)):  # 8 batches through a 2-slot ring
            b = ds.batch(i)
            held.append(b)
            # What each array was when handed out, before any spill moved it.
            at_handout.append([(a.ctypes.data, hashlib.sha1(a.tobytes()).hexdigest())
                               for a in (b.x, b.y, b.provenance)])
        assert ds.spilled == len(ds) - 2
        assert status(name).spilled == len(ds) - 2
        for _ in range(len(ds)):  # the next epoch refills every slot
            ds.set_epoch(ds.epoch + 1)
            for i in range(len(ds)):
                ds.release(ds.batch(i))
        for b, before in zip(held, at_handout, strict=True):
            now = [(a.ctypes.data, hashlib.sha1(a.tobytes()).hexdigest())
                   for a in (b.x, b.y, b.provenance)]
            assert now == before  # same addresses, same bytes: the arrays were never replaced
        labels = sorted(v for b in held for v in b.y.tolist())
        assert labels == list(range(N_VIDEOS))  # epoch 0 whole, nothing lost to the spills
        # Spilled batches live in private memory now; the rest still view the ring.
        owners = [_mapping_of_address(b.x.ctypes.data) for b in held]
        assert ds.spilled >= len(ds) - 2
        assert owners.count(segment) == len(ds) - ds.spilled


def test_a_ring_held_by_another_trainer_is_a_clear_error(daemons: Daemons,
                                                         manifest: Path) -> None:
    name = daemons.start(manifest, batch_size=2, workers=1, slots=2,
                         extra=["--exhausted-wait-s", "1"])
    with ClipDataset(name) as holder, ClipDataset(name, epoch=3) as other:
        held = [holder.batch(0), holder.batch(1)]
        with pytest.raises(RingExhausted, match="holds all 2 slots"):
            other.batch(0)
        holder.release(*held)
        assert other.batch(0).x.shape[0] == 2
        assert other.spilled == 0


def test_two_trainers_at_different_epochs_each_see_every_video_once(
        daemons: Daemons, manifest: Path) -> None:
    name = daemons.start(manifest, batch_size=4, workers=2, slots=3)
    with ClipDataset(name) as first, ClipDataset(name, epoch=5) as second:
        seen: dict[str, list[int]] = {"first": [], "second": []}
        for i in range(len(first)):  # interleaved, as two processes would ask
            seen["first"] += first[i][1].tolist()
            seen["second"] += second[len(second) - 1 - i][1].tolist()
        assert sorted(seen["first"]) == list(range(N_VIDEOS))
        assert sorted(seen["second"]) == list(range(N_VIDEOS))


def test_a_trainer_paused_past_the_lease_timeout_keeps_its_batch(
        daemons: Daemons, manifest: Path) -> None:
    name = daemons.start(manifest, batch_size=2, workers=1, slots=2,
                         extra=["--lease-timeout-s", "1"])
    script = (
        "import hashlib, sys\n"
        "from vidring.loader import ClipDataset\n"
        "ds = ClipDataset(sys.argv[1])\n"
        "b = ds.batch(0)\n"
        "print(hashlib.sha1(b.x.tobytes()).hexdigest(), flush=True)\n"
        "sys.stdin.readline()\n"  # paused here until the test says go on
        "print(hashlib.sha1(b.x.tobytes()).hexdigest(), flush=True)\n"
    )
    with subprocess.Popen([sys.executable, "-c", script, name], stdin=subprocess.PIPE,
                          stdout=subprocess.PIPE, text=True) as trainer:
        try:
            assert trainer.stdout is not None
            assert trainer.stdin is not None
            before = trainer.stdout.readline().strip()
            trainer.send_signal(signal.SIGSTOP)
            deadline = time.monotonic() + 3  # three lease timeouts of silence
            with ClipDataset(name) as other:  # another trainer churns the rest of the ring
                while time.monotonic() < deadline:
                    for i in range(len(other)):
                        other.release(other.batch(i))
                    other.set_epoch(other.epoch + 1)
                assert status(name).slots.leased == 1  # the paused trainer's lease was kept
            trainer.send_signal(signal.SIGCONT)
            trainer.stdin.write("go\n")
            trainer.stdin.flush()
            after = trainer.stdout.readline().strip()
            assert trainer.wait(timeout=30) == 0
        finally:
            if trainer.poll() is None:
                trainer.kill()
    assert before == after


def test_dead_daemon_is_a_clear_error_within_the_timeout(daemons: Daemons, manifest: Path) -> None:
    name = daemons.start(manifest, workers=1, slots=2)
    ds = ClipDataset(name, timeout_s=3)
    ds[0]
    os.kill(daemons.pid(name), signal.SIGKILL)
    started = time.monotonic()
    def read_the_rest() -> None:
        for i in range(1, len(ds)):
            ds[i]

    with pytest.raises(DaemonUnavailable, match=name):
        read_the_rest()
    assert time.monotonic() - started < 3 + 2
    ds.close()
    workers_gone = wait_until(lambda: not daemons.workers(name), 10, "workers to exit")
    assert workers_gone
    # A restart of the same name replaces the stale segment and serves again.
    daemons.running.pop(name).wait(timeout=10)
    daemons.start(manifest, name=name, workers=1, slots=2)
    with ClipDataset(name) as ds2:
        assert ds2[0][0].shape[0] == 4


def test_no_daemon_is_a_clear_error() -> None:
    with pytest.raises(DaemonUnavailable, match="no vidring daemon named 'nobody-here'"):
        ClipDataset("nobody-here", timeout_s=1)


@pytest.mark.slow
def test_keras_threads_with_a_long_queue_never_exhaust_the_ring(daemons: Daemons,
                                                               manifest: Path) -> None:
    import keras

    name = daemons.start(manifest, batch_size=2, workers=2, slots=4, dtype="float32")

    class Recording(ClipDataset):
        """Records the labels of every plan batch delivered, per plan epoch."""

        def __init__(self, name: str, **kwargs: object) -> None:
            super().__init__(name, **kwargs)
            self.seen: dict[tuple[int, int], list[int]] = {}
            self.lock = threading.Lock()

        def __getitem__(self, index: int):
            b = self.batch(index)
            with self.lock:
                self.seen[(b.epoch, b.plan_batch)] = b.y.tolist()
            return b.x, b.y

    ds = Recording(name, workers=2, max_queue_size=10)  # Keras's threads hold up to 10 batches
    model = keras.Sequential([keras.Input((CLIP, *SIZE, 3)), keras.layers.Flatten(),
                              keras.layers.Dense(N_VIDEOS, activation="softmax")])
    model.compile("adam", "sparse_categorical_crossentropy")
    model.fit(ds, epochs=3, verbose=0)
    for epoch in range(3):
        labels = sorted(v for (e, _), lab in ds.seen.items() if e == epoch for v in lab)
        assert labels == list(range(N_VIDEOS)), f"epoch {epoch}: each video exactly once"
    ds.close()
