"""A throwaway third channel, ``push``, written exactly as a real one would be (its address
kind, job model, sender and factory) and declared with the one registry line a real one needs;
:func:`declared` withdraws it afterwards. Used by the tests that show a new channel reaching
everything that lists channels without a hand edit."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Literal

from config import Settings
from sender.channels import registry
from sender.channels.base import SendResult
from sender.models import JobBase
from suppression import channels
from suppression.address import AddressKind, BadAddress


def _token(address: str, _region: str) -> str:
    token = address.strip()
    if not token.startswith("push:") or len(token) < 8:
        raise BadAddress(f"not a device token: {address!r}")
    return token


DEVICE = AddressKind("device token", _token, lambda a: a.startswith("push:"))


class PushJob(JobBase):
    channel: Literal["push"]
    to: str
    title: str


class FakePush:
    name = "push"
    provider = "fakepush"

    async def send(self, job: Any, sender: tuple[str, ...] | None = None) -> SendResult:
        return SendResult(self.provider, f"fp-{job.id}")

    def stop(self) -> None: ...

    async def close(self) -> None: ...


def build(settings: Settings) -> FakePush:
    return FakePush()


@contextmanager
def declared() -> Iterator[registry.Delivery]:
    """The ``push`` channel declared (the one line), withdrawn afterwards."""
    delivery = registry.declare(registry.Delivery(
        channels.Channel("push", DEVICE), PushJob, "outbox.push", "tests.throwaway_channel:build"))
    try:
        yield delivery
    finally:
        registry.withdraw("push")
    assert "push" not in channels.names()
