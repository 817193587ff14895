"""Device XML against a definition: what ``attach_device`` and ``detach_device`` change, as pure functions.

A ``<disk>`` to attach is judged as part of the definition it joins, not alone: it is put into the
definition's ``<devices>`` and the whole document is parsed again, so every rule the parser has between
elements (one disk per target, a bus the machine has, iothreads that exist) applies to the newcomer as
it would at define time. The guest ABI is then filled in the same way (``qemu/abi.py``'s
:func:`~avirt.drivers.qemu.abi.stabilise`): the new disk gets its drive or PCI address, and any
controller it needs is added. A running QEMU cannot take new controllers (a PCIe root port cannot be
hotplugged), so a live attach that would need one is refused, naming it; the persistent definition
takes it, for the next start.

An ``<interface>`` is judged the same way (its PCI address filled in; a NIC without a ``<mac>`` gets one
first, the same for the live and the persistent definition); one to detach is found by its MAC, else
by its tap's name. A disk to detach is found by its target (``<target dev='vdb'/>``), or by its source
when the XML gives no target, as libvirt finds it. Both drivers use these functions, so they agree on
what is accepted.
"""

from __future__ import annotations

import copy
import os
import secrets
from collections.abc import Callable
from typing import TypeVar

from lxml import etree

from avirt.config import domain_to_xml, parse_domain_xml
from avirt.config.devices import Controller, Disk, Interface
from avirt.config.model import DomainConfig
from avirt.config.schema import read_document
from avirt.drivers.base import DomainRecord
from avirt.drivers.qemu.abi import stabilise
from avirt.errors import InvalidXMLError, OperationInvalidError, UnsupportedError

D = TypeVar("D", Disk, Interface)

__all__ = ["describe", "device_element", "device_kind", "find_disk", "find_interface", "new_controllers",
           "with_disk", "with_interface", "with_mac", "without_disk", "without_interface"]


def device_kind(xml: str) -> str:
    """The kind of the one device of ``xml``: ``disk`` or ``interface`` (the kinds avirt plugs in)."""
    return str(_element(xml).tag)


def device_element(xml: str, kind: str = "disk") -> etree._Element:
    """The one ``<disk>`` (or ``kind``) element of ``xml``."""
    element = _element(xml)
    if element.tag != kind:
        raise InvalidXMLError(f"expected a <{kind}> element, not <{element.tag}>")
    return element


def _element(xml: str) -> etree._Element:
    """The one device element of ``xml``; device kinds other than disks and NICs are not hotpluggable."""
    element = read_document(xml, what="device XML")  # as a definition is read
    if not isinstance(element.tag, str) or element.tag not in ("disk", "interface"):
        raise UnsupportedError([f"/{element.tag}"],
                               "avirt attaches and detaches <disk> and <interface> devices only, not")
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
    added = _joined(cfg, element, machines)
    disk = added.disk(dev)
    assert disk is not None
    return added, disk


def _joined(cfg: DomainConfig, element: etree._Element, machines: dict[str, str]) -> DomainConfig:
    """``cfg`` with device ``element`` appended, judged as a whole document is at define time (parsed
    again, its ABI filled in), the NICs' tap names kept."""
    root = etree.fromstring(domain_to_xml(cfg).encode())
    devices = root.find("devices")
    if devices is None:
        devices = etree.SubElement(root, "devices")
    devices.append(element)
    return _keep_taps(cfg, stabilise(parse_domain_xml(etree.tostring(root)), machines))


def _keep_taps(before: DomainConfig, after: DomainConfig) -> DomainConfig:
    """``after`` (``before`` parsed again, plus a device) with the tap names of ``before``'s NICs: the
    parser drops generated names (``vnetN``, as libvirt does with input XML), the live definition must
    not."""
    for old, new in zip(before.interfaces, after.interfaces, strict=False):
        new.target_dev = old.target_dev
    return after


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


def with_mac(xml: str) -> str:
    """The ``<interface>`` of ``xml`` with a ``<mac>``: its own, else a new one (as define gives one), so
    that the live and the persistent definitions get the same NIC."""
    element = device_element(xml, "interface")
    if element.find("mac") is None:
        mac = etree.SubElement(element, "mac")
        mac.set("address", "52:54:00:" + ":".join(f"{b:02x}" for b in secrets.token_bytes(3)))
    return etree.tostring(element, encoding="unicode")


def with_interface(cfg: DomainConfig, xml: str, machines: dict[str, str]) -> tuple[DomainConfig, Interface]:
    """A new definition: ``cfg`` with the ``<interface>`` of ``xml`` added last, its PCI address filled
    in (``cfg`` is not changed), and that NIC. A MAC another NIC of ``cfg`` has is refused."""
    element = device_element(with_mac(xml), "interface")
    mac = str(element.find("mac").get("address", "")).lower()  # type: ignore[union-attr]
    if any((nic.mac or "").lower() == mac for nic in cfg.interfaces):
        raise OperationInvalidError(f"domain '{cfg.name}' already has an interface with MAC {mac}")
    added = _joined(cfg, element, machines)
    nic = next(n for n in added.interfaces if (n.mac or "").lower() == mac)
    return added, nic


def find_interface(cfg: DomainConfig, xml: str) -> int:
    """The index in ``cfg`` of the NIC the ``<interface>`` of ``xml`` names: by MAC, else by its tap
    (``<target dev>``), as libvirt finds it."""
    element = device_element(xml, "interface")
    mac_el, target_el = element.find("mac"), element.find("target")
    mac = (mac_el.get("address") or "").lower() if mac_el is not None else ""
    dev = (target_el.get("dev") or "") if target_el is not None else ""
    if not mac and not dev:
        raise InvalidXMLError("the interface to detach has neither <mac address='...'/> nor "
                              "<target dev='...'/>")
    found = [i for i, nic in enumerate(cfg.interfaces)
             if (mac and (nic.mac or "").lower() == mac) or (not mac and nic.target_dev == dev)]
    if len(found) != 1:
        what = f"MAC {mac}" if mac else f"device {dev}"
        raise OperationInvalidError(f"domain '{cfg.name}' has {'no' if not found else 'more than one'} "
                                    f"interface with {what}")
    return found[0]


def without_interface(cfg: DomainConfig, index: int) -> DomainConfig:
    """A new definition: ``cfg`` without its ``index``-th NIC."""
    changed = copy.deepcopy(cfg)
    del changed.interfaces[index]
    return changed


def judge_attach(record: DomainRecord, xml: str, machines: dict[str, str], *, live: bool, config: bool,
                 add: Callable[[DomainConfig, str, dict[str, str]], tuple[DomainConfig, D]],
                 check: Callable[[str, D, list[Controller]], None],
                 ) -> tuple[DomainConfig | None, DomainConfig | None, D]:
    """An attach judged before anything changes: the new live definition (None: the running domain is
    not to change), the new persistent one (None likewise), and the device as it joins them (the live
    one's, when both). ``add`` puts the device into a definition (:func:`with_disk`,
    :func:`with_interface`); ``check`` refuses one a running domain cannot be given, with the controllers
    it would need."""
    to_live, to_config = record.affected(live=live, config=config)
    new_live = new_definition = None
    device: D | None = None
    if to_live:
        assert record.live is not None
        new_live, device = add(record.live, xml, machines)
        check(record.name, device, new_controllers(record.live, new_live))
    if to_config:
        assert record.definition is not None
        new_definition, kept = add(record.definition, xml, machines)
        device = kept if device is None else device
    assert device is not None  # affected() refuses a change of neither
    return new_live, new_definition, device


def new_controllers(before: DomainConfig, after: DomainConfig) -> list[Controller]:
    """The controllers ``after`` has and ``before`` has not (by type and index)."""
    known = {(c.type, c.index) for c in before.controllers}
    return [c for c in after.controllers if (c.type, c.index) not in known]


def describe(controller: Controller) -> str:
    """``<controller type='pci' index='3' model='pcie-root-port'/>``, as a refusal names it."""
    model = f" model='{controller.model}'" if controller.model else ""
    return f"<controller type='{controller.type}' index='{controller.index}'{model}/>"
