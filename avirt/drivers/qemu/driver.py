"""The QEMU driver: the entry points behind ``qemu:///session`` and ``qemu:///system``.

This module is glue. Each public call finds the :class:`~avirt.drivers.qemu.guest.Guest`, checks that its
state allows the call, and then uses the layers below: ``state`` (files), ``cmdline`` (argv),
``process`` (spawn, attach, terminate), the guest's monitor (QMP commands).

Every running guest has one supervisor task, owned by the driver, that waits for its QEMU to exit (a pidfd,
no polling) and then settles its state. QMP events reach :meth:`QemuDriver._on_qmp_event`, which lets the
guest's state machine decide and carries out any follow-up it asks for.
"""

from __future__ import annotations

import copy
import logging
import os
import secrets
from collections.abc import Awaitable
from dataclasses import replace
from typing import Any

import anyio

from avirt.agent.client import AgentClient
from avirt.config import domain_to_xml, parse_domain_xml
from avirt.config.devices import Disk
from avirt.config.metadata import find as find_metadata
from avirt.config.metadata import replace as replace_metadata
from avirt.config.model import DomainConfig
from avirt.config.serialize import Mirror
from avirt.drivers.base import (
    DomainRef,
    Driver,
    Records,
    assign_macs,
    check_memory,
    find_record,
    overlay_path,
    wait_shut_off,
)
from avirt.drivers.devices import device_kind
from avirt.drivers.qemu import firmware, migration, stats, tpm, vcpus, virtiofs
from avirt.drivers.qemu.abi import stabilise
from avirt.drivers.qemu.agentcalls import AgentCalls
from avirt.drivers.qemu.blockjobs import OnlineJobs, mirror_index, plan_commit, resolve_index
from avirt.drivers.qemu.cmdline import DEFAULT_EMULATOR, Layer, build_argv, node_name, startup_commands
from avirt.drivers.qemu.guest import STATUS_TO_STATE, Guest, Reaction
from avirt.drivers.qemu.hotplug import Devices
from avirt.drivers.qemu.migratecalls import MigrationCalls
from avirt.drivers.qemu.netcalls import NetworkCalls
from avirt.drivers.qemu.nichotplug import Nics
from avirt.drivers.qemu.offlinejobs import OfflineJobs
from avirt.drivers.qemu.process import QemuProcess
from avirt.drivers.qemu.state import SOCKET_PATH_MAX, StateDir
from avirt.errors import (
    AvirtError,
    DomainExistsError,
    DomainStartError,
    HostError,
    ImageError,
    InvalidArgumentError,
    OperationInvalidError,
    QMPError,
    SharedImageError,
)
from avirt.events.bus import EventBus
from avirt.events.model import (
    BlockJobEvent,
    BlockJobStatus,
    ControlErrorEvent,
    EventKind,
    JobKind,
    LifecycleEvent,
    LifecycleType,
    MetadataChangeEvent,
    QMPEvent,
)
from avirt.events.translate import timestamp_of, translate
from avirt.hosts.base import Host
from avirt.hosts.local import LocalHost
from avirt.jobs import BlockJob, JobPhase
from avirt.models import DomainInfo, DomainState, ImageInfo
from avirt.networks import taps
from avirt.networks.manager import Networks, require_admin
from avirt.offline.headers import chain_layers
from avirt.offline.index import ImageIndex
from avirt.offline.plan import commit_plan, pull_plan
from avirt.offline.qemu_img import ChainEntry, create_overlay, image_chain
from avirt.offline.safety import check_commit_space, unlocked_chain
from avirt.qmp.monitor import Monitor, MonitorClosedError
from avirt.tasks import TaskOwner

log = logging.getLogger(__name__)

#: QEMU closes its monitor a moment before it exits; a monitor that is gone for longer than this while
#: the process lives is a broken control channel (CONTROL_ERROR).
MONITOR_EOF_GRACE = 5.0
#: Pause between attempts to re-attach to a guest after its host's connection came back and broke again.
RESYNC_RETRY = 0.5
#: How long the guest agent may take to answer the ping and the freeze of a quiesced snapshot.
QUIESCE_TIMEOUT = 30.0
#: How long a crash dump (on_crash='coredump-*') may take: about the time to write the guest's RAM.
DUMP_TIMEOUT = 300.0


class QemuDriver(AgentCalls, MigrationCalls, NetworkCalls, Driver):
    def __init__(self, uri: str, host: Host, state_dir: str, *, bus: EventBus | None = None) -> None:
        self.uri = uri
        self.host = host
        self.files = StateDir(host, state_dir)
        self.guests: Records[Guest] = Records()
        self.tasks = TaskOwner()
        # A bus given by the caller outlives this driver (a connection that changes its driver keeps it).
        self._own_bus = bus is None
        self.bus = EventBus(self.tasks) if bus is None else bus
        self.jobs = OnlineJobs(self)
        self.images = ImageIndex(host, self.files.chains_path)
        self.offline_jobs = OfflineJobs(self)
        self.devices = Devices(self)
        self.nics = Nics(self)
        #: The guests that take part in a migration now (as source or destination) -> its status.
        self.migrations: dict[str, migration.Watch] = {}
        # Bridges, taps and the descriptors handed to QEMU are this machine's: no networks over SSH (yet).
        self.networks = Networks(host, os.path.join(state_dir, "networks"), self.bus, self.tasks) \
            if isinstance(host, LocalHost) else None
        self._caps: dict[str, Any] | None = None
        #: Each running guest's guest agent session, and the agent shutdowns waiting for the guest to go.
        self._agents: dict[str, AgentClient] = {}
        self._agent_down: dict[str, anyio.Event] = {}
        self._agent_open: dict[str, bool] = {}
        self._caps_lock = anyio.Lock()
        self._event_time: float | None = None
        self._closing = False

    # -- connection --------------------------------------------------------------------------------------

    async def open(self) -> None:
        await self.files.open()
        await self.tasks.open()
        if self.networks is not None:  # before the guests: autostart networks are up when guests start
            await self.networks.open()
        for name in await self.files.persistent_names():
            xml = await self.files.read_definition(name)
            if xml is not None:
                cfg = parse_domain_xml(xml)
                self.guests[name] = self._new_guest(name, cfg.uuid, cfg)
        await self.images.load({name: _disks(guest.config) for name, guest in self.guests.items()})
        for name in await self.files.run_names():
            await self._reattach(name)
        if self.networks is not None:
            await self._find_taps()
        await self.offline_jobs.recover()

    async def close(self) -> None:
        self._closing = True  # events that still arrive start no follow-up work
        if self._own_bus:
            self.bus.close()
        for guest in self.guests.values():  # the next controller reads what this one last knew
            await self._save(guest)
        await self.tasks.aclose()
        self.images.close()
        for guest in self.guests.values():
            if guest.process is not None:
                await guest.process.monitor.aclose()
        await self.host.aclose()

    async def capabilities(self) -> dict[str, Any]:
        async with self._caps_lock:  # many concurrent starts must not each probe QEMU
            if self._caps is None:
                self._caps = await self._probe_capabilities()
        return dict(self._caps)

    async def _probe_capabilities(self) -> dict[str, Any]:
        version = await self.host.run([DEFAULT_EMULATOR, "--version"])
        first = version.stdout.splitlines()[0] if version.stdout else ""
        # A real start with -accel kvm, not a look at /dev/kvm: the device can exist and still be unusable.
        probe = await self.host.run(
            [DEFAULT_EMULATOR, "-machine", "none", "-accel", "kvm", "-nodefaults", "-no-user-config",
             "-display", "none", "-monitor", "stdio"], input=b"quit\n")
        kvm = probe.returncode == 0
        aliases, machines = _machines((await self.host.run([DEFAULT_EMULATOR, "-machine", "help"])).stdout)
        return {
            "machine_aliases": aliases,
            "machine_types": machines,
            "emulator": DEFAULT_EMULATOR,
            "qemu_version": first.removeprefix("QEMU emulator version ").split(" ")[0],
            "kvm": kvm,
            "accelerators": ["kvm", "tcg"] if kvm else ["tcg"],
            "domain_types": {"kvm": "kvm" if kvm else None, "qemu": "tcg"},
        }

    # -- definitions -------------------------------------------------------------------------------------

    async def _stable(self, xml: str) -> DomainConfig:
        """The definition as it is kept: parsed, with MACs, firmware files and the guest ABI filled in."""
        cfg = assign_macs(parse_domain_xml(xml))
        caps = await self.capabilities()
        cfg = stabilise(cfg, caps["machine_aliases"], set(caps["machine_types"]))
        firmware.choose(cfg, self.files.nvram_path(cfg.name))
        return cfg

    async def define_xml(self, xml: str) -> DomainRef:
        cfg = await self._stable(xml)
        guest = self.guests.get(cfg.name)
        self._check_uuid_free(cfg, guest)
        if guest is not None and guest.uuid != cfg.uuid:
            raise DomainExistsError(f"domain '{cfg.name}' already exists with uuid {guest.uuid}")
        await self.files.write_definition(cfg.name, domain_to_xml(cfg))
        detail = "updated" if guest is not None and guest.persistent else "added"
        if guest is None:
            guest = self.guests[cfg.name] = self._new_guest(cfg.name, cfg.uuid, cfg)
        guest.definition = cfg
        self.images.define(cfg.name, _disks(cfg))  # ignored while it runs: its QEMU's chains count
        self._announce(guest, LifecycleType.DEFINED, detail)
        return DomainRef(guest.name, guest.uuid)

    async def create_xml(self, xml: str, *, paused: bool) -> DomainRef:
        cfg = await self._stable(xml)
        if cfg.name in self.guests:
            raise DomainExistsError(f"domain '{cfg.name}' already exists")
        self._check_uuid_free(cfg, None)
        guest = self.guests[cfg.name] = self._new_guest(cfg.name, cfg.uuid, None)
        try:
            async with guest.lock:
                await self._start(guest, cfg, paused=paused)
        except BaseException:
            self.guests.pop(cfg.name, None)
            raise
        return DomainRef(guest.name, guest.uuid)

    def _check_uuid_free(self, cfg: DomainConfig, same: Guest | None) -> None:
        other = self.guests.by_uuid(cfg.uuid)
        if other is not None and other is not same:
            raise DomainExistsError(f"domain '{other.name}' already has uuid {cfg.uuid}")

    async def lookup(self, name_or_uuid: str) -> DomainRef:
        guest = self._find(name_or_uuid)
        return DomainRef(guest.name, guest.uuid)

    async def list_domains(self) -> list[DomainRef]:
        return [DomainRef(g.name, g.uuid) for g in sorted(self.guests.values(), key=lambda g: g.name)]

    async def undefine(self, name: str) -> None:
        guest = self._find(name)
        async with guest.lock:
            if not guest.persistent:
                raise OperationInvalidError(f"cannot undefine transient domain '{name}'")
            await self.files.remove_definition(name)
            guest.definition = None
            self._announce(guest, LifecycleType.UNDEFINED, "removed")
            if not guest.active:
                del self.guests[name]
                self.images.forget(name)

    def _find(self, name_or_uuid: str) -> Guest:
        return find_record(self.guests, name_or_uuid)

    # -- lifecycle ---------------------------------------------------------------------------------------

    async def start(self, name: str, *, paused: bool) -> None:
        guest = self._find(name)
        async with guest.lock:
            guest.require("start")
            busy = self.offline_jobs.busy_disks(name)
            if busy:
                raise OperationInvalidError(
                    f"cannot start domain '{name}': an offline block job runs on {', '.join(busy)}")
            assert guest.definition is not None  # a shut-off domain that exists is persistent
            await self._start(guest, guest.definition, paused=paused)

    async def _start(self, guest: Guest, cfg: DomainConfig, *, paused: bool, incoming: bool = False) -> None:
        """Spawn QEMU for ``cfg``; ``incoming``: as a migration's destination (waiting in inmigrate)."""
        refusal = startable(cfg) or await virtiofs.refusal(self.host, cfg)
        if refusal is not None:
            raise DomainStartError(f"cannot start domain '{cfg.name}': {refusal}")
        tapped = [nic for nic in cfg.interfaces if nic.type != "user"]
        if tapped:
            if self.networks is None:
                raise DomainStartError(f"cannot start domain '{cfg.name}': host networks (interface type "
                                       f"'{tapped[0].type}') work on the local host only, not "
                                       f"{self.host.name}")
            require_admin(f"domain '{cfg.name}': interface type '{tapped[0].type}'")
        chains = await self._disk_chains(cfg)
        accel = await self._accelerator(cfg)
        await firmware.prepare(self.host, cfg)
        backing = cfg.memory_backing
        if backing is not None and backing.hugepages and not await self.host.exists("/dev/hugepages"):
            raise DomainStartError(f"cannot start domain '{cfg.name}': <hugepages/> needs hugetlbfs mounted "
                                   "at /dev/hugepages, with pages reserved (vm.nr_hugepages)")
        if cfg.vsock is not None:
            if not await self.host.exists("/dev/vhost-vsock"):
                raise DomainStartError(f"cannot start domain '{cfg.name}': <vsock> needs /dev/vhost-vsock "
                                       "on the host (modprobe vhost_vsock)")
            if cfg.vsock.cid is None:  # cid auto='yes': a random CID; QEMU refuses one that is taken
                cfg = copy.deepcopy(cfg)
                assert cfg.vsock is not None
                cfg.vsock.cid = 3 + secrets.randbelow(2**31)
        spice = next((g for g in cfg.graphics if g.type == "spice" and g.port in (None, -1)), None)
        spice_port = None if spice is None else await self.host.free_port(spice.listen)
        name = cfg.name
        # From here until the supervisor owns the new QEMU, cancellation must wait: a start cut short
        # would leave a QEMU that nothing tracks. (Every step in the shield has its own timeout.)
        with anyio.CancelScope(shield=True):
            # The node names before QEMU opens them: a controller that dies from here on leaves its
            # successor the names.
            await self.files.prepare_run(name, domain_to_xml(cfg), {
                node_name(target, i): layer.path for target, layers in chains.items()
                for i, layer in enumerate(layers, 1)})
            sockets = self.files.run_dir(name)  # until its short link is known (see state.py)
            try:
                try:
                    sockets = await self.files.socket_dir(name)
                except HostError as e:
                    raise DomainStartError(f"cannot start domain '{name}': {e}") from None
                if cfg.tpms:
                    await tpm.start(self.host, cfg, state_dir=self.files.tpm_dir(cfg.uuid),
                                    run_dir=self.files.run_dir(name), sockets=sockets)
                await virtiofs.start(self.host, cfg, sockets)
                nics = await self._open_taps(cfg)
                try:
                    if nics:
                        cfg = _with_taps(cfg, nics)
                        await self.files.write_live(name, domain_to_xml(cfg))
                    process = await QemuProcess.spawn(
                        self.host, name,
                        lambda socket: [*build_argv(cfg, chains=chains, accel=accel, monitor=socket,
                                                    pidfile=self.files.pidfile(name), run_dir=sockets,
                                                    spice_port=spice_port,
                                                    tap_fds={tap.index: tap.fd for tap in nics}),
                                        *(["-incoming", "defer"] if incoming else [])],
                        qmp_socket=await self.files.qmp_socket(name), pidfile=self.files.pidfile(name),
                        log_path=self.files.log_path(name),
                        on_event=lambda msg: self._on_qmp_event(guest, msg),
                        pass_fds=[tap.fd for tap in nics],
                    )
                finally:
                    taps.close_taps(nics)  # QEMU holds its own copies: the taps now live as long as it
            except DomainStartError as e:
                if cfg.tpms:
                    await tpm.stop(self.host, self.files.run_dir(name))
                servers = await virtiofs.stop(self.host, cfg, sockets)
                await self.files.clear_run(name)
                if servers:  # the run directory is gone: say now what the file servers said
                    raise DomainStartError(str(e), servers) from None
                raise
            guest.began(process, cfg, {
                target: [replace(layer, node=node_name(target, i)) for i, layer in enumerate(layers, 1)]
                for target, layers in chains.items()})
            self.images.running(name, lambda: guest.chains)
            # (An incoming guest waits for the migration: so its first state says, and nothing is written.)
            guest.set_state(DomainState.PAUSED, "migration" if incoming else "user", announce=False)
            self.tasks.start_soon(self._supervise, guest, process, name=f"supervise-{name}")
        if cfg.cputune is not None:
            await self._pin(guest, process, cfg)
        for command, arguments in startup_commands(cfg):
            try:
                await process.monitor.execute(command, arguments)
            except QMPError as e:
                await self._terminate(guest, "failed")
                raise DomainStartError(f"domain '{name}' could not be set up ({command}): {e}") from e
        if incoming:
            self._announce(guest, LifecycleType.STARTED, "migrated")
            return
        if paused:
            self._announce(guest, LifecycleType.STARTED, "booted")
            self._announce(guest, LifecycleType.SUSPENDED, "paused")
            self.agent_started(guest)
            return
        guest.resume_reason = "booted"  # the RESUME that cont causes
        try:
            await process.monitor.execute("cont")
        except QMPError as e:
            await self._terminate(guest, "failed")
            raise DomainStartError(f"domain '{name}' did not start running: {e}") from e
        finally:
            guest.resume_reason = None
        guest.set_state(DomainState.RUNNING, "booted")
        self.agent_started(guest)

    async def _find_taps(self) -> None:
        """After re-attaching: each running guest's taps by MAC. Their names return to the live definitions
        (live.xml keeps them, but generated names are not read back), and taps a re-created bridge lost
        are put back on it."""
        assert self.networks is not None
        nics = [nic for guest in self.guests.values() if guest.live is not None
                for nic in guest.live.interfaces if nic.type != "user" and nic.mac]
        if not nics:
            return
        found = await taps.find_taps(self.host, [nic.mac or "" for nic in nics])
        for nic in nics:
            if nic.target_dev is None and nic.mac in found:
                nic.target_dev = found[nic.mac]
        await self.networks.replug([(nic.source_network or "", nic.mac or "") for nic in nics
                                    if nic.type == "network"])

    async def _open_taps(self, cfg: DomainConfig) -> list[taps.Tap]:
        if self.networks is None or all(nic.type == "user" for nic in cfg.interfaces):
            return []
        try:
            return await taps.open_taps(self.host, cfg.interfaces, self.networks.port)
        except AvirtError as e:
            raise DomainStartError(f"cannot start domain '{cfg.name}': {e}") from e

    async def _pin(self, guest: Guest, process: QemuProcess, cfg: DomainConfig) -> None:
        """``<cputune>``: the affinity of QEMU's threads, set before the guest runs an instruction."""
        tune = cfg.cputune
        assert tune is not None
        monitor = process.monitor
        try:
            if tune.emulatorpin is not None:  # first, so that the vCPU and iothread pins below win
                await self.host.set_affinity(process.pid, tune.emulatorpin, all_threads=True)
            if tune.vcpupins:
                threads = {c["cpu-index"]: c["thread-id"] for c in await monitor.execute("query-cpus-fast")}
                for pin in tune.vcpupins:
                    if pin.vcpu in threads:
                        await self.host.set_affinity(threads[pin.vcpu], pin.cpuset)
            if tune.iothreadpins:
                threads = {t["id"]: t["thread-id"] for t in await monitor.execute("query-iothreads")}
                for io in tune.iothreadpins:
                    await self.host.set_affinity(threads[f"iothread{io.iothread}"], io.cpuset)
        except (QMPError, HostError, KeyError) as e:
            await self._terminate(guest, "failed")
            raise DomainStartError(f"domain '{cfg.name}': its CPU pinning (<cputune>) failed: {e}") from e

    async def _disk_chains(self, cfg: DomainConfig) -> dict[str, list[Layer]]:
        """Each disk's layers, bottom first; a missing image is named before QEMU is ever spawned.

        Every file is looked at at the same time (each look is a trip to a worker thread, or to the
        host, which a start would otherwise wait for one after another); a refusal names the first
        missing file in the definition's order, as a look at one after another would."""
        files = [(label, path) for label, path in (("kernel", cfg.os.kernel), ("initrd", cfg.os.initrd))
                 if path]
        disks = [disk for disk in cfg.disks  # (an empty drive is a device without media)
                 if disk.source is not None or disk.device == "disk"]
        found: set[str] | Exception = set()
        layers: dict[int, list[Layer] | Exception] = {}

        async def look() -> None:
            nonlocal found
            try:  # the kernel and the initrd in one trip
                found = set(await self.host.stat_files([path for _, path in files]))
            except Exception as e:  # raised below, in order
                found = e

        async def probe(i: int, disk: Disk) -> None:
            try:
                layers[i] = await self.disk_layers(cfg.name, disk)
            except Exception as e:  # raised below, in order
                layers[i] = e

        async with anyio.create_task_group() as group:
            if files:
                group.start_soon(look)
            for i, disk in enumerate(disks):
                group.start_soon(probe, i, disk)
        if isinstance(found, Exception):
            raise found
        for label, path in files:
            if path not in found:
                raise DomainStartError(f"cannot start domain '{cfg.name}': {label} {path} does not exist")
        chains = {}
        for i, disk in enumerate(disks):
            result = layers[i]
            if isinstance(result, (OperationInvalidError, ImageError)):
                raise DomainStartError(f"cannot start domain '{cfg.name}': {result}") from result
            if isinstance(result, Exception):
                raise result
            chains[disk.target] = result
        return chains

    async def disk_layers(self, name: str, disk: Disk) -> list[Layer]:
        """One disk's layers, bottom first (for a start, a hotplug or a new medium)."""
        missing = OperationInvalidError(f"disk {disk.target} image {disk.source} does not exist")
        if disk.source is None:
            raise missing
        if disk.format == "raw":
            if not await self.host.exists(disk.source):
                raise missing
            return [Layer(disk.source, "raw")]
        try:  # the image's header is read at once: whether it exists is asked only when that fails
            layers = await chain_layers(self.host, disk.source, disk.format)
        except ImageError as e:
            if not await self.host.exists(disk.source):
                raise missing from None
            raise ImageError(f"disk {disk.target}: {e}", e.returncode, e.stderr) from e
        return [Layer(path, fmt) for path, fmt in reversed(layers)]

    async def _accelerator(self, cfg: DomainConfig) -> str:
        if cfg.hypervisor == "qemu":
            return "tcg"
        if not (await self.capabilities())["kvm"]:
            raise DomainStartError(
                f"cannot start domain '{cfg.name}': it asks for KVM (<domain type='kvm'>) but KVM is not "
                "usable on this host; use <domain type='qemu'> for software emulation (TCG)")
        return "kvm"

    async def shutdown(self, name: str, *, wait: float | None) -> None:
        guest = self._find(name)
        async with guest.lock:
            guest.require("shutdown")
            stopped = guest.stopped
            await self.monitor(guest).execute("system_powerdown")
        if wait is not None:
            await wait_shut_off(name, stopped, wait)

    async def destroy(self, name: str) -> None:
        guest = self._find(name)
        async with guest.lock:
            guest.require("destroy")
            await self._terminate(guest, "destroyed")

    async def _terminate(self, guest: Guest, reason: str) -> None:
        assert guest.process is not None
        guest.exit_reason = reason
        stopped = guest.stopped
        await guest.process.terminate()
        await stopped.wait()  # the supervisor has settled the state

    async def reboot(self, name: str) -> None:
        guest = self._find(name)
        async with guest.lock:
            guest.require("reboot")
            guest.reboot_pending = True
            await self._save(guest)  # the intent is on disk before the guest can act on it
            await self.monitor(guest).execute("system_powerdown")

    async def reset(self, name: str) -> None:
        guest = self._find(name)
        async with guest.lock:
            guest.require("reset")
            await self.monitor(guest).execute("system_reset")

    async def suspend(self, name: str) -> None:
        guest = self._find(name)
        async with guest.lock:
            guest.require("suspend")
            if guest.state is DomainState.PAUSED:
                return
            guest.expect_stop = True
            try:
                await self.monitor(guest).execute("stop")
            finally:
                guest.expect_stop = False
            guest.set_state(DomainState.PAUSED, "user")

    async def resume(self, name: str) -> None:
        guest = self._find(name)
        async with guest.lock:
            guest.require("resume")
            await self.monitor(guest).execute("cont")
            guest.set_state(DomainState.RUNNING, "unpaused")

    async def qemu_monitor_command(self, name: str, command: str,
                                   arguments: dict[str, Any] | None) -> Any:
        guest = self._find(name)
        if not guest.active:
            raise OperationInvalidError(f"domain '{name}' is not running")
        return await self.monitor(guest).execute(command, arguments)

    # -- block jobs --------------------------------------------------------------------------------------

    async def block_commit(self, name: str, disk: str, *, base: str | None, top: str | None,
                           shallow: bool, delete: bool, relative: bool, bandwidth: int | None,
                           pivot: bool, allow_shared_base: bool = False) -> BlockJob:
        """Online or offline is decided here, by the domain's state: QMP if QEMU runs, else qemu-img."""
        guest = self._find(name)
        async with guest.lock:
            if not guest.active:
                if bandwidth:
                    raise OperationInvalidError("qemu-img runs at full speed: no bandwidth offline")
                chain = await self._offline_chain(guest, disk)
                where = plan_commit([e.path for e in chain], disk, base=base, top=top, shallow=shallow)
                await self._refuse_shared_base(guest, chain[where.base].path, allow_shared_base)
                await check_commit_space(self.host, chain, where.top, where.base)
                return await self.offline_jobs.start(
                    guest, disk, JobKind.ACTIVE_COMMIT if where.active else JobKind.COMMIT,
                    commit_plan(chain, where.top, where.base, relative=relative), delete=delete)
            plan = self.jobs.plan_commit(guest, disk, base=base, top=top, shallow=shallow)
            await self._refuse_shared_base(guest, guest.chains[disk][-1 - plan.base].path, allow_shared_base)
            return await self.jobs.commit(guest, plan, delete=delete, relative=relative,
                                          bandwidth=bandwidth, pivot=pivot)

    async def block_pull(self, name: str, disk: str, *, base: str | None,
                         bandwidth: int | None) -> BlockJob:
        guest = self._find(name)
        async with guest.lock:
            if not guest.active:
                if bandwidth:
                    raise OperationInvalidError("qemu-img runs at full speed: no bandwidth offline")
                chain = await self._offline_chain(guest, disk)
                index = resolve_index([e.path for e in chain], disk, base, len(chain))
                if index == 0:
                    raise OperationInvalidError(f"base {base} is the active image of {disk}: nothing to pull")
                plan = pull_plan(chain, index if index < len(chain) else None)
                return await self.offline_jobs.start(guest, disk, JobKind.PULL, plan, delete=False)
            return await self.jobs.pull(guest, disk, base=base, bandwidth=bandwidth)

    async def block_copy(self, name: str, disk: str, dest: str, *, format: str, shallow: bool,
                         reuse_external: bool, bandwidth: int | None, pivot: bool) -> BlockJob:
        guest = self._find(name)
        async with guest.lock:
            if not guest.active:
                raise OperationInvalidError(
                    f"domain '{name}' is shut off: offline block copy is not implemented yet")
            return await self.jobs.copy(guest, disk, dest, format=format, shallow=shallow,
                                        reuse_external=reuse_external, bandwidth=bandwidth, pivot=pivot)

    async def block_job(self, name: str, disk: str) -> BlockJob | None:
        guest = self._find(name)
        if guest.config.disk(disk) is None:
            raise OperationInvalidError(f"domain '{name}' has no disk {disk}")
        return (self.jobs.job_on(guest, disk) or self.offline_jobs.running.get((guest.name, disk))
                or self.jobs.take_settled(guest, disk) or self.offline_jobs.take_settled(guest.name, disk))

    async def _offline_chain(self, guest: Guest, disk: str) -> list[ChainEntry]:
        target = guest.config.disk(disk)
        if target is None or target.source is None:
            raise OperationInvalidError(f"domain '{guest.name}' has no disk {disk}")
        if (guest.name, disk) in self.offline_jobs.running:
            raise OperationInvalidError(f"disk {disk} of '{guest.name}' already has a block job")
        # Touch no byte of an image that another process holds: qemu-img's own lock probe, up front.
        return await unlocked_chain(self.host, target.source, target.format)

    async def _refuse_shared_base(self, guest: Guest, base: str, allow: bool) -> None:
        """A commit must not change what other domains' disks read, unless the caller allows it."""
        if allow:
            return
        users = await self.images.users(base, besides=guest.name)
        if users:
            raise SharedImageError(base, users)

    async def block_chain(self, name: str, disk: str) -> list[ImageInfo]:
        guest = self._find(name)
        target = guest.config.disk(disk)
        if target is None or target.source is None:
            raise OperationInvalidError(f"domain '{name}' has no disk {disk}")
        return await image_chain(self.host, target.source, target.format)

    async def snapshot_disks(self, name: str, snapshot: str, disks: list[str] | None,
                             quiesce: bool = False) -> dict[str, str]:
        guest = self._find(name)
        async with guest.lock:
            if quiesce and not guest.active:
                raise OperationInvalidError(f"domain '{name}' is not running: a quiesced snapshot "
                                            "freezes a running guest's filesystems")
            cfg = guest.config
            chosen = [d for d in cfg.disks
                      if (disks is None and not d.readonly) or (disks and d.target in disks)]
            unknown = set(disks or ()) - {d.target for d in chosen}
            if unknown:
                raise OperationInvalidError(f"domain '{name}' has no disk {', '.join(sorted(unknown))}")
            for disk in chosen:  # an offline job too: it rewrites the definition when it ends
                if self.jobs.job_on(guest, disk.target) or (name, disk.target) in self.offline_jobs.running:
                    raise OperationInvalidError(f"disk {disk.target} of '{name}' has a block job running")
            overlays = {d.target: overlay_path(d.source or "", snapshot) for d in chosen}
            for path in overlays.values():
                if await self.host.exists(path):
                    raise OperationInvalidError(f"snapshot image {path} already exists")
            created: list[str] = []
            frozen = False
            if quiesce:  # first, as libvirt: a guest that cannot be frozen is refused before anything is made
                await self.freeze(guest, QUIESCE_TIMEOUT)
                frozen = True
            try:
                for disk in chosen:
                    assert disk.source is not None
                    await create_overlay(self.host, overlays[disk.target], disk.source, disk.format)
                    created.append(overlays[disk.target])
                if guest.active:
                    await self.jobs.snapshot(guest, overlays)
                else:
                    for disk in chosen:
                        disk.source, disk.format = overlays[disk.target], "qcow2"
                    if guest.definition is not None:
                        await self.files.write_definition(guest.name, domain_to_xml(guest.definition))
                        self.images.define(guest.name, _disks(guest.definition))
            except BaseException:
                if frozen:
                    await self.thaw(guest, quiet=True)
                for path in created:
                    await self.host.remove_tree(path)
                raise
            if frozen:
                await self.thaw(guest)
            return overlays

    # -- devices -----------------------------------------------------------------------------------------

    async def attach_device(self, name: str, xml: str, *, live: bool, config: bool) -> None:
        guest = self._find(name)
        async with guest.lock:
            if device_kind(xml) == "interface":
                await self.nics.attach(guest, xml, live=live, config=config)
            else:
                await self.devices.attach(guest, xml, live=live, config=config)

    async def detach_device(self, name: str, xml: str, *, live: bool, config: bool, timeout: float) -> None:
        guest = self._find(name)
        async with guest.lock:
            if device_kind(xml) == "interface":
                await self.nics.detach(guest, xml, live=live, config=config, timeout=timeout)
            else:
                await self.devices.detach(guest, xml, live=live, config=config, timeout=timeout)

    async def change_media(self, name: str, disk: str, source: str | None, *, format: str, force: bool,
                           live: bool, config: bool) -> None:
        guest = self._find(name)
        async with guest.lock:
            await self.devices.change_media(guest, disk, source, format=format, force=force, live=live,
                                            config=config)

    async def set_vcpus(self, name: str, count: int, *, live: bool, config: bool, timeout: float) -> None:
        guest = self._find(name)
        async with guest.lock:
            to_live, to_config = guest.affected(live=live, config=config)
            definition = None
            if to_config:  # checked before anything changes
                assert guest.definition is not None
                definition = vcpus.with_vcpus(guest.definition, count)
            if to_live:
                await vcpus.set_vcpus(self, guest, count, timeout)
            if definition is not None:
                await self.files.write_definition(name, domain_to_xml(definition))
                guest.definition = definition

    async def set_block_threshold(self, name: str, dev: str, threshold: int) -> None:
        guest = self._find(name)
        if not guest.active:
            raise OperationInvalidError(f"domain '{name}' is not running")
        target = dev.partition("[")[0]
        layers = guest.chains.get(target)
        if not layers:
            raise OperationInvalidError(f"domain '{name}' has no disk {target}")
        paths, nodes = [layer.path for layer in reversed(layers)], [layer.node for layer in reversed(layers)]
        copy = self.jobs.copy_target(guest, target)
        if copy is not None:  # a running copy's destination: the layer past the deepest (<mirror index>)
            paths.append(copy[0])
            nodes.append(copy[1])
        depth = resolve_index(paths, target, dev if "[" in dev else None, 0)
        # On the format node: the threshold counts the offsets the guest writes on that layer.
        await self.monitor(guest).execute("block-set-write-threshold", {
            "node-name": nodes[depth], "write-threshold": threshold})

    def disk_images_changed(self, guest: Guest) -> None:
        """A job off line may have given a disk another image: the index reads its chains again."""
        if guest.definition is not None:
            self.images.define(guest.name, _disks(guest.definition))

    async def chains_changed(self, guest: Guest) -> None:
        """A job changed the disks' chains: the live and the persistent XML follow (each written only
        if the top image of a disk changed, both at once)."""
        changed = set()
        for cfg in {id(c): c for c in (guest.live, guest.definition) if c is not None}.values():
            for disk in cfg.disks:
                layers = guest.chains.get(disk.target)
                if layers and (disk.source, disk.format) != (layers[-1].path, layers[-1].format):
                    disk.source, disk.format = layers[-1].path, layers[-1].format  # type: ignore[assignment]
                    changed.add(id(cfg))
        async with anyio.create_task_group() as group:
            if guest.live is not None and id(guest.live) in changed:
                group.start_soon(self.files.write_live, guest.name, domain_to_xml(guest.live))
            if guest.definition is not None and id(guest.definition) in changed:
                group.start_soon(self.files.write_definition, guest.name, domain_to_xml(guest.definition))

    def announce_job(self, guest: Guest, job: BlockJob, timestamp: float | None = None) -> None:
        """The BlockJobEvent of a job's end once it is settled (online and offline), or of a READY that
        no QMP event announced (it came while the host was unreachable)."""
        self.bus.emit(BlockJobEvent, guest.name, guest.uuid, timestamp, disk=job.disk, job_kind=job.kind,
                      status=job.status or BlockJobStatus.READY, error=job.error)

    def monitor(self, guest: Guest) -> Monitor:
        lost = self.host.connection_error()
        if lost is not None:
            raise lost
        if guest.process is None or not guest.process.monitor.connected:
            raise OperationInvalidError(f"domain '{guest.name}': the QEMU monitor is not connected")
        return guest.process.monitor

    # -- queries -----------------------------------------------------------------------------------------

    async def state(self, name: str) -> tuple[DomainState, str]:
        guest = self._find(name)
        return guest.state, guest.reason

    async def info(self, name: str) -> DomainInfo:
        guest = self._find(name)
        cfg = guest.config
        cpu = await self.host.cpu_time_ns(guest.process.pid) if guest.process else 0
        return DomainInfo(guest.state, cfg.memory_kib, cfg.current_memory_kib or cfg.memory_kib,
                          cfg.vcpus, cpu)

    async def all_domain_stats(self, groups: list[str], names: list[str] | None,
                               timeout: float) -> list[tuple[DomainRef, dict[str, Any]]]:
        guests = ([self._find(n) for n in names] if names is not None
                  else sorted(self.guests.values(), key=lambda g: g.name))
        if self.host.connection_error() is not None:
            timeout = 0  # nothing can answer: every running guest is reported unresponsive at once
        results = await stats.gather(self.host, guests, groups, timeout)
        return [(DomainRef(g.name, g.uuid), params) for g, params in zip(guests, results, strict=True)]

    async def xml(self, name: str, *, inactive: bool) -> str:
        guest = self._find(name)
        if inactive and guest.definition is not None:
            return domain_to_xml(guest.definition)
        if guest.live is None:
            return domain_to_xml(guest.config)
        chains = {target: [(layer.path, layer.format) for layer in reversed(layers[:-1])]
                  for target, layers in guest.chains.items()}
        mirrors = {}
        for target in guest.chains:
            job = self.jobs.job_on(guest, target)
            if job is not None and job.two_phase:
                path, fmt = job.plan.get("dest") or job.plan["base"], job.plan.get("format", "qcow2")
                paths = [layer.path for layer in reversed(guest.chains[target])]
                mirrors[target] = Mirror(job.kind.value, path, fmt, job.phase is JobPhase.READY,
                                         mirror_index(paths, path, copy=job.kind is JobKind.COPY))
        return domain_to_xml(guest.live, live_id=guest.process.pid if guest.process else None,
                             backing_chains=chains, mirrors=mirrors)

    # -- metadata ----------------------------------------------------------------------------------------

    async def metadata(self, name: str, uri: str, *, inactive: bool) -> str | None:
        return find_metadata(self._find(name).readable(inactive=inactive).metadata, uri)

    async def set_metadata(self, name: str, uri: str, element: str | None, *, live: bool,
                           config: bool) -> None:
        """Each file is written (atomically) before memory changes: domain.xml first, the durable one, then
        live.xml, which is what a new controller re-reads of a running guest."""
        guest = self._find(name)
        async with guest.lock:
            to_live, to_config = guest.affected(live=live, config=config)
            if guest.live is not None and guest.live is guest.definition:
                guest.live = copy.deepcopy(guest.live)  # from now on the two may differ
            if to_config:
                assert guest.definition is not None
                changed = replace(guest.definition,
                                  metadata=replace_metadata(guest.definition.metadata, uri, element))
                await self.files.write_definition(guest.name, domain_to_xml(changed))
                guest.definition.metadata = changed.metadata
            if to_live:
                assert guest.live is not None
                changed = replace(guest.live, metadata=replace_metadata(guest.live.metadata, uri, element))
                await self.files.write_live(guest.name, domain_to_xml(changed))
                guest.live.metadata = changed.metadata
        self.bus.emit(MetadataChangeEvent, guest.name, guest.uuid, type="element", uri=uri)

    async def set_memory(self, name: str, kib: int, *, live: bool, config: bool) -> None:
        """Live, QMP ``balloon``: QEMU asks the guest's balloon driver for the new size and returns at once;
        the guest gets there in its own time (``BalloonChangeEvent``s, ``balloon.current``)."""
        guest = self._find(name)
        async with guest.lock:
            to_live, to_config = check_memory(guest, kib, live=live, config=config)
            if guest.live is not None and guest.live is guest.definition:
                guest.live = copy.deepcopy(guest.live)  # from now on the two may differ
            if to_live:
                assert guest.live is not None
                await self.monitor(guest).execute("balloon", {"value": kib * 1024})
                guest.live.current_memory_kib = kib
                await self.files.write_live(name, domain_to_xml(guest.live))
            if to_config:
                assert guest.definition is not None
                changed = replace(guest.definition, current_memory_kib=kib)
                await self.files.write_definition(name, domain_to_xml(changed))
                guest.definition.current_memory_kib = kib

    # -- interfaces and networks ---------------------------------------------------------------------------

    async def set_link(self, name: str, interface: str, up: bool) -> None:
        guest = self._find(name)
        async with guest.lock:
            cfg = guest.live
            if cfg is None:
                raise OperationInvalidError(f"domain '{name}' is not running: its links are set in its XML")
            wanted = interface.lower()
            index = next((i for i, nic in enumerate(cfg.interfaces)
                          if wanted in (nic.mac, (nic.target_dev or "").lower())), None)
            if index is None:
                raise InvalidArgumentError(
                    f"domain '{name}' has no interface with MAC or device '{interface}'")
            await self.monitor(guest).execute("set_link", {"name": guest.nic_ids[index], "up": up})
            cfg.interfaces[index].link_state = None if up else "down"
            await self.files.write_live(name, domain_to_xml(cfg))

    # -- supervision -------------------------------------------------------------------------------------

    async def _supervise(self, guest: Guest, process: QemuProcess) -> None:
        """Wait for this QEMU to end, then settle the guest's state and clean its run directory.

        If the host's connection is lost meanwhile (a remote host), QEMU goes on running there: the guest
        gets a CONTROL_ERROR, and once the host is back the supervisor re-attaches and re-syncs it.
        """
        while not await self._watch(guest, process):
            resumed = await self._resync(guest, process)
            if resumed is None:
                break
            process = resumed
        await process.monitor.aclose()
        await self.drop_agent(guest)
        await self._quietly(self.files.clear_run(guest.name))
        self.jobs.forget(guest)
        guest.ended()
        self.images.stopped(guest.name)
        if guest.definition is not None:
            self.images.define(guest.name, _disks(guest.definition))
        else:
            self.guests.pop(guest.name, None)
            self.images.forget(guest.name)

    async def _watch(self, guest: Guest, process: QemuProcess) -> bool:
        """True once QEMU has exited; False if the connection to its host was lost first."""
        lost = False
        try:
            async with anyio.create_task_group() as group:
                group.start_soon(self._watch_monitor, guest, process)
                await process.wait_exit()
                group.cancel_scope.cancel()
        except* HostError:
            lost = True
        return not lost

    async def _resync(self, guest: Guest, process: QemuProcess) -> QemuProcess | None:
        """After a lost host connection: wait for the host, re-attach to the QEMU and re-derive what
        happened meanwhile (as a new controller would); None if the QEMU ended during the gap."""
        log.error("domain %s: lost the connection to %s", guest.name, self.host.name)
        self.bus.emit(ControlErrorEvent, guest.name, guest.uuid,
                      reason=f"the connection to {self.host.name} was lost")
        await process.monitor.aclose()
        while True:
            await self.host.wait_reconnected()
            try:
                resumed = await QemuProcess.attach(
                    self.host, guest.name, qmp_socket=await self.files.qmp_socket(guest.name),
                    pidfile=self.files.pidfile(guest.name),
                    on_event=lambda msg: self._on_qmp_event(guest, msg))
                if resumed is None:
                    return None
                guest.process = resumed
                if resumed.monitor.connected:
                    await self.devices.forget_unplugged(guest, await self.jobs.refresh_chains(guest))
                    await self.nics.forget_unplugged(guest)
                    await self.jobs.resync(guest)
                    status = await resumed.monitor.execute("query-status")
                    state, reason = STATUS_TO_STATE.get(status["status"], (DomainState.PAUSED, "unknown"))
                    if state is not guest.state:  # the same state keeps its known reason
                        guest.set_state(state, reason)
                log.warning("domain %s: re-attached after the connection to %s came back",
                            guest.name, self.host.name)
                return resumed
            except (HostError, MonitorClosedError) as e:
                log.info("domain %s: re-attaching failed (%s); waiting for the host again", guest.name, e)
                await anyio.sleep(RESYNC_RETRY)  # the host may not have noticed its loss yet: no busy loop

    async def _quietly(self, work: Awaitable[None]) -> None:
        try:
            await work
        except HostError as e:  # the host is unreachable: the next controller cleans up
            log.warning("%s", e)

    async def _watch_monitor(self, guest: Guest, process: QemuProcess) -> None:
        await process.monitor.closed()
        with anyio.move_on_after(MONITOR_EOF_GRACE):
            await process.wait_exit()
            return
        log.error("domain %s: the QEMU monitor broke but QEMU (pid %d) still runs", guest.name, process.pid)
        self.bus.emit(ControlErrorEvent, guest.name, guest.uuid,
                      reason="the QEMU monitor connection broke while QEMU still runs")

    def _on_qmp_event(self, guest: Guest, msg: dict[str, Any]) -> None:
        """Every QMP event of every guest passes here: raw event, state machine, typed events."""
        timestamp = timestamp_of(msg)
        if self.bus.wants(EventKind.QMP):
            self.bus.emit(QMPEvent, guest.name, guest.uuid, timestamp, name=msg.get("event", ""),
                          data=msg.get("data") or {})
        self._event_time = timestamp  # lifecycle events caused by this message carry QEMU's time
        try:
            reaction = guest.on_qmp_event(msg)
        finally:
            self._event_time = None
        watch = self.migrations.get(guest.name)
        self.agent_event(guest, msg)
        if msg.get("event", "").startswith(("JOB_", "BLOCK_JOB_")):
            self.jobs.on_qmp_event(guest, msg)
            if watch is not None:  # a storage copy's mirrors
                watch.job_event(msg.get("event", ""), msg.get("data") or {})
        elif msg.get("event") == "DEVICE_DELETED" and not self._closing:
            data = msg.get("data") or {}  # a device of the command line (a vCPU) has its QOM path only
            device = data.get("device") or data.get("path") or ""
            if not self.nics.device_deleted(guest, device):
                self.devices.device_deleted(guest, device)
            if str(data.get("path", "")).endswith("/lapic"):  # a vCPU left (see vcpus.py)
                self.tasks.start_soon(self._vcpus_changed, guest, name=f"vcpus-{guest.name}")
        elif msg.get("event") == "MIGRATION" and watch is not None:
            watch.update(msg.get("data") or {})
        elif msg.get("event") == "BALLOON_CHANGE" and guest.process is not None:
            actual = (msg.get("data") or {}).get("actual")
            guest.process.balloon_actual = actual if isinstance(actual, int) else None
        if self.bus.active:
            for cls, fields in translate(msg, guest.names):
                if cls is BlockJobEvent and fields["status"] is not BlockJobStatus.READY \
                        and self.jobs.owns((msg.get("data") or {}).get("device", "")):
                    continue  # announced once avirt has settled the job (OnlineJobs._end)
                self.bus.emit(cls, guest.name, guest.uuid, timestamp, **fields)
        if reaction is Reaction.NONE or self._closing:
            return
        if reaction is Reaction.REFINE:
            if guest.refining:
                guest.refine_again = True
                return
            guest.refining = True
        self.tasks.start_soon(self._react, guest, reaction, name=f"react-{guest.name}")

    async def _vcpus_changed(self, guest: Guest) -> None:
        """A vCPU left, maybe long after the call that asked for it timed out: the live XML follows."""
        try:
            async with guest.lock:
                if guest.active and guest.process is not None:
                    guest.process.vcpu_threads = None
                    await vcpus.reconcile(self, guest)
        except (QMPError, HostError, OSError) as e:
            log.warning("domain %s: reading its vCPUs after one left failed: %s", guest.name, e)

    def _new_guest(self, name: str, uuid: str, definition: DomainConfig | None) -> Guest:
        guest = Guest(name, uuid, definition)
        guest.on_lifecycle = lambda type, detail: self._announce(guest, type, detail)
        guest.on_change = lambda: self._save_soon(guest)
        return guest

    def _save_soon(self, guest: Guest) -> None:
        """Persist the guest's state in the background; a write already queued takes this change too."""
        if guest.process is None or guest.saving or self._closing:
            return
        if guest.reason == "migration" and (guest.saved is None or guest.saved.state != guest.state.value):
            # QEMU's runstate (inmigrate, finish-migrate, postmigrate) tells a controller that re-attaches
            # as much, and this write would fall in the migration's downtime.
            return
        guest.saving = True
        self.tasks.start_soon(self._save, guest, name=f"save-{guest.name}")

    async def _save(self, guest: Guest) -> None:
        """Write state.json until it holds what the guest is now. One writer at a time per guest, and
        each writes the newest state: writes never land out of order, and a burst of changes costs one
        or two writes."""
        async with guest.save_lock:
            guest.saving = False  # from here on, a change queues another round
            try:
                while guest.process is not None:
                    wanted = guest.to_save()
                    if wanted == guest.saved:
                        return
                    await self.files.write_state(guest.name, wanted)
                    guest.saved = wanted
            except (OSError, HostError) as e:
                # Its QEMU ended and took the run directory along, or the host is unreachable (the next
                # controller then reads the last state written, and QEMU's runstate corrects it).
                log.info("domain %s: state.json not written: %s", guest.name, e)

    def _announce(self, guest: Guest, type: LifecycleType, detail: str) -> None:
        self.bus.emit(LifecycleEvent, guest.name, guest.uuid, self._event_time, type=type, detail=detail)

    async def _react(self, guest: Guest, reaction: Reaction) -> None:
        if guest.process is None:
            return
        monitor = guest.process.monitor
        try:
            if reaction in (Reaction.DUMP_QUIT, Reaction.DUMP_RESTART):
                path = self.files.dump_path(guest.name)
                await self.host.make_dirs(os.path.dirname(path))
                try:  # the guest is paused by the panic: its memory holds still while QEMU writes it
                    await monitor.execute("dump-guest-memory", {"paging": False, "protocol": f"file:{path}"},
                                          timeout=DUMP_TIMEOUT)
                except QMPError as e:
                    log.warning("domain %s: the crash dump to %s failed: %s", guest.name, path, e)
                reaction = Reaction.QUIT if reaction is Reaction.DUMP_QUIT else Reaction.RESTART
            if reaction is Reaction.QUIT:
                await monitor.execute("quit")
            elif reaction is Reaction.RESTART:
                guest.resume_reason = "booted"
                try:
                    await monitor.execute("system_reset")
                    await monitor.execute("cont")
                finally:
                    guest.resume_reason = None
                guest.set_state(DomainState.RUNNING, "booted")
            elif reaction is Reaction.REFINE:
                # One query at a time per guest: STOPs that arrive meanwhile ask for one more round.
                try:
                    while True:
                        guest.refine_again = False
                        status = await monitor.execute("query-status")
                        if guest.state is DomainState.PAUSED and guest.reason == "unknown":
                            guest.set_state(*STATUS_TO_STATE.get(status["status"],
                                                                 (DomainState.PAUSED, "unknown")))
                        if not guest.refine_again:
                            break
                finally:
                    guest.refining = False
        except QMPError as e:
            log.warning("domain %s: %s after an event failed: %s", guest.name, reaction.value, e)

    async def _reattach(self, name: str) -> None:
        """Pick up a guest that an earlier controller started, or clean up after one that died."""
        live_xml = await self.files.read_live(name)
        live = parse_domain_xml(live_xml) if live_xml is not None else None
        known = self.guests.get(name)
        guest = known or (self._new_guest(name, live.uuid, None) if live else None)
        process = None
        if live is not None and guest is not None:
            process = await QemuProcess.attach(
                self.host, name, qmp_socket=await self.files.qmp_socket(name),
                pidfile=self.files.pidfile(name),
                on_event=lambda msg: self._on_qmp_event(guest, msg))
        if process is None or live is None or guest is None:
            log.info("domain %s: its QEMU is gone; cleaning its run directory", name)
            await self.files.clear_run(name)
            if known is not None:
                known.set_state(DomainState.SHUTOFF, "unknown", announce=False)
            return
        self.guests[name] = guest
        saved = await self.files.read_state(name)
        guest.began(process, live, {})
        self.images.running(name, lambda: guest.chains)
        guest.saving = True  # nothing to write until the state is known again
        guest.set_state(DomainState.RUNNING, "unknown", announce=False)
        self.tasks.start_soon(self._supervise, guest, process, name=f"supervise-{name}")
        if not process.monitor.connected:
            guest.saving = False
            return
        try:
            guest.nodes = await self.files.read_nodes(name)  # the names avirt gave (see state.py)
            guest.nic_ids = await self.files.read_nics(name) or guest.nic_ids
            blocks = await self.jobs.refresh_chains(guest)  # the chain as QEMU has it now, with those names
            await self.devices.forget_unplugged(guest, blocks)
            await self.nics.forget_unplugged(guest)  # NICs, likewise
            await vcpus.reconcile(self, guest)  # vCPUs plugged in or out while nobody recorded it
            await self.jobs.reattach(guest)
            status = await process.monitor.execute("query-status")
            guest.restore(saved, status["status"])
        finally:
            guest.saving = False
        self._save_soon(guest)
        await self.recover_migration(guest)
        if guest.state is DomainState.SHUTDOWN and (saved is None or saved.state != "shutdown"):
            # It powered off while nobody watched: do now what the controller that watched would have.
            self.tasks.start_soon(self._react, guest, guest.missed_shutdown(), name=f"react-{name}")


def _with_taps(cfg: DomainConfig, nics: list[taps.Tap]) -> DomainConfig:
    """The live definition names each NIC's tap (``<target dev>``), as libvirt's live XML does."""
    if not nics:
        return cfg
    cfg = copy.deepcopy(cfg)
    for tap in nics:
        cfg.interfaces[tap.index].target_dev = tap.name
    return cfg


def _machines(help_text: str) -> tuple[dict[str, str], list[str]]:
    """``-machine help`` -> ({alias: concrete type}, every type), e.g. {'q35': 'pc-q35-7.2'}."""
    aliases: dict[str, str] = {}
    machines: list[str] = []
    for line in help_text.splitlines()[1:]:
        name, _, description = line.partition(" ")
        if not name:
            continue
        machines.append(name)
        if "(alias of " in description:
            aliases[name] = description.split("(alias of ", 1)[1].split(")", 1)[0]
    return aliases, machines


def _disks(cfg: DomainConfig) -> list[tuple[str, str, str]]:
    """What the image index needs of a definition: each disk with an image, ``(target, image, format)``."""
    return [(disk.target, disk.source, disk.format) for disk in cfg.disks if disk.source]


def startable(cfg: DomainConfig) -> str | None:
    """Why a definition cannot start on this avirt yet, before anything is spawned (None: it can)."""
    for i, nic in enumerate(cfg.interfaces, 1):
        if nic.type == "direct":
            return (f"interface {i} (type='direct', mac {nic.mac}) needs a macvtap on host device "
                    f"'{nic.source_dev}', which avirt does not make yet; use type='bridge' or 'network'")
        if (nic.driver_queues or 1) > 1:
            return f"interface {i}: multiqueue (driver queues={nic.driver_queues}) needs a tap device"
    hyperv = cfg.features.hyperv
    if cfg.hypervisor == "qemu" and hyperv is not None and hyperv.vpindex == "on":
        return ("the Hyper-V enlightenment <vpindex> needs KVM (<domain type='kvm'>); TCG cannot give it, "
                "remove it for type='qemu'")
    if len(cfg.tpms) > 1:
        return "a guest has at most one TPM"
    spice = any(g.type == "spice" for g in cfg.graphics)
    if not spice and (cfg.redirdevs or any(c.type == "spicevmc" for c in cfg.chardevs)):
        return "spicevmc channels and USB redirection need <graphics type='spice'>"
    for char in cfg.chardevs:  # a path the definition gives cannot be shortened behind its owner's back
        if char.type == "unix" and char.path and len(os.fsencode(char.path)) > SOCKET_PATH_MAX:
            return (f"the {char.kind} socket path {char.path} is {len(os.fsencode(char.path))} bytes, over "
                    f"the kernel's limit of {SOCKET_PATH_MAX} for a unix socket; give a shorter one, or none "
                    "(avirt then picks one in the run directory)")
    if any(v.accel3d == "yes" for v in cfg.videos):
        return "3D acceleration (accel3d='yes') needs an OpenGL display, which avirt does not provide"
    return None
