"""A client's side: a :class:`~avirt.drivers.base.Driver` whose every call goes to the controller that
holds the state directory (:mod:`.server`), so that ``Connection`` and ``Domain`` work unchanged.

:mod:`.shared` makes one when the state directory's lock is taken: the program that holds it serves,
every other program is a client. A :class:`ClientDriver` owns one :class:`~avirt.rpc.Peer` on the
server's socket for its lifetime and two kinds of background work, both in its own task owner:

* the controller's events, streamed once per connection and forwarded into this connection's own bus,
  so subscriptions and streams behave as on the controller (events the controller dropped for this
  client arrive as ``EventsLostError``);
* one watch per block job the client holds, which moves the client's :class:`~avirt.jobs.BlockJob`
  through the phases the controller reports: ``await job``, ``wait_ready()`` and ``pivot()`` work as on
  the controller.

When the controller goes away, calls in flight fail with :class:`~avirt.rpc.PeerClosedError` (a
:class:`~avirt.errors.ControllerGoneError`) and ``on_lost`` is called, for :mod:`.shared` to find the next
controller.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import Any

import anyio
from anyio.abc import ByteStream

from avirt.drivers.base import DomainRef, Driver
from avirt.drivers.qemu.state import served_socket
from avirt.errors import AvirtError, InvalidXMLError, ProtocolVersionError
from avirt.events.bus import EventBus
from avirt.events.model import Event
from avirt.hosts.local import LocalHost
from avirt.jobs import BlockJob
from avirt.models import DomainInfo, DomainState, ImageInfo, InterfaceAddresses, MigrationProgress
from avirt.networks.model import DHCPLease
from avirt.rpc import Lost, Peer, PeerClosedError
from avirt.served import wire
from avirt.served.server import PROTOCOL
from avirt.tasks import TaskOwner

__all__ = ["ClientDriver"]

log = logging.getLogger(__name__)

#: How long the controller may take to confirm the event subscription of a new client.
SUBSCRIBE_TIMEOUT = 30.0


class ClientDriver(Driver):
    def __init__(self, uri: str, state_dir: str, *, bus: EventBus | None = None,
                 on_lost: Callable[[], None] | None = None,
                 lost_error: Callable[[str], AvirtError] | None = None,
                 on_event: Callable[[Event], None] | None = None) -> None:
        self.uri = uri
        self.state_dir = state_dir
        self.path = os.path.join(state_dir, "avirt.sock")
        self._tasks = TaskOwner()
        self._own_bus = bus is None
        self.bus = EventBus(self._tasks) if bus is None else bus
        self._on_lost = on_lost
        # What a call fails with when the connection ends under it: PeerClosedError (a
        # ControllerGoneError) unless the transport has a more telling error of its own (a lost SSH host).
        self._lost_error = lost_error
        self._on_event = on_event  # sees each forwarded event first, in the reader's task (must not block)
        self._peer: Peer | None = None
        self._closing = False
        self._jobs: dict[str, BlockJob] = {}
        self._subscribed = anyio.Event()

    async def open(self) -> None:
        """Connect and greet the controller; OSError if nobody listens, PeerClosedError if it hung up."""
        self.path = await served_socket(LocalHost(), self.state_dir)
        await self.open_stream(await anyio.connect_unix(self.path))

    async def open_stream(self, stream: ByteStream) -> None:
        """Greet the controller at the other end of ``stream`` (already connected: a socket, or a remote
        ``avirt serve --stdio``'s standard input and output), which this driver owns from now on.
        PeerClosedError if it hung up; ProtocolVersionError if it speaks another protocol."""
        await self._tasks.open()
        ready = anyio.Event()
        self._tasks.start_soon(self._run, stream, ready, name="served-client")
        await ready.wait()
        answer = await self._call("hello", protocol=PROTOCOL)
        theirs = answer.get("protocol") if isinstance(answer, dict) else None
        if theirs != PROTOCOL:  # a server must refuse another version itself; this one did not
            raise ProtocolVersionError(f"the controller speaks protocol version {theirs}, the client "
                                       f"{PROTOCOL}: use the same avirt version on both sides",
                                       server=theirs if isinstance(theirs, int) else None, client=PROTOCOL)
        self._tasks.start_soon(self._forward_events, name="served-events")
        with anyio.fail_after(SUBSCRIBE_TIMEOUT):
            await self._subscribed.wait()

    async def _run(self, stream: Any, ready: anyio.Event) -> None:
        async with Peer(stream, name="controller") as peer:
            self._peer = peer
            ready.set()
            await peer.wait_closed()
        if not self._closing:
            log.info("the controller of %s went away: %s", self.path, peer.closed_because)
            if self._on_lost is not None:
                self._on_lost()

    async def close(self) -> None:
        self._closing = True
        if self._own_bus:
            self.bus.close()
        await self._tasks.aclose()

    async def _call(self, method: str, **kwargs: Any) -> Any:
        try:
            if self._peer is None:
                raise PeerClosedError("not connected")
            return await self._peer.call(method, kwargs)
        except PeerClosedError as e:
            if self._lost_error is None:
                raise
            raise self._lost_error(method) from e

    async def _forward_events(self) -> None:
        assert self._peer is not None
        try:
            # Forwarded by the connection's reader itself, so that an event the controller emitted before
            # answering a call is on this bus before the caller sees the answer, as on the controller.
            async with self._peer.stream("events", {}, on_item=self._forward) as items:
                async for _ in items:
                    pass
        except PeerClosedError:
            pass

    def _forward(self, item: Any) -> None:
        if item == {"subscribed": True}:
            self._subscribed.set()
        elif isinstance(item, Lost):
            self.bus.lose(item.count or None)
        else:
            event = wire.event_from(item)
            if self._on_event is not None:
                self._on_event(event)
            self.bus.forward(event)

    # -- block jobs: the client's copies ------------------------------------------------------------------

    def _job(self, data: Any) -> BlockJob | None:
        if data is None:
            return None
        known = self._jobs.get(str(data.get("id")))
        if known is not None:
            wire.apply_phase(known, data)
            return known
        job = wire.job_from(self, data)
        if not job.ended:
            self._jobs[job.id] = job
            self._tasks.start_soon(self._watch, job, name=f"served-job-{job.id}")
        return job

    async def _watch(self, job: BlockJob) -> None:
        assert self._peer is not None
        try:
            async with self._peer.stream("job_watch", {"id": job.id}) as phases:
                async for data in phases:
                    wire.apply_phase(job, data)
        except PeerClosedError as e:
            log.warning("block job %s: its controller went away (%s)", job.id, e)
        finally:
            self._jobs.pop(job.id, None)

    async def job_progress(self, job: BlockJob) -> tuple[int, int]:
        cur, end = await self._call("job_progress", id=job.id)
        return int(cur), int(end)

    async def job_set_speed(self, job: BlockJob, bandwidth: int) -> None:
        await self._call("job_set_speed", id=job.id, bandwidth=bandwidth)

    async def job_complete(self, job: BlockJob) -> None:
        await self._call("job_complete", id=job.id)

    async def job_cancel(self, job: BlockJob) -> None:
        await self._call("job_cancel", id=job.id)

    # -- the Driver interface ------------------------------------------------------------------------------

    async def capabilities(self) -> dict[str, Any]:
        return dict(await self._call("capabilities"))

    async def define_xml(self, xml: str) -> DomainRef:
        return wire.ref_from(await self._call("define_xml", xml=_sendable(xml)))

    async def create_xml(self, xml: str, *, paused: bool) -> DomainRef:
        return wire.ref_from(await self._call("create_xml", xml=_sendable(xml), paused=paused))

    async def lookup(self, name_or_uuid: str) -> DomainRef:
        return wire.ref_from(await self._call("lookup", name_or_uuid=name_or_uuid))

    async def list_domains(self) -> list[DomainRef]:
        return [wire.ref_from(r) for r in await self._call("list_domains")]

    async def undefine(self, name: str) -> None:
        await self._call("undefine", name=name)

    async def start(self, name: str, *, paused: bool) -> None:
        await self._call("start", name=name, paused=paused)

    async def shutdown(self, name: str, *, wait: float | None) -> None:
        await self._call("shutdown", name=name, wait=wait)

    async def destroy(self, name: str) -> None:
        await self._call("destroy", name=name)

    async def reboot(self, name: str) -> None:
        await self._call("reboot", name=name)

    async def reset(self, name: str) -> None:
        await self._call("reset", name=name)

    async def suspend(self, name: str) -> None:
        await self._call("suspend", name=name)

    async def resume(self, name: str) -> None:
        await self._call("resume", name=name)

    async def qemu_monitor_command(self, name: str, command: str, arguments: dict[str, Any] | None) -> Any:
        return await self._call("qemu_monitor_command", name=name, command=command, arguments=arguments)

    async def block_commit(self, name: str, disk: str, *, base: str | None, top: str | None,
                           shallow: bool, delete: bool, relative: bool, bandwidth: int | None,
                           pivot: bool, allow_shared_base: bool = False) -> BlockJob:
        job = self._job(await self._call(
            "block_commit", name=name, disk=disk, base=base, top=top, shallow=shallow, delete=delete,
            relative=relative, bandwidth=bandwidth, pivot=pivot, allow_shared_base=allow_shared_base))
        assert job is not None
        return job

    async def block_pull(self, name: str, disk: str, *, base: str | None, bandwidth: int | None) -> BlockJob:
        job = self._job(await self._call("block_pull", name=name, disk=disk, base=base, bandwidth=bandwidth))
        assert job is not None
        return job

    async def block_copy(self, name: str, disk: str, dest: str, *, format: str, shallow: bool,
                         reuse_external: bool, bandwidth: int | None, pivot: bool) -> BlockJob:
        job = self._job(await self._call(
            "block_copy", name=name, disk=disk, dest=dest, format=format, shallow=shallow,
            reuse_external=reuse_external, bandwidth=bandwidth, pivot=pivot))
        assert job is not None
        return job

    async def block_job(self, name: str, disk: str) -> BlockJob | None:
        return self._job(await self._call("block_job", name=name, disk=disk))

    async def block_chain(self, name: str, disk: str) -> list[ImageInfo]:
        return [wire.info_from(ImageInfo, i) for i in await self._call("block_chain", name=name, disk=disk)]

    async def snapshot_disks(self, name: str, snapshot: str, disks: list[str] | None,
                             quiesce: bool = False) -> dict[str, str]:
        extra = {"quiesce": True} if quiesce else {}  # a controller without quiescing refuses the name
        return dict(await self._call("snapshot_disks", name=name, snapshot=snapshot, disks=disks, **extra))

    async def agent_command(self, name: str, command: str, arguments: dict[str, Any] | None,
                            timeout: float) -> Any:
        return await self._call("agent_command", name=name, command=command, arguments=arguments,
                                timeout=timeout)

    async def agent_shutdown(self, name: str, mode: str, timeout: float) -> None:
        await self._call("agent_shutdown", name=name, mode=mode, timeout=timeout)

    async def state(self, name: str) -> tuple[DomainState, str]:
        state, reason = await self._call("state", name=name)
        return DomainState(state), str(reason)

    async def info(self, name: str) -> DomainInfo:
        info: DomainInfo = wire.info_from(DomainInfo, await self._call("info", name=name))
        return info

    async def xml(self, name: str, *, inactive: bool) -> str:
        return str(await self._call("xml", name=name, inactive=inactive))

    async def all_domain_stats(self, groups: list[str], names: list[str] | None,
                               timeout: float) -> list[tuple[DomainRef, dict[str, Any]]]:
        found = await self._call("all_domain_stats", groups=groups, names=names, timeout=timeout)
        return [(wire.ref_from(ref), dict(params)) for ref, params in found]

    async def attach_device(self, name: str, xml: str, *, live: bool, config: bool) -> None:
        await self._call("attach_device", name=name, xml=_sendable(xml), live=live, config=config)

    async def detach_device(self, name: str, xml: str, *, live: bool, config: bool, timeout: float) -> None:
        await self._call("detach_device", name=name, xml=_sendable(xml), live=live, config=config,
                         timeout=timeout)

    async def set_vcpus(self, name: str, count: int, *, live: bool, config: bool, timeout: float) -> None:
        await self._call("set_vcpus", name=name, count=count, live=live, config=config, timeout=timeout)

    async def change_media(self, name: str, disk: str, source: str | None, *, format: str, force: bool,
                           live: bool, config: bool) -> None:
        await self._call("change_media", name=name, disk=disk, source=source, format=format, force=force,
                         live=live, config=config)

    async def set_block_threshold(self, name: str, dev: str, threshold: int) -> None:
        await self._call("set_block_threshold", name=name, dev=dev, threshold=threshold)

    async def metadata(self, name: str, uri: str, *, inactive: bool) -> str | None:
        text = await self._call("metadata", name=name, uri=uri, inactive=inactive)
        return None if text is None else str(text)

    async def set_metadata(self, name: str, uri: str, element: str | None, *, live: bool,
                           config: bool) -> None:
        await self._call("set_metadata", name=name, uri=uri, element=element, live=live, config=config)

    async def set_link(self, name: str, interface: str, up: bool) -> None:
        await self._call("set_link", name=name, interface=interface, up=up)

    async def set_memory(self, name: str, kib: int, *, live: bool, config: bool) -> None:
        await self._call("set_memory", name=name, kib=kib, live=live, config=config)

    async def interface_addresses(self, name: str, source: str) -> list[InterfaceAddresses]:
        return [wire.addresses_from(a) for a in await self._call("interface_addresses", name=name,
                                                                 source=source)]

    async def define_network(self, xml: str) -> DomainRef:
        return wire.ref_from(await self._call("define_network", xml=_sendable(xml)))

    async def lookup_network(self, name_or_uuid: str) -> DomainRef:
        return wire.ref_from(await self._call("lookup_network", name_or_uuid=name_or_uuid))

    async def list_networks(self) -> list[DomainRef]:
        return [wire.ref_from(r) for r in await self._call("list_networks")]

    async def network_start(self, name: str) -> None:
        await self._call("network_start", name=name)

    async def network_destroy(self, name: str) -> None:
        await self._call("network_destroy", name=name)

    async def network_undefine(self, name: str) -> None:
        await self._call("network_undefine", name=name)

    async def network_xml(self, name: str, *, inactive: bool) -> str:
        return str(await self._call("network_xml", name=name, inactive=inactive))

    async def network_info(self, name: str) -> dict[str, Any]:
        return dict(await self._call("network_info", name=name))

    async def network_set_autostart(self, name: str, autostart: bool) -> None:
        await self._call("network_set_autostart", name=name, autostart=autostart)

    async def network_dhcp_leases(self, name: str) -> list[DHCPLease]:
        return [wire.lease_from(lease) for lease in await self._call("network_dhcp_leases", name=name)]


    # -- migration: each phase runs in the controller of this state directory ------------------------------

    async def migrate_begin(self, name: str, *, disks: bool = True, tls: bool = False,
                            ) -> tuple[str, str | None, bool, list[dict[str, Any]]]:
        live, persistent, running, found = await self._call("migrate_begin", name=name, disks=disks, tls=tls)
        return str(live), None if persistent is None else str(persistent), bool(running), list(found)

    def location(self) -> str:
        return self.state_dir

    async def migrate_prepare(self, xml: str, *, source: str, resume: bool, persistent_xml: str | None,
                              copies: list[dict[str, Any]] | None = None,
                              tuning: dict[str, Any] | None = None) -> tuple[str, str | None]:
        extra = {"tuning": tuning} if tuning else {}  # only when used: a holder without it still serves
        uri, nbd = await self._call("migrate_prepare", xml=_sendable(xml), source=source, resume=resume,
                                    persistent_xml=persistent_xml, copies=copies, **extra)
        return str(uri), None if nbd is None else str(nbd)

    async def migrate_ready(self, name: str, *, dest: str, bandwidth: int | None, max_downtime: int | None,
                            mirrors: bool = False, tuning: dict[str, Any] | None = None) -> None:
        extra = {"tuning": tuning} if tuning else {}
        await self._call("migrate_ready", name=name, dest=dest, bandwidth=bandwidth,
                         max_downtime=max_downtime, mirrors=mirrors, **extra)

    async def migrate_perform(self, name: str, uri: str, *, nbd: str | None = None,
                              copies: dict[str, str] | None = None) -> str:
        return str(await self._call("migrate_perform", name=name, uri=uri, nbd=nbd, copies=copies))

    async def migrate_postcopy(self, name: str) -> None:
        await self._call("migrate_postcopy", name=name)

    async def migrate_progress(self, name: str) -> MigrationProgress:
        result: MigrationProgress = wire.info_from(MigrationProgress,
                                                   await self._call("migrate_progress", name=name))
        return result

    async def migrate_cancel(self, name: str) -> None:
        await self._call("migrate_cancel", name=name)

    async def migrate_finish(self, name: str, *, ok: bool, resume: bool, persistent_xml: str | None) -> None:
        await self._call("migrate_finish", name=name, ok=ok, resume=resume, persistent_xml=persistent_xml)

    async def migrate_confirm(self, name: str, *, ok: bool, undefine: bool, resume: bool) -> None:
        await self._call("migrate_confirm", name=name, ok=ok, undefine=undefine, resume=resume)


def _sendable(xml: str) -> str:
    """A document the wire can carry: lone surrogates (os.fsdecode's undecodable bytes) are refused here,
    with the error the controller's parser would give, since msgpack cannot encode them."""
    if isinstance(xml, str):
        try:
            xml.encode("utf-8")
        except UnicodeEncodeError as e:
            raise InvalidXMLError(f"the document is not valid Unicode: {e.reason}", None) from None
    return xml
