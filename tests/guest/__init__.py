"""The avirt test guest: a Debian kernel + busybox initramfs for tests that boot a real guest.

:func:`build_guest` builds (or finds in its cache) the kernel and initrd; see ``build.py`` for the
cache, the serial markers and the kernel command line knobs. :func:`qemu_argv_for_guest` gives a
bare QEMU command line for checks that don't go through avirt (``check_guest.py``).
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .build import GuestBuildError, GuestImages, build_guest, default_cache_root

_LAZY = {"GuestBuildError", "GuestImages", "build_guest", "default_cache_root"}


def __getattr__(name: str) -> Any:
    """Import ``.build`` on first use (PEP 562).

    Importing it eagerly here would make ``python -m tests.guest.build`` warn that the module was
    already in sys.modules before runpy executed it as ``__main__``.
    """
    if name in _LAZY:
        return getattr(importlib.import_module(".build", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

__all__ = [
    "BASE_CMDLINE",
    "GuestBuildError",
    "GuestImages",
    "build_guest",
    "default_cache_root",
    "qemu_argv_for_guest",
]

#: console=ttyS0 carries /init's markers; quiet keeps kernel chatter off it (a panic still shows);
#: panic=-1 turns a panic into an immediate reboot, which -no-reboot turns into QEMU exiting.
BASE_CMDLINE = "console=ttyS0 quiet panic=-1"


def qemu_argv_for_guest(
    images: GuestImages,
    *,
    extra_cmdline: str = "",
    disk: Path | None = None,
    disk_format: str = "qcow2",
    serial: Path | None = None,
    memory_mib: int = 256,
    qemu: str = "qemu-system-x86_64",
) -> list[str]:
    """A bare ``qemu-system-x86_64`` argv that boots the test guest under TCG.

    TCG, because /dev/kvm on the development machines is a PVM shadow-paging hypervisor that starts
    QEMU but cannot boot Linux. ``-m 256``: 64 MiB does not boot, anything
    from 128 MiB boots in the same time. The serial port goes to stdout unless ``serial`` names a
    file. ``disk`` becomes a virtio-blk-pci device (``/dev/vda`` in the guest) on a ``-blockdev``
    node named ``vda``; the JSON form of ``-blockdev`` needs no comma escaping of the path.
    ``extra_cmdline`` is appended to :data:`BASE_CMDLINE`, e.g.
    ``"avirt.workload=write avirt.slots=4 avirt.count=8 avirt.sleep=0"``.

    The caller adds its own monitor (``-qmp``/``-chardev``+``-mon``) and options such as ``-S``.
    """
    if memory_mib < 128:
        raise ValueError(f"the test guest needs at least 128 MiB of RAM, not {memory_mib}")
    cmdline = f"{BASE_CMDLINE} {extra_cmdline}".strip()
    argv = [
        qemu,
        "-nodefaults",
        "-no-user-config",
        "-display", "none",
        "-machine", "q35",
        "-accel", "tcg",
        "-m", str(memory_mib),
        "-serial", f"file:{serial}" if serial is not None else "stdio",
        "-kernel", str(images.kernel),
        "-initrd", str(images.initrd),
        "-append", cmdline,
        "-no-reboot",
    ]
    if disk is not None:
        node = {
            "driver": disk_format,
            "node-name": "vda",
            "file": {"driver": "file", "filename": str(Path(disk).absolute())},
        }
        argv += ["-blockdev", json.dumps(node), "-device", "virtio-blk-pci,drive=vda,id=vda0"]
    return argv
