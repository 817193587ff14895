"""Where each field of the model sits in libvirt's domain XML, and which values avirt accepts.

One :class:`~avirt.config.schema.Kind` per element kind; ``parse.py`` and ``serialize.py`` walk these
tables, so this module is the whole vocabulary avirt speaks (docs/domain-xml.md lists it for people).
For each enumerated attribute the first set is what avirt implements and the second what libvirt also
knows: a value from the second is *unsupported*, anything else *invalid*. The ``build`` functions hold
the rules within one element (a cdrom is not on virtio, a controller model belongs to its type);
``parse.py`` holds the rules between elements.
"""

from __future__ import annotations

from typing import Any

from avirt.config import devices as d
from avirt.config import model as m
from avirt.config.schema import (
    ANY,
    ON_OFF,
    YES_NO,
    Choice,
    CpuSet,
    Ctx,
    El,
    Field,
    Flag,
    Int,
    Kind,
    Many,
    Spec,
    Sub,
    Text,
    child,
    kib,
)

# Values that reach QEMU's command line are held to patterns that need no quoting there.
PATH = r"[^\x00\n]+"
NAME = r"[A-Za-z0-9_.:+-]+"
ADDRESS_IP = r"[0-9a-fA-F.:]+"
ALIAS_IGNORED: dict[str, Spec] = {"alias": Spec(attrs={"name"})}

# -- addresses ----------------------------------------------------------------------------------------------

#: The attributes that mean something for each address type (libvirt ignores the others; avirt refuses them).
_ADDRESS_FIELDS = {
    "pci": {"domain", "bus", "slot", "function", "multifunction"},
    "drive": {"controller", "bus", "target", "unit"},
    "usb": {"bus", "port"},
    "virtio-serial": {"controller", "bus", "port"},
    "isa": {"iobase", "irq"},
}
_PCI_NUMBERS = ("domain", "bus", "slot", "function")
_PCI_NUMBER_SET = frozenset(_PCI_NUMBERS)
_ADDRESS_KEYS = {kind: {"type", *names} for kind, names in _ADDRESS_FIELDS.items()}  # what build() may see


def _address_build(ctx: Ctx, el: El, values: dict[str, Any]) -> d.Address | None:
    values.pop("bus_decimal", None)  # the same attribute as "bus", read a second time (see ADDRESS)
    kind = values["type"]
    if not _ADDRESS_KEYS[kind].issuperset(values):  # one set operation; the loop only to report
        for name in values:
            if name != "type" and name not in _ADDRESS_FIELDS[kind]:
                ctx.invalid(el, f"{name}= is not part of a type='{kind}' address", name)
    if kind == "pci":
        if _PCI_NUMBER_SET.isdisjoint(values):
            # libvirt's "somewhere on PCI": avirt places a device itself when it has no <address> at all.
            ctx.unsupported_at(el)
            return None
        for name in _PCI_NUMBERS:
            values.setdefault(name, 0)  # as libvirt: a PCI address with numbers defaults the others to 0
        if values["bus"] == 0 and values["slot"] == 0:
            ctx.invalid(el, "slot 0 of PCI bus 0 is the host bridge", "slot")
    port = values.get("port")
    if kind == "virtio-serial" and port is not None and not port.isdigit():
        ctx.invalid(el, f"{port!r} is not a virtio-serial port number", "port")
    return d.Address(**values)


def _address_unbuild(address: d.Address) -> dict[str, Any]:
    values = dict(vars(address))
    if address.type != "pci":  # libvirt writes a PCI bus in hex, a drive's or USB bus in decimal
        values["bus_decimal"] = values.pop("bus")
    return values


ADDRESS = Kind(d.Address, (
    Field("type", "@type", Choice(tuple(_ADDRESS_FIELDS),
                                  {"ccw", "ccid", "spapr-vio", "virtio-mmio", "dimm", "unassigned"}),
          required=True),
    Field("domain", "@domain", Int(0, 0xFFFF, hex_width=4)),
    Field("bus", "@bus", Int(0, 0xFF, hex_width=2)),
    Field("slot", "@slot", Int(0, 0x1F, hex_width=2)),
    Field("function", "@function", Int(0, 7, hex_width=1)),
    Field("multifunction", "@multifunction", ON_OFF),
    Field("controller", "@controller", Int(0)),
    Field("bus_decimal", "@bus", Int(0, 0xFF)),
    Field("target", "@target", Int(0)),
    Field("unit", "@unit", Int(0)),
    Field("port", "@port", Text(r"[0-9]+(\.[0-9]+)*", "a port number")),
    Field("iobase", "@iobase", Int(0, 0xFFFF, hex_width=3)),
    Field("irq", "@irq", Int(0, 15, hex_width=1)),
), build=_address_build, unbuild=_address_unbuild)
_ADDR = Sub("address", "address", ADDRESS)

# -- domain-level -------------------------------------------------------------------------------------------

LOADER = Kind(m.Loader, (
    Field("readonly", "@readonly", YES_NO),
    Field("type", "@type", Choice(("pflash", "rom"))),
    Field("secure", "@secure", YES_NO),
    Field("path", ".", Text(PATH, "a path")),
))
NVRAM = Kind(m.NVRAM, (
    Field("template", "@template", Text(PATH, "a path")),
    Field("path", ".", Text(PATH, "a path")),
))
FIRMWARE_FEATURE = Kind(m.FirmwareFeature, (
    Field("enabled", "@enabled", YES_NO, required=True),
    Field("name", "@name", Choice(("secure-boot", "enrolled-keys")), required=True),
))

#: The SMBIOS fields libvirt knows in each <sysinfo> section (QEMU's -smbios type=0,1,2,3 fields).
_SMBIOS_FIELDS = {
    "bios": {"vendor", "version", "date", "release"},
    "system": {"manufacturer", "product", "version", "serial", "uuid", "sku", "family"},
    "base_board": {"manufacturer", "product", "version", "serial", "asset", "location"},
    "chassis": {"manufacturer", "version", "serial", "asset", "sku"},
}
_SMBIOS_VALUE = Text(r"[^\n,]*", "a value without commas or newlines")
SYSINFO_ENTRY = Kind(m.SysInfoEntry, (
    Field("name", "@name", Text(r"[a-z_]+", "an SMBIOS field name"), required=True),
    Field("value", ".", _SMBIOS_VALUE),
), build=lambda ctx, el, v: m.SysInfoEntry(v["name"], v.get("value", "")))
_OEM = Kind(m.SysInfoEntry, (Field("value", ".", _SMBIOS_VALUE),),
            build=lambda ctx, el, v: m.SysInfoEntry("", v.get("value", "")))


def _sysinfo_build(ctx: Ctx, el: El, values: dict[str, Any]) -> m.SysInfo:
    for section, names in _SMBIOS_FIELDS.items():
        tag = "baseBoard" if section == "base_board" else section
        for entry, entry_el in zip(values.get(section, []), el.findall(f"{tag}/entry"), strict=False):
            if entry.name not in names:
                ctx.invalid(entry_el, f"unknown <{tag}> entry {entry.name!r}", "name")
    strings = [e.value for e in values.pop("oem_entries", [])]
    return m.SysInfo(**values, oem_strings=strings)


def _sysinfo_unbuild(info: m.SysInfo) -> dict[str, Any]:
    values = dict(vars(info))
    values["oem_entries"] = [m.SysInfoEntry("", s) for s in values.pop("oem_strings")]
    return values


SYSINFO = Kind(m.SysInfo, (
    Field("type", "@type", Choice(("smbios",), {"fwcfg"}), required=True),
    Many("bios", "bios/entry", SYSINFO_ENTRY),
    Many("system", "system/entry", SYSINFO_ENTRY),
    Many("base_board", "baseBoard/entry", SYSINFO_ENTRY),
    Many("chassis", "chassis/entry", SYSINFO_ENTRY),
    Many("oem_entries", "oemStrings/entry", _OEM),
), build=_sysinfo_build, unbuild=_sysinfo_unbuild)

MEMORY_BACKING = Kind(m.MemoryBacking, (
    Field("source_type", "source/@type", Choice(("memfd", "anonymous"), {"file"})),
    Field("access_mode", "access/@mode", Choice(("shared", "private"))),
    Field("allocation_mode", "allocation/@mode", Choice(("immediate", "ondemand"))),
    Field("hugepages", "hugepages", Flag()),
    Field("nosharepages", "nosharepages", Flag()),
    Field("discard", "discard", Flag()),
))

VCPU_PIN = Kind(m.VCPUPin, (
    Field("vcpu", "@vcpu", Int(0), required=True),
    Field("cpuset", "@cpuset", CpuSet(), required=True),
))
IOTHREAD_PIN = Kind(m.IOThreadPin, (
    Field("iothread", "@iothread", Int(1), required=True),
    Field("cpuset", "@cpuset", CpuSet(), required=True),
))
CPUTUNE = Kind(m.CPUTune, (
    Many("vcpupins", "vcpupin", VCPU_PIN),
    Field("emulatorpin", "emulatorpin/@cpuset", CpuSet()),
    Many("iothreadpins", "iothreadpin", IOTHREAD_PIN),
))

_STATE = ON_OFF
HYPERV = Kind(m.HyperV, (
    Field("mode", "@mode", Choice(("custom", "passthrough"))),
    Field("relaxed", "relaxed/@state", _STATE),
    Field("vapic", "vapic/@state", _STATE),
    Field("spinlocks", "spinlocks/@state", _STATE),
    Field("spinlocks_retries", "spinlocks/@retries", Int(4095)),
    Field("vpindex", "vpindex/@state", _STATE),
    Field("runtime", "runtime/@state", _STATE),
    Field("synic", "synic/@state", _STATE),
    Field("stimer", "stimer/@state", _STATE),
    Field("stimer_direct", "stimer/direct/@state", _STATE),
    Field("reset", "reset/@state", _STATE),
    Field("vendor_id", "vendor_id/@state", _STATE),
    Field("vendor_id_value", "vendor_id/@value", Text(r"[A-Za-z0-9 ]{1,12}", "at most 12 letters or digits")),
    Field("frequencies", "frequencies/@state", _STATE),
    Field("reenlightenment", "reenlightenment/@state", _STATE),
    Field("tlbflush", "tlbflush/@state", _STATE),
    Field("ipi", "ipi/@state", _STATE),
    Field("evmcs", "evmcs/@state", _STATE),
))


def _features_build(ctx: Ctx, el: El, values: dict[str, Any]) -> m.Features:
    size = values.get("kvm_dirty_ring_size")
    if size is not None and size & (size - 1):
        ctx.invalid(child(child(el, "kvm"), "dirty-ring"), f"{size} is not a power of two", "size")
    return m.Features(**values)


FEATURES = Kind(m.Features, (
    Field("acpi", "acpi", Flag()),
    Field("apic", "apic", Flag()),
    Field("pae", "pae", Flag()),
    Sub("hyperv", "hyperv", HYPERV),
    Field("kvm_hidden", "kvm/hidden/@state", _STATE),
    Field("kvm_hint_dedicated", "kvm/hint-dedicated/@state", _STATE),
    Field("kvm_poll_control", "kvm/poll-control/@state", _STATE),
    Field("kvm_pv_ipi", "kvm/pv-ipi/@state", _STATE),
    Field("kvm_dirty_ring", "kvm/dirty-ring/@state", _STATE),
    Field("kvm_dirty_ring_size", "kvm/dirty-ring/@size", Int(1024, 65536)),
    Field("pmu", "pmu/@state", _STATE),
    Field("vmport", "vmport/@state", _STATE),
    Field("smm", "smm/@state", _STATE),
    Field("ioapic_driver", "ioapic/@driver", Choice(("kvm", "qemu"))),
    Field("vmcoreinfo", "vmcoreinfo/@state", _STATE),
), build=_features_build)
CPU_FEATURE = Kind(m.CPUFeature, (
    Field("policy", "@policy", Choice(("force", "require", "optional", "disable", "forbid")), required=True),
    Field("name", "@name", Text(r"[a-z0-9_.-]+", "a CPU feature name"), required=True),
))


def _cell_build(ctx: Ctx, el: El, values: dict[str, Any]) -> m.NUMACell:
    values["memory_kib"] = kib(ctx, el, values.pop("memory"), values.pop("unit", None))
    return m.NUMACell(**values)


def _cell_unbuild(cell: m.NUMACell) -> dict[str, Any]:
    return {**vars(cell), "memory": cell.memory_kib, "unit": "KiB"}


NUMA_CELL = Kind(m.NUMACell, (
    Field("id", "@id", Int(0), required=True),
    Field("cpus", "@cpus", CpuSet(), required=True),
    Field("memory", "@memory", Int(1), required=True),
    Field("unit", "@unit", Text(r"[A-Za-z]+", "a unit")),
    Field("mem_access", "@memAccess", Choice(("shared", "private"))),
), build=_cell_build, unbuild=_cell_unbuild)


def _cpu_build(ctx: Ctx, el: El, values: dict[str, Any]) -> m.CPU:
    topology = [name for name in ("sockets", "dies", "cores", "threads") if name in values]
    if topology and not {"sockets", "cores", "threads"} <= set(topology):
        ctx.invalid(child(el, "topology"), "needs sockets=, cores= and threads=")
    if values.get("mode") in ("host-passthrough", "maximum") and "model" in values:
        ctx.invalid(child(el, "model"), f"mode='{values['mode']}' takes no CPU model")
    return m.CPU(**values)


CPU = Kind(m.CPU, (
    Field("mode", "@mode", Choice(("custom", "host-passthrough", "host-model", "maximum"))),
    Field("match", "@match", Choice(("exact", "minimum", "strict"))),
    Field("check", "@check", Choice(("none", "partial", "full"))),
    Field("migratable", "@migratable", ON_OFF),
    Field("model_fallback", "model/@fallback", Choice(("allow", "forbid"))),
    Field("model", "model", Text(r"[A-Za-z0-9_.-]+", "a CPU model name")),
    Field("vendor", "vendor", Text(r"[A-Za-z]+", "a vendor name")),
    Field("sockets", "topology/@sockets", Int(1)),
    Field("dies", "topology/@dies", Int(1)),
    Field("cores", "topology/@cores", Int(1)),
    Field("threads", "topology/@threads", Int(1)),
    Field("cache_mode", "cache/@mode", Choice(("passthrough", "emulate", "disable"))),
    Many("features", "feature", CPU_FEATURE),
    Many("numa", "numa/cell", NUMA_CELL),
), build=_cpu_build)
TIMER = Kind(m.Timer, (
    Field("name", "@name", Choice(("rtc", "pit", "hpet", "hypervclock", "tsc", "kvmclock"),
                                  {"platform", "armvtimer"}), required=True),
    Field("tickpolicy", "@tickpolicy", Choice(("delay", "catchup", "merge", "discard"))),
    Field("track", "@track", Choice(("guest", "wall", "realtime"), {"boot"})),
    Field("present", "@present", YES_NO),
    Field("frequency", "@frequency", Int(1)),
))

# -- disks --------------------------------------------------------------------------------------------------

_KNOWN_DISK_TYPES = {"dir", "network", "volume", "nvme", "vhostuser", "vhostvdpa"}
_KNOWN_FORMATS = {"none", "dir", "bochs", "cloop", "dmg", "iso", "vpc", "vdi", "fat", "vhd", "ploop",
                  "cow", "qcow", "qed", "vmdk", "luks", "vhdx", "aio"}
_INFERRED_BUS = {"vd": "virtio", "sd": "scsi", "hd": "ide", "fd": "fdc"}
_IOTUNE_LIMITS = ("bytes_sec", "iops_sec")


def _iotune_build(ctx: Ctx, el: El, values: dict[str, Any]) -> d.IoTune:
    for limit in _IOTUNE_LIMITS:
        for suffix in ("", "_max", "_max_length"):
            total = f"total_{limit}{suffix}"
            if total in values and any(f"{rw}_{limit}{suffix}" in values for rw in ("read", "write")):
                ctx.invalid(child(el, total), f"cannot be set together with read_{limit}{suffix} or "
                                              f"write_{limit}{suffix}")
        for rw in ("total", "read", "write"):
            for suffix, base in (("_max", ""), ("_max_length", "_max")):
                name = f"{rw}_{limit}{suffix}"
                if name in values and f"{rw}_{limit}{base}" not in values:
                    ctx.invalid(child(el, name), f"needs {rw}_{limit}{base}")
    return d.IoTune(**values)


IOTUNE = Kind(d.IoTune, (
    *(Field(f"{rw}_{limit}{suffix}", f"{rw}_{limit}{suffix}", Int(0))
      for limit in _IOTUNE_LIMITS for suffix in ("", "_max", "_max_length")
      for rw in ("total", "read", "write")),
    Field("size_iops_sec", "size_iops_sec", Int(0)),
    Field("group_name", "group_name", Text(r"[A-Za-z0-9_.-]+", "a group name")),
), build=_iotune_build)


def _disk_build(ctx: Ctx, el: El, values: dict[str, Any]) -> d.Disk | None:
    dtype = values.get("type", "file")
    device = values.get("device", "disk")
    source_attr, other_attr = (("source_file", "source_dev") if dtype == "file"
                               else ("source_dev", "source_file"))
    source_el = el.find("source")
    if other_attr in values:
        ctx.unsupported_at(child(el, "source"), other_attr.removeprefix("source_"))
    source = values.pop(source_attr, None)
    values.pop(other_attr, None)
    values.pop("driver_name", None)
    if source is None and device == "disk":
        if source_el is not None:
            ctx.invalid(source_el, "is required", source_attr.removeprefix("source_"))
        ctx.invalid(el, f"<source {source_attr.removeprefix('source_')}=...> is required for a "
                        f"type='{dtype}' disk")
    target_el = child(el, "target")
    if "bus" not in values:
        values["bus"] = _INFERRED_BUS.get(values["target"][:2])
        if values["bus"] is None:
            ctx.unsupported_at(target_el, "bus")
            return None
    bus = values["bus"]
    if device == "cdrom" and bus in ("virtio", "fdc"):
        ctx.invalid(target_el, f"a cdrom cannot sit on bus '{bus}' (use sata, scsi, ide or usb)", "bus")
    if device == "floppy" and bus != "fdc":
        ctx.invalid(target_el, f"a floppy sits on bus 'fdc', not '{bus}'", "bus")
    if device != "floppy" and bus == "fdc":
        ctx.invalid(target_el, "only a floppy sits on bus 'fdc'", "bus")
    if "tray" in values and device == "disk":
        ctx.invalid(target_el, "only a cdrom or floppy has a tray", "tray")
    if "removable" in values and bus not in ("usb", "scsi"):
        ctx.invalid(target_el, "only usb and scsi disks can be removable", "removable")
    if "iothread" in values and bus != "virtio":
        ctx.invalid(child(el, "driver"), "an iothread serves virtio disks only", "iothread")
    if values.get("io") == "native" and values.get("cache") not in ("none", "directsync"):
        ctx.invalid(child(el, "driver"), "io='native' needs cache='none' or 'directsync' (QEMU refuses it "
                                         "on the host's page cache)", "io")
    if device == "lun" and (bus != "scsi" or dtype != "block" or values.get("format", "raw") != "raw"):
        ctx.invalid(el, "a LUN is a host block device (type='block', format raw) on bus 'scsi'", "device")
    if device != "lun" and ("rawio" in values or "sgio" in values):
        ctx.invalid(el, "rawio and sgio are for device='lun' only", "rawio" if "rawio" in values else "sgio")
    if values.get("readonly") and device == "disk" and bus in ("sata", "ide"):
        # QEMU's ide-hd cannot be read-only (libvirt refuses it too).
        ctx.unsupported_at(child(el, "readonly"))
        return None
    return d.Disk(source=source, **values)


def _disk_unbuild(disk: d.Disk) -> dict[str, Any]:
    values = dict(vars(disk))
    source = values.pop("source")
    values["driver_name"] = "qemu"
    values["source_file" if disk.type == "file" else "source_dev"] = source
    return values


DISK = Kind(d.Disk, (
    Field("type", "@type", Choice(("file", "block"), _KNOWN_DISK_TYPES)),
    Field("device", "@device", Choice(("disk", "cdrom", "floppy", "lun"))),
    Field("rawio", "@rawio", YES_NO),
    Field("sgio", "@sgio", Choice(("filtered",), {"unfiltered"})),
    Field("driver_name", "driver/@name", Choice(("qemu",), None)),
    Field("format", "driver/@type", Choice(("qcow2", "raw"), _KNOWN_FORMATS)),
    Field("cache", "driver/@cache", Choice(("default", "none", "writethrough", "writeback", "directsync",
                                            "unsafe"))),
    Field("error_policy", "driver/@error_policy", Choice(("stop", "report", "ignore", "enospace"))),
    Field("rerror_policy", "driver/@rerror_policy", Choice(("stop", "report", "ignore"))),
    Field("io", "driver/@io", Choice(("threads", "native", "io_uring"))),
    Field("discard", "driver/@discard", Choice(("unmap", "ignore"))),
    Field("detect_zeroes", "driver/@detect_zeroes", Choice(("off", "on", "unmap"))),
    Field("iothread", "driver/@iothread", Int(1)),
    Field("source_file", "source/@file", Text(PATH, "a path")),
    Field("source_dev", "source/@dev", Text(PATH, "a path")),
    Field("target", "target/@dev", Text(r"(vd|sd|hd|xvd|ubd|fd)[a-z]+", "a disk name such as 'vda' or 'sda'"),
          required=True),
    Field("bus", "target/@bus", Choice(("virtio", "sata", "scsi", "ide", "usb", "fdc"),
                                       {"xen", "uml", "sd", "nvme"})),
    Field("tray", "target/@tray", Choice(("open", "closed"))),
    Field("removable", "target/@removable", ON_OFF),
    Sub("iotune", "iotune", IOTUNE),
    Field("readonly", "readonly", Flag()),
    Field("shareable", "shareable", Flag()),
    Field("serial", "serial", Text(r"[A-Za-z0-9_ .+-]+", "made of [A-Za-z0-9_ .+-] only")),
    Field("wwn", "wwn", Text(r"(0x)?[0-9a-fA-F]{16}", "16 hex digits")),
    Field("boot_order", "boot/@order", Int(1)),
    _ADDR,
), ignore={
    **ALIAS_IGNORED, "source/@index": ANY, "backingStore": ANY, "mirror": ANY,
}, build=_disk_build, unbuild=_disk_unbuild)

# -- controllers --------------------------------------------------------------------------------------------

_VIRTIO_MODELS = ("virtio", "virtio-transitional", "virtio-non-transitional")
#: For each controller type: the models avirt implements, and the other models libvirt knows for it.
CONTROLLER_MODELS: dict[str, tuple[tuple[str, ...], set[str]]] = {
    "usb": (("qemu-xhci", "nec-xhci", "ich9-ehci1", "ich9-uhci1", "ich9-uhci2", "ich9-uhci3", "piix3-uhci",
             "none"),
            {"piix4-uhci", "ehci", "vt82c686b-uhci", "pci-ohci", "qusb1", "qusb2", "default"}),
    "pci": (("pci-root", "pcie-root", "pcie-root-port", "pci-bridge", "dmi-to-pci-bridge",
             "pcie-to-pci-bridge"),
            {"pcie-switch-upstream-port", "pcie-switch-downstream-port", "pci-expander-bus",
             "pcie-expander-bus"}),
    "scsi": (("virtio-scsi", "virtio-transitional", "virtio-non-transitional"),
             {"auto", "buslogic", "lsilogic", "lsisas1068", "vmpvscsi", "ibmvscsi", "lsisas1078", "ncr53c90",
              "am53c974", "dc390"}),
    "virtio-serial": (_VIRTIO_MODELS, set()),
    "ide": ((), {"piix3", "piix4", "ich6"}),
    "sata": ((), set()),
    "fdc": ((), set()),
}
#: The QEMU device each PCI controller model may name in <model name=...> (libvirt's pairs).
_PCI_MODEL_NAMES = {
    "pcie-root-port": ("pcie-root-port", "ioh3420"),
    "pci-bridge": ("pci-bridge",),
    "dmi-to-pci-bridge": ("i82801b11-bridge",),
    "pcie-to-pci-bridge": ("pcie-pci-bridge",),
}
_KNOWN_MODEL_NAMES = {"x3130-upstream", "xio3130-downstream", "pxb", "pxb-pcie", "spapr-pci-host-bridge"}
_MAX_PORTS = {"usb": 15, "virtio-serial": 31}
_CONTROLLER_MODEL_CHOICES = {ctype: Choice(*models) for ctype, models in CONTROLLER_MODELS.items()}


def _controller_build(ctx: Ctx, el: El, values: dict[str, Any]) -> d.Controller | None:
    ctype = values["type"]
    model = values.get("model")
    if model is not None and _CONTROLLER_MODEL_CHOICES[ctype].read(ctx, el, "model", model) is None:
        return None
    name = values.get("model_name")
    if name is not None:
        allowed = _PCI_MODEL_NAMES.get(model or "", ())
        if name not in allowed:
            if name in _KNOWN_MODEL_NAMES and not allowed:
                ctx.unsupported_at(child(el, "model"), "name")
                return None
            ctx.invalid(child(el, "model"), f"{name!r} is not a device for a {model or ctype} controller",
                        "name")
    ports = values.get("ports")
    if ports is not None and ports > _MAX_PORTS.get(ctype, 0):
        if ctype not in _MAX_PORTS:
            ctx.invalid(el, f"a {ctype} controller has no ports=", "ports")
        ctx.invalid(el, f"a {ctype} controller has at most {_MAX_PORTS[ctype]} ports", "ports")
    return d.Controller(**values)


CONTROLLER = Kind(d.Controller, (
    Field("type", "@type", Choice(tuple(CONTROLLER_MODELS), {"ccid", "xenbus", "isa"}), required=True),
    Field("index", "@index", Int(0, 255)),
    Field("model", "@model", Text(r"[a-z0-9-]+", "a controller model")),
    Field("ports", "@ports", Int(1)),
    Field("vectors", "@vectors", Int(0)),
    Field("master_startport", "master/@startport", Int(0)),
    Field("model_name", "model/@name", Text(r"[a-z0-9-]+", "a controller device name")),
    Field("target_chassis", "target/@chassis", Int(0, 255)),
    Field("target_port", "target/@port", Int(0, 255, hex_width=2)),
    Field("target_busnr", "target/@busNr", Int(0, 255)),
    Field("driver_queues", "driver/@queues", Int(1)),
    Field("driver_iothread", "driver/@iothread", Int(1)),
    _ADDR,
), ignore=ALIAS_IGNORED, build=_controller_build)

# -- network interfaces -------------------------------------------------------------------------------------

_SOURCE_OF = {"network": "source_network", "bridge": "source_bridge", "direct": "source_dev"}
_GENERATED_TAPS = ("vnet", "macvtap", "macvlan")  # libvirt reserves these prefixes for its own names


def _interface_build(ctx: Ctx, el: El, values: dict[str, Any]) -> d.Interface | None:
    ntype = values["type"]
    needed = _SOURCE_OF.get(ntype)
    if ntype == "network":
        values.pop("source_bridge", None)  # live XML: the bridge the network gave this NIC
    if values.get("target_dev", "").startswith(_GENERATED_TAPS):
        del values["target_dev"]  # a name libvirt (or a running avirt) generated: not part of the definition
    for key in ("source_network", "source_bridge", "source_dev"):
        if key in values and key != needed:
            ctx.unsupported_at(child(el, "source"), key.removeprefix("source_"))
            return None
    if needed is not None and needed not in values:
        ctx.invalid(el, f"<source {needed.removeprefix('source_')}=...> is required for type='{ntype}'")
    if "source_mode" in values and ntype != "direct":
        ctx.unsupported_at(child(el, "source"), "mode")
        return None
    mac = values.get("mac")
    if mac is not None:
        values["mac"] = mac = mac.lower()
        if int(mac[:2], 16) & 1:
            ctx.invalid(child(el, "mac"), f"{mac!r} is not a unicast MAC address", "address")
    if values.get("driver_queues", 1) > 1 and values.get("model", "virtio") != "virtio":
        ctx.invalid(child(el, "driver"), "only a virtio NIC has queues", "queues")
    return d.Interface(**values)


INTERFACE = Kind(d.Interface, (
    Field("type", "@type", Choice(("user", "network", "bridge", "ethernet", "direct"),
                                  {"vhostuser", "server", "client", "mcast", "internal", "hostdev", "udp",
                                   "vdpa", "null", "vds"}), required=True),
    Field("mac", "mac/@address", Text(r"[0-9A-Fa-f]{2}(:[0-9A-Fa-f]{2}){5}", "a MAC address")),
    Field("source_network", "source/@network", Text(NAME, "a network name")),
    Field("source_bridge", "source/@bridge", Text(NAME, "a bridge name")),
    Field("source_dev", "source/@dev", Text(NAME, "a device name")),
    Field("source_mode", "source/@mode", Choice(("vepa", "bridge", "private", "passthrough"))),
    Field("target_dev", "target/@dev", Text(r"[A-Za-z0-9_.-]{1,15}", "an interface name")),
    Field("model", "model/@type", Choice(("virtio", "e1000", "e1000e", "rtl8139"), None)),
    Field("driver_name", "driver/@name", Choice(("vhost", "qemu"))),
    Field("driver_queues", "driver/@queues", Int(1)),
    Field("mtu", "mtu/@size", Int(68, 65535)),
    Field("link_state", "link/@state", Choice(("up", "down"))),
    Field("boot_order", "boot/@order", Int(1)),
    _ADDR,
), ignore={**ALIAS_IGNORED, "source/@portid": ANY}, build=_interface_build)

# -- character devices --------------------------------------------------------------------------------------

_KNOWN_CHAR_TYPES = {"vc", "dev", "pipe", "stdio", "udp", "spiceport", "nmdm", "qemu-vdagent", "dbus"}
_CHAR_ENTRIES = (
    Field("type", "@type", Choice(("pty", "file", "null", "unix", "tcp", "spicevmc"), _KNOWN_CHAR_TYPES)),
    Field("mode", "source/@mode", Choice(("bind", "connect"))),
    Field("path", "source/@path", Text(PATH, "a path")),
    Field("append", "source/@append", ON_OFF),
    Field("host", "source/@host", Text(r"[A-Za-z0-9.:-]+", "a host name or address")),
    Field("service", "source/@service", Int(1, 65535)),
    Field("protocol", "protocol/@type", Choice(("raw", "telnet"), {"telnets", "tls"})),
    Field("target_type", "target/@type", Choice(("serial", "virtio", "isa-serial"),
                                                {"xen", "uml", "lxc", "openvz", "sclp", "sclplm", "guestfwd",
                                                 "usb-serial", "pci-serial", "spapr-vio-serial"})),
    Field("target_port", "target/@port", Int(0)),
    Field("target_name", "target/@name", Text(r"[A-Za-z0-9_.-]+", "a channel name")),
    Field("target_model", "target/model/@name", Choice(("isa-serial",), None)),
    _ADDR,
)
_CHAR_IGNORED: dict[str, Spec] = {
    **ALIAS_IGNORED, "target/@state": ANY, "source/seclabel": ANY, "@tty": ANY,
}
_CHAR_SOCKET = {"unix": ("mode", "path"), "tcp": ("mode", "host", "service", "protocol")}


def _char_build(ctx: Ctx, el: El, values: dict[str, Any]) -> d.CharDevice | None:
    kind = str(el.tag)
    ctype = values.setdefault("type", "pty")
    if ctype == "pty":
        values.pop("path", None)  # a running guest's /dev/pts/N: output only
    if ctype == "file" and "path" not in values:
        ctx.invalid(el, "<source path=...> is required for type='file'")
    if "append" in values and ctype != "file":
        ctx.unsupported_at(child(el, "source"), "append")
        return None
    if ctype in ("null", "spicevmc") and el.find("source") is not None:
        ctx.unsupported_at(child(el, "source"))
        return None
    for name in ("mode", "host", "service", "protocol"):
        if name in values and name not in _CHAR_SOCKET.get(ctype, ()):
            if name == "protocol":
                ctx.unsupported_at(child(el, "protocol"), "type")
            else:
                ctx.unsupported_at(child(el, "source"), name)
            return None
    if ctype == "unix" and "path" not in values and (kind != "channel" or values.get("mode") == "connect"):
        # A channel's socket without a path is bound at a path chosen at start, as libvirt does.
        ctx.invalid(child(el, "source"), "a unix socket needs path= (only a channel's may be left to avirt)")
    if ctype == "tcp":
        if "service" not in values:
            ctx.invalid(child(el, "source"), "is required", "service")
        if "host" not in values and values.get("mode") != "bind":
            ctx.invalid(child(el, "source"), "is required to connect", "host")
    target_type = values.get("target_type")
    target_el = child(el, "target")
    for name, at, attr, kinds in (("target_port", target_el, "port", ("serial", "console")),
                                  ("target_name", target_el, "name", ("channel",)),
                                  ("target_model", child(target_el, "model"), "name", ("serial",))):
        if name in values and kind not in kinds:
            ctx.unsupported_at(at, attr)
            return None
    if kind == "channel":
        if target_type != "virtio" or "target_name" not in values:
            ctx.invalid(child(el, "target"), "a channel needs <target type='virtio' name=...>")
        values.setdefault("target_port", None)
    elif kind == "console":
        if target_type not in (None, "serial", "virtio"):
            ctx.unsupported_at(child(el, "target"), "type")
            return None
    elif target_type not in (None, "isa-serial"):
        ctx.unsupported_at(child(el, "target"), "type")
        return None
    if ctype == "spicevmc" and kind != "channel":
        ctx.unsupported_at(el, "type")
        return None
    return d.CharDevice(kind=kind, **values)  # type: ignore[arg-type]


CHARDEV = Kind(d.CharDevice, _CHAR_ENTRIES, ignore=_CHAR_IGNORED, build=_char_build)

# -- graphics, video, sound, input --------------------------------------------------------------------------

_LOOPBACK = "127.0.0.1"


def _graphics_build(ctx: Ctx, el: El, values: dict[str, Any]) -> d.Graphics | None:
    listen = values.pop("listen", None)
    address = values.pop("listen_address", None)
    if listen is not None and address is not None and listen != address:
        ctx.invalid(child(el, "listen"), f"address {address!r} disagrees with <graphics listen={listen!r}>",
                    "address")
    port = values.get("port")
    if port is not None and port != -1 and not 5900 <= port <= 65535:
        ctx.invalid(el, f"port {port} is outside 5900-65535", "port")
    if values.pop("autoport", "no") == "yes" and port != -1:
        values["port"] = None  # a live XML's allocated port is not part of the definition
    if values.get("tls_port") not in (None, -1):
        ctx.unsupported_at(el, "tlsPort")  # TLS needs certificates avirt does not manage
        return None
    if values.get("type") == "vnc" and "image_compression" in values:
        ctx.unsupported_at(child(el, "image"))
        return None
    return d.Graphics(listen=listen or address or _LOOPBACK, **values)


def _graphics_unbuild(g: d.Graphics) -> dict[str, Any]:
    values = dict(vars(g))
    values["autoport"] = "yes" if g.port in (None, -1) else "no"
    values["listen_address"] = g.listen if g.listen_type == "address" else None
    return values


GRAPHICS = Kind(d.Graphics, (
    Field("type", "@type", Choice(("vnc", "spice"), {"sdl", "rdp", "desktop", "egl-headless", "dbus"}),
          required=True),
    Field("port", "@port", Int(-1, 65535)),
    Field("tls_port", "@tlsPort", Int(-1, 65535)),
    Field("autoport", "@autoport", YES_NO),
    Field("listen", "@listen", Text(ADDRESS_IP, "an IP address")),
    Field("passwd", "@passwd", Text(r"[^\x00\n]+", "a password on one line")),
    Field("keymap", "@keymap", Text(r"[a-z]{2}(-[a-z]+)*", "a keymap such as 'en-us' or 'de'")),
    Field("listen_type", "listen/@type", Choice(("address",), {"network", "socket", "none"})),
    Field("listen_address", "listen/@address", Text(ADDRESS_IP, "an IP address")),
    Field("image_compression", "image/@compression", Choice(
        ("off", "auto_glz", "auto_lz", "quic", "glz", "lz"))),
), ignore=ALIAS_IGNORED, build=_graphics_build, unbuild=_graphics_unbuild)
VIDEO = Kind(d.Video, (
    Field("model", "model/@type", Choice(("virtio", "qxl", "vga", "bochs", "cirrus", "ramfb", "none"),
                                         {"vmvga", "xen", "vbox", "gop"}), required=True),
    Field("ram", "model/@ram", Int(1)),
    Field("vram", "model/@vram", Int(1)),
    Field("vgamem", "model/@vgamem", Int(1)),
    Field("heads", "model/@heads", Int(1, 16)),
    Field("primary", "model/@primary", YES_NO),
    # A 3D-accelerated virtio-gpu renders with the host's GPU (OpenGL): a host resource avirt does not claim.
    Field("accel3d", "model/acceleration/@accel3d", Choice(("no",), {"yes"})),
    _ADDR,
), ignore=ALIAS_IGNORED)
SOUND = Kind(d.Sound, (
    Field("model", "@model", Choice(("ich9", "ich6", "ac97", "es1370"), {"sb16", "pcspk", "usb", "ich7"}),
          required=True),
    Field("codec", "codec/@type", Choice(("duplex", "micro", "output"))),
    Field("audio_id", "audio/@id", Int(1)),
    _ADDR,
), ignore=ALIAS_IGNORED)
AUDIO = Kind(d.Audio, (
    Field("id", "@id", Int(1), required=True),
    # Host sound servers and devices are host resources; 'none' and 'spice' (to the SPICE client) are not.
    Field("type", "@type", Choice(("none", "spice"), {"alsa", "coreaudio", "jack", "oss", "pulseaudio", "sdl",
                                                      "file", "dbus", "pipewire"}), required=True),
))


def _input_build(ctx: Ctx, el: El, values: dict[str, Any]) -> d.Input:
    if values["type"] == "tablet" and values.get("bus") == "ps2":
        ctx.invalid(el, "a tablet is not a PS/2 device (use bus='usb' or 'virtio')", "bus")
    return d.Input(**values)


INPUT = Kind(d.Input, (
    Field("type", "@type", Choice(("tablet", "mouse", "keyboard"), {"passthrough", "evdev"}), required=True),
    Field("bus", "@bus", Choice(("usb", "ps2", "virtio"), {"xen", "none"})),
    _ADDR,
), ignore=ALIAS_IGNORED, build=_input_build)

# -- other devices ------------------------------------------------------------------------------------------

RNG = Kind(d.RNG, (
    Field("model", "@model", Choice(("virtio",), {"virtio-transitional", "virtio-non-transitional"}),
          required=True),
    Field("rate_bytes", "rate/@bytes", Int(1)),
    Field("rate_period", "rate/@period", Int(1)),
    Field("backend_model", "backend/@model", Choice(("random", "builtin"), {"egd"}), required=True),
    Field("backend", "backend", Text(r"/dev/u?random|/dev/hwrng", "/dev/random, /dev/urandom or /dev/hwrng")),
    _ADDR,
), ignore=ALIAS_IGNORED)
WATCHDOG = Kind(d.Watchdog, (
    Field("model", "@model", Choice(("i6300esb", "itco", "ib700"), {"diag288"}), required=True),
    Field("action", "@action", Choice(("reset", "shutdown", "poweroff", "pause", "none", "inject-nmi"),
                                      {"dump"})),
    _ADDR,
), ignore=ALIAS_IGNORED)
MEMBALLOON = Kind(d.MemBalloon, (
    Field("model", "@model", Choice(("virtio", "none"), {"xen", "virtio-transitional",
                                                         "virtio-non-transitional"}), required=True),
    Field("autodeflate", "@autodeflate", ON_OFF),
    Field("free_page_reporting", "@freePageReporting", ON_OFF),
    Field("stats_period", "stats/@period", Int(0)),
    _ADDR,
), ignore=ALIAS_IGNORED)
PANIC = Kind(d.Panic, (
    Field("model", "@model", Choice(("isa", "pvpanic", "hyperv"), {"pseries", "s390"})),
    _ADDR,
), ignore=ALIAS_IGNORED)
REDIRDEV = Kind(d.RedirDev, (
    Field("bus", "@bus", Choice(("usb",)), required=True),
    Field("type", "@type", Choice(("spicevmc",), {"tcp"}), required=True),
    _ADDR,
), ignore=ALIAS_IGNORED)
TPM = Kind(d.TPM, (
    Field("model", "@model", Choice(("tpm-tis", "tpm-crb"), {"tpm-spapr", "spapr-tpm-proxy"}), required=True),
    # passthrough hands the host's own TPM to the guest: a host resource.
    Field("backend_type", "backend/@type", Choice(("emulator",), {"passthrough", "external"}), required=True),
    Field("backend_version", "backend/@version", Choice(("2.0",), {"1.2"})),
), ignore=ALIAS_IGNORED)


def _filesystem_build(ctx: Ctx, el: El, values: dict[str, Any]) -> d.Filesystem | None:
    if values.get("driver_type") == "virtiofs":
        if len(values["target_dir"]) > 36:
            ctx.invalid(child(el, "target"), "a virtiofs tag has at most 36 characters", "dir")
        if values.get("accessmode", "passthrough") != "passthrough":
            ctx.invalid(el, "virtiofs supports only accessmode='passthrough'", "accessmode")
        if values.get("readonly"):
            ctx.unsupported_at(child(el, "readonly"))  # virtiofsd of QEMU 7.2 has no read-only mode
            return None
    elif "queue" in values:
        ctx.invalid(child(el, "driver"), "is only for driver type='virtiofs'", "queue")
    elif any(name.startswith("binary_") for name in values):
        ctx.invalid(child(el, "binary"), "is only for driver type='virtiofs'")
    return d.Filesystem(**values)


FILESYSTEM = Kind(d.Filesystem, (
    Field("type", "@type", Choice(("mount",), {"block", "file", "template", "ram", "bind", "volume"})),
    Field("accessmode", "@accessmode", Choice(("passthrough", "mapped", "squash"))),
    Field("driver_type", "driver/@type", Choice(("path", "virtiofs"), {"handle", "loop", "nbd", "ploop"})),
    Field("queue", "driver/@queue", Int(1)),
    Field("binary_path", "binary/@path", Text(PATH, "a path")),
    Field("binary_xattr", "binary/@xattr", ON_OFF),
    Field("binary_cache", "binary/cache/@mode", Choice(("none", "auto", "always"))),
    Field("binary_sandbox", "binary/sandbox/@mode", Choice(("namespace", "chroot"))),
    Field("source_dir", "source/@dir", Text(PATH, "a path"), required=True),
    Field("target_dir", "target/@dir", Text(r"[A-Za-z0-9_.:/+-]+", "a mount tag"), required=True),
    Field("readonly", "readonly", Flag()),
    _ADDR,
), ignore=ALIAS_IGNORED, build=_filesystem_build)


def _vsock_build(ctx: Ctx, el: El, values: dict[str, Any]) -> d.Vsock:
    if values.get("cid_auto") != "yes" and "cid" not in values:
        ctx.invalid(child(el, "cid"), "needs address= unless auto='yes'")
    return d.Vsock(**values)


VSOCK = Kind(d.Vsock, (
    Field("model", "@model", Choice(("virtio",), {"virtio-transitional", "virtio-non-transitional"})),
    Field("cid_auto", "cid/@auto", YES_NO),
    Field("cid", "cid/@address", Int(3, 0xFFFFFFFE)),
    _ADDR,
), ignore=ALIAS_IGNORED, build=_vsock_build)


#: Each device element: its table and the DomainConfig list (or single field) it fills.
DEVICE_KINDS: dict[str, tuple[Kind[Any], str]] = {
    "disk": (DISK, "disks"),
    "controller": (CONTROLLER, "controllers"),
    "filesystem": (FILESYSTEM, "filesystems"),
    "interface": (INTERFACE, "interfaces"),
    "serial": (CHARDEV, "chardevs"),
    "console": (CHARDEV, "chardevs"),
    "channel": (CHARDEV, "chardevs"),
    "input": (INPUT, "inputs"),
    "tpm": (TPM, "tpms"),
    "graphics": (GRAPHICS, "graphics"),
    "sound": (SOUND, "sounds"),
    "audio": (AUDIO, "audios"),
    "video": (VIDEO, "videos"),
    "redirdev": (REDIRDEV, "redirdevs"),
    "watchdog": (WATCHDOG, "watchdogs"),
    "memballoon": (MEMBALLOON, "memballoon"),
    "rng": (RNG, "rngs"),
    "panic": (PANIC, "panics"),
    "vsock": (VSOCK, "vsock"),
}
#: The device elements that may appear once at most.
SINGLE_DEVICES = {"memballoon", "vsock"}
