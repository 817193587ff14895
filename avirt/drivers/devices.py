"""Device XML against a definition: what ``attach_device`` and ``detach_device`` change, as pure functions.

A ``<disk>`` to attach is judged as part of the definition it joins, not alone: it is put into the
definition's ``<devices>`` and the whole document is parsed again, so every rule the parser has between
elements (one disk per target, a bus the machine has, iothreads that exist) applies to the newcomer as
it would at define time. The guest ABI is then filled in the same way (``qemu/abi.py``'s
:func:`~avirt.drivers.qemu.abi.stabilise`): the new disk gets its drive or PCI address, and any
controller it needs is added. A running QEMU cannot take new controllers (a PCIe root port cannot be
hotplugged), so a live attach that would need one is refused, naming it; the persistent definition
takes it, for the next start.

A device to detach is found by its target (``<target dev='vdb'/>``), or by its source when the XML gives
no target, as libvirt finds it. Both drivers use these functions, so they agree on what is accepted.
"""

from __future__ import annotations

import copy
import os

from lxml import etree

from avirt.config import domain_to_xml, parse_domain_xml
from avirt.config.devices import Controller, Disk
from avirt.config.model import DomainConfig
from avirt.drivers.qemu.abi import stabilise
from avirt.errors import InvalidXMLError, OperationInvalidError, UnsupportedError

__all__ = ["describe", "device_element", "find_disk", "new_controllers", "with_disk", "without_disk"]


def device_element(xml: str) -> etree._Element:
    """The one ``<disk>`` element of ``xml``; other device kinds are not hotpluggable in avirt yet."""
    # As parse_domain_xml reads a document: a str is already decoded, and no DTD or entity is honoured.
    parser = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False, remove_comments=True,
                             remove_pis=True, encoding="utf-8")
    try:
        element = etree.fromstring(xml.encode("utf-8"), parser)
    except UnicodeEncodeError as e:  # lone surrogates, as os.fsdecode makes of undecodable bytes
        raise InvalidXMLError(f"the device XML is not valid Unicode: {e.reason}") from e
    except etree.XMLSyntaxError as e:
        raise InvalidXMLError(f"malformed device XML: {e.msg}", e.lineno) from e
    tree = element.getroottree()
    if tree.docinfo.internalDTD is not None or tree.docinfo.doctype:
        raise InvalidXMLError("DOCTYPE declarations are not accepted", 1)
    if not isinstance(element.tag, str) or element.tag != "disk":
        raise UnsupportedError([f"/{element.tag}"], "avirt attaches and detaches <disk> devices only, not")
    return element


def with_disk(cfg: DomainConfig, xml: str, machines: dict[str, str]) -> tuple[DomainConfig, Disk]:
    """A new definition: ``cfg`` with the ``<disk>`` of ``xml`` added and its ABI filled in (``cfg`` is not
    changed), and that disk."""
    element = device_element(xml)
    target = element.find("target")
    dev = target.get("dev") if target is not None else None
    if not dev:
        raise InvalidXMLError("the disk to attach has no <target dev='...'/>")
    if cfg.disk(dev) is not None:
        raise OperationInvalidError(f"domain '{cfg.name}' already has a disk {dev}")
    root = etree.fromstring(domain_to_xml(cfg).encode())
    devices = root.find("devices")
    if devices is None:
        devices = etree.SubElement(root, "devices")
    devices.append(element)
    added = stabilise(parse_domain_xml(etree.tostring(root)), machines)
    disk = added.disk(dev)
    assert disk is not None
    return added, disk


def find_disk(cfg: DomainConfig, xml: str) -> Disk:
    """The disk of ``cfg`` that the ``<disk>`` of ``xml`` names: by target, else by source."""
    element = device_element(xml)
    target = element.find("target")
    dev = target.get("dev") if target is not None else None
    if dev:
        disk = cfg.disk(dev)
        if disk is None:
            raise OperationInvalidError(f"domain '{cfg.name}' has no disk {dev}")
        return disk
    source = element.find("source")
    path = None if source is None else source.get("file") or source.get("dev")
    if not path:
        raise InvalidXMLError("the disk to detach has neither <target dev='...'/> nor a <source>")
    found = [d for d in cfg.disks if d.source and os.path.normpath(d.source) == os.path.normpath(path)]
    if len(found) != 1:
        raise OperationInvalidError(f"domain '{cfg.name}' has {'no' if not found else 'more than one'} disk "
                                    f"with source {path}")
    return found[0]


def without_disk(cfg: DomainConfig, target: str) -> DomainConfig:
    """A new definition: ``cfg`` without disk ``target`` (its controllers stay, as libvirt keeps them)."""
    changed = copy.deepcopy(cfg)
    changed.disks = [d for d in changed.disks if d.target != target]
    return changed


def new_controllers(before: DomainConfig, after: DomainConfig) -> list[Controller]:
    """The controllers ``after`` has and ``before`` has not (by type and index)."""
    known = {(c.type, c.index) for c in before.controllers}
    return [c for c in after.controllers if (c.type, c.index) not in known]


def describe(controller: Controller) -> str:
    """``<controller type='pci' index='3' model='pcie-root-port'/>``, as a refusal names it."""
    model = f" model='{controller.model}'" if controller.model else ""
    return f"<controller type='{controller.type}' index='{controller.index}'{model}/>"
