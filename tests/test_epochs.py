"""Which plan epoch is read, from the calls Keras makes, without a daemon."""

from __future__ import annotations

import pytest

from vidring.loader.epochs import EpochTracker


def _epoch(t: EpochTracker, indices: list[int]) -> None:
    t.begin()
    for i in indices:
        t.read(i)
    t.end()


@pytest.mark.parametrize("batches", [1, 2, 5])
def test_spec_reads_never_consume_an_epoch(batches: int) -> None:
    t = EpochTracker(batches)
    for i in range(min(2, batches)):
        t.read(i)  # tensor-spec inference, outside any epoch
    t.end()  # fit's reset()
    assert t.epoch == 0
    _epoch(t, list(range(batches)))
    assert t.epoch == 1  # epoch 0 was fit's first epoch


def test_a_symbolic_build_inside_an_epoch_does_not_end_it() -> None:
    t = EpochTracker(5)
    _epoch(t, [0])  # a distribution strategy's one-batch build
    assert t.epoch == 0
    _epoch(t, [1, 2, 3, 4, 0])
    assert t.epoch == 1


def test_an_epoch_moves_on_only_when_every_index_was_read() -> None:
    t = EpochTracker(4)
    _epoch(t, [3, 1])  # steps_per_epoch=2: one plan epoch spans two Keras epochs
    assert t.epoch == 0
    _epoch(t, [0, 2])
    assert t.epoch == 1


def test_following_keras_epochs_resumes_where_keras_does() -> None:
    t = EpochTracker(3)
    t.follow(2)  # initial_epoch=2, or a BackupAndRestore resume
    assert t.epoch == 2
    _epoch(t, [0, 1, 2])
    assert t.epoch == 2  # Keras says when the next one starts
    t.follow(3)
    assert t.epoch == 3


def test_evaluation_reads_the_same_epoch_every_pass() -> None:
    t = EpochTracker(2, epoch=7, evaluation=True)
    for _ in range(3):
        _epoch(t, [0, 1])
        t.pass_done()
    assert t.epoch == 7


def test_a_full_loop_moves_on_and_bad_epochs_are_refused() -> None:
    t = EpochTracker(2)
    t.pass_done()
    assert t.epoch == 1
    with pytest.raises(ValueError, match="epoch must be an int"):
        t.set(-1)
    with pytest.raises(ValueError, match="epoch must be an int"):
        t.set(2**31)
