"""``avirt define FILE`` and ``avirt undefine DOM``: persistent definitions from libvirt domain XML.

``define`` reads the file (``-`` for standard input) and calls ``Connection.define_xml``; an XML error
names the file and the line: ``error: guest.xml: line 4: malformed XML: ...``.
"""

from __future__ import annotations

import argparse

from avirt.cli.command import DOMAIN_MANAGEMENT, Command, CommandError, Context, add_domain_argument, read_xml


async def _define(ctx: Context, args: argparse.Namespace) -> None:
    from avirt.errors import InvalidXMLError, UnsupportedError

    xml, source = await read_xml(args.file)
    async with ctx.connect() as conn:
        try:
            dom = await conn.define_xml(xml)
        except (InvalidXMLError, UnsupportedError) as e:
            raise CommandError(f"{source}: {e}") from e
    ctx.say(f"Domain '{dom.name}' defined from {source}")


def _define_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", metavar="FILE", help="libvirt domain XML file, or - for standard input")


async def _undefine(ctx: Context, args: argparse.Namespace) -> None:
    async with ctx.connect() as conn:
        dom = await ctx.domain(conn, args.domain)
        await dom.undefine()
    ctx.say(f"Domain '{dom.name}' has been undefined")


COMMANDS = (
    Command("define", "Define (or update) a persistent domain from an XML file", _define, _define_args,
            details="The domain starts shut off. Redefining an existing name with the same UUID updates "
                    "its definition; a running domain picks the change up at its next start.",
            example="avirt define web1.xml\navirt dumpxml web1 --inactive | avirt define -",
            group=DOMAIN_MANAGEMENT),
    Command("undefine", "Remove a domain's persistent definition", _undefine, add_domain_argument,
            details="A running domain keeps running, as a transient domain that disappears when it stops.",
            example="avirt undefine web1", group=DOMAIN_MANAGEMENT),
)
