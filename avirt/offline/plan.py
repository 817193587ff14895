"""The qemu-img steps of a block job on a shut-off domain, planned from the disk's chain.

Chains are lists top first (index 0 = the active image), as ``qemu-img info --backing-chain`` gives them.
The plans follow the semantics of the online jobs exactly (see ``drivers/qemu/blockjobs.py``):

* commit of the active image into ``base``: ``qemu-img commit -b BASE ACTIVE`` (one multi-layer run);
  ``base`` becomes the disk's image; the images above it are no longer valid (``delete`` removes them);
* commit of an intermediate ``top`` into ``base``: ``qemu-img commit -b BASE TOP``, then
  ``qemu-img rebase -u -F FMT -b BASE`` of the image that sat on ``top`` (relative name with
  ``relative``); the disk's image stays;
* pull down to ``base`` (or everything): a safe ``qemu-img rebase -b BASE`` (or ``-b ''``) of the active
  image, which copies what it read from the layers in between. It runs with ``-t writethrough``: in its
  default cache mode qemu-img writes the new header while the copied clusters' L2 entries are still in
  its qcow2 cache, so a kill in that window (tens of milliseconds, seen on QEMU 7.2) leaves an image that
  no longer has a backing file and has lost the data it had not mapped yet. Writethrough flushes each
  write's metadata first: a kill at any moment leaves either the old header (the rebase can run again)
  or all the data.

Formats are always passed (``-f``, ``-F``): qemu-img never probes one.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from avirt.offline.imagejob import Step
from avirt.offline.qemu_img import QEMU_IMG, ChainEntry


@dataclass(frozen=True)
class OfflinePlan:
    steps: list[Step]
    size: int  # bytes that progress is counted in (the disk's virtual size)
    #: The disk's new image and format once every step succeeded (None: unchanged).
    new_source: tuple[str, str] | None = None
    #: Images that the job makes useless, removed after success when the caller asked for it.
    obsolete: list[str] = field(default_factory=list)


def commit_plan(chain: list[ChainEntry], top: int, base: int, *, relative: bool) -> OfflinePlan:
    top_image, base_image = chain[top], chain[base]
    steps = [Step((QEMU_IMG, "commit", "-p", "-f", top_image.format, "-b", base_image.path,
                   top_image.path), weight=3.0)]
    if top == 0:
        return OfflinePlan(steps, top_image.virtual_size, (base_image.path, base_image.format),
                           [entry.path for entry in chain[:base]])
    above = chain[top - 1]
    name = os.path.relpath(base_image.path, os.path.dirname(above.path)) if relative else base_image.path
    steps.append(Step((QEMU_IMG, "rebase", "-u", "-f", above.format, "-F", base_image.format, "-b", name,
                       above.path), weight=0.1))
    return OfflinePlan(steps, chain[0].virtual_size, None, [entry.path for entry in chain[top:base]])


def pull_plan(chain: list[ChainEntry], base: int | None) -> OfflinePlan:
    active = chain[0]
    rebase = (QEMU_IMG, "rebase", "-p", "-t", "writethrough", "-f", active.format)  # see the docstring
    if base is None:
        argv: tuple[str, ...] = (*rebase, "-b", "", active.path)
    else:
        argv = (*rebase, "-F", chain[base].format, "-b", chain[base].path, active.path)
    return OfflinePlan([Step(argv)], active.virtual_size)
