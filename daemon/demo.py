"""`vidring demo`: the whole path on a synthetic set, in about a minute on 2 cores.

Two classes a tiny model can tell apart: a bright bar moving left or right
over noise.  The demo writes them as H.264 with PyAV, starts a training and a
validation daemon, trains a small Conv3D model with `model.fit`, prints
throughput, queue depth and accuracy, stops both daemons and checks that
nothing is left in /dev/shm.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import av
import numpy as np

from vidring.daemon.config import default_workers
from vidring.daemon.launch import start_daemon, stop_daemon
from vidring.loader.ring import segment_name

CLASSES = ("left", "right")


def write_video(path: str | Path, frames: np.ndarray, *, fps: int = 30, gop: int = 12,
                bframes: int = 2, rotation: int = 0) -> None:
    """Encode (N, H, W, 3) uint8 frames as H.264 with fixed keyframes every `gop` frames,
    and a display matrix turning them `rotation` degrees counter-clockwise (as phones do)."""
    n, height, width, _ = frames.shape
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        if rotation:
            stream.set_display_rotation(rotation)
        stream.codec_context.gop_size = gop
        # libx264 reads GOP settings only through x264-params.
        stream.options = {"preset": "veryfast", "threads": "1", "x264-params":
                          f"keyint={gop}:min-keyint={gop}:scenecut=0:bframes={bframes}"}
        for i in range(n):
            for packet in stream.encode(av.VideoFrame.from_ndarray(frames[i], format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def bar_frames(direction: int, rng: np.random.Generator, *, frames: int = 24,
               height: int = 48, width: int = 64) -> np.ndarray:
    """A bar moving left (-1) or right (+1) over noise."""
    noise = rng.integers(0, 60, size=(frames, height, width, 3), dtype=np.uint8)
    speed = rng.uniform(1.5, 2.5)
    x0 = rng.uniform(0, width)
    bar_w = int(rng.integers(4, 8))
    out = noise
    for t in range(frames):
        x = int(x0 + direction * speed * t) % width
        cols = [(x + k) % width for k in range(bar_w)]
        out[t, :, cols, :] = (230, 230, 90)
    return out


def make_dataset(folder: str | Path, videos_per_class: int, seed: int) -> Path:
    """A class-per-folder dataset: folder/left/*.mp4, folder/right/*.mp4."""
    root = Path(folder)
    rng = np.random.default_rng(seed)
    for label, name in enumerate(CLASSES):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(videos_per_class):
            frames = bar_frames(-1 if label == 0 else 1, rng)
            write_video(root / name / f"{name}_{i:03d}.mp4", frames)
    return root


def _model(input_shape: tuple[int, ...]) -> Any:
    import keras

    model = keras.Sequential([
        keras.Input(input_shape),
        keras.layers.Conv3D(8, 3, activation="relu", padding="same"),
        keras.layers.MaxPooling3D(2),
        keras.layers.Conv3D(16, 3, activation="relu", padding="same"),
        keras.layers.GlobalAveragePooling3D(),
        keras.layers.Dense(len(CLASSES), activation="softmax"),
    ])
    model.compile(optimizer=keras.optimizers.Adam(3e-3),
                  loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


def run_demo(*, epochs: int = 4, videos: int = 64, workers: int | None = None,
             folder: str | None = None) -> int:
    import keras

    from vidring.loader import ClipDataset

    workers = workers or default_workers()
    tag = f"demo-{os.getpid()}"
    tmp = None if folder else tempfile.mkdtemp(prefix="vidring-demo-")
    root = Path(folder or tmp)  # type: ignore[arg-type]
    procs: dict[str, Any] = {}
    try:
        started = time.perf_counter()
        make_dataset(root / "train", videos // 2, seed=1)
        make_dataset(root / "val", max(8, videos // 8), seed=2)
        print(f"made {videos} training and {2 * max(8, videos // 8)} validation videos "
              f"in {time.perf_counter() - started:.1f} s under {root}")
        common = ["--log-level", os.environ.get("VIDRING_DEMO_LOG", "info"),
                  "--clip-length", "8", "--size", "32x32", "--dtype", "float32", "--seed", "0",
                  "--probe-cache", str(root / "probe-cache")]
        procs[f"{tag}-train"] = start_daemon(f"{tag}-train", [
            "--manifest", str(root / "train"), "--batch-size", "8", "--workers", str(workers),
            "--slots", "6", *common])
        procs[f"{tag}-val"] = start_daemon(f"{tag}-val", [
            "--manifest", str(root / "val"), "--batch-size", "8", "--workers", "1",
            "--slots", "2", "--sampler", "uniform", *common])  # every video, the same clips
        train = ClipDataset(f"{tag}-train")
        val = ClipDataset(f"{tag}-val")  # an evaluation pipeline: the same clips every time
        print(f"classes: {train.info.classes}; {len(train)} batches/epoch of "
              f"{'x'.join(map(str, train.info.status.batch_shape))} {train.info.status.dtype}")

        class QueueDepth(keras.callbacks.Callback):
            def on_epoch_end(self, epoch: int, logs: Any = None) -> None:  # noqa: ARG002
                st = train.status()
                print(f"  queue depth {st.slots.ready}/{st.slots.total} ready, "
                      f"daemon {st.clips_per_s:.0f} clips/s, {st.workers.alive} workers, "
                      f"{st.errors.count} errors")

        model = _model(tuple(train.info.status.batch_shape[1:]))
        fit_started = time.perf_counter()
        history = model.fit(train, epochs=epochs, validation_data=val, verbose=2,
                            callbacks=[train.epoch_callback(), QueueDepth()])
        fit_s = time.perf_counter() - fit_started
        clips = epochs * len(train) * train.info.status.batch_shape[0]
        st = train.status()
        train.close()
        val.close()
        acc = history.history["val_accuracy"][-1]
        print(f"trained {epochs} epochs: {clips} clips in {fit_s:.1f} s = "
              f"{clips / fit_s:.0f} clips/s "
              f"into model.fit (daemon total {st.clips_total} clips, "
              f"queue depth {st.slots.ready}/{st.slots.total})")
        print(f"validation accuracy {acc:.2f}")
    finally:
        for name, proc in procs.items():
            stop_daemon(name, proc)
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)
    left = [n for n in procs if os.path.exists(f"/dev/shm/{segment_name(n)}")]
    print("left in /dev/shm: " + (", ".join(left) if left else "nothing"))
    return 0 if not left else 1
