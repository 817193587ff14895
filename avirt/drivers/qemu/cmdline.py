"""A :class:`DomainConfig` as a QEMU command line: a list of arguments, never a shell string.

Choices that the rest of the driver relies on:

* ``-nodefaults -no-user-config``: the guest gets exactly the devices its XML names, whatever QEMU's
  defaults or the host's config files say.
* ``-S``: QEMU waits for ``cont``, so the controller is on the monitor before a single guest instruction runs.
* ``-no-shutdown``: a guest that powers off leaves QEMU alive in runstate ``shutdown``; the driver then
  decides (``on_poweroff``, a reboot it asked for) and quits QEMU itself. This is how ``reboot()`` works.
* every disk layer is its own ``-blockdev`` pair (a ``file``/``host_device`` protocol node and a format node)
  with a stable node name, so block jobs can name any layer. Layers are numbered from the bottom of the
  chain: ``vda-1`` is the base image of ``vda`` and ``vda-1-file`` its protocol node; an overlay added on top
  later gets the next free number, so no existing name ever changes.
* the QMP monitor is a listening socket handed down as a file descriptor (see ``hosts``), so there is no
  window in which the socket file exists but nobody listens.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from avirt.config.model import Disk, DomainConfig

DEFAULT_EMULATOR = "qemu-system-x86_64"


@dataclass(frozen=True)
class Layer:
    """One image of a disk's backing chain, as the driver found it on disk."""

    path: str
    format: str
    #: The format node's name in QEMU, once QEMU has the layer open.
    node: str = ""


def node_name(target: str, index: int) -> str:
    """The format node of layer ``index`` (1 = base) of disk ``target``."""
    return f"{target}-{index}"


def build_argv(
    cfg: DomainConfig,
    *,
    chains: dict[str, list[Layer]],
    accel: str,
    monitor: str,
    pidfile: str,
) -> list[str]:
    """The full QEMU argv for ``cfg``.

    ``chains`` maps each disk target to its layers, **bottom first** (base ... active image); ``accel`` is
    ``"kvm"`` or ``"tcg"``; ``monitor`` the listening socket QEMU serves QMP on, as chardev options
    (``fd=N`` for a socket the host bound, ``path=P`` for one QEMU binds itself).
    """
    machine = f"{cfg.os.machine},acpi={'on' if cfg.acpi else 'off'}"
    argv = [
        cfg.emulator or DEFAULT_EMULATOR,
        "-name", f"guest={cfg.name},debug-threads=on",
        "-uuid", cfg.uuid,
        "-nodefaults", "-no-user-config",
        "-machine", machine,
        "-accel", accel,
        "-cpu", _cpu_model(cfg, accel),
        "-m", f"size={cfg.memory_kib}k",
        "-smp", str(cfg.vcpus),
        "-rtc", f"base={cfg.clock_offset}",
        "-S", "-no-shutdown",
        "-msg", "timestamp=on",
        "-pidfile", pidfile,
        "-chardev", f"socket,id=monitor,{monitor},server=on,wait=off",
        "-mon", "chardev=monitor,mode=control",
    ]
    if cfg.on_reboot != "restart":
        # A guest reboot then arrives as SHUTDOWN(guest-reset), and the driver applies on_reboot.
        argv += ["-action", "reboot=shutdown"]
    argv += _boot_args(cfg)
    argv += _disk_args(cfg, chains)
    argv += _net_args(cfg)
    argv += _char_args(cfg)
    argv += _display_args(cfg)
    if cfg.memballoon == "virtio":
        argv += ["-device", "virtio-balloon-pci,id=balloon0"]
    if cfg.panic == "isa":
        argv += ["-device", "pvpanic"]
    # A panicking guest is paused, not powered off, so that the driver can apply on_crash.
    argv += ["-action", "panic=pause"]
    return argv


def _cpu_model(cfg: DomainConfig, accel: str) -> str:
    if cfg.cpu_host_passthrough:
        # "host" needs KVM; under TCG the nearest thing is "max": every feature TCG can emulate.
        return "host" if accel == "kvm" else "max"
    return "qemu64"


def _boot_args(cfg: DomainConfig) -> list[str]:
    argv: list[str] = []
    letters = {"hd": "c", "cdrom": "d", "network": "n"}
    order = "".join(letters[d] for d in cfg.os.boot_devs if d in letters)
    if order:
        argv += ["-boot", f"order={order}"]
    if cfg.os.kernel:
        argv += ["-kernel", cfg.os.kernel]
    if cfg.os.initrd:
        argv += ["-initrd", cfg.os.initrd]
    if cfg.os.cmdline:
        argv += ["-append", cfg.os.cmdline]
    return argv


def _disk_args(cfg: DomainConfig, chains: dict[str, list[Layer]]) -> list[str]:
    argv: list[str] = []
    sata_port = 0
    for disk in cfg.disks:
        if disk.bus == "sata" and sata_port == 0:
            argv += ["-device", "ich9-ahci,id=sata0"]
        layers = chains[disk.target]
        for i, layer in enumerate(layers, start=1):
            argv += ["-blockdev", _json(_protocol_node(disk, layer, i))]
            argv += ["-blockdev", _json(_format_node(disk, layer, i, top=i == len(layers)))]
        device: dict[str, object] = {"drive": node_name(disk.target, len(layers)), "id": disk.target}
        if disk.bus == "virtio":
            device["driver"] = "virtio-blk-pci"
        else:
            device.update(driver="ide-hd", bus=f"sata0.{sata_port}")
            sata_port += 1
        if disk.serial:
            device["serial"] = disk.serial
        if disk.error_policy is not None:
            # libvirt's error_policy sets both directions; "stop" pauses the guest on an I/O error.
            enospace = disk.error_policy == "enospace"
            device["werror"] = "enospc" if enospace else disk.error_policy
            device["rerror"] = "report" if enospace else disk.error_policy
        argv += ["-device", _json(device)]
    return argv


def _protocol_node(disk: Disk, layer: Layer, index: int) -> dict[str, object]:
    return {
        "driver": "host_device" if disk.type == "block" and index == 1 else "file",
        "node-name": f"{node_name(disk.target, index)}-file",
        "filename": layer.path,
        # QEMU opens backing layers read-only and reopens them read-write only while a job needs it.
        "auto-read-only": True,
        "discard": "unmap",
    }


def _format_node(disk: Disk, layer: Layer, index: int, *, top: bool) -> dict[str, object]:
    node: dict[str, object] = {
        "driver": layer.format,
        "node-name": node_name(disk.target, index),
        "file": f"{node_name(disk.target, index)}-file",
        "read-only": disk.readonly or not top,
    }
    if layer.format == "qcow2":
        # The chain is spelt out node by node; QEMU must not open backing files from the headers on its own.
        node["backing"] = node_name(disk.target, index - 1) if index > 1 else None
    return node


def _net_args(cfg: DomainConfig) -> list[str]:
    argv: list[str] = []
    for i, nic in enumerate(cfg.interfaces):
        argv += ["-netdev", f"user,id=net{i}"]
        device = f"virtio-net-pci,netdev=net{i},id=net{i}"
        if nic.mac:
            device += f",mac={nic.mac}"
        argv += ["-device", device]
    return argv


def _char_args(cfg: DomainConfig) -> list[str]:
    argv: list[str] = []
    serials = [c for c in cfg.chardevs if c.kind == "serial"]
    # libvirt's <console type=serial> is the first serial port seen twice; it is a port of its own only
    # when the domain has no <serial>.
    ports = serials or [c for c in cfg.chardevs if c.kind == "console"][:1]
    for i, char in enumerate(ports):
        backend = {"pty": "pty", "null": "null", "file": "file"}[char.type]
        spec = f"{backend},id=serial{i}"
        if char.type == "file" and char.path:
            spec += ",path=" + char.path.replace(",", ",,")  # QEMU option syntax doubles commas
        argv += ["-chardev", spec, "-device", f"isa-serial,chardev=serial{i},index={char.target_port}"]
    return argv


def _display_args(cfg: DomainConfig) -> list[str]:
    vnc = next((g for g in cfg.graphics if g.type == "vnc"), None)
    argv = ["-display", "none"]
    if vnc is not None:
        display = "0,to=99" if vnc.port is None or vnc.port < 0 else str(vnc.port - 5900)
        argv += ["-vnc", f"{vnc.listen}:{display}", "-device", "VGA,id=video0"]
    return argv


def _json(value: dict[str, object]) -> str:
    return json.dumps(value, separators=(",", ":"))
