"""The served protocol's connection layer (avirt/rpc/) over real unix sockets.

Two :class:`Peer`\\ s talk over a socket pair, as a controller and its client will: concurrent calls
answered out of order, errors that keep their class, cancellation that reaches the handler, streams
with bounded buffers, and a peer that breaks the protocol losing its own connection only.
"""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import msgpack
import pytest
from anyio.abc import UNIXSocketStream

from avirt.errors import AvirtError, InvalidArgumentError, SharedImageError
from avirt.rpc import Batch, Lost, Peer, PeerClosedError

pytestmark = pytest.mark.anyio


class Server:
    """A handler whose calls let a test see, and steer, what happens on the serving side."""

    def __init__(self) -> None:
        self.gates: dict[str, anyio.Event] = {}
        self.started: dict[str, anyio.Event] = {}
        self.cancelled: dict[str, anyio.Event] = {}

    def gate(self, key: str) -> anyio.Event:
        return self.gates.setdefault(key, anyio.Event())

    def mark(self, table: dict[str, anyio.Event], key: str) -> anyio.Event:
        return table.setdefault(key, anyio.Event())

    def __call__(self, method: str, params: list[Any]) -> Any:
        if method == "count":
            return self.count(*params)
        if method == "batches":
            return self.batches(*params)
        return getattr(self, method)(*params)

    async def echo(self, *values: Any) -> list[Any]:
        return list(values)

    async def wait(self, key: str) -> str:
        self.mark(self.started, key).set()
        try:
            await self.gate(key).wait()
        except anyio.get_cancelled_exc_class():
            self.mark(self.cancelled, key).set()
            raise
        return f"{key} released"

    async def release(self, key: str) -> None:
        self.gate(key).set()

    async def shared(self) -> None:
        raise SharedImageError("/img/base.qcow2", ["web1", "web2"])

    async def broken(self) -> None:
        raise KeyError("an internal slip")

    async def huge(self) -> int:
        return 2**70

    async def count(self, n: int, key: str) -> AsyncIterator[Any]:
        try:
            for i in range(n):
                yield i
            self.mark(self.started, key).set()  # every item has been written to the socket
            await self.gate(key).wait()
        except anyio.get_cancelled_exc_class():
            self.mark(self.cancelled, key).set()
            raise


    async def batches(self, *batches: list[Any]) -> AsyncIterator[Any]:
        for items in batches:
            yield Batch([Lost(item["lost"]) if isinstance(item, dict) else item for item in items])


@asynccontextmanager
async def connected(server: Server, *, max_items: int = 1000,
                    max_message: int = 1 << 20) -> AsyncIterator[tuple[Peer, Peer]]:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    client_stream = await UNIXSocketStream.from_socket(a)
    server_stream = await UNIXSocketStream.from_socket(b)
    async with Peer(server_stream, server, name="server", max_message=max_message) as served, \
            Peer(client_stream, name="client", max_items=max_items) as client:
        yield client, served


async def test_calls_in_flight_together_are_answered_in_any_order() -> None:
    server = Server()
    async with connected(server) as (client, _):
        results: list[str] = []

        async def first() -> None:
            results.append(await client.call("wait", "a"))

        async with anyio.create_task_group() as group:
            group.start_soon(first)
            await server.mark(server.started, "a").wait()
            assert await client.call("echo", 1, "two", {"three": [3]}) == [1, "two", {"three": [3]}]
            await client.call("release", "a")
        assert results == ["a released"]


async def test_an_avirt_error_comes_back_as_its_own_class_with_its_details() -> None:
    async with connected(Server()) as (client, _):
        with pytest.raises(SharedImageError) as caught:
            await client.call("shared")
        assert caught.value.path == "/img/base.qcow2"
        assert caught.value.domains == ["web1", "web2"]
        assert "web1" in str(caught.value)
        with pytest.raises(AvirtError, match="broken failed in the controller") as other:
            await client.call("broken")
        assert type(other.value) is AvirtError  # never an arbitrary class from the wire
        with pytest.raises(AvirtError, match="no_such_method"):
            await client.call("no_such_method")


async def test_a_cancelled_call_cancels_its_handler_and_the_connection_goes_on() -> None:
    server = Server()
    async with connected(server) as (client, _):
        async with anyio.create_task_group() as group:
            group.start_soon(client.call, "wait", "b")
            await server.mark(server.started, "b").wait()
            group.cancel_scope.cancel()
        with anyio.fail_after(10):
            await server.mark(server.cancelled, "b").wait()
        assert await client.call("echo", "still here") == ["still here"]


async def test_a_stream_delivers_its_items_in_order_and_ends_with_its_response() -> None:
    server = Server()
    async with connected(server) as (client, _):
        await client.call("release", "s")
        async with client.stream("count", 5, "s") as items:
            assert [item async for item in items] == [0, 1, 2, 3, 4]


async def test_a_batch_arrives_as_its_items_in_order_lost_markers_included() -> None:
    async with connected(Server()) as (client, _):
        async with client.stream("batches", [{"lost": 2}, 0, 1], [], [2, 3]) as items:
            assert [item async for item in items] == [Lost(2), 0, 1, 2, 3]
        seen: list[Any] = []  # handed on as they arrive: a Lost marker in its place
        async with client.stream("batches", [4, {"lost": 1}, 5], [6], on_item=seen.append) as items:
            assert [item async for item in items] == []
        assert seen == [4, Lost(1), 5, 6]


async def test_a_consumer_that_falls_behind_gets_the_newest_items_and_a_count_of_the_rest() -> None:
    server = Server()
    async with connected(server, max_items=10) as (client, _):
        async with client.stream("count", 50, "slow") as items:
            await server.mark(server.started, "slow").wait()
            # Every item was written before this call's answer, so all 50 have reached the client now.
            await client.call("release", "slow")
            received = [item async for item in items]
        assert received == [Lost(40), *range(40, 50)]


async def test_leaving_a_stream_early_cancels_it_on_the_serving_side() -> None:
    server = Server()
    async with connected(server) as (client, _):
        async with client.stream("count", 3, "early") as items:
            assert await items.__anext__() == 0
        with anyio.fail_after(10):
            await server.mark(server.cancelled, "early").wait()
        assert await client.call("echo", 1) == [1]


async def test_a_closed_connection_fails_the_calls_waiting_on_it() -> None:
    server = Server()
    async with connected(server) as (client, served):
        async with anyio.create_task_group() as group:
            failures: list[BaseException] = []

            async def waiting() -> None:
                try:
                    await client.call("wait", "never")
                except PeerClosedError as e:
                    failures.append(e)

            group.start_soon(waiting)
            await server.mark(server.started, "never").wait()
            await served._stream.aclose()  # the controller's end goes away
        assert len(failures) == 1
        with pytest.raises(PeerClosedError):
            await client.call("echo", 1)


@pytest.mark.parametrize(("data", "why"), [
    (b"\xc1" * 8, "undecodable"),  # 0xc1 is never used in msgpack
    (msgpack.packb({"not": "an array"}), "msgpack array"),
    (msgpack.packb([0, -1, "echo", []]), "not a msgpack-RPC message"),
    (msgpack.packb([1, 77, None, "answer"]), "not in flight"),
    (msgpack.packb([2, "$cancel", ["x"]]), "needs a request id"),
    (msgpack.packb([0, 1, "echo", ["x" * 4096]]), "larger than the limit"),
])
async def test_a_peer_that_breaks_the_protocol_loses_its_own_connection_only(data: bytes, why: str) -> None:
    server = Server()
    async with connected(server, max_message=1024) as (client, _):
        a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        async with Peer(await UNIXSocketStream.from_socket(b), server, name="victim",
                        max_message=1024) as victim:
            a.sendall(data)
            with anyio.fail_after(10):
                await victim.wait_closed()
            assert victim.closed_because is not None and why in victim.closed_because
            a.close()
        assert await client.call("echo", "unaffected") == ["unaffected"]


async def test_what_the_wire_cannot_carry_is_an_argument_error_and_the_connection_goes_on() -> None:
    async with connected(Server()) as (client, _):
        with pytest.raises(InvalidArgumentError, match="echo's arguments"):
            await client.call("echo", "bad \udcff bytes")
        with pytest.raises(InvalidArgumentError, match="the answer to request"):
            await client.call("huge")
        assert await client.call("echo", "fine") == ["fine"]
