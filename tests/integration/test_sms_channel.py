"""The SMS channel through the real twilio client against the local Twilio stand-in."""

from __future__ import annotations

import time
from typing import Any

import pytest

from outbox.devsinks.twilio_api import TwilioStandIn
from sender.channels.base import SendFailure
from sender.channels.twilio import TwilioChannel, TwilioConfig, normalise_number
from sender.models import SmsJob

pytestmark = pytest.mark.integration
SID, TOKEN = "AC" + "1" * 32, "secret-token"


@pytest.fixture
async def standin():
    api = TwilioStandIn(account_sid=SID, auth_token=TOKEN, callback_delay=0.01)
    base = await api.start()
    yield api, base
    await api.close()


def _channel(base: str, **overrides: Any) -> TwilioChannel:
    config = {"account_sid": SID, "auth_token": TOKEN, "api_base": base,
              "from_": "+15005550006", "messaging_service_sid": None,
              "status_callback": None, **overrides}
    return TwilioChannel(TwilioConfig(**config))


def _job(to: str, body: str = "Your meeting starts at 3 pm", **fields: Any) -> SmsJob:
    return SmsJob.model_validate({"v": 1, "id": fields.pop("id", "s1"), "account_id": "acct_1",
                                  "channel": "sms", "category": "notification",
                                  "topic": "meeting", "to": to, "body": body, **fields})


async def test_a_message_is_created_with_its_segments_and_callback_url(standin):
    api, base = standin
    channel = _channel(base, status_callback="https://outbox.example/webhooks/twilio/status")
    result = await channel.send(_job("9123 4567", body="會議 3 點開始", id="job-7"))
    await channel.close()
    assert result.provider == "twilio" and result.provider_message_id.startswith("SM")
    assert result.extra == {"segments": 1, "encoding": "UCS-2"}
    sent = api.messages[-1]
    assert sent["to"] == "+85291234567"  # normalised to E.164 with the HK default region
    assert api.requests[-1]["StatusCallback"] == \
        "https://outbox.example/webhooks/twilio/status?j=job-7&a=acct_1"


@pytest.mark.parametrize(("to", "status", "reason"), [
    ("+15005550001", "rejected", "userunknown"),       # 21211 invalid number
    ("+15005550009", "rejected", "userunknown"),       # 21614 not a mobile number
    ("+15005550004", "unsubscribed", "suppressed"),    # 21610 recipient sent STOP
])
async def test_twilio_errors_are_classified(standin, to, status, reason):
    api, base = standin
    channel = _channel(base)
    with pytest.raises(SendFailure) as info:
        await channel.send(_job(to))
    await channel.close()
    assert (info.value.status, info.value.outcome.reason) == (status, reason)


@pytest.mark.parametrize("to", ["+852 2345 6789", "123", "+1 800 555 0100"])
async def test_numbers_that_cannot_take_sms_are_refused_before_any_request(standin, to):
    api, base = standin
    channel = _channel(base)
    with pytest.raises(SendFailure) as info:
        await channel.send(_job(to))
    await channel.close()
    assert info.value.status == "rejected"
    assert api.requests == []


async def test_too_many_segments_is_rejected(standin):
    api, base = standin
    channel = _channel(base, max_segments=2)
    with pytest.raises(SendFailure, match="3 segments"):
        await channel.send(_job("+85291234567", body="x" * 400))
    await channel.close()
    assert api.requests == []


async def test_429_is_a_retryable_failure(standin):
    api, base = standin
    api.fail_next(1)
    channel = _channel(base)
    with pytest.raises(SendFailure) as info:
        await channel.send(_job("+85291234567"))
    result = await channel.send(_job("+85291234567", id="s2"))
    await channel.close()
    assert (info.value.outcome.kind, info.value.outcome.reason) == ("transient", "speeding")
    assert info.value.outcome.retryable and info.value.status is None
    assert result.provider_message_id


async def test_per_sender_rate_limit_spaces_requests(standin):
    api, base = standin
    channel = _channel(base, rate_per_sender=5.0)
    started = time.monotonic()
    for i in range(10):
        await channel.send(_job("+85291234567", id=f"r{i}"))
    elapsed = time.monotonic() - started
    await channel.close()
    # a burst of 5, then 5 more at 5 a second: the limiter must have waited about a second
    assert elapsed >= 0.9
    assert len(api.messages) == 10


def test_normalise_number():
    assert normalise_number("91234567") == "+85291234567"
    assert normalise_number("+44 7911 123456") == "+447911123456"
