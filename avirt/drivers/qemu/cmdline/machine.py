"""The machine around the devices: chipset, firmware, CPU model and topology, clocks, power management.

Where libvirt spreads one guest property over several QEMU options, so does this module, in the same
way libvirt's QEMU driver does: ``<features><hyperv>`` and ``<timer name='hypervclock'>`` become
``hv-*`` CPU properties; ``<timer name='hpet' present='no'>`` and ``<vmport>`` become machine
properties; ``<pm>`` becomes the chipset's ``disable_s3``/``disable_s4``.

Two choices are avirt's own, because TCG cannot give what KVM gives: ``host-passthrough`` and
``host-model`` are ``-cpu host`` under KVM and ``-cpu max`` (every feature TCG can emulate) under TCG;
the PIT's lost-tick policy exists only in KVM's in-kernel PIT and is applied only there.
"""

from __future__ import annotations

from avirt.config.model import CPU, DomainConfig, HyperV
from avirt.drivers.qemu.cmdline.buses import is_q35

__all__ = ["cpu_arg", "machine_args", "smbios_args"]

_HV_FLAGS = ("relaxed", "vapic", "vpindex", "runtime", "synic", "stimer", "reset", "frequencies",
             "reenlightenment", "tlbflush", "ipi", "evmcs")


def machine_args(cfg: DomainConfig, accel: str, firmware_nodes: list[str]) -> list[str]:
    """``-machine``, ``-accel``, ``-cpu``, ``-m``, ``-smp``, ``-rtc``, ``-global`` and ``-boot``."""
    features = cfg.features
    machine = [cfg.os.machine, f"acpi={'on' if features.acpi else 'off'}", "usb=off", "dump-guest-core=off"]
    if features.vmport is not None:
        machine.append(f"vmport={features.vmport}")
    if features.smm is not None:
        machine.append(f"smm={features.smm}")
    if features.ioapic_driver == "qemu":
        machine.append("kernel-irqchip=split")
    for timer in cfg.timers:
        if timer.name in ("hpet", "pit") and timer.present is not None:
            machine.append(f"{timer.name}={'on' if timer.present == 'yes' else 'off'}")
    for i, node in enumerate(firmware_nodes):
        machine.append(f"pflash{i}={node}")
    backing = cfg.memory_backing
    if backing is not None and backing.nosharepages:
        machine.append("mem-merge=off")
    memory_args = _memory_args(cfg)
    if memory_args and not (cfg.cpu and cfg.cpu.numa):
        machine.append("memory-backend=pc.ram")
    accel_opts = accel
    if accel == "kvm" and cfg.features.kvm_dirty_ring == "on":
        accel_opts += f",dirty-ring-size={cfg.features.kvm_dirty_ring_size or 4096}"
    argv = ["-machine", ",".join(machine), "-accel", accel_opts, "-cpu", cpu_arg(cfg, accel),
            "-m", f"size={cfg.memory_kib}k", *memory_args, "-smp", _smp(cfg), "-rtc", _rtc(cfg)]
    chipset = "ICH9-LPC" if is_q35(cfg) else "PIIX4_PM"
    for value, prop in ((cfg.suspend_to_mem, "disable_s3"), (cfg.suspend_to_disk, "disable_s4")):
        if value is not None:
            argv += ["-global", f"{chipset}.{prop}={'0' if value == 'yes' else '1'}"]
    if accel == "kvm" and any(t.name == "pit" and t.tickpolicy == "delay" for t in cfg.timers):
        argv += ["-global", "kvm-pit.lost_tick_policy=delay"]
    if _secure_boot(cfg):
        argv += ["-global", "driver=cfi.pflash01,property=secure,value=on"]
    if any(w.model == "itco" for w in cfg.watchdogs):
        argv += ["-global", "ICH9-LPC.noreboot=off"]
    if cfg.iothreads:
        for i in range(1, cfg.iothreads + 1):
            argv += ["-object", f"iothread,id=iothread{i}"]
    argv += _boot_args(cfg)
    return argv


def _memory_args(cfg: DomainConfig) -> list[str]:
    """Guest RAM as explicit memory backends when the definition says how it is backed or split.

    ``<memoryBacking>`` picks the backend (memfd, which virtiofs needs shared, or anonymous memory) and
    its options; ``<numa>`` splits RAM into one backend per node. Otherwise QEMU's default RAM is used.
    """
    backing = cfg.memory_backing
    cells = cfg.cpu.numa if cfg.cpu is not None else []
    if backing is None and not cells:
        return []
    memfd = backing is not None and backing.source_type == "memfd"
    hugepages = backing is not None and backing.hugepages
    props = ["mem-path=/dev/hugepages"] if hugepages else []
    if backing is not None:
        if backing.access_mode == "shared" or memfd:
            props.append(f"share={'on' if backing.access_mode == 'shared' else 'off'}")
        if backing.allocation_mode == "immediate":
            props.append("prealloc=on")
        if backing.discard:
            props.append("discard-data=on")
    kind = "memory-backend-file" if hugepages else "memory-backend-memfd" if memfd else "memory-backend-ram"
    if not cells:
        return ["-object", ",".join([f"{kind},id=pc.ram,size={cfg.memory_kib}k", *props])]
    argv = []
    for cell in cells:
        share = [f"share={'on' if cell.mem_access == 'shared' else 'off'}"] if cell.mem_access else []
        own = [p for p in props if not (share and p.startswith("share="))] + share
        argv += ["-object", ",".join([f"{kind},id=ram-node{cell.id},size={cell.memory_kib}k", *own]),
                 "-numa", f"node,nodeid={cell.id},{_cpus(cell.cpus)}memdev=ram-node{cell.id}"]
    return argv


def _cpus(cpuset: str) -> str:
    """libvirt's cpuset ('0-1,4') as QEMU's repeated cpus= options."""
    return "".join(f"cpus={part}," for part in cpuset.split(",") if part)


def _secure_boot(cfg: DomainConfig) -> bool:
    return (cfg.os.loader is not None and cfg.os.loader.secure == "yes") or any(
        f.name == "secure-boot" and f.enabled == "yes" for f in cfg.os.firmware_features)


def _smp(cfg: DomainConfig) -> str:
    smp = [str(cfg.vcpus_current or cfg.vcpus), f"maxcpus={cfg.vcpus}"]
    cpu = cfg.cpu
    if cpu is not None and cpu.sockets is not None:
        smp += [f"sockets={cpu.sockets}", f"dies={cpu.dies or 1}", f"cores={cpu.cores or 1}",
                f"threads={cpu.threads or 1}"]
    return ",".join(smp)


def _rtc(cfg: DomainConfig) -> str:
    rtc = [f"base={cfg.clock_offset}"]
    for timer in cfg.timers:
        if timer.name != "rtc":
            continue
        if timer.tickpolicy == "catchup":
            rtc.append("driftfix=slew")
        if timer.track is not None:
            rtc.append("clock=" + {"guest": "vm", "wall": "host"}.get(timer.track, "rt"))
    return ",".join(rtc)


def cpu_arg(cfg: DomainConfig, accel: str) -> str:
    cpu = cfg.cpu or CPU()
    mode = cpu.mode or ("custom" if cpu.model else None)
    if mode in ("host-passthrough", "host-model"):
        # "host" needs KVM; under TCG the nearest thing is "max": every feature TCG can emulate.
        props = ["host" if accel == "kvm" else "max"]
        if cpu.migratable == "off" and accel == "kvm":
            props.append("migratable=off")
        if cpu.cache_mode == "passthrough" and accel == "kvm":
            props.append("host-cache-info=on")
    elif mode == "maximum":
        props = ["max"]
    elif mode == "custom" and cpu.model:
        props = [cpu.model]
    else:
        props = ["qemu64"]
    if cpu.cache_mode == "emulate":
        props.append("l3-cache=on")
    elif cpu.cache_mode == "disable":
        props.append("l3-cache=off")
    for feature in cpu.features:
        if feature.policy in ("force", "require", "optional"):
            props.append(f"+{feature.name}")
        else:
            props.append(f"-{feature.name}")
    props += _hyperv(cfg.features.hyperv, cfg)
    features = cfg.features
    if features.kvm_hidden == "on":
        props.append("kvm=off")
    for value, prop in ((features.kvm_hint_dedicated, "kvm-hint-dedicated"),
                        (features.kvm_poll_control, "kvm-poll-control"), (features.kvm_pv_ipi, "kvm-pv-ipi")):
        if value is not None:
            props.append(f"{prop}={value}")
    if cfg.features.pmu is not None:
        props.append(f"pmu={cfg.features.pmu}")
    for timer in cfg.timers:
        if timer.name == "hypervclock" and timer.present is not None:
            props.append(f"hv-time={'on' if timer.present == 'yes' else 'off'}")
        elif timer.name == "kvmclock" and timer.present == "no":
            props.append("-kvmclock")
        elif timer.name == "tsc" and timer.frequency is not None:
            props.append(f"tsc-frequency={timer.frequency}")
    if any(p.model == "hyperv" for p in cfg.panics):
        props.append("hv-crash=on")
    return ",".join(props)


def _hyperv(hv: HyperV | None, cfg: DomainConfig) -> list[str]:
    if hv is None:
        return []
    if hv.mode == "passthrough":
        return ["hv-passthrough=on"]
    props = [f"hv-{name}={getattr(hv, name)}" for name in _HV_FLAGS if getattr(hv, name) is not None]
    if hv.spinlocks == "on":
        props.append(f"hv-spinlocks=0x{hv.spinlocks_retries or 0x1fff:x}")
    if hv.stimer_direct is not None:
        props.append(f"hv-stimer-direct={hv.stimer_direct}")
    if hv.vendor_id == "on" and hv.vendor_id_value:
        props.append(f"hv-vendor-id={hv.vendor_id_value}")
    return props


def _boot_args(cfg: DomainConfig) -> list[str]:
    argv: list[str] = []
    letters = {"hd": "c", "cdrom": "d", "network": "n", "fd": "a"}
    boot = []
    order = "".join(letters[d] for d in cfg.os.boot_devs if d in letters)
    if order:
        boot.append(f"order={order}")
    if cfg.os.bootmenu is not None:
        boot.append(f"menu={'on' if cfg.os.bootmenu == 'yes' else 'off'}")
        if cfg.os.bootmenu_timeout is not None:
            boot.append(f"splash-time={cfg.os.bootmenu_timeout}")
    if boot:
        argv += ["-boot", ",".join(boot)]
    if cfg.os.kernel:
        argv += ["-kernel", cfg.os.kernel]
    if cfg.os.initrd:
        argv += ["-initrd", cfg.os.initrd]
    if cfg.os.cmdline:
        argv += ["-append", cfg.os.cmdline]
    return argv


_SMBIOS_TYPES = (("bios", 0), ("system", 1), ("base_board", 2), ("chassis", 3))


def smbios_args(cfg: DomainConfig) -> list[str]:
    """The ``<sysinfo>`` tables, applied when ``<smbios mode='sysinfo'/>`` asks for them (as libvirt)."""
    info = cfg.sysinfo
    if info is None or cfg.os.smbios_mode != "sysinfo":
        return []
    argv: list[str] = []
    for attr, number in _SMBIOS_TYPES:
        entries = getattr(info, attr)
        if entries:
            argv += ["-smbios", ",".join([f"type={number}", *(f"{e.name}={e.value}" for e in entries)])]
    for value in info.oem_strings:
        argv += ["-smbios", f"type=11,value={value}"]
    return argv
