"""Disks as ``-blockdev`` node graphs and the guest-visible device on their bus.

Every disk layer is its own ``-blockdev`` pair (a ``file``/``host_device`` protocol node and a format
node) with a stable node name, so block jobs can name any layer whatever bus the disk sits on. Layers
are numbered from the bottom of the chain: ``vda-1`` is the base image of ``vda`` and ``vda-1-file`` its
protocol node; an overlay added on top later gets the next free number, so no existing name ever
changes. An empty cdrom or floppy drive has no nodes at all: its device is created without a drive, and
media can be inserted later.

libvirt's ``<driver cache=...>`` is two things in QEMU, as libvirt itself maps it: the nodes'
``cache.direct``/``cache.no-flush`` and the device's ``write-cache``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from avirt.config.devices import Disk
from avirt.config.model import DomainConfig
from avirt.drivers.qemu.cmdline.buses import pci_props, sata_bus, usb_bus

__all__ = ["Layer", "disk_args", "disk_device", "layer_nodes", "node_name"]

# cache mode -> (cache.direct, cache.no-flush, device write-cache)
_CACHE = {
    "writeback": (False, False, True), "none": (True, False, True), "writethrough": (False, False, False),
    "directsync": (True, False, False), "unsafe": (False, True, True),
}


@dataclass(frozen=True)
class Layer:
    """One image of a disk's backing chain, as the driver found it on disk."""

    path: str
    format: str
    #: The format node's name in QEMU, once QEMU has the layer open.
    node: str = ""


def node_name(target: str, index: int) -> str:
    """The format node of layer ``index`` (1 = base) of disk ``target``."""
    return f"{target}-{index}"


def disk_args(cfg: DomainConfig, chains: dict[str, list[Layer]]) -> tuple[list[dict[str, object]],
                                                                           list[dict[str, object]]]:
    """The ``-blockdev`` nodes and the ``-device`` of every disk."""
    nodes: list[dict[str, object]] = []
    devices: list[dict[str, object]] = []
    for disk in cfg.disks:
        layers = [replace(layer, node=node_name(disk.target, i))
                  for i, layer in enumerate(chains.get(disk.target, []), start=1)]
        nodes.extend(layer_nodes(disk, layers))
        devices.append(disk_device(cfg, disk, layers[-1].node if layers else None))
    return nodes, devices


def layer_nodes(disk: Disk, layers: list[Layer]) -> list[dict[str, object]]:
    """The ``blockdev-add`` arguments of a disk's layers (bottom first, each with its node name), in the
    order QEMU must open them: each protocol node, then the format node on it, which backs the next."""
    nodes: list[dict[str, object]] = []
    for i, layer in enumerate(layers):
        nodes.append(_protocol_node(disk, layer, first=i == 0))
        nodes.append(_format_node(disk, layer, layers[i - 1].node if i else None, top=i == len(layers) - 1))
    return nodes


def disk_device(cfg: DomainConfig, disk: Disk, drive: str | None) -> dict[str, object]:
    """The disk's ``-device`` (or ``device_add``) on its bus, on top of the format node ``drive`` (None: an
    empty drive)."""
    device = _device(cfg, disk) | {"id": disk.target}
    if drive is not None:
        device["drive"] = drive
    if disk.serial:
        device["serial"] = disk.serial
    if disk.wwn and disk.bus in ("scsi", "sata", "ide"):
        device["wwn"] = int(disk.wwn, 16)
    if disk.boot_order is not None:
        device["bootindex"] = disk.boot_order
    if disk.removable is not None:
        device["removable"] = disk.removable == "on"
    if disk.shareable and disk.device == "disk":
        device["share-rw"] = True
    if disk.cache in _CACHE and disk.device == "disk" and disk.bus != "fdc":
        device["write-cache"] = "on" if _CACHE[disk.cache][2] else "off"
    if disk.error_policy is not None or disk.rerror_policy is not None:
        # libvirt's error_policy sets both directions unless rerror_policy says otherwise;
        # "stop" pauses the guest on an I/O error.
        policy = disk.error_policy or "report"
        device["werror"] = "enospc" if policy == "enospace" else policy
        device["rerror"] = disk.rerror_policy or ("report" if policy == "enospace" else policy)
    return device


def _device(cfg: DomainConfig, disk: Disk) -> dict[str, object]:
    address = disk.address
    cd = disk.device == "cdrom"
    if disk.bus == "virtio":
        device: dict[str, object] = {"driver": "virtio-blk-pci"} | pci_props(cfg, address)
        if disk.iothread is not None:
            device["iothread"] = f"iothread{disk.iothread}"
        return device
    if disk.bus == "scsi":
        device = {"driver": "scsi-cd" if cd else "scsi-block" if disk.device == "lun" else "scsi-hd"}
        if address is not None and address.type == "drive":
            device.update(bus=f"scsi{address.controller or 0}.0", channel=address.bus or 0,
                          **{"scsi-id": address.target or 0, "lun": address.unit or 0})
        return device
    if disk.bus in ("sata", "ide"):
        device = {"driver": "ide-cd" if cd else "ide-hd"}
        if address is not None and address.type == "drive":
            if disk.bus == "sata":
                device.update(bus=f"{sata_bus(cfg, address.controller or 0)}.{address.unit or 0}")
            else:
                device.update(bus=f"ide.{address.bus or 0}", unit=address.unit or 0)
        return device
    if disk.bus == "usb":
        return {"driver": "usb-storage"} | usb_bus(address, cfg.controllers)
    device = {"driver": "floppy"}  # fdc
    if address is not None and address.type == "drive":
        device["unit"] = address.unit or 0
    return device


def _cache(disk: Disk) -> dict[str, object]:
    if disk.cache not in _CACHE:
        return {}
    direct, no_flush, _ = _CACHE[disk.cache]
    return {"cache": {"direct": direct, "no-flush": no_flush}}


def _protocol_node(disk: Disk, layer: Layer, *, first: bool) -> dict[str, object]:
    node: dict[str, object] = {
        "driver": "host_device" if disk.type == "block" and first else "file",
        "node-name": f"{layer.node}-file",
        "filename": layer.path,
        # QEMU opens backing layers read-only and reopens them read-write only while a job needs it.
        "auto-read-only": True,
        "discard": disk.discard or "unmap",
    } | _cache(disk)
    if disk.io is not None:
        node["aio"] = disk.io
    return node


def _format_node(disk: Disk, layer: Layer, backing: str | None, *, top: bool) -> dict[str, object]:
    node: dict[str, object] = {
        "driver": layer.format,
        "node-name": layer.node,
        "file": f"{layer.node}-file",
        "read-only": disk.readonly or disk.device == "cdrom" or not top,
    } | _cache(disk)
    if disk.discard is not None:
        node["discard"] = disk.discard
    if disk.detect_zeroes is not None:
        # "unmap" needs a node that discards; libvirt turns it into "on" otherwise, and so does avirt.
        unmap_ok = (disk.discard or "unmap") == "unmap"
        node["detect-zeroes"] = "on" if disk.detect_zeroes == "unmap" and not unmap_ok else disk.detect_zeroes
    if layer.format == "qcow2":
        # The chain is spelt out node by node; QEMU must not open backing files from the headers on its own.
        node["backing"] = backing
    return node
