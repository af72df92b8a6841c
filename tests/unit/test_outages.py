"""The outage tracker (sender.outages): one WARNING when an outage starts, a reminder at most
every REMIND_EVERY seconds, one INFO when it ends with how long and how many jobs waited; the
gauges and the wait counter; the library lines an outage no longer needs are dropped."""

from __future__ import annotations

import logging

import pytest
from prometheus_client import CollectorRegistry

from outbox.logs import DropExpectedNoise
from sender.outages import DEPENDENCIES, Dependencies


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _sample(registry: CollectorRegistry, name: str, dependency: str) -> float | None:
    return registry.get_sample_value(name, {"dependency": dependency})


@pytest.fixture
def made(caplog: pytest.LogCaptureFixture) -> tuple[Dependencies, CollectorRegistry, Clock]:
    caplog.set_level(logging.INFO, logger="outbox.outage")
    registry, clock = CollectorRegistry(), Clock()
    return Dependencies(registry, clock=clock, remind_every=60.0), registry, clock


def _lines(caplog: pytest.LogCaptureFixture) -> list[tuple[str, str]]:
    return [(r.levelname, r.getMessage()) for r in caplog.records if r.name == "outbox.outage"]


def test_every_dependency_is_up_and_has_waited_nothing_from_the_start(made):
    _, registry, _ = made
    for name in DEPENDENCIES:
        assert _sample(registry, "outbox_dependency_up", name) == 1
        assert _sample(registry, "outbox_dependency_wait_seconds_total", name) == 0


def test_an_outage_is_one_warning_reminders_a_minute_apart_and_one_info(made, caplog):
    deps, registry, clock = made
    redis = deps.redis
    for second in range(0, 150):  # a failed call every second for 150 s, a job every 10 s
        clock.now = 1000.0 + second
        redis.failed(ConnectionRefusedError(111, "Connection refused"))
        if second % 10 == 0:
            redis.waiting()
        assert _sample(registry, "outbox_dependency_up", "redis") == 0
    clock.now = 1000.0 + 150.5
    redis.reachable()
    redis.reachable()  # once over, nothing more to say
    assert _lines(caplog) == [
        ("WARNING", "redis unreachable: connection refused"),
        ("WARNING", "redis still unreachable after 60 s: connection refused; 6 jobs waiting"),
        ("WARNING", "redis still unreachable after 120 s: connection refused; 12 jobs waiting"),
        ("INFO", "redis reachable again after 150.5 s; 15 jobs waited")]
    end = caplog.records[-1]
    assert (end.dependency, end.event, end.down_s, end.jobs_waited) == ("redis", "up", 150.5, 15)
    assert _sample(registry, "outbox_dependency_up", "redis") == 1
    assert _sample(registry, "outbox_dependency_wait_seconds_total", "redis") == 150.5
    assert _sample(registry, "outbox_dependency_up", "rabbitmq") == 1, "the other one untouched"


def test_the_wait_counter_grows_during_the_outage_and_a_new_outage_starts_afresh(made, caplog):
    deps, registry, clock = made
    deps.rabbitmq.failed("connection lost; reconnecting")
    clock.now += 7
    deps.rabbitmq.failed("connection lost; reconnecting")
    assert _sample(registry, "outbox_dependency_wait_seconds_total", "rabbitmq") == 7
    deps.rabbitmq.reachable()
    clock.now += 100
    deps.rabbitmq.failed("timed out")
    clock.now += 2
    deps.rabbitmq.reachable()
    assert [level for level, _ in _lines(caplog)] == ["WARNING", "INFO", "WARNING", "INFO"]
    assert _lines(caplog)[-1] == ("INFO", "rabbitmq reachable again after 2.0 s; 0 jobs waited")
    assert _sample(registry, "outbox_dependency_wait_seconds_total", "rabbitmq") == 9


def _record(name: str, msg: str, exc: BaseException | None = None) -> logging.LogRecord:
    return logging.LogRecord(name, logging.WARNING, "", 0, msg, (),
                             (type(exc), exc, None) if exc else None)


def test_the_broker_outage_lines_of_the_libraries_are_dropped_a_malformed_frame_is_not():
    from aiormq.exceptions import AMQPConnectionError

    keep = DropExpectedNoise().filter
    assert not keep(_record("aio_pika.robust_connection",
                            'Connection attempt to "amqp://x" failed: refused. Reconnecting '
                            "after 5 seconds."))
    assert not keep(_record("aiormq.connection", "Cancelling cause reader exited abnormally",
                            AMQPConnectionError("Server connection unexpectedly closed")))
    assert keep(_record("aiormq.connection", "Cancelling cause reader exited abnormally",
                        ValueError("malformed frame")))
    assert keep(_record("aio_pika.robust_connection", "something else"))
