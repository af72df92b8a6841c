"""Frames read on the hot path (:mod:`sender.frames`) are what aiormq and pamqp read: the same
kinds with the same values, from the same bytes however they arrive, and the same errors."""

from __future__ import annotations

import asyncio
import struct
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
from aiormq.connection import FrameReceiver
from aiormq.exceptions import InvalidFrameError
from hypothesis import given, settings
from hypothesis import strategies as st
from pamqp import commands
from pamqp import frame as pamqp_frame
from pamqp.base import Frame
from pamqp.body import ContentBody
from pamqp.header import ContentHeader
from pamqp.heartbeat import Heartbeat

from sender import frames

Basic = commands.Basic


def _values(frame: Any) -> Any:
    """Everything a frame holds, to compare frames pamqp does not compare."""
    if isinstance(frame, ContentHeader):
        props = frame.properties
        return ("header", frame.class_id, frame.weight, frame.body_size,
                {k: (type(getattr(props, k)), getattr(props, k)) for k in props.__slots__})
    if isinstance(frame, ContentBody):
        return ("body", frame.value)
    if isinstance(frame, Frame):
        return (type(frame), {k: (type(getattr(frame, k)), getattr(frame, k))
                              for k in frame.__slots__})
    return (type(frame), vars(frame) if hasattr(frame, "__dict__") else frame)


def _same(raw: bytes) -> None:
    used, channel, frame = frames.unmarshal(raw)
    p_used, p_channel, p_frame = pamqp_frame.unmarshal(raw)
    assert (used, channel) == (p_used, p_channel)
    assert _values(frame) == _values(p_frame)


_SHORT = st.text(max_size=40).filter(lambda s: len(s.encode()) <= 255)
_SCALAR = (st.none() | st.booleans() | st.integers(-2**63, 2**63 - 1)
           | st.floats(width=32, allow_nan=False) | st.text(max_size=20)
           | st.binary(max_size=20).map(bytearray)
           | st.datetimes(min_value=datetime(1970, 1, 2), max_value=datetime(2100, 1, 1),
                          timezones=st.just(UTC)).map(lambda d: d.replace(microsecond=0))
           | st.decimals(places=2, min_value=-10**6, max_value=10**6, allow_nan=False))
_VALUE = st.recursive(_SCALAR, lambda inner: st.lists(inner, max_size=3)
                      | st.dictionaries(_SHORT, inner, max_size=3), max_leaves=8)
_PROPERTIES = st.fixed_dictionaries({}, optional={
    "content_type": _SHORT, "content_encoding": _SHORT,
    "headers": st.dictionaries(_SHORT, _VALUE, max_size=5),
    "delivery_mode": st.sampled_from([1, 2]), "priority": st.integers(0, 255),
    "correlation_id": _SHORT, "reply_to": _SHORT, "expiration": _SHORT,
    "message_id": _SHORT,
    "timestamp": st.datetimes(min_value=datetime(1970, 1, 2), max_value=datetime(2100, 1, 1),
                              timezones=st.just(UTC)).map(lambda d: d.replace(microsecond=0)),
    "message_type": _SHORT, "user_id": _SHORT, "app_id": _SHORT})
_EXCHANGE = st.from_regex(r"[a-zA-Z0-9_.:-]{0,60}", fullmatch=True)
_FRAMES = st.one_of(
    st.builds(Basic.Deliver, consumer_tag=_SHORT, delivery_tag=st.integers(0, 2**63 - 1),
              redelivered=st.booleans(), exchange=_EXCHANGE, routing_key=_SHORT),
    st.builds(Basic.Ack, delivery_tag=st.integers(0, 2**63 - 1), multiple=st.booleans()),
    st.builds(Basic.Nack, delivery_tag=st.integers(0, 2**63 - 1), multiple=st.booleans(),
              requeue=st.booleans()),
    st.builds(Basic.Return, reply_code=st.integers(200, 599), reply_text=_SHORT,
              exchange=_EXCHANGE, routing_key=_SHORT),
    st.builds(lambda props, size: ContentHeader(0, size, Basic.Properties(**props)),
              _PROPERTIES, st.integers(0, 2**40)),
    st.builds(ContentBody, st.binary(min_size=1, max_size=3000)),
    st.just(Heartbeat()))


@settings(max_examples=400)
@given(frame=_FRAMES, channel=st.integers(0, 65535))
def test_a_frame_reads_as_pamqp_reads_it(frame: Any, channel: int) -> None:
    _same(pamqp_frame.marshal(frame, channel))


#: every field-table type of RabbitMQ's errata, written by hand (pamqp writes only some)
_TYPED = st.one_of(
    st.tuples(st.just(b"t"), st.integers(0, 255).map(lambda v: struct.pack(">B", v))),
    st.tuples(st.just(b"b"), st.integers(-128, 127).map(lambda v: struct.pack(">b", v))),
    st.tuples(st.just(b"B"), st.integers(0, 255).map(lambda v: struct.pack(">B", v))),
    st.tuples(st.just(b"s"), st.integers(-2**15, 2**15 - 1).map(lambda v: struct.pack(">h", v))),
    st.tuples(st.just(b"u"), st.integers(0, 2**16 - 1).map(lambda v: struct.pack(">H", v))),
    st.tuples(st.just(b"I"), st.integers(-2**31, 2**31 - 1).map(lambda v: struct.pack(">l", v))),
    st.tuples(st.just(b"i"), st.integers(0, 2**32 - 1).map(lambda v: struct.pack(">L", v))),
    st.tuples(st.sampled_from([b"l", b"L"]),
              st.integers(-2**63, 2**63 - 1).map(lambda v: struct.pack(">q", v))),
    st.tuples(st.just(b"S"), st.binary(max_size=30).map(lambda v: struct.pack(">I", len(v)) + v)),
    st.tuples(st.just(b"V"), st.just(b"")),
    st.tuples(st.just(b"x"), st.binary(max_size=30).map(lambda v: struct.pack(">I", len(v)) + v)),
    st.tuples(st.just(b"f"), st.floats(width=32, allow_nan=False).map(
        lambda v: struct.pack(">f", v))),
    st.tuples(st.just(b"T"), st.integers(86400, 2**32 - 1).map(lambda v: struct.pack(">Q", v))))


def _header_with_table(entries: list[tuple[bytes, tuple[bytes, bytes]]], size: int) -> bytes:
    table = b"".join(bytes([len(k)]) + k + kind + value for k, (kind, value) in entries)
    payload = (struct.pack(">HHQH", 60, 0, size, Basic.Properties.flags["headers"])
               + struct.pack(">I", len(table)) + table)
    return struct.pack(">BHI", 2, 1, len(payload)) + payload + b"\xce"


@settings(max_examples=300)
@given(entries=st.lists(st.tuples(st.binary(max_size=12).filter(
    lambda k: _utf8(k)), _TYPED), max_size=6), size=st.integers(0, 2**32))
def test_every_table_type_reads_as_pamqp_reads_it(
        entries: list[tuple[bytes, tuple[bytes, bytes]]], size: int) -> None:
    _same(_header_with_table(entries, size))


def _utf8(raw: bytes) -> bool:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


@settings(max_examples=300)
@given(frame=_FRAMES, cut=st.integers(1, 200), junk=st.binary(min_size=1, max_size=8))
def test_a_damaged_frame_fails_or_reads_as_pamqp_reads_it(frame: Any, cut: int,
                                                          junk: bytes) -> None:
    """A frame cut short inside, or with bytes added inside: whatever pamqp says (a frame,
    or its error), the fast reading says too."""
    raw = pamqp_frame.marshal(frame, 1)
    if len(raw) <= 8:
        return
    at = 7 + cut % (len(raw) - 8)
    for damaged in (raw[:at] + raw[at + 1:], raw[:at] + junk + raw[at:]):
        size = len(damaged) - 8
        damaged = damaged[:3] + struct.pack(">I", size) + damaged[7:]  # the length agrees
        try:
            expected: Any = _values(pamqp_frame.unmarshal(damaged)[2])
        except Exception as exc:
            with pytest.raises(type(exc)):
                frames.unmarshal(damaged)
        else:
            assert _values(frames.unmarshal(damaged)[2]) == expected


async def _read_all(stream: bytes, splits: list[int], fast: bool) -> list[Any]:
    reader = asyncio.StreamReader()
    receiver = FrameReceiver(reader)
    read = frames.get_frame if fast else frames._AIORMQ_GET_FRAME
    got: list[Any] = []
    cuts = sorted({0, len(stream), *(s % (len(stream) + 1) for s in splits)})
    for a, b in zip(cuts, cuts[1:], strict=False):
        reader.feed_data(stream[a:b])
        while True:
            buffered = len(reader._buffer)  # type: ignore[attr-defined]
            if buffered < 8 or buffered < 8 + int.from_bytes(
                    bytes(reader._buffer[3:7]), "big"):  # type: ignore[attr-defined]
                break  # aiormq's reading would wait for more: feed it first
            weight, channel, frame = await read(receiver)
            got.append((weight, channel, _values(frame)))
    reader.feed_eof()
    with pytest.raises(StopAsyncIteration):
        await read(receiver)
    return got


@settings(max_examples=150, deadline=None)
@given(sequence=st.lists(st.tuples(_FRAMES, st.integers(0, 65535)), min_size=1, max_size=8),
       splits=st.lists(st.integers(0, 100_000), max_size=12))
def test_a_stream_split_anywhere_reads_as_aiormq_reads_it(
        sequence: list[tuple[Any, int]], splits: list[int]) -> None:
    stream = b"".join(pamqp_frame.marshal(f, ch) for f, ch in sequence)
    ours = asyncio.run(_read_all(stream, splits, fast=True))
    theirs = asyncio.run(_read_all(stream, splits, fast=False))
    assert ours == theirs
    assert len(ours) == len(sequence)


async def _first(raw: bytes, fast: bool) -> Any:
    reader = asyncio.StreamReader()
    receiver = FrameReceiver(reader)
    receiver.started = True
    reader.feed_data(raw)
    return await (frames.get_frame if fast else frames._AIORMQ_GET_FRAME)(receiver)


def test_a_frame_without_its_end_byte_is_refused_as_aiormq_refuses_it() -> None:
    raw = bytearray(pamqp_frame.marshal(Basic.Ack(delivery_tag=5), 1))
    raw[-1] = 0x00
    for fast in (True, False):
        with pytest.raises(InvalidFrameError, match="Last byte"):
            asyncio.run(_first(bytes(raw), fast))


def test_a_deliver_reads_at_once_without_pamqp(monkeypatch: pytest.MonkeyPatch) -> None:
    """The fast path is taken (pamqp is not asked) for the per-job kinds."""
    def refuse(data: bytes) -> Any:
        raise AssertionError("pamqp asked")

    header = ContentHeader(0, 10, Basic.Properties(
        delivery_mode=2, message_id="j1", headers={"x-outbox-attempt": 2, "d": Decimal("1.5")}))
    raws = [pamqp_frame.marshal(frame, 3) for frame in (
        Basic.Deliver(consumer_tag="c", delivery_tag=9, routing_key="email"),
        Basic.Ack(delivery_tag=3, multiple=True), ContentBody(b"x" * 10), header)]
    expected = [_values(pamqp_frame.unmarshal(raw)[2]) for raw in raws]
    monkeypatch.setattr(frames.pamqp_frame, "unmarshal", refuse)
    for raw, values in zip(raws, expected, strict=True):
        got = asyncio.run(_first(raw, fast=True))
        assert got[1] == 3 and _values(got[2]) == values


def test_install_puts_the_fast_reading_in_place() -> None:
    frames.install()
    assert FrameReceiver.get_frame is frames.get_frame


@settings(max_examples=100, deadline=None)
@given(frame=_FRAMES, cut=st.integers(0, 10_000))
def test_a_frame_still_arriving_is_waited_for(frame: Any, cut: int) -> None:
    """Part of a frame in the buffer: the reading waits (aiormq's) for the rest."""
    raw = pamqp_frame.marshal(frame, 2)
    cut = cut % len(raw)

    async def read() -> Any:
        reader = asyncio.StreamReader()
        receiver = FrameReceiver(reader)
        receiver.started = True
        reader.feed_data(raw[:cut])
        pending = asyncio.ensure_future(frames.get_frame(receiver))
        await asyncio.sleep(0)
        assert not pending.done()
        reader.feed_data(raw[cut:])
        return await pending

    got = asyncio.run(read())
    _, channel, expected = pamqp_frame.unmarshal(raw)
    assert got[1] == channel and _values(got[2]) == _values(expected)
