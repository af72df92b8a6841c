"""Every queue of the topology is bounded (sender/topology.py BOUNDS), and a refusal names the
queue it came from."""

from __future__ import annotations

import pytest

from sender import topology

TIERS = (10, 60)


def test_every_queue_has_a_bound_in_messages_and_bytes_and_refuses_when_full():
    _, queues = topology.describe(TIERS)
    for queue in queues:
        bound = topology.limits(queue)
        assert bound and bound[0] > 0 and bound[1] > 0, queue.name
        overflow = "drop-head" if queue.name == topology.STATUS_QUEUE else "reject-publish"
        assert queue.arguments["x-overflow"] == overflow, queue.name
    dead = next(q for q in queues if q.name == topology.DEAD_QUEUE)
    assert topology.limits(dead) == (100_000, 1024**3)


def test_an_unbounded_status_queue_is_the_one_exception():
    _, queues = topology.describe(TIERS, status_max_length=0)
    status = next(q for q in queues if q.name == topology.STATUS_QUEUE)
    assert topology.limits(status) is None


@pytest.mark.parametrize(("exchange", "key", "headers", "queue"), [
    ("outbox.jobs", "email", None, "outbox.email"),
    ("outbox.jobs", "sms.bulk", None, "outbox.sms.bulk"),
    ("outbox.jobs", "fax", None, "outbox.jobs"),
    ("outbox.dead", "bounces", None, "outbox.dead"),
    ("outbox.retry", "email", {"outbox-tier": "60"}, "outbox.retry.60"),
    ("", "outbox.events", None, "outbox.events"),
    ("outbox.status", "email.sent", None, "outbox.status"),
])
def test_a_publish_is_traced_to_its_queue(exchange, key, headers, queue):
    assert topology.queue_for(exchange, key, headers) == queue
