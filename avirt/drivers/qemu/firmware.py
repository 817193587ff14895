"""UEFI firmware: which OVMF files a domain boots with, and its own copy of the UEFI variables.

``<os firmware='efi'>`` asks avirt to choose, as libvirt does; the choice is written into the definition
at define time (``<loader>`` and ``<nvram>``), so a later change of the host's defaults does not change
the guest's firmware. The files are Debian's ``ovmf`` package: the 4 MiB builds, with Secure Boot
(``OVMF_CODE_4M.secboot.fd`` and variables with Microsoft's keys enrolled) when the definition asks for
the ``secure-boot`` feature, which also needs SMM (``machine.py`` turns it on).

The variables file is the domain's own: made from the template on the first start, kept across
restarts (the guest writes its boot entries there), at ``<state_dir>/nvram/<name>_VARS.fd``, and left
in place by ``undefine``, as libvirt leaves it.
"""

from __future__ import annotations

import os

from avirt.config.model import NVRAM, DomainConfig, Loader
from avirt.errors import DomainStartError
from avirt.hosts.base import Host

__all__ = ["OVMF_DIR", "choose", "prepare"]

OVMF_DIR = "/usr/share/OVMF"


def choose(cfg: DomainConfig, nvram_path: str) -> None:
    """Fill in ``<loader>`` and ``<nvram>`` for ``firmware='efi'`` where the definition left them out."""
    if cfg.os.firmware != "efi" and (cfg.os.loader is None or cfg.os.loader.type == "rom"):
        return
    secure = any(f.name == "secure-boot" and f.enabled == "yes" for f in cfg.os.firmware_features) or (
        cfg.os.loader is not None and cfg.os.loader.secure == "yes")
    enrolled = secure and not any(f.name == "enrolled-keys" and f.enabled == "no"
                                  for f in cfg.os.firmware_features)
    if secure and cfg.features.smm is None:
        cfg.features.smm = "on"  # Secure Boot's variables are guarded by SMM; libvirt adds it too
    loader = cfg.os.loader or Loader()
    if loader.path is None:
        loader.path = f"{OVMF_DIR}/OVMF_CODE_4M{'.secboot' if secure else ''}.fd"
        loader.readonly, loader.type = loader.readonly or "yes", loader.type or "pflash"
        if secure:
            loader.secure = "yes"
    cfg.os.loader = loader
    nvram = cfg.os.nvram or NVRAM()
    if nvram.template is None and nvram.path is None:
        nvram.template = f"{OVMF_DIR}/OVMF_VARS_4M{'.ms' if enrolled else ''}.fd"
    if nvram.path is None:
        nvram.path = nvram_path
    cfg.os.nvram = nvram


async def prepare(host: Host, cfg: DomainConfig) -> None:
    """Check the firmware files and make the domain's variables from the template if it has none yet."""
    loader, nvram = cfg.os.loader, cfg.os.nvram
    if loader is None or loader.path is None:
        return
    if not await host.exists(loader.path):
        raise DomainStartError(f"cannot start domain '{cfg.name}': firmware {loader.path} does not exist "
                               "(Debian: apt-get install ovmf)")
    if nvram is None or nvram.path is None or await host.exists(nvram.path):
        return
    if nvram.template is None or not await host.exists(nvram.template):
        raise DomainStartError(f"cannot start domain '{cfg.name}': UEFI variables {nvram.path} do not exist "
                               f"and there is no template to make them from ({nvram.template})")
    await host.make_dirs(os.path.dirname(nvram.path))
    tmp = f"{nvram.path}.tmp"
    for argv in (["cp", nvram.template, tmp], ["chmod", "600", tmp], ["mv", "-f", tmp, nvram.path]):
        result = await host.run(argv)
        if result.returncode != 0:
            raise DomainStartError(f"cannot start domain '{cfg.name}': making {nvram.path} failed: "
                                   f"{result.stderr.strip()}")
