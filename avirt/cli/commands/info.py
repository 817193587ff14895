"""Read-only commands: ``list``, ``dominfo``, ``domstate``, ``dumpxml``, ``domblklist``.

What the API returns as data (``state()``, ``info()``) is printed as is; what only the domain XML says
(the running domain's id, i.e. its QEMU pid; the OS type; the disks and their sources) is read from
``Domain.xml()`` with lxml, the way a virsh user would read ``dumpxml``.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import TYPE_CHECKING

from avirt.cli.command import DOMAIN_MONITORING, Command, Context, add_domain_argument
from avirt.cli.output import key_values, state_label, table

if TYPE_CHECKING:
    from lxml import etree

    from avirt.domain import Domain
    from avirt.models import DomainState


def _parse(xml: str) -> etree._Element:
    from lxml import etree

    return etree.fromstring(xml.encode())


async def _live_id(dom: Domain, state: DomainState) -> str:
    """The running domain's id (its QEMU pid, ``<domain id=...>`` in the live XML), or ``-``."""
    if state.value == "shutoff":
        return "-"
    return _parse(await dom.xml()).get("id") or "-"


async def _persistent(dom: Domain, state: DomainState) -> bool:
    """Whether the domain has a persistent definition.

    The API has no ``is_persistent()`` yet, so this reads what the XML calls imply: a transient domain
    exists only while it runs, and its "inactive" XML is its live XML (with an id), for it has no
    definition to return.
    """
    if state.value == "shutoff":
        return True
    return _parse(await dom.xml(inactive=True)).get("id") is None


# -- list ------------------------------------------------------------------------------------------------


async def _list(ctx: Context, args: argparse.Namespace) -> None:
    rows: list[tuple[str, str, str, str]] = []
    async with ctx.connect() as conn:
        for dom in await conn.list_domains():
            state, _ = await dom.state()
            if state.value == "shutoff" and not args.all:
                continue
            rows.append((await _live_id(dom, state), dom.name, state_label(state), dom.uuid))
    rows.sort(key=lambda row: (row[0] == "-", row[1]))  # running first, as virsh; then by name
    if args.name or args.uuid:
        for row in rows:
            ctx.say(row[1] if args.name else row[3])
        return
    ctx.say(table(("Id", "Name", "State"), [row[:3] for row in rows]))


def _list_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--all", action="store_true", help="also list shut-off domains")
    only = parser.add_mutually_exclusive_group()
    only.add_argument("--name", action="store_true", help="print only the names, one a line")
    only.add_argument("--uuid", action="store_true", help="print only the UUIDs, one a line")


# -- dominfo ---------------------------------------------------------------------------------------------


async def _dominfo(ctx: Context, args: argparse.Namespace) -> None:
    async with ctx.connect() as conn:
        dom = await ctx.domain(conn, args.domain)
        info = await dom.info()
        root = _parse(await dom.xml())
        persistent = await _persistent(dom, info.state)
    os_type = root.findtext("os/type") or "-"
    ctx.say(key_values([
        ("Id", "-" if info.state.value == "shutoff" else root.get("id") or "-"),
        ("Name", dom.name),
        ("UUID", dom.uuid),
        ("OS Type", os_type),
        ("State", state_label(info.state)),
        ("CPU(s)", str(info.vcpus)),
        ("CPU time", f"{info.cpu_time_ns / 1e9:.1f}s"),
        ("Max memory", f"{info.max_memory_kib} KiB"),
        ("Used memory", f"{info.memory_kib} KiB"),
        ("Persistent", "yes" if persistent else "no"),
        ("Accelerator", {"kvm": "kvm", "qemu": "tcg"}.get(root.get("type") or "", "-")),
    ]))


# -- domstate --------------------------------------------------------------------------------------------


async def _domstate(ctx: Context, args: argparse.Namespace) -> None:
    async with ctx.connect() as conn:
        dom = await ctx.domain(conn, args.domain)
        state, reason = await dom.state()
    ctx.say(state_label(state) + (f" ({reason})" if args.reason else ""))


def _domstate_args(parser: argparse.ArgumentParser) -> None:
    add_domain_argument(parser)
    parser.add_argument("--reason", action="store_true", help="also print why, e.g. 'paused (user)'")


# -- dumpxml ---------------------------------------------------------------------------------------------


async def _dumpxml(ctx: Context, args: argparse.Namespace) -> None:
    async with ctx.connect() as conn:
        dom = await ctx.domain(conn, args.domain)
        xml = await dom.xml(inactive=args.inactive)
    ctx.say(xml)


def _dumpxml_args(parser: argparse.ArgumentParser) -> None:
    add_domain_argument(parser)
    parser.add_argument("--inactive", action="store_true",
                        help="the persistent definition, not the live XML of the running domain")


# -- domblklist ------------------------------------------------------------------------------------------


@dataclass
class _Disk:
    type: str
    device: str
    target: str
    source: str


def _disks(root: etree._Element) -> list[_Disk]:
    disks = []
    for el in root.iterfind("devices/disk"):
        target = el.find("target")
        source = el.find("source")
        path = None
        if source is not None:
            path = next((source.get(a) for a in ("file", "dev", "name", "volume") if source.get(a)), None)
        disks.append(_Disk(el.get("type") or "-", el.get("device") or "-",
                           (target.get("dev") if target is not None else None) or "-", path or "-"))
    return disks


async def _domblklist(ctx: Context, args: argparse.Namespace) -> None:
    async with ctx.connect() as conn:
        dom = await ctx.domain(conn, args.domain)
        root = _parse(await dom.xml(inactive=args.inactive))
    disks = _disks(root)
    if args.details:
        ctx.say(table(("Type", "Device", "Target", "Source"),
                      [(d.type, d.device, d.target, d.source) for d in disks]))
    else:
        ctx.say(table(("Target", "Source"), [(d.target, d.source) for d in disks]))


def _domblklist_args(parser: argparse.ArgumentParser) -> None:
    add_domain_argument(parser)
    parser.add_argument("--inactive", action="store_true", help="the disks of the persistent definition")
    parser.add_argument("--details", action="store_true", help="also print each disk's type and device")


COMMANDS = (
    Command("list", "List domains: Id (QEMU pid), Name, State", _list, _list_args,
            details="Without --all only active domains (those with a QEMU process) are listed.",
            example="avirt list --all\nfor d in $(avirt list --all --name); do avirt domstate $d; done",
            group=DOMAIN_MONITORING),
    Command("dominfo", "Show a domain's basic information", _dominfo, add_domain_argument,
            example="avirt dominfo web1", group=DOMAIN_MONITORING),
    Command("domstate", "Show a domain's state", _domstate, _domstate_args,
            details="States: running, paused, in shutdown, shut off, crashed, pmsuspended. --reason adds "
                    "the reason, e.g. 'shut off (crashed)' for a QEMU that ended on its own.",
            example="avirt domstate web1 --reason", group=DOMAIN_MONITORING),
    Command("dumpxml", "Print a domain's XML", _dumpxml, _dumpxml_args,
            details="The live XML of a running domain carries its id and each disk's backing chain "
                    "(<backingStore>).",
            example="avirt dumpxml web1\navirt dumpxml web1 --inactive > web1.xml", group=DOMAIN_MONITORING),
    Command("domblklist", "List a domain's disks: Target, Source", _domblklist, _domblklist_args,
            example="avirt domblklist web1 --details", group=DOMAIN_MONITORING),
)
