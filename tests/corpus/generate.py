#!/usr/bin/env python3
"""Regenerate the corpus of real-world libvirt domain XML in tests/data/corpus/.

Each guest below is one ``virt-install --print-xml`` run against libvirt's test driver,
dressed up by virtinst's test URI hook as the QEMU 7.2 / libvirt 9.0 x86_64 host that
``capabilities.xml`` and ``domcapabilities.xml`` describe (storage pools with ISO images and
disk images, a network and two assignable host devices come from ``testnode.xml``). Nothing
is defined, created or started: virt-install only prints the domain XML it would hand to
libvirt. The hand-written ``dumpxml-*.xml`` files in the same directory are left alone.

Run from anywhere:  python3 tests/corpus/generate.py
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
OUTPUT = REPO / "tests" / "data" / "corpus"
README = "README.md"

# Files in the output directory that this script does not write and must never delete.
HAND_WRITTEN_PREFIX = "dumpxml-"

QEMU = "/usr/bin/qemu-system-x86_64"
QEMU_VERSION = 7002000  # 7.2.0, as libvirt encodes versions
LIBVIRT_VERSION = 9000000  # 9.0.0

# The test driver's pools report the free space of the file system this runs on; new disk
# images are never created (--print-xml), so their size need not fit.
CHECKS = ("--check", "disk_size=off")

# Suffix of the second document of a two-phase install (the definition after the installer reboots).
AFTER_INSTALL = "-after-install"

# Markers of the README section this script rewrites.
INDEX_BEGIN = "<!-- begin: written by tests/corpus/generate.py -->"
INDEX_END = "<!-- end: written by tests/corpus/generate.py -->"


@dataclass(frozen=True)
class Guest:
    """One corpus entry: output file name (without .xml), what it shows, virt-install arguments."""

    name: str
    summary: str
    command: str  # virt-install arguments after --name, in shell syntax

    @property
    def args(self) -> list[str]:
        return shlex.split(self.command)


ISO = "/isos"
IMG = "/var/lib/libvirt/images"
VIRTIO_WIN = f"--disk path={ISO}/virtio-win-0.1.229.iso,device=cdrom"
AGENT = "--channel unix,target.type=virtio,name=org.qemu.guest_agent.0"
NAT = "--network network=default"
SERIAL_ONLY = "--graphics none --console pty,target.type=serial"

GUESTS: tuple[Guest, ...] = (
    # Linux distributions, installed from an ISO or imported from a cloud image.
    Guest("fedora37-q35-cdrom-spice",
          "Fedora 37 DVD install on q35 with virt-install's defaults "
          "(spice, virtio-gpu, qemu-xhci, 14 pcie-root-ports)",
          f"--osinfo fedora37 --memory 2048 --vcpus 2 --cdrom {ISO}/Fedora-Server-dvd-x86_64-37-1.7.iso "
          f"--disk size=20 {NAT} --graphics spice"),
    Guest("rhel9.0-import-host-passthrough-vnc",
          "RHEL 9.0 KVM guest image imported, host-passthrough CPU, VNC on all addresses, guest agent",
          f"--osinfo rhel9.0 --memory 4096 --vcpus 4 --import "
          f"--disk {IMG}/rhel-9.0-x86_64-kvm.qcow2,bus=virtio --cpu host-passthrough "
          f"--graphics vnc,listen=0.0.0.0 {NAT} {AGENT}"),
    Guest("rhel8.6-uefi-tuned-disk",
          "RHEL 8.6 with --boot uefi (firmware autoselection), host-model CPU, a tuned raw-I/O disk",
          f"--osinfo rhel8.6 --memory 4096 --vcpus 2 --boot uefi --cdrom {ISO}/rhel-8.6-x86_64-dvd.iso "
          f"--disk size=40,cache=none,io=native,discard=unmap,detect_zeroes=unmap --cpu host-model {NAT}"),
    Guest("rhel7.9-i440fx-ide-cdrom",
          "RHEL 7.9 on the i440fx 'pc' machine: IDE CD-ROM, virtio disk, VGA video, VNC",
          f"--osinfo rhel7.9 --machine pc --memory 2048 --vcpus 2 "
          f"--cdrom {ISO}/rhel-server-7.9-x86_64-dvd.iso --disk size=20 {NAT} --graphics vnc --video vga"),
    Guest("centos7-import-headless-bridge",
          "CentOS 7 cloud image, no graphics (serial console), bridged to br0",
          f"--osinfo centos7 --memory 1024 --vcpus 1 --import "
          f"--disk {IMG}/CentOS-7-x86_64-GenericCloud-2211.qcow2 {SERIAL_ONLY} --network bridge=br0"),
    Guest("centos-stream9-uefi-secureboot-tpm",
          "CentOS Stream 9, firmware autoselection asking for secure-boot and enrolled keys, emulated TPM",
          "--osinfo centos-stream9 --memory 4096 --vcpus 2 "
          "--boot uefi,firmware.feature0.name=secure-boot,firmware.feature0.enabled=yes,"
          "firmware.feature1.name=enrolled-keys,firmware.feature1.enabled=yes "
          f"--cdrom {ISO}/CentOS-Stream-9-latest-x86_64-dvd1.iso --disk size=30 --tpm emulator {NAT}"),
    Guest("debian11-netinst-vnc-qxl",
          "Debian 11 netinst ISO, VNC with a password on localhost, QXL video",
          f"--osinfo debian11 --memory 1024 --vcpus 1 --cdrom {ISO}/debian-11.6.0-amd64-netinst.iso "
          f"--disk size=10 {NAT} --graphics vnc,listen=127.0.0.1,password=s3cr3t --video qxl"),
    Guest("ubuntu22.04-cloudimg-user-net",
          "Ubuntu 22.04 cloud image imported, user-mode (SLIRP) networking, serial console only",
          f"--osinfo ubuntu22.04 --memory 2048 --vcpus 2 --import "
          f"--disk {IMG}/jammy-server-cloudimg-amd64.img,bus=virtio --network user {SERIAL_ONLY}"),
    Guest("ubuntu20.04-sata-e1000e",
          "Ubuntu 20.04 live server ISO, SATA system disk, e1000e NIC, bochs video",
          f"--osinfo ubuntu20.04 --memory 2048 --vcpus 2 --cdrom {ISO}/ubuntu-20.04.5-live-server-amd64.iso "
          "--disk size=25,bus=sata --network network=default,model=e1000e --graphics vnc --video bochs"),
    Guest("opensuse15.4-jeos-import",
          "openSUSE Leap 15.4 JeOS image imported, virtio video, USB tablet and virtio keyboard",
          f"--osinfo opensuse15.4 --memory 1024 --vcpus 2 --import "
          f"--disk {IMG}/openSUSE-Leap-15.4-JeOS.x86_64-kvm-and-xen.qcow2 {NAT} --video virtio "
          "--input tablet --input keyboard,bus=virtio"),
    Guest("freebsd13.1-import",
          "FreeBSD 13.1 VM image imported, VNC",
          f"--osinfo freebsd13.1 --memory 2048 --vcpus 2 --import "
          f"--disk {IMG}/FreeBSD-13.1-RELEASE-amd64.qcow2 {NAT} --graphics vnc"),
    Guest("generic-i440fx-legacy",
          "An unknown OS ('generic'): the default machine pc-i440fx-7.2, IDE disk, e1000, ICH9 USB 2, "
          "QXL, no virtio devices",
          f"--osinfo generic --memory 512 --vcpus 1 --import --disk {IMG}/legacy-app.raw {NAT}"),
    Guest("linux2022-debian12-cloud",
          "Debian 12 cloud image with the generic linux2022 OS entry, "
          "4 vCPUs as 1 socket x 2 cores x 2 threads",
          f"--osinfo linux2022 --memory 2048 --vcpus 4,sockets=1,cores=2,threads=2 --import "
          f"--disk {IMG}/debian-12-genericcloud-amd64.qcow2 {NAT} {SERIAL_ONLY} {AGENT}"),
    Guest("linux2020-pxe",
          "Network (PXE) install of a linux2020 guest: boot from the NIC, new blank disk",
          f"--osinfo linux2020 --memory 2048 --vcpus 2 --pxe --disk size=16 {NAT}"),
    # Windows.
    Guest("win10-q35-bios-virtio-win",
          "Windows 10 on q35 with BIOS, the virtio-win driver ISO as a second CD-ROM, Hyper-V "
          "enlightenments including a vendor_id set through --xml",
          f"--osinfo win10 --memory 4096 --vcpus 2 --cdrom {ISO}/Win10_22H2_English_x64.iso {VIRTIO_WIN} "
          f"--disk size=64 {NAT} --features hyperv.synic.state=on,hyperv.reset.state=on "
          "--xml ./features/hyperv/vendor_id/@state=on "
          "--xml ./features/hyperv/vendor_id/@value=KVMKVMKVMKVM"),
    Guest("win11-uefi-tpm",
          "Windows 11: virt-install picks UEFI and adds a TPM 2.0 (tpm-crb) on its own",
          f"--osinfo win11 --memory 8192 --vcpus 4 --cdrom {ISO}/Win11_22H2_English_x64v1.iso "
          f"--disk size=80 {NAT}"),
    Guest("win2k22-virtio-scsi-hyperv",
          "Windows Server 2022 on virtio-scsi with extra Hyper-V enlightenments and a hidden KVM signature",
          f"--osinfo win2k22 --memory 8192 --vcpus 4,sockets=1,cores=4,threads=1 "
          f"--cdrom {ISO}/SERVER_EVAL_x64FRE_en-us.iso {VIRTIO_WIN} "
          "--controller type=scsi,model=virtio-scsi --disk size=60,bus=scsi,cache=none,discard=unmap "
          "--features kvm_hidden=on,hyperv.synic.state=on,hyperv.reset.state=on "
          "--clock offset=localtime,hypervclock_present=yes "
          "--network network=default,model=virtio --video qxl"),
    Guest("win2k19-i440fx-watchdog-sound",
          "Windows Server 2019 on the i440fx machine with an i6300esb watchdog, AC97 sound, a virtio "
          "balloon and a USB tablet",
          f"--osinfo win2k19 --machine pc --memory 4096 --vcpus 2 "
          f"--cdrom {ISO}/17763.737.190906-2324.rs5_release_svc_refresh_SERVER_EVAL_x64FRE_en-us_1.iso "
          f"--disk size=60 {NAT} --watchdog i6300esb,action=reset --sound ac97 --memballoon virtio "
          "--input tablet,bus=usb"),
    # CPU models and topology.
    Guest("cpu-host-model",
          "mode='host-model' CPU",
          "--osinfo linux2022 --memory 1024 --import --disk size=8 --cpu host-model"),
    Guest("cpu-maximum",
          "mode='maximum' CPU (everything QEMU/KVM can offer)",
          "--osinfo linux2022 --memory 1024 --import --disk size=8 --cpu mode=maximum"),
    Guest("cpu-custom-skylake-vmx",
          "A named CPU model with features forced on and off "
          "(virt-install adds the host's security features)",
          "--osinfo linux2022 --memory 1024 --import --disk size=8 --cpu Skylake-Client,+vmx,-hle"),
    Guest("cpu-numa-two-cells",
          "Two guest NUMA cells, pinned vCPUs and an emulator pin",
          "--osinfo rhel9.0 --memory 4096 --vcpus 4 --import --disk size=20 "
          "--cpu host-passthrough,cell0.id=0,cell0.cpus=0-1,cell0.memory=2097152,"
          "cell1.id=1,cell1.cpus=2-3,cell1.memory=2097152 "
          "--cputune vcpupin0.vcpu=0,vcpupin0.cpuset=0,vcpupin1.vcpu=1,vcpupin1.cpuset=0,"
          "vcpupin2.vcpu=2,vcpupin2.cpuset=1,vcpupin3.vcpu=3,vcpupin3.cpuset=1,emulatorpin.cpuset=0-1"),
    # Storage.
    Guest("disks-every-bus",
          "One disk on each bus virt-install offers on q35: virtio, sata, scsi (adds virtio-scsi) and usb",
          f"--osinfo fedora37 --memory 2048 --import --disk size=20,bus=virtio "
          f"--disk {IMG}/data-sata.qcow2,size=5,bus=sata --disk {IMG}/data-scsi.qcow2,size=5,bus=scsi "
          f"--disk {IMG}/data-usb.raw,size=1,format=raw,bus=usb,removable=on {NAT}"),
    Guest("disks-i440fx-ide",
          "i440fx guest with IDE disks and an IDE CD-ROM",
          f"--osinfo centos7 --machine pc --memory 1024 --import --disk size=10,bus=ide "
          f"--disk {IMG}/data-ide.qcow2,size=4,bus=ide "
          f"--disk path={ISO}/rhel-server-7.9-x86_64-dvd.iso,device=cdrom,bus=ide {NAT}"),
    Guest("disks-iothreads",
          "Two iothreads, each serving one virtio disk, one disk with cache=none,io=native",
          "--osinfo rhel9.0 --memory 4096 --vcpus 4 --iothreads 2 --import --disk size=20,driver.iothread=1 "
          f"--disk {IMG}/db-data.qcow2,size=100,driver.iothread=2,cache=none,io=native,discard=unmap {NAT}"),
    Guest("disks-shared-readonly-serial",
          "A shareable raw disk for a cluster, a read-only disk and disks with serial numbers",
          "--osinfo rhel8.6 --memory 2048 --import --disk size=20,serial=SYS-0001 "
          f"--disk {IMG}/cluster-shared.raw,shareable=on,cache=none,bus=scsi "
          f"--disk {IMG}/legacy-app.raw,readonly=on,serial=RO-LEGACY {NAT}"),
    Guest("disks-boot-order",
          "Per-device boot order: CD-ROM first, then the disk, then the NIC",
          "--osinfo debian11 --memory 1024 --import --disk size=10,boot.order=2 "
          f"--disk path={ISO}/debian-11.6.0-amd64-netinst.iso,device=cdrom,boot.order=1 "
          "--network network=default,boot.order=3"),
    Guest("disks-iotune",
          "Disk I/O throttling and a disk with an explicit target name and error policy",
          "--osinfo ubuntu22.04 --memory 2048 --import --disk size=20,target.dev=vda "
          f"--disk {IMG}/logs.qcow2,size=50,target.dev=vdb,driver.error_policy=stop,"
          f"iotune.total_iops_sec=500,iotune.total_bytes_sec=52428800 {NAT}"),
    Guest("disks-lvm-block-lun",
          "Block devices: two LVM logical volumes (virt-install adds cache=none,io=native) and a "
          "multipath LUN passed through on virtio-scsi",
          f"--osinfo rhel9.0 --memory 4096 --import --disk /dev/vg0/web01-root --disk /dev/vg0/web01-data "
          f"--disk path=/dev/mapper/mpatha,device=lun,bus=scsi,rawio=yes {NAT}"),
    Guest("disks-ceph-rbd",
          "A Ceph RBD network disk next to a local system disk",
          "--osinfo ubuntu22.04 --memory 2048 --import --disk size=20 "
          "--disk source.protocol=rbd,source.name=libvirt-pool/web01-data,"
          "source.host0.name=ceph-mon1.example.com,source.host0.port=6789,bus=virtio,cache=writeback "
          f"{NAT}"),
    # Firmware.
    Guest("uefi-explicit-loader-secboot",
          "UEFI spelled out: the secure-boot OVMF image, an NVRAM template with Microsoft keys, SMM on",
          "--osinfo linux2022 --memory 2048 --import --disk size=10 "
          "--boot loader=/usr/share/OVMF/OVMF_CODE_4M.secboot.fd,loader.readonly=yes,loader.type=pflash,"
          "loader.secure=yes,nvram.template=/usr/share/OVMF/OVMF_VARS_4M.ms.fd "
          f"--features smm.state=on {NAT}"),
    Guest("uefi-i440fx-no-secureboot",
          "UEFI without secure boot on the i440fx machine",
          "--osinfo ubuntu22.04 --machine pc --memory 2048 --import --disk size=10 "
          f"--boot loader=/usr/share/OVMF/OVMF_CODE_4M.fd,loader.readonly=yes,loader.type=pflash {NAT}"),
    # Networking.
    Guest("net-none",
          "No network interface at all",
          "--osinfo linux2022 --memory 1024 --import --disk size=8 --network none"),
    Guest("net-multi-nic",
          "Three NICs: NAT network, a bridge with e1000e, a macvtap direct link; fixed MACs",
          "--osinfo rhel9.0 --memory 2048 --import --disk size=10 "
          "--network network=default,model=virtio,mac=52:54:00:6b:3c:01 "
          "--network bridge=br0,model=e1000e,mac=52:54:00:6b:3c:02 "
          "--network type=direct,source=eno1,source.mode=bridge,model=virtio,mac=52:54:00:6b:3c:03"),
    Guest("net-vhost-queues-mtu",
          "virtio-net with the vhost backend, 4 queues and MTU 9000 on a bridge",
          "--osinfo rhel9.0 --memory 2048 --vcpus 4 --import --disk size=10 "
          "--network bridge=br0,model=virtio,driver.name=vhost,driver.queues=4,mtu.size=9000,"
          "mac=52:54:00:1f:aa:10"),
    # Other devices and domain settings.
    Guest("devices-rng-tpm-watchdog-balloon",
          "RNG from /dev/urandom, TPM (tpm-tis, emulator), watchdog, virtio balloon, panic device, vsock",
          "--osinfo fedora37 --memory 2048 --import --disk size=10 --rng /dev/urandom "
          "--tpm emulator,model=tpm-tis --watchdog i6300esb,action=reset --memballoon virtio "
          f"--panic default --vsock cid.auto=yes {NAT}"),
    Guest("devices-serial-console-channels",
          "Serial ports and channels: a pty serial, a TCP telnet serial, guest agent and spice vdagent",
          "--osinfo fedora37 --memory 2048 --import --disk size=10 --serial pty "
          f"--serial tcp,host=127.0.0.1:4555,mode=bind,protocol.type=telnet {AGENT} --channel spicevmc "
          f"--graphics spice {NAT}"),
    Guest("devices-virtiofs-share",
          "A host directory shared with virtiofs (needs shared memfd memory backing)",
          "--osinfo fedora37 --memory 2048 --import --disk size=10 "
          "--memorybacking source.type=memfd,access.mode=shared "
          f"--filesystem /srv/share,hostshare,driver.type=virtiofs {NAT}"),
    Guest("devices-hostdev-pci-usb",
          "PCI (10GbE NIC) and USB (security key) host device assignment",
          "--osinfo rhel9.0 --memory 4096 --import --disk size=10 "
          "--hostdev pci_0000_01_00_0 --hostdev usb_1_3 --network none"),
    Guest("graphics-spice-gl-audio",
          "SPICE listening on none with OpenGL, virtio-gpu with 3D, ICH9 sound, USB redirection",
          "--osinfo fedora37 --memory 4096 --import --disk size=20 "
          "--graphics spice,listen=none,gl.enable=yes,rendernode=/dev/dri/renderD128 "
          f"--video virtio,accel3d=yes --sound ich9 --redirdev usb,type=spicevmc {NAT}"),
    Guest("clock-sysinfo-events",
          "Clock timers, an SMBIOS sysinfo block, lifecycle actions, metadata title/description",
          "--osinfo rhel8.6 --memory 2048 --import --disk size=10 "
          "--clock offset=utc,rtc_tickpolicy=catchup,pit_tickpolicy=delay,hpet_present=no,"
          "kvmclock_present=yes "
          "--sysinfo 'smbios,bios.vendor=Acme BIOS,bios.version=1.4.2,system.manufacturer=Acme Corp,"
          "system.product=Acme Virtual Server,system.version=2023.1,system.serial=ACM-00421,"
          "baseBoard.manufacturer=Acme Corp,baseBoard.product=VB-100,chassis.asset=IT-004217' "
          "--events on_poweroff=destroy,on_reboot=restart,on_crash=coredump-restart "
          "--metadata 'title=Billing database,description=Primary PostgreSQL for billing' "
          f"{NAT}"),
    Guest("memory-hugepages-max",
          "Huge page backed memory, currentMemory below memory, 4 of 8 vCPUs online",
          "--osinfo rhel9.0 --memory memory=8192,currentMemory=4096 --vcpus 4,maxvcpus=8 "
          f"--memorybacking hugepages=on --import --disk size=20 {NAT}"),
    Guest("features-pmu-smm-vmport",
          "Explicit <features>: PMU off, SMM on, vmport off, KVM hint-dedicated and poll-control",
          "--osinfo linux2022 --memory 2048 --vcpus 2 --import --disk size=10 "
          "--features pmu.state=off,smm.state=on,vmport.state=off,kvm.hint-dedicated.state=on,"
          f"kvm.poll-control.state=on --cpu host-passthrough {NAT}"),
)


def test_uri() -> str:
    """virtinst's MagicURI: the test driver disguised as this QEMU/KVM host."""
    opts = [
        "predictable",
        "fakeuri=qemu:///system",
        f"connver={QEMU_VERSION}",
        f"libver={LIBVIRT_VERSION}",
        f"caps={HERE / 'capabilities.xml'}",
        f"domcaps={HERE / 'domcapabilities.xml'}",
    ]
    return f"__virtinst_test__test://{HERE / 'testnode.xml'}," + ",".join(opts)


# Where the test driver could show through in virt-install's output, and what a QEMU host has instead.
LEAKS: tuple[tuple[str, str], ...] = (
    ('<domain type="test"', '<domain type="kvm"'),
    ("/usr/bin/test-hv", QEMU),
)


def postprocess(xml: str) -> tuple[str, list[str]]:
    """Replace traces of the test driver; returns the new text and what was replaced."""
    fixed: list[str] = []
    for old, new in LEAKS:
        count = xml.count(old)
        if count:
            xml = xml.replace(old, new)
            fixed.append(f"{old} -> {new} ({count}x)")
    return xml, fixed


def split_documents(output: str) -> list[str]:
    """--print-xml prints one <domain> per install phase; return them in order."""
    return [m.group(0) + "\n" for m in re.finditer(r"<domain\b.*?</domain>", output, re.S)]


def run_virt_install(virt_install: str, guest: Guest) -> list[str]:
    """The domain XML documents virt-install prints: one, or two for a guest installed from media."""
    cmd = [virt_install, "--connect", test_uri(), "--print-xml", *CHECKS, "--name", guest.name, *guest.args]
    env = dict(os.environ, LC_ALL="C", LANG="C")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"virt-install failed for {guest.name}:\n{proc.stderr.strip()}")
    docs = split_documents(proc.stdout)
    if not 1 <= len(docs) <= 2:
        raise RuntimeError(f"virt-install printed {len(docs)} <domain> documents for {guest.name}")
    return docs


def index(rows: list[tuple[Guest, list[str], list[str]]]) -> str:
    """The README section listing every generated file and the command that produced it."""
    out = [
        INDEX_BEGIN,
        "",
        "| File | What it shows | virt-install arguments (after `--print-xml --name NAME`) |",
        "|---|---|---|",
    ]
    fixes: list[str] = []
    for guest, files, fixed in rows:
        names = "<br>".join(f"`{name}`" for name in files)
        command = guest.command.replace("|", "\\|")
        out.append(f"| {names} | {guest.summary} | `{command}` |")
        fixes += [f"`{guest.name}`: {fix}" for fix in fixed]
    out += ["", "Files post-processed in the last run: " + ("; ".join(fixes) if fixes else "none") + ".", ""]
    return "\n".join([*out, INDEX_END])


def update_readme(path: Path, section: str) -> bool:
    if not path.exists():
        return False
    text = path.read_text()
    begin, end = text.find(INDEX_BEGIN), text.find(INDEX_END)
    if begin < 0 or end < begin:
        return False
    path.write_text(text[:begin] + section + text[end + len(INDEX_END) :])
    return True


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--output", type=Path, default=OUTPUT, help="directory for the XML files")
    options = parser.parse_args()

    virt_install = shutil.which("virt-install")
    if virt_install is None:
        sys.stderr.write("virt-install not found (Debian/Ubuntu package 'virtinst')\n")
        return 1

    names = [guest.name for guest in GUESTS]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        sys.stderr.write(f"duplicate corpus names: {duplicates}\n")
        return 1

    output: Path = options.output
    output.mkdir(parents=True, exist_ok=True)
    wanted = {f"{name}{suffix}.xml" for name in names for suffix in ("", AFTER_INSTALL)}
    for stale in sorted(output.glob("*.xml")):
        if stale.name not in wanted and not stale.name.startswith(HAND_WRITTEN_PREFIX):
            stale.unlink()

    failures = 0
    rows: list[tuple[Guest, list[str], list[str]]] = []
    for guest in GUESTS:
        try:
            docs = run_virt_install(virt_install, guest)
        except RuntimeError as error:
            sys.stderr.write(f"{error}\n")
            failures += 1
            continue
        files = [f"{guest.name}.xml", f"{guest.name}{AFTER_INSTALL}.xml"][: len(docs)]
        all_fixed: list[str] = []
        for file, doc in zip(files, docs, strict=True):
            xml, fixed = postprocess(doc)
            ET.fromstring(xml)  # well-formed, or raise
            (output / file).write_text(xml)
            all_fixed += fixed
            print(file + (f" (post-processed: {'; '.join(fixed)})" if fixed else ""))
        rows.append((guest, files, all_fixed))

    for path in sorted(output.glob(f"{HAND_WRITTEN_PREFIX}*.xml")):
        ET.parse(path)  # the hand-written files must stay well-formed too

    if failures:
        return 1
    if not update_readme(output / README, index(rows)):
        sys.stderr.write(f"{output / README}: no section marked {INDEX_BEGIN!r}; not updated\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
