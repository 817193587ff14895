"""The :class:`Network` handle: a virtual network's name and UUID bound to a connection.

Like a :class:`~avirt.domain.Domain` it holds no state of its own: every call asks the driver, so two
handles of one network always agree. What a network is and does is described in docs/networks.md; the
host side lives in :mod:`avirt.networks`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from avirt.networks.model import DHCPLease

if TYPE_CHECKING:
    from avirt.drivers.base import Driver

__all__ = ["DHCPLease", "Network"]


class Network:
    def __init__(self, driver: Driver, name: str, uuid: str) -> None:
        self._driver = driver
        self.name = name
        self.uuid = uuid

    def __repr__(self) -> str:
        return f"<Network {self.name} {self.uuid}>"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Network) and other._driver is self._driver and other.uuid == self.uuid

    def __hash__(self) -> int:
        return hash(self.uuid)

    async def start(self) -> None:
        """Make the network real: its bridge, addresses, firewall table and dnsmasq (needs root or
        CAP_NET_ADMIN: :class:`~avirt.errors.NetworkPermissionError` otherwise)."""
        await self._driver.network_start(self.name)

    async def destroy(self) -> None:
        """Remove what :meth:`start` made (and nothing else); the definition stays."""
        await self._driver.network_destroy(self.name)

    async def undefine(self) -> None:
        """Forget the definition; an active network must be destroyed first."""
        await self._driver.network_undefine(self.name)

    async def xml(self, *, inactive: bool = False) -> str:
        """The definition as libvirt network XML: the one it runs with while active, unless ``inactive``."""
        return await self._driver.network_xml(self.name, inactive=inactive)

    async def is_active(self) -> bool:
        return bool((await self._driver.network_info(self.name))["active"])

    async def bridge(self) -> str | None:
        """The name of the network's bridge on the host."""
        bridge = (await self._driver.network_info(self.name))["bridge"]
        return None if bridge is None else str(bridge)

    async def autostart(self) -> bool:
        """Whether the network starts whenever a controller opens its state directory."""
        return bool((await self._driver.network_info(self.name))["autostart"])

    async def set_autostart(self, autostart: bool) -> None:
        await self._driver.network_set_autostart(self.name, autostart)

    async def dhcp_leases(self) -> list[DHCPLease]:
        """The leases the network's dnsmasq has handed out (its lease file), IPv4 and IPv6."""
        return await self._driver.network_dhcp_leases(self.name)
