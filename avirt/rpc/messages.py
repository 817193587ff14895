"""The served protocol's messages: msgpack-RPC, framed by msgpack itself.

Every message is one msgpack array, in the shapes of the msgpack-RPC specification::

    [0, id, method, params]      a request; ``id`` is the sender's, unique among its requests in flight
    [1, id, error, result]       the response to request ``id``: ``error`` is nil on success
    [2, method, params]          a notification: no response

msgpack is self-delimiting, so a byte stream needs no framing of its own: :class:`Decoder` feeds what
arrives to msgpack's streaming unpacker and takes whole messages out. Its buffer has a hard limit
(:data:`MAX_MESSAGE`): a peer that sends a larger message, or anything that is not one of the three
shapes, is a :class:`ProtocolError`, and the connection that carried it is closed. Nothing in a message
is ever executed or turned into an arbitrary object: decoding yields plain lists, dicts, strings,
numbers and bytes (msgpack extension types are refused).

On top of the specification, avirt's protocol uses three notifications of its own (see docs/protocol.md):
``$cancel [id]`` (the caller gave up on request ``id``: the callee cancels it), ``$item [id, item]``
(one item of a streaming request's answer, before its response) and ``$lost [id, count]`` (items the
callee dropped for a consumer that fell behind).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgpack

from avirt.errors import AvirtError

__all__ = ["MAX_MESSAGE", "Decoder", "Message", "Notification", "ProtocolError", "Request", "Response",
           "encode"]

#: The largest message either side accepts (bytes). A domain definition is a few KiB; a list of a thousand
#: domains' infos a few hundred.
MAX_MESSAGE = 16 << 20

REQUEST, RESPONSE, NOTIFICATION = 0, 1, 2


class ProtocolError(AvirtError):
    """A peer broke the protocol (malformed, oversized or unexpected message): its connection ends."""


@dataclass(frozen=True)
class Request:
    id: int
    method: str
    params: list[Any]


@dataclass(frozen=True)
class Response:
    id: int
    error: Any
    result: Any


@dataclass(frozen=True)
class Notification:
    method: str
    params: list[Any]


Message = Request | Response | Notification


def encode(message: Message) -> bytes:
    if isinstance(message, Request):
        body: list[Any] = [REQUEST, message.id, message.method, message.params]
    elif isinstance(message, Response):
        body = [RESPONSE, message.id, message.error, message.result]
    else:
        body = [NOTIFICATION, message.method, message.params]
    packed: bytes = msgpack.packb(body, use_bin_type=True)
    return packed


class Decoder:
    """Bytes in, whole messages out, for one connection."""

    def __init__(self, max_message: int = MAX_MESSAGE) -> None:
        # raw=False: strings are str. strict_map_key: map keys are strings or numbers, as JSON's would be.
        self._unpacker = msgpack.Unpacker(max_buffer_size=max_message, raw=False, strict_map_key=True,
                                          use_list=True)

    def feed(self, data: bytes) -> list[Message]:
        try:
            self._unpacker.feed(data)
        except msgpack.BufferFull:
            raise ProtocolError("message larger than the limit") from None
        messages = []
        try:
            for obj in self._unpacker:
                messages.append(_message(obj))
        except (ValueError, msgpack.UnpackException) as e:  # FormatError, StackError, bad UTF-8...
            raise ProtocolError(f"undecodable message: {e}") from None
        return messages


def _message(obj: object) -> Message:
    if not isinstance(obj, list) or not obj:
        raise ProtocolError("a message is a msgpack array")
    kind = obj[0]
    if (kind == REQUEST and len(obj) == 4 and _id(obj[1]) and isinstance(obj[2], str)
            and isinstance(obj[3], list)):
        return Request(obj[1], obj[2], obj[3])
    if kind == RESPONSE and len(obj) == 4 and _id(obj[1]):
        return Response(obj[1], obj[2], obj[3])
    if kind == NOTIFICATION and len(obj) == 3 and isinstance(obj[1], str) and isinstance(obj[2], list):
        return Notification(obj[1], obj[2])
    raise ProtocolError(f"not a msgpack-RPC message: {str(obj)[:80]}")


def _id(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**32
