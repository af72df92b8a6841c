"""Client CPU per message of ``SmtpPool.send`` alone: pre-rendered messages to Postfix's
``smtp-sink`` (which offers PIPELINING) over ``--connections`` connections, measured with
``time.process_time`` (this process only: the sink runs apart).

    PYTHONPATH=. python -m benchmarks.smtp_cpu [--pipelining on|off] [-n 5000]

``--pipelining off`` keeps the connections one command, one reply. Works with a tree whose
pool has no ``pipelining``/``stuffed`` (the code before RFC 2920), to compare: it then sends
``RenderedEmail.data`` and aiosmtplib stuffs it.
"""

from __future__ import annotations

import argparse
import asyncio
import inspect
import tempfile
import time
from pathlib import Path
from typing import Any

import uvloop

from benchmarks.sink import SmtpSink
from config import parse_smtp_url
from sender.channels.smtp import SmtpPool
from sender.mime import render_email
from sender.models import EmailJob


def _messages(n: int) -> list[Any]:
    text = "Hello,\n\nyour receipt for order {i} is below.\n" + "Line of text.\n" * 40
    return [render_email(EmailJob.model_validate({
        "v": 1, "id": f"bench-{i}", "account_id": "acct_1", "channel": "email",
        "category": "transactional", "to": f"user{i}@example.com",
        "from": "Acme <sales@acme.example>", "subject": f"Receipt {i}",
        "text": text.format(i=i), "html": f"<p>Receipt {i}</p>", "headers": {}}),
        message_id_domain="mail.test") for i in range(n)]


async def _run(url: str, n: int, connections: int, pipelining: bool) -> tuple[float, float, str]:
    new = "stuffed" in inspect.signature(SmtpPool.send).parameters
    kwargs: dict[str, Any] = {"pipelining": pipelining} if new else {}
    pool = SmtpPool(parse_smtp_url(url), size=connections, timeout=10, max_messages=100_000,
                    idle_timeout=60, **kwargs)
    warm, msgs = _messages(connections * 20), _messages(n)

    async def send_all(batch: list[Any]) -> None:
        it = iter(batch)

        async def lane() -> None:
            for m in it:
                if new:
                    await pool.send(m.envelope_from, list(m.recipients), m.wire, stuffed=True)
                else:
                    await pool.send(m.envelope_from, list(m.recipients), m.data)
        await asyncio.gather(*(lane() for _ in range(connections)))

    await send_all(warm)  # connections open, caches warm
    cpu, wall = time.process_time(), time.perf_counter()
    await send_all(msgs)
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    await pool.close()
    return cpu, wall, "new" if new else "old"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("-n", type=int, default=5000)
    p.add_argument("--connections", type=int, default=16)
    p.add_argument("--pipelining", choices=("on", "off"), default="on")
    a = p.parse_args()
    sink = SmtpSink(Path(tempfile.mkdtemp(prefix="smtp-cpu-")))
    sink.start()
    try:
        cpu, wall, code = uvloop.run(_run(sink.url, a.n, a.connections, a.pipelining == "on"))
    finally:
        sink.stop()
    print(f"{code} code, pipelining {a.pipelining if code == 'new' else 'not used'}: "
          f"{a.n} messages, {a.connections} connections: {cpu / a.n * 1e6:.1f} µs CPU/message, "
          f"{a.n / wall:.0f} messages/s")


if __name__ == "__main__":
    main()
