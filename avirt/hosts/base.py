"""What avirt needs from the machine that runs the guests, and nothing more.

Everything above ``hosts/`` is host-agnostic: the QEMU driver asks a :class:`Host` to run a command, start a
detached guest process, reach its monitor socket, watch a process end, and read or atomically write a file.
``LocalHost`` does it on this machine; ``SSHHost`` does the same on a remote one over one SSH connection.
Paths are strings because they may not be local.

A remote host can become unreachable: its operations then raise :class:`~avirt.errors.HostError` at once
(nothing hangs), and :meth:`Host.wait_reconnected` tells when it is back. A local host never is.
"""

from __future__ import annotations

import socket
import stat
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from anyio.abc import Process

from avirt.errors import HostError
from avirt.hosts.forwarding import Forwarder


@dataclass(frozen=True)
class RunResult:
    returncode: int
    stdout: str
    stderr: str


@dataclass(frozen=True)
class FileStamp:
    """Who a file is and when it last changed, as ``stat`` says (symbolic links followed).

    ``identity`` (device, inode) is the same for every name of one file: a symbolic link, a hard link or
    a path through ``..``. ``changed`` moves whenever the file's bytes or metadata change (the kernel sets
    ctime on every write, and mtime only where the writer says so): a cheap question whose answer says
    whether a file must be read again.
    """

    dev: int
    ino: int
    mtime_ns: int
    ctime_ns: int
    size: int

    @property
    def identity(self) -> tuple[int, int]:
        return (self.dev, self.ino)

    @property
    def changed(self) -> tuple[int, int, int]:
        return (self.mtime_ns, self.ctime_ns, self.size)


class FileWatch(ABC):
    """Change notification for a set of files (inotify on this machine), so that knowing whether any of
    thousands of files changed costs what the changes cost, not a ``stat`` of each.

    A watch is on a file, not a name: every name of one file gives the same key.
    """

    @abstractmethod
    async def add(self, paths: Sequence[str]) -> dict[str, int]:
        """Watch these files; their keys by path (a path that cannot be watched is left out)."""

    @abstractmethod
    def remove(self, key: int) -> None:
        """Stop watching the file of ``key``."""

    @abstractmethod
    def changed(self) -> set[int] | None:
        """Keys of the files whose bytes or metadata changed (or that were renamed or removed) since the
        last call; None when the kernel dropped notifications, so that any file may have changed. Never
        waits."""

    @abstractmethod
    def close(self) -> None: ...


class Host(ABC):
    """The interface the drivers use to touch a machine. Every call that can block is async."""

    #: A short name for messages ("localhost", "admin@kvm-host-17").
    name: str

    # -- processes ---------------------------------------------------------------------------------------

    @abstractmethod
    async def run(self, argv: Sequence[str], *, input: bytes | None = None) -> RunResult:
        """Run a command to completion (never through a shell) and return what it printed."""

    @abstractmethod
    async def spawn(self, argv: Sequence[str]) -> Process:
        """Start a command (never through a shell) whose output is read as it runs, e.g. qemu-img -p.

        The caller owns the process: it reads ``stdout``/``stderr``, may ``send_signal``, and must
        ``wait()`` for it (an async context manager closes its streams). The process does not outlive the
        controller that spawned it: a controller that is killed takes it along (locally the kernel's
        parent-death signal, on a remote host the loss of its channel), so no orphan goes on writing
        images that nobody watches.
        """

    @abstractmethod
    async def start_detached(
        self, argv_for_socket: Callable[[str], Sequence[str]], *, listen_path: str, log_path: str,
        pass_fds: Sequence[int] = (),
    ) -> None:
        """Start a QEMU in its own session, so that it outlives the controller, serving ``listen_path``.

        ``pass_fds`` are more descriptors the process inherits under the same numbers (a guest's taps);
        only a local host can hand descriptors down.

        ``argv_for_socket`` gets the options of QEMU's listening socket chardev (``fd=N`` or ``path=P``)
        and returns the command line. Either way, the socket listens when this returns: a client can
        connect at once, with no race against QEMU's start-up. Standard error goes to ``log_path``. The
        process is not a child of the controller (so nothing has to reap it): its end is learnt with
        :meth:`wait_exit`. A start failure raises :class:`~avirt.errors.HostError`, and what QEMU printed
        is in the log.
        """

    def forwarder(self) -> Forwarder:
        """How streams between unix sockets of this host and of the controller's machine are joined
        (:mod:`avirt.hosts.forwarding`); this machine's own by default."""
        return Forwarder()

    @abstractmethod
    async def connect_unix(self, path: str) -> socket.socket:
        """A connected stream socket to the unix socket ``path`` on the host (OSError if nobody listens).

        On a remote host this is one end of a local socket pair, relayed over the host connection.
        """

    @abstractmethod
    async def wait_exit(self, pid: int, *, pidfile: str | None = None) -> None:
        """Return once process ``pid`` has exited (at once if it is not running).

        ``pidfile`` is a file the process removes as it exits (QEMU's ``-pidfile``, after it has closed
        its images): a host that cannot see the exit itself may take the file's removal for it, since a
        detached QEMU's exit is otherwise visible only once init has reaped it.
        """

    @abstractmethod
    async def pid_alive(self, pid: int) -> bool:
        """Whether process ``pid`` exists."""

    @abstractmethod
    async def kill(self, pid: int, signal: int) -> None:
        """Send ``signal`` to ``pid``; a process that is already gone is not an error."""

    async def cpu_time_ns(self, pid: int) -> int:
        """CPU time (user + system) that process ``pid`` has used, in nanoseconds; 0 if it is gone."""
        return (await self.cpu_times_ns([pid]))[0]

    @abstractmethod
    async def cpu_times_ns(self, ids: Sequence[int]) -> list[int]:
        """:meth:`cpu_time_ns` of many processes or threads (a thread id reads as a process), read in
        the order given, in one go (statistics of a fleet ask for thousands)."""

    # -- files -------------------------------------------------------------------------------------------

    @abstractmethod
    async def read_text(self, path: str) -> str | None:
        """The file's text, or None if it does not exist."""

    async def read_head(self, path: str, size: int) -> bytes | None:
        """Up to ``size`` bytes from the start of the file, where this host reads files cheaply; None when
        it cannot be read (or not cheaply: a remote host), so that the caller asks a program instead."""
        return None

    @abstractmethod
    async def write_atomic(self, path: str, text: str, *, mode: int = 0o600, durable: bool = True) -> None:
        """Replace ``path`` with ``text`` so that readers see the old or the new file, never a mix.

        The text goes to a temp file in the same directory, then is renamed over ``path``. ``durable``
        also fsyncs the file and the directory, so the new content survives a crash of the host; files
        that describe a running QEMU (which a host crash ends anyway) can skip that cost.
        """

    async def free_space(self, path: str) -> int:
        """Bytes available to new data on the filesystem that holds ``path``.

        This default asks ``df`` through :meth:`run`, which any host can do; a host with a cheaper way
        (a local ``statvfs``) overrides it.
        """
        result = await self.run(["df", "--output=avail", "-B1", "--", path])
        try:
            return int(result.stdout.split()[-1])
        except (IndexError, ValueError):
            raise HostError(f"cannot tell the free space of {path}: {result.stderr.strip()}") from None

    async def set_affinity(self, tid: int, cpuset: str, *, all_threads: bool = False) -> None:
        """Let thread ``tid`` (with ``all_threads``: every thread of process ``tid``) run only on the
        host CPUs of ``cpuset``, libvirt's syntax ('0-3,^2,6')."""
        cpus = ",".join(str(c) for c in sorted(expand_cpuset(cpuset)))
        result = await self.run(["taskset", *(["-a"] if all_threads else []), "-p", "-c", cpus, str(tid)])
        if result.returncode != 0:
            raise HostError(f"cannot pin thread {tid} to CPUs {cpuset}: {result.stderr.strip()}")

    async def free_port(self, address: str) -> int:
        """A TCP port on ``address`` that nothing listens on now, for a server QEMU will open (SPICE)."""
        raise HostError(f"cannot pick a free port on {self}: give the port in the definition")

    @abstractmethod
    async def short_dir(self) -> str:
        """A short directory of this host's user, for paths that must be short (unix socket addresses).

        It is ``/tmp/avirt-<uid>``, made (mode 0700) if missing. An existing one is used only if it is a
        real directory owned by the user and closed to everyone else, since whoever can write into it could
        redirect the links kept there; anything else is a :class:`~avirt.errors.HostError` naming it.
        """

    @abstractmethod
    async def symlink(self, target: str, link: str) -> None:
        """Make ``link`` a symbolic link to ``target``, atomically replacing whatever ``link`` was."""

    @abstractmethod
    async def exists(self, path: str) -> bool: ...

    @abstractmethod
    async def stat_files(self, paths: Sequence[str]) -> dict[str, FileStamp]:
        """The stamp of each path that exists (symbolic links followed), in one round trip; paths that do
        not exist are left out."""

    def file_watch(self) -> FileWatch | None:
        """A new change watch on this host's files, or None if the host cannot notify (the caller then
        compares stamps)."""
        return None

    @abstractmethod
    async def make_dirs(self, path: str, *, mode: int = 0o700) -> None: ...

    @abstractmethod
    async def list_dir(self, path: str) -> list[str]:
        """Names in directory ``path``; empty if it does not exist."""

    @abstractmethod
    async def remove_tree(self, path: str) -> None:
        """Remove a file or a directory tree; a missing path is not an error."""

    async def fresh_dir(self, path: str, files: dict[str, str]) -> None:
        """A new private directory at ``path`` (whatever was there is removed) holding ``files`` (name ->
        text), written as :meth:`write_atomic` without ``durable``: what a run directory holds. A host
        that can do it in one trip does."""
        await self.remove_tree(path)
        await self.make_dirs(path, mode=0o700)
        for name, text in files.items():
            await self.write_atomic(f"{path}/{name}", text, durable=False)

    @abstractmethod
    async def lock(self, path: str) -> bool:
        """Take an exclusive lock on ``path`` (created if needed), held until :meth:`aclose`.

        Returns False at once, without waiting, if another holder has it.
        """

    async def open(self) -> None:
        """Connect to the host, if it has to be reached; called once before any other method."""

    def connection_error(self) -> HostError | None:
        """The error that says the host is unreachable right now, or None while it can be reached."""
        return None

    async def wait_reconnected(self) -> None:
        """After a :class:`~avirt.errors.HostError` that means "connection lost": return once the host can
        be reached again. A host that cannot lose its connection raises the error it was asked about."""
        raise HostError(f"{self.name}: the host is not reachable")

    async def aclose(self) -> None:
        """Release whatever the host holds open (connections, locks)."""


def private_dir_problem(mode: int, owner: int, uid: int) -> str | None:
    """What makes a directory unfit to be a user's private one (None: it is fit); see
    :meth:`Host.short_dir`."""
    if not stat.S_ISDIR(mode):
        return "is not a directory"
    if owner != uid:
        return f"belongs to uid {owner}, not to uid {uid}"
    if stat.S_IMODE(mode) & 0o077:
        return f"is open to others (mode {stat.S_IMODE(mode):04o}, not 0700)"
    return None


def expand_cpuset(cpuset: str) -> set[int]:
    """libvirt's cpuset syntax ('0-3,^2,6') as a set of CPU numbers."""
    cpus: set[int] = set()
    excluded: set[int] = set()
    for part in cpuset.replace(" ", "").split(","):
        target = excluded if part.startswith("^") else cpus
        first, _, last = part.lstrip("^").partition("-")
        target.update(range(int(first), int(last or first) + 1))
    return cpus - excluded
