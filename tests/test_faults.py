"""Retry, back-off and quarantine of failing videos, without processes."""

from __future__ import annotations

from vidring.daemon.faults import MAX_FAILURES_IN_A_ROW, FaultLedger
from vidring.loader.status import RECENT_QUARANTINED, FileError


def test_retries_back_off_then_quarantine() -> None:
    ledger = FaultLedger(["a.mp4", "b.mp4"], retry_delay_s=2.0)
    delays = [ledger.clip_failed(1, f"boom {i}") for i in range(MAX_FAILURES_IN_A_ROW)]
    assert delays == [2.0, 8.0, None]
    assert ledger.quarantine == {1: "boom 2"}
    st = ledger.summary()
    assert st.count == 3
    assert st.last == FileError(path="b.mp4", reason="boom 2")
    assert st.quarantined == 1
    assert st.recent_quarantined == [st.last]


def test_a_success_resets_the_run() -> None:
    ledger = FaultLedger(["a.mp4"], retry_delay_s=1.0)
    for _ in range(5):
        assert ledger.clip_failed(0, "flaky") == 1.0
        ledger.clip_ok(0, replaced=False)
    assert not ledger.quarantine
    assert ledger.summary().count == 5


def test_probe_failure_quarantines_at_once_and_replacements_are_counted() -> None:
    ledger = FaultLedger(["a.mp4", "b.mp4"], retry_delay_s=1.0)
    ledger.probe_failed(0, "a.mp4: no such file")
    assert ledger.quarantine == {0: "probe: a.mp4: no such file"}
    ledger.clip_ok(1, replaced=True)
    assert ledger.summary().replaced_samples == 1


def test_the_summary_stays_small_whatever_fails() -> None:
    paths = [f"/data/{i:05d}.mp4" for i in range(5000)]
    ledger = FaultLedger(paths, retry_delay_s=1.0)
    for i in range(5000):
        ledger.probe_failed(i, "x" * 10_000)
    st = ledger.summary()
    assert st.quarantined == 5000
    assert len(st.recent_quarantined) == RECENT_QUARANTINED
    assert st.recent_quarantined[-1].path == paths[-1]
    assert all(len(f.reason) <= 500 for f in st.recent_quarantined)
