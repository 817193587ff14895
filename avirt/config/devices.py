"""Plain data for the devices of a domain: one dataclass per libvirt device element.

Field names follow libvirt's XML (``<driver cache=...>`` is ``Disk.cache``); where each one sits in the
XML and which values are accepted is said once, in ``tables.py``. Optional items are None when the XML
is silent, so that a definition is written back exactly as it was given; the values avirt fills in for
a stable guest ABI (addresses, controllers) are written into the definition at define time by the
driver, not invented here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

DiskType = Literal["file", "block"]
DiskFormat = Literal["qcow2", "raw"]
DiskBus = Literal["virtio", "sata", "scsi", "ide", "usb", "fdc"]
CharType = Literal["pty", "file", "null", "unix", "tcp", "spicevmc"]
GraphicsType = Literal["none", "vnc", "spice"]
ErrorPolicy = Literal["stop", "report", "ignore", "enospace"]


@dataclass
class Address:
    """Where a device sits on its bus: ``<address type='pci' bus='0x01' slot='0x00' function='0x0'/>``.

    ``type`` says which fields mean something: pci (domain, bus, slot, function, multifunction), drive
    (controller, bus, target, unit), usb (bus, port), virtio-serial (controller, bus, port), isa (iobase,
    irq).
    """

    type: str
    domain: int | None = None
    bus: int | None = None
    slot: int | None = None
    function: int | None = None
    multifunction: str | None = None
    controller: int | None = None
    target: int | None = None
    unit: int | None = None
    port: str | None = None  # usb ports are dotted paths ('1', '1.2'); virtio-serial ports are numbers
    iobase: int | None = None
    irq: int | None = None


@dataclass
class IoTune:
    """``<iotune>``: a disk's I/O limits (QEMU's throttle group properties of the same meaning).

    ``total_*`` limits exclude the ``read_*``/``write_*`` limit of the same kind; ``*_max`` are burst limits
    allowed for ``*_max_length`` seconds; ``group_name`` makes disks share one set of limits.
    """

    total_bytes_sec: int | None = None
    read_bytes_sec: int | None = None
    write_bytes_sec: int | None = None
    total_iops_sec: int | None = None
    read_iops_sec: int | None = None
    write_iops_sec: int | None = None
    total_bytes_sec_max: int | None = None
    read_bytes_sec_max: int | None = None
    write_bytes_sec_max: int | None = None
    total_iops_sec_max: int | None = None
    read_iops_sec_max: int | None = None
    write_iops_sec_max: int | None = None
    total_bytes_sec_max_length: int | None = None
    read_bytes_sec_max_length: int | None = None
    write_bytes_sec_max_length: int | None = None
    total_iops_sec_max_length: int | None = None
    read_iops_sec_max_length: int | None = None
    write_iops_sec_max_length: int | None = None
    size_iops_sec: int | None = None
    group_name: str | None = None


@dataclass
class Disk:
    target: str  # 'vda', 'sda'
    source: str | None  # the active image (file) or block device (block); None: an empty cdrom/floppy
    type: DiskType = "file"
    device: Literal["disk", "cdrom", "floppy", "lun"] = "disk"
    format: DiskFormat = "raw"
    bus: DiskBus = "virtio"
    readonly: bool = False
    shareable: bool = False
    serial: str | None = None
    wwn: str | None = None
    #: What the guest sees on a host I/O error (<driver error_policy=...>); None: QEMU's default (report).
    error_policy: ErrorPolicy | None = None
    rerror_policy: str | None = None
    cache: str | None = None
    io: str | None = None
    discard: str | None = None
    detect_zeroes: str | None = None
    iothread: int | None = None
    tray: str | None = None
    rawio: str | None = None  # device='lun': the guest may send any SCSI command (QEMU needs CAP_SYS_RAWIO)
    sgio: str | None = None  # 'filtered': the kernel's filter of SCSI commands, its default
    removable: str | None = None  # <target removable='on'/>: usb and scsi disks
    boot_order: int | None = None
    iotune: IoTune | None = None
    address: Address | None = None


@dataclass
class Controller:
    """``<controller type='pci' index='1' model='pcie-root-port'>``: a bus that other devices sit on."""

    type: str
    index: int | None = None
    model: str | None = None
    ports: int | None = None
    vectors: int | None = None
    master_startport: int | None = None  # a USB companion controller's first port on its EHCI master
    model_name: str | None = None  # <model name='pcie-root-port'/>: the QEMU device
    target_chassis: int | None = None
    target_port: int | None = None
    target_busnr: int | None = None
    driver_queues: int | None = None
    driver_iothread: int | None = None
    address: Address | None = None


@dataclass
class Interface:
    type: str = "user"  # user; network, bridge, ethernet and direct are kept but need networks to start
    model: str | None = "virtio"
    mac: str | None = None
    source_network: str | None = None
    source_bridge: str | None = None
    source_dev: str | None = None
    source_mode: str | None = None
    target_dev: str | None = None
    mtu: int | None = None
    link_state: str | None = None
    driver_name: str | None = None
    driver_queues: int | None = None
    boot_order: int | None = None
    address: Address | None = None


@dataclass
class CharDevice:
    """A ``<serial>``, ``<console>`` or ``<channel>``; ``path`` is the file, or the socket of a unix one."""

    kind: Literal["serial", "console", "channel"]
    type: CharType
    path: str | None = None
    append: str | None = None  # file: <source append='on'> keeps what the file holds (else truncated)
    mode: str | None = None  # <source mode='bind'|'connect'>: unix and tcp sockets
    host: str | None = None  # tcp: <source host=... service=...>, the address and port to bind or connect
    service: int | None = None
    protocol: str | None = None  # tcp: <protocol type='raw'|'telnet'/>
    target_type: str | None = None  # console: serial|virtio; channel: virtio; serial: isa-serial
    target_port: int | None = 0
    target_name: str | None = None  # channel: org.qemu.guest_agent.0, com.redhat.spice.0
    target_model: str | None = None  # <target><model name='isa-serial'/></target>
    address: Address | None = None


@dataclass
class Input:
    type: str  # tablet, mouse, keyboard
    bus: str | None = None  # usb, ps2, virtio
    address: Address | None = None


@dataclass
class Graphics:
    type: GraphicsType
    port: int | None = None  # None or -1: a free port is picked at start
    listen: str = "127.0.0.1"
    tls_port: int | None = None
    passwd: str | None = None  # the password a client must give (VNC: at most 8 characters)
    keymap: str | None = None
    image_compression: str | None = None
    listen_type: str | None = "address"


@dataclass
class Video:
    model: str  # virtio, qxl, vga, bochs, cirrus, ramfb, none
    vram: int | None = None  # KiB, as libvirt
    ram: int | None = None
    vgamem: int | None = None
    heads: int | None = None
    primary: str | None = None
    accel3d: str | None = None
    address: Address | None = None


@dataclass
class Sound:
    model: str  # ich9, ich6, ac97, es1370
    codec: str | None = None
    audio_id: int | None = None
    address: Address | None = None


@dataclass
class Audio:
    """``<audio id='1' type='none'/>``: where a sound card's output goes (nowhere needs no host sound)."""

    id: int
    type: str


@dataclass
class RNG:
    model: str = "virtio"
    backend_model: str = "random"
    backend: str | None = None  # the host's random source, /dev/urandom by default
    rate_bytes: int | None = None
    rate_period: int | None = None
    address: Address | None = None


@dataclass
class Watchdog:
    model: str  # i6300esb, itco, ib700
    action: str | None = None
    address: Address | None = None


@dataclass
class MemBalloon:
    model: str  # virtio, none
    autodeflate: str | None = None
    free_page_reporting: str | None = None
    stats_period: int | None = None
    address: Address | None = None


@dataclass
class Panic:
    model: str | None = "isa"  # isa (pvpanic), pvpanic (on PCI), hyperv
    address: Address | None = None


@dataclass
class RedirDev:
    bus: str  # usb
    type: str  # spicevmc
    address: Address | None = None


@dataclass
class TPM:
    """``<tpm model='tpm-crb'><backend type='emulator'/>``: a TPM emulated by swtpm (ISA/MMIO: no address)."""

    model: str  # tpm-tis, tpm-crb
    backend_type: str = "emulator"
    backend_version: str | None = None


@dataclass
class Filesystem:
    """``<filesystem type='mount'>``: a host directory shared with the guest, found there by ``target_dir``.

    ``driver_type`` ``virtiofs`` runs virtiofsd (``binary_path``, or the host's default, with the
    ``binary_*`` options) and needs shared guest memory; ``path`` (or None, libvirt's default) is QEMU's
    own 9p server.
    """

    source_dir: str
    target_dir: str  # the mount tag the guest sees
    type: str = "mount"
    accessmode: str | None = None  # passthrough (libvirt's default), mapped, squash
    driver_type: str | None = None  # path (9p), virtiofs
    queue: int | None = None  # virtiofs request queue size
    binary_path: str | None = None
    binary_xattr: str | None = None  # on, off
    binary_cache: str | None = None  # none, auto, always
    binary_sandbox: str | None = None  # namespace, chroot
    readonly: bool = False
    address: Address | None = None


@dataclass
class Vsock:
    """``<vsock model='virtio'>``: an AF_VSOCK device; ``cid_auto='yes'`` lets the host pick a free CID."""

    model: str | None = "virtio"
    cid_auto: str | None = None
    cid: int | None = None
    address: Address | None = None
