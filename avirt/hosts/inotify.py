"""Linux inotify as a :class:`~avirt.hosts.base.FileWatch`: which of many files changed, for free.

The image index asks, before every commit, whether any image of any shut-off domain changed since it
last read that domain's backing chain. Comparing a ``stat`` of every image costs microseconds per file,
which a fleet of thousands of images turns into milliseconds per commit. inotify answers the same
question by what happened instead: the kernel queues an event when a watched file is written, has its
metadata changed (``ctime``: a rename over it changes the link count), or is moved or removed, and
:meth:`InotifyWatch.changed` drains that queue without waiting. A quiet fleet costs one ``read`` that
finds nothing.

Watches are on inodes, so a file reached through a symbolic link, a hard link or ``..`` has one key.
Reading a file (``qemu-img info``) queues nothing: ``IN_ACCESS`` is not asked for. When the kernel's
queue overflows it says so, and :meth:`changed` returns None: anything may have changed.

libc is called through :mod:`ctypes` (the standard library has no inotify); every call is a syscall that
returns at once, except adding watches, which resolves paths and so runs in a worker thread.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import struct
from collections.abc import Sequence

import anyio.to_thread

from avirt.hosts.base import FileWatch

IN_MODIFY = 0x00000002
IN_ATTRIB = 0x00000004
IN_DELETE_SELF = 0x00000400
IN_MOVE_SELF = 0x00000800
IN_Q_OVERFLOW = 0x00004000
IN_IGNORED = 0x00008000
IN_NONBLOCK = os.O_NONBLOCK
IN_CLOEXEC = os.O_CLOEXEC
#: What makes a watched image possibly different: its bytes, its metadata, its name.
MASK = IN_MODIFY | IN_ATTRIB | IN_DELETE_SELF | IN_MOVE_SELF

_EVENT = struct.Struct("iIII")  # wd, mask, cookie, len (then len bytes of name, unused for file watches)
_libc = ctypes.CDLL(None, use_errno=True)


class InotifyWatch(FileWatch):
    def __init__(self) -> None:
        fd = _libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
        if fd < 0:
            raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))
        self._fd: int = fd

    async def add(self, paths: Sequence[str]) -> dict[str, int]:
        return await anyio.to_thread.run_sync(self._add, list(paths))

    def _add(self, paths: list[str]) -> dict[str, int]:
        keys = {}
        for path in paths:
            wd = _libc.inotify_add_watch(self._fd, os.fsencode(path), MASK)
            if wd >= 0:  # a file gone meanwhile: the caller finds that out by its stamp
                keys[path] = wd
        return keys

    def remove(self, key: int) -> None:
        _libc.inotify_rm_watch(self._fd, key)  # a watch the kernel dropped already: nothing to do

    def changed(self) -> set[int] | None:
        keys: set[int] = set()
        overflow = False
        while True:
            try:
                data = os.read(self._fd, 64 * 1024)
            except BlockingIOError:
                break
            offset = 0
            while offset < len(data):
                wd, mask, _, length = _EVENT.unpack_from(data, offset)
                offset += _EVENT.size + length
                if mask & IN_Q_OVERFLOW:
                    overflow = True
                elif mask & MASK or mask & IN_IGNORED:  # IGNORED: the file is gone, its watch with it
                    keys.add(wd)
        return None if overflow else keys

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self._fd)
