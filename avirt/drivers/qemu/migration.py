"""Live migration, QEMU's side: what one controller asks of one QEMU, source or destination.

A migration moves a running guest's devices and memory from one QEMU (the source) into a second QEMU
started for it (the destination), which then runs in its place. The order of the steps is
:mod:`avirt.migration`'s (libvirt's phases: begin, prepare, perform, finish, confirm); this module is the
QMP each step sends and how its outcome is known:

* **Destination**: QEMU is spawned from the source's live definition (the same machine, down to PCI
  addresses: the stable guest ABI makes the two command lines agree) with ``-incoming defer``, which
  leaves it waiting in runstate ``inmigrate``; :func:`configure_incoming` turns on migration events and
  :func:`listen` has it listen on a unix socket in its run directory (``migrate-incoming``). Disk
  images are opened inactive until the migration completes, so the destination can open the very files
  the source still writes (shared storage on one host).
* **Source**: :func:`configure_send` sets the bandwidth and the downtime limit, then :func:`send` has it
  ``migrate`` to that socket.
  QEMU works in the background; each change of its status comes as a ``MIGRATION`` event, which the
  driver hands to the guest's :class:`Watch`. At the end the source pauses (runstate ``postmigrate``)
  and lets go of its images; the destination, once its own status is ``completed``, owns them.

Nothing here polls: :meth:`Watch.wait_done` waits for the event. Only :func:`progress` asks
``query-migrate``, when someone reads progress.

Each side's record (``migratecalls.py``) must be on disk before its QEMU acts, not before it is
configured: the configuring commands go :func:`~avirt.tasks.alongside` the record's write, so a
migration costs the QMP round trips a bare script would send, not those plus the writes.
"""

from __future__ import annotations

import logging
from typing import Any

import anyio

from avirt.errors import MigrationError, QMPError
from avirt.models import MigrationProgress
from avirt.qmp.monitor import Monitor

log = logging.getLogger(__name__)

#: QEMU's final statuses of a migration (``MigrationStatus`` in its QAPI schema).
DONE = frozenset({"completed", "failed", "cancelled"})
#: max-bandwidth when the caller sets none: as good as unlimited (QEMU's own default is 128 MiB/s, which
#: would make even a local migration of a large guest take seconds per GiB for no reason).
UNLIMITED = 1 << 53
#: How long the destination may take to load the last of the state once the source says completed.
FINISH_TIMEOUT = 60.0


class Watch:
    """One QEMU's migration status and its storage mirrors' states, as its events tell them."""

    def __init__(self) -> None:
        self.status = "none"
        #: Storage copy: each mirror's job id -> "running", "ready", or its end ("completed: <error>"...).
        self.mirrors: dict[str, str] = {}
        self._changed = anyio.Event()
        #: Destination: set once the migration's finish phase has begun (the orphan watcher stands down).
        self.finished: anyio.Event | None = None
        #: Destination: the images made for a storage copy (removed if the guest stays at the source).
        self.created: list[str] = []
        #: Source: the switch to postcopy was asked for (the guest is the destination's from then on).
        self.postcopy = False
        #: Destination: an NBD server exports the disks a storage copy fills (to stop before it runs).
        self.exports = False
        #: Destination: the definition to keep once the guest runs here (prepare's, as its record has it).
        self.kept_xml: str | None = None
        #: Source, made ready to send: its record as on disk, and what its storage mirrors will need
        #: (their speed limit, the name the destination's certificate must have with TLS).
        self.record: dict[str, Any] | None = None
        self.mirror_speed: int | None = None
        self.tls_hostname: str | None = None

    def update(self, data: dict[str, Any]) -> None:
        self.status = str(data.get("status", self.status))
        self._wake()

    def job_event(self, name: str, data: dict[str, Any]) -> None:
        job = str(data.get("device") or data.get("id") or "")
        if job not in self.mirrors:
            return
        if name == "BLOCK_JOB_READY":
            self.mirrors[job] = "ready"
        elif name in ("BLOCK_JOB_COMPLETED", "BLOCK_JOB_CANCELLED"):
            error = data.get("error")
            self.mirrors[job] = f"failed: {error}" if error else (
                "completed" if name == "BLOCK_JOB_COMPLETED" else "cancelled")
        else:
            return
        self._wake()

    def _wake(self) -> None:
        self._changed.set()
        self._changed = anyio.Event()

    @property
    def done(self) -> bool:
        return self.status in DONE

    async def wait_done(self) -> str:
        return await self.wait_status(DONE)

    async def wait_status(self, wanted: frozenset[str]) -> str:
        while self.status not in wanted and self.status not in DONE:
            await self._changed.wait()
        return self.status

    async def wait_mirrors_ended(self) -> None:
        while any(state in ("running", "ready") for state in self.mirrors.values()):
            await self._changed.wait()

    async def wait_mirrors(self, wanted: str) -> None:
        """Until every mirror is ``wanted`` ("ready") or has ended; MigrationError if one failed."""
        while True:
            failed = [f"{job}: {state}" for job, state in self.mirrors.items()
                      if state.startswith(("failed", "cancelled"))
                      or (wanted == "ready" and state == "completed")]
            if failed:
                raise MigrationError(f"a storage mirror ended: {'; '.join(failed)}")
            if all(state == wanted for state in self.mirrors.values()):
                return
            await self._changed.wait()


async def _enable_events(monitor: Monitor, *extra: str) -> None:
    capabilities = [{"capability": name, "state": True} for name in ("events", *extra)]
    await monitor.execute("migrate-set-capabilities", {"capabilities": capabilities})


#: The capabilities the destination must have on too (the others are the sender's business).
BOTH_SIDES = frozenset({"multifd", "postcopy-ram"})
#: The source's status once the guest runs at the destination and pages still come from the source.
POSTCOPY = "postcopy-active"


#: The id of a QEMU's TLS credentials for migration streams (tls-creds-x509 from its side's directory).
TLS_ID = "avirt-migration-tls"
#: What each end of a TLS stream needs in its side's ``tls/`` directory (QEMU's file names).
TLS_FILES = {"server": ("ca-cert.pem", "server-cert.pem", "server-key.pem"),
             "client": ("ca-cert.pem", "client-cert.pem", "client-key.pem")}


async def load_tls(monitor: Monitor, directory: str, endpoint: str) -> None:
    """Give the QEMU the credentials in ``directory`` as :data:`TLS_ID`, for ``endpoint`` ("server":
    the destination, "client": the source). Each side verifies the other's certificate against its CA.
    A QEMU that was a destination before keeps an older object of the same id: it is replaced."""
    try:
        await monitor.execute("object-del", {"id": TLS_ID})
    except QMPError:
        pass  # none yet
    await monitor.execute("object-add", {"qom-type": "tls-creds-x509", "id": TLS_ID, "dir": directory,
                                         "endpoint": endpoint, "verify-peer": True})


async def configure_incoming(monitor: Monitor, tuning: dict[str, Any] | None = None) -> None:
    """Destination, before :func:`listen`: migration events on; the images stay inactive (not locked)
    until the guest runs here (late-block-activate), so that a source whose migration is undone, even
    after the last byte, can take them back. ``tuning``: the capabilities and parameters of
    :func:`avirt.migration.tuning`; this side takes those both sides need (with TLS, its credentials
    must be loaded first: :func:`load_tls`)."""
    tuning = tuning or {}
    both = [name for name in tuning.get("capabilities", ()) if name in BOTH_SIDES]
    await _enable_events(monitor, "late-block-activate", *both)
    parameters = dict(tuning.get("parameters") or {}) if both else {}
    if tuning.get("tls"):
        parameters["tls-creds"] = TLS_ID
    if parameters:
        await monitor.execute("migrate-set-parameters", parameters)


async def listen(monitor: Monitor, socket_path: str) -> str:
    """Destination, configured (:func:`configure_incoming`): listen for the migration stream; the URI
    the source sends it to."""
    uri = f"unix:{socket_path}"
    await monitor.execute("migrate-incoming", {"uri": uri})
    return uri


async def export_disks(monitor: Monitor, socket_path: str, nodes: dict[str, str], *,
                       tls: bool = False) -> None:
    """Destination, storage copy: an NBD server on a unix socket, each disk's top node (``nodes``: disk
    target -> node) exported writable under the disk's name, for the source's mirrors to fill."""
    await monitor.execute("nbd-server-start", {"addr": {"type": "unix", "data": {"path": socket_path}},
                                               **({"tls-creds": TLS_ID} if tls else {})})
    for target, node in nodes.items():
        await monitor.execute("block-export-add", {"type": "nbd", "id": f"mig-{target}", "node-name": node,
                                                   "name": target, "writable": True})


async def stop_exports(monitor: Monitor) -> None:
    await monitor.execute("nbd-server-stop")


async def mirror_disks(monitor: Monitor, watch: Watch, socket_path: str, disks: dict[str, tuple[str, str]],
                       bandwidth: int | None, tls_hostname: str | None = None) -> None:
    """Source, storage copy: each disk (target -> (top node, sync "full" or "top")) mirrored into the
    destination's export (over TLS, checking the server's certificate names ``tls_hostname``, if
    given); returns once every mirror is READY (the copy is whole and follows writes)."""
    tls = {"tls-creds": TLS_ID, "tls-hostname": tls_hostname} if tls_hostname else {}
    for target, (node, sync) in disks.items():
        job = f"mig-{target}"
        await monitor.execute("blockdev-add", {"driver": "nbd", "node-name": job, "export": target,
                                               "server": {"type": "unix", "path": socket_path}, **tls})
        watch.mirrors[job] = "running"
        await monitor.execute("blockdev-mirror", {"job-id": job, "device": node, "target": job, "sync": sync,
                                                  "speed": bandwidth or 0})
    await watch.wait_mirrors("ready")


async def drop_mirrors(monitor: Monitor, watch: Watch) -> None:
    """Source: end whatever mirrors remain (a failed or undone copy) and their NBD nodes; best effort."""
    for job, state in list(watch.mirrors.items()):
        if state in ("running", "ready"):
            try:
                await monitor.execute("block-job-cancel", {"device": job, "force": True})
            except QMPError:
                continue
    with anyio.move_on_after(FINISH_TIMEOUT):
        await watch.wait_mirrors_ended()
    for job in list(watch.mirrors):
        try:
            await monitor.execute("blockdev-del", {"node-name": job})
        except QMPError:
            pass
    watch.mirrors.clear()


async def configure_send(monitor: Monitor, *, bandwidth: int | None, max_downtime: int | None,
                         mirrors: bool = False, tuning: dict[str, Any] | None = None) -> None:
    """Source, before :func:`send`: migration events on, the bandwidth, the downtime limit and the
    tuning's capabilities and parameters; ``mirrors``: storage mirrors will run, so QEMU stops before
    the switch-over (``pause-before-switchover``). With TLS, its credentials must be loaded first."""
    tuning = tuning or {}
    await _enable_events(monitor, *(["pause-before-switchover"] if mirrors else []),
                         *tuning.get("capabilities", ()))
    # tls-creds always: a QEMU that was a destination with TLS keeps its parameter, and would use it.
    parameters: dict[str, Any] = {"max-bandwidth": bandwidth or UNLIMITED, **tuning.get("parameters", {}),
                                  "tls-creds": TLS_ID if tuning.get("tls") else ""}
    if tuning.get("tls"):
        parameters["tls-hostname"] = tuning["tls"]
    if max_downtime is not None:
        parameters["downtime-limit"] = max_downtime
    await monitor.execute("migrate-set-parameters", parameters)


async def send(monitor: Monitor, watch: Watch, uri: str) -> str:
    """Source, configured (:func:`configure_send`): migrate to ``uri``; once QEMU has sent the state,
    its status ("completed", or postcopy-active after a switch; :func:`progress` has its figures);
    MigrationError if it failed or was cancelled (the source then runs on as before: QEMU resumes it by
    itself).

    With storage mirrors running, QEMU stops before the switch-over (``pause-before-switchover``) with
    the guest paused: the mirrors are then completed without a pivot (``block-job-cancel`` of a READY
    mirror writes what is left and ends), and only then does QEMU hand the guest over."""
    await monitor.execute("migrate", {"uri": uri})
    if watch.mirrors:
        if await watch.wait_status(frozenset({"pre-switchover"})) == "pre-switchover":
            for job in watch.mirrors:
                await monitor.execute("block-job-cancel", {"device": job})
            await watch.wait_mirrors("completed")
            await monitor.execute("migrate-continue", {"state": "pre-switchover"})
    # In postcopy the guest runs at the destination from the switch on: the source is done sending the
    # state (its pages follow on demand, until QEMU says completed).
    status = await watch.wait_status(frozenset({POSTCOPY}))  # only ever after start_postcopy
    if status not in ("completed", POSTCOPY):
        reason = await _error_of(monitor)
        raise MigrationError(f"the migration {status}" + (f": {reason}" if reason else ""))
    return status


async def start_postcopy(monitor: Monitor, watch: Watch) -> None:
    """Source: switch a running migration to postcopy (the destination runs the guest from now on)."""
    watch.postcopy = True
    try:
        await monitor.execute("migrate-start-postcopy")
    except QMPError:
        watch.postcopy = False
        raise



async def received(monitor: Monitor, watch: Watch, *, postcopy: bool = True,
                   timeout: float | None = FINISH_TIMEOUT) -> str:
    """Destination: return once the whole state is loaded, or once the source switched to postcopy
    (``postcopy``: the devices are here, the pages still coming, and the guest may run); the status
    then; MigrationError otherwise."""
    try:
        with anyio.fail_after(timeout):
            status = await watch.wait_status(frozenset({POSTCOPY}) if postcopy else frozenset())
    except TimeoutError:
        raise MigrationError(f"the destination did not finish loading the guest in {timeout:.0f} s "
                             f"(its status: {watch.status})") from None
    if status not in ("completed", POSTCOPY):
        raise MigrationError(f"the destination's migration {status}: {await _error_of(monitor)}")
    return status


async def progress(monitor: Monitor) -> MigrationProgress:
    info = await monitor.execute("query-migrate")
    ram = info.get("ram") or {}
    return MigrationProgress(
        status=str(info.get("status", "none")),
        ram_total=int(ram.get("total", 0)),
        ram_transferred=int(ram.get("transferred", 0)),
        ram_remaining=int(ram.get("remaining", 0)),
        dirty_rate=int(ram.get("dirty-pages-rate", 0)) * int(ram.get("page-size", 4096) or 4096),
        passes=int(ram.get("dirty-sync-count", 0)),
        expected_downtime_ms=int(info.get("expected-downtime", 0) or 0),
        total_ms=int(info.get("total-time", 0) or 0),
        downtime_ms=int(info.get("downtime", 0) or 0),
    )


async def cancel(monitor: Monitor) -> None:
    await monitor.execute("migrate_cancel")


async def _error_of(monitor: Monitor) -> str:
    try:
        info = await monitor.execute("query-migrate")
    except QMPError:  # the QEMU may be gone: the status already said what matters
        return ""
    return str(info.get("error-desc", ""))
