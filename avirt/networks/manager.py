"""Defined networks and their lifecycle: what the QEMU driver's network calls do.

State lives in the state directory, as a guest's does, so networks outlive the controller::

    <state_dir>/networks/<name>/
      network.xml        the persistent definition
      autostart          present when the network starts with the controller (its content is ignored)
      run.json           present exactly while the network is active: {"xml": the definition it runs,
                         "dnsmasq": pid}; written (atomically, fsynced) before anything of it exists, so
                         a controller killed half-way leaves its successor what to tear down
      dnsmasq.conf, dnsmasq.pid, dnsmasq.leases, dnsmasq.hosts   its DHCP/DNS server's files

A new controller (:meth:`Networks.open`) reads the definitions and, for each ``run.json``, adopts the
running network: it makes again whatever is missing (the bridge, an address, the table: a host reboot, an
administrator's ``ip link delete``) and restarts dnsmasq if the recorded pid no longer runs it. While a
network is active a task waits on its dnsmasq's exit (a pidfd, no polling) and starts it again if it
dies: guests renewing their leases must find a server.

Networks are local only: the bridge, the taps and the descriptors handed to QEMU are this machine's. The
driver refuses network calls on an SSH host before they get here.
"""

from __future__ import annotations

import json
import logging
import os
import uuid as uuid_mod
from dataclasses import dataclass, field

import anyio

from avirt.errors import (
    AvirtError,
    NetworkConflictError,
    NetworkExistsError,
    NetworkNotFoundError,
    NetworkPermissionError,
    OperationInvalidError,
)
from avirt.events.bus import EventBus
from avirt.events.model import LifecycleType, NetworkLifecycleEvent
from avirt.hosts.base import Host
from avirt.networks import dnsmasq, plumbing
from avirt.networks.model import DHCPLease, NetworkConfig, check_against, default_bridge
from avirt.networks.taps import host_mac
from avirt.networks.xml import network_to_xml, parse_network_xml
from avirt.tasks import TaskOwner

__all__ = ["Networks", "can_admin_network"]

log = logging.getLogger(__name__)

#: CAP_NET_ADMIN's bit in /proc/self/status's CapEff (linux/capability.h).
CAP_NET_ADMIN = 12


@dataclass
class _Network:
    config: NetworkConfig  # the persistent definition
    live: NetworkConfig | None = None  # the definition it runs with, while active
    pid: int | None = None
    autostart: bool = False
    lock: anyio.Lock = field(default_factory=anyio.Lock)
    watch: anyio.CancelScope | None = None


def can_admin_network() -> bool:
    """Whether this process may make bridges, taps and rules: whether CAP_NET_ADMIN is effective (root has
    it, unless a container or a service manager took it away; a user may have been given it alone)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("CapEff:"):
                    return bool(int(line.split()[1], 16) >> CAP_NET_ADMIN & 1)
    except OSError:
        pass
    return os.geteuid() == 0


def require_admin(what: str) -> None:
    if not can_admin_network():
        raise NetworkPermissionError(
            f"{what} needs root or CAP_NET_ADMIN (bridges, taps and firewall rules are the host's); "
            "<interface type='user'> needs neither, and qemu-bridge-helper is the setuid alternative")


class Networks:
    def __init__(self, host: Host, root: str, bus: EventBus, tasks: TaskOwner) -> None:
        self.host = host
        self.root = root
        self.bus = bus
        self.tasks = tasks
        self.nets: dict[str, _Network] = {}
        # Definitions one at a time: two concurrent ones must not both pick the same free bridge name.
        self._defining = anyio.Lock()

    def _dir(self, name: str) -> str:
        return os.path.join(self.root, name)

    async def open(self) -> None:
        """Read the definitions, adopt active networks, then start the autostart ones."""
        await self.host.make_dirs(self.root, mode=0o700)
        for name in await self.host.list_dir(self.root):
            xml = await self.host.read_text(os.path.join(self._dir(name), "network.xml"))
            if name.startswith(".") or xml is None:
                continue
            net = _Network(parse_network_xml(xml))
            net.autostart = await self.host.exists(os.path.join(self._dir(name), "autostart"))
            self.nets[name] = net
            run = await self.host.read_text(os.path.join(self._dir(name), "run.json"))
            if run is not None:
                await self._adopt(net, json.loads(run))
        for net in self.nets.values():
            if net.autostart and net.live is None:
                try:
                    await self.start(net.config.name)
                except AvirtError as e:  # a connection opens all the same; the network says why it is down
                    log.error("network %s did not autostart: %s", net.config.name, e)

    # -- definitions -------------------------------------------------------------------------------------

    def find(self, name_or_uuid: str) -> _Network:
        net = self.nets.get(name_or_uuid)
        if net is None:
            try:
                wanted = str(uuid_mod.UUID(name_or_uuid))
            except ValueError:
                wanted = None
            net = next((n for n in self.nets.values() if n.config.uuid == wanted), None)
        if net is None:
            raise NetworkNotFoundError(f"no network with name or uuid '{name_or_uuid}'")
        return net

    async def define(self, xml: str) -> NetworkConfig:
        cfg = parse_network_xml(xml)
        async with self._defining:
            return await self._define(cfg)

    async def _define(self, cfg: NetworkConfig) -> NetworkConfig:
        same = self.nets.get(cfg.name)
        if same is not None and same.config.uuid != cfg.uuid:
            raise NetworkExistsError(f"network '{cfg.name}' already exists with uuid {same.config.uuid}")
        for other in self.nets.values():
            if other.config.uuid == cfg.uuid and other.config.name != cfg.name:
                raise NetworkExistsError(f"network '{other.config.name}' already has uuid {cfg.uuid}")
        others = [n.config for n in self.nets.values() if n.config.uuid != cfg.uuid]
        if cfg.bridge is None:
            kept = same.config.bridge if same is not None else None
            cfg.bridge = kept or default_bridge({o.bridge for o in others if o.bridge}
                                               | await plumbing.link_names(self.host))
        check_against(cfg, others)
        await self.host.make_dirs(self._dir(cfg.name))
        await self.host.write_atomic(os.path.join(self._dir(cfg.name), "network.xml"), network_to_xml(cfg))
        if same is None:
            self.nets[cfg.name] = _Network(cfg)
        else:
            same.config = cfg  # an active network runs on with its live definition until restarted
        self._announce(cfg, LifecycleType.DEFINED)
        return cfg

    async def undefine(self, name: str) -> None:
        net = self.find(name)
        async with net.lock:
            if net.live is not None:
                raise OperationInvalidError(f"network '{net.config.name}' is active: destroy it first")
            await self.host.remove_tree(self._dir(net.config.name))
            self.nets.pop(net.config.name, None)
        self._announce(net.config, LifecycleType.UNDEFINED)

    async def set_autostart(self, name: str, autostart: bool) -> None:
        net = self.find(name)
        path = os.path.join(self._dir(net.config.name), "autostart")
        if autostart:
            await self.host.write_atomic(path, "")
        else:
            await self.host.remove_tree(path)
        net.autostart = autostart

    # -- lifecycle ---------------------------------------------------------------------------------------

    async def start(self, name: str) -> None:
        net = self.find(name)
        async with net.lock:
            if net.live is not None:
                raise OperationInvalidError(f"network '{net.config.name}' is already active")
            require_admin(f"starting network '{net.config.name}'")
            cfg = net.config
            # The record comes first: whatever the next steps make, a successor knows it may exist.
            await self._record(cfg, None)
            with anyio.CancelScope(shield=True):  # half a network must not be left by a cancelled call
                try:
                    await plumbing.set_up(self.host, cfg)
                    pid = await dnsmasq.start(self.host, cfg, self._dir(cfg.name)) if dnsmasq.needed(cfg) \
                        else None
                except NetworkConflictError:  # refused before anything was made: the bridge is not ours
                    await self.host.remove_tree(os.path.join(self._dir(cfg.name), "run.json"))
                    raise
                except BaseException:
                    await self._tear_down(cfg, None)
                    raise
                await self._record(cfg, pid)
            net.live, net.pid = cfg, pid
            self._watch(net)
        self._announce(cfg, LifecycleType.STARTED)

    async def destroy(self, name: str) -> None:
        net = self.find(name)
        async with net.lock:
            live = net.live
            if live is None:
                raise OperationInvalidError(f"network '{net.config.name}' is not active")
            if net.watch is not None:
                net.watch.cancel()
            with anyio.CancelScope(shield=True):
                await self._tear_down(live, net.pid)
            net.live, net.pid, net.watch = None, None, None
        self._announce(live, LifecycleType.STOPPED)

    async def _tear_down(self, cfg: NetworkConfig, pid: int | None) -> None:
        await dnsmasq.stop(self.host, pid, self._dir(cfg.name))
        await plumbing.tear_down(self.host, cfg)
        await self.host.remove_tree(os.path.join(self._dir(cfg.name), "run.json"))

    async def _record(self, cfg: NetworkConfig, pid: int | None) -> None:
        await self.host.write_atomic(os.path.join(self._dir(cfg.name), "run.json"),
                                     json.dumps({"xml": network_to_xml(cfg), "dnsmasq": pid}))

    async def _adopt(self, net: _Network, run: dict[str, object]) -> None:
        """A network a previous controller started: make again what is missing, then watch it."""
        live = parse_network_xml(str(run["xml"]))
        pid = run.get("dnsmasq")
        pid = pid if isinstance(pid, int) else None
        directory = self._dir(live.name)
        try:
            await plumbing.set_up(self.host, live, adopt=True)
            if dnsmasq.needed(live) and (pid is None or not await dnsmasq.is_ours(self.host, pid, directory)):
                log.warning("network %s: its dnsmasq is gone; starting it again", live.name)
                pid = await dnsmasq.start(self.host, live, directory)
                await self._record(live, pid)
        except AvirtError as e:
            log.error("network %s: cannot restore what it lacks: %s", live.name, e)
        net.live, net.pid = live, pid
        self._watch(net)

    def _watch(self, net: _Network) -> None:
        if net.pid is not None:
            self.tasks.start_soon(self._keep_serving, net, name=f"dnsmasq-{net.config.name}")

    async def _keep_serving(self, net: _Network) -> None:
        """Wait for the network's dnsmasq to end; one that dies while its network is active is restarted."""
        with anyio.CancelScope() as scope:
            net.watch = scope
            while net.pid is not None:
                await self.host.wait_exit(net.pid)
                async with net.lock:
                    live = net.live
                    if live is None or scope.cancel_called:
                        return
                    log.warning("network %s: dnsmasq (pid %d) ended; starting it again", live.name, net.pid)
                    try:
                        net.pid = await dnsmasq.start(self.host, live, self._dir(live.name))
                    except AvirtError as e:
                        log.error("network %s: dnsmasq does not start again: %s", live.name, e)
                        net.pid = None
                    await self._record(live, net.pid)

    # -- queries -----------------------------------------------------------------------------------------

    def xml(self, name: str, *, inactive: bool = False) -> str:
        net = self.find(name)
        return network_to_xml(net.config if inactive or net.live is None else net.live)

    async def leases(self, name: str) -> list[DHCPLease]:
        net = self.find(name)
        if net.live is None:
            return []
        leases = await dnsmasq.read_leases(self.host, self._dir(net.config.name))
        prefixes = {ip.family: ip.prefix for ip in net.live.ips if ip.dhcp}
        return [DHCPLease(lease.mac, lease.ip, lease.hostname, lease.expires, lease.client_id, lease.family,
                          prefixes.get(lease.family)) for lease in leases]

    def port(self, name: str) -> tuple[str, int | None]:
        """The bridge a guest's ``<interface type='network'>`` plugs into, and the network's MTU (its taps
        get it: a bridge takes the smallest MTU of its ports); the network must be active."""
        try:
            net = self.find(name)
        except NetworkNotFoundError:
            raise NetworkNotFoundError(f"no network named '{name}' (a guest's interface names it)") from None
        if net.live is None or net.live.bridge is None:
            raise OperationInvalidError(f"network '{name}' is not active (start it first)")
        return net.live.bridge, net.live.mtu

    async def replug(self, nics: list[tuple[str, str]]) -> None:
        """Put running guests' taps (``(network, guest MAC)``) back on their network's bridge: a bridge that
        a new controller re-created (deleted behind its back, or lost with the host's network state)
        starts with no ports. A tap is found by its MAC, the guest's with the first byte 0xfe (taps.py)."""
        if not nics:
            return
        by_mac = {str(link.get("address")): link for link in await plumbing.links(self.host)}
        for network, mac in nics:
            net = self.nets.get(network)
            link = by_mac.get(host_mac(mac))
            if net is None or net.live is None or link is None or link.get("master") == net.live.bridge:
                continue
            tap, bridge = str(link["ifname"]), str(net.live.bridge)
            result = await self.host.run(["ip", "link", "set", "dev", tap, "master", bridge])
            if result.returncode != 0:
                log.error("cannot put tap %s back on bridge %s: %s", tap, bridge, result.stderr.strip())
            else:
                log.warning("tap %s (guest MAC %s) put back on bridge %s", tap, mac, bridge)

    def _announce(self, cfg: NetworkConfig, type: LifecycleType) -> None:
        self.bus.emit(NetworkLifecycleEvent, cfg.name, cfg.uuid, type=type)
