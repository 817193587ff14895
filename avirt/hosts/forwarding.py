"""Unix sockets of one machine made reachable from another's, for streams between two QEMUs.

A migration's streams (QEMU's migration stream, the NBD connections of a storage copy) go from the
source's QEMU to a unix socket the destination's QEMU listens on. When both run on one machine, the
source's QEMU connects to that path itself. When they do not, this controller joins them, and what it
has for each machine is a :class:`Forwarder`:

* :meth:`Forwarder.reach` gives a path on *this* machine whose connections arrive at a path on the
  forwarder's machine;
* :meth:`Forwarder.expose` gives a path on the forwarder's machine whose connections arrive at a path
  on *this* machine.

So the source's QEMU connects to ``source.expose(dest.reach(path))``: on this machine both are the path
itself, and an SSH host forwards with OpenSSH's own unix-socket forwarding (``direct-streamlocal`` one
way, ``streamlocal-forward`` the other): no port is opened on any host, no byte is copied by Python,
and the stream is as private as the SSH connection. Each path made lives in a fresh directory of mode
0700 (the peer's user alone can connect), and goes, with its forwarding, when the exit stack given
to the call closes.

:attr:`Forwarder.machine` names the machine ("local", or the SSH target): two sides are on one machine
when their names are equal. An SSH target that happens to be this machine (``127.0.0.1``) still counts
as another: what crosses machines is then exercised exactly as it would be between two.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import tempfile
from collections.abc import Callable
from typing import TYPE_CHECKING

import anyio

from avirt.errors import HostError

if TYPE_CHECKING:
    import asyncssh

LOCAL = "local"


class Forwarder:
    """This machine: every path is reachable as it is."""

    machine = LOCAL
    #: The name the machine's TLS certificate is checked against (a migration's ``tls=True``).
    hostname = "localhost"

    async def reach(self, stack: contextlib.AsyncExitStack, path: str) -> str:
        """A path on this machine whose connections arrive at ``path`` on the forwarder's machine."""
        return path

    async def expose(self, stack: contextlib.AsyncExitStack, local_path: str) -> str:
        """A path on the forwarder's machine whose connections arrive at ``local_path`` here."""
        return local_path


class SSHForwarder(Forwarder):
    """A machine behind an SSH connection (asyncssh's, as ``connection()`` gives it now)."""

    def __init__(self, machine: str, hostname: str,
                 connection: Callable[[], asyncssh.SSHClientConnection]) -> None:
        self.machine = machine
        self.hostname = hostname
        self._conn = connection

    async def reach(self, stack: contextlib.AsyncExitStack, path: str) -> str:
        directory = await anyio.to_thread.run_sync(lambda: tempfile.mkdtemp(prefix="avirt-fwd-"))
        stack.push_async_callback(anyio.to_thread.run_sync, lambda: shutil.rmtree(directory, True))
        local = os.path.join(directory, "s")
        try:
            listener = await self._conn().forward_local_path(local, path)
        except Exception as e:
            raise HostError(f"{self.machine}: cannot forward to {path}: {e}") from None
        stack.push_async_callback(self._close, listener)
        return local

    async def expose(self, stack: contextlib.AsyncExitStack, local_path: str) -> str:
        conn = self._conn()
        try:
            made = await conn.run("umask 077 && mktemp -d /tmp/avirt-fwd-XXXXXXXX", check=True)
        except Exception as e:
            raise HostError(f"{self.machine}: cannot make a directory for a forwarded socket: {e}") from None
        directory = str(made.stdout).strip()
        stack.push_async_callback(self._remove, directory)
        remote = f"{directory}/s"
        try:
            listener = await conn.forward_remote_path(remote, local_path)
        except Exception as e:
            raise HostError(f"{self.machine}: cannot listen on {remote} (does sshd allow "
                            f"AllowStreamLocalForwarding?): {e}") from None
        stack.push_async_callback(self._close, listener)
        return remote

    @staticmethod
    async def _close(listener: asyncssh.SSHListener) -> None:
        listener.close()
        with contextlib.suppress(Exception):
            await listener.wait_closed()

    async def _remove(self, directory: str) -> None:
        with contextlib.suppress(Exception):  # a lost connection leaves it for the host's /tmp cleaning
            await self._conn().run(f"rm -rf -- {shlex.quote(directory)}")
