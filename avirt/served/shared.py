"""A local state directory's driver, for as long as the connection lives, whoever controls it.

Many programs may connect to one state directory; the lock says which of them controls it. A
:class:`SharedDriver` is what ``connect()`` gives each of them. It starts as one of two things and may
change from the second to either while the connection lives::

    holder:  a QemuDriver (this program took the lock) and the Server that serves it to the others
    client:  a ClientDriver (another program holds the lock), every call a request to that program
             |
             | the holder went away (it closed, or was killed): the lock is free again
             v
    hand-over: take the lock (-> holder, reattaching to every guest as a new controller does) or, when
             another client was quicker, connect to it (-> client of the new holder)

The lock decides, so there is never more than one holder. During a hand-over new calls wait for it to
end (at most :data:`HANDOVER_TIMEOUT`), calls that were in flight fail with
:class:`~avirt.errors.ControllerGoneError` (they may or may not have taken effect), and every event
stream raises :class:`~avirt.errors.EventsLostError` once (the events of the gap are unknown) and goes
on. The connection's :class:`~avirt.events.bus.EventBus` is this object's and is handed to each driver it
uses, so subscriptions outlive every change.

Block jobs a client started are the client's own :class:`~avirt.jobs.BlockJob` objects, which follow
the job where it runs: after a hand-over each is found again by domain and disk on the new controller
(the job id tells it is the same job) and goes on from there, its outcome the job's real one.

Waiting for a controller that holds the lock but does not listen yet (it is reattaching its guests) is
the one place where avirt polls: the lock gives no notice when it is released, so both the lock and the
socket are tried again with growing pauses.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import anyio

from avirt.drivers.base import DomainRef, Driver
from avirt.drivers.qemu.driver import QemuDriver
from avirt.errors import ConnectionLockedError, ControllerGoneError, HostError, OperationInvalidError
from avirt.events.bus import EventBus
from avirt.events.model import BlockJobStatus
from avirt.hosts.forwarding import Forwarder
from avirt.hosts.local import LocalHost
from avirt.jobs import BlockJob, JobPhase
from avirt.models import DomainInfo, DomainState, ImageInfo, InterfaceAddresses, MigrationProgress
from avirt.networks.model import DHCPLease
from avirt.rpc import PeerClosedError
from avirt.served.client import ClientDriver
from avirt.served.server import Server
from avirt.tasks import TaskOwner

__all__ = ["HANDOVER_TIMEOUT", "SharedDriver"]

log = logging.getLogger(__name__)

#: How long a connection looks for a controller (at connect, and after its controller went away).
HANDOVER_TIMEOUT = 30.0


@dataclass
class _Link:
    """A client's job and the job it follows on the current controller."""

    outer: BlockJob
    domain: str
    inner: BlockJob | None
    scope: anyio.CancelScope = field(default_factory=anyio.CancelScope)


class SharedDriver(Driver):
    #: Whether subscribers are told that the events of a hand-over's gap are lost (EventsLostError).
    gap_loses_events = True

    def __init__(self, uri: str, state_dir: str) -> None:
        self.uri = uri
        self.state_dir = state_dir
        self._tasks = TaskOwner()
        self.bus = EventBus(self._tasks)
        self._inner: Driver | None = None
        self._server: Server | None = None
        self._ready = anyio.Event()
        self._links: dict[str, _Link] = {}
        self._closing = False

    @property
    def serving(self) -> bool:
        """Whether this program holds the state directory now (and serves it to the others)."""
        return self._server is not None

    async def open(self) -> None:
        await self._tasks.open()
        await self._attach()

    async def close(self) -> None:
        self._closing = True
        if self._server is not None:
            await self._server.aclose()
            self._server = None
        if self._inner is not None:
            await self._inner.close()
            self._inner = None
        self.bus.close()
        await self._tasks.aclose()

    # -- who controls the directory -------------------------------------------------------------------

    async def _attach(self) -> None:
        """Become the holder if the lock is free, else a client of whoever holds it."""
        delay = 0.01
        with anyio.move_on_after(HANDOVER_TIMEOUT):
            while True:
                holder = QemuDriver(self.uri, LocalHost(), self.state_dir, bus=self.bus)
                holder.peers = self.peers
                try:
                    await holder.open()
                except ConnectionLockedError:
                    await holder.close()
                except BaseException:
                    await holder.close()
                    raise
                else:
                    await self._serve(holder)
                    return
                client = ClientDriver(self.uri, self.state_dir, bus=self.bus, on_lost=self._lost)
                try:
                    await client.open()
                except (OSError, PeerClosedError):  # not listening yet, or it is going away right now
                    await client.close()
                except BaseException:
                    await client.close()
                    raise
                else:
                    self._inner = client
                    self._ready.set()
                    return
                await anyio.sleep(delay)
                delay = min(delay * 2, 0.5)
        raise ConnectionLockedError(
            f"another avirt program holds the state directory {self.state_dir} but does not serve it "
            f"(nothing answered on {self.state_dir}/avirt.sock within {HANDOVER_TIMEOUT:g} s)")

    async def _serve(self, holder: QemuDriver) -> None:
        self._inner = holder
        server = Server(holder, self.state_dir)
        try:
            await server.open()
        except (OSError, HostError) as e:  # the guests are this program's all the same; others cannot join
            log.warning("cannot serve the state directory to other programs on %s: %s", server.path, e)
        else:
            self._server = server
        self._ready.set()

    def _lost(self) -> None:
        if not self._closing:
            self._ready = anyio.Event()
            self._tasks.start_soon(self._hand_over, name="served-hand-over")

    async def _hand_over(self) -> None:
        old, self._inner = self._inner, None
        for link in self._links.values():
            link.scope.cancel()
            link.inner = None
        if old is not None:
            await old.close()
        if self.gap_loses_events:
            self.bus.lose(None)
        try:
            await self._attach()
        except Exception as e:
            log.error("the controller of %s went away and no other took over: %s", self.state_dir, e)
            return
        log.info("%s: now %s", self.state_dir, "the controller" if self.serving else "a client of a new one")
        for link in list(self._links.values()):
            await self._relink(link)

    async def _driver(self) -> Driver:
        if self._closing:  # (a task of another connection, such as a migration's, may still call in)
            raise OperationInvalidError(f"the connection to {self.state_dir} is closed")
        if self._inner is None:
            try:
                with anyio.fail_after(HANDOVER_TIMEOUT):
                    await self._ready.wait()
            except TimeoutError:
                raise ControllerGoneError(f"no controller took over the state directory {self.state_dir}") \
                    from None
        assert self._inner is not None
        return self._inner

    # -- a client's block jobs --------------------------------------------------------------------------

    def _job(self, name: str, inner: BlockJob | None) -> BlockJob | None:
        """The job to give the caller: the controller's own while this program is it, else one of ours
        that follows the controller's."""
        if inner is None or self._server is not None:
            return inner
        link = self._links.get(inner.id)
        if link is None:
            outer = BlockJob(self, id=inner.id, disk=inner.disk, kind=inner.kind, offline=inner.offline,
                             bandwidth=inner.bandwidth, two_phase=inner.two_phase)
            link = self._links[inner.id] = _Link(outer, name, None)
        self._follow(link, inner)
        return link.outer

    def _follow(self, link: _Link, inner: BlockJob) -> None:
        link.scope.cancel()
        link.inner, link.scope = inner, anyio.CancelScope()
        self._tasks.start_soon(self._mirror, link, name=f"served-mirror-{inner.id}")

    async def _mirror(self, link: _Link) -> None:
        inner, outer = link.inner, link.outer
        assert inner is not None
        with link.scope:
            async for phase in inner.phases():
                if phase is JobPhase.CONCLUDED:
                    assert inner.status is not None
                    outer.conclude(inner.status, inner.error, progress=inner.final_progress)
                    self._links.pop(outer.id, None)
                elif phase is JobPhase.STANDBY:
                    outer.unready()
                else:
                    outer.set_phase(phase)

    async def _relink(self, link: _Link) -> None:
        """After a hand-over: the same job on the new controller, or the news that it is gone."""
        if link.outer.ended:
            return
        try:
            inner = await (await self._driver()).block_job(link.domain, link.outer.disk)
        except Exception as e:
            inner, why = None, str(e)
        else:
            why = "the new controller knows no such job"
        if inner is not None and inner.id == link.outer.id:
            self._follow(link, inner)  # the new controller's own job, or the client driver's copy of it
            return
        link.outer.conclude(BlockJobStatus.FAILED, f"its controller went away; its outcome is unknown: {why}")
        self._links.pop(link.outer.id, None)

    async def _linked(self, job: BlockJob) -> BlockJob:
        link = self._links.get(job.id)
        while link is not None and link.inner is None:  # a hand-over is under way
            await self._ready.wait()
            link = self._links.get(job.id)
        if link is None or link.inner is None:
            raise ControllerGoneError(f"{job.id}: the controller that ran it is gone")
        return link.inner

    async def job_progress(self, job: BlockJob) -> tuple[int, int]:
        info = await (await self._linked(job)).info()
        return info.cur, info.end

    async def job_set_speed(self, job: BlockJob, bandwidth: int) -> None:
        await (await self._linked(job)).set_speed(bandwidth)

    async def job_complete(self, job: BlockJob) -> None:
        await (await self._linked(job)).pivot()

    async def job_cancel(self, job: BlockJob) -> None:
        await (await self._linked(job)).abort()

    # -- the Driver interface: the current controller's ------------------------------------------------

    async def capabilities(self) -> dict[str, Any]:
        return await (await self._driver()).capabilities()

    async def define_xml(self, xml: str) -> DomainRef:
        return await (await self._driver()).define_xml(xml)

    async def create_xml(self, xml: str, *, paused: bool) -> DomainRef:
        return await (await self._driver()).create_xml(xml, paused=paused)

    async def lookup(self, name_or_uuid: str) -> DomainRef:
        return await (await self._driver()).lookup(name_or_uuid)

    async def list_domains(self) -> list[DomainRef]:
        return await (await self._driver()).list_domains()

    async def undefine(self, name: str) -> None:
        await (await self._driver()).undefine(name)

    async def start(self, name: str, *, paused: bool) -> None:
        await (await self._driver()).start(name, paused=paused)

    async def shutdown(self, name: str, *, wait: float | None) -> None:
        await (await self._driver()).shutdown(name, wait=wait)

    async def destroy(self, name: str) -> None:
        await (await self._driver()).destroy(name)

    async def reboot(self, name: str) -> None:
        await (await self._driver()).reboot(name)

    async def reset(self, name: str) -> None:
        await (await self._driver()).reset(name)

    async def suspend(self, name: str) -> None:
        await (await self._driver()).suspend(name)

    async def resume(self, name: str) -> None:
        await (await self._driver()).resume(name)

    def start_task(self, func: Callable[[], Awaitable[None]], name: str) -> None:
        self._tasks.start_soon(func, name=name)

    async def migrate_begin(self, name: str, *, disks: bool = True, tls: bool = False,
                            ) -> tuple[str, str | None, bool, list[dict[str, Any]]]:
        return await (await self._driver()).migrate_begin(name, disks=disks, tls=tls)

    def location(self) -> str:
        return self.state_dir

    def forwarder(self) -> Forwarder:
        return Forwarder()  # the holder runs on this machine, whichever program it is

    async def migrate_prepare(self, xml: str, *, source: str, resume: bool, persistent_xml: str | None,
                              copies: list[dict[str, Any]] | None = None,
                              tuning: dict[str, Any] | None = None) -> tuple[str, str | None]:
        return await (await self._driver()).migrate_prepare(xml, source=source, resume=resume,
                                                            persistent_xml=persistent_xml, copies=copies,
                                                            tuning=tuning)

    async def migrate_ready(self, name: str, *, dest: str, bandwidth: int | None, max_downtime: int | None,
                            mirrors: bool = False, tuning: dict[str, Any] | None = None) -> None:
        await (await self._driver()).migrate_ready(name, dest=dest, bandwidth=bandwidth,
                                                   max_downtime=max_downtime, mirrors=mirrors, tuning=tuning)

    async def migrate_perform(self, name: str, uri: str, *, nbd: str | None = None,
                              copies: dict[str, str] | None = None) -> str:
        return await (await self._driver()).migrate_perform(name, uri, nbd=nbd, copies=copies)

    async def migrate_postcopy(self, name: str) -> None:
        await (await self._driver()).migrate_postcopy(name)

    async def migrate_progress(self, name: str) -> MigrationProgress:
        return await (await self._driver()).migrate_progress(name)

    async def migrate_cancel(self, name: str) -> None:
        await (await self._driver()).migrate_cancel(name)

    async def migrate_finish(self, name: str, *, ok: bool, resume: bool, persistent_xml: str | None) -> None:
        await (await self._driver()).migrate_finish(name, ok=ok, resume=resume, persistent_xml=persistent_xml)

    async def migrate_confirm(self, name: str, *, ok: bool, undefine: bool, resume: bool) -> None:
        await (await self._driver()).migrate_confirm(name, ok=ok, undefine=undefine, resume=resume)

    async def qemu_monitor_command(self, name: str, command: str, arguments: dict[str, Any] | None) -> Any:
        return await (await self._driver()).qemu_monitor_command(name, command, arguments)

    async def block_commit(self, name: str, disk: str, *, base: str | None, top: str | None,
                           shallow: bool, delete: bool, relative: bool, bandwidth: int | None,
                           pivot: bool, allow_shared_base: bool = False) -> BlockJob:
        job = self._job(name, await (await self._driver()).block_commit(
            name, disk, base=base, top=top, shallow=shallow, delete=delete, relative=relative,
            bandwidth=bandwidth, pivot=pivot, allow_shared_base=allow_shared_base))
        assert job is not None
        return job

    async def block_pull(self, name: str, disk: str, *, base: str | None, bandwidth: int | None) -> BlockJob:
        job = self._job(name, await (await self._driver()).block_pull(name, disk, base=base,
                                                                       bandwidth=bandwidth))
        assert job is not None
        return job

    async def block_copy(self, name: str, disk: str, dest: str, *, format: str, shallow: bool,
                         reuse_external: bool, bandwidth: int | None, pivot: bool) -> BlockJob:
        job = self._job(name, await (await self._driver()).block_copy(
            name, disk, dest, format=format, shallow=shallow, reuse_external=reuse_external,
            bandwidth=bandwidth, pivot=pivot))
        assert job is not None
        return job

    async def block_job(self, name: str, disk: str) -> BlockJob | None:
        return self._job(name, await (await self._driver()).block_job(name, disk))

    async def block_chain(self, name: str, disk: str) -> list[ImageInfo]:
        return await (await self._driver()).block_chain(name, disk)

    async def snapshot_disks(self, name: str, snapshot: str, disks: list[str] | None,
                             quiesce: bool = False) -> dict[str, str]:
        if quiesce:
            return await (await self._driver()).snapshot_disks(name, snapshot, disks, quiesce=True)
        return await (await self._driver()).snapshot_disks(name, snapshot, disks)

    async def agent_command(self, name: str, command: str, arguments: dict[str, Any] | None,
                            timeout: float) -> Any:
        return await (await self._driver()).agent_command(name, command, arguments, timeout)

    async def agent_shutdown(self, name: str, mode: str, timeout: float) -> None:
        await (await self._driver()).agent_shutdown(name, mode, timeout)

    async def state(self, name: str) -> tuple[DomainState, str]:
        return await (await self._driver()).state(name)

    async def info(self, name: str) -> DomainInfo:
        return await (await self._driver()).info(name)

    async def xml(self, name: str, *, inactive: bool) -> str:
        return await (await self._driver()).xml(name, inactive=inactive)

    async def all_domain_stats(self, groups: list[str], names: list[str] | None,
                               timeout: float) -> list[tuple[DomainRef, dict[str, Any]]]:
        return await (await self._driver()).all_domain_stats(groups, names, timeout)

    async def attach_device(self, name: str, xml: str, *, live: bool, config: bool) -> None:
        await (await self._driver()).attach_device(name, xml, live=live, config=config)

    async def detach_device(self, name: str, xml: str, *, live: bool, config: bool, timeout: float) -> None:
        await (await self._driver()).detach_device(name, xml, live=live, config=config, timeout=timeout)

    async def set_vcpus(self, name: str, count: int, *, live: bool, config: bool, timeout: float) -> None:
        await (await self._driver()).set_vcpus(name, count, live=live, config=config, timeout=timeout)

    async def change_media(self, name: str, disk: str, source: str | None, *, format: str, force: bool,
                           live: bool, config: bool) -> None:
        await (await self._driver()).change_media(name, disk, source, format=format, force=force, live=live,
                                                  config=config)

    async def set_block_threshold(self, name: str, dev: str, threshold: int) -> None:
        await (await self._driver()).set_block_threshold(name, dev, threshold)

    async def metadata(self, name: str, uri: str, *, inactive: bool) -> str | None:
        return await (await self._driver()).metadata(name, uri, inactive=inactive)

    async def set_metadata(self, name: str, uri: str, element: str | None, *, live: bool,
                           config: bool) -> None:
        await (await self._driver()).set_metadata(name, uri, element, live=live, config=config)

    async def set_link(self, name: str, interface: str, up: bool) -> None:
        await (await self._driver()).set_link(name, interface, up)

    async def set_memory(self, name: str, kib: int, *, live: bool, config: bool) -> None:
        await (await self._driver()).set_memory(name, kib, live=live, config=config)

    async def interface_addresses(self, name: str, source: str) -> list[InterfaceAddresses]:
        return await (await self._driver()).interface_addresses(name, source)

    async def define_network(self, xml: str) -> DomainRef:
        return await (await self._driver()).define_network(xml)

    async def lookup_network(self, name_or_uuid: str) -> DomainRef:
        return await (await self._driver()).lookup_network(name_or_uuid)

    async def list_networks(self) -> list[DomainRef]:
        return await (await self._driver()).list_networks()

    async def network_start(self, name: str) -> None:
        await (await self._driver()).network_start(name)

    async def network_destroy(self, name: str) -> None:
        await (await self._driver()).network_destroy(name)

    async def network_undefine(self, name: str) -> None:
        await (await self._driver()).network_undefine(name)

    async def network_xml(self, name: str, *, inactive: bool) -> str:
        return await (await self._driver()).network_xml(name, inactive=inactive)

    async def network_info(self, name: str) -> dict[str, Any]:
        return await (await self._driver()).network_info(name)

    async def network_set_autostart(self, name: str, autostart: bool) -> None:
        await (await self._driver()).network_set_autostart(name, autostart)

    async def network_dhcp_leases(self, name: str) -> list[DHCPLease]:
        return await (await self._driver()).network_dhcp_leases(name)
