"""Every other device: NICs, input, display and video, sound, RNG, watchdog, balloon, panic, shared
directories (9p, virtiofs), vsock, TPM.

Each function turns one kind of ``<devices>`` child into QEMU options, using ``buses.py`` for where it
plugs in. Devices the machine already has need no option and are documented as such in
docs/domain-xml.md: PS/2 mouse and keyboard (the i8042 controller of pc and q35), q35's iTCO watchdog
(armed with ``ICH9-LPC.noreboot=off`` in ``machine.py``).

Displays listen on 127.0.0.1 unless the definition names another address. A sound card's output goes to
the ``<audio>`` backend its definition names (``none`` needs no host sound system); QEMU would otherwise
pick a host backend of its own.
"""

from __future__ import annotations

from avirt.config.devices import Interface, Video
from avirt.config.model import DomainConfig
from avirt.drivers.qemu.cmdline.buses import pci_props, usb_bus

__all__ = ["device_args", "display_args", "fs_socket", "nic_device", "tpm_socket"]

_NIC_MODELS = {"virtio": "virtio-net-pci", "e1000": "e1000", "e1000e": "e1000e", "rtl8139": "rtl8139"}
_INPUTS = {("tablet", "usb"): "usb-tablet", ("mouse", "usb"): "usb-mouse", ("keyboard", "usb"): "usb-kbd",
           ("tablet", "virtio"): "virtio-tablet-pci", ("mouse", "virtio"): "virtio-mouse-pci",
           ("keyboard", "virtio"): "virtio-keyboard-pci"}
_SOUND = {"ich9": "ich9-intel-hda", "ich6": "intel-hda", "ac97": "AC97", "es1370": "ES1370"}
_WATCHDOG = {"i6300esb": "i6300esb", "ib700": "ib700"}


def tpm_socket(run_dir: str) -> str:
    return f"{run_dir}/tpm.sock"


def fs_socket(run_dir: str, index: int) -> str:
    """The vhost-user socket between QEMU and the virtiofsd of the ``index``-th ``<filesystem>``."""
    return f"{run_dir}/fs{index}.sock"


def nic_device(cfg: DomainConfig, nic: Interface, ident: str) -> dict[str, object]:
    """The ``-device`` (or ``device_add``) of a NIC whose netdev and device are both named ``ident``."""
    dev: dict[str, object] = {"driver": _NIC_MODELS[nic.model or "virtio"], "netdev": ident,
                              "id": ident} | pci_props(cfg, nic.address)
    if nic.mac:
        dev["mac"] = nic.mac
    if nic.boot_order is not None:
        dev["bootindex"] = nic.boot_order
    if nic.mtu is not None and (nic.model or "virtio") == "virtio":
        dev["host_mtu"] = nic.mtu
    return dev


def device_args(cfg: DomainConfig, run_dir: str,
                tap_fds: dict[int, int] | None = None) -> tuple[list[str], list[dict[str, object]]]:
    """Options that are not devices (``-netdev``, ``-object``, ``-audiodev``...) and the ``-device``s.

    A NIC on a host network gets the tap avirt opened for it as a descriptor (``tap_fds``, by NIC index),
    so QEMU itself needs no privilege and runs no helper script.
    """
    argv: list[str] = []
    devices: list[dict[str, object]] = []
    for i, nic in enumerate(cfg.interfaces):
        if nic.type == "user":
            argv += ["-netdev", f"user,id=net{i}"]
        else:  # network, bridge, ethernet: the driver opened the tap (networks/taps.py)
            fd = (tap_fds or {}).get(i)
            if fd is None:
                raise ValueError(f"interface {i} (type='{nic.type}') has no tap descriptor")
            argv += ["-netdev", f"tap,id=net{i},fd={fd}"]
        devices.append(nic_device(cfg, nic, f"net{i}"))
    for i, inp in enumerate(cfg.inputs):
        bus = inp.bus or ("usb" if inp.type == "tablet" else "ps2")
        if bus == "ps2":
            continue  # the machine's i8042
        dev: dict[str, object] = {"driver": _INPUTS[(inp.type, bus)], "id": f"input{i}"}
        dev |= usb_bus(inp.address, cfg.controllers) if bus == "usb" else pci_props(cfg, inp.address)
        devices.append(dev)
    for i, video in enumerate(cfg.videos):
        if video.model != "none":
            devices.append(_video(video, primary=i == 0) | {"id": f"video{i}"}
                           | pci_props(cfg, video.address))
    for audio in cfg.audios:
        argv += ["-audiodev", f"{audio.type},id=audio{audio.id}"]
    for i, sound in enumerate(cfg.sounds):
        audiodev = f"audio{sound.audio_id or (cfg.audios[0].id if cfg.audios else 1)}"
        dev = {"driver": _SOUND[sound.model], "id": f"sound{i}"} | pci_props(cfg, sound.address)
        if sound.model in ("ich9", "ich6"):
            devices.append(dev)
            devices.append({"driver": f"hda-{sound.codec or 'duplex'}", "id": f"sound{i}-codec0",
                            "bus": f"sound{i}.0", "cad": 0, "audiodev": audiodev})
        else:
            devices.append(dev | {"audiodev": audiodev})
    for i, rng in enumerate(cfg.rngs):
        if rng.backend_model == "builtin":
            argv += ["-object", f"rng-builtin,id=objrng{i}"]
        else:
            argv += ["-object", f"rng-random,id=objrng{i},filename={rng.backend or '/dev/urandom'}"]
        dev = {"driver": "virtio-rng-pci", "rng": f"objrng{i}", "id": f"rng{i}"} | pci_props(cfg, rng.address)
        if rng.rate_bytes is not None:
            dev.update({"max-bytes": rng.rate_bytes, "period": rng.rate_period or 1000})
        devices.append(dev)
    for i, watchdog in enumerate(cfg.watchdogs):
        if watchdog.model in _WATCHDOG:
            devices.append({"driver": _WATCHDOG[watchdog.model], "id": f"watchdog{i}"}
                           | pci_props(cfg, watchdog.address))
        if watchdog.action is not None:
            argv += ["-action", f"watchdog={watchdog.action}"]
    balloon = cfg.memballoon
    if balloon is not None and balloon.model == "virtio":
        dev = {"driver": "virtio-balloon-pci", "id": "balloon0"} | pci_props(cfg, balloon.address)
        if balloon.autodeflate is not None:
            dev["deflate-on-oom"] = balloon.autodeflate == "on"
        if balloon.free_page_reporting is not None:
            dev["free-page-reporting"] = balloon.free_page_reporting == "on"
        devices.append(dev)
    for panic in cfg.panics:
        if panic.model in (None, "isa"):
            dev = {"driver": "pvpanic"}
            if panic.address is not None and panic.address.iobase is not None:
                dev["ioport"] = panic.address.iobase
            devices.append(dev)
        elif panic.model == "pvpanic":
            devices.append({"driver": "pvpanic-pci"} | pci_props(cfg, panic.address))
    for i, fs in enumerate(cfg.filesystems):
        if fs.driver_type == "virtiofs":
            # virtiofsd (drivers/qemu/virtiofs.py) already listens there when QEMU starts.
            argv += ["-chardev", f"socket,id=chr-vu-fs{i},path={fs_socket(run_dir, i)}"]
            dev = {"driver": "vhost-user-fs-pci", "id": f"fs{i}", "chardev": f"chr-vu-fs{i}",
                   "tag": fs.target_dir}
            if fs.queue is not None:
                dev["queue-size"] = fs.queue
            devices.append(dev | pci_props(cfg, fs.address))
            continue
        model = {"mapped": "mapped-xattr", "squash": "none"}.get(fs.accessmode or "", "passthrough")
        ro = ",readonly=on" if fs.readonly else ""
        argv += ["-fsdev", f"local,id=fsdev-fs{i},path={fs.source_dir.replace(',', ',,')},"
                           f"security_model={model}{ro}"]
        devices.append({"driver": "virtio-9p-pci", "id": f"fs{i}", "fsdev": f"fsdev-fs{i}",
                        "mount_tag": fs.target_dir} | pci_props(cfg, fs.address))
    if cfg.vsock is not None and cfg.vsock.cid is not None:
        devices.append({"driver": "vhost-vsock-pci", "id": "vsock0", "guest-cid": cfg.vsock.cid}
                       | pci_props(cfg, cfg.vsock.address))
    for i, tpm in enumerate(cfg.tpms):
        argv += ["-chardev", f"socket,id=chrtpm{i},path={tpm_socket(run_dir)}",
                 "-tpmdev", f"emulator,id=tpm-tpm{i},chardev=chrtpm{i}"]
        devices.append({"driver": tpm.model, "tpmdev": f"tpm-tpm{i}", "id": f"tpm{i}"})
    return argv, devices


def _video(video: Video, *, primary: bool) -> dict[str, object]:
    model = video.model
    if model == "qxl":
        dev: dict[str, object] = {"driver": "qxl-vga" if primary else "qxl"}
        for attr, prop in (("ram", "ram_size"), ("vram", "vram_size")):
            if getattr(video, attr) is not None:
                dev[prop] = getattr(video, attr) * 1024
        if video.vgamem is not None:
            dev["vgamem_mb"] = max(1, video.vgamem // 1024)
        if video.heads is not None:
            dev["max_outputs"] = video.heads
        return dev
    if model == "virtio":
        dev = {"driver": "virtio-vga" if primary else "virtio-gpu-pci"}
        if video.heads is not None:
            dev["max_outputs"] = video.heads
        return dev
    drivers = {"vga": "VGA", "cirrus": "cirrus-vga", "bochs": "bochs-display", "ramfb": "ramfb"}
    dev = {"driver": drivers[model]}
    if model in ("vga", "bochs") and video.vram is not None:
        dev["vgamem_mb" if model == "vga" else "vgamem"] = (
            max(1, video.vram // 1024) if model == "vga" else video.vram * 1024)
    return dev


def display_args(cfg: DomainConfig, spice_port: int | None) -> list[str]:
    """``-display none`` always (no local window), plus a VNC and/or SPICE server."""
    argv = ["-display", "none"]
    for graphics in cfg.graphics:
        if graphics.type == "vnc":
            display = "0,to=99" if graphics.port is None or graphics.port < 0 else str(graphics.port - 5900)
            host = f"[{graphics.listen}]" if ":" in graphics.listen else graphics.listen
            # The password itself goes over QMP (startup_commands), never on the command line.
            argv += ["-vnc", f"{host}:{display}" + (",password=on" if graphics.passwd else "")]
        elif graphics.type == "spice":
            port = graphics.port if graphics.port not in (None, -1) else spice_port
            spice = [f"port={port}", f"addr={graphics.listen}", "seamless-migration=on"]
            if not graphics.passwd:
                spice.append("disable-ticketing=on")
            if graphics.image_compression is not None:
                spice.append(f"image-compression={graphics.image_compression}")
            argv += ["-spice", ",".join(spice)]
    keymap = next((g.keymap for g in cfg.graphics if g.keymap), None)
    if keymap is not None:
        argv += ["-k", keymap]
    return argv
