"""Two baselines that consume the same ``outbox.email`` queue as Outbox, each in its own process.

    python -m benchmarks.baselines naive --amqp URL --smtp-port P [--latency-file F]
    python -m benchmarks.baselines bare  --amqp URL --redis URL --smtp-port P [--latency-file F]

``naive``: what a first implementation typically does. aio-pika consumer (asyncio loop,
prefetch 32); per message ``json.loads``, an ``email.message.EmailMessage`` (default policy:
``set_content`` text + ``add_alternative`` html, headers), and ``smtplib.SMTP`` over a NEW
connection (connect, EHLO, MAIL, RCPT, DATA, QUIT) in a thread executor of 8 threads; then ack.
No Redis, no checks, no events.

``bare``: the floor of this architecture. aio-pika consumer (uvloop, prefetch 64); per message
``json.loads``, ONE Redis pipeline (``SET NX EX`` idempotency key + ``INCR`` + ``EXPIRE`` of a
per-account counter), the message rendered by filling a fixed multipart/alternative template
(8bit parts: pre-rendered bytes, a few µs), ``aiosmtplib`` ``sendmail`` over a pool of 16
persistent connections, ack. No validation beyond the fields it needs, no suppression, consent
or reputation, no status events.

Both skip (ack) a job that is not JSON or lacks a field they need. Each records, per accepted
message, ``[metadata.t0, time.time() - metadata.t0]`` (the enqueue time the harness wrote into
the job, and the latency) and writes the list to ``--latency-file`` when it stops (SIGTERM).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import signal
import smtplib
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from email.message import EmailMessage
from email.utils import formatdate, parseaddr
from typing import Any

import aio_pika

QUEUE = "outbox.email"


class Recorder:
    def __init__(self, path: str | None) -> None:
        self.path = path
        self.latencies: list[tuple[float, float]] = []

    def accepted(self, job: dict[str, Any]) -> None:
        if self.path:
            t0 = (job.get("metadata") or {}).get("t0")
            if isinstance(t0, (int, float)):
                self.latencies.append((t0, time.time() - t0))

    def write(self) -> None:
        if self.path:
            with open(self.path, "w") as f:
                json.dump(self.latencies, f)


# --- naive --------------------------------------------------------------------------------


def _naive_send(job: dict[str, Any], host: str, port: int) -> None:
    msg = EmailMessage()
    msg["From"] = job["from"]
    msg["To"] = job["to"]
    msg["Subject"] = job["subject"]
    msg["Date"] = formatdate(localtime=True)
    msg["Message-ID"] = f"<{job['id']}@bench.localhost>"
    for k, v in (job.get("headers") or {}).items():
        msg[k] = v
    msg.set_content(job.get("text") or "")
    if job.get("html"):
        msg.add_alternative(job["html"], subtype="html")
    with smtplib.SMTP(host, port, timeout=30) as smtp:
        smtp.send_message(msg)


async def run_naive(args: argparse.Namespace, stop: asyncio.Event, rec: Recorder) -> None:
    loop = asyncio.get_running_loop()
    pool = ThreadPoolExecutor(8)
    conn = await aio_pika.connect_robust(args.amqp)
    channel = await conn.channel()
    await channel.set_qos(prefetch_count=32)
    queue = await channel.declare_queue(QUEUE, passive=True)

    async def on_message(message: aio_pika.abc.AbstractIncomingMessage) -> None:
        try:
            job = json.loads(message.body)
            job["to"], job["from"], job["subject"], job["id"]  # noqa: B018
        except (ValueError, KeyError, TypeError):
            await message.ack()
            return
        try:
            await loop.run_in_executor(pool, _naive_send, job, "127.0.0.1", args.smtp_port)
        except (smtplib.SMTPException, OSError) as exc:
            print(f"naive: send failed: {exc}", file=sys.stderr)
            await message.nack(requeue=True)
            return
        rec.accepted(job)
        await message.ack()

    tag = await queue.consume(on_message)
    await stop.wait()
    await queue.cancel(tag)
    await conn.close()
    pool.shutdown(wait=True)


# --- bare ---------------------------------------------------------------------------------

_TEMPLATE = (
    "From: {from_}\r\nTo: {to}\r\nSubject: {subject}\r\nDate: {date}\r\n"
    "Message-ID: <{id}@bench.localhost>\r\nMIME-Version: 1.0\r\n{headers}"
    'Content-Type: multipart/alternative; boundary="=_b"\r\n\r\n'
    "--=_b\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
    "{text}\r\n--=_b\r\nContent-Type: text/html; charset=utf-8\r\n"
    "Content-Transfer-Encoding: 8bit\r\n\r\n{html}\r\n--=_b--\r\n")


def _word(value: str) -> str:
    if value.isascii():
        return value
    return "=?utf-8?b?" + base64.b64encode(value.encode()).decode() + "?="


def _bare_render(job: dict[str, Any]) -> bytes:
    name, addr = parseaddr(job["from"])
    from_ = f"{_word(name)} <{addr}>" if name else addr
    headers = "".join(f"{k}: {_word(v)}\r\n" for k, v in (job.get("headers") or {}).items())
    return _TEMPLATE.format(
        from_=from_, to=job["to"], subject=_word(job["subject"]), date=formatdate(),
        id=job["id"], headers=headers, text=(job.get("text") or "").replace("\n", "\r\n"),
        html=(job.get("html") or "").replace("\n", "\r\n")).encode()


async def run_bare(args: argparse.Namespace, stop: asyncio.Event, rec: Recorder) -> None:
    import aiosmtplib
    from redis.asyncio import Redis

    redis = Redis.from_url(args.redis, max_connections=128)
    smtps: asyncio.Queue[aiosmtplib.SMTP] = asyncio.Queue()
    for _ in range(16):
        smtp = aiosmtplib.SMTP(hostname="127.0.0.1", port=args.smtp_port, timeout=30,
                               start_tls=False)
        await smtp.connect()
        smtps.put_nowait(smtp)
    conn = await aio_pika.connect_robust(args.amqp)
    channel = await conn.channel()
    await channel.set_qos(prefetch_count=64)
    queue = await channel.declare_queue(QUEUE, passive=True)

    async def on_message(message: aio_pika.abc.AbstractIncomingMessage) -> None:
        try:
            job = json.loads(message.body)
            acct, jid, to = job["account_id"], job["id"], job["to"]
            data = _bare_render(job)
        except (ValueError, KeyError, TypeError):
            await message.ack()
            return
        pipe = redis.pipeline(transaction=False)
        pipe.set(f"bare:{{{acct}}}:job:{jid}", "S", nx=True, ex=259200)
        pipe.incr(f"bare:{{{acct}}}:sent")
        pipe.expire(f"bare:{{{acct}}}:sent", 86400)
        claimed, _, _ = await pipe.execute()
        if not claimed:
            await message.ack()
            return
        smtp = await smtps.get()
        try:
            await smtp.sendmail(parseaddr(job["from"])[1], [to], data)
        except (aiosmtplib.SMTPException, OSError) as exc:
            print(f"bare: send failed: {exc}", file=sys.stderr)
            if not smtp.is_connected:
                await smtp.connect()
            await message.nack(requeue=True)
            return
        finally:
            smtps.put_nowait(smtp)
        rec.accepted(job)
        await message.ack()

    tag = await queue.consume(on_message)
    await stop.wait()
    await queue.cancel(tag)
    await conn.close()
    while not smtps.empty():
        smtp = smtps.get_nowait()
        try:
            await smtp.quit()
        except Exception:
            smtp.close()
    await redis.aclose()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("kind", choices=["naive", "bare"])
    p.add_argument("--amqp", required=True)
    p.add_argument("--redis")
    p.add_argument("--smtp-port", type=int, required=True)
    p.add_argument("--latency-file")
    args = p.parse_args(argv)
    rec = Recorder(args.latency_file)

    async def _main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        runner = run_naive if args.kind == "naive" else run_bare
        try:
            await runner(args, stop, rec)
        finally:
            rec.write()

    if args.kind == "bare":
        import uvloop
        uvloop.run(_main())
    else:
        asyncio.run(_main())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
