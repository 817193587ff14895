"""A chain of images read from their headers, as libvirt reads it, without running a program.

Starting a guest needs each disk's layers (path and format, top first) before QEMU is spawned: the
command line names every layer, and a missing backing file must be named before anything runs.
``qemu-img info --backing-chain`` answers that, but a process costs milliseconds, most of a start's
own overhead. What the answer needs sits in the first bytes of each qcow2 file, so on a host that
reads files cheaply this module reads them:

* a qcow2 header (big-endian, QEMU's docs/interop/qcow2.txt) gives the backing file's name at
  ``backing_file_offset`` and, in the header extension ``0xE2792ACA``, its format;
* a relative backing name is relative to the directory of the image that names it (QEMU's rule);
* a raw image ends its chain.

Only the plain case is taken here: anything else (a backing file without a recorded format, which
only probing could tell; a protocol or ``json:`` name; an external data file; encryption; a header
marked corrupt; a version other than 2 or 3; a file that cannot be read; a chain deeper than
:data:`MAX_DEPTH`) is handed to ``qemu-img``, which then gives its own answer or its own error. So this
is never less strict than qemu-img, only faster where the answer is certain.
"""

from __future__ import annotations

import os
import struct

from avirt.hosts.base import Host
from avirt.offline.qemu_img import backing_chain

QCOW2_MAGIC = b"QFI\xfb"
#: Bytes read from each image: the header, its extensions and the backing name lie in its first cluster
#: (at least 512 bytes); a name beyond what was read is left to qemu-img.
HEAD_SIZE = 65536
#: Longer chains are unusual enough to leave to qemu-img (which allows 1,000 layers).
MAX_DEPTH = 64

_EXT_END = 0
_EXT_BACKING_FORMAT = 0xE2792ACA
_EXT_DATA_FILE = 0x44415441
_INCOMPAT_CORRUPT = 1 << 1
_INCOMPAT_DATA_FILE = 1 << 2
_FORMATS = ("qcow2", "raw")


class Unsure(Exception):
    """The header holds something this module leaves to qemu-img."""


def backing_of(head: bytes) -> tuple[str, str] | None:
    """What a qcow2 header says backs it: ``(name, format)``, or None when nothing does.

    Raises :class:`Unsure` for anything but the plain case."""
    if len(head) < 72 or head[:4] != QCOW2_MAGIC:
        raise Unsure
    version, backing_offset, backing_size = struct.unpack_from(">IQI", head, 4)
    (crypt_method,) = struct.unpack_from(">I", head, 32)
    if version not in (2, 3) or crypt_method != 0:
        raise Unsure
    extensions_at = 72
    if version == 3:
        if len(head) < 104:
            raise Unsure
        (incompatible,) = struct.unpack_from(">Q", head, 72)
        (header_length,) = struct.unpack_from(">I", head, 100)
        if incompatible & (_INCOMPAT_CORRUPT | _INCOMPAT_DATA_FILE) or header_length < 104:
            raise Unsure
        extensions_at = header_length
    fmt: str | None = None
    at = extensions_at
    while True:
        if at + 8 > len(head):
            raise Unsure
        kind, length = struct.unpack_from(">II", head, at)
        if kind == _EXT_END:
            break
        data = head[at + 8:at + 8 + length]
        if len(data) < length:
            raise Unsure
        if kind == _EXT_BACKING_FORMAT:
            fmt = data.decode("ascii", "replace")
        elif kind == _EXT_DATA_FILE:
            raise Unsure
        at += 8 + (length + 7) // 8 * 8
    if backing_offset == 0:
        return None
    end = backing_offset + backing_size
    if backing_size == 0 or end > len(head) or fmt not in _FORMATS:
        raise Unsure
    try:
        name = head[backing_offset:end].decode()
    except UnicodeDecodeError:
        raise Unsure from None
    if not name or "\0" in name or _has_protocol(name):
        raise Unsure
    return name, fmt


def _has_protocol(name: str) -> bool:
    """QEMU reads ``proto:...`` (``nbd:``, ``json:``...) as a protocol, not a file: leave those alone."""
    colon = name.find(":")
    return colon != -1 and "/" not in name[:colon]


async def chain_layers(host: Host, path: str, fmt: str) -> list[tuple[str, str]]:
    """The layers of ``path``'s chain as ``(path, format)``, top first, as ``qemu-img info
    --backing-chain -U`` gives them: from the headers where the host reads files cheaply and the chain
    is plain, else from qemu-img (whose errors, :class:`~avirt.errors.ImageError`, pass through)."""
    layers = await _from_headers(host, path, fmt)
    if layers is None:
        layers = [(e.path, e.format) for e in await backing_chain(host, path, fmt)]
    return layers


async def _from_headers(host: Host, path: str, fmt: str) -> list[tuple[str, str]] | None:
    layers = [(path, fmt)]
    while fmt == "qcow2":
        if len(layers) > MAX_DEPTH:
            return None
        head = await host.read_head(path, HEAD_SIZE)
        if head is None:
            return None
        try:
            backing = backing_of(head)
        except Unsure:
            return None
        if backing is None:
            return layers
        name, fmt = backing
        path = name if name.startswith("/") else os.path.join(os.path.dirname(path), name)
        layers.append((path, fmt))
    if fmt != "raw" or not await host.exists(path):
        return None  # qemu-img names what is wrong
    return layers
