"""``main()``: parse the command line, run one command on an event loop, map failures to exit statuses.

Exit statuses, as virsh's: 0 success; 1 failure, reported as one ``error: <message>`` line on standard
error (an :class:`~avirt.errors.AvirtError`, an ``OSError`` such as an unreadable file, or a
:class:`~avirt.cli.command.CommandError`), never a traceback; 2 a usage error (argparse); 130 after
Ctrl-C, except for commands whose normal end is Ctrl-C (``event``), which exit 0.

The connection comes from the global options, then the environment, then the default:

========================  =========================  ==================================
what                      option                     environment / default
========================  =========================  ==================================
connection URI            ``-c/--connect URI``       ``AVIRT_DEFAULT_URI``, else ``qemu:///session``
state directory           ``--state-dir DIR``        ``AVIRT_STATE_DIR``, else the URI's own
========================  =========================  ==================================
"""

from __future__ import annotations

import argparse
import os
import sys
import textwrap
from collections.abc import Sequence
from typing import TYPE_CHECKING

from avirt.cli.command import GROUPS, Command, CommandError, Context
from avirt.cli.commands import discover

if TYPE_CHECKING:
    import logging

DEFAULT_URI = "qemu:///session"
URI_ENV = "AVIRT_DEFAULT_URI"
STATE_DIR_ENV = "AVIRT_STATE_DIR"

#: Help text paragraphs are wrapped to this width (the option lists follow argparse's own rules).
_WIDTH = 79

_DESCRIPTION = """\
Control QEMU guests the libvirt way, from the shell: define them from libvirt domain XML, start,
stop and inspect them, and watch their events. There is no daemon: each command connects, does
its work and exits; guests keep running.
"""

_ENVIRONMENT = f"""\
environment:
  {URI_ENV}   connection URI when -c is not given (default {DEFAULT_URI})
  {STATE_DIR_ENV}     state directory when --state-dir is not given

Run 'avirt COMMAND --help' for the options of a command.
"""


class _Version(argparse.Action):
    """``--version``, looked up only when asked for (importlib.metadata is not free)."""

    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: object) -> None:
        super().__init__(option_strings, dest, nargs=0, help="print avirt's version and exit")

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: object, option_string: str | None = None) -> None:
        from importlib.metadata import PackageNotFoundError, version

        try:
            text = version("avirt")
        except PackageNotFoundError:
            text = "unknown"
        sys.stdout.write(f"avirt {text}\n")
        parser.exit()


def build_parser(commands: Sequence[Command]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="avirt", description=_DESCRIPTION, epilog=_command_list(commands) + "\n" + _ENVIRONMENT,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-c", "--connect", metavar="URI", dest="uri",
                        help=f"connection URI (default: ${URI_ENV}, else {DEFAULT_URI})")
    parser.add_argument("--state-dir", metavar="DIR",
                        help=f"the state directory to manage (default: ${STATE_DIR_ENV}, else the URI's: "
                             "~/.local/state/avirt for session, /var/lib/avirt for system)")
    parser.add_argument("--debug", action="store_true",
                        help="log the library's debug messages and show tracebacks on errors")
    parser.add_argument("--version", action=_Version)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True,
                                help="one of the commands listed below")
    for command in commands:
        paragraphs = [command.summary.rstrip(".") + ".", *command.details.strip().split("\n\n")]
        description = "\n\n".join(textwrap.fill(p.strip(), width=_WIDTH) for p in paragraphs if p.strip())
        epilog = None
        if command.example:
            lines = command.example.strip().splitlines()
            epilog = ("example:\n" if len(lines) == 1 else "examples:\n") + "".join(
                f"  {line}\n" for line in lines)
        child = sub.add_parser(command.name, description=description, epilog=epilog,
                               formatter_class=argparse.RawDescriptionHelpFormatter)
        command.arguments(child)
        child.set_defaults(_command=command)
    return parser


def _command_list(commands: Sequence[Command]) -> str:
    width = max(len(c.name) for c in commands) + 2
    blocks = []
    for group in [*GROUPS, *sorted({c.group for c in commands} - set(GROUPS))]:
        members = [c for c in commands if c.group == group]
        if members:
            blocks.append(f"{group.lower()}:\n" + "".join(
                f"  {c.name:<{width}}{c.summary}\n" for c in members))
    return "\n".join(blocks)


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``avirt`` with ``argv`` (default ``sys.argv[1:]``); returns the exit status."""
    interrupted, debug = 130, False
    try:
        parser = build_parser(discover())
        args = parser.parse_args(argv)
        command: Command = args._command
        interrupted, debug = command.interrupt_status, args.debug
        ctx = Context(uri=args.uri or os.environ.get(URI_ENV) or DEFAULT_URI,
                      state_dir=args.state_dir or os.environ.get(STATE_DIR_ENV) or None)
        _configure_logging(debug)
        return _run(command, ctx, args)
    except BaseException as e:
        error = _unwrap(e)
        if isinstance(error, KeyboardInterrupt):
            return interrupted
        if isinstance(error, BrokenPipeError):
            # The reader went away (``avirt event | head -3``): stop quietly, and keep Python from
            # complaining again when it flushes stdout at exit.
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            return 1
        failure = _failure(error)
        if failure is None or debug:
            raise  # SystemExit from argparse, or a bug: its traceback is what a report needs
        sys.stderr.write(f"error: {failure}\n")
        return 1


def _unwrap(error: BaseException) -> BaseException:
    """The one real error inside a task group's ExceptionGroup wrapping(s)."""
    while isinstance(error, BaseExceptionGroup) and len(error.exceptions) == 1:
        error = error.exceptions[0]
    return error


def _run(command: Command, ctx: Context, args: argparse.Namespace) -> int:
    import anyio

    status = anyio.run(command.run, ctx, args)
    return status or 0


def _failure(error: BaseException) -> str | None:
    """The ``error:`` text for an expected failure; None for anything else (a bug: let it show)."""
    from avirt.errors import AvirtError, DomainStartError

    if isinstance(error, DomainStartError):
        # The message's first line is the error; QEMU's log tail follows, indented, for the reason.
        first, _, log = str(error).partition("\n")
        return first + "".join(f"\n  {line}" for line in log.splitlines() if line.strip())
    if isinstance(error, AvirtError | CommandError):
        return " ".join(str(error).split()) or type(error).__name__
    if isinstance(error, OSError):
        if error.filename is not None and error.strerror:
            return f"{error.filename}: {error.strerror}"
        return str(error) or type(error).__name__
    return None


#: The handler main() installed last (see _configure_logging).
_log_handler: logging.Handler | None = None


def _configure_logging(debug: bool) -> None:
    """Library warnings (a guest whose monitor does not answer...) as ``avirt: warning: ...`` lines."""
    import logging

    class Brief(logging.Formatter):
        def format(self, record: logging.LogRecord) -> str:
            return f"avirt: {record.levelname.lower()}: {record.getMessage()}"

    global _log_handler
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s: %(message)s") if debug
                         else Brief())
    root = logging.getLogger()
    # main() may run many times in one process (tests, scripts): one handler, or each line comes out
    # once per earlier run, on the streams of that run.
    if _log_handler is not None:
        root.removeHandler(_log_handler)
    _log_handler = handler
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if debug else logging.WARNING)
    if not debug:
        # qemu.qmp logs a failed connection at ERROR ("Negotiation failed: EOFError") although avirt
        # raises it as an exception too, which is the one report a command should print.
        logging.getLogger("qemu.qmp").setLevel(logging.CRITICAL)
