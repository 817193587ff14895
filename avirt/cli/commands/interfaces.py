"""A domain's network interfaces: ``domiflist`` (read from its XML), ``domif-setlink``, ``domifaddr`` and
``domifstat``.

``domiflist`` prints what the (live, else persistent) definition says of each ``<interface>``, as
virsh does: the tap's name while the guest runs, its type, source, model and MAC. ``domif-setlink``
pulls or plugs a NIC's virtual cable on a running guest (``Domain.set_link``); the interface is named
by its MAC or its tap's name. ``domifaddr`` prints the addresses the host knows of each NIC
(``Domain.interface_addresses``: DHCP leases, the neighbour table with ``--source arp``, or the guest's
own word through its agent with ``--source agent``), one line per address, and ``domifstat`` one NIC's
traffic counters seen from the guest (``Domain.interface_stats``), both in virsh's layout.
"""

from __future__ import annotations

import argparse
import dataclasses

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


async def _domifaddr(ctx: Context, args: argparse.Namespace) -> None:
    async with ctx.connect() as conn:
        dom = await ctx.domain(conn, args.domain)
        found = await dom.interface_addresses(source=args.source)
    rows = []
    for nic in found:
        if args.interface not in (None, nic.name, nic.hwaddr):
            continue
        if not nic.addrs:  # only the agent names an interface it knows no address of
            rows.append([nic.name, nic.hwaddr or "-", "N/A", "N/A"])
        for n, addr in enumerate(nic.addrs):
            first = n == 0 or args.full  # virsh shows a NIC's name and MAC once, unless --full
            rows.append([nic.name if first else "-", nic.hwaddr if first else "-", addr.type,
                         f"{addr.addr}/{addr.prefix}"])
    if args.interface is not None and not rows and not any(
            args.interface in (nic.name, nic.hwaddr) for nic in found):
        raise CommandError(f"no address known for interface {args.interface} (source {args.source})")
    ctx.say(table(["Name", "MAC address", "Protocol", "Address"], rows))


def _domifaddr_args(parser: argparse.ArgumentParser) -> None:
    add_domain_argument(parser)
    parser.add_argument("--interface", metavar="INTERFACE",
                        help="only this NIC (tap name or MAC; with --source agent the guest's name or MAC)")
    parser.add_argument("--full", action="store_true", help="repeat the name and MAC on every line")
    parser.add_argument("--source", choices=("lease", "arp", "agent"), default="lease",
                        help="the network's DHCP leases (default), the host's neighbour table, or the "
                             "guest agent")


async def _domifstat(ctx: Context, args: argparse.Namespace) -> None:
    async with ctx.connect() as conn:
        dom = await ctx.domain(conn, args.domain)
        counters = await dom.interface_stats(args.interface)
    values = dataclasses.asdict(counters)
    ctx.say("\n".join(f"{args.interface} {name} {value}" for name, value in values.items()))


def _domifstat_args(parser: argparse.ArgumentParser) -> None:
    add_domain_argument(parser)
    parser.add_argument("interface", metavar="INTERFACE", help="the NIC's tap name or MAC address")


COMMANDS = (
    Command("domiflist", "List a domain's network interfaces", _domiflist, _domiflist_args,
            example="avirt domiflist web1", group=NETWORKS),
    Command("domif-setlink", "Set a running domain's NIC link up or down", _domif_setlink,
            _domif_setlink_args, example="avirt domif-setlink web1 52:54:00:12:34:56 down", group=NETWORKS),
    Command("domifaddr", "Show the addresses of a running domain's NICs", _domifaddr, _domifaddr_args,
            details="Read on the host: the network's DHCP leases for each NIC's MAC, or with --source arp "
                    "the host's neighbour table on each NIC's bridge (no prefix known: /0).",
            example="avirt domifaddr web1 --source arp", group=NETWORKS),
    Command("domifstat", "Show the traffic counters of a running domain's NIC", _domifstat, _domifstat_args,
            details="The tap's counters seen from the guest: rx is what the guest received.",
            example="avirt domifstat web1 vnet0", group=NETWORKS),
)
