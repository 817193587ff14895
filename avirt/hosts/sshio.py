"""The byte plumbing between asyncssh channels and what the layers above expect.

Two adapters, so that nothing above ``hosts/`` sees asyncssh:

* :class:`RemoteProcess` presents a command running on the remote host as an :class:`anyio.abc.Process`:
  ``stdout``/``stderr`` are anyio byte streams, ``send_signal`` becomes an SSH ``signal`` channel request
  (OpenSSH 7.9 and later deliver it to the command, which the host starts with ``exec`` so that the
  signal reaches it rather than a shell).
* :func:`relay` joins a channel to a remote unix socket (``direct-streamlocal``) with one end of a local
  socket pair: the QMP client gets an ordinary connected socket and never learns that its QEMU is remote.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal as signal_mod
import socket
from collections.abc import Awaitable, Callable

import anyio
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

    def __init__(self, process: SSHClientProcess[bytes], release: anyio.Semaphore) -> None:
        self._process = process
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
        if self._process.is_closing():
            return
        with contextlib.suppress(OSError):
            self._process.send_signal(signal_mod.Signals(signal).name.removeprefix("SIG"))

    @property
    def pid(self) -> int:
        return -1  # the remote pid is not known here, and signals do not need it

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


async def relay(local: socket.socket, reader: SSHReader[bytes], writer: SSHWriter[bytes]) -> None:
    """Copy bytes both ways between ``local`` and a channel until either side ends; then close both.

    Each direction hands EOF on to the other side, and the first one to end ends the relay: QEMU closing
    its monitor must reach the QMP client at once, and so must the client closing its socket reach QEMU.
    """
    local_reader, local_writer = await asyncio.open_unix_connection(sock=local)

    async def to_local() -> None:
        while data := await reader.read(_CHUNK):
            local_writer.write(data)
            await local_writer.drain()

    async def to_remote() -> None:
        while data := await local_reader.read(_CHUNK):
            writer.write(data)
            await writer.drain()

    try:
        async with anyio.create_task_group() as group:
            for direction in (to_local, to_remote):
                group.start_soon(_until_end, direction, group.cancel_scope)
    finally:
        writer.close()
        local_writer.close()
        with contextlib.suppress(OSError):
            await local_writer.wait_closed()


async def _until_end(direction: Callable[[], Awaitable[None]], scope: anyio.CancelScope) -> None:
    try:
        await direction()
    except (OSError, EOFError):
        pass  # a reset on either side ends the relay like an EOF does
    finally:
        scope.cancel()
