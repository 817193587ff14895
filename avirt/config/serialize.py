""":class:`DomainConfig` -> libvirt-style domain XML, the form ``dumpxml`` returns.

The output is exactly what :func:`avirt.config.parse.parse_domain_xml` accepts, so a definition survives
``define_xml(dumpxml())`` unchanged: for any configuration the parser produced,
``parse_domain_xml(domain_to_xml(cfg)) == cfg``, and serialising a parsed document is stable. Elements
follow libvirt's order and spelling (``<memory unit='KiB'>``, ``<vcpu placement='static'>``,
``<driver name='qemu' .../>``), so tools that read libvirt XML can read ours. lxml writes attribute values
in double quotes where libvirt uses single ones; XML does not care.

Live-only information is passed in rather than stored in the configuration, because it describes the
running guest and the image files, not the definition: ``live_id`` becomes ``<domain id=...>`` and
``backing_chains`` becomes libvirt's ``<backingStore>`` chains. Both are ignored when parsed back.

Chardevs are written in list order (libvirt's schema lets devices interleave) so that a list mixing
``<serial>`` and ``<console>`` round-trips exactly. A ``Graphics`` of type ``none`` is written as no
``<graphics>`` element at all - libvirt has no ``none`` type and both mean "no display". A ``Disk`` whose
``source`` is None (an empty cdrom or floppy drive) gets no ``<source>``.
"""

from __future__ import annotations

from dataclasses import dataclass

from lxml import etree

from avirt.config import tables as t
from avirt.config.devices import CharDevice
from avirt.config.model import DomainConfig, Features

__all__ = ["domain_to_xml"]

_El = etree._Element


def domain_to_xml(
    cfg: DomainConfig,
    *,
    live_id: int | None = None,
    backing_chains: dict[str, list[tuple[str, str]]] | None = None,
    mirrors: dict[str, Mirror] | None = None,
) -> str:
    """Render ``cfg`` as pretty-printed libvirt domain XML (two-space indent, trailing newline).

    ``live_id``: the running domain's id, written as ``<domain id=...>`` as libvirt does for live XML.

    ``backing_chains``: disk target -> ``[(path, format), ...]``, the layers *below* the active image,
    top-down. Each listed disk gets libvirt's nested chain::

        <source file='top.qcow2'/>
        <backingStore type='file' index='1'>
          <format type='qcow2'/>
          <source file='base.qcow2'/>
          <backingStore/>
        </backingStore>

    Indexes follow libvirt's documented convention (formatdomain, "backingStore"): the active image
    carries none, the image directly below it is ``index='1'`` and each deeper layer counts up, so
    ``vda[2]`` names the second backing file as in ``virsh blockcommit --base vda[2]``. The closing empty
    ``<backingStore/>`` says the chain is complete (an empty list thus yields just ``<backingStore/>``:
    a self-contained image). Disks absent from the mapping, or every disk when it is None, get no
    ``<backingStore>`` - nothing is claimed about their chain. Targets with no matching disk are ignored:
    a disk may have been unplugged between reading the chains and rendering.

    ``mirrors``: disk target -> the two-phase job running on it, rendered as libvirt does,
    ``<mirror type='file' job='active-commit' ready='yes'><format .../><source file=.../></mirror>``.
    """
    root = etree.Element("domain", type=cfg.hypervisor)
    if live_id is not None:
        root.set("id", str(live_id))
    _leaf(root, "name", cfg.name)
    _leaf(root, "uuid", cfg.uuid)
    if cfg.title is not None:
        _leaf(root, "title", cfg.title)
    if cfg.description is not None:
        _leaf(root, "description", cfg.description)
    metadata = etree.SubElement(root, "metadata") if cfg.metadata else None
    _leaf(root, "memory", str(cfg.memory_kib), unit="KiB")
    if cfg.current_memory_kib is not None:
        _leaf(root, "currentMemory", str(cfg.current_memory_kib), unit="KiB")
    if cfg.memory_backing is not None:
        t.MEMORY_BACKING.write(root, "memoryBacking", cfg.memory_backing)
    vcpu = _leaf(root, "vcpu", str(cfg.vcpus), placement="static")
    if cfg.vcpus_current is not None:
        vcpu.set("current", str(cfg.vcpus_current))
    if cfg.iothreads is not None:
        _leaf(root, "iothreads", str(cfg.iothreads))
    if cfg.cputune is not None:
        t.CPUTUNE.write(root, "cputune", cfg.cputune)
    if cfg.sysinfo is not None:
        t.SYSINFO.write(root, "sysinfo", cfg.sysinfo)
    _os(root, cfg)
    if cfg.features != Features():
        t.FEATURES.write(root, "features", cfg.features)
    if cfg.cpu is not None:
        t.CPU.write(root, "cpu", cfg.cpu)
    clock = etree.SubElement(root, "clock", offset=cfg.clock_offset)
    for timer in cfg.timers:
        t.TIMER.write(clock, "timer", timer)
    _leaf(root, "on_poweroff", cfg.on_poweroff)
    _leaf(root, "on_reboot", cfg.on_reboot)
    _leaf(root, "on_crash", cfg.on_crash)
    if cfg.suspend_to_mem is not None or cfg.suspend_to_disk is not None:
        pm = etree.SubElement(root, "pm")
        for tag, value in (("suspend-to-mem", cfg.suspend_to_mem), ("suspend-to-disk", cfg.suspend_to_disk)):
            if value is not None:
                etree.SubElement(pm, tag, enabled=value)

    devices = etree.SubElement(root, "devices")
    if cfg.emulator is not None:
        _leaf(devices, "emulator", cfg.emulator)
    for disk in cfg.disks:
        chain = None if backing_chains is None else backing_chains.get(disk.target)
        _disk(t.DISK.write(devices, "disk", disk), chain, (mirrors or {}).get(disk.target))
    for tag, (kind, attr) in t.DEVICE_KINDS.items():
        if tag in ("disk", "console", "channel"):
            continue  # disks above; chardevs all at once, in list order, under the "serial" entry
        items = getattr(cfg, attr)
        for item in items if isinstance(items, list) else [] if items is None else [items]:
            if tag == "graphics" and item.type == "none":
                continue
            kind.write(devices, item.kind if isinstance(item, CharDevice) else tag, item)

    etree.indent(root, space="  ")
    if metadata is not None:  # after indenting, which would change the whitespace of mixed content
        metadata.text = "\n    "
        for item in cfg.metadata:
            metadata.append(etree.fromstring(item))
            metadata[-1].tail = "\n    "
        metadata[-1].tail = "\n  "
    return etree.tostring(root, encoding="unicode", pretty_print=True)


def _os(root: _El, cfg: DomainConfig) -> None:
    os_el = etree.SubElement(root, "os")
    if cfg.os.firmware is not None:
        os_el.set("firmware", cfg.os.firmware)
    _leaf(os_el, "type", cfg.os.type, arch=cfg.os.arch, machine=cfg.os.machine)
    if cfg.os.firmware_features:
        firmware = etree.SubElement(os_el, "firmware")
        for feature in cfg.os.firmware_features:
            t.FIRMWARE_FEATURE.write(firmware, "feature", feature)
    if cfg.os.loader is not None:
        t.LOADER.write(os_el, "loader", cfg.os.loader)
    if cfg.os.nvram is not None:
        t.NVRAM.write(os_el, "nvram", cfg.os.nvram)
    for tag, value in (("kernel", cfg.os.kernel), ("initrd", cfg.os.initrd), ("cmdline", cfg.os.cmdline)):
        if value is not None:
            _leaf(os_el, tag, value)
    for dev in cfg.os.boot_devs:
        etree.SubElement(os_el, "boot", dev=dev)
    if cfg.os.bootmenu is not None:
        menu = etree.SubElement(os_el, "bootmenu", enable=cfg.os.bootmenu)
        if cfg.os.bootmenu_timeout is not None:
            menu.set("timeout", str(cfg.os.bootmenu_timeout))
    if cfg.os.smbios_mode is not None:
        etree.SubElement(os_el, "smbios", mode=cfg.os.smbios_mode)


def _leaf(parent: _El, tag: str, text: str, **attrs: str) -> _El:
    el = etree.SubElement(parent, tag, attrs)
    el.text = text
    return el


@dataclass(frozen=True)
class Mirror:
    """A two-phase block job's target, as the live XML shows it."""

    job: str  # libvirt's job name: "active-commit" or "copy"
    path: str
    format: str
    ready: bool


def _disk(el: _El, chain: list[tuple[str, str]] | None, mirror: Mirror | None) -> None:
    """Add the live-only parts of a written disk where libvirt puts them: right after <source>."""
    anchor = el.find("source")
    if anchor is None:
        anchor = el.find("driver")
    position = 0 if anchor is None else el.index(anchor) + 1
    extra: list[_El] = []
    if chain is not None:
        top = parent = etree.Element("backingStore")
        for index, (path, fmt) in enumerate(chain, start=1):
            parent.set("type", "file")
            parent.set("index", str(index))
            etree.SubElement(parent, "format", type=fmt)
            etree.SubElement(parent, "source", file=path)
            parent = etree.SubElement(parent, "backingStore")
        extra.append(top)
    if mirror is not None:
        ready = "yes" if mirror.ready else "no"
        el_mirror = etree.Element("mirror", type="file", job=mirror.job, ready=ready)
        etree.SubElement(el_mirror, "format", type=mirror.format)
        etree.SubElement(el_mirror, "source", file=mirror.path)
        extra.append(el_mirror)
    for offset, item in enumerate(extra):
        el.insert(position + offset, item)
