"""Provider events (webhooks and bounce listener → worker, on ``outbox.events``), schema 1.

One :class:`ProviderEvent` per recipient and happening, whoever reported it (README,
"Provider events"). The webhook side builds it (every field validated on construction) and
publishes :meth:`ProviderEvent.to_json`; the worker reads it back with
:meth:`ProviderEvent.from_json`, which raises :class:`InvalidEvent` with a readable reason (the
worker dead-letters it with that reason). Fields (README "Provider events"):

======================  ========================================================================
``provider``            who reported it: ``twilio``, ``ses``, ``sendgrid``, ``mailgun``,
                        ``postmark``, ``smtp`` (the bounce listener), ``unsubscribe``
``type``                one of :data:`EVENT_TYPES`; ``failed``: the provider never sent it
                        (SES Reject / Rendering Failure, Mailgun rejected): no bounce
``channel``             ``email`` or ``sms``: set by the producer. An event queued before the
                        field existed is read as ``sms`` for ``twilio`` and ``email`` otherwise
``recipient``           the address the provider names (canonicalised where it becomes a key)
``provider_message_id`` the provider's id of the message
``message_id``          the RFC 5322 Message-ID, when the payload has it
``job_id``              ``[A-Za-z0-9._-]{1,128}``, when it could be recovered
``account_id``          as ``job_id``; absent when unknown
``kind``, ``reason``    the outcome classifier's (``suppression.classify``)
``diagnostic``          the provider's own words (an SMTP reply, an error message)
``at``                  when it happened (RFC 3339)
``event_id``            stable for the same happening: the worker applies it once
``raw``                 the provider's payload (an object); the bounce listener adds
                        ``evidence``: ``peer``, ``mail_from``, ``rcpt_to`` and, for a ``quoted``
                        report, ``quoted_message_id`` and ``quoted_account``
``trust``               ``signed`` (default): proven by a signature (a provider's webhook
                        signature, a signed VERP address): applied in full. ``quoted``: a report
                        by mail that only quotes our ``Message-ID`` and ``X-Outbox-Account``,
                        which every recipient sees: it may suppress that recipient for that
                        account alone, and counts toward nothing (``sender.provider_event_applier``)
======================  ========================================================================

Unknown fields are ignored when reading (a newer producer may add some), so events already
queued by an older or newer webhook server are still applied. An event without ``trust`` was
queued by a producer that did not know it, and is ``signed`` (the rules of that time); a
worker older than the field would apply a ``quoted`` report in full, so upgrade the workers
before the bounce listener.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, Literal, get_args

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    ValidationInfo,
    model_validator,
)

from sender.models import AccountId, JobId
from suppression import channels

EventType = Literal[
    "delivered",
    "bounced",
    "soft_bounced",
    "complained",
    "unsubscribed",
    "failed",
    "accepted",
    "opened",
    "clicked",
    "other",
]
EVENT_TYPES: tuple[str, ...] = get_args(EventType)
Trust = Literal["signed", "quoted"]
#: proven by a signature (a provider's webhook, a signed VERP address): applied in full
SIGNED: Trust = "signed"
#: only quotes our Message-ID (+ X-Outbox-Account): the recipient's own word, counted nowhere
QUOTED: Trust = "quoted"
#: ``webhooks.providers.twilio.PROVIDER``: before ``channel`` existed, the channel was guessed
#: from the provider: Twilio's events were SMS, every other provider's e-mail
_LEGACY_SMS_PROVIDER = "twilio"


class InvalidEvent(ValueError):
    """A provider event that cannot be read; the message says why."""


def _one_of(name: str, allowed: Callable[[], tuple[str, ...]]) -> AfterValidator:
    def check(value: str) -> str:
        if value not in allowed():
            raise ValueError(f"{name} must be one of {', '.join(allowed())}, not {value!r}")
        return value
    return AfterValidator(check)


class ProviderEvent(BaseModel):
    """One thing a provider says happened to one message for one recipient.

    ``kind`` and ``reason`` are the outcome classifier's; ``event_id`` is stable for the same
    happening, so the worker can deduplicate; ``job_id``/``message_id``/``account_id`` are
    filled when the payload carries them (the webhook server recovers some from
    ``provider_message_id``); ``raw`` is the provider's payload.
    """

    model_config = ConfigDict(frozen=True, extra="ignore")

    provider: Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_-]{0,31}$")]
    type: Annotated[str, _one_of("type", lambda: EVENT_TYPES)]
    channel: Annotated[str, _one_of("channel", channels.names)]
    recipient: str | None
    provider_message_id: str | None
    message_id: str | None
    job_id: JobId | None
    kind: str | None
    reason: str | None
    diagnostic: str | None
    at: str
    event_id: Annotated[str, StringConstraints(min_length=1)]
    account_id: AccountId | None = None
    raw: dict[str, Any] = Field(default_factory=dict)
    trust: Trust = SIGNED

    @model_validator(mode="before")
    @classmethod
    def _legacy_channel(cls, data: Any, info: ValidationInfo) -> Any:
        """On the wire only (:meth:`from_json`): an event without ``channel`` was queued
        before the field existed; it gets the rule of that time."""
        if info.context == _WIRE and isinstance(data, dict) and "channel" not in data:
            sms = data.get("provider") == _LEGACY_SMS_PROVIDER
            return {**data, "channel": (channels.SMS if sms else channels.EMAIL).name}
        return data

    def replace(self, **changes: Any) -> ProviderEvent:
        """A copy with ``changes``, validated like a new event."""
        return ProviderEvent.model_validate({**self.model_dump(), **changes})

    def to_json(self) -> bytes:
        """The body published on ``outbox.events`` (UTF-8 JSON object)."""
        return self.model_dump_json().encode()

    @classmethod
    def from_json(cls, body: bytes | str) -> ProviderEvent:
        """Decode and validate one body of ``outbox.events``; :class:`InvalidEvent` says why
        it cannot be read."""
        try:
            return cls.model_validate_json(body, context=_WIRE)
        except ValidationError as exc:
            raise InvalidEvent(_describe(exc)) from None


_WIRE = {"wire": True}


def _describe(exc: ValidationError) -> str:
    """What is wrong with an event, in one line (its first three problems)."""
    parts = []
    for err in exc.errors(include_url=False)[:3]:
        if err["type"] == "json_invalid":
            return f"not valid JSON: {err['msg']}"
        if err["type"] == "model_type":
            return "a provider event must be a JSON object"
        if err["type"] == "value_error":  # our own check: its message names the field
            parts.append(str(err.get("ctx", {}).get("error", err["msg"])))
            continue
        loc = ".".join(str(p) for p in err["loc"]) or "event"
        parts.append(f"{loc}: {err['msg']}")
    return "; ".join(parts)
