"""Whether a provider event may touch its job: the job was handed over, for that recipient.

A provider event names its job and account (read back from what Outbox put in the message)
and a recipient (the provider's). It is applied to the job only when the job's Redis hash
(``keys.job``: ``st`` and ``rc``, written on the claim) shows the job handed over
(:data:`suppression.gate.HANDED_OVER`) for exactly that recipient. The webhook server asks
before it publishes (an event it ignores is acknowledged, counted and logged, and never
reaches ``outbox.events``); the worker asks again before it applies one.

=====================  ========================================================================
verdict                meaning
=====================  ========================================================================
``sent``               handed over for this recipient: the event applies
``unknown_job``        no record: the job is older than ``OUTBOX_IDEMPOTENCY_TTL`` (or was
                       never claimed here). The event changes no job; its facts about the
                       address and the account apply as for an event that names no job
``ignored_not_sent``   the job was never handed over (``rejected``, ``suppressed``, ``failed``
                       before a send, ...): the event changes nothing
``ignored_recipient``  the job went to someone else, or the event names no (valid)
                       recipient: the event changes nothing
=====================  ========================================================================
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from enum import StrEnum

from suppression import keys
from suppression.address import BadAddress
from suppression.channels import normalise
from suppression.gate import HANDED_OVER, recipient_digest
from suppression.replies import text
from suppression.roundtrip import Client, execute


class Handover(StrEnum):
    """What the job's record says about an event for it (the table above)."""

    SENT = "sent"
    UNKNOWN_JOB = "unknown_job"
    NOT_SENT = "ignored_not_sent"
    OTHER_RECIPIENT = "ignored_recipient"

    @property
    def ignored(self) -> bool:
        """The event changes nothing at all."""
        return self in (Handover.NOT_SENT, Handover.OTHER_RECIPIENT)


@dataclass(frozen=True, slots=True)
class Query:
    """One event's question: job ``job_id`` of ``account_id``, ``recipient`` on ``channel``."""

    account_id: str
    job_id: str
    recipient: str | None
    channel: str


async def check(redis: Client, account_id: str, job_id: str, recipient: str | None,
                channel: str, *, region: str = "HK") -> tuple[Handover, str]:
    """The verdict for an event of job ``job_id`` of ``account_id`` naming ``recipient`` on
    ``channel``, and why, in words for the log (one HMGET)."""
    [answer] = await check_all(redis, [Query(account_id, job_id, recipient, channel)],
                               region=region)
    return answer


async def check_all(redis: Client, queries: list[Query], *,
                    region: str = "HK") -> list[tuple[Handover, str]]:
    """:func:`check` for each of ``queries``, in one round trip (a batch of SendGrid events
    costs one, not one per event)."""
    if not queries:
        return []
    replies = await execute(redis, [("HMGET", keys.job(q.account_id, q.job_id), "st", "rc")
                                    for q in queries])
    for reply in replies:
        if isinstance(reply, Exception):
            raise reply
    return [_verdict(q, text(st), text(rc), region)
            for q, (st, rc) in zip(queries, replies, strict=True)]


def _verdict(q: Query, status: str, digest: str, region: str) -> tuple[Handover, str]:
    if not status:
        return Handover.UNKNOWN_JOB, f"no record of job {q.job_id} of account {q.account_id}"
    if status not in HANDED_OVER or not digest:
        return Handover.NOT_SENT, f"job {q.job_id} of account {q.account_id} was not sent " \
                                  f"(status {status})"
    if not q.recipient:
        return Handover.OTHER_RECIPIENT, "the event names no recipient"
    try:
        canonical = normalise(q.channel, q.recipient, default_region=region)
    except BadAddress:
        return Handover.OTHER_RECIPIENT, "the event names no valid recipient"
    if not hmac.compare_digest(digest, recipient_digest(q.channel, canonical)):
        return Handover.OTHER_RECIPIENT, f"job {q.job_id} of account {q.account_id} was " \
                                         "sent to another recipient"
    return Handover.SENT, ""
