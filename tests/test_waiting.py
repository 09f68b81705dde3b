"""What a waiting trainer is told, as a pure function of time and progress."""

from __future__ import annotations

from vidring.daemon.waiting import STALL_GRACE_S, Progress, Verdict, Waiting, WaitPolicy

POLICY = WaitPolicy(exhausted_wait_s=30.0, task_timeout_s=60.0)
WAITING = Waiting(b"trainer", req_id=1, key=(0, 3), since=100.0)


def _progress(**changes: object) -> Progress:
    values: dict[str, object] = dict(slots=4, all_leased=False, workers_wanted=2,
                                     workers_alive=2, worker_restarts=0, last_clip_at=100.0,
                                     fatal="")
    values.update(changes)
    return Progress(**values)  # type: ignore[arg-type]


def test_a_request_waits_while_clips_keep_coming() -> None:
    assert POLICY.judge(WAITING, 1000.0, _progress(last_clip_at=999.0))[0] is Verdict.WAIT


def test_a_full_ring_waits_for_a_release_then_says_so() -> None:
    full = _progress(all_leased=True, last_clip_at=0.0)
    assert POLICY.judge(WAITING, 129.0, full)[0] is Verdict.WAIT
    verdict, text = POLICY.judge(WAITING, 131.0, full)
    assert verdict is Verdict.EXHAUSTED
    assert "holds all 4 slots" in text
    assert "--slots" in text
    # A full ring is never a stall, however long no clip finished.
    assert POLICY.judge(WAITING, 100.0 + 60.0 + STALL_GRACE_S + 1, full)[0] is Verdict.EXHAUSTED


def test_no_clip_for_the_decode_timeout_and_grace_is_a_stall() -> None:
    stall_after = 60.0 + STALL_GRACE_S
    assert POLICY.judge(WAITING, 100.0 + stall_after - 1, _progress())[0] is Verdict.WAIT
    verdict, text = POLICY.judge(WAITING, 100.0 + stall_after + 1,
                                 _progress(workers_alive=0, worker_restarts=7))
    assert verdict is Verdict.STALLED
    assert "0 of 2 workers alive, 7 worker restarts" in text


def test_a_stall_counts_from_the_request_not_from_the_last_clip() -> None:
    # Nobody waited for an hour, so no clip was needed: a new request is not stalled.
    late = Waiting(b"trainer", req_id=2, key=(5, 0), since=3700.0)
    assert POLICY.judge(late, 3701.0, _progress(last_clip_at=100.0))[0] is Verdict.WAIT


def test_a_client_holding_slots_of_a_full_ring_spills_at_once() -> None:
    full = _progress(all_leased=True)
    verdict, text = POLICY.judge(WAITING, 100.0, full, holds=2)
    assert verdict is Verdict.SPILL
    assert "holds 2 of them" in text
    assert POLICY.judge(WAITING, 100.0, full, holds=0)[0] is Verdict.WAIT
    assert POLICY.judge(WAITING, 100.0, _progress(), holds=2)[0] is Verdict.WAIT


def test_scaled_to_zero_and_fatal_are_said_at_once() -> None:
    verdict, text = POLICY.judge(WAITING, 100.0, _progress(workers_wanted=0))
    assert verdict is Verdict.STALLED
    assert "scaled to 0" in text
    verdict, text = POLICY.judge(WAITING, 100.0, _progress(fatal="no readable stand-in"))
    assert verdict is Verdict.STALLED
    assert text == "no readable stand-in"
