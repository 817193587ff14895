"""``avirt migrate``: move a running domain to another connection, as virsh migrate does.

The flags are virsh's, and so are the defaults: the destination keeps the guest as a transient domain
unless ``--persistent``, and the source keeps its definition unless ``--undefinesource`` (the library's
``Domain.migrate`` defaults to both). ``--verbose`` draws the progress of the memory QEMU sends.
"""

from __future__ import annotations

import argparse
import contextlib
from typing import TYPE_CHECKING

from avirt.cli.command import DOMAIN_MANAGEMENT, Command, CommandError, Context, add_domain_argument

if TYPE_CHECKING:  # the library is not imported at module level (see avirt/cli/command.py)
    from avirt.migration import MigrationJob


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: '{text}'") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, not '{text}'")
    return value


async def _migrate(ctx: Context, args: argparse.Namespace) -> None:
    import anyio

    import avirt

    if not args.live:
        raise CommandError("only live migration is supported: add --live")
    if args.postcopy_after_precopy and not args.postcopy:
        raise CommandError("--postcopy-after-precopy needs --postcopy")
    async with ctx.connect() as conn, avirt.connect(args.desturi, state_dir=args.dest_state_dir) as dest:
        dom = await ctx.domain(conn, args.domain)
        copy = "all" if args.copy_storage_all else "inc" if args.copy_storage_inc else None
        job = await dom.migrate(dest, copy_storage=copy, storage_paths=dict(args.storage_path) or None,
                                bandwidth=args.bandwidth and args.bandwidth * 2**20,
                                max_downtime=args.max_downtime, persist=args.persistent,
                                undefine_source=args.undefinesource, auto_converge=args.auto_converge,
                                compressed=args.compressed,
                                parallel=args.parallel_connections if args.parallel else None,
                                postcopy=args.postcopy, tls=args.tls)
        async with anyio.create_task_group() as group:
            if args.verbose:
                group.start_soon(_draw_progress, ctx, job)
            if args.postcopy_after_precopy:
                group.start_soon(_postcopy_after_first_pass, job)
            moved = await job
            group.cancel_scope.cancel()
        if args.verbose:
            ctx.say("Migration: [100 %]")
    ctx.say(f"Domain '{moved.name}' migrated to {args.desturi}")


async def _postcopy_after_first_pass(job: MigrationJob) -> None:
    """virsh's --postcopy-after-precopy: switch once QEMU has been over the whole memory once (unless the
    precopy ends first: then the migration is done, or failed, and the job says which)."""
    from avirt.errors import OperationInvalidError

    async for p in job.progress():
        if p.passes > 1:
            with contextlib.suppress(OperationInvalidError):  # too late: QEMU has sent it all already
                await job.postcopy()
            return


async def _draw_progress(ctx: Context, job: MigrationJob) -> None:
    async for p in job.progress():
        if p.ram_total:
            done = 100 * (p.ram_total - p.ram_remaining) // p.ram_total
            ctx.say(f"Migration: [{min(done, 99):3d} %]")


def _arguments(parser: argparse.ArgumentParser) -> None:
    add_domain_argument(parser)
    parser.add_argument("desturi", metavar="DESTURI", help="the destination's connection URI")
    parser.add_argument("--dest-state-dir", metavar="DIR",
                        help="the destination connection's state directory (as --state-dir for the source)")
    parser.add_argument("--live", action="store_true", help="migrate while the guest runs (required)")
    parser.add_argument("--persistent", action="store_true", help="define the domain at the destination")
    parser.add_argument("--undefinesource", action="store_true", help="undefine the domain at the source")
    parser.add_argument("--bandwidth", type=_positive, metavar="MiB/s", help="limit the migration stream")
    parser.add_argument("--max-downtime", type=_positive, metavar="MS",
                        help="the longest the guest may be paused at the end (ms)")
    copy = parser.add_mutually_exclusive_group()
    copy.add_argument("--copy-storage-all", action="store_true",
                      help="copy each writable disk whole into a new image at the destination")
    copy.add_argument("--copy-storage-inc", action="store_true",
                      help="copy only each disk's top layer, onto the same backing chain")
    parser.add_argument("--storage-path", type=_disk_path, action="append", default=[], metavar="DISK=PATH",
                        help="the destination's image of DISK in a storage copy (repeatable)")
    parser.add_argument("--auto-converge", action="store_true",
                        help="throttle a guest that dirties memory faster than it is sent")
    parser.add_argument("--compressed", action="store_true", help="send changed pages as XBZRLE deltas")
    parser.add_argument("--parallel", action="store_true", help="send memory over several connections")
    parser.add_argument("--parallel-connections", type=_positive, default=2, metavar="N",
                        help="how many, with --parallel (default 2)")
    parser.add_argument("--postcopy", action="store_true", help="allow a switch to postcopy")
    parser.add_argument("--postcopy-after-precopy", action="store_true",
                        help="switch to postcopy after the first pass over memory (needs --postcopy)")
    parser.add_argument("--tls", action="store_true",
                        help="encrypt the streams with each side's certificates (<state_dir>/tls/)")
    parser.add_argument("--verbose", action="store_true", help="show the progress")


def _disk_path(text: str) -> tuple[str, str]:
    disk, sep, path = text.partition("=")
    if not sep or not disk or not path:
        raise argparse.ArgumentTypeError(f"expected DISK=PATH, not '{text}'")
    return disk, path


COMMANDS = (
    Command("migrate", "Move a running domain to another connection", _migrate, _arguments,
            details="Both connections must be on this machine: the memory goes through a unix socket. "
                    "Without --copy-storage-* both must see the same image files. On failure the domain "
                    "runs on here.",
            example="avirt migrate web1 qemu:///session --dest-state-dir /srv/avirt-b --live --persistent "
                    "--undefinesource --verbose",
            group=DOMAIN_MANAGEMENT),
)
