"""Running ``qemu-img`` on a host and turning its answers into data.

Formats are never probed where avirt knows them: the caller says what the top image is, and the formats of
the layers below come from what qemu-img reads in each header. Reads use ``-U`` (force-share) so that a
chain that a running QEMU holds locked can still be inspected.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from avirt.errors import ImageError, ImageLockedError, InvalidArgumentError
from avirt.hosts.base import Host
from avirt.models import ImageInfo

QEMU_IMG = "qemu-img"


@dataclass(frozen=True)
class ChainEntry:
    """One layer of a backing chain as qemu-img reports it."""

    path: str
    format: str
    virtual_size: int
    actual_size: int
    backing: str | None  # the backing file name as stored in the header (may be relative)


async def backing_chain(host: Host, path: str, fmt: str, *, whole: bool = True,
                        share: bool = True) -> list[ChainEntry]:
    """The chain of ``path``, top first: ``path`` itself, then each backing file down to the base
    (``whole=False``: ``path`` alone; its backing files are not opened). ``share=False`` reads it
    the way a writer would find it: :class:`ImageLockedError` if another process holds any layer."""
    argv = [QEMU_IMG, "info", *(["-U"] if share else []), *(["--backing-chain"] if whole else []),
            "--output=json", "-f", fmt, path]
    raw = await _run_json(host, argv)
    layers: list[dict[str, Any]] = raw if isinstance(raw, list) else [raw]
    chain = []
    for i, layer in enumerate(layers):
        # qemu-img reports the top as given; lower layers by their resolved name.
        name = path if i == 0 else layers[i - 1].get("full-backing-filename", layer["filename"])
        chain.append(ChainEntry(
            path=name,
            format=layer["format"],
            virtual_size=int(layer.get("virtual-size", 0)),
            actual_size=int(layer.get("actual-size", 0)),
            backing=layer.get("backing-filename"),
        ))
    return chain


async def image_chain(host: Host, path: str, fmt: str, *, whole: bool = True) -> list[ImageInfo]:
    """:func:`backing_chain` with each layer's own allocation: what ``block_chain`` and ``info`` return."""
    return [ImageInfo(e.path, e.format, e.virtual_size, e.actual_size,
                      await allocated_bytes(host, e.path, e.format))
            for e in await backing_chain(host, path, fmt, whole=whole)]


async def allocated_bytes(host: Host, path: str, fmt: str) -> int:
    """Bytes of guest data stored in this layer alone (its backing files are not opened)."""
    return sum(end - start for start, end in await data_extents(host, path, fmt, alone=True))


async def data_extents(host: Host, path: str, fmt: str, *, alone: bool = False,
                       above: int | None = None) -> list[tuple[int, int]]:
    """``(start, end)`` byte ranges that hold data, from ``qemu-img map``: in ``path`` alone, or through
    its chain in the layers above depth ``above`` (0 = ``path`` itself; None: every layer)."""
    if alone and fmt != "raw":
        spec = "json:" + json.dumps({"driver": fmt, "backing": None,
                                     "file": {"driver": "file", "filename": path}})
        argv = [QEMU_IMG, "map", "-U", "--output=json", spec]
    else:
        argv = [QEMU_IMG, "map", "-U", "--output=json", "-f", fmt, path]
    extents = await _run_json(host, argv)
    limit = 1 if alone else above
    return [(int(e["start"]), int(e["start"]) + int(e["length"])) for e in extents
            if e.get("data") and (limit is None or int(e.get("depth", 0)) < limit)]


async def create_overlay(host: Host, path: str, backing: str, backing_format: str) -> None:
    """A new empty qcow2 image on top of ``backing`` (whose format is given, never probed)."""
    await create_image(host, path, "qcow2", backing=backing, backing_format=backing_format)


async def create_image(host: Host, path: str, fmt: str, *, size: int | None = None,
                       backing: str | None = None, backing_format: str | None = None) -> None:
    argv = [QEMU_IMG, "create", "-q", "-f", fmt]
    if backing is not None:
        if backing_format is None:
            raise InvalidArgumentError("a backing file needs its format: avirt never lets qemu-img probe one")
        argv += ["-F", backing_format, "-b", backing]
    argv.append(path)
    if size is not None:
        argv.append(str(size))
    result = await host.run(argv)
    if result.returncode != 0:
        raise ImageError(f"cannot create {path}: {result.stderr.strip()}", result.returncode, result.stderr)


async def virtual_size(host: Host, path: str, fmt: str) -> int:
    info = await _run_json(host, [QEMU_IMG, "info", "-U", "--output=json", "-f", fmt, path])
    return int(info["virtual-size"])


async def _run_json(host: Host, argv: list[str]) -> Any:
    result = await host.run(argv)
    if result.returncode != 0:
        message = result.stderr.strip() or f"{argv[0]} {argv[1]} failed"
        error = ImageLockedError if "lock" in message else ImageError
        raise error(message, result.returncode, result.stderr)
    try:
        return json.loads(result.stdout)
    except json.JSONDecodeError as e:
        raise ImageError(f"{argv[0]} {argv[1]} printed no JSON: {e}", result.returncode, result.stderr) from e
