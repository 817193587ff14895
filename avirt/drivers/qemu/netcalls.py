"""The QEMU driver's network calls: the Driver interface's ``network_*`` methods, on ``networks.Networks``.

A mix-in of :class:`~avirt.drivers.qemu.driver.QemuDriver`, kept apart so that driver.py stays about
guests. Each call is one step into the manager; networks exist on the local host only, so on an SSH host
(where the driver has no manager) every call is an :class:`~avirt.errors.UnsupportedError`.
"""

from __future__ import annotations

from typing import Any

from avirt.drivers.base import DomainRef
from avirt.errors import UnsupportedError
from avirt.hosts.base import Host
from avirt.networks.manager import Networks
from avirt.networks.model import DHCPLease

__all__ = ["NetworkCalls"]


class NetworkCalls:
    host: Host
    networks: Networks | None

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
