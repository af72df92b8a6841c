"""Proof that a benchmarked Outbox signs (or does not): before the timed runs of a system with
``OUTBOX_DKIM`` set (workloads ``dkim`` and ``nodkim``), the same system runs once on the first
:data:`CHECK_JOBS` jobs of the stream against an aiosmtpd relay in this process (smtp-sink
throws messages away unread), in its own vhost and the seeded Redis. Every message received is
checked: with signing on, each must carry a DKIM-Signature with ``d=`` its From domain that
dkimpy (which shares no code with the signer) verifies against the key the seed stored for
that domain (``DomainStore.show``'s records); with signing off, none may carry one. Anything
else stops the session (RuntimeError): the figures would not be what they are named."""

from __future__ import annotations

import asyncio
import re
import threading
import time
from typing import Any

import dkim
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session

from benchmarks.env import Vhost
from benchmarks.runner import Context, declare, log, prefill, prepare, wait_consumers
from benchmarks.sink import free_port
from benchmarks.systems import Processes, System

CHECK_JOBS = 60
_D = re.compile(rb"\bd=([^;\s]+)")
_FROM_DOMAIN = re.compile(rb"^From:[^\r\n]*@([A-Za-z0-9.-]+)>?\r?$", re.M)


class _Relay:
    """aiosmtpd handler keeping every message's bytes."""

    def __init__(self) -> None:
        self.messages: list[bytes] = []
        self._lock = threading.Lock()

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        with self._lock:
            self.messages.append(bytes(envelope.original_content or b""))
        return "250 2.0.0 Ok: queued"


async def signing_check(ctx: Context, system: System, signed: bool,
                        n: int = CHECK_JOBS) -> dict[str, Any]:
    """Run ``system`` on ``n`` jobs to an aiosmtpd relay; check every message is signed and
    verifies (``signed``) or carries no signature. Returns the counts."""
    relay = _Relay()
    controller = Controller(relay, hostname="127.0.0.1", port=free_port())
    controller.start()
    expected = ctx.stream.expected(n, system.checks)
    label = ctx.label(system, "dkimcheck")
    try:
        with Vhost(label) as vh:
            rs = await prepare(ctx, system)
            await declare(vh.url)
            await prefill(vh.url, ctx.stream.jobs[:n], ctx.stream.routing_key)
            procs = Processes(system, ctx.log_dir, label)
            procs.start(system.command(vh.url, rs.url, controller.port),
                        system.env(vh.url, rs.url, f"smtp://127.0.0.1:{controller.port}"))
            try:
                await wait_consumers(vh.url, system.processes, procs)
                deadline = time.monotonic() + 60
                while len(relay.messages) < expected and time.monotonic() < deadline:
                    await asyncio.sleep(0.1)
            finally:
                procs.stop()
            records = await _published(rs.url, system, relay.messages)
            rs.close()
    finally:
        controller.stop()
    result = _judge(relay.messages, records)
    result.update(expected=expected, jobs=n)
    log(f"  DKIM check {system.name}: {result['messages']}/{expected} messages, "
        f"{result['signed']} signed, {result['verified']} verified by dkimpy")
    if result["messages"] < expected:
        raise RuntimeError(f"DKIM check of {system.name}: {result['messages']} of {expected} "
                           f"messages reached the relay (see {ctx.log_dir}/{label}-0.log)")
    ok = (result["verified"] == result["messages"] == result["signed"] if signed
          else result["signed"] == 0)
    if not ok:
        raise RuntimeError(f"DKIM check of {system.name} failed: {result}")
    return result


async def _published(redis_url: str, system: System,
                     messages: list[bytes]) -> dict[str, str]:
    """``selector._domainkey.domain`` → TXT value, for the From domains of ``messages``,
    as `outbox domains show` lists them from the seeded records."""
    from sender.connect import redis_client
    from suppression.domains import DomainStore, Publishing
    from suppression.sealed import Sealer

    domains = {m.group(1).decode().lower() for msg in messages
               if (m := _FROM_DOMAIN.search(_head(msg)))}
    redis = redis_client(redis_url, cluster=system.cluster)
    store = DomainStore(redis, Sealer(["unused-for-reading-0123"]), Publishing("bench.example"))
    out: dict[str, str] = {}
    try:
        for domain in domains:  # shop<n>.example.com belongs to acct_<n>
            account = "acct_" + domain.split(".")[0].removeprefix("shop")
            shown = await store.show(account, domain)
            out.update({r["name"]: r["value"] for r in shown["records"]
                        if "._domainkey." in r["name"]})
    finally:
        await redis.aclose()
    return out


def _judge(messages: list[bytes], records: dict[str, str]) -> dict[str, Any]:
    """Messages, signed ones (a DKIM-Signature whose d= is the From domain), and those dkimpy
    verifies."""
    def dns(name: bytes, timeout: int = 5) -> bytes | None:
        value = records.get(name.decode("ascii").rstrip(".").lower())
        return value.encode("ascii") if value is not None else None

    signed = verified = 0
    for msg in messages:
        head = _head(msg)
        if not head.startswith(b"DKIM-Signature:"):
            continue
        d, frm = _D.search(head), _FROM_DOMAIN.search(head)
        if d and frm and d.group(1).lower() == frm.group(1).lower():
            signed += 1
        try:
            verified += bool(dkim.verify(msg, dnsfunc=dns))
        except dkim.DKIMException:
            pass
    return {"messages": len(messages), "signed": signed, "verified": verified,
            "keys_published": len(records)}


def _head(message: bytes) -> bytes:
    """The header block, unfolded (a long encoded From display name folds its address)."""
    return re.sub(rb"\r\n[ \t]+", b" ", message.split(b"\r\n\r\n", 1)[0])
