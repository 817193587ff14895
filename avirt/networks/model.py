"""A virtual network as plain data, and the rules a definition must keep before anything is created.

``NetworkConfig`` is what ``<network>`` XML says (``xml.py`` reads and writes it); nothing here touches
the host. The rules come in two kinds:

* :func:`check` looks at one definition alone: a bridge name the kernel accepts (15 bytes), an address
  that is a host of its own subnet, DHCP ranges and reservations inside that subnet, at most one DHCP
  server per address family (dnsmasq serves one range set per family on a bridge, and so does libvirt).
* :func:`check_against` compares a definition with the other defined networks: two networks on one bridge,
  or with overlapping subnets, would route each other's guests into the wrong place; both are refused at
  define time, as libvirt refuses them at start.

Errors are :class:`~avirt.errors.InvalidNetworkXMLError` (the definition is wrong in itself) and
:class:`~avirt.errors.NetworkConflictError` (it clashes with another).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Literal

from avirt.errors import InvalidNetworkXMLError, NetworkConflictError

__all__ = ["DHCPHost", "DHCPLease", "DHCPRange", "DNSHost", "IPConfig", "NetworkConfig", "check",
           "check_against", "default_bridge"]

#: The kernel's limit for an interface name (IFNAMSIZ minus the NUL).
IFNAME_MAX = 15
IFNAME = re.compile(r"[A-Za-z0-9_.:-]+")
ForwardMode = Literal["nat", "route", "open"]
Family = Literal["ipv4", "ipv6"]
Net = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass
class DHCPRange:
    start: str
    end: str


@dataclass
class DHCPHost:
    """A reservation: this MAC (IPv4) or this name gets this address."""

    ip: str
    mac: str | None = None
    name: str | None = None


@dataclass
class IPConfig:
    """One ``<ip>``: the bridge's address in a subnet, and the DHCP service on it."""

    address: str
    prefix: int
    family: Family = "ipv4"
    netmask: bool = False  # written as netmask= (IPv4 only) rather than prefix=, as the document had it
    family_given: bool = False
    dhcp: bool = False  # a <dhcp> element, even an empty one
    ranges: list[DHCPRange] = field(default_factory=list)
    hosts: list[DHCPHost] = field(default_factory=list)

    @property
    def network(self) -> Net:
        return ipaddress.ip_network(f"{self.address}/{self.prefix}", strict=False)

    @property
    def interface(self) -> str:
        """``address/prefix``, as ``ip address add`` takes it."""
        return f"{self.address}/{self.prefix}"


@dataclass
class DNSHost:
    ip: str
    hostnames: list[str] = field(default_factory=list)


@dataclass
class NetworkConfig:
    name: str
    uuid: str
    bridge: str | None = None
    stp: bool | None = None
    delay: int | None = None
    mac: str | None = None
    mtu: int | None = None
    forward: ForwardMode | None = None  # None: isolated (guests reach each other and the host only)
    forward_dev: str | None = None
    forward_bare: bool = False  # <forward/> without a mode: NAT, written back as the document had it
    domain: str | None = None
    dns_hosts: list[DNSHost] = field(default_factory=list)
    ips: list[IPConfig] = field(default_factory=list)

    def dhcp_ip(self, family: Family) -> IPConfig | None:
        return next((ip for ip in self.ips if ip.family == family and ip.dhcp), None)


@dataclass(frozen=True)
class DHCPLease:
    """One address dnsmasq handed out, as its lease file says (``expires``: seconds since the epoch,
    0 for a lease that never expires; ``client_id``: the client's DHCP identifier, or None)."""

    mac: str
    ip: str
    hostname: str | None
    expires: int
    client_id: str | None = None
    family: Family = "ipv4"
    prefix: int | None = None


def check(cfg: NetworkConfig) -> None:
    """The rules of one definition alone (see the module docstring)."""
    if cfg.bridge is not None:
        if len(cfg.bridge.encode()) > IFNAME_MAX:
            size = len(cfg.bridge.encode())
            raise InvalidNetworkXMLError(f"bridge name '{cfg.bridge}' is {size} bytes; the kernel allows at "
                                         f"most {IFNAME_MAX}")
        if not IFNAME.fullmatch(cfg.bridge) or cfg.bridge in (".", ".."):
            raise InvalidNetworkXMLError(f"bridge name '{cfg.bridge}' is not an interface name")
    if cfg.forward_dev is not None and cfg.forward is None:
        raise InvalidNetworkXMLError("<forward dev=...> needs a forward mode")
    for family in ("ipv4", "ipv6"):
        if sum(1 for ip in cfg.ips if ip.family == family and ip.dhcp) > 1:
            raise InvalidNetworkXMLError(f"network '{cfg.name}': at most one {family} <ip> may have <dhcp>")
    for ip in cfg.ips:
        _check_ip(cfg.name, ip)


def _check_ip(name: str, ip: IPConfig) -> None:
    net = ip.network
    address = ipaddress.ip_address(ip.address)
    if net.num_addresses > 2 and address in (net.network_address, getattr(net, "broadcast_address", None)):
        raise InvalidNetworkXMLError(f"network '{name}': {ip.address} is not a host address of {net}")
    for r in ip.ranges:
        start, end = ipaddress.ip_address(r.start), ipaddress.ip_address(r.end)
        for value in (start, end):
            if value.version != net.version or value not in net:
                raise InvalidNetworkXMLError(
                    f"network '{name}': DHCP range {r.start}-{r.end} is not inside the subnet {net}")
        if int(start) > int(end):
            raise InvalidNetworkXMLError(
                f"network '{name}': DHCP range {r.start}-{r.end} ends before it starts")
    for host in ip.hosts:
        value = ipaddress.ip_address(host.ip)
        if value.version != net.version or value not in net:
            raise InvalidNetworkXMLError(
                f"network '{name}': DHCP host {host.ip} is not inside the subnet {net}")
        if ip.family == "ipv4" and host.mac is None and host.name is None:
            raise InvalidNetworkXMLError(f"network '{name}': DHCP host {host.ip} needs a mac or a name")
        if ip.family == "ipv6" and host.mac is not None:
            raise InvalidNetworkXMLError(f"network '{name}': an IPv6 DHCP host is named by name=, not mac=")


def check_against(cfg: NetworkConfig, others: Iterable[NetworkConfig]) -> None:
    """Refuse a definition that shares a bridge or a subnet with another (not itself: same uuid)."""
    for other in others:
        if other.uuid == cfg.uuid:
            continue
        if cfg.bridge is not None and cfg.bridge == other.bridge:
            raise NetworkConflictError(f"network '{cfg.name}': bridge '{cfg.bridge}' is already network "
                                       f"'{other.name}''s")
        for mine in cfg.ips:
            for theirs in other.ips:
                a, b = mine.network, theirs.network
                if a.version == b.version and a.overlaps(b):
                    raise NetworkConflictError(f"network '{cfg.name}': subnet {a} overlaps {b} of network "
                                               f"'{other.name}'")


def default_bridge(taken: Iterable[str]) -> str:
    """The first ``avirbrN`` neither another network nor the host uses (``virbrN`` is libvirt's own)."""
    used = set(taken)
    n = 0
    while f"avirbr{n}" in used:
        n += 1
    return f"avirbr{n}"
