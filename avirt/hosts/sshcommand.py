"""One long-running command on a remote host, its standard input and output as a byte stream.

This is how a ``qemu+ssh://`` connection reaches a remote avirt (``avirt serve --stdio``): an SSH
connection of its own with exactly one session channel, whose two directions carry the served protocol.
Nothing here knows that protocol; :class:`RemoteCommand` is an :class:`anyio.abc.ByteStream` like a
socket, and the layer above speaks over it.

* The command's standard error is read all the time (an unread channel fills its window and would stop
  the remote program at its next log line): each line is logged here, and the last few are kept to say
  why the command ended.
* When the stream ends before the caller expected, :meth:`RemoteCommand.failure` turns the command's exit
  into a typed error: status 127 (the shell found no such command) is a
  :class:`~avirt.errors.CommandNotFoundError`, for the caller to fall back on something else; any other
  end is a :class:`~avirt.errors.HostError` with the command's last words.
* Closing the stream sends the command end-of-file on its standard input, waits for it to end (at most
  :data:`EXIT_TIMEOUT`), then closes the connection; a lost connection ends the stream like an
  end-of-file.
"""

from __future__ import annotations

import contextlib
import logging
import shlex
from collections import deque
from collections.abc import Sequence

import anyio
import asyncssh
from anyio.abc import ByteStream

from avirt.errors import CommandNotFoundError, HostError
from avirt.hosts.ssh import SSHTarget, dial
from avirt.tasks import TaskOwner

__all__ = ["RemoteCommand"]

log = logging.getLogger(__name__)

_CHUNK = 65536
#: How long a command may take to end once its standard input closed, or to report its exit status.
EXIT_TIMEOUT = 5.0
#: Lines of the command's standard error kept for the error that says why it ended.
STDERR_LINES = 5


class RemoteCommand(ByteStream):
    def __init__(self, target: SSHTarget, argv: Sequence[str]) -> None:
        self.target = target
        self.argv = list(argv)
        self.name = target.label
        self._conn: asyncssh.SSHClientConnection | None = None
        self._process: asyncssh.SSHClientProcess[bytes] | None = None
        self._stderr: deque[str] = deque(maxlen=STDERR_LINES)
        self._stderr_done = anyio.Event()
        self._tasks = TaskOwner()

    @classmethod
    async def start(cls, target: SSHTarget, argv: Sequence[str]) -> RemoteCommand:
        """Connect to ``target`` and run ``argv`` there (quoted with :func:`shlex.join`, started with
        ``exec``); HostError if the host cannot be reached."""
        command = cls(target, argv)
        try:
            await command._start()
        except BaseException:
            await command.aclose()
            raise
        return command

    async def _start(self) -> None:
        await self._tasks.open()
        self._conn = await dial(self.target)
        try:
            self._process = await self._conn.create_process("exec " + shlex.join(self.argv), encoding=None)
        except (asyncssh.Error, OSError) as e:
            raise HostError(f"{self.name}: cannot start {self.argv[0]}: {e}") from None
        self._tasks.start_soon(self._read_stderr, self._process, name=f"ssh-stderr-{self.name}")

    async def _read_stderr(self, process: asyncssh.SSHClientProcess[bytes]) -> None:
        try:
            with contextlib.suppress(asyncssh.Error, OSError):
                async for raw in process.stderr:
                    line = raw.decode(errors="replace").rstrip()
                    if line:
                        self._stderr.append(line)
                        log.info("%s: %s", self.name, line)
        finally:
            self._stderr_done.set()

    @property
    def connection(self) -> asyncssh.SSHClientConnection | None:
        """The SSH connection the command runs on (other channels may share it: forwarded sockets)."""
        return self._conn

    @property
    def lost(self) -> bool:
        """Whether the SSH connection under the command is gone (not merely the command)."""
        return self._conn is None or self._conn.is_closed()

    async def failure(self) -> HostError:
        """Why the command ended (call it once the stream has ended): CommandNotFoundError for a command
        the remote shell did not find, else a HostError with the command's last lines of standard error."""
        process = self._process
        status: int | None = None
        if process is not None:
            with anyio.move_on_after(EXIT_TIMEOUT):
                with contextlib.suppress(asyncssh.Error, OSError):
                    await process.wait_closed()
                await self._stderr_done.wait()
            status = process.exit_status
        said = "; ".join(self._stderr) or "nothing on standard error"
        if status == 127:
            return CommandNotFoundError(f"{self.name}: no command {self.argv[0]!r} on the host ({said})",
                                        command=self.argv[0])
        if status is None and self.lost:
            return HostError(f"{self.name}: the SSH connection was lost while running {self.argv[0]}")
        return HostError(f"{self.name}: {self.argv[0]} ended (status {status}): {said}")

    # -- the byte stream -------------------------------------------------------------------------------

    async def receive(self, max_bytes: int = _CHUNK) -> bytes:
        if self._process is None:
            raise anyio.ClosedResourceError
        try:
            data: bytes = await self._process.stdout.read(max_bytes)
        except (asyncssh.Error, OSError) as e:
            raise anyio.BrokenResourceError(str(e)) from None
        if not data:
            raise anyio.EndOfStream
        return data

    async def send(self, item: bytes) -> None:
        if self._process is None:
            raise anyio.ClosedResourceError
        try:
            self._process.stdin.write(item)
            await self._process.stdin.drain()
        except (asyncssh.Error, OSError) as e:
            raise anyio.BrokenResourceError(str(e)) from None

    async def send_eof(self) -> None:
        if self._process is not None:
            with contextlib.suppress(asyncssh.Error, OSError):
                self._process.stdin.write_eof()

    async def aclose(self) -> None:
        await self.send_eof()  # the command's end-of-file: it ends by itself, as it would at a hang-up
        if self._process is not None:
            # Its end, before the connection's: its exit status (for failure()) travels on the connection,
            # and a command that has ended no longer holds what it held (the state directory's lock).
            with anyio.CancelScope(shield=True), anyio.move_on_after(EXIT_TIMEOUT):
                with contextlib.suppress(asyncssh.Error, OSError):
                    await self._process.wait_closed()
        if self._conn is not None:
            self._conn.close()
            with contextlib.suppress(Exception):
                await self._conn.wait_closed()
        await self._tasks.aclose()
