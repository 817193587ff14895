"""The DHCP and DNS server of one network: a dnsmasq bound to its bridge, and the leases it hands out.

Each network with an address gets one dnsmasq, configured by a file of its own in the network's state
directory (``networks/<name>/dnsmasq.conf``, beside its pid file and lease file). It binds to the bridge
only (``bind-interfaces``, ``interface=``, ``except-interface=lo``): a host may run other DNS servers,
and each network's dnsmasq must answer on its own bridge and nowhere else.

dnsmasq daemonizes itself, and its first process exits only once the daemon is ready, or has failed
(saying why on stderr, with a non-zero status): so :func:`start` returns when the server runs, with no
polling, and the daemon belongs to no controller. Like a guest's QEMU it outlives the controller that
started it; its pid is recorded (dnsmasq writes the pid file before that first process exits) and a new
controller checks that the pid still runs this network's dnsmasq before it trusts it.

It runs as root (``user=root``): it must write its lease file in the network's state directory, which is
private to the controller's user. The leases are read from that file (:func:`read_leases`), dnsmasq's own
format: ``expiry mac ip hostname client-id`` per IPv4 lease, then after a ``duid`` line ``expiry iaid
ip hostname client-id`` per IPv6 lease.
"""

from __future__ import annotations

import ipaddress
import os
import signal

import anyio

from avirt.errors import NetworkError
from avirt.hosts.base import Host
from avirt.networks.model import DHCPLease, NetworkConfig

__all__ = ["config_text", "is_ours", "read_leases", "start", "stop"]

#: How long dnsmasq may take to end after SIGTERM before it gets SIGKILL.
STOP_TIMEOUT = 5.0


def paths(directory: str) -> dict[str, str]:
    return {name: os.path.join(directory, file) for name, file in (
        ("conf", "dnsmasq.conf"), ("pid", "dnsmasq.pid"), ("leases", "dnsmasq.leases"),
        ("hosts", "dnsmasq.hosts"))}


def needed(cfg: NetworkConfig) -> bool:
    """Whether the network has a DHCP or DNS service to run: any address on its bridge."""
    return bool(cfg.ips)


def config_text(cfg: NetworkConfig, directory: str) -> str:
    """dnsmasq's configuration for the network (one option per line, dnsmasq's own file format)."""
    assert cfg.bridge is not None
    p = paths(directory)
    lines = [
        "strict-order", "user=root", "bind-interfaces", f"interface={cfg.bridge}", "except-interface=lo",
        f"pid-file={p['pid']}", f"dhcp-leasefile={p['leases']}", f"addn-hosts={p['hosts']}",
        # Only what the definition says: no names from the host's /etc/hosts.
        "no-hosts",
    ]
    if cfg.domain is not None:
        lines += [f"domain={cfg.domain}", f"local=/{cfg.domain}/", "expand-hosts"]
    for ip in cfg.ips:
        if not ip.dhcp:
            continue
        lines += ["dhcp-authoritative", "dhcp-no-override"] if ip.family == "ipv4" else ["enable-ra"]
        size = 0
        for r in ip.ranges:
            if ip.family == "ipv4":
                lines.append(f"dhcp-range={r.start},{r.end},{ip.network.netmask}")
            else:
                lines.append(f"dhcp-range={r.start},{r.end},{ip.prefix}")
            size += int(ipaddress.ip_address(r.end)) - int(ipaddress.ip_address(r.start)) + 1
        if not ip.ranges and ip.hosts:  # reservations only: a static range serves them and nobody else
            lines.append(f"dhcp-range={ip.network.network_address},static"
                         + (f",{ip.network.netmask}" if ip.family == "ipv4" else f",{ip.prefix}"))
        for host in ip.hosts:
            who = host.mac if host.mac is not None else host.name
            address = f"[{host.ip}]" if ip.family == "ipv6" else host.ip
            lines.append(f"dhcp-host={who},{address}" + (f",{host.name}" if host.name and host.mac else ""))
        if size:
            lines.append(f"dhcp-lease-max={min(size + len(ip.hosts), 1 << 20)}")
    return "\n".join(lines) + "\n"


def hosts_text(cfg: NetworkConfig) -> str:
    """The ``<dns><host>`` entries, as dnsmasq's addn-hosts file (the /etc/hosts format)."""
    return "".join(f"{h.ip} {' '.join(h.hostnames)}\n" for h in cfg.dns_hosts if h.hostnames)


async def start(host: Host, cfg: NetworkConfig, directory: str) -> int:
    """Write the configuration and start the daemon; returns its pid once it serves."""
    p = paths(directory)
    await host.write_atomic(p["conf"], config_text(cfg, directory))
    await host.write_atomic(p["hosts"], hosts_text(cfg))
    result = await host.run(["dnsmasq", f"--conf-file={p['conf']}"])
    if result.returncode != 0:
        raise NetworkError(f"dnsmasq for network '{cfg.name}' did not start (status {result.returncode})",
                           result.stderr)
    pid = await read_pid(host, directory)
    if pid is None:
        raise NetworkError(f"dnsmasq for network '{cfg.name}' wrote no pid file")
    return pid


async def read_pid(host: Host, directory: str) -> int | None:
    text = await host.read_text(paths(directory)["pid"])
    try:
        return int(text.strip()) if text else None
    except ValueError:
        return None


async def is_ours(host: Host, pid: int, directory: str) -> bool:
    """Whether ``pid`` is alive and runs the dnsmasq of this network directory (not a recycled pid)."""
    if not await host.pid_alive(pid):
        return False
    cmdline = await host.read_text(f"/proc/{pid}/cmdline") or ""
    return f"--conf-file={paths(directory)['conf']}" in cmdline.split("\0")


async def stop(host: Host, pid: int | None, directory: str) -> None:
    """End the network's dnsmasq (if ``pid`` still is it) and wait until it is gone."""
    if pid is None or not await is_ours(host, pid, directory):
        return
    await host.kill(pid, signal.SIGTERM)
    with anyio.move_on_after(STOP_TIMEOUT):
        await host.wait_exit(pid)
        return
    await host.kill(pid, signal.SIGKILL)
    await host.wait_exit(pid)


async def read_leases(host: Host, directory: str) -> list[DHCPLease]:
    """The leases in dnsmasq's lease file (none while it has handed out none)."""
    text = await host.read_text(paths(directory)["leases"]) or ""
    leases = []
    ipv6 = False
    for line in text.splitlines():
        fields = line.split()
        if fields[:1] == ["duid"]:
            ipv6 = True
            continue
        if len(fields) < 4:
            continue
        try:
            expires = int(fields[0])
        except ValueError:
            continue
        hostname = None if fields[3] == "*" else fields[3]
        client_id = fields[4] if len(fields) > 4 and fields[4] != "*" else None
        # An IPv6 lease names the client by IAID and DUID, not by MAC: the MAC field holds the IAID.
        leases.append(DHCPLease(mac=fields[1], ip=fields[2], hostname=hostname, expires=expires,
                                client_id=client_id, family="ipv6" if ipv6 else "ipv4"))
    return leases
