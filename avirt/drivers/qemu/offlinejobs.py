"""Block jobs on shut-off domains, as the state directory's: recorded before they run, finished by
whichever controller holds the directory.

An offline job is a planned sequence of ``qemu-img`` runs (``offline/plan.py``) executed by
``offline/imagejob.py``'s runner. Those runs belong to the controller that spawned them: ``Host.spawn``
ties each one to the controller's life (``setpriv --pdeathsig KILL``), so a controller that is killed
leaves no qemu-img behind, writing images and holding their locks with nobody to hear how it ended. What
survives the controller is the job's **record**, ``<state_dir>/offline/<domain>/<disk>.json``::

    {"id": ..., "domain": ..., "disk": ..., "kind": ..., "size": ..., "delete": ...,
     "steps": [{"argv": [...], "weight": ...}, ...], "new_source": [path, format] | null,
     "obsolete": [...], "step": N, "pid": P | null}

It is written (atomically, fsynced) before the first qemu-img starts, and again as the job moves on:
``step`` is the first step not known to be finished, ``pid`` the process running it. It is removed once the
job has ended and everything it changes is written: the images, the definition (an active commit makes the
base the disk's image), the files ``delete`` removes.

**Recovery**: ``connect()`` finds the records of the jobs that a controller left unfinished, ends a
qemu-img that survived it (the recorded pid, if it is still alive and still runs that step's command),
and runs each job again from its first unfinished step, under the same id, as a job of this controller:
``block_job(disk)`` returns it, ``start()`` is refused meanwhile, its end is announced as any other. This is
valid because every step is safe to interrupt and to repeat: ``qemu-img commit -b`` leaves every layer
above the base as it was (``-b`` implies ``-d``), so what the top shows does not change however far it
got, and running it again copies the same data again; a safe ``qemu-img rebase`` copies into the image
only what it already shows, and changes the header last; ``rebase -u`` rewrites one header field. The
definition update and the deletions that follow success are repeated as well, and they too are
idempotent. A job that ended cancelled or failed keeps nothing to finish: a cancel removes the record
before it stops qemu-img, and a failure (qemu-img's own error) removes it before the job's end is
announced.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import signal
from typing import TYPE_CHECKING, Any

import anyio

from avirt.config import domain_to_xml
from avirt.errors import AvirtError
from avirt.events.model import JobKind
from avirt.jobs import BlockJob
from avirt.offline.imagejob import ImageJobRunner, Step
from avirt.offline.plan import OfflinePlan

if TYPE_CHECKING:
    from avirt.drivers.qemu.guest import Guest
    from avirt.drivers.qemu.jobhost import JobHost

log = logging.getLogger(__name__)

#: How long a qemu-img left by a dead controller may take to die once it is sent SIGKILL.
SURVIVOR_GRACE = 10.0


class OfflineJobs:
    """The offline jobs of one QEMU driver: their table, their records, and their JobBackend."""

    def __init__(self, driver: JobHost) -> None:
        self._driver = driver
        self.runner = ImageJobRunner(driver.host)
        #: (domain, disk) -> the job running on it; start() and snapshots are refused meanwhile.
        self.running: dict[tuple[str, str], BlockJob] = {}
        #: Jobs recovered from an earlier controller that have ended, until block_job() hands them out.
        self._settled: dict[tuple[str, str], BlockJob] = {}
        self._records: dict[str, dict[str, Any]] = {}  # job id -> its record, as last written
        self._root = os.path.join(driver.files.root, "offline")

    def busy_disks(self, name: str) -> list[str]:
        return [disk for (owner, disk) in self.running if owner == name]

    def take_settled(self, name: str, disk: str) -> BlockJob | None:
        """A recovered job that has ended, once."""
        return self._settled.pop((name, disk), None)

    async def start(self, guest: Guest, disk: str, kind: JobKind, plan: OfflinePlan, *,
                    delete: bool) -> BlockJob:
        """Record the job, then run it in a task of the driver; returns its handle at once."""
        job = BlockJob(self, id=f"{kind.value}-{disk}-offline-{secrets.token_hex(3)}", disk=disk, kind=kind,
                       offline=True)
        record = {
            "id": job.id, "domain": guest.name, "disk": disk, "kind": kind.value, "size": plan.size,
            "delete": delete, "steps": [{"argv": list(s.argv), "weight": s.weight} for s in plan.steps],
            "new_source": list(plan.new_source) if plan.new_source else None, "obsolete": plan.obsolete,
            "step": 0, "pid": None,
        }
        await self._write(record)  # before any qemu-img can change a byte
        self._launch(guest, job, record)
        return job

    async def recover(self) -> None:
        """At connect: finish the jobs an earlier controller left unfinished (see the module's text)."""
        for name in await self._driver.host.list_dir(self._root):
            for file in await self._driver.host.list_dir(os.path.join(self._root, name)):
                if not file.endswith(".json") or file.startswith("."):
                    continue
                path = os.path.join(self._root, name, file)
                text = await self._driver.host.read_text(path)
                try:
                    record = json.loads(text or "")
                except json.JSONDecodeError:  # written atomically: never half a record, but not ours
                    log.warning("ignoring %s: not an offline job record", path)
                    continue
                await self._recover_one(record)

    async def _recover_one(self, record: dict[str, Any]) -> None:
        await self._end_survivor(record)
        guest = self._driver.guests.get(record["domain"])
        if guest is None or guest.definition is None or guest.active:
            # Nothing a job could be finished for: the domain went, or runs on these very images.
            log.warning("offline job %s of domain %s cannot be finished here (the domain is %s); "
                        "dropping its record", record["id"], record["domain"],
                        "running" if guest is not None and guest.active else "gone")
            await self._remove(record)
            return
        log.info("domain %s: finishing offline job %s on %s, left by an earlier controller, from step %d",
                 guest.name, record["id"], record["disk"], record["step"] + 1)
        job = BlockJob(self, id=record["id"], disk=record["disk"], kind=JobKind(record["kind"]), offline=True)
        self._launch(guest, job, record, recovered=True)

    async def _end_survivor(self, record: dict[str, Any]) -> None:
        """A qemu-img of the record's step that outlived its controller (only possible if that controller
        died between spawning it and its parent-death signal taking hold) is ended before the step runs
        again: two writers must never share an image. Its pid counts only if it still runs that command."""
        pid, step = record.get("pid"), record["step"]
        host = self._driver.host
        if not pid or step >= len(record["steps"]) or not await host.pid_alive(pid):
            return
        cmdline = await host.read_text(f"/proc/{pid}/cmdline")
        if cmdline is None or cmdline.rstrip("\0").split("\0") != record["steps"][step]["argv"]:
            return  # the pid is another process's now
        log.warning("offline job %s: qemu-img (pid %d) outlived its controller; ending it", record["id"], pid)
        await host.kill(pid, signal.SIGKILL)
        with anyio.move_on_after(SURVIVOR_GRACE):
            await host.wait_exit(pid)

    def _launch(self, guest: Guest, job: BlockJob, record: dict[str, Any], *,
                recovered: bool = False) -> None:
        key = (guest.name, job.disk)
        self.running[key] = job
        self._records[job.id] = record
        first = record["step"]
        steps = [Step(tuple(s["argv"]), s["weight"]) for s in record["steps"]][first:]
        self.runner.expect(job, record["size"])

        async def on_spawn(index: int, pid: int) -> None:
            record["step"], record["pid"] = first + index, pid
            await self._write(record, durable=False)  # the step itself was recorded durably before

        async def on_success() -> None:
            record["step"], record["pid"] = len(record["steps"]), None
            await self._write(record)  # every byte is where it goes: only the definition remains
            new_source = record["new_source"]
            if new_source is not None and guest.definition is not None:
                target = guest.definition.disk(job.disk)
                assert target is not None
                target.source, target.format = new_source
                await self._driver.files.write_definition(guest.name, domain_to_xml(guest.definition))
            if record["delete"]:
                for path in record["obsolete"]:
                    await self._driver.host.remove_tree(path)

        async def run() -> None:
            error: AvirtError | None = None
            try:
                error = await self.runner.run(job, steps, record["size"], on_success, on_spawn=on_spawn)
            except anyio.get_cancelled_exc_class():
                # The connection is closing: qemu-img is stopped, the record stays, the next controller
                # finishes the job. This handle ends FAILED (the runner says "interrupted").
                self._records.pop(job.id, None)
                raise
            finally:
                del self.running[key]
                if job.id in self._records:  # ended here: completed, failed or cancelled
                    with anyio.CancelScope(shield=True):
                        await self._quietly_remove(record)
                if recovered and job.ended:
                    self._settled[key] = job
                self._driver.disk_images_changed(guest)
                self._driver.announce_job(guest, job)
            if error is not None:
                log.info("offline job %s failed: %s", job.id, error)

        self._driver.tasks.start_soon(run, name=f"offline-{job.id}")

    # -- records -----------------------------------------------------------------------------------------

    def _path(self, record: dict[str, Any]) -> str:
        return os.path.join(self._root, record["domain"], f"{record['disk']}.json")

    async def _write(self, record: dict[str, Any], *, durable: bool = True) -> None:
        directory = os.path.dirname(self._path(record))
        await self._driver.host.make_dirs(directory)
        await self._driver.host.write_atomic(self._path(record), json.dumps(record, indent=1),
                                             durable=durable)

    async def _remove(self, record: dict[str, Any]) -> None:
        self._records.pop(record["id"], None)
        await self._driver.host.remove_tree(self._path(record))

    async def _quietly_remove(self, record: dict[str, Any]) -> None:
        try:
            await self._remove(record)
        except AvirtError as e:  # an unreachable remote host: the next controller runs the job again
            log.warning("offline job %s: cannot remove its record: %s", record["id"], e)

    # -- JobBackend --------------------------------------------------------------------------------------

    async def job_progress(self, job: BlockJob) -> tuple[int, int]:
        return await self.runner.job_progress(job)

    async def job_set_speed(self, job: BlockJob, bandwidth: int) -> None:
        await self.runner.job_set_speed(job, bandwidth)

    async def job_complete(self, job: BlockJob) -> None:
        await self.runner.job_complete(job)

    async def job_cancel(self, job: BlockJob) -> None:
        # The record goes first: a controller killed while qemu-img stops must not finish the job later.
        record = self._records.get(job.id)
        if record is not None:
            await self._remove(record)
        await self.runner.job_cancel(job)
