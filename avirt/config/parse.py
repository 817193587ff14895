"""Libvirt domain XML -> :class:`DomainConfig`, for the vocabulary avirt implements and nothing more.

Why so strict: a domain definition is a promise about the guest's hardware. An element that libvirt
would honour but avirt silently ignored (a cache mode, a second video card) would boot a guest that
differs from what the caller wrote, so every element, attribute or value outside the vocabulary is
reported as an :class:`UnsupportedError` whose ``items`` are XPaths such as
``/domain/devices/hostdev`` - all of them at once, so a caller fixes a document in one go.

Two kinds of failure are kept apart:

* :class:`InvalidXMLError` (with a 1-based ``line``): the document is wrong for libvirt too - malformed
  XML, a bad unit, a non-integer size, a value libvirt does not know (``bus='floppyx'``), a missing
  required item, a duplicate singleton, disk target or controller index, a cdrom on virtio. The first
  such error is raised at once, before any unsupported items are reported.
* :class:`UnsupportedError`: valid libvirt that avirt does not implement (``<hostdev>``,
  ``type='network'`` disks, ``<qemu:commandline>``).

Where each field sits and which values are allowed is in ``tables.py``; this module adds what spans
elements: the document itself, the name and UUID, sizes, metadata, and the rules between devices.

Output-only items that libvirt (and avirt's own live XML) emits are accepted back and ignored, so
``define_xml(dumpxml())`` works: the ``id`` attribute of ``<domain>``, ``<alias>`` in any device,
``<mirror>`` and ``<backingStore>`` under ``<disk>``, a pty's ``/dev/pts`` path, libvirt's default
``<resource>`` partition and dynamic ``<seclabel>`` (avirt runs QEMU as the calling user and applies no
security labels; a static label, a promise of one, is unsupported). A DOCTYPE is refused: entities are
never expanded.

Normalisations (so that ``parse(serialize(cfg)) == cfg``): sizes become KiB rounded up (``KB``/``MB``/...
are powers of 1000 as in libvirt), the UUID becomes lowercase dashed (generated when absent), MAC
addresses lowercase, a disk bus left out is inferred from its name as libvirt does (``vd`` virtio, ``sd``
scsi, ``hd`` ide, ``fd`` fdc), ``<serial>`` elements without a port get the lowest free one and
controllers without an index the lowest free index of their type, VNC/SPICE ``autoport='yes'`` becomes
``port=None`` unless ``port='-1'`` was written. Defaults where the XML is silent follow the model
(notably ``machine='q35'`` and NIC model ``virtio``), not libvirt's host-dependent choices.
"""

from __future__ import annotations

import re
import uuid

from lxml import etree

from avirt.config import tables as t
from avirt.config.devices import CharDevice, Controller
from avirt.config.model import DomainConfig, OSConfig
from avirt.config.schema import ANY, Ctx, El, Spec, line_of, text_of, unique
from avirt.errors import InvalidXMLError, UnsupportedError

__all__ = ["parse_domain_xml"]

_KNOWN_DOMAIN_TYPES = {"qemu", "kqemu", "kvm", "xen", "lxc", "uml", "openvz", "test", "vmware", "hyperv",
                       "vbox", "phyp", "parallels", "bhyve", "vz", "hvf", "ch"}
_KNOWN_OS_TYPES = {"hvm", "xen", "linux", "xenpvh", "exe", "uml"}
_KNOWN_LIFECYCLE = {"destroy", "restart", "preserve", "rename-restart", "coredump-destroy",
                    "coredump-restart"}
_KNOWN_CLOCK = {"utc", "localtime", "timezone", "variable", "absolute"}
_NAME_RE = re.compile(r"[A-Za-z0-9_+][A-Za-z0-9_.+-]{0,63}")
_MACHINE_RE = re.compile(r"q35|pc|pc-(q35|i440fx)-[0-9]+\.[0-9]+")

def _schema() -> Spec:
    def leaf(*attrs: str, text: bool = False, multiple: bool = False) -> Spec:
        return Spec(attrs=set(attrs), text=text, multiple=multiple)

    os_spec = Spec(children={
        "type": leaf("arch", "machine", text=True), "kernel": leaf(text=True), "initrd": leaf(text=True),
        "cmdline": leaf(text=True), "boot": leaf("dev", multiple=True),
        "bootmenu": leaf("enable", "timeout"), "smbios": leaf("mode"),
        "loader": t.LOADER.spec(), "nvram": t.NVRAM.spec(),
        "firmware": Spec(children={"feature": Spec(**vars(t.FIRMWARE_FEATURE.spec()) | {"multiple": True})}),
    }, attrs={"firmware"})
    devices = Spec(children={"emulator": leaf(text=True)})
    for tag, (kind, _) in t.DEVICE_KINDS.items():
        spec = kind.spec()
        spec.multiple = tag != "memballoon"
        devices.children[tag] = spec
    timer = t.TIMER.spec()
    timer.multiple = True
    return Spec(attrs={"type", "id"}, children={
        "name": leaf(text=True), "uuid": leaf(text=True), "title": leaf(text=True),
        "description": leaf(text=True), "metadata": ANY,
        "memory": leaf("unit", text=True), "currentMemory": leaf("unit", text=True),
        "vcpu": leaf("placement", "current", text=True), "iothreads": leaf(text=True),
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
    # A str has already been decoded: its encoding declaration, if any, must not be applied again.
    parser = etree.XMLParser(
        resolve_entities=False, no_network=True, load_dtd=False, remove_comments=True, remove_pis=True,
        encoding="utf-8" if isinstance(xml, str) else None,
    )
    try:
        data = xml.encode("utf-8") if isinstance(xml, str) else xml
    except UnicodeEncodeError as exc:  # lone surrogates, as os.fsdecode makes of undecodable bytes
        raise InvalidXMLError(f"the document is not valid Unicode: {exc.reason}", None) from exc
    try:
        root = etree.fromstring(data, parser)
    except etree.XMLSyntaxError as exc:
        raise InvalidXMLError(f"malformed XML: {exc.msg}", exc.lineno) from exc
    tree = root.getroottree()
    if tree.docinfo.internalDTD is not None or tree.docinfo.doctype:
        raise InvalidXMLError("DOCTYPE declarations are not accepted", 1)
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
    """Size element -> KiB, rounded up; units follow libvirt's virScaleInteger (case-insensitive)."""
    amount = ctx.integer(el, text_of(el), 1)
    unit = (el.get("unit") or "KiB").lower()
    powers = "kmgtpe"
    if unit in ("b", "bytes"):
        scale = 1
    elif len(unit) >= 1 and unit[0] in powers and unit[1:] in ("", "ib", "b"):
        scale = (1000 if unit[1:] == "b" else 1024) ** (powers.index(unit[0]) + 1)
    else:
        ctx.invalid(el, f"unknown unit {el.get('unit')!r}", "unit")
    return -(-amount * scale // 1024)  # integer ceiling: floats would lose precision on large sizes


def _domain(ctx: Ctx, root: El) -> DomainConfig:
    hypervisor = ctx.choose(root, "type", ("kvm", "qemu"), _KNOWN_DOMAIN_TYPES) or "kvm"
    if root.get("id") is not None:
        ctx.integer(root, root.get("id"), -1, "id")  # output-only, but garbage is still garbage
    name_el = root.find("name")
    if name_el is None:
        ctx.invalid(root, "<name> is required")
    name = text_of(name_el)
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
    vcpus, vcpus_current = 1, None
    vcpu_el = root.find("vcpu")
    if vcpu_el is not None:
        vcpus = ctx.integer(vcpu_el, text_of(vcpu_el), 1)
        ctx.choose(vcpu_el, "placement", ("static",), {"static", "auto"}, "static")
        if vcpu_el.get("current") is not None:
            vcpus_current = ctx.integer(vcpu_el, vcpu_el.get("current"), 1, "current")
            if vcpus_current > vcpus:
                ctx.invalid(vcpu_el, "current is larger than the vCPU count", "current")
    iothreads_el = root.find("iothreads")
    clock_el = root.find("clock")
    clock = None if clock_el is None else ctx.choose(clock_el, "offset", ("utc", "localtime"), _KNOWN_CLOCK,
                                                     "utc")
    lifecycle = {
        tag: (None if el is None else ctx.choose(el, None, ("destroy", "restart", "preserve"), _KNOWN_LIFECYCLE))
        for tag in ("on_poweroff", "on_reboot", "on_crash")
        for el in [root.find(tag)]
    }
    _security(ctx, root)
    cfg = DomainConfig(
        name=name,
        uuid=_uuid(ctx, root.find("uuid")),
        hypervisor=hypervisor,  # type: ignore[arg-type]
        title=title,
        description=_opt_text(root.find("description")),
        metadata=_metadata(root.find("metadata")),
        memory_kib=memory,
        current_memory_kib=current,
        vcpus=vcpus,
        vcpus_current=vcpus_current,
        iothreads=None if iothreads_el is None else ctx.integer(iothreads_el, text_of(iothreads_el), 1),
        os=_os(ctx, root),
        clock_offset=clock or "utc",  # type: ignore[arg-type]
        on_poweroff=lifecycle["on_poweroff"] or "destroy",  # type: ignore[arg-type]
        on_reboot=lifecycle["on_reboot"] or "restart",  # type: ignore[arg-type]
        on_crash=lifecycle["on_crash"] or "destroy",  # type: ignore[arg-type]
    )
    for tag, kind, attr in (("sysinfo", t.SYSINFO, "sysinfo"), ("features", t.FEATURES, "features"),
                            ("cpu", t.CPU, "cpu")):
        if (el := root.find(tag)) is not None and (obj := kind.read(ctx, el)) is not None:
            setattr(cfg, attr, obj)
    if clock_el is not None:
        cfg.timers = [timer for el in clock_el.findall("timer") if (timer := t.TIMER.read(ctx, el)) is not None]
        unique(ctx, ((el, el.get("name")) for el in clock_el.findall("timer")), "timer")
    pm = root.find("pm")
    if pm is not None:
        for tag in ("suspend-to-mem", "suspend-to-disk"):
            if (el := pm.find(tag)) is not None:
                setattr(cfg, tag.replace("-", "_"), ctx.choose(el, "enabled", ("yes", "no"), ()))
    devices = root.find("devices")
    if devices is not None:
        _devices(ctx, devices, cfg)
    return cfg


def _security(ctx: Ctx, root: El) -> None:
    """Accept what libvirt adds by default (it promises nothing avirt does not do); refuse the rest."""
    resource = root.find("resource/partition")
    if resource is not None and text_of(resource).strip() != "/machine":
        ctx.unsupported_at(resource)
    for label in root.findall("seclabel"):
        if label.get("type") not in ("dynamic", "none"):
            ctx.unsupported_at(label, "type")


def _metadata(el: El | None) -> list[str]:
    if el is None:
        return []
    items = []
    for child in el:
        if not isinstance(child.tag, str):
            continue
        copy = etree.fromstring(etree.tostring(child))  # detached, so it carries its own namespaces
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


def _os(ctx: Ctx, root: El) -> OSConfig:
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
    machine = type_el.get("machine", "q35")
    if not _MACHINE_RE.fullmatch(machine):
        if not re.fullmatch(r"[a-z0-9_.-]+", machine):
            ctx.invalid(type_el, f"{machine!r} is not a machine type", "machine")
        ctx.unsupported_at(type_el, "machine")  # isapc, microvm, xenfv...: not the PC machines
    boot_devs = []
    for boot in os_el.findall("boot"):
        dev = ctx.choose(boot, "dev", ("hd", "cdrom", "network", "fd"), ())
        if dev is not None:
            boot_devs.append(dev)
    firmware = ctx.choose(os_el, "firmware", ("efi", "bios"), (), "") or None
    features = [f for el in os_el.findall("firmware/feature") if (f := t.FIRMWARE_FEATURE.read(ctx, el))]
    if features and firmware != "efi":
        ctx.invalid(os_el, "<firmware> features need firmware='efi'")
    bootmenu = os_el.find("bootmenu")
    smbios = os_el.find("smbios")
    loader = os_el.find("loader")
    nvram = os_el.find("nvram")
    return OSConfig(
        machine=machine,
        firmware=firmware,
        firmware_features=features,
        loader=None if loader is None else t.LOADER.read(ctx, loader),
        nvram=None if nvram is None else t.NVRAM.read(ctx, nvram),
        kernel=_path_text(ctx, os_el.find("kernel")),
        initrd=_path_text(ctx, os_el.find("initrd")),
        cmdline=_opt_text(os_el.find("cmdline")),
        boot_devs=boot_devs,
        bootmenu=None if bootmenu is None else ctx.choose(bootmenu, "enable", ("yes", "no"), ()),
        bootmenu_timeout=None if bootmenu is None or bootmenu.get("timeout") is None
        else ctx.integer(bootmenu, bootmenu.get("timeout"), 0, "timeout"),
        smbios_mode=None if smbios is None else ctx.choose(smbios, "mode", ("sysinfo", "emulate"), {"host"}),
    )


def _devices(ctx: Ctx, devices: El, cfg: DomainConfig) -> None:
    cfg.emulator = _path_text(ctx, devices.find("emulator"))
    where: dict[int, El] = {}  # id(device) -> its element, for the rules between devices
    for el in devices:
        if not isinstance(el.tag, str) or el.tag not in t.DEVICE_KINDS:
            continue
        kind, attr = t.DEVICE_KINDS[el.tag]
        obj = kind.read(ctx, el)
        if obj is None:
            continue
        where[id(obj)] = el
        if attr == "memballoon":
            cfg.memballoon = obj
        else:
            getattr(cfg, attr).append(obj)
    unique(ctx, ((where[id(d)], d.target) for d in cfg.disks), "disk target")
    _number_serial_ports(ctx, cfg.chardevs, where)
    _number_controllers(ctx, cfg.controllers, where)


def _number_serial_ports(ctx: Ctx, chardevs: list[CharDevice], where: dict[int, El]) -> None:
    serials = [c for c in chardevs if c.kind == "serial"]
    explicit = [c for c in serials if where[id(c)].find("target[@port]") is not None]
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
    for controller in masters:
        if controller.index is None:
            taken = {c.index for c in masters if c.type == controller.type and c.index is not None}
            controller.index = min(set(range(len(taken) + 1)) - taken)
    for controller in controllers:
        if controller.master_startport is not None:
            if controller.type != "usb":
                ctx.invalid(where[id(controller)], "only USB companion controllers have a <master>")
            if controller.index is None:
                usb = [c for c in masters if c.type == "usb"]
                controller.index = usb[-1].index if usb else 0
