""":class:`DomainConfig` -> libvirt-style domain XML, the form ``dumpxml`` returns.

The output is exactly what :func:`avirt.config.parse.parse_domain_xml` accepts, so a definition survives
``define_xml(dumpxml())`` unchanged: for any configuration the parser produced,
``parse_domain_xml(domain_to_xml(cfg)) == cfg``, and serialising a parsed document is stable. Elements
follow libvirt's order and spelling (``<memory unit='KiB'>``, ``<vcpu placement='static'>``,
``<driver name='qemu' .../>``), so tools that read libvirt XML can read ours. Attribute values are in
double quotes where libvirt uses single ones; XML does not care. The document is built as
:class:`~avirt.config.nodes.Node` objects and rendered as text once, exactly as lxml would write it
(cheaper than an lxml call per element and attribute); what a table describes (every device, ``<cpu>``,
``<features>``...) is written straight to text from the table (``Kind.text``), at the depth it sits, as
a Node tree would render it; only ``<metadata>``'s items, which are XML of their own, go through lxml.

Live-only information is passed in rather than stored in the configuration, because it describes the
running guest and the image files, not the definition: ``live_id`` becomes ``<domain id=...>`` and
``backing_chains`` becomes libvirt's ``<backingStore>`` chains. Both are ignored when parsed back.

Chardevs are written in list order (libvirt's schema lets devices interleave) so that a list mixing
``<serial>`` and ``<console>`` round-trips exactly. A ``Graphics`` of type ``none`` is written as no
``<graphics>`` element at all - libvirt has no ``none`` type and both mean "no display". A ``Disk`` whose
``source`` is None (an empty cdrom or floppy drive) gets no ``<source>``.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from lxml import etree

from avirt.config import tables as t
from avirt.config.devices import CharDevice
from avirt.config.model import DomainConfig, Features
from avirt.config.nodes import Node, render, render_into

__all__ = ["domain_to_xml"]


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
    root = Node("domain", {"type": cfg.hypervisor})
    if live_id is not None:
        root.set("id", str(live_id))
    root.add("name", text=cfg.name)
    root.add("uuid", text=cfg.uuid)
    if cfg.title is not None:
        root.add("title", text=cfg.title)
    if cfg.description is not None:
        root.add("description", text=cfg.description)
    metadata = root.add("metadata") if cfg.metadata else None
    root.add("memory", {"unit": "KiB"}, str(cfg.memory_kib))
    if cfg.current_memory_kib is not None:
        root.add("currentMemory", {"unit": "KiB"}, str(cfg.current_memory_kib))
    if cfg.memory_backing is not None:
        root.add_raw("memoryBacking", t.MEMORY_BACKING.text("memoryBacking", cfg.memory_backing, _TOP))
    vcpu = root.add("vcpu", {"placement": "static"}, str(cfg.vcpus))
    if cfg.vcpus_current is not None:
        vcpu.set("current", str(cfg.vcpus_current))
    if cfg.iothreads is not None:
        root.add("iothreads", text=str(cfg.iothreads))
    if cfg.cputune is not None:
        root.add_raw("cputune", t.CPUTUNE.text("cputune", cfg.cputune, _TOP))
    if cfg.sysinfo is not None:
        root.add_raw("sysinfo", t.SYSINFO.text("sysinfo", cfg.sysinfo, _TOP))
    _os(root, cfg)
    if cfg.features != Features():
        root.add_raw("features", t.FEATURES.text("features", cfg.features, _TOP))
    if cfg.cpu is not None:
        root.add_raw("cpu", t.CPU.text("cpu", cfg.cpu, _TOP))
    clock = root.add("clock", {"offset": cfg.clock_offset})
    for timer in cfg.timers:
        clock.add_raw("timer", t.TIMER.text("timer", timer, _DEVICE))
    root.add("on_poweroff", text=cfg.on_poweroff)
    root.add("on_reboot", text=cfg.on_reboot)
    root.add("on_crash", text=cfg.on_crash)
    if cfg.suspend_to_mem is not None or cfg.suspend_to_disk is not None:
        pm = root.add("pm")
        for tag, value in (("suspend-to-mem", cfg.suspend_to_mem), ("suspend-to-disk", cfg.suspend_to_disk)):
            if value is not None:
                pm.add(tag, {"enabled": value})

    devices = root.add("devices")
    devices.raw = _devices(cfg, backing_chains, mirrors)

    if metadata is not None:
        metadata.raw = _metadata(tuple(cfg.metadata))
    return render(root)


#: Where the lines of <domain>'s children start, and those of <devices>'s (and <os>'s, <clock>'s) children.
_TOP, _DEVICE = "\n  ", "\n    "


def _devices(cfg: DomainConfig, backing_chains: dict[str, list[tuple[str, str]]] | None,
             mirrors: dict[str, Mirror] | None) -> str:
    """<devices> and all it holds, as text: each device is written straight from its table
    (:meth:`Kind.text <avirt.config.schema.Kind.text>`), but for a disk with live-only parts to add."""
    out = ["<devices>"]
    if cfg.emulator is not None:
        out.append(_DEVICE)
        render_into(Node("emulator", text=cfg.emulator), _DEVICE, out)
    for disk in cfg.disks:
        chain = None if backing_chains is None else backing_chains.get(disk.target)
        mirror = None if mirrors is None else mirrors.get(disk.target)
        out.append(_DEVICE)
        if chain is None and mirror is None:
            t.DISK.writer_of().emit("disk", disk, _DEVICE, out)
        else:
            node = Node("disk")
            t.DISK.fill(node, disk)
            _disk(node, chain, mirror)
            render_into(node, _DEVICE, out)
    for tag, (kind, attr) in t.DEVICE_KINDS.items():
        if tag in ("disk", "console", "channel"):
            continue  # disks above; chardevs all at once, in list order, under the "serial" entry
        items = getattr(cfg, attr)
        if not items:
            continue
        writer = kind.writer_of()
        for item in items if isinstance(items, list) else [items]:
            if tag == "graphics" and item.type == "none":
                continue
            out.append(_DEVICE)
            writer.emit(item.kind if isinstance(item, CharDevice) else tag, item, _DEVICE, out)
    if len(out) == 1:
        return "<devices/>"
    out.append(f"{_TOP}</devices>")
    return "".join(out)


@functools.lru_cache(maxsize=64)
def _metadata(items: tuple[str, ...]) -> str:
    """<metadata> with each item verbatim (lxml's serialisation), one per line at the items' depth.

    Kept for the last few sets of items: a definition is written again and again (each dumpxml, each
    save) with the same metadata, which costs a parse of each item to write."""
    metadata = etree.Element("metadata")
    metadata.text = "\n    "
    for item in items:
        metadata.append(etree.fromstring(item))
        metadata[-1].tail = "\n    "
    metadata[-1].tail = "\n  "
    return etree.tostring(metadata, encoding="unicode")


def _os(root: Node, cfg: DomainConfig) -> None:
    os_el = root.add("os")
    if cfg.os.firmware is not None:
        os_el.set("firmware", cfg.os.firmware)
    os_el.add("type", {"arch": cfg.os.arch, "machine": cfg.os.machine}, cfg.os.type)
    if cfg.os.firmware_features:
        firmware = os_el.add("firmware")
        for feature in cfg.os.firmware_features:
            firmware.add_raw("feature", t.FIRMWARE_FEATURE.text("feature", feature, _DEVICE + "  "))
    if cfg.os.loader is not None:
        os_el.add_raw("loader", t.LOADER.text("loader", cfg.os.loader, _DEVICE))
    if cfg.os.nvram is not None:
        os_el.add_raw("nvram", t.NVRAM.text("nvram", cfg.os.nvram, _DEVICE))
    for tag, value in (("kernel", cfg.os.kernel), ("initrd", cfg.os.initrd), ("cmdline", cfg.os.cmdline)):
        if value is not None:
            os_el.add(tag, text=value)
    for dev in cfg.os.boot_devs:
        os_el.add("boot", {"dev": dev})
    if cfg.os.bootmenu is not None:
        menu = os_el.add("bootmenu", {"enable": cfg.os.bootmenu})
        if cfg.os.bootmenu_timeout is not None:
            menu.set("timeout", str(cfg.os.bootmenu_timeout))
    if cfg.os.smbios_mode is not None:
        os_el.add("smbios", {"mode": cfg.os.smbios_mode})


@dataclass(frozen=True)
class Mirror:
    """A two-phase block job's target, as the live XML shows it."""

    job: str  # libvirt's job name: "active-commit" or "copy"
    path: str
    format: str
    ready: bool
    #: How ``vda[N]`` names the target (a copy's: one past the deepest layer; a commit's base: its own
    #: place in the chain); None: not shown.
    index: int | None = None


def _disk(el: Node, chain: list[tuple[str, str]] | None, mirror: Mirror | None) -> None:
    """Add the live-only parts of a written disk where libvirt puts them: right after <source>."""
    anchor = el.find("source")
    if anchor is None:
        anchor = el.find("driver")
    position = 0 if anchor is None else el.children.index(anchor) + 1
    extra: list[Node] = []
    if chain is not None:
        top = parent = Node("backingStore")
        for index, (path, fmt) in enumerate(chain, start=1):
            parent.set("type", "file")
            parent.set("index", str(index))
            parent.add("format", {"type": fmt})
            parent.add("source", {"file": path})
            parent = parent.add("backingStore")
        extra.append(top)
    if mirror is not None:
        ready = "yes" if mirror.ready else "no"
        el_mirror = Node("mirror", {"type": "file", "job": mirror.job, "ready": ready})
        if mirror.index is not None:
            el_mirror.set("index", str(mirror.index))
        el_mirror.add("format", {"type": mirror.format})
        el_mirror.add("source", {"file": mirror.path})
        extra.append(el_mirror)
    for offset, item in enumerate(extra):
        el.insert(position + offset, item)
