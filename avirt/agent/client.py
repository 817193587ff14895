"""One guest's agent session: where bytes leave for qemu-ga inside the guest.

The QEMU guest agent speaks QMP's JSON (``{"execute": ..., "arguments": ...}`` in, one
``{"return": ...}`` or ``{"error": ...}`` line out) over a virtio-serial port. QEMU joins that port to
a unix socket in the run directory (``cmdline/chardevs.py``); :class:`AgentClient` is the socket's
client. The protocol differs from the monitor's in ways that shape this module:

* **No ids, no multiplexing.** Replies carry nothing that says which request they answer, so there is
  one command in flight at a time (a lock), and a reply that arrives after its caller gave up (a
  timeout, a cancellation) would be taken for the next command's. Hence:
* **guest-sync-delimited before use.** On a new connection and after any exchange that did not finish,
  the client sends a 0xFF byte (which resets the agent's JSON parser: it answers with a parse error that
  is thrown away) and ``guest-sync-delimited`` with a random id. The agent answers it with a 0xFF byte
  before the JSON; everything before that byte, and every sync answer with another id, is stale and
  dropped. The session is usable once the answer with this id arrives.
* **Nobody may be listening.** QEMU accepts the connection whether or not qemu-ga runs in the guest
  (the guest may be booting, rebooting, or have no agent): bytes sent then wait in QEMU. On the socket
  alone, "the agent is not there" shows only as a sync that does not answer, which becomes
  :class:`~avirt.errors.AgentTimeoutError` after its timeout, and the next call syncs again. The driver
  knows more from QMP (whether the guest has the port open: ``drivers/qemu/agentcalls.py`` refuses at
  once when it does not), and calls :meth:`AgentClient.reset` when the guest resets or its agent closes
  or opens the port, so the next call syncs instead of trusting a session with a different agent.
* **QEMU closes the socket only when it ends.** A closed socket is reconnected at the next call; if
  that fails the agent is unavailable (:class:`~avirt.errors.AgentUnavailableError`).

Every call takes a timeout; nothing here waits without one. ``guest-shutdown`` sends no answer when it
succeeds (the guest goes down): :meth:`AgentClient.execute_no_reply` waits for an error until
``timeout`` or until the caller's ``done`` event (the driver sets it when QEMU reports the guest's
shutdown or reset), whichever comes first.
"""

from __future__ import annotations

import json
import logging
import secrets
import socket
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import anyio
from anyio.abc import SocketStream

from avirt.errors import AgentCommandError, AgentTimeoutError, AgentUnavailableError

log = logging.getLogger(__name__)

#: Seconds a sync may take at most, whatever the call's own timeout (the agent answers it at once).
SYNC_TIMEOUT = 5.0
#: The longest reply accepted (guest-exec-status carries base64 output: qemu-ga caps it at 16 MiB).
MAX_REPLY = 32 << 20

SENTINEL = b"\xff"

#: Opens a new connected socket to the agent's channel (``Host.connect_unix`` of its path).
Connector = Callable[[], Awaitable[socket.socket]]


class AgentClient:
    """A session with one guest's qemu-ga. See the module docstring."""

    def __init__(self, name: str, connect: Connector) -> None:
        self.name = name
        self._connect = connect
        self._stream: SocketStream | None = None
        self._buffer = bytearray()
        self._synced = False
        self._lock = anyio.Lock(fast_acquire=True)

    def reset(self) -> None:
        """The agent at the other end may have changed (the guest reset, qemu-ga closed or opened its
        port): sync again before the next command."""
        self._synced = False

    async def execute(self, command: str, arguments: Mapping[str, Any] | None = None, *,
                      timeout: float) -> Any:
        """Run one agent command and return its ``return`` value.

        :class:`AgentTimeoutError` if the agent does not answer the sync or the command within
        ``timeout`` seconds (in all), :class:`AgentCommandError` for an error answer,
        :class:`AgentUnavailableError` if the channel's socket cannot be connected.
        """
        async with self._lock:
            with anyio.move_on_after(timeout) as scope:
                await self._ready(min(timeout, SYNC_TIMEOUT) if not self._synced else timeout)
                self._synced = False  # until the answer is read: a cut-short exchange leaves it stale
                await self._send(_request(command, arguments))
                reply = await self._read_reply()
                self._synced = True
                return _result(command, reply)
            assert scope.cancelled_caught
            raise AgentTimeoutError(f"domain '{self.name}': the guest agent did not answer {command} "
                                    f"within {timeout:g} s") from None

    async def execute_no_reply(self, command: str, arguments: Mapping[str, Any] | None = None, *,
                               timeout: float, done: anyio.Event | None = None) -> None:
        """Send a command that answers only when it fails (``guest-shutdown``): returns once ``done`` is
        set, the agent goes away, or ``timeout`` passes without an error answer."""
        async with self._lock:
            with anyio.move_on_after(timeout) as scope:
                await self._ready(min(timeout, SYNC_TIMEOUT))
            if scope.cancelled_caught:
                raise AgentTimeoutError(f"domain '{self.name}': the guest agent did not answer the sync "
                                        f"before {command} within {timeout:g} s")
            self._synced = False  # whatever comes back later is for nobody
            await self._send(_request(command, arguments))
            reply: dict[str, Any] | None = None
            with anyio.move_on_after(timeout):
                async with anyio.create_task_group() as group:
                    async def answer() -> None:
                        nonlocal reply
                        try:
                            reply = await self._read_reply()
                        except AgentUnavailableError:
                            pass
                        group.cancel_scope.cancel()

                    group.start_soon(answer)
                    if done is not None:
                        await done.wait()
                        group.cancel_scope.cancel()
            if reply is not None and "error" in reply:
                _result(command, reply)  # raises

    async def aclose(self) -> None:
        """Close the connection (QEMU keeps the channel; a later call reconnects)."""
        stream, self._stream = self._stream, None
        self._synced = False
        self._buffer.clear()
        if stream is not None:
            with anyio.CancelScope(shield=True):
                await stream.aclose()

    # -- the exchange ---------------------------------------------------------------------------------

    async def _ready(self, sync_timeout: float) -> None:
        """Connected and in step with the agent (guest-sync-delimited, unless already in step)."""
        if self._stream is None:
            try:
                sock = await self._connect()
            except OSError as e:
                raise AgentUnavailableError(f"domain '{self.name}': cannot connect to the guest agent's "
                                            f"channel: {e.strerror or e}") from None
            self._stream = await SocketStream.from_socket(sock)
            self._buffer.clear()
            self._synced = False
        if self._synced:
            return
        token = secrets.randbits(31)
        with anyio.move_on_after(sync_timeout) as scope:
            await self._send(SENTINEL + _request("guest-sync-delimited", {"id": token}))
            while True:
                await self._skip_to_sentinel()
                reply = await self._read_reply()
                if reply.get("return") == token:
                    break
                log.debug("domain %s: dropped a stale agent answer %r", self.name, reply)
        if scope.cancelled_caught:
            raise AgentTimeoutError(f"domain '{self.name}': the guest agent did not answer within "
                                    f"{sync_timeout:g} s (is qemu-ga running in the guest?)")
        self._synced = True

    async def _send(self, data: bytes) -> None:
        assert self._stream is not None
        try:
            await self._stream.send(data)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError) as e:
            await self.aclose()
            raise AgentUnavailableError(f"domain '{self.name}': the guest agent's channel closed: {e}") \
                from None

    async def _fill(self) -> None:
        assert self._stream is not None
        try:
            chunk = await self._stream.receive()
        except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
            await self.aclose()
            raise AgentUnavailableError(f"domain '{self.name}': the guest agent's channel closed "
                                        "(QEMU ended?)") from None
        self._buffer += chunk
        if len(self._buffer) > MAX_REPLY:
            await self.aclose()
            raise AgentUnavailableError(f"domain '{self.name}': the guest agent sent an answer over "
                                        f"{MAX_REPLY >> 20} MiB; the connection was dropped")

    async def _skip_to_sentinel(self) -> None:
        while (at := self._buffer.find(SENTINEL)) < 0:
            self._buffer.clear()
            await self._fill()
        del self._buffer[:at + 1]

    async def _read_reply(self) -> dict[str, Any]:
        """The next JSON object line (a stray sentinel byte before it is skipped)."""
        while True:
            while (end := self._buffer.find(b"\n")) < 0:
                await self._fill()
            line = bytes(self._buffer[:end]).strip(SENTINEL + b" \r\t")
            del self._buffer[:end + 1]
            if not line:
                continue
            try:
                reply = json.loads(line)
            except ValueError:
                log.debug("domain %s: dropped a line that is not JSON from the agent: %r", self.name,
                          line[:200])
                continue
            if isinstance(reply, dict):
                return reply


def _request(command: str, arguments: Mapping[str, Any] | None) -> bytes:
    message: dict[str, Any] = {"execute": command}
    if arguments:
        message["arguments"] = dict(arguments)
    return json.dumps(message).encode() + b"\n"


def _result(command: str, reply: dict[str, Any]) -> Any:
    error = reply.get("error")
    if isinstance(error, dict):
        raise AgentCommandError(command, str(error.get("class", "GenericError")), str(error.get("desc", "")))
    return reply.get("return")
