"""What the guest agent's answers mean, as small typed values.

qemu-ga answers in JSON with hyphenated names, optional fields that depend on the guest OS, and
base64 for bytes. Each function here takes one command's ``return`` value and gives a frozen dataclass,
so callers (``Domain.agent``, the CLI) never index raw dictionaries, and every driver gives the same
types: the QEMU driver passes qemu-ga's own answers through, the test driver makes up answers of the
same shape, and the served protocol carries them as the plain JSON they are.

A field the agent left out is None (or empty), never an error: a Windows guest, an older qemu-ga or a
minimal Linux without ``/etc/os-release`` all leave out different things.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from typing import Any

from avirt.models import InterfaceAddress, InterfaceAddresses

__all__ = ["ExecResult", "FSDisk", "Filesystem", "IPAddress", "NetworkInterface", "OSInfo", "exec_result",
           "filesystems", "interface_addresses", "interfaces", "os_info"]


def _str(value: Any) -> str | None:
    return None if value is None else str(value)


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


@dataclass(frozen=True)
class OSInfo:
    """guest-get-osinfo: the guest's kernel (``uname``) and its distribution (``/etc/os-release``)."""

    kernel_release: str | None = None
    kernel_version: str | None = None
    machine: str | None = None
    id: str | None = None
    name: str | None = None
    pretty_name: str | None = None
    version: str | None = None
    version_id: str | None = None


def os_info(raw: Any) -> OSInfo:
    data = raw if isinstance(raw, dict) else {}
    return OSInfo(kernel_release=_str(data.get("kernel-release")),
                  kernel_version=_str(data.get("kernel-version")), machine=_str(data.get("machine")),
                  id=_str(data.get("id")), name=_str(data.get("name")),
                  pretty_name=_str(data.get("pretty-name")), version=_str(data.get("version")),
                  version_id=_str(data.get("version-id")))


@dataclass(frozen=True)
class FSDisk:
    """One disk under a filesystem: ``dev`` is the guest's device node (``/dev/vda``), ``bus_type``
    the agent's word for its bus (``virtio``, ``scsi``, ``sata``...), ``pci`` the controller's PCI
    address as ``domain:bus:slot.function``; with the serial, what ties it to a ``<disk>``."""

    dev: str | None = None
    serial: str | None = None
    bus_type: str | None = None
    pci: str | None = None
    bus: int | None = None
    target: int | None = None
    unit: int | None = None


@dataclass(frozen=True)
class Filesystem:
    """guest-get-fsinfo: one mounted filesystem (``name`` is the guest's block device name)."""

    mountpoint: str
    name: str
    type: str
    disks: tuple[FSDisk, ...] = ()
    used_bytes: int | None = None
    total_bytes: int | None = None


def _fs_disk(raw: Any) -> FSDisk:
    data = raw if isinstance(raw, dict) else {}
    pci = data.get("pci-controller")
    address = None
    if isinstance(pci, dict) and all(isinstance(pci.get(k), int)
                                     for k in ("domain", "bus", "slot", "function")):
        address = f"{pci['domain']:04x}:{pci['bus']:02x}:{pci['slot']:02x}.{pci['function']:x}"
    return FSDisk(dev=_str(data.get("dev")), serial=_str(data.get("serial")),
                  bus_type=_str(data.get("bus-type")), pci=address, bus=_int(data.get("bus")),
                  target=_int(data.get("target")), unit=_int(data.get("unit")))


def filesystems(raw: Any) -> list[Filesystem]:
    out = []
    for fs in raw if isinstance(raw, list) else []:
        if not isinstance(fs, dict):
            continue
        out.append(Filesystem(mountpoint=str(fs.get("mountpoint", "")), name=str(fs.get("name", "")),
                              type=str(fs.get("type", "")),
                              disks=tuple(_fs_disk(d) for d in fs.get("disk") or []),
                              used_bytes=_int(fs.get("used-bytes")), total_bytes=_int(fs.get("total-bytes"))))
    return out


@dataclass(frozen=True)
class IPAddress:
    type: str  # "ipv4" or "ipv6"
    address: str
    prefix: int


@dataclass(frozen=True)
class NetworkInterface:
    """guest-network-get-interfaces: one interface of the guest, with its MAC and addresses."""

    name: str
    hardware_address: str | None = None
    addresses: tuple[IPAddress, ...] = field(default=())


def interfaces(raw: Any) -> list[NetworkInterface]:
    out = []
    for nic in raw if isinstance(raw, list) else []:
        if not isinstance(nic, dict):
            continue
        addresses = tuple(
            IPAddress(type=str(a.get("ip-address-type", "")), address=str(a.get("ip-address", "")),
                      prefix=_int(a.get("prefix")) or 0)
            for a in nic.get("ip-addresses") or [] if isinstance(a, dict))
        out.append(NetworkInterface(name=str(nic.get("name", "")),
                                    hardware_address=_str(nic.get("hardware-address")), addresses=addresses))
    return out


def interface_addresses(nics: list[NetworkInterface]) -> list[InterfaceAddresses]:
    """The agent's interfaces as ``Domain.interface_addresses(source='agent')`` gives them, in the types
    of the host's sources and libvirt's way: every interface the guest has, named as the guest names
    it (``lo`` and ``eth0``, not the tap), its MAC (empty if the guest has none), its addresses with
    their prefixes. An old-style alias (``eth0:1``) is an address of its parent, not an interface."""
    merged: dict[str, tuple[str, list[InterfaceAddress]]] = {}
    for nic in nics:
        name = nic.name.split(":", 1)[0]
        hwaddr, addrs = merged.setdefault(name, (nic.hardware_address or "", []))
        if not hwaddr and nic.hardware_address:
            merged[name] = (nic.hardware_address, addrs)
        addrs += [InterfaceAddress(a.type, a.address, a.prefix) for a in nic.addresses
                  if a.type in ("ipv4", "ipv6")]
    return [InterfaceAddresses(name, hwaddr, tuple(addrs)) for name, (hwaddr, addrs) in merged.items()]


@dataclass(frozen=True)
class ExecResult:
    """A guest-exec'd process that ended: its exit code (None if a signal ended it: ``signal``) and
    what it wrote, decoded from the agent's base64. ``*_truncated``: the agent kept only the first
    16 MiB of a stream."""

    exit_code: int | None
    signal: int | None = None
    stdout: bytes = b""
    stderr: bytes = b""
    stdout_truncated: bool = False
    stderr_truncated: bool = False


def exec_result(raw: Any) -> ExecResult:
    """A guest-exec-status answer whose ``exited`` is true."""
    data = raw if isinstance(raw, dict) else {}
    return ExecResult(exit_code=_int(data.get("exitcode")), signal=_int(data.get("signal")),
                      stdout=base64.b64decode(data.get("out-data") or ""),
                      stderr=base64.b64decode(data.get("err-data") or ""),
                      stdout_truncated=bool(data.get("out-truncated")),
                      stderr_truncated=bool(data.get("err-truncated")))
