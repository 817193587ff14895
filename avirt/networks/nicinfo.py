"""What the host knows of a running guest's NICs without asking the guest: addresses and traffic counters.

A guest's NIC is a tap on the host, so two questions libvirt answers for it need no guest agent:

* **Which addresses does it have?** (virDomainInterfaceAddresses.) Two sources, as in libvirt. ``lease``:
  what the network's dnsmasq handed out to the NIC's MAC (its lease file; only for ``type='network'``,
  the one kind of NIC whose DHCP server avirt runs). ``arp``: the host's neighbour table, the addresses
  the host has seen that MAC use on the NIC's bridge (or on the tap itself for ``type='ethernet'``); it
  knows any address the guest talked from, static or leased, IPv4 or IPv6, but nothing of prefixes
  (reported as 0, as libvirt does) and only what was used recently. The table is read with
  ``ip -j neighbour show``, a subprocess, so the event loop never waits on netlink.
* **How much did it send and receive?** (virDomainInterfaceStats, the ``net.*`` statistics.) The kernel's
  counters of the tap. They are read from ``/proc/net/dev``, not ``/sys/class/net/<tap>/statistics``:
  sysfs shows the network namespace it was mounted in, while ``/proc/net`` is the reader's own, and one
  read gives every tap at once. A tap counts from the host's side: what the tap *receives* is what the
  guest *sent*. libvirt swaps the two directions for taps so that ``rx`` means the guest's reception,
  and so does :func:`guest_counters`.

Everything here is plain functions over the :class:`~avirt.hosts.base.Host`, for the drivers to call.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Iterable, Mapping

from avirt.config.devices import Interface
from avirt.hosts.base import Host
from avirt.models import InterfaceAddress, InterfaceAddresses, InterfaceStats
from avirt.networks.model import DHCPLease

__all__ = ["SOURCES", "by_lease", "by_neighbours", "guest_counters", "neighbour_dev", "neighbours",
           "tap_counters"]

#: The address sources avirt reads (libvirt's VIR_DOMAIN_INTERFACE_ADDRESSES_SRC_LEASE and _ARP).
SOURCES = ("lease", "arp")

#: /proc/net/dev's columns after the name: 8 receive counters, then 8 transmit counters.
_RX_BYTES, _RX_PACKETS, _RX_ERRS, _RX_DROP = 0, 1, 2, 3
_TX = 8


async def tap_counters(host: Host) -> dict[str, list[int]]:
    """Every interface of the host's network namespace -> its 16 counters as ``/proc/net/dev`` has them
    (the host's view: receive first)."""
    text = await host.read_text("/proc/net/dev") or ""
    found: dict[str, list[int]] = {}
    for line in text.splitlines()[2:]:  # two header lines
        name, sep, rest = line.partition(":")
        if not sep:
            continue
        try:
            found[name.strip()] = [int(v) for v in rest.split()]
        except ValueError:
            continue
    return found


def guest_counters(counters: list[int]) -> InterfaceStats:
    """A tap's host-side counters as the guest's NIC sees them: the directions swapped (see above)."""
    host_rx, host_tx = counters[:_TX], counters[_TX:2 * _TX]
    return InterfaceStats(
        rx_bytes=host_tx[_RX_BYTES], rx_packets=host_tx[_RX_PACKETS], rx_errs=host_tx[_RX_ERRS],
        rx_drop=host_tx[_RX_DROP],
        tx_bytes=host_rx[_RX_BYTES], tx_packets=host_rx[_RX_PACKETS], tx_errs=host_rx[_RX_ERRS],
        tx_drop=host_rx[_RX_DROP])


def _family(address: str) -> str:
    return "ipv6" if ipaddress.ip_address(address).version == 6 else "ipv4"


def by_lease(nics: Iterable[Interface], leases: Mapping[str, list[DHCPLease]]) -> list[InterfaceAddresses]:
    """Each NIC of type network with a tap, and the leases of its network (``leases``: network name ->
    its leases) for its MAC; NICs with no lease are left out, as libvirt leaves them out."""
    found = []
    for nic in nics:
        if nic.type != "network" or not nic.mac or not nic.target_dev:
            continue
        mac = nic.mac.lower()
        addrs = tuple(InterfaceAddress(lease.family, lease.ip, lease.prefix or 0)
                      for lease in leases.get(nic.source_network or "", []) if lease.mac.lower() == mac)
        if addrs:
            found.append(InterfaceAddresses(nic.target_dev, mac, addrs))
    return found


def neighbour_dev(nic: Interface, bridge_of: Mapping[str, str]) -> str | None:
    """Where the host meets the NIC's guest, so where its neighbour entries are: the network's bridge
    (``bridge_of``: active network -> bridge), the named bridge, or the tap itself (ethernet)."""
    if nic.type == "network":
        return bridge_of.get(nic.source_network or "")
    if nic.type == "bridge":
        return nic.source_bridge
    if nic.type == "ethernet":
        return nic.target_dev
    return None


async def neighbours(host: Host) -> list[dict[str, object]]:
    """The host's neighbour table (IPv4 and IPv6), as ``ip -j neighbour show`` describes each entry."""
    result = await host.run(["ip", "-j", "neighbour", "show"])
    try:
        entries = json.loads(result.stdout or "[]")
    except ValueError:
        return []
    return [e for e in entries if isinstance(e, dict)] if isinstance(entries, list) else []


def by_neighbours(nics: Iterable[Interface], table: list[dict[str, object]],
                  bridge_of: Mapping[str, str]) -> list[InterfaceAddresses]:
    """Each NIC with a tap and the addresses its MAC has on its bridge in the neighbour ``table``; NICs
    with none are left out. Entries that failed to resolve carry no MAC and so match nothing."""
    found = []
    for nic in nics:
        dev = neighbour_dev(nic, bridge_of)
        if not nic.mac or not nic.target_dev or dev is None:
            continue
        mac = nic.mac.lower()
        seen: dict[str, InterfaceAddress] = {}
        for entry in table:
            if entry.get("dev") != dev or str(entry.get("lladdr", "")).lower() != mac:
                continue
            addr = str(entry.get("dst", ""))
            try:
                seen.setdefault(addr, InterfaceAddress(_family(addr), addr, 0))
            except ValueError:
                continue
        if seen:
            found.append(InterfaceAddresses(nic.target_dev, mac, tuple(seen.values())))
    return found
