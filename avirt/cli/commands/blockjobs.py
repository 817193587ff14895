"""Block jobs and disk snapshots: ``blockcommit``, ``blockpull``, ``blockcopy``, ``blockjob``,
``snapshot-create-as``, ``domblkchain``.

Each is one ``Domain`` call (``block_commit``, ``block_pull``, ``block_copy``, ``block_job``,
``snapshot_disks``, ``block_chain``), with virsh's options and words.

The daemonless model decides what ``--wait`` means. A job runs in QEMU, not in this command: without
``--wait`` the command starts it and exits at once (status 0), the job goes on, and a later command finds
it with ``Domain.block_job()`` (avirt records every job in the state directory before QEMU can finish it):
``avirt blockjob DOM DISK`` shows it, ``--pivot`` or ``--abort`` ends it. A job that ends while no command
is connected keeps its result in QEMU until the next command reads it. With ``--wait`` this command stays
connected (holding the state directory) until the job is done:

* a job that ends by itself (pull, intermediate commit) until it has ended;
* a two-phase job (active commit, copy) until it is ready ("Now in synchronized phase" / "Now in mirroring
  phase"), leaving it ready for a later ``blockjob --pivot`` or ``--abort``; with ``--pivot``, until it has
  pivoted ("Successfully pivoted"). ``--pivot`` implies ``--wait``, as in virsh; so does ``--verbose``.

Ctrl-C while waiting aborts the job (the disk stays as it was), as in virsh, and exits with status 130.
A job that runs in this process rather than in QEMU (``job.offline``: qemu-img on a shut-off domain)
would die with the command, so the command always waits for it.

A job that ended while no command was connected is settled (result read, chain and XML updated) by the
next connection in the background; every command here waits for that before it closes, so as not to cut
it short. Whether QEMU has concluded a job is read from QEMU (``query-block-jobs`` through
``Domain.qemu_monitor_command``), as is the bandwidth of a job an earlier command started: the API does
not say either yet.

``--verbose`` shows the progress: a bar redrawn in place on a terminal, ``Block commit: [ 42 %]`` lines
(one per percent reached) when standard output is not a terminal.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import signal
from typing import TYPE_CHECKING, Any, TextIO

from avirt.cli.command import BLOCK_JOBS, Command, CommandError, Context, add_domain_argument
from avirt.cli.output import key_values, table

if TYPE_CHECKING:
    import anyio.abc

    from avirt import BlockJob, Domain

#: Exit status after Ctrl-C, as for any interrupted program.
_INTERRUPTED = 130
#: How long to wait for a connection to settle a job that ended while no command watched (seconds).
_SETTLE_TIMEOUT = 60

_UNITS = {"": 1, "k": 1 << 10, "kib": 1 << 10, "m": 1 << 20, "mib": 1 << 20, "g": 1 << 30, "gib": 1 << 30}


def bytes_per_second(text: str) -> int:
    """``type=`` for --bandwidth: bytes per second, optionally with a 1024-based K, M or G suffix."""
    match = re.fullmatch(r"\s*(\d+)\s*([A-Za-z]*)\s*", text)
    unit = _UNITS.get(match.group(2).lower()) if match else None
    if match is None or unit is None:
        raise argparse.ArgumentTypeError(
            f"not a bandwidth in bytes/s: '{text}' (a whole number, optionally with K, M or G)")
    return int(match.group(1)) * unit


def human_size(n: int) -> str:
    """``3145728`` -> ``3.0 MiB``; bytes below 1 KiB as they are."""
    if n < 1024:
        return f"{n} B"
    value = float(n)
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        value /= 1024
        if value < 1024 or unit == "TiB":
            break
    return f"{value:.1f} {unit}"


def percent(cur: int, end: int) -> int:
    """virsh's rule: 100 only when nothing remains; a job with work left shows at most 99."""
    if end <= 0:
        return 0
    if cur >= end:
        return 100
    return min(99, cur * 100 // end)


def _label(job: BlockJob) -> str:
    """The job in words: ``Block commit``, ``Active block commit``, ``Block pull``, ``Block copy``."""
    return {"commit": "Block commit", "active-commit": "Active block commit", "pull": "Block pull",
            "copy": "Block copy"}.get(job.kind.value, f"Block {job.kind.value}")


def _progress_label(job: BlockJob) -> str:
    return "Block commit" if job.kind.value == "active-commit" else _label(job)


# -- progress ----------------------------------------------------------------------------------------------


class Progress:
    """``--verbose``: a bar redrawn in place on a terminal, one plain line per new percentage otherwise."""

    BAR = 30

    def __init__(self, out: TextIO, label: str, *, tty: bool) -> None:
        self.out = out
        self.label = label
        self.tty = tty
        self.shown: int | None = None
        self._width = 0

    def update(self, cur: int, end: int) -> None:
        pct = percent(cur, end)
        if self.tty:
            filled = self.BAR * pct // 100
            bar = "#" * filled + "-" * (self.BAR - filled)
            size = f"  {human_size(cur)} of {human_size(end)}" if end > 0 else ""
            text = f"{self.label}: [{bar}] {pct:3d} %{size}"
            self.out.write("\r" + text.ljust(self._width))
            self._width = len(text)
        elif pct != self.shown:
            self.out.write(f"{self.label}: [{pct:3d} %]\n")
        self.shown = pct
        self.out.flush()

    def finish(self) -> None:
        """The job is done (or ready): show 100 %, and end the terminal's line."""
        if self.shown != 100:
            self.update(1, 1)
        self.close()

    def close(self) -> None:
        if self.tty and self._width:
            self.out.write("\n")
            self.out.flush()
            self._width = 0

    async def follow(self, job: BlockJob) -> None:
        self.update(0, 0)
        async for cur, end in job.progress():
            if end > 0:  # (0, 0): not started yet, or already gone from QEMU while the handle ends
                self.update(cur, end)


async def _follow(ctx: Context, job: BlockJob, *, verbose: bool) -> bool:
    """Wait until the job has ended (one-phase) or is ready (two-phase), showing progress if asked.

    Ctrl-C aborts the job, as virsh does; returns False then (the job has been aborted), else True.
    A job that ends with an error raises BlockJobError; one cancelled by someone else, CommandError.
    """
    import anyio

    from avirt import BlockJobStatus
    from avirt.errors import OperationInvalidError

    display = Progress(ctx.stdout, _progress_label(job), tty=ctx.stdout.isatty()) if verbose else None
    interrupted = False

    async with anyio.create_task_group() as group:

        async def abort_on_ctrl_c(*, task_status: anyio.abc.TaskStatus[None]) -> None:
            nonlocal interrupted
            with anyio.open_signal_receiver(signal.SIGINT) as signals:
                task_status.started()
                async for _ in signals:
                    interrupted = True
                    group.cancel_scope.cancel()
                    return

        await group.start(abort_on_ctrl_c)
        if display is not None:
            group.start_soon(display.follow, job)
        try:
            if job.two_phase:
                await job.wait_ready()
            else:
                await job.wait()
        except BaseException:
            if display is not None:
                display.close()  # end the bar's line before an error message or the Ctrl-C note
            raise
        group.cancel_scope.cancel()

    if interrupted:
        if not job.ended:
            try:
                await job.abort()
            except OperationInvalidError:
                pass  # it ended meanwhile
        ctx.note(f"interrupted: {_label(job).lower()} on {job.disk} aborted; the disk is as it was")
        return False
    if job.status is BlockJobStatus.CANCELED:
        raise CommandError(f"{_label(job).lower()} on {job.disk} was aborted by someone else")
    if display is not None:
        display.finish()
    return True


async def _finish_two_phase(ctx: Context, job: BlockJob, *, pivot: bool, ready_text: str) -> None:
    """A two-phase job that is ready: pivot it, or leave it ready for a later ``blockjob``."""
    if pivot:
        await job.pivot()
        ctx.say("Successfully pivoted")
    else:
        ctx.say(ready_text)


async def _disk(dom: Domain, disk: str) -> str:
    """The disk's target name from a DISK argument: a target (``vda``) or the path of its active image."""
    target = disk_target(await dom.xml(), disk)
    if target is None:
        raise CommandError(f"domain '{dom.name}' has no disk {disk}")
    return target


def disks_of(xml: str) -> list[tuple[str, str | None]]:
    """``(target, source path or None)`` of each disk in the domain XML."""
    from lxml import etree

    found = []
    for el in etree.fromstring(xml.encode()).iterfind("devices/disk"):
        target, source = el.find("target"), el.find("source")
        name = target.get("dev") if target is not None else None
        if name:
            found.append((name, (source.get("file") or source.get("dev")) if source is not None else None))
    return found


def disk_target(xml: str, disk: str) -> str | None:
    """The target of the disk that ``disk`` names in the domain XML: its target, or its source path."""
    disks = disks_of(xml)
    if any(name == disk for name, _ in disks):
        return disk
    if "/" not in disk:
        return None
    wanted = os.path.abspath(disk)
    return next((name for name, path in disks if path and os.path.abspath(path) == wanted), None)


async def _current_job(dom: Domain, disk: str) -> tuple[BlockJob | None, BlockJob | None]:
    """The job running on ``disk`` (or None), and the job that had ended before (or None).

    A job that ended while no avirt command was connected keeps its result in QEMU; the connection that
    finds it reads that result, updates the chain and the XML, and ends the handle, in the background.
    Closing the connection before that is done would cut it short, so such a job is waited for here
    (QEMU's own ``query-block-jobs`` tells whether it has concluded: the API has no word for it yet).
    """
    import anyio

    from avirt.errors import BlockJobError

    job = await dom.block_job(disk)
    if job is None:
        return None, None
    if not job.ended and not job.offline:
        record = await _qemu_record(dom, job)
        if record is not None and record.get("status") != "concluded":
            return job, None
        try:
            with anyio.fail_after(_SETTLE_TIMEOUT), contextlib.suppress(BlockJobError):
                await job.wait()
        except TimeoutError:
            raise CommandError(f"{job.id} has ended in QEMU, but its result was not read within "
                               f"{_SETTLE_TIMEOUT} s") from None
    return (None, job) if job.ended else (job, None)


async def _qemu_record(dom: Domain, job: BlockJob) -> dict[str, Any] | None:
    """QEMU's own word on an online job (``query-block-jobs``): status, speed...; None if it has none."""
    listed = await dom.qemu_monitor_command("query-block-jobs")
    return next((j for j in listed if isinstance(j, dict) and j.get("device") == job.id), None)


def _ended_text(job: BlockJob) -> str:
    status = job.status.value if job.status else "unknown"
    error = f": {job.error}" if job.error else ""
    return f"the last {_label(job).lower()}, {job.id}, ended while no avirt command watched: {status}{error}"


async def _no_job_in_the_way(ctx: Context, dom: Domain, disk: str) -> None:
    """Before starting a job: settle one that ended unwatched (it would count as running until then)."""
    from avirt import BlockJobStatus

    _, ended = await _current_job(dom, disk)
    if ended is not None and ended.status is not BlockJobStatus.COMPLETED:
        ctx.note(_ended_text(ended))


async def _started(ctx: Context, dom: Domain, job: BlockJob) -> int:
    """Without --wait: the job goes on in QEMU once this command exits. One that has already ended is
    settled before the command closes its connection, and a failure reported."""
    from avirt import BlockJobStatus

    await _current_job(dom, job.disk)
    ctx.say(f"{_label(job)} started")
    if job.status is BlockJobStatus.FAILED:
        raise CommandError(f"{_label(job).lower()} on {job.disk} failed: {job.error or 'unknown error'}")
    return 0


# -- blockcommit -------------------------------------------------------------------------------------------


async def _blockcommit(ctx: Context, args: argparse.Namespace) -> int:
    async with ctx.connect() as conn:
        dom = await ctx.domain(conn, args.domain)
        disk = await _disk(dom, args.disk)
        await _no_job_in_the_way(ctx, dom, disk)
        job = await dom.block_commit(disk, base=args.base, top=args.top, shallow=args.shallow,
                                     delete=args.delete, relative=args.keep_relative,
                                     bandwidth=args.bandwidth, allow_shared_base=args.allow_shared_base)
        if not (args.wait or args.pivot or args.verbose or job.offline):
            return await _started(ctx, dom, job)
        if not await _follow(ctx, job, verbose=args.verbose):
            return _INTERRUPTED
        if job.two_phase:
            await _finish_two_phase(ctx, job, pivot=args.pivot, ready_text="Now in synchronized phase")
        else:
            ctx.say("Commit complete")
    return 0


def _job_options(parser: argparse.ArgumentParser, *, wait: str, pivot: str | None = None) -> None:
    """--bandwidth, --wait, --verbose, and --pivot for commands that can start a two-phase job."""
    parser.add_argument("--bandwidth", metavar="BPS", type=bytes_per_second,
                        help="limit the job to BPS bytes per second (K, M, G suffixes: 1024-based)")
    parser.add_argument("--wait", action="store_true", help=f"stay until {wait}; Ctrl-C then aborts the job")
    parser.add_argument("--verbose", action="store_true", help="show the progress (implies --wait)")
    if pivot:
        parser.add_argument("--pivot", action="store_true", help=f"{pivot} (implies --wait)")


def _blockcommit_args(parser: argparse.ArgumentParser) -> None:
    add_domain_argument(parser)
    parser.add_argument("disk", metavar="DISK", help="disk target (vda) or the path of its active image")
    parser.add_argument("--base", metavar="B",
                        help="the image to commit into: a path or DISK[N] (default: the bottom of the chain)")
    parser.add_argument("--top", metavar="T",
                        help="the top image to commit: a path or DISK[N] (default: the active image)")
    parser.add_argument("--shallow", action="store_true", help="commit into top's own backing file")
    parser.add_argument("--active", action="store_true",
                        help="accepted for virsh compatibility: avirt sees an active commit by itself")
    parser.add_argument("--delete", action="store_true", help="delete the committed images once done")
    parser.add_argument("--keep-relative", action="store_true",
                        help="write a relative backing file name into the image above top")
    parser.add_argument("--allow-shared-base", action="store_true",
                        help="commit even into a base that other domains' disks read")
    _job_options(parser, wait="the job has ended (an active commit: until it is ready)",
                 pivot="an active commit: once ready, make base the active image")


# -- blockpull ---------------------------------------------------------------------------------------------


async def _blockpull(ctx: Context, args: argparse.Namespace) -> int:
    async with ctx.connect() as conn:
        dom = await ctx.domain(conn, args.domain)
        disk = await _disk(dom, args.disk)
        await _no_job_in_the_way(ctx, dom, disk)
        job = await dom.block_pull(disk, base=args.base, bandwidth=args.bandwidth)
        if not (args.wait or args.verbose or job.offline):
            return await _started(ctx, dom, job)
        if not await _follow(ctx, job, verbose=args.verbose):
            return _INTERRUPTED
        ctx.say("Pull complete")
    return 0


def _blockpull_args(parser: argparse.ArgumentParser) -> None:
    add_domain_argument(parser)
    parser.add_argument("disk", metavar="DISK", help="disk target (vda) or the path of its active image")
    parser.add_argument("--base", metavar="B",
                        help="keep B and what is below it as the backing chain: a path or DISK[N] "
                             "(default: pull everything; the disk then has no backing file)")
    _job_options(parser, wait="the job has ended")


# -- blockcopy ---------------------------------------------------------------------------------------------


async def _blockcopy(ctx: Context, args: argparse.Namespace) -> int:
    async with ctx.connect() as conn:
        dom = await ctx.domain(conn, args.domain)
        disk = await _disk(dom, args.disk)
        await _no_job_in_the_way(ctx, dom, disk)
        job = await dom.block_copy(disk, args.dest, format=args.format,
                                   shallow=args.shallow, reuse_external=args.reuse_external,
                                   bandwidth=args.bandwidth)
        if not (args.wait or args.pivot or args.verbose or job.offline):
            return await _started(ctx, dom, job)
        if not await _follow(ctx, job, verbose=args.verbose):
            return _INTERRUPTED
        await _finish_two_phase(ctx, job, pivot=args.pivot, ready_text="Now in mirroring phase")
    return 0


def _blockcopy_args(parser: argparse.ArgumentParser) -> None:
    add_domain_argument(parser)
    parser.add_argument("disk", metavar="DISK", help="disk target (vda) or the path of its active image")
    parser.add_argument("dest", metavar="DEST", type=os.path.abspath,
                        help="the copy: a new image file (see --reuse-external)")
    parser.add_argument("--format", choices=("qcow2", "raw"), default="qcow2",
                        help="DEST's format (default: qcow2)")
    parser.add_argument("--shallow", action="store_true",
                        help="copy only the active image; DEST backs onto the same backing file")
    parser.add_argument("--reuse-external", action="store_true",
                        help="DEST exists already: copy into it instead of creating it")
    _job_options(parser, wait="the copy is ready (mirroring every write)",
                 pivot="once ready, switch the disk over to DEST")


# -- blockjob ----------------------------------------------------------------------------------------------


async def _blockjob(ctx: Context, args: argparse.Namespace) -> None:
    async with ctx.connect() as conn:
        dom = await ctx.domain(conn, args.domain)
        disk = await _disk(dom, args.disk)
        job, ended = await _current_job(dom, disk)
        if job is None:
            if args.abort or args.pivot or args.bandwidth is not None:
                raise CommandError(f"no block job on disk {disk} of domain '{dom.name}'"
                                   + (f" ({_ended_text(ended)})" if ended else ""))
            ctx.say(f"No current block job for {disk}")
            if ended is not None:
                ctx.say(_ended_text(ended)[0].upper() + _ended_text(ended)[1:])
            return
        if args.abort:
            await job.abort()
            ctx.say(f"{_label(job)} on {disk} aborted")
        elif args.pivot:
            await job.pivot()
            ctx.say("Successfully pivoted")
        elif args.bandwidth is not None:
            await job.set_speed(args.bandwidth)
            ctx.say(f"Bandwidth of the {_label(job).lower()} on {disk} set to {_bandwidth(args.bandwidth)}")
        else:
            info = await job.info()
            bandwidth = info.bandwidth
            if not job.offline:
                # A job that an earlier command started comes back with bandwidth 0: QEMU knows better.
                record = await _qemu_record(dom, job)
                bandwidth = int(record.get("speed", bandwidth)) if record else bandwidth
            ctx.say(key_values([
                ("Job", job.id),
                ("Type", _label(job)),
                ("Progress", f"[{percent(info.cur, info.end):3d} %] {info.cur} of {info.end} bytes"),
                ("Bandwidth", _bandwidth(bandwidth)),
                ("Ready", "yes" if info.ready else "no"),
            ]))


def _bandwidth(bps: int) -> str:
    return "unlimited" if bps == 0 else f"{bps} bytes/s ({human_size(bps)}/s)"


def _blockjob_args(parser: argparse.ArgumentParser) -> None:
    add_domain_argument(parser)
    parser.add_argument("disk", metavar="DISK", help="disk target (vda) or the path of its active image")
    action = parser.add_mutually_exclusive_group()
    action.add_argument("--info", action="store_true",
                        help="show the job: type, progress, bandwidth, whether ready (the default)")
    action.add_argument("--abort", action="store_true",
                        help="stop the job and leave the disk as it was; returns once it has ended")
    action.add_argument("--pivot", action="store_true",
                        help="switch the disk over to the job's target (active commit, copy); waits "
                             "until the job is ready, returns once it has ended")
    action.add_argument("--bandwidth", metavar="BPS", type=bytes_per_second,
                        help="change the job's bandwidth limit (bytes/s; 0 = unlimited)")


# -- snapshot-create-as ------------------------------------------------------------------------------------


async def _snapshot_create_as(ctx: Context, args: argparse.Namespace) -> None:
    async with ctx.connect() as conn:
        dom = await ctx.domain(conn, args.domain)
        disks = [await _disk(dom, d) for group in args.disks for d in group] if args.disks else None
        for disk in disks if disks is not None else [name for name, _ in disks_of(await dom.xml())]:
            await _no_job_in_the_way(ctx, dom, disk)
        overlays = await dom.snapshot_disks(args.name, disks=disks, quiesce=args.quiesce)
    ctx.say(f"Domain snapshot {args.name} created")
    ctx.say(table(("Target", "Overlay"), sorted(overlays.items())))


def _disk_list(text: str) -> list[str]:
    disks = [d.strip() for d in text.split(",") if d.strip()]
    if not disks:
        raise argparse.ArgumentTypeError("name at least one disk")
    return disks


def _snapshot_create_as_args(parser: argparse.ArgumentParser) -> None:
    add_domain_argument(parser)
    parser.add_argument("name", metavar="NAME", help="the snapshot's name, used in the overlays' file names")
    parser.add_argument("--disk-only", action="store_true", required=True,
                        help="snapshot the disks only, no memory state (required: the only kind avirt takes)")
    parser.add_argument("--disks", metavar="DISKS", action="append", type=_disk_list,
                        help="only these disks, comma-separated (default: every writable disk)")
    parser.add_argument("--quiesce", action="store_true",
                        help="freeze the running guest's filesystems around the snapshot (needs its guest "
                             "agent)")


# -- domblkchain -------------------------------------------------------------------------------------------


async def _domblkchain(ctx: Context, args: argparse.Namespace) -> None:
    from avirt.errors import ImageError

    async with ctx.connect() as conn:
        dom = await ctx.domain(conn, args.domain)
        disk = await _disk(dom, args.disk)
        try:
            chain = await dom.block_chain(disk)
            rows = [(image.format, human_size(image.virtual_size), human_size(image.allocated), image.path)
                    for image in chain]
        except ImageError as e:
            # qemu-img cannot read an image that a running job has locked (an active commit's middle
            # layers): the live XML still says what the chain is.
            rows = [(fmt, "-", "-", path) for path, fmt in xml_chain(await dom.xml(), disk)]
            if not rows:
                raise
            ctx.note("sizes unknown: qemu-img cannot read an image that a block job holds "
                     f"({' '.join(str(e).split()) or type(e).__name__})")
    ctx.say(table(("Index", "Format", "Virtual size", "Allocated", "Path"),
                  [(f"{disk}[{i}]", *row) for i, row in enumerate(rows)]))


def xml_chain(xml: str, disk: str) -> list[tuple[str, str]]:
    """``(path, format)`` of the disk's images, top first, from the live XML's ``<backingStore>``s."""
    from lxml import etree

    for el in etree.fromstring(xml.encode()).iterfind("devices/disk"):
        target = el.find("target")
        if target is None or target.get("dev") != disk:
            continue
        chain: list[tuple[str, str]] = []
        layer: etree._Element | None = el
        while layer is not None and (source := layer.find("source")) is not None:
            fmt = layer.find("driver" if layer is el else "format")
            chain.append((source.get("file") or source.get("dev") or "-",
                          (fmt.get("type") if fmt is not None else None) or "-"))
            layer = layer.find("backingStore")
        return chain
    return []


def _domblkchain_args(parser: argparse.ArgumentParser) -> None:
    add_domain_argument(parser)
    parser.add_argument("disk", metavar="DISK", help="disk target (vda) or the path of its active image")


COMMANDS = (
    Command("blockcommit", "Merge a disk's overlays down into a backing image", _blockcommit,
            _blockcommit_args,
            details="Commits the layers from --top (default: the active image) down into --base (default: "
                    "the bottom of the chain); --top and --base take a path or DISK[N], where vda[0] is the "
                    "active image and vda[N] the N-th backing file below it (see 'avirt domblkchain').\n\n"
                    "Committing an intermediate image ends by itself: the image above it then backs onto "
                    "base. Committing the active image is two-phase: once base has caught up the job is "
                    "ready and the guest keeps writing through it; --pivot (or later 'avirt blockjob DOM "
                    "DISK --pivot') makes base the active image, 'blockjob --abort' leaves the chain as "
                    "it was.\n\n"
                    "Without --wait the command exits once the job has started; the job goes on in QEMU "
                    "and 'avirt blockjob DOM DISK' follows it. --wait stays until the job has ended (an "
                    "active commit: until it is ready, or with --pivot until it has pivoted); Ctrl-C "
                    "then aborts the job. --pivot and --verbose imply --wait.",
            example="avirt blockcommit web1 vda --top vda[1] --shallow --wait\n"
                    "avirt blockcommit web1 vda --pivot --verbose\n"
                    "avirt blockcommit web1 vda && avirt blockjob web1 vda --pivot",
            group=BLOCK_JOBS),
    Command("blockpull", "Copy backing data up into a disk's active image", _blockpull, _blockpull_args,
            details="Copies into the active image everything it reads from the layers above --base (all "
                    "layers if not given); --base then becomes its backing file (none if not given). The "
                    "job ends by itself. Without --wait the command exits once the job has started.",
            example="avirt blockpull web1 vda --wait\navirt blockpull web1 vda --base vda[2] --verbose",
            group=BLOCK_JOBS),
    Command("blockcopy", "Copy a disk to a new image while the guest runs", _blockcopy, _blockcopy_args,
            details="Mirrors the disk into DEST: the whole chain, or with --shallow the active image only "
                    "(DEST then backs onto the same backing file). Two-phase: once DEST has caught up "
                    "the job is ready and mirrors every write; --pivot (or later 'avirt blockjob DOM DISK "
                    "--pivot') switches the disk to DEST, 'blockjob --abort' keeps the original.\n\n"
                    "Without --wait the command exits once the job has started. --wait stays until the "
                    "copy is ready, or with --pivot until it has pivoted; Ctrl-C then aborts it.",
            example="avirt blockcopy web1 vda /vm/web1-copy.qcow2 --wait --pivot --verbose\n"
                    "avirt blockcopy web1 vda /vm/top.qcow2 --shallow --wait",
            group=BLOCK_JOBS),
    Command("blockjob", "Show, pivot, abort or throttle a disk's block job", _blockjob, _blockjob_args,
            details="Finds the job on DISK, whichever command started it (avirt records every job in the "
                    "state directory). --info (the default) prints its type, progress, bandwidth and "
                    "whether it is ready, or 'No current block job for DISK'.",
            example="avirt blockjob web1 vda\navirt blockjob web1 vda --pivot\n"
                    "avirt blockjob web1 vda --bandwidth 10M",
            group=BLOCK_JOBS),
    Command("snapshot-create-as", "Take an external disk-only snapshot", _snapshot_create_as,
            _snapshot_create_as_args,
            details="Puts a new qcow2 overlay on each disk (every writable disk, or those of --disks), "
                    "beside the image it covers and named <image>.<NAME>.qcow2; the current images become "
                    "read-only backing files. On a running domain all disks switch at once, or none. "
                    "Prints each disk's new overlay.",
            example="avirt snapshot-create-as web1 before-upgrade --disk-only\n"
                    "avirt snapshot-create-as web1 s1 --disk-only --disks vda,vdb",
            group=BLOCK_JOBS),
    Command("domblkchain", "List a disk's backing chain: index, format, sizes, path", _domblkchain,
            _domblkchain_args,
            details="Top first: DISK[0] is the active image. 'Allocated' is the guest data stored in that "
                    "image alone, not in its backing files. The indexes are what --top and --base take.",
            example="avirt domblkchain web1 vda", group=BLOCK_JOBS),
)
