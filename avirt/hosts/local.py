"""This machine as a :class:`~avirt.hosts.base.Host`: anyio subprocesses, pidfds, local files.

Nothing here blocks the event loop: commands run through anyio, waiting for a process uses a pidfd that the
loop polls, and file I/O that must fsync runs in a worker thread.

Guests are started with ``setsid -f`` so that QEMU runs in its own session and is re-parented to init at
once: it survives the controller, it never becomes our zombie, and no child watcher thread is spent on it.
Commands whose output is read as they run (qemu-img of offline jobs) are the opposite: ``setpriv
--pdeathsig`` ties them to the controller, so that they never outlive it.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import resource
import select
import shutil
import signal as signal_mod
import socket
import tempfile
from collections.abc import Callable, Sequence
from subprocess import DEVNULL

import anyio
import anyio.to_thread
from anyio.abc import Process

from avirt.errors import HostError
from avirt.hosts.base import FileStamp, FileWatch, Host, RunResult, private_dir_problem
from avirt.hosts.inotify import InotifyWatch


class LocalHost(Host):
    name = "localhost"

    def __init__(self) -> None:
        self._lock_fds: list[int] = []
        _raise_fd_limit()

    async def run(self, argv: Sequence[str], *, input: bytes | None = None) -> RunResult:
        try:
            proc = await anyio.run_process(list(argv), input=input, check=False)
        except OSError as e:
            raise HostError(f"cannot run {argv[0]}: {e.strerror}") from e
        return RunResult(proc.returncode, proc.stdout.decode(errors="replace"),
                         proc.stderr.decode(errors="replace"))

    async def spawn(self, argv: Sequence[str]) -> Process:
        # setpriv asks the kernel for SIGKILL when the thread that forked it (the event loop's) ends, then
        # becomes the command: a controller killed mid-job leaves no qemu-img behind, writing and holding
        # locks. (A controller killed in the microsecond before setpriv's prctl would miss it: the job's
        # record names the pid, and the next controller ends such a survivor.) A missing command is setpriv's
        # exit status 127, with its message on stderr.
        try:
            return await anyio.open_process(["setpriv", "--pdeathsig", "KILL", "--", *argv], stdin=DEVNULL,
                                            start_new_session=True)
        except OSError as e:
            raise HostError(f"cannot run setpriv (util-linux) for {argv[0]}: {e.strerror}") from e

    async def start_detached(
        self, argv_for_socket: Callable[[str], Sequence[str]], *, listen_path: str, log_path: str,
        pass_fds: Sequence[int] = (),
    ) -> None:
        # The socket is bound and listening before QEMU exists and is handed down to it as a descriptor.
        with contextlib.suppress(FileNotFoundError):
            os.unlink(listen_path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            # umask-free: the socket file is created with the directory's protection and then narrowed.
            sock.bind(listen_path)
            os.chmod(listen_path, 0o600)
            sock.listen(16)
            fd = sock.fileno()
            argv = ["setsid", "-f", *argv_for_socket(f"fd={fd}")]
            # The log file is handed to the process; opening a local file for append does not block.
            with open(log_path, "ab", buffering=0) as log:  # noqa: ASYNC230
                os.chmod(log_path, 0o600)
                try:
                    # A session of its own from the first instant: a Ctrl-C in the controller's terminal
                    # must not reach setsid (or QEMU) through our process group.
                    proc = await anyio.run_process(argv, stdin=DEVNULL, stdout=log, stderr=log,
                                                   pass_fds=[fd, *pass_fds], start_new_session=True,
                                                   check=False)
                except OSError as e:
                    raise HostError(f"cannot run {argv[2]}: {e.strerror}") from e
            if proc.returncode != 0:
                raise HostError(f"setsid failed with status {proc.returncode}")
        finally:
            # The process holds its own copy; ours must go, or a dead process would still look listening.
            sock.close()

    async def connect_unix(self, path: str) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.setblocking(False)
        try:
            # A unix connect completes or fails at once (the listener's backlog takes it): no waiting here.
            sock.connect(path)
        except OSError:
            sock.close()
            raise
        return sock

    async def wait_exit(self, pid: int, *, pidfile: str | None = None) -> None:
        # A pidfd turns readable once every thread of the process has exited; a zombie main thread is not
        # enough (QEMU's vCPU threads outlive it by milliseconds).
        try:
            pidfd = os.pidfd_open(pid)
        except ProcessLookupError:
            return
        try:
            await anyio.wait_readable(pidfd)
        finally:
            os.close(pidfd)

    async def pid_alive(self, pid: int) -> bool:
        if pid <= 0:
            return False
        try:
            pidfd = os.pidfd_open(pid)
        except ProcessLookupError:
            return False
        try:
            poller = select.poll()
            poller.register(pidfd, select.POLLIN)
            return not poller.poll(0)  # readable = exited (also when not yet reaped)
        finally:
            os.close(pidfd)

    async def cpu_times_ns(self, ids: Sequence[int]) -> list[int]:
        return await anyio.to_thread.run_sync(_cpu_times_ns, list(ids))

    async def kill(self, pid: int, signal: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal_mod.Signals(signal))

    async def read_text(self, path: str) -> str | None:
        try:
            return await anyio.Path(path).read_text()
        except FileNotFoundError:
            return None

    async def read_head(self, path: str, size: int) -> bytes | None:
        try:
            return await anyio.to_thread.run_sync(_read_head, path, size)
        except (OSError, ValueError):  # missing, unreadable, a NUL in the name: the caller's program says
            return None

    async def write_atomic(self, path: str, text: str, *, mode: int = 0o600, durable: bool = True) -> None:
        await anyio.to_thread.run_sync(_write_atomic, path, text.encode(), mode, durable)

    async def free_space(self, path: str) -> int:
        try:
            st = await anyio.to_thread.run_sync(os.statvfs, path)
        except OSError as e:
            raise HostError(f"cannot tell the free space of {path}: {e.strerror}") from e
        return st.f_bavail * st.f_frsize

    async def free_port(self, address: str) -> int:
        # The kernel picks a port nobody holds; QEMU binds it a few milliseconds later. SPICE has no
        # autoport of its own, and libvirt allocates its ports the same way.
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.bind((address, 0))
            port: int = probe.getsockname()[1]
        return port

    async def short_dir(self) -> str:
        path = f"/tmp/avirt-{os.getuid()}"  # not $TMPDIR: that may be as long as the paths this shortens
        await anyio.to_thread.run_sync(_private_dir, path)
        return path

    async def symlink(self, target: str, link: str) -> None:
        await anyio.to_thread.run_sync(_symlink, target, link)

    async def exists(self, path: str) -> bool:
        return await anyio.Path(path).exists()

    async def stat_files(self, paths: Sequence[str]) -> dict[str, FileStamp]:
        return await anyio.to_thread.run_sync(_stat_files, list(paths))

    def file_watch(self) -> FileWatch | None:
        try:
            return InotifyWatch()
        except OSError:  # out of inotify instances (fs.inotify.max_user_instances): stamps will do
            return None

    async def make_dirs(self, path: str, *, mode: int = 0o700) -> None:
        try:
            await anyio.Path(path).mkdir(mode=mode, parents=True, exist_ok=True)
        except (OSError, ValueError) as e:  # ValueError: a NUL byte, which no path can hold
            reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
            raise HostError(f"{self.name}: cannot create {path}: {reason}") from e

    async def list_dir(self, path: str) -> list[str]:
        try:
            return sorted([p.name async for p in anyio.Path(path).iterdir()])
        except FileNotFoundError:
            return []

    async def remove_tree(self, path: str) -> None:
        await anyio.to_thread.run_sync(_remove_tree, path)

    async def fresh_dir(self, path: str, files: dict[str, str]) -> None:
        try:
            data = {name: text.encode() for name, text in files.items()}
            await anyio.to_thread.run_sync(_fresh_dir, path, data)
        except (OSError, ValueError) as e:  # ValueError: a NUL byte, which no path can hold
            reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
            raise HostError(f"{self.name}: cannot create {path}: {reason}") from e

    async def lock(self, path: str) -> bool:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno in (errno.EWOULDBLOCK, errno.EACCES):
                return False
            raise
        self._lock_fds.append(fd)
        return True

    async def aclose(self) -> None:
        while self._lock_fds:
            os.close(self._lock_fds.pop())


def _raise_fd_limit() -> None:
    """Each watched guest holds two descriptors (its monitor socket and its pidfd): a soft limit of 1024
    would stop a controller at about 500 guests, so take all that the hard limit allows."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _read_head(path: str, size: int) -> bytes:
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)  # a FIFO must not hang the thread
    try:
        return os.read(fd, size)
    finally:
        os.close(fd)


def _write_atomic(path: str, data: bytes, mode: int, durable: bool) -> None:
    directory = os.path.dirname(path) or "."
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix="~")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fchmod(f.fileno(), mode)
            if durable:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    if not durable:
        return
    dfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def _private_dir(path: str) -> None:
    try:
        with contextlib.suppress(FileExistsError):
            os.mkdir(path, 0o700)
        st = os.lstat(path)
    except OSError as e:
        raise HostError(f"cannot create {path}: {e.strerror}") from None
    problem = private_dir_problem(st.st_mode, st.st_uid, os.getuid())
    if problem:
        raise HostError(f"{path} {problem}: it cannot hold avirt's short socket links")


def _symlink(target: str, link: str) -> None:
    with contextlib.suppress(OSError):
        if os.readlink(link) == target:
            return
    tmp = f"{link}.{os.urandom(4).hex()}~"
    os.symlink(target, tmp)
    os.replace(tmp, link)


def _stat_files(paths: list[str]) -> dict[str, FileStamp]:
    stamps = {}
    for path in paths:
        try:
            st = os.stat(path)
        except OSError:
            continue
        stamps[path] = FileStamp(st.st_dev, st.st_ino, st.st_mtime_ns, st.st_ctime_ns, st.st_size)
    return stamps


def _fresh_dir(path: str, files: dict[str, bytes]) -> None:
    _remove_tree(path)
    os.makedirs(path, mode=0o700, exist_ok=True)
    for name, data in files.items():
        # Written in place: in a directory this new no reader can see a file before it is whole (a
        # controller that dies meanwhile left no QEMU, and its run directory goes at the next start).
        fd = os.open(os.path.join(path, name), os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(data)


def _remove_tree(path: str) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


def _cpu_times_ns(ids: list[int]) -> list[int]:
    """The CPU times of ``ids`` from /proc, in order (run in a worker thread: one hop for them all)."""
    hz = os.sysconf("SC_CLK_TCK")
    times = []
    for pid in ids:
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                stat = f.read()
        except (FileNotFoundError, ProcessLookupError):
            times.append(0)
            continue
        fields = stat[stat.rindex(b")") + 2 :].split()
        ticks = int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of proc(5))
        times.append(ticks * 1_000_000_000 // hz)
    return times
