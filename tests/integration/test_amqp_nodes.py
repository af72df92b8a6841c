"""OUTBOX_AMQP_URL listing several nodes, against the test RabbitMQ: a node that does not
answer is passed over for the next; none answering is one line naming every node. (A node
dying under a running worker: tests/integration/test_node_loss.py, on a real cluster.)"""

from __future__ import annotations

from urllib.parse import urlsplit

import pytest

from sender.bus import Bus
from sender.connect import ServiceUnreachable, probe_amqp
from sender.nodes import ClusterConnection

pytestmark = pytest.mark.integration


async def test_a_node_that_does_not_answer_is_passed_over(amqp_url, unused_tcp_port, caplog):
    dead = f"amqp://guest:guest@127.0.0.1:{unused_tcp_port}/"
    bus = Bus(f"{dead},{amqp_url}", retry_tiers=(1,))
    await bus.connect()
    try:
        assert isinstance(bus.connection, ClusterConnection)
        assert bus.connection.node == urlsplit(amqp_url).netloc.rpartition("@")[2]
        await bus.publish_to_queue("outbox.events", b"{}")
    finally:
        await bus.close()
    assert [r.getMessage() for r in caplog.records if r.name == "outbox.connect"] == [
        f"RabbitMQ node 127.0.0.1:{unused_tcp_port}: connection refused; trying the next"]
    await probe_amqp(f"{dead},{amqp_url}")


async def test_no_node_answering_is_one_line_naming_each(unused_tcp_port_factory):
    ports = [unused_tcp_port_factory() for _ in range(2)]
    urls = ",".join(f"amqp://guest:pw@127.0.0.1:{p}/" for p in ports)
    with pytest.raises(ServiceUnreachable) as info:
        await Bus(urls, retry_tiers=(1,), setting="OUTBOX_AMQP_URL").connect()
    line = str(info.value)
    assert all(f"127.0.0.1:{p}" in line for p in ports) and "pw" not in line
    assert "connection refused" in line and "OUTBOX_AMQP_URL" in line


async def test_a_node_that_accepts_but_never_answers_is_given_up_after_the_timeout(amqp_url):
    import socket

    from sender.nodes import connect_amqp

    with socket.socket() as silent:  # takes the TCP connection, never says a word of AMQP
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        port = silent.getsockname()[1]
        # without the timeout this waits for a Connection.Start that never comes
        connection = await connect_amqp(f"amqp://guest:guest@127.0.0.1:{port}/,{amqp_url}",
                                        within=1.0)
    try:
        assert isinstance(connection, ClusterConnection)
        assert connection.node == urlsplit(amqp_url).netloc.rpartition("@")[2]
    finally:
        await connection.close()
