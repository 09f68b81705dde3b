"""The ring segment: layout math, create/attach, owner-only mode, reservation, unlink."""

from __future__ import annotations

import os
import stat

import numpy as np
import pytest

from vidring.loader.ring import (
    ALIGN_BYTES,
    PAGE_BYTES,
    Ring,
    RingError,
    RingLayout,
    SlotState,
    unlink,
)


@pytest.fixture
def seg_name() -> str:
    name = f"vidring-test-{os.getpid()}-{os.urandom(4).hex()}"
    yield name
    unlink(name)


def test_layout_alignment() -> None:
    lay = RingLayout(slot_count=3, batch_size=5, clip_length=7, height=11, width=13,
                     dtype="float32")
    assert lay.slot_bytes % PAGE_BYTES == 0
    for off in (lay.x_offset, lay.y_offset, lay.w_offset, lay.prov_offset, lay.data_offset):
        assert off % ALIGN_BYTES == 0
    assert lay.y_offset >= lay.x_bytes
    assert lay.w_offset >= lay.y_offset + 4 * 5
    assert lay.prov_offset >= lay.w_offset + 4 * 5
    assert lay.slot_bytes >= lay.prov_offset + lay.provenance_dtype.itemsize * 5
    assert lay.total_bytes == lay.data_offset + 3 * lay.slot_bytes


@pytest.mark.parametrize("bad", [{"batch_size": 0}, {"dtype": "float64"}, {"slot_count": 10**6},
                                 {"y_width": -1}])
def test_layout_rejects_bad_fields(bad: dict) -> None:
    args = dict(slot_count=2, batch_size=2, clip_length=2, height=2, width=2) | bad
    with pytest.raises(ValueError, match=next(iter(bad))):
        RingLayout(**args)


def test_create_attach_share_memory_and_unlink(seg_name: str) -> None:
    lay = RingLayout(slot_count=2, batch_size=2, clip_length=3, height=4, width=5)
    ring = Ring.create(seg_name, lay)
    mode = stat.S_IMODE(os.stat(f"/dev/shm/{seg_name}").st_mode)
    assert mode == 0o600
    writer = Ring.attach(seg_name, writable=True)
    reader = Ring.attach(seg_name)
    assert reader.layout == lay
    assert reader.ring_id == ring.ring_id
    writer.sample_array(1, 1)[:] = 77
    ring.set_slot_state(1, SlotState.READY, epoch=3, plan_batch=4, fill_seq=5)
    views = reader.views(1)
    assert views.x.shape == (2, 3, 4, 5, 3)
    assert (views.x[1] == 77).all()
    assert (views.x[0] == 0).all()
    assert reader.slot_state(1) == (SlotState.READY, 3, 4, 5)
    assert not views.x.flags.writeable  # the trainer maps read-only
    del views
    for r in (writer, reader, ring):
        r.close()
    ring.unlink()
    with pytest.raises(RingError, match="no ring segment"):
        Ring.attach(seg_name)
    assert not os.path.exists(f"/dev/shm/{seg_name}")


def test_wide_targets_weights_and_provenance_round_trip(seg_name: str) -> None:
    lay = RingLayout(slot_count=2, batch_size=3, clip_length=4, height=4, width=5,
                     dtype="float16", y_width=7)
    ring = Ring.create(seg_name, lay)
    try:
        views = ring.views(1)
        views.y[2] = np.arange(7)
        views.w[:] = (0.5, 1.0, 0.0)
        views.provenance[0] = (9, 8, [1, 2, 3, 4], [10, 20, 30, 40], (2, 4, 6, 8), 90, 1, 0,
                               0, 0)
        reader = Ring.attach(seg_name)
        assert reader.layout == lay
        got = reader.views(1)
        assert got.x.dtype == np.float16
        assert got.y.shape == (3, 7)
        assert got.y.dtype == np.float32
        np.testing.assert_array_equal(got.y[2], np.arange(7))
        np.testing.assert_array_equal(got.w, (0.5, 1.0, 0.0))
        prov = got.provenance[0]
        assert list(prov["frames"]) == [1, 2, 3, 4]
        assert list(prov["pts"]) == [10, 20, 30, 40]
        assert list(prov["crop"]) == [2, 4, 6, 8]
        assert (prov["rotation"], prov["flip"]) == (90, 1)
        del got, prov
        reader.close()
    finally:
        del views
        ring.close()
        ring.unlink()


def test_separate_slot_mapping_sees_the_same_bytes(seg_name: str) -> None:
    lay = RingLayout(slot_count=3, batch_size=1, clip_length=1, height=2, width=2)
    with Ring.create(seg_name, lay) as ring:
        ring.sample_array(2, 0)[:] = 9
        mapped = ring.map_slot(2)
        x = np.frombuffer(mapped, np.uint8, count=12).reshape(1, 2, 2, 3)
        assert (x == 9).all()
        del x
        mapped.close()


def test_full_shm_is_a_clear_error_and_leaves_nothing(seg_name: str) -> None:
    st = os.statvfs("/dev/shm")
    free_bytes = st.f_bavail * st.f_frsize
    frame_bytes = 512 * 512 * 4
    lay = RingLayout(slot_count=2, batch_size=1, clip_length=free_bytes // frame_bytes + 1,
                     height=512, width=512, dtype="uint8", channels=4)
    assert lay.total_bytes > free_bytes
    with pytest.raises(RingError, match=r"cannot reserve .* /dev/shm"):
        Ring.create(seg_name, lay)
    assert not os.path.exists(f"/dev/shm/{seg_name}")


def test_attach_rejects_foreign_segment(seg_name: str) -> None:
    with open(f"/dev/shm/{seg_name}", "wb") as fh:
        fh.write(b"\x00" * 8192)
    os.chmod(f"/dev/shm/{seg_name}", 0o600)
    with pytest.raises(RingError, match="bad magic"):
        Ring.attach(seg_name)
    os.chmod(f"/dev/shm/{seg_name}", 0o644)
    with pytest.raises(RingError, match="mode 0644: only this user's own"):
        Ring.attach(seg_name)


def test_attach_trusts_only_this_users_segment(seg_name: str) -> None:
    lay = RingLayout(slot_count=2, batch_size=1, clip_length=1, height=2, width=2)
    ring = Ring.create(seg_name, lay)
    try:
        os.chmod(f"/dev/shm/{seg_name}", 0o666)  # anyone could write batches into it
        with pytest.raises(RingError, match="mode 0666"):
            Ring.attach(seg_name)
        os.chmod(f"/dev/shm/{seg_name}", 0o600)
        if os.geteuid() == 0:
            os.chown(f"/dev/shm/{seg_name}", 65534, 65534)
            with pytest.raises(RingError, match="belongs to uid 65534"):
                Ring.attach(seg_name)
    finally:
        ring.close()
        ring.unlink()
