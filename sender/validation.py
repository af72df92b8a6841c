"""One validation of a job, for every entrance: the client (:mod:`sender.client`), ``outbox
enqueue`` (through the client) and the worker (:mod:`sender.pipeline`) call :func:`validate`
on the same bytes and get the same verdict with the same reason.

What it checks, in order (the first problem is the reason)::

    size, JSON, depth, finite numbers      sender.models.load (OUTBOX_MAX_JOB_BYTES)
    fields and their types                 the channel's job model (sender.models): ids,
                                           category, topic, not_after, header allow-list,
                                           the canonical form of an e-mail ``to``,
                                           attachments (OUTBOX_MAX_ATTACHMENTS, _BYTES)
    email: From, To, Reply-To, Subject,    sender.mime.check_job: what the renderer would
           headers                         refuse (one valid mailbox each, the sender's
                                           domain syntax and IDNA, foldable header lines)
    sms: to                                a possible number in E.164 (the suppression key's
                                           form, suppression.address.e164), valid and able to
                                           take SMS (sender.channels.sms_numbers); numbers
                                           without + read in OUTBOX_SMS_REGION
    sms: body                              at most OUTBOX_SMS_MAX_SEGMENTS segments

Not checked here, because it needs the account's records in Redis: whether the sender
(``from``, ``reply_to``, an SMS sender) is verified for the account, DMARC for marketing, and
the marketing footer made of the account's sender information (the worker refuses a marketing
SMS that the footer pushes over the segment maximum; :func:`sms_notes` warns about it).

:func:`sms_notes` says, as warnings and not refusals, when a character or the marketing footer
makes an SMS UCS-2 or adds a segment: the sender pays for each segment.

This module imports no sender of a channel (no aiosmtplib, twilio, aiohttp, dnspython): the
client stays light.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from sender.channels.sms_numbers import InvalidNumber, normalise_number
from sender.channels.sms_segments import GSM7_BASIC, GSM7_EXTENSION, segments
from sender.compliance import SenderInfo, sms_marketing_body
from sender.mime import MimeError, check_job
from sender.models import (
    AttachmentLimits,
    EmailJob,
    InvalidJob,
    JobBase,
    SmsJob,
    schedule_problem,
)
from suppression.address import BadAddress, e164

if TYPE_CHECKING:
    from config import Settings

#: OUTBOX_MAX_JOB_BYTES' default
MAX_JOB_BYTES = 2 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class Rules:
    """The settings validation depends on; the client's defaults are the worker's defaults."""

    max_job_bytes: int = MAX_JOB_BYTES
    sms_region: str = "HK"
    sms_max_segments: int = 10
    #: None: :data:`sender.models.ATTACHMENT_LIMITS`
    attachment_limits: AttachmentLimits | None = None
    #: the furthest ahead a job's ``send_at`` may be (seconds: OUTBOX_SCHEDULE_MAX_AHEAD)
    schedule_max_ahead: float = 30 * 86400

    @classmethod
    def from_settings(cls, settings: Settings) -> Rules:
        """The rules of these settings (the worker's, ``outbox enqueue``'s)."""
        return cls(max_job_bytes=settings.max_job_bytes, sms_region=settings.sms_region,
                   sms_max_segments=settings.sms_max_segments,
                   attachment_limits=AttachmentLimits(settings.max_attachments,
                                                      settings.max_attachment_bytes),
                   schedule_max_ahead=settings.schedule_max_ahead)


DEFAULT_RULES = Rules()


def validate(body: bytes, rules: Rules = DEFAULT_RULES) -> JobBase:
    """The job in ``body`` if it may be sent, else :class:`InvalidJob` with the reason (and
    the ids that could be read)."""
    from sender.channels.registry import parse_job  # the registry lists the job models

    job = parse_job(body, max_bytes=rules.max_job_bytes,
                    attachment_limits=rules.attachment_limits)
    check = CHECKS.get(job.channel)
    problem = (check(job, rules) if check else None) \
        or schedule_problem(job, rules.schedule_max_ahead)
    if problem:
        raise InvalidJob(problem, job.id, job.account_id, job.channel)
    return job


def _email(job: Any, rules: Rules) -> str | None:
    assert isinstance(job, EmailJob)
    try:
        check_job(job)
    except MimeError as exc:
        return str(exc)
    return None


def _sms(job: Any, rules: Rules) -> str | None:
    assert isinstance(job, SmsJob)
    problem = sms_number_problem(job.to, rules.sms_region)
    if problem:
        return f"to: {problem}"
    encoding, count = segments(job.body)
    if count > rules.sms_max_segments:
        return (f"body: {count} {encoding} segments, over the maximum of "
                f"{rules.sms_max_segments} (OUTBOX_SMS_MAX_SEGMENTS)")
    return None


@lru_cache(maxsize=4096)
def sms_number_problem(number: str, region: str = "HK") -> str | None:
    """Why ``number`` cannot receive an SMS job, or None: the suppression key's E.164 form
    (the words the worker's gate used), then a valid number of a kind that takes SMS."""
    try:
        e164(number, default_region=region)
        normalise_number(number, region)
    except BadAddress as exc:
        return str(exc)
    except InvalidNumber as exc:
        return f"{exc}: {number!r}"
    return None


#: channel → its own checks after the model's (a channel without an entry has none)
CHECKS: dict[str, Callable[[Any, Rules], str | None]] = {"email": _email, "sms": _sms}


# --- what an SMS costs ------------------------------------------------------------------

#: sender information unknown (the client has no Redis): the footer's fixed lines only
_UNKNOWN_SENDER = SenderInfo("", "", "", "")


def sms_notes(job: JobBase, *, sender: SenderInfo | None = None,
              max_segments: int = DEFAULT_RULES.sms_max_segments) -> tuple[str, ...]:
    """Warnings about what an SMS job will cost (none for other jobs): a character outside
    GSM-7 that makes the whole message UCS-2, and for marketing the footer Outbox adds (the
    account's ``sender`` information and the bilingual STOP line) making it UCS-2, adding a
    segment or going over ``max_segments``. Without ``sender`` the footer's fixed part is
    counted and the figures are a minimum ("at least")."""
    if not isinstance(job, SmsJob):
        return ()
    notes = list(_character_notes(job.body))
    if job.category == "marketing":
        notes += _footer_notes(job.body, sender, max_segments)
    return tuple(notes)


def _character_notes(body: str) -> list[str]:
    odd = [(i, ch) for i, ch in enumerate(body)
           if ch not in GSM7_BASIC and ch not in GSM7_EXTENSION]
    if not odd:
        return []
    named = ", ".join(f"{ch!r} (U+{ord(ch):04X}) at {i}" for i, ch in odd[:3])
    more = f" and {len(odd) - 3} more" if len(odd) > 3 else ""
    _, count = segments(body)
    _, without = segments("".join(ch for ch in body if ch in GSM7_BASIC or ch in GSM7_EXTENSION))
    return [f"{named}{more} not in GSM-7: the whole SMS is UCS-2, {_PER_SEGMENT['UCS-2']}: "
            f"{_n(count)} ({_n(without)} in GSM-7 without {'it' if len(odd) == 1 else 'them'})"]


def _footer_notes(body: str, sender: SenderInfo | None, max_segments: int) -> list[str]:
    before, count_before = segments(body)
    after, count_after = segments(sms_marketing_body(body, sender or _UNKNOWN_SENDER))
    least = "" if sender else "at least "
    notes = []
    if before != after:
        notes.append(f"the marketing footer (sender information and the bilingual STOP line) "
                     f"makes the SMS {after}, {_PER_SEGMENT[after]}: {least}{_n(count_after)} "
                     f"({_n(count_before)} in {before} without it)")
    elif count_after > count_before:
        notes.append(f"the marketing footer adds {least}{count_after - count_before} "
                     f"segment(s): {least}{_n(count_after)} instead of {_n(count_before)}")
    if count_after > max_segments:
        notes.append(f"with the marketing footer the SMS is {least}{_n(count_after)}, over the "
                     f"maximum of {max_segments}: the worker will refuse it")
    return notes


_PER_SEGMENT = {"GSM-7": "160 characters a segment (153 when split)",
                "UCS-2": "70 characters a segment (67 when split)"}


def _n(count: int) -> str:
    return f"{count} segment" + ("" if count == 1 else "s")


__all__ = ["CHECKS", "DEFAULT_RULES", "Rules", "sms_notes", "sms_number_problem", "validate"]
