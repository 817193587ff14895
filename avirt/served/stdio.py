"""The served protocol on standard input and output: ``avirt serve --stdio``, one client per process.

An SSH client reaches a remote state directory by running ``avirt serve --stdio`` in one session channel
(:mod:`avirt.served.remote`): the channel's two directions are the process's standard input and output,
and the protocol on them is exactly the one a unix socket carries (docs/protocol.md). Two things differ
from a socket, and this module handles both:

* the pipes are plain file descriptors, so :class:`PipeStream` reads and writes them without blocking the
  event loop (non-blocking descriptors, woken by the loop's readiness callbacks, no threads);
* standard output must carry protocol bytes only. :func:`take_stdio` moves the protocol to descriptors
  of its own and points descriptor 1 at standard error, so that a stray ``print`` (ours, a library's)
  becomes a log line instead of a corrupted message.
"""

from __future__ import annotations

import errno
import os

import anyio
from anyio.abc import ByteStream

__all__ = ["PipeStream", "take_stdio"]

_CHUNK = 65536


class PipeStream(ByteStream):
    """A byte stream over two file descriptors (pipes, sockets, terminals or files). It owns both and
    closes them. They are made non-blocking while it uses them, which changes the open file they share
    with whoever else holds it (a terminal's shell): closing makes them blocking again."""

    def __init__(self, read_fd: int, write_fd: int) -> None:
        self._read_fd: int | None = read_fd
        self._write_fd: int | None = write_fd
        os.set_blocking(read_fd, False)
        os.set_blocking(write_fd, False)

    async def receive(self, max_bytes: int = _CHUNK) -> bytes:
        while True:
            fd = self._read_fd
            if fd is None:
                raise anyio.ClosedResourceError
            try:
                data = os.read(fd, max_bytes)
            except BlockingIOError:
                await anyio.wait_readable(fd)
                continue
            except OSError as e:
                raise anyio.BrokenResourceError(str(e)) from e
            if not data:
                raise anyio.EndOfStream
            return data

    async def send(self, item: bytes) -> None:
        view = memoryview(item)
        while view:
            fd = self._write_fd
            if fd is None:
                raise anyio.ClosedResourceError
            try:
                written = os.write(fd, view)
            except BlockingIOError:
                await anyio.wait_writable(fd)
                continue
            except OSError as e:  # EPIPE: the client is gone
                raise anyio.BrokenResourceError(str(e)) from e
            view = view[written:]

    async def send_eof(self) -> None:
        self._close_write()

    async def aclose(self) -> None:
        self._close_write()
        fd, self._read_fd = self._read_fd, None
        if fd is not None:
            _close(fd)

    def _close_write(self) -> None:
        fd, self._write_fd = self._write_fd, None
        if fd is not None:
            _close(fd)


def _close(fd: int) -> None:
    anyio.notify_closing(fd)
    try:
        os.set_blocking(fd, True)
        os.close(fd)
    except OSError as e:
        if e.errno != errno.EBADF:
            raise


def take_stdio() -> PipeStream:
    """This process's standard input and output as a :class:`PipeStream` for the protocol alone.

    The protocol gets duplicates of descriptors 0 and 1; descriptor 0 then reads /dev/null and
    descriptor 1 writes to standard error, so nothing else can read the client's bytes or write between
    the messages.
    """
    read_fd, write_fd = os.dup(0), os.dup(1)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    os.dup2(2, 1)
    return PipeStream(read_fd, write_fd)
