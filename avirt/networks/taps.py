"""A guest's tap devices: opened by avirt, plugged into their bridge, handed to QEMU as descriptors.

QEMU could open a tap itself (``-netdev tap,ifname=...``), but then QEMU would need CAP_NET_ADMIN, or a
setuid helper (qemu-bridge-helper) and its ACL file. Instead the controller, which has the privilege,
opens ``/dev/net/tun`` with ``TUNSETIFF`` (in a worker thread: an ioctl is a blocking system call),
attaches the new device to its bridge with ``ip``, and passes the descriptor down as it passes the QMP
socket (``-netdev tap,fd=N``). QEMU never touches the host's network configuration.

The taps are not persistent (no ``TUNSETPERSIST``): a tap lives while some process holds its descriptor.
Once QEMU runs, the controller closes its own copies, so the kernel deletes each tap the moment QEMU
exits, however it exits, with no clean-up step to forget or to lose in a crash. Names follow libvirt:
the definition's ``<target dev=...>``, else ``vnetN`` with N picked by the kernel (``vnet%d``).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import struct
from collections.abc import Callable
from dataclasses import dataclass

import anyio.to_thread

from avirt.config.devices import Interface
from avirt.errors import NetworkError, NetworkNotFoundError
from avirt.hosts.base import Host
from avirt.networks.plumbing import bridge_exists, links

__all__ = ["Tap", "close_taps", "find_taps", "host_mac", "open_taps"]

TUNSETIFF = 0x400454CA
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000
IFF_VNET_HDR = 0x4000  # virtio-net headers: QEMU finds the flag on the descriptor and offloads with it
TAP_TEMPLATE = "vnet%d"


@dataclass
class Tap:
    index: int  # the NIC's index among the definition's interfaces
    name: str
    fd: int


def _open(name: str) -> tuple[str, int]:
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_CLOEXEC)
    try:
        ifreq = struct.pack("16sH22x", name.encode(), IFF_TAP | IFF_NO_PI | IFF_VNET_HDR)
        answer = fcntl.ioctl(fd, TUNSETIFF, ifreq)
    except OSError:
        os.close(fd)
        raise
    return answer[:16].rstrip(b"\0").decode(), fd


async def _ip(host: Host, *args: str, what: str) -> None:
    result = await host.run(["ip", *args])
    if result.returncode != 0:
        raise NetworkError(what, result.stderr)


async def open_taps(host: Host, nics: list[Interface],
                    port_of: Callable[[str], tuple[str, int | None]]) -> list[Tap]:
    """A tap for each NIC of type network, bridge or ethernet, up and (except ethernet) on its bridge.

    ``port_of`` names an active network's bridge and MTU (raising when it is not active). On any failure
    the taps opened so far are closed (and so deleted) before the error propagates.
    """
    taps: list[Tap] = []
    try:
        for i, nic in enumerate(nics):
            if nic.type == "user":
                continue
            bridge, mtu = nic.source_bridge, None
            if nic.type == "network":
                bridge, mtu = port_of(nic.source_network or "")
            mtu = nic.mtu if nic.mtu is not None else mtu
            if nic.type == "bridge":
                assert bridge is not None
                # Asked of ip, not of /sys/class/net: sysfs shows the namespace it was mounted in.
                if not await bridge_exists(host, bridge):
                    raise NetworkNotFoundError(f"interface {i + 1}: the host has no bridge '{bridge}'")
            try:
                name, fd = await anyio.to_thread.run_sync(_open, nic.target_dev or TAP_TEMPLATE)
            except OSError as e:
                raise NetworkError(f"interface {i + 1}: cannot open a tap device "
                                   f"'{nic.target_dev or TAP_TEMPLATE}': {e.strerror}") from None
            taps.append(Tap(i, name, fd))
            if mtu is not None:
                await _ip(host, "link", "set", "dev", name, "mtu", str(mtu),
                          what=f"cannot set the MTU of tap {name}")
            if nic.mac is not None:
                # The host side gets the guest's MAC with its first byte 0xfe, as libvirt does: a bridge
                # takes the lowest MAC of its ports as its own, and a guest's must never be it.
                await _ip(host, "link", "set", "dev", name, "address", host_mac(nic.mac),
                          what=f"cannot set the MAC of tap {name}")
            if bridge is not None:
                await _ip(host, "link", "set", "dev", name, "master", bridge,
                          what=f"cannot attach tap {name} to bridge {bridge}")
            await _ip(host, "link", "set", "dev", name, "up", what=f"cannot bring tap {name} up")
    except BaseException:
        close_taps(taps)
        raise
    return taps


def host_mac(guest_mac: str) -> str:
    """The MAC of a tap's host side: the guest's, with the first byte 0xfe (see :func:`open_taps`)."""
    return "fe" + guest_mac[2:]


async def find_taps(host: Host, guest_macs: list[str]) -> dict[str, str]:
    """The taps of running guests' NICs, by the guest's MAC -> the tap's name (those that exist)."""
    wanted = {host_mac(mac): mac for mac in guest_macs}
    return {wanted[str(link.get("address"))]: str(link["ifname"]) for link in await links(host)
            if str(link.get("address")) in wanted}


def close_taps(taps: list[Tap]) -> None:
    """Close the controller's copies (a tap nobody else holds is deleted by the kernel at once)."""
    for tap in taps:
        with contextlib.suppress(OSError):
            os.close(tap.fd)
    taps.clear()
