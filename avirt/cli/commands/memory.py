"""``avirt setmem``: a domain's current memory, as virsh's ``setmem``, on ``Domain.set_memory``.

The size is in KiB unless it carries a suffix (``K``, ``M``, ``G``, 1024-based, as virsh scales it).
Which definition changes follows virsh (``which_definitions``): ``--live`` the running guest (through its
balloon), ``--config`` the persistent definition, both flags or ``--persistent`` both; ``--current`` or no
flag, the domain as it is now.
"""

from __future__ import annotations

import argparse
import re

from avirt.cli.command import (
    DOMAIN_MANAGEMENT,
    Command,
    Context,
    add_domain_argument,
    add_which_arguments,
    which_definitions,
)

_SCALE = {"": 1, "k": 1, "kib": 1, "m": 1024, "mib": 1024, "g": 1024**2, "gib": 1024**2}


def kib(text: str) -> int:
    """``type=`` for a memory size: KiB, or a number with a K, M or G suffix (1024-based)."""
    match = re.fullmatch(r"([0-9]{1,15})\s*([A-Za-z]*)", text.strip())
    if match is None or match.group(2).lower() not in _SCALE or int(match.group(1)) == 0:
        raise argparse.ArgumentTypeError(
            f"not a memory size: '{text}' (a positive whole number of KiB, or with a K, M or G suffix)")
    return int(match.group(1)) * _SCALE[match.group(2).lower()]


async def _setmem(ctx: Context, args: argparse.Namespace) -> None:
    async with ctx.connect() as conn:
        dom = await ctx.domain(conn, args.domain)
        live, config = await which_definitions(dom, args)
        await dom.set_memory(args.size, live=live, config=config)
    ctx.say(f"Memory of {args.domain} set to {args.size} KiB")


def _setmem_args(parser: argparse.ArgumentParser) -> None:
    add_domain_argument(parser)
    parser.add_argument("size", metavar="SIZE", type=kib, help="the new current memory: KiB, or with K, M, G")
    add_which_arguments(parser)


COMMANDS = (
    Command("setmem", "Change a domain's current memory (the balloon's target)", _setmem, _setmem_args,
            details="A running guest needs <memballoon model='virtio'/> and a balloon driver; it gives the "
                    "memory back in its own time (see domstats --balloon).",
            example="avirt setmem web1 512M --live", group=DOMAIN_MANAGEMENT),
)
