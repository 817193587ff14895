"""A domain's network interfaces: ``domiflist`` (read from its XML) and ``domif-setlink``.

``domiflist`` prints what the (live, else persistent) definition says of each ``<interface>``, as
virsh does: the tap's name while the guest runs, its type, source, model and MAC. ``domif-setlink``
pulls or plugs a NIC's virtual cable on a running guest (``Domain.set_link``); the interface is named
by its MAC or its tap's name.
"""

from __future__ import annotations

import argparse

from avirt.cli.command import NETWORKS, Command, CommandError, Context, add_domain_argument
from avirt.cli.output import table


async def _domiflist(ctx: Context, args: argparse.Namespace) -> None:
    from lxml import etree

    async with ctx.connect() as conn:
        dom = await ctx.domain(conn, args.domain)
        root = etree.fromstring((await dom.xml(inactive=args.inactive)).encode())
    rows = []
    for el in root.iterfind("devices/interface"):
        source = el.find("source")
        src = "-"
        if source is not None:
            src = source.get("network") or source.get("bridge") or source.get("dev") or "-"
        target, model, mac = el.find("target"), el.find("model"), el.find("mac")
        rows.append([target.get("dev", "-") if target is not None else "-", el.get("type", "-"), src,
                     model.get("type", "-") if model is not None else "-",
                     mac.get("address", "-") if mac is not None else "-"])
    ctx.say(table(["Interface", "Type", "Source", "Model", "MAC"], rows))


def _domiflist_args(parser: argparse.ArgumentParser) -> None:
    add_domain_argument(parser)
    parser.add_argument("--inactive", action="store_true", help="the persistent definition")


async def _domif_setlink(ctx: Context, args: argparse.Namespace) -> None:
    if args.state not in ("up", "down"):
        raise CommandError(f"the link state is up or down, not '{args.state}'")
    async with ctx.connect() as conn:
        dom = await ctx.domain(conn, args.domain)
        await dom.set_link(args.interface, args.state == "up")
    ctx.say(f"Device updated successfully: the link of {args.interface} is {args.state}")


def _domif_setlink_args(parser: argparse.ArgumentParser) -> None:
    add_domain_argument(parser)
    parser.add_argument("interface", metavar="INTERFACE", help="the NIC's MAC address or its tap's name")
    parser.add_argument("state", metavar="STATE", help="up or down")


COMMANDS = (
    Command("domiflist", "List a domain's network interfaces", _domiflist, _domiflist_args,
            example="avirt domiflist web1", group=NETWORKS),
    Command("domif-setlink", "Set a running domain's NIC link up or down", _domif_setlink,
            _domif_setlink_args, example="avirt domif-setlink web1 52:54:00:12:34:56 down", group=NETWORKS),
)
