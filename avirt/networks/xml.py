"""libvirt network XML <-> :class:`~avirt.networks.model.NetworkConfig`.

    cfg = parse_network_xml(xml)      # uuid generated when missing; rules of model.check applied
    text = network_to_xml(cfg)        # parse_network_xml(text) == cfg

The vocabulary is the part of libvirt's network schema avirt builds: name, uuid, ``<bridge name stp
delay>``, ``<mac>``, ``<mtu>``, ``<forward mode='nat'|'route'|'open' dev>`` (or none: isolated),
``<domain name>``, ``<dns><host ip><hostname>``, and IPv4/IPv6 ``<ip>`` with ``<dhcp>`` ranges and
hosts. ``_ALLOWED`` lists, element by element, the attributes and children that are read; anything
else in the document is collected with its XPath and refused together as an
:class:`~avirt.errors.UnsupportedError`, never dropped. A broken document or a value outside libvirt's
rules is an :class:`~avirt.errors.InvalidNetworkXMLError` with the line when one is known.

Writing follows libvirt's element order, and keeps the spelling the document chose where libvirt
allows two (``netmask=`` or ``prefix=``, ``<forward/>`` or ``<forward mode='nat'/>``), so a definition
read and written back is the same document.
"""

from __future__ import annotations

import ipaddress
import re
import uuid as uuid_mod
from typing import cast

from lxml import etree

from avirt.config.schema import read_document
from avirt.errors import InvalidNetworkXMLError, UnsupportedError
from avirt.networks.model import (
    DHCPHost,
    DHCPRange,
    DNSHost,
    ForwardMode,
    IPConfig,
    NetworkConfig,
    check,
)

__all__ = ["network_to_xml", "parse_network_xml"]

_NAME = re.compile(r"[^/\s.][^/]{0,199}")
_MAC = re.compile(r"[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}")
_HOSTNAME = re.compile(r"[A-Za-z0-9]([A-Za-z0-9.-]{0,252})?")
_FORWARD_MODES = ("nat", "route", "open")

#: Element path (from <network>) -> (attributes read, children read). Everything else is unsupported.
_ALLOWED: dict[str, tuple[set[str], set[str]]] = {
    "network": (set(), {"name", "uuid", "bridge", "mac", "mtu", "forward", "domain", "dns", "ip"}),
    "name": (set(), set()), "uuid": (set(), set()),
    "bridge": ({"name", "stp", "delay"}, set()),
    "mac": ({"address"}, set()),
    "mtu": ({"size"}, set()),
    "forward": ({"mode", "dev"}, set()),
    "domain": ({"name"}, set()),
    "dns": (set(), {"host"}),
    "dns/host": ({"ip"}, {"hostname"}),
    "dns/host/hostname": (set(), set()),
    "ip": ({"address", "netmask", "prefix", "family"}, {"dhcp"}),
    "ip/dhcp": (set(), {"range", "host"}),
    "ip/dhcp/range": ({"start", "end"}, set()),
    "ip/dhcp/host": ({"mac", "ip", "name"}, set()),
}
_SINGLE = {"name", "uuid", "bridge", "mac", "mtu", "forward", "domain", "dns"}


def parse_network_xml(xml: str | bytes) -> NetworkConfig:
    """Parse and check a ``<network>`` definition (see the module docstring for the errors)."""
    root = read_document(xml, error=InvalidNetworkXMLError)
    tree = root.getroottree()
    if root.tag != "network":
        raise InvalidNetworkXMLError(f"root element must be <network>, not <{root.tag!s}>", _line(root))
    unsupported: list[str] = []
    _walk(tree, root, "network", unsupported)
    if unsupported:
        raise UnsupportedError(unsupported, "not supported by avirt's networks")
    cfg = _network(root)
    check(cfg)
    return cfg


def _walk(tree: etree._ElementTree, el: etree._Element, key: str, unsupported: list[str]) -> None:
    attrs, children = _ALLOWED[key]
    for name in el.attrib:
        if name not in attrs:
            unsupported.append(f"{tree.getpath(el)}/@{name!s}")
    if (el.text or "").strip() and key not in ("name", "uuid", "dns/host/hostname"):
        unsupported.append(f"{tree.getpath(el)}/text()")
    seen: set[str] = set()
    for child in el:
        tag = child.tag if isinstance(child.tag, str) else ""
        if tag not in children:
            unsupported.append(tree.getpath(child))
            continue
        if key == "network" and tag in _SINGLE:
            if tag in seen:
                raise InvalidNetworkXMLError(f"<{tag}> appears more than once", _line(child))
            seen.add(tag)
        _walk(tree, child, tag if key == "network" else f"{key}/{tag}", unsupported)


def _line(el: etree._Element) -> int | None:
    line = el.sourceline
    return line if isinstance(line, int) else None


def _invalid(el: etree._Element, message: str) -> InvalidNetworkXMLError:
    return InvalidNetworkXMLError(message, _line(el))


def _attr(el: etree._Element, name: str, pattern: re.Pattern[str] | None = None,
          what: str = "") -> str | None:
    value = el.get(name)
    if value is not None and pattern is not None and not pattern.fullmatch(value):
        raise _invalid(el, f"<{el.tag} {name}='{value}'> is not {what}")
    return value


def _int(el: etree._Element, name: str, low: int, high: int) -> int | None:
    value = el.get(name)
    if value is None:
        return None
    try:
        number = int(value, 10)
    except ValueError:
        number = low - 1
    if not low <= number <= high:
        raise _invalid(el, f"<{el.tag} {name}='{value}'> must be an integer from {low} to {high}")
    return number


def _address(el: etree._Element, name: str, version: int | None = None) -> str:
    value = el.get(name)
    if value is None:
        raise _invalid(el, f"<{el.tag}> needs {name}=")
    try:
        address = ipaddress.ip_address(value)
    except ValueError:
        raise _invalid(el, f"<{el.tag} {name}='{value}'> is not an IP address") from None
    if version is not None and address.version != version:
        raise _invalid(el, f"<{el.tag} {name}='{value}'> is not an IPv{version} address")
    return str(address)


def _network(root: etree._Element) -> NetworkConfig:
    name_el = root.find("name")
    name = (name_el.text or "").strip() if name_el is not None else ""
    if not _NAME.fullmatch(name):
        raise _invalid(root if name_el is None else name_el, f"network name {name!r} is missing or invalid")
    uuid_el = root.find("uuid")
    if uuid_el is None:
        uuid = str(uuid_mod.uuid4())
    else:
        try:
            uuid = str(uuid_mod.UUID((uuid_el.text or "").strip()))
        except ValueError:
            raise _invalid(uuid_el, f"{uuid_el.text!r} is not a UUID") from None
    cfg = NetworkConfig(name=name, uuid=uuid)
    bridge = root.find("bridge")
    if bridge is not None:
        cfg.bridge = bridge.get("name")
        stp = _attr(bridge, "stp", re.compile("on|off"), "'on' or 'off'")
        cfg.stp = None if stp is None else stp == "on"
        cfg.delay = _int(bridge, "delay", 0, 3000)
    mac = root.find("mac")
    if mac is not None:
        cfg.mac = (_attr(mac, "address", _MAC, "a MAC address") or "").lower() or None
    mtu = root.find("mtu")
    if mtu is not None:
        cfg.mtu = _int(mtu, "size", 68, 65535)
    forward = root.find("forward")
    if forward is not None:
        mode = forward.get("mode")
        if mode is None:
            cfg.forward, cfg.forward_bare = "nat", True
        elif mode in _FORWARD_MODES:
            cfg.forward = cast(ForwardMode, mode)
        else:
            raise UnsupportedError([f"/network/forward/@mode='{mode}'"], "not supported by avirt's networks")
        cfg.forward_dev = _attr(forward, "dev", re.compile(r"[A-Za-z0-9_.:-]{1,15}"), "an interface name")
    domain = root.find("domain")
    if domain is not None:
        cfg.domain = _attr(domain, "name", _HOSTNAME, "a domain name")
    for host in root.iterfind("dns/host"):
        names = [(h.text or "").strip() for h in host.iterfind("hostname")]
        for hostname in names:
            if not _HOSTNAME.fullmatch(hostname):
                raise _invalid(host, f"{hostname!r} is not a host name")
        cfg.dns_hosts.append(DNSHost(_address(host, "ip"), names))
    cfg.ips = [_ip(ip) for ip in root.iterfind("ip")]
    return cfg


def _ip(el: etree._Element) -> IPConfig:
    family = el.get("family")
    if family not in (None, "ipv4", "ipv6"):
        raise _invalid(el, f"<ip family='{family}'> must be ipv4 or ipv6")
    version = {None: None, "ipv4": 4, "ipv6": 6}[family]
    address = _address(el, "address", version)
    version = ipaddress.ip_address(address).version
    netmask = el.get("netmask")
    if netmask is not None and el.get("prefix") is not None:
        raise _invalid(el, "<ip> takes netmask= or prefix=, not both")
    if netmask is not None:
        if version == 6:
            raise _invalid(el, "an IPv6 <ip> takes prefix=, not netmask=")
        try:
            prefix = ipaddress.ip_network(f"0.0.0.0/{netmask}").prefixlen
        except ValueError:
            raise _invalid(el, f"netmask '{netmask}' is not a contiguous IPv4 mask") from None
    else:
        given = _int(el, "prefix", 0, 32 if version == 4 else 128)
        if given is None:
            raise _invalid(el, f"<ip address='{address}'> needs netmask= or prefix=")
        prefix = given
    ip = IPConfig(address=address, prefix=prefix, family="ipv4" if version == 4 else "ipv6",
                  netmask=netmask is not None, family_given=family is not None)
    dhcp = el.find("dhcp")
    if dhcp is not None:
        ip.dhcp = True
        for r in dhcp.iterfind("range"):
            ip.ranges.append(DHCPRange(_address(r, "start", version), _address(r, "end", version)))
        for h in dhcp.iterfind("host"):
            mac = _attr(h, "mac", _MAC, "a MAC address")
            name = _attr(h, "name", _HOSTNAME, "a host name")
            ip.hosts.append(DHCPHost(_address(h, "ip", version), mac.lower() if mac else None, name))
    return ip


def network_to_xml(cfg: NetworkConfig) -> str:
    """The definition as libvirt network XML (indented, libvirt's element order)."""
    root = etree.Element("network")
    etree.SubElement(root, "name").text = cfg.name
    etree.SubElement(root, "uuid").text = cfg.uuid
    if cfg.forward is not None:
        forward = etree.SubElement(root, "forward")
        if not cfg.forward_bare:
            forward.set("mode", cfg.forward)
        if cfg.forward_dev is not None:
            forward.set("dev", cfg.forward_dev)
    if cfg.bridge is not None or cfg.stp is not None or cfg.delay is not None:
        bridge = etree.SubElement(root, "bridge")
        _set(bridge, name=cfg.bridge, stp=None if cfg.stp is None else "on" if cfg.stp else "off",
             delay=cfg.delay)
    if cfg.mac is not None:
        etree.SubElement(root, "mac", address=cfg.mac)
    if cfg.mtu is not None:
        etree.SubElement(root, "mtu", size=str(cfg.mtu))
    if cfg.domain is not None:
        etree.SubElement(root, "domain", name=cfg.domain)
    if cfg.dns_hosts:
        dns = etree.SubElement(root, "dns")
        for host in cfg.dns_hosts:
            entry = etree.SubElement(dns, "host", ip=host.ip)
            for hostname in host.hostnames:
                etree.SubElement(entry, "hostname").text = hostname
    for ip in cfg.ips:
        el = etree.SubElement(root, "ip")
        if ip.family_given:
            el.set("family", ip.family)
        el.set("address", ip.address)
        if ip.netmask:
            el.set("netmask", str(ipaddress.ip_network(f"0.0.0.0/{ip.prefix}").netmask))
        else:
            el.set("prefix", str(ip.prefix))
        if ip.dhcp:
            dhcp = etree.SubElement(el, "dhcp")
            for r in ip.ranges:
                etree.SubElement(dhcp, "range", start=r.start, end=r.end)
            for h in ip.hosts:
                _set(etree.SubElement(dhcp, "host"), mac=h.mac, name=h.name, ip=h.ip)
    etree.indent(root, space="  ")
    return etree.tostring(root, encoding="unicode") + "\n"


def _set(el: etree._Element, **attrs: object) -> None:
    for key, value in attrs.items():
        if value is not None:
            el.set(key, str(value))
