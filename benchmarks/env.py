"""The services a benchmark run uses: RabbitMQ and Redis of the ``bench`` profile
(``scripts/services.py``, started when down and stopped afterwards, reused when up; its Redis
Cluster too when a workload needs it), a fresh vhost per run (management API) and a flushed
Redis db per run (on the cluster: the ``outbox:*`` keys of the previous run unlinked)."""

from __future__ import annotations

import sys
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
import services  # noqa: E402  (scripts/services.py)

PROFILE = services.PROFILES["bench"]
REDIS_DB = 0        # flushed before every run
TEMPLATE_DB = 1     # seeded once (consent, suppression), copied into REDIS_DB per run


class Services:
    """Start (or reuse) the bench profile's RabbitMQ and Redis, and with ``cluster`` its
    three-master Redis Cluster (never the test profile's)."""

    def __init__(self, cluster: bool = False) -> None:
        self.cluster = cluster
        self.started = False
        self.cluster_started = False

    def __enter__(self) -> Services:
        self.redis_started = services.start_redis(PROFILE)
        self.rabbit_started = services.start_rabbitmq(PROFILE)
        if self.cluster:
            self.cluster_started = services.start_cluster(PROFILE)
        self.started = self.redis_started or self.rabbit_started or self.cluster_started
        return self

    def __exit__(self, *exc: Any) -> None:  # only what this session started is stopped
        if self.rabbit_started:
            services.stop_rabbitmq(PROFILE)
        if self.cluster_started:
            services.stop_cluster(PROFILE)
        if self.redis_started:
            services.stop_redis(PROFILE)

    @staticmethod
    def redis_url(db: int = REDIS_DB) -> str:
        return f"redis://127.0.0.1:{PROFILE.redis_port}/{db}"

    @staticmethod
    def cluster_url() -> str:
        """One node of the bench cluster (the client finds the others)."""
        url: str = PROFILE.cluster_url
        return url

    @staticmethod
    def cluster_primaries() -> list[Any]:
        """A plain client per primary of the bench cluster (for SCAN/UNLINK and INFO, each
        node's own keys and statistics); every node of the profile is a primary."""
        import redis

        nodes = [redis.Redis(host="127.0.0.1", port=port) for port in PROFILE.cluster_ports]
        for port, node in zip(PROFILE.cluster_ports, nodes, strict=True):
            role = node.info("replication").get("role")
            if role != "master":
                raise RuntimeError(f"bench cluster node :{port} is a {role}, expected a primary")
        return nodes


def management(method: str, path: str, body: Any = None) -> Any:
    """The bench node's management API (scripts/services.py)."""
    return services.management(PROFILE, method, path, body)


class Vhost:
    """A fresh vhost, deleted on exit."""

    def __init__(self, label: str) -> None:
        self.name = f"bench-{label}-{uuid.uuid4().hex[:8]}"

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{PROFILE.amqp_port}/{self.name}"

    def __enter__(self) -> Vhost:
        services.add_vhost(PROFILE, self.name)
        return self

    def __exit__(self, *exc: Any) -> None:
        try:
            management("DELETE", f"vhosts/{self.name}")
        except OSError as e:
            print(f"  (could not delete vhost {self.name}: {e})", file=sys.stderr)


def versions() -> dict[str, str]:
    """Versions of the services and libraries, for the report."""
    import subprocess
    from importlib.metadata import version

    out: dict[str, str] = {"python": sys.version.split()[0]}
    for dist in ("aio-pika", "aiormq", "redis", "hiredis", "aiosmtplib", "pydantic", "uvloop",
                 "outbox"):
        try:
            out[dist] = version(dist)
        except Exception:
            pass
    try:
        out["rabbitmq"] = management("GET", "overview")["rabbitmq_version"]
        out["erlang"] = management("GET", "overview")["erlang_version"]
    except Exception:
        pass
    try:
        import redis
        out["redis-server"] = redis.Redis.from_url(Services.redis_url()).info("server")[
            "redis_version"]
    except Exception:
        pass
    try:
        r = subprocess.run(["dpkg-query", "-W", "-f=${Version}", "postfix"],
                           capture_output=True, text=True)
        out["postfix (smtp-sink)"] = r.stdout.strip()
    except Exception:
        pass
    return out


def machine() -> dict[str, Any]:
    import os
    import platform

    model = "?"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    mem_kb = 0
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            mem_kb = int(line.split()[1])
    return {"nproc": os.cpu_count(), "cpu": model, "memory_gib": round(mem_kb / 2**20, 1),
            "kernel": platform.release()}
