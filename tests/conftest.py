"""Shared fixtures: real RabbitMQ and Redis (started here if not running, stopped by PID
afterwards), a fresh vhost per test, a Redis db of this session (claimed by a lock so two runs
on one machine never share one) wiped per test, and an aiosmtpd server per test with
per-recipient switches for 4xx/5xx replies and a hold on DATA replies.

Redis Cluster: a three-master cluster on loopback (``scripts/services.py``, ports 7101-7103)
is started the same way by the tests that use it. Tests marked ``backends`` run once per
``redis_backend`` (``single``: this session's wiped db; ``cluster``: the cluster), through the
fixtures that honour it (``backend_redis_url``, ``make_settings``, the unit tests' ``redis``).
A cluster has only db 0 and may be shared by concurrent runs: it is never flushed, and the
tests that run on it use names of their own (``names``: accounts, addresses, job ids with a
per-test suffix) and look only at their own keys.

Every test is marked by the services its fixtures need (``redis``, ``rabbitmq``, ``smtp``), so
``pytest -m "not redis and not rabbitmq"`` runs the tests that need no service at all."""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import threading
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
import redis

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
import services  # noqa: E402  (scripts/services.py)

PROFILE = services.PROFILES["test"]
# marker -> the fixtures that need that service (fixtures built on them inherit it)
SERVICE_MARKERS = {"redis": {"redis_server", "redis_cluster_server"},
                   "rabbitmq": {"rabbitmq_server"}, "smtp": {"smtp_server"}}
#: the Redis deployments a test marked ``backends`` runs on
BACKENDS = ("single", "cluster")
# db 0 holds the locks; a stock Redis has 16 databases
TEST_DBS = range(1, 16)
LOCK_KEY = "outbox-test-lock:{db}"
LOCK_TTL = 60  # seconds; refreshed every LOCK_TTL / 4, so a killed run frees its db soon
# set only when the value is still ours: a lock that expired and was claimed elsewhere stays lost
_REFRESH = "if redis.call('GET', KEYS[1]) == ARGV[1] then " \
           "return redis.call('EXPIRE', KEYS[1], ARGV[2]) end return 0"
_RELEASE = "if redis.call('GET', KEYS[1]) == ARGV[1] then " \
           "return redis.call('DEL', KEYS[1]) end return 0"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "backends: run once on a single Redis and once on the "
                            "Redis Cluster (the redis_backend fixture)")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """A test marked ``backends`` that uses Redis (``redis_backend`` in its fixtures) runs
    once per backend."""
    if metafunc.definition.get_closest_marker("backends") and \
            "redis_backend" in metafunc.fixturenames:
        # a test about the cluster itself (test_cluster.py's ``cluster`` fixture) runs on it
        # alone: no single-Redis variant to skip
        only = ["cluster"] if "cluster" in metafunc.fixturenames else BACKENDS
        metafunc.parametrize("redis_backend", only)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark each test by the services its fixtures (direct or through others) need."""
    for item in items:
        names = set(getattr(item, "fixturenames", ()))
        for marker, fixtures in SERVICE_MARKERS.items():
            if names & fixtures:
                item.add_marker(marker)


@pytest.fixture(scope="session")
def redis_server() -> Iterator[services.Profile]:
    """The test Redis: reused when up, else started and stopped (by PID) at the end."""
    started = services.start_redis(PROFILE)
    yield PROFILE
    if started:  # only what this session started is stopped
        services.stop_redis(PROFILE)


@pytest.fixture(scope="session")
def redis_cluster_server() -> Iterator[services.Profile]:
    """The test Redis Cluster (three masters): reused when up, else started and stopped (by
    PID) at the end."""
    started = services.start_cluster(PROFILE)
    yield PROFILE
    if started:
        services.stop_cluster(PROFILE)


@pytest.fixture
def redis_cluster_url(redis_cluster_server: services.Profile) -> str:
    """One node of the test cluster (never flushed: see the module's docstring)."""
    return PROFILE.cluster_url


@pytest.fixture(scope="session")
def rabbitmq_server() -> Iterator[services.Profile]:
    """The test RabbitMQ: reused when up, else started and stopped (by PID) at the end."""
    started = services.start_rabbitmq(PROFILE)
    yield PROFILE
    if started:
        services.stop_rabbitmq(PROFILE)


@pytest.fixture(scope="session")
def broker(rabbitmq_server: services.Profile, redis_server: services.Profile
           ) -> services.Profile:
    """Both services (for tests about the services themselves)."""
    return PROFILE


def claim_db(client: redis.Redis, token: str, dbs: range = TEST_DBS) -> int:
    """Claim the first db no other run holds (``SET outbox-test-lock:<db> token NX EX`` in
    db 0 of ``client``); RuntimeError when every one is taken."""
    for db in dbs:
        if client.set(LOCK_KEY.format(db=db), token, nx=True, ex=LOCK_TTL):
            return db
    raise RuntimeError(f"every test Redis db {dbs.start}..{dbs.stop - 1} is claimed by another "
                       f"run (keys {LOCK_KEY.format(db='*')} in db 0); wait or delete stale ones")


class DbLock:
    """This session's claim on a Redis db, refreshed by a daemon thread until released."""

    def __init__(self, client: redis.Redis, token: str, db: int) -> None:
        self.client, self.token, self.db = client, token, db
        self.key = LOCK_KEY.format(db=db)
        self.lost = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._refresh, name="redis-db-lock", daemon=True)
        self._thread.start()

    def _refresh(self) -> None:
        while not self._stop.wait(LOCK_TTL / 4):
            try:
                self.refresh()
            except redis.RedisError:
                pass  # a test may be cutting Redis off; the next round tries again

    def refresh(self) -> None:
        """Extend the claim; once it was taken by another run, it stays lost."""
        self.lost |= not self.client.eval(_REFRESH, 1, self.key, self.token, LOCK_TTL)

    def check(self) -> None:
        """Fail the test when the claim was lost (another run may be using the db)."""
        if self.lost:
            pytest.fail(f"lost the lock on Redis db {self.db}: another run may share it")

    def release(self) -> None:
        self._stop.set()
        self._thread.join()
        self.client.eval(_RELEASE, 1, self.key, self.token)
        self.client.close()


@pytest.fixture(scope="session")
def redis_db_lock(redis_server: services.Profile) -> Iterator[DbLock]:
    """A Redis db of this test session alone, claimed for the session and released after."""
    client = redis.Redis(host="127.0.0.1", port=PROFILE.redis_port, db=0)
    token = f"{os.getpid()}:{uuid.uuid4().hex}"
    lock = DbLock(client, token, claim_db(client, token))
    yield lock
    lock.release()


@pytest.fixture(scope="session")
def redis_session_url(redis_db_lock: DbLock) -> str:
    """The URL of this session's Redis db (not wiped: for fixtures that only run scripts)."""
    return f"redis://127.0.0.1:{PROFILE.redis_port}/{redis_db_lock.db}"


@pytest.fixture
def amqp_url(rabbitmq_server: services.Profile) -> Iterator[str]:
    """A fresh vhost for this test, deleted afterwards."""
    vhost = f"test-{uuid.uuid4().hex[:12]}"
    yield services.add_vhost(PROFILE, vhost)
    services.management(PROFILE, "DELETE", f"vhosts/{vhost}")


@pytest.fixture
def redis_url(redis_db_lock: DbLock, redis_session_url: str) -> Iterator[str]:
    """This session's Redis db, wiped first."""
    redis_db_lock.check()
    client = redis.Redis.from_url(redis_session_url)
    client.flushdb()
    client.close()
    yield redis_session_url


@pytest.fixture
def redis_backend() -> str:
    """``single`` unless the test is marked ``backends`` (then each in turn)."""
    return "single"


@pytest.fixture
def backend_redis_url(redis_backend: str, redis_server: services.Profile,
                      request: pytest.FixtureRequest) -> tuple[str, bool]:
    """(URL, cluster?) of this test's Redis: this session's wiped db, or the cluster (the
    test is marked ``redis`` either way: ``redis_server`` is among its fixtures)."""
    if redis_backend == "cluster":
        return request.getfixturevalue("redis_cluster_url"), True
    return request.getfixturevalue("redis_url"), False


class Names:
    """Names of this test alone (the cluster is shared and never flushed): ``account("acct_a")``
    → ``acct_a-<suffix>``; ``email("Bob@Example.com")`` → ``Bob.<suffix>@Example.com`` (the
    spelling kept); ``phone(i)`` → an E.164 Hong Kong mobile number of its own; ``job("j1")``."""

    def __init__(self) -> None:
        self.suffix = uuid.uuid4().hex[:10]

    def account(self, base: str) -> str:
        return f"{base}-{self.suffix}"

    def job(self, base: str) -> str:
        return f"{base}-{self.suffix}"

    def email(self, address: str) -> str:
        local, _, domain = address.rpartition("@")
        return f"{local}.{self.suffix}@{domain}"

    def phone(self, i: int = 0) -> str:
        """``+852`` and 8 digits starting 9, 6 or 5 (by ``i``), the rest from the suffix."""
        return f"+852{'965'[i % 3]}{(int(self.suffix, 16) + i // 3) % 10**7:07d}"


@pytest.fixture
def names() -> Names:
    return Names()


@dataclass
class Recorder:
    """What the test SMTP server received, and the switches that make it refuse or hold."""

    messages: list[tuple[str, list[str], bytes]] = field(default_factory=list)
    replies: dict[str, str] = field(default_factory=dict)  # rcpt -> "550 5.1.1 ..." reply
    delay: float = 0.0
    # DATA replies after the first ``hold_after`` messages wait for ``release()``: those sends
    # are received by the relay but not yet confirmed to the sender (in flight)
    hold_after: int | None = None
    held: int = 0  # DATA replies waiting now
    #: False: a message whose connection closed during ``delay`` is not stored (aiosmtpd's
    #: handler goes on after a close; its 250 would go to a closed transport, which is the
    #: ambiguous "on the wire at the kill" case, not what a test of failover means)
    keep_unconfirmed: bool = True
    _released: asyncio.Event = field(default_factory=asyncio.Event)

    def release(self) -> None:
        """Give every held DATA its reply now, and hold no more."""
        self.hold_after = None
        self._released.set()

    def by_rcpt(self, rcpt: str) -> list[bytes]:
        return [data for _, rcpts, data in self.messages if rcpt in rcpts]


class RecordingHandler:
    def __init__(self, recorder: Recorder) -> None:
        self.recorder = recorder

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str,
                          options: list[str]) -> str:
        reply = self.recorder.replies.get(address)
        if reply:
            return reply
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        if self.recorder.delay:
            await asyncio.sleep(self.recorder.delay)
        recorder = self.recorder
        if not recorder.keep_unconfirmed and (server.transport is None
                                              or server.transport.is_closing()):
            return "421 4.3.2 stopping"  # never read: nothing stored that is not confirmed
        recorder.messages.append(
            (envelope.mail_from, list(envelope.rcpt_tos), envelope.original_content))
        queued = len(recorder.messages)
        if recorder.hold_after is not None and queued > recorder.hold_after:
            recorder.held += 1
            try:
                await recorder._released.wait()
            finally:
                recorder.held -= 1
        return f"250 2.0.0 Ok: queued as Q{queued}"


@pytest_asyncio.fixture
async def smtp_server() -> AsyncIterator[tuple[str, Recorder]]:
    """An aiosmtpd server on a free port in this test's loop: (smtp_url, recorder)."""
    from aiosmtpd.smtp import SMTP

    recorder = Recorder()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: SMTP(RecordingHandler(recorder), enable_SMTPUTF8=True, hostname="test-mx"),
        host="127.0.0.1", port=0)
    port = server.sockets[0].getsockname()[1]
    yield f"smtp://127.0.0.1:{port}", recorder
    recorder.release()
    server.close()
    await server.wait_closed()


@pytest.fixture
def make_settings(amqp_url: str, backend_redis_url: tuple[str, bool]) -> Any:
    """Build settings for this test's vhost and Redis (its db, or the cluster), with
    overrides. Senders are not checked (``require_verified_senders=False``): the tests send
    from many domains; the tests of that rule turn it on (tests/integration/test_senders.py)."""
    from config import load_settings

    redis_url, cluster = backend_redis_url

    def _make(**overrides: Any) -> Any:
        base = {"amqp_url": amqp_url, "redis_url": redis_url, "redis_cluster": cluster,
                "retry_tiers": (1, 2),
                "shutdown_grace": 5.0, "smtp_timeout": 5.0, "metrics_port": 0,
                "require_verified_senders": False}
        return load_settings(**{**base, **overrides})

    return _make


@pytest.fixture(autouse=True)
def _logging_restored() -> Iterator[None]:
    """Logging as it was before the test: a test that runs ``cli.main`` in-process configures
    logging (the root's handlers, the ``outbox`` logger at WARNING), which would otherwise
    leave later tests' ``caplog`` without the INFO lines they read, and a handler writing to
    a closed capture stream."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    levels = {name: lg.level for name, lg in logging.root.manager.loggerDict.items()
              if isinstance(lg, logging.Logger)}
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    for name, lg in list(logging.root.manager.loggerDict.items()):
        if isinstance(lg, logging.Logger):
            lg.setLevel(levels.get(name, logging.NOTSET))

