"""The command line's parts, definition by definition: what each accepted item becomes in QEMU's argv.

The corpus test proves on real QEMU that every device exists; these pin down the options that QEMU would
accept either way but that change what the guest gets (a LUN passed through, huge pages, a password that
must never be on the command line).
"""

from __future__ import annotations

import json

import pytest

from avirt.config import parse_domain_xml
from avirt.drivers.qemu import virtiofs
from avirt.drivers.qemu.abi import MACHINE_ALIASES, stabilise
from avirt.drivers.qemu.cmdline import Layer, build_argv, startup_commands
from avirt.errors import UnsupportedError


def _argv(devices: str = "", extra: str = "") -> tuple[list[str], list[dict[str, object]]]:
    cfg = stabilise(parse_domain_xml(
        f"<domain type='qemu'><name>p</name><memory unit='MiB'>64</memory>{extra}"
        f"<os><type machine='q35'>hvm</type></os><devices>{devices}</devices></domain>"), MACHINE_ALIASES)
    chains = {d.target: [Layer(d.source, d.format)] for d in cfg.disks if d.source}
    argv = build_argv(cfg, chains=chains, accel="tcg", monitor="fd=3", pidfile="/r/pid", run_dir="/r")
    devices_json = [json.loads(argv[i + 1]) for i, a in enumerate(argv) if a == "-device"]
    return argv, devices_json


def test_a_lun_is_passed_through_as_scsi_block_on_the_host_device() -> None:
    argv, devices = _argv("<disk type='block' device='lun' rawio='yes'><driver name='qemu' type='raw'/>"
                          "<source dev='/dev/sdz'/><target dev='sda' bus='scsi'/></disk>")
    (lun,) = [d for d in devices if d.get("id") == "sda"]
    assert (lun["driver"], lun["bus"], lun["drive"]) == ("scsi-block", "scsi0.0", "sda-1")
    nodes = [json.loads(argv[i + 1]) for i, a in enumerate(argv) if a == "-blockdev"]
    assert {"driver": "host_device", "filename": "/dev/sdz"}.items() <= nodes[0].items()


def test_huge_pages_back_guest_ram_with_hugetlbfs() -> None:
    argv, _ = _argv(extra="<memoryBacking><hugepages/></memoryBacking>")
    assert "memory-backend-file,id=pc.ram,size=65536k,mem-path=/dev/hugepages" in argv
    assert any(a.startswith("pc-q35-7.2,") and "memory-backend=pc.ram" in a for a in argv)


def test_a_virtiofs_share_is_a_vhost_user_device_served_by_its_own_virtiofsd() -> None:
    share = ("<filesystem><driver type='virtiofs' queue='512'/><binary xattr='off'><cache mode='none'/>"
             "</binary><source dir='/srv/a,b'/><target dir='tag'/></filesystem>")
    shared = "<memoryBacking><source type='memfd'/><access mode='shared'/></memoryBacking>"
    argv, devices = _argv(share, shared)
    assert "socket,id=chr-vu-fs0,path=/r/fs0.sock" in argv
    (fs,) = [d for d in devices if d["driver"] == "vhost-user-fs-pci"]
    assert (fs["chardev"], fs["tag"], fs["queue-size"]) == ("chr-vu-fs0", "tag", 512)
    assert "memory-backend-memfd,id=pc.ram,size=65536k,share=on" in argv
    cfg = parse_domain_xml(f"<domain type='qemu'><name>p</name><memory>65536</memory>{shared}"
                           f"<os><type>hvm</type></os><devices>{share}</devices></domain>")
    # The listening socket is handed down (fd=N); fuse's option syntax keeps the comma in the path.
    assert virtiofs._argv(cfg.filesystems[0], "fd=7") == [
        virtiofs.DEFAULT_VIRTIOFSD, "--fd=7", "-o", "source=/srv/a\\,b,cache=none,no_xattr"]


def test_display_passwords_go_over_qmp_never_on_the_command_line() -> None:
    cfg = stabilise(parse_domain_xml(
        "<domain type='qemu'><name>p</name><memory>65536</memory><os><type>hvm</type></os><devices>"
        "<graphics type='vnc' passwd='s3cret'/></devices></domain>"), MACHINE_ALIASES)
    argv = build_argv(cfg, chains={}, accel="tcg", monitor="fd=3", pidfile="/r/pid", run_dir="/r")
    assert not any("s3cret" in a for a in argv)
    assert "127.0.0.1:0,to=99,password=on" in argv
    assert ("set_password", {"protocol": "vnc", "password": "s3cret"}) in startup_commands(cfg)


def test_io_limits_are_set_on_the_disk_before_the_guest_runs() -> None:
    cfg = stabilise(parse_domain_xml(
        "<domain type='qemu'><name>p</name><memory>65536</memory><os><type>hvm</type></os><devices>"
        "<disk><source file='/a'/><target dev='vda'/><iotune><total_bytes_sec>1000000</total_bytes_sec>"
        "<read_iops_sec>50</read_iops_sec></iotune></disk></devices></domain>"), MACHINE_ALIASES)
    ((command, args),) = startup_commands(cfg)
    assert command == "block_set_io_throttle"
    assert args["id"] == "/machine/peripheral/vda/virtio-backend"
    assert (args["bps"], args["iops_rd"], args["iops"]) == (1000000, 50, 0)


def test_every_device_is_json_and_buses_come_before_their_devices() -> None:
    argv, devices = _argv("<channel type='unix'><target type='virtio' name='org.qemu.guest_agent.0'/>"
                          "</channel><input type='tablet' bus='usb'/>")
    assert all(argv[i + 1].startswith("{") for i, a in enumerate(argv) if a == "-device")
    ids = [d.get("id") for d in devices]
    assert ids.index("virtio-serial0") < ids.index("channel0")
    assert ids.index("usb0") < ids.index("input0")
    (port,) = [d for d in devices if d.get("id") == "channel0"]
    assert (port["bus"], port["nr"], port["name"]) == ("virtio-serial0.0", 1, "org.qemu.guest_agent.0")
    assert "socket,id=charchannel0,path=/r/ch0.sock,server=on,wait=off" in argv


def test_a_file_console_appends_only_when_asked() -> None:
    kept, _ = _argv("<serial type='file'><source path='/logs/a.log' append='on'/></serial>")
    fresh, _ = _argv("<serial type='file'><source path='/logs/b.log'/></serial>")
    assert "file,id=serial0,path=/logs/a.log,append=on" in kept
    assert "file,id=serial0,path=/logs/b.log" in fresh
    xml = ("<domain type='qemu'><name>p</name><memory unit='MiB'>64</memory><os><type>hvm</type></os>"
           "<devices><serial type='pty'><source append='on'/></serial></devices></domain>")
    with pytest.raises(UnsupportedError, match=r"serial/source/@append"):
        parse_domain_xml(xml)
