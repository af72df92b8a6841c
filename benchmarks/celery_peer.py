"""The peer a Python team would pick instead of Outbox: a Celery worker.

    BENCH_AMQP_URL=... BENCH_REDIS_URL=... BENCH_SMTP_PORT=... \\
    python -m celery -A benchmarks.celery_peer worker --pool prefork --concurrency 8 ...

One task, ``outbox.send(body)``, does what the ``bare`` baseline does per job
(``benchmarks.baselines``): ``json.loads``, one Redis pipeline (``SET NX EX`` idempotency key,
``INCR`` and ``EXPIRE`` of a per-account counter), the message rendered from the same fixed
template (``_bare_render``), and ``sendmail`` over a persistent SMTP connection (one per
prefork child, ``smtplib``). Celery as it is run for this: RabbitMQ broker, ``acks_late``
(acknowledged after the send, as Outbox and bare do), no result backend, prefork pool, no
events, gossip, mingle or remote control (nothing but the task traffic on the broker).

The harness publishes each job as a Celery protocol-2 task message (``task_message``) to the
same exchange and routing key as the other systems, so it lands on the same quorum queue
``outbox.email``; the worker consumes it without declaring it (``no_declare``), and, told the
queue is a quorum queue, uses per-consumer QoS (quorum queues refuse global QoS).
"""

from __future__ import annotations

import json
import os
import smtplib
import uuid
from email.utils import parseaddr
from typing import Any

import aio_pika
from celery import Celery
from kombu import Queue

from benchmarks.baselines import _bare_render

TASK = "outbox.send"
QUEUE = "outbox.email"

app = Celery("outbox_peer", broker=os.environ.get("BENCH_AMQP_URL", "amqp://localhost//"))
app.conf.update(
    task_acks_late=True,
    task_ignore_result=True,
    task_serializer="json",
    accept_content=["json"],
    task_queues=[Queue(QUEUE, no_declare=True, queue_arguments={"x-queue-type": "quorum"})],
    task_default_queue=QUEUE,
    worker_prefetch_multiplier=8,
    worker_send_task_events=False,
    worker_enable_remote_control=False,
    worker_disable_rate_limits=True,
    worker_hijack_root_logger=False,
    broker_connection_retry_on_startup=True,
)

_redis: Any = None
_smtp: smtplib.SMTP | None = None


def _clients() -> tuple[Any, smtplib.SMTP]:
    """This child's Redis client and SMTP connection, made at its first task."""
    global _redis, _smtp
    if _redis is None:
        import redis

        _redis = redis.Redis.from_url(os.environ["BENCH_REDIS_URL"])
    if _smtp is None:
        _smtp = smtplib.SMTP("127.0.0.1", int(os.environ["BENCH_SMTP_PORT"]), timeout=30)
    return _redis, _smtp


@app.task(name=TASK)
def send(body: str) -> None:
    """The bare pipeline's work for one job; a job that is not JSON or misses a field is
    skipped, as bare skips it."""
    global _smtp
    try:
        job = json.loads(body)
        acct, jid, to = job["account_id"], job["id"], job["to"]
        data = _bare_render(job)
    except (ValueError, KeyError, TypeError):
        return
    redis, smtp = _clients()
    pipe = redis.pipeline(transaction=False)
    pipe.set(f"bare:{{{acct}}}:job:{jid}", "S", nx=True, ex=259200)
    pipe.incr(f"bare:{{{acct}}}:sent")
    pipe.expire(f"bare:{{{acct}}}:sent", 86400)
    claimed, _, _ = pipe.execute()
    if not claimed:
        return
    try:
        smtp.sendmail(parseaddr(job["from"])[1], [to], data)
    except (smtplib.SMTPException, OSError):
        _smtp = None  # reconnect at the next task; this one is retried by the broker
        raise


def task_message(body: bytes) -> aio_pika.Message:
    """``body`` (a job, as the other systems get it) as a Celery protocol-2 message calling
    ``outbox.send(body)``."""
    task_id = str(uuid.uuid4())
    payload = [[body.decode("utf-8", "replace")], {},
               {"callbacks": None, "errbacks": None, "chain": None, "chord": None}]
    return aio_pika.Message(
        json.dumps(payload).encode(), content_type="application/json",
        content_encoding="utf-8", delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        correlation_id=task_id,
        headers={"lang": "py", "task": TASK, "id": task_id, "root_id": task_id,
                 "parent_id": None, "group": None, "shadow": None, "eta": None,
                 "expires": None, "retries": 0, "timelimit": [None, None],
                 "argsrepr": "(body)", "kwargsrepr": "{}", "origin": "bench",
                 "ignore_result": True})
