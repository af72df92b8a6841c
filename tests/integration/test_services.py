"""The services the tests (and `make run`, `make bench`) start listen on loopback only."""

from __future__ import annotations

from pathlib import Path

from tests.conftest import PROFILE


def _listening(port: int) -> set[str]:
    """Local addresses (hex, as /proc/net/tcp writes them) listening on ``port``."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            address, port_hex = fields[1].rsplit(":", 1)
            if fields[3] == "0A" and int(port_hex, 16) == port:  # 0A: LISTEN
                found.add(address)
    return found


def test_rabbitmq_and_redis_ports_are_loopback_only(broker: object,
                                                    redis_cluster_server: object) -> None:
    loopback = {"0100007F", "00000000000000000000000001000000"}  # 127.0.0.1, ::1
    ports = {"amqp": PROFILE.amqp_port, "management": PROFILE.management_port,
             "erlang distribution": PROFILE.amqp_port + 20000, "redis": PROFILE.redis_port}
    for port in PROFILE.cluster_ports:  # each node, and its cluster bus
        ports |= {f"cluster node {port}": port, f"cluster bus {port}": port + 10000}
    for what, port in ports.items():
        addresses = _listening(port)
        assert addresses, f"nothing listens on {what} port {port}"
        assert addresses <= loopback, f"{what} port {port} listens on {addresses}"
