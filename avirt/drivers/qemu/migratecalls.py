"""The QEMU driver's side of each migration phase, and how a controller killed mid-migration is resolved.

Mixed into :class:`~avirt.drivers.qemu.driver.QemuDriver`; the order of the phases is
:mod:`avirt.migration`'s, the QMP of each is :mod:`.migration`'s.

**Who has the guest: one record per side, one commit point.** Each side keeps ``run/<name>/migration.json``
while it takes part (it goes with the run directory when that QEMU ends). The destination writes its
record (the source's state directory, whether to run the guest, the definition to keep) before it
listens; the source writes ``phase: perform`` before QEMU sends a byte and ``phase: committed`` once
QEMU has sent everything. That write is the commit point: before it the guest belongs to the source,
after it to the destination. Nothing else decides, so two controllers that never talk again still agree:

* a source controller that starts and finds ``committed`` ends its QEMU (the guest went away); finds
  ``perform``: cancels what its QEMU still sends, writes ``aborted`` and lets the guest run on;
* a destination controller that finds its record (at start, or when nobody finished the migration within
  :data:`ORPHAN_GRACE` after its QEMU received everything) reads the source's record: ``committed``, or
  none left while its own QEMU holds the whole guest (the source ended after committing), runs the
  guest; ``aborted`` ends its QEMU; ``perform`` waits for the source's controller to decide.

So the guest never runs in two places; while a source controller is away after ``perform`` it may wait,
paused, at both, until one comes back. The destination does not take its images (QEMU's
``late-block-activate``) until it runs the guest, so an aborted source can take them back.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from typing import TYPE_CHECKING, Any

import anyio

from avirt.config import domain_to_xml
from avirt.drivers.base import DomainRef, Driver, Records
from avirt.drivers.qemu import migration
from avirt.drivers.qemu.state import StateDir
from avirt.errors import (
    AvirtError,
    DomainExistsError,
    DomainNotFoundError,
    InsufficientSpaceError,
    MigrationError,
    OperationInvalidError,
    QMPError,
)
from avirt.hosts.forwarding import Forwarder
from avirt.models import DomainState, MigrationProgress
from avirt.offline.qemu_img import create_image
from avirt.tasks import alongside

if TYPE_CHECKING:
    from avirt.config.model import DomainConfig
    from avirt.drivers.qemu.blockjobs import OnlineJobs
    from avirt.drivers.qemu.guest import Guest
    from avirt.hosts.base import Host
    from avirt.qmp.monitor import Monitor
    from avirt.tasks import TaskOwner

log = logging.getLogger(__name__)

#: How long a destination whose QEMU holds the whole guest waits for its finish before it asks the
#: source's record itself (the source's controller may be gone).
ORPHAN_GRACE = 10.0
#: How often an orphaned side reads the other side's record again while it says nothing yet.
ORPHAN_POLL = 1.0


class MigrationCalls:
    """The migration phases of the QEMU driver (see the module docstring)."""

    host: Host
    files: StateDir
    guests: Records[Guest]
    tasks: TaskOwner
    jobs: OnlineJobs
    #: The guests that take part in a migration now (as source or destination) -> its status.
    migrations: dict[str, migration.Watch]
    peers: Callable[[str], AbstractAsyncContextManager[Driver]] | None

    if TYPE_CHECKING:
        def _find(self, name: str) -> Guest: ...
        def monitor(self, guest: Guest) -> Monitor: ...
        async def _stable(self, xml: str) -> DomainConfig: ...
        def _new_guest(self, name: str, uuid: str, definition: DomainConfig | None) -> Guest: ...
        def _check_uuid_free(self, cfg: DomainConfig, same: Guest | None) -> None: ...
        async def _start(self, guest: Guest, cfg: DomainConfig, *, paused: bool,
                         incoming: bool = False) -> None: ...
        async def _terminate(self, guest: Guest, reason: str) -> None: ...
        async def define_xml(self, xml: str) -> DomainRef: ...
        async def undefine(self, name: str) -> None: ...

    def start_task(self, func: Callable[[], Awaitable[None]], name: str) -> None:
        self.tasks.start_soon(func, name=name)

    def location(self) -> str:
        return self.files.root

    def forwarder(self) -> Forwarder:
        return self.host.forwarder()

    # -- the phases ----------------------------------------------------------------------------------------

    async def migrate_begin(self, name: str, *, disks: bool = True, tls: bool = False,
                            ) -> tuple[str, str | None, bool, list[dict[str, Any]]]:
        """Source: the live definition to start the destination from, the persistent one (None for a
        transient domain), whether the guest's CPUs run, and the disks a storage copy would move (with
        ``disks`` False none: shared storage needs no sizes from QEMU, so QEMU is not asked). With
        ``tls``, this side's TLS client files must be there (so a side without them is refused before
        the destination starts anything)."""
        guest = self._find(name)
        if guest.state not in (DomainState.RUNNING, DomainState.PAUSED) or guest.live is None:
            raise OperationInvalidError(f"cannot migrate domain '{name}': it is {guest.state.value}")
        if name in self.migrations:
            raise OperationInvalidError(f"domain '{name}' is already migrating")
        busy = [disk for disk in guest.chains if self.jobs.job_on(guest, disk) is not None]
        if busy:
            raise OperationInvalidError(f"cannot migrate domain '{name}': a block job runs on "
                                        f"{', '.join(busy)}")
        if tls:
            await self._tls_dir("client")
        persistent = None if guest.definition is None else domain_to_xml(guest.definition)
        return domain_to_xml(guest.live), persistent, guest.state is DomainState.RUNNING, \
            (await self._copyable(guest) if disks else [])

    async def _copyable(self, guest: Guest) -> list[dict[str, Any]]:
        """The disks a storage copy moves (writable ones with an image), each with what the destination
        needs to make its image: the top's format and size, the layer below it, and the bytes each layer
        holds (what a copy of the top alone, or of the whole chain, can write at most)."""
        assert guest.live is not None
        images = {node["node-name"]: node["image"]
                  for node in await self.monitor(guest).execute("query-named-block-nodes", {"flat": True})
                  if "node-name" in node and "image" in node}
        sizes = {node: int(image["virtual-size"]) for node, image in images.items()}
        held = {node: int(image.get("actual-size", 0)) for node, image in images.items()}
        disks = []
        for disk in guest.live.disks:
            layers = guest.chains.get(disk.target)
            if disk.device != "disk" or disk.readonly or disk.shareable or not layers:
                continue
            top, below = layers[-1], (layers[-2] if len(layers) > 1 else None)
            disks.append({"target": disk.target, "path": top.path, "format": top.format,
                          "size": sizes.get(top.node, 0), "backing": below and below.path,
                          "backing_format": below and below.format, "held_top": held.get(top.node, 0),
                          "held_chain": sum(held.get(layer.node, 0) for layer in layers)})
        return disks

    async def migrate_prepare(self, xml: str, *, source: str, resume: bool, persistent_xml: str | None,
                              copies: list[dict[str, Any]] | None = None,
                              tuning: dict[str, Any] | None = None) -> tuple[str, str | None]:
        """Destination: QEMU started for the incoming guest, listening; the URI to send it to, and with
        storage ``copies`` (``_copyable``'s entries with this side's paths and a ``sync``) the NBD socket
        its new images are exported on. ``source``: the source's state directory, whose record says who
        has the guest."""
        cfg = await self._stable(xml)
        copies = copies or []
        tls = await self._tls_dir("server") if (tuning or {}).get("tls") else None
        guest = self.guests.get(cfg.name)
        # The guest's own shut-off definition may wait here (it came from here, or will be kept here).
        if guest is not None and (guest.uuid != cfg.uuid or guest.active):
            raise DomainExistsError(f"cannot migrate domain '{cfg.name}' here: a domain of that name "
                                    f"{'runs' if guest.active else 'exists with another UUID'}")
        self._check_uuid_free(cfg, guest)
        if guest is None:
            guest = self.guests[cfg.name] = self._new_guest(cfg.name, cfg.uuid, None)
        watch = self.migrations[cfg.name] = migration.Watch()
        watch.kept_xml = persistent_xml
        created: list[str] = []
        nbd = None
        try:
            async with guest.lock:
                # Before QEMU opens them; an existing file is never overwritten. (The free space is
                # looked at meanwhile, and refuses first.)
                taken = await alongside(self._existing(copies), self._check_copy_space(copies))
                for copy in copies:
                    if copy["path"] in taken:
                        raise OperationInvalidError(f"cannot copy disk {copy['target']} to {copy['path']}: "
                                                    "the file exists")
                for copy in copies:
                    await create_image(self.host, copy["path"], copy["format"], size=copy["size"],
                                       backing=copy.get("backing"), backing_format=copy.get("backing_format"))
                    created.append(copy["path"])
                watch.created = created
                await self._start(guest, cfg, paused=True, incoming=True)
                try:
                    monitor = self.monitor(guest)

                    async def configure() -> None:
                        if tls is not None:
                            await migration.load_tls(monitor, tls, "server")
                        await migration.configure_incoming(monitor, tuning)

                    # The record is on disk before QEMU listens; configuring it meanwhile commits nothing.
                    await alongside(configure(), self.files.write_migration(cfg.name, {
                        "role": "destination", "source": source, "resume": resume,
                        "persistent_xml": persistent_xml, "created": created}))
                    sockets = await self.files.socket_dir(cfg.name)
                    uri = await migration.listen(monitor, os.path.join(sockets, "migrate.sock"))
                    if copies:
                        nbd = os.path.join(sockets, "nbd.sock")
                        await migration.export_disks(monitor, nbd, {
                            c["target"]: guest.chains[c["target"]][-1].node for c in copies},
                            tls=tls is not None)
                        watch.exports = True
                except (QMPError, OSError) as e:
                    await self._terminate(guest, "failed")
                    raise MigrationError(f"the destination could not listen: {e}") from None
        except BaseException:
            if self.migrations.get(cfg.name) is watch:
                del self.migrations[cfg.name]
            if not guest.active and not guest.persistent:
                self.guests.pop(cfg.name, None)
            with anyio.CancelScope(shield=True):
                for path in created:
                    await self.host.remove_tree(path)
            raise
        watch.finished = anyio.Event()
        self.tasks.start_soon(self._watch_orphan, guest, watch, name=f"migration-orphan-{cfg.name}")
        return uri, nbd

    async def migrate_ready(self, name: str, *, dest: str, bandwidth: int | None, max_downtime: int | None,
                            mirrors: bool = False, tuning: dict[str, Any] | None = None) -> None:
        """Source, while the destination prepares: the record says ``perform`` (``dest``: the
        destination's state directory) and QEMU is configured to send (``mirrors``: storage mirrors will
        run first). Nothing is sent yet; a migration that goes no further is undone by
        :meth:`migrate_confirm` (ok=False), which marks the record aborted."""
        guest = self._find(name)
        tls_hostname = (tuning or {}).get("tls")
        tls = os.path.join(self.files.root, "tls") if tls_hostname else None  # its files: see begin
        watch = self.migrations[name] = migration.Watch()
        watch.mirror_speed, watch.tls_hostname = bandwidth, tls_hostname
        monitor = self.monitor(guest)
        async with guest.lock:
            record = watch.record = {"role": "source", "dest": dest, "phase": "perform",
                                     "resume": guest.state is DomainState.RUNNING}

            async def configure() -> None:
                if tls is not None:
                    await migration.load_tls(monitor, tls, "client")
                await migration.configure_send(monitor, bandwidth=bandwidth, max_downtime=max_downtime,
                                               mirrors=mirrors, tuning=tuning)

            # ``perform`` is on disk before QEMU sends a byte (a mirror's or the migration's); configuring
            # QEMU meanwhile sends nothing.
            await alongside(self.files.write_migration(name, record), configure())

    async def migrate_perform(self, name: str, uri: str, *, nbd: str | None = None,
                              copies: dict[str, str] | None = None) -> str:
        """Source, made ready (:meth:`migrate_ready`): send the guest; once QEMU has sent it all (the
        source is then paused), commit and return QEMU's status (completed, or postcopy-active after a
        switch; its figures: :meth:`migrate_progress`, until confirm ends this QEMU). ``copies`` (disk
        target -> "full" or "top"): the disks mirrored first into the destination's exports at ``nbd``."""
        guest = self._find(name)
        watch = self.migrations.get(name)
        if watch is None or watch.record is None:
            raise OperationInvalidError(f"domain '{name}' was not made ready to migrate")
        monitor = self.monitor(guest)
        async with guest.lock:
            guest.pause_cause = "migration"  # the STOP at the end of the migration
            try:
                if copies:
                    assert nbd is not None
                    await migration.mirror_disks(monitor, watch, nbd, {
                        target: (guest.chains[target][-1].node, sync) for target, sync in copies.items()},
                        watch.mirror_speed, watch.tls_hostname)
                status = await migration.send(monitor, watch, uri)
            except BaseException:
                with anyio.CancelScope(shield=True):
                    await self.files.write_migration(name, {**watch.record, "phase": "aborted"})
                    if watch.mirrors:
                        await migration.drop_mirrors(monitor, watch)
                raise
            finally:
                # A postcopy switch's STOP may come after QEMU said postcopy-active: it takes its cause.
                if not (watch.postcopy and guest.pause_cause == "postcopy"):
                    guest.pause_cause = None
            # The completed mirrors' NBD nodes stay: this QEMU ends at confirm (or, if the guest comes
            # back to it, confirm removes them).
            if not watch.postcopy:  # (a postcopy switch committed it already: migrate_postcopy)
                await self.files.write_migration(name, {**watch.record, "phase": "committed"})  # the commit
            return status

    async def _existing(self, copies: list[dict[str, Any]]) -> set[str]:
        """The paths among the copies' new images that exist already (all looked at at once)."""
        found: set[str] = set()

        async def look(path: str) -> None:
            if await self.host.exists(path):
                found.add(path)

        async with anyio.create_task_group() as group:
            for copy in copies:
                group.start_soon(look, copy["path"])
        return found

    async def _check_copy_space(self, copies: list[dict[str, Any]]) -> None:
        """Refuse a storage copy whose new images could outgrow their filesystems' free space: each
        can receive at most what the layers it copies hold (all of them with sync "full")."""
        by_dir: dict[str, list[dict[str, Any]]] = {}
        for copy in copies:
            by_dir.setdefault(os.path.dirname(copy["path"]) or ".", []).append(copy)
        for directory, group in by_dir.items():
            needed = sum(int(c.get("held_chain" if c.get("sync") == "full" else "held_top") or 0)
                         for c in group)
            available = await self.host.free_space(directory)
            if needed > available:
                raise InsufficientSpaceError(group[0]["path"], needed, available,
                                             doing="copy storage into")

    async def _tls_dir(self, endpoint: str) -> str:
        """This side's TLS directory (``<state_dir>/tls``), holding what ``endpoint`` needs, for QEMU."""
        directory = os.path.join(self.files.root, "tls")
        for file in migration.TLS_FILES[endpoint]:
            if not await self.host.exists(os.path.join(directory, file)):
                raise MigrationError(f"a TLS migration needs {os.path.join(directory, file)} on "
                                     f"{self.host.name} (this side is the TLS {endpoint})")
        return directory

    async def migrate_postcopy(self, name: str) -> None:
        """Source, during perform: switch to postcopy. The guest is the destination's from this moment
        (the record says ``postcopy``: the commit point of a postcopy migration), while this QEMU goes
        on serving its pages until QEMU says completed; nothing can undo it."""
        guest = self._find(name)
        watch = self.migrations.get(name)
        record = await self.files.read_migration(name)
        if watch is None or record is None or record.get("phase") != "perform":
            raise OperationInvalidError(f"domain '{name}' is not sending its memory: "
                                        "no postcopy to switch to")
        await self.files.write_migration(name, {**record, "phase": "postcopy"})
        guest.pause_cause = "postcopy"  # the source's STOP at the switch
        try:
            await migration.start_postcopy(self.monitor(guest), watch)
        except QMPError as e:
            guest.pause_cause = "migration"
            await self.files.write_migration(name, record)
            raise MigrationError(f"the migration of '{name}' cannot switch to postcopy: {e.desc}") from None

    async def migrate_progress(self, name: str) -> MigrationProgress:
        return await migration.progress(self.monitor(self._find(name)))

    async def migrate_cancel(self, name: str) -> None:
        await migration.cancel(self.monitor(self._find(name)))

    async def migrate_finish(self, name: str, *, ok: bool, resume: bool, persistent_xml: str | None) -> None:
        """Destination: with ``ok``, wait until the guest is loaded, run it (``resume``) and, with
        ``persistent_xml``, define it; else end the QEMU that waited for it. A finish that ran already
        (its caller lost the answer, or asks again) is done: asked again it does nothing, and it
        refuses to give the guest up."""
        try:
            guest = self._find(name)
        except DomainNotFoundError:
            if ok:
                raise
            return  # a transient guest whose QEMU has ended: nothing left to give up
        watch = self.migrations.get(name)
        if watch is not None and watch.finished is not None:
            watch.finished.set()  # the orphan watcher stands down: this is the finish it waited for
        if watch is None and guest.active and await self.files.read_migration(name) is None:
            if ok:
                return
            raise OperationInvalidError(f"domain '{name}' has arrived here and runs: too late to give it up")
        if not ok:
            await self._give_up_destination(guest)
            return
        if watch is not None:
            # The definition to keep is the one prepare was given (a source's next controller, which
            # finishes knowing only its own record, passes none).
            persistent_xml = watch.kept_xml
        else:  # this controller did not prepare it: the record says what was asked
            record = await self.files.read_migration(name)
            if record is None or not await self._holds_all(guest):
                await self._give_up_destination(guest)
                raise MigrationError(f"domain '{name}' is not a migration that arrived here whole")
            persistent_xml = record.get("persistent_xml")
        await self._run_arrived(guest, watch, resume=resume, persistent_xml=persistent_xml)

    async def migrate_confirm(self, name: str, *, ok: bool, undefine: bool, resume: bool) -> None:
        """Source: with ``ok`` the guest runs elsewhere now: end this QEMU (and, with ``undefine``, the
        definition); else let the guest run on here (``resume``: its CPUs ran before)."""
        guest = self._find(name)
        watch = self.migrations.pop(name, None)
        record = None if ok else await self.files.read_migration(name)
        if record is not None and record.get("phase") == "committed":
            # Committed, then finish failed, and the destination gave the guest back (the job asked it
            # first): the record must say so before the guest runs here again.
            record = {**record, "phase": "aborted"}
            await self.files.write_migration(name, record)
        async with guest.lock:
            if ok:
                if guest.active:
                    await self._terminate(guest, "migrated")
            else:
                if watch is not None and watch.mirrors and guest.active:
                    await migration.drop_mirrors(self.monitor(guest), watch)
                await self._resume_source(guest, resume)
        if record is not None and record.get("phase") == "perform":
            # Made ready, nothing sent (a send that fails says "aborted" itself): no destination can
            # hold the guest, so no record needs to tell one so.
            await self.files.write_migration(name, None)
        elif record is not None:
            self.tasks.start_soon(self._forget_aborted, guest, record, name=f"migration-forget-{name}")
        elif ok and undefine and guest.definition is not None:
            await self.undefine(name)

    # -- the two sides' last steps, shared by the phases and the recovery -----------------------------------

    async def _give_up_destination(self, guest: Guest) -> None:
        """Destination: the guest stays at the source: end this QEMU, remove the images made for it."""
        record = await self.files.read_migration(guest.name) or {}
        async with guest.lock:
            watch = self.migrations.pop(guest.name, None)
            if guest.active:
                await self._terminate(guest, "failed")
        for path in {*(record.get("created") or ()), *(watch.created if watch is not None else ())}:
            await self.host.remove_tree(str(path))

    async def _run_arrived(self, guest: Guest, watch: migration.Watch | None, *, resume: bool,
                           persistent_xml: str | None) -> None:
        """Destination: the guest is ours: wait until QEMU holds all of it, then run and keep it."""
        name = guest.name
        async with guest.lock:
            try:
                try:
                    if watch is not None and await migration.received(
                            self.monitor(guest), watch) == migration.POSTCOPY:
                        # Postcopy: the guest runs here now, its pages fetched from the source as it
                        # touches them, until QEMU has them all (however long that takes).
                        if resume:
                            await self._cont(guest, "postcopy")
                        await migration.received(self.monitor(guest), watch, postcopy=False, timeout=None)
                    # The guest is this side's now. A caller that gives up from here (its connection
                    # closed) must not leave it running with a record that says it is still on its way.
                    with anyio.CancelScope(shield=True):
                        await self._take_arrived(guest, watch, resume=resume)
                finally:
                    self.migrations.pop(name, None)
            except (MigrationError, QMPError):
                await self._terminate(guest, "failed")
                raise
            with anyio.CancelScope(shield=True):
                await self.files.write_migration(name, None)
        if persistent_xml is not None:
            with anyio.CancelScope(shield=True):
                await self.define_xml(persistent_xml)

    async def _take_arrived(self, guest: Guest, watch: migration.Watch | None, *, resume: bool) -> None:
        if watch is None or watch.exports:  # (a settling controller cannot know: it asks)
            try:
                await migration.stop_exports(self.monitor(guest))
            except QMPError:
                pass  # no storage was copied: no NBD server runs
        if resume and guest.state is not DomainState.RUNNING:
            await self._cont(guest, "migrated")
        elif not resume:
            guest.set_state(DomainState.PAUSED, "user", announce=False)

    async def _cont(self, guest: Guest, reason: str) -> None:
        guest.resume_reason = reason
        try:
            await self.monitor(guest).execute("cont")
        finally:
            guest.resume_reason = None
        guest.set_state(DomainState.RUNNING, reason)

    # -- recovery ------------------------------------------------------------------------------------------

    async def recover_migration(self, guest: Guest) -> None:
        """A re-attached guest whose run directory holds a migration record: settle it (module docstring)."""
        record = await self.files.read_migration(guest.name)
        if record is None:
            return
        settle = self._recover_source if record.get("role") == "source" else self._settle_destination
        self.tasks.start_soon(settle, guest, record, name=f"migration-settle-{guest.name}")

    async def _recover_source(self, guest: Guest, record: dict[str, Any]) -> None:
        phase = record.get("phase")
        if phase == "postcopy":
            # The guest runs at the destination; this QEMU serves its pages until QEMU says completed.
            # QEMU still sends MIGRATION events (the old controller turned them on): watch them, having
            # asked once for where it stands.
            watch = self.migrations[guest.name] = migration.Watch()
            try:
                watch.update(await self.monitor(guest).execute("query-migrate"))
                status = await watch.wait_done()
            finally:
                self.migrations.pop(guest.name, None)
            if status != "completed":
                log.error("domain %s: its postcopy migration %s: the guest is paused at both sides",
                          guest.name, status)
                return
            phase = "committed"
        if phase == "committed":
            log.info("domain %s: its migration was committed; ending the source QEMU", guest.name)
            async with guest.lock:
                if guest.active:
                    await self._terminate(guest, "migrated")
            dest = str(record.get("dest", ""))
            if self._peer(dest) is None:  # elsewhere: it waits, paused, for this record's word
                self.tasks.start_soon(self._finish_apart, guest.name, dest, bool(record.get("resume")),
                                      name=f"migration-finish-{guest.name}")
            return
        if phase == "perform":
            # Whatever QEMU still sends (or has sent) is not the destination's: nobody committed it.
            monitor = self.monitor(guest)
            status = (await monitor.execute("query-migrate")).get("status", "none")
            if status not in (*migration.DONE, "none"):
                await migration.cancel(monitor)
                with anyio.move_on_after(30):
                    while True:  # the old controller's events went with it: ask until QEMU has stopped
                        if (await monitor.execute("query-migrate")).get("status") in migration.DONE:
                            break
                        await anyio.sleep(0.05)
            record = {**record, "phase": "aborted"}
            await self.files.write_migration(guest.name, record)
            log.info("domain %s: its migration was not committed; the guest stays here", guest.name)
            async with guest.lock:
                await self._resume_source(guest, bool(record.get("resume")))
        await self._forget_aborted(guest, record)

    async def _resume_source(self, guest: Guest, resume: bool) -> None:
        """Source, the migration undone: the guest's CPUs run again if they ran (QEMU may have done it);
        the destination took none of its images (late-block-activate), so they can be taken back."""
        if guest.active and resume and guest.state is DomainState.PAUSED:
            await self.monitor(guest).execute("cont")
            guest.set_state(DomainState.RUNNING, "migrated")

    async def _forget_aborted(self, guest: Guest, record: dict[str, Any]) -> None:
        """The source's ``aborted`` record stays until the destination's QEMU is gone: until then it is
        what tells that destination not to run the guest."""
        peer = self._peer(record.get("dest"))
        while peer is not None:  # another controller's QEMU: no event here tells its end
            if not await self._peer_alive(peer, guest.name):
                break
            await anyio.sleep(ORPHAN_POLL)
        if guest.active and await self.files.read_migration(guest.name) == record:
            await self.files.write_migration(guest.name, None)

    async def _watch_orphan(self, guest: Guest, watch: migration.Watch) -> None:
        """Destination: if QEMU holds the whole guest and no finish comes, settle it by the records."""
        assert watch.finished is not None
        if await watch.wait_done() != "completed":
            return  # the source's controller unwinds it (or the QEMU has gone)
        with anyio.move_on_after(ORPHAN_GRACE):
            await watch.finished.wait()
            return
        record = await self.files.read_migration(guest.name)
        if record is not None and self.migrations.get(guest.name) is watch:
            log.warning("domain %s: nobody finished its migration; asking the source's record", guest.name)
            await self._settle_destination(guest, record)

    async def _settle_destination(self, guest: Guest, record: dict[str, Any]) -> None:
        source = self._peer(record.get("source"))
        if source is None:
            await self._settle_apart(guest, str(record.get("source")))
            return
        while guest.active:
            theirs = await source.read_migration(guest.name)
            phase = None if theirs is None else theirs.get("phase")
            if phase in ("committed", "postcopy") or (phase is None and await self._holds_all(guest)):
                log.info("domain %s: the source committed its migration; running it here", guest.name)
                await self._run_arrived(guest, None, resume=bool(record.get("resume")),
                                        persistent_xml=record.get("persistent_xml"))
                return
            if phase in ("aborted", None):
                log.info("domain %s: the source kept the guest; ending this QEMU", guest.name)
                await self._give_up_destination(guest)
                return
            await anyio.sleep(ORPHAN_POLL)  # perform: the source's controller has yet to decide

    async def _settle_apart(self, guest: Guest, source: str) -> None:
        """Destination, its source on another machine, whose record this side cannot read: a QEMU that
        does not hold the whole guest gives up (before the commit the guest is the source's); one that
        does waits, paused, for a finish: only the source's side knows whether it committed."""
        if guest.state is DomainState.RUNNING:  # someone resumed it here: the record has no more to say
            await self.files.write_migration(guest.name, None)
            return
        if not await self._holds_all(guest):
            log.info("domain %s: the migration from %s did not complete here; ending this QEMU",
                     guest.name, source)
            await self._give_up_destination(guest)
            return
        log.warning("domain %s: it holds the whole guest migrated from %s, whose record is out of reach; "
                    "it stays paused until that side's controller says whether it committed",
                    guest.name, source)

    async def _finish_apart(self, name: str, dest: str, resume: bool) -> None:
        """Source, committed, its controller back: the destination on another machine (``dest``: its
        URI) holds the guest paused until it hears so; tell it, until it has heard."""
        if self.peers is None or "://" not in dest:
            log.error("domain %s: its destination %s holds it paused and cannot be reached from here: "
                      "resume it there", name, dest)
            return
        delay = ORPHAN_POLL
        while True:
            try:
                async with self.peers(dest) as peer:
                    await peer.migrate_finish(name, ok=True, resume=resume, persistent_xml=None)
                log.info("domain %s: its destination %s runs it now", name, dest)
                return
            except AvirtError as e:
                log.warning("domain %s: cannot tell its destination %s that the migration was committed "
                            "(%s); trying again in %.0f s", name, dest, e, delay)
            await anyio.sleep(delay)
            delay = min(delay * 2, 60.0)

    def _peer(self, location: object) -> StateDir | None:
        """The other side's state directory when it is on this machine (its location is then a path)."""
        text = str(location or "")
        return StateDir(self.host, text) if text.startswith("/") else None

    async def _holds_all(self, guest: Guest) -> bool:
        try:
            return bool((await self.monitor(guest).execute("query-migrate")).get("status") == "completed")
        except QMPError:
            return False

    async def _peer_alive(self, peer: StateDir, name: str) -> bool:
        text = await self.host.read_text(peer.pidfile(name))
        return text is not None and text.strip().isdigit() and await self.host.pid_alive(int(text))
