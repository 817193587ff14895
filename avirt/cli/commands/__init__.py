"""The command modules: each file here declares ``COMMANDS``, a tuple of :class:`~avirt.cli.command.Command`.

Adding a command is adding a module, e.g. ``blockcommit.py``::

    \"\"\"avirt blockcommit: merge a disk's overlays down into a backing image.\"\"\"

    from avirt.cli.command import BLOCK_JOBS, Command, Context, add_domain_argument

    async def _blockcommit(ctx: Context, args: argparse.Namespace) -> None:
        async with ctx.connect() as conn:
            dom = await ctx.domain(conn, args.domain)
            ...

    def _arguments(parser: argparse.ArgumentParser) -> None:
        add_domain_argument(parser)
        parser.add_argument("disk", metavar="DISK")
        ...

    COMMANDS = (Command("blockcommit", "Merge overlays into a backing image", _blockcommit, _arguments,
                        group=BLOCK_JOBS, example="avirt blockcommit web1 vda --active --pivot --wait"),)

:func:`discover` finds it; nothing else needs to change. ``avirt --help`` lists commands by ``group``
(in the order of :data:`~avirt.cli.command.GROUPS`), and within a group by module name, then in the
order of each module's ``COMMANDS``. A module must not import the library at module level (see
:mod:`avirt.cli.command`): every module here is imported for every ``avirt`` run, ``--help`` included.
"""

from __future__ import annotations

import importlib
import pkgutil

from avirt.cli.command import GROUPS, Command


def discover() -> list[Command]:
    """Every command of every module in this package, in ``avirt --help`` order."""
    found: list[Command] = []
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        commands = getattr(module, "COMMANDS", None)
        if not isinstance(commands, tuple) or not all(isinstance(c, Command) for c in commands):
            raise TypeError(f"{module.__name__} must define COMMANDS, a tuple of avirt.cli.command.Command")
        found.extend(commands)
    names = [c.name for c in found]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise TypeError(f"avirt commands defined twice: {', '.join(duplicates)}")

    def order(command: Command) -> int:
        return GROUPS.index(command.group) if command.group in GROUPS else len(GROUPS)

    return sorted(found, key=order)  # stable: module order within a group
