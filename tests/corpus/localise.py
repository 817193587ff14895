"""A corpus definition made runnable here: fresh images and shared directories, user-mode NICs, TCG, this
machine's firmware.

The corpus records what other machines wrote, with their paths: images under /var/lib/libvirt, channel
sockets under /run/libvirt, their own networks. :func:`localise` keeps every device and setting and
replaces only those host resources, so a definition can start on any machine (the corpus start test and
bench/realguests.py both use it).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from lxml import etree


def localise(text: bytes, tmp: Path) -> str:
    """The definition with fresh images, user-mode NICs and TCG."""
    root = etree.fromstring(text)
    root.set("type", "qemu")
    root.find("name").text = "corpus"  # short: the run directory's socket paths have a length limit
    root.attrib.pop("id", None)
    emulator = root.find("devices/emulator")
    if emulator is not None:
        emulator.text = "qemu-system-x86_64"
    for i, disk in enumerate(root.iterfind("devices/disk")):
        source = disk.find("source")
        if source is None:
            continue
        fmt = disk.find("driver")
        fmt_name = "raw" if fmt is None else fmt.get("type", "raw")
        image = tmp / f"disk{i}.{fmt_name}"
        subprocess.run(["qemu-img", "create", "-q", "-f", fmt_name, str(image), "16M"], check=True)
        for attr in ("file", "dev", "index"):
            source.attrib.pop(attr, None)
        source.set("file", str(image))
        disk.set("type", "file")
        if disk.get("device") == "lun":  # a host SCSI LUN: the machine that wrote it had one
            disk.set("device", "disk")
            for attr in ("rawio", "sgio"):
                disk.attrib.pop(attr, None)
        for store in disk.findall("backingStore"):
            disk.remove(store)
    for nic in root.iterfind("devices/interface"):
        nic.set("type", "user")
        for tag in ("source", "target", "driver"):
            for child in nic.findall(tag):
                nic.remove(child)
    for i, source in enumerate(root.iterfind("devices/filesystem/source")):
        shared = tmp / f"share{i}"
        shared.mkdir(exist_ok=True)
        source.set("dir", str(shared))
    for source in root.iterfind("devices/channel/source"):
        source.attrib.pop("path", None)  # the corpus's machine's runtime directory: avirt picks its own
    vpindex = root.find("features/hyperv/vpindex")
    if vpindex is not None:  # the one enlightenment TCG cannot give (docs/domain-xml.md)
        vpindex.getparent().remove(vpindex)
    for tag in ("loader", "nvram"):  # the corpus names its own machine's firmware paths
        el = root.find(f"os/{tag}")
        if el is not None and el.text and not Path(el.text).exists():
            if tag == "nvram":
                el.text = str(tmp / "VARS.fd")
            else:
                root.find("os").remove(el)
                root.find("os").set("firmware", "efi")
    return etree.tostring(root, encoding="unicode")
