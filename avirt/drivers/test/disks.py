"""Block jobs and disk snapshots of the test driver: the QEMU driver's rules, applied to the image store.

Nothing here decides semantics of its own. ``top``/``base`` are resolved with the QEMU driver's own
functions (``plan_commit``, ``resolve_index``: the same ``vda[N]`` indexes, the same refusals with the
same messages), a job's effect on the chain is what the QEMU driver's job does to the files
(``images.commit``/``pull``/``copy_into``), and online or offline is decided by the domain's state:

* running or paused: an online job, two-phase for an active commit and a copy (READY, then ``pivot()``
  or ``abort()``), one job per disk; a domain that stops cancels its jobs, as QEMU does when it quits;
* shut off: an offline job as ``qemu-img`` would run it: single-phase (an active commit simply
  completes), no bandwidth limit, no copy, ``start()`` refused meanwhile, and ``ImageLockedError`` up
  front when a running domain has one of the images open.

When a job completes, the disk's new top (if it changed) is written into the live and the persistent
definition at once, as the QEMU driver does after re-reading the chain from QEMU.
"""

from __future__ import annotations

import itertools
import secrets
from collections.abc import Callable
from typing import TYPE_CHECKING

from avirt.config.model import DomainConfig
from avirt.config.serialize import Mirror
from avirt.drivers.base import overlay_path
from avirt.drivers.qemu.blockjobs import mirror_index, plan_commit, resolve_index
from avirt.drivers.test import images as ops
from avirt.drivers.test.images import Image, ImageStore, declared_chains
from avirt.drivers.test.jobs import SimulatedJobs
from avirt.errors import (
    DomainStartError,
    ImageError,
    ImageLockedError,
    OperationInvalidError,
    SharedImageError,
)
from avirt.events.model import BlockJobEvent, BlockJobStatus, JobKind
from avirt.jobs import BlockJob, JobPhase

if TYPE_CHECKING:
    from avirt.drivers.test.driver import SimDomain, TestDriver


class Disks:
    def __init__(self, driver: TestDriver) -> None:
        self._driver = driver
        self.images = ImageStore()
        self.runner = SimulatedJobs(driver.tasks)
        self._jobs: dict[tuple[str, str], BlockJob] = {}  # (domain, disk) -> its job, online or offline
        self._ids = itertools.count(1)

    # -- images of definitions -----------------------------------------------------------------------------

    def seed(self, cfg: DomainConfig, xml: str) -> None:
        """Give each disk image the store does not know yet an existence (and the chain its XML declares)."""
        declared = declared_chains(xml)
        for disk in cfg.disks:
            if disk.source is not None:
                self.images.ensure(disk.source, disk.format, declared.get(disk.target, []))

    def check_startable(self, cfg: DomainConfig) -> None:
        """What QEMU would refuse at start: a missing image or backing file, or an image another running
        domain holds locked (written by one, or written by us and read by one)."""
        users = self._users(exclude=None)
        for disk in cfg.disks:
            if disk.source is None and disk.device != "disk":
                continue  # an empty drive: a device without media, as on QEMU
            prefix = f"cannot start domain '{cfg.name}': disk {disk.target}"
            if disk.source is None or disk.source not in self.images:
                raise DomainStartError(f"{prefix} image {disk.source} does not exist")
            try:
                chain = self.images.chain(disk.source)
            except ImageError as e:
                raise DomainStartError(f"{prefix}: {e}") from e
            for index, image in enumerate(chain):
                user = users.get(id(image))
                if user is not None and (user[1] or (index == 0 and not disk.readonly)):
                    raise DomainStartError(f"{prefix}: {image.path} is locked: domain '{user[0]}' has it "
                                           "open")

    def _users(self, exclude: SimDomain | None) -> dict[int, tuple[str, bool]]:
        """id(image) -> (a running domain that has it open, whether that domain writes to it)."""
        users: dict[int, tuple[str, bool]] = {}
        for dom in self._driver.domains():
            if dom is exclude or dom.live is None:
                continue
            for disk in dom.live.disks:
                for index, image in enumerate(self._chain_or_none(disk.source)):
                    writes = index == 0 and not disk.readonly
                    if writes or id(image) not in users:
                        users[id(image)] = (dom.name, writes)
        return users

    def _refuse_shared_base(self, dom: SimDomain, base: Image) -> None:
        """As the QEMU driver: no commit into a base that another domain's disk reads."""
        readers = [other.name for other in self._driver.domains() if other is not dom
                   and any(image is base for disk in other.config.disks
                           for image in self._chain_or_none(disk.source))]
        if readers:
            raise SharedImageError(base.path, readers)

    def _chain_or_none(self, path: str | None) -> list[Image]:
        try:
            return self.images.chain(path) if path else []
        except ImageError:
            return []

    # -- chains --------------------------------------------------------------------------------------------

    def chain(self, dom: SimDomain, disk: str) -> list[Image]:
        target = dom.config.disk(disk)
        if target is None or target.source is None:
            raise OperationInvalidError(f"domain '{dom.name}' has no disk {disk}")
        return self.images.chain(target.source)

    def live_chains(self, dom: SimDomain) -> dict[str, list[tuple[str, str]]]:
        """Each disk's layers below the active image, top-down, for the live XML's ``<backingStore>``."""
        assert dom.live is not None
        return {disk.target: [(image.path, image.format) for image in chain[1:]]
                for disk in dom.live.disks if (chain := self._chain_or_none(disk.source))}

    def mirrors(self, dom: SimDomain) -> dict[str, Mirror]:
        found = {}
        for (name, disk), job in self._jobs.items():
            if name == dom.name and job.two_phase:
                path = job.plan.get("dest") or job.plan["base"]
                index = mirror_index(_paths(self.chain(dom, disk)), path, copy=job.kind is JobKind.COPY)
                found[disk] = Mirror(job.kind.value, path, job.plan.get("format", "qcow2"),
                                     job.phase is JobPhase.READY, index)
        return found

    def threshold_paths(self, dom: SimDomain, disk: str) -> list[str]:
        """The layers a threshold can be set on, top first: the chain, then a running copy's destination
        (``vda[N]``, N the chain's length), as on QEMU."""
        paths = _paths(self.chain(dom, disk))
        job = self._jobs.get((dom.name, disk))
        if job is not None and job.kind is JobKind.COPY and not job.offline and job.plan.get("dest"):
            paths.append(str(job.plan["dest"]))
        return paths

    def _switch(self, dom: SimDomain, disk: str, image: Image) -> None:
        """The disk's image is now ``image``: live and persistent definitions alike."""
        for cfg in {id(c): c for c in (dom.live, dom.definition) if c is not None}.values():
            target = cfg.disk(disk)
            if target is not None:
                target.source, target.format = image.path, image.format  # type: ignore[assignment]

    # -- snapshots -----------------------------------------------------------------------------------------

    def snapshot(self, dom: SimDomain, name: str, disks: list[str] | None) -> dict[str, str]:
        cfg = dom.config
        chosen = [d for d in cfg.disks if (disks is None and not d.readonly) or (disks and d.target in disks)]
        unknown = set(disks or ()) - {d.target for d in chosen}
        if unknown:
            raise OperationInvalidError(f"domain '{dom.name}' has no disk {', '.join(sorted(unknown))}")
        for disk in chosen:
            if (dom.name, disk.target) in self._jobs:
                raise OperationInvalidError(f"disk {disk.target} of '{dom.name}' has a block job running")
        overlays = {d.target: overlay_path(d.source or "", name) for d in chosen}
        for path in overlays.values():
            if path in self.images:
                raise OperationInvalidError(f"snapshot image {path} already exists")
        below: dict[str, Image] = {}
        for disk in chosen:
            image = self.images.get(disk.source or "")
            if image is None:
                raise ImageError(f"cannot create {overlays[disk.target]}: could not open backing file "
                                 f"{disk.source}: No such file or directory", 1)
            below[disk.target] = image
        for target, image in below.items():  # all or none: nothing can fail from here on
            overlay = self.images.add(Image(overlays[target], "qcow2", image.virtual_size, image.path))
            self._switch(dom, target, overlay)
        return overlays

    # -- block jobs ----------------------------------------------------------------------------------------

    def job(self, dom: SimDomain, disk: str) -> BlockJob | None:
        if dom.config.disk(disk) is None:
            raise OperationInvalidError(f"domain '{dom.name}' has no disk {disk}")
        return self._jobs.get((dom.name, disk))

    def offline_jobs_of(self, name: str) -> list[str]:
        return [disk for (owner, disk), job in self._jobs.items() if owner == name and job.offline]

    def commit(self, dom: SimDomain, disk: str, *, base: str | None, top: str | None, shallow: bool,
               delete: bool, bandwidth: int | None, pivot: bool, allow_shared_base: bool = False) -> BlockJob:
        if dom.active:
            chain = self.chain(dom, disk)
            where = plan_commit(_paths(chain), disk, base=base, top=top, shallow=shallow)
            self._require_idle(dom, disk)
        else:
            chain = self._offline_chain(dom, disk, bandwidth)
            where = plan_commit(_paths(chain), disk, base=base, top=top, shallow=shallow)
        committed, into = chain[where.top:where.base], chain[where.base]
        if not allow_shared_base:
            self._refuse_shared_base(dom, into)

        def apply() -> None:
            ops.commit(chain, where.top, where.base)
            if where.active:
                self._switch(dom, disk, into)
            if delete:
                for image in committed:
                    self.images.remove(image.path)

        kind = JobKind.ACTIVE_COMMIT if where.active else JobKind.COMMIT
        job = self._new_job(dom, disk, kind, two_phase=where.active, bandwidth=bandwidth)
        job.plan.update(base=into.path, format=into.format)
        return self._launch(dom, job, chain[0].virtual_size, apply, pivot)

    def pull(self, dom: SimDomain, disk: str, *, base: str | None, bandwidth: int | None) -> BlockJob:
        if dom.active:
            self._require_idle(dom, disk)
            chain = self.chain(dom, disk)
        else:
            chain = self._offline_chain(dom, disk, bandwidth)
        index = resolve_index(_paths(chain), disk, base, len(chain))
        if index == 0:
            raise OperationInvalidError(f"base {base} is the active image of {disk}: nothing to pull")
        job = self._new_job(dom, disk, JobKind.PULL, two_phase=False, bandwidth=bandwidth)
        return self._launch(dom, job, chain[0].virtual_size, lambda: ops.pull(chain, index), False)

    def copy(self, dom: SimDomain, disk: str, dest: str, *, format: str, shallow: bool, reuse_external: bool,
             bandwidth: int | None, pivot: bool) -> BlockJob:
        if not dom.active:
            raise OperationInvalidError(
                f"domain '{dom.name}' is shut off: offline block copy is not implemented yet")
        self._require_idle(dom, disk)
        chain = self.chain(dom, disk)
        exists = dest in self.images
        if reuse_external and not exists:
            raise OperationInvalidError(f"reuse_external: {dest} does not exist")
        if not reuse_external and exists:
            raise OperationInvalidError(f"{dest} already exists (reuse_external=True to use it)")
        target = self.images.get(dest) or self.images.add(Image(dest, format, chain[0].virtual_size))
        target.format = format  # an existing image is opened as the caller says

        def apply() -> None:
            ops.copy_into(chain, target, shallow=shallow)
            self._switch(dom, disk, target)

        job = self._new_job(dom, disk, JobKind.COPY, two_phase=True, bandwidth=bandwidth)
        job.plan.update(dest=dest, format=format)
        return self._launch(dom, job, chain[0].virtual_size, apply, pivot)

    def domain_stopped(self, dom: SimDomain) -> None:
        """Its online jobs end CANCELED, as QEMU cancels its jobs when it quits; the chain stays."""
        for key, job in list(self._jobs.items()):
            if key[0] == dom.name and not job.offline:
                del self._jobs[key]
                self.runner.cancel(job)

    def _require_idle(self, dom: SimDomain, disk: str) -> None:
        if (dom.name, disk) in self._jobs:
            raise OperationInvalidError(f"disk {disk} of '{dom.name}' already has a block job")

    def _offline_chain(self, dom: SimDomain, disk: str, bandwidth: int | None) -> list[Image]:
        if bandwidth:
            raise OperationInvalidError("an offline job runs at full speed: no bandwidth offline")
        chain = self.chain(dom, disk)
        self._require_idle(dom, disk)
        users = self._users(exclude=dom)
        for image in chain:  # qemu-img would find the image locked: refused before a byte is touched
            user = users.get(id(image))
            if user is not None:
                raise ImageLockedError(f"{image.path} is in use by another process: domain '{user[0]}' has "
                                       "it open", 1, 'Failed to get "write" lock')
        return chain

    def _new_job(self, dom: SimDomain, disk: str, kind: JobKind, *, two_phase: bool,
                 bandwidth: int | None) -> BlockJob:
        offline = not dom.active
        job_id = (f"{kind.value}-{disk}-offline-{secrets.token_hex(3)}" if offline
                  else f"{kind.value}-{disk}-{next(self._ids)}")
        return BlockJob(self.runner, id=job_id, disk=disk, kind=kind, offline=offline,
                        bandwidth=bandwidth or 0, two_phase=two_phase and not offline)

    def _launch(self, dom: SimDomain, job: BlockJob, end: int, apply: Callable[[], None],
                pivot: bool) -> BlockJob:
        key = (dom.name, job.disk)
        self._jobs[key] = job
        bus = self._driver.bus

        def on_ready(job: BlockJob) -> None:
            bus.emit(BlockJobEvent, dom.name, dom.uuid, disk=job.disk, job_kind=job.kind,
                     status=BlockJobStatus.READY)

        def on_end(job: BlockJob, status: BlockJobStatus, error: str | None) -> None:
            if self._jobs.get(key) is job:
                del self._jobs[key]
            bus.emit(BlockJobEvent, dom.name, dom.uuid, disk=job.disk, job_kind=job.kind, status=status,
                     error=error)

        self.runner.start(job, end, apply=apply, on_ready=on_ready, on_end=on_end, auto_pivot=pivot)
        return job


def _paths(chain: list[Image]) -> list[str]:
    return [image.path for image in chain]
