"""A :class:`DomainConfig` as a QEMU command line: a list of arguments, never a shell string.

Choices that the rest of the driver relies on:

* ``-nodefaults -no-user-config``: the guest gets exactly the devices its XML names, whatever QEMU's
  defaults or the host's config files say.
* ``-S``: QEMU waits for ``cont``, so the controller is on the monitor before a single guest instruction
  runs; what cannot be said on the command line (a NIC's link down, the balloon's statistics period) is
  said over QMP in that window (:func:`startup_commands`).
* ``-no-shutdown``: a guest that powers off leaves QEMU alive in runstate ``shutdown``; the driver then
  decides (``on_poweroff``, a reboot it asked for) and quits QEMU itself. This is how ``reboot()`` works.
* disks are ``-blockdev`` node graphs with stable node names (``disks.py``), so block jobs can name any
  layer on any bus.
* the QMP monitor is a listening socket handed down as a file descriptor (see ``hosts``), so there is no
  window in which the socket file exists but nobody listens.

The modules below each turn one part of the definition into options: ``machine.py`` (chipset, firmware,
CPU, clocks), ``buses.py`` (controllers and where devices plug in), ``disks.py``, ``chardevs.py`` and
``devices.py`` (everything else). Devices are passed as JSON (``-device {...}``), which QEMU 7.2 takes
and which needs no escaping.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from typing import Any

from avirt.config.devices import IoTune
from avirt.config.model import DomainConfig
from avirt.drivers.qemu.cmdline.buses import controller_args
from avirt.drivers.qemu.cmdline.chardevs import channel_path, chardev_args
from avirt.drivers.qemu.cmdline.devices import device_args, display_args, fs_socket, tpm_socket
from avirt.drivers.qemu.cmdline.disks import Layer, disk_args, node_name
from avirt.drivers.qemu.cmdline.machine import machine_args, smbios_args

__all__ = ["DEFAULT_EMULATOR", "Layer", "build_argv", "channel_path", "fs_socket", "node_name",
           "startup_commands", "tpm_socket"]

DEFAULT_EMULATOR = "qemu-system-x86_64"


def build_argv(
    cfg: DomainConfig,
    *,
    chains: dict[str, list[Layer]],
    accel: str,
    monitor: str,
    pidfile: str,
    run_dir: str = ".",
    spice_port: int | None = None,
    tap_fds: dict[int, int] | None = None,
) -> list[str]:
    """The full QEMU argv for ``cfg``.

    ``chains`` maps each disk target to its layers, **bottom first** (base ... active image); a disk
    without an entry (an empty cdrom) gets a device and no nodes. ``accel`` is ``"kvm"`` or ``"tcg"``;
    ``monitor`` the listening socket QEMU serves QMP on, as chardev options (``fd=N`` for a socket the
    host bound, ``path=P`` for one QEMU binds itself); ``run_dir`` where sockets QEMU binds itself go
    (channels, the TPM's); ``spice_port`` the port picked for a SPICE server with ``autoport``;
    ``tap_fds`` the open tap device of each host-network NIC, by its index among the interfaces.
    """
    firmware_nodes, firmware_args = _firmware(cfg)
    argv = [
        cfg.emulator or DEFAULT_EMULATOR,
        "-name", f"guest={cfg.name},debug-threads=on",
        "-uuid", cfg.uuid,
        "-nodefaults", "-no-user-config",
        *firmware_args,
        *machine_args(cfg, accel, firmware_nodes),
        *smbios_args(cfg),
        "-S", "-no-shutdown",
        "-msg", "timestamp=on",
        "-pidfile", pidfile,
        "-chardev", f"socket,id=monitor,{monitor},server=on,wait=off",
        "-mon", "chardev=monitor,mode=control",
    ]
    if cfg.on_reboot != "restart":
        # A guest reboot then arrives as SHUTDOWN(guest-reset), and the driver applies on_reboot.
        argv += ["-action", "reboot=shutdown"]
    nodes, disk_devices = disk_args(cfg, chains)
    other_args, other_devices = device_args(cfg, run_dir, tap_fds or {})
    for node in nodes:
        argv += ["-blockdev", _json(node)]
    char_args, char_devices = chardev_args(cfg, run_dir)
    argv += other_args + char_args
    # Buses before what plugs into them. Every -device is JSON: QEMU 7.2 creates JSON devices after
    # key=value ones, so a mix would create a port before its bus.
    for device in [*controller_args(cfg), *char_devices, *disk_devices, *other_devices]:
        argv += ["-device", _json(device)]
    argv += display_args(cfg, spice_port)
    # A panicking guest is paused, not powered off, so that the driver can apply on_crash.
    argv += ["-action", "panic=pause"]
    return argv


def _firmware(cfg: DomainConfig) -> tuple[list[str], list[str]]:
    """UEFI as two pflash nodes (code read-only, the domain's own variables writable), or a ROM image."""
    loader = cfg.os.loader
    if loader is None or loader.path is None:
        return [], []
    if loader.type == "rom":
        return [], ["-bios", loader.path]
    images = [(loader.path, True)]
    if cfg.os.nvram is not None and cfg.os.nvram.path is not None:
        images.append((cfg.os.nvram.path, False))
    names, argv = [], []
    for i, (path, readonly) in enumerate(images):
        name = f"pflash{i}"
        argv += ["-blockdev", _json({"driver": "file", "filename": path, "node-name": f"{name}-file",
                                     "read-only": readonly}),
                 "-blockdev", _json({"driver": "raw", "node-name": name, "file": f"{name}-file",
                                     "read-only": readonly})]
        names.append(name)
    return names, argv


def startup_commands(cfg: DomainConfig) -> list[tuple[str, dict[str, Any]]]:
    """QMP commands to send after QEMU started and before the guest runs."""
    commands: list[tuple[str, dict[str, Any]]] = []
    for i, nic in enumerate(cfg.interfaces):
        if nic.link_state == "down":
            commands.append(("set_link", {"name": f"net{i}", "up": False}))
    for graphics in cfg.graphics:
        if graphics.passwd:
            commands.append(("set_password", {"protocol": graphics.type, "password": graphics.passwd}))
    for disk in cfg.disks:
        if disk.iotune is not None and disk.source is not None:
            # A virtio disk's block backend sits on its inner virtio device, an IDE/SCSI disk's on itself.
            inner = f"/machine/peripheral/{disk.target}/virtio-backend"
            qdev = inner if disk.bus == "virtio" else disk.target
            commands.append(("block_set_io_throttle", _throttle(qdev, disk.iotune)))
    balloon = cfg.memballoon
    if balloon is not None and balloon.model == "virtio" and balloon.stats_period:
        commands.append(("qom-set", {"path": "/machine/peripheral/balloon0",
                                     "property": "guest-stats-polling-interval",
                                     "value": balloon.stats_period}))
    return commands


def _throttle(target: str, tune: IoTune) -> dict[str, Any]:
    """``<iotune>`` as QMP's block_set_io_throttle: libvirt's names, QEMU's spelling."""
    args: dict[str, Any] = {"id": target}
    for kind, qemu in (("bytes", "bps"), ("iops", "iops")):
        for scope, suffix in (("total", ""), ("read", "_rd"), ("write", "_wr")):
            args[f"{qemu}{suffix}"] = getattr(tune, f"{scope}_{kind}_sec") or 0
            for extra in ("_max", "_max_length"):
                value = getattr(tune, f"{scope}_{kind}_sec{extra}")
                if value is not None:
                    args[f"{qemu}{suffix}{extra}"] = value
    if tune.size_iops_sec is not None:
        args["iops_size"] = tune.size_iops_sec
    if tune.group_name is not None:
        args["group"] = tune.group_name
    return args


#: json.dumps with any option makes a new encoder on every call; one made once writes the same.
_ENCODER = json.JSONEncoder(separators=(",", ":"))
#: And JSONEncoder.encode still makes a new C encoder on every call: this is the one it would make (with
#: no check for circular references, which argv's plain dicts cannot have), made once.
_Encode = Callable[[object, int], Iterable[str]]
_C_MAKE: Callable[..., _Encode] | None = getattr(json.encoder, "c_make_encoder", None)
_C_ENCODE = None if _C_MAKE is None else _C_MAKE(None, _ENCODER.default, json.encoder.encode_basestring_ascii,
                                                 None, ":", ",", False, False, True)


def _json(value: dict[str, object]) -> str:
    if _C_ENCODE is None:  # a Python without the json module's C part
        return _ENCODER.encode(value)
    return "".join(_C_ENCODE(value, 0))
