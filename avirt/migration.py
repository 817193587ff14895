"""Live migration between two connections, as one awaitable job.

``job = await dom.migrate(dest_conn)`` moves a running (or paused) guest from the domain's connection,
the *source*, to ``dest_conn``, the *destination*; ``await job`` gives the guest's :class:`Domain` there.
The steps are libvirt's migration phases, each a call into one side's driver, always in this order::

    begin    source       the live definition, the persistent one, whether the CPUs run; refuses a
                          domain that is not running, already migrating, or has a block job
    prepare  destination  a QEMU started from that definition, waiting for the guest (its definition
                          checked as any define is: machine type, emulator, name and UUID not in use);
             source       meanwhile, made ready: its record written, its QEMU's settings made
    perform  source       QEMU sends devices and memory; at the end the source pauses
    finish   destination  the guest loaded: its CPUs run (if they ran), and with ``persist`` defined
    confirm  source       the source QEMU ends (STOPPED/migrated); with ``undefine_source`` undefined

A failure or :meth:`MigrationJob.cancel` before finish unwinds it: the destination's QEMU ends and the
source runs on as before (``confirm`` with ok=False); the job raises
:class:`~avirt.errors.MigrationError`. A failure in finish (or a cancellation of the job's task there:
its connection closed) unwinds it the same way only once the destination has said that its QEMU has
ended; if it cannot say, the guest stays paused at the source. The guest therefore never runs in two
places. A controller killed in the middle, on either side, is resolved by the records both sides keep in
their run directories, with one commit point (``drivers/qemu/migratecalls.py``). Events follow
libvirt's: the source reports SUSPENDED/migrated then STOPPED/migrated, the destination STARTED/migrated
then RESUMED/migrated.

**Storage.** Without ``copy_storage`` both sides must see the same image files (shared storage, which
holds for two state directories of one machine). With it, the destination makes a new image for each
writable disk (``storage_paths`` names it; on one machine it must differ from the source's) and exports
it over NBD; the source mirrors each disk into it (``blockdev-mirror``: the whole chain with "all", only
the top layer onto the same backing chain with "inc"), waits until every mirror is READY, then sends the
memory; QEMU pauses before the switch-over, the mirrors write what is left and end, and only then does
the guest move.

**Memory.** Precopy, as QEMU does it by default: memory is sent while the guest runs, again for what it
dirtied meanwhile, until what is left fits ``max_downtime``. ``auto_converge`` throttles a guest that
dirties faster than the stream carries, ``compressed`` sends changed pages as XBZRLE deltas, ``parallel``
uses that many connections (multifd); see :func:`tuning`.

**Postcopy.** Started with ``postcopy=True``, a migration can be switched (:meth:`MigrationJob.postcopy`)
while it sends memory: the source writes its record's ``postcopy`` phase (the commit point: the guest is
the destination's from then on), QEMU stops the guest there (SUSPENDED/postcopy) and the destination
runs it at once (RESUMED/postcopy), fetching each page it lacks from the source, whose QEMU ends when
the last page has gone (STOPPED/migrated).

**Machines.** The destination's QEMU listens on unix sockets of its run directory. When both sides
run on one machine the source's QEMU connects to them itself; when not (an SSH host, in either of its
modes), this controller joins the two machines with OpenSSH's unix-socket forwarding over the SSH
connections it already has (:mod:`avirt.hosts.forwarding`): no port opens on either host and no byte
passes through Python. Each side's record then names the other as a location elsewhere, which it
cannot read: a destination whose controller is restarted gives the guest up unless its QEMU holds all
of it, and one that holds it all waits, paused, for a finish, since only the source knows whether it
committed. The source's record therefore names the destination by its connection URI, and a source
controller that finds a committed record ends its QEMU and connects there to say so (again and again
until it is heard), and the guest runs.

**TLS.** With ``tls=True`` each QEMU loads its side's certificates (``<state_dir>/tls/``, QEMU's file
names) as x509 credentials, the destination as the server; the migration stream and the NBD
connections of a storage copy are then TLS, each end verifying the other's certificate.

What this version does not do yet: a direct TCP stream between hosts (without the SSH connection in the
way), postcopy recovery after a broken connection.
"""

from __future__ import annotations

import contextlib
import logging
import urllib.parse
from collections.abc import AsyncIterator, Generator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import anyio

from avirt.config import domain_to_xml, parse_domain_xml
from avirt.errors import AvirtError, InvalidArgumentError, MigrationError, OperationInvalidError
from avirt.hosts.forwarding import Forwarder
from avirt.models import MigrationProgress
from avirt.tasks import alongside

if TYPE_CHECKING:
    from avirt.connection import Connection
    from avirt.domain import Domain
    from avirt.drivers.base import Driver

log = logging.getLogger(__name__)

#: How often progress() asks the source's QEMU (only while someone iterates).
PROGRESS_INTERVAL = 0.2
#: How long the source's QEMU may take to fill in its totals once it says completed.
TOTALS_TIMEOUT = 2.0
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
        #: Started with postcopy=True (postcopy() may switch); switched: the guest is the destination's.
        self._postcopy = False
        self._switched = False
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
        if self.ended or self.phase in ("finish", "confirm") or self._switched:
            why = "switched to postcopy" if self._switched and not self.ended else self.phase
            raise OperationInvalidError(f"the migration of '{self.name}' is {why}: too late to cancel")
        self._cancelled = True
        if self.phase == "perform":
            await self._source.migrate_cancel(self.name)

    async def postcopy(self) -> None:
        """Switch to postcopy (virDomainMigrateStartPostCopy): the guest runs at the destination at once
        and fetches the memory it has not got from the source as it touches it, so a guest that dirties
        memory faster than precopy can send it still moves. Only for a job started with
        ``postcopy=True``, while it sends memory (phase perform). From the switch on nothing can undo
        it: :meth:`cancel` is refused, and if the connection between the two QEMUs fails before the last
        page arrived, the guest is paused at both sides (the job raises MigrationError saying so)."""
        if not self._postcopy:
            raise OperationInvalidError(f"the migration of '{self.name}' was not started with postcopy=True")
        if self.ended or self.phase != "perform":
            raise OperationInvalidError(f"the migration of '{self.name}' is {self.phase}: postcopy switches "
                                        "while memory is being sent")
        await self._source.migrate_postcopy(self.name)
        self._switched = True

    async def _totals(self) -> MigrationProgress:
        """QEMU's figures at the source once it has sent the guest. Never an error: the outcome is known
        already (a QEMU that cannot be asked gives zeros)."""
        try:
            stats = await self._source.migrate_progress(self.name)
            # QEMU says "completed" a moment before it has worked out its totals (the state is set in its
            # migration thread's completion, the times only once that thread winds up), and no event
            # follows: ask again, briefly.
            with anyio.move_on_after(TOTALS_TIMEOUT):
                while stats.status == "completed" and stats.total_ms == 0:
                    await anyio.sleep(0.001)  # its migration thread is winding up: a moment
                    stats = await self._source.migrate_progress(self.name)
        except AvirtError as e:
            log.warning("the figures of the migration of '%s' cannot be read: %s", self.name, e)
            return MigrationProgress(status="completed", ram_total=0, ram_transferred=0, ram_remaining=0,
                                     dirty_rate=0, passes=0, expected_downtime_ms=0)
        return stats

    # -- the phases ------------------------------------------------------------------------------------

    async def run(self, plan: _Plan, ends: _Ends, *, bandwidth: int | None, max_downtime: int | None,
                  undefine_source: bool, tuning: dict[str, Any] | None) -> None:
        dest = self._dest._driver
        prepared = False  # the destination has a QEMU to unwind (a refusal there leaves nothing)
        # The streams' forwarding, if any, lasts until the destination holds the whole guest (a
        # postcopy one fetches pages until its finish returns).
        streams = contextlib.AsyncExitStack()
        try:
            try:
                self.phase = "prepare"
                # The source gets ready (its record, QEMU's settings) while the destination's QEMU starts.
                ready = self._source.migrate_ready(self.name, dest=ends.dest_as_seen(), bandwidth=bandwidth,
                                                   max_downtime=max_downtime, mirrors=bool(plan.copies),
                                                   tuning=tuning)
                uri, nbd = await alongside(dest.migrate_prepare(
                    plan.live_xml, source=ends.source_as_seen(), resume=plan.running,
                    persistent_xml=plan.kept_xml, copies=plan.copies or None, tuning=tuning), ready)
                prepared = True
                self.phase = "perform"
                if self._cancelled:
                    raise MigrationError("the migration was cancelled")
                uri = "unix:" + await ends.join(streams, uri.removeprefix("unix:"))
                nbd = nbd and await ends.join(streams, nbd)
                await self._source.migrate_perform(
                    self.name, uri, nbd=nbd, copies={c["target"]: c["sync"] for c in plan.copies} or None)
                self.phase = "finish"  # (the source's record says committed: the guest is the destination's)
                # From the commit to confirm nothing cuts the job short (a closing connection waits for
                # a precopy's finish, which is bounded): cut after the destination's finish, the unwind
                # would find the guest running there. A postcopy's finish waits for every page, however
                # long that takes, and nothing could undo it anyway.
                with anyio.CancelScope(shield=not self._switched):
                    # The source's QEMU is asked for its figures while the destination finishes (it
                    # ends only at confirm).
                    self.stats = await alongside(self._totals(), dest.migrate_finish(
                        self.name, ok=True, resume=plan.running, persistent_xml=plan.kept_xml))
                    await streams.aclose()
            except BaseException:
                with anyio.CancelScope(shield=True):
                    await _quietly(streams.aclose())
                if self._switched:  # the destination has been running the guest: nothing to go back to
                    raise MigrationError(
                        f"the postcopy migration of '{self.name}' failed after the switch: the guest is "
                        "paused at the destination and at the source, neither holding all of it "
                        "(postcopy recovery is not supported yet)") from None
                with anyio.CancelScope(shield=True):
                    gone = not prepared or await _quietly(dest.migrate_finish(
                        self.name, ok=False, resume=False, persistent_xml=None))
                    if self.phase == "finish" and not gone:
                        # The destination may run the guest yet (it may even have, its answer lost): the
                        # source must not. Both records stay as they are, for their controllers to settle.
                        raise MigrationError(
                            f"the migration of '{self.name}' failed in finish and its destination could not "
                            "be told to give the guest up: the guest stays paused at the source, which "
                            "committed it to the destination") from None
                    await _quietly(self._source.migrate_confirm(self.name, ok=False, undefine=False,
                                                                resume=plan.running))
                raise
            self.phase = "confirm"  # (no checkpoint since finish: nothing can have cut in)
            with anyio.CancelScope(shield=True):
                await self._source.migrate_confirm(self.name, ok=True, undefine=undefine_source, resume=False)
            self._result = await self._dest.lookup(self.name)
        except AvirtError as e:
            self._error = e if isinstance(e, MigrationError) or self.phase == "prepare" else \
                MigrationError(f"the migration of '{self.name}' failed in {self.phase}: {e}")
        finally:
            self.phase = "done"
            self._ended.set()


@dataclass
class _Ends:
    """Where the two sides are: their machines (:mod:`avirt.hosts.forwarding`) and state directories."""

    source: Forwarder
    dest: Forwarder
    source_dir: str
    dest_dir: str
    dest_uri: str

    @property
    def one_machine(self) -> bool:
        return self.source.machine == self.dest.machine

    # Each side's record names the other's state directory, read there when both share a machine. A
    # location on another machine is not a path (it starts with the machine's name), so a side never
    # reads a file of its own machine that merely has the other's path.
    def source_as_seen(self) -> str:
        return self.source_dir if self.one_machine else f"{self.source.machine}:{self.source_dir}"

    def dest_as_seen(self) -> str:
        """For the source's record: the destination's state directory, or, on another machine, its URI
        (with that directory), by which the source's next controller tells it what the record says."""
        if self.one_machine:
            return self.dest_dir
        if "+ssh://" not in self.dest_uri:  # this machine's URI would name another place over there
            return f"{self.dest.machine}:{self.dest_dir}"
        if "state_dir=" in self.dest_uri:
            return self.dest_uri
        joiner = "&" if "?" in self.dest_uri else "?"
        return f"{self.dest_uri}{joiner}state_dir={urllib.parse.quote(self.dest_dir, safe='')}"

    async def join(self, stack: contextlib.AsyncExitStack, path: str) -> str:
        """The path the source's QEMU connects to, for the destination's socket at ``path``."""
        if self.one_machine:
            return path
        return await self.source.expose(stack, await self.dest.reach(stack, path))


@dataclass
class _Plan:
    """What begin found, made into what the destination gets: definitions naming its own images."""

    live_xml: str
    kept_xml: str | None  # the definition to keep at the destination (persist), else None
    running: bool
    copies: list[dict[str, Any]]  # storage copy: each disk's image to make there, and the mirror's sync


def _plan(begun: tuple[str, str | None, bool, list[dict[str, Any]]], *, persist: bool,
          copy_storage: str | None, storage_paths: dict[str, str], one_machine: bool) -> _Plan:
    live_xml, persistent_xml, running, disks = begun
    kept = (persistent_xml or live_xml) if persist else None
    if copy_storage is None:
        return _Plan(live_xml, kept, running, [])
    copies = []
    for disk in disks:
        target = disk["target"]
        path = storage_paths.get(target, disk["path"])
        if path == disk["path"] and one_machine:  # the same path is the same file
            raise InvalidArgumentError(f"a storage copy of {target} needs a destination image other than "
                                       f"{path}: give storage_paths={{'{target}': ...}}")
        full = copy_storage == "all" or disk["backing"] is None
        copies.append({**disk, "path": path, "sync": "full" if full else "top",
                       **({"backing": None, "backing_format": None} if full else {})})
    unknown = set(storage_paths) - {c["target"] for c in copies}
    if unknown:
        raise InvalidArgumentError("storage_paths names no disk that a copy moves: "
                                   + ", ".join(sorted(unknown)))
    paths = {c["target"]: c["path"] for c in copies}
    shared = sorted({path for path in paths.values() if list(paths.values()).count(path) > 1})
    if shared:
        raise InvalidArgumentError(f"a storage copy needs one image per disk: {shared[0]} is given to "
                                   + ", ".join(sorted(t for t, p in paths.items() if p == shared[0])))
    return _Plan(_retarget(live_xml, paths), kept and _retarget(kept, paths), running, copies)


def tuning(*, auto_converge: bool, compressed: bool, parallel: int | None,
           postcopy: bool = False) -> dict[str, Any] | None:
    """QEMU's migration capabilities and parameters for these options (None: QEMU's defaults).

    ``auto_converge`` slows the guest's vCPUs while it dirties memory faster than the stream carries
    it (the source's business); ``compressed`` sends pages that changed as XBZRLE deltas against a
    cache of what was sent; ``parallel`` sends memory over that many connections at once (multifd,
    which the destination must expect too); ``postcopy`` lets :meth:`MigrationJob.postcopy` switch
    (postcopy-ram, on both sides)."""
    capabilities = [name for name, on in (("auto-converge", auto_converge), ("xbzrle", compressed),
                                          ("multifd", parallel is not None), ("postcopy-ram", postcopy))
                    if on]
    if not capabilities:
        return None
    return {"capabilities": capabilities,
            "parameters": {"multifd-channels": parallel} if parallel is not None else {}}


def _retarget(xml: str, paths: dict[str, str]) -> str:
    """``xml`` with each copied disk's image at its destination path."""
    cfg = parse_domain_xml(xml)
    for disk in cfg.disks:
        if disk.target in paths:
            disk.source = paths[disk.target]
    return domain_to_xml(cfg)


async def start(domain: Domain, source: Driver, dest: Connection, *, live: bool, copy_storage: str | None,
                storage_paths: dict[str, str] | None, bandwidth: int | None, max_downtime: int | None,
                persist: bool, undefine_source: bool, auto_converge: bool = False, compressed: bool = False,
                parallel: int | None = None, postcopy: bool = False, tls: bool = False) -> MigrationJob:
    """Check the arguments, run begin (its refusals raise here), and leave the rest to a job."""
    if not live:
        raise InvalidArgumentError("only live migration is supported (live=True)")
    if copy_storage not in (None, "all", "inc"):
        raise InvalidArgumentError(f"copy_storage is 'all', 'inc' or None, not {copy_storage!r}")
    if storage_paths and copy_storage is None:
        raise InvalidArgumentError("storage_paths needs copy_storage")
    for value, what in ((bandwidth, "bandwidth"), (max_downtime, "max_downtime")):
        if value is not None and value <= 0:
            raise InvalidArgumentError(f"{what} must be positive")
    if parallel is not None and not 1 <= parallel <= 255:
        raise InvalidArgumentError(f"parallel is 1 to 255 connections, not {parallel}")
    if postcopy and parallel is not None:
        raise InvalidArgumentError("QEMU 7.2 cannot combine postcopy with parallel connections (multifd)")
    options = tuning(auto_converge=auto_converge, compressed=compressed, parallel=parallel, postcopy=postcopy)
    if dest._driver is source:
        raise InvalidArgumentError("the destination is the domain's own connection")
    # A side that takes no part in migrations refuses here, before anything starts.
    ends = _Ends(source.forwarder(), dest._driver.forwarder(), source.location(), dest._driver.location(),
                 dest._driver.uri)
    if tls:  # the certificate the source's QEMU checks is the destination machine's
        options = {**(options or {}), "tls": ends.dest.hostname}
    job = MigrationJob(source, dest, domain.name)
    job._postcopy = postcopy
    begun = await source.migrate_begin(domain.name, disks=copy_storage is not None, tls=tls)
    plan = _plan(begun, persist=persist, copy_storage=copy_storage, storage_paths=dict(storage_paths or {}),
                 one_machine=ends.one_machine)

    async def run() -> None:
        await job.run(plan, ends, bandwidth=bandwidth, max_downtime=max_downtime,
                      undefine_source=undefine_source, tuning=options)

    source.start_task(run, name=f"migrate-{domain.name}")
    return job


async def _quietly(step: Any) -> bool:
    """Whether ``step`` went through; unwinding a failure, the first error is the one to report."""
    try:
        await step
    except AvirtError:
        return False
    return True
