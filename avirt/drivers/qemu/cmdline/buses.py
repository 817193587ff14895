"""Controllers as QEMU devices, and where every other device plugs in: ``bus=``/``addr=`` from ``<address>``.

QEMU names a bus after the device that provides it (``id=pci.1`` gives bus ``pci.1``; ``id=scsi0`` gives
``scsi0.0``). libvirt's convention is kept, so a device's ``<address>`` maps to one QEMU bus name:

* PCI: controller index 0 is the machine's root bus (``pcie.0`` on q35, ``pci.0`` on pc); index N is the
  bridge or root port ``pci.N``;
* USB: controller index N is ``usbN``; SCSI ``scsiN``; virtio-serial ``virtio-serialN``;
* SATA: on q35, index 0 is the machine's built-in AHCI (bus ``ide``); others are ``sataN``;
* IDE: the pc machine's built-in controller, bus ``ide.0``/``ide.1``.
"""

from __future__ import annotations

from avirt.config.devices import Address, Controller
from avirt.config.model import DomainConfig

__all__ = ["controller_args", "is_q35", "pci_props", "usb_bus"]


def is_q35(cfg: DomainConfig) -> bool:
    return cfg.os.machine == "q35" or cfg.os.machine.startswith("pc-q35-")


def pci_bus(cfg: DomainConfig, index: int) -> str:
    if index == 0:
        return "pcie.0" if is_q35(cfg) else "pci.0"
    return f"pci.{index}"


def pci_props(cfg: DomainConfig, address: Address | None) -> dict[str, object]:
    """``bus``/``addr``/``multifunction`` for a PCI device; nothing when it has no PCI address."""
    if address is None or address.type != "pci":
        return {}
    props: dict[str, object] = {"bus": pci_bus(cfg, address.bus or 0),
                                "addr": f"0x{address.slot or 0:x}.0x{address.function or 0:x}"}
    if address.multifunction == "on":
        props["multifunction"] = True
    return props


def usb_bus(address: Address | None, controllers: list[Controller]) -> dict[str, object]:
    if address is not None and address.type == "usb":
        props: dict[str, object] = {"bus": f"usb{address.bus or 0}.0"}
        if address.port is not None:
            props["port"] = address.port
        return props
    usb = [c for c in controllers if c.type == "usb" and c.model != "none" and c.master_startport is None]
    return {"bus": f"usb{usb[0].index}.0"} if usb else {}


def sata_bus(cfg: DomainConfig, controller: int) -> str:
    return "ide" if controller == 0 and is_q35(cfg) else f"sata{controller}"


_USB_MODELS = {
    "qemu-xhci": "qemu-xhci", "nec-xhci": "nec-usb-xhci", "piix3-uhci": "piix3-usb-uhci",
    "ich9-ehci1": "ich9-usb-ehci1", "ich9-uhci1": "ich9-usb-uhci1", "ich9-uhci2": "ich9-usb-uhci2",
    "ich9-uhci3": "ich9-usb-uhci3",
}
_PCI_MODELS = {"pcie-root-port": "pcie-root-port", "pci-bridge": "pci-bridge",
               "pcie-to-pci-bridge": "pcie-pci-bridge", "dmi-to-pci-bridge": "i82801b11-bridge"}


def controller_args(cfg: DomainConfig) -> list[dict[str, object]]:
    """One ``-device`` per controller that is not built into the machine, in an order QEMU accepts
    (a bridge before what sits behind it: PCI controllers by index first)."""
    devices: list[dict[str, object]] = []
    ordered = sorted(cfg.controllers, key=lambda c: (c.type != "pci", c.index or 0))
    for c in ordered:
        index = c.index or 0
        props = pci_props(cfg, c.address)
        if c.type == "pci" and c.model in _PCI_MODELS:
            dev: dict[str, object] = {"driver": c.model_name or _PCI_MODELS[c.model], "id": f"pci.{index}"}
            if c.model == "pcie-root-port":
                dev.update(port=c.target_port if c.target_port is not None else index,
                           chassis=c.target_chassis if c.target_chassis is not None else index)
            elif c.model == "pci-bridge":
                dev["chassis_nr"] = c.target_chassis if c.target_chassis is not None else index
            devices.append(dev | props)
        elif c.type == "usb" and c.model in _USB_MODELS:
            dev = {"driver": _USB_MODELS[c.model]}
            if c.master_startport is not None:
                dev.update(masterbus=f"usb{index}.0", firstport=c.master_startport,
                           id=f"usb{index}-{c.model}")
            else:
                dev["id"] = f"usb{index}"
            if c.ports is not None and c.model in ("qemu-xhci", "nec-xhci"):
                dev.update(p2=c.ports, p3=c.ports)
            devices.append(dev | props)
        elif c.type == "virtio-serial":
            devices.append({"driver": "virtio-serial-pci", "id": f"virtio-serial{index}"}
                           | _given(max_ports=c.ports, vectors=c.vectors) | props)
        elif c.type == "scsi":
            iothread = None if c.driver_iothread is None else f"iothread{c.driver_iothread}"
            devices.append({"driver": "virtio-scsi-pci", "id": f"scsi{index}"}
                           | _given(num_queues=c.driver_queues, iothread=iothread) | props)
        elif c.type == "sata" and sata_bus(cfg, index) != "ide":
            devices.append({"driver": "ich9-ahci", "id": f"sata{index}"} | props)
        elif c.type == "fdc" and is_q35(cfg):
            devices.append({"driver": "isa-fdc", "id": f"fdc{index}"})
        # pci-root/pcie-root, the pc machine's IDE and floppy controller and q35's first AHCI are
        # built into the machine: they need no -device.
    return devices


def _given(**props: object) -> dict[str, object]:
    """The device properties the definition sets; QEMU's defaults stand for the others."""
    return {name: value for name, value in props.items() if value is not None}
