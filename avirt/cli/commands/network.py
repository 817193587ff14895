"""Virtual networks, as virsh's ``net-*`` commands on ``Connection.define_network_xml`` and ``Network``::

    avirt net-define lab.xml          # libvirt network XML (- for standard input)
    avirt net-start lab               # bridge, addresses, firewall table, dnsmasq
    avirt net-list --all
    avirt net-dhcp-leases lab
    avirt net-destroy lab && avirt net-undefine lab

Starting and destroying a network changes the host (bridges, nftables, a dnsmasq process): it needs root
or CAP_NET_ADMIN, and fails with a clear error otherwise.
"""

from __future__ import annotations

import argparse
import time
from typing import TYPE_CHECKING

from avirt.cli.command import NETWORKS, Command, CommandError, Context, read_xml
from avirt.cli.output import table

if TYPE_CHECKING:
    from avirt.connection import Connection
    from avirt.network import Network


def _network_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("network", metavar="NETWORK", help="network name or UUID")


async def _lookup(conn: Connection, name: str) -> Network:
    return await conn.lookup_network(name)


async def _net_define(ctx: Context, args: argparse.Namespace) -> None:
    from avirt.errors import InvalidXMLError, UnsupportedError

    xml, source = await read_xml(args.file)
    async with ctx.connect() as conn:
        try:
            net = await conn.define_network_xml(xml)
        except (InvalidXMLError, UnsupportedError) as e:
            raise CommandError(f"{source}: {e}") from e
    ctx.say(f"Network '{net.name}' defined from {source}")


def _net_define_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", metavar="FILE", help="libvirt network XML file, or - for standard input")


def _simple(call: str, done: str) -> Command:
    async def run(ctx: Context, args: argparse.Namespace) -> None:
        async with ctx.connect() as conn:
            net = await _lookup(conn, args.network)
            await getattr(net, call)()
        ctx.say(f"Network '{net.name}' {done}")

    return Command(f"net-{call}", {"start": "Start an inactive network",
                                   "destroy": "Stop an active network, removing what it made on the host",
                                   "undefine": "Remove an inactive network's definition"}[call],
                   run, _network_argument, example=f"avirt net-{call} lab", group=NETWORKS)


async def _net_list(ctx: Context, args: argparse.Namespace) -> None:
    rows = []
    async with ctx.connect() as conn:
        for net in await conn.list_networks():
            active = await net.is_active()
            if active or args.all or args.inactive:
                if args.inactive and active:
                    continue
                rows.append([net.name, "active" if active else "inactive",
                             "yes" if await net.autostart() else "no", await net.bridge() or "-"])
    ctx.say(table(["Name", "State", "Autostart", "Bridge"], rows))


def _net_list_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--all", action="store_true", help="active and inactive networks")
    parser.add_argument("--inactive", action="store_true", help="inactive networks only")


async def _net_dumpxml(ctx: Context, args: argparse.Namespace) -> None:
    async with ctx.connect() as conn:
        net = await _lookup(conn, args.network)
        ctx.say(await net.xml(inactive=args.inactive))


def _net_dumpxml_args(parser: argparse.ArgumentParser) -> None:
    _network_argument(parser)
    parser.add_argument("--inactive", action="store_true",
                        help="the persistent definition, not the one an active network runs with")


async def _net_autostart(ctx: Context, args: argparse.Namespace) -> None:
    async with ctx.connect() as conn:
        net = await _lookup(conn, args.network)
        await net.set_autostart(not args.disable)
    ctx.say(f"Network '{net.name}' {'unmarked' if args.disable else 'marked'} as autostarted")


def _net_autostart_args(parser: argparse.ArgumentParser) -> None:
    _network_argument(parser)
    parser.add_argument("--disable", action="store_true", help="no longer start it with the controller")


async def _net_dhcp_leases(ctx: Context, args: argparse.Namespace) -> None:
    async with ctx.connect() as conn:
        net = await _lookup(conn, args.network)
        leases = await net.dhcp_leases()
    rows = []
    for lease in leases:
        if args.mac and lease.mac != args.mac.lower():
            continue
        expires = "never"
        if lease.expires:
            expires = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(lease.expires))
        address = f"{lease.ip}/{lease.prefix}" if lease.prefix is not None else lease.ip
        rows.append([expires, lease.mac, lease.family, address, lease.hostname or "-",
                     lease.client_id or "-"])
    ctx.say(table(["Expiry Time", "MAC address", "Protocol", "IP address", "Hostname", "Client ID or DUID"],
                  rows))


def _net_dhcp_leases_args(parser: argparse.ArgumentParser) -> None:
    _network_argument(parser)
    parser.add_argument("--mac", metavar="MAC", help="only the leases of this MAC address")


COMMANDS = (
    Command("net-define", "Define (or update) a network from an XML file", _net_define, _net_define_args,
            details="The network starts inactive. A missing uuid is generated and a missing bridge name "
                    "picked (avirbrN); a bridge or a subnet another network has is refused.",
            example="avirt net-define lab.xml", group=NETWORKS),
    _simple("start", "started"),
    _simple("destroy", "destroyed"),
    _simple("undefine", "has been undefined"),
    Command("net-list", "List networks (active ones unless --all or --inactive)", _net_list, _net_list_args,
            example="avirt net-list --all", group=NETWORKS),
    Command("net-dumpxml", "Print a network's XML definition", _net_dumpxml, _net_dumpxml_args,
            example="avirt net-dumpxml lab", group=NETWORKS),
    Command("net-autostart", "Start a network whenever a controller opens the state directory",
            _net_autostart, _net_autostart_args, example="avirt net-autostart lab", group=NETWORKS),
    Command("net-dhcp-leases", "List the addresses a network's DHCP server handed out", _net_dhcp_leases,
            _net_dhcp_leases_args, example="avirt net-dhcp-leases lab", group=NETWORKS),
)
