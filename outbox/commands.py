"""Subcommands of ``outbox`` (each a small function: parse, build settings, run)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import json
import logging
import os
import secrets
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from config import Settings, parse_processes
from outbox import dead, destinations, dev, domains, jobs, support
from outbox.dev import DEV_TWILIO
from outbox.runtime import (
    EXIT_BAD_INPUT,
    CliError,
    print_records,
    read_lines,
    run_async,
    run_once,
    settings,
)

log = logging.getLogger("outbox.cli")
ENQUEUE_WINDOW = 256  # publishes awaiting their confirms at once


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add every subcommand to the parser."""
    p = sub.add_parser("worker", help="consume jobs and send them")
    p.add_argument("--processes", metavar="N|auto",
                   help="worker processes under one supervisor, auto = one per CPU "
                   "(default OUTBOX_WORKER_PROCESSES, 1)")
    p.add_argument("--supervised-by", type=int, metavar="PID", help=argparse.SUPPRESS)
    p.set_defaults(func=cmd_worker)

    p = sub.add_parser("webhooks", help="the HTTP server: webhooks, admin API, metrics")
    p.add_argument("--port", type=int, help="listen port (default OUTBOX_HTTP_PORT)")
    p.set_defaults(func=cmd_webhooks)

    p = sub.add_parser("run", help="worker and webhook server in one process")
    p.add_argument("--dev", action="store_true",
                   help="also run the local sinks (capturing SMTP server, Twilio stand-in)")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("dev-sinks", help="a capturing SMTP server and a Twilio-compatible API")
    p.set_defaults(func=cmd_dev_sinks)

    p = sub.add_parser("bounces", help="SMTP listener for bounces and complaint reports "
                       "(port OUTBOX_BOUNCES_PORT); `bounces parse` reads saved ones")
    p.add_argument("--port", type=int, help="listen port (default OUTBOX_BOUNCES_PORT)")
    p.set_defaults(func=cmd_bounces)
    bsub = p.add_subparsers(dest="bounces_command", metavar="[parse]")
    pp = bsub.add_parser("parse", help="read bounce messages as the listener does: one JSON "
                         "line per recipient (files, directories of them, - for stdin)")
    pp.add_argument("paths", nargs="+", metavar="PATH|-")
    pp.add_argument("--to", action="append", default=[], metavar="ADDRESS",
                    help="the envelope recipient it came to (e.g. the VERP address)")
    pp.set_defaults(func=cmd_bounces_parse)

    p = sub.add_parser("enqueue", help="publish jobs from a JSON-lines file, or a file holding "
                       "one (pretty-printed) JSON job, or - for stdin")
    p.add_argument("source", metavar="FILE|-")
    p.add_argument("--no-validate", action="store_true",
                   help="publish lines as they are (the worker dead-letters invalid ones)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=cmd_enqueue)

    p = sub.add_parser("classify", help="classify an SMTP reply (or - : one per line on stdin)")
    p.add_argument("reply", metavar="REPLY|-", nargs="?")
    p.add_argument("--reasons", action="store_true",
                   help="print the reason taxonomy (reason, kind, meaning), one JSON a line")
    p.set_defaults(func=cmd_classify)

    support.register(sub)
    jobs.register(sub)
    dead.register(sub)
    destinations.register(sub)
    domains.register(sub)
    dev.register(sub)


# --- long-running ---------------------------------------------------------------------

#: Host names that are loopback by name (addresses are checked with ``ipaddress``).
LOOPBACK_NAMES = frozenset({"localhost"})


def is_loopback_url(url: str) -> bool:
    """Whether ``url``'s host is loopback: ``localhost``, 127.0.0.0/8 or ::1."""
    host = (urlsplit(url).hostname or "").lower()
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def dev_secret_problem(cfg: Settings) -> str | None:
    """Why these settings must not face the public, or None: the development secret key signs
    (or verifies) unsubscribe links while ``OUTBOX_PUBLIC_URL`` is reachable from outside, so
    anyone who reads the source could unsubscribe anyone."""
    if not cfg.uses_dev_secret or is_loopback_url(cfg.public_url):
        return None
    return (f"OUTBOX_SECRET_KEY includes the development key while OUTBOX_PUBLIC_URL "
            f"({cfg.public_url}) is not loopback: anyone could forge unsubscribe links; "
            f"set OUTBOX_SECRET_KEY to your own keys (at least 16 characters each)")


def refuse_dev_secret(cfg: Settings) -> None:
    """Stop a public server from starting with the development key (exit 2, one line)."""
    problem = dev_secret_problem(cfg)
    if problem:
        raise CliError(problem)


def cmd_worker(args: argparse.Namespace) -> int:
    from sender.service import run_worker

    cfg = settings()
    processes = worker_processes(args.processes, cfg)
    if args.supervised_by is not None:
        return _run_child(cfg, args.supervised_by)
    problem = dev_secret_problem(cfg)
    if problem:  # the worker only signs links; the servers that honour them refuse to start
        log.warning("%s", problem)
    if processes > 1:
        return run_async(lambda stop: _supervise(cfg, processes, stop, args.log_level))
    return run_async(lambda stop: _with_metrics(
        cfg, lambda reg: _when_reachable(cfg, stop, lambda: run_worker(cfg, stop, reg))))


def worker_processes(flag: str | None, cfg: Settings) -> int:
    """``--processes`` over ``OUTBOX_WORKER_PROCESSES``; a bad flag is a CliError naming it."""
    if flag is None:
        return cfg.worker_processes
    try:
        return parse_processes(flag)
    except ValueError as exc:
        raise CliError(f"--processes: {exc}") from None


def _run_child(cfg: Settings, supervisor: int) -> int:
    """One worker process under a supervisor: its lines name it, it serves no metrics (the
    supervisor serves every child's), and it stops by itself if the supervisor is gone."""
    from outbox.logs import name_processes
    from outbox.supervisor import watch_parent
    from sender.service import run_worker

    name_processes()

    async def run(stop: asyncio.Event) -> None:
        watcher = asyncio.create_task(watch_parent(supervisor, stop))
        try:
            await _when_reachable(cfg, stop, lambda: run_worker(cfg, stop))
        finally:
            watcher.cancel()

    return run_async(run)


async def _supervise(cfg: Settings, processes: int, stop: asyncio.Event,
                     log_level: str | None, env: dict[str, str] | None = None) -> int:
    """``processes`` workers under a supervisor (outbox/supervisor.py), every child's metrics
    on ``OUTBOX_METRICS_PORT``. RabbitMQ and Redis are checked (and the topology declared)
    once first, so a refused login or a topology mismatch is said once, not by every child."""
    from prometheus_client import CollectorRegistry, start_http_server

    from outbox.logs import name_processes
    from outbox.supervisor import Supervisor, child_argv, collect_children, metrics_dir

    name_processes()
    with contextlib.ExitStack() as stack:
        path = stack.enter_context(metrics_dir()) if cfg.metrics_port else None
        if path:
            registry = collect_children(CollectorRegistry(), path)
            server, _ = start_http_server(cfg.metrics_port, addr=cfg.http_host,
                                          registry=registry)
            stack.callback(server.shutdown)
        if not await _checked(cfg, stop):
            return 0
        supervisor = Supervisor(processes, child_argv(os.getpid(), log_level),
                                grace=cfg.shutdown_grace, env=env, metrics_path=path)
        return await supervisor.run(stop)


async def _checked(cfg: Settings, stop: asyncio.Event) -> bool:
    """Wait for RabbitMQ and Redis and declare the topology (one line a failed attempt):
    True when done, False when stopped first."""
    reached = False

    async def check() -> None:
        nonlocal reached
        async with _connected(cfg):
            reached = True

    await _when_reachable(cfg, stop, check)
    return reached


def _service_urls(cfg: Settings) -> dict[str, str]:
    return {"amqp": cfg.amqp_url.get_secret_value(), "redis": cfg.redis_url.get_secret_value()}


async def _when_reachable(cfg: Settings, stop: asyncio.Event,
                          start: Callable[[], Awaitable[None]]) -> None:
    """Wait for RabbitMQ and Redis (one log line naming the setting and masked URL an
    attempt, with backoff), then run ``start()`` until it returns; a service lost again during
    start-up means waiting again. Returns at once when ``stop`` is set while waiting."""
    from sender.connect import RETRY_DELAYS, ServiceUnreachable, wait_for_services

    failures = 0
    while await wait_for_services(_service_urls(cfg), stop, redis_cluster=cfg.redis_cluster):
        try:
            await start()
            return
        except ServiceUnreachable as exc:
            delay = RETRY_DELAYS[min(failures, len(RETRY_DELAYS) - 1)]
            failures += 1
            log.error("%s (during start-up, retrying in %g s)", exc, delay,
                      extra={"setting": exc.setting, "url": exc.url, "retry_in": delay})
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), delay)


async def _with_metrics(cfg: Any, run: Any) -> None:
    from prometheus_client import CollectorRegistry, start_http_server

    registry = CollectorRegistry()
    if cfg.metrics_port:
        start_http_server(cfg.metrics_port, addr=cfg.http_host, registry=registry)
    await run(registry)


def cmd_webhooks(args: argparse.Namespace) -> int:
    cfg = settings(http_port=args.port)
    refuse_dev_secret(cfg)
    return run_async(lambda stop: _when_reachable(cfg, stop, lambda: _serve_http(cfg, stop)))


async def _serve_http(cfg: Any, stop: asyncio.Event, registry: Any = None) -> None:
    async with _http_server(cfg, registry):
        await stop.wait()


@contextlib.asynccontextmanager
async def _connected(cfg: Settings) -> AsyncIterator[tuple[Any, Any]]:
    """(bus, redis) of a server: Redis answered, the bus connected and the topology declared
    (ServiceUnreachable in one line otherwise); both closed on exit."""
    from sender.bus import Bus
    from sender.connect import ping_redis
    from sender.service import make_redis

    redis = make_redis(cfg)
    bus = Bus.from_settings(cfg)
    try:
        await ping_redis(redis, cfg.redis_url.get_secret_value())
        await bus.connect(declare=True)
        yield bus, redis
    finally:
        await bus.close()
        await redis.aclose()


@contextlib.asynccontextmanager
async def _http_server(cfg: Settings, registry: Any = None,
                       dependencies: Any = None) -> AsyncIterator[None]:
    """The webhook/admin HTTP server, listening until the block ends."""
    from aiohttp import web
    from prometheus_client import CollectorRegistry

    from webhooks.app import make_app, make_runner

    async with _connected(cfg) as (bus, redis):
        app = make_app(cfg, bus=bus, redis=redis, registry=registry or CollectorRegistry(),
                       dependencies=dependencies)
        runner = make_runner(app, cfg)
        await runner.setup()
        try:
            await web.TCPSite(runner, cfg.http_host, cfg.http_port).start()
            log.info("http server on %s:%d", cfg.http_host, cfg.http_port)
            yield
        finally:
            await runner.cleanup()


def cmd_run(args: argparse.Namespace) -> int:
    cfg = settings()
    overrides = dev_overrides(cfg) if args.dev else {}
    cfg = settings(**overrides) if overrides else cfg
    refuse_dev_secret(cfg)
    # worker children read the environment: what --dev changed is passed to them there
    env = {**os.environ, **{f"OUTBOX_{k.upper()}": str(v) for k, v in overrides.items()}}
    return run_async(lambda stop: _run_all(cfg, stop, dev=args.dev, env=env,
                                           log_level=args.log_level))


#: The admin token of ``outbox run --dev`` when none is configured and the server is loopback
#: only (otherwise a random one is made); printed in the ready banner.
DEV_ADMIN_TOKEN = "dev-admin-token"


#: The bounce domain of ``outbox run --dev`` when none is configured: its bounce listener
#: takes the reports the dev SMTP sink mails back (bounce-later@, complaint@).
DEV_BOUNCE_DOMAIN = "bounces.outbox.localhost"


def dev_overrides(cfg: Settings) -> dict[str, Any]:
    """What ``--dev`` changes: SMS to the Twilio stand-in when no Twilio account is
    configured, a development admin token when none is, and a bounce domain when none is
    (its listener on a port of its own choosing unless OUTBOX_BOUNCES_PORT is set), so the dev
    SMTP sink's reports come back as a remote server's would."""
    overrides: dict[str, Any] = {}
    if not cfg.bounce_domain:
        overrides["bounce_domain"] = DEV_BOUNCE_DOMAIN
        if "bounces_port" not in cfg.model_fields_set:
            overrides["bounces_port"] = 0
    if not cfg.twilio_configured:
        overrides |= {**DEV_TWILIO,
                      "twilio_api_base": f"http://{cfg.http_host}:{cfg.dev_twilio_port}"}
    if not cfg.admin_tokens:
        overrides["admin_tokens"] = (DEV_ADMIN_TOKEN if is_loopback_url(f"http://{cfg.http_host}")
                                     else secrets.token_urlsafe(18))
    return overrides




async def _run_all(cfg: Any, stop: asyncio.Event, *, dev: bool,
                   env: dict[str, str] | None = None, log_level: str | None = None) -> int:
    """Worker, HTTP server and bounce listener started in turn once RabbitMQ and Redis
    answer; stopped in the reverse order (the worker drains last). With
    ``OUTBOX_WORKER_PROCESSES`` above 1 the worker part is that many processes under a
    supervisor, their metrics on the HTTP server's ``/metrics``; 2 when one refused to start."""
    sinks, mail_sink = await _start_sinks(cfg) if dev else ([], None)
    if not cfg.bounce_domain:
        log.info("no OUTBOX_BOUNCE_DOMAIN: the bounce listener is not started")
    code = 0

    async def start() -> None:
        nonlocal code
        from prometheus_client import CollectorRegistry

        from sender.outages import Dependencies
        from sender.service import started_worker

        registry = CollectorRegistry()  # a new one each attempt: nothing registered twice
        if dev and cfg.require_verified_senders:
            await verify_dev_senders(cfg)
        # one outage tracker per dependency for the whole process: one line per outage; with
        # worker processes theirs are exported (summed by the supervisor), this one is not
        supervised = cfg.worker_processes > 1
        deps = Dependencies(CollectorRegistry() if supervised else registry)
        async with contextlib.AsyncExitStack() as stack:
            if supervised:
                workers = await stack.enter_async_context(
                    _supervised(cfg, stop, registry, env=env, log_level=log_level))
            else:
                await stack.enter_async_context(started_worker(cfg, registry, deps))
            await stack.enter_async_context(_http_server(cfg, registry, deps))
            if cfg.bounce_domain:
                port = await stack.enter_async_context(_bounce_listener(cfg, registry, deps))
                if mail_sink is not None:  # the dev sink's reports go to this listener
                    mail_sink.report_to = (cfg.http_host, port)
            log.info("ready")
            if dev:
                print(ready_banner(cfg), file=sys.stderr, flush=True)
            await stop.wait()
        if cfg.worker_processes > 1:
            code = workers.result()

    try:
        await _when_reachable(cfg, stop, start)
    finally:
        for sink in sinks:
            await sink.close()
    return code


@contextlib.asynccontextmanager
async def _supervised(cfg: Settings, stop: asyncio.Event, registry: Any, *,
                      env: dict[str, str] | None, log_level: str | None
                      ) -> AsyncIterator[asyncio.Task[int]]:
    """``outbox run``'s worker processes under a supervisor running beside the servers, their
    metrics collected into ``registry``; a supervisor that ends by itself (a child refused to
    start) sets ``stop``. On exit the children are drained; the task holds the exit status."""
    from outbox.logs import name_processes
    from outbox.supervisor import Supervisor, child_argv, collect_children, metrics_dir

    name_processes()
    with metrics_dir() as path:
        collect_children(registry, path)
        supervisor = Supervisor(cfg.worker_processes, child_argv(os.getpid(), log_level),
                                grace=cfg.shutdown_grace, env=env, metrics_path=path)
        own_stop = asyncio.Event()
        task = asyncio.create_task(supervisor.run(own_stop))
        # ended by itself (not drained on exit here, e.g. before a start-up retry): stop all
        task.add_done_callback(lambda _: None if own_stop.is_set() else stop.set())
        try:
            yield task
        finally:
            own_stop.set()
            await asyncio.wait({task})


#: The example senders ``outbox run --dev`` verifies itself, without DNS (the accounts and
#: domains of examples/ and the README walkthrough), so its jobs go out.
DEV_SENDERS = {"acct_demo": ("demo.example", "example.com")}


async def verify_dev_senders(cfg: Settings) -> None:
    """Verify :data:`DEV_SENDERS` (development only: no DNS is asked)."""
    from sender.service import make_redis
    from suppression.domains import DomainStore

    redis = make_redis(cfg)
    try:
        store = DomainStore.from_settings(redis, cfg)
        for account, names in DEV_SENDERS.items():
            for name in names:
                await store.verify_without_dns(account, name,
                                               why="outbox run --dev: an example domain")
    finally:
        await redis.aclose()
    log.info("example sender domains verified without DNS (--dev)",
             extra={"domains": [d for names in DEV_SENDERS.values() for d in names]})


#: The job the ready banner enqueues (a transactional email to the local sink).
EXAMPLE_JOB = {"v": 1, "id": "example-1", "account_id": "acct_demo", "channel": "email",
               "category": "transactional", "to": "someone@example.com",
               "from": "Demo <demo@example.com>", "subject": "Hello from Outbox",
               "text": "It works."}


def ready_banner(cfg: Settings) -> str:
    """What ``outbox run --dev`` prints once everything is up: where mail lands, how to
    enqueue the example job, the admin page and its development token."""
    token = cfg.admin_tokens[0].token.get_secret_value() if cfg.admin_tokens else "(none)"
    job = json.dumps(EXAMPLE_JOB, separators=(",", ":"))
    base = f"http://{cfg.http_host}:{cfg.http_port}"
    return "\n".join((
        "",
        "Outbox is ready (development).",
        f"  mail lands in   {cfg.dev_mail_dir}/*.eml (SMTP sink {cfg.http_host}:"
        f"{cfg.dev_smtp_port}); SMS go to the Twilio stand-in on port {cfg.dev_twilio_port}",
        f"  SMS land in     {cfg.dev_sms_dir}/*.json (text, segments, encoding)",
        "  outcomes        bounce@ softbounce@ bounce-later@ complaint@ any domain; SMS to "
        "numbers ending 0003/0005/0006/0007 fail; a STOP reply: "
        ".venv/bin/outbox dev sms-reply NUMBER STOP --account ACCOUNT",
        f"  enqueue a job   echo '{job}' | .venv/bin/outbox enqueue -",
        f"  admin page      {base}/admin/   token: {token}",
        *([f"  senders         {', '.join(d for ds in DEV_SENDERS.values() for d in ds)} "
           f"verified for {', '.join(DEV_SENDERS)} without DNS (development only; "
           "`outbox domains` for real ones)"] if cfg.require_verified_senders else []),
        "  stop            Ctrl-C (then `make stop-services` for RabbitMQ and Redis)",
        ""))


def cmd_dev_sinks(args: argparse.Namespace) -> int:
    cfg = settings()

    async def _run(stop: asyncio.Event) -> None:
        sinks, _ = await _start_sinks(cfg, report_to=(cfg.http_host, cfg.bounces_port))
        await stop.wait()
        for sink in sinks:
            await sink.close()

    return run_async(_run)


class _Closer:
    """Something started that has an async close."""

    def __init__(self, close: Any) -> None:
        self.close = close


async def _start_sinks(cfg: Any, report_to: tuple[str, int] | None = None
                       ) -> tuple[list[_Closer], Any]:
    """The dev SMTP sink and the Twilio stand-in, started: their closers, and the SMTP sink's
    handler (its ``report_to`` is where bounce-later@ and complaint@ reports are mailed)."""
    from outbox.devsinks.smtp_sink import start_smtp_sink
    from outbox.devsinks.twilio_api import TwilioStandIn

    server, handler = await start_smtp_sink(cfg.dev_mail_dir, cfg.http_host,
                                            cfg.dev_smtp_port, report_to)
    sid = cfg.twilio_account_sid or DEV_TWILIO["twilio_account_sid"]
    token = (cfg.twilio_auth_token.get_secret_value() if cfg.twilio_auth_token
             else DEV_TWILIO["twilio_auth_token"])
    twilio = TwilioStandIn(account_sid=sid, auth_token=token, callback_delay=0.5,
                           sms_dir=cfg.dev_sms_dir)
    base = await twilio.start(cfg.http_host, cfg.dev_twilio_port)
    print(f"dev SMTP sink on {cfg.http_host}:{cfg.dev_smtp_port} -> {cfg.dev_mail_dir}/\n"
          f"dev Twilio API on {base} (account {sid}) -> {cfg.dev_sms_dir}/", file=sys.stderr)

    async def close_smtp() -> None:
        await handler.close()
        server.close()
        await server.wait_closed()

    return [_Closer(close_smtp), _Closer(twilio.close)], handler


def cmd_bounces(args: argparse.Namespace) -> int:
    from webhooks.bounces import ListenerConfig

    cfg = settings(bounces_port=args.port)
    try:
        ListenerConfig.from_settings(cfg)
    except ValueError as exc:
        raise CliError(str(exc)) from None
    return run_async(lambda stop: _with_metrics(
        cfg, lambda reg: _when_reachable(cfg, stop, lambda: _serve_bounces(cfg, stop, reg))))


def cmd_bounces_parse(args: argparse.Namespace) -> int:
    """Each message read by the listener's own reader (:func:`webhooks.providers.dsn.read`):
    one JSON line per recipient; exit 2 when a path could not be read."""
    from webhooks.providers import dsn

    domain = _message_id_domain()
    unreadable = 0
    for source, raw in _messages(args.paths):
        if raw is None:
            unreadable += 1
            continue
        for line in dsn.describe(dsn.read(raw, args.to, domain)):
            print(json.dumps({"source": source, **line}, ensure_ascii=False), flush=True)
    return EXIT_BAD_INPUT if unreadable else 0


def _message_id_domain() -> str | None:
    """``OUTBOX_MESSAGE_ID_DOMAIN`` when the settings load; parsing needs nothing else."""
    try:
        return settings().message_id_domain
    except Exception:  # noqa: BLE001 (a support tool reads files without a configured env)
        return None


def _messages(paths: list[str]) -> Any:
    """(source, bytes) per message; bytes None (and one line on stderr) when unreadable."""
    for given in paths:
        if given == "-":
            yield "-", sys.stdin.buffer.read()
            continue
        path = Path(given)
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        for file in files:
            try:
                yield str(file), file.read_bytes()
            except OSError as exc:
                print(f"outbox: cannot read {file}: {exc.strerror}", file=sys.stderr)
                yield str(file), None


async def _serve_bounces(cfg: Any, stop: asyncio.Event, registry: Any = None) -> None:
    async with _bounce_listener(cfg, registry):
        await stop.wait()


@contextlib.asynccontextmanager
async def _bounce_listener(cfg: Settings, registry: Any = None,
                           dependencies: Any = None) -> AsyncIterator[int]:
    """The DSN/ARF SMTP listener, listening until the block ends (yields its port); Redis and
    the broker watched meanwhile (``outbox_dependency_up``, one line per outage:
    sender.outages)."""
    from prometheus_client import CollectorRegistry

    from sender.outages import Dependencies, Watch
    from webhooks.bounces import ListenerConfig, start_bounce_listener

    registry = registry or CollectorRegistry()
    async with _connected(cfg) as (bus, redis):
        server = await start_bounce_listener(ListenerConfig.from_settings(cfg), bus=bus,
                                             redis=redis, host=cfg.http_host,
                                             port=cfg.bounces_port, registry=registry)
        watch = Watch(dependencies or Dependencies(registry), redis=redis,
                      connection=lambda: bus.connection)
        watch.start()
        try:
            yield int(server.sockets[0].getsockname()[1])
        finally:
            await watch.stop()
            server.close()
            await server.wait_closed()


# --- one-shot ---------------------------------------------------------------------------


def cmd_enqueue(args: argparse.Namespace) -> int:
    cfg = settings()
    name, stream = read_lines(args.source)
    summary = run_once(_enqueue(cfg, stream, name, validate=not args.no_validate))
    print_records(summary, args.json,
                  lambda s: f"published {s['published']}, invalid {s['invalid']}, "
                            f"failed {s['failed']}"
                            + (f" ({s['warned']} with warnings)" if s["warned"] else ""))
    return 0 if summary["invalid"] == 0 and summary["failed"] == 0 else 1


async def _enqueue(cfg: Any, stream: Any, name: str, *, validate: bool) -> dict[str, int]:
    from sender.bus import PublishFailed
    from sender.client import Outbox
    from sender.models import InvalidJob

    counts = {"published": 0, "invalid": 0, "failed": 0, "warned": 0}
    notes = SmsNotes(cfg)

    async def one(lineno: int, line: bytes) -> None:
        try:
            job = await outbox.enqueue(line, validate=validate, warnings=False)
            counts["published"] += 1
            warned = await notes.of(job) if job is not None else ()
            for note in warned:
                print(f"{name}:{lineno}: warning: job {job.id if job else ''}: {note}",
                      file=sys.stderr)
            counts["warned"] += bool(warned)
        except InvalidJob as exc:
            counts["invalid"] += 1
            print(f"{name}:{lineno}: invalid job: {exc.reason}", file=sys.stderr)
        except PublishFailed as exc:
            counts["failed"] += 1
            print(f"{name}:{lineno}: not published: {exc}", file=sys.stderr)

    async with Outbox.from_settings(cfg) as outbox:
        pending: set[asyncio.Task[None]] = set()
        for lineno, line in job_lines(stream):
            pending.add(asyncio.create_task(one(lineno, line)))
            if len(pending) >= ENQUEUE_WINDOW:
                _, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
        if pending:
            await asyncio.wait(pending)
    await notes.close()
    return counts


class SmsNotes:
    """``outbox enqueue``'s warnings for an SMS (:func:`sender.validation.sms_notes`), a
    marketing one counted with its account's own footer: the sender information read from
    Redis once per account (when Redis cannot be read, the footer's fixed part, "at least")."""

    def __init__(self, cfg: Settings) -> None:
        self._cfg = cfg
        self._redis: Any = None
        self._senders: dict[str, Any] = {}

    async def of(self, job: Any) -> tuple[str, ...]:
        from sender.validation import sms_notes

        if job.channel != "sms":
            return ()
        sender = await self._sender(job.account_id) if job.category == "marketing" else None
        return sms_notes(job, sender=sender, max_segments=self._cfg.sms_max_segments)

    async def _sender(self, account_id: str) -> Any:
        if account_id not in self._senders:
            self._senders[account_id] = await self._read(account_id)
        return self._senders[account_id]

    async def _read(self, account_id: str) -> Any:
        from sender.compliance import SenderInfo
        from sender.connect import redis_client
        from suppression import keys
        from suppression.store import SENDER_FIELDS

        try:
            if self._redis is None:
                self._redis = redis_client(self._cfg.redis_url.get_secret_value(),
                                           cluster=self._cfg.redis_cluster, socket_timeout=2,
                                           socket_connect_timeout=2)
            values = await self._redis.hmget(keys.config(account_id), *SENDER_FIELDS)
        except Exception as exc:  # noqa: BLE001 (a warning's detail: publishing goes on)
            log.debug("sender information of %s not read: %s", account_id, exc)
            return None
        fields = tuple((v.decode() if isinstance(v, bytes) else v) or "" for v in values)
        return SenderInfo(*fields) if any(fields) else None

    async def close(self) -> None:
        if self._redis is not None:
            await self._redis.aclose()


def job_lines(stream: Iterable[bytes]) -> Iterator[tuple[int, bytes]]:
    """``(line number, job)`` of each non-blank line of a JSON-lines stream, read as it comes.
    A file holding one JSON object over several lines (a pretty-printed job, as in
    ``examples/*.json``) is one job, numbered by its first line: recognised by a first line
    that is not JSON on its own while the whole is one object. Anything else is read line by
    line, so a bad line is reported with its number."""
    lines = iter(stream)
    lineno, line = next(((n, x) for n, x in enumerate(lines, 1) if x.strip()), (0, b""))
    if not lineno:
        return
    first = line.rstrip(b"\r\n")
    if _is_json(first):
        yield lineno, first
        for n, more in enumerate(lines, lineno + 1):
            if more.strip():
                yield n, more.rstrip(b"\r\n")
        return
    rest = list(lines)
    whole = b"".join([line, *rest]).strip()
    if whole.startswith(b"{") and _is_json(whole):
        yield lineno, whole
        return
    yield lineno, first
    for n, more in enumerate(rest, lineno + 1):
        if more.strip():
            yield n, more.rstrip(b"\r\n")


def _is_json(data: bytes) -> bool:
    try:
        json.loads(data)
    except ValueError:
        return False
    return True


def cmd_classify(args: argparse.Namespace) -> int:
    from suppression.classify import classify_reply, slow_down
    from suppression.classify_rules import REASON_DOCS, REASON_KIND

    def verdict(reply: str) -> dict[str, Any]:
        return {"reply": reply, **classify_reply(reply).as_dict(),
                "slow_down": slow_down(reply)}

    if args.reasons:
        for reason, meaning in REASON_DOCS.items():
            print(json.dumps({"reason": reason, "kind": REASON_KIND[reason],
                              "meaning": meaning}))
        return 0
    if args.reply is None:
        raise CliError("classify needs a REPLY, - (stdin) or --reasons")
    if args.reply != "-":
        print(json.dumps(verdict(args.reply), ensure_ascii=False))
        return 0
    for raw in sys.stdin:
        line = raw.rstrip("\r\n")
        if not line.strip():
            continue
        print(json.dumps(verdict(line), ensure_ascii=False), flush=True)
    return 0


__all__ = ["CliError", "register"]
