"""Which clients the daemon forgets and whose leases expire, without processes."""

from __future__ import annotations

from vidring.daemon.clients import IDLE_CLIENT_S, Clients

ALIVE, DEAD = 100, 200


def _clients() -> Clients:
    return Clients(lease_timeout_s=60.0, alive=lambda pid: pid == ALIVE)


def test_a_paused_trainer_is_kept_with_or_without_leases() -> None:
    c = _clients()
    c.seen(b"trainer", 0.0).pid = ALIVE
    for held in (0, 3):
        assert c.sweep(10_000.0, lambda _who, n=held: n) == ([], [])


def test_a_trainer_whose_process_is_gone_is_forgotten() -> None:
    c = _clients()
    c.seen(b"trainer", 0.0).pid = DEAD
    assert c.sweep(0.5, lambda _who: 2) == ([b"trainer"], [])


def test_the_cli_is_forgotten_after_a_quiet_while() -> None:
    c = _clients()
    c.seen(b"cli", 0.0)  # no hello: pid unknown, and it holds nothing
    assert c.sweep(IDLE_CLIENT_S - 1, lambda _who: 0) == ([], [])
    assert c.sweep(IDLE_CLIENT_S + 1, lambda _who: 0) == ([b"cli"], [])


def test_only_a_client_the_daemon_cannot_see_loses_leases_and_is_told_once() -> None:
    c = _clients()
    c.seen(b"container", 0.0)  # pid None: another pid namespace
    assert c.sweep(59.0, lambda _who: 1) == ([], [])
    assert c.sweep(61.0, lambda _who: 1) == ([], [b"container"])
    c.leases_expired(b"container", [(3, 1)], 61.0)
    notice = c.take_notice(b"container")
    assert notice is not None
    assert "epoch 3 batch 1" in notice
    assert c.take_notice(b"container") is None
