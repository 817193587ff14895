"""Images without a domain: read, create, commit, rebase and convert qcow2/raw files on this machine.

The reads are coroutines; the writes return an :class:`~avirt.offline.imagejob.ImageJob` at once, which
runs when it is awaited (or inside ``async with job:``)::

    chain = await avirt.offline.info("/vm/active.qcow2")             # [ImageInfo...], top first
    await avirt.offline.commit("/vm/active.qcow2", base="/vm/base.qcow2")

Formats are never probed. Each image's own format is a keyword (``fmt``, default ``"qcow2"``); the
formats of backing files come from the image headers, and a new backing link always names its format
(``-F``): given by the caller, or read from the chain it already belongs to. Paths are made absolute
(relative to the current directory) before they reach ``qemu-img``, so a name that starts with a dash or
holds a colon is never read as an option or a protocol; backing names are written absolute.
"""

from __future__ import annotations

import os

from avirt.errors import InvalidArgumentError, OperationInvalidError
from avirt.events.model import JobKind
from avirt.hosts.base import Host
from avirt.models import ImageInfo
from avirt.offline.imagejob import ImageJob, ImageJobRunner, Step
from avirt.offline.qemu_img import QEMU_IMG, ChainEntry, allocated_bytes, backing_chain, image_chain
from avirt.offline.safety import check_commit_space, unlocked_chain

_runner: ImageJobRunner | None = None


def _local() -> ImageJobRunner:
    """One runner on this machine for every image job of the process (created on first use)."""
    global _runner
    if _runner is None:
        from avirt.hosts.local import LocalHost

        _runner = ImageJobRunner(LocalHost())
    return _runner


def _host() -> Host:
    return _local().host


async def info(path: str, *, chain: bool = True, fmt: str = "qcow2") -> list[ImageInfo]:
    """The image and (``chain=True``) every backing file below it, top first, with each layer's own
    allocation (``ImageInfo.allocated``); an image a running QEMU holds can be read too."""
    return await image_chain(_host(), _absolute(path), fmt, whole=chain)


async def allocation(path: str, *, fmt: str = "qcow2") -> tuple[int, int]:
    """``(allocated_bytes, virtual_size)``: guest data stored in this image alone (not in its backing
    files, from ``qemu-img map``), and the size of the disk it presents."""
    path = _absolute(path)
    (entry,) = await backing_chain(_host(), path, fmt, whole=False)
    return await allocated_bytes(_host(), path, fmt), entry.virtual_size


def create(path: str, fmt: str = "qcow2", *, size: int | None = None, backing: str | None = None,
           backing_format: str | None = None) -> ImageJob:
    """A new image: ``size`` bytes, or an overlay on ``backing`` (whose format must be given; the size
    defaults to the backing file's). An existing file is never overwritten."""
    if backing is not None and backing_format is None:
        raise InvalidArgumentError("a backing file needs backing_format: avirt never lets qemu-img probe one")
    if backing is None and size is None:
        raise InvalidArgumentError("an image without a backing file needs a size")
    path = _absolute(path)
    argv = [QEMU_IMG, "create", "-q", "-f", fmt]
    if backing is not None:
        argv += ["-F", backing_format or "", "-b", _absolute(backing)]
    argv.append(path)
    if size is not None:
        argv.append(str(size))

    async def plan() -> tuple[list[Step], int]:
        await _refuse_existing(path)
        return [Step(tuple(argv))], size or 0

    return ImageJob(_local(), "create", path, JobKind.COPY, plan)


def commit(top: str, *, base: str | None = None, keep_top: bool = False, fmt: str = "qcow2",
           bandwidth: int | None = None) -> ImageJob:
    """Write the data of ``top`` and of every layer between it and ``base`` into ``base`` (default:
    ``top``'s backing file), so that ``base`` alone shows what ``top`` showed.

    ``keep_top=False``: ``top`` ends as an overlay directly on ``base`` (``qemu-img commit`` empties it
    when ``base`` is its own backing file; for a deeper base it keeps its clusters, now equal to the
    base's, and is rebased onto ``base`` without copying). ``keep_top=True``: ``top`` is not touched.
    Layers between ``top`` and ``base`` are never changed (other images may still use them).
    ``bandwidth`` limits qemu-img to that many bytes per second.

    Before writing, the job fails with ``ImageLockedError`` when another process holds an image of the
    chain, and with ``InsufficientSpaceError`` when the data may not fit on the base's filesystem. If it
    is cancelled or fails, every byte is still readable through ``top``: only ``base`` changed, and
    only where the layers above hide it.
    """
    if bandwidth is not None and bandwidth <= 0:
        raise InvalidArgumentError("bandwidth must be > 0 bytes/s (None = unlimited)")
    top = _absolute(top)
    wanted = _absolute(base) if base is not None else None

    async def plan() -> tuple[list[Step], int]:
        chain = await unlocked_chain(_host(), top, fmt)
        if len(chain) < 2:
            raise OperationInvalidError(f"{top} has no backing file to commit into")
        index = 1 if wanted is None else _index(chain, wanted, top)
        await check_commit_space(_host(), chain, 0, index)
        rate = ["-r", str(bandwidth)] if bandwidth else []
        if index == 1:
            argv = (QEMU_IMG, "commit", "-p", *rate, *(["-d"] if keep_top else []), "-f", fmt, top)
            return [Step(argv)], chain[0].virtual_size
        steps = [Step((QEMU_IMG, "commit", "-p", *rate, "-f", fmt, "-b", chain[index].path, top), 3.0)]
        if not keep_top:
            steps.append(Step((QEMU_IMG, "rebase", "-u", "-f", fmt, "-F", chain[index].format,
                               "-b", chain[index].path, top), 0.1))
        return steps, chain[0].virtual_size

    return ImageJob(_local(), "commit", top, JobKind.COMMIT, plan)


def rebase(image: str, backing: str | None, *, backing_format: str | None = None, unsafe: bool = False,
           fmt: str = "qcow2") -> ImageJob:
    """Make ``backing`` (None: no backing file) the backing file of ``image``.

    Safe (the default): qemu-img copies into ``image`` whatever differs between the old and the new
    backing chain, so ``image`` shows the same data afterwards (a pull). ``unsafe=True`` only rewrites
    the header: right when the new backing file holds the same data, silent corruption otherwise.
    ``backing_format`` defaults to the format recorded for ``backing`` in ``image``'s current chain; a
    backing file outside that chain needs it given.
    """
    image = _absolute(image)
    new = _absolute(backing) if backing else None

    async def plan() -> tuple[list[Step], int]:
        chain = await unlocked_chain(_host(), image, fmt)
        argv = [QEMU_IMG, "rebase", "-u" if unsafe else "-p", "-f", fmt]
        if new is None:
            argv += ["-b", ""]
        else:
            bfmt = backing_format or next((e.format for e in chain[1:] if e.path == new), None)
            if bfmt is None:
                raise OperationInvalidError(f"{new} is not in the chain of {image}: give backing_format")
            argv += ["-F", bfmt, "-b", new]
        return [Step((*argv, image))], chain[0].virtual_size

    return ImageJob(_local(), "rebase", image, JobKind.PULL, plan)


def convert(src: str, dest: str, fmt: str, *, src_fmt: str = "qcow2",
            bandwidth: int | None = None) -> ImageJob:
    """A new image ``dest`` in format ``fmt`` with the data ``src`` shows through its whole chain (the
    copy has no backing file). An existing ``dest`` is never overwritten."""
    if bandwidth is not None and bandwidth <= 0:
        raise InvalidArgumentError("bandwidth must be > 0 bytes/s (None = unlimited)")
    src, dest = _absolute(src), _absolute(dest)
    rate = ["-r", str(bandwidth)] if bandwidth else []

    async def plan() -> tuple[list[Step], int]:
        await _refuse_existing(dest)
        (entry,) = await backing_chain(_host(), src, src_fmt, whole=False)
        return [Step((QEMU_IMG, "convert", "-p", *rate, "-f", src_fmt, "-O", fmt, src, dest))], \
            entry.virtual_size

    return ImageJob(_local(), "convert", dest, JobKind.COPY, plan)


async def _refuse_existing(path: str) -> None:
    if await _host().exists(path):
        raise OperationInvalidError(f"{path} already exists")


def _absolute(path: str) -> str:
    return os.path.abspath(path)  # the current directory is known to the process: no I/O


def _index(chain: list[ChainEntry], path: str, top: str) -> int:
    for index, entry in enumerate(chain[1:], start=1):
        if os.path.normpath(entry.path) == path:
            return index
    raise OperationInvalidError(f"{path} is not below {top} in its backing chain")
