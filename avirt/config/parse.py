"""Libvirt domain XML -> :class:`DomainConfig`, for the subset avirt implements and nothing more.

Why so strict: a domain definition is a promise about the guest's hardware. An element that libvirt
would honour but avirt silently ignored (a second NIC model, a cache mode, a VNC listen address) would
boot a guest that differs from what the caller wrote, so every element, attribute or value outside the
subset is reported as an :class:`UnsupportedError` whose ``items`` are XPaths such as
``/domain/devices/disk[2]/driver/@cache`` - all of them at once, so a caller fixes a document in one go.

Two kinds of failure are kept apart:

* :class:`InvalidXMLError` (with a 1-based ``line``): the document is wrong for libvirt too - malformed
  XML, a bad unit, a non-integer size, a value libvirt does not know (``bus='floppyx'``), a missing
  required item, a duplicate singleton or disk target. The first such error is raised at once, before
  any unsupported items are reported: there is no point listing features of a document that is broken.
* :class:`UnsupportedError`: valid libvirt that avirt does not implement, including libvirt-known values
  of supported attributes (``bus='scsi'``, ``cpu mode='host-model'``, ``machine='pc-q35-7.2'``).

Output-only items that libvirt (and avirt's own live XML) emits are accepted back and ignored, so
``define_xml(dumpxml())`` works: the ``id`` attribute of ``<domain>``, ``<alias name=...>`` in any
device, ``<mirror>`` (a running block job) and ``<backingStore>`` chains under ``<disk>`` (the chain is
a property of the image files, not of the definition). ``<cpu check=...>`` is accepted and ignored
because it only governs libvirt's CPU model verification, which does not apply to ``host-passthrough``;
``migratable='on'`` (the default) is accepted, ``migratable='off'`` is unsupported. A DOCTYPE is
refused: entities are never expanded.

Normalisations (so that ``parse(serialize(cfg)) == cfg``): sizes become KiB rounded up (``KB``/``MB``/...
are powers of 1000 as in libvirt), the UUID becomes lowercase dashed (generated when absent), MAC
addresses lowercase, ``<serial>`` elements without a port get the lowest free one, VNC ``autoport='yes'``
becomes ``port=None`` unless ``port='-1'`` was written. Defaults where the XML is silent follow the model
(notably ``machine='q35'`` and NIC model ``virtio``), not libvirt's host-dependent choices.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Literal, NoReturn, TypeVar

from lxml import etree

from avirt.config.model import (
    CharDevice,
    CharType,
    Disk,
    DiskBus,
    DiskFormat,
    DiskType,
    DomainConfig,
    ErrorPolicy,
    Graphics,
    Interface,
    LifecycleAction,
    OSConfig,
)
from avirt.errors import InvalidXMLError, UnsupportedError

__all__ = ["parse_domain_xml"]

T = TypeVar("T", bound=str)
_El = etree._Element


@dataclass(frozen=True)
class _Spec:
    """What one element may contain; anything else is reported as unsupported."""

    attrs: frozenset[str] = frozenset()
    children: dict[str, _Spec] = field(default_factory=dict)
    text: bool = False  # carries a text value (otherwise non-blank text is unsupported content)
    multiple: bool = False  # may repeat under its parent (otherwise a repeat is InvalidXMLError)


def _s(*attrs: str, text: bool = False, multiple: bool = False, **children: _Spec) -> _Spec:
    return _Spec(frozenset(attrs), dict(children), text, multiple)


_ALIAS = _s("name")
_BACKING = _s("type", "index", format=_s("type"), source=_s("file", "dev"))
_BACKING.children["backingStore"] = _BACKING  # chains nest to any depth
_CHAR_SOURCE = _s("path")
_SCHEMA = _s(
    "type", "id",
    name=_s(text=True), uuid=_s(text=True), title=_s(text=True), description=_s(text=True),
    memory=_s("unit", text=True), currentMemory=_s("unit", text=True), vcpu=_s("placement", text=True),
    os=_s(
        type=_s("arch", "machine", text=True), kernel=_s(text=True), initrd=_s(text=True),
        cmdline=_s(text=True), boot=_s("dev", multiple=True),
    ),
    features=_s(acpi=_s(), apic=_s()),
    cpu=_s("mode", "check", "migratable"),
    clock=_s("offset"),
    on_poweroff=_s(text=True), on_reboot=_s(text=True), on_crash=_s(text=True),
    devices=_s(
        emulator=_s(text=True),
        disk=_s(
            "type", "device", multiple=True, driver=_s("name", "type", "error_policy"),
            source=_s("file", "dev"),
            target=_s("dev", "bus"), readonly=_s(), serial=_s(text=True), alias=_ALIAS, backingStore=_BACKING,
            mirror=_s("type", "job", "ready", format=_s("type"), source=_s("file", "dev")),
        ),
        interface=_s("type", multiple=True, model=_s("type"), mac=_s("address"), alias=_ALIAS),
        serial=_s("type", multiple=True, source=_CHAR_SOURCE, target=_s("port"), alias=_ALIAS),
        console=_s("type", multiple=True, source=_CHAR_SOURCE, target=_s("type", "port"), alias=_ALIAS),
        graphics=_s("type", "port", "autoport", "listen", multiple=True, listen=_s("type", "address"),
                    alias=_ALIAS),
        memballoon=_s("model", alias=_ALIAS),
        panic=_s("model", alias=_ALIAS),
    ),
)

# Values libvirt itself accepts but avirt does not implement: these are UnsupportedError, anything else
# InvalidXMLError. ``None`` means libvirt takes free-form values there, so every other value is unsupported.
_KNOWN_DOMAIN_TYPES = {"qemu", "kqemu", "kvm", "xen", "lxc", "uml", "openvz", "test", "vmware", "hyperv",
                       "vbox", "phyp", "parallels", "bhyve", "vz", "hvf", "ch"}
_KNOWN_OS_TYPES = {"hvm", "xen", "linux", "xenpvh", "exe", "uml"}
_KNOWN_LIFECYCLE = {"destroy", "restart", "preserve", "rename-restart", "coredump-destroy",
                    "coredump-restart"}
_KNOWN_BOOT = {"hd", "cdrom", "network", "fd"}
_KNOWN_CPU_MODES = {"custom", "host-model", "host-passthrough", "maximum"}
_KNOWN_CLOCK = {"utc", "localtime", "timezone", "variable", "absolute"}
_KNOWN_DISK_TYPES = {"file", "block", "dir", "network", "volume", "nvme", "vhostuser", "vhostvdpa"}
_KNOWN_DISK_DEVICES = {"disk", "cdrom", "floppy", "lun"}
_KNOWN_FORMATS = {"none", "raw", "dir", "bochs", "cloop", "dmg", "iso", "vpc", "vdi", "fat", "vhd", "ploop",
                  "cow", "qcow", "qcow2", "qed", "vmdk", "luks", "vhdx", "aio"}
_KNOWN_BUSES = {"ide", "fdc", "scsi", "virtio", "xen", "usb", "uml", "sata", "sd", "nvme"}
_KNOWN_NET_TYPES = {"user", "ethernet", "vhostuser", "server", "client", "mcast", "network", "bridge",
                    "internal", "direct", "hostdev", "udp", "vdpa", "null", "vds"}
_KNOWN_CHAR_TYPES = {"null", "vc", "pty", "dev", "file", "pipe", "stdio", "udp", "tcp", "unix", "spicevmc",
                     "spiceport", "nmdm", "qemu-vdagent", "dbus"}
_KNOWN_CONSOLE_TARGETS = {"serial", "xen", "uml", "virtio", "lxc", "openvz", "sclp", "sclplm"}
_KNOWN_GRAPHICS = {"sdl", "vnc", "rdp", "desktop", "spice", "egl-headless", "dbus"}
_KNOWN_LISTEN_TYPES = {"address", "network", "socket", "none"}
_KNOWN_BALLOONS = {"virtio", "xen", "none", "virtio-transitional", "virtio-non-transitional"}

# What avirt implements, typed so that the values chosen from them keep the model's Literal types.
_HYPERVISORS: tuple[Literal["kvm", "qemu"], ...] = ("kvm", "qemu")
_CLOCKS: tuple[Literal["utc", "localtime"], ...] = ("utc", "localtime")
_ACTIONS: tuple[LifecycleAction, ...] = ("destroy", "restart", "preserve")
_MACHINES: tuple[Literal["q35", "pc"], ...] = ("q35", "pc")
_DISK_TYPES: tuple[DiskType, ...] = ("file", "block")
_FORMATS: tuple[DiskFormat, ...] = ("qcow2", "raw")
_BUSES: tuple[DiskBus, ...] = ("virtio", "sata")
_CHAR_TYPES: tuple[CharType, ...] = ("pty", "file", "null")
_BALLOONS: tuple[Literal["virtio", "none"], ...] = ("virtio", "none")
_ERROR_POLICIES: tuple[ErrorPolicy, ...] = ("stop", "report", "ignore", "enospace")
_KNOWN_PANICS = {"isa", "pseries", "hyperv", "s390", "pvpanic"}

_NAME_RE = re.compile(r"[A-Za-z0-9_+][A-Za-z0-9_.+-]{0,63}")
_INT_RE = re.compile(r"-?[0-9]+")
_TARGET_RE = re.compile(r"(vd|sd|hd|xvd|ubd|fd)[a-z]+")
_MAC_RE = re.compile(r"[0-9a-f]{2}(:[0-9a-f]{2}){5}")
_DISK_SERIAL_RE = re.compile(r"[A-Za-z0-9_ .+-]+")  # libvirt's set; it ends up on the QEMU command line
_VNC_LOCAL = "127.0.0.1"


def parse_domain_xml(xml: str | bytes) -> DomainConfig:
    """Parse libvirt domain XML into a :class:`DomainConfig`.

    Raises :class:`InvalidXMLError` for malformed or invalid documents and :class:`UnsupportedError`
    (listing every offending XPath) for valid libvirt outside avirt's subset.
    """
    # A str has already been decoded: its encoding declaration, if any, must not be applied again.
    parser = etree.XMLParser(
        resolve_entities=False, no_network=True, load_dtd=False, remove_comments=True, remove_pis=True,
        encoding="utf-8" if isinstance(xml, str) else None,
    )
    data = xml.encode("utf-8") if isinstance(xml, str) else xml
    try:
        root = etree.fromstring(data, parser)
    except etree.XMLSyntaxError as exc:
        raise InvalidXMLError(f"malformed XML: {exc.msg}", exc.lineno) from exc
    tree = root.getroottree()
    if tree.docinfo.internalDTD is not None or tree.docinfo.doctype:
        raise InvalidXMLError("DOCTYPE declarations are not accepted", 1)
    if root.tag != "domain":
        raise InvalidXMLError(f"root element must be <domain>, not <{root.tag}>", _line(root))
    ctx = _Ctx(tree)
    ctx.check_structure(root, _SCHEMA)
    cfg = _domain(ctx, root)
    if ctx.unsupported:
        raise UnsupportedError(ctx.unsupported, "not supported by avirt")
    return cfg


class _Ctx:
    """Walks one document; collects unsupported XPaths and raises on the first invalid value."""

    def __init__(self, tree: etree._ElementTree) -> None:
        self.tree = tree
        self.unsupported: list[str] = []

    def path(self, el: _El, attr: str | None = None) -> str:
        base = self.tree.getpath(el)
        return base if attr is None else f"{base}/@{_attr_name(el, attr)}"

    def invalid(self, el: _El, message: str, attr: str | None = None) -> NoReturn:
        raise InvalidXMLError(f"{self.path(el, attr)}: {message}", _line(el))

    def unsupported_at(self, el: _El, attr: str | None = None) -> None:
        path = self.path(el, attr)
        if path not in self.unsupported:
            self.unsupported.append(path)

    def check_structure(self, el: _El, spec: _Spec) -> None:
        for attr in el.attrib:
            if attr not in spec.attrs:
                self.unsupported_at(el, str(attr))
        stray_text = [el.text] if not spec.text else []
        seen: set[str] = set()
        for child in el:
            if not spec.text:
                stray_text.append(child.tail)
            tag = child.tag
            spec_child = spec.children.get(tag) if isinstance(tag, str) else None
            if spec_child is None:
                self.unsupported_at(child)
                continue
            if tag in seen and not spec_child.multiple:
                self.invalid(child, f"<{tag}> may appear only once here")
            seen.add(str(tag))
            self.check_structure(child, spec_child)
        if any(t and t.strip() for t in stray_text):
            self.unsupported.append(f"{self.path(el)}/text()")

    def choose(self, el: _El, attr: str | None, supported: tuple[T, ...], known: Collection[str] | None,
               default: T | None = None) -> T | None:
        """Validate an enumerated attribute (or the text when ``attr`` is None).

        Returns the value, the default when absent, or None after recording an unsupported value.
        """
        raw = el.get(attr) if attr is not None else _text(el).strip()
        if raw is None or raw == "":
            if default is None:
                self.invalid(el, "is required", attr)
            return default
        for value in supported:
            if raw == value:
                return value
        if known is None or raw in known:
            self.unsupported_at(el, attr)
            return None
        self.invalid(el, f"unknown value {raw!r}", attr)

    def integer(self, el: _El, raw: str | None, minimum: int, attr: str | None = None) -> int:
        text = (raw or "").strip()
        if not _INT_RE.fullmatch(text) or int(text) < minimum:
            self.invalid(el, f"expected an integer >= {minimum}, got {raw!r}", attr)
        return int(text)

    def required(self, el: _El, attr: str) -> str:
        value = el.get(attr)
        if not value:
            self.invalid(el, "is required", attr)
        return value


def _attr_name(el: _El, attr: str) -> str:
    if not attr.startswith("{"):
        return attr
    ns, _, local = attr[1:].partition("}")
    if ns == "http://www.w3.org/XML/1998/namespace":
        return f"xml:{local}"
    prefix = next((p for p, uri in el.nsmap.items() if uri == ns and p), None)
    return f"{prefix}:{local}" if prefix else f"*[local-name()='{local}']"


def _line(el: _El) -> int | None:
    line = el.sourceline
    return line if isinstance(line, int) else None


def _text(el: _El) -> str:
    return "".join(str(part) for part in el.itertext())


def _opt_text(el: _El | None) -> str | None:
    return None if el is None else _text(el)  # <title/> stays "" so that "" round-trips


def _path_text(ctx: _Ctx, el: _El | None) -> str | None:
    if el is None:
        return None
    if not _text(el).strip():
        ctx.invalid(el, "must not be empty")
    return _text(el)


def _kib(ctx: _Ctx, el: _El) -> int:
    """Size element -> KiB, rounded up; units follow libvirt's virScaleInteger (case-insensitive)."""
    amount = ctx.integer(el, _text(el), 1)
    unit = (el.get("unit") or "KiB").lower()
    powers = "kmgtpe"
    if unit in ("b", "bytes"):
        scale = 1
    elif len(unit) >= 1 and unit[0] in powers and unit[1:] in ("", "ib", "b"):
        scale = (1000 if unit[1:] == "b" else 1024) ** (powers.index(unit[0]) + 1)
    else:
        ctx.invalid(el, f"unknown unit {el.get('unit')!r}", "unit")
    return -(-amount * scale // 1024)  # integer ceiling: floats would lose precision on large sizes


def _domain(ctx: _Ctx, root: _El) -> DomainConfig:
    hypervisor = ctx.choose(root, "type", _HYPERVISORS, _KNOWN_DOMAIN_TYPES) or "kvm"
    if root.get("id") is not None:
        ctx.integer(root, root.get("id"), -1, "id")  # output-only, but garbage is still garbage
    name_el = root.find("name")
    if name_el is None:
        ctx.invalid(root, "<name> is required")
    name = _text(name_el)
    if not _NAME_RE.fullmatch(name):
        ctx.invalid(name_el, f"{name!r} is not a safe domain name ([A-Za-z0-9_.+-], no leading '.' or '-', "
                             "at most 64 characters)")
    title_el = root.find("title")
    title = _opt_text(title_el)
    if title_el is not None and title is not None and "\n" in title:
        ctx.invalid(title_el, "must be a single line")
    memory_el = root.find("memory")
    if memory_el is None:
        ctx.invalid(root, "<memory> is required")
    memory = _kib(ctx, memory_el)
    current_el = root.find("currentMemory")
    current = None
    if current_el is not None and (current := _kib(ctx, current_el)) > memory:
        ctx.invalid(current_el, "is larger than <memory>")
    vcpus = 1
    vcpu_el = root.find("vcpu")
    if vcpu_el is not None:
        vcpus = ctx.integer(vcpu_el, _text(vcpu_el), 1)
        ctx.choose(vcpu_el, "placement", ("static",), {"static", "auto"}, "static")
    cpu_el = root.find("cpu")
    if cpu_el is not None:
        if cpu_el.get("mode") is None:
            ctx.unsupported_at(cpu_el)  # no mode means libvirt's 'custom' CPU model
        else:
            ctx.choose(cpu_el, "mode", ("host-passthrough",), _KNOWN_CPU_MODES)
        ctx.choose(cpu_el, "check", ("none", "partial", "full"), (), "none")
        ctx.choose(cpu_el, "migratable", ("on",), ("off",), "on")
    clock_el = root.find("clock")
    clock = None if clock_el is None else ctx.choose(clock_el, "offset", _CLOCKS, _KNOWN_CLOCK, "utc")
    lifecycle = {
        tag: (None if el is None else ctx.choose(el, None, _ACTIONS, _KNOWN_LIFECYCLE))
        for tag in ("on_poweroff", "on_reboot", "on_crash")
        for el in [root.find(tag)]
    }
    features = root.find("features")
    cfg = DomainConfig(
        name=name,
        uuid=_uuid(ctx, root.find("uuid")),
        hypervisor=hypervisor,
        title=title,
        description=_opt_text(root.find("description")),
        memory_kib=memory,
        current_memory_kib=current,
        vcpus=vcpus,
        os=_os(ctx, root),
        acpi=features is not None and features.find("acpi") is not None,
        apic=features is not None and features.find("apic") is not None,
        cpu_host_passthrough=cpu_el is not None,
        clock_offset=clock or "utc",
        on_poweroff=lifecycle["on_poweroff"] or "destroy",
        on_reboot=lifecycle["on_reboot"] or "restart",
        on_crash=lifecycle["on_crash"] or "destroy",
    )
    devices = root.find("devices")
    if devices is not None:
        _devices(ctx, devices, cfg)
    return cfg


def _uuid(ctx: _Ctx, el: _El | None) -> str:
    if el is None:
        return str(uuid.uuid4())
    # libvirt's virUUIDParse: 32 hex digits, dashes anywhere, surrounding blanks ignored.
    digits = _text(el).strip().replace("-", "")
    if not re.fullmatch(r"[0-9A-Fa-f]{32}", digits):
        ctx.invalid(el, f"{_text(el)!r} is not a UUID")
    return str(uuid.UUID(hex=digits))


def _os(ctx: _Ctx, root: _El) -> OSConfig:
    os_el = root.find("os")
    type_el = None if os_el is None else os_el.find("type")
    if os_el is None or type_el is None:
        ctx.invalid(root if os_el is None else os_el, "<os><type>hvm</type></os> is required")
    ctx.choose(type_el, None, ("hvm",), _KNOWN_OS_TYPES)
    arch = type_el.get("arch", "x86_64")
    if arch != "x86_64":
        if not re.fullmatch(r"[a-z0-9_]+", arch):
            ctx.invalid(type_el, f"unknown architecture {arch!r}", "arch")
        ctx.unsupported_at(type_el, "arch")
    machine = ctx.choose(type_el, "machine", _MACHINES, None, "q35") or "q35"
    boot_devs = []
    for boot in os_el.findall("boot"):
        dev = ctx.choose(boot, "dev", ("hd", "cdrom", "network"), _KNOWN_BOOT)
        if dev is not None:
            boot_devs.append(dev)
    return OSConfig(
        machine=machine,
        kernel=_path_text(ctx, os_el.find("kernel")),
        initrd=_path_text(ctx, os_el.find("initrd")),
        cmdline=_opt_text(os_el.find("cmdline")),
        boot_devs=boot_devs,
    )


def _devices(ctx: _Ctx, devices: _El, cfg: DomainConfig) -> None:
    cfg.emulator = _path_text(ctx, devices.find("emulator"))
    targets: set[str] = set()
    for el in devices.findall("disk"):
        disk = _disk(ctx, el)
        if disk is None:
            continue
        if disk.target in targets:
            ctx.invalid(el, f"duplicate disk target {disk.target!r}")
        targets.add(disk.target)
        cfg.disks.append(disk)
    for el in devices.findall("interface"):
        nic = _interface(ctx, el)
        if nic is not None:
            cfg.interfaces.append(nic)
    serial_ports: set[int] = set()
    unnumbered: list[CharDevice] = []
    for el in devices:
        if el.tag in ("serial", "console"):
            chardev, explicit = _chardev(ctx, el)
            if chardev is None:
                continue
            if chardev.kind == "serial" and explicit:
                if chardev.target_port in serial_ports:
                    ctx.invalid(el, f"duplicate serial port {chardev.target_port}")
                serial_ports.add(chardev.target_port)
            elif chardev.kind == "serial":
                unnumbered.append(chardev)
            cfg.chardevs.append(chardev)
    for chardev in unnumbered:  # as libvirt: the lowest port nobody claimed
        chardev.target_port = min(set(range(len(serial_ports) + 1)) - serial_ports)
        serial_ports.add(chardev.target_port)
    for index, el in enumerate(devices.findall("graphics")):
        if index > 0:
            ctx.unsupported_at(el)  # QEMU takes a single VNC server
        elif (graphics := _graphics(ctx, el)) is not None:
            cfg.graphics.append(graphics)
    balloon = devices.find("memballoon")
    if balloon is not None:
        cfg.memballoon = ctx.choose(balloon, "model", _BALLOONS, _KNOWN_BALLOONS)
    panic = devices.find("panic")
    if panic is not None:
        cfg.panic = ctx.choose(panic, "model", ("isa",), _KNOWN_PANICS, "isa")


def _disk(ctx: _Ctx, el: _El) -> Disk | None:
    dtype = ctx.choose(el, "type", _DISK_TYPES, _KNOWN_DISK_TYPES, "file")
    device = ctx.choose(el, "device", ("disk",), _KNOWN_DISK_DEVICES, "disk")
    if dtype is None or device is None:
        return None  # its children mean something else; do not judge them as a file/block disk
    fmt: DiskFormat | None = "raw"
    error_policy: ErrorPolicy | None = None
    driver = el.find("driver")
    if driver is not None:
        ctx.choose(driver, "name", ("qemu",), None, "qemu")
        fmt = ctx.choose(driver, "type", _FORMATS, _KNOWN_FORMATS, "raw")
        if driver.get("error_policy") is not None:
            error_policy = ctx.choose(driver, "error_policy", _ERROR_POLICIES, _ERROR_POLICIES)
    source_attr, other_attr = ("file", "dev") if dtype == "file" else ("dev", "file")
    source_el = el.find("source")
    if source_el is None:
        ctx.invalid(el, f"<source {source_attr}=...> is required for a type='{dtype}' disk")
    source = ctx.required(source_el, source_attr)
    if source_el.get(other_attr) is not None:
        ctx.unsupported_at(source_el, other_attr)
    target_el = el.find("target")
    if target_el is None:
        ctx.invalid(el, "<target dev=...> is required")
    target = ctx.required(target_el, "dev")
    if not (match := _TARGET_RE.fullmatch(target)):
        ctx.invalid(target_el, f"{target!r} is not a disk name such as 'vda' or 'sda'", "dev")
    disk_bus: DiskBus | None
    if target_el.get("bus") is not None:
        disk_bus = ctx.choose(target_el, "bus", _BUSES, _KNOWN_BUSES)
    else:
        # libvirt infers the bus from the name; an unsupported inferred bus is reported as @bus anyway
        disk_bus = "virtio" if match.group(1) == "vd" else None
        if disk_bus is None:
            ctx.unsupported_at(target_el, "bus")
    serial_el = el.find("serial")
    serial = None
    if serial_el is not None and not _DISK_SERIAL_RE.fullmatch(serial := _text(serial_el)):
        ctx.invalid(serial_el, f"{serial!r} may only contain [A-Za-z0-9_ .+-]")
    readonly_el = el.find("readonly")
    if readonly_el is not None and disk_bus == "sata":
        # QEMU's ide-hd cannot be read-only (libvirt refuses it too); only virtio disks can.
        ctx.unsupported_at(readonly_el)
    if fmt is None or disk_bus is None:
        return None
    return Disk(target=target, source=source, type=dtype, format=fmt, bus=disk_bus,
                readonly=readonly_el is not None, serial=serial, error_policy=error_policy)


def _interface(ctx: _Ctx, el: _El) -> Interface | None:
    if ctx.choose(el, "type", ("user",), _KNOWN_NET_TYPES) is None:
        return None
    model_el = el.find("model")
    if model_el is not None and ctx.choose(model_el, "type", ("virtio",), None) is None:
        return None
    mac_el = el.find("mac")
    mac = None
    if mac_el is not None:
        mac = ctx.required(mac_el, "address").lower()
        if not _MAC_RE.fullmatch(mac) or int(mac[:2], 16) & 1:
            ctx.invalid(mac_el, f"{mac!r} is not a unicast MAC address", "address")
    return Interface(mac=mac)


def _chardev(ctx: _Ctx, el: _El) -> tuple[CharDevice | None, bool]:
    """Returns the device (None if unsupported) and whether its target port was written."""
    ctype = ctx.choose(el, "type", _CHAR_TYPES, _KNOWN_CHAR_TYPES, "pty")
    if ctype is None:
        return None, False
    source_el = el.find("source")
    path = None
    if ctype == "file":
        if source_el is None:
            ctx.invalid(el, "<source path=...> is required for type='file'")
        path = ctx.required(source_el, "path")
    elif source_el is not None:
        ctx.unsupported_at(source_el)
    target_el = el.find("target")
    port_raw = None if target_el is None else target_el.get("port")
    port = 0
    if target_el is not None:
        if port_raw is not None:
            port = ctx.integer(target_el, port_raw, 0, "port")
        if el.tag == "console":
            if ctx.choose(target_el, "type", ("serial",), _KNOWN_CONSOLE_TARGETS, "serial") is None:
                return None, False
        elif target_el.get("type") is not None:
            ctx.unsupported_at(target_el, "type")
    kind: Literal["serial", "console"] = "serial" if el.tag == "serial" else "console"
    return CharDevice(kind=kind, type=ctype, path=path, target_port=port), port_raw is not None


def _graphics(ctx: _Ctx, el: _El) -> Graphics | None:
    if ctx.choose(el, "type", ("vnc",), _KNOWN_GRAPHICS) is None:
        return None
    listen = el.get("listen")
    if listen is not None and listen != _VNC_LOCAL:
        ctx.unsupported_at(el, "listen")
    listen_el = el.find("listen")
    if listen_el is not None and ctx.choose(listen_el, "type", ("address",), _KNOWN_LISTEN_TYPES) is not None:
        address = listen_el.get("address")
        if address is not None and address != _VNC_LOCAL:
            ctx.unsupported_at(listen_el, "address")
    autoport = ctx.choose(el, "autoport", ("yes", "no"), (), "no")
    port_raw = el.get("port")
    port = None if port_raw is None else ctx.integer(el, port_raw, -1, "port")
    if port is not None and port != -1 and not 5900 <= port <= 65535:
        ctx.invalid(el, f"VNC port {port} is outside 5900-65535", "port")
    if autoport == "yes" and port != -1:
        port = None  # a live XML's allocated port is not part of the definition
    return Graphics(type="vnc", port=port, listen=_VNC_LOCAL)
