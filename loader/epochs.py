"""Which plan epoch a ClipDataset reads, from the calls Keras makes.  Pure bookkeeping.

What Keras does (DESIGN.md, "Batches, epochs and what Keras really does"):
with the TensorFlow backend, `fit` reads ds[0], ds[1] for tensor specs and then
calls on_epoch_end (its iterator's reset) before any on_epoch_begin; a
distribution strategy's symbolic build reads one batch inside a begun epoch;
then each epoch is on_epoch_begin, every index in a shuffled order, on_epoch_end.

So reads outside a begun epoch never count (they are served, and the same
index gets the same batch later), and an epoch moves on only at an end that
closes a begun epoch in which every index was asked for.  With
steps_per_epoch < len(ds) one plan epoch then spans several Keras epochs.

Two ways to say more than that:
- following: an EpochCallback passed to `fit` sets the plan epoch to Keras's own
  epoch at each epoch's start (initial_epoch, BackupAndRestore resumes), and
  nothing moves on by itself;
- evaluation: every pass reads the same epoch, so `evaluate` twice, or
  validation after every training epoch, sees the same clips.
"""

from __future__ import annotations

from vidring.loader.protocol import INT32_LIMIT


class EpochTracker:
    def __init__(self, batches_per_epoch: int, epoch: int = 0, *,
                 evaluation: bool = False) -> None:
        self.batches_per_epoch = batches_per_epoch
        self.evaluation = evaluation
        self.following = False
        self._in_epoch = False
        self.set(epoch)

    def set(self, epoch: int) -> None:
        if not isinstance(epoch, int) or not 0 <= epoch < INT32_LIMIT:
            raise ValueError(f"epoch must be an int in 0..2**31-1, got {epoch!r}")
        self.epoch = epoch
        self._requested: set[int] = set()

    def follow(self, keras_epoch: int) -> None:
        """Keras starts its epoch `keras_epoch` (from an EpochCallback)."""
        self.following = True
        if keras_epoch != self.epoch:
            self.set(keras_epoch)

    def begin(self) -> None:
        self._in_epoch = True

    def read(self, index: int) -> None:
        if self._in_epoch:
            self._requested.add(index)

    def end(self) -> None:
        closes, self._in_epoch = self._in_epoch, False
        if self.following or self.evaluation:
            return
        if closes and len(self._requested) >= self.batches_per_epoch:
            self.set(self.epoch + 1)

    def pass_done(self) -> None:
        """A `for x, y in ds` loop ran to its end."""
        if not (self.following or self.evaluation):
            self.set(self.epoch + 1)
