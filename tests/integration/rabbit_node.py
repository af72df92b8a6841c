"""A RabbitMQ node of a test's own, for tests that stop and start the broker (the shared test
node on :5673 is never stopped): started and stopped by its PID file through
``scripts/services.py``, its data in a directory of its own under ``var/services/``, removed
afterwards."""

from __future__ import annotations

import random
import shutil
import socket
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))
import services  # noqa: E402  (scripts/ is no package)


def _free_port() -> int:
    """A free port under 45536 (the node's distribution port is AMQP's + 20000)."""
    for _ in range(100):
        port = random.randrange(20000, 45000)
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) != 0 and \
                    sock.connect_ex(("127.0.0.1", port + 20000)) != 0:
                return port
    raise RuntimeError("no free port")


@dataclass
class Node:
    """A running node: ``url`` its AMQP URL; :meth:`restart` stops and starts it (its durable
    queues and persistent messages kept)."""

    profile: services.Profile

    @property
    def url(self) -> str:
        return self.profile.amqp_url

    def stop(self) -> None:
        services.stop_rabbitmq(self.profile)

    def start(self) -> None:
        if not services.start_rabbitmq(self.profile):
            raise RuntimeError(f"something else listens on :{self.profile.amqp_port}")

    def restart(self) -> None:
        self.stop()
        self.start()


def _fresh() -> Node:
    """A node started on free ports; a start that fails (once seen on a loaded machine:
    ``rabbitmqctl wait`` gave up) is stopped, removed and tried once more on other ports."""
    for attempt in (1, 2):
        profile = services.Profile(f"t-{uuid.uuid4().hex[:8]}", _free_port(), _free_port(), 0,
                                   redis_aof=False)
        node = Node(profile)
        try:
            node.start()
            return node
        except SystemExit:  # scripts/services.py exits with the reason
            node.stop()
            shutil.rmtree(profile.dir, ignore_errors=True)
            if attempt == 2:
                raise
    raise AssertionError("unreachable")


@contextmanager
def own_node() -> Iterator[Node]:
    """A fresh node on free ports; stopped and its directory removed on exit."""
    if not (services.RABBIT_BIN / "rabbitmq-server").exists():
        raise RuntimeError("rabbitmq-server is not installed")
    node = _fresh()
    try:
        yield node
    finally:
        node.stop()
        shutil.rmtree(node.profile.dir, ignore_errors=True)
