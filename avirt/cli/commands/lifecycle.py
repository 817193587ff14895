"""Lifecycle commands: ``start``, ``shutdown``, ``destroy``, ``reboot``, ``reset``, ``suspend``, ``resume``.

Each is one ``Domain`` call. The calls that only *ask* the guest (``shutdown`` and ``reboot`` press the
ACPI power button) return at once unless given ``--wait SECONDS``: then the command stays connected until
the guest has done it, or fails with a timeout after that many seconds, leaving the guest running.

Why ``reboot --wait`` matters: avirt has no daemon, and it is the controller that resets the guest once
the guest has powered off for the reboot. Without ``--wait`` the command exits right after pressing the
button, so a guest that powers off afterwards is found powered off by the next avirt command, which
then shuts it off. ``--wait`` keeps this command connected until the guest runs again.
"""

from __future__ import annotations

import argparse

from avirt.cli.command import DOMAIN_MANAGEMENT, Command, CommandError, Context, add_domain_argument, seconds


async def _start(ctx: Context, args: argparse.Namespace) -> None:
    async with ctx.connect() as conn:
        dom = await ctx.domain(conn, args.domain)
        await dom.start(paused=args.paused)
    ctx.say(f"Domain '{dom.name}' started" + (" (paused)" if args.paused else ""))


def _start_args(parser: argparse.ArgumentParser) -> None:
    add_domain_argument(parser)
    parser.add_argument("--paused", action="store_true",
                        help="start with the CPUs paused ('avirt resume' lets them run)")


async def _shutdown(ctx: Context, args: argparse.Namespace) -> None:
    async with ctx.connect() as conn:
        dom = await ctx.domain(conn, args.domain)
        await dom.shutdown(wait=args.wait)
    ctx.say(f"Domain '{dom.name}' " + ("is shut off" if args.wait is not None else "is being shutdown"))


async def _reboot(ctx: Context, args: argparse.Namespace) -> None:
    from avirt.errors import OperationTimeoutError
    from avirt.events.model import EventKind, LifecycleEvent, LifecycleType

    async with ctx.connect() as conn:
        dom = await ctx.domain(conn, args.domain)
        if args.wait is None:
            await dom.reboot()
            ctx.say(f"Domain '{dom.name}' is being rebooted")
            return
        import anyio

        # Subscribe before pressing the button, so that the guest's return cannot slip past unseen.
        async with conn.events(kinds={EventKind.LIFECYCLE}, domain=dom) as stream:
            await dom.reboot()
            with anyio.move_on_after(args.wait):
                async for event in stream:
                    assert isinstance(event, LifecycleEvent)
                    if event.type is LifecycleType.STARTED:
                        ctx.say(f"Domain '{dom.name}' rebooted")
                        return
                    if event.type in (LifecycleType.STOPPED, LifecycleType.CRASHED):
                        raise CommandError(f"domain '{dom.name}' did not come back from the reboot: "
                                           f"{event.type.value} ({event.detail})")
        raise OperationTimeoutError(f"domain '{dom.name}' did not reboot within {args.wait:g} s of the power "
                                    "button; it is still running")


def _shutdown_args(parser: argparse.ArgumentParser) -> None:
    add_domain_argument(parser)
    parser.add_argument("--wait", metavar="SECONDS", type=seconds,
                        help="wait until the domain is shut off; fail after SECONDS "
                             "(the guest keeps running)")


def _reboot_args(parser: argparse.ArgumentParser) -> None:
    add_domain_argument(parser)
    parser.add_argument("--wait", metavar="SECONDS", type=seconds,
                        help="wait until the guest runs again; fail after SECONDS")


async def _destroy(ctx: Context, args: argparse.Namespace) -> None:
    async with ctx.connect() as conn:
        dom = await ctx.domain(conn, args.domain)
        await dom.destroy()
    ctx.say(f"Domain '{dom.name}' destroyed")


async def _reset(ctx: Context, args: argparse.Namespace) -> None:
    async with ctx.connect() as conn:
        dom = await ctx.domain(conn, args.domain)
        await dom.reset()
    ctx.say(f"Domain '{dom.name}' was reset")


async def _suspend(ctx: Context, args: argparse.Namespace) -> None:
    async with ctx.connect() as conn:
        dom = await ctx.domain(conn, args.domain)
        await dom.suspend()
    ctx.say(f"Domain '{dom.name}' suspended")


async def _resume(ctx: Context, args: argparse.Namespace) -> None:
    async with ctx.connect() as conn:
        dom = await ctx.domain(conn, args.domain)
        await dom.resume()
    ctx.say(f"Domain '{dom.name}' resumed")


COMMANDS = (
    Command("start", "Start a shut-off domain", _start, _start_args,
            details="QEMU runs detached: the guest keeps running after this command exits.",
            example="avirt start web1\navirt start web1 --paused", group=DOMAIN_MANAGEMENT),
    Command("shutdown", "Ask a domain to shut down (ACPI power button)", _shutdown, _shutdown_args,
            details="Without --wait, returns once the button is pressed; the guest's operating system "
                    "decides what happens. A guest that ignores ACPI (no OS, or firmware only) keeps "
                    "running: 'avirt destroy' stops it.",
            example="avirt shutdown web1 --wait 60", group=DOMAIN_MANAGEMENT),
    Command("destroy", "Stop a domain at once (QEMU quits; no guest shutdown)", _destroy, add_domain_argument,
            details="QMP 'quit', then SIGTERM, then SIGKILL, 2 s apart; returns once QEMU is gone.",
            example="avirt destroy web1", group=DOMAIN_MANAGEMENT),
    Command("reboot", "Ask a domain to reboot (ACPI power button, then a reset)", _reboot, _reboot_args,
            details="avirt resets the guest once it has powered off, which needs a connected controller: "
                    "without --wait this command exits at once, and a guest that powers off later is "
                    "shut off, not rebooted, by the next avirt command. Use --wait for real guests.",
            example="avirt reboot web1 --wait 120", group=DOMAIN_MANAGEMENT),
    Command("reset", "Reset a domain at once, like its reset button", _reset, add_domain_argument,
            example="avirt reset web1", group=DOMAIN_MANAGEMENT),
    Command("suspend", "Pause a domain's CPUs", _suspend, add_domain_argument,
            details="Suspending a paused domain does nothing, as in libvirt.",
            example="avirt suspend web1", group=DOMAIN_MANAGEMENT),
    Command("resume", "Let a paused domain run again", _resume, add_domain_argument,
            example="avirt resume web1", group=DOMAIN_MANAGEMENT),
)
