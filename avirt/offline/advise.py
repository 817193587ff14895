"""Commit or pull? Which way of dropping one layer of a backing chain moves fewer bytes.

Two images, an overlay and its backing file, can become one in two ways:

* **commit**: the overlay's own data is written down into the backing file, which then stands for both
  (``block_commit`` with ``shallow=True``, or ``avirt.offline.commit``). It moves what the overlay
  stores: its allocation.
* **pull**: the backing file's data is copied up into the overlay, which then backs onto what lay
  below (``block_pull``, or a safe ``avirt.offline.rebase``). It moves what the backing file holds and
  the overlay does not (the overlay's own clusters hide the rest).

A layer's allocation alone does not say where its clusters lie, so the pull figure is a bound: the
backing file can contribute no more than it holds, and no more than the part of the disk the overlay
leaves uncovered. With a fully allocated backing file (a typical base image) the bound is exact, and it
gives the rule of thumb: an overlay more than half allocated is cheaper to pull, under half to commit.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from avirt.errors import InvalidArgumentError
from avirt.models import ImageInfo


@dataclass(frozen=True)
class Advice:
    """The cheaper way to merge ``figures["overlay"]`` with its backing file, and the numbers behind it.

    ``figures``: ``overlay`` and ``backing`` (paths), ``virtual_size``, ``overlay_allocated`` and
    ``backing_allocated`` (bytes each image stores itself), ``commit_bytes`` (what a commit moves) and
    ``pull_bytes`` (at most what a pull moves), all in bytes.
    """

    direction: Literal["commit", "pull"]
    reason: str
    figures: dict[str, int | str]


def advise_reduce(chain: Sequence[ImageInfo], layer: int = 0) -> Advice:
    """Whether to merge ``chain[layer]`` (default: the active image) with its backing file
    ``chain[layer + 1]`` by a commit or by a pull.

    ``chain`` is a backing chain top first, with each layer's own allocation, as
    ``Domain.block_chain()`` and ``avirt.offline.info()`` return it. Ties go to commit (it leaves the
    overlay's own data where it is written once).
    """
    if not 0 <= layer < len(chain) - 1:
        raise InvalidArgumentError(f"layer {layer} has no backing file in a chain of {len(chain)} images")
    overlay, backing = chain[layer], chain[layer + 1]
    size = overlay.virtual_size
    commit_bytes = overlay.allocated
    pull_bytes = min(backing.allocated, max(0, size - overlay.allocated))
    share = overlay.allocated / size if size else 0.0
    direction: Literal["commit", "pull"] = "pull" if pull_bytes < commit_bytes else "commit"
    if direction == "pull":
        reason = (f"the overlay is {share:.0%} allocated: pulling moves at most {_mib(pull_bytes)} from "
                  f"its backing file, committing would move {_mib(commit_bytes)}")
    else:
        reason = (f"the overlay is {share:.0%} allocated: committing moves {_mib(commit_bytes)}, pulling "
                  f"could move up to {_mib(pull_bytes)}")
    return Advice(direction, reason, {
        "overlay": overlay.path, "backing": backing.path, "virtual_size": size,
        "overlay_allocated": overlay.allocated, "backing_allocated": backing.allocated,
        "commit_bytes": commit_bytes, "pull_bytes": pull_bytes,
    })


def _mib(n: int) -> str:
    return f"{n / (1 << 20):.1f} MiB"
