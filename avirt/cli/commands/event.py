"""``avirt event``: print domain events as they happen, one line each, until --timeout or Ctrl-C.

It is ``Connection.events()`` on a terminal::

    async with conn.events(kinds=kinds, domain=name) as stream:
        async for event in stream:
            print(event_line(event))

The daemonless design shapes what it can see. This command *is* the controller of its state directory
while it runs (it holds the directory's lock), so other avirt commands on that directory fail with
"another avirt controller is using the state directory" until it ends. It therefore reports what guests
and QEMU do by themselves: a guest powering off or rebooting, a QEMU that dies, I/O errors, watchdogs,
balloon and RTC changes, block jobs. Events of the commands it runs itself do not apply: it runs none.

Kinds (``--kind``, repeatable or comma-separated): every :class:`~avirt.events.model.EventKind` by its
lower-case name with ``-`` for ``_`` (``lifecycle``, ``io-error``, ``block-job``...); virsh's names
(``io-error-reason``, ``block-job-2``, ``pm-wakeup``...) and libvirt's numbers work too. Without
``--kind`` every kind is shown except ``qmp`` (every raw QMP event, which would repeat the others).
"""

from __future__ import annotations

import argparse
import signal
from typing import TYPE_CHECKING

from avirt.cli.command import EVENTS, Command, Context, seconds
from avirt.cli.output import event_json, event_line

if TYPE_CHECKING:
    import anyio.abc

    from avirt.events.bus import EventStream
    from avirt.events.model import EventKind

def _key(name: str) -> str:
    return name.lower().replace("-", "").replace("_", "")


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
        if kind is None:
            names = ", ".join(k.name.lower().replace("_", "-") for k in EventKind)
            raise argparse.ArgumentTypeError(f"unknown event kind '{word}' (choose from {names})")
        kinds.append(kind)
    return kinds


async def _event(ctx: Context, args: argparse.Namespace) -> None:
    import anyio

    from avirt.events.model import EventKind

    if args.kind:
        kinds = {kind for group in args.kind for kind in group}
    else:
        kinds = set(EventKind) - {EventKind.QMP}
    async with ctx.connect() as conn:
        domain = (await ctx.domain(conn, args.domain)).name if args.domain else None
        async with conn.events(kinds=kinds, domain=domain) as stream, anyio.create_task_group() as group:
            await group.start(_stop_on_signal, group.cancel_scope)
            ctx.note(f"watching events on {conn.uri}" + (f" for domain '{domain}'" if domain else "")
                     + ("" if args.timeout is None else f" for {args.timeout:g} s")
                     + ("" if conn.uri.startswith("test:") else
                        "; this holds the state directory (other avirt commands on it must wait)")
                     + "; Ctrl-C stops")
            with anyio.move_on_after(args.timeout):
                await _print(ctx, stream, args.json)
            group.cancel_scope.cancel()


async def _print(ctx: Context, stream: EventStream, as_json: bool) -> None:
    from avirt.errors import EventsLostError

    while True:
        try:
            event = await anext(stream)
        except StopAsyncIteration:
            return
        except EventsLostError as e:
            ctx.note(f"warning: {e}")
            continue
        ctx.say(event_json(event) if as_json else event_line(event))


async def _stop_on_signal(scope: anyio.CancelScope, *,
                          task_status: anyio.abc.TaskStatus[None]) -> None:
    """Ctrl-C (SIGINT) or SIGTERM end the command normally: the connection closes, exit status 0."""
    import anyio

    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        task_status.started()
        async for _ in signals:
            scope.cancel()
            return


def _event_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--domain", metavar="DOM", help="only this domain's events (name or UUID)")
    parser.add_argument("--kind", metavar="K", action="append", type=parse_kinds,
                        help="only events of this kind (repeatable, or comma-separated): lifecycle, reboot, "
                             "rtc-change, watchdog, io-error, control-error, tray-change, pmwakeup, "
                             "pmsuspend, balloon-change, device-removed, block-job, block-threshold, qmp "
                             "(raw QMP events; not shown unless asked for)")
    parser.add_argument("--timeout", metavar="SECONDS", type=seconds,
                        help="stop after SECONDS (exit status 0)")
    parser.add_argument("--json", action="store_true",
                        help="one JSON object per line: seq, timestamp, kind, domain, uuid, then the "
                             "event's own fields (lifecycle: type, detail)")


COMMANDS = (
    Command("event", "Print domain events as they happen, until --timeout or Ctrl-C", _event, _event_args,
            details="While it runs this command is the controller of the state directory: other avirt "
                    "commands on the same directory fail ('another avirt controller is using the state "
                    "directory') until it ends. It reports what guests and QEMU do by themselves: a guest "
                    "powering off, a QEMU that dies, I/O errors, watchdogs, block jobs.\n\n"
                    "Text lines read 'TIME DOMAIN KIND: WHAT', e.g. "
                    "'2025-06-01T12:00:00.123 web1 lifecycle: stopped (failed)'. A notice on standard "
                    "error says when it is listening. Ctrl-C, SIGTERM and --timeout end it with status 0.",
            example="avirt event --kind lifecycle\navirt event --domain web1 --json --timeout 60",
            group=EVENTS, interrupt_status=0),
)
