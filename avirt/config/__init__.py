"""Domain configuration: libvirt domain XML in, plain dataclasses out, and back.

    from avirt.config import parse_domain_xml, domain_to_xml

    cfg = parse_domain_xml(xml)          # DomainConfig; sizes in KiB, uuid generated if absent
    cfg.vcpus = 2                        # plain dataclasses: edit freely
    cfg.disk("vda").format               # look a disk up by target
    text = domain_to_xml(cfg)            # libvirt-style XML; parse_domain_xml(text) == cfg
    live = domain_to_xml(cfg, live_id=3, backing_chains={"vda": [("/img/base.qcow2", "qcow2")]})

Only a subset of libvirt's format is implemented; anything outside it raises ``UnsupportedError`` whose
``items`` are the offending XPaths (never silently dropped), and broken documents raise
``InvalidXMLError`` with a line number. See :mod:`avirt.config.parse` for the exact subset.
"""

from avirt.config.model import (
    CharDevice,
    CharType,
    Disk,
    DiskBus,
    DiskFormat,
    DiskType,
    DomainConfig,
    Graphics,
    GraphicsType,
    Interface,
    LifecycleAction,
    OSConfig,
)
from avirt.config.parse import parse_domain_xml
from avirt.config.serialize import domain_to_xml

__all__ = [
    "CharDevice",
    "CharType",
    "Disk",
    "DiskBus",
    "DiskFormat",
    "DiskType",
    "DomainConfig",
    "Graphics",
    "GraphicsType",
    "Interface",
    "LifecycleAction",
    "OSConfig",
    "domain_to_xml",
    "parse_domain_xml",
]
