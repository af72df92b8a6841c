"""The status events' publish frames, written by hand on the hot path
(:func:`sender.bus.publish_frames`), are byte for byte what pamqp marshals through aiormq."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from aiormq.abc import ChannelFrame
from hypothesis import given
from hypothesis import strategies as st
from pamqp.body import ContentBody
from pamqp.commands import Basic
from pamqp.header import ContentHeader

from sender.bus import publish_frames


def _pamqp(channel: int, exchange: str, key: str, body: bytes, message_id: str,
           timestamp: int, max_content: int) -> bytes:
    properties = Basic.Properties(content_type="application/json", delivery_mode=2,
                                  message_id=message_id,
                                  timestamp=datetime.fromtimestamp(timestamp, UTC))
    bodies = [ContentBody(body[i:i + max_content]) for i in range(0, len(body), max_content)]
    frames = [Basic.Publish(exchange=exchange, routing_key=key, mandatory=True),
              ContentHeader(properties=properties, body_size=len(body)), *bodies]
    return ChannelFrame.marshall(frames=frames, channel_number=channel).payload


_SHORT = st.text(min_size=0, max_size=60)


@given(channel=st.integers(1, 65535), exchange=st.from_regex(r"[a-zA-Z0-9_.:-]{0,60}",
                                                             fullmatch=True), key=_SHORT,
       body=st.binary(max_size=3000), message_id=st.text(min_size=1, max_size=60),
       timestamp=st.integers(0, 2**32), max_content=st.integers(1, 1024))
def test_the_same_bytes_as_pamqp(channel: int, exchange: str, key: str, body: bytes,
                                 message_id: str, timestamp: int, max_content: int) -> None:
    assert publish_frames(channel, exchange, key, body, message_id, timestamp, max_content) \
        == _pamqp(channel, exchange, key, body, message_id, timestamp, max_content)


def test_an_event_larger_than_a_frame_is_split_as_aiormq_splits_it() -> None:
    body = b'{"detail":"' + b"x" * 300_000 + b'"}'
    ours = publish_frames(3, "outbox.status", "email.sent", body, "j1", 1_765_000_000, 131_064)
    assert ours == _pamqp(3, "outbox.status", "email.sent", body, "j1", 1_765_000_000, 131_064)
    assert ours.count(b"\xce\x03\x00\x03") == 3  # three body frames, each after a frame end


def test_a_name_over_255_bytes_is_refused_before_anything_is_written() -> None:
    with pytest.raises(ValueError, match="short string"):
        publish_frames(1, "outbox.status", "email." + "x" * 260, b"{}", "j1", 0, 1000)


def test_no_frame_limit_puts_the_body_in_one_frame() -> None:
    """frame_max 0 (no limit negotiated) gives aiormq a negative content size: it sends the
    body in one frame, and so do we."""
    body = b"x" * 5000
    ours = publish_frames(1, "outbox.status", "email.sent", body, "j1", 0, 0 - 8)
    assert ours == _pamqp(1, "outbox.status", "email.sent", body, "j1", 0, 5000)
    assert publish_frames(1, "outbox.status", "email.sent", b"", "j1", 0, -8) == \
        _pamqp(1, "outbox.status", "email.sent", b"", "j1", 0, 1)
