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

import binascii
import functools
import json
import operator
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated, Any, Literal, get_args
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError, from_json

from sender import job_headers
from suppression import channels, ids, json_limits, statuses
from suppression.address import BadAddress
from suppression.address import email as canonical_email
from suppression.clock import now_iso

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
    #: when to send it (README, "Send later"): until then it waits in Redis, then it goes
    #: through the whole pipeline like any job
    send_at: AwareDatetime | None = None
    #: the recipient's time zone (IANA name), for the account's quiet hours
    timezone: Annotated[str, StringConstraints(min_length=1, max_length=64)] | None = None

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                ZoneInfo(value)
            except (ZoneInfoNotFoundError, ValueError, OSError):
                raise ValueError(f"unknown time zone {value!r}: an IANA name such as "
                                 "Asia/Hong_Kong") from None
        return value

    @field_validator("v", mode="before")
    @classmethod
    def _strict_version(cls, value: Any) -> Any:
        # Literal[1] alone takes true and 1.0 (they equal 1): the version is the integer 1
        if type(value) is not int:
            raise ValueError(f"must be the integer {SCHEMA_VERSION}")
        return value

    @field_validator("not_after", "send_at", mode="before")
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

    @model_validator(mode="after")
    def _send_at_before_not_after(self) -> JobBase:
        if self.send_at and self.not_after and self.send_at > self.not_after:
            raise ValueError("send_at is after not_after: the job could never be sent")
        return self

    def expired(self, now: datetime | None = None) -> bool:
        """Past ``not_after``: not to be sent."""
        return self.not_after is not None and (now or datetime.now(UTC)) > self.not_after


@dataclass(frozen=True, slots=True)
class AttachmentLimits:
    """At most ``count`` attachments of at most ``total_bytes`` (decoded, all together) in one
    email job (``OUTBOX_MAX_ATTACHMENTS``, ``OUTBOX_MAX_ATTACHMENT_BYTES``). Passed to a job's
    validation as ``context={"attachment_limits": ...}``; :data:`ATTACHMENT_LIMITS` without."""

    count: int = 10
    total_bytes: int = 10 * 1024 * 1024


ATTACHMENT_LIMITS = AttachmentLimits()
#: RFC 2045 token: printable ASCII but space and tspecials
_TOKEN = r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_QUOTED = r'"(?:[\x20\x21\x23-\x5b\x5d-\x7e]|\\[\x20-\x7e])*"'
_CONTENT_TYPE = re.compile(
    rf"^({_TOKEN})/({_TOKEN})((?:[ \t]*;[ \t]*{_TOKEN}=(?:{_TOKEN}|{_QUOTED}))*)$")
#: content types an attachment may not have: RFC 2046 5.1/5.2 forbid base64 for them
_NOT_ATTACHABLE = ("multipart", "message")
#: parameters we write ourselves (``name``) or that would break the structure
_OWN_PARAMETERS = re.compile(r";[ \t]*(name|boundary)\*?=", re.I)
#: RFC 2392 content-id (without the angle brackets): dot-atom text, optionally @ another
_CONTENT_ID = re.compile(
    r"^[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*"
    r"(@[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*)?$")
#: in a file name: path separators, C0 and C1 controls, DEL, and Unicode format characters
#: (bidi overrides would disguise "gpj.exe" as "exe.jpg")
_BAD_FILENAME = re.compile(r"[/\\\x00-\x1f\x7f-\x9f\u200b-\u200f\u202a-\u202e"
                           r"\u2066-\u2069\ufeff]")


class Attachment(BaseModel):
    """One file of an email job (README, "Attachments"): its name as the reader sees it, its
    MIME type, its bytes in base64 and, for an image the html shows inline, a content id
    (``<img src="cid:ID">``). The content is never logged nor stored (only :meth:`meta`)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    filename: Annotated[str, StringConstraints(min_length=1, max_length=255)]
    content_type: Annotated[str, StringConstraints(min_length=3, max_length=255)]
    content: str = Field(repr=False)
    content_id: Annotated[str, StringConstraints(min_length=1, max_length=250)] | None = None

    @field_validator("filename")
    @classmethod
    def _plain_filename(cls, name: str) -> str:
        bad = _BAD_FILENAME.search(name)
        if bad:
            raise ValueError(f"a file name may not contain {bad.group()!r} (no paths, no "
                             "control or direction characters)")
        if name != name.strip() or name in (".", ".."):
            raise ValueError(f"{name!r} is not a file name")
        return name

    @field_validator("content_type")
    @classmethod
    def _mime_type(cls, value: str) -> str:
        match = _CONTENT_TYPE.match(value)
        if not match:
            raise ValueError(f"{value!r} is not a MIME type (type/subtype[; name=value])")
        if match.group(1).lower() in _NOT_ATTACHABLE:
            raise ValueError(f"{match.group(1)}/* cannot be attached (send it as a file, "
                             "e.g. application/octet-stream)")
        if _OWN_PARAMETERS.search(match.group(3)):
            raise ValueError("content_type may not set name or boundary (the filename is used)")
        return value

    @field_validator("content")
    @classmethod
    def _strict_base64(cls, value: str) -> str:
        try:
            binascii.a2b_base64(value.encode("ascii"), strict_mode=True)
        except (UnicodeEncodeError, binascii.Error) as exc:
            raise ValueError(f"content is not strictly valid base64 ({exc})") from None
        if len(value) % 4:
            raise ValueError("content is not strictly valid base64 (length not a multiple of 4)")
        return value

    @field_validator("content_id")
    @classmethod
    def _rfc2392(cls, value: str | None) -> str | None:
        if value is not None and not _CONTENT_ID.match(value):
            raise ValueError(f"{value!r} is not a content id (RFC 2392, without < >; "
                             "e.g. logo@acme.example)")
        return value

    @property
    def size(self) -> int:
        """Decoded size in bytes (from the base64 length, without decoding)."""
        return len(self.content) // 4 * 3 - self.content[-2:].count("=")

    def data(self) -> bytes:
        """The decoded content."""
        return binascii.a2b_base64(self.content.encode("ascii"), strict_mode=True)

    def meta(self) -> dict[str, Any]:
        """What may be kept and shown of this attachment: everything but the content."""
        return {"filename": self.filename, "content_type": self.content_type,
                "size": self.size, "content_id": self.content_id}


def without_attachment_content(body: bytes) -> bytes:
    """``body`` with the ``content`` of each of its attachments replaced by its decoded
    ``size`` (what a dead letter keeps: never an attachment's content); ``body`` itself when
    it has none or is not a JSON object."""
    if b'"attachments"' not in body:
        return body
    try:
        data = json.loads(body)
    except ValueError:
        return body  # not JSON: the parser never read attachments out of it either
    files = data.get("attachments") if isinstance(data, dict) else None
    if not isinstance(files, list):
        return body
    data["attachments"] = [_metadata_only(f) for f in files]
    return json.dumps(data, ensure_ascii=False).encode("utf-8", "surrogatepass")


def _metadata_only(item: Any) -> Any:
    if not isinstance(item, dict):
        return None
    kept = {k: v for k, v in item.items() if k != "content"}
    content = item.get("content")
    kept["content_removed"] = True
    if isinstance(content, str):
        kept["size"] = len(content) * 3 // 4 - content[-2:].count("=")  # as if valid
    return kept


class EmailJob(JobBase):
    """An email job: ``to`` is one address; ``text`` and/or ``html``; ``attachments``."""

    channel: Literal["email"]
    to: Annotated[str, StringConstraints(pattern=_NO_CRLF, min_length=3, max_length=320)]
    from_: HeaderText = Field(alias="from", min_length=3)
    reply_to: HeaderText | None = None
    subject: HeaderText
    text: str | None = None
    html: str | None = None
    headers: dict[str, HeaderText] = Field(default_factory=dict)
    attachments: tuple[Attachment, ...] = ()

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

    @model_validator(mode="after")
    def _attachments_within_limits(self, info: ValidationInfo) -> EmailJob:
        if not self.attachments:
            return self
        limits = (info.context or {}).get("attachment_limits") or ATTACHMENT_LIMITS
        if len(self.attachments) > limits.count:
            raise ValueError(f"{len(self.attachments)} attachments, over the limit of "
                             f"{limits.count} (OUTBOX_MAX_ATTACHMENTS)")
        total = sum(a.size for a in self.attachments)
        if total > limits.total_bytes:
            raise ValueError(f"attachments are {total} bytes (decoded), over the limit of "
                             f"{limits.total_bytes} (OUTBOX_MAX_ATTACHMENT_BYTES)")
        ids_ = [a.content_id for a in self.attachments if a.content_id]
        if len(set(ids_)) != len(ids_):
            raise ValueError("two attachments have the same content_id")
        return self


class SmsJob(JobBase):
    """An SMS job: ``to`` in E.164, ``body`` the text, ``from`` optional."""

    channel: Literal["sms"]
    to: Annotated[str, StringConstraints(pattern=r"^\+?[0-9 ()\-]{3,32}$")]
    from_: Annotated[str, StringConstraints(max_length=64)] | None = Field(None, alias="from")
    body: Annotated[str, StringConstraints(min_length=1, max_length=1600)]


def schedule_problem(job: JobBase, max_ahead: float, now: datetime | None = None
                     ) -> str | None:
    """Why ``job`` cannot wait for its ``send_at`` (more than ``max_ahead`` seconds from
    ``now``: ``OUTBOX_SCHEDULE_MAX_AHEAD``), or None."""
    if job.send_at is None:
        return None
    ahead = (job.send_at - (now or datetime.now(UTC))).total_seconds()
    if ahead <= max_ahead:
        return None
    return (f"send_at is {ahead / 86400:.1f} days ahead, more than the "
            f"{max_ahead / 86400:g} days allowed (OUTBOX_SCHEDULE_MAX_AHEAD)")


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
    return now_iso()


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
