"""Where each field of the model sits in libvirt's domain XML, and which values avirt accepts.

One :class:`~avirt.config.schema.Kind` per element kind; ``parse.py`` and ``serialize.py`` walk these
tables, so this module is the whole vocabulary avirt speaks (docs/domain-xml.md lists it for people).
For each enumerated attribute the first set is what avirt implements and the second what libvirt also
knows: a value from the second is *unsupported*, anything else *invalid*.
"""

from __future__ import annotations

from typing import Any

from avirt.config import devices as d
from avirt.config import model as m
from avirt.config.schema import ANY, ON_OFF, YES_NO, Choice, Ctx, El, Field, Flag, Int, Kind, Many, Spec, Sub, Text

# Values that reach QEMU's command line are held to patterns that need no quoting there.
PATH = r"[^\x00\n]+"
NAME = r"[A-Za-z0-9_.:+-]+"
ALIAS_IGNORED: dict[str, Spec] = {"alias": Spec(attrs={"name"})}

ADDRESS = Kind(d.Address, (
    Field("type", "@type", Choice(("pci", "drive", "usb", "virtio-serial", "isa"),
                                  {"ccw", "ccid", "spapr-vio", "virtio-mmio", "dimm", "unassigned"}),
          required=True),
    Field("domain", "@domain", Int(0, 0xFFFF, hex_width=4)),
    Field("bus", "@bus", Int(0, 0xFF, hex_width=2)),
    Field("slot", "@slot", Int(0, 0x1F, hex_width=2)),
    Field("function", "@function", Int(0, 7, hex_width=1)),
    Field("multifunction", "@multifunction", ON_OFF),
    Field("controller", "@controller", Int(0)),
    Field("target", "@target", Int(0)),
    Field("unit", "@unit", Int(0)),
    Field("port", "@port", Text(r"[0-9]+(\.[0-9]+)*", "a port number")),
    Field("iobase", "@iobase", Int(0, 0xFFFF, hex_width=3)),
))


def _build_address(ctx: Ctx, el: El, values: dict[str, Any]) -> d.Address | None:
    if "type" not in values:
        return None
    if values["type"] == "pci" and values.get("bus") is None:
        ctx.invalid(el, "a PCI address needs bus= and slot=")
    return d.Address(**values)


ADDRESS = Kind(d.Address, ADDRESS.entries, build=_build_address)
_ADDR = Sub("address", "address", ADDRESS)

# -- domain-level -------------------------------------------------------------------------------------------

MACHINE = r"q35|pc|pc-q35-[0-9.]+|pc-i440fx-[0-9.]+|(pc-)?(q35|i440fx)?-?[a-z0-9.-]*"
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
SYSINFO_ENTRY = Kind(m.SysInfoEntry, (
    Field("name", "@name", Text(r"[a-z_]+", "an SMBIOS field name"), required=True),
    Field("value", ".", Text(r"[^\n,]*", "a value without commas or newlines")),
))


def _sysinfo_build(ctx: Ctx, el: El, values: dict[str, Any]) -> m.SysInfo:
    strings = [e.value for e in values.pop("oem_entries", [])]
    return m.SysInfo(**values, oem_strings=strings)


def _sysinfo_unbuild(info: m.SysInfo) -> dict[str, Any]:
    values = dict(vars(info))
    values["oem_entries"] = [m.SysInfoEntry("", s) for s in values.pop("oem_strings")]
    return values


_OEM = Kind(m.SysInfoEntry, (Field("value", ".", Text(r"[^\n,]*", "a value without commas")),),
            build=lambda ctx, el, v: m.SysInfoEntry("", v.get("value", "")))
SYSINFO = Kind(m.SysInfo, (
    Field("type", "@type", Choice(("smbios",), {"fwcfg"}), required=True),
    Many("bios", "bios/entry", SYSINFO_ENTRY),
    Many("system", "system/entry", SYSINFO_ENTRY),
    Many("base_board", "baseBoard/entry", SYSINFO_ENTRY),
    Many("chassis", "chassis/entry", SYSINFO_ENTRY),
    Many("oem_entries", "oemStrings/entry", _OEM),
), build=_sysinfo_build, unbuild=_sysinfo_unbuild)

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
FEATURES = Kind(m.Features, (
    Field("acpi", "acpi", Flag()),
    Field("apic", "apic", Flag()),
    Field("pae", "pae", Flag()),
    Sub("hyperv", "hyperv", HYPERV),
    Field("kvm_hidden", "kvm/hidden/@state", _STATE),
    Field("pmu", "pmu/@state", _STATE),
    Field("vmport", "vmport/@state", _STATE),
    Field("smm", "smm/@state", _STATE),
    Field("ioapic_driver", "ioapic/@driver", Choice(("kvm", "qemu"))),
    Field("vmcoreinfo", "vmcoreinfo/@state", _STATE),
))
CPU_FEATURE = Kind(m.CPUFeature, (
    Field("policy", "@policy", Choice(("force", "require", "optional", "disable", "forbid")), required=True),
    Field("name", "@name", Text(r"[a-z0-9_.-]+", "a CPU feature name"), required=True),
))
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
), ignore={"model/@vendor_id": ANY})
TIMER = Kind(m.Timer, (
    Field("name", "@name", Choice(("rtc", "pit", "hpet", "hypervclock", "tsc", "kvmclock"),
                                  {"platform", "armvtimer"}), required=True),
    Field("tickpolicy", "@tickpolicy", Choice(("delay", "catchup", "merge", "discard"))),
    Field("track", "@track", Choice(("guest", "wall", "realtime"), {"boot"})),
    Field("present", "@present", YES_NO),
    Field("frequency", "@frequency", Int(1)),
))

# -- devices ------------------------------------------------------------------------------------------------

_KNOWN_DISK_TYPES = {"dir", "network", "volume", "nvme", "vhostuser", "vhostvdpa"}
_KNOWN_FORMATS = {"none", "dir", "bochs", "cloop", "dmg", "iso", "vpc", "vdi", "fat", "vhd", "ploop",
                  "cow", "qcow", "qed", "vmdk", "luks", "vhdx", "aio"}
_INFERRED_BUS = {"vd": "virtio", "sd": "scsi", "hd": "ide", "fd": "fdc"}


def _disk_build(ctx: Ctx, el: El, values: dict[str, Any]) -> d.Disk | None:
    dtype = values.get("type", "file")
    device = values.get("device", "disk")
    source_attr, other_attr = ("source_file", "source_dev") if dtype == "file" else ("source_dev", "source_file")
    source_el = el.find("source")
    if other_attr in values:
        ctx.unsupported_at(child(el, "source"), other_attr.removeprefix("source_"))
    source = values.pop(source_attr, None)
    values.pop(other_attr, None)
    values.pop("driver_name", None)
    if source is None and device == "disk":
        if source_el is not None and values.get("type") in ("file", "block", None):
            ctx.invalid(source_el, "is required", source_attr.removeprefix("source_"))
        ctx.invalid(el, f"<source {source_attr.removeprefix('source_')}=...> is required for a "
                        f"type='{dtype}' disk")
    target_el = el.find("target")
    target = values["target"]
    if "bus" not in values and target_el is not None and target_el.get("bus") is None:
        values["bus"] = _INFERRED_BUS.get(target[:2], None)
        if values["bus"] is None:
            ctx.unsupported_at(child(el, "target"), "bus")
    bus = values.get("bus")
    if device == "cdrom" and bus in ("virtio", "fdc"):
        ctx.invalid(el, f"a cdrom cannot sit on bus '{bus}' (use sata, scsi, ide or usb)")
    if device == "floppy" and bus != "fdc":
        ctx.invalid(el, "a floppy sits on bus 'fdc'")
    if device != "floppy" and bus == "fdc":
        ctx.invalid(el, "only a floppy sits on bus 'fdc'")
    if values.get("readonly") and device == "disk" and bus in ("sata", "ide"):
        # QEMU's ide-hd cannot be read-only (libvirt refuses it too).
        ctx.unsupported_at(child(el, "readonly"))
        return None
    if bus is None:
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
    Field("device", "@device", Choice(("disk", "cdrom", "floppy"), {"lun"})),
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
    Field("readonly", "readonly", Flag()),
    Field("shareable", "shareable", Flag()),
    Field("serial", "serial", Text(r"[A-Za-z0-9_ .+-]+", "made of [A-Za-z0-9_ .+-] only")),
    Field("wwn", "wwn", Text(r"(0x)?[0-9a-fA-F]{16}", "16 hex digits")),
    Field("boot_order", "boot/@order", Int(1)),
    _ADDR,
), ignore={
    **ALIAS_IGNORED, "source/@index": ANY, "backingStore": ANY, "mirror": ANY,
}, build=_disk_build, unbuild=_disk_unbuild)
CONTROLLER = Kind(d.Controller, (
    Field("type", "@type", Choice(("usb", "pci", "virtio-serial", "sata", "scsi", "ide", "fdc"),
                                  {"ccid", "xenbus", "isa"}), required=True),
    Field("index", "@index", Int(0, 255)),
    Field("model", "@model", Choice(
        ("qemu-xhci", "ich9-ehci1", "ich9-uhci1", "ich9-uhci2", "ich9-uhci3", "piix3-uhci", "nec-xhci",
         "none", "pci-root", "pcie-root", "pcie-root-port", "pci-bridge", "pcie-to-pci-bridge",
         "dmi-to-pci-bridge", "virtio-scsi", "virtio", "virtio-transitional", "virtio-non-transitional"),
        {"piix4-uhci", "ehci", "vt82c686b-uhci", "pci-ohci", "usb-ehci", "qusb1", "qusb2", "pcie-switch-upstream-port",
         "pcie-switch-downstream-port", "pci-expander-bus", "pcie-expander-bus", "auto", "buslogic",
         "lsilogic", "lsisas1068", "vmpvscsi", "ibmvscsi", "lsisas1078", "am53c974", "dc390", "ncr53c90"})),
    Field("ports", "@ports", Int(1, 15)),
    Field("vectors", "@vectors", Int(0)),
    Field("master_startport", "master/@startport", Int(0)),
    Field("model_name", "model/@name", Choice(
        ("pcie-root-port", "pci-bridge", "pcie-pci-bridge", "i82801b11-bridge", "ioh3420"), None)),
    Field("target_chassis", "target/@chassis", Int(0, 255)),
    Field("target_port", "target/@port", Int(0, 255)),
    Field("target_busnr", "target/@busNr", Int(0, 255)),
    Field("driver_queues", "driver/@queues", Int(1)),
    Field("driver_iothread", "driver/@iothread", Int(1)),
    _ADDR,
), ignore=ALIAS_IGNORED)
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
), ignore=ALIAS_IGNORED)

_KNOWN_CHAR_TYPES = {"vc", "dev", "pipe", "stdio", "udp", "tcp", "spiceport", "nmdm", "qemu-vdagent", "dbus"}
CHAR_ENTRIES = (
    Field("type", "@type", Choice(("pty", "file", "null", "unix", "spicevmc"), _KNOWN_CHAR_TYPES)),
    Field("mode", "source/@mode", Choice(("bind",), {"connect"})),
    Field("path", "source/@path", Text(PATH, "a path")),
    Field("target_type", "target/@type", Choice(("serial", "virtio", "isa-serial"),
                                                {"xen", "uml", "lxc", "openvz", "sclp", "sclplm", "guestfwd",
                                                 "usb-serial", "pci-serial", "spapr-vio-serial"})),
    Field("target_port", "target/@port", Int(0)),
    Field("target_name", "target/@name", Text(r"[A-Za-z0-9_.-]+", "a channel name")),
    Field("target_model", "target/model/@name", Choice(("isa-serial",), None)),
    _ADDR,
)
CHAR_IGNORED: dict[str, Spec] = {
    **ALIAS_IGNORED, "target/@state": ANY, "source/seclabel": ANY, "log": ANY, "@tty": ANY,
}
INPUT = Kind(d.Input, (
    Field("type", "@type", Choice(("tablet", "mouse", "keyboard"), {"passthrough", "evdev"}), required=True),
    Field("bus", "@bus", Choice(("usb", "ps2", "virtio"), {"xen", "none"})),
    _ADDR,
), ignore=ALIAS_IGNORED)
GRAPHICS_ENTRIES = (
    Field("type", "@type", Choice(("vnc", "spice"), {"sdl", "rdp", "desktop", "egl-headless", "dbus"}),
          required=True),
    Field("port", "@port", Int(-1, 65535)),
    Field("tls_port", "@tlsPort", Int(-1, 65535)),
    Field("autoport", "@autoport", YES_NO),
    Field("listen", "@listen", Text(r"[0-9a-fA-F.:]+", "an IP address")),
    Field("listen_type", "listen/@type", Choice(("address",), {"network", "socket", "none"})),
    Field("listen_address", "listen/@address", Text(r"[0-9a-fA-F.:]+", "an IP address")),
    Field("image_compression", "image/@compression", Choice(
        ("off", "auto_glz", "auto_lz", "quic", "glz", "lz"))),
)
VIDEO = Kind(d.Video, (
    Field("model", "model/@type", Choice(("virtio", "qxl", "vga", "bochs", "cirrus", "ramfb", "none"),
                                         {"vmvga", "xen", "vbox", "gop"}), required=True),
    Field("ram", "model/@ram", Int(1)),
    Field("vram", "model/@vram", Int(1)),
    Field("vgamem", "model/@vgamem", Int(1)),
    Field("heads", "model/@heads", Int(1, 16)),
    Field("primary", "model/@primary", YES_NO),
    Field("accel3d", "model/acceleration/@accel3d", YES_NO),
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
    Field("type", "@type", Choice(("none", "spice"), {"alsa", "coreaudio", "jack", "oss", "pulseaudio", "sdl",
                                                      "file", "dbus", "pipewire"}), required=True),
))
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
), ignore={**ALIAS_IGNORED, "boot": ANY})
TPM = Kind(d.TPM, (
    Field("model", "@model", Choice(("tpm-tis", "tpm-crb"), {"tpm-spapr", "spapr-tpm-proxy"}), required=True),
    Field("backend_type", "backend/@type", Choice(("emulator",), {"passthrough", "external"}), required=True),
    Field("backend_version", "backend/@version", Choice(("2.0",), {"1.2"})),
), ignore=ALIAS_IGNORED)

_LOOPBACK = "127.0.0.1"


def _graphics_build(ctx: Ctx, el: El, values: dict[str, Any]) -> d.Graphics | None:
    listen = values.pop("listen", None)
    address = values.pop("listen_address", None)
    if listen is not None and address is not None and listen != address:
        ctx.invalid(el, f"listen={listen!r} and <listen address={address!r}> disagree")
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


GRAPHICS = Kind(d.Graphics, GRAPHICS_ENTRIES, ignore=ALIAS_IGNORED, build=_graphics_build,
                unbuild=_graphics_unbuild)


def _char_build(ctx: Ctx, el: El, values: dict[str, Any]) -> d.CharDevice | None:
    kind = str(el.tag)
    ctype = values.setdefault("type", "pty")
    if ctype == "pty":
        values.pop("path", None)  # a running guest's /dev/pts/N: output only
    if ctype == "file" and "path" not in values:
        ctx.invalid(el, "<source path=...> is required for type='file'")
    if ctype in ("null", "spicevmc") and el.find("source") is not None:
        ctx.unsupported_at(child(el, "source"))
        return None
    if ctype != "unix" and "mode" in values:
        ctx.unsupported_at(child(el, "source"), "mode")
        return None
    target_type = values.get("target_type")
    if kind == "channel":
        if target_type != "virtio" or "target_name" not in values:
            ctx.invalid(el, "a channel needs <target type='virtio' name=...>")
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


CHARDEV = Kind(d.CharDevice, CHAR_ENTRIES, ignore=CHAR_IGNORED, build=_char_build)

_SOURCE_OF = {"network": "source_network", "bridge": "source_bridge", "direct": "source_dev"}


def _interface_build(ctx: Ctx, el: El, values: dict[str, Any]) -> d.Interface | None:
    ntype = values["type"]
    needed = _SOURCE_OF.get(ntype)
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
    return d.Interface(**values)


INTERFACE = Kind(d.Interface, INTERFACE.entries, ignore=ALIAS_IGNORED, build=_interface_build)


#: Each device element: its table and the DomainConfig list (or field) it fills.
DEVICE_KINDS: dict[str, tuple[Kind[Any], str]] = {
    "disk": (DISK, "disks"),
    "controller": (CONTROLLER, "controllers"),
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
}
