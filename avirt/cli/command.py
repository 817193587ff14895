"""What a command module declares (:class:`Command`) and what a command receives (:class:`Context`).

A command is a name, a one-line summary, a function that adds its arguments to an ``argparse`` parser,
and an async function that runs it::

    async def _start(ctx: Context, args: argparse.Namespace) -> None:
        async with ctx.connect() as conn:
            dom = await conn.lookup(args.domain)
            await dom.start(paused=args.paused)
            ctx.say(f"Domain '{dom.name}' started")

    def _start_args(parser: argparse.ArgumentParser) -> None:
        add_domain_argument(parser)
        parser.add_argument("--paused", action="store_true", help="leave the CPUs paused")

    COMMANDS = (Command("start", "Start a shut-off domain", _start, _start_args, example="avirt start web1"),)

``run`` returns None (or 0) on success, or an exit status. It reports failure by raising: any
:class:`~avirt.errors.AvirtError`, an ``OSError``, or a :class:`CommandError` for what the command itself
finds wrong, and the application prints ``error: <message>`` and exits with status 1. Commands import the
library inside ``run`` (and type-only imports under ``TYPE_CHECKING``), so that building the parser for
``--help`` imports nothing heavy.
"""

from __future__ import annotations

import argparse
import signal
import sys
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TextIO

if TYPE_CHECKING:
    import anyio
    import anyio.abc

    from avirt.connection import Connection
    from avirt.domain import Domain

#: Section headings of ``avirt --help``, in order; a command names one of them as its ``group``.
DOMAIN_MANAGEMENT = "Domain management"
DOMAIN_MONITORING = "Domain monitoring"
BLOCK_JOBS = "Block jobs and snapshots"
NETWORKS = "Networks and interfaces"
EVENTS = "Events"
OTHER = "Other"
GROUPS = (DOMAIN_MANAGEMENT, DOMAIN_MONITORING, BLOCK_JOBS, NETWORKS, EVENTS, OTHER)


class CommandError(Exception):
    """A failure that a command detects itself; printed as ``error: <message>``, exit status 1."""


@dataclass
class Context:
    """Everything a command needs from outside: where to connect and where to write."""

    uri: str
    state_dir: str | None
    stdout: TextIO = field(default_factory=lambda: sys.stdout)
    stderr: TextIO = field(default_factory=lambda: sys.stderr)

    def connect(self) -> AbstractAsyncContextManager[Connection]:
        """``async with ctx.connect() as conn``: a connection with the global options applied."""
        import avirt

        return avirt.connect(self.uri, state_dir=self.state_dir)

    async def domain(self, conn: Connection, name_or_uuid: str) -> Domain:
        """The domain named by a DOM argument (a name or a UUID); DomainNotFoundError otherwise."""
        return await conn.lookup(name_or_uuid)

    def say(self, text: str = "") -> None:
        """One line (or block) of output, flushed at once so that pipes see it immediately."""
        self.stdout.write(text if text.endswith("\n") else text + "\n")
        self.stdout.flush()

    def note(self, text: str) -> None:
        """A message for the person at the terminal, on standard error (never mixed into data)."""
        self.stderr.write(f"avirt: {text}\n")
        self.stderr.flush()


Run = Callable[[Context, argparse.Namespace], Awaitable[int | None]]


def _no_arguments(parser: argparse.ArgumentParser) -> None:
    pass


@dataclass(frozen=True)
class Command:
    """One ``avirt`` sub-command, as a command module declares it in its ``COMMANDS`` tuple."""

    name: str
    #: One line for ``avirt --help``; also the start of ``avirt NAME --help``.
    summary: str
    run: Run
    arguments: Callable[[argparse.ArgumentParser], None] = _no_arguments
    #: More text for ``avirt NAME --help``, after the summary (paragraphs separated by blank lines).
    details: str = ""
    #: One or more example command lines, shown at the end of ``avirt NAME --help``.
    example: str = ""
    group: str = DOMAIN_MANAGEMENT
    #: The exit status after Ctrl-C: 130 as for any interrupted program, 0 where Ctrl-C is the normal end.
    interrupt_status: int = 130


def add_domain_argument(parser: argparse.ArgumentParser) -> None:
    """The DOM positional argument every per-domain command takes."""
    parser.add_argument("domain", metavar="DOM", help="domain name or UUID")


async def read_xml(path: str) -> tuple[str, str]:
    """The text of the XML file ``path`` (``-``: standard input) and how to name it in messages. Read as
    UTF-8, as libvirt writes definitions, whatever the locale."""
    import anyio

    if path == "-":
        data = await anyio.to_thread.run_sync(sys.stdin.buffer.read)
        source = "standard input"
    else:
        source = path
        try:
            data = await anyio.Path(path).read_bytes()
        except ValueError:  # os.open's complaint about a NUL byte, said about the file
            raise CommandError(f"{source!r}: a file name cannot hold a NUL byte") from None
    try:
        return data.decode("utf-8"), source
    except UnicodeDecodeError as e:
        raise CommandError(f"{source}: not UTF-8 text (byte {e.start}: {e.reason})") from None


def add_which_arguments(parser: argparse.ArgumentParser) -> None:
    """virsh's flags of a change that may apply to the running domain, its definition, or both."""
    parser.add_argument("--live", action="store_true", help="the running domain")
    parser.add_argument("--config", action="store_true", help="the persistent definition")
    parser.add_argument("--persistent", action="store_true",
                        help="both (a shut-off domain: the definition)")
    parser.add_argument("--current", action="store_true",
                        help="the domain as it is now: running, else its definition (the default)")


async def which_definitions(dom: Domain, args: argparse.Namespace) -> tuple[bool, bool]:
    """(live, config) from the flags of :func:`add_which_arguments`: as virsh decides, without a flag (or
    with ``--current``) the running domain if it runs, else the definition."""
    if args.persistent:
        return True, True
    if args.live or args.config:
        return args.live, args.config
    running = (await dom.state())[0].value != "shutoff"
    return running, not running


def seconds(text: str) -> float:
    """``type=`` for arguments in seconds: a non-negative number."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: '{text}'") from None
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"seconds must be a finite number >= 0, not '{text}'")
    return value


async def stop_on_signal(scope: anyio.CancelScope, *, task_status: anyio.abc.TaskStatus[None]) -> None:
    """Cancel ``scope`` at the first SIGINT (Ctrl-C) or SIGTERM, for commands whose normal end that is.

    Run it with ``await group.start(stop_on_signal, group.cancel_scope)``: once started, the signals are
    caught, so that the command's ``async with`` blocks close the connection on the way out (guests keep
    running) and the exit status is 0 instead of Python's KeyboardInterrupt.
    """
    import anyio

    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        task_status.started()
        async for _ in signals:
            scope.cancel()
            return
