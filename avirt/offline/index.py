"""The image index: which defined domain reads which file, kept so that asking costs the same for one
domain as for thousands.

A commit writes into its base, so before every commit avirt asks which other domains read that base
through their backing chains (:class:`~avirt.errors.SharedImageError`). Reading every other domain's
chain with ``qemu-img`` to answer made each commit cost a process run per domain. The index keeps the
answer instead, and keeps it true:

* **Files by identity.** Each disk's chain is kept as files known by ``(device, inode)``, with a reverse
  map from identity to the disks that read it. Asking is one ``stat`` of the base and one look-up, so a
  base that another domain reaches through a symbolic link, a hard link or a ``..`` path is the same
  file, as it is to the kernel.
* **Two views of a domain.** A running domain reads what its QEMU has open: its chains come from QEMU,
  re-read after every job, snapshot and re-attach (the driver's ``Guest.chains``); the index only follows
  that object (a new one means new chains) and notes the identities. A shut-off domain reads what its
  definition's images point to on disk: those chains are read with ``qemu-img info --backing-chain`` and
  kept, per layer, with the file's change stamp (mtime, ctime, size).
* **Lazy, incremental refresh.** A definition that changes (define, undefine, the end of an offline job,
  an offline snapshot, a guest that stops) only marks its disks stale; stale disks are read at the next
  question, each once. Nothing else is read again unless a file changed: on a host that can notify
  (inotify, :class:`~avirt.hosts.base.FileWatch`) a question first drains the notifications, so its cost
  follows the changes, not the fleet; elsewhere (SSH hosts) it compares every kept stamp with one batched
  ``stat``, microseconds per file, instead of one ``qemu-img`` run per disk. Either way a chain changed
  behind avirt's back (``qemu-img rebase`` by hand) is noticed and read again.
* **Kept across controllers.** Each domain's chains are saved beside its definition
  (``domains/<name>/chains.json``, not fsynced: a lost or stale file only costs a read). A new controller
  loads them, compares their stamps once, and reads only what changed while nobody watched.

What it cannot see: a chain that cannot be read (an image or a backing file missing) is read again at
every question until it can; and on a network file system, inotify does not report writes made by other
machines (stamps would, on a host without a watch).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import anyio

from avirt.errors import HostError, ImageError
from avirt.hosts.base import FileStamp, FileWatch, Host
from avirt.offline.headers import chain_layers

log = logging.getLogger(__name__)

FileId = tuple[int, int]
#: Chains read at once when many disks are stale (each read is a qemu-img process).
READ_CONCURRENCY = 4


class HasPath(Protocol):
    @property
    def path(self) -> str: ...


#: A running domain's chains as its driver holds them: disk -> layers, each with a ``path``.
LiveChains = Mapping[str, Sequence[HasPath]]


@dataclass(frozen=True)
class Reader:
    """A disk that reads files: a shut-off domain's definition (``live=False``) or a running QEMU's."""

    owner: str
    disk: str
    live: bool = False


@dataclass
class _DiskChain:
    """One shut-off disk: its image, and its chain (top first) when read, each file with its stamp."""

    source: str
    format: str
    layers: dict[str, FileStamp] = field(default_factory=dict)  # path -> stamp, top first
    formats: list[str] = field(default_factory=list)
    #: False until the whole chain was read (a missing image or backing file: read again next time).
    complete: bool = False


@dataclass
class _LiveView:
    chains: LiveChains | None = None  # the object last indexed; a different one means new chains
    files: dict[FileId, set[str]] = field(default_factory=dict)  # identity -> disks


class ImageIndex:
    """Which domain reads which file on one host. Every method is safe to call concurrently."""

    def __init__(self, host: Host, saved_at: Callable[[str], str]) -> None:
        self.host = host
        self._saved_at = saved_at  # owner -> its chains.json
        self._disks: dict[Reader, _DiskChain] = {}
        self._owned: dict[str, set[Reader]] = {}  # owner -> its disks in _disks
        self._stale: set[Reader] = set()
        self._incomplete: set[Reader] = set()  # chains that could not be read whole: read at every question
        self._readers: dict[FileId, set[Reader]] = {}
        self._live: dict[str, tuple[Callable[[], LiveChains], _LiveView]] = {}
        self._watch: FileWatch | None = host.file_watch()
        self._watched: dict[int, set[Reader]] = {}  # watch key -> disks whose chain holds that file
        self._keys: dict[Reader, set[int]] = {}
        self._lock = anyio.Lock()

    def close(self) -> None:
        if self._watch is not None:
            self._watch.close()

    # -- what the driver tells -------------------------------------------------------------------------

    async def load(self, definitions: Mapping[str, Sequence[tuple[str, str, str]]]) -> None:
        """At connect: each persistent domain's disks (``(target, source, format)``) with the chains
        saved for it, kept where the saved chain is of the same image and no file changed since."""
        async with self._lock:
            adopted: list[Reader] = []
            for owner, disks in definitions.items():
                saved = _parse(await self.host.read_text(self._saved_at(owner)))
                for target, source, fmt in disks:
                    reader = Reader(owner, target)
                    self._owned.setdefault(owner, set()).add(reader)
                    kept = saved.get(target)
                    if kept is not None and (kept.source, kept.format) == (source, fmt) and kept.complete:
                        self._disks[reader] = kept
                        adopted.append(reader)
                    else:
                        self._disks[reader] = _DiskChain(source, fmt)
                        self._stale.add(reader)
            # Watch first, then compare: a change after the comparison is then notified, not lost.
            for reader in adopted:
                self._set_keys(reader, await self._watch_paths(list(self._disks[reader].layers)))
            paths = [path for reader in adopted for path in self._disks[reader].layers]
            now = await self.host.stat_files(paths)
            for reader in adopted:
                chain = self._disks[reader]
                if all(now.get(path) == stamp for path, stamp in chain.layers.items()):
                    self._link(reader)
                else:
                    self._stale.add(reader)

    def define(self, owner: str, disks: Sequence[tuple[str, str, str]]) -> None:
        """A shut-off domain's disks are (or may be) new: read their chains at the next question. While
        the domain runs its QEMU's chains count; the driver calls this again once it stops."""
        self._drop_disks(owner)
        if owner in self._live:
            return
        for target, source, fmt in disks:
            reader = Reader(owner, target)
            self._owned.setdefault(owner, set()).add(reader)
            self._disks[reader] = _DiskChain(source, fmt)
            self._stale.add(reader)

    def forget(self, owner: str) -> None:
        """The domain is gone (undefined, or a transient one stopped)."""
        self._drop_disks(owner)
        self.stopped(owner)

    def running(self, owner: str, chains: Callable[[], LiveChains]) -> None:
        """The domain runs: what it reads is ``chains()``, its QEMU's (re-indexed whenever that returns a
        new object). Its files on disk are not watched meanwhile: QEMU writes its active images."""
        self._drop_disks(owner)
        self._live[owner] = (chains, _LiveView())

    def stopped(self, owner: str) -> None:
        entry = self._live.pop(owner, None)
        if entry is not None:
            self._unlink_live(owner, entry[1])

    # -- the question ----------------------------------------------------------------------------------

    async def users(self, path: str, *, besides: str) -> list[str]:
        """The domains other than ``besides`` whose disks read the file ``path`` (sorted): directly or
        through their backing chains, under whatever name."""
        async with self._lock:
            await self._catch_up()
            stamp = (await self.host.stat_files([path])).get(path)
            if stamp is None:
                return []
            return sorted({r.owner for r in self._readers.get(stamp.identity, ()) if r.owner != besides})

    async def _catch_up(self) -> None:
        changed = self._watch.changed() if self._watch is not None else None
        if changed is None:
            await self._compare_stamps()
        else:
            for key in changed:
                self._stale.update(self._watched.get(key, ()))
        await self._follow_live()
        stale = self._stale | self._incomplete
        self._stale, self._incomplete = set(), set()
        if stale:
            limit = anyio.Semaphore(READ_CONCURRENCY)

            async def read(reader: Reader) -> None:
                async with limit:
                    await self._read(reader)

            async with anyio.create_task_group() as group:
                for reader in stale:
                    group.start_soon(read, reader)
            for owner in sorted({r.owner for r in stale}):
                await self._save(owner)

    async def _compare_stamps(self) -> None:
        """No notifications (or some were lost): one ``stat`` of every kept file says what changed."""
        paths = {path for chain in self._disks.values() for path in chain.layers}
        now = await self.host.stat_files(sorted(paths))
        for reader, chain in self._disks.items():
            if any(now.get(path) != stamp for path, stamp in chain.layers.items()):
                self._stale.add(reader)

    async def _read(self, reader: Reader) -> None:
        chain = self._disks.get(reader)
        if chain is None:
            return  # forgotten meanwhile
        began = time.time_ns()
        complete = True
        try:
            if chain.format == "raw":
                layers = [(chain.source, "raw")]
            else:
                layers = await chain_layers(self.host, chain.source, chain.format)
        except ImageError as e:
            log.debug("image index: cannot read the chain of %s: %s", chain.source, e)
            layers, complete = [(chain.source, chain.format)], False
        paths = [path for path, _ in layers]
        keys = await self._watch_paths(paths)  # before the stamps: a later change is notified
        stamps = await self.host.stat_files(paths)
        if self._disks.get(reader) is not chain:  # redefined or forgotten while this ran
            self._set_keys(reader, keys, dropped=True)
            return
        self._unlink(reader)
        self._set_keys(reader, keys)
        chain.layers = {path: stamps[path] for path in paths if path in stamps}
        chain.formats = [fmt for path, fmt in layers if path in stamps]
        # A file that changed while it was read may have been read half old: read it again next time.
        chain.complete = complete and len(chain.layers) == len(paths) \
            and all(stamp.ctime_ns < began for stamp in chain.layers.values())
        if not chain.complete:
            self._incomplete.add(reader)
        self._link(reader)

    async def _follow_live(self) -> None:
        fresh = [(owner, view, chains) for owner, (get, view) in self._live.items()
                 if (chains := get()) is not view.chains]
        if not fresh:
            return
        paths = sorted({layer.path for _, _, chains in fresh
                        for layers in chains.values() for layer in layers})
        stamps = await self.host.stat_files(paths)
        for owner, view, chains in fresh:
            if self._live.get(owner, (None, None))[1] is not view:
                continue  # stopped while the files were looked at
            self._unlink_live(owner, view)
            view.chains = chains
            for disk, layers in chains.items():
                for layer in layers:
                    stamp = stamps.get(layer.path)
                    if stamp is not None:
                        view.files.setdefault(stamp.identity, set()).add(disk)
                        self._readers.setdefault(stamp.identity, set()).add(Reader(owner, disk, live=True))

    # -- bookkeeping -----------------------------------------------------------------------------------

    def _link(self, reader: Reader) -> None:
        for stamp in self._disks[reader].layers.values():
            self._readers.setdefault(stamp.identity, set()).add(reader)

    def _unlink(self, reader: Reader) -> None:
        chain = self._disks.get(reader)
        for stamp in chain.layers.values() if chain is not None else ():
            readers = self._readers.get(stamp.identity)
            if readers is not None:
                readers.discard(reader)
                if not readers:
                    del self._readers[stamp.identity]

    def _set_keys(self, reader: Reader, keys: set[int], *, dropped: bool = False) -> None:
        """The watch keys of ``reader``'s files become ``keys`` (none if ``dropped``); a file no disk
        reads any more is no longer watched (inotify gives one key per file, so keys are shared)."""
        old = self._keys.pop(reader, set())
        if not dropped:
            self._keys[reader] = keys
            for key in keys:
                self._watched.setdefault(key, set()).add(reader)
        for key in (old | keys) if dropped else old - keys:
            watchers = self._watched.get(key)
            if watchers is not None:
                watchers.discard(reader)
            if not watchers and self._watch is not None:
                self._watched.pop(key, None)
                self._watch.remove(key)

    def _unlink_live(self, owner: str, view: _LiveView) -> None:
        for identity, disks in view.files.items():
            readers = self._readers.get(identity)
            if readers is not None:
                readers.difference_update(Reader(owner, disk, live=True) for disk in disks)
                if not readers:
                    del self._readers[identity]
        view.files = {}

    def _drop_disks(self, owner: str) -> None:
        for reader in self._owned.pop(owner, ()):
            self._unlink(reader)
            self._set_keys(reader, set(), dropped=True)
            del self._disks[reader]
            self._stale.discard(reader)
            self._incomplete.discard(reader)

    async def _watch_paths(self, paths: Sequence[str]) -> set[int]:
        if self._watch is None or not paths:
            return set()
        return set((await self._watch.add(paths)).values())

    async def _save(self, owner: str) -> None:
        chains = {r.disk: self._disks[r] for r in self._owned.get(owner, ())}
        if not chains:
            return
        text = json.dumps({disk: {
            "source": c.source, "format": c.format, "complete": c.complete,
            "layers": [[path, fmt, s.dev, s.ino, s.mtime_ns, s.ctime_ns, s.size]
                       for (path, s), fmt in zip(c.layers.items(), c.formats, strict=True)]}
            for disk, c in chains.items()})
        try:
            await self.host.write_atomic(self._saved_at(owner), text, durable=False)
        except (OSError, HostError) as e:  # its directory went away (undefined meanwhile), or the host

            log.debug("image index: cannot save the chains of %s: %s", owner, e)


def _parse(text: str | None) -> dict[str, _DiskChain]:
    """A saved chains.json; anything unreadable counts as nothing saved (the chains are read again)."""
    try:
        raw: dict[str, Any] = json.loads(text) if text else {}
        return {disk: _DiskChain(
            entry["source"], entry["format"],
            {path: FileStamp(dev, ino, mtime, ctime, size) for path, _, dev, ino, mtime, ctime, size
             in entry["layers"]},
            [layer[1] for layer in entry["layers"]], bool(entry["complete"]))
            for disk, entry in raw.items()}
    except (ValueError, KeyError, TypeError, AttributeError):
        return {}
