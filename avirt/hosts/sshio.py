"""The byte plumbing between asyncssh channels and what the layers above expect.

Two adapters, so that nothing above ``hosts/`` sees asyncssh:

* :class:`RemoteProcess` presents a command running on the remote host as an :class:`anyio.abc.Process`:
  ``stdout``/``stderr`` are anyio byte streams, and ``send_signal`` becomes a ``kill`` of the command's
  remote pid (which the command's shell printed before ``exec``-ing it). SSH's own ``signal`` channel
  request is not used: OpenSSH 9.2 accepts it and delivers nothing.
* :func:`bridge` joins a channel to a remote unix socket (``direct-streamlocal``) with one end of a local
  socket pair: the QMP client gets an ordinary connected socket and never learns that its QEMU is remote.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal as signal_mod
import socket
from collections.abc import Callable

import anyio
import asyncssh
from anyio.abc import ByteReceiveStream, ByteSendStream, Process
from asyncssh import SSHClientProcess, SSHReader, SSHWriter

_CHUNK = 65536


class _Receive(ByteReceiveStream):
    def __init__(self, reader: SSHReader[bytes]) -> None:
        self._reader = reader

    async def receive(self, max_bytes: int = _CHUNK) -> bytes:
        data = await self._reader.read(max_bytes)
        if not data:
            raise anyio.EndOfStream
        return data

    async def aclose(self) -> None:
        pass  # the channel closes with the process


class _Send(ByteSendStream):
    def __init__(self, writer: SSHWriter[bytes]) -> None:
        self._writer = writer

    async def send(self, item: bytes) -> None:
        self._writer.write(item)
        await self._writer.drain()

    async def aclose(self) -> None:
        with contextlib.suppress(OSError):
            self._writer.write_eof()


class RemoteProcess(Process):
    """A command on the remote host, seen through its SSH session channel."""

    def __init__(self, process: SSHClientProcess[bytes], release: anyio.Semaphore, pid: int,
                 signal: Callable[[int, int], None]) -> None:
        self._process = process
        self._pid = pid
        self._signal = signal  # (pid, signal): sends it on the remote host, without waiting
        self._release = release  # the session slot it holds, given back once it ends
        self._stdin = _Send(process.stdin)
        self._stdout = _Receive(process.stdout)
        self._stderr = _Receive(process.stderr)
        self._released = False

    async def aclose(self) -> None:
        await self._stdin.aclose()
        await self.wait()

    async def wait(self) -> int:
        try:
            await self._process.wait()
        finally:
            if not self._released:
                self._released = True
                self._release.release()
        return self.returncode if self.returncode is not None else -1

    def terminate(self) -> None:
        self.send_signal(signal_mod.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal_mod.SIGKILL)

    def send_signal(self, signal: int) -> None:
        if self._process.exit_status is None and self._process.exit_signal is None:
            self._signal(self._pid, signal)

    @property
    def pid(self) -> int:
        return self._pid  # on the remote host

    @property
    def returncode(self) -> int | None:
        if self._process.exit_signal is not None:
            name = self._process.exit_signal[0]
            return -int(getattr(signal_mod, f"SIG{name}", signal_mod.SIGTERM))
        return self._process.exit_status

    @property
    def stdin(self) -> ByteSendStream:
        return self._stdin

    @property
    def stdout(self) -> ByteReceiveStream:
        return self._stdout

    @property
    def stderr(self) -> ByteReceiveStream:
        return self._stderr


class _ChannelSide(asyncssh.SSHUNIXSession[bytes]):
    """The SSH channel's end of a bridge: what QEMU sends goes straight into the local transport."""

    def __init__(self) -> None:
        self.chan: asyncssh.SSHUNIXChannel[bytes] | None = None
        self.local: asyncio.Transport | None = None

    def connection_made(self, chan: asyncssh.SSHUNIXChannel[bytes]) -> None:
        self.chan = chan

    def data_received(self, data: bytes, datatype: asyncssh.DataType) -> None:
        assert self.local is not None
        self.local.write(data)

    def eof_received(self) -> bool:
        assert self.local is not None
        if self.local.can_write_eof():
            self.local.write_eof()
        return True  # half-closed: the other direction may still carry the client's last bytes

    def connection_lost(self, exc: Exception | None) -> None:
        if self.local is not None:
            self.local.close()

    # Flow control both ways: a full buffer on one side stops reading on the other.
    def pause_writing(self) -> None:
        if self.local is not None:
            self.local.pause_reading()

    def resume_writing(self) -> None:
        if self.local is not None:
            self.local.resume_reading()


class _LocalSide(asyncio.Protocol):
    """The local socket's end of a bridge: what the QMP client sends goes straight into the channel."""

    def __init__(self, peer: _ChannelSide) -> None:
        self.peer = peer

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.peer.local = transport

    def data_received(self, data: bytes) -> None:
        assert self.peer.chan is not None  # the client speaks only after QEMU's greeting
        self.peer.chan.write(data)

    def eof_received(self) -> bool:
        if self.peer.chan is not None:
            self.peer.chan.write_eof()
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        if self.peer.chan is not None:
            self.peer.chan.close()

    def pause_writing(self) -> None:
        if self.peer.chan is not None:
            self.peer.chan.pause_reading()

    def resume_writing(self) -> None:
        if self.peer.chan is not None:
            self.peer.chan.resume_reading()


async def bridge(conn: asyncssh.SSHClientConnection, path: str) -> socket.socket:
    """A local socket connected, through a ``direct-streamlocal`` channel, to the unix socket ``path`` on
    the remote host.

    The bytes pass from one transport's callback to the other's write, with no task and no copy loop in
    between: a QMP event costs one more loop callback than on a local socket. Either side's EOF or close
    is passed on to the other. Raises :class:`asyncssh.ChannelOpenError` if the remote end refuses.
    """
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    side = _ChannelSide()
    # The local transport first: QEMU greets as soon as the channel opens, and that must have a way out.
    transport, _ = await asyncio.get_running_loop().connect_accepted_socket(
        lambda: _LocalSide(side), sock=theirs)
    try:
        await conn.create_unix_connection(lambda: side, path, encoding=None)
    except BaseException:
        transport.close()
        ours.close()
        raise
    return ours
