"""Shards: parts of every epoch for the processes of a host, and for daemons on hosts."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import pytest

from tests.support import N_VIDEOS, Daemons
from vidring.loader import ClipDataset, DaemonError
from vidring.loader.sequence import shard_from_tf_config

if TYPE_CHECKING:
    from pathlib import Path


def _plan_batches(ds: ClipDataset) -> list[tuple[int, list[int]]]:
    """(plan batch, labels) of one epoch of `ds`, in index order."""
    out = []
    for i in range(len(ds)):
        b = ds.batch(i)
        out.append((b.plan_batch, b.y.tolist()))
    ds.set_epoch(ds.epoch + 1)
    return out


def test_three_processes_split_one_pipeline(daemons: Daemons, manifest: Path) -> None:
    name = daemons.start(manifest, batch_size=2, workers=2, slots=4)  # 8 batches an epoch
    parts = [ClipDataset(name, shard=i, num_shards=3) for i in range(3)]
    try:
        assert [len(p) for p in parts] == [3, 3, 2]
        for epoch in range(2):
            got = [_plan_batches(p) for p in parts]
            batches = sorted(b for part in got for b, _ in part)
            assert batches == list(range(8)), f"epoch {epoch}: disjoint and covering"
            labels = sorted(v for part in got for _, lab in part for v in lab)
            assert labels == list(range(N_VIDEOS)), f"epoch {epoch}: every video once"
    finally:
        for p in parts:
            p.close()


def _starts(ds: ClipDataset) -> dict[int, int]:
    """video -> start frame of its clip, over one epoch of `ds`."""
    out = {}
    for i in range(len(ds)):
        for p in ds.batch(i).provenance:
            out[int(p["video_index"])] = int(p["frames"][0])
    ds.set_epoch(ds.epoch + 1)
    return out


def test_two_daemons_serve_disjoint_parts_that_cover_the_epoch(daemons: Daemons,
                                                               manifest: Path) -> None:
    names = [daemons.start(manifest, batch_size=4, workers=1, slots=2, seed=9,
                           extra=["--shard", str(i), "--num-shards", "2"]) for i in range(2)]
    whole = daemons.start(manifest, batch_size=4, workers=1, slots=2, seed=9)
    for epoch in range(2):
        parts = []
        for name in names:
            with ClipDataset(name, epoch=epoch) as ds:
                assert len(ds) == 2
                parts.append(_starts(ds))
        assert not set(parts[0]) & set(parts[1]), f"epoch {epoch}: disjoint"
        with ClipDataset(whole, epoch=epoch) as ds:
            unsharded = _starts(ds)
        assert {**parts[0], **parts[1]} == unsharded, f"epoch {epoch}: the same clips"


def test_a_shard_out_of_range_is_refused(daemons: Daemons, manifest: Path) -> None:
    name = daemons.start(manifest, batch_size=4, workers=0, slots=2)
    with pytest.raises(DaemonError, match="num_shards"):
        ClipDataset(name, shard=2, num_shards=2)


def test_from_input_context(daemons: Daemons, manifest: Path) -> None:
    import tensorflow as tf

    name = daemons.start(manifest, batch_size=2, workers=1, slots=2)
    context = tf.distribute.InputContext(num_input_pipelines=2, input_pipeline_id=1,
                                         num_replicas_in_sync=2)
    with ClipDataset.from_input_context(name, context) as ds:
        assert len(ds) == 4
        assert [b for b, _ in _plan_batches(ds)] == [1, 3, 5, 7]


def test_shard_from_tf_config() -> None:
    cluster = {"chief": ["h0:1"], "worker": ["h1:1", "h2:1"]}
    assert shard_from_tf_config("") == (0, 1)
    assert shard_from_tf_config(json.dumps(
        {"cluster": cluster, "task": {"type": "chief", "index": 0}})) == (0, 3)
    assert shard_from_tf_config(json.dumps(
        {"cluster": cluster, "task": {"type": "worker", "index": 1}})) == (2, 3)
    with pytest.raises(ValueError, match="reads no training data"):
        shard_from_tf_config(json.dumps({"cluster": cluster, "task": {"type": "ps", "index": 0}}))
    with pytest.raises(ValueError, match="TF_CONFIG"):
        shard_from_tf_config("{not json")
