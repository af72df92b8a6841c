"""AMQP frames read on the hot path: every job is a Basic.Deliver, a content header and a body
frame, and every status event's confirm a Basic.Ack, each read by aiormq's ``FrameReceiver``
and decoded by pamqp.

Both are written for every frame and every field: ``FrameReceiver.get_frame`` awaits
``readexactly`` three times and takes a lock for each frame; pamqp decodes a method field by
field through a table of types, and creates the frame with its constructor's checks first
(about 5 µs for a Basic.Deliver, 7 µs for a content header, where a ``struct`` read takes
well under 1). This module reads a frame that is already whole in the connection's buffer
without awaiting anything, and decodes the four per-job kinds with ``struct``:

* Basic.Deliver and Basic.Ack: their fields, set on pamqp's own classes;
* a content body frame: its bytes;
* a content header: its properties read in pamqp's order by precomputed decoders, each
  field with pamqp's own decoder for its type (the headers table too).

Every other frame, and any frame these fast paths cannot read to its last byte exactly, goes
to pamqp as before; so does a frame not whole in the buffer yet (aiormq's own code waits for
it). The frames are the same objects with the same values as pamqp's (a hypothesis test
compares them over random frames and random splits of the byte stream).

:func:`install` puts :func:`get_frame` in place of ``aiormq.connection.FrameReceiver.get_frame``
for every connection of the process (aio-pika's connections are aiormq's); the worker calls
it at start. aiormq's ``get_frame`` stays what a frame not yet whole goes through.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any

from aiormq.connection import FrameReceiver
from aiormq.exceptions import InvalidFrameError
from pamqp import body as pamqp_body
from pamqp import commands, constants, decode
from pamqp import frame as pamqp_frame
from pamqp import header as pamqp_header
from pamqp.common import Struct
from pamqp.exceptions import PAMQPException

_FRAME_HEADER = struct.Struct(">BHI")  # type, channel, size (pamqp.frame.frame_parts)
_CONTENT_HEADER = struct.Struct(">HHQH")  # class, weight, body size, property flags
_LONG_LONG = Struct.long_long_int  # pamqp's 'longlong' (signed)
_METHOD, _HEADER, _BODY = constants.FRAME_METHOD, constants.FRAME_HEADER, constants.FRAME_BODY
Deliver = commands.Basic.Deliver
Ack = commands.Basic.Ack
Properties = commands.Basic.Properties


def _short_str(data: bytes, at: int) -> tuple[str, int]:
    end = at + 1 + data[at]
    if end > len(data):
        raise ValueError("short string past the end of the frame")
    return data[at + 1:end].decode("utf-8"), end


def _deliver(data: bytes, end: int) -> Deliver:
    """Basic.Deliver from the method's arguments at ``data[11:end]``."""
    consumer_tag, at = _short_str(data, 11)
    (delivery_tag,) = _LONG_LONG.unpack_from(data, at)
    redelivered = bool(data[at + 8] & 1)
    exchange, at = _short_str(data, at + 9)
    routing_key, at = _short_str(data, at)
    if at != end:
        raise ValueError("Basic.Deliver is not the length of its frame")
    frame = Deliver.__new__(Deliver)
    frame.consumer_tag = consumer_tag
    frame.delivery_tag = delivery_tag
    frame.redelivered = redelivered
    frame.exchange = exchange
    frame.routing_key = routing_key
    return frame


def _ack(data: bytes, end: int) -> Ack:
    if end != 11 + 9:
        raise ValueError("Basic.Ack is not the length of its frame")
    frame = Ack.__new__(Ack)
    (frame.delivery_tag,) = _LONG_LONG.unpack_from(data, 11)
    frame.multiple = bool(data[19] & 1)
    return frame


_METHODS: dict[int, Callable[[bytes, int], Any]] = {Deliver.index: _deliver, Ack.index: _ack}

#: field-table value types read here, as pamqp's decoders read them (pamqp.decode
#: TABLE_MAPPING): fixed-size integers and booleans by struct, long strings, void; the others
#: (floats, decimals, arrays, nested tables, timestamps, byte arrays) by pamqp's own
_FIXED: dict[int, tuple[struct.Struct, bool]] = {
    ord("t"): (Struct.byte, True), ord("b"): (Struct.short_short_int, False),
    ord("B"): (Struct.short_short_uint, False), ord("s"): (Struct.short, False),
    ord("u"): (Struct.ushort, False), ord("I"): (Struct.long, False),
    ord("i"): (Struct.ulong, False), ord("l"): (Struct.long_long_int, False),
    ord("L"): (Struct.long_long_int, False)}
_LONG_STR = Struct.integer  # a long string's (and a table's) length


def _field_table(data: bytes) -> tuple[int, dict[str, Any]]:
    """``pamqp.decode.field_table(data)`` for a table that ends exactly where its length
    says (else ValueError: pamqp reads the frame)."""
    (length,) = _LONG_STR.unpack_from(data)
    at, end = 4, 4 + length
    if end > len(data):
        raise ValueError("field table past the end of the frame")
    table: dict[str, Any] = {}
    while at < end:
        key_end = at + 1 + data[at]
        if key_end >= end:
            raise ValueError("field table key past the table's end")
        key = data[at + 1:key_end].decode("utf-8")
        kind = data[key_end]
        at = key_end + 1
        fixed = _FIXED.get(kind)
        if fixed is not None:
            (value,) = fixed[0].unpack_from(data, at)
            at += fixed[0].size
            table[key] = bool(value) if fixed[1] else value
        elif kind == 0x53:  # S: a long string, text when it is UTF-8
            (size,) = _LONG_STR.unpack_from(data, at)
            raw = data[at + 4:at + 4 + size]
            if len(raw) != size:
                raise ValueError("long string past the end of the frame")
            try:
                table[key] = raw.decode("utf-8")
            except UnicodeDecodeError:
                table[key] = raw
            at += 4 + size
        elif kind == 0x56:  # V: void
            table[key] = None
        else:
            used, table[key] = decode.TABLE_MAPPING[bytes((kind,))](data[at:])
            at += used
    if at != end:
        raise ValueError("field table is not the length it says")
    return end, table


#: (property, its flag, its decoder: pamqp's for its type, the headers table's here) in the
#: order they are written
_PROPERTIES = [(name, Properties.flags[name],
                _field_table if getattr(Properties, "_" + name) == "table"
                else decode.METHODS[getattr(Properties, "_" + name)])
               for name in Properties.__slots__]
#: ... with what it is when not in the frame (None, but ``cluster_id`` is "")
_READ = [(name, flag, decoder, getattr(Properties(), name)) for name, flag, decoder in _PROPERTIES]


def _content_header(data: bytes, end: int) -> pamqp_header.ContentHeader:
    """A content header (class, weight, body size, one word of property flags), its
    properties decoded in order."""
    class_id, weight, body_size, flags = _CONTENT_HEADER.unpack_from(data, 7)
    if flags & 1:  # a second word of flags: none are defined, so pamqp's reading stands
        raise ValueError("property flags continue")
    properties = Properties.__new__(Properties)
    rest = data[21:end]
    for name, flag, decoder, absent in _READ:
        if flags & flag:
            used, value = decoder(rest)
            setattr(properties, name, value)
            rest = rest[used:]
        else:
            setattr(properties, name, absent)
    if rest:
        raise ValueError("content header is not the length of its frame")
    frame = pamqp_header.ContentHeader.__new__(pamqp_header.ContentHeader)
    frame.class_id, frame.weight, frame.body_size = class_id, weight, body_size
    frame.properties = properties
    return frame


def unmarshal(data: bytes) -> tuple[int, int, Any]:
    """``pamqp.frame.unmarshal(data)``: (bytes used, channel, frame), the per-job kinds read
    here, every other one (and whatever these cannot read exactly) by pamqp."""
    if len(data) >= 8 and data[:4] != b"AMQP":
        kind, channel, size = _FRAME_HEADER.unpack_from(data)
        end = 7 + size
        if size and len(data) > end and data[end] == constants.FRAME_END:
            try:
                if kind == _BODY:
                    return end + 1, channel, pamqp_body.ContentBody(data[7:end])
                if kind == _METHOD and size >= 4:
                    method = _METHODS.get(_LONG_STR.unpack_from(data, 7)[0])
                    if method is not None:
                        return end + 1, channel, method(data, end)
                elif kind == _HEADER and size >= 14:
                    return end + 1, channel, _content_header(data, end)
            except (ValueError, IndexError, KeyError, struct.error):
                pass  # pamqp reads it, or says what is wrong with it
    return pamqp_frame.unmarshal(data)


_AIORMQ_GET_FRAME = FrameReceiver.get_frame


async def get_frame(self: FrameReceiver) -> Any:
    """``FrameReceiver.get_frame``: a frame already whole in the reader's buffer is taken
    from it at once; anything else (a frame still arriving, the end of the stream, an error
    the reader holds, the protocol header) goes through aiormq's own reading."""
    reader = self.reader
    buffer: bytearray | None = getattr(reader, "_buffer", None)
    if (self.started and buffer is not None and len(buffer) >= 8
            and getattr(reader, "_exception", None) is None and not self.lock.locked()):
        size = int.from_bytes(buffer[3:7], "big")
        whole = 8 + size
        if len(buffer) >= whole and buffer[0] != 0:
            data = bytes(buffer[:whole])
            del buffer[:whole]
            reader._maybe_resume_transport()  # type: ignore[attr-defined]
            try:
                return unmarshal(data)
            except PAMQPException as exc:  # as aiormq says it
                raise InvalidFrameError(str(exc)) from exc
    return await _AIORMQ_GET_FRAME(self)


def install() -> None:
    """Read frames with :func:`get_frame` in every aiormq connection of this process from now
    on (idempotent)."""
    FrameReceiver.get_frame = get_frame  # type: ignore[method-assign]
