"""The autoscaling policy, window by window: grow while the trainer waits and cores idle,
shrink while batches sit ready, never past MIN:MAX, and a pause after each change."""

from __future__ import annotations

import pytest

from vidring.daemon.autoscale import (
    COOL_DOWN_WINDOWS,
    WINDOW_S,
    Autoscaler,
    Meter,
    Window,
    parse_range,
)

STARVED = Window(WINDOW_S, waited_s=1.0, least_ready=0, slots=4, idle_cores=1.5)
FULL = Window(WINDOW_S, waited_s=0.0, least_ready=4, slots=4, idle_cores=0.0)
BUSY = Window(WINDOW_S, waited_s=1.0, least_ready=0, slots=4, idle_cores=0.1)


def _settle(scaler: Autoscaler) -> None:
    for _ in range(COOL_DOWN_WINDOWS):
        assert scaler.decide(1, FULL) is None


def test_grows_while_the_trainer_waits_and_a_core_is_idle() -> None:
    scaler = Autoscaler(1, 3)
    decision = scaler.decide(1, STARVED)
    assert decision is not None
    assert decision[0] == 2
    assert "trainer waited 33%" in decision[1]
    assert "1.5 cores idle" in decision[1]
    _settle(scaler)
    assert scaler.decide(2, BUSY) is None  # waiting, but no core to run one more on
    assert scaler.decide(3, STARVED) is None  # at MAX


def test_shrinks_while_batches_sit_ready() -> None:
    scaler = Autoscaler(1, 4)
    decision = scaler.decide(3, FULL)
    assert decision is not None
    assert decision[0] == 2
    assert "sat ready (4/4" in decision[1]
    _settle(scaler)
    assert scaler.decide(1, FULL) is None  # at MIN
    half = Window(WINDOW_S, waited_s=0.0, least_ready=2, slots=4, idle_cores=1.0)
    assert scaler.decide(3, half) is None  # the ring drains sometimes: keep them


def test_pulls_into_range() -> None:
    assert Autoscaler(2, 4).decide(1, FULL) == (2, "autoscale: below the minimum 2")
    assert Autoscaler(1, 2).decide(5, STARVED) == (2, "autoscale: above the maximum 2")


def test_meter_windows() -> None:
    idle = iter([0.0, 1.25])
    meter = Meter(0.0, lambda: next(idle))
    meter.waited(0.2)
    assert meter.tick(1.0, ready=3, slots=4) is None
    meter.waited(0.1)
    window = meter.tick(WINDOW_S, ready=1, slots=4)
    assert window == Window(WINDOW_S, 0.30000000000000004, 1, 4, 1.25)


@pytest.mark.parametrize("text", ["4", "3:2", "a:b", "0:0"])
def test_bad_ranges_are_named(text: str) -> None:
    with pytest.raises(ValueError, match="autoscale"):
        parse_range(text)
