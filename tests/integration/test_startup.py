"""Start-up with RabbitMQ or Redis unreachable, as a user meets it: the real ``outbox``
command in a subprocess, its URLs pointed at closed loopback ports (the shared test services
are never stopped). One-shot commands print one line naming the setting, password masked, and
exit 1; the servers retry with backoff, stop promptly on SIGTERM, and start working once the
service appears (a TCP proxy to the real one, opened on the port they were retrying).
``outbox run --dev`` ends with a ready banner whose instructions work."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import pytest

from sender.client import Outbox
from tests.integration.helpers import email_job, wait_for
from tests.integration.proxy import TcpProxy

pytestmark = pytest.mark.integration
SECRET = "s3cret-pw"
SETTING = {"amqp": "OUTBOX_AMQP_URL", "redis": "OUTBOX_REDIS_URL"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _closed_urls() -> dict[str, str]:
    return {"OUTBOX_AMQP_URL": f"amqp://guest:{SECRET}@127.0.0.1:{_free_port()}/",
            "OUTBOX_REDIS_URL": f"redis://:{SECRET}@127.0.0.1:{_free_port()}/0"}


def _env(**settings: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OUTBOX_")}
    return {**env, "OUTBOX_METRICS_PORT": "0", **settings}


def _with_port(url: str, port: int) -> str:
    parts = urlsplit(url)
    userinfo = parts.netloc.rsplit("@", 1)[0] + "@" if "@" in parts.netloc else ""
    return urlunsplit(parts._replace(netloc=f"{userinfo}127.0.0.1:{port}"))


# --- one-shot commands ----------------------------------------------------------------------

ONE_SHOT = [
    (["enqueue", "JOBS"], "amqp"),
    (["accounts", "list"], "redis"),
    (["accounts", "show", "acct_1"], "redis"),
    (["accounts", "unblock", "acct_1", "--reason", "ok", "--actor", "me"], "redis"),
    (["suppression", "check", "ana@example.com"], "redis"),
    (["suppression", "add", "ana@example.com", "--channel", "email", "--reason", "manual",
      "--actor", "me"], "redis"),
    (["suppression", "export"], "redis"),
    (["consent", "show", "acct_1", "ana@example.com", "--channel", "email"], "redis"),
    (["prefs", "show", "acct_1", "ana@example.com"], "redis"),
    (["audit", "acct_1"], "redis"),
]


@pytest.mark.parametrize(("argv", "service"), ONE_SHOT,
                         ids=[" ".join(a[:2]) for a, _ in ONE_SHOT])
def test_a_one_shot_command_prints_one_line_and_exits_1(argv: list[str], service: str,
                                                       tmp_path: Path) -> None:
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text(json.dumps(email_job()) + "\n")
    argv = [str(jobs) if a == "JOBS" else a for a in argv]
    done = subprocess.run([sys.executable, "-m", "outbox", *argv], env=_env(**_closed_urls()),
                          capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    lines = done.stderr.splitlines()
    assert done.returncode == 1, done.stderr
    assert len(lines) == 1, done.stderr
    name = {"amqp": "RabbitMQ", "redis": "Redis"}[service]
    assert lines[0].startswith(f"outbox: cannot reach {name} at ")
    assert f"({SETTING[service]}): connection refused; is {name} running? start it with " \
           f"`make services` or set {SETTING[service]}" in lines[0]
    assert ":***@127.0.0.1:" in lines[0] and SECRET not in done.stderr + done.stdout
    assert "Traceback" not in done.stderr and (service != "amqp" or done.stdout == "")


def test_a_refused_login_is_one_line_and_exit_2(amqp_url: str) -> None:
    bad = amqp_url.replace("guest:guest@", f"guest:{SECRET}@")
    done = subprocess.run([sys.executable, "-m", "outbox", "enqueue", "-"],
                          env=_env(OUTBOX_AMQP_URL=bad), capture_output=True, text=True,
                          input="", timeout=60)
    assert done.returncode == 2
    assert done.stderr.splitlines() == [
        f"outbox: RabbitMQ at {bad.replace(SECRET, '***')} (OUTBOX_AMQP_URL) refused the "
        f"connection: login refused; check the user, password and vhost in OUTBOX_AMQP_URL"]


# --- servers --------------------------------------------------------------------------------


async def _start(argv: list[str], env: dict[str, str],
                 stdin: int = asyncio.subprocess.DEVNULL) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "outbox", *argv, env=env, stdin=stdin,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)


async def _read_until(proc: asyncio.subprocess.Process, lines: list[str],
                      done: Any, timeout: float = 30.0) -> None:
    """Append ``proc``'s stderr lines to ``lines`` until ``done(lines)``."""
    assert proc.stderr is not None
    deadline = time.monotonic() + timeout
    while not done(lines):
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError("not seen in time:\n" + "\n".join(lines))
        raw = await asyncio.wait_for(proc.stderr.readline(), left)
        if not raw:
            raise AssertionError("the process ended:\n" + "\n".join(lines))
        lines.append(raw.decode().rstrip("\n"))


def _attempts(lines: list[str], setting: str) -> list[dict[str, Any]]:
    records = [json.loads(x) for x in lines if x.startswith("{")]
    return [r for r in records if r.get("setting") == setting and "attempt" in r]


async def _stop(proc: asyncio.subprocess.Process, lines: list[str]) -> float:
    """SIGTERM; the seconds it took to exit 0 (fails otherwise)."""
    started = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    _, err = await asyncio.wait_for(proc.communicate(), 10)
    lines.extend(err.decode().splitlines())
    assert proc.returncode == 0, "\n".join(lines)
    assert not any("Traceback" in x for x in lines), "\n".join(lines)
    return time.monotonic() - started


SERVERS = {
    "worker": (["worker"], {}),
    # the supervisor waits for the services (once, not per child) before starting children
    "worker --processes 2": (["worker", "--processes", "2"], {"OUTBOX_METRICS_PORT": "PORT"}),
    "webhooks": (["webhooks"], {"OUTBOX_HTTP_PORT": "PORT"}),
    "bounces": (["bounces"], {"OUTBOX_BOUNCES_PORT": "PORT",
                              "OUTBOX_BOUNCE_DOMAIN": "bounces.example.com"}),
    "run": (["run"], {"OUTBOX_HTTP_PORT": "PORT"}),
    "run --dev": (["run", "--dev"], {"OUTBOX_HTTP_PORT": "PORT", "OUTBOX_DEV_SMTP_PORT": "PORT",
                                     "OUTBOX_DEV_TWILIO_PORT": "PORT",
                                     "OUTBOX_DEV_MAIL_DIR": "MAIL"}),
}


@pytest.mark.parametrize("name", SERVERS)
async def test_a_server_retries_with_backoff_and_stops_promptly(name: str,
                                                                tmp_path: Path) -> None:
    argv, extra = SERVERS[name]
    settings = {k: str(_free_port()) if v == "PORT" else str(tmp_path) if v == "MAIL" else v
                for k, v in extra.items()}
    proc = await _start(argv, _env(**_closed_urls(), **settings))
    lines: list[str] = []
    try:
        await _read_until(proc, lines, lambda ls: all(
            len(_attempts(ls, s)) >= 2 for s in SETTING.values()))
    except BaseException:
        proc.kill()
        raise
    for setting in SETTING.values():
        first, second = _attempts(lines, setting)[:2]
        assert (first["attempt"], second["attempt"]) == (1, 2)
        assert second["retry_in"] > first["retry_in"]  # backing off
        assert first["level"] == "error" and setting in first["msg"] and "***" in first["url"]
        assert "is " in first["msg"] and "running? start it with `make services`" in first["msg"]
    assert SECRET not in "\n".join(lines)
    assert await _stop(proc, lines) < 3


async def test_the_worker_starts_working_once_rabbitmq_appears(
        amqp_url: str, redis_url: str, smtp_server: Any) -> None:
    smtp_url, recorder = smtp_server
    port = _free_port()
    proc = await _start(["worker"], _env(OUTBOX_AMQP_URL=_with_port(amqp_url, port),
                                         OUTBOX_REDIS_URL=redis_url, OUTBOX_SMTP_URL=smtp_url,
                                         OUTBOX_REQUIRE_VERIFIED_SENDERS="false"))
    lines: list[str] = []
    proxy = TcpProxy(int(urlsplit(amqp_url).port or 5672))
    try:
        await _read_until(proc, lines, lambda ls: len(_attempts(ls, "OUTBOX_AMQP_URL")) >= 2)
        assert not _attempts(lines, "OUTBOX_REDIS_URL")  # Redis was there all along
        proxy.port = port  # RabbitMQ "comes up" on the port the worker retries
        await proxy.start()
        await _read_until(proc, lines, lambda ls: any("worker " in x and " started" in x
                                                      for x in ls))
        job = email_job()
        async with Outbox(amqp_url) as outbox:
            await outbox.enqueue(job)
        await wait_for(lambda: bool(recorder.by_rcpt(job["to"])))
        assert await _stop(proc, lines) < 5
    finally:
        if proc.returncode is None:
            proc.kill()
        await proxy.close()


async def test_the_webhook_server_starts_serving_once_redis_appears(
        amqp_url: str, redis_url: str) -> None:
    port, http_port = _free_port(), _free_port()
    proc = await _start(["webhooks"], _env(OUTBOX_AMQP_URL=amqp_url,
                                           OUTBOX_REDIS_URL=_with_port(redis_url, port),
                                           OUTBOX_HTTP_PORT=str(http_port)))
    lines: list[str] = []
    proxy = TcpProxy(int(urlsplit(redis_url).port or 6379))
    try:
        await _read_until(proc, lines, lambda ls: len(_attempts(ls, "OUTBOX_REDIS_URL")) >= 2)
        with pytest.raises(aiohttp.ClientConnectionError):  # not listening while waiting
            async with aiohttp.ClientSession() as http:
                await http.get(f"http://127.0.0.1:{http_port}/healthz")
        proxy.port = port
        await proxy.start()
        await _read_until(proc, lines, lambda ls: any("http server on" in x for x in ls))
        async with aiohttp.ClientSession() as http, \
                http.get(f"http://127.0.0.1:{http_port}/readyz") as answer:
            assert answer.status == 200
        assert await _stop(proc, lines) < 5
    finally:
        if proc.returncode is None:
            proc.kill()
        await proxy.close()


async def test_make_run_ends_with_a_ready_banner_whose_instructions_work(
        amqp_url: str, redis_url: str, tmp_path: Path) -> None:
    http_port, smtp_port = _free_port(), _free_port()
    env = _env(OUTBOX_AMQP_URL=amqp_url, OUTBOX_REDIS_URL=redis_url,
               OUTBOX_HTTP_PORT=str(http_port), OUTBOX_DEV_SMTP_PORT=str(smtp_port),
               OUTBOX_DEV_TWILIO_PORT=str(_free_port()), OUTBOX_DEV_MAIL_DIR=str(tmp_path),
               OUTBOX_SMTP_URL=f"smtp://127.0.0.1:{smtp_port}")
    proc = await _start(["run", "--dev"], env)
    lines: list[str] = []
    try:
        await _read_until(proc, lines, lambda ls: any(x.startswith("  stop ") for x in ls))
        banner = lines[next(i for i, x in enumerate(lines) if "Outbox is ready" in x):]
        assert f"  mail lands in   {tmp_path}/*.eml" in banner[1]
        admin = next(x for x in banner if x.startswith("  admin page"))
        assert admin.split()[2:] == [f"http://127.0.0.1:{http_port}/admin/", "token:",
                                     "dev-admin-token"]
        enqueue = next(x for x in banner if x.startswith("  enqueue a job"))
        job = enqueue.split("'")[1]
        assert enqueue.endswith("| .venv/bin/outbox enqueue -")
        enqueuing = await _start(["enqueue", "-"], env, stdin=asyncio.subprocess.PIPE)
        out, err = await asyncio.wait_for(enqueuing.communicate(job.encode()), 60)
        assert enqueuing.returncode == 0 and out.startswith(b"published 1,"), err
        await wait_for(lambda: any(tmp_path.glob("*.eml")))
        mail = next(tmp_path.glob("*.eml")).read_bytes()
        assert b"Subject: Hello from Outbox" in mail
        async with aiohttp.ClientSession() as http, http.get(
                f"http://127.0.0.1:{http_port}/admin/accounts",
                headers={"Authorization": "Bearer dev-admin-token"}) as answer:
            assert answer.status == 200
        assert await _stop(proc, lines) < 10
    finally:
        if proc.returncode is None:
            proc.kill()
