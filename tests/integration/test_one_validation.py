"""One validation (issue 19 item 2): the worker's whole refusal corpus (:mod:`tests.refusals`)
is refused by the worker (real RabbitMQ, Redis, aiosmtpd), by the client and by ``outbox
enqueue`` (``sys.executable -m outbox`` against the test vhost) with the same reason, job by
job; what enqueue refuses never reaches a job queue."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from sender.client import Outbox
from sender.models import InvalidJob
from sender.topology import DEAD_QUEUE
from tests.integration.helpers import (
    collect,
    events,
    publish,
    queue_depth,
    run_outbox,
    running_worker,
)
from tests.refusals import CORPUS

pytestmark = pytest.mark.integration
REASON = "x-outbox-reason"
VALID = {"v": 1, "id": "corpus-control", "account_id": "acct_corpus", "channel": "email",
         "category": "transactional", "to": "ok@example.com", "from": "Acme <s@acme.example>",
         "subject": "fine", "text": "fine"}


@pytest.fixture
def settings(make_settings, smtp_server):
    smtp_url, _ = smtp_server
    return make_settings(smtp_url=smtp_url, twilio_account_sid="AC" + "0" * 32,
                         twilio_auth_token="t" * 32, twilio_from="+85230000000",
                         twilio_api_base="http://127.0.0.1:9")


async def worker_reasons(settings: Any, amqp_url: str) -> tuple[dict[bytes, str], list[Any]]:
    """Each corpus body published unvalidated on its channel's lane, the worker's dead-letter
    reason for each, and the status events it published meanwhile."""
    for key in {key for _, key, _ in CORPUS.values()}:
        await publish(amqp_url, [b for b, k, _ in CORPUS.values() if k == key], routing_key=key)
    async with running_worker(settings):
        dead = await collect(amqp_url, DEAD_QUEUE, lambda m: len(m) >= len(CORPUS), timeout=60)
        status = await collect(amqp_url, "outbox.status", lambda m: False, timeout=1.0)
    return {m.body: str(m.headers[REASON]) for m in dead}, events(status)


async def test_worker_client_and_enqueue_refuse_the_corpus_with_the_same_reasons(
        settings, amqp_url, smtp_server, tmp_path):
    _, recorder = smtp_server
    worker, status = await worker_reasons(settings, amqp_url)
    assert len(worker) == len(CORPUS), "every body dead-lettered, each once"
    assert recorder.messages == []  # nothing was sent
    for name, (body, _, words) in CORPUS.items():
        assert words in worker[body], (name, worker[body])
    details = {e["id"]: e["detail"] for e in status if e["status"] == "rejected"}

    client = Outbox.from_settings(settings)  # validation needs no connection
    for name, (body, _, _) in CORPUS.items():
        with pytest.raises(InvalidJob) as caught:
            client.validate(body)
        assert caught.value.reason == worker[body], name
        if caught.value.job_id:  # the rejected event carries the same words
            assert details[caught.value.job_id] == worker[body], name

    path = tmp_path / "corpus.jsonl"
    bodies = [json.dumps(VALID).encode(), *(body for body, _, _ in CORPUS.values())]
    path.write_bytes(b"\n".join(bodies) + b"\n")
    done = run_outbox(settings, "enqueue", str(path), timeout=120)
    assert done.returncode == 1
    assert done.stdout.strip() == f"published 1, invalid {len(CORPUS)}, failed 0"
    said = dict(re.findall(r"^[^\n]*?:(\d+): invalid job: (.*)$", done.stderr, re.M))
    for lineno, (name, (body, _, _)) in enumerate(CORPUS.items(), start=2):
        assert said.get(str(lineno)) == worker[body], name
    # only the control job reached a job queue (through the real broker)
    counts = {q: await queue_depth(amqp_url, q) for q in
              ("outbox.email", "outbox.email.bulk", "outbox.sms", "outbox.sms.bulk")}
    assert counts == {"outbox.email": 1, "outbox.email.bulk": 0, "outbox.sms": 0,
                      "outbox.sms.bulk": 0}
