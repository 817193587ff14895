"""One guest's QMP session: where bytes leave for QEMU.

A :class:`Monitor` wraps a ``qemu.qmp`` :class:`QMPClient` and adds what a controller of many guests needs
and the bare client lacks:

* **timeouts** on connect and on every command (the client has none);
* **typed errors**: a QMP error reply becomes :class:`avirt.errors.QMPError` with QEMU's error class, and a
  monitor that went away becomes :class:`MonitorClosedError` (a ``QMPError`` of class ``MonitorClosed``);
* **events without memory growth**: the client's listeners queue every event and keep a history that is
  never trimmed. The monitor hands each event straight to one ``on_event`` callback instead, so memory does
  not grow with the number of events that have passed;
* **one end**: :meth:`closed` returns once the session is over, for whatever reason (QEMU quit, crashed,
  or :meth:`aclose`), so the owner learns of it without polling.

Usage::

    monitor = Monitor("web1", on_event=print)
    await monitor.connect("/run/avirt/web1/qmp.sock")
    status = await monitor.execute("query-status")
    await monitor.aclose()

The monitor never decides policy: it does not know what a STOP means. The driver does.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable, Mapping
from typing import Any

import anyio
import anyio.lowlevel
from qemu.qmp import ConnectError, ExecInterruptedError, ExecuteError, QMPClient, Runstate, StateError
from qemu.qmp.qmp_client import GreetingError

from avirt.errors import QMPError

log = logging.getLogger(__name__)

#: The callback that receives every QMP event as QEMU sent it:
#: ``{"event": "STOP", "data": {...}, "timestamp": {"seconds": ..., "microseconds": ...}}``.
EventSink = Callable[[dict[str, Any]], None]

CONNECT_TIMEOUT = 10.0
COMMAND_TIMEOUT = 30.0


class MonitorClosedError(QMPError):
    """The monitor connection is gone (QEMU exited, or the session was closed)."""

    def __init__(self, desc: str = "the QEMU monitor connection is closed") -> None:
        super().__init__("MonitorClosed", desc)


class NotAGreetingError(MonitorClosedError):
    """A new connection's first message was not QEMU's greeting.

    Seen once on re-attaching to a QEMU whose previous controller was killed mid-command, most likely
    a message QEMU still held for that client. A second connection is worth one try before the QEMU
    is called mute.
    """


class _DebugOnly(logging.LoggerAdapter):  # type: ignore[type-arg]
    """qemu.qmp logs connection failures at ERROR level; avirt raises a typed error for each of them, so
    the library's own report would only be a second, untyped copy on the user's stderr."""

    def log(self, level: int, msg: object, *args: Any, **kwargs: Any) -> None:
        super().log(logging.DEBUG, msg, *args, **kwargs)


class _Client(QMPClient):
    """A QMPClient whose events go to one callback, bypassing the (unbounded) listener queues."""

    def __init__(self, sink: EventSink) -> None:
        # No name: qemu.qmp makes a logger per client name and never frees it (a leak per guest ever seen).
        super().__init__()
        self.logger = _DebugOnly(logging.getLogger("avirt.qmp.wire"), {})  # type: ignore[assignment]
        self._sink = sink
        self._since_yield = 0

    # qemu.qmp formats every message for its debug log (str(msg) is an indented json.dumps) even when
    # debug logging is off: about 200 short-lived objects per command, which multiplied the garbage
    # collector's work and its pauses. Format only when someone listens.
    def _cb_outbound(self, msg: Any) -> Any:
        if self.logger.isEnabledFor(logging.DEBUG):
            self.logger.debug("--> %s", str(msg))
        return msg

    def _cb_inbound(self, msg: Any) -> Any:
        if self.logger.isEnabledFor(logging.DEBUG):
            self.logger.debug("<-- %s", str(msg))
        return msg

    async def _event_dispatch(self, msg: Any) -> None:
        try:
            self._sink(dict(msg))
        except Exception:  # a faulty sink must not tear down the session
            log.exception("event handler failed for %s", msg.get("event"))
        # qemu.qmp's reader handles all it has buffered (thousands of events per read) without a pause;
        # let the subscribers run now and then, or their queues overflow while they are idle.
        self._since_yield += 1
        if self._since_yield >= 64:
            self._since_yield = 0
            await anyio.lowlevel.checkpoint()


class Monitor:
    """A QMP session with one QEMU. See the module docstring."""

    def __init__(self, name: str, on_event: EventSink | None = None, *,
                 why_closed: Callable[[], Exception | None] = lambda: None) -> None:
        self.name = name
        # Asked when the session breaks under a command: a lost host connection has an error of its own
        # (HostError) that tells the caller more than "the monitor is closed".
        self._why_closed = why_closed
        self._client = _Client(on_event or (lambda _msg: None))
        self._closed = anyio.Event()
        self.greeting: Mapping[str, Any] = {}

    @property
    def connected(self) -> bool:
        return bool(self._client.runstate == Runstate.RUNNING)

    async def connect(self, address: str | socket.socket, *, timeout: float = CONNECT_TIMEOUT) -> None:
        """Connect to QEMU's monitor, read the greeting and negotiate capabilities.

        ``address`` is the socket's path, or a socket already connected to it (which the monitor then
        owns): that is how a monitor reaches a QEMU on a remote host.
        """
        where = address if isinstance(address, str) else "the monitor socket"
        try:
            with anyio.fail_after(timeout):
                await self._client.connect(address)
        except TimeoutError:
            await self._force_idle()
            raise MonitorClosedError(f"no QMP greeting from {where} within {timeout:g} s") from None
        except ConnectError as e:
            cause = e.exc
            if isinstance(cause, GreetingError):
                raise NotAGreetingError(f"cannot connect to {where}: {cause}") from e
            why = "QEMU closed the connection" if isinstance(cause, EOFError) else str(cause) or repr(cause)
            raise MonitorClosedError(f"cannot connect to {where}: {why}") from e
        greeting = self._client.greeting
        self.greeting = greeting._asdict() if greeting else {}
        self._closed = anyio.Event()

    async def execute(self, command: str, arguments: Mapping[str, object] | None = None, *,
                      timeout: float = COMMAND_TIMEOUT) -> Any:
        """Run one QMP command and return its ``return`` value.

        Raises :class:`QMPError` for an error reply, :class:`MonitorClosedError` if the monitor is gone or
        goes away meanwhile, and :class:`QMPError` of class ``Timeout`` when QEMU does not answer within
        ``timeout`` seconds (the command may still run in QEMU; its late answer is dropped).
        """
        try:
            with anyio.fail_after(timeout):
                return await self._client.execute(command, dict(arguments) if arguments else None)
        except ExecuteError as e:
            raise QMPError(e.error_class, str(e)) from None
        except (ExecInterruptedError, StateError) as e:
            raise self._why_closed() or MonitorClosedError() from e
        except TimeoutError:
            raise QMPError("Timeout", f"{command} did not answer within {timeout:g} s") from None

    async def send_fd(self, fd: int, name: str, *, timeout: float = COMMAND_TIMEOUT) -> None:
        """Give QEMU a copy of the open descriptor ``fd`` under ``name`` (QMP ``getfd``), for a later
        command to take by that name (``netdev_add``'s ``fd``). The descriptor travels as SCM_RIGHTS with
        one byte of whitespace on the monitor socket, which QEMU keeps for the next command that asks;
        the caller still owns (and closes) its own copy."""
        try:
            self._client.send_fd_scm(fd)
        except StateError as e:
            raise self._why_closed() or MonitorClosedError() from e
        except OSError as e:
            raise QMPError("GenericError", f"cannot pass a descriptor to QEMU: {e.strerror}") from e
        await self.execute("getfd", {"fdname": name}, timeout=timeout)

    async def closed(self) -> None:
        """Return once the session has ended (EOF from QEMU, a broken connection, or :meth:`aclose`)."""
        while self._client.runstate == Runstate.RUNNING:
            await self._client.runstate_changed()
        await self._force_idle()

    async def aclose(self) -> None:
        """Close the session (QEMU keeps running). Safe to call more than once."""
        await self._force_idle()

    async def _force_idle(self) -> None:
        # Shielded: a disconnect cut short leaves qemu.qmp's reader and writer tasks with unretrieved
        # exceptions ("_GatheringFuture exception was never retrieved").
        with anyio.CancelScope(shield=True):
            if self._client.runstate != Runstate.IDLE:
                try:
                    await self._client.disconnect()
                except Exception as e:  # the cause of the end (EOFError, ConnectionResetError) is expected
                    log.debug("monitor %s ended: %r", self.name, e)
        self._closed.set()
