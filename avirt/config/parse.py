"""Libvirt domain XML -> :class:`DomainConfig`, for the vocabulary avirt implements and nothing more.

Why so strict: a domain definition is a promise about the guest's hardware. An element that libvirt
would honour but avirt silently ignored (a cache mode, a second video card) would boot a guest that
differs from what the caller wrote, so every element, attribute or value outside the vocabulary is
reported as an :class:`UnsupportedError` whose ``items`` are XPaths such as
``/domain/devices/hostdev`` - all of them at once, so a caller fixes a document in one go.

Two kinds of failure are kept apart:

* :class:`InvalidXMLError` (with a 1-based ``line``, and the XPath of the offending item in the message):
  the document is wrong for libvirt too - malformed XML, a bad unit, a non-integer size, a value libvirt
  does not know (``bus='floppyx'``), a missing required item, a duplicate singleton, disk target,
  controller index or PCI address, a cdrom on virtio, a device that needs another one that is absent.
  The first such error is raised at once, before any unsupported items are reported.
* :class:`UnsupportedError`: valid libvirt that avirt does not implement (``<hostdev>``,
  ``type='network'`` disks, huge pages, ``<qemu:commandline>``).

Where each field sits and which values are allowed is in ``tables.py``; this module adds what spans
elements: the document itself, the name and UUID, sizes, metadata, and the rules between devices.

Output-only items that libvirt (and avirt's own live XML) emits are accepted back and ignored, so
``define_xml(dumpxml())`` works: the ``id`` attribute of ``<domain>``, ``<alias>`` in any device,
``<mirror>``, ``<backingStore>`` and ``<source index=>`` under ``<disk>``, a pty's ``/dev/pts`` path,
a channel's ``state``, a NIC's ``portid``, the bridge its libvirt network gave it and a tap name libvirt
generated (``vnet3``), libvirt's default ``<resource>`` partition and dynamic ``<seclabel>`` (avirt runs
QEMU as the calling user and applies no security labels; a static label, a promise of one, is
unsupported). A DOCTYPE is refused: entities are never expanded.

Normalisations (so that ``parse(serialize(cfg)) == cfg``): sizes become KiB rounded up (``KB``/``MB``/...
are powers of 1000 as in libvirt), the UUID becomes lowercase dashed (generated when absent), MAC
addresses lowercase, a disk bus left out is inferred from its name as libvirt does (``vd`` virtio, ``sd``
scsi, ``hd`` ide, ``fd`` fdc), ``<serial>`` elements without a port get the lowest free one and
controllers without an index the lowest free index of their type, a PCI address with some numbers gets
0 for the others, VNC/SPICE ``autoport='yes'`` becomes ``port=None`` unless ``port='-1'`` was written.
Defaults where the XML is silent follow the model (notably ``machine='q35'`` and NIC model ``virtio``),
not libvirt's host-dependent choices.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterable
from copy import deepcopy

from lxml import etree

from avirt.config import tables as t
from avirt.config.devices import Address, CharDevice, Controller, Disk, Interface
from avirt.config.model import DomainConfig, OSConfig
from avirt.config.schema import (
    ANY,
    Ctx,
    El,
    Spec,
    child,
    cpus_of,
    first,
    kib,
    line_of,
    read_document,
    text_of,
    unique,
)
from avirt.errors import InvalidXMLError, UnsupportedError

__all__ = ["parse_domain_xml"]

_KNOWN_DOMAIN_TYPES = {"qemu", "kqemu", "kvm", "xen", "lxc", "uml", "openvz", "test", "vmware", "hyperv",
                       "vbox", "phyp", "parallels", "bhyve", "vz", "hvf", "ch"}
_KNOWN_OS_TYPES = {"hvm", "xen", "linux", "xenpvh", "exe", "uml"}
_ACTIONS = ("destroy", "restart", "preserve")
_CRASH_ACTIONS = (*_ACTIONS, "coredump-destroy", "coredump-restart")
_KNOWN_CLOCK = {"utc", "localtime", "timezone", "variable", "absolute"}
_NAME_RE = re.compile(r"[A-Za-z0-9_+][A-Za-z0-9_.+-]{0,63}")
_MACHINE_RE = re.compile(r"q35|pc|pc-(q35|i440fx)-[0-9]+\.[0-9]+")


def _schema() -> Spec:
    def leaf(*attrs: str, text: bool = False, multiple: bool = False) -> Spec:
        return Spec(attrs=set(attrs), text=text, multiple=multiple)

    feature = t.FIRMWARE_FEATURE.spec()
    feature.multiple = True
    os_spec = Spec(children={
        "type": leaf("arch", "machine", text=True), "kernel": leaf(text=True), "initrd": leaf(text=True),
        "cmdline": leaf(text=True), "boot": leaf("dev", multiple=True),
        "bootmenu": leaf("enable", "timeout"), "smbios": leaf("mode"),
        "loader": t.LOADER.spec(), "nvram": t.NVRAM.spec(), "firmware": Spec(children={"feature": feature}),
    }, attrs={"firmware"})
    devices = Spec(children={"emulator": leaf(text=True)})
    for tag, (kind, _) in t.DEVICE_KINDS.items():
        spec = kind.spec()
        spec.multiple = tag not in t.SINGLE_DEVICES
        devices.children[tag] = spec
    timer = t.TIMER.spec()
    timer.multiple = True
    return Spec(attrs={"type", "id"}, children={
        "name": leaf(text=True), "uuid": leaf(text=True), "title": leaf(text=True),
        "description": leaf(text=True), "metadata": ANY,
        "memory": leaf("unit", text=True), "currentMemory": leaf("unit", text=True),
        "memoryBacking": t.MEMORY_BACKING.spec(),
        "vcpu": leaf("placement", "current", text=True), "iothreads": leaf(text=True),
        "cputune": t.CPUTUNE.spec(),
        "sysinfo": t.SYSINFO.spec(), "os": os_spec, "features": t.FEATURES.spec(), "cpu": t.CPU.spec(),
        "clock": Spec(attrs={"offset"}, children={"timer": timer}),
        "on_poweroff": leaf(text=True), "on_reboot": leaf(text=True), "on_crash": leaf(text=True),
        "pm": Spec(children={"suspend-to-mem": leaf("enabled"), "suspend-to-disk": leaf("enabled")}),
        "resource": Spec(children={"partition": leaf(text=True)}),
        "seclabel": Spec(attrs={"type", "model", "relabel"}, multiple=True, children={
            "label": leaf(text=True), "imagelabel": leaf(text=True)}),
        "devices": devices,
    })


_SCHEMA = _schema()


def parse_domain_xml(xml: str | bytes) -> DomainConfig:
    """Parse libvirt domain XML into a :class:`DomainConfig`.

    Raises :class:`InvalidXMLError` for malformed or invalid documents and :class:`UnsupportedError`
    (listing every offending XPath) for valid libvirt outside avirt's vocabulary.
    """
    root = read_document(xml)
    tree = root.getroottree()
    if root.tag != "domain":
        raise InvalidXMLError(f"root element must be <domain>, not <{root.tag}>", line_of(root))
    ctx = Ctx(tree)
    ctx.check_structure(root, _SCHEMA)
    cfg = _domain(ctx, root)
    if ctx.unsupported:
        raise UnsupportedError(ctx.unsupported, "not supported by avirt")
    return cfg


def _opt_text(el: El | None) -> str | None:
    return None if el is None else text_of(el)  # <title/> stays "" so that "" round-trips


def _path_text(ctx: Ctx, el: El | None) -> str | None:
    if el is None:
        return None
    if not text_of(el).strip():
        ctx.invalid(el, "must not be empty")
    return text_of(el)


def _kib(ctx: Ctx, el: El) -> int:
    """Size element -> KiB, rounded up."""
    return kib(ctx, el, ctx.integer(el, text_of(el), 1), el.get("unit"))


def _domain(ctx: Ctx, root: El) -> DomainConfig:
    top = ctx.children(root)  # the children of <domain>, found in one pass rather than one find() each
    hypervisor = ctx.choose(root, "type", ("kvm", "qemu"), _KNOWN_DOMAIN_TYPES) or "kvm"
    if root.get("id") is not None:
        ctx.integer(root, root.get("id"), -1, "id")  # output-only, but garbage is still garbage
    name_el = first(top, "name")
    if name_el is None:
        ctx.invalid(root, "<name> is required")
    name = text_of(name_el)
    if not _NAME_RE.fullmatch(name):
        ctx.invalid(name_el, f"{name!r} is not a safe domain name ([A-Za-z0-9_.+-], no leading '.' or '-', "
                             "at most 64 characters)")
    title_el = first(top, "title")
    title = _opt_text(title_el)
    if title_el is not None and title is not None and "\n" in title:
        ctx.invalid(title_el, "must be a single line")
    memory_el = first(top, "memory")
    if memory_el is None:
        ctx.invalid(root, "<memory> is required")
    memory = _kib(ctx, memory_el)
    current_el = first(top, "currentMemory")
    current = None
    if current_el is not None and (current := _kib(ctx, current_el)) > memory:
        ctx.invalid(current_el, "is larger than <memory>")
    vcpus, vcpus_current = 1, None
    vcpu_el = first(top, "vcpu")
    if vcpu_el is not None:
        vcpus = ctx.integer(vcpu_el, text_of(vcpu_el), 1)
        ctx.choose(vcpu_el, "placement", ("static",), {"static", "auto"}, "static")
        if vcpu_el.get("current") is not None:
            vcpus_current = ctx.integer(vcpu_el, vcpu_el.get("current"), 1, "current")
            if vcpus_current > vcpus:
                ctx.invalid(vcpu_el, "current is larger than the vCPU count", "current")
    iothreads_el = first(top, "iothreads")
    clock_el = first(top, "clock")
    clock = None if clock_el is None else ctx.choose(clock_el, "offset", ("utc", "localtime"), _KNOWN_CLOCK,
                                                     "utc")
    lifecycle = {
        tag: None if el is None else ctx.choose(el, None, supported, {"rename-restart"})
        for tag, supported in (("on_poweroff", _ACTIONS), ("on_reboot", _ACTIONS),
                               ("on_crash", _CRASH_ACTIONS))
        for el in [first(top, tag)]
    }
    _security(ctx, root, top)
    cfg = DomainConfig(
        name=name,
        uuid=_uuid(ctx, first(top, "uuid")),
        hypervisor=hypervisor,  # type: ignore[arg-type]
        title=title,
        description=_opt_text(first(top, "description")),
        metadata=_metadata(ctx, first(top, "metadata")),
        memory_kib=memory,
        current_memory_kib=current,
        vcpus=vcpus,
        vcpus_current=vcpus_current,
        iothreads=None if iothreads_el is None else ctx.integer(iothreads_el, text_of(iothreads_el), 1),
        os=_os(ctx, root, first(top, "os")),
        clock_offset=clock or "utc",  # type: ignore[arg-type]
        on_poweroff=lifecycle["on_poweroff"] or "destroy",  # type: ignore[arg-type]
        on_reboot=lifecycle["on_reboot"] or "restart",  # type: ignore[arg-type]
        on_crash=lifecycle["on_crash"] or "destroy",  # type: ignore[arg-type]
    )
    for tag, kind, attr in (("memoryBacking", t.MEMORY_BACKING, "memory_backing"),
                            ("cputune", t.CPUTUNE, "cputune"), ("sysinfo", t.SYSINFO, "sysinfo"),
                            ("features", t.FEATURES, "features"), ("cpu", t.CPU, "cpu")):
        if (el := first(top, tag)) is not None and (obj := kind.read(ctx, el)) is not None:
            setattr(cfg, attr, obj)
    if clock_el is not None:
        timers = ctx.children(clock_el).get("timer", [])
        cfg.timers = [timer for el in timers if (timer := t.TIMER.read(ctx, el)) is not None]
        unique(ctx, ((el, el.get("name")) for el in timers), "timer")
    pm = first(top, "pm")
    if pm is not None:
        for tag in ("suspend-to-mem", "suspend-to-disk"):
            if (el := first(ctx.children(pm), tag)) is not None:
                setattr(cfg, tag.replace("-", "_"), ctx.choose(el, "enabled", ("yes", "no"), ()))
    _domain_rules(ctx, root, top, cfg)
    devices = first(top, "devices")
    if devices is not None:
        _devices(ctx, root, devices, cfg)
    return cfg


def _security(ctx: Ctx, root: El, top: dict[str, list[El]]) -> None:
    """Accept what libvirt adds by default (it promises nothing avirt does not do); refuse the rest."""
    resource = root.find("resource/partition") if "resource" in top else None
    if resource is not None and text_of(resource).strip() != "/machine":
        ctx.unsupported_at(resource)
    for label in top.get("seclabel", []):
        if label.get("type", "dynamic") not in ("dynamic", "none"):
            ctx.unsupported_at(label, "type")


def _metadata(ctx: Ctx, el: El | None) -> list[str]:
    """Each child of <metadata> verbatim, as libvirt keeps it: one element per namespace."""
    if el is None:
        return []
    items = []
    namespaces: set[str] = set()
    for item in el:
        if not isinstance(item.tag, str):
            continue
        namespace = etree.QName(item).namespace
        if namespace is None:
            ctx.invalid(item, "a metadata element must be in a namespace of its own")
        if namespace in namespaces:
            ctx.invalid(item, f"a second metadata element in namespace {namespace!r}")
        namespaces.add(namespace)
        # Detached, so that it carries its own namespaces (a copy in a document of its own, rather than
        # written out and parsed again); only those it uses are kept.
        copy = deepcopy(item)
        copy.tail = None
        etree.cleanup_namespaces(copy)
        items.append(etree.tostring(copy, encoding="unicode"))
    return items


def _uuid(ctx: Ctx, el: El | None) -> str:
    if el is None:
        return str(uuid.uuid4())
    # libvirt's virUUIDParse: 32 hex digits, dashes anywhere, surrounding blanks ignored.
    digits = text_of(el).strip().replace("-", "")
    if not re.fullmatch(r"[0-9A-Fa-f]{32}", digits):
        ctx.invalid(el, f"{text_of(el)!r} is not a UUID")
    return str(uuid.UUID(hex=digits))


def _os(ctx: Ctx, root: El, os_el: El | None) -> OSConfig:
    kids = {} if os_el is None else ctx.children(os_el)
    type_el = first(kids, "type")
    if os_el is None or type_el is None:
        ctx.invalid(root if os_el is None else os_el, "<os><type>hvm</type></os> is required")
    ctx.choose(type_el, None, ("hvm",), _KNOWN_OS_TYPES)
    arch = type_el.get("arch", "x86_64")
    if arch != "x86_64":
        if not re.fullmatch(r"[a-z0-9_]+", arch):
            ctx.invalid(type_el, f"unknown architecture {arch!r}", "arch")
        ctx.unsupported_at(type_el, "arch")
    machine = type_el.get("machine", "q35")
    if not _MACHINE_RE.fullmatch(machine):
        if not re.fullmatch(r"[a-z0-9_.-]+", machine):
            ctx.invalid(type_el, f"{machine!r} is not a machine type", "machine")
        ctx.unsupported_at(type_el, "machine")  # isapc, microvm, xenfv...: not the PC machines
    boot_devs = []
    for boot in kids.get("boot", []):
        dev = ctx.choose(boot, "dev", ("hd", "cdrom", "network", "fd"), ())
        if dev is not None:
            boot_devs.append(dev)
    firmware = ctx.choose(os_el, "firmware", ("efi", "bios"), (), "") or None
    feature_els = os_el.findall("firmware/feature") if "firmware" in kids else []
    features = [f for el in feature_els if (f := t.FIRMWARE_FEATURE.read(ctx, el))]
    loader = first(kids, "loader")
    if features and firmware != "efi" and loader is None:
        # libvirt's live XML drops firmware='efi' once it picked the loader, and keeps the features.
        ctx.invalid(child(os_el, "firmware"), "firmware features need <os firmware='efi'> or a <loader>")
    bootmenu = first(kids, "bootmenu")
    smbios = first(kids, "smbios")
    nvram = first(kids, "nvram")
    return OSConfig(
        machine=machine,
        firmware=firmware,
        firmware_features=features,
        loader=None if loader is None else t.LOADER.read(ctx, loader),
        nvram=None if nvram is None else t.NVRAM.read(ctx, nvram),
        kernel=_path_text(ctx, first(kids, "kernel")),
        initrd=_path_text(ctx, first(kids, "initrd")),
        cmdline=_opt_text(first(kids, "cmdline")),
        boot_devs=boot_devs,
        bootmenu=None if bootmenu is None else ctx.choose(bootmenu, "enable", ("yes", "no"), ()),
        bootmenu_timeout=None if bootmenu is None or bootmenu.get("timeout") is None
        else ctx.integer(bootmenu, bootmenu.get("timeout"), 0, "timeout"),
        smbios_mode=None if smbios is None else ctx.choose(smbios, "mode", ("sysinfo", "emulate"), {"host"}),
    )


def _domain_rules(ctx: Ctx, root: El, top: dict[str, list[El]], cfg: DomainConfig) -> None:
    """The rules between domain-level elements: vCPUs, NUMA cells, pinning, firmware."""
    cpu = cfg.cpu
    cpu_el = first(top, "cpu")
    if cpu is not None and cpu_el is not None and ctx.intact(cpu_el):
        if cpu.sockets is not None and cpu.cores is not None and cpu.threads is not None:
            product = cpu.sockets * (cpu.dies or 1) * cpu.cores * cpu.threads
            if product != cfg.vcpus:
                ctx.invalid(child(cpu_el, "topology"), f"{product} CPUs in the topology, but <vcpu> is "
                                                       f"{cfg.vcpus}")
        cells = cpu_el.findall("numa/cell")
        unique(ctx, zip(cells, (c.id for c in cpu.numa), strict=True), "NUMA cell id")
        if cpu.numa and sorted(c.id for c in cpu.numa) != list(range(len(cpu.numa))):
            ctx.invalid(child(cpu_el, "numa"), "cell ids must be 0, 1, 2... (one per cell)")
        _cells_cpus(ctx, zip(cells, (c.cpus for c in cpu.numa), strict=True), cfg.vcpus)
        if cpu.numa and (total := sum(c.memory_kib for c in cpu.numa)) != cfg.memory_kib:
            ctx.invalid(child(cpu_el, "numa"), f"the cells hold {total} KiB, but <memory> is "
                                               f"{cfg.memory_kib} KiB")
    tune_el = first(top, "cputune")
    if cfg.cputune is not None and tune_el is not None:
        pins = tune_el.findall("vcpupin")
        unique(ctx, zip(pins, (p.vcpu for p in cfg.cputune.vcpupins), strict=True), "vcpupin for vCPU")
        for el, pin in zip(pins, cfg.cputune.vcpupins, strict=True):
            if pin.vcpu >= cfg.vcpus:
                ctx.invalid(el, f"there is no vCPU {pin.vcpu} (<vcpu> is {cfg.vcpus})", "vcpu")
        pins = tune_el.findall("iothreadpin")
        unique(ctx, zip(pins, (p.iothread for p in cfg.cputune.iothreadpins), strict=True),
               "iothreadpin for iothread")
        for el, iopin in zip(pins, cfg.cputune.iothreadpins, strict=True):
            _iothread_exists(ctx, el, "iothread", iopin.iothread, cfg)
    loader = cfg.os.loader
    if loader is not None and loader.secure == "yes" and cfg.features.smm != "on":
        ctx.invalid(child(child(root, "os"), "loader"), "secure boot needs <features><smm state='on'/>",
                    "secure")


def _cells_cpus(ctx: Ctx, cells: Iterable[tuple[El, str]], count: int) -> None:
    """Each vCPU of a NUMA cell exists and belongs to that cell only."""
    seen: set[int] = set()
    for el, cpuset in cells:
        cpus = cpus_of(cpuset)
        if max(cpus) >= count:
            ctx.invalid(el, f"CPU {max(cpus)} is beyond the {count} vCPUs", "cpus")
        if cpus & seen:
            ctx.invalid(el, f"CPU {min(cpus & seen)} is already in another cell", "cpus")
        seen |= cpus


def _iothread_exists(ctx: Ctx, el: El, attr: str, number: int, cfg: DomainConfig) -> None:
    if number > (cfg.iothreads or 0):
        ctx.invalid(el, f"there is no iothread {number} (<iothreads> is {cfg.iothreads or 0})", attr)


def _devices(ctx: Ctx, root: El, devices: El, cfg: DomainConfig) -> None:
    cfg.emulator = _path_text(ctx, first(ctx.children(devices), "emulator"))
    where: dict[int, El] = {}  # id(device) -> its element, for the rules between devices
    for el in devices:
        tag = el.tag  # lxml makes a new string on each ask
        if not isinstance(tag, str) or tag not in t.DEVICE_KINDS:
            continue
        kind, attr = t.DEVICE_KINDS[tag]
        obj = kind.read(ctx, el)
        if obj is None:
            continue
        where[id(obj)] = el
        if tag in t.SINGLE_DEVICES:
            setattr(cfg, attr, obj)
        else:
            getattr(cfg, attr).append(obj)
    _number_serial_ports(ctx, cfg.chardevs, where)
    _number_controllers(ctx, cfg.controllers, where)
    _device_rules(ctx, root, cfg, where)


def _number_serial_ports(ctx: Ctx, chardevs: list[CharDevice], where: dict[int, El]) -> None:
    serials = [c for c in chardevs if c.kind == "serial"]
    explicit = [c for c in serials if any(target.get("port") is not None  # as find("target[@port]")
                                          for target in ctx.children(where[id(c)]).get("target", []))]
    unique(ctx, ((where[id(c)], c.target_port) for c in explicit), "serial port")
    taken = {c.target_port for c in explicit}
    for chardev in serials:
        if any(chardev is c for c in explicit):
            continue
        chardev.target_port = min(set(range(len(taken) + 1)) - taken)  # as libvirt: the lowest free port
        taken.add(chardev.target_port)


def _number_controllers(ctx: Ctx, controllers: list[Controller], where: dict[int, El]) -> None:
    """Controllers without an index get the lowest free one of their type, as libvirt gives them.

    USB companion controllers (a UHCI with ``<master>``) share the index of the EHCI they belong to.
    """
    masters = [c for c in controllers if c.master_startport is None]
    unique(ctx, ((where[id(c)], (c.type, c.index)) for c in masters if c.index is not None),
           "controller type and index")
    taken: dict[str, set[int]] = {}  # type -> its indexes so far
    for controller in masters:
        if controller.index is not None:
            taken.setdefault(controller.type, set()).add(controller.index)
    for controller in masters:
        if controller.index is None:
            used = taken.setdefault(controller.type, set())
            # PCI index 0 is the machine's root bus: a bridge or root port written without an index
            # gets the next one, whether or not the root itself is written (as libvirt numbers them).
            first = 1 if controller.type == "pci" and controller.model not in ("pci-root", "pcie-root") else 0
            controller.index = min(set(range(first, len(used) + first + 1)) - used)
            used.add(controller.index)
    for controller in controllers:
        if controller.master_startport is not None:
            if controller.type != "usb":
                ctx.invalid(where[id(controller)], "only USB companion controllers have a <master>")
            if controller.index is None:
                usb = [c for c in masters if c.type == "usb"]
                controller.index = usb[-1].index if usb else 0


def _device_rules(ctx: Ctx, root: El, cfg: DomainConfig, where: dict[int, El]) -> None:
    """The rules between devices, and between devices and the rest of the domain."""

    def el(device: object) -> El:
        return where[id(device)]

    q35 = cfg.os.machine == "q35" or cfg.os.machine.startswith("pc-q35-")
    unique(ctx, ((el(d), d.target) for d in cfg.disks), "disk target")
    unique(ctx, ((el(g), g.type) for g in cfg.graphics), "<graphics> of type")
    unique(ctx, ((el(c), c.target_name) for c in cfg.chardevs if c.kind == "channel"), "channel name")
    unique(ctx, ((el(a), a.id) for a in cfg.audios), "audio id")
    for tpm in cfg.tpms[1:]:
        ctx.invalid(el(tpm), "a domain has one <tpm> at most")

    # Addresses: a PCI slot, or a drive's place on its controller, holds one device.
    devices: list[object] = [*cfg.disks, *cfg.controllers, *cfg.filesystems, *cfg.interfaces, *cfg.chardevs,
                             *cfg.inputs, *cfg.sounds, *cfg.videos, *cfg.redirdevs, *cfg.watchdogs, *cfg.rngs,
                             *cfg.panics, *([cfg.memballoon] if cfg.memballoon else []),
                             *([cfg.vsock] if cfg.vsock else [])]
    slots: set[tuple[object, ...]] = set()
    for device in devices:
        address: Address | None = getattr(device, "address", None)
        if address is not None and address.type == "pci" and address.slot is not None:
            # As unique(), with the numbers as the key: the text the message shows is made for a repeat only.
            numbers = (address.domain, address.bus, address.slot, address.function)
            if numbers in slots:
                key = f"{address.domain:04x}:{address.bus:02x}:{address.slot:02x}.{address.function}"
                ctx.invalid(ctx.child(el(device), "address"), f"duplicate PCI address {key!r}")
            slots.add(numbers)
    unique(ctx, ((ctx.child(el(d), "address"), (d.bus, d.address.controller, d.address.bus, d.address.target,
                                             d.address.unit))
                 for d in cfg.disks if d.address is not None and d.address.type == "drive"), "drive address")

    # Controllers: the machine's PCI root, and buses that a machine does not have.
    for controller in cfg.controllers:
        root_model = controller.model in ("pci-root", "pcie-root")
        if controller.type == "pci" and (root_model or controller.index == 0):
            wanted = "pcie-root" if q35 else "pci-root"
            if controller.index != 0 or controller.model not in (None, wanted):
                ctx.invalid(el(controller), f"the {cfg.os.machine} machine's PCI controller 0 is "
                                            f"model='{wanted}' (and only it has index 0)")
        if controller.driver_iothread is not None:
            if controller.model not in ("virtio-scsi", "virtio-transitional", "virtio-non-transitional"):
                ctx.invalid(child(el(controller), "driver"), "an iothread serves virtio controllers only",
                            "iothread")
            driver = child(el(controller), "driver")
            _iothread_exists(ctx, driver, "iothread", controller.driver_iothread, cfg)
        if controller.type == "ide" and q35:
            ctx.invalid(el(controller), "the q35 machine has no IDE controller (use sata)")
    for disk in cfg.disks:
        if disk.bus == "ide" and q35:
            ctx.invalid(child(el(disk), "target"), "the q35 machine has no IDE bus (use sata)", "bus")
        if disk.iothread is not None:
            _iothread_exists(ctx, child(el(disk), "driver"), "iothread", disk.iothread, cfg)

    # Boot order: either per device or <os><boot>, each position once.
    bootable: list[Disk | Interface] = [*cfg.disks, *cfg.interfaces]
    booted = [d for d in bootable if d.boot_order is not None]
    unique(ctx, ((child(el(d), "boot"), d.boot_order) for d in booted), "boot order")
    if booted and cfg.os.boot_devs:
        ctx.invalid(child(el(booted[0]), "boot"),
                    "per-device boot order cannot be mixed with <os><boot dev=...>")

    unique(ctx, ((child(el(f), "target"), f.target_dir) for f in cfg.filesystems), "filesystem target")

    if ctx.unsupported:
        return  # a device refused above may be the one that another needs: judge the rest once it is fixed

    # USB devices need a USB controller, unless the document turned USB off.
    usb_off = [c for c in cfg.controllers if c.type == "usb" and c.model == "none"]
    if usb_off:
        usb_devices = [*(d for d in cfg.disks if d.bus == "usb"), *(i for i in cfg.inputs if i.bus == "usb"),
                       *cfg.redirdevs]
        if usb_devices:
            ctx.invalid(el(usb_devices[0]), "a USB device, but the USB controller is model='none'")

    # What rides on SPICE needs SPICE.
    if not any(g.type == "spice" for g in cfg.graphics):
        needs = [*(c for c in cfg.chardevs if c.type == "spicevmc"), *cfg.redirdevs,
                 *(a for a in cfg.audios if a.type == "spice")]
        if needs:
            ctx.invalid(el(needs[0]), "type='spicevmc' and type='spice' need <graphics type='spice'>")
    audio_ids = {a.id for a in cfg.audios}
    for sound in cfg.sounds:
        if sound.audio_id is not None and sound.audio_id not in audio_ids:
            ctx.invalid(child(el(sound), "audio"), f"there is no <audio id='{sound.audio_id}'>", "id")

    # virtiofs maps guest RAM into virtiofsd: the RAM must be shared.
    shared = (cfg.memory_backing is not None and cfg.memory_backing.access_mode == "shared") or (
        cfg.cpu is not None and bool(cfg.cpu.numa) and all(c.mem_access == "shared" for c in cfg.cpu.numa))
    for fs in cfg.filesystems:
        if fs.driver_type == "virtiofs" and not shared:
            ctx.invalid(child(el(fs), "driver"), "virtiofs needs shared guest memory "
                                                 "(<memoryBacking><access mode='shared'/>)")
