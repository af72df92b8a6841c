"""Throw-away clusters on loopback for the node-loss tests and ``python -m benchmarks.faults``:
a 3-node RabbitMQ cluster and a Redis Cluster with a replica per master, each on free ports,
with its own node names and a temporary directory, stopped by its own PIDs (never the shared
test services).

Works on a fresh Debian machine with ``rabbitmq-server`` and ``redis-server`` installed (as
``.ci/run`` installs them): the RabbitMQ nodes are started as scripts/services.py starts the
test broker (``/usr/lib/rabbitmq/bin``, the current user, no plugins), then joined with
``rabbitmqctl join_cluster``; the Redis nodes with ``redis-cli --cluster create
--cluster-replicas 1``, and every replica's first sync is awaited (a replica that has not
finished it refuses to take over).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from benchmarks.env import services

RABBIT_BIN = Path("/usr/lib/rabbitmq/bin")
REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"
REDIS_CLI = shutil.which("redis-cli") or "/usr/bin/redis-cli"


class ClusterError(RuntimeError):
    """A cluster could not be started (the message says which step and where its logs are)."""


def free_port(*, plus: int = 0) -> int:
    """A TCP port free on loopback now (and ``port + plus`` too when ``plus``)."""
    for _ in range(200):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        if not plus or (port + plus < 65536 and _free(port + plus)):
            return port
    raise ClusterError("no free port pair found")


def _free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _pid(path: Path) -> int | None:
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _wait(predicate: Callable[[], bool], timeout: float, step: float = 0.2) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return predicate()


def _kill(pid: int | None) -> None:
    if pid and services._alive(pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        _wait(lambda: not services._alive(pid), 10, 0.05)


class RabbitCluster:
    """``size`` RabbitMQ nodes joined in one cluster, on free AMQP and distribution ports."""

    def __init__(self, size: int = 3) -> None:
        if not (RABBIT_BIN / "rabbitmq-server").exists():
            raise ClusterError("rabbitmq-server is not installed (apt-get install rabbitmq-server)")
        tag = uuid.uuid4().hex[:6]
        self.dir = Path(tempfile.mkdtemp(prefix=f"outbox-rabbit-{tag}-"))
        self.names = [f"outbox-{tag}-{i}@localhost" for i in range(size)]
        self.ports = [free_port(plus=20000) for _ in range(size)]
        self.dead: set[int] = set()

    def _env(self, i: int) -> dict[str, str]:
        base = self.dir / str(i)
        return {**os.environ, "HOME": os.environ.get("HOME", "/root"),
                "RABBITMQ_NODENAME": self.names[i], "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
                "RABBITMQ_NODE_PORT": str(self.ports[i]),
                "RABBITMQ_DIST_PORT": str(self.ports[i] + 20000),
                "ERL_EPMD_ADDRESS": "127.0.0.1",
                "RABBITMQ_MNESIA_BASE": str(base / "mnesia"),
                "RABBITMQ_LOG_BASE": str(base / "log"),
                "RABBITMQ_PID_FILE": str(base / "pid"),
                "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.dir / "plugins"),
                "RABBITMQ_CONFIG_FILE": str(base / "rabbitmq"),
                "RABBITMQ_ADVANCED_CONFIG_FILE": str(base / "advanced.config"),
                "RABBITMQ_CONF_ENV_FILE": str(base / "rabbitmq-env.conf")}

    def ctl(self, i: int, *args: str, timeout: float = 60) -> str:
        """``rabbitmqctl -n <node i> args``: its output; ClusterError when it fails."""
        done = subprocess.run([str(RABBIT_BIN / "rabbitmqctl"), "-n", self.names[i], *args],
                              env=self._env(i), capture_output=True, text=True,
                              timeout=timeout)
        if done.returncode != 0:
            raise ClusterError(f"rabbitmqctl -n {self.names[i]} {' '.join(args)}: "
                               f"{done.stderr.strip()[-400:]} (logs: {self.dir / str(i)})")
        return done.stdout

    def start(self) -> RabbitCluster:
        """Start every node, join them to the first, wait until the cluster runs."""
        (self.dir / "plugins").write_text("[].\n")
        for i in range(len(self.names)):
            base = self.dir / str(i)
            (base / "log").mkdir(parents=True)
            (base / "rabbitmq-env.conf").write_text("")
            (base / "advanced.config").write_text(
                "[{kernel, [{inet_dist_use_interface, {127,0,0,1}}]}].\n")
            (base / "rabbitmq.conf").write_text(
                f"listeners.tcp.default = 127.0.0.1:{self.ports[i]}\n"
                "vm_memory_high_watermark.relative = 0.2\ndisk_free_limit.absolute = 50MB\n")
            with open(base / "log" / "startup.log", "ab") as log:
                subprocess.Popen([str(RABBIT_BIN / "rabbitmq-server"), "-detached"],
                                 env=self._env(i), stdout=log, stderr=log,
                                 start_new_session=True).wait()
        with ThreadPoolExecutor(len(self.names)) as pool:  # rabbitmqctl takes seconds a call
            list(pool.map(self._await, range(len(self.names))))
        for i in range(1, len(self.names)):  # one at a time: concurrent joins can fail
            self._join(i)
        return self

    def _await(self, i: int) -> None:
        self.ctl(i, "wait", "--timeout", "120", str(self.dir / str(i) / "pid"), timeout=130)
        self.ctl(i, "await_startup", "--timeout", "60", timeout=70)

    def _join(self, i: int) -> None:
        self.ctl(i, "stop_app")
        self.ctl(i, "join_cluster", self.names[0])
        self.ctl(i, "start_app")

    def urls(self, vhost: str = "") -> str:
        """``OUTBOX_AMQP_URL`` for the cluster: every node, comma-separated."""
        return ",".join(f"amqp://guest:guest@127.0.0.1:{p}/{vhost}" for p in self.ports)

    def index(self, node: str) -> int:
        """Which node ``host:port`` is."""
        return self.ports.index(int(node.rpartition(":")[2]))

    def pid(self, i: int) -> int | None:
        return _pid(self.dir / str(i) / "pid")

    def kill(self, i: int) -> None:
        """SIGKILL node ``i`` (its Erlang VM): a node lost, not stopped."""
        self.dead.add(i)
        _kill(self.pid(i))

    def restart(self, i: int) -> None:
        """Start node ``i`` again after a kill (it rejoins the cluster) and wait for it."""
        with open(self.dir / str(i) / "log" / "startup.log", "ab") as log:
            subprocess.Popen([str(RABBIT_BIN / "rabbitmq-server"), "-detached"],
                             env=self._env(i), stdout=log, stderr=log,
                             start_new_session=True).wait()
        self._await(i)
        self.dead.discard(i)

    def live(self) -> int:
        """A node that was not killed."""
        return next(i for i in range(len(self.names)) if i not in self.dead)

    def members(self, queue: str, vhost: str = "/") -> list[str]:
        """The nodes holding a replica of quorum queue ``queue``."""
        out = self.ctl(self.live(), "list_queues", "-p", vhost, "name", "members", "-q",
                       "--no-table-headers")
        for line in out.splitlines():
            name, _, members = line.partition("\t")
            if name == queue:
                return [m.strip(" []'\"") for m in members.split(",") if m.strip(" []")]
        return []

    def stop(self, *, within: float = 20) -> None:
        """Stop every node by its PID (SIGTERM: the node shuts down; SIGKILL after
        ``within`` seconds) and remove the data."""
        pids = [pid for pid in map(self.pid, range(len(self.names)))
                if pid and services._alive(pid)]
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        _wait(lambda: not any(map(services._alive, pids)), within, 0.1)
        for pid in pids:
            _kill(pid)
        shutil.rmtree(self.dir, ignore_errors=True)


class RedisCluster:
    """A Redis Cluster of ``masters`` masters with one replica each, on free ports."""

    def __init__(self, masters: int = 3) -> None:
        if not Path(REDIS_SERVER).exists():
            raise ClusterError("redis-server is not installed (apt-get install redis-server)")
        self.dir = Path(tempfile.mkdtemp(prefix="outbox-redis-cluster-"))
        self.ports = [free_port(plus=10000) for _ in range(masters * 2)]
        self.dead: set[int] = set()

    def cli(self, port: int, *args: str) -> str:
        """One redis-cli command; its output ("" when the node does not answer)."""
        return services._cli(port, *args)

    def start(self) -> RedisCluster:
        """Start the nodes, create the cluster, wait for ``cluster_state:ok`` on each and for
        every replica's link to its master."""
        for port in self.ports:
            base = self.dir / str(port)
            base.mkdir()
            subprocess.run(
                [REDIS_SERVER, "--bind", "127.0.0.1", "--port", str(port), "--dir", str(base),
                 "--cluster-enabled", "yes", "--cluster-node-timeout", "2000",
                 "--cluster-config-file", str(base / "nodes.conf"), "--daemonize", "yes",
                 "--pidfile", str(base / "redis.pid"), "--logfile", str(base / "redis.log"),
                 "--save", "", "--appendonly", "no"], check=True)
        if not _wait(lambda: all(self.cli(p, "PING").strip() == "PONG" for p in self.ports),
                     20):
            raise ClusterError(f"redis nodes did not answer (logs: {self.dir})")
        created = subprocess.run(
            [REDIS_CLI, "--cluster", "create", *(f"127.0.0.1:{p}" for p in self.ports),
             "--cluster-replicas", "1", "--cluster-yes"],
            capture_output=True, text=True, timeout=60)
        if created.returncode != 0:
            raise ClusterError(f"redis-cli --cluster create: {created.stdout[-400:]}"
                               f"{created.stderr[-400:]}")
        ok = _wait(lambda: all("cluster_state:ok" in self.cli(p, "CLUSTER", "INFO")
                               for p in self.ports), 30)
        linked = ok and _wait(lambda: all("master_link_status:up" in self.cli(p, "INFO",
                                                                              "replication")
                                          for p in self.replicas()), 30)
        if not linked:
            raise ClusterError(f"redis cluster not ready within 60 s (logs: {self.dir})")
        return self

    def role(self, port: int) -> str:
        for line in self.cli(port, "INFO", "replication").splitlines():
            if line.startswith("role:"):
                return line.partition(":")[2].strip()
        return ""

    def masters(self) -> list[int]:
        return [p for p in self.ports if p not in self.dead and self.role(p) == "master"]

    def replicas(self) -> list[int]:
        return [p for p in self.ports if p not in self.dead and self.role(p) == "slave"]

    @property
    def url(self) -> str:
        """``OUTBOX_REDIS_URL`` (with ``OUTBOX_REDIS_CLUSTER=true``): one live node; the
        client reads the others from it (a process started later needs a node that is up)."""
        port = next(p for p in self.ports if p not in self.dead)
        return f"redis://127.0.0.1:{port}/0"

    def kill(self, port: int) -> None:
        """SIGKILL the node on ``port``."""
        self.dead.add(port)
        _kill(_pid(self.dir / str(port) / "redis.pid"))

    def state_ok(self) -> bool:
        """Every live node says ``cluster_state:ok``."""
        return all("cluster_state:ok" in self.cli(p, "CLUSTER", "INFO")
                   for p in self.ports if p not in self.dead)

    def stop(self) -> None:
        """Stop every node by its PID and remove the data."""
        for port in self.ports:
            _kill(_pid(self.dir / str(port) / "redis.pid"))
        shutil.rmtree(self.dir, ignore_errors=True)
