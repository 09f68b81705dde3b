"""Keras training flows against a real daemon: resumes, evaluation, tiny datasets."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import keras
import pytest

from tests.backend_fit import Recording
from tests.support import CLIP, N_VIDEOS, SIZE, Daemons

if TYPE_CHECKING:
    from pathlib import Path


pytestmark = pytest.mark.slow


def _model() -> keras.Model:
    model = keras.Sequential([keras.Input((CLIP, *SIZE, 3)), keras.layers.Flatten(),
                              keras.layers.Dense(N_VIDEOS, activation="softmax")])
    model.compile("sgd", "sparse_categorical_crossentropy")
    return model


class Interrupt(keras.callbacks.Callback):
    def __init__(self, after_epoch: int) -> None:
        super().__init__()
        self.after_epoch = after_epoch

    def on_epoch_end(self, epoch: int, logs: Any = None) -> None:  # noqa: ARG002
        if epoch == self.after_epoch:
            raise KeyboardInterrupt("interrupted for the test")


def test_a_backup_and_restore_resume_serves_the_same_plan_epochs(
        daemons: Daemons, manifest: Path, tmp_path: Path) -> None:
    name = daemons.start(manifest, batch_size=4, workers=2, slots=4, dtype="float32")
    whole = Recording(name)
    _model().fit(whole, epochs=4, verbose=0, callbacks=[whole.epoch_callback()])
    whole.close()

    resumed = Recording(name)
    backup = keras.callbacks.BackupAndRestore(str(tmp_path / "backup"))
    model = _model()
    with pytest.raises(KeyboardInterrupt):
        model.fit(resumed, epochs=4, verbose=0,
                  callbacks=[backup, Interrupt(after_epoch=1), resumed.epoch_callback()])
    resumed.close()
    restarted = Recording(name)  # a new process: nothing says which epoch but Keras
    model.fit(restarted, epochs=4, verbose=0, callbacks=[backup, restarted.epoch_callback()])
    restarted.close()
    assert sorted(resumed.seen) == [0, 1]
    assert sorted(restarted.seen) == [2, 3]  # Keras resumed at epoch 2, and so did vidring
    for epoch in range(4):
        got = resumed.seen.get(epoch) or restarted.seen[epoch]
        assert got == whole.seen[epoch], f"epoch {epoch}"


def test_evaluate_twice_sees_the_same_clips(daemons: Daemons, manifest: Path) -> None:
    name = daemons.start(manifest, batch_size=4, workers=2, slots=2, dtype="float32")
    val = Recording(name, evaluation=True)
    model = _model()
    first = model.evaluate(val, verbose=0)
    seen = {e: dict(batches) for e, batches in val.seen.items()}
    second = model.evaluate(val, verbose=0)
    val.close()
    assert first == pytest.approx(second)
    assert sorted(seen) == [0]
    assert val.seen == seen  # the same plan epoch, batch for batch


def test_a_two_batch_dataset_serves_epoch_0_in_the_first_epoch(daemons: Daemons,
                                                               manifest: Path) -> None:
    name = daemons.start(manifest, batch_size=8, workers=2, slots=2, dtype="float32")
    ds = Recording(name)
    assert len(ds) == 2  # Keras reads both batches for tensor specs before the epoch
    _model().fit(ds, epochs=2, verbose=0)
    ds.close()
    assert sorted(ds.seen) == [0, 1]
    for epoch in (0, 1):
        videos = sorted(v for rows in ds.seen[epoch].values() for v, _ in rows)
        assert videos == list(range(N_VIDEOS)), f"epoch {epoch}"
