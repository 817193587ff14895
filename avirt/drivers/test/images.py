"""The test driver's disk images: image files and their backing chains, in memory.

The QEMU driver learns a disk's chain from the image files (each qcow2 header names its backing file);
the test driver keeps the same facts in an :class:`ImageStore`, one per connection: path -> :class:`Image`
with its format, virtual size, backing file and the guest data it stores itself. Following ``backing``
from a disk's source gives the disk's chain, top first, exactly as ``qemu-img info --backing-chain`` would.

Guest data is kept per 1 MiB cluster as a pattern byte (``data[cluster] = 0x44``), so a simulated job
moves data the way QEMU moves bytes and the guest's view through a chain (:meth:`ImageStore.view`) can be
checked before and after: a commit or a pull must never change it. The chain operations below are the
effects of the QEMU driver's jobs on the files, nothing more:

* :func:`commit`: the data of ``chain[top:base]`` goes into ``chain[base]``; an intermediate ``top`` makes
  the image above it back onto ``base`` (an active commit instead makes ``base`` the disk's image, which
  the caller does). The committed images stay as they were, as with ``block-commit`` and
  ``qemu-img commit -b``.
* :func:`pull`: what the active image reads from ``chain[1:base]`` is copied into it, and ``chain[base]``
  (or nothing) becomes its backing file.
* :func:`copy_into`: a copy target receives the whole view (full) or the active image's own data
  (shallow, on top of the same backing file).

A domain defined with a disk image the store does not know gets that image, empty; if its XML carries
libvirt's ``<backingStore>`` chain, the layers below are created as written there (see
:func:`declared_chains`), which is how a test builds a multi-layer disk without files.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from lxml import etree

from avirt.errors import ImageError
from avirt.models import ImageInfo

MiB = 1 << 20
#: The granularity of simulated guest data.
CLUSTER = MiB
#: What an empty qcow2 image occupies on disk (header, L1 and refcount tables).
QCOW2_OVERHEAD = 196608
#: The virtual size of an image the store creates without being told one.
DEFAULT_SIZE = 1 << 30


@dataclass
class Image:
    path: str
    format: str
    virtual_size: int
    backing: str | None = None
    #: cluster index -> pattern byte: the guest data this image stores itself.
    data: dict[int, int] = field(default_factory=dict)

    def info(self) -> ImageInfo:
        allocated = len(self.data) * CLUSTER
        overhead = QCOW2_OVERHEAD if self.format == "qcow2" else 0
        return ImageInfo(self.path, self.format, self.virtual_size, allocated + overhead, allocated)

    def fill(self, pattern: int, offset: int, length: int) -> None:
        """Write ``pattern`` over ``length`` bytes from ``offset`` (both multiples of CLUSTER)."""
        for cluster in range(offset // CLUSTER, (offset + length) // CLUSTER):
            self.data[cluster] = pattern


class ImageStore:
    def __init__(self) -> None:
        self._images: dict[str, Image] = {}

    def __contains__(self, path: str) -> bool:
        return _norm(path) in self._images

    def get(self, path: str) -> Image | None:
        return self._images.get(_norm(path))

    def add(self, image: Image) -> Image:
        self._images[_norm(image.path)] = image
        return image

    def remove(self, path: str) -> None:
        self._images.pop(_norm(path), None)

    def ensure(self, path: str, fmt: str, below: list[tuple[str, str]]) -> None:
        """Make ``path`` exist (an image already there wins, as a file on disk would), with the layers
        ``below`` it (top-down ``(path, format)``, as ``<backingStore>`` lists them) if it is new."""
        if path in self:
            return
        layers = [(path, fmt), *below]
        for (upper, upper_fmt), lower in zip(layers, [*below, None], strict=True):
            if upper not in self:
                self.add(Image(upper, upper_fmt, DEFAULT_SIZE, lower[0] if lower else None))

    def chain(self, path: str) -> list[Image]:
        """The chain of ``path``, top first, down to the image with no backing file."""
        chain: list[Image] = []
        current: str | None = path
        while current is not None:
            image = self.get(current)
            if image is None:
                below = f" (backing file of {chain[-1].path})" if chain else ""
                raise ImageError(f"could not open '{current}'{below}: No such file or directory",
                                 1, "No such file or directory")
            if any(seen is image for seen in chain):
                raise ImageError(f"backing chain of {path} loops at {current}", 1)
            chain.append(image)
            current = image.backing
        return chain

    def view(self, path: str) -> dict[int, int]:
        """What the guest reads through the chain of ``path``: cluster -> pattern."""
        merged: dict[int, int] = {}
        for image in reversed(self.chain(path)):
            merged.update(image.data)
        return merged


def commit(chain: list[Image], top: int, base: int) -> None:
    """The data of ``chain[top:base]`` into ``chain[base]``; an intermediate top's upper image backs
    onto base."""
    for image in reversed(chain[top:base]):  # bottom up: the upper layer's clusters win
        chain[base].data.update(image.data)
    if top > 0:
        chain[top - 1].backing = chain[base].path


def pull(chain: list[Image], base: int) -> None:
    """Copy into the active image what it reads from ``chain[1:base]``; ``chain[base]`` (none if
    ``base == len(chain)``) becomes its backing file."""
    active = chain[0]
    merged: dict[int, int] = {}
    for image in reversed(chain[1:base]):
        merged.update(image.data)
    merged.update(active.data)
    active.data = merged
    active.backing = chain[base].path if base < len(chain) else None


def copy_into(chain: list[Image], dest: Image, *, shallow: bool) -> None:
    """Fill a copy target: the active image's own data on its backing file (shallow), or everything."""
    if shallow and len(chain) > 1:
        dest.data, dest.backing = dict(chain[0].data), chain[1].path
        return
    merged: dict[int, int] = {}
    for image in reversed(chain):
        merged.update(image.data)
    dest.data, dest.backing = merged, None


def declared_chains(xml: str) -> dict[str, list[tuple[str, str]]]:
    """Disk target -> the ``<backingStore>`` layers under it, top-down ``(path, format)``.

    Only called on XML that ``parse_domain_xml`` accepted (so it is well formed and in the subset).
    """
    parser = etree.XMLParser(resolve_entities=False, no_network=True)
    root = etree.fromstring(xml.encode(), parser)
    chains: dict[str, list[tuple[str, str]]] = {}
    for disk in root.iterfind("devices/disk"):
        target = disk.find("target")
        if target is None:
            continue
        layers = []
        node = disk.find("backingStore")
        while node is not None:
            source = node.find("source")
            path = source.get("file") or source.get("dev") if source is not None else None
            if not path:
                break  # <backingStore/>: the end of the chain
            fmt = node.find("format")
            layers.append((path, fmt.get("type", "raw") if fmt is not None else "raw"))
            node = node.find("backingStore")
        chains[target.get("dev", "")] = layers
    return chains


def _norm(path: str) -> str:
    return os.path.normpath(path)
