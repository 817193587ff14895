"""What avirt checks before a commit touches a byte.

* **Locks**: an image that another process holds (a running QEMU, ``qemu-io``...) is refused with
  :class:`~avirt.errors.ImageLockedError`: the chain is read without ``-U`` (force-share), so qemu-img
  probes the lock of every layer in the same run.
* **Space**: a commit writes the data of the layers above its base into the base. What it can write is
  bounded by the bytes those layers occupy on disk; when that bound does not fit in the free space of
  the base's filesystem, the exact figure is computed from ``qemu-img map`` (the data above the base
  that the base does not already hold: those clusters are overwritten in place) and, if that does not
  fit either, the commit is refused with :class:`~avirt.errors.InsufficientSpaceError`. An allowance
  for qcow2 metadata (L2 and refcount tables) is added to both figures.
* **Sharing**: which other domains read an image through their backing chains is the image index's
  question (:mod:`avirt.offline.index`, by file identity); the driver refuses to commit into a base that
  other domains use unless the caller allows it.
"""

from __future__ import annotations

from collections.abc import Sequence

from avirt.errors import ImageLockedError, InsufficientSpaceError
from avirt.hosts.base import Host
from avirt.offline.qemu_img import ChainEntry, backing_chain, data_extents

#: qcow2 metadata a commit may add: an L2 entry and a refcount per 64 KiB cluster are 1/6500 of the
#: data, but a new L2 table or refcount block is a whole cluster; 1/256 plus 1 MiB covers both.
METADATA_FRACTION = 256
METADATA_FIXED = 1 << 20


async def unlocked_chain(host: Host, path: str, fmt: str) -> list[ChainEntry]:
    """The backing chain of ``path`` (top first), read with qemu-img's lock probe on every layer:
    :class:`ImageLockedError` if another process holds any of them."""
    try:
        return await backing_chain(host, path, fmt, share=False)
    except ImageLockedError as e:
        raise ImageLockedError(f"the chain of {path} is in use by another process: {e.stderr.strip()}",
                               e.returncode, e.stderr) from None


async def check_commit_space(host: Host, chain: Sequence[ChainEntry], top: int, base: int) -> None:
    """Refuse a commit of ``chain[top:base]`` into ``chain[base]`` (chain top first) whose writes could
    exceed the free space where ``chain[base]`` lives."""
    base_image = chain[base]
    available = await host.free_space(base_image.path)
    bound = _with_metadata(sum(entry.actual_size for entry in chain[top:base]))
    if bound <= available:
        return
    above = await data_extents(host, chain[top].path, chain[top].format, above=base - top)
    held = await data_extents(host, base_image.path, base_image.format, alone=True)
    needed = _with_metadata(_length(above) - _overlap(above, held))
    if needed > available:
        raise InsufficientSpaceError(base_image.path, needed, available)


def _with_metadata(data: int) -> int:
    return data + data // METADATA_FRACTION + METADATA_FIXED


def _length(ranges: Sequence[tuple[int, int]]) -> int:
    return sum(end - start for start, end in ranges)


def _overlap(a: Sequence[tuple[int, int]], b: Sequence[tuple[int, int]]) -> int:
    """Bytes in both sets of sorted, disjoint ranges."""
    total, i, j = 0, 0, 0
    while i < len(a) and j < len(b):
        total += max(0, min(a[i][1], b[j][1]) - max(a[i][0], b[j][0]))
        if a[i][1] < b[j][1]:
            i += 1
        else:
            j += 1
    return total
