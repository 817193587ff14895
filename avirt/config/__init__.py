"""Domain configuration: libvirt domain XML in, plain dataclasses out, and back.

    from avirt.config import parse_domain_xml, domain_to_xml

    cfg = parse_domain_xml(xml)          # DomainConfig; sizes in KiB, uuid generated if absent
    cfg.vcpus = 2                        # plain dataclasses: edit freely
    cfg.disk("vda").format               # look a disk up by target
    text = domain_to_xml(cfg)            # libvirt-style XML; parse_domain_xml(text) == cfg
    live = domain_to_xml(cfg, live_id=3, backing_chains={"vda": [("/img/base.qcow2", "qcow2")]})

The vocabulary is libvirt's, for the part avirt implements; anything outside it raises
``UnsupportedError`` whose ``items`` are the offending XPaths (never silently dropped), and broken
documents raise ``InvalidXMLError`` with a line number. ``tables.py`` says, element by element, what is
accepted; ``schema.py`` is the small engine that reads and writes by those tables.
"""

from avirt.config.devices import (
    RNG,
    TPM,
    Address,
    Audio,
    CharDevice,
    CharType,
    Controller,
    Disk,
    DiskBus,
    DiskFormat,
    DiskType,
    Filesystem,
    Graphics,
    GraphicsType,
    Input,
    Interface,
    IoTune,
    MemBalloon,
    Panic,
    RedirDev,
    Sound,
    Video,
    Vsock,
    Watchdog,
)
from avirt.config.model import (
    CPU,
    CPUTune,
    CrashAction,
    DomainConfig,
    Features,
    LifecycleAction,
    MemoryBacking,
    NUMACell,
    OSConfig,
)
from avirt.config.parse import parse_domain_xml
from avirt.config.serialize import domain_to_xml

__all__ = [
    "CPU",
    "RNG",
    "TPM",
    "Address",
    "Audio",
    "CPUTune",
    "CharDevice",
    "CharType",
    "Controller",
    "CrashAction",
    "Disk",
    "DiskBus",
    "DiskFormat",
    "DiskType",
    "DomainConfig",
    "Features",
    "Filesystem",
    "Graphics",
    "GraphicsType",
    "Input",
    "Interface",
    "IoTune",
    "LifecycleAction",
    "MemBalloon",
    "MemoryBacking",
    "NUMACell",
    "OSConfig",
    "Panic",
    "RedirDev",
    "Sound",
    "Video",
    "Vsock",
    "Watchdog",
    "domain_to_xml",
    "parse_domain_xml",
]
