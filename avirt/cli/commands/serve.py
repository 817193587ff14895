"""``avirt serve``: be the controller of a state directory, in the foreground, until SIGTERM or Ctrl-C.

Any program that connects to a local state directory first becomes its controller (it takes the
directory's lock and serves the API on ``<state_dir>/avirt.sock``) or, when another program already is,
that program's client. Without a long-lived holder, control moves from command to command: each
``avirt`` command holds the directory for the fraction of a second it runs, re-attaching to every guest
as it starts. ``avirt serve`` is the long-lived holder a service manager runs, so that every command and
application is a client of one controller that has watched the guests all along (it sees a guest power
off, or its QEMU die, when it happens; state reasons stay known)::

    async with avirt.connect(uri, state_dir=...) as conn:   # takes the lock: reattaches, then serves
        if not conn.serving:                                 # somebody else was first: not our job
            raise CommandError(...)
        wait for SIGTERM or SIGINT                           # clients come and go meanwhile

A server must be the holder, so ``serve`` refuses to start as a client (``conn.serving`` is False when
another program holds the directory): two ``serve`` processes on one directory would otherwise look
alike while only one of them did anything. Its end is the normal end of a service (exit status 0), and
it leaves the guests running, as every controller does: QEMU runs in a session of its own
(``setsid``), so neither the signal that stops ``serve`` nor the terminal's Ctrl-C reaches it. Under
systemd the unit must also say ``KillMode=process``: the guests are in the unit's control group, which
systemd would otherwise empty (see docs/avirt.service). When ``serve`` ends, a client that stays
connected (``avirt event``, an application) takes the directory over and serves the rest.
"""

from __future__ import annotations

import argparse
import os

from avirt.cli.command import OTHER, Command, CommandError, Context, stop_on_signal


async def _serve(ctx: Context, args: argparse.Namespace) -> None:
    import anyio

    from avirt.uri import ConnectionURI

    uri = ConnectionURI.parse(ctx.uri)
    uri.check_supported()
    if uri.scheme == "test" or uri.transport is not None:
        raise CommandError(f"serve controls a local state directory; {ctx.uri} has none here "
                           "(for a remote host, run 'avirt serve' on that host)")
    state_dir = _absolute(ctx.state_dir or uri.default_state_dir())
    if args.stdio:
        await _serve_stdio(ctx, state_dir)
        return
    async with ctx.connect() as conn:
        if not conn.serving:
            raise CommandError(f"another avirt program already holds the state directory {state_dir} "
                               "(or its socket could not be opened); stop it first: serve must be "
                               "the controller")
        async with anyio.create_task_group() as group:
            await group.start(stop_on_signal, group.cancel_scope)
            ctx.note(f"serving {state_dir} on {os.path.join(state_dir, 'avirt.sock')} (pid {os.getpid()}); "
                     "SIGTERM or Ctrl-C stops, guests keep running")
            await anyio.sleep_forever()


async def _serve_stdio(ctx: Context, state_dir: str) -> None:
    """One client on standard input and output, until it closes standard input.

    The connection is an ordinary one: it holds the state directory (and serves the others on its
    socket too) or, when another program holds it, is that program's client, so the stdio client is
    relayed to the holder. Either way the client sees the one controller of the directory.
    """
    import anyio

    from avirt.served.stdio import take_stdio

    stream = take_stdio()  # first: nothing may write to standard output from here on
    async with ctx.connect() as conn, anyio.create_task_group() as group:
        await group.start(stop_on_signal, group.cancel_scope)
        ctx.note(f"serving {state_dir} on standard input and output (pid {os.getpid()}, "
                 f"{'the controller' if conn.serving else 'relayed to its controller'})")
        await conn.serve_stream(stream)
        group.cancel_scope.cancel()


def _serve_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--stdio", action="store_true",
                        help="serve one client on standard input and output (what qemu+ssh:// runs on "
                             "the remote host), until standard input closes")


def _absolute(path: str) -> str:
    """The state directory as connect() resolves it (a relative one is relative to where we run)."""
    return os.path.abspath(path)


COMMANDS = (
    Command("serve", "Control the state directory in the foreground, serving every other avirt program",
            _serve, _serve_args,
            details="For a service manager: takes the state directory's lock (re-attaching to every guest), "
                    "serves the API on <state_dir>/avirt.sock to every other avirt command and "
                    "application, and runs until SIGTERM or Ctrl-C (exit status 0). Guests keep running "
                    "when it ends. It fails if another program already holds the directory.\n\n"
                    "Under systemd use Type=simple and KillMode=process (the guests share the unit's "
                    "control group); docs/avirt.service is an example user unit.\n\n"
                    "With --stdio it serves one client on standard input and output instead (logs go to "
                    "standard error) and ends when standard input closes; if another program already "
                    "holds the directory, the client is relayed to it. qemu+ssh:// connections run "
                    "'avirt serve --stdio' on the remote host.",
            example="avirt serve\nsystemctl --user enable --now avirt.service\n"
                    "ssh host avirt --state-dir .local/state/avirt serve --stdio",
            group=OTHER, interrupt_status=0),
)
