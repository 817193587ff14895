"""Live migration between two connections, as one awaitable job.

``job = await dom.migrate(dest_conn)`` moves a running (or paused) guest from the domain's connection,
the *source*, to ``dest_conn``, the *destination*; ``await job`` gives the guest's :class:`Domain` there.
The steps are libvirt's migration phases, each a call into one side's driver, always in this order::

    begin    source       the live definition, the persistent one, whether the CPUs run; refuses a
                          domain that is not running, already migrating, or has a block job
    prepare  destination  a QEMU started from that definition, waiting for the guest (its definition
                          checked as any define is: machine type, emulator, name and UUID not in use)
    perform  source       QEMU sends devices and memory; at the end the source pauses
    finish   destination  the guest loaded: its CPUs run (if they ran), and with ``persist`` defined
    confirm  source       the source QEMU ends (STOPPED/migrated); with ``undefine_source`` undefined

A failure or :meth:`MigrationJob.cancel` before finish unwinds it: the destination's QEMU ends and the
source runs on as before (``confirm`` with ok=False); the job raises
:class:`~avirt.errors.MigrationError`. The guest therefore runs in exactly one place whenever the job has
ended. A controller killed in the middle, on either side, is resolved by the records both sides keep in
their run directories, with one commit point (``drivers/qemu/migratecalls.py``). Events follow
libvirt's: the source reports SUSPENDED/migrated then STOPPED/migrated, the destination STARTED/migrated
then RESUMED/migrated.

What this version does not do yet: storage copy (``copy_storage``: both sides must see the same image
files, which holds for two state directories of one machine), connections to other hosts (the stream goes
through a unix socket of the destination's run directory), postcopy.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Generator
from typing import TYPE_CHECKING, Any

import anyio

from avirt.errors import AvirtError, InvalidArgumentError, MigrationError, OperationInvalidError
from avirt.models import MigrationProgress

if TYPE_CHECKING:
    from avirt.connection import Connection
    from avirt.domain import Domain
    from avirt.drivers.base import Driver

#: How often progress() asks the source's QEMU (only while someone iterates).
PROGRESS_INTERVAL = 0.2
PHASES = ("begin", "prepare", "perform", "finish", "confirm", "done")


class MigrationJob:
    """One migration in flight: ``await job`` for the destination's Domain; ``progress()``, ``cancel()``."""

    def __init__(self, source: Driver, dest: Connection, name: str) -> None:
        self._source = source
        self._dest = dest
        self.name = name
        #: The phase running now (``PHASES``); "done" once the job has ended, however it ended.
        self.phase = "begin"
        self._ended = anyio.Event()
        self._result: Domain | None = None
        self._error: AvirtError | None = None
        self._cancelled = False
        #: QEMU's figures at the end of the transfer (its total time and the guest's downtime among them).
        self.stats: MigrationProgress | None = None

    def __repr__(self) -> str:
        return f"<MigrationJob {self.name}: {self.phase}>"

    @property
    def ended(self) -> bool:
        return self._ended.is_set()

    def __await__(self) -> Generator[Any, None, Domain]:
        return self.wait().__await__()

    async def wait(self) -> Domain:
        await self._ended.wait()
        if self._error is not None:
            raise self._error
        assert self._result is not None
        return self._result

    async def progress(self) -> AsyncIterator[MigrationProgress]:
        """The source QEMU's progress every PROGRESS_INTERVAL seconds while it sends, until the job ends."""
        while not self.ended:
            if self.phase == "perform":
                try:
                    yield await self._source.migrate_progress(self.name)
                except AvirtError:
                    pass  # the QEMU moved on meanwhile (the job ends, or has)
            with anyio.move_on_after(PROGRESS_INTERVAL):
                await self._ended.wait()

    async def cancel(self) -> None:
        """Stop the migration if it has not reached finish: the guest stays at the source, running as
        before, and the job raises MigrationError. Too late (finish has begun): OperationInvalidError."""
        if self.ended or self.phase in ("finish", "confirm"):
            raise OperationInvalidError(f"the migration of '{self.name}' is {self.phase}: too late to cancel")
        self._cancelled = True
        if self.phase == "perform":
            await self._source.migrate_cancel(self.name)

    # -- the phases ------------------------------------------------------------------------------------

    async def _begin(self) -> tuple[str, str | None, bool]:
        return await self._source.migrate_begin(self.name)

    async def run(self, begun: tuple[str, str | None, bool], *, bandwidth: int | None,
                  max_downtime: int | None, persist: bool, undefine_source: bool) -> None:
        live_xml, persistent_xml, running = begun
        dest = self._dest._driver
        kept = (persistent_xml or live_xml) if persist else None
        try:
            self.phase = "prepare"
            uri = await dest.migrate_prepare(live_xml, source=self._source.location(), resume=running,
                                             persistent_xml=kept)
            try:
                self.phase = "perform"
                if self._cancelled:
                    raise MigrationError("the migration was cancelled")
                self.stats = await self._source.migrate_perform(
                    self.name, uri, dest=dest.location(), bandwidth=bandwidth, max_downtime=max_downtime)
                self.phase = "finish"
                await dest.migrate_finish(self.name, ok=True, resume=running, persistent_xml=kept)
            except BaseException:
                with anyio.CancelScope(shield=True):
                    await _quietly(dest.migrate_finish(self.name, ok=False, resume=False,
                                                       persistent_xml=None))
                    await _quietly(self._source.migrate_confirm(self.name, ok=False, undefine=False,
                                                                resume=running))
                raise
            self.phase = "confirm"
            with anyio.CancelScope(shield=True):
                await self._source.migrate_confirm(self.name, ok=True, undefine=undefine_source, resume=False)
            self._result = await self._dest.lookup(self.name)
        except AvirtError as e:
            self._error = e if isinstance(e, MigrationError) or self.phase == "prepare" else \
                MigrationError(f"the migration of '{self.name}' failed in {self.phase}: {e}")
        finally:
            self.phase = "done"
            self._ended.set()


async def start(domain: Domain, source: Driver, dest: Connection, *, live: bool, copy_storage: str | None,
                bandwidth: int | None, max_downtime: int | None, persist: bool,
                undefine_source: bool) -> MigrationJob:
    """Check the arguments, run begin (its refusals raise here), and leave the rest to a job."""
    if not live:
        raise InvalidArgumentError("only live migration is supported (live=True)")
    if copy_storage is not None:
        raise InvalidArgumentError("copy_storage is not supported yet: both sides must see the same images")
    for value, what in ((bandwidth, "bandwidth"), (max_downtime, "max_downtime")):
        if value is not None and value <= 0:
            raise InvalidArgumentError(f"{what} must be positive")
    if dest._driver is source:
        raise InvalidArgumentError("the destination is the domain's own connection")
    for side in (source, dest._driver):
        side.location()  # a side that takes no part in migrations refuses here, before anything starts
    job = MigrationJob(source, dest, domain.name)
    begun = await job._begin()

    async def run() -> None:
        await job.run(begun, bandwidth=bandwidth, max_downtime=max_downtime, persist=persist,
                      undefine_source=undefine_source)

    source.start_task(run, name=f"migrate-{domain.name}")
    return job


async def _quietly(step: Any) -> None:
    try:
        await step
    except AvirtError:
        pass  # unwinding a failure: the first error is the one to report
