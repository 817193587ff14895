"""Domain XML for the tests, built from a few knobs so each test says only what matters to it."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from xml.sax.saxutils import quoteattr


@dataclass
class XMLFactory:
    default_type: str

    def __call__(
        self,
        name: str,
        *,
        type: str | None = None,
        machine: str = "q35",
        memory_mib: int = 64,
        disks: Sequence[tuple[str, str, str]] = (),  # (target, path, format)
        kernel: str | None = None,
        initrd: str | None = None,
        cmdline: str | None = None,
        serial_file: str | None = None,
        extra_devices: str = "",
        on_poweroff: str = "destroy",
    ) -> str:
        os_extra = ""
        if kernel:
            os_extra += f"<kernel>{kernel}</kernel>"
        if initrd:
            os_extra += f"<initrd>{initrd}</initrd>"
        if cmdline:
            os_extra += f"<cmdline>{cmdline}</cmdline>"
        devices = "".join(
            f"<disk type='file' device='disk'><driver name='qemu' type='{fmt}'/>"
            f"<source file={quoteattr(path)}/><target dev='{target}' bus='virtio'/></disk>"
            for target, path, fmt in disks
        )
        if serial_file:
            # append='on': a destination QEMU (a migration) goes on with the log instead of truncating it
            devices += f"<serial type='file'><source path={quoteattr(serial_file)} append='on'/></serial>"
        devices += extra_devices
        return f"""<domain type='{type or self.default_type}'>
  <name>{name}</name>
  <memory unit='MiB'>{memory_mib}</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='{machine}'>hvm</type>{os_extra}</os>
  <features><acpi/></features>
  <on_poweroff>{on_poweroff}</on_poweroff>
  <devices>{devices}</devices>
</domain>"""
