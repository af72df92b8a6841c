"""Start and stop the local RabbitMQ and Redis that development, tests and benchmarks use.

Each service runs as its own process on loopback with its own ports and data directory under
``var/`` (so the tests' services never touch the development ones), and is stopped by the PID
we recorded, never by name. Standard library only: this runs before the virtualenv exists.

    python3 scripts/services.py start dev      # RabbitMQ :5672 (+ mgmt :15672), Redis :6379 (AOF)
    python3 scripts/services.py start bench    # RabbitMQ :5674 (+ :15674, messages in /dev/shm),
                                               # Redis :6381 (AOF, prod), Cluster :7201-7203 (AOF)
    python3 scripts/services.py start test     # RabbitMQ :5673 (+ :15673), Redis :6380,
                                               # Redis Cluster :7101-7103
    python3 scripts/services.py stop test
    python3 scripts/services.py status dev
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RABBIT_BIN = Path("/usr/lib/rabbitmq/bin")
REDIS_BIN = shutil.which("redis-server") or "/usr/bin/redis-server"
REDIS_CLI = shutil.which("redis-cli") or "/usr/bin/redis-cli"


@dataclass(frozen=True)
class Profile:
    """Ports and directory of one set of services."""

    name: str
    amqp_port: int
    management_port: int
    redis_port: int
    redis_aof: bool
    #: the masters of a Redis Cluster of its own (no replicas; each node's cluster bus on
    #: port + 10000, loopback too); () = none
    cluster_ports: tuple[int, ...] = ()
    #: RabbitMQ's message store in memory (/dev/shm) rather than on this machine's disk: the
    #: benchmarks' latency runs measured both cores in iowait for up to 200 ms at a time
    #: during the quorum queues' fsyncs, a tail of up to 180 ms at p99 even for the naive
    #: baseline at 100 jobs/s (benchmarks/README.md, "Where the p99 tail came from")
    broker_in_memory: bool = False

    @property
    def dir(self) -> Path:
        return ROOT / "var" / "services" / self.name

    @property
    def broker_data(self) -> Path:
        """Where RabbitMQ keeps its messages (``broker_in_memory``: under /dev/shm when this
        machine has it, one directory per profile and user)."""
        shm = Path("/dev/shm")
        if self.broker_in_memory and shm.is_dir():
            return shm / f"outbox-{self.name}-{os.getuid()}" / "mnesia"
        return self.dir / "rabbitmq" / "mnesia"

    @property
    def node(self) -> str:
        return f"outbox-{self.name}@localhost"

    @property
    def amqp_url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.amqp_port}/"

    @property
    def redis_url(self) -> str:
        return f"redis://127.0.0.1:{self.redis_port}/0"

    @property
    def cluster_url(self) -> str:
        """One node of the cluster (with OUTBOX_REDIS_CLUSTER=true the client finds the rest)."""
        return f"redis://127.0.0.1:{self.cluster_ports[0]}/0"


PROFILES = {
    "dev": Profile("dev", 5672, 15672, 6379, redis_aof=True),
    "test": Profile("test", 5673, 15673, 6380, redis_aof=False,
                    cluster_ports=(7101, 7102, 7103)),
    # benchmarks measure what production runs: AOF with fsync every second
    "bench": Profile("bench", 5674, 15674, 6381, redis_aof=True,
                     cluster_ports=(7201, 7202, 7203), broker_in_memory=True),
}


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    """True when something accepts TCP connections on host:port."""
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def rabbit_env(p: Profile) -> dict[str, str]:
    """Environment for a RabbitMQ node of its own: loopback only, data under var/."""
    base = p.dir / "rabbitmq"
    return {
        **os.environ,
        "HOME": os.environ.get("HOME", "/root"),
        "RABBITMQ_NODENAME": p.node,
        "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
        "RABBITMQ_NODE_PORT": str(p.amqp_port),
        "RABBITMQ_DIST_PORT": str(p.amqp_port + 20000),
        "ERL_EPMD_ADDRESS": "127.0.0.1",
        "RABBITMQ_MNESIA_BASE": str(p.broker_data),
        "RABBITMQ_LOG_BASE": str(base / "log"),
        "RABBITMQ_PID_FILE": str(base / "rabbitmq.pid"),
        "RABBITMQ_ENABLED_PLUGINS_FILE": str(base / "enabled_plugins"),
        "RABBITMQ_CONFIG_FILE": str(base / "rabbitmq"),
        "RABBITMQ_ADVANCED_CONFIG_FILE": str(base / "advanced.config"),
        "RABBITMQ_CONF_ENV_FILE": str(base / "rabbitmq-env.conf"),
    }


def start_rabbitmq(p: Profile) -> bool:
    """Start a detached RabbitMQ node and wait until it takes connections; False when one
    was already listening (then it is not ours to stop)."""
    if port_open(p.amqp_port):
        print(f"rabbitmq: something already listens on :{p.amqp_port}; using it")
        return False
    if not (RABBIT_BIN / "rabbitmq-server").exists():
        sys.exit("rabbitmq-server is not installed (apt-get install rabbitmq-server)")
    base = p.dir / "rabbitmq"
    (base / "log").mkdir(parents=True, exist_ok=True)
    (base / "enabled_plugins").write_text("[rabbitmq_management].\n")
    (base / "rabbitmq-env.conf").write_text("")
    # the Erlang distribution port too: loopback only (RABBITMQ_NODE_IP_ADDRESS covers AMQP only)
    (base / "advanced.config").write_text(
        "[{kernel, [{inet_dist_use_interface, {127,0,0,1}}]}].\n")
    (base / "rabbitmq.conf").write_text(
        f"listeners.tcp.default = 127.0.0.1:{p.amqp_port}\n"
        f"management.tcp.ip = 127.0.0.1\nmanagement.tcp.port = {p.management_port}\n"
        "vm_memory_high_watermark.relative = 0.3\ndisk_free_limit.absolute = 200MB\n"
    )
    env = rabbit_env(p)
    log = open(base / "log" / "startup.log", "ab")
    subprocess.Popen(
        [str(RABBIT_BIN / "rabbitmq-server"), "-detached"],
        env=env, stdout=log, stderr=log, start_new_session=True,
    ).wait()
    _ctl(p, "wait", "--timeout", "90", str(base / "rabbitmq.pid"))
    _ctl(p, "await_startup", "--timeout", "60")
    print(f"rabbitmq: node {p.node} up on 127.0.0.1:{p.amqp_port} "
          f"(management :{p.management_port})")
    return True


def stop_rabbitmq(p: Profile) -> None:
    """Stop our node by its PID (``rabbitmqctl stop`` first, then the PID file)."""
    pidfile = p.dir / "rabbitmq" / "rabbitmq.pid"
    if not pidfile.exists():
        return
    pid = _read_pid(pidfile)
    subprocess.run([str(RABBIT_BIN / "rabbitmqctl"), "stop", str(pidfile)],
                   env=rabbit_env(p), capture_output=True, timeout=90)
    if pid and _alive(pid):
        os.kill(pid, signal.SIGTERM)
    pidfile.unlink(missing_ok=True)
    print(f"rabbitmq: node {p.node} stopped")


def _ctl(p: Profile, *args: str) -> None:
    result = subprocess.run([str(RABBIT_BIN / "rabbitmqctl"), *args], env=rabbit_env(p),
                            capture_output=True, text=True, timeout=120)
    if result.returncode != 0:
        log = p.dir / "rabbitmq" / "log"
        sys.exit(f"rabbitmqctl {' '.join(args)} failed: {result.stderr.strip()}\n(see {log})")


def start_redis(p: Profile) -> bool:
    """Start redis-server on loopback with its own directory (AOF for the dev profile);
    False when one was already listening."""
    if port_open(p.redis_port):
        print(f"redis: something already listens on :{p.redis_port}; using it")
        return False
    if not Path(REDIS_BIN).exists():
        sys.exit("redis-server is not installed (apt-get install redis-server)")
    base = p.dir / "redis"
    base.mkdir(parents=True, exist_ok=True)
    # AOF alone, as production runs (README): no RDB snapshots beside it (a fork each time
    # 10,000 keys change in a minute, on the cores the worker uses)
    aof = ["--appendonly", "yes", "--appendfsync", "everysec", "--save", ""] if p.redis_aof \
        else ["--appendonly", "no", "--save", ""]
    subprocess.run(
        [REDIS_BIN, "--bind", "127.0.0.1", "--port", str(p.redis_port), "--dir", str(base),
         "--daemonize", "yes", "--pidfile", str(base / "redis.pid"),
         "--logfile", str(base / "redis.log"), *aof],
        check=True,
    )
    _wait_port(p.redis_port, "redis")
    print(f"redis: up on 127.0.0.1:{p.redis_port} (AOF {'on' if p.redis_aof else 'off'})")
    return True


def stop_redis(p: Profile) -> None:
    """Stop our redis-server by the PID it wrote."""
    pidfile = p.dir / "redis" / "redis.pid"
    pid = _read_pid(pidfile) if pidfile.exists() else None
    if pid and _alive(pid):
        os.kill(pid, signal.SIGTERM)
        for _ in range(100):
            if not _alive(pid):
                break
            time.sleep(0.05)
        print("redis: stopped")
    pidfile.unlink(missing_ok=True)


def cluster_ok(p: Profile) -> bool:
    """True when every node of the profile's cluster answers ``cluster_state:ok``."""
    return bool(p.cluster_ports) and all(
        "cluster_state:ok" in _cli(port, "CLUSTER", "INFO") for port in p.cluster_ports)


def start_cluster(p: Profile) -> bool:
    """Start the profile's Redis Cluster (one master per port, no replicas, joined by
    ``redis-cli --cluster create``) and wait until every node says ``cluster_state:ok``;
    False when it was already up (then it is not ours to stop). Nodes start empty: each run
    forgets the previous cluster's configuration and data."""
    if not p.cluster_ports:
        return False
    busy = [port for port in p.cluster_ports if port_open(port)]
    if busy:
        if len(busy) == len(p.cluster_ports) and _wait(lambda: cluster_ok(p), 10):
            print(f"redis cluster: already up on :{_span(p)}; using it")
            return False
        sys.exit(f"redis cluster: ports {busy} are taken but :{_span(p)} is no working "
                 "cluster; stop what listens there")
    for port in p.cluster_ports:
        base = p.dir / "cluster" / str(port)
        base.mkdir(parents=True, exist_ok=True)
        (base / "nodes.conf").unlink(missing_ok=True)
        aof = ["--appendonly", "yes", "--appendfsync", "everysec"] if p.redis_aof else \
            ["--appendonly", "no"]
        for old in base.glob("appendonly*"):
            if old.is_dir():
                shutil.rmtree(old)
            else:
                old.unlink()
        (base / "dump.rdb").unlink(missing_ok=True)
        subprocess.run(
            [REDIS_BIN, "--bind", "127.0.0.1", "--port", str(port), "--dir", str(base),
             "--cluster-enabled", "yes", "--cluster-config-file", str(base / "nodes.conf"),
             "--daemonize", "yes", "--pidfile", str(base / "redis.pid"),
             "--logfile", str(base / "redis.log"), "--save", "", *aof],
            check=True,
        )
    for port in p.cluster_ports:
        _wait_port(port, "redis cluster node")
    created = subprocess.run(
        [REDIS_CLI, "--cluster", "create", *(f"127.0.0.1:{port}" for port in p.cluster_ports),
         "--cluster-replicas", "0", "--cluster-yes"],
        capture_output=True, text=True, timeout=60)
    if created.returncode != 0:
        sys.exit(f"redis-cli --cluster create failed: {created.stdout[-500:]}"
                 f"{created.stderr[-500:]}")
    if not _wait(lambda: cluster_ok(p), 30):
        sys.exit(f"redis cluster on :{_span(p)} did not reach cluster_state:ok within 30 s "
                 f"(see {p.dir / 'cluster'})")
    print(f"redis cluster: {len(p.cluster_ports)} masters up on 127.0.0.1:{_span(p)}")
    return True


def stop_cluster(p: Profile) -> None:
    """Stop the cluster's nodes by the PIDs they wrote."""
    stopped = False
    for port in p.cluster_ports:
        pidfile = p.dir / "cluster" / str(port) / "redis.pid"
        pid = _read_pid(pidfile) if pidfile.exists() else None
        if pid and _alive(pid):
            os.kill(pid, signal.SIGTERM)
            stopped = True
            for _ in range(100):
                if not _alive(pid):
                    break
                time.sleep(0.05)
        pidfile.unlink(missing_ok=True)
    if stopped:
        print("redis cluster: stopped")


def _cli(port: int, *args: str) -> str:
    """One command through redis-cli; its output, or "" when the node does not answer."""
    try:
        done = subprocess.run([REDIS_CLI, "-h", "127.0.0.1", "-p", str(port), *args],
                              capture_output=True, text=True, timeout=5)
    except subprocess.TimeoutExpired:
        return ""
    return done.stdout if done.returncode == 0 else ""


def _span(p: Profile) -> str:
    return f"{p.cluster_ports[0]}-{p.cluster_ports[-1]}"


def _wait(ready: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not ready():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def _wait_port(port: int, what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not port_open(port):
        if time.monotonic() > deadline:
            sys.exit(f"{what} did not open port {port} within {timeout:.0f} s")
        time.sleep(0.05)


def _read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def management(p: Profile, method: str, path: str, body: object = None) -> object:
    """One call to the node's management HTTP API (guest, loopback); the JSON answer."""
    url = f"http://127.0.0.1:{p.management_port}/api/{path}"
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method)
    req.add_header("Authorization", "Basic " + base64.b64encode(b"guest:guest").decode())
    req.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(req, timeout=60) as resp:
        raw = resp.read()
    return json.loads(raw) if raw else None


def add_vhost(p: Profile, name: str) -> str:
    """Create a vhost with full rights for guest; its AMQP URL."""
    management(p, "PUT", f"vhosts/{name}", {})
    management(p, "PUT", f"permissions/{name}/guest",
               {"configure": ".*", "write": ".*", "read": ".*"})
    return f"amqp://guest:guest@127.0.0.1:{p.amqp_port}/{name}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=["start", "stop", "status", "env"])
    parser.add_argument("profile", choices=sorted(PROFILES))
    args = parser.parse_args(argv)
    p = PROFILES[args.profile]
    if args.action == "start":
        start_redis(p)
        start_cluster(p)
        start_rabbitmq(p)
    elif args.action == "stop":
        stop_rabbitmq(p)
        stop_cluster(p)
        stop_redis(p)
    elif args.action == "env":
        print(f"OUTBOX_AMQP_URL={p.amqp_url}\nOUTBOX_REDIS_URL={p.redis_url}")
        if p.cluster_ports:  # a comment: the lines above stay what `eval` should set
            print(f"# Redis Cluster: OUTBOX_REDIS_CLUSTER=true OUTBOX_REDIS_URL={p.cluster_url}")
    else:
        for name, port in (("rabbitmq", p.amqp_port), ("redis", p.redis_port)):
            print(f"{name}: {'up' if port_open(port) else 'down'} on :{port}")
        if p.cluster_ports:
            state = "up" if cluster_ok(p) else "down"
            print(f"redis cluster: {state} on :{_span(p)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
