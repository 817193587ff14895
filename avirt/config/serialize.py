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
``source`` is None gets no ``<source>``; the parser refuses such a disk, as libvirt would.
"""

from __future__ import annotations

from dataclasses import dataclass

from lxml import etree

from avirt.config.model import CharDevice, Disk, DomainConfig, Graphics

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
    _leaf(root, "memory", str(cfg.memory_kib), unit="KiB")
    if cfg.current_memory_kib is not None:
        _leaf(root, "currentMemory", str(cfg.current_memory_kib), unit="KiB")
    _leaf(root, "vcpu", str(cfg.vcpus), placement="static")

    os_el = etree.SubElement(root, "os")
    _leaf(os_el, "type", cfg.os.type, arch=cfg.os.arch, machine=cfg.os.machine)
    for tag, value in (("kernel", cfg.os.kernel), ("initrd", cfg.os.initrd), ("cmdline", cfg.os.cmdline)):
        if value is not None:
            _leaf(os_el, tag, value)
    for dev in cfg.os.boot_devs:
        etree.SubElement(os_el, "boot", dev=dev)

    if cfg.acpi or cfg.apic:
        features = etree.SubElement(root, "features")
        if cfg.acpi:
            etree.SubElement(features, "acpi")
        if cfg.apic:
            etree.SubElement(features, "apic")
    if cfg.cpu_host_passthrough:
        # What libvirt itself writes for host-passthrough; the parser accepts all three attributes.
        etree.SubElement(root, "cpu", mode="host-passthrough", check="none", migratable="on")
    etree.SubElement(root, "clock", offset=cfg.clock_offset)
    _leaf(root, "on_poweroff", cfg.on_poweroff)
    _leaf(root, "on_reboot", cfg.on_reboot)
    _leaf(root, "on_crash", cfg.on_crash)

    devices = etree.SubElement(root, "devices")
    if cfg.emulator is not None:
        _leaf(devices, "emulator", cfg.emulator)
    for disk in cfg.disks:
        chain = None if backing_chains is None else backing_chains.get(disk.target)
        _disk(devices, disk, chain, (mirrors or {}).get(disk.target))
    for nic in cfg.interfaces:
        nic_el = etree.SubElement(devices, "interface", type=nic.type)
        if nic.mac is not None:
            etree.SubElement(nic_el, "mac", address=nic.mac)
        etree.SubElement(nic_el, "model", type=nic.model)
    for chardev in cfg.chardevs:
        _chardev(devices, chardev)
    for graphics in cfg.graphics:
        if graphics.type != "none":
            _graphics(devices, graphics)
    if cfg.memballoon is not None:
        etree.SubElement(devices, "memballoon", model=cfg.memballoon)
    if cfg.panic is not None:
        etree.SubElement(devices, "panic", model=cfg.panic)

    etree.indent(root, space="  ")
    return etree.tostring(root, encoding="unicode", pretty_print=True)


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


def _disk(devices: _El, disk: Disk, chain: list[tuple[str, str]] | None, mirror: Mirror | None) -> None:
    el = etree.SubElement(devices, "disk", type=disk.type, device=disk.device)
    driver = etree.SubElement(el, "driver", name="qemu", type=disk.format)
    if disk.error_policy is not None:
        driver.set("error_policy", disk.error_policy)
    source_attr = "file" if disk.type == "file" else "dev"
    if disk.source is not None:
        etree.SubElement(el, "source", {source_attr: disk.source})
    if chain is not None:
        parent = el
        for index, (path, fmt) in enumerate(chain, start=1):
            parent = etree.SubElement(parent, "backingStore", type="file", index=str(index))
            etree.SubElement(parent, "format", type=fmt)
            etree.SubElement(parent, "source", file=path)
        etree.SubElement(parent, "backingStore")
    if mirror is not None:
        el_mirror = etree.SubElement(el, "mirror", type="file", job=mirror.job,
                                     ready="yes" if mirror.ready else "no")
        etree.SubElement(el_mirror, "format", type=mirror.format)
        etree.SubElement(el_mirror, "source", file=mirror.path)
    etree.SubElement(el, "target", dev=disk.target, bus=disk.bus)
    if disk.readonly:
        etree.SubElement(el, "readonly")
    if disk.serial is not None:
        _leaf(el, "serial", disk.serial)


def _chardev(devices: _El, chardev: CharDevice) -> None:
    el = etree.SubElement(devices, chardev.kind, type=chardev.type)
    if chardev.path is not None:
        etree.SubElement(el, "source", path=chardev.path)
    if chardev.kind == "console":
        etree.SubElement(el, "target", type="serial", port=str(chardev.target_port))
    else:
        etree.SubElement(el, "target", port=str(chardev.target_port))


def _graphics(devices: _El, graphics: Graphics) -> None:
    # port=None is written without a port so that it comes back as None; -1 is kept as -1.
    el = etree.SubElement(devices, "graphics", type=graphics.type)
    if graphics.port is not None:
        el.set("port", str(graphics.port))
    el.set("autoport", "yes" if graphics.port in (None, -1) else "no")
    el.set("listen", graphics.listen)
    etree.SubElement(el, "listen", type="address", address=graphics.listen)
