"""Block jobs on a running guest, over QMP: disk snapshots and block commit.

Where the chain lives: ``Guest.chains[disk]`` is the disk's chain as QEMU has it open, bottom first, each
layer with its format node name. The files are read back from QEMU (``query-block``) after every change,
never inferred. The node names are avirt's own: ``<disk>-<n>``, given at start (``cmdline.node_name``)
and to each snapshot overlay and copy target, one past every name the disk has had in this QEMU. They are
written to the run directory (``nodes.json``, ``Guest.nodes``) before QEMU opens them, so a new controller
reads them there. It must not ask QEMU for them: ``query-named-block-nodes`` visits every node, and QEMU
7.2 dereferences NULL (SIGSEGV) on the filter node of a concluded ``block-stream`` job that is not yet
dismissed, the very state a controller killed at a job's end leaves. ``query-block`` walks only the
disks' chains and is safe then (both checked on QEMU 7.2 with a concluded stream, commit and mirror).

Nodes a job drops (and a copy target it abandons) stay open in QEMU until ``blockdev-del``: ``_finish``
closes them; a controller killed before that leaves them to its successor, which closes every recorded
node that no chain and no running job uses (``_close_leftovers``).

How a job runs (see ``jobs.py`` for the handle's states):

1. the arguments are resolved against the live chain (``top``/``base`` as a path or ``vda[N]``, where
   ``vda[0]`` is the active image and ``vda[N]`` the N-th backing file below it);
2. the job is recorded in the run directory (``jobs.json``) *before* QEMU can finish it, and registered
   here, so no event of it can arrive unannounced;
3. QEMU runs it with ``auto-dismiss: false``: a concluded job stays listed until avirt has read its result,
   so a job that vanishes never hides whether it worked;
4. ``JOB_STATUS_CHANGE``/``BLOCK_JOB_*`` events move the handle; on ``concluded`` avirt dismisses the job,
   re-reads the chain, rewrites the live and persistent XML atomically, and only then ends the handle.

Committing the active image is two-phase: READY, then ``pivot()`` (QMP ``job-complete``) makes the base the
active image, or ``abort()`` (``block-job-cancel`` with ``force``, so QEMU reports CANCELLED) leaves the
chain as it was.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import anyio

from avirt.drivers.qemu.cmdline import Layer
from avirt.errors import BlockJobError, OperationInvalidError, QMPError
from avirt.events.model import BlockJobStatus, JobKind
from avirt.events.translate import timestamp_of
from avirt.jobs import BlockJob, JobPhase
from avirt.offline.qemu_img import create_image, virtual_size

if TYPE_CHECKING:
    from avirt.drivers.qemu.guest import Guest
    from avirt.drivers.qemu.jobhost import JobHost
    from avirt.qmp import Monitor

log = logging.getLogger(__name__)

_INDEX = re.compile(r"([a-z]+)\[(\d+)\]")


@dataclass(frozen=True)
class CommitPlan:
    disk: str
    top: int  # index into the chain, top first (0 = active)
    base: int
    active: bool


class OnlineJobs:
    """The job table of one QEMU driver, and the JobBackend of its online jobs."""

    def __init__(self, driver: JobHost) -> None:
        self._driver = driver
        self._jobs: dict[str, tuple[Guest, BlockJob]] = {}
        #: Jobs that ended while no controller watched, settled on reattach, until block_job() hands
        #: them out (once).
        self._settled: dict[tuple[str, str], BlockJob] = {}
        self._ended_at: dict[str, float | None] = {}  # job id -> QEMU's time of BLOCK_JOB_COMPLETED/CANCELLED
        self._ids = itertools.count(1)

    def job_on(self, guest: Guest, disk: str) -> BlockJob | None:
        return next((job for g, job in self._jobs.values() if g is guest and job.disk == disk), None)

    def copy_target(self, guest: Guest, disk: str) -> tuple[str, str] | None:
        """The destination of the block copy running on ``disk``, as ``(path, node)``; None without one.
        It counts as the layer past the deepest of the disk's chain (``vda[N]``, N the chain's length,
        as the live XML's ``<mirror index>`` says): thresholds and their events name it so."""
        job = self.job_on(guest, disk)
        if job is None or job.kind is not JobKind.COPY or not job.plan.get("dest"):
            return None
        return str(job.plan["dest"]), str(job.plan["nodes"][0])

    def take_settled(self, guest: Guest, disk: str) -> BlockJob | None:
        """A job that concluded while no controller watched, once (see reattach)."""
        return self._settled.pop((guest.name, disk), None)

    # -- chains ------------------------------------------------------------------------------------------

    async def refresh_chains(self, guest: Guest) -> list[dict[str, Any]]:
        """Read every disk's chain back from QEMU: files top-down (``query-block``, which names the top's
        node), each lower layer's node from the names avirt gave (``Guest.nodes``; the newest name of a
        file wins: a file is open once). Returns QEMU's answer, for callers that need more of it."""
        if not guest.config.disks:
            guest.chains = {}
            return []
        blocks: list[dict[str, Any]] = await self._driver.monitor(guest).execute("query-block")
        known = {path: node for node, path in guest.nodes.items()}
        guest.chains = _chains_from(guest, blocks, known)
        return blocks

    async def note_nodes(self, guest: Guest, *, add: dict[str, str] | None = None,
                          drop: list[str] | None = None) -> None:
        """Change ``Guest.nodes`` and write it to nodes.json (before a blockdev-add, after a blockdev-del)."""
        guest.nodes.update(add or {})
        for node in drop or []:
            guest.nodes.pop(node, None)
        async with guest.nodes_lock:  # each write takes the newest names, so the last one written wins
            await self._driver.files.write_nodes(guest.name, dict(guest.nodes))

    def resolve(self, guest: Guest, disk: str, spec: str | None, default: int) -> int:
        return resolve_index([layer.path for layer in self._top_first(guest, disk)], disk, spec, default)

    def _top_first(self, guest: Guest, disk: str) -> list[Layer]:
        chain = guest.chains.get(disk)
        if chain is None:
            raise OperationInvalidError(f"domain '{guest.name}' has no disk {disk}")
        return list(reversed(chain))

    # -- disk snapshots ----------------------------------------------------------------------------------

    async def snapshot(self, guest: Guest, overlays: dict[str, str]) -> None:
        """Put each (already created) overlay on top of its disk, all disks or none, as one transaction."""
        monitor = self._driver.monitor(guest)
        added: list[str] = []
        actions = []
        names = {disk: next_node(disk, guest.nodes) for disk in overlays}
        await self.note_nodes(guest, add={names[disk]: path for disk, path in overlays.items()})
        try:
            for disk, path in overlays.items():
                top = guest.chains[disk][-1]
                node = names[disk]
                await monitor.execute("blockdev-add", {
                    "driver": "qcow2", "node-name": node, "backing": None,
                    "file": {"driver": "file", "node-name": f"{node}-file", "filename": path}})
                added.append(node)
                actions.append({"type": "blockdev-snapshot", "data": {"node": top.node, "overlay": node}})
            await monitor.execute("transaction", {"actions": actions})
        except QMPError as e:
            closed = [node for node in names.values() if node not in added]  # never opened
            for node in reversed(added):
                if await close_node(monitor, node, "snapshot rollback"):
                    closed.append(node)
            await self.note_nodes(guest, drop=closed)
            raise BlockJobError(f"disk snapshot of '{guest.name}' failed, no disk was switched: {e.desc}") \
                from e
        await self.refresh_chains(guest)
        await self._driver.chains_changed(guest)

    # -- block commit ------------------------------------------------------------------------------------

    def plan_commit(self, guest: Guest, disk: str, *, base: str | None, top: str | None,
                    shallow: bool) -> CommitPlan:
        paths = [layer.path for layer in self._top_first(guest, disk)]
        return plan_commit(paths, disk, base=base, top=top, shallow=shallow)

    async def commit(self, guest: Guest, plan: CommitPlan, *, delete: bool, relative: bool,
                     bandwidth: int | None, pivot: bool) -> BlockJob:
        if self.job_on(guest, plan.disk) is not None:
            raise OperationInvalidError(f"disk {plan.disk} of '{guest.name}' already has a block job")
        chain = self._top_first(guest, plan.disk)
        kind = JobKind.ACTIVE_COMMIT if plan.active else JobKind.COMMIT
        job = BlockJob(self, id=f"{kind.value}-{plan.disk}-{next(self._ids)}", disk=plan.disk, kind=kind,
                       offline=False, bandwidth=bandwidth or 0, two_phase=plan.active)
        removed = [layer.path for layer in chain[plan.top if not plan.active else 0:plan.base]]
        job.plan.update(delete=removed if delete else [], auto_pivot=pivot, base=chain[plan.base].path,
                        format=chain[plan.base].format)  # the live XML's <mirror> shows it
        args: dict[str, Any] = {
            "job-id": job.id, "device": chain[0].node, "base-node": chain[plan.base].node,
            "auto-dismiss": False,
        }
        if not plan.active:
            args["top-node"] = chain[plan.top].node
            # Always say what to write into the overlay above top: left to QEMU it may write json: names.
            args["backing-file"] = _backing_name(chain[plan.base].path, chain[plan.top - 1].path, relative)
        return await self._start(guest, job, "block-commit", args, bandwidth)

    # -- block copy --------------------------------------------------------------------------------------

    async def copy(self, guest: Guest, disk: str, dest: str, *, format: str, shallow: bool,
                   reuse_external: bool, bandwidth: int | None, pivot: bool) -> BlockJob:
        """Mirror the disk into ``dest`` (a new image, or an existing one with ``reuse_external``);
        two-phase: ready, then pivot onto the copy or abort and keep the original."""
        if self.job_on(guest, disk) is not None:
            raise OperationInvalidError(f"disk {disk} of '{guest.name}' already has a block job")
        chain = self._top_first(guest, disk)
        backing = chain[1] if shallow and len(chain) > 1 else None
        host = self._driver.host
        exists = await host.exists(dest)
        if reuse_external and not exists:
            raise OperationInvalidError(f"reuse_external: {dest} does not exist")
        if not reuse_external:
            if exists:
                raise OperationInvalidError(f"{dest} already exists (reuse_external=True to use it)")
            await create_image(host, dest, format, size=await virtual_size(host, chain[0].path,
                                                                           chain[0].format),
                               backing=backing.path if backing else None,
                               backing_format=backing.format if backing else None)
        node = next_node(disk, guest.nodes)
        monitor = self._driver.monitor(guest)
        await self.note_nodes(guest, add={node: dest})
        target: dict[str, Any] = {"driver": format, "node-name": node,
                                  "file": {"driver": "file", "node-name": f"{node}-file", "filename": dest}}
        if format == "qcow2":
            target["backing"] = backing.node if backing else None
        try:
            await monitor.execute("blockdev-add", target)
        except QMPError as e:
            await self.note_nodes(guest, drop=[node])
            if not reuse_external:
                await host.remove_tree(dest)
            raise BlockJobError(f"cannot open copy target {dest}: {e.desc}") from e
        job = BlockJob(self, id=f"copy-{disk}-{next(self._ids)}", disk=disk, kind=JobKind.COPY,
                       offline=False, bandwidth=bandwidth or 0, two_phase=True)
        job.plan.update(auto_pivot=pivot, nodes=[node], dest=dest, format=format)
        args = {"job-id": job.id, "device": chain[0].node, "target": node,
                "sync": "top" if backing else "full", "auto-dismiss": False}
        return await self._start(guest, job, "blockdev-mirror", args, bandwidth)

    # -- block pull --------------------------------------------------------------------------------------

    async def pull(self, guest: Guest, disk: str, *, base: str | None, bandwidth: int | None) -> BlockJob:
        """Copy into the active image everything it reads from the layers above ``base`` (all if None)."""
        if self.job_on(guest, disk) is not None:
            raise OperationInvalidError(f"disk {disk} of '{guest.name}' already has a block job")
        chain = self._top_first(guest, disk)
        base_index = self.resolve(guest, disk, base, len(chain))
        if base_index == 0:
            raise OperationInvalidError(f"base {base} is the active image of {disk}: nothing to pull")
        job = BlockJob(self, id=f"pull-{disk}-{next(self._ids)}", disk=disk, kind=JobKind.PULL,
                       offline=False, bandwidth=bandwidth or 0)
        args: dict[str, Any] = {"job-id": job.id, "device": chain[0].node, "auto-dismiss": False}
        if base_index < len(chain):
            args["base-node"] = chain[base_index].node
            args["backing-file"] = chain[base_index].path
        return await self._start(guest, job, "block-stream", args, bandwidth)

    async def _start(self, guest: Guest, job: BlockJob, command: str, args: dict[str, Any],
                     bandwidth: int | None) -> BlockJob:
        self._settled.pop((guest.name, job.disk), None)
        if bandwidth:
            args["speed"] = bandwidth
        job.plan.setdefault("nodes", []).extend(layer.node for layer in guest.chains[job.disk])
        self._jobs[job.id] = (guest, job)  # registered first: every write of jobs.json from now holds it
        try:
            await self._record(guest)  # before QEMU can finish it
        except BaseException:
            del self._jobs[job.id]  # never sent
            raise
        try:
            await self._driver.monitor(guest).execute(command, args)
        except QMPError as e:
            del self._jobs[job.id]
            await self._record(guest)
            raise BlockJobError(f"{command} on {job.disk} refused by QEMU: {e.desc}") from e
        return job

    # -- events ------------------------------------------------------------------------------------------

    def on_qmp_event(self, guest: Guest, msg: dict[str, Any]) -> None:
        name = msg.get("event", "")
        data = msg.get("data") or {}
        entry = self._jobs.get(data.get("id") or data.get("device") or "")
        if entry is None:
            return
        _, job = entry
        if name == "BLOCK_JOB_READY" or (name == "JOB_STATUS_CHANGE" and data.get("status") == "ready"):
            if job.phase is not JobPhase.READY:
                job.set_phase(JobPhase.READY)
                if job.plan.get("auto_pivot"):
                    self._driver.tasks.start_soon(self._auto_pivot, job, name=f"pivot-{job.id}")
        elif name == "JOB_STATUS_CHANGE" and data.get("status") == "standby":
            job.set_phase(JobPhase.STANDBY)
        elif name in ("BLOCK_JOB_COMPLETED", "BLOCK_JOB_CANCELLED"):
            if name == "BLOCK_JOB_CANCELLED":
                job.plan["outcome"] = (BlockJobStatus.CANCELED, None)
            else:
                error = data.get("error")
                job.plan["outcome"] = (BlockJobStatus.FAILED if error else BlockJobStatus.COMPLETED, error)
            job.plan["final"] = (int(data.get("offset", 0)), int(data.get("len", 0)))  # progress() ends there
            self._ended_at[job.id] = timestamp_of(msg)
        elif name == "JOB_STATUS_CHANGE" and data.get("status") == "concluded":
            self._driver.tasks.start_soon(self._finish, guest, job, name=f"finish-{job.id}")

    async def _auto_pivot(self, job: BlockJob) -> None:
        try:
            await self.job_complete(job)
        except (BlockJobError, OperationInvalidError, QMPError) as e:
            # Someone awaits this job: end it (CANCELED, chain untouched) rather than leave it READY.
            log.warning("%s: automatic pivot failed (%s); aborting the job", job.id, e)
            job.error = str(e)
            try:
                await self.job_cancel(job)
            except (QMPError, OperationInvalidError) as cancel_error:
                log.warning("%s: abort after the failed pivot failed too: %s", job.id, cancel_error)

    async def _finish(self, guest: Guest, job: BlockJob) -> None:
        """The job concluded in QEMU: read its result, dismiss it, settle the chain and the XML, end it."""
        status, error = job.plan.get("outcome", (BlockJobStatus.FAILED, "QEMU reported no result"))
        monitor = self._driver.monitor(guest)
        recorded = False
        try:
            if "outcome" not in job.plan:  # no BLOCK_JOB_* event said how it ended: ask QEMU
                for info in await monitor.execute("query-jobs"):
                    # A cancelled job reports the error "Operation canceled": that is not a failure.
                    if info["id"] == job.id:
                        error = info.get("error")
                        status = (BlockJobStatus.CANCELED if error == "Operation canceled"
                                  else BlockJobStatus.FAILED if error else BlockJobStatus.COMPLETED)
            # The result goes into jobs.json before QEMU forgets the job: a controller killed from here on
            # leaves its successor the outcome (reattach), not a job that vanished.
            job.plan["outcome"] = (status, error)
            await self._record(guest)

            async def dismiss() -> None:
                try:
                    await monitor.execute("job-dismiss", {"id": job.id})
                except QMPError as e:  # the result is read already; a job left listed harms nothing
                    log.warning("%s: job-dismiss failed: %s", job.id, e)

            async with anyio.create_task_group() as group:  # independent: one round trip for both
                group.start_soon(dismiss)
                group.start_soon(self._refresh_quietly, guest, job)
            self._jobs.pop(job.id, None)  # dismissed: QEMU will say no more of it
            recorded = True
            async with anyio.create_task_group() as group:  # QMP and file writes overlap
                group.start_soon(self._close_dropped_nodes, guest, job)
                group.start_soon(self._record, guest)
                if status is BlockJobStatus.COMPLETED:
                    group.start_soon(self._driver.chains_changed, guest)
            if status is BlockJobStatus.COMPLETED:
                for path in job.plan.get("delete", []):
                    await self._driver.host.remove_tree(path)
        except QMPError as e:
            log.warning("%s: settling after the job failed: %s", job.id, e)
        finally:
            if not recorded:
                self._jobs.pop(job.id, None)
                await self._record(guest)
            self._end(guest, job, status, error)

    async def _refresh_quietly(self, guest: Guest, job: BlockJob) -> None:
        try:
            await self.refresh_chains(guest)
        # refresh_chains asks in a task group (errors come grouped); a monitor already gone: QEMU is exiting
        except* (QMPError, OperationInvalidError) as group:
            log.warning("%s: cannot re-read the chains after the job: %s", job.id, group.exceptions[0])

    async def _close_dropped_nodes(self, guest: Guest, job: BlockJob) -> None:
        """Nodes the job took out of the chain (or a copy target that was abandoned) stay open, and their
        files locked, until deleted: close them, format node first, then its protocol node."""
        try:
            monitor = self._driver.monitor(guest)
        except OperationInvalidError:
            return  # QEMU is exiting: its nodes go with it
        still = {layer.node for layer in guest.chains.get(job.disk, [])}
        nodes = [node for node in reversed(job.plan.get("nodes", []))  # top down: each backs the one above
                 if node and node not in still]
        await self.close_nodes(guest, monitor, nodes, job.id)

    async def close_nodes(self, guest: Guest, monitor: Monitor, nodes: list[str], why: str) -> None:
        """blockdev-del each node (top down) and its protocol node; those closed leave nodes.json."""
        closed: list[str] = []

        async def delete(node: str) -> None:
            if await close_node(monitor, node, why):
                closed.append(node)

        # Pipelined: each task queues its commands before it first waits, so they leave in this order,
        # and QEMU runs a monitor's commands one by one in the order received.
        async with anyio.create_task_group() as group:
            for node in nodes:
                group.start_soon(delete, node)
        if closed:
            await self.note_nodes(guest, drop=closed)

    async def _close_leftovers(self, guest: Guest) -> None:
        """After a re-attach: close the recorded nodes that no chain and no job QEMU still runs uses: those
        a job dropped (or a copy abandoned) when its controller died before closing them. Left open, they
        keep their files locked, and QEMU would refuse their names again ("Duplicate nodes")."""
        used = {layer.node for layers in guest.chains.values() for layer in layers}
        for g, job in self._jobs.values():
            if g is guest:
                used.update(job.plan.get("nodes", []))
        leftovers = [node for node in guest.nodes if node not in used]
        if not leftovers:
            return
        # A node's backing existed before it, so it has a lower number: the highest first is top down.
        leftovers.sort(key=lambda node: (node.rpartition("-")[0], -_number(node)))
        log.info("domain %s: closing nodes left open by an earlier controller: %s", guest.name, leftovers)
        await self.close_nodes(guest, self._driver.monitor(guest), leftovers, "leftover")

    async def reattach(self, guest: Guest) -> None:
        """After a controller restart: rebuild the handles of the jobs recorded for this guest from what
        QEMU says of them now. A job that concluded while nobody watched is settled with its real result."""
        # A controller killed between a job's end (or a snapshot) and its XML writes left live.xml and
        # domain.xml behind QEMU: they follow the chains QEMU has open, as _finish would have made them.
        await self._driver.chains_changed(guest)
        text = await self._driver.files.read_jobs(guest.name)
        records: dict[str, Any] = json.loads(text) if text else {}
        if not records:
            await self._close_leftovers(guest)
            return
        monitor = self._driver.monitor(guest)
        speeds = {info["device"]: int(info.get("speed", 0))
                  for info in await monitor.execute("query-block-jobs")}
        running = {info["id"]: info for info in await monitor.execute("query-jobs")}
        # Every handle is registered before the next await: an event that QEMU sends after its answer to
        # query-jobs (a job concluding right now) must find its job, or it would be lost and the job hang.
        found = []
        for job_id, record in records.items():
            kind = JobKind(record["kind"])
            job = BlockJob(self, id=job_id, disk=record["disk"], kind=kind, offline=False,
                           two_phase=kind in (JobKind.ACTIVE_COMMIT, JobKind.COPY))
            job.plan.update(record.get("plan", {}))
            if "outcome" in job.plan:  # jobs.json keeps it as text
                job.plan["outcome"] = (BlockJobStatus(job.plan["outcome"][0]), job.plan["outcome"][1])
            job.bandwidth = speeds.get(job_id, 0)
            info = running.get(job_id)
            if info is None:
                await self._settle_forgotten(guest, job)
                continue
            self._jobs[job_id] = (guest, job)
            found.append((job, info))
        for job, info in found:
            await self._catch_up(guest, job, info)
            if job.phase is JobPhase.READY and job.plan.get("auto_pivot"):
                # Its caller asked for the pivot; the controller that would have sent it is gone.
                self._driver.tasks.start_soon(self._auto_pivot, job, name=f"pivot-{job.id}")
        await self._record(guest)
        await self._close_leftovers(guest)

    async def _settle_forgotten(self, guest: Guest, job: BlockJob) -> None:
        """A recorded job that QEMU does not list: either the last controller dismissed it after writing
        its outcome into jobs.json (and died before removing it: the outcome stands, the chains were
        reconciled already, and what the job deletes is deleted now), or QEMU never ran it (that
        controller died between recording it and sending the command) or lost it."""
        outcome = job.plan.pop("outcome", None)
        if outcome is None:
            job.conclude(BlockJobStatus.FAILED, "QEMU no longer knows the job")
        else:
            status = outcome[0]
            if status is BlockJobStatus.COMPLETED:
                for path in job.plan.get("delete", []):
                    await self._driver.host.remove_tree(path)
            job.conclude(status, outcome[1])
        self._settled[(guest.name, job.disk)] = job

    async def resync(self, guest: Guest) -> None:
        """The monitor is back after a lost host connection: bring the handles this controller holds up to
        date with QEMU, and publish what happened to them meanwhile."""
        mine = [job for g, job in self._jobs.values() if g is guest]
        if not mine:
            return
        running = {info["id"]: info for info in await self._driver.monitor(guest).execute("query-jobs")}
        for job in mine:
            before = job.phase
            info = running.get(job.id)
            if info is None:
                self._jobs.pop(job.id, None)
                self._end(guest, job, BlockJobStatus.FAILED, "QEMU no longer knows the job")
                continue
            await self._catch_up(guest, job, info)  # a job that ended meanwhile is settled and announced
            if job.phase is JobPhase.READY and before is not JobPhase.READY:
                self._driver.announce_job(guest, job)  # what the lost BLOCK_JOB_READY would have said
                if job.plan.get("auto_pivot"):
                    self._driver.tasks.start_soon(self._auto_pivot, job, name=f"pivot-{job.id}")
        await self._record(guest)

    async def _catch_up(self, guest: Guest, job: BlockJob, info: dict[str, Any]) -> None:
        """Set a job's phase from QEMU's ``query-jobs`` entry; one that concluded is settled now."""
        status = info["status"]
        if status == "ready":
            job.set_phase(JobPhase.READY)
        elif status == "standby":
            job.set_phase(JobPhase.STANDBY)
        elif status == "concluded":
            error = info.get("error")
            job.plan["outcome"] = ((BlockJobStatus.CANCELED, None) if error == "Operation canceled"
                                   else (BlockJobStatus.FAILED, error) if error
                                   else (BlockJobStatus.COMPLETED, None))
            # Settled before connect() returns: a short-lived controller must not close first. The
            # handle is kept for block_job() so that the result is not lost to the caller.
            await self._finish(guest, job)
            self._settled[(guest.name, job.disk)] = job

    def forget(self, guest: Guest) -> None:
        """QEMU is gone: its jobs end as failed (the chain on disk is whatever QEMU left, still valid),
        unless QEMU said it cancelled them on its way out (quit, as destroy and shutdown send it)."""
        for job_id, (g, job) in list(self._jobs.items()):
            if g is guest:
                del self._jobs[job_id]
                if job.plan.get("outcome", (None,))[0] is BlockJobStatus.CANCELED:
                    self._end(guest, job, BlockJobStatus.CANCELED, None)
                else:
                    self._end(guest, job, BlockJobStatus.FAILED, "QEMU exited while the job ran")

    def owns(self, job_id: str) -> bool:
        """Whether this job is one of avirt's (its end is announced once settled, not at QEMU's event)."""
        return job_id in self._jobs

    def _end(self, guest: Guest, job: BlockJob, status: BlockJobStatus, error: str | None) -> None:
        """Conclude the handle, then announce it: a BlockJobEvent with a final status means that the
        chain, the XML and jobs.json already say what the job did. It carries QEMU's time of the end."""
        job.conclude(status, error, progress=job.plan.get("final"))
        self._driver.announce_job(guest, job, self._ended_at.pop(job.id, None))

    # -- JobBackend --------------------------------------------------------------------------------------

    async def job_progress(self, job: BlockJob) -> tuple[int, int]:
        entry = self._jobs.get(job.id)
        if entry is not None:
            for info in await self._driver.monitor(entry[0]).execute("query-jobs"):
                if info["id"] == job.id:
                    job.plan["progress"] = (int(info["current-progress"]), int(info["total-progress"]))
        cur, end = job.plan.get("progress", (0, 0))
        return int(cur), int(end)

    async def job_set_speed(self, job: BlockJob, bandwidth: int) -> None:
        await self._job_command(job, "block-job-set-speed", {"device": job.id, "speed": bandwidth})

    async def _job_command(self, job: BlockJob, command: str, args: dict[str, Any]) -> None:
        """A command to a running job. QEMU may have concluded it an instant ago, before avirt settled the
        handle: that is the caller's race with the job's end, not a failure (OperationInvalidError)."""
        entry = self._jobs.get(job.id)
        if entry is None:
            raise OperationInvalidError(f"{job.id} has ended")
        try:
            await self._driver.monitor(entry[0]).execute(command, args)
        except QMPError as e:
            if "cannot accept command verb" in e.desc or "not found" in e.desc:
                raise OperationInvalidError(f"{job.id} is ending: {e.desc}") from e
            raise

    async def job_complete(self, job: BlockJob) -> None:
        guest, _ = self._jobs[job.id]
        monitor = self._driver.monitor(guest)
        # READY can flap back to standby; a pivot then waits for READY again rather than failing.
        while True:
            await job.wait_ready()
            try:
                await monitor.execute("job-complete", {"id": job.id})
                return
            except QMPError as e:
                if "cannot accept command verb 'complete'" not in e.desc or job.ended:
                    raise BlockJobError(f"cannot pivot {job.id}: {e.desc}") from e
                job.unready()

    async def job_cancel(self, job: BlockJob) -> None:
        await self._job_command(job, "block-job-cancel", {"device": job.id, "force": True})

    async def _record(self, guest: Guest) -> None:
        """jobs.json in the run directory: the jobs QEMU may be running for this guest. Writes of one guest
        take turns and each writes the table as it is when its turn comes: concurrent jobs' writes land in
        any order, and one computed earlier must not land last and drop a job that started since."""
        async with guest.jobs_lock:
            jobs = {j.id: {"disk": j.disk, "kind": j.kind.value, "plan": _plan_text(j.plan)}
                    for g, j in self._jobs.values() if g is guest}
            await self._driver.files.write_jobs(guest.name, json.dumps(jobs, indent=2))


def _plan_text(plan: dict[str, Any]) -> dict[str, Any]:
    """A job's plan as jobs.json keeps it: the outcome, once known, as ``[status, error]``."""
    if "outcome" not in plan:
        return plan
    status, error = plan["outcome"]
    return {**plan, "outcome": [status.value, error]}



def _chains_from(guest: Guest, blocks: list[dict[str, Any]], nodes: dict[str, str]) -> dict[str, list[Layer]]:
    """Each disk's layers (bottom first) from ``query-block``, with the format node names of ``nodes``
    (file -> node); a layer avirt did not open (someone's own QMP command did) has the node name ''."""
    chains: dict[str, list[Layer]] = {}
    for block in blocks:
        qdev = block.get("qdev", "")
        # A virtio disk's backend is named by its QOM path, an IDE, SCSI or USB disk by its id alone.
        target = next((d.target for d in guest.config.disks
                       if qdev in (d.target, f"/machine/peripheral/{d.target}")
                       or qdev.startswith(f"/machine/peripheral/{d.target}/")), None)
        inserted = block.get("inserted")
        if target is None or inserted is None:
            continue
        layers: list[Layer] = []
        image: dict[str, Any] | None = inserted["image"]
        while image is not None:
            path = _plain_filename(image["filename"])
            node = inserted["node-name"] if not layers else nodes.get(path)
            if node is None:
                log.warning("domain %s: %s is in the chain of %s under a node avirt did not name",
                            guest.name, path, target)
                node = ""
            layers.append(Layer(path, image["format"], node))
            image = image.get("backing-image")
        chains[target] = list(reversed(layers))
    return chains


def resolve_index(paths: list[str], disk: str, spec: str | None, default: int) -> int:
    """A chain index (0 = active, ``paths`` top first) from a path, ``vda[N]``, or None (``default``)."""
    if spec is None:
        return default
    if match := _INDEX.fullmatch(spec):
        if match.group(1) != disk:
            raise OperationInvalidError(f"{spec} names disk {match.group(1)}, not {disk}")
        index = int(match.group(2))
        if index >= len(paths):
            raise OperationInvalidError(f"{spec}: disk {disk} has only {len(paths)} layers")
        return index
    wanted = os.path.normpath(spec)
    for index, path in enumerate(paths):
        if os.path.normpath(path) == wanted:
            return index
    raise OperationInvalidError(f"{spec} is not in the backing chain of {disk}")


def mirror_index(paths: list[str], target: str, *, copy: bool) -> int | None:
    """The ``N`` of ``vda[N]`` that names a two-phase job's target (``paths`` top first): a copy's
    destination is one past the deepest layer, an active commit's base keeps its place in the chain."""
    if copy:
        return len(paths)
    wanted = os.path.normpath(target)
    return next((i for i, path in enumerate(paths) if os.path.normpath(path) == wanted), None)


def plan_commit(paths: list[str], disk: str, *, base: str | None, top: str | None,
                shallow: bool) -> CommitPlan:
    """virDomainBlockCommit's arguments as chain indexes (``paths`` top first), online or offline."""
    top_index = resolve_index(paths, disk, top, 0)
    if shallow:
        if base is not None:
            raise OperationInvalidError("shallow=True and base exclude each other")
        base_index = top_index + 1
    else:
        base_index = resolve_index(paths, disk, base, len(paths) - 1)
    if top_index == len(paths) - 1 or base_index >= len(paths):
        raise OperationInvalidError(f"{paths[top_index]} has no backing file to commit into")
    if base_index <= top_index:
        raise OperationInvalidError(f"base {paths[base_index]} is not below top {paths[top_index]} in {disk}")
    return CommitPlan(disk, top_index, base_index, active=top_index == 0)


def _plain_filename(filename: str) -> str:
    """QEMU names an image whose backing name is relative as ``json:{...}``; the file is inside."""
    if not filename.startswith("json:"):
        return filename
    spec = json.loads(filename[5:])
    inner = spec.get("file", {})
    return str(inner.get("filename", filename)) if isinstance(inner, dict) else filename


def next_node(disk: str, nodes: dict[str, str]) -> str:
    """A node name QEMU does not have: one past the highest ``<disk>-<n>`` that avirt may have open, not
    just in the chain (nodes a job dropped stay open until closed)."""
    numbers = [int(n) for node in nodes if (n := node.removeprefix(f"{disk}-")).isdigit()]
    return f"{disk}-{max(numbers, default=0) + 1}"


def _number(node: str) -> int:
    number = node.rpartition("-")[2]
    return int(number) if number.isdigit() else 0


async def close_node(monitor: Monitor, node: str, why: str) -> bool:
    """blockdev-del a format node, then its protocol node: whether QEMU no longer has it."""
    closed = True
    for name in (node, f"{node}-file"):
        try:
            await monitor.execute("blockdev-del", {"node-name": name})
        except QMPError as e:
            if "Failed to find node" not in e.desc and "Cannot find" not in e.desc:
                log.warning("%s: blockdev-del %s: %s", why, name, e.desc)
                closed = False
    return closed


def _backing_name(base: str, overlay: str, relative: bool) -> str:
    """The backing file name to write into ``overlay``'s header: absolute, or relative to its directory."""
    return os.path.relpath(base, os.path.dirname(overlay)) if relative else base
