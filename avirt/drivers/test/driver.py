"""The test driver's entry points: definitions, lifecycle and queries, all in memory.

A domain here is a :class:`SimDomain`: its definitions and a state. Each call checks the state with the
table both drivers share (``drivers/base.py``'s ``ALLOWED``, same error and message) and then moves
the state at once, announcing each change through :func:`~avirt.events.translate.lifecycle_for`, the table
the QEMU driver announces with, so the lifecycle events are the same, in the same order.

What a guest OS would do takes a moment, as it does on QEMU: ``shutdown()`` and ``reboot()`` press the
power button and return; the simulated guest reacts in a task of its own (SHUTDOWN/guest, then
SHUTOFF/shutdown, or the domain's ``on_poweroff`` action, or for a reboot a reset and a new boot). As on
QEMU, a guest without ``<features><acpi/>`` never sees the button, and a paused guest acts on it only once
resumed. A guest never powers off, panics or fails by itself.

Block jobs and disk snapshots are in :mod:`avirt.drivers.test.disks`.
"""

from __future__ import annotations

import copy
import itertools
from dataclasses import dataclass, field
from typing import Any

import anyio

from avirt.config import domain_to_xml, parse_domain_xml
from avirt.config.metadata import find as find_metadata
from avirt.config.metadata import replace as replace_metadata
from avirt.config.model import DomainConfig
from avirt.drivers.base import (
    DomainRecord,
    DomainRef,
    Driver,
    Records,
    assign_macs,
    check_memory,
    find_record,
    wait_shut_off,
)
from avirt.drivers.devices import (
    device_kind,
    find_disk,
    find_interface,
    judge_attach,
    with_disk,
    with_interface,
    with_mac,
    without_disk,
    without_interface,
)
from avirt.drivers.qemu.abi import MACHINE_ALIASES, stabilise
from avirt.drivers.qemu.agentcalls import AGENT_CHANNEL, agent_channel
from avirt.drivers.qemu.blockjobs import resolve_index
from avirt.drivers.qemu.hotplug import check_pluggable, check_unpluggable
from avirt.drivers.qemu.nichotplug import check_nic_pluggable
from avirt.drivers.qemu.vcpus import with_vcpus
from avirt.drivers.test import default
from avirt.drivers.test.agent import SimAgent
from avirt.drivers.test.disks import Disks
from avirt.drivers.test.stats import domain_stats, nic_name
from avirt.errors import (
    AgentUnavailableError,
    DomainExistsError,
    OperationInvalidError,
    UnsupportedError,
)
from avirt.events.bus import EventBus
from avirt.events.model import (
    AgentLifecycleEvent,
    AgentReason,
    AgentState,
    BalloonChangeEvent,
    DeviceRemovedEvent,
    LifecycleEvent,
    LifecycleType,
    MetadataChangeEvent,
    RebootEvent,
    TrayChangeEvent,
)
from avirt.events.translate import lifecycle_for
from avirt.jobs import BlockJob
from avirt.models import DomainInfo, DomainState, ImageInfo, InterfaceAddress, InterfaceAddresses
from avirt.tasks import TaskOwner

S = DomainState


@dataclass
class SimDomain(DomainRecord):
    id: int | None = None
    started_at: float = 0.0
    #: Set once the current run has ended.
    stopped: anyio.Event = field(default_factory=anyio.Event)
    #: Counts runs: a guest's reaction scheduled in one run never touches the next.
    run: int = 0
    #: The power button was pressed while paused: the guest acts on it once it runs.
    button_pressed: bool = False
    reboot_pending: bool = False
    #: Write thresholds set on the running domain's disks: target -> bytes (none: 0).
    thresholds: dict[str, int] = field(default_factory=dict)
    #: The guest agent of the current run (made at its first call).
    agent: SimAgent | None = None
    #: Whether the simulated agent has its port open (None while a run starts: nothing announced yet).
    agent_connected: bool | None = False



class TestDriver(Driver):
    __test__ = False  # not a test class, whatever pytest thinks of the name

    def __init__(self, uri: str) -> None:
        self.uri = uri
        self._domains: Records[SimDomain] = Records()
        self.tasks = TaskOwner()
        self.bus = EventBus(self.tasks)
        self.disks = Disks(self)
        self._ids = itertools.count(1)
        self._taps = itertools.count(0)
        self._announcing = True

    # -- connection --------------------------------------------------------------------------------------

    async def open(self) -> None:
        await self.tasks.open()
        self._announcing = False  # the world a connection starts with is no news
        try:
            await self.define_xml(default.XML)
            default.fill_images(self.disks.images)
            await self.start(default.NAME, paused=False)
        finally:
            self._announcing = True

    async def close(self) -> None:
        self.bus.close()
        await self.tasks.aclose()

    async def capabilities(self) -> dict[str, Any]:
        await anyio.lowlevel.checkpoint()
        # Every domain type "runs" here, KVM included: nothing is emulated.
        return {"emulator": "test", "qemu_version": "", "kvm": True, "accelerators": ["kvm", "tcg"],
                "domain_types": {"kvm": "kvm", "qemu": "tcg"}}

    # -- definitions -------------------------------------------------------------------------------------

    async def define_xml(self, xml: str) -> DomainRef:
        await anyio.lowlevel.checkpoint()
        cfg = stabilise(assign_macs(parse_domain_xml(xml)), MACHINE_ALIASES)
        dom = self._domains.get(cfg.name)
        self._check_uuid_free(cfg, dom)
        if dom is not None and dom.uuid != cfg.uuid:
            raise DomainExistsError(f"domain '{cfg.name}' already exists with uuid {dom.uuid}")
        self.disks.seed(cfg, xml)
        detail = "updated" if dom is not None and dom.persistent else "added"
        if dom is None:
            dom = self._domains[cfg.name] = SimDomain(cfg.name, cfg.uuid, None)
        dom.definition = cfg
        self._announce(dom, LifecycleType.DEFINED, detail)
        return DomainRef(dom.name, dom.uuid)

    async def create_xml(self, xml: str, *, paused: bool) -> DomainRef:
        await anyio.lowlevel.checkpoint()
        cfg = stabilise(assign_macs(parse_domain_xml(xml)), MACHINE_ALIASES)
        if cfg.name in self._domains:
            raise DomainExistsError(f"domain '{cfg.name}' already exists")
        self._check_uuid_free(cfg, None)
        self.disks.seed(cfg, xml)
        dom = self._domains[cfg.name] = SimDomain(cfg.name, cfg.uuid, None)
        try:
            self._start(dom, cfg, paused=paused)
        except BaseException:
            del self._domains[cfg.name]
            raise
        return DomainRef(dom.name, dom.uuid)

    def _check_uuid_free(self, cfg: DomainConfig, same: SimDomain | None) -> None:
        other = self._domains.by_uuid(cfg.uuid)
        if other is not None and other is not same:
            raise DomainExistsError(f"domain '{other.name}' already has uuid {cfg.uuid}")

    async def lookup(self, name_or_uuid: str) -> DomainRef:
        dom = await self.find(name_or_uuid)
        return DomainRef(dom.name, dom.uuid)

    async def list_domains(self) -> list[DomainRef]:
        await anyio.lowlevel.checkpoint()
        return [DomainRef(d.name, d.uuid) for d in sorted(self._domains.values(), key=lambda d: d.name)]

    async def undefine(self, name: str) -> None:
        dom = await self.find(name)
        if not dom.persistent:
            raise OperationInvalidError(f"cannot undefine transient domain '{name}'")
        dom.definition = None
        self._announce(dom, LifecycleType.UNDEFINED, "removed")
        if not dom.active:
            del self._domains[name]

    async def find(self, name_or_uuid: str) -> SimDomain:
        """The domain by name or UUID (any spelling); a checkpoint first, as every driver call has one."""
        await anyio.lowlevel.checkpoint()
        return find_record(self._domains, name_or_uuid)

    def domains(self) -> list[SimDomain]:
        return list(self._domains.values())

    # -- lifecycle ---------------------------------------------------------------------------------------

    async def start(self, name: str, *, paused: bool) -> None:
        dom = await self.find(name)
        dom.require("start")
        busy = self.disks.offline_jobs_of(name)
        if busy:
            raise OperationInvalidError(
                f"cannot start domain '{name}': an offline block job runs on {', '.join(busy)}")
        assert dom.definition is not None  # a shut-off domain that exists is persistent
        self._start(dom, dom.definition, paused=paused)

    def _start(self, dom: SimDomain, cfg: DomainConfig, *, paused: bool) -> None:
        self.disks.check_startable(cfg)
        dom.live, dom.id, dom.started_at = copy.deepcopy(cfg), next(self._ids), anyio.current_time()
        for nic in dom.live.interfaces:  # every simulated NIC has a tap, named as the kernel names them
            nic.target_dev = nic.target_dev or f"vnet{next(self._taps)}"
        dom.run += 1
        dom.stopped = anyio.Event()
        dom.button_pressed = dom.reboot_pending = False
        dom.thresholds = {}
        dom.agent_connected = None
        if paused:
            dom.state, dom.reason = S.PAUSED, "user"
            self._announce(dom, LifecycleType.STARTED, "booted")
            self._announce(dom, LifecycleType.SUSPENDED, "paused")
        else:
            self._set_state(dom, S.RUNNING, "booted")
        self._agent_lifecycle(dom)

    async def shutdown(self, name: str, *, wait: float | None) -> None:
        dom = await self.find(name)
        dom.require("shutdown")
        stopped = dom.stopped
        self._press_power_button(dom)
        if wait is not None:
            await wait_shut_off(name, stopped, wait)

    async def destroy(self, name: str) -> None:
        dom = await self.find(name)
        dom.require("destroy")
        self._stop(dom, "destroyed")

    async def reboot(self, name: str) -> None:
        dom = await self.find(name)
        dom.require("reboot")
        dom.reboot_pending = True
        self._press_power_button(dom)

    async def reset(self, name: str) -> None:
        dom = await self.find(name)
        dom.require("reset")
        self.bus.emit(RebootEvent, dom.name, dom.uuid)

    async def suspend(self, name: str) -> None:
        dom = await self.find(name)
        dom.require("suspend")
        self._set_state(dom, S.PAUSED, "user")

    async def resume(self, name: str) -> None:
        dom = await self.find(name)
        dom.require("resume")
        self._set_state(dom, S.RUNNING, "unpaused")
        if dom.button_pressed:
            dom.button_pressed = False
            self._guest_reacts(dom)

    async def qemu_monitor_command(self, name: str, command: str,
                                   arguments: dict[str, Any] | None) -> Any:
        dom = await self.find(name)
        if not dom.active:
            raise OperationInvalidError(f"domain '{name}' is not running")
        raise UnsupportedError([command], "test:///default has no QEMU monitor to send a command to")

    def _press_power_button(self, dom: SimDomain) -> None:
        if not dom.config.features.acpi:
            return  # no ACPI: the guest never learns of the button (on QEMU too)
        if dom.state is S.PAUSED:
            dom.button_pressed = True
        else:
            self._guest_reacts(dom)

    def _guest_reacts(self, dom: SimDomain) -> None:
        self.tasks.start_soon(self._guest_powers_off, dom, dom.run, name=f"power-off-{dom.name}")

    async def _guest_powers_off(self, dom: SimDomain, run: int) -> None:
        """The simulated guest answers the power button: it shuts down, then the domain's settings (or a
        reboot that was asked for) say what follows, as the QEMU driver's state machine decides."""
        await anyio.lowlevel.checkpoint()  # the caller's call returns first, as with a real guest
        if dom.run != run or dom.state is not S.RUNNING:
            return
        self._set_state(dom, S.SHUTDOWN, "guest")
        action = dom.config.on_poweroff
        if dom.reboot_pending or action == "restart":
            dom.reboot_pending = False
            self.bus.emit(RebootEvent, dom.name, dom.uuid)  # reset, then the guest boots again
            self._set_state(dom, S.RUNNING, "booted")
        elif action == "destroy":
            self._stop(dom, "shutdown")
        # preserve: the domain stays in SHUTDOWN until destroy()

    def _stop(self, dom: SimDomain, reason: str) -> None:
        self.disks.domain_stopped(dom)
        self._set_state(dom, S.SHUTOFF, reason)
        dom.live, dom.id = None, None
        dom.stopped.set()
        if not dom.persistent:
            self._domains.pop(dom.name, None)

    def _set_state(self, dom: SimDomain, state: DomainState, reason: str) -> None:
        changed = (state, reason) != (dom.state, dom.reason)
        dom.state, dom.reason = state, reason
        event = lifecycle_for(state, reason)
        if changed and event is not None:
            self._announce(dom, *event)
        if dom.agent_connected is not None:
            self._agent_lifecycle(dom)

    def _agent_lifecycle(self, dom: SimDomain) -> None:
        """The simulated agent's port, as QEMU's driver reports a real one: closed when a run starts
        (DISCONNECTED, reason DOMAIN_STARTED), opened as soon as the guest runs, closed when it stops."""
        if agent_channel(dom.config) is None or not self._announcing:
            return
        if dom.agent_connected is None:
            dom.agent_connected = False
            self.bus.emit(AgentLifecycleEvent, dom.name, dom.uuid, state=AgentState.DISCONNECTED,
                          reason=AgentReason.DOMAIN_STARTED)
        opens = dom.state is S.RUNNING and not dom.agent_connected
        closes = dom.state is S.SHUTOFF and dom.agent_connected
        if opens or closes:  # (a pause leaves the port as it was)
            dom.agent_connected = opens
            self.bus.emit(AgentLifecycleEvent, dom.name, dom.uuid,
                          state=AgentState.CONNECTED if dom.agent_connected else AgentState.DISCONNECTED,
                          reason=AgentReason.CHANNEL)

    def _announce(self, dom: SimDomain, type: LifecycleType, detail: str) -> None:
        if self._announcing:
            self.bus.emit(LifecycleEvent, dom.name, dom.uuid, type=type, detail=detail)

    # -- block jobs (see disks.py) -----------------------------------------------------------------------

    async def block_commit(self, name: str, disk: str, *, base: str | None, top: str | None,
                           shallow: bool, delete: bool, relative: bool, bandwidth: int | None,
                           pivot: bool, allow_shared_base: bool = False) -> BlockJob:
        return self.disks.commit(await self.find(name), disk, base=base, top=top, shallow=shallow,
                                 delete=delete, bandwidth=bandwidth, pivot=pivot,
                                 allow_shared_base=allow_shared_base)

    async def block_pull(self, name: str, disk: str, *, base: str | None,
                         bandwidth: int | None) -> BlockJob:
        return self.disks.pull(await self.find(name), disk, base=base, bandwidth=bandwidth)

    async def block_copy(self, name: str, disk: str, dest: str, *, format: str, shallow: bool,
                         reuse_external: bool, bandwidth: int | None, pivot: bool) -> BlockJob:
        return self.disks.copy(await self.find(name), disk, dest, format=format, shallow=shallow,
                               reuse_external=reuse_external, bandwidth=bandwidth, pivot=pivot)

    async def block_job(self, name: str, disk: str) -> BlockJob | None:
        return self.disks.job(await self.find(name), disk)

    async def block_chain(self, name: str, disk: str) -> list[ImageInfo]:
        return [image.info() for image in self.disks.chain(await self.find(name), disk)]

    async def snapshot_disks(self, name: str, snapshot: str, disks: list[str] | None,
                             quiesce: bool = False) -> dict[str, str]:
        dom = await self.find(name)
        if not quiesce:
            return self.disks.snapshot(dom, snapshot, disks)
        if not dom.active:
            raise OperationInvalidError(f"domain '{name}' is not running: a quiesced snapshot "
                                        "freezes a running guest's filesystems")
        agent = self._agent(dom)
        agent.execute("guest-fsfreeze-freeze", None)
        try:
            return self.disks.snapshot(dom, snapshot, disks)
        finally:
            agent.execute("guest-fsfreeze-thaw", None)

    # -- the guest agent (agent.py: made-up answers of qemu-ga's shape) -------------------------------------

    def _agent(self, dom: SimDomain) -> SimAgent:
        if dom.state is not S.RUNNING:
            raise OperationInvalidError(f"domain '{dom.name}' is {dom.state.value}: its guest agent "
                                        "answers only while it runs")
        if agent_channel(dom.config) is None:
            raise AgentUnavailableError(f"domain '{dom.name}' has no guest agent channel (<channel "
                                        f"type='unix'><target type='virtio' name='{AGENT_CHANNEL}'/>)")
        if dom.agent is None or dom.agent.config is not dom.config:
            dom.agent = SimAgent(dom.name, dom.config)
        return dom.agent

    async def agent_command(self, name: str, command: str, arguments: dict[str, Any] | None,
                            timeout: float) -> Any:
        await anyio.lowlevel.checkpoint()
        return self._agent(await self.find(name)).execute(command, arguments)

    async def agent_shutdown(self, name: str, mode: str, timeout: float) -> None:
        dom = await self.find(name)
        agent = self._agent(dom)
        if agent.frozen:  # refused while frozen, in qemu-ga's words
            agent.execute("guest-shutdown", None)
        if mode == "reboot":
            dom.agent = None
            self.bus.emit(RebootEvent, dom.name, dom.uuid)
        else:
            self._stop(dom, "shutdown")

    # -- devices: the QEMU driver's rules (drivers/devices.py, qemu/hotplug.py), applied at once ----------

    async def attach_device(self, name: str, xml: str, *, live: bool, config: bool) -> None:
        dom = await self.find(name)
        if device_kind(xml) == "interface":
            await self._attach_interface(dom, xml, live=live, config=config)
            return
        new_live, new_definition, disk = judge_attach(dom, xml, MACHINE_ALIASES, live=live, config=config,
                                                      add=with_disk, check=check_pluggable)
        if disk.source is not None:  # as define does: a named image exists (see images.py)
            self.disks.images.ensure(disk.source, disk.format, [])
        dom.live = new_live or dom.live
        dom.definition = new_definition or dom.definition

    async def detach_device(self, name: str, xml: str, *, live: bool, config: bool, timeout: float) -> None:
        dom = await self.find(name)
        if device_kind(xml) == "interface":
            await self._detach_interface(dom, xml, live=live, config=config)
            return
        to_live, to_config = dom.affected(live=live, config=config)
        if to_live:
            assert dom.live is not None
            disk = find_disk(dom.live, xml)
            check_unpluggable(dom.name, disk)
            if self.disks.job(dom, disk.target) is not None:
                raise OperationInvalidError(f"disk {disk.target} of '{name}' has a block job running")
        if to_config:
            assert dom.definition is not None
            dom.definition = without_disk(dom.definition, find_disk(dom.definition, xml).target)
        if to_live:
            assert dom.live is not None
            dom.live = without_disk(dom.live, disk.target)  # a simulated guest always lets go
            self.bus.emit(DeviceRemovedEvent, dom.name, dom.uuid, alias=disk.target)

    async def set_vcpus(self, name: str, count: int, *, live: bool, config: bool, timeout: float) -> None:
        dom = await self.find(name)
        to_live, to_config = dom.affected(live=live, config=config)
        # A simulated guest brings vCPUs online and lets them go at once.
        new_live = with_vcpus(dom.live, count) if to_live and dom.live is not None else None
        new_definition = with_vcpus(dom.definition, count) if to_config and dom.definition else None
        dom.live = new_live or dom.live
        dom.definition = new_definition or dom.definition

    async def _attach_interface(self, dom: SimDomain, xml: str, *, live: bool, config: bool) -> None:
        """A NIC joins as in the QEMU driver (same address rules and refusals); its simulated tap is
        named as at start."""
        await anyio.lowlevel.checkpoint()
        new_live, new_definition, nic = judge_attach(dom, with_mac(xml), MACHINE_ALIASES, live=live,
                                                     config=config, add=with_interface,
                                                     check=check_nic_pluggable)
        if new_live is not None:
            nic.target_dev = nic.target_dev or f"vnet{next(self._taps)}"
        dom.live = new_live or dom.live
        dom.definition = new_definition or dom.definition

    async def _detach_interface(self, dom: SimDomain, xml: str, *, live: bool, config: bool) -> None:
        to_live, to_config = dom.affected(live=live, config=config)
        await anyio.lowlevel.checkpoint()
        live_index = None
        if to_live:
            assert dom.live is not None
            live_index = find_interface(dom.live, xml)
        if to_config:
            assert dom.definition is not None
            dom.definition = without_interface(dom.definition, find_interface(dom.definition, xml))
        if live_index is not None:
            assert dom.live is not None
            dom.live = without_interface(dom.live, live_index)  # a simulated guest always lets go
            self.bus.emit(DeviceRemovedEvent, dom.name, dom.uuid, alias=f"net{live_index}")

    async def change_media(self, name: str, disk: str, source: str | None, *, format: str, force: bool,
                           live: bool, config: bool) -> None:
        dom = await self.find(name)
        to_live, to_config = dom.affected(live=live, config=config)
        drives = [d for cfg, wanted in ((dom.live, to_live), (dom.definition, to_config))
                  if wanted and cfg is not None for d in [cfg.disk(disk)]]
        for drive in drives:
            if drive is None:
                raise OperationInvalidError(f"domain '{name}' has no disk {disk}")
            if drive.device not in ("cdrom", "floppy"):
                raise OperationInvalidError(f"disk {disk} of '{name}' is a {drive.device}, not a cdrom or "
                                            "floppy: its medium cannot change (detach it instead)")
        if source is not None:
            self.disks.images.ensure(source, format, [])
        if dom.live is not None and dom.live is dom.definition:
            dom.live = copy.deepcopy(dom.live)  # from now on the two may differ
        for cfg, wanted in ((dom.live, to_live), (dom.definition, to_config)):
            drive = cfg.disk(disk) if wanted and cfg is not None else None
            if drive is not None:
                drive.source = source
                drive.format = format if source is not None else drive.format  # type: ignore[assignment]
        if to_live:
            self.bus.emit(TrayChangeEvent, dom.name, dom.uuid, device=disk, open=True)
            if source is not None:
                self.bus.emit(TrayChangeEvent, dom.name, dom.uuid, device=disk, open=False)

    async def set_block_threshold(self, name: str, dev: str, threshold: int) -> None:
        dom = await self.find(name)
        if not dom.active:
            raise OperationInvalidError(f"domain '{name}' is not running")
        target = dev.partition("[")[0]
        paths = self.disks.threshold_paths(dom, target)
        depth = resolve_index(paths, target, dev if "[" in dev else None, 0)
        key = target if depth == 0 else f"{target}[{depth}]"
        dom.thresholds[key] = threshold  # never crossed: nothing writes here

    # -- queries -----------------------------------------------------------------------------------------

    async def state(self, name: str) -> tuple[DomainState, str]:
        dom = await self.find(name)
        return dom.state, dom.reason

    async def info(self, name: str) -> DomainInfo:
        dom = await self.find(name)
        cfg = dom.config
        # Simulated CPU time: the time the domain has been up, as if one vCPU were always busy.
        cpu = int((anyio.current_time() - dom.started_at) * 1e9) if dom.active else 0
        return DomainInfo(dom.state, cfg.memory_kib, cfg.current_memory_kib or cfg.memory_kib, cfg.vcpus, cpu)

    async def all_domain_stats(self, groups: list[str], names: list[str] | None,
                               timeout: float) -> list[tuple[DomainRef, dict[str, Any]]]:
        await anyio.lowlevel.checkpoint()
        doms = ([find_record(self._domains, n) for n in names] if names is not None
                else sorted(self._domains.values(), key=lambda d: d.name))
        return [(DomainRef(d.name, d.uuid), domain_stats(d, groups, self.disks.images)) for d in doms]

    async def xml(self, name: str, *, inactive: bool) -> str:
        dom = await self.find(name)
        if inactive and dom.definition is not None:
            return domain_to_xml(dom.definition)
        if dom.live is None:
            return domain_to_xml(dom.config)
        return domain_to_xml(dom.live, live_id=dom.id, backing_chains=self.disks.live_chains(dom),
                             mirrors=self.disks.mirrors(dom))

    async def set_memory(self, name: str, kib: int, *, live: bool, config: bool) -> None:
        """The simulated balloon driver gets there at once, and says so (BalloonChangeEvent)."""
        dom = await self.find(name)
        to_live, to_config = check_memory(dom, kib, live=live, config=config)
        if dom.live is not None and dom.live is dom.definition:
            dom.live = copy.deepcopy(dom.live)
        if to_config:
            assert dom.definition is not None
            dom.definition.current_memory_kib = kib
        if to_live:
            assert dom.live is not None
            dom.live.current_memory_kib = kib
            self.bus.emit(BalloonChangeEvent, dom.name, dom.uuid, actual_kib=kib)

    async def interface_addresses(self, name: str, source: str) -> list[InterfaceAddresses]:
        """Each simulated NIC with a MAC has one address in 192.168.122.0/24, libvirt's default network
        (the same from both sources; the neighbour table knows no prefix)."""
        dom = await self.find(name)
        if dom.live is None:
            raise OperationInvalidError(f"domain '{name}' is not running")
        return [InterfaceAddresses(nic_name(nic, n), nic.mac.lower(), (
                    InterfaceAddress("ipv4", f"192.168.122.{100 + n}", 24 if source == "lease" else 0),))
                for n, nic in enumerate(dom.live.interfaces) if nic.mac]

    # -- metadata ----------------------------------------------------------------------------------------

    async def metadata(self, name: str, uri: str, *, inactive: bool) -> str | None:
        dom = await self.find(name)
        return find_metadata(dom.readable(inactive=inactive).metadata, uri)

    async def set_metadata(self, name: str, uri: str, element: str | None, *, live: bool,
                           config: bool) -> None:
        dom = await self.find(name)
        to_live, to_config = dom.affected(live=live, config=config)
        for cfg, wanted in ((dom.definition, to_config), (dom.live, to_live)):
            if wanted:
                assert cfg is not None
                cfg.metadata = replace_metadata(cfg.metadata, uri, element)
        self.bus.emit(MetadataChangeEvent, dom.name, dom.uuid, type="element", uri=uri)
