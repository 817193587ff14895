"""``avirt domstats`` and ``avirt domblkstat``: virsh's statistics commands, on ``all_domain_stats()``.

``domstats`` prints one block per domain, as virsh does::

    Domain: 'web1'
      state.state=1
      state.reason=1
      cpu.time=1234567890
      ...

with a blank line between domains. A domain whose QEMU did not answer within ``--timeout`` shows
``stats.unresponsive=yes`` and only what could be given without it. ``domblkstat DOM DISK`` prints one
disk's counters with virsh's names (``rd_req``, ``wr_bytes``...).
"""

from __future__ import annotations

import argparse

from avirt.cli.command import DOMAIN_MONITORING, Command, Context, add_domain_argument, seconds

#: The group flags, virsh's spelling -> the API's group.
_FLAGS = {"state": "state", "cpu_total": "cpu-total", "balloon": "balloon", "vcpu": "vcpu",
          "interface": "interface", "block": "block"}
#: virDomainBlockStats' names -> virsh domblkstat's.
_VIRSH_NAMES = {"rd_operations": "rd_req", "rd_bytes": "rd_bytes", "wr_operations": "wr_req",
                "wr_bytes": "wr_bytes", "flush_operations": "flush_operations",
                "rd_total_times": "rd_total_times", "wr_total_times": "wr_total_times",
                "flush_total_times": "flush_total_times"}


def _value(value: object) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)


async def _domstats(ctx: Context, args: argparse.Namespace) -> None:
    groups = [group for flag, group in _FLAGS.items() if getattr(args, flag)] or None
    async with ctx.connect() as conn:
        domains = [await ctx.domain(conn, name) for name in args.domains] or None
        found = await conn.all_domain_stats(groups, domains, timeout=args.timeout)
    blocks = []
    for record in found:
        lines = [f"Domain: '{record.domain.name}'"]
        lines += [f"  {key}={_value(value)}" for key, value in record.params.items()]
        blocks.append("\n".join(lines))
    ctx.say("\n\n".join(blocks))


def _domstats_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("domains", metavar="DOMAIN", nargs="*",
                        help="the domains (name or UUID); every domain if none")
    parser.add_argument("--state", action="store_true", help="state and reason (libvirt's numbers)")
    parser.add_argument("--cpu-total", action="store_true", help="CPU time of the whole QEMU process")
    parser.add_argument("--balloon", action="store_true", help="current and maximum memory, KiB")
    parser.add_argument("--vcpu", action="store_true", help="vCPUs: count, state and time of each")
    parser.add_argument("--interface", action="store_true",
                        help="NICs: traffic counters of each tap, seen from the guest (net.*)")
    parser.add_argument("--block", action="store_true", help="disks: I/O counters and sizes")
    parser.add_argument("--timeout", type=seconds, default=5.0, metavar="SECONDS",
                        help="how long each domain may take to answer (default 5)")


async def _domblkstat(ctx: Context, args: argparse.Namespace) -> None:
    async with ctx.connect() as conn:
        dom = await ctx.domain(conn, args.domain)
        counters = await dom.block_stats(args.disk)
    ctx.say("\n".join(f"{args.disk} {virsh} {counters[name]}" for name, virsh in _VIRSH_NAMES.items()))


def _domblkstat_args(parser: argparse.ArgumentParser) -> None:
    add_domain_argument(parser)
    parser.add_argument("disk", metavar="DISK", help="the disk's target, e.g. vda")


COMMANDS = (
    Command("domstats", "Show statistics of domains (all, or those named)", _domstats, _domstats_args,
            details="Without a group flag every group is shown. Running domains are asked at once; a "
                    "shut-off domain shows only its state.",
            example="avirt domstats --block --vcpu web1 web2", group=DOMAIN_MONITORING),
    Command("domblkstat", "Show the I/O counters of one disk of a running domain", _domblkstat,
            _domblkstat_args, example="avirt domblkstat web1 vda", group=DOMAIN_MONITORING),
)
