"""The ``avirt`` command line: virsh's verbs on top of the async API.

``avirt [-c URI] [--state-dir DIR] COMMAND ...`` (or ``python -m avirt ...``). Each invocation is one short
controller: it connects (taking the state directory's lock), runs one command, and closes, leaving
guests running. How the package is laid out, so that a new command is one new module:

``app``
    :func:`main`: the global options, the parser, running a command on an event loop, and turning
    every :class:`~avirt.errors.AvirtError` (and ``OSError``) into one ``error: ...`` line and exit
    status 1.
``command``
    :class:`~avirt.cli.command.Command` (what a command module declares) and
    :class:`~avirt.cli.command.Context` (what a command receives: the connection settings and the
    output streams).
``output``
    Plain text formatting shared by commands: virsh-style tables, ``key: value`` blocks, state labels,
    events as lines or JSON objects.
``commands/``
    One module per command or family of commands, discovered at start-up: each module lists its
    commands in a ``COMMANDS`` tuple. See :mod:`avirt.cli.commands`.

Start-up stays light: nothing here imports the library (anyio, lxml, qemu.qmp) until a command runs,
so ``avirt --help`` costs no more than the ``import avirt`` that Python does for the package itself.
"""

from avirt.cli.app import main

__all__ = ["main"]
