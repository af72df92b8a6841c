"""The one small interface every delivery channel implements.

Exceptions::

    SendFailure            the provider did not take the message; ``outcome`` says how
                           (kind hard/soft/block/complaint/transient, reason) and whether
                           a retry may help (``outcome.retryable``)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from suppression.classify import Outcome


@dataclass(frozen=True, slots=True)
class SendResult:
    """The provider accepted the message."""

    provider: str
    provider_message_id: str | None = None
    detail: str | None = None
    extra: dict[str, Any] | None = None  # added to the status event (e.g. SMS segments)


class SendFailure(Exception):
    """The provider refused or could not be reached; ``outcome`` classifies it.

    ``status`` names the job's final status when it is not the kind's default (a number that
    cannot take SMS is ``rejected``; Twilio's 21610 is ``unsubscribed``); ``suppress`` the
    suppression reason the refusal teaches about the recipient (``invalid`` globally,
    ``sms_stop`` for the job's account)."""

    def __init__(self, outcome: Outcome, detail: str, provider: str,
                 status: str | None = None, suppress: str | None = None) -> None:
        super().__init__(f"{provider}: {outcome.kind}/{outcome.reason}: {detail}")
        self.outcome = outcome
        self.detail = detail
        self.provider = provider
        self.status = status
        self.suppress = suppress


class Channel(Protocol):
    """Send one job; ``close`` releases connections."""

    name: str
    provider: str

    async def send(self, job: Any, sender: tuple[str, ...] | None = None) -> SendResult:
        """``sender``: the account's sender information, given for marketing jobs."""
        ...

    async def close(self) -> None: ...
