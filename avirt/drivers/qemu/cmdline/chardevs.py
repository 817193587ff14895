"""Character devices: serial ports, consoles, virtio channels (the guest agent's among them), USB redirection.

Each one is a ``-chardev`` backend (pty, file, null, a unix socket, SPICE's spicevmc) and a guest device
(``isa-serial``, ``virtconsole``, ``virtserialport``, ``usb-redir``). A unix channel without a path gets
a socket in the domain's run directory (``ch<N>.sock``), which QEMU binds and listens on; that is where
a guest agent client connects.

libvirt's ``<console type='serial'>`` is the first serial port seen twice: it is a port of its own only
when the domain has no ``<serial>``.
"""

from __future__ import annotations

from avirt.config.devices import CharDevice
from avirt.config.model import DomainConfig
from avirt.drivers.qemu.cmdline.buses import usb_bus

__all__ = ["channel_path", "chardev_args"]


def channel_path(run_dir: str, index: int) -> str:
    return f"{run_dir}/ch{index}.sock"


def _backend(char: CharDevice, chardev_id: str, run_dir: str, index: int) -> str:
    if char.type == "file":
        append = ",append=on" if char.append == "on" else ""
        return f"file,id={chardev_id},path={_escape(char.path or '')}{append}"
    if char.type == "unix":
        path = char.path or channel_path(run_dir, index)
        server = "server=on,wait=off" if (char.mode or "bind") == "bind" else "server=off"
        return f"socket,id={chardev_id},path={_escape(path)},{server}"
    if char.type == "tcp":
        server = "server=on,wait=off" if (char.mode or "bind") == "bind" else "server=off"
        telnet = ",telnet=on" if char.protocol == "telnet" else ""
        return f"socket,id={chardev_id},host={char.host or '127.0.0.1'},port={char.service},{server}{telnet}"
    if char.type == "spicevmc":
        return f"spicevmc,id={chardev_id},name=vdagent"
    return f"{char.type},id={chardev_id}"  # pty, null


def _escape(value: str) -> str:
    return value.replace(",", ",,")  # QEMU option syntax doubles commas


def chardev_args(cfg: DomainConfig, run_dir: str) -> tuple[list[str], list[dict[str, object]]]:
    """The ``-chardev`` backends and the guest devices that use them."""
    argv: list[str] = []
    devices: list[dict[str, object]] = []
    serials = [c for c in cfg.chardevs if c.kind == "serial"]
    consoles = [c for c in cfg.chardevs if c.kind == "console"]
    ports = serials or [c for c in consoles if c.target_type in (None, "serial")][:1]
    for i, char in enumerate(ports):
        argv += ["-chardev", _backend(char, f"serial{i}", run_dir, i)]
        devices.append({"driver": "isa-serial", "chardev": f"serial{i}", "index": char.target_port or 0,
                        "id": f"serial{i}"})
    for i, char in enumerate(c for c in consoles if c.target_type == "virtio"):
        argv += ["-chardev", _backend(char, f"charconsole{i}", run_dir, 100 + i)]
        devices.append({"driver": "virtconsole", "chardev": f"charconsole{i}", "id": f"console{i}"}
                       | _serial_bus(char))
    for i, char in enumerate(c for c in cfg.chardevs if c.kind == "channel"):
        argv += ["-chardev", _backend(char, f"charchannel{i}", run_dir, i)]
        devices.append({"driver": "virtserialport", "chardev": f"charchannel{i}", "id": f"channel{i}",
                        "name": char.target_name} | _serial_bus(char))
    for i, redir in enumerate(cfg.redirdevs):
        argv += ["-chardev", f"spicevmc,id=charredir{i},name=usbredir"]
        devices.append({"driver": "usb-redir", "chardev": f"charredir{i}", "id": f"redir{i}"}
                       | usb_bus(redir.address, cfg.controllers))
    return argv, devices


def _serial_bus(char: CharDevice) -> dict[str, object]:
    address = char.address
    if address is None or address.type != "virtio-serial":
        return {}
    bus: dict[str, object] = {"bus": f"virtio-serial{address.controller or 0}.{address.bus or 0}"}
    return bus | ({"nr": int(address.port)} if address.port is not None else {})
