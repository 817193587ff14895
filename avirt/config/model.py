"""Plain data for one domain definition: what the supported libvirt XML says.

These classes are the single in-memory form of a domain's configuration. ``parse.py`` builds them from
libvirt domain XML and ``serialize.py`` writes them back, both driven by the tables in ``tables.py``; the
QEMU command line (``drivers/qemu/cmdline/``) reads nothing but these. Sizes are stored in KiB, as
libvirt reports them. The devices are in ``devices.py``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from avirt.config.devices import (
    RNG,
    TPM,
    Audio,
    CharDevice,
    Controller,
    Disk,
    Filesystem,
    Graphics,
    Input,
    Interface,
    MemBalloon,
    Panic,
    RedirDev,
    Sound,
    Video,
    Vsock,
    Watchdog,
)

__all__ = [  # the devices are re-exported: the model is one import away
    "CPU",
    "NVRAM",
    "RNG",
    "TPM",
    "Audio",
    "CPUFeature",
    "CPUTune",
    "CharDevice",
    "Controller",
    "CrashAction",
    "Disk",
    "DomainConfig",
    "Features",
    "Filesystem",
    "FirmwareFeature",
    "Graphics",
    "HyperV",
    "IOThreadPin",
    "Input",
    "Interface",
    "LifecycleAction",
    "Loader",
    "MemBalloon",
    "MemoryBacking",
    "NUMACell",
    "OSConfig",
    "Panic",
    "RedirDev",
    "Sound",
    "SysInfo",
    "SysInfoEntry",
    "Timer",
    "VCPUPin",
    "Video",
    "Vsock",
    "Watchdog",
]

LifecycleAction = Literal["destroy", "restart", "preserve"]
#: on_crash may also write a core dump of the guest's memory first (then destroy or restart).
CrashAction = Literal["destroy", "restart", "preserve", "coredump-destroy", "coredump-restart"]


@dataclass
class Loader:
    """``<loader readonly='yes' type='pflash'>/usr/share/OVMF/OVMF_CODE_4M.fd</loader>``."""

    path: str | None = None
    readonly: str | None = None
    type: str | None = None
    secure: str | None = None


@dataclass
class NVRAM:
    """``<nvram template='...VARS.fd'>state/nvram/NAME_VARS.fd</nvram>``: the guest's own UEFI variables."""

    path: str | None = None
    template: str | None = None


@dataclass
class FirmwareFeature:
    name: str  # secure-boot, enrolled-keys
    enabled: str


@dataclass
class OSConfig:
    type: str = "hvm"
    arch: str = "x86_64"
    machine: str = "q35"  # an alias (q35, pc) or a versioned type (pc-q35-7.2)
    firmware: str | None = None  # efi, bios: the driver picks the files
    firmware_features: list[FirmwareFeature] = field(default_factory=list)
    loader: Loader | None = None
    nvram: NVRAM | None = None
    kernel: str | None = None
    initrd: str | None = None
    cmdline: str | None = None
    boot_devs: list[str] = field(default_factory=list)  # <boot dev='hd'/> in order: hd, cdrom, network, fd
    bootmenu: str | None = None  # <bootmenu enable='yes'/>
    bootmenu_timeout: int | None = None
    smbios_mode: str | None = None  # <smbios mode='sysinfo'/>: the <sysinfo> tables reach the guest


@dataclass
class HyperV:
    """``<features><hyperv mode='custom'>``: the enlightenments Windows guests run faster with."""

    mode: str | None = None
    relaxed: str | None = None
    vapic: str | None = None
    spinlocks: str | None = None
    spinlocks_retries: int | None = None
    vpindex: str | None = None
    runtime: str | None = None
    synic: str | None = None
    stimer: str | None = None
    stimer_direct: str | None = None
    reset: str | None = None
    vendor_id: str | None = None
    vendor_id_value: str | None = None
    frequencies: str | None = None
    reenlightenment: str | None = None
    tlbflush: str | None = None
    ipi: str | None = None
    evmcs: str | None = None


@dataclass
class Features:
    acpi: bool = False
    apic: bool = False
    pae: bool = False
    vmport: str | None = None  # <vmport state='off'/>
    pmu: str | None = None
    smm: str | None = None
    vmcoreinfo: str | None = None
    kvm_hidden: str | None = None  # <kvm><hidden state='on'/></kvm>
    kvm_hint_dedicated: str | None = None  # <kvm><hint-dedicated state='on'/></kvm>
    kvm_poll_control: str | None = None
    kvm_pv_ipi: str | None = None
    kvm_dirty_ring: str | None = None
    kvm_dirty_ring_size: int | None = None  # entries, a power of two
    ioapic_driver: str | None = None
    hyperv: HyperV | None = None


@dataclass
class CPUFeature:
    policy: str  # force, require, optional, disable, forbid
    name: str


@dataclass
class NUMACell:
    """``<cpu><numa><cell id='0' cpus='0-1' memory='2097152' unit='KiB'/>``: one guest NUMA node."""

    id: int
    cpus: str  # libvirt's cpuset syntax: '0-1', '0,2-3'
    memory_kib: int
    mem_access: str | None = None  # shared, private: how the node's RAM is mapped


@dataclass
class CPU:
    mode: str | None = None  # None: libvirt's custom (a named model)
    match: str | None = None
    check: str | None = None
    migratable: str | None = None
    model: str | None = None
    model_fallback: str | None = None
    vendor: str | None = None
    sockets: int | None = None
    dies: int | None = None
    cores: int | None = None
    threads: int | None = None
    cache_mode: str | None = None
    features: list[CPUFeature] = field(default_factory=list)
    numa: list[NUMACell] = field(default_factory=list)


@dataclass
class MemoryBacking:
    """``<memoryBacking>``: how guest RAM is allocated on the host."""

    source_type: str | None = None  # memfd, anonymous
    access_mode: str | None = None  # shared (needed by virtiofs), private
    allocation_mode: str | None = None  # immediate (preallocated), ondemand
    hugepages: bool = False  # guest RAM on the host's huge pages (hugetlbfs at /dev/hugepages)
    nosharepages: bool = False  # no KSM merging
    discard: bool = False  # give freed RAM back to the host when the guest stops


@dataclass
class VCPUPin:
    vcpu: int
    cpuset: str  # host CPUs, libvirt's cpuset syntax


@dataclass
class IOThreadPin:
    iothread: int
    cpuset: str


@dataclass
class CPUTune:
    """``<cputune>``: which host CPUs the vCPU, emulator and iothread threads may run on (their affinity)."""

    vcpupins: list[VCPUPin] = field(default_factory=list)
    emulatorpin: str | None = None
    iothreadpins: list[IOThreadPin] = field(default_factory=list)


@dataclass
class Timer:
    name: str  # rtc, pit, hpet, hypervclock, tsc, kvmclock
    present: str | None = None
    tickpolicy: str | None = None
    track: str | None = None
    frequency: int | None = None


@dataclass
class SysInfoEntry:
    name: str
    value: str


@dataclass
class SysInfo:
    """``<sysinfo type='smbios'>``: the SMBIOS tables the guest reads (with ``<smbios mode='sysinfo'/>``)."""

    type: str = "smbios"
    bios: list[SysInfoEntry] = field(default_factory=list)
    system: list[SysInfoEntry] = field(default_factory=list)
    base_board: list[SysInfoEntry] = field(default_factory=list)
    chassis: list[SysInfoEntry] = field(default_factory=list)
    oem_strings: list[str] = field(default_factory=list)


@dataclass
class DomainConfig:
    name: str
    uuid: str
    hypervisor: Literal["kvm", "qemu"] = "kvm"  # <domain type=...>: kvm -> KVM accelerator, qemu -> TCG
    title: str | None = None
    description: str | None = None
    #: Children of <metadata>, each one element in its own namespace, kept verbatim as XML text.
    metadata: list[str] = field(default_factory=list)
    memory_kib: int = 131072
    current_memory_kib: int | None = None
    memory_backing: MemoryBacking | None = None
    vcpus: int = 1
    vcpus_current: int | None = None
    iothreads: int | None = None
    cputune: CPUTune | None = None
    sysinfo: SysInfo | None = None
    os: OSConfig = field(default_factory=OSConfig)
    features: Features = field(default_factory=Features)
    cpu: CPU | None = None
    clock_offset: Literal["utc", "localtime"] = "utc"
    timers: list[Timer] = field(default_factory=list)
    on_poweroff: LifecycleAction = "destroy"
    on_reboot: LifecycleAction = "restart"
    on_crash: CrashAction = "destroy"
    suspend_to_mem: str | None = None  # <pm><suspend-to-mem enabled='no'/></pm>
    suspend_to_disk: str | None = None
    emulator: str | None = None
    disks: list[Disk] = field(default_factory=list)
    controllers: list[Controller] = field(default_factory=list)
    filesystems: list[Filesystem] = field(default_factory=list)
    interfaces: list[Interface] = field(default_factory=list)
    chardevs: list[CharDevice] = field(default_factory=list)
    inputs: list[Input] = field(default_factory=list)
    tpms: list[TPM] = field(default_factory=list)
    graphics: list[Graphics] = field(default_factory=list)
    sounds: list[Sound] = field(default_factory=list)
    audios: list[Audio] = field(default_factory=list)
    videos: list[Video] = field(default_factory=list)
    redirdevs: list[RedirDev] = field(default_factory=list)
    watchdogs: list[Watchdog] = field(default_factory=list)
    memballoon: MemBalloon | None = None
    rngs: list[RNG] = field(default_factory=list)
    panics: list[Panic] = field(default_factory=list)
    vsock: Vsock | None = None

    def disk(self, target: str) -> Disk | None:
        return next((d for d in self.disks if d.target == target), None)
