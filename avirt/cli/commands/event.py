"""``avirt event``: print domain events as they happen, one line each, with virsh's options.

It is ``Connection.events()`` on a terminal::

    async with conn.events(kinds=kinds, domain=name) as stream:
        async for event in stream:
            print(event_line(event))
            if not args.loop: break

As in virsh, the command is one-shot unless ``--loop`` is given: it ends after the first event, or
after ``--timeout``, or at Ctrl-C/SIGTERM, all with exit status 0. ``--timestamp`` puts virsh's time
(UTC, milliseconds) before each text line.

Whoever holds the state directory, the command sees every event: if no other program holds it, this
one does while it runs (and serves every other avirt command meanwhile); otherwise it is a client of the
holder (``avirt serve``, an application), whose events it receives. Either way what other commands do
through the holder shows up here, as well as what guests and QEMU do by themselves.

Kinds (``--event``, or its older spelling ``--kind``; repeatable or comma-separated): every
:class:`~avirt.events.model.EventKind` by its lower-case name with ``-`` for ``_`` (``lifecycle``,
``io-error``, ``block-job``...); virsh's names (``io-error-reason``, ``block-job-2``, ``pm-wakeup``...)
and libvirt's numbers work too. ``--all``, or no ``--event``, is every kind but ``qmp`` (every raw QMP
event, which would repeat the others; libvirt has it only in libvirt-qemu). virsh's names for events
avirt never reports (``graphics``, ``tunable``...) are refused as usage errors, rather than
waited for in vain.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from avirt.cli.command import EVENTS, Command, Context, seconds, stop_on_signal
from avirt.cli.output import event_json, event_line, timestamp

if TYPE_CHECKING:
    from avirt.events.bus import EventStream
    from avirt.events.model import EventKind

def _key(name: str) -> str:
    return name.lower().replace("-", "").replace("_", "")


#: virsh's event names (``virsh event --list``) that avirt has no kind for: a usage error, with this reason.
_NOT_REPORTED = {"graphics", "diskchange", "pmsuspenddisk", "tunable", "deviceadded",
                 "migrationiteration", "jobcompleted", "deviceremovalfailed", "memoryfailure",
                 "memorydevicesizechange"}


def kind_names() -> list[str]:
    """The names ``--event`` takes and ``event --list`` prints, in libvirt's order (``qmp`` last)."""
    from avirt.events.model import EventKind

    return [kind.name.lower().replace("_", "-") for kind in EventKind]


def parse_kinds(text: str) -> list[EventKind]:
    """``type=`` for --kind: one or more comma-separated kind names (any case, ``-`` or ``_``) or numbers."""
    from avirt.events.model import EventKind

    by_name = {_key(kind.name): kind for kind in EventKind}
    # virsh's names for the two kinds whose libvirt IDs avirt took from the newer variant.
    by_name |= {"ioerrorreason": EventKind.IO_ERROR, "blockjob2": EventKind.BLOCK_JOB}
    by_number = {kind.value: kind for kind in EventKind}
    kinds = []
    for word in filter(None, (w.strip() for w in text.split(","))):
        kind = by_number.get(int(word)) if word.isdigit() else by_name.get(_key(word))
        if kind is None and _key(word) in _NOT_REPORTED:
            raise argparse.ArgumentTypeError(f"avirt does not report libvirt's '{word}' events")
        if kind is None:
            names = ", ".join(kind_names())
            raise argparse.ArgumentTypeError(f"unknown event kind '{word}' (choose from {names})")
        kinds.append(kind)
    return kinds


async def _event(ctx: Context, args: argparse.Namespace) -> None:
    import anyio

    from avirt.events.model import EventKind

    if args.list:
        ctx.say("\n".join(kind_names()))
        return
    if args.kind:
        kinds = {kind for group in args.kind for kind in group}
    else:
        kinds = set(EventKind) - {EventKind.QMP}
    async with ctx.connect() as conn:
        domain = (await ctx.domain(conn, args.domain)).name if args.domain else None
        async with conn.events(kinds=kinds, domain=domain) as stream, anyio.create_task_group() as group:
            await group.start(stop_on_signal, group.cancel_scope)
            until = ("until Ctrl-C" if args.loop else "until the first event or Ctrl-C") + (
                "" if args.timeout is None else f", at most {args.timeout:g} s")
            ctx.note(f"watching events on {conn.uri}" + (f" for domain '{domain}'" if domain else "")
                     + ("; serving the state directory to other avirt commands" if conn.serving else "")
                     + f"; {until}")
            with anyio.move_on_after(args.timeout):
                await _print(ctx, stream, args)
            group.cancel_scope.cancel()


async def _print(ctx: Context, stream: EventStream, args: argparse.Namespace) -> None:
    from avirt.errors import EventsLostError

    while True:
        try:
            event = await anext(stream)
        except StopAsyncIteration:
            return
        except EventsLostError as e:
            ctx.note(f"warning: {e}")
            continue
        if args.json:
            ctx.say(event_json(event))
        else:
            ctx.say((f"{timestamp(event.timestamp)}: " if args.timestamp else "") + event_line(event))
        if not args.loop:
            return


def _event_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--domain", metavar="DOM", help="only this domain's events (name or UUID)")
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--event", "--kind", metavar="NAME", dest="kind", action="append", type=parse_kinds,
                       help="only events of this kind (repeatable, or comma-separated): lifecycle, reboot, "
                            "rtc-change, watchdog, io-error, control-error, tray-change, pmwakeup, "
                            "pmsuspend, balloon-change, device-removed, block-job, agent-lifecycle, "
                            "metadata-change, block-threshold, qmp (raw QMP events; not shown unless "
                            "asked for); virsh's names (io-error-reason, block-job-2, pm-wakeup...) and "
                            "numbers too")
    which.add_argument("--all", action="store_true",
                       help="every kind of event but qmp (the default without --event)")
    which.add_argument("--list", action="store_true", help="print the event names --event takes, and exit")
    parser.add_argument("--loop", action="store_true",
                        help="go on after the first event, until Ctrl-C, SIGTERM or --timeout")
    parser.add_argument("--timeout", metavar="SECONDS", type=seconds,
                        help="stop after SECONDS (exit status 0)")
    parser.add_argument("--timestamp", action="store_true",
                        help="begin each text line with the event's time, as virsh: "
                             "'2025-06-01 12:00:03.120+0000: '")
    parser.add_argument("--json", action="store_true",
                        help="one JSON object per line: seq, timestamp, kind, domain, uuid, then the "
                             "event's own fields (lifecycle: type, detail)")


COMMANDS = (
    Command("event", "Print domain events as they happen: the first one, or with --loop every one",
            _event, _event_args,
            details="As virsh's event: without --loop it ends after the first event; --timeout, Ctrl-C "
                    "and SIGTERM end it too, all with status 0. Other avirt commands work meanwhile: "
                    "this command is the controller of the state directory while it runs and serves them "
                    "(or a client of the program that is, such as 'avirt serve'), and what they do shows "
                    "up here, as well as what guests and QEMU do by themselves.\n\n"
                    "Text lines read 'DOMAIN KIND: WHAT', e.g. 'web1 lifecycle: stopped (failed)', "
                    "after the time with --timestamp. A notice on standard error says when it is "
                    "listening.",
            example="avirt event --all --loop --timestamp\navirt event --domain web1 --event lifecycle "
                    "--json --timeout 60",
            group=EVENTS, interrupt_status=0),
)
