"""The trainer side under other frameworks: Keras-on-JAX, tf.distribute.MirroredStrategy.

Each runs in a child process (the backend is chosen once per process) against real
daemons with the default number of slots.  Frameworks that hold more batches than the
ring has slots (Keras-on-JAX was seen keeping a whole epoch, MirroredStrategy prefetches
at start-up) are served by spilling (leases.py), never by an exhausted ring.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.support import N_VIDEOS, Daemons

pytestmark = pytest.mark.slow
SCRIPT = Path(__file__).with_name("backend_fit.py")


def _run(train: str, val: str, *args: str, env: dict[str, str] | None = None) -> dict[str, Any]:
    done = subprocess.run([sys.executable, str(SCRIPT), train, val, *args],
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, **(env or {})})
    assert done.returncode == 0, done.stderr[-3000:]
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def _assert_every_video_once_per_epoch(result: dict[str, Any], epochs: int) -> None:
    assert sorted(result["seen"]) == [str(e) for e in range(epochs)]
    for epoch, batches in result["seen"].items():
        videos = sorted(v for rows in batches.values() for v, _ in rows)
        assert videos == list(range(N_VIDEOS)), f"epoch {epoch}"


def _pipelines(daemons: Daemons, manifest: Path) -> tuple[str, str]:
    # 8 batches an epoch through the default 4 slots
    train = daemons.start(manifest, batch_size=2, workers=2, dtype="float32")
    val = daemons.start(manifest, batch_size=4, workers=1, dtype="float32")
    return train, val


def test_keras_on_jax_fits_validates_and_evaluates(daemons: Daemons, manifest: Path) -> None:
    pytest.importorskip("jax", reason="jax is in the test extras; install .[test]")
    train, val = _pipelines(daemons, manifest)
    result = _run(train, val, env={"KERAS_BACKEND": "jax"})
    assert result["backend"] == "jax"
    _assert_every_video_once_per_epoch(result, 3)
    assert result["evals"][0] == pytest.approx(result["evals"][1])  # the same clips twice


def test_mirrored_strategy_over_two_cpus_three_runs(daemons: Daemons, manifest: Path) -> None:
    train, val = _pipelines(daemons, manifest)
    for _ in range(3):
        result = _run(train, val, "--mirrored", env={"KERAS_BACKEND": "tensorflow"})
        _assert_every_video_once_per_epoch(result, 3)
