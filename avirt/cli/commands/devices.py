"""Disks, NICs and vCPUs in and out of domains: ``attach-device``, ``detach-device``, ``attach-disk``,
``detach-disk``, ``change-media``, ``setvcpus``, on ``Domain.attach_device``, ``detach_device``,
``change_media`` and ``set_vcpus``.

Which definition changes, as virsh decides it: ``--live`` the running domain, ``--config`` the persistent
definition, ``--persistent`` both (the definition only, on a shut-off domain), and without a flag the
domain as it is now ("current": the running domain if it runs, else the definition).
"""

from __future__ import annotations

import argparse
from xml.sax.saxutils import quoteattr

from avirt.cli.command import (
    DOMAIN_MANAGEMENT,
    Command,
    CommandError,
    Context,
    add_domain_argument,
    add_which_arguments,
    read_xml,
    seconds,
    which_definitions,
)


async def _attach_device(ctx: Context, args: argparse.Namespace) -> None:
    xml, _ = await read_xml(args.file)
    async with ctx.connect() as conn:
        dom = await ctx.domain(conn, args.domain)
        live, config = await which_definitions(dom, args)
        await dom.attach_device(xml, live=live, config=config)
    ctx.say("Device attached successfully")


async def _detach_device(ctx: Context, args: argparse.Namespace) -> None:
    xml, _ = await read_xml(args.file)
    async with ctx.connect() as conn:
        dom = await ctx.domain(conn, args.domain)
        live, config = await which_definitions(dom, args)
        await dom.detach_device(xml, live=live, config=config, timeout=args.timeout)
    ctx.say("Device detached successfully")


def disk_xml(source: str, target: str, *, bus: str | None, device: str, fmt: str | None,
             readonly: bool) -> str:
    """The ``<disk>`` that ``attach-disk``'s arguments describe (virsh's defaults: the bus from the target's
    prefix, the format from the file name)."""
    bus = bus or {"vd": "virtio", "sd": "scsi", "hd": "ide", "fd": "fdc"}.get(target[:2], "virtio")
    fmt = fmt or ("qcow2" if source.endswith(".qcow2") else "raw")
    extra = "<readonly/>" if readonly or device == "cdrom" else ""
    return (f"<disk type='file' device='{device}'><driver name='qemu' type={quoteattr(fmt)}/>"
            f"<source file={quoteattr(source)}/><target dev={quoteattr(target)} bus={quoteattr(bus)}/>"
            f"{extra}</disk>")


async def _attach_disk(ctx: Context, args: argparse.Namespace) -> None:
    if args.driver not in (None, "qemu"):
        raise CommandError(f"--driver {args.driver}: avirt's disks have driver qemu")
    xml = disk_xml(args.source, args.target, bus=args.targetbus, device=args.type, fmt=args.subdriver,
                   readonly=args.mode == "readonly")
    async with ctx.connect() as conn:
        dom = await ctx.domain(conn, args.domain)
        live, config = await which_definitions(dom, args)
        await dom.attach_device(xml, live=live, config=config)
    ctx.say("Disk attached successfully")


async def _detach_disk(ctx: Context, args: argparse.Namespace) -> None:
    xml = f"<disk><target dev={quoteattr(args.target)}/></disk>"
    async with ctx.connect() as conn:
        dom = await ctx.domain(conn, args.domain)
        live, config = await which_definitions(dom, args)
        await dom.detach_device(xml, live=live, config=config, timeout=args.timeout)
    ctx.say("Disk detached successfully")


async def _change_media(ctx: Context, args: argparse.Namespace) -> None:
    if args.eject and args.source is not None:
        raise CommandError("--eject takes no SOURCE")
    if not args.eject and args.source is None:
        raise CommandError("SOURCE is needed to insert or update a medium (or --eject)")
    async with ctx.connect() as conn:
        dom = await ctx.domain(conn, args.domain)
        live, config = await which_definitions(dom, args)
        fmt = args.format or ("qcow2" if (args.source or "").endswith(".qcow2") else "raw")
        await dom.change_media(args.path, args.source, format=fmt, force=args.force, live=live, config=config)
    ctx.say("Successfully ejected media." if args.eject else
            "Successfully inserted media." if args.insert else "Successfully updated media.")


async def _setvcpus(ctx: Context, args: argparse.Namespace) -> None:
    async with ctx.connect() as conn:
        dom = await ctx.domain(conn, args.domain)
        live, config = await which_definitions(dom, args)
        await dom.set_vcpus(args.count, live=live, config=config, timeout=args.timeout)


def _setvcpus_args(parser: argparse.ArgumentParser) -> None:
    add_domain_argument(parser)
    parser.add_argument("count", metavar="COUNT", type=int, help="how many vCPUs are to be online")
    add_which_arguments(parser)
    parser.add_argument("--timeout", type=seconds, default=10.0, metavar="SECONDS",
                        help="how long the guest may take to release each vCPU removed (default 10)")


def _timeout(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--timeout", type=seconds, default=10.0, metavar="SECONDS",
                        help="how long the guest may take to release the device (default 10)")


def _device_args(parser: argparse.ArgumentParser) -> None:
    add_domain_argument(parser)
    parser.add_argument("file", metavar="FILE",
                        help="XML file with one <disk> or <interface> element, or - for standard input")
    add_which_arguments(parser)


def _detach_device_args(parser: argparse.ArgumentParser) -> None:
    _device_args(parser)
    _timeout(parser)


def _attach_disk_args(parser: argparse.ArgumentParser) -> None:
    add_domain_argument(parser)
    parser.add_argument("source", metavar="SOURCE", help="the image file")
    parser.add_argument("target", metavar="TARGET", help="the disk's target, e.g. vdb or sdb")
    parser.add_argument("--targetbus", choices=("virtio", "scsi", "usb", "sata", "ide", "fdc"),
                        help="the bus (default: from the target's prefix: vd virtio, sd scsi)")
    parser.add_argument("--driver", help="qemu (the only one)")
    parser.add_argument("--subdriver", choices=("qcow2", "raw"),
                        help="the image format (default: qcow2 for a .qcow2 file, else raw)")
    parser.add_argument("--type", choices=("disk", "cdrom", "floppy"), default="disk", help="the device")
    parser.add_argument("--mode", choices=("readonly",), help="readonly: the guest cannot write")
    add_which_arguments(parser)


def _detach_disk_args(parser: argparse.ArgumentParser) -> None:
    add_domain_argument(parser)
    parser.add_argument("target", metavar="TARGET", help="the disk's target, e.g. vdb")
    add_which_arguments(parser)
    _timeout(parser)


def _change_media_args(parser: argparse.ArgumentParser) -> None:
    add_domain_argument(parser)
    parser.add_argument("path", metavar="TARGET", help="the cdrom or floppy drive's target, e.g. sda")
    parser.add_argument("source", metavar="SOURCE", nargs="?", help="the image to insert")
    action = parser.add_mutually_exclusive_group()
    action.add_argument("--eject", action="store_true", help="remove the medium")
    action.add_argument("--insert", action="store_true", help="insert SOURCE into an empty drive")
    action.add_argument("--update", action="store_true", help="replace the medium with SOURCE (the default)")
    parser.add_argument("--format", choices=("raw", "qcow2"),
                        help="SOURCE's format (default: qcow2 for a .qcow2 file, else raw)")
    parser.add_argument("--force", action="store_true", help="open the tray even if the guest locked it")
    add_which_arguments(parser)


COMMANDS = (
    Command("attach-device", "Attach a disk or a NIC described by an XML file", _attach_device, _device_args,
            details="Virtio, SCSI and USB disks and <interface> NICs can be plugged into a running domain; "
                    "on q35 each PCI device needs a free pcie-root-port in the definition.",
            example="avirt attach-device web1 data.xml --persistent", group=DOMAIN_MANAGEMENT),
    Command("detach-device", "Detach the disk (by target or source) or NIC (by MAC) an XML file names",
            _detach_device,
            _detach_device_args,
            details="A PCI device leaves a running domain only when the guest lets it go: after --timeout "
                    "seconds the command fails, and the detach completes later if the guest agrees.",
            example="avirt detach-device web1 data.xml --live", group=DOMAIN_MANAGEMENT),
    Command("attach-disk", "Attach an image as a disk", _attach_disk, _attach_disk_args,
            example="avirt attach-disk web1 /var/lib/images/data.qcow2 vdb --persistent",
            group=DOMAIN_MANAGEMENT),
    Command("detach-disk", "Detach a disk by its target", _detach_disk, _detach_disk_args,
            example="avirt detach-disk web1 vdb --persistent", group=DOMAIN_MANAGEMENT),
    Command("change-media", "Insert, replace or eject the medium of a cdrom or floppy drive", _change_media,
            _change_media_args,
            example="avirt change-media web1 sda /isos/debian.iso --insert\n"
                    "avirt change-media web1 sda --eject",
            group=DOMAIN_MANAGEMENT),
    Command("setvcpus", "Change how many vCPUs are online", _setvcpus, _setvcpus_args,
            details="Up to the definition's <vcpu> count. A running guest gets vCPUs plugged in, or is "
                    "asked to let the last ones go (its OS must agree, within --timeout seconds); "
                    "--config sets the count for the next start.",
            example="avirt setvcpus web1 4 --live\navirt setvcpus web1 2 --config", group=DOMAIN_MANAGEMENT),
)
