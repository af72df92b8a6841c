"""Job (CRM → Outbox) and status event (Outbox → CRM) formats, schema version 1.

Each channel's job model derives from :class:`JobBase` with ``channel: Literal["<name>"]``;
which models a job may be is declared in :mod:`sender.channels.registry`, whose ``parse_job``
validates a body with :func:`load` and :func:`invalid` from here. A job that does not
validate raises :class:`InvalidJob` whose message says why; the worker dead-letters it with
that reason and, if an ``id`` could be read, publishes ``rejected``.

Hostile bodies are refused before pydantic sees them: JSON is parsed by pydantic-core (Rust, no
Python recursion) without ``NaN``/``Infinity``, then walked once without recursion for its depth
(at most :data:`MAX_DEPTH`) and for numbers that overflowed to infinity (``1e999``), so a job that
validates can always be written back as valid JSON (status events carry its ``metadata``).
"""

from __future__ import annotations

import functools
import operator
import re
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated, Any, Literal, get_args

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError, from_json

from sender import job_headers
from suppression import channels, ids, json_limits, statuses
from suppression.address import BadAddress
from suppression.address import email as canonical_email

SCHEMA_VERSION = 1
#: Nesting allowed in a job (objects and arrays); a real job is 3 deep.
MAX_DEPTH = json_limits.MAX_DEPTH
#: RFC 3339 date-time with its time zone (``Z`` or ``±hh:mm``)
_RFC3339 = re.compile(
    r"^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d{1,9})?([Zz]|[+-]\d{2}:\d{2})$")

_NO_CRLF = r"^[^\r\n\x00]*$"


def _id_check(parse: Callable[[object], str]) -> AfterValidator:
    """A pydantic check by one of :mod:`suppression.ids`' parsers (the one rule), its error
    the parser's words ("account id must be ...") without pydantic's "Value error" prefix."""
    def check(value: str) -> str:
        try:
            return parse(value)
        except ids.InvalidId as exc:
            raise PydanticCustomError("invalid_id", str(exc)) from None
    return AfterValidator(check)


#: Ids are used in Message-IDs (dot-atom text: no ':'), VERP addresses, Redis keys and URLs:
#: :mod:`suppression.ids` holds the rule, for every entrance.
JobId = Annotated[str, _id_check(ids.parse_job_id)]
AccountId = Annotated[str, _id_check(ids.parse_account_id)]
HeaderText = Annotated[str, StringConstraints(pattern=_NO_CRLF, max_length=998)]
Category = Literal["marketing", "transactional", "notification"]
#: the categories that travel on the bulk lane (``<channel>.bulk``) and yield to the others
BULK_CATEGORIES = frozenset({"marketing"})

#: a job status: :mod:`suppression.statuses` declares them (with their ranking, which the
#: post-send script is generated from)
STATUSES: tuple[str, ...] = statuses.STATUSES
if TYPE_CHECKING:
    Status = str
else:
    Status = Literal[STATUSES]
#: ``change`` of a recipient event (README, "Recipient events"): whether a recipient may be
#: contacted changed. The first three stop messages to them, the last two allow them again.
RecipientChange = Literal["unsubscribed", "resubscribed", "complained", "suppressed",
                          "unsuppressed"]
RECIPIENT_CHANGES: tuple[str, ...] = get_args(RecipientChange)


class InvalidJob(ValueError):
    """The job cannot be processed; ``reason`` is for people, ``job_id`` when one was readable."""

    def __init__(self, reason: str, job_id: str | None = None, account_id: str | None = None,
                 channel: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.job_id = job_id
        self.account_id = account_id
        self.channel = channel


class JobBase(BaseModel):
    """What every job has; a channel's model adds ``channel`` (its name) and ``to``."""

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)
    if TYPE_CHECKING:  # declared by each channel's model, with its own type and checks
        channel: str
        to: str

    v: Literal[1]
    id: JobId
    account_id: AccountId
    category: Category
    topic: Annotated[str, StringConstraints(min_length=1, max_length=64)] | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)
    not_after: AwareDatetime | None = None

    @field_validator("v", mode="before")
    @classmethod
    def _strict_version(cls, value: Any) -> Any:
        # Literal[1] alone takes true and 1.0 (they equal 1): the version is the integer 1
        if type(value) is not int:
            raise ValueError(f"must be the integer {SCHEMA_VERSION}")
        return value

    @field_validator("not_after", mode="before")
    @classmethod
    def _rfc3339(cls, value: Any) -> Any:
        # pydantic would take a number as a Unix time and a date alone as midnight
        if value is not None and not (isinstance(value, str) and _RFC3339.match(value)):
            raise ValueError("must be an RFC 3339 date-time with a timezone, "
                             "e.g. 2026-01-01T09:00:00+08:00")
        return value

    @model_validator(mode="after")
    def _topic_for_notifications(self) -> JobBase:
        if self.category == "notification" and not self.topic:
            raise ValueError("a notification job needs a topic (task, meeting, call, ...)")
        return self

    def expired(self, now: datetime | None = None) -> bool:
        """Past ``not_after``: not to be sent."""
        return self.not_after is not None and (now or datetime.now(UTC)) > self.not_after


class EmailJob(JobBase):
    """An email job: ``to`` is one address; ``text`` and/or ``html``."""

    channel: Literal["email"]
    to: Annotated[str, StringConstraints(pattern=_NO_CRLF, min_length=3, max_length=320)]
    from_: HeaderText = Field(alias="from", min_length=3)
    reply_to: HeaderText | None = None
    subject: HeaderText
    text: str | None = None
    html: str | None = None
    headers: dict[str, HeaderText] = Field(default_factory=dict)

    @field_validator("to")
    @classmethod
    def _canonical_to(cls, to: str) -> str:
        """``to`` must have the canonical form every key uses (no invisible or control
        characters, a valid IDNA domain); it is kept as given for the wire."""
        try:
            canonical_email(to)
        except BadAddress as exc:
            raise ValueError(str(exc)) from None
        return to

    @field_validator("headers")
    @classmethod
    def _allowed_headers(cls, headers: dict[str, str]) -> dict[str, str]:
        """Job headers are an allow-list (:mod:`sender.job_headers`)."""
        return job_headers.check(headers)

    @model_validator(mode="after")
    def _has_body(self) -> EmailJob:
        if not self.text and not self.html:
            raise ValueError("an email job needs text or html")
        return self


class SmsJob(JobBase):
    """An SMS job: ``to`` in E.164, ``body`` the text, ``from`` optional."""

    channel: Literal["sms"]
    to: Annotated[str, StringConstraints(pattern=r"^\+?[0-9 ()\-]{3,32}$")]
    from_: Annotated[str, StringConstraints(max_length=64)] | None = Field(None, alias="from")
    body: Annotated[str, StringConstraints(min_length=1, max_length=1600)]


def job_adapter(models: tuple[type[JobBase], ...]) -> TypeAdapter[JobBase]:
    """A validator for a job of any of ``models``, told apart by ``channel``."""
    if len(models) == 1:
        return TypeAdapter(models[0])
    union: Any = Annotated[functools.reduce(operator.or_, models), Field(discriminator="channel")]
    return TypeAdapter(union)


def load(body: bytes, *, max_bytes: int) -> Any:
    """A job body as JSON data, before its model is checked: at most ``max_bytes``, JSON
    without NaN/Infinity, at most :data:`MAX_DEPTH` deep, every number finite; raise
    :class:`InvalidJob` with a readable reason."""
    if len(body) > max_bytes:
        raise InvalidJob(f"job is {len(body)} bytes, over the limit of {max_bytes}",
                         *_salvage_ids(body))
    try:
        data = from_json(body, allow_inf_nan=False)
    except ValueError as exc:
        raise InvalidJob(_json_problem(body, exc), *_regex_ids(body)) from None
    problem = _unwritable(data)
    if problem:
        raise InvalidJob(problem, *_ids_of(data))
    return data


def _json_problem(body: bytes, exc: ValueError) -> str:
    if "recursion limit" in str(exc):
        return f"nested more than {MAX_DEPTH} levels deep"
    try:  # only for bodies already refused: say why when it is NaN/Infinity
        from_json(body, allow_inf_nan=True)
    except ValueError:
        return f"not valid JSON: {exc}"
    return "not valid JSON: NaN and Infinity are not JSON numbers"


def _unwritable(data: Any) -> str | None:
    """Why ``data`` could not be written back as JSON (too deep, a non-finite number), or
    None (:func:`suppression.json_limits.problem`)."""
    found = json_limits.problem(data)
    if found == "too_deep":
        return f"nested more than {MAX_DEPTH} levels deep"
    return "a number is out of range (not finite)" if found else None


def invalid(exc: ValidationError, data: Any) -> InvalidJob:
    """The :class:`InvalidJob` for ``data`` that failed its model's validation."""
    return InvalidJob(_describe(exc), *_ids_of(data))


def _describe(exc: ValidationError) -> str:
    parts = []
    names = channels.names()
    for err in exc.errors(include_url=False)[:5]:
        loc = ".".join(str(p) for p in err["loc"] if p not in names) or "job"
        if err["type"] == "json_invalid":
            return f"not valid JSON: {err['msg']}"
        if err["type"] == "union_tag_invalid":
            return f"channel must be {channels.choices(quote=True)}"
        if err["type"] == "union_tag_not_found":
            return "missing field: channel"
        if err["type"] == "model_attributes_type":
            return "a job must be a JSON object"
        parts.append(f"{loc}: {err['msg'].removeprefix('Value error, ')}")
    return "; ".join(parts)


def _salvage_ids(body: bytes) -> tuple[str | None, str | None, str | None]:
    """Best effort: the id, account and channel of an invalid job, for its ``rejected`` event.
    The top-level fields when the body parses (pydantic-core: a few ms for megabytes), else the
    first matching ``"id": "..."`` anywhere in it (a C regex scan, however large)."""
    try:
        data = from_json(body)
    except ValueError:
        return _regex_ids(body)
    return _ids_of(data)


def _ids_of(data: Any) -> tuple[str | None, str | None, str | None]:
    if not isinstance(data, dict):
        return None, None, None
    job_id, account_id, channel = (
        v if ids.is_id(v) else None
        for v in (data.get("id"), data.get("account_id"), data.get("channel"))
    )
    return job_id, account_id, channel if channel in channels.names() else None


_ID_RE = re.compile(rb'"(id|account_id|channel)"\s*:\s*"(' + ids.PATTERN.encode() + rb')"')


def _regex_ids(body: bytes) -> tuple[str | None, str | None, str | None]:
    found = {m.group(1).decode(): m.group(2).decode() for m in _ID_RE.finditer(body)}
    channel = found.get("channel")
    return (found.get("id"), found.get("account_id"),
            channel if channel in channels.names() else None)


def utcnow_iso() -> str:
    """Now, as the events write it: RFC 3339 UTC with milliseconds."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def status_event(
    *,
    job_id: str,
    account_id: str | None,
    channel: str | None,
    status: str,  # a job status (Status), or an account's state for account events
    reason: str | None = None,
    detail: str | None = None,
    provider: str | None = None,
    provider_message_id: str | None = None,
    attempt: int = 1,
    metadata: dict[str, Any] | None = None,
    at: str | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """One status event (README, "Status events"). Extra keys (e.g. ``segments``) are added."""
    event = {
        "v": SCHEMA_VERSION,
        "id": job_id,
        "account_id": account_id,
        "channel": channel,
        "status": status,
        "reason": reason,
        "detail": detail,
        "provider": provider,
        "provider_message_id": provider_message_id,
        "attempt": attempt,
        "at": at or utcnow_iso(),
        "metadata": metadata or {},
    }
    event.update(extra)
    return event


def event_routing_key(event: dict[str, Any]) -> str:
    """``<channel>.<status>`` on the ``outbox.status`` exchange."""
    return f"{event['channel'] or 'unknown'}.{event['status']}"


class StatusEvent(BaseModel):
    """A status event as the CRM reads it (the contract of :func:`status_event`): the known
    fields typed, any others (``segments``, ``encoding`` of SMS; ``action``, ``actor``,
    ``from``, ``probation_until`` of account events) kept as extra attributes.

    ``status`` is a job status (:data:`STATUSES`) or, for ``account.<state>`` events, the
    account's new state; ``channel`` is None for those. ``routing_key`` is the key it was
    published with (``<channel>.<status>``, ``account.<state>``)."""

    model_config = ConfigDict(frozen=True, extra="allow", populate_by_name=True)

    v: Literal[1]
    id: str
    account_id: str | None
    channel: str | None
    status: str
    reason: str | None = None
    detail: str | None = None
    provider: str | None = None
    provider_message_id: str | None = None
    attempt: int = 1
    at: AwareDatetime
    metadata: dict[str, Any] = Field(default_factory=dict)
    routing_key: str = Field("", exclude=True)

    @classmethod
    def parse(cls, body: bytes, routing_key: str = "") -> StatusEvent:
        """One event from its JSON body; ``ValueError`` (pydantic's) when it is not one."""
        event = cls.model_validate_json(body)
        return event.model_copy(update={"routing_key": routing_key or event.routing_key})


def salvage_ids(body: bytes) -> tuple[str | None, str | None, str | None]:
    """The ``(id, account_id, channel)`` of a job's bytes as far as they can be read (any of
    them None when not): what ``outbox dead`` shows of a dead letter."""
    return _salvage_ids(body)


class RecipientEvent(BaseModel):
    """A recipient event as the CRM reads it (``"type": "recipient"``, routing key
    ``recipient.<channel>.<change>``; :mod:`sender.recipient_events`): whether ``address``
    may be contacted by ``account_id`` (None: by every account, a global entry) changed.
    Unknown fields are kept as extra attributes, as :class:`StatusEvent` keeps them."""

    model_config = ConfigDict(frozen=True, extra="allow")

    v: Literal[1]
    type: Literal["recipient"]
    id: str = ""
    account_id: str | None
    channel: str
    address: str
    change: RecipientChange
    source: str
    at: AwareDatetime
    routing_key: str = Field("", exclude=True)

    @classmethod
    def parse(cls, body: bytes, routing_key: str = "") -> RecipientEvent:
        """One event from its JSON body; ``ValueError`` (pydantic's) when it is not one."""
        event = cls.model_validate_json(body)
        return event.model_copy(update={"routing_key": routing_key or event.routing_key})


#: what ``outbox.status`` carries: job and account status events, and recipient events
Event = StatusEvent | RecipientEvent


def parse_event(body: bytes, routing_key: str = "") -> Event:
    """A status or recipient event from its JSON body (told apart by ``"type"``); ``ValueError``
    when it is neither."""
    try:
        data = from_json(body)
    except ValueError:
        data = None
    if isinstance(data, dict) and data.get("type") == "recipient":
        return RecipientEvent.parse(body, routing_key)
    return StatusEvent.parse(body, routing_key)
