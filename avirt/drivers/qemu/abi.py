"""A stable guest ABI: at define time, fill in what QEMU would otherwise choose anew at every start.

A guest sees its hardware through the machine type's version, the PCI address of every device, which
controllers exist and the MAC of each NIC. Left to QEMU these depend on the QEMU release and on the
order of the command line, so a QEMU upgrade or an edited definition would show the guest different
hardware (Windows re-detects it and may ask for re-activation; Linux renames NICs). libvirt therefore
writes them into the definition when it is defined; so does :func:`stabilise`:

* the machine alias (``q35``, ``pc``) becomes the concrete type this QEMU runs it as (``pc-q35-7.2``);
* controllers that devices need and do not name are added: the PCI root, a USB controller for USB
  devices, SATA/SCSI/IDE/floppy controllers for disks on those buses, virtio-serial for channels;
* disks on SATA, SCSI, IDE and floppy buses get drive addresses derived from their names, as libvirt
  derives them (``sdb`` is unit 1);
* every PCI device gets an address. On ``pc`` they sit on the root bus (slot 1 is the chipset's,
  slot 2 the first video card's). On ``q35`` PCI Express devices each get a ``pcie-root-port`` of their
  own (the root ports themselves share slots of the root bus, eight functions each), conventional PCI
  devices sit on the root bus, the primary video card at 00:01.0, ICH9 USB at 00:1d, ICH9 audio at 00:1b.

Addresses written in the input are honoured; two devices on one address, or an address on a bus with
no controller, are refused (:class:`InvalidXMLError` naming both elements). The function is pure: the
driver passes in the machine aliases of its QEMU, so the test driver gives the same results.
"""

from __future__ import annotations

import string
from collections.abc import Iterator
from typing import Any

from avirt.config.devices import Address, Audio, Controller
from avirt.config.model import DomainConfig
from avirt.errors import InvalidXMLError, UnsupportedError

__all__ = ["MACHINE_ALIASES", "stabilise"]

#: What QEMU 7.2 runs the aliases as; the driver reads its own QEMU's list and passes that instead.
MACHINE_ALIASES = {"q35": "pc-q35-7.2", "pc": "pc-i440fx-7.2"}

# Devices that want a PCI Express slot (a root port of their own) on q35; others are conventional PCI.
_PCIE = {"virtio", "qemu-xhci", "nec-xhci", "e1000e", "virtio-serial", "virtio-scsi", "pcie-to-pci-bridge",
         "bochs"}


def stabilise(cfg: DomainConfig, machines: dict[str, str], known: set[str] | None = None) -> DomainConfig:
    """Fill in ``cfg``'s machine version, controllers and addresses (in place) and return it.

    ``machines`` maps aliases to concrete machine types; ``known`` (when given) is every machine type
    this QEMU offers, and a definition naming another is refused. On an error ``cfg`` may be half
    filled: callers pass a definition they have just parsed and drop it then.
    """
    concrete = machines.get(cfg.os.machine, cfg.os.machine)
    if known is not None and concrete not in known:
        raise UnsupportedError(["/domain/os/type/@machine"],
                               f"machine type {cfg.os.machine!r} is not offered by this QEMU")
    cfg.os.machine = concrete
    q35 = concrete.startswith("pc-q35-")
    _add_controllers(cfg, q35)
    _drive_addresses(cfg)
    _serial_addresses(cfg)
    _pci_addresses(cfg, q35)
    return cfg


# -- controllers --------------------------------------------------------------------------------------------


def _controller(cfg: DomainConfig, ctype: str, index: int = 0) -> Controller | None:
    return next((c for c in cfg.controllers if c.type == ctype and c.index == index
                 and c.master_startport is None), None)


def _ensure(cfg: DomainConfig, ctype: str, index: int = 0, model: str | None = None) -> Controller:
    found = _controller(cfg, ctype, index)
    if found is None:
        found = Controller(type=ctype, index=index, model=model)
        cfg.controllers.append(found)
    return found


def _add_controllers(cfg: DomainConfig, q35: bool) -> None:
    root = _ensure(cfg, "pci", 0, "pcie-root" if q35 else "pci-root")
    if root.model not in ("pcie-root" if q35 else "pci-root",):
        raise InvalidXMLError(f"/domain/devices/controller: PCI controller 0 of a {'q35' if q35 else 'pc'} "
                              f"machine is {'pcie-root' if q35 else 'pci-root'}, not {root.model}")
    for c in cfg.controllers:
        if c.type == "usb" and c.model is None:
            c.model = "qemu-xhci" if q35 else "piix3-uhci"
        elif c.type == "scsi" and c.model is None:
            c.model = "virtio-scsi"
        elif c.type == "pci" and c.model is None:
            c.model = "pcie-root-port" if q35 else "pci-bridge"
        elif c.type == "ide" and q35:
            raise InvalidXMLError("/domain/devices/controller: a q35 machine has no IDE controller "
                                  "(use sata)")
    usb_users = [d for d in cfg.disks if d.bus == "usb"] + [i for i in cfg.inputs if i.bus == "usb" or (
        i.bus is None and i.type == "tablet")] + list(cfg.redirdevs)
    if usb_users and not any(c.type == "usb" for c in cfg.controllers):
        _ensure(cfg, "usb", 0, "qemu-xhci" if q35 else "piix3-uhci")
    if usb_users and all(c.model == "none" for c in cfg.controllers if c.type == "usb"):
        raise InvalidXMLError("/domain/devices: a USB device needs a USB controller, and the only one is "
                              "model='none'")
    for disk in cfg.disks:
        if disk.bus == "ide" and q35:
            raise InvalidXMLError(f"/domain/devices/disk[target/@dev='{disk.target}']: a q35 machine has no "
                                  "IDE bus (use sata)")
        bus_type = {"sata": "sata", "scsi": "scsi", "ide": "ide", "fdc": "fdc"}.get(disk.bus)
        if bus_type is not None:
            index = _drive_index(disk.target, disk.bus)[0] if disk.address is None else (
                disk.address.controller or 0)
            _ensure(cfg, bus_type, index, "virtio-scsi" if bus_type == "scsi" else None)
    if cfg.sounds and not cfg.audios:
        # Without an <audio> QEMU would pick a host sound system of its own; libvirt adds this too.
        spice = any(g.type == "spice" for g in cfg.graphics)
        cfg.audios.append(Audio(id=1, type="spice" if spice else "none"))
    if any(c.kind == "channel" or (c.kind == "console" and c.target_type == "virtio") for c in cfg.chardevs):
        _ensure(cfg, "virtio-serial", 0)
    cfg.controllers.sort(key=lambda c: (_CONTROLLER_ORDER.index(c.type), c.index or 0))


_CONTROLLER_ORDER = ["pci", "usb", "sata", "ide", "fdc", "scsi", "virtio-serial"]


# -- drive and virtio-serial addresses ----------------------------------------------------------------------


def _name_index(target: str) -> int:
    """libvirt's virDiskNameToIndex: 'sda' -> 0, 'sdz' -> 25, 'sdaa' -> 26."""
    letters = target[2:] if not target.startswith("xvd") else target[3:]
    index = 0
    for ch in letters:
        index = index * 26 + string.ascii_lowercase.index(ch) + 1
    return index - 1


def _drive_index(target: str, bus: str) -> tuple[int, int, int, int]:
    """(controller, bus, target, unit) for a disk named ``target`` on ``bus``, as libvirt assigns them."""
    idx = _name_index(target)
    if bus == "sata":
        return idx // 6, 0, 0, idx % 6
    if bus == "scsi":
        return 0, 0, 0, idx
    if bus == "ide":
        return idx // 4, (idx % 4) // 2, 0, idx % 2
    return 0, 0, 0, idx % 2  # fdc


def _drive_addresses(cfg: DomainConfig) -> None:
    taken: dict[tuple[Any, ...], str] = {}
    for disk in cfg.disks:
        if disk.bus in ("virtio", "usb"):
            continue
        if disk.address is None:
            controller, bus, target, unit = _drive_index(disk.target, disk.bus)
            disk.address = Address(type="drive", controller=controller, bus=bus, target=target, unit=unit)
        elif disk.address.type != "drive":
            raise InvalidXMLError(f"/domain/devices/disk[target/@dev='{disk.target}']/address: a disk on bus "
                                  f"{disk.bus} needs a drive address, not {disk.address.type}")
        a = disk.address
        key = (disk.bus, a.controller or 0, a.bus or 0, a.target or 0, a.unit or 0)
        if key in taken:
            raise InvalidXMLError(f"/domain/devices/disk[target/@dev='{disk.target}']/address: drive address "
                                  f"{key[1:]} is already used by disk {taken[key]}")
        taken[key] = disk.target


def _serial_addresses(cfg: DomainConfig) -> None:
    ports = {int(c.address.port) for c in cfg.chardevs
             if c.address is not None and c.address.type == "virtio-serial" and c.address.port is not None}
    next_port = 1  # port 0 is the console's, as in libvirt
    for char in cfg.chardevs:
        if char.kind == "serial" or (char.kind == "console" and char.target_type != "virtio"):
            continue
        if char.address is None:
            while next_port in ports:
                next_port += 1
            char.address = Address(type="virtio-serial", controller=0, bus=0, port=str(next_port))
            ports.add(next_port)


# -- PCI addresses ------------------------------------------------------------------------------------------


def _pci_devices(cfg: DomainConfig) -> Iterator[tuple[str, str, Any]]:
    """(XPath-ish name, PCI model family, device) for every device that lives on PCI, in libvirt's order."""
    for c in cfg.controllers:
        if c.type == "pci" and c.model in ("pci-root", "pcie-root"):
            continue
        if c.type == "usb" and c.model != "none":
            yield f"controller[@type='usb'][@index='{c.index}'][@model='{c.model}']", c.model or "", c
        elif c.type == "pci":
            yield f"controller[@type='pci'][@index='{c.index}']", c.model or "", c
        elif c.type == "virtio-serial":
            yield f"controller[@type='virtio-serial'][@index='{c.index}']", "virtio-serial", c
        elif c.type == "scsi":
            yield f"controller[@type='scsi'][@index='{c.index}']", "virtio-scsi", c
        elif c.type == "sata" and (c.index or 0) > 0:
            yield f"controller[@type='sata'][@index='{c.index}']", "ahci", c
    for i, fs in enumerate(cfg.filesystems, 1):
        yield f"filesystem[{i}]", "virtio", fs
    for i, n in enumerate(cfg.interfaces, 1):
        yield f"interface[{i}]", "virtio" if (n.model or "virtio") == "virtio" else n.model or "", n
    for i, v in enumerate(cfg.videos, 1):
        if v.model not in ("none", "ramfb"):
            yield f"video[{i}]", "video0" if i == 1 else v.model, v
    for i, s in enumerate(cfg.sounds, 1):
        yield f"sound[{i}]", s.model, s
    for d in cfg.disks:
        if d.bus == "virtio":
            yield f"disk[target/@dev='{d.target}']", "virtio", d
    for i, inp in enumerate(cfg.inputs, 1):
        if inp.bus == "virtio":
            yield f"input[{i}]", "virtio", inp
    for i, w in enumerate(cfg.watchdogs, 1):
        if w.model == "i6300esb":
            yield f"watchdog[{i}]", "i6300esb", w
    if cfg.memballoon is not None and cfg.memballoon.model == "virtio":
        yield "memballoon", "virtio", cfg.memballoon
    for i, r in enumerate(cfg.rngs, 1):
        yield f"rng[{i}]", "virtio", r
    for i, p in enumerate(cfg.panics, 1):
        if p.model == "pvpanic":
            yield f"panic[{i}]", "pvpanic", p
    if cfg.vsock is not None:
        yield "vsock", "virtio", cfg.vsock


def _pci_addresses(cfg: DomainConfig, q35: bool) -> None:
    devices = list(_pci_devices(cfg))
    buses = {c.index for c in cfg.controllers if c.type == "pci"}
    used: dict[tuple[int, int, int], str] = {}
    for name, _, dev in devices:
        a = dev.address
        if a is None:
            continue
        if a.type != "pci":
            raise InvalidXMLError(f"/domain/devices/{name}/address: a PCI device needs a PCI address")
        if (a.bus or 0) not in buses:
            raise InvalidXMLError(f"/domain/devices/{name}/address: there is no PCI controller with index "
                                  f"{a.bus}")
        key = (a.bus or 0, a.slot or 0, a.function or 0)
        if key in used or (key[0] == 0 and key[1] in _reserved(q35)):
            other = used.get(key, "the machine's chipset")
            raise InvalidXMLError(f"/domain/devices/{name}/address: PCI address {key[0]:02x}:{key[1]:02x}."
                                  f"{key[2]:x} is already used by {other}")
        used[key] = f"/domain/devices/{name}"
    root_ports = [c for c in cfg.controllers if c.type == "pci" and c.model == "pcie-root-port"]
    # By identity: ``in`` on the list would compare each device with each port field by field.
    is_port = {id(c) for c in root_ports}
    # Root ports first (they are where the rest goes), then everything else in libvirt's order.
    for name, family, dev in sorted(devices, key=lambda d: id(d[2]) not in is_port):
        if dev.address is not None:
            continue
        if q35 and family in ("ich9-ehci1", "ich9-uhci1", "ich9-uhci2", "ich9-uhci3"):
            function = {"ich9-ehci1": 7, "ich9-uhci1": 0, "ich9-uhci2": 1, "ich9-uhci3": 2}[family]
            dev.address = _fixed(used, name, 0x1D, function, multifunction=function == 0)
        elif q35 and family == "ich9":
            dev.address = _fixed(used, name, 0x1B, 0)
        elif family == "video0":
            dev.address = _fixed(used, name, 1 if q35 else 2, 0)
        elif not q35 and family == "piix3-uhci":
            dev.address = _fixed(used, name, 1, 2)
        elif q35 and id(dev) in is_port:
            dev.address = _next_function(used, name)
            _number_root_port(dev)
        elif q35 and family in _PCIE:
            dev.address = _free_root_port(cfg, used, name, root_ports)
        else:
            dev.address = _next_slot(used, name, q35)


def _number_root_port(port: Controller) -> None:
    """libvirt's numbering: the chassis is the index, the port is (slot << 3) + function."""
    assert port.address is not None
    if port.target_chassis is None:
        port.target_chassis = port.index
    if port.target_port is None:
        port.target_port = ((port.address.slot or 0) << 3) + (port.address.function or 0)


def _reserved(q35: bool) -> set[int]:
    return {0, 0x1F} if q35 else {0, 1}


def _fixed(used: dict[tuple[int, int, int], str], name: str, slot: int, function: int, *,
           multifunction: bool = False) -> Address:
    key = (0, slot, function)
    if key in used:
        raise InvalidXMLError(f"/domain/devices/{name}: its usual PCI address 00:{slot:02x}.{function:x} is "
                              f"already used by {used[key]}; give it an <address>")
    used[key] = f"/domain/devices/{name}"
    return Address(type="pci", domain=0, bus=0, slot=slot, function=function,
                   multifunction="on" if multifunction else None)


def _next_slot(used: dict[tuple[int, int, int], str], name: str, q35: bool) -> Address:
    for slot in range(1, 0x20):
        if slot in _reserved(q35) or slot == (1 if q35 else 2) or any(k[:2] == (0, slot) for k in used):
            continue
        return _fixed(used, name, slot, 0)
    raise UnsupportedError([f"/domain/devices/{name}"], "no free slot on the PCI root bus (add a pci-bridge)")


def _next_function(used: dict[tuple[int, int, int], str], name: str) -> Address:
    """Root ports share slots from 00:02 on, eight functions each, the first multifunction."""
    for slot in range(2, 0x1F):
        for function in range(8):
            key = (0, slot, function)
            if key in used:
                continue
            if function == 0 and slot in (0x1B, 0x1D):
                break
            if (0, slot, 0) in used and not used[(0, slot, 0)].startswith("root-port:"):
                break  # the slot holds another device
            used[key] = f"root-port:/domain/devices/{name}"
            return Address(type="pci", domain=0, bus=0, slot=slot, function=function,
                           multifunction="on" if function == 0 else None)
    raise UnsupportedError([f"/domain/devices/{name}"], "no free function on the PCIe root bus")


def _free_root_port(cfg: DomainConfig, used: dict[tuple[int, int, int], str], name: str,
                    root_ports: list[Controller]) -> Address:
    for port in root_ports:
        key = (port.index or 0, 0, 0)
        if key not in used:
            used[key] = f"/domain/devices/{name}"
            return Address(type="pci", domain=0, bus=port.index, slot=0, function=0)
    index = max(c.index or 0 for c in cfg.controllers if c.type == "pci") + 1
    port = Controller(type="pci", index=index, model="pcie-root-port")
    port.address = _next_function(used, f"controller[@type='pci'][@index='{index}']")
    _number_root_port(port)
    cfg.controllers.insert(max(i for i, c in enumerate(cfg.controllers) if c.type == "pci") + 1, port)
    root_ports.append(port)
    used[(index, 0, 0)] = f"/domain/devices/{name}"
    return Address(type="pci", domain=0, bus=index, slot=0, function=0)
