"""The guest agent's commands: ``guestinfo``, ``domfsfreeze``, ``domfsthaw``, ``domfsinfo``, ``domtime``,
``qemu-agent-command``.

virsh's commands of the same names on ``Domain.agent`` (:mod:`avirt.guest_agent`), with its output:
``guestinfo`` prints ``key : value`` lines (``os.kernel-release``, ``hostname``, ``fs.N.mountpoint``,
``if.N.addr.M.addr``...), ``qemu-agent-command`` the agent's JSON answer as ``{"return": ...}``. Every
command takes ``--timeout`` (seconds) for the agent's answer.
"""

from __future__ import annotations

import argparse
import json

from avirt.cli.command import DOMAIN_MANAGEMENT, DOMAIN_MONITORING, Command, Context, add_domain_argument


def _timeout(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: '{text}'") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"the timeout must be a finite number of seconds > 0, not '{text}'")
    return value


def _common(parser: argparse.ArgumentParser) -> None:
    add_domain_argument(parser)
    parser.add_argument("--timeout", metavar="SECONDS", type=_timeout, default=10.0,
                        help="how long to wait for the guest agent (default 10)")


# -- guestinfo ------------------------------------------------------------------------------------------


async def _guestinfo(ctx: Context, args: argparse.Namespace) -> None:
    wanted = {k for k in ("os", "hostname", "filesystem", "interface") if getattr(args, k)} or \
        {"os", "hostname", "filesystem", "interface"}
    rows: list[tuple[str, object]] = []
    async with ctx.connect() as conn:
        agent = (await ctx.domain(conn, args.domain)).agent
        if "os" in wanted:
            info = await agent.os_info(timeout=args.timeout)
            for key, value in (("id", info.id), ("name", info.name), ("pretty-name", info.pretty_name),
                               ("version", info.version), ("version-id", info.version_id),
                               ("kernel-release", info.kernel_release),
                               ("kernel-version", info.kernel_version), ("machine", info.machine)):
                if value is not None:
                    rows.append((f"os.{key}", value))
        if "hostname" in wanted:
            rows.append(("hostname", await agent.host_name(timeout=args.timeout)))
        if "filesystem" in wanted:
            filesystems = await agent.fs_info(timeout=args.timeout)
            rows.append(("fs.count", len(filesystems)))
            for i, fs in enumerate(filesystems):
                rows += [(f"fs.{i}.name", fs.name), (f"fs.{i}.mountpoint", fs.mountpoint),
                         (f"fs.{i}.fstype", fs.type)]
                if fs.total_bytes is not None:
                    rows.append((f"fs.{i}.total-bytes", fs.total_bytes))
                if fs.used_bytes is not None:
                    rows.append((f"fs.{i}.used-bytes", fs.used_bytes))
                rows.append((f"fs.{i}.disk.count", len(fs.disks)))
                for j, disk in enumerate(fs.disks):
                    rows += [(f"fs.{i}.disk.{j}.{key}", value) for key, value in
                             (("device", disk.dev), ("serial", disk.serial), ("bus-type", disk.bus_type),
                              ("pci", disk.pci)) if value is not None]
        if "interface" in wanted:
            nics = await agent.network_interfaces(timeout=args.timeout)
            rows.append(("if.count", len(nics)))
            for i, nic in enumerate(nics):
                rows.append((f"if.{i}.name", nic.name))
                if nic.hardware_address is not None:
                    rows.append((f"if.{i}.hwaddr", nic.hardware_address))
                rows.append((f"if.{i}.addr.count", len(nic.addresses)))
                for j, addr in enumerate(nic.addresses):
                    rows += [(f"if.{i}.addr.{j}.type", addr.type), (f"if.{i}.addr.{j}.addr", addr.address),
                             (f"if.{i}.addr.{j}.prefix", addr.prefix)]
    width = max((len(k) for k, _ in rows), default=0)
    ctx.say("\n".join(f"{key:<{width}} : {value}" for key, value in rows))


def _guestinfo_args(parser: argparse.ArgumentParser) -> None:
    _common(parser)
    parser.add_argument("--os", action="store_true", help="the guest's kernel and distribution")
    parser.add_argument("--hostname", action="store_true", help="the guest's host name")
    parser.add_argument("--filesystem", action="store_true", help="its mounted filesystems and their disks")
    parser.add_argument("--interface", action="store_true", help="its network interfaces and addresses")


# -- domfsfreeze, domfsthaw, domfsinfo ------------------------------------------------------------------


async def _domfsfreeze(ctx: Context, args: argparse.Namespace) -> None:
    async with ctx.connect() as conn:
        agent = (await ctx.domain(conn, args.domain)).agent
        count = await agent.fsfreeze(args.mountpoint or None, timeout=args.timeout)
    ctx.say(f"Froze {count} filesystem(s)")


def _domfsfreeze_args(parser: argparse.ArgumentParser) -> None:
    _common(parser)
    parser.add_argument("--mountpoint", metavar="PATH", action="append",
                        help="freeze the filesystem mounted here (repeatable; default: all)")


async def _domfsthaw(ctx: Context, args: argparse.Namespace) -> None:
    async with ctx.connect() as conn:
        count = await (await ctx.domain(conn, args.domain)).agent.fsthaw(timeout=args.timeout)
    ctx.say(f"Thawed {count} filesystem(s)")


async def _domfsinfo(ctx: Context, args: argparse.Namespace) -> None:
    from avirt.cli.output import table

    async with ctx.connect() as conn:
        filesystems = await (await ctx.domain(conn, args.domain)).agent.fs_info(timeout=args.timeout)
    ctx.say(table(("Mountpoint", "Name", "Type", "Target"),
                  [(fs.mountpoint, fs.name, fs.type, ",".join(d.dev or "-" for d in fs.disks))
                   for fs in filesystems]))


# -- domtime --------------------------------------------------------------------------------------------


async def _domtime(ctx: Context, args: argparse.Namespace) -> None:
    import time

    async with ctx.connect() as conn:
        agent = (await ctx.domain(conn, args.domain)).agent
        if args.now or args.sync or args.time is not None:
            ns = None if args.sync else time.time_ns() if args.now else int(args.time * 1e9)
            await agent.set_time(ns, timeout=args.timeout)
            return
        ns = await agent.time(timeout=args.timeout)
    ctx.say(f"Time: {ns // 1_000_000_000}" if not args.pretty else
            "Time: " + time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ns // 1_000_000_000)))


def _domtime_args(parser: argparse.ArgumentParser) -> None:
    _common(parser)
    change = parser.add_mutually_exclusive_group()
    change.add_argument("--now", action="store_true", help="set the guest's clock to this host's time")
    change.add_argument("--sync", action="store_true", help="set the guest's clock from its hardware clock")
    change.add_argument("--time", metavar="SECONDS", type=float, help="set it to SECONDS since the epoch")
    parser.add_argument("--pretty", action="store_true", help="print the time as a UTC date")


# -- qemu-agent-command ---------------------------------------------------------------------------------


async def _qemu_agent_command(ctx: Context, args: argparse.Namespace) -> None:
    text = " ".join(args.command)
    async with ctx.connect() as conn:
        result = await (await ctx.domain(conn, args.domain)).agent.command(text, timeout=args.timeout)
    answer = {"return": result}
    ctx.say(json.dumps(answer, indent=2) if args.pretty else json.dumps(answer, separators=(",", ":")))


def _qemu_agent_command_args(parser: argparse.ArgumentParser) -> None:
    _common(parser)
    parser.add_argument("command", metavar="CMD", nargs="+",
                        help='the command as JSON, e.g. \'{"execute": "guest-get-time"}\' (words are joined)')
    parser.add_argument("--pretty", action="store_true", help="indent the JSON answer")


COMMANDS = (
    Command("guestinfo", "Show what the guest agent reports: OS, host name, filesystems, interfaces",
            _guestinfo, _guestinfo_args, group=DOMAIN_MONITORING,
            details="Without a flag every group is shown; the flags pick groups. Needs the guest agent "
                    "(qemu-ga) in the running guest and the org.qemu.guest_agent.0 channel in its "
                    "definition.",
            example="avirt guestinfo web1 --os --filesystem"),
    Command("domfsinfo", "List the guest's mounted filesystems (through the guest agent)", _domfsinfo,
            _common, group=DOMAIN_MONITORING, example="avirt domfsinfo web1"),
    Command("domfsfreeze", "Freeze the guest's filesystems (through the guest agent)", _domfsfreeze,
            _domfsfreeze_args, group=DOMAIN_MANAGEMENT,
            details="Flushes and freezes every mounted filesystem (or those named with --mountpoint): the "
                    "guest's writes wait until domfsthaw. While frozen, the agent refuses everything but "
                    "ping, status and thaw.",
            example="avirt domfsfreeze web1\navirt domfsfreeze web1 --mountpoint /srv"),
    Command("domfsthaw", "Thaw the guest's frozen filesystems (through the guest agent)", _domfsthaw,
            _common, group=DOMAIN_MANAGEMENT, example="avirt domfsthaw web1"),
    Command("domtime", "Show or set the guest's clock (through the guest agent)", _domtime, _domtime_args,
            group=DOMAIN_MANAGEMENT, example="avirt domtime web1 --pretty\navirt domtime web1 --now"),
    Command("qemu-agent-command", "Send a raw command to the guest agent and print its JSON answer",
            _qemu_agent_command, _qemu_agent_command_args, group=DOMAIN_MANAGEMENT,
            details="An escape hatch, as qemu-monitor-command: avirt does not know what the command changes "
                    "in the guest.",
            example='avirt qemu-agent-command web1 \'{"execute": "guest-info"}\' --pretty'),
)
