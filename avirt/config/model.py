"""Plain data for one domain definition: what the supported libvirt XML subset says.

These classes are the single in-memory form of a domain's configuration. ``parse.py`` builds them from
libvirt domain XML and ``serialize.py`` writes them back; the QEMU command line (``drivers/qemu/cmdline.py``)
reads nothing but these. Sizes are stored in KiB, as libvirt reports them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

DiskType = Literal["file", "block"]
DiskFormat = Literal["qcow2", "raw"]
DiskBus = Literal["virtio", "sata"]
CharType = Literal["pty", "file", "null"]
GraphicsType = Literal["none", "vnc"]
LifecycleAction = Literal["destroy", "restart", "preserve"]
ErrorPolicy = Literal["stop", "report", "ignore", "enospace"]


@dataclass
class OSConfig:
    type: str = "hvm"
    arch: str = "x86_64"
    machine: Literal["q35", "pc"] = "q35"
    kernel: str | None = None
    initrd: str | None = None
    cmdline: str | None = None
    boot_devs: list[str] = field(default_factory=list)  # <boot dev='hd'/> in order: hd, cdrom, network


@dataclass
class Disk:
    target: str  # 'vda', 'sda'
    source: str | None  # path of the active image (file) or block device (block)
    type: DiskType = "file"
    device: Literal["disk"] = "disk"
    format: DiskFormat = "raw"
    bus: DiskBus = "virtio"
    readonly: bool = False
    serial: str | None = None
    #: What the guest sees on a host I/O error (<driver error_policy=...>); None: QEMU's default (report).
    error_policy: ErrorPolicy | None = None


@dataclass
class Interface:
    type: Literal["user"] = "user"
    model: Literal["virtio"] = "virtio"
    mac: str | None = None


@dataclass
class CharDevice:
    """A ``<serial>`` or ``<console>`` element; ``path`` is the log file for type ``file``."""

    kind: Literal["serial", "console"]
    type: CharType
    path: str | None = None
    target_port: int = 0


@dataclass
class Graphics:
    type: GraphicsType
    port: int | None = None  # vnc: None or -1 means autoport
    listen: str = "127.0.0.1"


@dataclass
class DomainConfig:
    name: str
    uuid: str
    hypervisor: Literal["kvm", "qemu"] = "kvm"  # <domain type=...>: kvm -> KVM accelerator, qemu -> TCG
    title: str | None = None
    description: str | None = None
    memory_kib: int = 131072
    current_memory_kib: int | None = None
    vcpus: int = 1
    os: OSConfig = field(default_factory=OSConfig)
    acpi: bool = False
    apic: bool = False
    cpu_host_passthrough: bool = False
    clock_offset: Literal["utc", "localtime"] = "utc"
    on_poweroff: LifecycleAction = "destroy"
    on_reboot: LifecycleAction = "restart"
    on_crash: LifecycleAction = "destroy"
    emulator: str | None = None
    disks: list[Disk] = field(default_factory=list)
    interfaces: list[Interface] = field(default_factory=list)
    chardevs: list[CharDevice] = field(default_factory=list)
    graphics: list[Graphics] = field(default_factory=list)
    memballoon: Literal["virtio", "none"] | None = None
    #: <panic model='isa'/>: the pvpanic device through which a guest reports a kernel panic.
    panic: Literal["isa"] | None = None

    def disk(self, target: str) -> Disk | None:
        return next((d for d in self.disks if d.target == target), None)
