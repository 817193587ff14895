"""The QEMU driver's network calls: the Driver interface's ``network_*`` methods, on ``networks.Networks``.

A mix-in of :class:`~avirt.drivers.qemu.driver.QemuDriver`, kept apart so that driver.py stays about
guests. Each call is one step into the manager; networks exist on the local host only, so on an SSH host
(where the driver has no manager) every call is an :class:`~avirt.errors.UnsupportedError`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from avirt.drivers.base import DomainRef
from avirt.drivers.qemu.guest import Guest
from avirt.errors import OperationInvalidError, UnsupportedError
from avirt.hosts.base import Host
from avirt.models import InterfaceAddresses
from avirt.networks import nicinfo
from avirt.networks.manager import Networks
from avirt.networks.model import DHCPLease

__all__ = ["NetworkCalls"]


class NetworkCalls:
    host: Host
    networks: Networks | None

    if TYPE_CHECKING:
        def _find(self, name: str) -> Guest: ...

    def _networks(self) -> Networks:
        if self.networks is None:
            raise UnsupportedError(["networks"], f"host networks are local only; {self.host.name} has none")
        return self.networks

    async def define_network(self, xml: str) -> DomainRef:
        cfg = await self._networks().define(xml)
        return DomainRef(cfg.name, cfg.uuid)

    async def lookup_network(self, name_or_uuid: str) -> DomainRef:
        cfg = self._networks().find(name_or_uuid).config
        return DomainRef(cfg.name, cfg.uuid)

    async def list_networks(self) -> list[DomainRef]:
        return [DomainRef(n.config.name, n.config.uuid) for n in self._networks().nets.values()]

    async def network_start(self, name: str) -> None:
        await self._networks().start(name)

    async def network_destroy(self, name: str) -> None:
        await self._networks().destroy(name)

    async def network_undefine(self, name: str) -> None:
        await self._networks().undefine(name)

    async def network_xml(self, name: str, *, inactive: bool) -> str:
        return self._networks().xml(name, inactive=inactive)

    async def network_info(self, name: str) -> dict[str, Any]:
        net = self._networks().find(name)
        return {"active": net.live is not None, "autostart": net.autostart,
                "bridge": (net.live or net.config).bridge}

    async def network_set_autostart(self, name: str, autostart: bool) -> None:
        await self._networks().set_autostart(name, autostart)

    async def network_dhcp_leases(self, name: str) -> list[DHCPLease]:
        return await self._networks().leases(name)

    # -- what the host knows of a guest's NICs (networks/nicinfo.py) -----------------------------------------

    async def interface_addresses(self, name: str, source: str) -> list[InterfaceAddresses]:
        guest = self._find(name)
        cfg = guest.live
        if cfg is None:
            raise OperationInvalidError(f"domain '{name}' is not running")
        if self.networks is None:
            return []  # no taps on this host: no NIC has a lease or a neighbour entry avirt can name
        nets = self.networks.nets
        if source == "lease":
            wanted = {nic.source_network for nic in cfg.interfaces if nic.type == "network"}
            leases = {net: await self.networks.leases(net) for net in wanted if net in nets}
            return nicinfo.by_lease(cfg.interfaces, leases)
        bridges = {n: str(net.live.bridge) for n, net in nets.items()
                   if net.live is not None and net.live.bridge is not None}
        return nicinfo.by_neighbours(cfg.interfaces, await nicinfo.neighbours(self.host), bridges)
