"""A remote machine as a :class:`~avirt.hosts.base.Host`, over one SSH connection (asyncssh).

The remote host needs QEMU, qemu-img, a POSIX shell with coreutils and util-linux, and an OpenSSH server;
no avirt code runs there. Everything is multiplexed over one connection:

* **Commands** run in session channels. Each argv is quoted with :func:`shlex.join` for the remote shell,
  never built as a string, and started with ``exec`` so that its pid (printed first) is the command's. OpenSSH
  allows ``MaxSessions`` (10 by default) sessions per connection; the host keeps a few for its own long
  sessions and lets at most :data:`MAX_COMMANDS` commands run at once, the others wait their turn.
* **Guests** start with QEMU's ``-daemonize``: its parent exits only once the monitor socket listens, so
  the controller can connect at once, as the local host's pre-bound socket allows.
* **Monitors** are reached through ``direct-streamlocal`` channels (unix socket forwarding), relayed to a
  local socket pair (:mod:`avirt.hosts.sshio`); no TCP port is opened on the host.
* **Process ends** are watched by one long session running a small shell loop: one ``tail --pid`` per
  watched pid, which prints the pid when it is gone (within :data:`EXIT_POLL` seconds). A daemonized QEMU
  is init's child, and on some hosts init reaps it only a second or more after it died, while a zombie
  still looks alive to ``kill -0``: the tail therefore also follows QEMU's pid file by name, which QEMU
  removes as it exits (after closing its images), and ends as soon as the file is gone.
* **Files** go through SFTP; an atomic write is a temp file, fsync (OpenSSH's ``fsync@openssh.com``),
  then ``posix-rename@openssh.com`` over the target.
* **The state directory lock** is an ``flock`` held by a session that lives as long as the connection.

Host keys are checked against known_hosts; an unknown or changed key is a :class:`HostError` that names the
key's fingerprint. When the connection drops, every operation in flight and every new one fails at once
with :class:`HostError`, and the host reconnects in the background with backoff;
:meth:`SSHHost.wait_reconnected` returns once it is back (the driver then re-syncs its guests).
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import shlex
import socket
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field

import anyio
import asyncssh

from avirt.errors import HostError
from avirt.hosts.base import FileStamp, Host, RunResult, private_dir_problem
from avirt.hosts.forwarding import Forwarder, SSHForwarder
from avirt.hosts.sshio import RemoteProcess, bridge
from avirt.tasks import TaskOwner

log = logging.getLogger(__name__)

#: Commands that may run at once over the connection (OpenSSH's MaxSessions is 10 by default; the SFTP
#: subsystem, the exit watcher and the lock hold one session each).
MAX_COMMANDS = 6
#: How often the exit watcher looks at each watched process.
EXIT_POLL = 0.05
CONNECT_TIMEOUT = 15.0
BACKOFF_MAX = 5.0
#: Paths per remote ``stat`` run (well under the command-line limit) and what it prints of each.
STAT_BATCH = 500
STAT_FORMAT = "%d %i %.9Y %.9Z %s %n\\0"

_WATCHER = (
    'while read -r pid file; do { '
    f'if [ -n "$file" ]; then tail --pid="$pid" --follow=name -n0 -s {EXIT_POLL} -- "$file" 2>/dev/null; '
    f'else tail --pid="$pid" -n0 -s {EXIT_POLL} -f /dev/null; fi; echo "$pid"; }} & done; kill 0')


@dataclass
class SSHTarget:
    """Where and how to connect: what a ``qemu+ssh://`` URI says."""

    host: str
    port: int = 22
    user: str | None = None
    keyfile: str | None = None  # None: asyncssh's defaults (~/.ssh/id_*, the agent)
    known_hosts: str = "~/.ssh/known_hosts"

    def __post_init__(self) -> None:
        self.known_hosts = os.path.expanduser(self.known_hosts)
        if self.keyfile:
            self.keyfile = os.path.expanduser(self.keyfile)

    @property
    def label(self) -> str:
        where = self.host if self.port == 22 else f"{self.host}:{self.port}"
        return f"{self.user}@{where}" if self.user else where


@dataclass
class _Exit:
    done: anyio.Event = field(default_factory=anyio.Event)
    lost: bool = False


class SSHHost(Host):
    def __init__(self, target: SSHTarget) -> None:
        self.target = target
        self.name = target.label
        self._conn: asyncssh.SSHClientConnection | None = None
        self._sftp: asyncssh.SFTPClient | None = None
        self._watcher: asyncssh.SSHClientProcess[bytes] | None = None
        self._exits: dict[int, _Exit] = {}
        self._locks: list[str] = []
        self._commands = anyio.Semaphore(MAX_COMMANDS)
        self._up = anyio.Event()
        self._tasks = TaskOwner()
        self._closing = False
        self.clock_ticks = 100
        self._uid: int | None = None

    # -- the connection ----------------------------------------------------------------------------------

    async def open(self) -> None:
        await self._tasks.open()
        await self._establish()
        ticks = await self.run(["getconf", "CLK_TCK"])
        if ticks.returncode == 0 and ticks.stdout.strip().isdigit():
            self.clock_ticks = int(ticks.stdout)

    async def _establish(self) -> None:
        conn = await self._dial()
        try:
            self._sftp = await conn.start_sftp_client()
            self._watcher = await conn.create_process(_WATCHER, encoding=None)
        except (asyncssh.Error, OSError) as e:
            conn.close()
            raise HostError(f"{self.name}: cannot open sessions: {e}") from None
        self._conn = conn
        self._tasks.start_soon(self._read_exits, conn, self._watcher, name=f"ssh-exits-{self.name}")
        self._tasks.start_soon(self._watch_connection, conn, name=f"ssh-conn-{self.name}")
        for path in self._locks:
            try:
                taken = await self._take_lock(path)
            except HostError as e:
                taken = False
                log.error("%s", e)
            if not taken:
                log.error("%s: could not take the lock %s again after reconnecting; another controller "
                          "may be managing this state directory now", self.name, path)
        self._up.set()

    async def _dial(self) -> asyncssh.SSHClientConnection:
        return await dial(self.target)

    async def _watch_connection(self, conn: asyncssh.SSHClientConnection) -> None:
        await conn.wait_closed()
        self._lost(conn)

    def _lost(self, conn: asyncssh.SSHClientConnection) -> None:
        """The connection is gone: fail what waits on it, and reconnect (once per lost connection)."""
        if conn is not self._conn or self._closing:
            return
        log.warning("%s: the SSH connection is lost; reconnecting", self.name)
        self._conn = None
        self._up = anyio.Event()
        exits, self._exits = self._exits, {}
        for waiter in exits.values():
            waiter.lost = True
            waiter.done.set()
        conn.abort()
        self._tasks.start_soon(self._reconnect, name=f"ssh-reconnect-{self.name}")

    async def _reconnect(self) -> None:
        delay = 0.1
        while not self._closing:
            try:
                await self._establish()
                log.warning("%s: reconnected", self.name)
                return
            except HostError as e:
                log.info("%s: reconnect failed (%s); next try in %.1f s", self.name, e, delay)
            await anyio.sleep(delay)
            delay = min(delay * 2, BACKOFF_MAX)

    async def home(self) -> str:
        """The remote user's home directory (where relative paths start)."""
        async with self._remote("finding the home directory"):
            return str(await self._files().realpath("."))

    async def wait_reconnected(self) -> None:
        await self._up.wait()

    def connection_error(self) -> HostError | None:
        conn = self._conn
        if conn is not None and not conn.is_closed():
            return None
        if conn is not None:
            self._lost(conn)
        return HostError(f"{self.name}: the SSH connection is lost (reconnecting)")

    def _connection(self) -> asyncssh.SSHClientConnection:
        error = self.connection_error()
        if error is not None:
            raise error
        assert self._conn is not None
        return self._conn

    @contextlib.asynccontextmanager
    async def _remote(self, what: str) -> AsyncIterator[asyncssh.SSHClientConnection]:
        """Use the connection for ``what``; a failure of the transport becomes a HostError."""
        conn = self._connection()
        try:
            yield conn
        except (asyncssh.DisconnectError, asyncssh.ChannelOpenError, asyncssh.SFTPConnectionLost,
                BrokenPipeError, ConnectionResetError) as e:
            if conn.is_closed():
                self._lost(conn)
                raise HostError(f"{self.name}: the SSH connection was lost during {what}") from None
            if isinstance(e, asyncssh.ChannelOpenError):
                # Not the command's failure: the server would not open a channel for it. sshd refuses
                # once a connection has MaxSessions sessions, or once its session process is out of file
                # descriptors (it keeps one per forwarded monitor socket, so that bounds the guests).
                raise HostError(f"{self.name}: the SSH server refused a channel for {what} ({e.reason}); "
                                "is it at its MaxSessions or open-files limit?") from None
            raise HostError(f"{self.name}: {what} failed: {e}") from None

    async def aclose(self) -> None:
        self._closing = True
        if self._conn is not None:
            self._conn.close()
            with contextlib.suppress(Exception):
                await self._conn.wait_closed()
        await self._tasks.aclose()

    # -- processes ---------------------------------------------------------------------------------------

    async def run(self, argv: Sequence[str], *, input: bytes | None = None) -> RunResult:
        async with self._commands, self._remote(f"{argv[0]}") as conn:
            result = await conn.run("exec " + shlex.join(argv), input=input or b"", encoding=None)
        stdout, stderr = (_text(result.stdout), _text(result.stderr))
        if result.exit_status == 127 and result.exit_signal is None:
            raise HostError(f"cannot run {argv[0]} on {self.name}: {stderr.strip() or 'not found'}")
        status = result.exit_status if result.exit_status is not None else -1
        return RunResult(status, stdout, stderr)

    async def spawn(self, argv: Sequence[str]) -> RemoteProcess:
        await self._commands.acquire()
        try:
            async with self._remote(f"{argv[0]}") as conn:
                # The shell says its pid, then becomes the command: that pid is the command's, to signal.
                # setpriv ties the command to its sshd session, which ends with the connection: a lost or
                # killed controller leaves no command running on (Host.spawn's promise).
                process = await conn.create_process(
                    "echo $$; exec setpriv --pdeathsig KILL -- " + shlex.join(argv) + " </dev/null",
                    encoding=None)
                pid = int((await process.stdout.readline()).strip() or -1)
        except BaseException:
            self._commands.release()
            raise
        return RemoteProcess(process, self._commands, pid, self._send_signal)

    def _send_signal(self, pid: int, signal: int) -> None:
        if pid > 0 and self._conn is not None:
            self._tasks.start_soon(self.kill, pid, signal, name=f"ssh-kill-{pid}")

    async def start_detached(
        self, argv_for_socket: Callable[[str], Sequence[str]], *, listen_path: str, log_path: str,
        pass_fds: Sequence[int] = (),
    ) -> None:
        if pass_fds:  # the driver refuses what would need them (host networks) before this
            raise HostError(f"{self.name}: descriptors cannot be handed to a remote process")
        # -daemonize: the command returns once QEMU is initialised and listening (or has failed, saying why
        # on stderr). -D keeps the daemon's stderr in the log instead of /dev/null; it truncates the log,
        # so on a remote host the log covers the current run only.
        argv = [*argv_for_socket(f"path={listen_path}"), "-daemonize", "-D", log_path]
        result = await self.run(argv)
        if result.returncode != 0:
            # QEMU's complaint went to the log (once -D took effect) or to our stderr (before): the log
            # gets both, since the caller reads it to say why the start failed.
            text = (await self.read_text(log_path) or "") + result.stderr
            with contextlib.suppress(HostError):
                await self.write_atomic(log_path, text, durable=False)
            last = text.strip().splitlines()[-1:] or [f"status {result.returncode}"]
            raise HostError(f"{argv[0]} failed on {self.name}: {last[0]}")
        # A daemonized QEMU binds with umask 027; the socket is its owner's alone, as on the local host
        # (the run directory, mode 0700, already keeps everyone else out).
        async with self._remote(f"securing {listen_path}"):
            await self._files().chmod(listen_path, 0o600)

    def forwarder(self) -> Forwarder:
        return SSHForwarder(f"ssh://{self.name}", self.target.host, self._connection)

    async def connect_unix(self, path: str) -> socket.socket:
        async with self._remote("connecting to a unix socket") as conn:
            try:
                return await bridge(conn, path)
            except asyncssh.ChannelOpenError as e:
                if conn.is_closed():
                    raise
                raise ConnectionRefusedError(f"{self.name}:{path}: {e.reason}") from None

    async def wait_exit(self, pid: int, *, pidfile: str | None = None) -> None:
        waiter = self._exits.get(pid)
        if waiter is None:
            conn = self._connection()
            watcher = self._watcher
            waiter = self._exits[pid] = _Exit()
            line = f"{pid} {pidfile}" if pidfile and "\n" not in pidfile else str(pid)
            try:
                assert watcher is not None
                watcher.stdin.write(f"{line}\n".encode())
            except (OSError, asyncssh.Error):
                self._lost(conn)
        await waiter.done.wait()
        if waiter.lost:
            raise HostError(f"{self.name}: the SSH connection was lost while watching pid {pid}")

    async def _read_exits(self, conn: asyncssh.SSHClientConnection,
                          watcher: asyncssh.SSHClientProcess[bytes]) -> None:
        with contextlib.suppress(asyncssh.Error, OSError):
            async for line in watcher.stdout:
                waiter = self._exits.pop(int(line), None) if line.strip().isdigit() else None
                if waiter is not None:
                    waiter.done.set()
        self._lost(conn)  # the watcher only ends with the connection

    async def pid_alive(self, pid: int) -> bool:
        stat = await self._proc_stat(pid) if pid > 0 else None
        return stat is not None and stat[0] != "Z"  # a zombie has exited (as a pidfd says locally)

    async def kill(self, pid: int, signal: int) -> None:
        await self.run(["kill", f"-{int(signal)}", str(pid)])  # a process already gone is not an error

    async def cpu_times_ns(self, ids: Sequence[int]) -> list[int]:
        if len(ids) == 1:  # a file read over SFTP: cheaper than a remote command
            stat = await self._proc_stat(ids[0])
            return [0 if stat is None else self._ticks_ns(stat)]
        # Many: one remote command reads them all in order (one line each, empty for one that is gone).
        times: list[int] = []
        for at in range(0, len(ids), 2000):
            chunk = [int(pid) for pid in ids[at:at + 2000]]
            script = f"for p in {' '.join(map(str, chunk))}; do cat /proc/$p/stat 2>/dev/null || echo; done"
            result = await self.run(["sh", "-c", script])
            lines = result.stdout.split("\n")
            for n in range(len(chunk)):
                line = lines[n] if n < len(lines) else ""
                times.append(self._ticks_ns(line[line.rindex(")") + 2 :].split()) if ")" in line else 0)
        return times

    def _ticks_ns(self, stat: list[str]) -> int:
        return (int(stat[11]) + int(stat[12])) * 1_000_000_000 // self.clock_ticks

    async def _proc_stat(self, pid: int) -> list[str] | None:
        """The fields of /proc/PID/stat after the command name (state first), read over SFTP: a remote
        command costs a run of the user's login shell, a file read a fraction of a millisecond."""
        async with self._remote(f"reading /proc/{pid}/stat"):
            try:
                # procfs files have no size: ask for a length rather than "to the end".
                async with self._files().open(f"/proc/{pid}/stat", "rb") as f:
                    data: bytes = await f.read(4096)
            except asyncssh.SFTPError:
                return None
        text = data.decode(errors="replace")
        return text[text.rindex(")") + 2 :].split() if ")" in text else None

    # -- files -------------------------------------------------------------------------------------------

    def _files(self) -> asyncssh.SFTPClient:
        self._connection()
        assert self._sftp is not None
        return self._sftp

    async def read_text(self, path: str) -> str | None:
        async with self._remote(f"reading {path}"):
            try:
                async with self._files().open(path, "rb") as f:
                    data: bytes = await f.read()
            except asyncssh.SFTPNoSuchFile:
                return None
        return data.decode(errors="replace")

    async def write_atomic(self, path: str, text: str, *, mode: int = 0o600, durable: bool = True) -> None:
        # No directory fsync exists in SFTP: the rename is durable once the file system commits it
        # (ext4 and xfs order a rename after the data it replaces).
        tmp = f"{os.path.dirname(path) or '.'}/.tmp-{secrets.token_hex(6)}~"
        sftp = self._files()
        async with self._remote(f"writing {path}"):
            try:
                async with sftp.open(tmp, "wb", asyncssh.SFTPAttrs(permissions=mode)) as f:
                    await f.write(text.encode())
                    if durable:
                        await f.fsync()
                await sftp.posix_rename(tmp, path)
            except asyncssh.SFTPError as e:
                with contextlib.suppress(asyncssh.Error):
                    await sftp.remove(tmp)
                raise HostError(f"{self.name}: cannot write {path}: {e.reason}") from None

    async def short_dir(self) -> str:
        if self._uid is None:
            result = await self.run(["id", "-u"])
            if result.returncode != 0 or not result.stdout.strip().isdigit():
                raise HostError(f"{self.name}: cannot tell the user's uid: {result.stderr.strip()}")
            self._uid = int(result.stdout)
        path = f"/tmp/avirt-{self._uid}"
        async with self._remote(f"creating {path}"):
            sftp = self._files()
            with contextlib.suppress(asyncssh.SFTPFailure):  # it exists (OpenSSH says no more than that)
                await sftp.mkdir(path, asyncssh.SFTPAttrs(permissions=0o700))
            try:
                attrs = await sftp.lstat(path)
            except asyncssh.SFTPError as e:
                raise HostError(f"{self.name}: cannot create {path}: {e.reason}") from None
        problem = private_dir_problem(attrs.permissions or 0, attrs.uid or 0, self._uid)
        if problem:
            raise HostError(f"{self.name}: {path} {problem}: it cannot hold avirt's short socket links")
        return path

    async def symlink(self, target: str, link: str) -> None:
        tmp = f"{link}.{secrets.token_hex(4)}~"
        async with self._remote(f"linking {link}"):
            sftp = self._files()
            with contextlib.suppress(asyncssh.SFTPError):
                if await sftp.readlink(link) == target:
                    return
            try:
                await sftp.symlink(target, tmp)
                await sftp.posix_rename(tmp, link)
            except asyncssh.SFTPError as e:
                with contextlib.suppress(asyncssh.Error):
                    await sftp.remove(tmp)
                raise HostError(f"{self.name}: cannot link {link} to {target}: {e.reason}") from None

    async def exists(self, path: str) -> bool:
        async with self._remote(f"looking at {path}"):
            return bool(await self._files().exists(path))

    async def stat_files(self, paths: Sequence[str]) -> dict[str, FileStamp]:
        # GNU stat in one command per batch, not SFTP: SFTP's attributes (version 3, all OpenSSH speaks)
        # carry no device or inode number and only whole seconds.
        stamps: dict[str, FileStamp] = {}
        for start in range(0, len(paths), STAT_BATCH):
            batch = list(paths[start:start + STAT_BATCH])
            result = await self.run(["stat", "-L", f"--printf={STAT_FORMAT}", "--", *batch])
            for record in result.stdout.split("\0"):  # a missing path prints nothing (and says so on stderr)
                fields = record.split(" ", 5)
                if len(fields) == 6:
                    dev, ino, mtime, ctime, size, path = fields
                    stamps[path] = FileStamp(int(dev), int(ino), _ns(mtime), _ns(ctime), int(size))
        return stamps

    async def make_dirs(self, path: str, *, mode: int = 0o700) -> None:
        async with self._remote(f"creating {path}"):
            try:
                await self._files().makedirs(path, asyncssh.SFTPAttrs(permissions=mode), exist_ok=True)
            except asyncssh.SFTPError as e:
                raise HostError(f"{self.name}: cannot create {path}: {e.reason}") from None

    async def list_dir(self, path: str) -> list[str]:
        async with self._remote(f"listing {path}"):
            try:
                names = await self._files().listdir(path)
            except asyncssh.SFTPNoSuchFile:
                return []
        return sorted(str(n) for n in names if n not in (".", ".."))

    async def remove_tree(self, path: str) -> None:
        # Through SFTP, not `rm -rf`: a remote command costs a session and a run of the user's shell (and
        # its rc files), and takes one of the MAX_COMMANDS slots that guest starts wait for.
        async with self._remote(f"removing {path}"):
            sftp = self._files()
            try:
                attrs = await sftp.lstat(path)
                if attrs.type == asyncssh.FILEXFER_TYPE_DIRECTORY:
                    await sftp.rmtree(path, ignore_errors=True)
                else:
                    await sftp.remove(path)
            except asyncssh.SFTPNoSuchFile:
                return
            except asyncssh.SFTPError as e:
                raise HostError(f"{self.name}: cannot remove {path}: {e.reason}") from None

    async def lock(self, path: str) -> bool:
        if not await self._take_lock(path):
            return False
        self._locks.append(path)
        return True

    async def _take_lock(self, path: str) -> bool:
        # The session holds the flock for as long as the connection lives: closing it releases the lock,
        # just as a local controller's exit releases its flock.
        async with self._remote(f"locking {path}") as conn:
            holder = await conn.create_process(
                shlex.join(["flock", "-n", "-E", "75", path, "sh", "-c", "echo locked; exec cat >/dev/null"]),
                encoding=None)
            first = await holder.stdout.readline()
        if first.strip() == b"locked":
            return True
        await holder.wait()
        if holder.exit_status != 75:
            raise HostError(f"{self.name}: cannot lock {path}: {_text(await holder.stderr.read()).strip()}")
        return False


async def dial(target: SSHTarget) -> asyncssh.SSHClientConnection:
    """An SSH connection to ``target``, its host key checked; every failure a :class:`HostError` that
    says what happened (untrusted key, authentication, unreachable, no answer)."""
    t, name = target, target.label
    options: dict[str, object] = {"client_keys": [t.keyfile]} if t.keyfile else {}
    if t.user:  # none in the URI: the local user, which asyncssh picks only if the option is left out
        options["username"] = t.user
    # A missing known_hosts file trusts nobody (asyncssh would take it for "no checking").
    trusted = t.known_hosts if await anyio.Path(t.known_hosts).exists() else []
    try:
        with anyio.fail_after(CONNECT_TIMEOUT):
            return await asyncssh.connect(
                t.host, t.port, known_hosts=trusted,
                keepalive_interval=15, keepalive_count_max=3, **options)
    except asyncssh.HostKeyNotVerifiable:
        raise HostError(f"{name}: host key {await _fingerprint(t)} is not trusted "
                        f"(unknown to {t.known_hosts}, or changed)") from None
    except asyncssh.PermissionDenied:
        raise HostError(f"{name}: authentication failed") from None
    except TimeoutError:
        raise HostError(f"{name}: no answer within {CONNECT_TIMEOUT:g} s") from None
    except (OSError, asyncssh.Error) as e:
        raise HostError(f"{name}: cannot connect: {getattr(e, 'strerror', None) or e}") from None


async def _fingerprint(target: SSHTarget) -> str:
    with contextlib.suppress(Exception), anyio.fail_after(CONNECT_TIMEOUT):
        key = await asyncssh.get_server_host_key(target.host, target.port)
        if key is not None:
            return f"{key.get_algorithm()} {key.get_fingerprint()}"
    return "(fingerprint unavailable)"


def _ns(seconds: str) -> int:
    """``stat``'s ``%.9Y`` (seconds with nine decimals) in nanoseconds, exactly."""
    whole, _, fraction = seconds.partition(".")
    return int(whole) * 1_000_000_000 + int(fraction.ljust(9, "0")[:9] or 0)


def _text(data: bytes | str | None) -> str:
    if data is None:
        return ""
    return data if isinstance(data, str) else data.decode(errors="replace")
