"""The README's walkthrough, run as written: every code block marked ``<!-- walkthrough -->``
is split into commands and each is run by ``sh`` from a directory laid out like a checkout
(``.venv/bin/outbox``, ``examples/``, ``var/mail``), against ``outbox run --dev`` (worker,
webhook server, capturing SMTP sink, Twilio stand-in) on the test vhost and Redis db. Then
the outcomes the README promises are checked: exit statuses, the events with their statuses,
the mail files and what they carry."""

from __future__ import annotations

import asyncio
import email
import email.policy
import json
import os
import re
import signal
import socket
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
MARK = "<!-- walkthrough -->"

pytestmark = pytest.mark.integration


def walkthrough_blocks(text: str) -> list[list[str]]:
    """The commands of each fenced block that follows a ``<!-- walkthrough -->`` line:
    continuation lines (``\\``) joined; blank lines and comments (whole-line, or after two
    spaces and ``#``) dropped."""
    blocks: list[list[str]] = []
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if line.strip() != MARK:
            continue
        assert lines[i + 1].startswith("```"), f"README line {i + 2}: a code block must follow"
        end = next(j for j in range(i + 2, len(lines)) if lines[j].startswith("```"))
        commands: list[str] = []
        pending = ""
        for raw in lines[i + 2:end]:
            code = re.split(r"\s{2,}#", raw, maxsplit=1)[0].rstrip()
            if code.lstrip().startswith("#"):
                code = ""
            if code.endswith("\\"):
                pending += code[:-1].rstrip() + " "
                continue
            command = (pending + code.strip()).strip()
            pending = ""
            if command:
                commands.append(command)
        blocks.append(commands)
    return blocks


def test_the_readme_has_a_walkthrough_parsed_into_commands() -> None:
    blocks = walkthrough_blocks(README.read_text())
    assert len(blocks) == 3
    first, second, third = blocks
    assert first[0].startswith(".venv/bin/outbox accounts configure acct_demo --business-name")
    assert "--contact-email hello@demo.example" in first[0]  # the continuation joined
    assert any(c.startswith(".venv/bin/outbox consent grant acct_demo") for c in first)
    assert ".venv/bin/outbox enqueue examples/jobs.jsonl" in first
    assert not any("#" in c for c in first)  # comments dropped
    assert second[1].endswith("| .venv/bin/outbox enqueue -")
    assert third[0].startswith("sed 's/demo-receipt-1001/demo-bounce-1/;")
    assert third[0].endswith("examples/transactional-email.json | .venv/bin/outbox enqueue -")
    assert "outbox dev sms-reply +85291234567 STOP --account acct_demo" in third[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _checkout(tmp: Path) -> Path:
    """A directory laid out like a checkout after ``make run``: ``.venv/bin/outbox`` and
    ``.venv/bin/python`` (this interpreter, this tree first on the path) and ``examples/``."""
    work = tmp / "checkout"
    bin_dir = work / ".venv" / "bin"
    bin_dir.mkdir(parents=True)
    for name, argv in (("outbox", f'"{sys.executable}" -m outbox'),
                       ("python", f'"{sys.executable}"')):
        shim = bin_dir / name
        shim.write_text(f'#!/bin/sh\nexec {argv} "$@"\n')
        shim.chmod(0o755)
    (work / "examples").symlink_to(ROOT / "examples")
    return work


def _env(**settings: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OUTBOX_")}
    return {**env, "PYTHONPATH": str(ROOT), **settings}


async def _run(command: str, cwd: Path, env: dict[str, str]) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        "sh", "-c", command, cwd=cwd, env=env, stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    return int(proc.returncode or 0), out.decode(), err.decode()


async def _wait_ready(proc: asyncio.subprocess.Process, seen: list[str]) -> None:
    assert proc.stderr is not None
    while not any("Outbox is ready" in x for x in seen):
        raw = await asyncio.wait_for(proc.stderr.readline(), 60)
        if not raw:
            raise AssertionError("outbox run --dev ended:\n" + "\n".join(seen))
        seen.append(raw.decode().rstrip("\n"))


async def _drain(proc: asyncio.subprocess.Process) -> None:
    assert proc.stderr is not None
    while await proc.stderr.readline():
        pass


def _output(ran: list[tuple[str, int, str, str]], part: str) -> str:
    """The output of the one command of a block that contains ``part``."""
    [out] = [out for command, _, out, _ in ran if part in command]
    return out


def _events(out: str) -> list[tuple[str, str, str, str]]:
    """``examples/events.py`` lines: (routing key, id, status, reason)."""
    rows = []
    for line in out.splitlines():
        _, key, job, status, reason = line.split()
        rows.append((key, job, status, reason))
    return rows


def _mails(directory: Path, names: list[str] | None = None) -> dict[str, Any]:
    """The captured messages by Subject (of the files ``names`` only, when given)."""
    found = {}
    for path in sorted(directory.glob("*.eml")):
        if names is not None and path.name not in names:
            continue
        message = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
        found[str(message["Subject"])] = message
    return found


def _text(message: Any) -> str:
    return "\n".join(part.get_content() for part in message.walk()
                     if part.get_content_type() in ("text/plain", "text/html"))


async def test_the_readme_walkthrough_runs_as_written(amqp_url: str, redis_url: str,
                                                      tmp_path: Path) -> None:
    work = _checkout(tmp_path)
    urls = {"OUTBOX_AMQP_URL": amqp_url, "OUTBOX_REDIS_URL": redis_url}
    http_port, smtp_port, twilio_port = _free_port(), _free_port(), _free_port()
    server_env = _env(**urls, OUTBOX_HTTP_PORT=str(http_port),
                      OUTBOX_PUBLIC_URL=f"http://127.0.0.1:{http_port}",
                      OUTBOX_DEV_SMTP_PORT=str(smtp_port),
                      OUTBOX_DEV_TWILIO_PORT=str(twilio_port),
                      OUTBOX_SMTP_URL=f"smtp://127.0.0.1:{smtp_port}", OUTBOX_METRICS_PORT="0")
    server = await asyncio.create_subprocess_exec(   # `make run`, in the first terminal
        sys.executable, "-m", "outbox", "run", "--dev", cwd=work, env=server_env,
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE)
    seen: list[str] = []
    results: list[list[tuple[str, int, str, str]]] = []
    try:
        await _wait_ready(server, seen)
        drain = asyncio.create_task(_drain(server))
        # the second terminal: where RabbitMQ, Redis and the webhook server are
        env = _env(**urls, OUTBOX_PUBLIC_URL=f"http://127.0.0.1:{http_port}")
        for block in walkthrough_blocks(README.read_text()):
            ran = []
            for command in block:
                code, out, err = await _run(command, work, env)
                assert code == 0, f"{command}\nexit {code}\n{out}\n{err}"
                ran.append((command, code, out, err))
            results.append(ran)
    finally:
        if server.returncode is None:
            server.send_signal(signal.SIGTERM)
            await asyncio.wait_for(server.wait(), 30)
    await drain
    assert server.returncode == 0

    first, second, third = results
    # enqueue: published 4
    assert _output(first, " enqueue ").strip() == "published 4, invalid 0, failed 0"
    # the events: three emails sent, the SMS sent then delivered, nothing else
    events = _events(_output(first, "examples/events.py"))
    assert sorted(events) == sorted([
        ("email.sent", "demo-receipt-1001", "sent", "-"),
        ("email.sent", "demo-spring-ana", "sent", "-"),
        ("email.sent", "demo-meeting-42", "sent", "-"),
        ("sms.sent", "demo-sms-code-7", "sent", "-"),
        ("sms.delivered", "demo-sms-code-7", "delivered", "delivered")])
    sms = [e for e in events if e[1] == "demo-sms-code-7"]
    assert [e[2] for e in sms] == ["sent", "delivered"]
    # var/mail: three messages, `ls` lists them, the Subject lines are the examples'
    mail_dir = work / "var" / "mail"
    listed = _output(first, "ls var/mail")
    assert len(listed.split()) == 3  # (the third block adds one)
    assert set(listed.split()) <= {p.name for p in mail_dir.glob("*.eml")}
    mails = _mails(mail_dir, listed.split())  # the first block's three
    assert set(mails) == {"Your receipt for order 1001", "Spring offer: 20% off",
                          "Reminder: meeting with Acme at 15:00"}
    subjects = _output(first, 'grep -h "^Subject:"').splitlines()
    assert sorted(subjects) == sorted(f"Subject: {s}" for s in mails)
    # only the marketing mail has List-Unsubscribe and the sender-information footer
    [unsubscribe] = _output(first, 'grep -h "^List-Unsubscribe:"').splitlines()
    assert "/u/" in unsubscribe  # the one-click link (a mailto: follows, folded)
    offer = mails["Spring offer: 20% off"]
    assert offer["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert "Demo Shop Ltd" in _text(offer) and "1 Queen's Road Central" in _text(offer)
    for subject in ("Your receipt for order 1001", "Reminder: meeting with Acme at 15:00"):
        assert mails[subject]["List-Unsubscribe"] is None
        assert "Demo Shop Ltd" not in _text(mails[subject])
    assert mails["Your receipt for order 1001"]["To"] == "ana@example.com"

    # the second block: Ben's reminders off; the next reminder is suppressed, not sent
    assert _events(_output(second, "examples/events.py")) == [
        ("email.suppressed", "demo-meeting-43", "suppressed", "preference")]
    assert len(_output(second, "ls var/mail").split()) == 3

    # the third: a hard bounce, a complaint, a STOP and the SMS it stops (development outcomes)
    told = _events(_output(third, "examples/events.py"))
    assert ("email.bounced", "demo-bounce-1", "bounced", "userunknown") in told
    complaint = [e[2] for e in told if e[1] == "demo-complaint-1"]
    assert complaint == ["sent", "complained"]
    assert ("recipient.sms.unsubscribed", "+85291234567", "unsubscribed") in [
        e[:3] for e in told]
    assert ("sms.suppressed", "demo-sms-code-8", "suppressed", "sms_stop") in told
    shown = _output(third, "jobs show acct_demo demo-sms-code-7")
    assert "SMS: 1 segment, GSM-7" in shown
    [kept] = [json.loads(x) for x in re.findall(r"\{.*?\n\}", _output(third, "cat var/sms"),
                                               re.S)]
    assert (kept["to"], kept["body"], kept["segments"], kept["encoding"]) == (
        "+85291234567", "Demo Shop: your pick-up code is 4821.", 1, "GSM-7")
    # the complaint's message was accepted (it lands), the bounce's never was
    assert len(list(mail_dir.glob("*.eml"))) == 4
