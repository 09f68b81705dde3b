"""Train on a vidring pipeline under one Keras set-up; print what each plan epoch held.

Run by tests/test_backends.py in a child process, because the Keras backend and
TensorFlow's logical devices are fixed once per process:

    KERAS_BACKEND=jax python tests/backend_fit.py TRAIN VAL [--epochs 3]
    python tests/backend_fit.py TRAIN VAL --mirrored   # 2 logical CPUs, MirroredStrategy
"""

from __future__ import annotations

import argparse
import contextlib
import json
from typing import TYPE_CHECKING, Any

import keras

from vidring.loader import ClipDataset

if TYPE_CHECKING:
    import numpy as np


class Recording(ClipDataset):
    """The provenance (video, start frame) of every batch read inside a Keras epoch (not
    the tensor-spec reads before one), per plan epoch and plan batch."""

    def __init__(self, name: str, **kwargs: Any) -> None:
        super().__init__(name, **kwargs)
        self.seen: dict[int, dict[int, list[tuple[int, int]]]] = {}
        self.in_epoch = False

    def on_epoch_begin(self) -> None:
        super().on_epoch_begin()
        self.in_epoch = True

    def on_epoch_end(self) -> None:
        super().on_epoch_end()
        self.in_epoch = False

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        b = self.batch(index)
        if self.in_epoch:
            rows = [(int(p["video_index"]), int(p["frames"][0])) for p in b.provenance]
            self.seen.setdefault(b.epoch, {})[b.plan_batch] = rows
        return b.x, b.y


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("train")
    parser.add_argument("val")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--mirrored", action="store_true")
    args = parser.parse_args()
    scope: Any = contextlib.nullcontext()
    if args.mirrored:
        import tensorflow as tf

        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
        scope = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]).scope()
    train = Recording(args.train)
    val = ClipDataset(args.val, evaluation=True)
    x, _ = train[0]
    with scope:
        model = keras.Sequential([keras.Input(x.shape[1:]), keras.layers.Flatten(),
                                  keras.layers.Dense(64, activation="softmax")])
        model.compile("sgd", "sparse_categorical_crossentropy")
    del x
    model.fit(train, epochs=args.epochs, validation_data=val, verbose=0,
              callbacks=[train.epoch_callback()])
    evals = [model.evaluate(val, verbose=0) for _ in range(2)]
    print(json.dumps({"backend": keras.backend.backend(), "seen": train.seen, "evals": evals,
                      "spilled": train.spilled, "val_batches": len(val)}))
    train.close()
    val.close()


if __name__ == "__main__":
    main()
